"""Zarr stores and NetCDF files as inputs (``readers.zarr``): the same pixels as GeoTIFFs give the
same embeddings, georeferencing comes from the store, multiscale levels follow --resolution, and a
large store is read chunk by chunk.

The test stores follow the structure of an EOPF Sentinel-2 L2A product as ESA's processor writes it
(consolidated metadata of a real product: clausmichele/eopf-stac@53b902f68e3e83331f53b141e695819d3c9a618b,
tests/data-files/S02MSIL2A_20250109T100401_0000_A122_T461.json): groups
``measurements/reflectance/r10m|r20m|r60m`` of uint16 arrays ``b02``... with 1-D int64 ``x``/``y``
pixel centres, array attributes ``proj:epsg``/``proj:transform`` (9 numbers)/``proj:shape``/
``proj:bbox``, CF ``scale_factor``/``add_offset``, ``fill_value`` 0, and the root's ``other_metadata``
and ``stac_discovery``. Their STAC items follow EOPF's (clausmichele/eopf-stac@a8132425830d70a377c906f5ea8cdad64aa68d61,
src/eopf_stac/sentinel2/assets.py and constants.py): ``application/vnd+zarr`` assets ``B02_10m`` ->
``.../r10m/b02`` with one band and ``gsd``, ``SR_20m`` -> ``.../r20m`` with several bands, ``product``
(roles data + metadata) -> the store. The v3 store is written as EOPF Explorer's GeoZarr products
are (EOPF-Explorer/data-model@064917a61a32938f77b16eff6d531ba9b3dd6c8e): ``dimension_names``, a
``_FillValue`` attribute and the CRS as ``proj:code`` on the groups rather than on every array.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import DEMO_CARD

zarr = pytest.importorskip("zarr", reason="the Zarr reader needs zarr (pip install 'stacembed[zarr]')")

from stacembed.bands import match_bands  # noqa: E402
from stacembed.errors import BandError, ReadError  # noqa: E402
from stacembed.grid import band_grid, native_grid  # noqa: E402

EPSG = 32634  # the EOPF sample's UTM zone (tile T34UCE)
WEST, NORTH = 300000.0, 6000000.0
H10, W10 = 96, 120  # r10m pixels; r20m and r60m cover the same 1200 x 960 m
SCALE, OFFSET = 0.0001, -0.1
NODATA_ROWS = 4  # top rows of r10m (2 of r20m) without data (0)

R10 = ("b02", "b03", "b04", "b08")
R20 = ("b01", "b02", "b03", "b04", "b05", "b06", "b07", "b11", "b12", "b8a")
R60 = ("b01", "b02", "b03", "b04", "b05", "b06", "b07", "b09", "b11", "b12", "b8a")
COMMON = {"b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "rededge071",
          "b06": "rededge075", "b07": "rededge078", "b08": "nir", "b8a": "nir08", "b09": "nir09",
          "b11": "swir16", "b12": "swir22"}
# The EOPF STAC item's band assets (its L2A_BAND_ASSETS_TO_PATH).
BAND_ASSETS = {"B02_10m": "r10m/b02", "B03_10m": "r10m/b03", "B04_10m": "r10m/b04", "B08_10m": "r10m/b08",
               "B01_20m": "r20m/b01", "B05_20m": "r20m/b05", "B06_20m": "r20m/b06", "B07_20m": "r20m/b07",
               "B8A_20m": "r20m/b8a", "B11_20m": "r20m/b11", "B12_20m": "r20m/b12", "B09_60m": "r60m/b09"}


def eopf_pixels(seed: int = 7) -> dict[str, dict[str, np.ndarray]]:
    """uint16 digital counts per level and band. r20m's b02/b03/b04 are exact 2x2 means of r10m's
    (each 10 m block is its 20 m value plus a pattern that sums to 0), as a producer's average
    downsampling would make them; the top rows have no data (0) at every level."""
    rng = np.random.default_rng(seed)
    levels: dict[str, dict[str, np.ndarray]] = {"r10m": {}, "r20m": {}, "r60m": {}}
    for name in R20:
        levels["r20m"][name] = rng.integers(1000, 3000, (H10 // 2, W10 // 2), dtype="uint16")
    for name in R10:
        if name in R20:
            coarse = levels["r20m"][name].astype("int32")
            fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
            d = rng.integers(-40, 40, coarse.shape)
            e = rng.integers(-40, 40, coarse.shape)
            fine[0::2, 0::2] += d
            fine[0::2, 1::2] -= d
            fine[1::2, 0::2] -= e
            fine[1::2, 1::2] += e
            levels["r10m"][name] = fine.astype("uint16")
        else:
            levels["r10m"][name] = rng.integers(1000, 3000, (H10, W10), dtype="uint16")
    for name in R60:
        levels["r60m"][name] = rng.integers(1000, 3000, (H10 // 6, W10 // 6), dtype="uint16")
    for level, factor in (("r10m", 1), ("r20m", 2), ("r60m", 6)):
        for array in levels[level].values():
            array[: -(-NODATA_ROWS // factor)] = 0
    return levels


def level_transform(level: str) -> Affine:
    res = {"r10m": 10.0, "r20m": 20.0, "r60m": 60.0}[level]
    return Affine(res, 0, WEST, 0, -res, NORTH)


def write_eopf_zarr(path: Path, pixels: dict, zarr_format: int = 2, chunks: int = 32) -> Path:
    """An EOPF Sentinel-2 L2A store (see the module docstring): v2 consolidated as ESA's processor
    writes it, or v3 as EOPF Explorer's GeoZarr (CRS as ``proj:code`` on the groups)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs.update({
        "other_metadata": {"horizontal_CRS_code": f"EPSG:{EPSG}"},
        "stac_discovery": {"properties": {"proj:epsg": EPSG, "proj:bbox": [WEST, NORTH - H10 * 10, WEST + W10 * 10,
                                                                          NORTH]}},
    })
    for level, bands in pixels.items():
        group = root.create_group(f"measurements/reflectance/{level}")
        t = level_transform(level)
        height, width = next(iter(bands.values())).shape
        if zarr_format == 3:
            group.attrs.update({"proj:code": f"EPSG:{EPSG}", "spatial:transform": list(t)[:6]})
        centres = {"x": WEST + t.a * (np.arange(width) + 0.5), "y": NORTH + t.e * (np.arange(height) + 0.5)}
        for dim, values in centres.items():
            coord = group.create_array(dim, shape=values.shape, dtype="int64", chunks=values.shape,
                                       dimension_names=[dim] if zarr_format == 3 else None)
            coord[:] = values.astype("int64")
            if zarr_format == 2:
                coord.attrs["_ARRAY_DIMENSIONS"] = [dim]
        for name, data in bands.items():
            array = group.create_array(name, shape=data.shape, dtype="uint16", chunks=(chunks, chunks), fill_value=0,
                                       dimension_names=["y", "x"] if zarr_format == 3 else None)
            array[:] = data
            attrs = {"add_offset": OFFSET, "scale_factor": SCALE, "units": "digital_counts", "valid_min": 1,
                     "valid_max": 65535, "long_name": f"BOA reflectance from MSI acquisition at spectral band {name}"}
            if zarr_format == 2:
                attrs.update({
                    "_ARRAY_DIMENSIONS": ["y", "x"], "dtype": "<u2", "fill_value": 0,
                    "_eopf_attrs": {"add_offset": OFFSET, "scale_factor": SCALE, "fill_value": 0,
                                    "coordinates": ["x", "y"], "dimensions": ["y", "x"], "units": "digital_counts"},
                    "proj:epsg": EPSG, "proj:shape": list(data.shape), "proj:transform": list(t),
                    "proj:bbox": [WEST, NORTH + t.e * data.shape[0], WEST + t.a * data.shape[1], NORTH],
                })
            else:
                attrs["_FillValue"] = 0
            array.attrs.update(attrs)
    consolidate(path)
    return path


