"""The training loop shared by every method: set up, compile once, iterate, log, checkpoint.

What differs between SFT and DPO lives in `steps.py` (loss, metrics) and in the data
pipeline (batch layout); this file only wires them together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmalign_jax import host_malloc, loading, parallel, store
from mmalign_jax.models import lora as lora_lib
from mmalign_jax.models import registry
from mmalign_jax.models.family import ModelFamily
from mmalign_jax.train import checkpoint as ckpt_lib
from mmalign_jax.train import data as data_lib
from mmalign_jax.train import defaults
from mmalign_jax.train import methods as methods_lib
from mmalign_jax.train import metrics as metrics_lib
from mmalign_jax.train import state as state_lib
from mmalign_jax.train import steps as steps_lib

log = logging.getLogger("mmalign_jax.train")


class TrainingDiverged(RuntimeError):
    pass


class WorkdirError(RuntimeError):
    """The workdir cannot be written (full disk, read-only, no permission): one sentence that
    names the problem and the last good checkpoint, instead of the tracebacks of every
    writer that hit it (orbax's threads, the metrics, TensorBoard)."""


# Consecutive steps without an update before a run is called out as not learning.
STALL_STEPS = 3


# ------------------------------------------------------------------------------ model set-up
# Where a run's model comes from (a Hugging Face folder, an earlier run, a preset) is
# `mmalign_jax/loading.py`'s business, shared with inference; these names stay for callers.
model_config = loading.model_config
base_params = loading.base_params
params_from_run = loading.params_from_run
mesh_context = parallel.mesh_context


# --------------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class Run:
    """Everything `train()` builds; tests and the benchmark reuse the pieces."""
    c: object
    cfg: object                  # the family's model config
    mesh: object
    model: object                # the family's Flax module
    state: state_lib.TrainState
    frozen: dict
    ref: dict | None
    shardings: dict
    total_steps: int
    family: ModelFamily = None
    method: methods_lib.Method = None


def build(c, *, total_steps: int) -> Run:
    """Model, sharded variables and optimizer state (no data, no compilation)."""
    cfg = model_config(c)
    mesh = parallel.make_mesh(dict(c.mesh.shape),
                              parallel.mesh_devices(c.mesh.get("num_devices", 0)))
    rules = tuple(tuple(r) for r in c.mesh.rules)
    family = registry.for_config(cfg)
    method = methods_lib.get(c.method)
    model = family.module(cfg)
    with mesh_context(mesh, rules):
        p_specs = family.param_logical_specs(cfg)
        p_shapes = family.abstract_params(cfg)
        p_sh = parallel.tree_shardings(p_specs, rules, mesh, p_shapes)
        params = base_params(c, cfg, p_sh)
        variables = {"params": params}
        shardings = {"params": p_sh}
        if cfg.lora is not None:
            l_specs = lora_lib.lora_logical_specs(cfg)
            l_shapes = jax.eval_shape(lambda: lora_lib.init_lora(cfg, p_shapes, jax.random.PRNGKey(0)))
            l_sh = parallel.tree_shardings(l_specs, rules, mesh, l_shapes)
            variables["lora"] = jax.jit(lambda p, k: lora_lib.init_lora(cfg, p, k),
                                        out_shardings=l_sh)(params, jax.random.PRNGKey(c.seed + 1))
            shardings["lora"] = l_sh
        groups = state_lib.param_groups(c, family)
        trainable, frozen = state_lib.split(variables, groups)
        if not jax.tree.leaves(trainable):
            raise defaults.ConfigError("nothing is trainable: enable LoRA, optim.train_projector "
                                       "or full fine-tuning (lora.enabled=False)")
        # fp32 master weights for what is trained; frozen weights keep param_dtype.
        trainable = state_lib.cast_tree(trainable, jnp.float32)
        tr_sh, frozen_sh = state_lib.split(shardings, groups)
        ref = None
        if method.reference(c) is not None:
            # The reference keeps the initial values of trained base weights (not LoRA);
            # reference='precomputed' needs them once, for reference_logps.npz.
            ref = jax.tree.map(lambda x: x.astype(cfg.param_dtype),
                               {k: v for k, v in trainable.items() if k != "lora"})
            ref = jax.tree.map(jnp.copy, ref)
        tx = state_lib.make_optimizer(c, groups, trainable, total_steps)
        opt_shapes = jax.eval_shape(tx.init, trainable)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        opt_sh = opt_state_shardings(opt_shapes, tr_sh, replicated)
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
        # step and rng placed (replicated) on the mesh like the rest of the state: a restore
        # takes its target's shardings, and the compiled step accepts no others.
        step, rng = jax.jit(lambda: (jnp.zeros((), jnp.int32), jax.random.PRNGKey(c.seed + 2)),
                            out_shardings=(replicated, replicated))()
        state = state_lib.TrainState(step=step, trainable=trainable, opt_state=opt_state,
                                     rng=rng, tx=tx)
        state_sh = state_lib.TrainState(step=replicated, trainable=tr_sh, opt_state=opt_sh,
                                        rng=replicated, tx=tx)
    ref_sh = None if ref is None else {k: v for k, v in tr_sh.items() if k != "lora"}
    return Run(c=c, cfg=cfg, mesh=mesh, model=model, state=state, frozen=frozen, ref=ref,
               shardings={"state": state_sh, "frozen": frozen_sh, "ref": ref_sh,
                          "replicated": replicated, "rules": rules},
               total_steps=total_steps, family=family, method=method)


def opt_state_shardings(opt_shapes, param_shardings, replicated):
    """Optimizer moments take the sharding of the parameter they belong to (found by the
    parameter's dict-key path inside the optimizer state); counters are replicated."""
    by_path = {tuple(k.key for k in path): sh for path, sh in
               jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def pick(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for start in range(len(keys)):
            sh = by_path.get(keys[start:])
            if sh is not None and len(sh.spec) <= len(leaf.shape):
                return sh
        return replicated
    return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def loss_fn_for(run: Run):
    return run.method.loss_fn(run.model, run.c)


class CompiledStep:
    """AOT-compiled step per batch shape (one shape unless the pipeline buckets lengths)."""

    def __init__(self, fn, run: Run, kind: str):
        self.run, self.kind, self.cache = run, kind, {}
        self.fn = fn
        self.compile_seconds = 0.0
        self.memory = None

    def _key(self, batch):
        return tuple(sorted((k, v.shape) for k, v in batch.items()))

    def __call__(self, first, batch, *rest):
        key = self._key(batch)
        if key not in self.cache:
            t0 = time.perf_counter()
            with mesh_context(self.run.mesh, self.run.shardings["rules"]):
                compiled = self.fn.lower(first, batch, *rest).compile()
            self.compile_seconds += time.perf_counter() - t0
            try:
                self.memory = compiled.memory_analysis()
            except Exception:  # not every backend reports it
                self.memory = None
            self.cache[key] = compiled
            log.info("compiled %s step for %s in %.1fs", self.kind,
                     {k: v.shape for k, v in batch.items()}, time.perf_counter() - t0)
        return self.cache[key](first, batch, *rest)


def jit_steps(run: Run, batch_like: dict):
    n_micro = run.c.train.global_batch_size // (run.c.train.micro_batch_size or run.c.train.global_batch_size)
    sh = run.shardings
    loss_fn = loss_fn_for(run)
    groups = state_lib.param_groups(run.c, run.family)
    lr_fn = state_lib.schedule(run.c, next(g.lr for g in groups if g.name == "lm"), run.total_steps)
    batch_sh = {k: parallel.batch_sharding(run.mesh, sh["rules"], v.ndim) for k, v in batch_like.items()}
    train = jax.jit(steps_lib.make_train_step(loss_fn, n_micro, lr_fn),
                    in_shardings=(sh["state"], batch_sh, sh["frozen"], sh["ref"]),
                    out_shardings=(sh["state"], sh["replicated"]), donate_argnums=(0,))
    evaluate = jax.jit(steps_lib.make_eval_step(loss_fn, n_micro),
                       in_shardings=(sh["state"].trainable, batch_sh, sh["frozen"], sh["ref"]),
                       out_shardings=sh["replicated"])
    return CompiledStep(train, run, "train"), CompiledStep(evaluate, run, "eval")


def _summarise_eval(denom, sums) -> dict:
    out = {f"eval/{k}": v / max(denom, 1.0) for k, v in sums.items() if k != "tokens"}
    return out


def run_eval(run: Run, eval_step, loader_factory, max_batches: int) -> dict:
    denom, sums = 0.0, {}
    for i, local in enumerate(loader_factory()):
        if max_batches and i >= max_batches:
            break
        batch = parallel.global_batch(local, run.mesh, run.shardings["rules"])
        d, s = jax.device_get(eval_step(run.state.trainable, batch, run.frozen, run.ref))
        denom += float(d)
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return _summarise_eval(denom, sums)


def train(c) -> dict:
    """Run (or resume) the training described by config `c`; returns the final summary.

    The workdir is locked for the run (`<workdir>/train.lock`, process 0): a second run on it
    is refused with `store.JobLocked` naming the holder's pid and host; the OS drops the lock
    when the holder dies, so a rerun after a crash takes it over. A full disk or a workdir
    that cannot be written ends the run with `WorkdirError` (one sentence, the last good
    checkpoint named); the checkpoints already complete stay as they are."""
    parallel.maybe_initialize_distributed()
    defaults.validate(c, jax.device_count())
    workdir = c.workdir
    with _disk_errors(workdir):
        os.makedirs(workdir, exist_ok=True)
        lock = None
        if jax.process_index() == 0:
            lock = store.exclusive_lock(os.path.join(workdir, "train.lock"), "training run",
                                        target=workdir)
        try:
            return _train(c)
        finally:
            if lock is not None:
                lock.close()


_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_NOT_WRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


@contextlib.contextmanager
def _disk_errors(workdir: str):
    """Turns an error caused by the disk (anywhere in the exception's chain: orbax wraps the
    OSError of its writer threads, or reports only tensorstore's message) into WorkdirError."""
    try:
        yield
    except (WorkdirError, store.JobLocked):
        raise
    except Exception as e:
        msg = _disk_sentence(e, workdir)
        if msg is None:
            raise
        raise WorkdirError(msg) from e


def _disk_sentence(exc: BaseException, workdir: str) -> str | None:
    workdir = os.path.abspath(workdir)
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
        code = e.errno if isinstance(e, OSError) else None
        path = e.filename if isinstance(e, OSError) and e.filename else None
        path = os.path.abspath(os.fsdecode(path)) if path is not None else None
        if code is None:   # a wrapped OSError, or tensorstore's status text
            low = str(e).lower()
            code = (errno.ENOSPC if "no space left on device" in low else
                    errno.EROFS if "read-only file system" in low else None)
        if code in _DISK_FULL:
            return _workdir_sentence(f"{_DISK_FULL[code]} while writing "
                                     f"{path or 'into ' + workdir}", workdir, "free some space")
        if code in _NOT_WRITABLE:
            if path is not None and os.path.commonpath([path, workdir]) not in (workdir, path):
                continue   # neither in nor above the workdir (an input): the error as it is
            return _workdir_sentence(f"the workdir {workdir} cannot be written ("
                                     f"{path or workdir}: {_NOT_WRITABLE[code]})", workdir,
                                     "make it writable", " (or pass another --config.workdir)")
    return None


def _workdir_sentence(problem: str, workdir: str, fix: str, other: str = "") -> str:
    steps = ckpt_lib.complete_steps(workdir)
    if steps:
        where = os.path.join(workdir, "checkpoints", str(steps[-1]))
        return (f"{problem}; the last good checkpoint is step {steps[-1]} ({where}) — {fix} "
                f"and rerun the same command to resume from it{other}")
    return f"{problem}; no checkpoint was written yet — {fix} and rerun the same command{other}"


class UpdateWatch:
    """Counts consecutive steps whose update vanished — a gradient norm of exactly 0, or no
    trained value changed although the learning rate was at least 1% of its peak (below
    that, the warm-up's first step, at lr 0, or the decay's tail may round an update away)
    — and returns a warning when a streak reaches `n` (once per streak). A run with lr=1e6
    saturated the model, had a gradient norm of 0.0 from step 2 to the end and exited 0
    without a word."""

    def __init__(self, peak_lr: float, n: int = STALL_STEPS):
        self.peak_lr, self.n = float(peak_lr), n
        self.streak, self.since = 0, None

    def __call__(self, step: int, grad_norm: float, changed: bool, lr: float) -> str | None:
        if not (grad_norm == 0.0 or (not changed and lr >= 0.01 * self.peak_lr)):
            self.streak = 0
            return None
        self.streak += 1
        if self.streak == 1:
            self.since = step
        if self.streak != self.n:
            return None
        return (f"step {step}: updates vanished: steps {self.since}-{step} changed no trained "
                f"value or had a gradient norm of 0 (now {grad_norm:g}); the run is not "
                f"learning — check optim.lr ({self.peak_lr:g}; too large a rate can saturate "
                "the model until every gradient is 0) and the data (no target tokens?)")


def _train(c) -> dict:
    """`train` once the workdir is locked."""
    if c.get("prepare"):
        # What the run makes first (e.g. the demo's data and SFT model): a config hook.
        c = _hook(c.prepare)(c)
        defaults.validate(c, jax.device_count())
    t_start = time.perf_counter()   # this run's own time (what `prepare` trained reports its own)
    if jax.process_index() == 0:  # after resolving init_from: a later run may start from us
        with open(os.path.join(c.workdir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))

    cfg = model_config(c)
    data = data_lib.TrainData(c, cfg, methods_lib.get(c.method).batch)
    steps_per_epoch = data.steps_per_epoch
    total_steps = c.train.max_steps or c.train.num_epochs * steps_per_epoch
    run = build(c, total_steps=total_steps)
    log.info("model %s: %.2fM trainable / %.2fM frozen parameters; mesh %s; %d steps (%d/epoch)",
             c.model.preset if not c.model.hf_checkpoint else c.model.hf_checkpoint,
             _count(run.state.trainable) / 1e6, _count(run.frozen) / 1e6, dict(run.mesh.shape),
             total_steps, steps_per_epoch)
    if host_malloc.applied:
        log.info("glibc malloc: %s set, so each step's memory stays in the process "
                 "(%s; mmalign_jax/host_malloc.py)", ", ".join(host_malloc.applied), host_malloc.ENV)

    ckpt = ckpt_lib.Checkpointer(c.workdir, c.train.keep_checkpoints, c.train.checkpoint_every,
                                 c.train.async_checkpointing)
    writer = metrics_lib.MetricWriter(c.workdir)

    if run.method.reference(c) == "precomputed":
        data.attach_reference_logps(run, run.method.reference_step(run.model))
        run.ref = None
        run.shardings["ref"] = None

    train_iter = data.train_iterator()
    start = ckpt.latest_step()
    if start is not None:
        run.state = ckpt.restore(run.state, train_iter, start)
        log.info("resumed from %s at step %d", ckpt.directory, start)
    # Rows logged after the checkpoint we continue from (all of them when there is none: a
    # run stopped before its first checkpoint) are redone, so drop them.
    writer.truncate_after(-1 if start is None else start)
    start = int(run.state.step)
    summary_path = os.path.join(c.workdir, "summary.json")
    if start >= total_steps and os.path.exists(summary_path):
        log.info("%s already finished (%d steps): nothing to do", c.workdir, start)
        ckpt.close()
        writer.close()
        return json.load(open(summary_path))

    first = next(train_iter)
    train_step, eval_step = jit_steps(run, first)
    info = {"compile_seconds": None, "memory": None}
    last_metrics = {}
    if start == 0 and c.train.eval_every and c.train.eval_at_start:
        # The curve's starting point: the model we start from, before any update.
        last_metrics = run_eval(run, eval_step, data.eval_iterator, c.train.eval_batches)
        writer.write(0, last_metrics)
        log.info("step 0: %s", ", ".join(f"{k}={v:.4g}" for k, v in last_metrics.items()))
    progress = _progress(c, total_steps, start)
    watch = UpdateWatch(c.optim.lr)
    local = first
    step = start
    try:
        while step < total_steps:
            if local is None:
                local = next(train_iter)
            batch = parallel.global_batch(local, run.mesh, run.shardings["rules"])
            local = None
            t0 = time.perf_counter()
            run.state, metrics = train_step(run.state, batch, run.frozen, run.ref)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            step += 1
            if info["compile_seconds"] is None:
                info = _report_compile(c, train_step)
            if not bool(metrics.pop("finite")):
                raise TrainingDiverged(
                    f"step {step}: loss={metrics['loss']} grad_norm={metrics['grad_norm']} is not "
                    f"finite; the update was not applied and the last good checkpoint "
                    f"(step {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower optim.lr, "
                    "check the data (empty responses?) or use model.dtype=float32.")
            metrics["tokens_per_s"] = metrics.pop("tokens") * jax.process_count() / max(dt, 1e-9)
            metrics["epoch"] = step / max(steps_per_epoch, 1)
            stalled = watch(step, float(metrics["grad_norm"]),
                            bool(metrics.pop("params_changed", True)), float(metrics["lr"]))
            metrics["stalled_steps"] = watch.streak
            last_metrics = metrics
            if progress is not None:
                progress.update(1)
                progress.set_postfix(_postfix(metrics), refresh=False)
            if stalled:
                log.warning("%s", stalled)
            if step % c.train.log_every == 0 or step == total_steps or stalled:
                writer.write(step, metrics)
            if c.train.eval_every and (step % c.train.eval_every == 0 or step == total_steps):
                ev = run_eval(run, eval_step, data.eval_iterator, c.train.eval_batches)
                writer.write(step, ev)
                last_metrics.update(ev)
                if progress is not None:
                    progress.write(f"step {step}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in ev.items()))
            ckpt.save(step, run.state, train_iter, force=step == total_steps)
        ckpt.wait()
    finally:
        if progress is not None:
            progress.close()
        ckpt.close()
        writer.close()

    summary = {"steps": step, "seconds": time.perf_counter() - t_start, **info,
               # every batch shape compiles its own program (length / patch buckets):
               # how many, and their compile time in all (compile_seconds: the first)
               "train_programs": len(train_step.cache), "eval_programs": len(eval_step.cache),
               "compile_seconds_all": round(train_step.compile_seconds
                                            + eval_step.compile_seconds, 2),
               **{k: float(v) for k, v in last_metrics.items()}}
    if jax.process_index() == 0:
        png = metrics_lib.plot_curves(writer.path, os.path.join(c.workdir, "curves.png"))
        summary["plot"] = png
        with open(os.path.join(c.workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
        _print_summary(c, summary)
    if c.train.export_hf:
        export_hf(run, c.train.export_hf, data.tokenizer_dir)
    return summary


def _hook(spec: str):
    """The function named 'package.module:function'."""
    import importlib
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise defaults.ConfigError(f"prepare={spec!r}: {e}") from None


def export_hf(run: Run, out_dir: str, tokenizer_dir: str | None):
    variables = state_lib.merge(run.frozen, jax.device_get(run.state.trainable))
    run.family.save_hf(run.cfg, variables["params"], out_dir, lora=variables.get("lora"),
                       tokenizer_dir=tokenizer_dir)
    log.info("exported a transformers checkpoint to %s", out_dir)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _progress(c, total, start):
    if not c.train.progress or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc=c.method, dynamic_ncols=True)


def _postfix(m):
    out = {"loss": f"{m['loss']:.4f}"}
    if "rewards/accuracy" in m:
        out["acc"] = f"{m['rewards/accuracy']:.2f}"
    out["tok/s"] = f"{m['tokens_per_s']:.0f}"
    return out


def _report_compile(c, step: CompiledStep) -> dict:
    mem = step.memory
    info = {"compile_seconds": round(step.compile_seconds, 2), "memory": None}
    if mem is not None:
        info["memory"] = {k: int(getattr(mem, k)) for k in (
            "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes") if hasattr(mem, k)}
    gib = {k: f"{v / 2**30:.3f} GiB" for k, v in (info["memory"] or {}).items()}
    log.info("train step compiled in %.1fs; memory per device: %s", step.compile_seconds, gib or "n/a")
    if jax.process_index() == 0:
        with open(os.path.join(c.workdir, "compile.json"), "w") as f:
            json.dump(info, f, indent=2)
    return info


def _print_summary(c, s):
    keys = [k for k in methods_lib.get(c.method).summary + ("tokens_per_s",) if k in s]
    lines = [f"{c.method} finished: {s['steps']} steps in {s['seconds']:.0f}s "
             f"(compile {s.get('compile_seconds')}s; {s.get('train_programs')} train + "
             f"{s.get('eval_programs')} eval programs, {s.get('compile_seconds_all')}s)"]
    lines += [f"  {k:24s} {s[k]:.4f}" for k in keys]
    if s.get("stalled_steps", 0) >= STALL_STEPS:
        lines.append(f"  warning: the last {int(s['stalled_steps'])} steps did not change the "
                     "model (updates vanished; see the log)")
    lines += [f"  metrics: {os.path.join(c.workdir, 'metrics.jsonl')}",
              f"  curves:  {s.get('plot')}"]
    print("\n".join(lines), flush=True)
