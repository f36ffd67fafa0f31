"""Model cards, value scaling, and weights: safe loading, checksums, download and cache."""

import functools
import hashlib
import http.server
import json
import pickle
import threading

import pytest
import timm
import torch
from conftest import DEMO_CARD
from safetensors.torch import save_file

from stacembed.embed import Embedder
from stacembed.errors import ModelError
from stacembed.models import ModelCard, create_backbone, list_cards, register_architecture, resolve_card
from stacembed.models.scaling import apply_value_scaling
from stacembed.models.weights import create_with_weights, load_weights, resolve_weights


def card_dict(**changes):
    data = json.loads(DEMO_CARD.read_text())
    data["properties"].update(changes)
    return data


def test_builtin_demo_card():
    assert "stacembed-demo-landsat" in list_cards()
    card = resolve_card("stacembed-demo-landsat")
    assert card.bands == ("blue", "green", "red", "nir", "swir16", "swir22")
    assert (card.input_size, card.embedding_size, card.pretrained) == ((64, 64), 96, False)
    assert card.weights_href == str(DEMO_CARD.with_suffix(".safetensors"))
    assert len(card.weights_sha256) == 64
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_card("nope")


def test_card_validation_errors(tmp_path):
    bad = card_dict()
    del bad["properties"]["mlm:input"]
    with pytest.raises(ModelError, match="not a usable MLM item"):
        ModelCard.from_item(bad, "card.json")
    odd = card_dict()
    odd["properties"]["mlm:input"][0]["value_scaling"] = [{"type": "log"}]
    with pytest.raises(ModelError, match="value_scaling type 'log' is not supported"):
        ModelCard.from_item(odd, "card.json")
    wrong = card_dict()
    wrong["properties"]["mlm:output"][0]["result"]["shape"] = [-1, 512]
    with pytest.raises(ModelError, match="gives 96-d embeddings, the card says 512"):
        create_backbone(ModelCard.from_item(wrong, "card.json"))


def test_value_scaling_matches_the_mlm_formulas():
    x = torch.tensor([[[2.0], [10.0], [5.0], [-3.0], [7.0], [9.0], [4.0]]])  # (1, 7 bands, 1)
    steps = [
        {"type": "z-score", "mean": 1.0, "stddev": 2.0},
        {"type": "min-max", "minimum": 0.0, "maximum": 20.0},
        {"type": "clip", "minimum": 0.0, "maximum": 4.0},
        {"type": "clip-min", "minimum": 0.0},
        {"type": "offset", "value": 2.0},
        {"type": "scale", "value": 3.0},
        None,
    ]
    out = apply_value_scaling(x, steps).flatten().tolist()
    assert out == pytest.approx([0.5, 0.5, 4.0, 0.0, 5.0, 3.0, 4.0])
    broadcast = apply_value_scaling(torch.ones(1, 3, 2), [{"type": "scale", "value": 4.0}])
    assert torch.equal(broadcast, torch.full((1, 3, 2), 0.25))
    nan = apply_value_scaling(torch.tensor([[[float("nan")]]]), [{"type": "clip", "minimum": 0, "maximum": 1}])
    assert torch.isnan(nan).all()


def _model():
    return timm.create_model("test_resnet", pretrained=False, in_chans=6, num_classes=0)


def test_state_dict_checkpoints_load_with_weights_only(tmp_path):
    torch.manual_seed(3)
    source = _model()
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    target = _model()
    load_weights(target, tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b)
               for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True))


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_objects_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weights": Payload()}, f)
    with pytest.raises(ModelError, match="never unpickles arbitrary objects"):
        load_weights(_model(), tmp_path / "evil.pt")


def test_mismatched_weights_are_an_error(tmp_path):
    other = timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=0)
    save_file(other.state_dict(), str(tmp_path / "rgb.safetensors"))
    with pytest.raises(ModelError, match="do not fit the model"):
        load_weights(_model(), tmp_path / "rgb.safetensors")


