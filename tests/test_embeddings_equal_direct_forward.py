"""An embedding must equal a direct forward pass on the same pixels, computed independently.

The reference path shares no code with stacembed: rasterio reads each chip window straight from
the source COGs, numpy applies raster scale/offset and the card's z-score, timm builds the
network and safetensors loads the weights.
"""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import timm
import torch
from conftest import DEMO_CARD, SYNTHETIC_BANDS
from rasterio.windows import Window
from safetensors.torch import load_file


def reference_embedding(item_dir, card, window, scale, offset, nodata):
    props = card["properties"]
    stats = props["mlm:input"][0]["value_scaling"]
    keys = [key for key, _ in SYNTHETIC_BANDS]  # same order as the card's bands
    chans = []
    for key, step in zip(keys, stats, strict=True):
        with rasterio.open(item_dir / f"{key}.tif") as ds:
            raw = ds.read(1, window=window, boundless=True, fill_value=nodata).astype("float64")
        value = np.where(raw == nodata, np.nan, raw * scale + offset)
        chans.append((value - step["mean"]) / step["stddev"])
    x = np.nan_to_num(np.stack(chans), nan=0.0)[None].astype("float32")
    model = timm.create_model(props["mlm:architecture"], pretrained=False, in_chans=len(keys), num_classes=0)
    model.load_state_dict(load_file(str(DEMO_CARD.parent / card["assets"]["weights"]["href"])))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x))[0].numpy()


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dialect", ["1.0", "1.1"])
def test_parquet_and_cog_embeddings_equal_a_direct_forward_pass(synthetic_catalog, cli, tmp_path, dialect):
    catalog = synthetic_catalog(dialect, n_items=1, shape=(90, 150), scale=0.5, offset=-100.0,
                                nodata=0, nodata_rows=20)
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--out", out, "--chip-size", "48", "--stride", "40",
                 "--min-valid", "0.3", "-q")
    assert result.exit_code == 0, result.output
    card = json.loads(DEMO_CARD.read_text())
    item_dir = catalog.parent / "synthetic" / "item-0"
    table = gpd.read_parquet(next(out.glob("*/item-0/item-0.parquet")))
    assert len(table) > 4
    with rasterio.open(next(out.glob("*/item-0/item-0.tif"))) as cog:
        grid = cog.read()
    for _, row in table.iterrows():
        window = Window(row.col_off, row.row_off, row.width, row.height)
        expected = reference_embedding(item_dir, card, window, 0.5, -100.0, 0)
        assert cosine(np.asarray(row.embedding), expected) >= 0.9999
        np.testing.assert_allclose(row.embedding, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grid[:, row.chip_row, row.chip_col], row.embedding, rtol=0, atol=0)
