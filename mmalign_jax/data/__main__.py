"""Data command line.

    python -m mmalign_jax.data build --records X.jsonl --image-root DIR --out DATA_DIR \\
        [--split train] [--strict] [--reject-file F] [--overwrite] [--name mmalign_records]
    python -m mmalign_jax.data demo --out DIR --n-train N --n-eval M --seed S [--overwrite]

``build`` validates the records (``records.load_records``) and writes them as a split of the
TFDS dataset in DATA_DIR (see ``tfds_builder``); run it once per split (train, eval, ...).
``demo`` writes the synthetic demo task (images + ``train.jsonl``/``eval.jsonl``) to DIR and
builds every records file it wrote (train, eval, train_text, sft_train, ...) as the split of
the same name into ``DIR/tfds``. Exit status 1 on any error (in ``--strict`` mode the
message names the first bad record: file, line, id, field).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _build(args) -> int:
    from . import tfds_builder
    summary = tfds_builder.build(args.records, args.image_root, args.out, split=args.split,
                                 strict=args.strict, reject_path=args.reject_file,
                                 name=args.name, overwrite=args.overwrite, fmt=args.format)
    print(summary)
    return 0


def _demo_files(out: str, written) -> tuple[dict[str, str], str]:
    """(split → records path, image root) from ``write_dataset``'s ``{name: path}`` (every
    ``*.jsonl`` becomes a split of the same name: train, eval, train_text, sft_train, ...)."""
    written = dict(written or {})
    root = os.fspath(written.pop("image_root", os.path.join(out, "images")))
    paths = {k: os.fspath(v) for k, v in written.items()
             if isinstance(v, (str, os.PathLike)) and os.fspath(v).endswith(".jsonl")}
    return paths, root


def _demo(args) -> int:
    from . import tfds_builder
    from ..demo import generate
    written = generate.write_dataset(args.out, args.n_train, args.n_eval, args.seed)
    paths, root = _demo_files(args.out, written)
    if not paths:
        print(f"error: demo.generate.write_dataset wrote no train.jsonl/eval.jsonl in "
              f"{args.out}", file=sys.stderr)
        return 1
    data_dir = os.path.join(args.out, "tfds")
    summary = tfds_builder.build(paths, root, data_dir, strict=True, overwrite=args.overwrite)
    print(summary)
    print(f"data dir: {data_dir}  (open with tfds_builder.open_split({data_dir!r}, 'train'))")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmalign_jax.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="records JSONL + images → TFDS split (ArrayRecord)")
    b.add_argument("--records", required=True, help="records file (JSONL or JSON array)")
    b.add_argument("--image-root", default=None,
                   help="folder image paths are relative to (default: the records' folder)")
    b.add_argument("--out", required=True, help="TFDS data dir")
    b.add_argument("--split", default="train")
    b.add_argument("--strict", action="store_true",
                   help="stop at the first bad record (default: skip and list in reject file)")
    b.add_argument("--reject-file", default=None,
                   help="where skipped records go (default: <records>.rejects.jsonl)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing split")
    b.add_argument("--name", default="mmalign_records", help="TFDS dataset name")
    b.add_argument("--format", default="auto", choices=("auto", "ours", "llava", "dpo"))
    d = sub.add_parser("demo", help="write the synthetic demo task and build its TFDS splits")
    d.add_argument("--out", required=True)
    d.add_argument("--n-train", type=int, default=512)
    d.add_argument("--n-eval", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # absl: TFDS's own chatter; tfds_builder: its summary, which we print instead.
    for noisy in ("absl", "mmalign_jax.data.tfds_builder"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .records import RecordError
    try:
        return _build(args) if args.cmd == "build" else _demo(args)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    sys.exit(main())
