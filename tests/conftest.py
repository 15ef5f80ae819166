"""Shared fixtures: deterministic CPU runs, small batches."""
import pytest
import torch

import timm_local  # noqa: F401  (registers the models)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def batch(n: int = 4, size: int = 32, classes: int = 10, seed: int = 0):
    """A fixed random image batch and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
