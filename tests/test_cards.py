"""Every built-in model card: valid STAC MLM v1.5.2 (offline), loadable, listed, describable offline.

The expected facts below are the ones each card was written from (sources are in the cards'
``stacembed:sources``); they guard the cards against accidental edits.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch
from stac_validation import validate_file

from stacembed.models import create_backbone, list_cards, load_card, resolve_card
from stacembed.models.registry import CARDS_DIR

CARDS = sorted(CARDS_DIR.glob("*.json"))
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
HEX64 = re.compile(r"^[0-9a-f]{64}$")

HLS = ("blue", "green", "red", "nir08", "swir16", "swir22")
S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RGB = ("red", "green", "blue")

# name: (mlm:architecture, bands, input size, embedding size, SHA-256 of the weights or None)
EXPECTED = {
    "prithvi-eo-2.0-300m": ("prithvi_eo_v2_300m", HLS, 224, 1024,
                            "faab2c8b776f0723f93431747603a7ec586a54fc45473613b4322c29752486e7"),
    "prithvi-eo-2.0-300m-tl": ("prithvi_eo_v2_300m_tl", HLS, 224, 1024,
                               "3629cedfbb350faafcb0dac902ae0d3c927e25ce8d9e0024aa1276ec66956ddb"),
    "prithvi-eo-2.0-600m": ("prithvi_eo_v2_600m", HLS, 224, 1280, None),
    "prithvi-eo-2.0-600m-tl": ("prithvi_eo_v2_600m_tl", HLS, 224, 1280,
                               "7b92c53b0204a76bb775bd8930f045e05776251caa8c83f7367ed0b75b594702"),
    "ssl4eo-s12-resnet18": ("resnet18", S2_L1C, 224, 512,
                            "59bfdff99c7af41adfa2557e684ec59aec79f4cf6bb1a2e9714b802f08e2222e"),
    "ssl4eo-s12-resnet50": ("resnet50", S2_L1C, 224, 2048,
                            "df8b932e2a23a0773febedf3f650aa7d342b805f7876ca5ed6b139d7245d7c09"),
    "ssl4eo-s12-vit-s16": ("vit_small_patch16_224", S2_L1C, 224, 384,
                           "67c9032df0449ae37f93c51696bcae0c6dc3485103deb44b4669e9897b90409c"),
    "dinov2-vits14": ("vit_small_patch14_dinov2.lvd142m", RGB, 518, 384, None),
    "dinov3-vitl16-sat493m": ("vit_large_patch16_dinov3.sat493m", RGB, 256, 1024, None),
}

# Prithvi-EO-2.0 config.json mean / std (HLS digital numbers = reflectance x 10000).
PRITHVI_MEAN = [1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0]
PRITHVI_STD = [2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0]


def item(path: Path) -> dict:
    return json.loads(path.read_text())


def model_asset(data: dict) -> dict:
    (asset,) = [a for a in data["assets"].values() if "mlm:model" in a.get("roles", ())]
    return asset


@pytest.fixture
def no_network(monkeypatch):
    """Offline for real: any attempt to open a network connection fails the test."""
    monkeypatch.setenv("STACEMBED_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_every_expected_card_is_bundled():
    assert set(EXPECTED) <= set(list_cards())
    assert set(list_cards()) == {p.stem for p in CARDS}


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_card_is_valid_mlm_v1_5_2_offline(path):
    data = item(path)
    # The validator checks the extensions a document declares; MLM v1.5.2 must be one of them.
    assert MLM in data["stac_extensions"]
    assert validate_file(path) == []


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_card_loads_and_is_consistent(path):
    data, card = item(path), load_card(str(path))
    props, asset = data["properties"], model_asset(data)
    assert card.name == props["mlm:name"] == data["id"] == path.stem
    model_input = props["mlm:input"][0]
    assert card.input_size == tuple(model_input["input"]["shape"][-2:])
    assert card.embedding_size == props["mlm:output"][0]["result"]["shape"][-1]
    assert props["mlm:output"][0]["result"]["shape"] == [-1, card.embedding_size]
    # Every input band is defined in the model asset's eo:bands; optical ones with a wavelength and
    # common name (SAR polarisations and elevation have neither: eo's common names are optical).
    defined = {b["name"]: b for b in asset["eo:bands"]}
    for band in card.bands:
        assert band in defined
        if "center_wavelength" in defined[band]:
            assert defined[band]["center_wavelength"] > 0 and defined[band]["common_name"]
    optical = [band for band in card.bands if "center_wavelength" in defined[band]]
    assert optical, "a card takes at least one optical band"
    assert len(card.value_scaling) in (0, 1, len(card.bands))
    assert props["mlm:tasks"] == ["similarity-search"]
    if card.pretrained:  # real weights: where they come from, under which license, and how to cite them
        assert props["license"] and props["stacembed:sources"]
        assert card.weights_href.startswith("https://huggingface.co/")
        assert asset["mlm:artifact_type"] in ("torch.save", "safetensors.torch.save_file", "torch.export.save")
        assert any(link["rel"] == "cite-as" for link in data["links"])
        # A checksum only where an official SHA-256 was found; otherwise the card says why not.
        if "file:checksum" in asset:
            assert asset["file:checksum"].startswith("1220") and HEX64.match(card.weights_sha256)
        else:
            assert card.weights_sha256 is None and props["stacembed:checksum_note"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_card_facts(name):
    arch, bands, size, dim, sha256 = EXPECTED[name]
    card = resolve_card(name)
    assert (card.architecture, card.bands, card.input_size, card.embedding_size, card.weights_sha256) == (
        arch, bands, (size, size), dim, sha256)
    assert card.pretrained


@pytest.mark.parametrize("name", [n for n in EXPECTED if n.startswith("prithvi")])
def test_prithvi_cards_carry_the_official_normalisation(name):
    card = resolve_card(name)
    shape = card.item["properties"]["mlm:input"][0]["input"]["shape"]
    assert shape[:3] == [-1, 6, 4]  # 6 HLS bands, 4 frames as in pretraining
    # value_scaling acts on reflectance (after raster:scale), so the DN statistics are divided by 1e4:
    # (x - mean/1e4) / (std/1e4) == (1e4 * x - mean) / std.
    for step, mean, std in zip(card.value_scaling, PRITHVI_MEAN, PRITHVI_STD, strict=True):
        assert step["type"] == "z-score"
        assert step["mean"] == pytest.approx(mean / 1e4) and step["stddev"] == pytest.approx(std / 1e4)
    hyper = card.item["properties"]["mlm:hyperparameters"]
    assert hyper["patch_size"] == ([1, 14, 14] if "600m" in name else [1, 16, 16])
    assert hyper["num_frames"] == 4
    tl = name.endswith("-tl")
    assert [i["name"] for i in card.item["properties"]["mlm:input"][1:]] == (
        ["temporal_coords", "location_coords"] if tl else [])


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_backbone_matches_the_card(path):
    """Cards whose architecture stacembed can build give the embedding size they declare."""
    card = load_card(str(path))
    if card.item["properties"].get("stacembed:status") == "needs-backbone":
        pytest.skip(f"{card.architecture}: the card says stacembed has no backbone for it yet")
    if "stacembed:program_inputs" in card.item["properties"]:
        pytest.skip(f"{card.architecture}: its exported program is the model, there is no network to build "
                    "(tests/test_clay.py runs one)")
    # Shapes only (no memory for the weights, no initialisation cost), except for TorchGeo's Copernicus-FM,
    # which branches in Python on its inputs' values (copernicusfm.py 181-190, 630-644): real zeros for it.
    device = "cpu" if card.architecture.startswith("torchgeo:") else "meta"
    with torch.device(device), torch.no_grad():
        model = create_backbone(card).eval()
        out = model(torch.zeros(2, len(card.bands), *card.input_size))
    assert tuple(out.shape) == (2, card.embedding_size)


def test_models_list_lists_every_card(cli, no_network):
    result = cli("models", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in result.output.splitlines()}
    assert set(rows) == {p.stem for p in CARDS}
    for name, (arch, bands, _, dim, _) in EXPECTED.items():
        assert rows[name] == [arch, f"{len(bands)} bands", f"{dim}-d"]


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_models_describe_works_offline(cli, no_network, path):
    result = cli("models", "describe", path.stem)
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    card = load_card(str(path))
    assert described["name"] == path.stem and described["architecture"] == card.architecture
    assert described["bands"] == list(card.bands)
    assert described["input_size"] == list(card.input_size)
    assert described["embedding_size"] == card.embedding_size
    assert described["weights"] == card.weights_href
