"""Models for inference and as starting points, whatever made them: one `load_model(path)`.

    m = loading.load_model("/ckpt/llava-1.5-7b-hf")      # a Hugging Face folder
    m = loading.load_model("workdir/dpo-demo")            # a training run of ours (LoRA merged)
    logits = m.model.apply({"params": m.params}, input_ids, pixel_values, attention_mask)

Training (its starting weights), generation, evaluation and the pipeline all load through
here; nothing here imports `train/`. A training workdir holds `config.json` (the run's
config) and orbax checkpoints of what it trained; its base weights come back from where the
run got them (a Hugging Face folder, a seeded random init plus an optional vision tower
file, or the run it started from, recursively).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections as mlc
import numpy as np

from mmalign_jax import parallel, variables
from mmalign_jax.models import lora as lora_lib
from mmalign_jax.models import registry
from mmalign_jax.models.config import LoraConfig
from mmalign_jax.models.family import CheckpointError, ModelFamily

log = logging.getLogger("mmalign_jax.loading")


# ------------------------------------------------------------------ a training run's model

def model_family(c) -> ModelFamily:
    """The family of training config `c`: its checkpoint's config.json, else its preset."""
    if c.model.hf_checkpoint:
        return registry.for_hf_config(c.model.hf_checkpoint)
    return registry.for_preset(c.model.preset)


def model_config(c):
    """The model config of training config `c`, with its numerics and LoRA settings (and,
    for native-resolution families, `model.image_min_pixels` / `image_max_pixels`)."""
    family = model_family(c)
    if c.model.hf_checkpoint:
        cfg = family.config_from_hf(os.path.join(c.model.hf_checkpoint, "config.json"))
    else:
        cfg = family.preset(c.model.preset)
    lora = None
    if c.lora.enabled:
        lora = LoraConfig(rank=c.lora.rank, alpha=float(c.lora.alpha),
                          dropout=float(c.lora.dropout),
                          target_regex=c.lora.target_regex or family.lora_target_regex)
    pixels = {k: int(c.model.get(f"image_{k}", 0) or 0) for k in ("min_pixels", "max_pixels")}
    if any(pixels.values()):
        if not hasattr(cfg, "image"):
            raise ValueError(f"model.image_min_pixels / image_max_pixels: {family.name} images "
                             "have a fixed size; leave them 0")
        cfg = cfg.replace(image=dataclasses.replace(
            cfg.image, **{k: v for k, v in pixels.items() if v}))
    return cfg.replace(dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                       remat_policy=c.model.remat_policy, lora=lora,
                       # configs written before this setting existed: the default
                       attention_impl=c.model.get("attention_impl", "auto"))


def load_tokenizer(c):
    """`(tokenizer, folder)` of training config `c`: `data.tokenizer`, else the checkpoint's."""
    path = c.data.tokenizer or c.model.hf_checkpoint
    if not path:
        raise FileNotFoundError("no tokenizer: set --config.data.tokenizer=DIR (a folder "
                                "`transformers.AutoTokenizer` reads) or model.hf_checkpoint")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path), path


def base_params(c, cfg, shardings):
    """Base weights, placed straight onto their shardings: a Hugging Face folder, a previous
    run of ours (`model.init_from`, its trained parts merged in) or a seeded random init
    (with `model.vision_init`, a vision tower file, replacing the random tower)."""
    family = registry.for_config(cfg)
    if c.model.init_from:
        return params_from_run(c.model.init_from, cfg, shardings)
    if c.model.hf_checkpoint:
        _, params = family.load_hf(c.model.hf_checkpoint, dtype=cfg.param_dtype,
                                   sharding=shardings)
        return params
    init = jax.jit(lambda key: family.init_params(cfg, key), out_shardings=shardings)
    params = init(jax.random.PRNGKey(c.seed))
    if c.model.get("vision_init"):
        key = family.vision_key
        tower = vision_tower_file(c.model.vision_init, cfg)
        params = dict(params)
        params[key] = jax.tree.map(
            lambda x, s: jax.device_put(np.asarray(x, cfg.param_dtype), s), tower,
            shardings[key])
    return params


def vision_tower_file(path: str, cfg) -> dict:
    """Vision tower weights from a flax msgpack file (e.g. the demo's pretrained tower)."""
    from flax import serialization
    family = registry.for_config(cfg)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.vision_init={path!r}: no such file; it must be a "
                                "vision tower written with flax.serialization (msgpack)")
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                            family.abstract_params(cfg)[family.vision_key])
    with open(path, "rb") as f:
        return serialization.from_bytes(template, f.read())


def run_config(workdir: str) -> mlc.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r}: no config.json there; point at the workdir of "
                                "a finished `python -m mmalign_jax.train` run")
    with open(path) as f:
        return mlc.ConfigDict(json.load(f))


