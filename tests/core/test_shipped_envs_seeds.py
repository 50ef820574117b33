"""Pooling shipped_envs results over seeds: one model per group, each seed once, differences from the
baseline by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture
def seeds_script(monkeypatch):
    return load_benchmark("shipped_envs_seeds", monkeypatch)


def results(path: Path, model: str, returns: dict[int, list[float]], task: str = "Walker2d-v4",
            steps: tuple[int, ...] = (1, 2), episode_steps: int | None = None, row: str = "shipped",
            learner: str | None = None) -> Path:
    def unit(row, seed):
        fields = {"env_id": task, "row": row, "seed": seed, "steps": list(steps), "n_episodes": 5,
                  "model": model, "pessimism_option": True, "episode_steps": episode_steps, "model_dir": None}
        return fields if learner is None else {**fields, "learner": learner}   # older files have none

    runs = {f"{task}_{row}_seed{s}": {"unit": unit(row, s),
                                       "checkpoints": [{"steps": n, "real_return": r}
                                                       for n, r in zip(steps, values)]}
            for s, values in returns.items()}
    runs[f"{task}_random_seed0"] = {"unit": unit("random", 0), "real_return": -5.0}
    path.write_text(json.dumps({"settings": {"n_envs": 256}, "runs": runs, "failed": {}}))
    return path


def test_groups_pool_their_files_and_differ_from_the_first(seeds_script, tmp_path):
    old = [results(tmp_path / "a.json", "old", {0: [10.0, 1.0], 1: [20.0, 2.0]}),
           results(tmp_path / "b.json", "old", {2: [30.0, 3.0], 3: [40.0, 4.0]})]
    new = [results(tmp_path / "c.json", "new", {0: [11.0, 10.0], 1: [21.0, 20.0], 2: [31.0, 30.0],
                                                 3: [41.0, 40.0]})]
    out = seeds_script.compare("Walker2d-v4", {"old": old, "new": new})
    assert out["groups"]["old"]["seeds"] == [0, 1, 2, 3]
    assert out["groups"]["old"]["measured"]["model"] == "old"
    assert out["groups"]["old"]["per_seed"] == [[10, 1], [20, 2], [30, 3], [40, 4]]
    # IQM of four seeds: the middle two; new - old at step 2: mean(20, 30) - mean(2, 3) = 22.5
    at_2 = out["groups"]["new"]["minus_baseline"][1]
    assert at_2["iqm"]["value"] == pytest.approx(22.5) and at_2["mean"]["value"] == pytest.approx(22.5)
    assert at_2["mean"]["low"] < 22.5 < at_2["mean"]["high"]
    assert "minus_baseline" not in out["groups"]["old"]
    assert np.isclose(out["groups"]["new"]["summary"][0]["iqm"], 26.0)
    # the old model loses 9, 18, 27, 36 from the first checkpoint to the last: IQM -22.5
    assert out["groups"]["old"]["last_minus_first"]["iqm"] == pytest.approx(-22.5)


def test_a_group_of_two_models_or_a_repeated_seed_is_refused(seeds_script, tmp_path):
    a = results(tmp_path / "a.json", "one", {0: [1.0, 2.0]})
    b = results(tmp_path / "b.json", "two", {1: [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"differs from the group's other runs in \['model'\]"):
        seeds_script.read_group("Walker2d-v4", [a, b])
    c = results(tmp_path / "c.json", "one", {1: [1.0, 2.0]}, episode_steps=5)
    with pytest.raises(ValueError, match=r"in \['episode_steps'\]"):
        seeds_script.read_group("Walker2d-v4", [a, c])
    with pytest.raises(ValueError, match="seed 0 of Walker2d-v4 is already in this group"):
        seeds_script.read_group("Walker2d-v4", [a, a])
    with pytest.raises(ValueError, match="no 'shipped' runs of Hopper-v4"):
        seeds_script.read_group("Hopper-v4", [a])


def test_groups_at_other_checkpoints_and_files_of_another_kind_are_refused(seeds_script, tmp_path):
    a = results(tmp_path / "a.json", "one", {0: [1.0, 2.0]})
    b = results(tmp_path / "b.json", "two", {0: [1.0, 2.0]}, steps=(1, 3))
    with pytest.raises(ValueError, match=r"measured at \[1, 3\] imagined steps, the first group at \[1, 2\]"):
        seeds_script.compare("Walker2d-v4", {"a": [a], "b": [b]})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"task": "Walker2d-v4", "groups": {}}))
    with pytest.raises(ValueError, match="not a shipped_envs.py result"):
        seeds_script.read_group("Walker2d-v4", [other])


def test_the_output_may_not_replace_an_input_and_is_json(seeds_script, tmp_path, capsys):
    a = results(tmp_path / "a.json", "one", {0: [1.0, 2.0]})
    for out, message in ((a, "would overwrite an input"), (tmp_path / "a.png", "expected a .json path")):
        with pytest.raises(SystemExit):
            seeds_script.main(["--task", "Walker2d-v4", "--group", f"x={a}", "--out", str(out)])
        assert message in capsys.readouterr().err
    before = a.read_text()
    seeds_script.main(["--task", "Walker2d-v4", "--group", f"x={a}", "--out", str(tmp_path / "out.json")])
    assert a.read_text() == before and json.loads((tmp_path / "out.json").read_text())["steps"] == [1, 2]


def test_a_group_reads_its_row_and_pools_files_from_before_the_learner_field(seeds_script, tmp_path, capsys):
    before = results(tmp_path / "before.json", "m", {0: [1.0, 2.0]})
    after = results(tmp_path / "after.json", "m", {1: [3.0, 4.0]}, learner="sb3")
    cut = results(tmp_path / "cut.json", "m", {0: [5.0, 6.0], 1: [7.0, 9.0]}, row="unsure-truncates",
                  learner="sb3")
    out = seeds_script.main(["--task", "Walker2d-v4", "--group", f"as shipped={before},{after}",
                             "--group", f"truncated@unsure-truncates={cut}",
                             "--out", str(tmp_path / "o.json")])
    assert out["groups"]["as shipped"]["per_seed"] == [[1.0, 2.0], [3.0, 4.0]]
    truncated = out["groups"]["truncated"]
    assert truncated["per_seed"] == [[5.0, 6.0], [7.0, 9.0]]
    assert truncated["measured"]["row"] == "unsure-truncates"
    # (5 + 7) / 2 - (1 + 3) / 2 and (6 + 9) / 2 - (2 + 4) / 2
    assert [d["mean"]["value"] for d in truncated["minus_baseline"]] == [4.0, 4.5]
    zoo = results(tmp_path / "zoo.json", "m", {2: [0.0, 0.0]}, learner="zoo")
    with pytest.raises(ValueError, match=r"differs from the group's other runs in \['learner'\]"):
        seeds_script.read_group("Walker2d-v4", [before, zoo])
    with pytest.raises(SystemExit):
        seeds_script.main(["--task", "Walker2d-v4", "--group", f"x@={before}",
                           "--out", str(tmp_path / "p.json")])
    assert "expected LABEL[@ROW]=FILE[,FILE...]" in capsys.readouterr().err


def test_groups_measured_at_other_checkpoints_compare_at_the_ones_asked_for(seeds_script, tmp_path, capsys):
    long = results(tmp_path / "a.json", "one", {0: [1.0, 5.0, 9.0], 1: [2.0, 6.0, 10.0]}, steps=(1, 2, 3))
    short = results(tmp_path / "b.json", "two", {0: [4.0], 1: [8.0]}, steps=(1,))
    out = seeds_script.compare("Walker2d-v4", {"long": [long], "short": [short]}, steps=[1])
    assert out["steps"] == [1] and out["groups"]["long"]["per_seed"] == [[1.0], [2.0]]
    assert out["groups"]["short"]["minus_baseline"][0]["mean"]["value"] == pytest.approx(4.5)
    picked = seeds_script.compare("Walker2d-v4", {"long": [long]}, steps=[1, 3])
    assert picked["groups"]["long"]["per_seed"] == [[1.0, 9.0], [2.0, 10.0]]
    with pytest.raises(ValueError, match=r"has no checkpoint at \[2\] imagined steps"):
        seeds_script.compare("Walker2d-v4", {"long": [long], "short": [short]}, steps=[1, 2])
    assert "last minus first" not in seeds_script.table(out)     # one checkpoint: nothing changes
    assert "last_minus_first" not in out["groups"]["long"]
    assert "last minus first" in seeds_script.table(picked)
    for bad in ("2,1", "x", "0"):
        with pytest.raises(SystemExit):
            seeds_script.main(["--task", "Walker2d-v4", "--group", f"x={long}", "--steps", bad,
                               "--out", str(tmp_path / "o.json")])
        assert "--steps must be" in capsys.readouterr().err
