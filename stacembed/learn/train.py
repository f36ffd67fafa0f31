"""``train``: a light head on precomputed embeddings, validated on places it never saw.

The outline: open the embeddings (one model) and the labels; bring the labels onto the chips
(``dataset.collect``); split by place (whole spatial blocks, or whole items; ``--folds K`` for
cross-validation), never by random neighbouring chips; fit the head on the training part and
score it on the held-out part; fit the same head on the same split of the baseline input (each
chip's band means, ``baseline``), so the report shows what the embeddings add; then write the
model directory: the head (safetensors), its MLM card, ``metrics.json``, the confusion matrix
as a picture, and the held-out predictions (``validation.parquet``) that every score can be
recomputed from.

With ``--folds K`` the scores are each fold's and their mean, and the head written is fitted
on every labelled chip; with one split, the head written is the one that was scored.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..analysis.derived import catalog_href, one_model
from ..embeddings import BATCH_ROWS, EmbeddingItem, open_embeddings
from ..errors import ConfigError, LabelError, OutputError
from ..layout import atomic_path, write_json
from . import SPLITS, TASKS
from .baseline import BaselineUnavailable, band_means_catalog
from .card import head_card
from .dataset import Samples, collect
from .heads import Head, save_head
from .labels import CLASSES, MISSING, LabelClass, open_labels
from .metrics import classification_metrics, confusion_png, regression_metrics
from .segment import Tiles, collect_tiles
from .split import block_ids, kfold, split_blocks, split_items

log = logging.getLogger("stacembed")

IGNORE = -1  # the target of a chip that takes no part in a fit (validation chips)
PREDICT_ROWS = 8192  # held-out chips predicted at a time


@dataclass(frozen=True)
class TrainOptions:
    """How a head is trained and validated (``stacembed train``'s options, each with its flag)."""

    task: str = "classification"
    head: str | None = None  # linear for chips, decoder for segmentation
    label_column: str | None = None
    min_label_fraction: float = 0.5
    split: str = "blocks"
    block_size: int = 8
    folds: int | None = None
    validation_fraction: float = 0.2
    balance: str | None = "weights"
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    baseline: bool = True
    label_scale: int | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if not 0.0 <= self.min_label_fraction <= 1.0:
            raise ConfigError(f"--min-label-fraction must be within 0..1; got {self.min_label_fraction}")
        if self.block_size < 1:
            raise ConfigError(f"--block-size must be at least 1 chip; got {self.block_size}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds must be at least 2; got {self.folds}")

    @property
    def head_name(self) -> str:
        return self.head or ("decoder" if self.task == "segmentation" else "linear")

    def check_head(self, dimensions: int) -> None:
        """Refuse an unknown head, or one that does not do the task, before anything is read."""
        classes = None if self.task == "regression" else 2
        Head(self.head_name, self.task, dimensions, n_classes=classes, scale=1 if self.task == "segmentation" else None,
             **dict(self.params))

    def fit_options(self) -> dict[str, Any]:
        given = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}
        return {"seed": self.seed, "device": self.device, **{k: v for k, v in given.items() if v is not None}}


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` wrote: the model directory, its card, and the metrics (as in metrics.json)."""

    out: Path
    card: Path
    metrics: dict[str, Any]


def train(embeddings: str | Path, labels: str | Path, *, out: str | Path, options: TrainOptions = TrainOptions(),
          batch_rows: int = BATCH_ROWS, progress: bool = True) -> TrainResult:
    """Train a head on the embeddings of ``embeddings`` against ``labels``; write it to ``out``."""
    out = Path(out)
    _check_free(out)
    items = list(open_embeddings(embeddings))
    model = one_model(items, f"catalog {embeddings}")
    _check_layout(items, options.task)
    options.check_head(model["dimensions"] or 1)
    source = open_labels(labels, column=options.label_column,
                         kind="classification" if options.task == "segmentation" else options.task)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".stacembed-train-", dir=out.parent) as work:
        if options.task == "segmentation":
            samples: Samples | Tiles = collect_tiles(items, source, Path(work), scale=options.label_scale,
                                                     min_fraction=options.min_label_fraction)
        else:
            samples = collect(items, source, Path(work), min_fraction=options.min_label_fraction,
                              batch_rows=batch_rows, progress=progress)
        task = _Task.of(options.task, samples, source.classes)
        folds = _folds(samples, options)
        scored = _cross_validate(samples, task, folds, options, progress)
        metrics = {"embeddings": _summary(scored, task, len(folds))}
        metrics["baseline"] = _baseline(items, samples, task, folds, options, Path(work), progress)
        head = scored.heads[0] if len(folds) == 1 else _fit(samples, task, options, None, progress)
        report = _report(metrics, samples, task, options, folds)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            save_head(head, tmp)
            _write_validation(tmp / "validation.parquet", samples, scored, task)
            write_json(tmp / "metrics.json", report)
            if task.classes is not None:
                confusion_png(np.asarray(metrics["embeddings"]["confusion_matrix"]), task.names,
                              tmp / "confusion.png", f"{options.head_name} head on {model.get('model')} embeddings")
            card = head_card(tmp, head=head, task=task.name, classes=task.classes, model=model, items=items,
                             embeddings=catalog_href(embeddings), labels=str(labels), metrics=report)
    return TrainResult(out, out / card.name, report)


@dataclass(frozen=True)
class _Task:
    """The task as the head sees it: class indices 0..C-1 (mapped from the label values), or values."""

    name: str
    targets: np.ndarray
    classes: tuple[LabelClass, ...] | None

    @classmethod
    def of(cls, name: str, samples: Samples | Tiles, declared: Sequence[LabelClass]) -> _Task:
        """Chips' classes or values, or tiles' label maps, as the head's targets."""
        if name == "regression":
            values = samples.targets.astype("float32")
            if np.unique(values).size < 2:
                raise LabelError("every labelled chip has the same value; there is nothing to learn")
            return cls(name, values, None)
        labels = samples.labels if name == "segmentation" else samples.targets
        labelled = labels != MISSING
        found = np.unique(labels[labelled])
        if found.size < 2:
            what = "pixels" if name == "segmentation" else "chips"
            raise LabelError(f"the labelled {what} hold {'one class only' if found.size else 'no class'}; "
                             f"a {name} head needs two classes or more")
        named = {c.value: c for c in declared}
        classes = tuple(named.get(int(v), LabelClass(int(v), str(int(v)))) for v in found)
        targets = np.full(labels.shape, IGNORE, "int64")
        targets[labelled] = np.searchsorted(found, labels[labelled])
        return cls(name, targets, classes)

    @property
    def n_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes or ()]

    def score(self, truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        if self.classes is None:
            return regression_metrics(truth, predicted)
        return classification_metrics(truth, predicted, self.names, nodata=IGNORE)


@dataclass(frozen=True)
class _Scored:
    """Held-out predictions of every fold (each chip's from the fold that held it out)."""

    predicted: np.ndarray
    fold: np.ndarray
    per_fold: list[dict[str, Any]]
    heads: list[Head]


def _folds(samples: Samples | Tiles, options: TrainOptions) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` masks: one split, or ``--folds`` of them."""
    if options.split == "items":
        groups = samples.item_ids()
    else:
        groups = block_ids(samples.centres[:, 0], samples.centres[:, 1], options.block_size * samples.extent,
                           samples.crs)
    if options.folds:
        return list(kfold(groups, options.folds, seed=options.seed))
    pick = split_items if options.split == "items" else split_blocks
    return [pick(groups, validation_fraction=options.validation_fraction, seed=options.seed)]


def _cross_validate(samples: Samples, task: _Task, folds: list[tuple[np.ndarray, np.ndarray]],
                    options: TrainOptions, progress: bool, vectors: np.ndarray | None = None) -> _Scored:
    vectors = samples.vectors if vectors is None else vectors
    predicted = np.zeros(task.targets.shape, task.targets.dtype)
    fold_of = np.full(len(samples), -1, "int16")
    per_fold, heads = [], []
    for index, (train_mask, validation) in enumerate(folds):
        head = _fit(samples, task, options, train_mask, progress, vectors)
        rows = np.flatnonzero(validation)
        predicted[rows] = _predict_rows(head, vectors, rows)
        fold_of[rows] = index
        per_fold.append(task.score(task.targets[rows], predicted[rows]))
        heads.append(head)
    return _Scored(predicted, fold_of, per_fold, heads)


def _fit(samples: Samples, task: _Task, options: TrainOptions, train_mask: np.ndarray | None, progress: bool,
         vectors: np.ndarray | None = None) -> Head:
    vectors = samples.vectors if vectors is None else vectors
    scale = samples.scale if isinstance(samples, Tiles) else None
    head = Head(options.head_name, task.name, vectors.shape[1], n_classes=task.n_classes, scale=scale,
                **dict(options.params))
    rows = None if train_mask is None else np.flatnonzero(train_mask)
    balance = options.balance if task.classes is not None else None
    ignore = IGNORE if task.classes is not None else None
    return head.fit(vectors, task.targets, rows=rows, balance=balance, ignore_index=ignore, progress=progress,
                    **options.fit_options())


def _predict_rows(head: Head, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The predictions of ``rows`` of ``vectors``, read a slice at a time (never all at once)."""
    parts = [head.predict(np.asarray(vectors[rows[start:start + PREDICT_ROWS]]))
             for start in range(0, len(rows), PREDICT_ROWS)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _summary(scored: _Scored, task: _Task, n_folds: int) -> dict[str, Any]:
    """The held-out scores: over every held-out chip, and per fold when there are several."""
    held = scored.fold >= 0
    summary = task.score(task.targets[held], scored.predicted[held])
    if n_folds > 1:
        summary["folds"] = scored.per_fold
    return summary


def _baseline(items: Sequence[EmbeddingItem], samples: Samples | Tiles, task: _Task,
              folds: list[tuple[np.ndarray, np.ndarray]], options: TrainOptions, work: Path,
              progress: bool) -> dict[str, Any]:
    """The same head, split and scores on each chip's band means; or why there are none."""
    if not options.baseline:
        return {"computed": False, "reason": "not asked for (--no-baseline)"}
    if isinstance(samples, Tiles):
        return {"computed": False, "reason": "dense embeddings have no per-chip band means"}
    try:
        means = _baseline_vectors(items, samples, work / "baseline", progress)
    except BaselineUnavailable as exc:
        log.warning("no baseline: %s", exc)
        return {"computed": False, "reason": str(exc)}
    scored = _cross_validate(samples, task, folds, options, False, vectors=means)
    return {"computed": True, "input": "per-chip band means of the source pixels (stacembed run, band-means model)",
            **_summary(scored, task, len(folds))}


def _baseline_vectors(items: Sequence[EmbeddingItem], samples: Samples, work: Path, progress: bool) -> np.ndarray:
    """The band means of every sample's chip, in the samples' order."""
    catalog = band_means_catalog(items, work, progress=progress)
    wanted = {key: row for row, key in enumerate(samples.join_keys())}
    means: np.ndarray | None = None
    found = np.zeros(len(samples), bool)
    for item in catalog:
        for batch, vectors in item.iter_chips(columns=["source_item", "chip_row", "chip_col"]):
            keys = zip(batch.column("source_item").to_pylist(), batch.column("chip_row").to_pylist(),
                       batch.column("chip_col").to_pylist(), strict=True)
            for index, key in enumerate(keys):
                row = wanted.get(key)
                if row is not None:
                    means = np.zeros((len(samples), vectors.shape[1]), "float32") if means is None else means
                    means[row], found[row] = vectors[index], True
    if means is None or not found.all():
        raise BaselineUnavailable(f"the band-means run kept {int(found.sum())} of the {len(samples)} labelled chips")
    return means


def _report(metrics: dict[str, Any], samples: Samples | Tiles, task: _Task, options: TrainOptions,
            folds: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    counts = [int(validation.sum()) for _, validation in folds]
    report: dict[str, Any] = {
        "task": task.name,
        "head": options.head_name,
        "tiles" if isinstance(samples, Tiles) else "chips": len(samples),
        "labels": {"method": samples.method, "kind": CLASSES if task.classes is not None else "values"},
        "validation": {"split": options.split, "block_size_chips": options.block_size if options.split == "blocks"
                       else None, "folds": options.folds, "validation_fraction": None if options.folds
                       else options.validation_fraction, "held_out": counts, "seed": options.seed},
        **metrics,
    }
    if task.classes is not None:
        report["classes"] = [{"index": i, "value": c.value, "name": c.name} for i, c in enumerate(task.classes)]
    return report


def _write_validation(path: Path, samples: Samples | Tiles, scored: _Scored, task: _Task) -> None:
    """Every held-out chip: its place, its label and the prediction scored (GeoParquet); or every
    held-out tile: its item, its top-left patch, and its label and predicted maps (flattened)."""
    held = np.flatnonzero(scored.fold >= 0)
    if isinstance(samples, Tiles):
        _write_tile_validation(path, samples, scored, task, held)
        return
    keys = samples.keys.take(pa.array(held))
    table = keys.append_column("fold", pa.array(scored.fold[held], pa.int16()))
    truth, predicted = task.targets[held], scored.predicted[held]
    if task.classes is not None:
        values = np.array([c.value for c in task.classes])
        columns = {"label_index": truth, "predicted_index": predicted, "label": values[truth],
                   "predicted": values[predicted]}
    else:
        columns = {"label": truth, "predicted": predicted}
    for name, column in columns.items():
        table = table.append_column(name, pa.array(column))
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    table = table.replace_schema_metadata({"geo": json.dumps(geo)})
    pq.write_table(table, path, compression="zstd")


def _write_tile_validation(path: Path, tiles: Tiles, scored: _Scored, task: _Task, held: np.ndarray) -> None:
    side = task.targets.shape[-1]
    places = [tiles.places[i] for i in held]
    columns = {
        "item": pa.array([p[0] for p in places], pa.string()),
        "patch_row": pa.array([p[1] for p in places], pa.int32()),
        "patch_col": pa.array([p[2] for p in places], pa.int32()),
        "fold": pa.array(scored.fold[held], pa.int16()),
        "side": pa.repeat(pa.scalar(side, pa.int32()), len(held)),
    }
    for name, maps in (("label_index", task.targets[held]), ("predicted_index", scored.predicted[held])):
        flat = pa.array(np.ascontiguousarray(maps, "int16").ravel())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, side * side)
    pq.write_table(pa.table(columns), path, compression="zstd")


def _check_layout(items: Sequence[EmbeddingItem], task: str) -> None:
    """Segmentation takes dense embeddings (patches); chip tasks take either (a patch is a chip)."""
    if task == "segmentation":
        chips = [item.id for item in items if item.kind != "pixel"]
        if chips:
            raise ConfigError(f"segmentation needs dense embeddings (stacembed run --pooling none); item {chips[0]!r} "
                              "holds one vector per chip: use --task classification")


def _check_free(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} exists already; give a new --out for the model directory")

