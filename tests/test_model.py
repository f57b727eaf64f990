"""cowblock.model: images, layers, containers, volumes, binds, external bases.

Every test runs once per backend: ``pool`` is the ``backend_pool`` fixture (a pool in a
directory, then one in the session's RADOS cluster), and the state documents are read and
written through conftest's ``read_state``/``write_state``, whichever backend keeps them.
"""

import hashlib
import os

import numpy as np
import pytest

import cowblock
from cowblock.model import Bind, Container, Image, Store, Volume
from conftest import read_state, state_where, write_state

BS = 64 * 1024
MiB = 2**20


@pytest.fixture
def pool(backend_pool):
    return backend_pool


@pytest.fixture
def store(pool):
    with Store(pool) as s:
        yield s


def rand(n, seed=0):
    return np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def raw(tmp_path):
    """An 8 MiB sparse raw image: data at 0 and 2 MiB, written zeros at 4 MiB."""
    path = tmp_path / "base.raw"
    with open(path, "wb") as fh:
        fh.truncate(8 * MiB)
        fh.write(rand(3 * BS, 1))
        fh.seek(2 * MiB)
        fh.write(rand(BS, 2))
        fh.seek(4 * MiB)
        fh.write(bytes(2 * BS))
    return path


def file_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def test_import_image_copies_only_data(store, pool, raw):
    img = store.import_image("app:1", raw)
    assert isinstance(img, Image) and img.name == "app:1"
    assert len(img.layers) == 1 and img.top.parent is None
    assert img.size == 8 * MiB
    assert img.device.readonly
    assert img.device.read(0, 8 * MiB) == file_bytes(raw)
    imp = img.top.imported
    assert imp.copied == 4 * BS
    assert imp.zeros >= 2 * BS
    assert imp.copied + imp.holes + imp.zeros == 8 * MiB
    pool.flush()
    assert pool.used == 4 * BS                    # holes and zero blocks cost nothing
    assert img.top.changed == 4 * BS
    assert store.images() == [img]
    assert store.layers() == [img.top]
    assert len(img.top.id) == 64 and img.top.short_id == img.top.id[:12]


def test_external_base_uses_the_file_in_place(store, pool, raw):
    digest = hashlib.sha256(file_bytes(raw)).hexdigest()
    img = store.import_image("ext", raw, external=True)
    pool.flush()
    assert pool.used == 0                         # nothing copied
    assert img.top.external == str(raw)
    assert img.top.imported is None
    assert img.device.read(0, 8 * MiB) == file_bytes(raw)
    c = store.create_container("c", img)
    c.device.write(0, b"changed")
    assert c.device.read(0, 7) == b"changed"
    assert c.device.read(2 * MiB, BS) == rand(BS, 2)
    assert img.device.read(0, 7) == rand(3 * BS, 1)[:7]
    assert hashlib.sha256(file_bytes(raw)).hexdigest() == digest   # file untouched
    c.remove()
    img.remove()
    assert os.path.exists(raw)


def test_add_layer_forms_and_isolation(store, raw):
    img = store.import_image("app", raw)
    base = img.top
    l2 = img.add_layer({0: b"L2"}, comment="two")
    l3 = img.add_layer([(BS, b"L3"), (2 * BS, b"L3b")])
    l4 = img.add_layer(lambda dev: dev.discard(2 * MiB, BS), comment="discard")
    assert img.layers == [base, l2, l3, l4]
    assert img.history() == [l4, l3, l2, base]
    assert [l.parent for l in img.layers] == [None, base, l2, l3]
    assert l2.comment == "two" and l4.comment == "discard"
    top = img.device
    assert top.read(0, 2) == b"L2" and top.read(BS, 2) == b"L3"
    assert top.read(2 * MiB, BS) == bytes(BS)
    # Lower layers are unchanged.
    assert base.device.read(0, 2) == rand(3 * BS, 1)[:2]
    assert l3.device.read(2 * MiB, BS) == rand(BS, 2)
    assert l2.device.read(BS, 2) == rand(3 * BS, 1)[BS:BS + 2]
    # Each layer records the blocks it changed.
    assert (l2.changed, l3.changed, l4.changed) == (BS, 2 * BS, BS)
    for layer in img.layers:
        assert layer.device.readonly


def test_add_layer_rejects_bad_changes_and_leaves_the_image_as_it_was(store, pool, raw):
    img = store.import_image("app", raw)
    devices = pool.devices()
    with pytest.raises(cowblock.InvalidArgumentError):
        img.add_layer(42)
    with pytest.raises(cowblock.InvalidArgumentError):
        img.add_layer([b"not a pair"])
    with pytest.raises(cowblock.InvalidArgumentError):
        img.add_layer({8 * MiB: b"past the end"})
    assert len(img.layers) == 1
    assert pool.devices() == devices
    assert store.snapshotter.keys() == [img.top.key]


