"""Packed XNOR-popcount inference against the float (fake-quantized) models it is exported from."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mlpbnn import export, infer, lowering, models, packed

SPEC16 = {"height": 16, "width": 16, "channels": 3}


def _float_conv(x, w, strides):
    return np.asarray(lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))


def _signs(rng, shape):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- kernels


def test_pack_signs_bit_order_and_sign_zero():
    x = np.ones((1, 40), np.float32)
    x[0, [0, 31, 32, 39]] = -1.0
    x[0, 5] = 0.0
    w = np.asarray(packed.pack_signs(jnp.asarray(x)))
    assert w.dtype == np.uint32 and w.shape == (1, 2)
    assert w[0, 0] == (1 | 1 << 31) and w[0, 1] == (1 | 1 << 7)  # sign(0) = +1: bit 0; padding channels 0
    w = np.asarray(packed.pack_signs(jnp.asarray(x), sign_zero=-1.0))
    assert w[0, 0] == (1 | 1 << 5 | 1 << 31)
    with pytest.raises(ValueError, match="sign\\(0\\)"):
        packed.pack_signs(jnp.asarray(x), sign_zero=0.0)


def test_weight_packing_round_trip_and_refuses_zeros():
    rng = np.random.default_rng(0)
    for c in (3, 32, 70):
        w = _signs(rng, (3, 3, c, 5))
        bits = packed.pack_weight_signs(w)
        assert bits.shape == (9, packed.words(c), 5) and bits.dtype == np.uint32
        np.testing.assert_array_equal(packed.unpack_weight_signs(bits, (3, 3), c), w)
    w[0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="not \\+-1"):
        packed.pack_weight_signs(w)


@pytest.mark.parametrize("layout", packed.LAYOUTS)
@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("cin,cout,stride,pad,hw", [(64, 128, 1, 1, (9, 10)), (40, 96, 2, 1, (10, 7)),
                                                      (16, 64, 2, 1, (7, 7)), (100, 33, 1, 2, (6, 5))])
def test_binary_conv_equals_padded_float_conv(layout, pad_value, cin, cout, stride, pad, hw):
    """The packed conv of sign(x) equals XLA's float conv of the +-1 tensors padded with pad_value
    (0 through the border correction), exactly, for channel counts that are and are not multiples
    of 32, strides 1 and 2."""
    rng = np.random.default_rng(cin + cout)
    x = rng.standard_normal((2, *hw, cin)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0  # sign(0) = +1
    w = _signs(rng, (3, 3, cin, cout))
    xs = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    ref = _float_conv(np.pad(xs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value), w,
                      (stride, stride))
    out = packed.binary_conv(jnp.asarray(x), jnp.asarray(packed.pack_weight_signs(w)), cin, (3, 3), (stride, stride),
                             ((pad, pad), (pad, pad)), pad_value, 1.0, w.sum(axis=2), layout)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), ref.astype(np.int32))


def test_border_correction_is_what_the_padding_adds_and_zero_inside():
    rng = np.random.default_rng(3)
    w = _signs(rng, (3, 3, 8, 4))
    x = _signs(rng, (1, 6, 7, 8))
    with_ones = _float_conv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0), w, (1, 1))
    with_zeros = _float_conv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), w, (1, 1))
    corr = packed.border_correction(w.sum(axis=2), (6, 7), (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(with_ones[0] - with_zeros[0], corr)
    assert not corr[1:-1, 1:-1].any()
    np.testing.assert_array_equal(corr[0, 3], w[0].sum(axis=(0, 1)))  # top edge: the three taps of row 0
    np.testing.assert_array_equal(corr[0, 0], w[0].sum(axis=(0, 1)) + w[1:, 0].sum(axis=(0, 1)))  # corner: five


# ------------------------------------------------------------------------------------------- networks


def _randomised(model, x, seed=0, **call):
    """Variables with BatchNorm statistics, BN affines, PReLU slopes and shifts drawn at random, so
    that folding them is tested (at init they are the identity)."""
    # An rbg key: threefry's bit generator makes init compile 4x slower (30 s for a small BHRNet).
    v = jax.jit(functools.partial(model.init, **call))(jax.random.key(seed, impl="unsafe_rbg"), x)
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


def _as(tree, dtype):
    return jax.tree.map(lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree)


def _check_parity(name, kwargs, x, f32=True, f32_atol=1e-4):
    """float64: packed logits equal the float model's to rounding (1e-10); float32 (the stored
    arrays, with ``f32``): identical argmax and logits within ``f32_atol``."""
    model = models.create(name, **kwargs)
    v = _randomised(model, jnp.asarray(x))
    spec = {"height": x.shape[1], "width": x.shape[2], "channels": x.shape[3]}
    program, arrays64 = export.build(v, name, kwargs, spec, dtype=np.float64)
    arrays32 = {k: a.astype(np.float32) if a.dtype == np.float64 else a for k, a in arrays64.items()}
    if f32:
        ref32 = np.asarray(jax.jit(model.apply)(v, x))
        out32 = np.asarray(packed.PackedNetwork(program, arrays32)(x))
        np.testing.assert_array_equal(out32.argmax(-1), ref32.argmax(-1))
        np.testing.assert_allclose(out32, ref32, atol=f32_atol, rtol=0)
    with jax.enable_x64(True):
        model64 = models.create(name, **kwargs, dtype=jnp.float64)
        ref64 = np.asarray(jax.jit(model64.apply)(_as(v, np.float64), x.astype(np.float64)))
        out64 = np.asarray(packed.PackedNetwork(program, arrays64, dtype=jnp.float64)(x.astype(np.float64)))
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, ref64, atol=1e-10 * np.abs(ref64).max(), rtol=0)
    return program, arrays32


USER_MODEL = ("examples.flax_resnet:ResNet",
              {"kwargs": {"stage_sizes": (1, 1), "num_filters": 8, "small_inputs": True}, "num_classes": 10,
               "binarize": "Conv@conv_init=real;Conv@.*/conv_proj=real;Dense=real;"
                           "Conv=mlp(init='positive')/approx_sign:sign_zero=-1"})


def _tiny(name: str, **extra):
    """(kwargs, input size) of a small network of the registered model ``name``: its own structure
    (blocks, head, binary layers), fewer and narrower stages."""
    info = models.info(name)
    kw = {info.head_arg: 10 if info.head_arg == "num_classes" else 5, **extra}
    if "stage_modules" in info.options:  # an HRNet: three halvings need multiples of 32
        return {**kw, "width": 4, "stage_modules": (1, 1, 1), "stage_blocks": 1, "layer1_blocks": 1,
                "stem_width": 8}, 32
    kw.update(width=8, stage_sizes=(1, 1, 1, 1), small_inputs=True)
    if "deconv_features" in info.options:
        kw["deconv_features"] = 16
    return kw, 16


BINARY_MODELS = [n for n in models.names() if models.info(n).binary]


@pytest.mark.parametrize("name,extra", [*((n, {}) for n in BINARY_MODELS), ("bhrnet_w32", {"binary_fuse": True}),
                                        USER_MODEL])
def test_every_binary_model_exports_exactly(name, extra):
    """Every binary model of the registry (and BHRNet's binary fuse layers, and a plain Flax ResNet
    binarized by rules), lowered by tracing with nothing model-specific: each binary op's integer
    accumulator is the same by XNOR-popcount and by float convolution of the +-1 values, and the
    packed network's outputs equal the training model's in float64 (1e-9 of the largest)."""
    kwargs, size = (extra, 16) if models.is_external(name) else _tiny(name, **extra)
    model = models.create(name, **kwargs)
    x = np.random.default_rng(3).standard_normal((2, size, size, 3)).astype(np.float32)
    v = _randomised(model, jnp.asarray(x[:1]), **lowering.eval_kwargs(model))
    program, arrays = export.build(v, name, kwargs, {"height": size, "width": size, "channels": 3}, dtype=np.float64)
    kinds = {op["op"] for op in program["ops"]}
    assert "binary_conv" in kinds and program["binary_weights"] > 0
    assert ("binary_conv_transpose" in kinds) == name.startswith("sbpn")  # SBPN's binary deconvolutions
    with jax.enable_x64(True):
        x64 = x.astype(np.float64)
        for dst, (acc, ref) in packed.binary_accumulators(program, arrays, x64, jnp.float64).items():
            assert np.all(acc == np.round(acc)), dst
            np.testing.assert_array_equal(acc, ref, err_msg=dst)
        model64 = models.create(name, **kwargs, dtype=jnp.float64)
        ref64 = np.asarray(jax.jit(functools.partial(model64.apply, **lowering.eval_kwargs(model)))(
            _as(v, np.float64), x64))
        out64 = np.asarray(packed.PackedNetwork(program, arrays, dtype=jnp.float64)(x64))
    assert out64.shape == ref64.shape and list(out64.shape[1:]) == program["output_shape"]
    # The Flax example casts its logits to float32 (``.astype(jnp.float32)``): that last rounding
    # is all that separates it from the float64 program.
    tol = 1e-9 if ref64.dtype == np.float64 else 2**-23
    np.testing.assert_allclose(out64, ref64, atol=tol * np.abs(ref64).max(), rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", [
    ("bireal_resnet18", {"width": 16, "stage_sizes": (1, 1, 1, 1), "small_inputs": True}, 12),  # 16..128 channels
    ("reactnet_resnet18", {"width": 32, "stage_sizes": (1, 2, 1, 1), "small_inputs": True}, 16),
    ("bireal_resnet18", {"width": 48, "stage_sizes": (1, 1, 1), "small_inputs": True, "pad_value": -1.0,
                         "weight_scale": "pow2"}, 16),
    ("bireal_resnet18", {"width": 32, "stage_sizes": (1, 1, 1, 1), "pad_value": 1.0,
                         "weight_norm": "standardize"}, 32),  # ImageNet stem with max-pool
])
def test_variants_packed_equal_fake_quantized(name, kwargs, size):
    """float64 exactness for each variant (float32 for the first: the other float32 checks are the
    whole bireal_resnet18 and the trained digits model)."""
    x = np.random.default_rng(2).standard_normal((2, size, size, 3)).astype(np.float32)
    program, _ = _check_parity(name, {"num_classes": 10, **kwargs}, x, f32=kwargs["width"] == 16)
    pad_value = kwargs.get("pad_value", 0.0)
    for op in program["ops"]:
        if op["op"] == "binary_conv":
            assert op["pad_value"] == pad_value


def test_refusals():
    spec = {"height": 8, "width": 8, "channels": 3}
    small = {"num_classes": 10, "width": 8, "stage_sizes": (1,), "small_inputs": True}

    def build(name, **kw):
        """Zero variables (shapes only): every weight equals its channel mean, so sign(w) is the
        estimator's sign(0)."""
        model = models.create(name, **{**small, **kw})
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        return export.build(v, name, {**small, **kw}, spec)

    with pytest.raises(export.ExportError, match="classifier.*does not compute sign"):
        build("bireal_resnet18", weight_estimator="classifier")
    with pytest.raises(export.ExportError, match="zero=0"):
        build("bireal_resnet18", activation_estimator={"name": "approx_sign", "zero": 0.0})
    with pytest.raises(export.ExportError, match="real-valued weights"):
        build("bireal_resnet18", weight_estimator=None)
    with pytest.raises(export.ExportError, match="full-precision"):
        export.build({}, "resnet18", {}, spec)
    # Weights with sign(0) = 0 (zero=0 and weights equal to their channel mean) have no bit.
    with pytest.raises(export.ExportError, match="sign 0"):
        build("bireal_resnet18", weight_estimator={"name": "ste", "zero": 0.0})
    program, _ = build("bireal_resnet18", weight_estimator={"name": "ste", "zero": -1.0})  # sign(0) = -1 is a bit
    assert [op["sign_zero"] for op in program["ops"] if op["op"] == "binary_conv"] == [1.0]


