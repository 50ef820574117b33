"""The global python, numpy and torch RNG states as tensors and plain values, so a checkpoint holding them
loads with `torch.load(weights_only=True)`."""
from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch RNG states (what SB3's `set_random_seed` seeds), as tensors."""
    version, internal, gauss_next = random.getstate()
    # numpy's stub types the no-argument call as the dict form; the default (legacy=True) is the tuple
    _, keys, pos, has_gauss, cached_gaussian = cast(tuple[str, np.ndarray, int, int, float],
                                                    np.random.get_state())
    return {"python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
