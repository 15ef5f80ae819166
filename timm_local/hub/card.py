"""The model card (README.md of a Hub folder), from the run, the counted model stats and a memory benchmark.

Rule: the card states only numbers the run, the stats counter or the benchmark produced; every field
without a measurement says "not yet measured" (or "not recorded" for a setting the run did not save).

YAML front matter: ``library_name: timm``, the real Hub dataset id, tags, a ``model-index`` with the
measured top-1 of the exported weights, and a ``timm_local`` block with the figures the published-models
table reads (:mod:`timm_local.hub.table`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.specs import get_dataset_spec
from ..local import LocalNet
from .citations import DATASETS, METHODS, Reference, backbone_reference
from .memory import MemoryComparison
from .run import Run
from .stats import ModelStats

NOT_MEASURED = "not yet measured"
NOT_RECORDED = "not recorded"


def build_card(name: str, repo_id: str, model: LocalNet, run: Run, stats: ModelStats,
               memory: Optional[MemoryComparison] = None, reference: Optional[Run] = None) -> ModelCard:
    """The card of ``model`` (rebuilt from ``run``) published as ``repo_id``.

    ``reference`` is the E2E run of the same recipe (its final top-1 is stated next to this model's:
    the gap is what local learning costs at that recipe).
    """
    data = _metadata(name, model, run, memory, reference)
    body = "\n\n".join([
        f"# Model card for {name}",
        _description(model, run),
        _details(model, run, stats),
        _results(run, reference),
        _training(run, memory),
        _usage(name, repo_id),
        _evaluation(name, run),
        _citation(model, run),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


# ---------------------------------------------------------------------------------------------- metadata
def _eval_split(run: Run) -> str:
    """The split the top-1 was measured on, as a ``datasets`` slice when only part of it was used."""
    split = get_dataset_spec(run.dataset).eval_split
    limit = run.args.get("max_eval_samples")
    return f"{split}[:{limit}]" if limit else split


def _metadata(name: str, model: LocalNet, run: Run, memory: Optional[MemoryComparison],
              reference: Optional[Run]) -> ModelCardData:
    spec = get_dataset_spec(run.dataset)
    eval_results = None
    if run.top1 is not None:
        eval_results = [EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=spec.hub_id, dataset_name=DATASETS[spec.name].name, dataset_config=spec.config,
            dataset_split=_eval_split(run), metric_type="accuracy", metric_name="Top-1 accuracy (%)",
            metric_value=round(float(run.top1), 2))]
    memory_figures = dict.fromkeys(("peak_memory_mb", "e2e_peak_memory_mb", "memory_device", "memory_batch_size"))
    if memory is not None:
        memory_figures = {"peak_memory_mb": round(memory.peak_memory_mb, 1),
                          "e2e_peak_memory_mb": round(memory.e2e_peak_memory_mb, 1),
                          "memory_device": memory.device, "memory_batch_size": memory.batch_size}
    figures = {"architecture": run.arch, "method": model.method.name, "num_local_modules": model.num_local_modules,
               "dataset": spec.name, "top1": None if run.top1 is None else round(float(run.top1), 2),
               "eval_split": _eval_split(run), "e2e_top1": _final_top1(reference), **memory_figures}
    return ModelCardData(
        library_name="timm", license=model.pretrained_cfg.get("license") or "apache-2.0",
        pipeline_tag="image-classification", datasets=[spec.hub_id],
        tags=["image-classification", "timm", "timm_local", "local-learning", model.method.name],
        model_name=name, eval_results=eval_results, timm_local=figures)


# ---------------------------------------------------------------------------------------------- body
def _description(model: LocalNet, run: Run) -> str:
    backbone = backbone_reference(run.arch)
    name = f"`{run.arch.removesuffix(f'_{model.method.name}')}`"
    dataset = DATASETS[get_dataset_spec(run.dataset).name].name
    if model.num_local_modules == 1:
        how = "end to end (one module, the E2E baseline of supervised local learning)"
    else:
        how = (f"by supervised local learning, {METHODS[model.method.name].name}: the network is cut into "
               f"K = {model.num_local_modules} gradient-isolated local modules, each trained by its own auxiliary "
               f"network")
    return (f"A {backbone.name + ' ' + name if backbone else name} image classifier trained on {dataset} with "
            f"`timm_local`, {how}. Only the inference network (stem, blocks, classifier) is published; the "
            f"auxiliary networks used in training are not part of these weights, and `forward()` is the plain timm "
            f"forward pass.")


def _details(model: LocalNet, run: Run, stats: ModelStats) -> str:
    spec = get_dataset_spec(run.dataset)
    options = ", ".join(f"{f.name}={getattr(model.method, f.name)!r}" for f in dataclasses.fields(model.method))
    papers = [ref for ref in (METHODS[model.method.name], _base_method(model), backbone_reference(run.arch))
              if ref is not None and ref.url]
    lines = [
        "## Model Details",
        "- **Model Type:** Image classification",
        f"- **Architecture:** `{run.arch}`",
        f"- **Local learning:** {METHODS[model.method.name].name}, K = {model.num_local_modules} local module(s)"
        + (f" ({model.split_kind} split; modules 2..K start at blocks {list(model.cuts)})" if model.cuts else "")
        + (f"; method options: `{options}`" if options else ""),
        "- **Model Stats:**",
        f"  - Params (M): {stats.params / 1e6:.2f} (inference); {stats.train_params / 1e6:.2f} while training "
        f"(aux nets and momentum copies included)",
        f"  - GMACs: {stats.macs / 1e9:.3f}",
        f"  - Activations (M): {stats.activations / 1e6:.2f}",
        f"  - Image size: {stats.input_size[1]} x {stats.input_size[2]}",
        "- **Papers:**",
        *[f"  - {ref.name}: {ref.url}" for ref in papers],
        f"- **Dataset:** {DATASETS[spec.name].name} ([{spec.hub_id}](https://huggingface.co/datasets/{spec.hub_id}))",
        "",
        "Stats are counted on one image by `timm_local.hub.stats`: GMACs = FLOPs / 2 from "
        "`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products), activations = output "
        "elements of every convolution and linear layer.",
    ]
    return "\n".join(lines)


def _final_top1(run: Optional[Run]) -> Optional[float]:
    """A finished run's final top-1 (from its results.json), rounded as the card shows it."""
    if run is None or run.results is None or run.results.get("top1_final") is None:
        return None
    return round(float(run.results["top1_final"]), 2)


