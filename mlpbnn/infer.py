"""Run a packed export (``python -m mlpbnn.export``) on images or preprocessed batches.

Classifiers (an export whose output is one vector of logits per image):

    python -m mlpbnn.infer OUT_DIR INPUTS... [--batch-size 32] [--top-k 5]

INPUTS are image files (decoded with PIL and preprocessed as the training data was, by the
export's input spec: grayscale or RGB, resized, ``(pixel / 255 - mean) / std``) or ``.npy`` files
holding preprocessed float NHWC batches (or one HWC image). One JSON object per line and per
image is printed: ``{"input": ..., "index": ..., "top1": ..., "topk": [...], "logits": [...]}``
(``index`` is the row within a ``.npy`` batch, 0 for image files).

Heatmap (top-down pose) models (an export whose output is (H/4, W/4, K) heatmaps, or whose input
spec crops person boxes: ``"resize": "affine_crop"``, SBPN and BHRNet trained on COCO):

    python -m mlpbnn.infer OUT_DIR IMAGES... [--boxes DET.json] [--out results.json] [--draw DIR]
        [--batch-size 32] [--flip-test | --no-flip-test] [--decode quarter|dark] [--image-thre T]

Each person box is cropped, run and post-processed exactly as the evaluation of ``train.py``
does it (``mlpbnn.data.coco``, ``mlpbnn.tasks.keypoints``): the box -> centre and scale (aspect
fixed to the input's, x1.25, in units of 200 px), the affine crop (OpenCV, bilinear, zero border),
ImageNet normalisation; the heatmaps, with the flip test averaged with the mirrored crop's
(flipped back, shifted one pixel), decoded (HRNet's quarter offset or DARK), mapped to image
pixels; each instance rescored (box score x the mean joint score above ``in_vis_thre``), then
OKS-NMS per image. The settings are the run's ``config.eval`` (``PoseEvalConfig``, kept in the
export's model.json; its defaults where the export has no config), overridden by the flags.

``--boxes`` is a person detector's boxes in COCO's detection result format (a list of
``{"image_id", "bbox": [x, y, w, h], "score", "category_id"?}``, the format of ``data.det_file``),
filtered as evaluation filters them (category 1, score >= ``data.image_thre``); an image's boxes
are those whose ``image_id`` is the integer in its file name (``000000000785.jpg`` -> 785).
Without ``--boxes`` the whole image is one person box (score 1). Results are COCO keypoint
results, ``{"image_id", "category_id": 1, "keypoints": [x1, y1, s1, ..., x17, y17, s17],
"score", "file"}`` (``image_id`` null for a file name without a number; pycocotools ignores
``file``), as one JSON list in ``--out`` or one JSON object per line on stdout, images in the
order given. ``--draw DIR`` writes ``DIR/<image name>.png``: the image with the kept skeletons
(joints above ``in_vis_thre``) and the person boxes.

The network runs as one ``jax.jit``-compiled XNOR-popcount program (``mlpbnn.packed``), in batches
of ``--batch-size`` images (crops) of equal size.

A folder among INPUTS stands for the image files in it (by suffix, not recursive), sorted by name.
Every image is decoded completely before it is used (``mlpbnn.data.verify.decode``: Pillow with
truncated files refused, and OpenCV as evaluation reads them), so a truncated or empty file is an
error, not a half-grey picture; a ``.npy`` must hold (N, H, W, C) or (H, W, C) finite floats of the
export's input size. Every bad input is one line ``error: PATH: reason`` on stderr; the other
inputs still run and their results are printed (or written), and the exit status is then 2. Bad
options, an unreadable export or a bad ``--boxes`` file stop the run at once: one ``error:`` line,
exit status 2. Exit status 0: every input ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlpbnn import export, packed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_network(out_dir: str | Path, layout: str = "direct") -> tuple[packed.PackedNetwork, dict[str, Any]]:
    """The jit-compiled network of an export and its model.json."""
    doc, arrays = export.load(out_dir)
    return packed.PackedNetwork(doc, arrays, layout=layout), doc


def preprocess(path: str | Path, spec: Mapping[str, Any]) -> np.ndarray:
    """An image file as the network's float32 (H, W, C) input, by the export's input spec."""
    from PIL import Image

    from mlpbnn.data.imagenet import FILTERS, eval_geometry

    h, w = int(spec["height"]), int(spec["width"])
    filt = FILTERS[spec.get("filter", "bilinear")]
    with Image.open(path) as im:
        im = im.convert(spec["mode"])
        if spec["resize"] == "shorter_side_center_crop":
            box = eval_geometry(im.height, im.width, int(spec["shorter_side"]), h)
            im = im.resize((w, h), filt, box=box)
        elif spec["resize"] == "stretch":
            im = im.resize((w, h), filt) if im.size != (w, h) else im
        else:
            raise ValueError(f"unknown resize {spec['resize']!r} in the input spec")
        pixels = np.asarray(im, np.float32).reshape(h, w, -1)
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return (pixels / 255.0 - mean) / std


def expand_inputs(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """The input files of the command line, each folder replaced by the image files in it
    (``IMAGE_SUFFIXES``, any case, not recursive) sorted by name; and an error line for each path
    that does not exist and each folder without images."""
    files, errors = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{p}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.exists():
            files.append(str(p))
        else:
            errors.append(f"{p}: no such image file or folder")
    return files, errors


def check_image(path: str) -> tuple[int, int]:
    """(width, height) of an image file after a complete decode (``mlpbnn.data.verify.decode``);
    a ValueError naming the file and the reason otherwise."""
    from mlpbnn.data import verify

    try:
        return verify.decode(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_npy(path: str, spec: Mapping[str, Any]) -> np.ndarray:
    """A preprocessed ``.npy`` as float32 (N, H, W, C) of the export's input size; a file of another
    shape, dtype or with non-finite values is a ValueError naming it (and both shapes)."""
    want = (int(spec["height"]), int(spec["width"]), int(spec["channels"]))
    try:
        batch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    shape = batch.shape
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1:] != want:
        raise ValueError(f"{path}: shape {shape}, the network takes (N, {want[0]}, {want[1]}, {want[2]}) batches "
                         f"or one {want} image")
    if not np.issubdtype(batch.dtype, np.floating):
        raise ValueError(f"{path}: {batch.dtype} values; a preprocessed batch holds floats (the input spec's "
                         "(pixel / 255 - mean) / std)")
    if not np.all(np.isfinite(batch)):
        raise ValueError(f"{path}: {int(np.sum(~np.isfinite(batch)))} non-finite value(s)")
    return batch.astype(np.float32)


def read_inputs(paths: Sequence[str], spec: Mapping[str, Any]) -> tuple[list[tuple[str, int, np.ndarray]],
                                                                      list[str]]:
    """(input name, row index, float32 HWC image) for every image in ``paths`` (image files, checked
    by ``check_image`` and preprocessed by the spec, or ``.npy`` batches, ``read_npy``), and an
    error line for each input that cannot be used."""
    items, errors = [], []
    for p in paths:
        try:
            if p.lower().endswith(".npy"):
                items += [(p, i, img) for i, img in enumerate(read_npy(p, spec))]
            elif p.lower().endswith(IMAGE_SUFFIXES):
                check_image(p)
                items.append((p, 0, preprocess(p, spec)))
            else:
                raise ValueError(f"{p}: not a .npy batch or an image file ({', '.join(IMAGE_SUFFIXES)})")
        except (OSError, ValueError) as e:
            errors.append(str(e))
    return items, errors


def predict(net: packed.PackedNetwork, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Logits (float32) of ``images`` (equal-size HWC arrays), ``batch_size`` at a time. The last
    batch is padded to the full size so that every batch reuses one compilation."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.stack(images[start:start + batch_size])
        n = len(chunk)
        if n < batch_size and len(images) > batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(net(chunk))[:n])
    return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------------------------------- heatmap models


def is_heatmap_model(doc: Mapping[str, Any]) -> bool:
    """Whether an export's network gives heatmaps (top-down pose): its per-example output shape has
    three dimensions, or its input spec crops person boxes (``"resize": "affine_crop"``)."""
    shape = doc.get("output_shape")
    return (shape is not None and len(shape) == 3) or doc.get("input_spec", {}).get("resize") == "affine_crop"


def image_id_of(path: str | Path) -> int | None:
    """The COCO image id in a file name: its last run of digits (``000000000785.jpg`` -> 785,
    ``COCO_val2014_000000000785.jpg`` -> 785); None without one."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


