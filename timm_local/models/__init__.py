"""timm registrations. Importing this package registers every model name."""
from . import cifar_resnet_local  # noqa: F401  (registers resnet{32,110}_*)
