"""`build_model` end to end on a tiny budget: the shipped folder, its pessimism calibrated on the data, the
work folder's stages reused or refused, and the result as an imagined env."""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents.build_model as build_module
import imagined_env  # noqa: F401  (registers the Imagined-* ids)
from agents.broad_data import BroadDataConfig, DataReport
from agents.build_model import BuildConfig, build_model
from agents.cli import main
from agents.learner_data import LEARNER_RESET_SEED, LearnerDataConfig
from agents.plan_following import ImaginationPPO
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.world_model import WorldModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]

TASK = "Hopper-v4"
TINY = BuildConfig(source="broad", data=BroadDataConfig(random_episodes=1, ppo_steps=1024, ppo_kept_steps=500,
                                        final_steps_per_noise=200, seed=3),
                   fit_steps=20, n_start_states=50, disagreement_penalty=0.7, disagreement_quantile=0.9)
TINY_FLAGS = ["--source", "broad", "--data.random-episodes", "1", "--data.ppo-steps", "1024",
              "--data.ppo-kept-steps", "500",
              "--data.final-steps-per-noise", "200", "--data.seed", "3", "--fit-steps", "20",
              "--n-start-states", "50", "--disagreement-penalty", "0.7", "--disagreement-quantile", "0.9"]
COMMAND = "imagined-env build-model out --env Hopper-v4"


