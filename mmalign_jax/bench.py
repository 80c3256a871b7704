"""Throughput benchmark: forward, SFT and DPO train steps of the real trainer, and the same
DPO step in PyTorch (hand-written) and TRL, measured in one invocation.

    python -m mmalign_jax.bench                                  # --what all, bench-small
    python -m mmalign_jax.bench --what dpo --steps 5 --warmup 2 --baselines torch,trl \
        --write docs/PERFORMANCE.md
    python -m mmalign_jax.bench --what forward --preset tiny --steps 2 --no-write
    python -m mmalign_jax.bench --what dpo --preset qwen-small --steps 5 --warmup 2   # Qwen2.5-VL vs TRL

What is timed
* forward: `jax.jit` of `Llava.__call__` (`model.apply`) on `[B, T]` ids with one image per
  row (T = image tokens + text), float32 logits; tokens/s = B*T / median seconds.
* sft / dpo: the trainer's own pieces — `loop.build(c, total_steps=...)` and
  `loop.jit_steps(run, batch)` — on a synthetic batch already in the pipeline's layout
  (data/loader.py) and already on device: no data loading in the timing. Median wall
  clock of `train_step(...)` + fetching its metrics, over the steps after warm-up; the first
  call's compile time is reported separately (`CompiledStep.compile_seconds`).
* FLOPs per step, three ways: "counted" = matmul + convolution FLOPs of the traced step's
  jaxpr with scan bodies multiplied by their length (attention included); "XLA" = the
  compiled executable's `cost_analysis()['flops']`, which counts a scan (while) body ONCE,
  not per layer, so it undercounts the scanned decoder; "analytic" = 2·N·tokens forward,
  4·N·tokens more backward for trained weights (attention excluded).
* MFU = counted FLOPs / s / the device's dense bf16 peak (PEAK_FLOPS); "n/a" on CPU.
* CPU-s/step: the process's CPU time per step (all threads), a load-robust measure of work.
* baselines: `mmalign_jax/bench_baselines/torch_dpo_step.py` and `.../trl_dpo_step.py`
  (+ diagnostic variants trl-gc, torch-1t, trl-1t) run as subprocesses (`python -m
  mmalign_jax.bench_baselines.…`) with the same shapes. By default they run
  in `--serve` mode and the implementations take turns one step at a time (rotating order),
  so a shared machine's load drift hits every row alike. Ours is served the same way, from
  its own process (`--serve-ours`), and the whole measurement is repeated once per rotation
  of the order in which the processes start (`--start-orders balanced`, the default): on the
  2-core VM of docs/PERFORMANCE.md the JAX process started first ran 3-9 % slower, so a
  fixed start order is biased. The DPO rows' s/step is then the geometric mean over start
  orders of each order's median; ours is also timed in the bench's own process, for the FLOP,
  memory and forward-only figures. `--start-orders first` keeps the quicker single order
  (ours in the bench's process, started first); `--sequential` runs each in one block
  (ours before and after the baselines). A baseline whose packages are missing is reported
  as such, never estimated.
* Qwen2.5-VL presets (`qwen-small`): TRL only (`.../trl_qwen_dpo_step.py`, rows trl,
  trl-gc, trl-1t; the lean PyTorch step is LLaVA's). The bench first writes our initial weights as a
  Hugging Face folder (`export_hf_checkpoint`; alone: `--export-hf DIR`) that TRL's side
  loads, and both sides build the same token ids and images (`bench_baselines/qwen_data.py`);
  the policy's log-probs before the first update are printed for both, as a check that the
  model and the batch are the same.
* host memory (`--malloc keep`, the default): glibc's malloc set to keep each step's memory
  in the process (`mmalign_jax/host_malloc.py`) in this process and, through
  `GLIBC_TUNABLES`, in every child — the baselines and our served step. Without it each step
  faults its temporaries in afresh, which costs most in whichever process sat idle longest
  during the interleaved rounds (our step 4.215 vs 3.141 s in a four-process run). The same
  settings on every side; `--malloc default` leaves glibc as it comes everywhere.
* `--profile DIR`: one traced step (jax.profiler, XLA op level), op time by phase · module.

`main(argv)` returns the results dict (the test calls it); `--write FILE` replaces the part
of FILE between `<!-- bench:PRESET:begin -->` and `<!-- bench:PRESET:end -->` where FILE has
them (docs/PERFORMANCE.md: `qwen-small`), else between `<!-- bench:begin -->` and
`<!-- bench:end -->`.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

log = logging.getLogger("mmalign_jax.bench")

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# The folder this copy of the package was imported from (a source checkout's root, or
# site-packages): the working directory of every child process, so that `python -m
# mmalign_jax.…` there runs this same copy.
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The baselines, modules of this package run as `python -m` (bench_baselines/; they import
# PyTorch / TRL, which only their own process needs). torch / trl: as specified (threads =
# cores, no gradient checkpointing). Diagnostics: trl-gc = TRL with its own default gradient
# checkpointing; torch-1t / trl-1t = one torch thread (shows how much a competing process on a
# shared machine costs torch's OpenMP barriers).
_TORCH, _TRL = "mmalign_jax.bench_baselines.torch_dpo_step", "mmalign_jax.bench_baselines.trl_dpo_step"
BASELINE_MODULES = {"torch": _TORCH, "trl": _TRL, "trl-gc": _TRL, "torch-1t": _TORCH,
                    "trl-1t": _TRL}
BASELINE_EXTRA_ARGS = {"trl-gc": ["--gradient-checkpointing"], "torch-1t": ["--threads", "1"],
                       "trl-1t": ["--threads", "1"]}
_TRL_PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets")
BASELINE_PACKAGES = {"torch": ("torch", "transformers"), "torch-1t": ("torch", "transformers"),
                     "trl": _TRL_PACKAGES, "trl-gc": _TRL_PACKAGES, "trl-1t": _TRL_PACKAGES}
BASELINE_PRESETS = ("bench-small", "tiny", "llava-1.5-7b")   # shapes the baseline scripts know
# Qwen2.5-VL presets: TRL's DPOTrainer on `Qwen2_5_VLForConditionalGeneration` with our
# initial weights (`export_hf_checkpoint`) and the same data (`bench_baselines/qwen_data.py`);
# the lean PyTorch step is written for LLaVA only.
_TRL_QWEN = "mmalign_jax.bench_baselines.trl_qwen_dpo_step"
QWEN_BASELINE_MODULES = {"trl": _TRL_QWEN, "trl-gc": _TRL_QWEN, "trl-1t": _TRL_QWEN}
QWEN_BASELINE_PRESETS = ("qwen-small", "qwen2.5-vl-tiny")


def baseline_module(name: str, preset: str) -> str | None:
    """The module that runs baseline `name` on `preset` (None: no such baseline for it)."""
    if preset in QWEN_BASELINE_PRESETS:
        return QWEN_BASELINE_MODULES.get(name)
    return BASELINE_MODULES[name]


def default_baselines(preset: str) -> str:
    """`--baselines auto`: lean PyTorch and TRL for LLaVA presets, TRL for Qwen2.5-VL's."""
    return "trl" if preset in QWEN_BASELINE_PRESETS else "torch,trl"

# Dense bf16 peak FLOP/s per chip (vendor figures). MFU is quoted against these even for a
# float32 run (the usual convention is to compare with the bf16 peak).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,        # v5p reports 'TPU v5'
    "TPU v6 lite": 918e12,   # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,          # SXM
    "H200": 989e12,
}


def peak_flops(device) -> float | None:
    if device.platform == "cpu":
        return None
    kind = str(getattr(device, "device_kind", ""))
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):   # most specific first
        if name.lower() in kind.lower():
            return PEAK_FLOPS[name]
    return None


# ------------------------------------------------------------------------------ workload