def test_containers_are_writable_isolated_and_free_to_create(store, pool, raw):
    img = store.import_image("app", raw)
    pool.flush()
    used = pool.used
    a = store.create_container("a", img)
    b = store.create_container("b", "app")
    pool.flush()
    assert pool.used == used                      # snapshots allocate nothing
    assert isinstance(a, Container) and a.image == img and a.layer == img.top
    assert not a.device.readonly
    a.device.write(100, b"from a")
    assert a.device.read(100, 6) == b"from a"
    assert b.device.read(100, 6) == img.device.read(100, 6) != b"from a"
    assert store.containers() == [a, b]
    assert img.containers() == [a, b]
    assert len(a.id) == 64
    with pytest.raises(cowblock.ExistsError):
        store.create_container("a", img)
    with pytest.raises(cowblock.NotFoundError):
        store.create_container("c", "missing")
    with pytest.raises(cowblock.InvalidArgumentError):
        store.create_container("bad name", img)


def test_container_commit_makes_a_new_image_and_keeps_the_container(store, pool, raw):
    img = store.import_image("app:1", raw)
    c = store.create_container("c", img)
    c.device.write(0, b"committed")
    c.device.write(5 * MiB, rand(BS, 3))
    pool.flush()
    used = pool.used
    img2 = c.commit("app:2", comment="my change")
    pool.flush()
    assert pool.used == used                      # O(1)
    assert img2.layers == img.layers + [img2.top]
    assert img2.top.comment == "my change"
    assert img2.top.changed == 2 * BS
    assert img2.device.read(0, 9) == b"committed"
    c.device.write(0, b"later....")               # the container runs on
    assert img2.device.read(0, 9) == b"committed"
    assert c.image == img
    with pytest.raises(cowblock.ExistsError):
        c.commit("app:2")
    c2 = store.create_container("c2", img2)
    assert c2.device.read(5 * MiB, BS) == rand(BS, 3)


def test_container_reset_drops_changes_and_space(store, pool, raw):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    vol = store.create_volume("v", MiB)
    c.attach(vol)
    old_device = c.device.name
    c.device.write(0, rand(4 * BS, 4))
    pool.flush()
    used = pool.used
    assert c.changed == 4 * BS
    c.reset()
    pool.flush()
    assert pool.used == used - 4 * BS
    assert c.device.name != old_device
    assert c.device.read(0, 4 * BS) == img.device.read(0, 4 * BS)
    assert c.attachments == [vol]
    assert c.changed == 0
    assert old_device not in pool.devices()


def test_reset_follows_layers_added_to_the_image(store, raw):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    new = img.add_layer({0: b"new top"})
    assert c.layer != new                         # created on the old top
    c.reset()
    assert c.layer == new
    assert c.device.read(0, 7) == b"new top"


def test_container_remove_gives_space_back(store, pool, raw):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    c.device.write(0, rand(5 * BS, 5))
    pool.flush()
    used = pool.used
    assert c.usage().size == 5 * BS
    c.remove()
    pool.flush()
    assert pool.used == used - 5 * BS
    with pytest.raises(cowblock.NotFoundError):
        store.container("c")
    with pytest.raises(cowblock.NotFoundError):
        c.device
    assert store.containers() == []


def test_volumes_outlive_containers_and_attach_to_several(store, pool, raw):
    img = store.import_image("app", raw)
    a = store.create_container("a", img)
    b = store.create_container("b", img)
    vol = store.create_volume("data", 4 * MiB)
    assert isinstance(vol, Volume) and vol.size == 4 * MiB
    assert vol.device.read(0, 4096) == bytes(4096)
    vol.device.write(0, b"volume data")
    a.attach(vol)
    b.attach(vol)
    assert vol.containers == [a, b]
    assert a.attachments == [vol]
    with pytest.raises(cowblock.ExistsError):
        a.attach(vol)
    with pytest.raises(cowblock.BusyError, match="attached"):
        vol.remove()
    a.remove()
    b.remove()
    assert store.volume("data").device.read(0, 11) == b"volume data"
    assert vol.containers == []
    pool.flush()
    used = pool.used
    vol.remove()
    pool.flush()
    assert pool.used == used - BS
    with pytest.raises(cowblock.NotFoundError):
        store.volume("data")
    with pytest.raises(cowblock.InvalidArgumentError):
        store.create_volume("v", 0)


def test_detach(store, raw):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    vol = store.create_volume("v", MiB)
    c.attach(vol)
    c.detach(vol)
    assert c.attachments == []
    with pytest.raises(cowblock.NotFoundError):
        c.detach(vol)
    with pytest.raises(cowblock.InvalidArgumentError):
        c.attach("v")
    vol.remove()


