"""Any backbone of TerraTorch's registry: ``mlm:architecture`` ``terratorch:NAME`` (extra ``stacembed[terratorch]``).

TerraTorch is imported only when such a card (or ``--model terratorch:NAME``) is used: it takes
8-12 s to import and runs ``./custom_modules`` of the working directory if there is one (its
``registry/custom_registry.py``: TerraTorch's way of registering user models).

The card convention
-------------------
- ``mlm:architecture``: ``terratorch:NAME``, NAME as TerraTorch's ``BACKBONE_REGISTRY`` knows it
  (``prithvi_eo_v2_300``, ``terramind_v1_base``, ...; a source prefix such as ``terratorch_`` or
  ``timm_`` is allowed).
- ``mlm:hyperparameters``: the keyword arguments of the build, verbatim:
  ``BACKBONE_REGISTRY.build(NAME, pretrained=False, **hyperparameters)`` (``img_size``,
  ``bands``, ``num_frames``, ``modalities``, ...). ``pretrained`` and ``ckpt_path`` are refused:
  the weights are the card's ``mlm:model`` asset, found, checksummed and loaded (strictly, with
  ``weights_only``; never unpickled) by stacembed's own rules (``models/weights.py``), so
  TerraTorch never downloads nor reads a checkpoint.
- ``mlm:input``: one entry per modality for a multi-modal backbone (TerraMind), each *named*
  with the modality key the backbone takes (``S2L2A``, ``S1GRD``, ``DEM``, ...: its
  ``modalities``) and listing its bands in the order the backbone takes them. stacembed stacks
  every input's bands on one chip in the card's order; the wrapper splits the channels back into
  ``{name: tensor}``. A single-input backbone gets the chip tensor as is.
- ``stacembed:optional_inputs`` (or ``stacembed:optional`` on an input): inputs the backbone runs
  without. A chip whose channels of such an input are all 0 after scaling (the fill of a missing
  item: no data) is run without it, chips that lack the same inputs together: TerraMind embeds
  whatever subset of its modalities it is given (``terramind_vit.py`` 247-283), so a location
  without a DEM gets the embedding of its other modalities, not of a DEM filled with its mean.
- DOFA (``dofa_*_patch16_224``): ``model_bands`` is TerraTorch's build argument (it derives
  wavelengths from it with its own table); the network is given each band's wavelength from the
  run (the items' ``eo:center_wavelength``), else the card's ``eo:bands`` ``center_wavelength``,
  else TerraTorch's (``DOFABackbone``). Its release (TorchGeo's DOFA state dict) loads as is.
- ``value_scaling`` (per input): applied by stacembed; the backbones do not normalise again.
- ``stacembed:pooling``: the default embedding (``forward``): ``mean`` (the default when absent)
  or ``max`` of the last layer's patch tokens (prefix tokens excluded; positions of a feature
  map), or ``cls``. ``--pooling``/``--layer`` choose others at run time.
- ``mlm:output[0].result.shape[-1]``: the width D of the last layer's tokens.
- The ``mlm:model`` asset: safetensors (or a torch state dict) with the keys of the TerraTorch
  module's own ``state_dict()`` (as ``BACKBONE_REGISTRY.build(...)`` returns it). Released
  checkpoints that hold more (TerraMind's whole model, Prithvi's MAE ``encoder.*``/``decoder.*``)
  load as they are: the module's own entries are taken (``checkpoint_filter``); every one of
  them must be there with its shape (a model built for other bands or another grid than the
  checkpoint's does not load; TerraTorch would initialise those weights at random).

What TerraTorch 1.2.11 does (read in the installed package, ``terratorch/models/backbones/``)
--------------------------------------------------------------------------------------------
- Output: a list with one entry per block. ``PrithviViT.forward_features`` (``prithvi_mae.py``
  485-539) gives each block's tokens ``(B, 1 + T*h*w, D)``, cls first, the last one after the
  final norm (line 538); ``_create_prithvi`` makes that list ``forward`` (``prithvi_vit.py``
  374-378). ``TerraMindViT.forward`` (``terramind/model/terramind_vit.py`` 222-341) gives each
  block's tokens, the last after ``encoder_norm`` (line 299), merged over the image modalities
  by ``merge_method`` (default ``mean``: ``(B, h*w, D)``, register tokens dropped; no cls).
  The wrapper passes each entry through ``layers.N`` (an identity) so ``--layer N`` takes
  TerraTorch's own N-th output, and pools the last.
- No normalisation inside: ``TerraMindViT.forward`` patch-embeds the tensors as given
  (``encoder_embeddings.py`` 347, a linear projection of the patches); TerraMind's pretraining
  means and stds (``terramind_register.py`` 199-307) are used only by ``TerraMindGeneration``
  (``terramind_generation.py`` 261-265, ``standardize``), a full model, not a backbone; Prithvi's
  ``mean``/``std`` in ``prithvi_cfgs`` (``prithvi_vit.py`` 30-31, 58) are configuration that
  ``PrithviViT`` does not apply.
- Input: Prithvi takes ``(B, C, T, H, W)``, or ``(B, C, H, W)`` only when built with one frame
  (``prithvi_mae.py`` 491); the wrapper adds the time axis to single scenes.
- DOFA (``dofa_vit.py``): ``DOFAEncoderWrapper`` holds TorchGeo's DOFA as ``dofa_model`` and
  conditions it on its ``wavelengths`` attribute (lines 119-136: ``torch.tensor(self.wavelengths)``
  passed to ``dofa_model.patch_embed``), derived from ``model_bands`` (155-165, 202, 221); it returns the
  last block's tokens ``(B, 1 + h*w, D)``, cls first, without a norm (137-152). TorchGeo's DOFA
  (``torchgeo/models/dofa.py`` 288-323) also builds ``fc_norm`` and ``head``, unused there and
  absent from the released weights (474-485, 512-523 load them with only these missing).
- Downloads: only with ``pretrained=True`` (``prithvi_vit.py`` 328-346, ``hf_hub_download``;
  ``terramind_register.py`` 529-534); ``ckpt_path`` is read with ``torch.load`` (line 522).
"""