def params_from_run(workdir: str, cfg, shardings):
    """The final model of an earlier run: its base weights + trained variables (LoRA
    merged), e.g. the SFT run a DPO run starts from; cast to `cfg.param_dtype`."""
    prev = run_config(workdir)
    prev_cfg = model_config(prev)
    family = registry.for_config(prev_cfg)
    params = base_params(prev, prev_cfg, shardings)
    groups = variables.param_groups(prev, family)
    tree = {"params": params}
    if prev_cfg.lora is not None:
        tree["lora"] = lora_lib.init_lora(prev_cfg, params, jax.random.PRNGKey(0))
    trainable, _ = variables.split(tree, groups)
    trained = restore_trainable(workdir, trainable)
    # Orbax restores onto the shardings the run saved with (its mesh); put them where the
    # variables they replace live (e.g. one device when loading for inference).
    trained = jax.tree.map(lambda t, ref: jax.device_put(t, ref.sharding), trained, trainable)
    tree = variables.merge(tree, trained)
    params = tree["params"]
    if prev_cfg.lora is not None:
        params = lora_lib.merge(prev_cfg, params, tree["lora"])
    return jax.tree.map(lambda x, s: jax.device_put(x.astype(cfg.param_dtype), s), params,
                        shardings)


def restore_trainable(workdir: str, abstract_trainable, step: Optional[int] = None):
    """Only the trained variables of a run's latest (or `step`) checkpoint."""
    import orbax.checkpoint as ocp
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    with ocp.CheckpointManager(directory, item_handlers={
            "state": ocp.StandardCheckpointHandler()}) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir!r} has no checkpoint under {directory}")
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]
    return restored["trainable"] if abstract_trainable is None else jax.tree.map(
        lambda a, b: b, abstract_trainable, restored["trainable"])


# ------------------------------------------------------------------- the one entry point

@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference: `model.apply({'params': params}, ...)`."""
    family: ModelFamily
    cfg: Any
    model: Any
    params: Any
    tokenizer: Any
    tokenizer_dir: str
    template: str
    image_mode: str
    kind: str                      # 'workdir' | 'hf'
    run_config: Optional[mlc.ConfigDict] = None   # the training config of a workdir


def checkpoint_kind(path: str, kind: str = "auto") -> str:
    """'workdir' (config.json + checkpoints/) or 'hf' (*.safetensors)."""
    if kind != "auto":
        return kind
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a folder; pass a training workdir or a Hugging "
                              "Face checkpoint folder")
    if os.path.isfile(os.path.join(path, "config.json")) and \
            os.path.isdir(os.path.join(path, "checkpoints")):
        return "workdir"
    if any(f.endswith(".safetensors") or f == "model.safetensors.index.json"
           for f in os.listdir(path)):
        return "hf"
    raise CheckpointError(f"{path}: neither a training workdir (config.json + checkpoints/) "
                          "nor a Hugging Face folder (*.safetensors); fix the path")


def hf_tokenizer(path: str, cfg):
    """`AutoTokenizer` of a folder; special tokens a bare tokenizer.json lacks come from the
    model config, so EOS stops generation."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    if getattr(tok, "eos_token", None) is None:
        tok.eos_token = tok.convert_ids_to_tokens(int(cfg.text.eos_token_id))
    if getattr(tok, "bos_token", None) is None and cfg.text.bos_token_id is not None:
        tok.bos_token = tok.convert_ids_to_tokens(int(cfg.text.bos_token_id))
    return tok


def load_model(path: str, *, dtype: str = "float32", kind: str = "auto", mesh=None,
               rules=None, tokenizer: str = "") -> LoadedModel:
    """Load a Hugging Face folder or a training workdir for inference.

    Args:
      path: the folder. kind: 'auto' | 'workdir' | 'hf'.
      dtype: params and compute dtype. mesh, rules: place params on this mesh under these
        logical rules (default: one device, `parallel.DEFAULT_RULES`).
      tokenizer: a folder to take the tokenizer from instead of the model's.
    Returns a `LoadedModel` (LoRA merged, no remat, the run's template and image mode).
    """
    path = os.path.abspath(path)
    kind = checkpoint_kind(path, kind)
    prev = None
    if kind == "workdir":
        prev = run_config(path)
        cfg = model_config(prev)
        family = registry.for_config(cfg)
        template = prev.data.template or family.default_template
        image_mode = prev.data.image_mode or family.default_image_mode
        tok_dir = tokenizer or prev.data.tokenizer or prev.model.hf_checkpoint
        if not os.path.exists(os.path.join(path, "summary.json")):
            log.warning("%s has no summary.json (unfinished run?): using its latest checkpoint",
                        path)
    else:
        family = registry.for_hf_config(path)
        cfg = family.config_from_hf(os.path.join(path, "config.json"))
        template, image_mode = family.default_template, family.default_image_mode
        tok_dir = tokenizer or path
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype, remat_policy="none", lora=None)
    if mesh is None:
        mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = tuple(tuple(r) for r in (rules or parallel.DEFAULT_RULES))
    with parallel.mesh_context(mesh, rules):
        specs = family.param_logical_specs(cfg)
        shapes = family.abstract_params(cfg)
        shardings = parallel.tree_shardings(specs, rules, mesh, shapes)
        if kind == "workdir":
            params = params_from_run(path, cfg, shardings)
        else:   # the loaded config also carries what config.json lacks (image settings)
            loaded, params = family.load_hf(path, dtype=dtype, sharding=shardings)
            cfg = loaded.replace(dtype=dtype, param_dtype=dtype, remat_policy="none", lora=None)
    if not tok_dir:
        raise CheckpointError(f"{path}: the run names no tokenizer folder; pass tokenizer=DIR")
    return LoadedModel(family=family, cfg=cfg, model=family.module(cfg), params=params,
                       tokenizer=hf_tokenizer(tok_dir, cfg), tokenizer_dir=tok_dir,
                       template=template, image_mode=image_mode, kind=kind, run_config=prev)
