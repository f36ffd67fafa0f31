"""stacembed.learn.heads on synthetic problems whose answer is known by construction: separable
classes, a linear function, a dense map whose class is the sign of the first embedding channel;
then determinism, safetensors round trips (never unpickling), class balance and refusals."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from stacembed.errors import ConfigError, LabelError, ModelError
from stacembed.learn.heads import HEADS, Head, load_head, register_head, save_head

D = 16
FAST = {"device": "cpu", "progress": False}


def blobs(seed: int = 0, n: int = 600, n_classes: int = 3, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around well separated centres (separable up to ``spread``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (n_classes, D))
    y = rng.integers(0, n_classes, n)
    return (centres[y] + rng.normal(0, spread, (n, D))).astype(np.float32), y


def dense_maps(seed: int = 0, n: int = 8, size: int = 6, scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Patch embeddings (n, 8, size, size) and label maps (n, size*scale, size*scale): the class
    of a label pixel is the sign of its patch's first channel."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8, size, size)).astype(np.float32)
    y = np.kron((X[:, 0] > 0).astype(np.int64), np.ones((scale, scale), np.int64))
    return X, y


def trained(name: str, task: str = "classification", seed: int = 0, **fit) -> tuple[Head, np.ndarray, np.ndarray]:
    X, y = blobs()
    head = Head(name, task, D, n_classes=3 if task == "classification" else None)
    return head.fit(X[:400], y[:400], seed=seed, epochs=fit.pop("epochs", 20), lr=1e-2, **FAST, **fit), X, y


@pytest.mark.parametrize("name", ["knn", "linear", "mlp"])
def test_separable_classes_are_learnt(name):
    head, X, y = trained(name)
    assert (head.predict(X[400:]) == y[400:]).mean() > 0.97
    proba = head.predict_proba(X[400:])
    assert proba.shape == (200, 3) and proba.dtype == np.float32
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert (proba.argmax(axis=1) == head.predict(X[400:])).all()


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_regression_recovers_a_linear_function(name):
    rng = np.random.default_rng(1)
    X = rng.normal(3, 2, (800, D)).astype(np.float32)
    y = (X @ rng.normal(size=D) + 100).astype(np.float32)  # off-centre, in its own unit
    head = Head(name, "regression", D).fit(X[:600], y[:600], epochs=60, lr=1e-2, **FAST)
    predicted = head.predict(X[600:])
    assert predicted.shape == (200,) and predicted.dtype == np.float32
    r2 = 1 - ((predicted - y[600:]) ** 2).sum() / ((y[600:] - y[600:].mean()) ** 2).sum()
    assert r2 > (0.99 if name == "linear" else 0.95)


def test_knn_memorises_its_training_set():
    X, y = blobs(n=100)
    values = np.linspace(0, 1, 100, dtype=np.float32)
    assert (Head("knn", "classification", D, n_classes=3, k=1).fit(X, y, **FAST).predict(X) == y).all()
    assert np.allclose(Head("knn", "regression", D, k=1).fit(X, values, **FAST).predict(X), values)
    many = Head("knn", "regression", D, k=500).fit(X, values, **FAST)  # k beyond the training set: all of it
    assert np.allclose(many.predict(X[:3]), values.mean())


def test_segmentation_decoder_overfits_a_dense_map():
    X, y = dense_maps()
    head = Head("decoder", "segmentation", 8, n_classes=2, scale=4, width=32)
    head.fit(X, y, epochs=60, lr=1e-2, batch_size=4, **FAST)
    predicted = head.predict(X)
    assert predicted.shape == y.shape == (8, 24, 24) and predicted.dtype == np.int64
    assert (predicted == y).mean() > 0.95
    assert head.predict_proba(X[:2]).shape == (2, 2, 24, 24)


def test_decoder_reaches_any_scale():
    """A scale that is not a power of two ends in a bilinear resize to the exact size."""
    X, _ = dense_maps(n=2, size=3)
    y = np.zeros((2, 18, 18), np.int64)
    y[:, :9] = 1
    head = Head("decoder", "segmentation", 8, n_classes=2, scale=6, width=8).fit(X, y, epochs=1, **FAST)
    assert head.predict(X).shape == (2, 18, 18)


@pytest.mark.parametrize("name", ["knn", "linear", "mlp"])
def test_same_seed_same_predictions(name):
    first, X, _ = trained(name, seed=7)
    second, _, _ = trained(name, seed=7)
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))
    if name != "knn":  # knn draws nothing at random
        other, _, _ = trained(name, seed=8)
        assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))


def test_same_seed_same_decoder():
    X, y = dense_maps()
    fit = {"epochs": 3, "batch_size": 3, "seed": 5, "balance": "sampling", **FAST}
    first = Head("decoder", "segmentation", 8, n_classes=2, scale=4).fit(X, y, **fit).predict_proba(X)
    second = Head("decoder", "segmentation", 8, n_classes=2, scale=4).fit(X, y, **fit).predict_proba(X)
    assert np.array_equal(first, second)


def test_fitting_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trained("mlp", epochs=1)
    assert torch.equal(torch.rand(3), expected)


def no_unpickling(*args, **kwargs):
    raise AssertionError("a head was unpickled")


@pytest.mark.parametrize("name", ["knn", "linear", "mlp", "decoder"])
@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_save_load_round_trip(tmp_path, monkeypatch, name, task):
    if task not in HEADS[name].tasks:
        return
    if task == "segmentation":
        X, y = dense_maps(n=3)
        head = Head(name, task, 8, n_classes=2, scale=4).fit(X, y, epochs=2, **FAST)
    else:
        X, y = blobs(n=200)
        y = y if task == "classification" else X[:, 0] * 3
        head = Head(name, task, D, n_classes=3 if task == "classification" else None).fit(X, y, epochs=2, **FAST)
    save_head(head, tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["head.json", "head.safetensors"]
    data = (tmp_path / "head" / "head.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])  # safetensors: length, JSON header, bytes
    assert set(header) - {"__metadata__"} == set(head.state_dict())
    config = json.loads((tmp_path / "head" / "head.json").read_text())
    assert config == head.config

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    loaded = load_head(tmp_path / "head")
    assert np.array_equal(loaded.predict(X), head.predict(X))
    if task != "regression":
        assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert loaded.config == head.config


def test_config_is_json_and_complete():
    head, _, _ = trained("mlp", balance="weights", epochs=2)
    config = json.loads(json.dumps(head.config, allow_nan=False))
    assert list(config) == ["version", "head", "task", "dimensions", "n_classes", "scale", "params",
                            "standardise", "training"]
    assert config["params"] == {"hidden": 256, "dropout": 0.1}
    assert config["standardise"] is True
    training = config["training"]
    assert (training["seed"], training["samples"], training["epochs"], training["balance"]) == (0, 400, 2, "weights")
    assert len(training["class_weights"]) == 3 and training["loss"] > 0
    assert set(head.state_dict()) >= {"input_mean", "input_std"}


def skewed(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping classes, 95% / 5%."""
    rng = np.random.default_rng(seed)
    y = (rng.random(2000) < 0.05).astype(np.int64)
    return (rng.normal(0, 1, (2000, D)) + y[:, None] * 0.25).astype(np.float32), y


