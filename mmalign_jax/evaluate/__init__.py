"""Evaluation: the study's benchmarks (MT-Bench, MM-Vet, LLaVA-Bench in-the-wild, POPE,
MMBench) on the benchmark files in their official formats, with pluggable LLM judges, and
reports (Table 4 of the study: one row per model, one column per benchmark).

    from mmalign_jax.evaluate import answers, judge, mtbench, mmvet, llava_bench, pope, mmbench, report

    model = answers.load_model("runs/dpo")                     # Hugging Face folder or workdir
    j = judge.make_judge("openai", "gpt-4", cache="out/dpo/mt-bench/judgments.jsonl")
    mtbench.run(model, "data/mt_bench", "out/dpo/mt-bench", judge=j)
    pope.run(model, "data/pope", "out/dpo/pope")
    report.write_report(report.collect(report.find_results(["out"])), "out/report")

Command line: `python -m mmalign_jax.evaluate --benchmark NAME --data DIR --model PATH --out DIR`
and `python -m mmalign_jax.evaluate report RESULTS... --out DIR`; docs/EVALUATION.md has the
files each benchmark needs and where to get them.
"""
BENCHMARKS = ("mt-bench", "mm-vet", "llava-bench", "pope", "mmbench")
JUDGED = ("mt-bench", "mm-vet", "llava-bench")


def runner(benchmark: str):
    """The `run(answerer, data, out_dir, *, judge, sampling, batch_size, limit, ...)` function
    of a benchmark name."""
    import importlib

    modules = {"mt-bench": "mtbench", "mm-vet": "mmvet", "llava-bench": "llava_bench",
               "pope": "pope", "mmbench": "mmbench"}
    if benchmark not in modules:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {BENCHMARKS}")
    return importlib.import_module(f"mmalign_jax.evaluate.{modules[benchmark]}").run


__all__ = ["BENCHMARKS", "JUDGED", "runner"]
