"""Model zoo: names and options, registry metadata, variable paths frozen against the models before
the backbone/head split, backbones and the classifier head, dtypes, train-mode state, estimators."""

import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mlpbnn import estimators, models
from mlpbnn import layers as L

TINY = {"width": 8, "small_inputs": True, "stage_sizes": (1, 1, 1, 1)}
# The heatmap models have their own tests (tests/test_models_simple_baseline.py).
CLASSIFIERS = [n for n in models.names() if models.info(n).head == "classifier"]


def test_names():
    assert models.names() == ["bhrnet_w32", "bhrnet_w48", "bireal_resnet18", "bireal_resnet34", "hrnet_w32",
                              "hrnet_w48", "reactnet_a", "reactnet_resnet18", "resnet18", "resnet34", "resnet50",
                              "sbpn_resnet18", "sbpn_resnet34", "simple_baseline_resnet18", "simple_baseline_resnet34",
                              "simple_baseline_resnet50"]


def test_bad_name_and_option():
    with pytest.raises(ValueError, match="unknown model 'vgg16'; valid names: bhrnet_w32, bhrnet_w48, bireal_resnet18"):
        models.create("vgg16")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\].*valid: .*small_inputs"):
        models.create("resnet18", depth=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_classes'\]"):
        models.create_backbone("resnet18", num_classes=3)  # a backbone has no classes
    with pytest.raises(ValueError, match="unknown estimator 'sgn'"):
        models.create("bireal_resnet18", weight_estimator="sgn")
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        models.info("vgg16")


def test_head_arguments_are_the_heads():
    """``create`` takes the head's argument (the task's ``model_args()``) and refuses the other
    kind's with one line naming the valid one."""
    assert models.create("resnet18").num_classes == 1000 and models.create("resnet18", num_classes=3).num_classes == 3
    assert models.create("simple_baseline_resnet18").num_joints == 17
    assert models.create("sbpn_resnet18", num_joints=14).num_joints == 14
    with pytest.raises(ValueError, match=r"^model 'resnet18' has a classifier head: num_joints is not its "
                                         r"argument; valid: num_classes$"):
        models.create("resnet18", num_joints=17)
    with pytest.raises(ValueError, match=r"^model 'sbpn_resnet18' has a heatmap head: num_classes is not its "
                                         r"argument; valid: num_joints$"):
        models.create("sbpn_resnet18", 10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['head'\] for model 'resnet18'"):
        models.create("resnet18", head="real")
    with pytest.raises(ValueError, match=r"head='binary' needs a binary backbone"):
        models.create("simple_baseline_resnet18", head="binary")
    with pytest.raises(ValueError, match=r"head must be one of \('real', 'binary'\)"):
        models.create("sbpn_resnet18", head="ternary")


def test_info():
    expected = {"bireal_resnet18": (True, "bbc", "classifier"), "bireal_resnet34": (True, "bbc", "classifier"),
                "reactnet_resnet18": (True, "reactnet", "classifier"),
                "reactnet_a": (True, "reactnet_a", "classifier"),
                "resnet18": (False, "torchvision", "classifier"), "resnet34": (False, "torchvision", "classifier"),
                "resnet50": (False, "torchvision", "classifier"),
                "simple_baseline_resnet18": (False, "pose_resnet", "heatmap"),
                "simple_baseline_resnet34": (False, "pose_resnet", "heatmap"),
                "simple_baseline_resnet50": (False, "pose_resnet", "heatmap"),
                "sbpn_resnet18": (True, "bbc", "heatmap"), "sbpn_resnet34": (True, "bbc", "heatmap"),
                "hrnet_w32": (False, "pose_hrnet", "heatmap"), "hrnet_w48": (False, "pose_hrnet", "heatmap"),
                "bhrnet_w32": (True, "bbc", "heatmap"), "bhrnet_w48": (True, "bbc", "heatmap")}
    assert sorted(expected) == models.names()
    for name, (binary, layout, head) in expected.items():
        info = models.info(name)
        hrnet = "hrnet" in name  # HRNet's own options and head: tests/test_models_hrnet.py
        assert (info.name, info.binary, info.torch_layout, info.head) == (name, binary, layout, head)
        assert info.estimator_fields == (("weight_estimator", "activation_estimator") if binary else ())
        assert set(info.estimator_fields) <= set(info.options) and ("small_inputs" in info.options) != hrnet
        assert ("head_shortcut" in info.options) == (head == "heatmap" and not hrnet)
        with pytest.raises(AttributeError):  # frozen
            info.binary = not binary
        head_arg = {"num_classes": 10} if head == "classifier" else {"num_joints": 3}
        model = models.create(name, **head_arg, **{f: "ste" for f in info.estimator_fields})  # the fields exist
        assert isinstance(model, models.info(name).head_class) and model.kind == head


# Flattened variable paths and shapes of every registry model, generated from the models as they
# were before the backbone/head split (commit 5820a01): the count and the sha256 of the sorted
# "collection/module/.../leaf:(shape)" lines. Checkpoints, converters and parity tests rely on them.
_CONFIGS = {
    "default": (1000, {}),
    "tiny": (10, TINY),
    "per_layer": (10, {**TINY, "share_estimator": False}),
    "learn_acts": (10, {**TINY, "activation_estimator": {"name": "linear", "hidden": 4}}),
    "real_weights": (10, {**TINY, "weight_estimator": None}),
}
_GOLDEN = {
    "bireal_resnet18/default": (121, "75c7ce6447df3cb2d887311d"),
    "bireal_resnet18/tiny": (49, "94e8f280d1de1d01c9cabbd3"),
    "bireal_resnet18/per_layer": (55, "7a31381422db5ce9fe3d93b2"),
    "bireal_resnet18/learn_acts": (51, "0aa0aa24904c3450165761a8"),
    "bireal_resnet18/real_weights": (47, "768f13ea5c53d70a868ef427"),
    "bireal_resnet34/default": (217, "b695a0c8cba30af04fec0d03"),
    "bireal_resnet34/tiny": (49, "94e8f280d1de1d01c9cabbd3"),
    "reactnet_resnet18/default": (166, "d2de23d741ea0fff1eddcb29"),
    "reactnet_resnet18/tiny": (58, "0e06609c7a8054a556dbaedd"),
    "reactnet_resnet18/learn_acts": (60, "f79366f2e28bf3a89949bfe0"),
    "resnet18/default": (102, "c6c0abb8c6b2d0afca8f583b"),
    "resnet18/tiny": (62, "ad8b772ea87bb9f658d83d21"),
    "resnet34/default": (182, "86f6f5c45bccdf719f2f3904"),
    "resnet34/tiny": (62, "ad8b772ea87bb9f658d83d21"),
    "resnet50/default": (267, "d711c6a2cdcc2c47784a352a"),
    "resnet50/tiny": (87, "893a11973af9ebed364ede49"),
}
_SPOT = {
    "resnet50/default": {"params/layer3_1/bn3/scale": (1024,), "batch_stats/layer1_2/bn3/mean": (256,),
                         "params/layer1_0/downsample_0/kernel": (1, 1, 64, 256), "params/fc/kernel": (2048, 1000)},
    "reactnet_resnet18/default": {"params/layer3_0/downsample_1/kernel": (1, 1, 128, 256),
                                  "params/layer1_3/binary_conv/kernel": (3, 3, 64, 64),
                                  "params/layer2_0/move0/bias": (64,), "params/layer4_3/prelu/slope": (512,)},
    "bireal_resnet34/default": {"params/nonlinear/slope": (64,), "params/layer1_4/nonlinear/slope": (64,),
                                "params/layer4_0/downsample_2/scale": (512,), "params/layer4_5/binary_conv/kernel":
                                (3, 3, 512, 512), "estimator/weight_estimator/w1": (100, 2)},
    "resnet34/default": {"params/layer2_0/bn2/scale": (128,), "batch_stats/layer4_1/bn2/mean": (512,),
                         "params/conv1/kernel": (7, 7, 3, 64), "params/fc/bias": (1000,)},
}
# The small network in full.
_TINY_BIREAL = {
    "batch_stats/bn1/mean": (8,), "batch_stats/bn1/var": (8,), "batch_stats/layer1_0/bn1/mean": (8,),
    "batch_stats/layer1_0/bn1/var": (8,), "batch_stats/layer2_0/bn1/mean": (16,),
    "batch_stats/layer2_0/bn1/var": (16,), "batch_stats/layer2_0/downsample_2/mean": (16,),
    "batch_stats/layer2_0/downsample_2/var": (16,), "batch_stats/layer3_0/bn1/mean": (32,),
    "batch_stats/layer3_0/bn1/var": (32,), "batch_stats/layer3_0/downsample_2/mean": (32,),
    "batch_stats/layer3_0/downsample_2/var": (32,), "batch_stats/layer4_0/bn1/mean": (64,),
    "batch_stats/layer4_0/bn1/var": (64,), "batch_stats/layer4_0/downsample_2/mean": (64,),
    "batch_stats/layer4_0/downsample_2/var": (64,), "estimator/weight_estimator/w0": (1, 100),
    "estimator/weight_estimator/w1": (100, 2), "params/bn1/bias": (8,), "params/bn1/scale": (8,),
    "params/conv1/kernel": (3, 3, 3, 8), "params/fc/bias": (10,), "params/fc/kernel": (64, 10),
    "params/layer1_0/binary_conv/kernel": (3, 3, 8, 8), "params/layer1_0/bn1/bias": (8,),
    "params/layer1_0/bn1/scale": (8,), "params/layer1_0/nonlinear/slope": (8,),
    "params/layer2_0/binary_conv/kernel": (3, 3, 8, 16), "params/layer2_0/bn1/bias": (16,),
    "params/layer2_0/bn1/scale": (16,), "params/layer2_0/downsample_1/kernel": (1, 1, 8, 16),
    "params/layer2_0/downsample_2/bias": (16,), "params/layer2_0/downsample_2/scale": (16,),
    "params/layer2_0/nonlinear/slope": (16,), "params/layer3_0/binary_conv/kernel": (3, 3, 16, 32),
    "params/layer3_0/bn1/bias": (32,), "params/layer3_0/bn1/scale": (32,),
    "params/layer3_0/downsample_1/kernel": (1, 1, 16, 32), "params/layer3_0/downsample_2/bias": (32,),
    "params/layer3_0/downsample_2/scale": (32,), "params/layer3_0/nonlinear/slope": (32,),
    "params/layer4_0/binary_conv/kernel": (3, 3, 32, 64), "params/layer4_0/bn1/bias": (64,),
    "params/layer4_0/bn1/scale": (64,), "params/layer4_0/downsample_1/kernel": (1, 1, 32, 64),
    "params/layer4_0/downsample_2/bias": (64,), "params/layer4_0/downsample_2/scale": (64,),
    "params/layer4_0/nonlinear/slope": (64,), "params/nonlinear/slope": (8,),
}


def _variable_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return {"/".join(p): tuple(v.shape) for p, v in traverse_util.flatten_dict(shapes).items()}


@pytest.mark.parametrize("key", sorted(_GOLDEN))
def test_variable_paths_and_shapes_are_unchanged(key):
    name, config = key.split("/")
    num_classes, kw = _CONFIGS[config]
    shapes = _variable_shapes(models.create(name, num_classes, **kw))
    lines = "\n".join(f"{p}:{s}" for p, s in sorted(shapes.items()))
    assert (len(shapes), hashlib.sha256(lines.encode()).hexdigest()[:24]) == _GOLDEN[key]
    for path, shape in _SPOT.get(key, {}).items():
        assert shapes[path] == shape, path
    if key == "bireal_resnet18/tiny":
        assert shapes == _TINY_BIREAL


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("resnet50", "bireal_resnet18")
                                  else n for n in CLASSIFIERS])
