"""LocalNet: a timm classifier whose blocks are cut into K gradient-isolated local modules.

The state dict is the backbone's own (timm's parameter names) plus ``aux.<k>.*`` for the aux nets
and momentum copies of module k. ``forward`` is the plain inference path of the backbone.
"""

import warnings
from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch
from timm.data.loader import adapt_to_chs
from timm.layers import get_device_dtype
from timm.models._input import update_model_input_size
from torch import nn

from ..methods.base import BlockCopies, LocalMethod, LocalPlan, momentum_lerp_
from .cascade import run_joint, run_shared
from .context import CascadeLoss, LocalContext
from .layout import BackboneLayout, probe_features
from .module import LocalModule
from .placement import factory_defaults, is_on_meta, zero_filled_cpu_copy
from .split import ModuleCosts, SplitSpec, measure_module_costs, resolve_split

Describe = Callable[[nn.Module], BackboneLayout]


class LocalStepOutput(tuple):
    """``(logits, losses)`` of one training step: detached logits and one detached 0-dim loss per module.

    Losses stay on the device (no host sync inside the step); call ``.item()`` when logging.
    """

    def __new__(cls, logits: torch.Tensor, losses: list[torch.Tensor]):
        return super().__new__(cls, (logits, losses))

    @property
    def logits(self) -> torch.Tensor:
        return self[0]

    @property
    def losses(self) -> list[torch.Tensor]:
        return self[1]


class PlainTrainingForwardWarning(UserWarning):
    """``model(x)`` of a local-learning model in train mode: end-to-end training, the aux nets get no gradient."""


PLAIN_TRAINING_FORWARD_WARNING = (
    "model(x) of a local-learning model in train mode with gradients enabled is the plain backbone: a loss on it "
    "trains the network end to end and the aux nets never get a gradient (this is what timm's train.py does). "
    "For local learning call model.local_step(x, y) per batch, or use timm_local's train.py; for inference call "
    "model.eval(). Set model.warn_plain_training_forward = False to silence this.")


