"""Prithvi-EO-2.0 encoder: the released checkpoints' layout, loading them, shapes, encodings.

The expected layout is written down here from the reference implementation, not read from
stacembed's module:

- terratorch ``terratorch/models/backbones/prithvi_mae.py`` (``PrithviViT``, ``MAEDecoder``,
  ``PrithviMAE``) and ``terratorch/models/backbones/prithvi_vit.py`` (``prithvi_cfgs``),
  github.com/terrastackai/terratorch at commit f111497348a9e432b23aac000c1c9c70d08aa510;
  the same classes ship as ``prithvi_mae.py`` in the Hugging Face repos
  ibm-nasa-geospatial/Prithvi-EO-2.0-{300M,300M-TL,600M,600M-TL}.
- Encoder: ``cls_token`` (1, 1, D) parameter; ``pos_embed`` (1, 1 + T*h*w, D) *persistent
  buffer* for the pretraining grid (num_frames 4, 224 x 224); ``patch_embed.proj`` Conv3d with
  kernel = stride = patch (1, 16, 16) for 300M and (1, 14, 14) for 600M, with bias;
  ``temporal_embed_enc.scale`` / ``location_embed_enc.scale`` (1,) for the TL models
  (coords_scale_learn=True); ``blocks.N`` = timm ``Block(D, 16 heads, mlp_ratio 4, qkv_bias=True)``;
  ``norm`` LayerNorm. 300M: D 1024, depth 24; 600M: D 1280, depth 32; 6 input bands.
- The released .pt files are flat dicts ``encoder.*`` + ``decoder.*`` (decoder: D_dec 512,
  depth 8, 16 heads): 398 keys for 300M and 402 for 300M-TL, as counted from the files
  themselves by third parties -- the layout below reproduces those counts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stacembed.errors import ModelError
from stacembed.models.backbones.prithvi import CONFIGS, PrithviViT
from stacembed.models.card import ModelCard
from stacembed.models.registry import create_backbone
from stacembed.models.weights import load_weights

# -- the official layout, from the reference source ------------------------------------------------

def block_layout(prefix: str, dim: int, mlp_ratio: int = 4) -> dict[str, tuple[int, ...]]:
    hidden = dim * mlp_ratio
    return {
        f"{prefix}norm1.weight": (dim,), f"{prefix}norm1.bias": (dim,),
        f"{prefix}attn.qkv.weight": (3 * dim, dim), f"{prefix}attn.qkv.bias": (3 * dim,),
        f"{prefix}attn.proj.weight": (dim, dim), f"{prefix}attn.proj.bias": (dim,),
        f"{prefix}norm2.weight": (dim,), f"{prefix}norm2.bias": (dim,),
        f"{prefix}mlp.fc1.weight": (hidden, dim), f"{prefix}mlp.fc1.bias": (hidden,),
        f"{prefix}mlp.fc2.weight": (dim, hidden), f"{prefix}mlp.fc2.bias": (dim,),
    }


def official_encoder(dim: int, depth: int, patch: tuple[int, int, int], tl: bool, in_chans: int = 6,
                     frames: int = 4, img: int = 224) -> dict[str, tuple[int, ...]]:
    pt, ph, pw = patch
    tokens = (frames // pt) * (img // ph) * (img // pw)
    layout = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + tokens, dim),
        "patch_embed.proj.weight": (dim, in_chans, pt, ph, pw),
        "patch_embed.proj.bias": (dim,),
    }
    if tl:
        layout["temporal_embed_enc.scale"] = (1,)
        layout["location_embed_enc.scale"] = (1,)
    for i in range(depth):
        layout |= block_layout(f"blocks.{i}.", dim)
    layout |= {"norm.weight": (dim,), "norm.bias": (dim,)}
    return layout


def official_decoder(enc_dim: int, patch: tuple[int, int, int], tl: bool, dim: int = 512, depth: int = 8,
                     in_chans: int = 6, frames: int = 4, img: int = 224) -> dict[str, tuple[int, ...]]:
    pt, ph, pw = patch
    tokens = (frames // pt) * (img // ph) * (img // pw)
    layout = {
        "mask_token": (1, 1, dim),
        "decoder_pos_embed": (1, 1 + tokens, dim),
        "decoder_embed.weight": (dim, enc_dim), "decoder_embed.bias": (dim,),
    }
    if tl:
        layout["temporal_embed_dec.scale"] = (1,)
        layout["location_embed_dec.scale"] = (1,)
    for i in range(depth):
        layout |= block_layout(f"decoder_blocks.{i}.", dim)
    layout |= {"decoder_norm.weight": (dim,), "decoder_norm.bias": (dim,),
               "decoder_pred.weight": (pt * ph * pw * in_chans, dim), "decoder_pred.bias": (pt * ph * pw * in_chans,)}
    return layout


RELEASED = {  # name: (embed dim, depth, patch, TL)
    "prithvi_eo_v2_300m": (1024, 24, (1, 16, 16), False),
    "prithvi_eo_v2_300m_tl": (1024, 24, (1, 16, 16), True),
    "prithvi_eo_v2_600m": (1280, 32, (1, 14, 14), False),
    "prithvi_eo_v2_600m_tl": (1280, 32, (1, 14, 14), True),
}


def test_layout_counts_match_the_released_files():
    full_300m = {f"encoder.{k}" for k in official_encoder(1024, 24, (1, 16, 16), False)}
    full_300m |= {f"decoder.{k}" for k in official_decoder(1024, (1, 16, 16), False)}
    full_300m_tl = {f"encoder.{k}" for k in official_encoder(1024, 24, (1, 16, 16), True)}
    full_300m_tl |= {f"decoder.{k}" for k in official_decoder(1024, (1, 16, 16), True)}
    assert (len(full_300m), len(full_300m_tl)) == (398, 402)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_state_dict_matches_the_official_encoder(name):
    dim, depth, patch, tl = RELEASED[name]
    with torch.device("meta"):
        model = PrithviViT(**CONFIGS[name])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_encoder(dim, depth, patch, tl)
    assert model.num_features == dim and model.patch_size == patch and model.num_prefix_tokens == 1
    # pos_embed is a buffer, the coordinate scales learned parameters (as in the reference).
    assert "pos_embed" not in dict(model.named_parameters())
    if tl:
        assert {"temporal_embed_enc.scale", "location_embed_enc.scale"} <= set(dict(model.named_parameters()))


def test_300m_spot_checks_and_parameter_count():
    with torch.device("meta"):
        model = PrithviViT(**CONFIGS["prithvi_eo_v2_300m"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (1024, 6, 1, 16, 16)
    assert shapes["pos_embed"] == (1, 785, 1024)
    assert shapes["blocks.23.mlp.fc1.weight"] == (4096, 1024)
    assert "blocks.24.norm1.weight" not in shapes
    d = 1024
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    expected = (6 * 16 * 16 * d + d) + d + 24 * per_block + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected == 303_886_336
    with torch.device("meta"):
        big = PrithviViT(**CONFIGS["prithvi_eo_v2_600m"])
    assert tuple(big.state_dict()["pos_embed"].shape) == (1, 1025, 1280)


# -- a synthetic checkpoint in the released format --------------------------------------------------

TINY = dict(img_size=32, patch_size=(1, 8, 8), num_frames=4, in_chans=6, embed_dim=64, depth=2, num_heads=4)


def synthetic_checkpoint(tl: bool, img: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released names and shapes (tiny sizes), encoder and decoder."""
    gen = torch.Generator().manual_seed(seed)
    layout = {f"encoder.{k}": s for k, s in official_encoder(64, 2, (1, 8, 8), tl, img=img).items()}
    layout |= {f"decoder.{k}": s for k, s in official_decoder(64, (1, 8, 8), tl, dim=32, depth=1, img=img).items()}
    state = {k: torch.randn(s, generator=gen) for k, s in layout.items()}
    state["encoder.pos_embed"] = torch.from_numpy(reference_table(64, (4, img // 8, img // 8)))[None].float()
    return state


def test_released_format_loads_strictly(tmp_path):
    path = tmp_path / "Prithvi_EO_V2_tiny_TL.pt"
    saved = synthetic_checkpoint(tl=True)
    torch.save(saved, path)
    state = PrithviViT.checkpoint_filter(torch.load(path, map_location="cpu", weights_only=True))
    assert not any(k.startswith(("encoder.", "decoder.")) or "mask_token" in k or "_dec" in k for k in state)
    model = PrithviViT(**TINY, coords_encoding=("time", "location"), coords_scale_learn=True)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.blocks[1].attn.qkv.weight, saved["encoder.blocks.1.attn.qkv.weight"])
    assert torch.equal(model.location_embed_enc.scale, saved["encoder.location_embed_enc.scale"])

    # The same file through stacembed's loader (weights_only, checkpoint_filter, strict).
    other = PrithviViT(**TINY, coords_encoding=("time", "location"), coords_scale_learn=True)
    load_weights(other, path)
    assert torch.equal(other.patch_embed.proj.weight, saved["encoder.patch_embed.proj.weight"])
    # ... also when wrapped, as some trainers save them.
    torch.save({"model": saved}, tmp_path / "wrapped.pt")
    load_weights(PrithviViT(**TINY, coords_encoding=("time", "location"), coords_scale_learn=True),
                 tmp_path / "wrapped.pt")


def test_filter_passes_encoder_only_state_dicts():
    model = PrithviViT(**TINY)
    state = dict(model.state_dict())
    state["decoder.decoder_norm.weight"] = torch.ones(3)
    PrithviViT(**TINY).load_state_dict(PrithviViT.checkpoint_filter(state), strict=True)


def test_tl_weights_in_a_plain_model_are_an_error(tmp_path):
    torch.save(synthetic_checkpoint(tl=True), tmp_path / "tl.pt")
    with pytest.raises(ModelError, match="temporal_embed_enc"):
        load_weights(PrithviViT(**TINY), tmp_path / "tl.pt")


def test_pos_embed_for_another_size_is_recomputed_not_refused():
    state = PrithviViT.checkpoint_filter(synthetic_checkpoint(tl=False, img=32))
    model = PrithviViT(**{**TINY, "img_size": 48, "num_frames": 2})
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.blocks[0].mlp.fc2.bias, state["blocks.0.mlp.fc2.bias"])
    np.testing.assert_allclose(model.pos_embed[0].numpy(), reference_table(64, (2, 6, 6)), atol=1e-6)
    # A different embedding size is still a real mismatch.
    bad = dict(state, pos_embed=torch.zeros(1, 65, 32))
    with pytest.raises(RuntimeError, match="pos_embed"):
        PrithviViT(**TINY).load_state_dict(bad, strict=True)


# -- forward ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny() -> PrithviViT:
    torch.manual_seed(0)
    return PrithviViT(**TINY).eval()


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_shapes(tiny, frames):
    x = torch.randn(2, 6, frames, 32, 48)
    tokens = 1 + frames * 4 * 6
    with torch.no_grad():
        features = tiny.forward_features(x)
        pooled = tiny(x)
        inter = tiny.forward_intermediates(x, [0, -1])
    assert features.shape == (2, tokens, 64)
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(pooled, features[:, 0])
    assert [t.shape for t in inter] == [(2, tokens, 64)] * 2
    # The last block's output, normed, is forward_features.
    torch.testing.assert_close(tiny.norm(inter[1]), features)
    assert len(tiny.forward_intermediates(x, 2)) == 2


def test_single_frame_may_omit_the_time_axis(tiny):
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x), tiny(x.unsqueeze(2)))


