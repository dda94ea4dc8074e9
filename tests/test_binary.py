"""mlpbnn.binarize: rules applied to plain Flax models (examples/: a flax-examples ResNet and an
MLP-Mixer) give exactly the network built by hand from the binary layers (forward and every
gradient); layer geometry equal to Flax's own layers; variables, introspection, complexity;
the rules' text form; errors by name; train.py on digits with SIGKILL and exact resume."""

import functools
import json
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.flax_resnet import ResNet
from examples.mlp_mixer import MlpMixer
from mlpbnn import REAL, BinarySpec, Rule, binarize, complexity, export, infer, models, parse_rules
from mlpbnn import layers as L
from mlpbnn.binary import format_rules
from mlpbnn.data.small import digits
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import load_variables
from tests.utils_train import cli

BBC = BinarySpec(weights="mlp", inputs="approx_sign")
RESNET_RULES = (Rule("conv_init"), Rule(kind=nn.Dense), Rule(kind=nn.Conv, spec=BBC))
TINY_RESNET = {"stage_sizes": (1, 1), "num_classes": 5, "num_filters": 4, "small_inputs": True}
TINY_MIXER = {"num_classes": 5, "patch_size": 2, "hidden_dim": 6, "num_blocks": 2, "tokens_mlp_dim": 8,
              "channels_mlp_dim": 10}
MIXER_RULES = "Conv=real;Dense@head=real;Dense=mlp/approx_sign"


# ------------------------------------------------------------------ the same networks, by hand


class _HandBlock(nn.Module):
    """examples.flax_resnet.ResNetBlock with its 3x3 convs as BinaryConv (explicit padding:
    Flax's SAME is (1, 1) at stride 1 and (0, 1) for a 3x3 stride-2 conv of an even size)."""

    filters: int
    strides: int
    theta: L.EstimatorParams
    norm: object

    @nn.compact
    def __call__(self, x, progress):
        conv = functools.partial(L.BinaryConv, spec=BBC, weight_theta=self.theta, use_bias=False,
                                 kernel_init=nn.linear.default_kernel_init)
        pad = ((1, 1), (1, 1)) if self.strides == 1 else ((0, 1), (0, 1))
        y = conv(self.filters, 3, self.strides, pad, name="Conv_0")(x, progress)
        y = nn.relu(self.norm(name="BatchNorm_0")(y))
        y = conv(self.filters, 3, 1, 1, name="Conv_1")(y, progress)
        y = self.norm(scale_init=nn.initializers.zeros_init(), name="BatchNorm_1")(y)
        if x.shape != y.shape:
            x = conv(self.filters, 1, self.strides, 0, name="conv_proj")(x, progress)
            x = self.norm(name="norm_proj")(x)
        return nn.relu(x + y)


