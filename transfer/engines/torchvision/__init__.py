"""The embedded detection engine: Faster / Mask / keypoint R-CNN composed from torchvision's
detection blocks, with the pieces where torchvision hard-codes something detectron2 does differently
replaced (docs/DESIGN.md, "The two detection engines"), configured by detectron2's YAML keys.

Entry points: ``build.build_model(cfg)`` and ``train.run_job(...)`` (used by transfer/cli.py).
"""
