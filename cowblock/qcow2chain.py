"""Images as qcow2 backing chains, written and read by qemu's own tools.

cowblock does not write or parse qcow2 itself: ``qemu-img`` and ``qemu-io``
(Debian's qemu-utils) do, over an NBD server of cowblock's started for the
purpose on a private Unix socket (:class:`PrivateServer`).

Export (:func:`export_chain`) writes one qcow2 file per layer, base first,
``NN-<short id>.qcow2``, each with the file below as its backing file, named
relative to the directory (the directory can be moved as a whole), and a
cluster size of the pool's block size.  A base layer is converted whole
(``qemu-img convert``: only its data, holes and zero blocks left out).  An
upper layer holds only the blocks it changed: they come from the core's
delta against the parent layer (from the mappings, O(changed)); an empty
overlay is created with the layer's NBD export as its backing file,
``qemu-io -C`` (copy-on-read) reads the changed ranges, which copies them
into the overlay (a range that reads as zeros becomes a zero cluster), and
``qemu-img rebase -u`` then names the parent layer's file as the backing
file.  (``qemu-img convert -B parent`` of the layer's export is no
substitute: it writes every block of the layer, zero clusters included,
reading the whole device.)

Beside the files, ``cowblock-image.json`` (:data:`SIDECAR`) records the
image name and, per file, the layer's id, comment and creation time; import
uses it, when it is there and names the same files, for the comments and
times (the layers made get new ids: their content may have been changed by
other tools since).

Import (:func:`read_chain`, :func:`fill_layer`) reads the chain with
``qemu-img info --backing-chain``, refuses what it cannot take (loops,
missing files, members that are not qcow2 -- or raw, as the base --,
clusters other than the pool's block size, differing virtual sizes), and
then fills each layer, base first, from the ranges allocated in that file
alone: ``qemu-img convert -n -B <backing>`` to the layer's NBD export copies
only the file's own clusters (its zero clusters arrive as zero writes, which
the export turns into discards) and skips what the backing file holds.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading

from .errors import CowblockError, ExistsError, InvalidArgumentError, NotFoundError

SIDECAR = "cowblock-image.json"
SIDECAR_FORMAT = "cowblock-qcow2-chain"
MAX_RUN = 8 << 20        # bytes one copy-on-read request covers at most
TIMEOUT = 3600           # seconds one qemu tool may run
_SANITIZER_VARS = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


class ToolMissingError(CowblockError):
    """qemu-img or qemu-io is not installed."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"{name} is not installed: qcow2 chains are written and read "
                               f"by qemu's tools (Debian package qemu-utils)")
    return path


def _env() -> dict:
    """The environment for qemu's tools: this one, less a sanitizer runtime
    preloaded into this process (a run under AddressSanitizer), which qemu is
    not built for and hangs with.  Other preloaded libraries stay."""
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD", "").replace(":", " ").split()
    kept = [lib for lib in preload if "asan" not in os.path.basename(lib)]
    if len(kept) != len(preload):
        for var in _SANITIZER_VARS:
            env.pop(var, None)
        if kept:
            env["LD_PRELOAD"] = " ".join(kept)
    return env


def _run(argv: list[str], what: str, stdin: str | None = None) -> str:
    """Run a qemu tool; its stdout, or an error naming ``what`` and qemu's message."""
    argv = [_tool(argv[0]), *argv[1:]]
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=_env(),
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CowblockError(f"{what}: {os.path.basename(argv[0])} did not finish "
                            f"in {TIMEOUT} s") from None
    err = r.stderr.strip()
    # qemu-io reports a failed command on stderr and still exits 0
    if r.returncode or (os.path.basename(argv[0]) == "qemu-io" and err):
        msg = err.replace(f"{argv[0]}: ", "").replace("qemu-img: ", "").replace("qemu-io: ", "")
        raise InvalidArgumentError(f"{what}: {msg or f'exit status {r.returncode}'}")
    return r.stdout


# ----------------------------------------------------------------------------
# The private NBD server


