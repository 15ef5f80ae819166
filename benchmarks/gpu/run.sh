#!/usr/bin/env bash
# The prepared GPU evidence run (issue 11): bash benchmarks/gpu/run.sh OUT_DIR [--smoke] [options]
# Paths are relative to the repository root. Without --smoke, the wheels in carry/wheels (made by
# benchmarks/gpu/prepare_carry.sh: datasets and the pins it needs, which the GPU image lacks) are installed into
# /tmp/timm_local_site first and put ahead on PYTHONPATH.
# Everything else is python -m timm_local.evidence (see --help and benchmarks/gpu/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
if [ "$#" -lt 1 ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--smoke] [--help for the options]" >&2
    exit 2
fi
smoke=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && smoke=1; done
if [ "$smoke" = 0 ] && compgen -G "carry/wheels/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/timm_local_site carry/wheels/*.whl
    export PYTHONPATH="/tmp/timm_local_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PYTHON" -m timm_local.evidence "$@"
