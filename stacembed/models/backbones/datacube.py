"""Exported programs that take one dict of inputs (a "datacube"), such as Clay v1.5's encoder.

Clay publishes its encoder as a ``torch.export`` program whose forward takes a single dict,
``{pixels, time, latlon, gsd, waves}``, and returns one embedding per chip (the class token).
stacembed runs such a program as the model itself (``weights.load_artifact``), and builds the
dict for each batch from what its card declares in ``stacembed:program_inputs``: each key of
the program's dict and what stacembed puts there::

    "stacembed:program_inputs": {
      "pixels": "pixels",                                        # (B, C, H, W), value-scaled chips
      "time": ["sin_week", "cos_week", "sin_hour", "cos_hour"],  # (B, 4), one row per chip
      "latlon": ["sin_lat", "cos_lat", "sin_lon", "cos_lon"],    # (B, 4)
      "gsd": "gsd",                                              # (1,) metres
      "waves": "wavelengths"                                     # (C,) micrometres
    }

A value is one of

- ``"pixels"``: the batch of chips ``(B, C, H, W)``, after the card's value scaling (no data = 0);
- ``"wavelengths"``: ``(C,)``, each band's centre wavelength in micrometres: the items' STAC
  (``eo:center_wavelength``), else the card's ``eo:bands`` (as for DOFA, ``spectral``);
- ``"gsd"``: ``(1,)``, the chip grid's pixel size in metres (one value: a batch comes from one
  item, so one grid); without a run (the probe pass) the card's ``mlm:hyperparameters.gsd``;
- a list of per-chip values, ``(B, len(list))`` float32, in the list's order:
  ``week`` (ISO week of the acquisition date, 1-53), ``hour`` (its hour, 0-23, as written in the
  item's datetime: the hour is truncated, as ``datetime.hour``), ``sin_week`` / ``cos_week``
  (of ``week * 2 pi / 52``), ``sin_hour`` / ``cos_hour`` (of ``hour * 2 pi / 24``), ``lat`` /
  ``lon`` (the chip centre in degrees, WGS 84) and ``sin_lat`` / ``cos_lat`` / ``sin_lon`` /
  ``cos_lon`` (of those in radians). With several acquisitions per chip the first one's time is
  used. Values whose source a call lacks (the engine's probe pass, a direct call without
  context) are 0: Clay's own "unknown" (its training zeroes time and lat/lon of 20 % of the
  chips, claymodel/datamodule.py 81-84).

The program's batch range is read from the program itself (``torch.export``'s range constraints
of the pixels' first dimension): a batch smaller than its minimum (Clay: 2) is padded with copies
of its last chip, whose outputs are dropped; a batch larger than its maximum (Clay: 1000) goes
through in parts. Each chip's output is independent of the others (the encoder has no batch
statistics), so padding changes nothing for the chips embedded.

What comes out is the program's own output, ``(B, D)``: for Clay the class token of the
encoder's last layer (after its final LayerNorm), Clay's embedding. It is the ``default`` pooling;
other poolings (``cls``, ``mean``, ``none``, ``--layer``) need the token sequence, which the
program does not return, and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ModelError
from ..card import ModelCard
from ..registry import register_architecture
from .spectral import batch_wavelengths, card_band_values, check_known

__all__ = ["FIELD", "DatacubeProgram", "ProgramInputs", "dict_argument_keys"]

FIELD = "stacembed:program_inputs"

# Whole-batch inputs, and the per-chip values a list may name (with the context input each needs).
SOURCES = ("pixels", "wavelengths", "gsd")
FEATURES = {
    "week": "temporal_coords", "sin_week": "temporal_coords", "cos_week": "temporal_coords",
    "hour": "acquisition_hour", "sin_hour": "acquisition_hour", "cos_hour": "acquisition_hour",
    "lat": "location_coords", "lon": "location_coords",
    "sin_lat": "location_coords", "cos_lat": "location_coords",
    "sin_lon": "location_coords", "cos_lon": "location_coords",
}


@dataclass(frozen=True)
class ProgramInputs:
    """A card's ``stacembed:program_inputs``: each key of the program's dict, in the card's order,
    with a source name (``SOURCES``) or a tuple of per-chip value names (``FEATURES``)."""

    keys: tuple[tuple[str, str | tuple[str, ...]], ...]

    @classmethod
    def from_card(cls, card: ModelCard) -> ProgramInputs | None:
        """The card's declaration, checked; None when it has none."""
        props = card.item.get("properties", {}) if card.item else {}
        given = props.get(FIELD)
        if given is None:
            return None
        where = f"model card {card.href}: {FIELD}"
        if not isinstance(given, Mapping) or not given:
            raise ModelError(f"{where} must map each key of the program's dict to what stacembed puts there")
        keys: list[tuple[str, str | tuple[str, ...]]] = []
        for key, value in given.items():
            if isinstance(value, str) and value in SOURCES:
                keys.append((str(key), value))
            elif isinstance(value, list) and value and all(v in FEATURES for v in value):
                keys.append((str(key), tuple(value)))
            else:
                raise ModelError(f"{where}: {key!r} is {value!r}; give one of {', '.join(SOURCES)} or a list of "
                                 f"per-chip values ({', '.join(sorted(FEATURES))})")
        if [v for _, v in keys].count("pixels") != 1:
            raise ModelError(f"{where}: exactly one key must be \"pixels\" (the chips)")
        return cls(tuple(keys))

    @property
    def pixels_key(self) -> str:
        return next(key for key, value in self.keys if value == "pixels")

    @property
    def context_inputs(self) -> tuple[str, ...]:
        """The engine's per-chip inputs (``temporal.chip_context``) these values are made from."""
        names = [name for _, value in self.keys
                 for name in ([FEATURES[v] for v in value] if isinstance(value, tuple) else [value])]
        return tuple(dict.fromkeys(name for name in names if name != "pixels"))