def build(out: Path, work: Path, config: BuildConfig = TINY) -> Path:
    return build_model(TASK, out, work, config, command=COMMAND, log=lambda _: None, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(shipped folder, work folder) of one tiny build, shared by the tests (which must not change it)."""
    root = tmp_path_factory.mktemp("build")
    return build(root / "out", root / "work"), root / "work"


def snapshot(*folders: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for f in folders for p in sorted(f.iterdir())}


def copy_of(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def forbid(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Stages that must not run: collecting data, fitting."""
    for name in names:
        def fail(*_args, _name=name, **_kwargs):
            raise AssertionError(f"{_name} ran again")
        monkeypatch.setattr(build_module, name, fail)


def test_the_shipped_and_work_folders_hold_their_files(built):
    out, work = built
    assert sorted(p.name for p in out.iterdir()) == ["COMMAND.txt", "data.json", "start_states.npy",
                                                     "world_model.pt"]
    assert sorted(p.name for p in work.iterdir()) == ["data.json", "data.npz", "model.json", "world_model.pt"]
    text = (out / "COMMAND.txt").read_text()
    assert text.startswith(COMMAND + "\n")
    settings = json.loads(text.split("build settings: ", 1)[1])
    assert settings == json.loads(json.dumps(asdict(TINY)))
    # the data stage's record: the data settings, without the learner when it is PPO (as before `algo`)
    assert settings["data"]["algo"] == "ppo"
    stage = json.loads((work / "data.json").read_text())["data"]
    assert stage == {k: v for k, v in settings["data"].items() if k != "algo"}
    shipped = json.loads((out / "data.json").read_text())
    assert shipped["origin"] == "RL Zoo PPO and random data"
    finals = {name: p["mean_return"] for name, p in shipped["parts"].items() if name.startswith("final PPO")}
    assert len(finals) == 2                                  # noise 0.1 and 0.3
    best = max(finals, key=finals.get)
    noise = best.split(" ", 3)[3]                            # "+ N(0, s^2)"
    assert shipped["reference"] == {"policy": f"RL Zoo PPO's final policy {noise} action noise",
                                    "mean_return": finals[best]}


def test_the_shipped_model_is_a_compact_three_member_ensemble_with_the_configured_pessimism(built):
    out, work = built
    shipped = WorldModel.load(out / "world_model.pt", device="cpu", env_id=TASK)
    assert torch.load(out / "world_model.pt", weights_only=True)["compact"] is True
    assert (out / "world_model.pt").stat().st_size < 0.5 * (work / "world_model.pt").stat().st_size
    assert shipped.config.n_members == 3 and shipped.config.readout == "mean"
    assert shipped.config.disagreement_penalty == 0.7
    assert shipped.config.terminations == "task"                  # set at ship time, like the read-out

    # the limit is the 0.9 quantile of the members' disagreement about the data's own transitions:
    # windows drawn with the data seed, replayed with their own actions, padding past an end left out
    full = WorldModel.load(work / "world_model.pt", device="cpu")
    buffer = EpisodeBuffer.load(work / "data.npz")
    h = full.horizon
    windows = buffer.sample_windows(4096, h, np.random.default_rng(TINY.data.seed))
    with torch.no_grad():
        u = full.imagine(windows.states[:, 0], actions=windows.actions[:, :h]).disagreement.numpy()
    real = u[windows.valid[:, :h]]
    assert len(real) < u.size                              # the data hold terminations, so some padding
    assert shipped.config.disagreement_limit == pytest.approx(float(np.quantile(real, 0.9)), rel=1e-12)
    # so the shipped model (float16 weights) ends about a tenth of the data's transitions on doubt
    with torch.no_grad():
        u_shipped = shipped.imagine(windows.states[:, 0], actions=windows.actions[:, :h]).disagreement.numpy()
    above = float(np.mean(u_shipped[windows.valid[:, :h]] > shipped.config.disagreement_limit))
    assert 0.08 <= above <= 0.12, above


def test_a_preset_reading_out_by_rollout_ships_a_pessimistic_ensemble_of_its_denoiser(built, tmp_path):
    """cpu-v7's causal recurrent denoiser keeps its rollout read-out (exactly on-policy) as an ensemble."""
    _, work = built
    config = replace(TINY, preset="cpu-v7")
    work = copy_of(work, tmp_path / "work")
    for stage in ("model.json", "world_model.pt"):   # keep the data stage, fit anew
        (work / stage).unlink()
    out = build(tmp_path / "out", work, config)
    shipped = WorldModel.load(out / "world_model.pt", device="cpu", env_id=TASK)
    assert shipped.config.readout == "rollout" and shipped.config.n_members == 3
    assert shipped.config.denoiser.kind == "causal-recurrent" and shipped.config.disagreement_limit > 0
    starts = torch.as_tensor(np.load(out / "start_states.npy")[:64])

    def policy(s):
        return torch.tanh(s[:, :3]), torch.full((len(s), 3), 0.3)

    with torch.no_grad():
        out_ = shipped.imagine(starts, policy, generator=torch.Generator().manual_seed(0))
        replay = shipped.imagine(starts, actions=out_.actions[:, :shipped.horizon])
    assert np.isnan(out_.spread)                       # the policy's own rollout: no chain was guided
    assert out_.disagreement is not None and torch.isfinite(out_.disagreement).all()
    torch.testing.assert_close(replay.observations, out_.observations)   # read out from (s0, actions)
    env = gym.make_vec("Imagined-Hopper-v4", num_envs=4, world_model=str(out / "world_model.pt"),
                       start_states=str(out / "start_states.npy"), device="cpu")
    _, info = env.reset(seed=0)
    obs, reward, *_ = env.step(info["planned_action"])
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    env.close()


def test_start_states_are_real_observations_spread_over_the_data_and_never_terminal(built):
    out, work = built
    starts = np.load(out / "start_states.npy")
    buffer = EpisodeBuffer.load(work / "data.npz")
    assert starts.dtype == np.float32 and starts.shape == (50, 11)
    terminal = {e.observations[-1].tobytes() for e in buffer.episodes if e.terminated}
    assert terminal                                         # Hopper falls: there are some to leave out
    position = {}
    for episode in buffer.episodes:
        last = episode.length if not episode.terminated else episode.length - 1
        for t in range(last + 1):
            position.setdefault(episode.observations[t].tobytes(), len(position))
    rows = [row.tobytes() for row in starts]
    assert not terminal & set(rows)
    assert all(r in position for r in rows)                 # each is an observation of the data
    where = [position[r] for r in rows]
    assert where == sorted(set(where))                       # distinct, in the data's order
    assert where[0] == 0 and where[-1] == len(position) - 1  # from the first observation to the last


def test_the_shipped_folder_is_an_imagined_env(built):
    out, _ = built
    env = gym.make_vec("Imagined-Hopper-v4", num_envs=4, world_model=str(out / "world_model.pt"),
                       start_states=str(out / "start_states.npy"), device="cpu")
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 11)
    starts = {row.tobytes() for row in np.load(out / "start_states.npy")}
    assert {row.tobytes() for row in obs.astype(np.float32)} <= starts
    for _ in range(3):
        obs, reward, _, _, info = env.step(info["planned_action"])
        assert obs.shape == (4, 11) and reward.shape == (4,)
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
    env.close()