class _HandResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=True, progress=None):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        theta = L.EstimatorParams(BBC.weights, name="weight_estimator")  # one MLP for every layer
        x = nn.Conv(4, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = _HandBlock(4, 1, theta, norm, name="ResNetBlock_0")(x, progress)
        x = _HandBlock(8, 2, theta, norm, name="ResNetBlock_1")(x, progress)
        return nn.Dense(5, name="Dense_0")(jnp.mean(x, axis=(1, 2)))


class _HandMlp(nn.Module):
    mlp_dim: int
    theta: L.EstimatorParams

    @nn.compact
    def __call__(self, x, progress):
        dense = functools.partial(L.BinaryDense, spec=BBC, weight_theta=self.theta,
                                  kernel_init=nn.linear.default_kernel_init)
        y = nn.gelu(dense(self.mlp_dim, name="Dense_0")(x, progress))
        return dense(x.shape[-1], name="Dense_1")(y, progress)


class _HandMixer(nn.Module):
    @nn.compact
    def __call__(self, x, progress=None):
        theta = L.EstimatorParams(BBC.weights, name="weight_estimator")
        x = nn.Conv(6, (2, 2), strides=(2, 2), padding="VALID", name="stem")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        for i in range(2):
            y = nn.LayerNorm(name=f"MixerBlock_{i}_LayerNorm_0")(x)
            y = _HandMlp(8, theta, name=f"MixerBlock_{i}_token_mixing")(jnp.swapaxes(y, 1, 2), progress)
            x = x + jnp.swapaxes(y, 1, 2)
            y = nn.LayerNorm(name=f"MixerBlock_{i}_LayerNorm_1")(x)
            x = x + _HandMlp(10, theta, name=f"MixerBlock_{i}_channel_mixing")(y, progress)
        x = nn.LayerNorm(name="pre_head_layer_norm")(x)
        return nn.Dense(5, name="head")(jnp.mean(x, axis=1))


def _nest(tree):
    """The hand-built mixer's flat ``MixerBlock_i_X`` names as the example's nested ones."""
    out = {}
    for k, v in tree.items():
        if k.startswith("MixerBlock_"):
            _, i, rest = k.split("_", 2)
            out.setdefault(f"MixerBlock_{i}", {})[rest] = v
        else:
            out[k] = v
    return out


def _flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("which", ["resnet", "mixer"])
def test_rule_binarized_model_is_the_hand_built_network(which):
    """Same variables (paths, shapes, values), the same forward in train and eval mode, and the
    same gradients of every parameter and of the shared MLP, bit for bit."""
    if which == "resnet":
        plain, hand, rules, x = (ResNet(**TINY_RESNET), _HandResNet(), RESNET_RULES,
                                 jax.random.normal(jax.random.key(1), (3, 8, 8, 2)))
        kw = {"train": True}
    else:
        plain, hand, rules, x = (MlpMixer(**TINY_MIXER), _HandMixer(), MIXER_RULES,
                                 jax.random.normal(jax.random.key(1), (3, 8, 8, 2)))
        kw = {}
    model = binarize(plain, rules)
    v = model.init(jax.random.key(0), x, **kw)
    hv = hand.init(jax.random.key(0), x, **kw)
    if which == "mixer":
        hv = {c: _nest(t) for c, t in hv.items()}
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, hv)
    # The user's layers keep their initial values: the binary twins create them on the same scope.
    plain_params = plain.init(jax.random.key(0), x, **kw)["params"]
    jax.tree.map(np.testing.assert_array_equal, v["params"], plain_params)
    assert list(v["estimator"]) == ["weight_estimator"]
    mutable = ["batch_stats"] if "batch_stats" in v else False

    def loss(apply, variables, tree_fix=lambda t: t):
        out = apply(tree_fix(variables), x, progress=0.3, mutable=mutable, **kw)
        out = out[0] if mutable else out
        return jnp.sum(out * jnp.arange(5.0)), out

    unnest = (lambda t: t) if which == "resnet" else (lambda t: {c: _unnest(tree) for c, tree in t.items()})
    (l1, y1), g1 = jax.value_and_grad(functools.partial(loss, model.apply), has_aux=True)(v)
    (l2, y2), g2 = jax.value_and_grad(functools.partial(loss, hand.apply, tree_fix=unnest), has_aux=True)(v)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert _flat(g1).keys() == _flat(g2).keys()
    for k, a in _flat(g1).items():
        np.testing.assert_array_equal(np.asarray(a), np.asarray(_flat(g2)[k]), err_msg=k)
    assert float(jnp.abs(g1["estimator"]["weight_estimator"]["w1"]).sum()) > 0


def _unnest(tree):
    out = {}
    for k, v in tree.items():
        if k.startswith("MixerBlock_"):
            out.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------ geometry equal to Flax's layers

