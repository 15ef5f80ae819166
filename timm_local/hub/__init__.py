"""Publishing to the Hugging Face Hub: export a training run as a Hub folder, push it, list what is published.

    python -m timm_local.hub export <run-dir-or-checkpoint> [--name resnet32_man.k16_cifar10] [--bench-json B]
    python -m timm_local.hub push hub_cards/<name> [--repo-id <org>/<name>] [--dry-run]
    python -m timm_local.hub table [--update README.md]

Modules, one job each:
    settings   the Hub organisation, the hub_cards/ folder, the size limit for committed weights
    registry   which ``arch.tag`` names are published (one per hub_cards/ folder); what a tag names
    run        read a run folder (the trainer's run-directory contract)
    stats      parameters, GMACs and activations of the inference network, counted by running it
    memory     peak training memory vs E2E from a benchmark JSON
    card       the model card (README.md)
    export     rebuild the run's model and write config.json, model.safetensors and README.md
    push       upload a folder with huggingface_hub
    table      the markdown table of published models

Only ``settings`` and ``registry`` are imported here: the model files import the registry while
``timm_local`` is being imported, and the rest needs the models.
"""
from .registry import TagInfo, parse_tag, published_hub_ids, published_tags, tag_info
from .settings import hub_cards_dir, hub_org

__all__ = ["TagInfo", "hub_cards_dir", "hub_org", "parse_tag", "published_hub_ids", "published_tags", "tag_info"]
