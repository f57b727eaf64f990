"""What a run prints and writes at the end: the summary table, JSON, a chart."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from .util import fmt_size, fmt_time, machine_info

if TYPE_CHECKING:
    from .runner import Runner


def to_json(r: Runner) -> dict:
    """Everything the run measured, JSON-able (``--json``)."""
    return {
        "machine": machine_info(r.dir or os.getcwd()),
        "config": {k: v for k, v in vars(r.a).items() if k not in ("func",)},
        "skipped": r.skipped,
        "groups": [g.to_json() for g in r.groups],
        "goals": [dict(dataclasses.asdict(g), status=g.status) for g in r.goals],
        "extra": {k: v for k, v in r.extra.items() if k != "chunk"},
    }


def plot(r: Runner, path: str) -> None:
    """A PNG bar chart of every group's medians (``--plot``; needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        r.say(f"plot: skipped, matplotlib is not installed (pip install matplotlib); "
              f"{path} not written")
        return
    groups = [g for g in r.groups if any(g.median(e.name) for e in g.entries)]
    if not groups:
        r.say("plot: nothing to plot")
        return
    cols = 2
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        names = [e.name for e in g.entries if g.median(e.name)]
        meds = [g.median(n) for n in names]
        scale, unit = (1e6, "us per op") if g.per_op else (1.0, "seconds")
        colors = ["tab:gray" if "raw file" in n or n.startswith("os.") else
                  "tab:blue" if n.startswith("qcow2") else "tab:green" for n in names]
        ax.barh(range(len(names)), [m * scale for m in meds], color=colors)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"median, {unit}", fontsize=8)
        ax.set_title(f"{g.key} {g.title[:70]} [{g.mode}]", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    m = machine_info(r.dir or os.getcwd())
    fig.suptitle(f"cowblock bench - {m['nproc']} x {m['cpu']}, {m['fs']}, "
                 f"repeat {r.a.repeat}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    r.say(f"plot written to {path}")


def summary(r: Runner) -> None:
    """The compact table printed at the end (also the README table)."""
    m = machine_info(r.dir or os.getcwd())
    r.say()
    r.say("=" * 100)
    r.say(f"cowblock bench  {m['date']}  repeat={r.a.repeat}  size={fmt_size(r.a.size)}"
          f"  block={fmt_size(r.a.block_size)}")
    r.say(f"machine: {m['nproc']} x {m['cpu']}, {fmt_size(m['memory'])} RAM, fs {m['fs']}, "
          f"kernel {m['kernel']}, Python {m['python']}, {m.get('qemu', 'qemu: none')}")
    r.say("=" * 100)
    for g in r.groups:
        ref = next((e.name for e in g.entries if e.name.startswith("cowblock")), None)
        r.say(f"{g.key} {g.title} [{g.mode}]")
        for e in g.entries:
            med = g.median(e.name)
            ratio = ""
            for n, d in g.pairs:
                if n == ref and d == e.name and g.ratio(n, d) is not None:
                    ratio = f"{ref}/this = {g.ratio(n, d):.2f}"
                elif n == e.name and n != ref and g.ratio(n, d) is not None:
                    ratio = f"this/{d} = {g.ratio(n, d):.2f}"
            err = "  FAILED" if e.name in g.errors else ""
            r.say(f"  {e.name:<48}{fmt_time(med):>12}  {ratio}{err}")
            for k, v in g.info.get(e.name, {}).items():
                r.say(f"  {'':<48}{'':>12}  {k}: {v}")
