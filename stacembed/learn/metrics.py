"""Scores of a head on validation chips (or pixels), as JSON-able dicts, and a confusion matrix
drawn as a PNG.

Classification scores all come from one confusion matrix (``np.bincount``; rows are the truth,
columns the prediction), so that a caller may add up matrices batch by batch and score the sum
(``confusion_metrics``). Scores are over the classes given, present or not: a class with no
truth and no prediction has undefined scores (``None`` in JSON, not a misleading 0) and is left
out of the macro averages, as scikit-learn's ``zero_division=np.nan`` does. Labels equal to
``nodata`` are not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, LabelError
from ..layout import atomic_path

# The confusion picture: white to dark blue (the end of ColorBrewer's Blues) by row share.
LIGHT, DARK = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
FONT_SIZE, MIN_CELL, MARGIN, NAME_CHARS = 14, 44, 12, 32


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int, *,
                     nodata: int | None = None) -> np.ndarray:
    """Counts (int64, n_classes x n_classes), rows = truth, columns = prediction; any shape
    of labels (chips or pixels), those whose truth is ``nodata`` left out."""
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    if truth.shape != predicted.shape:
        raise LabelError(f"{truth.size} true labels but {predicted.size} predictions")
    if nodata is not None:
        labelled = truth != nodata
        truth, predicted = truth[labelled], predicted[labelled]
    for name, labels in (("true", truth), ("predicted", predicted)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise LabelError(f"a {name} label is outside the {n_classes} classes (0..{n_classes - 1}): "
                             f"{labels.min() if labels.min() < 0 else labels.max()}")
    flat = truth.astype(np.int64) * n_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], *,
                           nodata: int | None = None) -> dict[str, Any]:
    """Scores of class indices ``predicted`` against ``truth`` (class i named ``class_names[i]``)."""
    return confusion_metrics(confusion_matrix(truth, predicted, len(class_names), nodata=nodata), class_names)


def confusion_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """``n``, ``accuracy``, ``macro_f1``, ``miou``, per class (``index``, ``name``, ``support``,
    ``precision``, ``recall``, ``f1``, ``iou``) and the ``confusion_matrix``, from its counts."""
    matrix = _square(matrix, class_names)
    total = int(matrix.sum())
    if not total:
        raise LabelError("no labelled chip or pixel to score")
    tp = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    union = support + predicted - tp
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1, iou = _ratio(2 * tp, support + predicted), _ratio(tp, union)
    classes = [{"index": i, "name": str(name), "support": int(support[i]), "precision": precision[i],
                "recall": recall[i], "f1": f1[i], "iou": iou[i]} for i, name in enumerate(class_names)]
    return {"n": total, "accuracy": float(tp.sum() / total), "macro_f1": _mean(f1), "miou": _mean(iou),
            "classes": classes, "confusion_matrix": matrix.tolist()}


def regression_metrics(truth: np.ndarray, predicted: np.ndarray, *, nodata: float | None = None) -> dict[str, Any]:
    """``n``, ``rmse``, ``mae``, ``r2`` (None when the truth is constant) and ``bias`` (mean of
    prediction - truth), over the values whose truth is finite and not ``nodata``."""
    truth = np.asarray(truth, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if truth.shape != predicted.shape:
        raise LabelError(f"{truth.size} true values but {predicted.size} predictions")
    labelled = np.isfinite(truth) & (truth != nodata if nodata is not None else True)
    truth, predicted = truth[labelled], predicted[labelled]
    if not truth.size:
        raise LabelError("no labelled chip or pixel to score")
    error = predicted - truth
    spread = float(((truth - truth.mean()) ** 2).sum())
    return {"n": int(truth.size), "rmse": float(np.sqrt((error ** 2).mean())), "mae": float(np.abs(error).mean()),
            "r2": 1.0 - float((error ** 2).sum()) / spread if spread else None, "bias": float(error.mean())}


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Draw ``matrix`` into a PNG at ``path`` (atomically): each cell shaded by its share of the
    row (the recall of the row's class, on the diagonal) with its count written in it, so that
    rare and common classes read alike; truth down the side, predictions along the top."""
    matrix = _square(matrix, class_names)
    font = _font(FONT_SIZE)
    names = [_short(str(name)) for name in class_names]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width_of(text: str) -> int:
        return int(np.ceil(measure.textlength(text, font=font)))

    line = FONT_SIZE + 6
    cell = max(MIN_CELL, max(width_of(str(v)) for v in matrix.ravel()) + 10)
    names_width = max(width_of(name) for name in names)
    left = MARGIN + line + names_width + MARGIN  # "truth", the row names
    top = MARGIN + line + line + names_width + MARGIN  # title, "predicted", the column names
    size = len(names) * cell
    image = Image.new("RGB", (max(left + size, width_of(title) + 2 * MARGIN) + MARGIN, top + size + MARGIN), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    draw.text((left + size / 2, MARGIN + line + line / 2), "predicted", fill="black", font=font, anchor="mm")
    _paste_vertical(image, "truth", (MARGIN, top + size // 2 - width_of("truth") // 2), font)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i, name in enumerate(names):
        draw.text((left - MARGIN, top + i * cell + cell / 2), name, fill="black", font=font, anchor="rm")
        _paste_vertical(image, name, (left + i * cell + (cell - line) // 2, top - MARGIN - width_of(name)), font)
        for j in range(len(names)):
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=tuple(int(c) for c in LIGHT + (DARK - LIGHT) * shares[i, j]), outline="#bbbbbb")
            draw.text((box[0] + cell / 2, box[1] + cell / 2), str(matrix[i, j]), font=font, anchor="mm",
                      fill="white" if shares[i, j] > 0.5 else "black")
    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")


def _square(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)) or not len(class_names):
        raise ConfigError(f"a confusion matrix of {len(class_names)} classes is square with as many rows, "
                          f"got shape {matrix.shape}")
    return matrix.astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> list[float | None]:
    return [float(a / b) if b else None for a, b in zip(numerator, denominator, strict=True)]


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font; its small bitmap font before Pillow 10.1."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _paste_vertical(image: Image.Image, text: str, at: tuple[int, int],
                    font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    """Write ``text`` reading upwards with its top-left corner at ``at`` (Pillow draws text
    horizontally only: draw it on its own transparent layer, turned a quarter)."""
    _, _, right, bottom = font.getbbox(text)
    layer = Image.new("RGBA", (right + 2, bottom + 2), (255, 255, 255, 0))
    ImageDraw.Draw(layer).text((0, 0), text, fill="black", font=font)
    turned = layer.rotate(90, expand=True)
    image.paste(turned, at, turned)
