"""The command line: ``python -m mlpbnn.data.imagenet prepare|info``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlpbnn.data.imagenet.dataset import ImageNet
from mlpbnn.data.imagenet.prepare import TAR_FILES, PrepareReport, prepare, say, split_sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlpbnn.data.imagenet",
        description="ILSVRC2012 (ImageNet-1k) through tensorflow-datasets' imagenet2012 builder: prepare it from "
        "the official tars, or describe a prepared one.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare tfds imagenet2012 (array_record) from the ILSVRC2012 tars")
    p.add_argument("--manual_dir", required=True, help=f"folder holding {' and/or '.join(TAR_FILES.values())}")
    p.add_argument("--data_dir", default="", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--splits", default="train,validation",
                   help="splits whose tar must be present (comma-separated; default both)")
    p.add_argument("--no_verify", action="store_true", help="skip decoding every image to find corrupt ones")
    p.add_argument("--workers", type=int, default=0, help="verification threads (0: all cores)")
    i = sub.add_parser("info", help="describe a prepared imagenet2012")
    i.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            splits = [s.strip() for s in args.splits.split(",") if s.strip()]
            report = prepare(args.manual_dir, args.data_dir, splits, verify=not args.no_verify, workers=args.workers)
            if report.already_prepared:
                say(report.summary())
        else:
            ds = ImageNet(args.data_dir, 0)
            print(ds.describe())
            print(PrepareReport(str(ds.builder.data_dir), split_sizes(ds.builder), True, corrupt=ds.corrupt).summary())
    except (FileNotFoundError, ValueError) as e:
        say(f"error: {e}")
        return 2
    return 0
