"""Smoke run of the side-by-side comparison (``cowblock bench --quick``) under pytest.

It asserts only that every workload produced numbers: benchmarks are not timed unit tests,
and the goals of issue 4 are reported in the printed table, not asserted.  Use
``pytest bench/test_compare.py --bench-full -s`` for the full-size comparison
(same as ``cowblock bench``).
"""

from __future__ import annotations

import io
import json
import shutil

import pytest

from cowblock import benchmark


def _cowblock_ok() -> bool:
    try:
        import cowblock

        cowblock.Pool  # noqa: B018
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def results(tmp_path_factory, pytestconfig):
    d = tmp_path_factory.mktemp("compare")
    argv = ["--dir", str(d), "--json", str(d / "bench.json"), "--quiet"]
    if not pytestconfig.getoption("--bench-full"):
        argv.append("--quick")
    out = io.StringIO()
    res = benchmark.run(argv, out=out)
    print(out.getvalue())
    with open(d / "bench.json") as f:
        assert len(json.load(f)["groups"]) == len(res["groups"])
    return res


def _groups(res, key):
    return [g for g in res["groups"] if g["key"] == key]


def _numbers(group) -> dict:
    return {e["name"]: e["median"] for e in group["entries"] if e["median"] is not None}


@pytest.mark.parametrize("key", ["W1", "W2", "W3", "W5"])
def test_workload_produced_numbers(results, key):
    groups = _groups(results, key)
    assert groups, f"{key} produced no group; skipped: {results['skipped']}"
    for g in groups:
        nums = _numbers(g)
        assert nums, f"{key} {g['title']}: no engine produced a number"
        assert all(v > 0 for v in nums.values())
        if _cowblock_ok():
            assert any(n.startswith(("cowblock", "Device.")) for n in nums), \
                f"{key}: no cowblock figure"
            failed = {e["name"]: e["error"] for e in g["entries"] if e["error"]}
            assert not failed, f"{key} {g['title']}: engines failed: {failed}"


@pytest.mark.parametrize("key", ["W4", "MEM"])
def test_cowblock_only_workloads(results, key):
    if not _cowblock_ok():
        pytest.skip("cowblock not importable")
    groups = _groups(results, key)
    assert groups, f"{key} produced no group; skipped: {results['skipped']}"
    for g in groups:
        assert _numbers(g), f"{key} {g['title']}: no number"


def test_peers_present_or_skipped_loudly(results):
    names = {e["name"] for g in _groups(results, "W1") for e in g["entries"]}
    if shutil.which("qemu-img"):
        assert {"qcow2 extended_l2=off", "qcow2 extended_l2=on"} <= names
    else:
        assert any("qemu-img" in s for s in results["skipped"])
    assert "raw file (Python os.pwrite)" in names


def test_ratios_and_goals_reported(results):
    if not _cowblock_ok():
        pytest.skip("cowblock not importable")
    ratios = [r for g in results["groups"] for r in g["ratios"] if r["median"] is not None]
    assert ratios
    assert results["goals"]
    assert all(g["status"] in ("MET", "NOT MET", "not measured") for g in results["goals"])


def test_w5_mmap_side_by_side(tmp_path):
    """``--mmap``: every cowblock figure of W5 also on the pool opened with mmap=True, each
    paired with its like (single calls and batch in the same mode)."""
    if not _cowblock_ok():
        pytest.skip("cowblock not importable")
    out = io.StringIO()
    res = benchmark.run(["--dir", str(tmp_path), "--quick", "--quiet", "--only", "W5", "--mmap",
                         "--calls", "2000"], out=out)
    groups = _groups(res, "W5")
    assert len(groups) == 2
    for g in groups:
        nums = _numbers(g)
        assert any(n.endswith(", mmap") for n in nums), nums
        assert all(v > 0 for v in nums.values())
        assert not [e for e in g["entries"] if e["error"]]
        for r in g["ratios"]:
            if r["num"].startswith("Device.") and "read_blocks" in r["den"]:
                assert r["num"].endswith(", mmap") == r["den"].endswith(", mmap")
    texts = [gl["text"] for gl in res["goals"]]
    assert "Device.read(4 KiB) / os.pread <= 1.5" in texts  # the goal, unchanged
    assert any(t.startswith("(mmap)") for t in texts)


def test_cli_parses_sizes():
    parse = benchmark.build_parser().parse_args
    assert parse(["--size", "64K"]).size == 65536
    assert parse(["--size", "1G"]).size == 2**30
    assert parse(["--size", "1GiB"]).size == 2**30
    with pytest.raises(SystemExit):
        parse(["--size", "lots"])
