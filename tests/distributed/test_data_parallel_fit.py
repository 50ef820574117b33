"""The world-model fit on two data-parallel workers (torchrun with gloo, and Ray Train): ranks in step after
every step, the same model as a one-process fit of the same settings, the usual model file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ddp_fit import build_parser, job_from_args, main, plan
from imagined_env.training import new_trainer
from imagined_env.world_model import WorldModel
from tests.distributed.conftest import STEPS, TINY_FLAGS

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*is out of date")]

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
"""Two half-batch gradients averaged sum their floats in another order than one whole-batch gradient
(relative differences near float32's 1e-7); Adam's steps are scale-free ratios of the gradients, so this
moves each weight by about lr x 1e-7 per step, far inside 1e-6 over a few steps."""


def flat(net: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy().copy()


def run(args: list[str], timeout: float = 600) -> None:  # generous: busy machines start slowly
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_ranks(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fit by `torchrun --nproc_per_node=2` (gloo), each rank's weights recorded after every step."""
    out = tmp_path_factory.mktemp("two_ranks")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests/distributed/rank_steps.py"), str(data_file), str(out), *TINY_FLAGS])
    return out


@pytest.fixture(scope="module")
def one_process(data_file: Path) -> dict[str, list]:
    """The reference: the one-process `WorldModelTrainer.train` on the whole batch of 8, step by step."""
    checked = plan(job_from_args(build_parser().parse_args([str(data_file), "unused", *TINY_FLAGS])), 1)
    trainer = new_trainer(checked.buffer, checked.spec, checked.config.world_model, checked.config.train,
                          device="cpu")
    steps: dict[str, list] = {"params": [], "ema": [], "loss": []}
    for _ in range(STEPS):
        steps["loss"] += trainer.train(checked.buffer, 1)
        steps["params"].append(flat(trainer.model.denoiser))
        steps["ema"].append(flat(trainer.model.ema))
    return steps


def test_ranks_hold_equal_weights_and_ema_after_every_step(two_ranks: Path):
    ranks = [np.load(two_ranks / f"rank{r}.npz") for r in (0, 1)]
    for key in ("params", "ema"):
        assert ranks[0][key].shape[0] == STEPS
        for step in range(STEPS):
            assert np.array_equal(ranks[0][key][step], ranks[1][key][step]), (key, step)
        assert not np.array_equal(ranks[0][key][0], ranks[0][key][-1]), f"{key} did not change"
    model = WorldModel.load(two_ranks / "world_model.pt", device="cpu")
    assert np.array_equal(flat(model.denoiser), ranks[0]["params"][-1])
    assert np.array_equal(flat(model.ema), ranks[0]["ema"][-1])
    report = json.loads((two_ranks / "fit.json").read_text())
    assert (report["workers"], report["backend"], report["batch_per_worker"]) == (2, "gloo", 4)


def test_two_ranks_equal_the_one_process_fit_of_the_whole_batch(two_ranks: Path, one_process: dict):
    rank0 = np.load(two_ranks / "rank0.npz")
    for key in ("params", "ema"):
        for step in range(STEPS):
            np.testing.assert_allclose(rank0[key][step], one_process[key][step], **TOLERANCE,
                                       err_msg=f"{key} after step {step + 1}")
    final_loss = json.loads((two_ranks / "fit.json").read_text())["final_loss"]
    assert final_loss == pytest.approx(np.mean(one_process["loss"]), rel=1e-5)


def test_one_process_without_a_launcher_is_the_one_process_fit(data_file: Path, tmp_path: Path,
                                                               one_process: dict):
    assert main([str(data_file), str(tmp_path), *TINY_FLAGS]) == 0
    model = WorldModel.load(tmp_path / "world_model.pt", device="cpu")
    assert np.array_equal(flat(model.denoiser), one_process["params"][-1])
    assert np.array_equal(flat(model.ema), one_process["ema"][-1])
    assert json.loads((tmp_path / "fit.json").read_text())["workers"] == 1


def test_ray_train_with_two_workers_writes_the_same_model(data_file: Path, tmp_path: Path, one_process: dict):
    pytest.importorskip("ray.train.torch",
                        reason="Ray Train is not installed (pip install 'imagined-env[ray]')")
    script = textwrap.dedent(f"""
        import ray
        from agents.ddp_fit import main
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        main({[str(data_file), str(tmp_path / "out"), *TINY_FLAGS, "--ray", "2",
               "--storage", str(tmp_path / "ray")]!r})
    """)
    run([sys.executable, "-c", script])  # its own process: Ray here must not meet a Ray of other tests
    model = WorldModel.load(tmp_path / "out" / "world_model.pt", device="cpu")
    np.testing.assert_allclose(flat(model.denoiser), one_process["params"][-1], **TOLERANCE)
    np.testing.assert_allclose(flat(model.ema), one_process["ema"][-1], **TOLERANCE)
    report = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert (report["workers"], report["backend"]) == (2, "gloo")


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["{tmp}/missing.npz", "{tmp}/out"], {}, "missing.npz' does not exist"),
    (["{data}", "{tmp}/out", "--ray", "0"], {}, "number of workers must be an integer >= 1, got 0"),
    (["{data}", "{tmp}/out", "--steps", "0"], {}, "steps must be an integer >= 1, got 0"),
    (["{data}", "{tmp}/out"], {"RANK": "0", "WORLD_SIZE": "3"},
     "batch size 256 must be divisible by the number of workers 3"),
])
def test_bad_input_is_refused_before_any_work(data_file: Path, tmp_path: Path, capsys, monkeypatch,
                                              argv: list[str], env: dict[str, str], message: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path, data=data_file) for a in argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_ray_launcher_without_ray_says_how_to_install_it(data_file: Path, tmp_path: Path, capsys,
                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray now fails as if it were absent
    with pytest.raises(SystemExit) as exit_:
        main([str(data_file), str(tmp_path / "out"), "--ray", "2"])
    assert exit_.value.code == 2
    assert "pip install 'imagined-env[ray]'" in capsys.readouterr().err
