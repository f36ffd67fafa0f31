"""Stack one item's bands into a lazy, chunked ``xarray.DataArray`` on a chosen pixel grid.

By default the grid is the source's own (``native_grid``): no resampling happens, and every
pixel of the stack is a pixel of the file. Resampling happens only when the caller asks for
another CRS or resolution (``target_grid``), and then with the named method.

Two loaders sit behind the same function: stackstac (default) and odc-stac. Both are fed a
minimal item built here from the verified band sources, which sidesteps stackstac's
``proj:epsg``-only metadata reading and makes the two dialects of STAC look the same.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pystac
import rasterio
import rasterio.warp
import xarray as xr
from rasterio.crs import CRS

from .bands import BandSource
from .errors import BandError, ConfigError, ReadError
from .grid import Grid, read_grid, read_header


def native_grid(item: pystac.Item, bands: list[BandSource]) -> Grid:
    """The common grid of the bands' files, read from their headers (the ground truth).

    Bands on different grids (e.g. 10 m and 20 m Sentinel-2 bands) have no common native
    grid; rather than resample silently we ask the user to choose a resolution.
    """
    grids = {band.name: read_grid(band.href) for band in bands}
    first = next(iter(grids.values()))
    different = [name for name, grid in grids.items() if grid != first]
    if different:
        resolutions = sorted({f"{abs(g.transform.a):g}" for g in grids.values()})
        raise BandError(
            f"item {item.id!r}: bands {', '.join(grids)} are not on one pixel grid "
            f"(resolutions {', '.join(resolutions)}); pass --resolution (and --resampling) to "
            "resample them explicitly"
        )
    first.check_north_up(f"item {item.id!r}")
    return first


def target_grid(native: Grid, crs: str | None, resolution: float | None) -> Grid:
    """A grid covering ``native`` in another CRS and/or resolution (explicit resampling)."""
    try:
        dst_crs = CRS.from_user_input(crs) if crs else native.crs
    except rasterio.errors.CRSError as exc:
        raise ConfigError(f"--crs {crs!r} is not a CRS: {exc}") from None
    transform, width, height = rasterio.warp.calculate_default_transform(
        native.crs, dst_crs, native.width, native.height, *native.bounds, resolution=resolution
    )
    return Grid(dst_crs, transform, width, height)


def stack_item(
    item: pystac.Item,
    bands: list[BandSource],
    grid: Grid,
    *,
    chunks: tuple[int, int] = (512, 512),
    resampling: str = "nearest",
    loader: str = "stackstac",
) -> xr.DataArray:
    """Lazy ``(band, y, x)`` float32 array of ``bands`` on ``grid``; nodata is NaN, values scaled.

    Stored values become measurements here (``raster:scale``/``raster:offset``), so that the
    model card's value scaling always applies to physical values, whatever the encoding.
    """
    loaders = {"stackstac": _load_stackstac, "odc": _load_odc}
    raw = loaders[loader](item, bands, grid, chunks, resampling)
    return _to_measurements(raw, bands)


def _load_stackstac(
    item: pystac.Item, bands: list[BandSource], grid: Grid, chunks: tuple[int, int], resampling: str
) -> xr.DataArray:
    import stackstac

    epsg = grid.crs.to_epsg()
    if epsg is None:
        raise ConfigError(f"item {item.id!r}: its CRS has no EPSG code; use --loader odc")
    for band in bands:
        if band.index != 1 or _band_count(band.href) != 1:
            raise BandError(
                f"item {item.id!r}: asset {band.asset_key!r} holds several bands; the stackstac "
                "loader reads single-band assets only, use --loader odc"
            )
    assets = {band.name: _asset_dict(band) for band in bands}
    minimal = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item.id,
        "geometry": item.geometry,
        "bbox": item.bbox,
        "properties": {"datetime": _datetime_text(item)},
        "assets": assets,
        "links": [],
    }
    data = stackstac.stack(
        [minimal],
        assets=[band.name for band in bands],
        epsg=epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=getattr(rasterio.enums.Resampling, resampling),
        chunksize=chunks,
        dtype=np.dtype("float32"),
        fill_value=np.float32("nan"),
        rescale=False,
        properties=False,
        band_coords=False,
    )
    return _check_shape(data.isel(time=0, drop=True), grid, item)


def _load_odc(
    item: pystac.Item, bands: list[BandSource], grid: Grid, chunks: tuple[int, int], resampling: str
) -> xr.DataArray:
    try:
        import odc.stac
        from odc.geo.geobox import GeoBox
    except ImportError:
        raise ConfigError("--loader odc needs odc-stac: pip install 'stacembed[odc]'") from None
    minimal = pystac.Item(
        id=item.id,
        geometry=item.geometry,
        bbox=item.bbox,
        datetime=item.datetime or item.common_metadata.start_datetime,
        properties={},
    )
    names = []
    for band in bands:
        key = band.asset_key
        if key not in minimal.assets:
            minimal.add_asset(key, pystac.Asset(band.href, media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
            minimal.assets[key].extra_fields.update(_asset_dict(band, with_href=False))
        names.append(f"{key}.{band.index}" if _band_count(band.href) > 1 else key)
    geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
    dataset = odc.stac.load(
        [minimal], bands=names, geobox=geobox, chunks={"y": chunks[0], "x": chunks[1]},
        dtype="float32", resampling=resampling, nodata=float("nan"),
    )
    data = xr.concat([dataset[name] for name in names], dim="band").isel(time=0, drop=True)
    return _check_shape(data.transpose("band", "y", "x"), grid, item)


def _asset_dict(band: BandSource, with_href: bool = True) -> dict:
    grid = read_grid(band.href)
    fields = {
        "type": "image/tiff; application=geotiff",
        "roles": ["data"],
        "proj:epsg": grid.crs.to_epsg(),
        "proj:shape": [grid.height, grid.width],
        "proj:transform": list(grid.transform)[:6],
    }
    return {"href": band.href, **fields} if with_href else fields


def _band_count(href: str) -> int:
    return read_header(href)[1]


def _datetime_text(item: pystac.Item) -> str:
    moment = item.datetime or item.common_metadata.start_datetime
    return pystac.utils.datetime_to_str(moment) if moment else "1970-01-01T00:00:00Z"


def _check_shape(data: xr.DataArray, grid: Grid, item: pystac.Item) -> xr.DataArray:
    if data.shape[-2:] != (grid.height, grid.width):
        raise ReadError(
            f"item {item.id!r}: loader produced {data.shape[-2:]} pixels, expected "
            f"{(grid.height, grid.width)}; refusing to continue off-grid"
        )
    return data


def _to_measurements(raw: xr.DataArray, bands: list[BandSource]) -> xr.DataArray:
    # Scale in float64, round once to float32: the result equals an independent computation.
    scale = np.array([b.scale for b in bands], dtype="float64")[:, None, None]
    offset = np.array([b.offset for b in bands], dtype="float64")[:, None, None]
    declared = np.array([np.nan if b.nodata is None else b.nodata for b in bands], dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = raw.data
        if not all(b.nodata is None or math.isnan(b.nodata) for b in bands):
            values = np.where(values == declared[:, None, None], np.float32("nan"), values)
        values = values.astype("float64") * scale + offset
    return xr.DataArray(values.astype("float32"), dims=("band", "y", "x"),
                        coords={"band": [b.name for b in bands]})
