"""Export a trained binary network as a bit-packed inference program.

    python -m mlpbnn.export VARIABLES_DIR OUT_DIR [--dataset NAME] [--image-size N] [--overwrite]

reads a variables checkpoint (a run's ``workdir/variables`` or ``python -m mlpbnn.convert``'s
output) and writes OUT_DIR with

- ``weights.npz``: the arrays: binary weights as uint32 words (32 input channels per word, bit 1
  for -1: ``mlpbnn.packed.pack_weight_signs``), each binary layer's per-channel float scale and
  bias (its weight scale alpha and the BatchNorm that follows folded together), the real layers'
  kernels, folded BatchNorms, PReLU slopes and shifts;
- ``model.json``: the program (the IR of ``mlpbnn.lowering``, run by ``mlpbnn.packed``), the
  input spec (image size, channels, normalisation, resizing or cropping), the input and output
  shapes, the sizes, the source checkpoint and, exported from a run's workdir, the run's
  ``config.json`` (``mlpbnn.infer`` reads a pose model's evaluation settings from it).

Any model exports whose binary layers can be bit-packed: the program is lowered by tracing the
model's eval call (``mlpbnn.lowering``), so the zoo's binary ResNets, SBPN, BHRNet and a user's
model binarized by ``mlpbnn.binarize`` go through the same code; what cannot be packed is refused
with the layer's path and the reason. The directory is written beside OUT_DIR under a temporary
name and renamed into place, so a reader sees either the old export or the complete new one.

Format version 2 (this one) added the ops beyond the binary ResNets' (transposed and dense binary
layers, ReLU, upsampling, channel means, concatenation, flattening, padded pooling); version 1
exports load and run unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.errors
import jax
import numpy as np

from mlpbnn import data, lowering, models, packed
from mlpbnn.lowering import ExportError, check_binary_layer, weight_scale  # noqa: F401 - this module's API

FORMAT = "mlpbnn-packed"
VERSION = 2
READABLE = (1, 2)  # format versions load() reads
PROGRAM = "model.json"
ARRAYS = "weights.npz"


# ------------------------------------------------------------------------------------------- input spec


def input_datasets() -> list[str]:
    """The registered datasets with an input preprocessing for export (``--dataset`` presets)."""
    return [n for n in data.names() if data.DATASETS.get(n).input_spec is not None]


def input_spec(dataset: str, image_size: int | tuple[int, int] | None = None, eval_resize: int = 256,
               resize_method: str = "bilinear") -> dict[str, Any]:
    """How images are turned into the network's input, as the training data was:
    ``x = (pixel / 255 - mean) / std`` per channel after resizing, from the dataset's
    registration (``mlpbnn.data``: its ``input_spec``), e.g. digits' 8x8 grayscale with 0..16 ->
    v / 8 - 1, ImageNet's shorter side to ``round(image_size * eval_resize / 224)`` and a centre
    crop. ``image_size``, ``eval_resize`` and ``resize_method`` set those fields of the dataset's
    section where it has them."""
    if dataset not in input_datasets():
        raise ExportError(f"unknown dataset {dataset!r}; valid: {', '.join(input_datasets())}")
    entry = data.DATASETS.get(dataset)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    given = {"image_size": image_size, "eval_resize": eval_resize, "resize_method": resize_method}
    try:
        section = entry.config(**{k: v for k, v in given.items() if k in fields and v is not None})
    except (TypeError, ValueError) as e:
        raise ExportError(f"dataset {dataset!r}: {e}") from None
    return entry.input_spec(section)


def run_config(variables_dir: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run whose ``workdir/variables`` this is; None when there is no
    such file (e.g. a converted checkpoint)."""
    config = Path(variables_dir).absolute().parent / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


def spec_from_workdir(variables_dir: str | Path) -> dict[str, Any] | None:
    """The input spec of the run whose ``workdir/variables`` this is: its dataset's registered
    ``input_spec`` of the run's ``data`` section; None without ``workdir/config.json`` or with a
    dataset that has no input spec."""
    config = run_config(variables_dir)
    section = (config or {}).get("data", {})
    name = section.get("name")
    if name not in data.names() or data.DATASETS.get(name).input_spec is None:
        return None
    try:
        parsed = data.parse(section)
    except ValueError as e:
        raise ExportError(f"{Path(variables_dir).absolute().parent / 'config.json'}: {e}") from None
    return data.DATASETS.get(name).input_spec(parsed)


def parse_size(text: str) -> int | tuple[int, int]:
    """``--image-size``: ``N`` or ``HxW``."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


# ------------------------------------------------------------------------------------------- building


def build(variables: Mapping[str, Any], model_name: str, model_kwargs: Mapping[str, Any],
          spec: Mapping[str, Any], dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(program, arrays) of the packed network of model ``model_name`` (a zoo name or a user's
    ``package.module:Factory``, with the checkpoint's ``model_kwargs``: its options, rules and
    estimators), lowered by tracing its eval call (``mlpbnn.lowering``); raises ``ExportError``
    saying why a model cannot be exported. ``spec``: ``input_spec(...)`` (its height, width and
    channels make the example input the model is traced with). ``dtype``: of the real arrays
    (float32 in exports; float64 for exactness tests, the folding itself is computed in float64)."""
    kwargs = {k: v for k, v in model_kwargs.items() if k != "dtype"}
    if not models.is_external(model_name) and model_name in models.names() and not models.info(model_name).binary \
            and not kwargs.get("binarize"):
        raise ExportError(f"{model_name!r} is a full-precision model: there is nothing to bit-pack")
    try:
        model = models.create(model_name, **kwargs)
    except ValueError as e:
        raise ExportError(f"model {model_name!r}: {e}") from None
    x = np.zeros((1, int(spec["height"]), int(spec["width"]), int(spec["channels"])), np.float32)
    try:
        program, arrays = lowering.lower(model, variables, x, dtype)
    except ExportError:
        raise
    except (ValueError, TypeError, flax.errors.FlaxError) as e:  # e.g. the checkpoint does not fit this input
        raise ExportError(f"model {model_name!r} cannot run on a {x.shape[1]}x{x.shape[2]}x{x.shape[3]} input (the "
                          f"input spec's size and channels) with these variables: {e}") from None
    if not program["binary_weights"]:
        raise ExportError(f"{model_name!r} has no binary layer (a full-precision model): there is nothing to "
                          "bit-pack")
    return {"format": FORMAT, "version": VERSION, **program}, arrays


