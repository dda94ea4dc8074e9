"""Top-down COCO keypoints in the HRNet protocol: skeleton constants, crop geometry, the heatmap
codec and flip test, rescoring and OKS-NMS, the COCOeval wrapper, and sample drawings."""