from __future__ import annotations

import copy
import enum
import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from ...errors import ModelError
from ..card import MLM_SCHEMA, ModelCard
from ..pooling import pool
from ..registry import register_prefix
from .spectral import batch_wavelengths, card_band_values, check_known

__all__ = ["PREFIX", "DOFABackbone", "TerraTorchBackbone", "build", "card_for", "registry_names"]

PREFIX = "terratorch"
INSTALL = "pip install 'stacembed[terratorch]'"
POOLINGS = ("mean", "max", "cls")
_REFUSED = ("pretrained", "ckpt_path")

# TerraTorch's band names (HLSBands, OpticalBands, SARBands, TerraMind's PRETRAINED_BANDS) as
# STAC common names, which is how stacembed finds bands in items (``--band NAME=ASSET`` otherwise).
STAC_NAMES = {
    "COASTAL_AEROSOL": "coastal", "BLUE": "blue", "GREEN": "green", "RED": "red",
    "RED_EDGE_1": "rededge071", "RED_EDGE_2": "rededge075", "RED_EDGE_3": "rededge078",
    "NIR_BROAD": "nir", "NIR_NARROW": "nir08", "WATER_VAPOR": "nir09", "CIRRUS": "cirrus",
    "SWIR_1": "swir16", "SWIR_2": "swir22", "THERMAL_INFRARED_1": "lwir11", "THERMAL_INFRARED_2": "lwir12",
    "VV": "vv", "VH": "vh", "DEM": "dem",
}


# -- TerraTorch, on first use ---------------------------------------------------------------------

@contextmanager
def torch_settings_kept() -> Iterator[None]:
    """Undo what importing TerraTorch does to torch for the whole process.

    TerraTorch 1.2.11's ``models/backbones/clay_v15/model.py`` (line 16) calls
    ``torch.set_float32_matmul_precision("medium")`` when imported: oneDNN then computes float32
    matrix products in bfloat16 on the CPU, so every embedding made after it, by any model, would
    silently change. The precision in force before the import is put back.
    """
    precision = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _terratorch(module: str) -> Any:
    """A TerraTorch module, imported on the CPU (``create_with_weights`` builds on "meta", and
    tensors made at import time must be real) without its global torch settings."""
    with torch.device("cpu"), torch_settings_kept():
        return importlib.import_module(module)


def _registry():
    """TerraTorch's ``BACKBONE_REGISTRY``; a one-line ModelError naming the extra when it is missing."""
    try:
        BACKBONE_REGISTRY = _terratorch("terratorch.registry").BACKBONE_REGISTRY
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"terratorch: backbones need TerraTorch, which cannot be imported ({reason}); "
                         f"install the extra: {INSTALL}") from None
    return BACKBONE_REGISTRY


def registry_names() -> list[str]:
    """``terratorch:NAME`` for every backbone of TerraTorch's own registry; empty without TerraTorch.

    timm's models, which TerraTorch's registry also lists, are plain ``mlm:architecture`` names.
    """
    from importlib.util import find_spec

    if find_spec("terratorch") is None:
        return []
    try:
        source = _registry()["terratorch"]
    except (ModelError, KeyError):
        return []
    return sorted(f"{PREFIX}:{name}" for name in source)


