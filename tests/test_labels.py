"""Labels onto the embedding grid (``stacembed.learn.labels``), on synthetic label files.

Expectations are computed independently of the code under test: chip majorities known by
construction (a checkerboard sampled in another CRS), area fractions and area-weighted means with
shapely on the polygons transformed by pyproj, majorities and means over overlapping chips by
brute force over the label array, cell values by numpy block means and slices.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from range_http import loopback_environment, serve
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from stacembed.errors import ConfigError, LabelError
from stacembed.grid import Grid
from stacembed.learn import labels as labels_module
from stacembed.learn.labels import ChipLabels, open_labels

UTM33 = CRS.from_epsg(32633)
# Near 18.7°E, 45°N: east of UTM zone 33's own range, so EPSG:32634 is a neighbouring zone here.
X0, Y0 = 790000.0, 5000000.0
RES = 10.0
SIZE = 16  # chip size in source pixels
CHIP = SIZE * RES


def chip_bounds(rows: int, cols: int, size: int = SIZE, stride: int = SIZE) -> np.ndarray:
    """Footprints (n, 4) of a row-major chip grid on the 10 m source grid at (X0, Y0)."""
    row, col = np.divmod(np.arange(rows * cols), cols)
    left, top = X0 + col * stride * RES, Y0 - row * stride * RES
    return np.column_stack([left, top - size * RES, left + size * RES, top])


def write_raster(path: Path, data: np.ndarray, crs: CRS | str | None, transform: Affine,
                 nodata: float | None = None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data, 1)
    return path


def source_transform(res: float = RES) -> Affine:
    return Affine(res, 0.0, X0, 0.0, -res, Y0)


def to_crs(geometry, src: str | CRS, dst: str | CRS):
    return shapely.transform(geometry, Transformer.from_crs(src, dst, always_xy=True).transform, interleaved=False)


# --- rasters ----------------------------------------------------------------------------------

def checker(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The label field, in UTM 33 metres: per chip (i, j), class (i + j) % 2 on three quarters of
    it and class 2 on its left quarter, so the majority is (i + j) % 2; nodata (255) from 4.6
    chips east on, so that the fifth chip column is 0.6 covered and the sixth not at all."""
    u, v = (x - X0) / CHIP, (Y0 - y) / CHIP
    base = (np.floor(u) + np.floor(v)) % 2
    return np.where(u >= 4.6, 255, np.where(u % 1 < 0.25, 2, base)).astype("uint8")


@pytest.mark.parametrize(("label_crs", "res"), [("EPSG:4326", 2e-5), ("EPSG:32634", 2.0)])
def test_raster_majority_per_chip_from_another_crs(tmp_path, label_crs, res):
    region = (X0 - 100, Y0 - 5 * CHIP - 100, X0 + 6 * CHIP + 100, Y0 + 100)
    left, bottom, right, top = transform_bounds(UTM33, label_crs, *region)
    width, height = math.ceil((right - left) / res), math.ceil((top - bottom) / res)
    col, row = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = Transformer.from_crs(label_crs, UTM33, always_xy=True).transform(left + col * res, top - row * res)
    path = write_raster(tmp_path / "checker.tif", checker(x, y), label_crs, Affine(res, 0, left, 0, -res, top), 255)

    result = open_labels(path).per_chip(UTM33, chip_bounds(5, 6), (RES, RES))

    row, col = np.divmod(np.arange(30), 6)
    assert result.kind == "classes"
    np.testing.assert_array_equal(result.labels[col < 5], ((row + col) % 2)[col < 5])
    np.testing.assert_array_equal(result.labels[col == 5], -1)
    np.testing.assert_allclose(result.fraction[col < 4], 1.0)
    np.testing.assert_allclose(result.fraction[col == 4], 0.6, atol=1 / SIZE)  # one pixel column
    np.testing.assert_array_equal(result.fraction[col == 5], 0.0)
    assert [(c.value, c.name) for c in result.classes] == [(0, "0"), (1, "1")]
    assert result.method.startswith("majority of label pixels (nearest-neighbour onto the 10 m, EPSG:32633 "
                                    "source grid) inside each chip footprint")
    np.testing.assert_array_equal(result.kept(0.7), col < 4)
    assert result.describe(0.7).endswith("; chips covered less than 0.7 left out")


