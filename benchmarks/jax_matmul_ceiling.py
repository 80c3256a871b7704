"""What XLA's GPU kernel choices give on the DPO step's own matmul shapes, in one process.

Each case is compiled once per set of XLA compiler options (`jit(...).lower().compile(
compiler_options=...)`, the same debug options `XLA_FLAGS` sets, but per executable), then
timed on random data (median of `--reps` after warm-up, `block_until_ready`). Cases:

* `dot` — one `[M, K] @ [K, N]` (a projection of the decoder);
* `mlp` — LLaMA's SwiGLU MLP, forward and backward to the input and the three kernels, the
  way our step runs it (elementwise work next to the matmuls, which XLA may fuse into
  Triton GEMMs);
* `lora` — `x @ W + s·(x @ A) @ B` forward and backward to `A`, `B` and `x` (W frozen).

Option sets: `xla-default` (nothing set: XLA autotunes every GEMM at compile time),
`autotune0` (`xla_gpu_autotune_level=0`, as session 4's lease ran), `autotune0-cublas`
(also `xla_gpu_enable_triton_gemm=False`: GEMMs go to cuBLAS with its own heuristics).
Prints a table and one JSON line per row. Why: session 4 measured the 7B LoRA step at
1.5 % MFU with the autotuner off; this says, in a minute, whether the GEMM kernels are why.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

OPTION_SETS = {
    "xla-default": {},
    "autotune0": {"xla_gpu_autotune_level": 0},
    "autotune0-cublas": {"xla_gpu_autotune_level": 0, "xla_gpu_enable_triton_gemm": False},
}


def cases(m: int, d: int, f: int, r: int, dtype):
    import jax
    import jax.numpy as jnp

    def mlp(x, wg, wu, wd):
        return jnp.dot(jax.nn.silu(jnp.dot(x, wg)) * jnp.dot(x, wu), wd)

    def mlp_loss(x, wg, wu, wd):
        return jnp.sum(mlp(x, wg, wu, wd).astype(jnp.float32))

    def lora_loss(a, b, x, w):
        y = jnp.dot(x, w) + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * 2.0
        return jnp.sum(y.astype(jnp.float32) ** 2)

    shapes = {
        "dot": (lambda x, w: jnp.dot(x, w), [(m, d), (d, f)], 2 * m * d * f),
        "mlp": (jax.grad(mlp_loss, argnums=(0, 1, 2, 3)),
                [(m, d), (d, f), (d, f), (f, d)], 3 * 3 * 2 * m * d * f),
        "lora": (jax.grad(lora_loss, argnums=(0, 1, 2)),
                 [(d, r), (r, d), (m, d), (d, d)], 2 * m * d * d * 2 + 3 * 2 * 2 * m * d * r),
    }
    return {k: (fn, [(s, jnp.float32 if (k == "lora" and i < 2) else dtype)
                     for i, s in enumerate(ss)], fl)
            for k, (fn, ss, fl) in shapes.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=2304, help="tokens (2 pairs of 640 + 2·256 at 7B)")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--f", type=int, default=11008)
    ap.add_argument("--r", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--precision", default="default", help="jax_default_matmul_precision")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sets", default=",".join(OPTION_SETS))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    if args.precision != "default":
        jax.config.update("jax_default_matmul_precision", args.precision)
    dtype = jnp.dtype(args.dtype)
    rows = []
    rng = np.random.default_rng(0)
    for name, (fn, specs, flops) in cases(args.m, args.d, args.f, args.r, dtype).items():
        inputs = [jnp.asarray(rng.standard_normal(s, np.float32) * 0.02, dt) for s, dt in specs]
        for set_name in args.sets.split(","):
            opts = OPTION_SETS[set_name]
            t0 = time.perf_counter()
            try:
                exe = jax.jit(fn).lower(*inputs).compile(compiler_options=opts or None)
            except Exception as e:   # an option this XLA does not know: say so, go on
                rows.append({"case": name, "options": set_name, "error": repr(e)[:300]})
                continue
            compile_s = time.perf_counter() - t0
            for _ in range(3):
                jax.block_until_ready(exe(*inputs))
            ts = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                jax.block_until_ready(exe(*inputs))
                ts.append(time.perf_counter() - t0)
            med = statistics.median(ts)
            rows.append({"case": name, "options": set_name, "m": args.m, "d": args.d, "f": args.f,
                         "dtype": args.dtype, "precision": args.precision, "compile_s": compile_s,
                         "ms": med * 1e3, "tflops": flops / med / 1e12})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| case | options | compile s | ms (median) | TFLOP/s |  ({args.dtype}, M={args.m})")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['options']} | error: {r['error'][:80]} | | |")
        else:
            print(f"| {r['case']} | {r['options']} | {r['compile_s']:.1f} | {r['ms']:.2f} | "
                  f"{r['tflops']:.0f} |")
    return rows


if __name__ == "__main__":
    main()
