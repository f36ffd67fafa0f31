"""A trained head as a STAC MLM item (``head.card.json``), and reading one back for ``predict``.

The card says what the head takes (the embedding vector: ``emb:dimensions`` of one model,
named with its weights, pooling and layer in ``stacembed:embeddings``), what it gives (the
classes with ``classification:classes``, or a value), how it was trained and scored, and links
the embeddings it was trained on (``derived_from``), their backbone's card (``emb:model``) and
the labels. ``predict`` refuses embeddings of another model or layout from what the card says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..access import redact
from ..analysis.derived import describe_model, file_asset, iso, time_range
from ..embeddings import EmbeddingItem
from ..errors import ModelError
from ..layout import write_json
from ..stac import FILE
from .heads import Head, load_head
from .labels import LabelClass

CARD_FILE = "head.card.json"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
STAC_VERSION = "1.0.0"
SAFETENSORS = "application/octet-stream; application=safetensors"
_NAME = re.compile(r"[^0-9A-Za-z_-]+")


def class_objects(classes: Sequence[LabelClass]) -> list[dict[str, Any]]:
    """``classification:classes`` v2.0.0 of ``classes``: names as the schema allows them
    (letters, digits, ``-``, ``_``), the label's own name kept as the title."""
    objects = []
    for label_class in classes:
        name = _NAME.sub("-", label_class.name).strip("-") or f"class-{label_class.value}"
        entry: dict[str, Any] = {"value": label_class.value, "name": name, "title": label_class.name,
                                 "description": f"Label class {label_class.name!r} (value {label_class.value})"}
        if label_class.color_hint:
            entry["color_hint"] = label_class.color_hint
        objects.append(entry)
    return objects


def head_card(directory: Path, *, head: Head, task: str, classes: Sequence[LabelClass] | None,
              model: dict[str, Any], items: Sequence[EmbeddingItem], embeddings: str, labels: str,
              metrics: dict[str, Any]) -> Path:
    """Write the card of ``head`` (saved in ``directory`` already) beside it; its path."""
    bbox = _union([item.bbox for item in items if item.bbox])
    times = [t for item in items for t in time_range(item) if t is not None]
    properties = {
        "datetime": None,
        "start_datetime": iso(min(times)) if times else None,
        "end_datetime": iso(max(times)) if times else None,
        "mlm:name": f"{head.name}-{task}-on-{model.get('model') or 'embeddings'}",
        "mlm:architecture": f"stacembed-head:{head.name}",
        "mlm:framework": "pytorch",
        "mlm:framework_version": torch.__version__,
        "mlm:tasks": [task],
        "mlm:pretrained": True,
        "mlm:pretrained_source": embeddings,
        "mlm:total_parameters": sum(int(t.numel()) for t in head.state_dict().values()),
        "mlm:input": [_input(head, model, items[0].kind or "chip")],
        "mlm:output": [_output(head, task, classes)],
        "mlm:hyperparameters": {**head.config["params"], **(head.config.get("training") or {})},
        "description": (f"A {head.name} head for {task} trained by stacembed {__version__} on embeddings of "
                        f"{describe_model(model)}; scores on held-out places in metrics.json."),
        "stacembed:embeddings": model,
        "stacembed:metrics": _headline(metrics),
    }
    card = {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [MLM, FILE],
        "id": properties["mlm:name"], "bbox": bbox, "geometry": _box(bbox) if bbox else None,
        "properties": {k: v for k, v in properties.items() if v is not None or k == "datetime"},
        "links": _links(items, embeddings, labels), "assets": _assets(directory),
    }
    if classes is not None:
        card["stac_extensions"].append(CLASSIFICATION)
    path = directory / CARD_FILE
    write_json(path, card)
    return path


def read_head(href: str | Path) -> tuple[Head, dict[str, Any]]:
    """The head of a model directory (or its card) and the card; never unpickled (safetensors)."""
    path = Path(href)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.is_file():
        raise ModelError(f"{href} is not a head written by `stacembed train` (no {CARD_FILE} there)")
    try:
        card = json.loads(card_path.read_text())
        card["properties"]["stacembed:embeddings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read head card {card_path}: {exc}") from None
    return load_head(card_path.parent), card


