"""Whole-model jobs for the per-sample solvers (Net-Trim), whose constraints need each
layer's input samples and the original outputs, not only a Gram matrix.

Each layer gets a seeded uniform sample of its input rows (``max_samples`` of them: memory
O(max_samples * d) per layer, so this is for models whose layers fit that way). The programs
follow Net-Trim's rules (``solvers/nettrim_rules.py``):

- parallel: the original network's inputs and outputs, V = 0 (the parallel rule);
- cascade: the pruned network's inputs X_hat and the original outputs Y; V = X_hat W0^T off
  Omega and the radius gamma ||(X_hat W0^T - Y)_Omega|| (the authors' cascade rule). The first
  layer, or any layer whose inputs the pruning has not changed, takes the parallel rule.

A per-layer sparsity becomes the solver's ``target_sparsity``: a search on the gain, with
the cascade rule's radius as a floor (``eps_min``), so W0 stays feasible and the program is
never infeasible. Where that floor alone already prunes more than asked (the layers before
erred a lot), the layer comes out sparser than its target, and the report shows it. With
``sparsity=None`` the solver's own ``gain`` sets the first layer's radius and the cascade rule
the others, exactly as the authors ran it. A layer allotted no sparsity is left dense.
"""

from __future__ import annotations

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.layerwise.executors import LayerJob
from layertrim.problem import LayerProblem
from layertrim.solvers.nettrim_cvx import augmented_inputs
from layertrim.solvers.nettrim_rules import cascade_rule
from layertrim.validate import check_bool


def left_dense(policy: dict, name: str) -> bool:
    """A layer allotted no sparsity is left as it is: no samples, no job (None is the gain
    rule, which does solve)."""
    return policy[name] is not None and policy[name] <= 0


def per_sample_jobs(bridge, names: list[str], policy: dict, method: str, cascade: bool,
                    options: dict) -> tuple[list[LayerJob], list[tuple[str, int]]]:
    """The jobs for ``names``, and the (layer, group) pairs left dense (sparsity 0)."""
    dense = [(n, g) for n in names if left_dense(policy, n) for g in range(bridge.groups(n))]
    names = [n for n in names if not left_dense(policy, n)]  # sampled only if solved
    if not names:
        return [], dense
    samples = bridge.samples(names, cross=cascade)
    relu = bridge.relu_layers(names)
    jobs = []
    for name in names:
        target = policy[name]
        for g, (X, X0) in enumerate(samples[name]):
            W, b = bridge.weights(name, g)
            act = "relu" if name in relu else "linear"
            try:
                problem = LayerProblem.create(W, X, bias=b, activation=act,
                                              require_target=False)
            except InvalidInputError as e:
                raise InvalidInputError(f"layer {name}: {e}") from None
            opts = dict(options)
            if target is not None:
                opts["target_sparsity"] = target
            if X0 is not None and not np.array_equal(X, X0):
                Z0 = (X0 if b is None else np.hstack([X0, np.ones((len(X0), 1))])) @ problem.W0a.T
                try:
                    t = cascade_rule(augmented_inputs(problem), problem.W0a,
                                     np.maximum(Z0, 0.0) if act == "relu" else Z0, act == "relu",
                                     per_neuron=check_bool("per_neuron",
                                                               options.get("per_neuron", False)))
                except InvalidInputError as e:
                    raise InvalidInputError(f"layer {name}: {e}") from None
                opts.update(Y=t.Y, V=t.V)
                opts["eps" if target is None else "eps_min"] = t.eps
            jobs.append(LayerJob(name, g, problem, method, opts))
    return jobs, dense
