"""Loop devices over files: attach, detach, find (util-linux ``losetup``, sysfs)."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import subprocess
import time

from .. import errors


def _losetup() -> str:
    path = shutil.which("losetup") or "/usr/sbin/losetup"
    if not os.path.exists(path):
        raise errors.CowblockError("losetup (util-linux) is not installed")
    return path


def loop_unavailable() -> str | None:
    """Why loop devices cannot be set up here, or None."""
    if not (os.path.exists("/dev/loop-control") or glob.glob("/dev/loop[0-9]*")):
        return "mapping a device needs loop devices (load the loop module: modprobe loop)"
    if shutil.which("losetup") is None and not os.path.exists("/usr/sbin/losetup"):
        return "mapping a device needs losetup (util-linux)"
    return None


def attach(path: str, readonly: bool = False) -> str:
    """A new loop device over ``path`` with direct IO; returns ``/dev/loopN``."""
    cmd = [_losetup(), "--find", "--show", "--direct-io=on"]
    if readonly:
        cmd.append("--read-only")
    res = subprocess.run(cmd + [path], capture_output=True, text=True)
    if res.returncode != 0:
        raise errors.CowblockError(f"losetup {path}: {res.stderr.strip() or 'failed'}")
    return res.stdout.strip()


def backing_file(loopdev: str) -> str | None:
    """The file behind ``/dev/loopN`` (sysfs), or None when it is not attached."""
    name = os.path.basename(loopdev)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def loops_under(directory: str) -> list[str]:
    """Loop devices whose backing file lies in ``directory``."""
    prefix = os.path.join(os.path.abspath(directory), "")
    found = []
    for sysdir in sorted(glob.glob("/sys/block/loop*/loop")):
        name = sysdir.split("/")[3]
        back = backing_file(name)
        if back and back.startswith(prefix):
            found.append(f"/dev/{name}")
    return found


def in_use(loopdev: str) -> bool:
    """True when something (a mount, an opener with O_EXCL) holds the device."""
    try:
        fd = os.open(loopdev, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        if exc.errno == errno.ENOENT:
            return False
        raise
    os.close(fd)
    holders = glob.glob(f"/sys/block/{os.path.basename(loopdev)}/holders/*")
    return bool(holders)


def mounted(loopdev: str) -> bool:
    """True when ``loopdev`` is the source of a mount in this namespace."""
    try:
        st = os.stat(loopdev)
    except FileNotFoundError:
        return False
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[2] == dev for line in f if len(line.split()) > 2)


BUSY_WAIT = 3.0  # seconds a transient opener (udev's probe after an unmount) may hold it


def detach(loopdev: str) -> None:
    """Detach ``loopdev``; a device that is mounted or held is refused.

    Right after an unmount, udev may still have the device open for a moment
    (it probes it on the change event): an exclusive holder that is not a
    mount is waited for, briefly, before the device counts as in use."""
    deadline = time.monotonic() + BUSY_WAIT
    while in_use(loopdev):
        if mounted(loopdev) or time.monotonic() > deadline:
            raise errors.BusyError(f"{loopdev} is in use (mounted?): unmount it first")
        time.sleep(0.05)
    res = subprocess.run([_losetup(), "--detach", loopdev], capture_output=True, text=True)
    if res.returncode != 0 and backing_file(loopdev) is not None:
        raise errors.CowblockError(f"losetup --detach {loopdev}: {res.stderr.strip() or 'failed'}")


def force_detach(loopdev: str) -> bool:
    """Detach without asking whether it is in use (after a crash); a busy
    device is then freed by the kernel when its last user lets go.  Returns
    True when it is gone now."""
    subprocess.run([_losetup(), "--detach", loopdev], capture_output=True, text=True)
    return backing_file(loopdev) is None


def settle(loopdev: str) -> None:
    """Wait until udev has seen the new device (when udevadm exists)."""
    udevadm = shutil.which("udevadm")
    if udevadm:
        subprocess.run([udevadm, "settle", "--timeout=5"], capture_output=True)
