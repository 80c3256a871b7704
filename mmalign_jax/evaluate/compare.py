"""Did a method really move a benchmark? Its run against the starting model's run, question
by question (`paired`): the difference, its 95 % interval and a p-value.

    python -m mmalign_jax.evaluate compare runs/llava-1.5-13b runs/dpo runs/rs [--out DIR]

Each argument is a results folder of `python -m mmalign_jax.evaluate` (or one benchmark's
folder in it); the first is the baseline. Every benchmark both runs hold is compared on
what each question contributes to its score:

- POPE: accuracy (%) over every (split, question) — the published score is F1, which is not
  a per-question mean; accuracy moves with it and can be paired.
- MMBench: circular accuracy (%) per question (all its rounds right; accuracy when the run
  asked one round).
- MM-Vet: the judge's 0–1 score (mean over judge runs), shown ×100 as the total.
- LLaVA-Bench: the judge's score of the model's answer (1–10, mean over judge runs) — the
  published relative score divides by the judge's score of the reference answer, which is
  not a per-question mean.
- MT-Bench: the judge's score per (question, turn) (1–10).

A question the judge failed to score in either run is left out of that comparison (and
counted); runs over different questions (`--limit`, another data folder) are an error.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mmalign_jax.evaluate import paired, report
from mmalign_jax.evaluate.common import mean, read_jsonl

SCORES_FILE = "scores.jsonl"


class CompareError(ValueError):
    """Two runs that cannot be compared, with what to do."""


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the judge runs that returned a score (None when none did)."""
    return mean([x for x in xs if x is not None])


def _pope(rows) -> Dict[str, Optional[float]]:
    return {f"{r['split']}/{r['question_id']}": float(r["prediction"] == r["label"]) for r in rows}


def _mmbench(rows) -> Dict[str, Optional[float]]:
    groups: Dict[str, List[bool]] = {}
    for r in rows:
        groups.setdefault(str(r["group"]), []).append(bool(r["correct"]))
    return {g: float(all(c)) for g, c in groups.items()}


def _mmvet(rows) -> Dict[str, Optional[float]]:
    return {str(r["id"]): _mean(r["scores"]) for r in rows}


def _llava_bench(rows) -> Dict[str, Optional[float]]:
    return {str(r["question_id"]): _mean([s[1] if s else None for s in r["scores"]]) for r in rows}


def _mtbench(rows) -> Dict[str, Optional[float]]:
    return {f"{r['question_id']}/turn{r['turn']}": r["score"] for r in rows}


# benchmark -> (what is compared, per-question values from its scores.jsonl, scale shown):
# 0/1 values stay 0/1 for the test (McNemar's) and are shown in % like the benchmark.
PER_QUESTION: Dict[str, Tuple[str, Callable, float]] = {
    "pope": ("accuracy (%)", _pope, 100.0),
    "mmbench": ("circular accuracy (%)", _mmbench, 100.0),
    "mm-vet": ("score (0-100)", _mmvet, 100.0),
    "llava-bench": ("judge score of the answer (1-10)", _llava_bench, 1.0),
    "mt-bench": ("score (1-10)", _mtbench, 1.0),
    "mt-bench+image": ("score (1-10)", _mtbench, 1.0),
}


def per_question(result: dict) -> Dict[str, Optional[float]]:
    """Per-question values of one benchmark run (`report.find_results` entry)."""
    name = result.get("benchmark")
    if name not in PER_QUESTION:
        raise CompareError(f"{result['_path']}: benchmark {name!r} cannot be compared "
                           f"(known: {', '.join(PER_QUESTION)})")
    path = os.path.join(os.path.dirname(result["_path"]), SCORES_FILE)
    if not os.path.isfile(path):
        raise CompareError(f"{path}: missing — the per-question scores of this run; rerun "
                           "its `python -m mmalign_jax.evaluate` command (it redoes nothing)")
    try:
        return PER_QUESTION[name][1](read_jsonl(path))
    except (KeyError, TypeError, IndexError) as e:
        raise CompareError(f"{path}: a row lacks or garbles {e} — not a {name} scores file of "
                           "this version; rerun its `python -m mmalign_jax.evaluate` command") from None


def compare_runs(base: dict, other: dict) -> dict:
    """`paired.difference` of two runs of one benchmark, over the questions both scored."""
    name = base["benchmark"]
    a, b = per_question(base), per_question(other)
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise CompareError(
            f"{name}: the runs were not asked the same questions ({len(a)} in "
            f"{base['_path']}, {len(b)} in {other['_path']}; e.g. {only[:3]}): run both with "
            "the same --data and --limit")
    unscored = sorted(k for k in a if a[k] is None or b[k] is None)
    keep = [k for k in sorted(a) if k not in unscored]
    if len(keep) < 2:
        raise CompareError(f"{name}: fewer than 2 questions scored in both runs")
    d = paired.difference([a[k] for k in keep], [b[k] for k in keep])
    k = PER_QUESTION[name][2]
    d.update({f: d[f] * k for f in ("base", "other", "diff", "se")}, ci95=[x * k for x in d["ci95"]])
    return {"benchmark": name, "compared": PER_QUESTION[name][0], "base_model": base.get("model"),
            "model": other.get("model"), "left_out_unscored": len(unscored), **d}


def compare(paths: Sequence[str]) -> List[dict]:
    """Every benchmark of `paths[0]` against the same benchmark in each later path."""
    if len(paths) < 2:
        raise CompareError("compare needs a baseline run folder and at least one other")
    runs = [report.find_results([p]) for p in paths]
    for p, rs in zip(paths, runs):
        names = [r["benchmark"] for r in rs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CompareError(f"{p}: holds more than one run of {dup}: point at one model's "
                               "results folder")
    base = {r["benchmark"]: r for r in runs[0]}
    out = []
    for p, rs in zip(paths[1:], runs[1:]):
        common = [r for r in rs if r["benchmark"] in base]
        if not common:
            raise CompareError(f"{p}: no benchmark in common with {paths[0]} "
                               f"({', '.join(sorted(base))})")
        out += [compare_runs(base[r["benchmark"]], r) for r in common]
    return out


def render_markdown(rows: Sequence[dict]) -> str:
    lines = ["| model | benchmark | compared | baseline | model's | difference [95 % interval] p "
             "| better / worse | questions |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        left = f" ({r['left_out_unscored']} unscored left out)" if r["left_out_unscored"] else ""
        lines.append(f"| {r['model']} | {r['benchmark']} | {r['compared']} | {r['base']:.2f} | "
                     f"{r['other']:.2f} | {paired.format_difference(r, 2)} | "
                     f"{r['gained']} / {r['lost']} | {r['n']}{left} |")
    base = rows[0]["base_model"] if rows else ""
    return "\n".join([f"Against {base}, question by question:", ""] + lines)


def write(rows: Sequence[dict], out_dir: str) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "compare.json"), "md": os.path.join(out_dir, "compare.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=2)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(render_markdown(rows) + "\n")
    return paths
