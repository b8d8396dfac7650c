"""The one ResNet every stage uses: torchvision's ResNet, at any depth and width.

Pretraining encoders, the supervised init, the converter's shape checks and the
detection trunk all build their network here, so a checkpoint written by one stage has
exactly the parameter names and shapes another expects. Width follows detectron2's knobs
(MODEL.RESNETS.STEM_OUT_CHANNELS / RES2_OUT_CHANNELS / WIDTH_PER_GROUP / NUM_GROUPS), so
small-scale runs are the ResNet-50 layout at reduced width, never a separate toy model.
Parameter names stay torchvision's (conv1, bn1, layer1.0.conv1, ... fc); ``tv_to_d2``
and ``d2_to_tv`` map them to detectron2's (stem.conv1, stem.conv1.norm, res2.0.conv1 ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mocobench import UserError

D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.")  # a detectron2 block parameter: stage, index
BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

NormFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ResNetShape:
    """Depth and width of a ResNet, in detectron2's terms (defaults: the standard R50)."""

    depth: int = 50
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    num_groups: int = 1

    @property
    def block(self) -> type:
        return BasicBlock if self.depth in (18, 34) else Bottleneck

    def validate(self) -> None:
        if self.depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(BLOCKS_PER_STAGE)}")
        if self.block is BasicBlock:
            if self.res2_out_channels != self.num_groups * self.width_per_group or self.num_groups != 1:
                raise ValueError(
                    f"R{self.depth} (basic blocks) needs RES2_OUT_CHANNELS == WIDTH_PER_GROUP and "
                    f"NUM_GROUPS 1, got {self.res2_out_channels}, {self.width_per_group}, {self.num_groups}")
        elif self.res2_out_channels % 4:
            raise ValueError(f"RES2_OUT_CHANNELS must be divisible by 4, got {self.res2_out_channels}")

    @property
    def out_channels(self) -> int:
        """Channels of res5's output (the pooled feature size)."""
        return self.res2_out_channels * 8

    def as_dict(self) -> dict:
        return asdict(self)