IDENTITY = BinarySpec(weights=None, inputs=None)


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv(3, (3, 3), strides=2, padding="SAME"), (2, 7, 6, 4)),
    (nn.Conv(3, (3, 3), strides=2, padding="SAME"), (2, 8, 8, 4)),
    (nn.Conv(3, (2, 3), strides=(1, 2), padding="VALID", use_bias=False), (2, 7, 6, 4)),
    (nn.Conv(3, (3, 3), padding=((2, 0), (1, 3))), (2, 5, 5, 4)),
    (nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME"), (2, 5, 4, 4)),
    (nn.ConvTranspose(3, (3, 3), strides=(2, 2), padding="SAME"), (2, 5, 4, 4)),
    (nn.ConvTranspose(3, (3, 2), strides=(2, 3), padding="VALID"), (2, 5, 4, 4)),
    (nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding=((1, 2), (3, 0))), (2, 5, 4, 4)),
    (nn.Dense(3), (2, 5, 4)),
])
def test_twins_compute_what_flax_layers_compute(layer, shape):
    """With nothing binarized the twin is the layer: padding, strides, kernel layout (Flax's
    ConvTranspose kernel is the flipped scatter kernel) and bias as Flax computes them."""
    x = jax.random.normal(jax.random.key(0), shape)
    v = layer.init(jax.random.key(1), x)
    twin = binarize(layer, [Rule(spec=IDENTITY)])
    assert jax.tree.map(jnp.shape, twin.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, v)
    np.testing.assert_allclose(np.asarray(twin.apply(v, x)), np.asarray(layer.apply(v, x)), rtol=1e-5, atol=1e-5)
    binary = binarize(layer, [Rule(spec=BinarySpec(weights="ste", inputs="ste", weight_norm="none",
                                                   weight_scale="none"))])
    signed = {"params": {**v["params"], "kernel": jnp.sign(v["params"]["kernel"])}}
    np.testing.assert_allclose(np.asarray(binary.apply(v, x)), np.asarray(layer.apply(signed, jnp.sign(x))),
                               rtol=1e-5, atol=1e-5)


class _Odd(nn.Module):
    layer: nn.Module

    @nn.compact
    def __call__(self, x):
        return self.layer(x)


@pytest.mark.parametrize("layer,shape,msg", [
    (nn.Conv(4, (3, 3), feature_group_count=2), (1, 5, 5, 4), "grouped"),
    (nn.Conv(4, (3, 3), padding="CIRCULAR"), (1, 5, 5, 4), "padding 'CIRCULAR'"),
    (nn.Conv(4, (3,)), (1, 5, 4), "only 2-D"),
    (nn.ConvTranspose(4, (3, 3), transpose_kernel=True), (1, 5, 5, 4), "transpose_kernel"),
])
def test_unsupported_layers_are_refused_by_path(layer, shape, msg):
    with pytest.raises(ValueError, match=rf"binarize: layer \({type(layer).__name__}\): .*{msg}"):
        binarize(_Odd(layer), [Rule(spec=BBC)]).init(jax.random.key(0), jnp.ones(shape))


# ------------------------------------------------------------------ rules, variables, introspection


def test_first_rule_wins_unmatched_layers_stay_real_and_theta_per_layer():
    x = jnp.ones((1, 8, 8, 2))
    model = binarize(ResNet(**TINY_RESNET), RESNET_RULES)
    assert L.binary_layer_paths(model, x, train=False) == {
        "ResNetBlock_0/Conv_0", "ResNetBlock_0/Conv_1", "ResNetBlock_1/Conv_0", "ResNetBlock_1/Conv_1",
        "ResNetBlock_1/conv_proj"}
    shortcuts_real = binarize(ResNet(**TINY_RESNET), "Conv@.*conv_(init|proj)=real;Conv=ste/approx_sign")
    assert L.binary_layer_paths(shortcuts_real, x, train=False) == {
        "ResNetBlock_0/Conv_0", "ResNetBlock_0/Conv_1", "ResNetBlock_1/Conv_0", "ResNetBlock_1/Conv_1"}
    # A parameter-free estimator has no theta; per-layer theta sits under each layer's path.
    assert "estimator" not in shortcuts_real.init(jax.random.key(0), x)
    per_layer = binarize(ResNet(**TINY_RESNET), "Conv@conv_init=real;Conv=mlp/approx_sign:share=False")
    est = per_layer.init(jax.random.key(0), x)["estimator"]
    assert sorted(est) == ["ResNetBlock_0", "ResNetBlock_1"]
    assert sorted(est["ResNetBlock_1"]) == ["Conv_0", "Conv_1", "conv_proj"]
    assert list(est["ResNetBlock_1"]["conv_proj"]) == ["weight_estimator"]
    # Everything real: the model itself.
    assert L.binary_layer_paths(binarize(ResNet(**TINY_RESNET), "*=real"), x, train=False) == set()