def test_shapes_dtypes_and_train_mode(name):
    model = models.create(name, 10, **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    variables = model.init(jax.random.key(1), x)
    logits = model.apply(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))


@pytest.mark.parametrize("name", ["bireal_resnet18", "resnet50"])
def test_backbone_feature_maps_and_classifier_head(name):
    """The backbone's variables are the classifier's without ``fc``; it returns one map per stage
    (strides 1, 2, 2, 2 with the small-input stem); the logits are ``fc`` of the average of the
    last map."""
    kw = {**TINY, "stage_sizes": (1, 1, 1)}  # three stages, as configs/fashion_mnist.py
    model, backbone = models.create(name, 7, **kw), models.create_backbone(name, **kw)
    assert model.backbone == backbone
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    variables = model.init(jax.random.key(1), x)
    backbone_vars = backbone.init(jax.random.key(1), x)
    flat, flat_backbone = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(backbone_vars)
    assert set(flat) - set(flat_backbone) == {("params", "fc", "kernel"), ("params", "fc", "bias")}
    for path, value in flat_backbone.items():  # same names, same initial values
        np.testing.assert_array_equal(value, flat[path])
    features = backbone.apply(variables, x)
    expansion = 4 if name == "resnet50" else 1
    assert [f.shape for f in features] == [(2, 12, 12, 8 * expansion), (2, 6, 6, 16 * expansion),
                                           (2, 3, 3, 32 * expansion)]
    fc = variables["params"]["fc"]
    expected = features[-1].mean(axis=(1, 2)) @ fc["kernel"] + fc["bias"]
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.asarray(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stage_sizes"):
        models.create_backbone(name, stage_sizes=()).init(jax.random.key(0), x)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "resnet50" else n
                                  for n in CLASSIFIERS])
