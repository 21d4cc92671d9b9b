"""Linear assignment: SciPy's solver (maximising) and a warm-started solver for repeated solves.

The warm-started solver keeps, for each key, the previous assignment σ and column potentials v
(dual variables). Given a new score matrix S it first tries to prove that σ is still optimal by
finding potentials with

    S[i, σ(i)] − v[σ(i)] + v[j] ≥ S[i, j]    for all i, j,

i.e. a feasible dual solution u_i = S[i, σ(i)] − v[σ(i)] that is complementary-slack with σ; by
weak duality no assignment then scores more than σ. The potentials are found by Bellman–Ford
relaxation started from the previous ones (a longest-path problem on the columns that has a
solution exactly when σ is optimal), with a work budget; a positive 2-swap or an exhausted budget
falls back to a cold solve. So a warm result is never worse than a cold one.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

# Slack allowed in the optimality certificate, relative to the largest |score|: a certified
# assignment is optimal to within n · REL_TOL · max|S|.
REL_TOL = 1e-11


def linear_assignment(score: ArrayLike, maximize: bool = True) -> np.ndarray:
    """Column assigned to each row of a square matrix, maximising (or minimising) the total."""
    score = np.asarray(score, dtype=np.float64)
    _check_square(score)
    rows, cols = linear_sum_assignment(score, maximize=maximize)
    return cols


def certify(score: np.ndarray, cols: np.ndarray, potentials: np.ndarray | None = None,
            max_work: float | None = None, tol: float | None = None) -> tuple[bool, np.ndarray]:
    """Whether `cols` maximises `score`, proven by dual potentials; also the potentials reached.

    Relaxation starts from `potentials` (zeros when None) and stops after `max_work` row
    scans (default n², enough for any matrix). On failure the returned potentials are the
    partial result, a better start for the next attempt.
    """
    score = np.asarray(score, dtype=np.float64)
    n = score.shape[0]
    if tol is None:
        tol = REL_TOL * max(float(np.abs(score).max(initial=0.0)), 1e-300)
    budget = float(n) * n if max_work is None else max_work
    v = np.zeros(n) if potentials is None else np.array(potentials, dtype=np.float64)
    matched = score[np.arange(n), cols]
    row_of_col = np.empty(n, dtype=np.int64)
    row_of_col[cols] = np.arange(n)
    rows = np.arange(n)
    work = 0.0
    swap_checked = False
    while work < budget:
        # Best improvement of each column's potential through any row whose column moved.
        h = v[cols[rows]] - matched[rows]
        cand = (score[rows] + h[:, None]).max(axis=0)
        work += len(rows)
        changed = np.flatnonzero(cand > v + tol)
        if changed.size == 0:
            return True, v
        v[changed] = cand[changed]
        rows = row_of_col[changed]
        if not swap_checked:
            swap_checked = True
            if _improving_swap(score, cols, matched, tol):
                return False, v
    return False, v


def _improving_swap(score: np.ndarray, cols: np.ndarray, matched: np.ndarray, tol: float) -> bool:
    """Whether exchanging the columns of two rows raises the total (a cheap non-optimality test)."""
    m = score[:, cols]  # m[i, k] = score of row i taking row k's column
    gain = m + m.T
    gain -= matched[:, None]
    gain -= matched[None, :]
    return bool(gain.max() > tol)


def _check_square(score: np.ndarray) -> None:
    if score.ndim != 2 or score.shape[0] != score.shape[1]:
        raise ValueError(f"assignment needs a square matrix, got shape {score.shape}")
    if not np.isfinite(score).all():
        raise ValueError("assignment scores must be finite")


@dataclass
class _Warm:
    cols: np.ndarray
    potentials: np.ndarray | None
    backoff: int = 0  # after failed certificates, solve this many times without trying one
    skip: int = 0


class WarmLAP:
    """Maximising assignment solver that reuses each key's last solution while it stays optimal.

    A failed certificate costs about half a solve; when a key's certificates keep failing (the
    matrix changes in every call, as in STE with Adam moving every weight), the next 1, 2, 4 ...
    up to `max_backoff` solves of that key skip the attempt; a success halves the back-off. (In
    STE-MM on digits about one certificate in fourteen succeeded, each failure costing half a solve.)
    """

    def __init__(self, work_factor: float = 8.0, min_size: int = 128, max_backoff: int = 8):
        self.work_factor = work_factor
        self.min_size = min_size  # below this a cold solve is cheaper than a certificate
        self.max_backoff = max_backoff
        self.solved = 0
        self.certified = 0
        self.attempts = 0  # certificates tried
        self._state: dict[Hashable, _Warm] = {}

    def solve(self, key: Hashable, score: ArrayLike, certify_first: bool = True) -> np.ndarray:
        """Column assigned to each row, maximising the total; no solve when provably unchanged.

        `certify_first=False` solves cold but still records the solution (for callers who know
        the previous one is unlikely to remain optimal).
        """
        score = np.asarray(score, dtype=np.float64)
        _check_square(score)
        n = score.shape[0]
        prev = self._state.get(key)
        backoff, skip = (prev.backoff, prev.skip) if prev is not None else (0, 0)
        if certify_first and prev is not None and prev.cols.shape[0] == n and n >= self.min_size:
            if prev.skip > 0:
                skip -= 1
            else:
                self.attempts += 1
                ok, v = certify(score, prev.cols, prev.potentials, max_work=self.work_factor * n)
                prev.potentials = v
                if ok:
                    self.certified += 1
                    prev.backoff //= 2
                    return prev.cols.copy()
                backoff = skip = min(max(2 * prev.backoff, 1), self.max_backoff)
        cols = linear_assignment(score)
        self.solved += 1
        # Potentials are recovered lazily by the next certificate, starting from these.
        self._state[key] = _Warm(cols, None if prev is None else prev.potentials, backoff, skip)
        return cols.copy()

    def reset(self) -> None:
        """Forget all previous solutions."""
        self._state.clear()
        self.solved = self.certified = self.attempts = 0


def head_assignment(head_score: np.ndarray | None, member_scores: list[np.ndarray], heads: int
                    ) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Two-level assignment of attention heads (Verma & Elbayad 2024): a LAP on each pair of
    heads' block of every member's score gives that pair's best within-head matching and its
    value; a LAP over heads on the summed values (plus `head_score`, for tensors the head
    permutation moves directly) picks the heads. This maximises the total exactly, since the
    within-head matchings of different head pairs are independent.

    Returns the head assignment, each member's flat assignment ``σ[h]·b + τ_h(i)``, and the
    total score."""
    total = np.zeros((heads, heads)) if head_score is None else np.array(head_score, dtype=float)
    within: list[np.ndarray] = []
    for score in member_scores:
        score = np.asarray(score, dtype=np.float64)
        b = score.shape[0] // heads
        blocks = score.reshape(heads, b, heads, b)
        best = np.empty((heads, heads, b), dtype=np.int64)
        for h in range(heads):
            for g in range(heads):
                block = blocks[h, :, g, :]
                cols = linear_assignment(block)
                best[h, g] = cols
                total[h, g] += block[np.arange(b), cols].sum()
        within.append(best)
    sigma = linear_assignment(total)
    flat = []
    for score, best in zip(member_scores, within, strict=True):
        b = np.asarray(score).shape[0] // heads
        flat.append(np.concatenate([sigma[h] * b + best[h, sigma[h]] for h in range(heads)])
                    if heads else np.zeros(0, dtype=np.int64))
    return sigma, flat, float(total[np.arange(heads), sigma].sum())
