"""Inference post-processing of the torchvision engine as detectron2 does it: masks pasted by
sampling pixel centres (>= 0.5), boxes scaled to the output image, clipped, empty ones dropped."""

from __future__ import annotations

import torch

from mocobench.transfer.engines.torchvision.inference import paste_masks, postprocess


def centres_within(lo: float, hi: float, n: int) -> torch.Tensor:
    centres = torch.arange(n) + 0.5
    return (centres >= lo) & (centres <= hi)


def test_pasted_mask_covers_the_pixel_centres_its_mask_covers():
    box = torch.tensor([[10.3, 5.2, 30.7, 20.9], [10.3, 5.2, 30.7, 20.9]])
    probs = torch.ones(2, 28, 28)
    probs[1, :, 14:] = 0  # left half only
    pasted = paste_masks(probs, box, (32, 40))
    assert pasted.dtype == torch.bool and pasted.shape == (2, 32, 40)
    rows = centres_within(5.2, 20.9, 32)
    assert torch.equal(pasted[0], rows[:, None] & centres_within(10.3, 30.7, 40)[None])
    assert torch.equal(pasted[1], rows[:, None] & centres_within(10.3, 20.5, 40)[None])


def test_probability_one_half_is_foreground():
    pasted = paste_masks(torch.full((1, 28, 28), 0.5), torch.tensor([[2.0, 2.0, 9.0, 9.0]]), (12, 12))
    assert pasted[0, 2:9, 2:9].all() and pasted.sum() == 49


def test_postprocess_scales_clips_and_drops_empty_boxes():
    det = {"boxes": torch.tensor([[4.0, 2.0, 20.0, 10.0], [30.0, 5.0, 40.0, 9.0], [1.0, 1.0, 8.0, 15.0]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([2, 0, 1]),
           "masks": torch.ones(3, 1, 14, 14)}
    out = postprocess(det, (16, 24), (32, 48))  # twice the size; box 2 starts past the right edge
    assert out["boxes"].tolist() == [[8.0, 4.0, 40.0, 20.0], [2.0, 2.0, 16.0, 30.0]]
    assert out["scores"].tolist() == [0.8999999761581421, 0.699999988079071]
    assert out["labels"].tolist() == [2, 1] and out["masks"].shape == (2, 32, 48)
    assert out["masks"][0].sum() == 32 * 16
