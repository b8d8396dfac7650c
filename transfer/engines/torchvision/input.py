"""Images and annotations -> model inputs, as detectron2's DatasetMapper prepares them.

Resize (shortest edge from INPUT.MIN_SIZE_TRAIN by 'choice' or 'range', capped by the max
size), flip, channels in INPUT.FORMAT order, 0-255 floats (the model normalises); instance
masks kept as INPUT.MASK_FORMAT says (masks.py), keypoints moved with the image and swapped
left <-> right by a horizontal flip (keypoints.py). Training
batches are a pure function of (seed, iteration, rank): every random draw comes from a
generator seeded by the sample's position in an endless stream of seeded permutations, so a
resumed run sees exactly the batches an uninterrupted one would, whatever the workers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from fvcore.common.config import CfgNode
from PIL import Image
from pycocotools import mask as mask_util

from mocobench import UserError
from mocobench.transfer.engines.torchvision.keypoints import transform_keypoints
from mocobench.transfer.engines.torchvision.masks import MASK_FORMATS, Polygons, rasterize

FLIPS = ("horizontal", "vertical", "none")


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def read_image(path: str, fmt: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read image: {e}") from None
    return rgb[:, :, ::-1] if fmt == "BGR" else rgb


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def scaled_polygons(segmentation: list, sx: float, sy: float) -> list[np.ndarray]:
    """An instance's polygons (fewer than 3 points dropped) with x scaled by ``sx``, y by ``sy``."""
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) * [sx, sy] for p in segmentation if len(p) >= 6]
    return [p.ravel() for p in polys]


def flip_polygons(polygons: Polygons, flip: str, size: tuple[int, int]) -> Polygons:
    h, w = size
    return polygons.flipped(0, w) if flip == "horizontal" else polygons.flipped(1, h) if flip == "vertical" else polygons


def rle_bitmask(rle: dict, h0: int, w0: int, size: tuple[int, int], flip: str) -> np.ndarray:
    """An RLE (compressed, or uncompressed counts) decoded at h0 x w0, resized nearest to ``size``, flipped."""
    if isinstance(rle.get("counts"), list):
        rle = mask_util.frPyObjects(rle, h0, w0)
    mask = np.asarray(Image.fromarray(mask_util.decode(rle)).resize((size[1], size[0]), Image.NEAREST))
    return mask[:, ::-1] if flip == "horizontal" else mask[::-1] if flip == "vertical" else mask


def instance_bitmask(segmentation: list | dict, h0: int, w0: int, size: tuple[int, int], flip: str) -> np.ndarray:
    """Polygons scaled, flipped, then rasterised at ``size``; or an RLE resized and flipped."""
    if isinstance(segmentation, dict):
        return rle_bitmask(segmentation, h0, w0, size, flip)
    polygons = flip_polygons(Polygons([scaled_polygons(segmentation, size[1] / w0, size[0] / h0)]), flip, size)
    return rasterize(polygons.instances[0], *size)


def first_rle(annotations: list[dict]) -> dict | None:
    """The first non-crowd instance whose segmentation is an RLE, if any."""
    return next((a for a in annotations if not a.get("iscrowd", 0) and isinstance(a.get("segmentation"), dict)), None)


def nonempty(masks: Polygons | list[np.ndarray]) -> np.ndarray:
    """As detectron2's filter_empty_instances: an instance needs a polygon, or a pixel."""
    flags = [len(p) > 0 for p in masks.instances] if isinstance(masks, Polygons) else [m.any() for m in masks]
    return np.asarray(flags, dtype=bool).reshape(-1)


