"""Sparsity patterns: which sets of weights may be kept together.

``layer``  unstructured over the whole m x d matrix (one global count);
``row``    the same count in every output row;
``N:M``    at most N nonzeros in every group of M consecutive inputs of a row (2:4, 4:8).
"""

from __future__ import annotations

from dataclasses import dataclass

from layertrim.errors import InvalidInputError


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern. ``n`` and ``m`` are only set for ``kind == "nm"``."""

    kind: str  # "layer" | "row" | "nm"
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("layer", "row", "nm"):
            raise InvalidInputError(f"unknown pattern kind {self.kind!r}: 'layer', 'row' or 'nm'")
        if self.kind == "nm" and not (0 < self.n < self.m):
            raise InvalidInputError(f"pattern {self.n}:{self.m}: N:M needs 0 < N < M")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @classmethod
    def parse(cls, spec: str | Pattern) -> Pattern:
        """Parse ``"layer"``, ``"row"`` or ``"N:M"``; raise InvalidInputError otherwise."""
        if isinstance(spec, Pattern):
            return spec
        if not isinstance(spec, str):
            raise InvalidInputError(f"pattern must be a string, got {type(spec).__name__}")
        s = spec.strip().lower()
        if s in ("layer", "row"):
            return cls(s)
        if ":" in s:
            left, _, right = s.partition(":")
            try:
                n, m = int(left), int(right)
            except ValueError:
                raise InvalidInputError(f"pattern {spec!r}: N:M needs two integers") from None
            if not (0 < n < m):
                raise InvalidInputError(f"pattern {spec!r}: N:M needs 0 < N < M")
            return cls("nm", n, m)
        raise InvalidInputError(f"unknown pattern {spec!r}: use 'layer', 'row' or 'N:M' like '2:4'")

    def check_width(self, d: int) -> None:
        """An N:M pattern needs M to divide the number of inputs d."""
        if self.kind == "nm" and d % self.m != 0:
            raise InvalidInputError(
                f"pattern {self}: M={self.m} does not divide the input dimension d={d}"
            )
