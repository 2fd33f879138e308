"""l0 solvers against the baselines: error, time, budgets, scaling and optimality gaps.

Layers: random correlated layers (d = m = 256..2048, n = 4d, as in layer_baselines.py) and the
three layers of a 784-300-100-10 MNIST MLP trained on the fly, each with its real inputs from
2048 training images (parallel scheme: every layer sees the dense network's activations).
Targets: 50/70/90% unstructured and 2:4. Every time ratio is against sparsegpt run in the same
process on the same layer. Writes bench/results/l0.json and four PNGs next to it.

    python bench/l0.py [--dims 256 512 1024 2048] [--quick] [--out PATH]
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

import layertrim as lt
from layertrim.atomic import atomic_write_text
from layertrim.problem import LayerProblem
from layertrim.solvers import run

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from layer_baselines import correlated_layer  # noqa: E402  (bench/ is a folder of scripts)
from plots_l0 import plot_convergence, plot_pareto, plot_quality, plot_scaling  # noqa: E402

TARGETS = [("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}), ("90%", {"sparsity": 0.9}),
           ("2:4", {"pattern": "2:4"})]
BASELINES = ("magnitude", "wanda", "sparsegpt")
L0 = ("l0-admm", "slr", "iht")
BUDGETS = (1.0, 2.0, 4.0)  # time budgets in multiples of sparsegpt's time
CALIBRATION = 2048


def mnist_layers():
    """(name, W, b, X) for the three layers of a freshly trained MNIST MLP."""
    import torch

    from layertrim.datasets import load_mnist
    from layertrim.demo import train_mlp

    data = load_mnist()
    Xtr, ytr = data["train"]
    model = train_mlp(Xtr, ytr)
    X = torch.from_numpy(Xtr[:CALIBRATION])
    out = []
    with torch.no_grad():
        for i, name in ((0, "mnist fc1"), (2, "mnist fc2"), (4, "mnist fc3")):
            layer = model[i]
            out.append((name, layer.weight.double().numpy(), layer.bias.double().numpy(),
                        X.double().numpy()))
            X = model[i + 1](layer(X)) if i + 1 < len(model) else layer(X)
    return out


def random_layers(dims):
    for d in dims:
        W, X = correlated_layer(d)
        yield f"random d={d}", W, None, X


def timed(problem, method, repeats=1, **opts):
    best = None
    for _ in range(repeats):
        r = run(problem, method, **opts)
        if best is None or r.wall_time < best.wall_time:
            best = r
    return best


def record(layer, label, problem, r, base):
    per_iter = None
    hist = [h for h in r.history if "time" in h]
    if len(hist) >= 2:
        per_iter = (hist[-1]["time"] - hist[0]["time"]) / (len(hist) - 1)
    return {"layer": layer, "target": label, "m": problem.m, "d": problem.d,
            "solver": r.solver, "options": {k: v for k, v in r.settings.items()
                                            if k in ("time_budget", "max_iter")},
            "rel_error": r.rel_error, "time_s": r.wall_time, "iterations": r.iterations,
            "time_per_iter_s": per_iter, "status": r.status,
            "error_vs_sparsegpt": r.rel_error / base.rel_error if base.rel_error > 0 else None,
            "time_vs_sparsegpt": r.wall_time / base.wall_time}


def quality_and_budgets(layers, budget_layers):
    records, pareto = [], []
    W, X = correlated_layer(128)  # warm-up: compile kernels and start BLAS threads untimed
    warm = LayerProblem.create(W, X, sparsity=0.5)
    for method in BASELINES + L0:
        run(warm, method)
    for name, W, b, X in layers:
        gram = lt.Gram.from_data(X)
        for label, target in TARGETS:
            p = LayerProblem.create(W, gram=gram, bias=b, **target)
            reps = 3 if p.d <= 512 else 1
            base = timed(p, "sparsegpt", 3)  # the denominator of every ratio: best of 3
            for method in BASELINES + L0:
                r = base if method == "sparsegpt" else timed(p, method, reps)
                rec = record(name, label, p, r, base)
                records.append(rec)
                print(f"{name:14s} {label:4s} {r.solver:10s} err={r.rel_error:.4f} "
                      f"({rec['error_vs_sparsegpt']:.2f}x sgpt) t={r.wall_time:.3f}s "
                      f"({rec['time_vs_sparsegpt']:.1f}x) it={r.iterations}", flush=True)
            if name not in budget_layers:
                continue
            for method in L0:
                for mult in BUDGETS:
                    r = timed(p, method, reps, time_budget=mult * base.wall_time)
                    rec = record(name, label, p, r, base)
                    rec["budget_x_sparsegpt"] = mult
                    pareto.append(rec)
                    print(f"{'':14s} {label:4s} {method:10s} budget {mult:.0f}x sgpt: "
                          f"err={rec['error_vs_sparsegpt']:.2f}x t={rec['time_vs_sparsegpt']:.2f}x",
                          flush=True)
    return records, pareto


def scaling(dims, m=512):
    """Factorization and per-iteration time of l0-admm at fixed m, growing d."""
    rows = []
    for d in dims:
        W, X = correlated_layer(d)
        p = LayerProblem.create(W[:m], gram=lt.Gram.from_data(X), sparsity=0.7)
        r = run(p, "l0-admm")
        h = r.history
        rows.append({"d": d, "m": m, "setup_s": h[0]["time"],
                     "time_per_iter_s": (h[-1]["time"] - h[0]["time"]) / max(len(h) - 1, 1),
                     "iterations": r.iterations, "total_s": r.wall_time})
        print(f"scaling d={d:5d} m={m}: setup {rows[-1]['setup_s']:.3f}s, "
              f"{rows[-1]['time_per_iter_s'] * 1e3:.2f} ms/iter", flush=True)
    x = np.log([r["d"] for r in rows])
    slopes = {key: float(np.polyfit(x, np.log([r[key] for r in rows]), 1)[0])
              for key in ("setup_s", "time_per_iter_s")}
    return {"rows": rows, "fitted_slopes": slopes}


def optimality_gaps(n_instances):
    """Mean relative gap to the brute-force optimum on tiny layers (d=10, m=3)."""
    from tests.brute_force import optimum
    from tests.conftest import correlated_inputs

    out = {}
    for label, target in [("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}),
                          ("row 50%", {"sparsity": 0.5, "pattern": "row"}),
                          ("2:4", {"pattern": "2:4"})]:
        gaps: dict[str, list[float]] = {m: [] for m in BASELINES + L0}
        for seed in range(n_instances):
            rng = np.random.default_rng(seed)
            X = correlated_inputs(60, 12, seed=seed + 1000)
            p = LayerProblem.create(rng.standard_normal((3, 12)), X, bias=rng.standard_normal(3),
                                    **target)
            best = optimum(p)
            for method in gaps:
                gaps[method].append(run(p, method).objective / best - 1)
        out[label] = {m: {"mean_gap": float(np.mean(g)), "max_gap": float(np.max(g)),
                          "optimal_fraction": float(np.mean(np.array(g) < 1e-9))}
                      for m, g in gaps.items()}
        print(f"optimality {label}: " + ", ".join(
            f"{m} {v['mean_gap']:.3f}" for m, v in out[label].items()), flush=True)
    return out


def convergence(layer):
    name, W, b, X = layer
    p = LayerProblem.create(W, X, bias=b, sparsity=0.9)
    curves = {}
    for method in L0:
        r = run(p, method)
        curves[method] = [{"iter": h["iter"], "objective": h["objective"], "time": h["time"]}
                          for h in r.history]
        curves[method + " final"] = r.objective
    return {"layer": name, "target": "90%", "curves": curves,
            "reference_energy": p.reference_energy()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--quick", action="store_true", help="small layers only (a smoke run)")
    ap.add_argument("--out", default=str(HERE / "results" / "l0.json"))
    args = ap.parse_args(argv)
    dims = [256, 512] if args.quick else args.dims
    mnist = mnist_layers()
    layers = mnist + list(random_layers(dims))
    budget_layers = {"mnist fc1", "mnist fc2", f"random d={max(dims)}", f"random d={min(dims)}"}
    t = time.perf_counter()
    records, pareto = quality_and_budgets(layers, budget_layers)
    out = {
        "benchmark": "l0",
        "setup": {"random layers": "AR(1) rho=0.8, log-normal scales, m = d, n = 4d",
                  "mnist": f"784-300-100-10 MLP, {CALIBRATION} training images, dense inputs",
                  "timing": "best of 3 for d <= 512, else 1 run (sparsegpt: always best of 3, "
                            "after a warm-up run of every solver); ratios vs sparsegpt, same "
                            "process"},
        "machine": {"python": sys.version.split()[0], "numpy": np.__version__,
                    "platform": platform.platform(), "cpus": os.cpu_count()},
        "results": records,
        "pareto": pareto,
        "scaling": scaling([256, 512, 1024] if args.quick else [256, 512, 1024, 2048, 4096]),
        "optimality": optimality_gaps(5 if args.quick else 20),
        "convergence": convergence(mnist[0]),
        "bench_seconds": time.perf_counter() - t,
    }
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    for fn, suffix in ((plot_quality, "_quality"), (plot_pareto, "_pareto"),
                       (plot_scaling, "_scaling"), (plot_convergence, "_convergence")):
        print(f"wrote {fn(out, path.with_name(path.stem + suffix + '.png'))}")
    print(summary(out))
    return 0


def summary(out) -> str:
    """Markdown tables for the README: error ratio and time ratio vs sparsegpt."""
    recs = out["results"]
    layers = list(dict.fromkeys(r["layer"] for r in recs))
    lines = ["| layer | target | " + " | ".join(f"{m} err (x sgpt) / time (x sgpt)" for m in L0)
             + " | sparsegpt err / time |", "|---|---|" + "---:|" * (len(L0) + 1)]
    for lay in layers:
        for label, _ in TARGETS:
            by = {r["solver"]: r for r in recs if r["layer"] == lay and r["target"] == label}
            cells = [f"{by[m]['rel_error']:.4f} ({by[m]['error_vs_sparsegpt']:.2f}x) / "
                     f"{by[m]['time_s']:.2f}s ({by[m]['time_vs_sparsegpt']:.1f}x)" for m in L0]
            g = by["sparsegpt"]
            lines.append(f"| {lay} | {label} | " + " | ".join(cells)
                         + f" | {g['rel_error']:.4f} / {g['time_s']:.2f}s |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
