"""Prithvi-EO-2.0 encoder (IBM / NASA / Jülich): a ViT over HLS time series.

The network is the encoder half of the Prithvi MAE, laid out so that the released checkpoints
(``Prithvi_EO_V2_300M.pt``, ``..._300M_TL.pt``, ``..._600M.pt``, ``..._600M_TL.pt`` on Hugging
Face, ``ibm-nasa-geospatial``) load unchanged after :meth:`PrithviViT.checkpoint_filter`:

- ``patch_embed.proj``: a Conv3d whose kernel and stride are the (t, h, w) patch, (1, 16, 16) for
  300M and (1, 14, 14) for 600M, so every frame is patched on its own;
- ``pos_embed``: a fixed (never trained) 3D sine-cosine table, stored as a persistent buffer of
  ``(1, 1 + T*h*w, D)`` for the pretraining grid (4 frames of 224 x 224), first row for the cls
  token (zeros). Inputs of another size or length get the same formula evaluated on their own
  grid (computed once per grid and cached), as the ``prithvi_mae.py`` of the Hugging Face
  repositories does (terratorch instead resamples the stored table bicubically when only the
  height or width changes; for the pretraining chip size both agree exactly);
- ``cls_token``; ``blocks.N`` (timm ``Block``: pre-norm attention with a qkv bias, GELU MLP x4);
  ``norm``, the final LayerNorm;
- the ``_TL`` variants add ``temporal_embed_enc.scale`` and ``location_embed_enc.scale``: learned
  weights of sine-cosine encodings of (year, day-of-year) per frame and of (lat, lon) per sample,
  added to the patch tokens. Both inputs are optional; without them the model runs as if the
  metadata were missing, which is how it was pretrained to cope with absent metadata.

Reference: terratorch ``terratorch/models/backbones/prithvi_mae.py`` and ``prithvi_vit.py``
(github.com/terrastackai/terratorch, commit f111497348a9e432b23aac000c1c9c70d08aa510) and the
``prithvi_mae.py`` shipped in the Hugging Face model repositories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ...errors import ModelError
from ..card import ModelCard
from ..registry import register_architecture

__all__ = ["PrithviViT", "sincos_1d", "sincos_3d"]


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """``(M, dim)``: ``[sin(p * w_0..w_{k-1}), cos(p * w_0..w_{k-1})]`` with ``w_i = 10000**(-i/k)``, k = dim/2.

    Computed in the dtype of ``positions`` (a float tensor).
    """
    if dim % 2:
        raise ValueError(f"a sine-cosine encoding needs an even size, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, dtype=positions.dtype, device=positions.device) / half
    frequencies = 1.0 / (10000.0 ** exponent)
    angles = positions.reshape(-1, 1) * frequencies.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, grid: Sequence[int], cls_token: bool = True) -> Tensor:
    """The fixed 3D table ``(1 + t*h*w, dim)`` (float64) for a ``(t, h, w)`` token grid.

    Tokens run time-major, then rows, then columns (the order of a flattened Conv3d output).
    Each token's vector is the concatenation of the 1D encodings of its column (6/16 of ``dim``),
    row (6/16) and frame (4/16) index; the cls token's row is zeros.
    """
    if dim % 16:
        raise ValueError(f"the 3D sine-cosine table needs an embedding size divisible by 16, got {dim}")
    t, h, w = (int(n) for n in grid)
    unit = dim // 16

    def axis(size: int, width: int) -> Tensor:
        return sincos_1d(width, torch.arange(size, dtype=torch.float64, device="cpu"))

    by_col = axis(w, 6 * unit)[None, None, :, :].expand(t, h, w, -1)
    by_row = axis(h, 6 * unit)[None, :, None, :].expand(t, h, w, -1)
    by_frame = axis(t, 4 * unit)[:, None, None, :].expand(t, h, w, -1)
    table = torch.cat([by_col, by_row, by_frame], dim=-1).reshape(t * h * w, dim)
    if cls_token:
        table = torch.cat([table.new_zeros(1, dim), table], dim=0)
    return table


class PatchEmbed3d(nn.Module):
    """Non-overlapping (t, h, w) cubes -> tokens ``(B, T'*H'*W', D)``; parameters ``proj.*``."""

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _CoordsEncoder(nn.Module):
    """``scale * [sincos(a) | sincos(b)]`` for pairs (year, day-of-year) or (lat, lon).

    The first value takes the first ``D // 2`` features, the second the rest. ``scale`` is a
    learned scalar in the released _TL models (``coords_scale_learn``), else a buffer of ones.
    """

    def __init__(self, embed_dim: int, learn_scale: bool) -> None:
        super().__init__()
        self.first_dim = embed_dim // 2
        self.second_dim = embed_dim - self.first_dim
        if learn_scale:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))

    def forward(self, pairs: Tensor) -> Tensor:
        """``(..., 2)`` -> ``(..., D)``; computed in float32 like the reference, whatever ``pairs`` is."""
        pairs = pairs.to(torch.float32)
        first = sincos_1d(self.first_dim, pairs[..., 0].reshape(-1))
        second = sincos_1d(self.second_dim, pairs[..., 1].reshape(-1))
        encoded = torch.cat([first, second], dim=-1).reshape(*pairs.shape[:-1], -1)
        return self.scale.to(encoded.dtype) * encoded


