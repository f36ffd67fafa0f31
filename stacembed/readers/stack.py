"""The lazy stack: an item's bands as a chunked ``xarray.DataArray`` on a chosen pixel grid,
and ``StackReader``, the reader over it.

The default run reads the files directly on their own grid (``readers.direct``); this stack
is for resampling, which happens only when the caller asks for another CRS or resolution
(``grid.target_grid``), and then with the named method, or for a loader asked for by name.

Two loaders sit behind the same function: stackstac (default) and odc-stac. Both are fed a
minimal item built here from the verified band sources, which sidesteps stackstac's
``proj:epsg``-only metadata reading and makes the two dialects of STAC look the same.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import posixpath
import warnings
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import dask
import numpy as np
import pystac
import rasterio
import rasterio._path
import xarray as xr

from ..access import redact_text
from ..bands import BandSource
from ..errors import BandError, ConfigError, ReadError
from ..grid import RASTER_ERRORS, Grid, gdal_reason, raster_errors, read_grid, read_header


class StackReader:
    """The ``Reader`` over a lazy ``(band, [time,] y, x)`` stack: a window read computes its chunks.

    The loaders put NaN wherever there is no data, so validity is a pass over the pixels read
    (the direct reader gets it from its own checks instead). Chunks are read in the reader's own
    thread (``threads`` 1, measured fastest on small machines: no task-graph thread hand-offs),
    or in a dask pool of ``threads``; the scheduler is set around each read, the one place
    where dask computes. GDAL's block cache is left at its floor (``tile_row_bytes`` 0).
    """

    tile_row_bytes = 0

    def __init__(self, data: xr.DataArray, threads: int = 1, hrefs: tuple[str, ...] = ()) -> None:
        self.data = data
        self.shape = data.shape
        self.scheduler = {"scheduler": "synchronous"} if threads <= 1 else {"num_workers": threads}
        self.hrefs = hrefs

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        try:
            with dask.config.set(**self.scheduler):
                block = np.asarray(self.data[..., rows, cols].values)
        except Exception as exc:
            # A truncated or corrupt tile fails in a loader's chunk task: rasterio's error, or
            # stackstac's RuntimeError over it. Either becomes one line naming the file.
            cause = _raster_cause(exc)
            if cause is None:
                raise
            href = _failed_href(exc, self.hrefs)
            what = f"raster {redact_text(href)}" if href else f"item {self.data.attrs.get('item')!r}"
            raise ReadError(f"cannot read {what}: {gdal_reason(cause)}") from exc
        return block, np.isfinite(block).reshape(-1, *block.shape[-2:]).all(axis=0)

    def close(self) -> None:
        """Nothing to close: the loaders open and close files per chunk."""


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _raster_cause(exc: BaseException) -> BaseException | None:
    """The rasterio/GDAL error in ``exc``'s chain, if any."""
    return next((e for e in _chain(exc) if isinstance(e, RASTER_ERRORS)), None)


def _failed_href(exc: BaseException, hrefs: tuple[str, ...]) -> str | None:
    """Which of ``hrefs`` (or of the float VRTs made of them) the error names, if it names one:
    stackstac's error has the href ("Error reading Window(...) from 'href'"); odc-stac's has only
    GDAL's messages, which start with the file's base name ("B3.tif, band 1: IReadBlock failed")."""
    names = {href: href for href in hrefs}
    names.update({vrt.name: key[0] for key, vrt in _VRTS.items() if key[0] in names})
    text = " ".join(str(e) for e in _chain(exc))
    found = [name for name in names if name in text]
    if found:
        return names[max(found, key=len)]
    by_base = {href: posixpath.basename(urlsplit(href).path) for href in hrefs}
    found = [href for href, base in by_base.items() if base and f"{base}, band " in text]
    return found[0] if len(found) == 1 else None