def test_the_exporter_names_no_model_and_no_layer():
    """What is exported is what the trace finds: no model name and no layer name of the zoo's in
    export.py and lowering.py (a second description of a network would drift from it)."""
    import re

    layer_names = ["conv1", "bn1", "layer1", "fc", "downsample", "deconv_layers",
                   "final_layer", "transition", "fuse_layers", "stage2", "move0", "nonlinear"]
    for module in (export, lowering):
        source = Path(module.__file__).read_text()
        for name in [*models.names(), "bireal", "reactnet", "resnet", "hrnet", "sbpn", *layer_names]:
            assert not re.search(rf"[\"'/]{re.escape(name)}[\"'/_]", source), (module.__name__, name)


def test_lowering_refuses_what_the_program_cannot_run():
    """A primitive outside the IR is named with the line that made it; BatchNorm with batch
    statistics is refused by path."""
    import flax.linen as nn

    from mlpbnn import BinarySpec
    from mlpbnn import layers as L

    class Tanh(nn.Module):
        train: bool = False

        @nn.compact
        def __call__(self, x):
            x = L.BinaryConv(4, 3, 1, 1, spec=BinarySpec(weights="ste", inputs="ste"), name="conv")(x)
            x = L.BatchNorm(use_running_average=not self.train, name="bn")(x)
            return jnp.tanh(x)

    x = np.zeros((1, 8, 8, 3), np.float32)
    v = jax.jit(Tanh().init)(jax.random.key(0), x)
    with pytest.raises(export.ExportError, match=r"^tanh \(.*test_export.py:\d+.*no op for it"):
        lowering.lower(Tanh(), v, x)
    with pytest.raises(export.ExportError, match="^bn: BatchNorm in training mode"):
        lowering.lower(Tanh(train=True), v, x)


