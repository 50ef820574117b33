"""EpisodeBuffer and Normaliser against hand-built episodes and independent reference computations.

Every synthetic observation row is [episode id, step, noise], so a sampled window tells which
(episode, start) it came from and can be compared with the stored slices.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from imagined_env.data.buffer import FORMAT_VERSION, EpisodeBuffer
from imagined_env.data.normaliser import Normaliser

OBS, ACT, NQ, NV = 3, 2, 2, 1


def make_episode(ep: int, length: int, terminated: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + 1000 * ep)
    steps = np.arange(length + 1, dtype=np.float64)
    return dict(
        observations=np.stack([np.full(length + 1, ep), steps, rng.normal(size=length + 1)], axis=1),
        actions=rng.normal(scale=2.0, size=(length, ACT)),
        rewards=100.0 * ep + steps[:-1] + 1.0,  # never 0, so padding zeros are recognisable
        terminated=terminated,
        qpos=np.stack([np.full(length + 1, ep), steps + 0.25], axis=1),
        qvel=(steps + 0.5)[:, None],
    )


def make_buffer(spec: list[tuple[int, bool]], env_id: str | None = "Fake-v0") -> EpisodeBuffer:
    buffer = EpisodeBuffer(OBS, ACT, NQ, NV, env_id=env_id)
    for ep, (length, terminated) in enumerate(spec):
        buffer.add_episode(**make_episode(ep, length, terminated))
    return buffer


def reference_window(episode: dict, start: int, horizon: int) -> dict:
    """Row-by-row rule from the design notes, written as a plain loop."""
    length = len(episode["actions"])
    rows = dict(states=[], actions=[], rewards=[], terminals=[], valid=[])
    for k in range(start, start + horizon + 1):
        real = k < length
        rows["states"].append(episode["observations"][min(k, length)])
        rows["actions"].append(episode["actions"][min(k, length - 1)])
        rows["rewards"].append(episode["rewards"][k] if real else 0.0)
        rows["terminals"].append(1.0 if episode["terminated"] and k >= length - 1 else 0.0)
        rows["valid"].append(real)
    return {key: np.array(value) for key, value in rows.items()}


def decode(windows) -> list[tuple[int, int]]:
    return [(int(e), int(s)) for e, s in windows.states[:, 0, :2]]


# --------------------------------------------------------------------------------------- windows


def test_padding_after_termination_row_by_row():
    buffer = make_buffer([(3, True)])
    ep = make_episode(0, 3, True)
    obs, act, rew = ep["observations"].astype(np.float32), ep["actions"].astype(np.float32), ep["rewards"]
    windows = buffer.sample_windows(200, 4, np.random.default_rng(0))
    assert sorted(set(decode(windows))) == [(0, 0), (0, 1), (0, 2)]
    i = decode(windows).index((0, 1))
    np.testing.assert_array_equal(windows.states[i], obs[[1, 2, 3, 3, 3]])
    np.testing.assert_array_equal(windows.actions[i], act[[1, 2, 2, 2, 2]])
    np.testing.assert_array_equal(windows.rewards[i], [rew[1], rew[2], 0, 0, 0])
    np.testing.assert_array_equal(windows.terminals[i], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(windows.valid[i], [True, True, False, False, False])


def test_non_terminated_windows_are_never_padded():
    buffer = make_buffer([(5, False), (12, False), (3, False)])
    windows = buffer.sample_windows(500, 4, np.random.default_rng(1))
    assert windows.valid.all() and (windows.terminals == 0).all()
    pairs = set(decode(windows))
    assert pairs == {(0, 0)} | {(1, s) for s in range(8)}


@pytest.mark.parametrize("horizon", [1, 3, 7])
def test_windows_match_stored_slices(horizon):
    spec = [(9, False), (4, True), (15, True), (2, False), (11, False)]
    buffer = make_buffer(spec)
    windows = buffer.sample_windows(256, horizon, np.random.default_rng(horizon))
    assert windows.states.shape == (256, horizon + 1, OBS) and windows.states.dtype == np.float32
    assert windows.actions.shape == (256, horizon + 1, ACT) and windows.actions.dtype == np.float32
    assert windows.rewards.shape == windows.terminals.shape == windows.valid.shape == (256, horizon + 1)
    for i, (ep, start) in enumerate(decode(windows)):
        ref = reference_window(make_episode(ep, *spec[ep]), start, horizon)
        np.testing.assert_array_equal(windows.states[i], ref["states"].astype(np.float32))
        np.testing.assert_array_equal(windows.actions[i], ref["actions"].astype(np.float32))
        np.testing.assert_array_equal(windows.rewards[i], ref["rewards"].astype(np.float32))
        np.testing.assert_array_equal(windows.terminals[i], ref["terminals"])
        np.testing.assert_array_equal(windows.valid[i], ref["valid"])


def test_windows_uniform_over_eligible_pairs():
    buffer = make_buffer([(6, False), (4, True), (2, False)])  # H=3: 3 + 4 + 0 eligible starts
    counts = Counter(decode(buffer.sample_windows(7000, 3, np.random.default_rng(2))))
    assert set(counts) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)}
    assert all(850 < c < 1150 for c in counts.values()), counts


def test_sampling_is_reproducible_with_the_generator():
    buffer = make_buffer([(20, False), (7, True)])
    a = buffer.sample_windows(32, 5, np.random.default_rng(3))
    b = buffer.sample_windows(32, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a.states, b.states)


def test_sampling_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="empty"):
        EpisodeBuffer(OBS, ACT, NQ, NV).sample_windows(4, 2, rng)
    buffer = make_buffer([(3, False), (2, False)])
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        buffer.sample_windows(4, 0, rng)
    message = "horizon 3 needs .* at least 4 transitions .* longest stored episode has 3"
    with pytest.raises(ValueError, match=message):
        buffer.sample_windows(4, 3, rng)
    assert buffer.sample_windows(4, 2, rng).valid.all()  # L=3 suffices for H=2


def test_sampling_256_windows_is_fast():
    import time

    buffer = make_buffer([(1000, i % 3 == 0) for i in range(50)])
    rng = np.random.default_rng(0)
    buffer.sample_windows(256, 10, rng)
    begin = time.perf_counter()
    for _ in range(10):
        buffer.sample_windows(256, 10, rng)
    assert (time.perf_counter() - begin) / 10 < 0.01


# ---------------------------------------------------------------------- start states, transitions


def test_start_states_exclude_terminal_observations_and_are_uniform():
    buffer = make_buffer([(2, True), (3, False)])  # eligible: obs 0,1 of ep 0 and obs 0..3 of ep 1
    obs, qpos, qvel = buffer.start_states(np.random.default_rng(4), 6000)
    assert obs.shape == (6000, OBS) and qpos.shape == (6000, NQ) and qvel.shape == (6000, NV)
    assert qpos.dtype == qvel.dtype == np.float64
    np.testing.assert_array_equal(qpos[:, 0], obs[:, 0])  # same episode
    np.testing.assert_array_equal(qpos[:, 1], obs[:, 1] + 0.25)  # same step
    np.testing.assert_array_equal(qvel[:, 0], obs[:, 1] + 0.5)
    counts = Counter((int(e), int(t)) for e, t in obs[:, :2])
    assert set(counts) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)}
    assert all(850 < c < 1150 for c in counts.values()), counts


def test_transitions_are_all_real_steps():
    spec = [(4, True), (3, False), (2, True)]
    data = make_buffer(spec).transitions()
    eps = [make_episode(ep, *s) for ep, s in enumerate(spec)]
    def cat(key: str, rows: slice = slice(None)) -> np.ndarray:
        return np.concatenate([e[key][rows] for e in eps]).astype(np.float32)

    np.testing.assert_array_equal(data.obs, cat("observations", slice(None, -1)))
    np.testing.assert_array_equal(data.next_obs, cat("observations", slice(1, None)))
    np.testing.assert_array_equal(data.actions, cat("actions"))
    np.testing.assert_array_equal(data.rewards, cat("rewards"))
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1, 0, 0, 0, 0, 1])


# --------------------------------------------------------------------------------- add_episode


def test_episodes_are_stored_copies_and_read_only():
    ep = make_episode(0, 5, False)
    buffer = EpisodeBuffer(OBS, ACT, NQ, NV)
    buffer.add_episode(**ep)
    expected = ep["actions"].astype(np.float32)
    ep["actions"][:] = 99.0
    stored = buffer.episodes[0]
    np.testing.assert_array_equal(stored.actions, expected)
    assert stored.length == 5 and not stored.terminated
    assert len(buffer) == 1 and buffer.n_transitions == 5 and len(buffer.episodes) == 1
    with pytest.raises(ValueError):
        stored.observations[0, 0] = 1.0
    assert buffer.episodes[-1].length == 5 and len(buffer.episodes[:]) == 1


def _corrupt(key: str, row: int, value: float) -> dict:
    ep = make_episode(7, 6, False)
    ep[key] = np.array(ep[key], dtype=np.float64)
    ep[key][row] = value
    return ep


@pytest.mark.parametrize(
    "episode, message",
    [
        (_corrupt("actions", 2, np.nan), "actions .* row 2"),
        (_corrupt("observations", 6, np.inf), "observations .* row 6"),
        (_corrupt("rewards", 0, -np.inf), "rewards .* row 0"),
        (_corrupt("qpos", 4, np.nan), "qpos .* row 4"),
        (_corrupt("qvel", 1, -np.inf), "qvel .* row 1"),
        (_corrupt("observations", 3, 1e39), "observations .* float32.* row 3"),  # float32 overflow
        (
            {**make_episode(0, 3, False), "observations": np.zeros((3, OBS))},
            r"observations has shape \(3, 3\), expected \(4, 3\)",
        ),
        ({**make_episode(0, 3, False), "actions": np.zeros((3, ACT + 1))}, "actions has shape"),
        ({**make_episode(0, 3, False), "rewards": np.zeros((3, 1))}, "rewards must have 1 dimension"),
        ({**make_episode(0, 3, False), "qvel": np.zeros((4, NV + 1))}, "qvel has shape"),
        ({**make_episode(0, 3, False), "actions": [["a", "b"]] * 3}, "actions is not convertible"),
        (
            dict(observations=np.zeros((1, OBS)), actions=np.zeros((0, ACT)), rewards=np.zeros(0),
                 terminated=True, qpos=np.zeros((1, NQ)), qvel=np.zeros((1, NV))),
            "at least one transition",
        ),
    ],
)
def test_add_episode_rejects_bad_input_without_changing_state(episode, message):
    buffer = make_buffer([(5, True)])
    before = buffer.sample_windows(16, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        buffer.add_episode(**episode)
    assert len(buffer) == 1 and buffer.n_transitions == 5
    after = buffer.sample_windows(16, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(before.states, after.states)


# ----------------------------------------------------------------------------------- save/load


def assert_same_buffer(a: EpisodeBuffer, b: EpisodeBuffer) -> None:
    assert (a.obs_dim, a.act_dim, a.nq, a.nv, a.env_id) == (b.obs_dim, b.act_dim, b.nq, b.nv, b.env_id)
    assert len(a) == len(b)
    for x, y in zip(a.episodes, b.episodes):
        assert x.terminated == y.terminated
        for name in ("observations", "actions", "rewards", "qpos", "qvel"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
            assert getattr(x, name).dtype == getattr(y, name).dtype


@pytest.mark.parametrize("name", ["buffer.npz", "buffer.data"])
def test_save_load_round_trip(tmp_path: Path, name: str):
    buffer = make_buffer([(4, True), (9, False), (1, True)])
    path = tmp_path / name
    buffer.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # exact name, no temp files left
    assert_same_buffer(buffer, EpisodeBuffer.load(path))


def test_save_load_empty_and_without_env_id(tmp_path: Path):
    buffer = EpisodeBuffer(OBS, ACT, NQ, NV)
    buffer.save(tmp_path / "b.npz")
    loaded = EpisodeBuffer.load(tmp_path / "b.npz")
    assert_same_buffer(buffer, loaded)
    assert loaded.env_id is None


def test_load_missing_truncated_newer_and_inconsistent_files(tmp_path: Path):
    with pytest.raises(ValueError, match="missing.npz.*does not exist"):
        EpisodeBuffer.load(tmp_path / "missing.npz")

    good = tmp_path / "good.npz"
    make_buffer([(30, True), (40, False)]).save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz.*truncated or corrupt"):
        EpisodeBuffer.load(truncated)

    with np.load(good) as npz:
        arrays = dict(npz)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**arrays, "format_version": np.int64(FORMAT_VERSION + 1)})
    with pytest.raises(ValueError, match=f"newer.npz.*format version {FORMAT_VERSION + 1} is newer"):
        EpisodeBuffer.load(newer)

    inconsistent = tmp_path / "inconsistent.npz"
    np.savez(inconsistent, **{**arrays, "lengths": arrays["lengths"] + 1})
    with pytest.raises(ValueError, match="inconsistent.npz.*inconsistent arrays"):
        EpisodeBuffer.load(inconsistent)

    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, **{k: v for k, v in arrays.items() if k != "qvel"})
    with pytest.raises(ValueError, match="incomplete.npz.*qvel"):
        EpisodeBuffer.load(incomplete)


# ---------------------------------------------------------------------------------- normaliser


def hand_built_buffer() -> tuple[EpisodeBuffer, list[dict]]:
    spec = [(6, True), (10, False), (3, True)]
    eps = [make_episode(ep, *s) for ep, s in enumerate(spec)]
    eps[1]["observations"][:, 2] = 5.0  # constant dimension: std floored
    buffer = EpisodeBuffer(OBS, ACT, NQ, NV)
    for ep in eps:
        buffer.add_episode(**ep)
    return buffer, eps


def test_normaliser_fit_matches_numpy_over_real_data():
    buffer, eps = hand_built_buffer()
    low, high = np.array([-1.0, -0.5]), np.array([1.0, 2.0])
    norm = Normaliser.fit(buffer, low, high, min_std=1e-2)
    obs = np.concatenate([e["observations"] for e in eps]).astype(np.float32).astype(np.float64)
    actions = np.clip(np.concatenate([e["actions"] for e in eps]).astype(np.float32), low, high)
    assert (np.concatenate([e["actions"] for e in eps]) > high).any()  # clipping matters here
    rewards = np.concatenate([e["rewards"] for e in eps])
    terminals = np.zeros(19)
    terminals[[5, 18]] = 1.0
    np.testing.assert_allclose(norm.obs_mean, obs.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.obs_std, obs.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.action_mean, actions.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.action_std, actions.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.reward_mean, [rewards.mean()], rtol=1e-6)
    np.testing.assert_allclose(norm.reward_std, [rewards.std()], rtol=1e-6)
    np.testing.assert_allclose(norm.terminal_mean, [terminals.mean()], rtol=1e-6)
    np.testing.assert_allclose(norm.terminal_std, [terminals.std()], rtol=1e-6)
    for value in vars(norm).values():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32


def test_normaliser_floors_std():
    buffer = EpisodeBuffer(OBS, ACT, NQ, NV)
    ep = make_episode(0, 4, False)
    ep["observations"][:, 2] = 3.0
    buffer.add_episode(**ep)
    norm = Normaliser.fit(buffer, -10.0, 10.0, min_std=0.05)
    assert norm.obs_std[2] == np.float32(0.05) and norm.terminal_std[0] == np.float32(0.05)
    assert norm.obs_std[1] > 0.05


def test_normaliser_rows_and_actions():
    buffer, _ = hand_built_buffer()
    norm = Normaliser.fit(buffer, -1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(4, 5, OBS, generator=g)
    rewards, terminals = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g).round()
    x = norm.normalise_rows(states, rewards, terminals)
    assert x.shape == (4, 5, OBS + 2)
    expected_states = (states.numpy() - norm.obs_mean) / norm.obs_std
    np.testing.assert_allclose(x[..., :OBS].numpy(), expected_states, rtol=1e-5, atol=1e-6)
    expected_rewards = (rewards.numpy() - norm.reward_mean) / norm.reward_std
    np.testing.assert_allclose(x[..., OBS].numpy(), expected_rewards, rtol=1e-5)
    np.testing.assert_allclose(
        x[..., OBS + 1].numpy(), (terminals.numpy() - norm.terminal_mean) / norm.terminal_std, rtol=1e-5
    )
    for back, original in zip(norm.unnormalise_rows(x), (states, rewards, terminals)):
        torch.testing.assert_close(back, original)
    actions = torch.randn(7, ACT, dtype=torch.float64, generator=g)
    normalised = norm.normalise_action(actions)
    assert normalised.dtype == torch.float64
    expected_actions = (actions.numpy() - norm.action_mean) / norm.action_std
    np.testing.assert_allclose(normalised.numpy(), expected_actions, rtol=1e-6)
    torch.testing.assert_close(norm.unnormalise_action(normalised), actions)
    torch.testing.assert_close(norm.unnormalise_obs(norm.normalise_obs(states)), states)


def test_normaliser_follows_the_tensor_device():
    buffer, _ = hand_built_buffer()
    norm = Normaliser.fit(buffer, -1.0, 1.0)
    x = torch.zeros(2, 3, OBS + 2, device="meta")
    states, rewards, terminals = norm.unnormalise_rows(x)
    assert states.device.type == rewards.device.type == terminals.device.type == "meta"
    assert norm.normalise_rows(states, rewards, terminals).device.type == "meta"


def test_normaliser_dict_round_trip_through_weights_only_checkpoint(tmp_path: Path):
    buffer, _ = hand_built_buffer()
    norm = Normaliser.fit(buffer, -1.0, 1.0)
    torch.save({"normaliser": norm.to_dict()}, tmp_path / "ckpt.pt")
    loaded = Normaliser.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["normaliser"])
    for key, value in norm.to_dict().items():
        np.testing.assert_array_equal(getattr(loaded, key), getattr(norm, key))
        assert getattr(loaded, key).dtype == np.float32 and value == getattr(loaded, key).tolist()
    with pytest.raises(ValueError, match="keys"):
        Normaliser.from_dict({"obs_mean": [0.0]})


def test_normaliser_rejects_empty_buffer_and_bad_stats():
    with pytest.raises(ValueError, match="empty"):
        Normaliser.fit(EpisodeBuffer(OBS, ACT, NQ, NV), -1.0, 1.0)
    buffer, _ = hand_built_buffer()
    stats = Normaliser.fit(buffer, -1.0, 1.0).to_dict()
    with pytest.raises(ValueError, match="obs_std must be positive"):
        Normaliser.from_dict({**stats, "obs_std": [1.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="reward statistics"):
        Normaliser.from_dict({**stats, "reward_mean": [0.0, 0.0], "reward_std": [1.0, 1.0]})


def test_start_observations_exclude_terminal_final_observations():
    buf = EpisodeBuffer(1, 1, 1, 1)
    for terminated, base in ((True, 0.0), (False, 10.0)):
        obs = base + np.arange(4, dtype=np.float32)[:, None]
        buf.add_episode(obs, np.zeros((3, 1)), np.zeros(3), terminated, np.zeros((4, 1)), np.zeros((4, 1)))
    np.testing.assert_array_equal(buf.start_observations()[:, 0], [0, 1, 2, 10, 11, 12, 13])
    np.testing.assert_array_equal(buf.start_observations(last=5)[:, 0], [2, 10, 11, 12, 13])
    np.testing.assert_array_equal(buf.start_observations(last=100)[:, 0], [0, 1, 2, 10, 11, 12, 13])
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=f"last must be None or an integer >= 1, got {bad}"):
            buf.start_observations(last=bad)


def random_episode(rng: np.random.Generator, length: int, terminated: bool) -> tuple:
    return (rng.normal(size=(length + 1, 3)), rng.normal(size=(length, 2)), rng.normal(size=length),
            terminated, rng.normal(size=(length + 1, 2)), rng.normal(size=(length + 1, 2)))


def test_joined_holds_the_first_buffers_episodes_then_the_seconds():
    rng = np.random.default_rng(0)
    first, second = (EpisodeBuffer(3, 2, 2, 2, env_id="Hopper-v4") for _ in range(2))
    made = [random_episode(rng, n, n % 2 == 0) for n in (3, 5, 2, 4)]
    for i, e in enumerate(made):
        (first if i < 2 else second).add_episode(*e)
    both = first.joined(second)
    assert both.env_id == "Hopper-v4" and len(both) == 4 and both.n_transitions == 14
    for got, want in zip(both.episodes, made):
        np.testing.assert_array_equal(got.observations, want[0].astype(np.float32))
        np.testing.assert_array_equal(got.actions, want[1].astype(np.float32))
        np.testing.assert_array_equal(got.qvel, want[5])
        assert got.terminated == want[3]
    assert len(first) == 2 and len(second) == 2              # the inputs are unchanged
