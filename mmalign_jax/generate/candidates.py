"""Candidate sampling: `n` answers per prompt from a checkpoint, written as records.

    python -m mmalign_jax.generate --config configs/generate.py[:preset] \\
        --config.checkpoint=RUN_OR_HF_DIR --config.records=IN.jsonl \\
        --config.image_root=DIR --config.out=OUT.jsonl [--attributes helpfulness=4,...]

What it does (`run(c)`):

1. Loads the model: a training workdir of ours (its `config.json` + latest checkpoint, LoRA
   merged) or a Hugging Face folder of any registered family (`loading.load_model`),
   its parameters placed straight onto their shardings by the logical-axis rules (as the
   trainer does; replicated under the default `data`-only mesh).
2. Reads the input records (`records.load_records`, any supported format; bad rows are
   skipped and listed in `<out>.rejects.jsonl`). The prompt of a record is its conversation
   up to and including the *last user turn*: for SFT-style records (ending with an assistant
   turn) that answer is dropped and sampled anew; existing `responses` are replaced. With
   SteerLM target `attributes`, `pairs.attribute_string(targets, steerlm_format)` is appended
   to that user turn — exactly as SteerLM training conditions it. The record written keeps
   the prompt conversation *without* the attribute string (the annotator must see the plain
   question); the targets are part of every response's `source`.
3. Cuts the prompts, in input order, into batches of `batch_size` (the last one padded with
   filler rows) — a layout fixed by the input alone, never by what is already done — and
   samples each batch with `generate_tokens` (data-parallel over the mesh's `data`×`fsdp`
   axes). Each prompt draws from its own key, `fold_in(key(seed), hash32(record id))`, and
   sample `j` from `fold_in(that key, j)`.
4. Writes one row per prompt to the output through `store.JsonlStore` (keyed by record
   id; one fsync'd write per row): the input record (prompt conversation, images, meta)
   with `responses` = the samples, each with `source =
   "<model>@T<temperature>/seed=<seed>/sample=<j>"` (+ `/attributes=...` under SteerLM
   targets) and `meta = {"tokens", "finished", "logp"}` (generated tokens, ended by EOS,
   summed raw-model log-probability). Empty answers are dropped (records reject empty
   responses) and counted in the summary.

Resume: a rerun skips batches whose prompts are all written and redoes a partially written
batch (writing only the missing rows). Because the layout and every prompt's randomness are
fixed, a run killed at any point (a torn last line is quarantined by the store) and rerun
writes the same bytes as an uninterrupted run — given the same settings, batch size and
mesh. `<out>.settings.json` records the sampling settings; resuming with different ones is
refused (write to another `out`), and a second job on the same `out` is refused while the
first holds `<out>.lock`. At the end a summary is printed and written to
`<out>.summary.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections as mlc
import numpy as np

from mmalign_jax import parallel
from mmalign_jax.generate.sampling import (Generator, SamplingConfig, bucket_length,
                                           generate_tokens, image_slots)

log = logging.getLogger("mmalign_jax.generate")

CHECKPOINT_KINDS = ("auto", "workdir", "hf")
STEERLM_FORMATS = ("paper", "nemo")
# Settings that change what a record's samples are: resuming with other values is refused.
SETTINGS_KEYS = ("checkpoint", "model_name", "n", "temperature", "top_p", "top_k",
                 "max_new_tokens", "seed", "template", "image_mode", "dtype", "attributes",
                 "steerlm_format")


class GenerateError(ValueError):
    """A configuration or input problem, with a sentence saying what to change."""


# ----------------------------------------------------------------------------- config

def default_config() -> mlc.ConfigDict:
    """Every field of the sampling command (configs/generate.py starts from this)."""
    c = mlc.ConfigDict()
    c.checkpoint = ""              # a training workdir of ours, or a Hugging Face folder
    c.checkpoint_kind = "auto"     # auto | workdir | hf (auto: config.json + checkpoints/ = workdir)
    c.model_name = ""              # name in each response's source; default: the folder's name
    c.records = ""                 # input records (JSONL or JSON array; ours, LLaVA or DPO format)
    c.image_root = ""              # image paths in records are relative to it
    c.out = ""                     # output JSONL (one record per prompt, keyed by id)
    c.strict = False               # True: the first bad input row stops the run
    c.limit = 0                    # > 0: only the first `limit` records
    c.tokenizer = ""               # a tokenizer folder; default: the checkpoint's / the workdir's
    c.template = ""                # default: the workdir's data.template, else the family's
    c.image_mode = ""              # default: the workdir's data.image_mode, else the family's
    c.dtype = "float32"            # compute and parameter dtype (bfloat16 on accelerators)
    c.seed = 0
    c.batch_size = 8               # prompts per batch (global); a multiple of data×fsdp
    c.max_prompt_len = 0           # 0: max_position_embeddings − max_new_tokens; longer: skipped
    c.attributes = ""              # SteerLM targets "helpfulness=4,...,verbosity=1" (others 4)
    c.steerlm_format = ""          # paper | nemo; "": the workdir's data.steerlm_format, else paper
    c.progress = True

    c.sampling = mlc.ConfigDict()
    c.sampling.n = 4               # answers per prompt (PAPER.md: 4)
    c.sampling.temperature = 0.7   # PAPER.md: 0.7 (1.2 in the released script); 0 = greedy
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 1024

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.num_devices = 0         # 0: every device; N: the first N (one process only)
    c.mesh.rules = parallel.DEFAULT_RULES
    return c


def validate(c, n_devices: int) -> None:
    def need(cond, msg):
        if not cond:
            raise GenerateError(msg)

    need(bool(c.checkpoint), "set --config.checkpoint to a training workdir of ours or a "
         "Hugging Face checkpoint folder")
    need(os.path.isdir(c.checkpoint), f"checkpoint {c.checkpoint!r} is not a folder: point "
         "--config.checkpoint at a training workdir (the demo SFT model: python -m "
         "mmalign_jax.train --config configs/sft.py) or a Hugging Face checkpoint folder")
    need(c.checkpoint_kind in CHECKPOINT_KINDS,
         f"checkpoint_kind {c.checkpoint_kind!r}: use {'|'.join(CHECKPOINT_KINDS)}")
    need(bool(c.records), "set --config.records to a records JSONL (prompts ending in a user "
         "turn, or SFT conversations)")
    need(os.path.isfile(c.records), f"records file {c.records!r} does not exist")
    need(bool(c.out), "set --config.out to the output JSONL")
    need(c.dtype in ("float32", "bfloat16", "float16"), "dtype: float32|bfloat16|float16")
    need(c.steerlm_format in ("",) + STEERLM_FORMATS,
         f"steerlm_format {c.steerlm_format!r}: use paper or nemo (or '' for the model's own)")
    need(c.batch_size >= 1, "batch_size must be >= 1")
    need(c.limit >= 0 and c.max_prompt_len >= 0, "limit and max_prompt_len must be >= 0")
    try:
        sampling_config(c)
    except ValueError as e:
        raise GenerateError(f"sampling: {e}") from None
    parse_targets(c.attributes)
    num = c.mesh.get("num_devices", 0) or 0
    need(0 <= num <= n_devices, f"mesh.num_devices={num} but {n_devices} devices are available")
    try:
        sizes = parallel.mesh_shape(dict(c.mesh.shape), num or n_devices)
    except ValueError as e:
        raise GenerateError(f"mesh.shape: {e}") from None
    dp = sizes[0] * sizes[1]
    need(c.batch_size % dp == 0, f"batch_size={c.batch_size} must divide over the "
         f"data-parallel devices (data×fsdp = {dp}): use a multiple of {dp} or change mesh.shape")


def sampling_config(c, eos=(), pad: int = 0) -> SamplingConfig:
    s = c.sampling
    return SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, top_k=s.top_k, n=s.n, eos_token_ids=tuple(eos),
                          pad_token_id=pad)


def parse_targets(text: str) -> Optional[dict]:
    """`--attributes` → the five SteerLM targets (unnamed ones 4), or None when empty."""
    if not (text or "").strip():
        return None
    from mmalign_jax.data import pairs
    try:
        return pairs.parse_attributes(text)
    except ValueError as e:
        raise GenerateError(f"--attributes {text!r}: {e}") from None


# ----------------------------------------------------------------------------- the model

@dataclasses.dataclass
class Loaded:
    """The model and what goes with it."""
    cfg: Any
    model: Any
    variables: dict
    tokenizer: Any
    template: str
    image_mode: str
    name: str
    kind: str
    steerlm_format: str
    trained_steerlm: Optional[bool]   # None: unknown (a Hugging Face folder)
    mesh: Any
    rules: tuple


def load_model(c, mesh, rules) -> Loaded:
    """The model to sample from (`loading.load_model`) and what sampling needs of its run."""
    from mmalign_jax import loading

    path = os.path.abspath(c.checkpoint)
    try:
        m = loading.load_model(path, dtype=c.dtype, kind=c.checkpoint_kind, mesh=mesh,
                               rules=rules, tokenizer=c.tokenizer)
    except FileNotFoundError as e:
        raise GenerateError(str(e)) from None
    trained_steerlm, fmt = None, "paper"
    if m.run_config is not None:
        prev = m.run_config
        trained_steerlm = prev.method == "sft" and prev.data.get("sft_mode") == "steerlm"
        if trained_steerlm:
            fmt = prev.data.get("steerlm_format", "paper")
    return Loaded(cfg=m.cfg, model=m.model, variables={"params": m.params},
                  tokenizer=m.tokenizer, template=c.template or m.template,
                  image_mode=c.image_mode or m.image_mode,
                  name=c.model_name or os.path.basename(path.rstrip("/")), kind=m.kind,
                  steerlm_format=c.steerlm_format or fmt, trained_steerlm=trained_steerlm,
                  mesh=mesh, rules=rules)


# ----------------------------------------------------------------------------- prompts

@dataclasses.dataclass
class Prompt:
    record: Any              # the record to write: prompt conversation, no responses
    conversation: list       # what the model is asked (attribute string appended)
    ids: np.ndarray          # int32 prompt tokens (generation prompt included)
    image_paths: list


def prompt_conversation(conversation: Sequence[dict]) -> list[dict]:
    """The conversation up to and including its last user turn (SFT-style records lose
    their final answer); ValueError when there is no user turn."""
    last = max((i for i, t in enumerate(conversation) if t["role"] == "user"), default=None)
    if last is None:
        raise ValueError("no user turn to answer")
    return [dict(t) for t in conversation[:last + 1]]


def condition(conversation: list[dict], targets: Optional[dict], fmt: str) -> list[dict]:
    """Append the SteerLM attribute string to the last user turn (as training does)."""
    if targets is None:
        return conversation
    from mmalign_jax.data import pairs
    conv = [dict(t) for t in conversation]
    conv[-1]["content"] += pairs.attribute_string(targets, fmt)
    return conv


def build_prompts(records, gen: Generator, image_root: str, targets: Optional[dict], fmt: str,
                  max_prompt_len: int) -> tuple[list[Prompt], list[dict]]:
    """(prompts in input order, skipped [{'id', 'reason'}])."""
    from mmalign_jax.data.records import Record
    prompts, skipped = [], []
    for rec in records:
        try:
            conv = prompt_conversation(rec.conversation)
            asked = condition(conv, targets, fmt)
            sizes = ()
            if gen.family.native_resolution:   # token counts from the image headers
                sizes = [image_size(os.path.join(image_root, p)) for p in rec.images]
            ids, n_img = gen.tokenize(asked, sizes)
        except ValueError as e:   # no user turn, TokenizationMismatch, malformed turns
            skipped.append({"id": rec.id, "reason": f"{type(e).__name__}: {e}"})
            continue
        if n_img != len(rec.images):
            skipped.append({"id": rec.id, "reason": f"{n_img} <image> markers in the prompt but "
                            f"{len(rec.images)} images"})
            continue
        if max_prompt_len and len(ids) > max_prompt_len:
            skipped.append({"id": rec.id, "reason": f"prompt of {len(ids)} tokens > "
                            f"max_prompt_len {max_prompt_len} (images included)"})
            continue
        out = Record(id=rec.id, images=list(rec.images), conversation=conv, responses=[],
                     meta=dict(rec.meta))
        prompts.append(Prompt(out, asked, ids, [os.path.join(image_root, p) for p in rec.images]))
    return prompts, skipped


def image_size(path: str) -> tuple:
    """`(width, height)` from the image file's header (nothing decoded); a missing,
    unreadable or over-budget file (`images.check_pixels`) is a ValueError naming it (the
    record is reported and skipped)."""
    from PIL import Image

    from mmalign_jax.data.images import open_checked
    try:
        with open_checked(path, path) as im:
            return im.size
    except (OSError, Image.UnidentifiedImageError) as e:
        raise ValueError(f"image {path}: {e}") from None


def record_keys(seed: int, record_ids: Sequence[str]) -> np.ndarray:
    """Raw uint32 keys `[len(ids), 2]`: `fold_in(key(seed), hash32(id))` per record — what a
    prompt samples with, whatever batch it lands in."""
    hashes = np.asarray([int.from_bytes(hashlib.sha256(i.encode("utf-8")).digest()[:4], "little")
                         for i in record_ids], np.uint32)
    root = jax.random.key(int(seed))
    keys = jax.vmap(lambda h: jax.random.fold_in(root, h))(hashes)
    return np.asarray(jax.random.key_data(keys))


def source_string(name: str, temperature: float, seed: int, sample: int,
                  targets: Optional[dict] = None) -> str:
    """`"<model>@T0.7/seed=0/sample=2"` (+ `"/attributes=helpfulness:4,..."`)."""
    s = f"{name}@T{temperature:g}/seed={seed}/sample={sample}"
    if targets is not None:
        s += "/attributes=" + ",".join(f"{k}:{v}" for k, v in targets.items())
    return s


def batch_layout(n_prompts: int, batch_size: int) -> list[list[int]]:
    """Consecutive chunks of the prompt list: a function of the input alone."""
    return [list(range(s, min(s + batch_size, n_prompts))) for s in range(0, n_prompts, batch_size)]


def _global(x: np.ndarray, mesh, rules) -> jax.Array:
    """A host array (the same on every process) as a global array sharded over 'batch'."""
    sharding = parallel.batch_sharding(mesh, rules, x.ndim)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _fetch(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def make_batch(prompts: Sequence[Prompt], members: Sequence[int], batch_size: int, cfg,
               image_mode: str, min_bucket: int = 16) -> dict:
    """Numpy inputs of one batch: prompts LEFT padded to a power-of-two length, rows padded to
    `batch_size` with copies of the first prompt (dropped afterwards); images through the
    model family's preprocessing (`cfg` is the model config)."""
    from mmalign_jax.data import images as images_lib
    from mmalign_jax.models import registry
    family = registry.for_config(cfg)
    rows = list(members) + [members[0]] * (batch_size - len(members))
    p = bucket_length(max(len(prompts[i].ids) for i in members), min_bucket)
    ids = np.zeros((batch_size, p), np.int32)
    mask = np.zeros((batch_size, p), np.int32)
    for r, i in enumerate(rows):
        n = len(prompts[i].ids)
        ids[r, p - n:] = prompts[i].ids
        mask[r, p - n:] = 1
    out = {"prompt_ids": ids, "prompt_mask": mask}
    n_img = max(len(prompts[i].image_paths) for i in members)
    if n_img:
        cache = {}

        def preprocess(path):
            if path not in cache:
                cache[path] = family.preprocess_image(cfg, images_lib.load_image(path), image_mode)
            return cache[path]

        arrays, out["image_mask"] = image_slots(
            family, cfg, [prompts[i].image_paths for i in rows], preprocess)
        out.update(arrays)
    return out


