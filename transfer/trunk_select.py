"""Find the ResNet trunk in a checkpoint of any layout in ``checkpoint_layouts``.

Each layout's candidate encoders are read out of the file (torchvision names); the layout
whose trunk prefix matches the most trunk parameters wins (its marker keys break ties). Two
layouts that read different trunks, or one file with two different encoders (student and
teacher, query and key, online and target), are errors naming the candidates and where they sit
(and which one the framework's own export takes), to be chosen with --format / --encoder /
--key: nothing is taken unasked. Encoders that hold the same tensors (DenseCL's backbone is
encoder_q.0, a MoCo file saved before the key encoder moved) are one. A parameter reached twice
is an error; every key left out is reported, those that are neither another encoder nor a known
head separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from mocobench import UserError
from mocobench.conventions import DDP_PREFIX
from mocobench.transfer.checkpoint_layouts import BY_NAME, LAYOUTS, Layout, Spec

TRUNK_NAME = re.compile(r"^(conv1\.weight|bn1\.[a-z_]+|layer[1-4]\.\d+\..+)$")
CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Not trunk, in any framework: the classifier / projector on top of a trunk, and training state.
COMMON_HEADS = ("fc.", "head", "projector", "projection", "predictor", "prototypes", "queue", "classifier")


@dataclass
class Candidate:
    layout: Layout
    encoder: str
    spec: Spec
    state: Mapping  # the state dict it was read from
    trunk: dict[str, Any]  # torchvision name -> tensor
    sources: dict[str, str]  # torchvision name -> key in ``state``
    under: list[str] = field(default_factory=list)  # other keys under its prefix (its fc / projector)

    @property
    def where(self) -> str:
        """Where its trunk sits, as found: 'state_dict/module.encoder_q.*'."""
        path, prefix = self.spec
        if self.sources and all(s.startswith(DDP_PREFIX + prefix) for s in self.sources.values()):
            prefix = DDP_PREFIX + prefix
        return "/".join(path) + ("/" if path else "") + f"{prefix}*"

    def relative(self, key: str) -> str:
        """``key`` without the DDP prefix and this encoder's prefix (module.encoder_q.fc.0.weight -> fc.0.weight)."""
        return key.removeprefix(DDP_PREFIX).removeprefix(self.spec[1])

    def qualified(self, key: str, chosen: "Candidate") -> str:
        """``key`` named with the path to its state dict when that is not ``chosen``'s (student/module.backbone.x)."""
        return key if self.state is chosen.state else "/".join(self.spec[0]) + "/" + key

    @property
    def score(self) -> int:
        return len(self.trunk)

    def same_tensors(self, other: "Candidate") -> bool:
        return self.trunk.keys() == other.trunk.keys() and all(
            _equal(self.trunk[k], other.trunk[k]) for k in self.trunk)


class EncoderChoiceNeeded(UserError):
    """A file holding two different encoders, none chosen. ``found`` is the message up to the
    advice (file, candidates, where they sit), ``hint`` the encoder the framework's own export
    takes (or None), ``choices`` the candidates' names; the message ends with how to choose."""

    def __init__(self, found: str, hint: Optional[str], exporter: str, choices: list[str],
                 keys: Optional[list[str]] = None) -> None:
        self.found, self.hint, self.choices = found, hint, choices
        self.taken = f"{exporter} takes {hint}" if hint else ""
        advice = f"{self.taken}: add --encoder {hint}" if hint else f"choose one with --encoder {'|'.join(choices)}"
        super().__init__(f"{found}; {advice}" + (f" (or --key {'|'.join(keys)})" if keys else ""))


@dataclass
class Selection:
    """The trunk chosen, and what was left out of the state dict it came from."""

    chosen: Candidate
    others: list[Candidate]  # the other encoders, left out
    heads: list[str]
    extras: list[str]  # neither trunk, another encoder nor a known head
    notes: list[str]

    @property
    def dropped(self) -> list[str]:
        mine = set(self.chosen.sources.values())
        other = sorted({c.qualified(s, self.chosen) for c in self.others for s in (*c.sources.values(), *c.under)}
                       - mine)
        return other + self.heads + self.extras


