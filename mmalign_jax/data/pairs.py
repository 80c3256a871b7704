"""From scored records to training data: DPO pairs, rejection-sampling and SteerLM examples.

Why a rule registry: the published pair rule (below) is one of several reasonable ones and
the paper's ablations depend on it, so the rule is a named, configurable choice
(``RULES``), never code buried in a training script.

``paper`` (the published rule, the default)
    score = helpfulness + correctness + coherence (0–12; complexity and verbosity unused).
    Skip the prompt when best − worst < margin (default 2). Chosen = the top-scored
    response; on a tie among the tops, the *first in response order* (the paper does not
    say; first-in-order makes the choice independent of the seed). Rejected = drawn
    uniformly among responses scoring ≤ best − margin, with a generator seeded from
    sha256(seed, record id) — deterministic per record and seed, independent of record
    order and of Python's per-process ``hash`` randomisation.
``best_vs_worst``
    Chosen = first top, rejected = first lowest; skip when best − worst < margin.
``all_pairs_with_margin``
    Every ordered pair (i, j), in response order, with score_i − score_j ≥ margin.

Records already in DPO form (responses tagged ``meta['role'] = 'chosen'/'rejected'``, as
``records`` reads the published DPO file) are passed through as the pair they are: the
rule does not re-pick them.

Pair dicts (the contract in docs/INTERNALS.md): ``id`` (the record id, or ``id#k`` when a
rule yields several pairs for one record), ``record_id``, ``images``, ``conversation``,
``chosen``, ``rejected`` (texts), ``chosen_scores``/``rejected_scores`` (full score dicts,
None when unscored), ``chosen_score``/``rejected_score`` (sums, None when unscored), plus
reference log-probs: a response's ``meta['ref_<x>']`` becomes ``ref_chosen_<x>`` /
``ref_rejected_<x>`` (e.g. ``ref_logp`` → ``ref_chosen_logp``); for pass-through DPO
records, the record meta's ``ref_*`` fields are copied as they are.

SFT examples (``best_responses``, ``steerlm_examples``) are Records whose conversation
ends with the assistant turn and whose ``responses`` is empty — the same shape the LLaVA
reader produces, so one SFT pipeline consumes all of them.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterable, Sequence

import numpy as np

from .records import ATTRIBUTES, MAX_SCORE, MIN_SCORE, Record

log = logging.getLogger(__name__)

PAIR_ATTRIBUTES = ("helpfulness", "correctness", "coherence")

STEERLM_PAPER_PREFIX = ("\nPlease answer the question such that your response is in the "
                        "following attributes in 5-point Likert scale:\n")
NEMO_LABEL_TOKEN = "<extra_id_2>"


class PairError(ValueError):
    """A record cannot be turned into pairs/examples (e.g. unscored responses)."""


# --------------------------------------------------------------------------- scoring
def score(scores: dict[str, int] | None, attributes: Sequence[str] = PAIR_ATTRIBUTES) -> int:
    """Sum of the given attributes (the paper: helpfulness + correctness + coherence)."""
    if scores is None:
        raise PairError("response has no scores")
    missing = [a for a in attributes if a not in scores]
    if missing:
        raise PairError(f"scores lack {missing}")
    return int(sum(scores[a] for a in attributes))


def record_rng(seed: int, record_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, record id): stable across processes,
    record order and data-set subsets."""
    digest = hashlib.sha256(f"{int(seed)}\x00{record_id}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- rules
# A rule maps the per-response scores of one record to (chosen, rejected) index pairs:
# rule(scores: list[int], *, margin: int, rng) where rng() returns the record's seeded
# Generator (a factory, so rules that draw nothing pay nothing). Add one with
# @register_rule("name"); make_pairs(rule=...) also takes such a callable directly.
Rule = Callable[..., list[tuple[int, int]]]
RULES: dict[str, Rule] = {}


def register_rule(name: str):
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return deco


@register_rule("paper")
def paper_rule(s: Sequence[int], *, margin: int, rng: Callable[[], np.random.Generator]):
    best, worst = max(s), min(s)
    if best - worst < margin:
        return []
    chosen = s.index(best)
    candidates = [i for i, v in enumerate(s) if v <= best - margin]
    return [(chosen, candidates[int(rng().integers(len(candidates)))])]


@register_rule("best_vs_worst")
def best_vs_worst_rule(s: Sequence[int], *, margin: int, rng=None):
    best, worst = max(s), min(s)
    if best - worst < margin:
        return []
    return [(s.index(best), s.index(worst))]


@register_rule("all_pairs_with_margin")
def all_pairs_rule(s: Sequence[int], *, margin: int, rng=None):
    return [(i, j) for i in range(len(s)) for j in range(len(s))
            if i != j and s[i] - s[j] >= margin]


# --------------------------------------------------------------------------- pairs
def _dpo_roles(rec: Record) -> tuple[int, int] | None:
    roles = [r.meta.get("role") for r in rec.responses]
    if "chosen" in roles and "rejected" in roles:
        return roles.index("chosen"), roles.index("rejected")
    return None


def _scores_or_raise(rec: Record, attributes) -> list[int]:
    out = []
    for i, r in enumerate(rec.responses):
        if r.scores is None:
            raise PairError(f"record {rec.id!r}: responses[{i}] has no scores — annotate the "
                            "records first (python -m mmalign_jax.annotate) or drop the "
                            "unscored response")
        try:
            out.append(score(r.scores, attributes))
        except PairError as e:
            raise PairError(f"record {rec.id!r}: responses[{i}]: {e}") from None
    return out


def _ref_fields(rec: Record, ci: int, ri: int, passthrough: bool) -> dict:
    out = {}
    if passthrough:
        out.update({k: v for k, v in rec.meta.items() if k.startswith("ref_")})
    for side, idx in (("chosen", ci), ("rejected", ri)):
        for k, v in rec.responses[idx].meta.items():
            if k.startswith("ref_"):
                out[f"ref_{side}_{k[4:]}"] = v
    return out


def _pair(rec: Record, pid: str, ci: int, ri: int, attributes, passthrough: bool) -> dict:
    c, r = rec.responses[ci], rec.responses[ri]
    return {
        "id": pid, "record_id": rec.id, "images": list(rec.images),
        "conversation": [dict(t) for t in rec.conversation],
        "chosen": c.text, "rejected": r.text,
        "chosen_scores": dict(c.scores) if c.scores is not None else None,
        "rejected_scores": dict(r.scores) if r.scores is not None else None,
        "chosen_score": score(c.scores, attributes) if c.scores is not None else None,
        "rejected_score": score(r.scores, attributes) if r.scores is not None else None,
        **_ref_fields(rec, ci, ri, passthrough),
    }


def make_pairs(records: Iterable[Record], rule: str | Rule = "paper", seed: int = 0,
               margin: int = 2, attributes: Sequence[str] = PAIR_ATTRIBUTES) -> list[dict]:
    """Chosen/rejected pairs from scored records by a named rule (see module docstring).

    Records with fewer than two responses, or whose scores are too close, yield no pair
    (``pair_stats`` counts them). A response without scores is a PairError naming the
    record, except in DPO-form records, which pass through unchanged.
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"unknown pair rule {rule!r}; choose one of {sorted(RULES)}")
        rule_fn = RULES[rule]
    else:
        rule_fn = rule
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 1:
        raise ValueError(f"margin must be an integer ≥ 1 (else chosen could equal rejected), "
                         f"got {margin!r}")
    bad = [a for a in attributes if a not in ATTRIBUTES]
    if bad or not attributes:
        raise ValueError(f"attributes must be a non-empty subset of {ATTRIBUTES}, got "
                         f"{tuple(attributes)}")
    pairs: list[dict] = []
    n_records = 0
    for rec in records:
        n_records += 1
        roles = _dpo_roles(rec)
        if roles is not None:
            pairs.append(_pair(rec, rec.id, *roles, attributes, passthrough=True))
            continue
        if len(rec.responses) < 2:
            continue
        s = _scores_or_raise(rec, attributes)
        idx = rule_fn(s, margin=int(margin), rng=lambda rec=rec: record_rng(seed, rec.id))
        for k, (ci, ri) in enumerate(idx):
            pid = rec.id if len(idx) == 1 else f"{rec.id}#{k}"
            pairs.append(_pair(rec, pid, ci, ri, attributes, passthrough=False))
    ids = [p["id"] for p in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise PairError(f"pair ids collide: {dup} — record ids must be unique and must not "
                        "look like '<id>#<k>'")
    log.info("make_pairs(rule=%s, margin=%d, seed=%d): %d pairs from %d records",
             rule if isinstance(rule, str) else getattr(rule, "__name__", "custom"),
             margin, seed, len(pairs), n_records)
    return pairs


def pair_stats(records: Sequence[Record], pairs: Sequence[dict]) -> dict:
    """What the pairing did: prompts, prompts that gave pairs, pairs, prompts skipped
    because the scores were too close (``skipped_margin``) or there were < 2 responses
    (``skipped_few_responses``), and mean chosen − rejected score over scored pairs."""
    with_pairs = {p["record_id"] for p in pairs}
    skipped_margin = skipped_few = 0
    for rec in records:
        if rec.id in with_pairs:
            continue
        if len(rec.responses) < 2:
            skipped_few += 1
        else:
            skipped_margin += 1
    margins = [p["chosen_score"] - p["rejected_score"] for p in pairs
               if p.get("chosen_score") is not None and p.get("rejected_score") is not None]
    return {"prompts": len(records), "prompts_with_pairs": len(with_pairs),
            "pairs": len(pairs), "skipped_margin": skipped_margin,
            "skipped_few_responses": skipped_few,
            "mean_margin": float(np.mean(margins)) if margins else None}


# --------------------------------------------------------------------------- SFT data
def _sft_record(rec: Record, rid: str, conversation: list[dict], answer: str,
                meta: dict) -> Record:
    return Record(id=rid, images=list(rec.images),
                  conversation=conversation + [{"role": "assistant", "content": answer}],
                  responses=[], meta={"record_id": rec.id, **meta})


def best_responses(records: Iterable[Record], attributes: Sequence[str] = PAIR_ATTRIBUTES,
                   min_score: int | None = None) -> list[Record]:
    """Rejection-sampling data: per record, its best response (top score, first in order
    on ties) as the assistant turn. Records without responses are skipped; DPO-form
    records without scores contribute their chosen response. ``min_score`` optionally
    drops records whose best response scores below it (the paper keeps all)."""
    out = []
    for rec in records:
        if not rec.responses:
            continue
        roles = _dpo_roles(rec)
        if roles is not None and any(r.scores is None for r in rec.responses):
            best, meta = rec.responses[roles[0]], {"score": None}
        else:
            s = _scores_or_raise(rec, attributes)
            if min_score is not None and max(s) < min_score:
                continue
            best = rec.responses[s.index(max(s))]
            meta = {"score": max(s), "scores": dict(best.scores)}
        if best.source is not None:
            meta["source"] = best.source
        out.append(_sft_record(rec, rec.id, [dict(t) for t in rec.conversation],
                               best.text, meta))
    return out


def attribute_string(scores: dict[str, int], fmt: str = "paper") -> str:
    """The text appended to the last user turn to condition a SteerLM model.

    ``paper``: exactly the published suffix, ``\\nPlease answer the question such that your
    response is in the following attributes in 5-point Likert scale:\\nHelpfulness:4,
    Correctness:4,Coherence:4,Complexity:4,Verbosity:4`` (no spaces; capitalised).
    ``nemo``: NeMo SteerLM's label line restricted to the five HelpSteer attributes,
    ``\\n<extra_id_2>helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4``.
    NeMo puts that line at the start of the assistant turn (excluded from the loss) and
    also lists quality/toxicity/humor/creativity; we append it to the user turn instead,
    so it is prompt (never a target) whatever chat template is used.
    """
    missing = [a for a in ATTRIBUTES if a not in (scores or {})]
    if missing:
        raise PairError(f"attribute_string needs all of {ATTRIBUTES}; missing {missing}")
    if fmt == "paper":
        return STEERLM_PAPER_PREFIX + ",".join(f"{a.capitalize()}:{int(scores[a])}"
                                               for a in ATTRIBUTES)
    if fmt == "nemo":
        return "\n" + NEMO_LABEL_TOKEN + ",".join(f"{a}:{int(scores[a])}" for a in ATTRIBUTES)
    raise ValueError(f"unknown SteerLM format {fmt!r}; use 'paper' or 'nemo'")


def parse_attributes(text: str, default: int = 4) -> dict[str, int]:
    """``"helpfulness=4,verbosity=1"`` → all five attributes (unspecified ones ``default``).

    For the command line (inference-time SteerLM targets). Names are case-insensitive;
    ``=`` or ``:`` separate name and value; values must be integers 0–4."""
    out = {a: default for a in ATTRIBUTES}
    given = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        sep = "=" if "=" in part else ":" if ":" in part else None
        if sep is None:
            raise ValueError(f"bad attribute {part!r}: write name=value, e.g. verbosity=1")
        name, value = (x.strip() for x in part.split(sep, 1))
        name = name.lower()
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; choose from {', '.join(ATTRIBUTES)}")
        if name in given:
            raise ValueError(f"attribute {name!r} given twice")
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}: value must be an integer "
                             f"{MIN_SCORE}–{MAX_SCORE}") from None
        if not MIN_SCORE <= v <= MAX_SCORE:
            raise ValueError(f"{name}={v}: value must be in {MIN_SCORE}–{MAX_SCORE}")
        out[name] = v
        given.add(name)
    return out


def steerlm_examples(records: Iterable[Record], fmt: str = "paper") -> list[Record]:
    """SteerLM data: every response of every record, with its own five scores appended to
    the last user turn (``attribute_string``) and the response as the assistant turn.
    Ids are ``<record id>#<response index>``. Unscored responses are a PairError."""
    out = []
    for rec in records:
        for i, r in enumerate(rec.responses):
            if r.scores is None:
                raise PairError(f"record {rec.id!r}: responses[{i}] has no scores — SteerLM "
                                "trains on each response's own scores; annotate first")
            conv = [dict(t) for t in rec.conversation]
            last_user = max((k for k, t in enumerate(conv) if t["role"] == "user"), default=None)
            if last_user is None:
                raise PairError(f"record {rec.id!r}: no user turn to condition")
            conv[last_user]["content"] += attribute_string(r.scores, fmt)
            meta = {"scores": dict(r.scores)}
            if r.source is not None:
                meta["source"] = r.source
            out.append(_sft_record(rec, f"{rec.id}#{i}", conv, r.text, meta))
    return out
