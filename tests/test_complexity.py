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
