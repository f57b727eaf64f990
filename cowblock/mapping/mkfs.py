"""File systems on devices, made without mapping them.

``mkfs`` runs on a sparse scratch file of the device's size; the result is
then written into the device with :func:`~cowblock.imagefile.import_raw`
(holes and zero blocks skipped, everything the device held before
discarded).  A thin device reads unwritten ranges as zeros, so the tools
are told the storage is zeroed already and write only metadata: a 1 GiB
ext4 costs a few MiB of pool space.  No root and no FUSE are needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from .. import errors

FS_TYPES = ("ext4", "xfs")
_XFS_MIN = 300 * 2**20  # mkfs.xfs refuses smaller file systems


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        pkg = "e2fsprogs" if name.startswith("mkfs.ext") or name == "mke2fs" else "xfsprogs"
        raise errors.CowblockError(f"{name} is not installed (Debian package {pkg})")
    return path


def _ext4_prezeroed_option(mkfs: str) -> str:
    """``assume_storage_prezeroed`` (e2fsprogs >= 1.47) or its older equivalent."""
    res = subprocess.run([mkfs, "-V"], capture_output=True, text=True)
    text = res.stdout + res.stderr
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            if (int(parts[0]), int(parts[1])) >= (1, 47):
                return "assume_storage_prezeroed=1"
            break
    return "lazy_itable_init=0,lazy_journal_init=0,nodiscard"


def mkfs_file(path: str, size: int, fstype: str = "ext4", label: str | None = None) -> None:
    """Make a ``fstype`` file system in a new sparse file ``path`` of ``size`` bytes."""
    if fstype not in FS_TYPES:
        raise errors.InvalidArgumentError(
            f"file system type must be one of {', '.join(FS_TYPES)}, not {fstype!r}")
    if fstype == "xfs" and size < _XFS_MIN:
        raise errors.InvalidArgumentError(
            f"an xfs file system needs at least 300 MiB, not {size} bytes")
    if label is not None and (len(label) > 12 or not label.isprintable()):
        raise errors.InvalidArgumentError(f"a label has at most 12 printable characters: {label!r}")
    with open(path, "xb") as f:
        f.truncate(size)
    if fstype == "ext4":
        mkfs = _tool("mkfs.ext4")
        cmd = [mkfs, "-F", "-q", "-E", _ext4_prezeroed_option(mkfs)]
        if label:
            cmd += ["-L", label]
    else:
        cmd = [_tool("mkfs.xfs"), "-f", "-q", "-K"]
        if label:
            cmd += ["-L", label]
    res = subprocess.run(cmd + [path], capture_output=True, text=True)
    if res.returncode != 0:
        raise errors.CowblockError(
            f"{os.path.basename(cmd[0])} failed: {(res.stderr or res.stdout).strip()}")


def mkfs_device(device, fstype: str = "ext4", label: str | None = None,
                scratch_dir: str | None = None):
    """Replace everything on ``device`` by an empty ``fstype`` file system;
    returns the :class:`~cowblock.imagefile.TransferResult` of the write."""
    from ..imagefile import import_raw
    if device.readonly:
        raise errors.ReadOnlyError(f"device {device.name!r} is read-only")
    with tempfile.TemporaryDirectory(prefix="cowblock-mkfs-", dir=scratch_dir) as tmp:
        path = os.path.join(tmp, "fs.img")
        mkfs_file(path, device.size, fstype, label)
        return import_raw(device, path)
