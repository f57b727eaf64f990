"""The goals of DESIGN.md section 8, computed from the groups of one run.

They are reported, not enforced: each is the median of ratios computed pair by pair within one
repetition, against the limit the design sets (e.g. cowblock / qcow2 extended_l2=on <= 1/1.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .results import Goal
from .util import fmt_time

if TYPE_CHECKING:
    from .runner import Runner


def evaluate(r: Runner) -> None:
    """Compute every goal from the groups that ran, record them in ``r.goals``, print them."""
    G = r.goals

    def add(key, text, value, limit, kind="max", shown=""):
        G.append(Goal(key, text, value, limit, kind, shown))

    for mode in ("page cache", "O_DIRECT"):
        cb = "cowblock" if mode == "page cache" else "cowblock (direct)"
        for variant, tool in (("stride", "qemu-img bench"), ("random", "qemu-img bench")):
            g = r.find("W1", f"copy-up {variant}", mode)
            if not g:
                continue
            tag = f"W1 {variant} [{mode}]"
            add(tag, "cowblock / qcow2 extended_l2=on <= 1/1.3",
                g.ratio(cb, "qcow2 extended_l2=on"), 1 / 1.3)
            add(tag, "cowblock / qcow2 extended_l2=off <= 1/4",
                g.ratio(cb, "qcow2 extended_l2=off"), 0.25)
            add(tag, f"cowblock / raw file ({tool}) <= 1.15",
                g.ratio(cb, f"raw file ({tool})"), 1.15)
            add(tag, "cowblock / raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "raw file (Python os.pwrite)"), 1.15)
            add(tag, "cowblock / new sparse raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "new sparse raw file (Python os.pwrite)"), 1.15)
            add(tag, "cowblock / fallocated raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "fallocated raw file (Python os.pwrite)"), 1.15)
            add(tag, "(keep_freed, reusing a removed snapshot's blocks) "
                "cowblock / raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb + ", reusing freed blocks", "raw file (Python os.pwrite)"), 1.15)
        g = r.find("W2", "sequential copy-up", mode)
        if g:
            add(f"W2 [{mode}]", "cowblock / raw file (qemu-img bench) <= 1.15",
                g.ratio(cb, "raw file (qemu-img bench)"), 1.15)
            add(f"W2 [{mode}]", "cowblock / raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "raw file (Python os.pwrite)"), 1.15)
            add(f"W2 [{mode}]", "cowblock / new sparse raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "new sparse raw file (Python os.pwrite)"), 1.15)
            add(f"W2 [{mode}]", "cowblock / fallocated raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb, "fallocated raw file (Python os.pwrite)"), 1.15)
            add(f"W2 [{mode}]", "(keep_freed, reusing a removed snapshot's blocks) "
                "cowblock / raw file (Python os.pwrite) <= 1.15",
                g.ratio(cb + ", reusing freed blocks", "raw file (Python os.pwrite)"), 1.15)
    for variant in ("sequential", "random"):
        g = r.find("W3", f"{variant} reads")
        if g:
            deepest = max((d for d in r.a.depths if d > 1), default=None)
            if deepest:
                add("W3 " + variant, f"cowblock depth {deepest} / depth 1 <= 1.05",
                    g.ratio(f"cowblock depth {deepest}", "cowblock depth 1"), 1.05)
                add("W3 " + variant, f"(depth alone) cowblock depth {deepest} / depth 1 "
                    f"with the same writes <= 1.05",
                    g.ratio(f"cowblock depth {deepest}",
                            f"cowblock depth 1, writes of depth {deepest}"), 1.05)
    g = r.find("W4", "Pool.snapshot() time")
    if g:
        names = [e.name for e in g.entries]
        add("W4", "snapshot(1 TiB device) / snapshot(1 GiB device) <= 2",
            g.ratio(names[1], names[0]), 2.0)
        add("W4", f"snapshot({names[2].split(',')[1].strip()}) / snapshot(1 GiB mapped) <= 2",
            g.ratio(names[2], names[0]), 2.0)
        worst = max((m for m in (g.median(n) for n in names) if m is not None), default=None)
        add("W4", "every snapshot() under 1 ms", worst, 1e-3, shown=fmt_time(worst))
    g = r.find("W5", "Python per-call")
    if g:
        add("W5", "Device.read(4 KiB) / os.pread <= 1.5",
            g.ratio("Device.read(off, 4096)", "os.pread(fd, 4096, off)"), 1.5)
        if "Device.read(off, 4096), mmap" in g.times:
            add("W5", "(mmap) Device.read(4 KiB), mmap / os.pread <= 1.5",
                g.ratio("Device.read(off, 4096), mmap", "os.pread(fd, 4096, off)"), 1.5)
    g = r.find("W5", "batch call")
    if g:
        for n, d in g.pairs:
            if n.startswith("Device.read,"):
                add("W5", f"per block: ({n}) / read_blocks >= 5", g.ratio(n, d), 5.0, "min")
    m = r.extra.get("mem")
    if m:
        med = m["medians"]
        add("MEM", "resident memory growth <= 1 % of mapped data",
            100 * max(med["rss_growth_write"], med["maxrss_growth"]) / m["mapped"], 1.0,
            shown=f"{100 * max(med['rss_growth_write'], med['maxrss_growth']) / m['mapped']:.3f} %")
        add("MEM", "metadata on disk <= 0.1 % of mapped data",
            100 * med["meta_bytes"] / m["mapped"], 0.1,
            shown=f"{100 * med['meta_bytes'] / m['mapped']:.4f} %")

    r.say()
    r.say("GOALS (medians of pair-by-pair ratios, same run)")
    for goal in G:
        val = goal.shown or ("-" if goal.value is None else f"{goal.value:.3f}")
        r.say(f"  {goal.status:>12}  {goal.key:<22} {goal.text}: {val}")
