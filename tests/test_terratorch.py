"""TerraTorch backbones (``mlm:architecture`` ``terratorch:NAME``, extra ``stacembed[terratorch]``).

The reference path is TerraTorch itself: ``BACKBONE_REGISTRY.build`` with the card's
hyperparameters, the same seeded random weights (``load_state_dict``), its own forward on the
same chips (read with rasterio, scaled with numpy), pooled by hand. Small models only:
``prithvi_eo_tiny`` (a ViT, cls token, Conv3d patches) and ``terramind_v1_tiny`` (multi-modal).

Without TerraTorch the tests that need it skip, unless ``STACEMBED_REQUIRE_TERRATORCH`` is set
(CI, ``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from conftest import SYNTHETIC_BANDS
from rasterio.windows import Window

from stacembed.embed import Embedder
from stacembed.errors import ModelError
from stacembed.models import create_backbone, list_registry_names, load_card, resolve_card
from stacembed.models.registry import CARDS_DIR
from stacembed.models.weights import resolve_weights

REQUIRE_ENV = "STACEMBED_REQUIRE_TERRATORCH"
CHIP = 32
MEAN, STD = 1000.0, 300.0  # the synthetic pixels are about 1000 +- 500


@pytest.fixture(scope="module")
def registry():
    """TerraTorch's BACKBONE_REGISTRY, or a skip (a failure under STACEMBED_REQUIRE_TERRATORCH)."""
    try:
        from terratorch.registry import BACKBONE_REGISTRY
    except ImportError as exc:
        reason = f"TerraTorch is not installed ({exc}); pip install 'stacembed[terratorch]'"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason} ({REQUIRE_ENV} is set)", pytrace=False)
        pytest.skip(reason)
    return BACKBONE_REGISTRY


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: TerraTorch must never download."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# -- cards and weights ----------------------------------------------------------------------------

# The synthetic items' bands (blue, green, red, nir, swir16, swir22) as each model's inputs.
PRITHVI = {
    "name": "prithvi_eo_tiny",
    "hyperparameters": {"img_size": CHIP, "bands": ["BLUE", "GREEN", "RED", "NIR_BROAD", "SWIR_1", "SWIR_2"]},
    "inputs": [("image", ["blue", "green", "red", "nir", "swir16", "swir22"])],
    "dim": 256,
}
TERRAMIND = {
    "name": "terramind_v1_tiny",
    "hyperparameters": {"img_size": CHIP, "modalities": ["S2L2A", "S1GRD", "DEM"],
                        "bands": {"S2L2A": ["BLUE", "GREEN", "RED"]}},
    "inputs": [("S2L2A", ["blue", "green", "red"]), ("S1GRD", ["nir", "swir16"]), ("DEM", ["swir22"])],
    "dim": 192,
}


def build_reference(registry, spec, seed=7):
    """TerraTorch's own module with seeded random weights."""
    torch.manual_seed(seed)
    return registry.build(spec["name"], pretrained=False, **json.loads(json.dumps(spec["hyperparameters"]))).eval()


def save_weights(model, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(tmp_path, spec, weights=None, sha256=None, architecture=None, **properties):
    scaling = [{"type": "z-score", "mean": MEAN, "stddev": STD}]
    item = {
        "type": "Feature", "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.5.2/schema.json"],
        "id": f"test-{spec['name']}", "geometry": None,
        "properties": {
            "datetime": "2025-01-01T00:00:00Z",
            "mlm:name": f"test-{spec['name']}",
            "mlm:architecture": architecture or f"terratorch:{spec['name']}",
            "mlm:framework": "PyTorch", "mlm:tasks": ["similarity-search"],
            "mlm:input": [{"name": name, "bands": bands,
                           "input": {"shape": [-1, len(bands), CHIP, CHIP],
                                     "dim_order": ["batch", "bands", "height", "width"], "data_type": "float32"},
                           "value_scaling": scaling} for name, bands in spec["inputs"]],
            "mlm:output": [{"name": "embedding", "tasks": ["similarity-search"],
                            "result": {"shape": [-1, spec["dim"]], "dim_order": ["batch", "embedding"],
                                       "data_type": "float32"}}],
            "mlm:hyperparameters": spec["hyperparameters"],
            "stacembed:pooling": "mean",
            **properties,
        },
        "links": [], "assets": {},
    }
    if weights is not None:
        item["assets"]["weights"] = {"href": weights.name, "type": "application/octet-stream",
                                     "roles": ["mlm:model", "mlm:weights"], "mlm:artifact_type": "safetensors",
                                     "file:checksum": "1220" + sha256}
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(item))
    return path


