"""What the evidence run measures and trains: the declared grids, runs and recipe (nothing is chosen at random).

Contract:
- :func:`bench_parts` is the list of benchmark-harness invocations of part 1 (argv of
  ``python -m timm_local.bench`` without ``--out``/``--time-budget``), and the share of part 1's time
  each gets. Full: InfoPro Table 3's setting (ResNet-110, 32 px, batch 1024, bf16 and fp32,
  channels_last: E2E, E2E + GC, InfoPro* balanced K=2/3/4/8/16, DGL / InfoPro / MAN / MLAAN at K=4 on
  the paper split), ResNet-101 at 224 px batch 128 (E2E, GC, InfoPro K=2/4) and ViT-S/16 at batch 128
  (E2E, GC, InfoPro / MAN K=4). Smoke: the same three invocations on the CPU at tiny sizes, measured in
  the calling process (``--in-process``), in fp32 (a CPU without native bf16 emulates it, slowly), the
  last two with their baselines only (E2E and E2E + GC).
- :data:`TRAIN_RUNS` are part 2's ResNet-32 runs (the papers' K=16, i.e. 15 modules for MAN/MLAAN, and
  K=8), each starting from its paper config in configs/cifar10/; :func:`smoke_runs` the two the smoke trains.
- :func:`recipe` is the same-for-all override of those configs for ``epochs`` epochs (``None``: the
  papers' own 160/400-epoch schedules, left as the configs have them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

CONFIGS = Path("configs/cifar10")
DATASET = "cifar10"


@dataclass(frozen=True)
class BenchPart:
    """One ``python -m timm_local.bench`` invocation of part 1."""

    name: str  # the output prefix: <work>/bench/<name>.json / .png
    argv: tuple[str, ...]
    share: float  # fraction of part 1's time budget


_R110 = ("--arch", "resnet110", "--methods", "infopro:balanced", "dgl:paper@4", "infopro:paper@4", "man:paper@4",
         "mlaan:paper@4", "--k", "2", "3", "4", "8", "16", "--img-size", "32", "--channels-last")
_R101 = ("--arch", "resnet101", "--methods", "infopro", "--k", "2", "4", "--img-size", "224", "--channels-last")
_VIT = ("--arch", "vit_small_patch16_224", "--methods", "infopro@4", "man@4", "--img-size", "224")
_GPU = ("--device", "cuda", "--warmup", "3", "--steps", "5")
_CPU = ("--device", "cpu", "--warmup", "1", "--steps", "1", "--threads", "1", "--in-process")


def bench_parts(smoke: bool) -> list[BenchPart]:
    """Part 1's invocations. The smoke keeps each one's code path and shrinks models, batches and grids."""
    if not smoke:
        return [BenchPart("resnet110_cifar_bs1024", _R110 + ("--batch-size", "1024", "--precision", "bf16", "fp32")
                          + _GPU, 22 / 30),
                BenchPart("resnet101_224_bs128", _R101 + ("--batch-size", "128", "--precision", "bf16") + _GPU, 4 / 30),
                BenchPart("vit_small_224_bs128", _VIT + ("--batch-size", "128", "--precision", "bf16") + _GPU, 4 / 30)]
    return [BenchPart("resnet110_cifar_bs1024", ("--arch", "resnet32", "--methods", "infopro:balanced", "--k", "2",
                                                 "--img-size", "32", "--channels-last", "--batch-size", "8",
                                                 "--precision", "fp32") + _CPU, 1 / 3),
            BenchPart("resnet101_224_bs128", ("--arch", "resnet34", "--methods", "e2e", "--img-size", "32",
                                              "--channels-last", "--batch-size", "2", "--precision", "fp32")
                      + _CPU, 1 / 3),
            BenchPart("vit_small_224_bs128", ("--arch", "vit_tiny_patch4_32", "--methods", "e2e", "--img-size", "32",
                                              "--batch-size", "2", "--precision", "fp32") + _CPU, 1 / 3)]


@dataclass(frozen=True)
class TrainRun:
    """One ResNet-32 run of part 2: its folder name and the paper config it starts from."""

    name: str
    config: str

    @property
    def config_path(self) -> Path:
        return CONFIGS / self.config

    def paper_settings(self) -> dict[str, Any]:
        """The paper config's keys (model, model_kwargs, epochs, ...)."""
        return yaml.safe_load(self.config_path.read_text())

    def hub_name(self, recipe_tag: str) -> str:
        """``<model>.k<modules>_<recipe>_cifar10`` (docs/ZOO.md's tag convention)."""
        settings = self.paper_settings()
        return f"{settings['model']}.k{settings['model_kwargs']['num_local_modules']}_{recipe_tag}_{DATASET}"


