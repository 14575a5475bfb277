"""When two computations of the same numbers agree: one rounding rule for every numerical check.

Every check the pages show and every numerical test returns a `CheckResult` whose tolerance comes from
`rounding_tolerance` (float eps × √operations × the size of the numbers) — never a constant tuned on one CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2⁻²³ ≈ 1.19e-7: float32's relative spacing at 1
EPS64 = float(np.finfo(np.float64).eps)  # 2⁻⁵² ≈ 2.22e-16
SAFETY = 4.0  # c in c · eps · √n · max|reference|; see `rounding_tolerance`


def rounding_tolerance(reference, reduction_length: int = 1, eps: float = EPS32) -> float:
    """How far two correct computations of `reference` may drift apart by rounding alone.

    tolerance = c · eps · √n · max|reference|, with n = `reduction_length`, the number of rounded
    operations summed along the path (a dot product's length; 1 for one elementwise operation; 0 for a
    copy or a lookup, which must then match exactly).

    Why this shape: each float operation rounds with a relative error of at most eps/2. A sum of n terms
    taken in any order (BLAS kernels block, reorder and fuse differently from one CPU to the next) lets
    those errors random-walk: the typical drift is eps · √n times the size of the numbers summed (the
    worst case, n · eps, needs every rounding to go the same way). `max|reference|` is the largest
    entry of the whole compared array, not the entry itself, so an entry that is near 0 by cancellation
    still gets the tolerance its siblings earn. c = 4 covers both computations' drifts (√2) and the
    tail of the largest of many entries (about 3σ): float32 dot products of 1 to 200,000 random terms,
    summed by BLAS or strictly left to right, stay below a tenth of the tolerance. A real mistake of
    one part in a thousand stays above it: about 10× above for n = 50,000, 2,000× for n = 1.
    """
    n = int(reduction_length)
    if n < 0:
        raise ValueError("reduction_length must be 0 or more (0 = an exact copy).")
    values = np.abs(np.asarray(reference, dtype=np.float64))
    scale = float(values.max()) if values.size else 0.0
    return SAFETY * eps * math.sqrt(n) * scale


def float32_tolerance(reference, reduction_length: int = 1) -> float:
    """`rounding_tolerance` for float32 arithmetic (the models' precision)."""
    return rounding_tolerance(reference, reduction_length, EPS32)


def float64_tolerance(reference, reduction_length: int = 1) -> float:
    """`rounding_tolerance` for float64 arithmetic (our own reference maths)."""
    return rounding_tolerance(reference, reduction_length, EPS64)


def log_softmax_tolerance(
    logits, reduction_length: int, n_classes: int | None = None, eps: float = EPS32
) -> float:
    """Tolerance for log softmax(z) over V = `n_classes` (default: z's last axis) when the logits z
    came out of reductions of `reduction_length`.

    A logit off by Δ moves its log-probability by at most 2Δ (the logit itself and the log-sum-exp);
    the log-sum-exp's own sum runs over V terms of size at most 1 and adds its rounding.
    """
    logits = np.asarray(logits)
    if n_classes is None:
        n_classes = logits.shape[-1] if logits.ndim else 1
    return 2.0 * rounding_tolerance(logits, reduction_length, eps) + rounding_tolerance(1.0, n_classes, eps)


def softmax_tolerance(
    logits, reduction_length: int, n_classes: int | None = None, eps: float = EPS32
) -> float:
    """Tolerance for the probabilities softmax(z): |Δp| = p·|e^(Δ log p) − 1| ≈ p·|Δ log p| ≤ |Δ log p|.

    The same bound covers Σ_j |Δp_j| (the p_j sum to 1), so a weighted sum Σ_j p_j·v_j moves by at
    most this times max|v|, plus the rounding of its own sum.
    """
    return log_softmax_tolerance(logits, reduction_length, n_classes, eps)


@dataclass(frozen=True)
class CheckResult:
    """One numerical check: the largest difference found and how much rounding can explain."""

    error: float  # max |ours − theirs| (NaN when either side holds NaN)
    tolerance: float  # from `rounding_tolerance`: differences up to this are float rounding

    @property
    def passed(self) -> bool:
        return bool(self.error <= self.tolerance)  # False for NaN

    @property
    def ratio(self) -> float:
        """error / tolerance: below 1 passes (inf when an exact check finds any difference)."""
        if self.error == 0:
            return 0.0
        return self.error / self.tolerance if self.tolerance > 0 else math.inf

    def summary(self) -> str:
        """Short text for a page: 'within rounding (≤ 3.1e-05)' or 'FAILED: above 3.1e-05'."""
        if self.passed:
            return "exact" if self.tolerance == 0 else f"within rounding (≤ {self.tolerance:.1e})"
        return f"FAILED: above {self.tolerance:.1e}" if self.tolerance > 0 else "FAILED: must be exact"

    def __str__(self) -> str:
        return f"max |difference| {self.error:.3e} vs tolerance {self.tolerance:.3e}"


def check_close(
    ours,
    theirs,
    reduction_length: int = 1,
    reference=None,
    eps: float = EPS32,
) -> CheckResult:
    """Compare two arrays of the same shape under `rounding_tolerance`.

    `reference` sets the magnitude (default: `theirs`): pass the numbers the rounding happened on when
    they are larger than the result — e.g. the logits for log-probabilities, or ‖q‖·‖k‖ for q·k.
    """
    reference = theirs if reference is None else reference
    return check_within(ours, theirs, rounding_tolerance(reference, reduction_length, eps))


def check_within(ours, theirs, tolerance: float) -> CheckResult:
    """Compare two arrays of the same shape against a tolerance built from the rules above."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare shapes {a.shape} and {b.shape}.")
    diff = np.abs(a - b)
    return CheckResult(error=float(diff.max()) if diff.size else 0.0, tolerance=float(tolerance))


def worst(checks: Iterable[CheckResult]) -> CheckResult:
    """The check closest to (or furthest past) its tolerance, for one line that covers many."""
    checks = list(checks)
    if not checks:
        raise ValueError("worst() needs at least one check.")
    return max(checks, key=lambda c: (math.isnan(c.error), c.ratio, c.error))
