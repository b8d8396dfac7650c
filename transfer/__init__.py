"""Transfer stage: convert backbones to detectron2 weights, read VOC/COCO, evaluate,
and run Faster/Mask R-CNN jobs on an engine (torchvision embedded, detectron2 reference)."""
