"""nbdcopy throughput and fio 4 KiB random reads: cowblock serve and the
cowblock nbdkit plugin against qemu-nbd and `nbdkit file`.

The same bytes (a 1 GiB device written in full, and a raw file holding
them) are copied from each server to ``null:`` by nbdcopy, the servers
interleaved round by round; the table gives the median of each.  The page
cache is warm for all three (every one reads the same data once first).
With ``--fio SECONDS``, fio (``--ioengine=nbd``) also reads 4 KiB at random
offsets, queue depth 16, from each server, and the server CPU per request
is given.  cowblock serve (--readonly) and the plugin (readonly=true) both
open the one pool read-only, side by side.

    .venv/bin/python bench/nbd_copy.py [--size 1G] [--rounds 5] [--fio 5] [--dir /var/tmp]

Needs nbdcopy (libnbd-bin), qemu-nbd (qemu-utils) and nbdkit; the plugin is
built into the scratch directory by csrc/nbdkit/build.py (needs
nbdkit-plugin-dev).  A missing peer is left out of the table.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import cowblock
from cowblock.units import format_size, parse_size


def wait_socket(path, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                if len(s.recv(18, socket.MSG_WAITALL)) == 18:
                    return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise RuntimeError(f"no server on {path}")


def build_plugin(out_dir):
    """csrc/nbdkit's plugin built into out_dir; None (and why) if it cannot be."""
    build = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "csrc", "nbdkit", "build.py")
    r = subprocess.run([sys.executable, build, "--out", out_dir], capture_output=True,
                       text=True)
    if r.returncode:
        print(f"nbdkit cowblock: plugin not built, left out: {r.stderr.strip()}",
              file=sys.stderr)
        return None
    return r.stdout.strip()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the pool and the raw file go")
    ap.add_argument("--fio", type=float, default=0, metavar="SECONDS",
                    help="also run fio 4 KiB random reads for this long per server")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    if shutil.which("nbdcopy") is None:
        sys.exit("nbdcopy is not installed (libnbd-bin)")
    work = tempfile.mkdtemp(prefix="cowblock-nbdbench-", dir=args.dir)
    servers = {}
    try:
        chunk = os.urandom(64 << 20)
        raw = os.path.join(work, "disk.raw")
        pool_path = os.path.join(work, "pool")
        with cowblock.Pool.create(pool_path, size=size + (256 << 20)) as pool, \
                open(raw, "wb") as f:
            dev = pool.create_device("disk", size)
            for off in range(0, size, len(chunk)):
                piece = chunk[:min(len(chunk), size - off)]
                dev.write(off, piece)
                f.write(piece)
        plugin = build_plugin(work) if shutil.which("nbdkit") else None
        commands = {
            "cowblock serve": [sys.executable, "-m", "cowblock", "--pool", pool_path, "serve",
                               "--socket", os.path.join(work, "cb.sock"), "--exit-with-parent",
                               "--readonly"],
            "nbdkit cowblock": ["nbdkit", "-f", "--exit-with-parent", "-r", "-U",
                                os.path.join(work, "plugin.sock"), str(plugin),
                                f"pool={pool_path}", "readonly=true"],
            "qemu-nbd": ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "16", "-k",
                         os.path.join(work, "qemu.sock"), raw],
            "nbdkit file": ["nbdkit", "-f", "--exit-with-parent", "-r", "-U",
                            os.path.join(work, "nbdkit.sock"), "file", raw],
        }
        if plugin is None:
            del commands["nbdkit cowblock"]
        uris = {"cowblock serve": f"nbd+unix:///disk?socket={work}/cb.sock",
                "nbdkit cowblock": f"nbd+unix:///disk?socket={work}/plugin.sock",
                "qemu-nbd": f"nbd+unix:///?socket={work}/qemu.sock",
                "nbdkit file": f"nbd+unix:///?socket={work}/nbdkit.sock"}
        socks = {"cowblock serve": "cb.sock", "nbdkit cowblock": "plugin.sock",
                 "qemu-nbd": "qemu.sock",
                 "nbdkit file": "nbdkit.sock"}
        for name, cmd in commands.items():
            if shutil.which(cmd[0]) is None:
                print(f"{name}: {cmd[0]} not installed, left out", file=sys.stderr)
                continue
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_socket(os.path.join(work, socks[name]), proc)
            servers[name] = proc
        times = {n: [] for n in servers}
        cpu = {n: [] for n in servers}
        for n in servers:  # warm the page cache and each server once
            subprocess.run(["nbdcopy", uris[n], "null:"], check=True)
        for _ in range(args.rounds):
            for n, proc in servers.items():
                c0 = cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                subprocess.run(["nbdcopy", uris[n], "null:"], check=True)
                times[n].append(time.perf_counter() - t0)
                cpu[n].append(cpu_seconds(proc.pid) - c0)
        print(f"nbdcopy of a {format_size(size)} export to null:, page cache warm, "
              f"median of {args.rounds} interleaved rounds")
        print(f"{'server':<16} {'MiB/s':>8} {'seconds':>8} {'server CPU s':>13}")
        for n in servers:
            t = statistics.median(times[n])
            print(f"{n:<16} {size / t / 2**20:>8.0f} {t:>8.3f} {statistics.median(cpu[n]):>13.2f}")
        if args.fio:
            import json

            print(f"\nfio 4 KiB random reads, queue depth 16, {args.fio:g} s each")
            print(f"{'server':<16} {'IOPS':>9} {'server CPU us/req':>18}")
            for n, proc in servers.items():
                c0 = cpu_seconds(proc.pid)
                out = subprocess.run(
                    ["fio", "--name=r", "--ioengine=nbd", f"--uri={uris[n]}", "--rw=randread",
                     "--bs=4k", "--iodepth=16", f"--size={size}", f"--runtime={args.fio}",
                     "--time_based", "--output-format=json"],
                    check=True, capture_output=True, text=True).stdout
                used = cpu_seconds(proc.pid) - c0
                job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
                print(f"{n:<16} {job['iops']:>9.0f} {used / max(job['total_ios'], 1) * 1e6:>18.1f}")
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
