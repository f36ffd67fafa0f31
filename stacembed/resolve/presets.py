"""Presets for well-known public STAC APIs: ``--catalog earth-search`` means that API.

A preset names the API root, collection aliases, how the collection's asset keys map to the
band names model cards use, which model inputs (modalities: ``S2L2A``, ``S1GRD``, ``DEM``) a
collection serves, and what reading its assets needs (href signing, GDAL options, credentials).
They live in ``catalogs/presets/presets.yaml`` so adding one is a YAML edit.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


@dataclass(frozen=True)
class ValueRule:
    """How a collection's stored values become measurements, where its items do not say.

    Some APIs publish items without ``raster:scale``/``raster:offset`` although their pixels
    are scaled integers (Planetary Computer Sentinel-2 and HLS, USGS LandsatLook). Without the
    rule, digital numbers would reach a model that expects reflectance: wrong embeddings, and
    nothing to show it. A rule covers the listed ``assets``; with ``when`` (an item property
    and the lowest version it applies from) only items at or above that version.
    """

    assets: tuple[str, ...]
    scale: float = 1.0
    offset: float = 0.0
    when: tuple[str, str] | None = None  # (item property, lowest version)

    def applies(self, properties: Mapping[str, Any], asset_key: str) -> bool:
        if asset_key not in self.assets:
            return False
        if self.when is None:
            return True
        name, lowest = self.when
        value = properties.get(name)
        return value is not None and _version(value) >= _version(lowest)

    @classmethod
    def from_mapping(cls, where: str, data: Any) -> ValueRule:
        known = {"assets", "scale", "offset", "when"}
        if not isinstance(data, Mapping) or not data.get("assets") or set(data) - known:
            raise ConfigError(f"{where}: a values rule needs 'assets' and takes only {', '.join(sorted(known))}")
        when = data.get("when")
        if when is not None and (not isinstance(when, Mapping) or set(when) != {"property", "at_least"}):
            raise ConfigError(f"{where}: 'when' takes exactly 'property' and 'at_least'")
        return cls(tuple(str(a) for a in data["assets"]), float(data.get("scale", 1.0)), float(data.get("offset", 0.0)),
                   (str(when["property"]), str(when["at_least"])) if when else None)


def _version(value: Any) -> tuple[float, ...]:
    """``"05.09"`` -> (5, 9): processing baselines and the like, compared number by number."""
    try:
        return tuple(float(part) for part in str(value).split("."))
    except ValueError:
        return ()


@dataclass(frozen=True)
class PresetCollection:
    id: str
    aliases: tuple[str, ...] = ()
    bands: Mapping[str, str] = field(default_factory=dict)
    values: tuple[ValueRule, ...] = ()
    modalities: tuple[str, ...] = ()  # model card input names it serves (S2L2A, S1GRD, DEM, ...)


@dataclass(frozen=True)
class Preset:
    """A public STAC API and what it takes to read its assets."""

    name: str
    title: str
    api: str
    signing: str | None = None
    gdal: Mapping[str, str] = field(default_factory=dict)
    auth: str | None = None
    collections: Mapping[str, PresetCollection] = field(default_factory=dict)

    def collection(self, name: str) -> PresetCollection:
        """The preset collection called ``name`` or one of its aliases; unknown ids pass through."""
        for coll in self.collections.values():
            if name == coll.id or name in coll.aliases:
                return coll
        return PresetCollection(name)

    def collection_for(self, modality: str) -> PresetCollection | None:
        """The first collection that serves model input ``modality`` (its ``modalities``; any case)."""
        wanted = modality.casefold()
        return next((c for c in self.collections.values() if wanted in {m.casefold() for m in c.modalities}), None)

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any]) -> Preset:
        if not isinstance(data, Mapping) or not data.get("api"):
            raise ConfigError(f"catalog preset {name!r} needs at least an 'api' URL")
        collections = {
            cid: PresetCollection(
                cid, tuple((spec or {}).get("aliases") or ()),
                {str(k): str(v) for k, v in ((spec or {}).get("bands") or {}).items()},
                tuple(ValueRule.from_mapping(f"preset {name!r} collection {cid!r}", rule)
                      for rule in ((spec or {}).get("values") or ())),
                tuple(str(m) for m in ((spec or {}).get("modalities") or ())),
            )
            for cid, spec in (data.get("collections") or {}).items()
        }
        return cls(
            name=name, title=str(data.get("title") or name), api=str(data["api"]).rstrip("/"),
            signing=data.get("signing"), gdal={str(k): str(v) for k, v in (data.get("gdal") or {}).items()},
            auth=data.get("auth"), collections=collections,
        )


def presets_file() -> Path:
    """``catalogs/presets/presets.yaml`` in a checkout, or installed under ``share/stacembed``."""
    here = Path(__file__).resolve().parents[2]
    for base in (here / "catalogs", Path(sys.prefix) / "share" / "stacembed" / "catalogs"):
        candidate = base / "presets" / "presets.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError("the catalog presets file is not installed (catalogs/presets/presets.yaml)")


@functools.cache
def load_presets(path: str | None = None) -> dict[str, Preset]:
    """All presets by name."""
    source = Path(path) if path else presets_file()
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read catalog presets {source}: {exc}") from None
    return {name: Preset.from_mapping(name, spec) for name, spec in data.items()}


def find_preset(name: str | None) -> Preset | None:
    """The preset called ``name``, or None when ``name`` is a path or URL (or not given)."""
    if not name or "/" in name or "\\" in name or name.endswith(".json") or Path(name).exists():
        return None
    presets = load_presets()
    if name in presets:
        return presets[name]
    raise ConfigError(
        f"--catalog {name!r} is neither a path, a URL nor a known preset "
        f"(presets: {', '.join(sorted(presets))})"
    )
