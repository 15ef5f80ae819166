"""Normalisation constants and label names of the benchmarks (METHODS.md §7.1, ECOSYSTEM.md §5.1).

One place for the numbers that the model tags (pretrained cfgs) and the data pipeline must agree on.
"""

CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
HALF_MEAN = (0.5, 0.5, 0.5)  # SVHN and STL-10 in the reference code
HALF_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SVHN_LABELS = tuple(str(d) for d in range(10))
STL10_LABELS = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
