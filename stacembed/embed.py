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
from .models.scaling import apply_value_scaling
from .models.weights import load_weights


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
    """A model ready for inference: ``embedder(pixels) -> (n, embedding_size)`` float32."""

    def __init__(self, card: ModelCard, model: nn.Module, device: torch.device) -> None:
        self.card = card
        self.device = device
        self.model = model.eval().to(device)

    @classmethod
    def from_card(cls, card: ModelCard, weights: Path | None, device: torch.device) -> "Embedder":
        """Build the card's backbone and load ``weights`` (None: keep the random initialisation)."""
        if weights is None:
            # Untrained on request: seeded, so that reruns (and resumed runs) agree.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = create_backbone(card)
        else:
            model = create_backbone(card)
            load_weights(model, weights)
        return cls(card, model, device)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = apply_value_scaling(x, self.card.value_scaling)
        return torch.nan_to_num(x, nan=0.0)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of chips ``(n, band, height, width)`` of measurements (NaN = no data)."""
        with torch.inference_mode():
            out = self.model(self.preprocess(pixels))
        if out.ndim != 2 or out.shape[1] != self.card.embedding_size:
            raise ModelError(
                f"model {self.card.name} returned shape {tuple(out.shape)}, the card promises "
                f"(n, {self.card.embedding_size})"
            )
        return out.float().cpu().numpy()
