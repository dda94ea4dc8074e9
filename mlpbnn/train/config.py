"""The configuration every experiment starts from, and its validation.

``configs/*.py`` call ``base_config()`` and change what they need; the command line overrides
any field (``--config.optimizer.learning_rate=1e-3``). ``validate`` runs before any compilation
and raises ``ConfigError`` naming the field and the valid choices.

Top-level fields, as in flax's examples: ``seed``, ``batch_size`` (global, over all devices and
hosts), ``num_train_steps`` (-1: from ``num_epochs``), ``log_every_steps``, ``eval_every_steps``,
``checkpoint_every_steps``, ``task`` (``mlpbnn.tasks``), ``best_metric``, and the groups ``model``,
``estimator``, ``data``, ``optimizer``,
``loss``, ``teacher``, ``two_stage``; pose configs add ``eval`` (``keypoints_config``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from mlpbnn import data, estimators, models, tasks
from mlpbnn.binary import as_rules, format_rules
from mlpbnn.registry import SectionError, from_section, section_dict
from mlpbnn.train.evaluation import EvalEntry

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine", "step")
SCHEDULE_UNITS = ("step", "epoch")
WEIGHT_DECAY_MODES = ("l2", "decoupled")
DTYPES = ("float32", "bfloat16")
PARTITIONS = ("binary_kernel", "real_kernel", "other")


class ConfigError(ValueError):
    """A configuration field has a bad value; the message names the field."""


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """One optimizer with its learning-rate schedule.

    schedule: constant | linear (to zero at the end) | cosine | step (x gamma at each milestone).
    schedule_unit: 'step' (smooth) or 'epoch' (piecewise constant per epoch, PyTorch-style);
    milestones are in schedule units. epoch_start_quirk: the official BBC/ReActNet scripts call
    scheduler.step() at the *start* of every epoch, so epoch e runs at the value for e + 1 (the
    last epoch of a linear decay at lr 0); reproduce that only on request (epoch unit only).
    weight_decay_mode: 'l2' adds wd * w to the gradient (torch.optim.Adam), 'decoupled' is AdamW.
    """
    c = ml_collections.ConfigDict({
        "name": "adam", "learning_rate": 1e-3, "schedule": "constant", "schedule_unit": "step",
        "epoch_start_quirk": False, "warmup_steps": 0, "milestones": (), "gamma": 0.1,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum": 0.9, "nesterov": False,
        "weight_decay": 0.0, "weight_decay_mode": "l2", "grad_clip_norm": 0.0,
    })
    c.update(overrides)
    return c


def default_cache_dir() -> str:
    """The per-user compilation cache, $XDG_CACHE_HOME/mlpbnn/jax (~/.cache/mlpbnn/jax). JAX's own
    $JAX_COMPILATION_CACHE_DIR, where set, takes precedence (the tests' session cache)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlpbnn", "jax")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128               # global batch over all devices and hosts
    c.eval_batch_size = -1           # -1: batch_size
    c.num_epochs = 1.0
    c.num_train_steps = -1           # -1: from num_epochs
    c.log_every_steps = 50
    c.eval_every_steps = -1          # -1: evaluate at the end only
    c.checkpoint_every_steps = 500   # also at the end; must be a multiple of log_every_steps
    c.keep_checkpoints = 3           # the last k in workdir/checkpoints
    c.task = "classification"        # mlpbnn.tasks: what the loss, metrics and evaluation are
    c.best_metric = "auto"           # eval metric whose best checkpoint is kept ('auto': the task's; '' none)
    c.dtype = "float32"              # compute dtype: bfloat16 keeps params, BN stats, estimator, loss f32
    c.num_devices = -1               # -1: every device of every host
    c.init_checkpoint = ""           # variables checkpoint to start from (python -m mlpbnn.convert ...)
    c.init_strict = True             # False: take the checkpoint's variables the model has (an ImageNet
                                     # backbone for a pose model), keep the others' init, ignore the rest
    c.progress_bar = True
    c.max_runtime = 0.0              # seconds of wall time, then a graceful stop (0: no limit); for schedulers
    # JAX's persistent compilation cache (restarts load the compiled steps); '' turns it off.
    c.compilation_cache_dir = default_cache_dir()
    c.profile_steps = 0              # >0: a jax.profiler trace of that many steps in workdir/profile
    # Named evaluations beside the main one (mlpbnn.train.evaluation.EvalEntry), e.g. COCO's
    # detector boxes at the end: c.evals.det = {"source": "det", "every_steps": 0}.
    c.evals = ml_collections.ConfigDict()

    # name: a zoo model plus models.create overrides, or a model of your own, "package.module:Factory",
    # with model.kwargs = {...} for the factory; model.binarize: rules that binarize its layers
    # (mlpbnn.binarize: Rule objects, or the text form "Conv@stem=real;Dense=real;Conv=mlp/approx_sign").
    c.model = ml_collections.ConfigDict({"name": "bireal_resnet18"})
    # Estimators as NAME or NAME(key=value, ...), e.g. "mlp(init='positive')"; "none": real values.
    c.estimator = ml_collections.ConfigDict({"weights": "mlp", "activations": "approx_sign", "share": True})
    c.data = data.section("digits")  # a dataset's section: its registered dataclass (mlpbnn.data)

    c.optimizer = optimizer_config()
    # Per-partition settings of the main optimizer: lr multiplier and weight decay (None: the
    # optimizer's). binary_kernel: latent weights of binary layers; real_kernel: real conv and
    # dense kernels; other: biases, BN, PReLU and learnable shifts.
    c.optimizer.partitions = ml_collections.ConfigDict({
        p: {"lr_mult": 1.0, "weight_decay": config_dict.placeholder(float)} for p in PARTITIONS})
    # The binary kernels may use Bop instead (name='bop', arXiv 1906.02107; mlpbnn.train.optim.bop):
    # adaptivity rate gamma and flip threshold, each with a schedule (constant | linear | cosine |
    # step: x decay at each of milestones, in the main optimizer's schedule_unit); larq's defaults.
    c.optimizer.partitions.binary_kernel.update({
        "name": "", "gamma": 1e-4, "threshold": 1e-8, "gamma_schedule": "constant",
        "threshold_schedule": "constant", "milestones": (), "decay": 0.1})
    # The learnable estimator's parameters have an optimizer of their own.
    c.optimizer.estimator = optimizer_config()

    c.loss = ml_collections.ConfigDict({"label_smoothing": 0.0})
    # Knowledge distillation from a frozen teacher: alpha * soft CE(teacher, student) + (1 - alpha) * CE.
    # checkpoint: a variables checkpoint directory (python -m mlpbnn.convert, or a run's
    # workdir/variables) or a PyTorch .pth/.pth.tar file of teacher.model.
    c.teacher = ml_collections.ConfigDict({"checkpoint": "", "model": "", "alpha": 0.9, "temperature": 1.0})
    # Two-stage training (ReActNet): binary activations with real weights for stage1_fraction of
    # the steps, then both binary, initialised from stage one, each stage with its own schedule.
    c.two_stage = ml_collections.ConfigDict({
        "enabled": False, "stage1_fraction": 0.5, "stage1_weight_decay": config_dict.placeholder(float)})
    return c


def keypoints_config(c: ml_collections.ConfigDict, dataset: str = "coco") -> ml_collections.ConfigDict:
    """Adds the keypoints task's sections to a base config, at HRNet's COCO values
    (``w32_256x192_adam_lr1e-3.yaml``): ``data`` from ``dataset``'s section (``mlpbnn.data.coco``:
    ``CocoConfig``, ``SyntheticPoseConfig``), ``eval`` from ``mlpbnn.pose.eval_config``."""
    c.task = "keypoints"
    c.best_metric = "AP"
    c.data = data.section(dataset)
    for name, section in tasks.TASKS.get("keypoints").sections.items():
        c[name] = section_dict(section)
    # Heatmap distillation: (1 - alpha) * heatmap MSE + alpha * KD, KD 'mse' or 'kl' (spatial softmax).
    c.teacher.alpha = 0.5
    c.teacher.loss = "mse"
    return c


def _fail(field: str, problem: str) -> None:
    raise ConfigError(f"config.{field}: {problem}")


def _choice(config: Any, field: str, valid: tuple[str, ...]) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    if value not in valid:
        _fail(field, f"{value!r} is not valid; choose one of {', '.join(valid)}")


def _positive(config: Any, field: str, allow: tuple = ()) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    if value in allow:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        _fail(field, f"must be > 0{' or ' + ' or '.join(map(str, allow)) if allow else ''}, got {value!r}")


def _in_range(group: Any, field: str, key: str, low: float, high: float, note: str = "",
              upper_open: bool = False) -> None:
    """``group[key]`` must be a finite number in [low, high] (or [low, high) with ``upper_open``)."""
    value = group[key]
    ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value and (value < high if upper_open else value <= high))
    if not ok:
        bound = "inf)" if math.isinf(high) else f"{high:g}{')' if upper_open else ']'}"
        _fail(f"{field}.{key}", f"must be a finite number in [{low:g}, {bound}"
                                f"{' ' + note if note else ''}, got {value!r}")


