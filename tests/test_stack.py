"""Stacking keeps the source grid exactly and turns stored values into measurements."""

import numpy as np
import pytest
import rasterio
from conftest import make_catalog, make_item, write_cog

from stacembed.bands import match_bands
from stacembed.errors import BandError
from stacembed.grid import native_grid, target_grid
from stacembed.readers.stack import stack_item
from stacembed.resolve import resolve_items

BANDS = ["blue", "red", "swir22"]


def _first(catalog):
    item = resolve_items(catalog=str(catalog))[0]
    return item, match_bands(item, BANDS)


@pytest.mark.parametrize("loader", ["stackstac", "odc"])
@pytest.mark.parametrize("dialect", ["1.0", "1.1"])
def test_native_grid_is_the_file_grid_bit_for_bit(synthetic_catalog, dialect, loader):
    catalog = synthetic_catalog(dialect, n_items=1, shape=(70, 90), scale=0.0001, offset=-0.1,
                                nodata=0, nodata_rows=3)
    item, bands = _first(catalog)
    grid = native_grid(item, bands)
    data = stack_item(item, bands, grid, chunks=(32, 40), loader=loader).values
    assert data.shape == (3, 70, 90)
    for i, band in enumerate(bands):
        with rasterio.open(band.href) as ds:
            assert (ds.transform, ds.width, ds.height) == (grid.transform, grid.width, grid.height)
            raw = ds.read(1).astype("float64")
        expected = np.where(raw == 0, np.nan, raw * 0.0001 - 0.1).astype("float32")
        np.testing.assert_array_equal(data[i], expected)
    assert np.isnan(data[:, :3]).all() and np.isfinite(data[:, 3:]).all()


def test_items_without_projection_metadata_use_the_file_header(synthetic_catalog):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 50), with_proj=False)
    item, bands = _first(catalog)
    assert "proj:code" not in item.properties
    grid = native_grid(item, bands)
    assert (grid.crs.to_epsg(), grid.width, grid.height) == (32725, 50, 40)
    assert stack_item(item, bands, grid).shape == (3, 40, 50)


def test_bands_on_different_grids_need_an_explicit_resolution(tmp_path):
    data = make_item(tmp_path, "mixed", dialect="1.1", origin=(500000.0, 9100000.0), shape=(40, 40), seed=1)
    coarse = np.ones((20, 20), dtype="uint16")
    write_cog(tmp_path / "mixed" / "B7.tif", coarse, rasterio.Affine(60.0, 0, 500000.0, 0, -60.0, 9100000.0))
    catalog = make_catalog(tmp_path, [data])
    item, bands = _first(catalog)
    with pytest.raises(BandError, match="not on one pixel grid.*--resolution"):
        native_grid(item, bands)
    # Explicit resampling to 60 m puts all bands on one grid.
    grids = {b.name: rasterio.open(b.href).transform.a for b in bands}
    assert grids["swir22"] == 60.0
    grid = target_grid(native_grid_of(bands[0]), None, 60.0)
    stacked = stack_item(item, bands, grid, resampling="average").values
    assert stacked.shape == (3, 20, 20)
    np.testing.assert_array_equal(stacked[2], 1.0)


def native_grid_of(band):
    from stacembed.grid import read_grid

    return read_grid(band.href)


def test_unreadable_asset_is_a_read_error(synthetic_catalog, tmp_path):
    from stacembed.errors import ReadError

    catalog = synthetic_catalog("1.1", n_items=1, shape=(20, 20))
    item, bands = _first(catalog)
    path = bands[0].href
    with open(path, "wb") as f:
        f.write(b"II*\x00 this is not a tiff")
    from stacembed.grid import read_header

    read_header.cache_clear()
    with pytest.raises(ReadError, match="cannot read raster"):
        native_grid(item, bands)
