"""Does a trunk look as it was built, never trained? Then a conversion would benchmark a random init.

The sign: every BN layer still holds its initial state (running mean 0, running var 1, a
constant scale and a zero shift), which no training step leaves. Frozen-BN weights (MSRA /
Caffe2, detectron2's FrozenBatchNorm2d) have mean 0 / var 1 too but a learned scale and shift,
so they pass. The conv weights' scale against He (fan_out) init is given as evidence.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np


def untrained_reason(model: Mapping[str, np.ndarray]) -> Optional[str]:
    """Why detectron2-named ``model`` looks untrained, or None when it does not."""
    norms = sorted({k.rsplit(".", 1)[0] for k in model if k.endswith(".norm.running_var")})
    if not norms:
        return None
    for norm in norms:
        mean, var = model.get(norm + ".running_mean"), model[norm + ".running_var"]
        weight, bias = model.get(norm + ".weight"), model.get(norm + ".bias")
        if mean is None or weight is None or bias is None:
            return None
        weight = np.asarray(weight)
        if (np.any(np.asarray(mean) != 0) or np.any(np.asarray(var) != 1) or np.any(np.asarray(bias) != 0)
                or (weight.size and np.any(weight != weight.flat[0]))):
            return None
    return (f"its trunk looks untrained: all {len(norms)} BN layers hold their initial state (running mean 0, "
            f"var 1, constant scale, zero shift) and the conv weights are {_conv_scale(model)} He init's scale; "
            "detection from it would measure a random init (pass --allow-untrained if that is what you want)")


def _conv_scale(model: Mapping[str, np.ndarray]) -> str:
    """Median ratio of each conv weight's std to He init's (normal, fan_out), e.g. '1.00x'."""
    ratios = []
    for name, w in model.items():
        w = np.asarray(w)
        if name.endswith(".weight") and w.ndim == 4 and w.size > 1:
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            ratios.append(float(w.std()) / np.sqrt(2.0 / fan_out))
    return f"{np.median(ratios):.2f}x" if ratios else "of unknown"