def _reference_line(run: Run, reference: Optional[Run]) -> str:
    e2e, ours = _final_top1(reference), _final_top1(run)
    if e2e is None:
        return f"- **E2E with the same recipe:** {NOT_MEASURED}"
    gap = f" (gap {ours - e2e:+.2f} points)" if ours is not None else ""
    return (f"- **E2E with the same recipe:** {e2e:.2f}% final top-1 "
            f"(`{reference.arch}`, {_value(reference.results.get('epochs'))} epochs){gap}")


def _results(run: Run, reference: Optional[Run] = None) -> str:
    spec = get_dataset_spec(run.dataset)
    results = run.results or {}
    limit = run.args.get("max_eval_samples")
    evaluated_on = (f"the first {limit} images of the `{spec.eval_split}` split" if limit
                    else f"the `{spec.eval_split}` split") + f" of {spec.hub_id}"
    lines = [
        "## Results",
        f"Evaluated on {evaluated_on} (single crop, the eval transform of the training run).",
        "",
        f"- **Top-1 of these weights:** {_pct(run.top1)} (after epoch {run.epoch + 1}, `{run.checkpoint_path.name}`)",
    ]
    if run.results is None:
        lines.append(f"- **Final and best top-1 of the run:** {NOT_MEASURED} (the run had not finished: "
                     f"no results.json)")
    else:
        best_epoch = results.get("best_epoch")
        lines += [
            f"- **Final top-1 / top-5:** {_pct(results.get('top1_final'))} / {_pct(results.get('top5_final'))} "
            f"after {_value(results.get('epochs'))} epochs",
            f"- **Best top-1:** {_pct(results.get('top1_best'))}"
            + (f" (epoch {best_epoch + 1})" if best_epoch is not None else ""),
            f"- **Final eval loss:** {_value(results.get('eval_loss_final'), '{:.4f}')}",
        ]
        if run.model_kwargs.get("num_local_modules", 1) != 1 or reference is not None:
            lines.append(_reference_line(run, reference))
    return "\n".join(lines)


