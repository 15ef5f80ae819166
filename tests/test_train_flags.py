"""train.py's timm flags (issue 13, "train.py speaks timm"): each with timm's name and meaning.

Tiny in-process runs: DGL K=2, one epoch of 32 synthetic CIFAR-10 images, batch 16, on the CPU.
"""
import pytest
import timm
import torch

from timm_local.data import write_synthetic_copy
from timm_local.train import parse_args, train

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")

HUB_MODEL = "resnet32_dgl.k8_cpu10e_cifar10"  # weights in the repo's hub_cards/, loadable offline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_copy("cifar10", tmp_path_factory.mktemp("data") / "cifar10", num_train=32, num_eval=16))


def flags(tmp_path, data_dir, *extra, model="resnet32_dgl", experiment="run"):
    return ["--data-dir", data_dir, "--model", model, "--model-kwargs", "num_local_modules=2", "--epochs", "1",
            "-b", "16", "--output", str(tmp_path), "--experiment", experiment, "--bench-loader-batches", "0",
            "--log-interval", "1", *extra]


def run(tmp_path, data_dir, *extra, **kwargs):
    experiment = kwargs.get("experiment", "run")
    results = train(parse_args(flags(tmp_path, data_dir, *extra, **kwargs)))
    return results, torch.load(tmp_path / experiment / "last.pth.tar", weights_only=True)


def backbone_weights(state_dict):
    """The backbone's conv / linear weights (BatchNorm statistics move even at lr 0)."""
    return {k: v for k, v in state_dict.items() if not k.startswith("aux.") and k.endswith("weight") and v.dim() > 1}


# ---------------------------------------------------------------- model flags, --amp
def test_model_flags_become_create_model_kwargs_and_reach_the_checkpoint(tmp_path, data_dir):
    results, checkpoint = run(tmp_path, data_dir, "--num-classes", "12", "--img-size", "32", "--in-chans", "3",
                              "--drop-path", "0.1")
    assert checkpoint["model_kwargs"] == {"num_local_modules": 2, "num_classes": 12, "img_size": 32, "in_chans": 3,
                                          "drop_path_rate": 0.1}
    assert checkpoint["state_dict"]["fc.weight"].shape[0] == 12
    model = timm.create_model(checkpoint["arch"], **checkpoint["model_kwargs"])
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)  # the CIFAR ResNets' linear stochastic-depth rule


@pytest.mark.parametrize("extra,match", [
    (["--img-size", "32", "--model-kwargs", "img_size=64"], "--img-size 32 and --model-kwargs img_size=64 disagree"),
    (["--amp-dtype", "float16"], "--amp-dtype float16 needs --amp"),
    (["--amp", "--mixed-precision", "bf16"], "--amp and --mixed-precision bf16 both"),
    (["--resume", "x.pth.tar", "--pretrained"], "--pretrained / --initial-checkpoint would have no effect"),
])
def test_contradictory_flags_are_refused_in_one_line(tmp_path, data_dir, capsys, extra, match):
    with pytest.raises(SystemExit):
        parse_args(flags(tmp_path, data_dir, *extra))
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("extra,match", [
    (["--num-classes", "5"], "--num-classes 5 is below cifar10's 10 classes"),
    (["--in-chans", "1"], "--in-chans 1: the cifar10 images are RGB"),
])
def test_a_model_the_data_cannot_train_is_refused_before_training(tmp_path, data_dir, extra, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, data_dir, *extra)


def test_amp_is_bf16_where_native_and_refused_on_a_cpu_without_it(tmp_path, data_dir, monkeypatch):
    from timm_local import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    with pytest.raises(ValueError, match="--amp on this CPU: it has no native bf16"):
        run(tmp_path, data_dir, "--amp", experiment="refused")
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: True)
    results, checkpoint = run(tmp_path, data_dir, "--amp", experiment="native")
    assert results["mixed_precision"] == "bf16" and checkpoint["args"]["mixed_precision"] == "bf16"


def test_amp_dtype_is_taken_as_given(tmp_path, data_dir):
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):  # float16 on the CPU: as before
        run(tmp_path, data_dir, "--amp", "--amp-dtype", "float16")


