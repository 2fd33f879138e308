"""Saved models and calibration files at their edges: tied weights, half-precision files,
corrupt inputs, the --arch source file, resume fingerprints and the calibration forms the
CLI reads; run in this process through cli.main."""

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import layertrim as lt
from layertrim.adapters.torch_fingerprint import model_fingerprint
from layertrim.adapters.torch_io import load_calibration, load_model, save_model
from layertrim.cli import main
from layertrim.errors import InvalidInputError

ARCH = "tests.test_torch_io_edges"
X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 8, bias=False)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.relu(self.mid(self.emb(x))))


def tied():
    torch.manual_seed(0)
    return Tied()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(8, 16), nn.Linear(16, 4), act

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.relu(h) if self.act == "relu" else torch.tanh(h))


def test_tied_weights_are_pruned_once_and_counted_once():
    model = tied()
    with pytest.warns(UserWarning, match="shares its weight"):
        rep = lt.prune_model(model, [X], sparsity=0.5, method="magnitude",
                             allocation="uniform", executor="serial", vs_dense=False)
    assert [r.name for r in rep.layers] == ["emb", "mid"]
    assert model.out.weight is model.emb.weight
    assert float((model.emb.weight == 0).float().mean()) == 0.5
    assert rep.total_weights == 128


def test_tied_weights_save_as_safetensors_and_load_back(tmp_path):
    from safetensors.torch import save_model as st_save_model

    model = tied()
    with torch.no_grad():
        model.emb.weight[:, ::2] = 0
    path = save_model(model, tmp_path / "t.safetensors", "safetensors")  # raised before
    loaded, _ = load_model(path, arch=f"{ARCH}:tied")
    assert loaded.out.weight is loaded.emb.weight
    assert torch.equal(loaded(X), model(X))
    st_save_model(model, str(tmp_path / "hf.safetensors"))  # keeps one name per tensor
    loaded, _ = load_model(tmp_path / "hf.safetensors", arch=f"{ARCH}:tied")
    assert torch.equal(loaded(X), model(X))


def test_tied_keys_that_disagree_in_a_file_are_refused(tmp_path):
    """The architecture shares one tensor between emb and out: a state file that holds two
    different values for them loaded silently, the last key winning."""
    state = {k: v.clone() for k, v in tied().state_dict().items()}
    torch.save(state, tmp_path / "same.pt")
    loaded, _ = load_model(tmp_path / "same.pt", arch=f"{ARCH}:tied")
    assert torch.equal(loaded.out.weight, state["emb.weight"])
    state["out.weight"] += 1
    torch.save(state, tmp_path / "differ.pt")
    with pytest.raises(InvalidInputError, match=r"tied weights \['emb.weight', 'out.weight'\] "
                                                r"differ"):
        load_model(tmp_path / "differ.pt", arch=f"{ARCH}:tied")


@pytest.mark.parametrize("dtype,fmt,name", [(torch.float16, "state_dict", "m.pt"),
                                            (torch.bfloat16, "safetensors", "m.safetensors")])
def test_a_half_precision_file_is_pruned_and_saved_in_its_dtype(tmp_path, dtype, fmt, name):
    src = save_model(mlp().to(dtype), tmp_path / name, fmt)
    torch.save(X, tmp_path / "c.pt")
    out = tmp_path / ("o" + name)
    assert main(["prune", str(src), "--arch", f"{ARCH}:mlp", "--calib", str(tmp_path / "c.pt"),
                 "--sparsity", "0.5", "--method", "magnitude", "--executor", "serial",
                 "--no-checkpoint", "--out", str(out)]) == 0
    pruned, _ = load_model(out, arch=f"{ARCH}:mlp")
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    assert out.stat().st_size < 1.2 * src.stat().st_size


