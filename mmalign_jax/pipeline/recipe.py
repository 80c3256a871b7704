"""The published recipe end to end, one command:

    SFT → sample 4 candidates per prompt → annotate → pairs → {DPO, rejection sampling, SteerLM}
        → evaluate

    python -m mmalign_jax.pipeline --config configs/pipeline.py            # offline demo
    python -m mmalign_jax.pipeline --config configs/pipeline.py:llava-1.5-13b \
        --config.checkpoint=/ckpt/llava-1.5-13b-hf --config.prompts=/data/prompts.jsonl \
        --config.eval_prompts=/data/heldout.jsonl --config.image_root=/data/images \
        --config.annotate.annotator=gemini

Every stage writes into `<workdir>/<stage>/` and, when it has finished, a marker
`<workdir>/stages/<stage>.json` holding the stage's settings and result. A rerun skips a stage
whose marker matches its current settings (and says so); a stage interrupted halfway
resumes inside itself — training from its last checkpoint, sampling and annotation from
their append-only outputs — so nothing finished is redone and nothing paid for is lost.
Changing a stage's settings reruns it and every stage downstream of it: a stage's marker
also holds the fingerprints of the stages it reads from (`after=`), so a change propagates
even where the upstream's output paths stay the same. A custom task's own inputs (prompts
files, checkpoint) are fingerprinted by content (`input_fingerprint`): a prompts file edited
in place reruns sampling. The outputs a rerun stage would
otherwise resume from (a training workdir, a candidates file) are first moved aside to
`<path>.superseded-<old fingerprint>`.

The demo (default): the library writes the synthetic visual task, trains the tiny SFT model
(its vision tower pretrained first, `demo/vision_pretrain.py`), samples candidates
from it, lets the ground-truth scorer annotate them (the same `Annotator` interface as
Gemini), trains the three methods from the SFT model, and grades every model's greedy
answers to held-out questions (`demo/answer_quality.py`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Dict, List

import ml_collections as mlc

from mmalign_jax import configs
from mmalign_jax.stages import Stages, StageError  # noqa: F401  (Stages re-exported)

log = logging.getLogger("mmalign_jax.pipeline")

METHODS = ("standard_sft", "rejection_sampling", "steerlm", "dpo", "simpo")
DEMO_EVAL_SPLITS = {"vqa": "sft_eval.jsonl", "text": "sft_text_eval.jsonl"}


class PipelineError(StageError):
    """A configuration or stage problem, with a sentence saying what to do."""


# ------------------------------------------------------------------------------ configs

def load_config(method: str, preset: str = "demo") -> mlc.ConfigDict:
    """`mmalign_jax.configs.<method>.get_config(preset)`: the config `--config
    configs/<method>.py:<preset>` gives the CLI (the repository's file re-exports it)."""
    try:
        return configs.load(method, preset)
    except ValueError as e:
        if method in configs.NAMES:
            raise
        raise PipelineError(str(e)) from None


def _as_dict(x) -> dict:
    if isinstance(x, mlc.ConfigDict):
        return x.to_dict()
    return dict(x or {})


# ------------------------------------------------------------------------------ stages

# ----------------------------------------------------------------------- the stage bodies

def _train(c: mlc.ConfigDict) -> dict:
    from mmalign_jax.train import loop
    summary = loop.train(c)
    return {"workdir": c.workdir, **{k: v for k, v in summary.items()
                                     if isinstance(v, (int, float)) and k != "memory"}}


def demo_data(p) -> dict:
    """The synthetic task: prompts (their made-up candidates are replaced by samples later),
    SFT conversations, text tasks and held-out splits, the SFT stage's TFDS splits and the
    demo tokenizer (`demo/recipe.py`)."""
    from mmalign_jax.demo import recipe as demo_recipe
    d = p.demo
    return demo_recipe.write_data(
        os.path.join(p.workdir, "data"), d.n_prompts, d.n_eval_prompts, p.seed,
        progress=p.progress, splits=("sft_train", "sft_eval", "sft_text_train", "sft_text_eval"),
        n_sft_train=d.n_sft_train, n_sft_eval=d.n_sft_eval, n_text_train=d.n_text_train,
        n_text_eval=d.n_text_eval)


def stage_config(p, template: mlc.ConfigDict, name: str) -> mlc.ConfigDict:
    """A demo training stage on the SFT splits and tokenizer made by the data stage; a
    randomly initialised model gets the demo's pretrained vision tower (made by the stage)."""
    from mmalign_jax.demo import recipe as demo_recipe, vision_pretrain
    c = copy.deepcopy(template)
    c.workdir = os.path.join(p.workdir, name)
    c.seed = p.seed
    data = os.path.join(p.workdir, "data")
    demo_recipe.use_data(c, {"data_dir": os.path.join(data, "tfds"),
                             "tokenizer": os.path.join(data, "tokenizer")})
    if "demo" in c.data and c.data.demo.pretrain_vision:
        c.model.vision_init = os.path.join(c.workdir, "vision_pretrain",
                                           vision_pretrain.PARAMS_FILE)
    c.train.progress = p.progress
    return c


def _train_demo_stage(p, c: mlc.ConfigDict) -> dict:
    """A demo stage's run: its vision tower first when it starts from random weights."""
    if c.model.vision_init and not c.model.init_from:
        from mmalign_jax.demo import recipe as demo_recipe
        demo_recipe.vision_tower(c, os.path.join(p.workdir, "data",
                                                 demo_recipe.SPLITS["sft_train"]))
    return _train(c)


def sft_config(p) -> mlc.ConfigDict:
    return stage_config(p, p.sft, "sft")


def prompt_files(p) -> Dict[str, str]:
    if p.task == "demo":
        data = os.path.join(p.workdir, "data")
        return {"train": os.path.join(data, "train.jsonl"), "eval": os.path.join(data, "eval.jsonl")}
    files = {"train": p.prompts}
    if p.eval_prompts:
        files["eval"] = p.eval_prompts
    return files


def input_fingerprint(path: str) -> str:
    """What a user's input holds, for the settings of the stages that read it: a prompts file
    edited in place keeps its path. A file: the sha256 of its bytes; a folder (a checkpoint
    of gigabytes): each file's relative name, size and modification time, not its bytes.
    Images a prompts file names are not covered: replace an image under a new name."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                f = os.path.join(root, name)
                st = os.stat(f)
                h.update(f"{os.path.relpath(f, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()[:16]
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def user_inputs(p, *paths: str) -> dict:
    """`{"inputs": {path: input_fingerprint}}` for a custom task's own files (the demo's are
    made by the data stage, whose fingerprint its readers already carry); {} for the demo."""
    if p.task == "demo":
        return {}
    return {"inputs": {q: input_fingerprint(q) for q in paths if q and os.path.exists(q)}}


def image_root(p) -> str:
    return os.path.join(p.workdir, "data", "images") if p.task == "demo" else p.image_root


def candidates_path(p, split: str) -> str:
    return os.path.join(p.workdir, "candidates", f"{split}.jsonl")


def sample(p, sft_model: str, split: str, prompts: str) -> dict:
    from mmalign_jax.generate import candidates
    c = candidates.default_config()
    c.checkpoint = sft_model
    c.records = prompts
    c.image_root = image_root(p)
    c.out = candidates_path(p, split)
    c.seed = p.seed
    c.progress = p.progress
    c.batch_size = p.sample.batch_size
    c.mesh = copy.deepcopy(p.sft.mesh)        # the devices the training stages use
    c.dtype = p.sample.dtype
    for k in ("n", "temperature", "top_p", "top_k", "max_new_tokens"):
        c.sampling[k] = p.sample[k]
    summary = candidates.run(c)
    return {"out": c.out, **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}


def make_annotator(p):
    from mmalign_jax import annotate
    a = p.annotate
    if a.annotator == "demo":
        from mmalign_jax.demo.annotator import DemoAnnotator
        return DemoAnnotator()
    if a.annotator == "gemini":
        from mmalign_jax.remote import RateLimiter, make_client
        client = make_client(a.provider, a.model, base_url=a.base_url or None)
        limiter = RateLimiter(a.rate_per_minute) if a.rate_per_minute else None
        return annotate.LLMAnnotator(client, image_root=image_root(p), rate_limiter=limiter)
    raise PipelineError(f"annotate.annotator {a.annotator!r}: use demo or gemini")


def annotate_split(p, split: str, candidates_path: str) -> dict:
    """Scores every candidate (resumable), then writes scored records for the trainers."""
    from mmalign_jax import annotate
    from mmalign_jax.data import pairs as pairs_lib
    from mmalign_jax.data import records as records_lib

    loaded = records_lib.load_records(candidates_path, strict=True)
    recs = [r for r in loaded.records if r.responses]
    out = os.path.join(p.workdir, "annotations", f"{split}.jsonl")
    annotator = make_annotator(p)
    report = annotate.annotate_records(recs, annotator, out, concurrency=p.annotate.concurrency,
                                       progress=p.progress)
    if not report.complete:
        raise PipelineError(
            f"annotation of {split}: {len(report.failed)} prompt(s) failed (see "
            f"{annotate.output_paths(out)['report']}); rerun the pipeline to retry only those")
    scored = annotate.apply_annotations(recs, out)
    path = os.path.join(p.workdir, "scored", f"{split}.jsonl")
    records_lib.write_records(path, scored)
    pairs = pairs_lib.make_pairs(scored, p.pairs.rule, seed=p.seed, margin=p.pairs.margin)
    return {"scored": path, "annotations": out, "candidates": report.candidates,
            "cost_usd": report.cost_usd, "pairs": pairs_lib.pair_stats(scored, pairs)}


def reference_answers(p, split: str, prompts: str) -> str:
    """Standard SFT's data: the prompts with the dataset's own answers (demo: the canonical
    answer in `meta.answer`; custom: prompt records that end with an assistant turn)."""
    from mmalign_jax.data import records as records_lib
    recs = records_lib.load_records(prompts, strict=True).records
    out = []
    for r in recs:
        conv = [dict(t) for t in r.conversation]
        if conv[-1]["role"] != "assistant":
            answer = (r.meta or {}).get("answer")
            if not answer:
                raise PipelineError(
                    f"{prompts}: record {r.id!r} has no reference answer (neither a final "
                    "assistant turn nor meta.answer): standard_sft needs one per prompt")
            conv.append({"role": "assistant", "content": answer})
        out.append(dataclasses.replace(r, conversation=conv, responses=[]))
    path = os.path.join(p.workdir, "standard", f"{split}.jsonl")
    records_lib.write_records(path, out)
    return path


def build_training_data(p, scored: Dict[str, str], standard: Dict[str, str]) -> dict:
    """One TFDS dataset: scored candidates (`train`/`eval`) and, for standard SFT, the
    reference answers (`standard_train`/`standard_eval`)."""
    from mmalign_jax.data import tfds_builder
    out = os.path.join(p.workdir, "preferences", "tfds")
    splits = dict(scored)
    splits.update({f"standard_{k}": v for k, v in standard.items()})
    tfds_builder.build(splits, image_root(p), out, strict=True, overwrite=True,
                       progress=p.progress)
    return {"data_dir": out, "splits": sorted(splits)}


def method_config(p, method: str, seed: int, init_from: str, data_dir: str,
                  has_eval: bool) -> mlc.ConfigDict:
    c = copy.deepcopy(p[method])
    c.workdir = method_workdir(p, method, seed)
    c.seed = seed
    c.data.source = "tfds"
    c.data.data_dir = data_dir
    prefix = "standard_" if method == "standard_sft" else ""
    c.data.train_split = f"{prefix}train"
    c.data.eval_split = f"{prefix}eval" if has_eval else ""
    if not has_eval:
        c.train.eval_every = 0
    c.data.pair_rule = p.pairs.rule
    c.data.pair_margin = p.pairs.margin
    c.train.progress = p.progress
    c.prepare = ""                       # the pipeline made the data and the SFT model
    if p.task == "demo" or os.path.exists(os.path.join(init_from, "checkpoints")):
        c.model.init_from = init_from
    else:
        c.model.init_from = ""
        c.model.hf_checkpoint = init_from
    if p.task == "demo":
        c.data.tokenizer = os.path.join(p.workdir, "data", "tokenizer")
    elif not c.data.tokenizer and c.model.init_from:
        from mmalign_jax import loading
        prev = loading.run_config(init_from)
        c.data.tokenizer = prev.data.tokenizer or prev.model.hf_checkpoint
    return c


def method_workdir(p, method: str, seed: int) -> str:
    return os.path.join(p.workdir, method if seed == p.seed else f"{method}-seed{seed}")


def method_seeds(p) -> List[int]:
    return [int(x) for x in str(p.method_seeds).split(",") if x.strip()] or [p.seed]


def evaluate_demo(p, models: Dict[str, List[str]]) -> dict:
    """Greedy answers of every model to held-out questions, graded by the ground truth."""
    from mmalign_jax.demo import answer_quality
    from mmalign_jax.data.records import write_jsonl
    from mmalign_jax.evaluate import answers
    from mmalign_jax.generate import candidates

    sets = demo_eval_sets(p)
    per_run: Dict[str, List[dict]] = {}
    correct: Dict[str, List[dict]] = {}    # label -> per run: {set: {metric: {id: 0/1}}}
    for label, paths in models.items():
        steer = None
        if label.startswith("steerlm"):
            targets = candidates.parse_targets(p.evaluate.steerlm_attributes[label])
            fmt = p.steerlm.data.steerlm_format
            steer = (lambda conv, t=targets, f=fmt: candidates.condition(conv, t, f))
        for path in paths:
            m = answers.load_model(path, name=label)
            row, marks = {}, {}
            for name, recs in sets.items():
                summary, graded = answer_quality.evaluate_model(
                    m.model, m.variables, m.tokenizer, recs, template=m.template,
                    batch_size=p.evaluate.batch_size, max_new_tokens=p.evaluate.max_new_tokens,
                    condition=steer)
                row[name] = summary
                marks[name] = {metric: {g["id"]: float(g[key]) for g in graded}
                               for metric, key in PAIRED_METRICS.items()}
                tag = os.path.basename(os.path.normpath(path))
                write_jsonl(os.path.join(p.workdir, "evaluation", f"{label}.{tag}.{name}.jsonl"),
                            graded)
            per_run.setdefault(label, []).append(row)
            correct.setdefault(label, []).append(marks)
            log.info("%s (%s): VQA accuracy %.3f, hallucination %.3f, words %.1f; text "
                     "accuracy %.3f", label, path, row["vqa"]["accuracy"],
                     row["vqa"]["hallucination_rate"], row["vqa"]["words"], row["text"]["accuracy"])
    results = {label: aggregate(rows) for label, rows in per_run.items()}
    for label, r in results.items():
        if label != BASELINE and BASELINE in correct:
            r["vs_sft"] = versus(correct[BASELINE], correct[label])
    table = results_table(results)
    with open(os.path.join(p.workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(p.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table)
    return {"results": os.path.join(p.workdir, "results.json")}


SUMMARY_METRICS = ("accuracy", "strict_accuracy", "hallucination_rate", "incoherent_rate", "words")
# Compared question by question against the model every method starts from.
BASELINE = "sft"
PAIRED_METRICS = {"accuracy": "correct", "strict_accuracy": "strict_correct"}


def demo_eval_sets(p) -> Dict[str, List[dict]]:
    """The held-out questions every model answers: the data stage's held-out SFT files,
    continued with more records of the same held-out split when `evaluate.n_prompts` asks
    for more (the demo's splits are endless and per-index, so record i is the same
    whichever file holds it); 0 = the files as they are."""
    from mmalign_jax.demo.generate import make_sft_records

    data = os.path.join(p.workdir, "data")
    with open(os.path.join(data, "manifest.json")) as f:
        manifest = json.load(f)
    n = p.evaluate.n_prompts
    sets = {}
    for name, fname in DEMO_EVAL_SPLITS.items():
        with open(os.path.join(data, fname)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if n and n > len(rows):
            rows += make_sft_records(n - len(rows), manifest["seed"], "eval", name,
                                     manifest["sft_style"], start=len(rows))
        sets[name] = rows[:n] if n else rows
    return sets


def versus(base_runs: List[dict], runs: List[dict]) -> dict:
    """Per held-out set and paired metric: `paired.difference` of a model against the
    baseline on the same questions; with several runs (method seeds) a question counts
    as the share of runs that got it right."""
    from mmalign_jax.evaluate import paired

    def share(rs, name, metric):
        ids = rs[0][name][metric]
        return {i: sum(r[name][metric][i] for r in rs) / len(rs) for i in ids}

    out: Dict[str, Any] = {}
    for name in runs[0]:
        out[name] = {m: paired.by_id(share(base_runs, name, m), share(runs, name, m),
                                     where=f"{name} {m}") for m in PAIRED_METRICS}
    return out


def aggregate(rows: List[dict]) -> dict:
    """Per held-out set and metric: mean, std (population, over seeds) and the values."""
    import statistics
    out: Dict[str, Any] = {"runs": len(rows)}
    for name in rows[0]:
        out[name] = {"n": rows[0][name]["n"]}
        for k in SUMMARY_METRICS:
            vals = [r[name][k] for r in rows]
            out[name][k] = {"mean": statistics.fmean(vals),
                            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                            "values": vals}
        out[name]["by_kind"] = [r[name].get("by_kind", {}) for r in rows]
    return out


def _ms(x: dict, digits: int = 3) -> str:
    return (f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}" if len(x["values"]) > 1
            else f"{x['mean']:.{digits}f}")


def results_table(results: Dict[str, dict]) -> str:
    head = ("| model | runs | VQA accuracy | strict | hallucination | incoherent | words | "
            "text accuracy | text hallucination |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, r in results.items():
        v, t = r["vqa"], r["text"]
        lines.append(f"| {label} | {r['runs']} | {_ms(v['accuracy'])} | {_ms(v['strict_accuracy'])} | "
                     f"{_ms(v['hallucination_rate'])} | {_ms(v['incoherent_rate'])} | "
                     f"{_ms(v['words'], 1)} | {_ms(t['accuracy'])} | {_ms(t['hallucination_rate'])} |")
    paired_rows = [(label, r["vs_sft"]) for label, r in results.items() if "vs_sft" in r]
    if paired_rows:
        n = paired_rows[0][1]["vqa"]["accuracy"]["n"]
        lines += ["", f"Against the SFT model on the same {n} held-out questions (difference, "
                  "95 % interval, p; paired per question):", "",
                  "| model | " + " | ".join(VERSUS_TITLES) + " |", "|---|---|---|---|"]
        for label, d in paired_rows:
            lines.append(f"| {label} | " + " | ".join(versus_cells(d)) + " |")
    return "\n".join(lines)


# The paired comparisons a results table shows, in order: (held-out set, metric), title.
VERSUS_COLUMNS = ((("vqa", "accuracy"), "VQA accuracy"), (("vqa", "strict_accuracy"), "VQA strict"),
                  (("text", "accuracy"), "text accuracy"))
VERSUS_TITLES = [title for _, title in VERSUS_COLUMNS]


def versus_cells(d: dict) -> List[str]:
    """`versus`'s result formatted per `VERSUS_COLUMNS` ('+0.012 [-0.004, +0.028] p=0.14')."""
    from mmalign_jax.evaluate.paired import format_difference
    return [format_difference(d[name][metric]) for (name, metric), _ in VERSUS_COLUMNS]


