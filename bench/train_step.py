"""Images/s of a full training step (forward, backward, Adam update), mlpbnn against PyTorch.

    python -m bench.train_step [--rounds 3] [--sizes 32,64] [--batch 64] [--big] [--no-xla]

Networks (10 classes, ``small_inputs=True``: 3x3 stride-1 stem, no max-pool, at every size):
``bireal_resnet18`` with the BBC MLP estimator on the weights, the same with STE on the weights
(ApproxSign activations in both), and the full-precision ``resnet18``; mlpbnn against the
independent PyTorch modules of ``bench/torch_models.py`` (official estimator math: the MLP runs
on every weight in the forward pass, as in the BBC code). Both take one Adam step on all
trainable parameters with a softmax cross-entropy loss on a fixed random batch; mlpbnn's step is
one jitted function with the state donated, PyTorch's is eager (``zero_grad``, forward,
``backward``, ``step``) on channels-last tensors (its faster format here), both in float32.
All step functions live in this one process and are timed in interleaved rounds (medians), so
machine noise hits every candidate alike; ``torch.set_num_threads`` is set to the number of
cores JAX uses. With ``--no-xla`` left out, mlpbnn is also timed with XLA's own convolution
gradient (``MLPBNN_CONV_IMPL=xla``) at the first size, to show what ``mlpbnn.conv`` buys.

Peak memory: after timing, each step runs once more alone: freed heap is returned to the OS
(``malloc_trim``), the resident set is read (``VmRSS``), the kernel's high-water mark is reset
(``/proc/self/clear_refs`` = 5) and read after the step (``VmHWM``). ``step_peak_mib`` is the peak
resident set during that step minus the resident set before it (parameters, optimizer state and
compiled code that persist are excluded; allocator caching can only make it smaller).

MLP estimator share of mlpbnn's step: (t_mlp - t_ste) / t_mlp at the first size (batch
``--batch``) and, with ``--big``, at 224x224 batch 32 (ImageNet stem, 1 warm-up + ``--big-rounds``).
The estimator alone (timed first): the MLP backward over the network's binary weights, layer by
layer as the model calls it, in each form of ``estimators.gated_mlp_vjp`` (written out with
matmuls, written out with fused reductions, autodiff of the MLP) at several chunk sizes.

On a GPU (JAX's default backend ``gpu``) the same networks run there and PyTorch runs on CUDA:
both at their default float32 math (XLA and cuDNN use TF32 for float32 convolutions and matmuls;
``torch.backends.cuda.matmul.allow_tf32`` is set to match), PyTorch with ``cudnn.benchmark``.
Memory on a GPU: mlpbnn's is XLA's temporary buffer size for the compiled step
(``memory_analysis().temp_size_in_bytes``); PyTorch's is ``max_memory_allocated`` during one step
minus ``memory_allocated`` before it. The XLA-conv comparison is CPU-only (``auto`` is XLA there).

Prints the tables and writes bench/results/train_step.json (train_step_gpu.json on a GPU;
``--only-estimator``: train_step_estimator[_gpu].json).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from bench import torch_models
from bench.common import block, interleaved_medians, write_json
from mlpbnn import conv, models
from mlpbnn import estimators as E

NUM_CLASSES = 10
# (label, mlpbnn model, weight estimator, torch builder(num_classes, width, small_inputs))
NETWORKS = {
    "bireal18_mlp": ("bireal_resnet18", "mlp", functools.partial(torch_models.bireal_resnet, (4, 4, 4, 4),
                                                                 weights="mlp")),
    "bireal18_ste": ("bireal_resnet18", "ste", functools.partial(torch_models.bireal_resnet, (4, 4, 4, 4),
                                                                 weights="ste")),
    "resnet18": ("resnet18", None, functools.partial(torch_models.torchvision_resnet, (2, 2, 2, 2))),
}


# ------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _torch_device() -> torch.device:
    if jax.default_backend() == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit(f"JAX runs on {jax.default_backend()} but PyTorch sees no CUDA device: nothing to compare")
    return torch.device("cuda")


def step_peak_mib(fn) -> dict[str, float]:
    """Memory of one call of fn (see the module docstring)."""
    if jax.default_backend() != "cpu":
        if hasattr(fn, "compiled"):  # mlpbnn: XLA's scratch for the step
            return {"step_peak_mib": fn.compiled.memory_analysis().temp_size_in_bytes / 2**20}
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"allocated_before_mib": before / 2**20, "peak_mib": peak / 2**20,
                "step_peak_mib": (peak - before) / 2**20}
    _trim()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    block(fn())
    peak = _status_kib("VmHWM")
    return {"rss_before_mib": before / 1024, "peak_mib": peak / 1024, "step_peak_mib": (peak - before) / 1024}


# ------------------------------------------------------------------------------ steps


def with_backward(weights: str | None, backward: str) -> str | None:
    """The MLP estimator with its backward form (``mlpbnn.estimators.mlp_backward``) when not ``auto``."""
    return f"mlp(backward={backward!r})" if weights == "mlp" and backward != "auto" else weights


def mlpbnn_step(model_name: str, weights: str | None, size: int, batch: int, impl: str, small_inputs: bool = True,
                width: int = 64):
    """A zero-argument function running one jitted, donated train step on a fixed batch."""
    kw = {} if weights is None else {"weight_estimator": weights, "activation_estimator": "approx_sign"}
    model = models.create(model_name, NUM_CLASSES, small_inputs=small_inputs, width=width, **kw)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
    variables = model.init(jax.random.key(0), x[:1])
    trainable = {k: v for k, v in variables.items() if k != "batch_stats"}  # params and estimator theta
    tx = optax.adam(1e-3)
    state = (trainable, variables["batch_stats"], tx.init(trainable))

    def train_step(state, x, y):
        trainable, batch_stats, opt_state = state

        def loss_fn(tr):
            logits, updates = model.apply({**tr, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return (optax.apply_updates(trainable, updates), batch_stats, opt_state), loss

    with conv.use_impl(impl):  # the implementation is fixed when the step is traced
        compiled = jax.jit(train_step, donate_argnums=0).lower(state, x, y).compile()
    holder = [state]

    def run():
        holder[0], loss = compiled(holder[0], x, y)
        return loss

    run.compiled = compiled
    return run


def torch_step(builder, size: int, batch: int, width: int = 64):
    torch.manual_seed(0)
    device = _torch_device()
    model = builder(NUM_CLASSES, width, small_inputs=True).to(device, memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return run


# ------------------------------------------------------------------------------ estimator alone


def estimator_section(rounds: int, width: int = 64) -> dict:
    """MLP backward over bireal_resnet18's binary weights, per layer, by formulation and chunk."""
    model = models.create("bireal_resnet18", NUM_CLASSES, small_inputs=True, width=width)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    shapes = [v.shape for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])
              if "binary_conv" in jax.tree_util.keystr(p)]
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.uniform(-0.05, 0.05, s).astype(np.float32)) for s in shapes]
    gs = [jnp.asarray(rng.normal(0, 1e-3, s).astype(np.float32)) for s in shapes]
    theta = E.get("mlp").init(jax.random.key(1))

    def make(form, chunk):
        if form == "pallas":  # one fused kernel per tensor; chunk = its elements per program
            from mlpbnn.estimators.mlp_pallas import gated_mlp_vjp_pallas

            def one(theta, w, g):
                return gated_mlp_vjp_pallas(theta, w, g, "tanh", chunk=chunk)
        else:
            vjp_fn = functools.partial(E.gated_mlp_vjp, activation="tanh", form=form)

            def one(theta, w, g):
                return E.chunked_vjp(vjp_fn, theta, w, g, chunk)

        @jax.jit
        def f(theta, ws, gs):
            outs = [one(theta, w, g) for w, g in zip(ws, gs, strict=True)]
            return jax.tree.map(lambda *a: sum(a), *[o[0] for o in outs]), [o[1] for o in outs]
        return lambda: f(theta, ws, gs)

    default = f"{E.default_backward()}/{E.default_chunk()}"
    if jax.default_backend() == "cpu":
        grid = {"autodiff": {8192, 65536}, "matmul": {4096, 8192, 16384, 65536}, "reduce": {8192, 65536}}
    else:
        grid = {"autodiff": {65536, 1 << 22}, "matmul": {65536, 1 << 22}, "reduce": {65536, 1 << 20, 1 << 22},
                "pallas": {2048, 8192, 32768}}
    candidates = {f"{form}/{chunk}": make(form, chunk) for form, chunks in grid.items() for chunk in sorted(chunks)}
    times = interleaved_medians(candidates, rounds)
    n = sum(int(np.prod(s)) for s in shapes)
    base = "autodiff/65536"
    print(f"\nMLP estimator backward alone on bireal_resnet18's {len(shapes)} binary weight tensors "
          f"({n / 1e6:.1f}M weights), median of {rounds} interleaved rounds (default: {default}):")
    print(f"  {'form/chunk':<26} {'ms':>8} {'x ' + base:>20}")
    for k, t in times.items():
        print(f"  {k:<26} {t * 1e3:8.1f} {times[base] / t:20.2f}{'  <- default' if k == default else ''}")
    return {"weights": n, "ms": {k: t * 1e3 for k, t in times.items()}, "default": default}


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--networks", default=",".join(NETWORKS), help="rows to time (the MLP share needs "
                        "bireal18_mlp and bireal18_ste)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--big", action="store_true", help="also the MLP share at 224x224 batch 32")
    parser.add_argument("--big-rounds", type=int, default=1)
    parser.add_argument("--big-size", type=int, default=224, help="--big's image size (ImageNet stem)")
    parser.add_argument("--big-batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="first-stage channels of every network (64: real; "
                        "smaller for a rehearsal, bench/gpu_session.sh --tiny)")
    parser.add_argument("--no-xla", action="store_true", help="skip mlpbnn with XLA's convolution gradient")
    parser.add_argument("--no-estimator", action="store_true", help="skip the estimator-alone section")
    parser.add_argument("--mlp-backward", default="auto", choices=("auto",) + E.BACKWARD_FORMS + ("pallas",),
                        help="the MLP backward form in the steps (the estimator-alone section times all)")
    parser.add_argument("--out", default="", help="JSON name under bench/results ('' : train_step[_estimator]"
                        "[_BACKEND])")
    parser.add_argument("--only-estimator", action="store_true",
                        help="only the estimator-alone section (written to train_step_estimator*.json)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if unknown := set(args.networks.split(",")) - set(NETWORKS) - {""}:
        parser.error(f"--networks: unknown {sorted(unknown)}; choose from {', '.join(NETWORKS)}")
    networks = {k: NETWORKS[k] for k in args.networks.split(",") if k}
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    backend = jax.default_backend()
    if backend != "cpu":
        args.no_xla = True  # conv "auto" is XLA's own convolution there already
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default float32 dot precision on GPUs
        torch.backends.cudnn.allow_tf32 = True
    print(f"jax {jax.__version__} ({backend}: {jax.devices()[0].device_kind}, conv impl {conv.resolved_impl()}), "
          f"torch {torch.__version__} ({_torch_device()}, {torch.get_num_threads()} threads), {cores} cores, "
          f"batch {args.batch}")

    load_start = os.getloadavg()
    est = None if args.no_estimator else estimator_section(max(args.rounds, 3), args.width)
    suffix = "" if backend == "cpu" else f"_{backend}"
    if args.only_estimator:
        path = write_json(args.out or f"train_step_estimator{suffix}", {
            "command": " ".join(["python"] + sys.argv), "estimator_alone": est,
            "loadavg_1_5_15min": {"start": load_start, "end": os.getloadavg()}})
        print(f"wrote {path}")
        return
    fns, build_s = {}, {}
    for size in sizes:
        for label, (model_name, weights, builder) in networks.items():
            t0 = time.perf_counter()
            fns[("mlpbnn", label, size)] = mlpbnn_step(model_name, with_backward(weights, args.mlp_backward), size,
                                                       args.batch, "auto", width=args.width)
            build_s[f"mlpbnn/{label}/{size}"] = time.perf_counter() - t0
            if not args.no_xla and size == sizes[0] and label != "bireal18_mlp":
                fns[("mlpbnn_xla_conv", label, size)] = mlpbnn_step(model_name, weights, size, args.batch, "xla",
                                                                    width=args.width)
            fns[("pytorch", label, size)] = torch_step(builder, size, args.batch, args.width)
    print(f"built and compiled {len(fns)} steps; timing {args.rounds} interleaved rounds ...", flush=True)
    times = interleaved_medians(fns, args.rounds)
    max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the resets below
    memory = {}
    for key, fn in fns.items():
        memory[key] = step_peak_mib(fn)

    rows = []
    print(f"\ntrain step, batch {args.batch}, median of {args.rounds} interleaved rounds "
          f"(img/s; memory = " + ("peak resident-set increase during one step" if backend == "cpu" else
                                  "step scratch on the GPU, see the docstring") + ", MiB)")
    head = (f"{'network':<14} {'size':>5} {'mlpbnn img/s':>13} {'PyTorch img/s':>14} {'ratio':>7} "
            f"{'mlpbnn MiB':>11} {'PyTorch MiB':>12} {'xla-conv img/s':>15}")
    print(head)
    print("-" * len(head))
    for size in sizes:
        for label in networks:
            tj, tt = times[("mlpbnn", label, size)], times[("pytorch", label, size)]
            txla = times.get(("mlpbnn_xla_conv", label, size))
            row = {"network": label, "size": size, "batch": args.batch,
                   "mlpbnn_s": tj, "pytorch_s": tt, "mlpbnn_img_s": args.batch / tj, "pytorch_img_s": args.batch / tt,
                   "ratio_mlpbnn_over_pytorch": tt / tj,
                   "mlpbnn_memory": memory[("mlpbnn", label, size)], "pytorch_memory": memory[("pytorch", label, size)]}
            if txla is not None:
                row["mlpbnn_xla_conv_s"] = txla
                row["mlpbnn_xla_conv_img_s"] = args.batch / txla
                row["mlpbnn_xla_conv_memory"] = memory[("mlpbnn_xla_conv", label, size)]
            rows.append(row)
            print(f"{label:<14} {size:>5} {row['mlpbnn_img_s']:13.1f} {row['pytorch_img_s']:14.1f} "
                  f"{row['ratio_mlpbnn_over_pytorch']:6.2f}x {row['mlpbnn_memory']['step_peak_mib']:11.0f} "
                  f"{row['pytorch_memory']['step_peak_mib']:12.0f} "
                  f"{'' if txla is None else f'{args.batch / txla:15.1f}'}")

    def share(t_mlp, t_ste):
        return (t_mlp - t_ste) / t_mlp

    s0 = sizes[0]
    shares = {}
    if {"bireal18_mlp", "bireal18_ste"} <= set(networks):
        shares[f"{s0}x{s0}_batch{args.batch}"] = {
            "mlp_s": times[("mlpbnn", "bireal18_mlp", s0)], "ste_s": times[("mlpbnn", "bireal18_ste", s0)],
            "share": share(times[("mlpbnn", "bireal18_mlp", s0)], times[("mlpbnn", "bireal18_ste", s0)]),
            "pytorch_share": share(times[("pytorch", "bireal18_mlp", s0)], times[("pytorch", "bireal18_ste", s0)])}
        print(f"\nMLP estimator share of the step, (t_mlp - t_ste) / t_mlp, {s0}x{s0} batch {args.batch}: "
              f"mlpbnn {shares[f'{s0}x{s0}_batch{args.batch}']['share']:.1%}, "
              f"PyTorch {shares[f'{s0}x{s0}_batch{args.batch}']['pytorch_share']:.1%}")
    if args.big:
        del fns
        gc.collect()
        bs, bb = args.big_size, args.big_batch
        big = {w: mlpbnn_step("bireal_resnet18", with_backward(w, args.mlp_backward), bs, bb, "auto",
                              small_inputs=False, width=args.width) for w in ("mlp", "ste")}
        tb = interleaved_medians(big, args.big_rounds)
        key = f"{bs}x{bs}_batch{bb}"
        shares[key] = {"mlp_s": tb["mlp"], "ste_s": tb["ste"], "share": share(tb["mlp"], tb["ste"]),
                       "rounds": args.big_rounds}
        print(f"MLP estimator share, {bs}x{bs} batch {bb} (ImageNet stem, {args.big_rounds} round(s)): "
              f"{shares[key]['share']:.1%} (mlp {tb['mlp']:.2f} s = {bb / tb['mlp']:.1f} img/s, "
              f"ste {tb['ste']:.2f} s = {bb / tb['ste']:.1f} img/s)")
        del big
        gc.collect()

    path = write_json(args.out or f"train_step{suffix}", {
        "command": " ".join(["python"] + sys.argv), "batch": args.batch, "sizes": sizes, "rounds": args.rounds,
        "width": args.width, "mlp_backward": args.mlp_backward,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "conv_impl": conv.resolved_impl(),
        "device_kind": jax.devices()[0].device_kind, "torch_device": str(_torch_device()),
        "memory_method": ("per step: malloc_trim, VmRSS before, reset VmHWM via /proc/self/clear_refs=5, "
                          "VmHWM after one step; step_peak_mib = VmHWM - VmRSS before") if backend == "cpu" else
                         ("mlpbnn: XLA temp_size_in_bytes of the compiled step; PyTorch: "
                          "max_memory_allocated during one step - memory_allocated before"),
        "rows": rows, "mlp_share": shares, "estimator_alone": est,
        "compile_s": build_s, "process_max_rss_mib_after_timing": max_rss_mib,
        "loadavg_1_5_15min": {"start": load_start, "end": os.getloadavg()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