def test_sizes_that_do_not_tile_are_a_clear_error(tiny):
    with pytest.raises(ModelError, match="multiples of 8 x 8"):
        tiny(torch.randn(1, 6, 30, 32))
    with pytest.raises(ModelError, match="6 bands"):
        tiny(torch.randn(1, 5, 32, 32))
    with pytest.raises(ModelError, match="out of range"):
        tiny.forward_intermediates(torch.randn(1, 6, 32, 32), [2])


def reference_table(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """The 3D sin-cos table from its definition, one token at a time (float64)."""
    t, h, w = grid
    unit = dim // 16

    def encode(size: int, position: int) -> list[float]:
        half = size // 2
        angles = [position / 10000 ** (i / half) for i in range(half)]
        return [math.sin(a) for a in angles] + [math.cos(a) for a in angles]

    rows = [[0.0] * dim]
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                rows.append(encode(6 * unit, wi) + encode(6 * unit, hi) + encode(4 * unit, ti))
    return np.array(rows)


def test_position_table_is_the_3d_sincos(tiny):
    np.testing.assert_allclose(tiny.pos_embed[0].numpy(), reference_table(64, (4, 4, 4)), atol=1e-6)
    like = torch.zeros(1)
    for grid in [(1, 4, 4), (3, 4, 6), (5, 2, 3)]:
        table = tiny._position_table(grid, like)
        np.testing.assert_allclose(table[0].numpy(), reference_table(64, grid), atol=1e-6)


def manual_forward(model: PrithviViT, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder spelled out with functional ops and the independent position table."""
    b, _, t, h, w = x.shape
    grid = (t, h // 8, w // 8)
    tokens = torch.nn.functional.conv3d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=(1, 8, 8))
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = torch.from_numpy(reference_table(64, grid)).float()
    tokens = tokens + pos[1:]
    if extra is not None:
        tokens = tokens + extra
    seq = torch.cat([model.cls_token.expand(b, -1, -1), tokens], dim=1)
    for block in model.blocks:
        seq = block(seq)
    return model.norm(seq)


def test_forward_is_the_reference_computation(tiny):
    x = torch.randn(2, 6, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(tiny.forward_features(x), manual_forward(tiny, x), atol=1e-5, rtol=1e-5)


def sincos_pair(dim: int, a: float, b: float) -> torch.Tensor:
    def enc(size, p):
        half = size // 2
        angles = [p / 10000 ** (i / half) for i in range(half)]
        return [math.sin(v) for v in angles] + [math.cos(v) for v in angles]
    return torch.tensor(enc(dim // 2, a) + enc(dim - dim // 2, b))


def test_tl_runs_with_and_without_coordinates():
    torch.manual_seed(0)
    model = PrithviViT(**TINY, coords_encoding=("time", "location"), coords_scale_learn=True).eval()
    with torch.no_grad():
        model.temporal_embed_enc.scale.fill_(0.5)
        model.location_embed_enc.scale.fill_(0.25)
    x = torch.randn(2, 6, 3, 16, 16)
    times = torch.tensor([[[2020.0, 10.0], [2020.0, 100.0], [2021.0, 200.0]]] * 2)
    places = torch.tensor([[45.5, 7.25], [-12.0, 130.0]])
    with torch.no_grad():
        plain = model(x)
        with_time = model(x, temporal_coords=times)
        both = model.forward_features(x, temporal_coords=times, location_coords=places)
        with_place = model(x, location_coords=places)
    assert plain.shape == with_time.shape == with_place.shape == (2, 64)
    assert not torch.allclose(plain, with_time) and not torch.allclose(plain, with_place)
    # The coordinates enter as scale * sin-cos encodings: time per frame, location per sample.
    per_frame = torch.stack([torch.stack([0.5 * sincos_pair(64, *map(float, times[i, f])) for f in range(3)])
                             for i in range(2)])
    extra = per_frame.repeat_interleave(4, dim=1) + torch.stack(
        [0.25 * sincos_pair(64, *map(float, places[i])) for i in range(2)]).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(both, manual_forward(model, x, extra), atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelError, match="temporal_coords"):
        model(x, temporal_coords=times[:, :2])


def test_new_grid_in_inference_mode_then_training():
    model = PrithviViT(**TINY)
    with torch.inference_mode():
        model(torch.randn(1, 6, 2, 40, 40))
    model(torch.randn(1, 6, 2, 40, 40)).sum().backward()
    assert model.cls_token.grad is not None


# -- registry builders ------------------------------------------------------------------------------

def card(architecture: str, size: int = 224, embedding: int = 1024) -> ModelCard:
    return ModelCard(name="test", architecture=architecture,
                     bands=("blue", "green", "red", "nir08", "swir16", "swir22"),
                     input_size=(size, size), embedding_size=embedding, value_scaling=(), href="test.json")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_builders_are_registered(name):
    dim, _, patch, tl = RELEASED[name]
    with torch.device("meta"):
        model = create_backbone(card(name, embedding=dim))
    assert isinstance(model, PrithviViT)
    assert model.num_features == dim and model.patch_size == patch and model.temporal_encoding == tl


def test_builder_checks_the_card():
    with pytest.raises(ModelError, match="1024-d"):
        create_backbone(card("prithvi_eo_v2_300m", embedding=768))
    with pytest.raises(ModelError, match="multiple of its 14 x 14"):
        create_backbone(card("prithvi_eo_v2_600m", size=224 + 8, embedding=1280))


def test_builtin_prithvi_cards_build():
    from stacembed.models.registry import list_cards, resolve_card

    cards = [resolve_card(name) for name in list_cards()]
    for prithvi_card in (c for c in cards if c.architecture in RELEASED):
        with torch.device("meta"):
            model = create_backbone(prithvi_card)
        assert model.num_features == prithvi_card.embedding_size
