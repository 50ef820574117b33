"""Every setting is checked before the first real step: exit code 2, one line naming the field, and an
empty run folder."""
from __future__ import annotations

import json

import pytest
import torch

from imagined_env.data.collect import RealCollector
from tests.faults.tiny_runs import tiny_config_file, usage_error


@pytest.fixture(autouse=True)
def no_real_steps(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a real step was taken before the settings were checked")

    monkeypatch.setattr(RealCollector, "collect", refuse)


@pytest.mark.parametrize("flags,names", [
    (["--learner.batch-size", "1"], "batch_size"),                    # refused by SB3's PPO itself
    (["--learner.batch-size", "0"], "learner.batch_size"),
    (["--n-sample-steps", "1000", "--world-model.schedule.n-steps", "128"], "n_sample_steps (1000)"),
    (["--n-imagined-envs", "1", "--world-model.horizon", "1"], "n_steps * n_envs"),
    pytest.param(["--device", "cuda"], "device 'cuda' is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flag_is_refused_before_any_real_step(tmp_path, capsys, flags, names):
    run_dir = tmp_path / "run"
    message = usage_error(["train", "--config", str(tiny_config_file(tmp_path)), "--steps", "300",
                           "--run-dir", str(run_dir), *flags], capsys)
    assert names in message
    assert not run_dir.exists() or list(run_dir.iterdir()) == []


@pytest.mark.parametrize("layer,names", [
    ({"world_model": {"horizon": "5"}}, "world_model.horizon must be an integer, got '5'"),
    ({"learner": {"batch_sise": 4}}, "unknown config key 'learner.batch_sise'"),
    ({"learner_kwargs": {"n_epoch": 4}}, "learner_kwargs key 'n_epoch'"),
    ({"learner": {"policy": {"pi": [64, "wide"]}}}, "learner.policy.pi[1]"),
    ({"n_sample_steps": 2.5}, "n_sample_steps"),
])
def test_bad_config_value_names_its_field(tmp_path, capsys, layer, names):
    config = tmp_path / "layer.json"
    config.write_text(json.dumps(layer))
    message = usage_error(["train", "--config", str(config), "--steps", "10000",
                           "--run-dir", str(tmp_path / "run")], capsys)
    assert names in message
    assert not (tmp_path / "run").exists()
