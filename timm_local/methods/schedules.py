"""λ weights of the InfoPro local objective per module (METHODS.md §4.1, §5, §9 B6)."""
from __future__ import annotations


def module_index_ratio(k: int, num_modules: int) -> float:
    """InfoPro's r(k) = k / (K − 2) for K > 2, else 0 (k = 0 .. K − 2 indexes the aux nets)."""
    return k / (num_modules - 2) if num_modules > 2 else 0.0


def stage_index_ratio(next_block_stage: int, num_modules: int) -> float:
    """MAN's r = s_next / (K − 2) with s_next the stage of the next module's first block, clamped to [0, 1].

    The reference does not clamp and extrapolates (negative weights) for K = 3, 4 (§9 B6).
    """
    if num_modules <= 2:
        return 0.0
    return min(max(next_block_stage / (num_modules - 2), 0.0), 1.0)


def interpolate(weights: tuple[float, float], r: float) -> float:
    """λ(r) = w_first · (1 − r) + w_last · r."""
    first, last = weights
    return first * (1.0 - r) + last * r
