"""Plain-text tables for the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence], *, title: str = "") -> str:
    """Left-aligned first column, right-aligned others; values are pre-formatted strings."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(vals):
        rest = [v.rjust(w) for v, w in zip(vals[1:], widths[1:], strict=True)]
        out = [vals[0].ljust(widths[0]), *rest]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    lines = ([title] if title else []) + [line(list(headers)), sep] + [line(r) for r in cells]
    return "\n".join(lines)


def _zeros_kept(result) -> str:
    """A note when kept weights are exactly zero (an input that never fires, a zero in W0)."""
    import numpy as np

    nonzero = int(np.count_nonzero(result.W))
    return "" if nonzero == result.nnz else f"; {nonzero} of them nonzero"


def format_result(result) -> str:
    """A short report of one LayerResult."""
    m, d = result.W.shape
    rows = [
        ("method", result.solver),
        ("layer", f"{m} x {d}" + (" + bias" if result.bias is not None else "")),
        ("pattern", result.pattern),
        ("sparsity", f"{result.sparsity:.4f}  ({result.nnz} of {m * d} weights kept"
                     + _zeros_kept(result) + ")"),
        ("relative error", f"{result.rel_error:.4e}"),
        *([("after activation", f"{result.certificate['rel_loss']:.4e}  (what l0-general "
                                f"minimises; the line above is before it)")]
          if isinstance(getattr(result, "certificate", None), dict)
          and "rel_loss" in result.certificate else []),
        ("time", f"{result.wall_time:.3f} s"),
        ("status", result.status),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