class PrivateServer:
    """An NBD server of every device of ``pool`` on a Unix socket in a
    private temporary directory, on its own event loop in a thread, for as
    long as the ``with`` block runs.  Works in the process that holds the
    pool, whether it runs the CLI itself or answers it (``cowblock serve``,
    the map daemon): the server only needs the open pool."""

    def __init__(self, pool, readonly: bool):
        from .nbd.server import Server
        self.server = Server(pool, readonly=readonly)
        self._tmp = None
        self.socket = None
        self._thread = None
        self._loop = None
        self._ready = threading.Event()
        self._error = None

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.socket}"

    def __enter__(self) -> "PrivateServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="cowblock-qcow2-")
        self.socket = os.path.join(self._tmp.name, "nbd.sock")

        def main():
            async def go():
                self._loop = asyncio.get_running_loop()
                await self.server.serve(self.socket, None, lambda _a: self._ready.set())
            try:
                asyncio.run(go())
            except BaseException as exc:  # noqa: B902 - reported by __enter__/__exit__
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="cowblock-qcow2-nbd", daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            self._cleanup()
            raise CowblockError(f"could not start an NBD server for qemu-img: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.stop)
        if self._thread is not None:
            self._thread.join(120)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._error is not None and not isinstance(self._error, CowblockError):
            err, self._error = self._error, None
            raise CowblockError(f"the NBD server for qemu-img failed: {err!r}") from err


# ----------------------------------------------------------------------------
# Export


def _changed_runs(dev, parent, size: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, length) byte runs of the blocks where ``dev`` reads otherwise
    than ``parent``, from the core's delta (the mappings alone)."""
    runs: list[tuple[int, int]] = []
    start, nblocks = 0, -(-size // block_size)
    while start < nblocks:
        rows, start = dev.delta(parent, start, 4096)
        for b in rows["block"].tolist():
            off = b * block_size
            n = min(block_size, size - off)
            if runs and runs[-1][0] + runs[-1][1] == off and runs[-1][1] + n <= MAX_RUN:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((off, n))
    return runs


def layer_file_name(index: int, layer) -> str:
    return f"{index:02d}-{layer.short_id}.qcow2"


def export_chain(image, directory, *, overwrite: bool = False) -> dict:
    """Write ``image`` (a :class:`cowblock.model.Image`) to ``directory`` as
    a qcow2 chain (see the module's doc); returns ``{"top": path, "files":
    [...], "layers": [{"file", "id", "changed_bytes", "file_bytes"}]}``."""
    _tool("qemu-img"), _tool("qemu-io")
    directory = os.path.abspath(os.fspath(directory))
    chain = image.layers
    names = [layer_file_name(i, layer) for i, layer in enumerate(chain)]
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InvalidArgumentError(f"{directory!r} is not a directory: a qcow2 chain is "
                                   f"written as one file per layer into a directory")
    os.makedirs(directory, exist_ok=True)
    taken = [n for n in [*names, SIDECAR] if os.path.lexists(os.path.join(directory, n))]
    if taken and not overwrite:
        raise ExistsError(f"{directory!r} already holds {', '.join(taken)}: use --force to "
                          f"write over them")
    for n in taken:
        os.unlink(os.path.join(directory, n))
    pool = image.store.pool
    bs = pool.block_size
    size = image.size
    opts = f"cluster_size={bs}"
    out = {"top": os.path.join(directory, names[-1]), "files": [], "layers": []}
    written: list[str] = []
    try:
        with PrivateServer(pool, readonly=True) as srv:
            for i, layer in enumerate(chain):
                path = os.path.join(directory, names[i])
                dev = layer.device
                what = f"export of layer {layer.short_id} to {path}"
                written.append(path)
                if i == 0:
                    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", opts,
                          srv.uri(dev.name), path], what)
                    changed = sum(n for _, n in dev.extents())
                else:
                    runs = _changed_runs(dev, chain[i - 1].device, size, bs)
                    changed = sum(n for _, n in runs)
                    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts,
                          "-b", srv.uri(dev.name), "-F", "raw", path, str(size)], what)
                    if runs:
                        script = "".join(f"read -q {o} {n}\n" for o, n in runs)
                        _run(["qemu-io", "-C", "-f", "qcow2", path], what, stdin=script)
                    _run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", names[i - 1],
                          "-F", "qcow2", path], what)
                out["files"].append(path)
                out["layers"].append({"file": names[i], "id": layer.id,
                                      "changed_bytes": changed,
                                      "file_bytes": os.stat(path).st_blocks * 512})
        side = {"format": SIDECAR_FORMAT, "version": 1, "image": image.name, "size": size,
                "block_size": bs, "top": names[-1],
                "layers": [{"file": names[i], "id": layer.id,
                            "parent": layer.parent.id if layer.parent else None,
                            "comment": layer.comment, "created": layer.created}
                           for i, layer in enumerate(chain)]}
        tmp = os.path.join(directory, SIDECAR + ".tmp")
        with open(tmp, "w") as f:
            json.dump(side, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(directory, SIDECAR))
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise
    return out


