"""Each band's centre wavelength (and width) for wavelength-conditioned backbones (DOFA, Copernicus-FM).

Such a backbone declares ``context_inputs = ("wavelengths",)``: a run passes ``wavelengths``,
``(n, C)`` float32 in micrometres read from the items' STAC (``eo:center_wavelength``; NaN where
an item states none, see README "Several modalities"). What an item leaves unknown is taken
from the card: the ``center_wavelength`` (``eo:center_wavelength``) its assets' ``eo:bands`` (or
STAC 1.1 ``bands``) give the band of that name. The probe pass that measures the output shape
passes nothing: the card's values are used throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import ModelError
from ..card import ModelCard

__all__ = ["batch_wavelengths", "card_band_values", "check_known"]

# The band fields read, each under its STAC 1.0 eo:bands name and its STAC 1.1 bands name.
FIELDS = {"center_wavelength": ("center_wavelength", "eo:center_wavelength"),
          "full_width_half_max": ("full_width_half_max", "eo:full_width_half_max")}


def card_band_values(card: ModelCard, field: str = "center_wavelength") -> tuple[float | None, ...]:
    """``field`` (micrometres) of each of the card's bands, in its order: from the band objects of
    ``mlm:input`` (MLM allows objects with eo fields), else the assets' ``eo:bands`` / ``bands``
    entries of that name; None where the card states none."""
    keys = FIELDS[field]
    found: dict[str, float] = {}

    def note(band: object) -> None:
        if not isinstance(band, dict) or not isinstance(band.get("name"), str):
            return
        value = next((band[k] for k in keys if isinstance(band.get(k), (int, float))), None)
        if value is not None and band["name"] not in found:
            found[band["name"]] = float(value)

    props = card.item.get("properties", {}) if card.item else {}
    for entry in props.get("mlm:input", []):
        for band in entry.get("bands", []) if isinstance(entry, dict) else []:
            note(band)
    for asset in (card.item.get("assets", {}) if card.item else {}).values():
        for band in [*asset.get("eo:bands", []), *asset.get("bands", [])]:
            note(band)
    return tuple(found.get(band) for band in card.bands)


def batch_wavelengths(given: torch.Tensor | None, defaults: Sequence[float], where: str) -> list[float]:
    """The wavelengths (micrometres) of one batch's bands: the run's ``given`` ``(n, C)`` where
    known, else ``defaults`` (the card's); every chip of a batch must have the same (a run's
    batch comes from one item: it does), as these models take one wavelength per band."""
    if given is None:
        return [float(w) for w in defaults]
    rows = torch.as_tensor(given).detach().to("cpu", torch.float32)
    if rows.ndim != 2 or rows.shape[1] != len(defaults):
        raise ModelError(f"{where}: wavelengths must be (chips, {len(defaults)} bands), got {tuple(rows.shape)}")
    filled = torch.where(torch.isnan(rows), torch.tensor(defaults, dtype=torch.float32), rows)
    if len(filled) and bool((filled != filled[0]).any()):
        raise ModelError(f"{where}: the chips of one batch have different band wavelengths; it takes one per band")
    return [float(w) for w in filled[0]] if len(filled) else [float(w) for w in defaults]


def check_known(values: Sequence[float | None], bands: Sequence[str], what: str, where: str) -> tuple[float, ...]:
    """``values`` as floats; a ModelError naming the bands that have none."""
    missing = [band for band, value in zip(bands, values, strict=True) if value is None or math.isnan(value)]
    if missing:
        raise ModelError(f"{where}: the model takes each band's {what}, and the card states none for "
                         f"{', '.join(missing)} (center_wavelength / full_width_half_max in its eo:bands)")
    return tuple(float(v) for v in values)  # type: ignore[arg-type]
