"""Pool the per-seed results of `shipped_envs.py` runs into groups, one model each, and compare the groups
over seeds: mean +- std, IQM with its 95% bootstrap interval, and each group's difference from the first
(the baseline) at every imagined-step checkpoint, with intervals that resample both groups' seeds; and
each group's change from its first checkpoint to its last, seed by seed (does PPO hold its return?).

Runs of one model on different seeds (e.g. seeds 0-2 in one file, 3-7 in another) make one group (the
runs of one row of `shipped_envs.py`: shipped unless the label says `LABEL@ROW`); a group
whose runs differ in anything but the seed (model digest, checkpoints, episodes, envs) or repeat a seed
is refused, as are groups measured at different checkpoints.

    python benchmarks/shipped_envs_seeds.py --task Walker2d-v4 \\
        --group "50k-step run data=benchmarks/results/shipped_envs/run-data.json,OTHER.json" \\
        --group "100k-step run data=A.json,B.json" --out benchmarks/results/shipped_envs/compare.json
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from shipped_envs import int_list  # a sibling benchmark (the script's folder is on the path)

from agents.statistics import difference_ci, not_a_claim_note, summarise
from imagined_env.utils import atomic_path

SAME_IN_A_GROUP = ("env_id", "row", "steps", "n_episodes", "model", "pessimism_option", "episode_steps",
                   "learner")
"""Unit fields every run of a group shares: one model, measured the same way (the seed differs)."""
LATER_FIELDS = {"learner": "sb3"}
"""Unit fields that older result files lack, with the value those runs had."""


def read_group(task: str, files: list[Path], row: str = "shipped", steps: list[int] | None = None
               ) -> tuple[dict[str, Any], dict[int, list[float]]]:
    """(what the group's runs share, {seed: real returns at each checkpoint}) of `row` on `task` in `files`,
    at the checkpoints `steps` only when given (a run continues past a checkpoint unchanged by later ones);
    ValueError naming the file when they differ in anything but the seed, a seed repeats, or a checkpoint
    asked for is missing."""
    shared: dict[str, Any] | None = None
    returns: dict[int, list[float]] = {}
    for path in files:
        try:
            stored = json.loads(path.read_text())
            runs, n_envs = stored["runs"], stored["settings"]["n_envs"]
            failed = [name for name in stored.get("failed", {}) if name.startswith(f"{task}_{row}_")]
            if failed:
                warnings.warn(f"{path}: left out, failed: {', '.join(failed)}", stacklevel=2)
            for name, run in runs.items():
                unit = run["unit"]
                if unit["env_id"] != task or unit["row"] != row:
                    continue
                at = {c["steps"]: c["real_return"] for c in run["checkpoints"]}
                kept = list(unit["steps"]) if steps is None else steps
                missing = [k for k in kept if k not in at]
                if missing:
                    raise ValueError(f"{path}: {name} has no checkpoint at {missing} imagined steps")
                these = {**{k: unit.get(k, LATER_FIELDS.get(k)) for k in SAME_IN_A_GROUP},
                         "steps": kept, "n_envs": n_envs}
                if shared is not None and these != shared:
                    differ = sorted(k for k in these if these[k] != shared[k])
                    raise ValueError(f"{path}: {name} differs from the group's other runs in {differ}; "
                                     f"a group is one model measured one way")
                if unit["seed"] in returns:
                    raise ValueError(f"{path}: seed {unit['seed']} of {task} is already in this group "
                                     f"({name})")
                shared = these
                returns[unit["seed"]] = [at[k] for k in kept]
        except KeyError as err:
            raise ValueError(f"{path}: not a shipped_envs.py result (no {err} field)") from None
    if shared is None:
        raise ValueError(f"no {row!r} runs of {task} in {', '.join(map(str, files))}")
    return shared, returns


def compare(task: str, groups: dict[str, list[Path]], rows: dict[str, str] | None = None,
            steps: list[int] | None = None) -> dict[str, Any]:
    """Every group's summary at each checkpoint and its change from the first checkpoint to the last, and
    each later group's difference from the first group; the groups must share their checkpoints (or hold
    `steps`, when given). A group reads the runs of its row in `rows` (default: shipped)."""
    out: dict[str, Any] = {"task": task, "steps": None, "groups": {}}
    arrays = {}
    for label, files in groups.items():
        shared, returns = read_group(task, files, (rows or {}).get(label, "shipped"), steps)
        if out["steps"] is not None and shared["steps"] != out["steps"]:
            raise ValueError(f"group {label!r} was measured at {shared['steps']} imagined steps, the first "
                             f"group at {out['steps']}")
        out["steps"] = shared["steps"]
        per_seed = np.array([returns[s] for s in sorted(returns)])
        arrays[label] = per_seed
        out["groups"][label] = {"files": [os.path.relpath(f) for f in files], "measured": shared,
                                "seeds": sorted(returns), "per_seed": per_seed.tolist(),
                                "summary": [vars(summarise(column)) for column in per_seed.T]}
        if per_seed.shape[1] > 1:   # one checkpoint: no change to report
            out["groups"][label]["last_minus_first"] = vars(summarise(per_seed[:, -1] - per_seed[:, 0]))
    baseline = next(iter(arrays))
    for label, per_seed in list(arrays.items())[1:]:
        out["groups"][label]["minus_baseline"] = [
            {stat: dict(zip(("value", "low", "high"), difference_ci(per_seed[:, i], arrays[baseline][:, i],
                                                                    statistic=stat)))
             for stat in ("mean", "iqm")} for i in range(per_seed.shape[1])]
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
    for label, group in groups.items() if len(steps) > 1 else ():
        c = group["last_minus_first"]
        lines.append(f"{label}: last minus first checkpoint, per seed: mean {c['mean']:+.1f}, IQM "
                     f"{c['iqm']:+.1f} [95% CI {c['iqm_low']:+.1f}, {c['iqm_high']:+.1f}]")
    note = not_a_claim_note([len(g["seeds"]) for g in groups.values()])
    return "\n".join(lines + ([note] if note else []))


def plot(result: dict[str, Any], path: Path) -> bool:
    """IQM vs imagined steps with its 95% interval as a band (as error bars at one checkpoint, side by
    side), a line per group; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = result["steps"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (label, group) in enumerate(result["groups"].items()):
        s = group["summary"]
        iqm, low, high = ([x[k] for x in s] for k in ("iqm", "iqm_low", "iqm_high"))
        name = f"{label} ({len(group['seeds'])} seeds)"
        if len(steps) == 1:
            ax.errorbar([i], iqm, yerr=[[iqm[0] - low[0]], [high[0] - iqm[0]]], marker="o", capsize=6,
                        label=name)
            continue
        line, = ax.plot(steps, iqm, marker="o", label=name)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_title(f"{result['task']}: PPO in the frozen model, IQM and 95% CI", fontsize=10)
    ax.set_ylabel("real return")
    if len(steps) == 1:
        n = len(result["groups"])
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_xticks(range(n), [f"{steps[0] / 1000:g}k"] * n)
        ax.set_xlabel("imagined steps, by group")
    else:
        ax.set_xlabel("imagined steps")
        ax.set_xticks(steps, [f"{s / 1000:g}k" for s in steps])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def parse_group(text: str) -> tuple[str, str, list[Path]]:
    """(label, row, files) of `LABEL[@ROW]=FILE[,FILE...]` (row default: shipped)."""
    head, sep, files = text.partition("=")
    label, at, row = head.partition("@")
    paths = [Path(f) for f in files.split(",") if f]
    if not sep or not label or not paths or (at and not row):
        raise argparse.ArgumentTypeError(f"expected LABEL[@ROW]=FILE[,FILE...], got {text!r}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: no such file {', '.join(missing)}")
    return label, row or "shipped", paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task id of the runs, e.g. Walker2d-v4")
    p.add_argument("--group", type=parse_group, action="append", required=True,
                   help="LABEL[@ROW]=FILE[,FILE...]: shipped_envs.py results of one model, their runs of "
                        "ROW (default shipped); the first group is the baseline")
    p.add_argument("--steps", help="compare at these imagined-step checkpoints only (every run must hold "
                                   "them), e.g. 50000 [default: the runs' own]")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (the plot beside it, .png)")
    args = p.parse_args(argv)
    try:
        steps = None if args.steps is None else int_list(args.steps)
    except ValueError:
        p.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    if steps is not None and (not steps or steps != sorted(set(steps)) or steps[0] < 1):
        p.error(f"--steps must be increasing positive checkpoints, got {args.steps!r}")
    labels = [label for label, _, _ in args.group]
    if len(set(labels)) != len(labels):
        p.error(f"--group labels must differ, got {labels}")
    if args.out.suffix != ".json":
        p.error(f"--out {args.out}: expected a .json path (the plot goes beside it as .png)")
    inputs = {f.resolve() for _, _, files in args.group for f in files}
    if {args.out.resolve(), args.out.with_suffix(".png").resolve()} & (
            inputs | {f.with_suffix(".png") for f in inputs}):
        p.error(f"--out {args.out}: would overwrite an input file or its plot")
    try:
        result = compare(args.task, {label: files for label, _, files in args.group},
                         {label: row for label, row, _ in args.group}, steps)
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
