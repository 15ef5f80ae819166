"""What of timm's tests/test_models.py runs on our models (issue 13, "Run timm's own test file in CI").

Every test of timm's file that is parametrized over ``timm.list_models(...)`` runs on NAMES (timm's own
filters — exclude_filters, name_matches_cfg, module= — still apply, see timm_plugin.py), except the ones in
EXCLUDED, each with its reason. Tests of timm's file that name fixed timm models (``'resnet18'``,
``_SWIN_FAMILY``, ...) test timm, not us: the plugin deselects them and prints how many.
"""

# One representative per (architecture family × method): the CIFAR ResNet, the ImageNet ResNet with basic
# blocks and with bottlenecks (whose default split is measured), the small-image ViT and the 224-px ViT,
# each with all six methods (end-to-end baseline, greedy SL, DGL, InfoPro, MAN, MLAAN). The deeper variants
# (resnet101/152, resnext101, resnet110, vit_small/base) share their code with these (same LocalNet,
# describers, aux-net builders, split rules): they add minutes, not paths.
METHODS = ("e2e", "greedy", "dgl", "infopro", "man", "mlaan")
ARCHS = ("resnet32", "resnet34", "resnet50", "vit_tiny_patch4_32", "vit_tiny_patch16_224")
NAMES = [f"{arch}_{method}" for arch in ARCHS for method in METHODS]

LOCAL = [f"*_{method}" for method in METHODS if method != "e2e"]  # more than one local module

# timm test function -> (the names it is excluded for, as fnmatch patterns; why).
EXCLUDED = {
    "test_model_inference": (["*"], "network: downloads timm/<model>/test/*.safetensors from the Hugging Face "
                                    "Hub (and is parametrized over list_pretrained('test_*'), timm's test models only)"),
    "test_model_load_pretrained": (["*"], "network: create_model(pretrained=True) downloads the weights of every "
                                          "pretrained tag from the Hugging Face Hub"),
    "test_model_features_pretrained": (["*"], "network: create_model(pretrained=True, features_only=True) "
                                              "downloads weights from the Hugging Face Hub"),
    "test_model_backward_fx": (LOCAL, "fx traces model.forward, the plain inference path, so the aux nets are not "
                                      "in the graph and the test's count of parameters with a gradient cannot "
                                      "match; local learning's gradients come from local_step, which "
                                      "test_model_backward checks through LocalStepForward (timm_plugin.py). "
                                      "The *_e2e names run it. Issue 13 item 8 (fx on the plain forward)"),
    "test_prune_intermediate_layers_contract": (["*"], "LocalNet has no prune_intermediate_layers(): every block "
                                                       "belongs to a local module (issue 13 item 8, "
                                                       "forward_intermediates delegates without pruning); timm's "
                                                       "own CI does not run this test either (no marker, 'slow')"),
}
