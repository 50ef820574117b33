"""SB3 PPO/A2C in imagination: every action in the rollout buffer produced the next observation."""
from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from agents import ImaginationA2C, ImaginationPPO, ImaginedSB3VecEnv, PlanFollowingPolicy
from agents.plan_following import FiniteSteps
from agents.sb3_guidance import sb3_guide, sb3_value
from imagined_env.vector_env import ImaginedVectorEnv
from tests.conftest import linear_buffer, linear_step
from tests.fakes import LinearFakeModel


class SnapshotBuffer(BaseCallback):
    """Copies the rollout buffer, and log-probs under the policy that collected it, at rollout end."""

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        obs = torch.as_tensor(buf.observations.reshape(-1, buf.observations.shape[-1]))
        act = torch.as_tensor(buf.actions.reshape(-1, buf.actions.shape[-1]))
        with torch.no_grad():
            _, logp, _ = self.model.policy.evaluate_actions(obs, act)
        self.snapshots.append((buf.observations.copy(), buf.actions.copy(), buf.episode_starts.copy(),
                               buf.log_probs.copy(), logp.numpy().reshape(buf.log_probs.shape)))


def imagined_sb3_env(n_envs=8, horizon=5, terminate_above=np.inf):
    model = LinearFakeModel(horizon, terminate_above)
    return ImaginedSB3VecEnv(ImaginedVectorEnv(model, n_envs, start_states=linear_buffer(5, 10))), model


def check_rollout_consistency(snapshots):
    checked = 0
    for obs, act, starts, logp_stored, logp_policy in snapshots:
        np.testing.assert_allclose(logp_stored, logp_policy, rtol=1e-4, atol=1e-4)
        for t in range(len(obs) - 1):
            cont = starts[t + 1] == 0
            expected, _ = linear_step(obs[t][cont], act[t][cont])
            np.testing.assert_allclose(obs[t + 1][cont], expected, rtol=1e-5, atol=1e-5)
            checked += int(cont.sum())
    return checked


@pytest.mark.parametrize("algo,kwargs", [(ImaginationPPO, {"n_epochs": 2, "batch_size": 32}),
                                         (ImaginationA2C, {})])
def test_rollout_buffer_actions_produced_the_next_observations(algo, kwargs):
    env, _ = imagined_sb3_env(terminate_above=1.5)
    snap = SnapshotBuffer()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*differ from the imagined plan")  # never off-plan
        with pytest.warns(UserWarning, match="n_steps=12 is not a multiple of .* H=5"):   # cuts episodes
            model = algo("MlpPolicy", env, n_steps=12, seed=0, policy_kwargs={"log_std_init": 0.0}, **kwargs)
        model.learn(12 * 8 * 3, callback=snap)
    assert isinstance(model.policy, PlanFollowingPolicy)
    assert len(snap.snapshots) == 3
    assert check_rollout_consistency(snap.snapshots) > 200
    all_actions = np.concatenate([s[1].ravel() for s in snap.snapshots])
    assert (np.abs(all_actions) > 1).mean() > 0.1           # the unclipped samples are what is stored


def test_replans_after_every_update():
    env, fake = imagined_sb3_env(n_envs=4, horizon=50)     # episodes longer than the rollouts
    model = ImaginationPPO("MlpPolicy", env, n_steps=5, batch_size=20, n_epochs=1, seed=0)
    model.learn(5 * 4 * 3)
    assert len(fake.calls) == 3 and fake.calls == [4, 4, 4]  # one batched call per rollout, no more


def test_plain_ppo_is_honoured_slowly_with_one_warning():
    env, fake = imagined_sb3_env(n_envs=4)
    snap = SnapshotBuffer()
    model = PPO("MlpPolicy", env, n_steps=6, batch_size=24, n_epochs=1, seed=0)
    with pytest.warns(UserWarning, match="differ from the imagined plan") as record:
        model.learn(6 * 4, callback=snap)
    assert sum("imagined plan" in str(w.message) for w in record) == 1
    assert check_rollout_consistency(snap.snapshots) > 10
    assert len(fake.calls) > 6                              # slow path: a regeneration per step


