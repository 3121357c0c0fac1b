"""Sampled audits: which slices to re-execute, and what a sample of that size would catch."""

from __future__ import annotations

import math
import random

from cats.errors import CatsError


def choose(total: int, sample: int | None, fraction: float | None, seed: int | None) -> tuple[list[int], int | None]:
    """Indices to check (sorted) and the seed used; every index when neither sample nor fraction is set."""
    if sample is None and fraction is None:
        return list(range(total)), None
    if sample is not None and fraction is not None:
        raise CatsError("give --sample or --fraction, not both")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise CatsError(f"--fraction must be in (0, 1], not {fraction}")
        sample = max(1, math.ceil(total * fraction))
    assert sample is not None
    if sample < 1:
        raise CatsError(f"--sample must be at least 1, not {sample}")
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    return sorted(random.Random(seed).sample(range(total), min(sample, total))), seed


def detection(total: int, checked: int, corrupted: int) -> float:
    """P(a uniform sample of `checked` of `total` slices hits at least one of `corrupted`): hypergeometric."""
    if corrupted <= 0:
        return 0.0
    if checked + corrupted > total:
        return 1.0
    return 1.0 - math.comb(total - corrupted, checked) / math.comb(total, checked)


def detection_table(total: int, checked: int) -> dict[str, float]:
    """Catch probabilities for 1 corrupted slice and for 1%, 5% and 10% of them."""
    levels = sorted({1, *(max(1, math.ceil(total * p)) for p in (0.01, 0.05, 0.10))})
    return {str(m): round(detection(total, checked, m), 6) for m in levels if m <= total}
