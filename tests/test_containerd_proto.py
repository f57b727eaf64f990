"""The generated code of containerd's snapshots API matches its .proto
files, and speaks containerd's names and field numbers."""

import os

import pytest

grpc_tools = pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed")
pb = pytest.importorskip("cowblock.containerd._pb.snapshots_pb2",
                         reason="grpcio/protobuf are not installed")

from cowblock.containerd._pb import regen  # noqa: E402


def _meaning(name, text):
    """What must not drift: the serialized descriptor of a ``_pb2`` module,
    the code of a ``_grpc`` one, without the generator's version stamps."""
    lines = text.decode().splitlines()
    if name.endswith("_pb2.py"):
        return [l for l in lines if "AddSerializedFile" in l]
    return [l for l in lines if not l.startswith("GRPC_GENERATED_VERSION")]


def test_checked_in_code_matches_the_protos(tmp_path):
    regen.generate(str(tmp_path))
    out = tmp_path / os.path.relpath(regen.HERE, regen.ROOT)
    for name in regen.generated_files():
        with open(os.path.join(regen.HERE, name), "rb") as f:
            checked_in = f.read()
        assert _meaning(name, (out / name).read_bytes()) == _meaning(name, checked_in), (
            f"{name} is stale: run python -m cowblock.containerd._pb.regen")


def test_wire_names_and_field_numbers():
    svc = pb.DESCRIPTOR.services_by_name["Snapshots"]
    assert svc.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert sorted(m.name for m in svc.methods) == sorted(
        ["Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage",
         "Cleanup"])
    assert svc.methods_by_name["List"].server_streaming
    fields = {f.name: f.number for f in pb.Info.DESCRIPTOR.fields}
    assert fields == {"name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5,
                      "labels": 6}
    assert {f.name: f.number for f in pb.UpdateSnapshotRequest.DESCRIPTOR.fields} == \
        {"snapshotter": 1, "info": 2, "update_mask": 3}
    mount = pb.PrepareSnapshotResponse.DESCRIPTOR.fields_by_name["mounts"].message_type
    assert mount.full_name == "containerd.types.Mount"
    assert {f.name: f.number for f in mount.fields} == \
        {"type": 1, "source": 2, "target": 3, "options": 4}
    assert [(v.name, v.number) for v in pb.Kind.DESCRIPTOR.values] == \
        [("UNKNOWN", 0), ("VIEW", 1), ("ACTIVE", 2), ("COMMITTED", 3)]