def consolidate(path: Path) -> None:
    """Consolidated metadata: v2's ``.zmetadata``, v3's in the root ``zarr.json`` (as EOPF Explorer
    writes it; zarr-python warns that v3's is not in the specification yet)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def lonlat_bbox(crs: str, west: float, south: float, east: float, north: float) -> list[float]:
    from pyproj import Transformer

    t = Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
    xs, ys = t.transform([west, east, east, west], [south, south, north, north])
    return [min(xs), min(ys), max(xs), max(ys)]


def item_dict(item_id: str, assets: dict, bbox: list[float], collection: str) -> dict:
    west, south, east, north = bbox
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                         [west, south]]]},
        "bbox": bbox, "properties": {"datetime": "2025-01-09T10:04:01Z", "platform": "sentinel-2a"},
        "assets": assets, "links": [],
    }


def band_fields(name: str, stated: bool = True) -> dict:
    """An EOPF band asset's ``bands`` (and the raster fields EOPF copies from the array attributes)."""
    band = {"name": name.upper(), "eo:common_name": COMMON[name]}
    fields: dict = {"bands": [band]}
    if stated:
        fields.update({"raster:scale": SCALE, "raster:offset": OFFSET, "nodata": 0})
    return fields


def eopf_item(store: Path, item_id: str = "S2A_MSIL2A_T34UCE", stated: bool = True,
              collection: str = "sentinel-2-l2a-zarr") -> Path:
    """The EOPF STAC item of a store: band assets, group (dataset) assets, the product asset."""
    href = str(store)
    assets = {}
    for key, path in BAND_ASSETS.items():
        level, name = path.split("/")
        t = level_transform(level)
        height, width = {"r10m": (H10, W10), "r20m": (H10 // 2, W10 // 2), "r60m": (H10 // 6, W10 // 6)}[level]
        assets[key] = {
            "href": f"{href}/measurements/reflectance/{path}", "type": "application/vnd+zarr",
            "roles": ["data", "reflectance"], "gsd": int(t.a), "proj:code": f"EPSG:{EPSG}",
            "proj:shape": [height, width], "proj:transform": list(t)[:6], **band_fields(name, stated),
        }
    for level, names in (("r10m", R10), ("r20m", R20), ("r60m", R60)):
        assets[f"SR_{level[1:]}"] = {
            "href": f"{href}/measurements/reflectance/{level}", "type": "application/vnd+zarr",
            "roles": ["data", "reflectance", "dataset"], "gsd": int(level_transform(level).a),
            "bands": [{"name": n.upper(), "eo:common_name": COMMON[n]} for n in names],
        }
    assets["product"] = {"href": href, "type": "application/vnd+zarr", "roles": ["data", "metadata"]}
    assets["product_metadata"] = {"href": f"{href}/.zmetadata", "type": "application/json", "roles": ["metadata"]}
    bbox = lonlat_bbox(f"EPSG:{EPSG}", WEST, NORTH - H10 * 10, WEST + W10 * 10, NORTH)
    path = store.parent / f"{item_id}.json"
    path.write_text(json.dumps(item_dict(item_id, assets, bbox, collection)))
    return path


def write_tif(path: Path, data: np.ndarray, transform: Affine, crs: str = f"EPSG:{EPSG}") -> None:
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, blocksize=32) as ds:
        ds.write(data[None])


def geotiff_item(root: Path, pixels: dict, item_id: str = "S2A_MSIL2A_T34UCE",
                 collection: str = "sentinel-2-l2a-cog") -> Path:
    """The same pixels as COGs on the same grids: one asset per array, keys as EOPF's (and
    ``B02_20m``... for the r20m level), 10 m first; STAC states scale, offset and nodata."""
    root.mkdir(parents=True, exist_ok=True)
    assets = {}
    for level in ("r10m", "r20m", "r60m"):
        for name, data in pixels[level].items():
            key = f"{name.upper()}_{level[1:]}"
            write_tif(root / f"{key}.tif", data, level_transform(level))
            assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"], "gsd": int(level_transform(level).a), **band_fields(name)}
    bbox = lonlat_bbox(f"EPSG:{EPSG}", WEST, NORTH - H10 * 10, WEST + W10 * 10, NORTH)
    path = root / f"{item_id}.json"
    path.write_text(json.dumps(item_dict(item_id, assets, bbox, collection)))
    return path


def run(cli, items: Path, out: Path, *args) -> gpd.GeoDataFrame:
    result = cli("run", "--items", items, "--out", out, "--chip-size", "16", "--stride", "16", "--min-valid", "0",
                 "--batch-size", "8", "-q", *args)
    assert result.exit_code == 0, result.output
    table = gpd.read_parquet(next(out.glob("*/*/*.parquet")))
    return table.sort_values(["chip_row", "chip_col"]).reset_index(drop=True)


def assert_same_embeddings(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a[["chip_row", "chip_col"]].to_numpy(), b[["chip_row", "chip_col"]].to_numpy())
    np.testing.assert_array_equal(np.stack(a.embedding), np.stack(b.embedding))
    bounds = ["native_xmin", "native_ymin", "native_xmax", "native_ymax"]
    np.testing.assert_array_equal(a[bounds].to_numpy(), b[bounds].to_numpy())
    assert all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry, strict=True))