def test_a_second_build_with_the_same_settings_reuses_both_stages(built, tmp_path, monkeypatch):
    out, work = built
    work = copy_of(work, tmp_path / "work")
    before = snapshot(work)
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    again = build(tmp_path / "out", work)
    assert snapshot(work) == before
    assert (again / "COMMAND.txt").read_text() == (out / "COMMAND.txt").read_text()
    np.testing.assert_array_equal(np.load(again / "start_states.npy"), np.load(out / "start_states.npy"))
    ship = WorldModel.load(again / "world_model.pt", device="cpu")
    assert ship.config == WorldModel.load(out / "world_model.pt", device="cpu").config


def test_new_pessimism_or_start_settings_reuse_the_stages_and_ship_them(built, tmp_path, monkeypatch):
    _, work = built
    work = copy_of(work, tmp_path / "work")
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    config = replace(TINY, disagreement_penalty=0.0, disagreement_quantile=None, n_start_states=7)
    out = build(tmp_path / "out", work, config)
    shipped = WorldModel.load(out / "world_model.pt", device="cpu")
    assert shipped.config.disagreement_penalty == 0.0 and shipped.config.disagreement_limit is None
    assert np.load(out / "start_states.npy").shape == (7, 11)
    assert "episodes end above never" in (out / "COMMAND.txt").read_text()


@pytest.mark.parametrize("change,stage", [
    ({"data": replace(TINY.data, ppo_kept_steps=400)}, "data stage"),
    ({"data": replace(TINY.data, seed=4)}, "data stage"),
    ({"fit_steps": 21}, "model stage"),
    ({"n_members": 4}, "model stage"),
    ({"preset": "cpu-v4"}, "model stage"),
    ({"quiet_action_stds": (0.1,)}, "data stage"),
])
def test_other_stage_settings_in_the_same_work_folder_are_refused_before_anything_changes(
        built, tmp_path, monkeypatch, change, stage):
    out, work = built
    work, out = copy_of(work, tmp_path / "work"), copy_of(out, tmp_path / "out")
    before = snapshot(work, out)
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    with pytest.raises(ValueError, match=f"holds a {stage}"):
        build(out, work, replace(TINY, **change))
    assert snapshot(work, out) == before


