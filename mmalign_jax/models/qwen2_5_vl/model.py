"""Qwen2.5-VL: a windowed 2-D-RoPE ViT → 2×2 patch merger → Qwen2 decoder with M-RoPE.

Static shapes under `jit` with images of any size: each example carries `I` image slots of
`P` patches (`P` a bucket from the loader: padding patches are masked out of attention),
and `image_grid_thw [B, I, 3]` gives each slot's real patch grid (zeros for an empty slot).
Everything HF derives on the host from the grids — vision position ids, window layout,
3-D text positions — is computed here from the grids with arithmetic, so one compiled
program serves every mix of image sizes that fits the slot.

Window attention is an attention mask over windows (same window, same frame), not HF's
permutation into contiguous windows: attention is permutation-equivariant given the
mask and the rotary angles travel with their tokens, so the two are equal (up to float
reassociation), and the layout stays the image's row-major merge order end to end.

Image inputs (`pixel_values` of the model's methods) are a dict:
`{"pixel_values": float32[B, I, P, C·2·14·14], "image_grid_thw": int32[B, I, 3]}` —
what `processor.preprocess` makes per image, padded to the slot.
"""
from __future__ import annotations

import functools
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.layers import Dense, RMSNorm, activation, constrain, swiglu
from mmalign_jax.models.llama import LlamaModel, default_positions, init_kv_cache
from mmalign_jax.models.param_init import ParamInit
from mmalign_jax.models.qwen2_5_vl.config import Qwen25VLConfig

_ACT_V = ("activation_batch", "activation_length", "activation_embed_vision")


def _dense(cfg: Qwen25VLConfig, features: int, axes, name: str, use_bias: bool = True) -> Dense:
    return Dense(features, axes, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
                 param_dtype=jnp.dtype(cfg.param_dtype), lora=cfg.lora,
                 kernel_init=nn.initializers.normal(0.02), name=name)


def _rms(cfg: Qwen25VLConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.vision.rms_norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype),
                   name=name)


# ----------------------------------------------------------------------- patch geometry


