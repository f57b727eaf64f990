"""Map and mount in one step: ``cowblock volume mount`` / ``container mount``.

:func:`mount_device` maps a device (:func:`~cowblock.mapping.client.map_device`:
through whichever server holds the pool, the map daemon or
``cowblock snapshotter serve``), gives a blank volume an ext4 file system
on first use, and mounts the loop device on a directory; :func:`umount_dir`
unmounts the directory and unmaps the loop device behind it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from .. import errors
from .client import map_device, unmap_device
from .mkfs import _ext4_prezeroed_option, _tool
from .state import _unescape


def _run(cmd: list[str], what: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise errors.CowblockError(f"{what}: {(res.stderr or res.stdout).strip() or 'failed'}")
    return res.stdout


def fs_type(devpath: str) -> str | None:
    """The file system type on a block device (blkid), None when blank."""
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    res = subprocess.run([blkid, "-p", "-o", "value", "-s", "TYPE", devpath],
                         capture_output=True, text=True)
    if res.returncode == 2:  # nothing found
        return None
    if res.returncode != 0:
        raise errors.CowblockError(f"blkid {devpath}: {res.stderr.strip() or 'failed'}")
    return res.stdout.strip() or None


def device_of(pool_dir: str, kind: str, name: str) -> str:
    """The pool device of volume or container ``name`` (``kind``), read from
    the model, or through the server that holds the pool."""
    from .. import Pool
    from ..model import Store
    try:
        with Pool.open(pool_dir, readonly=True) as pool, Store(pool) as store:
            obj = store.volume(name) if kind == "volume" else store.container(name)
            return obj.device.name
    except errors.BusyError:
        pass
    from ..daemon import client
    reply = client.request(pool_dir, {"op": "run", "argv": ["--json", kind, "ls"],
                                      "pool": pool_dir}, timeout=60)
    if reply.get("exit") != 0:
        raise errors.CowblockError(f"{kind} ls: {reply.get('stderr', '').strip()}")
    for row in json.loads(reply["stdout"]):
        if row.get("name") == name:
            return row["device"]
    raise errors.NotFoundError(f"{kind} {name!r} not found")


def mount_device(pool_dir: str, device: str, directory: str, *, readonly: bool = False,
                 mkfs_blank: bool = False, options: str | None = None) -> dict:
    """Map ``device`` and mount it on ``directory``; returns ``{device, path,
    directory, type, made_fs}``.  A blank device gets an ext4 file system
    when ``mkfs_blank``; otherwise a blank device is an error."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise errors.NotFoundError(f"{directory} is not a directory")
    m = map_device(pool_dir, device, readonly=readonly)
    loop = m["path"]
    try:
        if m.get("existing"):
            raise errors.BusyError(f"device {device!r} is mapped already at {loop}; "
                                   f"a device is mounted once")
        made = False
        fstype = fs_type(loop)
        if fstype is None:
            if not mkfs_blank or readonly:
                raise errors.CowblockError(f"device {device!r} holds no file system")
            mkfs = _tool("mkfs.ext4")
            _run([mkfs, "-F", "-q", "-E", _ext4_prezeroed_option(mkfs), loop], "mkfs.ext4")
            fstype, made = "ext4", True
        opts = ",".join(o for o in (("ro" if readonly else None), options) if o)
        _run(["mount", "-t", fstype] + (["-o", opts] if opts else []) + [loop, directory],
             f"mount {loop} on {directory}")
    except BaseException:
        if not m.get("existing"):
            try:
                unmap_device(pool_dir, loop)
            except errors.CowblockError:
                pass
        raise
    return {"device": device, "path": loop, "directory": directory, "type": fstype,
            "made_fs": made}


def mounted_source(directory: str) -> str | None:
    """What is mounted on ``directory`` (the last mount there), or None."""
    directory = os.path.abspath(directory)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and _unescape(parts[4]) == directory and " - " in line:
                found = _unescape(line.split(" - ", 1)[1].split()[1])
    return found


def umount_dir(pool_dir: str, directory: str) -> dict:
    """Unmount ``directory`` and unmap the loop device mounted there."""
    directory = os.path.abspath(directory)
    source = mounted_source(directory)
    if source is None:
        raise errors.NotFoundError(f"nothing is mounted on {directory}")
    if not source.startswith("/dev/loop"):
        raise errors.InvalidArgumentError(f"{directory} holds {source}, not a mapped device")
    _run(["umount", directory], f"umount {directory}")
    reply = unmap_device(pool_dir, source)
    return {"device": reply["name"], "path": source, "directory": directory}