TRAIN_RUNS = (
    TrainRun("resnet32_e2e-k1", "resnet32_e2e_k1.yaml"),
    TrainRun("resnet32_dgl-k16", "resnet32_dgl_k16.yaml"),
    TrainRun("resnet32_infopro-k16-contrast", "resnet32_infopro_k16_contrast.yaml"),
    TrainRun("resnet32_man-k15-infopro", "resnet32_man_k15_infopro.yaml"),
    TrainRun("resnet32_mlaan-k15-infopro", "resnet32_mlaan_k15_infopro.yaml"),
    TrainRun("resnet32_dgl-k8", "resnet32_dgl_k8.yaml"),
    TrainRun("resnet32_infopro-k8-contrast", "resnet32_infopro_k8_contrast.yaml"),
    TrainRun("resnet32_man-k8-infopro", "resnet32_man_k8_infopro.yaml"),
    TrainRun("resnet32_mlaan-k8-infopro", "resnet32_mlaan_k8_infopro.yaml"),
)


def train_runs(smoke: bool) -> tuple[TrainRun, ...]:
    """Every run, or the smoke's two (E2E and one local method: the same sweep, export and pack path)."""
    return TRAIN_RUNS[:1] + TRAIN_RUNS[5:6] if smoke else TRAIN_RUNS


SMOKE_TRAIN, SMOKE_EVAL = 64, 32  # images per split in the smoke
BATCH_SIZE, SMOKE_BATCH_SIZE = 1024, 16


@dataclass(frozen=True)
class Recipe:
    """Part 2's training settings over the paper configs, the same for every run.

    ``epochs=None`` keeps the papers' schedules (160 epochs, 400 for MAN/MLAAN, 10 warm-up epochs).
    Otherwise every run trains ``epochs`` epochs with the papers' batch 1024, lr 0.8, SGD Nesterov 0.9,
    weight decay 1e-4 and per-epoch cosine, and the warm-up keeps the papers' share (10 of 160 epochs).
    """

    epochs: Optional[int]
    smoke: bool = False

    @property
    def tag(self) -> str:
        return "paper" if self.epochs is None else f"gpu{self.epochs}e"

    @property
    def precision(self) -> str:
        """bf16 autocast on the GPU; fp32 in the smoke (a CPU without native bf16 emulates it, slowly)."""
        return "fp32" if self.smoke else "bf16"

    @property
    def warmup_epochs(self) -> Optional[int]:
        return None if self.epochs is None else max(1, round(self.epochs * 10 / 160))

    def common(self, data_dir: str) -> dict[str, Any]:
        """The sweep file's ``common`` block."""
        common: dict[str, Any] = {"dataset": DATASET, "data_dir": data_dir,
                                  "mixed_precision": "no" if self.precision == "fp32" else self.precision,
                                  "channels_last": True, "seed": 42, "log_interval": 25, "bench_loader_batches": 5}
        if self.epochs is not None:
            common.update(epochs=self.epochs, warmup_epochs=self.warmup_epochs)
        if self.smoke:
            common.update(batch_size=SMOKE_BATCH_SIZE, lr=0.05, max_train_samples=SMOKE_TRAIN,
                          max_eval_samples=SMOKE_EVAL)
        return common


def steps_per_epoch(train_images: int, smoke: bool) -> int:
    """Training steps of one epoch (the last, partial batch is kept, as in the papers' loaders)."""
    return math.ceil(train_images / (SMOKE_BATCH_SIZE if smoke else BATCH_SIZE))


def sweep_file(runs: tuple[TrainRun, ...], recipe: Recipe, data_dir: str, output: Path) -> dict[str, Any]:
    """The sweep (docs/SWEEPS.md) of part 2: ``runs`` from their paper configs, under ``recipe``."""
    return {"output": str(output), "common": recipe.common(data_dir),
            "runs": [{"name": r.name, "config": str(r.config_path), "hub_name": r.hub_name(recipe.tag)} for r in runs]}