# ------------------------------------------------------------------------------------------- files


def float32_size(variables: Mapping[str, Any]) -> int:
    """Bytes of the model's float32 params and BatchNorm statistics (the estimator excluded)."""
    keep = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    return int(sum(np.asarray(a).size * 4 for a in jax.tree.leaves(keep)))


def save(out_dir: str | Path, program: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
         meta: Mapping[str, Any], overwrite: bool = False) -> dict[str, int]:
    """Writes ``weights.npz`` and ``model.json`` into a fresh sibling directory, then renames it to
    ``out_dir`` (replacing an existing export only with ``overwrite``). Returns the sizes in bytes."""
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / ARRAYS, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        binary = sum(a.nbytes for a in arrays.values() if a.dtype == np.uint32)
        sizes = {"weights_file": (tmp / ARRAYS).stat().st_size, "binary_weight_bytes": int(binary),
                 "real_bytes": int(sum(a.nbytes for a in arrays.values() if a.dtype == np.float32))}
        doc = {**program, **meta, "sizes": {**sizes, **meta.get("sizes", {})}}
        with open(tmp / PROGRAM, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        sizes["total"] = sizes["weights_file"] + (tmp / PROGRAM).stat().st_size
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sizes


def load(out_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(model.json as a dict, arrays) of an export."""
    d = Path(out_dir)
    if not (d / PROGRAM).is_file() or not (d / ARRAYS).is_file():
        raise FileNotFoundError(f"{d} is not a packed export (expected {PROGRAM} and {ARRAYS}); "
                                "create one with: python -m mlpbnn.export VARIABLES_DIR OUT_DIR")
    doc = json.loads((d / PROGRAM).read_text())
    if doc.get("format") != FORMAT or doc.get("version") not in READABLE:
        raise ValueError(f"{d / PROGRAM}: format {doc.get('format')!r} version {doc.get('version')!r}, "
                         f"expected {FORMAT!r} version {' or '.join(map(str, READABLE))}")
    with np.load(d / ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    packed.check_program(doc, arrays)
    return doc, arrays


def export(variables_dir: str | Path, out_dir: str | Path, *, dataset: str | None = None,
           image_size: int | tuple[int, int] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Reads a variables checkpoint, builds and writes the packed export; returns a summary."""
    from mlpbnn.variables_io import load_variables

    variables, meta = load_variables(variables_dir)
    if dataset is not None:
        spec = input_spec(dataset, image_size)
    else:
        spec = spec_from_workdir(variables_dir)
        if spec is None:
            raise ExportError(f"no input spec: {Path(variables_dir).absolute().parent}/config.json not found or "
                              f"without a known data.name; pass --dataset ({', '.join(input_datasets())})")
        if image_size:
            spec = input_spec(spec["dataset"], image_size)
    program, arrays = build(variables, meta["model"], meta["model_kwargs"], spec)
    f32 = float32_size(variables)
    info = {"source": {"variables": str(Path(variables_dir).absolute()), "model": meta["model"],
                       "model_kwargs": meta["model_kwargs"]},
            "input_spec": spec, "sizes": {"float32_variables": f32}, "config": run_config(variables_dir)}
    sizes = save(out_dir, program, arrays, info, overwrite)
    return {"out_dir": str(Path(out_dir).absolute()), **sizes, "float32_variables": f32,
            "compression": f32 / sizes["total"], "binary_weights": program["binary_weights"],
            "ops": len(program["ops"]), "input_spec": spec}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbnn.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("variables_dir", help="variables checkpoint (a run's workdir/variables)")
    parser.add_argument("out_dir", help="the export directory to write")
    parser.add_argument("--dataset", choices=input_datasets(),
                        help="input spec preset (default: from workdir/config.json)")
    parser.add_argument("--image-size", type=parse_size, default=None,
                        help="input size, N or HxW (default: the run's, or the dataset's default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    args = parser.parse_args(argv)
    try:
        s = export(args.variables_dir, args.out_dir, dataset=args.dataset, image_size=args.image_size,
                   overwrite=args.overwrite)
    except (ExportError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = s["input_spec"]
    print(f"wrote {s['out_dir']}: {s['total']:,} bytes ({s['total'] / 2**20:.2f} MiB) on disk; float32 variables "
          f"{s['float32_variables']:,} bytes ({s['float32_variables'] / 2**20:.2f} MiB), {s['compression']:.1f}x "
          f"smaller; {s['binary_weights']:,} binary weights in {s['binary_weight_bytes']:,} bytes, real "
          f"values {s['real_bytes']:,} bytes")
    print(f"input: {spec['height']}x{spec['width']}x{spec['channels']} ({spec['dataset']}), "
          f"x = (pixel/255 - {spec['mean']}) / {spec['std']}, resize {spec['resize']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
