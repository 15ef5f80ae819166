#!/usr/bin/env python3
"""Train a timm_local model by supervised local learning.

    python train.py --config configs/cifar10/resnet32_man_k15.yaml --data-dir ../shared/datasets/cifar10-jpeg
    accelerate launch --multi_gpu --num_processes 4 train.py --config configs/cifar10/resnet110_infopro_k4_contrast.yaml

See ``python train.py --help`` and the README, "Training".
"""
from timm_local.train import main

if __name__ == "__main__":
    main()
