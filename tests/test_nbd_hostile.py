"""Clients that break the NBD protocol: each gets a clear protocol error (or,
where the spec leaves no other way, the connection closed), nothing is lost,
and the other clients carry on.  Also many connections, the connection
bound, the handshake timeout, TLS, and a fuzzer against a live server."""
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowblock.nbd import protocol as P
from cowblock.nbd.server import Limits
from nbd_support import RawClient, ServerProcess, ThreadServer, client_env

MiB = 1 << 20
SIZE = 64 * MiB


@pytest.fixture
def devices(pool):
    pool.create_device("disk", SIZE).write(0, b"\x11" * MiB)
    pool.snapshot("disk", "ro", readonly=True)
    return pool


def start(pool, tmp_path, **limits):
    return ThreadServer(pool, tmp_path / "s.sock", limits=Limits(**limits)).start()


@pytest.fixture
def server(devices, tmp_path):
    srv = start(devices, tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def client(srv):
    return RawClient(srv.socket)


def healthy(srv):
    """A well-behaved client still gets served."""
    with client(srv) as c:
        size, _ = c.go("disk")
        assert size == SIZE
        r = c.call(P.CMD_READ, 0, 4096)
        assert r["error"] == 0 and r["data"] == b"\x11" * 4096


# ------------------------------------------------------------------ handshake


def test_unknown_client_flags_close_that_client(server):
    with client(server) as c:
        P.parse_greeting(c.recv(P.GREETING_SIZE))
        c.send(P.encode_client_flags(0x80))
        assert c.closed_by_peer()
    healthy(server)


def test_bad_option_magic_closes(server):
    with client(server) as c:
        c.greet()
        c.send(b"NOTMAGIC" + struct.pack(">II", P.OPT_LIST, 0))
        assert c.closed_by_peer()
    healthy(server)


def test_oversized_option_is_answered_too_big(server):
    with client(server) as c:
        c.greet()
        c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 2**32 - 1))
        (reply, message), = c.replies(P.OPT_GO)
        assert reply == P.REP_ERR_TOO_BIG and b"at most" in message
        assert c.closed_by_peer()
    healthy(server)


def test_unknown_and_malformed_options_then_go(server):
    with client(server) as c:
        c.greet()
        (reply, message), = c.option(77, b"whatever")
        assert reply == P.REP_ERR_UNSUP and message
        (reply, message), = c.option(P.OPT_GO, b"\0\0\0\xff")
        assert reply == P.REP_ERR_INVALID and b"at least 6" in message
        (reply, message), = c.option(P.OPT_GO, P.encode_export_request("nope"))
        assert reply == P.REP_ERR_UNKNOWN and b"nope" in message
        (reply, message), = c.option(P.OPT_STARTTLS)
        assert reply == P.REP_ERR_POLICY  # no TLS on the Unix socket
        (reply, _), = c.option(P.OPT_SET_META_CONTEXT, P.encode_meta_context_request("disk"))
        assert reply == P.REP_ERR_INVALID  # needs structured replies first
        reps = c.option(P.OPT_GO, P.encode_export_request("disk"))
        assert reps[-1][0] == P.REP_ACK
        assert c.call(P.CMD_READ, 0, 16)["data"] == b"\x11" * 16


def test_export_name_of_a_missing_export_closes(server):
    with client(server) as c:
        c.greet()
        c.send(P.encode_option(P.OPT_EXPORT_NAME, b"missing"))
        assert c.closed_by_peer()
    with client(server) as c:  # the old way in works for one that exists
        c.greet(P.FLAG_C_FIXED_NEWSTYLE)
        c.send(P.encode_option(P.OPT_EXPORT_NAME, b"disk"))
        size, flags = struct.unpack(">QH", c.recv(10))
        assert size == SIZE and flags & P.FLAG_HAS_FLAGS and c.recv(124) == bytes(124)
        assert c.call(P.CMD_READ, 0, 4)["data"] == b"\x11" * 4