def dict_argument_keys(program: torch.export.ExportedProgram) -> tuple[str, ...] | None:
    """The keys of the program's argument when it takes one dict (and nothing else), else None."""
    spec = program.call_spec.in_spec
    if spec is None:
        return None
    args, kwargs = _children(spec)
    if _children(kwargs) or len(_children(args)) != 1:
        return None
    (arg,) = _children(args)
    if arg.type is not dict:
        return None
    return tuple(str(key) for key in arg.context)


def _children(spec: Any) -> list[Any]:
    children = getattr(spec, "children", None)
    return list(children()) if callable(children) else list(spec.children_specs)


def batch_range(program: torch.export.ExportedProgram, keys: tuple[str, ...],
                pixels_key: str) -> tuple[int, int | None]:
    """(minimum, maximum or None) of the batch the program accepts: the range torch.export recorded
    for the first dimension of ``pixels_key`` (a static dimension: exactly that size)."""
    names = program.graph_signature.user_inputs
    if len(names) != len(keys):  # not one tensor per key: no range to read
        return 1, None
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    value = nodes[names[keys.index(pixels_key)]].meta.get("val")
    size = value.shape[0] if isinstance(value, Tensor) and value.ndim else None
    if isinstance(size, int):
        return size, size
    if not isinstance(size, torch.SymInt):
        return 1, None
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 1, None
    low = max(1, int(bounds.lower))
    try:
        high = int(bounds.upper)
    except (TypeError, ValueError, OverflowError):  # unbounded (int_oo)
        return low, None
    return low, high if high < 2**31 else None


