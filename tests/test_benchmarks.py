"""The benchmarks' core functions at minuscule sizes, so the scripts keep working (no timing asserts)."""

from __future__ import annotations

import math

import torch

from benchmarks import bench_data, bench_detect, bench_eval, bench_pretrain
from engine_fixtures import needs_d2
from mocobench.transfer.datasets.synth import write_synthetic

SMALL_MOCO = ("MODEL.STEM_OUT_CHANNELS", "8", "MODEL.RES2_OUT_CHANNELS", "16", "MODEL.WIDTH_PER_GROUP", "4",
              "MOCO.K", "32", "SOLVER.BATCH_SIZE", "8", "INPUT.CROP_SIZE", "32", "MOCO.SPLIT_BN_GROUPS", "2")


def test_bench_pretrain_measures_its_ratios():
    cfg = bench_pretrain.scale_config("demo", SMALL_MOCO)
    result = bench_pretrain.measure_step(cfg, 1, torch.device("cpu"), label="demo")
    assert result.ours_over_alg1 > 0 and math.isfinite(result.overhead) and result.images_per_s > 0
    assert result.own_ops > 0 and math.isfinite(result.own_ops)


def test_bench_data_measures_loader_and_decoders(tmp_path):
    write_synthetic(tmp_path, seed=0, scale="tiny")
    ratios = bench_data.measure(tmp_path / "unlabeled", 1, 1, SMALL_MOCO + ("DATA.NUM_WORKERS", "0"))
    assert all(v > 0 for v in ratios.values())


def test_bench_eval_agrees_with_the_devkit_loop_and_times_coco():
    ratios = bench_eval.measure(30, 3, 1)  # raises if the VOC evaluator and the loop disagree
    assert set(ratios) == {"loop_over_voc", "coco_over_voc"}


def test_bench_detect_runs_ours_and_stock():
    ratios = bench_detect.measure(64, 1, 1, torch.device("cpu"))
    assert ratios["stock_over_ours_bn"] > 0 and ratios["stock_over_ours"] > 0


def test_bench_demo_reads_the_demos_stage_lines():
    from benchmarks import bench_demo

    printed = ("[demo] data: synthetic data (elapsed 00:00, ETA 03:30)\n"
               "[demo] data finished in 00:14 (elapsed 00:14, ETA 03:16)\n"
               "[demo] demo_voc_R50_C4/moco finished in 00:31 (elapsed 03:01, ETA 00:20)\n"
               "[demo] all stages done in 03:30\n")
    assert bench_demo.stage_times(printed) == {"data": "00:14", "demo_voc_R50_C4/moco": "00:31"}


def test_bench_demo_avx2_environment_limits_torch_to_avx2():
    import os
    import subprocess
    import sys

    from benchmarks import bench_demo

    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, **bench_demo.AVX2_ONLY})
    assert done.stdout.strip() in ("AVX2", "DEFAULT")  # DEFAULT: a CPU without AVX2 at all


def test_gpu_check_dry_run_writes_every_part(tmp_path):
    """The GPU check's CPU dry run, through its wrapper: every part ran and reported numbers."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks import gpu_check

    out = tmp_path / "gpu_check.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"], cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["machine"]["torch"]
    parts = report["parts"]
    assert set(parts) == set(gpu_check.SHARES)
    for name, part in parts.items():
        assert part["ok"], (name, part.get("error"))
        assert part["seconds"] >= 0 and part["box_s"] > 0
    step = parts["pretrain_step"]
    assert step["images_per_s"]["fp32"] > 0 and 0 < step["fraction_of_matmul"] and step["step_flops"] > 0
    data = parts["data_path"]
    assert data["cpu_loader_images_per_s"] > 0 and data["gpu_v2_images_per_s"] > 0 and data["cpu_loader_over_step"] > 0
    for config in gpu_check.DETECTION:
        assert parts["detection_step"][config]["seconds_per_iter"]["ours"] > 0
    e2e = parts["end_to_end"]
    assert e2e["backend"] == "gloo" and all(s["exit_code"] == 0 for s in e2e["steps"].values())
    assert set(e2e["metrics"]) == {"transfer_voc", "transfer_coco"}
    assert all(m["meta"]["world_size"] == 2 and "bbox" in m for m in e2e["metrics"].values())
    assert "segm" in e2e["metrics"]["transfer_coco"]


def gpu_check_dry_run(tmp_path, *args: str):
    """``bash benchmarks/gpu_check.sh OUT.json --dry-run ARGS`` in a fresh process; (its result, the JSON)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "gpu_check.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", *args],
                          cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=300)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_gpu_check_dry_run_exits_nonzero_when_a_part_fails(tmp_path):
    """A part left no time by the budget fails; the dry run says so and exits 1."""
    done, report = gpu_check_dry_run(tmp_path, "--parts", "pretrain_step", "--budget-s", "0")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert not report["parts"]["pretrain_step"]["ok"] and "1 part(s) failed" in done.stdout


@needs_d2
def test_gpu_check_builds_detectron2_with_the_suites_registrations(tmp_path):
    """The C4 config's Res5ROIHeadsExtraNorm is registered before detectron2's model is built
    (a fresh process: nothing imported the registrations beforehand)."""
    done, report = gpu_check_dry_run(tmp_path, "--parts", "detection_step")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for config in ("VOC_R50_C4", "COCO_R50_FPN_mask"):
        assert report["parts"]["detection_step"][config]["seconds_per_iter"]["d2"] > 0
