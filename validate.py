#!/usr/bin/env python3
"""Evaluate a timm_local model on a benchmark's test split, like timm's validate.py.

    python validate.py --model resnet32_man.k8_cpu10e_cifar10 --pretrained --dataset cifar10 \\
        --data-dir ../shared/datasets/cifar10-jpeg --mixed-precision bf16 --channels-last -b 128

See ``python validate.py --help`` and :mod:`timm_local.validate`.
"""
from timm_local.validate import main

if __name__ == "__main__":
    main()