def test_size_of_bireal_resnet18():
    """The exported bireal_resnet18 (1000 classes) against its float32 checkpoint: 10,985,472
    binary weights in 1,373,184 bytes (the complexity count), the real layers in float32."""
    name, kw = "bireal_resnet18", {"num_classes": 1000}
    model = models.create(name, **kw)
    v = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, 32, 32, 3)))
    program, arrays = export.build(v, name, kw, {"height": 32, "width": 32, "channels": 3})
    bits = sum(a.nbytes for a in arrays.values() if a.dtype == np.uint32)
    assert program["binary_weights"] == 10_985_472 and bits == 10_985_472 // 8
    total = sum(a.nbytes for a in arrays.values())
    f32 = export.float32_size(v)
    assert 4.0 * 2**20 < total < 4.4 * 2**20 and 44 * 2**20 < f32 < 46 * 2**20
    assert f32 / total > 10


# ------------------------------------------------------------------------------------------- files and CLI


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
    arrays = {"a/bias": np.ones(3, np.float32)}
    program = {"format": export.FORMAT, "version": export.VERSION, "ops": [], "num_outputs": 3}
    out = tmp_path / "packed"
    export.save(out, program, arrays, {"input_spec": {}})
    first = (out / export.PROGRAM).read_text()
    with pytest.raises(FileExistsError):
        export.save(out, program, arrays, {"input_spec": {}})

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        export.save(out, program, arrays, {"input_spec": {"changed": 1}}, overwrite=True)
    assert (out / export.PROGRAM).read_text() == first  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]  # no temporary directory left
    monkeypatch.undo()
    export.save(out, program, arrays, {"input_spec": {"changed": 1}}, overwrite=True)
    assert json.loads((out / export.PROGRAM).read_text())["input_spec"] == {"changed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]


def test_preprocess_image_file(tmp_path):
    from PIL import Image

    spec = export.input_spec("digits")
    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "d.png")
    np.testing.assert_allclose(infer.preprocess(tmp_path / "d.png", spec)[..., 0], pixels / 127.5 - 1.0, atol=1e-6)
    spec = export.input_spec("imagenet", 32)
    assert spec["shorter_side"] == 37  # round(32 * 256 / 224)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    x = infer.preprocess(tmp_path / "c.png", spec)
    assert x.shape == (32, 32, 3) and abs(float(x.mean())) < 1.0


