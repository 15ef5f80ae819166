"""A short run on the real CIFAR-10 (the shared JPEG copy): train.py learns, well above chance.

resnet32_dgl, K=4, the first 5,000 training images, 2 epochs, batch 64, lr 0.1 with timm's cosine
(no warm-up), evaluated on the first 1,000 test images. Measured on the 2-core CPU machine: 31.6%
top-1 after epoch 2 with one thread (as here), 29.1% with two threads (another summation order);
chance is 10%. The run is seeded and CPU kernels are deterministic, and the binomial standard error
of a 1,000-image accuracy near 30% is ~1.4 points, so asserting > 20% leaves a margin of ~9 points
for numeric differences across machines while still failing for a trainer that does not learn.

The slow test of the suite: ~90 s with one thread (125 images/s); ``TIMM_LOCAL_SKIP_SLOW=1`` skips it.
"""
import json
import os

import pytest
from accelerate.state import AcceleratorState

from timm_local.train import parse_args, train

pytestmark = pytest.mark.usefixtures("one_thread")

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets",
                        "cifar10-jpeg")


@pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason="the shared CIFAR-10 copy is not next to the repository")
@pytest.mark.skipif(os.environ.get("TIMM_LOCAL_SKIP_SLOW") == "1", reason="TIMM_LOCAL_SKIP_SLOW=1")
@pytest.mark.slow
def test_real_cifar10_short_run_learns(tmp_path):
    AcceleratorState._reset_state(reset_partial_state=True)
    args = parse_args(["--dataset", "cifar10", "--data-dir", DATA_DIR, "--model", "resnet32_dgl",
                       "--model-kwargs", "num_local_modules=4", "--epochs", "2", "--max-train-samples", "5000",
                       "--max-eval-samples", "1000", "-b", "64", "--lr", "0.1", "--sched", "cosine",
                       "--warmup-epochs", "0", "--output", str(tmp_path), "--experiment", "real"])
    results = train(args)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert results["top1_final"] > 20.0, results
    assert json.loads((tmp_path / "real" / "results.json").read_text())["top1_final"] == results["top1_final"]
