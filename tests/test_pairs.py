"""Pair rules, rejection-sampling and SteerLM examples on hand-made records."""
import numpy as np
import pytest

from mmalign_jax.data import pairs as P
from mmalign_jax.data.records import ATTRIBUTES, Record, Response


def sc(total, complexity=2, verbosity=1):
    """Scores whose helpfulness+correctness+coherence sum to ``total``."""
    h = min(4, total)
    c = min(4, total - h)
    return {"helpfulness": h, "correctness": c, "coherence": total - h - c,
            "complexity": complexity, "verbosity": verbosity}


def rec(rid, totals, image=True):
    return Record(id=rid, images=["a.png"] if image else [],
                  conversation=[{"role": "user", "content": ("<image>\n" if image else "") + "Q?"}],
                  responses=[Response(f"{rid}-ans{i}", source=f"m{i}", scores=sc(t))
                             for i, t in enumerate(totals)])


def test_score_sum():
    assert P.score(sc(9)) == 9
    assert P.score(sc(9, complexity=4), attributes=ATTRIBUTES) == 9 + 4 + 1
    with pytest.raises(P.PairError):
        P.score(None)


# ------------------------------------------------------------------ paper rule
def test_paper_margin_below_exactly_and_all_equal():
    recs = [rec("below", [7, 6, 7, 7]), rec("equal", [5, 5, 5, 5]), rec("exact", [8, 7, 6, 7])]
    pairs = P.make_pairs(recs)
    assert [p["id"] for p in pairs] == ["exact"]
    p = pairs[0]
    assert (p["chosen"], p["rejected"]) == ("exact-ans0", "exact-ans2")
    assert (p["chosen_score"], p["rejected_score"]) == (8, 6)
    assert p["chosen_scores"] == sc(8) and p["rejected_scores"] == sc(6)
    assert p["record_id"] == "exact" and p["images"] == ["a.png"]
    assert p["conversation"] == recs[2].conversation
    assert p["conversation"] is not recs[2].conversation     # a copy, not an alias
    # margin is configurable
    assert [p["id"] for p in P.make_pairs(recs, margin=1)] == ["below", "exact"]
    assert P.make_pairs(recs, margin=3) == []


def test_paper_tie_at_top_picks_first_in_order():
    pairs = P.make_pairs([rec("t", [3, 9, 9, 2])], seed=5)
    assert pairs[0]["chosen"] == "t-ans1"


def test_paper_rejected_always_at_most_best_minus_margin():
    rng = np.random.default_rng(0)
    recs = [rec(f"r{i}", rng.integers(0, 13, size=4).tolist()) for i in range(300)]
    for margin in (2, 3):
        pairs = P.make_pairs(recs, seed=1, margin=margin)
        assert pairs
        byid = {r.id: r for r in recs}
        for p in pairs:
            totals = [P.score(r.scores) for r in byid[p["id"]].responses]
            assert p["chosen_score"] == max(totals)
            assert p["rejected_score"] <= max(totals) - margin
        n_eligible = sum(max(P.score(x.scores) for x in r.responses)
                         - min(P.score(x.scores) for x in r.responses) >= margin for r in recs)
        assert len(pairs) == n_eligible


def test_paper_deterministic_by_seed_and_order_independent():
    recs = [rec(f"r{i}", [10, 2, 3, 4]) for i in range(40)]   # 3 rejected candidates each
    a = P.make_pairs(recs, seed=0)
    assert a == P.make_pairs(recs, seed=0)
    assert {p["id"]: p["rejected"] for p in a} == {
        p["id"]: p["rejected"] for p in P.make_pairs(recs[::-1], seed=0)}
    b = P.make_pairs(recs, seed=1)
    assert [p["rejected"] for p in a] != [p["rejected"] for p in b]
    # every candidate ≤ best − 2 gets drawn sometimes (uniform, not always the worst)
    assert {p["rejected"].split("-")[1] for p in a} == {"ans1", "ans2", "ans3"}


# ------------------------------------------------------------------ other rules
def test_best_vs_worst():
    recs = [rec("a", [4, 9, 2, 9, 2]), rec("b", [6, 7, 6])]
    pairs = P.make_pairs(recs, rule="best_vs_worst")
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "a-ans1", "a-ans2")]
    assert len(P.make_pairs(recs, rule="best_vs_worst", margin=1)) == 2


def test_all_pairs_with_margin_counts_and_ids():
    pairs = P.make_pairs([rec("a", [0, 2, 4, 4]), rec("b", [5, 7])], rule="all_pairs_with_margin")
    a = [p for p in pairs if p["record_id"] == "a"]
    assert [(p["chosen"][-1], p["rejected"][-1]) for p in a] == [
        ("1", "0"), ("2", "0"), ("2", "1"), ("3", "0"), ("3", "1")]
    assert [p["id"] for p in a] == [f"a#{k}" for k in range(5)]
    assert [p["id"] for p in pairs if p["record_id"] == "b"] == ["b"]
    assert all(p["chosen_score"] - p["rejected_score"] >= 2 for p in pairs)
    assert len(P.make_pairs([rec("a", [0, 2, 4, 4])], rule="all_pairs_with_margin", margin=4)) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pair rule"):
        P.make_pairs([], rule="nope")
    with pytest.raises(ValueError, match="margin"):
        P.make_pairs([], margin=0)
    with pytest.raises(ValueError, match="attributes"):
        P.make_pairs([], attributes=("humor",))


