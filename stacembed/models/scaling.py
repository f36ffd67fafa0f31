"""MLM ``value_scaling``: turn measurements into the numbers a model was trained on.

One Value Scaling Object per band, or a single one broadcast to every band (MLM v1.5).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ModelError


def apply_value_scaling(x: torch.Tensor, scaling: Sequence[dict[str, Any] | None]) -> torch.Tensor:
    """Scale ``x`` of shape ``(batch, band, ...)`` band by band; NaN stays NaN."""
    if not scaling:
        return x
    bands = x.shape[1]
    steps = list(scaling) * bands if len(scaling) == 1 else list(scaling)
    return torch.stack([_scale_one(x[:, i], step) for i, step in enumerate(steps)], dim=1)


SUPPORTED = ("z-score", "min-max", "clip", "clip-min", "clip-max", "offset", "scale")


def check_value_scaling(scaling: Sequence[dict[str, Any] | None], where: str) -> None:
    """Fail early, at card load, on a scaling step inference could not apply."""
    for step in scaling:
        kind = None if step is None else step.get("type")
        if kind is not None and kind not in SUPPORTED:
            raise ModelError(f"{where}: value_scaling type {kind!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED)})")


def _scale_one(x: torch.Tensor, step: dict[str, Any] | None) -> torch.Tensor:
    if step is None or step.get("type") is None:
        return x
    kind = step["type"]
    if kind == "z-score":
        return (x - step["mean"]) / step["stddev"]
    if kind == "min-max":
        return (x - step["minimum"]) / (step["maximum"] - step["minimum"])
    if kind == "clip":
        return x.clamp(step["minimum"], step["maximum"])
    if kind == "clip-min":
        return x.clamp(min=step["minimum"])
    if kind == "clip-max":
        return x.clamp(max=step["maximum"])
    if kind == "offset":
        return x - step["value"]
    if kind == "scale":
        return x / step["value"]
    raise ModelError(f"value_scaling type {kind!r} is not supported")
