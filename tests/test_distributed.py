"""Executors (serial, local processes, a real Ray instance), faults, checkpoint and resume,
in process. The CLI's kill-and-resume tests are in test_resume_cli.py."""

import json
import os

import numpy as np
import pytest
import torch

import layertrim as lt
from layertrim.errors import InvalidInputError
from layertrim.layerwise.checkpoint import read_log
from layertrim.layerwise.executors import LocalExecutor, SerialExecutor
from layertrim.layerwise.runner import LayerJobsFailed

from . import faulty_solvers
from .faulty_solvers import mlp, saved_layers

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    """One real local Ray instance for the module (starting one costs seconds)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             object_store_memory=200 << 20, configure_logging=False)
    yield
    ray.shutdown()


def data(n=3, width=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, width, generator=g) for _ in range(n)]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


OPTS = dict(sparsity=0.5, schedule="parallel", allocation="uniform")


@pytest.fixture(scope="module")
def mnist_mlp():
    from layertrim.datasets import load_mnist
    from layertrim.demo import train_mlp

    X, y = load_mnist()["train"]
    model = train_mlp(X[:3000], y[:3000].astype(np.int64), epochs=1)
    calib = [torch.from_numpy(X[i:i + 256]) for i in range(3000, 3768, 256)]
    return model.state_dict(), calib


@pytest.mark.parametrize("method", ["sparsegpt", "random"])
def test_serial_local_and_ray_give_identical_bits_on_the_mnist_mlp(mnist_mlp, ray_session,
                                                                   method):
    from layertrim.demo import train_mlp  # noqa: F401  (the architecture)
    from layertrim.layerwise.ray_executor import RayExecutor

    state, calib = mnist_mlp
    out = {}
    for name, ex in [("serial", SerialExecutor()), ("local", LocalExecutor(workers=2)),
                     ("ray", RayExecutor())]:
        model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                    torch.nn.Linear(300, 100), torch.nn.ReLU(),
                                    torch.nn.Linear(100, 10))
        model.load_state_dict(state)
        lt.prune_model(model, calib, method=method, executor=ex, **OPTS)
        out[name] = params(model)
    assert_same(out["serial"], out["local"])
    assert_same(out["serial"], out["ray"])
    if method == "random":  # a per-layer seed: the two 300/100-wide layers get other masks
        w = [p for p in out["serial"] if p.dim() == 2]
        assert not torch.equal(w[1][:10, :10] != 0, w[2][:10, :10] != 0)


def test_a_ray_worker_that_dies_is_retried(ray_session, tmp_path):
    from layertrim.layerwise.ray_executor import RayExecutor

    model, ref = mlp(4), mlp(4)
    lt.prune_model(ref, data(), method="sparsegpt", executor="serial", **OPTS)
    marker = tmp_path / "died"
    lt.prune_model(model, data(), method="test-die-once", marker=str(marker),
                   executor=RayExecutor(retries=2), **OPTS)
    assert marker.exists()  # a worker did die
    assert_same(params(model), params(ref))


def test_a_ray_job_that_raises_is_named_and_the_others_finish(ray_session, tmp_path):
    from layertrim.layerwise.ray_executor import RayExecutor

    model = mlp(4)
    before = params(model)
    ck = tmp_path / "ck"
    with pytest.raises(LayerJobsFailed, match=r"layer 6: .*ArithmeticError: injected"):
        lt.prune_model(model, data(), method="test-raise-once", marker=str(tmp_path / "m"),
                       m=4, executor=RayExecutor(), checkpoint=ck, **OPTS)
    assert_same(params(model), before)  # untouched
    assert len(saved_layers(ck)) == 3  # the other three layers finished and were saved
    huge = RayExecutor(resources=lambda job: {"num_cpus": 1, "memory": 1 << 50})
    with pytest.raises(InvalidInputError, match="layer 0: it needs about .* GiB, more than any"):
        lt.prune_model(mlp(4), data(), method="sparsegpt", executor=huge, **OPTS)


def test_a_local_worker_that_dies_is_retried_and_the_run_completes(tmp_path):
    model, ref = mlp(4), mlp(4)
    lt.prune_model(ref, data(), method="sparsegpt", executor="serial", **OPTS)
    marker = tmp_path / "died"
    lt.prune_model(model, data(), method="test-die-once", marker=str(marker),
                   executor=LocalExecutor(workers=2, retries=2), **OPTS)
    assert marker.exists()
    assert_same(params(model), params(ref))
    # with no retries allowed the death is reported by layer name
    marker.unlink()
    with pytest.raises(LayerJobsFailed, match="worker process died"):
        lt.prune_model(mlp(4), data(), method="test-die-once", marker=str(marker),
                       executor=LocalExecutor(workers=2, retries=0), **OPTS)


@pytest.mark.parametrize("schedule,extra", [
    ("parallel", {}), ("cascade", {}),
    # a resume calibrates only the unfinished layers: their row samples must not depend on
    # which other layers run (they came from one shared stream in forward order before)
    ("parallel", {"allocation": "uniform", "max_rows": 16})])
def test_resume_skips_saved_layers_and_gives_the_same_bits(tmp_path, schedule, extra):
    opts = dict(sparsity=0.6, method="sparsegpt", schedule=schedule, executor="serial",
                **extra)
    ref = mlp(5)
    lt.prune_model(ref, data(), **opts)
    ck = tmp_path / "ck"
    full = mlp(5)
    lt.prune_model(full, data(), checkpoint=ck, **opts)
    assert_same(params(full), params(ref))
    files = saved_layers(ck)
    assert len(files) == 5
    for f in files[1::2]:  # as if the run had died with two layers still to do
        (ck / "layers" / f).unlink()
    resumed = mlp(5)
    report = lt.prune_model(resumed, data(), resume=ck, **opts)
    assert_same(params(resumed), params(ref))
    assert sum(r.resumed for r in report.layers) == 3
    log = read_log(ck)
    second = log[[e["event"] for e in log].index("start", 1):]
    submitted = [k for e in second if e["event"] == "submit" for k in e["layers"]]
    assert len(submitted) == 2 and not set(submitted) & set(second[0]["skipped"])


def test_a_transient_failure_is_named_the_rest_saved_and_a_resume_finishes(tmp_path):
    ck, marker = tmp_path / "ck", tmp_path / "once"
    opts = dict(method="test-raise-once", marker=str(marker), m=4, executor="serial", **OPTS)
    model = mlp(4)
    with pytest.raises(LayerJobsFailed, match="layer 6"):
        lt.prune_model(model, data(), checkpoint=ck, **opts)
    assert len(saved_layers(ck)) == 3
    report = lt.prune_model(model, data(), resume=ck, **opts)
    assert [r.resumed for r in report.layers] == [True, True, True, False]
    failed = [e for e in read_log(ck) if e["event"] == "failed"]
    assert failed[0]["layer"] == "6" and "injected" in failed[0]["error"]


def test_resume_refuses_another_model_calibration_or_settings(tmp_path):
    ck = tmp_path / "ck"
    opts = dict(method="sparsegpt", executor="serial", **OPTS)
    lt.prune_model(mlp(3), data(), checkpoint=ck, **opts)
    other = mlp(3)
    with torch.no_grad():
        other[2].weight[0, 0] += 1e-3
    with pytest.raises(InvalidInputError, match="the model .* differs"):
        lt.prune_model(other, data(), resume=ck, **opts)
    with pytest.raises(InvalidInputError, match="the calibration data .* differs"):
        lt.prune_model(mlp(3), data(seed=1), resume=ck, **opts)
    with pytest.raises(InvalidInputError, match=r"settings differ .*sparsity: 0\.5 -> 0\.7"):
        lt.prune_model(mlp(3), data(), resume=ck, **{**opts, "sparsity": 0.7})
    with pytest.raises(InvalidInputError, match="method: 'sparsegpt' -> 'wanda'"):
        lt.prune_model(mlp(3), data(), resume=ck, **{**opts, "method": "wanda"})
    with pytest.raises(InvalidInputError, match="already holds a checkpoint"):
        lt.prune_model(mlp(3), data(), checkpoint=ck, **opts)
    with pytest.raises(InvalidInputError, match="not a layertrim checkpoint"):
        lt.prune_model(mlp(3), data(), resume=tmp_path, **opts)
    manifest = json.loads((ck / "manifest.json").read_text())
    assert set(manifest) >= {"model", "calibration", "settings", "layers"}


def test_an_unwritable_checkpoint_directory_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    model = mlp(3)
    with pytest.raises(InvalidInputError, match="cannot write the checkpoint directory"):
        lt.prune_model(model, data(), method="sparsegpt", executor="serial",
                       checkpoint=blocker / "ck", **OPTS)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InvalidInputError, match="cannot write the checkpoint directory"):
            lt.prune_model(model, data(), method="sparsegpt", executor="serial",
                           checkpoint=locked / "ck", **OPTS)


def test_executor_bad_input():
    with pytest.raises(InvalidInputError, match="workers"):
        LocalExecutor(workers=0)
    with pytest.raises(InvalidInputError, match="retries"):
        LocalExecutor(retries=-1)
    with pytest.raises(InvalidInputError, match="address is for the ray executor"):
        from layertrim.layerwise.executors import get_executor

        get_executor("local", address="auto")
    from layertrim.layerwise.ray_executor import RayExecutor

    for bad in ("nowhere", "host:", ":80", "", 5):
        with pytest.raises(InvalidInputError, match="'auto' or host:port"):
            RayExecutor(bad)
    assert faulty_solvers.mlp  # the test solvers are registered


UNGUARDED = """
import torch
import layertrim as lt
from tests.faulty_solvers import mlp

