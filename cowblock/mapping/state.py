"""What the map daemon started, on disk: ``map.state`` in the pool directory.

The daemon records its pid and FUSE mountpoint before it mounts, and every
loop device as soon as it exists; it removes each on the way out.  After a
crash (SIGKILL), the next daemon of the pool finds the file and undoes what
it names (:func:`clean_stale`): loop devices over the old mount (also those
the file missed), then the dead mount itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from . import loop

STATE_NAME = "map.state"
LOG_NAME = "map.log"
RUN_DIR = "/run/cowblock"


def state_path(pool_dir: str) -> str:
    return os.path.join(pool_dir, STATE_NAME)


def mountpoint_for(pool_dir: str) -> str:
    """The FUSE mountpoint of a pool's daemon: one per pool directory
    (named by its device and inode, so that every path to it agrees)."""
    st = os.stat(pool_dir)
    base = RUN_DIR if os.path.isdir("/run") and os.access("/run", os.W_OK) else \
        os.path.join(tempfile.gettempdir(), "cowblock-run")
    return os.path.join(base, f"map-{st.st_dev:x}-{st.st_ino:x}")


def load(pool_dir: str) -> dict | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        with open(state_path(pool_dir)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def save(pool_dir: str, doc: dict) -> None:
    """Replace the state file atomically and durably."""
    path = state_path(pool_dir)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(pool_dir: str) -> None:
    try:
        os.unlink(state_path(pool_dir))
    except FileNotFoundError:
        pass


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and _unescape(parts[4]) == path:
                    return True
    except OSError:
        pass
    return False


def unmount(path: str, lazy: bool = False) -> bool:
    """Unmount ``path`` (lazily: also a dead FUSE mount); True when it is gone."""
    if not is_mounted(path):
        return True
    cmd = ["umount"] + (["-l"] if lazy else []) + [path]
    subprocess.run(cmd, capture_output=True)
    return not is_mounted(path)


def clean_stale(pool_dir: str, log=print) -> list[str]:
    """Undo what a dead daemon of this pool left behind; returns what it did.

    Only the process that holds the pool for writing calls this: no live
    daemon can own what it finds.
    """
    done: list[str] = []
    doc = load(pool_dir) or {}
    mounts = {mountpoint_for(pool_dir)}
    if isinstance(doc.get("mountpoint"), str):
        mounts.add(doc["mountpoint"])
    loops = set()
    for m in (doc.get("mappings") or {}).values():
        if isinstance(m, dict) and isinstance(m.get("loop"), str):
            loops.add(m["loop"])
    for mnt in mounts:
        loops.update(loop.loops_under(mnt))
    for dev in sorted(loops):
        back = loop.backing_file(dev)
        if back is None or not any(back.startswith(os.path.join(m, "")) for m in mounts):
            continue  # detached already, or reused for something else since
        if loop.force_detach(dev):
            done.append(f"detached stale {dev} ({back})")
        else:
            done.append(f"{dev} ({back}) is still in use: the kernel frees it once "
                        f"its last user (a mount?) lets go")
    for mnt in sorted(mounts):
        if is_mounted(mnt):
            if unmount(mnt, lazy=True):
                done.append(f"unmounted stale FUSE mount {mnt}")
            else:
                done.append(f"could not unmount stale FUSE mount {mnt}")
        if os.path.isdir(mnt) and not is_mounted(mnt):
            try:
                os.rmdir(mnt)
            except OSError:
                pass
    remove(pool_dir)
    for line in done:
        log(line)
    return done