class LocalNet(nn.Module):
    """A backbone plus the aux nets of a local-learning method (DESIGN.md, "The model contract").

    Args:
        backbone: a timm-style classifier (forward_features / forward_head / reset_classifier ...).
        describe: returns the backbone's :class:`BackboneLayout` (stem, blocks, head).
        method: the method's options (a :class:`~timm_local.methods.base.LocalMethod`).
        num_local_modules, split: see :func:`~timm_local.local.split.resolve_split`.
        mean, std: the input normalisation (for InfoPro's reconstruction target), adapted to the layout's
            input channels as timm's loaders do (``timm.data.loader.adapt_to_chs``: a length mismatch
            becomes the average, e.g. ImageNet's three means for ``in_chans=1``).
    """

    warn_plain_training_forward: bool = True  # see forward()

    def __init__(self, backbone: nn.Module, describe: Describe, method: LocalMethod,
                 num_local_modules: Optional[int] = None, split: SplitSpec = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        clash = {"aux", "local_modules", "backbone", "method"} & {n for n, _ in backbone.named_children()}
        if clash:
            raise ValueError(f"backbone has children named {sorted(clash)}, which LocalNet reserves")
        self.__dict__["backbone"] = backbone
        self.__dict__["method"] = method
        self.__dict__["_describe"] = describe
        self.__dict__["_normalisation_tensors"] = {}
        self._adopt_backbone_members()
        layout = describe(backbone)
        self.mean, self.std = (tuple(adapt_to_chs(tuple(v), layout.input_size[0])) for v in (mean, std))
        self.__dict__["_probe"] = probe_features(layout)
        self.cuts, self.split_kind = resolve_split(
            layout, num_local_modules, split, self._probe,
            costs=lambda: self._measure_costs(layout))
        self._build_local_modules(layout)

    # ------------------------------------------------------------------ construction
    def _adopt_backbone_members(self) -> None:
        """Register the backbone's children, parameters and buffers under their own names."""
        for name, child in self.backbone.named_children():
            self._modules[name] = child
        for name, param in self.backbone.named_parameters(recurse=False):
            self._parameters[name] = param
        for name, buf in self.backbone.named_buffers(recurse=False):
            self._buffers[name] = buf

    def _measure_costs(self, layout: BackboneLayout) -> ModuleCosts:
        """:func:`measure_module_costs` of ``layout``; for a backbone on ``device='meta'``, of a zero-filled CPU
        copy of it, with the aux nets built on the CPU too (timm builds on meta, also as the default device, to
        check configs), so that a measured split gives a meta model the cuts the real one gets."""
        if not is_on_meta(self.backbone):
            return measure_module_costs(layout, self.method, self._probe, self.backbone.num_classes, self.mean,
                                        self.std)
        with torch.device("cpu"):
            return measure_module_costs(self._describe(zero_filled_cpu_copy(self.backbone)), self.method,
                                        self._probe, self.backbone.num_classes, self.mean, self.std)

    def _build_local_modules(self, layout: BackboneLayout) -> None:
        num_classes = self.backbone.num_classes
        plan = LocalPlan(layout=layout, cuts=self.cuts, probe=self._probe, num_classes=num_classes,
                         split_kind=self.split_kind)
        with factory_defaults(**get_device_dtype(self.backbone)):  # aux nets where the backbone is (timm's dd)
            objectives = self.method.build_objectives(plan) if num_classes > 0 else [None] * plan.num_modules
        modules = []
        for k in range(plan.num_modules):
            modules.append(LocalModule(
                index=k,
                blocks=[layout.blocks[j] for j in plan.blocks_of(k)],
                objective=objectives[k],
                stem=layout.stem if k == 0 else None,
                head=layout.head if k == plan.num_modules - 1 else None,
            ))
        self.aux = nn.ModuleList([obj if obj is not None else nn.Identity() for obj in objectives])
        self.aux.train(self.backbone.training)  # reset_classifier() after .eval() keeps the model's mode
        self.__dict__["local_modules"] = nn.ModuleList(modules)
        self.__dict__["_trainable"] = num_classes > 0
        self.__dict__["_input_size"] = tuple(layout.input_size)

    def extra_repr(self) -> str:
        return (f"method={self.method.name}, num_local_modules={len(self.local_modules)}, "
                f"cuts={list(self.cuts)} ({self.split_kind})")

    def train(self, mode: bool = True) -> "LocalNet":
        """Also flag the (unregistered) backbone object and local-module wrappers, which DDP/Accelerate may wrap."""
        super().train(mode)
        self.backbone.training = mode  # its children are ours; its own flag is read by reset_classifier()
        self.local_modules.train(mode)
        return self

    # ------------------------------------------------------------------ timm contract
    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def in_chans(self) -> int:
        """Channels of the images the model (stem and aux nets) is built for, as timm models carry it."""
        return self._input_size[0]

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    @property
    def head_hidden_size(self) -> int:
        return getattr(self.backbone, "head_hidden_size", self.backbone.num_features)

    @property
    def feature_info(self):
        return self.backbone.feature_info

    @property
    def grad_checkpointing(self) -> bool:
        return getattr(self.backbone, "grad_checkpointing", False)

    @property
    def num_local_modules(self) -> int:
        return len(self.local_modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        """The backbone's ``forward_intermediates`` (timm's signature: indices, norm, stop_early, output_fmt,
        intermediates_only), which ``features_only=True, feature_cls='getter'`` calls. There is no
        ``prune_intermediate_layers``: every block belongs to a local module, so the getter keeps them all."""
        return self.backbone.forward_intermediates(x, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain inference: stem → every block → head. No aux nets, no losses.

        The backbone's ``forward`` is called as a method, not as a module: its layers are registered on
        this model under their timm names, so ``torch.fx`` traces through it (hooks belong on this model).

        In train mode with gradients enabled, a model of K > 1 local modules warns (once per process, the
        ``warnings`` default) that a loss on ``model(x)`` trains it end to end: that is what timm's train.py
        and ``benchmark.py --bench train`` do, and the aux nets then never get a gradient. Set
        ``model.warn_plain_training_forward = False`` to silence it.
        """
        if self.training and torch.is_grad_enabled() and self.num_local_modules > 1 and self.warn_plain_training_forward:
            warnings.warn(PLAIN_TRAINING_FORWARD_WARNING, PlainTrainingForwardWarning, stacklevel=2)
        return self.backbone.forward(x)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(model)`` scripts the plain inference model, the timm backbone (its weights, its
        ``forward``); the aux nets and ``local_step`` are training-time Python and are left out, as
        :mod:`timm_local.hub` exports only the backbone. Train with the unscripted model."""
        return self.backbone

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the backbone's classifier as timm does; the aux nets are rebuilt for the new classes.

        The new classifier and aux nets (re-initialised) take the model's device, dtype and train/eval mode.
        """
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        self.backbone.get_classifier().train(self.backbone.training)  # timm's ViT leaves a new head in train mode
        self._rebuild_local_modules(self._describe(self.backbone))

    @property
    def set_input_size(self) -> Callable[..., None]:
        """timm's ``set_input_size(img_size=None, patch_size=None, **kwargs)`` on the backbone (a ViT's patch
        grid and resampled position embedding), present only where the backbone has one: as on timm's own
        models, ``hasattr(model, 'set_input_size')`` says whether it is supported (timm's ResNets have none:
        create the model with ``img_size=...`` instead).

        The local modules keep their cuts; their aux nets are rebuilt (re-initialised) for the new size, as
        after :meth:`reset_classifier`. Create the optimizer afterwards: timm replaces ``pos_embed``.
        """
        if not hasattr(self.backbone, "set_input_size"):
            raise AttributeError("set_input_size")  # nn.Module.__getattr__ then says what has no attribute
        return self._set_input_size

    def _set_input_size(self, img_size=None, patch_size=None, **kwargs) -> None:
        self.backbone.set_input_size(img_size=img_size, patch_size=patch_size, **kwargs)
        layout = self._describe(self.backbone)
        self.__dict__["_probe"] = probe_features(layout)
        self._rebuild_local_modules(layout)
        update_model_input_size(self, layout.input_size[1:], patch_size=patch_size)

    def _rebuild_local_modules(self, layout: BackboneLayout) -> None:
        """Re-adopt the backbone's (possibly replaced) members and rebuild local modules and aux nets on ``layout``."""
        for name in [n for n in self._modules if n != "aux"]:
            del self._modules[name]
        del self._modules["aux"]
        self._adopt_backbone_members()
        self._build_local_modules(layout)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
        for module in self.local_modules:
            module.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        fn = getattr(self.backbone, "no_weight_decay", None)
        return set(fn()) if fn is not None else set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return self.backbone.group_matcher(coarse=coarse)

    # ------------------------------------------------------------------ state dicts
    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's state dict only (aux nets and momentum copies dropped): what gets published."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("aux.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a full state dict, or an inference one (no ``aux.`` keys) strictly into the backbone.

        With an inference state dict the aux nets keep their current weights, except block copies
        meant to start equal to their source (MAN's EMA copy, MLAAN's clones), which are re-copied
        from the loaded blocks; strictness still applies to every backbone key.
        """
        if any(k.startswith("aux.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("aux.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) loading state_dict for {type(self.backbone).__name__}: "
                               f"missing keys {missing}, unexpected keys {result.unexpected_keys}")
        for module in self.aux.modules():
            if isinstance(module, BlockCopies):
                module.refresh_from_sources()
        return result

    # ------------------------------------------------------------------ local training
    def local_param_groups(self, **group_options) -> list[dict]:
        """One optimizer param group per local module (trainable parameters only; momentum copies excluded)."""
        return [{"params": [p for p in m.parameters() if p.requires_grad], "local_module": k, **group_options}
                for k, m in enumerate(self.local_modules)]

    def forward_local(self, x: torch.Tensor, target: torch.Tensor,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Joint mode: one differentiable pass with the gradient barriers in place.

        Returns ``(logits, losses)`` with one loss per local module (a constant zero where the
        method gives a module no objective). ``sum(losses).backward()`` gives exactly the gradients
        of :meth:`local_step` but keeps every module's graph alive (no memory saving).
        """
        return self._run(x, target, self.local_modules, backward=None, label_smoothing=label_smoothing)

    def local_step(self, x: torch.Tensor, target: torch.Tensor,
                   backward: Optional[Callable[[torch.Tensor], None]] = None,
                   modules: Optional[Sequence[nn.Module]] = None, label_smoothing: float = 0.0) -> LocalStepOutput:
        """Interleaved mode: forward module k, its local loss, its backward, free its graph, then k + 1.

        Args:
            backward: called on each local loss (e.g. ``accelerator.backward``); default ``Tensor.backward``.
                For a loss that spans modules (MLAAN) it is called on each part with ``inputs=`` (the aux
                nets and the module's output), and the engine routes the rest (``local/cascade.py``).
            modules: the local modules to call, in order; pass the DDP/Accelerate-prepared wrappers of
                ``self.local_modules`` here. Default: ``self.local_modules``.
            label_smoothing: ε of every cross-entropy local loss and of the final classifier's CE (timm's
                ``--smoothing``); the contrastive and reconstruction losses take none. ``target`` may be
                class indices (B,) or class probabilities (B, num_classes) (mixup / cutmix).
        Returns:
            :class:`LocalStepOutput` ``(logits, losses)``, both detached. Gradients are accumulated in
            ``.grad``; call :meth:`momentum_update` and then the optimizer step.
        """
        return self._run(x, target, self.local_modules if modules is None else modules,
                         backward=backward or torch.Tensor.backward, label_smoothing=label_smoothing)

    def local_step_range(self, h: torch.Tensor, x: torch.Tensor, target: torch.Tensor, start: int, stop: int,
                         backward: Optional[Callable[[torch.Tensor], None]] = None,
                         modules: Optional[Sequence[nn.Module]] = None, label_smoothing: float = 0.0) -> LocalStepOutput:
        """:meth:`local_step` restricted to the contiguous modules ``start .. stop − 1``, from their input ``h``.

        ``h`` is module ``start``'s input (the detached output of module ``start − 1``; ``x`` itself when
        ``start = 0``) and ``x`` the step's image batch, which the objectives may read (InfoPro reconstructs
        it). Each module runs exactly as in :meth:`local_step`, so ``local_step(x, y)`` equals
        ``local_step_range`` over consecutive ranges chained by their outputs: what a pipeline stage runs
        (:mod:`timm_local.pipeline`). Returns the detached output of module ``stop − 1`` (the logits when
        ``stop = K``) and the losses of modules ``start .. stop − 1``. ``modules`` are the (prepared) modules of
        the range. Losses that span modules (MLAAN) are refused here: a range would cut their cascade.
        """
        if not 0 <= start < stop <= len(self.local_modules):
            raise ValueError(f"module range {start}..{stop - 1} is not within the {len(self.local_modules)} local modules")
        if self.method.cascade_depth > 1:
            raise ValueError(f"{self.method.name}'s losses span {self.method.cascade_depth} modules, so a range of "
                             f"modules cannot be stepped on its own: call local_step on the whole model")
        self._check_input(x, target)
        modules = list(self.local_modules[start:stop] if modules is None else modules)
        if len(modules) != stop - start:
            raise ValueError(f"got {len(modules)} modules for the range {start}..{stop - 1}")
        ctx = self._context(x, target, label_smoothing)
        return LocalStepOutput(*self._run_modules(h, ctx, modules, start, backward or torch.Tensor.backward))

    @torch.no_grad()
    def forward_range(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The plain inference path through modules ``start .. stop − 1`` (their backbone parts only).

        Chained over consecutive ranges from ``x`` it is ``forward(x)``: stem → blocks → head.
        """
        for module in self.local_modules[start:stop]:
            h = module.body(h)
        return h

    def _check_input(self, x: torch.Tensor, target: torch.Tensor) -> None:
        if not self._trainable:
            raise ValueError("this model has no classifier (num_classes=0), so it has no local objectives: "
                             "create it with num_classes > 0 or call reset_classifier(num_classes) to train it")
        channels, *size = self._input_size
        if x.dim() != 2 + len(size):
            raise ValueError(f"expected a batch of images of shape (B, {channels}, {', '.join(map(str, size))}), "
                             f"got a tensor of shape {tuple(x.shape)}: stack the images into one batch "
                             f"(x[None] for a single image)")
        if x.shape[1] != channels:
            raise ValueError(f"expected {channels}-channel images, got a batch of shape {tuple(x.shape)}: create the "
                             f"model with in_chans={x.shape[1]} or convert the images to {channels} channels")
        given = list(x.shape[2:])
        if given != size:
            img_size = given[0] if len(set(given)) == 1 else tuple(given)
            raise ValueError(f"got {'×'.join(map(str, given))} images but the model's aux nets are built for "
                             f"{'×'.join(map(str, size))}: create the model with img_size={img_size}, "
                             f"or resize the images to {'×'.join(map(str, size))}")
        if target.shape[0] != x.shape[0]:
            raise ValueError(f"target has {target.shape[0]} labels for a batch of {x.shape[0]} images")

    def _context(self, x: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> LocalContext:
        mean, std = self._normalisation(x.device)
        return LocalContext(image=x, target=target, mean=mean, std=std, label_smoothing=label_smoothing)

    def _run(self, x, target, modules, backward, label_smoothing=0.0):
        self._check_input(x, target)
        if len(modules) != len(self.local_modules):
            raise ValueError(f"got {len(modules)} modules for {len(self.local_modules)} local modules")
        ctx = self._context(x, target, label_smoothing)
        depth = self.method.cascade_depth
        if depth > 1:  # losses that span modules (MLAAN): local/cascade.py
            if backward is None:
                return LocalStepOutput(*run_joint(self, x, ctx, depth))
            return LocalStepOutput(*run_shared(self, x, ctx, modules, backward, depth))
        return LocalStepOutput(*self._run_modules(x, ctx, modules, 0, backward))

    def _run_modules(self, h, ctx, modules, start, backward):
        """Modules ``start, start + 1, ...`` (``modules``) in turn from input ``h``: forward, loss, and, in the
        interleaved mode (``backward`` given), its backward and the detach. Returns ``(output, losses)``."""
        autocast_cache = backward is not None and torch.is_autocast_enabled(h.device.type)
        losses = []
        last = len(self.local_modules) - 1
        for k, module in enumerate(modules, start):
            if self.local_modules[k].objective is None:
                with torch.no_grad():
                    h_out, loss = module(h, ctx)
                loss = torch.zeros((), device=h.device)
            else:
                h_out, loss = module(h, ctx)
                if isinstance(loss, CascadeLoss):  # a cascade of one module: both parts reach module k only
                    loss = loss.total()
                if backward is not None:
                    backward(loss)
                    loss = loss.detach()
            if autocast_cache:  # free module k's low-precision weight copies
                torch.clear_autocast_cache()
            losses.append(loss)
            h = h_out.detach() if (k < last or backward is not None) else h_out
        return h, losses

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as float32 tensors on ``device``, made once per device.

        Made from Python floats inside the step they would be copied host → device, a synchronising
        copy on CUDA, for every aux net that reconstructs the image.
        """
        key = (device, self.mean, self.std)
        if key not in self._normalisation_tensors:
            self._normalisation_tensors[key] = tuple(torch.tensor(v, dtype=torch.float32, device=device)
                                                     for v in (self.mean, self.std))
        return self._normalisation_tensors[key]

    @torch.no_grad()
    def momentum_update(self, modules: Optional[Sequence[int]] = None) -> None:
        """Apply every momentum copy's EMA, θ ← m·θ + (1 − m)·θ_source, to parameters only.

        Call once per step before ``optimizer.step()`` (the references update with θ_{t−1};
        METHODS.md §9 B8). Buffers (BN running statistics) are not averaged (§9 B9). ``modules``: the
        indices of the local modules whose copies to update (a pipeline stage's own); default all.
        """
        groups: dict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
        chosen = range(len(self.local_modules)) if modules is None else modules
        for module in (self.local_modules[k] for k in chosen):
            if module.objective is None:
                continue
            for ema, source, m in module.objective.momentum_pairs():
                targets, sources = groups[m]
                ema_params, src_params = list(ema.parameters()), list(source.parameters())
                targets.extend(ema_params)
                sources.extend(src_params)
        for m, (targets, sources) in groups.items():
            momentum_lerp_(targets, sources, m)
