"""Images/s of the full ImageNet recipe step as users run it, mlpbnn against PyTorch with AMP.

    python -m bench.imagenet_step [--networks bireal18_mlp,bireal18_ste,resnet18] [--batches 128,256]
                                  [--size 224] [--rounds 5] [--dtype bfloat16] [--teacher resnet34]

The step is the trainer's own (``mlpbnn.train.step.make_train_step``) built from the recipe config
(``configs/bireal18_imagenet.py`` / ``bireal34_imagenet.py``: the BBC MLP on the weights, ApproxSign
on the inputs, the partitioned Adam of ``mlpbnn.train.optim`` with its schedules, distillation
from a frozen ResNet-34 teacher whose forward runs in the step, 0.9 soft + 0.1 hard CE), in
``--dtype`` compute (bfloat16: parameters, BN statistics, the estimator and the loss stay float32),
jitted with the state donated, compiled ahead of time. Rows (``--networks``): ``bireal18_mlp``,
``bireal34_mlp``, ``bireal18_ste`` / ``bireal34_ste`` (STE on the weights, the estimator's cost by
difference) and ``resnet18`` (real-valued ResNet-18 with the same distillation step).

PyTorch runs the independent modules of ``bench/torch_models.py`` (the official estimator math:
the MLP on every latent weight in the forward pass) with the same recipe: teacher forward under
``no_grad``, the student under ``torch.autocast(bfloat16)`` (AMP; ``--dtype float32``: none), the
estimator MLP kept in float32 as mlpbnn keeps it, the loss in float32, one Adam over two parameter
groups (network 2.5e-3, estimator 1e-3), channels-last tensors, ``cudnn.benchmark`` on a GPU.

Per row and batch: images/s (median of ``--rounds`` interleaved rounds, every candidate in this
one process), step scratch memory (``bench.train_step.step_peak_mib``: XLA's temp buffer /
PyTorch's ``max_memory_allocated`` increase on a GPU, the resident-set high-water increase on the
CPU), compile seconds (mlpbnn: lower + compile; PyTorch: its first step, cudnn autotuning
included), and the estimator's share of the step, (t_mlp - t_ste) / t_mlp, for each framework.

``--mlp-backward`` picks mlpbnn's MLP backward form (``reduce``, ``pallas``, ...; PyTorch's is its
autograd). ``--width``, ``--stages`` and ``--num-classes`` shrink the networks for the CPU test
(``tests/test_bench.py``); the figures that matter come from a GPU (``bench/gpu_session.sh``).
Writes bench/results/imagenet_step[_BACKEND].json (``--out`` to rename).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from bench import torch_models
from bench.common import interleaved_medians, trainer_step, write_json
from bench.train_step import step_peak_mib, with_backward
from configs import bireal18_imagenet
from mlpbnn import models
from mlpbnn.estimators import BACKWARD_FORMS
from mlpbnn.tasks.classification import Classification
from mlpbnn.train.config import model_kwargs

# label: (mlpbnn model, weight estimator or None for real-valued, default stage sizes)
NETWORKS = {
    "bireal18_mlp": ("bireal_resnet18", "mlp", (4, 4, 4, 4)),
    "bireal34_mlp": ("bireal_resnet34", "mlp", (6, 8, 12, 6)),
    "bireal18_ste": ("bireal_resnet18", "ste", (4, 4, 4, 4)),
    "bireal34_ste": ("bireal_resnet34", "ste", (6, 8, 12, 6)),
    "resnet18": ("resnet18", None, (2, 2, 2, 2)),
}
TEACHERS = {"resnet34": (3, 4, 6, 3), "resnet18": (2, 2, 2, 2)}


def recipe(label: str, dtype: str, stages: tuple[int, ...] | None, width: int, backward: str = "auto") -> Any:
    """The ImageNet recipe config of a row (``configs/bireal18_imagenet.py``), its model swapped;
    ``backward``: the MLP backward form (``mlpbnn.estimators.mlp_backward``; 'auto' its default)."""
    name, weights, default_stages = NETWORKS[label]
    config = bireal18_imagenet.get_config(name, tuple(stages or default_stages))
    config.dtype = dtype
    config.model.width = width
    if weights is not None:
        config.estimator.weights = with_backward(weights, backward)
    return config


def mlpbnn_step(label: str, batch: int, size: int, num_classes: int, dtype: str, teacher_name: str,
                stages: tuple[int, ...] | None, width: int, backward: str = "auto") -> tuple[Any, float]:
    """(a zero-argument function running one donated recipe step on a fixed batch, compile s):
    ``bench.common.trainer_step`` with the recipe's config, task and teacher."""
    name, weights, default_stages = NETWORKS[label]
    config = recipe(label, dtype, stages, width, backward)
    cdtype = jnp.dtype(dtype)
    if weights is None:  # a real-valued torchvision ResNet: no estimator options
        model = models.create(name, num_classes=num_classes, dtype=cdtype, width=width,
                              stage_sizes=tuple(stages or default_stages))
    else:
        model = models.create(name, num_classes=num_classes, dtype=cdtype, **model_kwargs(config))
    teacher = models.create(teacher_name, num_classes=num_classes, dtype=cdtype, width=width)
    task = Classification(num_classes, alpha=config.teacher.alpha, temperature=config.teacher.temperature)
    rng = np.random.default_rng(0)
    data = {"images": jnp.asarray(rng.normal(size=(batch, size, size, 3)).astype(np.float32)),
            "labels": jnp.asarray(rng.integers(0, num_classes, batch).astype(np.int32))}
    steps_per_epoch = 1_281_167 / config.batch_size
    run, times = trainer_step(model, task, config, data, int(config.num_epochs * steps_per_epoch), steps_per_epoch,
                              teacher=teacher)
    return run, times["compile_s"]