def test_bind_uses_the_raw_file_as_it_is(store, tmp_path, raw):
    path = tmp_path / "scratch.raw"
    with open(path, "wb") as fh:
        fh.truncate(2 * MiB)
        fh.seek(MiB)
        fh.write(b"existing")
    b = store.bind("scratch", path)
    assert isinstance(b, Bind) and b.size == 2 * MiB and b.name == "scratch"
    assert b.read(MiB, 8) == b"existing"
    b.write(0, b"through the bind")
    b.flush()
    assert file_bytes(path)[:16] == b"through the bind"
    on_disk = os.stat(path).st_blocks
    b.discard(MiB, BS)
    assert b.read(MiB, 8) == bytes(8)
    assert os.stat(path).st_blocks <= on_disk
    with pytest.raises(cowblock.InvalidArgumentError):
        b.read(2 * MiB, 1)
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    c.attach(b)
    assert c.attachments == [b] and b.containers == [c]
    with pytest.raises(cowblock.BusyError):
        b.remove()
    c.remove()
    b.remove()
    assert os.path.exists(path)                   # the file is kept
    assert b.closed
    with pytest.raises(cowblock.NotFoundError):
        store.get_bind("scratch")
    store.bind("x", path)
    with pytest.raises(cowblock.ExistsError):
        store.bind("x", path)
    with pytest.raises(cowblock.NotFoundError):
        store.bind("y", tmp_path / "missing.raw")
    ro = store.bind("ro", path, readonly=True)
    with pytest.raises(cowblock.ReadOnlyError):
        ro.write(0, b"x")


def test_remove_image_refused_while_used(store, pool, raw):
    img = store.import_image("app:1", raw)
    c = store.create_container("c", img)
    with pytest.raises(cowblock.BusyError, match="container"):
        img.remove()
    img2 = c.commit("app:2")
    c.remove()
    with pytest.raises(cowblock.BusyError, match="dependent child"):
        img.remove()
    assert img.device.read(0, 1)                  # nothing was removed
    img2.remove()
    assert store.images() == [img]
    assert len(img.layers) == 1
    img.remove()
    pool.flush()
    assert store.images() == [] and store.layers() == []
    assert pool.devices() == [] and pool.used == 0
    with pytest.raises(cowblock.NotFoundError):
        img.remove()


def test_remove_image_keeps_layers_other_images_use(store, pool, raw):
    img = store.import_image("app", raw)
    l2 = img.add_layer({0: b"x"})
    c = store.create_container("c", img)
    other_top = c.commit("other").top.id
    c.remove()
    # "other" is built on app's top: removing it removes only its own layer.
    assert store.remove_image("other") == [other_top]
    assert img.layers[-1] == l2 and l2.device.read(0, 1) == b"x"


def test_remove_image_keeps_layers_under_a_container_of_an_old_top(store, pool, raw):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)          # on the base layer
    img.add_layer({0: b"x"})
    with pytest.raises(cowblock.BusyError):
        img.remove()
    assert c.device.read(0, 1)


def test_model_persists_across_reopen(location, tmp_path, raw):
    path = location
    scratch = tmp_path / "s.raw"
    with open(scratch, "wb") as fh:
        fh.truncate(MiB)
    with cowblock.Pool.create(path, size=2**30, block_size=BS) as pool, Store(pool) as store:
        img = store.import_image("app", raw)
        img.add_layer({0: b"layer"})
        c = store.create_container("c", img)
        c.device.write(10, b"container")
        v = store.create_volume("v", MiB)
        v.device.write(0, b"vol")
        b = store.bind("s", scratch)
        c.attach(v)
        c.attach(b)
        ids = [l.id for l in img.layers]
    with cowblock.Pool.open(path) as pool, Store(pool) as store:
        assert read_state(pool, "model.json") is not None
        img = store.image("app")
        assert [l.id for l in img.layers] == ids
        c = store.container("c")
        assert c.device.read(0, 19) == b"layer" + rand(3 * BS, 1)[5:10] + b"container"
        assert [a.name for a in c.attachments] == ["v", "s"]
        assert store.volume("v").device.read(0, 3) == b"vol"
        assert store.get_bind("s").size == MiB
        assert store.layer(ids[0][:8]) == img.layers[0]


def test_read_only_pool_lists_but_refuses_changes(location, raw):
    path = location
    with cowblock.Pool.create(path, size=2**30, block_size=BS) as pool, Store(pool) as store:
        store.import_image("app", raw)
    with cowblock.Pool.open(path, readonly=True) as pool, Store(pool) as store:
        assert [i.name for i in store.images()] == ["app"]
        assert store.df()["images"][0]["name"] == "app"
        with pytest.raises(cowblock.ReadOnlyError):
            store.create_container("c", "app")
        with pytest.raises(cowblock.ReadOnlyError):
            store.create_volume("v", MiB)
        with pytest.raises(cowblock.ReadOnlyError):
            store.remove_image("app")


