"""`python -m mmalign_jax.experiments.paper_table`: its config and its table (the full run is
measured, not tested: docs/RESULTS.md)."""
import json
import os

import pytest

from mmalign_jax.experiments import paper_table
from mmalign_jax.pipeline import recipe


def _summary(acc, words=10.0):
    return {"n": 4, "accuracy": acc, "strict_accuracy": acc / 2, "hallucination_rate": 0.25,
            "incoherent_rate": 0.0, "words": words, "words_median": words}


def test_config_is_the_pipeline_with_the_text_stage(tmp_path):
    p = paper_table.config(str(tmp_path), seeds="0,1")
    assert p.base_lm_enabled and p.base_lm.data.train_split == "sft_text_train"
    assert p.methods.split(",") == ["standard_sft", "rejection_sampling", "steerlm", "dpo"]
    assert recipe.method_seeds(p) == [0, 1]
    recipe.validate(p)


def test_table_has_mean_and_std_over_seeds(tmp_path):
    results = {"sft": recipe.aggregate([{"vqa": _summary(0.5), "text": _summary(0.25)}]),
               "dpo": recipe.aggregate([{"vqa": _summary(0.6), "text": _summary(0.3)},
                                        {"vqa": _summary(0.8), "text": _summary(0.5)}])}
    assert results["dpo"]["vqa"]["accuracy"]["mean"] == 0.7

    def marks(right):   # one run's per-question 0/1, the same for every set and metric
        return {s: {m: dict(enumerate(right)) for m in recipe.PAIRED_METRICS} for s in ("vqa", "text")}

    results["dpo"]["vs_sft"] = recipe.versus([marks([1, 0, 0, 1])], [marks([1, 1, 0, 1]),
                                                                     marks([1, 1, 1, 1])])
    assert results["dpo"]["vs_sft"]["vqa"]["accuracy"]["diff"] == 0.375   # shares 1, 1, .5, 1
    assert abs(results["dpo"]["vqa"]["accuracy"]["std"] - 0.1) < 1e-12   # population std
    t = paper_table.table(results, "0,1")
    assert [r.details["key"] for r in t.rows] == ["sft", "dpo"]
    md = paper_table.report.render_markdown(t)
    assert "| DPO | 0.700 ± 0.100 |" in md and "| + visual SFT (≈ LLaVA-1.5) | 0.500 |" in md
    assert "- DPO against the SFT model, same 4 questions (difference [95 % interval] p): " \
           "VQA accuracy +0.375 [" in md
    paths = paper_table.report.write_report(t, str(tmp_path))
    assert json.load(open(os.path.join(tmp_path, "table.json")))["rows"][1]["model"] == "DPO"
    assert all(os.path.exists(p) for p in paths.values())


@pytest.mark.slow
def test_same_seed_same_results(tmp_path):
    """The experiment's flow twice from empty folders (quick settings, one seed, DPO as the
    method — each method stage is the same trainer): every sampled candidate, every score,
    every graded answer and the table's numbers are identical."""
    results = []
    for name in ("a", "b"):
        p = paper_table.config(str(tmp_path / name), seeds="0", quick=True)
        p.methods, p.progress = "dpo", False
        recipe.run(p)
        results.append(json.load(open(os.path.join(p.workdir, "results.json"))))
    assert results[0] == results[1]
    assert set(results[0]) == {"base_lm", "sft", "dpo"}
    assert results[0]["dpo"]["vqa"]["words"]["mean"] > 0   # answers were generated and graded
    for folder, files in (("candidates", ("train", "eval")), ("scored", ("train", "eval")),
                          ("evaluation", ("dpo.dpo.vqa", "dpo.dpo.text", "sft.sft.vqa"))):
        for f in files:
            texts = [open(os.path.join(tmp_path, n, "work", folder, f"{f}.jsonl")).read()
                     for n in ("a", "b")]
            assert texts[0] == texts[1] and texts[0].count("\n") > 0
