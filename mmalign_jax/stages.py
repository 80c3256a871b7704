"""Named stages that run once: the staging mechanism of `python -m mmalign_jax.pipeline` and
of every command that makes its inputs first (the demo presets' data, tokenizer, vision tower
and SFT model before a demo training run).

Every stage writes, when it has finished, a marker `<workdir>/stages/<stage>.json` holding
its settings and result. A rerun skips a stage whose marker matches its current settings
(and says so); changing a stage's settings reruns it (its old outputs moved aside first, see
`Stages.run`), and its fingerprint flows into the stages that read from it (`after=`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Callable, Dict, List, Sequence

log = logging.getLogger("mmalign_jax.stages")


class StageError(ValueError):
    """A stage that asks for an upstream stage which has not run."""


class Stages:
    """Runs named stages once: a stage is skipped when its marker holds the same settings,
    its upstream stages' fingerprints included."""

    def __init__(self, workdir: str):
        self.dir = os.path.join(workdir, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.ran: List[str] = []
        self.skipped: List[str] = []
        self.fingerprints: Dict[str, str] = {}

    @staticmethod
    def fingerprint(settings: dict) -> str:
        blob = json.dumps(_display_neutral(settings), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run(self, name: str, settings: dict, fn: Callable[[], dict],
            outputs: Sequence[str] = (), after: Sequence[str] = ()) -> dict:
        """`after`: the stages (run or skipped earlier in this invocation) whose output this
        one reads; their fingerprints are part of its settings. Output paths alone do not
        say that an upstream changed: the demo's prompts file keeps its name when the number
        of prompts changes, and a stage keyed on the path would hand on its stale result.
        `outputs`: what the stage writes and would resume from (a training workdir, a
        sampling file). When the settings changed since the stage ran, they are moved aside
        to `<path>.superseded-<old fingerprint>` first — kept, but never resumed: a trainer
        finding its finished run, or the sampler its finished file, would otherwise skip the
        work and silently hand on the old result."""
        missing = [a for a in after if a not in self.fingerprints]
        if missing:
            raise StageError(f"stage {name!r} runs after {missing}, which have not run yet")
        if after:
            settings = {**settings, "after": {a: self.fingerprints[a] for a in after}}
        path = os.path.join(self.dir, f"{name}.json")
        fp = self.fingerprint(settings)
        self.fingerprints[name] = fp
        if os.path.exists(path):
            with open(path) as f:
                marker = json.load(f)
            if marker.get("fingerprint") == fp and not marker.get("pending"):
                log.info("stage %-20s done earlier (%s): skipped", name, path)
                self.skipped.append(name)
                return marker["result"]
            if marker.get("fingerprint") != fp:
                log.info("stage %-20s settings changed since it ran: running it again", name)
                for out in outputs:
                    _supersede(out, marker.get("fingerprint") or "old")
        # Marked pending first: a run interrupted now resumes its own outputs next time.
        self._write(path, {"stage": name, "fingerprint": fp, "settings": settings,
                           "pending": True})
        log.info("stage %-20s running", name)
        t0 = time.time()
        result = fn() or {}
        self._write(path, {"stage": name, "fingerprint": fp, "settings": settings,
                           "seconds": round(time.time() - t0, 1), "result": result})
        self.ran.append(name)
        return result

    @staticmethod
    def _write(path: str, marker: dict) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(marker, f, indent=2, default=str)
        os.replace(tmp, path)


def _display_neutral(x):
    """`settings` with every `progress` (progress bars on or off) set to True: how a run is
    shown never changes what it makes, so `--config.progress=False` must not rerun (and
    move aside) finished stages. True, not dropped: workdirs made with the default keep
    their fingerprints."""
    if isinstance(x, dict):
        return {k: (True if k == "progress" else _display_neutral(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_display_neutral(v) for v in x]
    return x


def _supersede(path: str, tag: str) -> None:
    """Move `path` (and, for a file such as `train.jsonl`, its `<path>.*` side files) to
    `*.superseded-<tag>`."""
    path = os.path.normpath(path)
    found = [path] if os.path.exists(path) else []
    if os.path.isfile(path) or (not found and os.path.splitext(path)[1]):
        found += sorted(x for x in glob.glob(glob.escape(path) + ".*") if ".superseded-" not in x)
    for src in found:
        dst, k = f"{src}.superseded-{tag}", 1
        while os.path.exists(dst):
            dst, k = f"{src}.superseded-{tag}-{k}", k + 1
        shutil.move(src, dst)
        log.info("  moved aside (settings changed): %s -> %s", src, dst)