def test_prune_removes_snapshots_the_model_does_not_name(store, pool, raw):
    img = store.import_image("app", raw)
    store.snapshotter.prepare("import/leftover", size=MiB).write(0, b"x")
    assert store.prune() == ["import/leftover"]
    assert store.snapshotter.keys() == [img.top.key]
    assert store.prune() == []


def test_df_matches_the_pool_accounting(store, pool, raw, tmp_path):
    img = store.import_image("app", raw)
    c = store.create_container("c", img)
    c.device.write(0, rand(2 * BS, 7))
    store.create_volume("v", MiB).device.write(0, b"v")
    scratch = tmp_path / "s.raw"
    with open(scratch, "wb") as fh:
        fh.truncate(MiB)
    store.bind("s", scratch)
    other = pool.create_device("plain", MiB)
    other.write(0, b"p")
    pool.flush()
    df = store.df()
    assert df["pool"]["used"] == pool.used and df["pool"]["block_size"] == BS
    (cont,) = df["containers"]
    u = c.device.usage()
    assert (cont["exclusive"], cont["shared"], cont["mapped"]) == (u.exclusive, u.shared, u.mapped)
    assert cont["exclusive"] == 2 * BS  # its two blocks; not only equal to itself
    assert cont["changed"] == 2 * BS
    assert df["images"][0]["layers"] == 1 and df["images"][0]["containers"] == ["c"]
    assert df["volumes"][0]["exclusive"] == BS
    assert df["binds"][0]["size"] == MiB
    assert [o["device"] for o in df["other"]] == ["plain"]
    every = df["layers"] + df["containers"] + df["volumes"] + df["other"]
    assert sum(d["exclusive"] for d in every) <= pool.used


def test_names_are_validated(store, raw):
    for bad in ("", " x", "a b", "x\0", 5, "-x"):
        with pytest.raises(cowblock.InvalidArgumentError):
            store.import_image(bad, raw)
    with pytest.raises(cowblock.NotFoundError):
        store.import_image("app", raw.parent / "missing.raw")
    store.import_image("registry.example/app:1.0", raw)
    with pytest.raises(cowblock.ExistsError):
        store.import_image("registry.example/app:1.0", raw)
    with pytest.raises(cowblock.NotFoundError):
        store.image("nope")
    with pytest.raises(cowblock.NotFoundError):
        store.layer("ffff")


def test_check_finds_nothing_in_a_consistent_model(store, pool, raw, tmp_path):
    from cowblock import model
    img = store.import_image("base", raw)
    c = store.create_container("web", img)
    c.attach(store.create_volume("logs", MiB))
    store.import_image("ext", raw, external=True)
    assert model.check(pool) == []
    # what pool check needs comes from the model: its namespace and files
    assert store.snapshotter.namespace == model.NAMESPACE
    assert store.snapshotter.device_prefix == model.DEVICE_PREFIX
    assert read_state(pool, model.STATE_FILE) is not None


@pytest.mark.parametrize("text, why", [
    ("garbage", "not valid JSON"),
    ('{"format": "other", "version": 1}', "not a cowblock-model file"),
    ('{"format": "cowblock-model", "version": 9}', "unsupported cowblock-model version 9"),
    ('{"format": "cowblock-model", "version": 1, "images": []}', "table 'images' is missing"),
])
def test_check_reports_a_broken_model_file(store, pool, text, why):
    from cowblock import model
    path = state_where(pool, "model.json")
    write_state(pool, "model.json", text)
    problems = model.check(pool)
    assert problems and all(path in p for p in problems)
    assert any(why in p for p in problems), problems


def test_check_reports_records_naming_what_does_not_exist(store, pool, raw):
    import json

    from cowblock import model
    img = store.import_image("base", raw)
    store.create_container("web", img)
    doc = json.loads(read_state(pool, "model.json"))
    doc["images"]["ghost"] = {"top": "0" * 64, "created": 0, "updated": 0}
    doc["containers"]["web"]["attached"] = [["volume", "nope"]]
    write_state(pool, "model.json", json.dumps(doc))
    pool.delete(store.container("web").device.name)  # behind the model's back
    problems = "\n".join(model.check(pool))
    assert "image 'ghost': its top layer does not exist" in problems
    assert "container 'web': attachment ['volume', 'nope'] does not exist" in problems
    assert "(namespace model) has no device in the pool" in problems


def test_check_covers_every_snapshotter_namespace(pool):
    from cowblock import model
    from cowblock.snapshotter import Snapshotter
    sn = Snapshotter(pool, "k8s")
    sn.prepare("a", size=MiB)
    assert model.check(pool) == []
    pool.delete(sn.stat("a").device)
    assert any("namespace k8s" in p for p in model.check(pool))