# ---------------------------------------------------------------- starting weights
def test_initial_checkpoint_sets_the_starting_weights_only(tmp_path, data_dir):
    source = timm.create_model("resnet32_dgl", num_local_modules=2, num_classes=10)
    with torch.no_grad():
        for p in source.backbone.parameters():
            p.add_(1.0)  # unlike any fresh initialisation
    path = tmp_path / "init.pth"
    torch.save({"state_dict": source.backbone.state_dict()}, path)  # backbone only, as a timm checkpoint
    results, checkpoint = run(tmp_path, data_dir, "--initial-checkpoint", str(path), "--lr", "0", "--weight-decay", "0")
    expected = backbone_weights(source.state_dict())
    assert expected.keys() == backbone_weights(checkpoint["state_dict"]).keys()
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in expected.items())
    assert checkpoint["epoch"] == 0 and results["resumes"] == []  # a new run, not a resume


def test_pretrained_loads_the_hub_weights(tmp_path, data_dir):
    results, checkpoint = run(tmp_path, data_dir, "--pretrained", "--lr", "0", "--weight-decay", "0",
                              model=HUB_MODEL)
    reference = timm.create_model(HUB_MODEL, pretrained=True, num_local_modules=2)
    expected = backbone_weights(reference.state_dict())
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in expected.items())
    fresh = backbone_weights(timm.create_model(HUB_MODEL, num_local_modules=2).state_dict())
    assert not all(torch.equal(fresh[k], v) for k, v in expected.items())


# ---------------------------------------------------------------- gradients: clipping, accumulation, smoothing
def _step_setup(seed=0):
    """A DGL K=2 model in eval mode (BatchNorm statistics fixed, so micro-batches add up exactly) and its pieces."""
    from accelerate import Accelerator

    from timm_local.train.distributed import GradientSync
    from timm_local.train.optim import create_optimizer

    torch.manual_seed(seed)
    model = timm.create_model("resnet32_dgl", num_local_modules=2, num_classes=10).eval()
    args = parse_args(["--lr", "1", "--momentum", "0", "--weight-decay", "0", "--opt", "momentum"])
    optimizer = create_optimizer(model, args)
    return model, list(model.local_modules), optimizer, GradientSync([], enabled=False), Accelerator(cpu=True)


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_clip_grad_bounds_every_local_module_on_its_own_before_the_step():
    from timm_local.train.loop import StepOptions, train_step

    model, modules, optimizer, sync, accelerator = _step_setup()
    norms = []
    optimizer.step = lambda: norms.append([torch.cat([p.grad.flatten() for p in g["params"]]).norm().item()
                                           for g in optimizer.param_groups])
    x, y = _batch()
    train_step(model, modules, optimizer, sync, accelerator, x, y, StepOptions())
    train_step(model, modules, optimizer, sync, accelerator, x, y, StepOptions(clip_grad=0.01))
    unclipped, clipped = norms
    assert len(clipped) == 2 and min(unclipped) > 0.01
    assert clipped == pytest.approx([0.01, 0.01], rel=1e-4)


def test_grad_accumulation_steps_once_with_the_mean_gradient_of_its_micro_batches():
    from timm_local.train.loop import StepOptions, accumulation_plan, train_step

    x, y = _batch()
    whole, modules, optimizer, sync, accelerator = _step_setup()
    train_step(whole, modules, optimizer, sync, accelerator, x, y, StepOptions())
    accumulated, modules, optimizer, sync, accelerator = _step_setup()
    steps = []
    real_step = optimizer.step
    optimizer.step = lambda: steps.append(1) or real_step()
    for (xs, ys), (divisor, step_now) in zip(zip(x.chunk(2), y.chunk(2)), accumulation_plan(2, 2)):
        train_step(accumulated, modules, optimizer, sync, accelerator, xs, ys, StepOptions(), divisor, step_now)
    assert steps == [1]
    for (name, a), b in zip(whole.named_parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_accumulation_plan_divides_a_short_last_group_by_its_own_length():
    from timm_local.train.loop import accumulation_plan

    assert list(accumulation_plan(5, 2)) == [(2, False), (2, True), (2, False), (2, True), (1, True)]
    assert list(accumulation_plan(3, 1)) == [(1, True)] * 3


def test_smoothing_reaches_every_cross_entropy_local_loss_and_the_classifier():
    import torch.nn.functional as F

    model = timm.create_model("resnet32_dgl", num_local_modules=2, num_classes=10).eval()
    x, y = _batch()
    with torch.no_grad():
        logits, plain = model.forward_local(x, y)
        _, smoothed = model.forward_local(x, y, label_smoothing=0.1)
    assert smoothed[-1].item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)
    assert all(abs(a.item() - b.item()) > 1e-4 for a, b in zip(plain, smoothed))  # the aux CE too


