"""Light heads trained on precomputed embeddings: k nearest neighbours, a linear probe, a
one-hidden-layer MLP, and a small decoder for dense (patch) embeddings.

A foundation model's embeddings are worth having when little is needed on top of them: a probe
says how much of a task they already hold, and a light head is all most maps need. So the heads
here are small, train in minutes on a CPU, and are trained in mini-batches (memory bounded by
the batch, on the CPU or a GPU alike).

One registry, ``HEADS`` (filled by ``register_head``, in the manner of timm's model registry),
names every head: the tasks it serves, its hyperparameters and their defaults, how its network
is built, whether it is trained by gradient descent or memorises the training set, and whether
its inputs are standardised. Adding a head is one decorated builder.

``Head`` is the one object the rest of stacembed handles: ``fit``, ``predict``,
``predict_proba``, a JSON-able ``config`` and a ``state_dict`` of tensors, rebuilt by
``Head.from_state``. ``save_head`` / ``load_head`` keep a head as ``head.safetensors`` and
``head.json``: loading a head never unpickles anything.

Determinism: initialisation and dropout draw from torch's RNG seeded with ``seed`` (forked, so
that the caller's RNG is left alone), the order of the mini-batches from a ``torch.Generator``
seeded alike; the same data and seed give bit-identical predictions on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..embed import select_device
from ..errors import ConfigError, LabelError, ModelError
from ..layout import atomic_path, write_json

TASKS = ("classification", "regression", "segmentation")
BALANCES = ("weights", "sampling")
CONFIG_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "head.safetensors", "head.json"
EPOCHS, LR, WEIGHT_DECAY = 50, 3e-3, 1e-4
VECTOR_BATCH, MAP_BATCH = 256, 16  # default batch sizes: chip vectors, patch embedding maps
MIN_WIDTH = 16  # the decoder's narrowest stage


@dataclass(frozen=True)
class HeadKind:
    """What the registry knows of a head: ``build`` makes its network for a ``Head``; integer
    ``params`` count things (>= 1), float ones are fractions in [0, 1)."""

    tasks: tuple[str, ...]
    params: dict[str, Any]
    build: Callable[[Head], nn.Module]
    trained: bool  # fitted by gradient descent; else it memorises the training set
    standardise: bool  # inputs scaled by the training set's mean and standard deviation


HEADS: dict[str, HeadKind] = {}


def register_head(name: str, *, tasks: tuple[str, ...], params: dict[str, Any], trained: bool = True,
                  standardise: bool = True) -> Callable[[Callable[[Head], nn.Module]], Callable[[Head], nn.Module]]:
    """Add the decorated builder to ``HEADS`` under ``name``."""
    def register(build: Callable[[Head], nn.Module]) -> Callable[[Head], nn.Module]:
        HEADS[name] = HeadKind(tuple(tasks), dict(params), build, trained, standardise)
        return build
    return register


class Neighbours(nn.Module):
    """The k training vectors nearest by cosine similarity vote (weighted by class) or average.

    Its weights are the training set itself (unit vectors and targets), so that a saved knn head
    is as self-contained as a trained one."""

    def __init__(self, dimensions: int, n_classes: int | None, k: int) -> None:
        super().__init__()
        self.k, self.n_classes = k, n_classes
        self.register_buffer("vectors", torch.zeros(0, dimensions))
        self.register_buffer("targets", torch.zeros(0, dtype=torch.int64 if n_classes else torch.float32))
        if n_classes:
            self.register_buffer("class_weights", torch.ones(n_classes))

    def memorise(self, vectors: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None) -> None:
        self.vectors = F.normalize(vectors, dim=1)
        self.targets = targets.to(self.targets.dtype)
        if class_weights is not None:
            self.class_weights = class_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(x, dim=1) @ self.vectors.T
        nearest = self.targets[similarity.topk(min(self.k, len(self.vectors)), dim=1).indices]
        if not self.n_classes:
            return nearest.mean(dim=1)
        votes = (F.one_hot(nearest, self.n_classes).to(x.dtype) * self.class_weights).sum(dim=1)
        return votes / votes.sum(dim=1, keepdim=True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """The memory is as long as the training set was: size it from the tensors loaded (only
        its length, so that vectors of another dimension are still refused)."""
        for name in ("vectors", "targets"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                current = getattr(self, name)
                setattr(self, name, current.new_empty((len(stored), *current.shape[1:])))
        super()._load_from_state_dict(state_dict, prefix, *args)


class Decoder(nn.Module):
    """Patch embeddings (D, h, w) -> class logits at the labels' resolution (h*scale, w*scale).

    A small FCN-style decoder, in the spirit of TerraTorch's downstream heads: a 1x1 projection,
    then x2 stages (bilinear upsampling, 3x3 convolution, batch norm, ReLU) halving the width
    down to ``MIN_WIDTH``, a bilinear resize when ``scale`` is not a power of two, and a 1x1
    classifier. It learns how a patch's label varies inside it from the neighbouring patches."""

    def __init__(self, dimensions: int, n_classes: int, scale: int, width: int) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(dimensions, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
        for _ in range(scale.bit_length() - 1):
            narrower = max(min(channels, MIN_WIDTH), channels // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(channels, narrower, 3, padding=1, bias=False), nn.BatchNorm2d(narrower), nn.ReLU()]
            channels = narrower
        self.features = nn.Sequential(*layers)
        self.classify = nn.Conv2d(channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        features = self.features(x)
        if features.shape[-2:] != size:
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return self.classify(features)


@register_head("knn", tasks=("classification", "regression"), params={"k": 5}, trained=False, standardise=False)
def _knn(head: Head) -> nn.Module:
    return Neighbours(head.dimensions, head.n_classes, head.params["k"])


@register_head("linear", tasks=("classification", "regression"), params={})
def _linear(head: Head) -> nn.Module:
    return nn.Linear(head.dimensions, head.outputs)


@register_head("mlp", tasks=("classification", "regression"), params={"hidden": 256, "dropout": 0.1})
def _mlp(head: Head) -> nn.Module:
    hidden = head.params["hidden"]
    return nn.Sequential(nn.Linear(head.dimensions, hidden), nn.ReLU(), nn.Dropout(head.params["dropout"]),
                         nn.Linear(hidden, head.outputs))


@register_head("decoder", tasks=("segmentation",), params={"width": 64})
def _decoder(head: Head) -> nn.Module:
    return Decoder(head.dimensions, head.n_classes, head.scale, head.params["width"])


class _Network(nn.Module):
    """A head's body with what it learnt of its training set around it: the inputs' mean and
    standard deviation, and for regression the targets' (so that one learning rate suits any
    embedding scale and any unit of the target)."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.body = head.kind.build(head)
        self.standardise, self.trained = head.kind.standardise, head.kind.trained
        self.regression = head.task == "regression"
        if self.standardise:
            shape = (head.dimensions, 1, 1) if head.dense else (head.dimensions,)
            self.register_buffer("input_mean", torch.zeros(shape))
            self.register_buffer("input_std", torch.ones(shape))
        if self.regression and self.trained:
            self.register_buffer("target_mean", torch.zeros(()))
            self.register_buffer("target_std", torch.ones(()))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """What the loss is computed on: logits, or values on the standardised target scale."""
        if self.standardise:
            x = (x - self.input_mean) / self.input_std
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (on dim 1), or values in the target's own unit."""
        out = self.scores(x)
        if not self.trained:
            return out
        if self.regression:
            return out.squeeze(1) * self.target_std + self.target_mean
        return out.softmax(dim=1)


class Head:
    """A light head for one task on embeddings of one dimension; see ``HEADS`` for ``name``.

    ``n_classes`` is for classification and segmentation, ``scale`` (label pixels per patch side)
    for segmentation; ``params`` override the head's hyperparameters."""

    def __init__(self, name: str, task: str, dimensions: int, *, n_classes: int | None = None,
                 scale: int | None = None, **params: Any) -> None:
        if name not in HEADS:
            raise ConfigError(f"unknown head {name!r}; known: {', '.join(HEADS)}")
        self.name, self.kind = name, HEADS[name]
        if task not in self.kind.tasks:
            raise ConfigError(f"the {name} head does {' and '.join(self.kind.tasks)}, not {task!r}")
        self.task, self.dimensions = task, _count("dimensions", dimensions)
        self.n_classes = _count("n_classes", n_classes, 2) if task != "regression" else _absent("n_classes", n_classes)
        self.scale = _count("scale", scale) if self.dense else _absent("scale", scale)
        self.params = _params(name, self.kind.params, params)
        self.training: dict[str, Any] | None = None
        self.network: _Network | None = None
        self.device = torch.device("cpu")

    @property
    def dense(self) -> bool:
        """Whether inputs are maps of patch embeddings (n, D, h, w) rather than vectors (n, D)."""
        return self.task == "segmentation"

    @property
    def outputs(self) -> int:
        return self.n_classes or 1

    @property
    def config(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-able: enough for ``from_state`` to rebuild the head."""
        return {"version": CONFIG_VERSION, "head": self.name, "task": self.task, "dimensions": self.dimensions,
                "n_classes": self.n_classes, "scale": self.scale, "params": dict(self.params),
                "standardise": self.kind.standardise, "training": self.training}

    def check_input(self, dimensions: int) -> None:
        """Refuse embeddings of another dimension (another model, or another layer) in one line."""
        if dimensions != self.dimensions:
            raise ModelError(f"this {self.name} head takes {self.dimensions}-dimensional embeddings, not "
                             f"{dimensions}: use a head trained on embeddings of the same model and layer")

    def to(self, device: str | torch.device) -> Head:
        """Move the head to ``device`` (``auto``, ``cpu``, ``cuda``, ``mps`` as ``--device``)."""
        self.device = select_device(device) if isinstance(device, str) else device
        if self.network is not None:
            self.network.to(self.device)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray, *, balance: str | None = None,
            class_weights: list[float] | None = None, ignore_index: int | None = None,
            rows: np.ndarray | None = None, seed: int = 0, epochs: int = EPOCHS, batch_size: int | None = None,
            lr: float = LR, weight_decay: float = WEIGHT_DECAY, device: str | torch.device = "auto",
            progress: bool = True) -> Head:
        """Train on embeddings ``X`` ((n, D), or (n, D, h, w) for segmentation) and targets ``y``
        (class indices (n,) or (n, h*scale, w*scale), or values (n,)).

        Labels equal to ``ignore_index`` take no part, nor samples outside ``rows`` (indices,
        when given: a split's training rows of one array, which is never copied whole). Class
        imbalance: ``balance="weights"`` weighs the loss (knn: the votes) by inverse class
        frequency, ``"sampling"`` draws mini-batches with replacement so that classes come
        equally often; ``class_weights`` gives the weights instead. Everything random comes from ``seed``."""
        X = self._inputs(X)
        batch_size = _count("batch_size", self._batch_size if batch_size is None else batch_size)
        _check_training(seed, epochs, lr, weight_decay)
        labelled, y = self._targets(y, X.shape, ignore_index)
        rows = labelled if rows is None else np.intersect1d(labelled, rows)
        weights = self._class_weights(y[rows], ignore_index, balance, class_weights)
        self.to(device)
        with _seeded(seed, self.device):
            self.network = _Network(self).to(self.device)
            self.training = {"seed": seed, "samples": len(rows), "balance": balance,
                             "class_weights": None if weights is None else weights.tolist(),
                             "ignore_index": ignore_index, "device": self.device.type}
            if self.kind.trained:
                self._standardise(X, y, rows, batch_size)
                sampling = _sample_weights(y[rows], weights, ignore_index) if balance == "sampling" else None
                loss = self._descend(X, y, rows, sampling, None if sampling is not None else weights,
                                     ignore_index, seed, epochs, batch_size, lr, weight_decay, progress)
                self.training.update(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, loss=loss)
            else:
                self.network.body.memorise(self._tensor(X[rows]), torch.from_numpy(y[rows]).to(self.device),
                                           None if weights is None else self._tensor(weights))
        self.network.eval()
        return self

    def predict(self, X: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """Class indices (int64: (n,), or (n, h*scale, w*scale)), or values (float32, (n,))."""
        if self.task == "regression":
            return self._outputs(X, batch_size, lambda out: out)
        return self._outputs(X, batch_size, lambda out: out.argmax(dim=1))

    def predict_proba(self, X: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, float32 (n, n_classes) or (n, n_classes, h*scale, w*scale)."""
        if self.task == "regression":
            raise ConfigError("a regression head predicts values, not class probabilities")
        return self._outputs(X, batch_size, lambda out: out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors, on the CPU and contiguous (as safetensors stores them)."""
        return {key: value.detach().cpu().contiguous() for key, value in self._fitted().state_dict().items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Head:
        """Rebuild a fitted head (on the CPU) from its ``config`` and ``state_dict``."""
        try:
            if config.get("version") != CONFIG_VERSION:
                raise ConfigError(f"version {config.get('version')!r}, this stacembed reads {CONFIG_VERSION}")
            head = cls(config["head"], config["task"], config["dimensions"], n_classes=config.get("n_classes"),
                       scale=config.get("scale"), **config.get("params", {}))
        except (AttributeError, ConfigError, KeyError, TypeError) as exc:
            raise ModelError(f"unusable head config: {exc}") from None
        network = _Network(head)
        try:
            network.load_state_dict(tensors)
        except RuntimeError as exc:
            raise ModelError(f"the head's tensors do not match its config: {' '.join(str(exc).split())}") from None
        head.network, head.training = network.eval(), config.get("training")
        return head

    @property
    def _batch_size(self) -> int:
        return MAP_BATCH if self.dense else VECTOR_BATCH

    def _fitted(self) -> _Network:
        if self.network is None:
            raise ModelError(f"this {self.name} head is not trained yet: fit it, or load a trained one")
        return self.network

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        rank = 4 if self.dense else 2
        if X.ndim != rank:
            shape = "(n, D, h, w) maps of patch embeddings" if self.dense else "(n, D) vectors"
            raise ModelError(f"the {self.task} head takes {shape}, got an array of shape {X.shape}")
        self.check_input(X.shape[1])
        return X

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _targets(self, y: np.ndarray, inputs: tuple[int, ...],
                 ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The rows that hold a label, and the targets checked (int64 classes, float32 values)."""
        y = np.asarray(y)
        n = inputs[0]
        expected = (n, inputs[2] * self.scale, inputs[3] * self.scale) if self.dense else (n,)
        if y.shape != expected:
            raise LabelError(f"the targets have shape {y.shape}; these embeddings need {expected}")
        if self.task == "regression":
            if n == 0 or not np.isfinite(y).all():
                raise LabelError("the regression targets are empty or hold NaN or infinite values: "
                                 "leave those chips out")
            return np.arange(n), y.astype(np.float32)
        if not np.issubdtype(y.dtype, np.integer):
            raise LabelError(f"class labels must be integers (class indices), got {y.dtype}")
        labelled = y != ignore_index if ignore_index is not None else np.ones(y.shape, bool)
        _check_classes(y[labelled], self.n_classes)
        return np.flatnonzero(labelled.reshape(n, -1).any(axis=1)), y.astype(np.int64)

    def _class_weights(self, y: np.ndarray, ignore_index: int | None, balance: str | None,
                       given: list[float] | None) -> np.ndarray | None:
        """Per-class weights for the loss or the sampler, float32, or None for none."""
        if balance is not None and balance not in BALANCES:
            raise ConfigError(f"balance must be one of {', '.join(BALANCES)} or none, got {balance!r}")
        if self.task == "regression" and (balance or given is not None):
            raise ConfigError("class balancing needs classes; a regression head has none")
        if not self.kind.trained and balance == "sampling":
            raise ConfigError(f"the {self.name} head keeps every training vector: balance it with weights")
        if given is not None:
            if balance:
                raise ConfigError("give either balance or class_weights, not both")
            return _given_weights(given, self.n_classes)
        if balance is None:
            return None
        counts = np.bincount(y[y != ignore_index] if ignore_index is not None else y.ravel(),
                             minlength=self.n_classes)
        weights = np.zeros(self.n_classes, np.float32)
        present = counts > 0
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return weights

    def _standardise(self, X: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int) -> None:
        """Set the input (and regression target) scaling from the training rows, in batches."""
        network = self._fitted()
        mean, std = _moments(X, rows, batch_size, self.dense)
        network.input_mean.copy_(torch.from_numpy(mean).reshape(network.input_mean.shape))
        network.input_std.copy_(torch.from_numpy(std).reshape(network.input_std.shape))
        if self.task == "regression":
            targets = y[rows].astype(np.float64)
            network.target_mean.fill_(float(targets.mean()))
            network.target_std.fill_(float(targets.std()) or 1.0)

    def _descend(self, X: np.ndarray, y: np.ndarray, rows: np.ndarray, sampling: np.ndarray | None,
                 weights: np.ndarray | None, ignore_index: int | None, seed: int, epochs: int, batch_size: int,
                 lr: float, weight_decay: float, progress: bool) -> float:
        """Mini-batch AdamW over ``epochs``; the last epoch's mean loss."""
        network = self._fitted()
        optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        loss_of = self._loss(weights, ignore_index)
        network.train()
        loss = 0.0
        for _ in tqdm(range(epochs), desc=f"training {self.name} head", unit="epoch", disable=not progress):
            total = torch.zeros((), device=self.device)
            order = rows[_draw(len(rows), sampling, generator)]
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                step = loss_of(network.scores(self._tensor(X[batch])), torch.from_numpy(y[batch]).to(self.device))
                optimiser.zero_grad(set_to_none=True)
                step.backward()
                optimiser.step()
                total += step.detach() * len(batch)
            loss = float(total.cpu()) / len(order)
        return loss

    def _loss(self, weights: np.ndarray | None,
              ignore_index: int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        network = self._fitted()
        if self.task == "regression":
            return lambda scores, y: F.mse_loss(scores.squeeze(1), (y - network.target_mean) / network.target_std)
        weight = None if weights is None else self._tensor(weights)
        ignore = -100 if ignore_index is None else ignore_index  # -100: cross_entropy's "none"
        return lambda scores, y: F.cross_entropy(scores, y, weight=weight, ignore_index=ignore)

    @torch.no_grad()
    def _outputs(self, X: np.ndarray, batch_size: int | None,
                 reduce: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        network = self._fitted()
        X = self._inputs(X)
        size = _count("batch_size", self._batch_size if batch_size is None else batch_size)
        parts = [reduce(network(self._tensor(X[start:start + size]))).cpu().numpy()
                 for start in range(0, len(X), size) or [0]]
        return np.concatenate(parts)


def save_head(head: Head, directory: str | Path) -> Path:
    """Write ``head.safetensors`` and ``head.json`` into ``directory``, each atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(head.state_dict(), str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG_FILE, head.config)
    return directory


def load_head(directory: str | Path) -> Head:
    """The head ``save_head`` wrote into ``directory``, on the CPU (``Head.to`` moves it)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read the head config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ModelError(f"the head config {path} is not JSON: {exc}") from None
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read the head's tensors {directory / WEIGHTS_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"the head config {path} is not a JSON object")
    return Head.from_state(config, tensors)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's RNG seeded with ``seed`` inside the block, the caller's restored after it."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _draw(n: int, sampling: np.ndarray | None, generator: torch.Generator) -> np.ndarray:
    """One epoch's order: a permutation, or ``n`` draws with replacement in proportion to
    ``sampling`` (inverse CDF: torch.multinomial stops at 2**24 categories)."""
    if sampling is None:
        return torch.randperm(n, generator=generator).numpy()
    cumulative = torch.from_numpy(np.cumsum(sampling, dtype=np.float64))
    drawn = torch.searchsorted(cumulative, torch.rand(n, generator=generator, dtype=torch.float64) * cumulative[-1],
                               right=True)
    return drawn.clamp_(max=n - 1).numpy()


def _sample_weights(y: np.ndarray, weights: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """How often to draw each sample: its class weight, or a map's mean over its labelled pixels."""
    if y.ndim == 1:
        return weights[y].astype(np.float64)
    flat = y.reshape(len(y), -1)
    labelled = flat != ignore_index if ignore_index is not None else np.ones(flat.shape, bool)
    return np.where(labelled, weights[np.where(labelled, flat, 0)], 0).sum(axis=1) / labelled.sum(axis=1)


def _moments(X: np.ndarray, rows: np.ndarray, batch_size: int, dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``X[rows]``, float32, accumulated in float64
    a batch at a time; a constant channel gets a deviation of 1 (left unscaled)."""
    axes = (0, 2, 3) if dense else (0,)
    total = squares = 0.0
    count = 0
    for start in range(0, len(rows), batch_size):
        batch = X[rows[start:start + batch_size]].astype(np.float64)
        total = total + batch.sum(axis=axes)
        squares = squares + (batch * batch).sum(axis=axes)
        count += batch.size // batch.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _check_classes(labels: np.ndarray, n_classes: int) -> None:
    if labels.size == 0:
        raise LabelError("no labelled sample to train on")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise LabelError(f"class index {low if low < 0 else high} is outside the head's {n_classes} classes "
                         f"(0..{n_classes - 1}); mark unlabelled samples with ignore_index")
    if low == high:
        raise LabelError(f"the training labels hold one class only ({low}): nothing to learn")


def _given_weights(given: list[float], n_classes: int) -> np.ndarray:
    weights = np.asarray(given, dtype=np.float32)
    if weights.shape != (n_classes,) or not (np.isfinite(weights) & (weights > 0)).all():
        raise ConfigError(f"class_weights needs {n_classes} positive numbers, one per class, got {list(given)}")
    return weights


def _check_training(seed: int, epochs: int, lr: float, weight_decay: float) -> None:
    _count("seed", seed, 0)
    _count("epochs", epochs)
    if not lr > 0:
        raise ConfigError(f"the learning rate must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _absent(name: str, value: Any) -> None:
    if value is not None:
        raise ConfigError(f"{name} does not apply to this task (got {value!r})")


def _params(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The head's hyperparameters: defaults overridden by ``given``, each checked."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ConfigError(f"the {name} head has no parameter {', '.join(unknown)} (it has: {known})")
    params = {**defaults, **given}
    for key, value in params.items():
        if isinstance(defaults[key], float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"{key} must be a fraction in [0, 1), got {value!r}")
            params[key] = float(value)
        else:
            params[key] = _count(key, value)
    return params
