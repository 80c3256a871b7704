"""The demo presets on top of the library: what a demo run makes before it trains.

`python -m mmalign_jax.train --config configs/dpo.py` (preset `demo`) trains DPO from an SFT
model on data the library makes itself. The training config carries
`prepare = "mmalign_jax.demo.recipe:prepare"`; `train()` calls it first, and it runs, as
stages of `mmalign_jax.stages.Stages` in `<workdir>/stages/` (the mechanism of `python -m
mmalign_jax.pipeline`: done once, skipped on rerun, rerun when their settings change):

  data   the synthetic task (`generate.write_dataset`) and its TFDS splits in
         `<workdir>/data`, plus the demo tokenizer saved as a Hugging Face folder there;
  sft    (presets that start from the demo SFT model: `c.demo_sft`) the SFT run in
         `<workdir>/sft`, its vision tower pretrained first (`vision_pretrain.py`, cached in
         `<workdir>/sft/vision_pretrain`) as LLaVA starts from a pretrained CLIP.

It returns the config to train: ordinary `data.data_dir`, `data.tokenizer`,
`model.init_from` / `model.vision_init` values, nothing the core interprets specially.

The `qwen2.5-vl-demo` presets (`apply_qwen_sft`, `apply_qwen_pairs`) run the same stages for
a tiny Qwen2.5-VL: images of mixed sizes (`c.data.demo.image_sizes`), the Qwen tokenizer
(`c.data.demo.tokenizer = 'qwen'`), no vision pretraining (the SFT stage trains the tower).
"""
from __future__ import annotations

import copy
import logging
import os

import jax
import ml_collections as mlc

from mmalign_jax.demo import generate, tokenizer, vision_pretrain

log = logging.getLogger("mmalign_jax.demo")

PREPARE = "mmalign_jax.demo.recipe:prepare"
TOKENIZERS = {"llava": "load_tokenizer", "qwen": "load_qwen_tokenizer"}
SPLITS = {"train": "train.jsonl", "eval": "eval.jsonl",
          "sft_train": "sft_train.jsonl", "sft_eval": "sft_eval.jsonl",
          "sft_text_train": "sft_text_train.jsonl", "sft_text_eval": "sft_text_eval.jsonl",
          "text_train": "train_text.jsonl", "text_eval": "eval_text.jsonl"}


def add_settings(c: mlc.ConfigDict, *, pretrain_vision: bool = False) -> mlc.ConfigDict:
    """The demo's own config section (`c.data.demo`) and the prepare hook."""
    c.prepare = PREPARE
    c.data.demo = mlc.ConfigDict()
    c.data.demo.n_train = 4096          # preference prompts (4 candidates each)
    c.data.demo.n_eval = 256
    c.data.demo.seed = 0
    c.data.demo.pretrain_vision = pretrain_vision   # random init: pretrain the tower first
    c.data.demo.vision_pretrain_steps = 300
    return c