def test_clip_accumulation_and_smoothing_train_end_to_end(tmp_path, data_dir):
    results, checkpoint = run(tmp_path, data_dir, "--clip-grad", "1", "--clip-mode", "agc", "--grad-accum-steps", "2",
                              "--smoothing", "0.1")
    assert {k: checkpoint["args"][k] for k in ("clip_grad", "clip_mode", "grad_accum_steps", "smoothing")} == \
        {"clip_grad": 1.0, "clip_mode": "agc", "grad_accum_steps": 2, "smoothing": 0.1}
    assert results["eval_loss_final"] == pytest.approx(results["eval_loss_final"])  # finite: NaN != NaN


# ---------------------------------------------------------------- mixup / cutmix, model EMA
def test_mixup_and_cutmix_train_every_local_loss_on_soft_targets(tmp_path, data_dir, monkeypatch):
    from timm_local.train import loop

    targets = []
    real_step = loop.train_step

    def spy(model, modules, optimizer, sync, accelerator, x, y, *rest):
        targets.append(y)
        return real_step(model, modules, optimizer, sync, accelerator, x, y, *rest)

    monkeypatch.setattr(loop, "train_step", spy)
    results, _ = run(tmp_path, data_dir, "--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1")
    assert len(targets) == 2 and all(t.shape == (16, 10) for t in targets)
    assert all(torch.allclose(t.sum(dim=1), torch.ones(16)) for t in targets)
    assert all((t.max(dim=1).values < 1).all() for t in targets)  # mixed, not one-hot
    assert results["eval_loss_final"] == pytest.approx(results["eval_loss_final"])  # finite


def test_mixup_is_refused_for_a_contrastive_local_loss(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"contrastive \(SupCon\) local loss of infopro .*local_loss=ce"):
        run(tmp_path, data_dir, "--mixup", "0.8", model="resnet32_infopro")


def test_model_ema_is_evaluated_and_checkpointed_as_timm_does(tmp_path, data_dir, capsys):
    from accelerate.state import AcceleratorState

    from timm_local.validate import main as validate_main

    results, checkpoint = run(tmp_path, data_dir, "--model-ema", "--model-ema-decay", "0.5")
    ema, weights = checkpoint["state_dict_ema"], checkpoint["state_dict"]
    assert ema.keys() == {k for k in weights if not k.startswith("aux.")}
    assert any(not torch.equal(v, weights[k]) for k, v in ema.items())
    assert "model without EMA: eval top1" in capsys.readouterr().out
    path = tmp_path / "ema.pth"
    torch.save({"state_dict": ema}, path)
    AcceleratorState._reset_state(reset_partial_state=True)
    validated = validate_main(["--model", "resnet32_dgl", "--model-kwargs", "num_local_modules=2", "--checkpoint",
                               str(path), "--data-dir", data_dir, "--workers", "0"])
    assert validated["top1"] == pytest.approx(results["top1_final"])  # the run's metrics are the EMA's
    assert validated["loss"] == pytest.approx(results["eval_loss_final"], rel=1e-5)
    model = timm.create_model("resnet32_dgl", num_local_modules=2)
    timm.models.load_checkpoint(model, str(tmp_path / "run" / "last.pth.tar"), use_ema=True)  # timm reads it
    AcceleratorState._reset_state(reset_partial_state=True)
    with_ema = validate_main(["--checkpoint", str(tmp_path / "run" / "last.pth.tar"), "--use-ema",
                              "--data-dir", data_dir, "--workers", "0"])  # timm's validate.py --use-ema
    assert (with_ema["top1"], with_ema["loss"]) == (validated["top1"], validated["loss"]) and with_ema["use_ema"]


def test_use_ema_on_a_checkpoint_without_ema_is_refused(tmp_path, data_dir, capsys):
    from timm_local.validate import main as validate_main

    run(tmp_path, data_dir)
    with pytest.raises(SystemExit):
        validate_main(["--checkpoint", str(tmp_path / "run" / "last.pth.tar"), "--use-ema", "--data-dir", data_dir])
    assert "holds no EMA weights (state_dict_ema, written by train.py --model-ema)" in capsys.readouterr().err


