"""Bad input a new user tries gets one line naming the problem and the fix (docs/ERRORS.md lists them).

Data errors (corrupt images, cache location) are in tests/test_data.py; these are the model-side cases
and the hints that name commands of other tools.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timm_local.data import get_dataset_spec, layout_hint, list_datasets
from timm_local.data.source import download_command

REPO = Path(__file__).parents[1]


# ------------------------------------------------------------------------------------ Hub hints


def _hf_download_help() -> str:
    """``hf download --help`` of the installed huggingface_hub (the CLI our hints tell users to run)."""
    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or shutil.which("hf")
    assert hf is not None, "huggingface_hub's `hf` command is not installed next to this Python"
    return subprocess.run([hf, "download", "--help"], capture_output=True, text=True, check=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent),
                               "NO_COLOR": "1", "COLUMNS": "200"}).stdout


def test_download_hints_are_commands_the_installed_hub_ships():
    help_text = _hf_download_help()
    for name in list_datasets():
        spec = get_dataset_spec(name)
        command = download_command(spec)
        assert f"`{command}`" in layout_hint(spec)
        words = command.split()
        assert words[:3] == ["hf", "download", spec.hub_id]
        for option in (w for w in words if w.startswith("--")):
            assert option in help_text, (option, command)
    assert "--revision 49ae7f9" in download_command(get_dataset_spec("stl10"))  # the pinned mirror


def test_no_hint_names_the_removed_huggingface_cli():
    """huggingface_hub 1.0 removed ``huggingface-cli``; no code or doc of ours may tell users to run it."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f for f in files if f.endswith((".py", ".md", ".yaml", ".toml"))
                 and re.search(r"huggingface-cli\s+(download|login|upload)", (REPO / f).read_text())]
    assert offenders == []
