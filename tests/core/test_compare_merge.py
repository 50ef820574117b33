"""Merging comparisons run apart (seeds in parallel processes) into one table and plot."""
from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from agents.cli import main
from agents.compare import CompareSpec, EvalPoint, describe_imagination, merge_comparisons, write_outputs
from agents.coordinator import CoordinatorConfig

SPEC = CompareSpec(env_id="HalfCheetah-v4", methods=("ppo", "imagination-ppo"), seeds=(0,), budget=10_000,
                   eval_every=5000, eval_episodes=2, imagination=CoordinatorConfig())


def part(tmp_path, name, seeds, spec=SPEC):
    points = [EvalPoint(m, s, step, float(step + s), 1.0)
              for m in spec.methods for s in seeds for step in (0, 5000, 10_000)]
    write_outputs(points, replace(spec, seeds=tuple(seeds)), tmp_path / name)
    return tmp_path / name, points


def test_merge_combines_seeds_and_writes_everything(tmp_path):
    a, pa = part(tmp_path, "a", [0])
    b, pb = part(tmp_path, "b", [1, 2])
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    with open(tmp_path / "m" / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(pa) + len(pb) == 18
    assert {int(r["seed"]) for r in rows} == {0, 1, 2}
    assert (tmp_path / "m" / "compare.png").stat().st_size > 10_000


def test_merge_refuses_other_settings_and_overlaps(tmp_path):
    a, _ = part(tmp_path, "a", [0])
    other, _ = part(tmp_path, "other", [1], replace(SPEC, budget=20_000))
    with pytest.raises(ValueError, match="other settings"):
        merge_comparisons([a, other], tmp_path / "m")
    same, _ = part(tmp_path, "same", [0])
    with pytest.raises(ValueError, match="overlap"):
        merge_comparisons([a, same], tmp_path / "m")
    with pytest.raises(ValueError, match="not a readable comparison"):
        merge_comparisons([a, tmp_path / "missing"], tmp_path / "m")


def test_a_model_free_part_merges_with_an_imagination_part(tmp_path):
    free, _ = part(tmp_path, "free", [0, 1], replace(SPEC, methods=("ppo",), imagination=None))
    imagined, _ = part(tmp_path, "imagined", [0, 1], replace(SPEC, methods=("imagination-ppo",)))
    merge_comparisons([free, imagined], tmp_path / "m")
    with open(tmp_path / "m" / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"ppo", "imagination-ppo"} and len(rows) == 12
    other, _ = part(tmp_path, "other", [2], replace(SPEC, methods=("imagination-ppo",),
                                                    imagination=CoordinatorConfig(n_imagined_envs=8)))
    with pytest.raises(ValueError, match="other settings"):
        merge_comparisons([free, imagined, other], tmp_path / "m2")


def test_settings_line_names_the_options_switched_on():
    plain = describe_imagination(CoordinatorConfig(), "cpu")
    assert "window" not in plain and "collection noise" not in plain and "KL" not in plain
    options = describe_imagination(CoordinatorConfig(start_state_window=10_000, collection_noise_std=0.3,
                                                      target_update_kl=0.02), "cpu")
    assert "collection noise std 0.3, start state window 10000, target update KL 0.02;" in options
    assert "(actions full strength, last action hidden)" in plain and "per row" not in plain
    wm = CoordinatorConfig().world_model
    paper_like = describe_imagination(CoordinatorConfig(world_model=replace(
        wm, scale_actions=True, condition_on_last_action=True, guidance=replace(wm.guidance, per_row=True))), "cpu")
    assert "(actions scaled)" in paper_like and "guidance scale lr 0.2 per row;" in paper_like
