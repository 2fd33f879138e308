"""`layertrim` output paths checked before any work, TorchScript written back as TorchScript,
and --arch modules found in the current directory (through the installed console script, as
a user runs it) or failing with an error that names --arch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layertrim.cli import main

from .faulty_solvers import mlp

ARCH = "tests.faulty_solvers:mlp"
SCRIPT = Path(sys.executable).parent / "layertrim"


@pytest.fixture
def files(tmp_path):
    model, calib = tmp_path / "model.pt", tmp_path / "calib.pt"
    torch.save(mlp().state_dict(), model)
    torch.save(torch.randn(128, 24, generator=torch.Generator().manual_seed(0)), calib)
    return model, ["--arch", ARCH, "--calib", str(calib), "--batch-size", "64",
                   "--method", "magnitude", "--executor", "serial", "--sparsity", "0.5"]


@pytest.mark.parametrize("case", ["directory", "no-folder", "report-is-out", "plot-is-input",
                                  "fifo", "report-is-fifo-link", "checkpoint-is-out"])
def test_bad_output_paths_are_refused_before_any_work(files, tmp_path, capsys, case):
    """... and a device, pipe or socket (through a link too: as root, --out /dev/null was
    replaced by a regular file), and a --checkpoint that is --out (found only after the
    work, when the model could not be renamed over the checkpoint directory)."""
    model, rest = files
    out, extra = tmp_path / "out.pt", []
    if case == "directory":
        out.mkdir()
    elif case == "no-folder":
        out = tmp_path / "missing" / "out.pt"
    elif case == "report-is-out":
        extra = ["--report", str(out)]
    elif case == "plot-is-input":
        extra = ["--plot", str(model)]
    elif case == "fifo":
        os.mkfifo(out)
    elif case == "report-is-fifo-link":
        os.mkfifo(tmp_path / "pipe")
        (tmp_path / "r.json").symlink_to(tmp_path / "pipe")
        extra = ["--report", str(tmp_path / "r.json")]
    else:
        extra = ["--checkpoint", str(out)]
    assert main(["prune", str(model), *rest, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    want = {"directory": "is a directory", "no-folder": "does not exist",
            "report-is-out": "--out and --report name the same file",
            "plot-is-input": "refusing to overwrite the input file",
            "fifo": "is not a regular file", "report-is-fifo-link": "is not a regular file",
            "checkpoint-is-out": "checkpoint directory and --out name the same path"}[case]
    assert want in err
    assert "calibration" not in err  # refused before the calibration pass started
    assert not Path(f"{out}.ckpt").exists() and not (tmp_path / "missing").exists()
    if case in ("fifo", "report-is-fifo-link"):
        assert (tmp_path / ("out.pt" if case == "fifo" else "pipe")).is_fifo()  # left as is


def test_an_output_through_a_symlink_replaces_the_target_and_keeps_the_link(files, tmp_path):
    model, rest = files
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "pruned.pt"
    target.write_text("old")
    link = tmp_path / "pruned.pt"
    link.symlink_to(target)
    assert main(["prune", str(model), *rest, "--no-checkpoint", "--out", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    state = torch.load(target, weights_only=True)
    assert float((state["0.weight"] == 0).float().mean()) > 0.3


def test_bad_input_found_after_some_layers_leaves_no_default_checkpoint(tmp_path, capsys):
    """The default OUT.ckpt of a run stopped by bad input: a resume of it would be refused
    (other data) and the next run found it in the way ("already holds a checkpoint")."""
    model = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(20, 4)), model)  # 16 outputs into 20
    calib = tmp_path / "calib.pt"
    torch.save(torch.randn(64, 8), calib)
    out = tmp_path / "out.pt"
    argv = ["prune", str(model), "--trust-pickle", "--calib", str(calib), "--method",
            "magnitude", "--executor", "serial", "--pattern", "2:4", "--out", str(out)]
    assert main(argv) == 2
    assert "layer 2" in capsys.readouterr().err
    assert not Path(f"{out}.ckpt").exists() and not out.exists()


def test_solve_and_bench_check_their_outputs_first(tmp_path, capsys):
    rng = np.random.default_rng(0)
    layer = tmp_path / "layer.npz"
    np.savez(layer, W=rng.standard_normal((4, 6)), X=rng.standard_normal((30, 6)))
    (tmp_path / "d").mkdir()
    for argv in (["solve", str(layer), "--method", "magnitude", "--sparsity", "0.5",
                  "--out", str(tmp_path / "d")],
                 ["bench", str(layer), "--methods", "magnitude", "--json",
                  str(tmp_path / "nowhere" / "b.json")]):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "does not exist" in err
    assert not (tmp_path / "nowhere").exists()


def test_torchscript_input_is_written_back_as_torchscript(files, tmp_path):
    model, rest = files
    net = mlp()
    net.load_state_dict(torch.load(model, weights_only=True))
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(net), scripted)
    out, plain = tmp_path / "pruned_ts.pt", tmp_path / "pruned_sd.pt"
    assert main(["prune", str(scripted), *rest, "--out", str(out), "--no-checkpoint"]) == 0
    assert main(["prune", str(model), *rest, "--out", str(plain), "--no-checkpoint"]) == 0
    loaded = torch.jit.load(str(out))  # a TorchScript file, not a state_dict
    want = mlp()
    want.load_state_dict(torch.load(plain, weights_only=True))
    x = torch.randn(16, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), want(x))
    weights = [v for k, v in loaded.state_dict().items() if k.endswith("weight")]
    assert sum(int((w == 0).sum()) for w in weights) >= 0.5 * sum(w.numel() for w in weights)
    # a state_dict input has no program to copy
    assert main(["prune", str(model), *rest, "--out", str(tmp_path / "x.pt"),
                 "--format", "torchscript"]) == 2


def _run(args, cwd):
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_arch_module_in_the_current_directory(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\n\n"
        "def net():\n    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(),"
        " torch.nn.Linear(4, 2))\n\n"
        "def broken():\n    raise RuntimeError('no weights here')\n\n"
        "def needs_arg(width):\n    return torch.nn.Linear(width, 2)\n")
    (pkg / "syntax.py").write_text("def f(:\n")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(net.state_dict(), tmp_path / "m.pt")
    r = _run(["inspect", "m.pt", "--arch", "mypkg.nets:net"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 prunable layers" in r.stdout
    for spec, gist in (("mypkg.nets:broken", "calling broken() failed: RuntimeError: no "
                                             "weights here"),
                       ("mypkg.nets:needs_arg", "calling needs_arg() failed: TypeError"),
                       ("mypkg.syntax:f", "importing mypkg.syntax failed: SyntaxError"),
                       ("mypkg.nets:absent", "has no callable 'absent'"),
                       ("nosuchpkg.nets:net", "cannot import nosuchpkg.nets")):
        r = _run(["inspect", "m.pt", "--arch", spec], tmp_path)
        assert r.returncode == 2, (spec, r.stderr)
        assert f"--arch {spec}" in r.stderr and gist in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_a_pickle_of_a_class_in_the_current_directory_is_read_back(tmp_path):
    """`prune --format pickle` wrote a module whose class lives in the current directory;
    the installed script (whose sys.path lacks that directory) could not inspect or prune it
    again: "No module named 'mine'"."""
    (tmp_path / "mine.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = torch.nn.Linear(6, 4), torch.nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n"
        "        return self.b(torch.relu(self.a(x)))\n\n"
        "def net():\n    return Net()\n")
    code = ("import sys; sys.path.insert(0, '.'); import torch, mine; torch.manual_seed(0); "
            "torch.save(mine.Net(), 'p.pt'); torch.save(torch.randn(32, 6), 'c.pt')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    r = _run(["inspect", "p.pt", "--trust-pickle"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 prunable layers" in r.stdout
    r = _run(["prune", "p.pt", "--trust-pickle", "--calib", "c.pt", "--sparsity", "0.5",
              "--method", "magnitude", "--executor", "serial", "--no-checkpoint", "--out",
              "q.pt"], tmp_path)
    assert r.returncode == 0, r.stderr
