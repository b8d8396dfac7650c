"""A weights, checkpoint or inits file whose pickle would run code: every command that reads
such a path refuses it in one line, and the code never runs (no marker file appears)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import one_line_refusals, run_cli_at_once
from engine_fixtures import DEMO, TINY
from mocobench.transfer.datasets.synth import write_synthetic
from pretrain_tiny import write_tiny_config


class Payload:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


TABLE = "demo_voc_R50_C4"


def write_evil(folder: Path, marker: Path) -> dict[str, Path]:
    """The payload as a plain .pkl, a torch zip .pth and a legacy (non-zip) torch file."""
    folder.mkdir(parents=True, exist_ok=True)
    evil = {"model": {"w": Payload(marker)}, "state_dict": Payload(marker)}
    paths = {"pkl": folder / "evil.pkl", "pth": folder / "evil.pth", "legacy": folder / "evil_legacy.pth"}
    paths["pkl"].write_bytes(pickle.dumps(evil))
    torch.save(evil, paths["pth"])
    torch.save(evil, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def run_folder_with(folder: Path, checkpoint: Path, name: str) -> Path:
    """A run folder whose newest checkpoint (per last_checkpoint) is ``checkpoint``'s bytes."""
    folder.mkdir(parents=True)
    (folder / name).write_bytes(checkpoint.read_bytes())
    (folder / "last_checkpoint").write_text(name + "\n")
    return folder


def hostile_commands(tmp_path: Path, marker: Path, kinds: tuple[str, ...]) -> dict[str, tuple[list, str]]:
    """label -> (argv, the file name its one-line refusal must name), for every reader of a path."""
    evil = write_evil(tmp_path / "evil", marker)
    data = tmp_path / "synth"
    write_synthetic(data, seed=0, scale="tiny")
    labelled = data / "classify"
    pre_cfg = write_tiny_config(tmp_path / "pretrain.yaml")
    det = ["--config", DEMO / "demo_voc_C4.yaml", "--data-root", data, "--seed", "1"]
    inits = tmp_path / "inits.yaml"
    inits.write_text(f"evil: {{weights: {evil['pkl']}}}\n")
    (tmp_path / "runs" / TABLE).mkdir(parents=True)
    commands = {}
    for kind in kinds:
        path = evil[kind]
        commands[f"transfer --weights {kind}"] = (["transfer", *det, "--weights", path,
                                                    "--output-dir", tmp_path / f"t_{kind}", *TINY], path.name)
        commands[f"transfer --eval-only --weights {kind}"] = (["transfer", *det, "--eval-only", "--weights", path,
                                                                "--output-dir", tmp_path / f"e_{kind}", *TINY], path.name)
        commands[f"convert {kind}"] = (["convert", path, tmp_path / f"c_{kind}.pkl"], path.name)
        commands[f"knn --weights {kind}"] = (["knn", "--weights", path, "--data", labelled, "--config", pre_cfg],
                                             path.name)
        commands[f"lincls --weights {kind}"] = (["lincls", "--weights", path, "--data", labelled, "--config",
                                                 pre_cfg, "--output-dir", tmp_path / f"l_{kind}"], path.name)
    resumed = {
        "transfer --resume": (["transfer", *det, "--resume"], "model_0000001.pth", TINY),
        "transfer --eval-only --resume": (["transfer", *det, "--eval-only", "--resume"], "model_0000001.pth", TINY),
        "pretrain --resume": (["pretrain", "--config", pre_cfg, "--data", data / "unlabeled", "--resume"],
                              "checkpoint_last.pth.tar", []),
        "supervised --resume": (["supervised", "--config", pre_cfg, "--data", labelled, "--resume"],
                                "checkpoint_last.pth.tar", []),
    }
    for i, (label, (argv, name, opts)) in enumerate(resumed.items()):
        folder = run_folder_with(tmp_path / f"r{i}", evil["pth"], name)
        commands[label] = ([*argv, "--output-dir", folder, *opts], name)
    commands["run-all --inits --dry-run"] = (["run-all", "--inits", inits, "--tables", TABLE,
                                              "--output", tmp_path / "ra", "--dry-run"], "evil.pkl")
    commands["run-all --inits"] = (["run-all", "--inits", inits, "--tables", TABLE, "--output", tmp_path / "rb"],
                                   "evil.pkl")
    commands["collate --inits"] = (["collate", tmp_path / "runs", "--out", tmp_path / "co", "--inits", inits,
                                    "--tables", TABLE], "evil.pkl")
    return commands


def refused_badly(commands: dict[str, tuple[list, str]]) -> list[str]:
    """Those commands that did not refuse in one line naming the file."""
    results = run_cli_at_once({label: argv for label, (argv, _) in commands.items()})
    return one_line_refusals(results, {label: name for label, (_, name) in commands.items()})


FAST = ("transfer --weights pth", "transfer --resume", "run-all --inits --dry-run", "collate --inits")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    commands = hostile_commands(tmp_path, marker, ("pth",))
    bad = refused_badly({k: v for k, v in commands.items() if k in FAST})
    assert not marker.exists(), "a pickle ran code"
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_no_command_runs_code_from_a_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    bad = refused_badly(hostile_commands(tmp_path, marker, ("pkl", "pth", "legacy")))
    assert not marker.exists(), "a pickle ran code"
    assert not bad, "\n".join(bad)