def stack_item(
    item: pystac.Item,
    bands: list[BandSource],
    grid: Grid,
    *,
    chunks: tuple[int, int] = (512, 512),
    resampling: str = "nearest",
    loader: str = "stackstac",
    gdal_options: dict[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy ``(band, y, x)`` float32 array of ``bands`` on ``grid``; nodata is NaN, values scaled.

    Stored values become measurements here (``raster:scale``/``raster:offset``), so that the
    model card's value scaling always applies to physical values, whatever the encoding.
    ``gdal_options`` (timeouts, retries, S3 access, headers) apply to every read.
    """
    loaders = {"stackstac": _load_stackstac, "odc": _load_odc}
    sources = bands
    if resampling != "nearest":
        with rasterio.Env(**(gdal_options or {})):
            sources = [_exact_source(band, grid) for band in bands]
    raw = loaders[loader](item, sources, grid, chunks, resampling, gdal_options or {})
    data = _to_measurements(raw, bands)
    data.attrs["item"] = item.id
    return data


def _exact_source(band: BandSource, grid: Grid) -> BandSource:
    """The band as a float32 VRT that knows its nodata, when it must be resampled onto ``grid``.

    GDAL warps in the file's data type and leaves out only the nodata value of the file header.
    So ``average`` or ``bilinear`` onto another grid would round the results to the stored
    integer type, and blend nodata declared only in the STAC metadata (``raster:bands`` or
    ``bands``) into the valid pixels around it (0 and 1000 -> 500). Both loaders read this VRT
    instead: the warp runs in float32 and leaves out both nodata values. On the band's own grid
    nothing is resampled, and the file is read as it is.
    """
    if read_grid(band.href) == grid:
        return band
    return dataclasses.replace(band, asset_key=band.name, href=_float_vrt(band.href, band.index, band.nodata), index=1)


_VRTS: dict[tuple[str, int, float | None], rasterio.MemoryFile] = {}


def _float_vrt(href: str, index: int, declared: float | None) -> str:
    """A /vsimem/ VRT of band ``index`` of ``href`` as float32 (kept for the life of the process)."""
    key = (href, index, declared)
    if key not in _VRTS:
        _VRTS[key] = rasterio.MemoryFile(_float_vrt_xml(href, index, declared).encode(), ext=".vrt")
    return _VRTS[key].name


def _float_vrt_xml(href: str, index: int, declared: float | None) -> str:
    """VRT XML of band ``index`` of ``href`` as float32, nodata: the declared one, else the header's."""
    with raster_errors(href), rasterio.open(href) as ds:
        header = ds.nodatavals[index - 1]
        width, height, crs, transform = ds.width, ds.height, ds.crs, ds.transform
    nodata = declared if declared is not None else header
    source = rasterio._path._parse_path(href).as_vsi()
    return "".join([
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f'<SRS dataAxisToSRSAxisMapping="1,2">{escape(crs.to_wkt())}</SRS>',
        f"<GeoTransform>{', '.join(repr(float(v)) for v in transform.to_gdal())}</GeoTransform>",
        '<VRTRasterBand dataType="Float32" band="1">',
        f"<NoDataValue>{_xml_number(nodata)}</NoDataValue>" if nodata is not None else "",
        f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(source)}</SourceFilename>',
        f"<SourceBand>{index}</SourceBand>",
        f"<NODATA>{_xml_number(header)}</NODATA>" if header is not None else "",
        "</ComplexSource></VRTRasterBand></VRTDataset>",
    ])


def _xml_number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def stack_series(
    items: list[tuple[pystac.Item, list[BandSource]]], grid: Grid, **options
) -> xr.DataArray:
    """One item: ``(band, y, x)``; a time series on one grid: ``(band, time, y, x)``, oldest first."""
    arrays = [stack_item(item, bands, grid, **options) for item, bands in items]
    if len(arrays) == 1:
        return arrays[0]
    stacked = xr.concat(arrays, dim="time").transpose("band", "time", "y", "x")
    stacked.attrs.update(arrays[0].attrs)
    return stacked


def _load_stackstac(
    item: pystac.Item, bands: list[BandSource], grid: Grid, chunks: tuple[int, int], resampling: str,
    gdal_options: dict[str, Any],
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
        gdal_env=stackstac.DEFAULT_GDAL_ENV.updated(always=gdal_options),
    )
    return _check_shape(data.isel(time=0, drop=True), grid, item)


def _load_odc(
    item: pystac.Item, bands: list[BandSource], grid: Grid, chunks: tuple[int, int], resampling: str,
    gdal_options: dict[str, Any],
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
    odc.stac.configure_rio(**gdal_options)
    _quiet_odc_read_failures()
    geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
    dataset = odc.stac.load(
        [minimal], bands=names, geobox=geobox, chunks={"y": chunks[0], "x": chunks[1]},
        dtype="float32", resampling=resampling, nodata=float("nan"),
    )
    data = xr.concat([dataset[name] for name in names], dim="band").isel(time=0, drop=True)
    # odc names the spatial dimensions after the CRS: (y, x), or (latitude, longitude) for
    # a geographic one such as --crs EPSG:4326.
    data = data.rename(dict(zip(geobox.dimensions, ("y", "x"), strict=True)))
    return _check_shape(data.transpose("band", "y", "x"), grid, item)


def _quiet_odc_read_failures() -> None:
    """odc-stac logs a failed read as an ERROR and then raises it (``fail_on_error``, its default
    and ours); ``StackReader.read`` turns what it raises into the run's one error line, so the log
    record would only say the same thing twice. Records of reads it skips are left alone."""
    logger = logging.getLogger("odc.loader._rio")
    if not any(isinstance(f, _RaisedReadFailures) for f in logger.filters):
        logger.addFilter(_RaisedReadFailures())


class _RaisedReadFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and str(record.msg).startswith("Failed to load"))


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
