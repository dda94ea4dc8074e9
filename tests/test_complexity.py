"""Complexity: the published figures at 224 px, and counts that follow the model itself."""

import math

import flax.linen as nn
import pytest

from mlpbnn import complexity, estimators, layers, models


def report(name, size=224, **kw):
    return complexity.count(models.create(name, **kw), (size, size, 3), name=name)


@pytest.mark.parametrize("name,published", [("bireal_resnet18", 1.63e8), ("bireal_resnet34", 1.93e8)])
def test_binary_resnets_reproduce_published_ops(name, published):
    r = report(name)
    assert abs(r.ops - published) / published < 0.03
    assert r.training_only_params == 300  # the shared 1 -> 100 -> 2 MLP


def test_torchvision_resnet_figures():
    r = report("resnet18")
    assert r.params == 11_689_512 and r.bops == 0
    assert abs(r.flops - 1.82e9) / 1.82e9 < 0.01
    assert report("resnet34").params == 21_797_672
    r50 = report("resnet50")
    assert r50.params == 25_557_032 and abs(r50.flops - 4.09e9) / 4.09e9 < 0.01


def test_bits_and_size():
    r = report("bireal_resnet18")
    assert r.params_1bit == sum(3 * 3 * c * c for c in (64, 128, 256, 512)) * 4 - sum(
        3 * 3 * c * c // 2 for c in (128, 256, 512))  # the first conv of layers 2-4 halves its input
    assert r.size_bytes == r.params_1bit / 8 + r.params_32bit * 4
    assert r.totals()["binarized_mac_ratio"] > 0.9


def test_only_fully_binary_layers_count_as_bops():
    both = report("bireal_resnet18", size=32, num_classes=10, small_inputs=True)
    real_acts = report("bireal_resnet18", size=32, num_classes=10, small_inputs=True, activation_estimator=None)
    assert real_acts.bops == 0
    assert real_acts.flops == both.flops + both.bops
    assert real_acts.params_1bit == both.params_1bit  # weights are still binary


def test_single_layer_counts_exactly():
    class One(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = layers.BinaryConv(16, 3, 2, 1, input_estimator=estimators.get("ste"),
                                  weight_estimator=estimators.get("ste"))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = layers.MaxPool(3, 2, 1)(x)
            return nn.Dense(5)(layers.GlobalAvgPool()(x))

    r = complexity.count(One(), (10, 10, 8))
    assert r.bops == 5 * 5 * 16 * 3 * 3 * 8
    assert r.flops == 16 * 5
    assert r.params_1bit == 3 * 3 * 8 * 16 and r.params_32bit == 2 * 16 + 16 * 5 + 5
    e = complexity.count(One(), (10, 10, 8), count_elementwise=True)
    assert e.elementwise == 2 * 5 * 5 * 16 + 9 * 3 * 3 * 16 + 3 * 3 * 16
    assert e.flops == r.flops + e.elementwise
    assert math.isclose(e.ops, e.flops + e.bops / 64)


def test_cli_table(capsys):
    complexity.main(["bireal_resnet18"])
    out = capsys.readouterr().out
    assert "layer4_3/binary_conv" in out and "OPs = FLOPs + BOPs/64" in out and "1.64e+08" in out
    complexity.main(["resnet18", "--json"])
    assert '"params": 11689512' in capsys.readouterr().out


def test_backbone_counts_are_the_classifiers_without_the_head():
    kw = {"small_inputs": True, "width": 8, "stage_sizes": (1, 1, 1, 1)}
    full = complexity.count(models.create("bireal_resnet18", 10, **kw), (16, 16, 3), count_elementwise=True)
    backbone = complexity.count(models.create_backbone("bireal_resnet18", **kw), (16, 16, 3), count_elementwise=True)
    assert [x.path for x in full.layers] == [x.path for x in backbone.layers] + ["avgpool", "fc"]
    assert full.flops == backbone.flops + 64 * 2 * 2 + 64 * 10  # pooling 2x2x64, fc 64 -> 10
    assert full.bops == backbone.bops and full.params_1bit == backbone.params_1bit
    bn = [x for x in backbone.layers if x.path == "layer1_0/bn1"]
    assert len(bn) == 1 and bn[0].kind == "BatchNorm" and bn[0].elementwise == 2 * 16 * 16 * 8


def test_pose_resnet_params_and_true_macs_at_256x192():
    """pose.md section 1.2: params exactly, true conv MACs within 1 %; the three deconvolutions of
    pose_resnet_18 are 1,107 M MACs (C_in C_out 16 per input pixel: 8x6, 16x12, 32x24)."""
    for name, params, macs in [("simple_baseline_resnet18", 15_376_721, 2.897e9),
                               ("simple_baseline_resnet34", 25_484_881, 4.709e9),
                               ("simple_baseline_resnet50", 33_999_697, 5.426e9)]:
        r = complexity.count(models.create(name), (256, 192, 3), name=name)
        assert r.params == params and r.bops == 0, name
        assert abs(r.flops - macs) / macs < 0.01, (name, r.flops)
        if name == "simple_baseline_resnet18":
            deconvs = [x for x in r.layers if x.kind == "BinaryConvTranspose"]
            assert [x.output_shape for x in deconvs] == [(16, 12, 256), (32, 24, 256), (64, 48, 256)]
            assert sum(x.real_macs for x in deconvs) == 16 * 256 * (512 * 8 * 6 + 256 * 16 * 12 + 256 * 32 * 24)
            assert round(sum(x.real_macs for x in deconvs) / 1e6) == 1107


def test_sbpn_binary_deconvolutions_count_as_bops():
    kw = {"width": 8, "stage_sizes": (1, 1, 1, 1), "deconv_features": 16}
    binary = complexity.count(models.create("sbpn_resnet18", **kw), (64, 64, 3))
    real = complexity.count(models.create("sbpn_resnet18", head="real", **kw), (64, 64, 3))
    deconv_macs = 16 * 16 * (64 * 2 * 2 + 16 * 4 * 4 + 16 * 8 * 8)
    assert binary.bops - real.bops == deconv_macs and real.flops - binary.flops == deconv_macs
    assert binary.params_1bit - real.params_1bit == 16 * 16 * (64 + 16 + 16)
    final = [x for x in binary.layers if x.path == "final_layer"]
    assert final[0].real_macs == 16 * 16 * 16 * 17 and final[0].params_1bit == 0  # the last layer stays real


def test_single_transposed_layer_counts_input_pixels():
    class One(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return layers.BinaryConvTranspose(6, 4, 2, 1, input_estimator=estimators.get("ste"),
                                              weight_estimator=estimators.get("ste"))(x)

    r = complexity.count(One(), (5, 3, 4))
    assert r.layers[0].output_shape == (10, 6, 6)
    assert r.bops == 5 * 3 * 4 * 6 * 16 and r.flops == 0 and r.params_1bit == 4 * 4 * 4 * 6


def test_cli_heatmap_models_and_markdown(capsys):
    complexity.main(["simple_baseline_resnet50", "--input", "256x192", "--json"])
    out = capsys.readouterr().out
    assert '"params": 33999697' in out and '"input_shape": [\n    256,\n    192,\n    3\n  ]' in out
    complexity.main(["sbpn_resnet18", "sbpn_resnet18:head='real'", "--input", "64x48"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model | input | params | 1-bit params | FLOPs | BOPs | OPs")
    assert out[2].startswith("| sbpn_resnet18 | 64x48 |") and out[3].startswith("| sbpn_resnet18:head='real' |")
    with pytest.raises(SystemExit, match=r"^error: model 'resnet18' has a classifier head: num_joints"):
        complexity.main(["resnet18", "--num-joints", "17"])
    with pytest.raises(SystemExit, match=r"^error: input must be HEIGHTxWIDTH"):
        complexity.main(["resnet18", "--input", "256by192"])