def test_bfloat16_keeps_bn_and_head_float32(name):
    """README's mixed-precision policy: convolutions in bf16; params, every BatchNorm (so the
    shortcut stream) and the fc head in float32; float32 logits."""
    model = models.create(name, 10, dtype=jnp.bfloat16, **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    variables = model.init(jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    kinds = _layer_outputs(model, variables, x)
    assert kinds["BatchNorm"] and all(dt == jnp.float32 for dt in kinds["BatchNorm"])
    assert kinds["Conv"] and all(dt == jnp.bfloat16 for dt in kinds["Conv"] + kinds.get("BinaryConv", []))
    assert kinds["Dense"] == [jnp.float32]
    # The head is exactly the float32 head on the bf16 network's last feature map.
    features = models.create_backbone(name, dtype=jnp.bfloat16, **TINY).apply(variables, x)[-1]
    assert features.dtype == jnp.float32
    fc = variables["params"]["fc"]
    expected = jnp.mean(features, axis=(1, 2)) @ fc["kernel"] + fc["bias"]
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.asarray(expected), rtol=1e-5, atol=1e-6)


def _layer_outputs(model: nn.Module, variables, x) -> dict[str, list]:
    """Output dtypes of every BatchNorm, Conv, BinaryConv and Dense call, by layer type."""
    kinds: dict[str, list] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        layer_types = L.BatchNorm | nn.Conv | L.BinaryConv | nn.Dense
        if context.method_name == "__call__" and isinstance(context.module, layer_types):
            kinds.setdefault(type(context.module).__name__, []).append(out.dtype)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    return kinds


def test_estimator_defaults_and_sharing():
    m = models.create("bireal_resnet18")
    assert m.backbone.spec.weights == estimators.get("mlp")
    assert m.backbone.spec.inputs == estimators.get("approx_sign")
    x = jnp.ones((1, 12, 12, 3))
    shared = models.create("bireal_resnet18", 10, **TINY).init(jax.random.key(0), x)
    assert list(shared["estimator"]) == ["weight_estimator"]
    per_layer = models.create("bireal_resnet18", 10, share_estimator=False, **TINY).init(jax.random.key(0), x)
    assert sorted(per_layer["estimator"]) == ["layer1_0", "layer2_0", "layer3_0", "layer4_0"]
    both = models.create("bireal_resnet18", 10, activation_estimator={"name": "linear", "hidden": 4},
                         **TINY).init(jax.random.key(0), x)
    assert sorted(both["estimator"]) == ["input_estimator", "weight_estimator"]
    real_weights = models.create("bireal_resnet18", 10, weight_estimator=None, **TINY).init(jax.random.key(0), x)
    assert "estimator" not in real_weights


@pytest.mark.slow
def test_progress_reaches_scheduled_estimators():
    """EDE (IR-Net, arXiv 1909.10788) scheduled by the progress passed to the model equals EDE
    with that point's fixed t = t_min 10^(p log10(t_max / t_min)), k = max(1/t, 1), in every
    binary layer; without progress the fixed hparams apply."""
    t_min, t_max = 0.1, 10.0
    ede = {"name": "ede", "t_min": t_min, "t_max": t_max}
    model = models.create("bireal_resnet18", 10, activation_estimator=ede, weight_estimator="ste", **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    v = model.init(jax.random.key(1), x)

    def grad(m, p):
        return np.asarray(jax.grad(lambda xx: m.apply(v, xx, progress=p).sum())(x))

    p = 0.3
    t = t_min * 10 ** (p * np.log10(t_max / t_min))
    fixed = models.create("bireal_resnet18", 10, activation_estimator={**ede, "t": t, "k": max(1 / t, 1.0)},
                          weight_estimator="ste", **TINY)
    np.testing.assert_allclose(grad(model, p), grad(fixed, None), rtol=1e-5, atol=1e-7)
    assert float(np.abs(grad(model, 0.0) - grad(model, 1.0)).max()) > 1e-3
    assert float(np.abs(grad(model, p) - grad(model, None)).max()) > 1e-3


def test_reactnet_structure():
    v = models.create("reactnet_resnet18", 10, **TINY).init(jax.random.key(0), jnp.ones((1, 12, 12, 3)))
    block = v["params"]["layer1_0"]
    assert sorted(block) == ["binary_conv", "bn1", "move0", "move1", "move2", "prelu"]
    k = np.asarray(block["binary_conv"]["kernel"])
    assert k.min() >= 0 and k.max() < 1e-3  # ReActNet's U(0, 0.001) latent init
    assert "nonlinear" not in v["params"]  # Bi-Real stem: no PReLU


def test_bad_variant_block_and_init():
    x = jnp.ones((1, 12, 12, 3))
    with pytest.raises(ValueError, match="variant"):
        models.create("bireal_resnet18", variant="xnor").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="BinarySpec.init"):
        models.create("bireal_resnet18", binary_init="zeros").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="block"):
        models.create("resnet18", block="wide").init(jax.random.key(0), x)
