"""Write a model card as a standalone MLM item directory: ``model.json`` plus its weights.

The directory is what the CWL application package takes as ``model_dir`` and what
``--model DIR/model.json`` reads: the weights asset points at the copied file with a relative
href and its SHA-256, or keeps the remote URL when the weights are not on this machine (nothing
is downloaded here; ``unwritten_weights`` says what was left out, for the CLI to warn about).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import ModelError
from ..layout import atomic_path, multihash_sha256, write_bytes
from .card import ModelCard, weights_asset
from .weights import resolve_weights


def export_card(card: ModelCard, out_dir: Path, weights: str | None = None) -> list[Path]:
    """Write ``out_dir/model.json`` (and the weights when available); returns the files written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {out_dir}: {exc.strerror}") from None
    item = card.standalone_item()
    written = _place_weights(card, item, out_dir, weights)
    card_path = out_dir / "model.json"
    # ASCII-escaped, unlike layout.write_json: the bytes of an exported card stay as they were.
    write_bytes(card_path, (json.dumps(item, indent=2) + "\n").encode())
    return [card_path, *written]


def unwritten_weights(card: ModelCard, written: list[Path]) -> str | None:
    """The weights ``export_card`` left out of ``written`` (not on this machine), by href; None
    when they were written or the card has none."""
    asset = weights_asset(card.item)
    if asset is None or any(path.name != "model.json" for path in written):
        return None
    return card.weights_href or asset.get("href")


def _place_weights(card: ModelCard, item: dict, out_dir: Path, weights: str | None) -> list[Path]:
    """Point ``item``'s weights asset at a copy in ``out_dir``, or at the card's URL; the files copied."""
    local = _local_weights(card, weights)
    asset = weights_asset(item)
    if asset is None:
        return []
    if local is None:
        if card.weights_href:
            asset["href"] = card.weights_href
        return []
    target = out_dir / local.name
    if local.resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(local, tmp)
    asset["href"] = f"./{target.name}"
    asset["file:checksum"] = multihash_sha256(target)
    asset["file:size"] = target.stat().st_size
    return [target]


def _local_weights(card: ModelCard, weights: str | None) -> Path | None:
    """The weights file on this machine, without downloading anything."""
    try:
        return resolve_weights(card, weights, offline=True)
    except ModelError:
        if weights:
            raise
        return None
