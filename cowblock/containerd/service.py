"""The ``containerd.services.snapshots.v1.Snapshots`` servicer.

A transport over :class:`cowblock.snapshotter.Snapshotter`: each RPC
unpacks its request, calls the snapshotter (and :class:`.mounts.BlockMounts`
for what a snapshot's mounts are), and packs the answer.  cowblock's
errors become the gRPC codes containerd's client turns back into its own
errors (``errdefs``): NotFound, AlreadyExists, FailedPrecondition,
InvalidArgument.

Mutating calls run one at a time (they map and unmap devices too); Stat,
List and Usage run beside them.
"""

from __future__ import annotations

import logging
import threading

import grpc
from google.protobuf import empty_pb2

from .. import errors
from ..snapshotter import (KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, Info, compile_filter)
from ._pb import mount_pb2, snapshots_pb2 as pb, snapshots_pb2_grpc as pb_grpc
from .mounts import is_internal

log = logging.getLogger("cowblock.containerd")

_KIND_TO_PB = {KIND_VIEW: pb.VIEW, KIND_ACTIVE: pb.ACTIVE, KIND_COMMITTED: pb.COMMITTED}

#: containerd's limit on one label (key plus value), in bytes.
MAX_LABEL = 4096
#: How many infos one List reply carries (containerd's server sends batches too).
LIST_BATCH = 100