def pose_eval_config(doc: Mapping[str, Any], **overrides: Any) -> Any:
    """The evaluation settings (``mlpbnn.pose.eval_config.PoseEvalConfig``) of the run the export
    came from (model.json's ``config``'s ``eval`` section; the defaults without one), with the
    ``overrides`` that are not None."""
    from mlpbnn.pose.eval_config import PoseEvalConfig
    from mlpbnn.registry import from_section

    section = (doc.get("config") or {}).get("eval")
    config = from_section(PoseEvalConfig, section, "eval")
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def crop_of(doc: Mapping[str, Any]) -> Any:
    """The evaluation crop (``mlpbnn.data.coco.Crop``) of a heatmap export's input spec. The spec
    states the geometry and normalisation; a spec this version cannot reproduce exactly (another
    box padding, pixel_std, interpolation, mean or std) is a ValueError saying which field."""
    from mlpbnn.data import coco

    spec = doc["input_spec"]
    if spec.get("resize") != "affine_crop":
        raise ValueError(f"the export's input spec resizes by {spec.get('resize')!r}; a heatmap model needs the "
                         "person-box crop 'affine_crop' (export it from a COCO run, or with --dataset coco)")
    h, w = int(spec["height"]), int(spec["width"])
    shape = doc.get("output_shape") or [spec.get("heatmap_height", h // 4), spec.get("heatmap_width", w // 4),
                                        spec.get("num_joints", coco.NUM_JOINTS)]
    if len(shape) != 3:
        raise ValueError(f"the export's output shape {list(shape)} is not heatmaps (H, W, K)")
    if int(shape[2]) != coco.NUM_JOINTS:
        raise ValueError(f"the network gives {shape[2]} heatmaps; COCO's post-processing (OKS sigmas, flip pairs) "
                         f"is for {coco.NUM_JOINTS} keypoints")
    crop = coco.Crop(image_size=(h, w), heatmap_size=(int(shape[0]), int(shape[1])))
    reference = coco.input_spec(coco.CocoConfig(image_size=(h, w), heatmap_size=(int(shape[0]), int(shape[1])),
                                                color_rgb=spec.get("mode", "RGB") == "RGB"))
    for key in ("channels", "mean", "std", "aspect_ratio", "box_padding", "pixel_std", "rotation", "interpolation",
                "border_value", "flip_index"):
        if key in spec and spec[key] != reference[key]:
            raise ValueError(f"the export's input spec has {key} {spec[key]!r}; this version crops person boxes "
                             f"with {reference[key]!r} only (mlpbnn.data.coco.input_spec)")
    return crop


class _Images:
    """``mlpbnn.data.coco.ImageSource`` of the command line's images: key i is ``paths[i]``, read as
    evaluation reads images (``coco.read_image``); the last image is kept (boxes come by image)."""

    def __init__(self, paths: Sequence[str], color_rgb: bool):
        self.paths, self.color_rgb = list(paths), color_rgb
        self._last: tuple[int, np.ndarray] | None = None

    def load(self, key: int) -> np.ndarray:
        from mlpbnn.data import coco

        if self._last is None or self._last[0] != key:
            image = coco.read_image(self.paths[key], self.color_rgb)
            if image is None:
                raise ValueError(f"{self.paths[key]}: OpenCV cannot decode this image")
            self._last = (key, image)
        return self._last[1]


def image_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) of each image file, read from its header; a missing or unreadable file is an
    error naming it."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path}: not an image ({e})") from None
    return sizes


