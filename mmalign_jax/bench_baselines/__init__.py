"""The baselines `python -m mmalign_jax.bench` times beside our DPO step, each run in its own
process as a module of this package:

    python -m mmalign_jax.bench_baselines.torch_dpo_step --preset bench-small --steps 5 --warmup 2
    python -m mmalign_jax.bench_baselines.trl_dpo_step   --preset bench-small --steps 5 --warmup 2
    python -m mmalign_jax.bench_baselines.trl_qwen_dpo_step --preset qwen-small --steps 5 --warmup 2

`torch_dpo_step`: the lean, hand-written PyTorch DPO step; `trl_dpo_step`: TRL's `DPOTrainer`
on the same (LLaVA) workload; `trl_qwen_dpo_step`: TRL's `DPOTrainer` on the Qwen2.5-VL
workload, with our initial weights and the same data (`qwen_data.py`, numpy only, which our
side builds its batch from too). `trl_qwen_dpo_step` reads the preset's shapes from
`mmalign_jax.models.qwen2_5_vl.presets` (plain dataclasses, no JAX); when it is run alone it
has the bench write the weights in a separate JAX process before anything is timed. They need PyTorch, transformers (and peft / TRL; requirements-bench.txt),
which the library itself does not: nothing imports them but their own process, and neither
imports JAX. They do not call `mmalign_jax.configure_process()` (no JAX in them): the bench
starts them with its own environment, its malloc settings through `GLIBC_TUNABLES`.
"""
