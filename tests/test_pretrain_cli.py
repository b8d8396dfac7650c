"""The pretrain-stage commands end to end on tiny data: checkpoint layout, kNN, linear
probe and supervised init, and the one-line errors for bad input (exit status 2)."""

from __future__ import annotations

import json

import pytest
import torch

from mocobench.cli import main
from mocobench.resnet import ResNetShape, build_resnet
from pretrain_tiny import write_images, write_labelled, write_tiny_config

TINY = ["MODEL.STEM_OUT_CHANNELS", "8", "MODEL.RES2_OUT_CHANNELS", "16", "MODEL.WIDTH_PER_GROUP", "4",
        "INPUT.CROP_SIZE", "32", "INPUT.RESIZE_SIZE", "36", "DATA.NUM_WORKERS", "0",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.EPOCHS", "1", "TRAIN.LOG_PERIOD", "1", "KNN.K", "[3]"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One tiny pretraining run (in-process) with its kNN monitor, shared by the tests here."""
    tmp = tmp_path_factory.mktemp("pretrain")
    write_images(tmp / "unlabeled" / "some_class", 16, seed=0)  # ImageFolder layout
    labelled = write_labelled(tmp / "classify")
    out = tmp / "run"
    assert main(["pretrain", "--config", str(write_tiny_config(tmp / "tiny.yaml")), "--data", str(tmp / "unlabeled"),
                 "--output-dir", str(out), "SOLVER.EPOCHS", "2", "KNN.DATA", str(labelled)]) == 0
    return tmp, out / "checkpoint_0002.pth.tar", labelled


def test_checkpoint_has_the_moco_repository_layout(pretrained):
    _, ckpt, _ = pretrained
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == "resnet50" and "optimizer" in state
    sd = state["state_dict"]
    trunk = {k[len("module.encoder_q."):] for k in sd if k.startswith("module.encoder_q.") and ".fc." not in k
             and not k.startswith("module.encoder_q.fc")}
    expected = {k for k in build_resnet(ResNetShape(50, 8, 16, 4)).state_dict() if not k.startswith("fc.")}
    assert trunk == expected
    assert {"module.queue", "module.queue_ptr", "module.encoder_k.conv1.weight", "module.encoder_q.fc.2.weight"} <= set(sd)
    # the authors' main_lincls.py recipe: keep encoder_q minus fc, load into a torchvision ResNet
    net = build_resnet(ResNetShape(50, 8, 16, 4), num_classes=3)
    missing, unexpected = net.load_state_dict(
        {k[len("module.encoder_q."):]: v for k, v in sd.items()
         if k.startswith("module.encoder_q") and not k.startswith("module.encoder_q.fc")}, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_metrics_log_every_step_and_knn_monitor(pretrained):
    tmp, ckpt, _ = pretrained
    lines = [json.loads(x) for x in (ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["iter"] for x in steps] == [1, 2, 3, 4]
    assert all({"epoch", "loss", "acc1", "acc1_batch", "key_cos", "lr", "images_per_s"} <= set(x) for x in steps)
    assert any("top1@3" in x for x in lines)


def test_knn_reads_our_checkpoint_and_random_init(pretrained, capsys, tmp_path):
    tmp, ckpt, labelled = pretrained
    assert main(["knn", "--weights", str(ckpt), "--data", str(labelled), "--output", str(tmp_path / "knn.json"),
                 "KNN.K", "[3]", "INPUT.CROP_SIZE", "32", "INPUT.RESIZE_SIZE", "36", "DATA.NUM_WORKERS", "0"]) == 0
    result = json.loads((tmp_path / "knn.json").read_text())
    assert 0 <= result["top1@3"] <= 100 and result["resnet_shape"]["res2_out_channels"] == 16
    assert result["bn_stats"] == "checkpoint"
    assert main(["knn", "--weights", str(ckpt), "--bn-from-data", "--data", str(labelled), *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bn_stats"] == "data"
    assert main(["knn", "--random-init", "--data", str(labelled), *TINY]) == 0
    assert "random-init" in capsys.readouterr().out


def test_lincls_and_supervised(pretrained, tmp_path):
    tmp, ckpt, labelled = pretrained
    config = "configs/pretrain/lincls_demo.yaml"
    assert main(["lincls", "--weights", str(ckpt), "--config", config, "--data", str(labelled),
                 "--output-dir", str(tmp_path / "lin"), *TINY, "SOLVER.EPOCHS", "3"]) == 0
    lin = json.loads((tmp_path / "lin" / "metrics.json").read_text())
    val = [x["val_top1"] for x in map(json.loads, (tmp_path / "lin" / "metrics.jsonl").read_text().splitlines())
           if "val_top1" in x]
    # the authors' main_lincls.py reports the best epoch's val top-1; the last one is kept too
    assert lin["reported"] == "best" and lin["top1"] == max(val) and lin["top1_last"] == val[-1]
    out = tmp_path / "sup"
    args = ["supervised", "--config", "configs/pretrain/supervised_demo.yaml", "--data", str(labelled),
            "--output-dir", str(out), *TINY]
    assert main(args) == 0
    weights = torch.load(out / "model_final.pth", weights_only=True)
    build_resnet(ResNetShape(50, 8, 16, 4), num_classes=2).load_state_dict(weights)  # torchvision layout, strict
    assert main([args[0], "--resume", *args[1:], "SOLVER.EPOCHS", "2"]) == 0  # one more epoch
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_resume_with_other_inputs_is_refused(pretrained, tmp_path, capsys):
    """A resumed run must be the run it continues: another learning rate or other images are
    refused, naming them; more epochs extend it."""
    import shutil

    tmp, _, _ = pretrained
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    base = ["pretrain", "--config", str(tmp / "tiny.yaml"), "--output-dir", str(run), "--resume"]
    assert main([*base, "--data", str(tmp / "unlabeled"), "SOLVER.EPOCHS", "2", "SOLVER.BASE_LR", "0.5"]) == 2
    assert "SOLVER.BASE_LR" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(tmp / "unlabeled", other)
    write_images(other / "more", 1, seed=9)  # one image more
    assert main([*base, "--data", str(other), "SOLVER.EPOCHS", "2"]) == 2
    assert "data content" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp / "unlabeled"), "SOLVER.EPOCHS", "3",
                 "KNN.DATA", str(tmp / "classify")]) == 0


@pytest.mark.parametrize("problem", ["missing", "empty", "unreadable", "K", "key"])
def test_bad_input_is_one_line_error_with_exit_2(problem, tmp_path, capsys):
    data = tmp_path / "images"
    write_images(data, 8, seed=0)
    config = write_tiny_config(tmp_path / "tiny.yaml")
    extra, expect = [], ""
    if problem == "missing":
        data, expect = tmp_path / "nowhere", "nowhere: image folder not found"
    elif problem == "empty":
        data = tmp_path / "empty"
        data.mkdir()
        expect = "empty: no images"
    elif problem == "unreadable":
        (data / "000.jpg").unlink()  # 7 good + 1 broken = one batch of 8: every image is read
        (data / "broken.jpg").write_bytes(b"not a jpeg")
        expect = "broken.jpg: cannot read image"
    elif problem == "K":
        extra, expect = ["MOCO.K", "20"], "MOCO.K 20 is not divisible by the global batch"
    else:
        config.write_text(config.read_text() + "MOCO: {QUEUE: 4}\n")
        expect = "unknown config key 'MOCO.QUEUE'"
    code = main(["pretrain", "--config", str(config), "--data", str(data), "--output-dir", str(tmp_path / "o"),
                 "SOLVER.EPOCHS", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expect in err and "\n" not in err, err


def test_random_init_bn_statistics_come_from_the_train_split(pretrained, capsys):
    """--random-bn data (default) sets BN statistics from images, weights untouched; init
    leaves them at (0, 1); the two baselines differ and each says which it is."""
    from torch.utils.data import DataLoader

    from mocobench.pretrain.features import estimate_bn_stats

    net = build_resnet(ResNetShape(50, 8, 16, 4)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.rand(12, 3, 32, 32) * 2 + 1  # mean ~2, var ~1/3 per channel
    estimate_bn_stats(net, DataLoader([(x, 0) for x in images], batch_size=4), torch.device("cpu"))
    assert torch.allclose(net.bn1.running_mean, torch.nn.functional.conv2d(images, net.conv1.weight, stride=2,
                                                                            padding=3).mean((0, 2, 3)), atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    assert not net.training  # its mode is restored
    _, _, labelled = pretrained
    for mode in ("data", "init"):
        assert main(["knn", "--random-init", "--random-bn", mode, "--data", str(labelled), *TINY]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bn_stats"] == mode
