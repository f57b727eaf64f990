"""Devices as kernel block devices: ``cowblock device map``.

A device becomes a file of a FUSE mount (:mod:`.fusefile`, served in C
straight into the core) with a loop device over it (:mod:`.loop`, direct
IO, so pages are cached once: by the file system on the loop device).  One
daemon per pool (:mod:`.daemon`) holds the pool and serves every mapped
device of it; :mod:`.client` asks it, starting it when needed; what it
starts is recorded in the pool directory (:mod:`.state`) and cleaned after
a crash.  :mod:`.mkfs` makes file systems on devices without mapping them.
"""

from .client import map_device, mapped_devices, mapping_unavailable, unmap_device
from .mkfs import FS_TYPES, mkfs_device, mkfs_file

__all__ = ["FS_TYPES", "map_device", "mapped_devices", "mapping_unavailable", "mkfs_device",
           "mkfs_file", "unmap_device"]
