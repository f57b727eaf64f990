"""The ``cowblock bench`` command line: arguments, the order of the workloads, the reports."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from ..argparsing import Parser
from ..errors import InvalidArgumentError
from ..units import parse_size
from . import chains, copyup, goals, memory, percall, report, sequential, snapshots
from .runner import Runner
from .util import GiB, KiB, MiB, WORKLOADS, fmt_size, machine_info


def _size(text: str) -> int:
    """A positive size with a binary suffix (``64K``, ``1G``), as every cowblock command takes."""
    try:
        value = parse_size(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def build_parser(prog: str = "cowblock bench") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Benchmark cowblock side by side with qcow2 (qemu-img/qemu-io) and a raw "
                    "file on this machine: copy-up (W1, W2), chain reads (W3), snapshot cost "
                    "(W4), Python per-call cost (W5), memory and metadata (MEM).",
        epilog="Each figure is the median of --repeat runs, engines interleaved per run; "
               "ratios are computed pair by pair within a run. Exit status: 0 when the "
               "benchmark ran (goals are reported, not enforced), 2 on bad arguments.")
    p.add_argument("--dir", help="where to put the files (default: a temporary directory under "
                                 "the current directory, i.e. on the same disk)")
    p.add_argument("--size", type=_size, default=None, help="device size (default 1G)")
    p.add_argument("--block-size", type=_size, default=64 * KiB,
                   help="cowblock block size = qcow2 cluster size (default 64K)")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3; 1 with --quick)")
    p.add_argument("--direct", action="store_true",
                   help="also run W1/W2 with O_DIRECT (qemu -t none, cowblock direct=True)")
    p.add_argument("--only", default="", help=f"comma-separated workloads from {','.join(WORKLOADS)}")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    p.add_argument("--big-mapped", type=_size, default=None,
                   help="W4: mapped data of the large case (default 8G, quick 128M; the "
                        "issue's full case is 64G and needs that much free disk)")
    p.add_argument("--mem-size", type=_size, default=None,
                   help="MEM: bytes mapped in the memory/metadata test (default 4G)")
    p.add_argument("--depths", default=None, help="W3 cowblock chain depths (default 1,10,100,1000)")
    p.add_argument("--qcow2-depths", default=None, help="W3 qcow2 chain depths (default 1,10,100)")
    p.add_argument("--calls", type=int, default=None, help="W5 calls per run (default 200000)")
    p.add_argument("--mmap", action="store_true",
                   help="W5: also measure cowblock with Pool.open(mmap=True), side by side "
                        "(reads from a read-only mapping of the data file)")
    p.add_argument("--batch", type=int, default=256,
                   help="W5: at most this many blocks per read_blocks call (default 256)")
    p.add_argument("--batch-bytes", type=_size, default=MiB,
                   help="W5: and at most this many bytes per read_blocks call (default 1M)")
    p.add_argument("--snapshots-per-run", type=int, default=50, help="W4 snapshot() calls per run")
    p.add_argument("--keep", action="store_true", help="keep the files afterwards")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failed engines")
    return p


def _finish_args(a: argparse.Namespace) -> argparse.Namespace:
    q = a.quick
    a.size = a.size or (64 * MiB if q else GiB)
    a.repeat = a.repeat or (1 if q else 3)
    a.big_mapped = a.big_mapped or (256 * MiB if q else 8 * GiB)
    a.mem_size = a.mem_size or (64 * MiB if q else 4 * GiB)
    a.calls = a.calls or (20000 if q else 200000)
    a.depths = [int(x) for x in (a.depths or "1,10,100,1000").split(",") if x.strip()]
    a.qcow2_depths = [int(x) for x in (a.qcow2_depths or ("1,10" if q else "1,10,100")).split(",")
                      if x.strip()]
    if a.block_size & (a.block_size - 1) or not 4 * KiB <= a.block_size <= MiB:
        raise argparse.ArgumentTypeError("--block-size must be a power of two in [4K, 1M]")
    if a.size % a.block_size:
        raise argparse.ArgumentTypeError("--size must be a multiple of --block-size")
    if a.repeat < 1:
        raise argparse.ArgumentTypeError("--repeat must be at least 1")
    only = [w.strip().upper() for w in a.only.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {bad}; choose from {WORKLOADS}")
    a.only = only or list(WORKLOADS)
    return a


def run(argv: Optional[list[str]] = None, out=sys.stdout, err=sys.stderr) -> dict:
    """Run the benchmark; return the JSON-able results (also printed as tables)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        a = _finish_args(a)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    r = Runner(a, out, err)
    try:
        r.prepare()
        m = machine_info(r.dir)
        r.say(f"cowblock bench: size {fmt_size(a.size)}, block {fmt_size(a.block_size)}, "
              f"repeat {a.repeat}, in {r.dir} ({m['fs']}); {m['nproc']} x {m['cpu']}")
        steps = [("W1", lambda: copyup.run(r, False)), ("W2", lambda: sequential.run(r, False)),
                 ("W3", lambda: chains.run(r)), ("W4", lambda: snapshots.run(r)),
                 ("W5", lambda: percall.run(r)), ("MEM", lambda: memory.run(r))]
        if a.direct and r.direct_ok:  # after the page-cache runs: cowblock reopens direct
            steps += [("W1", lambda: copyup.run(r, True)), ("W2", lambda: sequential.run(r, True))]
        for key, fn in steps:
            if key in a.only:
                try:
                    fn()
                except Exception as e:  # one broken workload must not hide the others
                    r.skip(f"{key}: aborted: {type(e).__name__}: {e}")
                    if a.verbose:
                        import traceback

                        traceback.print_exc(file=err)
        goals.evaluate(r)
        report.summary(r)
        result = report.to_json(r)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1, default=str)
            r.say(f"JSON written to {a.json}")
        if a.plot:
            report.plot(r, a.plot)
        return result
    finally:
        r.close()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``cowblock bench`` (called by cowblock.cli with the remaining argv)."""
    try:
        run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
