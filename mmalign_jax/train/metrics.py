"""Metrics to `metrics.jsonl` and TensorBoard, and a PNG of the training curves."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


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
        """On resume, drop rows logged after the restored checkpoint (they will be redone)."""
        if not self.active or not os.path.exists(self.path):
            return
        rows = read_metrics(self.path)
        with open(self.path, "w") as f:
            for r in rows:
                if r["step"] <= step:
                    f.write(json.dumps(r) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