@pytest.fixture(scope="module")
def pixels():
    return eopf_pixels()


@pytest.fixture(scope="module")
def cog_item(tmp_path_factory, pixels):
    return geotiff_item(tmp_path_factory.mktemp("cog"), pixels)


@pytest.fixture(scope="module", params=[2, 3], ids=["zarr-v2-consolidated", "zarr-v3"])
def zarr_item(request, tmp_path_factory, pixels):
    """EOPF's item over the store; the v3 one states no raster fields (CF attributes give them)."""
    root = tmp_path_factory.mktemp(f"zarr{request.param}")
    store = write_eopf_zarr(root / "S2A_MSIL2A_20250109T100401_N0511_R122_T34UCE.zarr", pixels, request.param)
    return eopf_item(store, stated=request.param == 2)


NATIVE_20M_ZARR = ("--band", "blue=SR_20m:b02", "--band", "green=SR_20m:b03", "--band", "red=SR_20m:b04",
                   "--band", "nir=B8A_20m")
NATIVE_20M_COG = ("--band", "blue=B02_20m", "--band", "green=B03_20m", "--band", "red=B04_20m",
                  "--band", "nir=B8A_20m")


def test_a_store_embeds_exactly_like_the_same_pixels_in_geotiffs(cli, tmp_path, zarr_item, cog_item):
    # All six bands from the r20m group (--band BAND=ASSET:VARIABLE, and B11_20m/B12_20m by common
    # name): no resampling anywhere, so the embeddings and footprints are the GeoTIFFs' exactly.
    from_zarr = run(cli, zarr_item, tmp_path / "zarr", *NATIVE_20M_ZARR)
    from_cog = run(cli, cog_item, tmp_path / "cog", *NATIVE_20M_COG)
    assert_same_embeddings(from_zarr, from_cog)
    assert from_zarr.native_xmin.min() == WEST and from_zarr.native_ymax.max() == NORTH
    assert (from_zarr.native_xmax - from_zarr.native_xmin == 16 * 20.0).all()
    item = json.loads(next((tmp_path / "zarr").glob("*/*/S2A_MSIL2A_T34UCE.json")).read_text())
    assert item["assets"]["embeddings-geotiff"]["proj:code"] == f"EPSG:{EPSG}"


