"""Merging comparisons run apart (seeds in parallel processes) into one table and plot."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from agents.cli import main
from agents.compare import (
    CompareSpec,
    EvalPoint,
    compare_dir,
    describe_imagination,
    merge_comparisons,
    read_comparison,
    write_outputs,
)
from agents.config import CoordinatorConfig

SPEC = CompareSpec(env_id="HalfCheetah-v4", methods=("ppo", "imagination-ppo"), seeds=(0,), budget=10_000,
                   eval_every=5000, eval_episodes=2, imagination=CoordinatorConfig(), preset="cpu-v7")


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
    assert json.loads((tmp_path / "m" / "compare.json").read_text())["preset"] == "cpu-v7"


def test_merge_without_out_writes_to_a_folder_keyed_by_task_preset_and_seeds(tmp_path, monkeypatch):
    a, _ = part(tmp_path, "a", [0])
    b, _ = part(tmp_path, "b", [1, 2])
    monkeypatch.chdir(tmp_path)
    assert main(["merge", str(a), str(b)]) == 0
    assert (tmp_path / "runs/compare/HalfCheetah-v4/cpu-v7/seeds-0-2/compare.csv").is_file()


def test_compare_folders_name_the_preset_and_whether_it_was_changed():
    cpu = CoordinatorConfig()
    assert (compare_dir("HalfCheetah-v4", cpu, "cpu", (2, 0, 1))
            == Path("runs/compare/HalfCheetah-v4/cpu-v7/seeds-0-2"))
    evaluation = replace(cpu, eval_every=500, seed=3, algo="a2c")  # set per run by compare: still the preset
    assert compare_dir("HalfCheetah-v4", evaluation, "cpu-v7", (4,)).parts[-2:] == ("cpu-v7", "seeds-4")
    changed = replace(cpu, n_imagined_envs=8)
    assert (compare_dir("HalfCheetah-v4", changed, "cpu-v7", (0, 2, 5)).parts[-2:]
            == ("cpu-v7-custom", "seeds-0+2+5"))
    assert compare_dir("Hopper-v4", None, None, (0,)).parts[-3:] == ("Hopper-v4", "model-free", "seeds-0")
    assert compare_dir("Hopper-v4", cpu, None, (0,)).parts[-2] == "unknown-preset"


def test_an_older_comparison_without_a_preset_is_labelled_unknown(tmp_path):
    a, _ = part(tmp_path, "a", [0])
    data = json.loads((a / "compare.json").read_text())
    del data["preset"]
    (a / "compare.json").write_text(json.dumps(data))
    assert read_comparison(a)[1].preset is None
    merge_comparisons([a], tmp_path / "m")
    merged = json.loads((tmp_path / "m" / "compare.json").read_text())
    assert "(unknown preset)" in merged["settings"]["imagination-ppo"] and merged["preset"] is None


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


def test_a_budget_cuts_longer_runs_to_join_shorter_ones(tmp_path):
    short, _ = part(tmp_path, "short", [0])
    long, _ = part(tmp_path, "long", [1], replace(SPEC, budget=20_000))
    points = [EvalPoint(m, 1, step, float(step), 1.0)
              for m in SPEC.methods for step in range(0, 20_001, 5000)]
    write_outputs(points, replace(SPEC, seeds=(1,), budget=20_000), long)
    assert main(["merge", str(short), str(long), "--budget", "10000", "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "compare.json").read_text())
    assert merged["budget"] == 10_000 and merged["seeds"] == [0, 1]
    assert [r["real_steps"] for r in merged["results"]["ppo"]["1"]] == [0, 5000, 10_000]
    assert merged["results"]["ppo"]["1"][-1]["mean_return"] == 10_000.0
    with pytest.raises(ValueError, match="fewer than the budget 20000"):
        merge_comparisons([short, long], tmp_path / "m2", budget=20_000)
    with pytest.raises(ValueError, match="no evaluation at 7500"):
        merge_comparisons([short, long], tmp_path / "m2", budget=7500)
    with pytest.raises(ValueError, match="budget must be an int >= 1, got 0"):
        merge_comparisons([short, long], tmp_path / "m2", budget=0)
    decayed, _ = part(tmp_path, "decayed", [2], replace(SPEC, budget=20_000, imagination=CoordinatorConfig(
        final_learning_rate=0.0)))
    with pytest.raises(ValueError, match="decayed its learning rate"):
        merge_comparisons([short, decayed], tmp_path / "m2", budget=10_000)
    assert not (tmp_path / "m2").exists()


def test_methods_keep_the_model_free_part_of_a_comparison_with_other_settings(tmp_path):
    stored, _ = part(tmp_path, "stored", [0, 1])           # ppo + imagination-ppo, the default settings
    other = replace(SPEC, methods=("imagination-ppo",), imagination=CoordinatorConfig(n_imagined_envs=8))
    new, _ = part(tmp_path, "new", [0, 1], other)
    with pytest.raises(ValueError, match="other settings"):
        merge_comparisons([stored, new], tmp_path / "m")
    with pytest.raises(ValueError, match="other settings"):  # both imagination parts kept
        merge_comparisons([stored, new], tmp_path / "m", methods=("ppo", "imagination-ppo"))
    assert main(["merge", str(stored), "--methods", "ppo", "--out", str(tmp_path / "free")]) == 0
    free = json.loads((tmp_path / "free" / "compare.json").read_text())
    assert list(free["results"]) == ["ppo"] and free["imagination_config"] is None and free["preset"] is None
    merge_comparisons([tmp_path / "free", new], tmp_path / "m")
    merged = json.loads((tmp_path / "m" / "compare.json").read_text())
    assert set(merged["results"]) == {"ppo", "imagination-ppo"} and merged["seeds"] == [0, 1]
    assert merged["imagination_config"]["n_imagined_envs"] == 8 and merged["preset"] == "cpu-v7"
    merge_comparisons([tmp_path / "free", new], tmp_path / "m5", budget=10_000, methods=("imagination-ppo",))
    only_new = json.loads((tmp_path / "m5" / "compare.json").read_text())   # the ppo-only part drops out
    assert list(only_new["results"]) == ["imagination-ppo"] and only_new["imagination_config"] is not None
    with pytest.raises(ValueError, match="no part holds any of the methods sac"):
        merge_comparisons([stored], tmp_path / "m3", methods=("sac",))
    with pytest.raises(SystemExit, match="2"):
        main(["merge", str(stored), "--methods", "dqn", "--out", str(tmp_path / "m4")])
    assert not (tmp_path / "m3").exists() and not (tmp_path / "m4").exists()


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
    plain = describe_imagination(CoordinatorConfig(), "cpu-v7")
    assert ("(cpu-v7)" in plain
            and "(cpu-v6 + world_model.denoiser.kind causal-recurrent + world_model.denoiser.width 128 + "
                "world_model.denoiser.depth 2)" in describe_imagination(CoordinatorConfig(), "cpu-v6"))
    assert "window" not in plain and "collection noise" not in plain and "KL" not in plain
    options = describe_imagination(CoordinatorConfig(start_state_window=10_000, collection_noise_std=0.3,
                                                      target_update_kl=0.02), "cpu-v7")
    assert "collection noise std 0.3, start state window 10000, target update KL 0.02;" in options
    assert "(actions full strength, last action hidden)" in plain and "per row" not in plain
    wm = CoordinatorConfig().world_model
    paper_like = describe_imagination(CoordinatorConfig(world_model=replace(
        wm, scale_actions=True, condition_on_last_action=True, readout="chain",
        guidance=replace(wm.guidance, per_row=True))), "cpu-v7")
    assert "(actions scaled)" in paper_like and "guidance scale lr 0.2 per row;" in paper_like


@pytest.mark.parametrize("damage", ["no folder", "no json", "not json", "a list", "no results", "bad row",
                                    "rows not a list"])
def test_merge_names_the_unreadable_input_in_one_line(tmp_path, capsys, damage):
    a, _ = part(tmp_path, "a", [0])
    b, _ = part(tmp_path, "b", [1])
    target = b / "compare.json"
    data = json.loads(target.read_text())
    if damage == "no folder":
        b = tmp_path / "missing"
    elif damage == "no json":
        target.unlink()
    elif damage == "not json":
        target.write_text('{"env_id": "HalfCheetah-v4", ')
    elif damage == "a list":
        target.write_text("[1, 2]")
    elif damage == "no results":
        del data["results"]
        target.write_text(json.dumps(data))
    elif damage == "bad row":
        data["results"]["ppo"]["1"][0]["mean_return"] = "lots"
        target.write_text(json.dumps(data))
    else:
        data["results"]["ppo"] = [1, 2]
        target.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(a), str(b), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "not a readable comparison" in err
    assert str(b if damage in ("no folder", "no json") else target) in err
    assert not (tmp_path / "m").exists()