def _card(architecture: str, embedding: int) -> ModelCard:
    data = card_dict()
    data["properties"]["mlm:architecture"] = architecture
    data["properties"]["mlm:output"][0]["result"]["shape"] = [-1, embedding]
    return ModelCard.from_item(data, "card.json")


def test_weights_load_into_a_model_built_without_initialising_it(tmp_path, monkeypatch):
    card = resolve_card("stacembed-demo-landsat")
    torch.manual_seed(5)
    source = _model()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    inits = []
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda t, *a, **k: inits.append(t) or t)
    model = create_with_weights(card, tmp_path / "half.safetensors")
    assert inits and all(t.is_meta for t in inits)  # timm's init ran on shapes only, no values
    for name, tensor in model.state_dict().items():
        assert not tensor.is_meta, name
        assert tensor.dtype == source.state_dict()[name].dtype  # the model's dtypes, not the file's
        torch.testing.assert_close(tensor, half[name].to(tensor.dtype), rtol=0, atol=0)
    ordinary = _model()
    load_weights(ordinary, tmp_path / "half.safetensors")
    x = torch.randn(2, 6, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), ordinary.eval()(x), rtol=0, atol=0)


def test_models_that_need_real_tensors_to_be_built_are_built_the_ordinary_way(tmp_path):
    class Tabled(torch.nn.Module):  # a non-persistent buffer: no checkpoint holds it
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(6, 8)
            self.register_buffer("table", torch.arange(8.0), persistent=False)

        def forward(self, x):
            return self.proj(x.mean(dim=(2, 3))) + self.table

    class Counted(Tabled):  # computes with a real value while being built
        def __init__(self):
            super().__init__()
            self.steps = int(torch.ones(3).sum().item())

    for name, cls in (("test-tabled", Tabled), ("test-counted", Counted)):
        register_architecture(name)(lambda card, cls=cls: cls())
        source = cls()
        save_file(source.state_dict(), str(tmp_path / f"{name}.safetensors"))
        model = create_with_weights(_card(name, 8), tmp_path / f"{name}.safetensors")
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        torch.testing.assert_close(model.table, torch.arange(8.0))
        torch.testing.assert_close(model.proj.weight, source.proj.weight, rtol=0, atol=0)


def test_mismatched_weights_are_an_error_on_the_meta_path_too(tmp_path):
    other = timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=0)
    save_file(other.state_dict(), str(tmp_path / "rgb.safetensors"))
    with pytest.raises(ModelError, match="do not fit the model"):
        create_with_weights(resolve_card("stacembed-demo-landsat"), tmp_path / "rgb.safetensors")


def test_checksum_mismatch_of_local_weights(tmp_path):
    data = card_dict()
    data["assets"]["weights"]["href"] = str(tmp_path / "w.safetensors")
    save_file(_model().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError, match="do not match the SHA-256"):
        resolve_weights(ModelCard.from_item(data, str(tmp_path / "card.json")))


