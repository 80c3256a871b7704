"""How much two annotation files agree — e.g. Gemini against humans, or against the demo
task's ground truth.

Why: the study found the differences of Gemini's scores correlated about zero (−0.05 to
−0.12) with human preference labels; annotation quality decides what DPO learns, so it
must be measurable on one's own data before paying for training. Candidates are matched by
(record id, candidate index, text); only candidates present in both files count.

Reported, for two files A and B:
- per attribute (and for the pair score, helpfulness+correctness+coherence): n, Pearson r,
  Spearman ρ (Pearson of average ranks, so ties are handled), exact agreement, mean |A−B|;
- pair-level agreement: the pairs a pair rule (default the published one) builds from A's
  scores, judged by B — B agrees when it scores chosen above rejected, ties, or disagrees —
  and the same from B to A;
- the correlation of score differences (PAPER.md's sanity check): over every ordered pair
  (i, j), i ≠ j, of candidates of the same prompt, Pearson and Spearman of
  S_A(i) − S_A(j) against S_B(i) − S_B(j), S the pair score. Both orders of each pair are
  included, so the result does not depend on candidate order.
A correlation is None when one side is constant (undefined).
"""
from __future__ import annotations

import math
from typing import Sequence

from ..data.pairs import PAIR_ATTRIBUTES, RULES, record_rng
from ..data.records import ATTRIBUTES
from .results import latest_rows


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n != len(y):
        raise ValueError("pearson: x and y differ in length")
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def average_ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(average_ranks(x), average_ranks(y))


def _matched(a_path: str, b_path: str, model_a=None, model_b=None, guide_a=None, guide_b=None):
    def table(path, model, guide):
        return {(r["id"], r.get("candidate"), r.get("text")): r["scores"]
                for r in latest_rows(path, model=model, guide_version=guide)}
    ta, tb = table(a_path, model_a, guide_a), table(b_path, model_b, guide_b)
    common = sorted(set(ta) & set(tb), key=lambda k: (k[0], k[1]))
    by_record: dict[str, list] = {}
    for k in common:
        by_record.setdefault(k[0], []).append((ta[k], tb[k]))
    return by_record, len(ta), len(tb)


def _attr_stats(a: list[float], b: list[float]) -> dict:
    n = len(a)
    return {"n": n, "pearson": pearson(a, b), "spearman": spearman(a, b),
            "exact": sum(x == y for x, y in zip(a, b)) / n if n else None,
            "mean_abs_diff": sum(abs(x - y) for x, y in zip(a, b)) / n if n else None}


def _pair_agreement(by_record, side: int, rule: str, margin: int, seed: int,
                    attributes) -> dict:
    """Pairs built from file `side` (0 = A, 1 = B) by `rule`, judged by the other file."""
    rule_fn = RULES[rule]
    agree = tie = disagree = 0
    for rid, cands in by_record.items():
        if len(cands) < 2:
            continue
        mine = [sum(c[side][a] for a in attributes) for c in cands]
        theirs = [sum(c[1 - side][a] for a in attributes) for c in cands]
        for ci, ri in rule_fn(mine, margin=margin, rng=lambda rid=rid: record_rng(seed, rid)):
            if theirs[ci] > theirs[ri]:
                agree += 1
            elif theirs[ci] == theirs[ri]:
                tie += 1
            else:
                disagree += 1
    n = agree + tie + disagree
    return {"pairs": n, "agree": agree, "tie": tie, "disagree": disagree,
            "agreement": agree / n if n else None}


