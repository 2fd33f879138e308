"""`layertrim prune`'s sparsity flags (--allocation, --layer-sparsity) and the default
checkpoint's lifetime across a resume, run in this process through cli.main."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from layertrim.cli import main

from .faulty_solvers import mlp

ARCH = "tests.faulty_solvers:mlp"


@pytest.fixture
def files(tmp_path):
    model, calib = tmp_path / "model.pt", tmp_path / "calib.pt"
    torch.save(mlp().state_dict(), model)
    torch.save(torch.randn(128, 24, generator=torch.Generator().manual_seed(0)), calib)
    return ["prune", str(model), "--arch", ARCH, "--calib", str(calib), "--batch-size", "64",
            "--method", "sparsegpt", "--executor", "serial", "--no-checkpoint"]


def layer_sparsities(path: Path) -> dict[str, float]:
    state = torch.load(path, weights_only=True)
    return {k.removesuffix(".weight"): float((v == 0).float().mean())
            for k, v in state.items() if k.endswith(".weight")}


def test_uniform_allocation_prunes_every_layer_alike(files, tmp_path):
    out, report = tmp_path / "u.pt", tmp_path / "u.json"
    assert main([*files, "--sparsity", "0.5", "--allocation", "uniform", "--out", str(out),
                 "--report", str(report)]) == 0
    got = layer_sparsities(out)
    assert got.keys() == {str(2 * i) for i in range(10)}
    # at least the target everywhere (a layer behind dead ReLUs may get a few more exact zeros)
    assert all(0.5 <= s < 0.55 for s in got.values()), got
    assert json.loads(report.read_text())["allocation"] == {k: 0.5 for k in got}


@pytest.mark.parametrize("allocation", ["global", "owl"])
def test_budget_allocations_split_the_total(files, tmp_path, allocation):
    out = tmp_path / f"{allocation}.pt"
    # magnitude in parallel keeps no weight that is exactly zero (sparsegpt, or the cascade's
    # least-squares target, zero the weights of inputs that never fire)
    assert main([*files, "--sparsity", "0.6", "--allocation", allocation,
                 "--method", "magnitude", "--schedule", "parallel", "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    weights = [v for k, v in state.items() if k.endswith(".weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == int(0.6 * total + 0.5)  # the allocation's count is exact
    per_layer = layer_sparsities(out)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.01  # not uniform


def test_layer_sparsity_prunes_the_named_layers_only(files, tmp_path, capsys):
    out = tmp_path / "d.pt"
    assert main([*files, "--layer-sparsity", "0=0.5", "--layer-sparsity", "4=0.75",
                 "--out", str(out)]) == 0
    got = layer_sparsities(out)
    assert abs(got["0"] - 0.5) < 0.02 and abs(got["4"] - 0.75) < 0.02
    dense = mlp().state_dict()
    saved = torch.load(out, weights_only=True)
    for k in ("2.weight", "6.weight", "2.bias"):  # not named: untouched
        assert torch.equal(saved[k], dense[k])


@pytest.mark.parametrize("flags,words", [
    (["--layer-sparsity", "nope=0.5"], ["unknown layers ['nope']", "prunable layers"]),
    (["--layer-sparsity", "0=0.5", "--layer-sparsity", "nope=0.5"], ["unknown", "nope"]),
    (["--layer-sparsity", "0=half"], ["'half' is not a number"]),
    (["--layer-sparsity", "0"], ["NAME=S"]),
    (["--layer-sparsity", "0=0.5", "--layer-sparsity", "0=0.6"], ["twice"]),
    (["--layer-sparsity", "0=1.5"], ["layer 0: sparsity 1.5 is outside [0, 1)"]),
    (["--layer-sparsity", "0=-0.5"], ["layer 0: sparsity -0.5 is outside [0, 1)"]),
    (["--allocation", "owl", "--layer-sparsity", "0=0.5"], ["--allocation splits --sparsity"]),
    (["--sparsity", "0.5", "--option", "allocation=owl"], ["prune's own flags"]),
])
def test_bad_sparsity_flags_exit_2_and_name_the_problem(files, tmp_path, capsys, flags, words):
    out = tmp_path / "bad.pt"
    assert main([*files, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--sparsity", "0.5", "--layer-sparsity", "0=0.5"],
                                   ["--sparsity", "0.5", "--allocation", "greedy"]])
def test_contradicting_or_unknown_flags_are_usage_errors(files, tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        main([*files, *flags, "--out", str(tmp_path / "x.pt")])
    assert e.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_resuming_the_default_checkpoint_removes_it_after_success(files, tmp_path, capsys):
    out = tmp_path / "o.pt"
    ck = Path(f"{out}.ckpt")
    base = [f for f in files if f != "--no-checkpoint"]
    base[base.index("--method") + 1] = "test-raise-once"
    fail = [*base, "--sparsity", "0.5", "--allocation", "uniform", "--option",
            f"marker={tmp_path / 'raised'}", "--option", "m=4", "--out", str(out)]
    # the last layer (4 outputs) fails once: the default checkpoint stays, for --resume
    assert main(fail) == 1
    assert f"--resume {ck}" in capsys.readouterr().err
    assert ck.is_dir() and not out.exists()
    assert main([*fail, "--resume", str(ck)]) == 0
    assert out.exists() and not ck.exists()  # the default checkpoint served its purpose
    ref = tmp_path / "ref.pt"
    assert main([*base, "--sparsity", "0.5", "--allocation", "uniform", "--option",
                 f"marker={tmp_path / 'raised'}", "--option", "m=4", "--no-checkpoint",
                 "--out", str(ref)]) == 0
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_named_checkpoint_is_kept_after_a_resume_even_in_the_default_place(files, tmp_path):
    out = tmp_path / "o.pt"
    ck = Path(f"{out}.ckpt")
    base = [f for f in files if f != "--no-checkpoint"]
    assert main([*base, "--sparsity", "0.5", "--checkpoint", str(ck), "--out", str(out)]) == 0
    assert ck.is_dir()  # named: kept after success
    assert main([*base, "--sparsity", "0.5", "--resume", str(ck), "--out", str(out)]) == 0
    assert ck.is_dir()  # and after a resume of it


def test_mask_convention_output_loads_and_prunes_again(files, tmp_path, capsys):
    """--mask-convention writes weight_orig + weight_mask; load_model sets the same masks up
    on the plain architecture (so the file loads and fine-tunes with masks kept), and a
    second prune bakes them in first."""
    from layertrim.adapters.torch_io import has_masks, load_model

    masked, plain = tmp_path / "masked.pt", tmp_path / "plain.pt"
    common = [*files, "--sparsity", "0.5", "--allocation", "uniform"]
    assert main([*common, "--mask-convention", "--out", str(masked)]) == 0
    assert main([*common, "--out", str(plain)]) == 0
    saved = torch.load(masked, weights_only=True)
    assert "0.weight_orig" in saved and "0.weight_mask" in saved and "0.weight" not in saved
    model, _ = load_model(masked, arch=ARCH)
    ref, _ = load_model(plain, arch=ARCH)
    assert len(has_masks(model)) == 10
    for name, mod in model.named_modules():
        if hasattr(mod, "weight_mask"):
            ref_w = ref.get_submodule(name).weight
            assert torch.equal(mod.weight, ref_w)
            assert torch.equal(mod.weight_mask.bool(), ref_w != 0)
    again = tmp_path / "again.pt"
    from_masked = [files[0], str(masked), *files[2:]]  # the masked file as the input
    assert main([*from_masked, "--sparsity", "0.7", "--allocation", "uniform",
                 "--out", str(again)]) == 0
    assert "masks (10 layers) are baked" in capsys.readouterr().err
    got = layer_sparsities(again)
    assert all(0.69 < s < 0.75 for s in got.values()), got
    out_state = torch.load(again, weights_only=True)
    assert not any(k.endswith("_orig") for k in out_state)
