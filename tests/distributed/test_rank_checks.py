"""The checks a data-parallel fit makes before training: equal parts of the batch, one model on all ranks."""
from __future__ import annotations

import pytest
import torch

import imagined_env.distributed_fit as distributed_fit
from imagined_env.distributed_fit import check_same_on_every_rank, rank_rows, state_digest
from imagined_env.training import new_trainer
from tests.conftest import LINEAR_SPEC, TINY_CONFIG, linear_buffer


def test_ranks_split_the_batch_into_equal_contiguous_parts():
    assert [rank_rows(8, r, 2) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError, match="batch size 8 must be divisible by the number of workers 3"):
        rank_rows(8, 0, 3)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank 2 of 2"):
        rank_rows(8, 2, 2)


def test_a_rank_with_another_model_is_named(monkeypatch):
    model = new_trainer(linear_buffer(), LINEAR_SPEC, TINY_CONFIG, device="cpu").model
    mine = state_digest(model)
    with torch.no_grad():
        next(model.ema.parameters())[0] += 1e-6  # only the EMA copy differs
    assert state_digest(model) != mine
    monkeypatch.setattr(distributed_fit.dist, "get_world_size", lambda: 3)
    gathered = [mine, state_digest(model), mine]
    monkeypatch.setattr(distributed_fit.dist, "all_gather_object", lambda out, _: out.__setitem__(
        slice(None), gathered))
    with pytest.raises(RuntimeError, match=r"ranks \[1\] hold another model than rank 0"):
        check_same_on_every_rank(model)
    gathered = [mine] * 3
    check_same_on_every_rank(model)
