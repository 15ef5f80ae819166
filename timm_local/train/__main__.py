"""``python -m timm_local.train [flags]``: the same trainer as the repository's train.py (used by the sweep runner)."""
from . import main

if __name__ == "__main__":
    main()