class ConfigurableResNet(ResNet):
    """torchvision's ResNet with the stem and stage widths taken from a ResNetShape.

    Only ``__init__`` differs: stages are still made by torchvision's ``_make_layer`` from
    its BasicBlock/Bottleneck, and ``forward`` is torchvision's.
    """

    def __init__(self, shape: ResNetShape = ResNetShape(), num_classes: int = 1000,
                 norm_layer: Optional[NormFactory] = None, stride_in_1x1: bool = False,
                 res5_dilation: int = 1, residual_bn_gamma: float = 1.0) -> None:
        shape.validate()
        nn.Module.__init__(self)
        block = shape.block
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.shape = shape
        planes = shape.res2_out_channels // block.expansion
        self.groups = shape.num_groups
        # torchvision's Bottleneck width is int(planes * base_width / 64) * groups;
        # detectron2's is num_groups * width_per_group at res2, doubling per stage.
        self.base_width = shape.width_per_group * 64 / planes if block is Bottleneck else 64
        self.inplanes = shape.stem_out_channels
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        counts = BLOCKS_PER_STAGE[shape.depth]
        if res5_dilation not in (1, 2):
            raise ValueError(f"RES5_DILATION must be 1 or 2, got {res5_dilation}")
        self.layer1 = self._make_layer(block, planes, counts[0])
        self.layer2 = self._make_layer(block, planes * 2, counts[1], stride=2)
        self.layer3 = self._make_layer(block, planes * 4, counts[2], stride=2)
        self.layer4 = self._make_layer(block, planes * 8, counts[3], stride=2, dilate=res5_dilation == 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes * 8 * block.expansion, num_classes)
        if res5_dilation == 2:
            # detectron2 dilates every res5 block; torchvision leaves the first at dilation 1.
            first = self.layer4[0].conv2
            first.dilation, first.padding = (2, 2), (2, 2)
        if stride_in_1x1 and block is Bottleneck:
            # MSRA weights put the stage's stride on the 1x1 conv (detectron2 STRIDE_IN_1X1).
            for layer in (self.layer2, self.layer3, self.layer4):
                b = layer[0]
                b.conv1.stride, b.conv2.stride = b.conv2.stride, (1, 1)
        self._init_weights(residual_bn_gamma)

    def _init_weights(self, residual_bn_gamma: float) -> None:
        """torchvision's init; ``residual_bn_gamma`` is the start of each block's last BN
        scale (torchvision's zero_init_residual is 0): below 1, blocks start closer to
        identities, which damps the batch-statistics noise that small BN batches on small
        feature maps pile up through 16 bottlenecks (configs/pretrain/moco_v2_demo.yaml)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, residual_bn_gamma)
            elif isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, residual_bn_gamma)


def build_resnet(shape: ResNetShape = ResNetShape(), num_classes: int = 1000, **kwargs) -> ConfigurableResNet:
    return ConfigurableResNet(shape, num_classes=num_classes, **kwargs)


# ---- torchvision <-> detectron2 parameter names --------------------------------------

_TV_STAGE = re.compile(r"^layer([1-4])\.")
_D2_STAGE = re.compile(r"^res([2-5])\.")


def tv_to_d2(name: str) -> Optional[str]:
    """torchvision trunk name -> detectron2 backbone name; None for the classifier (fc)."""
    if name.startswith("fc."):
        return None
    m = _TV_STAGE.match(name)
    if m:
        name = f"res{int(m.group(1)) + 1}." + name[m.end():]
    else:
        name = "stem." + name
    name = re.sub(r"\bbn([1-3])\.", r"conv\1.norm.", name)
    name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return name


def d2_to_tv(name: str) -> Optional[str]:
    """detectron2 backbone name -> torchvision trunk name; None if it is not a trunk name."""
    if name.startswith("stem."):
        name = name[len("stem."):]
    else:
        m = _D2_STAGE.match(name)
        if not m:
            return None
        name = f"layer{int(m.group(1)) - 1}." + name[m.end():]
    name = name.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    name = re.sub(r"\bconv([1-3])\.norm\.", r"bn\1.", name)
    return name


def infer_shape(path: str | Path, model: Mapping[str, Any]) -> ResNetShape:
    """Depth and width from detectron2-named arrays (or tensors); blocks that are absent show up
    later as missing keys."""
    if "stem.conv1.weight" not in model or "res2.0.conv1.weight" not in model:
        raise UserError(f"{path}: not a ResNet: no stem.conv1.weight / res2.0.conv1.weight "
                        f"(layer1.0.conv1.weight in torchvision names)")
    bottleneck = "res2.0.conv3.weight" in model
    counts = [0, 0, 0, 0]
    for name in model:
        m = D2_BLOCK.match(name)
        if m:
            stage = int(m.group(1)) - 2
            counts[stage] = max(counts[stage], int(m.group(2)) + 1)
    depths = [d for d, c in BLOCKS_PER_STAGE.items() if (d not in (18, 34)) == bottleneck
              and all(have <= want for have, want in zip(counts, c))]
    if not depths:
        raise UserError(f"{path}: blocks per stage {tuple(counts)} fit no ResNet depth "
                        f"({', '.join(f'R{d} {c}' for d, c in BLOCKS_PER_STAGE.items())})")
    stem = model["stem.conv1.weight"].shape[0]
    conv1 = model["res2.0.conv1.weight"].shape
    if bottleneck:
        width, groups = conv1[0], conv1[0] // model["res2.0.conv2.weight"].shape[1]
        shape = ResNetShape(min(depths), stem, model["res2.0.conv3.weight"].shape[0], width // groups, groups)
    else:
        shape = ResNetShape(min(depths), stem, conv1[0], conv1[0], 1)
    try:
        shape.validate()
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return shape