def test_the_readers_agree_pixel_for_pixel_on_the_10m_bands(zarr_item, cog_item):
    from stacembed.readers import open_reader
    from stacembed.resolve import read_item_file

    names = ["blue", "green", "red", "nir"]
    reads = []
    for path in (zarr_item, cog_item):
        item = read_item_file(str(path))[0]
        bands = match_bands(item, names)
        grid = native_grid(item, bands)
        assert (grid.transform, grid.crs.to_epsg(), grid.width) == (level_transform("r10m"), EPSG, W10)
        reader = open_reader([(item, bands)], grid, grid)
        try:
            reads.append([reader.read(slice(r, min(r + 24, H10)), slice(c, min(c + 40, W10)))
                          for r in range(0, H10, 24) for c in range(0, W10, 40)])
        finally:
            reader.close()
    assert type(reader).__name__ == "DirectReader"
    for (a, mask_a), (b, mask_b) in zip(*reads, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert np.isnan(reads[0][0][0][:, :NODATA_ROWS]).all()


def test_bands_at_several_resolutions_need_an_explicit_resolution(cli, tmp_path, zarr_item):
    # blue is B02_10m (the finest gsd first), swir16 B11_20m: no common grid.
    result = cli("run", "--items", zarr_item, "--out", tmp_path / "out", "--chip-size", "16", "-q")
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "not on one pixel grid (resolutions 10, 20); pass --resolution" in message


def test_resolution_20_with_average_equals_the_geotiff_path(cli, tmp_path, zarr_item, cog_item):
    # Zarr: blue/green/red from the store's r20m level (the producer's 2x2 means), nir (b08, which
    # has no r20m level) averaged here, swir at 20 m; GeoTIFF: the 10 m bands averaged by GDAL.
    options = ("--resolution", "20", "--resampling", "average")
    from_zarr = run(cli, zarr_item, tmp_path / "zarr", *options)
    from_cog = run(cli, cog_item, tmp_path / "cog", *options)
    assert_same_embeddings(from_zarr, from_cog)
    assert (from_zarr.native_xmax - from_zarr.native_xmin == 16 * 20.0).all()


def test_a_multiscale_band_is_read_at_the_level_a_resolution_asks_for(zarr_item):
    from stacembed.grid import bands_at_resolution
    from stacembed.resolve import read_item_file

    item = read_item_file(str(zarr_item))[0]
    blue, nir = match_bands(item, ["blue", "nir"])
    assert (blue.asset_key, blue.variable, nir.asset_key) == ("B02_10m", None, "B08_10m")
    moved_blue, moved_nir = bands_at_resolution([blue, nir], 20.0)
    assert moved_blue.variable == "/measurements/reflectance/r20m/b02"
    assert moved_nir == nir  # r20m has no b08: it is resampled instead
    assert band_grid(moved_blue).transform == level_transform("r20m")
    assert bands_at_resolution([blue], 60.0)[0].variable == "/measurements/reflectance/r60m/b02"
    assert bands_at_resolution([blue], 10.0)[0] == blue


def test_variables_match_by_name_and_by_band_flag(tmp_path, pixels):
    from stacembed.resolve import read_item_file

    store = write_eopf_zarr(tmp_path / "product.zarr", pixels, 3)
    doc = json.loads(eopf_item(store).read_text())
    doc["assets"] = {"product": doc["assets"]["product"]}  # only the whole product: no STAC band metadata
    path = tmp_path / "product-only.json"
    path.write_text(json.dumps(doc))
    item = read_item_file(str(path))[0]
    # b02 is a variable of r10m, r20m and r60m (one multiscale family): the finest is taken.
    (b02,) = match_bands(item, ["b02"])
    assert (b02.asset_key, b02.variable) == ("product", "measurements/reflectance/r10m/b02")
    assert band_grid(b02).transform == level_transform("r10m")
    # --band BAND=ASSET:VARIABLE, a path from the asset's group (here the store's root).
    (nir,) = match_bands(item, ["nir"], {"nir": "product:measurements/reflectance/r20m/b8a"})
    assert (nir.name, nir.variable) == ("nir", "measurements/reflectance/r20m/b8a")
    assert band_grid(nir).transform == level_transform("r20m")
    with pytest.raises(BandError, match="has no band 'red'"):
        match_bands(item, ["red"])
    with pytest.raises(BandError, match="has no array"):
        band_grid(match_bands(item, ["nir"], {"nir": "product:measurements/reflectance/r20m/b99"})[0])


def test_an_ambiguous_variable_name_asks_for_a_path(tmp_path):
    from stacembed.resolve import read_item_file

    root = zarr.open_group(str(tmp_path / "masks.zarr"), mode="w", zarr_format=3)
    for group in ("measurements/r10m", "quality/mask/r10m"):
        root.create_array(f"{group}/b02", shape=(4, 4), dtype="uint8", dimension_names=["y", "x"])
    consolidate(tmp_path / "masks.zarr")
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(item_dict("masks", {"data": {"href": str(tmp_path / "masks.zarr"),
                                                            "type": "application/vnd.zarr", "roles": ["data"]}},
                                         [0, 0, 1, 1], "c")))
    with pytest.raises(BandError, match=r"variable 'b02' in several groups .*--band BAND=data:PATH"):
        match_bands(read_item_file(str(path))[0], ["b02"])


