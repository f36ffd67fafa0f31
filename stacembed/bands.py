"""Match a model's band names to item assets, and read per-band raster metadata.

Handles both STAC dialects: 1.0 (``eo:bands`` / ``raster:bands``) and 1.1 (``bands`` with
``eo:common_name``, ``raster:scale``, ``raster:offset``, ``nodata``). A band's centre wavelength
(``eo:center_wavelength``, 1.0's ``center_wavelength``) and whether it holds classes
(``classification:classes``/``bitfields``, on the band or its asset) are kept too: wavelength-aware
models are given the first, and another modality's bands are resampled by the second.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pystac

from .errors import BandError

# Assets that carry derived or preview pixels, never the measurements a model wants.
_SKIP_ROLES = {"thumbnail", "overview", "visual", "metadata"}


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


class ValueRule(Protocol):
    """A catalog preset's scale/offset for assets whose items state none (``resolve.presets``)."""

    scale: float
    offset: float

    def applies(self, properties: Mapping[str, Any], asset_key: str) -> bool: ...


def match_bands(item: pystac.Item, names: list[str], aliases: Mapping[str, str] = {},
                value_rules: Sequence[ValueRule] = ()) -> list[BandSource]:
    """Find each model band in ``item``; error naming every missing band and what is there.

    ``aliases`` maps a model band name to an asset key (from a catalog preset or ``--band``);
    it is tried first, so a collection with unusual asset keys still matches. A band whose
    item states no scale or offset takes them from the first of ``value_rules`` that applies;
    what an item states always wins.
    """
    candidates = list(_band_candidates(item))
    lowered = {k.lower(): v for k, v in aliases.items()}
    found, missing = [], []
    for name in names:
        alias = lowered.get(name.lower())
        source = _best_match(alias, candidates, rename=name) if alias else None
        source = source or _best_match(name, candidates)
        if source is None:
            missing.append(name)
        else:
            found.append(_with_rule(source, item, value_rules))
    if missing:
        available = sorted({label for _, labels in candidates for label in labels})
        raise BandError(
            f"item {item.id!r} has no band {', '.join(map(repr, missing))} "
            f"(it has: {', '.join(available) or 'no raster assets'})"
        )
    return found


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


def _band_candidates(item: pystac.Item) -> Iterator[tuple[BandSource, list[str]]]:
    for key, asset in item.assets.items():
        if set(asset.roles or ()) & _SKIP_ROLES:
            continue
        fields = asset.extra_fields
        bands = fields.get("bands") or fields.get("raster:bands") or fields.get("eo:bands") or [{}]
        eo_bands = fields.get("eo:bands") or []
        raster_bands = fields.get("raster:bands") or []
        for i, band in enumerate(bands):
            merged = {**_at(eo_bands, i), **_at(raster_bands, i), **band}
            labels = [key.lower() if len(bands) == 1 else "", *_names(merged)]
            yield _source(key, asset, fields, merged, i), labels


def _names(band: dict[str, Any]) -> list[str]:
    name = str(band.get("name", "")).lower()
    common = str(band.get("eo:common_name") or band.get("common_name") or "").lower()
    return [name, common]


def _source(key: str, asset: pystac.Asset, fields: dict, band: dict, i: int) -> BandSource:
    def pick(*names: str) -> Any:
        for name in names:
            for where in (band, fields):
                if where.get(name) is not None:
                    return where[name]
        return None

    nodata = pick("nodata", "raster:nodata")
    scale, offset = pick("raster:scale", "scale"), pick("raster:offset", "offset")
    wavelength = pick("eo:center_wavelength", "center_wavelength")
    return BandSource(
        name=str(band.get("name") or key),
        asset_key=key,
        href=_absolute_href(asset),
        index=i + 1,
        scale=float(scale if scale is not None else 1.0),
        offset=float(offset if offset is not None else 0.0),
        nodata=_nodata_value(nodata),
        described=scale is not None or offset is not None,
        wavelength=float(wavelength) if _is_number(wavelength) else None,
        categorical=pick("classification:classes", "classification:bitfields") is not None,
    )


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
