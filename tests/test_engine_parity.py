"""The torchvision engine equals detectron2, component by component (transfer/engines/parity.py):
the same config, weights, images and targets, with deterministic sampling. Needs detectron2;
run with ``pytest -m detectron2`` in an environment that has it."""

from __future__ import annotations

import pytest

from engine_fixtures import D2, DEMO, HAVE_D2, ROOT, needs_d2, one_thread  # noqa: F401 (one_thread: autouse)

PAPER = ROOT / "configs" / "detection"
# small images and few proposals: every check runs in seconds on one CPU thread
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "160", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32"]
# the paper's configs at a reduced width (ResNet-50 layout) and class count
NARROW = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
          "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.ROI_HEADS.NUM_CLASSES", "5"]
# the mask configs with polygon ground truth (INPUT.MASK_FORMAT's default), FPN also with bitmasks
CONFIGS = {"C4": (DEMO / "demo_voc_C4.yaml", SMALL), "DC5": (DEMO / "demo_voc_DC5.yaml", SMALL),
           "C4-mask": (DEMO / "demo_coco_C4_mask.yaml", SMALL), "FPN-mask": (DEMO / "demo_coco_FPN_mask.yaml", SMALL),
           "FPN-mask-bitmask": (DEMO / "demo_coco_FPN_mask.yaml", SMALL + ["INPUT.MASK_FORMAT", "bitmask"]),
           "paper-VOC-C4": (PAPER / "voc_R_50_C4_24k.yaml", SMALL + NARROW),
           "paper-COCO-FPN": (PAPER / "coco_R_50_FPN_1x.yaml", SMALL + NARROW)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=D2) for n in CONFIGS])
def test_engine_equals_detectron2(name):
    from mocobench.transfer.engines.parity import check_parity, format_table

    config, overrides = CONFIGS[name]
    rows = check_parity(str(config), overrides)
    table = format_table(rows)
    print(table)
    components = " ".join(r.component for r in rows)
    mask_on = "mask" in name or "COCO" in name
    for part in ("precise BN", "loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg",
                 "grad backbone", "detections", "boxes", "scores", "classes") + (("loss_mask", "masks") if mask_on else ()):
        assert part in components, f"{part} not compared\n{table}"
    assert all(r.ok for r in rows), table
    assert next(r for r in rows if r.component == "detections").ours > 0  # something to compare


@needs_d2
@pytest.mark.parametrize("mask_format,kind", [("polygon", "PolygonMasks"), ("bitmask", "BitMasks")])
def test_both_engines_get_the_ground_truth_in_the_configs_mask_format(mask_format, kind):
    """The mask parity above compares polygon targets with detectron2's PolygonMasks, not bitmasks."""
    from mocobench.transfer.config import load_detection_config
    from mocobench.transfer.engines.parity import detectron2_inputs, synthetic_batch

    cfg = load_detection_config(DEMO / "demo_coco_FPN_mask.yaml", SMALL + ["INPUT.MASK_FORMAT", mask_format])
    images, targets = synthetic_batch(cfg)
    inputs = detectron2_inputs(images, targets, mask_on=True)
    assert all(type(i["instances"].gt_masks).__name__ == kind and len(i["instances"]) == 3 for i in inputs)


@needs_d2
def test_a_mismatch_fails_the_check(capsys):
    """The comparison sees a difference: a changed RPN loss weight on our side only."""
    from mocobench.transfer.engines.parity import build_pair, compare_training, synthetic_batch
    from mocobench.transfer.parity_cli import report

    pair = build_pair(str(DEMO / "demo_voc_C4.yaml"), SMALL)
    pair.ours.rpn.loss_weight = 1.5
    images, targets = synthetic_batch(pair.cfg)
    rows = compare_training(pair, images, targets)
    by_name = {r.component.split(" ")[0]: r for r in rows}
    assert not by_name["loss_objectness"].ok and by_name["loss_cls"].ok
    assert report(rows) == 1
    assert "above tolerance: loss_objectness" in capsys.readouterr().out


@needs_d2
def test_check_parity_command_passes_on_a_demo_config(cli):
    done = cli("transfer", "--check-parity", "--config", DEMO / "demo_coco_FPN_mask.yaml", *SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss_mask / loss_mask" in done.stdout and "components within tolerance" in done.stdout


@pytest.mark.skipif(HAVE_D2, reason="detectron2 is installed: the 'not installed' message cannot be seen")
def test_check_parity_without_detectron2_says_so_in_one_line(cli):
    done = cli("transfer", "--check-parity", "--config", DEMO / "demo_voc_C4.yaml")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--check-parity: detectron2 is not importable" in done.stderr


def plain(value):
    """Tuples and lists alike (YAML has no tuples), nested too."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def flatten(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = plain(value)
    return out


@needs_d2
def test_defaults_yaml_equals_detectron2s_get_cfg():
    """transfer/defaults.yaml is detectron2's get_cfg() key by key, plus the extension keys."""
    from detectron2.config import get_cfg

    from mocobench.transfer.config import detection_defaults
    from mocobench.transfer.engines.detectron2.config import EXTENSION_KEYS, add_extension_keys

    theirs = flatten(get_cfg())
    ours = flatten(detection_defaults())
    extensions = {k for k in ours if any(k == e or k.startswith(e + ".") for e in EXTENSION_KEYS)}
    assert extensions and not extensions & set(theirs)
    assert {k: v for k, v in ours.items() if k not in extensions} == theirs
    assert flatten(add_extension_keys(get_cfg())) == ours
