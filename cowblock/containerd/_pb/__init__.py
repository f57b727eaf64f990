"""Generated protobuf and gRPC code of containerd's snapshots API.

Made from the .proto files here by ``python -m cowblock.containerd._pb.regen``;
never edited by hand.
"""
