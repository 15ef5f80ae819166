"""The markdown table of published models, generated from hub_cards/ (one row per published folder).

Each row reads the ``timm_local`` block of the folder's card (written by :mod:`timm_local.hub.card`):
the measured top-1 and, when a benchmark was given at export, peak training memory vs E2E.
``update_readme`` replaces the table between the two marker lines of a README.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from huggingface_hub import ModelCard

from .registry import published_hub_ids
from .settings import hub_cards_dir

START = "<!-- timm_local.hub table: start -->"
END = "<!-- timm_local.hub table: end -->"
NOT_MEASURED = "not yet measured"


def published_table(hub_dir: Optional[Union[str, Path]] = None) -> str:
    """A markdown table: model (linked to its Hub page), dataset, method, K, top-1, memory vs E2E."""
    root = Path(hub_dir) if hub_dir is not None else hub_cards_dir()
    lines = ["| model | dataset | method | K | top-1 (%) | peak training memory vs E2E |",
             "|---|---|---|---|---|---|"]
    for name, repo_id in published_hub_ids(root).items():
        figures = ModelCard.load(root / name / "README.md").data.to_dict().get("timm_local") or {}
        top1 = figures.get("top1")
        lines.append(f"| [`{name}`](https://huggingface.co/{repo_id}) | {figures.get('dataset', '?')} "
                     f"| {figures.get('method', '?')} | {figures.get('num_local_modules', '?')} "
                     f"| {NOT_MEASURED if top1 is None else f'{top1:.2f}'} | {_memory(figures)} |")
    if len(lines) == 2:
        return "_No published models yet._"
    return "\n".join(lines)


def _memory(figures: dict) -> str:
    peak, e2e = figures.get("peak_memory_mb"), figures.get("e2e_peak_memory_mb")
    if peak is None or e2e is None:
        return NOT_MEASURED
    context = ", ".join(str(part) for part in (figures.get("memory_device"),
                                               figures.get("memory_batch_size") and
                                               f"batch {figures['memory_batch_size']}") if part)
    return f"{100 * (peak / e2e - 1):+.1f}% ({peak:.0f} vs {e2e:.0f} MB{', ' + context if context else ''})"


def update_readme(readme: Union[str, Path], table: str) -> None:
    """Replace the text between the START and END marker lines of ``readme`` with ``table``."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme} has no table markers: add the two lines\n{START}\n{END}\nwhere the table goes")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
