"""The whole-model report's warnings: a layer left without weights, and a layer off the
sparsity asked for it (Net-Trim's radii and block patterns set their own counts)."""

import json

from layertrim.layerwise.report import LayerRecord, PruneReport


def record(name, group, m, d, nnz, status="solved", kept=None):
    return LayerRecord(name=name, group=group, m=m, d=d, nnz=nnz, sparsity=1 - nnz / (m * d),
                       rel_error=0.1, time_s=0.0, status=status, solver="x", kept=kept)


def test_warnings_name_empty_layers_and_layers_off_their_target():
    rep = PruneReport(schedule="cascade", method="nettrim",
                      allocation={"a": 0.5, "b": 0.5, "c": 0.5, "e": 0.5, "dw": 0.5},
                      layers=[record("a", 0, 10, 10, 50), record("b", 0, 10, 10, 0),
                              record("c", 0, 10, 10, 30, kept=30),
                              # kept 50 as asked, 10 of them exact zeros (dead inputs)
                              record("e", 0, 10, 10, 40, kept=50),
                              # two groups of 9: 4 + 5 kept is 0.5 of 18 up to one weight
                              record("dw", 0, 1, 9, 4), record("dw", 1, 1, 9, 5)])
    got = rep.warnings()
    assert got == ["layer b has no weight left: its output is its bias alone",
                   "layer c: 0.7000 of its weights pruned, 0.5 asked"]
    assert all(f"warning: {w}" in str(rep) for w in got)
    assert json.loads(rep.to_json())["warnings"] == got
    assert PruneReport(schedule="parallel", method="m", allocation={"a": 0.5},
                       layers=[record("a", 0, 10, 10, 50)]).warnings() == []


def test_one_layer_report_notes_zero_kept_weights_and_the_error_after_the_activation():
    import numpy as np

    import layertrim as lt
    from layertrim.report import format_result

    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((6, 10)), rng.standard_normal((200, 10))
    W[:, :6] = 0.0  # 24 nonzeros: a mask of 30 of 60 weights keeps 6 zeros
    r = lt.solve_layer(W, X, sparsity=0.5, method="magnitude")
    assert "(30 of 60 weights kept; 24 of them nonzero)" in \
        format_result(r)
    r = lt.solve_layer(W + 1.0, X, sparsity=0.5, method="l0-general", activation="tanh")
    text = format_result(r)
    assert f"after activation  {r.certificate['rel_loss']:.4e}" in text
    assert "after activation" not in format_result(lt.solve_layer(W, X, sparsity=0.5,
                                                                  method="sparsegpt"))