def _digits_config():
    spec = importlib.util.spec_from_file_location("digits_config", os.path.join(os.path.dirname(__file__), "..",
                                                                                "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.num_train_steps = 60
    c.log_every_steps = 20
    c.checkpoint_every_steps = 60
    c.eval_every_steps = -1
    c.num_devices = 1
    c.progress_bar = False
    return c


@pytest.mark.slow
def test_trained_digits_model_same_predictions_through_the_cli(tmp_path, capsys):
    """The quick start's network (configs/digits.py, trained briefly) exported by the CLI: all 360
    test images get the float model's predictions through ``python -m mlpbnn.infer``."""
    from mlpbnn.data.small import digits
    from mlpbnn.train import run
    from mlpbnn.variables_io import load_variables

    workdir = tmp_path / "run"
    run(_digits_config(), workdir)
    assert export.main([str(workdir / "variables"), str(tmp_path / "packed")]) == 0
    doc = json.loads((tmp_path / "packed" / export.PROGRAM).read_text())
    assert doc["input_spec"]["dataset"] == "digits" and doc["input_spec"]["height"] == 8
    data = digits(0)
    np.save(tmp_path / "test.npy", data.x_test)
    capsys.readouterr()
    assert infer.main([str(tmp_path / "packed"), str(tmp_path / "test.npy"), "--batch-size", "128"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 360 and [r["index"] for r in rows] == list(range(360))
    variables, meta = load_variables(workdir / "variables")
    model = models.create(meta["model"], **meta["model_kwargs"])
    ref = np.asarray(jax.jit(model.apply)(variables, data.x_test))
    logits = np.array([r["logits"] for r in rows])
    np.testing.assert_array_equal([r["top1"] for r in rows], ref.argmax(-1))
    np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    accuracy = float(np.mean(logits.argmax(-1) == data.y_test))
    assert accuracy > 0.5  # trained (chance is 0.1)


@pytest.mark.slow
def test_infer_cli_on_image_files_and_npy(tmp_path, capsys):
    """Image files go through the export's input spec; the same pixels as a preprocessed .npy give
    the same logits, in input order; a batch of another image size is refused naming both shapes
    while the other inputs run (exit status 2)."""
    from PIL import Image

    name, kw = "bireal_resnet18", {"num_classes": 10, "width": 8, "stage_sizes": (1, 1), "small_inputs": True}
    model = models.create(name, **kw)
    v = _randomised(model, jnp.zeros((1, 8, 8, 1)))
    spec = export.input_spec("digits")
    program, arrays = export.build(v, name, kw, spec)
    export.save(tmp_path / "packed", program, arrays, {"input_spec": spec})
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / f"{i}.png")
    pngs = [str(tmp_path / f"{i}.png") for i in range(3)]
    np.save(tmp_path / "same.npy", np.stack([infer.preprocess(p, spec) for p in pngs]))
    np.save(tmp_path / "big.npy", rng.standard_normal((2, 12, 12, 1)).astype(np.float32))
    capsys.readouterr()
    args = [str(tmp_path / "packed"), *pngs, str(tmp_path / "big.npy"), str(tmp_path / "same.npy"), "--batch-size", "2"]
    assert infer.main(args) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {tmp_path / 'big.npy'}: shape (2, 12, 12, 1), the network takes (N, 8, 8, 1) batches or " \
        "one (8, 8, 1) image\n"
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["input"].rsplit("/", 1)[-1], r["index"]) for r in rows] == [
        ("0.png", 0), ("1.png", 0), ("2.png", 0), ("same.npy", 0), ("same.npy", 1), ("same.npy", 2)]
    # The six 8x8 rows run in batches of two ([0.png, 1.png], [2.png, same 0], [same 1, same 2]): a
    # row's position in a batch may change XLA:CPU's vectorised remainder loops, hence the last bit
    # (measured on an AMD EPYC: 0.35533654 vs 0.35533658), not the prediction.
    for a, b in zip(rows[:3], rows[3:], strict=True):
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-6, atol=1e-6 * np.abs(b["logits"]).max())
        assert a["top1"] == b["top1"] == int(np.argmax(a["logits"]))
        assert len(a["topk"]) == 5 and a["topk"][0] == a["top1"]
    direct = np.asarray(packed.PackedNetwork(program, arrays)(np.load(tmp_path / "same.npy")))
    np.testing.assert_allclose([r["logits"] for r in rows[3:]], direct, rtol=1e-6, atol=1e-6 * np.abs(direct).max())
    assert infer.main([str(tmp_path / "packed"), str(tmp_path / "nope.txt")]) == 2