def reference_outputs(model, spec, x):
    """TerraTorch's per-layer outputs for scaled chips ``x`` (B, C, H, W), the way its users call it."""
    with torch.no_grad():
        if spec is TERRAMIND:
            sizes = [len(bands) for _, bands in spec["inputs"]]
            parts = torch.split(x, sizes, dim=1)
            return model({name: part for (name, _), part in zip(spec["inputs"], parts, strict=True)})
        return model(x.unsqueeze(2))  # Prithvi: (B, C, T, H, W)


def prefix_of(spec):
    return 1 if spec is PRITHVI else 0  # Prithvi's cls token; TerraMind merges modalities, no cls


def chips_from_cogs(item_dir, windows):
    """Measurements of each chip window, read straight from the COGs (the catalog's order of bands);
    NaN beyond the raster's edge."""
    chips = []
    for window in windows:
        bands = []
        for key, _ in SYNTHETIC_BANDS:
            with rasterio.open(item_dir / f"{key}.tif") as ds:
                read = ds.read(1, window=window, boundless=True, masked=True)
            bands.append(read.astype("float64").filled(np.nan))
        chips.append(np.stack(bands))
    return np.stack(chips)


def scaled(pixels):
    """The card's z-score, then no data -> 0 (as stacembed does)."""
    return torch.from_numpy(np.nan_to_num((pixels - MEAN) / STD, nan=0.0).astype("float32"))


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- equality with TerraTorch's own forward -------------------------------------------------------

@pytest.mark.parametrize("spec", [PRITHVI, TERRAMIND], ids=["prithvi", "terramind"])
def test_a_run_equals_terratorch_forward_on_the_same_chips(registry, spec, synthetic_catalog, cli, tmp_path,
                                                           no_network):
    reference = build_reference(registry, spec)
    weights = tmp_path / f"{spec['name']}.safetensors"
    card = write_card(tmp_path, spec, weights, save_weights(reference, weights))
    catalog = synthetic_catalog("1.1", n_items=1, shape=(70, 100))
    out = tmp_path / "out"
    # Every modality from the one synthetic collection: each chip pairs with its own item.
    modalities = [arg for name, _ in spec["inputs"] for arg in ("--modality", f"{name}=synthetic")] \
        if len(spec["inputs"]) > 1 else []
    result = cli("run", "--catalog", catalog, "--model", card, "--out", out, "--chip-size", CHIP, "--min-valid",
                 "0.1", *modalities, "-q")
    assert result.exit_code == 0, result.output
    table = gpd.read_parquet(next(out.glob("*/item-0/item-0.parquet")))
    assert len(table) >= 4
    windows = [Window(r.col_off, r.row_off, r.width, r.height) for r in table.itertuples()]
    pixels = chips_from_cogs(catalog.parent / "synthetic" / "item-0", windows)
    # The card's order of bands is the catalog's here (blue, green, red, nir, swir16, swir22).
    assert np.isnan(pixels).any()  # chips over the edge too
    last = reference_outputs(reference, spec, scaled(pixels))[-1]
    expected = last[:, prefix_of(spec):].mean(dim=1).numpy()
    got = np.stack(table.embedding.map(np.asarray))
    assert got.shape == (len(table), spec["dim"])
    for row, want in zip(got, expected, strict=True):
        assert cosine(row, want) >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The run wrote the card it used next to the outputs.
    written = json.loads(next(out.glob("*/model/*.json")).read_text())
    assert written["properties"]["mlm:architecture"] == f"terratorch:{spec['name']}"
    assert no_network == []


