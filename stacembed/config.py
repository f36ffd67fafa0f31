"""RunConfig: the one typed description of a `stacembed run`.

It is built from CLI flags, from a YAML file, or from both (flags win), and it validates
everything it can *before* any item is read or any model is built, so that a typo costs a
second, not an hour of inference.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

FORMATS = ("geoparquet", "geotiff")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOADERS = ("stackstac", "odc")
RESAMPLING = ("nearest", "bilinear", "cubic", "average", "mode")
DEFAULT_MODEL = "stacembed-demo-landsat"

Bbox = tuple[float, float, float, float]
Interval = tuple[datetime | None, datetime | None]


@dataclass(frozen=True)
class RunConfig:
    """Everything `stacembed run` needs; see `stacembed run --help` for each field's meaning."""

    out: Path
    collection: str | None = None
    catalog: str | None = None
    items: str | None = None
    bbox: Bbox | None = None
    datetime: Interval | None = None
    ids: tuple[str, ...] = ()
    max_items: int | None = None
    model: str = DEFAULT_MODEL
    weights: str | None = None
    chip_size: int | None = None
    stride: int | None = None
    min_valid: float = 0.5
    formats: tuple[str, ...] = FORMATS
    batch_size: int = 16
    device: str = "auto"
    crs: str | None = None
    resolution: float | None = None
    resampling: str = "nearest"
    loader: str = "stackstac"
    output_collection: str | None = None
    dry_run: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.catalog and self.items:
            raise ConfigError("give either --catalog or --items, not both")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"--max-items must be >= 1, got {self.max_items}")
        for name in ("chip_size", "stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0.0 <= self.min_valid <= 1.0:
            raise ConfigError(f"--min-valid must be between 0 and 1, got {self.min_valid}")
        if not self.formats:
            raise ConfigError("at least one --format is needed")
        _check_choices("format", self.formats, FORMATS)
        _check_choices("device", (self.device,), DEVICES)
        _check_choices("loader", (self.loader,), LOADERS)
        _check_choices("resampling", (self.resampling,), RESAMPLING)
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"--resolution must be > 0, got {self.resolution}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build a config from loosely typed values (YAML, CLI), parsing strings as the CLI does."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown configuration key {raw_key!r}")
            if value is None:
                continue
            kwargs[key] = _coerce(key, value)
        if "out" not in kwargs:
            raise ConfigError("--out is required (the directory to write the STAC catalog to)")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] = ()) -> "RunConfig":
        """Read a YAML run file; `overrides` (typically CLI flags) replace its keys."""
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of options")
        merged = {k.replace("-", "_"): v for k, v in loaded.items()}
        merged.update({k.replace("-", "_"): v for k, v in dict(overrides).items()})
        return cls.from_mapping(merged)

    def runtime_parameters(self) -> dict[str, Any]:
        """The parameters that shape the embeddings; a rerun must match them to resume."""
        return {
            "chip_size": self.chip_size,
            "stride": self.stride,
            "min_valid": self.min_valid,
            "crs": self.crs,
            "resolution": self.resolution,
            "resampling": self.resampling if (self.crs or self.resolution) else None,
            "formats": sorted(self.formats),
        }


def _check_choices(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")


def _coerce(key: str, value: Any) -> Any:
    parsers = {
        "out": Path,
        "bbox": parse_bbox,
        "datetime": parse_datetime,
        "ids": _as_tuple,
        "formats": _as_tuple,
        "max_items": int,
        "chip_size": int,
        "stride": int,
        "batch_size": int,
        "min_valid": float,
        "resolution": float,
    }
    parse = parsers.get(key)
    if parse is None:
        return value
    try:
        return parse(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--{key.replace('_', '-')}: cannot use {value!r} ({exc})") from exc


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def parse_bbox(value: str | Bbox | list[float]) -> Bbox:
    """Parse ``W,S,E,N`` in WGS84 degrees into a validated 4-tuple."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--bbox must be four numbers W,S,E,N; got {value!r}") from None
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise ConfigError(f"--bbox {value!r} is outside WGS84 bounds or has south > north")
    if west >= east:
        raise ConfigError(
            f"--bbox {value!r} has west >= east; split an antimeridian-crossing area into two runs"
        )
    return (west, south, east, north)


_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


def parse_datetime(value: str | Interval) -> Interval:
    """Parse an RFC 3339 datetime or interval (``start/end``, ``..`` for open ends).

    Dates without a time cover the whole day (``2020-06-01`` means that day); ``2020`` and
    ``2020-06`` cover the whole year or month, as STAC API servers interpret them.
    """
    if isinstance(value, tuple):
        return value
    text = str(value).strip()
    if not text:
        raise ConfigError("--datetime is empty")
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start = _parse_instant(start_text, end=False)
        end = _parse_instant(end_text, end=True)
    else:
        start = _parse_instant(text, end=False)
        end = _parse_instant(text, end=True)
        if start is None:
            raise ConfigError(f"--datetime {value!r} is not an RFC 3339 datetime or interval")
    if start and end and start > end:
        raise ConfigError(f"--datetime {value!r} ends before it starts")
    return (start, end)


def _parse_instant(text: str, *, end: bool) -> datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    partial = _PARTIAL_DATE.match(text)
    if partial:
        year, month = int(partial[1]), int(partial[2] or 0)
        if not end:
            return datetime(year, month or 1, 1, tzinfo=timezone.utc)
        last_month = month or 12
        last_day = calendar.monthrange(year, last_month)[1]
        return datetime(year, last_month, last_day, 23, 59, 59, 999999, tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"--datetime: {text!r} is not an RFC 3339 date or datetime") from None
    if len(text) == 10 and end:  # a bare date: the interval covers the whole day
        parsed = parsed.replace(hour=23, minute=59, second=59, microsecond=999999)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed
