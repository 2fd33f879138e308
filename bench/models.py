"""Whole-model pruning of real MNIST networks, one shot, no retraining, against PyTorch's
built-in global magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with L1) run in
the same script.

Models: the 784-300-100-10 MLP of the demo (3 epochs) and a LeNet-5-like CNN (1 epoch).
Levels: 50/70/80/90/95% of all prunable weights, counted globally. layertrim runs l0-admm,
sparsegpt and magnitude, each in cascade and parallel with the "global" allocation
(error-curve dynamic programming), and l0-admm with the "uniform" one. Also: where the time
of a prune goes (calibration, solving, write-back), the cost of
calibration against a plain forward pass, and peak RSS for two calibration sizes.

    python bench/models.py [--quick] [--out PATH]
    python bench/models.py --summary bench/results/models.json   # the README's tables
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import layertrim as lt
from layertrim.adapters.torch import collect_grams, find_layers
from layertrim.atomic import atomic_write_text
from layertrim.datasets import load_mnist
from layertrim.demo import fit, lenet, train_mlp

HERE = Path(__file__).parent
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)
CALIB = 2048
MAIN = "layertrim l0-admm cascade, global"  # the default policy the target is about


def predictions(model, X) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in X.split(2000)]).argmax(1)


def accuracy(model, X, y) -> float:
    return float((predictions(model, X) == y).float().mean())


def paired_test(ours: torch.Tensor, base: torch.Tensor, y: torch.Tensor) -> dict:
    """Exact McNemar test on the same test images: the images only one model gets right
    decide; p is the two-sided chance of a split at least this uneven if both models were
    equally accurate (a difference of a few images is noise, not a ranking)."""
    from scipy.stats import binomtest

    a, b = ours == y, base == y
    only_ours, only_base = int((a & ~b).sum()), int((~a & b).sum())
    k = only_ours + only_base
    p = 1.0 if k == 0 else float(binomtest(only_ours, k, 0.5).pvalue)
    return {"only_ours_right": only_ours, "only_torch_right": only_base, "p_value": p}


def torch_global_magnitude(model, level):
    m = copy.deepcopy(model)
    params = [(la.module, "weight") for la in find_layers(m)]
    from torch.nn.utils import prune
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=level)
    for mod, name in params:
        prune.remove(mod, name)
    return m


def total_sparsity(model) -> float:
    ws = [la.module.weight for la in find_layers(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def compare(name, model, calib, Xte, yte, levels, configs):
    rows = [{"model": name, "config": "dense", "level": 0.0,
             "accuracy": accuracy(model, Xte, yte), "sparsity": 0.0}]
    for level in levels:
        t = time.perf_counter()
        base = torch_global_magnitude(model, level)
        base_pred = predictions(base, Xte)
        rows.append({"model": name, "config": "torch global L1", "level": level,
                     "accuracy": float((base_pred == yte).float().mean()),
                     "sparsity": total_sparsity(base), "time_s": time.perf_counter() - t})
        print(rows[-1], flush=True)
        for label, opts in configs:
            m = copy.deepcopy(model)
            t = time.perf_counter()
            rep = lt.prune_model(m, calib, sparsity=level, executor="serial", **opts)
            spent = time.perf_counter() - t
            pred = predictions(m, Xte)
            rows.append({"model": name, "config": label, "level": level,
                         "accuracy": float((pred == yte).float().mean()),
                         "sparsity": total_sparsity(m), "time_s": spent,
                         "allocation": rep.allocation, "timing": rep.timing,
                         "vs_torch": paired_test(pred, base_pred, yte)})
            print({k: v for k, v in rows[-1].items() if k != "allocation"}, flush=True)
    return rows


def calibration_cost(model, calib):
    """Calibration (all layers' Grams, parallel schedule) against a plain forward pass."""
    with torch.no_grad():
        for x in calib:
            model(x)  # warm-up
        t = time.perf_counter()
        for x in calib:
            model(x)
        plain = time.perf_counter() - t
    t = time.perf_counter()
    collect_grams(model, find_layers(model), calib)
    spent = time.perf_counter() - t
    return {"forward_s": plain, "calibration_s": spent, "ratio": spent / plain}


def peak_rss_mb(n: int) -> float:
    """Peak RSS of a child process that prunes the CNN with n calibration images."""
    code = (
        "import resource, torch;"
        "import layertrim as lt; from layertrim.demo import lenet;"
        "torch.manual_seed(0); m = lenet().eval();"
        f"calib = (torch.rand(256, 1, 28, 28) for _ in range({n // 256}));"
        "lt.prune_model(m, calib, sparsity=0.5, method='sparsegpt', schedule='parallel',"
        " executor='serial');"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2))
    for ax, name in zip(np.atleast_1d(axes), models, strict=True):
        rs = [r for r in rows if r["model"] == name]
        dense = next(r["accuracy"] for r in rs if r["config"] == "dense")
        for cfg in dict.fromkeys(r["config"] for r in rs if r["config"] != "dense"):
            pts = sorted((r["level"], r["accuracy"]) for r in rs if r["config"] == cfg)
            ax.plot(*zip(*pts, strict=True), "o-", label=cfg)
        ax.axhline(dense, color="k", ls=":", label=f"dense {dense:.4f}")
        ax.set_xlabel("global sparsity")
        ax.set_ylabel("test accuracy (no retraining)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(out: dict) -> str:
    """Markdown tables of a models.json: test accuracy (time) per config and level."""
    lines = []
    levels = out["levels"]
    for name in dict.fromkeys(r["model"] for r in out["rows"]):
        rs = [r for r in out["rows"] if r["model"] == name]
        dense = next(r["accuracy"] for r in rs if r["config"] == "dense")
        lines += [f"**{name}** (dense test accuracy {dense:.4f}); test accuracy, no retraining "
                  f"(time):", "",
                  "| config | " + " | ".join(f"{lv:.0%}" for lv in levels) + " |",
                  "|---|" + "---:|" * len(levels)]
        for cfg in dict.fromkeys(r["config"] for r in rs if r["config"] != "dense"):
            cells = {r["level"]: f"{r['accuracy']:.4f} ({r['time_s']:.1f} s)"
                     for r in rs if r["config"] == cfg}
            lines.append(f"| {cfg} | " + " | ".join(cells.get(lv, "-") for lv in levels) + " |")
        lines.append("")
        main_rows = {r["level"]: r for r in rs if r["config"] == MAIN}
        if main_rows:
            lines.append(f"{MAIN} against torch global L1, paired on the test images "
                         f"(images only ours / only torch gets right, exact McNemar p): "
                         + "; ".join(f"{lv:.0%}: {v['only_ours_right']}/"
                                     f"{v['only_torch_right']}, "
                                     + ("p<1e-10" if v["p_value"] < 1e-10
                                        else f"p={v['p_value']:.2g}")
                                     for lv, v in ((lv, main_rows[lv]["vs_torch"])
                                                   for lv in levels if lv in main_rows))
                         + ".")
            lines.append("")
    cal = out["calibration"]
    lines.append(f"Calibration of LeNet-5 on {CALIB} images (all layers' Grams): "
                 f"{cal['calibration_s']:.2f} s, {cal['ratio']:.1f}x a plain forward pass "
                 f"({cal['forward_s'] * 1e3:.0f} ms). Peak RSS of a parallel prune with n = "
                 + ", ".join(f"{n}: {v:.0f} MB" for n, v in out["peak_rss_mb"].items()) + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "models.json"))
    ap.add_argument("--summary", metavar="JSON", help="print the tables of a results file")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(json.loads(Path(args.summary).read_text())))
        return 0
    t0 = time.perf_counter()
    data = load_mnist()
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    Xte, yte = (torch.from_numpy(a) for a in data["test"])
    mlp = train_mlp(data["train"][0], data["train"][1])
    cnn = fit(lenet(), Xtr.reshape(-1, 1, 28, 28), ytr, epochs=1)
    levels = (0.5, 0.9) if args.quick else LEVELS
    configs = [(f"layertrim {method} {schedule}, global",
                {"method": method, "schedule": schedule, "allocation": "global", **extra})
               for method, extra in (("l0-admm", {}), ("sparsegpt", {}), ("magnitude", {}))
               for schedule in ("cascade", "parallel")]
    configs.append(("layertrim l0-admm cascade, uniform",
                    {"method": "l0-admm", "schedule": "cascade", "allocation": "uniform"}))
    if args.quick:
        configs = [c for c in configs if c[1]["schedule"] == "cascade"]
    rows = []
    for name, model, X in (("mlp 784-300-100-10", mlp, Xtr[:CALIB]),
                           ("lenet-5 cnn", cnn, Xtr[:CALIB].reshape(-1, 1, 28, 28))):
        calib = list(X.split(256))
        Xt = Xte if name.startswith("mlp") else Xte.reshape(-1, 1, 28, 28)
        rows += compare(name, model, calib, Xt, yte, levels, configs)
    cal = calibration_cost(cnn, list(Xtr[:CALIB].reshape(-1, 1, 28, 28).split(256)))
    rss = {n: peak_rss_mb(n) for n in ((2560, 10240) if not args.quick else (1024, 4096))}
    out = {"benchmark": "models", "levels": list(levels), "rows": rows,
           "calibration": cal, "peak_rss_mb": rss,
           "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                       "platform": platform.platform(), "cpus": os.cpu_count()},
           "bench_seconds": time.perf_counter() - t0,
           "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    print(f"wrote {plot(rows, path.with_name(path.stem + '.png'))}")
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