class Workload:
    """Shapes shared by every implementation: `pairs` preference pairs of one image +
    `prompt_text` text tokens (prompt_len = image tokens + text) and two responses of
    `response_len` tokens; SFT and forward use `pairs` rows of prompt_len + response_len.

    LLaVA presets: random pixels at the tower's size, prompt = image tokens + text.
    Qwen2.5-VL presets (`native_resolution` families): `bench_baselines/qwen_data.py` — the
    data TRL's side trains on too: a random RGB image of the largest square the slot holds
    (qwen-small: 224² px = 256 patches = 64 tokens) through our image processor, prompt =
    `<|vision_start|>` + image tokens + `<|vision_end|>` + text (`prompt_text` counts the two
    markers)."""

    def __init__(self, preset: str, pairs: int, prompt_text: int, response_len: int):
        from mmalign_jax.models import presets, registry
        self.preset, self.pairs = preset, pairs
        self.prompt_text, self.response_len = prompt_text, response_len
        self.cfg = presets.get_preset(preset)
        self.family = registry.for_config(self.cfg)
        self.native = self.family.native_resolution
        if self.native:
            from mmalign_jax.bench_baselines import qwen_data
            self.image_side = qwen_data.image_side(self.cfg)
            self.n_img = qwen_data.image_tokens(self.cfg)
            # the ViT runs on the patches, 4 per image token (merger: 2×2 → 1)
            self.vision_tokens = self.n_img * self.cfg.vision.merge_unit
        else:
            self.image_side = self.cfg.vision.image_size
            self.n_img = self.cfg.num_image_tokens
            self.vision_tokens = self.n_img
        self.prompt_len = self.n_img + prompt_text
        self.seq_len = self.prompt_len + response_len
        self.hf_dir = ""   # a Hugging Face folder of our initial weights (the Qwen TRL baseline)

    @property
    def dpo_tokens(self) -> int:
        """Tokens of one step's data: each pair's prompt once and both responses."""
        return self.pairs * (self.prompt_len + 2 * self.response_len)

    def describe(self) -> dict:
        return dict(preset=self.preset, family=self.family.name, pairs=self.pairs,
                    image_tokens=self.n_img, image_side=self.image_side,
                    vision_tokens=self.vision_tokens, prompt_len=self.prompt_len,
                    response_len=self.response_len, seq_len=self.seq_len)

    def _ids(self, rng, shape):
        # Below the pad / image ids: bench-small keeps them at the top of its vocabulary,
        # llava-1.5 at 32000/32001 under 64 padding rows (an image id in the text would
        # ask for a second image).
        t = self.cfg.text
        above = [i for i in (self.cfg.image_token_id, t.pad_token_id) if i is not None and i >= 5]
        return rng.integers(5, min(above, default=t.vocab_size), shape).astype(np.int32)

    def _prompt(self, rng):
        b = self.pairs
        img = np.full((b, self.n_img), self.cfg.image_token_id, np.int32)
        return np.concatenate([img, self._ids(rng, (b, self.prompt_text))], axis=1)

    def _pixels(self, rng):
        s = self.cfg.vision.image_size
        return rng.standard_normal((self.pairs, 1, s, s, 3)).astype(np.float32)

    def _native(self, seed: int) -> tuple[dict, dict]:
        """(qwen_data pairs, image slot arrays `{"pixel_values": [B, 1, P, 1176],
        "image_grid_thw": [B, 1, 3]}` from our processor)."""
        from PIL import Image
        from mmalign_jax.bench_baselines import qwen_data
        from mmalign_jax.models.family import place_image
        d = qwen_data.make_pairs(self.cfg, self.pairs, self.prompt_text, self.response_len, seed)
        slots = self.family.empty_images(self.cfg, self.pairs, 1, self.vision_tokens)
        for i, im in enumerate(d["images"]):
            place_image(slots, i, 0, self.family.preprocess_image(self.cfg, Image.fromarray(im)))
        return d, slots

    def _common(self) -> dict:
        b = self.pairs
        return {"image_mask": np.ones((b, 1), bool), "example_index": np.arange(b, dtype=np.int32),
                "weight": np.ones((b,), np.float32)}

    def dpo_batch(self, seed: int = 0) -> dict:
        """The DPO pipeline layout (data/loader.py): prompts left padded (here: full)."""
        b, r = self.pairs, self.response_len
        if self.native:
            d, slots = self._native(seed)
            prompt, chosen, rejected = d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]
            images = slots
        else:
            rng = np.random.default_rng(seed)
            prompt = self._prompt(rng)
            chosen, rejected = self._ids(rng, (b, r)), self._ids(rng, (b, r))
            images = {"pixel_values": self._pixels(rng)}
        return {
            "prompt_ids": prompt, "prompt_mask": np.ones_like(prompt),
            "chosen_ids": chosen, "chosen_mask": np.ones((b, r), np.int32),
            "rejected_ids": rejected, "rejected_mask": np.ones((b, r), np.int32),
            **images, **self._common(),
        }

    def sft_batch(self, seed: int = 0) -> dict:
        """The SFT layout: image + prompt text + response, targets on the response."""
        b = self.pairs
        if self.native:
            d, images = self._native(seed)
            ids = np.concatenate([d["prompt_ids"], d["chosen_ids"]], axis=1)
        else:
            rng = np.random.default_rng(seed)
            ids = np.concatenate([self._prompt(rng), self._ids(rng, (b, self.response_len))], axis=1)
            images = {"pixel_values": self._pixels(rng)}
        target = np.zeros(ids.shape, bool)
        target[:, self.prompt_len:] = True
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_mask": target,
                **images, **self._common()}


def train_config(method: str, w: Workload, lora_rank: int = 0, dtype: str = "float32"):
    """The trainer config for the benchmark: the library defaults with the workload's
    shapes, full fine-tuning of LM + projector (vision frozen), fp32, no remat, AdamW.
    `lora_rank` > 0: LoRA (alpha = 2·rank, the paper's ratio) on the LM instead of full
    fine-tuning; `dtype` "bfloat16": bf16 compute and frozen weights (trained ones stay fp32),
    as the llava presets train."""
    from mmalign_jax.train import defaults
    c = defaults.base_config(method)
    c.model.preset = w.preset
    c.model.dtype = c.model.param_dtype = dtype
    c.model.remat_policy = "none"
    c.lora.enabled = lora_rank > 0
    if lora_rank > 0:
        c.lora.rank, c.lora.alpha = lora_rank, 2.0 * lora_rank
    c.lora.dropout = 0.0
    c.optim.lr = c.optim.projector_lr = 5e-5
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.optim.train_projector = True
    c.optim.train_vision = False
    c.data.prompt_len = w.prompt_len
    c.data.response_len = w.response_len
    c.data.seq_len = w.seq_len
    c.dpo.beta = 0.1
    c.dpo.loss_type = "sigmoid"
    c.dpo.reference = "online"
    c.train.global_batch_size = w.pairs
    c.train.micro_batch_size = 0
    c.train.progress = False
    c.mesh.shape = {"data": -1, "fsdp": 1, "tensor": 1}
    return c


# ------------------------------------------------------------------------------ FLOPs

def _count(tree) -> int:
    import jax
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def param_counts(cfg) -> dict:
    """Matmul parameter counts by part (embedding lookups excluded: they cost no FLOPs)."""
    from mmalign_jax.models import registry
    fam = registry.for_config(cfg)
    p = fam.abstract_params(cfg)
    lm = p["language_model"]
    head = lm["lm_head"]["kernel"] if "lm_head" in lm else lm["embed_tokens"]["embedding"]
    vision = p[fam.vision_key]
    # the projector: what is neither the tower nor the LM (LLaVA's multi_modal_projector,
    # Qwen2.5-VL's merger)
    projector = {k: v for k, v in p.items() if k not in (fam.vision_key, "language_model")}
    return {
        "lm_layers": _count(lm["layers"]),
        "lm_head": int(np.prod(head.shape)),
        "embed": int(np.prod(lm["embed_tokens"]["embedding"].shape)),
        "projector": _count(projector),
        # only the layers the feature layer needs run (INTERNALS.md: vision layers unrolled)
        "vision": _count(vision),
        "total": _count(p),
    }