def _check_optimizer(opt: Any, field: str) -> None:
    for key, valid in (("name", OPTIMIZERS), ("schedule", SCHEDULES), ("schedule_unit", SCHEDULE_UNITS),
                       ("weight_decay_mode", WEIGHT_DECAY_MODES)):
        if opt[key] not in valid:
            _fail(f"{field}.{key}", f"{opt[key]!r} is not valid; choose one of {', '.join(valid)}")
    _in_range(opt, field, "learning_rate", 0.0, math.inf)
    _in_range(opt, field, "weight_decay", 0.0, math.inf)
    _in_range(opt, field, "grad_clip_norm", 0.0, math.inf, "(0 turns clipping off)")
    _in_range(opt, field, "eps", 0.0, math.inf)
    for key in ("b1", "b2", "momentum"):
        _in_range(opt, field, key, 0.0, 1.0, upper_open=True)
    _in_range(opt, field, "gamma", 0.0, math.inf)
    if opt.epoch_start_quirk and opt.schedule_unit != "epoch":
        _fail(f"{field}.epoch_start_quirk", "needs schedule_unit='epoch' (the quirk shifts per-epoch schedules)")
    if opt.schedule == "step" and not opt.milestones:
        _fail(f"{field}.milestones", "schedule 'step' needs milestones (in schedule units)")
    if list(opt.milestones) != sorted(opt.milestones):
        _fail(f"{field}.milestones", f"must be increasing, got {tuple(opt.milestones)}")
    if opt.warmup_steps < 0:
        _fail(f"{field}.warmup_steps", f"must be >= 0, got {opt.warmup_steps}")


