"""Checkpoint conversion CLI.

  python -m mmalign_jax.convert hf-to-orbax --hf /ckpt/llava-1.5-7b-hf --out /ckpt/llava-7b-jax
      writes OUT/params (orbax) + OUT/config.json (+ the tokenizer files found in --hf)
  python -m mmalign_jax.convert to-hf --hf-config-from /ckpt/llava-7b-jax \\
      --params /ckpt/llava-7b-jax/params [--lora RUN/checkpoints --lora-alpha 256] \\
      --out /export/llava-dpo [--tokenizer /ckpt/llava-1.5-7b-hf] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys


def _restore(path: str, what: str, key: str):
    """Restore an orbax tree and return what it holds under `key` ('params' or 'lora').

    `path` may be a plain orbax checkpoint (e.g. hf-to-orbax's OUT/params), a training
    run's `checkpoints/` folder (latest step), one step folder, or its `state` item; from a
    training state `{'trainable': {'params' | 'lora': ...}, ...}` the subtree is picked.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SystemExit(f"error: {what} checkpoint {path} does not exist")
    steps = [n for n in os.listdir(path) if n.isdigit()]
    if steps:  # a CheckpointManager folder: latest step
        path = os.path.join(path, max(steps, key=int))
    if os.path.isdir(os.path.join(path, "state")):  # a step with a 'state' item
        path = os.path.join(path, "state")
    tree = ocp.StandardCheckpointer().restore(path)
    for wrapper in ("trainable", key):
        if isinstance(tree, dict) and wrapper in tree and "language_model" not in tree:
            tree = tree[wrapper]
    if not isinstance(tree, dict) or not tree:
        raise SystemExit(f"error: {what} {path} holds no {key} tree")
    return tree


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _hf_to_orbax(args) -> None:
    import orbax.checkpoint as ocp

    from mmalign_jax.models.llava.hf import copy_tokenizer_files, load_hf_llava, _write_json
    from mmalign_jax.models.presets import to_hf_config

    cfg, params = load_hf_llava(args.hf, dtype=args.dtype)
    out = os.path.abspath(args.out)
    target = os.path.join(out, "params")
    if os.path.exists(target):
        raise SystemExit(f"error: {target} already exists; choose another --out or remove it")
    os.makedirs(out, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(target, params)
    ckpt.wait_until_finished()
    _write_json(os.path.join(out, "config.json"), to_hf_config(cfg))
    try:
        copy_tokenizer_files(args.hf, out)
    except ValueError:
        pass  # no tokenizer in the HF folder: nothing to carry along
    print(f"wrote {target} and {os.path.join(out, 'config.json')}")


def _to_hf(args) -> None:
    from flax import traverse_util

    from mmalign_jax.models.llava.hf import save_hf_llava
    from mmalign_jax.models.config import LoraConfig
    from mmalign_jax.models.presets import from_hf_config, get_preset

    cfg = get_preset(args.preset) if args.preset else from_hf_config(args.hf_config_from)
    params = {}
    for src in args.params:  # later ones override: frozen base first, then trained weights
        params = _deep_merge(params, _restore(src, "--params", "params"))
    lora = None
    if args.lora:
        lora = _restore(args.lora, "--lora", "lora")
        ranks = {x.shape[-1] for path, x in traverse_util.flatten_dict(lora).items()
                 if path[-1] == "a"}
        if len(ranks) != 1:
            raise SystemExit(f"error: cannot infer one LoRA rank from {args.lora} (found {ranks})")
        rank = ranks.pop()
        if args.lora_alpha is None:
            raise SystemExit("error: --lora needs --lora-alpha (the training config's "
                             "lora.alpha; the merge scale is alpha / rank)")
        cfg = cfg.replace(lora=LoraConfig(rank=rank, alpha=args.lora_alpha, dropout=0.0))
    files = save_hf_llava(cfg, params, args.out, lora=lora, tokenizer_dir=args.tokenizer,
                          dtype=args.dtype, max_shard_size=args.max_shard_size,
                          key_layout=args.key_layout)
    print(f"wrote {len(files)} files to {args.out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmalign_jax.convert",
                                description="Convert LLaVA checkpoints between Hugging Face "
                                            "(safetensors) and mmalign_jax (orbax).")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("hf-to-orbax", help="llava-hf folder -> orbax params + config.json")
    a.add_argument("--hf", required=True, help="llava-hf checkpoint folder")
    a.add_argument("--out", required=True, help="output folder (params/ and config.json)")
    a.add_argument("--dtype", default="float32", help="params dtype (float32, bfloat16)")
    a.set_defaults(func=_hf_to_orbax)

    b = sub.add_parser("to-hf", help="orbax params (+ LoRA) -> transformers-loadable folder")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-config-from", help="folder (or file) with the model's config.json")
    src.add_argument("--preset", help="model preset name (e.g. llava-1.5-7b)")
    b.add_argument("--params", required=True, action="append",
                   help="orbax checkpoint of the params; repeat to overlay trained weights "
                        "(e.g. a run's checkpoints/) on the frozen base")
    b.add_argument("--lora", help="orbax checkpoint of LoRA adapters to merge")
    b.add_argument("--lora-alpha", type=float, help="LoRA alpha (scale = alpha / rank)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--tokenizer", help="folder to copy tokenizer/processor files from")
    b.add_argument("--dtype", default=None, help="dtype on disk (default: the params' own)")
    b.add_argument("--max-shard-size", default="5GB")
    b.add_argument("--key-layout", default="transformers5", choices=("transformers5", "hub"))
    b.set_defaults(func=_to_hf)

    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    sys.exit(main())
