"""The inference engine: device choice, value scaling, batched forward passes.

Chips go in at their native size (no resizing: a chip is the source's own pixels). Pixels
without data enter the model as 0 *after* value scaling, i.e. the training mean for z-score
scaling, so that they pull the embedding as little as possible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, ModelError
from .models import ModelCard, create_backbone
from .models.pooling import FeatureModel
from .models.scaling import apply_value_scaling
from .models.weights import load_artifact, load_weights


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() is False: no GPU, "
            "no driver, or a CPU-only torch build); use --device cpu, or auto to take what is there"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be one of auto, cpu, cuda, mps; got {name!r}")
    return torch.device(name)


class Embedder:
    """A model ready for inference: ``embedder(pixels)`` -> float32 ``(n, D)`` or ``(n, D, h, w)``.

    ``pooling`` and ``layer`` say what an embedding is (see ``models.pooling``); the output
    shape per chip is measured once with a probe forward pass, so writers know it up front.
    """

    def __init__(self, card: ModelCard, model: nn.Module, device: torch.device, *, pooling: str = "default",
                 layer: int | str | None = None, chip_size: int | None = None, time_steps: int = 1) -> None:
        self.card = card
        self.device = device
        self.pooling = pooling
        self.layer = layer
        self.model = FeatureModel(model, pooling, layer).eval().to(device)
        size = chip_size or card.input_size[0]
        probe = np.zeros((1, len(card.bands), *((time_steps,) if time_steps > 1 else ()), size, size), "float32")
        self.output_shape: tuple[int, ...] = tuple(self._forward(probe).shape[1:])
        if pooling == "default" and layer is None and self.output_shape != (card.embedding_size,):
            raise ModelError(
                f"model {card.name} returns {self.output_shape} per chip, the card promises "
                f"({card.embedding_size},)"
            )

    @property
    def dimensions(self) -> int:
        return self.output_shape[0]

    @property
    def dense(self) -> bool:
        """Whether each chip gives a map of patch embeddings rather than one vector."""
        return len(self.output_shape) == 3

    @classmethod
    def from_card(cls, card: ModelCard, weights: Path | None, device: torch.device, **options) -> "Embedder":
        """Build the card's model and load ``weights`` (None: keep a seeded random initialisation).

        TorchScript and torch.export artifacts are the model itself; other weights are loaded
        into the card's architecture from the registry.
        """
        model = load_artifact(weights, card.artifact_type) if weights is not None else None
        if model is None:
            # Untrained on request: seeded, so that reruns (and resumed runs) agree.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = create_backbone(card)
            if weights is not None:
                load_weights(model, weights)
        return cls(card, model, device, **options)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = apply_value_scaling(x, self.card.value_scaling)
        return torch.nan_to_num(x, nan=0.0)

    def _forward(self, pixels: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(self.preprocess(pixels))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of chips ``(n, band, [time,] height, width)`` of measurements (NaN = no data)."""
        out = self._forward(pixels)
        if tuple(out.shape[1:]) != self.output_shape:
            raise ModelError(f"model {self.card.name} returned {tuple(out.shape)}, expected (n, {self.output_shape})")
        return out.float().cpu().numpy()
