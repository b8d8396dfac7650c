"""GPU check: the paper-scale paths measured on one GPU, written to one JSON file.

Four parts, run in this order, each in its own time box (a share of --budget-s, default 480 s,
printed as it starts). A part that fails or runs out of time is recorded with its "error" and
the next one still runs; the JSON is rewritten after every part, so a killed run keeps what
finished. Every figure comes from the benchmarks' own measuring functions:

  pretrain_step   MoCo v2 R50 (configs/pretrain/moco_v2_r50.yaml), 224-pixel crops, batch 256,
                  channels_last, one GPU: pretrain's training step (pretrain.train.train_step)
                  under bfloat16 autocast, timed interleaved with the same step under float16
                  autocast (what TRAIN.AMP runs) and under bfloat16 with cudnn.benchmark on.
                  Goal: >= 2,000 images/s on one H100 (the paper's 200 epochs of ImageNet on
                  8 GPUs in under 5 hours).
  data_path       what feeds that step: two 224-pixel aug+ views per image from JPEG files in
                  a temporary folder, through pretrain's own loader on --workers CPU processes,
                  and the same views made with torchvision.transforms.v2 on GPU tensors (JPEGs
                  decoded on the GPU), both in images/s against the step's.
  detection_step  one training iteration (forward, backward, SGD) of VOC R50-C4 Faster R-CNN and
                  COCO R50-FPN Mask R-CNN at the paper's test size (800 x 1066), 2 images, AMP:
                  seconds per iteration of the engine's model, and of detectron2's model on the
                  same config file when detectron2 is importable (their ratio).
  end_to_end      the real commands, a few iterations each: mocobench data synth (tiny), pretrain
                  under torchrun (one process per GPU: NCCL when there are several), convert,
                  and a VOC R50-C4 and a COCO R50-FPN Mask R-CNN transfer job side by side under
                  torchrun with AMP, ending in their metrics.json; each command's exit code and seconds.

--dry-run runs the same code on the CPU at tiny sizes (tiny widths, 32-64 pixel images, 1-2
iterations, float32, two gloo processes under torchrun) in well under a minute; the test suite
runs it so the script keeps working where no GPU is at hand. The dry run exits 1 when any part
failed; the GPU run exits 0 with failures recorded in the JSON.

Run on a GPU machine from the checkout root (bash benchmarks/gpu_check.sh wraps this):
    python -m benchmarks.gpu_check --out gpu_check.json
Expected runtime on one H100/H200 (an estimate: it has not run on one yet): 3-5 minutes, inside
the 8-minute budget; the CPU dry run takes about 35 s on a loaded 2-core machine.

JSON fields:
  machine         device name, GPU memory, torch / CUDA / cuDNN versions, CPU count, sgemm rate
  budget_s, seconds, dry_run
  parts.NAME      ok (bool), seconds, box_s (its time box), error (only when not ok),
                  max_gpu_memory_gib (this process's peak; GPU runs only), and:
    pretrain_step   images_per_s {bf16, fp16, bf16_cudnn_benchmark}, step_flops (one step),
                    matmul_flops_per_s (measured, bf16), fraction_of_matmul (bf16 step FLOP/s over
                    it), goal_images_per_s, goal_met, config (batch, crop, K, width)
    data_path       cpu_loader_images_per_s, cpu_loader_first_batch_s, gpu_v2_images_per_s,
                    step_images_per_s (from pretrain_step), cpu_loader_over_step,
                    gpu_v2_over_step (> 1: that path keeps up), workers, jpeg_mean_kb, image_size
    detection_step  VOC_R50_C4 / COCO_R50_FPN_mask: seconds_per_iter {ours, d2}, d2_over_ours
                    (> 1: ours faster; null without detectron2), image_size, images, amp
    end_to_end      processes, backend, steps {data, pretrain, convert, transfer_voc,
                    transfer_coco}: exit_code, seconds (and stderr_tail when it failed);
                    metrics {transfer_voc, transfer_coco}: the jobs' metrics.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks import bench_detect, bench_pretrain, timing
from mocobench import __version__, machine
from mocobench.atomic import write_json
from mocobench.pretrain.augment import moco_view_steps
from mocobench.pretrain.config import load_pretrain_config
from mocobench.pretrain.data import ImageDataset, ResumableSampler, list_images, make_loader
from mocobench.resources import config_path
from mocobench.transfer.datasets.synth import write_synthetic

GOAL_IMAGES_PER_S = 2000
DETECTION = {"VOC_R50_C4": "detection/voc_R_50_C4_24k_rgb.yaml",
             "COCO_R50_FPN_mask": "detection/coco_R_50_FPN_1x_rgb.yaml"}
# share of the total budget each part may use
SHARES = {"pretrain_step": 0.25, "data_path": 0.2, "detection_step": 0.25, "end_to_end": 0.3}

TINY_MOCO = ("MODEL.STEM_OUT_CHANNELS", "8", "MODEL.RES2_OUT_CHANNELS", "16", "MODEL.WIDTH_PER_GROUP", "4")
TINY_DETECT = ("MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
               "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
               "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
               "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "100")


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""
    moco: tuple[str, ...]             # overrides of moco_v2_r50.yaml for the step and the loader
    amp_dtypes: dict[str, tuple[torch.dtype | None, bool]]  # step label -> (autocast dtype, cudnn.benchmark)
    matmul_dtype: torch.dtype
    matmul_n: int
    repeats: int
    jpegs: int                        # files written for the data path
    jpeg_hw: tuple[int, int]          # their size (ImageNet's images average about 400 x 350)
    loader_batches_per_worker: int
    gpu_batches: int
    detect_size: int
    detect_overrides: tuple[str, ...]
    pretrain_e2e: tuple[str, ...]     # overrides of moco_v2_demo.yaml
    transfer_e2e: tuple[str, ...]     # overrides of the demo detection configs
    processes: int                    # torchrun processes of the end-to-end part


E2E_PRETRAIN = ("SOLVER.EPOCHS", "1", "DATA.NUM_WORKERS", "1", "TRAIN.LOG_PERIOD", "1",
                "CHECKPOINT.PERIOD_ITERS", "0")
E2E_TRANSFER = ("MODEL.ROI_HEADS.NUM_CLASSES", "4", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)",
                "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "0", "TEST.PRECISE_BN.NUM_ITER", "2",
                "DATALOADER.NUM_WORKERS", "1")

FULL = Sizes(
    moco=("INPUT.CROP_SIZE", "224", "SOLVER.BATCH_SIZE", "256"),
    amp_dtypes={"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
                "bf16_cudnn_benchmark": (torch.bfloat16, True)},
    matmul_dtype=torch.bfloat16, matmul_n=8192, repeats=10,
    jpegs=512, jpeg_hw=(375, 500), loader_batches_per_worker=2, gpu_batches=3,
    detect_size=800, detect_overrides=(),
    pretrain_e2e=E2E_PRETRAIN + ("SOLVER.BATCH_SIZE", "8"),
    transfer_e2e=E2E_TRANSFER + ("SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cuda"),
    processes=max(torch.cuda.device_count(), 1))

DRY = Sizes(
    moco=TINY_MOCO + ("INPUT.CROP_SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "32"),
    amp_dtypes={"fp32": (None, False)},
    matmul_dtype=torch.float32, matmul_n=256, repeats=1,
    jpegs=8, jpeg_hw=(48, 64), loader_batches_per_worker=1, gpu_batches=1,
    detect_size=64, detect_overrides=TINY_DETECT,
    pretrain_e2e=E2E_PRETRAIN + TINY_MOCO + ("SOLVER.BATCH_SIZE", "16", "MOCO.K", "32", "INPUT.CROP_SIZE", "32",
                                             "TRAIN.DEVICE", "cpu"),
    transfer_e2e=E2E_TRANSFER + TINY_DETECT[:8] + ("INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64"),
    processes=2)


class PartTimeout(Exception):
    """A part ran past its time box."""


@contextlib.contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in the main thread once ``seconds`` have passed (checked between Python bytecodes)."""
    def expire(signum: int, frame: object) -> None:
        raise PartTimeout(f"ran past its {seconds:.0f} s time box")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def moco_config(sizes: Sizes):
    return load_pretrain_config(config_path("pretrain/moco_v2_r50.yaml"), sizes.moco)