def padded(data: np.ndarray, nodata: float, by: int) -> np.ndarray:
    out = np.full((data.shape[0] + by, data.shape[1] + by), nodata, data.dtype)
    out[: data.shape[0], : data.shape[1]] = data
    return out


@pytest.mark.parametrize("kind", ["classes", "values"])
def test_overlapping_chips_match_brute_force(tmp_path, kind):
    """Chips 16 px every 6 px (overlapping), the last ones past the raster; nodata in a corner."""
    rng = np.random.default_rng(1)
    if kind == "classes":
        data, nodata = rng.integers(0, 4, (100, 120)).astype("uint8"), 255
    else:
        data, nodata = rng.normal(5.0, 2.0, (100, 120)).astype("float32"), -9999.0
    data[:30, :40] = nodata
    path = write_raster(tmp_path / "labels.tif", data, UTM33, source_transform(), nodata)
    rows, cols = 16, 19
    result = open_labels(path).per_chip(UTM33, chip_bounds(rows, cols, stride=6), (RES, RES))

    assert result.kind == kind
    full = padded(data, nodata, 40)
    for index, (row, col) in enumerate(np.ndindex(rows, cols)):
        window = full[row * 6: row * 6 + SIZE, col * 6: col * 6 + SIZE]
        valid = window != nodata
        assert result.fraction[index] == pytest.approx(valid.mean())
        if not valid.any():
            assert result.labels[index] == -1 if kind == "classes" else np.isnan(result.labels[index])
        elif kind == "classes":  # argmax: ties go to the smaller class, as documented
            assert result.labels[index] == np.bincount(window[valid]).argmax()
        else:
            assert result.labels[index] == pytest.approx(window[valid].astype("float64").mean(), rel=1e-9)


def test_values_raster_is_averaged_onto_a_coarser_grid_and_classes_take_the_nearest(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, (60, 90)).astype("float32")
    values[0, :] = np.nan
    classes = rng.integers(0, 5, (60, 90)).astype("uint8")
    classes[:3, :3] = 255
    value_labels = open_labels(write_raster(tmp_path / "values.tif", values, UTM33, source_transform(), np.nan))
    class_labels = open_labels(write_raster(tmp_path / "classes.tif", classes, UTM33, source_transform(), 255))

    averaged = value_labels.on_grid(Grid(UTM33, source_transform(2 * RES), 45, 30))
    blocks = values.reshape(30, 2, 45, 2).astype("float64")
    np.testing.assert_allclose(averaged.labels, np.nanmean(blocks, axis=(1, 3)), rtol=1e-6)
    assert averaged.covered.all() and averaged.labels.dtype == np.float32
    assert averaged.method == "label raster resampled (average) onto the 20 m, EPSG:32633 grid"

    nearest = class_labels.on_grid(Grid(UTM33, source_transform(3 * RES), 30, 20))
    expected = classes[1::3, 1::3].astype("int32")
    np.testing.assert_array_equal(nearest.covered, expected != 255)
    np.testing.assert_array_equal(nearest.labels, np.where(expected == 255, -1, expected))
    assert [c.value for c in nearest.classes] == [0, 1, 2, 3, 4]


def test_kind_decided_from_the_data_or_forced(tmp_path):
    whole = np.arange(100, dtype="float32").reshape(10, 10) % 3
    path = write_raster(tmp_path / "whole.tif", whole, UTM33, source_transform())
    assert open_labels(path).kind == "values"  # a float raster
    forced = open_labels(path, kind="classification")
    assert forced.kind == "classes"
    assert set(forced.per_chip(UTM33, chip_bounds(1, 1, size=10), (RES, RES)).labels) <= {0, 1, 2}

    halves = write_raster(tmp_path / "halves.tif", whole + 0.5, UTM33, source_transform())
    with pytest.raises(LabelError, match=r"holds 0\.5, not a class value"):
        open_labels(halves, kind="classification").per_chip(UTM33, chip_bounds(1, 1, size=10), (RES, RES))
    with pytest.raises(ConfigError, match="classification or regression"):
        open_labels(path, kind="segmentation")


# --- polygons and points ----------------------------------------------------------------------

