"""One-shot pruning (+ a short masked fine-tune) against the training-time methods, on MNIST.

Models: the 784-300-100-10 MLP of the demo (3 epochs of Adam) and the LeNet-5-like CNN
(1 epoch). Levels: 90/95/98% of all prunable weights. Configurations:

  (a) one-shot ``l0-admm`` through ``layertrim.prune_model`` (cascade, default "global"
      allocation, 2048 calibration images), no training;
  (b) (a) followed by one epoch of ``layertrim.finetune`` (Adam, lr 1e-3, batch 128);
  (c) ``layertrim.prune_while_training`` (Roy et al.), L1 criterion, from scratch, for the dense
      training epochs + 1 (the total of (b)), a pruning event every epoch; every layer but the
      last loses the same share of its neurons/filters, the share chosen so that the shrunk
      network keeps at most (1 - level) of the dense weight count;
  (d) ``layertrim.diff_threshold`` (after Manessi et al.) from the trained dense network, one
      epoch (the fine-tune budget of (b)), lam 1 (adapted towards the level during training),
      threshold lr 0.05, beta 2 -> 100, with the level as its exact global target;
  (e) PyTorch global magnitude pruning + the same fine-tune as (b).

Wall time of each configuration is its own work (pruning and/or training); the dense training
that (a), (b), (d), (e) start from is reported separately ("dense_train_s").

    python bench/training.py [--quick] [--out PATH]

``--quick``: the first 10,000 training images instead of all 50,000 (same three levels).
``--threads``: torch threads (default 1: on a shared 2-core machine more threads were slower).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import layertrim as lt
from layertrim.adapters.torch import find_layers
from layertrim.atomic import atomic_write_text
from layertrim.datasets import load_mnist
from layertrim.demo import fit, lenet

sys.path.insert(0, str(Path(__file__).parent))
from models import accuracy, torch_global_magnitude, total_sparsity  # noqa: E402

HERE = Path(__file__).parent
LEVELS = (0.9, 0.95, 0.98)
CALIB = 2048
BATCH = 128


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def loader(X, y, seed):
    """Batches of 128 from a seeded shuffle (a list: re-iterable, with a length)."""
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    return [(X[i], y[i]) for i in idx.split(BATCH)]


def structured_share(model, level: float) -> float:
    """The smallest uniform share of neurons/filters to remove from every layer but the last
    so that the shrunk network keeps at most (1 - level) of the dense weight count."""
    ws = [la.module.weight for la in find_layers(model)]
    outs = [w.shape[0] for w in ws]
    total = sum(w.numel() for w in ws)

    def kept_weights(f):
        keep = [max(1, n - round(f * n)) / n for n in outs[:-1]] + [1.0]
        prev = [1.0] + keep[:-1]
        return sum(w.numel() * k * p for w, k, p in zip(ws, keep, prev, strict=True))

    lo, hi = 0.0, 0.999
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kept_weights(mid) <= (1 - level) * total else (mid, hi)
    return hi


def run_model(name, make, dense_epochs, Xtr, ytr, Xte, yte, levels, calib, progress):
    rows = []
    torch.manual_seed(0)
    t = time.perf_counter()
    dense = fit(make(), Xtr, ytr, epochs=dense_epochs, seed=0)
    dense_s = time.perf_counter() - t
    rows.append({"model": name, "config": "dense", "level": 0.0, "sparsity": 0.0,
                 "accuracy": accuracy(dense, Xte, yte), "time_s": dense_s,
                 "epochs": dense_epochs})
    print(rows[-1], flush=True)
    ft = loader(Xtr, ytr, seed=1)

    def row(config, level, model, seconds, **extra):
        rows.append({"model": name, "config": config, "level": level,
                     "sparsity": total_sparsity(model) if "sparsity" not in extra else
                     extra.pop("sparsity"), "accuracy": accuracy(model, Xte, yte),
                     "time_s": seconds, "dense_train_s": dense_s, **extra})
        print(rows[-1], flush=True)

    for level in levels:
        m = copy.deepcopy(dense)
        t = time.perf_counter()
        lt.prune_model(m, calib, sparsity=level, method="l0-admm", executor="serial")
        prune_s = time.perf_counter() - t
        row("(a) l0-admm one-shot", level, m, prune_s, epochs=0)
        rep = lt.finetune(m, ft, epochs=1, lr=1e-3, progress=progress)
        row("(b) l0-admm + 1-epoch fine-tune", level, m, prune_s + rep.wall_time, epochs=1)

        share = structured_share(dense, level)
        torch.manual_seed(0)
        m = make()
        layers = [la.name for la in find_layers(m)][:-1]
        n_weights = sum(la.module.weight.numel() for la in find_layers(m))
        rep = lt.prune_while_training(m, loader(Xtr, ytr, seed=0), fraction=share,
                                      criterion="l1", layers=layers, epochs=dense_epochs + 1,
                                      interval=1, progress=progress)
        kept = sum(la.module.weight.numel() for la in find_layers(m))
        row("(c) pruning while training, L1", level, m, rep.wall_time,
            epochs=dense_epochs + 1, share=share, filters=rep.details["filters"],
            sparsity=1 - kept / n_weights)

        m = copy.deepcopy(dense)
        rep = lt.diff_threshold(m, ft, epochs=1, sparsity=level, lam=1.0, threshold_lr=0.05,
                                progress=progress)
        row("(d) differentiable thresholds", level, m, rep.wall_time, epochs=1,
            thresholds=rep.details["thresholds"],
            layer_sparsity=rep.details["layer_sparsity"],
            learned_sparsity=rep.details["learned_sparsity"])

        t = time.perf_counter()
        m = torch_global_magnitude(dense, level)
        mag_s = time.perf_counter() - t
        rep = lt.finetune(m, ft, epochs=1, lr=1e-3, progress=progress)
        row("(e) magnitude + 1-epoch fine-tune", level, m, mag_s + rep.wall_time, epochs=1)
    return rows


def verdict(rows):
    """Per model and level: does (b) match or beat (c), (d), (e), and at what time ratio."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for level in sorted({r["level"] for r in rows if r["model"] == model} - {0.0}):
            rs = {r["config"][:3]: r for r in rows if r["model"] == model
                  and r["level"] == level}
            b = rs["(b)"]
            for k in ("(c)", "(d)", "(e)"):
                out.append({"model": model, "level": level, "vs": rs[k]["config"],
                            "b_accuracy": b["accuracy"], "other_accuracy": rs[k]["accuracy"],
                            "b_matches_or_beats": b["accuracy"] >= rs[k]["accuracy"] - 1e-4,
                            "time_ratio_b_over_other": b["time_s"] / rs[k]["time_s"]})
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7.5))
    axes = np.asarray(axes).reshape(2, -1)
    for j, name in enumerate(models):
        rs = [r for r in rows if r["model"] == name]
        dense = next(r for r in rs if r["config"] == "dense")
        for cfg in dict.fromkeys(r["config"] for r in rs if r["config"] != "dense"):
            pts = sorted((r["level"], r["accuracy"], r["time_s"]) for r in rs
                         if r["config"] == cfg)
            lv, acc, sec = zip(*pts, strict=True)
            axes[0, j].plot(lv, acc, "o-", label=cfg)
            axes[1, j].plot(lv, sec, "o-", label=cfg)
        axes[0, j].axhline(dense["accuracy"], color="k", ls=":",
                           label=f"dense {dense['accuracy']:.4f}")
        axes[0, j].set_ylabel("test accuracy")
        axes[1, j].set_ylabel("wall time [s] (excl. dense training)")
        axes[1, j].set_yscale("log")
        for ax in axes[:, j]:
            ax.set_xlabel("target sparsity (share of all prunable weights)")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", type=int, default=None, help="training images (overrides)")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    ap.add_argument("--out", default=str(HERE / "results" / "training.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_mnist()
    n = args.train or (10_000 if args.quick else len(data["train"][0]))
    Xtr, ytr = (torch.from_numpy(a[:n]) for a in data["train"])
    Xte, yte = (torch.from_numpy(a) for a in data["test"])
    levels = tuple(args.levels)
    rows = run_model("mlp 784-300-100-10", mlp, 3, Xtr, ytr, Xte, yte, levels,
                     list(Xtr[:CALIB].split(256)), args.progress)
    img = Xtr.reshape(-1, 1, 28, 28)
    rows += run_model("lenet-5 cnn", lenet, 1, img, ytr, Xte.reshape(-1, 1, 28, 28), yte,
                      levels, list(img[:CALIB].split(256)), args.progress)
    out = {"benchmark": "training", "quick": args.quick, "train_images": n,
           "levels": list(levels), "rows": rows, "verdict": verdict(rows),
           "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                       "platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "bench_seconds": time.perf_counter() - t0}
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    print(f"wrote {plot(rows, path.with_name(path.stem + '.png'))}")
    for v in out["verdict"]:
        print(f"{v['model']:20s} {v['level']:.2f} (b) {v['b_accuracy']:.4f} vs "
              f"{v['vs']:34s} {v['other_accuracy']:.4f}  "
              f"{'OK ' if v['b_matches_or_beats'] else 'MISS'} "
              f"time x{v['time_ratio_b_over_other']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
