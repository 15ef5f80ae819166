"""What one benchmark measurement is, and the grids (presets) the CLI runs.

A :class:`BenchConfig` is one training-step configuration: a registered model (``<arch>_<method>``),
K, split, batch size, precision and the speed options. The E2E and E2E + gradient-checkpointing
baselines are configurations like any other and are always added to a grid (:func:`with_baselines`),
so that every ratio compares figures measured in the same run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class BenchConfig:
    """One configuration to measure.

    Attributes:
        arch: backbone, e.g. 'resnet110' (the model is ``f"{arch}_{method}"``).
        method: 'e2e', 'greedy', 'dgl', 'infopro', 'man' or 'mlaan'.
        k: number of local modules (1 for E2E).
        split: ``split=`` of the model ('paper', 'balanced', 'measured' or None for the default).
        grad_checkpointing: ``model.set_grad_checkpointing(True)`` (the E2E + GC baseline).
        batch_size, img_size: the input batch (img_size 32 for CIFAR, 96 for STL-10).
        precision: 'fp32' or 'bf16' (autocast; weights and optimizer stay fp32).
        channels_last: model and input in ``torch.channels_last``.
        compile: ``torch.compile`` every local module (``nn.Module.compile``).
        device: 'cpu' or 'cuda'.
        warmup, steps: untimed warm-up steps, then timed steps.
        threads: CPU threads (``torch.set_num_threads``); None leaves PyTorch's default.
    """

    arch: str = "resnet110"
    method: str = "e2e"
    k: int = 1
    split: Optional[str] = None
    grad_checkpointing: bool = False
    batch_size: int = 64
    img_size: int = 32
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "cpu"
    warmup: int = 2
    steps: int = 5
    threads: Optional[int] = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.method == "e2e" and self.k != 1:
            raise ValueError("E2E has one module: use k=1 (gradient checkpointing is the other baseline)")
        if self.warmup < 1 or self.steps < 1:
            raise ValueError("warmup and steps must both be >= 1 (the first steps create lazy state)")

    @property
    def model_name(self) -> str:
        return f"{self.arch}_{self.method}"

    @property
    def is_baseline(self) -> bool:
        return self.method == "e2e"

    @property
    def series(self) -> str:
        """The line this configuration belongs to in plots: method and split, or the baseline's name."""
        if self.is_baseline:
            return "e2e+gc" if self.grad_checkpointing else "e2e"
        name = self.method + (f" ({self.split})" if self.split else "")
        return name + (" +gc" if self.grad_checkpointing else "")

    @property
    def label(self) -> str:
        return self.series if self.is_baseline else f"{self.series} K={self.k}"

    @property
    def group(self) -> tuple:
        """Configurations compared with each other (and with the same group's E2E)."""
        return (self.arch, self.batch_size, self.img_size, self.precision, self.channels_last, self.compile,
                self.device, self.threads)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def baselines(template: BenchConfig) -> list[BenchConfig]:
    """E2E and E2E + gradient checkpointing in ``template``'s group."""
    e2e = dataclasses.replace(template, method="e2e", k=1, split=None, grad_checkpointing=False)
    return [e2e, dataclasses.replace(e2e, grad_checkpointing=True)]


def with_baselines(configs: list[BenchConfig]) -> list[BenchConfig]:
    """``configs`` with both baselines of every group first, without duplicates, in a stable order."""
    ordered: list[BenchConfig] = []
    for config in configs:
        for c in (*baselines(config), config):
            if c not in ordered:
                ordered.append(c)
    groups = list(dict.fromkeys(c.group for c in ordered))
    return [c for g in groups for c in ordered if c.group == g and c.is_baseline] + \
           [c for g in groups for c in ordered if c.group == g and not c.is_baseline]


def parse_method_spec(spec: str) -> tuple[str, Optional[str], bool]:
    """'infopro', 'infopro:balanced', 'man:paper+gc' → (method, split, grad_checkpointing)."""
    gc = spec.endswith("+gc")
    spec = spec[:-3] if gc else spec
    method, _, split = spec.partition(":")
    return method, (split or None), gc


def grid(arches, method_specs, ks, batch_sizes, precisions, **options) -> list[BenchConfig]:
    """Every combination, E2E baselines included; a method spec with ``@K`` fixes its K (e.g. 'man@4')."""
    configs = []
    for arch in arches:
        for batch_size in batch_sizes:
            for precision in precisions:
                template = BenchConfig(arch=arch, batch_size=batch_size, precision=precision, **options)
                configs += baselines(template)
                for spec in method_specs:
                    name, _, fixed_k = spec.partition("@")
                    method, split, gc = parse_method_spec(name)
                    if method == "e2e":
                        continue
                    for k in ([int(fixed_k)] if fixed_k else ks):
                        configs.append(dataclasses.replace(template, method=method, k=int(k), split=split,
                                                           grad_checkpointing=gc))
    return with_baselines(configs)


# How many rounds each preset measures (the CPU is shared: keep each configuration's fastest round).
PRESET_ROUNDS = {"cpu": 2}
# Named grids. 'quick' runs in well under a minute on a laptop CPU; 'cpu' is the recorded CPU benchmark
# (benchmarks/README.md); 'gpu' is the InfoPro Table 3 setting (ResNet-110, CIFAR size, batch 1024, bf16).
RESNET110_METHODS = ("infopro:balanced", "infopro:paper", "dgl:paper@4", "man:paper@4", "mlaan:paper@4",
                     "infopro:balanced+gc@4")
PRESETS: dict[str, dict] = {
    "quick": dict(arches=["resnet110"], method_specs=["infopro:balanced@4"], ks=[4], batch_sizes=[16],
                  precisions=["fp32"], warmup=1, steps=1, threads=1),
    "cpu": dict(arches=["resnet110"], method_specs=list(RESNET110_METHODS), ks=[2, 3, 4, 8, 16], batch_sizes=[64],
                precisions=["fp32"], warmup=1, steps=3, threads=1),
    "gpu": dict(arches=["resnet110"], method_specs=list(RESNET110_METHODS), ks=[2, 3, 4, 8, 16], batch_sizes=[1024],
                precisions=["bf16"], channels_last=True, device="cuda", warmup=5, steps=20),
}
