"""Strict YAML configs in detectron2's style: a defaults tree, ``_BASE_`` inheritance and
``KEY VALUE`` command-line overrides, on fvcore's CfgNode.

Why strict: a misspelled key that is silently ignored runs the wrong experiment for
hours. Every key of every file in a ``_BASE_`` chain is checked against the defaults tree
before it is merged, so the error names the key *and the file it is in*.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.resources import find_config

BASE_KEY = "_BASE_"


class ConfigError(UserError):
    """A config file or override that cannot be honoured."""


def load_defaults(path: str | os.PathLike) -> CfgNode:
    """Read a defaults tree (plain YAML, no ``_BASE_``) into a mutable CfgNode."""
    data = _read_yaml(Path(path))
    cfg = CfgNode(data, new_allowed=False)
    _literal_tuples(cfg)
    return cfg


def _literal_tuples(node: CfgNode) -> None:
    """Decode string literals such as ``(800,)`` in a defaults file, as yacs does for merges."""
    for key, value in list(node.items()):
        if isinstance(value, CfgNode):
            _literal_tuples(value)
        elif isinstance(value, str) and value[:1] in "([" and value[-1:] in ")]":
            node[key] = CfgNode._decode_cfg_value(value)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def config_chain(path: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The files of a ``_BASE_`` chain, outermost base first, each with its own keys."""
    chain: list[tuple[Path, dict]] = []
    seen: set[Path] = set()
    current: Path | None = find_config(path).resolve()
    while current is not None:
        if current in seen:
            raise ConfigError(f"{current}: _BASE_ chain loops back to this file")
        seen.add(current)
        data = _read_yaml(current)
        base = data.pop(BASE_KEY, None)
        chain.append((current, data))
        if base is None:
            current = None
        else:
            base = Path(os.path.expanduser(str(base)))
            current = (base if base.is_absolute() else current.parent / base).resolve()
    return chain[::-1]


def check_keys(data: dict, defaults: CfgNode, source: str, prefix: str = "") -> None:
    """Raise ConfigError naming the first key of ``data`` that ``defaults`` does not have."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in defaults:
            hint = _close_match(key, defaults.keys())
            raise ConfigError(f"{source}: unknown config key '{full}'{hint}")
        if isinstance(defaults[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' is a section; give it a mapping, not {value!r}")
            check_keys(value, defaults[key], source, full + ".")


def _close_match(key: str, candidates: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def merge_file(cfg: CfgNode, path: str | os.PathLike) -> CfgNode:
    """Merge a config file (and its ``_BASE_`` chain) into ``cfg`` in place, strictly."""
    for file, data in config_chain(path):
        check_keys(data, cfg, str(file))
        try:
            cfg.merge_from_other_cfg(CfgNode(data))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{file}: {_one_line(e)}") from None
    return cfg


def merge_overrides(cfg: CfgNode, overrides: Sequence[str], source: str = "command line") -> CfgNode:
    """Apply ``KEY VALUE`` pairs (as given after the options on a command line)."""
    if len(overrides) % 2:
        raise ConfigError(f"{source}: overrides come in KEY VALUE pairs, got an odd number: {list(overrides)}")
    for key, value in zip(overrides[0::2], overrides[1::2]):
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                raise ConfigError(f"{source}: unknown config key '{key}'"
                                  + _close_match(part, node.keys() if isinstance(node, CfgNode) else []))
            if i < len(parts) - 1:
                node = node[part]
        try:
            cfg.merge_from_list([key, value])
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise ConfigError(f"{source}: {key} {value}: {_one_line(e)}") from None
    return cfg


def load_config(defaults: CfgNode, path: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> CfgNode:
    """defaults <- file chain <- overrides; returns a new, unfrozen CfgNode."""
    cfg = defaults.clone()
    if path is not None:
        merge_file(cfg, path)
    merge_overrides(cfg, overrides)
    return cfg


def differing_keys(cfg: CfgNode, defaults: CfgNode, prefix: str = "") -> dict[str, Any]:
    """Flattened keys whose value differs from the defaults (e.g. to refuse unhonoured ones)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            out.update(differing_keys(value, defaults.get(key, CfgNode()), full + "."))
        elif key not in defaults or _norm(defaults[key]) != _norm(value):
            out[full] = value
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    return v


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split())


class Rule(NamedTuple):
    """A value a key may take: ``allowed`` says it in words for the error message."""
    test: Callable[[Any], bool]
    allowed: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _number(v) and v >= low, f">= {low:g}")


def between(low: float, high: float, high_open: bool = False) -> Rule:
    """``low <= v <= high`` (``< high`` when ``high_open``)."""
    return Rule(lambda v: _number(v) and low <= v and (v < high if high_open else v <= high),
                f"in [{low:g}, {high:g}{')' if high_open else ']'}")


FINITE = Rule(_number, "a finite number")
POSITIVE = Rule(lambda v: _number(v) and v > 0, "> 0")
NON_NEGATIVE = at_least(0)
PROBABILITY = between(0, 1)


def each(rule: Rule, length: int | None = None) -> Rule:
    """A non-empty list (of ``length`` items, if given) whose every item passes ``rule``."""
    def test(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) > 0 and (length is None or len(v) == length)
                and all(rule.test(x) for x in v))
    size = f"{length} " if length else "one or more "
    return Rule(test, f"{size}values, each {rule.allowed}")


def increasing(rule: Rule) -> Rule:
    """A list (possibly empty) of values passing ``rule``, strictly increasing."""
    def test(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and all(rule.test(x) for x in v)
                and all(a < b for a, b in zip(v, v[1:])))
    return Rule(test, f"strictly increasing values, each {rule.allowed}")


def config_value(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_rules(cfg: CfgNode, rules: dict[str, Rule], source: str | os.PathLike) -> None:
    """ConfigError naming the first key whose value breaks its rule, the value, and what is allowed."""
    for key, rule in rules.items():
        value = config_value(cfg, key)
        if not rule.test(value):
            raise ConfigError(f"{source}: {key} {_shown(value)} is not allowed: must be {rule.allowed}")


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