def test_guidance_sees_observations_through_vecnormalize():
    env, _ = imagined_sb3_env(n_envs=4)
    venv = VecNormalize(env, norm_reward=False)
    venv.obs_rms.mean[:] = 5.0
    venv.obs_rms.var[:] = 4.0
    model = ImaginationPPO("MlpPolicy", venv, n_steps=4, batch_size=16, seed=0)
    guide = env.imagined.replay.policy
    states = torch.randn(6, 3)
    mean, std = guide(states)
    normed = ((states - 5.0) / np.sqrt(4.0 + venv.epsilon)).clamp(-10, 10)
    ref = model.policy.get_distribution(normed).distribution
    torch.testing.assert_close(mean, ref.mean)
    torch.testing.assert_close(std, ref.stddev)


def test_the_critic_in_environment_units_reads_vecnormalize_and_undoes_its_reward_scaling():
    env, _ = imagined_sb3_env(n_envs=4)
    venv = VecNormalize(env)
    venv.obs_rms.mean[:], venv.obs_rms.var[:], venv.ret_rms.var = 5.0, 4.0, 9.0
    model = ImaginationPPO("MlpPolicy", venv, n_steps=4, batch_size=16, seed=0)
    states = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    with torch.no_grad():   # reference: SB3's own normalisation, then its value head, times the return std
        ref = model.policy.predict_values(torch.as_tensor(venv.normalize_obs(states))).flatten().numpy()
    np.testing.assert_allclose(sb3_value(model.policy, venv)(states), ref * np.sqrt(9.0 + venv.epsilon),
                               rtol=1e-5)
    venv.norm_reward = False
    np.testing.assert_allclose(sb3_value(model.policy, venv)(states), ref, rtol=1e-5)
    np.testing.assert_allclose(sb3_value(model.policy, venv, reward_scale=2.0)(states), 2 * ref, rtol=1e-5)


def test_gsde_policy_guides_through_sb3_distribution():
    env, _ = imagined_sb3_env(n_envs=4)
    model = ImaginationPPO("MlpPolicy", env, n_steps=4, batch_size=16, seed=0, use_sde=True)
    model.learn(16)
    states = torch.randn(5, 3)
    mean, std = sb3_guide(model.policy)(states)
    # reference: gSDE's Gaussian written out, std_j(s) = sqrt(sum_i latent_i(s)^2 sigma_ij^2 + eps)
    policy = model.policy
    with torch.no_grad():
        latent = policy.mlp_extractor.forward_actor(policy.extract_features(states))
        sigma = policy.action_dist.get_std(policy.log_std)
        ref_std = torch.sqrt(latent.pow(2) @ sigma.pow(2) + policy.action_dist.epsilon)
        torch.testing.assert_close(mean, policy.action_net(latent))
    torch.testing.assert_close(std, ref_std)
    assert (std.std(dim=0) > 1e-4).all()                   # the std depends on the state


@pytest.mark.slow
def test_real_tiny_world_model_smoke(trained_linear_model):
    wm, buf, _ = trained_linear_model
    env = ImaginedSB3VecEnv(ImaginedVectorEnv(wm, 16, start_states=buf))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = ImaginationPPO("MlpPolicy", env, n_steps=8, batch_size=64, n_epochs=1, seed=0)
        model.learn(16 * 8 * 2)
    assert model.num_timesteps == 256
    assert np.isfinite(wm.guidance_scale)


def test_spread_probe_reads_each_rollout_step_against_the_policy():
    from stable_baselines3.common.env_util import make_vec_env

    from agents.diagnostics import SpreadProbe

    ppo = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=100, seed=0), n_steps=3, batch_size=100, seed=0,
              device="cpu", policy_kwargs={"log_std_init": -1.0})
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 100, 3)).astype(np.float32)         # [step, env, obs]
    with torch.no_grad():
        dist = ppo.policy.get_distribution(torch.as_tensor(obs.reshape(-1, 3))).distribution
    mean = dist.mean.numpy().reshape(3, 100, 1)
    std = dist.stddev.numpy().reshape(3, 100, 1)
    widths = np.array([0.5, 1.0, 2.0])[:, None, None]          # the spread of each rollout step
    actions = (mean + widths * std * rng.normal(size=mean.shape)).astype(np.float32)
    probe = SpreadProbe(std_floor=0.01)
    probe.init_callback(ppo)
    probe.on_rollout_start()
    for step in range(3):
        probe.observe(torch.as_tensor(obs[step]), torch.as_tensor(actions[step]))
    probe.on_rollout_end()
    z = (actions - mean) / std                                    # reference: by hand, per step
    assert probe.first_spread == pytest.approx(np.std(z[0], ddof=1), rel=1e-4)
    assert probe.last_spread == pytest.approx(np.std(z[2], ddof=1), rel=1e-4)
    assert probe.spread == pytest.approx(np.std(z, ddof=1), rel=1e-4)
    assert probe.first_spread < 0.7 and probe.last_spread > 1.6


