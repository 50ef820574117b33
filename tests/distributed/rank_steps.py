"""A torchrun worker for the tests: the command line of `agents.ddp_fit`, fitted by its `run_worker`, with
every rank's weights and EMA weights after every step written to OUT_DIR/rank<r>.npz."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from agents.ddp_fit import build_parser, job_from_args, run_worker
from imagined_env.training import WorldModelTrainer


def flat(net: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy().copy()


def main() -> None:
    job = job_from_args(build_parser().parse_args(sys.argv[1:]))
    steps: dict[str, list[np.ndarray]] = {"params": [], "ema": []}

    def record(trainer: WorldModelTrainer, loss: float) -> None:
        steps["params"].append(flat(trainer.model.denoiser))
        steps["ema"].append(flat(trainer.model.ema))

    run_worker(job, on_step=record)
    out = Path(job.out_dir) / f"rank{os.environ['RANK']}.npz"
    np.savez(out, **{key: np.stack(value) for key, value in steps.items()})


if __name__ == "__main__":
    main()
