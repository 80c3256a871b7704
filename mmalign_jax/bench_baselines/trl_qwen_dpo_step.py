"""TRL `DPOTrainer` on the Qwen2.5-VL workload `qwen-small` (baseline for
`python -m mmalign_jax.bench --preset qwen-small`).

    pip install -r requirements-bench.txt --no-deps      # see that file for the exact commands
    python -m mmalign_jax.bench_baselines.trl_qwen_dpo_step --preset qwen-small --steps 5 --warmup 2

Prints ONE JSON line on stdout (logs go to stderr), as trl_dpo_step.py (the LLaVA
workloads) does, and the same `--serve` protocol: after the warm-up steps {"event": "ready"},
then each timed step waits (in `on_step_begin`, before the clock starts) for one stdin line
and prints {"event": "step", "s": seconds}.

Set-up (no network, nothing downloaded):
* the model: `Qwen2_5_VLForConditionalGeneration.from_pretrained(--model-dir)`, float32: the
  Hugging Face folder `python -m mmalign_jax.bench` writes from OUR random init of the preset
  (`bench.export_hf_checkpoint`: `presets.to_hf_config` + `hf.params_to_hf_state_dict`),
  so both sides start from the same weights. Without `--model-dir` this script has the bench
  write one first (`python -m mmalign_jax.bench --export-hf DIR`, a separate JAX process
  that exits before anything here is timed). TRL builds its online reference from the same
  path (`ref_model=None`, full fine-tuning: a second copy). The ViT blocks and patch embedding
  frozen, the merger (our "projector") and the LM trained — what our side trains; AdamW
  (TRL's default optimizer), grad clip 1.0.
* the processor: `Qwen2_5_VLProcessor` (without the video processor: transformers' needs
  torchvision) = `Qwen2VLImageProcessorPil` with the preset's image settings (min/max
  pixels, mean/std) + a word-level `PreTrainedTokenizerFast`
  whose vocabulary is exactly the model's: `w<i>` words and the Qwen special tokens
  (`<|image_pad|>`, `<|vision_start|>`, `<|vision_end|>`, `<|video_pad|>`,
  `<|endoftext|>` = pad, `<|im_end|>` = eos) at the preset's ids.
* the data: `qwen_data.make_pairs` — the very token ids and images our side trains on — as a
  `datasets.Dataset` of (images, prompt, chosen, rejected) strings, non-conversational; TRL's
  `DataCollatorForVisionPreference` tokenizes them and runs the image processor on the fly.
  Before training the collator's batch is checked to be ours: input ids
  `[prompt + chosen; prompt + rejected]` equal to the workload's ids exactly, pixel values
  equal to our processor's within 1e-5, grids (1, 16, 16).
* `DPOConfig` as in trl_dpo_step.py: per_device_train_batch_size = pairs, beta 0.1, sigmoid
  loss, fp32, `train_sampling_strategy="sequential"` (each step's batch = the pairs, in order), `gradient_checkpointing=False` unless `--gradient-checkpointing`, `use_cpu`.
* timing: a `TrainerCallback` from `on_step_begin` to `on_step_end` — forward (policy +
  reference), backward, clip and optimizer step; the collator runs before `on_step_begin`.
* `initial_logps_*_mean`: the policy's summed response log-probs on the batch before
  training (a `no_grad` forward outside the timing), to compare with ours' first step.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

from mmalign_jax.bench_baselines import qwen_data
from mmalign_jax.bench_baselines import torch_dpo_step as lean   # device helpers

# The tokens a Qwen tokenizer spells these ids with (names only; the ids are the preset's).
def special_tokens(cfg) -> dict:
    t = cfg.text
    out = {0: "<unk>"}
    out.update({cfg.image_token_id: "<|image_pad|>", cfg.video_token_id: "<|video_pad|>",
                cfg.vision_start_token_id: "<|vision_start|>",
                cfg.vision_end_token_id: "<|vision_end|>", t.eos_token_id: "<|im_end|>"})
    out[t.pad_token_id if t.pad_token_id is not None else t.bos_token_id] = "<|endoftext|>"
    return out


def qwen_presets() -> list[str]:
    from mmalign_jax.models.qwen2_5_vl import presets
    return [p for p in presets.PRESET_BUILDERS if p not in presets.PRETRAINED]


def get_config(preset: str):
    from mmalign_jax.models.qwen2_5_vl import presets
    return presets.PRESET_BUILDERS[preset]()


def build_tokenizer(cfg):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    special = special_tokens(cfg)
    vocab = {special.get(i, f"w{i}"): i for i in range(cfg.text.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(special.values()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for i, name in special.items():
        assert fast.convert_tokens_to_ids(name) == i, (name, i)
    return fast


def image_only_processor_class():
    """`Qwen2_5_VLProcessor` without its video processor: transformers' video processors
    need torchvision, which the CPU set-up does not have, and `ProcessorMixin` checks the
    class of every sub-processor named in `__init__`, a missing one included. Images and
    text are processed by Qwen2_5_VLProcessor's own code."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen25VLProcessor


