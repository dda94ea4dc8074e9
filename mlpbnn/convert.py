"""PyTorch state_dict <-> Flax variables for every model in ``mlpbnn.models``.

Names map by rule, because mlpbnn's modules carry the PyTorch names with ``.`` written as ``_``
before an index (``layer1.0.downsample.1`` is ``layer1_0/downsample_1``, HRNet's
``stage3.1.fuse_layers.2.0.1.0`` is ``stage3_1/fuse_layers_2_0_1_0``):

    params/.../kernel (4-D, HWIO)     <-> ...weight, OIHW (binary convs: ``binary_conv.weights``)
    params/deconv_layers_N/kernel     <-> deconv_layers.N.weight, ConvTranspose2d's (I, O, kH, kW)
                                          (the kernel is (kH, kW, I, O), ``layers.BinaryConvTranspose``)
    params/.../kernel (2-D, in x out) <-> ...weight, out x in
    params/.../{bias, scale, slope}   <-> ...bias, ...weight (BN scale, PReLU slope)
    params/moveN/bias (C,)            <-> moveN.bias (1, C, 1, 1)  (ReActNet's LearnableBias)
    batch_stats/.../{mean, var}       <-> ...running_mean, ...running_var
    estimator/weight_estimator/w{i}   <-> meta_net.network.Linear{i}.weight, transposed
    estimator/input_estimator/w{i}    <-> input_meta_net.network.Linear{i}.weight (mlpbnn's extension)

``from_torch`` accepts the official BBC checkpoint layout (keys with or without ``module.``, a
dict with ``state_dict``), torchvision's ResNet keys, the official SimpleBaseline / HRNet-repo
``pose_resnet`` checkpoints (``simple_baseline_resnet*``: torchvision's backbone keys,
``deconv_layers.{0..8}``, ``final_layer``) and HRNet's ``pose_hrnet`` checkpoints (``hrnet_w32``,
``hrnet_w48``: 1,754 keys with the BN counters). BHRNet (``bhrnet_*``) maps the same way: its
binary blocks' latent weights are ``...branches.B.K.binary_conv.weights`` and the shared estimator
``meta_net``, as the BBC ResNets'. ReActNet-A (``reactnet_a``) has the released code's names
(``feature.N.binary_3x3``, ``bn2_1``, ``move21``, ``prelu1``; only ``feature.N`` is an index) and
reads both released forms of its 31 binary kernels: ReActNet step 2's flat ``...weights`` of
shape (out*in*k*k, 1) (layout ``reactnet_a``) and the 4-D ``...weight`` of ReActNet's step 1
(real ``nn.Conv2d``) and AdamBNN (``reactnet_a_4d``); ``to_torch(..., layout=)`` writes either.
Every tensor must be accounted for: a missing, unexpected or misshaped tensor raises
``ValueError`` naming the key and both shapes.
BN ``num_batches_tracked`` counters are checked to belong to a BN layer and are otherwise unused
(Flax's BN has no counter; ``to_torch`` writes ``num_batches_tracked``).

    python -m mlpbnn.convert in.pth out_dir --model NAME [--num-classes N | --num-joints K]

writes a variables checkpoint (``mlpbnn.variables_io``) that the trainer starts from.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mlpbnn import models
from mlpbnn.variables_io import save_variables

Path_ = tuple[str, ...]
# The PyTorch key layouts the rules below map: torchvision's ResNets, the official BBC/Bi-Real code
# (``binary_conv.weights``, ``meta_net``), ReActNet's code, SimpleBaseline's ``pose_resnet`` and
# HRNet's ``pose_hrnet``; a registered model names its layout (``models.info(name).torch_layout``).
LAYOUTS = ("torchvision", "bbc", "reactnet", "pose_resnet", "pose_hrnet", "reactnet_a", "reactnet_a_4d")
# Other layouts of the same network that ``from_torch`` also reads (the one matching more keys
# wins): ReActNet-A's step-2 release stores each binary kernel flat as ``...binary_3x3.weights``
# (out*in*k*k, 1); its step 1 (real ``nn.Conv2d``) and AdamBNN as 4-D ``...binary_3x3.weight``.
ALTERNATE_LAYOUTS = {"reactnet_a": ("reactnet_a_4d",)}
_REACTNET_A = ("reactnet_a", "reactnet_a_4d")


def _module_name(part: str) -> str:
    """``layer1_0`` -> ``layer1.0``; every index, so ``fuse_layers_2_0_1_0`` -> ``fuse_layers.2.0.1.0``."""
    return re.sub(r"_(\d+)(?=_|$)", r".\1", part)


def torch_key(path: Path_, layout: str) -> str:
    """The PyTorch state_dict key of a flattened Flax variable path (collection first), in the
    key layout ``layout`` (``LAYOUTS``: a model's ``models.info(name).torch_layout``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown PyTorch layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    collection, *modules, leaf = path
    if layout in _REACTNET_A:  # only ``feature.N`` is indexed; ``bn2_1`` and ``move11`` are names
        names = [re.sub(r"^feature_(\d+)$", r"feature.\1", m) for m in modules]
    else:
        names = [_module_name(m) for m in modules]
    if collection == "estimator":
        owner, net = names[:-1], {"weight_estimator": "meta_net", "input_estimator": "input_meta_net"}[names[-1]]
        kind, index = leaf[0], leaf[1:]
        return ".".join([*owner, net, "network", f"Linear{index}", "weight" if kind == "w" else "bias"])
    if collection == "batch_stats":
        return ".".join([*names, {"mean": "running_mean", "var": "running_var"}[leaf]])
    if leaf == "kernel":
        # The official BBC and ReActNet binary convs call their latent weights ``weights``.
        binary = ((layout in ("bbc", "reactnet") and modules[-1] == "binary_conv")
                  or (layout == "reactnet_a" and _reactnet_a_binary(modules)))
        return ".".join([*names, "weights" if binary else "weight"])
    return ".".join([*names, {"bias": "bias", "scale": "weight", "slope": "weight"}[leaf]])


def _reactnet_a_binary(modules: list[str]) -> bool:
    """Whether a ReActNet-A module is one of its binary convs (``binary_3x3``, ``binary_pw*``)."""
    return bool(modules) and modules[-1].startswith("binary_")


def _transposed_conv(modules: list[str], leaf: str) -> bool:
    """Whether the variable is a ConvTranspose2d kernel: by name (SimpleBaseline's deconv_layers)."""
    return leaf == "kernel" and bool(modules) and re.fullmatch(r"deconv_layers_\d+", modules[-1]) is not None


def _to_torch_layout(path: Path_, value: np.ndarray, layout: str | None = None) -> np.ndarray:
    collection, *modules, leaf = path
    if collection == "estimator" and leaf.startswith("w"):
        return value.T
    if _transposed_conv(modules, leaf):  # (kH, kW, I, O) -> (I, O, kH, kW)
        return value.transpose(2, 3, 0, 1)
    if leaf == "kernel" and layout == "reactnet_a" and _reactnet_a_binary(modules):  # OIHW, flat
        return value.transpose(3, 2, 0, 1).reshape(-1, 1)
    if leaf == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    if leaf == "bias" and modules and re.fullmatch(r"move\d+", modules[-1]):
        return value.reshape(1, -1, 1, 1)
    return value


def _from_torch_layout(path: Path_, value: np.ndarray, layout: str | None = None,
                       shape: tuple[int, ...] = ()) -> np.ndarray:
    """``value`` in Flax's layout; ``shape`` is the Flax shape (needed to unflatten a flat kernel)."""
    collection, *modules, leaf = path
    if collection == "estimator" and leaf.startswith("w"):
        return value.T
    if _transposed_conv(modules, leaf):  # (I, O, kH, kW) -> (kH, kW, I, O)
        return value.transpose(2, 3, 0, 1)
    if leaf == "kernel" and layout == "reactnet_a" and _reactnet_a_binary(modules):
        kh, kw, cin, cout = shape
        return value.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    if leaf == "bias" and modules and re.fullmatch(r"move\d+", modules[-1]):
        return value.reshape(-1)
    return value


def expected_variables(name: str, num_classes: int | None = None,
                       **model_kwargs: Any) -> dict[Path_, jax.ShapeDtypeStruct]:
    """Flattened variable shapes of ``models.create(name, num_classes, **model_kwargs)``
    (``model_kwargs`` may hold the head argument ``num_joints`` of a heatmap model)."""
    model = models.create(name, num_classes, **model_kwargs)
    size = 32 if model_kwargs.get("small_inputs") else 64  # parameter shapes do not depend on it
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return traverse_util.flatten_dict(shapes)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The state_dict inside an official checkpoint ({'state_dict': ...}), without ``module.``."""
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# The head argument of each head kind, read from the rows of the last layer's weight.
_HEAD_KEYS = {"classifier": ("num_classes", "fc.weight", "classes"),
              "heatmap": ("num_joints", "final_layer.weight", "joints")}


def head_args(name: str, sd: Mapping[str, Any], **given: int | None) -> dict[str, int]:
    """The head argument of model ``name`` (``{'num_classes': N}`` or ``{'num_joints': K}``):
    the one in ``given`` if it is not None, else the rows of the state_dict's ``fc.weight`` /
    ``final_layer.weight``. A given argument of another head kind is refused."""
    arg, key, what = _HEAD_KEYS[models.info(name).head]
    wrong = sorted(k for k, v in given.items() if v is not None and k != arg)
    if wrong:
        raise ValueError(f"model {name!r} has a {models.info(name).head} head: {', '.join(wrong)} is not its "
                         f"argument; valid: {arg}")
    if given.get(arg) is not None:
        return {arg: int(given[arg])}
    if key not in sd:
        raise ValueError(f"missing key {key!r} (needed for the number of {what})")
    return {arg: int(_as_numpy(sd[key]).shape[0])}


def from_torch(name: str, state_dict: Mapping[str, Any], num_classes: int | None = None,
               dtype: Any = np.float32, **model_kwargs: Any) -> dict[str, Any]:
    """Flax variables of model ``name`` from a PyTorch state_dict (or an official checkpoint).

    The head argument (``num_classes`` of a classifier, ``num_joints`` of a heatmap model, in
    ``model_kwargs``) defaults to the rows of ``fc.weight`` / ``final_layer.weight``; values are
    cast to ``dtype``; ``model_kwargs`` as in ``models.create``.
    """
    sd = unwrap_state_dict(state_dict)
    head = head_args(name, sd, num_classes=num_classes, num_joints=model_kwargs.pop("num_joints", None))
    expected = expected_variables(name, **head, **model_kwargs)
    layout = read_layout(name, sd, expected)
    keys = {path: torch_key(path, layout) for path in expected}
    missing, misshaped, nonfinite, flat = [], [], [], {}
    for path, shape in expected.items():
        key = keys[path]
        if key not in sd:
            missing.append(f"{key} (expected shape "
                           f"{tuple(_to_torch_layout(path, np.zeros(shape.shape), layout).shape)})")
            continue
        value = _as_numpy(sd[key])
        want = _to_torch_layout(path, np.zeros(shape.shape), layout).shape
        if value.shape != want:
            misshaped.append(f"{key}: expected shape {tuple(want)} for {'/'.join(path)}, got {tuple(value.shape)}")
            continue
        if not np.all(np.isfinite(value)):
            nonfinite.append(f"{key} ({int(np.sum(~np.isfinite(value)))} of {value.size} values NaN or inf)")
            continue
        flat[path] = _from_torch_layout(path, value.astype(dtype), layout, shape.shape)
    bn_modules = {k.rsplit(".", 1)[0] for k in keys.values() if k.endswith(".running_mean")}
    unexpected = [k for k in sd if k not in keys.values()
                  and not (k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] in bn_modules)]
    problems = ([f"missing: {m}" for m in missing] + [f"misshaped: {m}" for m in misshaped]
                + [f"not finite: {m}" for m in nonfinite]
                + [f"unexpected: {k} {tuple(_as_numpy(sd[k]).shape)}" for k in sorted(unexpected)])
    if problems:
        arg, _, what = _HEAD_KEYS[models.info(name).head]
        raise ValueError(f"state_dict does not match model {name!r} ({head[arg]} {what}):\n  "
                         + "\n  ".join(problems))
    return traverse_util.unflatten_dict(flat)


def read_layout(name: str, sd: Mapping[str, Any], expected: Mapping[Path_, Any]) -> str:
    """The layout of model ``name`` that state_dict ``sd`` is in: the registered one, or an
    alternate (``ALTERNATE_LAYOUTS``) that matches more of its keys."""
    layout = models.info(name).torch_layout
    candidates = (layout, *ALTERNATE_LAYOUTS.get(layout, ()))
    return max(candidates, key=lambda c: sum(torch_key(p, c) in sd for p in expected))


def to_torch(name: str, variables: Mapping[str, Any], num_batches_tracked: int = 0,
             layout: str | None = None) -> OrderedDict:
    """A PyTorch state_dict (``torch.Tensor`` values) of model ``name`` from Flax variables, in the
    model's registered layout or ``layout`` (one of ``ALTERNATE_LAYOUTS`` of it)."""
    import torch

    registered = models.info(name).torch_layout
    if layout is None:
        layout = registered
    elif layout not in (registered, *ALTERNATE_LAYOUTS.get(registered, ())):
        others = "".join(f" or {a}" for a in ALTERNATE_LAYOUTS.get(registered, ()))
        raise ValueError(f"model {name!r} has the PyTorch layout {registered!r}{others}, not {layout!r}")
    out: OrderedDict[str, Any] = OrderedDict()
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        key = torch_key(path, layout)
        value = np.array(_to_torch_layout(path, np.asarray(value), layout), order="C")  # a writable copy
        out[key] = torch.from_numpy(value)
        if key.endswith(".running_var"):
            out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = torch.tensor(num_batches_tracked, dtype=torch.long)
    return out


def load_torch_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a ``.pth``/``.pth.tar`` file safely (``weights_only=True``) and returns its state_dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        # torch's own message suggests weights_only=False, which runs arbitrary code from the file:
        # never pass that advice on.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {first.split('. ')[0]})") from e
    return unwrap_state_dict(checkpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a PyTorch checkpoint to an mlpbnn variables checkpoint.")
    parser.add_argument("checkpoint", help=".pth / .pth.tar file (state_dict or {'state_dict': ...})")
    parser.add_argument("out_dir", help="new directory for the orbax checkpoint")
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(models.names())}")
    parser.add_argument("--num-classes", type=int, default=None, help="classifiers; default: rows of fc.weight")
    parser.add_argument("--num-joints", type=int, default=None,
                        help="heatmap models; default: rows of final_layer.weight")
    parser.add_argument("--small-inputs", action="store_true")
    args = parser.parse_args(argv)
    kwargs = {"small_inputs": True} if args.small_inputs else {}
    try:
        models.info(args.model)  # an unknown name before reading the file
        sd = load_torch_checkpoint(args.checkpoint)
        head = head_args(args.model, sd, num_classes=args.num_classes, num_joints=args.num_joints)
        variables = from_torch(args.model, sd, **head, **kwargs)
        out = save_variables(args.out_dir, variables, args.model, {**head, **kwargs})
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    n = sum(np.size(v) for v in jax.tree.leaves(variables))
    print(f"converted {len(sd)} tensors ({n:,} values) of {args.model} to {out}")


if __name__ == "__main__":
    main()
