"""Zarr stores and NetCDF files: their variables as bands, placed on a map from their own metadata,
read a window (and only its chunks) at a time.

What an asset is (``bands.array_format``: ``application/vnd+zarr``, ``application/vnd.zarr``,
``application/netcdf``, ``application/x-netcdf``, else a ``.zarr``/``.nc`` href) decides that its
bands are read here, by ``ArrayReader``, behind the same ``Reader`` protocol as GeoTIFFs.

Where the pixels are
    Zarr is read with zarr-python (v2 and v3 stores, consolidated metadata when the store has
    it, else the store's own documents: an array is found by its path, without listing). The
    asset's href may be the store (``S2A_MSIL2A_...zarr``), a group in it (EOPF's ``SR_10m`` asset:
    ``.../measurements/reflectance/r10m``) or an array (EOPF's ``B02_10m``:
    ``.../measurements/reflectance/r10m/b02``): the store's root is the path component that ends
    in ``.zarr`` (for a local path without one, the highest directory that is still a Zarr group).
    NetCDF is read with xarray (``h5netcdf`` for NetCDF-4, scipy for NetCDF-3), undecoded
    (``decode_cf=False``): the stored values and the attributes as written. A band's variable is
    ``BandSource.variable``: a name or path in the href's group, ``/path`` from the store's root,
    or none when the href is the array itself; names match case-insensitively (EOPF's STAC calls
    ``b02`` ``B02``).

Where the pixels are on the map (``_georeference``; the first source that answers wins)
    CRS: the variable's CF ``grid_mapping`` variable (``crs_wkt``, GDAL's ``spatial_ref``, else
    ``pyproj.CRS.from_cf``), a ``spatial_ref`` variable, the ``proj:code``/``proj:epsg``/
    ``proj:wkt2``/``proj:projjson`` attributes and GeoZarr's ``geo: {proj: {...}}`` (or
    ``geo:proj``) on the array, then on its groups up to the root, where EOPF also keeps
    ``stac_discovery.properties.proj:epsg`` and ``other_metadata.horizontal_CRS_code``; then the
    STAC asset's (or item's) ``proj:*`` fields; then 1-D latitude/longitude coordinates: EPSG:4326.
    Transform: regular 1-D coordinates of the two spatial dimensions (pixel centres: the grid's
    edge is half a step out; integer pixel indices 0..n-1 are not coordinates), flipped to
    north-up when y ascends; else GDAL's ``GeoTransform`` on the grid mapping,
    ``proj:transform``/``spatial:transform``/``geo.proj.transform`` of the array or its group
    (checked against ``proj:shape``/``spatial:shape`` when stated), the STAC asset's
    ``proj:transform``.

Without georeferencing (no CRS, no transform, or only one of them)
    A variable is placed only with both. Without them it is read on its pixel grid, as GDAL reads a
    raster without georeferencing: no CRS and the identity transform (``grid.Grid.unplaced``: x =
    column, y = row, growing down), rows in storage order (coordinates are not used: integer index
    coordinates, or x/y of an unknown CRS, do not say which way is north). ``Layout.unplaced`` says
    what was found, and ``grid.band_grid`` warns once per store (``grid.say_unplaced``: e.g. "a CRS
    (EPSG:32634) but no pixel grid"); a CRS alone or a transform alone is named there and goes no
    further, since the other half is what would place the pixels. Outputs are then in pixel
    coordinates without a CRS (see ``grid``); the STAC asset's ``proj:code`` and ``proj:transform``
    place such a store.

Values (``_Handle.read``, the same arithmetic as ``readers.direct`` for a GeoTIFF)
    No data: the CF ``_FillValue`` (for Zarr v2, the array's ``fill_value``, as xarray reads it;
    for v3, the ``_FillValue`` attribute) and ``missing_value``, compared in the stored type, the
    STAC ``nodata``, and non-finite floats. Scale and offset: the STAC band's (``raster:scale``/
    ``raster:offset``) when the item states them, else the variable's CF ``scale_factor``/
    ``add_offset``; applied once, in float64, rounded to float32 (never both: EOPF states both).

Zipped stores and selections (Embed2Scale / SSL4EO-S12 v1.1 sample cubes, ``resolve.cubes``)
    A local ``<name>.zarr.zip`` is a store (zarr-python's ``ZipStore``, read-only; the root is the
    path component ending in ``.zarr.zip``). A variable of more dimensions than (y, x) is read at an
    index along each other one, named as ``name[dim=index,...]`` (xarray's ``isel``; a cube's band:
    ``bands[sample=3,time=1,band=4]``); a dimension of one value needs none. When the selection
    fixes a ``sample`` dimension, the variable's 1-D coordinates are not its georeferencing (they
    are shared by samples at different places; the cubes' are pixel indices): the asset's
    ``proj:*`` fields place it, else it is read on its pixel grid. The decoded chunks of selected
    variables are cached whole and shared by every band, season and sample read from them
    (``_shared_chunk``, at most ``SHARED_CHUNK_BYTES``), so a chunk that holds all of them is
    decoded once while they are read in order, not once per band.

Multiscale stores (``level_at``)
    EOPF keeps each band at several resolutions in sibling groups (``r10m``, ``r20m``,
    ``r60m``). With ``--resolution`` a band is read from the sibling group that holds a variable
    of the same name on a grid of that resolution (same CRS and extent), as the producer made it;
    a band without such a level is resampled (``--resampling``) onto the run's grid here
    (``_Handle._resampled``: the window's source pixels plus a margin, warped by a ``WarpedVRT``
    with GDAL's exact transformer and resampling factors fixed for the whole grid, so that a pixel
    does not depend on the window it is read in; nodata left out; then scale and offset, as the
    GeoTIFF stack does). Without ``--resolution`` (or ``--crs``), bands of one item on different
    grids are an error (``grid.native_grid``).

Memory
    Reads go through a cache of decoded chunks (``_Chunks``): a window reads only the chunks it
    overlaps, each once while the reads move down the item in chip rows, and chunks above the
    window are dropped. Memory follows the width of the item times a chunk row, not its area.

Remote stores: ``http(s)://`` through fsspec (aiohttp), with ``--asset-header`` headers and the
``--timeout``; a Zarr store over plain HTTP needs consolidated metadata only to be listed
(matching a band by variable name without STAC metadata), never to read a named array.
``s3://`` through s3fs (``pip install 'stacembed[zarr]'``), with what GDAL's ``/vsis3/`` gets
(``storage_options``: ``--aws-unsigned``, ``--requester-pays``, ``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
``AWS_REGION``, ``--timeout``/``--retries``; credentials from the same AWS environment); tested
against an S3 server on loopback (tests/test_s3.py).

Structure references (read while writing this):
- EOPF Sentinel-2 L2A product (consolidated metadata of a real product: groups
  ``measurements/reflectance/r10m|r20m|r60m`` with arrays ``b02``... and 1-D ``x``/``y`` pixel
  centres; array attributes ``_ARRAY_DIMENSIONS``, ``proj:epsg``, ``proj:transform`` (9 numbers),
  ``proj:shape``, ``proj:bbox``, ``proj:wkt2``, ``scale_factor``/``add_offset``, ``fill_value``;
  root ``stac_discovery``/``other_metadata``):
  clausmichele/eopf-stac@53b902f68e3e83331f53b141e695819d3c9a618b/tests/data-files/S02MSIL2A_20250109T100401_0000_A122_T461.json
- EOPF STAC items (``application/vnd+zarr`` assets ``B02_10m`` -> ``.../r10m/b02``, ``SR_10m`` ->
  ``.../r10m`` with several ``bands``, ``product`` with roles data+metadata, ``gsd``; ``raster:scale``,
  ``nodata`` and ``proj:code``/``proj:transform`` copied from the array attributes where they have them):
  clausmichele/eopf-stac@a8132425830d70a377c906f5ea8cdad64aa68d61/src/eopf_stac/sentinel2/assets.py,
  .../src/eopf_stac/sentinel2/constants.py and .../src/eopf_stac/common/constants.py
- CRS lookup of xarray-eopf (``horizontal_CRS_code``, ``proj:epsg``, STAC ``proj:code``):
  EOPF-Sample-Service/xarray-eopf@055a12bf95b063bc5d8db4cf75b6b1c3b0915b21/xarray_eopf/amodes/sentinel2.py
- GeoZarr ``geo.proj`` (code/wkt2/projjson/transform, group-to-array inheritance):
  EOPF-Explorer/data-model@176c68953d9d1a9f142954180a2f250112d04f0c/attributes/geo/proj/README.md;
  multiscale layout of EOPF Explorer's GeoZarr products:
  EOPF-Explorer/data-model@064917a61a32938f77b16eff6d531ba9b3dd6c8e/dataset_tree_simplified.txt
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..access import redact_text
from ..errors import BandError, ConfigError, ReadError

if TYPE_CHECKING:  # annotations only: this module imports neither (grid and bands import it)
    import pystac

    from ..bands import BandSource
    from ..grid import Grid

log = logging.getLogger("stacembed")

# Names of spatial dimensions (GeoZarr's pattern list, CF's usual names), lower case.
_X_NAMES = ("x", "lon", "longitude", "easting", "col", "sample", "xc", "rlon")
_Y_NAMES = ("y", "lat", "latitude", "northing", "row", "line", "yc", "rlat")
_LON = ("lon", "longitude")
_LAT = ("lat", "latitude")
# Coordinates closer to regular than this fraction of a step count as a regular grid
# (float32 coordinates of UTM metres carry ~0.03 m of rounding).
_REGULAR = 1e-2
# Source pixels read around a resampled window: the widest GDAL kernel (lanczos) has radius 3.
_MARGIN = 4
# GDAL's approximate transformer with this error bound (pixels) transforms every pixel exactly, as in
# ``readers.modal`` (not imported from there: modal imports grid, which imports this module).
EXACT = 1e-9
# A zipped Zarr store (one file; Embed2Scale / SSL4EO-S12 v1.1 sample cubes).
ZIPPED = ".zarr.zip"
# ``name[dim=index,...]``: a variable read at an index along each named dimension (xarray's ``isel``).
_SELECTION = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<select>[^\[\]]*)\]$")
# Decoded chunks of selected variables shared by every band and sample read from them (``_shared_chunk``).
SHARED_CHUNK_BYTES = 512 << 20


# --------------------------------------------------------------------------------------------
# What a variable is: found once per (href, variable), kept as plain data.


@dataclass(frozen=True)
class Layout:
    """A variable of a store, as read: where, its spatial layout, values and grid.

    ``axes``: the storage axes of (y, x) (other axes are read at ``index``: a selection's, else 0);
    ``flip_y``: stored south-up (y ascending), read flipped; ``transform``: the north-up affine,
    6 numbers; ``crs``: ``EPSG:n`` or WKT, or None without georeferencing (then ``transform`` is
    the identity: pixel/line coordinates, rows as stored; see the module docstring).
    """

    fmt: str
    store: str  # the Zarr root, or the NetCDF href
    group: str  # the group's path in the store ("" for the root)
    name: str
    shape: tuple[int, int]  # (height, width)
    ndim: int
    axes: tuple[int, int]
    flip_y: bool
    dtype: str
    chunks: tuple[int, int] | None  # chunk (rows, cols) along (y, x); None: contiguous
    fill: tuple[float, ...]  # CF no-data values, compared in the stored type
    cf_scale: float | None
    cf_offset: float | None
    crs: str | None
    transform: tuple[float, ...]
    index: tuple[int, ...] = ()  # per storage axis: the index read along it (spatial axes: 0); () all 0
    unplaced: str | None = None  # what was found of its georeferencing when that does not place it

    @property
    def path(self) -> str:
        return posixpath.join(self.group, self.name) if self.group else self.name

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform[0]), abs(self.transform[4])


def describe(href: str, fmt: str, variable: str | None, proj: str | None = None) -> Layout:
    """The variable ``variable`` of the store at ``href`` (see the module docstring), georeferenced."""
    return _describe(href, fmt, variable, proj)


@functools.lru_cache(maxsize=512)
def _describe(href: str, fmt: str, variable: str | None, proj: str | None) -> Layout:
    with store_errors(href):
        with _open_variable(href, fmt, variable) as view:
            return view.layout(json.loads(proj) if proj else {})


def variable_grid(href: str, fmt: str, variable: str | None,
                  proj: str | None = None) -> tuple[str | None, tuple[float, ...], int, int, str, str | None]:
    """(CRS or None, transform, width, height, store, what was found of an unplaced one's
    georeferencing) of a store's variable: ``grid.band_grid`` makes the ``Grid`` (and says once
    when it is unplaced)."""
    layout = describe(href, fmt, variable, proj)
    return layout.crs, layout.transform, layout.shape[1], layout.shape[0], layout.store, layout.unplaced


def level_at(href: str, fmt: str, variable: str | None, proj: str | None, resolution: float) -> str | None:
    """``/path`` of the same variable at ``resolution`` in a sibling group of the store (EOPF's
    ``r20m`` for an ``r10m`` band), on the same CRS and extent; None when the band is already at
    that resolution or the store has no such level (NetCDF: never)."""
    layout = describe(href, fmt, variable, proj)
    if fmt != "zarr" or _close(layout.resolution, (resolution, resolution)):
        return None
    parent = posixpath.dirname(layout.group)
    with store_errors(href):
        root = zarr_root(layout.store)
        for sibling in _child_groups(root, parent):
            path = posixpath.join(sibling, layout.name)
            if sibling == layout.group or not _is_array(root, path):
                continue
            try:
                other = describe(href, fmt, "/" + path, proj)
            except (ReadError, BandError):
                continue
            if _close(other.resolution, (resolution, resolution)) and other.crs == layout.crs \
                    and _same_extent(layout, other):
                return "/" + path
    return None


def list_variables(href: str, fmt: str) -> list[str]:
    """The variables of at least two dimensions under the asset's href (paths relative to it),
    for matching bands by name when STAC names none. Several levels of one variable in sibling
    groups (a multiscale store) count once: the finest (largest) one."""
    with store_errors(href):
        if fmt == "netcdf":
            with _netcdf(href, "") as ds:
                return [str(name) for name, var in ds.data_vars.items() if var.ndim >= 2]
        root_href, inner = split_store(href)
        root = zarr_root(root_href)
        node = root[inner] if inner else root
        if _is_array_node(node):
            return []
        try:
            members = list(node.members(max_depth=None))
        except Exception as exc:  # a store that cannot be listed (plain HTTP, no consolidated metadata)
            raise ReadError(f"cannot list the variables of {redact_text(href)} ({_reason(exc)}); name the "
                            "variable with --band BAND=ASSET:VARIABLE") from exc
        arrays = {path: arr for path, arr in members if _is_array_node(arr) and arr.ndim >= 2}
        finest: dict[tuple[str, str], str] = {}
        for path, arr in arrays.items():
            group = posixpath.dirname(path)
            family = (posixpath.dirname(group), posixpath.basename(path).lower())
            best = finest.get(family)
            if best is None or math.prod(arr.shape) > math.prod(arrays[best].shape):
                finest[family] = path
        return sorted(finest.values())


# --------------------------------------------------------------------------------------------
# Opening stores.


def _need(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"reading {what} assets needs the Python package {module.split('.')[0]}: "
                          "pip install 'stacembed[zarr]'") from None


def split_store(href: str) -> tuple[str, str]:
    """(root of the Zarr store, path of the group or array inside it) of an href."""
    clean = href[len("file://"):] if href.startswith("file://") else href
    clean = clean.rstrip("/")
    parts = clean.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower().endswith((".zarr", ZIPPED)):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1:])
    if "://" in clean:
        return clean, ""
    root = Path(clean)
    while any((root.parent / name).is_file() for name in ("zarr.json", ".zgroup")) and root.parent != root:
        root = root.parent
    inner = Path(clean).relative_to(root).as_posix()
    return str(root), "" if inner == "." else inner


def zarr_root(root: str):
    """The store's root group, opened once per process and remote settings (consolidated metadata
    when there is some): a later run in this process with other credentials, ``--aws-unsigned`` or
    another endpoint opens it again rather than reusing a filesystem made for the first."""
    return _open_root(root, repr(sorted(storage_options(root).items())))


@functools.lru_cache(maxsize=16)
def _open_root(root: str, settings: str):
    """``zarr_root``'s cache, keyed by the store and ``settings``: the repr of its
    ``storage_options`` (a dict, which the cache cannot hash), as the caller has just found them."""
    zarr = _need("zarr", "Zarr")
    if root.lower().endswith(ZIPPED):
        return zarr.open_group(store=_zip_store(root), mode="r")
    options = storage_options(root)
    with _filesystem(root):
        return zarr.open_group(store=root, mode="r", storage_options=options or None)


def _zip_store(root: str):
    """A zipped store (``.zarr.zip``, as zarr-python 2's ``ZipStore`` wrote them), opened read-only;
    local files only."""
    import zarr.storage

    if "://" in root:
        raise ConfigError(f"{redact_text(root)}: zipped Zarr stores are read from local files only; "
                          "download it first")
    if not Path(root).is_file():
        raise ReadError(f"cannot read {redact_text(root)}: not found")
    return zarr.storage.ZipStore(root, mode="r")


@contextmanager
def _filesystem(href: str) -> Iterator[None]:
    """A missing fsspec backend (s3fs for ``s3://``, ...) as one line saying what to install."""
    try:
        yield
    except ImportError as exc:
        scheme = urlsplit(href).scheme or "this"
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme, exc.name)
        raise ConfigError(f"reading {scheme}:// stores needs the Python package {package}: pip install {package}") \
            from None


def storage_options(href: str) -> dict[str, Any]:
    """fsspec options for a remote href, from the run's GDAL settings (``Access.gdal_options``,
    active as the ``rasterio.Env`` a run reads in) and the ``AWS_*`` environment: ``--asset-header``
    headers and ``--timeout`` for http(s); for s3 (s3fs) what GDAL's ``/vsis3/`` is given:
    ``--aws-unsigned`` (``AWS_NO_SIGN_REQUEST``), ``--requester-pays``, ``--timeout``/``--retries``,
    ``AWS_S3_ENDPOINT`` (``AWS_HTTPS=NO``: http), ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style) and
    ``AWS_REGION``. Credentials are botocore's, from the same environment GDAL reads them from
    (``AWS_ACCESS_KEY_ID``..., ``AWS_PROFILE``, ``~/.aws``)."""
    scheme = urlsplit(href).scheme.lower()
    if scheme not in ("http", "https", "s3"):
        return {}
    env = {**{k: v for k, v in os.environ.items() if k.startswith(("GDAL_HTTP", "AWS_"))}, **_gdal_env()}
    if scheme in ("http", "https"):
        options: dict[str, Any] = {}
        headers = {}
        for line in str(env.get("GDAL_HTTP_HEADERS") or "").replace("\r\n", "\n").split("\n"):
            key, sep, value = line.partition(":")
            if sep and key.strip():
                headers[key.strip()] = value.strip()
        if headers:
            options["headers"] = headers
        if env.get("GDAL_HTTP_TIMEOUT"):
            import aiohttp

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=float(env["GDAL_HTTP_TIMEOUT"]))}
        return options
    options = {}
    if str(env.get("AWS_NO_SIGN_REQUEST", "")).upper() in ("YES", "TRUE", "ON", "1"):
        options["anon"] = True
    if env.get("AWS_REQUEST_PAYER") == "requester":
        options["requester_pays"] = True
    config: dict[str, Any] = {}
    if env.get("GDAL_HTTP_TIMEOUT"):  # --timeout and --retries, as for GDAL's requests
        config.update(connect_timeout=float(env["GDAL_HTTP_TIMEOUT"]), read_timeout=float(env["GDAL_HTTP_TIMEOUT"]))
    if env.get("GDAL_HTTP_MAX_RETRY"):
        config["retries"] = {"max_attempts": int(env["GDAL_HTTP_MAX_RETRY"]) + 1}
    if str(env.get("AWS_VIRTUAL_HOSTING", "")).upper() in ("NO", "FALSE", "OFF", "0"):
        config["s3"] = {"addressing_style": "path"}  # botocore's default for an endpoint's own host, too
    if config:
        options["config_kwargs"] = config
    client: dict[str, Any] = {}
    if env.get("AWS_S3_ENDPOINT"):
        endpoint = str(env["AWS_S3_ENDPOINT"])
        https = str(env.get("AWS_HTTPS", "YES")).upper() not in ("NO", "FALSE", "OFF", "0")
        client["endpoint_url"] = endpoint if "://" in endpoint else f"{'https' if https else 'http'}://{endpoint}"
    if env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
        client["region_name"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if client:
        options["client_kwargs"] = client
    return options


def _gdal_env() -> dict[str, Any]:
    import rasterio.env

    try:
        return dict(rasterio.env.getenv())
    except Exception:  # no rasterio.Env active
        return {}


@contextmanager
def _netcdf(href: str, group: str):
    """The NetCDF file (or a group of it) as an undecoded, lazily read xarray Dataset."""
    xr = _need("xarray", "NetCDF")
    remote = "://" in href and not href.startswith("file://")
    handle = None
    if remote:
        fsspec = _need("fsspec", "NetCDF")
        with _filesystem(href):
            handle = fsspec.open(href, mode="rb", **storage_options(href)).open()
        source: Any = handle
    else:
        source = href[len("file://"):] if href.startswith("file://") else href
    try:
        try:
            ds = xr.open_dataset(source, group=group or None, decode_cf=False, cache=False, chunks=None)
        except ValueError as exc:
            if "IO backends" in str(exc):  # xarray: no installed engine opens it
                raise ConfigError("reading NetCDF-4 assets needs h5netcdf (or netCDF4): "
                                  "pip install 'stacembed[zarr]'") from None
            raise
        try:
            yield ds
        finally:
            ds.close()
    finally:
        if handle is not None:
            handle.close()


@contextmanager
def store_errors(href: str) -> Iterator[None]:
    """What opening or reading a store raises (missing paths, HTTP errors, corrupt chunks) as one
    ``ReadError`` line naming the store (redacted); stacembed's own errors pass through."""
    try:
        yield
    except (ConfigError, BandError, ReadError):
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ReadError(f"cannot read {redact_text(href)}: {_reason(exc)}") from exc
    except Exception as exc:  # zarr's and aiohttp's own errors (not subclasses of the above)
        if type(exc).__module__.split(".")[0] not in ("zarr", "numcodecs", "aiohttp", "fsspec", "h5py",
                                                     "h5netcdf", "netCDF4", "scipy", "xarray"):
            raise
        raise ReadError(f"cannot read {redact_text(href)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError | FileNotFoundError):
        text = f"not found ({text})"
    return redact_text(text)


def _is_array_node(node: Any) -> bool:
    return hasattr(node, "dtype") and hasattr(node, "shape") and not hasattr(node, "group_keys")


def _is_array(root: Any, path: str) -> bool:
    try:
        return _is_array_node(root[path])
    except (KeyError, FileNotFoundError, ValueError):
        return False


def _child_groups(root: Any, parent: str) -> list[str]:
    """Paths of the groups directly under ``parent``: from the store's listing, else from a
    GeoZarr ``multiscales`` layout of ``parent`` (a store over plain HTTP cannot be listed)."""
    node = root[parent] if parent else root
    try:
        return [posixpath.join(parent, key) for key in sorted(node.group_keys())]
    except Exception:  # not listable
        layout = (dict(node.attrs).get("multiscales") or {}).get("layout") or []
        names = [entry.get("asset") or entry.get("group") for entry in layout if isinstance(entry, dict)]
        return [posixpath.join(parent, str(name)) for name in names if name]


# --------------------------------------------------------------------------------------------
# One variable of a store, as the georeferencing and the reader need it.


class _View:
    """A variable and its surroundings: dims, attributes, coordinates, groups; and how to read it."""

    fmt: str
    store: str
    group: str
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict
    group_attrs: list[dict]  # the variable's group first, then its ancestors up to the root
    chunks: tuple[int, ...] | None
    fill: tuple[float, ...]
    selection: tuple[tuple[str, int], ...] = ()  # ``name[dim=index,...]``: the index read along each dim

    def coordinate(self, dim: str) -> tuple[np.ndarray | None, dict]:
        raise NotImplementedError

    def variable_attrs(self, name: str) -> dict | None:
        raise NotImplementedError

    def fetch(self, key: tuple) -> np.ndarray:
        raise NotImplementedError

    def layout(self, proj: dict) -> Layout:
        path = posixpath.join(self.group, self.name) if self.group else self.name
        where = f"{redact_text(self.store)} variable {path}"
        y_axis, x_axis = _spatial_axes(self)
        index = self._index(y_axis, x_axis, where)
        crs, transform, flip_y, unplaced = _georeference(self, y_axis, x_axis, proj, where)
        chunks = (self.chunks[y_axis], self.chunks[x_axis]) if self.chunks else None
        return Layout(
            fmt=self.fmt, store=self.store, group=self.group, name=self.name,
            shape=(self.shape[y_axis], self.shape[x_axis]), ndim=len(self.shape), axes=(y_axis, x_axis),
            flip_y=flip_y, dtype=np.dtype(self.dtype).str, chunks=chunks, fill=self.fill,
            cf_scale=_number(self.attrs.get("scale_factor")), cf_offset=_number(self.attrs.get("add_offset")),
            crs=crs, transform=transform, index=index, unplaced=unplaced,
        )

    def _index(self, y_axis: int, x_axis: int, where: str) -> tuple[int, ...]:
        """The index read along each storage axis: the selection's, 0 along a dimension of one value
        (and the spatial axes); () without a selection. Any other dimension is an error."""
        dims = dict(zip(self.dims, self.shape, strict=True))
        chosen = dict(self.selection)
        unknown = [d for d in chosen if d not in dims or d in (self.dims[y_axis], self.dims[x_axis])]
        if unknown:
            raise BandError(f"{where}: cannot select along {', '.join(unknown)} (its dimensions: {dims}; the "
                            f"spatial ones are {self.dims[y_axis]}, {self.dims[x_axis]})")
        index = []
        for axis, (dim, size) in enumerate(dims.items()):
            at = chosen.get(dim, 0)
            if axis not in (y_axis, x_axis) and dim not in chosen and size != 1:
                raise BandError(f"{where} has dimensions {dims}; a band is one 2-D variable ({dim} has {size} "
                                "values: name one with VARIABLE[" + dim + "=INDEX], or stacembed reads the only one)")
            if not 0 <= at < size:
                raise BandError(f"{where}: index {at} of {dim} is outside its {size} values")
            index.append(at)
        return tuple(index) if chosen else ()


class _ZarrView(_View):
    fmt = "zarr"

    def __init__(self, root_href: str, root: Any, path: str, selection: tuple[tuple[str, int], ...] = (),
                 shared: bool = False) -> None:
        """``shared``: read whole chunks through the cache every band of the array shares (a selection's
        chunk holds other bands and samples too: ``_shared_chunk``)."""
        self.store, self.root = root_href, root
        self.selection, self.shared = selection, shared or bool(selection)
        self.group, self.name = posixpath.dirname(path), posixpath.basename(path)
        self.array = root[path]
        self.parent = root[self.group] if self.group else root
        self.shape = tuple(self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        self.attrs = dict(self.array.attrs)
        metadata = self.array.metadata
        dims = getattr(metadata, "dimension_names", None) or self.attrs.get("_ARRAY_DIMENSIONS") or ()
        self.dims = tuple(str(d) if d is not None else f"dim_{i}" for i, d in enumerate(dims)) \
            if len(dims) == len(self.shape) else tuple(f"dim_{i}" for i in range(len(self.shape)))
        self.chunks = tuple(self.array.chunks)
        fill = []
        # xarray's reading of Zarr: v2's fill_value is the CF _FillValue; v3 keeps it as an attribute.
        if getattr(metadata, "zarr_format", 3) == 2 and getattr(metadata, "fill_value", None) is not None:
            fill.append(metadata.fill_value)
        fill += _listed(self.attrs.get("_FillValue")) + _listed(self.attrs.get("missing_value"))
        self.fill = _fill_values(fill, self.dtype)
        self.group_attrs = []
        group = self.group
        while True:
            self.group_attrs.append(dict((root[group] if group else root).attrs))
            if not group:
                break
            group = posixpath.dirname(group)

    def coordinate(self, dim: str) -> tuple[np.ndarray | None, dict]:
        if any(d.lower() == "sample" for d, _ in self.selection):
            # One sample of a stack of samples at different places (an SSL4EO-S12 cube): 1-D coordinates
            # shared by all of them (there, pixel indices) place none; its asset's proj:* fields do.
            return None, {}
        try:
            node = self.parent[dim]
        except (KeyError, FileNotFoundError, ValueError):
            return None, {}
        if not _is_array_node(node) or node.ndim != 1:
            return None, {}
        return np.asarray(node[...]), dict(node.attrs)

    def variable_attrs(self, name: str) -> dict | None:
        try:
            return dict(self.parent[name].attrs)
        except (KeyError, FileNotFoundError, ValueError):
            return None

    def fetch(self, key: tuple) -> np.ndarray:
        if self.shared:
            return _shared_chunk(self, key)
        return np.asarray(self.array[key])


_SHARED: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SHARED_LOCK = threading.Lock()


def _shared_chunk(view: _ZarrView, key: tuple) -> np.ndarray:
    """``view.array[key]`` cut from its whole decoded chunk, kept in a cache every band and sample
    read from that chunk shares (least recently used first out, at most ``SHARED_CHUNK_BYTES`` and
    always the latest chunk): a chunk that holds several bands, seasons or samples (a sample cube's)
    is decoded once while they are read in order, not once per band. A key spanning chunks is
    read directly."""
    chunks, shape = view.chunks or view.shape, view.shape
    origin, local = [], []
    for k, c in zip(key, chunks, strict=True):
        start, stop = (k.start, k.stop) if isinstance(k, slice) else (k, k + 1)
        if (stop - 1) // c != start // c:
            return np.asarray(view.array[key])
        origin.append(start // c * c)
        local.append(slice(start - origin[-1], stop - origin[-1]) if isinstance(k, slice) else k - origin[-1])
    cache_key = (view.store, posixpath.join(view.group, view.name), tuple(origin))
    with _SHARED_LOCK:
        block = _SHARED.get(cache_key)
        if block is not None:
            _SHARED.move_to_end(cache_key)
    if block is None:
        block = np.asarray(view.array[tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape,
                                                                                     strict=True))])
        with _SHARED_LOCK:
            _SHARED[cache_key] = block
            while len(_SHARED) > 1 and sum(b.nbytes for b in _SHARED.values()) > SHARED_CHUNK_BYTES:
                _SHARED.popitem(last=False)
    return np.array(block[tuple(local)])  # a copy: a view would keep the whole chunk alive


class _NetCDFView(_View):
    fmt = "netcdf"

    def __init__(self, href: str, ds: Any, group: str, name: str) -> None:
        self.store, self.ds, self.group, self.name = href, ds, group, name
        var = ds.variables[name]
        self.variable = var
        self.shape, self.dims, self.dtype = tuple(var.shape), tuple(str(d) for d in var.dims), np.dtype(var.dtype)
        self.attrs = dict(var.attrs)
        encoding = var.encoding
        chunks = encoding.get("chunksizes") or encoding.get("chunks")
        self.chunks = tuple(int(c) for c in chunks) if chunks and len(chunks) == len(self.shape) else None
        self.fill = _fill_values(_listed(self.attrs.get("_FillValue")) + _listed(self.attrs.get("missing_value")),
                                 self.dtype)
        self.group_attrs = [dict(ds.attrs)]

    def coordinate(self, dim: str) -> tuple[np.ndarray | None, dict]:
        if dim not in self.ds.variables or self.ds.variables[dim].ndim != 1:
            return None, {}
        var = self.ds.variables[dim]
        return np.asarray(var.values), dict(var.attrs)

    def variable_attrs(self, name: str) -> dict | None:
        return dict(self.ds.variables[name].attrs) if name in self.ds.variables else None

    def fetch(self, key: tuple) -> np.ndarray:
        return np.asarray(self.variable[key].values)


def split_selection(variable: str | None) -> tuple[str | None, tuple[tuple[str, int], ...]]:
    """``name[dim=index,...]`` -> (name, ((dim, index), ...)); a plain name -> (name, ())."""
    match = _SELECTION.match(variable or "")
    if not match:
        return variable, ()
    selection = []
    for part in filter(None, (p.strip() for p in match["select"].split(","))):
        dim, sep, index = (t.strip() for t in part.partition("="))
        if not sep or not dim or not index.isdigit():
            raise BandError(f"variable {variable!r}: a selection is dim=index, ..., e.g. bands[time=0,band=3]")
        selection.append((dim, int(index)))
    return match["name"].strip(), tuple(selection)


@contextmanager
def _open_variable(href: str, fmt: str, variable: str | None) -> Iterator[_View]:
    """The view of ``variable`` at ``href`` (see the module docstring for how it is found)."""
    variable, selection = split_selection(variable)
    if fmt == "netcdf":
        group, _, name = (variable or "").lstrip("/").rpartition("/")
        with _netcdf(href, group) as ds:
            view: _View = _NetCDFView(href, ds, group, _netcdf_name(ds, name, href))
            view.selection = selection
            yield view
        return
    root_href, inner = split_store(href)
    root = zarr_root(root_href)
    yield _ZarrView(root_href, root, _zarr_path(root, inner, variable, href), selection)


def _netcdf_name(ds: Any, name: str, href: str) -> str:
    spatial = [str(n) for n, v in ds.data_vars.items() if v.ndim >= 2]
    if not name:
        if len(spatial) == 1:
            return spatial[0]
        raise BandError(f"{redact_text(href)} holds the variables {', '.join(spatial) or 'none'}; name one "
                        "with --band BAND=ASSET:VARIABLE")
    if name in ds.variables:
        return name
    found = [str(n) for n in ds.variables if str(n).lower() == name.lower()]
    if len(found) == 1:
        return found[0]
    raise BandError(f"{redact_text(href)} has no variable {name!r} (it has: {', '.join(spatial) or 'none'})")


def _zarr_path(root: Any, inner: str, variable: str | None, href: str) -> str:
    """The store path of the array a band reads."""
    node = root[inner] if inner else root
    if _is_array_node(node):
        if not variable:
            return inner
        base = posixpath.dirname(inner)
    else:
        base = inner
        if not variable:
            arrays = [key for key in sorted(node.array_keys()) if node[key].ndim >= 2]
            if len(arrays) == 1:
                return posixpath.join(base, arrays[0])
            raise BandError(f"{redact_text(href)} is a group of the arrays {', '.join(arrays) or 'none'}; name "
                            "one with --band BAND=ASSET:VARIABLE")
    path = variable.strip("/") if variable.startswith("/") else posixpath.normpath(posixpath.join(base, variable))
    group, name = posixpath.dirname(path), posixpath.basename(path)
    for candidate in dict.fromkeys((name, name.lower(), name.upper())):
        if _is_array(root, posixpath.join(group, candidate)):
            return posixpath.join(group, candidate)
    try:  # another spelling: from the group's listing (consolidated metadata, a local store)
        keys = list((root[group] if group else root).array_keys())
    except Exception:  # no such group, or not listable
        keys = []
    found = [key for key in keys if key.lower() == name.lower()]
    if len(found) == 1:
        return posixpath.join(group, found[0])
    listed = f" (it has: {', '.join(sorted(keys))})" if keys else ""
    raise BandError(f"{redact_text(href)} has no array {path!r}{listed}")


# --------------------------------------------------------------------------------------------
# Georeferencing.


def _spatial_axes(view: _View) -> tuple[int, int]:
    """The storage axes of (y, x): named by GeoZarr's ``spatial_dimensions``, by their names (or
    their coordinates' ``axis``/``standard_name``), else the last two."""
    lowered = [d.lower() for d in view.dims]
    for attrs in (view.attrs, *view.group_attrs[:1]):
        declared = (_geo_proj(attrs) or {}).get("spatial_dimensions")
        if isinstance(declared, list) and len(declared) == 2 and all(d in view.dims for d in declared):
            return view.dims.index(declared[0]), view.dims.index(declared[1])

    def axis_of(names: tuple[str, ...], axis: str, standard: tuple[str, ...]) -> int | None:
        for name in names:  # in the names' order: a cube's (sample, ..., y, x) has its x in x, not sample
            if name in lowered:
                return lowered.index(name)
        for i, dim in enumerate(view.dims):
            attrs = view.coordinate(dim)[1] if len(view.dims) > 2 else {}
            if str(attrs.get("axis", "")).upper() == axis or attrs.get("standard_name") in standard:
                return i
        return None

    y = axis_of(_Y_NAMES, "Y", ("projection_y_coordinate", "latitude", "grid_latitude"))
    x = axis_of(_X_NAMES, "X", ("projection_x_coordinate", "longitude", "grid_longitude"))
    if y is None or x is None or y == x:
        return len(view.dims) - 2, len(view.dims) - 1
    return y, x


def _georeference(view: _View, y_axis: int, x_axis: int, proj: dict,
                  where: str) -> tuple[str | None, tuple[float, ...], bool]:
    """(CRS, north-up transform, stored south-up) of the variable: see the module docstring;
    without both a CRS and a transform, (None, the identity, False): its pixel grid, as stored."""
    height, width = view.shape[y_axis], view.shape[x_axis]
    ydim, xdim = view.dims[y_axis], view.dims[x_axis]
    xs, xattrs = view.coordinate(xdim)
    ys, yattrs = view.coordinate(ydim)
    mapping_name = str(view.attrs.get("grid_mapping") or "").split(":")[0].split()[0] \
        if view.attrs.get("grid_mapping") else None
    mapping = view.variable_attrs(mapping_name) if mapping_name else None
    if mapping is None:
        mapping = view.variable_attrs("spatial_ref")

    crs = _crs_of(mapping) if mapping else None
    for attrs in (view.attrs, *view.group_attrs):
        crs = crs or _crs_of(attrs)
    root = view.group_attrs[-1] if view.group_attrs else {}
    discovery = root.get("stac_discovery")
    stac = discovery.get("properties") if isinstance(discovery, dict) else None
    crs = crs or (_crs_of(stac) if isinstance(stac, dict) else None)
    other = root.get("other_metadata")
    if not crs and isinstance(other, dict) and isinstance(other.get("horizontal_CRS_code"), str):
        crs = _valid_crs(other["horizontal_CRS_code"])
    crs = crs or _crs_of(proj)
    geographic = _is_lonlat(xdim, xattrs, "lon") and _is_lonlat(ydim, yattrs, "lat")
    if not crs and geographic:
        crs = "EPSG:4326"

    transform, flip_y = None, False
    x_axis_info = _regular(xs) if xs is not None and len(xs) == width else None
    y_axis_info = _regular(ys) if ys is not None and len(ys) == height else None
    if x_axis_info and y_axis_info:
        (x0, dx), (y0, dy) = x_axis_info, y_axis_info
        if dx < 0 and crs:
            raise ReadError(f"{where}: its x coordinates decrease (east to west); it is not supported")
        flip_y = dy > 0
        top = (y0 + dy * (height - 1)) if flip_y else y0
        step = -abs(dy)
        transform = tuple(_tidy(v) for v in (dx, 0.0, x0 - dx / 2, 0.0, step, top - step / 2))
    if transform is None and mapping and mapping.get("GeoTransform"):
        try:
            c, a, b, f, d, e = (float(v) for v in str(mapping["GeoTransform"]).split())
            transform = (a, b, c, d, e, f)
        except ValueError:
            pass
    for attrs in (view.attrs, *view.group_attrs[:1]):
        transform = transform or _transform_of(attrs, (height, width))
    transform = transform or _transform_of(proj, (height, width))

    if crs and transform:
        return crs, transform, flip_y, None
    if transform and not crs:
        found = "a pixel grid (coordinates or a transform) but no CRS"
    elif crs and not transform:
        name = crs if len(crs) <= 40 else _crs_name(crs)
        found = f"a CRS ({name}) but no pixel grid (no regular 1-D coordinates of its spatial dimensions, no transform)"
    else:
        found = "no georeferencing"
    return None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), False, found


def _crs_name(wkt: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(wkt).name


def _geo_proj(attrs: dict) -> dict | None:
    """GeoZarr's ``geo: {proj: {...}}`` (or ``geo:proj``) of an attribute set."""
    geo = attrs.get("geo")
    found = geo.get("proj") if isinstance(geo, dict) else None
    found = found or attrs.get("geo:proj")
    return found if isinstance(found, dict) else None


def _crs_of(attrs: dict | None) -> str | None:
    """The CRS an attribute set states, normalised (``EPSG:n`` when it is a code), or None."""
    if not attrs:
        return None
    for key in ("proj:code", "proj:epsg", "crs_wkt", "spatial_ref", "proj:wkt2", "proj:projjson"):
        value = attrs.get(key)
        if value is None or value == "":
            continue
        if key == "proj:epsg":
            value = f"EPSG:{int(value)}" if _number(value) is not None else None
        elif key == "proj:projjson" and isinstance(value, dict):
            value = json.dumps(value)
        found = _valid_crs(value) if isinstance(value, str) else None
        if found:
            return found
    geo = _geo_proj(attrs)
    if geo:
        for key in ("code", "wkt2", "projjson"):
            value = geo.get(key)
            value = json.dumps(value) if isinstance(value, dict) else value
            found = _valid_crs(value) if isinstance(value, str) and value else None
            if found:
                return found
    if attrs.get("grid_mapping_name"):
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            return CRS.from_cf(attrs).to_wkt()
        except (CRSError, ValueError, KeyError):
            return None
    return None


@functools.lru_cache(maxsize=64)
def _valid_crs(text: str) -> str | None:
    """``text`` when pyproj reads a CRS in it (``EPSG:n`` for a bare code), else None."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_user_input(text)
    except CRSError:
        return None
    if text.upper().startswith("EPSG:"):
        return text.upper()
    return crs.to_wkt()


def _transform_of(attrs: dict | None, shape: tuple[int, int]) -> tuple[float, ...] | None:
    """A 6-number affine of an attribute set (``proj:transform``, ``spatial:transform``, GeoZarr's
    ``geo.proj.transform``), when the shape it states (if any) is the array's."""
    if not attrs:
        return None
    geo = _geo_proj(attrs) or {}
    sources = (("proj:transform", "proj:shape", attrs), ("spatial:transform", "spatial:shape", attrs),
               ("transform", None, geo))
    for key, shape_key, source in sources:
        values = source.get(key)
        if not isinstance(values, list | tuple) or len(values) < 6:
            continue
        stated = source.get(shape_key) if shape_key else None
        if isinstance(stated, list | tuple) and tuple(int(v) for v in stated[-2:]) != shape:
            continue
        try:
            return tuple(float(v) for v in values[:6])
        except (TypeError, ValueError):
            continue
    return None


def _regular(values: np.ndarray) -> tuple[float, float] | None:
    """(first centre, step) of regularly spaced 1-D map coordinates, or None: not numbers, or
    pixel indices (the integers 0, 1, ... n-1, which name positions, not places: SSL4EO-S12's
    ``x``/``y``), which leave the grid to the other sources."""
    if values.dtype.kind not in "iuf" or len(values) < 2:
        return None
    if values.dtype.kind in "iu" and values[0] == 0 and np.array_equal(values, np.arange(len(values))):
        return None
    v = values.astype("float64")
    step = (v[-1] - v[0]) / (len(v) - 1)
    if step == 0 or not np.isfinite(step):
        return None
    if np.max(np.abs(np.diff(v) - step)) > _REGULAR * abs(step):
        return None
    return float(v[0]), float(step)


def _tidy(value: float) -> float:
    """``value`` without float noise below 12 significant digits (0.09999999999999964 -> 0.1)."""
    return float(f"{value:.12g}") if value else 0.0


def _is_lonlat(dim: str, attrs: dict, which: str) -> bool:
    names, units, standard = ((_LON, "degrees_east", "longitude") if which == "lon"
                              else (_LAT, "degrees_north", "latitude"))
    unit = str(attrs.get("units", "")).lower().replace(" ", "_")
    return dim.lower() in names or unit in (units, units.replace("s_", "_")) or attrs.get("standard_name") == standard


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0) for x, y in zip(a, b, strict=True))


