"""The MoCo module (He et al., CVPR 2020, Algorithm 1): a query encoder trained by
back-propagation, a key encoder that is its momentum (EMA) copy, and a queue of past keys
that serve as negatives for the InfoNCE loss.

Why a queue and a momentum encoder: the dictionary of negatives can be much larger than
a batch (K = 65536), and keys encoded a few hundred steps ago stay consistent with the
current ones because the key encoder changes slowly (m = 0.999).
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode

from mocobench import dist as mdist
from mocobench.resnet import ResNetShape, build_resnet
from mocobench.pretrain.shuffle_bn import SplitBatchNorm, gather_batches, shuffle_batch


def build_encoder(shape: ResNetShape, dim: int, mlp: bool, bn_groups: int = 1,
                  residual_bn_gamma: float = 1.0) -> nn.Module:
    """A torchvision ResNet whose fc is the projection head (v1: fc to dim; v2: MLP).

    The head keeps the name ``fc`` (``fc.0``/``fc.2`` for the MLP), as in the authors'
    builder, so trunk parameters keep torchvision's names and tools strip ``fc`` alone.
    """
    norm = partial(SplitBatchNorm, groups=bn_groups) if bn_groups > 1 else None
    net = build_resnet(shape, num_classes=dim, norm_layer=norm, residual_bn_gamma=residual_bn_gamma)
    if mlp:
        hidden = net.fc.in_features
        net.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), net.fc)
    return net


class QueueLogits(torch.autograd.Function):
    """``q @ queue`` without copying the queue (K = 65536 columns) every step.

    The enqueue that follows in the same forward overwrites the queue's columns
    [start, stop) in place, so the usual fix is a copy of the whole queue for backward.
    Forward keeps only the columns about to be overwritten (d x batch); backward uses the
    live queue elsewhere and those columns where it was overwritten. A second write
    into the queue before backward would make that wrong, so backward refuses it.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, queue: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        ctx.queue, ctx.start, ctx.stop, ctx.version = queue, start, stop, queue._version
        ctx.overwritten = queue[:, start:stop].clone()
        return q @ queue.to(q.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        queue, s, e = ctx.queue, ctx.start, ctx.stop
        if queue._version > ctx.version + 1:
            raise RuntimeError("the MoCo queue was written more than once between forward and backward")
        grad = grad.to(queue.dtype)
        grad_q = grad[:, s:e] @ ctx.overwritten.T
        if s > 0:
            grad_q = grad_q.addmm_(grad[:, :s], queue[:, :s].T)
        if e < queue.shape[1]:
            grad_q = grad_q.addmm_(grad[:, e:], queue[:, e:].T)
        return grad_q, None, None, None


class Contrastive(nn.Module):
    """What the training loop reads from every dictionary mechanism (MoCo, EndToEnd,
    MemoryBank): ``encoder_q``, the encoder SGD trains and checkpoints export;
    ``forward(im_q, im_k, index) -> (logits, labels)``; the dictionary's current keys; and
    the batch accuracy of the last step."""

    encoder_q: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (q / T, k) of the last step

    @property
    def batch_top1(self) -> torch.Tensor:
        """``batch_accuracy`` of the last step's queries and keys (NaN before any step)."""
        if self._last_batch is None:
            return torch.tensor(float("nan"))
        return batch_accuracy(*self._last_batch)

    def keys(self) -> torch.Tensor:
        """The dictionary's keys as columns (d, K), for the collapse monitor."""
        raise NotImplementedError


class MoCo(Contrastive):
    def __init__(self, encoder: nn.Module, dim: int = 128, K: int = 65536, m: float = 0.999,
                 T: float = 0.07, shuffle_bn: bool = True) -> None:
        super().__init__()
        self.K, self.m, self.T, self.shuffle_bn = K, m, T, shuffle_bn
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, for parameters only (BN buffers of the key
        encoder come from its own forward passes)."""
        keys, queries = list(self.encoder_k.parameters()), [p.detach() for p in self.encoder_q.parameters()]
        if keys[0].is_cuda:
            # a few fused kernels instead of three launches per parameter; the same
            # arithmetic bit for bit (an alpha-add or lerp would round differently)
            torch._foreach_mul_(keys, self.m)
            torch._foreach_add_(keys, torch._foreach_mul(queries, 1.0 - self.m))
        else:
            # on CPU the foreach form is no faster and its temporaries for every parameter
            # at once cost more; chunking for cache was no faster either (~15 ms at R50 on
            # an idle 2-core machine: not memory-bound there) (docs/NOTES.md, "Performance")
            for pk, pq in zip(keys, queries):
                pk.mul_(self.m).add_(pq * (1.0 - self.m))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest keys with this step's keys from every rank."""
        keys = gather_batches(keys)
        n = keys.shape[0]
        if self.K % n:
            raise ValueError(f"queue size K={self.K} is not divisible by the global batch {n}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + n] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.K

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 1+K) of [positive, K negatives] / T, and labels (N,) all 0 (the positive).

        As in the authors' builder, the momentum update runs here, before the keys are
        encoded, from the query parameters the previous optimizer step left. ``index``
        (the images' dataset indices) is not needed here.
        """
        q = self.encoder_q(im_q)
        with torch.no_grad():
            self.momentum_update()
            k = encode_keys(self.encoder_k, im_k, self.shuffle_bn)
        return self.contrast(q, k)

    def keys(self) -> torch.Tensor:
        return self.queue

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The InfoNCE logits of encoded queries and keys (both unnormalised), then the
        enqueue: MoCo's own work after the encoders (the benchmark times it alone)."""
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        q = q / self.T  # scale the (N, d) queries, not the (N, 1+K) logits
        l_pos = (q * k).sum(dim=1, keepdim=True)
        start = int(self.queue_ptr)
        l_neg = QueueLogits.apply(q, self.queue, start, start + k.shape[0] * mdist.world_size())
        logits = torch.cat([l_pos, l_neg.to(l_pos.dtype)], dim=1)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._last_batch = (q.detach(), k)  # kept, not scored: batch_top1 is read once per log period
        self.enqueue(k)
        return logits, labels


def encode_keys(encoder: nn.Module, im_k: torch.Tensor, shuffle_bn: bool) -> torch.Tensor:
    """``encoder(im_k)``, through a shuffled batch when ``shuffle_bn`` (so no key shares BN
    statistics with its own query); differentiable when the encoder is."""
    if not shuffle_bn:
        return encoder(im_k)
    shuffled, unshuffle = shuffle_batch(im_k)
    return unshuffle(encoder(shuffled))


def cfg_encoder(cfg: CfgNode, shape: ResNetShape) -> nn.Module:
    """The query encoder a pretraining config describes (every mechanism starts from it)."""
    c = cfg.MOCO
    return build_encoder(shape, c.DIM, c.MLP, c.SPLIT_BN_GROUPS, cfg.MODEL.RESIDUAL_BN_GAMMA)


def build_moco(cfg: CfgNode, shape: ResNetShape) -> MoCo:
    c = cfg.MOCO
    return MoCo(cfg_encoder(cfg, shape), dim=c.DIM, K=c.K, m=c.M, T=c.T, shuffle_bn=c.SHUFFLE_BN)


@torch.no_grad()
def key_similarity(queue: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of queued keys (self-pairs included), from
    the norm of their mean in O(dK): |mean k|^2 = mean_ij k_i . k_j for unit keys.

    Why log it: it is the collapse monitor. Near 1, every image gets the same embedding,
    the logits become equal and the loss climbs to ln(1+K) whatever the instance accuracy
    of a moment says; the paper's recipe at demo scale did exactly that (docs/NOTES.md, "MoCo at demo scale").
    """
    return float(queue.float().mean(dim=1).pow(2).sum())


def batch_accuracy(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """How often a query's own key beats the other keys of the same batch.

    Why besides ``instance_accuracy``: the queue holds keys of earlier steps, so when the
    encoder drifts, a query can pick its positive out of the queue by recency alone (the
    newest key wins) and the queue accuracy reads ~100% while nothing is learned. Keys of
    one batch are all equally new, so only what the images show separates them.
    """
    sim = q.detach() @ k.T
    return (sim.argmax(dim=1) == torch.arange(len(q), device=q.device)).float().mean()


def instance_accuracy(logits: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """Top-1 of the instance-discrimination task: how often the positive (column ``labels``,
    default 0) beats all K negatives."""
    target = 0 if labels is None else labels
    return (logits.argmax(dim=1) == target).float().mean().item()