def patch_layout(cfg: Qwen25VLConfig, grid_thw: jax.Array, n_patches: int) -> dict:
    """Per patch of a slot (merge order: frame, merged row, merged column, 2×2 unit), from
    `grid_thw [N, 3]`: `valid [N, P]`, `hpos`/`wpos` (patch row/column, HF's vision
    position ids), `frame`, `window` (HF's window index of its merged unit)."""
    v = cfg.vision
    m = v.spatial_merge_size
    t, h, w = grid_thw[:, 0:1], grid_thw[:, 1:2], grid_thw[:, 2:3]
    hm, wm = jnp.maximum(h // m, 1), jnp.maximum(w // m, 1)
    p = jnp.arange(n_patches, dtype=jnp.int32)[None, :]
    unit, within = p // (m * m), p % (m * m)
    frame, r = unit // (hm * wm), unit % (hm * wm)
    bh, bw = r // wm, r % wm
    ws = v.window_units
    windows_w = (wm + ws - 1) // ws + (wm % ws == 0)   # HF pads by ws - w % ws, even when 0
    windows_h = (hm + ws - 1) // ws + (hm % ws == 0)
    window = frame * (windows_h * windows_w) + (bh // ws) * windows_w + bw // ws
    return {"valid": p < t * h * w, "hpos": bh * m + within // m, "wpos": bw * m + within % m,
            "frame": frame, "window": window}


def _segment_mask(seg: jax.Array, valid: jax.Array) -> jax.Array:
    """`[N, 1, P, P]`: same segment; padding patches attend only to padding (finite rows)."""
    seg = jnp.where(valid, seg, -1)
    return (seg[:, :, None] == seg[:, None, :])[:, None]


def vision_rope(cfg: Qwen25VLConfig, hpos: jax.Array, wpos: jax.Array):
    """cos/sin `[N, P, Dh]`: HF's axial rope — `head_dim/4` frequencies for the row, the
    same for the column, concatenated, then duplicated (rotate-half convention)."""
    v = cfg.vision
    dim = v.head_dim // 2
    inv_freq = 1.0 / (v.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    fh = hpos[..., None].astype(jnp.float32) * inv_freq
    fw = wpos[..., None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([fh, fw, fh, fw], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate(x, cos, sin):
    """HF `apply_rotary_pos_emb_vision`: in float32, back to x's dtype."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rot * sin[:, :, None]).astype(x.dtype)


# ----------------------------------------------------------------------- vision tower


class VisionBlock(nn.Module):
    """Pre-RMSNorm block: windowed or full 2-D-RoPE attention, then a biased SwiGLU MLP.
    Shaped as an `nn.scan` body; `is_full` (one per layer) picks the mask."""

    cfg: Qwen25VLConfig

    @nn.compact
    def __call__(self, h, is_full, window_mask, full_mask, cos, sin, deterministic):
        v = self.cfg.vision
        n, p, d = h.shape
        x = _rms(self.cfg, "norm1")(h)
        qkv = _dense(self.cfg, 3 * d, ("embed_vision", "heads_vision"), "qkv")(x, deterministic)
        q, k, val = jnp.split(qkv.reshape(n, p, 3, v.num_heads, v.head_dim), 3, axis=2)
        q, k, val = q[:, :, 0], k[:, :, 0], val[:, :, 0]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        mask = jnp.where(is_full, full_mask, window_mask)
        out = jax.nn.dot_product_attention(q, k, val, mask=mask).reshape(n, p, d)
        h = h + _dense(self.cfg, d, ("heads_vision", "embed_vision"), "proj")(out, deterministic)

        x = _rms(self.cfg, "norm2")(h)
        dense = functools.partial(_dense, self.cfg)
        gate = dense(v.intermediate_size, ("embed_vision", "mlp_vision"), "gate_proj")
        up = dense(v.intermediate_size, ("embed_vision", "mlp_vision"), "up_proj")
        g, u = gate(x, deterministic), up(x, deterministic)
        a = swiglu(g, u) if v.hidden_act == "silu" else activation(v.hidden_act)(g) * u
        h = h + dense(d, ("mlp_vision", "embed_vision"), "down_proj")(a, deterministic)
        return constrain(h, _ACT_V), None


class VisionTower(nn.Module):
    """`patches [N, P, C·2·14·14]`, `grid_thw [N, 3]` → hidden states `[N, P, Dv]` (the
    last block's output, before the merger). Padding patches come out as garbage the
    merger's consumers never read."""

    cfg: Qwen25VLConfig

    @nn.compact
    def __call__(self, patches, grid_thw, deterministic=True):
        v = self.cfg.vision
        n, p, _ = patches.shape
        if p % v.merge_unit:
            raise ValueError(f"patches per slot ({p}) must be a multiple of "
                             f"{v.merge_unit} (the 2×2 merge unit)")
        lay = patch_layout(self.cfg, grid_thw, p)
        dtype = jnp.dtype(self.cfg.dtype)
        h = _dense(self.cfg, v.hidden_size, (None, "embed_vision"), "patch_embed",
                   use_bias=False)(patches.astype(dtype), deterministic)
        h = constrain(h, _ACT_V)
        cos, sin = vision_rope(self.cfg, lay["hpos"], lay["wpos"])
        window_mask = _segment_mask(lay["window"], lay["valid"])
        full_mask = _segment_mask(lay["frame"], lay["valid"])
        is_full = jnp.zeros((v.depth,), bool).at[jnp.asarray(
            [i for i in v.fullatt_block_indexes if i < v.depth], jnp.int32)].set(True)
        stack = nn.scan(VisionBlock, variable_axes={"params": 0, "lora": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                                 nn.broadcast),
                        length=v.depth, metadata_params={nn.PARTITION_NAME: "layers"})
        h, _ = stack(self.cfg, name="blocks")(h, is_full, window_mask, full_mask, cos, sin,
                                              deterministic)
        return h


class PatchMerger(nn.Module):
    """RMSNorm, then each 2×2 unit's 4 patches concatenated → Linear → GELU → Linear to
    the LM width: `[N, P, Dv]` → `[N, P/4, D]`."""

    cfg: Qwen25VLConfig

    @nn.compact
    def __call__(self, h, deterministic=True):
        v = self.cfg.vision
        n, p, dv = h.shape
        x = _rms(self.cfg, "ln_q")(h).reshape(n, p // v.merge_unit, dv * v.merge_unit)
        x = _dense(self.cfg, dv * v.merge_unit, ("embed_vision", "mlp_vision"), "mlp_0")(
            x, deterministic)
        x = activation("gelu")(x)
        x = _dense(self.cfg, v.out_hidden_size, ("mlp_vision", "embed"), "mlp_2")(
            x, deterministic)
        return constrain(x, ("activation_batch", "activation_length", "activation_embed"))


# ----------------------------------------------------------------------- placement & RoPE


def _image_token_slots(input_ids, grid_thw, image_mask, cfg: Qwen25VLConfig):
    """For each token: whether it takes an image feature, which slot and which merged unit
    (the k-th image token of a row takes the k-th feature of the row's real images, in
    slot order: HF's `masked_scatter` over `<|image_pad|>`)."""
    m2 = cfg.vision.merge_unit
    counts = jnp.prod(grid_thw, axis=-1) // m2                                # [B, I]
    if image_mask is not None:
        counts = jnp.where(image_mask.astype(bool), counts, 0)
    ends = jnp.cumsum(counts, axis=1)                                         # [B, I]
    is_image = input_ids == cfg.image_token_id
    rank = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1                 # [B, T]
    slot = jnp.sum(rank[:, :, None] >= ends[:, None, :], axis=-1)             # [B, T]
    n_slots = counts.shape[1]
    slot_c = jnp.minimum(slot, n_slots - 1)
    start = jnp.take_along_axis(ends - counts, slot_c, axis=1)
    use = is_image & (rank < ends[:, -1:])
    return use, slot_c, jnp.maximum(rank - start, 0)


def place_image_features(input_ids, embeds, image_features, image_mask, cfg):
    """Overwrite the image-token embeddings of `embeds [B, T, D]` with the merged features
    (`{"features": [B, I, N, D], "image_grid_thw"}`): variable counts per image."""
    feats, grid = image_features["features"], image_features["image_grid_thw"]
    use, slot, unit = _image_token_slots(input_ids, grid, image_mask, cfg)
    b, i, n, d = feats.shape
    flat = feats.reshape(b, i * n, d)
    idx = slot * n + jnp.minimum(unit, n - 1)
    gathered = jnp.take_along_axis(flat, idx[..., None], axis=1)
    return jnp.where(use[..., None], gathered.astype(embeds.dtype), embeds)


def mrope_positions(cfg: Qwen25VLConfig, input_ids, attention_mask, grid_thw=None,
                    image_mask=None):
    """HF `get_rope_index` for images: `(positions int32[3, B, T], next_position [B])`.

    Text tokens count up on all three streams; an image's tokens sit at the running
    position plus (frame, merged row, merged column), and the text after it continues at
    the running position + max(merged rows, merged columns). Padding does not count (its
    positions are 0). `next_position` is where generated tokens continue (HF: cache
    position + `rope_deltas`)."""
    mask = attention_mask.astype(bool)
    b, t = input_ids.shape
    if grid_thw is None:
        pos = jnp.where(mask, default_positions(attention_mask), 0)
        return jnp.broadcast_to(pos, (3, b, t)), jnp.sum(mask, axis=1, dtype=jnp.int32)
    m = cfg.vision.spatial_merge_size
    use, slot, unit = _image_token_slots(input_ids, grid_thw, image_mask, cfg)
    use = use & mask
    g = jnp.take_along_axis(grid_thw, slot[..., None], axis=1)               # [B, T, 3]
    hm, wm = jnp.maximum(g[..., 1] // m, 1), jnp.maximum(g[..., 2] // m, 1)
    tt, r = unit // (hm * wm), unit % (hm * wm)
    row, col = r // wm, r % wm
    width = jnp.where(use, jnp.where(unit == 0, jnp.maximum(hm, wm), 0), mask.astype(jnp.int32))
    run = jnp.cumsum(width, axis=1)
    base = jnp.where(use, run - jnp.maximum(hm, wm), run - width)
    offsets = jnp.where(use[None], jnp.stack([tt, row, col]), 0)
    pos = jnp.where(mask[None], base[None] + offsets, 0)
    return pos.astype(jnp.int32), run[:, -1].astype(jnp.int32)


# ----------------------------------------------------------------------- the model


class Qwen25VL(nn.Module):
    """Qwen2.5-VL; the method contracts are the library's model API (docs/INTERNALS.md)."""

    cfg: Qwen25VLConfig

    def setup(self):
        self.visual = VisionTower(self.cfg)
        self.merger = PatchMerger(self.cfg)
        self.language_model = LlamaModel(self.cfg)

    def __call__(self, input_ids, pixel_values, attention_mask, image_mask=None,
                 positions=None, deterministic=True):
        """float32 logits `[B, T, V]`; `pixel_values` (the image dict) None: text only."""
        features = None
        if pixel_values is not None:
            features = self.encode_images(pixel_values, deterministic)
        embeds = self.embed(input_ids, features, image_mask)
        if positions is None:
            positions, _ = self.positions(input_ids, attention_mask, pixel_values, image_mask)
        hidden, _ = self.decode(embeds, attention_mask, positions, None, deterministic)
        return self.lm_logits(hidden)

    def vision_features(self, pixel_values, deterministic=True):
        """The tower alone: `{"hidden": [B, I, P, Dv], "image_grid_thw"}` (before the merger)."""
        patches, grid = pixel_values["pixel_values"], pixel_values["image_grid_thw"]
        if patches.ndim != 4 or grid.shape != patches.shape[:2] + (3,):
            raise ValueError(
                f"pixel_values must be [batch, images, patches, {self.cfg.vision.patch_dim}] "
                f"with image_grid_thw [batch, images, 3]; got {patches.shape} and {grid.shape}")
        b, i = patches.shape[:2]
        h = self.visual(patches.reshape(b * i, *patches.shape[2:]), grid.reshape(b * i, 3),
                        deterministic)
        return {"hidden": h.reshape(b, i, *h.shape[1:]), "image_grid_thw": grid}

    def project_images(self, features, deterministic=True):
        """The merger alone: `vision_features`' output → `{"features": [B, I, P/4, D],
        "image_grid_thw"}`."""
        h = features["hidden"]
        b, i = h.shape[:2]
        out = self.merger(h.reshape(b * i, *h.shape[2:]), deterministic)
        return {"features": out.reshape(b, i, *out.shape[1:]),
                "image_grid_thw": features["image_grid_thw"]}

    def encode_images(self, pixel_values, deterministic=True):
        return self.project_images(self.vision_features(pixel_values, deterministic),
                                   deterministic)

    def embed(self, input_ids, image_features=None, image_mask=None):
        embeds = self.language_model.embed(input_ids)
        if image_features is None:
            return embeds
        return place_image_features(input_ids, embeds, image_features, image_mask, self.cfg)

    def positions(self, input_ids, attention_mask, pixel_values=None, image_mask=None):
        """`(positions [3, B, T], next_position [B])`: M-RoPE positions of a (left-padded)
        sequence and the position the next token takes."""
        grid = None if pixel_values is None else pixel_values["image_grid_thw"]
        return mrope_positions(self.cfg, input_ids, attention_mask, grid, image_mask)

    def decode(self, embeds, attention_mask, positions=None, cache=None, deterministic=True):
        return self.language_model.decode(embeds, attention_mask, positions, cache, deterministic)

    def decode_shared_prefix(self, prompt_embeds, prompt_mask, response_embeds, response_mask,
                             deterministic=True, prompt_positions=None, response_start=None):
        return self.language_model.decode_shared_prefix(
            prompt_embeds, prompt_mask, response_embeds, response_mask, deterministic,
            prompt_positions, response_start)

    def lm_logits(self, hidden):
        return self.language_model.logits(hidden)


# ----------------------------------------------------------------------- params without memory


init_cache = init_kv_cache

def _init_inputs(cfg: Qwen25VLConfig):
    """One token and one image slot of one merge unit: reaches every parameter."""
    v = cfg.vision
    return (jnp.zeros((1, 1), jnp.int32),
            {"pixel_values": jnp.zeros((1, 1, v.merge_unit, v.patch_dim), jnp.float32),
             "image_grid_thw": jnp.asarray([[[1, v.spatial_merge_size, v.spatial_merge_size]]],
                                           jnp.int32)},
            jnp.ones((1, 1), jnp.int32))


_PARAMS = ParamInit(Qwen25VL, _init_inputs)
init_params = _PARAMS.init_params
abstract_params = _PARAMS.abstract_params
param_logical_specs = _PARAMS.param_logical_specs
