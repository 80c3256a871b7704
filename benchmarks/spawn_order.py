"""Does the order in which benchmark processes start change their speed? Measured, not assumed.

    python benchmarks/spawn_order.py --impls ours,ours,ours --rounds 6      # one program, 3 processes
    python benchmarks/spawn_order.py --impls ours,torch --rounds 8          # balanced ratio

Every implementation runs in its own process in `--serve` mode (ours: this script's
`--serve-ours`, the same `TrainBench` DPO step `mmalign_jax.bench` times; `torch`/`trl`: their
baseline scripts), the processes take turns one step each per round (order rotating, as
`bench`'s interleaved mode), and the whole measurement is repeated once per rotation of the
*start* order, so each implementation is started first, second, … equally often. Prints the
median step time of each implementation per start order and, per implementation, the
geometric mean over the start orders — the ratio in which the start order cancels.

Why: on the shared 2-core VM, identical processes of our step were not equally fast — the
one started first ran 3-9 % slower than its mean over the orders (up to 35 % slower than the
one started last); the PyTorch step showed no consistent effect (docs/PERFORMANCE.md).
`mmalign_jax.bench` runs ours in its own (first) process and starts the baselines after it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def serve_ours(args) -> None:
    """The served-process protocol of the baseline scripts, for our DPO step."""
    import time
    from mmalign_jax import bench
    tb = bench.TrainBench("dpo", bench.Workload(args.preset, args.pairs, args.prompt_text,
                                                args.response_len), "none")
    for _ in range(1 + args.warmup):   # compile + warm-up
        tb.step()
    print(json.dumps({"event": "ready"}), flush=True)
    while sys.stdin.readline():
        c0 = time.process_time()
        s = tb.step()
        print(json.dumps({"event": "step", "s": s, "cpu_s": time.process_time() - c0}), flush=True)


def command(impl: str, args) -> list[str]:
    from mmalign_jax import bench
    if impl == "ours":
        return [sys.executable, os.path.abspath(__file__), "--serve-ours", "--preset", args.preset,
                "--pairs", str(args.pairs), "--prompt-text", str(args.prompt_text),
                "--response-len", str(args.response_len), "--warmup", str(args.warmup)]
    w = bench.Workload(args.preset, args.pairs, args.prompt_text, args.response_len)
    cmd, err = bench.baseline_command(impl, w, args.rounds, args.warmup, serve=True)
    if err:
        raise SystemExit(f"{impl}: {err['error']}")
    return cmd


def measure(order: list[tuple[str, str]], args) -> dict[str, list[float]]:
    """Start the processes in `order` (label, impl), then `args.rounds` rotating rounds."""
    from mmalign_jax import bench
    served = {}
    for label, impl in order:   # one at a time: each sets up alone, as in `bench`
        sb = bench.ServedBaseline(label, command(impl, args), args.timeout)
        if not sb.wait_ready():
            raise SystemExit(f"{label} did not start: {sb.finish()}")
        served[label] = sb
    labels = [label for label, _ in order]
    times = {label: [] for label in labels}
    for k in range(args.rounds):
        for label in labels[k % len(labels):] + labels[:k % len(labels)]:
            s = served[label].step()
            if s is None:
                raise SystemExit(f"{label} stopped: {served[label].finish()}")
            times[label].append(s)
    for sb in served.values():
        sb.finish()
    return times


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
    ap.add_argument("--serve-ours", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.serve_ours:
        return serve_ours(args)
    impls = args.impls.split(",")
    entries = [(f"{impl}#{i + 1}", impl) for i, impl in enumerate(impls)]
    runs = []
    for r in range(len(entries)):
        order = entries[r:] + entries[:r]
        times = measure(order, args)
        med = {label: statistics.median(t) for label, t in times.items()}
        runs.append({"start_order": [label for label, _ in order], "median_s": med, "step_seconds": times})
        print(f"start order {' → '.join(label for label, _ in order)}: " + ", ".join(
            f"{label} {med[label]:.3f} s (started {[l for l, _ in order].index(label) + 1})"
            for label, _ in entries), flush=True)
    geo = {label: math.exp(statistics.fmean(math.log(run["median_s"][label]) for run in runs))
           for label, _ in entries}
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
    main()
