"""``mocobench transfer --check-parity --config X [KEY VALUE ...]``: the torchvision engine
against detectron2 on the user's config (transfer/engines/parity.py), as a table; the exit
status says whether every component is within its tolerance."""

from __future__ import annotations

import argparse
from typing import Sequence

from mocobench.resources import find_config
from mocobench.transfer.config import detection_defaults, load_detection_config


def run_parity_check(args: argparse.Namespace) -> int:
    """0 when every component is within tolerance, 1 otherwise."""
    from mocobench.transfer.engines.detectron2 import require_detectron2
    from mocobench.transfer.engines.torchvision.supported import check_supported

    require_detectron2("--check-parity", alternative="")
    from mocobench.transfer.engines.parity import check_parity

    overrides = list(args.opts)
    if overrides[:1] == ["--"]:
        overrides = overrides[1:]
    config = str(find_config(args.config))
    cfg = load_detection_config(config, overrides)
    check_supported(cfg, detection_defaults(), args.config)
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":  # the FCN (transfer/engines/parity_semseg.py)
        from mocobench.transfer.engines.parity_semseg import check_semseg_parity

        return report(check_semseg_parity(config, overrides, seed=max(args.seed or 0, 0)))
    return report(check_parity(config, overrides, seed=max(args.seed or 0, 0)))


def report(rows: Sequence) -> int:
    """Prints the table of parity rows and a verdict; returns the exit status."""
    from mocobench.transfer.engines.parity import format_table

    print(format_table(rows), flush=True)
    failed = [r.component for r in rows if not r.ok]
    if failed:
        print(f"transfer --check-parity: {len(failed)} of {len(rows)} components above tolerance: "
              + "; ".join(failed), flush=True)
        return 1
    print(f"transfer --check-parity: all {len(rows)} components within tolerance", flush=True)
    return 0