def _training(run: Run, memory: Optional[MemoryComparison]) -> str:
    args, results = run.args, run.results or {}
    lines = [
        "## Training",
        f"- **Epochs:** {_value(args.get('epochs'))}"
        + (f" on the first {args['max_train_samples']} training images" if args.get("max_train_samples") else ""),
        f"- **Batch size:** {_value(args.get('batch_size'))} per process x {_value(args.get('world_size'))} "
        f"process(es)",
        f"- **Optimizer:** {_value(args.get('opt'))}, lr {_value(args.get('lr'))}, momentum "
        f"{_value(args.get('momentum'))}, weight decay {_value(args.get('weight_decay'))}",
        f"- **Schedule:** {_value(args.get('sched'))}, {_value(args.get('warmup_epochs'))} warm-up epochs",
        f"- **Mixed precision:** {_value(args.get('mixed_precision'))}; seed {_value(args.get('seed'))}",
        f"- **Model kwargs:** `{run.model_kwargs}`",
        f"- **Device:** {_value(results.get('device'), missing=NOT_MEASURED)}"
        + (f", {results['threads']} thread(s)" if results.get("threads") else "") + "; wall time "
        f"{_value(results.get('wall_time_s'), '{:.0f} s', NOT_MEASURED)}; "
        f"{_value(results.get('train_images_per_sec'), '{:.0f} images/s', NOT_MEASURED)} (median epoch)",
        f"- **Peak memory during this run:** {_value(results.get('peak_memory_mb'), '{:.0f} MB', NOT_MEASURED)}",
        f"- **Peak training memory vs E2E:** {_memory_line(memory)}",
        "",
        "Command:",
        "",
        "```bash",
        results.get("command") or f"# {NOT_RECORDED} (no results.json)",
        "```",
    ]
    return "\n".join(lines)


def _memory_line(memory: Optional[MemoryComparison]) -> str:
    if memory is None:
        return NOT_MEASURED
    context = ", ".join(part for part in (
        memory.device, memory.batch_size and f"batch {memory.batch_size}", memory.mixed_precision) if part)
    line = (f"{memory.peak_memory_mb:.0f} MB vs {memory.e2e_peak_memory_mb:.0f} MB for E2E "
            f"({-100 * memory.saving:+.1f}%)")
    line += f", {context}" if context else ""
    return line + (f", measured by `{memory.command}`" if memory.command else "")


def _usage(name: str, repo_id: str) -> str:
    return f"""## Model Usage
### Image classification
```python
import timm_local  # registers the timm_local models in timm: import it before create_model
import timm
import torch
from PIL import Image

model = timm.create_model("{name}", pretrained=True)  # or "hf-hub:{repo_id}"
model = model.eval()

data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)

image = Image.open("image.png").convert("RGB")
with torch.no_grad():
    probabilities = model(transform(image).unsqueeze(0)).softmax(dim=-1)
top5 = probabilities.topk(5)
labels = model.pretrained_cfg["label_names"]
print([(labels[i], round(p.item(), 3)) for p, i in zip(top5.values[0], top5.indices[0])])
```

### Continue local training
`create_model("hf-hub:{repo_id}", pretrained=True)` rebuilds the same K local modules from the `model_args`
in config.json; the backbone starts from these weights and the auxiliary networks from a fresh initialisation.
`model.local_step(images, labels)` then trains it (see the timm_local README)."""


def _evaluation(name: str, run: Run) -> str:
    """The validate.py command that re-measures the card's top-1 (the trainer's eval settings)."""
    args = run.args
    flags = [f"--dataset {run.dataset}", f"-b {args.get('validation_batch_size') or args.get('batch_size')}"]
    if args.get("mixed_precision") not in (None, "no"):
        flags.append(f"--mixed-precision {args['mixed_precision']}")
    if args.get("channels_last"):
        flags.append("--channels-last")
    return f"""### Evaluate
From a clone of timm_local (`pip install -e ".[train]"`), with the eval settings of the training run:
```bash
python validate.py --model {name} --pretrained {' '.join(flags)}
```
This prints the top-1 above (add `--data-dir <local copy>` to read the dataset from disk)."""


def _citation(model: LocalNet, run: Run) -> str:
    refs = [METHODS[model.method.name], _base_method(model), backbone_reference(run.arch),
            DATASETS[get_dataset_spec(run.dataset).name]]
    entries = [ref.bibtex for ref in refs if ref is not None and ref.bibtex]
    return "## Citation\n" + "\n".join(f"```bibtex\n{entry}\n```" for entry in entries)


# ---------------------------------------------------------------------------------------------- helpers
def _base_method(model: LocalNet) -> Optional[Reference]:
    """The aux objective MAN / MLAAN build on (``base='infopro'`` or ``'dgl'``), if any."""
    base = getattr(model.method, "base", None)
    return METHODS.get(base) if base != model.method.name else None


def _pct(value: Optional[float]) -> str:
    return NOT_MEASURED if value is None else f"{value:.2f}%"


def _value(value: Any, fmt: str = "{}", missing: str = NOT_RECORDED) -> str:
    return missing if value is None else fmt.format(value)