def select_trunk(path: Path, obj: Mapping, fmt: str = "auto", key: Optional[str] = None,
                 encoder: Optional[str] = None) -> Selection:
    root = _nested(path, obj, key) if key else obj
    layouts = LAYOUTS if fmt == "auto" else (BY_NAME[fmt],)
    found = {layout.name: _candidates(path, root, layout, key is not None) for layout in LAYOUTS}
    ranked = sorted((lay for lay in layouts if found[lay.name]),
                    key=lambda lay: (-max(c.score for c in found[lay.name]), -_markers(root, lay, found[lay.name])))
    if not ranked:
        if fmt != "auto":
            best = [lay for lay in LAYOUTS if found[lay.name]]
            if best:
                best.sort(key=lambda lay: -max(c.score for c in found[lay.name]))
                raise UserError(f"{path}: --format {fmt} given, but the file looks like {best[0].name} weights "
                                f"(no {fmt} trunk: {_where(BY_NAME[fmt])})")
        raise UserError(f"{path}: not a ResNet checkpoint: no trunk (conv1.weight, layer1.*) under any known layout "
                        f"prefix{' in ' + key if key else ''}; found: {_shown(root)}")
    top = ranked[0]
    rank = (max(c.score for c in found[top.name]), _markers(root, top, found[top.name]))
    tied = [lay for lay in ranked if (max(c.score for c in found[lay.name]),
                                      _markers(root, lay, found[lay.name])) == rank]
    firsts = [_first(found[lay.name], lay) for lay in tied]
    differing = [lay.name for lay, c in zip(tied, firsts) if not c.same_tensors(firsts[0])]
    if differing:
        raise UserError(f"{path}: reads as {len(tied)} layouts holding different trunks: "
                        + ", ".join(f"{lay.name} ({c.where})" for lay, c in zip(tied, firsts))
                        + "; choose one with --format")
    return _choose(path, top, found[top.name], encoder, fmt == "auto")


def _choose(path: Path, layout: Layout, found: list[Candidate], encoder: Optional[str], auto: bool) -> Selection:
    distinct: list[Candidate] = []
    for c in found:
        if not any(c.same_tensors(d) for d in distinct):
            distinct.append(c)
    notes = [f"format: {layout.name} ({'auto-detected' if auto else 'as given'})"]
    if encoder is not None:
        if encoder not in layout.encoders:
            raise UserError(f"{path}: --encoder {encoder}: {layout.name} checkpoints hold "
                            f"{' / '.join(layout.encoders)}")
        hits = [c for c in found if c.encoder == encoder]
        if not hits:
            raise UserError(f"{path}: --encoder {encoder}: no {encoder} encoder in this {layout.name} file "
                            f"({_where(layout, encoder)}); it holds {', '.join(c.encoder for c in found)}")
        chosen, how = hits[0], "as given"
    elif len(distinct) == 1:
        chosen, how = distinct[0], "the only one"
    else:
        names = [c.encoder for c in distinct]
        # --key chooses too where each encoder is a state dict of its own (DINO's teacher / student)
        keys = ["/".join(c.spec[0]) for c in distinct]
        separate = layout.reader is None and all(keys) and len(set(keys)) == len(keys)
        raise EncoderChoiceNeeded(
            f"{path}: holds {len(distinct)} candidate encoders: "
            + ", ".join(f"{c.encoder} ({c.where}, {c.score} tensors)" for c in distinct),
            layout.exported if layout.exported in names else None, layout.exporter, names,
            keys if separate else None)
    others = [c for c in found if c is not chosen]
    if len(layout.encoders) > 1 or others:
        left = sorted({c.encoder for c in others if not c.same_tensors(chosen)})
        notes.append(f"encoder: {chosen.encoder} ({chosen.where}; {how})"
                     + (f"; left out: {', '.join(left)}" if left else ""))
    heads, extras = _leftovers(path, layout, chosen, others)
    if extras:
        notes.append(f"{len(extras)} keys that are neither trunk nor a known head or projector, left out: "
                     + ", ".join(extras[:8]) + (f" ... (+{len(extras) - 8} more)" if len(extras) > 8 else ""))
    return Selection(chosen, others, heads, extras, notes)