def person_boxes(paths: Sequence[str], sizes: Sequence[tuple[int, int]], boxes_file: str | None,
                 image_thre: float = 0.0) -> list[tuple[int, list[float], float]]:
    """(image key, [x, y, w, h], score) of every person box to run: the detector boxes of
    ``boxes_file`` (``mlpbnn.data.coco.read_detections``: category 1, score >= ``image_thre``) of
    each image, matched by the image id in its file name (``image_id_of``), in file order; without
    a boxes file the whole image (score 1). Keys are positions in ``paths``."""
    from mlpbnn.data import coco

    if boxes_file is None:
        return [(key, [0.0, 0.0, float(w), float(h)], 1.0) for key, (w, h) in enumerate(sizes)]
    ids = [image_id_of(p) for p in paths]
    for path, image_id in zip(paths, ids, strict=True):
        if image_id is None:
            raise ValueError(f"{path}: no image id in the file name; --boxes matches boxes to images by the number "
                             "in it (COCO's 000000000785.jpg is image 785)")
    by_id: dict[int, list[tuple[list[float], float]]] = {}
    for image_id, box, score in coco.read_detections(boxes_file, image_thre):
        by_id.setdefault(image_id, []).append((box, score))
    return [(key, box, score) for key, image_id in enumerate(ids) for box, score in by_id.get(image_id, [])]


