"""BinarySpec: defaults (the official BBC layer), checks naming the field, estimator resolution,
sign(0), hashing; the theta lookup (shared by a network, per layer, values read beside a backbone)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mlpbnn import estimators as E
from mlpbnn import layers as L
from mlpbnn.spec import INPUT_ROLE, WEIGHT_ROLE, BinarySpec, shared_theta

BBC = BinarySpec(weights="mlp", inputs="approx_sign")


@pytest.mark.parametrize("kwargs,msg", [
    ({"pad_value": 0.5}, "BinarySpec.pad_value"), ({"weight_scale": "max"}, "BinarySpec.weight_scale"),
    ({"weight_norm": "l2"}, "BinarySpec.weight_norm"), ({"weights": "sgn"}, "BinarySpec.weights: unknown estimator"),
    ({"init": "zeros"}, "BinarySpec.init"), ({"sign_zero": 0.5}, "BinarySpec.sign_zero"),
    ({"share": 1}, "BinarySpec.share"), ({"weights": "classifier", "sign_zero": 1.0}, "no sign\\(0\\) choice"),
])
def test_bad_spec_fields_are_named(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        BinarySpec(**kwargs)


def test_spec_defaults_hashing_and_estimators():
    assert BinarySpec() == BBC and BinarySpec().binary and not L.REAL.binary
    assert (BBC.weight_norm, BBC.weight_scale, BBC.scale_in_backward, BBC.pad_value, BBC.share) == (
        "center", "mean", True, 0.0, True)
    spec = BinarySpec(weights="ste(clip=2.0)", inputs={"name": "approx_sign"}, sign_zero=-1.0)
    assert spec == BinarySpec(weights=E.get("ste", clip=2.0, zero=-1.0), inputs=E.get("approx_sign", zero=-1.0),
                              sign_zero=-1.0)
    assert hash(spec) == hash(BinarySpec(weights="ste(clip=2.0)", inputs="approx_sign", sign_zero=-1.0))
    assert spec.weights(None, jnp.zeros(3)).tolist() == [-1.0, -1.0, -1.0]  # sign(0) = -1 on both sides
    assert spec.replace(weights=None).weights is None and spec.replace(weights=None).binary
    assert "weights=None" in repr(L.REAL) and repr(BinarySpec()) == "BinarySpec()"
    with pytest.raises(ValueError, match="unknown BinarySpec field"):
        spec.replace(weight_estimator=None)


class _Owner(nn.Module):
    """A network that shares one theta between two layers, and a second module beside it that
    reads the values (as a head beside its backbone)."""

    spec: BinarySpec

    @nn.compact
    def __call__(self, x):
        theta = shared_theta(self, self.spec, WEIGHT_ROLE)
        x = L.BinaryDense(3, spec=self.spec, weight_theta=theta)(x)
        again = shared_theta(self, self.spec, WEIGHT_ROLE)  # made by now: read back as values
        if theta is not None:
            assert isinstance(again, dict) and sorted(again) == sorted(self.spec.weights.theta_shapes)
        return L.BinaryDense(3, spec=self.spec, weight_theta=again)(x)


def test_shared_theta_is_one_per_network_or_per_layer():
    x = jnp.ones((2, 4))
    v = _Owner(BBC).init(jax.random.key(0), x)
    assert sorted(v["estimator"]) == [WEIGHT_ROLE]  # one MLP for both layers
    g = jax.grad(lambda vv: jnp.sum(_Owner(BBC).apply(vv, x) ** 2))(v)
    assert float(jnp.abs(g["estimator"][WEIGHT_ROLE]["w1"]).sum()) > 0
    per_layer = _Owner(BBC.replace(share=False)).init(jax.random.key(0), x)["estimator"]
    assert sorted(per_layer) == ["BinaryDense_0", "BinaryDense_1"]
    free = _Owner(BinarySpec(weights="ste", inputs="ste")).init(jax.random.key(0), x)
    assert "estimator" not in free
    assert shared_theta(nn.Module(), BinarySpec(weights=None, inputs="mlp"), WEIGHT_ROLE) is None
    assert INPUT_ROLE == "input_estimator"  # the name convert maps to input_meta_net
