"""Several modalities in one run: a card with inputs S2L2A, S1GRD and DEM, three collections on
three different pixel grids (README "Several modalities").

The synthetic scene: two Sentinel-2-like locations (10 m, UTM 25S, 4 bands, A and B, 2 km
apart), Sentinel-1-like scenes (20 m, UTM 24S, VV/VH linear power) at three times, and a DEM
(1 arcsecond, EPSG:4326) in two tiles that split location A and leave B uncovered. Every chip
is checked against an independent computation: rasterio reads of the S2 window, and
``rasterio.warp.reproject`` of the S1 and DEM files onto the chip's own window (one pixel
column at a time: GDAL's warper approximates the transform along each scanline unless it is a
single pixel, and stacembed warps with the exact transform so that a pixel is the same whatever
window it is read in), mosaicked and converted to dB by numpy; the embeddings against a direct
forward pass on those chips.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import DEMO_CARD, pixels
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from stac_validation import validate_tree
from torch import nn

from stacembed import RunConfig, run
from stacembed.config import parse_duration
from stacembed.embeddings import read_geoparquet
from stacembed.errors import BandError, ConfigError, ResolveError
from stacembed.job import Inputs
from stacembed.models import register_architecture

S2_CRS, S1_CRS, DEM_CRS = CRS.from_epsg(32725), CRS.from_epsg(32724), CRS.from_epsg(4326)
S2_BANDS = [("B02", "blue", 0.49), ("B03", "green", 0.56), ("B04", "red", 0.665), ("B08", "nir", 0.842)]
S2_SHAPE = (96, 128)  # 3 x 4 chips of 32 px
ORIGINS = {"s2-a": (500000.0, 9100000.0), "s2-b": (502000.0, 9100000.0)}
DATES = {"s2-a": "2024-06-10", "s2-b": "2024-06-25"}
S1_DATES = {"s1-near": "2024-06-12", "s1-mid": "2024-06-16", "s1-far": "2024-06-30"}
SCALE, OFFSET = 0.0001, -0.1
CHIP = 32
# Value scaling of the card's inputs, per band (z-score).
S2_STATS = [(0.01, 0.03)] * 4
S1_STATS = [(-8.0, 3.0), (-15.0, 3.0)]
DEM_STATS = [(120.0, 40.0)]


class TinyModal(nn.Module):
    """A small network that mixes every band of every modality (its output depends on all 7)."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(bands, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@register_architecture("test_tiny_modal")
def _tiny(card):
    return TinyModal(len(card.bands))


# --- the synthetic scene -------------------------------------------------------------------------

def write_tif(path: Path, data: np.ndarray, crs: CRS, transform: Affine, nodata: float | None = None) -> None:
    with rasterio.open(path, "w", driver="COG", width=data.shape[-1], height=data.shape[-2], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data[None])


def lonlat_polygon(crs: CRS, bounds: tuple[float, float, float, float]) -> dict:
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    west, south, east, north = bounds
    edge = np.linspace(0, 1, 9)
    across, up = west + (east - west) * edge, south + (north - south) * edge
    xs = np.concatenate([across, np.full(9, east), across[::-1], np.full(9, west)])
    ys = np.concatenate([np.full(9, south), up, np.full(9, north), up[::-1]])
    lon, lat = to_lonlat.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def item_json(item_id: str, collection: str, when: str, geometry: dict, assets: dict) -> dict:
    ring = geometry["coordinates"][0]
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": collection,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/raster/v2.0.0/schema.json"],
        "geometry": geometry,
        "bbox": [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)],
        "properties": {"datetime": f"{when}T10:00:00Z"}, "assets": assets, "links": [],
    }


def asset(href: str, **band) -> dict:
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "bands": [band]}