model = mlp(4)
calib = [torch.randn(32, 24, generator=torch.Generator().manual_seed(0))]
lt.prune_model(model, calib, sparsity=None, pattern="2:4", method="sparsegpt",
               schedule="parallel", executor="local")
print("pruned")
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path, guarded):
    """Spawned workers import the main script: unguarded, each re-runs the prune at import and
    the pool never starts. Said plainly at once (not as retried worker deaths); guarded, the
    same script runs."""
    import subprocess
    import sys
    from pathlib import Path

    body = UNGUARDED
    if guarded:
        body = "def main():\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
        body += 'if __name__ == "__main__":\n    main()\n'
    script = tmp_path / "prune_it.py"
    script.write_text(body)
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    if guarded:
        assert r.returncode == 0 and "pruned" in r.stdout, r.stderr
    else:
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert "InvalidInputError" in last and "__main__" in last and str(script) in last, last
        assert "died" not in last


def test_only_a_script_without_a_main_guard_is_blamed(tmp_path, monkeypatch):
    """python -m pkg (pkg.__main__) is never re-run by spawned workers; a script with a
    guard is fine; only a script file without one is named (else worker deaths are retried)."""
    import sys
    import types

    from layertrim.layerwise.executors import _unguarded_main

    def main_module(source, spec_name=None):
        path = tmp_path / f"m{abs(hash((source, spec_name)))}.py"
        path.write_text(source)
        mod = types.ModuleType("__main__")
        mod.__file__ = str(path)
        mod.__spec__ = None if spec_name is None else types.SimpleNamespace(name=spec_name)
        monkeypatch.setitem(sys.modules, "__main__", mod)
        return str(path)

    path = main_module("import layertrim\nlayertrim.prune_model(None, None, sparsity=0.5)\n")
    assert _unguarded_main() == path
    main_module("def main():\n    pass\nif __name__ == '__main__':\n    main()\n")
    assert _unguarded_main() is None
    main_module("def main():\n    pass\nif '__main__' == __name__:\n    main()\n")
    assert _unguarded_main() is None
    main_module("print('no guard')\n", spec_name="layertrim.__main__")  # python -m layertrim
    assert _unguarded_main() is None


