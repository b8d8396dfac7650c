"""The memory-bank mechanism (Wu et al. 2018, as compared in the MoCo paper, Sec. 3.2 and
Fig. 2b): one stored feature per training image, no key encoder.

A query's positive key is its own image's bank entry, its K negatives are entries drawn
at random from the bank, and after the step each image's entry moves towards its new
feature by a momentum average. Entries of one dictionary were written at different
epochs by different encoders, the inconsistency MoCo's momentum encoder removes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mocobench.pretrain.moco import Contrastive
from mocobench.pretrain.shuffle_bn import gather_batches


class MemoryBank(Contrastive):
    def __init__(self, encoder: nn.Module, num_images: int, dim: int = 128, K: int = 4096,
                 T: float = 0.07, m: float = 0.5) -> None:
        super().__init__()
        if K >= num_images:
            raise ValueError(f"{K} negatives need more than {num_images} images (one bank entry each)")
        self.K, self.T, self.m = K, T, m
        self.encoder_q = encoder
        self.register_buffer("bank", F.normalize(torch.randn(num_images, dim), dim=1))

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor | None,
                index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 1+K) of [own entry, K sampled entries] / T, labels (N,) all 0.

        One view per image, as in Wu et al.: ``im_k`` is not used. A sampled entry that is
        the query's own image is masked out (-inf), so it is never its own negative.
        """
        q = F.normalize(self.encoder_q(im_q), dim=1)
        sampled = torch.randint(len(self.bank), (self.K,), device=q.device)
        positive, negatives = self.bank[index], self.bank[sampled]
        scaled = q / self.T
        l_pos = (scaled * positive).sum(dim=1, keepdim=True)
        l_neg = (scaled @ negatives.T.to(scaled.dtype)).masked_fill(sampled[None, :] == index[:, None], float("-inf"))
        logits = torch.cat([l_pos, l_neg.to(l_pos.dtype)], dim=1)
        labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
        self._last_batch = (scaled.detach(), positive)
        self.update(gather_batches(q.detach()), gather_batches(index))
        return logits, labels

    @torch.no_grad()
    def update(self, features: torch.Tensor, index: torch.Tensor) -> None:
        """entry <- normalise(m * entry + (1 - m) * feature) for each image seen this step."""
        mixed = self.bank[index] * self.m + features.to(self.bank.dtype) * (1.0 - self.m)
        self.bank[index] = F.normalize(mixed, dim=1)

    def keys(self) -> torch.Tensor:
        return self.bank.T
