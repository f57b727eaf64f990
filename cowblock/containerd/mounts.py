"""A snapshot's mounts: a file system on its thin device, as a loop device.

As in containerd's devmapper snapshotter, every snapshot holds a whole file
system.  A hidden base snapshot holds an empty one, made once (``mkfs`` on
a scratch file, imported: only its metadata takes space); a snapshot
prepared without a parent is a snapshot of that base, every other one a
snapshot of its parent, so the file system is shared block by block.

:class:`BlockMounts` maps the device of an active snapshot (read-write) or
a view (read-only) through the :class:`~cowblock.mapping.daemon.MapDaemon`
that the server hosts, and returns the mount containerd performs:
``{type: ext4, source: /dev/loopN, options: []}`` (``["ro"]`` for views).
Unmapping refuses a loop device that is still mounted.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgumentError
from ..mapping.mkfs import FS_TYPES, mkfs_device

log = logging.getLogger("cowblock.containerd")

#: Keys of cowblock's own snapshots start so; containerd's keys never do
#: (they begin with a namespace, which starts with a letter or digit).
INTERNAL_PREFIX = ".cowblock-"


def is_internal(key: str | None) -> bool:
    return bool(key) and key.startswith(INTERNAL_PREFIX)


class BlockMounts:
    """Base file system, mapping and unmapping of snapshot devices."""

    def __init__(self, snapshotter, mapper, *, fs_type: str = "ext4", size: int = 10 * 2**30):
        if fs_type not in FS_TYPES:
            raise InvalidArgumentError(
                f"file system type must be one of {', '.join(FS_TYPES)}, not {fs_type!r}")
        self.snapshotter = snapshotter
        self.mapper = mapper  # a started MapDaemon, or None where mapping is unavailable
        self.fs_type = fs_type
        self.size = size

    # ---- the base ---------------------------------------------------------

    @property
    def base_key(self) -> str:
        """The hidden committed snapshot holding the empty file system (one
        per file system type and size, so a changed setting gets its own)."""
        return f"{INTERNAL_PREFIX}base {self.fs_type} {self.size}"

    def base(self) -> str:
        """The base key, making its file system first if it does not exist."""
        sn, key = self.snapshotter, self.base_key
        if key in sn:
            return key
        building = f"{INTERNAL_PREFIX}building {self.fs_type} {self.size}"
        if building in sn:  # an earlier attempt died half-way
            sn.remove(building)
        dev = sn.prepare(building, None, size=self.size)
        try:
            res = mkfs_device(dev, self.fs_type, label="cowblock")
            dev.flush()
            sn.commit(key, building, {"cowblock.base": self.fs_type})
        except BaseException:
            if building in sn:
                sn.remove(building)
            raise
        log.info("made the base %s file system (%d bytes of metadata)", self.fs_type, res.copied)
        return key

    def parent_for(self, parent: str | None) -> str:
        """The snapshotter parent of a snapshot containerd prepares on ``parent``."""
        if not parent:
            return self.base()
        if is_internal(parent):
            raise InvalidArgumentError(f"parent {parent!r} is not a snapshot containerd can use")
        return parent

    # ---- mapping ----------------------------------------------------------

    def _need_mapper(self):
        if self.mapper is None:
            from ..errors import CowblockError
            from ..mapping import mapping_unavailable
            raise CowblockError(f"snapshots cannot be mounted here: "
                                f"{mapping_unavailable() or 'the server maps no devices'}")
        return self.mapper

    def mount(self, key: str) -> list[dict]:
        """Map ``key``'s device (once) and return its mounts."""
        info = self.snapshotter.stat(key)
        readonly = info.kind == "view"
        reply = self._need_mapper().map({"name": info.device, "readonly": readonly})
        options = ["ro"] if readonly else []
        if self.fs_type == "xfs":
            options.append("nouuid")  # every snapshot has the base's UUID
        return [{"type": self.fs_type, "source": reply["path"], "target": "", "options": options}]

    def unmap(self, key: str) -> None:
        """Unmap ``key``'s device if it is mapped (BusyError while mounted)."""
        if self.mapper is None:
            return
        device = self.snapshotter.stat(key).device
        if device in self.mapper.mappings:
            self.mapper.unmap({"target": device})