def predict_keypoints(net: Callable[[Any], Any], task: Any, records: Any, images: Any, crop: Any,
                      batch_size: int = 32) -> dict[str, np.ndarray]:
    """The decoded crops of every record, as evaluation computes them: ``coco.eval_crops`` (the
    crops and their geometry), ``task.predict`` (the flip test) and ``task.eval_outputs`` (the
    decode) of the keypoints task ``task``; ``batch_size`` crops at a time, the last batch padded
    to the same size (one compilation). Returns ``keypoints`` (N, K, 3: heatmap x, y, score) with
    ``image_id``, ``center``, ``scale``, ``score``, ``area``: ``task.coco_results``' input."""
    import jax.numpy as jnp

    from mlpbnn.data import coco
    from mlpbnn.data.base import HOST, pad_to

    n = len(records)
    size = max(1, min(batch_size, n))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("keypoints", "image_id", "center", "scale", "score",
                                                           "area")}
    for start in range(0, n, size):
        indices = np.arange(start, min(start + size, n))
        batch = pad_to(coco.eval_crops(records, images, crop, indices), size)
        outputs = task.eval_outputs(task.predict(net, jnp.asarray(batch["images"])), batch)
        parts["keypoints"].append(np.asarray(outputs["keypoints"], np.float64)[:len(indices)])
        for key in ("image_id", "center", "scale", "score", "area"):
            parts[key].append(np.asarray(batch[HOST][key])[:len(indices)])
    empty = {"keypoints": (0, coco.NUM_JOINTS, 3), "center": (0, 2), "scale": (0, 2)}
    return {k: np.concatenate(v) if v else np.zeros(empty.get(k, (0,))) for k, v in parts.items()}


def pose_results(net: Callable[[Any], Any], doc: Mapping[str, Any], paths: Sequence[str],
                 boxes_file: str | None = None, batch_size: int = 32, image_thre: float | None = None,
                 **eval_overrides: Any) -> tuple[list[dict], dict[str, Any]]:
    """COCO keypoint results of the images ``paths`` through the heatmap network ``net`` (NHWC
    float32 crops -> (N, h, w, K) heatmaps) of the export ``doc`` (its model.json), with the
    person boxes of ``boxes_file`` (or whole images), in the order of ``paths``; and what was run
    (``eval``: the settings, ``boxes``: [x, y, w, h, score] per image key, ``keys``: each result's
    image key, i.e. its position in ``paths``). ``image_thre`` and
    ``eval_overrides`` (``flip_test``, ``decode``, ...) override the export's settings."""
    from mlpbnn.data import coco
    from mlpbnn.tasks.keypoints import Keypoints

    ev = pose_eval_config(doc, **eval_overrides)
    crop = crop_of(doc)
    spec = doc["input_spec"]
    thre = float(spec.get("image_thre", 0.0) if image_thre is None else image_thre)
    sizes = image_sizes(paths)
    boxes = person_boxes(paths, sizes, boxes_file, thre)
    records = coco.box_records(boxes, crop.aspect_ratio)
    task = Keypoints(coco=None, heatmap_shape=(*crop.heatmap_size, coco.NUM_JOINTS), eval=ev)
    crops = predict_keypoints(net, task, records, _Images(paths, spec.get("mode", "RGB") == "RGB"), crop,
                              batch_size)
    results = task.coco_results(crops) if len(records) else []
    keys = [r["image_id"] for r in results]  # coco_results groups by image key, in increasing order
    for r, key in zip(results, keys, strict=True):
        r["image_id"], r["file"] = image_id_of(paths[key]), str(paths[key])
    per_image: dict[int, list[list[float]]] = {}
    for key, box, score in boxes:
        per_image.setdefault(key, []).append([*box, score])
    return results, {"eval": ev, "boxes": per_image, "keys": keys, "image_thre": thre}


def draw_results(directory: str | Path, paths: Sequence[str], results: Sequence[Mapping[str, Any]],
                 keys: Sequence[int], boxes: Mapping[int, Sequence[Sequence[float]]], ev: Any) -> list[Path]:
    """``directory/<image name>.png`` per image (``<name>_<i>.png`` for a repeated name): the image
    with the skeletons of its ``results`` (those whose ``keys`` is the image's position in
    ``paths``; joints with score > ``ev.in_vis_thre``) and its person boxes
    (``mlpbnn.pose.draw.draw_keypoints``)."""
    from mlpbnn.data import coco
    from mlpbnn.pose.draw import draw_keypoints

    written, seen = [], set()
    for key, path in enumerate(paths):
        name = Path(path).stem
        if name in seen:
            name = f"{name}_{key}"
        seen.add(name)
        image = coco.read_image(path)
        if image is None:
            raise ValueError(f"{path}: OpenCV cannot decode this image")
        kpts = np.array([r["keypoints"] for r, k in zip(results, keys, strict=True) if k == key],
                        np.float64).reshape(-1, 17, 3)
        box = np.array([b[:4] for b in boxes.get(key, [])], np.float64).reshape(-1, 4)
        title = f"{Path(path).name}: {len(kpts)} people from {len(box)} boxes ({ev.describe()})"
        written.append(draw_keypoints(Path(directory) / f"{name}.png", image, kpts, box, title=title,
                                      threshold=ev.in_vis_thre))
    return written