class PreconditionError(errors.CowblockError):
    """The snapshot is not in the state the request needs."""


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The status code containerd expects for a cowblock error."""
    if isinstance(exc, PreconditionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, errors.NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, errors.ExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, (errors.BusyError, errors.ReadOnlyError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, errors.PoolFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, ValueError):  # InvalidArgumentError and every bad argument
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.UNKNOWN


def _labels(labels) -> dict[str, str]:
    out = dict(labels)
    for k, v in out.items():
        if len(k.encode()) + len(v.encode()) > MAX_LABEL:
            raise errors.InvalidArgumentError(
                f"label {k[:64]!r}: key and value exceed {MAX_LABEL} bytes")
    return out


def _key(value: str, what: str = "key") -> str:
    if not value:
        raise errors.InvalidArgumentError(f"the snapshot {what} is empty")
    if is_internal(value):
        raise errors.NotFoundError(f"snapshot {value!r} not found")
    return value


def _ts(msg, seconds: float) -> None:
    msg.FromNanoseconds(int(round(seconds * 1e9)))


class SnapshotsServicer(pb_grpc.SnapshotsServicer):
    """containerd's snapshots service over a Snapshotter and its mounts."""

    def __init__(self, snapshotter, mounts):
        self.snapshotter = snapshotter
        self.mounts = mounts
        self._lock = threading.Lock()

    # ---- translation ------------------------------------------------------

    def _parent_out(self, parent: str | None) -> str:
        return "" if parent is None or is_internal(parent) else parent

    def _visible(self, info: Info) -> Info:
        """``info`` as containerd sees it: the hidden base is no parent."""
        parent = self._parent_out(info.parent) or None
        if parent == info.parent:
            return info
        return Info(name=info.name, parent=parent, kind=info.kind, labels=info.labels,
                    created=info.created, updated=info.updated, device=info.device,
                    size=info.size)

    def _info_pb(self, info: Info) -> "pb.Info":
        msg = pb.Info(name=info.name, parent=info.parent or "", kind=_KIND_TO_PB[info.kind],
                      labels=info.labels)
        _ts(msg.created_at, info.created)
        _ts(msg.updated_at, info.updated)
        return msg

    @staticmethod
    def _mounts_pb(mounts: list[dict]) -> list:
        return [mount_pb2.Mount(type=m["type"], source=m["source"], target=m.get("target", ""),
                                options=m["options"]) for m in mounts]

    @staticmethod
    def _fail(context, exc: BaseException):
        code = grpc_code(exc)
        if code is grpc.StatusCode.UNKNOWN:
            log.exception("snapshots request failed")
        else:
            log.info("%s: %s", code.name, exc)
        context.abort(code, str(exc))

    def _call(self, context, fn, *args):
        try:
            return fn(*args)
        except grpc.RpcError:
            raise
        except Exception as exc:  # every error goes back as a status
            self._fail(context, exc)

    # ---- RPCs -------------------------------------------------------------

    def _create(self, req, readonly: bool):
        key = _key(req.key)
        labels = _labels(req.labels)
        with self._lock:
            sn = self.snapshotter
            parent = self.mounts.parent_for(req.parent)
            (sn.view if readonly else sn.prepare)(key, parent, labels)
            try:
                return self.mounts.mount(key)
            except BaseException:
                sn.remove(key)  # no snapshot without its mounts
                raise

    def Prepare(self, request, context):
        mounts = self._call(context, self._create, request, False)
        return pb.PrepareSnapshotResponse(mounts=self._mounts_pb(mounts))

    def View(self, request, context):
        mounts = self._call(context, self._create, request, True)
        return pb.ViewSnapshotResponse(mounts=self._mounts_pb(mounts))

    def _mounts(self, req):
        key = _key(req.key)
        with self._lock:
            info = self.snapshotter.stat(key)
            if info.kind == KIND_COMMITTED:
                raise PreconditionError(
                    f"snapshot {key!r} is committed and has no mounts; make a view of it")
            return self.mounts.mount(key)

    def Mounts(self, request, context):
        mounts = self._call(context, self._mounts, request)
        return pb.MountsResponse(mounts=self._mounts_pb(mounts))

    def _commit(self, req):
        name, key = _key(req.name, "name"), _key(req.key)
        labels = _labels(req.labels)
        with self._lock:
            sn = self.snapshotter
            info = sn.stat(key)
            if info.kind != KIND_ACTIVE:
                raise PreconditionError(
                    f"snapshot {key!r} is {info.kind}; only an active snapshot can be committed")
            if name in sn:
                raise errors.ExistsError(f"snapshot {name!r} already exists")
            self.mounts.unmap(key)  # flushes; BusyError while still mounted
            sn.commit(name, key, labels)

    def Commit(self, request, context):
        self._call(context, self._commit, request)
        return empty_pb2.Empty()

    def _remove(self, req):
        key = _key(req.key)
        with self._lock:
            sn = self.snapshotter
            children = sn.children(key)
            if children:  # refused before anything is unmapped
                raise errors.BusyError(
                    f"snapshot {key!r} has {len(children)} child snapshot(s), e.g. "
                    f"{children[0]!r}; remove them first")
            self.mounts.unmap(key)  # BusyError while still mounted
            sn.remove(key)

    def Remove(self, request, context):
        self._call(context, self._remove, request)
        return empty_pb2.Empty()

    def Stat(self, request, context):
        info = self._call(context, lambda: self._visible(self.snapshotter.stat(_key(request.key))))
        return pb.StatSnapshotResponse(info=self._info_pb(info))

    def _update(self, req):
        key = _key(req.info.name, "name")
        given = _labels(req.info.labels)
        paths = list(req.update_mask.paths) if req.HasField("update_mask") else []
        with self._lock:
            labels = dict(self.snapshotter.stat(key).labels)
            if not paths:
                labels = given
            for path in paths:
                if path == "labels":
                    labels = dict(given)
                elif path.startswith("labels."):
                    k = path[len("labels."):]
                    if k in given:
                        labels[k] = given[k]
                    else:
                        labels.pop(k, None)  # absent from the request: delete
                else:
                    raise errors.InvalidArgumentError(
                        f"cannot update field {path!r} of snapshot {key!r}: "
                        f"only labels are mutable")
            return self._visible(self.snapshotter.update(key, labels))

    def Update(self, request, context):
        info = self._call(context, self._update, request)
        return pb.UpdateSnapshotResponse(info=self._info_pb(info))

    def _list(self, req) -> list[Info]:
        preds = [compile_filter(f) for f in req.filters if f.strip()]
        infos = [self._visible(i) for i in self.snapshotter.walk() if not is_internal(i.name)]
        return [i for i in infos if not preds or any(p(i) for p in preds)]

    def List(self, request, context):
        infos = self._call(context, self._list, request)
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(
                info=[self._info_pb(i) for i in infos[start:start + LIST_BATCH]])

    def Usage(self, request, context):
        size = self._call(context, lambda: self.snapshotter.changed(_key(request.key)))
        return pb.UsageResponse(size=size, inodes=0)

    def _cleanup(self):
        with self._lock:
            removed = self.snapshotter.cleanup()
        if removed:
            log.info("cleanup removed %s", ", ".join(removed))

    def Cleanup(self, request, context):
        self._call(context, self._cleanup)
        return empty_pb2.Empty()
