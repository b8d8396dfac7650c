"""Data path versus training step at the demo's scale: the loader must not be the bottleneck.

Timed interleaved, each over the same number of batches of the demo config
(configs/pretrain/moco_v2_demo.yaml: two 64-pixel aug+ crops, batch 64):
  loader      one epoch of pretrain's own DataLoader (pretrain.data.make_loader, the
              config's DATA.NUM_WORKERS, fresh workers each epoch as the training loop has)
  step        the same number of MoCo training steps (pretrain.train.train_step)
  decode_pil  / decode_tv: JPEG decoding alone, PIL (what the dataset uses) versus
              torchvision.io.decode_jpeg, over the same files
Printed: loader images/s over step images/s (must be > 1), and PIL/torchvision decode time.

Images: --data DIR (e.g. a synthetic demo's unlabeled/), else the tiny synthetic set's
unlabeled/ images (the demo's 64-pixel scenes) written to a temporary folder, repeated.

Run from the checkout root: python -m benchmarks.bench_data [--quick] [--data DIR]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torchvision.io import decode_jpeg, read_file

from benchmarks import timing
from benchmarks.bench_pretrain import scale_config
from mocobench.pretrain.augment import moco_transform
from mocobench.pretrain.config import resnet_shape
from mocobench.pretrain.data import ImageDataset, ResumableSampler, list_images, make_loader, read_rgb
from mocobench.pretrain.moco import build_moco
from mocobench.pretrain.train import make_optimizer, train_step
from mocobench.transfer.datasets.synth import write_synthetic


def measure(image_dir: Path, batches: int, repeats: int, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Time the loader epoch, the steps and the decoders interleaved; print and return ratios."""
    cfg = scale_config("demo", overrides)
    n = cfg.SOLVER.BATCH_SIZE
    files = list_images(image_dir)
    samples = (files * (batches * n // len(files) + 1))[: batches * n]
    dataset = ImageDataset(samples, moco_transform(cfg), seed=0)
    sampler = ResumableSampler(dataset, shuffle=True, seed=0)
    loader = make_loader(dataset, n, sampler, cfg.DATA.NUM_WORKERS, drop_last=True)

    torch.manual_seed(0)
    moco = build_moco(cfg, resnet_shape(cfg)).train()
    optimizer, scaler = make_optimizer(cfg, moco), torch.amp.GradScaler("cpu", enabled=False)
    im_q, im_k = (torch.randn(n, 3, cfg.INPUT.CROP_SIZE, cfg.INPUT.CROP_SIZE) for _ in range(2))
    paths = [p for p, _ in files]

    def epoch() -> None:
        for _ in loader:
            pass

    def steps() -> None:
        for _ in range(batches):
            train_step(moco, optimizer, scaler, im_q, im_k, False)

    medians = timing.interleaved_medians({
        "loader": epoch, "step": steps,
        "decode_pil": lambda: [read_rgb(p) for p in paths],
        "decode_tv": lambda: [decode_jpeg(read_file(p)) for p in paths]}, repeats)
    print(f"{batches} batches of {n} two-crop samples, {cfg.DATA.NUM_WORKERS} loader workers, "
          f"{repeats} interleaved repeats", flush=True)
    timing.report_times(medians)
    headroom = timing.report_ratio("loader images/s / training step images/s", medians["step"], medians["loader"],
                                   "> 1", medians["step"] > medians["loader"])
    decode = timing.report_ratio("JPEG decode PIL / torchvision.io", medians["decode_pil"], medians["decode_tv"])
    return {"loader_over_step": headroom, "pil_over_tv_decode": decode}


def main(argv: list[str] | None = None) -> int:
    p = timing.parser(__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="image folder (default: tiny synthetic images)")
    p.add_argument("opts", nargs="*", default=[], help="KEY VALUE overrides of the demo config (e.g. DATA.NUM_WORKERS 2)")
    args = p.parse_args(argv)
    repeats = timing.setup(args)
    batches = 4 if args.quick else 12
    if args.data:
        measure(args.data, batches, repeats, tuple(args.opts))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, seed=0, scale="tiny")
        measure(Path(tmp) / "unlabeled", batches, repeats, tuple(args.opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