def test_spread_probe_sees_what_the_rollout_buffer_stores():
    from agents.diagnostics import SpreadProbe
    from imagined_env.diffusion.guidance import standardised_spread

    class ProbeAndBuffer(SpreadProbe):
        def _on_rollout_end(self) -> None:
            self.seen = [torch.cat(parts).numpy() for parts in zip(*self.steps)]
            super()._on_rollout_end()
            buf = self.model.rollout_buffer
            self.stored = [buf.observations.reshape(-1, buf.obs_shape[0]),
                           buf.actions.reshape(-1, buf.action_dim)]
            with torch.no_grad():
                dist = self.model.policy.get_distribution(torch.as_tensor(self.stored[0])).distribution
            self.expected = standardised_spread(torch.as_tensor(self.stored[1]), dist.mean,
                                                dist.stddev.clamp(min=self.std_floor))

    env, _ = imagined_sb3_env(n_envs=6)
    probe = ProbeAndBuffer(std_floor=1e-3)
    model = ImaginationPPO("MlpPolicy", VecNormalize(env), n_steps=5, batch_size=30, n_epochs=1, seed=0)
    model.learn(5 * 6, callback=probe)
    for seen, stored in zip(probe.seen, probe.stored):
        np.testing.assert_array_equal(seen, stored)
    assert probe.spread == probe.expected
    assert np.isfinite(probe.first_spread) and np.isfinite(probe.last_spread)
    assert model.policy.plan_observer is None                # unhooked when learn ends


def fake_task_kwargs(fake):
    """env_kwargs that put the linear fake behind the registered id Imagined-HalfCheetah-v4."""
    return {"world_model": fake,
            "start_states": linear_buffer(5, 10).start_observations()}  # an array: no task


@pytest.mark.parametrize("algo", [ImaginationPPO, ImaginationA2C])
def test_one_line_constructor_builds_the_batched_env_with_n_steps_h(algo):
    fake = LinearFakeModel(horizon=4, env_id="HalfCheetah-v4")
    kwargs = {"batch_size": 32} if algo is ImaginationPPO else {}
    model = algo("MlpPolicy", "Imagined-HalfCheetah-v4", n_envs=8, env_kwargs=fake_task_kwargs(fake), seed=0,
                 **kwargs)
    assert model.n_steps == 4 and model.n_envs == 8 and model.imagined.model is fake
    model.learn(4 * 8 * 3)
    assert fake.calls == [8, 8, 8]                          # one batched generation per rollout
    real_id = algo("MlpPolicy", "HalfCheetah-v4", n_envs=8, env_kwargs=fake_task_kwargs(fake))
    assert real_id.imagined is not None                     # the real task's id learns it in imagination


def test_make_vec_env_of_imagined_envs_names_the_batched_line_which_generates_once_per_rollout():
    from stable_baselines3.common.env_util import make_vec_env

    fake = LinearFakeModel(horizon=4, env_id="HalfCheetah-v4")
    separate = make_vec_env("Imagined-HalfCheetah-v4", n_envs=4, env_kwargs=fake_task_kwargs(fake))
    with pytest.raises(ValueError,
                       match=r"ImaginationPPO\('MlpPolicy', 'Imagined-HalfCheetah-v4', n_envs=4\)"):
        ImaginationPPO("MlpPolicy", separate)
    model = ImaginationPPO("MlpPolicy", "Imagined-HalfCheetah-v4", n_envs=4,  # the line the error names
                           env_kwargs=fake_task_kwargs(fake), batch_size=16, n_epochs=1, seed=0)
    model.learn(4 * 4 * 3)
    assert fake.calls == [4, 4, 4]