def test_a_consumer_that_stops_between_results_does_not_wait_for_running_jobs():
    """Ctrl-C while the driver handles a finished layer (outside the executor's wait): closing
    the executor killed nothing and waited for the jobs still running, as long as a solve. It
    now stops them; after a completed map it still shuts down cleanly."""
    import time

    from layertrim.layerwise.executors import LocalExecutor

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with LocalExecutor(workers=2) as ex:
            results = ex.as_completed(time.sleep, [0.01, 60.0])  # held, as the runner does:
            for _ in results:  # the generator stays open while the exception propagates
                raise KeyboardInterrupt  # the consumer stops after the first result
    assert time.perf_counter() - t0 < 30  # not the 60 s job
    with LocalExecutor(workers=2) as ex:
        assert sorted(i for i, _ in ex.as_completed(time.sleep, [0.01, 0.02])) == [0, 1]


def test_a_ray_consumer_that_stops_between_results_leaves_no_task_running(ray_session):
    """The Ray side of the test above: the instance is the caller's (the executor did not
    start it, so closing does not shut it down), and the consumer stops after the first
    result while it holds the results generator. Closing the executor cancels the 60 s task
    at once; before, it ran on until the generator was collected."""
    import time
    from types import SimpleNamespace

    from layertrim.layerwise.ray_executor import RayExecutor

    def job(delay):
        problem = SimpleNamespace(W0=np.zeros((1, 1)), bias=None, H=np.eye(1), X=None, m=1)
        return SimpleNamespace(problem=problem, delay=delay)

    def nap(j):  # a closure: Ray ships it by value
        time.sleep(j.delay)
        return j.delay

    cpus = ray.available_resources().get("CPU", 0)
    with pytest.raises(KeyboardInterrupt):
        with RayExecutor() as ex:
            results = ex.as_completed(nap, [job(0.01), job(60.0)])  # held, as the runner does
            for _ in results:
                raise KeyboardInterrupt
    assert ray.is_initialized()  # the caller's instance is left running
    t0 = time.perf_counter()
    while ray.available_resources().get("CPU", 0) < cpus and time.perf_counter() - t0 < 20:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus  # the 60 s task no longer holds one
    assert results is not None  # the generator was alive all along
    with pytest.raises(KeyboardInterrupt):  # two runs alive at once: both are cancelled
        with RayExecutor() as ex:
            outer = ex.as_completed(nap, [job(0.01), job(60.0)])
            for _ in outer:
                assert list(ex.map(nap, [job(0.01)])) == [0.01]  # a whole run inside
                raise KeyboardInterrupt
    t0 = time.perf_counter()
    while ray.available_resources().get("CPU", 0) < cpus and time.perf_counter() - t0 < 20:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus
    assert outer is not None
    with RayExecutor() as ex:  # a completed run still closes cleanly
        assert sorted(i for i, _ in ex.as_completed(nap, [job(0.01), job(0.02)])) == [0, 1]


