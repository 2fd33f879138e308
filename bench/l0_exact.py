"""The ReLU l0 model solved exactly: l0-cutting-plane against brute force, and proof times.

1. Tiny neurons (d = 10, 12, 14; keep half): every support of size k is enumerated with the
   same convex subproblem; the cutting plane must return the same optimum with gap <= 1e-6.
2. Proof times on d = 20 and d = 30 neurons at several budgets, with a per-neuron time limit;
   status, final gap, master iterations and seconds are recorded as they are.

Writes bench/results/l0_exact.json.    python bench/l0_exact.py [--quick]
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

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from layertrim.atomic import atomic_write_text  # noqa: E402
from layertrim.solvers import run  # noqa: E402
from tests.test_l0_cutting_plane import brute_force, make_problem, neuron_models  # noqa: E402


def versus_brute_force(dims, seeds):
    rows = []
    for d in dims:
        k = d // 2
        for seed in seeds:
            P = make_problem(d, k, n=5 * d, seed=seed)
            t = time.perf_counter()
            vals = brute_force(neuron_models(P)[0], k)
            t_brute = time.perf_counter() - t
            best = min(vals.values())
            r = run(P, "l0-cutting-plane")
            ub = r.certificate["upper_bound"][0]
            rows.append({"d": d, "k": k, "seed": seed, "supports": len(vals),
                         "brute_force_optimum": best, "cutting_plane": ub,
                         "relative_difference": abs(ub - best) / max(abs(best), 1e-300),
                         "gap": r.certificate["gap"][0], "status": r.status,
                         "time_s": r.wall_time, "brute_force_s": t_brute})
            print(f"d={d} k={k} seed={seed}: optimum {best:.6g}, cutting plane {ub:.6g} "
                  f"(gap {rows[-1]['gap']:.1e}, {r.status}) in {r.wall_time:.2f}s; "
                  f"brute force {len(vals)} supports in {t_brute:.1f}s", flush=True)
    return rows


def proof_times(cases, seeds, time_limit):
    rows = []
    for d, k in cases:
        for seed in seeds:
            P = make_problem(d, k, n=10 * d, seed=seed)
            r = run(P, "l0-cutting-plane", time_limit=time_limit)
            c = r.certificate
            rows.append({"d": d, "k": k, "sparsity": 1 - k / d, "seed": seed,
                         "status": r.status, "gap": c["gap"][0], "time_s": r.wall_time,
                         "master_iterations": r.iterations})
            print(f"d={d} keep {k} seed={seed}: {r.status}, gap {c['gap'][0]:.1e}, "
                  f"{r.iterations} masters, {r.wall_time:.1f}s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "l0_exact.json"))
    args = ap.parse_args(argv)
    seeds = [0, 1] if args.quick else [0, 1, 2]
    dims = [10, 12] if args.quick else [10, 12, 14]
    cases = [(20, 10), (20, 6), (30, 21), (30, 15), (30, 9)]
    out = {
        "benchmark": "l0_exact",
        "setup": {"inputs": "AR(1) rho=0.8 correlated, log-normal scales; n = 5d (brute force) "
                            "or 10d (proof times); one output neuron with a bias; ReLU model, "
                            "slack 0, ridge 1e-6 mean(diag H)",
                  "time_limit_per_neuron_s": 30},
        "machine": {"python": sys.version.split()[0], "numpy": np.__version__,
                    "platform": platform.platform(), "cpus": os.cpu_count()},
        "versus_brute_force": versus_brute_force(dims, seeds),
        "proof_times": proof_times(cases[:2] if args.quick else cases, seeds[:2], 30.0),
    }
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