def _split_ref(ref: str) -> tuple[str, dict[str, Any]]:
    """``terratorch:NAME[?key=value&...]`` -> NAME and its build options (values: JSON, else
    comma-separated lists, else strings; ``bands``, ``modalities`` and ``model_bands`` are always lists or dicts)."""
    body = ref.partition(":")[2]
    name, _, query = body.partition("?")
    options: dict[str, Any] = {}
    for key, text in parse_qsl(query, keep_blank_values=True):
        try:
            value = json.loads(text)
        except ValueError:
            value = text.split(",") if "," in text else text
        if key in ("bands", "modalities", "model_bands") and isinstance(value, str):
            value = [value]
        options[key] = value
    return name.strip(), options


def _build_model(name: str, options: dict[str, Any], where: str) -> nn.Module:
    """``BACKBONE_REGISTRY.build(name, pretrained=False, **options)`` with one-line errors."""
    registry = _registry()
    refused = [key for key in _REFUSED if key in options]
    if refused:
        raise ModelError(f"{where}: {', '.join(refused)} cannot be given to TerraTorch; weights come from the "
                         "card's mlm:model asset or --weights, loaded by stacembed")
    if not name or name not in registry:
        raise ModelError(f"{where}: {name!r} is not a backbone in TerraTorch's registry "
                         "(`stacembed models list --all` lists them)")
    meta = torch.get_default_device().type == "meta"
    try:
        model = registry.build(name, pretrained=False, **options)
    except Exception as exc:
        if not meta:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise ModelError(f"{where}: TerraTorch cannot build {name} with {options}: {first}") from None
        # Shapes only were asked for, but some constructions compute with real values (TerraMindViT
        # calls .item(), terramind_vit.py line 122): built on the CPU, then moved to "meta".
        with torch.device("cpu"):
            model = _build_model(name, options, where)
        model = model.to("meta")
    if not isinstance(model, nn.Module):
        raise ModelError(f"{where}: TerraTorch's {name} is not a torch module ({type(model).__name__})")
    if meta and _plain_tensors(model):
        # Tensors kept outside parameters and buffers would stay on "meta": no checkpoint fills them.
        raise RuntimeError(f"{name} keeps tensors outside its state dict; it is built on real tensors")
    return model


def _plain_tensors(model: nn.Module) -> bool:
    return any(isinstance(value, torch.Tensor) for module in model.modules() for value in vars(module).values())


# -- the wrapper ----------------------------------------------------------------------------------

