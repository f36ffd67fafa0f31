"""Write a model card as a standalone MLM item directory: ``model.json`` plus its weights.

The directory is what the CWL application package takes as ``model_dir`` and what
``--model DIR/model.json`` reads: the weights asset points at the copied file with a relative
href and its SHA-256, or keeps the remote URL when the weights are not on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ModelError
from .card import ModelCard
from .weights import file_sha256, resolve_weights


def export_card(card: ModelCard, out_dir: Path, weights: str | None = None) -> list[Path]:
    """Write ``out_dir/model.json`` (and the weights when available); returns the files written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {out_dir}: {exc.strerror}") from None
    item = json.loads(json.dumps(card.item))
    item["links"] = [l for l in item.get("links", []) if l.get("rel") not in ("self", "root", "parent", "collection")]
    item.pop("collection", None)
    written = []
    local = _local_weights(card, weights)
    asset = _weights_asset(item)
    if local is not None and asset is not None:
        target = out_dir / local.name
        if local.resolve() != target.resolve():
            shutil.copyfile(local, target.with_name(target.name + ".part"))
            os.replace(target.with_name(target.name + ".part"), target)
        asset["href"] = f"./{target.name}"
        asset["file:checksum"] = "1220" + file_sha256(target)
        asset["file:size"] = target.stat().st_size
        written.append(target)
    elif asset is not None and card.weights_href:
        asset["href"] = card.weights_href
    card_path = out_dir / "model.json"
    tmp = card_path.with_name(".model.json.part")
    tmp.write_text(json.dumps(item, indent=2) + "\n")
    os.replace(tmp, card_path)
    return [card_path, *written]


def _local_weights(card: ModelCard, weights: str | None) -> Path | None:
    """The weights file on this machine, without downloading anything."""
    try:
        return resolve_weights(card, weights, offline=True)
    except ModelError:
        if weights:
            raise
        return None


def _weights_asset(item: dict) -> dict | None:
    return next((a for a in item.get("assets", {}).values() if "mlm:model" in a.get("roles", ())), None)
