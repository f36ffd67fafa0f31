"""Match a model's band names to item assets, and read per-band raster metadata.

Handles both STAC dialects: 1.0 (``eo:bands`` / ``raster:bands``) and 1.1 (``bands`` with
``eo:common_name``, ``raster:scale``, ``raster:offset``, ``nodata``). A band's centre wavelength
(``eo:center_wavelength``, 1.0's ``center_wavelength``) and whether it holds classes
(``classification:classes``/``bitfields``, on the band or its asset) are kept too: wavelength-aware
models are given the first, and another modality's bands are resampled by the second.

Zarr stores and NetCDF files (``array_format``: by media type, else by the href's suffix) hold
named variables rather than numbered bands. A band of such an asset names its variable
(``BandSource.variable``): the asset's band ``name`` when the asset is a group of several arrays
(EOPF's ``SR_10m``), none when the asset's href is the array itself (EOPF's ``B02_10m``), the
``VARIABLE`` of ``--band BAND=ASSET:VARIABLE``, or the store's own variable of the band's name
(``cube:variables`` of the datacube extension, else the store's listing, ``readers.zarr``) when the
STAC metadata names none. Where several assets match equally, an array store's band at the
finest ``gsd`` comes first (EOPF lists ``b02`` in its 10, 20 and 60 m groups).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pystac

from .errors import BandError

# Assets that carry derived or preview pixels, never the measurements a model wants.
_SKIP_ROLES = {"thumbnail", "overview", "visual", "metadata"}

# Media types of array stores (``readers.zarr``): Zarr (EOPF writes ``application/vnd+zarr``; the
# registered form is ``application/vnd.zarr``), NetCDF (classic and NetCDF-4).
ZARR_TYPES = ("application/vnd+zarr", "application/vnd.zarr", "application/x-zarr", "application/zarr")
NETCDF_TYPES = ("application/netcdf", "application/x-netcdf", "application/x-netcdf4", "application/netcdf4")
# The STAC projection fields kept for a store that carries no georeferencing of its own.
# A band of an array-store asset may name its variable (``readers.zarr``: a path, ``name[dim=index,...]``).
VARIABLE_FIELD = "stacembed:variable"
_PROJ_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson", "proj:transform", "proj:shape", "proj:bbox")


@dataclass(frozen=True)
class BandSource:
    """Where one model input band lives, and how to turn its stored values into measurements."""

    name: str
    asset_key: str
    href: str
    index: int = 1  # 1-based band index within the asset's file
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    described: bool = False  # the item states scale or offset (else 1 and 0 are defaults)
    wavelength: float | None = None  # centre wavelength in micrometres (``eo:center_wavelength``), if stated
    categorical: bool = False  # class values (``classification:classes``/``bitfields``): never interpolated
    format: str | None = None  # "zarr" or "netcdf": an array store read by ``readers.zarr``; None: a raster
    variable: str | None = None  # the store's array: a name or path in the href's group, "/path" from its root
    proj: str | None = None  # the asset's (else item's) ``proj:*`` fields as JSON: a store's fallback georeferencing


def array_format(media_type: str | None, href: str) -> str | None:
    """``"zarr"`` or ``"netcdf"`` when an asset is an array store, by its media type, else by the
    href's suffix (``.zarr``, a path inside one, ``.nc``/``.nc4``); a zipped Zarr store (``.zarr.zip``,
    ``application/zip``) by its suffix; None for anything else."""
    kind = (media_type or "").split(";")[0].strip().lower()
    if kind in ("", "application/zip") and ".zarr.zip" in href.split("?", 1)[0].lower():
        return "zarr"
    if kind in ZARR_TYPES:
        return "zarr"
    if kind in NETCDF_TYPES:
        return "netcdf"
    if kind and kind not in ("application/octet-stream", "binary/octet-stream"):
        return None
    path = href.split("?", 1)[0].split("#", 1)[0].rstrip("/").lower()
    if path.endswith(".zarr") or ".zarr/" in path:
        return "zarr"
    if path.endswith((".nc", ".nc4", ".netcdf", ".cdf")):
        return "netcdf"
    return None


class ValueRule(Protocol):
    """A catalog preset's scale/offset for assets whose items state none (``resolve.presets``)."""

    scale: float
    offset: float

    def applies(self, properties: Mapping[str, Any], asset_key: str) -> bool: ...


