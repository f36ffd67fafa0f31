"""RunConfig: the one typed description of a `stacembed run`.

It is built from CLI flags, from a YAML file, or from both (flags win), and it validates
everything it can *before* any item is read or any model is built, so that a typo costs a
second, not an hour of inference.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from .access import Access

FORMATS = ("geoparquet", "geotiff")
SEARCH_FORMATS = ("table", "json", "ndjson", "geoparquet")  # what `stacembed search` writes
DEVICES = ("auto", "cpu", "cuda", "mps")
LOADERS = ("auto", "stackstac", "odc")
RESAMPLING = ("nearest", "bilinear", "cubic", "average", "mode")
POOLINGS = ("default", "cls", "mean", "max", "none")
DTYPES = ("float32", "float16", "int8")
QUANTIZATION = ("per-dimension", "global")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MODEL = "stacembed-demo-landsat"

Bbox = tuple[float, float, float, float]
Interval = tuple[datetime | None, datetime | None]


@dataclass(frozen=True)
class RunConfig:
    """Everything `stacembed run` needs; see `stacembed run --help` for each field's meaning."""

    out: Path | None = None
    # where the items come from, and which
    api: str | None = None
    catalog: str | None = None
    items: str | None = None
    collections: tuple[str, ...] = ()
    bbox: Bbox | None = None
    intersects: dict | None = None
    datetime: Interval | None = None
    ids: tuple[str, ...] = ()
    query: dict | None = None
    filter: dict | None = None
    sortby: tuple[tuple[str, str], ...] = ()
    max_items: int | None = None
    page_size: int = 100
    # how to reach them
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the STAC API/catalog's origin only
    asset_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # every asset read (GDAL)
    keep_href_query: bool = False  # keep query strings in hrefs written to outputs (credentials go anyway)
    gdal: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sign: str | None = None
    timeout: float = 30.0
    retries: int = 3
    aws_unsigned: bool = False
    requester_pays: bool = False
    bands: Mapping[str, str] = dataclasses.field(default_factory=dict)
    shift_s2_channels: bool = False  # sample cubes (--items DATA/): add 1000 DN to S2 bands (resolve.cubes)
    # the model and the embeddings
    model: str = DEFAULT_MODEL
    weights: str | None = None
    chip_size: int | None = None
    stride: int | None = None
    min_valid: float = 0.5
    pooling: str = "default"
    layer: int | str | None = None
    dtype: str = "float32"
    quantization: str = "per-dimension"
    offline: bool = False
    time_steps: int = 1
    formats: tuple[str, ...] | None = None  # None: both, or GeoTIFF alone with --pooling none (dense)
    batch_size: int | None = None
    precision: str = "fp32"
    compile: bool = False
    threads: int | None = None
    streams: int | None = None
    reader_threads: int = 1
    prefetch: int | None = None
    dask_address: str | None = None
    workers: int | None = None
    tile_chips: int = 4096
    device: str = "auto"
    crs: str | None = None
    resolution: float | None = None
    resampling: str = "nearest"
    loader: str = "auto"
    output_collection: str | None = None
    # several modalities (a card with several mlm:input entries; README "Several modalities")
    modalities: Mapping[str, str] = dataclasses.field(default_factory=dict)  # card input name -> collection
    primary: str | None = None  # the input whose items are the locations (default: the card's first)
    max_time_gap: str | None = None  # e.g. "10d": the farthest in time another modality's item may be
    modality_resampling: Mapping[str, str] = dataclasses.field(default_factory=dict)  # input name -> method
    # where the results go
    publish: str | None = None
    asset_base_href: str | None = None
    dry_run: bool = False
    verify: bool = False  # resume: check the checksums of the finished items kept, not only their sizes
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.out, str):  # RunConfig(out="out") from Python, as from_mapping converts it
            object.__setattr__(self, "out", Path(self.out))
        sources = [f"--{name}" for name in ("api", "catalog", "items") if getattr(self, name)]
        if len(sources) > 1:
            raise ConfigError(f"give only one of --api, --catalog, --items (got {', '.join(sources)})")
        if self.bbox and self.intersects:
            raise ConfigError("give either --bbox or --intersects, not both")
        if self.publish and not self.asset_base_href:
            raise ConfigError("--publish needs --asset-base-href: where the API's users can fetch the files")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"--max-items must be >= 1, got {self.max_items}")
        for name in ("chip_size", "stride", "batch_size", "page_size", "time_steps", "threads", "streams",
                     "reader_threads", "workers", "tile_chips"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0.0 <= self.min_valid <= 1.0:
            raise ConfigError(f"--min-valid must be between 0 and 1, got {self.min_valid}")
        if self.formats is None:  # dense embeddings (--pooling none) have one format: GeoTIFF
            object.__setattr__(self, "formats", ("geotiff",) if self.pooling == "none" else FORMATS)
        if not self.formats:
            raise ConfigError("at least one --format is needed")
        _check_choices("format", self.formats, FORMATS)
        if self.pooling == "none" and "geoparquet" in self.formats:
            raise ConfigError("--pooling none makes dense embeddings (a map of patch vectors per chip), written as "
                              "GeoTIFF only: use --format geotiff, or leave --format out")
        _check_choices("device", (self.device,), DEVICES)
        _check_choices("loader", (self.loader,), LOADERS)
        _check_choices("resampling", (self.resampling,), RESAMPLING)
        _check_choices("pooling", (self.pooling,), POOLINGS)
        _check_choices("precision", (self.precision,), PRECISIONS)
        if self.dask_address and self.workers:
            raise ConfigError("give either --dask-address (an existing cluster) or --workers (a local one), not both")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError(f"--prefetch must be >= 0, got {self.prefetch}")
        _check_choices("dtype", (self.dtype,), DTYPES)
        _check_choices("quantization", (self.quantization,), QUANTIZATION)
        if self.dtype == "float16" and "geotiff" in self.formats:
            raise ConfigError("--dtype float16 works with --format geoparquet only "
                              "(GeoTIFF float16 needs GDAL >= 3.11)")
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"--resolution must be > 0, got {self.resolution}")
        if self.max_time_gap is not None:
            object.__setattr__(self, "max_time_gap", parse_duration(self.max_time_gap))
        _check_choices("modality-resampling", tuple(self.modality_resampling.values()), RESAMPLING)
        self.access()  # validates --sign, --timeout, --retries

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, need_out: bool = True) -> RunConfig:
        """Build a config from loosely typed values (YAML, CLI), parsing strings as the CLI does."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = _canonical(values)
        filter_lang = values.pop("filter_lang", None)  # only says how to read --filter
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown configuration key {key.replace('_', '-')!r}")
            if value is None or value == ():
                continue
            kwargs[key] = _coerce(key, value, filter_lang)
        for key in ("headers", "asset_headers"):  # their environment variables count without a flag too
            if key not in kwargs:
                kwargs[key] = _coerce(key, ())
        if need_out and "out" not in kwargs:
            raise ConfigError("--out is required (the directory to write the STAC catalog to)")
        return cls(**kwargs)

    def access(self) -> Access:
        """The network settings for the API client and the asset reader."""
        from .access import Access

        return Access(headers=self.headers, timeout=self.timeout, retries=self.retries, gdal=self.gdal,
                      signer=self.sign, aws_unsigned=self.aws_unsigned, requester_pays=self.requester_pays,
                      asset_headers=self.asset_headers)

    @property
    def time_gap_seconds(self) -> float | None:
        """``--max-time-gap`` in seconds (None: no limit)."""
        return None if self.max_time_gap is None else duration_seconds(self.max_time_gap)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] = (), *, need_out: bool = True) -> RunConfig:
        """Read a YAML run file; `overrides` (typically CLI flags) replace its keys."""
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of options")
        merged = _canonical(loaded, f"config file {str(path)!r}")
        merged.update(_canonical(dict(overrides)))
        return cls.from_mapping(merged, need_out=need_out)

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
            "pooling": self.pooling,
            "layer": self.layer,
            "time_steps": self.time_steps,
            "dtype": self.dtype,
            "quantization": self.quantization if self.dtype == "int8" else None,
            **({"shift_s2_channels": 1000} if self.shift_s2_channels else {}),
        }


def _check_choices(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")


# Keys accepted under another name (the CLI flag's singular, or a YAML habit).
_ALIASES = {"collection": "collections", "format": "formats", "header": "headers", "band": "bands",
            "asset_header": "asset_headers", "modality": "modalities"}


def _coerce(key: str, value: Any, filter_lang: str | None = None) -> Any:
    from .access import ASSET_HEADERS_ENV, parse_headers, parse_options
    from .resolve.filters import parse_filter, parse_intersects, parse_query, parse_sortby

    parsers = {
        "out": Path,
        "bbox": parse_bbox,
        "datetime": parse_datetime,
        "collections": _as_tuple,
        "ids": _as_tuple,
        "formats": _as_tuple,
        "intersects": parse_intersects,
        "query": parse_query,
        "filter": lambda v: parse_filter(v, filter_lang),
        "sortby": parse_sortby,
        "headers": parse_headers,
        "asset_headers": lambda v: parse_headers(v, variable=ASSET_HEADERS_ENV, flag="--asset-header"),
        "gdal": parse_options,
        "bands": _parse_bands,
        "modalities": lambda v: _parse_pairs(v, "--modality", "INPUT=COLLECTION, e.g. S1GRD=sentinel-1-rtc"),
        "modality_resampling": lambda v: _parse_pairs(v, "--modality-resampling", "INPUT=METHOD, e.g. LULC=nearest"),
        "max_time_gap": parse_duration,
        "max_items": int,
        "page_size": int,
        "time_steps": int,
        "chip_size": int,
        "stride": int,
        "batch_size": int,
        "threads": int,
        "streams": int,
        "reader_threads": int,
        "prefetch": int,
        "workers": int,
        "tile_chips": int,
        "retries": int,
        "min_valid": float,
        "layer": lambda v: int(v) if str(v).lstrip("-").isdigit() else str(v),
        "resolution": float,
        "timeout": float,
    }
    value = _typed(key, value)
    parse = parsers.get(key)
    if parse is None:
        return value
    try:
        return parse(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--{key.replace('_', '-')}: cannot use {value!r} ({exc})") from exc


def _parse_bands(value: Any) -> dict[str, str]:
    """``--band NAME=ASSET`` (repeatable): use asset ASSET for the model's band NAME; ``NAME=ASSET:VARIABLE``
    names a variable (or a path, ``group/variable``) of a Zarr or NetCDF asset (``bands.match_bands``)."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    bands = {}
    for pair in _as_tuple(value):
        name, sep, asset = pair.partition("=")
        if not sep or not name.strip() or not asset.strip():
            raise ConfigError(f"--band needs MODEL_BAND=ASSET_KEY (or ASSET_KEY:VARIABLE for a Zarr or NetCDF "
                              f"asset), e.g. nir=B08 or nir=SR_10m:b08; got {pair!r}")
        bands[name.strip()] = asset.strip()
    return bands


