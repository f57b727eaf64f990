"""cowblock.daemon: the CLI while another process holds the pool.

A ControlServer runs in this process on a pool this process holds; the
``cowblock`` command runs in a child process, finds the pool busy and the
socket answering, and must print what it prints locally, plus one line.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import cowblock
from cowblock import cli
from cowblock.daemon import ControlServer, protocol
from cowblock.daemon.capture import captured

MiB = 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cowblock.__file__)))
NOTE = "the command ran there"


def cowblock_cmd(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("COWBLOCK_POOL", None)
    res = subprocess.run([sys.executable, "-m", "cowblock", *argv], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=120)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res.returncode, res.stdout, res.stderr


@pytest.fixture
def pool_dir(tmp_path):
    path = str(tmp_path / "pool")
    with cowblock.Pool.create(path, size=1 << 30) as pool:
        dev = pool.create_device("base", 64 * MiB)
        dev.write(0, b"x" * MiB)
        pool.snapshot("base", "layer", readonly=True)
    return path


@pytest.fixture
def served(pool_dir):
    pool = cowblock.Pool.open(pool_dir)
    server = ControlServer(pool, kind="test").start()
    try:
        yield pool_dir, pool, server
    finally:
        server.stop()
        pool.close()
    assert not os.path.exists(server.path)


def test_commands_through_server_print_what_they_print_locally(pool_dir):
    commands = [["df"], ["df", "-v"], ["device", "ls"], ["device", "info", "base"],
                ["pool", "check"], ["--json", "device", "ls"], ["--json", "df"],
                ["device", "info", "nope"]]
    local = [cowblock_cmd("--pool", pool_dir, *c) for c in commands]
    assert local[-1][0] == 1 and "nope" in local[-1][2]
    pool = cowblock.Pool.open(pool_dir)
    with ControlServer(pool, kind="test"):
        remote = [cowblock_cmd("--pool", pool_dir, *c) for c in commands]
    pool.close()
    for c, (lcode, lout, lerr), (rcode, rout, rerr) in zip(commands, local, remote):
        assert (rcode, rout) == (lcode, lout), c
        lines = rerr.splitlines()
        assert lines[-1].endswith(NOTE) and f"pid {os.getpid()}" in lines[-1], c
        assert "\n".join(lines[:-1]) == lerr.rstrip("\n"), c


def test_pool_busy_without_a_server_says_busy(pool_dir):
    with cowblock.Pool.open(pool_dir):
        code, out, err = cowblock_cmd("--pool", pool_dir, "df")
        # a socket file nobody listens on is not a server either
        s = socket.socket(socket.AF_UNIX)
        s.bind(protocol.socket_path(pool_dir))
        s.close()
        code2, _, err2 = cowblock_cmd("--pool", pool_dir, "device", "ls")
    assert code == code2 == 1
    assert "open in another process" in err and NOTE not in err
    assert "open in another process" in err2 and NOTE not in err2


def test_changes_through_server_land_in_the_held_pool(served):
    pool_dir, pool, _ = served
    code, out, err = cowblock_cmd("--pool", pool_dir, "device", "snapshot", "base", "snap")
    assert code == 0, err
    assert "created snapshot snap of base" in out
    assert "snap" in pool.devices()
    assert pool.device("snap").read(0, 4) == b"xxxx"
    code, out, err = cowblock_cmd("--pool", pool_dir, "device", "rm", "snap")
    assert code == 0 and "snap" not in pool.devices()


def test_model_commands_and_pool_from_the_environment(served, tmp_path):
    pool_dir, pool, _ = served
    env_run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "cowblock", *a], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, COWBLOCK_POOL=pool_dir), timeout=120)
    raw = tmp_path / "img.raw"
    raw.write_bytes(b"y" * MiB)
    res = env_run("image", "import", "img", str(raw))
    assert res.returncode == 0, res.stderr
    res = env_run("container", "create", "c1", "img")
    assert res.returncode == 0, res.stderr
    res = env_run("--json", "container", "ls")
    assert res.returncode == 0 and NOTE in res.stderr
    assert [c["name"] for c in json.loads(res.stdout)] == ["c1"]


def test_relative_paths_are_the_clients(served, tmp_path):
    pool_dir, _, _ = served
    work = tmp_path / "work"
    work.mkdir()
    code, out, err = cowblock_cmd("--pool", pool_dir, "device", "export", "base", "out.raw",
                                  cwd=str(work))
    assert code == 0, err
    assert (work / "out.raw").read_bytes()[:MiB] == b"x" * MiB


def _send(path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        protocol.connect(s, path)
        s.sendall(data)
        line = protocol.read_line(s, protocol.MAX_REPLY)
    return protocol.decode(line)


@pytest.mark.parametrize("request_bytes, says", [
    (b"not json\n", "not a JSON line"),
    (b"[1, 2]\n", "JSON object"),
    (b'{"op": 5}\n', "'op' must be"),
    (b'{"nop": 1}\n', "has no 'op'"),
    (b'{"op": "format-disk"}\n', "has no request"),
    (b'{"op": "run", "argv": "df"}\n', "'argv' must be"),
    (b'{"op": "run", "argv": [1]}\n', "list of at most"),
    (b'{"op": "run", "argv": ["df\\u0000"]}\n', "NUL"),
    (b'{"op": "run", "argv": ["df"], "cwd": "relative"}\n', "absolute"),
    (b'\xff\xfe\n', "not a JSON line"),
    (b"[" * 60000 + b"\n", "nested too deeply"),
    (b'{"op": "ping"}\n{"op": "ping"}', "one line per message"),
])
def test_bad_requests_get_a_clear_error(served, request_bytes, says):
    _, _, server = served
    reply = _send(server.path, request_bytes)
    assert reply["ok"] is False and says in reply["error"], reply
    assert _send(server.path, b'{"op": "ping"}\n')["ok"] is True


def test_oversized_request_is_refused(served):
    _, _, server = served
    reply = _send(server.path, b'{"op": "run", "argv": ["' + b"a" * protocol.MAX_REQUEST + b'"]}\n')
    assert reply["ok"] is False and "longer than" in reply["error"]


def test_commands_the_server_does_not_run(served):
    _, _, server = served
    for argv in (["device", "map", "base"], ["device", "unmap", "base"], ["demo"],
                 ["pool", "create", "/tmp/x"]):
        reply = _send(server.path, protocol.encode({"op": "run", "argv": argv}))
        assert reply["ok"] is True and reply["exit"] == 1, argv
        assert "not run through the test server" in reply["stderr"], argv
    reply = _send(server.path, protocol.encode({"op": "run", "argv": ["pool", "check", "--repair"]}))
    assert reply["exit"] == 1 and "cannot be repaired while the test server" in reply["stderr"]
    reply = _send(server.path, protocol.encode({"op": "run", "argv": ["device", "export", "base", "-"]}))
    assert reply["exit"] == 1 and "standard output" in reply["stderr"] and reply["stdout"] == ""
    reply = _send(server.path, protocol.encode({"op": "run", "argv": ["device", "snapshot"]}))
    assert reply["exit"] == 2 and "usage" in reply["stderr"]


def test_host_refusal(pool_dir):
    with cowblock.Pool.open(pool_dir) as pool, ControlServer(
            pool, kind="test", refuse=lambda args: "not today" if args.noun == "df" else None):
        code, out, err = cowblock_cmd("--pool", pool_dir, "df")
        assert code == 1 and "not today" in err and out == ""
        code, out, err = cowblock_cmd("--pool", pool_dir, "device", "ls")
        assert code == 0 and "base" in out


def test_vanishing_clients_and_too_many_connections(served):
    _, _, server = served
    for _ in range(20):  # half a line, then gone
        s = socket.socket(socket.AF_UNIX)
        protocol.connect(s, server.path)
        s.sendall(b'{"op": "pi')
        s.close()
    conns = []
    try:
        for _ in range(80):
            s = socket.socket(socket.AF_UNIX)
            protocol.connect(s, server.path)
            conns.append(s)
        refused = 0
        for s in conns[-10:]:
            s.settimeout(5)
            line = protocol.read_line(s, protocol.MAX_REPLY)
            if line and protocol.decode(line).get("type") == "BusyError":
                refused += 1
        assert refused == 10
    finally:
        for s in conns:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the slots free up as the closes reach the server
        try:
            reply = _send(server.path, b'{"op": "ping"}\n')
        except (OSError, ValueError):
            reply = None
        if reply is not None and reply["ok"]:
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)


def test_long_pool_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "pool")
    with cowblock.Pool.create(path, size=64 * MiB) as pool:
        pool.create_device("a", MiB)
    assert len(protocol.socket_path(path)) > 108
    with cowblock.Pool.open(path) as pool, ControlServer(pool, kind="test"):
        code, out, err = cowblock_cmd("--pool", path, "device", "ls")
    assert code == 0, err
    assert out.splitlines()[1].split()[0] == "a" and NOTE in err


def test_capture_is_per_thread():
    results = {}

    def work(tag):
        with captured() as bufs:
            for i in range(200):
                print(f"{tag}{i}")
                print(f"err-{tag}", file=sys.stderr)
        results[tag] = bufs

    threads = [threading.Thread(target=work, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tag, bufs in results.items():
        out = bufs["stdout"].getvalue().split()
        assert out == [f"{tag}{i}" for i in range(200)]
        assert set(bufs["stderr"].getvalue().split()) == {f"err-{tag}"}


def test_run_held_in_process(pool_dir, capsys):
    with cowblock.Pool.open(pool_dir) as pool:
        code = cli.run_held(["device", "ls"], pool, pool_arg=pool_dir)
        out, _ = capsys.readouterr()
        assert code == 0 and "layer" in out and not pool.closed


def test_map_requests_to_a_server_that_does_not_map(served):
    from cowblock.mapping import client as mapclient
    pool_dir, _, _ = served
    for call in (lambda: mapclient.map_device(pool_dir, "base"),
                 lambda: mapclient.unmap_device(pool_dir, "base"),
                 lambda: mapclient.mapped_devices(pool_dir)):
        with pytest.raises(cowblock.errors.BusyError, match=r"test server \(pid \d+\), which does"):
            call()