def match_bands(item: pystac.Item, names: list[str], aliases: Mapping[str, str] = {},
                value_rules: Sequence[ValueRule] = ()) -> list[BandSource]:
    """Find each model band in ``item``; error naming every missing band and what is there.

    ``aliases`` maps a model band name to an asset key (from a catalog preset or ``--band``),
    or to ``ASSET:VARIABLE``, a variable of a Zarr or NetCDF asset; it is tried first, so a
    collection with unusual asset keys still matches. A band whose item states no scale or
    offset takes them from the first of ``value_rules`` that applies; what an item states
    always wins. A band no STAC metadata names is looked for among the variables of the item's
    array stores (``cube:variables``, else the store's own listing).
    """
    candidates = list(_band_candidates(item))
    lowered = {k.lower(): v for k, v in aliases.items()}
    found: list[BandSource | None] = []
    for name in names:
        alias = lowered.get(name.lower())
        source = _alias_match(item, alias, candidates, name) if alias else None
        found.append(source or _best_match(name, candidates))
    if None in found:
        stored = _stored_candidates(item, [n for n, s in zip(names, found, strict=True) if s is None])
        candidates += stored
        found = [s or _best_match(n, stored) for n, s in zip(names, found, strict=True)]
    missing = [name for name, source in zip(names, found, strict=True) if source is None]
    if missing:
        available = sorted({label for _, labels in candidates for label in labels if label})
        raise BandError(
            f"item {item.id!r} has no band {', '.join(map(repr, missing))} "
            f"(it has: {', '.join(available) or 'no raster assets'})"
        )
    return [_with_rule(source, item, value_rules) for source in found if source is not None]


def _alias_match(item: pystac.Item, alias: str, candidates: list[tuple[BandSource, list[str]]],
                 name: str) -> BandSource | None:
    """The band ``--band``/a preset maps ``name`` to: an asset key, or ``ASSET:VARIABLE``."""
    source = _best_match(alias, candidates, rename=name)
    key, sep, variable = alias.partition(":")
    if source is not None or not sep or not variable.strip():
        return source
    key, variable = key.strip(), variable.strip()
    asset = next((a for k, a in item.assets.items() if k.lower() == key.lower()), None)
    if asset is None:
        return None
    fmt = array_format(asset.media_type, asset.href)
    if fmt is None:
        raise BandError(f"--band {name}={alias}: asset {key!r} of item {item.id!r} is not a Zarr store or NetCDF "
                        f"file (type {asset.media_type or 'unknown'}); ':{variable}' names a variable of one")
    key = next(k for k, a in item.assets.items() if a is asset)
    fields = asset.extra_fields
    bands = fields.get("bands") or fields.get("raster:bands") or fields.get("eo:bands") or [{}]
    leaf = variable.rstrip("/").rsplit("/", 1)[-1].lower()
    # The asset's band of that name, if it describes one (its scale, nodata, wavelength), else the asset's own fields.
    index = next((i for i, band in enumerate(bands) if str(band.get("name", "")).lower() == leaf), None)
    merged = {} if index is None else {**_at(fields.get("eo:bands") or [], index),
                                       **_at(fields.get("raster:bands") or [], index), **bands[index]}
    source = _source(key, asset, fields, merged, 0, item)
    return replace(source, name=name, variable=variable)


def _stored_candidates(item: pystac.Item, names: list[str]) -> list[tuple[BandSource, list[str]]]:
    """Bands of ``names`` found as variables of the item's array stores: the asset's ``cube:variables``
    (the datacube extension), else the store's own listing (``readers.zarr.list_variables``)."""
    wanted = {n.lower() for n in names}
    stores = [(k, a, f) for k, a in item.assets.items() if (f := array_format(a.media_type, a.href))
              and not _skipped(a, f)]
    found: list[tuple[BandSource, list[str]]] = []
    for key, asset, fmt in stores:
        cube = asset.extra_fields.get("cube:variables") or (
            item.properties.get("cube:variables") if len(stores) == 1 else None) or {}
        variables = [str(v) for v in cube] if isinstance(cube, dict) else []
        if not wanted & {v.lower() for v in variables}:
            from .readers.zarr import list_variables

            variables = list_variables(_absolute_href(asset), fmt)
        paths: dict[str, list[str]] = {}
        for variable in variables:
            paths.setdefault(variable.rsplit("/", 1)[-1].lower(), []).append(variable)
        for leaf in sorted(wanted & set(paths)):
            if len(paths[leaf]) > 1:
                raise BandError(
                    f"item {item.id!r}: asset {key!r} has a variable {leaf!r} in several groups "
                    f"({', '.join(paths[leaf])}); name one with --band BAND={key}:PATH, e.g. {key}:{paths[leaf][0]}")
            source = _source(key, asset, asset.extra_fields, {}, 0, item)
            found.append((replace(source, name=leaf, variable=paths[leaf][0]), ["", leaf]))
    return found


def _skipped(asset: pystac.Asset, fmt: str | None) -> bool:
    """Whether an asset holds no measurements: a preview or metadata; an array store with the
    ``data`` role is read even when it is also ``metadata`` (EOPF's whole-product asset)."""
    roles = set(asset.roles or ())
    return bool(roles & _SKIP_ROLES) and not (fmt and "data" in roles)


def _with_rule(source: BandSource, item: pystac.Item, rules: Sequence[ValueRule]) -> BandSource:
    if source.described:
        return source
    rule = next((r for r in rules if r.applies(item.properties, source.asset_key)), None)
    return replace(source, scale=rule.scale, offset=rule.offset) if rule else source


