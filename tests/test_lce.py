"""The Larq Compute Engine path (mlpbnn/lce.py) against the packed backend.

The conversions run in .venv-lce (make lce-env: TensorFlow 2.16, larq, larq-compute-engine 0.16),
through ``python -m mlpbnn.lce`` in a subprocess; those tests are skipped where that environment
is missing. The numpy helpers of mlpbnn.lce run here.

Tolerance of the LCE outputs against ``PackedNetwork``'s: 1e-4 of the largest |logit|, no rtol.
The binary layers give the same integers in both (bit-packed XNOR-popcount, with the same signs
and paddings), so what differs is float32 rounding of the real layers: TFLite folds the stem's
BatchNorm into its conv weights, fuses the scale and bias into LceBconv2d, and sums the convs,
pools and the classifier in another order (measured: at most ~2e-6 on logits of ~1.4). A binary
layer that disagreed (a sign flip, a padding off by one row) would move its output by 2 * scale
per product, far beyond that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import export, lce, models, packed

REPO = Path(__file__).resolve().parent.parent
LCE_PYTHON = REPO / ".venv-lce" / "bin" / "python"
needs_lce = pytest.mark.skipif(not LCE_PYTHON.exists(),
                               reason=f"no LCE environment ({LCE_PYTHON} missing; create it with: make lce-env)")
RTOL_OF_MAX = 1e-4


def _lce(*args: str, timeout: int = 300) -> str:
    """``.venv-lce/bin/python -m mlpbnn.lce ARGS`` from the repository root; its stdout."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    p = subprocess.run([str(LCE_PYTHON), *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return p.stdout


def _randomised(model, x, seed=0, impl=None):
    """Variables with random BatchNorm statistics and affines, PReLU slopes and shifts (at init they
    are the identity, which would hide a wrong folding or order). ``impl="unsafe_rbg"``: a key
    whose bit generator compiles faster than threefry's (an HRNet's init)."""
    v = jax.jit(model.init)(jax.random.key(seed, impl=impl), x)
    rng = np.random.default_rng(seed + 1)

    def draw(path, a):
        a = np.asarray(a)
        key = jax.tree_util.keystr(path)
        if "'var'" in key:
            return (0.5 + rng.random(a.shape)).astype(a.dtype)
        if "'mean'" in key or ("'bias'" in key and "'fc'" not in key):
            return (0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
        if "'scale'" in key or "'slope'" in key:
            return (0.5 + rng.random(a.shape)).astype(a.dtype)
        return a

    return jax.tree_util.tree_map_with_path(draw, v)


def _export(tmp: Path, name: str, kwargs: dict, size: int | tuple[int, int], n: int, seed: int = 0,
            impl: str | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """A random model's export in ``tmp``, its inputs (n, h, w, 3) (``size``: h = w or (h, w)) and the
    packed backend's outputs."""
    h, w = (size, size) if isinstance(size, int) else size
    model = models.create(name, **kwargs)
    x = np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)
    v = _randomised(model, jnp.asarray(x[:1]), seed, impl)
    spec = {"height": h, "width": w, "channels": 3}
    program, arrays = export.build(v, name, kwargs, spec)
    export.save(tmp, program, arrays, {"input_spec": spec})
    np.save(tmp / "x.npy", x)
    return tmp, x, np.asarray(packed.PackedNetwork(program, arrays)(x))


def _check(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=RTOL_OF_MAX * np.abs(ref).max(), rtol=0)
    np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))


# ------------------------------------------------------------------------------------------- numpy helpers


def test_helpers_equal_the_packed_backends():
    rng = np.random.default_rng(0)
    for kh, kw, c, o in ((3, 3, 40, 7), (1, 1, 64, 5), (7, 7, 3, 16)):
        w = np.where(rng.standard_normal((kh, kw, c, o)) >= 0, 1.0, -1.0).astype(np.float32)
        np.testing.assert_array_equal(lce.unpack_signs(packed.pack_weight_signs(w), (kh, kw), c), w)
        for hw, s, pad in (((9, 10), (1, 1), ((1, 1), (1, 1))), ((8, 8), (2, 2), ((3, 3), (3, 3))),
                           ((7, 6), (2, 1), ((1, 0), (2, 1)))):
            np.testing.assert_array_equal(lce.border_correction(w.sum(axis=2), hw, s, pad),
                                          packed.border_correction(w.sum(axis=2), hw, s, pad))
    # TensorFlow's SAME: less before; PyTorch's symmetric padding equals it at stride 1 and on odd sizes only.
    assert lce.same_padding(16, 3, 1) == [1, 1] and lce.same_padding(15, 3, 2) == [1, 1]
    assert lce.same_padding(16, 3, 2) == [0, 1] and lce.same_padding(64, 7, 2) == [2, 3]
    assert lce.same_padding(4, 1, 2) == [0, 0]


