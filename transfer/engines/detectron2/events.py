"""detectron2's training events -> the run dir's metrics.jsonl, in the torchvision engine's
line shape ({"iter", "total_loss", "loss_*", "lr", "time", ...}), so one reader serves both
engines. detectron2's own JSONWriter would write metrics.json, which in a run dir holds
the final results only (contract 4)."""

from __future__ import annotations

from pathlib import Path

from detectron2.utils.events import EventWriter, get_event_storage

from mocobench.progress import JsonlLog

PERIOD = 20  # detectron2's writer period, as in DefaultTrainer.build_hooks


class JsonlEventWriter(EventWriter):
    """One line per logged iteration with the (median-smoothed, as detectron2 logs them)
    scalars; appends, after dropping lines past ``resumed_at`` left by a killed run."""

    def __init__(self, path: Path, resumed_at: int, enabled: bool = True) -> None:
        self.log = JsonlLog(path, enabled=enabled)
        self.log.truncate_after("iter", resumed_at - 1)
        self.last = resumed_at - 1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: dict[int, dict] = {}
        for name, (value, it) in storage.latest_with_smoothing_hint(PERIOD).items():
            if it > self.last:
                by_iter.setdefault(it, {})[name] = value
        for it in sorted(by_iter):
            self.log.write(iter=it, **by_iter[it])
            self.last = it