def _parse_pairs(value: Any, flag: str, form: str) -> dict[str, str]:
    """``NAME=VALUE`` pairs of a repeatable flag (or a mapping of them, from YAML)."""
    if isinstance(value, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    pairs = {}
    for pair in _as_tuple(value):
        name, sep, given = pair.partition("=")
        if not sep or not name.strip() or not given.strip():
            raise ConfigError(f"{flag} needs {form}; got {pair!r}")
        pairs[name.strip()] = given.strip()
    return pairs


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | float | int) -> str:
    """``--max-time-gap``: a number and a unit, s, m, h, d or w (``10d``, ``36h``); a bare number
    is days. Returned in that form (``10d``), as runs record it."""
    match = _DURATION.match(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise ConfigError(f"--max-time-gap must be a duration such as 10d, 36h or 90m; got {value!r}")
    number, unit = float(match[1]), match[2] or "d"
    return f"{number:g}{unit}"


def duration_seconds(text: str) -> float:
    """Seconds of a duration written as ``parse_duration`` writes it."""
    normalised = parse_duration(text)
    return float(normalised[:-1]) * _UNIT_SECONDS[normalised[-1]]


def _as_tuple(value: Any) -> tuple[str, ...]:
    """``"a,b"``, ``["a,b", "c"]`` (a repeated flag, a YAML list) -> ``("a", "b", "c")``: commas
    separate in every form, blanks and repeats are dropped."""
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _canonical(values: Mapping[Any, Any], where: str = "the configuration") -> dict[str, Any]:
    """Keys as field names (``chip-size`` -> ``chip_size``, ``collection`` -> ``collections``);
    a key that is no name (YAML ``123:`` or ``yes:``), or one given in two spellings, is an error."""
    canonical: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in values.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{where}: key {raw_key!r} is not an option name (write option names as text)")
        key = raw_key.replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in canonical:
            raise ConfigError(f"{where} gives {_flag(key)} twice: as {spelled[key]!r} and {raw_key!r}")
        canonical[key], spelled[key] = value, raw_key
    return canonical


def _flag(key: str) -> str:
    """The flag a user writes for field ``key``: ``--chip-size``, ``--collection`` (singular)."""
    singular = {field: alias for alias, field in _ALIASES.items()}
    return "--" + singular.get(key, key).replace("_", "-")


# --- strict types --------------------------------------------------------------------------------
# Every value from YAML, the CLI or a mapping passes here before it is parsed: a number is not a
# string, 2.7 is not a batch size and "no" is not true. What each field takes follows from its
# type annotation (``_kind``); fields of richer types are named in ``_KINDS``.

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_INTEGER = re.compile(r"^\s*[+-]?[0-9]+\s*$")
_KINDS = {"bbox": "bbox", "datetime": "datetime", "sortby": "sortby", "layer": "layer"}
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str", Path: "path", dict: "json"}


@functools.cache
def _kind(key: str) -> str | None:
    """What field ``key`` takes: a scalar, ``strings`` (a tuple of them), ``pairs`` (a mapping),
    ``json`` (a JSON object or text), or one of ``_KINDS``; None for a type this module does not
    know (a test checks that there is none)."""
    if key in _KINDS:
        return _KINDS[key]
    hint = typing.get_type_hints(RunConfig).get(key)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    origin = typing.get_origin(hint)
    if origin is tuple and typing.get_args(hint) == (str, ...):
        return "strings"
    if origin is Mapping or origin is dict and typing.get_args(hint) == (str, str):
        return "pairs"
    return _SCALARS.get(hint)


def _typed(key: str, value: Any) -> Any:
    """``value`` checked against what field ``key`` takes, scalars converted (``"16"`` -> 16,
    ``"no"`` -> False); anything else is a ConfigError naming the flag."""
    kind = _kind(key)
    flag = _flag(key)

    def wrong(expected: str) -> ConfigError:
        hint = " (quote it in YAML)" if kind in ("str", "path", "strings") and _is_number(value) else ""
        return ConfigError(f"{flag}: expected {expected}, got {value!r}{hint}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise wrong("true or false (or yes/no, 1/0)")
    if kind == "int":
        if (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, str) and _INTEGER.match(value)):
            return int(value)
        raise wrong("a whole number")
    if kind == "float":
        number = _number(value)
        if number is None:
            raise wrong("a finite number")
        return number
    if kind == "str":
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        raise wrong("a string")
    if kind == "path":
        if isinstance(value, str | os.PathLike):
            return value
        raise wrong("a path")
    if kind == "layer":
        if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip()):
            return value
        raise wrong("a block index or a module name")
    if kind == "strings":
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) for v in items):
            return value
        raise wrong("a string or a list of strings (comma-separated)")
    if kind == "pairs":
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()):
                return {k: v if isinstance(v, str) else ("YES" if v else "NO") if isinstance(v, bool) else str(v)
                        for k, v in value.items()}
        elif isinstance(value, str):
            return (value,)
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return value
        raise wrong("KEY=VALUE strings or a mapping of them")
    if kind == "json":
        if isinstance(value, str | Mapping):
            return value
        raise wrong("JSON text, @file or a mapping")
    if kind == "bbox":
        if isinstance(value, str) or (isinstance(value, list | tuple) and all(_number(v) is not None for v in value)):
            return value
        raise wrong("W,S,E,N: four numbers")
    if kind == "datetime":
        if isinstance(value, str | dt.date) or (
                isinstance(value, tuple) and len(value) == 2 and all(v is None or isinstance(v, datetime)
                                                                     for v in value)):
            return value
        raise wrong("an RFC 3339 datetime or interval")
    if kind == "sortby":
        if isinstance(value, str) or (isinstance(value, list | tuple) and all(isinstance(v, str | Mapping)
                                                                              for v in value)):
            return value
        raise wrong("sort fields, e.g. -eo:cloud_cover,+datetime")
    return value


def _number(value: Any) -> float | None:
    """``value`` as a finite float, if it is a number or a number's text (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
            return datetime(year, month or 1, 1, tzinfo=UTC)
        last_month = month or 12
        last_day = calendar.monthrange(year, last_month)[1]
        return datetime(year, last_month, last_day, 23, 59, 59, 999999, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"--datetime: {text!r} is not an RFC 3339 date or datetime") from None
    if len(text) == 10 and end:  # a bare date: the interval covers the whole day
        parsed = parsed.replace(hour=23, minute=59, second=59, microsecond=999999)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
