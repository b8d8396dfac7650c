"""audit: t quantiles against table values; verdicts and exit codes on fixture run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mocobench.atomic import write_json
from mocobench.results.stats import paired_ci, t_cdf, t_ppf, welch_ci

BASE_AP50 = [80.1, 80.9, 80.4, 81.2, 80.6]
BASE_AP = [52.0, 52.6, 51.7, 52.9, 52.2]


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 4, 2.776445), (0.975, 1, 12.706205), (0.95, 10, 1.812461),
    (0.995, 2, 9.924843), (0.975, 30, 2.042272), (0.025, 4, -2.776445),
])
def test_t_quantiles_match_table_values(p, df, expected):
    assert t_ppf(p, df) == pytest.approx(expected, abs=1e-6)
    assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_quantile_tends_to_normal():
    assert t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_welch_ci_against_hand_computation():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    ci = welch_ci(b, a)
    va, vb = 1.0, 20 / 3
    se2 = va / 3 + vb / 4
    df = se2 ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    assert ci.df == pytest.approx(df)
    assert ci.high - ci.delta == pytest.approx(t_ppf(0.975, df) * math.sqrt(se2))
    assert ci.delta == pytest.approx(3.0)


def test_paired_ci_of_constant_shift_is_a_point():
    ci = paired_ci([x + 1 for x in BASE_AP50], BASE_AP50)
    assert ci.low == pytest.approx(1.0) and ci.high == pytest.approx(1.0) and ci.verdict() == "better"


def write_side(root: Path, ap50: list[float], ap: list[float], seeds: list[int]) -> Path:
    for seed, x, y in zip(seeds, ap50, ap):
        write_json(root / f"seed{seed}" / "metrics.json",
                   {"bbox": {"AP50": x, "AP": y, "AP75": y + 5}, "meta": {"seed": seed}})
    return root


def audit(cli, tmp_path, cand, base, *extra):
    out = tmp_path / "audit.json"
    res = cli("audit", "--candidate", cand, "--baseline", base, "--json", out, *extra)
    data = json.loads(out.read_text()) if out.exists() else None
    return res, data


def test_large_delta_is_better(tmp_path, cli):
    seeds = list(range(5))
    base = write_side(tmp_path / "sup", BASE_AP50, BASE_AP, seeds)
    noise = [0.3, -0.2, 0.1, -0.3, 0.2]
    cand = write_side(tmp_path / "moco", [x + 2.0 + e for x, e in zip(BASE_AP50, noise)],
                      [x + 3.0 - e for x, e in zip(BASE_AP, noise)], seeds)
    res, data = audit(cli, tmp_path, cand, base)
    assert res.returncode == 0, res.stderr
    verdicts = {m["metric"]: m for m in data["metrics"]}
    assert set(verdicts) == {"bbox/AP", "bbox/AP50", "bbox/AP75"}
    assert all(m["verdict"] == "better" and m["test"] == "paired t" for m in verdicts.values())
    assert verdicts["bbox/AP50"]["delta"] == pytest.approx(2.02)
    assert "bbox/AP50" in res.stdout and "better" in res.stdout and "95% CI" in res.stdout

    res, data = audit(cli, tmp_path, base, cand)  # the other way round: worse, exit 1
    assert res.returncode == 1 and data["metrics"][0]["verdict"] == "worse"


def test_zero_delta_is_within_noise(tmp_path, cli):
    seeds = list(range(5))
    base = write_side(tmp_path / "a", BASE_AP50, BASE_AP, seeds)
    cand = write_side(tmp_path / "b", BASE_AP50, BASE_AP, seeds)
    res, data = audit(cli, tmp_path, cand, base, "--metrics", "bbox/AP50", "bbox/AP")
    assert res.returncode == 0, res.stderr
    assert [m["verdict"] for m in data["metrics"]] == ["within noise", "within noise"]
    assert data["metrics"][0]["delta"] == 0.0


def test_unpaired_seeds_use_welch_and_noise_is_not_a_result(tmp_path, cli):
    base = write_side(tmp_path / "a", BASE_AP50, BASE_AP, [0, 1, 2, 3, 4])
    cand = write_side(tmp_path / "b", BASE_AP50[::-1][:4], BASE_AP[:4], [5, 6, 7, 8])
    res, data = audit(cli, tmp_path, cand, base, "--metrics", "bbox/AP50")
    assert res.returncode == 0, res.stderr
    m = data["metrics"][0]
    assert m["test"] == "Welch t" and m["verdict"] == "within noise" and m["low"] < 0 < m["high"]


def test_one_trial_is_too_few(tmp_path, cli):
    base = write_side(tmp_path / "a", BASE_AP50[:1], BASE_AP[:1], [0])
    cand = write_side(tmp_path / "b", [90.0], [60.0], [0])
    res, data = audit(cli, tmp_path, cand, base, "--metrics", "bbox/AP50")
    assert res.returncode == 3 and data["metrics"][0]["verdict"] == "too few trials"


def test_empty_side_is_a_user_error(tmp_path, cli):
    base = write_side(tmp_path / "a", BASE_AP50, BASE_AP, list(range(5)))
    (tmp_path / "empty").mkdir()
    res, _ = audit(cli, tmp_path, tmp_path / "empty", base)
    assert res.returncode == 2 and "no finished runs" in res.stderr