@pytest.mark.parametrize("spec", [PRITHVI, TERRAMIND], ids=["prithvi", "terramind"])
def test_pooling_and_layers_are_terratorchs_own_outputs(registry, spec, tmp_path, no_network):
    reference = build_reference(registry, spec, seed=11)
    weights = tmp_path / "w.safetensors"
    card = load_card(str(write_card(tmp_path, spec, weights, save_weights(reference, weights))))
    rng = np.random.default_rng(0)
    pixels = rng.normal(MEAN, STD, (3, len(card.bands), CHIP, CHIP)).astype("float32")
    outs = reference_outputs(reference, spec, scaled(pixels))
    prefix = prefix_of(spec)
    side = CHIP // 16
    expected = {
        ("default", None): outs[-1][:, prefix:].mean(1),
        ("max", None): outs[-1][:, prefix:].amax(1),
        ("none", None): outs[-1][:, prefix:].reshape(3, side, side, -1).permute(0, 3, 1, 2),
        ("mean", 1): outs[1][:, prefix:].mean(1),
        ("mean", -1): outs[-1][:, prefix:].mean(1),
    }
    if prefix:
        expected["cls", None] = outs[-1][:, 0]
    path = resolve_weights(card)
    for (pooling, layer), want in expected.items():
        embedder = Embedder.from_card(card, path, torch.device("cpu"), pooling=pooling, layer=layer)
        np.testing.assert_allclose(embedder(pixels), want.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=f"--pooling {pooling} --layer {layer}")
    assert no_network == []


def test_terratorch_is_built_untrained_and_never_downloads(registry, monkeypatch, tmp_path, no_network):
    calls = []
    original = type(registry).build

    def spy(self, name, *args, **kwargs):
        calls.append((name, kwargs.get("pretrained")))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(type(registry), "build", spy)
    card = resolve_card("terratorch:terramind_v1_tiny?modalities=S2L2A,S1GRD&img_size=32")
    Embedder.from_card(card, None, torch.device("cpu"))
    spec = dict(PRITHVI, hyperparameters=dict(PRITHVI["hyperparameters"], pretrained=True))
    with pytest.raises(ModelError, match="pretrained cannot be given"):
        create_backbone(load_card(str(write_card(tmp_path, spec))))
    assert calls and all(pretrained is False for _, pretrained in calls)
    assert no_network == []


# -- --model terratorch:NAME ----------------------------------------------------------------------

def test_an_ad_hoc_card_states_what_the_registry_knows(registry):
    card = resolve_card("terratorch:prithvi_eo_tiny")
    assert card.architecture == "terratorch:prithvi_eo_tiny"
    assert card.bands == ("blue", "green", "red", "nir08", "swir16", "swir22")
    assert card.input_size == (224, 224) and card.embedding_size == 256
    # TerraTorch's Prithvi-EO-2.0 statistics (digital numbers) as reflectance.
    assert card.value_scaling[0] == {"type": "z-score", "mean": 0.1087, "stddev": 0.2248}
    assert card.weights_href is None
    multi = resolve_card("terratorch:terramind_v1_tiny?modalities=S2L2A,S1GRD,DEM&img_size=32")
    assert [(i.name, len(i.bands)) for i in multi.inputs] == [("S2L2A", 12), ("S1GRD", 2), ("DEM", 1)]
    assert multi.inputs[1].bands == ("vv", "vh") and multi.embedding_size == 192 and multi.input_size == (32, 32)
    assert multi.item["properties"]["mlm:hyperparameters"] == {"modalities": ["S2L2A", "S1GRD", "DEM"],
                                                               "img_size": 32}
    with pytest.raises(ModelError, match=r"modalities=S2L2A") as error:
        resolve_card("terratorch:terramind_v1_tiny")
    assert "\n" not in str(error.value)
    names = list_registry_names()
    assert {"terratorch:prithvi_eo_tiny", "terratorch:terramind_v1_tiny"} <= set(names)


def test_an_ad_hoc_model_runs_and_its_card_is_written(registry, synthetic_catalog, cli, tmp_path, no_network):
    catalog = synthetic_catalog("1.0", n_items=1, shape=(64, 64))
    ref = "terratorch:prithvi_eo_tiny?img_size=32&bands=BLUE,GREEN,RED,NIR_BROAD,SWIR_1,SWIR_2"
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--model", ref, "--weights", "random", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    table = gpd.read_parquet(next(out.glob("*/item-0/item-0.parquet")))
    assert len(table) == 4 and len(table.embedding.iloc[0]) == 256
    written = json.loads(next(out.glob("*/model/*.json")).read_text())
    props = written["properties"]
    assert props["mlm:architecture"] == "terratorch:prithvi_eo_tiny"
    assert props["mlm:hyperparameters"]["bands"] == ["BLUE", "GREEN", "RED", "NIR_BROAD", "SWIR_1", "SWIR_2"]
    assert [b for i in props["mlm:input"] for b in i["bands"]] == ["blue", "green", "red", "nir", "swir16", "swir22"]


