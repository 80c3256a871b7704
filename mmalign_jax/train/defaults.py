"""The one default training config every method file (`configs/*.py`) starts from.

Each group has the fields a reader of PAPER.md expects; `configs/<method>.py:<preset>`
changes what the method or the preset needs. `validate()` checks the whole config before
anything is compiled and says what to change.
"""
from __future__ import annotations

import math
import numbers

import jax
import ml_collections as mlc

from mmalign_jax import parallel
from mmalign_jax.models import attention, registry
from mmalign_jax.train import methods


def base_config(method: str) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.method = method
    c.workdir = f"workdir/{method}-demo"
    c.seed = 0
    # 'module:function' called with this config before training, returning the config to
    # train: what a run makes first (the demo presets: their data and SFT model,
    # mmalign_jax/demo/recipe.py). '' = nothing.
    c.prepare = ""

    c.model = mlc.ConfigDict()
    c.model.preset = "tiny"            # shapes when no checkpoint is given (any family's)
    c.model.hf_checkpoint = ""         # Hugging Face folder: weights + config + tokenizer
    c.model.init_from = ""             # a workdir of ours (e.g. the SFT run) to start from
    c.model.dtype = "float32"          # compute dtype ("bfloat16" on accelerators)
    c.model.param_dtype = "float32"    # storage of frozen weights; trained ones stay float32
    c.model.remat_policy = "none"      # none | full | dots | dots_no_batch
    c.model.attention_impl = "auto"    # auto | dot_product | chunked (models/attention.py)
    c.model.vision_init = ""           # random init only: a vision tower file (flax msgpack)
    c.model.image_min_pixels = 0       # native-resolution models (Qwen2.5-VL): the image
    c.model.image_max_pixels = 0       # processor's bounds; 0 = the checkpoint's / preset's

    c.lora = mlc.ConfigDict()
    c.lora.enabled = True
    c.lora.rank = 128
    c.lora.alpha = 256.0
    c.lora.dropout = 0.05
    c.lora.target_regex = ""           # '' = the model family's default (LLaVA: every LM
                                       # linear but lm_head, as in the paper)

    c.optim = mlc.ConfigDict()
    c.optim.lr = 5e-5                  # the LM group (LoRA adapters or full LM)
    c.optim.projector_lr = 2e-5
    c.optim.train_projector = True
    c.optim.train_vision = False
    c.optim.schedule = "cosine"        # cosine | linear | constant
    c.optim.warmup_ratio = 0.03
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0

    c.data = mlc.ConfigDict()
    c.data.source = "tfds"             # a dir built by `python -m mmalign_jax.data build`
    c.data.data_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "eval"
    c.data.tokenizer = ""              # a tokenizer folder; default: the checkpoint folder
    c.data.template = ""               # '' = the model family's (LLaVA-1.5: vicuna_v1)
    c.data.image_mode = ""             # '' = the model family's (LLaVA-1.5: pad)
    c.data.max_images = 1
    c.data.seq_len = 256               # SFT
    c.data.seq_buckets = ()            # SFT: each batch padded to the smallest that fits
                                       # (replaces seq_len); () = seq_len for every batch
    c.data.prompt_len = 128            # DPO: prompt (image tokens included), left padded
    c.data.prompt_buckets = ()         # DPO: as seq_buckets, for prompts; () = prompt_len
    c.data.response_len = 64           # DPO: each response, right padded
    c.data.response_buckets = ()       # DPO: as seq_buckets, for responses; () = response_len
    c.data.image_buckets = ()          # native-resolution models (Qwen2.5-VL): patch budgets
                                       # of a batch's image slots; () = the family's
    c.data.group_by_size = 0           # > 0: batch examples of similar size together, within
                                       # windows of this many batches (less padding)
    c.data.pair_rule = "paper"
    c.data.pair_margin = 2
    c.data.sft_mode = "conversation"   # conversation | best (rejection sampling) | steerlm
    c.data.steerlm_format = "paper"
    c.data.worker_count = 0

    methods.add_all_defaults(c)        # each method's own section: c.dpo, c.simpo, ...

    c.train = mlc.ConfigDict()
    c.train.global_batch_size = 128
    c.train.micro_batch_size = 0       # 0: whole global batch at once; else accumulate
    c.train.num_epochs = 3
    c.train.max_steps = 0              # > 0 overrides num_epochs
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 0           # 0: the whole eval split
    c.train.eval_at_start = True       # also evaluate the starting model (step 0)
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 2
    c.train.async_checkpointing = True
    c.train.export_hf = ""             # folder for a merged transformers checkpoint at the end
    c.train.progress = True

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.num_devices = 0             # 0: every device; N: the first N (one process only)
    c.mesh.rules = parallel.DEFAULT_RULES
    return c


class ConfigError(ValueError):
    pass


