"""`cowblock serve` and nbdkit with the cowblock plugin (csrc/nbdkit)
against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy and libnbd
(nbdsh's Python bindings) — each test skipped, saying why, when its tool
is missing.  Servers run as subprocesses (`python -m cowblock serve`, or
nbdkit) in the test's temp dir and are stopped by pid.  The tests of the
`served` fixture run against both; those of serve's own behaviour (its
--readonly, exports appearing in a pool that a Python process also holds)
against `cowblock serve` only."""
import concurrent.futures
import json
import random
import signal
import subprocess
import time

import pytest

import cowblock
from nbd_support import (SERVERS, NbdkitProcess, ThreadServer, build_plugin, client_env,
                         libnbd, need, need_libnbd_python, plugin_env, run, start_server)

MiB = 1 << 20
B = 64 * 1024
DISK = 64 * MiB


def merged(runs):
    out = []
    for off, n in sorted(runs):
        if out and out[-1][0] + out[-1][1] >= off:
            out[-1] = (out[-1][0], max(out[-1][0] + out[-1][1], off + n) - out[-1][0])
        else:
            out.append((off, n))
    return out


def make_pool(path):
    """A pool with 'disk' (data here and there), 'snap' (its read-only
    snapshot, then disk changed) and 'empty'; returns what each reads."""
    rng = random.Random(7)
    with cowblock.Pool.create(path, size=512 * MiB) as pool:
        disk = pool.create_device("disk", DISK)
        for off in (0, 3 * B + 100, 17 * MiB, 40 * MiB - 10):
            disk.write(off, rng.randbytes(150 * 1024))
        pool.snapshot("disk", "snap", readonly=True)
        disk.write(17 * MiB, b"\xaa" * B)
        disk.discard(0, B)
        pool.create_device("empty", 16 * MiB)
        content = {n: pool.device(n).read(0, pool.device(n).size) for n in pool.devices()}
        extents = {n: merged(pool.device(n).extents()) for n in pool.devices()}
    return content, extents


@pytest.fixture(params=SERVERS)
def served(request, tmp_path):
    pool = tmp_path / "pool"
    content, extents = make_pool(pool)
    server = start_server(request.param, pool, tmp_path / "s.sock")
    server.content, server.extents, server.pool_path = content, extents, pool
    try:
        yield server
    finally:
        if server.proc is not None:
            assert server.stop() == 0, server.stderr


def reopen_check(pool_path):
    with cowblock.Pool.open(pool_path) as pool:
        report = pool.check()
        assert report.ok, report.messages
        return {n: pool.device(n).read(0, pool.device(n).size) for n in pool.devices()}


# ----------------------------------------------------------------------- qemu


def test_qemu_img_info(served):
    need("qemu-img")
    info = json.loads(run(["qemu-img", "info", "--output=json", served.uri("disk")]).stdout)
    assert info["virtual-size"] == DISK and info["format"] == "raw"


def test_qemu_img_map_matches_device_extents(served):
    need("qemu-img")
    for name in ("disk", "snap", "empty"):
        out = json.loads(run(["qemu-img", "map", "--output=json", "-f", "raw",
                              served.uri(name)]).stdout)
        assert sum(e["length"] for e in out) == len(served.content[name])
        data = merged((e["start"], e["length"]) for e in out if e["data"])
        assert data == served.extents[name], name
        assert all(e["zero"] for e in out if not e["data"])


def test_qemu_img_convert_qcow2_then_compare(served, tmp_path):
    need("qemu-img")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(served.content["disk"])
    qcow = tmp_path / "disk.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", served.uri("disk"), str(qcow)])
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", served.uri("disk"), str(qcow)])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(raw), served.uri("disk")])
    changed = run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", served.uri("snap"),
                   str(qcow)], check=False)
    assert changed.returncode == 1, changed.stdout  # the snapshot differs


def test_qemu_io_writes_then_verified_reads(served):
    need("qemu-io")
    uri = served.uri("disk")
    writes = [(0, 4096, 0x11), (5 * MiB + 512, 3 * 4096, 0x22), (DISK - 512, 512, 0x33),
              (17 * MiB + 1000, 70000, 0x44)]
    cmds = []
    for off, n, pat in writes:
        cmds += ["-c", f"write -P {pat} {off} {n}"]
    run(["qemu-io", "-f", "raw", *cmds, "-c", "flush", uri])
    cmds = []
    for off, n, pat in writes:
        cmds += ["-c", f"read -P {pat} {off} {n}"]
    out = run(["qemu-io", "-f", "raw", *cmds, uri]).stdout
    assert "Pattern verification failed" not in out and out.count("read ") == len(writes)
    assert served.stop() == 0
    got = reopen_check(served.pool_path)["disk"]
    want = bytearray(served.content["disk"])
    for off, n, pat in writes:
        want[off:off + n] = bytes([pat]) * n
    assert got == want


