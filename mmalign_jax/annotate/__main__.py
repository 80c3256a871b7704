"""Command line for annotation.

    python -m mmalign_jax.annotate --records IN.jsonl --image-root DIR --out OUT.jsonl \\
        [--model gemini-2.5-flash] [--base-url URL] [--concurrency 8] [--annotator gemini|demo]
    python -m mmalign_jax.annotate agreement A.jsonl B.jsonl [--rule paper] [--margin 2]
    python -m mmalign_jax.annotate apply --records IN.jsonl --annotations OUT.jsonl \\
        --out SCORED.jsonl

Exit status of an annotation run: 0 when every candidate of every record is scored, 1 when
something is missing (failed prompts, unusable records; everything else was written —
rerun the same command to retry), 2 for a configuration error (no API key, unreadable
records file, bad flag), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..data.records import RecordError, load_records, write_records
from ..remote import RateLimiter, RemoteError, make_client
from .agreement import agreement, format_agreement
from .llm_judge import DEFAULT_MODEL, LLMAnnotator
from .results import AnnotationFileError, apply_annotations
from ..store import StoreError
from .run import JobLocked, annotate_records, output_paths, print_summary

PROG = "python -m mmalign_jax.annotate"


def _price(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("write --price IN,OUT in USD per 1M tokens, "
                                         "e.g. --price 0.30,2.50") from None
    return a, b


def annotate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Score every candidate response of every record on helpfulness, correctness, "
        "coherence, complexity and verbosity (0-4). Resumable: rerun the same command after "
        "a crash or failures and only what is missing is done. Subcommands: 'agreement A B' "
        "compares two annotation files; 'apply' merges annotations into records."))
    p.add_argument("--records", required=True, help="records JSONL (DESIGN.md schema)")
    p.add_argument("--image-root", required=True,
                   help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="annotation JSONL, one row per candidate "
                   "(appended to; also writes OUT.failures.jsonl, OUT.report.json)")
    p.add_argument("--annotator", choices=("gemini", "demo"), default="gemini",
                   help="gemini (a hosted model following our guide) or demo (the demo "
                        "task's ground-truth scorer, offline)")
    p.add_argument("--provider", choices=("gemini", "openai"), default="gemini",
                   help="API of the hosted model (openai: any OpenAI-compatible endpoint, "
                        "key from OPENAI_API_KEY)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--base-url", default=None,
                   help="API root, for a proxy or a local server (default: the provider's)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--rate-per-minute", type=float, default=300.0,
                   help="client-side limit on requests per minute, retries included "
                        "(default 300; 0 = none). Keep it under your quota")
    p.add_argument("--max-retries", type=int, default=6,
                   help="retries per request on 429/5xx/timeouts (default 6)")
    p.add_argument("--max-reasks", type=int, default=2,
                   help="extra asks after an unusable answer, before recording a failure "
                        "(default 2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    p.add_argument("--retry-base-delay", type=float, default=2.0,
                   help="backoff base in seconds (default 2)")
    p.add_argument("--retry-max-delay", type=float, default=60.0,
                   help="backoff cap in seconds (default 60)")
    p.add_argument("--max-output-tokens", type=int, default=8192)
    p.add_argument("--price", type=_price, default=None, metavar="IN,OUT",
                   help="USD per 1M input,output tokens for the cost estimate (default: the "
                        "table in mmalign_jax/remote/client.py)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unusable record instead of reporting it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log retries")
    return p


def agreement_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} agreement", description=(
        "Agreement between two annotation files: per-attribute Pearson/Spearman, pair-level "
        "agreement under a pair rule, correlation of score differences."))
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rule", default="paper", help="pair rule (data.pairs.RULES)")
    p.add_argument("--margin", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-a", default=None, help="annotator name to keep from A")
    p.add_argument("--model-b", default=None, help="annotator name to keep from B")
    p.add_argument("--json", default=None, help="also write the statistics to this file")
    return p


def apply_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} apply", description=(
        "Write records with responses[i].scores filled from an annotation file."))
    p.add_argument("--records", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model-filter", default=None, help="annotator name to use")
    p.add_argument("--guide-version", default=None)
    p.add_argument("--missing", choices=("error", "drop", "keep"), default="error")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def run_annotate(argv) -> int:
    args = annotate_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:   # ours only: the HTTP libraries log every request at INFO
        logging.getLogger("mmalign_jax").setLevel(logging.INFO)
    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    paths = output_paths(args.out)
    try:
        loaded = load_records(args.records, image_root=args.image_root, strict=args.strict,
                              reject_path=paths["rejects"])
    except (OSError, RecordError) as e:
        return _fail(f"cannot read records: {e}")
    try:
        if args.annotator == "demo":
            from mmalign_jax.demo.annotator import DemoAnnotator  # the demo task, on demand
            annotator = DemoAnnotator()
        else:
            client = make_client(args.provider, args.model, base_url=args.base_url,
                                 timeout=args.timeout)
            annotator = LLMAnnotator(
                client, image_root=args.image_root, max_reasks=args.max_reasks,
                max_retries=args.max_retries, base_delay=args.retry_base_delay,
                max_delay=args.retry_max_delay,
                rate_limiter=RateLimiter(args.rate_per_minute),
                max_output_tokens=args.max_output_tokens)
    except (RemoteError, ValueError) as e:
        return _fail(str(e))
    prices = {annotator.name: args.price} if args.price else None
    try:
        report = annotate_records(loaded.records, annotator, args.out,
                                  concurrency=args.concurrency, progress=not args.no_progress,
                                  rejected=loaded.rejected, prices=prices)
    except (StoreError, JobLocked) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is saved; rerun the same command to "
              "continue", file=sys.stderr, flush=True)
        return 130
    print_summary(report)
    print(f"report: {paths['report']}", file=sys.stderr, flush=True)
    return 0 if report.complete else 1


def run_agreement(argv) -> int:
    args = agreement_parser().parse_args(argv)
    try:
        result = agreement(args.a, args.b, rule=args.rule, margin=args.margin, seed=args.seed,
                           model_a=args.model_a, model_b=args.model_b)
    except (AnnotationFileError, ValueError) as e:
        return _fail(str(e))
    print(format_agreement(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


def run_apply(argv) -> int:
    args = apply_parser().parse_args(argv)
    try:
        records = load_records(args.records).records
        scored = apply_annotations(records, args.annotations, model=args.model_filter,
                                   guide_version=args.guide_version, missing=args.missing)
    except (OSError, RecordError, AnnotationFileError, ValueError) as e:
        return _fail(str(e))
    write_records(args.out, scored)
    print(f"wrote {len(scored)} records to {args.out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agreement":
        return run_agreement(argv[1:])
    if argv and argv[0] == "apply":
        return run_apply(argv[1:])
    return run_annotate(argv)


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    sys.exit(main())
