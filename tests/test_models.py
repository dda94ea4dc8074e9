"""Model zoo: names and options, shapes and dtypes, train-mode state, estimator placement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import estimators, models

TINY = {"width": 8, "small_inputs": True, "stage_sizes": (1, 1, 1, 1)}


def test_names():
    assert models.names() == ["bireal_resnet18", "bireal_resnet34", "reactnet_resnet18", "resnet18", "resnet34",
                              "resnet50"]


def test_bad_name_and_option():
    with pytest.raises(ValueError, match="unknown model 'vgg16'; valid names: bireal_resnet18"):
        models.create("vgg16")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\].*valid: .*small_inputs"):
        models.create("resnet18", depth=3)
    with pytest.raises(ValueError, match="unknown estimator 'sgn'"):
        models.create("bireal_resnet18", weight_estimator="sgn")


@pytest.mark.parametrize("name", models.names())
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


def test_bfloat16_compute_float32_params_and_logits():
    model = models.create("bireal_resnet18", 10, dtype=jnp.bfloat16, **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    variables = model.init(jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    out, inter = model.apply(variables, x, capture_intermediates=True)
    assert out.dtype == jnp.float32
    assert inter["intermediates"]["layer1_0"]["binary_conv"]["__call__"][0].dtype == jnp.bfloat16


def test_estimator_defaults_and_sharing():
    m = models.create("bireal_resnet18")
    assert m.weight_estimator == estimators.get("mlp") and m.activation_estimator == estimators.get("approx_sign")
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


def test_progress_reaches_scheduled_estimators():
    model = models.create("bireal_resnet18", 10, activation_estimator="ede", weight_estimator="ste", **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    v = model.init(jax.random.key(1), x)

    def grad(p):
        return jax.grad(lambda xx: model.apply(v, xx, progress=p).sum())(x)

    assert float(jnp.abs(grad(0.0) - grad(1.0)).max()) > 1e-3
    np.testing.assert_array_equal(np.asarray(grad(None)), np.asarray(grad(None)))


def test_reactnet_structure():
    v = models.create("reactnet_resnet18", 10, **TINY).init(jax.random.key(0), jnp.ones((1, 12, 12, 3)))
    block = v["params"]["layer1_0"]
    assert sorted(block) == ["binary_conv", "bn1", "move0", "move1", "move2", "prelu"]
    k = np.asarray(block["binary_conv"]["kernel"])
    assert k.min() >= 0 and k.max() < 1e-3  # ReActNet's U(0, 0.001) latent init
    assert "nonlinear" not in v["params"]  # Bi-Real stem: no PReLU


def test_bad_variant_and_init():
    with pytest.raises(ValueError, match="variant"):
        models.create("bireal_resnet18", variant="xnor").init(jax.random.key(0), jnp.ones((1, 12, 12, 3)))
    with pytest.raises(ValueError, match="binary_init"):
        models.create("bireal_resnet18", binary_init="zeros").init(jax.random.key(0), jnp.ones((1, 12, 12, 3)))
