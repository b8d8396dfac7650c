"""Names and values that several stages must spell the same way, kept in one place."""

from __future__ import annotations

# A run or pretraining folder's pointer file: one line naming its newest checkpoint.
LAST_CHECKPOINT = "last_checkpoint"

# The MoCo repository's checkpoint layout: the query encoder's trunk under this prefix
# (a DDP-wrapped model's names, even when saved from one process).
MOCO_QUERY_PREFIX = "module.encoder_q."
DDP_PREFIX = "module."

# The two input conventions ResNet weights come in (detectron2's INPUT.FORMAT, PIXEL_MEAN/STD,
# RESNETS.STRIDE_IN_1X1): torchvision-trained weights and MSRA / Caffe2-trained weights.
INPUT_FORMATS = ("RGB", "BGR")
RGB_IMAGENET = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
                "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False}
BGR_CAFFE = {"input_format": "BGR", "pixel_mean": [103.530, 116.280, 123.675],
             "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": True}