# ----------------------------------------------------------------------------
# Import


def read_chain(path, block_size: int) -> list[dict]:
    """The members of the backing chain whose top is ``path``, base first,
    each ``{"filename", "format", "size", "backing"}`` (``backing``: the
    file name as qemu opens it, or None), checked: every member a local
    qcow2 file (the base may be raw) with clusters of ``block_size``, one
    virtual size, no loop, no file missing."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise NotFoundError(f"qcow2 file {path!r} does not exist")
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{path!r} is not a regular file")
    text = _run(["qemu-img", "info", "--backing-chain", "--output=json", path],
                f"reading the backing chain of {path!r}")
    try:
        members = json.loads(text)
        if isinstance(members, dict):
            members = [members]
        seen = set()
        out = []
        for m in members:
            fn, fmt = m["filename"], m["format"]
            real = os.path.realpath(fn)
            if real in seen:
                raise InvalidArgumentError(f"the backing chain of {path!r} loops: "
                                           f"{fn!r} comes back")
            seen.add(real)
            out.append({"filename": fn, "format": fmt, "size": int(m["virtual-size"]),
                        "cluster": m.get("cluster-size"),
                        "backing": m.get("full-backing-filename") or m.get("backing-filename")})
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"qemu-img info of {path!r}: unexpected output "
                                   f"({exc!r})") from None
    out.reverse()
    for k, m in enumerate(out):
        fn = m["filename"]
        if not os.path.isfile(fn):
            raise InvalidArgumentError(f"chain member {fn!r} is not a local file")
        if m["format"] not in ("qcow2", "raw") or (m["format"] == "raw" and k):
            raise InvalidArgumentError(
                f"chain member {fn!r} is {m['format']}: a chain of qcow2 files is imported "
                f"(its base may be raw)")
        if m["format"] == "qcow2" and m["cluster"] != block_size:
            raise InvalidArgumentError(
                f"chain member {fn!r} has clusters of {m['cluster']} bytes; this pool's block "
                f"size is {block_size}: convert it with -o cluster_size={block_size}, or "
                f"import into a pool of that block size")
        if m["size"] != out[-1]["size"]:
            raise InvalidArgumentError(
                f"chain member {fn!r} is {m['size']} bytes, the top {out[-1]['size']}: "
                f"layers of one image have one size")
        if m["backing"] and k == 0:  # qemu-img info lists every member it could open
            raise InvalidArgumentError(f"{fn!r}'s backing file {m['backing']!r} "
                                       f"could not be opened")
    return out


def sidecar_for(path, members: list[dict]) -> dict | None:
    """The sidecar beside ``path`` when it describes this chain (same file
    names, base first), else None."""
    side = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), SIDECAR)
    try:
        with open(side) as f:
            doc = json.load(f)
        files = [e["file"] for e in doc["layers"]]
        if doc.get("format") == SIDECAR_FORMAT and files == [
                os.path.basename(m["filename"]) for m in members]:
            return doc
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def fill_layer(srv: PrivateServer, dev, member: dict, below: dict | None) -> None:
    """Write into ``dev`` (exported by ``srv``; a new device for a base, else
    a snapshot of the layer made from ``below``) the clusters that
    ``member``'s file itself holds."""
    what = f"import of {member['filename']!r}"
    argv = ["qemu-img", "convert", "-q", "-n", "-f", member["format"], "-O", "raw"]
    if below is None:
        argv.append("--target-is-zero")
    else:
        # A target backing file makes qemu-img copy only what the source's
        # top file holds (allocated there), zero clusters as zero writes.
        argv += ["-B", below["filename"], "-F", below["format"]]
    _run([*argv, member["filename"], srv.uri(dev.name)], what)
