"""Which ``arch.tag`` names have published weights, and what a tag says about its model.

A model is published exactly when its folder ``hub_cards/<arch>.<tag>/`` exists with a ``config.json``
naming ``<arch>``; its Hub repository is ``<org>/<arch>.<tag>`` (:func:`~timm_local.hub.settings.hub_org`).
The model files call :func:`published_cfg_sources` while building ``default_cfgs``, so those tags get
their full ``hf_hub_id`` and, when the folder holds its ``model.safetensors`` (a clone of this
repository), timm's ``file`` source: ``create_model("<arch>.<tag>", pretrained=True)`` then loads the
committed weights with no network access (timm prefers ``file`` to ``hf_hub_id``), and downloads them
from the Hub everywhere else.

Tags are ``[<recipe>_]k<K>_<dataset>`` (e.g. ``k16_cifar10``); :func:`parse_tag` reads K and the dataset
back. Only the standard library is imported here: the model files import this module while
``timm_local`` itself is being imported.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .settings import hub_cards_dir, hub_org

_K_PART = re.compile(r"k(\d+)")
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class TagInfo:
    """What a pretrained tag names: the dataset (its last ``_`` part) and K (a ``k<K>`` part), if any."""

    dataset: Optional[str] = None
    num_local_modules: Optional[int] = None


def parse_tag(tag: Optional[str]) -> TagInfo:
    """``'k16_cifar10'`` → TagInfo('cifar10', 16); ``'svhn'`` → TagInfo('svhn', None); None → TagInfo()."""
    if not tag:
        return TagInfo()
    parts = tag.split("_")
    k = next((int(m.group(1)) for m in map(_K_PART.fullmatch, parts[:-1]) if m), None)
    return TagInfo(dataset=parts[-1], num_local_modules=k)


def tag_info(pretrained_cfg: Any) -> TagInfo:
    """:func:`parse_tag` of the tag a model entrypoint received as ``pretrained_cfg``.

    That is the tag string for ``create_model('<arch>.<tag>')``, a dict (``hf-hub:`` / ``local-dir:``
    read it from config.json) or a timm ``PretrainedCfg``; anything else has no tag.
    """
    if isinstance(pretrained_cfg, str):
        return parse_tag(pretrained_cfg)
    if isinstance(pretrained_cfg, dict):
        return parse_tag(pretrained_cfg.get("tag"))
    return parse_tag(getattr(pretrained_cfg, "tag", None))


def published_hub_ids(hub_dir: Optional[Path] = None) -> dict[str, str]:
    """``{'<arch>.<tag>': '<org>/<arch>.<tag>'}`` for every published folder in ``hub_dir`` (default hub_cards/).

    A folder whose name is not ``<arch>.<tag>`` or whose config.json is missing, unreadable or names
    another architecture is skipped with a warning (it would otherwise point a tag at the wrong weights).
    """
    root = Path(hub_dir) if hub_dir is not None else hub_cards_dir()
    if not root.is_dir():
        return {}
    published = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        arch, _, tag = folder.name.partition(".")
        architecture = _config_architecture(folder / "config.json")
        if not tag or architecture != arch:
            warnings.warn(f"{folder} is not a published model folder (expected hub_cards/<arch>.<tag>/ with a "
                          f"config.json whose architecture is <arch>, found {architecture!r}); skipped",
                          stacklevel=2)
            continue
        published[folder.name] = f"{hub_org()}/{folder.name}"
    return published


def published_tags(arch: str, hub_dir: Optional[Path] = None) -> dict[str, str]:
    """``{tag: hf_hub_id}`` of the published tags of one architecture."""
    return {name.partition(".")[2]: hub_id for name, hub_id in published_hub_ids(hub_dir).items()
            if name.partition(".")[0] == arch}


def published_cfg_sources(arch: str, hub_dir: Optional[Path] = None) -> dict[str, dict[str, str]]:
    """``{tag: {"hf_hub_id": ..., ["file": <hub_cards>/<arch>.<tag>/model.safetensors]}}`` of one architecture."""
    root = Path(hub_dir) if hub_dir is not None else hub_cards_dir()
    sources = {}
    for tag, hub_id in published_tags(arch, root).items():
        weights = root / f"{arch}.{tag}" / WEIGHTS_FILE
        sources[tag] = {"hf_hub_id": hub_id, **({"file": str(weights)} if weights.is_file() else {})}
    return sources


def _config_architecture(path: Path) -> Optional[str]:
    try:
        with open(path) as f:
            return json.load(f).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None