def apply_sft(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The tiny model learns the demo task: LM and projector fully trained from random
    weights on top of a pretrained, frozen vision tower (LLaVA-1.5 freezes CLIP too).

    Many small steps: what the tiny LM is slow to learn is grounding (attending from the
    answer to the image cell of the object the question names), and updates, not examples,
    set its pace (the measurements behind these settings: docs/RESULTS.md, "The demo SFT
    recipe")."""
    add_settings(c, pretrain_vision=True)
    c.lora.enabled = False
    c.optim.lr = 2e-3
    c.optim.projector_lr = 2e-3
    c.optim.train_vision = False
    c.optim.warmup_ratio = 0.05
    c.data.seq_len = 112               # 9 image tokens + system prompt + question + answer
    c.data.train_split = "sft_train"
    c.data.eval_split = "sft_eval"
    c.train.global_batch_size = 8
    c.train.num_epochs = 0
    c.train.max_steps = 4800
    c.train.log_every = 20
    c.train.eval_every = 400
    c.train.checkpoint_every = 800
    return c


def use_sft(c: mlc.ConfigDict, sft=None) -> mlc.ConfigDict:
    """Start `c` from the demo SFT model, trained first by `c.demo_sft` (a whole SFT config
    made by `sft`, default `apply_sft`: `--config.demo_sft.train.max_steps=1200` changes
    it)."""
    from mmalign_jax.train import defaults
    add_settings(c)
    c.demo_sft = (sft or apply_sft)(defaults.base_config("sft"))
    return c


def apply_pairs(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """A pairwise method (DPO, SimPO) on the demo: from the demo SFT model (trained first in
    `<workdir>/sft`, as the study starts from LLaVA-1.5), LoRA + projector on the scored
    candidates' pairs; the method's own settings are the caller's."""
    use_sft(c)   # --config.demo_sft.* changes that SFT run
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
    c.optim.lr = 2e-3
    c.optim.projector_lr = 2e-3
    c.optim.warmup_ratio = 0.05
    c.data.prompt_len = 64         # 9 image tokens + system prompt + question (≤ 56)
    c.data.response_len = 64
    c.train.global_batch_size = 16
    c.train.num_epochs = 0
    c.train.max_steps = 300
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.checkpoint_every = 100
    return c


# -------------------------------------------------------------------- Qwen2.5-VL demo
QWEN_PRESET = "qwen2.5-vl-demo"


def _qwen(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The demo task for the tiny Qwen2.5-VL (`qwen2.5-vl-demo`): images of mixed sizes and
    aspect ratios (56–224 px a side: 4–64 image tokens), the demo BPE with Qwen's ChatML
    and vision tokens, the family's template (`qwen2_vl`); batches grouped by size and
    padded to a few patch and length buckets — few, because on CPU each shape's compile
    costs more than dozens of steps (docs/PERFORMANCE.md, "Qwen2.5-VL: dynamic
    resolution", has the padding these settings leave)."""
    c.workdir = f"workdir/{c.method}-qwen-demo"
    c.model.preset = QWEN_PRESET
    c.data.demo.n_train = 1024
    c.data.demo.n_eval = 128
    c.data.demo.tokenizer = "qwen"
    c.data.demo.image_sizes = (56, 224)
    c.data.demo.pretrain_vision = False     # the tower learns from random weights in SFT
    c.data.group_by_size = 8
    c.data.image_buckets = (64, 256)
    return c


def apply_qwen_sft(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """SFT of the demo Qwen2.5-VL from random weights: everything trained, the vision tower
    included (there is no pretrained tower to start from)."""
    add_settings(c)
    _qwen(c)
    c.lora.enabled = False
    c.optim.lr = 2e-3
    c.optim.projector_lr = 2e-3
    c.optim.train_vision = True
    c.optim.warmup_ratio = 0.05
    c.data.seq_len = 160               # system prompt + ≤ 64 image tokens + question + answer
    c.data.seq_buckets = (96, 160)
    c.data.train_split = "sft_train"
    c.data.eval_split = "sft_eval"
    c.train.global_batch_size = 8
    c.train.num_epochs = 0
    c.train.max_steps = 300
    c.train.log_every = 20
    c.train.eval_every = 150
    c.train.checkpoint_every = 150
    return c


def apply_qwen_pairs(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """A pairwise method on the demo with the tiny Qwen2.5-VL: from its SFT model (trained
    first in `<workdir>/sft` by `apply_qwen_sft`), LoRA on the LM + the merger, vision
    frozen (so the online reference shares the tower's pass)."""
    use_sft(c, apply_qwen_sft)
    _qwen(c)
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
    c.optim.lr = 2e-3
    c.optim.projector_lr = 2e-3
    c.optim.warmup_ratio = 0.05
    c.data.prompt_len = 112        # system prompt + ≤ 64 image tokens + question
    c.data.prompt_buckets = (64, 112)
    c.data.response_len = 64
    c.train.global_batch_size = 16
    c.train.num_epochs = 0
    c.train.max_steps = 80
    c.train.log_every = 10
    c.train.eval_every = 40
    c.train.checkpoint_every = 40
    return c


# ------------------------------------------------------------------------------ stages

def write_data(out: str, n_train: int, n_eval: int, seed: int, progress: bool = True,
               splits=tuple(SPLITS), tokenizer_kind: str = "llava", **sizes) -> dict:
    """The demo task's files, TFDS splits (`<out>/tfds`) and tokenizer (`<out>/tokenizer`:
    `tokenizer_kind` 'llava' = the demo BPE as shipped, 'qwen' = with Qwen2.5-VL's ChatML
    and vision tokens, `tokenizer.load_qwen_tokenizer`). `sizes`: `generate.write_dataset`'s
    counts and image sizes."""
    from mmalign_jax.data import tfds_builder
    if tokenizer_kind not in TOKENIZERS:
        raise ValueError(f"demo tokenizer {tokenizer_kind!r}: use one of {sorted(TOKENIZERS)}")
    paths = generate.write_dataset(out, n_train, n_eval, seed, **sizes)
    tfds_builder.build({s: os.path.join(out, SPLITS[s]) for s in splits},
                       os.path.join(out, "images"), os.path.join(out, "tfds"), strict=True,
                       overwrite=True, progress=progress)
    tok_dir = os.path.join(out, "tokenizer")
    getattr(tokenizer, TOKENIZERS[tokenizer_kind])().save_pretrained(tok_dir)
    return {"dir": out, "data_dir": os.path.join(out, "tfds"), "tokenizer": tok_dir,
            "files": {k: os.path.relpath(v, out) for k, v in paths.items()}}


def vision_tower(c: mlc.ConfigDict, records: str) -> str:
    """Pretrain the demo vision tower for run `c` (once; cached in `<workdir>/vision_pretrain`)
    on the demo's SFT `records`; returns the file `model.vision_init` takes."""
    from mmalign_jax import loading
    cfg = loading.model_config(c).replace(lora=None)
    out = os.path.join(c.workdir, "vision_pretrain")
    vision_pretrain.pretrained_vision_tower(cfg, records, out,
                                            steps=c.data.demo.vision_pretrain_steps, seed=c.seed)
    return os.path.join(out, vision_pretrain.PARAMS_FILE)


def use_data(c: mlc.ConfigDict, data: dict) -> None:
    """Point run `c` at the demo data stage's result; no second preparation."""
    c.prepare = ""
    c.data.source = "tfds"
    c.data.data_dir = data["data_dir"]
    c.data.tokenizer = data["tokenizer"]


def sft_stage_config(c: mlc.ConfigDict, data: dict) -> mlc.ConfigDict:
    """The SFT run a demo DPO / RS / SteerLM run trains first, in `<workdir>/sft`."""
    s = copy.deepcopy(c.demo_sft)
    s.workdir = os.path.join(c.workdir, "sft")
    s.seed = c.seed
    s.mesh = c.mesh
    s.train.progress = c.train.progress
    use_data(s, data)
    return s


def prepare(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Make what demo run `c` starts from (see the module doc); returns the config to train."""
    from mmalign_jax.stages import Stages
    c = copy.deepcopy(c)
    d = c.data.demo
    stages = Stages(c.workdir)
    out = os.path.join(c.workdir, "data")
    if jax.process_index() == 0:
        sizes = {"image_sizes": tuple(d.image_sizes)} if d.get("image_sizes") else {}
        stages.run("data", {"demo": d.to_dict(), "seed": c.seed},
                   lambda: write_data(out, d.n_train, d.n_eval, d.seed, progress=c.train.progress,
                                      tokenizer_kind=d.get("tokenizer", "llava"), **sizes))
    _sync("demo data")
    data = {"data_dir": os.path.join(out, "tfds"), "tokenizer": os.path.join(out, "tokenizer")}
    records = os.path.join(out, SPLITS["sft_train"])
    if "demo_sft" in c:
        s = sft_stage_config(c, data)
        if s.data.demo.pretrain_vision:
            s.model.vision_init = os.path.join(s.workdir, "vision_pretrain",
                                               vision_pretrain.PARAMS_FILE)
        log.info("demo: training (or reusing) the SFT model in %s first", s.workdir)
        stages.run("sft", {"config": s.to_dict()}, lambda: _train_sft(s, records),
                   outputs=[s.workdir], after=["data"])
        c.model.init_from = s.workdir
    use_data(c, data)
    if d.pretrain_vision and not c.model.init_from:
        c.model.vision_init = vision_tower(c, records)
    return c


def _train_sft(s: mlc.ConfigDict, records: str) -> dict:
    from mmalign_jax.train import loop
    if s.data.demo.pretrain_vision:
        vision_tower(s, records)
    summary = loop.train(s)
    return {"workdir": s.workdir, **{k: v for k, v in summary.items()
                                     if isinstance(v, (int, float)) and k != "memory"}}


def _sync(what: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(what)