class TerraTorchBackbone(nn.Module):
    """A TerraTorch backbone as stacembed's ``FeatureModel`` expects it.

    ``forward(x)``: ``(B, D)`` pooled by ``pooling`` from ``forward_features(x)``, the last
    layer's output: tokens ``(B, N, D)`` whose first ``num_prefix_tokens`` are cls/register
    tokens, or a feature map ``(B, D, h, w)``. ``patch_size`` is the (height, width) of a token.
    ``inputs`` (modality name, band count) makes the chip's channels a ``{name: tensor}`` dict.
    """

    def __init__(self, model: nn.Module, name: str, *, inputs: tuple[tuple[str, int], ...] | None = None,
                 pooling: str = "mean", optional: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.inputs = inputs
        self.pooling = pooling
        # Inputs the network runs without (TerraMind takes any subset of its modalities): a chip
        # whose channels of such an input are all 0 after scaling (no item there: no data, filled
        # with 0) is run without it.
        self.optional = frozenset(optional)
        self.num_prefix_tokens = _prefix_tokens(model)
        self.patch_size = _patch_size(model)
        proj = getattr(getattr(model, "patch_embed", None), "proj", None)
        self.time_axis = isinstance(proj, nn.Conv3d)  # Prithvi: (B, C, T, H, W)
        # One identity per output of TerraTorch's forward, so ``--layer N`` hooks TerraTorch's N-th output.
        self.layers = nn.ModuleList(nn.Identity() for _ in range(_depth(model)))
        self.feature_info = [{"module": f"layers.{i}"} for i in range(len(self.layers))]

    @property
    def context_inputs(self) -> tuple[str, ...]:
        """Prithvi's _tl models take (year, day of year) per frame and (lat, lon) per chip."""
        wanted = (("temporal_coords", "temporal_encoding"), ("location_coords", "location_encoding"))
        return tuple(name for name, flag in wanted if getattr(self.model, flag, False) is True)

    def checkpoint_filter(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The TerraTorch module's entries of a checkpoint, under ``model.`` (the wrapper's keys).

        The file holds the TerraTorch module's own keys (the convention), or the wrapper's
        (``model.*``), or a released checkpoint with more in it: a Prithvi MAE (``encoder.*`` and
        ``decoder.*``), a whole TerraMind (every modality, the decoder). As TerraTorch's own
        ``checkpoint_filter_fn`` does (``terramind_register.py`` 417-440), keys the module does
        not have are dropped; unlike it, a key it has but the file lacks, or a shape that
        differs, is an error (the load is strict), never a random initialisation.
        """
        own = self.model.state_dict().keys()
        if state and not any(key in own for key in state):
            if all(key.startswith("model.") for key in state):
                state = {key.removeprefix("model."): value for key, value in state.items()}
            elif any(key.startswith("encoder.") and key.removeprefix("encoder.") in own for key in state):
                state = {key.removeprefix("encoder."): value for key, value in state.items()
                         if key.startswith("encoder.")}
            else:
                # The network TerraTorch wraps, saved on its own: DOFA's release is torchgeo's DOFA
                # state dict, which TerraTorch's DOFAEncoderWrapper holds as ``dofa_model``.
                for child, _ in self.model.named_children():
                    if any(f"{child}.{key}" in own for key in state):
                        state = {f"{child}.{key}": value for key, value in state.items()}
                        break
        kept = {f"model.{key}": value for key, value in state.items() if key in own}
        return kept or {f"model.{key}": value for key, value in state.items()}  # nothing fits: say what is there

    def outputs(self, x: torch.Tensor, **context: torch.Tensor) -> list[Any]:
        """TerraTorch's per-layer outputs for the chip batch ``x`` (each through ``layers.N``)."""
        if self.inputs is not None:
            if x.ndim != 4:
                raise ModelError(f"terratorch:{self.name} takes single scenes (B, C, H, W), got {tuple(x.shape)}; "
                                 "use --time-steps 1")
            sizes = [count for _, count in self.inputs]
            if x.shape[1] != sum(sizes):
                raise ModelError(f"terratorch:{self.name}: the chip has {x.shape[1]} bands, the card's inputs "
                                 f"{sum(sizes)}")
            arg: Any = dict(zip((name for name, _ in self.inputs), torch.split(x, sizes, dim=1), strict=True))
        elif x.ndim == 4 and self.time_axis:
            arg = x.unsqueeze(2)
        else:
            arg = x
        frames = getattr(self.model, "num_frames", None)
        if context.get("temporal_coords") is not None and arg.ndim == 5 and arg.shape[2] != frames:
            # Prithvi spreads the time encoding over x.shape[1] // num_frames tokens per frame.
            raise ModelError(f"terratorch:{self.name} was built for {frames} time step(s), the chips have "
                             f"{arg.shape[2]}: set num_frames in mlm:hyperparameters (or ?num_frames=)")
        outs = self._without_missing(arg, context) if isinstance(arg, dict) and self.optional else None
        if outs is None:
            outs = self._call(arg, context)
        if self.layers:
            if len(outs) != len(self.layers):
                raise ModelError(f"terratorch:{self.name} returned {len(outs)} outputs, expected one per layer "
                                 f"({len(self.layers)})")
            outs = [layer(o) for layer, o in zip(self.layers, outs, strict=True)]
        return outs

    def _call(self, arg: Any, context: dict[str, torch.Tensor]) -> list[Any]:
        """TerraTorch's forward, its output as a list (one entry per layer)."""
        out = self.model(arg, **context)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def _without_missing(self, arg: dict[str, torch.Tensor], context: dict[str, torch.Tensor]) -> list[Any] | None:
        """The outputs when some chips lack an optional input (all its channels 0): each group of
        chips that lack the same inputs is run on the inputs it has, as TerraMind runs on any
        subset of its modalities (``terramind_vit.py`` 265-283: one token sequence per input
        given); None when every chip has every input (or shapes only are computed)."""
        names = [name for name in arg if name in self.optional]
        if not names or any(t.is_meta for t in arg.values()):
            return None
        present = torch.stack([arg[name].flatten(1).ne(0).any(dim=1) for name in names], dim=1).cpu()
        if bool(present.all()):
            return None
        patterns, group_of = torch.unique(present, dim=0, return_inverse=True)
        batch = next(iter(arg.values())).shape[0]
        merged: list[Any] = []
        for group, pattern in enumerate(patterns):
            index = (group_of == group).nonzero().flatten().to(next(iter(arg.values())).device)
            missing = {name for name, there in zip(names, pattern.tolist(), strict=True) if not there}
            given = {name: tensor[index] for name, tensor in arg.items() if name not in missing}
            if not given:  # nothing but optional inputs, all missing: run on the zeros
                given = {name: tensor[index] for name, tensor in arg.items()}
            outs = self._call(given, {key: value[index] for key, value in context.items()})
            if not all(isinstance(o, torch.Tensor) for o in outs):
                raise ModelError(f"terratorch:{self.name} returns {type(outs[0]).__name__} per layer; chips "
                                 "without an optional input need tensors (TerraMind: merge_method 'mean')")
            if not merged:
                merged = [o.new_empty((batch, *o.shape[1:])) for o in outs]
            for whole, part in zip(merged, outs, strict=True):
                whole[index] = part
        return merged

    def forward_features(self, x: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        last = self.outputs(x, **context)[-1]
        if not isinstance(last, torch.Tensor):
            raise ModelError(f"terratorch:{self.name} returns {type(last).__name__} per layer, not a tensor "
                             "(TerraMind: use a merge_method other than 'dict')")
        return last

    def forward(self, x: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x, **context)
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]) if self.patch_size else None
        return pool(features, self.pooling, self.num_prefix_tokens, grid)


