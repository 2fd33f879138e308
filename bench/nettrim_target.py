"""Net-Trim with a sparsity target: the gain search's cost against plain bisection.

On the first layer (784 -> 300 + bias) of the demo's MNIST MLP, P = 2048 training images,
``nettrim`` with ``target_sparsity`` (the secant search on loose solves, confirmed by one full
solve) is timed at 50/70/90%, next to plain bisection on log(gain) over [1e-4, 1] with a full
solve per step (each warm-started from the previous W), run in the same process at 90%.

    python bench/nettrim_target.py [--targets 0.5 0.7 0.9] [--baseline 0.9] [--out PATH]
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
sys.path.insert(0, str(HERE))
from nettrim import mlp_layers, problem, train  # noqa: E402

from layertrim.atomic import atomic_write_text  # noqa: E402
from layertrim.solvers import run  # noqa: E402


def plain_bisection(pb, target: float, d: int, max_steps: int = 30) -> dict:
    """The search before the secant one: halve [lo, hi] on log(gain), a full solve each step."""
    lo, hi, g, W, total, steps = 1e-4, 1.0, 0.05, None, 0, []
    t = time.perf_counter()
    for _ in range(max_steps):
        opts = {} if W is None else {"warm_start": W}
        r = run(pb, "nettrim", gain=g, **opts)
        W = np.hstack([r.W, r.bias[:, None]]) if r.bias is not None else r.W
        total += r.certificate["iterations"]
        steps.append({"gain": g, "sparsity": r.sparsity})
        if abs(r.sparsity - target) <= 0.01:
            break
        lo, hi = (g, hi) if r.sparsity < target else (lo, g)
        g = float(np.sqrt(lo * hi))
    return {"target": target, "time_s": time.perf_counter() - t, "iterations": total,
            "steps": len(steps), "sparsity": steps[-1]["sparsity"], "path": steps}


def secant(pb, target: float) -> dict:
    t = time.perf_counter()
    r = run(pb, "nettrim", target_sparsity=target)
    c = r.certificate
    return {"target": target, "time_s": time.perf_counter() - t, "iterations": c["iterations"],
            "steps": len(c["bisection"]),
            "full_solves": sum(s["accurate"] for s in c["bisection"]),
            "sparsity": r.sparsity, "target_met": c["target_met"], "status": r.status,
            "path": [{k: float(v) if isinstance(v, np.floating) else v for k, v in s.items()}
                     for s in c["bisection"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--baseline", type=float, nargs="*", default=[0.9])
    ap.add_argument("--P", type=int, default=2048)
    ap.add_argument("--out", default=str(HERE / "results" / "nettrim_target.json"))
    args = ap.parse_args()
    model, data = train()
    W, b, X, relu = mlp_layers(model, data["train"][0][: args.P])[0]
    pb = problem(W, b, X, relu)
    out: dict = {"layer": f"mnist 784->300, P={args.P}",
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "loadavg_before": os.getloadavg()}}
    out["secant"] = [secant(pb, t) for t in args.targets]
    for r in out["secant"]:
        print(f"secant {r['target']:.0%}: {r['time_s']:.1f} s, {r['iterations']} it, "
              f"{r['steps']} steps, sparsity {r['sparsity']:.4f}", flush=True)
    out["plain_bisection"] = [plain_bisection(pb, t, W.shape[1]) for t in args.baseline]
    for r in out["plain_bisection"]:
        s = next(x for x in out["secant"] if x["target"] == r["target"])
        r["speedup_secant"] = r["time_s"] / s["time_s"]
        print(f"bisection {r['target']:.0%}: {r['time_s']:.1f} s, {r['iterations']} it, "
              f"{r['steps']} steps, sparsity {r['sparsity']:.4f}; secant {r['speedup_secant']:.1f}x"
              " faster", flush=True)
    out["machine"]["loadavg_after"] = os.getloadavg()
    print(f"wrote {atomic_write_text(args.out, json.dumps(out, indent=1))}")


if __name__ == "__main__":
    main()
