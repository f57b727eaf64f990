"""cowblock as containerd's snapshotter: ``cowblock snapshotter serve``.

containerd talks to an external snapshotter over gRPC (a ``proxy_plugins``
entry of type ``snapshot``).  The pieces, each talking only to the one
below it:

- :mod:`._pb`: the protobuf and gRPC code generated from containerd's
  snapshots API (``.proto`` files beside it);
- :mod:`.service`: the ``containerd.services.snapshots.v1.Snapshots``
  servicer, a transport over :class:`cowblock.snapshotter.Snapshotter`
  (requests and errors translated, nothing decided here);
- :mod:`.mounts`: what a snapshot's mounts are: an ext4 (or xfs) file
  system on its thin device, mapped as a loop device by the in-process
  map daemon (:class:`cowblock.mapping.daemon.MapDaemon`);
- :mod:`.server`: the process that holds the pool and hosts all of it,
  with the pool's control socket.

grpcio and protobuf come with ``pip install 'cowblock[containerd]'``.
"""

NAMESPACE = "containerd"

__all__ = ["NAMESPACE"]