def test_qemu_io_on_a_read_only_export_is_refused(served):
    need("qemu-io")
    r = run(["qemu-io", "-f", "raw", "-c", "write 0 512", served.uri("snap")], check=False)
    assert r.returncode != 0 or "failed" in r.stdout + r.stderr


# ----------------------------------------------------------------------- nbdinfo, nbdcopy


def test_nbdinfo_list_and_map(served):
    need("nbdinfo")
    info = json.loads(run(["nbdinfo", "--list", "--json", served.uri("")]).stdout)
    exports = {e["export-name"]: e for e in info["exports"]}
    assert sorted(exports) == ["disk", "empty", "snap"]
    assert exports["snap"]["is_read_only"] and not exports["disk"]["is_read_only"]
    assert exports["disk"]["export-size"] == DISK and exports["disk"]["can_multi_conn"]
    assert "base:allocation" in exports["disk"]["contexts"]
    out = json.loads(run(["nbdinfo", "--map", "--json", served.uri("disk")]).stdout)
    data = merged((e["offset"], e["length"]) for e in out if e["type"] & 1 == 0)
    assert data == served.extents["disk"]


def test_nbdcopy_both_ways(served, tmp_path):
    need("nbdcopy")
    rng = random.Random(3)
    src = bytearray(16 * MiB)
    for off in range(0, len(src), 3 * MiB):  # data with holes between
        src[off:off + MiB] = rng.randbytes(MiB)
    (tmp_path / "in.raw").write_bytes(src)
    run(["nbdcopy", "--flush", str(tmp_path / "in.raw"), served.uri("empty")])
    run(["nbdcopy", served.uri("empty"), str(tmp_path / "out.raw")])
    assert (tmp_path / "out.raw").read_bytes() == src
    run(["nbdcopy", served.uri("disk"), str(tmp_path / "disk.raw")])
    assert (tmp_path / "disk.raw").read_bytes() == served.content["disk"]
    assert served.stop() == 0
    with cowblock.Pool.open(served.pool_path) as pool:
        ext = merged(pool.device("empty").extents())
        assert sum(n for _, n in ext) < len(src)  # the zeros were not written as data
        assert pool.device("empty").read(0, len(src)) == src


def test_several_clients_on_one_export_and_on_others(served):
    need("qemu-io")
    jobs = [("disk", k * 4 * MiB, 0x50 + k) for k in range(4)] + [
        ("empty", k * 4 * MiB, 0x60 + k) for k in range(3)]

    def write(job):
        name, off, pat = job
        run(["qemu-io", "-f", "raw", "-c", f"write -P {pat} {off} {2 * MiB}",
             "-c", f"read -P {pat} {off} {2 * MiB}", served.uri(name)])

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        list(ex.map(write, jobs))
    got = {n: None for n in ("disk", "empty")}
    for name, off, pat in jobs:
        out = run(["qemu-io", "-f", "raw", "-r", "-c", f"read -P {pat} {off} {2 * MiB}",
                   served.uri(name)]).stdout
        assert "verification failed" not in out, (name, off)
    assert served.stop() == 0
    got = reopen_check(served.pool_path)
    assert got["snap"] == served.content["snap"]


def test_new_device_appears_without_restart(tmp_path):
    need("nbdinfo")
    with cowblock.Pool.create(tmp_path / "pool", size=64 * MiB) as pool:
        pool.create_device("first", MiB)
        srv = ThreadServer(pool, tmp_path / "s.sock").start()
        try:
            uri = f"nbd+unix:///?socket={srv.socket}"
            names = lambda: [e["export-name"] for e in json.loads(  # noqa: E731
                run(["nbdinfo", "--list", "--json", uri]).stdout)["exports"]]
            assert names() == ["first"]
            pool.create_device("second", 2 * MiB)
            pool.snapshot("first", "third", readonly=True)
            assert names() == ["first", "second", "third"]
            out = json.loads(run(["nbdinfo", "--json",
                                  f"nbd+unix:///second?socket={srv.socket}"]).stdout)
            assert out["exports"][0]["export-size"] == 2 * MiB
        finally:
            srv.stop()