# ---- (a) the pretraining step --------------------------------------------------------------
def pretrain_step(sizes: Sizes, device: torch.device, results: dict) -> dict:
    cfg = moco_config(sizes)
    amp = device.type == "cuda"
    steps = {label: bench_pretrain.build_step(cfg, device, amp, channels_last=True, amp_dtype=dtype)
             for label, (dtype, _) in sizes.amp_dtypes.items()}

    def run(label: str) -> Callable[[], None]:
        def go() -> None:
            # the flag is read at every convolution, so each candidate runs with its own setting
            torch.backends.cudnn.benchmark = sizes.amp_dtypes[label][1]
            steps[label].run()
        return go

    medians = timing.interleaved_medians({label: run(label) for label in steps}, sizes.repeats)
    torch.backends.cudnn.benchmark = False
    timing.report_times(medians, "ms")
    n = cfg.SOLVER.BATCH_SIZE
    head = next(iter(steps))
    fraction, flops, peak = bench_pretrain.gpu_fraction(steps[head], medians[head], device, sizes.matmul_dtype,
                                                        sizes.matmul_n)
    images_per_s = {label: n / t for label, t in medians.items()}
    return {"images_per_s": images_per_s, "headline": head, "step_flops": flops, "matmul_flops_per_s": peak,
            "fraction_of_matmul": fraction, "goal_images_per_s": GOAL_IMAGES_PER_S,
            "goal_met": images_per_s[head] >= GOAL_IMAGES_PER_S if device.type == "cuda" else None,
            "config": {"batch": n, "crop": cfg.INPUT.CROP_SIZE, "K": cfg.MOCO.K,
                       "width_per_group": cfg.MODEL.WIDTH_PER_GROUP, "channels_last": True}}


