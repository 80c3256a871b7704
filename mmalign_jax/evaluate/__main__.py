"""`python -m mmalign_jax.evaluate --benchmark NAME --data DIR --model PATH --out DIR [...]`
and `python -m mmalign_jax.evaluate report RESULTS... --out DIR`
and `python -m mmalign_jax.evaluate compare BASELINE RUN... [--out DIR]` (`compare.py`).

A benchmark run writes `OUT/<benchmark>/` (`OUT/mt-bench+image/` with --irrelevant-image):
`answers.jsonl` (the model's answers, resumable), `judgments.jsonl` (the judge's replies,
resumable), `scores.jsonl` (per question), `result.json` (the scores; read by `report`).
Rerunning the same command redoes nothing that finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from mmalign_jax.evaluate import BENCHMARKS, JUDGED, runner

DEFAULT_MAX_NEW_TOKENS = {"mt-bench": 1024, "mm-vet": 1024, "llava-bench": 1024,
                          "pope": 128, "mmbench": 128}


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmalign_jax.evaluate",
        description="Run one benchmark on a model (`report` subcommand: build the table).")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--data", required=True, help="the benchmark's files (docs/EVALUATION.md)")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint folder or training workdir")
    p.add_argument("--out", required=True, help="results folder; this run writes OUT/<benchmark>/")
    p.add_argument("--name", default=None, help="the model's name in reports (default: folder name)")
    p.add_argument("--judge", choices=("gemini", "openai"), default=None,
                   help="judge provider (needed by mt-bench, mm-vet, llava-bench)")
    p.add_argument("--judge-model", default=None,
                   help="judge model (default: gpt-4 for openai, gemini-2.5-flash for gemini)")
    p.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint / Gemini API root")
    p.add_argument("--judge-concurrency", type=int, default=4)
    p.add_argument("--judge-rpm", type=float, default=0, help="requests per minute (0: no limit)")
    p.add_argument("--judge-retries", type=int, default=6, help="retries on 429/5xx/timeouts")
    p.add_argument("--judge-reasks", type=int, default=2, help="re-asks after an unparsable reply")
    p.add_argument("--judge-timeout", type=float, default=120.0)
    p.add_argument("--runs", type=int, default=1, help="judge runs averaged (mm-vet, llava-bench)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 1024 (mt-bench, mm-vet, llava-bench), 128 (pope, mmbench)")
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the model's)")
    p.add_argument("--template", default=None, help="conversation template (default vicuna_v1)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder overriding the model's")
    p.add_argument("--irrelevant-image", default=None,
                   help="mt-bench: an image file, or 'noise', put into the first turn (Table 7)")
    p.add_argument("--no-circular", action="store_true", help="mmbench: round 0 only")
    p.add_argument("--pope-images", default=None, help="pope: image folder (default DATA/images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmalign_jax.evaluate report",
                                description="Markdown/JSON/PNG table from result.json files.")
    p.add_argument("results", nargs="+", help="result.json files or folders holding them")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="show model OLD as NEW")
    return p


def report_main(argv) -> int:
    from mmalign_jax.evaluate import report

    a = _report_parser().parse_args(argv)
    names = dict(r.split("=", 1) for r in a.rename)
    table = report.collect(report.find_results(a.results), names=names, title=a.title)
    paths = report.write_report(table, a.out)
    print(report.render_markdown(table))
    print("wrote " + ", ".join(paths.values()))
    return 0


def compare_main(argv) -> int:
    from mmalign_jax.evaluate import compare
    from mmalign_jax.evaluate.common import BenchmarkDataError

    p = argparse.ArgumentParser(
        prog="python -m mmalign_jax.evaluate compare",
        description="Each later run against the first, question by question (paired "
                    "difference, 95 % interval, p) on every benchmark they share.")
    p.add_argument("runs", nargs="+", help="results folders; the first is the baseline")
    p.add_argument("--out", default=None, help="also write compare.md / compare.json here")
    a = p.parse_args(argv)
    try:
        rows = compare.compare(a.runs)
    except (compare.CompareError, BenchmarkDataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(compare.render_markdown(rows))
    if a.out:
        print("wrote " + ", ".join(compare.write(rows, a.out).values()))
    return 0


def run_main(argv) -> int:
    a = _run_parser().parse_args(argv)
    from mmalign_jax.evaluate import answers
    from mmalign_jax.evaluate import judge as judge_lib

    name = a.benchmark + ("+image" if a.benchmark == "mt-bench" and a.irrelevant_image else "")
    out_dir = os.path.join(a.out, name)
    judge = None
    if a.benchmark in JUDGED:
        if a.judge is None:
            print(f"error: {a.benchmark} is graded by an LLM judge: pass --judge gemini|openai "
                  "(and --judge-model / --judge-base-url as needed)", file=sys.stderr)
            return 2
        judge = judge_lib.make_judge(
            a.judge, a.judge_model, base_url=a.judge_base_url, timeout=a.judge_timeout,
            cache=os.path.join(out_dir, "judgments.jsonl"), concurrency=a.judge_concurrency,
            requests_per_minute=a.judge_rpm or None, max_retries=a.judge_retries,
            max_reasks=a.judge_reasks, progress=not a.no_progress)
    elif a.judge:
        print(f"note: {a.benchmark} needs no judge; --judge ignored", file=sys.stderr)
    model = answers.load_model(a.model, name=a.name, dtype=a.dtype, tokenizer=a.tokenizer,
                               template=a.template, batch_size=a.batch_size)
    sampling = answers.default_sampling(a.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[a.benchmark])
    kwargs = dict(judge=judge, sampling=sampling, batch_size=a.batch_size, limit=a.limit,
                  seed=a.seed, progress=not a.no_progress)
    if a.benchmark == "mt-bench":
        kwargs["irrelevant_image"] = a.irrelevant_image
    if a.benchmark in ("mm-vet", "llava-bench"):
        kwargs["runs"] = a.runs
    if a.benchmark == "mmbench":
        kwargs["circular"] = not a.no_circular
    if a.benchmark == "pope":
        kwargs["images"] = a.pope_images
    result = runner(a.benchmark)(model, a.data, out_dir, **kwargs)
    summary = {k: result.get(k) for k in ("benchmark", "model", "judge", "score", "score_name",
                                          "n_questions")}
    fails = (result.get("judge_failures") or {}).get("count", 0)
    print(json.dumps(summary, indent=1))
    if fails:
        print(f"WARNING: {fails} judgment(s) failed (unparsable after re-asks, or errors); "
              f"listed in {out_dir}/result.json under judge_failures", file=sys.stderr)
    if result.get("judge_usage"):
        print("judge usage: " + json.dumps(result["judge_usage"]))
    print(f"wrote {out_dir}/result.json")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmalign_jax").setLevel(logging.INFO)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    return run_main(argv)


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    sys.exit(main())
