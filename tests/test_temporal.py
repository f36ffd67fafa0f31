"""Temporal models: --time-steps T picks T acquisitions per location and stacks them in time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from conftest import DEMO_CARD, SYNTHETIC_BANDS, make_catalog, make_item

from stacembed import RunConfig, run
from stacembed.embeddings import read_geoparquet
from stacembed.errors import ResolveError
from stacembed.models import register_architecture
from stacembed.models.backbones.prithvi import PrithviViT

TINY = dict(img_size=32, patch_size=(1, 16, 16), num_frames=2, in_chans=6, embed_dim=32, depth=2, num_heads=2)


@register_architecture("test_tiny_prithvi")
def _tiny(card):
    return PrithviViT(**TINY)


@pytest.fixture(scope="module")
def series_catalog(tmp_path_factory):
    """Location A: four acquisitions (cloud 50, 10, 30, 5 %); location B: one."""
    root = tmp_path_factory.mktemp("series")
    items = []
    for month, cloud in zip((1, 2, 3, 4), (50.0, 10.0, 30.0, 5.0), strict=True):
        item = make_item(root, f"a-{month}", dialect="1.1", origin=(500000.0, 9100000.0), shape=(64, 64), seed=month)
        item["properties"].update({"datetime": f"2024-0{month}-10T10:00:00Z", "eo:cloud_cover": cloud})
        items.append(item)
    items.append(make_item(root, "b-1", dialect="1.1", origin=(520000.0, 9100000.0), shape=(64, 64), seed=9))
    return make_catalog(root, items)


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    data = json.loads(DEMO_CARD.read_text())
    props = data["properties"]
    props["mlm:name"], props["mlm:architecture"] = "tiny-temporal", "test_tiny_prithvi"
    props["mlm:input"][0]["input"]["shape"] = [-1, 6, 2, 32, 32]
    props["mlm:output"][0]["result"]["shape"] = [-1, 32]
    path = tmp_path_factory.mktemp("card") / "card.json"
    path.write_text(json.dumps(data))
    return path


def test_two_time_steps_pick_the_least_cloudy_of_each_half(series_catalog, card, tmp_path, caplog):
    out = tmp_path / "out"
    summary = run(RunConfig(out=out, catalog=str(series_catalog), model=str(card), weights="random",
                            time_steps=2, formats=("geoparquet",), progress=False))
    assert summary.items_done == ["a-2--a-4"]
    assert "b-1" in caplog.text  # the location with one acquisition was skipped, and said so
    item = json.loads(next(out.glob("*/a-2--a-4/a-2--a-4.json")).read_text())
    derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert [h.rsplit("/", 1)[-1] for h in derived] == ["a-2.json", "a-4.json"]
    props = item["properties"]
    assert props["datetime"] is None
    assert (props["start_datetime"], props["end_datetime"]) == ("2024-02-10T10:00:00Z", "2024-04-10T10:00:00Z")
    assert props["emb:runtime_parameters"]["time_steps"] == 2

    # Independent computation for chip (0, 0): rasterio reads, numpy scaling, the model directly.
    scaling = json.loads(card.read_text())["properties"]["mlm:input"][0]["value_scaling"]
    frames = []
    for item_id in ("a-2", "a-4"):
        bands = []
        for (key, _), step in zip(SYNTHETIC_BANDS, scaling, strict=True):
            with rasterio.open(series_catalog.parent / "synthetic" / item_id / f"{key}.tif") as ds:
                value = ds.read(1, window=((0, 32), (0, 32))).astype("float64")
            bands.append((value - step["mean"]) / step["stddev"])
        frames.append(np.stack(bands))
    x = torch.from_numpy(np.stack(frames, axis=1)[None].astype("float32"))  # (1, C, T, H, W)
    torch.manual_seed(0)
    model = PrithviViT(**TINY).eval()
    with torch.no_grad():
        expected = model(x)[0].numpy()
    table, got = read_geoparquet(next(out.glob("*/a-2--a-4/a-2--a-4.parquet")))
    first = table.column("chip_row").to_numpy() + table.column("chip_col").to_numpy() == 0
    np.testing.assert_allclose(got[first][0], expected, rtol=1e-4, atol=1e-5)


def test_not_enough_acquisitions_is_a_clear_error(series_catalog, card, tmp_path):
    with pytest.raises(ResolveError, match="no location has 5 acquisitions"):
        run(RunConfig(out=tmp_path / "out", catalog=str(series_catalog), model=str(card), weights="random",
                      time_steps=5, progress=False))


TINY_TL = dict(TINY, coords_encoding=("time", "location"), coords_scale_learn=True)


@register_architecture("test_tiny_prithvi_tl")
def _tiny_tl(card):
    return PrithviViT(**TINY_TL)


def test_time_and_location_coordinates_reach_models_that_use_them(series_catalog, card, tmp_path):
    from pyproj import Transformer

    data = json.loads(card.read_text())
    data["properties"]["mlm:architecture"] = "test_tiny_prithvi_tl"
    tl_card = tmp_path / "tl.json"
    tl_card.write_text(json.dumps(data))
    out = tmp_path / "out"
    run(RunConfig(out=out, catalog=str(series_catalog), model=str(tl_card), weights="random", time_steps=2,
                  formats=("geoparquet",), progress=False))
    table, got = read_geoparquet(next(out.glob("*/a-2--a-4/a-2--a-4.parquet")))
    row = int(np.flatnonzero(table.column("chip_row").to_numpy() + table.column("chip_col").to_numpy() == 0)[0])

    scaling = data["properties"]["mlm:input"][0]["value_scaling"]
    frames = []
    for item_id in ("a-2", "a-4"):
        bands = []
        for (key, _), step in zip(SYNTHETIC_BANDS, scaling, strict=True):
            with rasterio.open(series_catalog.parent / "synthetic" / item_id / f"{key}.tif") as ds:
                bands.append((ds.read(1, window=((0, 32), (0, 32))).astype("float64") - step["mean"]) / step["stddev"])
                centre = ds.transform * (16, 16)
                crs = ds.crs
        frames.append(np.stack(bands))
    x = torch.from_numpy(np.stack(frames, axis=1)[None].astype("float32"))
    lon, lat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True).transform(*centre)
    torch.manual_seed(0)
    model = PrithviViT(**TINY_TL).eval()
    with torch.no_grad():
        # 2024-02-10 is day 41, 2024-04-10 day 101 (a leap year)
        expected = model(x, temporal_coords=torch.tensor([[[2024.0, 41.0], [2024.0, 101.0]]]),
                         location_coords=torch.tensor([[lat, lon]], dtype=torch.float32))[0].numpy()
        without = model(x)[0].numpy()
    np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, without, rtol=1e-4, atol=1e-5)  # the coordinates mattered