@pytest.mark.parametrize("balance", ["weights", "sampling"])
def test_balance_shifts_predictions_to_the_rare_class(balance):
    X, y = skewed()
    fit = {"epochs": 10, "lr": 1e-2, **FAST}
    plain = Head("linear", "classification", D, n_classes=2).fit(X, y, **fit).predict(X)
    balanced = Head("linear", "classification", D, n_classes=2).fit(X, y, balance=balance, **fit).predict(X)
    assert (balanced[y == 1] == 1).mean() > (plain[y == 1] == 1).mean() + 0.3  # recall of the rare class
    assert balanced.sum() > max(3 * plain.sum(), 100)


def test_class_weights_weigh_knn_votes():
    X, y = skewed()
    plain = Head("knn", "classification", D, n_classes=2, k=15).fit(X, y, **FAST).predict(X)
    weighted = Head("knn", "classification", D, n_classes=2, k=15).fit(X, y, class_weights=[1, 19], **FAST)
    assert weighted.predict(X).sum() > max(3 * plain.sum(), 100)
    assert weighted.config["training"]["class_weights"] == [1.0, 19.0]


def test_ignored_labels_take_no_part():
    X, y = blobs(n=300)
    marked = np.where(np.arange(300) % 3 == 0, -1, y)
    head = Head("knn", "classification", D, n_classes=3, k=1).fit(X, marked, ignore_index=-1, **FAST)
    assert head.config["training"]["samples"] == 200
    maps, labels = dense_maps(n=3)
    labels[0] = 255  # a map without any label is left out
    labels[1, :4] = 255
    decoder = Head("decoder", "segmentation", 8, n_classes=2, scale=4)
    assert decoder.fit(maps, labels, ignore_index=255, epochs=1, **FAST).config["training"]["samples"] == 2


