"""cowblock.demo: the guided demo runs quickly and prints measured figures."""

import io
import os
import re
import time

import pytest

import cowblock
from cowblock import cli, demo
from cowblock.model import Store


def test_demo_in_a_given_directory_prints_the_table_and_keeps_the_pool(tmp_path):
    out = io.StringIO()
    t0 = time.monotonic()
    assert demo.run(str(tmp_path / "d"), out=out) == 0
    assert time.monotonic() - t0 < 60
    text = out.getvalue()
    for fragment in ("OBJECT", "EXCLUSIVE", "SHARED", "container web", "volume data",
                     "bind scratch", "layer ", "copy-ups", "data file on disk",
                     "sum of their virtual sizes", "pool check: ok"):
        assert fragment in text, fragment
    assert "container worker" not in text.split("Space by object")[1]
    # Figures are shown in IEC units with exact bytes.
    assert re.search(r"\d+\.\d (KiB|MiB|GiB) \(\d+ B\)", text)
    # Creating containers and committing allocate nothing (measured, printed).
    assert "space allocated by the two snapshots: 0 B" in text
    assert "space allocated by the commit: 0 B" in text

    # What it printed matches the pool it left behind.
    with cowblock.Pool.open(str(tmp_path / "d" / "pool")) as pool, Store(pool) as store:
        assert [i.name for i in store.images()] == ["demo/app:1", "demo/app:2"]
        assert [c.name for c in store.containers()] == ["web"]
        assert [v.name for v in store.volumes()] == ["data"]
        assert store.bind_names() == ["scratch"]
        assert len(store.image("demo/app:1").layers) == 4
        assert len(store.image("demo/app:2").layers) == 5
        assert [a.name for a in store.container("web").attachments] == ["data"]
        used = re.search(r"pool used \(blocks allocated\)\s+\S+ \S+ \((\d+) B\)", text)
        assert int(used.group(1)) == pool.used
        report = pool.check()
        assert report.errors == 0 and report.leaks == 0


def test_demo_copy_up_figures_are_the_pool_counters(tmp_path):
    out = io.StringIO()
    assert demo.run(str(tmp_path / "d"), out=out) == 0
    text = out.getvalue()
    m = re.search(r"copy-ups: (\d+); blocks allocated: (\d+)", text)
    assert m and int(m.group(1)) == 96 and int(m.group(2)) == 96
    m = re.search(r"bytes written by the user: \S+ \S+ \((\d+) B\); "
                  r"physical bytes written to the data file: \S+ \S+ \((\d+) B\)", text)
    user, physical = int(m.group(1)), int(m.group(2))
    assert user == 96 * 4096
    # Sub-block copy-up: far less than a whole 64 KiB block per 4 KiB write.
    assert physical < 96 * 65536 // 4


def test_demo_in_a_temporary_directory_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    out = io.StringIO()
    assert demo.run(out=out) == 0
    workdir = re.search(r"cowblock demo in (\S+)", out.getvalue()).group(1)
    assert workdir.startswith(str(tmp_path))
    assert not os.path.exists(workdir)
    assert "was removed" in out.getvalue()


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(cowblock.ExistsError):
        demo.run(str(tmp_path / "busy"), out=io.StringIO())
    assert os.listdir(tmp_path / "busy") == ["file"]


def test_cli_demo(tmp_path, capsys):
    assert cli.main(["demo", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "Space by object" in out and "pool check: ok" in out
    assert cli.main(["demo", str(tmp_path / "d")]) == 1        # not empty any more
    assert "cowblock: error:" in capsys.readouterr().err
