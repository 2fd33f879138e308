"""Baseline solvers on synthetic correlated layers: relative error and time per layer.

Layers of d = 256, 512, 1024, 2048 inputs with m = d outputs and n = 4d correlated samples
(AR(1) feature correlation rho=0.8 and log-normal feature scales, so input norms differ as
in real activations). Writes bench/results/layer_baselines.json and .png; time ratios are against
magnitude pruning run in the same process on the same layer.

    python bench/layer_baselines.py [--dims 256 512] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

import layertrim as lt
from layertrim.atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from plots import plot_layer_baselines  # noqa: E402  (bench/ is a folder of scripts)

SPARSITIES = (0.5, 0.7, 0.9)
RUNS = [("magnitude", {}), ("random", {}), ("wanda", {}), ("sparsegpt", {}),
        ("magnitude", {"refit": True}), ("sparsegpt", {"refit": True})]
REFIT_MAX_D = 2048  # exact refit costs O(m s^3); raise with care


def correlated_layer(d: int, seed: int = 0, rho: float = 0.8):
    rng = np.random.default_rng(seed)
    n = 4 * d
    corr_root = scipy.linalg.cholesky(scipy.linalg.toeplitz(rho ** np.arange(d)), lower=False)
    scales = np.exp(0.5 * rng.standard_normal(d))
    X = (rng.standard_normal((n, d)) @ corr_root) * scales
    W = rng.standard_normal((d, d)) / np.sqrt(d)
    return W, X


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    default_out = Path(__file__).parent / "results" / "layer_baselines.json"
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("--table", action="store_true",
                    help="only print the README's markdown table from an existing --out file")
    args = ap.parse_args(argv)
    if args.table:
        saved = json.loads(Path(args.out).read_text())["results"]
        print(markdown_table(saved))
        print(f"wrote {plot_layer_baselines(saved, Path(args.out).with_suffix('.png'))}")
        return 0

    records = []
    for d in args.dims:
        W, X = correlated_layer(d)
        t = time.perf_counter()
        gram = lt.Gram.from_data(X)
        gram_time = time.perf_counter() - t
        for s in SPARSITIES:
            base_time = None
            for method, opts in RUNS:
                if opts.get("refit") and d > REFIT_MAX_D:
                    continue
                repeats = 3 if d <= 512 else 1
                times = []
                for _ in range(repeats):
                    r = lt.solve_layer(W, gram=gram, sparsity=s, method=method, **opts)
                    times.append(r.wall_time)
                best = min(times)
                if method == "magnitude" and not opts:
                    base_time = best
                rec = {"d": d, "m": d, "n": 4 * d, "sparsity": s, "solver": r.solver,
                       "rel_error": r.rel_error, "time_s": best,
                       "time_vs_magnitude": best / base_time, "gram_time_s": gram_time}
                records.append(rec)
                print(f"d={d:5d} s={s:.1f} {r.solver:16s} rel_err={r.rel_error:.4f} "
                      f"time={best:8.4f}s", flush=True)

    out = {
        "benchmark": "layer_baselines",
        "setup": {"inputs": "AR(1) rho=0.8, log-normal scales sigma=0.5", "m": "d", "n": "4d",
                  "refit_max_d": REFIT_MAX_D, "timing": "best of 3 (d<=512) else 1 run"},
        "machine": {"python": sys.version.split()[0], "numpy": np.__version__,
                    "platform": platform.platform(), "cpus": os.cpu_count()},
        "results": records,
    }
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    print(f"wrote {plot_layer_baselines(records, path.with_suffix('.png'))}\n")
    print(markdown_table(records))
    return 0


def markdown_table(records: list[dict]) -> str:
    """Relative error at 50/70/90% and time at 70% (seconds; x magnitude) per solver and d."""
    by_key = {(r["d"], r["solver"], r["sparsity"]): r for r in records}
    dims = sorted({r["d"] for r in records})
    solvers = list(dict.fromkeys(r["solver"] for r in records))
    lines = ["| d | solver | rel. error 50% | 70% | 90% | time at 70% [s] | vs magnitude |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for d in dims:
        for name in solvers:
            if (d, name, 0.7) not in by_key:
                continue
            errs = " | ".join(f"{by_key[(d, name, s)]['rel_error']:.4f}" for s in SPARSITIES)
            t = by_key[(d, name, 0.7)]
            lines.append(f"| {d} | {name} | {errs} | {t['time_s']:.3f} | "
                         f"{t['time_vs_magnitude']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
