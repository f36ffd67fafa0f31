"""stacembed.learn.metrics: scores checked against scikit-learn's on random labels (absent
classes and nodata among them), and the confusion PNG read back with Pillow."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from stacembed.errors import ConfigError, LabelError
from stacembed.learn.metrics import (
    classification_metrics,
    confusion_matrix,
    confusion_metrics,
    confusion_png,
    regression_metrics,
)

NODATA = 255


def random_labels(rng: np.random.Generator, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth and predictions over ``n_classes`` of which some never occur, some only in the
    truth or only in the predictions, with nodata among the truth."""
    used = rng.choice(n_classes, size=rng.integers(1, n_classes + 1), replace=False)
    n = int(rng.integers(1, 300))
    truth = rng.choice(used, n)
    predicted = np.where(rng.random(n) < 0.6, truth, rng.choice(rng.permutation(used)[:max(1, len(used) - 1)], n))
    predicted = np.where(rng.random(n) < 0.05, rng.integers(0, n_classes, n), predicted)
    truth = np.where(rng.random(n) < 0.1, NODATA, truth)
    return truth, predicted


def close(mine: float | None, theirs: float) -> bool:
    """Equal to 1e-12, an undefined score (None) matching scikit-learn's NaN."""
    return np.isnan(theirs) if mine is None else abs(mine - theirs) < 1e-12


@pytest.mark.parametrize("seed", range(60))
def test_classification_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    truth, predicted = random_labels(rng, n_classes)
    names = [f"class {i}" for i in range(n_classes)]
    labelled = truth != NODATA
    if not labelled.any():
        with pytest.raises(LabelError, match="no labelled"):
            classification_metrics(truth, predicted, names, nodata=NODATA)
        return
    scores = classification_metrics(truth, predicted, names, nodata=NODATA)
    t, p, labels = truth[labelled], predicted[labelled], list(range(n_classes))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the undefined scores it is asked about
        precision, recall, f1, support = sk.precision_recall_fscore_support(
            t, p, labels=labels, average=None, zero_division=np.nan)
        macro_f1 = sk.f1_score(t, p, labels=labels, average="macro", zero_division=np.nan)
    # jaccard_score has no zero_division=nan: the undefined IoUs are those of classes neither
    # true nor predicted, which its 0s stand for; mIoU is over the classes that occur.
    occurring = np.union1d(t, p)
    ious = sk.jaccard_score(t, p, labels=labels, average=None, zero_division=0)
    iou = np.where(np.isin(labels, occurring), ious, np.nan)
    miou = sk.jaccard_score(t, p, labels=occurring, average="macro")
    assert scores["n"] == labelled.sum()
    assert close(scores["accuracy"], sk.accuracy_score(t, p))
    assert close(scores["macro_f1"], macro_f1)
    assert close(scores["miou"], miou)
    assert scores["confusion_matrix"] == sk.confusion_matrix(t, p, labels=labels).tolist()
    for i, row in enumerate(scores["classes"]):
        assert (row["index"], row["name"], row["support"]) == (i, names[i], support[i])
        for key, theirs in (("precision", precision), ("recall", recall), ("f1", f1), ("iou", iou)):
            assert close(row[key], theirs[i]), (key, i, row[key], theirs[i])


def test_classification_output_is_json_with_a_stable_key_order():
    scores = classification_metrics([0, 1, 1, 2], [0, 1, 0, 0], ["a", "b", "c"])
    assert list(scores) == ["n", "accuracy", "macro_f1", "miou", "classes", "confusion_matrix"]
    assert list(scores["classes"][0]) == ["index", "name", "support", "precision", "recall", "f1", "iou"]
    assert json.loads(json.dumps(scores, allow_nan=False)) == scores
    assert scores["classes"][2]["precision"] is None  # never predicted: undefined, not 0


def test_confusion_matrices_add_up_batch_by_batch():
    rng = np.random.default_rng(1)
    truth, predicted = rng.integers(0, 4, (2, 500))
    whole = confusion_matrix(truth, predicted, 4)
    parts = confusion_matrix(truth[:200], predicted[:200], 4) + confusion_matrix(truth[200:], predicted[200:], 4)
    assert (whole == parts).all()
    assert confusion_metrics(parts, list("abcd")) == classification_metrics(truth, predicted, list("abcd"))


def test_dense_maps_are_scored_per_pixel():
    truth = np.array([[[0, 1], [NODATA, 1]]])
    predicted = np.array([[[0, 0], [1, 1]]])
    scores = classification_metrics(truth, predicted, ["a", "b"], nodata=NODATA)
    assert scores["n"] == 3
    assert scores["confusion_matrix"] == [[1, 0], [1, 1]]


def test_bad_labels_are_refused():
    with pytest.raises(LabelError, match="outside the 2 classes"):
        classification_metrics([0, 2], [0, 1], ["a", "b"])
    with pytest.raises(LabelError, match="predicted label"):
        classification_metrics([0, 1], [0, 5], ["a", "b"])
    with pytest.raises(LabelError, match="3 true labels but 2"):
        classification_metrics([0, 1, 1], [0, 1], ["a", "b"])
    with pytest.raises(ConfigError, match="square"):
        confusion_metrics(np.zeros((2, 3)), ["a", "b"])


@pytest.mark.parametrize("seed", range(20))
def test_regression_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    truth = rng.normal(10, 3, n)
    predicted = truth + rng.normal(0.5, 1, n)
    truth[rng.random(n) < 0.1] = np.nan
    truth[rng.random(n) < 0.1] = -9999.0
    scores = regression_metrics(truth, predicted, nodata=-9999.0)
    kept = np.isfinite(truth) & (truth != -9999.0)
    t, p = truth[kept], predicted[kept]
    assert list(scores) == ["n", "rmse", "mae", "r2", "bias"]
    assert scores["n"] == kept.sum()
    assert abs(scores["rmse"] - np.sqrt(sk.mean_squared_error(t, p))) < 1e-9
    assert abs(scores["mae"] - sk.mean_absolute_error(t, p)) < 1e-9
    assert abs(scores["bias"] - np.mean(p - t)) < 1e-9
    if len(t) > 1:
        assert abs(scores["r2"] - sk.r2_score(t, p)) < 1e-9


def test_regression_edge_cases():
    assert regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"] is None  # constant truth: R² undefined
    with pytest.raises(LabelError, match="no labelled"):
        regression_metrics([np.nan], [1.0])


def test_confusion_png(tmp_path):
    matrix = np.array([[50, 3, 0], [4, 120, 7], [0, 0, 9]])
    names = ["water", "forest", "a class with a name far longer than any cell of the picture"]
    path = tmp_path / "confusion.png"
    confusion_png(matrix, names, path, "validation: mlp head")
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.width > 200 and image.height > 200
    pixels = np.asarray(image).reshape(-1, 3)
    assert (pixels == (255, 255, 255)).all(axis=1).mean() > 0.3  # a white page ...
    assert (pixels == (8, 48, 107)).all(axis=1).any()  # ... with a cell holding its whole row (dark)
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary left
    with pytest.raises(ConfigError):
        confusion_png(matrix, names[:2], path, "x")
