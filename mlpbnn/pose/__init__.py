"""Top-down COCO keypoints in the HRNet protocol: skeleton constants, crop geometry, the heatmap
codec and flip test, rescoring and OKS-NMS, the COCOeval wrapper, and sample drawings.

``evaluate`` is re-exported here; note that this makes the attribute ``mlpbnn.pose.evaluate`` the
function, so import the module's other names with ``from mlpbnn.pose.evaluate import ...``.
"""

from mlpbnn.pose.evaluate import evaluate

__all__ = ["evaluate"]
