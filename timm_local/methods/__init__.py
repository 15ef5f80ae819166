"""Local-learning methods by name. Each method only describes aux nets, losses and per-step hooks."""
from __future__ import annotations

from .base import ClassifierObjective, LocalMethod, LocalObjective, LocalPlan
from .dgl import DGL
from .e2e import E2E
from .greedy import Greedy
from .infopro import InfoPro
from .man import MAN
from .mlaan import MLAAN

METHODS: dict[str, type[LocalMethod]] = {cls.name: cls for cls in (E2E, Greedy, DGL, InfoPro, MAN, MLAAN)}


def create_method(name: str, **options) -> LocalMethod:
    """Build a method's options object, rejecting unknown names and options with the list of valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown local-learning method {name!r}: choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    unknown = sorted(set(options) - set(cls.option_names()))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(cls.option_names()) or '(none)'}")
    return cls(**options)


__all__ = ["METHODS", "create_method", "LocalMethod", "LocalObjective", "LocalPlan", "ClassifierObjective",
           "E2E", "Greedy", "DGL", "InfoPro", "MAN", "MLAAN"]
