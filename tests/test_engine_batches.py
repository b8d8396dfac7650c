"""Training batches of the torchvision engine: DATALOADER.ASPECT_RATIO_GROUPING groups each
rank's batches by orientation, and a batch stays a pure function of (seed, iteration, rank)."""

from __future__ import annotations

from engine_fixtures import DEMO, TINY
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.torchvision.input import TrainBatches, TrainMapper

# 1 in 3 records is tall, so ungrouped batches of 4 mix orientations
RECORDS = [{"width": 60 if i % 3 else 40, "height": 50} for i in range(30)]


def batches(group: bool, rank: int = 0, world: int = 1) -> TrainBatches:
    mapper = TrainMapper(load_detection_config(DEMO / "demo_voc_C4.yaml", TINY), mask_on=False)
    return TrainBatches(RECORDS, mapper, seed=3, global_batch=4 * world, rank=rank, world=world,
                        length=100, group_by_aspect=group)


def wide(b: TrainBatches, it: int) -> set[bool]:
    return {RECORDS[b.record_index(p)]["width"] > 50 for p in b.positions(it)}


def test_grouped_batches_share_an_orientation():
    plain, grouped = batches(False), batches(True)
    assert any(len(wide(plain, it)) == 2 for it in range(20))
    assert all(len(wide(grouped, it)) == 1 for it in range(40))
    assert {w for it in range(40) for w in wide(grouped, it)} == {True, False}


def test_grouped_batches_take_the_ranks_stream_in_order():
    """Every position of the rank's stream is used once, none skipped beyond what the
    buckets still hold, and item it does not depend on which items were asked for before."""
    grouped = batches(True, rank=1, world=2)
    used = sorted(p for it in range(20) for p in grouped.positions(it))
    stream = [grouped.stream_position(k) for k in range(len(used) + 8)]
    assert len(used) == len(set(used)) and set(used) <= set(stream)
    assert len(set(stream[: len(used)]) - set(used)) < 8  # at most two partly filled buckets
    fresh = batches(True, rank=1, world=2)
    assert fresh.positions(17) == grouped.positions(17)


def test_ungrouped_ranks_split_each_global_batch():
    a, b = batches(False, rank=0, world=2), batches(False, rank=1, world=2)
    assert a.positions(5) == [40, 41, 42, 43] and b.positions(5) == [44, 45, 46, 47]