# ----------------------------------------------------------------------------- the run

def _settings(c, m: Loaded, targets) -> dict:
    s = c.sampling
    return {"checkpoint": os.path.abspath(c.checkpoint), "model_name": m.name, "n": s.n,
            "temperature": float(s.temperature), "top_p": float(s.top_p), "top_k": s.top_k,
            "max_new_tokens": s.max_new_tokens, "seed": c.seed, "template": m.template,
            "image_mode": m.image_mode, "dtype": c.dtype, "attributes": targets,
            "steerlm_format": m.steerlm_format if targets is not None else None,
            # informational (a different value does not stop a resume)
            "batch_size": c.batch_size, "records": os.path.abspath(c.records)}


def _check_settings(path: str, settings: dict, have_rows: bool) -> None:
    """First run: write `<out>.settings.json`. Rerun: refuse other sampling settings."""
    if os.path.exists(path):
        old = json.load(open(path))
        diff = [f"{k}: {old.get(k)!r} → {settings.get(k)!r}" for k in SETTINGS_KEYS
                if old.get(k) != settings.get(k)]
        if diff:
            raise GenerateError(
                f"{path[:-len('.settings.json')]} was written with other settings ("
                + "; ".join(diff) + "); write to another --config.out, or delete it and its "
                ".settings.json to start over")
        if old.get("batch_size") != settings["batch_size"]:
            log.warning("batch_size %s → %s: prompts still to do are batched differently, so "
                        "their samples may differ (in float rounding) from an uninterrupted run",
                        old.get("batch_size"), settings["batch_size"])
        return
    if have_rows:
        raise GenerateError(f"{path[:-len('.settings.json')]} already has rows but no "
                            f"{os.path.basename(path)}: it was not written by this command; "
                            "choose another --config.out")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(c) -> dict:
    """Sample (or finish sampling) every prompt of `c.records` into `c.out`; the summary."""
    parallel.maybe_initialize_distributed()
    validate(c, jax.device_count())
    targets = parse_targets(c.attributes)
    main = jax.process_index() == 0
    mesh = parallel.make_mesh(dict(c.mesh.shape), parallel.mesh_devices(c.mesh.get("num_devices", 0)))
    rules = tuple(tuple(r) for r in c.mesh.rules)

    out = os.path.abspath(c.out)
    lock = _locked(out) if main else None
    try:
        return _run(c, targets, main, mesh, rules, out)
    finally:
        if lock is not None:
            lock.close()