def agreement(a_path: str, b_path: str, *, rule: str = "paper", margin: int = 2, seed: int = 0,
              attributes: Sequence[str] = PAIR_ATTRIBUTES, model_a: str | None = None,
              model_b: str | None = None, guide_a: str | None = None,
              guide_b: str | None = None) -> dict:
    """Agreement statistics between annotation files `a_path` and `b_path` (module
    docstring). `rule`/`margin`/`seed`/`attributes`: the pair rule, as in
    `data.pairs.make_pairs`. `model_*`/`guide_*` pick one annotator from a mixed file."""
    if rule not in RULES:
        raise ValueError(f"unknown pair rule {rule!r}; choose one of {sorted(RULES)}")
    by_record, n_a, n_b = _matched(a_path, b_path, model_a, model_b, guide_a, guide_b)
    pairs_of_scores = [c for cands in by_record.values() for c in cands]
    out: dict = {"a": a_path, "b": b_path, "candidates_a": n_a, "candidates_b": n_b,
                 "candidates_matched": len(pairs_of_scores), "prompts_matched": len(by_record),
                 "rule": rule, "margin": margin, "seed": seed,
                 "pair_attributes": list(attributes), "attributes": {}}
    for attr in ATTRIBUTES:
        out["attributes"][attr] = _attr_stats([float(a[attr]) for a, _ in pairs_of_scores],
                                              [float(b[attr]) for _, b in pairs_of_scores])
    out["pair_score"] = _attr_stats(
        [float(sum(a[x] for x in attributes)) for a, _ in pairs_of_scores],
        [float(sum(b[x] for x in attributes)) for _, b in pairs_of_scores])
    out["pairs_a_judged_by_b"] = _pair_agreement(by_record, 0, rule, margin, seed, attributes)
    out["pairs_b_judged_by_a"] = _pair_agreement(by_record, 1, rule, margin, seed, attributes)
    da, db = [], []
    for cands in by_record.values():
        sa = [sum(a[x] for x in attributes) for a, _ in cands]
        sb = [sum(b[x] for x in attributes) for _, b in cands]
        for i in range(len(cands)):
            for j in range(len(cands)):
                if i != j:
                    da.append(float(sa[i] - sa[j]))
                    db.append(float(sb[i] - sb[j]))
    out["score_differences"] = {"n": len(da), "pearson": pearson(da, db),
                                "spearman": spearman(da, db)}
    return out


def _fmt(x) -> str:
    return "  n/a" if x is None else f"{x:+.3f}" if isinstance(x, float) else str(x)


def format_agreement(result: dict) -> str:
    """A small text table of `agreement`'s result."""
    lines = [f"agreement: A={result['a']}  B={result['b']}",
             f"  matched {result['candidates_matched']} candidates of "
             f"{result['prompts_matched']} prompts (A has {result['candidates_a']}, "
             f"B has {result['candidates_b']})",
             f"  {'attribute':<14}{'n':>6}{'pearson':>9}{'spearman':>9}{'exact':>8}{'mean|Δ|':>9}"]
    rows = list(result["attributes"].items()) + [("pair score", result["pair_score"])]
    for name, s in rows:
        exact = "  n/a" if s["exact"] is None else f"{s['exact']:.3f}"
        mad = "  n/a" if s["mean_abs_diff"] is None else f"{s['mean_abs_diff']:.3f}"
        lines.append(f"  {name:<14}{s['n']:>6}{_fmt(s['pearson']):>9}{_fmt(s['spearman']):>9}"
                     f"{exact:>8}{mad:>9}")
    for key, label in (("pairs_a_judged_by_b", "pairs from A, judged by B"),
                       ("pairs_b_judged_by_a", "pairs from B, judged by A")):
        p = result[key]
        rate = "n/a" if p["agreement"] is None else f"{p['agreement']:.3f}"
        lines.append(f"  {label} (rule {result['rule']}, margin {result['margin']}): "
                     f"{p['pairs']} pairs, agree {p['agree']}, tie {p['tie']}, "
                     f"disagree {p['disagree']} -> agreement {rate}")
    d = result["score_differences"]
    lines.append(f"  score differences (ordered candidate pairs, n={d['n']}): "
                 f"pearson {_fmt(d['pearson'])}, spearman {_fmt(d['spearman'])}")
    return "\n".join(lines)