class DOFABackbone(TerraTorchBackbone):
    """TerraTorch's DOFA (``DOFAEncoderWrapper``, ``dofa_vit.py`` 109-152) fed each band's wavelength.

    TerraTorch's wrapper takes the wavelengths from its ``wavelengths`` attribute, which it
    derives from ``model_bands`` with its own table (``dofa_vit.py`` 17-40, 155-165, 202, 221) and
    reads in ``forward`` (line 134: ``torch.tensor(self.wavelengths)``, then
    ``dofa_model.patch_embed(x, wavelist)``, line 136). Here each forward runs TerraTorch's
    own ``forward`` on a shallow copy of the wrapper whose ``wavelengths`` are the run's
    (``wavelengths`` context: the items' STAC), else the card's ``eo:bands`` (``defaults``);
    the module itself is never changed, so concurrent calls do not interfere.

    TerraTorch's output is the last block's tokens, cls first (lines 138-152), with no final
    norm: the pooling leaves the cls token out (``num_prefix_tokens`` 1). DOFA's ``fc_norm``
    and ``head`` (``torchgeo/models/dofa.py`` 288-323), which TerraTorch's forward never uses
    and the released checkpoints do not hold (``dofa.py`` 474-485 allow exactly these keys
    missing), are removed, so that the release loads strictly.
    """

    def __init__(self, model: nn.Module, name: str, *, wavelengths: tuple[float, ...], pooling: str = "mean") -> None:
        dofa = model.dofa_model
        dofa.fc_norm, dofa.head = nn.Identity(), nn.Identity()
        super().__init__(model, name, pooling=pooling)
        self.wavelengths = tuple(wavelengths)

    @property
    def context_inputs(self) -> tuple[str, ...]:
        return ("wavelengths",)

    def _call(self, arg: Any, context: dict[str, torch.Tensor]) -> list[Any]:
        waves = batch_wavelengths(context.pop("wavelengths", None), self.wavelengths, f"terratorch:{self.name}")
        if len(waves) != arg.shape[1]:
            raise ModelError(f"terratorch:{self.name}: the chip has {arg.shape[1]} bands, {len(waves)} wavelengths")
        model = copy.copy(self.model)  # the same parameters; only the copy's wavelengths differ
        model.wavelengths = waves
        out = model(arg, **context)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def _prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens in the last output: timm's count, none after TerraMind's
    merge (register tokens dropped), else one when the network (or the one TerraTorch wraps, as
    DOFA's ``dofa_model``) has a cls token."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if hasattr(model, "merge_method"):  # TerraMindViT
        return int(getattr(model, "num_register_tokens", 0) or 0) if model.merge_method is None else 0
    has_cls = any(isinstance(getattr(m, "cls_token", None), torch.Tensor) for m in _outer(model))
    return 1 if has_cls else 0


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    size = None
    for module in _outer(model):
        size = getattr(getattr(module, "patch_embed", None), "patch_size", None)
        embeddings = getattr(module, "encoder_embeddings", None)  # TerraMind: one patch embedding per modality
        if size is None and isinstance(embeddings, nn.ModuleDict):
            sizes = {tuple(e.patch_size) for e in embeddings.values() if getattr(e, "patch_size", None) is not None}
            size = sizes.pop() if len(sizes) == 1 else None
        if size is not None:
            break
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) >= 2:
        return int(size[-2]), int(size[-1])
    return None


def _outer(model: nn.Module) -> list[nn.Module]:
    """The network and its direct children: where TerraTorch's wrappers keep the wrapped network."""
    return [model, *model.children()]


def _depth(model: nn.Module) -> int:
    """How many outputs TerraTorch's forward gives: one per ``out_indices`` / ``out_channels`` entry."""
    for attr in ("out_indices", "out_channels"):
        value = getattr(model, attr, None)
        if isinstance(value, (list, tuple)) and value:
            return len(value)
    return 0


