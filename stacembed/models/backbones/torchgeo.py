"""Backbones built by TorchGeo's own model functions: ``mlm:architecture`` ``torchgeo:NAME``.

TorchGeo comes with the ``stacembed[terratorch]`` extra (TerraTorch depends on it) and is
imported only when such a card is used. Only networks stacembed knows how to feed are built:
a TorchGeo model's forward takes more than the chip (wavelengths, metadata, ...), and each
family needs its adapter. Today: Copernicus-FM (``copernicusfm_base``).

The card convention
-------------------
- ``mlm:architecture``: ``torchgeo:NAME``, NAME a function of ``torchgeo.models``.
- ``mlm:hyperparameters``: its keyword arguments, ``NAME(weights=None, **hyperparameters)``
  (``img_size``, ``patch_size``, ...), except ``forward``: the constant keyword arguments of the
  network's ``forward`` (Copernicus-FM: ``input_mode`` ``spectral``, ``kernel_size``). ``weights``
  and ``pretrained`` are refused: the weights are the card's ``mlm:model`` asset, loaded by
  stacembed (``models/weights.py``), so TorchGeo never downloads.
- The ``mlm:model`` asset: the network's ``state_dict()`` as TorchGeo's weights hold it
  (the release files, e.g. ``CopernicusFM_ViT_base_varlang-085350e4.pth``, load as they are).
- ``stacembed:pooling`` absent or ``default``: the embedding is the network's own output.

Copernicus-FM (``torchgeo/models/copernicusfm.py`` of TorchGeo 0.8.1)
----------------------------------------------------------------------
- ``CopernicusFM.forward(x, metadata, wavelengths, bandwidths, language_embed, input_mode,
  kernel_size)`` (lines 680-720) is ``forward_features`` (570-665) then ``forward_head``
  (667-678: dropout, ``head``). In the spectral mode the patch embedding is generated from each
  band's wavelength and bandwidth, both in nanometres (lines 587-605, 307-308); ``metadata``
  ``(B, 4)`` is lon, lat, days since 1970-01-01 and patch area in km², NaN where unknown, and an
  unknown one is replaced by a learned token (lines 584-586, 630-644).
- ``forward_features`` ends in ``fc_norm(mean of the patch tokens)`` (``global_pool``, the
  default, lines 659-661). The released weights lack ``fc_norm`` and ``head``
  (``copernicusfm_base`` loads them with only these keys allowed missing, lines 761-773), so
  TorchGeo's pretrained model normalises with a LayerNorm at its initial values (weight 1, bias
  0) and has no head (``num_classes`` 0, line 508). The adapter keeps exactly that as a
  LayerNorm without parameters (same output, nothing to load) and drops the head: its output is
  TorchGeo's own ``forward`` of the released model.
- This adapter passes the run's wavelengths (the items' STAC, else the card's ``eo:bands``
  ``center_wavelength``), the card's ``full_width_half_max`` as bandwidths, and unknown
  metadata (NaN: the learned tokens), as the authors' example does when metadata are unknown.
- Chips of another size than ``img_size``: TorchGeo resizes the position table (lines 611-620).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from ..card import ModelCard
from ..registry import register_prefix
from .spectral import batch_wavelengths, card_band_values, check_known
from .terratorch import torch_settings_kept

__all__ = ["PREFIX", "CopernicusFMBackbone", "build"]

PREFIX = "torchgeo"
INSTALL = "pip install 'stacembed[terratorch]' (or pip install torchgeo)"
_REFUSED = ("weights", "pretrained")
SUPPORTED = {"copernicusfm_base": "Copernicus-FM"}  # the functions this module has an adapter for


def _models():
    """``torchgeo.models``; a one-line ModelError naming the install when it is missing."""
    try:
        # Tensors made at import time must be real, whatever the default device; and TorchGeo may
        # import TerraTorch's modules, which change torch's matmul precision (see terratorch.py).
        with torch.device("cpu"), torch_settings_kept():
            import torchgeo.models as models
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"torchgeo: backbones need TorchGeo, which cannot be imported ({reason}); "
                         f"install it: {INSTALL}") from None
    return models


def build(card: ModelCard) -> nn.Module:
    """The backbone of a ``torchgeo:NAME`` card, untrained (``weights=None``)."""
    where = f"model card {card.href}"
    name = card.architecture.partition(":")[2]
    props = card.item.get("properties", {}) if card.item else {}
    options = props.get("mlm:hyperparameters") or {}
    if not isinstance(options, dict):
        raise ModelError(f"{where}: mlm:hyperparameters must be an object ({PREFIX}:{name}'s keyword arguments)")
    options = dict(options)
    forward = options.pop("forward", None) or {}
    refused = [key for key in _REFUSED if key in options]
    if refused:
        raise ModelError(f"{where}: {', '.join(refused)} cannot be given to TorchGeo; weights come from the "
                         "card's mlm:model asset or --weights, loaded by stacembed")
    if name not in SUPPORTED:
        raise ModelError(f"{where}: {PREFIX}:{name} is not a TorchGeo model stacembed can feed "
                         f"(it can: {', '.join(f'{PREFIX}:{n}' for n in SUPPORTED)})")
    pooling = props.get("stacembed:pooling", "default")
    if pooling != "default":
        raise ModelError(f"{where}: stacembed:pooling {pooling!r}: a {PREFIX}: card's embedding is the model's own "
                         "output ('default'); choose others with --pooling")
    builder = getattr(_models(), name)
    try:
        model = builder(None, **options)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"{where}: TorchGeo cannot build {name} with {options}: {first}") from None
    wavelengths = check_known(card_band_values(card), card.bands, "centre wavelength", where)
    bandwidths = check_known(card_band_values(card, "full_width_half_max"), card.bands,
                             "bandwidth (full_width_half_max)", where)
    return CopernicusFMBackbone(model, name, wavelengths=wavelengths, bandwidths=bandwidths,
                                forward=forward, where=where)


class CopernicusFMBackbone(nn.Module):
    """TorchGeo's ``CopernicusFM`` as stacembed's ``FeatureModel`` expects it (see the module docstring).

    ``forward(x, wavelengths=None)``: TorchGeo's ``forward`` (the pooled ``(B, D)`` embedding);
    ``forward_features``: the last block's tokens ``(B, 1 + N, D)``, cls first, which
    ``--pooling cls|mean|max|none`` pool; ``--layer N`` takes ``model.blocks.N``.
    Wavelengths and bandwidths are micrometres here, nanometres for the network.
    """

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module, name: str, *, wavelengths: tuple[float, ...],
                 bandwidths: tuple[float, ...], forward: dict[str, Any], where: str) -> None:
        super().__init__()
        if not getattr(model, "global_pool", False):
            raise ModelError(f"{where}: {PREFIX}:{name} with global_pool false pools through 'norm', which the "
                             "released weights do not hold; leave global_pool at its default")
        mode = forward.get("input_mode", "spectral")
        unknown = set(forward) - {"input_mode", "kernel_size"}
        if mode != "spectral" or unknown:
            raise ModelError(f"{where}: mlm:hyperparameters.forward takes input_mode 'spectral' and kernel_size "
                             f"(the variable mode needs language embeddings); got {forward}")
        dim = model.fc_norm.normalized_shape
        # What TorchGeo's pretrained model computes: fc_norm at its initial weight 1 and bias 0.
        model.fc_norm = nn.LayerNorm(dim, eps=model.fc_norm.eps, elementwise_affine=False)
        model.head = nn.Identity()
        self.model = model
        self.name = name
        self.wavelengths = tuple(wavelengths)
        self.bandwidths = tuple(bandwidths)
        kernel = forward.get("kernel_size") or model.patch_embed_spectral.kernel_size
        self.kernel_size = int(kernel)
        self.patch_size = (self.kernel_size, self.kernel_size)
        self.feature_info = [{"module": f"model.blocks.{i}"} for i in range(len(model.blocks))]
        # The last block's tokens of the latest forward, per thread (forward_features returns them).
        self._tokens: dict[int, torch.Tensor] = {}
        model.blocks[-1].register_forward_hook(self._keep_tokens)

    context_inputs = ("wavelengths",)

    def checkpoint_filter(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """TorchGeo's keys (the release's, or a whole ``CopernicusFM``'s) under ``model.``. ``head.*``
        (a classifier, not part of the embedding) is dropped, and so is ``fc_norm.*`` when it holds
        LayerNorm's initial values, which the module applies without parameters; a trained
        ``fc_norm`` is an error, as is anything else the module and the file do not share."""
        if state and all(key.startswith("model.") for key in state):
            state = {key.removeprefix("model."): value for key, value in state.items()}
        weight, bias = state.get("fc_norm.weight"), state.get("fc_norm.bias")
        if (weight is not None and not bool((weight == 1).all())) or (bias is not None and bool(bias.any())):
            raise ModelError(f"{PREFIX}:{self.name}: the weights hold a trained fc_norm, which this backbone "
                             "does not apply (it pools as TorchGeo's pretrained model: fc_norm at weight 1, bias 0)")
        return {f"model.{key}": value for key, value in state.items() if not key.startswith(("fc_norm.", "head."))}

    def _keep_tokens(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._tokens[threading.get_ident()] = output

    def forward(self, x: torch.Tensor, wavelengths: torch.Tensor | None = None) -> torch.Tensor:
        try:
            return self._forward(x, wavelengths)
        finally:
            self._tokens.pop(threading.get_ident(), None)

    def _forward(self, x: torch.Tensor, wavelengths: torch.Tensor | None) -> torch.Tensor:
        if x.ndim != 4:
            raise ModelError(f"{PREFIX}:{self.name} takes single scenes (B, C, H, W), got {tuple(x.shape)}")
        waves = batch_wavelengths(wavelengths, self.wavelengths, f"{PREFIX}:{self.name}")
        if len(waves) != x.shape[1]:
            raise ModelError(f"{PREFIX}:{self.name}: the chip has {x.shape[1]} bands, the card {len(waves)}")
        metadata = torch.full((x.shape[0], 4), float("nan"), device=x.device)  # lon, lat, time, area: unknown
        return self.model(x, metadata, wavelengths=[w * 1000 for w in waves],
                          bandwidths=[b * 1000 for b in self.bandwidths], input_mode="spectral",
                          kernel_size=self.kernel_size)

    def forward_features(self, x: torch.Tensor, wavelengths: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's tokens ``(B, 1 + N, D)`` (cls first; no norm after the blocks)."""
        try:
            self._forward(x, wavelengths)
            return self._tokens[threading.get_ident()]
        finally:
            self._tokens.pop(threading.get_ident(), None)


register_prefix(PREFIX, build)