def _locked(out: str):
    from mmalign_jax.store import JobLocked, exclusive_lock
    try:
        return exclusive_lock(out + ".lock", "sampling job")
    except JobLocked as e:
        raise GenerateError(f"{e} (or choose another --config.out)") from None


def _run(c, targets, main: bool, mesh, rules, out: str) -> dict:
    from mmalign_jax.data import records as records_lib
    from mmalign_jax.store import JsonlStore

    t_start = time.perf_counter()
    store = JsonlStore(out, key="id") if main else None
    if main:
        rejects = out + ".rejects.jsonl"
    else:   # every process reads the records; only process 0 writes anything next to `out`
        import tempfile
        rejects = os.path.join(tempfile.mkdtemp(), "rejects.jsonl")
    loaded_recs = records_lib.load_records(c.records, c.image_root or None, strict=c.strict,
                                           reject_path=rejects)
    recs = loaded_recs.records[:c.limit] if c.limit else loaded_recs.records

    m = load_model(c, mesh, rules)
    if targets is not None and m.trained_steerlm is False:
        log.warning("--attributes given but %s was not trained with data.sft_mode=steerlm",
                    c.checkpoint)
    if targets is None and m.trained_steerlm:
        log.warning("%s is a SteerLM run but no --attributes were given: its prompts carry no "
                    "attribute string (the paper asks for all 4s: --attributes "
                    "helpfulness=4)", c.checkpoint)
    settings = _settings(c, m, targets)
    if main:
        _check_settings(out + ".settings.json", settings, len(store) > 0)

    gen = Generator(m.model, m.variables, m.tokenizer, m.template, image_mode=m.image_mode)
    tok = m.tokenizer
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else 0
    sampling = gen.resolve_sampling(sampling_config(c, pad=int(pad)))
    limit = c.max_prompt_len or (m.cfg.text.max_position_embeddings - sampling.max_new_tokens)
    prompts, skipped = build_prompts(recs, gen, c.image_root, targets, m.steerlm_format, limit)
    if skipped:
        log.warning("%d prompt(s) skipped; first: %s", len(skipped),
                    "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3]))

    layout = batch_layout(len(prompts), c.batch_size)
    todo = np.asarray([not main or not all(store.has(prompts[i].record.id) for i in b)
                       for b in layout], bool)
    if jax.process_count() > 1 and len(todo):
        from jax.experimental import multihost_utils
        todo = np.asarray(multihost_utils.broadcast_one_to_all(todo), bool)
    done_before = sum(1 for p in prompts if main and store.has(p.record.id))
    stats = {"generated": 0, "responses": 0, "empty_dropped": 0, "tokens": 0, "finished": 0}
    progress = None
    if c.progress and main:
        from tqdm.auto import tqdm
        progress = tqdm(total=len(prompts), initial=done_before, desc="sampling", unit="prompt",
                        dynamic_ncols=True)
    eos = set(sampling.eos_token_ids)
    n = sampling.n
    t_gen = time.perf_counter()
    try:
        for k, members in enumerate(layout):
            if not todo[k]:
                continue
            local = make_batch(prompts, members, c.batch_size, m.cfg, m.image_mode)
            local["rng"] = record_keys(c.seed, [prompts[i].record.id for i in members]
                                       + [prompts[members[0]].record.id] * (c.batch_size - len(members)))
            batch = {key: _global(v, mesh, rules) for key, v in local.items()}
            with parallel.mesh_context(mesh, rules):
                res = generate_tokens(m.model, m.variables, batch["prompt_ids"], batch["prompt_mask"],
                                      gen.family.model_images(batch), batch.get("image_mask"),
                                      sampling, batch["rng"])
            tokens, lengths, logps = (_fetch(x) for x in res)
            if not main:
                continue
            for r, i in enumerate(members):
                rec = prompts[i].record
                if store.has(rec.id):
                    continue
                responses = []
                for j in range(n):
                    row = r * n + j
                    toks = tokens[row, :lengths[row]].tolist()
                    text = gen.decode(toks, eos)
                    stats["tokens"] += len(toks)
                    finished = bool(toks) and toks[-1] in eos
                    stats["finished"] += finished
                    if not text or "<image>" in text:
                        stats["empty_dropped"] += 1
                        continue
                    responses.append(records_lib.Response(
                        text=text, source=source_string(m.name, sampling.temperature, c.seed, j,
                                                        targets),
                        meta={"tokens": len(toks), "finished": finished,
                              "logp": round(float(logps[row, :lengths[row]].sum()), 4)}))
                row_out = dataclasses.replace(rec, responses=responses).to_json()
                store.append(row_out)
                stats["generated"] += 1
                stats["responses"] += len(responses)
                if progress is not None:
                    progress.update(1)
    finally:
        if progress is not None:
            progress.close()

    seconds = time.perf_counter() - t_start
    samples = stats["generated"] * n
    summary = {
        "out": out, "records_read": loaded_recs.n_read, "records_rejected": len(loaded_recs.rejected),
        "prompts": len(prompts), "skipped": len(skipped), "skipped_examples": skipped[:20],
        "already_done": done_before, "generated": stats["generated"],
        "responses_written": stats["responses"], "empty_dropped": stats["empty_dropped"],
        "tokens_generated": stats["tokens"],
        "mean_tokens_per_sample": stats["tokens"] / samples if samples else None,
        "finished_by_eos": stats["finished"] / samples if samples else None,
        "seconds": round(seconds, 2),
        "tokens_per_s": stats["tokens"] / max(time.perf_counter() - t_gen, 1e-9),
        "settings": settings,
    }
    if main:
        summary["total_in_out"] = len(store)
        tmp = out + ".summary.json.tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, default=str)
        os.replace(tmp, out + ".summary.json")
        _print_summary(summary)
    return summary


def _print_summary(s: dict) -> None:
    lines = [f"sampling finished in {s['seconds']:.0f}s: {s['generated']} prompt(s) sampled now, "
             f"{s['already_done']} already done, {s['total_in_out']} in {s['out']}",
             f"  records read {s['records_read']}, rejected {s['records_rejected']}, "
             f"prompts skipped {s['skipped']}"]
    if s["generated"]:
        lines.append(f"  {s['responses_written']} responses written, {s['empty_dropped']} empty "
                     f"dropped; {s['mean_tokens_per_sample']:.1f} tokens/sample, "
                     f"{100 * s['finished_by_eos']:.0f}% ended by EOS, "
                     f"{s['tokens_per_s']:.0f} tokens/s")
    for sk in s["skipped_examples"][:5]:
        lines.append(f"  skipped {sk['id']}: {sk['reason']}")
    print("\n".join(lines), flush=True)
