"""TRL `DPOTrainer` on the same LLaVA workload (baseline for `python -m mmalign_jax.bench`).

    pip install -r requirements-bench.txt --no-deps      # see that file for the exact commands
    python -m mmalign_jax.bench_baselines.trl_dpo_step --preset bench-small --steps 5 --warmup 2

Prints ONE JSON line on stdout (logs go to stderr):
  {"name": "trl", "s_per_step_median": ..., "step_seconds": [...], "pairs_per_s": ..., ...}
`--serve`: as in torch_dpo_step.py — after the warm-up steps, {"event": "ready"}, then each
timed step waits (in `on_step_begin`, before the clock starts) for one stdin line and prints
{"event": "step", "s": seconds}; `mmalign_jax.bench` uses it to interleave implementations.

Set-up (no network, nothing downloaded):
* the model: `LlavaForConditionalGeneration`, random init, the shapes of the mmalign_jax
  preset (built by `torch_dpo_step.llava_config`), float32, saved to a temporary folder and
  loaded back so TRL can build its reference model from the same path (`ref_model=None`,
  full fine-tuning: TRL loads a second copy = the online reference). Vision tower frozen
  (`requires_grad_(False)`), AdamW on LM + projector (TRL's default optimizer), grad clip 1.0.
* the processor: `LlavaProcessor` = `CLIPImageProcessor` (PIL backend) at the model's image
  size + a word-level `PreTrainedTokenizerFast` whose vocabulary is exactly the model's
  (`w<i>` words, `<s>`/`</s>`/`<unk>`, `<pad>` and `<image>` at the model's ids), so every
  prompt is exactly `image tokens + prompt_text` tokens and every response exactly
  `response_len` tokens.
* the data: a `datasets.Dataset` of (image, prompt, chosen, rejected), non-conversational;
  TRL's `DataCollatorForVisionPreference` tokenizes and preprocesses on the fly.
* `DPOConfig`: per_device_train_batch_size = pairs, max_steps = warmup + steps, beta 0.1,
  sigmoid loss, fp32 (`bf16=False`), `gradient_checkpointing=False` (TRL's default is True;
  the JAX side runs without remat, so both sides keep activations), `use_cpu=True` unless
  `--device cuda` (then `tf32` as `--tf32` says).
* timing: a `TrainerCallback` takes the wall clock from `on_step_begin` to `on_step_end`:
  the forward (policy + reference), backward, clip and optimizer step. The Trainer fetches
  (and collates, i.e. tokenizes + preprocesses images) the batch *before* `on_step_begin`,
  so data preparation is outside the timed region, as on the JAX side.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

from mmalign_jax.bench_baselines import torch_dpo_step as lean  # same shapes and presets


def build_tokenizer(preset: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    p = lean.PRESETS[preset]
    vocab_size, pad, image = p["text"]["vocab_size"], p["text"]["pad_token_id"], p["image_token_id"]
    special = {0: "<unk>", 1: "<s>", 2: "</s>", pad: "<pad>", image: "<image>"}
    vocab = {special.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(special.values()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    assert fast.convert_tokens_to_ids("<image>") == image and fast.pad_token_id == pad
    return fast


def build_processor(preset: str):
    from transformers import LlavaProcessor
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProc
    except ImportError:  # older transformers: the PIL implementation is CLIPImageProcessor itself
        from transformers import CLIPImageProcessor as ImageProc
    v = lean.PRESETS[preset]["vision"]
    s = v["image_size"]
    image_processor = ImageProc(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    return LlavaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(preset),
                          patch_size=v["patch_size"], vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")


def build_dataset(preset: str, n: int, prompt_text: int, response_len: int, seed: int = 0):
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    rng = np.random.default_rng(seed)
    lo, hi = lean.ordinary_token_range(preset)
    s = lean.PRESETS[preset]["vision"]["image_size"]

    def words(k):
        return " ".join(f"w{i}" for i in rng.integers(lo, hi, k))
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["images"].append([Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))])
        rows["prompt"].append("<image> " + words(prompt_text))
        rows["chosen"].append(words(response_len))
        rows["rejected"].append(words(response_len))
    return Dataset.from_dict(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="bench-small", choices=sorted(lean.PRESETS))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4, help="per_device_train_batch_size")
    ap.add_argument("--prompt-text", type=int, default=64, help="text tokens per prompt (+ image tokens)")
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
    ap.add_argument("--serve", action="store_true",
                    help="after warm-up, run one timed step per stdin line (interleaving)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="TRL's own default; off by default here (the JAX side does not remat)")
    lean.add_device_args(ap)
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    import torch
    import transformers
    import trl
    from transformers import LlavaForConditionalGeneration, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    logging.getLogger("transformers").setLevel(logging.ERROR)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = lean.setup_device(args)
    total = args.warmup + args.steps

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.t0, self.c0 = [], [], None, None

        def on_step_begin(self, a, state, control, **kw):
            if args.serve and len(self.times) >= args.warmup:
                if len(self.times) == args.warmup:
                    print(json.dumps({"event": "ready"}), flush=True)
                sys.stdin.readline()
            lean.sync(dev)
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            lean.sync(dev)   # CUDA runs asynchronously: the step ends when its kernels do
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)
            print(f"[trl] step {len(self.times) - 1} {self.times[-1]:.3f}s", file=sys.stderr, flush=True)
            if args.serve and len(self.times) > args.warmup:
                print(json.dumps({"event": "step", "s": self.times[-1], "cpu_s": self.cpu[-1]}),
                      flush=True)

    with tempfile.TemporaryDirectory(prefix="trl_dpo_bench_") as tmp:
        model_dir = os.path.join(tmp, "model")
        processor = build_processor(args.preset)
        config = lean.llava_config(args.preset)
        LlavaForConditionalGeneration(config).float().save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        model.model.vision_tower.requires_grad_(False)
        dataset = build_dataset(args.preset, total * args.pairs, args.prompt_text, args.response_len)

        cfg = DPOConfig(
            output_dir=os.path.join(tmp, "out"), per_device_train_batch_size=args.pairs,
            gradient_accumulation_steps=1, max_steps=total, learning_rate=args.lr,
            weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"],
            max_length=None, gradient_checkpointing=args.gradient_checkpointing,
            bf16=False, fp16=False, use_cpu=dev.type == "cpu",
            tf32=args.tf32 if dev.type == "cuda" else None, logging_steps=10**6, save_strategy="no",
            report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
            disable_tqdm=True, seed=0)
        timer = StepTimer()
        trainer = DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=dataset,
                             processing_class=processor, callbacks=[timer])
        # Check the batch is the workload we claim: [2B, P + R] with P = image + text tokens.
        batch = trainer.data_collator([dataset[i] for i in range(args.pairs)])
        n_img = lean.num_image_tokens(args.preset)
        want = (2 * args.pairs, n_img + args.prompt_text + args.response_len)
        if tuple(batch["input_ids"].shape) != want:
            raise RuntimeError(f"TRL batch input_ids {tuple(batch['input_ids'].shape)} != {want}")
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        ref_is_copy = trainer.ref_model is not None and trainer.ref_model is not trainer.model
        trainer.train()

    times = timer.times[args.warmup:]
    med = statistics.median(times)
    B, P, R = args.pairs, n_img + args.prompt_text, args.response_len
    tokens = B * (P + 2 * R)
    out = {
        "name": "trl", "impl": f"TRL {trl.__version__} DPOTrainer",
        "preset": args.preset, "pairs": B, "prompt_len": P, "response_len": R,
        "s_per_step_median": med, "step_seconds": times, "pairs_per_s": B / med,
        "cpu_s_per_step_median": statistics.median(timer.cpu[args.warmup:]),
        "cpu_seconds": timer.cpu[args.warmup:],
        "tokens_per_step": tokens, "tokens_per_s": tokens / med,
        "trainable_params": trainable, "reference": "online copy" if ref_is_copy else "none?",
        "gradient_checkpointing": args.gradient_checkpointing, "threads": threads,
        "interleaved": args.serve, "device": lean.describe_device(dev), "tf32": args.tf32,
        "trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