def test_abort(server):
    with client(server) as c:
        c.greet()
        assert c.option(P.OPT_ABORT) == [(P.REP_ACK, b"")]
        assert c.closed_by_peer()


def test_handshake_timeout(devices, tmp_path):
    srv = start(devices, tmp_path, handshake_timeout=0.5)
    try:
        with client(srv) as silent:
            t = time.monotonic()
            assert silent.closed_by_peer(timeout=10)
            assert time.monotonic() - t < 5
        healthy(srv)
    finally:
        srv.stop()


# ------------------------------------------------------------------ transmission


@pytest.mark.parametrize("structured", [True, False])
def test_bad_requests_get_errors_and_the_connection_goes_on(server, structured):
    with client(server) as c:
        c.go("disk", structured=structured)
        cases = [
            ((99, 0, 0), P.EINVAL),                               # unknown command
            ((P.CMD_READ, 0, 512, 1 << 7), P.EINVAL),            # unknown flag
            ((P.CMD_READ, SIZE - 1, 2), P.EINVAL),               # past the end
            ((P.CMD_READ, 2**64 - 1, 2), P.EINVAL),              # wraps around
            ((P.CMD_WRITE, SIZE, 1, 0, b"x"), P.ENOSPC),         # write past the end
            ((P.CMD_WRITE_ZEROES, SIZE - 1, 2), P.ENOSPC),
            ((P.CMD_TRIM, SIZE, 512), P.EINVAL),
            ((P.CMD_READ, 0, 33 * MiB), P.EINVAL),               # over the maximum
            ((P.CMD_FLUSH, 0, 1), P.EINVAL),
        ]
        if structured:
            cases.append(((P.CMD_READ, 0, 33 * MiB, P.CMD_FLAG_DF), P.EOVERFLOW))
            cases.append(((P.CMD_BLOCK_STATUS, 0, 0), P.EINVAL))
        else:
            cases.append(((P.CMD_BLOCK_STATUS, 0, 4096), P.EINVAL))  # no context
        for args, error in cases:
            r = c.call(*args)
            assert r["error"] == error, (args, r)
            if structured:
                assert r["message"], args
        assert c.call(P.CMD_READ, 0, 8)["data"] == b"\x11" * 8


def test_read_only_export_refuses_writes(server):
    with client(server) as c:
        _, flags = c.go("ro")
        assert flags & P.FLAG_READ_ONLY
        for args in ((P.CMD_WRITE, 0, 1, 0, b"x"), (P.CMD_TRIM, 0, 512),
                     (P.CMD_WRITE_ZEROES, 0, 512)):
            assert c.call(*args)["error"] == P.EPERM
        assert c.call(P.CMD_FLUSH)["error"] == 0


def test_bad_request_magic_closes(server):
    with client(server) as c:
        c.go("disk")
        c.send(b"\xde\xad\xbe\xef" + bytes(24))
        assert c.closed_by_peer()
    healthy(server)


def test_oversized_write_is_answered_then_closed(server):
    with client(server) as c:
        c.go("disk")
        c.request(P.CMD_WRITE, 0, 64 * MiB)  # no payload follows
        r = c.reply()
        assert r["error"] == P.EINVAL and "maximum" in r["message"]
        assert c.closed_by_peer()
    healthy(server)


