"""detectron2's training events -> the run dir's metrics.jsonl, in the torchvision engine's
line shape ({"iter", "total_loss", "loss_*", "lr", "time", ...}), so one reader serves both
engines. detectron2's own JSONWriter would write metrics.json, which in a run dir holds
the final results only (docs/DESIGN.md, "Run folder")."""

from __future__ import annotations

from pathlib import Path

from detectron2.utils.events import EventWriter, get_event_storage

from mocobench.progress import JsonlLog

PERIOD = 20  # detectron2's writer period, as in DefaultTrainer.build_hooks


class JsonlEventWriter(EventWriter):
    """One line per logged iteration with the (median-smoothed, as detectron2 logs them)
    scalars, appended; ``begin`` drops the lines a killed run left past its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.log = JsonlLog(path)
        self.last = -1

    def begin(self, start_iter: int) -> None:
        self.log.truncate_after("iter", start_iter - 1)
        self.last = start_iter - 1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: dict[int, dict] = {}
        for name, (value, it) in storage.latest_with_smoothing_hint(PERIOD).items():
            if it > self.last:
                by_iter.setdefault(it, {})[name] = value
        for it in sorted(by_iter):
            self.log.write(iter=it, **by_iter[it])
            self.last = it
