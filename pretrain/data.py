"""Image folders for the pretrain stage, read with errors that name the file.

Pretraining reads an ImageFolder tree (``class/*.jpg``, the ImageNet layout; labels are
ignored) or a flat folder of images. The kNN monitor, linear probe and supervised trainer
read a labelled root with ``train/`` and ``val/`` ImageFolders.

Augmentation is seeded per sample from (seed, epoch, index), not drawn from a process's
running RNG: the views of an image are then the same whatever the number of loader
workers, and a run resumed mid-epoch sees exactly the views the uninterrupted run saw.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mocobench import UserError, one_line
from mocobench import dist as mdist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[str, int]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_images(root: str | Path) -> list[Sample]:
    """(path, label) of a flat folder (label 0) or an ImageFolder tree (label = class index)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found")
    flat = _images_in(root)
    if flat:
        return [(str(p), 0) for p in flat]
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    samples = [(str(p), i) for i, d in enumerate(classes) for p in _images_in(d)]
    if not samples:
        raise UserError(f"{root}: no images (looked for {', '.join(IMAGE_EXTENSIONS)} "
                        "in the folder and in its class subfolders)")
    return samples


def labelled_split(root: str | Path, split: str) -> tuple[list[Sample], list[str]]:
    """An ImageFolder split ``root/split/<class>/*``: its samples and class names."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"{folder}: labelled split not found (expected {root}/{split}/<class>/*.jpg)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{folder}: no class subfolders")
    return list_images(folder), classes


def labelled_splits(root: str | Path) -> tuple[list[Sample], list[Sample], list[str]]:
    """(train samples, val samples, class names) of a labelled root. Both splits must have the
    same class folders: a label is the class's index, so a class more or less in one split
    would shift every label after it and score a wrong top-1 without any error."""
    train, classes = labelled_split(root, "train")
    val, val_classes = labelled_split(root, "val")
    if val_classes != classes:
        extra, missing = sorted(set(val_classes) - set(classes)), sorted(set(classes) - set(val_classes))
        problems = ([f"extra {extra}"] if extra else []) + ([f"missing {missing}"] if missing else [])
        raise UserError(f"{Path(root) / 'val'}: class folders differ from {Path(root) / 'train'}: "
                        f"{', '.join(problems)}")
    return train, val, classes


def read_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: cannot read image ({e})") from None


class ImageDataset(Dataset):
    """(transformed image, label) with augmentation seeded by (seed, epoch, index); with
    ``indexed``, (transformed image, label, index): the memory bank keeps one entry per index."""

    def __init__(self, samples: list[Sample], transform: Callable, seed: int = 0, indexed: bool = False) -> None:
        self.samples, self.transform, self.seed, self.indexed = samples, transform, seed, indexed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = read_rgb(path)
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also queues a seeding of every lazy
            # accelerator backend, formatting a stack trace each time (a third of a demo view's cost)
            torch.default_generator.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                out = self.transform(image)
                return (out, label, index) if self.indexed else (out, label)
            finally:
                random.setstate(state)


class ResumableSampler(Sampler[int]):
    """DistributedSampler's order for an epoch (same on every run with the same seed),
    optionally starting ``skip`` samples in, where a resumed run picks up."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, drop_last: bool = True) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=mdist.world_size(), rank=mdist.rank(),
                                        shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, num_workers: int,
                drop_last: bool, pin_memory: bool = False) -> DataLoader:
    # Its own generator: creating a loader iterator draws a worker base seed, and from the
    # global RNG that draw would shift the shuffle-BN permutations of a run resumed mid-epoch
    # against the uninterrupted run (augmentation is seeded per sample, so no worker needs it).
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def user_errors_from_workers() -> Iterator[None]:
    """A UserError raised in a loader worker comes back with a traceback in its message;
    keep only the original one-line message so the CLI prints it as such."""
    try:
        yield
    except UserError as e:
        if one_line(e) != str(e):
            raise UserError(one_line(e)) from None
        raise