def test_weight_signs_flip_ratio_and_complexity_see_rule_binarized_layers():
    x = jnp.zeros((1, 8, 8, 2))
    model = binarize(ResNet(**TINY_RESNET), RESNET_RULES)
    v = model.init(jax.random.key(0), x, train=False)
    signs = L.weight_signs(model, v, x, train=False)
    assert signs["ResNetBlock_1/Conv_0"].shape == (3, 3, 4, 8)
    assert set(np.unique(np.asarray(signs["ResNetBlock_1/Conv_0"]))) <= {-1.0, 1.0}
    moved = jax.tree.map(lambda a: -a, v)
    assert float(L.flip_ratio(signs, L.weight_signs(model, moved, x, train=False))) > 0.9
    report = complexity.count(model, (8, 8, 2))
    rows = {layer.path: layer for layer in report.layers}
    # Binary MACs per image: 8x8x(3x3x4)x4 twice, 4x4x(3x3x4)x8, 4x4x(3x3x8)x8, 4x4x4x8.
    assert report.totals()["bops"] == 2 * 64 * 36 * 4 + 16 * 36 * 8 + 16 * 72 * 8 + 16 * 4 * 8
    assert rows["conv_init"].real_macs == 64 * 18 * 4 and rows["ResNetBlock_0/Conv_0"].kind == "BinaryConv"
    assert rows["Dense_0"].real_macs == 8 * 5


def test_rules_text_form():
    rules = parse_rules(" Conv@conv_init=real; Dense=real ;ConvTranspose@up.*=ste(clip=2.0)/none:pad_value=1,"
                        "share=False; *=mlp(hidden=8)/approx_sign:input_bias=True,init=reactnet")
    assert rules[0] == Rule("conv_init", nn.Conv, None) and rules[1] == Rule(".*", nn.Dense, None)
    assert rules[2].kind is nn.ConvTranspose and rules[2].spec.inputs is None and rules[2].spec.pad_value == 1.0
    assert rules[2].spec.weights.kwargs["clip"] == 2.0 and rules[2].spec.share is False
    assert rules[3].kind is None and rules[3].spec.input_bias and rules[3].spec.init == "reactnet"
    assert parse_rules(format_rules(rules)) == rules
    assert parse_rules(format_rules(RESNET_RULES)) == RESNET_RULES
    signed = (Rule(kind=nn.Conv, spec=BinarySpec(weights="mlp(init='positive')", sign_zero=-1.0)),)
    assert parse_rules(format_rules(signed)) == signed


