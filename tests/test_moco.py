"""The MoCo module: logits and labels, InfoNCE value, momentum update, queue, split BN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mocobench.resnet import ResNetShape
from mocobench.pretrain.moco import MoCo, QueueLogits, batch_accuracy, build_encoder, instance_accuracy, key_similarity
from mocobench.pretrain.shuffle_bn import SplitBatchNorm

SHAPE = ResNetShape(50, 8, 16, 4)


def tiny_moco(K: int = 8, dim: int = 16, m: float = 0.9, mlp: bool = True, groups: int = 1) -> MoCo:
    torch.manual_seed(0)
    return MoCo(build_encoder(SHAPE, dim, mlp, groups), dim=dim, K=K, m=m, T=0.2)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_logits_are_positive_then_queue_and_labels_are_zero():
    moco = tiny_moco(K=8)
    logits, labels = moco(images(4, 1), images(4, 2))
    assert logits.shape == (4, 1 + 8)
    assert labels.shape == (4,) and labels.dtype == torch.long and bool((labels == 0).all())


def test_loss_is_log_1_plus_K_when_every_logit_is_equal():
    K = 8
    moco = tiny_moco(K=K).eval()
    x = images(1, 3)
    with torch.no_grad():
        key = F.normalize(moco.encoder_k(x), dim=1)
    moco.queue.copy_(key.T.repeat(1, K))
    logits, labels = moco(x, x)
    assert torch.allclose(logits, logits[:, :1].expand_as(logits), atol=1e-5)
    assert abs(F.cross_entropy(logits, labels).item() - math.log(1 + K)) < 1e-5


def test_key_encoder_is_momentum_average_of_query_encoder():
    moco = tiny_moco(m=0.9)
    opt = torch.optim.SGD(moco.encoder_q.parameters(), lr=0.5)
    logits, labels = moco(images(4, 4), images(4, 5))
    F.cross_entropy(logits, labels).backward()
    opt.step()
    key_before = [p.detach().clone() for p in moco.encoder_k.parameters()]
    query = [p.detach().clone() for p in moco.encoder_q.parameters()]
    assert any(not torch.equal(k, q) for k, q in zip(key_before, query))
    moco(images(4, 6), images(4, 7))
    for after, k, q in zip(moco.encoder_k.parameters(), key_before, query):
        assert torch.equal(after, k * 0.9 + q * (1 - 0.9))
        assert not after.requires_grad
    assert all(p.grad is None for p in moco.encoder_k.parameters())


def test_queue_pointer_wraps_and_queue_holds_newest_keys():
    moco = tiny_moco(K=8, dim=2)
    steps = [torch.full((4, 2), float(i)) for i in (1, 2, 3)]
    moco.enqueue(steps[0])
    assert int(moco.queue_ptr) == 4
    moco.enqueue(steps[1])
    assert int(moco.queue_ptr) == 0
    moco.enqueue(steps[2])
    assert int(moco.queue_ptr) == 4
    assert torch.equal(moco.queue[:, :4], steps[2].T) and torch.equal(moco.queue[:, 4:], steps[1].T)
    with pytest.raises(ValueError, match="not divisible"):
        moco.enqueue(torch.zeros(3, 2))


def test_forward_enqueues_its_keys():
    moco = tiny_moco(K=8).eval()
    x_k = images(4, 8)
    moco(images(4, 9), x_k)
    with torch.no_grad():
        expected = F.normalize(moco.encoder_k(x_k), dim=1)
    assert torch.allclose(moco.queue[:, :4].T, expected, atol=1e-6)


def test_split_batchnorm_normalises_each_sub_batch_on_its_own():
    torch.manual_seed(0)
    split, plain = SplitBatchNorm(3, groups=2), nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5) * torch.arange(1, 9.0).view(8, 1, 1, 1)
    out = split(x)
    for g in range(2):
        ref = nn.BatchNorm2d(3)
        assert torch.allclose(out[g::2], ref(x[g::2]), atol=1e-5)
    means = torch.stack([x[g::2].mean(dim=(0, 2, 3)) for g in range(2)]).mean(0)
    assert torch.allclose(split.running_mean, 0.1 * means, atol=1e-6)
    assert set(split.state_dict()) == set(plain.state_dict())


def test_queue_logits_backward_uses_the_queue_as_it_was_before_the_enqueue():
    torch.manual_seed(0)
    queue, q = torch.randn(4, 8), torch.randn(2, 4, requires_grad=True)
    copy_q = q.detach().clone().requires_grad_()
    (copy_q @ queue.clone()).square().sum().backward()
    out = QueueLogits.apply(q, queue, 2, 4)
    queue[:, 2:4] = 5.0  # what enqueue does between forward and backward
    out.square().sum().backward()
    assert torch.allclose(q.grad, copy_q.grad, atol=1e-6)
    out = QueueLogits.apply(q, queue, 2, 4)
    queue[:, 2:4] = 6.0
    queue[:, 4:6] = 6.0
    with pytest.raises(RuntimeError, match="more than once"):
        out.sum().backward()


def test_key_similarity_is_the_mean_pairwise_cosine():
    keys = F.normalize(torch.randn(16, 40), dim=0)
    assert abs(key_similarity(keys) - (keys.T @ keys).mean().item()) < 1e-6
    assert abs(key_similarity(F.normalize(torch.ones(16, 40), dim=0)) - 1.0) < 1e-6  # collapsed


def test_batch_accuracy_sees_through_a_recency_shortcut():
    """Queries and keys that share only a new common direction (the queue holds an old one):
    the positive beats every queued key, yet it is no closer to its query than other keys."""
    torch.manual_seed(0)
    moco = tiny_moco(K=64, dim=16)
    new, old = torch.eye(16)[0], torch.eye(16)[1]
    moco.queue.copy_(F.normalize(old[:, None] + 0.1 * torch.randn(16, 64), dim=0))
    q = new + 0.1 * torch.randn(32, 16)
    k = new + 0.1 * torch.randn(32, 16)  # independent of q: nothing instance-specific
    logits, _ = moco.contrast(q, k)
    assert instance_accuracy(logits) == 1.0
    assert moco.batch_top1.item() < 0.25
    assert batch_accuracy(F.normalize(q, dim=1), F.normalize(q, dim=1)).item() == 1.0


def test_residual_bn_gamma_config_reaches_both_encoders():
    """The demo config's MODEL.RESIDUAL_BN_GAMMA: each bottleneck's last BN gamma starts at
    0.5 (so does the momentum copy's), every other gamma at 1."""
    from pathlib import Path

    from mocobench.pretrain.config import load_pretrain_config, resnet_shape
    from mocobench.pretrain.moco import build_moco
    demo = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "moco_v2_demo.yaml"
    cfg = load_pretrain_config(demo, ["MOCO.K", "64"])
    moco = build_moco(cfg, resnet_shape(cfg))
    for encoder in (moco.encoder_q, moco.encoder_k):
        last = [p for n, p in encoder.named_parameters() if n.endswith("bn3.weight")]
        assert len(last) == 16 and all(torch.all(p == 0.5) for p in last)
        assert torch.all(encoder.bn1.weight == 1)
    plain = load_pretrain_config(demo, ["MOCO.K", "64", "MODEL.RESIDUAL_BN_GAMMA", "1.0"])
    assert torch.all(build_moco(plain, resnet_shape(plain)).encoder_q.layer1[0].bn3.weight == 1)
