"""Publishing settings, each in one place.

* The Hub organisation: ``timm-local``, overridden by the environment variable ``TIMM_LOCAL_HUB_ORG``.
* The folder of published models: ``hub_cards/`` at the repository root (next to the ``timm_local``
  package), overridden by ``TIMM_LOCAL_HUB_CARDS``.
* Weights larger than :data:`MAX_COMMITTED_WEIGHTS_MB` are written but not committed to git (export adds
  them to ``hub_cards/.gitignore``): CIFAR-size ResNets are a few MB, ImageNet models hundreds.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HUB_ORG = "timm-local"
MAX_COMMITTED_WEIGHTS_MB = 20.0


def hub_org() -> str:
    """The Hub organisation (or user) that owns the published repositories."""
    return os.environ.get("TIMM_LOCAL_HUB_ORG") or DEFAULT_HUB_ORG


def hub_cards_dir() -> Path:
    """The folder holding one sub-folder per published model, ``hub_cards/<arch>.<tag>/``."""
    override = os.environ.get("TIMM_LOCAL_HUB_CARDS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "hub_cards"