def analytic_flops(kind: str, w: Workload) -> dict:
    """Matmul FLOPs per step (2·N per token forward; backward 2× that for trained weights,
    0 for the frozen vision tower), attention score/value products excluded. The tower runs
    on `w.vision_tokens` per image (Qwen2.5-VL: the patches, 4 per image token)."""
    n = param_counts(w.cfg)
    b, p, r, img = w.pairs, w.prompt_len, w.response_len, w.n_img
    v = n["vision"] * w.vision_tokens // img   # so that `v * img` = the tower's per-image FLOPs/2
    if kind == "forward":
        lm_tokens, head_tokens = b * w.seq_len, b * w.seq_len
        fwd = 2 * (n["lm_layers"] * lm_tokens + n["lm_head"] * head_tokens
                   + (v + n["projector"]) * b * img)
        return {"model_flops": fwd, "lm_tokens": lm_tokens}
    if kind == "sft":
        lm_tokens = b * w.seq_len
        head_tokens = b * (w.seq_len - 1)
        trained = 6 * (n["lm_layers"] * lm_tokens + n["lm_head"] * head_tokens
                       + n["projector"] * b * img)
        return {"model_flops": trained + 2 * v * b * img, "lm_tokens": lm_tokens}
    # dpo (ours): prompt once per pair and both responses in the same pass over the layers
    # (shared prefix); LM head at response positions; online reference = one more forward;
    # the frozen ViT runs once for policy and reference.
    lm_tokens = b * p + 2 * b * r
    head_tokens = 2 * b * r
    per_pass = n["lm_layers"] * lm_tokens + n["lm_head"] * head_tokens + n["projector"] * b * img
    flops = 6 * per_pass + 2 * per_pass + 2 * v * b * img  # policy f+b, ref f, ViT once
    # the concatenated [2B, P+R] layout of the baselines, for comparison
    lm_cat = 2 * b * (p + r)
    per_cat = n["lm_layers"] * lm_cat + n["lm_head"] * head_tokens + n["projector"] * 2 * b * img
    flops_cat = 8 * per_cat + 2 * 2 * v * 2 * b * img
    return {"model_flops": flops, "lm_tokens": lm_tokens,
            "model_flops_concat_layout": flops_cat, "lm_tokens_concat_layout": lm_cat}