@pytest.mark.parametrize("text,msg", [
    ("Conv", "expected SELECTOR=SPEC"), ("Linear=real", "Rule.kind 'Linear'"),
    ("Conv@(=real", "not a regular expression"), ("Conv=mlp", "WEIGHTS/INPUTS"),
    ("Conv=sgn/approx_sign", "unknown estimator 'sgn'"), ("Conv=ste/ste:colour=1", "'colour=1' is not key=value"),
    ("Conv=ste/ste:pad_value=2", "BinarySpec.pad_value"), (";", "no rules"),
])
def test_bad_rules_are_named(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_rules(text)


def test_bad_binarize_arguments():
    with pytest.raises(ValueError, match="two learnable estimators"):
        binarize(ResNet(**TINY_RESNET), [Rule("a", spec=BBC), Rule(spec=BinarySpec(weights="linear"))])
    with pytest.raises(ValueError, match="Rule.spec must be a BinarySpec"):
        Rule(spec="mlp/approx_sign")
    with pytest.raises(ValueError, match="flax.linen Module"):
        binarize(lambda x: x, "*=real")
    assert binarize(ResNet(**TINY_RESNET), [Rule(spec=REAL)]).rules[0].spec == REAL


def test_models_create_takes_a_users_factory():
    model = models.create("examples.flax_resnet:ResNet", num_classes=7, kwargs={"stage_sizes": (1,), "num_filters": 4},
                          binarize="Conv@conv_init=real;Conv=mlp/approx_sign", weight_estimator=None)
    x = jnp.ones((1, 8, 8, 3))
    v = model.init(jax.random.key(0), x, train=False)
    assert model.apply(v, x, train=False).shape == (1, 7)
    assert L.binary_layer_paths(model, x, train=False) == set()  # weight_estimator=None: stage one
    for name, msg in (("examples.nothing:X", "cannot import 'examples.nothing'"),
                      ("examples.flax_resnet:Nope", "has no class or function 'Nope'"),
                      ("builtins:dict", "returned dict, not a flax.linen Module")):
        with pytest.raises(ValueError, match=msg):
            models.create(name)
    with pytest.raises(ValueError, match="need model.binarize"):
        models.create("examples.flax_resnet:ResNet", weight_estimator="ste")


# ------------------------------------------------------------------ train.py, kill and resume

E2E = ("--config.num_train_steps=12", "--config.log_every_steps=2", "--config.checkpoint_every_steps=4",
       "--config.eval_every_steps=12", "--config.batch_size=32")


@pytest.mark.slow
def test_binarized_resnet_trains_through_train_py_and_resumes_exactly_after_sigkill(tmp_path):
    config = "configs/binarized_resnet_digits.py"
    flags = (*E2E, "--config.model.kwargs.num_filters=8")
    clean = cli(tmp_path / "clean", *flags, config=config)
    assert clean.returncode == 0, clean.stderr[-3000:]
    victim = tmp_path / "victim"
    proc = cli(victim, *flags, config=config, wait=False)
    deadline = time.time() + 300
    while not (victim / "checkpoints" / "8").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = cli(victim, *flags, config=config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    final = json.loads((victim / "final_metrics.json").read_text())
    reference = json.loads((tmp_path / "clean" / "final_metrics.json").read_text())
    assert final["eval"] == reference["eval"] and final["step"] == reference["step"] == 12

    def records(workdir):
        return [{k: v for k, v in r.items() if not k.endswith("_per_sec")} for r in read_metrics(workdir)]

    assert records(victim) == records(tmp_path / "clean")
    assert all(0 <= r["flip_ratio"] <= 1 for r in read_metrics(victim, "train"))
    (ours, meta), (theirs, _) = load_variables(victim / "variables"), load_variables(tmp_path / "clean" / "variables")
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert meta["model"] == "examples.flax_resnet:ResNet"
    assert meta["model_kwargs"]["binarize"].startswith("*@conv_init=real;")
    summary = (victim / "summary_stage1.txt").read_text()
    assert "rules: *@conv_init=real;*@.*/conv_proj=real;Dense=real;Conv=mlp(" in summary
    assert "ResNetBlock_1/Conv_0               BinaryConv" in summary and "conv_init " in summary
    assert "BOPs (binary MACs)" in summary
    print(summary)
    # The rule-binarized model exports like a zoo model (mlpbnn.lowering traces it) and its packed
    # program predicts what the float model predicts.
    out = tmp_path / "packed"
    assert export.main([str(victim / "variables"), str(out)]) == 0
    x = digits(0).x_test[:64]
    net, _ = infer.load_network(out)
    model = models.create(meta["model"], **meta["model_kwargs"])
    ref = np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=False))(ours, x))
    got = np.asarray(net(x))
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.slow
def test_binarized_mixer_trains_through_train_py(tmp_path, capsys):
    out = cli(tmp_path / "mixer", *E2E, config="configs/binarized_mixer_digits.py")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (tmp_path / "mixer" / "summary_stage1.txt").read_text()
    assert "MixerBlock_1/channel_mixing/Dense_1" in summary and "BinaryDense" in summary
    assert json.loads((tmp_path / "mixer" / "final_metrics.json").read_text())["eval"]["top1"] > 0
    # Token mixing's reshape (and LayerNorm, GELU) has no op in the packed program: refused, naming
    # the primitive and the line of code.
    assert export.main([str(tmp_path / "mixer" / "variables"), str(tmp_path / "packed")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reshape (") and "mlp_mixer.py:47" in err and "the packed program has no op" in err
    assert not (tmp_path / "packed").exists()