def write_catalog(root: Path, collections: dict[str, list[dict]]) -> Path:
    """A static catalog of several collections (catalog -> collection -> item), relative links."""
    children = []
    for cid, items in collections.items():
        cdir = root / cid
        for item in items:
            item["links"] = [{"rel": "collection", "href": "../collection.json"},
                             {"rel": "parent", "href": "../collection.json"},
                             {"rel": "root", "href": "../../catalog.json"}]
            (cdir / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
        boxes = [i["bbox"] for i in items]
        collection = {
            "type": "Collection", "stac_version": "1.1.0", "id": cid, "description": f"synthetic {cid}",
            "license": "CC0-1.0",
            "extent": {"spatial": {"bbox": [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                             max(b[2] for b in boxes), max(b[3] for b in boxes)]]},
                       "temporal": {"interval": [["2021-01-01T00:00:00Z", None]]}},
            "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
            + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json"} for i in items],
        }
        (cdir / "collection.json").write_text(json.dumps(collection))
        children.append({"rel": "child", "href": f"./{cid}/collection.json"})
    catalog = {"type": "Catalog", "stac_version": "1.1.0", "id": "root", "description": "three modalities",
               "links": [{"rel": "root", "href": "./catalog.json"}, *children]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


def s2_transform(item_id: str) -> Affine:
    x, y = ORIGINS[item_id]
    return Affine(10.0, 0, x, 0, -10.0, y)


def s2_bounds(item_id: str) -> tuple[float, float, float, float]:
    x, y = ORIGINS[item_id]
    return (x, y - S2_SHAPE[0] * 10.0, x + S2_SHAPE[1] * 10.0, y)


def build_scene(root: Path, *, wavelengths: bool = True) -> Path:
    collections: dict[str, list[dict]] = {"s2": [], "s1": [], "dem": []}
    for n, item_id in enumerate(ORIGINS):
        (root / "s2" / item_id).mkdir(parents=True)
        assets = {}
        for i, (key, common, micrometres) in enumerate(S2_BANDS):
            write_tif(root / "s2" / item_id / f"{key}.tif", pixels(10 * n + i + 1, *S2_SHAPE), S2_CRS,
                      s2_transform(item_id))
            band = {"name": key, "eo:common_name": common, "data_type": "uint16", "raster:scale": SCALE,
                    "raster:offset": OFFSET}
            if wavelengths:
                band["eo:center_wavelength"] = micrometres
            assets[key] = asset(f"./{key}.tif", **band)
        collections["s2"].append(item_json(item_id, "s2", DATES[item_id],
                                           lonlat_polygon(S2_CRS, s2_bounds(item_id)), assets))

    # S1: 20 m in UTM 24S, covering both locations with a margin.
    west, south, east, north = transform_bounds(S2_CRS, S1_CRS, 499800, 9098800, 503500, 9100200)
    west, north = np.floor(west / 20) * 20, np.ceil(north / 20) * 20
    width, height = int(np.ceil((east - west) / 20)), int(np.ceil((north - south) / 20))
    s1_transform = Affine(20.0, 0, west, 0, -20.0, north)
    yy, xx = np.mgrid[0:height, 0:width]
    for n, (item_id, when) in enumerate(S1_DATES.items()):
        (root / "s1" / item_id).mkdir(parents=True)
        vv = (0.05 + 0.04 * np.sin(xx / (5.0 + n)) * np.cos(yy / 7.0) + 0.002 * xx / width).astype("float32") + 0.06
        vh = (0.2 * vv + 0.01 * np.cos(xx / 3.0 + n)).astype("float32") + 0.012
        write_tif(root / "s1" / item_id / "vv.tif", vv, S1_CRS, s1_transform)
        write_tif(root / "s1" / item_id / "vh.tif", vh, S1_CRS, s1_transform)
        bounds = (west, north - 20 * height, west + 20 * width, north)
        collections["s1"].append(item_json(item_id, "s1", when, lonlat_polygon(S1_CRS, bounds), {
            "vv": asset("./vv.tif", name="VV", data_type="float32"),
            "vh": asset("./vh.tif", name="VH", data_type="float32")}))

    # DEM: 1 arcsecond tiles split at the middle of location A, ending before B.
    a_west, a_south, a_east, a_north = transform_bounds(S2_CRS, DEM_CRS, *s2_bounds("s2-a"))
    step = 1 / 3600
    middle = np.round((a_west + a_east) / 2 / step) * step
    for item_id, (left, right) in {"dem-e": (middle, a_east + 0.002), "dem-w": (a_west - 0.002, middle)}.items():
        top = np.ceil((a_north + 0.002) / step) * step
        left = np.round(left / step) * step
        width, height = int(np.ceil((right - left) / step)), int(np.ceil((top - (a_south - 0.002)) / step))
        transform = Affine(step, 0, left, 0, -step, top)
        lon = left + (np.arange(width) + 0.5) * step
        lat = top - (np.arange(height) + 0.5) * step
        elevation = (100 + 8000 * (lon[None, :] - a_west) + 5000 * np.sin((lat[:, None] + 8.1) * 900)).astype("float32")
        (root / "dem" / item_id).mkdir(parents=True)
        write_tif(root / "dem" / item_id / "dem.tif", elevation, DEM_CRS, transform)
        bounds = (left, top - height * step, left + width * step, top)
        collections["dem"].append(item_json(item_id, "dem", "2021-04-22", lonlat_polygon(DEM_CRS, bounds),
                                            {"data": asset("./dem.tif", name="elevation", data_type="float32")}))
    return write_catalog(root, collections)


def write_card(path: Path, *, optional: list[str] | None = None, sar_db: bool = True, **properties) -> Path:
    data = json.loads(DEMO_CARD.read_text())
    props = data["properties"]
    props["mlm:name"], props["mlm:architecture"] = "tiny-modal", "test_tiny_modal"

    def entry(name, bands, stats):
        return {"name": name, "bands": bands,
                "input": {"shape": [-1, len(bands), CHIP, CHIP], "dim_order": ["batch", "bands", "height", "width"],
                          "data_type": "float32"},
                "value_scaling": [{"type": "z-score", "mean": m, "stddev": s} for m, s in stats]}

    s1 = entry("S1GRD", ["vv", "vh"], S1_STATS)
    if sar_db:
        s1["stacembed:sar_db"] = True
    props["mlm:input"] = [entry("S2L2A", ["blue", "green", "red", "nir"], S2_STATS), s1,
                          entry("DEM", ["elevation"], DEM_STATS)]
    props["mlm:output"][0]["result"]["shape"] = [-1, 16]
    if optional is not None:
        props["stacembed:optional_inputs"] = optional
    props.update(properties)
    data["assets"] = {k: v for k, v in data["assets"].items() if "mlm:model" not in v.get("roles", ())}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return build_scene(tmp_path_factory.mktemp("modalities"))


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    return {"optional": write_card(root / "optional.json", optional=["DEM"]),
            "required": write_card(root / "required.json")}


def config(scene: Path, card: Path, out: Path, **options) -> RunConfig:
    values = dict(out=out, catalog=str(scene), model=str(card), weights="random", chip_size=CHIP,
                  modalities={"S2L2A": "s2", "S1GRD": "s1", "DEM": "dem"}, max_time_gap="10d",
                  formats=("geoparquet",), progress=False)
    values.update(options)
    return RunConfig(**values)


# --- the independent computation -----------------------------------------------------------------

def warp_exact(path: Path, item_id: str, window: Window, method: str) -> np.ndarray:
    """``path`` reprojected onto the chip ``window`` of S2 item ``item_id`` by rasterio.warp.reproject,
    one pixel column at a time (so that GDAL transforms every pixel exactly); NaN outside the file."""
    with rasterio.open(path) as ds:
        source, crs, transform, nodata = ds.read(1), ds.crs, ds.transform, ds.nodata
    chip = s2_transform(item_id) * Affine.translation(window.col_off, window.row_off)
    out = np.full((int(window.height), int(window.width)), np.nan, "float32")
    for col in range(out.shape[1]):
        column = np.full((out.shape[0], 1), np.nan, "float32")
        reproject(source, column, src_transform=transform, src_crs=crs, src_nodata=nodata,
                  dst_transform=chip * Affine.translation(col, 0), dst_crs=S2_CRS, dst_nodata=np.nan,
                  resampling=Resampling[method])
        out[:, col] = column[:, 0]
    return out


def db(linear: np.ndarray) -> np.ndarray:
    return np.where(linear > 0, 10 * np.log10(linear.astype("float64")), np.nan).astype("float32")


def expected_chip(scene: Path, item_id: str, window: Window, s1_item: str, dem_items: list[str],
                  dem_method: str = "bilinear") -> np.ndarray:
    """The chip's 7 bands in the card's order, from the files alone."""
    root = scene.parent
    bands = []
    for key, _, _ in S2_BANDS:
        with rasterio.open(root / "s2" / item_id / f"{key}.tif") as ds:
            raw = ds.read(1, window=window).astype("float64")
        bands.append((raw * SCALE + OFFSET).astype("float32"))
    for key in ("vv", "vh"):
        bands.append(db(warp_exact(root / "s1" / s1_item / f"{key}.tif", item_id, window, "bilinear")))
    dem = np.full((int(window.height), int(window.width)), np.nan, "float32")
    for dem_item in dem_items:  # the first (by id: static items are all equally near) wins where it has data
        tile = warp_exact(root / "dem" / dem_item / "dem.tif", item_id, window, dem_method)
        dem = np.where(np.isnan(dem), tile, dem)
    bands.append(dem)
    return np.stack(bands)


def forward(chip: np.ndarray) -> np.ndarray:
    stats = np.array(S2_STATS + S1_STATS + DEM_STATS, "float64")
    x = (chip.astype("float64") - stats[:, 0, None, None]) / stats[:, 1, None, None]
    x = np.nan_to_num(x, nan=0.0).astype("float32")
    torch.manual_seed(0)
    model = TinyModal(7).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x[None]))[0].numpy()


