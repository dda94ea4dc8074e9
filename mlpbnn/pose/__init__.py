"""Top-down keypoints in the HRNet protocol: skeleton constants (COCO's 17 joints, MPII's 16),
crop geometry, the heatmap codec and flip test, rescoring and OKS-NMS, the COCOeval wrapper,
MPII's PCKh, and sample drawings.

``evaluate`` (COCO keypoint AP) and ``pckh`` (MPII PCKh) are re-exported here; note that this
makes the attributes ``mlpbnn.pose.evaluate`` and ``mlpbnn.pose.pckh`` the functions, so import
the modules' other names with ``from mlpbnn.pose.evaluate import ...`` / ``from mlpbnn.pose.pckh
import ...``.
"""

from mlpbnn.pose.evaluate import evaluate
from mlpbnn.pose.pckh import pckh

__all__ = ["evaluate", "pckh"]