def write_lonlat_netcdf(path: Path, data: dict[str, np.ndarray], west: float, north: float, step: float,
                        ascending: bool) -> None:
    """A NetCDF-4 cube with only 1-D lat/lon (pixel centres) and CF packing: int16, scale_factor,
    add_offset, _FillValue -1 (no grid_mapping, no CRS attribute anywhere)."""
    import xarray as xr

    height, width = next(iter(data.values())).shape
    lat = north - step * (np.arange(height) + 0.5)
    lon = west + step * (np.arange(width) + 0.5)
    variables = {}
    for name, values in data.items():
        stored = values[::-1] if ascending else values
        variables[name] = xr.Variable(("time", "lat", "lon"), stored[None],
                                      {"scale_factor": 0.5, "add_offset": 10.0, "_FillValue": np.int16(-1),
                                       "units": "1"})
    ds = xr.Dataset(variables, coords={"lat": ("lat", lat[::-1] if ascending else lat,
                                               {"units": "degrees_north", "standard_name": "latitude"}),
                                       "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
                                       "time": ("time", [0.0], {"units": "days since 2025-01-01"})})
    encoding = {name: {"chunksizes": (1, 16, 16)} for name in data}
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)


@pytest.mark.parametrize("ascending", [False, True], ids=["lat-descending", "lat-ascending"])
def test_a_lat_lon_netcdf_cube_is_placed_in_epsg_4326(cli, tmp_path, ascending):
    pytest.importorskip("h5netcdf")
    names = ["blue", "green", "red", "nir", "swir16", "swir22"]
    rng = np.random.default_rng(3)
    data = {name: rng.integers(0, 400, (40, 56)).astype("int16") for name in names}
    for values in data.values():
        values[:3] = -1
    west, north, step = 20.25, 54.5, 0.125
    nc = tmp_path / "cube.nc"
    write_lonlat_netcdf(nc, data, west, north, step, ascending)
    bbox = [west, north - 40 * step, west + 56 * step, north]
    asset = {"href": str(nc), "type": "application/netcdf", "roles": ["data"]}
    (tmp_path / "nc.json").write_text(json.dumps(item_dict("cube", {"cube": asset}, bbox, "netcdf")))
    # The same stored values as GeoTIFFs in EPSG:4326, STAC stating the CF packing.
    transform = Affine(step, 0, west, 0, -step, north)
    assets = {}
    for name, values in data.items():
        write_tif(tmp_path / f"{name}.tif", values, transform, crs="EPSG:4326")
        assets[name] = {"href": str(tmp_path / f"{name}.tif"), "type": "image/tiff; application=geotiff",
                        "roles": ["data"], "raster:scale": 0.5, "raster:offset": 10.0, "nodata": -1}
    (tmp_path / "tif.json").write_text(json.dumps(item_dict("cube", assets, bbox, "tifs")))

    from_nc = run(cli, tmp_path / "nc.json", tmp_path / "out-nc")
    from_tif = run(cli, tmp_path / "tif.json", tmp_path / "out-tif")
    assert_same_embeddings(from_nc, from_tif)
    first = from_nc.iloc[0]
    assert (first.native_xmin, first.native_ymax, first.native_xmax, first.native_ymin) == (
        west, north, west + 16 * step, north - 16 * step)
    # Footprints in lon/lat are the chip's pixel edges.
    assert first.geometry.bounds == pytest.approx((west, north - 16 * step, west + 16 * step, north), abs=1e-9)
    item = json.loads(next((tmp_path / "out-nc").glob("*/cube/cube.json")).read_text())
    assert item["assets"]["embeddings-geotiff"]["proj:code"] == "EPSG:4326"