def _check_bop(part: Any) -> None:
    field = "optimizer.partitions.binary_kernel"
    if part.get("name", "") not in ("", "bop"):
        _fail(f"{field}.name", f"{part.name!r} is not valid; choose '' (the main optimizer) or 'bop'")
    if part.get("name", "") != "bop":
        return
    _in_range(part, field, "gamma", 0.0, 1.0)
    _in_range(part, field, "threshold", 0.0, math.inf)
    _in_range(part, field, "decay", 0.0, math.inf)
    for key in ("gamma_schedule", "threshold_schedule"):
        if part[key] not in SCHEDULES:
            _fail(f"{field}.{key}", f"{part[key]!r} is not valid; choose one of {', '.join(SCHEDULES)}")
        if part[key] == "step" and not part.milestones:
            _fail(f"{field}.milestones", f"{key} 'step' needs milestones (in the main optimizer's schedule units)")


def is_binary(config: Any) -> bool:
    """Whether ``config.model`` has binary layers: a binary zoo model, or rules that binarize."""
    rules = any(rule.spec is not None for rule in as_rules(config.model.get("binarize") or ()))
    return rules or (not models.is_external(config.model.name) and models.info(config.model.name).binary)


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def model_kwargs(config: Any, stage_weights: str | None = None) -> dict[str, Any]:
    """models.create kwargs from config.model and config.estimator (binary zoo models only); the
    head's arguments come from the task. Rules (``model.binarize``) are given in their text
    form, JSON-ready for the variables' metadata; they name their own estimators, so only stage
    one of two-stage training (``stage_weights`` 'none') changes them: real weights."""
    kw = {k: _plain(v) for k, v in config.model.items() if k not in ("name", "binarize")}
    zoo_binary = not models.is_external(config.model.name) and models.info(config.model.name).binary
    if zoo_binary:
        kw["weight_estimator"] = config.estimator.weights if stage_weights is None else stage_weights
        kw["activation_estimator"] = config.estimator.activations
        kw["share_estimator"] = config.estimator.share
    if config.model.get("binarize"):
        kw["binarize"] = format_rules(as_rules(config.model.binarize))
        if not zoo_binary and stage_weights is not None and estimators.parse(stage_weights) is None:
            kw["weight_estimator"] = None  # a user's model: every rule's weights real in stage one
    return kw