def build_processor(cfg):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    v, im = cfg.vision, cfg.image
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=im.min_pixels, max_pixels=im.max_pixels, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
        image_mean=list(im.image_mean), image_std=list(im.image_std))
    return image_only_processor_class()(image_processor=image_processor,
                                        tokenizer=build_tokenizer(cfg))


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


def build_dataset(cfg, data: dict, copies: int):
    """`copies` × the workload's pairs as (images, prompt, chosen, rejected) rows."""
    from datasets import Dataset
    from PIL import Image
    head = "<|vision_start|><|image_pad|><|vision_end|> "
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for _ in range(copies):
        for i in range(len(data["images"])):
            rows["images"].append([Image.fromarray(data["images"][i])])
            rows["prompt"].append(head + words(data["prompt_words"][i]))
            rows["chosen"].append(words(data["chosen_ids"][i]))
            rows["rejected"].append(words(data["rejected_ids"][i]))
    return Dataset.from_dict(rows)


def check_batch(cfg, batch, data: dict) -> None:
    """The collator's batch is the workload: the same ids, the same image patches."""
    import numpy as np
    from PIL import Image
    from mmalign_jax.models.qwen2_5_vl import processor as qproc
    want = np.concatenate([
        np.concatenate([data["prompt_ids"], data["chosen_ids"]], axis=1),
        np.concatenate([data["prompt_ids"], data["rejected_ids"]], axis=1)])
    got = batch["input_ids"].numpy()
    if got.shape != want.shape or not (got == want).all():
        raise RuntimeError(f"TRL batch input_ids {got.shape} differ from the workload's {want.shape}")
    if not bool(batch["attention_mask"].all()):
        raise RuntimeError("TRL batch has padding; the workload has none")
    pcfg = qproc.ProcessorConfig(
        patch_size=cfg.vision.patch_size, temporal_patch_size=cfg.vision.temporal_patch_size,
        merge_size=cfg.vision.spatial_merge_size, min_pixels=cfg.image.min_pixels,
        max_pixels=cfg.image.max_pixels, image_mean=tuple(cfg.image.image_mean),
        image_std=tuple(cfg.image.image_std))
    ours = [qproc.preprocess(Image.fromarray(im), pcfg) for im in data["images"]]
    pix = np.concatenate([p for p, _ in ours] * 2)          # chosen rows' images, rejected rows'
    grid = np.stack([g for _, g in ours] * 2)
    if batch["pixel_values"].shape != pix.shape or not np.allclose(
            batch["pixel_values"].numpy(), pix, atol=1e-5):
        raise RuntimeError("TRL batch pixel_values differ from our processor's")
    if not (batch["image_grid_thw"].numpy() == grid).all():
        raise RuntimeError("TRL batch image_grid_thw differ from our processor's")