def torch_step(label: str, batch: int, size: int, num_classes: int, dtype: str, teacher_name: str,
               stages: tuple[int, ...] | None, width: int) -> tuple[Any, float]:
    """The same recipe step in PyTorch (AMP for bfloat16); (run, seconds of its first step)."""
    name, weights, default_stages = NETWORKS[label]
    stages = tuple(stages or default_stages)
    device = torch.device("cuda" if jax.default_backend() != "cpu" else "cpu")
    torch.manual_seed(0)
    if weights is None:
        model = torch_models.torchvision_resnet(stages, num_classes, width)
    else:
        model = torch_models.bireal_resnet(stages, num_classes, width, weights=weights)
    teacher = torch_models.torchvision_resnet(TEACHERS[teacher_name], num_classes, width).eval()
    model.to(device, memory_format=torch.channels_last).train()
    teacher.to(device, memory_format=torch.channels_last)
    config = recipe(label, dtype, stages, width)
    estimator = [p for n, p in model.named_parameters() if n.startswith("meta_net.")]
    network = [p for n, p in model.named_parameters() if not n.startswith("meta_net.")]
    groups = [{"params": network, "lr": config.optimizer.learning_rate}]
    if estimator:
        groups.append({"params": estimator, "lr": config.optimizer.estimator.learning_rate})
    opt = torch.optim.Adam(groups)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    alpha, temperature = config.teacher.alpha, config.teacher.temperature
    amp = dtype == "bfloat16"

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                t = teacher(x)
            s = model(x)
        s, t = s.float(), t.float()
        soft = -(F.softmax(t / temperature, -1) * F.log_softmax(s / temperature, -1)).sum(-1).mean()
        loss = alpha * soft + (1 - alpha) * F.cross_entropy(s, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    t0 = time.perf_counter()
    run().item()
    return run, time.perf_counter() - t0


def shares(rows: list[dict[str, Any]]) -> dict[str, float]:
    """(t_mlp - t_ste) / t_mlp by 'framework/network/batch', for every MLP row with its STE row."""
    t = {(r["framework"], r["network"], r["batch"]): r["step_s"] for r in rows}
    return {f"{fw}/{net}/{b}": (s - t[(fw, net.replace('_mlp', '_ste'), b)]) / s
            for (fw, net, b), s in t.items() if net.endswith("_mlp") and (fw, net.replace("_mlp", "_ste"), b) in t}


def _sync(fn):
    def run():
        out = fn()
        if isinstance(out, torch.Tensor):
            return out.item()  # waits for the device, as block_until_ready does for JAX
        return out
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="bireal18_mlp,bireal18_ste,resnet18")
    parser.add_argument("--batches", default="128,256", help="per device (one device runs each step)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--teacher", default="resnet34", choices=tuple(TEACHERS))
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64, help="first-stage channels (64: the real networks)")
    parser.add_argument("--stages", default="", help="blocks per stage, e.g. 1,1,1,1 ('' : each network's own)")
    parser.add_argument("--mlp-backward", default="auto", choices=("auto",) + BACKWARD_FORMS + ("pallas",),
                        help="mlpbnn's MLP backward form (PyTorch's is autograd)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default="", help="JSON name under bench/results ('' : imagenet_step[_BACKEND])")
    args = parser.parse_args(argv)
    labels = [s for s in args.networks.split(",") if s]
    unknown = [s for s in labels if s not in NETWORKS]
    if unknown:
        parser.error(f"--networks: unknown {unknown}; choose from {', '.join(NETWORKS)}")
    batches = [int(b) for b in args.batches.split(",")]
    stages = tuple(int(s) for s in args.stages.split(",")) if args.stages else None
    backend = jax.default_backend()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    if backend != "cpu":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default float32 precision on GPUs
        torch.backends.cudnn.allow_tf32 = True
    print(f"jax {jax.__version__} ({backend}: {jax.devices()[0].device_kind}), torch {torch.__version__}, "
          f"{args.size}x{args.size}, {args.dtype}, teacher {args.teacher}, width {args.width}", flush=True)
    load_start = os.getloadavg()
    common = dict(size=args.size, num_classes=args.num_classes, dtype=args.dtype, teacher_name=args.teacher,
                  stages=stages, width=args.width)
    frameworks = {"mlpbnn": functools.partial(mlpbnn_step, backward=args.mlp_backward)}
    if not args.no_torch:
        frameworks["pytorch"] = torch_step
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    for b in batches:
        fns, compile_s = {}, {}
        for label in labels:
            for fw, make in frameworks.items():
                fns[(fw, label)], compile_s[(fw, label)] = make(label, b, **common)
        times = interleaved_medians({k: _sync(f) for k, f in fns.items()}, args.rounds)
        for key, fn in fns.items():
            fw, label = key
            rows.append({"framework": fw, "network": label, "batch": b, "step_s": times[key],
                         "img_s": b / times[key], "compile_s": compile_s[key], **step_peak_mib(fn)})
        del fns
        # Written after every batch: a session that runs out of time keeps the batches done.
        payload = {"command": " ".join(["python", "-m", "bench.imagenet_step"] + list(argv or sys.argv[1:])),
                   "size": args.size, "dtype": args.dtype, "teacher": args.teacher, "width": args.width,
                   "stages": stages, "num_classes": args.num_classes, "rounds": args.rounds,
                   "mlp_backward": args.mlp_backward, "device_kind": jax.devices()[0].device_kind,
                   "torch": torch.__version__, "rows": rows, "estimator_share": shares(rows),
                   "loadavg_1_5_15min": {"start": load_start, "end": os.getloadavg()}}
        path = write_json(args.out or ("imagenet_step" + ("" if backend == "cpu" else f"_{backend}")), payload)
    head = f"{'network':<14} {'batch':>5} {'framework':<9} {'img/s':>9} {'step MiB':>9} {'compile s':>9}"
    print(f"\nrecipe step, {args.size}x{args.size} {args.dtype}, median of {args.rounds} interleaved rounds")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['network']:<14} {r['batch']:>5} {r['framework']:<9} {r['img_s']:9.1f} "
              f"{r['step_peak_mib']:9.0f} {r['compile_s']:9.1f}")
    for k, v in payload["estimator_share"].items():
        print(f"estimator share of the step (t_mlp - t_ste) / t_mlp, {k}: {v:.1%}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
