"""Images between pools: a base image sent once, later images only their
own layers; names and metadata carried; a broken image stream leaves the
receiving store as it was."""
import io
import os

import pytest

import cowblock
from cowblock import model
from cowblock.model import Store


@pytest.fixture
def stores(tmp_path, location):
    """A sending store in a directory and a receiving one at ``location`` (each backend)."""
    raw = tmp_path / "base.raw"
    raw.write_bytes(os.urandom(3 << 20))
    p = cowblock.Pool.create(tmp_path / "p", 128 << 20)
    q = cowblock.Pool.create(location, 128 << 20)
    sp, sq = Store(p), Store(q)
    sp.import_image("app:1", str(raw))
    sp.image("app:1").add_layer({0: b"a" * 5000, 1 << 20: b"b" * 4096}, comment="two writes")
    c = sp.create_container("c", "app:1")
    c.device.write(8192, os.urandom(10000))
    c.commit("app:2", comment="from c")
    yield sp, sq
    p.close()
    q.close()


def send(store, name, base=None):
    buf = io.BytesIO()
    res = store.send_image(name, buf, base)
    buf.seek(0)
    return buf, res


def test_images_move_layer_by_layer(stores):
    sp, sq = stores
    buf, res = send(sp, "app:1")
    assert res["layers"] == 2
    sq.receive_image(buf)
    buf, res = send(sp, "app:2", "app:1")
    assert res["layers"] == 1 and res["data_bytes"] <= 3 * 4096 + 8192
    sq.receive_image(buf)
    for name in ("app:1", "app:2"):
        a, b = sp.image(name), sq.image(name)
        assert [l.id for l in a.layers] == [l.id for l in b.layers]
        assert [l.comment for l in a.layers] == [l.comment for l in b.layers]
        assert [l.created for l in a.layers] == [l.created for l in b.layers]
        assert a.device.read(0, a.size) == b.device.read(0, b.size)
    # blocks shared as in the source: the same space for the same layers
    lp = {l.id: l.device.usage().mapped for l in sp.layers()}
    lq = {l.id: l.device.usage().mapped for l in sq.layers()}
    assert lp == lq
    # q holds the layers only; p also the container, which shares all but its writes
    assert sq.pool.used == sp.pool.used - sp.container("c").device.usage().exclusive
    assert sq.pool.check().ok and model.check(sq.pool) == []


def test_a_resent_layer_is_checked_not_made_again(stores):
    sp, sq = stores
    sq.receive_image(send(sp, "app:1")[0])
    used = sq.pool.used
    sq.receive_image(send(sp, "app:2")[0])  # every layer sent, two of them here
    assert len(sq.layers()) == 3
    top = sq.image("app:2").top
    assert sq.pool.used - used == top.device.usage().exclusive > 0


def test_a_missing_base_is_named(stores):
    sp, sq = stores
    with pytest.raises(cowblock.NotFoundError, match="receive its base image first"):
        sq.receive_image(send(sp, "app:2", "app:1")[0])
    assert sq.images() == [] and sq.layers() == []


def test_a_broken_image_stream_leaves_nothing(stores):
    sp, sq = stores
    raw = send(sp, "app:2")[0].getvalue()
    before = sq.pool.devices(), sq.pool.used
    for cut in (10, 200, len(raw) // 2, len(raw) - 3):
        with pytest.raises(cowblock.CowblockError):
            sq.receive_image(io.BytesIO(raw[:cut]))
        sq.pool.flush()
        assert (sq.pool.devices(), sq.pool.used) == before
        assert sq.images() == [] and sq.layers() == []
        assert model.check(sq.pool) == []
    bad = bytearray(raw)
    bad[len(raw) * 3 // 4] ^= 4
    with pytest.raises(cowblock.CowblockError, match="checksum"):
        sq.receive_image(io.BytesIO(bytes(bad)))
    with pytest.raises(cowblock.CowblockError, match="bytes after"):
        sq.receive_image(io.BytesIO(raw + b"x"))
    assert sq.images() == [] and sq.pool.check().ok