def test_module_does_not_import_jax_and_refuses_unknown_ops(tmp_path):
    code = "import sys, mlpbnn.lce; assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')]"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    doc = {"format": lce.FORMAT, "version": 2, "input_spec": {"height": 4, "width": 4, "channels": 1},
           "ops": [{"op": "relu", "src": "input", "dst": "a"}, {"op": "lstm", "src": "a", "dst": "output"}]}
    with pytest.raises(lce.LceError, match="op 1: 'lstm' is not supported"):
        lce.keras_model(doc, {})  # refused before TensorFlow is imported
    (tmp_path / "model.json").write_text(json.dumps({**doc, "version": 9}))
    np.savez(tmp_path / "weights.npz")
    with pytest.raises(lce.LceError, match="version 9"):
        lce.load_export(tmp_path)


# ------------------------------------------------------------------------------------------- through LCE


@needs_lce
@pytest.mark.slow
def test_bireal_resnet18_lce_equals_packed(tmp_path):
    """bireal_resnet18 with the ImageNet stem at 64x64 (7x7 stride-2 conv and max-pool padded 3/3 and
    1/1, three stride-2 binary convs on even sizes: none of them TensorFlow's SAME), width 16, random
    BN statistics, through the CLI: convert (batch 2) and run on 5 inputs (the last batch padded)."""
    kw = {"num_classes": 10, "width": 16, "stage_sizes": (1, 1, 1, 1)}
    d, x, ref = _export(tmp_path / "packed", "bireal_resnet18", kw, 64, 5)
    tfl = tmp_path / "m.tflite"
    info = json.loads(_lce("-m", "mlpbnn.lce", "convert", str(d), str(tfl), "--batch", "2").strip().splitlines()[-1])
    assert info["lce_ops"] == {"LceBconv2d": 4, "LceQuantize": 4}, info["ops"]
    assert info["input"] == [2, 64, 64, 3] and info["output"] == [2, 10] and tfl.stat().st_size == info["bytes"]
    _lce("-m", "mlpbnn.lce", "run", str(tfl), str(d / "x.npy"), str(tmp_path / "y.npy"), "--threads", "1")
    _check(np.load(tmp_path / "y.npy"), ref)
    bench = json.loads(_lce("-m", "mlpbnn.lce", "bench", str(tfl), "--batch", "2", "--rounds", "3", "--warmup", "1"))
    assert len(bench["times_s"]) == 3 and 0 < bench["min_s"] <= bench["median_s"]