def test_quiet_random_actions_are_added_to_the_data_and_its_records(built, tmp_path, monkeypatch):
    """The data stage made anew with quiet actions: the source's episodes first, then the quiet ones (each
    width's part named, its real steps counted), and the model fitted on them all."""
    _, work = built
    work = copy_of(work, tmp_path / "work")
    source = EpisodeBuffer.load(work / "data.npz")
    parts = json.loads((work / "data.json").read_text())["parts"]
    for name in ("data.npz", "data.json", "world_model.pt", "model.json"):
        (work / name).unlink()
    monkeypatch.setattr(build_module, "collect_broad_data",
                        lambda *_a, **_k: (EpisodeBuffer.load(built[1] / "data.npz"),
                                           DataReport(dict(parts))))
    config = replace(TINY, quiet_action_stds=(0.1, 0.3), quiet_action_steps=150)
    out = build(tmp_path / "out", work, config)
    data = EpisodeBuffer.load(work / "data.npz")
    assert len(data) > len(source)
    for i, episode in enumerate(source.episodes):
        np.testing.assert_array_equal(data.episodes[i].actions, episode.actions)
    quiet = np.concatenate([e.actions for e in data.episodes[len(source):]])
    assert quiet.shape[0] == data.n_transitions - source.n_transitions == 300   # every step kept
    record = json.loads((out / "data.json").read_text())
    assert list(record["parts"])[-2:] == ["random actions N(0, 0.1^2)", "random actions N(0, 0.3^2)"]
    narrow = record["parts"]["random actions N(0, 0.1^2)"]["transitions"]
    assert narrow == 150
    for part, width in ((quiet[:narrow], 0.1), (quiet[narrow:], 0.3)):
        assert abs(float(part.std()) / width - 1) < 0.15 and abs(float(part.mean())) < 0.05
    collected = json.loads((built[0] / "data.json").read_text())["real_steps_collected"]
    assert record["real_steps_collected"] == collected + 300
    assert "random actions N(0, 0.3^2)" in (out / "COMMAND.txt").read_text()
    stage = json.loads((work / "model.json").read_text())["model"]["data"]
    assert stage["quiet_action_stds"] == [0.1, 0.3] and stage["quiet_action_seed"] == TINY.data.seed


def test_a_model_stage_fitted_on_other_data_is_refused_when_the_data_stage_is_made_anew(
        built, tmp_path, monkeypatch):
    """Deleting the data stage and collecting with other settings must not reuse a model fitted on the old
    data."""
    _, work = built
    work = copy_of(work, tmp_path / "work")
    other = replace(TINY.data, seed=4)
    (work / "data.npz").unlink()
    stored = json.loads((work / "data.json").read_text())
    stage = build_module.data_stage_settings(replace(TINY, data=other))
    (work / "data.json").write_text(json.dumps({**stored, "data": stage}))
    shutil.copy(built[1] / "data.npz", work / "data.npz")    # stands in for the data collected anew
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    with pytest.raises(ValueError, match="holds a model stage"):
        build(tmp_path / "out", work, replace(TINY, data=other))


@pytest.mark.parametrize("killed_at", ["model.json", "world_model.pt"])
def test_a_build_killed_while_writing_the_model_stage_resumes(built, tmp_path, monkeypatch, killed_at):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("data.npz", "data.json"):                   # the data stage had finished
        shutil.copy(built[1] / name, work / name)
    real_atomic_path, real_save = build_module.atomic_path, WorldModel.save

    def atomic_path(path):
        if Path(path).name == killed_at:
            raise KeyboardInterrupt
        return real_atomic_path(path)

    def save(self, path, compact=False):
        if Path(path).name == killed_at and Path(path).parent == work:
            raise KeyboardInterrupt
        return real_save(self, path, compact)

    monkeypatch.setattr(build_module, "atomic_path", atomic_path)
    monkeypatch.setattr(WorldModel, "save", save)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "out", work)
    monkeypatch.undo()
    forbid(monkeypatch, "collect_broad_data")
    out = build(tmp_path / "out", work)
    assert WorldModel.load(out / "world_model.pt", device="cpu").config.n_members == 3
    assert json.loads((work / "model.json").read_text())["model"]["fit_steps"] == 20


def test_the_cli_with_a_finished_builds_flags_reuses_it_and_prints_its_record(built, tmp_path, monkeypatch,
                                                                               capsys):
    _, work = built
    work = copy_of(work, tmp_path / "work")
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    argv = ["build-model", str(tmp_path / "out"), "--env", TASK, "--work", str(work), "--no-progress",
            *TINY_FLAGS]
    monkeypatch.setattr(sys, "argv", ["imagined-env", *argv])
    assert main(argv) == 0
    record = (tmp_path / "out" / "COMMAND.txt").read_text()
    assert record.startswith("imagined-env " + " ".join(argv) + "\n")
    assert record in capsys.readouterr().out


