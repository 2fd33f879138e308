"""Structured pruning of the MNIST 784-300-100-10 MLP, no retraining: coreset neuron sampling
(data-independent and data-dependent, sampled and top-k, with and without the least-squares
refit), global-threshold and a random-neuron baseline, keeping 10/20/30/50% of the hidden
neurons of both hidden layers; the empirical (epsilon, delta) check of the coreset bound over
200 test inputs; and matrix pivoting of the 90%-sparse first layer (16 x 16 blocks, BSR matmul
time against dense on this machine).

    python bench/structured.py [--quick] [--out PATH]
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
from layertrim.adapters.torch_structured import shrink_pair
from layertrim.atomic import atomic_write_text
from layertrim.datasets import load_mnist
from layertrim.demo import accuracy as demo_accuracy
from layertrim.demo import train_mlp
from layertrim.solvers.coreset import (
    coreset_prune,
    sensitivity_data_dependent,
    sensitivity_data_independent,
)
from layertrim.solvers.global_threshold import global_threshold
from layertrim.solvers.masks import layer_topk
from layertrim.solvers.pivot import (
    block_coverage,
    block_fraction,
    block_prune_mask,
    matmul_ratio,
    pivot_order,
    to_bsr,
)
from layertrim.solvers.structured import StructuredResult

HERE = Path(__file__).parent
LEVELS = (0.1, 0.2, 0.3, 0.5)
CALIB = 2000
INPUT_RADIUS = float(np.sqrt(784))  # ||x|| <= 28 for any image with pixels in [0, 1]
SEEDS = (0, 1, 2)
CORESETS = [  # label, variant, deterministic, refit
    ("coreset data-independent", "data-independent", False, False),
    ("coreset data-independent + refit", "data-independent", False, True),
    ("coreset data-dependent", "data-dependent", False, False),
    ("coreset data-dependent + refit", "data-dependent", False, True),
    ("coreset data-dependent top-k", "data-dependent", True, False),
    ("coreset data-dependent top-k + refit", "data-dependent", True, True),
]


def layers(model):
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in (model[0], model[2], model[4])]


def relu(x):
    return np.maximum(x, 0.0)


def random_prune(W1, b1, W2, b2, A, keep, seed, refit):
    """Uniformly random neurons, columns unweighted (or refit)."""
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.choice(W1.shape[0], size=keep, replace=False))
    if refit:
        from layertrim.solvers.coreset import _refit_columns

        W2k, b2k = _refit_columns(W2, b2, A, kept, 1e-8)
    else:
        W2k, b2k = W2[:, kept], b2
    return StructuredResult(kept, np.ones(keep), W1[kept], b1[kept], W2k, b2k,
                            np.ones(W1.shape[0]), keep, "random")


def prune_mlp(model, Xcal, frac, prune_fn):
    """Prune both hidden layers (layer 1's neurons, then layer 2's on the pruned network's
    activations); returns the physically smaller torch model."""
    (W1, b1), (W2, b2), (W3, b3) = layers(model)
    small = copy.deepcopy(model)
    k1, k2 = max(1, round(frac * 300)), max(1, round(frac * 100))
    A1 = relu(Xcal @ W1.T + b1)
    r1 = prune_fn(W1, b1, W2, b2, A1, k1, INPUT_RADIUS)
    shrink_pair(small, "0", "2", r1.kept, W2=r1.W2, b2=r1.b2)
    W2k, b2k = r1.W2, r1.b2
    A2 = relu(A1[:, r1.kept] @ W2k.T + b2k)
    radius2 = np.linalg.norm(r1.W1, 2) * INPUT_RADIUS + np.linalg.norm(r1.b1)  # data-free
    r2 = prune_fn(W2k, b2k, W3, b3, A2, k2, radius2)
    shrink_pair(small, "2", "4", r2.kept, W2=r2.W2, b2=r2.b2)
    return small


def accuracy(model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def level_rows(model, Xcal, Xte, yte, frac, seeds):
    rows = []
    for label, variant, det, refit in CORESETS:
        accs = []
        for seed in (seeds[:1] if det else seeds):
            def fn(W1, b1, W2, b2, A, k, radius, variant=variant, det=det, refit=refit,
                   seed=seed):
                return coreset_prune(W1, b1, W2, b2, A=A, variant=variant, keep=k,
                                     deterministic=det, refit=refit, radius=radius, seed=seed)
            small = prune_mlp(model, Xcal, frac, fn)
            accs.append(accuracy(small, Xte, yte))
        rows.append(_row(label, frac, accs, n_params(small)))
    for refit in (False, True):
        accs = []
        for seed in seeds:
            def fn(W1, b1, W2, b2, A, k, radius, seed=seed, refit=refit):
                return random_prune(W1, b1, W2, b2, A, k, seed, refit)
            small = prune_mlp(model, Xcal, frac, fn)
            accs.append(accuracy(small, Xte, yte))
        rows.append(_row("random" + (" + refit" if refit else ""), frac, accs, n_params(small)))
    # global threshold: one threshold, the same parameter count as the uniform network
    target = rows[-1]["params"]
    (W1, b1), (W2, b2), (W3, b3) = layers(model)
    g = global_threshold([W1, W2, W3], target_params=target)
    small = copy.deepcopy(model)
    shrink_pair(small, "0", "2", g.kept[0])
    shrink_pair(small, "2", "4", g.kept[1])
    rows.append(_row("global-threshold", frac, [accuracy(small, Xte, yte)], n_params(small),
                     kept=[int(len(g.kept[0])), int(len(g.kept[1]))], target=target))
    return rows


def _row(label, frac, accs, params, **extra):
    r = {"method": label, "keep": frac, "accuracy": float(np.mean(accs)),
         "accuracy_min": float(np.min(accs)), "accuracy_max": float(np.max(accs)),
         "runs": len(accs), "params": int(params), **extra}
    print(r, flush=True)
    return r


def epsilon_delta_check(model, Xcal, Xte, eps, delta, variant, n_inputs=200, seed=0):
    """Fresh coreset per input (the bound is per input); error normalised as in the theorem."""
    (W1, b1), (W2, b2), _ = layers(model)
    A1 = relu(Xcal @ W1.T + b1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(Xte.shape[0], size=n_inputs, replace=False)
    env = INPUT_RADIUS * np.linalg.norm(W1, axis=1) + np.abs(b1)
    sens = (sensitivity_data_dependent(W2, A1) if variant == "data-dependent" else
            sensitivity_data_independent(W1, b1, W2, radius=INPUT_RADIUS))
    errs, kept, draws = [], [], []
    for t, i in enumerate(idx):
        r = coreset_prune(W1, b1, W2, b2, A=A1, variant=variant, epsilon=eps, delta=delta,
                          seed=10_000 + t, radius=INPUT_RADIUS, sensitivity=sens)
        a = relu(W1 @ Xte[i] + b1)
        z, zhat = W2 @ a, r.W2 @ a[r.kept]
        S = np.abs(W2) @ (a if variant == "data-dependent" else env)
        errs.append(float(np.max(np.abs(z - zhat) / np.maximum(S, 1e-300))))
        kept.append(r.n_kept)
        draws.append(r.n_samples)
    errs = np.array(errs)
    out = {"variant": variant, "epsilon": eps, "delta": delta, "inputs": n_inputs,
           "fraction_over_epsilon": float(np.mean(errs > eps)),
           "passes": bool(np.mean(errs > eps) <= delta),
           "error_median": float(np.median(errs)), "error_max": float(errs.max()),
           "draws": int(np.median(draws)), "neurons_kept_median": float(np.median(kept)),
           "neurons": int(W1.shape[0])}
    print(out, flush=True)
    return out


def pivot_bench(model, Xcal, Xte, yte, sparsity=0.9, block=16):
    (W1, b1), _, _ = layers(model)
    nnz = int(round((1 - sparsity) * W1.size))
    Wm = np.where(layer_topk(np.abs(W1), nnz), W1, 0.0)
    t = time.perf_counter()
    rp, cp = pivot_order(Wm, block)
    pivot_s = time.perf_counter() - t
    mask = block_prune_mask(W1**2, block, nnz // (block * block), row_perm=rp, col_perm=cp)
    Wb = np.where(mask, W1, 0.0)
    B = to_bsr(Wb, block, row_perm=rp, col_perm=cp)
    X = Xte[:256].T.astype(np.float64)
    timing = matmul_ratio(B, W1, X)
    # accuracy of the network with layer 1 pruned to 90%: unstructured against block-sparse
    gram = lt.Gram.from_data(Xcal)
    acc = {}
    for label, method, opts in (("magnitude", "magnitude", {}),
                                ("magnitude + refit", "magnitude", {"refit": True}),
                                ("pivot 16x16 blocks + refit", "pivot", {"block": block})):
        r = lt.solve_layer(W1, gram=gram, bias=b1, sparsity=sparsity, method=method, **opts)
        acc[label] = demo_accuracy(model, Xte, yte, r.W.astype(np.float32),
                                   r.bias.astype(np.float32))
    out = {"sparsity": sparsity, "block": block, "pivot_s": pivot_s,
           "layer1_accuracy": acc,
           "dense_block_fraction_before": block_fraction(Wm, block),
           "dense_block_fraction_after": block_fraction(Wm, block, row_perm=rp, col_perm=cp),
           "coverage_before": block_coverage(Wm, block),
           "coverage_after": block_coverage(Wm, block, row_perm=rp, col_perm=cp),
           "magnitude_kept_in_blocks": float((mask & (Wm != 0)).sum() / nnz),
           "bsr_blocks": int(B.nnz // (block * block)), **timing}
    print(out, flush=True)
    return out


def plot(rows, piv, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        pts = sorted((r["keep"], r["accuracy"]) for r in rows if r["method"] == m)
        style = "--" if "random" in m else "o-"
        ax.plot(*zip(*pts, strict=True), style, label=m, ms=4)
    dense = next(r["accuracy"] for r in rows if r["method"] == "dense")
    ax.axhline(dense, color="k", ls=":", label=f"dense {dense:.4f}")
    ax.set_xlabel("fraction of hidden neurons kept (both hidden layers)")
    ax.set_ylabel("test accuracy, no retraining")
    ax.set_title("MNIST 784-300-100-10, structured pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    names = ["dense blocks\n(>= 50% full)", "top-block\ncoverage"]
    before = [piv["dense_block_fraction_before"], piv["coverage_before"]]
    after = [piv["dense_block_fraction_after"], piv["coverage_after"]]
    x = np.arange(2)
    bx.bar(x - 0.2, before, 0.4, label="unpermuted")
    bx.bar(x + 0.2, after, 0.4, label="pivoted")
    bx.set_xticks(x, names)
    bx.set_ylabel("fraction of nonzeros")
    bx.set_title(f"layer 1 at 90% sparsity, 16x16 blocks\nBSR/dense matmul time "
                 f"{piv['bsr_over_dense']:.2f}")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "structured.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = load_mnist()
    (Xtr, ytr), (Xte, yte) = data["train"], data["test"]
    model = train_mlp(Xtr, ytr)
    Xcal = Xtr[:CALIB].astype(np.float64)
    Xte_t, yte_t = torch.from_numpy(Xte), torch.from_numpy(yte)
    dense = accuracy(model, Xte_t, yte_t)
    rows = [{"method": "dense", "keep": 1.0, "accuracy": dense, "params": n_params(model)}]
    seeds = SEEDS[:1] if args.quick else SEEDS
    for frac in (LEVELS[::3] if args.quick else LEVELS):
        rows += level_rows(model, Xcal, Xte_t, yte_t, frac, seeds)
    verdict = {}
    for frac in sorted({r["keep"] for r in rows if r["method"] != "dense"}):
        at = {r["method"]: r["accuracy"] for r in rows if r["keep"] == frac}
        best = max(v for k, v in at.items() if "coreset" in k and "refit" in k)
        verdict[str(frac)] = {
            "refit_coreset_beats_random": all(at[k] > at["random"] for k in at
                                              if "coreset" in k and "refit" in k),
            "best_refit_coreset": best, "random": at["random"],
            "random_refit": at["random + refit"]}
    checks = [epsilon_delta_check(model, Xcal, Xte, eps, 0.1, v)
              for v in ("data-dependent", "data-independent") for eps in (0.5, 1.0)]
    piv = pivot_bench(model, Xcal, Xte, yte)
    ten = [r for r in rows if r["keep"] == 0.1]
    out = {"benchmark": "structured", "levels": sorted({r["keep"] for r in rows}),
           "dense_accuracy": dense, "rows": rows, "verdict": verdict,
           "mussay_comparison": {
               "keep": 0.1, "compression": 1 - ten[0]["params"] / rows[0]["params"],
               "best": max(ten, key=lambda r: r["accuracy"]) if ten else None},
           "epsilon_delta": checks, "pivot": piv,
           "calibration_images": CALIB, "seeds": list(seeds),
           "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                       "platform": platform.platform(), "cpus": os.cpu_count()},
           "bench_seconds": time.perf_counter() - t0}
    path = atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"wrote {path}")
    print(f"wrote {plot(rows, piv, path.with_name(path.stem + '.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
