"""`cowblock serve` on the command line: its arguments, where it listens, and
the socket it leaves (or replaces) behind."""
import os
import socket
import subprocess
import time
import sys

import pytest

import cowblock
from cowblock import cli
from cowblock.nbd.listen import bind_unix, parse_tcp
from nbd_support import RawClient, ServerProcess


@pytest.fixture
def pool_dir(tmp_path):
    path = tmp_path / "pool"
    with cowblock.Pool.create(path, size=1 << 26) as pool:
        pool.create_device("disk", 1 << 20)
    return path


@pytest.mark.parametrize("args,message", [
    (["--tls-cert", "c.pem"], "go together"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "TLS is for --tcp"),
    (["--max-connections", "0"], "at least 1"),
])
def test_usage_errors(pool_dir, capsys, args, message):
    assert cli.main(["--pool", str(pool_dir), "serve", *args]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text", ["10809", "host:", ":80", "h:99999", "h:x"])
def test_bad_tcp_address(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_tcp(text)
    assert parse_tcp("[::1]:0") == ("::1", 0) and parse_tcp("127.0.0.1:10809") == (
        "127.0.0.1", 10809)


def test_default_socket_tcp_and_the_address_printed(pool_dir, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cowblock", "--pool", str(pool_dir), "serve",
                             "--tcp", "127.0.0.1:0", "--exit-with-parent"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        second = proc.stdout.readline().strip()
        assert first == f"listening on nbd+unix:///?socket={pool_dir}/nbd.sock"
        assert second.startswith("listening on nbd://127.0.0.1:")
        port = int(second.rsplit(":", 1)[1].strip("/"))
        with RawClient(sock=socket.create_connection(("127.0.0.1", port), timeout=30)) as c:
            assert c.go("disk")[0] == 1 << 20
        with RawClient(str(pool_dir / "nbd.sock")) as c:
            assert c.go("disk")[0] == 1 << 20
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert not (pool_dir / "nbd.sock").exists()  # removed on the way out


def test_a_second_server_on_the_same_pool_is_refused(pool_dir, tmp_path):
    first = ServerProcess(pool_dir, tmp_path / "a.sock").start()
    try:
        r = subprocess.run([sys.executable, "-m", "cowblock", "--pool", str(pool_dir), "serve",
                            "--socket", str(tmp_path / "b.sock")], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "cowblock: error:" in r.stderr
        r = subprocess.run([sys.executable, "-m", "cowblock", "--pool", str(pool_dir), "serve",
                            "--readonly", "--socket", str(tmp_path / "a.sock")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "error" in r.stderr
    finally:
        assert first.stop() == 0


def test_bind_unix_replaces_a_stale_socket_only(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # left behind, nobody listening
    sock = bind_unix(path)
    try:
        with pytest.raises(cowblock.BusyError, match="listening"):
            bind_unix(path)
    finally:
        sock.close()
        os.unlink(path)
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(cowblock.ExistsError, match="not a socket"):
        bind_unix(str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "keep me"
    with pytest.raises(ValueError, match="107"):
        bind_unix(str(tmp_path / ("x" * 120)))


def cow(pool_dir, *args):
    return subprocess.run([sys.executable, "-m", "cowblock", "--pool", str(pool_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_cli_works_through_the_server_while_it_serves(pool_dir, tmp_path):
    server = ServerProcess(pool_dir, tmp_path / "s.sock").start()
    try:
        r = cow(pool_dir, "device", "ls")
        assert r.returncode == 0 and "disk" in r.stdout, r.stderr
        assert cow(pool_dir, "device", "create", "later", "2M").returncode == 0
        with RawClient(server.socket) as c:  # the new device is an export at once
            assert c.go("later")[0] == 2 << 20
            r = cow(pool_dir, "device", "rm", "later")  # not while a client uses it
            assert r.returncode != 0 and "clients connected" in r.stderr, r.stderr
            assert c.call(4, 0, 512)["error"] == 0  # NBD_CMD_TRIM: still served
        deadline = time.monotonic() + 10
        while True:  # once the client has gone, it may go
            r = cow(pool_dir, "device", "rm", "later")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
        assert r.returncode == 0, r.stderr
    finally:
        assert server.stop() == 0
    with cowblock.Pool.open(pool_dir) as pool:
        assert pool.devices() == ["disk"]
