"""Detection training iteration: the torchvision engine's R50-FPN Mask R-CNN versus stock torchvision.

Candidates on the same images and targets (random boxes and masks), each one training
iteration (forward, backward, SGD step), timed interleaved:
  ours_bn    the engine's model (transfer.engines.torchvision.build.build_model) from
             configs/detection/coco_R_50_FPN_1x_rgb.yaml with stock torchvision's norms
             (BN in the ResNet, none in FPN and heads): the like-for-like comparison
  ours       the same config as the paper runs it (SyncBN everywhere; plain BN in one process)
  stock      torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
             weights_backbone=None), its resizing made an identity for these image sizes
  d2         detectron2's build_model on the same config, when detectron2 is importable
Printed: stock/ours_bn (iteration-speed ratio, target >= 0.95), stock/ours, d2/ours.
On a GPU, also with AMP and channels_last, images/s and the matmul-throughput fraction.

Run from the checkout root: python -m benchmarks.bench_detect [--quick]
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchmarks import timing
from mocobench.resources import config_path
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.torchvision.build import build_model

CONFIG = config_path("detection/coco_R_50_FPN_1x_rgb.yaml")
STOCK_NORMS = ("MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "",
               "MODEL.ROI_MASK_HEAD.NORM", "")
SPEED_TARGET = 0.95


def synthetic_batch(n_images: int, size: int, n_classes: int, seed: int = 0) -> tuple[list, list]:
    """Images (CHW, 0-255) of size x 4/3 size and targets in torchvision's format."""
    g = torch.Generator().manual_seed(seed)
    h, w = size, size * 4 // 3
    images, targets = [], []
    for _ in range(n_images):
        images.append(torch.rand(3, h, w, generator=g) * 255)
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(5, h, w, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, n_classes + 1, (5,), generator=g), "masks": masks})
    return images, targets


def size_overrides(size: int) -> tuple[str, ...]:
    """Config overrides under which ``synthetic_batch`` images of ``size`` are not resized."""
    return ("INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(2 * size))


def _trainer(model: torch.nn.Module, forward: Callable[[], dict]) -> Callable[[], None]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step() -> None:
        loss = sum(forward().values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def engine_step(config: Path, overrides: tuple[str, ...], images: list, targets: list, device: torch.device,
                memory_format: torch.memory_format = torch.contiguous_format) -> Callable[[], None]:
    """One training iteration of the engine's model for ``config`` on these images and targets."""
    torch.manual_seed(0)
    model = build_model(load_detection_config(config, overrides)).to(device, memory_format=memory_format).train()
    return _trainer(model, lambda: model(images, targets))


def with_autocast(fn: Callable[[], None], device: torch.device, amp: bool) -> Callable[[], None]:
    """``fn`` under autocast (the engine's AMP: float16 on CUDA) when ``amp``."""
    def run() -> None:
        with torch.autocast(device.type, enabled=amp):
            fn()
    return run


def detectron2_step(cfg_overrides: tuple[str, ...], images: list, targets: list, device: torch.device,
                    config: Path = CONFIG) -> Callable[[], None] | None:
    """detectron2's own model for the same config file, or None when it is not installed."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    # the suite's detectron2 side: its config keys and registered parts (Res5ROIHeadsExtraNorm, reduced DC5)
    from mocobench.transfer.engines.detectron2.config import load_d2_config
    from mocobench.transfer.engines.detectron2.trainer import Trainer

    cfg = load_d2_config(str(config), list(cfg_overrides) + ["MODEL.DEVICE", device.type])
    model = Trainer.build_model(cfg).train()
    inputs = [{"image": im, "instances": Instances(tuple(im.shape[-2:]), gt_boxes=Boxes(t["boxes"]),
                                                   gt_classes=t["labels"] - 1, gt_masks=BitMasks(t["masks"].bool()))}
              for im, t in zip(images, targets)]
    storage = EventStorage(0)  # detectron2's losses log into the current event storage

    def losses() -> dict:
        with storage:
            return model(inputs)

    return _trainer(model, losses)


def measure(size: int, n_images: int, repeats: int, device: torch.device, amp: bool = False,
            label: str = "CPU") -> dict[str, float]:
    """Build the candidates, time them interleaved; print and return the ratios."""
    overrides = size_overrides(size)
    cfg = load_detection_config(CONFIG, overrides)
    n_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    images, targets = synthetic_batch(n_images, size, n_classes)
    images, targets = [im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets]
    fmt = torch.channels_last if amp else torch.contiguous_format
    candidates = {}
    for name, extra in (("ours_bn", STOCK_NORMS), ("ours", ())):
        candidates[name] = engine_step(CONFIG, overrides + extra, images, targets, device, fmt)
    torch.manual_seed(0)
    stock = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=n_classes + 1, min_size=size,
                                  max_size=2 * size, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    stock = stock.to(device, memory_format=fmt).train()
    unit_images = [im / 255 for im in images]
    candidates["stock"] = _trainer(stock, lambda: stock(unit_images, targets))
    d2 = detectron2_step(overrides, images, targets, device)
    if d2 is not None:
        candidates["d2"] = d2
    else:
        print("# detectron2 is not importable here: the detectron2 comparison is skipped", flush=True)

    medians = timing.interleaved_medians({k: with_autocast(v, device, amp) for k, v in candidates.items()}, repeats)
    print(f"{label}: {n_images} images of {size}x{size * 4 // 3}, {n_classes} classes, {repeats} interleaved repeats",
          flush=True)
    timing.report_times(medians)
    ratios = {"stock_over_ours_bn": timing.report_ratio(
        f"{label} speed ours/stock (stock time / ours_bn time)", medians["stock"], medians["ours_bn"],
        f">= {SPEED_TARGET}", medians["stock"] / medians["ours_bn"] >= SPEED_TARGET)}
    ratios["stock_over_ours"] = timing.report_ratio(f"{label} stock time / ours (paper norms) time",
                                                    medians["stock"], medians["ours"])
    if "d2" in medians:
        ratios["d2_over_ours"] = timing.report_ratio(f"{label} detectron2 time / ours time", medians["d2"], medians["ours"])
    if device.type == "cuda":
        print(f"  {label}: {n_images / medians['ours_bn']:.1f} images/s (ours_bn)")
        flops = timing.count_flops(candidates["ours_bn"])
        timing.report_ratio(f"{label} step FLOP/s over measured fp16 matmul FLOP/s", flops / medians["ours_bn"],
                            timing.matmul_flops_per_s(device, torch.float16))
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = timing.parser(__doc__.splitlines()[0]).parse_args(argv)
    repeats = timing.setup(args)
    size = 256 if args.quick else 480
    measure(size, 2, repeats, torch.device("cpu"))
    if torch.cuda.is_available():
        measure(800, 2, 4 * repeats, torch.device("cuda"), amp=True, label="GPU AMP channels_last")
    else:
        print("# no GPU: the AMP/channels_last and matmul-fraction measurements are skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
