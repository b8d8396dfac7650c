"""Transfer stage: convert backbones to detectron2 weights, read VOC/COCO, evaluate,
and run detection, keypoint and segmentation jobs on an engine (torchvision embedded, detectron2 reference)."""