# ---- (b) the data path ------------------------------------------------------------------------
def write_jpegs(folder: Path, count: int, hw: tuple[int, int]) -> list[Path]:
    """Synthetic scenes upscaled to ``hw`` with mild noise, so their JPEGs cost about what photos do to decode."""
    from PIL import Image
    import numpy as np

    small = folder / "small"
    write_synthetic(small, seed=0, scale="tiny")
    sources = [p for p, _ in list_images(small / "unlabeled")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = Image.open(sources[i % len(sources)]).convert("RGB").resize((hw[1], hw[0]), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, (hw[0], hw[1], 3))
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def cpu_loader_rate(cfg, image_dir: Path, workers: int, batches: int) -> tuple[float, float]:
    """(images/s over a whole loader epoch, worker start-up included; seconds to the first batch)."""
    from mocobench.pretrain.augment import moco_transform

    n = cfg.SOLVER.BATCH_SIZE
    files = list_images(image_dir)
    samples = (files * (batches * n // len(files) + 1))[: batches * n]
    dataset = ImageDataset(samples, moco_transform(cfg), seed=0)
    loader = make_loader(dataset, n, ResumableSampler(dataset, shuffle=True, seed=0), workers, drop_last=True)
    start, first = time.perf_counter(), None
    for _ in loader:
        first = first or time.perf_counter() - start
    return batches * n / (time.perf_counter() - start), first or 0.0


def gpu_v2_rate(cfg, paths: list[Path], device: torch.device, batches: int) -> float:
    """images/s of JPEG bytes -> decoded on ``device`` -> two transforms.v2 views each, per image."""
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    size = cfg.INPUT.CROP_SIZE
    # SimCLR's blur kernel: about a tenth of the crop, odd
    blur = v2.GaussianBlur(2 * (size // 20) + 1, sigma=tuple(cfg.AUG.BLUR_SIGMA))
    view = v2.Compose(moco_view_steps(cfg, v2, blur) + [v2.ToDtype(torch.float32, scale=True),
                                                         v2.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])
    n = cfg.SOLVER.BATCH_SIZE
    batch = [read_file(str(paths[i % len(paths)])) for i in range(n)]

    def one_batch() -> None:
        images = decode_jpeg(batch, device=device)
        torch.stack([view(im) for im in images for _ in range(2)])

    seconds = timing.interleaved_medians({"gpu_v2": one_batch}, batches)["gpu_v2"]
    return n / seconds


def data_path(sizes: Sizes, device: torch.device, results: dict, workers: int) -> dict:
    cfg = moco_config(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), sizes.jpegs, sizes.jpeg_hw)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        cpu, first = cpu_loader_rate(cfg, Path(tmp), workers, max(workers, 1) * sizes.loader_batches_per_worker)
        gpu = gpu_v2_rate(cfg, paths, device, sizes.gpu_batches)
    measured = results.get("pretrain_step", {})
    step = measured.get("images_per_s", {}).get(measured.get("headline"))
    return {"cpu_loader_images_per_s": cpu, "cpu_loader_first_batch_s": first, "gpu_v2_images_per_s": gpu,
            "step_images_per_s": step, "cpu_loader_over_step": cpu / step if step else None,
            "gpu_v2_over_step": gpu / step if step else None, "workers": workers, "jpeg_mean_kb": kb,
            "image_size": list(sizes.jpeg_hw), "crop": cfg.INPUT.CROP_SIZE, "views_per_image": 2}


# ---- (c) the detection step -----------------------------------------------------------------
def detection_step(sizes: Sizes, device: torch.device, results: dict) -> dict:
    from mocobench.transfer.config import load_detection_config

    amp = device.type == "cuda"
    out = {}
    for name, rel in DETECTION.items():
        config = config_path(rel)
        overrides = bench_detect.size_overrides(sizes.detect_size) + sizes.detect_overrides
        n_classes = load_detection_config(config, overrides).MODEL.ROI_HEADS.NUM_CLASSES
        images, targets = bench_detect.synthetic_batch(2, sizes.detect_size, n_classes)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        candidates = {"ours": bench_detect.engine_step(config, overrides, images, targets, device)}
        d2 = bench_detect.detectron2_step(overrides, images, targets, device, config)
        if d2 is not None:
            candidates["d2"] = d2
        medians = timing.interleaved_medians(
            {k: bench_detect.with_autocast(v, device, amp) for k, v in candidates.items()}, sizes.repeats)
        timing.report_times(medians)
        out[name] = {"seconds_per_iter": medians,
                     "d2_over_ours": timing.report_ratio(f"{name} detectron2 / ours", medians["d2"], medians["ours"])
                     if "d2" in medians else None,
                     "detectron2": "importable" if d2 is not None else "not importable",
                     "image_size": [sizes.detect_size, sizes.detect_size * 4 // 3], "images": 2, "amp": amp}
        del candidates, d2
        free_memory()
    return out


# ---- (d) pretrain -> convert -> transfer ----------------------------------------------------------
class Command:
    """``python -m mocobench ARGV`` started now (under torchrun with that many processes), in its
    own process session so that a time-out ends torchrun's workers too."""

    def __init__(self, argv: list[str], torchrun: int = 0) -> None:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] if torchrun else []
        self.argv, self.start = argv, time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, *launcher, "-m", "mocobench", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True,
                                     env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})

    def finish(self, timeout_s: float) -> dict:
        """Wait at most ``timeout_s``; its exit code (None: timed out) and seconds, and its stderr's tail if it failed."""
        try:
            _, err = self.proc.communicate(timeout=max(timeout_s, 1.0))
            code = self.proc.returncode
        except subprocess.TimeoutExpired:
            err, code = f"timed out after {timeout_s:.0f} s", None
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        result = {"exit_code": code, "seconds": time.perf_counter() - self.start, "argv": self.argv}
        if code != 0:
            result["stderr_tail"] = (err or "")[-2000:]
        return result


def end_to_end(sizes: Sizes, device: torch.device, results: dict, deadline: float) -> dict:
    p = sizes.processes
    backend = ("nccl" if device.type == "cuda" else "gloo") if p > 1 else "none (one process)"
    steps: dict[str, dict] = {}
    metrics: dict[str, object] = {}

    def finish(name: str, command: Command) -> bool:
        # each command may use what is left of the part's time box
        steps[name] = command.finish(deadline - time.perf_counter())
        print(f"  end_to_end {name}: exit {steps[name]['exit_code']} in {steps[name]['seconds']:.1f} s", flush=True)
        return steps[name]["exit_code"] == 0

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        ok = finish("data", Command(["data", "synth", "--out", str(t / "data"), "--scale", "tiny", "--quiet"]))
        ok = ok and finish("pretrain", Command(
            ["pretrain", "--config", str(config_path("pretrain/moco_v2_demo.yaml")), "--data", str(t / "data" / "unlabeled"),
             "--output-dir", str(t / "pretrain"), *sizes.pretrain_e2e], torchrun=p))
        ok = ok and finish("convert", Command(["convert", str(t / "pretrain" / "checkpoint_0001.pth.tar"),
                                               str(t / "moco.pkl"), "--encoder", "query"]))
        # the two jobs are independent: started together, they overlap their start-up and imports
        jobs = {name: Command(["transfer", "--config", str(config_path(f"detection/demo/{config}")),
                               "--weights", str(t / "moco.pkl"), "--output-dir", str(t / name),
                               "--data-root", str(t / "data"), *sizes.transfer_e2e,
                               "SOLVER.IMS_PER_BATCH", str(2 * p)], torchrun=p)
                for name, config in (("transfer_voc", "demo_voc_C4.yaml"), ("transfer_coco", "demo_coco_FPN_mask.yaml"))
                if ok}
        for name, command in jobs.items():
            if finish(name, command):
                metrics[name] = json.loads((t / name / "metrics.json").read_text())
    failed = [k for k, v in steps.items() if v["exit_code"] != 0]
    if failed:
        raise RuntimeError(f"end_to_end: {failed[0]} failed (exit {steps[failed[0]]['exit_code']}): "
                           f"{steps[failed[0]].get('stderr_tail', '')[-500:]}")
    return {"processes": p, "backend": backend, "steps": steps, "metrics": metrics}


# ---- the run ----------------------------------------------------------------------------------
def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_machine(device: torch.device) -> dict:
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else machine.cpu_name(),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu_count": os.cpu_count(), "mocobench": __version__,
           "sgemm_gflops": machine.sgemm_gflops(512, seconds=0.2)}
    if device.type == "cuda":
        out["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    return out


def run(out: Path, dry_run: bool, budget_s: float, workers: int, parts: list[str]) -> dict:
    """Run the parts in order, each in its time box; the JSON is written after each one."""
    sizes = DRY if dry_run else FULL
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --dry-run for the CPU version")
    device = torch.device("cpu" if dry_run else "cuda")
    start = time.perf_counter()
    report = {"dry_run": dry_run, "budget_s": budget_s, "machine": describe_machine(device), "parts": {}}
    calls: dict[str, Callable[[float], dict]] = {
        "pretrain_step": lambda _: pretrain_step(sizes, device, report["parts"]),
        "data_path": lambda _: data_path(sizes, device, report["parts"], workers),
        "detection_step": lambda _: detection_step(sizes, device, report["parts"]),
        "end_to_end": lambda deadline: end_to_end(sizes, device, report["parts"], deadline),
    }
    for i, name in enumerate(parts, 1):
        left = budget_s - (time.perf_counter() - start)
        box = min(SHARES[name] * budget_s, left)
        print(f"[gpu_check {i}/{len(parts)}] {name}: time box {box:.0f} s (budget {budget_s:.0f} s, {left:.0f} s left)",
              flush=True)
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if box < 1:
                raise PartTimeout("no time left in the budget")
            with time_box(box):
                result = {"ok": True, **calls[name](t0 + box)}
        except Exception as e:  # noqa: BLE001 -- one part's failure is data for the JSON, not the end of the run
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        result.update(seconds=time.perf_counter() - t0, box_s=box)
        if device.type == "cuda":
            result["max_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        report["parts"][name] = result
        report["seconds"] = time.perf_counter() - start
        status = "ok" if result["ok"] else result["error"][:300]
        print(f"[gpu_check {i}/{len(parts)}] {name}: {status} in {result['seconds']:.1f} s", flush=True)
        write_json(out, report)
        free_memory()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, float32, gloo (well under a minute)")
    p.add_argument("--budget-s", type=float, default=480.0, help="total time budget in seconds (default 480)")
    p.add_argument("--workers", type=int, default=None,
                   help="data-path loader workers (default: the CPU count; 1 with --dry-run)")
    p.add_argument("--parts", nargs="+", choices=list(SHARES), default=list(SHARES), help="which parts (default: all)")
    args = p.parse_args(argv)
    workers = args.workers if args.workers is not None else (1 if args.dry_run else os.cpu_count() or 1)
    if args.dry_run:
        # tiny operations gain nothing from threads, and on a loaded machine their spinning costs 100x
        torch.set_num_threads(1)
    report = run(args.out, args.dry_run, args.budget_s, workers, args.parts)
    failed = sum(not v["ok"] for v in report["parts"].values())
    print(f"gpu_check: {args.out} written in {report['seconds']:.0f} s; {failed} part(s) failed", flush=True)
    # the dry run is the suite's check that this script works, so a failed part must fail it
    return 1 if args.dry_run and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
