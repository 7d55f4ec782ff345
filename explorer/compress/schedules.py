"""Sparsity schedules: how a pruning target is reached over steps or rounds. Pure functions of numbers,
shared by unstructured and channel pruning."""

from __future__ import annotations


def cubic_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t in [t0, t0 + n dt]."""
    if step <= t0:
        return s_i
    if step >= t0 + n * dt:
        return s_f
    return s_f + (s_i - s_f) * (1 - (step - t0) / (n * dt)) ** 3


def geometric_sparsity(target: float, r: int, rounds: int) -> float:
    """Iterative pruning: after round r of `rounds`, the same fraction of the remaining weights has gone each
    round, so 1 - (1 - target)^(r / rounds) of them are pruned."""
    s: float = 1 - (1 - target) ** (r / rounds)  # a float: 1 - target is never negative
    return s