# -- errors ---------------------------------------------------------------------------------------

def one_line_model_error(call, match):
    with pytest.raises(ModelError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_unknown_names_and_mismatched_cards_are_one_line_errors(registry, tmp_path):
    one_line_model_error(lambda: resolve_card("terratorch:no_such_backbone"), "not a backbone in TerraTorch")
    unknown = load_card(str(write_card(tmp_path, PRITHVI, architecture="terratorch:no_such_backbone")))
    one_line_model_error(lambda: create_backbone(unknown), "'no_such_backbone' is not a backbone")
    wrong_modality = dict(TERRAMIND, inputs=[("S2", ["blue", "green", "red"]), *TERRAMIND["inputs"][1:]])
    one_line_model_error(lambda: create_backbone(load_card(str(write_card(tmp_path, wrong_modality)))),
                         "input 'S2' is not a modality")
    too_few = dict(TERRAMIND, inputs=[TERRAMIND["inputs"][0], ("S1GRD", ["nir"]), TERRAMIND["inputs"][2]])
    one_line_model_error(lambda: create_backbone(load_card(str(write_card(tmp_path, too_few)))),
                         "takes 2 bands of S1GRD")
    bad_build = dict(PRITHVI, hyperparameters={"img_size": CHIP, "no_such_option": {"x": 1}, "bands": "oops"})
    one_line_model_error(lambda: create_backbone(load_card(str(write_card(tmp_path, bad_build)))),
                         "TerraTorch cannot build|built for")


def test_without_the_extra_a_terratorch_card_names_the_install(monkeypatch, tmp_path):
    for name in ("terratorch", "terratorch.registry"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if TerraTorch were absent
    message = one_line_model_error(lambda: resolve_card("terratorch:prithvi_eo_tiny"), "need TerraTorch")
    assert "pip install 'stacembed[terratorch]'" in message
    card = load_card(str(write_card(tmp_path, PRITHVI)))
    one_line_model_error(lambda: create_backbone(card), r"stacembed\[terratorch\]")
    assert list_registry_names() == []


def test_a_plain_run_never_imports_terratorch():
    code = ("import sys, torch; import stacembed.cli, stacembed.pipeline; "
            "from stacembed.models import create_backbone, resolve_card; "
            "create_backbone(resolve_card('stacembed-demo-landsat')); "
            "print('terratorch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the built-in flagship cards themselves, on seeded random weights -------------------------------
#
# Each card is copied with its mlm:model asset replaced by a file of seeded random weights (href and
# SHA-256), laid out as the release is: TerraMind's TerraTorch state dict, DOFA's and Copernicus-FM's
# TorchGeo state dicts without fc_norm/head. Parameters the constructors leave at zero (cls tokens,
# position tables) are drawn too, so that every one of them counts.

def flagship(name):
    return json.loads((CARDS_DIR / f"{name}.json").read_text())


def drawn(model, seed, skip=()):
    """``model`` with its all-zero floating parameters (except ``skip`` prefixes) drawn from N(0, 0.02)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point() and not value.any() and not key.startswith(skip):
                value.copy_(torch.randn(value.shape, generator=generator) * 0.02)
    return model.eval()


def card_with_weights(tmp_path, name, state, **hyperparameters):
    """Built-in card ``name`` copied into tmp_path with ``state`` as its weights (safetensors, or
    ``torch.save`` as ``.pth`` like the TorchGeo releases) and ``hyperparameters`` changed."""
    data = flagship(name)
    torch_save = data["assets"]["model"]["mlm:artifact_type"] == "torch.save"
    path = tmp_path / f"{name}.{'pth' if torch_save else 'safetensors'}"
    if torch_save:
        torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    data["assets"]["model"].update({"href": path.name, "file:size": path.stat().st_size,
                                    "file:checksum": "1220" + hashlib.sha256(path.read_bytes()).hexdigest()})
    data["properties"]["mlm:hyperparameters"].update(hyperparameters)
    card_path = tmp_path / f"{name}.json"
    card_path.write_text(json.dumps(data))
    return load_card(str(card_path))


def card_scaled(card, pixels):
    """The card's per-band z-scores, then no data -> 0, as stacembed scales chips."""
    means = np.array([s["mean"] for s in card.value_scaling])[:, None, None]
    stds = np.array([s["stddev"] for s in card.value_scaling])[:, None, None]
    return torch.from_numpy(np.nan_to_num((pixels - means) / stds, nan=0.0).astype("float32"))


def assert_same_embeddings(got, want):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape
    for row, expected in zip(got, want, strict=True):
        assert cosine(row, expected) >= 0.9999
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_terramind_base_card_equals_terratorchs_forward(registry, tmp_path, no_network):
    """terramind-1.0-base at its own 224 px: S2L2A 12 + S1RTC 2 (dB) + DEM 1. The second chip has no
    DEM (no item there: no data): TerraMind runs it on S2L2A and S1RTC only, as TerraTorch does when
    given those two (the card makes every input optional)."""
    hyper = flagship("terramind-1.0-base")["properties"]["mlm:hyperparameters"]
    torch.manual_seed(3)
    reference = drawn(registry.build("terramind_v1_base", pretrained=False, **hyper), 3)
    card = card_with_weights(tmp_path, "terramind-1.0-base", reference.state_dict())
    embedder = Embedder.from_card(card, resolve_weights(card), torch.device("cpu"))
    rng = np.random.default_rng(1)
    pixels = np.concatenate([rng.uniform(0.0, 0.5, (2, 12, 224, 224)),  # reflectance
                             rng.normal(-12.0, 4.0, (2, 2, 224, 224)),  # backscatter in dB
                             rng.uniform(0.0, 2000.0, (2, 1, 224, 224))], axis=1).astype("float32")  # metres
    pixels[1, 14] = np.nan
    got = embedder(pixels)
    x = card_scaled(card, pixels)
    with torch.no_grad():
        full = reference({"S2L2A": x[:1, :12], "S1RTC": x[:1, 12:14], "DEM": x[:1, 14:]})[-1].mean(dim=1)
        without_dem = reference({"S2L2A": x[1:, :12], "S1RTC": x[1:, 12:14]})[-1].mean(dim=1)
        zero_dem = reference({"S2L2A": x[1:, :12], "S1RTC": x[1:, 12:14], "DEM": x[1:, 14:]})[-1].mean(dim=1)
    assert_same_embeddings(got, torch.cat([full, without_dem]))
    assert cosine(got[1], zero_dem[0].numpy()) < 0.9999  # not the DEM filled with its mean
    assert no_network == []


def test_the_dofa_base_card_equals_terratorchs_forward_with_the_same_wavelengths(registry, tmp_path, no_network):
    """dofa-base at its own 224 px, weights laid out as TorchGeo's release (no 'dofa_model.' prefix,
    no fc_norm/head): equal to TerraTorch's DOFA given the same wavelengths, the card's when the items
    state none, the items' where they do."""
    from torchgeo.models import dofa

    hyper = flagship("dofa-base")["properties"]["mlm:hyperparameters"]
    torch.manual_seed(5)
    reference = drawn(registry.build("dofa_base_patch16_224", pretrained=False, **hyper), 5,
                      skip=("dofa_model.fc_norm.", "dofa_model.head."))
    release = {key.removeprefix("dofa_model."): value for key, value in reference.state_dict().items()
               if not key.startswith(("dofa_model.fc_norm.", "dofa_model.head."))}
    with torch.device("meta"):  # torchgeo/models/dofa.py 474-485: the release is DOFA's keys but these four
        assert set(release) == set(dofa.dofa_base_patch16_224().state_dict()) - {
            "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    card = card_with_weights(tmp_path, "dofa-base", release)
    embedder = Embedder.from_card(card, resolve_weights(card), torch.device("cpu"))
    assert embedder.context_inputs == ("wavelengths",)
    card_waves = [b["center_wavelength"] for b in flagship("dofa-base")["assets"]["model"]["eo:bands"]]
    pixels = np.random.default_rng(2).uniform(0.0, 0.4, (2, 9, 224, 224)).astype("float32")
    x = card_scaled(card, pixels)

    def terratorch(waves, pooling="mean"):
        reference.wavelengths = list(waves)  # what TerraTorch's forward reads (dofa_vit.py 134)
        with torch.no_grad():
            tokens = reference(x)[-1]
        return tokens[:, 0] if pooling == "cls" else tokens[:, 1:].mean(dim=1)

    assert_same_embeddings(embedder(pixels), terratorch(card_waves))
    # TerraTorch's own table for model_bands (NIR_BROAD 0.832, SWIR_2 2.20 um) gives other embeddings
    own = terratorch(registry.build("dofa_base_patch16_224", pretrained=False, **hyper).wavelengths)
    assert cosine(embedder(pixels)[0], own[0].numpy()) < 0.9999
    # the items' wavelengths where they state one (here not for B12), the card's elsewhere
    stac = np.array([0.6646, 0.5598, 0.4924, 0.7041, 0.7405, 0.7828, 0.8328, 1.6137, np.nan], "float32")
    filled = [float(w) for w in np.where(np.isnan(stac), np.float32(card_waves), stac)]
    assert_same_embeddings(embedder(pixels, {"wavelengths": np.tile(stac, (2, 1))}), terratorch(filled))
    cls = Embedder.from_card(card, resolve_weights(card), torch.device("cpu"), pooling="cls")
    assert_same_embeddings(cls(pixels), terratorch(card_waves, "cls"))
    with pytest.raises(ModelError, match="different band wavelengths"):
        embedder(pixels, {"wavelengths": np.stack([stac, stac + 0.01])})
    assert no_network == []


def test_a_run_gives_dofa_the_wavelengths_the_items_state(registry, synthetic_catalog, cli, tmp_path, no_network):
    """`stacembed run` with a DOFA card: each band's eo:center_wavelength from STAC reaches the network,
    TerraTorch's value for model_bands where the item states none (the card here states none)."""
    bands = ["BLUE", "GREEN", "RED", "NIR_BROAD", "SWIR_1", "SWIR_2"]
    spec = {"name": "dofa_base_patch16_224", "hyperparameters": {"model_bands": bands, "img_size": CHIP},
            "inputs": PRITHVI["inputs"], "dim": 768}
    torch.manual_seed(13)
    reference = drawn(registry.build(spec["name"], pretrained=False, **spec["hyperparameters"]), 13)
    weights = tmp_path / "dofa.safetensors"
    card = write_card(tmp_path, spec, weights, save_weights(reference, weights))
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    item_path = catalog.parent / "synthetic" / "item-0" / "item-0.json"
    item = json.loads(item_path.read_text())
    stated = {"B1": 0.482, "B2": 0.561, "B3": 0.655, "B4": 0.865, "B5": 1.609}  # Landsat 8 OLI; B7: none
    for key, wavelength in stated.items():
        item["assets"][key]["bands"][0]["eo:center_wavelength"] = wavelength
    item_path.write_text(json.dumps(item))
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--model", card, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    table = gpd.read_parquet(next(out.glob("*/item-0/item-0.parquet")))
    windows = [Window(r.col_off, r.row_off, r.width, r.height) for r in table.itertuples()]
    x = scaled(chips_from_cogs(catalog.parent / "synthetic" / "item-0", windows))
    reference.wavelengths = [*stated.values(), reference.wavelengths[-1]]
    with torch.no_grad():
        expected = reference(x)[-1][:, 1:].mean(dim=1)
    assert_same_embeddings(np.stack(table.embedding.map(np.asarray)), expected)
    written = json.loads(next(out.glob("*/item-0/item-0.json")).read_text())
    assert written["properties"]["emb:runtime_parameters"]["wavelengths"] == [*stated.values(), None]
    assert no_network == []


def test_the_copernicus_fm_card_equals_torchgeos_forward(tmp_path, no_network):
    """copernicus-fm-base (torchgeo:copernicusfm_base) on 64 px chips (TorchGeo resizes its position
    table), weights laid out as TorchGeo's release (no fc_norm/head): TorchGeo's own forward with the
    card's wavelengths and bandwidths in nm and unknown metadata; its tokens for other poolings."""
    try:
        from torchgeo.models import copernicusfm_base
    except ImportError as exc:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"TorchGeo is not installed ({exc})", pytrace=False)
        pytest.skip(f"TorchGeo is not installed ({exc})")
    torch.manual_seed(9)
    reference = drawn(copernicusfm_base(), 9, skip=("fc_norm.", "head."))
    release = {k: v for k, v in reference.state_dict().items() if not k.startswith(("fc_norm.", "head."))}
    card = card_with_weights(tmp_path, "copernicus-fm-base", release)
    embedder = Embedder.from_card(card, resolve_weights(card), torch.device("cpu"), chip_size=64)
    described = flagship("copernicus-fm-base")["assets"]["model"]["eo:bands"]
    waves = [b["center_wavelength"] * 1000 for b in described]
    widths = [b["full_width_half_max"] * 1000 for b in described]
    pixels = np.random.default_rng(4).uniform(0.0, 0.4, (2, 13, 64, 64)).astype("float32")
    x = card_scaled(card, pixels)
    tokens = {}
    reference.blocks[-1].register_forward_hook(lambda m, a, out: tokens.update(last=out))
    reference.blocks[5].register_forward_hook(lambda m, a, out: tokens.update(fifth=out))

    def torchgeo(wavelengths):
        with torch.no_grad():
            return reference(x, torch.full((2, 4), float("nan")), wavelengths=wavelengths, bandwidths=widths,
                             input_mode="spectral", kernel_size=16)

    assert_same_embeddings(embedder(pixels), torchgeo(waves))
    for pooling, layer, want in (("cls", None, lambda: tokens["last"][:, 0]),
                                 ("mean", 5, lambda: tokens["fifth"][:, 1:].mean(dim=1))):
        other = Embedder.from_card(card, resolve_weights(card), torch.device("cpu"), chip_size=64,
                                   pooling=pooling, layer=layer)
        got = other(pixels)
        torchgeo(waves)
        assert_same_embeddings(got, want())
    stac = np.array([np.nan, 0.4924, 0.5598, 0.6646, 0.7041, 0.7405, 0.7828, 0.8328, 0.8647, 0.9451, 1.3735,
                     1.6137, 2.2024], "float32")
    filled = [float(w) * 1000 for w in np.where(np.isnan(stac), np.float32([w / 1000 for w in waves]), stac)]
    assert_same_embeddings(embedder(pixels, {"wavelengths": np.tile(stac, (2, 1))}), torchgeo(filled))
    assert no_network == []


def test_torchgeo_cards_are_checked_with_one_line_errors(tmp_path):
    pytest.importorskip("torchgeo")

    def card(**properties):
        data = flagship("copernicus-fm-base")
        data["properties"].update(properties)
        path = tmp_path / "card.json"
        path.write_text(json.dumps(data))
        return load_card(str(path))

    hyper = flagship("copernicus-fm-base")["properties"]["mlm:hyperparameters"]
    one_line_model_error(lambda: create_backbone(card(**{"mlm:architecture": "torchgeo:resnet50"})),
                         "not a TorchGeo model stacembed can feed")
    one_line_model_error(lambda: create_backbone(card(**{"mlm:hyperparameters": {**hyper, "weights": "x"}})),
                         "weights cannot be given to TorchGeo")
    one_line_model_error(lambda: create_backbone(card(**{"stacembed:pooling": "mean"})), "the model's own output")
    variable = {**hyper, "forward": {"input_mode": "variable"}}
    one_line_model_error(lambda: create_backbone(card(**{"mlm:hyperparameters": variable})), "input_mode 'spectral'")
    one_line_model_error(lambda: resolve_card("torchgeo:copernicusfm_base"), "run from an MLM card")
    with torch.device("meta"):
        backbone = create_backbone(card())
    trained = {"fc_norm.weight": torch.full((768,), 2.0), "fc_norm.bias": torch.zeros(768)}
    one_line_model_error(lambda: backbone.checkpoint_filter(trained), "trained fc_norm")


def test_building_a_terratorch_backbone_leaves_torch_float32_precision_as_it_was():
    """TerraTorch's clay_v15 module sets torch's float32 matmul precision to "medium" when imported
    (oneDNN then multiplies float32 in bfloat16 on the CPU): stacembed undoes it, so importing the
    extra never changes the embeddings of any model run after it in the same process."""
    import subprocess
    import sys

    code = ("import torch; from stacembed.models.backbones.terratorch import registry_names; "
            "names = registry_names(); from stacembed.models.backbones.torchgeo import _models; _models(); "
            "import stacembed.models.backbones.terratorch as t; "
            "t._terratorch('terratorch.models.backbones.clay_v15.model'); "
            "print(len(names) > 0, torch.get_float32_matmul_precision())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "highest"]
