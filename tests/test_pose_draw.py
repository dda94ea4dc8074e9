"""Sample drawings on a real COCO image: a PNG of the documented size, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlpbnn.pose.draw import draw_samples, layout

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/coco_sample"


def test_draw_samples_writes_the_png_beside_the_ground_truth(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip(f"the COCO sample {SAMPLE} is absent (see ../shared/data/coco_sample/README.md)")
    data = json.loads((SAMPLE / "test_coco.json").read_text())
    panels = []
    rng = np.random.default_rng(0)
    for image_id in (40083, 785):
        image = np.asarray(Image.open(SAMPLE / f"{image_id:012d}.jpg").convert("RGB"))
        truth = np.array(
            [a["keypoints"] for a in data["annotations"] if a["image_id"] == image_id and a["num_keypoints"]], float
        ).reshape(-1, 17, 3)
        predicted = truth.copy()
        predicted[..., :2] += rng.normal(0, 5, predicted[..., :2].shape)
        predicted[..., 2] = rng.uniform(0, 1, predicted[..., 2].shape) * (truth[..., 2] > 0)
        panels.append((image, predicted, truth))
    path = tmp_path / "samples" / "step_100.png"
    assert draw_samples(path, panels, title="step 100") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_100.png"]  # no .partial left
    heights = layout([p[0].shape for p in panels], 320, "step 100")
    assert heights[1:] == [round(320 * 333 / 500), round(320 * 425 / 640)]
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (640, sum(heights))
        pixels = np.asarray(png.convert("RGB"))
    # The photographs are in it: the right half (ground truth) of the first row is the image, not blank.
    row = pixels[heights[0] : heights[0] + heights[1], 320:]
    assert row.std() > 20
