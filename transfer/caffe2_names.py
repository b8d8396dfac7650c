"""Caffe2 (Detectron1 / MSRA) ResNet blob names -> detectron2 names.

The paper's supervised baseline, detectron2's ImageNetPretrained/MSRA/R-50.pkl, stores
Caffe2 blob names (``res2_0_branch2a_w``, ``res_conv1_bn_s`` ...) and frozen-BN affines
without running statistics. detectron2 renames them at load time; we rename them once at
conversion so both engines read the same detectron2-named file.
"""

from __future__ import annotations

import re
from typing import Optional

_BLOCK = re.compile(r"^res([2-5])_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b)$")
_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_SUFFIX = {"w": ".weight", "b": ".bias", "bn_s": ".norm.weight", "bn_b": ".norm.bias"}
_STEM = {"conv1_w": "stem.conv1.weight", "conv1_b": "stem.conv1.bias",
         "res_conv1_bn_s": "stem.conv1.norm.weight", "res_conv1_bn_b": "stem.conv1.norm.bias"}


def looks_like_caffe2(names: list[str]) -> bool:
    return "conv1_w" in names or any(_BLOCK.match(n) for n in names)


def caffe2_to_d2(name: str) -> Optional[str]:
    """detectron2 name of a Caffe2 ResNet blob; None for anything else (fc1000, momenta)."""
    if name in _STEM:
        return _STEM[name]
    m = _BLOCK.match(name)
    if not m:
        return None
    stage, block, branch, kind = m.groups()
    return f"res{stage}.{block}.{_BRANCH[branch]}{_SUFFIX[kind]}"
