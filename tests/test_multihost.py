"""Multi-host for real: the ImageNet recipe end to end on ILSVRC-layout tars (prepare, train with a
converted PyTorch teacher, exact evaluation, resume), and two processes on localhost with four
simulated CPU devices each (gloo collectives) training like one process on the same global batches
and resuming their own checkpoint.
(The pose recipe's two-process run, whose checkpoint one process then resumes, is in
tests/test_train_pose.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpbnn.data import imagenet
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.metrics import read_metrics
from tests import torch_reference as ref
from tests.utils_train import train

pytestmark = pytest.mark.slow


def losses(workdir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir, "train")]


def _jpeg(rng: np.random.Generator, h: int, w: int, mode: str = "RGB") -> bytes:
    return imagenet.encode_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode, quality=90)


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    """Train and validation tars in the real ILSVRC2012 layout with real JPEGs (odd sizes, one
    grayscale and one CMYK image), and a PyTorch ResNet-18 teacher file (torchvision keys)."""
    rng = np.random.default_rng(0)
    manual = tmp_path_factory.mktemp("manual")
    synsets = ["n01440764", "n01443537", "n01484850"]
    sizes = [(37, 53), (61, 45), (50, 50), (33, 70)]
    train_images = {s: [(f"{s}_{i}.JPEG", _jpeg(rng, *sizes[(i + k) % 4])) for i in range(8)]
                    for k, s in enumerate(synsets)}
    train_images[synsets[0]].append((f"{synsets[0]}_90.JPEG", _jpeg(rng, 40, 44, "L")))
    train_images[synsets[1]].append((f"{synsets[1]}_91.JPEG", _jpeg(rng, 44, 40, "CMYK")))
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, *sizes[i % 4])) for i in range(7)]
    imagenet.write_tars(manual, train_images, val)
    teacher = tmp_path_factory.mktemp("teacher") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": ref.TorchvisionResNet((2, 2, 2, 2), "basic", 1000).state_dict()}, teacher)
    return {"manual": manual, "data_dir": tmp_path_factory.mktemp("tfds"), "teacher": teacher}


def imagenet_flags(ilsvrc, steps: int) -> tuple[str, ...]:
    return ("--config.data.manual_dir=" + str(ilsvrc["manual"]), "--config.data.data_dir=" + str(ilsvrc["data_dir"]),
            "--config.data.image_size=32", "--config.data.workers=0", "--config.model.width=8",
            "--config.model.stage_sizes=(1,1,1,1)", "--config.batch_size=8", "--config.eval_batch_size=8",
            "--config.teacher.checkpoint=" + str(ilsvrc["teacher"]), "--config.teacher.model=resnet18",
            f"--config.num_train_steps={steps}", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
            "--config.eval_every_steps=-1")


def test_imagenet_recipe_end_to_end_and_on_two_processes(ilsvrc, tmp_path):
    one = tmp_path / "one"
    log = train("configs/bireal18_imagenet.py", one, *imagenet_flags(ilsvrc, 4))  # prepares on first use
    assert "teacher: resnet18" in log and "26 train / 7 eval images 32x32x3" in log
    final = json.loads((one / "final_metrics.json").read_text())
    assert final["eval"]["count"] == 7  # 7 images in batches of 8: padded, masked, none dropped
    assert len(losses(one)) == 4 and all(np.isfinite(losses(one)))
    records = read_metrics(one, "train")
    # The official epoch-start quirk over this run's horizon (4 steps of 8 = 32/26 epochs): epoch 0
    # already runs at the value for epoch 1 of the linear decay.
    assert records[0]["lr/binary_kernel"] == pytest.approx(2.5e-3 * (1 - 26 / 32), rel=1e-5)
    two = tmp_path / "two"
    train("configs/bireal18_imagenet.py", two, *imagenet_flags(ilsvrc, 4), processes=2)
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5, atol=1e-6)
    # Resume on two processes: the same command with more steps continues from their checkpoint
    # at step 4 (each process restores its shards).
    log = train("configs/bireal18_imagenet.py", two, *imagenet_flags(ilsvrc, 6), "--allow_config_change",
                processes=2)
    assert "at step 4" in log
    assert Checkpoints(two, 3).latest_step() == 6
    assert [r["step"] for r in read_metrics(two, "train")] == [1, 2, 3, 4, 5, 6]