# ---------------------------------------------------------------- a timm args.yaml with -c, --log-wandb
def timm_args_yaml(tmp_path, **changes):
    """An args.yaml as timm's train.py writes it: every key, ours among them, at timm's values unless changed."""
    import yaml

    from timm_local.train.timm_keys import TIMM_TRAIN_DEFAULTS

    config = {**TIMM_TRAIN_DEFAULTS, "amp": False, "amp_dtype": "float16", "smoothing": 0.1, "mixup": 0.0,
              "cutmix": 0.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch", "model_ema": False,
              "model_ema_decay": 0.9998, "clip_grad": None, "clip_mode": "norm", "grad_accum_steps": 1,
              "num_classes": None, "img_size": None, "in_chans": None, "drop_path": None, "pretrained": False,
              "initial_checkpoint": "", "log_wandb": False, "batch_size": 16, "epochs": 3, **changes}
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_timm_args_yaml_at_timm_defaults_is_read_and_its_values_used(tmp_path):
    args = parse_args(["-c", timm_args_yaml(tmp_path)])
    assert (args.smoothing, args.batch_size, args.epochs, args.amp, args.amp_dtype) == (0.1, 16, 3, False, None)


def test_a_timm_args_yaml_names_every_unsupported_key_in_one_line(tmp_path):
    path = timm_args_yaml(tmp_path, hflip=0.0, aa="rand-m9-mstd0.5", sync_bn=True)
    with pytest.raises(ValueError) as error:
        parse_args(["-c", path])
    message = str(error.value)
    assert "\n" not in message
    assert "3 timm train.py key(s) are not supported by timm_local's train.py: " in message
    assert all(part in message for part in ("hflip=0.0", "aa='rand-m9-mstd0.5'", "sync_bn=True"))


def test_a_null_value_for_a_flag_that_needs_one_is_named(tmp_path):
    with pytest.raises(ValueError, match="config key 'epochs' is null"):
        parse_args(["-c", timm_args_yaml(tmp_path, epochs=None)])


