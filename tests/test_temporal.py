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


# --- Bands on several grids (Sentinel-2's 10 and 20 m bands, multiscale Zarr stores) ---------------


def _mixed_resolution_catalog(root, dates: list[str]):
    """One location, an item per date: blue, green, red, nir as 10 m COGs (64 x 64), swir16 and
    swir22 as 20 m COGs (32 x 32) over the same 640 m, as Sentinel-2 L2A delivers them."""
    from affine import Affine
    from conftest import _lonlat_box, pixels, write_cog

    west, north = 500000.0, 9100000.0
    items = []
    for index, date in enumerate(dates):
        item_id = f"s2-{date}"
        item = make_item(root, item_id, dialect="1.1", origin=(west, north), shape=(64, 64), seed=index + 1,
                         with_proj=False)
        for i, (key, _) in enumerate(SYNTHETIC_BANDS):
            res = 10.0 if i < 4 else 20.0
            size = int(640 / res)
            write_cog(root / item_id / f"{key}.tif", pixels(100 * index + i, size, size)[None],
                      Affine(res, 0, west, 0, -res, north))
            item["assets"][key]["gsd"] = res
        box = _lonlat_box(west, north - 640, west + 640, north)
        item["geometry"]["coordinates"] = [box]
        item["bbox"] = [min(p[0] for p in box), min(p[1] for p in box), max(p[0] for p in box),
                        max(p[1] for p in box)]
        item["properties"].update({"datetime": f"{date}T10:00:00Z", "eo:cloud_cover": 10.0 + index})
        items.append(item)
    return make_catalog(root, items)


def _chips(config) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    """Every chip's pixels (band, [time,] h, w) of every series of ``config``, read as a run reads them."""
    from stacembed.job import Inputs

    inputs = Inputs.resolve(config)
    out = {}
    for series in inputs.series:
        spec = inputs.feed_spec(inputs.plan_item(series), batch_size=4)
        out[series.id] = {(chip.row, chip.col): np.array(pixels) for batch in spec.batches()
                          for chip, pixels in zip(batch.chips, batch.pixels, strict=True)}
    return out


def _assert_series_equal_single_times(series_config, single_config, ids: list[str], dates_used: list[str]) -> None:
    series = _chips(series_config)
    assert list(series) == [f"{dates_used[0]}--{dates_used[-1]}"]
    single = _chips(single_config)
    assert set(single) == set(ids)
    chips = series[f"{dates_used[0]}--{dates_used[-1]}"]
    assert len(chips) > 0
    for key, block in chips.items():
        assert block.shape[1] == len(dates_used)
        for t, item_id in enumerate(dates_used):
            np.testing.assert_array_equal(block[:, t], single[item_id][key])
    assert not np.array_equal(*(block[:, t] for t in range(2)))  # the dates differ


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_a_series_of_items_with_10_and_20_m_bands_reads_each_date_like_a_single_time_run(
        tmp_path, card, resampling):
    catalog = _mixed_resolution_catalog(tmp_path / "stac", ["2024-03-01", "2024-06-01", "2024-09-01"])
    common = dict(catalog=str(catalog), model=str(card), weights="random", resolution=10.0,
                  resampling=resampling, min_valid=0.0, progress=False)
    # Before: "bands ... are not on one pixel grid (resolutions 10, 20)", though --resolution was given.
    summary = run(RunConfig(out=tmp_path / "out", time_steps=2, formats=("geoparquet",), **common))
    assert summary.items_done == ["s2-2024-03-01--s2-2024-09-01"]  # bins [03, 06] and [09]: least cloudy each
    _assert_series_equal_single_times(
        RunConfig(out=tmp_path / "a", time_steps=2, **common), RunConfig(out=tmp_path / "b", time_steps=1, **common),
        ["s2-2024-03-01", "s2-2024-06-01", "s2-2024-09-01"], ["s2-2024-03-01", "s2-2024-09-01"])


def test_mixed_resolutions_in_a_series_still_need_a_resolution(tmp_path, card):
    from stacembed.errors import BandError

    catalog = _mixed_resolution_catalog(tmp_path / "stac", ["2024-03-01", "2024-06-01"])
    with pytest.raises(BandError, match=r"not on one pixel grid \(resolutions 10, 20\); pass --resolution"):
        run(RunConfig(out=tmp_path / "out", catalog=str(catalog), model=str(card), weights="random",
                      time_steps=2, progress=False))


def test_a_series_of_multiscale_zarr_items_reads_each_date_like_a_single_time_run(tmp_path, card):
    pytest.importorskip("zarr", reason="the Zarr reader needs zarr (pip install 'stacembed[zarr]')")
    from test_zarr import eopf_item, eopf_pixels, write_eopf_zarr

    lines = []
    for index, date in enumerate(["2025-01-09", "2025-02-08"]):
        store = write_eopf_zarr(tmp_path / f"d{index}" / "S2.zarr", eopf_pixels(seed=index + 3), 3)
        doc = json.loads(eopf_item(store, item_id=f"eopf-{date}").read_text())
        doc["properties"]["datetime"] = f"{date}T10:04:01Z"
        lines.append(json.dumps(doc))
    (tmp_path / "items.ndjson").write_text("\n".join(lines))
    # blue/green/red from each store's r20m level, nir (b08: r10m only) averaged, swir at 20 m.
    common = dict(items=str(tmp_path / "items.ndjson"), model=str(card), weights="random", resolution=20.0,
                  resampling="average", min_valid=0.0, stride=16, progress=False)
    _assert_series_equal_single_times(
        RunConfig(out=tmp_path / "a", time_steps=2, **common), RunConfig(out=tmp_path / "b", time_steps=1, **common),
        ["eopf-2025-01-09", "eopf-2025-02-08"], ["eopf-2025-01-09", "eopf-2025-02-08"])
