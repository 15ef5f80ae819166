"""timm registrations. Importing this package registers every model name and the backbone describers."""
from . import generic_local  # noqa: F401  (the fallback describer; registered first so specific ones win)
from . import cifar_resnet_local  # noqa: F401  (registers resnet{32,110}_*)
from . import resnet_local  # noqa: F401  (registers resnet{34,50,101,152}_*, resnext101_32x8d_*; ResNet describer)
from . import vit_local  # noqa: F401  (registers vit_*_*; VisionTransformer describer)