RAY_STARTED_SCRIPT = """
import time
from types import SimpleNamespace

import numpy as np
import ray

from layertrim.layerwise.ray_executor import RayExecutor


def job(delay):
    problem = SimpleNamespace(W0=np.zeros((1, 1)), bias=None, H=np.eye(1), X=None, m=1)
    return SimpleNamespace(problem=problem, delay=delay)


def nap(j):
    time.sleep(j.delay)
    return j.delay


ex = RayExecutor(workers=2, init_options=dict(num_cpus=2, object_store_memory=100 << 20,
                                              configure_logging=False))
results = ex.as_completed(nap, [job(0.01), job(60.0)])
next(results)
ex.close()  # cancels the 60 s task, then stops the instance it started
print("after close:", ray.is_initialized())
results.close()  # the held generator's cleanup, after the shutdown
print("after the generator:", ray.is_initialized())
"""


def test_a_held_generator_closed_after_the_executor_starts_no_new_ray_instance(tmp_path):
    """With an instance the executor started itself, close() stops it; the results generator,
    cleaned up afterwards, must not cancel again (a Ray call after shutdown starts a new
    default instance that nothing stops). Run in a fresh process: this module's own instance
    is up."""
    import subprocess
    import sys

    script = tmp_path / "started.py"
    script.write_text(RAY_STARTED_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "after close: False" in out.stdout and "after the generator: False" in out.stdout, (
        out.stdout + out.stderr[-2000:])