class PrithviViT(nn.Module):
    """The Prithvi-EO-2.0 encoder; ``forward`` gives the cls token of the final, normed tokens.

    ``x`` is ``(B, C, T, H, W)`` or ``(B, C, H, W)`` (one frame). ``H`` and ``W`` must be multiples
    of the patch size but need not be ``img_size``, which only fixes the shape of the stored
    ``pos_embed`` buffer (the pretraining grid, to match the released checkpoints).
    """

    num_prefix_tokens: int = 1

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = (1, 16, 16),
        num_frames: int = 4,
        in_chans: int = 6,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        coords_encoding: Sequence[str] = (),
        coords_scale_learn: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        # Imported here: importing timm's model zoo takes seconds, and registering this
        # architecture must not slow down every stacembed command.
        from timm.models.vision_transformer import Block

        if isinstance(patch_size, int):
            patch_size = (1, patch_size, patch_size)
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        self.patch_size: tuple[int, int, int] = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
        self.img_size: tuple[int, int] = (int(img_size[0]), int(img_size[1]))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be (t, h, w) of positive sizes, got {patch_size}")
        unknown = set(coords_encoding) - {"time", "location"}
        if unknown:
            raise ValueError(f"coords_encoding takes 'time' and/or 'location', got {sorted(unknown)}")
        if embed_dim % 16:
            raise ValueError(f"embed_dim must be divisible by 16 (3D sine-cosine table), got {embed_dim}")
        self.in_chans = in_chans
        self.num_frames = num_frames
        self.embed_dim = self.num_features = embed_dim
        self.temporal_encoding = "time" in coords_encoding
        self.location_encoding = "location" in coords_encoding
        if self.temporal_encoding and self.patch_size[0] != 1:
            raise ValueError("temporal encoding needs a temporal patch size of 1")
        self._base_grid = self.token_grid(num_frames, *self.img_size)

        self.patch_embed = PatchEmbed3d(self.patch_size, in_chans, embed_dim)
        if self.temporal_encoding:
            self.temporal_embed_enc = _CoordsEncoder(embed_dim, coords_scale_learn)
        if self.location_encoding:
            self.location_embed_enc = _CoordsEncoder(embed_dim, coords_scale_learn)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        table = sincos_3d(embed_dim, self._base_grid).to(torch.float32).unsqueeze(0)
        self.register_buffer("pos_embed", table.to(self.cls_token.device))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=norm_eps))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._pos_cache: dict[tuple, Tensor] = {}
        self._init_weights()

    # -- construction -------------------------------------------------------------------------

    def _init_weights(self) -> None:
        """Random initialisation as in MAE pretraining (only matters for ``--weights random``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The (t, h, w) token grid of an input; a clear error when it does not tile by the patch."""
        pt, ph, pw = self.patch_size
        if frames % pt or height % ph or width % pw or min(frames, height, width) < 1:
            raise ModelError(
                f"Prithvi input of {frames} frame(s) x {height} x {width} pixels does not tile into "
                f"{pt} x {ph} x {pw} patches: height and width must be positive multiples of {ph} x {pw}"
                + (f" and the number of frames a multiple of {pt}" if pt > 1 else "")
            )
        return frames // pt, height // ph, width // pw

    # -- checkpoints --------------------------------------------------------------------------

    @staticmethod
    def checkpoint_filter(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The encoder's entries of a released Prithvi MAE checkpoint, named as in this module.

        Keeps ``encoder.*`` with the prefix removed and drops the MAE decoder (``decoder.*``, the
        mask token, the decoder's ``*_embed_dec.*`` coordinate scales). A checkpoint that is
        already encoder-only (no ``encoder.`` keys, e.g. a terratorch ``PrithviViT`` state dict)
        passes through minus any decoder entries. ``pos_embed`` is kept as is; if it was made
        for another grid, loading replaces it with this module's table (see
        ``_load_from_state_dict``), since it is a fixed sine-cosine table, never trained.
        """
        for wrapper in ("state_dict", "model"):
            inner = state_dict.get(wrapper) if isinstance(state_dict, Mapping) else None
            if isinstance(inner, Mapping):
                state_dict = inner
        cleaned: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            for prefix in ("module.", "_timm_module."):
                key = key.removeprefix(prefix)
            cleaned[key] = value
        if any(key.startswith("encoder.") for key in cleaned):
            return {key.removeprefix("encoder."): value
                    for key, value in cleaned.items() if key.startswith("encoder.")}
        return {key: value for key, value in cleaned.items()
                if not (key.startswith("decoder") or "_embed_dec." in key or key == "mask_token")}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # A pos_embed for another grid (other img_size / num_frames) is the same fixed formula on
        # other positions: take this module's own table rather than fail on the shape.
        key = prefix + "pos_embed"
        incoming = state_dict.get(key)
        if (isinstance(incoming, Tensor) and incoming.shape != self.pos_embed.shape
                and incoming.ndim == 3 and incoming.shape[-1] == self.pos_embed.shape[-1]):
            state_dict[key] = self.pos_embed.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    # -- forward ------------------------------------------------------------------------------

    def _position_table(self, grid: tuple[int, int, int], like: Tensor) -> Tensor:
        """``(1, 1 + t*h*w, D)`` for ``grid``: the stored buffer when it covers the grid, else cached sin-cos."""
        t, h, w = grid
        t0, h0, w0 = self._base_grid
        if (h, w) == (h0, w0) and t <= t0:
            # The buffer's first t frames are the table of a t-frame grid (frames are outermost).
            return self.pos_embed[:, : 1 + t * h * w].to(like.dtype)
        key = (grid, like.device, like.dtype)
        table = self._pos_cache.get(key)
        if table is None:
            with torch.inference_mode(False), torch.no_grad():
                table = sincos_3d(self.embed_dim, grid).unsqueeze(0).to(device=like.device, dtype=like.dtype)
            if len(self._pos_cache) >= 8:
                self._pos_cache.pop(next(iter(self._pos_cache)))
            self._pos_cache[key] = table
        return table

    def _tokens(self, x: Tensor, temporal_coords: Tensor | None, location_coords: Tensor | None) -> Tensor:
        """Patch tokens plus position (and optional time/location) encodings, cls token first."""
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5:
            raise ModelError(f"Prithvi expects (B, C, T, H, W) or (B, C, H, W) input, got shape {tuple(x.shape)}")
        batch, chans, frames, height, width = x.shape
        if chans != self.in_chans:
            raise ModelError(f"Prithvi was built for {self.in_chans} bands, the input has {chans}")
        grid = self.token_grid(frames, height, width)
        tokens = self.patch_embed(x)
        pos = self._position_table(grid, tokens)
        tokens = tokens + pos[:, 1:]
        if self.temporal_encoding and temporal_coords is not None:
            coords = torch.as_tensor(temporal_coords, device=tokens.device)
            if coords.ndim == 2:
                coords = coords.unsqueeze(1).expand(-1, grid[0], -1)
            if coords.shape != (batch, grid[0], 2):
                raise ModelError(f"temporal_coords must be (B, T, 2) = ({batch}, {grid[0]}, 2) "
                                 f"(year, day of year per frame), got {tuple(coords.shape)}")
            per_frame = self.temporal_embed_enc(coords).to(tokens.dtype)  # (B, T, D)
            tokens = tokens + per_frame.repeat_interleave(grid[1] * grid[2], dim=1)
        if self.location_encoding and location_coords is not None:
            coords = torch.as_tensor(location_coords, device=tokens.device)
            if coords.shape != (batch, 2):
                raise ModelError(f"location_coords must be (B, 2) = ({batch}, 2) (lat, lon), "
                                 f"got {tuple(coords.shape)}")
            tokens = tokens + self.location_embed_enc(coords).to(tokens.dtype).unsqueeze(1)
        cls = (self.cls_token + pos[:, :1]).expand(batch, -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_features(self, x: Tensor, temporal_coords: Tensor | None = None,
                         location_coords: Tensor | None = None) -> Tensor:
        """``(B, 1 + T*h*w, D)``: all tokens after the last block and the final norm."""
        tokens = self._tokens(x, temporal_coords, location_coords)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int],
                              temporal_coords: Tensor | None = None,
                              location_coords: Tensor | None = None) -> list[Tensor]:
        """Outputs ``(B, 1 + T*h*w, D)`` of ``blocks[i]`` for each ``i`` in ``indices`` (no final norm).

        Negative indices count from the last block; an int ``n`` means the last ``n`` blocks.
        Blocks after the deepest one asked for are not run.
        """
        depth = len(self.blocks)
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ModelError(f"forward_intermediates: cannot take the last {indices} of {depth} blocks")
            wanted = list(range(depth - indices, depth))
        else:
            wanted = []
            for index in indices:
                if not -depth <= int(index) < depth:
                    raise ModelError(f"forward_intermediates: block {index} out of range for {depth} blocks")
                wanted.append(int(index) % depth)
        if not wanted:
            return []
        tokens = self._tokens(x, temporal_coords, location_coords)
        outputs: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens)
            if i in wanted:
                outputs[i] = tokens
        return [outputs[i] for i in wanted]

    @property
    def context_inputs(self) -> tuple[str, ...]:
        """Inputs besides pixels this model uses; stacembed's engine fills them per chip."""
        wanted = (("temporal_coords", self.temporal_encoding), ("location_coords", self.location_encoding))
        return tuple(name for name, used in wanted if used)

    def forward(self, x: Tensor, temporal_coords: Tensor | None = None,
                location_coords: Tensor | None = None) -> Tensor:
        """``(B, D)``: the cls token of :meth:`forward_features`, the default pooled embedding."""
        return self.forward_features(x, temporal_coords, location_coords)[:, 0]


# -- released configurations --------------------------------------------------------------------

# Hyper-parameters of the released models (terratorch prithvi_vit.py ``prithvi_cfgs``; the
# Hugging Face config.json files): 6 HLS bands, 4 frames of 224 x 224 in pretraining, MLP ratio 4.
_COMMON = dict(num_frames=4, mlp_ratio=4.0)
CONFIGS: dict[str, dict] = {
    "prithvi_eo_v2_300m": dict(_COMMON, embed_dim=1024, depth=24, num_heads=16, patch_size=(1, 16, 16)),
    "prithvi_eo_v2_600m": dict(_COMMON, embed_dim=1280, depth=32, num_heads=16, patch_size=(1, 14, 14)),
}
_TL = dict(coords_encoding=("time", "location"), coords_scale_learn=True)
CONFIGS["prithvi_eo_v2_300m_tl"] = dict(CONFIGS["prithvi_eo_v2_300m"], **_TL)
CONFIGS["prithvi_eo_v2_600m_tl"] = dict(CONFIGS["prithvi_eo_v2_600m"], **_TL)


def build(name: str, card: ModelCard) -> PrithviViT:
    """The ``name`` configuration for ``card``'s bands and chip size, checked against the card."""
    config = CONFIGS[name]
    _, ph, pw = config["patch_size"]
    height, width = card.input_size
    if height % ph or width % pw:
        raise ModelError(f"model card {card.href}: {name} needs an input size that is a multiple of "
                         f"its {ph} x {pw} patches, the card says {height} x {width}")
    if config["embed_dim"] != card.embedding_size:
        raise ModelError(f"model card {card.href}: {name} gives {config['embed_dim']}-d embeddings, "
                         f"the card says {card.embedding_size}")
    return PrithviViT(img_size=(height, width), in_chans=len(card.bands), **config)


@register_architecture("prithvi_eo_v2_300m")
def prithvi_eo_v2_300m(card: ModelCard) -> PrithviViT:
    return build("prithvi_eo_v2_300m", card)


@register_architecture("prithvi_eo_v2_300m_tl")
def prithvi_eo_v2_300m_tl(card: ModelCard) -> PrithviViT:
    return build("prithvi_eo_v2_300m_tl", card)


@register_architecture("prithvi_eo_v2_600m")
def prithvi_eo_v2_600m(card: ModelCard) -> PrithviViT:
    return build("prithvi_eo_v2_600m", card)


@register_architecture("prithvi_eo_v2_600m_tl")
def prithvi_eo_v2_600m_tl(card: ModelCard) -> PrithviViT:
    return build("prithvi_eo_v2_600m_tl", card)