def test_nbdkit_plugin_device_parameter_exports_one_device(tmp_path):
    need_libnbd_python()
    plugin = build_plugin()
    pool = tmp_path / "pool"
    content, _ = make_pool(pool)
    server = NbdkitProcess(plugin, pool, tmp_path / "s.sock", params=["device=snap"]).start()
    try:
        out = libnbd(r"""
h = nbd.NBD(); h.set_opt_mode(True); h.connect_uri(sys.argv[1])
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
assert names == ["snap"], names
h.set_export_name("disk")   # any name: the one device
h.opt_go()
assert h.is_read_only() and h.get_size() == 64 << 20
print(h.pread(4, 3 * 65536 + 100).hex())
""", f"nbd+unix:///?socket={server.socket}")
        assert out.stdout.strip() == content["snap"][3 * B + 100:3 * B + 104].hex()
    finally:
        assert server.stop() == 0, server.stderr


@pytest.mark.parametrize("params,message", [
    ([], "the pool=DIR parameter is required"),
    (["pool=PATH/nope"], "cannot open the pool"),
    (["pool=PATH/pool", "device=missing"], "device 'missing' of pool"),
    (["pool=PATH/pool", "device=a/b"], "is not a device name"),
    (["pool=PATH/pool", "colour=blue"], "unknown parameter 'colour'"),
])
def test_nbdkit_plugin_refuses_bad_parameters(tmp_path, params, message):
    need("nbdkit")
    plugin = build_plugin()
    make_pool(tmp_path / "pool")
    params = [p.replace("PATH", str(tmp_path)) for p in params]
    r = run(["nbdkit", "-f", "-U", str(tmp_path / "s.sock"), plugin, *params], timeout=30,
            check=False, env=plugin_env())
    assert r.returncode != 0 and message in r.stderr, r.stderr


# ----------------------------------------------------------------------- libnbd corners


