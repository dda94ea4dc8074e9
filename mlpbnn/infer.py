"""Run a packed export (``python -m mlpbnn.export``) on images or preprocessed batches.

    python -m mlpbnn.infer OUT_DIR INPUTS... [--batch-size 32] [--top-k 5]

INPUTS are image files (decoded with PIL and preprocessed as the training data was, by the
export's input spec: grayscale or RGB, resized, ``(pixel / 255 - mean) / std``) or ``.npy`` files
holding preprocessed float NHWC batches (or one HWC image). One JSON object per line and per
image is printed: ``{"input": ..., "index": ..., "top1": ..., "topk": [...], "logits": [...]}``
(``index`` is the row within a ``.npy`` batch, 0 for image files).

The network runs as one ``jax.jit``-compiled XNOR-popcount program (``mlpbnn.packed``), in batches
of ``--batch-size`` images of equal size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
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


def read_inputs(paths: Sequence[str], spec: Mapping[str, Any]) -> Iterator[tuple[str, int, np.ndarray]]:
    """(input name, row index, float32 HWC image) for every image in ``paths``."""
    for p in paths:
        if p.lower().endswith(".npy"):
            batch = np.load(p)
            if batch.ndim == 3:
                batch = batch[None]
            if batch.ndim != 4 or not np.issubdtype(batch.dtype, np.floating):
                raise ValueError(f"{p}: expected a float NHWC batch (or one HWC image), got {batch.dtype} "
                                 f"{batch.shape}")
            if batch.shape[-1] != int(spec["channels"]):
                raise ValueError(f"{p}: {batch.shape[-1]} channel(s), the network takes {spec['channels']}")
            for i, img in enumerate(batch):
                yield p, i, img.astype(np.float32)
        elif p.lower().endswith(IMAGE_SUFFIXES):
            yield p, 0, preprocess(p, spec)
        else:
            raise ValueError(f"{p}: not a .npy batch or an image file ({', '.join(IMAGE_SUFFIXES)})")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbnn.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="a packed export (python -m mlpbnn.export)")
    parser.add_argument("inputs", nargs="+", help="image files or .npy preprocessed NHWC batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        net, doc = load_network(args.out_dir)
        items = list(read_inputs(args.inputs, doc["input_spec"]))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Group by image size (npy batches may differ from the spec), keeping the input order.
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (_, _, img) in enumerate(items):
        by_shape.setdefault(img.shape, []).append(i)
    logits: list[np.ndarray | None] = [None] * len(items)
    for idx in by_shape.values():
        for i, row in zip(idx, predict(net, [items[i][2] for i in idx], args.batch_size), strict=True):
            logits[i] = row
    k = max(1, min(args.top_k, doc["num_outputs"]))
    for (name, index, _), row in zip(items, logits, strict=True):
        top = np.argsort(-row, kind="stable")[:k]
        print(json.dumps({"input": name, "index": index, "top1": int(top[0]), "topk": [int(t) for t in top],
                          "logits": [float(v) for v in row]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
