"""The keypoint evaluation's settings, declared once: the ``eval`` config section of pose runs,
read by the ``keypoints`` task and by ``pose.upper_bound`` (HRNet's ``TEST`` values for COCO)."""

from __future__ import annotations

import dataclasses

DECODE_MODES = ("quarter", "dark")


@dataclasses.dataclass(frozen=True)
class PoseEvalConfig:
    """``eval`` of a pose config.

    Attributes:
      flip_test, shift_heatmap: HRNet's TEST.FLIP_TEST and SHIFT_HEATMAP (the mirrored crop's
        heatmaps flipped back, shifted by one pixel, averaged).
      decode: 'quarter' (HRNet's POST_PROCESS: argmax + a quarter pixel towards the higher
        neighbour) or 'dark' (Zhang et al., arXiv 1910.06278).
      blur_kernel: DARK's Gaussian modulation kernel (odd).
      in_vis_thre: rescoring's visibility threshold; oks_thre: OKS-NMS's threshold.
      samples: images drawn in ``workdir/eval_samples.png`` (0: none).
    """

    flip_test: bool = True
    shift_heatmap: bool = True
    decode: str = "quarter"
    blur_kernel: int = 11
    in_vis_thre: float = 0.2
    oks_thre: float = 0.9
    samples: int = 4

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode: must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel: must be an odd size >= 1, got {self.blur_kernel}")
        if not 0 <= self.in_vis_thre <= 1 or not 0 <= self.oks_thre <= 1:
            raise ValueError(f"in_vis_thre: in_vis_thre and oks_thre must be in [0, 1], got {self.in_vis_thre} "
                             f"and {self.oks_thre}")
        if self.samples < 0:
            raise ValueError(f"samples: must be >= 0, got {self.samples}")

    def describe(self) -> str:
        return (f"decode {self.decode}, flip test {'on' if self.flip_test else 'off'}"
                f"{', shift' if self.flip_test and self.shift_heatmap else ''}")
