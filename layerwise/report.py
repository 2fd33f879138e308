"""What a whole-model run did, per layer and in total."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerRecord:
    name: str
    group: int
    m: int
    d: int
    nnz: int
    sparsity: float
    rel_error: float
    time_s: float
    status: str
    solver: str
    resumed: bool = False  # read back from a checkpoint, not solved in this run
    # the layer's output in the pruned network against the dense network's, relative: what
    # pruning everything up to the layer did (rel_error is against the layer's own target: in
    # cascade the corrected one, what the solver could still reach; in parallel the dense
    # output on the dense inputs)
    rel_error_dense: float | None = None
    # the weights the solver kept (its mask); nnz counts the written nonzeros, which is fewer
    # when kept weights are exactly zero (inputs that never fire, in a cascade's target)
    kept: int | None = None


@dataclass
class PruneReport:
    """Per-layer records plus totals (weights, nonzeros, sparsity, solve time)."""

    schedule: str
    method: str
    allocation: dict = field(default_factory=dict)  # the per-layer sparsities asked for
    timing: dict = field(default_factory=dict)  # calibration, allocation, solve, write-back, wall
    layers: list[LayerRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported with the warnings

    @property
    def total_weights(self) -> int:
        return sum(r.m * r.d for r in self.layers)

    @property
    def total_nnz(self) -> int:
        return sum(r.nnz for r in self.layers)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.total_nnz / max(self.total_weights, 1)

    @property
    def time_s(self) -> float:
        return sum(r.time_s for r in self.layers)

    def warnings(self) -> list[str]:
        """Layers left without a weight, and layers whose solver kept a count more than 1%
        (or one weight) off the sparsity asked: Net-Trim's radii, or a block pattern, set their
        own count. (Kept weights that are exactly zero do not count as off target.)"""
        out = []
        for name in dict.fromkeys(r.name for r in self.layers):
            recs = [r for r in self.layers if r.name == name]
            size = sum(r.m * r.d for r in recs)
            got = 1 - sum(r.nnz if r.kept is None else r.kept for r in recs) / max(size, 1)
            asked = self.allocation.get(name)
            if all(r.nnz == 0 for r in recs):
                out.append(f"layer {name} has no weight left: its output is its bias alone")
            elif isinstance(asked, (int, float)) and abs(got - asked) > max(0.01, 1 / size):
                out.append(f"layer {name}: {got:.4f} of its weights pruned, {asked:.4g} asked")
        return out + self.notes

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "method": self.method,
                "allocation": self.allocation, "timing": self.timing,
                "warnings": self.warnings(),
                "layers": [asdict(r) for r in self.layers],
                "totals": {"weights": self.total_weights, "nonzero": self.total_nnz,
                           "sparsity": self.sparsity, "solve_time_s": self.time_s}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def plot(self, path) -> object:
        """A PNG: per-layer sparsity and relative error (log scale; beside it the error against
        the dense network, when measured), written atomically."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from layertrim.atomic import atomic_write_bytes

        labels = [r.name if r.group == 0 else f"{r.name}[g{r.group}]" for r in self.layers]
        x = range(len(labels))
        fig, (a, b) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(labels) + 2), 6),
                                   sharex=True)
        a.bar(x, [r.sparsity for r in self.layers], color="tab:blue")
        a.axhline(self.sparsity, color="k", ls=":", label=f"total {self.sparsity:.3f}")
        a.set_ylabel("sparsity")
        a.set_ylim(0, 1)
        a.legend(fontsize=8)
        dense = [r.rel_error_dense for r in self.layers]
        if any(v is not None for v in dense):  # side by side: the layer's own, and vs dense
            xs = [i - 0.2 for i in x]
            b.bar(xs, [max(r.rel_error, 1e-12) for r in self.layers], width=0.4,
                  color="tab:red", label="rel. error (solver's target)")
            b.bar([i + 0.2 for i in x], [max(v or 0.0, 1e-12) for v in dense], width=0.4,
                  color="tab:gray", label="vs dense network")
            b.legend(fontsize=8)
        else:
            b.bar(x, [max(r.rel_error, 1e-12) for r in self.layers], color="tab:red")
        b.set_yscale("log")
        b.set_ylabel("relative error")
        b.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
        fig.suptitle(f"{self.method}, {self.schedule}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return atomic_write_bytes(path, buf.getvalue())

    def __str__(self) -> str:
        dense = any(r.rel_error_dense is not None for r in self.layers)
        head = f" {'vs dense':>9}" if dense else ""
        lines = [f"{'layer':<24} {'shape':>12} {'sparsity':>9} {'rel.err':>9}{head} "
                 f"{'time':>8} status"]
        for r in self.layers:
            name = r.name if r.group == 0 and not any(
                o.name == r.name and o.group for o in self.layers) else f"{r.name}[g{r.group}]"
            vs = "" if not dense else f" {'':>9}" if r.rel_error_dense is None else \
                f" {r.rel_error_dense:>9.2e}"
            lines.append(f"{name:<24} {f'{r.m}x{r.d}':>12} {r.sparsity:>9.4f} "
                         f"{r.rel_error:>9.2e}{vs} {r.time_s:>7.2f}s {r.status}")
        pad = f" {'':>9}" if dense else ""
        lines.append(f"{'total':<24} {self.total_weights:>12} {self.sparsity:>9.4f} "
                     f"{'':>9}{pad} {self.time_s:>7.2f}s")
        if dense:
            target = ("the cascade's target (the dense output projected onto the pruned "
                      "inputs)" if self.schedule == "cascade" else
                      "the dense layer's output, both on the dense network's inputs")
            lines.append(f"rel.err: against {target}\nvs dense: the layer's output in the "
                         f"pruned network against the dense network's")
        lines += [f"warning: {w}" for w in self.warnings()]
        if self.timing:
            lines.append("wall " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in self.timing.items()))
        return "\n".join(lines)
