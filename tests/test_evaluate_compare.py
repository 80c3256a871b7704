"""`python -m mmalign_jax.evaluate compare`: benchmark runs against a baseline run, question by
question. POPE runs are made by the real runner with scripted answerers; the judged
benchmarks' `scores.jsonl` rows are written in the form their runners write."""
from __future__ import annotations

import json
import os
import re

import pytest

from mmalign_jax.evaluate import __main__ as cli
from mmalign_jax.evaluate import compare, paired, pope
from mmalign_jax.evaluate.common import write_result


class Scripted:
    """Answers POPE's yes/no questions from a table keyed by the object asked about."""

    def __init__(self, name, answers):
        self.name, self.answers = name, answers

    def answer(self, conversations, images, sampling, seed=0):
        return [self.answers[re.search(r"Is there a (\w+) in", c[-1]["content"]).group(1)]
                for c in conversations]


OBJECTS = {"dog": "yes", "cat": "no", "car": "yes", "cup": "no", "tree": "yes"}


@pytest.fixture(scope="module")
def pope_runs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("compare")
    data = root / "pope"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "images" / "a.jpg")
    for split in ("random", "popular"):
        with open(data / f"coco_pope_{split}.json", "w") as f:
            for i, (obj, label) in enumerate(OBJECTS.items()):
                f.write(json.dumps({"question_id": i, "image": "a.jpg",
                                    "text": f"Is there a {obj} in the image?", "label": label}) + "\n")
    always_yes = Scripted("llava", {o: "Yes." for o in OBJECTS})     # right on 3 of 5
    better = Scripted("dpo", dict(OBJECTS, tree="no"))               # right on 4 of 5
    for name, model in (("base", always_yes), ("dpo", better)):
        pope.run(model, str(data), str(root / name / "pope"), progress=False)
    return root


def test_pope_runs_compared_question_by_question(pope_runs):
    rows = compare.compare([str(pope_runs / "base"), str(pope_runs / "dpo")])
    assert len(rows) == 1
    r = rows[0]
    assert (r["benchmark"], r["base_model"], r["model"]) == ("pope", "llava", "dpo")
    # 10 (split, question) pairs: always-yes is right on dog, car, tree; dpo on dog, cat,
    # car, cup in each split: gains cat and cup, loses tree -> 2 × (+2 − 1) / 10
    assert r["n"] == 10 and (r["gained"], r["lost"]) == (4, 2)
    assert r["base"] == pytest.approx(60.0) and r["other"] == pytest.approx(80.0)
    assert r["diff"] == pytest.approx(20.0)
    assert r["test"] == "mcnemar_exact" and r["p_value"] == pytest.approx(paired.mcnemar_exact(4, 2))
    assert r["se"] == pytest.approx(100 * paired.difference([0] * 4 + [1] * 6, [1] * 4 + [0] * 2 + [1] * 4)["se"])