CORNERS = r"""
import errno
uri, ro_uri, kind = sys.argv[1], sys.argv[2], sys.argv[3]
MiB = 1 << 20
# A read over the maximum that may not be fragmented: EOVERFLOW, as the spec
# says a server SHOULD; nbdkit does not tell its plugins about DF, so the
# plugin refuses such a read as it refuses any over the maximum.
DF_OVER_MAXIMUM = errno.EOVERFLOW if kind == "serve" else errno.EINVAL

def fails(err, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as exc:
        assert exc.errno == errno.errorcode[err], (fn.__name__, exc.errno, exc.string)
        return exc.string
    raise AssertionError(f"{fn.__name__} succeeded")

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()
assert size == 64 * MiB
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_cache()
assert h.can_fast_zero() and h.can_df() and h.can_multi_conn() and not h.is_read_only()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
assert h.get_structured_replies_negotiated()

h.set_strict_mode(0)   # let libnbd send what a careful client never would
fails(errno.EINVAL, h.pread, 4096, size - 100)
fails(errno.ENOSPC, h.pwrite, b"x" * 4096, size - 100)
fails(errno.EINVAL, h.pread, 33 * MiB, 0)
fails(DF_OVER_MAXIMUM, h.pread, 33 * MiB, 0, nbd.CMD_FLAG_DF)
fails(errno.EINVAL, h.pread, 512, 0, 1 << 9)
fails(errno.EINVAL, h.trim, 512, size)
fails(errno.EINVAL, h.cache, 33 * MiB, 0)
if kind == "serve":                          # zero lengths are not errors
    assert h.pread(0, 10) == b""
    h.pwrite(b"", 10)
    h.trim(0, 10)
else:   # the spec leaves them to the server: nbdkit refuses them itself
    fails(errno.EINVAL, h.pread, 0, 10)
    fails(errno.ENOSPC, h.pwrite, b"", 10)
    fails(errno.EINVAL, h.trim, 0, 10)
h.set_strict_mode(nbd.STRICT_MASK)

# write, FUA, unaligned, DF read
h.pwrite(b"\x01" * 3000, 4097, nbd.CMD_FLAG_FUA)
assert h.pread(3000, 4097) == b"\x01" * 3000
# WRITE_ZEROES: FAST_ZERO with NO_HOLE cannot be fast
h.pwrite(b"\x02" * MiB, 8 * MiB)
fails(errno.ENOTSUP, h.zero, MiB, 8 * MiB, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(MiB, 8 * MiB) == b"\x02" * MiB       # left as it was
h.zero(MiB, 8 * MiB, nbd.CMD_FLAG_FAST_ZERO)          # a discard: fast
assert h.pread(MiB, 8 * MiB) == bytes(MiB)
h.zero(MiB, 10 * MiB, nbd.CMD_FLAG_NO_HOLE)           # written zeros: allocated
assert h.pread(MiB, 10 * MiB) == bytes(MiB)

def status(off, n, flags=0):
    got = []
    def cb(ctx, offset, entries, err):
        assert ctx == nbd.CONTEXT_BASE_ALLOCATION
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(n, off, cb, flags)
    return got

st = status(8 * MiB, 3 * MiB)
assert st == [(2 * MiB, 3), (MiB, 0)], st            # fast zero: a hole; NO_HOLE: data
assert status(8 * MiB, 3 * MiB, nbd.CMD_FLAG_REQ_ONE) == [(2 * MiB, 3)]
assert sum(n for n, _ in status(0, size)) <= size
h.trim(MiB, 10 * MiB)
assert h.pread(MiB, 10 * MiB) == bytes(MiB)
assert status(10 * MiB, MiB, nbd.CMD_FLAG_REQ_ONE) == [(MiB, 3)]
h.cache(4 * MiB, 0)
h.flush()
h.shutdown()

# read-only export
r = nbd.NBD()
r.connect_uri(ro_uri)
assert r.is_read_only() and not r.can_trim() and not r.can_zero()
r.set_strict_mode(0)
fails(errno.EPERM, r.pwrite, b"x", 0)
fails(errno.EPERM, r.trim, 512, 0)
r.flush()
r.shutdown()

# no structured replies: simple replies, no block status
s = nbd.NBD()
s.set_request_structured_replies(False)
s.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
s.connect_uri(uri)
assert not s.get_structured_replies_negotiated() and not s.can_df()
assert not s.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert s.pread(3000, 4097) == b"\x01" * 3000
s.set_strict_mode(0)
fails(errno.EINVAL, s.pread, 512, size)
s.shutdown()

# option haggling
o = nbd.NBD()
o.set_opt_mode(True)
o.connect_uri(uri)
names = []
o.opt_list(lambda name, desc: names.append(name) or 0)
assert sorted(names) == ["disk", "empty", "snap"], names
contexts = []
o.opt_list_meta_context(lambda name: contexts.append(name) or 0)
assert contexts == ["base:allocation"], contexts
o.set_export_name("nope")
try:
    o.opt_info()
except nbd.Error as exc:
    assert exc.errno == "ENOENT", exc.string     # NBD_REP_ERR_UNKNOWN
else:
    raise AssertionError("opt_info on a missing export succeeded")
o.set_export_name("snap")
o.opt_info()
assert o.get_size() == 64 * MiB and o.is_read_only()
o.set_export_name("disk")
o.opt_go()
assert o.pread(3000, 4097) == b"\x01" * 3000
o.shutdown()

# an unknown export through the URI
u = nbd.NBD()
try:
    u.connect_uri(uri.replace("/disk?", "/missing?"))
except nbd.Error as exc:
    assert exc.errno == "ENOENT", exc.string
else:
    raise AssertionError("connected to a missing export")
print("corners ok")
"""


def test_libnbd_protocol_corners(served):
    need_libnbd_python()
    out = libnbd(CORNERS, served.uri("disk"), served.uri("snap"), served.kind)
    assert "corners ok" in out.stdout
    assert served.stop() == 0
    reopen_check(served.pool_path)


MULTI_CONN = r"""
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(sys.argv[1]); b.connect_uri(sys.argv[1])
assert a.can_multi_conn() and b.can_multi_conn()
a.pwrite(b"\x5a" * 65536, 1 << 20)          # acknowledged on a, not flushed
assert b.pread(65536, 1 << 20) == b"\x5a" * 65536
b.flush()                                   # a flush on b covers a's write
a.pwrite(b"\x5b" * 4096, 2 << 20, nbd.CMD_FLAG_FUA)   # durable when acknowledged
print("flushed", flush=True)
sys.stdin.read()                            # hold both connections until killed
"""


