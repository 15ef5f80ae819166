"""The keys of timm train.py's ``args.yaml`` that timm_local's train.py has no flag for, with timm's defaults.

``-c timm_run/args.yaml`` reads a file timm's train.py wrote (timm 1.0). The rule (README "Training"):
a key we have a flag for is used; one of these keys whose value is timm's default is ignored, since it
asks for nothing beyond timm's default behaviour (the augmentation keys among them describe timm's
ImageNet pipeline, which our loaders replace with the papers' per-dataset pipeline, README "Data");
one with any other value is an error that names every such key in one line.
"""
from __future__ import annotations

TIMM_TRAIN_DEFAULTS = {
    # data
    "data": None, "train_split": "train", "val_split": "validation", "train_num_samples": None,
    "val_num_samples": None, "dataset_download": False, "class_map": "", "input_img_mode": None, "input_key": None,
    "target_key": None, "dataset_trust_remote_code": False,
    # model
    "pretrained_path": None, "no_resume_opt": False, "gp": None, "input_size": None, "crop_pct": None, "mean": None,
    "std": None, "interpolation": "", "fuser": "", "fast_norm": False, "head_init_scale": None,
    "head_init_bias": None, "torchscript": False, "model_dtype": None,
    # device
    "amp_impl": "native", "no_ddp_bb": False, "synchronize_step": False, "local_rank": 0,
    "device_modules": None,
    # optimizer
    "opt_eps": None, "opt_betas": None, "layer_decay": None, "opt_kwargs": {},
    # schedule
    "sched_on_updates": False, "lr_noise": None,
    "lr_noise_pct": 0.67, "lr_noise_std": 1.0, "lr_cycle_mul": 1.0, "lr_cycle_decay": 0.5, "lr_cycle_limit": 1,
    "lr_k_decay": 1.0, "epoch_repeats": 0.0, "start_epoch": None, "decay_milestones": [90, 180, 270],
    "decay_epochs": 90, "warmup_prefix": False, "cooldown_epochs": 0, "patience_epochs": 10, "decay_rate": 0.1,
    # augmentation and regularisation
    "no_aug": False, "train_crop_mode": None, "scale": [0.08, 1.0], "ratio": [3.0 / 4.0, 4.0 / 3.0], "hflip": 0.5,
    "vflip": 0.0, "color_jitter": 0.4, "color_jitter_prob": None, "grayscale_prob": None,
    "gaussian_blur_prob": None, "aa": None, "aug_repeats": 0, "aug_splits": 0, "jsd_loss": False, "bce_loss": False,
    "bce_sum": False, "bce_target_thresh": None, "bce_pos_weight": None, "reprob": 0.0, "remode": "pixel",
    "recount": 1, "resplit": False, "cutmix_minmax": None, "mixup_off_epoch": 0, "train_interpolation": "random",
    "drop": 0.0, "drop_connect": None, "drop_block": None,
    # batch norm
    "bn_momentum": None, "bn_eps": None, "sync_bn": False, "dist_bn": "reduce", "split_bn": False,
    # model EMA
    "model_ema_force_cpu": False, "model_ema_warmup": False,
    # misc
    "worker_seeding": "all", "recovery_interval": 0, "checkpoint_hist": 10, "save_images": False, "pin_mem": False,
    "no_prefetcher": False, "eval_metric": "top1", "tta": 0, "use_multi_epochs_loader": False,
    "wandb_project": None, "wandb_tags": [], "wandb_resume_id": "",
}
