"""The paper's three dictionary mechanisms (MoCo, end-to-end, memory bank): logits and
positives, gradients, the memory bank's update, shuffle-BN switch, K constraints, and
that their checkpoints train, resume exactly and convert like MoCo's."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from mocobench import UserError
from mocobench.cli import main
from mocobench.pretrain.config import load_pretrain_config, validate_mechanism
from mocobench.pretrain.end_to_end import EndToEnd
from mocobench.pretrain.memory_bank import MemoryBank
from mocobench.pretrain.moco import MoCo, build_encoder, instance_accuracy
from mocobench.resnet import ResNetShape
from pretrain_tiny import ROOT, write_images, write_tiny_config

SHAPE = ResNetShape(50, 8, 16, 4)


def encoder(groups: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(SHAPE, 16, True, groups)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_end_to_end_logits_are_query_vs_batch_keys_with_the_positive_on_the_diagonal():
    model = EndToEnd(encoder(), T=0.2, shuffle_bn=False).eval()
    x_q, x_k = images(4, 1), images(4, 2)
    logits, labels = model(x_q, x_k)
    assert logits.shape == (4, 4) and labels.tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        q, k = (F.normalize(model.encoder_q(x), dim=1) for x in (x_q, x_k))
    assert torch.allclose(logits, q @ k.T / 0.2, atol=1e-5)
    assert model.keys().shape == (16, 4)


@pytest.mark.parametrize("shuffle_bn", [True, False])
def test_end_to_end_gradients_reach_both_branches(shuffle_bn):
    """The encoder's two outputs (queries, then keys) both receive a gradient."""
    model = EndToEnd(encoder(), T=0.2, shuffle_bn=shuffle_bn).train()
    outputs = []
    model.encoder_q.register_forward_hook(lambda module, args, out: outputs.append(out) or out.retain_grad())
    logits, labels = model(images(8, 3), images(8, 4))
    F.cross_entropy(logits, labels).backward()
    assert len(outputs) == 2 and all(out.grad is not None and out.grad.abs().sum() > 0 for out in outputs)
    assert all(p.grad is not None for p in model.encoder_q.parameters())


def test_end_to_end_shuffle_only_permutes_the_key_batch():
    """In eval mode (no batch statistics) shuffled and plain keys are the same keys."""
    x_q, x_k = images(4, 5), images(4, 6)
    plain = EndToEnd(encoder(), shuffle_bn=False).eval()(x_q, x_k)[0]
    shuffled = EndToEnd(encoder(), shuffle_bn=True).eval()(x_q, x_k)[0]
    assert torch.allclose(plain, shuffled, atol=1e-5)


def bank_model(num_images: int = 20, K: int = 6, m: float = 0.5) -> MemoryBank:
    return MemoryBank(encoder(), num_images, dim=16, K=K, T=0.2, m=m)


def test_memory_bank_logits_put_the_images_own_entry_first():
    model = bank_model().eval()
    x, index = images(4, 7), torch.tensor([3, 11, 0, 19])
    entries = model.bank[index].clone()
    torch.manual_seed(5)
    logits, labels = model(x, None, index)
    assert logits.shape == (4, 1 + 6) and labels.tolist() == [0, 0, 0, 0]
    with torch.no_grad():
        q = F.normalize(model.encoder_q(x), dim=1)
    assert torch.allclose(logits[:, 0], (q * entries).sum(1) / 0.2, atol=1e-5)
    torch.manual_seed(5)
    sampled = torch.randint(20, (6,))
    assert instance_accuracy(logits, labels) >= 0
    own = sampled[None, :] == index[:, None]
    assert torch.isinf(logits[:, 1:][own]).all() and torch.isfinite(logits[:, 1:][~own]).all()


def test_memory_bank_update_is_the_momentum_average_renormalised_and_touches_only_those_entries():
    model = bank_model(m=0.5)
    before = model.bank.clone()
    features, index = F.normalize(torch.randn(3, 16), dim=1), torch.tensor([2, 7, 9])
    model.update(features, index)
    expected = F.normalize(before[index] * 0.5 + features * (1 - 0.5), dim=1)
    assert torch.equal(model.bank[index], expected)
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False
    assert torch.equal(model.bank[others], before[others])


