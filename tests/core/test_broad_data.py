"""Broad data's parts that need no simulator: even thinning of a learner's episodes, and the build's
settings checked before any work."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.broad_data import BroadDataConfig, RecordedEpisode, thin_evenly
from agents.build_model import BuildConfig


def episodes_of(lengths: list[int]) -> list[RecordedEpisode]:
    """Episodes of the given lengths; each one's first reward is its index, to tell them apart."""
    return [RecordedEpisode(actions=[np.zeros(1, np.float32)] * n, rewards=[float(i)] + [0.0] * (n - 1))
            for i, n in enumerate(lengths)]


def kept_indices(kept: list[RecordedEpisode]) -> list[int]:
    return [int(e.rewards[0]) for e in kept]


# ---- thin_evenly ----------------------------------------------------------------------------------
# The rule keeps episode i when (kept steps with it) <= f * (steps up to and including it) + L_i / 2, with
# f = keep_steps / all steps. What that guarantees: at every prefix of the sequence the kept steps are
# within half the longest episode of f times the prefix's steps, so in all they are at most keep_steps
# plus half the longest episode (and at least keep_steps minus that).

def test_hand_worked_example():
    # lengths 2 6 2 2 4 4 (20 steps), keep 10, f = 1/2; test "kept + L <= seen / 2 + L / 2":
    # 0: 0+2 <= 1+1 keep (2) | 1: 2+6 <= 4+3 no | 2: 2+2 <= 5+1 keep (4) | 3: 4+2 <= 6+1 keep (6)
    # 4: 6+4 <= 8+2 keep (10) | 5: 10+4 <= 10+2 no
    kept = thin_evenly(episodes_of([2, 6, 2, 2, 4, 4]), 10)
    assert kept_indices(kept) == [0, 2, 3, 4]
    assert sum(e.length for e in kept) == 10


def test_every_other_episode_of_equal_lengths():
    kept = thin_evenly(episodes_of([10] * 10), 50)
    assert kept_indices(kept) == [0, 2, 4, 6, 8]


def test_the_overshoot_is_at_most_half_an_episode_and_can_reach_it():
    # lengths 1, 10, keep 5 (f = 5/11): 0: 1 <= 5/11 + 1/2 no | 1: 10 <= 5 + 5 keep
    kept = thin_evenly(episodes_of([1, 10]), 5)
    assert kept_indices(kept) == [1]
    assert sum(e.length for e in kept) == 5 + 10 / 2


def test_short_early_episodes_keep_their_share_of_steps_not_of_episodes():
    # 100 falls of 1 step, then 10 runs of 100 steps (1100 steps), keep half: half of the falls' steps and
    # half of the runs' steps (thinning by episode count would keep 55 episodes, nearly all falls)
    lengths = [1] * 100 + [100] * 10
    kept = thin_evenly(episodes_of(lengths), 550)
    indices = kept_indices(kept)
    assert sum(1 for i in indices if i < 100) == 50
    assert [i for i in indices if i >= 100] == [100, 102, 104, 106, 108]
    assert sum(e.length for e in kept) == 550


def test_uniform_lengths_are_kept_evenly_in_both_halves():
    episodes = episodes_of([7] * 200)
    kept = kept_indices(thin_evenly(episodes, 300))
    first, second = 7 * sum(i < 100 for i in kept), 7 * sum(i >= 100 for i in kept)
    # each end of the second half may be off by half an episode, so the halves differ by at most one
    assert abs(first - 150) <= 3.5 and abs(second - 150) <= 7 and abs(first - second) <= 7


@pytest.mark.parametrize("seed", range(20))
def test_every_prefix_keeps_its_share_within_half_the_longest_episode(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 200, size=int(rng.integers(1, 80)))]
    if seed % 2:
        lengths.sort()                                    # a learner's episodes grow longer as it improves
    total = sum(lengths)
    keep = int(rng.integers(0, total))
    episodes = episodes_of(lengths)
    kept = thin_evenly(episodes, keep)
    indices = kept_indices(kept)
    assert indices == sorted(set(indices))                # whole episodes, in order, each at most once
    assert all(kept[j] is episodes[i] for j, i in enumerate(indices))
    f, slack = keep / total, max(lengths) / 2
    seen = kept_steps = 0
    for i, n in enumerate(lengths):
        seen += n
        kept_steps += n if i in indices else 0
        assert f * seen - slack - 1e-9 <= kept_steps <= f * seen + slack + 1e-9, (i, kept_steps, f * seen)
    assert kept_steps <= keep + slack


