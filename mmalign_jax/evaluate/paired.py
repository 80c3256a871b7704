"""Is model B better than model A? Compare them question by question on the same questions.

Two accuracies of 0.53 and 0.54 on 256 questions each say nothing (each has a sampling error
of about ±0.03). Asked the *same* questions, most answers agree, and only the questions where
the two differ carry information: the paired difference has a far smaller standard error
(about ±0.006 for 2,048 questions when the models disagree on 7 % of them). This is how a
method's gain over the model it started from should be quoted.

    d = paired.difference(sft_correct, dpo_correct)      # per-question 0/1 (or fractions)
    d["diff"], d["ci95"], d["p_value"], d["gained"], d["lost"]

Per-question values may be fractions (several seeds of a method: the share of its runs that
got the question right); then `gained`/`lost` count questions where it did better/worse and
the p-value is the paired z-test's, instead of McNemar's exact test for 0/1 values.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

Z95 = 1.959963984540054


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: the discordant questions as fair coin flips."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def difference(base: Sequence[float], other: Sequence[float]) -> Dict[str, object]:
    """Mean of `other - base` over paired questions, its standard error (sample sd / √n),
    95 % normal interval, questions gained and lost, and a two-sided p-value."""
    if len(base) != len(other):
        raise ValueError(f"paired values need the same questions: {len(base)} vs {len(other)}")
    n = len(base)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 questions, got {n}")
    d = [float(o) - float(b) for b, o in zip(base, other)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    se = math.sqrt(var / n)
    gained = sum(1 for x in d if x > 0)
    lost = sum(1 for x in d if x < 0)
    binary = all(float(v) in (0.0, 1.0) for v in list(base) + list(other))
    if binary:
        p, test = mcnemar_exact(gained, lost), "mcnemar_exact"
    else:
        p = 1.0 if se == 0 else math.erfc(abs(mean) / se / math.sqrt(2))
        test = "paired_z"
    return {"n": n, "base": sum(map(float, base)) / n, "other": sum(map(float, other)) / n,
            "diff": mean, "se": se, "ci95": [mean - Z95 * se, mean + Z95 * se],
            "gained": gained, "lost": lost, "p_value": p, "test": test}


def by_id(base: Mapping[str, float], other: Mapping[str, float],
          where: str = "") -> Dict[str, object]:
    """`difference` over the questions both maps hold, keyed by question id; the two must hold
    the same ids (a comparison over different questions would not be paired)."""
    if set(base) != set(other):
        missing = sorted(set(base) ^ set(other))[:3]
        raise ValueError(f"{where or 'paired comparison'}: the two models were not asked the same "
                         f"questions (e.g. {missing}); evaluate both on one question set")
    ids = sorted(base)
    return difference([base[i] for i in ids], [other[i] for i in ids])


def format_difference(d: Optional[Mapping[str, object]], digits: int = 3) -> str:
    """'+0.012 [-0.004, +0.028] p=0.14' ('–' for None)."""
    if not d:
        return "–"
    lo, hi = d["ci95"]
    p = float(d["p_value"])
    return (f"{d['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] "
            + (f"p={p:.0e}" if p < 1e-3 else f"p={p:.3f}"))
