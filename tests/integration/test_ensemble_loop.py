"""The imagination loop with an MLP ensemble as the model: its actions are the policy's draws at the
ensemble's own states, and `compare --algos ensemble-ppo` runs the loop end to end."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.compare import CompareSpec, imagination_run_dir, method_settings, run_method
from agents.ensemble_loop import EnsembleModel
from imagined_env.baselines.mlp_ensemble import EnsembleConfig, EnsembleTrainer, new_mlp_ensemble
from imagined_env.training import spec_from_env
from tests.integration.test_coordinator import TINY
from tests.mujoco.real_states import real_states

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
H = 4


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny networks on one torch thread."""


def test_ensemble_model_imagines_the_policys_draws_at_its_own_states():
    env, buffer, _, _ = real_states("HalfCheetah-v4", 8, 400)
    torch.manual_seed(0)
    ensemble = new_mlp_ensemble(buffer, spec_from_env(env, "HalfCheetah-v4"),
                                EnsembleConfig(n_members=3, n_elites=2, width=32, depth=2), "cpu")
    EnsembleTrainer(ensemble, seed=0).train(buffer, 20)
    model = EnsembleModel(ensemble, H)
    weights = torch.randn(17, 6, generator=torch.Generator().manual_seed(1))
    policy = lambda s: (torch.tanh(s.float() @ weights), torch.full((len(s), 6), 0.2))
    starts = buffer.start_observations()[:8]
    out = model.imagine(starts, policy, generator=torch.Generator().manual_seed(2), n_sample_steps=16)
    assert out.observations.shape == (8, H + 1, 17) and out.rewards.shape == (8, H)
    for k in range(H):
        mean, std = policy(out.observations[:, k])
        z = (out.actions[:, k] - mean) / std
        assert z.abs().max() < 6 and 0.5 < z.std() < 1.5  # a draw of the policy at the imagined state
        next_obs, reward, _ = ensemble.step(out.observations[:, k], out.actions[:, k], deterministic=True)
        torch.testing.assert_close(out.observations[:, k + 1], next_obs)
        torch.testing.assert_close(out.rewards[:, k], reward)
    assert np.isnan(model.guidance_scale)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.check_start_states(np.full((2, 17), np.nan, np.float32))


@pytest.mark.slow
def test_compare_runs_the_ensemble_loop(tmp_path):
    spec = CompareSpec("HalfCheetah-v4", ("ensemble-ppo",), (0,), budget=500, eval_every=200, eval_episodes=1,
                       imagination=replace(TINY, checkpoint_every=200), max_episode_steps=50)
    points = run_method("ensemble-ppo", spec, 0, tmp_path, progress=False)
    assert [p.real_steps for p in points] == [400, 500]
    run = imagination_run_dir(tmp_path, "ensemble-ppo", 0)
    rows = (run / "evaluations.csv").read_text().splitlines()
    header = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    # 40 initial steps, 0.2 per real step after the 300-step prefill, 7 after the refit at 400
    assert int(header["world_model_steps"]) == 40 + 40 + 7
    assert int(header["policy_updates"]) == 2
    assert float(header["noise_to_signal"]) == 0.0  # the elites' mean: no sampling noise
    assert not (run / "checkpoint").exists()
    assert "MLP ensemble" in method_settings(spec)["ensemble-ppo"]