def _judged_run(folder, benchmark, model, rows):
    os.makedirs(folder, exist_ok=True)
    write_result(str(folder), {"benchmark": benchmark, "model": model, "score": 0.0})
    with open(os.path.join(folder, compare.SCORES_FILE), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_judged_benchmarks_and_failed_judgments(tmp_path):
    # MT-Bench: (question, turn) scores; a failed judgment (None) leaves that turn out
    mt = lambda scores: [{"question_id": q, "category": "x", "turn": t, "score": s}  # noqa: E731
                         for (q, t), s in scores.items()]
    _judged_run(tmp_path / "a" / "mt-bench", "mt-bench", "llava",
                mt({(81, 1): 6.0, (81, 2): 5.0, (82, 1): 7.0, (82, 2): None}))
    _judged_run(tmp_path / "b" / "mt-bench", "mt-bench", "dpo",
                mt({(81, 1): 8.0, (81, 2): 5.0, (82, 1): 9.0, (82, 2): 4.0}))
    # MM-Vet: 0-1 per judge run, ×100; LLaVA-Bench: the model's score (second of the pair)
    _judged_run(tmp_path / "a" / "mm-vet", "mm-vet", "llava",
                [{"id": "v1", "capability": [], "scores": [0.5, 0.7]},
                 {"id": "v2", "capability": [], "scores": [0.0, 0.0]}])
    _judged_run(tmp_path / "b" / "mm-vet", "mm-vet", "dpo",
                [{"id": "v1", "capability": [], "scores": [1.0, 0.8]},
                 {"id": "v2", "capability": [], "scores": [0.2, 0.2]}])
    _judged_run(tmp_path / "a" / "llava-bench", "llava-bench", "llava",
                [{"question_id": 1, "category": "conv", "scores": [[8, 6], [8, 4]]},
                 {"question_id": 2, "category": "conv", "scores": [[7, 7], None]},
                 {"question_id": 3, "category": "conv", "scores": [[7, 3], [7, 3]]}])
    _judged_run(tmp_path / "b" / "llava-bench", "llava-bench", "dpo",
                [{"question_id": 1, "category": "conv", "scores": [[8, 7], [9, 7]]},
                 {"question_id": 2, "category": "conv", "scores": [None, None]},
                 {"question_id": 3, "category": "conv", "scores": [None, [7, 6]]}])
    # MMBench: a question counts when all its circular rounds are right
    mmb = lambda right: [{"key": f"{g}/r{k}", "group": g, "round": k, "category": "c",  # noqa: E731
                          "gold": "A", "choice": "A", "extracted": True, "correct": c}
                         for g, rounds in right.items() for k, c in enumerate(rounds)]
    _judged_run(tmp_path / "a" / "mmbench", "mmbench", "llava",
                mmb({1: [True, True], 2: [True, False], 3: [False, False]}))
    _judged_run(tmp_path / "b" / "mmbench", "mmbench", "dpo",
                mmb({1: [True, False], 2: [True, True], 3: [True, True]}))
    _judged_run(tmp_path / "b" / "llava-bench-extra", "llava-bench", "dpo", [])
    with pytest.raises(compare.CompareError, match="more than one run of .*llava-bench"):
        compare.compare([str(tmp_path / "a"), str(tmp_path / "b")])
    os.remove(tmp_path / "b" / "llava-bench-extra" / "result.json")
    rows = {r["benchmark"]: r for r in compare.compare([str(tmp_path / "a"), str(tmp_path / "b")])}
    assert set(rows) == {"mt-bench", "mm-vet", "llava-bench", "mmbench"}
    mb = rows["mmbench"]
    assert (mb["base"], mb["other"], mb["gained"], mb["lost"]) == (pytest.approx(100 / 3),
                                                                    pytest.approx(200 / 3), 2, 1)
    m = rows["mt-bench"]
    assert m["n"] == 3 and m["left_out_unscored"] == 1
    assert m["diff"] == pytest.approx((2 + 0 + 2) / 3) and (m["gained"], m["lost"]) == (2, 0)
    v = rows["mm-vet"]
    assert v["base"] == pytest.approx(30.0) and v["diff"] == pytest.approx((30 + 20) / 2)
    lb = rows["llava-bench"]   # question 2 unscored in b; a judge run that failed is left out
    assert (lb["n"], lb["left_out_unscored"]) == (2, 1)
    assert (lb["base"], lb["other"]) == (pytest.approx(4.0), pytest.approx(6.5))
    md = compare.render_markdown(list(rows.values()))
    assert "| dpo | mt-bench | score (1-10) | 6.00 | 7.33 | +1.33 [" in md
    assert "(1 unscored left out)" in md


def test_runs_over_different_questions_or_without_scores_are_errors(pope_runs, tmp_path, capsys):
    rows = [json.loads(line) for line in open(pope_runs / "dpo" / "pope" / "scores.jsonl")]
    other = tmp_path / "limited" / "pope"
    _judged_run(other, "pope", "dpo", rows[:-1])
    with pytest.raises(compare.CompareError, match=r"not asked the same questions \(10 in .*, 9 in"):
        compare.compare([str(pope_runs / "base"), str(tmp_path / "limited")])
    _judged_run(other, "pope", "dpo", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    with pytest.raises(compare.CompareError, match="scores.jsonl: a row lacks or garbles 'label'"):
        compare.compare([str(pope_runs / "base"), str(tmp_path / "limited")])
    os.remove(other / compare.SCORES_FILE)
    with pytest.raises(compare.CompareError, match="scores.jsonl: missing"):
        compare.compare([str(pope_runs / "base"), str(tmp_path / "limited")])
    # the command line: an error is one line and exit status 2; a good run prints and writes
    assert cli.main(["compare", str(pope_runs / "base"), str(tmp_path / "limited")]) == 2
    assert "error:" in capsys.readouterr().err
    with open(other / compare.SCORES_FILE, "w") as f:
        f.write("{not json\n")
    assert cli.main(["compare", str(pope_runs / "base"), str(tmp_path / "limited")]) == 2
    assert "scores.jsonl, line 1: not JSON" in capsys.readouterr().err
    out = tmp_path / "report"
    assert cli.main(["compare", str(pope_runs / "base"), str(pope_runs / "dpo"),
                     "--out", str(out)]) == 0
    assert "| dpo | pope | accuracy (%) | 60.00 | 80.00 | +20.00 [" in capsys.readouterr().out
    assert json.load(open(out / "compare.json"))[0]["gained"] == 4
