"""Local-learning methods by name. Each method only describes aux nets, losses and per-step hooks."""
from __future__ import annotations

import difflib
from typing import Iterable, Mapping

from .base import ClassifierObjective, LocalMethod, LocalObjective, LocalPlan
from .dgl import DGL
from .e2e import E2E
from .greedy import Greedy
from .infopro import InfoPro
from .man import MAN
from .mlaan import MLAAN

METHODS: dict[str, type[LocalMethod]] = {cls.name: cls for cls in (E2E, Greedy, DGL, InfoPro, MAN, MLAAN)}


class UnknownOptionError(ValueError, TypeError):
    """A keyword argument no part of the model takes: a ValueError as before, and the TypeError timm's own
    models raise for an unexpected keyword argument."""


def reject_unknown_options(given: Iterable[str], accepted: Mapping[str, Iterable[str]], what: str) -> None:
    """Raise :class:`UnknownOptionError` for the names in ``given`` that no group of ``accepted`` lists.

    ``accepted`` maps who takes the names (``"method 'man'"``, ``"the CifarResNet backbone"``) to them; the
    one-line message names ``what`` was built, suggests the closest valid names among *all* groups
    (``difflib``, as the train config keys do) and lists every group.
    """
    valid = sorted({name for names in accepted.values() for name in names})
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    close = sorted({c for name in unknown for c in difflib.get_close_matches(name, valid, n=2, cutoff=0.6)})
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    groups = "; ".join(f"{who}: {', '.join(sorted(names)) or '(none)'}" for who, names in accepted.items())
    raise UnknownOptionError(f"{what} has no option {', '.join(map(repr, unknown))}{hint} (valid: {groups})")


def create_method(name: str, **options) -> LocalMethod:
    """Build a method's options object, rejecting unknown names and options with the list of valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown local-learning method {name!r}: choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    reject_unknown_options(options, {f"method {name!r}": cls.option_names()}, f"method {name!r}")
    return cls(**options)


__all__ = ["METHODS", "UnknownOptionError", "create_method", "reject_unknown_options", "LocalMethod", "LocalObjective", "LocalPlan", "ClassifierObjective",
           "E2E", "Greedy", "DGL", "InfoPro", "MAN", "MLAAN"]
