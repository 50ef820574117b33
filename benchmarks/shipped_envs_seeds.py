"""Pool the per-seed results of `shipped_envs.py` runs into groups, one model each, and compare the groups
over seeds: mean +- std, IQM with its 95% bootstrap interval, and each group's difference from the first
(the baseline) at every imagined-step checkpoint, with intervals that resample both groups' seeds.

Runs of one model on different seeds (e.g. seeds 0-2 in one file, 3-7 in another) make one group; a group
whose files measured different models (their digests differ) or repeat a seed is refused.

    python benchmarks/shipped_envs_seeds.py --task Walker2d-v4 \\
        --group "50k-step run data=benchmarks/results/shipped_envs/run-data.json,OTHER.json" \\
        --group "100k-step run data=A.json,B.json" --out benchmarks/results/shipped_envs/compare.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.statistics import difference_ci, not_a_claim_note, summarise
from imagined_env.utils import atomic_path


def read_group(task: str, files: list[Path], row: str = "shipped") -> tuple[str, dict[int, list[float]]]:
    """(model digest, {seed: real returns at each checkpoint}) of `row` on `task` in `files`."""
    digests, returns, steps = set(), {}, set()
    for path in files:
        for name, run in json.loads(path.read_text())["runs"].items():
            unit = run["unit"]
            if unit["env_id"] != task or unit["row"] != row:
                continue
            if unit["seed"] in returns:
                raise ValueError(f"{path}: seed {unit['seed']} of {task} is already in this group ({name})")
            digests.add(unit["model"])
            steps.add(tuple(c["steps"] for c in run["checkpoints"]))
            returns[unit["seed"]] = [c["real_return"] for c in run["checkpoints"]]
    if not returns:
        raise ValueError(f"no {row!r} runs of {task} in {', '.join(map(str, files))}")
    if len(digests) > 1 or len(steps) > 1:
        raise ValueError(f"{', '.join(map(str, files))}: the runs of {task} measured different models "
                         f"{sorted(digests)} or checkpoints {sorted(steps)}; a group is one model")
    return digests.pop(), returns


def compare(task: str, groups: dict[str, list[Path]], steps: tuple[int, ...]) -> dict[str, Any]:
    """Every group's summary at each checkpoint, and its difference from the first group."""
    out: dict[str, Any] = {"task": task, "steps": list(steps), "groups": {}}
    arrays = {}
    for label, files in groups.items():
        digest, returns = read_group(task, files)
        per_seed = np.array([returns[s] for s in sorted(returns)])
        if per_seed.shape[1] != len(steps):
            raise ValueError(f"group {label!r}: {per_seed.shape[1]} checkpoints, expected {len(steps)}")
        arrays[label] = per_seed
        out["groups"][label] = {"files": [str(f) for f in files], "model": digest, "seeds": sorted(returns),
                                "per_seed": per_seed.tolist(),
                                "summary": [vars(summarise(per_seed[:, i])) for i in range(len(steps))]}
    baseline = next(iter(arrays))
    for label, per_seed in list(arrays.items())[1:]:
        out["groups"][label]["minus_baseline"] = [
            {stat: dict(zip(("value", "low", "high"), difference_ci(per_seed[:, i], arrays[baseline][:, i],
                                                                    statistic=stat)))
             for stat in ("mean", "iqm")} for i in range(len(steps))]
    return out


def table(result: dict[str, Any]) -> str:
    steps, groups = result["steps"], result["groups"]
    lines = [f"{result['task']}: real return after each imagined-step checkpoint",
             f"{'group':44} {'seeds':>5}  " + "  ".join(f"{s:>30,}" for s in steps)]
    for label, group in groups.items():
        cells = [f"{s['mean']:7.1f} IQM {s['iqm']:6.1f} [{s['iqm_low']:6.1f}, {s['iqm_high']:6.1f}]"
                 for s in group["summary"]]
        lines.append(f"{label[:44]:44} {len(group['seeds']):>5}  " + "  ".join(f"{c:>30}" for c in cells))
        for name in ("mean", "iqm"):
            if "minus_baseline" in group:
                diffs = [d[name] for d in group["minus_baseline"]]
                lines.append(f"{'  minus baseline, ' + name:44} {'':>5}  " + "  ".join(
                    f"{d['value']:+8.1f} [{d['low']:+7.1f}, {d['high']:+7.1f}]".rjust(30) for d in diffs))
    note = not_a_claim_note([len(g["seeds"]) for g in groups.values()])
    return "\n".join(lines + ([note] if note else []))


def plot(result: dict[str, Any], path: Path) -> bool:
    """IQM vs imagined steps with its 95% interval as a band, a line per group; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = result["steps"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, group in result["groups"].items():
        s = group["summary"]
        line, = ax.plot(steps, [x["iqm"] for x in s], marker="o",
                        label=f"{label} ({len(group['seeds'])} seeds)")
        ax.fill_between(steps, [x["iqm_low"] for x in s], [x["iqm_high"] for x in s], color=line.get_color(),
                        alpha=0.2)
    ax.set_title(f"{result['task']}: PPO in the frozen model, IQM and 95% CI", fontsize=10)
    ax.set_xlabel("imagined steps")
    ax.set_ylabel("real return")
    ax.set_xticks(steps, [f"{s / 1000:g}k" for s in steps])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def parse_group(text: str) -> tuple[str, list[Path]]:
    label, sep, files = text.partition("=")
    paths = [Path(f) for f in files.split(",") if f]
    if not sep or not label or not paths:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE[,FILE...], got {text!r}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: no such file {', '.join(missing)}")
    return label, paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task id of the runs, e.g. Walker2d-v4")
    p.add_argument("--group", type=parse_group, action="append", required=True,
                   help="LABEL=FILE[,FILE...]: shipped_envs.py results of one model; the first is the "
                        "baseline")
    p.add_argument("--steps", default="50000,100000,200000",
                   help="checkpoints of the runs [default %(default)s]")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (the plot beside it, .png)")
    args = p.parse_args(argv)
    labels = [label for label, _ in args.group]
    if len(set(labels)) != len(labels):
        p.error(f"--group labels must differ, got {labels}")
    try:
        result = compare(args.task, dict(args.group), tuple(int(s) for s in args.steps.split(",")))
    except ValueError as err:
        p.error(str(err))
    print(table(result))
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    drew = plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {args.out.with_suffix('.png')}" if drew else ""))
    return result


if __name__ == "__main__":
    main()