def _v2_program(rng) -> tuple[dict, dict]:
    """A hand-written format-2 program with every op mlpbnn.lce converts: binary convs at stride 2
    on an odd size (TensorFlow's SAME: LCE's own zero padding), with +-1 padding and sign(0) = -1,
    40 input channels (not a multiple of 32), transposed convs, pooling with every padding form,
    upsampling, concatenation, channel mean and repeat, a binary dense layer."""
    arrays: dict[str, np.ndarray] = {}

    def f(name, *shape, lo=None):
        a = rng.standard_normal(shape).astype(np.float32)
        arrays[name] = (lo + np.abs(a)) if lo is not None else a * 0.5
        return name

    def bits(name, kh, kw, c, o):
        arrays[name] = packed.pack_weight_signs(np.where(rng.standard_normal((kh, kw, c, o)) >= 0, 1.0, -1.0))
        return name

    def binary(kind, src, dst, k, c, o, strides=(1, 1), pad=((1, 1), (1, 1)), pad_value=0.0, sz=1.0):
        op = {"op": kind, "src": src, "dst": dst, "bits": bits(f"{dst}/bits", k, k, c, o), "in_channels": c,
              "sign_zero": sz, "scale": f(f"{dst}/scale", o, lo=0.05), "bias": f(f"{dst}/bias", o)}
        if kind != "binary_dense":
            op.update(kernel_size=[k, k], strides=list(strides), padding=[list(p) for p in pad])
        if kind == "binary_conv":
            op["pad_value"] = pad_value
        return op

    ops = [
        {"op": "conv", "src": "input", "dst": "a", "kernel": f("a/k", 3, 3, 3, 40), "strides": [1, 1],
         "padding": [[1, 1], [1, 1]]},
        {"op": "affine", "src": "a", "dst": "a", "scale": f("a/s", 40, lo=0.5), "bias": f("a/b", 40)},
        binary("binary_conv", "a", "b", 3, 40, 64, (2, 2)),  # 9 -> 5, SAME
        {"op": "relu", "src": "b", "dst": "b"},
        {"op": "bias", "src": "b", "dst": "b", "bias": f("b/shift", 64)},
        binary("binary_conv", "b", "c", 3, 64, 64, pad_value=-1.0, sz=-1.0),  # sign(0) = -1, padding -1: +1 of -x
        binary("binary_conv", "c", "d", 3, 64, 32, pad_value=-1.0),  # explicit -1 padding
        binary("binary_conv", "d", "d2", 3, 32, 32, (2, 2), ((0, 2), (2, 0)), pad_value=1.0),  # 5 -> 3, explicit +1
        {"op": "maxpool", "src": "d", "dst": "e", "window": 2, "strides": 2, "padding": [[0, 1], [0, 1]]},  # 5 -> 3
        {"op": "add", "src": ["e", "d2"], "dst": "e"},
        {"op": "upsample", "src": "e", "dst": "u", "factors": [2, 2]},  # 6x6x32
        {"op": "conv_transpose", "src": "e", "dst": "t", "kernel": f("t/k", 4, 4, 32, 16), "strides": [2, 2],
         "padding": [[1, 1], [1, 1]]},  # 6x6x16
        {"op": "bias", "src": "t", "dst": "t", "bias": f("t/b", 16)},
        binary("binary_conv_transpose", "e", "bt", 3, 32, 16, (2, 2), ((1, 0), (0, 1)), sz=-1.0),  # 6x6x16
        {"op": "concat", "src": ["u", "t", "bt"], "dst": "g", "channels": 64},
        {"op": "channel_mean", "src": "g", "dst": "g", "group": 4},  # 16
        {"op": "channel_repeat", "src": "g", "dst": "g", "factor": 2},  # 32
        {"op": "avgpool", "src": "g", "dst": "h", "window": 2, "strides": 2},  # 3x3
        {"op": "prelu", "src": "h", "dst": "h", "slope": f("h/slope", 32, lo=0.1)},
        {"op": "maxpool", "src": "h", "dst": "h", "window": 3, "strides": 1, "padding": 1},
        {"op": "global_avg_pool", "src": "h", "dst": "p", "keepdims": True},
        {"op": "flatten", "src": "p", "dst": "p"},
        binary("binary_dense", "p", "q", 1, 32, 24),
        {"op": "prelu", "src": "q", "dst": "q", "slope": f("q/slope", 24, lo=0.1)},
        {"op": "dense", "src": "q", "dst": "output", "kernel": f("fc/k", 24, 10), "bias": f("fc/b", 10)},
    ]
    program = {"format": lce.FORMAT, "version": 2, "input": "input", "output": "output", "ops": ops,
               "input_spec": {"height": 9, "width": 9, "channels": 3}}
    return program, arrays


@needs_lce
@pytest.mark.slow
def test_variants_and_every_op_lce_equal_packed(tmp_path):
    """ReActNet with sign(0) = -1, Bi-Real with +1 and with -1 padding (small-input stem), and the
    hand-written program of every op, converted and run by one LCE process."""
    c = {"num_classes": 10}
    variants = [("reactnet_resnet18", {**c, "width": 32, "stage_sizes": (1, 2, 1, 1), "small_inputs": True,
                                       "activation_estimator": {"name": "ste", "zero": -1.0}}, 16),
                ("bireal_resnet18", {**c, "width": 16, "stage_sizes": (1, 1, 1, 1), "pad_value": 1.0}, 32),
                ("bireal_resnet18", {**c, "width": 48, "stage_sizes": (1, 1, 1), "small_inputs": True,
                                     "pad_value": -1.0, "weight_scale": "pow2"}, 12)]
    cases = [_export(tmp_path / f"v{i}", name, kw, size, 3, seed=i) for i, (name, kw, size) in enumerate(variants)]
    missing = {"conv_transpose", "binary_conv_transpose", "binary_dense", "channel_mean"} - set(packed.OPS)
    if not missing:  # the packed backend of format 2
        program, arrays = _v2_program(np.random.default_rng(7))
        export.save(tmp_path / "every_op", program, arrays, {})
        x = np.random.default_rng(8).standard_normal((3, 9, 9, 3)).astype(np.float32)
        np.save(tmp_path / "every_op" / "x.npy", x)
        cases.append((tmp_path / "every_op", x, np.asarray(packed.PackedNetwork(program, arrays)(x))))
    script = ("import sys\nfrom mlpbnn import lce\nfor d in sys.argv[1:]:\n"
              "    assert lce.main(['convert', d, d + '/m.tflite']) == 0\n"
              "    assert lce.main(['run', d + '/m.tflite', d + '/x.npy', d + '/y.npy']) == 0\n")
    lines = _lce("-c", script, *[str(d) for d, _, _ in cases], timeout=600).splitlines()
    converted = [json.loads(line) for line in lines if line.startswith('{"out"')]
    for (d, _, ref), info in zip(cases, converted, strict=True):
        ops = json.loads((d / "model.json").read_text())["ops"]
        binary = sum(op["op"] in ("binary_conv", "binary_dense") for op in ops)
        assert info["lce_ops"]["LceBconv2d"] == binary
        _check(np.load(d / "y.npy"), ref)
    if missing:
        pytest.skip(f"the packed backend lacks {sorted(missing)}: the program of every op was not checked")


