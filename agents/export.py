"""Turn a coordinator run into a shippable world model: the latest world model, a small start-state
file drawn from the run's real buffer, and the provenance (how `imagined_env/pretrained/` is made)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.config import CoordinatorConfig
from agents.run_files import find_checkpoint, read_state
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModel


def checkpoint_to_export(run_dir: Path) -> Path:
    """The last checkpoint of `run_dir`, or ValueError naming what is missing."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} holds no checkpoint to export "
                         f"(expected {run_dir}/checkpoint/state.json)")
    return checkpoint


def export_run(run_dir: str | Path, out_dir: str | Path, n_episodes: int, command: str) -> Path:
    """Write out_dir/{world_model.pt, start_states.npz, COMMAND.txt} from a run's last checkpoint.

    Start states are `n_episodes` real episodes spread evenly over the buffer, so they cover both
    the early (random) and the late (learnt-policy) state distribution.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    checkpoint = checkpoint_to_export(run_dir)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    model = WorldModel.load(checkpoint / "world_model.pt", device="cpu")
    buffer = EpisodeBuffer.load(checkpoint / "buffer.npz")
    picks = np.unique(np.linspace(0, len(buffer) - 1, min(n_episodes, len(buffer))).round().astype(int))
    starts = buffer.empty_like()
    for i in picks:
        starts.add(buffer.episodes[int(i)])
    # the run imagined with its own chain length: make it the exported model's default
    chain = CoordinatorConfig.from_dict(read_state(checkpoint)["config"]).n_sample_steps
    model.set_default_chain(chain)
    model.save(out_dir / "world_model.pt")
    starts.save(out_dir / "start_states.npz")
    with atomic_path(out_dir / "COMMAND.txt") as tmp:
        tmp.write_text(f"{command}\nexported from {run_dir.name}: task {model.spec.env_id}, "
                       f"{buffer.n_transitions} real steps in its buffer, {model.n_parameters()} denoiser "
                       f"parameters, {chain or model.schedule.n_steps}-step sampling chain; start states: "
                       f"{starts.n_transitions} steps of {len(picks)} episodes\n")
    return out_dir
