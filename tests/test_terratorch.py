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
