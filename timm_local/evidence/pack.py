"""Part 3: export the finished runs with the hub export, and pack everything into at most 8 files.

Contract (the device tool returns at most 8 files of at most 16 MiB, 64 MiB in all, from ``OUT_DIR``):
- ``OUT_DIR/log.txt`` and ``OUT_DIR/evidence.json`` are written by the CLI as it goes;
- :func:`pack_bench` writes ``bench.tar.gz`` (part 1's JSON, PNG and log files);
- :func:`pack_runs` writes ``runs.tar.gz``: every run's ``summary.csv``, ``results.json``, ``args.yaml``
  and log, the sweep's resolved configs and table, and the sweep file (small: it is rewritten during
  training, so a command killed mid-training still returns the finished epochs' rows);
- :func:`export_runs` runs the hub export (``python -m timm_local.hub export``'s function) for every finished run;
- :func:`pack_checkpoints` puts the exported Hub folders, then the ``last.pth.tar`` of unfinished runs
  (resumable with ``--resume``), into at most :data:`CHECKPOINT_FILES` tar volumes of at most
  :data:`MAX_FILE_BYTES` each, and returns what did not fit.
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

MiB = 1 << 20
MAX_FILE_BYTES = 15 * MiB  # under the tool's 16 MiB per file, leaving room for tar headers
CHECKPOINT_FILES = 4  # 8 files back, minus log.txt, evidence.json, bench.tar.gz and runs.tar.gz
CHECKPOINT_BYTES = 56 * MiB  # 64 MiB back in all, minus a margin for the other four files
TAR_OVERHEAD = 64 * 1024  # bytes counted per item for tar headers and padding
RUN_FILES = ("summary.csv", "results.json", "args.yaml")


def _write_tar(path: Path, members: Iterable[tuple[Path, str]], gzip: bool) -> Path:
    """Write ``(file or folder, name in the archive)`` pairs to ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz" if gzip else "w") as tar:
        for source, name in members:
            tar.add(source, arcname=name)
    tmp.replace(path)
    return path


def pack_bench(bench_dir: Path, out_dir: Path) -> Path:
    """``out_dir/bench.tar.gz`` from every file of part 1's folder."""
    return _write_tar(out_dir / "bench.tar.gz", [(f, f"bench/{f.name}") for f in sorted(bench_dir.glob("*"))
                                                 if f.is_file()], gzip=True)


def pack_runs(sweep_output: Path, extra: Sequence[Path], out_dir: Path) -> Path:
    """``out_dir/runs.tar.gz``: the runs' small files, logs, resolved configs, table, and ``extra`` files."""
    members = [(f, f"runs/{f.relative_to(sweep_output)}") for name in RUN_FILES
               for f in sorted(sweep_output.glob(f"*/{name}"))]
    for folder in ("logs", ".configs"):
        members += [(f, f"runs/{folder}/{f.name}") for f in sorted((sweep_output / folder).glob("*")) if f.is_file()]
    members += [(f, f"runs/{f.name}") for f in (sweep_output / "sweep.md", sweep_output / "sweep.csv") if f.is_file()]
    members += [(f, f.name) for f in extra if f.is_file()]
    return _write_tar(out_dir / "runs.tar.gz", members, gzip=True)


def export_runs(runs: Sequence[tuple[Path, str]], hub_dir: Path, reference_run: Optional[Path]) -> dict[str, str]:
    """Export each ``(run folder, hub name)`` with the hub export, in this process; ``{hub name: 'ok' or the error}``.

    One failing export (reported as its error line) does not stop the others.
    """
    from ..hub.export import export_run

    results = {}
    for folder, name in runs:
        try:
            export_run(folder, name=name, hub_dir=hub_dir, reference_run=reference_run)
            results[name] = "ok"
        except Exception as error:  # reported in evidence.json; the other runs still get exported
            results[name] = f"{type(error).__name__}: {error}"
    return results


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def pack_checkpoints(items: Sequence[tuple[Path, str]], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Pack ``(file or folder, name in the archive)`` items, in order, into ``checkpoints-<i>.tar`` volumes.

    Each item goes into the first volume with room (first fit, in the given order: exported folders
    before partial checkpoints). Returns the volumes written and the names of the items left out.
    """
    volumes: list[list[tuple[Path, str]]] = []
    sizes: list[int] = []
    left_out = []
    for path, name in items:
        size = _size(path) + TAR_OVERHEAD
        slot = next((i for i, used in enumerate(sizes) if used + size <= MAX_FILE_BYTES), None)
        if slot is None and len(volumes) < CHECKPOINT_FILES and size <= MAX_FILE_BYTES:
            volumes.append([])
            sizes.append(0)
            slot = len(volumes) - 1
        if slot is None or sum(sizes) + size > CHECKPOINT_BYTES:
            left_out.append(name)
            continue
        volumes[slot].append((path, name))
        sizes[slot] += size
    written = [_write_tar(out_dir / f"checkpoints-{i + 1}.tar", members, gzip=False)
               for i, members in enumerate(volumes)]
    return written, left_out
