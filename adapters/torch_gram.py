"""Accumulating a layer's Gram statistics next to its activations, in torch.

Calibration adds every batch's X^T X (and the cascade cross term X^T X0) to running sums kept
as torch tensors, with in-place GEMMs (``addmm_``), and hands them to a float64
``layertrim.gram.Gram`` once, at the end. Only the upper triangle of X^T X is multiplied, in
panels; the lower one is its mirror, so the Gram is exactly symmetric. Where a batch has to be
copied anyway (a convolution's patches, a conversion to float64), the copy is a (d + 1) x rows
sample matrix whose last row is ones, so that the same GEMM yields the column sums (and the
reference's, for the cross term) with no separate reduction pass. Short batches are gathered
in a bounded buffer first, so that the GEMM's inner dimension is long enough to run at speed.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram

GRAM_CHUNK = 8192  # rows per float32 partial sum: bounds its rounding (see GramSum)
GRAM_DTYPES = ("float64", "float32")
BLOCK_ROWS = 192  # float32 rows per panel of the upper-triangle product (add_upper_gram)
BUFFER_ENTRIES = 1 << 20  # entries of a GramSum's sample buffer (and of the reference's)
DIRECT_ROWS = 256  # batches of fewer rows are buffered (GramSum.add)
BUFFER_ROWS = 4096  # at most this many rows buffered: long enough an inner dimension for a
# GEMM at speed, without a narrow layer's buffer costing megabytes (every layer holds one)


def check_gram_dtype(gram_dtype) -> str:
    if gram_dtype not in GRAM_DTYPES:
        raise InvalidInputError(f"gram_dtype must be one of {GRAM_DTYPES}, got {gram_dtype!r}")
    return gram_dtype


def upper_panels(H: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """The panels (a, b, H[a:b, a:]) of H's upper triangle that add_upper_gram multiplies."""
    d = H.shape[0]
    t = max(1, BLOCK_ROWS * 4 // H.element_size())
    if d >= 128:  # at least two panels (a full product of 151 is 10-15% slower than two)
        t = min(t, -(-d // 2))
    return [(a, min(a + t, d), H[a:a + t, a:]) for a in range(0, d, t)]


def add_upper_gram(H: torch.Tensor, A: torch.Tensor,
                   panels: list[tuple[int, int, torch.Tensor]] | None = None) -> None:
    """H += A A^T on and above the diagonal (below it, H holds partial junk) for a column-sample
    matrix A (d x rows), in panels of equal height t: rows [a, a + t) of A against rows
    [a, d), so about (1 + t/d)/2 of the full product's flops. t is BLOCK_ROWS in float32 and
    half that in float64 (the same bytes per panel column). Measured on 2 cores against one
    full product and against equal-area panels, for d = 26-785 and 256-41500 rows: within
    ~10% of the best height tried (24-256) everywhere, 25-35% faster than the full product
    at d = 785 and 10-15% faster than equal areas (whose short first panels run slow GEMMs);
    a Gram narrower than a panel is one full product, the fastest there. ``panels`` are H's,
    from upper_panels, made once where H is updated batch after batch."""
    for a, b, Hp in upper_panels(H) if panels is None else panels:
        Hp.addmm_(A.narrow(0, a, b - a), A.narrow(0, a, A.shape[0] - a).T)


@numba.njit(cache=True, parallel=True)
def _symmetric_from_upper(S: np.ndarray, H: np.ndarray) -> bool:
    """H (float64, d x d) = the symmetric matrix whose upper triangle is S's (any float dtype
    and strides; below the diagonal S holds junk); False where an entry is NaN or Inf. One
    pass over 64 x 64 tile pairs shared by the threads: each upper tile is converted row by
    row, then mirrored from it (hot in L1) into the lower tile, again row by row, so that
    every write is contiguous. On warm pages that is as fast as mirroring column by column
    (0.39 ms at d = 784 on 2 cores); in a period when this VM's page faults were slow, the
    column-order mirror took 1.8-2.0 ms and this one 0.75."""
    d = H.shape[0]
    nt = (d + 63) // 64
    pairs = nt * (nt + 1) // 2
    first = np.empty(pairs, np.int64)  # the tile pairs (a <= b), listed so that the threads
    second = np.empty(pairs, np.int64)  # share the work evenly (tile rows shrink downwards)
    k = 0
    for a in range(nt):
        for b in range(a, nt):
            first[k], second[k] = a, b
            k += 1
    bad = np.zeros(pairs, np.int64)
    for p in numba.prange(pairs):
        a, b = first[p] * 64, second[p] * 64
        ae, be = min(a + 64, d), min(b + 64, d)
        nonfinite = 0
        for i in range(a, ae):
            for j in range(max(b, i), be):
                v = np.float64(S[i, j])
                H[i, j] = v
                nonfinite += not (v - v == 0.0)  # v - v is NaN exactly where v is NaN or Inf
        for j in range(b, be):
            for i in range(a, min(ae, j)):
                H[j, i] = H[i, j]
        bad[p] = nonfinite
    return bad.sum() == 0


def _zeros(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero rows x cols matrix whose rows start 64-byte aligned (a view into a wider one):
    float32 GEMMs that update a matrix of odd width (d + 1) run 15-25% slower."""
    return torch.zeros(rows, -(-cols // 16) * 16, dtype=dtype, device=device)[:, :cols]


class _Sums:
    """Running sums of one dtype, augmented by the ones row: [X; 1][X; 1]^T = [H, s; s^T, n]
    and [X; 1][X0; 1]^T = [C, s; s0^T, n], with the views that every batch's GEMMs write
    through made once (from Python, slicing a tensor costs about as much as a small GEMM)."""

    def __init__(self, d: int, d0: int | None, dtype: torch.dtype, device: torch.device):
        H = _zeros(d + 1, d + 1, dtype, device)
        self.mats = [H] if d0 is None else [H, _zeros(d + 1, d0 + 1, dtype, device)]
        self.panels, self.panels_x = upper_panels(H), upper_panels(H[:d, :d])
        self.col = H[:d, d]
        if d0 is not None:
            self.cross, self.row0 = self.mats[1][:d, :d0], self.mats[1][d, :d0]

    def add(self, mats: list[torch.Tensor], augmented: bool) -> None:
        """Add the products of X (and X0), given with their ones rows when ``augmented``."""
        A = mats[0]
        if augmented:
            add_upper_gram(self.mats[0], A, self.panels)
            if len(mats) > 1:
                self.mats[1].addmm_(A, mats[1].T)
            return
        add_upper_gram(self.mats[0], A, self.panels_x)
        self.col += A.sum(1)
        if len(mats) > 1:
            self.cross.addmm_(A, mats[1].T)
            self.row0 += mats[1].sum(1)


class GramSum:
    """One layer group's running statistics: X^T X, X's column sums, the row count, and with
    ``d0`` the cross term X^T X0 and X0's column sums.

    Batches shorter than DIRECT_ROWS wait in a buffer of at most ``buffer_entries`` entries and
    BUFFER_ROWS rows (as many again for X0), multiplied when full and at the end; longer ones
    are multiplied as they come, from their own memory or through a temporary copy of at most
    about ``buffer_entries`` entries (a longer matrix is taken a piece at a time). Memory is
    O(d^2 + buffer_entries), whatever the number of rows.

    With ``float32`` (``gram_dtype="float32"``, the calibration default), float32 CPU inputs
    are multiplied and summed in float32 into a partial sum that is added to the float64 totals
    every GRAM_CHUNK rows, so float32's rounding (of the products and of the sums) is confined
    to one partial sum: about 1e-7 relative on the MNIST networks (bench/calibration.py); and
    float32 GEMMs run about 2x faster. That rounding is not positive semidefinite: where the
    inputs are rank-deficient (fewer rows than inputs, collinear inputs) the Gram's smallest
    eigenvalues are about -1e-6 of its mean diagonal instead of 0. The solvers take that as
    they take a singular Gram: they damp it or fall back to an eigenvalue cut (tests:
    test_float32_grams_prune_a_rank_deficient_cascade_like_float64). Other dtypes and
    devices, and ``float32=False``, multiply in float64 (a CUDA float32 product may run in
    TF32)."""

    def __init__(self, d: int, d0: int | None = None, float32: bool = False,
                 buffer_entries: int = BUFFER_ENTRIES) -> None:
        self.d, self.d0, self.float32 = d, d0, float32
        self.buffer_entries = buffer_entries
        self.n = 0
        self._total: _Sums | None = None  # float64
        self._part: _Sums | None = None  # float32 partial sums
        self._part_rows = 0
        self._buf: list[torch.Tensor] | None = None  # [(d+1) x cap, (d0+1) x cap], ones last
        self._fill = 0  # buffered rows
        self._final = False  # to_gram hands the sums over

    def limit_buffer(self, entries: int) -> None:
        """Lower the buffer's budget to ``entries`` (once made, the buffer keeps its size)."""
        self.buffer_entries = min(self.buffer_entries, entries)

    @property
    def capacity(self) -> int:
        """Rows the buffer holds (at most BUFFER_ROWS, fewer than a float32 partial sum's)."""
        if self._buf is not None:
            return self._buf[0].shape[1]
        return max(1, min(BUFFER_ROWS, self.buffer_entries // (self.d + 1)))

    @property
    def room(self) -> int:
        """Rows that still fit in the buffer before it is multiplied out."""
        return self.capacity - self._fill

    def product_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype this sum multiplies ``x``'s samples in."""
        fast = self.float32 and x.dtype == torch.float32 and x.device.type == "cpu"
        return torch.float32 if fast else torch.float64

    def add_rows(self, x: torch.Tensor) -> None:
        """Add a batch of rows x (rows x d, as a Linear layer's input arrives) to a sum without
        a cross term: ``add(x.T)``, with a short path for the common case (a long float32
        CPU batch whose product fits in the current float32 partial sum), where add's checks
        and routing cost a few percent of a calibration pass."""
        rows = x.shape[0]
        part = self._part
        if (part is not None and not self._final and rows >= DIRECT_ROWS
                and self._part_rows + rows <= GRAM_CHUNK and x.dtype is torch.float32
                and x.device.type == "cpu" and x.shape[1] == self.d and x.stride(1) == 1):
            part.add([x.T], False)
            self._part_rows += rows
            self.n += rows
            return
        self.add(x.T)

    def add(self, A: torch.Tensor, A0: torch.Tensor | None = None) -> None:
        """Add one batch of samples: A is a d x rows matrix, or any tensor whose leading
        dimensions multiply to d and whose others index the samples (a convolution's patch
        view (C, kh, kw, N, OH, OW)), of any strides and dtype; A0 likewise for the cross term,
        given exactly when ``d0`` is set.

        A batch of DIRECT_ROWS rows or more is multiplied as it comes: straight from its own
        memory when it is a matrix in the product dtype, else from one temporary copy (freed
        at once, so the allocator hands the same pages to the next batch: fresh pages cost
        about as much as the copy). A shorter one waits in the buffer, so that the GEMM's
        inner dimension is long enough to run at speed."""
        if self._final:
            raise RuntimeError("GramSum.add after to_gram: the sums were handed over")
        if (A0 is None) != (self.d0 is None):
            raise InvalidInputError("the cross term's inputs must be given exactly when d0 is set")
        rows = A.numel() // self.d if self.d else 0
        if A0 is not None and A0.numel() != rows * self.d0:
            raise InvalidInputError(f"{rows} rows for X but {A0.numel() // max(1, self.d0)} "
                                    f"for X0")
        if rows == 0:
            return
        dtype = self.product_dtype(A)
        mats = [m for m in (A, A0) if m is not None]
        direct = all(m.dim() == 2 and m.dtype == dtype and 1 in m.stride() for m in mats)
        piece = max(DIRECT_ROWS, self.buffer_entries // (self.d + 1))
        if not direct and rows > piece and all(m.dim() == 2 for m in mats):
            # a big matrix to convert (a whole calibration set given as one tensor): copied a
            # piece at a time, so the temporary stays O(buffer_entries), not O(rows * d)
            for s in range(0, rows, piece):
                e = min(rows, s + piece)
                self._copy_and_multiply([m[:, s:e] for m in mats], dtype, A.device)
            self.n += rows
            return
        if rows < DIRECT_ROWS and rows <= self.capacity:
            self._ready(dtype, A.device)
            if rows > self.room:
                self._multiply_buffer()
            for B, m in zip(self._buf, mats, strict=True):
                B[:-1, self._fill:self._fill + rows].view(m.shape).copy_(m)
            self._fill += rows
            if self.room == 0:
                self._multiply_buffer()
        elif direct:
            self._multiply(mats, augmented=False)
        else:
            self._copy_and_multiply(mats, dtype, A.device)
        self.n += rows

    def _copy_and_multiply(self, mats: list[torch.Tensor], dtype: torch.dtype,
                           device: torch.device) -> None:
        """Multiply X (and X0) through one temporary copy in the product dtype, ones row
        appended (freed at once: the allocator hands the same pages to the next batch)."""
        rows = mats[0].numel() // self.d
        temps = self._buffers(rows, dtype, device, len(mats) > 1)
        for B, m in zip(temps, mats, strict=True):
            B[:-1].view(m.shape).copy_(m)
        self._multiply(temps)

    def _buffers(self, rows: int, dtype: torch.dtype, device: torch.device,
                 cross: bool) -> list[torch.Tensor]:
        """Sample matrices of ``rows`` columns for X (and X0), their last row ones."""
        out = []
        for d in (self.d, self.d0) if cross else (self.d,):
            B = torch.empty(d + 1, rows, dtype=dtype, device=device)
            B[d] = 1
            out.append(B)
        return out

    def _ready(self, dtype: torch.dtype, device: torch.device) -> None:
        """Make a buffer of the product dtype on the input's device (multiplying out an old
        one)."""
        if self._buf is not None and (self._buf[0].dtype, self._buf[0].device) == (
                dtype, device):
            return
        self._multiply_buffer()
        self._buf = self._buffers(self.capacity, dtype, device, self.d0 is not None)

    def _multiply_buffer(self) -> None:
        if self._fill:
            self._multiply([B[:, :self._fill] for B in self._buf])
            self._fill = 0

    def _multiply(self, mats: list[torch.Tensor], augmented: bool = True) -> None:
        """Add the Grams of sample matrices X and X0 to the sums: ``augmented`` ones end in a
        row of ones ([X; 1], [X0; 1]), so that the same GEMM gives the column sums."""
        A = mats[0]
        if A.dtype != torch.float32:
            if self._total is None:
                self._total = _Sums(self.d, self.d0, A.dtype, A.device)
            self._total.add(mats, augmented)
            return
        if self._part is None:
            self._part = _Sums(self.d, self.d0, A.dtype, A.device)
        rows = A.shape[1]
        for s in range(0, rows, GRAM_CHUNK):
            e = min(rows, s + GRAM_CHUNK)
            if self._part_rows + e - s > GRAM_CHUNK:
                self._flush()
            self._part.add([m.narrow(1, s, e - s) for m in mats] if e - s < rows else mats,
                           augmented)
            self._part_rows += e - s

    def _flush(self) -> None:
        """Add the float32 partial sums to the float64 totals."""
        if self._part is None or self._part_rows == 0:
            return
        if self._total is None:
            self._total = _Sums(self.d, self.d0, torch.float64, self._part.mats[0].device)
        for t, p in zip(self._total.mats, self._part.mats, strict=True):
            t += p
            p.zero_()
        self._part_rows = 0

    def to_gram(self) -> Gram:
        """The float64 Gram of everything added (raises InvalidInputError on NaN or Inf). The
        sums are handed over: no batch can be added afterwards."""
        self._multiply_buffer()
        self._buf = None
        d, d0 = self.d, self.d0
        if self._total is not None:
            self._flush()
            src = self._total.mats
        elif self._part is not None:  # float32 sums alone: converted in the copy below
            src = self._part.mats
        else:
            return Gram(d, d0)
        # numpy's allocation: huge pages where the kernel grants them, not 1200 faults on
        # fresh pages; C-contiguous, for the Gram to keep. (Sums on another device come over
        # to the CPU first.)
        H = np.empty((d, d))
        if not _symmetric_from_upper(src[0][:d, :d].cpu().numpy(), H):
            raise InvalidInputError("X batch contains NaN or Inf (or X^T X overflows)")
        total = src[0][:d, d].to("cpu", torch.float64).numpy()
        cross = total0 = None
        if d0 is not None:  # a copy as well: the Gram keeps it
            cross = torch.empty(d, d0, dtype=torch.float64)
            cross.copy_(src[1][:d, :d0])
            cross = cross.numpy()
            total0 = src[1][d, :d0].to("cpu", torch.float64).numpy()
        self._total = self._part = None  # final: the sums are the Gram's now (and freed)
        self._final = True
        return Gram.holding(H, total, self.n, cross, total0, finite=True)
