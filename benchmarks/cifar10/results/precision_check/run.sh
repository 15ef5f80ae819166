#!/bin/bash
# bf16 vs fp32 accuracy check (issue 10 item 2): ResNet-32 E2E, the cpu10e recipe shortened to 3 epochs on the
# first 10,000 training images, evaluated on all 10,000 test images; fp32 with a second seed for seed noise.
cd "$(dirname "$0")/../../../.."
for cfg in "bf16 42" "no 42" "no 7" "bf16 7"; do
  set -- $cfg
  OMP_NUM_THREADS=1 python train.py --model resnet32_e2e --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpeg \
    --epochs 3 --max-train-samples 10000 -b 128 --lr 0.1 --opt sgd --momentum 0.9 --weight-decay 1e-4 --sched cosine \
    --warmup-epochs 0 --min-lr 0 --channels-last --mixed-precision $1 --seed $2 --threads 1 \
    --output "${OUT:-output/precision_check}" --experiment e2e_$1_seed$2 --log-interval 50
done