def test_a_reset_share_reuses_both_stages_and_replaces_that_share_of_starts(built, tmp_path, monkeypatch):
    out, work = built
    forbid(monkeypatch, "collect_broad_data", "fit_world_model")
    again = build(tmp_path / "out", copy_of(work, tmp_path / "work"), replace(TINY, reset_start_share=0.2))
    before, after = np.load(out / "start_states.npy"), np.load(again / "start_states.npy")
    changed = np.flatnonzero((before != after).any(1))
    assert len(changed) == 10                                       # 0.2 of 50
    env = gym.make(TASK)
    resets = {tuple(env.reset(seed=build_module.RESET_SEED + i)[0].astype(np.float32)) for i in range(10)}
    assert set(map(tuple, after[changed])) == resets
    assert "50 real observations drawn evenly from the data, 10 of them replaced by the task's reset " \
           "states" in (again / "COMMAND.txt").read_text()
    assert (again / "data.json").read_text() == (out / "data.json").read_text()


# two PPO rollouts of 256 envs x horizon 5: the learner trains between its two recordings
ROUNDS = LearnerDataConfig(rounds=1, seeds=(5, 6), imagined_steps=2560, checkpoints=2, real_steps=60)


@pytest.fixture(scope="module")
def with_round(built, tmp_path_factory) -> tuple[Path, Path]:
    """(shipped folder, work folder) of the tiny build with one round of learner data added."""
    root = tmp_path_factory.mktemp("round")
    work = copy_of(built[1], root / "work")
    return build(root / "out", work, replace(TINY, learner_data=ROUNDS)), work


def test_a_learner_round_records_the_learners_real_episodes_and_ships_the_model_refitted_on_them(
        built, with_round):
    out, work = with_round
    base = EpisodeBuffer.load(work / "data.npz")
    learned = EpisodeBuffer.load(work / "learner_data_1.npz")
    # every learner recorded real_steps at each checkpoint, the last episode of each cut short
    assert learned.n_transitions == 2 * 2 * 60
    record = json.loads((out / "data.json").read_text())
    names = [f"learner in the model, round 1, seed {s}" for s in (5, 6)]
    assert list(record["parts"])[-2:] == names
    assert [record["parts"][n]["transitions"] for n in names] == [120, 120]
    assert record["transitions_kept"] == base.n_transitions + 240
    collected = json.loads((built[0] / "data.json").read_text())["real_steps_collected"]
    assert record["real_steps_collected"] == collected + 240
    # the first episode of a learner begins at the reset its seeded draw names
    env = gym.make(TASK)
    first = np.random.default_rng([LEARNER_RESET_SEED, 1, 5]).integers(2**31)
    np.testing.assert_array_equal(learned.episodes[0].observations[0],
                                  env.reset(seed=int(first))[0].astype(np.float32))
    # real episodes: the recorded actions, replayed from the recorded simulator state, give its next states
    episode = learned.episodes[1]
    env.reset(seed=0)
    env.unwrapped.set_state(episode.qpos[0], episode.qvel[0])
    for t in range(episode.length):
        obs, reward, *_ = env.step(episode.actions[t])
        np.testing.assert_allclose(obs, episode.observations[t + 1], rtol=1e-5, atol=1e-5)
    # the shipped model is the one refitted on data and learner episodes, its limit calibrated on both
    refit = WorldModel.load(work / "world_model_1.pt", device="cpu")
    shipped = WorldModel.load(out / "world_model.pt", device="cpu")
    first_fit = WorldModel.load(work / "world_model.pt", device="cpu")
    windows = learned.sample_windows(64, refit.horizon, np.random.default_rng(1))
    h = refit.horizon

    def imagined(model: WorldModel) -> torch.Tensor:
        with torch.no_grad():
            return model.imagine(windows.states[:, 0], actions=windows.actions[:, :h]).observations

    rounding = (imagined(shipped) - imagined(refit)).abs().max()         # its float16 copy
    assert rounding < 0.02 and (imagined(refit) - imagined(first_fit)).abs().max() > 10 * rounding
    both = base.joined(learned)
    on_data = build_module.data_disagreement(refit, both, np.random.default_rng(TINY.data.seed))
    assert shipped.config.disagreement_limit == pytest.approx(float(np.quantile(on_data, 0.9)), rel=1e-12)
    text = (out / "COMMAND.txt").read_text()
    assert "20 Adam steps each, refitted after 1 round of learner data;" in text and names[0] in text
    settings = json.loads(text.split("build settings: ", 1)[1])
    assert settings["learner_data"] == asdict(ROUNDS) | {"seeds": [5, 6]}


