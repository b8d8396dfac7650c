"""The synthetic data's parameters (classes, appearance, scales), read from
``synth_scales.yaml`` and checked on load.

Why a typed, strict reader: the same file drives the tests (``tiny``) and the demo
(``demo``); a misspelled key silently falling back to a default would change the data
every downstream number is computed on. Every mapping here is matched field by field
against the dataclasses below, and the error names the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mocobench import UserError

SCALES_FILE = Path(__file__).with_name("synth_scales.yaml")

Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class ObjectClass:
    name: str
    shape: str
    texture: str
    coco_id: int
    supercategory: str


@dataclass(frozen=True)
class Render:
    hue_jitter: float
    saturation: Range
    value: Range
    shade: Range
    texture_period: Range
    background_saturation: Range
    background_value: Range
    clutter_saturation: Range
    clutter_value: Range
    lines_per_kpx: float
    blobs_per_kpx: float
    noise_std: float


@dataclass(frozen=True)
class SceneSpec:
    short_side: IntRange
    max_aspect: float
    portrait_prob: float
    objects: IntRange
    object_scale: Range
    truncate_prob: float
    min_inside: float
    max_occlusion: float
    difficult_min_side: int
    difficult_visible: float


@dataclass(frozen=True)
class Images:
    count: int
    scene: SceneSpec


@dataclass(frozen=True)
class Splits:
    splits: dict[str, int]
    scene: SceneSpec


@dataclass(frozen=True)
class Scale:
    classes: int
    unlabeled: Images
    classify: Splits
    voc2007: Splits
    voc2012: Splits
    coco: Splits
    coco_keypoints: Splits  # stick figures, written only when asked (``data synth --keypoints``)
    cityscapes: Splits      # street-like frames, written only when asked (``data synth --cityscapes``)


@dataclass(frozen=True)
class SynthSpec:
    jpeg_quality: int
    render: Render
    classes: list[ObjectClass]
    templates: list[Any]  # holds the YAML anchors the scales refer to; not used after loading
    scales: dict[str, Scale]


# The splits each layout has in reality (VOC2012 publishes no test annotations).
LAYOUT_SPLITS = {
    "classify": ("train", "val"),
    "voc2007": ("train", "val", "test"),
    "voc2012": ("train", "val"),
    "coco": ("train2017", "val2017"),
    "coco_keypoints": ("train2017", "val2017"),
    "cityscapes": ("train", "val"),
}


def load_synth_spec(path: str | os.PathLike = SCALES_FILE) -> SynthSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read: {' '.join(str(e).split())}") from None
    spec = _build(SynthSpec, data, str(path), "")
    _check(spec, str(path))
    return spec


def _build(kind: Any, value: Any, source: str, where: str) -> Any:
    """Convert plain YAML data to ``kind`` (a dataclass or a typing form), strictly."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{where or '<top>'}' must be a mapping, got {value!r}")
        hints = typing.get_type_hints(kind)
        names = [f.name for f in dataclasses.fields(kind)]
        for key in value:
            if key not in names:
                raise UserError(f"{source}: unknown key '{where}{key}' (expected one of {names})")
        missing = [n for n in names if n not in value]
        if missing:
            raise UserError(f"{source}: '{where or '<top>'}' is missing key(s) {missing}")
        return kind(**{n: _build(hints[n], value[n], source, f"{where}{n}.") for n in names})
    label = where.rstrip(".")
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise UserError(f"{source}: '{label}' must be a list of {len(args)} numbers, got {value!r}")
        out = tuple(_build(a, v, source, where) for a, v in zip(args, value))
        if out[0] > out[1]:
            raise UserError(f"{source}: '{label}' is a [low, high] range, got {value!r}")
        return out
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: '{label}' must be a list, got {value!r}")
        return [_build(args[0], v, source, f"{where}{i}.") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise UserError(f"{source}: '{label}' must be a non-empty mapping, got {value!r}")
        return {str(k): _build(args[1], v, source, f"{where}{k}.") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{source}: '{label}' must be {kind.__name__}, got {value!r}")
    if kind in (int, float) and value < 0:
        raise UserError(f"{source}: '{label}' must not be negative, got {value!r}")
    return value


def _check(spec: SynthSpec, source: str) -> None:
    from mocobench.transfer.datasets.shapes import SHAPES, TEXTURES

    if not 1 <= spec.jpeg_quality <= 100:
        raise UserError(f"{source}: jpeg_quality must be in 1..100, got {spec.jpeg_quality}")
    for what, values in (("name", [c.name for c in spec.classes]), ("coco_id", [c.coco_id for c in spec.classes])):
        if len(set(values)) != len(values):
            raise UserError(f"{source}: class {what}s must be unique, got {values}")
    for c in spec.classes:
        if c.shape not in SHAPES:
            raise UserError(f"{source}: class '{c.name}': unknown shape '{c.shape}' (known: {sorted(SHAPES)})")
        if c.texture not in TEXTURES:
            raise UserError(f"{source}: class '{c.name}': unknown texture '{c.texture}' (known: {sorted(TEXTURES)})")
        if c.coco_id < 1:
            raise UserError(f"{source}: class '{c.name}': coco_id must be >= 1")
    for name, scale in spec.scales.items():
        if not 1 <= scale.classes <= len(spec.classes):
            raise UserError(f"{source}: scales.{name}.classes must be in 1..{len(spec.classes)}")
        for layout, allowed in LAYOUT_SPLITS.items():
            unknown = set(getattr(scale, layout).splits) - set(allowed)
            if unknown:
                raise UserError(f"{source}: scales.{name}.{layout}.splits: unknown split(s) "
                                f"{sorted(unknown)} (this layout has {list(allowed)})")
        for part in ("unlabeled", *LAYOUT_SPLITS):
            _check_scene(getattr(scale, part).scene, source, f"scales.{name}.{part}.scene")


def _check_scene(scene: SceneSpec, source: str, where: str) -> None:
    fractions = ("portrait_prob", "truncate_prob", "min_inside", "max_occlusion", "difficult_visible")
    for key in fractions:
        if not 0.0 <= getattr(scene, key) <= 1.0:
            raise UserError(f"{source}: {where}.{key} must be in [0, 1]")
    if scene.short_side[0] < 16 or scene.max_aspect < 1.0 or scene.objects[0] < 1:
        raise UserError(f"{source}: {where}: need short_side >= 16, max_aspect >= 1, objects >= 1")
    if not (0.0 < scene.object_scale[0] and scene.object_scale[1] <= 1.0):
        raise UserError(f"{source}: {where}.object_scale must lie in (0, 1]")