def test_a_store_without_georeferencing_is_placed_by_the_stac_asset(tmp_path):
    # Without them it is read on its pixel grid, without a CRS (tests/test_unplaced.py).
    root = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    for name in ("blue", "green", "red", "nir", "swir16", "swir22"):
        root.create_array(name, shape=(32, 32), dtype="uint16", dimension_names=["dim_0", "dim_1"])[:] = 5
    asset = {"href": str(tmp_path / "plain.zarr"), "type": "application/vnd+zarr", "roles": ["data"]}
    (tmp_path / "plain.json").write_text(json.dumps(item_dict("plain", {"data": asset}, [0, 0, 1, 1], "c")))
    # The STAC asset's proj fields place it when the store cannot.
    doc = json.loads((tmp_path / "plain.json").read_text())
    doc["assets"]["data"].update({"proj:code": "EPSG:32634", "proj:shape": [32, 32],
                                  "proj:transform": [10.0, 0.0, WEST, 0.0, -10.0, NORTH]})
    (tmp_path / "placed.json").write_text(json.dumps(doc))
    from stacembed.resolve import read_item_file

    item = read_item_file(str(tmp_path / "placed.json"))[0]
    grid = native_grid(item, match_bands(item, ["blue", "nir"]))
    assert (grid.crs.to_epsg(), grid.transform) == (32634, level_transform("r10m"))


def test_pixel_index_coordinates_leave_the_grid_to_the_stac_asset(tmp_path):
    # SSL4EO-S12 and xarray write x/y as 0..n-1 where there are no map coordinates: positions, not
    # places; taken as coordinates they would put the store at the origin with 1 m pixels.
    root = zarr.open_group(str(tmp_path / "indexed.zarr"), mode="w", zarr_format=3)
    for dim in ("y", "x"):
        root.create_array(dim, shape=(32,), dtype="int64", dimension_names=[dim])[:] = np.arange(32)
    for name in ("blue", "nir"):
        root.create_array(name, shape=(32, 32), dtype="uint16", dimension_names=["y", "x"])[:] = 5
    asset = {"href": str(tmp_path / "indexed.zarr"), "type": "application/vnd+zarr", "roles": ["data"],
             "proj:code": "EPSG:32634", "proj:shape": [32, 32],
             "proj:transform": [10.0, 0.0, WEST, 0.0, -10.0, NORTH]}
    (tmp_path / "indexed.json").write_text(json.dumps(item_dict("indexed", {"data": asset}, [0, 0, 1, 1], "c")))
    from stacembed.resolve import read_item_file

    item = read_item_file(str(tmp_path / "indexed.json"))[0]
    grid = native_grid(item, match_bands(item, ["blue", "nir"]))
    assert (grid.crs.to_epsg(), grid.transform) == (32634, level_transform("r10m"))


def test_georeferencing_from_cf_grid_mapping_and_geozarr_attributes(tmp_path):
    from pyproj import CRS

    from stacembed.readers.zarr import describe

    root = zarr.open_group(str(tmp_path / "cf.zarr"), mode="w", zarr_format=3)
    # CF grid mapping with crs_wkt and GDAL's GeoTransform, no coordinates (rioxarray's way).
    crs = root.create_array("spatial_ref", shape=(), dtype="int32")
    crs.attrs.update({"crs_wkt": CRS.from_epsg(3035).to_wkt(), "GeoTransform": "4000000 20 0 3000000 0 -20"})
    a = root.create_array("a", shape=(8, 9), dtype="float32", dimension_names=["y", "x"])
    a.attrs["grid_mapping"] = "spatial_ref"
    # GeoZarr geo.proj on the group of b, with the transform and a WKT-free code.
    g = root.create_group("geo")
    g.attrs["geo"] = {"proj": {"version": "0.1", "code": "EPSG:32633",
                               "transform": [30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0]}}
    g.create_array("b", shape=(3, 5, 7), dtype="uint16", dimension_names=["time", "y", "x"])
    href = str(tmp_path / "cf.zarr")
    la = describe(href, "zarr", "a")
    assert CRS.from_user_input(la.crs).to_epsg() == 3035
    assert la.transform == (20.0, 0.0, 4000000.0, 0.0, -20.0, 3000000.0) and la.shape == (8, 9)
    with pytest.raises(BandError, match="time has 3 values"):
        describe(href, "zarr", "geo/b")
    g.create_array("c", shape=(1, 5, 7), dtype="uint16", dimension_names=["time", "y", "x"])
    lc = describe(href, "zarr", "geo/c")
    assert (lc.crs, lc.transform, lc.shape) == ("EPSG:32633", (30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0), (5, 7))


