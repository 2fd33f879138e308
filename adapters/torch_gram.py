"""Accumulating a layer's Gram statistics next to its activations, in torch.

Calibration adds every batch's X^T X (and the cascade cross term X^T X0) to running sums kept
as torch tensors, with in-place GEMMs (``addmm_``) that allocate nothing per batch, and hands
them to a float64 ``layertrim.gram.Gram`` once, at the end. Only the upper triangle of X^T X
is multiplied, in row blocks; the lower one is its mirror, so the Gram is exactly symmetric.
"""

from __future__ import annotations

import math

import torch

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram

GRAM_CHUNK = 32768  # rows per float32 partial sum: bounds its rounding (see GramSum)
GRAM_DTYPES = ("float64", "float32")
BLOCK_ROWS = 64  # row blocks of the upper-triangle product are at least this tall


def check_gram_dtype(gram_dtype) -> str:
    if gram_dtype not in GRAM_DTYPES:
        raise InvalidInputError(f"gram_dtype must be one of {GRAM_DTYPES}, got {gram_dtype!r}")
    return gram_dtype


def add_upper_gram(H: torch.Tensor, A: torch.Tensor) -> None:
    """H += A A^T on and above the diagonal (below it, H holds partial junk) for a column-sample
    matrix A (d x rows). Row blocks [a, b) are multiplied against rows [a, d), with edges that
    give every block the same area, so about (1 + 1/k)/2 of the full product's flops for k
    blocks; measured 25-30% faster than one GEMM at d = 785 (k = 3) on 2 cores."""
    d = A.shape[0]
    k = max(1, min(4, d // BLOCK_ROWS))
    edges = [0] + [round(d - d * math.sqrt(1 - i / k)) for i in range(1, k)] + [d]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        H[a:b, a:].addmm_(A[a:b], A[a:].T)


class GramSum:
    """One layer group's running statistics: X^T X, X's column sums, the row count, and with
    ``d0`` the cross term X^T X0 and X0's column sums.

    By default every product is taken in float64. With ``float32`` (``gram_dtype="float32"``),
    float32 CPU inputs are multiplied and summed in float32 into a partial sum that is added
    to the float64 totals every GRAM_CHUNK rows, so float32's rounding (of the products and of
    the sums) is confined to one partial sum: about 1e-7 relative on the MNIST networks
    (bench/calibration.py), a few 1e-6 on a narrow layer with tens of thousands of rows; and
    float32 GEMMs run 2-3x faster. That rounding is not
    positive semidefinite: where the inputs are rank-deficient (fewer rows than inputs,
    collinear inputs) it exceeds a solver's tiny ridge (1e-8 of mean(diag H)), so it is opt-in.
    Other dtypes and devices always multiply in float64 (a CUDA float32 product may run in
    TF32)."""

    def __init__(self, d: int, d0: int | None = None, float32: bool = False) -> None:
        self.d, self.d0, self.float32 = d, d0, float32
        self.n = 0
        self._total: list[torch.Tensor] | None = None  # float64 [H, sum, C, sum0]
        self._part: list[torch.Tensor] | None = None  # float32 partial sums
        self._part_rows = 0

    def add(self, A: torch.Tensor, A0: torch.Tensor | None = None) -> None:
        """Add one batch given as column-sample matrices A (d x rows) and A0 (d0 x rows)."""
        rows = A.shape[1]
        if self.product_dtype(A) == torch.float32:
            for s in range(0, rows, GRAM_CHUNK):
                if self._part_rows + min(GRAM_CHUNK, rows - s) > GRAM_CHUNK:
                    self._flush()
                a = A[:, s:s + GRAM_CHUNK]
                a0 = None if A0 is None else A0[:, s:s + GRAM_CHUNK]
                self._part = self._add_to(self._part, a, a0, torch.float32)
                self._part_rows += a.shape[1]
        else:
            self._total = self._add_to(self._total, A.double(),
                                       None if A0 is None else A0.double(), torch.float64)
        self.n += rows

    def product_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype this sum multiplies ``x``'s samples in."""
        fast = self.float32 and x.dtype == torch.float32 and x.device.type == "cpu"
        return torch.float32 if fast else torch.float64

    def _add_to(self, acc, a, a0, dtype):
        if acc is None:
            acc = [torch.zeros(self.d, self.d, dtype=dtype, device=a.device),
                   torch.zeros(self.d, dtype=dtype, device=a.device)]
            if a0 is not None:
                acc += [torch.zeros(self.d, a0.shape[0], dtype=dtype, device=a.device),
                        torch.zeros(a0.shape[0], dtype=dtype, device=a.device)]
        add_upper_gram(acc[0], a)
        acc[1] += a.sum(1)
        if a0 is not None:
            acc[2].addmm_(a, a0.T)
            acc[3] += a0.sum(1)
        return acc

    def _flush(self) -> None:
        if self._part is None:
            return
        if self._total is None:
            self._total = [torch.zeros_like(p, dtype=torch.float64) for p in self._part]
        for t, p in zip(self._total, self._part, strict=True):
            t += p.double()
            p.zero_()
        self._part_rows = 0

    def to_gram(self) -> Gram:
        """The float64 Gram of everything added (raises InvalidInputError on NaN or Inf)."""
        self._flush()
        g = Gram(self.d, self.d0)
        if self._total is None:
            return g
        upper = torch.triu(self._total[0])
        H = upper + torch.triu(upper, 1).T
        rest = [t.cpu().numpy() for t in self._total[1:]]
        cross, total0 = (rest[1], rest[2]) if len(rest) == 3 else (None, None)
        return g.add_stats(H.cpu().numpy(), rest[0], self.n, cross, total0)
