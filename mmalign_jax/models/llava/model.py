"""LLaVA: CLIP vision tower → projector → image features placed at `<image>` tokens → LLaMA.

Everything is static-shaped so one compiled step serves every batch: each example carries
`I` image slots (`image_mask` marks the real ones) and the features are gathered into the
token positions by a per-row running count of image tokens, never by a data-dependent
scatter.

Module-level helpers give the trainer what it needs without running the model:
`init_params` (jit-able with `out_shardings`), `abstract_params` (shapes only) and
`param_logical_specs` (the logical `PartitionSpec` tree); `init_cache` builds a KV cache.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.config import LlavaConfig
from mmalign_jax.models.llama import LlamaModel, default_positions, init_kv_cache
from mmalign_jax.models.param_init import ParamInit
from mmalign_jax.models.projector import Projector
from mmalign_jax.models.vision import VisionTower


def place_image_features(
    input_ids: jax.Array,
    embeds: jax.Array,
    features: jax.Array,
    image_mask: Optional[jax.Array],
    image_token_id: int,
) -> jax.Array:
    """Overwrite the image-token embeddings of `embeds [B, T, D]` with `features [B, I, N, D]`.

    Within a row the k-th image token takes the k-th feature vector of the real images
    (those with `image_mask` True, in order), exactly like HF's `masked_scatter` over the
    flattened batch. Image tokens beyond the real images' features keep their token
    embedding: shapes stay static, so the caller must expand tokens to match.
    """
    b, n_slots, n_img, d = features.shape
    if image_mask is None:
        image_mask = jnp.ones((b, n_slots), bool)
    image_mask = image_mask.astype(bool)
    # A stable sort on "is padding" moves the real images to the front, keeping their order.
    order = jnp.argsort((~image_mask).astype(jnp.int32), axis=1, stable=True)
    features = jnp.take_along_axis(features, order[:, :, None, None], axis=1)
    features = features.reshape(b, n_slots * n_img, d)

    is_image = input_ids == image_token_id
    rank = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1  # k for the k-th image token
    n_real = jnp.sum(image_mask, axis=1, dtype=jnp.int32) * n_img
    use = is_image & (rank < n_real[:, None])
    gathered = jnp.take_along_axis(
        features, jnp.clip(rank, 0, n_slots * n_img - 1)[..., None], axis=1
    )
    return jnp.where(use[..., None], gathered.astype(embeds.dtype), embeds)


class Llava(nn.Module):
    """The LLaVA model; see docs/INTERNALS.md ("Model API") for the method contracts."""

    cfg: LlavaConfig

    def setup(self):
        self.vision_tower = VisionTower(self.cfg)
        self.multi_modal_projector = Projector(self.cfg)
        self.language_model = LlamaModel(self.cfg)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: Optional[jax.Array],
        attention_mask: jax.Array,
        image_mask: Optional[jax.Array] = None,
        positions: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """float32 logits `[B, T, V]`; `pixel_values=None` skips the vision tower entirely."""
        features = None
        if pixel_values is not None:
            features = self.encode_images(pixel_values, deterministic)
        embeds = self.embed(input_ids, features, image_mask)
        hidden, _ = self.decode(embeds, attention_mask, positions, None, deterministic)
        return self.lm_logits(hidden)

    def encode_images(self, pixel_values: jax.Array, deterministic: bool = True) -> jax.Array:
        """`pixel_values [B, I, H, W, 3]` → projected features `[B, I, Nimg, D]`."""
        return self.project_images(self.vision_features(pixel_values, deterministic),
                                   deterministic)

    def vision_features(self, pixel_values: jax.Array, deterministic: bool = True) -> jax.Array:
        """The vision tower alone: `pixel_values [B, I, H, W, 3]` → `[B, I, Nimg, Dv]` (the
        selected layer, before the projector)."""
        if pixel_values.ndim != 5:
            raise ValueError(
                f"pixel_values must be [batch, images, H, W, 3]; got shape {pixel_values.shape}"
            )
        b, i = pixel_values.shape[:2]
        features = self.vision_tower(pixel_values.reshape(b * i, *pixel_values.shape[2:]),
                                     deterministic)
        return features.reshape(b, i, *features.shape[1:])

    def project_images(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
        """The projector alone: `vision_features`' `[B, I, Nimg, Dv]` → `[B, I, Nimg, D]`."""
        b, i = features.shape[:2]
        out = self.multi_modal_projector(features.reshape(b * i, *features.shape[2:]),
                                         deterministic)
        return out.reshape(b, i, *out.shape[1:])

    def embed(
        self,
        input_ids: jax.Array,
        image_features: Optional[jax.Array] = None,
        image_mask: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Token embeddings `[B, T, D]` with image features placed at the image tokens."""
        embeds = self.language_model.embed(input_ids)
        if image_features is None:
            return embeds
        return place_image_features(
            input_ids, embeds, image_features, image_mask, self.cfg.image_token_id
        )

    def positions(self, input_ids, attention_mask, pixel_values=None, image_mask=None):
        """`(positions [B, T], next_position [B])`: real tokens counted from 0 (left padding
        skipped); the next token continues at the number of real tokens."""
        del input_ids, pixel_values, image_mask
        return (default_positions(attention_mask),
                jnp.sum(attention_mask.astype(jnp.int32), axis=1))

    def decode(self, embeds, attention_mask, positions=None, cache=None, deterministic=True):
        """`(final-normed hidden [B, t, D], cache)`; see `LlamaModel.decode`."""
        return self.language_model.decode(embeds, attention_mask, positions, cache, deterministic)

    def decode_shared_prefix(self, prompt_embeds, prompt_mask, response_embeds, response_mask,
                             deterministic=True, prompt_positions=None, response_start=None):
        """Training only: `(hidden_last_prompt [B, D], hidden_responses [B, N, R, D])` of one
        prompt and N responses in one pass, no KV cache; see `LlamaModel.decode_shared_prefix`."""
        return self.language_model.decode_shared_prefix(
            prompt_embeds, prompt_mask, response_embeds, response_mask, deterministic,
            prompt_positions, response_start)

    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits `[.., V]` from `decode`'s hidden states."""
        return self.language_model.logits(hidden)


init_cache = init_kv_cache


def _init_inputs(cfg: LlavaConfig):
    """The smallest inputs that reach every parameter (one token, one image)."""
    v = cfg.vision
    return (
        jnp.zeros((1, 1), jnp.int32),
        jnp.zeros((1, 1, v.image_size, v.image_size, v.num_channels), jnp.float32),
        jnp.ones((1, 1), jnp.int32),
    )


_PARAMS = ParamInit(Llava, _init_inputs)
init_params = _PARAMS.init_params
abstract_params = _PARAMS.abstract_params
param_logical_specs = _PARAMS.param_logical_specs