def test_a_south_up_variable_stored_x_first_is_read_north_up(tmp_path):
    from stacembed.readers import open_reader
    from stacembed.resolve import read_item_file

    height, width = 50, 70
    data = np.arange(height * width, dtype="float32").reshape(height, width)
    root = zarr.open_group(str(tmp_path / "t.zarr"), mode="w", zarr_format=3)
    root.create_array("x", shape=(width,), dtype="float64", dimension_names=["x"])[:] = WEST + 5 + 10 * np.arange(width)
    root.create_array("y", shape=(height,), dtype="float64", dimension_names=["y"])[:] = \
        (NORTH - 5 - 10 * np.arange(height))[::-1]  # ascending: south-up
    array = root.create_array("v", shape=(width, height), dtype="float32", chunks=(16, 16), dimension_names=["x", "y"])
    array[:] = data[::-1].T
    array.attrs["proj:code"] = f"EPSG:{EPSG}"
    asset = {"href": str(tmp_path / "t.zarr"), "type": "application/vnd+zarr", "roles": ["data"],
             "bands": [{"name": "v", "eo:common_name": "blue"}]}
    (tmp_path / "t.json").write_text(json.dumps(item_dict("t", {"d": asset}, [0, 0, 1, 1], "c")))
    item = read_item_file(str(tmp_path / "t.json"))[0]
    bands = match_bands(item, ["blue"])
    grid = native_grid(item, bands)
    assert (grid.transform, grid.width, grid.height) == (level_transform("r10m"), width, height)
    reader = open_reader([(item, bands)], grid, grid)
    for r0 in range(0, height, 12):
        for c0 in range(0, width, 20):
            block, valid = reader.read(slice(r0, min(r0 + 12, height)), slice(c0, min(c0 + 20, width)))
            np.testing.assert_array_equal(block[0], data[r0:r0 + 12, c0:c0 + 20])
            assert valid is None or valid.all()
    reader.close()


