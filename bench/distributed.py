"""Distributed layer jobs: what the executors cost and gain.

1. Speedup of the parallel schedule on 2 local worker processes (one BLAS thread each) over
   the serial executor (this process, the BLAS library's default threads), on an MLP of
   ``--layers`` Linear layers of d x d (default 8 x 1024), method l0-admm, 50% per layer. The
   local run also writes a checkpoint, so its time includes that. Also reported: serial with
   one BLAS thread, and whether the bits agree.
2. Per-job overhead on tiny jobs (16 x 16 magnitude pruning): serial, local (a new process
   pool per map: spawn included), Ray on a local instance (cold: first map; warm: second),
   in milliseconds per job; Ray's start-up time separately.
3. Resume overhead: the local run's checkpoint with its second half of layers deleted, resumed,
   against a fresh run of just those layers (both wall times, calibration included).

    python bench/distributed.py [--layers 8] [--d 1024] [--quick] [--out PATH]

The machine's load average is recorded before and after, and ``effective_cores_for_2_workers``
(2 x the one-thread serial time per layer / a worker's time per layer) says how much CPU the
two workers really got: on a shared machine below 2 the speedup target cannot be judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import layertrim as lt
from layertrim.atomic import atomic_write_text
from layertrim.layerwise.executors import LayerJob, LocalExecutor, SerialExecutor, solve_job
from layertrim.problem import LayerProblem

HERE = Path(__file__).parent
# torch is imported inside the functions: worker processes are spawned, and a spawned worker
# re-imports the main script, so a top-level ``import torch`` would cost every worker seconds
# (the CLI's workers never load torch).


def mlp(layers: int, d: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods: list = []
    for _ in range(layers):
        mods += [nn.Linear(d, d), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def prune(n_layers: int, d: int, calib, executor, **kw) -> tuple[float, dict, list]:
    """(wall seconds, the report's timing plus the mean solver time per layer, parameters)."""
    model = mlp(n_layers, d)
    t = time.perf_counter()
    report = lt.prune_model(model, calib, sparsity=0.5, method=kw.pop("method", "l0-admm"),
                            schedule="parallel", allocation="uniform", executor=executor, **kw)
    wall = time.perf_counter() - t
    timing = {**report.timing,
              "layer_mean_s": float(np.mean([r.time_s for r in report.layers if not r.resumed]))}
    return wall, timing, [p.detach().clone() for p in model.parameters()]


def warm_up(method: str) -> None:
    """Compile (or load from Numba's cache) the solver's kernels before anything is timed."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 64))
    lt.solve_layer(rng.standard_normal((32, 64)), X, sparsity=0.5, method=method)


def speedup(layers: int, d: int, n: int, method: str, ckpt: Path, quick: bool) -> dict:
    import torch

    warm_up(method)
    g = torch.Generator().manual_seed(1)
    calib = list(torch.randn(n, d, generator=g).split(512))
    out: dict = {"model": f"{layers} x Linear({d}, {d}), ReLU", "calibration_rows": n,
                 "method": method, "sparsity": 0.5, "schedule": "parallel"}
    s_wall, s_tm, s_par = prune(layers, d, calib, SerialExecutor(), method=method)
    out["serial"] = {"wall_s": s_wall, "solve_s": s_tm["solve_s"],
                     "layer_mean_s": s_tm["layer_mean_s"], "blas_threads": "library default"}
    if not quick:
        with threadpool_limits(limits=1):
            w1, tm1, _ = prune(layers, d, calib, SerialExecutor(), method=method)
        out["serial_1_blas_thread"] = {"wall_s": w1, "solve_s": tm1["solve_s"],
                                       "layer_mean_s": tm1["layer_mean_s"]}
    l_wall, l_tm, l_par = prune(layers, d, calib, LocalExecutor(workers=2), method=method,
                                checkpoint=ckpt)
    out["local_2_workers"] = {"wall_s": l_wall, "solve_s": l_tm["solve_s"],
                              "layer_mean_s": l_tm["layer_mean_s"], "blas_threads": 1,
                              "checkpointed": True, "worker_start_included": True}
    if not quick:  # the same with the workers already started (a long-lived executor)
        warm = LocalExecutor(workers=2)
        per_job_ms(warm, tiny_jobs(8))
        w_wall, w_tm, _ = prune(layers, d, calib, warm, method=method)
        warm.close()
        out["local_2_workers_started"] = {"wall_s": w_wall, "solve_s": w_tm["solve_s"],
                                          "layer_mean_s": w_tm["layer_mean_s"]}
        out["speedup_solve_started_vs_serial_1_thread"] = tm1["solve_s"] / w_tm["solve_s"]
    out["speedup_solve"] = s_tm["solve_s"] / l_tm["solve_s"]
    out["speedup_wall"] = s_wall / l_wall
    if not quick:  # effective cores < 2: the workers did not get two cores between them
        out["speedup_solve_vs_serial_1_thread"] = tm1["solve_s"] / l_tm["solve_s"]
        out["effective_cores_for_2_workers"] = 2 * tm1["layer_mean_s"] / l_tm["layer_mean_s"]
    out["bit_identical"] = all(torch.equal(a, b) for a, b in zip(s_par, l_par, strict=True))
    out["_calib"] = calib
    return out


def tiny_jobs(count: int) -> list[LayerJob]:
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(count):
        X = rng.standard_normal((64, 16))
        problem = LayerProblem.create(rng.standard_normal((16, 16)), gram=X.T @ X, sparsity=0.5)
        jobs.append(LayerJob(f"l{i}", 0, problem, "magnitude", {}))
    return jobs


def per_job_ms(executor, jobs) -> float:
    t = time.perf_counter()
    got = list(executor.as_completed(solve_job, jobs))
    assert len(got) == len(jobs) and not any(isinstance(r, BaseException) for _, r in got)
    return 1e3 * (time.perf_counter() - t) / len(jobs)


def overhead(count: int) -> dict:
    jobs = tiny_jobs(count)
    out: dict = {"jobs": count, "job": "16 x 16 magnitude pruning"}
    out["serial_ms_per_job"] = per_job_ms(SerialExecutor(), jobs)
    local = LocalExecutor(workers=2)
    out["local_ms_per_job"] = [per_job_ms(local, jobs) for _ in range(2)]
    try:
        from layertrim.layerwise.ray_executor import RayExecutor
    except ImportError:
        out["ray"] = "not installed"
        return out
    ray_ex = RayExecutor(workers=None, init_options={"num_cpus": 2,
                                                     "object_store_memory": 200 << 20})
    t = time.perf_counter()
    ray_ex.connect()
    out["ray_start_s"] = time.perf_counter() - t
    try:
        out["ray_ms_per_job_cold"] = per_job_ms(ray_ex, jobs)
        out["ray_ms_per_job_warm"] = per_job_ms(ray_ex, jobs)
    finally:
        ray_ex.close()
    out["ray_overhead_vs_local_ms_per_job"] = (out["ray_ms_per_job_warm"]
                                               - min(out["local_ms_per_job"]))
    return out


def resume_overhead(layers: int, d: int, calib, method: str, ckpt: Path) -> dict:
    names = [str(2 * i) for i in range(layers)]
    rest = names[layers // 2:]
    files = sorted((ckpt / "layers").glob("*.npz"))
    from layertrim.layerwise.checkpoint import _file_key

    for name in rest:
        (ckpt / "layers" / f"{_file_key(name)}.npz").unlink()
    assert len(list((ckpt / "layers").glob("*.npz"))) == len(files) - len(rest)
    r_wall, r_tm, _ = prune(layers, d, calib, LocalExecutor(workers=2), method=method,
                            resume=ckpt)
    f_wall, f_tm, _ = prune(layers, d, calib, LocalExecutor(workers=2), method=method,
                            layers=rest)
    return {"remaining_layers": len(rest), "resumed_wall_s": r_wall,
            "resumed_solve_s": r_tm["solve_s"], "fresh_same_layers_wall_s": f_wall,
            "fresh_same_layers_solve_s": f_tm["solve_s"], "ratio_wall": r_wall / f_wall,
            "overhead_s": r_wall - f_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--n", type=int, default=2048, help="calibration rows")
    ap.add_argument("--method", default="l0-admm")
    ap.add_argument("--jobs", type=int, default=64, help="tiny jobs for the overhead")
    ap.add_argument("--quick", action="store_true", help="skip the one-thread serial run")
    ap.add_argument("--out", default=str(HERE / "results" / "distributed.json"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="layertrim-bench-"))
    try:
        sp = speedup(args.layers, args.d, args.n, args.method, tmp / "ck", args.quick)
        calib = sp.pop("_calib")
        print(f"speedup (solve) {sp['speedup_solve']:.2f}x, wall {sp['speedup_wall']:.2f}x",
              flush=True)
        res = resume_overhead(args.layers, args.d, calib, args.method, tmp / "ck")
        print(f"resume: {res['resumed_wall_s']:.2f}s vs fresh "
              f"{res['fresh_same_layers_wall_s']:.2f}s", flush=True)
        ov = overhead(args.jobs)
        print(f"per job: local {min(ov['local_ms_per_job']):.1f} ms, ray warm "
              f"{ov.get('ray_ms_per_job_warm', float('nan')):.1f} ms", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import torch

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "loadavg_before": load0, "loadavg_after": os.getloadavg()},
              "speedup": sp, "resume": res, "overhead": ov,
              "target_speedup_2_workers": 1.6}
    print(json.dumps(result, indent=1))
    print(f"wrote {atomic_write_text(args.out, json.dumps(result, indent=1))}")


if __name__ == "__main__":
    main()
