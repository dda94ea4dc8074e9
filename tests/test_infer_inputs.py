"""``python -m mlpbnn.infer`` on bad inputs: each unreadable, empty or truncated image, each
``.npy`` of the wrong shape and each missing path is one ``error:`` line naming it, the other
inputs still run, and the exit status is 2; folders expand to their image files, sorted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mlpbnn import export, infer, models
from tests.test_infer_pose import SAMPLE, PeakNet, needs_sample, pose_doc, run_main

GOOD = SAMPLE / "000000000785.jpg"


def truncated_copy(path: Path, source: Path = GOOD) -> Path:
    """The first half of a real JPEG: libjpeg only warns ("Premature end of JPEG file") and OpenCV
    returns the image with its lower half grey."""
    data = source.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A real packed export of a tiny binary ResNet for 8x8 grayscale digits (a few seconds)."""
    name, kw = "bireal_resnet18", {"num_classes": 10, "width": 8, "stage_sizes": (1, 1), "small_inputs": True}
    variables = jax.jit(models.create(name, **kw).init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, 8, 8, 1)))
    spec = export.input_spec("digits")
    program, arrays = export.build(variables, name, kw, spec)
    out = tmp_path_factory.mktemp("export") / "packed"
    export.save(out, program, arrays, {"input_spec": spec})
    return out


@needs_sample
def test_classifier_bad_inputs_are_error_lines_and_the_others_run(classifier, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.PNG"):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / name)
    truncated = truncated_copy(folder / "c_truncated.jpg")
    empty = folder / "d_empty.jpg"
    empty.write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: left out of the folder's inputs")
    (tmp_path / "nothing").mkdir()
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, rng.standard_normal((2, 12, 12, 1)).astype(np.float32))
    good = tmp_path / "good.npy"
    np.save(good, rng.standard_normal((8, 8, 1)).astype(np.float32))
    missing = tmp_path / "missing.jpg"
    capsys.readouterr()
    code = infer.main([str(classifier), str(folder), str(wrong), str(missing), str(tmp_path / "nothing"), str(good)])
    out, err = capsys.readouterr()
    assert code == 2
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(Path(r["input"]).name, r["index"]) for r in rows] == [("a.PNG", 0), ("b.png", 0), ("good.npy", 0)]
    lines = err.splitlines()
    assert all(line.startswith("error: ") for line in lines) and len(lines) == 5, err
    expected = {missing: "no such image file or folder", tmp_path / "nothing": "a folder without image files",
                truncated: "does not decode completely (image file is truncated",
                empty: "empty file (0 bytes)", wrong: "shape (2, 12, 12, 1), the network takes (N, 8, 8, 1)"}
    for path, reason in expected.items():
        assert sum(line.startswith(f"error: {path}: {reason}") for line in lines) == 1, (path, err)
    # Only good inputs: status 0, and the folder's images as named one by one. The same three
    # inputs, so the same batch shape: exact equality (another batch size is another XLA program,
    # whose float sums may differ in the last bit).
    assert infer.main([str(classifier), str(folder / "a.PNG"), str(folder / "b.png"), str(good)]) == 0
    assert [json.loads(line)["logits"] for line in capsys.readouterr().out.splitlines()] == [r["logits"]
                                                                                           for r in rows]


@needs_sample
def test_pose_bad_images_are_error_lines_and_the_good_ones_run(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(GOOD, folder / GOOD.name)
    truncated = truncated_copy(folder / "000000000786.jpg")
    empty = folder / "000000000787.jpg"
    empty.write_bytes(b"")
    batch = tmp_path / "crops.npy"
    np.save(batch, np.zeros((1, 64, 48, 3), np.float32))
    code, out, err = run_main(monkeypatch, capsys, PeakNet(), pose_doc(), folder, batch)
    assert code == 2
    assert [(r["image_id"], Path(r["file"]).name) for r in map(json.loads, out.splitlines())] == [(785, GOOD.name)]
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {truncated}: does not decode completely (image file is truncated"), err
    assert lines[1:3] == [f"error: {empty}: empty file (0 bytes)",
                          f"error: {batch}: not an image file ({', '.join(infer.IMAGE_SUFFIXES)}); pose models take "
                          "images"]
    assert lines[3].startswith("1 image(s) (3 input(s) failed), 1 person box(es)") and len(lines) == 4
