"""`python -m mmalign_jax.pipeline`: every stage of the recipe on the tiny demo, cached.

Test-sized: 16 preference prompts, 2–3 training steps per stage, 8-token samples. What is
checked is the plumbing (each stage's output feeds the next, markers, skipping, rerunning
what changed); the demo's numbers are measured by the real run (README, docs/RESULTS.md).
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mmalign_jax.data import records as records_lib
from mmalign_jax.pipeline import recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One device: the stages' plumbing is what is tested here (sharding is tested in test_train).
TRAIN = {"train.global_batch_size": 8, "train.max_steps": 2, "train.eval_every": 0,
         "train.checkpoint_every": 100, "train.log_every": 1, "mesh.num_devices": 1,
         "mesh.shape.data": 1}


def pipeline_config(workdir):
    spec = importlib.util.spec_from_file_location("_pipeline_cfg", os.path.join(ROOT, "configs", "pipeline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = mod.get_config("demo")
    p.workdir = str(workdir)
    p.progress = False
    p.demo.update(n_prompts=16, n_eval_prompts=8, n_sft_train=64, n_sft_eval=8,
                  n_text_train=16, n_text_eval=8)
    p.sample.update(n=4, temperature=1.5, max_new_tokens=8, batch_size=8)
    p.pairs.rule, p.pairs.margin = "all_pairs_with_margin", 1
    # 12 > the 8 held-out questions of the data files: the rest continue the held-out split
    p.evaluate.update(n_prompts=12, batch_size=8, max_new_tokens=8)
    for stage in ("sft", "dpo", "rejection_sampling", "steerlm"):
        c = p[stage]
        for k, v in TRAIN.items():
            *parents, leaf = k.split(".")
            node = c
            for part in parents:
                node = node[part]
            node[leaf] = v
    p.sft.data.demo.vision_pretrain_steps = 5
    p.sft.data.seq_len = 112
    return p


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    p = pipeline_config(workdir)
    return p, recipe.run(p)


def test_every_stage_runs_and_feeds_the_next(first_run):
    p, out = first_run
    assert out["skipped"] == []
    assert out["ran"] == ["data", "sft", "sample_train", "annotate_train", "sample_eval",
                          "annotate_eval", "preferences", "dpo", "rejection_sampling",
                          "steerlm", "evaluate"]
    # samples: every prompt got n candidates from the SFT model, with their source
    cands = records_lib.load_records(out["sample_train"]["out"], strict=True).records
    assert len(cands) == 16
    assert all(len(r.responses) == 4 for r in cands)
    assert all(r.responses[0].source.startswith("sft@T1.5/seed=0/sample=") for r in cands)
    # annotation: each scored by the demo scorer, exactly as the scorer scores it
    from mmalign_jax.demo.scorer import DemoScorer
    scored = records_lib.load_records(out["annotate_train"]["scored"], strict=True).records
    assert len(scored) == 16
    for r in scored:
        assert [x.scores for x in r.responses] == DemoScorer().annotate(r.to_json())
    assert out["annotate_train"]["pairs"]["pairs"] > 0
    # training stages started from the SFT model and finished
    for m in ("dpo", "rejection_sampling", "steerlm"):
        cfg = json.load(open(os.path.join(p.workdir, m, "config.json")))
        assert cfg["model"]["init_from"] == os.path.join(p.workdir, "sft")
        assert out[m]["steps"] == 2
    res = json.load(open(os.path.join(p.workdir, "results.json")))
    assert set(res) == {"sft", "dpo", "rejection_sampling", "steerlm", "steerlm_terse"}
    for row in res.values():
        assert row["runs"] == 1 and row["vqa"]["n"] == 12 and row["text"]["n"] == 12
        acc = row["vqa"]["accuracy"]
        assert acc["values"] == [acc["mean"]] and 0.0 <= acc["mean"] <= 1.0
    assert "| dpo |" in open(os.path.join(p.workdir, "results.md")).read()


def test_evaluation_continues_the_held_out_split_and_compares_each_method_with_sft(first_run):
    from mmalign_jax.demo.generate import make_sft_records

    p, _ = first_run
    ev = os.path.join(p.workdir, "evaluation")
    graded = {label: [json.loads(line) for line in open(os.path.join(ev, f"{label}.{label}.vqa.jsonl"))]
              for label in ("sft", "dpo")}
    in_file = [json.loads(line)["id"] for line in open(os.path.join(p.workdir, "data", "sft_eval.jsonl"))]
    ids = [g["id"] for g in graded["sft"]]
    assert ids[:8] == in_file and len(set(ids)) == 12
    assert ids == [r["id"] for r in make_sft_records(12, p.seed, "eval", "vqa")]
    assert [g["id"] for g in graded["dpo"]] == ids
    res = json.load(open(os.path.join(p.workdir, "results.json")))
    assert "vs_sft" not in res["sft"]
    for label in ("dpo", "rejection_sampling", "steerlm", "steerlm_terse"):
        assert set(res[label]["vs_sft"]) == {"vqa", "text"}
    d = res["dpo"]["vs_sft"]["vqa"]["accuracy"]
    sft_right = [g["correct"] for g in graded["sft"]]
    dpo_right = [g["correct"] for g in graded["dpo"]]
    assert d["n"] == 12
    assert d["diff"] == pytest.approx((sum(dpo_right) - sum(sft_right)) / 12)
    assert d["gained"] == sum(1 for s, o in zip(sft_right, dpo_right) if o and not s)
    assert d["lost"] == sum(1 for s, o in zip(sft_right, dpo_right) if s and not o)
    strict = res["dpo"]["vs_sft"]["vqa"]["strict_accuracy"]
    assert strict["other"] == pytest.approx(res["dpo"]["vqa"]["strict_accuracy"]["mean"])
    assert "Against the SFT model on the same 12 held-out questions" in \
        open(os.path.join(p.workdir, "results.md")).read()


def test_second_run_does_nothing_and_says_so(first_run, capsys):
    p, _ = first_run
    out = recipe.run(p)
    assert out["ran"] == []
    assert "nothing to do" in capsys.readouterr().out


def test_progress_bars_on_or_off_do_not_rerun_anything(first_run, capsys):
    p, _ = first_run
    assert p.progress is False
    p.progress = True
    try:
        assert recipe.run(p)["ran"] == []
    finally:
        p.progress = False
    assert "nothing to do" in capsys.readouterr().out


def test_changed_stage_settings_rerun_that_stage_only(first_run):
    p, _ = first_run
    stage = os.path.join(p.workdir, "stages", "rejection_sampling.json")
    old_fp = json.load(open(stage))["fingerprint"]
    # Same number of steps: resuming the finished run in place would train nothing.
    p.rejection_sampling.optim.lr = 1e-4
    out = recipe.run(p)
    assert out["ran"] == ["rejection_sampling", "evaluate"]
    wd = os.path.join(p.workdir, "rejection_sampling")
    assert json.load(open(os.path.join(wd, "config.json")))["optim"]["lr"] == 1e-4
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]     # trained again from 0
    old = json.load(open(os.path.join(f"{wd}.superseded-{old_fp}", "config.json")))
    assert old["optim"]["lr"] != 1e-4                              # the old run, kept aside


def test_stage_outputs_moved_aside_only_when_settings_change(tmp_path):
    out = tmp_path / "cands.jsonl"
    calls = []

    def work(tag, fail=False):
        def fn():
            calls.append(tag)
            with open(out, "a") as f:
                f.write(tag + "\n")
            (tmp_path / "cands.jsonl.settings.json").write_text(tag)
            if fail:
                raise KeyboardInterrupt
            return {"tag": tag}
        return fn

    stages = recipe.Stages(str(tmp_path))
    assert stages.run("s", {"t": 1}, work("a"), outputs=[str(out)]) == {"tag": "a"}
    assert stages.run("s", {"t": 1}, work("x"), outputs=[str(out)]) == {"tag": "a"}  # skipped
    with pytest.raises(KeyboardInterrupt):           # new settings, interrupted halfway
        stages.run("s", {"t": 2}, work("b1", fail=True), outputs=[str(out)])
    fp1 = recipe.Stages.fingerprint({"t": 1})
    assert (tmp_path / f"cands.jsonl.superseded-{fp1}").read_text() == "a\n"
    assert (tmp_path / f"cands.jsonl.settings.json.superseded-{fp1}").read_text() == "a"
    # the rerun resumes its own half-done output instead of moving it aside
    assert stages.run("s", {"t": 2}, work("b2"), outputs=[str(out)]) == {"tag": "b2"}
    assert out.read_text() == "b1\nb2\n" and calls == ["a", "b1", "b2"]


def test_custom_task_needs_a_checkpoint_and_a_real_annotator(tmp_path):
    p = pipeline_config(tmp_path)
    p.task = "custom"
    with pytest.raises(recipe.PipelineError, match="checkpoint"):
        recipe.run(p)
    p.checkpoint, p.prompts, p.image_root = str(tmp_path), __file__, str(tmp_path)
    with pytest.raises(recipe.PipelineError, match="gemini"):
        recipe.run(p)


def test_cli_reports_config_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmalign_jax.pipeline",
                        "--config", os.path.join(ROOT, "configs", "pipeline.py"),
                        f"--config.workdir={tmp_path}", "--config.methods=dpo,ppo"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "ppo" in r.stderr


def test_upstream_change_reruns_downstream_even_with_the_same_output_path(tmp_path):
    """The demo's prompts file keeps its name when the number of prompts changes: a stage
    keyed on the path alone kept its stale result (standard SFT trained on 1,024 reference
    answers after the prompts grew to 5,120). The upstream fingerprint is what propagates."""
    calls = []

    def run(n_prompts):
        stages = recipe.Stages(str(tmp_path))
        data = stages.run("data", {"n": n_prompts}, lambda: calls.append("data") or {"path": "p.jsonl"})
        ref = stages.run("reference", {"prompts": data["path"]},
                         lambda: calls.append("reference") or {"n": n_prompts}, after=["data"])
        return stages, ref

    run(1024)
    stages, ref = run(1024)
    assert calls == ["data", "reference"] and stages.skipped == ["data", "reference"]
    stages, ref = run(5120)
    assert calls == ["data", "reference", "data", "reference"] and ref == {"n": 5120}
    with pytest.raises(recipe.StageError, match="runs after .*'nope'"):
        recipe.Stages(str(tmp_path)).run("x", {}, dict, after=["nope"])


def test_every_stage_records_the_fingerprints_of_the_stages_it_reads(first_run):
    p, _ = first_run
    markers = {os.path.basename(f)[:-5]: json.load(open(f))
               for f in glob.glob(os.path.join(p.workdir, "stages", "*.json"))}
    after = {name: m["settings"].get("after", {}) for name, m in markers.items()}
    for name, deps in after.items():
        for dep, fp in deps.items():
            assert markers[dep]["fingerprint"] == fp, (name, dep)
    assert set(after["sft"]) == {"data"} and set(after["sample_train"]) == {"data", "sft"}
    assert set(after["annotate_eval"]) == {"sample_eval"}
    assert set(after["preferences"]) == {"annotate_train", "annotate_eval"}
    assert set(after["dpo"]) == {"preferences", "sft"}
    # evaluation reads every trained model, every seed's
    trained = {n for n in markers if n.split("-seed")[0] in recipe.METHODS}
    assert trained and set(after["evaluate"]) == {"data", "sft"} | trained


def test_input_fingerprint_follows_content_not_path(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"id": "a"}\n')
    first = recipe.input_fingerprint(str(f))
    assert recipe.input_fingerprint(str(f)) == first
    f.write_text('{"id": "b"}\n')                   # same size, same path, other content
    assert recipe.input_fingerprint(str(f)) != first
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)
    d1 = recipe.input_fingerprint(str(ckpt))
    (ckpt / "model.safetensors").write_bytes(b"y" * 11)
    assert recipe.input_fingerprint(str(ckpt)) != d1 and d1.startswith("dir:")


def test_custom_task_prompts_edited_in_place_rerun_sampling_and_what_follows(tmp_path, monkeypatch):
    """A custom task's prompts file keeps its path when the user edits it: sampling (and
    everything after it) must rerun; an untouched file reruns nothing. The stage bodies are
    stand-ins: what is tested is `run`'s wiring of settings."""
    calls = []
    monkeypatch.setattr(recipe, "sample", lambda p, model, split, prompts: calls.append(
        f"sample_{split}") or {"out": str(tmp_path / f"{split}.cands")})
    monkeypatch.setattr(recipe, "annotate_split", lambda p, split, cands: calls.append(
        f"annotate_{split}") or {"scored": cands})
    monkeypatch.setattr(recipe, "build_training_data", lambda p, scored, standard: calls.append(
        "preferences") or {"data_dir": str(tmp_path / "prefs")})
    prompts, ckpt = tmp_path / "prompts.jsonl", tmp_path / "ckpt"
    prompts.write_text('{"id": "q1"}\n')
    ckpt.mkdir()
    p = pipeline_config(tmp_path / "work")
    p.task, p.methods, p.annotate.annotator = "custom", "", "gemini"
    p.checkpoint, p.prompts, p.image_root = str(ckpt), str(prompts), str(tmp_path)
    recipe.run(p)
    assert calls == ["sample_train", "annotate_train", "preferences"]
    assert recipe.run(p)["ran"] == [] and len(calls) == 3
    prompts.write_text('{"id": "q2"}\n')
    assert recipe.run(p)["ran"] == ["sample_train", "annotate_train", "preferences"]
    assert calls[3:] == ["sample_train", "annotate_train", "preferences"]
