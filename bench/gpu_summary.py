"""The summary of one ``bench/gpu_session.sh`` run, as Markdown on stdout.

    python -m bench.gpu_summary bench/results/gpu > bench/results/gpu/summary.md

Reads what the session's parts wrote into the folder (``parts.txt``, ``env.log``, ``tests.log``,
``estimator.json``, ``step_reduce.json``, ``step_pallas.json``, ``imagenet.json``, ``study.json``);
a part that failed or ran out of time is reported as such, never filled in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(folder: Path, name: str, needle: str = "") -> str:
    try:
        lines = [ln.strip() for ln in (folder / name).read_text().splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    picked = [ln for ln in lines if needle in ln] if needle else lines
    return picked[-1] if picked else "(empty log)"


def summary(folder: Path) -> str:
    out = [f"# Accelerator session: {folder}", ""]
    env = _last_line(folder, "env.log", "jax")
    out += [f"- environment: `{env}`"]
    try:
        out += [f"- part `{ln}`" for ln in (folder / "parts.txt").read_text().splitlines() if ln.strip()]
    except OSError:
        out += ["- parts.txt missing: the session did not run"]
    out += [f"- tests: `{_last_line(folder, 'tests.log')}`", ""]

    est = _load(folder, "estimator.json")
    if est and est.get("estimator_alone"):
        e = est["estimator_alone"]
        out += [f"## Estimator backward alone ({e['weights'] / 1e6:.2f}M weights; default {e['default']})", "",
                "| form/chunk | ms |", "|---|---|"]
        out += [f"| {k} | {v:.2f} |" for k, v in sorted(e["ms"].items(), key=lambda kv: kv[1])]
        out += [""]

    steps = {form: _load(folder, f"step_{form}.json") for form in ("reduce", "pallas")}
    if any(steps.values()):
        out += ["## Train step (bench/train_step.py) by MLP backward form", "",
                "| form | network | size | mlpbnn img/s | PyTorch img/s | mlpbnn / PyTorch |",
                "|---|---|---|---|---|---|"]
        for form, s in steps.items():
            for r in (s or {}).get("rows", []):
                out += [f"| {form} | {r['network']} | {r['size']} | {r['mlpbnn_img_s']:.1f} | {r['pytorch_img_s']:.1f} "
                        f"| {r['ratio_mlpbnn_over_pytorch']:.2f} |"]
        out += ["", "MLP estimator's share of mlpbnn's step, (t_mlp - t_ste) / t_mlp:", "",
                "| form | setting | share | mlp step ms | ste step ms |", "|---|---|---|---|---|"]
        for form, s in steps.items():
            for k, v in (s or {}).get("mlp_share", {}).items():
                out += [f"| {form} | {k} | {v['share']:.1%} | {v['mlp_s'] * 1e3:.1f} | {v['ste_s'] * 1e3:.1f} |"]
        out += [""]

    im = _load(folder, "imagenet.json")
    if im:
        out += [f"## ImageNet recipe step at {im['size']}x{im['size']}, {im['dtype']} (bench/imagenet_step.py)", "",
                "| network | batch | framework | img/s | step MiB | compile s |", "|---|---|---|---|---|---|"]
        out += [f"| {r['network']} | {r['batch']} | {r['framework']} | {r['img_s']:.1f} | {r['step_peak_mib']:.0f} "
                f"| {r['compile_s']:.1f} |" for r in im["rows"]]
        out += ["", "Estimator share: " + ", ".join(f"{k} {v:.1%}" for k, v in im["estimator_share"].items()), ""]

    st = _load(folder, "study.json")
    if st and st.get("throughput"):
        out += ["## Vmapped study (mlpbnn.study) images/s by copies K", "", "| row | K | images/s | compile s |",
                "|---|---|---|---|"]
        for row, ks in st["throughput"].items():
            out += [f"| {row} | {k} | {r['examples_per_sec']:.1f} | {r['compile_seconds']:.1f} |"
                    for k, r in ks.items()]
        out += [""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        raise SystemExit("usage: python -m bench.gpu_summary FOLDER (a bench/gpu_session.sh output folder)")
    sys.stdout.write(summary(Path(sys.argv[1])))