def export_checkpoint(preset: str, out_dir: str) -> None:
    """Have the bench (JAX, its own process) write our random init as a HF folder."""
    cmd = [sys.executable, "-m", "mmalign_jax.bench", "--export-hf", out_dir, "--preset", preset]
    print(f"[trl-qwen] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def response_logps(model, batch, prompt_len: int):
    """Summed log-probs of each row's response tokens (rows: chosen…, rejected…)."""
    import torch
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in keys if k in batch}, use_cache=False).logits
    ids = batch["input_ids"]
    lp = torch.log_softmax(logits[:, prompt_len - 1:-1].float(), dim=-1)
    return lp.gather(-1, ids[:, prompt_len:, None])[..., 0].sum(-1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen-small", choices=qwen_presets())
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4, help="per_device_train_batch_size")
    ap.add_argument("--prompt-text", type=int, default=64,
                    help="text tokens per prompt, <|vision_start|>/<|vision_end|> included "
                         "(+ image tokens)")
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
    ap.add_argument("--model-dir", default="",
                    help="Hugging Face folder of the model (bench --export-hf); '' = write one")
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
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    logging.getLogger("transformers").setLevel(logging.ERROR)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = lean.setup_device(args)
    total = args.warmup + args.steps
    cfg = get_config(args.preset)

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
            lean.sync(dev)
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)
            print(f"[trl-qwen] step {len(self.times) - 1} {self.times[-1]:.3f}s", file=sys.stderr,
                  flush=True)
            if args.serve and len(self.times) > args.warmup:
                print(json.dumps({"event": "step", "s": self.times[-1], "cpu_s": self.cpu[-1]}),
                      flush=True)

    with tempfile.TemporaryDirectory(prefix="trl_qwen_dpo_bench_") as tmp:
        model_dir = args.model_dir
        if not model_dir:
            model_dir = os.path.join(tmp, "model")
            export_checkpoint(args.preset, model_dir)
        processor = build_processor(cfg)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        visual = model.model.visual
        visual.requires_grad_(False)             # the ViT frozen …
        visual.merger.requires_grad_(True)       # … but the merger (our projector) trained
        data = qwen_data.make_pairs(cfg, args.pairs, args.prompt_text, args.response_len)
        dataset = build_dataset(cfg, data, total)

        cfg_trl = DPOConfig(
            output_dir=os.path.join(tmp, "out"), per_device_train_batch_size=args.pairs,
            gradient_accumulation_steps=1, max_steps=total, learning_rate=args.lr,
            weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"],
            max_length=None, gradient_checkpointing=args.gradient_checkpointing,
            bf16=False, fp16=False, use_cpu=dev.type == "cpu",
            tf32=args.tf32 if dev.type == "cuda" else None, logging_steps=10**6, save_strategy="no",
            report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
            disable_tqdm=True, seed=0, train_sampling_strategy="sequential")
        timer = StepTimer()
        trainer = DPOTrainer(model=model, ref_model=None, args=cfg_trl, train_dataset=dataset,
                             processing_class=processor, callbacks=[timer])
        # The collator's batch must be the workload (same ids, same patches). The sampler is
        # sequential and the dataset `total` copies of the pairs in order, so every step's
        # batch is this one, as every step of ours trains on the same batch.
        batch = trainer.data_collator([dataset[i] for i in range(args.pairs)])
        check_batch(cfg, batch, data)
        prompt_len = data["prompt_ids"].shape[1]
        logps = response_logps(trainer.model, {k: v.to(dev) for k, v in batch.items()}, prompt_len)
        chosen_lp, rejected_lp = logps.chunk(2)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        ref_is_copy = trainer.ref_model is not None and trainer.ref_model is not trainer.model
        trainer.train()

    times = timer.times[args.warmup:]
    med = statistics.median(times)
    B, P, R = args.pairs, prompt_len, args.response_len
    tokens = B * (P + 2 * R)
    out = {
        "name": "trl", "impl": f"TRL {trl.__version__} DPOTrainer",
        "preset": args.preset, "pairs": B, "prompt_len": P, "response_len": R,
        "s_per_step_median": med, "step_seconds": times, "pairs_per_s": B / med,
        "cpu_s_per_step_median": statistics.median(timer.cpu[args.warmup:]),
        "cpu_seconds": timer.cpu[args.warmup:],
        "tokens_per_step": tokens, "tokens_per_s": tokens / med,
        "trainable_params": trainable, "reference": "online copy" if ref_is_copy else "none?",
        "initial_logps_chosen_mean": float(chosen_lp.mean()),
        "initial_logps_rejected_mean": float(rejected_lp.mean()),
        "gradient_checkpointing": args.gradient_checkpointing, "threads": threads,
        "interleaved": args.serve, "device": lean.describe_device(dev), "tf32": args.tf32,
        "trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
