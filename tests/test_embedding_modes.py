"""What an embedding is: pooling modes, intermediate layers, dense maps, model artifacts, int8.

Expected values come from timm's own API (forward_features / forward_intermediates /
forward_head) or from numpy, never from stacembed's pooling code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import timm
import torch
from conftest import DEMO_CARD, SAMPLE
from safetensors.torch import save_file

from stacembed import RunConfig, run
from stacembed.embeddings import read_geoparquet, read_geotiff
from stacembed.errors import ConfigError, ModelError
from stacembed.models.pooling import FeatureModel

ITEM = "L7-olinda-r0c0"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=6, num_classes=0, img_size=32).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 6, 32, 32, generator=torch.Generator().manual_seed(2))


@torch.inference_mode()
def test_transformer_pooling_modes_match_timm(vit, x):
    tokens = vit.forward_features(x)  # (3, 1 + 4, 192)
    torch.testing.assert_close(FeatureModel(vit, "default")(x), vit.forward_head(tokens, pre_logits=True))
    torch.testing.assert_close(FeatureModel(vit, "cls")(x), tokens[:, 0])
    torch.testing.assert_close(FeatureModel(vit, "mean")(x), tokens[:, 1:].mean(1))
    torch.testing.assert_close(FeatureModel(vit, "max")(x), tokens[:, 1:].amax(1))
    dense = FeatureModel(vit, "none")(x)
    assert dense.shape == (3, 192, 2, 2)
    # patch (i, j) is token 1 + 2*i + j: row-major, as the patch embedding lays them out
    torch.testing.assert_close(dense[:, :, 1, 0], tokens[:, 1 + 2 * 1 + 0])


@torch.inference_mode()
def test_intermediate_layer_matches_forward_intermediates(vit, x):
    (block1,) = vit.forward_intermediates(x, indices=[1], norm=False, output_fmt="NLC",
                                         return_prefix_tokens=True, intermediates_only=True)
    spatial, prefix = block1
    torch.testing.assert_close(FeatureModel(vit, "cls", layer=1)(x), prefix[:, 0])
    torch.testing.assert_close(FeatureModel(vit, "mean", layer="blocks.1")(x), spatial.mean(1))
    torch.testing.assert_close(FeatureModel(vit, "mean", layer=-1)(x),
                               vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))[:, 1:].mean(1))


@torch.inference_mode()
def test_cnn_pooling_and_stages():
    torch.manual_seed(3)
    cnn = timm.create_model("resnet18", pretrained=False, in_chans=6, num_classes=0).eval()
    x = torch.randn(2, 6, 64, 64)
    maps = cnn.forward_features(x)
    torch.testing.assert_close(FeatureModel(cnn, "mean")(x), maps.mean((2, 3)))
    torch.testing.assert_close(FeatureModel(cnn, "max")(x), maps.amax((2, 3)))
    assert FeatureModel(cnn, "none")(x).shape == (2, 512, 2, 2)
    stage2 = FeatureModel(cnn, "mean", layer="layer2")(x)
    torch.testing.assert_close(stage2, cnn.layer2(cnn.layer1(cnn.maxpool(cnn.act1(cnn.bn1(cnn.conv1(x))))))
                               .mean((2, 3)))
    with pytest.raises(ModelError, match="cls token"):
        FeatureModel(cnn, "cls")(x)
    with pytest.raises(ConfigError, match="has \\d+ layers"):
        FeatureModel(cnn, "mean", layer=99)
    with pytest.raises(ConfigError, match="not a module"):
        FeatureModel(cnn, "mean", layer="nope")


def vit_card(tmp_path, weights_name: str | None = None) -> str:
    """The demo card turned into a 32 px ViT (2x2 patches of 16 px), with weights we made."""
    card = json.loads(DEMO_CARD.read_text())
    props = card["properties"]
    props["mlm:name"] = "test-vit"
    props["mlm:architecture"] = "vit_tiny_patch16_224"
    props["mlm:input"][0]["input"]["shape"] = [-1, 6, 32, 32]
    props["mlm:output"][0]["result"]["shape"] = [-1, 192]
    asset = card["assets"]["weights"]
    asset.pop("file:checksum", None)
    torch.manual_seed(4)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=6, num_classes=0, img_size=32)
    save_file(model.state_dict(), str(tmp_path / "vit.safetensors"))
    asset["href"] = "./vit.safetensors"
    path = tmp_path / "vit.json"
    path.write_text(json.dumps(card))
    return str(path)


def embed(tmp_path, name: str, **options):
    config = RunConfig(out=tmp_path / name, catalog=str(SAMPLE), ids=(ITEM,), progress=False, **options)
    run(config)
    return next((tmp_path / name).glob(f"*/{ITEM}/{ITEM}.json"))


def test_dense_embeddings_are_a_georeferenced_patch_map(tmp_path):
    card = vit_card(tmp_path)
    item_file = embed(tmp_path, "dense", model=card, pooling="none", formats=("geotiff",), min_valid=0.0)
    pooled_file = embed(tmp_path, "mean", model=card, pooling="mean", formats=("geotiff",), min_valid=0.0)
    item = json.loads(item_file.read_text())
    collection = json.loads((item_file.parent.parent / "collection.json").read_text())
    assert collection["emb:type"] == "pixel" and collection["emb:dimensions"] == 192
    dense, profile = read_geotiff(item_file.parent / f"{ITEM}.tif")
    with rasterio.open(SAMPLE.parent / "landsat-etm-sample" / ITEM / "blue.tif") as src:
        source = src.transform
        rows, cols = -(-src.height // 32), -(-src.width // 32)
    t = profile["transform"]
    assert (t.a, t.e, t.c, t.f) == pytest.approx((source.a * 16, source.e * 16, source.c, source.f))
    assert dense.shape == (192, rows * 2, cols * 2)
    assert item["assets"]["embeddings"]["proj:transform"] == pytest.approx(list(t)[:6])
    # The mean of a chip's 2x2 patch map is its mean-pooled embedding.
    pooled, _ = read_geotiff(pooled_file.parent / f"{ITEM}.tif")
    np.testing.assert_allclose(dense[:, 2:4, 4:6].mean(axis=(1, 2)), pooled[:, 1, 2], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="stride"):
        embed(tmp_path, "bad", model=card, pooling="none", formats=("geotiff",), stride=16)
    with pytest.raises(ConfigError, match="GeoTIFF only"):
        embed(tmp_path, "bad2", model=card, pooling="none", formats=("geoparquet",))


def test_int8_round_trip_within_half_a_step(tmp_path):
    floats = embed(tmp_path, "f32", formats=("geoparquet", "geotiff"), weights="random")
    for mode in ("per-dimension", "global"):
        quantized = embed(tmp_path, f"i8-{mode}", formats=("geoparquet", "geotiff"), weights="random",
                          dtype="int8", quantization=mode)
        item = json.loads(quantized.read_text())
        q = item["properties"]["emb:quantization"]
        assert q["quantized_dtype"] == "int8" and q["original_dtype"] == "float32" and len(q["scale"]) == 96
        step = np.asarray(q["scale"])
        if mode == "global":
            assert len(set(q["scale"])) == 1
        _, expected = read_geoparquet(floats.parent / f"{ITEM}.parquet")
        table, got = read_geoparquet(quantized.parent / f"{ITEM}.parquet")
        assert table.schema.field("embedding").type.value_type == "int8"
        assert np.all(np.abs(got - expected) <= step / 2 + 1e-6)
        cog, profile = read_geotiff(quantized.parent / f"{ITEM}.tif")
        reference, _ = read_geotiff(floats.parent / f"{ITEM}.tif")
        assert profile["dtype"] == "int8" and profile["nodata"] == -128
        assert np.array_equal(np.isnan(cog), np.isnan(reference))
        valid = ~np.isnan(reference)
        assert np.all(np.abs(cog - reference)[valid]
                      <= np.repeat(step[:, None, None] / 2 + 1e-6,
                                   cog.shape[1] * cog.shape[2]).reshape(cog.shape)[valid])


def test_a_pt2_artifact_runs_through_the_pipeline(tmp_path):
    from stacembed.models import create_backbone, resolve_card
    from stacembed.models.weights import load_weights

    card = resolve_card("stacembed-demo-landsat")
    model = create_backbone(card)
    load_weights(model, DEMO_CARD.parent / "stacembed-demo-landsat.safetensors")
    model.eval()
    example = torch.zeros(2, 6, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(tmp_path / "model.pt2"))
    _, reference = read_geoparquet(embed(tmp_path, "safetensors", formats=("geoparquet",)).with_suffix(".parquet"))
    for name in ("model.pt2",):
        _, got = read_geoparquet(embed(tmp_path, f"run-{name}", formats=("geoparquet",),
                                       weights=str(tmp_path / name)).with_suffix(".parquet"))
        cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.9999


def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module: loading it means unpickling code
    with pytest.raises(ModelError, match="never unpickles"):
        embed(tmp_path, "pickled", weights=str(path))


ARCHITECTURES = {
    # card architecture: (input shape, embedding size)
    "test_resnet": ((6, 64, 64), 96),
    "vit_tiny_patch16_224": ((6, 32, 32), 192),
    "test_tiny_prithvi_artifacts": ((6, 2, 32, 32), 32),
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_artifact_type_embeds_like_a_direct_forward_pass(architecture, tmp_path):
    from stacembed.embed import Embedder
    from stacembed.models import ModelCard, create_backbone, register_architecture
    from stacembed.models.backbones.prithvi import PrithviViT

    register_architecture("test_tiny_prithvi_artifacts")(
        lambda card: PrithviViT(img_size=32, num_frames=2, embed_dim=32, depth=2, num_heads=2))
    shape, dims = ARCHITECTURES[architecture]
    data = json.loads(DEMO_CARD.read_text())
    data["properties"]["mlm:architecture"] = architecture
    data["properties"]["mlm:input"][0]["input"]["shape"] = [-1, *shape]
    data["properties"]["mlm:output"][0]["result"]["shape"] = [-1, dims]
    data["properties"]["mlm:input"][0]["value_scaling"] = None
    del data["assets"]["weights"]
    card = ModelCard.from_item(data, str(tmp_path / "card.json"))
    torch.manual_seed(7)
    model = create_backbone(card).eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = model(x).numpy()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.jit.trace(model, x).save(str(tmp_path / "w.torchscript"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(tmp_path / "w.pt2"))
    for name in ("w.safetensors", "w.pt", "w.torchscript", "w.pt2"):
        got = Embedder.from_card(card, tmp_path / name, torch.device("cpu"),
                                 time_steps=shape[1] if len(shape) == 4 else 1)(x.numpy())
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() >= 0.9999, name
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
