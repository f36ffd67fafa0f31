"""What an embedding is: which layer's output, pooled how.

Backbones return either token sequences ``(B, N, D)`` (ViTs; the first ``num_prefix_tokens``
are cls/register tokens) or feature maps ``(B, D, h, w)`` (CNNs). ``FeatureModel`` turns
either into pooled vectors ``(B, D)`` or dense maps ``(B, D, h, w)``:

- ``default``: the backbone's own pooled output (timm's pre-logits with ``num_classes=0``);
- ``cls``: the first prefix token (ViTs only);
- ``mean`` / ``max``: over patch tokens (prefix tokens excluded) or map positions;
- ``none``: dense patch embeddings as a ``(D, h, w)`` map per chip. Token sequences that cover
  several time steps (``T*h*w`` tokens) are averaged over time.

``layer`` picks an intermediate output instead of the last one: an integer indexes the
backbone's blocks/stages (timm's ``feature_info``, or ``blocks``), a string names a submodule.
Intermediate outputs are taken as the block returns them, before any final norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import POOLINGS
from ..errors import ConfigError, ModelError


class FeatureModel(nn.Module):
    """``backbone`` wrapped to return pooled ``(B, D)`` or dense ``(B, D, h, w)`` embeddings."""

    def __init__(self, backbone: nn.Module, pooling: str = "default", layer: int | str | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"--pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.patch = patch_size(backbone)
        self.prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        self.layer_name = None if layer is None else layer_module_name(backbone, layer)
        self._captured: torch.Tensor | None = None
        if self.layer_name is not None:
            backbone.get_submodule(self.layer_name).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: object, output: object) -> None:
        self._captured = output[0] if isinstance(output, (tuple, list)) else output

    def forward(self, x: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        """``context``: extra inputs the backbone declares in ``context_inputs`` (e.g. coordinates)."""
        if self.layer_name is None and self.pooling == "default":
            return self.backbone(x, **context)
        if self.layer_name is not None:
            self.backbone(x, **context)
            features, self._captured = self._captured, None
        else:
            forward_features = getattr(self.backbone, "forward_features", None)
            if forward_features is None:
                raise ModelError(f"--pooling {self.pooling} needs a backbone with forward_features "
                                 "(timm or stacembed backbones); this model only gives its pooled output")
            features = forward_features(x, **context)
        grid = (x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]) if self.patch else None
        return pool(features, self.pooling, self.prefix, grid)


def pool(features: torch.Tensor, pooling: str, prefix: int = 0, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Pool ``(B, N, D)`` tokens or ``(B, D, h, w)`` maps; see the module docstring."""
    if features.ndim == 2:
        if pooling != "default":
            raise ModelError(f"--pooling {pooling}: this output is already pooled ({tuple(features.shape)})")
        return features
    if features.ndim == 3:
        return _pool_tokens(features, pooling, prefix, grid)
    if features.ndim == 4:
        if pooling == "cls":
            raise ModelError("--pooling cls needs a transformer with a cls token; this backbone gives feature maps")
        if pooling == "none":
            return features
        return features.amax(dim=(2, 3)) if pooling == "max" else features.mean(dim=(2, 3))
    raise ModelError(f"cannot pool a backbone output of shape {tuple(features.shape)}")


def _pool_tokens(tokens: torch.Tensor, pooling: str, prefix: int, grid: tuple[int, int] | None) -> torch.Tensor:
    if pooling == "cls":
        if prefix < 1:
            raise ModelError("--pooling cls: this backbone has no cls token; use mean or max")
        return tokens[:, 0]
    patches = tokens[:, prefix:]
    if pooling in ("mean", "default"):
        return patches.mean(dim=1)
    if pooling == "max":
        return patches.amax(dim=1)
    batch, count, dim = patches.shape
    height, width = grid or _square(count)
    if count % (height * width):
        raise ModelError(f"--pooling none: {count} patch tokens do not form a {height}x{width} grid")
    steps = count // (height * width)
    maps = patches.reshape(batch, steps, height, width, dim).mean(dim=1)
    return maps.permute(0, 3, 1, 2).contiguous()


def _square(count: int) -> tuple[int, int]:
    side = math.isqrt(count)
    if side * side != count:
        raise ModelError(f"--pooling none: {count} patch tokens are not a square grid; the card's patch size is needed")
    return side, side


def patch_size(backbone: nn.Module) -> tuple[int, int] | None:
    """The (height, width) of a transformer's patches, when it says (timm and stacembed backbones)."""
    size = getattr(backbone, "patch_size", None)
    if size is None:
        size = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) >= 2:
        return int(size[-2]), int(size[-1])
    return None


def layer_module_name(backbone: nn.Module, layer: int | str) -> str:
    """The submodule whose output is layer ``layer`` (index into blocks/stages, or a name)."""
    if isinstance(layer, str) and not layer.lstrip("-").isdigit():
        names = dict(backbone.named_modules())
        if layer not in names:
            examples = ", ".join(candidate_layers(backbone)[:6])
            raise ConfigError(f"--layer {layer!r} is not a module of this backbone (e.g. {examples})")
        return layer
    candidates = candidate_layers(backbone)
    if not candidates:
        raise ConfigError("--layer N: this backbone lists no blocks or stages; give a module name")
    index = int(layer)
    if not -len(candidates) <= index < len(candidates):
        raise ConfigError(f"--layer {index}: the backbone has {len(candidates)} layers (0..{len(candidates) - 1})")
    return candidates[index]


def candidate_layers(backbone: nn.Module) -> list[str]:
    """The backbone's blocks or stages in order: timm's ``feature_info``, else ``blocks.N``."""
    info = getattr(backbone, "feature_info", None)
    names = [f["module"] for f in info] if isinstance(info, list) and info and isinstance(info[0], dict) else []
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > len(names):
        names = [f"blocks.{i}" for i in range(len(blocks))]
    modules = dict(backbone.named_modules())
    return [name for name in names if name in modules]