def test_n_steps_defaults_to_the_horizon_and_warns_when_it_does_not_fit():
    from stable_baselines3.common.env_util import make_vec_env

    env, _ = imagined_sb3_env(n_envs=4, horizon=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ImaginationPPO("MlpPolicy", env, batch_size=20).n_steps == 5
        assert ImaginationPPO("MlpPolicy", env, n_steps=10, batch_size=20).n_steps == 10
        assert ImaginationA2C("MlpPolicy", env).n_steps == 5
    with pytest.warns(UserWarning, match=r"n_steps=2048 is not a multiple of .* H=5.*discarding up to 2 "):
        ImaginationPPO("MlpPolicy", env, n_steps=2048, batch_size=64)
    real = make_vec_env("Pendulum-v1", n_envs=2)
    assert ImaginationPPO("MlpPolicy", real).n_steps == PPO("MlpPolicy", real).n_steps == 2048
    assert ImaginationA2C("MlpPolicy", real).n_steps == 5  # SB3's defaults on other envs
    with pytest.raises(ValueError, match="n_envs and env_kwargs build an imagined env"):
        ImaginationPPO("MlpPolicy", real, n_envs=4)


def test_a_bare_gymnasium_imagined_vector_env_gets_the_sb3_adapter():
    fake = LinearFakeModel(horizon=4)
    model = ImaginationPPO("MlpPolicy", ImaginedVectorEnv(fake, 4, start_states=linear_buffer(5, 10)),
                           batch_size=16, n_epochs=1)
    assert model.imagined.model is fake and model.n_steps == 4
    model.learn(16)


def test_truncated_envs_are_bootstrapped_in_one_batched_value_call():
    env, _ = imagined_sb3_env(n_envs=6, horizon=3)

    class Record(BaseCallback):
        """Sees each step before the learner's bootstrap: env rewards, last observations."""

        def __init__(self):
            super().__init__()
            self.steps = []

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            self.steps.append((self.locals["rewards"].copy(), [i.get("terminal_observation") for i in infos],
                               [i.get("TimeLimit.truncated", False) for i in infos]))
            return True

        def _on_rollout_end(self) -> None:                  # before the update: the rollout's policy
            self.buffer_rewards = self.model.rollout_buffer.rewards.copy()
            with torch.no_grad():
                self.values = [predict(torch.as_tensor(np.stack(obs))).flatten().numpy()
                               if any(trunc) else None
                               for _, obs, trunc in self.steps]

    model = ImaginationPPO("MlpPolicy", env, n_steps=6, batch_size=36, n_epochs=1, seed=0, gamma=0.9)
    sizes = []
    predict = model.policy.predict_values
    model.policy.predict_values = lambda obs: (sizes.append(len(obs)), predict(obs))[1]
    record = Record()
    model.learn(36, callback=record)
    assert sizes and set(sizes) == {6}                      # no value call of a single env
    truncated_steps = 0
    for t, (rewards, _, truncated) in enumerate(record.steps):
        expected = rewards.copy()
        if any(truncated):
            truncated_steps += 1
            assert all(truncated)                           # every env ends its episode at H together
            expected = rewards + 0.9 * record.values[t]
        np.testing.assert_allclose(record.buffer_rewards[t], expected, rtol=1e-5, atol=1e-6)
    assert truncated_steps == 2


def test_rollouts_run_with_the_env_torch_threads_and_updates_with_the_callers():
    class Threads(BaseCallback):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def _on_step(self) -> bool:
            self.seen.add(torch.get_num_threads())
            return True

    before = torch.get_num_threads()
    imagined = ImaginedVectorEnv(LinearFakeModel(horizon=4), 4, start_states=linear_buffer(5, 10),
                                 torch_threads=before + 1)
    model = ImaginationPPO("MlpPolicy", imagined, batch_size=16, n_epochs=1)
    threads = Threads()
    model.learn(32, callback=threads)
    assert threads.seen == {before + 1} and torch.get_num_threads() == before


class NaNGradients:
    """A gradient hook on one weight that makes its gradient NaN on the backward passes numbered in `at`."""

    def __init__(self, param: torch.Tensor, at: set[int]):
        self.calls, self.at = 0, at
        param.register_hook(self)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return grad * float("nan") if self.calls in self.at else grad


class SkippedPerUpdate(BaseCallback):
    """The logged count of skipped steps of each finished update, read before the next rollout."""

    def __init__(self):
        super().__init__()
        self.counts = []

    def _on_rollout_start(self) -> None:
        if self.model.policy_updates_done:
            self.counts.append(self.model.logger.name_to_value["train/nonfinite_steps_skipped"])
        self.model.policy_updates_done += 1

    def _on_step(self) -> bool:
        return True


def _learn_with_nan_gradients(algo, at, updates=3, env=None, **kwargs):
    env = env or imagined_sb3_env(n_envs=8)[0]
    kwargs = {"batch_size": 20, "n_epochs": 1, **kwargs} if algo is not ImaginationA2C else kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain PPO on an imagined env warns that it leaves the plan
        model = algo("MlpPolicy", env, n_steps=5, seed=0, **kwargs)
        model.policy_updates_done = 0
        hook = NaNGradients(model.policy.action_net.weight, at)
        per_update = SkippedPerUpdate()
        model.learn(5 * 8 * updates, callback=per_update)
    if isinstance(model, ImaginationPPO | ImaginationA2C):
        per_update.counts.append(model.logger.name_to_value["train/nonfinite_steps_skipped"])
    return model, hook, per_update.counts


def test_a_step_with_nan_gradients_is_skipped_and_logged_and_the_weights_stay_finite():
    model, hook, counts = _learn_with_nan_gradients(ImaginationPPO, at={2, 3})  # 2 minibatches an update
    assert hook.calls == 6 and counts == [1, 1, 0] and model.finite_steps.skipped == 2
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    a2c, _, a2c_counts = _learn_with_nan_gradients(ImaginationA2C, at={2})      # one step an update
    assert a2c_counts == [0, 1, 0] and all(torch.isfinite(p).all() for p in a2c.policy.parameters())
    # positive control: SB3's PPO on the same env writes NaN into the weights, and its next rollout dies
    with pytest.raises(ValueError, match="found invalid values"):
        _learn_with_nan_gradients(PPO, at={2, 3})


def test_updates_that_can_take_no_step_end_the_run_with_an_error():
    with pytest.raises(RuntimeError, match="every optimizer step of the last 3 updates had NaN or inf"):
        _learn_with_nan_gradients(ImaginationA2C, at={2, 3, 4}, updates=5)
    _learn_with_nan_gradients(ImaginationA2C, at={2, 3, 5, 6}, updates=6)  # never 3 in a row: runs on


class NaNRewardModel(LinearFakeModel):
    def imagine(self, *args, **kwargs):
        out = super().imagine(*args, **kwargs)
        out.rewards[0, 1] = float("nan")
        return out


def test_a_rollout_with_nan_rewards_is_refused_before_the_update():
    env = ImaginedSB3VecEnv(ImaginedVectorEnv(NaNRewardModel(5), 8, start_states=linear_buffer(5, 10)))
    with pytest.raises(ValueError, match="rollout's rewards hold NaN or inf: the world model"):
        _learn_with_nan_gradients(ImaginationPPO, at=set(), env=env)


def test_the_guard_is_not_saved_and_a_loaded_learner_gets_it_back_with_its_env(tmp_path):
    env, _ = imagined_sb3_env(n_envs=8)
    model = ImaginationPPO("MlpPolicy", env, n_steps=5, batch_size=20, n_epochs=1, seed=0)
    model.learn(5 * 8)
    model.save(tmp_path / "learner.zip")
    with zipfile.ZipFile(tmp_path / "learner.zip") as archive:
        saved = set(json.loads(archive.read("data")))
    assert {"finite_steps", "imagined", "_stalled_updates"}.isdisjoint(saved) and "gamma" in saved
    loaded = ImaginationPPO.load(tmp_path / "learner.zip")
    assert loaded.finite_steps is None                        # no env yet: nothing to guard
    loaded.set_env(env)
    assert isinstance(loaded.policy.optimizer.step, FiniteSteps)
    assert loaded.policy.optimizer.step is loaded.finite_steps
    loaded.set_env(env)                                       # wiring twice installs one guard
    assert loaded.policy.optimizer.step is loaded.finite_steps and loaded.finite_steps._step is not None
    assert not isinstance(loaded.finite_steps._step, FiniteSteps)