def pose_main(net: Callable[[Any], Any], doc: Mapping[str, Any], args: argparse.Namespace) -> int:
    """The command line's heatmap mode (after the export is loaded)."""
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    paths, errors = expand_inputs(args.inputs)
    good = []
    for p in paths:
        try:
            if not p.lower().endswith(IMAGE_SUFFIXES):
                raise ValueError(f"{p}: not an image file ({', '.join(IMAGE_SUFFIXES)}); pose models take images")
            check_image(p)
            good.append(p)
        except ValueError as e:
            errors.append(str(e))
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if not good:
        return 2
    try:
        results, run = pose_results(net, doc, good, args.boxes, args.batch_size, args.image_thre,
                                    flip_test=args.flip_test, decode=args.decode)
        if args.draw:
            draw_results(args.draw, good, results, run["keys"], run["boxes"], run["eval"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    boxes = sum(len(b) for b in run["boxes"].values())
    failed = f" ({len(errors)} input(s) failed)" if errors else ""
    print(f"{len(good)} image(s){failed}, {boxes} person box(es), {len(results)} result(s) after OKS-NMS "
          f"({run['eval'].describe()})", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results) + "\n")
    else:
        for r in results:
            print(json.dumps(r))
    return 2 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlpbnn.infer", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Output: classifiers print one JSON line per image ({input, index, top1, topk, logits}); pose\n"
               "models print COCO keypoint results as JSON lines (or write --out). Each bad input is one line\n"
               "'error: PATH: reason' on stderr and the others still run; exit status 0 when every input ran,\n"
               "2 when any input failed or an option, the export or --boxes is bad.")
    parser.add_argument("out_dir", help="a packed export (written by python -m mlpbnn.export)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (" + " ".join(IMAGE_SUFFIXES) + ") or folders of them (their images, "
                        "sorted by name); classifiers also take .npy files of preprocessed (N, H, W, C) or "
                        "(H, W, C) float batches of the export's input size")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images (pose: person crops) per call of the network (default: 32)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="classifiers: how many classes to list per image, best first (default: 5)")
    pose = parser.add_argument_group("heatmap (pose) models")
    pose.add_argument("--boxes", metavar="DET.json",
                      help="person detections in COCO's result format ([{image_id, bbox [x, y, w, h], score, "
                      "category_id?}]), matched to images by the number in the file name (default: each whole "
                      "image is one box)")
    pose.add_argument("--out", metavar="FILE",
                      help="write the COCO keypoint results here as one JSON list (default: JSON lines on stdout)")
    pose.add_argument("--draw", metavar="DIR", help="write one picture per image with its skeletons into DIR")
    pose.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                      help="average with the mirrored crop (default: the run's eval.flip_test)")
    pose.add_argument("--decode", choices=("quarter", "dark"), default=None,
                      help="heatmap decoding: HRNet's quarter-pixel offset or DARK (default: the run's eval.decode)")
    pose.add_argument("--image-thre", type=float, default=None, metavar="T",
                      help="the detector score a box needs (default: the run's data.image_thre)")
    args = parser.parse_args(argv)
    try:
        net, doc = load_network(args.out_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if is_heatmap_model(doc):
        return pose_main(net, doc, args)
    given = [f for f, v in (("--boxes", args.boxes), ("--out", args.out), ("--draw", args.draw),
                            ("--flip-test", args.flip_test), ("--decode", args.decode),
                            ("--image-thre", args.image_thre)) if v is not None]
    if given:
        print(f"error: {given[0]} is for heatmap (pose) models; {args.out_dir} is a classifier", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    paths, errors = expand_inputs(args.inputs)
    items, bad = read_inputs(paths, doc["input_spec"])
    errors += bad
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if items:  # every row has the spec's size (read_inputs), so one compilation serves all
        logits = predict(net, [img for _, _, img in items], args.batch_size)
        k = max(1, min(args.top_k, doc["num_outputs"]))
        for (name, index, _), row in zip(items, logits, strict=True):
            top = np.argsort(-row, kind="stable")[:k]
            print(json.dumps({"input": name, "index": index, "top1": int(top[0]), "topk": [int(t) for t in top],
                              "logits": [float(v) for v in row]}))
    return 2 if errors or not items else 0


if __name__ == "__main__":
    sys.exit(main())
