"""ILSVRC2012 tars in the official layout, written from images in memory (tests and benchmarks)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mlpbnn.data.imagenet.prepare import TAR_FILES


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def encode_jpeg(pixels: np.ndarray, mode: str = "RGB", quality: int = 95) -> bytes:
    """JPEG bytes of an (h, w, 3) uint8 RGB image, stored in ``mode`` (``L`` or ``CMYK`` give the
    grayscale and CMYK files that ILSVRC2012 contains)."""
    im = Image.fromarray(np.asarray(pixels, np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_tars(manual_dir: str | os.PathLike, train: dict[str, Sequence[tuple[str, bytes]]] | None = None,
               validation: Sequence[tuple[str, bytes]] | None = None) -> list[Path]:
    """Writes ``ILSVRC2012_img_train.tar`` (one inner ``<synset>.tar`` per synset, holding
    ``(file name, bytes)`` images) and/or ``ILSVRC2012_img_val.tar`` (flat files; TFDS labels them
    with the first lines of its ``validation_labels.txt`` in sorted name order)."""
    out = Path(manual_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if train is not None:
        path = out / TAR_FILES["train"]
        with tarfile.open(path, "w") as outer:
            for synset, images in train.items():
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as inner:
                    for name, data in images:
                        _add_member(inner, name, data)
                _add_member(outer, f"{synset}.tar", buf.getvalue())
        written.append(path)
    if validation is not None:
        path = out / TAR_FILES["validation"]
        with tarfile.open(path, "w") as tar:
            for name, data in validation:
                _add_member(tar, name, data)
        written.append(path)
    return written
