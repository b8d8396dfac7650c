"""Tiny images and a tiny pretraining config for the pretrain-stage tests (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = """\
_BASE_: {base}
MODEL: {{STEM_OUT_CHANNELS: 8, RES2_OUT_CHANNELS: 16, WIDTH_PER_GROUP: 4}}
MOCO: {{DIM: 16, K: 16, SPLIT_BN_GROUPS: 2}}
INPUT: {{CROP_SIZE: 32, RESIZE_SIZE: 36}}
DATA: {{NUM_WORKERS: 0}}
SOLVER: {{EPOCHS: 4, BATCH_SIZE: 8}}
TRAIN: {{LOG_PERIOD: 1}}
CHECKPOINT: {{PERIOD_EPOCHS: 2, PERIOD_ITERS: 1}}
KNN: {{K: [3]}}
"""


def write_images(folder: Path, count: int, seed: int, size: int = 40) -> list[Path]:
    """Random blocky colour images (JPEG) that survive crops and colour jitter."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((size, size), Image.NEAREST)
        paths.append(folder / f"{i:03d}.jpg")
        image.save(paths[-1])
    return paths


def write_labelled(root: Path, classes: int = 2, train: int = 8, val: int = 4) -> Path:
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            write_images(root / split / f"class{c}", n, seed=100 * c + (split == "val"))
    return root


def write_tiny_config(path: Path, base: str = "moco_v2_demo.yaml") -> Path:
    path.write_text(TINY_CONFIG.format(base=ROOT / "configs" / "pretrain" / base))
    return path