def utm_polygons() -> dict[str, shapely.Geometry]:
    """Three disjoint polygons over an 8 x 6 chip grid, in UTM 33 metres."""
    return {
        "water": shapely.Point(X0 + 400, Y0 - 450).buffer(300, quad_segs=16),
        "forest": shapely.Polygon([(X0 + 800, Y0 - 50), (X0 + 1250, Y0 - 100), (X0 + 900, Y0 - 500)]),
        "crop": shapely.box(X0 + 755, Y0 - 940, X0 + 1265, Y0 - 620),
    }


def write_polygons(path: Path, column: dict[str, list], crs: str = "EPSG:4326", names=None) -> Path:
    polygons = utm_polygons()
    names = names or list(polygons)
    geometries = [to_crs(polygons[name], UTM33, crs) for name in names]
    gpd.GeoDataFrame(column, geometry=geometries, crs=crs).to_file(path)
    return path


def expected_areas(path: Path, column: str, bounds: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per label value, per chip: intersection area / chip area, from the file's polygons
    transformed to UTM 33 by pyproj; and per chip the polygon boundary length inside it."""
    frame = gpd.read_file(path)
    chips = shapely.box(*bounds.T)
    areas: dict = {}
    boundary = np.zeros(len(bounds))
    for value, geometry in zip(frame[column], frame.geometry, strict=True):
        utm = to_crs(geometry, frame.crs, UTM33)
        areas[value] = areas.get(value, 0) + shapely.area(shapely.intersection(chips, utm)) / CHIP**2
        boundary += shapely.length(shapely.intersection(chips, utm.boundary))
    return areas, boundary


def test_polygon_area_fractions_and_majority_in_epsg4326(tmp_path):
    path = write_polygons(tmp_path / "labels.geojson", {"landcover": ["water", "forest", "crop"]})
    bounds = chip_bounds(6, 8)
    labels = open_labels(path, column="landcover")
    result = labels.per_chip(UTM33, bounds, (RES, RES))

    # text classes get codes in sorted order of their names
    assert [(c.value, c.name) for c in labels.classes] == [(0, "crop"), (1, "forest"), (2, "water")]
    assert result.classes == labels.classes
    areas, boundary = expected_areas(path, "landcover", bounds)
    # A pixel cut by a boundary is counted whole or not at all: at most ~length/res of them.
    tolerance = (boundary / RES + 2) / SIZE**2
    covered = sum(areas.values())
    assert (np.abs(result.fraction - covered) <= tolerance).all()
    assert np.abs(result.fraction - covered).mean() < 0.01
    by_class = np.column_stack([areas[name] for name in ("crop", "forest", "water")])
    ranked = np.sort(by_class, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > tolerance
    np.testing.assert_array_equal(result.labels[clear], np.where(covered > 0, by_class.argmax(axis=1), -1)[clear])
    np.testing.assert_array_equal(result.labels[covered == 0], -1)
    assert clear.sum() > 30
    assert "majority class by area of the label polygons" in result.method


def test_polygon_values_are_area_weighted_means(tmp_path):
    path = write_polygons(tmp_path / "heights.gpkg", {"height": [2.5, 7.25, 11.0]})
    bounds = chip_bounds(6, 8)
    result = open_labels(path, column="height").per_chip(UTM33, bounds, (RES, RES))

    assert result.kind == "values" and result.classes == ()
    areas, boundary = expected_areas(path, "height", bounds)
    covered = sum(areas.values())
    has = covered > 0
    expected = sum(value * area for value, area in areas.items())[has] / covered[has]
    single = (np.count_nonzero([area > 0 for area in areas.values()], axis=0) == 1)[has]
    np.testing.assert_allclose(result.labels[has][single], expected[single])
    tolerance = (boundary / RES + 2) / SIZE**2
    assert (np.abs(result.labels[has] - expected) <= (11.0 - 2.5) * tolerance[has] / covered[has] + 1e-9).all()
    assert np.isnan(result.labels[~has & (result.fraction == 0)]).all()
    assert "area-weighted mean" in result.method

    forced = open_labels(write_polygons(tmp_path / "codes.gpkg", {"code": [3, 1, 2]}), column="code",
                         kind="regression")
    assert forced.kind == "values"


def test_polygons_on_a_grid_label_the_cells_whose_centre_they_hold(tmp_path):
    path = write_polygons(tmp_path / "labels.geojson", {"landcover": ["water", "forest", "crop"]})
    grid = Grid(UTM33, source_transform(20.0), 64, 48)
    result = open_labels(path, column="landcover").on_grid(grid)

    rows, cols = np.mgrid[0:48, 0:64]
    x, y = X0 + (cols + 0.5) * 20.0, Y0 - (rows + 0.5) * 20.0
    frame = gpd.read_file(path).to_crs(UTM33.to_wkt())
    expected = np.full((48, 64), -1)
    for code, name in enumerate(["crop", "forest", "water"]):
        inside = shapely.contains_xy(frame.geometry[frame.landcover == name].iloc[0], x, y)
        expected[inside] = code
    # only cells whose centre is within a few cm of a boundary (reprojection) may differ
    assert np.count_nonzero(result.labels != expected) <= 2
    np.testing.assert_array_equal(result.covered, result.labels != -1)
    assert result.method == "label polygons rasterized at cell centres onto the 20 m, EPSG:32633 grid"


POINTS = [  # (x, y) offsets from (X0, Y0) in UTM 33 metres, class
    ((85, -85), 3), ((25, -25), 3), ((150, -150), 5),  # chip (0, 0): 3
    ((245, -85), 5),  # chip (0, 1): 5
    ((205, -205), 3), ((305, -305), 5),  # chip (1, 1): a tie, the smaller class
    ((-500, 500), 7),  # no chip
]


def write_points(path: Path) -> Path:
    geometries = [to_crs(shapely.Point(X0 + dx, Y0 + dy), UTM33, "EPSG:4326") for (dx, dy), _ in POINTS]
    gpd.GeoDataFrame({"class": [c for _, c in POINTS]}, geometry=geometries, crs="EPSG:4326").to_parquet(path)
    return path


def test_points_label_the_chip_and_the_cell_they_fall_in(tmp_path):
    labels = open_labels(write_points(tmp_path / "points.parquet"), column="class")
    result = labels.per_chip(UTM33, chip_bounds(3, 3), (RES, RES))

    np.testing.assert_array_equal(result.labels, [3, 5, -1, -1, 3, -1, -1, -1, -1])
    np.testing.assert_array_equal(result.fraction, [1, 1, 0, 0, 1, 0, 0, 0, 0])
    assert [c.value for c in result.classes] == [3, 5, 7]
    assert result.method.startswith("majority class of the label points inside each chip footprint")

    cells = labels.on_grid(Grid(UTM33, source_transform(20.0), 20, 20))
    expected = np.full((20, 20), -1)
    for (dx, dy), value in POINTS:
        if 0 <= dx < 400 and 0 <= -dy < 400:
            expected[int(-dy // 20), int(dx // 20)] = value
    np.testing.assert_array_equal(cells.labels, expected)
    np.testing.assert_array_equal(cells.covered, expected != -1)

    means = open_labels(tmp_path / "points.parquet", column="class", kind="regression")
    averaged = means.per_chip(UTM33, chip_bounds(3, 3), (RES, RES))
    np.testing.assert_allclose(averaged.labels[[0, 1, 4]], [11 / 3, 5, 4])
    assert np.isnan(averaged.labels[[2, 3, 5, 6, 7, 8]]).all()
    assert averaged.method.startswith("mean value of the label points")


# --- STAC -------------------------------------------------------------------------------------

LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"


def label_item(item_id: str, href: str, media_type: str, label_type: str, properties: list[str] | None = None,
               classes: list[dict] | None = None, **fields) -> pystac.Item:
    """A label extension v1.0.1 item whose ``labels`` asset is ``href`` (``fields`` on the asset)."""
    polygon = to_crs(shapely.box(X0, Y0 - 6 * CHIP, X0 + 8 * CHIP, Y0), UTM33, "EPSG:4326")
    label_fields = {"label:description": "synthetic labels", "label:type": label_type,
                    "label:properties": properties, "label:tasks": ["classification"]}
    if classes:
        label_fields["label:classes"] = classes
    item = pystac.Item(item_id, shapely.geometry.mapping(polygon), list(polygon.bounds),
                       pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), label_fields,
                       stac_extensions=[LABEL_EXTENSION])
    item.add_asset("labels", pystac.Asset(href, media_type=media_type, roles=["labels"], extra_fields=fields))
    return item


def test_stac_label_item_gives_column_and_classes(tmp_path):
    write_polygons(tmp_path / "labels.geojson", {"landcover": ["water", "forest", "crop"]})
    item = label_item("landcover", "./labels.geojson", "application/geo+json", "vector",
                      properties=["landcover"],
                      classes=[{"name": "landcover", "classes": ["water", "forest", "crop", "urban"]}])
    item.save_object(include_self_link=False, dest_href=str(tmp_path / "item.json"))

    labels = open_labels(tmp_path / "item.json")
    assert [c.name for c in labels.classes] == ["crop", "forest", "urban", "water"]
    direct = open_labels(tmp_path / "labels.geojson", column="landcover").per_chip(UTM33, chip_bounds(6, 8), (RES, RES))
    result = labels.per_chip(UTM33, chip_bounds(6, 8), (RES, RES))
    np.testing.assert_array_equal(result.fraction, direct.fraction)
    # water's code moves from 2 to 3: urban, listed in label:classes, sorts before it
    np.testing.assert_array_equal(result.labels, np.where(direct.labels == 2, 3, direct.labels))


def write_collection(root: Path) -> Path:
    """A collection of two vector label items: water in a GeoJSON (EPSG:4326), forest and crop in
    a GeoPackage (EPSG:32633); and a raster label item is left out of it."""
    polygons = utm_polygons()
    root.mkdir()
    gpd.GeoDataFrame({"landcover": ["water"]}, geometry=[to_crs(polygons["water"], UTM33, "EPSG:4326")],
                     crs="EPSG:4326").to_file(root / "water.geojson")
    gpd.GeoDataFrame({"landcover": ["forest", "crop"]}, geometry=[polygons["forest"], polygons["crop"]],
                     crs="EPSG:32633").to_file(root / "fields.gpkg")
    collection = pystac.Collection("landcover", "synthetic labels",
                                   pystac.Extent.from_dict({"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                            "temporal": {"interval": [[None, None]]}}))
    collection.add_item(label_item("water", str(root / "water.geojson"), "application/geo+json", "vector",
                                   properties=["landcover"]))
    collection.add_item(label_item("fields", str(root / "fields.gpkg"), "application/geopackage+sqlite3",
                                   "vector", properties=["landcover"]))
    collection.normalize_hrefs(str(root))
    collection.make_all_asset_hrefs_relative()
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "collection.json"


def test_stac_collection_gathers_the_label_assets_of_its_items(tmp_path):
    whole = open_labels(write_polygons(tmp_path / "all.geojson", {"landcover": ["water", "forest", "crop"]}),
                        column="landcover").per_chip(UTM33, chip_bounds(6, 8), (RES, RES))
    labels = open_labels(write_collection(tmp_path / "collection"))
    result = labels.per_chip(UTM33, chip_bounds(6, 8), (RES, RES))

    assert [c.name for c in labels.classes] == ["crop", "forest", "water"]
    np.testing.assert_array_equal(result.labels, whole.labels)
    np.testing.assert_allclose(result.fraction, whole.fraction, atol=2 / SIZE**2)


def write_raster_item(root: Path) -> Path:
    """A raster label item: 1 (water) on the left, 2 (land) on the right, 255 (declared nodata
    by classification:classes, not by the file) on the top 8 rows."""
    data = np.ones((48, 64), "uint8")
    data[:, 32:] = 2
    data[:8] = 255
    write_raster(root / "classes.tif", data, UTM33, source_transform())
    item = label_item("raster", "./classes.tif", pystac.MediaType.GEOTIFF, "raster",
                      **{"classification:classes": [
                          {"value": 1, "name": "water", "color_hint": "0000FF"},
                          {"value": 2, "name": "land"},
                          {"value": 255, "name": "no-data", "nodata": True}]})
    item.save_object(include_self_link=False, dest_href=str(root / "raster-item.json"))
    return root / "raster-item.json"


def test_stac_raster_label_item_uses_classification_classes(tmp_path):
    result = open_labels(write_raster_item(tmp_path)).per_chip(UTM33, chip_bounds(3, 4), (RES, RES))

    assert [(c.value, c.name, c.color_hint) for c in result.classes] == [(1, "water", "0000FF"), (2, "land", None)]
    np.testing.assert_array_equal(result.labels, [1, 1, 2, 2] * 3)
    np.testing.assert_allclose(result.fraction, [0.5] * 4 + [1.0] * 8)


def test_stac_labels_over_http(tmp_path, monkeypatch):
    loopback_environment(monkeypatch, GDAL_HTTP_MAX_RETRY="0")
    local = open_labels(write_collection(tmp_path / "collection")).per_chip(UTM33, chip_bounds(6, 8), (RES, RES))
    write_raster_item(tmp_path)
    with serve(tmp_path) as (url, log):
        remote = open_labels(f"{url}/collection/collection.json").per_chip(UTM33, chip_bounds(6, 8), (RES, RES))
        raster = open_labels(f"{url}/raster-item.json").per_chip(UTM33, chip_bounds(3, 4), (RES, RES))
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_array_equal(raster.labels, [1, 1, 2, 2] * 3)
    assert any("classes.tif" in str(entry) for entry in log)


# --- results across items, usability, errors -------------------------------------------------

def test_results_of_several_items_concatenate_with_their_classes(tmp_path):
    data = np.zeros((32, 64), "uint8")
    data[:, 16:32] = 1
    data[:, 32:] = 2
    labels = open_labels(write_raster(tmp_path / "labels.tif", data, UTM33, source_transform()))
    left, right = chip_bounds(2, 4)[[0, 1, 4, 5]], chip_bounds(2, 4)[[2, 3, 6, 7]]
    first = labels.per_chip(UTM33, left, (RES, RES))
    second = labels.per_chip(UTM33, right, (RES / 2, RES / 2))  # another resolution: another method
    both = ChipLabels.concat([first, second])

    assert [c.value for c in first.classes] == [0, 1] and [c.value for c in second.classes] == [2]
    assert [c.value for c in both.classes] == [0, 1, 2]
    np.testing.assert_array_equal(both.labels, [0, 1, 0, 1, 2, 2, 2, 2])
    assert both.method == f"{first.method} / {second.method}"
    both.check_usable(0.5)


def test_unusable_results_say_why(tmp_path):
    path = write_polygons(tmp_path / "labels.geojson", {"landcover": ["water", "forest", "crop"]})
    labels = open_labels(path, column="landcover")
    far = chip_bounds(2, 2) + np.array([50000.0, 0.0, 50000.0, 0.0])
    with pytest.raises(LabelError, match=r"labels .*labels\.geojson overlap no chip of the embeddings"):
        labels.per_chip(UTM33, far, (RES, RES)).check_usable()
    water_only = chip_bounds(6, 8)[[9, 10, 17, 18]]  # chips inside the circle
    with pytest.raises(LabelError, match=r"one class only \('water'\) to the 4 chips"):
        labels.per_chip(UTM33, water_only, (RES, RES)).check_usable()
    with pytest.raises(LabelError, match="no chip is covered by labels .* for at least 1.01"):
        labels.per_chip(UTM33, chip_bounds(6, 8), (RES, RES)).check_usable(1.01)
    grid = Grid(UTM33, source_transform(RES) @ Affine.translation(0, 10000), 10, 10)
    with pytest.raises(LabelError, match="overlap no cell"):
        labels.on_grid(grid).check_usable()
    points = open_labels(write_points(tmp_path / "points.parquet"), column="class")
    with pytest.raises(LabelError, match=r"points\.parquet overlap no chip"):
        points.per_chip(UTM33, far, (RES, RES)).check_usable()
    with pytest.raises(LabelError, match="overlap no cell"):
        points.on_grid(grid).check_usable()


def test_unreadable_or_unplaceable_labels(tmp_path):
    path = write_polygons(tmp_path / "labels.geojson", {"landcover": ["water", "forest", "crop"]})
    with pytest.raises(LabelError, match=r"no column 'klass'; columns there: landcover"):
        open_labels(path, column="klass")
    with pytest.raises(LabelError, match="--label-column"):
        open_labels(path)
    with pytest.raises(LabelError, match="text; regression needs numbers"):
        open_labels(path, column="landcover", kind="regression")

    no_crs = tmp_path / "no-crs.parquet"
    gpd.GeoDataFrame({"c": [1, 2]}, geometry=[shapely.Point(0, 0), shapely.Point(1, 1)]).to_parquet(no_crs)
    with pytest.raises(LabelError, match="no-crs.parquet have no CRS"):
        open_labels(no_crs, column="c")
    raster = write_raster(tmp_path / "no-crs.tif", np.ones((4, 4), "uint8"), None, source_transform())
    with pytest.raises(LabelError, match="no-crs.tif has no CRS"):
        open_labels(raster)
    with pytest.raises(LabelError, match="cannot read labels .*missing.gpkg"):
        open_labels(tmp_path / "missing.gpkg", column="c")
    with pytest.raises(LabelError, match="cannot read labels .*missing.tif"):
        open_labels(tmp_path / "missing.tif")

    lines = tmp_path / "lines.geojson"
    gpd.GeoDataFrame({"c": [1]}, geometry=[shapely.LineString([(0, 0), (1, 1)])], crs="EPSG:4326").to_file(lines)
    with pytest.raises(LabelError, match="LineString geometries; label features must be all points or all"):
        open_labels(lines, column="c")
    negative = tmp_path / "negative.geojson"
    gpd.GeoDataFrame({"c": [-1, 2]}, geometry=[shapely.Point(0, 0)] * 2, crs="EPSG:4326").to_file(negative)
    with pytest.raises(LabelError, match=r"not class values \(integers >= 0\)"):
        open_labels(negative, column="c")
    catalog = tmp_path / "catalog.json"
    pystac.Catalog("empty", "no labels").save_object(include_self_link=False, dest_href=str(catalog))
    with pytest.raises(LabelError, match="holds no STAC label item"):
        open_labels(catalog)


# --- bounded memory ---------------------------------------------------------------------------

def test_chips_and_grids_are_painted_in_bounded_tiles(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 3, (400, 400)).astype("uint8")
    path = write_raster(tmp_path / "labels.tif", data, UTM33, source_transform())
    bounds = chip_bounds(100, 100, size=4, stride=4)
    grid = Grid(UTM33, source_transform(), 400, 400)
    whole, whole_grid = open_labels(path).per_chip(UTM33, bounds, (RES, RES)), open_labels(path).on_grid(grid)

    painted = []
    real = labels_module.reproject

    def spy(source, destination, **kwargs):
        painted.append(destination.size)
        return real(source, destination, **kwargs)

    monkeypatch.setattr(labels_module, "TILE", 32)
    monkeypatch.setattr(labels_module, "reproject", spy)
    tiled = open_labels(path).per_chip(UTM33, bounds, (RES, RES))
    assert max(painted) <= (32 + 4) ** 2 and len(painted) >= (400 // 36) ** 2
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_array_equal(tiled.fraction, whole.fraction)

    painted.clear()
    tiled_grid = open_labels(path).on_grid(grid)
    assert max(painted) <= 32**2 and len(painted) == math.ceil(400 / 32) ** 2
    np.testing.assert_array_equal(tiled_grid.labels, whole_grid.labels)
    np.testing.assert_array_equal(whole_grid.labels, data)


def test_a_hundred_thousand_chips_paint_only_where_the_labels_are(tmp_path, monkeypatch):
    """100 000 chips of 256 px (an area of ~1000 x 640 km): only the tiles of the few chips that
    the labels touch are painted."""
    bounds = chip_bounds(250, 400, size=256, stride=256)
    squares = [shapely.box(X0 + 2560 * 10 + 100, Y0 - 2560 * 11 + 100, X0 + 2560 * 11 + 900, Y0 - 2560 * 10 - 100),
               shapely.box(X0 + 2560 * 300 + 5, Y0 - 2560 * 201 + 5, X0 + 2560 * 301 - 5, Y0 - 2560 * 200 - 5)]
    path = tmp_path / "squares.gpkg"
    gpd.GeoDataFrame({"c": ["a", "b"]}, geometry=squares, crs="EPSG:32633").to_file(path)
    painted = []
    real = labels_module.rasterize

    def spy(shapes, out_shape, **kwargs):
        painted.append(out_shape[0] * out_shape[1])
        return real(shapes, out_shape=out_shape, **kwargs)

    monkeypatch.setattr(labels_module, "rasterize", spy)
    result = open_labels(path, column="c").per_chip(UTM33, bounds, (RES, RES))

    assert sum(painted) <= 4 * 256**2  # the chips touched, not the ~1.6e11 pixels of the area
    assert set(np.flatnonzero(result.fraction)) == {10 * 400 + 10, 10 * 400 + 11, 200 * 400 + 300}
    result.check_usable()