def test_multi_conn_flush_on_one_connection_covers_the_others(served):
    need_libnbd_python()
    client = subprocess.Popen(["/usr/bin/python3", "-c", "import nbd, sys\n" + MULTI_CONN,
                               served.uri("disk")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=client_env())
    try:
        assert client.stdout.readline().strip() == "flushed"
        assert served.kill() == -signal.SIGKILL
    finally:
        client.stdin.close()
        client.wait(30)
    got = reopen_check(served.pool_path)["disk"]
    assert got[MiB:MiB + 65536] == b"\x5a" * 65536
    assert got[2 * MiB:2 * MiB + 4096] == b"\x5b" * 4096


@pytest.mark.parametrize("kind", SERVERS)
def test_readonly_server_exports_everything_read_only(tmp_path, kind):
    need_libnbd_python()
    pool = tmp_path / "pool"
    content, _ = make_pool(pool)
    meta = (pool / "meta").read_bytes()
    server = start_server(kind, pool, tmp_path / "s.sock", readonly=True)
    try:
        out = libnbd(r"""
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.is_read_only() and not h.can_trim()
h.set_strict_mode(0)
try:
    h.pwrite(b"x", 0)
except nbd.Error as exc:
    assert exc.errno == "EPERM", exc.errno
else:
    raise AssertionError("a write went through")
print(h.pread(4, 3 * 65536 + 100).hex())
""", server.uri("disk"))
        assert out.stdout.strip() == content["disk"][3 * B + 100:3 * B + 104].hex()
    finally:
        assert server.stop() == 0
    assert (pool / "meta").read_bytes() == meta


def test_disconnect_commits_unflushed_writes(served):
    need_libnbd_python()
    libnbd(r"""
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x77" * 8192, 12345)
h.shutdown()            # NBD_CMD_DISC, no flush
""", served.uri("disk"))
    served.wait_log({"serve": "committed 1 unflushed writes after the client left",
                     "nbdkit": "committed the unflushed writes to 'disk' after the client left",
                     }[served.kind])
    assert served.kill() == -signal.SIGKILL
    assert reopen_check(served.pool_path)["disk"][12345:12345 + 8192] == b"\x77" * 8192


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_signal_commits_while_a_client_is_connected(served, sig):
    need_libnbd_python()
    client = subprocess.Popen(["/usr/bin/python3", "-c", r"""
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x66" * 4096, 1 << 22)
print("written", flush=True)
sys.stdin.read()
""", served.uri("disk")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=client_env())
    try:
        assert client.stdout.readline().strip() == "written"
        if served.kind == "serve":   # drops the client, commits, exits
            assert served.stop(sig) == 0, served.stderr
        else:
            # nbdkit usually lets a connected client finish before it exits,
            # but may also close the connection first: either way the write
            # the client made must be committed by the plugin's close
            served.send_signal(sig)
            time.sleep(0.5)
            client.stdin.close()
            assert served.stop(sig, signalled=True) == 0, served.stderr
    finally:
        client.stdin.close()
        client.wait(30)
    assert reopen_check(served.pool_path)["disk"][1 << 22:(1 << 22) + 4096] == b"\x66" * 4096


def test_sigkill_during_nbdcopy_keeps_what_was_flushed(served, tmp_path):
    need("nbdcopy")
    rng = random.Random(11)
    first = rng.randbytes(16 * MiB)
    second = rng.randbytes(48 * MiB)
    (tmp_path / "first.raw").write_bytes(first)
    (tmp_path / "second.raw").write_bytes(second)
    # A copy that ends with a flush: all of it is durable when nbdcopy returns.
    run(["nbdcopy", "--flush", str(tmp_path / "first.raw"), served.uri("empty")])
    # Then a big copy into another export, killed in the middle.
    # Small requests one at a time, so that it is still running when killed.
    copy = subprocess.Popen(["nbdcopy", "--flush", "--connections=1", "--requests=1",
                             "--request-size=4096", str(tmp_path / "second.raw"),
                             served.uri("disk")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=client_env())
    time.sleep(0.15)  # nbdkit's plugin copies all of it in about 0.4 s here
    assert copy.poll() is None, "nbdcopy finished before the kill"
    assert served.kill() == -signal.SIGKILL
    copy.wait(60)
    got = reopen_check(served.pool_path)
    assert got["empty"][:len(first)] == first
    assert got["snap"] == served.content["snap"]
    old, disk = served.content["disk"], got["disk"]
    new = 0
    for off in range(0, DISK, 4096):  # every sub-block old or new, never anything else
        piece = disk[off:off + 4096]
        assert piece in (old[off:off + 4096], second[off:off + 4096]), off
        new += piece == second[off:off + 4096]
    assert new < DISK // 4096  # killed part-way: not all of it got there
