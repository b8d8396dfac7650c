"""The package's shape: imports run one way, every reference resolves inside the repository,
files the suite writes get the user's umask."""

from __future__ import annotations

import ast
import os
import re
import stat
from pathlib import Path

import pytest

from conftest import ROOT
from engine_fixtures import DEMO, TINY
from test_collate import make_fixture

# folder -> layer; the base is mocobench/ without the CLI dispatcher, which sits on top
LAYERS = {"mocobench": "base", "pretrain": "pretrain", "transfer": "transfer", "results": "results"}
ALLOWED = {"base": {"base"}, "pretrain": {"base", "pretrain"}, "transfer": {"base", "transfer"},
           "results": {"base", "pretrain", "transfer", "results"}}
TOP = {ROOT / "mocobench" / "cli.py", ROOT / "mocobench" / "__main__.py"}


def layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "mocobench":
        return None
    if len(parts) > 1 and parts[1] in ("pretrain", "transfer", "results"):
        return parts[1]
    return "top" if parts[1:2] in (["cli"], ["__main__"]) else "base"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_imports_run_one_way():
    wrong = []
    for folder, layer in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in TOP:
                continue
            for module in imported_modules(path):
                target = layer_of_module(module)
                if target is not None and target not in ALLOWED[layer]:
                    wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_layer_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mocobench.transfer.convert import convert_checkpoint\n")
    assert "mocobench.transfer.convert" in imported_modules(bad)
    assert layer_of_module("mocobench.transfer.convert") not in ALLOWED["base"]


# ---- references ----------------------------------------------------------------------------
TEXT_SUFFIXES = {".py", ".yaml", ".md", ".sh", ".toml", ".cfg"}
FOLDERS = "docs|configs|pretrain|transfer|results|benchmarks|tests|mocobench|\\.ci"
PATH_REF = re.compile(rf"(?<![\w/.$-])((?:{FOLDERS})/[\w.*/-]*[\w*])")
# references a reader of the repository cannot follow
UNREACHABLE = re.compile(r"\bissue #?\d+|\bthe issue's|\bcontract \d|(?<!docs/)\b(?:DESIGN|NOTES)\.md")


def repository_text_files() -> list[Path]:
    skip = {".venv", ".git", "build", "demo-output", "output"}
    return [p for p in sorted(ROOT.rglob("*")) if p.suffix in TEXT_SUFFIXES and p.is_file()
            and not skip & set(p.relative_to(ROOT).parts) and p != Path(__file__).resolve()]


def resolves(ref: str, source: Path) -> bool:
    """A path named relative to the repository root, the configs folder or the file's own folder."""
    bases = (ROOT, ROOT / "configs", source.parent)
    return any(list(base.glob(ref)) if "*" in ref else (base / ref).exists() for base in bases)


def test_file_references_resolve_inside_the_repository():
    broken = []
    for path in repository_text_files():
        text = path.read_text(errors="replace")
        where = path.relative_to(ROOT)
        for m in UNREACHABLE.finditer(text):
            broken.append(f"{where}: '{m.group(0)}' names something outside the repository")
        for m in PATH_REF.finditer(text):
            ref = m.group(1).rstrip(".")
            if path.parent.name == "tests" and text[m.start() - 1] in "\"'":
                continue  # a path a test makes inside its own output folder
            if not resolves(ref, path):
                broken.append(f"{where}: {ref} does not exist")
    assert not broken, "\n".join(broken)


def test_reference_check_sees_a_broken_reference(tmp_path):
    assert UNREACHABLE.search("as the issue's text says") and UNREACHABLE.search("see DESIGN.md")
    assert not UNREACHABLE.search("see docs/DESIGN.md")
    assert not resolves("docs/NO_SUCH.md", tmp_path / "x.md") and resolves("docs/DESIGN.md", tmp_path / "x.md")


# ---- file modes ----------------------------------------------------------------------------
def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_get_the_users_umask(cli, tmp_path, umask_022):
    data = tmp_path / "data"
    assert cli("data", "synth", "--out", data, "--scale", "tiny").returncode == 0
    run = tmp_path / "run"
    done = cli("transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", run, "--data-root",
               data / "tiny" if (data / "tiny").is_dir() else data, *TINY)
    assert done.returncode == 0, done.stderr
    table, root, inits = make_fixture(tmp_path)
    assert cli("collate", root, "--out", tmp_path / "report", "--tables", table, "--inits", inits).returncode == 0
    written = files_under(data) + files_under(run) + files_under(tmp_path / "report")
    modes = {p.relative_to(tmp_path): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert len(written) > 10 and set(modes.values()) == {"0o644"}, modes