def wrap(model: nn.Module, name: str, card: ModelCard) -> TerraTorchBackbone:
    """``model`` for ``card``: checked against its inputs, with its default pooling."""
    where = f"model card {card.href}"
    pooling = card.item.get("properties", {}).get("stacembed:pooling", "mean")
    if pooling not in POOLINGS:
        raise ModelError(f"{where}: stacembed:pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    inputs = tuple((entry.name, len(entry.bands)) for entry in card.inputs) or (("image", len(card.bands)),)
    mapping = getattr(model, "mod_name_mapping", None)
    if isinstance(mapping, dict) or len(inputs) > 1:
        _check_modalities(model, name, inputs, where)
    else:
        chans = getattr(model, "in_chans", None)
        if isinstance(chans, int) and chans != len(card.bands):
            raise ModelError(f"{where}: terratorch:{name} was built for {chans} bands, the card has "
                             f"{len(card.bands)} (set mlm:hyperparameters bands or in_chans)")
        inputs = None
    backbone: TerraTorchBackbone
    if _is_dofa(model):
        backbone = DOFABackbone(model, name, wavelengths=_dofa_wavelengths(model, name, card, where), pooling=pooling)
    else:
        backbone = TerraTorchBackbone(model, name, inputs=inputs, pooling=pooling,
                                      optional=_optional_inputs(card) if inputs else frozenset())
    if pooling == "cls" and backbone.num_prefix_tokens < 1:
        raise ModelError(f"{where}: stacembed:pooling 'cls', but terratorch:{name} has no cls token")
    return backbone


def _is_dofa(model: nn.Module) -> bool:
    """TerraTorch's ``DOFAEncoderWrapper``: torchgeo's DOFA as ``dofa_model``, and ``wavelengths``."""
    return isinstance(getattr(model, "dofa_model", None), nn.Module) and hasattr(model, "wavelengths")


def _dofa_wavelengths(model: nn.Module, name: str, card: ModelCard, where: str) -> tuple[float, ...]:
    """The card's wavelength of each band (its ``eo:bands``), else TerraTorch's for ``model_bands``."""
    stated = card_band_values(card)
    derived = list(getattr(model, "wavelengths", None) or [])
    if len(derived) == len(stated):
        stated = tuple(w if w is not None else float(d) for w, d in zip(stated, derived, strict=True))
    return check_known(stated, card.bands, "centre wavelength", f"{where} (terratorch:{name})")


def _optional_inputs(card: ModelCard) -> frozenset[str]:
    """The inputs a card says the model runs without: ``stacembed:optional_inputs`` and
    ``stacembed:optional`` on an ``mlm:input`` entry (README "Several modalities")."""
    props = card.item.get("properties", {}) if card.item else {}
    listed = props.get("stacembed:optional_inputs") or []
    names = {str(name).casefold() for name in listed} if isinstance(listed, list) else set()
    names |= {str(e.get("name", "")).casefold() for e in props.get("mlm:input", [])
              if isinstance(e, dict) and e.get("stacembed:optional")}
    return frozenset(entry.name for entry in card.inputs if entry.name.casefold() in names)


def _check_modalities(model: nn.Module, name: str, inputs: tuple[tuple[str, int], ...], where: str) -> None:
    mapping = getattr(model, "mod_name_mapping", None)
    if not isinstance(mapping, dict):
        raise ModelError(f"{where}: the card has {len(inputs)} inputs but terratorch:{name} takes one tensor, "
                         "not one per modality")
    embeddings = getattr(model, "encoder_embeddings", {})
    for modality, count in inputs:
        if modality not in mapping:
            raise ModelError(f"{where}: input {modality!r} is not a modality of terratorch:{name} "
                             f"(it takes {', '.join(mapping)}; set mlm:hyperparameters modalities, and name "
                             "each mlm:input after its modality)")
        chans = _channels(embeddings[mapping[modality]]) if mapping[modality] in embeddings else None
        if isinstance(chans, int) and chans != count:
            raise ModelError(f"{where}: terratorch:{name} takes {chans} bands of {modality}, the card's input "
                             f"has {count} (set mlm:hyperparameters bands, e.g. {{\"{modality}\": [...]}})")


def _channels(embedding: nn.Module) -> int | None:
    """Bands a TerraMind patch embedding takes: from its projection, which TerraTorch replaces
    (leaving ``num_channels`` as it was) when ``bands`` selects some (``select_modality_patch_embed_weights``)."""
    proj, patch = getattr(embedding, "proj", None), getattr(embedding, "patch_size", None)
    if isinstance(proj, nn.Linear) and isinstance(patch, (tuple, list)) and len(patch) == 2:
        return proj.in_features // (int(patch[0]) * int(patch[1]))
    chans = getattr(embedding, "num_channels", None)
    return chans if isinstance(chans, int) else None


def _card_options(card: ModelCard) -> dict[str, Any]:
    options = card.item.get("properties", {}).get("mlm:hyperparameters") or {}
    if not isinstance(options, dict):
        raise ModelError(f"model card {card.href}: mlm:hyperparameters must be an object (TerraTorch's build "
                         "keyword arguments)")
    return dict(options)


def build(card: ModelCard) -> TerraTorchBackbone:
    """The backbone of a ``terratorch:NAME`` card, untrained (``pretrained=False``)."""
    name = card.architecture.partition(":")[2]
    model = _build_model(name, _card_options(card), f"model card {card.href}")
    return wrap(model, name, card)


# -- ad-hoc cards: --model terratorch:NAME --------------------------------------------------------

def card_for(ref: str) -> ModelCard:
    """A card for ``terratorch:NAME[?option=value&...]`` from what TerraTorch's registry states.

    Options are the build's keyword arguments (``img_size=224``, ``bands=BLUE,GREEN,RED``,
    ``modalities=S2L2A,S1GRD``, ``num_frames=4``; JSON values allowed). Bands are named with
    STAC common names; value scaling is TerraTorch's pretraining mean/std where it has them
    (optical bands written for reflectance: its digital numbers / 10000). The card has no
    weights: run it with ``--weights FILE`` or ``--weights random``.
    """
    name, options = _split_ref(ref)
    where = f"--model {ref}"
    with torch.random.fork_rng(devices=[]):
        model = _build_model(name, options, where)
    mapping = getattr(model, "mod_name_mapping", None)
    if isinstance(mapping, dict):
        if "modalities" not in options:
            raise ModelError(f"{where}: {name} is multi-modal; name its modalities, e.g. "
                             f"--model '{PREFIX}:{name}?modalities=S2L2A,S1GRD,DEM' "
                             "(TerraMind: S2L2A, S2L1C, S1GRD, S1RTC, RGB, DEM)")
        inputs = [_modality_input(model, name, modality, options, where) for modality in mapping]
    else:
        # DOFA keeps no band names; its build took them as model_bands (dofa_vit.py 188-204).
        given = options.get("model_bands") if _is_dofa(model) else None
        inputs = [_single_input(model, name, where, given if isinstance(given, list) else None)]
    size = options.get("img_size", next((m.img_size for m in _outer(model)
                                         if isinstance(getattr(m, "img_size", None), (int, list, tuple))), None))
    size = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else ()
    height, width = size[-2:] if len(size) >= 2 else (None, None)
    if not isinstance(height, int) or not isinstance(width, int):
        raise ModelError(f"{where}: TerraTorch states no input size for {name}; give it: "
                         f"--model '{PREFIX}:{name}?img_size=224'")
    frames = options.get("num_frames", getattr(model, "num_frames", 1))
    frames = frames if isinstance(frames, int) and frames > 1 and not mapping else 1
    item = _card_item(name, options, inputs, (height, width), frames, model)
    card = ModelCard.from_item(item, ref)
    backbone = wrap(model, name, card)
    try:
        with torch.no_grad():
            shape = (1, len(card.bands), *((frames,) if frames > 1 else ()), height, width)
            out = backbone.eval()(torch.zeros(shape))
    except ModelError:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"{where}: TerraTorch's {name} fails on a {height} x {width} chip: {first}") from None
    item["properties"]["mlm:output"][0]["result"]["shape"] = [-1, int(out.shape[-1])]
    return ModelCard.from_item(item, ref)


