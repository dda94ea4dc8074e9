"""Complexity: the published figures at 224 px, and counts that follow the model itself."""

import functools
import math

import flax.linen as nn
import pytest

from mlpbnn import complexity, layers, models


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
            x = layers.BinaryConv(16, 3, 2, 1, spec=layers.BinarySpec(weights="ste", inputs="ste"))(x)
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
            return layers.BinaryConvTranspose(6, 4, 2, 1, spec=layers.BinarySpec(weights="ste", inputs="ste"))(x)

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
    assert complexity.parse_model("hrnet_w32:width=8,stage_modules=(1, 2),x=[3,4],y=a") == (
        "hrnet_w32", {"width": 8, "stage_modules": (1, 2), "x": [3, 4], "y": "a"})
    with pytest.raises(SystemExit, match=r"^error: input must be HEIGHTxWIDTH"):
        complexity.main(["resnet18", "--input", "256by192"])


@functools.cache
def _pose_report(spec: str):
    name, options = complexity.parse_model(spec)
    return complexity.count(models.create(name, **options), (256, 192, 3), name=spec)


def _hrnet_part(path: str) -> str:
    """HRNet's parts as pose.md section 1.2 lists them."""
    if path.startswith(("transition2", "transition3")):
        return "transitions 2+3"
    for prefix, part in (("conv1", "conv1"), ("conv2", "conv2"), ("layer1", "layer1"), ("transition1", "transition1"),
                         ("final_layer", "final")):
        if path.startswith(prefix):
            return part
    stage, rest = path.split("/")[:2]
    return "fuse" if rest.startswith("fuse_layers") else stage.split("_")[0] + " branches"


def test_hrnet_params_and_true_macs_at_256x192(capsys):
    """pose.md section 1.2: parameters exactly (HRNet's README: 28.5M, 63.6M), true conv MACs
    7.645 G / 15.692 G (the README's 7.1 / 14.6 "GFLOPs" are MACs in units of 2^30), and where
    W32's MACs are, part by part."""
    complexity.main(["hrnet_w32", "--input", "256x192", "--json"])
    out = capsys.readouterr().out
    assert '"params": 28536113' in out and '"flops": 7645' in out and '"bops": 0' in out
    for name, params, macs, readme in [("hrnet_w32", 28_536_113, 7.645e9, 7.1),
                                       ("hrnet_w48", 63_595_745, 15.692e9, 14.6)]:
        r = _pose_report(name)
        assert r.params == params and r.bops == 0 and r.params_1bit == 0, name
        assert round(r.flops / 1e6) == round(macs / 1e6), (name, r.flops)
        assert round(r.flops / 2**30, 1) == readme
    parts: dict[str, int] = {}
    for layer in _pose_report("hrnet_w32").layers:
        if layer.kind == "Conv":
            parts[_hrnet_part(layer.path)] = parts.get(_hrnet_part(layer.path), 0) + layer.real_macs
    assert {k: round(v / 1e6) for k, v in parts.items() if k != "final"} == {
        "conv1": 21, "conv2": 113, "layer1": 868, "transition1": 340, "stage2 branches": 453,
        "stage3 branches": 2718, "stage4 branches": 2718, "fuse": 384, "transitions 2+3": 28}
    assert round(parts["final"] / 1e5) == 17


@pytest.mark.slow
def test_bhrnet_ops_and_size_at_256x192():
    """BHRNet's binary convolutions are HRNet's stage 2-4 BasicBlock convolutions (5.889 G BOPs for
    W32), everything else counts as FLOPs; binary_fuse moves the transitions' and fuse layers' MACs
    to the BOPs. OPs = FLOPs + BOPs/64, size with 1-bit binary weights."""
    fp, default, fuse = (_pose_report(s) for s in ("hrnet_w32", "bhrnet_w32", "bhrnet_w32:binary_fuse=True"))
    macs = {}
    for layer in fp.layers:
        if layer.kind == "Conv":
            part = _hrnet_part(layer.path)
            macs[part] = macs.get(part, 0) + layer.real_macs
    branches = sum(v for k, v in macs.items() if k.endswith("branches"))
    fuse_macs = macs["transition1"] + macs["transitions 2+3"] + macs["fuse"]
    assert default.bops == branches and round(default.bops / 1e6) == 5889
    assert default.flops == fp.flops - branches and round(default.flops / 1e6) == 1756
    assert fuse.bops == branches + fuse_macs and fuse.flops == fp.flops - branches - fuse_macs
    assert round(fuse.flops / 1e6) == 1004  # stem, layer1, final layer
    for r, ops in ((default, 1.848e9), (fuse, 1.108e9)):
        assert math.isclose(r.ops, r.flops + r.bops / 64) and round(r.ops / 1e6) == round(ops / 1e6)
        assert r.size_bytes == r.params_1bit / 8 + r.params_32bit * 4
    # Binary kernels: the BasicBlocks' 3x3 kernels (same count as HRNet's); PReLU slopes are the new params.
    fp_branch_params = sum(x.params_32bit for x in fp.layers if "/branches_" in x.path and x.kind == "Conv")
    assert default.params_1bit == fp_branch_params == 25_362_432
    prelus = sum(x.params_32bit for x in default.layers if x.kind == "PReLU")
    assert default.params == fp.params + prelus == 28_558_481
    assert fuse.params == default.params and round(default.size_bytes / 2**20, 2) == 15.22
    assert round(fuse.size_bytes / 2**20, 2) == 4.88