def check_fits(card: dict[str, Any], model: dict[str, Any], kind: str | None, what: str) -> None:
    """Refuse embeddings the head was not trained on: another model, weights, pooling, layer,
    dimensions (pooling tells chips from patches), or chips where a segmentation head takes patches."""
    trained = card["properties"]["stacembed:embeddings"]
    if trained != model:
        raise ModelError(f"the head was trained on {describe_model(trained)}, {what} holds {describe_model(model)}; "
                         "predict with a head trained on embeddings of the same model and layout")
    if "segmentation" in card["properties"]["mlm:tasks"] and kind != "pixel":
        raise ModelError(f"the segmentation head takes dense embeddings (emb:type pixel), {what} holds "
                         f"{kind or 'chip'} embeddings")


def classes_of(card: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The card's ``classification:classes``, or None for a head that predicts values."""
    return card["properties"]["mlm:output"][0].get("classification:classes")


def _input(head: Head, model: dict[str, Any], kind: str) -> dict[str, Any]:
    dims = ["batch", "embedding", "height", "width"] if head.dense else ["batch", "embedding"]
    return {"name": "embedding", "bands": [], "description": f"Embeddings of {describe_model(model)}",
            "emb:dimensions": head.dimensions, "emb:type": kind,
            "input": {"shape": [-1, head.dimensions, *((-1, -1) if head.dense else ())], "dim_order": dims,
                      "data_type": "float32"}}


def _output(head: Head, task: str, classes: Sequence[LabelClass] | None) -> dict[str, Any]:
    if classes is None:
        return {"name": "value", "tasks": [task],
                "result": {"shape": [-1, 1], "dim_order": ["batch", "score"], "data_type": "float32"}}
    dims = ["batch", "class", "height", "width"] if head.dense else ["batch", "class"]
    return {"name": "classes", "tasks": [task], "classification:classes": class_objects(classes),
            "result": {"shape": [-1, len(classes), *((-1, -1) if head.dense else ())], "dim_order": dims,
                       "data_type": "float32"},
            "description": "Class probabilities; the class predicted is the most probable"}


def _assets(directory: Path) -> dict[str, dict[str, Any]]:
    described = {
        "weights": ("head.safetensors", SAFETENSORS, ["mlm:model", "weights"], "The head's tensors (safetensors)",
                    {"mlm:artifact_type": "safetensors.torch.save_file"}),
        "config": ("head.json", "application/json", ["metadata"], "The head's configuration", {}),
        "metrics": ("metrics.json", "application/json", ["metadata"], "Held-out scores, and the baseline's", {}),
        "validation": ("validation.parquet", "application/vnd.apache.parquet", ["data"],
                       "Every held-out chip: footprint, label, prediction, fold", {}),
        "confusion": ("confusion.png", "image/png", ["overview"], "Confusion matrix of the held-out chips", {}),
    }
    return {key: file_asset(directory / name, media_type=media, roles=roles, title=title, **extra)
            for key, (name, media, roles, title, extra) in described.items() if (directory / name).exists()}


def _links(items: Sequence[EmbeddingItem], embeddings: str, labels: str) -> list[dict[str, str]]:
    links = [{"rel": "derived_from", "href": redact(_absolute(embeddings)), "type": "application/json",
              "title": "Embeddings the head was trained on"},
             {"rel": "derived_from", "href": redact(_absolute(labels)), "title": "Labels"}]
    backbone = items[0].stac_item.get_single_link("emb:model")
    if backbone is not None:
        links.append({"rel": "emb:model", "href": redact(backbone.get_absolute_href()), "type": "application/json",
                      "title": "Card of the backbone that made the embeddings"})
    return links


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "macro_f1", "miou", "rmse", "mae", "r2")
    return {part: {k: metrics[part][k] for k in keys if k in metrics[part]}
            for part in ("embeddings", "baseline") if metrics.get(part, {}).get("n") is not None}


def _absolute(href: str) -> str:
    return href if "://" in href else str(Path(href).resolve())


def _union(boxes: Sequence[Sequence[float]]) -> list[float] | None:
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[-2] for b in boxes), max(b[-1] for b in boxes)]


def _box(bbox: Sequence[float]) -> dict[str, Any]:
    west, south, east, north = bbox
    return {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                 [west, south]]]}

