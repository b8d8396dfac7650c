"""The end-to-end mechanism (MoCo paper, Sec. 3.2 and Fig. 2a): keys come from the query
encoder itself, and the dictionary is the current batch.

Each query's positive is its own key; the other keys of the (global) batch are its
negatives, so K is tied to the batch size. Gradients flow through queries and keys
alike, which keeps the keys perfectly consistent but limits K to what fits in memory
(1024 on the paper's hardware).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mocobench import dist as mdist
from mocobench.pretrain.moco import Contrastive, encode_keys
from mocobench.pretrain.shuffle_bn import gather_with_grad


class EndToEnd(Contrastive):
    def __init__(self, encoder: nn.Module, T: float = 0.07, shuffle_bn: bool = True) -> None:
        super().__init__()
        self.T, self.shuffle_bn = T, shuffle_bn
        self.encoder_q = encoder
        self._keys = torch.empty(0, 0)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K) of each query against every key of the global batch (K = N x
        processes) / T, and labels (N,): the column of each query's own key."""
        q = F.normalize(self.encoder_q(im_q), dim=1) / self.T
        k = F.normalize(encode_keys(self.encoder_q, im_k, self.shuffle_bn), dim=1)
        everyone = gather_with_grad(k)
        logits = q @ everyone.T
        labels = torch.arange(len(q), device=q.device) + mdist.rank() * len(q)
        self._last_batch = (q.detach(), k.detach())
        self._keys = everyone.detach().T
        return logits, labels

    def keys(self) -> torch.Tensor:
        return self._keys
