"""Calibration cost: collecting every layer's Gram (the parallel schedule's one pass) against a
plain forward pass over the same batches, for the 784-300-100-10 MLP and LeNet-5 on 2048 MNIST
training images (batches of 256). Both Gram paths of adapters/torch.py run in the same process:
float32 products summed in float64 per chunk (the default, ``gram_dtype="float32"``) and
float64 products (``gram_dtype="float64"``). Each timing is the median of ``--repeats`` interleaved
runs. The headline is at ``--batch`` rows per batch; ``--sweep`` batch sizes are measured as well
(float32 products only), since the ratio depends on them: a longer batch runs the forward
pass's GEMMs nearer their peak, while the Grams' GEMMs are near it already. Writes
bench/results/calibration.json. ``--batch 32`` exercises the buffer that gathers short batches
before multiplying (adapters/torch_gram.py: batches under DIRECT_ROWS rows).

    python bench/calibration.py [--repeats 7] [--batch 256] [--sweep 64,1024] [--images 2048]
                                [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import layertrim.adapters.torch as ta
from layertrim.atomic import atomic_write_text
from layertrim.datasets import load_mnist
from layertrim.demo import lenet

HERE = Path(__file__).parent
CALIB, BATCH = 2048, 256


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
                               torch.nn.Linear(300, 100), torch.nn.ReLU(),
                               torch.nn.Linear(100, 10))


def measure(model, calib, repeats: int, float64: bool = True) -> dict:
    layers = ta.find_layers(model)
    model.eval()

    def forward():
        with torch.no_grad():
            for x in calib:
                model(x)

    def grams(float32: bool):
        return ta.collect_grams(model, layers, calib,
                                gram_dtype="float32" if float32 else "float64")

    runs = {"forward": forward, "float32": lambda: grams(True), "float64": lambda: grams(False)}
    if not float64:
        del runs["float64"]
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    if not float64:
        return {"forward_s": med["forward"], "calibration_s": med["float32"],
                "ratio": med["float32"] / med["forward"], "times_s": times}
    g32, g64 = grams(True), grams(False)
    err = max(float(np.max(np.abs(a.H - b.H)) / np.max(np.abs(b.H)))
              for la in layers for a, b in zip(g32[la.name], g64[la.name], strict=True))
    flops_fwd = sum(la.m * la.d * la.groups for la in layers)  # per row, for the record
    return {"forward_s": med["forward"], "calibration_s": med["float32"],
            "calibration_float64_s": med["float64"],
            "ratio": med["float32"] / med["forward"],
            "ratio_float64": med["float64"] / med["forward"],
            "speedup_float32_vs_float64": med["float64"] / med["float32"],
            "gram_rel_diff_max": err,
            "layers": {la.name: {"d": la.d, "m": la.m, "groups": la.groups,
                                 "gram_over_forward_flops": la.d / la.m} for la in layers},
            "weights_per_row": flops_fwd, "times_s": times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--images", type=int, default=CALIB)
    ap.add_argument("--sweep", default="64,1024",
                    help="other batch sizes, comma-separated (empty: none)")
    ap.add_argument("--out", default=str(HERE / "results" / "calibration.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    X = torch.from_numpy(load_mnist()["train"][0][:args.images])
    out = {"benchmark": "calibration", "images": len(X), "batch": args.batch,
           "threads": torch.get_num_threads(), "models": {}}
    for name, model, shape in (("mlp 784-300-100-10", mlp(), (-1, 784)),
                               ("lenet-5 cnn", lenet(), (-1, 1, 28, 28))):
        rec = measure(model, list(X.reshape(shape).split(args.batch)), args.repeats)
        rec["by_batch"] = {}
        for b in [int(v) for v in args.sweep.split(",") if v.strip()]:
            r = measure(model, list(X.reshape(shape).split(b)), args.repeats, float64=False)
            rec["by_batch"][str(b)] = r
        out["models"][name] = rec
        print(name, {k: v for k, v in rec.items() if k not in ("times_s", "layers", "by_batch")},
              flush=True)
        print("  by batch:", {b: round(r["ratio"], 3) for b, r in rec["by_batch"].items()},
              flush=True)
    out["machine"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                      "platform": platform.platform(), "cpus": os.cpu_count()}
    out["bench_seconds"] = time.perf_counter() - t0
    print(f"wrote {atomic_write_text(args.out, json.dumps(out, indent=1))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
