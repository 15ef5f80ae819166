"""Where to cut a backbone's blocks into K gradient-isolated local modules (METHODS.md §2).

A split is written as ``cuts``: the index of the first block of each module after the first, a
strictly increasing tuple of K - 1 integers in [0, num_blocks - 1]. Module 0 always owns the stem;
``cuts[0] == 0`` makes module 0 the stem alone (InfoPro's ResNet-32 K=16 table). Module k owns
blocks ``cuts[k-1] .. cuts[k] - 1`` and the last module owns the rest plus the head.
"""
from __future__ import annotations

from typing import Sequence, Union

from .layout import BackboneLayout, FeatureProbe

SplitSpec = Union[None, str, Sequence[int]]


def resolve_split(layout: BackboneLayout, num_local_modules: int | None, split: SplitSpec,
                  probe: FeatureProbe) -> tuple[tuple[int, ...], str]:
    """Turn the user's ``num_local_modules`` / ``split`` into ``(cuts, kind)``.

    ``kind`` says where the cuts came from: 'paper' (a published table), 'balanced' (a published
    memory-balanced table, or measured balance when ``split='balanced'``), 'auto' (measured balance
    for a K without a table), 'even' or 'explicit'.

    * ``split=None``: the paper's table for this K when the backbone has one, else
      :func:`balanced_cuts` on measured activation memory.
    * ``split="balanced"``: the memory-balanced table (InfoPro*) when one exists, else
      :func:`balanced_cuts`.
    * ``split="even"``: equal block counts (the remainder goes to the earliest modules).
    * ``split=[b_1, ..., b_{K-1}]``: explicit cuts (first block index of modules 1..K-1).
    """
    n = layout.num_blocks
    if split is not None and not isinstance(split, str):
        cuts = tuple(int(c) for c in split)
        if num_local_modules is not None and num_local_modules != len(cuts) + 1:
            raise ValueError(f"split lists {len(cuts)} cuts, which makes {len(cuts) + 1} local modules, "
                             f"but num_local_modules={num_local_modules}; drop one of the two or make them agree")
        validate_cuts(cuts, n)
        return cuts, "explicit"
    k = 1 if num_local_modules is None else int(num_local_modules)
    paper = layout.paper_splits.get("paper", {})
    stem_only_table = k == n + 1 and k in paper and split in (None, "paper")
    if k < 1 or (k > n and not stem_only_table):
        raise ValueError(f"num_local_modules={k} is not possible for a backbone with {n} blocks: use "
                         f"1 <= K <= {n} (K = {n} puts one block in each module), or an explicit split "
                         f"such as [0, 1, ..., {n - 1}] to give the stem a module of its own")
    if split in (None, "paper"):
        if k in paper:
            return tuple(paper[k]), "paper"
        if split == "paper":
            raise ValueError(f"no published split for K={k} on this backbone (tables exist for K in "
                             f"{sorted(paper)}); use split=None for the automatic split")
        return balanced_cuts(probe, k), "auto"
    if split == "balanced":
        table = layout.paper_splits.get("balanced", {})
        return (tuple(table[k]) if k in table else balanced_cuts(probe, k)), "balanced"
    if split == "even":
        return even_cuts(n, k), "even"
    raise ValueError(f"unknown split {split!r}: use None, 'paper', 'balanced', 'even' or a list of "
                     f"block indices where modules 1..K-1 start")


def validate_cuts(cuts: Sequence[int], num_blocks: int) -> None:
    """Raise ValueError unless ``cuts`` is strictly increasing inside [0, num_blocks - 1]."""
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"split {list(cuts)} is not strictly increasing: list the index of the first "
                         f"block of each local module after the first, in order, e.g. [5, 10]")
    if cuts and (cuts[0] < 0 or cuts[-1] > num_blocks - 1):
        raise ValueError(f"split {list(cuts)} has a block index outside [0, {num_blocks - 1}]: the backbone "
                         f"has {num_blocks} blocks and the last module needs at least one")


def even_cuts(num_blocks: int, k: int) -> tuple[int, ...]:
    """Equal block counts per module; the first ``num_blocks % k`` modules get one block more."""
    base, extra = divmod(num_blocks, k)
    cuts, start = [], 0
    for i in range(k - 1):
        start += base + (1 if i < extra else 0)
        cuts.append(start)
    return tuple(cuts)


def balanced_cuts(probe: FeatureProbe, k: int) -> tuple[int, ...]:
    """Contiguous cuts minimising the largest module's activation memory (stem counted in module 0).

    Classic linear partition by dynamic programming over the measured per-block bytes of
    :func:`~timm_local.local.layout.probe_features`; ties prefer earlier cuts being later
    (smaller first modules). Every module gets at least one block.
    """
    costs = list(probe.block_bytes)
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def segment(i: int, j: int) -> int:  # blocks i..j-1, plus the stem for the first module
        return prefix[j] - prefix[i] + (probe.stem_bytes if i == 0 else 0)

    inf = float("inf")
    # best[m][j]: minimal max-cost splitting blocks 0..j-1 into m modules; arg[m][j]: start of the last one
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    arg = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for m in range(1, k + 1):
        for j in range(m, n + 1):
            for i in range(m - 1, j):
                cost = max(best[m - 1][i], segment(i, j))
                if cost <= best[m][j]:
                    best[m][j], arg[m][j] = cost, i
    cuts, j = [], n
    for m in range(k, 1, -1):
        j = arg[m][j]
        cuts.append(j)
    return tuple(reversed(cuts))
