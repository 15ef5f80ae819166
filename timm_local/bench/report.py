"""Ratios to E2E, the stdout table, the JSON file and the PNG plot of a benchmark run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

# (result key, ratio key, what it is). Ratios divide by the E2E result of the same group.
MEMORY_FIGURES = (
    ("peak_alloc_mb", "memory_ratio", "peak allocated memory of a whole step (GPU: max_memory_allocated; "
                                      "CPU: profiler allocation events), weights and optimizer state included"),
    ("saved_peak_mb", "saved_ratio", "peak bytes saved for backward (activations only, deterministic)"),
    ("rss_activation_mb", "rss_ratio", "CPU: resident memory added by the steps over the model + optimizer baseline"),
)


def time_key(result: dict) -> str:
    """Which time a ratio uses: synchronised wall time on GPU, process CPU time on the (shared) CPU."""
    return "step_time_s" if result["config"]["device"].startswith("cuda") else "cpu_time_per_step_s"


def group_key(config: dict) -> tuple:
    return tuple(config[k] for k in ("arch", "batch_size", "img_size", "precision", "channels_last", "compile",
                                     "device", "threads"))


def add_ratios(results: list[dict]) -> list[dict]:
    """Add ``memory_ratio``, ``saved_ratio``, ``rss_ratio`` and ``time_ratio`` (to E2E of the same group)."""
    e2e = {group_key(r["config"]): r for r in results
           if "error" not in r and r["config"]["method"] == "e2e" and not r["config"]["grad_checkpointing"]}
    for r in results:
        base = e2e.get(group_key(r["config"]))
        if base is None or "error" in r:
            continue
        for key, ratio, _ in MEMORY_FIGURES:
            if r.get(key) is not None and base.get(key):
                r[ratio] = r[key] / base[key]
        r["time_ratio"] = r[time_key(r)] / base[time_key(base)]
    return results


def _fmt(value: Optional[float], ratio: Optional[float] = None, digits: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ({ratio:.2f}x)" if ratio is not None else "")


def table(results: Sequence[dict]) -> str:
    """A markdown table: one row per configuration, ratios to the same group's E2E in brackets."""
    cpu = any(not r["config"]["device"].startswith("cuda") for r in results)
    head = ["config", "blocks per module", "peak alloc MiB", "saved MiB"]
    head += ["RSS +step MiB", "RSS peak MiB", "CPU s/step", "wall s/step"] if cpu else ["reserved MiB", "s/step"]
    head += ["img/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        c = r["config"]
        name = f"{c['arch']} bs{c['batch_size']} {c['precision']}: {r['label']}"
        if "error" in r:
            rows.append(f"| {name} | error: {r['error'].splitlines()[-1][:80] if r['error'] else '?'} |")
            continue
        cells = [name, "·".join(map(str, r["blocks_per_module"])),
                 _fmt(r.get("peak_alloc_mb"), r.get("memory_ratio")), _fmt(r.get("saved_peak_mb"), r.get("saved_ratio"))]
        if cpu:
            cells += [_fmt(r.get("rss_activation_mb"), r.get("rss_ratio")), _fmt(r.get("rss_peak_mb"), digits=0),
                      _fmt(r.get("cpu_time_per_step_s"), r.get("time_ratio"), 3), _fmt(r.get("step_time_s"), digits=3)]
        else:
            cells += [_fmt(r.get("peak_reserved_mb")), _fmt(r.get("step_time_s"), r.get("time_ratio"), 4)]
        cells.append(_fmt(r.get("images_per_s"), digits=0))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_json(path: Path, run: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1) + "\n")


def plot(path: Path, run: dict) -> None:
    """Memory vs K and time vs K per group: one line per method, E2E and E2E + GC as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in run["results"] if "error" not in r]
    groups = list(dict.fromkeys(group_key(r["config"]) for r in results))
    cpu = any(not r["config"]["device"].startswith("cuda") for r in results)
    panels = [("peak_alloc_mb", "peak allocated (MiB)")]
    panels += [("rss_activation_mb", "resident memory added by the step (MiB)")] if cpu else []
    panels += [("time", "time per step (s)")]
    fig, axes = plt.subplots(len(groups), len(panels), figsize=(5.2 * len(panels), 4.2 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups):
        members = [r for r in results if group_key(r["config"]) == group]
        ks = sorted({r["num_local_modules"] for r in members if r["config"]["method"] != "e2e"}) or [1, 2]
        for ax, (key, ylabel) in zip(row, panels):
            _panel(ax, members, key, ylabel, ks)
        c = members[0]["config"]
        row[0].set_title(f"{c['arch']}, batch {c['batch_size']}, {c['img_size']}px, {c['precision']}"
                         f"{', channels_last' if c['channels_last'] else ''} on {members[0]['device_name'][:40]}",
                         fontsize=9, loc="left")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(run["command"], fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax, members: list[dict], key: str, ylabel: str, ks: list[int]) -> None:
    def value(r):
        return r.get(time_key(r)) if key == "time" else r.get(key)

    styles = {"e2e": ("black", "-"), "e2e+gc": ("grey", "--")}
    for r in members:
        if r["config"]["method"] == "e2e" and value(r) is not None:
            color, style = styles[r["series"]]
            ax.axhline(value(r), color=color, linestyle=style, linewidth=1.2, label=r["series"])
    for series in dict.fromkeys(r["series"] for r in members if r["config"]["method"] != "e2e"):
        points = sorted((r["num_local_modules"], value(r)) for r in members
                        if r["series"] == series and value(r) is not None)
        if points:
            ax.plot(*zip(*points), marker="o", markersize=4, linewidth=1.2, label=series)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlim(min(ks) / 1.25, max(ks) * 1.25)
    ax.set_xlabel("K (local modules)")
    cpu_time = key == "time" and not members[0]["config"]["device"].startswith("cuda")
    ax.set_ylabel("CPU time per step (s)" if cpu_time else ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
