"""What the library needs of a model family, in one place.

A family (LLaVA-1.5 today) is one `ModelFamily` value, registered once in `registry.py`;
training, generation, evaluation, conversion and the pipeline ask the registry for it and
never name a family's modules. What a family provides:

- **config**: a frozen, hashable dataclass (static jit argument) with the properties the
  rest of the library reads: `image_token_id`, `num_image_tokens` (tokens one image
  occupies in `input_ids`), `image_size` (the square side its image processor makes),
  `text` (the language model's config with Hugging Face field names: `eos_token_id`,
  `bos_token_id`, `pad_token_id`, `max_position_embeddings`, `num_hidden_layers`,
  `num_key_value_heads`, `head_dim`), `dtype`, `param_dtype`, `lora`, and `replace(**kw)`
  for `dtype`, `param_dtype`, `remat_policy`, `attention_impl`, `lora`.
- **presets** (`name -> config`) and Hugging Face `config.json` both ways.
- **module(cfg)**: the Flax module. Its methods, used by name through `model.apply(...,
  method="...")`: `__call__` (logits), `vision_features`, `project_images`, `encode_images`,
  `embed`, `decode` (full forward or KV-cached), `decode_shared_prefix` (the DPO training
  pass) and `lm_logits` — the contracts are in docs/INTERNALS.md ("Model API").
- **parameters without memory**: `init_params(cfg, rng)`, `abstract_params(cfg)`,
  `param_logical_specs(cfg)`, and `init_cache(cfg, batch, max_len, dtype)` for decoding.
- **Hugging Face weights** both ways: `load_hf(path, dtype, sharding) -> (cfg, params)` and
  `save_hf(cfg, params, out_dir, lora=None, tokenizer_dir=None)`.
- **images** in static-shaped slots: `preprocess_image(cfg, image, mode)` gives one image's
  arrays by batch key (`image_keys`; LLaVA `{"pixel_values": float32[S, S, 3]}`, Qwen2.5-VL
  patches of the image's own size and its `image_grid_thw`), `image_tokens(cfg, (w, h))`
  how many tokens it occupies (read from the size alone, before decoding), `empty_images(cfg,
  batch, slots, budget)` the zero slot arrays an image's arrays are copied into (its leading
  extent may be shorter: the rest stays zero), `image_budget(arrays)` what one image needs
  of the slot's variable extent (0 for fixed-size images) and `model_images(batch)` the
  model's image argument from a batch (None when the batch has no images). For loaders that
  size batches before decoding anything: `image_budget_for_size(cfg, (w, h))` (what
  `image_budget` of that image's arrays will be) and `image_budgets(cfg)` (the few slot
  budgets, increasing, that batches are padded to; the last holds any image; () for
  fixed-size images).
- **defaults**: chat template and image mode of its checkpoints, LoRA targets (a regex over
  '/'-joined module paths), and the parameter groups training addresses by role
  (`vision`, `projector`, `lm`: regexes over 'params/...' paths) plus the key of the vision
  tower's subtree (shared between policy and reference when frozen).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Tuple, Union


class CheckpointError(ValueError):
    """A checkpoint folder (or a params tree being exported) does not match the model."""


def read_hf_config(src: Union[str, os.PathLike, Mapping[str, Any]]) -> Tuple[dict, str]:
    """`(config dict, where)` from a checkpoint folder, its config.json or a parsed dict;
    `where` names the file in error messages."""
    if isinstance(src, Mapping):
        return dict(src), "<config dict>"
    path = os.fspath(src)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such file; expected a Hugging Face checkpoint folder with a config.json")
    with open(path) as f:
        try:
            return json.load(f), path
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family behind the library's single model interface (see the module doc)."""

    name: str
    config_type: type
    hf_model_types: Tuple[str, ...]
    hf_architectures: Tuple[str, ...]
    presets: Mapping[str, Callable[[], Any]]
    module: Callable[[Any], Any]
    init_params: Callable[..., Any]
    abstract_params: Callable[[Any], Any]
    param_logical_specs: Callable[[Any], Any]
    init_cache: Callable[..., dict]
    config_from_hf: Callable[[Any], Any]
    config_to_hf: Callable[..., dict]
    load_hf: Callable[..., tuple]
    save_hf: Callable[..., Any]
    preprocess_image: Callable[..., Any]
    image_tokens: Callable[..., int]
    empty_images: Callable[..., Any]
    default_template: str
    default_image_mode: str
    lora_target_regex: str
    param_groups: Mapping[str, str]      # role ('vision' | 'projector' | 'lm') -> regex
    vision_key: str                      # params[vision_key] is the vision tower
    image_keys: Tuple[str, ...] = ("pixel_values",)
    native_resolution: bool = False      # True: an image's token count depends on its size
    image_budget: Callable[[Mapping[str, Any]], int] = lambda arrays: 0
    image_budget_for_size: Callable[..., int] = lambda cfg, size: 0
    image_budgets: Callable[[Any], Tuple[int, ...]] = lambda cfg: ()
    description: str = ""
    checkpoints: Tuple[str, ...] = ()    # Hugging Face hub names known to load
    pretrained_presets: Tuple[str, ...] = ()   # shapes of published checkpoints: load them,
                                               # never train them from random weights

    def preset(self, name: str):
        try:
            return self.presets[name]()
        except KeyError:
            raise ValueError(f"{self.name}: unknown model preset {name!r}; known presets: "
                             f"{', '.join(self.presets)}") from None

    def __reduce__(self):
        """Pickled as its registry name (the table's function fields include lambdas):
        what a grain worker process unpickles is the registered family of that name."""
        from mmalign_jax.models import registry
        return (registry.get, (self.name,))

    def place_image(self, slots: Mapping[str, Any], row: int, slot: int,
                    arrays: Mapping[str, Any]) -> None:
        """The module's `place_image`, for callers that hold only the family."""
        place_image(slots, row, slot, arrays)

    def group_regex(self, role: str) -> Optional[str]:
        return self.param_groups.get(role)

    def model_images(self, batch: Mapping[str, Any]):
        """The model's image argument from a batch: one array when the family has one image
        key, a dict by key otherwise; None without images."""
        if batch.get(self.image_keys[0]) is None:
            return None
        if len(self.image_keys) == 1:
            return batch[self.image_keys[0]]
        return {k: batch[k] for k in self.image_keys}


def place_image(slots: Mapping[str, Any], row: int, slot: int, arrays: Mapping[str, Any]) -> None:
    """Copy one image's arrays (`preprocess_image`) into slot `slot` of batch row `row` of
    `empty_images`' arrays; a shorter leading extent leaves the rest zero."""
    for key, arr in arrays.items():
        dst = slots[key][row, slot]
        if any(a > d for a, d in zip(arr.shape, dst.shape)):
            raise ValueError(f"{key}: an image of shape {tuple(arr.shape)} does not fit its "
                             f"slot {tuple(dst.shape)}; raise the slot's budget")
        dst[tuple(slice(0, n) for n in arr.shape)] = arr