@pytest.mark.parametrize("keep", [100, 101, 10_000])
def test_all_is_kept_under_budget(keep):
    episodes = episodes_of([30, 50, 20])
    kept = thin_evenly(episodes, keep)
    assert kept == episodes and kept is not episodes


def test_nothing_is_kept_for_a_budget_of_zero_or_no_episodes():
    assert thin_evenly(episodes_of([3, 4]), 0) == []
    assert thin_evenly([], 10) == []


# ---- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("random_episodes", -1), ("random_episodes", 1.5), ("ppo_steps", -100), ("ppo_steps", "1000"),
    ("ppo_kept_steps", -1), ("ppo_kept_steps", None), ("final_steps_per_noise", -5), ("seed", -1),
    ("final_noise_stds", (0.1, -0.3)), ("final_noise_stds", (math.nan,)), ("final_noise_stds", (math.inf,)),
    ("final_noise_stds", 0.1), ("final_noise_stds", ("0.1",)),
])
def test_bad_data_settings_name_their_field(field, value):
    with pytest.raises(ValueError, match=field):
        BroadDataConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("preset", "cpu-v9"), ("n_members", 1), ("n_members", 2.0), ("fit_steps", 0), ("fit_steps", None),
    ("disagreement_penalty", -0.5), ("disagreement_penalty", math.nan), ("disagreement_penalty", math.inf),
    ("disagreement_quantile", 0.0), ("disagreement_quantile", 1.5), ("disagreement_quantile", math.nan),
    ("n_start_states", 0), ("n_start_states", 10.0), ("terminations", "rule"), ("terminations", None),
    ("reset_start_share", -0.1), ("reset_start_share", 1.0), ("reset_start_share", math.nan),
    ("reset_start_share", "0.25"), ("reset_start_share", True),
])
def test_bad_build_settings_name_their_field(field, value):
    with pytest.raises(ValueError, match=field):
        BuildConfig(**{field: value})


def test_the_defaults_and_edge_values_are_accepted():
    BroadDataConfig()
    BroadDataConfig(random_episodes=0, ppo_steps=0, ppo_kept_steps=0, final_noise_stds=(),
                    final_steps_per_noise=0)
    BuildConfig()
    BuildConfig(preset="cpu", n_members=2, fit_steps=1, disagreement_penalty=0.0, disagreement_quantile=1.0,
                n_start_states=1)
    BuildConfig(disagreement_quantile=None)
    BuildConfig(reset_start_share=0.0)
    BuildConfig(reset_start_share=0.99)
    BuildConfig(terminations="learned")


# ---- the records of the data's learner -------------------------------------------------------------
def test_the_data_learner_is_keyed_and_named_only_when_it_is_not_ppo():
    """Earlier builds' stage records (PPO, no `algo` key) must still match; SAC data is keyed, and the
    shipped origin and reference name the learner its parts came from."""
    from pathlib import Path

    from agents.build_model import data_origin, data_reference, data_stage_settings
    ppo = BuildConfig(source="broad")
    sac = BuildConfig(source="broad", data=BroadDataConfig(algo="sac"))
    # the record of every build before `algo` existed (imagined_env/pretrained/Hopper-v4/COMMAND.txt)
    assert json.loads(json.dumps(data_stage_settings(ppo))) == {
        "random_episodes": 10, "ppo_steps": 300000, "ppo_kept_steps": 150000, "final_noise_stds": [0.1, 0.3],
        "final_steps_per_noise": 10000, "seed": 0}
    assert data_stage_settings(sac)["algo"] == "sac"
    assert {k: v for k, v in data_stage_settings(sac).items() if k != "algo"} == data_stage_settings(ppo)
    assert data_origin(ppo) == "RL Zoo PPO and random data"
    assert data_origin(sac) == "RL Zoo SAC and random data"
    part = {"episodes": 1, "transitions": 10}
    parts = {"final SAC policy + N(0, 0.1^2)": {**part, "mean_return": 2900.0},
             "final SAC policy + N(0, 0.3^2)": {**part, "mean_return": 1200.0}}
    assert data_reference(sac, parts, Path(".")) == {
        "policy": "RL Zoo SAC's final policy + N(0, 0.1^2) action noise", "mean_return": 2900.0}
    assert data_reference(ppo, parts, Path(".")) is None       # no PPO part: nothing to name