# ------------------------------------------------------------------ unscored / DPO-form
def test_unscored_response_names_record():
    r = rec("u", [5, 9])
    r.responses[1].scores = None
    with pytest.raises(P.PairError, match=r"record 'u': responses\[1\] has no scores"):
        P.make_pairs([rec("ok", [1, 9]), r])


def test_dpo_records_pass_through_with_ref_logps():
    r = Record("d", ["a.png"], [{"role": "user", "content": "<image>\nQ"}],
               [Response("C", meta={"role": "chosen"}), Response("R", meta={"role": "rejected"})],
               meta={"ref_chosen_logp": -3.0, "ref_rejected_logp": -4.0, "other": 1})
    (p,) = P.make_pairs([r], rule="best_vs_worst")
    assert (p["id"], p["chosen"], p["rejected"]) == ("d", "C", "R")
    assert p["chosen_scores"] is None and p["chosen_score"] is None
    assert (p["ref_chosen_logp"], p["ref_rejected_logp"]) == (-3.0, -4.0) and "other" not in p


def test_ref_logps_from_response_meta():
    r = rec("x", [9, 2])
    r.responses[0].meta = {"ref_logp": -1.5, "ref_avg_logp": -0.5}
    r.responses[1].meta = {"ref_logp": -9.0}
    (p,) = P.make_pairs([r])
    assert (p["ref_chosen_logp"], p["ref_chosen_avg_logp"], p["ref_rejected_logp"]) == (-1.5, -0.5, -9.0)


def test_pair_stats():
    recs = [rec("a", [9, 2]), rec("b", [5, 6]), rec("c", [7]), rec("d", [12, 4, 8])]
    pairs = P.make_pairs(recs, rule="best_vs_worst")
    st = P.pair_stats(recs, pairs)
    assert st == {"prompts": 4, "prompts_with_pairs": 2, "pairs": 2, "skipped_margin": 1,
                  "skipped_few_responses": 1, "mean_margin": 7.5}


# ------------------------------------------------------------------ SFT data
def test_best_responses():
    recs = [rec("a", [3, 9, 9]), rec("b", [1, 2]), Record("c", [], [{"role": "user", "content": "q"}])]
    out = P.best_responses(recs)
    assert [r.id for r in out] == ["a", "b"]
    assert out[0].conversation[-1] == {"role": "assistant", "content": "a-ans1"}
    assert out[0].conversation[:-1] == recs[0].conversation and out[0].responses == []
    assert out[0].meta["score"] == 9 and out[0].meta["source"] == "m1"
    assert [r.id for r in P.best_responses(recs, min_score=5)] == ["a"]


PAPER_SUFFIX = ("\nPlease answer the question such that your response is in the following "
                "attributes in 5-point Likert scale:\n"
                "Helpfulness:4,Correctness:4,Coherence:4,Complexity:4,Verbosity:4")


def test_attribute_strings():
    fours = {a: 4 for a in ATTRIBUTES}
    assert P.attribute_string(fours) == PAPER_SUFFIX
    assert P.attribute_string(fours, "nemo") == (
        "\n<extra_id_2>helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4")
    assert P.attribute_string(sc(7, 2, 0)).endswith(
        "Helpfulness:4,Correctness:3,Coherence:0,Complexity:2,Verbosity:0")
    with pytest.raises(ValueError):
        P.attribute_string(fours, "html")


def test_steerlm_examples():
    r = rec("s", [12, 5])
    out = P.steerlm_examples([r])
    assert [e.id for e in out] == ["s#0", "s#1"]
    assert out[0].conversation[0]["content"] == "<image>\nQ?" + PAPER_SUFFIX.replace(
        "Complexity:4,Verbosity:4", "Complexity:2,Verbosity:1")
    assert out[1].conversation[0]["content"].endswith(
        "Helpfulness:4,Correctness:1,Coherence:0,Complexity:2,Verbosity:1")
    assert out[1].conversation[1] == {"role": "assistant", "content": "s-ans1"}
    assert r.conversation[0]["content"] == "<image>\nQ?"          # input untouched
    nemo = P.steerlm_examples([r], fmt="nemo")
    assert nemo[0].conversation[0]["content"].endswith("\n<extra_id_2>helpfulness:4,"
                                                       "correctness:4,coherence:4,complexity:2,verbosity:1")
    r.responses[0].scores = None
    with pytest.raises(P.PairError, match="record 's'"):
        P.steerlm_examples([r])


def test_parse_attributes():
    assert P.parse_attributes("helpfulness=4,verbosity=1") == {
        "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 4, "verbosity": 1}
    assert P.parse_attributes("") == {a: 4 for a in ATTRIBUTES}
    assert P.parse_attributes(" Complexity:0 ")["complexity"] == 0
    for bad, msg in [("humor=2", "unknown attribute"), ("verbosity=5", "0–4"),
                     ("verbosity=x", "integer"), ("verbosity", "name=value"),
                     ("verbosity=1,verbosity=2", "twice")]:
        with pytest.raises(ValueError, match=msg):
            P.parse_attributes(bad)