def _band_name(band: Any) -> str:
    text = band.value if isinstance(band, enum.Enum) else band
    return STAC_NAMES.get(str(text).upper(), str(text)) if isinstance(text, str) else str(text)


def _single_input(model: nn.Module, name: str, where: str, bands: list[Any] | None = None) -> dict[str, Any]:
    bands = bands or getattr(model, "model_bands", None)
    if not bands or not all(isinstance(b, (str, enum.Enum)) for b in bands):
        chans = getattr(model, "in_chans", None)
        hint = (f"give them by name (--model '{PREFIX}:{name}?bands=BLUE,GREEN,RED') or " if bands else "")
        raise ModelError(f"{where}: TerraTorch names no bands for {name}'s {chans or 'input'} channels; {hint}"
                         f"write an MLM card with mlm:architecture '{PREFIX}:{name}' and its bands in mlm:input")
    names = [_band_name(b) for b in bands]
    raw = [b.value if isinstance(b, enum.Enum) else str(b) for b in bands]
    return {"name": "image", "bands": names, "value_scaling": _prithvi_scaling(name, raw)}


def _modality_input(model: nn.Module, name: str, modality: str, options: dict[str, Any],
                    where: str) -> dict[str, Any]:
    key = model.mod_name_mapping[modality]
    given = options.get("bands")
    raw = given.get(modality) if isinstance(given, dict) else None
    if raw is None:
        raw = _terratorch("terratorch.models.backbones.terramind.model.terramind_register").PRETRAINED_BANDS.get(key)
    if not raw:
        raise ModelError(f"{where}: TerraTorch names no bands for modality {modality} ({key}); give them: "
                         f"bands={{\"{modality}\": [...]}} (JSON) in the reference, or write an MLM card")
    raw = [b.value if isinstance(b, enum.Enum) else str(b) for b in raw]
    return {"name": modality, "bands": [_band_name(b) for b in raw],
            "value_scaling": _terramind_scaling(name, key, raw)}


