#!/usr/bin/env bash
# timm's own tests/test_models.py, from the sdist of the installed timm, on our names (.ci/timm_tests/).
# Extra arguments go to pytest (e.g. -k backward, -x). Needs the package index; never downloads weights.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export HF_HUB_OFFLINE=1
version="$(python -c 'import timm; print(timm.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip download -q --no-deps --no-binary :all: "timm==$version" -d "$work"
tar -xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/tests/test_models.py"
cd "$work/timm-$version/tests"
PYTHONPATH="$repo/.ci/timm_tests:$repo${PYTHONPATH:+:$PYTHONPATH}" \
  python -m pytest -p timm_plugin -c /dev/null --rootdir . -q -ra -p no:cacheprovider test_models.py "$@"