def test_the_arch_source_file_is_never_an_output(tmp_path, monkeypatch, capsys):
    # the architecture lives in a throwaway module: were the guard to fail, only it is lost
    source = tmp_path / "edges_arch_module.py"
    source.write_text("import torch\nfrom torch import nn\n\n\ndef mlp():\n"
                      "    torch.manual_seed(0)\n"
                      "    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = source.read_text()
    src = save_model(mlp(), tmp_path / "m.pt", "state_dict")
    torch.save(X, tmp_path / "c.pt")
    code = main(["prune", str(src), "--arch", "edges_arch_module:mlp", "--calib",
                 str(tmp_path / "c.pt"), "--sparsity", "0.5", "--method", "magnitude",
                 "--no-checkpoint", "--out", str(source)])
    assert code == 2 and "overwrite" in capsys.readouterr().err
    assert source.read_text() == before


def test_corrupt_inputs_are_clean_errors(tmp_path):
    ts = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(mlp()), str(ts))
    broken = tmp_path / "b.pt"  # the TorchScript zip without its data.pkl
    with zipfile.ZipFile(ts) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("data.pkl"):
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(InvalidInputError, match="TorchScript"):
        load_model(broken, arch=f"{ARCH}:mlp")
    np.savez(tmp_path / "c.npz", x=X.numpy())
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="t.npz"):
        load_calibration(tmp_path / "t.npz")
    sd = save_model(mlp(), tmp_path / "m.pt", "state_dict")
    (tmp_path / "cut.pt").write_bytes(sd.read_bytes()[:200])
    with pytest.raises(InvalidInputError, match="damaged") as e:
        load_model(tmp_path / "cut.pt", arch=f"{ARCH}:mlp")
    assert "trust-pickle" not in str(e.value)


@pytest.mark.parametrize("form", ["pair", "batches", "pairs", "dict", "npz_X"])
def test_calibration_files_in_common_forms(tmp_path, form):
    y = torch.arange(64) % 4
    path = tmp_path / ("c.npz" if form == "npz_X" else "c.pt")
    if form == "npz_X":
        np.savez(path, X=X.numpy(), y=y.numpy())
    else:
        obj = {"pair": (X, y), "batches": list(X.split(16)),
               "pairs": list(zip(X.split(16), y.split(16), strict=True)),
               "dict": {"inputs": X, "labels": y}}[form]
        torch.save(obj, path)
    got = torch.cat(load_calibration(path, 32))
    assert torch.equal(got, X)


def test_integer_calibration_is_refused_with_a_hint(tmp_path):
    torch.save((X * 100).to(torch.uint8), tmp_path / "u.pt")
    with pytest.raises(InvalidInputError, match="uint8.*scaled"):
        load_calibration(tmp_path / "u.pt")


def test_a_custom_modules_settings_are_in_its_fingerprint():
    torch.manual_seed(0)
    a = Act("relu")
    torch.manual_seed(0)
    b = Act("tanh")
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert model_fingerprint(a) != model_fingerprint(b)
    torch.manual_seed(0)
    assert model_fingerprint(Act("relu")) == model_fingerprint(a)


def test_buffers_out_of_the_state_dict_and_list_settings_are_in_the_fingerprint():
    """A non-persistent buffer (an input normalisation), an unregistered tensor attribute
    and a list setting change the Grams while the state_dict stays the same: a resume with
    such a model took the other's saved layers."""
    def model(scale=1.0, shift=0.0, acts=("relu",)):
        m = scaled()
        m.scale.fill_(scale)
        m.shift = torch.full((4,), shift)  # a plain tensor attribute
        m.acts = list(acts)
        return m

    base = model_fingerprint(model())
    assert model_fingerprint(model()) == base
    for other in (model(scale=3.0), model(shift=1.0), model(acts=("tanh",))):
        assert torch.equal(other.fc.weight, model().fc.weight)
        assert model_fingerprint(other) != base


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("scale", torch.ones(4), persistent=False)

    def forward(self, x):
        return self.fc(x) * self.scale


def scaled():
    torch.manual_seed(0)
    return Scaled()


def test_torchscript_non_persistent_buffers_load_with_their_values(tmp_path):
    model = scaled()
    model.scale.fill_(2.0)  # the scripted value, not the architecture's default of 1
    torch.jit.save(torch.jit.script(model), str(tmp_path / "s.pt"))
    loaded, fmt = load_model(tmp_path / "s.pt", arch=f"{ARCH}:scaled")
    assert fmt == "torchscript" and torch.equal(loaded.scale, model.scale)
    assert torch.equal(loaded(X), model(X))


