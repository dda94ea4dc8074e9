"""ReActNet-A (arXiv 2003.03488): structure and parameter count of the released network, parity
with an independent PyTorch ReActNet-A with the released names (tests/torch_reference.py), the
released state_dict layouts (ReActNet step 2's flat ``weights``, step 1's and AdamBNN's 4-D
``weight``) converting and round-tripping exactly, and its operation counts beside the paper's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlpbnn import complexity, convert, models
from tests import torch_reference as ref
from tests.test_convert import _report, assert_parity, parity

TINY = {"width": 8, "small_inputs": True, "stage_sizes": (1, 1, 1, 1)}
RELEASED_CHANNELS = [32] + [64] + [128] * 2 + [256] * 2 + [512] * 6 + [1024] * 2  # reactnet.py's stage_out_channel


def reference(stages=(1, 2, 2, 6, 2), num_classes=1000, seed=0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = ref.ReActNetARef(stages, num_classes, **kw)
    ref.randomize_batch_norm(net, seed)  # BN, PReLU slopes and the move biases, all non-trivial
    return net


def test_released_structure_and_parameter_count():
    """The released network: 13 blocks on the released channel plan, strides 2 at blocks 2, 4, 6
    and 12 (224 -> 112 -> 56 -> 28 -> 14 -> 7), 31 binary convs, 29,343,592 parameters, and
    exactly the released state_dict keys and shapes in both kernel forms."""
    net = ref.ReActNetARef()
    assert [net.feature[0].conv1.out_channels] + [b.move23.bias.shape[1] for b in net.feature[1:]] == RELEASED_CHANNELS
    assert [i for i, b in enumerate(net.feature) if i and b.stride == 2] == [2, 4, 6, 12]
    expected = convert.expected_variables("reactnet_a")
    n = sum(int(np.prod(s.shape)) for p, s in expected.items() if p[0] != "batch_stats")
    assert n == 29_343_592 == sum(p.numel() for p in net.parameters())
    for form, layout in (("flat", "reactnet_a"), ("4d", "reactnet_a_4d")):
        sd = {k: v for k, v in ref.ReActNetARef(form=form).state_dict().items()
              if not k.endswith("num_batches_tracked")}
        ours = {convert.torch_key(p, layout): convert._to_torch_layout(p, np.zeros(s.shape), layout).shape
                for p, s in expected.items()}
        assert ours == {k: tuple(v.shape) for k, v in sd.items()}, form
    binary = [k for k in ours if ".binary_" in k]
    assert len(binary) == 31 and "feature.1.binary_pw_down2.weight" in ours and "feature.13.binary_pw.weight" in ours
    backbone = models.create_backbone("reactnet_a")
    features = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
    assert [f.shape for f in features] == [(1, 112, 112, 64), (1, 56, 56, 128), (1, 28, 28, 256), (1, 14, 14, 512),
                                           (1, 7, 7, 1024)]


def test_small_inputs_halve_twice():
    backbone = models.create_backbone("reactnet_a", small_inputs=True, width=8)
    features = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))[0])
    assert [f.shape[1:] for f in features] == [(28, 28, 16), (14, 14, 32), (7, 7, 64), (7, 7, 128), (7, 7, 256)]
    with pytest.raises(ValueError, match="stage_sizes must name at least one stage"):
        models.create_backbone("reactnet_a", stage_sizes=(1, 0)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("form", ["flat", "4d"])
def test_tiny_parity_and_exact_round_trip(form):
    """float32 parity of a small ReActNet-A (every block kind: doubling at stride 1 and 2, same
    width at stride 1) read from either released kernel form; the round trip writes that form
    back bit for bit and PyTorch loads it strictly."""
    stages, kw = (1, 2, 1), {"width": 8, "small_inputs": True}
    net = reference(stages, 10, form=form, **kw)
    assert_parity(*parity("reactnet_a", net, 12, 10, batch=3, stage_sizes=stages, **kw))
    sd = reference(stages, 10, form=form, **kw).state_dict()  # parity trained ``net`` one step
    layout = "reactnet_a" if form == "flat" else "reactnet_a_4d"
    back = convert.to_torch("reactnet_a", convert.from_torch("reactnet_a", sd, stage_sizes=stages, **kw), layout=layout)
    assert sorted(back) == sorted(sd)
    assert all(back[k].shape == v.shape and torch.equal(back[k], v) for k, v in sd.items())
    fresh = reference(stages, 10, seed=1, form=form, **kw)
    fresh.load_state_dict(back, strict=True)
    with pytest.raises(ValueError, match="has the PyTorch layout 'reactnet_a' or reactnet_a_4d, not 'bbc'"):
        convert.to_torch("reactnet_a", {}, layout="bbc")


def test_step_one_checkpoint_is_real_weights_binary_activations():
    """ReActNet's step 1 (``nn.Conv2d`` in place of the binary convs) reads into ``reactnet_a``
    with real weights (``weight_estimator=None``, two-stage training's stage one) and computes
    the same logits; a checkpoint missing a key is refused naming it."""
    stages, kw = (1, 2), {"width": 8, "small_inputs": True}
    net = reference(stages, 10, form="real", **kw)
    logits_j, logits_t, grads_j, grads_t = parity("reactnet_a", net, 8, 10, batch=2, stage_sizes=stages,
                                                  weight_estimator=None, **kw)
    assert_parity(logits_j, logits_t, grads_j, grads_t)
    sd = dict(net.state_dict())
    del sd["feature.3.binary_pw.weight"]
    with pytest.raises(ValueError, match=r"missing: feature.3.binary_pw.weight \(expected shape \(32, 32, 1, 1\)\)"):
        convert.from_torch("reactnet_a", sd, stage_sizes=stages, **kw)


@pytest.mark.slow
def test_parity_at_224_float64():
    """At 224x224 in float64 (a pre-sign value within float32 rounding of zero may take opposite
    signs in the two frameworks; see test_convert): every train-mode gradient, the estimators'
    included, of the full 13-block network at width 8 (8..256 channels), and the eval logits of
    the released width, within 1e-9."""
    with jax.enable_x64(True):
        result = parity("reactnet_a", reference(width=8), 224, 1000, batch=2, float64=True, width=8)
        _report("reactnet_a width 8", "float64", *result)
        assert_parity(*result, rtol=1e-9)
        net = reference().double().eval()
        variables = convert.from_torch("reactnet_a", net.state_dict(), dtype=np.float64)
        x = np.random.default_rng(1).normal(0, 1, (1, 224, 224, 3))
        with torch.no_grad():
            logits_t = net(ref.nhwc_to_torch(x)).numpy()
        logits_j = np.asarray(jax.jit(models.create("reactnet_a", dtype=jnp.float64).apply)(variables, x))
    print(f"\nreactnet_a full width 224x224 float64: max |logit diff| {np.abs(logits_j - logits_t).max():.3g} "
          f"(max |logit| {np.abs(logits_t).max():.3g})")
    np.testing.assert_allclose(logits_j, logits_t, rtol=1e-9, atol=1e-9 * np.abs(logits_t).max())


def test_operation_counts_beside_the_paper():
    """ReActNet's table: 0.87e8 OPs (its 'FLOPs' column is OPs = FLOPs + BOPs / 64). Counted
    here: the binary 3x3 and 1x1 convs are 4.817e9 BOPs, the stem and fc 1.19e7 FLOPs."""
    r = complexity.count(models.create("reactnet_a"), (224, 224, 3), name="reactnet_a")
    bops = 0
    size, channels = 112, RELEASED_CHANNELS
    for i in range(1, len(channels)):
        c = channels[i - 1]
        if channels[i] != c and channels[i] != 64:
            size //= 2
        bops += size * size * (9 * c * c + c * channels[i])  # 3x3 C -> C, then 1x1 C -> C (two for doubling)
    assert r.bops == bops == 4_816_896_000
    assert r.flops == 112 * 112 * 27 * 32 + 1024 * 1000 == 11_862_016
    assert abs(r.ops - 0.87e8) / 0.87e8 < 0.005
    assert r.params == 29_343_592 and r.params_1bit == 28_253_184