def test_a_timm_args_yaml_with_lr_null_takes_the_lr_from_lr_base_as_timm(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = parse_args(["-c", timm_args_yaml(tmp_path, lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale="")])
    assert args.lr == pytest.approx(0.1 * 16 / 256)


@pytest.mark.parametrize("flags,world,expected", [
    ([], 1, 0.1),  # the default: the papers' 0.1 at batch 128
    (["-b", "1024"], 1, 0.8),
    (["-b", "64", "--grad-accum-steps", "2"], 4, 0.4),  # global batch 512
    (["--opt", "adamw", "-b", "64"], 1, 0.2 * 0.5),  # sqrt for adaptive optimizers
    (["--lr-base-scale", "linear", "--opt", "lamb", "-b", "64"], 1, 0.05),
    (["--lr", "0.03", "-b", "1024"], 1, 0.03),  # --lr wins
])
def test_lr_follows_lr_base_and_the_global_batch_as_timm(flags, world, expected, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert parse_args(flags).lr == pytest.approx(expected)


@pytest.mark.parametrize("device,match", [
    ("cuda:1", "CUDA_VISIBLE_DEVICES=1 and --device cuda"),
    ("tpu", "timm_local trains on 'cpu' or 'cuda'"),
])
def test_device_flags_that_cannot_be_honoured_say_what_to_do(device, match, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", device])
    assert match in capsys.readouterr().err


def test_device_cpu_is_cpu_and_cuda_needs_a_gpu(capsys):
    assert parse_args(["--device", "cpu"]).cpu is True
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parse_args(["--device", "cuda"])
        assert "no CUDA GPU is visible here; use --device cpu" in capsys.readouterr().err


def test_log_wandb_is_log_with_wandb():
    assert parse_args(["--log-wandb"]).log_with == ["wandb"]
    assert parse_args(["--log-wandb", "--log-with", "tensorboard"]).log_with == ["tensorboard", "wandb"]


# ---------------------------------------------------------------- accelerate launch --cpu --num_processes N
@pytest.mark.parametrize("cmdline,expected", [
    (["accelerate", "launch", "--cpu", "--num_processes", "4", "train.py"], 4),
    (["accelerate", "launch", "--num-processes=2", "--cpu", "train.py"], 2),
    (["accelerate", "launch", "--multi_gpu", "--cpu", "--num_processes", "4", "train.py"], None),
    (["accelerate", "launch", "--cpu", "train.py"], None),
])
def test_a_cpu_launch_that_left_one_process_says_how_to_get_n(monkeypatch, cmdline, expected):
    from timm_local.train.distributed import single_cpu_process_warning

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    warning = single_cpu_process_warning(1, cmdline)
    if expected is None:
        assert warning is None
    else:
        assert f"started 1 process, not {expected}" in warning
        assert f"accelerate launch --multi_gpu --num_processes {expected} train.py --cpu" in warning
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert single_cpu_process_warning(1, cmdline) is None  # not started by accelerate launch --cpu


def test_resume_restores_the_ema(tmp_path, data_dir):
    """2 epochs straight vs 1 epoch + ``--resume`` to 2: the same EMA (a fresh EMA of the resumed weights differs)."""
    from accelerate.state import AcceleratorState

    common = ["--model-ema", "--model-ema-decay", "0.5", "--sched", "step", "--warmup-epochs", "0"]
    straight = train(parse_args(flags(tmp_path, data_dir, *common, "--epochs", "2", experiment="straight")))
    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args(flags(tmp_path, data_dir, *common, experiment="split")))
    AcceleratorState._reset_state(reset_partial_state=True)
    last = tmp_path / "split" / "last.pth.tar"
    resumed = train(parse_args(["--resume", str(last), "--data-dir", data_dir, "--epochs", "2", "-b", "16",
                                "--bench-loader-batches", "0", "--log-interval", "1", *common]))
    a = torch.load(tmp_path / "straight" / "last.pth.tar", weights_only=True)["state_dict_ema"]
    b = torch.load(last, weights_only=True)["state_dict_ema"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert resumed["top1_final"] == straight["top1_final"]


def test_weights_that_do_not_exist_or_fit_are_one_line_errors(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"--pretrained: resnet32_dgl.cifar10 has no published weights; .*"
                                         r"resnet32_dgl.k8_cpu10e_cifar10"):
        run(tmp_path, data_dir, "--pretrained")
    path = tmp_path / "resnet110.pth"
    torch.save({"state_dict": timm.create_model("resnet110_dgl", num_local_modules=2).backbone.state_dict()}, path)
    with pytest.raises(ValueError, match=r"--initial-checkpoint .*resnet110.pth does not fit --model resnet32_dgl .*"
                                         r"unexpected keys \['layer1.5"):
        run(tmp_path, data_dir, "--initial-checkpoint", str(path))


# ---------------------------------------------------------------- the default thread count
@pytest.mark.parametrize("cpus,load,processes,expected", [
    (2, 0.1, 1, 2),  # idle: every core
    (2, 1.2, 1, 1),  # one core busy
    (2, 5.2, 1, 1),  # oversubscribed: still one
    (16, 4.0, 1, 12),
    (16, 0.0, 4, 4),  # four training processes share the cores
])
def test_the_default_threads_are_the_free_cores(cpus, load, processes, expected):
    from timm_local.train.threads import free_cpu_threads

    assert free_cpu_threads(cpus, load, processes) == expected


def test_threads_flag_then_omp_num_threads_then_the_free_cores(monkeypatch):
    from timm_local.train import threads

    assert threads.choose_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads(None) == (torch.get_num_threads(), "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "busy_cpus", lambda: 7.0)
    assert threads.choose_threads(None)[0] == 1
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        threads.choose_threads(0)


def test_busy_cpus_reads_the_idle_share_of_proc_stat(tmp_path, monkeypatch):
    from timm_local.train import threads

    stat = tmp_path / "stat"
    reads = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 100 850 0 0 0 0 0 0\n"])  # 150 busy of 200 ticks

    def fake_sleep(_):
        stat.write_text(next(reads))

    stat.write_text(next(reads))
    monkeypatch.setattr(threads.time, "sleep", fake_sleep)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.busy_cpus(stat=str(stat)) == pytest.approx(1.5)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.25, 0.0, 0.0))
    assert threads.busy_cpus(stat=str(tmp_path / "missing")) == 0.25


def test_train_uses_and_reports_the_thread_count(tmp_path, data_dir, capsys):
    previous = torch.get_num_threads()
    try:
        results, _ = run(tmp_path, data_dir, "--threads", "1")
        assert "1 CPU thread(s) per process (--threads)" in capsys.readouterr().out
        assert results["threads"] == 1
    finally:
        torch.set_num_threads(previous)