def _candidates(path: Path, root: Mapping, layout: Layout, rerooted: bool) -> list[Candidate]:
    if layout.reader is not None:  # not a PyTorch state dict: read into torchvision-named ones first
        root = layout.reader(path, root)
        if root is None:
            return []
        rerooted = False  # the reader takes the file or the dict --key names alike
    out = []
    for name, specs in layout.encoders.items():
        for spec in specs:
            where = ((), spec[1]) if rerooted else spec
            state = _dig(root, where[0])
            if state is None:
                continue
            c = _read(path, layout, name, where, state)
            if c.score:
                out.append(c)
                break
    return out


def _read(path: Path, layout: Layout, encoder: str, spec: Spec, state: Mapping) -> Candidate:
    prefix = spec[1]
    trunk, sources, under = {}, {}, []
    for raw in state:
        k = str(raw)
        for p in (DDP_PREFIX + prefix, prefix):
            if k.startswith(p):
                rest = k[len(p):]
                break
        else:
            continue
        if layout.children and rest.split(".", 1)[0] in CHILDREN and "." in rest:
            head, tail = rest.split(".", 1)
            rest = f"{CHILDREN[head]}.{tail}"
        if TRUNK_NAME.match(rest):
            if rest in trunk:
                raise UserError(f"{path}: {rest} is reached twice, from {sources[rest]} and {k} "
                                f"({layout.name} layout, prefix {prefix!r}); keep one")
            trunk[rest], sources[rest] = state[raw], k
        elif prefix:
            under.append(k)  # its classifier / projector (fc.*)
    return Candidate(layout, encoder, spec, state, trunk, sources, under)


def _leftovers(path: Path, layout: Layout, chosen: Candidate, others: list[Candidate]) -> tuple[list[str], list[str]]:
    """(known heads, the rest) of the chosen state dict's keys outside every encoder's trunk, and of
    the keys under the chosen prefix that are not trunk (named without the prefix)."""
    known = layout.heads + COMMON_HEADS
    same = [c for c in others if c.state is chosen.state]
    for spec in layout.encoders[chosen.encoder]:  # the same module registered twice (BYOL's net, DenseCL's encoder_q.0)
        if spec[1] and spec[1] != chosen.spec[1]:
            alias = _read(path, layout, chosen.encoder, (chosen.spec[0], spec[1]), chosen.state)
            if alias.score and alias.same_tensors(chosen):
                same.append(alias)
    prefixes = tuple(c.spec[1] for c in (chosen, *same) if c.spec[1])
    used = set(chosen.sources.values()) | {s for c in same for s in (*c.sources.values(), *c.under)}
    heads, extras = [], []
    for k in [str(k) for k in chosen.state if str(k) not in used]:
        bare = k.removeprefix(DDP_PREFIX)
        if k in chosen.under:
            bare = chosen.relative(k)
        elif bare.startswith(prefixes):
            continue
        (heads if bare.startswith(known) or bare.endswith("num_batches_tracked") else extras).append(bare)
    return heads, extras


def _markers(root: Mapping, layout: Layout, found: list[Candidate]) -> int:
    keys = {str(k) for k in root}
    for c in found:
        keys |= {str(k).removeprefix(DDP_PREFIX) for k in c.state}
    return sum(any(k == m or k.startswith(m) for k in keys) for m in layout.markers)


def _first(found: list[Candidate], layout: Layout) -> Candidate:
    return next((c for c in found if c.encoder == layout.exported), found[0])


def _dig(obj: Any, path: tuple[str, ...]) -> Optional[Mapping]:
    for k in path:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    return obj if isinstance(obj, Mapping) else None


def _nested(path: Path, obj: Mapping, key: str) -> Mapping:
    found = _dig(obj, tuple(key.split("/")))
    if found is None:
        nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
        raise UserError(f"{path}: --key {key}: no such dict in the file (its top-level dicts: "
                        f"{', '.join(nested) or 'none'}; nest with '/', e.g. classy_state_dict/base_model)")
    return found


def _where(layout: Layout, encoder: Optional[str] = None) -> str:
    specs = [s for name, ss in layout.encoders.items() if encoder in (None, name) for s in ss]
    return ", ".join("/".join(p) + ("/" if p else "") + f"{prefix}*" for p, prefix in specs)


def _shown(root: Mapping) -> str:
    names = [str(k) for k in root]
    return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "") if names else "none"


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    a, b = (x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x) for x in (a, b))
    return a.shape == b.shape and bool(np.array_equal(a, b))