def test_client_vanishing_mid_write_loses_nothing_acknowledged(server):
    with client(server) as c:
        c.go("disk")
        assert c.call(P.CMD_WRITE, MiB, 4096, 0, b"\x22" * 4096)["error"] == 0
        c.request(P.CMD_WRITE, 2 * MiB, MiB)
        c.send(b"\x33" * (MiB // 2))  # half the payload, then gone
    with client(server) as c:
        c.go("disk")
        assert c.call(P.CMD_READ, MiB, 4096)["data"] == b"\x22" * 4096
        assert c.call(P.CMD_READ, 2 * MiB, 4096)["data"] == bytes(4096)  # never ran


def test_client_vanishing_with_requests_in_flight(server):
    with client(server) as c:
        c.go("disk")
        for k in range(200):
            c.request(P.CMD_READ, k * 4096, 65536)
    with client(server) as c:
        c.go("disk")
        for k in range(100):
            c.request(P.CMD_WRITE, k * 4096, 4096, 0, bytes([k]) * 4096)
        c.request(P.CMD_DISC)  # the server finishes what is in flight first
        assert c.closed_by_peer()
    with client(server) as c:
        c.go("disk")
        for k in range(100):
            assert c.call(P.CMD_READ, k * 4096, 4096)["data"] == bytes([k]) * 4096


@pytest.mark.parametrize("structured", [True, False])
def test_replies_may_come_out_of_order_but_all_come(server, structured):
    with client(server) as c:
        c.go("disk", structured=structured)
        for k in range(16, 64):  # each read below gets bytes of its own
            assert c.call(P.CMD_WRITE, k * 65536, 65536, 0, bytes([k]) * 65536)["error"] == 0
        reads = {c.request(P.CMD_READ, k * 65536, 65536): k for k in range(64)}
        flushes = {c.request(P.CMD_FLUSH) for _ in range(3)}
        writes = {c.request(P.CMD_WRITE, 8 * MiB + k * 4096, 4096, P.CMD_FLAG_FUA,
                            b"w" * 4096) for k in range(8)}
        time.sleep(0.5)  # replies pile up: the server's send buffer fills
        seen = set()
        for _ in range(len(reads) + len(flushes) + len(writes)):
            r = c.reply({h: 65536 for h in reads})
            assert r["error"] == 0
            if r["handle"] in reads:
                k = reads[r["handle"]]
                assert r["data"] == (b"\x11" if k < 16 else bytes([k])) * 65536, k
            seen.add(r["handle"])
        assert seen == set(reads) | flushes | writes


def test_connection_limit_refuses_with_a_message(devices, tmp_path):
    srv = start(devices, tmp_path, max_connections=3)
    held = []
    try:
        for _ in range(3):
            c = client(srv)
            c.go("disk")
            held.append(c)
        with client(srv) as extra:
            extra.greet()
            (reply, message), = extra.option(P.OPT_GO, P.encode_export_request("disk"))
            assert reply == P.REP_ERR_POLICY and b"limit" in message
            assert extra.closed_by_peer()
        for c in held:  # the three are served all along
            assert c.call(P.CMD_READ, 0, 4)["data"] == b"\x11" * 4
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the departure, then has room again
            try:
                healthy(srv)
                break
            except (AssertionError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for c in held:
            c.close()
        srv.stop()


def test_hundreds_of_connections_at_once(tmp_path):
    import cowblock

    path = tmp_path / "pool"
    with cowblock.Pool.create(path, size=256 * MiB) as pool:
        pool.create_device("disk", SIZE)
    srv = ServerProcess(path, tmp_path / "s.sock").start()
    n = 300
    clients = []
    try:
        t0 = time.monotonic()
        for _ in range(n):
            clients.append(RawClient(srv.socket, timeout=60))
        for c in clients:
            c.go("disk")
        for k, c in enumerate(clients):
            c.request(P.CMD_WRITE, k * 4096, 4096, 0, k.to_bytes(2, "big") * 2048)
        for c in clients:
            assert c.reply()["error"] == 0
        for k, c in enumerate(clients):
            assert c.call(P.CMD_READ, k * 4096, 4096)["data"] == k.to_bytes(2, "big") * 2048
        assert time.monotonic() - t0 < 60
    finally:
        for c in clients:
            c.close()
        assert srv.stop() == 0
    with cowblock.Pool.open(path) as pool:
        assert pool.device("disk").read(299 * 4096, 2) == (299).to_bytes(2, "big")
        assert pool.check().ok


# ------------------------------------------------------------------ TLS


def make_cert(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (to make a test certificate)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   env=client_env())
    return cert, key


def test_tls_on_tcp(devices, tmp_path):
    from cowblock.nbd.listen import tls_context

    cert, key = make_cert(tmp_path)
    srv = ThreadServer(devices, tmp_path / "s.sock", tls=tls_context(str(cert), str(key)))
    srv.start(tcp=("127.0.0.1", 0))
    try:
        port = int(srv.server.addresses[-1].rsplit(":", 1)[1].strip("/"))
        assert srv.server.addresses[-1].startswith("nbds://")
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        c = RawClient(sock=sock)
        c.greet()
        (reply, message), = c.option(P.OPT_LIST)
        assert reply == P.REP_ERR_TLS_REQD and b"STARTTLS" in message
        assert c.option(P.OPT_STARTTLS) == [(P.REP_ACK, b"")]
        ctx = ssl.create_default_context(cafile=str(cert))
        c.sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert c.option(P.OPT_STARTTLS)[0][0] == P.REP_ERR_INVALID  # already on
        assert c.option(P.OPT_STRUCTURED_REPLY) == [(P.REP_ACK, b"")]
        c.structured = True
        assert c.option(P.OPT_GO, P.encode_export_request("disk"))[-1][0] == P.REP_ACK
        assert c.call(P.CMD_READ, 0, 4096)["data"] == b"\x11" * 4096
        c.close()
        healthy(srv)  # the Unix socket needs no TLS
        if shutil.which("nbdinfo"):  # and a real TLS client
            cadir = tmp_path / "ca"
            cadir.mkdir()
            shutil.copy(cert, cadir / "ca-cert.pem")
            out = subprocess.run(
                ["nbdinfo", "--size", f"nbds://localhost:{port}/disk?tls-certificates={cadir}"],
                capture_output=True, text=True, timeout=60, env=client_env())
            assert out.returncode == 0 and out.stdout.strip() == str(SIZE), out.stderr
    finally:
        srv.stop()


# ------------------------------------------------------------------ fuzzing


def test_live_server_fuzz(server, run_slow):
    """Random bytes as options, or as requests after a good handshake: the
    server answers or closes that client, and serves the next one."""

    server.server.pool.create_device("scratch", SIZE)  # what the fuzzer may write to

    @settings(max_examples=3000 if run_slow else 100, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from([None, "ro", "scratch"]), st.lists(st.one_of(
        st.binary(max_size=64),
        st.builds(lambda o, d: P.encode_option(o, d), st.integers(0, 16), st.binary(max_size=32)),
        st.builds(lambda t, f, off, n: P.encode_request(t, 1, off, n, f),
                  st.integers(0, 9), st.integers(0, 31), st.integers(0, SIZE + 10),
                  st.integers(0, 70000)),
    ), max_size=6))
    def check(export, chunks):
        with client(server) as c:
            c.sock.settimeout(10)
            if export:
                c.go(export)
            else:
                c.greet()
            try:
                for chunk in chunks:
                    c.send(chunk)
                c.sock.shutdown(socket.SHUT_WR)
                while c.sock.recv(65536):
                    pass
            except (ConnectionError, socket.timeout):
                pass
        healthy(server)

    check()


@pytest.mark.parametrize("structured", [True, False])
def test_device_deleted_under_a_client(server, structured):
    """Its requests fail with NBD_EIO saying why (small reads go in batches,
    big ones alone: both paths); the connection and the other exports go on."""
    pool = server.server.pool
    pool.create_device("doomed", SIZE)
    with client(server) as c:
        c.go("doomed", structured=structured)
        assert c.call(P.CMD_READ, 0, 4096)["error"] == 0
        pool.delete("doomed")
        for length in (4096, MiB):
            r = c.call(P.CMD_READ, 0, length)
            assert r["error"] == P.EIO, r
            if structured:
                assert "doomed" in r["message"]
        assert c.call(P.CMD_WRITE, 0, 512, 0, b"x" * 512)["error"] == P.EIO
        assert c.call(P.CMD_FLUSH)["error"] == 0
    healthy(server)