def test_weights_are_hashed_once_in_the_background_and_again_when_they_change(tmp_path):
    """The provenance's SHA-256 equals hashlib's over the file; asking again (the card's checksum,
    then the provenance) gives the same computation; a rewritten file is hashed anew."""
    import os

    from stacembed.models.weights import weights_sha256

    path = tmp_path / "w.safetensors"
    save_file(_model().state_dict(), str(path))
    first = weights_sha256(path)
    assert first.result() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_sha256(path) is first
    save_file(timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=0).state_dict(), str(path))
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert weights_sha256(path).result() == hashlib.sha256(path.read_bytes()).hexdigest() != first.result()
    with pytest.raises(FileNotFoundError):
        weights_sha256(tmp_path / "missing.safetensors")


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_is_checked_cached_and_used(http_server, tmp_path, monkeypatch):
    root, url = http_server
    monkeypatch.setenv("STACEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STACEMBED_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    weights = DEMO_CARD.with_suffix(".safetensors").read_bytes()
    (root / "w.safetensors").write_bytes(weights)
    data = card_dict()
    data["assets"]["weights"]["href"] = f"{url}/w.safetensors"
    card = ModelCard.from_item(data, f"{url}/card.json")
    path = resolve_weights(card)
    assert path.read_bytes() == weights and str(path).startswith(str(tmp_path / "cache"))
    (root / "w.safetensors").unlink()  # the cache answers now, even offline
    monkeypatch.setenv("STACEMBED_OFFLINE", "1")
    assert resolve_weights(card) == path
    embedder = Embedder.from_card(card, path, torch.device("cpu"))
    assert embedder(torch.zeros(2, 6, 64, 64).numpy()).shape == (2, 96)


def test_download_with_wrong_checksum_is_discarded(http_server, tmp_path, monkeypatch):
    root, url = http_server
    monkeypatch.setenv("STACEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STACEMBED_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (root / "w.safetensors").write_bytes(b"tampered")
    data = card_dict()
    data["assets"]["weights"]["href"] = f"{url}/w.safetensors"
    with pytest.raises(ModelError, match="SHA-256"):
        resolve_weights(ModelCard.from_item(data, f"{url}/card.json"))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_random_weights_are_seeded():
    card = resolve_card("stacembed-demo-landsat")
    x = torch.rand(1, 6, 64, 64).numpy()
    a = Embedder.from_card(card, None, torch.device("cpu"))(x)
    b = Embedder.from_card(card, None, torch.device("cpu"))(x)
    assert (a == b).all()
    assert hashlib.sha256(a.tobytes()).hexdigest() == hashlib.sha256(b.tobytes()).hexdigest()


def test_hugging_face_and_torch_hub_caches_are_used_offline(tmp_path, monkeypatch):
    weights = DEMO_CARD.with_suffix(".safetensors")
    monkeypatch.setenv("STACEMBED_CACHE", str(tmp_path / "stacembed-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = card_dict()
    data["assets"]["weights"]["href"] = "https://huggingface.co/org/demo-model/resolve/main/sub/w.safetensors"
    card = ModelCard.from_item(data, "https://huggingface.co/org/demo-model/resolve/main/card.json")
    with pytest.raises(ModelError, match="offline.*download them to .*stacembed-cache"):
        resolve_weights(card, offline=True)  # nowhere yet, and no network allowed
    # Where huggingface_hub would have put it: models--org--demo-model/snapshots/<rev>/sub/w.safetensors
    hf_file = tmp_path / "hf" / "models--org--demo-model" / "snapshots" / "abc123" / "sub" / "w.safetensors"
    hf_file.parent.mkdir(parents=True)
    hf_file.write_bytes(weights.read_bytes())
    assert resolve_weights(card, offline=True) == hf_file
    hf_file.unlink()
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "w.safetensors"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"not the right bytes")
    with pytest.raises(ModelError, match="offline"):
        resolve_weights(card, offline=True)  # a cached file with another checksum is never used
    hub_file.write_bytes(weights.read_bytes())
    assert resolve_weights(card, offline=True) == hub_file


def test_exported_card_directory_runs_offline(tmp_path, cli):
    result = cli("models", "export", "stacembed-demo-landsat", "--out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    exported = json.loads((tmp_path / "model" / "model.json").read_text())
    asset = exported["assets"]["weights"]
    assert asset["href"] == "./stacembed-demo-landsat.safetensors"
    assert (asset["file:checksum"]
            == "1220" + hashlib.sha256(DEMO_CARD.with_suffix(".safetensors").read_bytes()).hexdigest())
    card = resolve_card(str(tmp_path / "model" / "model.json"))
    assert resolve_weights(card, offline=True) == (tmp_path / "model" / "stacembed-demo-landsat.safetensors").resolve()
