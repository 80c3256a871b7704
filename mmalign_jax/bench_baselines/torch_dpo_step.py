"""The lean, hand-written PyTorch DPO step a user would otherwise write (baseline for
`python -m mmalign_jax.bench`).

    python -m mmalign_jax.bench_baselines.torch_dpo_step --preset bench-small --steps 5 --warmup 2

Prints ONE JSON line on stdout (everything else goes to stderr):
  {"name": "torch", "s_per_step_median": ..., "step_seconds": [...], "pairs_per_s": ..., ...}
With `--serve` (used by `mmalign_jax.bench` to interleave implementations step by step on a
shared machine) it runs the warm-up, prints {"event": "ready"}, then runs one timed step per
line read from stdin, printing {"event": "step", "s": seconds} after each, and the summary
line after the last.

What it does, the usual way:
* `transformers.LlavaForConditionalGeneration`, random init, with the same shapes as the
  mmalign_jax preset (CLIPVisionConfig + LlamaConfig), float32, `torch.set_num_threads(cores)`.
* Vision tower frozen (`requires_grad_(False)`), AdamW on LM + projector, grad-norm clip 1.0.
* Reference policy = a frozen deep copy of the initial model, run online under `no_grad`.
* Chosen and rejected concatenated into one `[2B, P+R]` batch (prompt repeated, image
  encoded for both halves), the base model run to hidden states and `lm_head` applied ONLY
  at the response positions; sigmoid DPO loss (beta 0.1) on summed log-probs.
* Synthetic fixed-length batch (prompt = image tokens + text, responses full length), built
  once: no data loading in the timing. Step time = wall clock around forward (policy + ref),
  backward, clip, optimizer step; the median over the steps after warm-up is reported.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time

# Shapes mirror mmalign_jax.models.presets (kept here so this module does not import JAX;
# tests/test_bench.py checks they still match).
PRESETS = {
    "bench-small": dict(
        vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                    num_attention_heads=6, image_size=224, patch_size=14),
        text=dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, rms_norm_eps=1e-5,
                  max_position_embeddings=4096, pad_token_id=31998, bos_token_id=1, eos_token_id=2),
        image_token_id=31999),
    "tiny": dict(
        vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                    num_attention_heads=4, image_size=48, patch_size=16),
        text=dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                  max_position_embeddings=512, pad_token_id=3, bos_token_id=1, eos_token_id=2),
        image_token_id=4),
    # llava-hf/llava-1.5-7b-hf: CLIP-L/336 + the 7B Vicuna-1.5 decoder
    "llava-1.5-7b": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=336, patch_size=14),
        text=dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                  max_position_embeddings=4096, pad_token_id=32001, bos_token_id=1, eos_token_id=2),
        image_token_id=32000),
}


def llava_config(preset: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    p = PRESETS[preset]
    vision = CLIPVisionConfig(**p["vision"], hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(**p["text"], hidden_act="silu", tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=p["image_token_id"],
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default",
                       image_seq_length=(p["vision"]["image_size"] // p["vision"]["patch_size"]) ** 2,
                       tie_word_embeddings=False)


def num_image_tokens(preset: str) -> int:
    v = PRESETS[preset]["vision"]
    return (v["image_size"] // v["patch_size"]) ** 2


def ordinary_token_range(preset: str) -> tuple[int, int]:
    """[lo, hi) of ids that are neither specials (< 5) nor pad / image (the top of bench-small's
    vocabulary, the bottom of tiny's, 32000/32001 below llava-1.5's 64 padding rows)."""
    p = PRESETS[preset]
    lo = 5
    above = [i for i in (p["image_token_id"], p["text"]["pad_token_id"]) if i >= lo]
    return lo, min(above, default=p["text"]["vocab_size"])


def synthetic_batch(preset: str, pairs: int, prompt_text: int, response_len: int, seed: int = 0):
    """[2B, P+R] ids/mask (chosen rows first), pixel values [2B, 3, S, S]; P = image + text."""
    import torch
    p = PRESETS[preset]
    g = torch.Generator().manual_seed(seed)
    n_img = num_image_tokens(preset)
    vocab, image_id = p["text"]["vocab_size"], p["image_token_id"]
    lo, hi = ordinary_token_range(preset)
    text = torch.randint(lo, hi, (pairs, prompt_text), generator=g)
    prompt = torch.cat([torch.full((pairs, n_img), image_id), text], dim=1)
    chosen = torch.randint(lo, hi, (pairs, response_len), generator=g)
    rejected = torch.randint(lo, hi, (pairs, response_len), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)
    mask = torch.ones_like(ids)
    s = p["vision"]["image_size"]
    pixels = torch.randn((pairs, 3, s, s), generator=g)
    pixels = torch.cat([pixels, pixels], 0)        # the image is encoded for both halves
    resp_mask = torch.ones((2 * pairs, response_len))
    return ids, mask, pixels, resp_mask, prompt.shape[1]


def add_device_args(ap) -> None:
    ap.add_argument("--device", default="cpu", help="cpu | cuda (mmalign_jax.bench passes cuda "
                    "when JAX runs on a GPU)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA "
                    "(PyTorch's default is full fp32; bench --precision default sets this)")


def setup_device(args):
    import torch
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    return torch.device(args.device)


def sync(dev) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def describe_device(dev) -> str:
    import torch
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="bench-small", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4, help="preference pairs per step")
    ap.add_argument("--prompt-text", type=int, default=64, help="text tokens per prompt (+ image tokens)")
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa | eager)")
    add_device_args(ap)
    ap.add_argument("--serve", action="store_true",
                    help="after warm-up, run one timed step per stdin line (interleaving)")
    ap.add_argument("--lora", type=int, default=0, metavar="RANK",
                    help="LoRA of this rank (peft, alpha 2·rank) on the LM's linear layers, "
                         "projector trained, reference = adapters off (no copy)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="bfloat16: frozen weights in bf16, trained ones fp32, bf16 autocast")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import LlavaForConditionalGeneration

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = setup_device(args)

    config = llava_config(args.preset)
    config._attn_implementation = args.attn
    t_build = time.perf_counter()
    with dev:   # built on the device: a 7B model's random init on the host takes minutes
        model = LlavaForConditionalGeneration(config).float().train()
    model.model.vision_tower.requires_grad_(False)
    bf16 = args.dtype == "bfloat16"
    if args.lora:
        from peft import LoraConfig, get_peft_model
        if bf16:   # frozen base in bf16; the projector (trained) and the adapters stay fp32
            model.to(torch.bfloat16)
            model.model.multi_modal_projector.float()
        peft_model = get_peft_model(model, LoraConfig(
            r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))
        model.model.multi_modal_projector.requires_grad_(True)   # peft froze all but adapters
        ref = None      # the reference is the same model with its adapters off
    else:
        if bf16:
            model.model.vision_tower.to(torch.bfloat16)
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        if bf16:
            ref.to(torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"[torch] model ready in {time.perf_counter() - t_build:.1f}s", file=sys.stderr, flush=True)
    autocast = ((lambda: torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False))
                if bf16 else contextlib.nullcontext)
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    ids, mask, pixels, resp_mask, P = (t.to(dev) if torch.is_tensor(t) else t for t in synthetic_batch(
        args.preset, args.pairs, args.prompt_text, args.response_len))
    R, B = args.response_len, args.pairs
    labels = ids[:, P:]

    def response_logps(m):
        hidden = m.model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                         use_cache=False).last_hidden_state              # [2B, P+R, D]
        logits = m.lm_head(hidden[:, P - 1:P + R - 1])                  # response positions only
        logp = torch.gather(F.log_softmax(logits.float(), -1), 2, labels[..., None])[..., 0]
        return (logp * resp_mask).sum(-1)

    def step():
        with autocast():
            logps = response_logps(model)
            with torch.no_grad():
                if ref is None:
                    with peft_model.disable_adapter():
                        ref_logps = response_logps(model)
                else:
                    ref_logps = response_logps(ref)
        pc, pr = logps[:B], logps[B:]
        rc, rr = ref_logps[:B], ref_logps[B:]
        loss = -F.logsigmoid(args.beta * ((pc - rc) - (pr - rr))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)           # the optimizer's kernels too, not only the loss, are in the step
        return float(loss)

    times, cpu, losses = [], [], []
    for i in range(args.warmup + args.steps):
        if args.serve and i >= args.warmup:
            if i == args.warmup:
                print(json.dumps({"event": "ready"}), flush=True)
            if not sys.stdin.readline():
                break
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        print(f"[torch] step {i} {dt:.3f}s loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
        if i >= args.warmup:
            times.append(dt)
            cpu.append(dc)
            if args.serve:
                print(json.dumps({"event": "step", "s": dt, "cpu_s": dc}), flush=True)
    med = statistics.median(times)
    tokens = B * (P + 2 * R)
    out = {
        "name": "torch", "impl": "hand-written PyTorch (transformers LlavaForConditionalGeneration)",
        "preset": args.preset, "pairs": B, "prompt_len": P, "response_len": R,
        "s_per_step_median": med, "step_seconds": times, "pairs_per_s": B / med,
        "cpu_s_per_step_median": statistics.median(cpu), "cpu_seconds": cpu,
        "tokens_per_step": tokens, "tokens_per_s": tokens / med, "losses": losses,
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "threads": threads, "attn_implementation": args.attn, "interleaved": args.serve,
        "device": describe_device(dev), "tf32": args.tf32, "lora_rank": args.lora,
        "dtype": args.dtype,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