def validate(c: mlc.ConfigDict, n_devices: int, random_init_ok: bool = False,
             needs_data: bool = True) -> None:
    """Fail before compiling anything, with a sentence that says what to change.
    `random_init_ok`: a preset of a published checkpoint may start from random weights (the
    benchmark times the real shapes; training them from scratch is never what a user wants).
    `needs_data=False`: the caller feeds its own batches (the benchmark), no dataset."""
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    need(c.method in methods.names(), f"method {c.method!r} is not one of {methods.names()}")
    need(c.data.source == "tfds",
         f"data.source {c.data.source!r}: use 'tfds' (build one with "
         "`python -m mmalign_jax.data build`)")
    need(not needs_data or bool(c.data.data_dir or c.get("prepare")),
         "data.source='tfds' needs --config.data.data_dir=DIR "
         "(made by `python -m mmalign_jax.data build`)")
    if c.get("prepare"):
        need(":" in c.prepare, f"prepare={c.prepare!r}: use 'package.module:function'")
    if not (c.model.hf_checkpoint or c.model.init_from):
        try:
            family = registry.for_preset(c.model.preset)
        except ValueError as e:
            raise ConfigError(f"model.preset: {e}") from None
        need(random_init_ok or c.model.preset not in family.pretrained_presets,
             f"preset {c.model.preset} is the shape of a published checkpoint "
             f"({family.name}): pass --config.model.hf_checkpoint=/path/to/its Hugging Face "
             "folder")
    need(c.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype: float32|bfloat16|float16")
    need(c.model.remat_policy in ("none", "full", "dots", "dots_no_batch"),
         "model.remat_policy must be none|full|dots|dots_no_batch")
    need(c.model.get("attention_impl", "auto") in attention.IMPLS,
         f"model.attention_impl must be one of {'|'.join(attention.IMPLS)}")
    need(c.optim.schedule in ("cosine", "linear", "constant"), "optim.schedule: cosine|linear|constant")
    validate_ranges(c, need)
    methods.get(c.method).validate(c, need)
    need(c.data.sft_mode in ("conversation", "best", "steerlm"),
         "data.sft_mode must be conversation|best|steerlm")
    num = c.mesh.get("num_devices", 0) or 0
    need(0 <= num <= n_devices, f"mesh.num_devices={num} but {n_devices} devices are available: "
         "use 0 (all of them) or a smaller number")
    need(not num or num == n_devices or jax.process_count() == 1,
         f"mesh.num_devices={num} < {n_devices} devices is for a single process; with "
         f"{jax.process_count()} processes use mesh.num_devices=0 (all devices)")
    try:
        sizes = parallel.mesh_shape(dict(c.mesh.shape), num or n_devices)
    except ValueError as e:
        raise ConfigError(f"mesh.shape: {e}") from None
    dp = sizes[0] * sizes[1]
    gb = c.train.global_batch_size
    mb = c.train.micro_batch_size or gb
    need(gb % mb == 0, f"train.global_batch_size={gb} is not a multiple of train.micro_batch_size={mb}")
    need(mb % dp == 0, f"the micro-batch ({mb}) must divide over the data-parallel devices "
         f"(data×fsdp = {dp}): change train.micro_batch_size or mesh.shape")
    need(c.train.max_steps > 0 or c.train.num_epochs > 0, "set train.num_epochs or train.max_steps")


# (field, integer?, test, the range in words): every numeric field of the base config.
_RANGES = (
    ("seed", True, lambda x: True, "an integer"),
    ("optim.lr", False, lambda x: x > 0, "> 0"),
    ("optim.projector_lr", False, lambda x: x > 0, "> 0"),
    ("optim.warmup_ratio", False, lambda x: 0 <= x < 1, "in [0, 1)"),
    ("optim.weight_decay", False, lambda x: x >= 0, ">= 0"),
    ("optim.b1", False, lambda x: 0 <= x < 1, "in [0, 1)"),
    ("optim.b2", False, lambda x: 0 <= x < 1, "in [0, 1)"),
    ("optim.eps", False, lambda x: x > 0, "> 0"),
    ("optim.clip_norm", False, lambda x: x >= 0, ">= 0 (0: no clipping)"),
    ("lora.rank", True, lambda x: x >= 1, ">= 1"),
    ("lora.alpha", False, lambda x: x > 0, "> 0"),
    ("lora.dropout", False, lambda x: 0 <= x < 1, "in [0, 1)"),
    ("data.max_images", True, lambda x: x >= 1, ">= 1"),
    ("data.seq_len", True, lambda x: x >= 2, ">= 2"),
    ("data.prompt_len", True, lambda x: x >= 1, ">= 1"),
    ("data.response_len", True, lambda x: x >= 2, ">= 2"),
    ("data.pair_margin", False, lambda x: x >= 0, ">= 0"),
    ("data.worker_count", True, lambda x: x >= 0, ">= 0 (0: read in this process)"),
    ("train.global_batch_size", True, lambda x: x >= 1, ">= 1"),
    ("train.micro_batch_size", True, lambda x: x >= 0, ">= 0 (0: the whole global batch at once)"),
    ("train.num_epochs", True, lambda x: x >= 0, ">= 0"),
    ("train.max_steps", True, lambda x: x >= 0, ">= 0 (0: train.num_epochs decides)"),
    ("train.log_every", True, lambda x: x >= 1, ">= 1"),
    ("train.eval_every", True, lambda x: x >= 0, ">= 0 (0: no evaluation)"),
    ("train.eval_batches", True, lambda x: x >= 0, ">= 0 (0: the whole eval split)"),
    ("train.checkpoint_every", True, lambda x: x >= 1, ">= 1 (the last step is always saved)"),
    ("train.keep_checkpoints", True, lambda x: x >= 1, ">= 1"),
)


def validate_ranges(c: mlc.ConfigDict, need) -> None:
    """Each numeric field in its range, whatever the other settings, before any arithmetic
    uses it: a negative learning rate passed with LoRA on and trained the wrong way, and
    `train.global_batch_size=0` was a ZeroDivisionError. NaN and infinities are refused too.
    (The method's own section is checked by its `Method.validate`.)"""
    for path, integer, ok, words in _RANGES:
        node = c
        for key in path.split("."):
            node = node.get(key) if hasattr(node, "get") else None
        if node is None:
            continue          # a config without that field (a caller's own, smaller one)
        kind = numbers.Integral if integer else numbers.Real
        good = (isinstance(node, kind) and not isinstance(node, bool)
                and math.isfinite(node) and ok(node))
        need(good, f"{path} must be {'an integer' if integer else 'a number'}"
                   f"{'' if words == 'an integer' else ' ' + words}, got {node!r}")
