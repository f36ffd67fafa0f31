"""The multi-sensor flagship cards (issue 18): TerraMind 1.0 base/large, DOFA base/large, Clay v1.5, Copernicus-FM.

Each card was written from the model's own repository at a named commit, or from the installed
TerraTorch 1.2.11 / TorchGeo 0.8.1 (file and lines in the card's ``stacembed:sources``). The facts
are encoded below with their citation as a comment, so a card that drifts from its source fails
here; what could not be verified is listed in the card's ``stacembed:unverified`` and asserted
below with the reason it could not be.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from stac_validation import validate_file

from stacembed.models import create_backbone, load_card
from stacembed.models.registry import CARDS_DIR

MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
PINNED = re.compile(r"^[a-z0-9_.-]+==\d+(\.\d+)+$")

S2_L2A_12 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_L1C_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

# name: architecture, {modality: bands}, chip size, patch size, embedding size, license,
#       weights SHA-256 (None: not published where it could be read), mlm:artifact_type
FACTS = {
    # IBM/terramind@8090b5cf configs/terramind_v1_base_sen1floods11.yaml 61-91 (modality names S2L2A,
    # S1RTC, DEM; backbone terramind_v1_base); terratorch 1.2.11 terramind_register.py 94-128
    # (PRETRAINED_BANDS: 12 S2L2A bands without B10, VV/VH, DEM), 641-660 (dim 768), 735-754 (dim
    # 1024); terramind_vit.py 63-89 (img_size 224, patch_size 16).
    "terramind-1.0-base": ("terratorch:terramind_v1_base",
                           {"S2L2A": S2_L2A_12, "S1RTC": ("VV", "VH"), "DEM": ("DEM",)},
                           224, 16, 768, "Apache-2.0", None, "torch.save"),
    "terramind-1.0-large": ("terratorch:terramind_v1_large",
                            {"S2L2A": S2_L2A_12, "S1RTC": ("VV", "VH"), "DEM": ("DEM",)},
                            224, 16, 1024, "Apache-2.0", None, "torch.save"),
    # zhu-xlab/DOFA@059caa4f normalize_dataset.py (Sentinel-2 order r,g,b,b05,b06,b07,b08,b11,b12; 224
    # crops); dofa_v1.py@3c33a240 (base 768 / large 1024, patch 16); LFS pointers of torchgeo/dofa at
    # commit b8db318b (the files TorchGeo's DOFABase16/DOFALarge16_Weights pin).
    "dofa-base": ("terratorch:dofa_base_patch16_224",
                  {"sentinel-2-l1c": ("B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12")},
                  224, 16, 768, "CC-BY-4.0",
                  "a027595480a4b0641d0be330d876034439bcb6ead8b9ce10f4949227426856c6", "torch.save"),
    "dofa-large": ("terratorch:dofa_large_patch16_224",
                   {"sentinel-2-l1c": ("B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12")},
                   224, 16, 1024, "CC-BY-4.0",
                   "0ff904d35418b0ae26e15812f2669f906a047f94517823bfbc3824eac9328291", "torch.save"),
    # Clay-foundation/model@a5790cef configs/metadata.yaml 1-51 (sentinel-2-l2a: blue ... swir22),
    # docs/release-notes/specification.md 64-101 (INPUT SIZE 256, PATCH SIZE 8, dim 1024, Apache-2.0);
    # LFS pointer of v1.5/compiled/clay-v1.5-encoder-cpu.pt2 at made-with-clay/Clay commit 5bfb3c77.
    "clay-v1.5": ("clay_mae_large",
                  {"sentinel-2-l2a": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")},
                  256, 8, 1024, "Apache-2.0",
                  "ba4e3f0378128e320bc7e1560da5dde391fd9718e93bd6ac26c1c722d3e8b544", "torch.export.save"),
    # zhu-xlab/Copernicus-FM@da95635d Copernicus-FM/src/engine_pretrain.py 18-68 (s2_toa: 13 bands,
    # 224 px, kernel 16), model_vit.py 238-248 (base: 768), README.md 89 (weights CC-BY-4.0).
    "copernicus-fm-base": ("torchgeo:copernicusfm_base", {"s2_toa": S2_L1C_13},
                           224, 16, 768, "CC-BY-4.0", None, "torch.save"),
}

# Normalisation as published, per modality: (means, stds, units per model unit). value_scaling acts on
# reflectance (stacembed applies raster:scale first), so digital numbers are divided by 10000.
TERRAMIND_STATS = {
    # IBM/terramind@8090b5cf configs/terramind_v1_base_sen1floods11.yaml lines 63/71 (S2L2A, DN),
    # 65/73 (S1RTC, dB), 67/75 (DEM, m); equal to terratorch terramind_register.py 199-307.
    "S2L2A": ([1390.458, 1503.317, 1718.197, 1853.910, 2199.100, 2779.975, 2987.011, 3083.234, 3132.220,
               3162.988, 2424.884, 1857.648],
              [2106.761, 2141.107, 2038.973, 2134.138, 2085.321, 1889.926, 1820.257, 1871.918, 1753.829,
               1797.379, 1434.261, 1334.311], 1e4),
    "S1RTC": ([-10.93, -17.329], [4.391, 4.459], 1.0),
    "DEM": ([670.665], [951.272], 1.0),
}
# zhu-xlab/DOFA@059caa4f normalize_dataset.py 24-28: SatlasPretrain Sentinel-2 in 8-bit values. 8-bit per
# unit reflectance: red/green/blue are ESA's TCI (taken as 0..0.2 -> 0..255: unverified, see the card);
# B05-B12 are DN // 32 (allenai/satlas@149d2719 Normalization.md), i.e. 10000 / 32.
DOFA_STATS = {"sentinel-2-l1c": (
    [114.1099739, 114.81779093, 126.63977424, 84.33539309, 97.84789168, 103.94461911, 101.435633, 72.32804172,
     56.66528851],
    [77.84352553, 69.96844919, 67.42465279, 64.57022983, 61.72545487, 61.34187099, 60.29744676, 47.88519516,
     42.55886798],
    [255 / 0.2] * 3 + [10000 / 32] * 6)}
STATS = {
    "terramind-1.0-base": TERRAMIND_STATS,
    "terramind-1.0-large": TERRAMIND_STATS,
    "dofa-base": DOFA_STATS,
    "dofa-large": DOFA_STATS,
    # Clay-foundation/model@a5790cef configs/metadata.yaml 1-51 (L2A DN).
    "clay-v1.5": {"sentinel-2-l2a": ([1105, 1355, 1552, 1887, 2422, 2630, 2743, 2785, 2388, 1835],
                                     [1809, 1757, 1888, 1870, 1732, 1697, 1742, 1648, 1470, 1379], 1e4)},
    # zhu-xlab/Copernicus-FM@da95635d Copernicus-FM/src/main_pretrain.py 186-187 (L1C DN).
    "copernicus-fm-base": {"s2_toa": (
        [1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7, 2318.7, 2581.0, 837.7, 22.0, 2195.2, 1537.4],
        [791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0, 1249.5, 1345.9, 577.5, 47.5, 1340.0, 1142.9], 1e4)},
}

# Centre wavelengths (um) the wavelength-conditioned models take, as their own sources give them.
WAVELENGTHS = {
    # zhu-xlab/DOFA@0293753b README.md, Sentinel-2 example.
    "dofa-base": [0.665, 0.56, 0.49, 0.705, 0.74, 0.783, 0.842, 1.61, 2.19],
    "dofa-large": [0.665, 0.56, 0.49, 0.705, 0.74, 0.783, 0.842, 1.61, 2.19],
    # Clay-foundation/model@a5790cef configs/metadata.yaml sentinel-2-l2a wavelength (um).
    "clay-v1.5": [0.493, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19],
    # zhu-xlab/Copernicus-FM@da95635d engine_pretrain.py 21 (nm).
    "copernicus-fm-base": [w / 1000 for w in (440, 490, 560, 665, 705, 740, 783, 842, 860, 940, 1370, 1610, 2190)],
}
# Copernicus-FM engine_pretrain.py 34: bandwidths (nm), kept as full_width_half_max.
COPERNICUS_BANDWIDTHS = [b / 1000 for b in (20, 65, 35, 30, 15, 15, 20, 115, 20, 20, 30, 90, 180)]

# What each card must declare unverified, and why it could not be verified here.
UNVERIFIED = {
    "terramind-1.0-base": [
        "file:checksum",  # no Hugging Face LFS pointer / file page of TerraMind_v1_base.pt was readable
        "S2L2A digital numbers",  # TerraMesh's handling of the baseline-04.00 +1000 offset is not documented
        "license",  # apache-2.0 read on the -large/-tiny model pages and IBM/terramind, not on -base's
        "embedding pooling",  # TerraMind publishes no pooled-embedding recipe
        "S1RTC source units",  # no Planetary Computer sentinel-1-rtc item was read (only its collection text)
    ],
    "terramind-1.0-large": ["file:checksum", "S2L2A digital numbers", "license", "embedding pooling",
                            "S1RTC source units"],
    "dofa-base": [
        "red/green/blue value_scaling",  # the TCI stretch of L1C is not documented in a readable source
        "B05-B12 value_scaling",  # SatlasPretrain's handling of the +1000 offset is not documented
        "provenance",  # which authors' checkpoint TorchGeo's file was extracted from is not stated
        "embedding pooling",  # DOFA's fc_norm is not in the checkpoint
        "loading the released checkpoint",  # no network: the key mapping is tested on the release's layout
    ],
    "dofa-large": ["red/green/blue value_scaling", "B05-B12 value_scaling", "provenance", "embedding pooling",
                   "loading the released checkpoint"],
    "clay-v1.5": [
        "file:checksum",  # of the Lightning checkpoint (the .pt2 model asset has its SHA-256)
        "input size",  # factory.py's example exports at 224, the published file is run at 256
        "torch.export compatibility",  # the .pt2 could not be downloaded to try it with torch 2.14
        "batch of one",  # exported with min 2: padded per the program's range, the published range unread
        "S2 L2A digital numbers",
        "wavelength unit",  # basic_use.md (nm) disagrees with the training code (um)
        "latlon order",  # how-to-embed.ipynb: lat first; stacchip prechip.py 158 + datamodule.py 77-78: lon first
        "acquisition hour",  # how-to-embed.ipynb: the hour; stacchip prechip.py 152-154: always noon in training
        "GPU",  # the CPU export on CUDA was not tried (no GPU here)
    ],
    "copernicus-fm-base": [
        "file:checksum",  # only TorchGeo's 8-hex file-name prefix 085350e4 is known
        "CopernicusFM_ViT_base_varlang-085350e4.pth",  # byte identity with the authors' file not checked
        "S2 digital numbers",
        "normalisation provenance",  # main_pretrain.py was published after the weights
        "embedding pooling",
        "metadata",  # passed as unknown (NaN), though pretrained with them
    ],
}

CARDS = {name: CARDS_DIR / f"{name}.json" for name in FACTS}
TERRATORCH = [name for name, facts in FACTS.items() if facts[0].startswith("terratorch:")]


def item(name: str) -> dict:
    return json.loads(CARDS[name].read_text())


def model_asset(data: dict) -> dict:
    (asset,) = [a for a in data["assets"].values() if "mlm:model" in a.get("roles", ())]
    return asset


@pytest.fixture(scope="module")
def registry():
    pytest.importorskip("terratorch")
    with torch.device("cpu"):
        from terratorch.registry import BACKBONE_REGISTRY
    return BACKBONE_REGISTRY


@pytest.mark.parametrize("name", FACTS)
def test_card_is_valid_mlm_v1_5_2_offline(name):
    data = item(name)
    assert MLM in data["stac_extensions"]
    assert validate_file(CARDS[name]) == []


@pytest.mark.parametrize("name", FACTS)
def test_card_carries_the_cited_facts(name):
    arch, inputs, size, patch, dim, license_, sha256, artifact = FACTS[name]
    card = load_card(str(CARDS[name]))
    assert card.name == name and card.architecture == arch
    assert {i.name: i.bands for i in card.inputs} == inputs
    assert [i.name for i in card.inputs] == list(inputs)  # stacking order = the modalities' order
    assert card.bands == tuple(b for bands in inputs.values() for b in bands)
    assert card.input_size == (size, size) and card.embedding_size == dim
    assert card.weights_sha256 == sha256 and card.artifact_type == artifact
    props = card.item["properties"]
    assert props["license"] == license_
    assert props["mlm:hyperparameters"]["patch_size"] == patch
    assert size % patch == 0


@pytest.mark.parametrize("name", FACTS)
def test_card_declares_license_weights_and_sources_with_commits(name):
    data = item(name)
    props, asset = data["properties"], model_asset(data)
    assert props["license"] and any(link["rel"] == "license" for link in data["links"])
    assert any(link["rel"] == "cite-as" for link in data["links"])
    assert asset["href"].startswith("https://huggingface.co/") and "/resolve/" in asset["href"]
    sources = props["stacembed:sources"]
    assert sources and all(s["url"].startswith("https://") and s["what"] for s in sources)
    for source in sources:
        if "repo" in source:  # a repository's file: named by commit
            assert COMMIT.match(source["commit"]), source
            assert source["commit"] in source["url"] or source["commit"][:8] in source["url"], source
        if "package" in source:  # an installed package's file: named by version, path (and lines)
            assert PINNED.match(source["package"]) and source["path"], source
    # At least one fact group comes from the model's own repository at a named commit.
    assert any("repo" in s and COMMIT.match(s["commit"]) for s in sources)
    if "file:checksum" in asset:
        assert asset["file:checksum"] == "1220" + FACTS[name][6]
        assert asset["file:size"] > 0
    else:
        assert props["stacembed:checksum_note"]


@pytest.mark.parametrize("name", FACTS)
def test_value_scaling_is_the_published_normalisation(name):
    card = load_card(str(CARDS[name]))
    for entry in card.inputs:
        means, stds, per_unit = STATS[name][entry.name]
        per_unit = per_unit if isinstance(per_unit, list) else [per_unit] * len(means)
        assert len(entry.value_scaling) == len(entry.bands) == len(means)
        for step, mean, std, unit in zip(entry.value_scaling, means, stds, per_unit, strict=True):
            assert step["type"] == "z-score"
            # (unit * x - mean) / std == (x - mean / unit) / (std / unit)
            assert step["mean"] == pytest.approx(mean / unit, rel=1e-6)
            assert step["stddev"] == pytest.approx(std / unit, rel=1e-6)


@pytest.mark.parametrize("name", FACTS)
def test_bands_are_described_with_their_wavelengths(name):
    card = load_card(str(CARDS[name]))
    described = {b["name"]: b for b in model_asset(item(name))["eo:bands"]}
    assert set(card.bands) <= set(described)
    optical = [b for b in card.bands if b.startswith("B")]
    for band in optical:
        assert described[band]["center_wavelength"] > 0 and described[band]["common_name"]
    for band in set(card.bands) - set(optical):  # SAR and elevation: no optical wavelength to state
        assert "center_wavelength" not in described[band] and described[band]["description"]
    if name in WAVELENGTHS:  # wavelength-conditioned: the card states the model's own wavelengths
        assert [described[b]["center_wavelength"] for b in card.bands] == pytest.approx(WAVELENGTHS[name])
    if name == "copernicus-fm-base":
        assert [described[b]["full_width_half_max"] for b in card.bands] == pytest.approx(COPERNICUS_BANDWIDTHS)


@pytest.mark.parametrize("name", FACTS)
def test_what_could_not_be_verified_is_marked_with_a_reason(name):
    props = item(name)["properties"]
    unverified = props["stacembed:unverified"]
    for topic in UNVERIFIED[name]:
        found = [entry for entry in unverified if entry.startswith(topic)]
        assert found, f"{name}: {topic!r} is not marked unverified"
        assert len(found[0]) > len(topic) + 30  # the reason, not just the topic
    if props.get("stacembed:status") == "needs-backbone":
        assert props["stacembed:status_note"]


@pytest.mark.parametrize("name", TERRATORCH)
def test_terratorch_registry_entry_matches_the_card(name, registry, monkeypatch):
    """The card's registry name, build keyword arguments, patch size and width are TerraTorch's:
    its constructor is intercepted, so even the large models are checked without being built."""
    from terratorch.models.backbones.terramind.model import terramind_register, terramind_vit
    from torchgeo.models import dofa

    arch, _, size, patch, dim, *_ = FACTS[name]
    registry_name = arch.removeprefix("terratorch:")
    assert registry_name in registry
    seen = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            self.patch_embed = SimpleNamespace(embed_dim=kwargs.get("embed_dim"))

    hyper = item(name)["properties"]["mlm:hyperparameters"]
    if "terramind" in name:
        # terramind_register.py 641-660 / 735-754 call TerraMindViT(dim=..., encoder_depth=..., **kwargs).
        monkeypatch.setattr(terramind_register, "TerraMindViT", Recorder)
        registry.build(registry_name, pretrained=False, **hyper)
        assert seen["dim"] == dim and seen["modalities"] == list(FACTS[name][1])
        defaults = inspect.signature(terramind_vit.TerraMindViT.__init__).parameters
        assert defaults["patch_size"].default == patch == seen["patch_size"]
        assert defaults["img_size"].default == size == seen["img_size"]
    else:
        # dofa_vit.py 186-223 call torchgeo's dofa_*_patch16_224, which set patch_size and embed_dim
        # (torchgeo/models/dofa.py 471, 509) before building DOFA.
        monkeypatch.setattr(dofa, "DOFA", Recorder)
        wrapper = registry.build(registry_name, pretrained=False, **hyper)
        assert seen["embed_dim"] == dim and seen["patch_size"] == patch and seen["img_size"] == size
        # TerraTorch's wavelengths for model_bands (dofa_vit.py 17-40) are DOFA's, except NIR_BROAD and
        # SWIR_2 (0.832, 2.20 um against the README's 0.842, 2.19): the card states DOFA's own.
        assert wrapper.wavelengths == [0.665, 0.56, 0.49, 0.705, 0.74, 0.783, 0.832, 1.61, 2.20]
        card_waves = [b["center_wavelength"] for b in model_asset(item(name))["eo:bands"]]
        assert [abs(a - b) for a, b in zip(card_waves, wrapper.wavelengths, strict=True)] == pytest.approx(
            [0, 0, 0, 0, 0, 0, 0.01, 0, 0.01])


def test_dofa_weights_are_the_files_torchgeo_pins():
    from torchgeo.models import DOFABase16_Weights, DOFALarge16_Weights

    for name, weights in (("dofa-base", DOFABase16_Weights), ("dofa-large", DOFALarge16_Weights)):
        url = weights.DOFA_MAE.url.replace("https://hf.co/", "https://huggingface.co/")
        card = load_card(str(CARDS[name]))
        assert card.weights_href == url
        # TorchGeo names its files with the first 8 hex digits of their SHA-256.
        assert url.rsplit("-", 1)[1].removesuffix(".pth") == card.weights_sha256[:8]


def test_copernicus_fm_is_torchgeos_copernicusfm_base():
    """TorchGeo's builder has the card's shapes and weights; stacembed's torchgeo: builder feeds it the
    card's wavelengths and bandwidths (tests/test_terratorch.py: equal to TorchGeo's own forward)."""
    from torchgeo.models import CopernicusFM_Base_Weights, copernicusfm_base
    from torchgeo.models.copernicusfm import CopernicusFM

    from stacembed.models.backbones import CopernicusFMBackbone

    card = load_card(str(CARDS["copernicus-fm-base"]))
    url = CopernicusFM_Base_Weights.CopernicusFM_ViT.url
    assert card.weights_href == url
    assert url.rsplit("-", 1)[1] == "085350e4.pth"  # the only part of its SHA-256 that is known
    defaults = inspect.signature(CopernicusFM.__init__).parameters
    assert defaults["img_size"].default == 224 and defaults["patch_size"].default == 16
    with torch.device("meta"):
        model = copernicusfm_base()
        backbone = create_backbone(card)
    assert model.cls_token.shape[-1] == card.embedding_size
    assert model.num_patches == (224 // 16) ** 2
    assert "stacembed:status" not in item("copernicus-fm-base")["properties"]
    assert isinstance(backbone, CopernicusFMBackbone) and backbone.context_inputs == ("wavelengths",)
    assert list(backbone.wavelengths) == pytest.approx(WAVELENGTHS["copernicus-fm-base"])
    assert list(backbone.bandwidths) == pytest.approx(COPERNICUS_BANDWIDTHS)
    assert backbone.kernel_size == 16 and backbone.num_prefix_tokens == 1


def test_clay_and_copernicus_fm_are_not_in_terratorchs_backbone_registry(registry):
    # TerraTorch 1.2.11 has Clay v1.5 only as a model factory (clay1_5_model_factory.py) and its
    # registered clay_v1_base is Clay v1; Copernicus-FM it does not have (TorchGeo builds it). Clay runs
    # as its own exported program instead (stacembed:program_inputs; tests/test_clay.py).
    assert "stacembed:program_inputs" in item("clay-v1.5")["properties"]
    assert item("copernicus-fm-base")["properties"]["mlm:architecture"].startswith("torchgeo:")
    names = set(registry["terratorch"])  # TerraTorch's own source, as stacembed's builder lists it
    assert not {n for n in names if "clay" in n or "copernicus" in n}


def test_clay_runs_as_its_exported_program_fed_the_datacube_clay_builds():
    """Clay's published encoder is a torch.export program whose forward takes one dict (Clay-foundation/
    model@a5790cef claymodel/finetune/embedder/factory.py 107-114: pixels, time, latlon, gsd, waves;
    example shapes 187-197: time [B, 4], latlon [B, 4], waves [C], gsd [1]) and returns the class token
    (136-137). The card says what stacembed puts under each key, in Clay's order and encoding
    (how-to-embed.ipynb 239-264, 277-283: [sin, cos] of the ISO week x 2 pi / 52 and of the hour x 2 pi / 24;
    [sin, cos] of latitude and of longitude in radians; gsd 10 m for Sentinel-2, metadata.yaml 17). The
    run itself is tested on a stand-in program with this signature (tests/test_clay.py)."""
    from stacembed.errors import ModelError
    from stacembed.models.backbones.datacube import ProgramInputs

    props = item("clay-v1.5")["properties"]
    assert "stacembed:status" not in props and "stacembed:status_note" not in props
    assert props["stacembed:program_inputs"] == {
        "pixels": "pixels",
        "time": ["sin_week", "cos_week", "sin_hour", "cos_hour"],
        "latlon": ["sin_lat", "cos_lat", "sin_lon", "cos_lon"],
        "gsd": "gsd",
        "waves": "wavelengths",
    }
    card = load_card(str(CARDS["clay-v1.5"]))
    inputs = ProgramInputs.from_card(card)
    assert inputs.pixels_key == "pixels"
    assert inputs.context_inputs == ("temporal_coords", "acquisition_hour", "location_coords", "gsd", "wavelengths")
    auxiliary = {e["name"]: e["input"]["shape"] for e in props["mlm:input"] if not e["bands"]}
    assert auxiliary == {"time": [-1, 4], "latlon": [-1, 4], "gsd": [1], "waves": [len(card.bands)]}
    assert props["mlm:hyperparameters"]["gsd"] == 10
    assert model_asset(item("clay-v1.5"))["mlm:artifact_type"] == "torch.export.save"
    # There is no untrained network: the program is the model.
    with pytest.raises(ModelError, match="no untrained network"):
        create_backbone(card)


def test_terramind_cards_read_s1_as_db_and_run_without_any_input(registry):
    """TerraMind's S1RTC statistics are in dB (negative means: terramind_register.py 231, 286), STAC
    RTC assets are linear power (Planetary Computer: 'calibrated intensity'): stacembed:sar_db. TerraMind
    embeds whatever subset of its modalities it is given (terramind_vit.py 265-283): every input is
    optional; the DEM is static."""
    from terratorch.models.backbones.terramind.model import terramind_register as tm

    for name in ("terramind-1.0-base", "terramind-1.0-large"):
        props = item(name)["properties"]
        s2, s1, dem = props["mlm:input"]
        assert tm.v1_pretraining_mean["untok_sen1rtc@224"] == [step["mean"] for step in s1["value_scaling"]]
        assert all(step["mean"] < 0 for step in s1["value_scaling"])  # decibels
        assert s1["stacembed:sar_db"] is True and "stacembed:sar_db" not in s2 and "stacembed:sar_db" not in dem
        assert dem["stacembed:static"] is True
        assert props["stacembed:optional_inputs"] == ["S2L2A", "S1RTC", "DEM"]
        assert "stacembed:status" not in props


@pytest.mark.parametrize("name", ["dofa-base", "dofa-large"])
def test_dofa_cards_give_the_network_their_bands_wavelengths(name):
    """The builder conditions DOFA on the card's eo:bands wavelengths (DOFA's README values) unless a
    run passes the items' own; it keeps the cls token out of the mean (tests/test_terratorch.py)."""
    pytest.importorskip("terratorch")
    from stacembed.models.backbones import DOFABackbone

    card = load_card(str(CARDS[name]))
    assert "stacembed:status" not in item(name)["properties"]
    with torch.device("meta"):
        backbone = create_backbone(card)
    assert isinstance(backbone, DOFABackbone) and backbone.context_inputs == ("wavelengths",)
    assert list(backbone.wavelengths) == pytest.approx(WAVELENGTHS[name])
    assert backbone.num_prefix_tokens == 1 and backbone.patch_size == (16, 16)
    assert not any(key.startswith(("model.dofa_model.fc_norm", "model.dofa_model.head"))
                   for key in backbone.state_dict())


@pytest.mark.parametrize("name", ["terramind-1.0-base", "dofa-base"])
def test_base_cards_build_with_stacembeds_terratorch_builder(name):
    """The card's hyperparameters are the builder's keyword arguments: the network it builds (on the
    CPU: TerraMind cannot be built on the meta device) gives the card's embedding size."""
    from stacembed.models.registry import registry_prefix

    if registry_prefix("terratorch:probe") is None:
        pytest.skip("stacembed has no terratorch: builder")
    card = load_card(str(CARDS[name]))
    model = create_backbone(card).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, len(card.bands), *card.input_size))
    assert tuple(out.shape) == (2, card.embedding_size)
    if name.startswith("terramind"):
        assert model.inputs == tuple((i.name, len(i.bands)) for i in card.inputs)
        assert model.patch_size == (16, 16)


def test_every_flagship_card_is_built_in():
    assert all(path.is_file() for path in CARDS.values())
    assert {Path(p).stem for p in CARDS_DIR.glob("*.json")} >= set(FACTS)
