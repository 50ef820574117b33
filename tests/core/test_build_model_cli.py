"""`imagined-env build-model`: bad input is a one-line usage error (exit 2) before any folder is made."""
from __future__ import annotations

import pytest

from agents.cli import main


@pytest.mark.parametrize("flags,message", [
    (["--env", "Hoper-v4"], "unknown task id 'Hoper-v4'; did you mean Hopper-v4"),
    (["--env", "Ant-v4"], "task 'Ant-v4' has no imagined version"),
    (["--preset", "cpu-v9"], "unknown preset 'cpu-v9'"),
    (["--n-members", "1"], "n_members must be an int >= 2"),
    (["--fit-steps", "0"], "fit_steps must be an int >= 1"),
    (["--fit-steps", "many"], "fit_steps must be an integer, got 'many'"),
    (["--disagreement-penalty", "-1"], "disagreement_penalty must be a finite number >= 0"),
    (["--disagreement-quantile", "1.5"], "disagreement_quantile must be in (0, 1] or None"),
    (["--n-start-states", "0"], "n_start_states must be an int >= 1"),
    (["--reset-start-share", "1"], "reset_start_share must be in [0, 1), got 1.0"),
    (["--quiet-action-stds", "0.1,0"], "quiet_action_stds must be a tuple of finite numbers > 0"),
    (["--quiet-action-steps", "0"], "quiet_action_steps must be an int >= 1"),
    (["--terminations", "rule"], "terminations must be one of learned, task, got 'rule'"),
    (["--data.ppo-steps", "-5"], "ppo_steps must be an int >= 0"),
    (["--data.ppo-kept-steps", "1.5"], "data.ppo_kept_steps must be an integer"),
    (["--data.final-noise-stds=0.1,-0.3"], "final_noise_stds must be a tuple of finite numbers >= 0"),
    (["--data.seed", "-1"], "seed must be an int >= 0"),
    (["--data.algo", "td3"], "algo must be one of ppo, sac, got 'td3'"),
    (["--data.algo", "sac", "--data.ppo-steps", "10000"], "ppo_steps must exceed SAC's 10000 steps"),
    (["--data.algo", "sac", "--data.ppo-steps", "0"], "ppo_steps must exceed SAC's 10000 steps"),
    (["--learner-data.rounds", "-1"], "rounds must be an int >= 0"),
    (["--learner-data.seeds", "7,7"], "seeds must be a non-empty tuple of distinct ints >= 0"),
    (["--source", "rerun"], "source must be one of run, broad, got 'rerun'"),
    (["--run-data.steps", "0"], "run_data.steps must be an int >= 1"),
    (["--run-data.preset", "cpu-v99"], "unknown preset 'cpu-v99'"),
    (["--run-data.terminations", "rule"], "terminations must be one of learned, task, got 'rule'"),
])
def test_bad_input_exits_2_with_one_line_before_making_folders(tmp_path, capsys, flags, message):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["build-model", str(out), "--work", str(work), *flags]
    if "--env" not in flags:
        argv += ["--env", "Hopper-v4"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    last = err.rstrip("\n").splitlines()[-1]
    assert message in last and last.startswith("imagined-env build-model: error: "), err
    assert not out.exists() and not work.exists()
