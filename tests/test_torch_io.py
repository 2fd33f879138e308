"""Saved models: every format round-trips with identical outputs, pickles need trust, and the
`layertrim prune` / `inspect` commands work end to end on real files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from layertrim.adapters.torch_io import load_model, save_model
from layertrim.errors import InvalidInputError

ARCH = "tests.test_torch_io:small_cnn"


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3))


X = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def same_outputs(a, b):
    with torch.no_grad():
        return torch.equal(a(X), b(X))


@pytest.mark.parametrize("fmt,name", [("state_dict", "m.pt"), ("safetensors", "m.safetensors"),
                                      ("pickle", "m.pkl")])
def test_round_trip(tmp_path, fmt, name):
    model = small_cnn()
    with torch.no_grad():
        model[3].weight[:, ::2] = 0.0
    path = save_model(model, tmp_path / name, fmt)
    loaded, got = load_model(path, arch=ARCH, trust_pickle=fmt == "pickle")
    assert got == fmt
    assert same_outputs(model, loaded)


@pytest.mark.parametrize("fmt,name", [("safetensors", "m.pt"), ("state_dict", "m.bin"),
                                      ("safetensors", "noext"),
                                      ("state_dict", "m.safetensors")])
def test_the_format_comes_from_the_content_not_the_name(tmp_path, fmt, name):
    model = small_cnn()
    path = save_model(model, tmp_path / name, fmt)
    loaded, got = load_model(path, arch=ARCH)
    assert got == fmt
    assert same_outputs(model, loaded)


def test_a_short_or_odd_file_is_not_taken_for_safetensors(tmp_path):
    for i, data in enumerate([b"", b"\x01\x00", (10**6).to_bytes(8, "little") + b"{}"]):
        path = tmp_path / f"odd{i}.pt"
        path.write_bytes(data)
        with pytest.raises(InvalidInputError, match="damaged or truncated file"):
            load_model(path, arch=ARCH)


def test_pickles_need_trust_and_weights_need_an_arch(tmp_path):
    model = small_cnn()
    save_model(model, tmp_path / "m.pkl", "pickle")
    with pytest.raises(InvalidInputError, match="--trust-pickle") as e:
        load_model(tmp_path / "m.pkl")
    assert "\x1b" not in str(e.value)  # torch's terminal colour codes are stripped
    save_model(model, tmp_path / "w.pt", "state_dict")
    with pytest.raises(InvalidInputError, match="--arch"):
        load_model(tmp_path / "w.pt")
    with pytest.raises(InvalidInputError, match="module:callable"):
        load_model(tmp_path / "w.pt", arch="nocolon")
    with pytest.raises(InvalidInputError, match="does not fit"):
        load_model(tmp_path / "w.pt", arch="torch.nn:Identity")
    with pytest.raises(InvalidInputError, match="overwrite the input"):
        save_model(model, tmp_path / "w.pt", "state_dict", protect=(tmp_path / "w.pt",))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: still what users have
def test_torchscript_weights_go_into_the_eager_architecture(tmp_path):
    model = small_cnn()
    torch.jit.script(model).save(str(tmp_path / "s.pt"))
    with pytest.raises(InvalidInputError, match="TorchScript.*--arch"):
        load_model(tmp_path / "s.pt")
    loaded, fmt = load_model(tmp_path / "s.pt", arch=ARCH)
    assert fmt == "torchscript" and same_outputs(model, loaded)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "layertrim", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_prune_and_inspect_end_to_end(tmp_path):
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent  # the arch lives in tests/
    save_model(small_cnn(), tmp_path / "in.safetensors", "safetensors")
    np.savez(tmp_path / "calib.npz", x=torch.randn(64, 1, 6, 6).numpy())
    r = cli("inspect", tmp_path / "in.safetensors", "--arch", ARCH, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "3 prunable layers" in r.stdout and "8 x 144" in r.stdout
    out = tmp_path / "out.safetensors"
    r = cli("prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
            tmp_path / "calib.npz", "--sparsity", "0.5", "--method", "sparsegpt",
            "--executor", "serial", "--out", out, "--report", tmp_path / "r.json",
            "--plot", tmp_path / "r.png", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "total" in r.stdout
    # progress bars on stderr: over the calibration batches and over the layers
    assert "calibration" in r.stderr and "sparsegpt cascade" in r.stderr, r.stderr
    assert "3/3" in r.stderr and ("layer/s" in r.stderr or "s/layer" in r.stderr), r.stderr
    pruned, fmt = load_model(out, arch=ARCH)
    assert fmt == "safetensors"
    rep = json.loads((tmp_path / "r.json").read_text())
    nz = sum(int((m.weight != 0).sum()) for m in pruned.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)))
    # the report counts the written weights' nonzeros (a weight the solver kept may also be
    # exactly zero: sparsegpt zeroes the weights of inputs that never fire)
    assert rep["totals"]["nonzero"] == nz
    assert rep["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "r.png").stat().st_size > 1000
    # bad input: exit 2, a message, no traceback
    for args, msg in [(["--out", tmp_path / "in.safetensors"], "overwrite the input"),
                      (["--out", out, "--sparsity", "1.5"], "sparsity"),
                      (["--out", out, "--method", "nettrim", "--option", "max_samples=0"],
                       "max_samples"),
                      (["--out", out, "--gram-dtype", "float16"], "--gram-dtype"),
                      (["--out", out, "--report", tmp_path / "in.safetensors"],
                       "overwrite the input"),
                      (["--out", out, "--plot", tmp_path / "calib.npz"], "overwrite the input"),
                      (["--out", out, "--report", out], "--out and --report name the same"),
                      (["--out", out, "--batch-size", "0"], "batch size"),
                      (["--out", out, "--option", "sparsity=0.1"], "prune's own flags")]:
        base = ["prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
                tmp_path / "calib.npz", "--sparsity", "0.5", "--executor", "serial"]
        r = cli(*base, *args, cwd=root)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    # float32 Gram products, from the CLI
    r = cli("prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
            tmp_path / "calib.npz", "--sparsity", "0.5", "--method", "sparsegpt",
            "--gram-dtype", "float32", "--executor", "serial", "--out",
            tmp_path / "f32.safetensors", "--report", tmp_path / "f32.json", cwd=root)
    assert r.returncode == 0, r.stderr
    f32 = json.loads((tmp_path / "f32.json").read_text())
    assert f32["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # Net-Trim on the whole model, from the gain alone (the authors' cascade rule)
    r = cli("prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
            tmp_path / "calib.npz", "--method", "nettrim", "--option", "gain=0.1",
            "--executor", "serial", "--out", tmp_path / "nt.safetensors", cwd=root)
    assert r.returncode == 0, r.stderr
    nt, _ = load_model(tmp_path / "nt.safetensors", arch=ARCH)
    assert all(float((m.weight == 0).float().mean()) > 0 for m in nt.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))
    save_model(small_cnn(), tmp_path / "m.pkl", "pickle")
    r = cli("inspect", tmp_path / "m.pkl", cwd=root)
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    r = cli("inspect", tmp_path / "junk.pt", "--trust-pickle", cwd=root)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    # a directory of the user's where the default checkpoint would go is refused, not deleted
    (tmp_path / "o.safetensors.ckpt").mkdir()
    (tmp_path / "o.safetensors.ckpt" / "keep.txt").write_text("mine")
    r = cli("prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
            tmp_path / "calib.npz", "--sparsity", "0.5", "--executor", "serial", "--out",
            tmp_path / "o.safetensors", cwd=root)
    assert r.returncode == 2 and "not a layertrim checkpoint" in r.stderr, r.stderr
    assert (tmp_path / "o.safetensors.ckpt" / "keep.txt").read_text() == "mine"
    np.savez(tmp_path / "bad.npz", x=torch.randn(4, 2, 6, 6).numpy())
    r = cli("prune", tmp_path / "in.safetensors", "--arch", ARCH, "--calib",
            tmp_path / "bad.npz", "--sparsity", "0.5", "--out", out, cwd=root)
    assert r.returncode == 2 and "at layer 0" in r.stderr and "Traceback" not in r.stderr