def chips_read(cfg: RunConfig) -> dict[str, dict[tuple[int, int], tuple[Window, np.ndarray]]]:
    """What stacembed feeds the model, per output item and chip: the window and the pixels."""
    inputs = Inputs.resolve(cfg)
    found: dict = {}
    for series in inputs.series:
        plan = inputs.plan_item(series)
        for batch in inputs.feed_spec(plan, batch_size=5).batches():
            for chip, chip_pixels in zip(batch.chips, batch.pixels, strict=True):
                found.setdefault(series.id, {})[(chip.row, chip.col)] = (chip.window, np.array(chip_pixels))
    return found


def output_items(out: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*/*/*.json")
            if path.parent.name == path.stem}


# --- the tests -----------------------------------------------------------------------------------

def test_each_chip_is_the_primary_window_with_the_others_warped_onto_it(scene, cards, tmp_path):
    cfg = config(scene, cards["optional"], tmp_path / "out")
    read = chips_read(cfg)
    assert set(read) == {"s2-a", "s2-b"}
    for item_id, chips in read.items():
        assert len(chips) == 12  # the primary's native 3 x 4 chips, every one valid
        for (row, col), (window, got) in chips.items():
            assert (window.col_off, window.row_off, window.width, window.height) == (col * CHIP, row * CHIP, CHIP, CHIP)
            # location A: the nearest S1 scene within 10 days, both DEM tiles; B: the one S1 scene within 10 days
            # of its date, and no DEM (optional: no data)
            s1_item, dems = ("s1-near", ["dem-e", "dem-w"]) if item_id == "s2-a" else ("s1-far", [])
            want = expected_chip(scene, item_id, window, s1_item, dems)
            assert got.shape == (7, CHIP, CHIP)
            np.testing.assert_array_equal(got, want)
            if item_id == "s2-b":
                assert np.isnan(got[6]).all()
            else:
                assert np.isfinite(got).all()
    # both DEM tiles reach into location A
    a = np.concatenate([c[1][6] for c in read["s2-a"].values()], axis=1)
    assert np.isfinite(a).all()


def test_embeddings_equal_a_forward_pass_on_the_independent_chips(scene, cards, tmp_path):
    out = tmp_path / "out"
    summary = run(config(scene, cards["optional"], out))
    assert sorted(summary.items_done) == ["s2-a", "s2-b"]
    for item_id, s1_item, dems in (("s2-a", "s1-near", ["dem-e", "dem-w"]), ("s2-b", "s1-far", [])):
        table, vectors = read_geoparquet(next(out.glob(f"*/{item_id}/{item_id}.parquet")))
        assert len(table) == 12
        rows = table.to_pydict()
        for i in range(len(table)):
            window = Window(rows["col_off"][i], rows["row_off"][i], rows["width"][i], rows["height"][i])
            expected = forward(expected_chip(scene, item_id, window, s1_item, dems))
            np.testing.assert_allclose(vectors[i], expected, rtol=1e-4, atol=1e-5)
        # every chip footprint is the primary's native chip: its pixel edges, in its CRS
        with rasterio.open(scene.parent / "s2" / item_id / "B02.tif") as ds:
            for i in range(len(table)):
                window = Window(rows["col_off"][i], rows["row_off"][i], CHIP, CHIP)
                got = [rows[f"native_{k}"][i] for k in ("xmin", "ymin", "xmax", "ymax")]
                assert got == list(ds.window_bounds(window))

    items = output_items(out)
    a, b = items["s2-a"], items["s2-b"]
    params = a["properties"]["emb:runtime_parameters"]
    assert params["modalities"] == ["S2L2A", "S1GRD", "DEM"]
    assert b["properties"]["emb:runtime_parameters"]["modalities"] == ["S2L2A", "S1GRD"]
    assert params["primary_modality"] == "S2L2A"
    assert params["modality_collections"] == {"S2L2A": "s2", "S1GRD": "s1", "DEM": "dem"}
    assert params["modality_resampling"] == {"S1GRD": "bilinear", "DEM": "bilinear"}
    assert params["sar_db"] == ["S1GRD"] and params["max_time_gap"] == "10d"
    # derived_from: every source of every modality; the item's time and place are the primary's
    derived = sorted(link["href"].rsplit("/", 1)[-1] for link in a["links"] if link["rel"] == "derived_from")
    assert derived == ["dem-e.json", "dem-w.json", "s1-near.json", "s2-a.json"]
    derived_b = sorted(link["href"].rsplit("/", 1)[-1] for link in b["links"] if link["rel"] == "derived_from")
    assert derived_b == ["s1-far.json", "s2-b.json"]
    assert a["properties"]["datetime"] == "2024-06-10T10:00:00Z"
    assert "S1GRD (bilinear, dB)" in a["properties"]["processing:lineage"]
    collection = json.loads(next(out.glob("*/collection.json")).read_text())
    assert [entry["name"] for entry in collection["mlm:input"]] == ["S2L2A", "S1GRD", "DEM"]
    assert {path: errors for path, errors in validate_tree(out).items() if errors} == {}
    # a rerun finds every item finished with the same parameters
    again = run(config(scene, cards["optional"], out))
    assert sorted(again.items_resumed) == ["s2-a", "s2-b"] and not again.items_done


def test_a_required_modality_missing_skips_the_location_with_one_warning(scene, cards, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="stacembed"):
        summary = run(config(scene, cards["required"], out))
    assert summary.items_done == ["s2-a"]
    lines = [r.getMessage() for r in caplog.records if "skipping location" in r.getMessage()]
    assert len(lines) == 1 and "'s2-b'" in lines[0] and "DEM" in lines[0] and "\n" not in lines[0]
    assert output_items(out)["s2-a"]["properties"]["emb:runtime_parameters"]["modalities"] == ["S2L2A", "S1GRD", "DEM"]


def test_the_nearest_item_within_the_time_gap_is_used_and_one_beyond_it_is_not(scene, cards, tmp_path, caplog):
    # 3 days: location A (06-10) has s1-near (06-12); location B (06-25) has s1-far (06-30) 5 days away: skipped
    inputs = Inputs.resolve(config(scene, cards["optional"], tmp_path / "out", max_time_gap="3d"))
    assert [s.id for s in inputs.series] == ["s2-a"]
    assert [a.item.id for a in inputs.series[0].companion("S1GRD").acquisitions] == ["s1-near"]
    assert "'s2-b'" in caplog.text and "S1GRD" in caplog.text and "3d" in caplog.text
    # 20 days: both in reach; each location takes its nearest scene, and only that one (it covers it whole)
    inputs = Inputs.resolve(config(scene, cards["optional"], tmp_path / "out", max_time_gap="20d"))
    picked = {s.id: [a.item.id for a in s.companion("S1GRD").acquisitions] for s in inputs.series}
    assert picked == {"s2-a": ["s1-near"], "s2-b": ["s1-far"]}
    # DEM is static: its 2021 tiles serve whatever the gap
    assert [a.item.id for a in inputs.series[0].companion("DEM").acquisitions] == ["dem-e", "dem-w"]
    # no gap at all: nothing within a day of either location
    with pytest.raises(ResolveError, match="no location has an item of every modality"):
        Inputs.resolve(config(scene, cards["optional"], tmp_path / "out", max_time_gap="1d"))


def test_resampling_per_modality_is_asked_and_recorded(scene, cards, tmp_path):
    cfg = config(scene, cards["optional"], tmp_path / "out", modality_resampling={"DEM": "nearest"})
    read = chips_read(cfg)
    window, got = read["s2-a"][(1, 2)]
    np.testing.assert_array_equal(got, expected_chip(scene, "s2-a", window, "s1-near", ["dem-e", "dem-w"], "nearest"))
    inputs = Inputs.resolve(cfg)
    assert inputs.modal_parameters()["modality_resampling"] == {"S1GRD": "bilinear", "DEM": "nearest"}


def test_bands_of_classes_are_resampled_with_nearest(tmp_path):
    root = tmp_path / "scene"
    catalog = build_scene(root)
    for path in (root / "dem").glob("*/*.json"):
        if path.name == "collection.json":
            continue
        item = json.loads(path.read_text())
        item["assets"]["data"]["bands"][0]["classification:classes"] = [{"value": 1, "name": "land"}]
        path.write_text(json.dumps(item))
    card = write_card(tmp_path / "card.json", optional=["DEM"])
    inputs = Inputs.resolve(config(catalog, card, tmp_path / "out"))
    assert inputs.modal_parameters()["modality_resampling"] == {"S1GRD": "bilinear", "DEM": "nearest"}


def test_without_db_the_linear_values_reach_the_model(scene, tmp_path):
    card = write_card(tmp_path / "linear.json", optional=["DEM"], sar_db=False)
    window, got = chips_read(config(scene, card, tmp_path / "out"))["s2-a"][(0, 0)]
    linear = warp_exact(scene.parent / "s1" / "s1-near" / "vv.tif", "s2-a", window, "bilinear")
    np.testing.assert_array_equal(got[4], linear)


def test_wavelengths_come_from_stac_and_are_recorded_for_models_that_take_them(scene, tmp_path):
    card = write_card(tmp_path / "w.json", optional=["S1GRD", "DEM"], **{"stacembed:wavelengths": True})
    out = tmp_path / "out"
    # a wavelength-aware model needs one for every band it reads: S1 and DEM state none
    with pytest.raises(BandError, match="states none for band vv, vh"):
        Inputs.resolve(config(scene, card, out))
    inputs = Inputs.resolve(config(scene, card, out, modalities={"S2L2A": "s2"}, max_time_gap=None))
    plan = inputs.plan_item(inputs.series[0])
    assert plan.wavelengths == (0.49, 0.56, 0.665, 0.842, None, None, None)
    assert plan.modalities == ["S2L2A"]
    run(config(scene, card, out, modalities={"S2L2A": "s2"}, max_time_gap=None))
    params = output_items(out)["s2-a"]["properties"]["emb:runtime_parameters"]
    assert params["wavelengths"] == [0.49, 0.56, 0.665, 0.842, None, None, None]
    assert params["modalities"] == ["S2L2A"] and params["modality_collections"]["DEM"] is None


def test_wavelengths_reach_a_backbone_that_declares_them(scene, tmp_path):
    seen = []

    class Aware(TinyModal):
        context_inputs = ("wavelengths",)

        def forward(self, x, wavelengths=None):
            if wavelengths is not None:
                seen.append(wavelengths.numpy().copy())
            return super().forward(x)

    register_architecture("test_wavelength_aware")(lambda card: Aware(len(card.bands)))
    card = write_card(tmp_path / "aware.json", optional=["S1GRD", "DEM"])
    data = json.loads(card.read_text())
    data["properties"]["mlm:architecture"] = "test_wavelength_aware"
    card.write_text(json.dumps(data))
    out = tmp_path / "out"
    run(config(scene, card, out, modalities={"S2L2A": "s2"}, max_time_gap=None, ids=("s2-a",)))
    assert seen and seen[0].shape[1] == 7
    np.testing.assert_allclose(seen[0][0][:4], [0.49, 0.56, 0.665, 0.842], rtol=1e-6)
    assert np.isnan(seen[0][0][4:]).all()
    assert output_items(out)["s2-a"]["properties"]["emb:runtime_parameters"]["wavelengths"][:4] == [
        0.49, 0.56, 0.665, 0.842]


def test_a_single_modality_run_records_nothing_new(synthetic_catalog, tmp_path):
    out = tmp_path / "out"
    run(RunConfig(out=out, catalog=str(synthetic_catalog("1.1", n_items=1)), chip_size=32, formats=("geoparquet",),
                  progress=False))
    params = next(iter(output_items(out).values()))["properties"]["emb:runtime_parameters"]
    assert not {"modalities", "primary_modality", "modality_collections", "modality_resampling", "sar_db",
                "max_time_gap", "wavelengths"} & set(params)


def test_a_single_sar_input_is_read_on_its_own_grid_in_db(scene, tmp_path):
    data = json.loads(write_card(tmp_path / "full.json").read_text())
    props = data["properties"]
    props["mlm:input"] = [props["mlm:input"][1]]
    props["mlm:name"] = "tiny-sar"
    card = tmp_path / "sar.json"
    card.write_text(json.dumps(data))
    out = tmp_path / "out"
    cfg = RunConfig(out=out, catalog=str(scene), collections=("s1",), ids=("s1-near",), model=str(card),
                    weights="random", chip_size=CHIP, formats=("geoparquet",), progress=False)
    read = chips_read(cfg)["s1-near"]
    window, got = read[(1, 1)]
    for i, key in enumerate(("vv", "vh")):
        with rasterio.open(scene.parent / "s1" / "s1-near" / f"{key}.tif") as ds:
            np.testing.assert_array_equal(got[i], db(ds.read(1, window=window)))
    run(cfg)
    params = output_items(out)["s1-near"]["properties"]["emb:runtime_parameters"]
    assert params["sar_db"] == ["S1GRD"] and params["modalities"] == ["S1GRD"]
    assert params["modality_resampling"] is None and params["max_time_gap"] is None


def test_primary_can_be_another_input(scene, cards, tmp_path):
    # S1 as the primary: its one 20 m UTM 24S grid per scene is the location; S2 is warped onto it
    cfg = config(scene, cards["optional"], tmp_path / "out", primary="S1GRD", max_time_gap="3d",
                 ids=("s1-near",))
    inputs = Inputs.resolve(cfg)
    assert [s.id for s in inputs.series] == ["s1-near"]
    companion = inputs.series[0].companion("S2L2A")
    assert [a.item.id for a in companion.acquisitions] == ["s2-a"]
    plan = inputs.plan_item(inputs.series[0])
    assert plan.chip_grid.grid.crs == S1_CRS and plan.chip_grid.grid.resolution == (20.0, 20.0)
    assert [read.name for read in plan.reads] == ["S2L2A", "S1GRD", "DEM"]  # still the card's order


@pytest.mark.parametrize("args,message", [
    (["--modality", "S2L2A=s2", "--modality", "S1=s1"], "--modality S1: model tiny-modal has no input 'S1' "
                                                          "(its inputs: S2L2A, S1GRD, DEM)"),
    (["--modality", "S2L2A=s2", "--modality", "S1GRD=nope", "--modality", "DEM=dem"],
     "input S1GRD: collection 'nope' not found"),
    (["--modality", "S2L2A=s2", "--modality", "S1GRD=s1", "--max-time-gap", "1h", "--ids", "s2-a"],
     "input S1GRD: no items matched in"),
    (["--modality", "S2L2A=s2", "--modality", "S1GRD=s1", "--max-time-gap", "1h"],
     "no location has an item of every modality the model needs"),
    (["--modality", "S2L2A=s2", "--modality", "DEM=dem"], "name its collection with --modality S1GRD=COLLECTION"),
    (["--modality", "S2L2A=s2", "--modality", "S1GRD=s1", "--max-time-gap", "soon"], "--max-time-gap must be"),
    (["--modality", "S2L2A=s2", "--modality", "S1GRD=s1", "--modality-resampling", "S1GRD=smooth"],
     "--modality-resampling must be one of"),
    (["--collection", "s2", "--modality", "S2L2A=s2", "--modality", "S1GRD=s1"], "--collection and --modality both"),
])
def test_bad_input_is_one_line(scene, cards, cli, tmp_path, args, message):
    result = cli("run", "--catalog", scene, "--model", cards["optional"], "--weights", "random", "--out",
                 tmp_path / "out", "-q", *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: ") and message in lines[0], result.output


def test_modality_options_on_a_single_input_card_are_one_line_errors(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1)
    for args in (["--modality", "S1GRD=s1"], ["--max-time-gap", "10d"]):
        result = cli("run", "--catalog", catalog, "--out", tmp_path / "out", "-q", *args)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "for models with several inputs" in lines[0], result.output


def test_max_time_gap_reads_as_a_duration():
    assert [parse_duration(v) for v in ("10d", "36h", "90m", " 2 ", "1.5w", "45s")] == [
        "10d", "36h", "90m", "2d", "1.5w", "45s"]
    assert RunConfig(max_time_gap="36h").time_gap_seconds == 36 * 3600
    with pytest.raises(ConfigError, match="--max-time-gap"):
        RunConfig.from_mapping({"max_time_gap": "ten days"}, need_out=False)


def test_presets_know_which_collection_serves_each_modality():
    from stacembed.resolve import load_presets

    presets = load_presets()
    assert presets["earth-search"].collection_for("s2l2a").id == "sentinel-2-l2a"
    assert presets["earth-search"].collection_for("DEM").id == "cop-dem-glo-30"
    assert presets["earth-search"].collection_for("S1GRD").id == "sentinel-1-grd"
    assert presets["planetary-computer"].collection_for("S1RTC").id == "sentinel-1-rtc"
    assert presets["planetary-computer"].collection_for("S1GRD") is None  # RTC is not served as GRD


def test_preset_collections_fill_in_the_inputs_not_named(cards):
    from stacembed.models import load_card
    from stacembed.resolve.modalities import card_modalities

    card = load_card(str(cards["optional"]))
    modalities = card_modalities(card, RunConfig(catalog="earth-search", modalities={"S1GRD": "sentinel-1"}))
    assert [(m.name, m.collection, m.named, m.primary, m.optional, m.static, m.sar_db) for m in modalities] == [
        ("S2L2A", "sentinel-2-l2a", False, True, False, False, False),
        ("S1GRD", "sentinel-1", True, False, False, False, True),
        ("DEM", "cop-dem-glo-30", False, False, True, True, False),
    ]
