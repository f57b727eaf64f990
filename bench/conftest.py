"""Fixtures and options for the cowblock benchmarks (``pytest bench/``).

Options:
  --bench-size SIZE        device size used by the microbenchmarks (default 64M)
  --bench-block-size SIZE  pool block size (default 64K)
  --bench-full             run the side-by-side comparison at full size (1 GiB, 3 runs) instead
                           of the --quick smoke run (takes several minutes)
"""

from __future__ import annotations

import os

import pytest

from cowblock.benchmark.util import fmt_size
from cowblock.units import parse_size


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cowblock bench")
    group.addoption("--bench-size", default="64M", help="microbenchmark device size (default 64M)")
    group.addoption("--bench-block-size", default="64K", help="pool block size (default 64K)")
    group.addoption("--bench-full", action="store_true",
                    help="run the comparison at full size instead of --quick")


@pytest.fixture(scope="session")
def cowblock_mod():
    try:
        import cowblock

        cowblock.Pool  # noqa: B018
    except Exception as e:  # the C core is not built
        pytest.skip(f"cowblock not importable: {type(e).__name__}: {e}")
    return cowblock


@pytest.fixture(scope="session")
def bench_size(pytestconfig) -> int:
    return parse_size(pytestconfig.getoption("--bench-size"))


@pytest.fixture(scope="session")
def bench_block_size(pytestconfig) -> int:
    return parse_size(pytestconfig.getoption("--bench-block-size"))


@pytest.fixture(scope="session")
def payload() -> bytes:
    """1 MiB of non-zero bytes written by every benchmark."""
    return bytes(range(1, 256)) * 4112 + b"\x01" * 16  # 255 * 4112 + 16 = 1 MiB


@pytest.fixture(scope="session")
def base_file(tmp_path_factory, bench_size, payload) -> str:
    """A plain file of --bench-size bytes, fully written and cached: the os.pread baseline."""
    path = str(tmp_path_factory.mktemp("raw") / "base.raw")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for off in range(0, bench_size, len(payload)):
            os.pwrite(fd, payload[: min(len(payload), bench_size - off)], off)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return path


def _filled_pool(cowblock_mod, path, bench_size, bench_block_size, payload, **kw):
    p = cowblock_mod.Pool.create(path, size=bench_size * 16, block_size=bench_block_size, **kw)
    dev = p.create_device("base", bench_size)
    for off in range(0, bench_size, len(payload)):
        dev.write(off, payload[: min(len(payload), bench_size - off)])
    p.flush()
    return p


@pytest.fixture(scope="session")
def pool(cowblock_mod, tmp_path_factory, bench_size, bench_block_size, payload):
    """A pool (on the same disk as pytest's tmp dir) with device 'base' fully written."""
    path = str(tmp_path_factory.mktemp("bench") / "pool")
    p = _filled_pool(cowblock_mod, path, bench_size, bench_block_size, payload)
    yield p
    p.close()


@pytest.fixture(scope="session")
def pool_mmap(cowblock_mod, tmp_path_factory, bench_size, bench_block_size, payload):
    """The same as ``pool``, but a pool of its own opened with mmap=True (reads copied from a
    mapping of the data file)."""
    path = str(tmp_path_factory.mktemp("bench") / "pool-mmap")
    p = _filled_pool(cowblock_mod, path, bench_size, bench_block_size, payload, mmap=True)
    yield p
    p.close()


def pytest_report_header(config) -> str:
    try:
        size = fmt_size(parse_size(config.getoption("--bench-size")))
        bs = fmt_size(parse_size(config.getoption("--bench-block-size")))
    except Exception:
        return ""
    return f"cowblock bench: device {size}, block {bs}"
