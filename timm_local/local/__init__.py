"""The model-agnostic engine: layouts, splits, local modules, LocalNet and localize()."""
from .context import LocalContext
from .layout import (BackboneLayout, BoundCall, FeatureProbe, TokenFormat, probe_features,
                     reset_parameters_like_resnet)
from .localize import describe_backbone, localize, register_describer
from .module import LocalModule
from .net import LocalNet, LocalStepOutput
from .split import balanced_cuts, even_cuts, resolve_split

__all__ = ["BackboneLayout", "BoundCall", "FeatureProbe", "LocalContext", "LocalModule", "LocalNet",
           "LocalStepOutput", "TokenFormat", "balanced_cuts", "describe_backbone", "even_cuts", "localize",
           "probe_features", "register_describer", "reset_parameters_like_resnet", "resolve_split"]
