"""``python -m timm_local.bench``: see :mod:`timm_local.bench.cli`."""
from .cli import main

raise SystemExit(main())