# ------------------------------------------------------------------------------ the run

def validate(p) -> None:  # noqa: C901
    def need(cond, msg):
        if not cond:
            raise PipelineError(msg)
    need(p.task in ("demo", "custom"), f"task {p.task!r}: use demo or custom")
    methods = [m for m in p.methods.split(",") if m]
    for m in methods:
        need(m in METHODS, f"methods: {m!r} is not one of {METHODS}")
    if p.task == "custom":
        need(bool(p.checkpoint), "task=custom needs --config.checkpoint (the SFT model: a "
             "Hugging Face folder or a training workdir)")
        need(bool(p.prompts) and os.path.isfile(p.prompts),
             f"task=custom needs --config.prompts=FILE (records ending in a user turn); "
             f"got {p.prompts!r}")
        need(bool(p.image_root), "task=custom needs --config.image_root")
    need(p.annotate.annotator in ("demo", "gemini"), "annotate.annotator: demo | gemini")
    if p.task == "custom":
        need(p.annotate.annotator != "demo", "the demo annotator only knows the demo task: "
             "use --config.annotate.annotator=gemini")


def run(p) -> dict:
    """Run (or finish) every stage; returns {stage: result}."""
    validate(p)
    os.makedirs(p.workdir, exist_ok=True)
    stages = Stages(p.workdir)
    out: Dict[str, Any] = {}
    settings = lambda *keys: {k: _as_dict(p[k]) if isinstance(p[k], mlc.ConfigDict) else p[k]  # noqa: E731
                              for k in keys}

    models: Dict[str, List[str]] = {}
    if p.task == "demo":
        out["data"] = stages.run("data", settings("seed", "demo"), lambda: demo_data(p))
        sft = sft_config(p)
        sft_after = ["data"]
        if p.base_lm_enabled:
            # The study's starting point is an instruction-tuned LLM (Vicuna) that visual
            # tuning then degrades: train the tiny LM on the text tasks first.
            base = stage_config(p, p.base_lm, "base_lm")
            out["base_lm"] = stages.run("base_lm", {"data": out["data"], "config": base.to_dict()},
                                        lambda: _train_demo_stage(p, base),
                                        outputs=[base.workdir],
                                        after=["data"])
            sft.model.init_from = base.workdir
            models["base_lm"] = [base.workdir]
            sft_after.append("base_lm")
        out["sft"] = stages.run("sft", {"data": out["data"], "config": sft.to_dict()},
                                lambda: _train_demo_stage(p, sft), outputs=[sft.workdir],
                                after=sft_after)
        sft_model = sft.workdir
    else:
        sft_model = p.checkpoint
    # Upstream stages of the demo (a custom task's prompts and checkpoint are the user's files).
    data_stage = ["data"] if "data" in out else []
    sft_stage = ["sft"] if "sft" in out else []

    scored = {}
    for split, prompts in prompt_files(p).items():
        cand = stages.run(f"sample_{split}",
                          {"model": sft_model, "prompts": prompts, "upstream": out.get("sft"),
                           **settings("seed", "sample"), **user_inputs(p, prompts, sft_model)},
                          lambda split=split, prompts=prompts: sample(p, sft_model, split, prompts),
                          outputs=[candidates_path(p, split)], after=data_stage + sft_stage)
        ann = stages.run(f"annotate_{split}",
                         {"candidates": cand, **settings("seed", "annotate", "pairs")},
                         lambda split=split, cand=cand: annotate_split(p, split, cand["out"]),
                         after=[f"sample_{split}"])
        out[f"sample_{split}"], out[f"annotate_{split}"] = cand, ann
        scored[split] = ann["scored"]
    methods = [m for m in p.methods.split(",") if m]
    standard = {}
    if "standard_sft" in methods:
        for split, prompts in prompt_files(p).items():
            standard[split] = stages.run(
                f"reference_{split}", {"prompts": prompts, "upstream": out.get("data"),
                                       **user_inputs(p, prompts)},
                lambda split=split, prompts=prompts: {"path": reference_answers(p, split, prompts)},
                after=data_stage)["path"]
    prefs = stages.run("preferences", {"scored": {s: out[f"annotate_{s}"] for s in scored},
                                       "standard": standard},
                       lambda: build_training_data(p, scored, standard),
                       after=[f"annotate_{s}" for s in scored] + [f"reference_{s}" for s in standard])
    out["preferences"] = prefs

    models["sft"] = [sft_model]
    trained = [s for s in ("base_lm", "sft") if s in out]
    for method in methods:
        for seed in method_seeds(p):
            c = method_config(p, method, seed, sft_model, prefs["data_dir"], "eval" in scored)
            name = method if seed == p.seed else f"{method}-seed{seed}"
            out[name] = stages.run(name, {"preferences": prefs, "upstream": out.get("sft"),
                                          "config": c.to_dict()},
                                   lambda c=c: _train(c), outputs=[c.workdir],
                                   after=["preferences"] + sft_stage)
            trained.append(name)
            labels = list(p.evaluate.steerlm_attributes) if method == "steerlm" else [method]
            for label in labels:
                models.setdefault(label, []).append(c.workdir)

    if p.task == "demo" and p.evaluate.enabled:
        out["evaluate"] = stages.run(
            "evaluate", {"models": models, "upstream": {k: out.get(k) for k in models},
                         **settings("evaluate")},
            lambda: evaluate_demo(p, models), after=data_stage + trained)

    if not stages.ran:
        msg = (f"pipeline: all {len(stages.skipped)} stages were already done in {p.workdir}; "
               "nothing to do")
    else:
        msg = (f"pipeline: ran {', '.join(stages.ran)}"
               + (f"; skipped (done earlier) {', '.join(stages.skipped)}" if stages.skipped else ""))
    log.info(msg)
    print(msg)
    out["ran"], out["skipped"] = stages.ran, stages.skipped
    return out