class DatacubeProgram(nn.Module):
    """A ``torch.export`` program taking one dict, run on stacembed's chips and per-chip context.

    Built by ``weights.create_with_weights`` for a card with ``stacembed:program_inputs``; see
    the module docstring for what each key receives, the padding and what comes out.
    """

    def __init__(self, card: ModelCard, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        inputs = ProgramInputs.from_card(card)
        keys = dict_argument_keys(program)
        if inputs is None or keys is None:
            raise ModelError(f"model card {card.href}: its exported program is not a dict-taking program "
                             f"described by {FIELD}")
        declared = {key for key, _ in inputs.keys}
        if declared != set(keys):
            raise ModelError(f"model card {card.href}: the program takes a dict with keys {sorted(keys)}, "
                             f"{FIELD} describes {sorted(declared)}")
        self.name = card.name
        self.inputs = inputs
        self.per_chip = {key for key, value in inputs.keys if value == "pixels" or isinstance(value, tuple)}
        self.min_batch, self.max_batch = batch_range(program, keys, inputs.pixels_key)
        self.module = program.module()
        where = f"model card {card.href}"
        self.default_wavelengths: tuple[float, ...] | None = None
        if any(value == "wavelengths" for _, value in inputs.keys):
            self.default_wavelengths = check_known(card_band_values(card), card.bands, "centre wavelength", where)
        hyper = card.item.get("properties", {}).get("mlm:hyperparameters", {}) if card.item else {}
        gsd = hyper.get("gsd") if isinstance(hyper, Mapping) else None
        self.default_gsd = float(gsd) if isinstance(gsd, (int, float)) else None

    @property
    def context_inputs(self) -> tuple[str, ...]:
        """Inputs besides pixels this program's dict is made from; the engine fills them per chip."""
        return self.inputs.context_inputs

    def train(self, mode: bool = True) -> DatacubeProgram:
        self.training = mode  # an exported program has no train mode: eval() must not recurse
        return self

    def forward(self, x: Tensor, **context: Tensor) -> Tensor:
        """``(B, D)``: the program's output for chips ``x`` ``(B, C, H, W)``, ``context`` per chip."""
        if x.ndim != 4:
            raise ModelError(f"model {self.name}: its program takes chips (batch, bands, height, width); "
                             f"got {tuple(x.shape)} (one time step only)")
        if len(x) == 0:
            raise ModelError(f"model {self.name}: no chips to embed")
        cube = self.datacube(x, context)
        step = self.max_batch or len(x)
        parts = [self._call(cube, first, min(first + step, len(x))) for first in range(0, len(x), step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def datacube(self, x: Tensor, context: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The program's dict for the whole batch (per-chip entries have ``len(x)`` rows)."""
        cube: dict[str, Tensor] = {}
        for key, value in self.inputs.keys:
            if value == "pixels":
                cube[key] = x
            elif value == "wavelengths":
                assert self.default_wavelengths is not None
                waves = batch_wavelengths(context.get("wavelengths"), self.default_wavelengths, f"model {self.name}")
                cube[key] = torch.tensor(waves, dtype=torch.float32, device=x.device)
            elif value == "gsd":
                cube[key] = torch.tensor([self._gsd(context.get("gsd"))], dtype=torch.float32, device=x.device)
            else:
                cube[key] = per_chip_values(value, len(x), context).to(x.device)
        return cube

    def _gsd(self, given: Tensor | None) -> float:
        if given is None:
            if self.default_gsd is None:
                raise ModelError(f"model {self.name}: no ground sampling distance: the run passes none and the "
                                 "card states no mlm:hyperparameters.gsd")
            return self.default_gsd
        values = torch.as_tensor(given).detach().to("cpu", torch.float64).reshape(-1)
        if len(values) and bool((values - values[0]).abs().max() > 1e-6 * values[0].abs()):
            raise ModelError(f"model {self.name}: the chips of one batch have different pixel sizes; "
                             "its program takes one ground sampling distance per batch")
        return float(values[0])

    def _call(self, cube: dict[str, Tensor], first: int, last: int) -> Tensor:
        """The program on chips ``first:last``, padded to its minimum batch with copies of the last."""
        size = last - first
        index = torch.arange(first, last)
        if size < self.min_batch:
            index = torch.cat([index, index[-1:].repeat(self.min_batch - size)])
        part = {key: value.index_select(0, index.to(value.device)) if key in self.per_chip else value
                for key, value in cube.items()}
        try:
            out = self.module(part)
        except ModelError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in part.items())
            raise ModelError(f"model {self.name}: its exported program refused the input ({shapes}): "
                             f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                             ) from None
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(f"model {self.name}: its program returned {shape}; stacembed takes (batch, embedding)")
        return out[:size]


def per_chip_values(names: tuple[str, ...], count: int, context: Mapping[str, Tensor]) -> Tensor:
    """``(count, len(names))`` float32 on the CPU: the named values of each chip (module docstring)."""
    columns: dict[str, list[float]] = {}
    times = _first_step(context.get("temporal_coords"), 2)
    if times is not None:
        weeks = [float(_iso_week(year, day)) for year, day in times.tolist()]
        columns["week"] = weeks
        columns["sin_week"] = [math.sin(w * 2 * math.pi / 52) for w in weeks]
        columns["cos_week"] = [math.cos(w * 2 * math.pi / 52) for w in weeks]
    hours = _first_step(context.get("acquisition_hour"), 0)
    if hours is not None:
        whole = [float(math.floor(h)) for h in hours.tolist()]
        columns["hour"] = whole
        columns["sin_hour"] = [math.sin(h * 2 * math.pi / 24) for h in whole]
        columns["cos_hour"] = [math.cos(h * 2 * math.pi / 24) for h in whole]
    places = context.get("location_coords")
    if places is not None:
        lat, lon = torch.as_tensor(places).detach().to("cpu", torch.float64).reshape(-1, 2).T.tolist()
        columns["lat"], columns["lon"] = lat, lon
        for name, degrees in (("lat", lat), ("lon", lon)):
            columns[f"sin_{name}"] = [math.sin(math.radians(d)) for d in degrees]
            columns[f"cos_{name}"] = [math.cos(math.radians(d)) for d in degrees]
    rows = []
    for name in names:
        column = columns.get(name, [0.0] * count)  # unknown: 0 (module docstring)
        if len(column) != count:
            raise ModelError(f"{FEATURES[name]} has {len(column)} rows for {count} chips")
        rows.append(column)
    return torch.tensor(rows, dtype=torch.float64).T.to(torch.float32).reshape(count, len(names))


def _first_step(value: Tensor | None, width: int) -> Tensor | None:
    """The first acquisition's entry per chip: ``(n, T, width)`` / ``(n, T)`` -> ``(n, width)`` / ``(n,)``."""
    if value is None:
        return None
    value = torch.as_tensor(value).detach().to("cpu", torch.float64)
    return value[:, 0] if value.ndim == (3 if width else 2) else value


def _iso_week(year: float, day: float) -> int:
    """ISO week number of day-of-year ``day`` of ``year`` (``date.isocalendar().week``)."""
    return (date(int(year), 1, 1) + timedelta(days=int(day) - 1)).isocalendar()[1]


@register_architecture("clay_mae_large")
def clay_mae_large(card: ModelCard) -> nn.Module:
    """Clay v1.5 runs as its published torch.export program only: stacembed has no untrained network."""
    raise ModelError(f"model card {card.href}: {card.architecture} runs only as its exported program "
                     f"(the card's mlm:model asset, {FIELD}); stacembed has no untrained network for it, so "
                     "--weights random cannot run; pass the .pt2 (or let the card's asset be downloaded)")
