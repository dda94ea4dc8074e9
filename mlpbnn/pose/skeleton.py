"""The 17 COCO person keypoints: names, left/right pairs, OKS sigmas, limbs, joint weights; and
the 16 MPII joints (``MPII``), each set also as one ``Skeleton`` (what crops, targets, the flip
test and drawings need to know about a dataset's joints).

Sources: the COCO annotation files' ``categories[0]`` (names, 1-based skeleton), pycocotools
``cocoeval.py:setKpParams`` (``kpt_oks_sigmas``), HRNet ``lib/dataset/coco.py`` (flip pairs, upper
body ids, joint weights), mmpose ``configs/_base_/datasets/coco.py`` (``flip_indices``); for MPII
HRNet ``lib/dataset/mpii.py`` (flip pairs, ``parent_ids``, upper/lower body ids; no joint weights,
``JointsDataset``'s scalar 1) and the joint order of MPII's ``gt_valid.mat`` (``dataset_joints``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# (left, right), 0-based; the nose maps onto itself.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def flip_index(pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS, num_keypoints: int = NUM_KEYPOINTS) -> np.ndarray:
    """The channel permutation of a horizontal flip: joint k of the mirrored image is joint index[k]."""
    index = np.arange(num_keypoints)
    for a, b in pairs:
        index[a], index[b] = b, a
    return index


FLIP_INDEX: np.ndarray = flip_index()  # mmpose flip_indices [0, 2, 1, 4, 3, ...]

# pycocotools' kpt_oks_sigmas (the published values divided by 10, as cocoeval does).
OKS_SIGMAS: np.ndarray = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
    / 10.0
)

# COCO's person skeleton ([[16, 14], [14, 12], ...] in the annotation files) made 0-based.
SKELETON: tuple[tuple[int, int], ...] = tuple(
    (a - 1, b - 1)
    for a, b in (
        (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
        (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
    )
)  # fmt: skip

# Head, shoulders, elbows, wrists (HRNet's half-body split; the rest is the lower body).
UPPER_BODY_IDS: tuple[int, ...] = tuple(range(11))
LOWER_BODY_IDS: tuple[int, ...] = tuple(range(11, NUM_KEYPOINTS))

# HRNet's per-joint loss weights (elbows/knees 1.2, wrists/ankles 1.5); off by default there
# (LOSS.USE_DIFFERENT_JOINTS_WEIGHT false).
JOINT_WEIGHTS: np.ndarray = np.array(
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5], dtype=np.float32
)


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """A dataset's joints: ``names`` (K), left/right ``flip_pairs`` (0-based), ``upper_body_ids``
    (HRNet's half-body split; the rest is the lower body), ``limbs`` (drawn) and per-joint loss
    ``joint_weights`` (HRNet's USE_DIFFERENT_JOINTS_WEIGHT). Hashable and picklable (tuples)."""

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    limbs: tuple[tuple[int, int], ...]
    joint_weights: tuple[float, ...]

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def flip_index(self) -> np.ndarray:
        return flip_index(self.flip_pairs, self.num_joints)


COCO = Skeleton("coco", KEYPOINT_NAMES, FLIP_PAIRS, UPPER_BODY_IDS, SKELETON,
                tuple(float(w) for w in JOINT_WEIGHTS))

# MPII's 16 joints in the order of HRNet's annotations and of gt_valid.mat's dataset_joints
# ('rank', 'rkne', 'rhip', 'lhip', 'lkne', 'lank', 'pelv', 'thor', 'neck', 'head', 'rwri', ...).
MPII_KEYPOINT_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist",
)  # fmt: skip
MPII_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
MPII_UPPER_BODY_IDS: tuple[int, ...] = (7, 8, 9, 10, 11, 12, 13, 14, 15)
# HRNet's parent_ids [1, 2, 6, 6, 3, 4, 6, 6, 7, 8, 11, 12, 7, 7, 13, 14] as limbs (the pelvis is the root).
_MPII_PARENTS = (1, 2, 6, 6, 3, 4, 6, 6, 7, 8, 11, 12, 7, 7, 13, 14)
MPII = Skeleton("mpii", MPII_KEYPOINT_NAMES, MPII_FLIP_PAIRS, MPII_UPPER_BODY_IDS,
                tuple((k, p) for k, p in enumerate(_MPII_PARENTS) if k != p), (1.0,) * len(MPII_KEYPOINT_NAMES))