def validate(config: Any, device_count: int, process_count: int = 1) -> None:
    """Checks every field that can be checked without data or compilation."""
    if config.model.name not in models.names() and not models.is_external(config.model.name):
        _fail("model.name", f"{config.model.name!r} is not valid; choose one of {', '.join(models.names())} "
                            "or a model of your own as package.module:Factory")
    if config.model.get("binarize"):
        try:
            as_rules(config.model.binarize)
        except ValueError as e:
            _fail("model.binarize", str(e))
        default = base_config().estimator
        changed = [k for k in default if config.estimator.get(k) != default[k]]
        zoo_binary = not models.is_external(config.model.name) and models.info(config.model.name).binary
        if changed and not zoo_binary:
            _fail(f"estimator.{changed[0]}", "a rule-binarized model takes its estimators from model.binarize; "
                                             "set them in the rules' specs")
    for field in ("weights", "activations"):
        try:
            estimators.parse(config.estimator[field])
        except ValueError as e:
            _fail(f"estimator.{field}", str(e))
    try:
        models.create(config.model.name, **model_kwargs(config))
    except ValueError as e:
        _fail("model", str(e))
    _choice(config, "dtype", DTYPES)
    try:
        data.check(config.data)
        for name, section in tasks.TASKS.get(config.task).sections.items() if config.task in tasks.names() else ():
            from_section(section, config.get(name), name)
    except SectionError as e:
        raise ConfigError(str(e)) from None
    for field in ("batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _positive(config, field)
    _positive(config, "eval_batch_size", allow=(-1,))
    _positive(config, "eval_every_steps", allow=(-1,))
    _positive(config, "num_train_steps", allow=(-1,))
    runtime = config.max_runtime
    if not isinstance(runtime, int | float) or isinstance(runtime, bool) or not 0 <= runtime < math.inf:
        _fail("max_runtime", f"must be a finite number of seconds >= 0 (0: no limit), got {runtime!r}")
    if not isinstance(config.profile_steps, int) or isinstance(config.profile_steps, bool) or config.profile_steps < 0:
        _fail("profile_steps", f"must be an integer >= 0 (0: no trace), got {config.profile_steps!r}")
    if not isinstance(config.compilation_cache_dir, str):
        _fail("compilation_cache_dir", f"must be a directory path or '' (off), got {config.compilation_cache_dir!r}")
    if config.num_train_steps == -1:
        _positive(config, "num_epochs")
    for name, section in config.get("evals", {}).items():
        if not name.isidentifier():
            _fail(f"evals.{name}", "an evaluation's name must be an identifier (its metrics are NAME/...)")
        try:
            entry = from_section(EvalEntry, section, f"evals.{name}")
        except SectionError as e:
            raise ConfigError(str(e)) from None
        if entry.every_steps and (config.eval_every_steps <= 0 or entry.every_steps % config.eval_every_steps):
            _fail(f"evals.{name}.every_steps", f"{entry.every_steps} must be a multiple of eval_every_steps "
                                               f"({config.eval_every_steps}), or 0 for the end only")
    for field in ("checkpoint_every_steps", "eval_every_steps"):
        if config[field] > 0 and config[field] % config.log_every_steps:
            _fail(field, f"{config[field]} must be a multiple of log_every_steps ({config.log_every_steps}) so "
                         "that every checkpoint and evaluation follows a logged, finiteness-checked window")
    n = device_count if config.num_devices == -1 else config.num_devices
    if config.num_devices != -1 and not 1 <= config.num_devices <= device_count:
        _fail("num_devices", f"{config.num_devices} not in 1..{device_count} (the devices available)")
    # The eval batch is padded anyway, so it is rounded up to the devices (eval_batch_size()).
    if config.batch_size % n:
        _fail("batch_size", f"{config.batch_size} is not divisible by the {n} devices; use a multiple of {n}")
    if config.batch_size % process_count:
        _fail("batch_size", f"{config.batch_size} is not divisible by the {process_count} processes")
    _check_optimizer(config.optimizer, "optimizer")
    _check_optimizer(config.optimizer.estimator, "optimizer.estimator")
    for p in PARTITIONS:
        if p not in config.optimizer.partitions:
            _fail(f"optimizer.partitions.{p}", "missing")
        part = config.optimizer.partitions[p]
        if part.lr_mult < 0 or (part.weight_decay is not None and part.weight_decay < 0):
            _fail(f"optimizer.partitions.{p}", f"lr_mult and weight_decay must be >= 0, got {dict(part)}")
    _check_bop(config.optimizer.partitions.binary_kernel)
    extra = sorted(set(config.optimizer.partitions) - set(PARTITIONS))
    if extra:
        _fail("optimizer.partitions", f"unknown partition(s) {extra}; valid: {', '.join(PARTITIONS)}")
    if not 0 <= config.loss.label_smoothing < 1:
        _fail("loss.label_smoothing", f"must be in [0, 1), got {config.loss.label_smoothing}")
    if config.task not in tasks.names():
        _fail("task", f"{config.task!r} is not valid; choose one of {', '.join(tasks.names())}")
    if config.teacher.checkpoint:
        path = Path(config.teacher.checkpoint)
        if not path.exists():
            _fail("teacher.checkpoint", f"{path} does not exist")
        if path.is_file() and config.teacher.model not in models.names():
            _fail("teacher.model", f"a PyTorch teacher file needs its model name; {config.teacher.model!r} "
                                   f"is not one of {', '.join(models.names())}")
        if not 0 <= config.teacher.alpha <= 1:
            _fail("teacher.alpha", f"must be in [0, 1], got {config.teacher.alpha}")
        _positive(config, "teacher.temperature")
    if config.init_checkpoint and not Path(config.init_checkpoint).exists():
        _fail("init_checkpoint", f"{config.init_checkpoint} does not exist")
    if config.two_stage.enabled:
        if not is_binary(config):
            _fail("two_stage.enabled", f"two-stage training needs a binary model, not {config.model.name!r}")
        if estimators.parse(config.estimator.weights) is None:
            _fail("two_stage.enabled", "stage two binarizes the weights: set estimator.weights")
        if not 0 < config.two_stage.stage1_fraction < 1:
            _fail("two_stage.stage1_fraction", f"must be in (0, 1), got {config.two_stage.stage1_fraction}")


def eval_batch_size(config: Any, device_count: int) -> int:
    """``config.eval_batch_size`` (-1: batch_size) rounded up to a multiple of the devices: the
    last eval batch is padded and masked in any case, so a recipe runs on any device count."""
    b = config.eval_batch_size if config.eval_batch_size != -1 else config.batch_size
    return -(-b // device_count) * device_count


def total_steps(config: Any, train_size: int) -> int:
    if config.num_train_steps != -1:
        return int(config.num_train_steps)
    return math.ceil(config.num_epochs * train_size / config.batch_size)
