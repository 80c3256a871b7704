"""Metrics to `metrics.jsonl` and TensorBoard, and a PNG of the training curves."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Mapping

import jax

from mmalign_jax.data.records import write_jsonl


class MetricWriter:
    """One JSON object per logged step (process 0 only); the same scalars to TensorBoard."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the restored checkpoint (they will be redone).

        The kept rows are written aside and renamed over the file (fsynced, then the folder),
        so a kill during the rewrite of a long log leaves the old file or the new one, never
        a part (a rewrite in place once left 79,065 of 200,000 rows). Lines that are not
        rows (a torn last line from a killed writer or a full disk) are moved to
        `metrics.jsonl.torn` instead of stopping every later resume."""
        if not self.active or not os.path.exists(self.path):
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        stale = f".{os.path.basename(self.path)}."
        for name in os.listdir(folder):   # a rewrite killed before its rename
            if name.startswith(stale) and name.endswith(".tmp"):
                os.remove(os.path.join(folder, name))
        rows, bad = _parse(self.path)
        keep = [r for r in rows if r["step"] <= step]
        if bad:
            with open(self.path + ".torn", "ab") as f:
                f.write(b"".join(raw + b"\n" for _, raw in bad))
                f.flush()
                os.fsync(f.fileno())
            logging.getLogger(__name__).warning(
                "%s: %d line(s) that are not metric rows (line %s; a torn write?) moved to %s",
                self.path, len(bad), ", ".join(str(n) for n, _ in bad[:5]), self.path + ".torn")
        elif len(keep) == len(rows):
            return            # nothing to drop: leave the file alone
        write_jsonl(self.path, keep)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)      # the rename itself, durably
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """The rows of a `metrics.jsonl`; lines that are not rows (a torn last line left by a
    killed writer or a full disk) are skipped with a warning, not an error: the log must
    not stop the run, the plot or a resume."""
    rows, bad = _parse(path)
    if bad:
        logging.getLogger(__name__).warning(
            "%s: skipped %d line(s) that are not metric rows (line %s)", path, len(bad),
            ", ".join(str(n) for n, _ in bad[:5]))
    return rows


def _parse(path: str) -> tuple[list[dict], list[tuple[int, bytes]]]:
    """(rows, [(line number, raw bytes)] of the lines that are not a JSON object with a
    numeric step)."""
    with open(path, "rb") as f:
        data = f.read()
    rows, bad = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or isinstance(row.get("step"), bool):
                raise ValueError("not a row")
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            bad.append((n, raw))
            continue
        rows.append(row)
    return rows, bad


def plot_curves(metrics_path: str, png_path: str) -> str | None:
    """Loss, reward accuracy and margins (train and eval) against the step."""
    if not os.path.exists(metrics_path):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [("loss", ["loss", "eval/loss"]),
              ("reward accuracy", ["rewards/accuracy", "eval/rewards/accuracy"]),
              ("rewards", ["rewards/chosen", "rewards/rejected", "rewards/margin",
                           "eval/rewards/margin"])]
    panels = [(t, [k for k in ks if any(k in r for r in rows)]) for t, ks in panels]
    panels = [(t, ks) for t, ks in panels if ks]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax.plot(*zip(*pts), marker="o" if k.startswith("eval/") else None,
                    markersize=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