def test_other_dimensions_are_refused_in_one_line():
    head, X, _ = trained("linear", epochs=1)
    with pytest.raises(ModelError, match="takes 16-dimensional embeddings, not 32") as error:
        head.predict(np.zeros((4, 32), np.float32))
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="not 768"):
        head.check_input(768)
    with pytest.raises(ModelError, match=r"\(n, D\) vectors"):
        head.predict(np.zeros((2, D, 3, 3), np.float32))


def test_predict_on_no_vectors():
    head, _, _ = trained("knn")
    assert head.predict(np.zeros((0, D), np.float32)).shape == (0,)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("svm", "classification", D), {"n_classes": 2}, "unknown head 'svm'"),
    (("decoder", "classification", D), {"n_classes": 2}, "does segmentation, not 'classification'"),
    (("linear", "classification", D), {}, "n_classes must be an integer >= 2"),
    (("linear", "regression", D), {"n_classes": 2}, "n_classes does not apply"),
    (("mlp", "classification", D), {"n_classes": 2, "dropout": 1.0}, r"dropout must be a fraction in \[0, 1\)"),
    (("mlp", "classification", D), {"n_classes": 2, "hiden": 3}, "no parameter hiden .*hidden, dropout"),
    (("knn", "classification", D), {"n_classes": 2, "k": 0}, "k must be an integer >= 1"),
    (("decoder", "segmentation", D), {"n_classes": 2}, "scale must be an integer >= 1"),
])
def test_bad_heads_are_refused(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Head(*args, **kwargs)


def test_bad_training_is_refused():
    X, y = blobs(n=50)
    head = Head("linear", "classification", D, n_classes=3)
    with pytest.raises(ConfigError, match="balance must be one of"):
        head.fit(X, y, balance="oversample", **FAST)
    with pytest.raises(ConfigError, match="either balance or class_weights"):
        head.fit(X, y, balance="weights", class_weights=[1, 2, 3], **FAST)
    with pytest.raises(ConfigError, match="3 positive numbers"):
        head.fit(X, y, class_weights=[1, 2], **FAST)
    with pytest.raises(ConfigError, match="regression head has none"):
        Head("linear", "regression", D).fit(X, X[:, 0], balance="weights", **FAST)
    with pytest.raises(ConfigError, match="balance it with weights"):
        Head("knn", "classification", D, n_classes=3).fit(X, y, balance="sampling", **FAST)
    with pytest.raises(LabelError, match="one class only"):
        head.fit(X, np.ones(50, np.int64), **FAST)
    with pytest.raises(LabelError, match="class index 3 is outside"):
        head.fit(X, np.full(50, 3), **FAST)
    with pytest.raises(LabelError, match="must be integers"):
        head.fit(X, y.astype(float), **FAST)
    with pytest.raises(LabelError, match=r"shape \(49,\)"):
        head.fit(X, y[:49], **FAST)
    with pytest.raises(LabelError, match="NaN"):
        Head("linear", "regression", D).fit(X, np.full(50, np.nan), **FAST)
    with pytest.raises(ModelError, match="not trained yet"):
        head.predict(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_refused_without_a_gpu():
    X, y = blobs(n=50)
    with pytest.raises(ConfigError, match="--device cuda"):
        Head("linear", "classification", D, n_classes=3).fit(X, y, device="cuda", progress=False)


def test_unusable_saved_heads_are_refused(tmp_path):
    head, _, _ = trained("linear", epochs=1)
    with pytest.raises(ModelError, match="head config"):
        Head.from_state({**head.config, "head": "svm"}, head.state_dict())
    with pytest.raises(ModelError, match="version"):
        Head.from_state({**head.config, "version": 99}, head.state_dict())
    with pytest.raises(ModelError, match="do not match its config"):
        Head.from_state({**head.config, "dimensions": 32}, head.state_dict())
    with pytest.raises(ModelError, match="cannot read the head config"):
        load_head(tmp_path / "nowhere")
    save_head(head, tmp_path / "head")
    (tmp_path / "head" / "head.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ModelError, match="cannot read the head's tensors"):
        load_head(tmp_path / "head")


def test_a_head_is_added_in_one_place():
    @register_head("ridge-free", tasks=("regression",), params={"scale_out": 2})
    def build(head):
        return torch.nn.Linear(head.dimensions, head.outputs, bias=False)

    try:
        X = np.random.default_rng(0).normal(size=(100, D)).astype(np.float32)
        head = Head("ridge-free", "regression", D).fit(X, X[:, 0], epochs=2, **FAST)
        assert head.config["params"] == {"scale_out": 2}
        assert head.predict(X).shape == (100,)
    finally:
        del HEADS["ridge-free"]