def _same_extent(a: Layout, b: Layout) -> bool:
    """Whether two levels cover the same area (to a pixel of the coarser)."""
    def bounds(layout: Layout) -> tuple[float, float, float, float]:
        t = layout.transform
        return t[2], t[5], t[2] + t[0] * layout.shape[1], t[5] + t[4] * layout.shape[0]

    tolerance = max(a.resolution + b.resolution)
    return all(abs(x - y) <= tolerance for x, y in zip(bounds(a), bounds(b), strict=True))


def _listed(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return list(np.asarray(value).ravel())
    return [value]


def _fill_values(values: list, dtype: np.dtype) -> tuple[float, ...]:
    found: list[float] = []
    for value in values:
        number = _number(value)
        if number is not None and not any(_same_number(number, f) for f in found):
            found.append(number)
    return tuple(found)


def _same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _number(value: Any) -> float | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Reading.


class _Chunks:
    """Decoded chunks of one 2-D (storage order) array: a window reads only the chunks it
    overlaps, each once while windows move down the array; chunks wholly above the latest
    window are dropped (reads go down an item in chip rows), so memory holds the chunk rows of
    the current window."""

    def __init__(self, fetch: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int],
                 chunks: tuple[int, int] | None, row_axis: int = 0, descending: bool = False) -> None:
        """``row_axis``: the storage axis along which the item's rows go (1 for a variable stored
        (x, y)); ``descending``: rows go towards lower indices along it (stored south-up)."""
        self.fetch, self.shape, self.chunks = fetch, shape, chunks
        self.row_axis, self.descending = row_axis, descending
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self.chunks is None:
            return self.fetch(r0, r1, c0, c1)
        ch, cw = self.chunks
        rows, cols = range(r0 // ch, -(-r1 // ch)), range(c0 // cw, -(-c1 // cw))
        # Drop what the reads have left behind: chunks wholly before the window along the item's rows.
        span = (rows, cols)[self.row_axis]
        for key in [k for k in self.cache if (k[self.row_axis] >= span.stop if self.descending
                                              else k[self.row_axis] < span.start)]:
            del self.cache[key]
        parts = []
        for i in rows:
            line = []
            for j in cols:
                block = self.cache.get((i, j))
                if block is None:
                    block = self.fetch(i * ch, min((i + 1) * ch, self.shape[0]),
                                       j * cw, min((j + 1) * cw, self.shape[1]))
                    self.cache[(i, j)] = block
                line.append(block)
            parts.append(line)
        # Reads that do not go down (another caller's order) still hold at most two chunk rows more.
        other = 1 - self.row_axis
        limit = len(rows) * len(cols) + 2 * -(-self.shape[other] // self.chunks[other])
        for key in list(self.cache)[: max(0, len(self.cache) - limit)]:
            if not (key[0] in rows and key[1] in cols):
                del self.cache[key]
        whole = np.block(parts) if len(parts) > 1 or len(parts[0]) > 1 else parts[0][0]
        top, left = r0 - rows.start * ch, c0 - cols.start * cw
        return whole[top:top + r1 - r0, left:left + c1 - c0]

    @property
    def nbytes(self) -> int:
        return sum(block.nbytes for block in self.cache.values())


class _Handle:
    """One band of one item, open for reading: raw windows in north-up order, and measurements."""

    def __init__(self, band: BandSource, layout: Layout, grid: Grid) -> None:
        self.band, self.layout, self.grid = band, layout, grid
        self.closers: list[Callable[[], None]] = []
        if layout.fmt == "netcdf":
            context = _netcdf(band.href, layout.group)
            ds = context.__enter__()
            self.closers.append(lambda: context.__exit__(None, None, None))
            view: _View = _NetCDFView(band.href, ds, layout.group, layout.name)
        else:
            view = _ZarrView(layout.store, zarr_root(layout.store), layout.path, shared=bool(layout.index))
        self.view = view
        y_axis, x_axis = layout.axes
        stored = (view.shape[y_axis], view.shape[x_axis])
        self.transposed = y_axis > x_axis
        shape2 = (stored[1], stored[0]) if self.transposed else stored
        chunks = layout.chunks
        chunks2 = None if chunks is None else ((chunks[1], chunks[0]) if self.transposed else chunks)
        self.chunks = _Chunks(self._fetch, shape2, chunks2, row_axis=1 if self.transposed else 0,
                              descending=layout.flip_y)

    def _fetch(self, a0: int, a1: int, b0: int, b1: int) -> np.ndarray:
        """Storage axes (first spatial, second spatial) windows of the 2-D variable."""
        y_axis, x_axis = self.layout.axes
        key: list[Any] = list(self.layout.index) or [0] * self.layout.ndim
        first, second = sorted((y_axis, x_axis))
        key[first], key[second] = slice(a0, a1), slice(b0, b1)
        with store_errors(self.band.href):
            return self.view.fetch(tuple(key))

    def raw(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Stored values of north-up rows r0:r1, columns c0:c1."""
        height = self.layout.shape[0]
        if self.layout.flip_y:
            r0, r1 = height - r1, height - r0
        if self.transposed:
            block = self.chunks.read(c0, c1, r0, r1).T
        else:
            block = self.chunks.read(r0, r1, c0, c1)
        return block[::-1] if self.layout.flip_y else block

    def scale_offset(self) -> tuple[float, float]:
        """The STAC band's scale and offset when the item states them, else the variable's CF ones."""
        band, layout = self.band, self.layout
        if band.described or (layout.cf_scale is None and layout.cf_offset is None):
            return band.scale, band.offset
        return (layout.cf_scale if layout.cf_scale is not None else 1.0,
                layout.cf_offset if layout.cf_offset is not None else 0.0)

    def missing(self, raw: np.ndarray, values: np.ndarray) -> np.ndarray | None:
        """Pixels without data: CF fill values (in the stored type), STAC nodata, non-finite floats."""
        missing = None
        for fill in self.layout.fill:
            if math.isnan(fill):
                hit = np.isnan(raw) if raw.dtype.kind == "f" else None
            elif raw.dtype.kind in "iu":
                info = np.iinfo(raw.dtype)
                hit = raw == raw.dtype.type(fill) if info.min <= fill <= info.max and fill == int(fill) else None
            else:
                hit = raw == raw.dtype.type(fill)
            missing = _either(missing, hit)
        nodata = self.band.nodata
        if nodata is not None and not math.isnan(nodata):
            missing = _either(missing, values == np.float32(nodata))
        if raw.dtype.kind == "f":
            missing = _either(missing, ~np.isfinite(values))
        return missing

    def read(self, rows: slice, cols: slice, grid: Grid, resampling: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's measurements (float32, NaN without data) and its missing pixels."""
        if _same_grid(self.grid, grid):
            raw = self.raw(rows.start, rows.stop, cols.start, cols.stop)
            values = raw.astype("float32")
            missing = self.missing(raw, values)
            if missing is not None:
                values[missing] = np.nan
            scale, offset = self.scale_offset()
            if scale != 1 or offset != 0:
                values[...] = values.astype("float64") * scale + offset
            return values, missing
        values = self._resampled(rows, cols, grid, resampling)
        nodata = self.band.nodata
        if nodata is not None and not math.isnan(nodata):  # as the stack does after its warp
            values[values == np.float32(nodata)] = np.nan
        scale, offset = self.scale_offset()
        values = (values.astype("float64") * scale + offset).astype("float32")
        missing = ~np.isfinite(values)
        return values, missing if missing.any() else None

    def _resampled(self, rows: slice, cols: slice, grid: Grid, resampling: str) -> np.ndarray:
        """The stored values (float32, NaN without data) warped onto ``grid``'s window, with
        GDAL's exact transformer, from the source window that covers it plus a margin."""
        import rasterio
        import rasterio.warp
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        height, width = rows.stop - rows.start, cols.stop - cols.start
        out = np.full((height, width), np.nan, dtype="float32")
        dst_transform = grid.transform * Affine.translation(cols.start, rows.start)
        left, top = dst_transform * (0, 0)
        right, bottom = dst_transform * (width, height)
        bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
        source = self.grid
        if source.crs != grid.crs:
            bounds = rasterio.warp.transform_bounds(grid.crs, source.crs, *bounds, densify_pts=21)
        inverse = ~source.transform
        xs, ys = zip(*(inverse * corner for corner in ((bounds[0], bounds[1]), (bounds[0], bounds[3]),
                                                       (bounds[2], bounds[1]), (bounds[2], bounds[3]))), strict=True)
        c0 = max(0, math.floor(min(xs)) - _MARGIN)
        c1 = min(source.width, math.ceil(max(xs)) + _MARGIN)
        r0 = max(0, math.floor(min(ys)) - _MARGIN)
        r1 = min(source.height, math.ceil(max(ys)) + _MARGIN)
        if c0 >= c1 or r0 >= r1:
            return out
        raw = self.raw(r0, r1, c0, c1)
        values = raw.astype("float32")
        missing = self.missing(raw, values)
        if missing is not None:
            values[missing] = np.nan
        xscale, yscale = self._scales(grid)
        # rasterio.warp.reproject ignores a tolerance (its transformer is always GDAL's approximate
        # one, 0.125 px): the window goes through an in-memory file and a WarpedVRT that takes one.
        with rasterio.MemoryFile() as memory:
            with memory.open(driver="GTiff", width=c1 - c0, height=r1 - r0, count=1, dtype="float32",
                             crs=source.crs, transform=source.transform * Affine.translation(c0, r0),
                             nodata=np.nan) as window:
                window.write(values, 1)
            with memory.open() as window, WarpedVRT(
                window, crs=grid.crs, transform=dst_transform, width=width, height=height,
                resampling=Resampling[resampling], nodata=np.nan, src_nodata=np.nan, dtype="float32",
                tolerance=EXACT, XSCALE=repr(xscale), YSCALE=repr(yscale),
            ) as vrt:
                out[...] = vrt.read(1)
        return out

    def _scales(self, grid: Grid) -> tuple[float, float]:
        """GDAL's resampling factors (destination pixels per source pixel) over the whole grid, fixed
        so that a pixel does not depend on the window it is read in (GDAL would compute them per
        warped chunk, from the chunk's source window)."""
        if getattr(self, "_scales_for", None) != grid:
            import rasterio.warp

            source = self.grid
            if source.crs == grid.crs:
                xscale = abs(source.transform.a) / abs(grid.transform.a)
                yscale = abs(source.transform.e) / abs(grid.transform.e)
            else:
                left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, source.crs, *grid.bounds,
                                                                         densify_pts=21)
                xscale = grid.width * abs(source.transform.a) / (right - left)
                yscale = grid.height * abs(source.transform.e) / (top - bottom)
            self._scales_for, self._scale_values = grid, (xscale, yscale)
        return self._scale_values

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers = []


def _same_grid(a: Grid, b: Grid) -> bool:
    return (a.width, a.height) == (b.width, b.height) and tuple(a.transform) == tuple(b.transform) and a.crs == b.crs


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return b if a is None else a if b is None else a | b


class ArrayReader:
    """The ``Reader`` of bands in Zarr stores and NetCDF files (one item, or a time series on one grid).

    ``grids``: each band's own grid (``grid.band_grid``), per item, in the order of ``series``.
    A band on the run's grid is read as stored; any other is resampled onto it with
    ``resampling`` (see the module docstring). What ``read`` returns equals what
    ``readers.direct.DirectReader`` returns for the same pixels in GeoTIFFs.
    """

    tile_row_bytes = 0  # no GDAL block cache: chunks are cached here (``_Chunks``)

    def __init__(self, series: list[tuple[pystac.Item, list[BandSource]]], grid: Grid,
                 grids: list[list[Grid]], resampling: str = "nearest") -> None:
        self.grid, self.resampling = grid, resampling
        self.time_steps = len(series)
        self.handles: list[list[_Handle]] = []
        self.shape = (len(series[0][1]), *((self.time_steps,) if self.time_steps > 1 else ()), grid.height, grid.width)
        try:
            for (_, bands), band_grids in zip(series, grids, strict=True):
                handles: list[_Handle] = []
                self.handles.append(handles)
                for band, band_grid in zip(bands, band_grids, strict=True):
                    layout = describe(band.href, band.format or "zarr", band.variable, band.proj)
                    with store_errors(band.href):
                        handles.append(_Handle(band, layout, band_grid))
        except BaseException:
            self.close()
            raise

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = rows.stop - rows.start, cols.stop - cols.start
        frames, invalid = [], None
        for handles in self.handles:
            frame = np.empty((len(handles), height, width), dtype="float32")
            for i, handle in enumerate(handles):
                frame[i], missing = handle.read(rows, cols, self.grid, self.resampling)
                invalid = _either(invalid, missing)
            frames.append(frame)
        block = frames[0] if self.time_steps == 1 else np.stack(frames, axis=1)
        return block, None if invalid is None else ~invalid

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded chunks held now (for tests and diagnostics)."""
        return sum(h.chunks.nbytes for handles in self.handles for h in handles)

    def close(self) -> None:
        for handles in self.handles:
            for handle in handles:
                handle.close()
        self.handles = []


__all__ = ["ArrayReader", "Layout", "describe", "level_at", "list_variables", "split_store", "storage_options",
           "variable_grid"]