def stack(masks: list[np.ndarray], keep: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    kept = [m for m, k in zip(masks, keep) if k]
    return torch.from_numpy(np.ascontiguousarray(np.stack(kept) if kept else np.zeros((0, *size), np.uint8)))


class TrainMapper:
    """``keypoint_flip_indices``: under MODEL.KEYPOINT_ON, the training datasets' left/right swap
    (keypoints.dataset_flip_indices), which a horizontal flip needs."""

    def __init__(self, cfg: CfgNode, mask_on: bool, keypoint_flip_indices: list[int] | None = None) -> None:
        i = cfg.INPUT
        if i.MIN_SIZE_TRAIN_SAMPLING not in ("choice", "range"):
            raise UserError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING {i.MIN_SIZE_TRAIN_SAMPLING!r}: use choice or range")
        if i.RANDOM_FLIP not in FLIPS:
            raise UserError(f"INPUT.RANDOM_FLIP {i.RANDOM_FLIP!r}: use one of {', '.join(FLIPS)}")
        if i.FORMAT not in ("RGB", "BGR"):
            raise UserError(f"INPUT.FORMAT {i.FORMAT!r}: the torchvision engine reads RGB or BGR")
        if i.MASK_FORMAT not in MASK_FORMATS:
            raise UserError(f"INPUT.MASK_FORMAT {i.MASK_FORMAT!r}: use one of {', '.join(MASK_FORMATS)}")
        self.sizes = list(i.MIN_SIZE_TRAIN)
        self.sampling, self.max_size, self.flip, self.fmt = i.MIN_SIZE_TRAIN_SAMPLING, i.MAX_SIZE_TRAIN, i.RANDOM_FLIP, i.FORMAT
        self.mask_on, self.polygons = mask_on, i.MASK_FORMAT == "polygon"
        self.keypoint_on, self.flip_indices = cfg.MODEL.KEYPOINT_ON, keypoint_flip_indices
        self.num_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        if self.keypoint_on and self.flip == "horizontal" and keypoint_flip_indices is None:
            raise UserError("MODEL.KEYPOINT_ON with INPUT.RANDOM_FLIP horizontal: the keypoints' flip map "
                            "(keypoint_flip_map of DATASETS.TRAIN) is needed")

    def check(self, records: list[dict]) -> None:
        """Under MASK_FORMAT polygon, refuse an RLE instance (as detectron2 does) before any training."""
        if self.mask_on and self.polygons:
            for r in records:
                if first_rle(r.get("annotations", [])) is not None:
                    raise UserError(f"{r['file_name']}: an instance's segmentation is an RLE, which "
                                    "INPUT.MASK_FORMAT polygon cannot hold; set INPUT.MASK_FORMAT bitmask")

    def masks(self, annos: list[dict], h0: int, w0: int, size: tuple[int, int], flip: str) -> Polygons | list[np.ndarray]:
        """The instances in the output image: polygons scaled and flipped (MASK_FORMAT polygon), or
        at its size, polygons scaled, flipped and rasterised, RLEs resized and flipped (bitmask)."""
        sx, sy = size[1] / w0, size[0] / h0
        if self.polygons:
            return flip_polygons(Polygons([scaled_polygons(a["segmentation"], sx, sy) for a in annos]), flip, size)
        return [instance_bitmask(a["segmentation"], h0, w0, size, flip) for a in annos]

    def __call__(self, record: dict, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_image(record["file_name"], self.fmt)
        h0, w0 = image.shape[:2]
        short = (int(rng.choice(self.sizes)) if self.sampling == "choice"
                 else int(rng.integers(self.sizes[0], self.sizes[-1] + 1)))
        h, w = shortest_edge_size(h0, w0, short, self.max_size)
        sx, sy = w / w0, h / h0
        image = resize(image, (h, w))
        flip = self.flip if self.flip != "none" and rng.random() < 0.5 else "none"
        annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if self.mask_on:
            self.check([record])
        boxes = np.asarray([a["bbox"] for a in annos], np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        if flip == "horizontal":
            image = image[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        elif flip == "vertical":
            image = image[::-1]
            boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        # float64 arithmetic, float32 boxes: detectron2's transforms and its Boxes
        boxes = boxes.astype(np.float32)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        if self.mask_on:
            masks = self.masks(annos, h0, w0, (h, w), flip)
            keep &= nonempty(masks)
        target = {"boxes": torch.from_numpy(boxes[keep]),
                  # torchvision's sampling wants 1..K, 0 = background
                  "labels": torch.tensor([a["category_id"] + 1 for a, k in zip(annos, keep) if k], dtype=torch.int64)}
        if self.mask_on:
            target["masks"] = masks[keep] if isinstance(masks, Polygons) else stack(masks, keep, (h, w))
        if self.keypoint_on:  # float64 arithmetic, float32 keypoints: detectron2's transforms and Keypoints
            kps = [transform_keypoints(a["keypoints"], sx, sy, (h, w), flip, self.flip_indices)
                   for a, kept in zip(annos, keep) if kept]
            target["keypoints"] = torch.from_numpy(np.stack(kps).astype(np.float32) if kps else
                                                   np.zeros((0, self.num_keypoints, 3), np.float32))
        return to_tensor(image), target


def test_input(record: dict, cfg: CfgNode) -> torch.Tensor:
    image = read_image(record["file_name"], cfg.INPUT.FORMAT)
    h, w = shortest_edge_size(*image.shape[:2], cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return to_tensor(resize(image, (h, w)))


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class TrainBatches(torch.utils.data.Dataset):
    """Item ``it`` = this rank's share of global batch ``it`` (detectron2's TrainingSampler:
    one endless stream of seeded permutations, each rank taking its slice).

    ``group_by_aspect`` (DATALOADER.ASPECT_RATIO_GROUPING): as detectron2's
    AspectRatioGroupedDataset, the rank's stream fills two buckets (wider than tall, or not)
    and a batch is the next bucket to fill, so a batch pads less. The buckets are replayed
    from the stream's start, which keeps item ``it`` a pure function of (seed, it, rank).
    """

    def __init__(self, records: list[dict], mapper: TrainMapper, seed: int, global_batch: int,
                 rank: int, world: int, length: int, group_by_aspect: bool = False) -> None:
        if global_batch % world:
            raise UserError(f"SOLVER.IMS_PER_BATCH {global_batch} does not split over {world} processes")
        mapper.check(records)  # before training, not in a loader worker mid-run
        self.records, self.mapper, self.seed = records, mapper, seed
        self.per_rank, self.rank, self.world, self.length = global_batch // world, rank, world, length
        self.wide = [r["width"] > r["height"] for r in records] if group_by_aspect else None
        self.grouped: list[list[int]] = []  # positions of each batch replayed so far
        self.buckets: tuple[list[int], list[int]] = ([], [])
        self.streamed = 0  # positions of this rank's stream handed to the buckets

    def __len__(self) -> int:
        return self.length

    def record_index(self, pos: int) -> int:
        n = len(self.records)
        return _permutation(n, self.seed, pos // n)[pos % n]

    def stream_position(self, k: int) -> int:
        """The k-th position of this rank's stream: its slices of consecutive global batches."""
        batch, offset = divmod(k, self.per_rank)
        return (batch * self.world + self.rank) * self.per_rank + offset

    def positions(self, it: int) -> list[int]:
        if self.wide is None:
            first = self.stream_position(it * self.per_rank)
            return list(range(first, first + self.per_rank))
        while len(self.grouped) <= it:
            pos = self.stream_position(self.streamed)
            self.streamed += 1
            bucket = self.buckets[int(self.wide[self.record_index(pos)])]
            bucket.append(pos)
            if len(bucket) == self.per_rank:
                self.grouped.append(bucket[:])
                bucket.clear()
        return self.grouped[it]

    def __getitem__(self, it: int) -> list[tuple[torch.Tensor, dict]]:
        return [self.mapper(self.records[self.record_index(pos)], np.random.default_rng([self.seed, pos]))
                for pos in self.positions(it)]
