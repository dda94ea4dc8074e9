"""MPII's PCKh, computed as HRNet's ``MPIIDataset.evaluate`` (leoxiaobin/deep-high-resolution-net.pytorch
``lib/dataset/mpii.py``; SimpleBaseline, arXiv 1804.06208, has the same code), the protocol of the
published MPII val numbers (HRNet-W32 90.3, arXiv 1902.09212).

Ground truth is MPII's ``gt_valid.mat`` (HRNet's converted annotations): ``dataset_joints`` (the
16 joint names, 'rank' .. 'lwri'), ``jnt_missing`` (16, N), ``pos_gt_src`` (16, 2, N, 1-based MATLAB
pixels) and ``headboxes_src`` (2, 2, N: the head box's top-left and bottom-right corners), one
column per person of ``valid.json`` in its order. Predictions (N, 16, 2) in 0-based image pixels
are moved to 1-based (+1); the head size is 0.6 x the head box diagonal (SC_BIAS); a visible joint
is correct when its error / head size <= 0.5 (ties count). Per joint: 100 x correct / visible over
all persons. Reported as HRNet's nine numbers: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle (left
and right averaged), Mean (joints weighted by their visible counts, the joints at positions 6 and
7, pelvis and thorax, left out) and Mean@0.1.

Two of HRNet's quirks are kept so that numbers compare: 'Mean@0.1' is read from row 11 of
``np.arange(0, 0.51, 0.01)``, i.e. the threshold 0.11, not 0.1; and the left-out joints are the
positions 6 and 7 whatever ``dataset_joints`` says. Where a joint has no visible instance at
all (never on MPII val; possible on a handful of persons) HRNet divides 0 by 0: here that joint's
PCKh is NaN (and so is its part's), and the two means are taken over the joints that have one
(the same numbers as HRNet's wherever HRNet's are defined).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

PCKH_NAMES: tuple[str, ...] = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1")
SC_BIAS = 0.6  # head size = SC_BIAS x the head box diagonal
THRESHOLD = 0.5
LOW_THRESHOLD = float(np.arange(0, 0.5 + 0.01, 0.01)[11])  # HRNet's 'Mean@0.1' row: 0.11
LEFT_OUT = (6, 7)  # pelvis and thorax, out of the means (HRNet masks these positions)
# MPII's joint abbreviations per reported part: (left, right), or the head alone.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Head", ("head",)), ("Shoulder", ("lsho", "rsho")), ("Elbow", ("lelb", "relb")), ("Wrist", ("lwri", "rwri")),
    ("Hip", ("lhip", "rhip")), ("Knee", ("lkne", "rkne")), ("Ankle", ("lank", "rank")),
)  # fmt: skip
NUM_JOINTS = 16


@dataclasses.dataclass(frozen=True, eq=False)
class PckhGroundTruth:
    """A ``gt_valid.mat``: ``joint_names`` (16 abbreviations), ``missing`` (16, N), ``positions``
    (16, 2, N, 1-based pixels) and ``headboxes`` (2, 2, N), float64; ``path`` for messages."""

    path: str
    joint_names: tuple[str, ...]
    missing: np.ndarray
    positions: np.ndarray
    headboxes: np.ndarray

    def __len__(self) -> int:
        return self.missing.shape[1]

    @property
    def visible(self) -> np.ndarray:
        """(N, 16): 1 where the joint is annotated (1 - jnt_missing), person-major."""
        return (1 - self.missing).T

    @property
    def joints(self) -> np.ndarray:
        """(N, 16, 2): the ground truth in 0-based image pixels, person-major."""
        return np.transpose(self.positions, (2, 0, 1)) - 1.0


def _name(entry: object) -> str:
    # loadmat gives a MATLAB cell of strings as an object array of 1-element string arrays.
    while isinstance(entry, np.ndarray):
        if entry.size != 1:
            return ""
        entry = entry.reshape(-1)[0]
    return str(entry).strip()


def load_ground_truth(gt_file: str | os.PathLike | PckhGroundTruth) -> PckhGroundTruth:
    """``gt_file`` read with scipy's ``loadmat`` and checked: an unreadable file, a missing key, a
    shape that does not match the others, a joint list without MPII's names are ValueErrors
    naming the file and the entry. A ``PckhGroundTruth`` is returned as it is."""
    if isinstance(gt_file, PckhGroundTruth):
        return gt_file
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(gt_file)
    try:
        mat = loadmat(os.fspath(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: cannot read the PCKh ground truth ({e.strerror or e})") from e
    except (MatReadError, ValueError, TypeError, OSError) as e:
        raise ValueError(f"{path}: not a MATLAB file of MPII's ground truth ({type(e).__name__}: {e})") from e
    keys = ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src")
    absent = [k for k in keys if k not in mat]
    if absent:
        raise ValueError(f"{path}: no {', '.join(absent)} (a gt_valid.mat holds {', '.join(keys)})")
    names = tuple(_name(e) for e in np.asarray(mat["dataset_joints"], dtype=object).reshape(-1))
    if len(names) != NUM_JOINTS or not {n for _, part in PARTS for n in part} <= set(names):
        raise ValueError(f"{path}: dataset_joints must be MPII's 16 joint names ('rank', ..., 'head', ..., 'lwri'), "
                         f"got {list(names)[:20]}")
    try:
        missing, positions, headboxes = (np.asarray(mat[k], np.float64) for k in keys[1:])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: jnt_missing, pos_gt_src and headboxes_src must be numeric arrays ({e})") from e
    n = missing.shape[1] if missing.ndim == 2 else -1
    for key, value, shape in (("jnt_missing", missing, (NUM_JOINTS, n)), ("pos_gt_src", positions, (NUM_JOINTS, 2, n)),
                              ("headboxes_src", headboxes, (2, 2, n))):
        if value.shape != shape or n < 0:
            want = "x".join("N" if d == n else str(d) for d in shape) if n >= 0 else "16xN"
            raise ValueError(f"{path}: {key} has shape {'x'.join(map(str, value.shape))}, expected {want}")
    bad = np.flatnonzero(~np.isfinite(headboxes).all(axis=(0, 1)))
    if bad.size:
        raise ValueError(f"{path}: headboxes_src of person {bad[0]} is not finite")
    return PckhGroundTruth(str(path), names, missing, positions, headboxes)


def pckh(preds: np.ndarray, gt_file: str | os.PathLike | PckhGroundTruth,
         threshold: float = THRESHOLD) -> dict[str, float]:
    """HRNet's nine PCKh numbers (``PCKH_NAMES``, percentages) of ``preds`` (N, 16, 2: 0-based image
    pixels, one row per person of ``valid.json`` in its order; extra trailing columns such as a
    score are ignored) against ``gt_file`` (a ``gt_valid.mat`` or a loaded ``PckhGroundTruth``).
    ``threshold`` is the main one (0.5); 'Mean@0.1' is at HRNet's 0.11 (module docstring)."""
    gt = load_ground_truth(gt_file)
    preds = np.asarray(preds, np.float64)
    if preds.ndim != 3 or preds.shape[1] != NUM_JOINTS or preds.shape[2] < 2:
        raise ValueError(f"predictions must be (N, 16, 2) image pixels, got shape {preds.shape}")
    if len(preds) != len(gt):
        raise ValueError(f"{len(preds)} predicted persons, but {gt.path} holds {len(gt)}")
    pred = np.transpose(preds[:, :, :2] + 1.0, (1, 2, 0))  # (16, 2, N), 1-based as the ground truth
    visible = 1 - gt.missing
    error = np.linalg.norm(pred - gt.positions, axis=1)  # (16, N)
    head = np.linalg.norm(gt.headboxes[1] - gt.headboxes[0], axis=0) * SC_BIAS  # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = error / (head * np.ones((len(error), 1))) * visible
        count = visible.sum(axis=1)  # (16,) visible persons per joint

        def per_joint(t: float) -> np.ndarray:
            return 100.0 * np.sum((scaled <= t) * visible, axis=1) / count

        main, low = per_joint(threshold), per_joint(LOW_THRESHOLD)
    counted = count > 0
    counted[list(LEFT_OUT)] = False
    ratio = np.where(counted, count, 0.0) / np.sum(np.where(counted, count, 0.0))
    index = {n: gt.joint_names.index(n) for _, part in PARTS for n in part}
    out = {part: float(np.mean([main[index[n]] for n in names])) for part, names in PARTS}
    out["Mean"] = float(np.sum(np.where(counted, main * ratio, 0.0)))
    out["Mean@0.1"] = float(np.sum(np.where(counted, low * ratio, 0.0)))
    return out


def write_predictions(path: str | os.PathLike, preds: np.ndarray) -> Path:
    """HRNet's ``pred.mat``: ``{'preds': preds[..., :2] + 1}`` (N, 16, 2, 1-based pixels), the file
    MPII's own MATLAB evaluation reads. Written to ``PATH.partial`` and renamed."""
    from scipy.io import savemat

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        savemat(f, {"preds": np.asarray(preds, np.float64)[:, :, :2] + 1.0})
    os.replace(partial, path)
    return path
