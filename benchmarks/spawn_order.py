"""Does the order in which benchmark processes start change their speed? Measured, not assumed.

    python benchmarks/spawn_order.py --impls ours,ours,ours --rounds 6      # one program, 3 processes
    python benchmarks/spawn_order.py --impls ours,torch --rounds 8          # balanced ratio
    python benchmarks/spawn_order.py --impls ours,ours@MMALIGN_JAX_KEEP_STEP_MEMORY=1 --rounds 8

Every implementation runs in its own process in `--serve` mode (ours: `python -m
mmalign_jax.bench --serve-ours`, the same `TrainBench` DPO step the bench times; `torch`/`trl`:
their baseline scripts), the processes take turns one step each per round (order rotating),
and the whole measurement is repeated once per rotation of the *start* order, so each
implementation is started first, second, … equally often — `bench.start_order_rounds`, which
`python -m mmalign_jax.bench` itself uses (`--start-orders balanced`). This script adds
repeats of one implementation (`ours,ours,ours`) and the effect by start position. Prints the
median step time of each implementation per start order and, per implementation, the
geometric mean over the start orders — the ratio in which the start order cancels.

Why: on the shared 2-core VM, identical processes of our step were not equally fast — the
one started first ran 3-9 % slower than its mean over the orders (up to 35 % slower than the
one started last); the PyTorch step showed no consistent effect (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def command(impl: str, args) -> list[str]:
    """`impl`'s served process; `impl@NAME=VALUE[@...]` runs it with those environment
    variables (an A/B of a setting: `--impls ours,ours@MMALIGN_JAX_KEEP_STEP_MEMORY=1`)."""
    from mmalign_jax import bench
    impl, *env = impl.split("@")
    if env:
        return ["env", *env, *command(impl, args)]
    w = bench.Workload(args.preset, args.pairs, args.prompt_text, args.response_len)
    if impl == "ours":
        return bench.ours_command(w, args.warmup, "none", 0, "float32", "auto", "highest")
    cmd, err = bench.baseline_command(impl, w, args.rounds, args.warmup, serve=True)
    if err:
        raise SystemExit(f"{impl}: {err['error']}")
    return cmd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impls", default="ours,torch", help="comma list of ours|torch|trl; repeats allowed")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--preset", default="bench-small")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt-text", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    from mmalign_jax import bench
    impls = args.impls.split(",")
    entries = [(f"{impl}#{i + 1}", impl) for i, impl in enumerate(impls)]
    m = bench.start_order_rounds([(label, command(impl, args)) for label, impl in entries],
                                 args.rounds, args.timeout)
    if m["errors"]:
        raise SystemExit(f"stopped: {m['errors']}")
    runs, geo = m["runs"], m["geometric_mean_s"]
    for run in runs:
        order = run["start_order"]
        print(f"start order {' → '.join(order)}: " + ", ".join(
            f"{label} {run['median_s'][label]:.3f} s (started {order.index(label) + 1})"
            for label, _ in entries), flush=True)
    first = entries[0][0]
    print("geometric mean over start orders: " + ", ".join(
        f"{label} {s:.3f} s ({geo[first] / s:.2f}× {first}'s speed)" if label != first else f"{label} {s:.3f} s"
        for label, s in geo.items()))
    by_position = {}
    for run in runs:
        for pos, label in enumerate(run["start_order"]):
            by_position.setdefault(pos + 1, []).append(run["median_s"][label] / geo[label])
    print("step time by start position, relative to that implementation's geometric mean: " + ", ".join(
        f"started {pos}: {statistics.fmean(v):.3f}" for pos, v in sorted(by_position.items())))
    out = {"runs": runs, "geometric_mean_s": geo,
           "by_start_position": {p: statistics.fmean(v) for p, v in by_position.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # the library's XLA flags / malloc settings, as its CLIs do
    main()