def _subjaxprs(params):
    for v in params.values():
        for x in (v if isinstance(v, (list, tuple)) else (v,)):
            if hasattr(x, "eqns"):
                yield x
            elif hasattr(x, "jaxpr") and hasattr(getattr(x, "jaxpr"), "eqns"):
                yield x.jaxpr


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def jaxpr_flops(jaxpr) -> int:
    """Matmul + convolution FLOPs of a jaxpr, scan bodies multiplied by their length (what
    XLA's cost analysis does not do), `cond` counted by its costliest branch, `while`
    bodies once (unknown trip count; the train step has none)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            total += 2 * _prod(lhs.shape[i] for i in lb) * _prod(lhs.shape[i] for i in lc) \
                * _prod(d for i, d in enumerate(lhs.shape) if i not in lc and i not in lb) \
                * _prod(d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb)
        elif name == "conv_general_dilated":
            out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
            spec = eqn.params["dimension_numbers"].rhs_spec   # (out feat, in feat, spatial...)
            total += 2 * _prod(out.shape) * rhs.shape[spec[1]] * _prod(rhs.shape[d] for d in spec[2:])
        subs = list(_subjaxprs(eqn.params))
        if not subs:
            continue
        if name == "cond":
            total += max(jaxpr_flops(j) for j in subs)
        else:
            mult = int(eqn.params.get("length", 1)) if name == "scan" else 1
            total += mult * sum(jaxpr_flops(j) for j in subs)
    return total


def traced_flops(jitted, *args) -> int | None:
    try:
        return jaxpr_flops(jitted.trace(*args).jaxpr.jaxpr)
    except Exception as e:  # an API difference must not break the benchmark
        log.warning("jaxpr FLOP count failed: %s", e)
        return None


def xla_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    f = ca.get("flops")
    return float(f) if f is not None and f >= 0 else None


# ------------------------------------------------------------------------------ timing

def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _rates(seconds, items_per_step, tokens_per_step, flops, peak):
    """Throughput figures of a step that takes `seconds` (FLOP rate and MFU where known)."""
    return {"s_per_step_median": seconds, "items_per_s": items_per_step / seconds,
            "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / seconds,
            "achieved_gflops": flops / seconds / 1e9 if flops else None,
            "mfu": (flops / seconds / peak) if (flops and peak) else None}


def _summary(times, items_per_step, tokens_per_step, flops, device):
    return {**_rates(_median(times), items_per_step, tokens_per_step, flops, peak_flops(device)),
            "step_seconds": times}


def bench_forward(w: Workload, steps: int, warmup: int, dtype: str = "float32",
                  attention: str = "auto") -> dict:
    import jax
    import jax.numpy as jnp
    cfg = w.cfg.replace(dtype=dtype, param_dtype=dtype, attention_impl=attention)
    fam = w.family
    model = fam.module(cfg)
    params = jax.jit(lambda k: fam.init_params(cfg, k))(jax.random.PRNGKey(0))
    batch = w.sft_batch()
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    px = jax.tree.map(jnp.asarray, fam.model_images(batch))

    def fwd(p, ids, px, mask):
        return model.apply({"params": p}, ids, px, mask)

    jaxpr_fl = traced_flops(jax.jit(fwd), params, ids, px, mask)
    t0 = time.perf_counter()
    compiled = jax.jit(fwd).lower(params, ids, px, mask).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        logits = compiled(params, ids, px, mask)
        logits.block_until_ready()
        dt = time.perf_counter() - t0
        log.info("forward step %d: %.3fs", i, dt)
        if i >= warmup:
            times.append(dt)
    finite = bool(jnp.isfinite(logits).all())
    del logits
    an = analytic_flops("forward", w)
    tokens = w.pairs * w.seq_len
    out = {"what": "forward", "batch": w.pairs, "seq_len": w.seq_len, "compile_s": compile_s,
           "xla_flops": xla_flops(compiled), "jaxpr_flops": jaxpr_fl,
           "analytic_flops": an["model_flops"], "finite": finite,
           **_summary(times, w.pairs, tokens, jaxpr_fl or an["model_flops"], jax.devices()[0])}
    return out


class TrainBench:
    """One method's train step through the real trainer (`loop.build` + `loop.jit_steps`),
    compiled once; `timed()` can be called again later (e.g. after the baselines ran, to
    bracket them: the machine's load drifts)."""

    def __init__(self, method: str, w: Workload, remat: str = "none", lora_rank: int = 0,
                 dtype: str = "float32", attention: str = "auto"):
        import jax
        from mmalign_jax import parallel
        from mmalign_jax.train import defaults, loop
        self.method, self.w = method, w
        c = train_config(method, w, lora_rank, dtype)
        c.model.remat_policy = remat
        c.model.attention_impl = attention
        defaults.validate(c, jax.device_count(), random_init_ok=True, needs_data=False)
        self.run = loop.build(c, total_steps=1000)
        local = w.dpo_batch() if method == "dpo" else w.sft_batch()
        self.batch = parallel.global_batch(local, self.run.mesh, self.run.shardings["rules"])
        self.train_step, self.eval_step = loop.jit_steps(self.run, self.batch)
        with loop.mesh_context(self.run.mesh, self.run.shardings["rules"]):
            self.jaxpr_flops = traced_flops(self.train_step.fn, self.run.state, self.batch,
                                            self.run.frozen, self.run.ref)
        self.times: dict[str, list] = {}
        self.cpu: list = []
        self.losses, self.finite, self.forward_only = [], True, None
        self.first_metrics = None   # the first step's metrics (log-probs before any update)

    def step(self) -> float:
        import jax
        run = self.run
        compile_before = self.train_step.compile_seconds
        t0, c0 = time.perf_counter(), time.process_time()
        run.state, metrics = self.train_step(run.state, self.batch, run.frozen, run.ref)
        metrics = jax.device_get(metrics)
        dt = time.perf_counter() - t0 - (self.train_step.compile_seconds - compile_before)
        if self.train_step.compile_seconds == compile_before:   # compile steps: no CPU figure
            self.cpu.append(time.process_time() - c0)
        self.finite &= bool(metrics["finite"]) and math.isfinite(float(metrics["loss"]))
        self.losses.append(float(metrics["loss"]))
        if self.first_metrics is None:
            self.first_metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
        log.info("%s step %d: %.3fs loss %.4f", self.method, len(self.losses) - 1, dt, self.losses[-1])
        return dt

    def timed(self, steps: int, warmup: int, label: str = "main") -> list:
        for _ in range(warmup):
            self.step()
        self.times[label] = [self.step() for _ in range(steps)]
        return self.times[label]

    def time_forward_only(self, steps: int) -> float:
        """Diagnostic: the same loss without the backward (policy + reference forwards)."""
        import jax
        run, ts = self.run, []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            jax.block_until_ready(self.eval_step(run.state.trainable, self.batch, run.frozen, run.ref))
            if i:
                ts.append(time.perf_counter() - t0)
        self.forward_only = _median(ts)
        return self.forward_only

    def result(self) -> dict:
        import jax
        w, method = self.w, self.method
        compiled = next(iter(self.train_step.cache.values()))
        an = analytic_flops(method, w)
        tokens = w.dpo_tokens if method == "dpo" else w.pairs * w.seq_len
        pooled = [t for ts in self.times.values() for t in ts]
        out = {"what": method, "impl": "mmalign_jax (JAX/XLA)",
               "remat_policy": self.run.cfg.remat_policy,
               "compile_s": self.train_step.compile_seconds,
               "xla_flops": xla_flops(compiled), "jaxpr_flops": self.jaxpr_flops,
               "analytic_flops": an["model_flops"], "analytic": an, "losses": self.losses,
               "finite": self.finite, "trainable_params": _count(self.run.state.trainable),
               "frozen_params": _count(self.run.frozen),
               "medians_by_phase": {k: _median(v) for k, v in self.times.items()},
               # process CPU time (all threads): the work, whatever the machine's load; the
               # warm-up steps are included (XLA steps are identical after the compile)
               "cpu_s_per_step_median": _median(self.cpu),
               **_summary(pooled, w.pairs, tokens, self.jaxpr_flops or an["model_flops"],
                          jax.devices()[0])}
        if method == "dpo":
            out["pairs_per_s"] = out["items_per_s"]
            if self.first_metrics:   # the policy's log-probs before the first update
                out["initial_logps_chosen_mean"] = self.first_metrics.get("logps/chosen")
                out["initial_logps_rejected_mean"] = self.first_metrics.get("logps/rejected")
        if self.forward_only is not None:
            out["forward_only_s_median"] = self.forward_only
        mem = self.train_step.memory
        if mem is not None:
            out["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0) or 0)
            out["argument_bytes"] = int(getattr(mem, "argument_size_in_bytes", 0) or 0)
        stats = device_memory_stats()
        if stats:
            out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
            out["device_bytes_limit"] = stats.get("bytes_limit")
        return out


def device_memory_stats() -> dict | None:
    """The allocator's counters of device 0 (GPU/TPU); None where the backend has none (CPU)."""
    import jax
    try:
        return jax.devices()[0].memory_stats() or None
    except Exception:   # not implemented on some backends
        return None


def bench_train(method: str, w: Workload, steps: int, warmup: int, eval_too: bool = True,
                remat: str = "none", lora_rank: int = 0, dtype: str = "float32",
                attention: str = "auto") -> dict:
    tb = TrainBench(method, w, remat, lora_rank, dtype, attention)
    tb.timed(steps, warmup)
    if eval_too:
        tb.time_forward_only(max(steps // 2, 1))
    return tb.result()


# ------------------------------------------------------------------------------ profile

_PARTS = ("vision_tower", "multi_modal_projector", "visual", "merger", "lm_head",
          "attn projections", "attention core", "mlp", "layernorm", "embed",
          "dynamic_update_slice", "dynamic_slice", "concatenate")


def _op_category(op_name: str | None) -> str:
    if op_name is None:
        return "unattributed"
    if "transpose(" in op_name:
        phase = "backward"
    elif "jvp(" in op_name or "/while/" in op_name:
        phase = "forward"
    else:
        phase = "update/other"   # optimizer, clipping, metrics: outside the loss
    if "self_attn" in op_name and "vision_tower" not in op_name and "/visual/" not in op_name:
        # LM attention: q/k/v/o matmuls vs the core (scores, softmax, RoPE, cache writes)
        part = ("attn projections" if re.search(r"self_attn/[qkvo]_proj", op_name)
                else "attention core")
    else:
        part = next((k for k in _PARTS if k in op_name), "other")
    return f"{phase} · {part}"


def profile_step(tb: "TrainBench", out_dir: str) -> dict:
    """Trace one train step with jax.profiler (XLA op level) and add up the op time (summed
    over the XLA worker threads) by phase · module (from each op's `op_name` metadata in the
    compiled HLO) and by fusion kind. Needs the profiler's trace.json.gz output."""
    import jax
    os.makedirs(out_dir, exist_ok=True)
    opts = jax.profiler.ProfileOptions()
    opts.host_tracer_level = 3
    opts.python_tracer_level = 0
    jax.profiler.start_trace(out_dir, profiler_options=opts)
    wall = tb.step()
    jax.profiler.stop_trace()
    compiled = next(iter(tb.train_step.cache.values()))
    with open(os.path.join(out_dir, "train_step.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    return {**summarize_trace(out_dir), "step_wall_s": wall}


def summarize_trace(out_dir: str) -> dict:
    """Op time of the newest trace in `out_dir` by phase · module and by XLA op kind, using
    the `op_name` metadata of `out_dir/train_step.hlo.txt`."""
    import glob
    import gzip
    with open(os.path.join(out_dir, "train_step.hlo.txt")) as f:
        hlo = f.read()
    meta = {m.group(1): m.group(2) for m in re.finditer(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo, re.M)}
    traces = sorted(glob.glob(os.path.join(out_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    if not traces:
        return {"error": "no trace.json.gz written", "dir": out_dir}
    events = json.load(gzip.open(traces[-1]))
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
               for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    # On a GPU/TPU the kernels are the events of the device's own process ("/device:GPU:0"),
    # named by their HLO op in args.hlo_op where the profiler records it; on CPU they are
    # the events of XLA's worker threads.
    devices = {e.get("pid") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith(("/device:GPU", "/device:TPU"))}

    def is_op(e):
        if devices:
            return e.get("pid") in devices
        return "XLA" in threads.get((e.get("pid"), e.get("tid")), "")

    by_cat, by_kind = {}, {}
    for e in events:
        if e.get("ph") != "X" or not is_op(e):
            continue
        name = str(e.get("args", {}).get("hlo_op") or e.get("name", ""))
        if name.startswith(("ThunkExecutor", "Slinky", "ThreadpoolListener")):
            continue
        dur = float(e.get("dur", 0)) / 1e6
        cat = _op_category(meta.get(name))
        kind = re.sub(r"[.\d]+$", "", name)
        by_cat[cat] = by_cat.get(cat, 0.0) + dur
        by_kind[kind] = by_kind.get(kind, 0.0) + dur
    total = sum(by_cat.values()) or float("nan")
    top = lambda d, n: [(k, v, v / total) for k, v in sorted(d.items(), key=lambda x: -x[1])[:n]]
    return {"dir": out_dir, "op_seconds_total": total,
            "by_category": top(by_cat, 16), "by_kind": top(by_kind, 10)}


# ------------------------------------------------------------------------------ baselines

def interleaved(tbs: dict, baselines: list, w: Workload, steps: int, warmup: int,
                timeout: float, extra: Sequence[str] = ()) -> dict:
    """Take turns, one step each per round (the order rotates every round), so a change in
    the machine's load hits every implementation alike. Ours warm up first; the baselines
    then set up and warm up in their own processes (concurrently: untimed)."""
    for tb in tbs.values():
        tb.timed(0, warmup, "interleaved")
    results, served = {}, {}
    for b in baselines:
        cmd, err = baseline_command(b, w, steps, warmup, serve=True, extra=extra)
        if err:
            results[b] = err
        else:
            served[b] = ServedBaseline(b, cmd, timeout)
    for b, sb in list(served.items()):
        if not sb.wait_ready():
            results[b] = sb.finish()
            del served[b]
    players = [("ours", r) for r in tbs] + [("baseline", b) for b in served]
    for k in range(steps):
        for kind, key in players[k % len(players):] + players[:k % len(players)]:
            if kind == "ours":
                tbs[key].times.setdefault("interleaved", []).append(tbs[key].step())
            elif key in served and served[key].step() is None:
                results[key] = served.pop(key).finish()
    for b, sb in served.items():
        results[b] = sb.finish()
    return {b: results[b] for b in baselines}


def serve_ours(args) -> None:
    """`--serve-ours`: our DPO step behind the served-process protocol of the baseline scripts
    (a 'ready' line after compile + warm-up; one timed step per line read from stdin; the
    result as a JSON line when stdin closes)."""
    tb = TrainBench("dpo", Workload(args.preset, args.pairs, args.prompt_text, args.response_len),
                    args.remat, args.lora, args.dtype, args.attention)
    for _ in range(1 + args.warmup):   # compile + warm-up
        tb.step()
    times = tb.times.setdefault("served", [])
    print(json.dumps({"event": "ready"}), flush=True)
    while sys.stdin.readline():
        c0 = time.process_time()
        times.append(tb.step())
        print(json.dumps({"event": "step", "s": times[-1], "cpu_s": time.process_time() - c0}),
              flush=True)
    tb.cpu = tb.cpu[-len(times):] if times else tb.cpu
    print(json.dumps(tb.result(), default=str), flush=True)


def ours_command(w: Workload, warmup: int, remat: str, lora_rank: int, dtype: str,
                 attention: str, precision: str) -> list[str]:
    return [sys.executable, "-m", "mmalign_jax.bench", "--serve-ours", "--preset", w.preset,
            "--pairs", str(w.pairs), "--prompt-text", str(w.prompt_text), "--response-len",
            str(w.response_len), "--warmup", str(warmup), "--remat", remat, "--lora",
            str(lora_rank), "--dtype", dtype, "--attention", attention, "--precision", precision]


def start_order_rounds(players: Sequence[tuple[str, list]], rounds: int, timeout: float) -> dict:
    """Every player (label, served-process argv) in its own process; the measurement — start
    the processes one after the other (each sets up alone), then `rounds` rounds of one step
    each, order rotating — is repeated once per rotation of the start order, so each player
    is started first, second, … equally often. Returns the runs (start order, per-player
    step times and median), the per-player geometric mean of those medians, each player's
    last result line and the errors of players that failed."""
    labels = [label for label, _ in players]
    runs, finished, errors = [], {}, {}
    for r in range(len(players)):
        order = [p for p in players[r:] + players[:r] if p[0] not in errors]
        served = {}
        for label, cmd in order:
            sb = ServedBaseline(label, cmd, timeout)
            if sb.wait_ready():
                served[label] = sb
            else:
                errors[label] = sb.finish()
        live = [label for label, _ in order if label in served]
        times = {label: [] for label in live}
        for k in range(rounds):
            for label in live[k % len(live):] + live[:k % len(live)] if live else []:
                if label in served:
                    t = served[label].step()
                    if t is None:
                        errors[label] = served.pop(label).finish()
                    else:
                        times[label].append(t)
        for label, sb in served.items():
            finished[label] = sb.finish()
        runs.append({"start_order": [label for label, _ in order],
                     "step_seconds": {k: v for k, v in times.items() if k not in errors},
                     "median_s": {k: _median(v) for k, v in times.items() if k not in errors and v}})
    geo = {}
    for label in labels:
        medians = [run["median_s"][label] for run in runs if label in run["median_s"]]
        if label not in errors and medians:
            geo[label] = math.exp(statistics.fmean(math.log(m) for m in medians))
    return {"runs": runs, "geometric_mean_s": geo, "results": finished, "errors": errors}


def with_step_time(result: dict, seconds: float, step_seconds: list, w: Workload,
                   peak: float | None = None) -> dict:
    """`result` with its throughput figures recomputed for a step time of `seconds` (FLOP
    rate and MFU from its own FLOP count, none for a baseline, against `peak` FLOP/s)."""
    flops = result.get("jaxpr_flops") or result.get("analytic_flops")
    return {**result, **_rates(seconds, w.pairs, w.dpo_tokens, flops, peak),
            "step_seconds": step_seconds, "pairs_per_s": w.pairs / seconds}


def balanced(remats: Sequence[str], baselines: list, w: Workload, steps: int, warmup: int,
             timeout: float, extra: Sequence[str], ours_cmd) -> tuple[dict, dict]:
    """`start_order_rounds` over our served step (one player per remat policy) and the
    baselines. Returns ({remat: our timing}, {baseline: result}), s/step = the geometric mean
    over start orders of each order's median."""
    players, results = [], {}
    for r in remats:
        players.append((f"ours:{r}", ours_cmd(r)))
    for b in baselines:
        cmd, err = baseline_command(b, w, steps, warmup, serve=True, extra=extra)
        if err:
            results[b] = err
        else:
            players.append((b, cmd))
    m = start_order_rounds(players, steps, timeout)
    by_order = [{"start_order": run["start_order"], "median_s": run["median_s"]} for run in m["runs"]]

    def pooled(label):
        return [t for run in m["runs"] for t in run["step_seconds"].get(label, [])]

    ours = {}
    for r in remats:
        label = f"ours:{r}"
        if label in m["errors"]:
            ours[r] = {"error": m["errors"][label].get("error", "failed")}
        else:
            ours[r] = {"geo": m["geometric_mean_s"][label], "step_seconds": pooled(label),
                       "cpu": m["results"].get(label, {}).get("cpu_s_per_step_median"),
                       "by_start_order": by_order}
    for b in baselines:
        if b in results:
            continue
        if b in m["errors"]:
            results[b] = m["errors"][b]
            continue
        res = with_step_time(m["results"][b], m["geometric_mean_s"][b], pooled(b), w)
        res["by_start_order"] = by_order
        results[b] = res
    return ours, {b: results[b] for b in baselines}


def missing_packages(name: str) -> list[str]:
    return [p for p in BASELINE_PACKAGES[name] if importlib.util.find_spec(p) is None]


# The baselines that also take --lora / --dtype bfloat16 (the lean PyTorch script: peft, bf16
# autocast); TRL's script fine-tunes fully in fp32 only.
LORA_BASELINES = ("torch", "torch-1t")


def lora_or_bf16(lora_rank: int, dtype: str) -> bool:
    """A workload other than full fp32 fine-tuning: only LORA_BASELINES run it too."""
    return lora_rank > 0 or dtype != "float32"


def baseline_args(backend: str, precision: str, lora_rank: int, dtype: str) -> list[str]:
    """The arguments every baseline gets so that it runs our workload where ours runs: on
    CUDA when JAX's backend is a GPU, with TF32 exactly when ours may use it, and with our
    LoRA rank / dtype when those differ from full fine-tuning in fp32."""
    args = []
    if backend != "cpu":
        args += (["--device", "cuda"] if backend == "gpu" else []) + (
            ["--tf32"] if precision == "default" else [])
    if lora_or_bf16(lora_rank, dtype):
        args += ["--lora", str(lora_rank), "--dtype", dtype]
    return args


def baseline_command(name: str, w: Workload, steps: int, warmup: int, serve: bool = False,
                     extra: Sequence[str] = ()):
    """(argv, None) to run a baseline, or (None, error dict) when it cannot run here.
    `extra`: `baseline_args(...)`."""
    base = {"name": name, "what": "dpo"}
    if w.preset not in BASELINE_PRESETS + QWEN_BASELINE_PRESETS:
        return None, {**base, "error": "not run: the baseline scripts know presets "
                      f"{BASELINE_PRESETS + QWEN_BASELINE_PRESETS}"}
    module = baseline_module(name, w.preset)
    if module is None:
        return None, {**base, "error": f"not run: no {name} baseline for {w.preset} (Qwen2.5-VL "
                      f"presets: {', '.join(QWEN_BASELINE_MODULES)})"}
    if importlib.util.find_spec(module) is None:
        return None, {**base, "error": f"{module} not found (an incomplete installation)"}
    missing = missing_packages(name)
    if missing:
        return None, {**base, "error": "not run: missing packages " + ", ".join(missing)
                      + " (see requirements-bench.txt)"}
    cmd = [sys.executable, "-m", module, "--preset", w.preset, "--steps", str(steps),
           "--warmup", str(warmup), "--pairs", str(w.pairs), "--prompt-text", str(w.prompt_text),
           "--response-len", str(w.response_len)] + BASELINE_EXTRA_ARGS.get(name, []) + list(extra)
    if module == _TRL_QWEN and w.hf_dir:
        cmd += ["--model-dir", w.hf_dir]
    return cmd + (["--serve"] if serve else []), None


def export_hf_checkpoint(w: Workload, out_dir: str) -> str:
    """Our initial weights of the workload's model as a Hugging Face folder (the family's
    `save_hf`: `config_to_hf` + `params_to_hf_state_dict`): what `loop.build` starts from —
    the family's random init with the bench's train config seed — so a baseline that loads
    the folder trains the very model ours does."""
    import jax
    from mmalign_jax.train import loop
    c = train_config("dpo", w)
    cfg = loop.model_config(c)
    params = jax.jit(lambda k: w.family.init_params(cfg, k))(jax.random.PRNGKey(c.seed))
    w.family.save_hf(cfg, jax.device_get(params), out_dir)
    log.info("wrote our initial %s weights to %s", w.preset, out_dir)
    return out_dir


def child_env() -> dict:
    """Environment of a benchmark child process: `GLIBC_TUNABLES` carrying the malloc settings
    `host_malloc` applied in this process, so every implementation runs under the same ones."""
    from mmalign_jax import host_malloc
    env = dict(os.environ)
    tunables = host_malloc.glibc_tunables(env)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return env


def malloc_words(m: dict) -> str:
    if m.get("malloc"):
        return (f"glibc malloc {', '.join(m['malloc'])} (`host_malloc.py`) in every process "
                "(the children through `GLIBC_TUNABLES`)")
    if "glibc.malloc." in m.get("glibc_tunables", ""):
        return f"glibc malloc as `GLIBC_TUNABLES={m['glibc_tunables']}` sets it"
    return "glibc malloc as it comes"


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _finish_baseline(name: str, cmd, summary: dict | None, rc, err_tail: str, wall: float) -> dict:
    base = {"name": name, "what": "dpo", "command": "python " + " ".join(cmd[1:])}
    if rc != 0 or summary is None:
        return {**base, "error": f"exit {rc}: {err_tail}"}
    out = {**summary, **base, "wall_s": wall}
    if out.get("gradient_checkpointing"):
        out["impl"] += " (gradient checkpointing)"
    if name.endswith("-1t"):
        out["impl"] += " (1 thread)"
    out["items_per_s"] = out["pairs_per_s"]
    return out


def run_baseline(name: str, w: Workload, steps: int, warmup: int, timeout: float,
                 extra: Sequence[str] = ()) -> dict:
    """Run a baseline to completion (sequential mode) and return its JSON summary."""
    cmd, err = baseline_command(name, w, steps, warmup, extra=extra)
    if err:
        return err
    log.info("running %s", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=IMPORT_ROOT,
                              env=child_env())
    except subprocess.TimeoutExpired:
        return {"name": name, "what": "dpo", "error": f"timed out after {timeout:.0f}s",
                "command": " ".join(cmd[1:])}
    lines = [d for d in _json_lines(proc.stdout) if "event" not in d]
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return _finish_baseline(name, cmd, lines[-1] if lines else None, proc.returncode, tail,
                            time.perf_counter() - t0)


class ServedBaseline:
    """A baseline subprocess in `--serve` mode: set up and warmed up on its own, then one
    timed step per `step()` call, so implementations can take turns step by step."""

    def __init__(self, name: str, cmd: list, timeout: float):
        import queue
        import tempfile
        import threading
        self.name, self.cmd, self.timeout = name, cmd, timeout
        self.err = tempfile.TemporaryFile(mode="w+")
        self.t0 = time.perf_counter()
        log.info("starting %s", " ".join(cmd[1:]))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, cwd=IMPORT_ROOT, bufsize=1,
                                     env=child_env())
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.summary, self.error, self.times, self.cpu = None, None, [], []

        def pump():
            for line in self.proc.stdout:
                self.lines.put(line)
            self.lines.put(None)
        threading.Thread(target=pump, daemon=True).start()

    def _next_event(self):
        import queue
        while True:
            try:
                line = self.lines.get(timeout=self.timeout)
            except queue.Empty:
                self.error = f"no answer within {self.timeout:.0f}s"
                return None
            if line is None:
                return None
            for d in _json_lines(line):
                if "event" in d:
                    return d
                self.summary = d

    def wait_ready(self) -> bool:
        ev = self._next_event()
        return bool(ev and ev["event"] == "ready")

    def step(self) -> float | None:
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        ev = self._next_event()
        if not ev or ev.get("event") != "step":
            return None
        self.times.append(ev["s"])
        if "cpu_s" in ev:
            self.cpu.append(ev["cpu_s"])
        log.info("%s step: %.3fs", self.name, ev["s"])
        return ev["s"]

    def finish(self) -> dict:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        while self._next_event() is not None:
            pass
        try:
            rc = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed"
        self.err.seek(0)
        tail = " | ".join(self.err.read().strip().splitlines()[-8:])
        if self.error:
            tail = f"{self.error}; {tail}"
        self.err.close()
        return _finish_baseline(self.name, self.cmd, self.summary, rc, tail,
                                time.perf_counter() - self.t0)


# ------------------------------------------------------------------------------ report

def machine_info() -> dict:
    import jax
    from mmalign_jax import host_malloc
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:
            versions[mod] = None
    d = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "jax_backend": jax.default_backend(), "device": f"{d.platform}:{getattr(d, 'device_kind', '')}",
            "n_devices": jax.device_count(), "versions": versions,
            "malloc": list(host_malloc.applied),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _fmt(x, spec=".3g", none="n/a"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _flops_cell(r) -> str:
    def g(x):
        return _fmt(x / 1e9 if x else None, ".1f")
    return f"{g(r.get('jaxpr_flops'))} / {g(r.get('xla_flops'))} / {g(r.get('analytic_flops'))}"


def _resolved_attention(impl: str, dtype: str) -> str:
    from mmalign_jax.models import attention
    real = attention.resolve_impl(impl, dtype)
    return real if impl == real else f"{real} ({impl})"


def _dtype_words(res: dict) -> str:
    dtype = res.get("dtype", "float32")
    words = ("bf16 compute and frozen weights, trained weights fp32" if dtype == "bfloat16"
             else "float32")
    prec = res.get("precision", "n/a (CPU)")
    if not prec.startswith("n/a") and dtype == "float32":
        words += (", fp32 matmuls at full precision on every side (no TF32)" if prec == "highest"
                  else ", each backend's default matmul precision (TF32 allowed)")
    if "attention" in res:
        words += f"; attention `{res['attention']}`"
    return words


def _trained_words(res: dict) -> str:
    r = res.get("lora_rank", 0)
    if r:
        return (f"LoRA r{r}/α{2 * r} on the LM's linear layers (PyTorch: peft) + projector "
                "trained, base LM frozen (the reference is the base with adapters off)")
    return "LM + projector fully trained (no LoRA, on every side)"


def markdown(res: dict) -> str:
    m, w = res["machine"], res["workload"]
    v = m["versions"]
    lines = [
        f"Measured {res['date']} with `{res['command']}`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores visible; JAX backend `{m['jax_backend']}` "
        f"({m['device']}, {m['n_devices']} device(s)); jax {v.get('jax')}, flax {v.get('flax')}, "
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, trl {v.get('trl')}; "
        f"{malloc_words(m)}. "
        f"Load average before/after: {res['load_before']} / {res['load_after']} "
        "(the machine is shared: compare rows of the same run only).",
        "",
        f"Workload `{w['preset']}`: {w['pairs']} pairs/step, 1 image = {w['image_tokens']} tokens"
        + (f" ({w['image_side']}×{w['image_side']} px, {w['vision_tokens']} patches for the ViT)"
           if w.get("vision_tokens", w["image_tokens"]) != w["image_tokens"] else "") + ", "
        f"prompt {w['prompt_len']} tokens (image + {w['prompt_len'] - w['image_tokens']} text"
        + (" incl. <|vision_start|>/<|vision_end|>" if w.get("family") == "qwen2_5_vl" else "")
        + "), "
        f"chosen/rejected {w['response_len']} tokens each; {_dtype_words(res)}; AdamW, clip 1.0; "
        f"vision frozen; {_trained_words(res)}; reference online. "
        f"Median over {res['steps']} steps after {res['warmup']} warm-up steps"
        + (" per start order." if res.get("mode") == "balanced" else "."),
        "",
    ]
    dpo = res.get("dpo")
    variants = list(res.get("dpo_variants", {}).values())
    rows = [r for r in [dpo] + variants + list(res.get("baselines", {}).values()) if r]
    if rows:
        lines += ["| DPO step | s/step (median) | pairs/s | tokens/s | ours ÷ this (pairs/s) "
                  "| CPU-s/step | compile s | GFLOP/step (counted / XLA / analytic) | MFU |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            name = r.get("impl", r.get("name"))
            if "error" in r:
                lines.append(f"| {r['name']} | {r['error']} | | | | | | | |")
                continue
            ratio = ""
            if dpo and "error" not in dpo and r is not dpo:
                ratio = f"**{dpo['items_per_s'] / r['items_per_s']:.2f}×**"
            elif r is dpo:
                ratio = "1"
            ours = r is dpo or any(r is v for v in variants)
            lines.append(
                f"| {name} | {r['s_per_step_median']:.3f} | {r['items_per_s']:.3f} | "
                f"{r['tokens_per_s']:.0f} | {ratio} | {_fmt(r.get('cpu_s_per_step_median'), '.2f')} | "
                f"{_fmt(r.get('compile_s'), '.1f', '–')} | "
                f"{_flops_cell(r) if ours else '–'} | {_fmt(r.get('mfu'), '.1%') if ours else 'n/a'} |")
        lines.append("")
        same = [(r.get("name"), r) for r in res.get("baselines", {}).values()
                if r.get("initial_logps_chosen_mean") is not None]
        if dpo and dpo.get("initial_logps_chosen_mean") is not None and same:
            lines.append(
                "Same model, same batch: the policy's summed response log-probs before the first "
                "update (mean over pairs), chosen / rejected — ours "
                f"{dpo['initial_logps_chosen_mean']:.3f} / {dpo['initial_logps_rejected_mean']:.3f}; "
                + "; ".join(f"{n} {r['initial_logps_chosen_mean']:.3f} / "
                            f"{r['initial_logps_rejected_mean']:.3f}" for n, r in same) + ".")
            lines.append("")
        lines.append("tokens/s counts each pair's prompt once plus both responses "
                     f"({w['pairs']}·({w['prompt_len']}+2·{w['response_len']}) tokens per step) "
                     "for every row, so the tokens/s ratio equals the pairs/s ratio. CPU-s/step is "
                     "the process's CPU time (user + sys, all threads) per step: the work done, "
                     "less sensitive to other processes than wall time, but it includes threads "
                     "spinning at barriers (OpenMP).")
        lines.append("")
    other = [res[k] for k in ("forward", "sft") if res.get(k)]
    if other:
        lines += ["| JAX | shape | s/step (median) | tokens/s | compile s | GFLOP/step (counted / XLA / analytic) "
                  "| achieved GFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|"]
        for r in other:
            shape = f"[{w['pairs']}, {w['seq_len']}] + {w['pairs']} images"
            lines.append(
                f"| {r['what']} | {shape} | {r['s_per_step_median']:.3f} | {r['tokens_per_s']:.0f} | "
                f"{r['compile_s']:.1f} | {_flops_cell(r)} | {_fmt(r.get('achieved_gflops'), '.1f')} | "
                f"{_fmt(r.get('mfu'), '.1%')} |")
        lines.append("")
    if res.get("mode") == "balanced" and dpo and dpo.get("by_start_order"):
        orders = "; ".join(
            " → ".join(o["start_order"]) + ": " + ", ".join(
                f"{k} {v:.3f} s" for k, v in o["median_s"].items())
            for o in dpo["by_start_order"])
        ip = dpo.get("in_process_s_median")
        lines.append("The DPO rows were measured interleaved, each implementation in its own "
                     "process (ours too: `--serve-ours`): each round runs one step of every "
                     "implementation (order rotating), so load changes on the shared machine hit "
                     "all rows alike, and the whole measurement was repeated once per rotation of "
                     "the order in which the processes start (on the 2-core VM of "
                     "docs/PERFORMANCE.md the first-started JAX process ran 3-9 % slower). "
                     "s/step is the geometric mean over the start orders of each order's median "
                     f"(per start order: {orders})."
                     + (f" Ours timed in the bench's own process afterwards: {ip:.3f} s/step."
                        if ip is not None else ""))
        lines.append("")
    if res.get("mode") == "interleaved" and res.get("baselines"):
        lines.append("The DPO rows were measured interleaved: each round runs one step of every "
                     "implementation (order rotating), each in its own process, so load changes "
                     "on the shared machine hit all rows alike. Ours runs in the bench's own "
                     "process, started before the baselines: on the 2-core VM of "
                     "docs/PERFORMANCE.md the first-started process ran our step 3-9 % slower; "
                     "`--start-orders balanced` (the default) balances the start order.")
        lines.append("")
    if dpo and len(dpo.get("medians_by_phase", {})) > 1:
        ph = "; ".join(f"{r.get('remat_policy')}: " + ", ".join(
            f"{k} {v:.3f} s" for k, v in r["medians_by_phase"].items()) for r in [dpo] + variants)
        lines.append(f"Our DPO steps were timed before and after the baselines (the load drifts); "
                     f"the table pools both halves (medians by remat policy — {ph}).")
        lines.append("")
    if dpo and "error" not in dpo:
        fo = dpo.get("forward_only_s_median")
        fo = "" if fo is None else (f"forward-only (policy + reference, no backward) {fo:.3f} s "
                                    f"of the {dpo['s_per_step_median']:.3f} s step; ")
        mem = ""
        if dpo.get("device_peak_bytes"):
            mem = (f"device memory peak {dpo['device_peak_bytes'] / 2**30:.1f} GiB of "
                   f"{(dpo.get('device_bytes_limit') or 0) / 2**30:.0f} GiB (allocator counter, "
                   f"whole process); XLA temp buffers {dpo.get('temp_bytes', 0) / 2**30:.1f} GiB, "
                   f"arguments {dpo.get('argument_bytes', 0) / 2**30:.1f} GiB; ")
        lines.append(f"DPO diagnostics: {fo}{mem}"
                     f"achieved {_fmt(dpo.get('achieved_gflops'), '.1f')} GFLOP/s (counted "
                     f"FLOPs / median step); analytic FLOPs of the concatenated "
                     f"[2B, P+R] layout the baselines run: "
                     f"{dpo['analytic']['model_flops_concat_layout'] / 1e9:.0f} GFLOP "
                     f"({dpo['analytic']['model_flops_concat_layout'] / dpo['analytic_flops']:.2f}× ours).")
        lines.append("")
    prof = (dpo or {}).get("profile")
    if prof and "error" not in prof:
        lines += [f"Profile of one DPO step (remat={dpo.get('remat_policy')}; `--profile "
                  f"{prof['dir']}`): {prof['step_wall_s']:.2f} s wall, "
                  f"{prof['op_seconds_total']:.2f} s of XLA op time summed over worker threads.", "",
                  "| phase · module | op s | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.2f} | {f:.1%} |" for k, v, f in prof["by_category"]]
        lines += ["", "| XLA op kind | op s | share |", "|---|---|---|"]
        lines += [f"| `{k}` | {v:.2f} | {f:.1%} |" for k, v, f in prof["by_kind"]]
        lines.append("")
    lines.append("Per-step seconds (after warm-up): " + "; ".join(
        f"{r.get('name', r.get('what'))}: " + ", ".join(f"{t:.2f}" for t in r["step_seconds"])
        for r in [res.get("forward"), res.get("sft"), dpo] + variants
        + list(res.get("baselines", {}).values())
        if r and "step_seconds" in r))
    return "\n".join(lines)


def section_markers(preset: str) -> tuple[str, str]:
    """The markers of a preset's own block (`<!-- bench:qwen-small:begin -->` …), which a
    file may hold beside the default block; `write_section` uses them where present."""
    return f"<!-- bench:{preset}:begin -->", f"<!-- bench:{preset}:end -->"


def write_section(path: str, text: str, preset: str = "") -> None:
    """Replace the block of `preset` in `path` (its own markers if the file has them, else
    the default `BEGIN` … `END`), or append one."""
    begin, end = BEGIN, END
    doc = open(path).read() if os.path.exists(path) else ""
    if preset:
        own = section_markers(preset)
        if own[0] in doc and own[1] in doc:
            begin, end = own
    block = f"{begin}\n{text}\n{end}"
    if os.path.exists(path):
        if begin in doc and end in doc:
            head, rest = doc.split(begin, 1)
            tail = rest.split(end, 1)[1]
            doc = head + block + tail
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    else:
        doc = "# Performance\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def _load():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    from mmalign_jax.models import attention as attention_lib
    ap = argparse.ArgumentParser(prog="python -m mmalign_jax.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--what", default="all", choices=("forward", "sft", "dpo", "all"))
    ap.add_argument("--preset", default="bench-small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4, help="pairs (DPO) / rows (SFT, forward) per step")
    ap.add_argument("--prompt-text", type=int, default=64, help="text tokens per prompt (+ image tokens)")
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--baselines", default="auto",
                    help="comma list of torch,trl for --what dpo/all; '' or 'none' to skip; "
                         "'auto': torch,trl for LLaVA presets, trl for qwen-small")
    ap.add_argument("--baseline-timeout", type=float, default=3600.0,
                    help="seconds a baseline may take to set up / for one step")
    ap.add_argument("--sequential", action="store_true",
                    help="run each implementation's steps in one block (ours before and after the "
                         "baselines) instead of interleaving them step by step")
    ap.add_argument("--start-orders", default="balanced", choices=("balanced", "first"),
                    help="interleaved DPO comparison: 'balanced' serves ours from its own process "
                         "too and repeats the measurement once per rotation of the processes' "
                         "start order (s/step = geometric mean over the orders); 'first' runs "
                         "ours in the bench's process, started before the baselines (quicker, "
                         "biased where the first-started process runs slower)")
    ap.add_argument("--malloc", default="keep", choices=("keep", "default"),
                    help="'keep': glibc malloc set to keep each step's memory in every timed "
                         "process, ours and the baselines (mmalign_jax/host_malloc.py); "
                         "'default': glibc as it comes")
    ap.add_argument("--serve-ours", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--export-hf", default="", metavar="DIR",
                    help="only write our initial weights of --preset as a Hugging Face folder "
                         "(what the Qwen TRL baseline loads) and exit")
    ap.add_argument("--no-eval", action="store_true", help="skip the forward-only DPO diagnostic")
    ap.add_argument("--remat", default="none",
                    help="model.remat_policy of the JAX train steps (none|full|dots|dots_no_batch); "
                         "a comma list adds one DPO row per extra policy (the first is 'ours')")
    ap.add_argument("--lora", type=int, default=0, metavar="RANK",
                    help="LoRA of this rank (alpha 2·rank) on the LM instead of full fine-tuning "
                         "(baselines: torch only, through peft)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype (bfloat16: frozen weights bf16 too, trained ones fp32; "
                         "baselines: torch only, bf16 autocast)")
    ap.add_argument("--attention", default="auto", choices=attention_lib.IMPLS,
                    help="model.attention_impl of the JAX train steps (auto: dot_product on GPU "
                         "in bf16/fp16, chunked elsewhere)")
    ap.add_argument("--precision", default="highest", choices=("highest", "default"),
                    help="float32 matmul precision on GPU/TPU: 'highest' = true fp32 on every "
                         "side; 'default' = the backends' defaults made equal (XLA's TF32 / bf16 "
                         "passes, PyTorch with TF32 allowed). No effect on CPU or with "
                         "--dtype bfloat16")
    ap.add_argument("--json", default="", help="also write the raw results here")
    ap.add_argument("--profile", default="", metavar="DIR",
                    help="after timing, trace one DPO step into DIR and add an op-time breakdown")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", default="", metavar="FILE",
                   help="replace the bench section of FILE (e.g. docs/PERFORMANCE.md)")
    g.add_argument("--no-write", action="store_true", help="only print (the default)")
    args = ap.parse_args(argv)
    if args.malloc == "keep" and not args.serve_ours:   # served: GLIBC_TUNABLES from the parent
        from mmalign_jax import host_malloc
        host_malloc.apply()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.serve_ours:
        args.remat = args.remat.split(",")[0]
    remats = [r for r in args.remat.replace(" ", "").split(",") if r]
    for r in remats:
        if r not in ("none", "full", "dots", "dots_no_batch"):
            ap.error(f"--remat {r!r}: use none|full|dots|dots_no_batch")
    import jax
    backend = jax.default_backend()
    if backend != "cpu" and args.precision == "highest" and args.dtype == "float32":
        jax.config.update("jax_default_matmul_precision", "highest")   # a bf16 step stays bf16
    extra = baseline_args(backend, args.precision, args.lora, args.dtype)
    if args.serve_ours:
        return serve_ours(args)
    w = Workload(args.preset, args.pairs, args.prompt_text, args.response_len)
    if args.export_hf:
        export_hf_checkpoint(w, args.export_hf)
        return {"export_hf": args.export_hf}
    whats = ("forward", "sft", "dpo") if args.what == "all" else (args.what,)
    if args.baselines == "auto":
        args.baselines = default_baselines(args.preset)
    baselines = [b for b in args.baselines.replace(" ", "").split(",") if b and b != "none"]
    for b in baselines:
        if b not in BASELINE_MODULES:
            ap.error(f"unknown baseline {b!r}; use {', '.join(BASELINE_MODULES)}")
    if lora_or_bf16(args.lora, args.dtype) and any(b not in LORA_BASELINES for b in baselines):
        ap.error("--lora / --dtype bfloat16: only the lean PyTorch baseline (torch, torch-1t) "
                 "runs that workload too; use --baselines torch or --baselines none")
    res = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "command": "python -m mmalign_jax.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info(), "workload": w.describe(), "steps": args.steps,
           "warmup": args.warmup, "load_before": _load(), "lora_rank": args.lora,
           "dtype": args.dtype, "attention": _resolved_attention(args.attention, args.dtype),
           "precision": args.precision if backend != "cpu" else "n/a (CPU)"}
    if "forward" in whats:
        res["forward"] = bench_forward(w, args.steps, args.warmup, args.dtype, args.attention)
    if "sft" in whats:
        res["sft"] = bench_train("sft", w, args.steps, args.warmup, eval_too=False, remat=remats[0],
                                lora_rank=args.lora, dtype=args.dtype, attention=args.attention)
    if "dpo" in whats:
        hf_tmp = None
        if any(baseline_module(b, w.preset) == _TRL_QWEN for b in baselines):
            import tempfile
            hf_tmp = tempfile.TemporaryDirectory(prefix="mmalign_bench_hf_")
            w.hf_dir = export_hf_checkpoint(w, hf_tmp.name)

        def make_tbs():
            return {r: TrainBench("dpo", w, r, args.lora, args.dtype, args.attention) for r in remats}
        served = None
        if not args.sequential and baselines and args.start_orders == "balanced":
            served, res["baselines"] = balanced(
                remats, baselines, w, args.steps, args.warmup, args.baseline_timeout, extra,
                lambda r: ours_command(w, args.warmup, r, args.lora, args.dtype, args.attention,
                                       args.precision))
            tbs = make_tbs()   # after: no idle JAX step of ours beside the served processes
            for tb in tbs.values():
                tb.timed(args.steps, args.warmup, "in-process")
        elif args.sequential:
            tbs = make_tbs()
            for tb in tbs.values():
                tb.timed(args.steps, args.warmup, "before baselines")
            res["baselines"] = {b: run_baseline(b, w, args.steps, args.warmup, args.baseline_timeout,
                                                extra)
                                for b in baselines}
            if any("error" not in r for r in res["baselines"].values()):
                # Bracket the baselines: the load of a shared machine drifts; pool both halves.
                for tb in tbs.values():
                    tb.timed(args.steps, 0, "after baselines")
        else:
            tbs = make_tbs()
            res["baselines"] = interleaved(tbs, baselines, w, args.steps, args.warmup,
                                           args.baseline_timeout, extra)
        res["mode"] = ("sequential" if args.sequential else
                       "balanced" if served is not None else "interleaved")
        if not args.no_eval:
            tbs[remats[0]].time_forward_only(max(args.steps // 2, 1))
        results = {r: tb.result() for r, tb in tbs.items()}
        for r, t in (served or {}).items():
            if "error" in t:
                results[r] = {**results[r], "error": f"served process: {t['error']}"}
                continue
            results[r]["in_process_s_median"] = results[r]["s_per_step_median"]
            results[r] = with_step_time(results[r], t["geo"], t["step_seconds"], w,
                                        peak_flops(jax.devices()[0]))
            results[r]["cpu_s_per_step_median"] = t["cpu"]
            results[r]["by_start_order"] = t["by_start_order"]
        res["dpo"] = results[remats[0]]
        if args.profile:
            try:
                res["dpo"]["profile"] = profile_step(tbs[remats[0]], args.profile)
            except Exception as e:  # profiling is a diagnostic: never lose the timings
                res["dpo"]["profile"] = {"error": repr(e)}
        res["dpo"]["name"] = "ours"
        if remats[0] != "none":
            res["dpo"]["impl"] += f" (remat={remats[0]})"
        res["dpo_variants"] = {}
        for r in remats[1:]:
            v = results[r]
            v["name"] = f"ours-remat-{r}"
            v["impl"] += f" (remat={r})"
            res["dpo_variants"][r] = v
        del tbs
        if hf_tmp is not None:
            hf_tmp.cleanup()
        tr = res["dpo"]["trainable_params"]
        for b, r in res["baselines"].items():
            if "trainable_params" in r and r["trainable_params"] != tr:
                r["note"] = f"trainable params {r['trainable_params']} != ours {tr}"
                log.warning("%s: %s", b, r["note"])
    res["load_after"] = _load()
    text = markdown(res)
    res["markdown"] = text
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    if args.write:
        write_section(args.write, text, args.preset)
        log.info("wrote %s", args.write)
    return res


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    main()
