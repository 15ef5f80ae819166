"""λ weights of the InfoPro local objective per module (METHODS.md §4.1, §5, §9 B6)."""
from __future__ import annotations


def module_index_ratio(k: int, num_modules: int) -> float:
    """InfoPro's r(k) = k / (K − 2) for K > 2, else 0 (k = 0 .. K − 2 indexes the aux nets)."""
    return k / (num_modules - 2) if num_modules > 2 else 0.0


def stage_index_ratio(next_block_stage: int, num_modules: int) -> float:
    """MAN's r = s_next / (K − 2) with s_next the stage of the next module's first block, clamped to [0, 1].

    ``num_modules`` is the paper's K (:func:`paper_module_count`). The reference does not clamp and extrapolates (negative weights) for K = 3, 4 (§9 B6).
    """
    if num_modules <= 2:
        return 0.0
    return min(max(next_block_stage / (num_modules - 2), 0.0), 1.0)


def paper_module_count(num_modules: int, num_blocks: int) -> int:
    """The K that MAN's and MLAAN's tables name a split by (the K of their stage rule's K − 2).

    With one block per local module their code counts the stem as a module of its own: ResNet-32's
    "K=16" holds 15 modules (divisor 14), ResNet-110's "K=55" holds 54 (divisor 53). Every other split
    (InfoPro's tables, whose R32 K=16 already has the stem alone in module 0) is named by its module count.
    """
    return num_modules + 1 if num_modules == num_blocks else num_modules


def interpolate(weights: tuple[float, float], r: float) -> float:
    """λ(r) = w_first · (1 − r) + w_last · r."""
    first, last = weights
    return first * (1.0 - r) + last * r