def test_memory_bank_forward_writes_the_queries_into_their_entries():
    model = bank_model(m=0.5).eval()
    x, index = images(4, 8), torch.tensor([1, 4, 5, 6])
    before = model.bank.clone()
    model(x, None, index)
    with torch.no_grad():
        q = F.normalize(model.encoder_q(x), dim=1)
    assert torch.allclose(model.bank[index], F.normalize(before[index] * 0.5 + q * 0.5, dim=1), atol=1e-6)
    assert model.keys().shape == (16, 20)


def test_memory_bank_needs_more_images_than_negatives():
    with pytest.raises(ValueError, match="more than 6 images"):
        bank_model(num_images=6, K=6)


def test_moco_without_shuffle_encodes_keys_in_batch_order():
    """SHUFFLE_BN off: key i is computed with query i in the same BN sub-batch (the leak)."""
    torch.manual_seed(0)
    enc = build_encoder(SHAPE, 16, True, 2)
    moco = MoCo(enc, dim=16, K=8, m=0.9, T=0.2, shuffle_bn=False).train()
    x_k = images(4, 9)
    moco(images(4, 10), x_k)
    keys = moco.queue[:, :4].T.clone()
    with torch.no_grad():  # the same batch in the same order: the same BN sub-batches
        direct = F.normalize(moco.encoder_k(x_k), dim=1)
    assert torch.allclose(keys, direct, atol=1e-5)


DEMO = ROOT / "configs" / "pretrain" / "moco_v2_demo.yaml"


@pytest.mark.parametrize("overrides, message", [
    (["MOCO.MECHANISM", "end_to_end"], "MOCO.K 1024 must equal SOLVER.BATCH_SIZE 64 with MOCO.MECHANISM end_to_end"),
    (["MOCO.K", "100"], "MOCO.K 100 is not divisible by the global batch SOLVER.BATCH_SIZE 64"),
    (["MOCO.MECHANISM", "queue"], "MOCO.MECHANISM must be one of moco, end_to_end, memory_bank, got 'queue'"),
    (["MOCO.MECHANISM", "memory_bank", "MOCO.BANK_MOMENTUM", "1.0"], "MOCO.BANK_MOMENTUM 1.0 is not allowed: must be in [0, 1)"),
])
def test_k_constraints_fail_at_config_load_naming_the_file_and_key(overrides, message):
    with pytest.raises(UserError) as err:  # ranges at load, the dictionary's constraints just after
        validate_mechanism(load_pretrain_config(DEMO, overrides), DEMO)
    assert str(err.value).startswith(f"{DEMO}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_valid_mechanisms_pass():
    for overrides in (["MOCO.MECHANISM", "end_to_end", "MOCO.K", "64"], ["MOCO.MECHANISM", "memory_bank", "MOCO.K", "100"]):
        validate_mechanism(load_pretrain_config(DEMO, overrides), DEMO)


@pytest.mark.parametrize("mechanism, K", [("end_to_end", "8"), ("memory_bank", "12")])
def test_mechanism_trains_and_converts_like_moco(mechanism, K, tmp_path, capsys):
    data = tmp_path / "images"
    write_images(data, 16, seed=0)
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(write_tiny_config(tmp_path / "tiny.yaml")), "--data", str(data),
            "--output-dir", str(out), "SOLVER.EPOCHS", "1", "MOCO.MECHANISM", mechanism, "MOCO.K", K]
    assert main(args) == 0
    state = torch.load(out / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.encoder_k.") for k in state)
    assert ("module.bank" in state) == (mechanism == "memory_bank")
    assert main(["convert", str(out / "checkpoint_0001.pth.tar"), str(tmp_path / "init.pkl"),
                 "--encoder", "query"]) == 0
    assert "format: moco" in capsys.readouterr().out
    with open(tmp_path / "init.pkl", "rb") as f:
        converted = pickle.load(f)["model"]
    assert "stem.conv1.weight" in converted and not any("bank" in k for k in converted)


def test_memory_bank_larger_than_the_data_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "images"
    write_images(data, 16, seed=0)
    code = main(["pretrain", "--config", str(write_tiny_config(tmp_path / "tiny.yaml")), "--data", str(data),
                 "--output-dir", str(tmp_path / "o"), "MOCO.MECHANISM", "memory_bank", "MOCO.K", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "16 negatives need more than 16 images" in err and "\n" not in err
