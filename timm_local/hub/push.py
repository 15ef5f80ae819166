"""Upload an exported folder to the Hub: ``create_repo(exist_ok=True)`` then ``upload_folder``.

The token comes from the usual places (``HF_TOKEN``, or the file ``hf auth login`` writes); without one
``push`` stops before any network call. ``dry_run`` lists what would be uploaded and touches no network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import huggingface_hub

from .settings import hub_org

REQUIRED_FILES = ("config.json", "model.safetensors", "README.md")


def folder_files(folder: Union[str, Path]) -> list[str]:
    """The files ``push`` uploads: every regular file under ``folder`` except hidden ones, as relative paths."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [f for f in files if not any(part.startswith(".") for part in f.split("/"))]


def default_repo_id(folder: Union[str, Path]) -> str:
    """``<org>/<folder name>``, e.g. ``timm-local/resnet32_man.k16_cifar10``."""
    return f"{hub_org()}/{Path(folder).resolve().name}"


def push_folder(folder: Union[str, Path], repo_id: Optional[str] = None, *, dry_run: bool = False,
                private: bool = False, commit_message: Optional[str] = None) -> list[str]:
    """Upload ``folder`` to ``repo_id`` (default :func:`default_repo_id`); return the uploaded files.

    Raises:
        FileNotFoundError: a file of the Hub layout is missing (e.g. ImageNet weights not kept locally).
        RuntimeError: no Hugging Face token (only when not ``dry_run``).
    """
    folder = Path(folder)
    repo_id = repo_id or default_repo_id(folder)
    files = folder_files(folder) if folder.is_dir() else []
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: export the run first "
                                f"(python -m timm_local.hub export <run-dir> --hub-dir {folder.parent})")
    if dry_run:
        return files
    token = huggingface_hub.get_token()
    if token is None:
        raise RuntimeError("no Hugging Face token found: run `hf auth login`, or set the HF_TOKEN environment "
                           "variable to a token with write access to the organisation "
                           "(https://huggingface.co/settings/tokens)")
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), allow_patterns=files,
                      commit_message=commit_message or f"Upload {folder.name} with timm_local")
    return files
