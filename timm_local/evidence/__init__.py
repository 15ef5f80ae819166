"""The prepared GPU evidence run (issue 11): one command, three parts, at most 8 files back.

``bash benchmarks/gpu/run.sh OUT_DIR`` (= ``python -m timm_local.evidence OUT_DIR``), in order:

1. memory and speed of InfoPro Table 3's setting and of ImageNet-size ResNet-101 / ViT-S, through the
   benchmark harness (:mod:`timm_local.bench`, every configuration in a fresh process);
2. CIFAR-10 training of ResNet-32 with every method at the papers' K=16 and K=8, through the sweep
   runner (:mod:`timm_local.sweep`), for a same-for-all schedule sized by a throughput probe
   (:mod:`.probe`, :mod:`.sizing`);
3. the hub export of every finished run and the packing of everything into ``OUT_DIR``
   (:mod:`.pack`).

``--smoke`` runs the same code path on the CPU at tiny sizes in under two minutes (tests/test_evidence.py).
What is measured and run is declared in :mod:`.plan`; benchmarks/gpu/README.md says how to run it.
"""