def _best_match(name: str, candidates: list[tuple[BandSource, list[str]]],
                rename: str | None = None) -> BandSource | None:
    wanted = name.lower()
    # Ranked: asset key, then band name, then common name -- an exact asset key always wins.
    for rank in range(3):
        for source, labels in candidates:
            if len(labels) > rank and labels[rank] == wanted:
                return replace(source, name=rename or name)
    return None


def _band_candidates(item: pystac.Item) -> list[tuple[BandSource, list[str]]]:
    """Every band the item's STAC metadata describes, with its labels (asset key, name, common name);
    an array store's bands ordered by ``gsd``, finest first, after the rasters (in item order)."""
    found = []
    for key, asset in item.assets.items():
        fmt = array_format(asset.media_type, asset.href)
        if _skipped(asset, fmt):
            continue
        fields = asset.extra_fields
        bands = fields.get("bands") or fields.get("raster:bands") or fields.get("eo:bands") or [{}]
        eo_bands = fields.get("eo:bands") or []
        raster_bands = fields.get("raster:bands") or []
        for i, band in enumerate(bands):
            merged = {**_at(eo_bands, i), **_at(raster_bands, i), **band}
            labels = [key.lower() if len(bands) == 1 else "", *_names(merged)]
            found.append((_source(key, asset, fields, merged, i, item), labels))
    return sorted(found, key=lambda pair: _store_order(pair[0], item))


def _store_order(source: BandSource, item: pystac.Item) -> tuple[int, float, int]:
    """Rasters first in item order; array-store bands by ``gsd`` (finest first), an array before a group."""
    if source.format is None:
        return (0, 0.0, 0)
    gsd = item.assets[source.asset_key].extra_fields.get("gsd")
    return (1, float(gsd) if _is_number(gsd) else float("inf"), int(source.variable is not None))


def _names(band: dict[str, Any]) -> list[str]:
    name = str(band.get("name", "")).lower()
    common = str(band.get("eo:common_name") or band.get("common_name") or "").lower()
    return [name, common]


def _source(key: str, asset: pystac.Asset, fields: dict, band: dict, i: int,
            item: pystac.Item | None = None) -> BandSource:
    def pick(*names: str) -> Any:
        for name in names:
            for where in (band, fields):
                if where.get(name) is not None:
                    return where[name]
        return None

    nodata = pick("nodata", "raster:nodata")
    scale, offset = pick("raster:scale", "scale"), pick("raster:offset", "offset")
    wavelength = pick("eo:center_wavelength", "center_wavelength")
    href = _absolute_href(asset)
    fmt = array_format(asset.media_type, href)
    bands = fields.get("bands") or fields.get("raster:bands") or fields.get("eo:bands") or [{}]
    return BandSource(
        name=str(band.get("name") or key),
        asset_key=key,
        href=href,
        index=i + 1 if fmt is None else 1,
        scale=float(scale if scale is not None else 1.0),
        offset=float(offset if offset is not None else 0.0),
        nodata=_nodata_value(nodata),
        described=scale is not None or offset is not None,
        wavelength=float(wavelength) if _is_number(wavelength) else None,
        categorical=pick("classification:classes", "classification:bitfields") is not None,
        format=fmt,
        variable=_variable(fmt, band, len(bands)),
        proj=_proj_fields(fields, item) if fmt else None,
    )


def _variable(fmt: str | None, band: dict, count: int) -> str | None:
    """The store variable of an array-store asset's band: its ``stacembed:variable`` (a path, with an
    index selection ``name[dim=index,...]``: a sample cube's bands), else, in a group of several bands,
    the band's name (matched case-insensitively); None: the asset's href is the array itself."""
    if not fmt:
        return None
    if band.get(VARIABLE_FIELD):
        return str(band[VARIABLE_FIELD])
    return str(band["name"]) if count > 1 and band.get("name") else None


def _proj_fields(fields: dict, item: pystac.Item | None) -> str | None:
    """The asset's ``proj:*`` fields over the item's, as JSON (hashable), or None when there are none."""
    merged = {k: v for k in _PROJ_FIELDS for v in [(item.properties if item else {}).get(k)] if v is not None}
    merged.update({k: fields[k] for k in _PROJ_FIELDS if fields.get(k) is not None})
    return json.dumps(merged, sort_keys=True) if merged else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nodata_value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # STAC spells special values as strings
        return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.get(value.lower())
    return float(value)


def _at(values: list[dict], i: int) -> dict:
    return values[i] if i < len(values) and isinstance(values[i], dict) else {}


def _absolute_href(asset: pystac.Asset) -> str:
    """The asset's href; a local absolute path stays a path even when the item came over HTTP.

    (pystac would join ``/data/B04.tif`` onto an API item's ``http://host/...`` self link.)
    """
    if "://" in asset.href or asset.href.startswith("/"):
        return asset.href
    return asset.get_absolute_href() or asset.href
