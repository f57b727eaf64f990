"""Regenerate the Python code of the .proto files beside this script.

    python -m cowblock.containerd._pb.regen      (needs grpcio-tools)

The generated modules are checked in, so that installing cowblock needs
only the grpcio and protobuf runtimes; tests/test_containerd_proto.py
fails when they no longer match the .proto files.
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))  # where cowblock/ lives
PROTOS = ("mount.proto", "snapshots.proto")


def generate(out_dir: str) -> None:
    """Write the generated modules under ``out_dir``/cowblock/containerd/_pb."""
    import grpc_tools
    from grpc_tools import protoc
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rel = os.path.relpath(HERE, ROOT)
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + [os.path.join(rel, p) for p in PROTOS]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")


def generated_files() -> list[str]:
    return ["mount_pb2.py", "mount_pb2_grpc.py", "snapshots_pb2.py", "snapshots_pb2_grpc.py"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        out = os.path.join(tmp, os.path.relpath(HERE, ROOT))
        for name in generated_files():
            with open(os.path.join(out, name), "rb") as src:
                data = src.read()
            with open(os.path.join(HERE, name), "wb") as dst:
                dst.write(data)
            print(f"wrote {os.path.join(HERE, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