# Tiny pose networks (their own structure: SBPN's ImageNet stem and binary deconvolutions, BHRNet's
# four branches with real or binary transitions and fuse layers), non-square inputs.
POSE = [("sbpn_resnet18", {"num_joints": 5, "width": 8, "stage_sizes": (1, 1, 1, 1), "deconv_features": 16},
         (96, 64)),
        # branches 16x8 .. 2x1: 3x3 zero-padded binary convs on maps narrower than the kernel
        ("bhrnet_w32", {"num_joints": 5, "width": 4, "stage_modules": (1, 1, 1), "stage_blocks": 1,
                        "layer1_blocks": 1, "stem_width": 8, "binary_fuse": False}, (64, 32)),
        # branches 8x16 .. 1x2: stride-2 binary fuse convs with a 1-row output (border correction)
        ("bhrnet_w32", {"num_joints": 5, "width": 4, "stage_modules": (1, 1, 1), "stage_blocks": 1,
                        "layer1_blocks": 1, "stem_width": 8, "binary_fuse": True}, (32, 64))]


@needs_lce
@pytest.mark.slow
def test_pose_models_lce_equal_packed(tmp_path):
    """Tiny SBPN-R18 and BHRNet-W32 (real and binary fuse layers), random BN statistics and biases,
    non-square inputs, each converted for batch 3 and run on 3 inputs; heatmaps within 1e-4 of the
    largest, the same peaks. The BHRNet sizes put two LCE 0.16 pitfalls in the path: its own zero
    padding of a binary conv (``same``) applies no correction where the map is smaller than the kernel
    (a 2-wide map), and TFLite moves a constant ADD before a RESHAPE, onto the LceBconv2d, when the
    constant's shape is a tail of the conv's output shape (a 1-row map's border correction).
    Exact equality needs no pre-activation within float32 rounding (~1e-6) of zero: a sign that
    flips there moves a binary conv by 2 * scale, as in the full-size BHRNet at its init (whose deep
    branches barely depend on the input, so a near-zero value repeats across samples), where every
    op, fed the packed backend's inputs, converts exactly; these tiny networks with drawn biases
    have none (their largest difference is ~2e-7 of the largest heatmap value). Each
    case's LCE process (the Keras SavedModel step of the conversion takes most of its ~13 s) starts
    as soon as its export is written, overlapping the next export."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    script = ("import sys\nfrom mlpbnn import lce\nd = sys.argv[1]\n"
              "assert lce.main(['convert', d, d + '/m.tflite', '--batch', '3']) == 0\n"
              "assert lce.main(['run', d + '/m.tflite', d + '/x.npy', d + '/y.npy']) == 0\n")
    cases = []
    try:
        for i, (name, kw, hw) in enumerate(POSE):
            d, _, ref = _export(tmp_path / f"p{i}", name, kw, hw, 3, seed=i, impl="unsafe_rbg")
            proc = subprocess.Popen([str(LCE_PYTHON), "-c", script, str(d)], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            cases.append((name, hw, d, ref, proc))
        for name, hw, d, ref, proc in cases:
            _check_pose(name, hw, d, ref, proc)
    finally:
        for *_, proc in cases:
            if proc.poll() is None:
                proc.kill()


def _check_pose(name: str, hw: tuple[int, int], d: Path, ref: np.ndarray, proc: subprocess.Popen) -> None:
    """One pose case: its LCE process succeeded and its heatmaps equal the packed backend's."""
    h, w = hw
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}"
    info = json.loads(next(line for line in stdout.splitlines() if line.startswith('{"out"')))
    assert info["input"] == [3, h, w, 3] and info["output"] == [3, *ref.shape[1:]], (name, info)
    out = np.load(d / "y.npy")
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=RTOL_OF_MAX * np.abs(ref).max(), rtol=0, err_msg=name)
    # the heatmaps' peaks (argmax per sample and joint)
    np.testing.assert_array_equal(out.reshape(3, -1, out.shape[-1]).argmax(1),
                                  ref.reshape(3, -1, ref.shape[-1]).argmax(1), err_msg=name)