def _z_scores(bands: list[str], known: list[str], means: list[float], stds: list[float],
              divisor: float) -> list[dict[str, Any]] | None:
    if not all(band in known for band in bands):
        return None
    return [{"type": "z-score", "mean": round(means[known.index(b)] / divisor, 6),
             "stddev": round(stds[known.index(b)] / divisor, 6)} for b in bands]


def _prithvi_scaling(name: str, bands: list[str]) -> list[dict[str, Any]] | None:
    prithvi_vit = _terratorch("terratorch.models.backbones.prithvi_vit")
    config = prithvi_vit.prithvi_cfgs.get(name.removeprefix("terratorch_"))
    if config is None:
        return None
    known = [b.value if isinstance(b, enum.Enum) else str(b) for b in config["bands"]]
    return _z_scores(bands, known, config["mean"], config["std"], 10000.0)  # HLS digital numbers -> reflectance


def _terramind_scaling(name: str, key: str, bands: list[str]) -> list[dict[str, Any]] | None:
    tm = _terratorch("terratorch.models.backbones.terramind.model.terramind_register")

    means, stds = ((tm.v01_pretraining_mean, tm.v01_pretraining_std) if "v01" in name
                   else (tm.v1_pretraining_mean, tm.v1_pretraining_std))
    known = tm.PRETRAINED_BANDS.get(key)
    if key not in means or not known:
        return None
    optical = "sen2l" in key  # Sentinel-2 digital numbers -> reflectance; S1 (dB), DEM (m) as they are
    return _z_scores(bands, list(known), means[key], stds[key], 10000.0 if optical else 1.0)


def _card_item(name: str, options: dict[str, Any], inputs: list[dict[str, Any]], size: tuple[int, int],
               frames: int, model: nn.Module) -> dict[str, Any]:
    from importlib.metadata import version

    height, width = size
    spatial = (frames, height, width) if frames > 1 else (height, width)
    order = ["batch", "bands", *(["time"] if frames > 1 else []), "height", "width"]
    mlm_inputs = []
    for entry in inputs:
        mlm_input = {"name": entry["name"], "bands": entry["bands"],
                     "input": {"shape": [-1, len(entry["bands"]), *spatial], "dim_order": order,
                               "data_type": "float32"},
                     "resize_type": None}
        if entry["value_scaling"]:
            mlm_input["value_scaling"] = entry["value_scaling"]
        mlm_inputs.append(mlm_input)
    scaled = all(entry["value_scaling"] for entry in inputs)
    card_name = f"{PREFIX}-{name}"
    description = (
        f"TerraTorch backbone {name} (terratorch {version('terratorch')}), built with "
        f"BACKBONE_REGISTRY.build({name!r}, pretrained=False, **mlm:hyperparameters) by stacembed for "
        f"--model {PREFIX}:{name}. Embedding: the mean of the last layer's patch tokens (stacembed:pooling). "
        + ("Value scaling: TerraTorch's pretraining mean/std; optical bands as reflectance (digital numbers / "
           "10000), Sentinel-1 in dB and DEM in metres as pretrained. " if scaled else
           "TerraTorch states no pretraining statistics for every band: no value scaling. ")
        + "No weights: run it with --weights FILE (the TerraTorch module's state dict) or --weights random."
    )
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA],
        "id": card_name,
        "geometry": None,
        "properties": {
            "datetime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": description,
            "mlm:name": card_name,
            "mlm:architecture": f"{PREFIX}:{name}",
            "mlm:framework": "PyTorch",
            "mlm:framework_version": torch.__version__.split("+")[0],
            "mlm:tasks": ["similarity-search"],
            "mlm:pretrained": True,
            "mlm:total_parameters": sum(p.numel() for p in model.parameters()),
            "mlm:accelerator": None,
            "mlm:accelerator_constrained": False,
            "mlm:input": mlm_inputs,
            "mlm:output": [{"name": "embedding", "tasks": ["similarity-search"],
                            "result": {"shape": [-1, 1], "dim_order": ["batch", "embedding"],
                                       "data_type": "float32"}}],
            "mlm:hyperparameters": options,
            "stacembed:pooling": "mean",
        },
        "links": [],
        "assets": {},
    }


register_prefix(PREFIX, build, card=card_for, names=registry_names)