def test_a_build_with_a_round_resumes_each_round_and_refuses_other_learner_settings(
        with_round, tmp_path, monkeypatch):
    out, work = with_round
    work = copy_of(work, tmp_path / "work")
    before = snapshot(work)
    forbid(monkeypatch, "collect_broad_data", "fit_world_model", "collect_learner_data")
    again = build(tmp_path / "out", work, replace(TINY, learner_data=ROUNDS))
    assert snapshot(work) == before
    assert (again / "COMMAND.txt").read_text() == (out / "COMMAND.txt").read_text()
    with pytest.raises(ValueError, match="holds a learner_data stage"):
        build(tmp_path / "other", work, replace(TINY, learner_data=replace(ROUNDS, real_steps=61)))
    assert snapshot(work) == before and not (tmp_path / "other").exists()
    # other pessimism means another env the learner trained in: the stored round is refused
    with pytest.raises(ValueError, match="holds a learner_data stage"):
        build(tmp_path / "other", work, replace(TINY, learner_data=ROUNDS, disagreement_penalty=0.5))
    assert snapshot(work) == before
    # a second round reuses the first: only round 2 is recorded and fitted anew, in the round-1 model as
    # it ships (its pessimism calibrated on the data with round 1, its start states)
    monkeypatch.undo()
    seen, fits = [], []
    real_collect, real_fit = build_module.collect_learner_data, build_module.fit_world_model

    def collect(env_id, model, starts, config, round_, log):
        seen.append((round_, model.config.disagreement_penalty, model.config.disagreement_limit, starts))
        return real_collect(env_id, model, starts, config, round_, log)

    def fit(*args, **kwargs):
        fits.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(build_module, "collect_learner_data", collect)
    monkeypatch.setattr(build_module, "fit_world_model", fit)
    forbid(monkeypatch, "collect_broad_data")
    build(tmp_path / "two", work, replace(TINY, learner_data=replace(ROUNDS, rounds=2)))
    assert len(seen) == 1 and len(fits) == 1
    round_, penalty, limit, starts = seen[0]
    shipped = WorldModel.load(out / "world_model.pt", device="cpu")
    assert (round_, penalty, limit) == (2, 0.7, shipped.config.disagreement_limit)
    np.testing.assert_array_equal(starts, np.load(out / "start_states.npy"))
    for name in ("world_model_1.pt", "learner_data_1.npz"):
        assert (work / name).read_bytes() == before[work / name][1]
    assert (work / "world_model_2.pt").is_file() and (work / "learner_data_2.npz").is_file()


def test_learner_checkpoints_closer_than_a_rollout_are_refused_before_training(built, tmp_path, monkeypatch):
    work = copy_of(built[1], tmp_path / "work")
    before = snapshot(work)
    monkeypatch.setattr(ImaginationPPO, "learn", lambda *_a, **_k: pytest.fail("a learner trained"))
    close = replace(ROUNDS, imagined_steps=2000, checkpoints=2)
    with pytest.raises(ValueError, match=r"at least one PPO rollout \(1280 imagined steps\) apart: "
                                         r"imagined_steps 2000 / checkpoints 2"):
        build(tmp_path / "out", work, replace(TINY, learner_data=close))
    assert snapshot(work) == before and not (tmp_path / "out").exists()
