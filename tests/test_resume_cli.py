"""The prune command line under faults, as real subprocesses: Ctrl-C, SIGKILL and resume
(bit-identical, no finished layer solved again), an unreachable Ray address, and joining a
real `ray start --head` cluster by address."""

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layertrim.layerwise.checkpoint import read_log

from .faulty_solvers import mlp, saved_layers

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 10


def cli(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "layertrim", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _default_sigint() -> None:
    # a test run started in the background by a non-interactive shell inherits SIGINT as
    # ignored, and Python then installs no KeyboardInterrupt handler: the prune would ignore
    # the test's Ctrl-C (that, not a race, is what failed this test in background CI runs)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, env=None):
    """A prune in its own process group (its workers included), to signal or kill."""
    return subprocess.Popen([sys.executable, "-m", "layertrim", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=_default_sigint)


def wait_for(cond, timeout=90):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def group_gone(pgid) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True


@pytest.fixture
def files(tmp_path):
    model, calib = tmp_path / "model.pt", tmp_path / "calib.pt"
    torch.save(mlp(LAYERS).state_dict(), model)
    torch.save(torch.randn(96, 24, generator=torch.Generator().manual_seed(0)), calib)
    return ["prune", model, "--arch", "tests.faulty_solvers:mlp", "--calib", calib,
            "--batch-size", 32, "--pattern", "2:4",  # N:M and no sparsity: no allocation pass
            "--schedule", "parallel"]


def same_state(a, b):
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def reference(tmp_path):
    """The uninterrupted run, in this process (serial; the same bits as local processes)."""
    import layertrim as lt

    model = mlp(LAYERS)
    calib = list(torch.split(torch.load(tmp_path / "calib.pt", weights_only=True), 32))
    lt.prune_model(model, calib, sparsity=None, pattern="2:4", method="sparsegpt",
                   schedule="parallel", executor="serial")
    torch.save(model.state_dict(), tmp_path / "ref.pt")
    return tmp_path / "ref.pt"


def test_ctrl_c_then_sigkill_then_resume_gives_the_uninterrupted_bits(files, tmp_path):
    ref = reference(tmp_path)
    out = tmp_path / "out.pt"
    ck = tmp_path / "ck"  # named, so kept after success: its log is checked at the end
    gate = tmp_path / "gate"
    gate.mkdir()
    # a gate lets a known number of layers finish and holds the rest (tests/faulty_solvers.py),
    # so the signal always finds the prune running, however busy the machine
    run = [*files, "--method", "test-slow", "--option", "delay=0.2", "--executor", "local",
           "--workers", "2", "--out", out, "--checkpoint", ck]

    # 1. Ctrl-C after two layers: exit 130, a hint, no worker left behind, no model
    p = start(*run, env={"LAYERTRIM_TEST_GATE": str(gate), "LAYERTRIM_TEST_PASSES": "2"})
    assert wait_for(lambda: len(saved_layers(ck)) >= 2), p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and f"--resume {ck}" in err and "Traceback" not in err
    assert wait_for(lambda: group_gone(p.pid), timeout=20)
    assert not out.exists()
    first = len(saved_layers(ck))

    # 2. resumed, then SIGKILLed (driver and workers) after one more layer
    p = start(*run, "--resume", ck, env={"LAYERTRIM_TEST_GATE": str(gate),
                                         "LAYERTRIM_TEST_PASSES": str(first + 1)})
    assert wait_for(lambda: len(saved_layers(ck)) >= first + 1), p.communicate()
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and len(saved_layers(ck)) < LAYERS

    # 3. resumed to the end
    r = cli(*run, "--resume", ck)
    assert r.returncode == 0, r.stderr
    assert same_state(out, ref)

    # no finished layer was solved again: each layer saved once, and every run submitted
    # only the layers not saved before it
    log = read_log(ck)
    saved = [e["layer"] for e in log if e["event"] == "saved"]
    assert sorted(collections.Counter(saved).values()) == [1] * LAYERS
    before: set[str] = set()
    for e in log:
        if e["event"] == "start":
            assert set(e["skipped"]) == before
        elif e["event"] == "submit":
            assert not set(e["layers"]) & before
        elif e["event"] == "saved":
            before.add(e["layer"])
    assert sum(e["event"] == "start" for e in log) == 3


def test_the_default_checkpoint_is_removed_after_success(files, tmp_path):
    out = tmp_path / "o.pt"
    r = cli(*files, "--method", "sparsegpt", "--executor", "serial", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "[10/10]" in r.stderr  # progress, one line per finished layer
    assert out.exists() and not Path(f"{out}.ckpt").exists()
    assert same_state(out, reference(tmp_path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_is_a_clear_error_in_bounded_time(files, tmp_path):
    t = time.monotonic()
    r = cli(*files, "--method", "sparsegpt", "--executor", "ray", "--address",
            f"127.0.0.1:{free_port()}", "--out", tmp_path / "o.pt", timeout=60)
    assert r.returncode == 2, r.stderr
    assert "cannot reach a Ray cluster at 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t < 45


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head` on 127.0.0.1, in its own process group, stopped by pid."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--port", str(port), "--node-ip-address",
         "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
         "--object-store-memory", str(200 << 20), "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        assert wait_for(up, timeout=90), "ray start --head did not come up"
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # ray start --block stops its raylet and GCS on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        wait_for(lambda: group_gone(head.pid), timeout=30)
        if not group_gone(head.pid):
            os.killpg(head.pid, signal.SIGKILL)
        current = Path("/tmp/ray/ray_current_cluster")  # ray start leaves it on SIGTERM
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


@pytest.mark.slow
def test_joining_a_ray_head_by_address(files, tmp_path, ray_head):
    ref, out = reference(tmp_path), tmp_path / "out.pt"
    r = cli(*files, "--method", "test-die-once", "--option", f"marker='{tmp_path / 'x'}'",
            "--executor", "ray", "--address", ray_head, "--out", out,
            env={"RAY_AUTH_MODE": "token"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x").exists()  # a worker died on the cluster, and was retried
    assert same_state(out, ref)