def test_a_torchscript_model_with_a_non_persistent_buffer_is_pruned_back_to_torchscript(
        tmp_path):
    model = scaled()
    model.scale.fill_(2.0)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "s.pt"))
    torch.save(X, tmp_path / "c.pt")
    out = tmp_path / "o.pt"
    assert main(["prune", str(tmp_path / "s.pt"), "--arch", f"{ARCH}:scaled", "--calib",
                 str(tmp_path / "c.pt"), "--sparsity", "0.5", "--method", "magnitude",
                 "--executor", "serial", "--no-checkpoint", "--out", str(out)]) == 0
    pruned = torch.jit.load(str(out))
    assert float((pruned.fc.weight == 0).float().mean()) == 0.5
    assert torch.equal(pruned.scale, model.scale)


def test_tied_weights_refuse_the_mask_convention_before_any_work():
    model = tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidInputError, match="tied"):
        lt.prune_model(model, [X], sparsity=0.5, method="magnitude", executor="serial",
                       mask_convention=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_one_rule_tells_a_labelled_pair_from_two_batches(tmp_path):
    """The API's batches() and the CLI's calibration files agree on (inputs, targets): integer
    labels, or float targets beside inputs of more dimensions, make one labelled batch; two
    tensors of one shape are two batches."""
    from layertrim.adapters.torch_calib import batches

    x, labels, targets = torch.randn(8, 5), torch.arange(8) % 3, torch.randn(8)
    for pair in ((x, labels), (x, targets)):
        assert [b.shape for b in batches(pair)] == [(8, 5)]
        torch.save(pair, tmp_path / "p.pt")
        assert torch.equal(torch.cat(load_calibration(tmp_path / "p.pt", 8)), x)
    two = (torch.randn(8, 5), torch.randn(8, 5))
    assert len(list(batches(two))) == 2
    torch.save(two, tmp_path / "t.pt")
    assert torch.cat(load_calibration(tmp_path / "t.pt", 16)).shape == (16, 5)


def test_two_float_vectors_of_one_length_are_refused_as_ambiguous(tmp_path):
    from layertrim.adapters.torch_calib import batches

    pair = (torch.randn(6), torch.randn(6))
    with pytest.raises(InvalidInputError, match="could be"):
        list(batches(pair))
    torch.save(pair, tmp_path / "p.pt")
    with pytest.raises(InvalidInputError, match="could be"):
        load_calibration(tmp_path / "p.pt", 8)


def test_a_keyword_inputs_pair_in_a_file_is_a_clean_error(tmp_path):
    """A calibration file holds input tensors: a saved (dict of keyword inputs, labels) pair is
    refused by name, not by an AttributeError."""
    torch.save(({"input_ids": torch.zeros(4, 3, dtype=torch.long)}, torch.arange(4)),
               tmp_path / "kw.pt")
    with pytest.raises(InvalidInputError, match="expected a tensor of inputs"):
        load_calibration(tmp_path / "kw.pt", 8)


def test_npy_complex_and_directory_calibration_files(tmp_path):
    """An .npy holds one array of inputs (torch.load's weights-only advice was misleading);
    complex inputs are refused like integer ones (they failed later, in a dtype mismatch);
    a directory is named as one, not as a missing file."""
    np.save(tmp_path / "c.npy", X.numpy())
    assert torch.equal(torch.cat(load_calibration(tmp_path / "c.npy", 32)), X)
    torch.save(X.to(torch.complex64), tmp_path / "z.pt")
    with pytest.raises(InvalidInputError, match="complex64.*real inputs"):
        load_calibration(tmp_path / "z.pt")
    np.save(tmp_path / "o.npy", np.array([object()]), allow_pickle=True)
    with pytest.raises(InvalidInputError, match="cannot read .*o.npy as an .npy"):
        load_calibration(tmp_path / "o.npy")
    with pytest.raises(InvalidInputError, match="a directory"):
        load_calibration(tmp_path)
