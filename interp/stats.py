"""Intervals and paired tests for rates measured on the same prompts (refusal rates, accuracies).

- ``wilson_interval(k, n)``: the Wilson score interval of a binomial proportion (Wilson 1927), 95% by default;
  exact ends at k = 0 and k = n.
- ``mcnemar_exact_p(b, c)``: the two-sided exact McNemar test (McNemar 1947) of two conditions on the same items
  from their discordant counts.

Validated by hand-worked cases and the closed forms at the ends in ``tests/unit/test_safety_dose_response.py``.
"""

from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (default 95%: ``z`` = Φ⁻¹(0.975))::

        (p̂ + z²/2n ± z √(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of prompts), got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, n={n}] (the number refused), got {k!r}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact ends (the roots are 0 and 1 there)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: ``b``, ``c`` = discordant pair counts
    (e.g. refused clean but not ablated, and the reverse); ``min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)])``."""
    if min(b, c) < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)
