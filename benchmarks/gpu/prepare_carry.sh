#!/usr/bin/env bash
# Make carry/ (git-ignored), the one folder the GPU evidence run needs beside the checkout:
#   carry/cifar10-jpeg/  a read-only copy of the CIFAR-10 parquet files (default source ../shared/datasets/cifar10-jpeg;
#                        read-only so that the decoded-tensor cache goes to the run's work folder, not into carry/)
#   carry/wheels/        the Python 3.12 x86-64 wheels the GPU image lacks, fetched with pip download:
#                        datasets and its pure-Python needs at versions that fit the image's huggingface_hub (1.33)
#                        and pyarrow, plus timm at the version pyproject.toml requires.
# Usage: bash benchmarks/gpu/prepare_carry.sh [CIFAR10_DIR]; then check that it printed "fits" (64 MiB per call).
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE="${1:-../shared/datasets/cifar10-jpeg}"
PYTHON="${PYTHON:-python3}"
WHEELS=(datasets==5.0.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.4.0 timm==1.0.31)
if [ ! -f "$SOURCE/README.md" ] || ! compgen -G "$SOURCE/plain_text/*.parquet" > /dev/null; then
    echo "error: $SOURCE is not a copy of uoft-cs/cifar10 (README.md + plain_text/*.parquet): pass its folder" >&2
    exit 2
fi
if [ -d carry ]; then chmod -R u+w carry; rm -rf carry; fi
mkdir -p carry/cifar10-jpeg carry/wheels
cp -r "$SOURCE"/README.md "$SOURCE"/plain_text carry/cifar10-jpeg/
chmod -R a-w carry/cifar10-jpeg
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d carry/wheels "${WHEELS[@]}"
carry_kib=$(du -sk carry | cut -f1)
tree_kib=$(git ls-files -z | xargs -0 du -ck 2> /dev/null | tail -1 | cut -f1)
total_mib=$(( (carry_kib + tree_kib) / 1024 ))
ls -l carry/wheels
echo "carry/ ${carry_kib} KiB + tracked tree ${tree_kib} KiB = ${total_mib} MiB of the 64 MiB a device call sends:" \
     "$([ "$total_mib" -lt 60 ] && echo fits || echo 'TOO LARGE: ignore or carry less')"
