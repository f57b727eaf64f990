"""Shared fixtures for the cowblock test suite.

* ``pool_path``: a path (not yet created) for a new pool under ``tmp_path``.
* ``pool``: a fresh pool there (1 GiB capacity, 64 KiB blocks), closed after the test.
* ``ceph``: a throwaway single-node Ceph cluster (tests/ceph_cluster.py) with a RADOS pool
  ``cbtest``, started once per session on first use; tests using it skip, saying why, where
  Ceph or this build's RADOS backend is missing.
* ``location``: where a new pool goes, once per backend (``file``: a directory under
  ``tmp_path``; ``rados``: a fresh ``rados://cbtest/NAME?conf=...`` URL).
* ``backend_pool``: a fresh pool (as ``pool``) at ``location``: once per backend.
* ``read_state`` / ``write_state``: the raw text of a pool's state document (``model.json``,
  ``snapshots.NS.json``, ...), a file beside a pool in a directory or a document in a RADOS
  pool's store; ``state_where`` names it as error messages do.
* ``--run-slow``: run the tests marked ``@pytest.mark.slow`` (skipped by default) and use the
  bigger hypothesis budgets (see ``run_slow``).
"""

import itertools
import os

import pytest

POOL_SIZE = 1 << 30
BLOCK_SIZE = 64 * 1024


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked @pytest.mark.slow (soak, crash and big fuzz runs)",
    )


def pytest_configure(config):
    # Declared in pyproject.toml too; repeated here so the marker exists however pytest is run.
    config.addinivalue_line("markers", "slow: long-running test, opt in with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow to include it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def run_slow(request):
    """True when the suite runs with --run-slow (for tests that scale their budget)."""
    return bool(request.config.getoption("--run-slow"))


@pytest.fixture
def pool_path(tmp_path):
    return tmp_path / "pool"


@pytest.fixture
def pool(pool_path):
    import cowblock

    p = cowblock.Pool.create(pool_path, size=POOL_SIZE, block_size=BLOCK_SIZE)
    try:
        yield p
    finally:
        p.close()


RADOS_POOL = "cbtest"
_names = itertools.count()


@pytest.fixture(scope="session")
def ceph():
    import cowblock
    from ceph_cluster import CephCluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    if "rados" not in cowblock.backends():
        pytest.skip("this build of cowblock has no RADOS backend (librados-dev was missing "
                    "when it was built)")
    with CephCluster() as cluster:
        cluster.create_pool(RADOS_POOL)
        yield cluster


def rados_url(ceph, name=None, **query):
    """A URL for a new pool in the session's cluster (unique name unless given)."""
    name = name or f"t{os.getpid()}-{next(_names)}"
    q = "".join(f"&{k}={v}" for k, v in query.items())
    return f"rados://{RADOS_POOL}/{name}?conf={ceph.conf}{q}"


@pytest.fixture(params=["file", "rados"])
def location(request, tmp_path):
    if request.param == "file":
        return str(tmp_path / "pool")
    return rados_url(request.getfixturevalue("ceph"))


@pytest.fixture
def backend_pool(location):
    import cowblock

    p = cowblock.Pool.create(location, size=POOL_SIZE, block_size=BLOCK_SIZE)
    try:
        yield p
    finally:
        p.close()


def state_where(pool, name):
    """How error messages name state document ``name`` of ``pool``."""
    from cowblock.snapshotter import state_file
    return state_file(pool, name, "", 0, dict).path


def read_state(pool, name):
    """The text of state document ``name`` of ``pool`` (None if it has none)."""
    if pool.directory is not None:
        path = os.path.join(pool.directory, name)
        if not os.path.exists(path):
            return None
        with open(path) as fh:
            return fh.read()
    gen, data = pool.read_document(name)
    return data.decode() if gen else None


def write_state(pool, name, text):
    """Replace state document ``name`` of ``pool`` by hand with ``text``."""
    if pool.directory is not None:
        with open(os.path.join(pool.directory, name), "w") as fh:
            fh.write(text)
    else:
        pool.write_document(name, text.encode())