def test_a_large_store_is_read_a_window_of_chunks_at_a_time(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    from stacembed.chips import ChipGrid, read_batches
    from stacembed.readers.zarr import ArrayReader
    from stacembed.resolve import read_item_file

    size, chunk = 1024, 128
    root = zarr.open_group(str(tmp_path / "big.zarr"), mode="w", zarr_format=3)
    group = root.create_group("r10m")
    for dim in ("x", "y"):
        values = (WEST + 5 + 10 * np.arange(size)) if dim == "x" else (NORTH - 5 - 10 * np.arange(size))
        group.create_array(dim, shape=(size,), dtype="float64", dimension_names=[dim])[:] = values
    group.attrs["proj:code"] = f"EPSG:{EPSG}"
    data = np.arange(size * size, dtype="uint32").reshape(size, size)
    for name in ("b02", "b03"):
        group.create_array(name, shape=(size, size), dtype="uint32", chunks=(chunk, chunk),
                           dimension_names=["y", "x"])[:] = data
    consolidate(tmp_path / "big.zarr")
    asset = {"href": str(tmp_path / "big.zarr/r10m"), "type": "application/vnd+zarr", "roles": ["data"],
             "bands": [{"name": "b02", "eo:common_name": "blue"}, {"name": "b03", "eo:common_name": "green"}]}
    (tmp_path / "big.json").write_text(json.dumps(item_dict("big", {"r10m": asset}, [0, 0, 1, 1], "c")))
    item = read_item_file(str(tmp_path / "big.json"))[0]
    bands = match_bands(item, ["blue", "green"])
    grid = native_grid(item, bands)

    fetched: list[str] = []
    original = LocalStore.get

    async def spy(self, key, *args, **kwargs):
        if "/c/" in key:
            fetched.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", spy)
    reader = ArrayReader([(item, bands)], grid, [[band_grid(b) for b in bands]])
    held = 0
    original_read = reader.read

    def read(rows, cols):
        nonlocal held
        block = original_read(rows, cols)
        held = max(held, reader.cached_bytes)
        assert rows.stop - rows.start <= 48  # a chip row, never the item
        return block

    reader.read = read
    chips = 0
    for batch in read_batches(reader, ChipGrid(grid, 48, 48), batch_size=64, min_valid=0):
        chips += len(batch.chips)
        for chip, pixels in zip(batch.chips, batch.pixels, strict=True):
            w = chip.window
            if w.row_off + 48 <= size and w.col_off + 48 <= size:
                np.testing.assert_array_equal(pixels[0], data[w.row_off:w.row_off + 48,
                                                              w.col_off:w.col_off + 48].astype("float32"))
    reader.close()
    assert chips == math.ceil(size / 48) ** 2
    per_band = (size // chunk) ** 2
    # Every chunk was read, each exactly once, though chip rows straddle chunk rows.
    assert len(fetched) == len(set(fetched)) == 2 * per_band
    # Never more than two chunk rows of a band held (a chip row straddles at most two).
    assert held <= 2 * 2 * (size // chunk) * chunk * chunk * 4


def test_a_store_over_http_reads_like_a_local_one(zarr_item, cog_item, monkeypatch):
    from range_http import loopback_environment, serve

    from stacembed.readers import open_reader
    from stacembed.resolve import read_item_file

    loopback_environment(monkeypatch)
    root = zarr_item.parent
    with serve(root) as (url, log):
        doc = json.loads(zarr_item.read_text())
        for asset in doc["assets"].values():
            asset["href"] = asset["href"].replace(str(root), url)
        remote = root / "remote.json"
        remote.write_text(json.dumps(doc))
        item = read_item_file(str(remote))[0]
        bands = match_bands(item, ["blue", "green", "red"])
        assert bands[0].href.startswith("http://127.0.0.1")
        grid = native_grid(item, bands)
        with rasterio.Env(GDAL_HTTP_HEADERS="X-Test: zarr"):
            reader = open_reader([(item, bands)], grid, grid)
            remote_block = reader.read(slice(0, 40), slice(8, 72))
            reader.close()
        assert any(path.endswith("zarr.json") or path.endswith(".zmetadata") for _, path, _ in log)
    local = read_item_file(str(cog_item))[0]
    local_bands = match_bands(local, ["blue", "green", "red"])
    reader = open_reader([(local, local_bands)], grid, grid)
    local_block = reader.read(slice(0, 40), slice(8, 72))
    reader.close()
    np.testing.assert_array_equal(remote_block[0], local_block[0])
    np.testing.assert_array_equal(remote_block[1], local_block[1])


def test_an_unconsolidated_store_and_a_netcdf_file_over_http(tmp_path, pixels, monkeypatch):
    pytest.importorskip("h5netcdf")
    from range_http import loopback_environment, serve

    from stacembed.readers import open_reader
    from stacembed.resolve import read_item_file

    loopback_environment(monkeypatch)
    store = write_eopf_zarr(tmp_path / "S2.zarr", pixels, 2)
    (store / ".zmetadata").unlink()  # nothing to list with: every array is found by its path
    data = {n: np.random.default_rng(1).integers(0, 400, (40, 56)).astype("int16") for n in ("blue", "green")}
    write_lonlat_netcdf(tmp_path / "cube.nc", data, 20.25, 54.5, 0.125, False)
    with serve(tmp_path) as (url, log):
        doc = json.loads(eopf_item(store).read_text())
        for asset in doc["assets"].values():
            asset["href"] = asset["href"].replace(str(tmp_path), url)
        doc["assets"]["cube"] = {"href": f"{url}/cube.nc", "type": "application/x-netcdf", "roles": ["data"]}
        (tmp_path / "remote.json").write_text(json.dumps(doc))
        item = read_item_file(str(tmp_path / "remote.json"))[0]
        blocks = {}
        cube = {"blue": "cube:blue", "green": "cube:green"}
        for names, aliases in ((["blue", "green"], {}), (["blue", "green"], cube)):
            bands = match_bands(item, names, aliases)
            grid = native_grid(item, bands)
            reader = open_reader([(item, bands)], grid, grid)
            blocks[bands[0].format + bands[0].asset_key] = reader.read(slice(0, 40), slice(0, 56))[0]
            reader.close()
        assert any(path.endswith("/b02/.zarray") for _, path, _ in log)
    np.testing.assert_array_equal(blocks["zarrB02_10m"][0, NODATA_ROWS:],
                                  (pixels["r10m"]["b02"][NODATA_ROWS:40, :56] * SCALE + OFFSET).astype("float32"))
    assert np.isnan(blocks["zarrB02_10m"][:, :NODATA_ROWS]).all()
    np.testing.assert_array_equal(blocks["netcdfcube"][1], (data["green"] * 0.5 + 10.0).astype("float32"))


def test_a_missing_store_is_one_line(cli, tmp_path, pixels):
    store = write_eopf_zarr(tmp_path / "S2.zarr", pixels, 3)
    item = eopf_item(store)
    doc = json.loads(item.read_text())
    doc["assets"]["B11_20m"]["href"] = doc["assets"]["B11_20m"]["href"].replace("r20m/b11", "r20m/b13")
    item.write_text(json.dumps(doc))
    result = cli("run", "--items", item, "--out", tmp_path / "out", "--chip-size", "16", "--resolution", "20", "-q")
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "S2.zarr" in message and "b13" in message, message
    from stacembed.resolve import read_item_file

    nowhere = read_item_file(str(eopf_item(tmp_path / "nowhere.zarr", item_id="nowhere")))[0]
    with pytest.raises(ReadError, match="cannot read .*nowhere.zarr"):
        band_grid(match_bands(nowhere, ["blue"])[0])


def test_s3_without_s3fs_says_what_to_install(monkeypatch):
    import sys

    from fsspec.registry import _registry

    from stacembed.errors import ConfigError
    from stacembed.readers.zarr import describe

    # As if s3fs were not installed (it is, with the zarr extra): its import fails, and fsspec has not
    # loaded its filesystem yet (tests/test_s3.py may have, in this process).
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(_registry, "s3", raising=False)
    with pytest.raises(ConfigError, match=r"s3:// stores needs the Python package s3fs"):
        describe("s3://bucket/product.zarr/measurements/reflectance/r10m/b02", "zarr", None)


def test_a_plain_geotiff_run_imports_no_zarr(tmp_path):
    import subprocess
    import sys

    code = ("import sys, stacembed.pipeline, stacembed.readers, stacembed.grid, stacembed.bands; "
            "print('zarr' in sys.modules, 'xarray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_demo_card_is_the_one_these_tests_use():
    assert json.loads(DEMO_CARD.read_text())["properties"]["mlm:input"][0]["bands"] == [
        "blue", "green", "red", "nir", "swir16", "swir22"]
