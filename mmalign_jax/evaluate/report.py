"""Reports: the study's Table 4 in our numbers — one row per model, one column per benchmark —
as Markdown, JSON and a bar chart PNG, from the `result.json` files of benchmark runs.

    python -m mmalign_jax.evaluate report runs/llava runs/dpo --out report/
    # -> report/table.md, report/table.json, report/table.png

From Python:

    table = report.collect(report.find_results(["runs/llava", "runs/dpo"]))
    report.write_report(table, "report/")

The pieces are generic, so other tables (the study in miniature) can reuse them:
`Table(columns=[Column(key, title, fmt)], rows=[Row(model, scores={key: value})])`, where a
value is a number, `{"mean": m, "std": s}` (shown as "m ± s") or None (shown as "–").

The report names the judge of every judged column: scores from a judge other than the
study's GPT-4 are not comparable to the published numbers.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

from mmalign_jax.evaluate.common import RESULT_FILE


@dataclasses.dataclass
class Column:
    key: str
    title: str
    fmt: str = "{:.1f}"
    note: str = ""          # e.g. "(0-100)"; shown in the JSON and the plot


@dataclasses.dataclass
class Row:
    model: str
    scores: dict
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Table:
    columns: list
    rows: list
    judges: dict = dataclasses.field(default_factory=dict)   # column key -> [judge names]
    notes: list = dataclasses.field(default_factory=list)
    title: str = ""

    def to_json(self) -> dict:
        return {"title": self.title,
                "columns": [dataclasses.asdict(c) for c in self.columns],
                "rows": [{"model": r.model, "scores": r.scores, "details": r.details}
                         for r in self.rows],
                "judges": self.judges, "notes": self.notes}


# The study's Table 4 columns (AlpacaEval is not implemented), in its order, then Table 7's.
BENCHMARK_COLUMNS = [
    Column("mm-vet", "MM-Vet", "{:.1f}", "total score, 0-100"),
    Column("llava-bench", "LLaVA-Bench", "{:.1f}", "relative score, %"),
    Column("pope", "POPE", "{:.3f}", "F1, mean of splits"),
    Column("mmbench", "MMBench", "{:.1f}", "circular accuracy, %"),
    Column("mt-bench", "MT-Bench", "{:.2f}", "1-10"),
    Column("mt-bench+image", "MT-Bench (irrelevant image)", "{:.2f}", "1-10"),
]
PUBLISHED_JUDGE = "GPT-4 (gpt-4-0314 / gpt-4-0613)"


# ------------------------------------------------------------------------------ reading


def find_results(paths: Iterable[str]) -> list:
    """Every `result.json` under `paths` (files, or folders searched recursively), loaded."""
    files = []
    for p in paths:
        if os.path.isfile(p):
            files.append(p)
        elif os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "**", RESULT_FILE), recursive=True))
            if not found:
                raise FileNotFoundError(f"{p}: no {RESULT_FILE} under it")
            files += found
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            r = json.load(fh)
        r["_path"] = f
        out.append(r)
    return out


def collect(results: Sequence[dict], *, names: Optional[dict] = None, title: str = "") -> Table:
    """One row per model (in order of appearance), one column per benchmark present. A later
    result of the same model and benchmark (by its `finished` time) replaces an earlier one.
    `names`: `{model name in result.json: name to show}`."""
    names = names or {}
    latest = {}
    order = []
    for r in results:
        model = names.get(r.get("model"), r.get("model") or "?")
        key = (model, r["benchmark"])
        if model not in order:
            order.append(model)
        if key not in latest or str(r.get("finished", "")) >= str(latest[key].get("finished", "")):
            latest[key] = r
    known = {c.key: c for c in BENCHMARK_COLUMNS}
    present = {b for _, b in latest}
    columns = [c for c in BENCHMARK_COLUMNS if c.key in present] + [
        Column(b, b) for b in sorted(present - set(known))]
    rows, judges, notes = [], {}, []
    for model in order:
        scores, details = {}, {}
        for c in columns:
            r = latest.get((model, c.key))
            if r is None:
                scores[c.key] = None
                continue
            scores[c.key] = r.get("score")
            fails = (r.get("judge_failures") or {}).get("count", 0)
            details[c.key] = {"score_name": r.get("score_name"), "judge": r.get("judge"),
                              "n_questions": r.get("n_questions"), "judge_failures": fails,
                              "path": r.get("_path")}
            if r.get("judge"):
                judges.setdefault(c.key, [])
                if r["judge"] not in judges[c.key]:
                    judges[c.key].append(r["judge"])
            if fails:
                notes.append(f"{model}, {c.title}: {fails} judgment(s) failed (unparsable or "
                             "errors) — see its result.json")
        rows.append(Row(model, scores, details))
    return Table(columns, rows, judges, notes, title)


# ------------------------------------------------------------------------------ writing


def format_value(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, dict):
        m, s = v.get("mean"), v.get("std")
        if m is None:
            return "–"
        return fmt.format(m) + ("" if s is None else " ± " + fmt.format(s))
    return fmt.format(v)


def _mean_of(v):
    if isinstance(v, dict):
        return v.get("mean"), v.get("std")
    return v, None


def render_markdown(table: Table) -> str:
    lines = []
    if table.title:
        lines += [f"# {table.title}", ""]
    lines.append("| Model | " + " | ".join(c.title for c in table.columns) + " |")
    lines.append("|---|" + "---|" * len(table.columns))
    for r in table.rows:
        lines.append(f"| {r.model} | " + " | ".join(format_value(r.scores.get(c.key), c.fmt)
                                                    for c in table.columns) + " |")
    lines.append("")
    metric = [f"{c.title}: {c.note}" for c in table.columns if c.note]
    if metric:
        lines += ["Metrics — " + "; ".join(metric) + ".", ""]
    if table.judges:
        by_judge = {}
        for key, js in table.judges.items():
            title = next((c.title for c in table.columns if c.key == key), key)
            by_judge.setdefault(", ".join(js), []).append(title)
        lines.append("Judges — " + "; ".join(f"{', '.join(cols)}: {j}"
                                               for j, cols in by_judge.items()) + ".")
        lines.append(f"The study's published numbers were judged by {PUBLISHED_JUDGE}; "
                     "scores from a different judge are not comparable to them.")
        lines.append("")
    for n in table.notes:
        lines.append(f"- {n}")
    if table.notes:
        lines.append("")
    return "\n".join(lines)


def plot(table: Table, path: str) -> str:
    """One panel per column (each has its own scale), one bar per model; error bars for
    `{"mean", "std"}` values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = table.columns
    n = max(1, len(cols))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    models = [r.model for r in table.rows]
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for i, c in enumerate(cols):
        ax = axes[i // ncols][i % ncols]
        vals, errs = [], []
        for r in table.rows:
            m, s = _mean_of(r.scores.get(c.key))
            vals.append(float("nan") if m is None else float(m))
            errs.append(0.0 if s is None else float(s))
        xs = list(range(len(models)))
        bars = ax.bar(xs, [0.0 if math.isnan(v) else v for v in vals],
                      yerr=errs if any(errs) else None, capsize=3,
                      color=[colors[j % len(colors)] for j in xs])
        for b, v in zip(bars, vals):
            ax.annotate("–" if math.isnan(v) else c.fmt.format(v),
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=8)
        judge = ", ".join(table.judges.get(c.key, []))
        ax.set_title(c.title + (f"\n[{judge}]" if judge else ""), fontsize=9)
        if c.note:
            ax.set_ylabel(c.note, fontsize=8)
        ax.margins(y=0.15)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    if table.title:
        fig.suptitle(table.title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(table: Table, out_dir: str, stem: str = "table") -> dict:
    """`out_dir/{stem}.md`, `.json`, `.png`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, f"{stem}.md"),
             "json": os.path.join(out_dir, f"{stem}.json"),
             "png": os.path.join(out_dir, f"{stem}.png")}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(render_markdown(table))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(table.to_json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    plot(table, paths["png"])
    return paths
