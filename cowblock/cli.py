"""The ``cowblock`` command.

Noun-verb subcommands::

    cowblock pool create|info|check|scrub|stats|dump PATH
    cowblock device ls|create|snapshot|rm|info|import|export|send|receive
    cowblock device map|unmap|mapped|mkfs
    cowblock image ls|import|export|send|receive|rm|history
    cowblock stream merge FIRST SECOND
    cowblock container create|ls|commit|export|reset|rm|attach|detach
    cowblock volume create|ls|rm
    cowblock bind create|ls|rm
    cowblock df [-v]
    cowblock serve [--socket PATH] [--tcp HOST:PORT] [--readonly]
    cowblock demo [DIR]
    cowblock bench ...

The pool is named with ``--pool PATH`` or the ``COWBLOCK_POOL`` environment
variable. Sizes take binary suffixes (``10G`` = 10 GiB); sizes are printed in
IEC units with the exact byte count; ``--json`` prints integer bytes.

Exit codes: 0 success; 1 error (the message is on stderr); 2 usage error.
``pool check``: 0 consistent, 2 corrupted, 3 leaked blocks only (like
``qemu-img check``).  ``pool scrub``: 0 every block read back intact, 2 damage
found.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .errors import BusyError, CorruptError, CowblockError, ExistsError, InvalidArgumentError
from .table import print_table
from .argparsing import Parser
from .units import format_exact, format_size, parse_size, size_range

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_CORRUPT = 2
EXIT_CHECK_LEAKS = 3
EXIT_SCRUB_DAMAGE = 2

_EPILOG = """\
The pool is given by --pool PATH or the COWBLOCK_POOL environment variable.
Sizes accept binary suffixes: 512K, 1.5M, 10G (= 10 GiB), 4KiB.
Export targets: a new file, an existing file or block device (--force), or -
(standard output). Import sources: a raw file or a block device.

exit codes: 0 ok, 1 error, 2 usage error;
  pool check: 0 consistent, 2 corrupted, 3 leaked blocks only
  pool scrub: 0 intact, 2 damaged data found
"""


class UsageError(Exception):
    """A command line that names no pool or contradicts itself (exit 2)."""


# --------------------------------------------------------------------------
# Output helpers


# cb_pool_create refuses a pool of more blocks (csrc/pool.c); the header has
# no constant for it yet.
_MAX_POOL_BLOCKS = 1 << 36


def _sizes(what: str, minimum: int | None = None, maximum: int | None = None,
           multiple: int | None = None, power_of_two: bool = False):
    """An argparse type for a size called ``what``: every error names the
    value and the range allowed."""
    def parse(text: str) -> int:
        try:
            value = parse_size(text, minimum=minimum, maximum=maximum,
                               multiple=multiple, what=what)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if power_of_two and value & (value - 1):
            raise argparse.ArgumentTypeError(
                f"{what} {text!r} is not a power of two: "
                f"{size_range(minimum, maximum)}, a power of two")
        return value
    return parse


def _device_sizes():
    from .pool import MAX_DEVICE_SIZE
    return _sizes("size", 512, MAX_DEVICE_SIZE, multiple=512)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _exact(n: int | None) -> str:
    return "-" if n is None else format_exact(n)


def _emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _listing(args, rows: list, headers: Sequence[str], cells) -> int:
    """An ``ls`` command's output: ``rows`` as JSON, or a table of ``cells(row)``."""
    if args.json:
        _emit_json(rows)
    else:
        print_table(headers, [cells(r) for r in rows])
    return EXIT_OK


def _say(args, text: str, obj: Any = None) -> None:
    """Report what a mutating command did: text, or ``obj`` as JSON."""
    if args.json:
        _emit_json(obj if obj is not None else {"ok": True})
    else:
        print(text)


# --------------------------------------------------------------------------
# Pool and store access


def _pool_path(args, positional: str | None = None) -> str:
    path = positional or args.pool or os.environ.get("COWBLOCK_POOL")
    if not path:
        raise UsageError("no pool given: use --pool PATH or set COWBLOCK_POOL")
    return path


@contextmanager
def _pool(args, write: bool, positional: str | None = None) -> Iterator[Any]:
    held = getattr(args, "held_pool", None)
    if held is not None:  # run by a server on the pool it holds (run_held)
        yield held
        return
    from . import Pool
    with Pool.open(_pool_path(args, positional), readonly=not write) as pool:
        yield pool


@contextmanager
def _store(args, write: bool) -> Iterator[Any]:
    from .model import Store
    with _pool(args, write) as pool, Store(pool) as store:
        yield store


# --------------------------------------------------------------------------
# pool


def _file_size_limit() -> str:
    """`` (this process may write files of at most N: ulimit -f)``, or ''."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError):
        return ""
    if soft == resource.RLIM_INFINITY:
        return ""
    return f" (this process may write files of at most {format_exact(soft)}: see ulimit -f)"


def cmd_pool_create(args) -> int:
    from . import Pool
    from .errors import IOFailedError
    path = _pool_path(args, args.path)
    bs = args.block_size
    try:  # its range depends on the block size: checked here, not by argparse
        size = parse_size(args.size, minimum=bs, maximum=_MAX_POOL_BLOCKS * bs, what="pool size")
    except InvalidArgumentError as exc:
        raise UsageError(f"{exc} with {format_size(bs)} blocks") from None
    try:
        pool = Pool.create(path, size=size, block_size=bs, checksums=args.checksums)
    except (IOFailedError, InvalidArgumentError) as exc:
        if getattr(exc, "code", None) != -errno.EFBIG:   # the core's code for EFBIG
            raise
        err = IOFailedError(f"cannot create a pool of {format_exact(size)} in {path!r}: the "
                            f"file system there cannot hold a data file that large (File too "
                            f"large){_file_size_limit()}; give a smaller --size")
        err.errno = errno.EFBIG
        raise err from None
    with pool:
        info = {"path": str(pool.path), "size": pool.size, "block_size": pool.block_size,
                "checksums": pool.checksums}
    _say(args, f"created pool {path}: size {format_exact(info['size'])}, "
               f"block size {format_exact(info['block_size'])}"
               + (", data checksums on" if info["checksums"] else ""), info)
    return EXIT_OK


def cmd_pool_info(args) -> int:
    with _pool(args, False, args.path) as pool:
        stats = pool.stats()
        info = {"path": str(pool.path), "size": pool.size, "used": pool.used,
                "block_size": pool.block_size, "devices": len(pool.devices()),
                "checksums": pool.checksums,
                "data_bytes_on_disk": stats.get("data_bytes_on_disk"),
                "meta_bytes": stats.get("meta_bytes"),
                "meta_bytes_on_disk": stats.get("meta_bytes_on_disk"),
                "generation": stats.get("generation"),
                "held": stats["held_blocks"] * pool.block_size}
    if args.json:
        _emit_json(info)
        return EXIT_OK
    rows = [("path", info["path"]), ("size", _exact(info["size"])),
            ("block size", _exact(info["block_size"])), ("used", _exact(info["used"])),
            ("held for readers", _exact(info["held"])),
            ("data checksums", "on" if info["checksums"] else "off"),
            ("devices", info["devices"]),
            ("data file on disk", _exact(info["data_bytes_on_disk"])),
            ("metadata in use", _exact(info["meta_bytes"])),
            ("metadata file on disk", _exact(info["meta_bytes_on_disk"])),
            ("generation", info["generation"])]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{w + 1}} {'-' if v is None else v}")
    return EXIT_OK


def cmd_pool_check(args) -> int:
    from . import model
    path = _pool_path(args, args.path)
    errors: list[str] = []
    messages: list[str] = []
    repaired: list[str] = []
    leaks = 0
    try:
        # read-only unless repairing: a check alone changes nothing
        with _pool(args, args.repair, args.path) as pool:
            report = pool.check(repair=True) if args.repair else pool.check()
            if args.repair:
                # what was done, then the state it left, which decides the exit code
                repaired = [str(m) for m in report.messages
                            if not str(m).startswith("error:")]
                report = pool.check()
            leaks = int(report.leaks)
            n_errors = int(report.errors)
            messages = [str(m) for m in report.messages if str(m) not in repaired]
            if n_errors:
                errors += [m[len("error: "):] if m.startswith("error: ") else m
                           for m in messages if not m.startswith(("warning:", "note:"))]
            if n_errors and not errors:
                errors.append(f"{n_errors} error(s) in the pool metadata")
            errors += model.check(pool)
    except CorruptError as exc:
        errors.append(f"cannot open the pool: {exc}")
    if args.json:
        out: dict[str, Any] = {"ok": not errors and not leaks, "errors": errors, "leaks": leaks}
        if args.repair:
            out["repaired"] = repaired
        _emit_json(out)
    else:
        for m in repaired:
            print(m if m.startswith(("repaired:", "warning:", "leak:")) else f"note: {m}")
        for e in errors:
            print(f"error: {e}")
        if not errors:
            for m in messages:
                print(m if m.startswith("warning:") else f"note: {m}")
        if errors:
            print(f"{path}: corrupted ({len(errors)} error(s))")
        elif leaks:
            print(f"{path}: no errors found, but {leaks} leaked block(s) or page(s) "
                  f"(space not given back{'' if args.repair else '; --repair gives it back'})")
        else:
            print(f"{path}: no errors found")
    if errors:
        return EXIT_CHECK_CORRUPT
    return EXIT_CHECK_LEAKS if leaks else EXIT_OK


def _progress_bar(enabled: bool, desc: str = "scrub"):
    """A progress(done, total) callback drawing a bar on stderr, and a
    function that closes it; both do nothing unless enabled."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024,
               desc=desc, file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return progress, bar.close


def _progress_for(args, desc: str):
    """The progress bar of a command with --progress/--no-progress: on when
    stderr is a terminal (and not --json), or when asked for."""
    show = not args.json and not args.no_progress and sys.stderr.isatty()
    return _progress_bar(show or args.progress, desc)


def cmd_pool_scrub(args) -> int:
    path = _pool_path(args, args.path)
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    progress, close_bar = _progress_for(args, "scrub")
    try:
        with _pool(args, False, args.path) as pool:
            report = pool.scrub(progress=progress, rate=args.rate)
    finally:
        close_bar()
    damage = [{"device": d.device, "offset": d.offset, "length": d.length,
               "block": d.block, "devices": d.devices, "error": d.error}
              for d in report.damage]
    if args.json:
        _emit_json({"ok": report.ok, "bytes": report.bytes, "blocks": report.blocks,
                    "checksums": report.checksums, "bad": report.bad, "damage": damage})
    else:
        for d in report.damage:
            where = (f"device {d.device!r} at offset {d.offset}" if d.device
                     else "no device reads it")
            also = f" (and {d.devices - 1} more device(s))" if d.devices > 1 else ""
            print(f"damaged: {d.length} bytes in data block {d.block}, {where}{also}: "
                  f"{d.error}")
        if report.bad > len(report.damage):
            print(f"... and {report.bad - len(report.damage)} more damaged sub-block(s)")
        how = "verified against checksums" if report.checksums else \
            "read back (the pool has no checksums: only IO errors can be found)"
        state = "no damage found" if report.ok else f"{report.bad} damaged sub-block(s)"
        print(f"{path}: {format_exact(report.bytes)} in {report.blocks} blocks {how}; {state}")
    return EXIT_OK if report.ok else EXIT_SCRUB_DAMAGE


_BYTE_STATS = ("bytes_written", "data_bytes_written", "copyup_bytes", "bytes_read",
               "meta_bytes", "data_bytes_on_disk", "meta_bytes_on_disk", "used", "size",
               "block_size")


def cmd_pool_stats(args) -> int:
    with _pool(args, False, args.path) as pool:
        stats = dict(pool.stats())
    if args.json:
        _emit_json(stats)
        return EXIT_OK
    w = max((len(k) for k in stats), default=0)
    for k in sorted(stats):
        v = stats[k]
        shown = format_exact(v) if k in _BYTE_STATS and isinstance(v, int) else v
        print(f"{k + ':':<{w + 1}} {shown}")
    return EXIT_OK


def cmd_pool_dump(args) -> int:
    with _pool(args, False, args.path) as pool:
        d = pool.dump()
    if args.json:
        _emit_json(d)
        return EXIT_OK
    sb = d["superblock"]
    print(f"superblock: slot {sb['slot']}, generation {sb['generation']}, version {sb['version']}, "
          f"block size {_exact(sb['block_size'])}, sub-block {_exact(sb['sub_block_size'])}, "
          f"{sb['nblocks']} blocks, time {sb['time']}, next device id {sb['next_dev_id']}, "
          f"{sb['meta_pages']} metadata pages, uuid {sb['uuid']}, "
          f"created {_when(sb['created_ns'] / 1e9)}")
    for s in d["slots"]:
        state = (f"generation {s['generation']}{' (current)' if s['current'] else ''}"
                 if s["valid"] else "invalid")
        print(f"slot {s['slot']}: {state}")
    for x in d["externals"]:
        print(f"external {x['id']}: {x['path']} ({_exact(x['size'])}), page {x['page']}")
    for dev in d["devices"]:
        print(f"device {dev['id']} {dev['name']!r}: size {_exact(dev['size'])}, "
              f"{'ro' if dev['readonly'] else 'rw'}, depth {dev['depth']}, root page {dev['root']}, "
              f"birth {dev['birth_time']}, snap {dev['snap_time']}, "
              f"origin {dev['origin_id'] or '-'}, external {dev['external_id'] or '-'}, "
              f"{dev['mapped_entries']} entries")
        for m in dev["mappings"]:
            n = m["length"]
            virt = f"{m['virt']}" + (f"..{m['virt'] + n - 1}" if n > 1 else "")
            data = ("" if "data" not in m else
                    f" -> {m['data']}" + (f"..{m['data'] + n - 1}" if n > 1 else ""))
            extra = ""
            if "flags" in m:
                extra = f", flags {m['flags']}, bitmap {m['bitmap']:#x}"
                if "origin" in m:
                    extra += f", origin {m['origin']}"
            print(f"  {virt}{data} (time {m['time']}{extra})")
    fl = d["free_log"]
    runs = ", ".join(f"{r['start']}+{r['count']}" for r in fl["runs"]) or "-"
    print(f"free log: pages {fl['pages'] or '-'}, runs {runs}")
    if d["uncommitted"]:
        print("(the pool has uncommitted changes, not shown)")
    return EXIT_OK


# --------------------------------------------------------------------------
# device


def _device_rows(pool) -> list[dict]:
    from .model import device_usages
    usage = device_usages(pool)
    rows = []
    for info in pool.infos():
        name = info.name
        u = usage.get(name)
        rows.append({"name": name, "size": info.size, "readonly": bool(info.readonly),
                     "origin": info.origin, "external": info.external,
                     "created": info.created,
                     "mapped": u.mapped if u else 0, "exclusive": u.exclusive if u else 0,
                     "shared": u.shared if u else 0})
    return rows


def cmd_device_ls(args) -> int:
    with _pool(args, False) as pool:
        rows = _device_rows(pool)
    return _listing(
        args, rows, ["NAME", " SIZE", " MAPPED", " EXCLUSIVE", " SHARED", "MODE", "ORIGIN"],
        lambda r: (r["name"], _exact(r["size"]), _exact(r["mapped"]), _exact(r["exclusive"]),
                   _exact(r["shared"]), "ro" if r["readonly"] else "rw",
                   r["origin"] or (f"external:{r['external']}" if r["external"] else "-")))


def cmd_device_create(args) -> int:
    if args.size is None and not args.external:
        raise UsageError("give the device's SIZE (it may be left out only with --external)")
    with _pool(args, True) as pool:
        if args.external:
            from .imagefile import check_raw_file
            check_raw_file(args.external)
            dev = pool.create_device(args.name, args.size, external=os.path.abspath(args.external))
        else:
            dev = pool.create_device(args.name, args.size)
        pool.flush()
        obj = {"name": dev.name, "size": dev.size}
    _say(args, f"created device {args.name}: {format_exact(obj['size'])}", obj)
    return EXIT_OK


def cmd_device_snapshot(args) -> int:
    with _pool(args, True) as pool:
        dev = pool.snapshot(args.source, args.name, readonly=args.readonly)
        pool.flush()
        obj = {"name": dev.name, "origin": args.source, "size": dev.size,
               "readonly": bool(args.readonly)}
    _say(args, f"created {'read-only ' if args.readonly else ''}snapshot {args.name} "
               f"of {args.source}", obj)
    return EXIT_OK


def cmd_device_rm(args) -> int:
    with _pool(args, True) as pool:
        before = pool.used
        for name in args.names:
            pool.delete(name)
        pool.flush()
        freed = before - pool.used
    _say(args, f"removed {', '.join(args.names)}; {format_exact(freed)} given back",
         {"removed": args.names, "freed": freed})
    return EXIT_OK


def cmd_device_info(args) -> int:
    with _pool(args, False) as pool:
        info = pool.info(args.name)
        dev = pool.device(args.name)
        u = dev.usage()
        extents = dev.extents()
        obj = {"name": info.name, "id": info.id, "size": info.size,
               "readonly": bool(info.readonly), "origin": info.origin,
               "external": info.external, "created": info.created,
               "mapped": u.mapped, "exclusive": u.exclusive, "shared": u.shared,
               "extents": len(extents), "extent_bytes": sum(l for _, l in extents)}
    if args.json:
        _emit_json(obj)
        return EXIT_OK
    rows = [("name", obj["name"]), ("id", obj["id"]), ("size", _exact(obj["size"])),
            ("mode", "read-only" if obj["readonly"] else "read-write"),
            ("origin", obj["origin"] or "-"), ("external base", obj["external"] or "-"),
            ("created", _when(obj["created"])), ("mapped", _exact(obj["mapped"])),
            ("exclusive", _exact(obj["exclusive"])), ("shared", _exact(obj["shared"])),
            ("extents", f"{obj['extents']} covering {_exact(obj['extent_bytes'])}")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{w + 1}} {v}")
    return EXIT_OK


def _transfer_obj(res) -> dict:
    return {"size": res.size, "copied": res.copied, "holes": res.holes, "zeros": res.zeros}


def cmd_device_import(args) -> int:
    from .imagefile import import_raw
    progress, close_bar = _progress_for(args, "import")
    try:
        with _pool(args, True) as pool:
            res = import_raw(pool, args.file, name=args.name, size=args.size,
                             progress=progress)
            pool.flush()
    finally:
        close_bar()
    obj = {"name": args.name, **_transfer_obj(res)}
    _say(args, f"imported {args.file} into device {args.name}: copied {format_exact(res.copied)}, "
               f"skipped {format_exact(res.holes)} of holes and {format_exact(res.zeros)} "
               f"of zero blocks", obj)
    return EXIT_OK


def _export(args, what: str, export) -> int:
    """Run ``export(target, overwrite=, progress=)`` for ``args.file``
    (``-``: standard output) and report it; ``what`` names the source."""
    target: str | int = args.file
    if args.file == "-":
        if sys.stdout.isatty():
            raise UsageError("standard output is a terminal: redirect it to a file or "
                             "a pipe to export a disk image there")
        sys.stdout.flush()
        target = sys.stdout.fileno()
    progress, close_bar = _progress_for(args, "export")
    try:
        res = export(target, overwrite=args.force, progress=progress)
    except ExistsError as exc:
        if getattr(exc, "path", None) != args.file:
            raise
        raise ExistsError(f"{args.file!r} {exc.reason}: use --force to write over it") from None
    finally:
        close_bar()
    obj = {"name": args.name, "file": args.file, **_transfer_obj(res)}
    if isinstance(target, int) or stat.S_ISBLK(os.stat(args.file).st_mode):
        text = (f"exported {what} to {'standard output' if args.file == '-' else args.file}: "
                f"wrote {format_exact(res.size)} (every byte)")
    else:
        text = (f"exported {what} to {args.file} ({format_exact(res.size)}): "
                f"wrote {format_exact(res.copied)}, left {format_exact(res.skipped)} as holes")
    if args.file == "-":  # standard output carries the image: report on stderr
        print(json.dumps(obj, sort_keys=True) if args.json else text, file=sys.stderr)
    else:
        _say(args, text, obj)
    return EXIT_OK


def cmd_device_export(args) -> int:
    from .imagefile import export_raw
    with _pool(args, False) as pool:
        dev = pool.device(args.name)
        return _export(args, f"device {args.name}",
                       lambda target, **kw: export_raw(dev, target, **kw))


def _stream_summary(what: str, res: dict) -> str:
    kind = "incremental" if res.get("incremental") else "full"
    return (f"{what} ({kind} stream): {res['records']} record(s), "
            f"{format_exact(res['data_bytes'])} of data, {format_exact(res['zero_bytes'])} "
            f"of zeros, {format_exact(res['stream_bytes'])} of stream")


@contextmanager
def _stream_out(path: str | None) -> Iterator[Any]:
    """The file a stream goes to: ``path``, or standard output (not a terminal)."""
    if path is None or path == "-":
        if sys.stdout.isatty():
            raise UsageError("standard output is a terminal: redirect it to a file or a pipe, "
                             "or use -o FILE, to send a stream")
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with open(path, "wb") as f:
            yield f


def cmd_device_send(args) -> int:
    from .sendrecv import send
    if args.resume and args.base:
        raise UsageError("--resume continues the stream its token names: no --from with it")
    progress, close_bar = _progress_for(args, "send")
    try:
        with _stream_out(args.output) as out:
            # a read-only device is sent from a read-only open; a writable one
            # needs a snapshot, so a writable open
            with _pool(args, False) as pool:
                ro = pool.info(args.name).readonly
                if ro:
                    res = send(pool.device(args.name), out, args.base, resume=args.resume,
                               progress=progress or False)
            if not ro:
                with _pool(args, True) as pool:
                    res = send(pool.device(args.name), out, args.base, resume=args.resume,
                               progress=progress or False)
    finally:
        close_bar()
    text = _stream_summary(f"sent device {args.name}"
                           + (f" from {args.base}" if args.base else ""), res)
    print(json.dumps(res, sort_keys=True) if args.json else text, file=sys.stderr)
    return EXIT_OK


def cmd_device_receive(args) -> int:
    from .sendrecv import ReceiveInterrupted, abort_receive, receive, resume_token
    if args.show_token or args.abort:
        with _pool(args, args.abort) as pool:
            if args.abort:
                found = abort_receive(pool, args.name)
                _say(args, f"dropped the interrupted receive of {args.name}" if found else
                     f"no interrupted receive of {args.name} was kept",
                     {"name": args.name, "dropped": found})
                return EXIT_OK
            token = resume_token(pool, args.name)
        if token is None:
            raise CowblockError(f"no interrupted receive of {args.name} is kept")
        print(token)
        return EXIT_OK
    if args.input is None or args.input == "-":
        if sys.stdin.isatty():
            raise UsageError("standard input is a terminal: pipe a stream in, or use -i FILE")
        src, total = sys.stdin.buffer, 0
    else:
        src = open(args.input, "rb")
        total = os.fstat(src.fileno()).st_size
    progress, close_bar = _progress_for(args, "receive")
    try:
        with _pool(args, True) as pool:
            try:
                dev = receive(pool, args.name, src, args.base, resumable=args.resumable,
                              resume=args.resume, progress=progress or False, total=total)
            except ReceiveInterrupted as exc:
                close_bar()
                print(f"cowblock: error: {exc}", file=sys.stderr)
                print(exc.token)
                return EXIT_ERROR
            size = dev.size
    finally:
        close_bar()
        if src is not sys.stdin.buffer:
            src.close()
    _say(args, f"received device {args.name} ({format_exact(size)})",
         {"name": args.name, "size": size})
def cmd_device_map(args) -> int:
    from .mapping import map_device
    m = map_device(os.path.abspath(_pool_path(args)), args.name, readonly=args.readonly)
    if args.json:
        _emit_json({"name": args.name, "path": m["path"], "readonly": m["readonly"]})
    else:
        print(m["path"])
    return EXIT_OK


def cmd_device_unmap(args) -> int:
    from .mapping import unmap_device
    r = unmap_device(os.path.abspath(_pool_path(args)), args.target)
    _say(args, f"unmapped {r['name']} ({r['path']})", {"name": r["name"], "path": r["path"]})
    return EXIT_OK


def cmd_device_mapped(args) -> int:
    from .mapping import mapped_devices
    rows = [{"name": m["name"], "path": m["loop"], "readonly": m["readonly"], "file": m["file"]}
            for m in mapped_devices(os.path.abspath(_pool_path(args)))]
    return _listing(args, rows, ["NAME", "DEVICE", "MODE", "FILE"],
                    lambda r: (r["name"], r["path"], "ro" if r["readonly"] else "rw", r["file"]))


def cmd_device_mkfs(args) -> int:
    from .mapping import mkfs_device
    with _pool(args, True) as pool:
        res = mkfs_device(pool.device(args.name), args.type, label=args.label)
        pool.flush()
    _say(args, f"made an empty {args.type} file system on device {args.name} "
               f"({format_exact(res.copied)} of metadata written)",
         {"name": args.name, "type": args.type, "written": res.copied})
    return EXIT_OK


# --------------------------------------------------------------------------
# image


def cmd_image_ls(args) -> int:
    with _store(args, False) as store:
        rows = store.df()["images"]
    return _listing(
        args, rows, ["NAME", "TOP LAYER", "LAYERS", " VIRTUAL SIZE",
                     " DATA (SUM OF LAYER CHANGES)", "CREATED"],
        lambda r: (r["name"], r["top"][:12], r["layers"], _exact(r["size"]),
                   _exact(r["changed"]), _when(r["created"])))


def cmd_image_import(args) -> int:
    if args.format == "qcow2":
        return _import_qcow2(args)
    progress, close_bar = _progress_for(args, "import")
    with _store(args, True) as store:
        try:
            img = store.import_image(args.name, args.file, external=args.external,
                                     size=args.size, progress=progress)
        finally:
            close_bar()
        top = img.top
        obj = {"name": img.name, "layer": top.id, "size": img.size,
               "external": top.external}
        res = top.imported
        if res is not None:
            obj.update(_transfer_obj(res))
    if args.external:
        text = (f"created image {args.name} ({format_exact(obj['size'])}) on {args.file} "
                f"used in place (nothing copied)")
    else:
        text = (f"imported {args.file} as image {args.name}: copied {format_exact(res.copied)}, "
                f"skipped {format_exact(res.holes)} of holes and {format_exact(res.zeros)} "
                f"of zero blocks")
    _say(args, text, obj)
    return EXIT_OK


def _import_qcow2(args) -> int:
    if args.external or args.size is not None:
        raise UsageError("--external and --size are for raw files, not --format qcow2")
    with _store(args, True) as store:
        img = store.import_qcow2(args.name, args.file)
        obj = {"name": img.name, "format": "qcow2",
               "layers": [{"id": la.id, "changed": la.changed} for la in img.layers]}
    _say(args, f"imported the qcow2 chain of {args.file} as image {args.name}: "
               f"{len(obj['layers'])} layer(s)", obj)
    return EXIT_OK


def cmd_image_export(args) -> int:
    if args.format == "qcow2":
        return _export_qcow2(args)
    with _store(args, False) as store:
        return _export(args, f"image {args.name}", store.image(args.name).export)


def _export_qcow2(args) -> int:
    if args.file == "-":
        raise UsageError("a qcow2 chain is written into a directory, not to standard output")
    with _store(args, False) as store:
        res = store.image(args.name).export_qcow2(args.file, overwrite=args.force)
    obj = {"name": args.name, "directory": args.file, "format": "qcow2", **res}
    rows = ", ".join(f"{os.path.basename(e['file'])} ({format_size(e['file_bytes'])})"
                     for e in res["layers"])
    _say(args, f"exported image {args.name} to {args.file} as a qcow2 chain of "
               f"{len(res['layers'])} file(s): {rows}; top: {res['top']}", obj)
    return EXIT_OK


def cmd_stream_merge(args) -> int:
    from .stream import merge
    with open(args.first, "rb") as a, open(args.second, "rb") as b, \
            _stream_out(args.output) as out:
        st = merge(a, b, out)
    text = (f"merged {args.first} and {args.second}: {st.records} record(s), "
            f"{format_exact(st.data_bytes)} of data, {format_exact(st.zero_bytes)} of zeros")
    obj = {"records": st.records, "data_bytes": st.data_bytes, "zero_bytes": st.zero_bytes}
    print(json.dumps(obj, sort_keys=True) if args.json else text, file=sys.stderr)
    return EXIT_OK


def cmd_image_send(args) -> int:
    with _stream_out(args.output) as out, _store(args, False) as store:
        res = store.send_image(args.name, out, args.base)
    text = (f"sent image {args.name}" + (f" from {args.base}" if args.base else "")
            + f": {res['layers']} layer(s), {format_exact(res['data_bytes'])} of data, "
              f"{format_exact(res['stream_bytes'])} of stream")
    print(json.dumps(res, sort_keys=True) if args.json else text, file=sys.stderr)
    return EXIT_OK


def cmd_image_receive(args) -> int:
    if args.input is None or args.input == "-":
        if sys.stdin.isatty():
            raise UsageError("standard input is a terminal: pipe an image stream in, or use -i FILE")
        src = sys.stdin.buffer
    else:
        src = open(args.input, "rb")
    try:
        with _store(args, True) as store:
            img = store.receive_image(src, args.name)
            obj = {"name": img.name, "layers": [layer.id for layer in img.layers]}
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    _say(args, f"received image {obj['name']} ({len(obj['layers'])} layer(s))", obj)
    return EXIT_OK


def cmd_image_rm(args) -> int:
    removed: dict[str, list[str]] = {}
    with _store(args, True) as store:
        before = store.pool.used
        for name in args.names:
            removed[name] = store.remove_image(name)
        store.pool.flush()
        freed = before - store.pool.used
    _say(args, f"removed image(s) {', '.join(args.names)} "
               f"({sum(map(len, removed.values()))} layer(s)); {format_exact(freed)} given back",
         {"removed": removed, "freed": freed})
    return EXIT_OK


def cmd_image_history(args) -> int:
    with _store(args, False) as store:
        img = store.image(args.name)
        rows = []
        for layer in img.history():
            u = layer.usage()
            rows.append({"id": layer.id, "created": layer.created, "comment": layer.comment,
                         "external": layer.external, "changed": layer.changed,
                         "exclusive": u.size, "shared": u.shared, "mapped": u.mapped})
    return _listing(
        args, rows, ["LAYER", "CREATED", " CHANGED", " EXCLUSIVE", " SHARED", "COMMENT"],
        lambda r: (r["id"][:12], _when(r["created"]), _exact(r["changed"]),
                   _exact(r["exclusive"]), _exact(r["shared"]), r["comment"]))


# --------------------------------------------------------------------------
# container


def cmd_container_create(args) -> int:
    with _store(args, True) as store:
        c = store.create_container(args.name, args.image)
        obj = {"name": c.name, "id": c.id, "image": args.image, "device": c.device.name}
    _say(args, f"created container {args.name} from image {args.image} (device {obj['device']})", obj)
    return EXIT_OK


def cmd_container_ls(args) -> int:
    with _store(args, False) as store:
        rows = store.df()["containers"]
    return _listing(
        args, rows, ["NAME", "IMAGE", "DEVICE", " CHANGED", " EXCLUSIVE", " SHARED", "ATTACHED"],
        lambda r: (r["name"], r["image"], r["device"], _exact(r["changed"]),
                   _exact(r["exclusive"]), _exact(r["shared"]), ",".join(r["attached"]) or "-"))


def cmd_container_commit(args) -> int:
    with _store(args, True) as store:
        img = store.container(args.name).commit(args.image, comment=args.message or "")
        obj = {"container": args.name, "image": img.name, "layer": img.top.id}
    _say(args, f"committed container {args.name} as image {args.image} "
               f"(layer {obj['layer'][:12]})", obj)
    return EXIT_OK


def cmd_container_export(args) -> int:
    with _store(args, False) as store:
        return _export(args, f"container {args.name}", store.container(args.name).export)


def cmd_container_reset(args) -> int:
    with _store(args, True) as store:
        c = store.container(args.name)
        c.reset()
        obj = {"name": c.name, "image": c.image.name, "device": c.device.name}
    _say(args, f"reset container {args.name} to image {obj['image']}", obj)
    return EXIT_OK


def cmd_container_rm(args) -> int:
    with _store(args, True) as store:
        before = store.pool.used
        for name in args.names:
            store.remove_container(name)
        store.pool.flush()
        freed = before - store.pool.used
    _say(args, f"removed container(s) {', '.join(args.names)}; {format_exact(freed)} given back",
         {"removed": args.names, "freed": freed})
    return EXIT_OK


def _attach_target(store, args):
    if (args.volume is None) == (args.bind is None):
        raise UsageError("give exactly one of --volume NAME or --bind NAME")
    return store.volume(args.volume) if args.volume is not None else store.get_bind(args.bind)


def cmd_container_attach(args) -> int:
    with _store(args, True) as store:
        target = _attach_target(store, args)
        store.container(args.name).attach(target)
    _say(args, f"attached {target.kind} {target.name} to container {args.name}",
         {"container": args.name, "kind": target.kind, "name": target.name})
    return EXIT_OK


def cmd_container_detach(args) -> int:
    with _store(args, True) as store:
        target = _attach_target(store, args)
        store.container(args.name).detach(target)
    _say(args, f"detached {target.kind} {target.name} from container {args.name}",
         {"container": args.name, "kind": target.kind, "name": target.name})
    return EXIT_OK


# --------------------------------------------------------------------------
# volume and bind


def cmd_volume_create(args) -> int:
    with _store(args, True) as store:
        v = store.create_volume(args.name, args.size)
        obj = {"name": v.name, "size": v.size, "device": v.device.name}
    _say(args, f"created volume {args.name}: {format_exact(obj['size'])}", obj)
    return EXIT_OK


def cmd_volume_ls(args) -> int:
    with _store(args, False) as store:
        rows = store.df()["volumes"]
    return _listing(
        args, rows, ["NAME", "DEVICE", " SIZE", " MAPPED", " EXCLUSIVE", "ATTACHED TO"],
        lambda r: (r["name"], r["device"], _exact(r["size"]), _exact(r["mapped"]),
                   _exact(r["exclusive"]), ",".join(r["attached_to"]) or "-"))


def cmd_volume_rm(args) -> int:
    with _store(args, True) as store:
        before = store.pool.used
        for name in args.names:
            store.remove_volume(name)
        store.pool.flush()
        freed = before - store.pool.used
    _say(args, f"removed volume(s) {', '.join(args.names)}; {format_exact(freed)} given back",
         {"removed": args.names, "freed": freed})
    return EXIT_OK


def cmd_bind_create(args) -> int:
    with _store(args, True) as store:
        b = store.bind(args.name, args.file, readonly=args.readonly)
        obj = {"name": b.name, "path": b.path, "size": b.size, "readonly": b.readonly}
    _say(args, f"bound {obj['path']} as {args.name} ({format_exact(obj['size'])}, used in place)", obj)
    return EXIT_OK


def cmd_bind_ls(args) -> int:
    with _store(args, False) as store:
        rows = store.df()["binds"]
    return _listing(
        args, rows, ["NAME", "PATH", " SIZE", " ON DISK", "MODE", "ATTACHED TO"],
        lambda r: (r["name"], r["path"], _exact(r["size"]), _exact(r["on_disk"]),
                   "ro" if r["readonly"] else "rw", ",".join(r["attached_to"]) or "-"))


def cmd_bind_rm(args) -> int:
    with _store(args, True) as store:
        for name in args.names:
            store.remove_bind(name)
    _say(args, f"removed bind(s) {', '.join(args.names)} (files kept)", {"removed": args.names})
    return EXIT_OK


# --------------------------------------------------------------------------
# mounting volumes and containers; the containerd snapshotter


def _cmd_mount(args, kind: str) -> int:
    from .mapping.mount import device_of, mount_device
    pool_dir = os.path.abspath(_pool_path(args))
    r = mount_device(pool_dir, device_of(pool_dir, kind, args.name), args.dir,
                     readonly=args.readonly, mkfs_blank=(kind == "volume"))
    made = " (made an ext4 file system on it first)" if r["made_fs"] else ""
    _say(args, f"mounted {kind} {args.name} ({r['path']}, {r['type']}) on {r['directory']}{made}",
         {"name": args.name, **r})
    return EXIT_OK


def _cmd_umount(args, kind: str) -> int:
    from .mapping.mount import umount_dir
    r = umount_dir(os.path.abspath(_pool_path(args)), args.dir)
    _say(args, f"unmounted {r['directory']} and unmapped {r['device']} ({r['path']})", r)
    return EXIT_OK


def cmd_volume_mount(args) -> int:
    return _cmd_mount(args, "volume")


def cmd_volume_umount(args) -> int:
    return _cmd_umount(args, "volume")


def cmd_container_mount(args) -> int:
    return _cmd_mount(args, "container")


def cmd_container_umount(args) -> int:
    return _cmd_umount(args, "container")


def cmd_snapshotter_serve(args) -> int:
    import logging
    try:
        import grpc  # noqa: F401
        from .containerd._pb import snapshots_pb2  # noqa: F401
    except ImportError as exc:
        raise CowblockError(f"the snapshotter needs grpcio and protobuf "
                            f"(pip install 'cowblock[containerd]'): {exc}") from None
    from .containerd.server import serve
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format=f"%(asctime)s cowblock snapshotter[{os.getpid()}] %(message)s")
    return serve(os.path.abspath(_pool_path(args)), args.address, fs_type=args.fs,
                 size=args.size, pid_file=args.pid_file)


# --------------------------------------------------------------------------
# df


def cmd_df(args) -> int:
    with _store(args, False) as store:
        df = store.df()
    if args.json:
        _emit_json(df)
        return EXIT_OK
    print_df(df, verbose=args.verbose)
    return EXIT_OK


def print_df(df: dict, verbose: bool = False, out=None) -> None:
    """Print a :meth:`Store.df` report as ``docker system df`` does."""
    out = out or sys.stdout
    groups = [("Images", df["images"]), ("Layers", df["layers"]),
              ("Containers", df["containers"]), ("Volumes", df["volumes"]),
              ("Snapshots", df.get("snapshots", [])), ("Other devices", df["other"])]
    rows = []
    for label, items in groups:
        virtual = sum(i["size"] or 0 for i in items)
        excl = sum(i["exclusive"] for i in items) if label != "Images" else None
        rows.append((label, len(items), _exact(virtual), _exact(excl) if excl is not None else "-"))
    binds = df["binds"]
    rows.append(("Binds (files)", len(binds), _exact(sum(b["size"] or 0 for b in binds)),
                 f"{_exact(sum(b['on_disk'] or 0 for b in binds))} on disk"))
    print_table(["TYPE", " COUNT", " VIRTUAL SIZE", " EXCLUSIVE"], rows, out)
    p = df["pool"]
    print(file=out)
    print(f"pool {p['path']}: {_exact(p['used'])} of {_exact(p['size'])} used "
          f"(block size {format_size(p['block_size'])})", file=out)
    if "data_bytes_on_disk" in p:
        meta = p.get("meta_bytes_on_disk", p.get("meta_bytes"))
        print(f"data file on disk: {_exact(p['data_bytes_on_disk'])}; "
              f"metadata file on disk: {_exact(meta)}", file=out)
    if not verbose:
        return
    sections = [
        ("Images:", ["NAME", "LAYERS", " VIRTUAL SIZE", " DATA (SUM OF LAYER CHANGES)", "CONTAINERS"],
         [(i["name"], i["layers"], _exact(i["size"]), _exact(i["changed"]),
           ",".join(i["containers"]) or "-") for i in df["images"]]),
        ("Layers:", ["LAYER", "PARENT", "DEVICE", " CHANGED", " EXCLUSIVE", " SHARED", "COMMENT"],
         [(l["id"][:12], (l["parent"] or "-")[:12], l["device"], _exact(l["changed"]),
           _exact(l["exclusive"]), _exact(l["shared"]), l["comment"]) for l in df["layers"]]),
        ("Containers:", ["NAME", "IMAGE", "DEVICE", " CHANGED", " EXCLUSIVE", " SHARED", "ATTACHED"],
         [(c["name"], c["image"], c["device"], _exact(c["changed"]), _exact(c["exclusive"]),
           _exact(c["shared"]), ",".join(c["attached"]) or "-") for c in df["containers"]]),
        ("Volumes:", ["NAME", "DEVICE", " SIZE", " EXCLUSIVE", "ATTACHED TO"],
         [(v["name"], v["device"], _exact(v["size"]), _exact(v["exclusive"]),
           ",".join(v["attached_to"]) or "-") for v in df["volumes"]]),
        ("Binds:", ["NAME", "PATH", " SIZE", " ON DISK", "ATTACHED TO"],
         [(b["name"], b["path"], _exact(b["size"]), _exact(b["on_disk"]),
           ",".join(b["attached_to"]) or "-") for b in binds]),
        ("Snapshots (containerd's and other namespaces):",
         ["NAMESPACE", "KEY", "KIND", "DEVICE", " CHANGED", " EXCLUSIVE", " SHARED"],
         [(s["namespace"], s["key"], s["kind"], s["device"], _exact(s["changed"]),
           _exact(s["exclusive"]), _exact(s["shared"])) for s in df.get("snapshots", [])]),
        ("Other devices:", ["DEVICE", " SIZE", " MAPPED", " EXCLUSIVE", " SHARED"],
         [(o["device"], _exact(o["size"]), _exact(o["mapped"]), _exact(o["exclusive"]),
           _exact(o["shared"])) for o in df["other"]]),
    ]
    for title, headers, rows in sections:
        if not rows and title in ("Other devices:", "Snapshots (containerd's and other namespaces):"):
            continue
        print(file=out)
        print(title, file=out)
        print_table(headers, rows, out)


# --------------------------------------------------------------------------
# serve


def cmd_serve(args) -> int:
    import logging

    from . import Pool
    from .nbd import listen
    from .nbd import server as nbd

    logging.basicConfig(stream=sys.stderr, format="cowblock serve: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tcp:
        raise UsageError("TLS is for --tcp (the Unix socket is local)")
    if args.max_connections < 1:
        raise UsageError(f"--max-connections must be at least 1, not {args.max_connections}")
    tcp = listen.parse_tcp(args.tcp) if args.tcp else None
    tls = listen.tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.exit_with_parent:
        listen.exit_with_parent()
    path = _pool_path(args)
    unix = args.socket or os.path.join(path, nbd.DEFAULT_SOCKET)
    limits = nbd.Limits(max_connections=args.max_connections)
    with Pool.open(path, readonly=args.readonly) as pool:
        nbd.serve(pool, unix, tcp, readonly=args.readonly, limits=limits, tls=tls)
    return EXIT_OK


# --------------------------------------------------------------------------
# demo and bench


def cmd_demo(args) -> int:
    from . import demo
    return demo.run(args.dir, keep=args.keep)


def cmd_bench(args) -> int:
    return _bench(args.rest)


def cmd_pool_unlock(args) -> int:
    from . import Pool
    path = _pool_path(args, args.path)
    if not args.force:
        raise UsageError("unlock breaks another process's writer lock and fences that "
                         "writer (its pool fails): pass --force if it is gone or must stop")
    holder = Pool.unlock(path)
    _say(args, f"broke the writer lock of {path}, held by {holder}" if holder
         else f"{path}: no writer lock was held", {"path": path, "holder": holder})
    return EXIT_OK


def _version() -> str:
    from . import __version__, backends
    from ._lowlevel import BUILD_ID
    return f"cowblock {__version__} ({BUILD_ID}; IO backends: {' '.join(backends())})"


def _bench(argv: list[str]) -> int:
    try:
        from . import benchmark
    except ImportError as exc:
        if exc.name in ("cowblock.benchmark", f"{__package__}.benchmark"):
            print("cowblock: error: the benchmark module (cowblock/benchmark/) "
                  "is not installed", file=sys.stderr)
            return EXIT_USAGE
        raise
    rc = benchmark.main(argv)
    return int(rc or 0)


# --------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``cowblock`` command."""
    # Global options are accepted before the noun and after the verb; the
    # leaf copies use SUPPRESS so they do not overwrite the top-level ones.
    leaf = Parser(add_help=False)
    leaf.add_argument("--pool", metavar="PATH", default=argparse.SUPPRESS,
                      help="the pool directory or rados:// URL (default: $COWBLOCK_POOL)")
    leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print JSON (sizes as integer bytes)")

    parser = Parser(
        prog="cowblock", description="Copy-on-write thin-provisioned block devices.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", metavar="PATH", default=None,
                        help="the pool directory or rados:// URL (default: $COWBLOCK_POOL)")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print JSON (sizes as integer bytes)")
    parser.add_argument("--version", action="version", version=_version(),
                        help="show the version, the core's build and its IO backends")
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)

    def noun(name: str, help: str):
        p = nouns.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(group, name: str, func, help: str, **kw):
        p = group.add_parser(name, help=help, description=help, parents=[leaf], **kw)
        p.set_defaults(func=func)
        return p

    def progress_options(p):
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--progress", action="store_true",
                       help="progress bar on stderr even when it is not a terminal")

    def export_verb(group, func, what: str):
        p = verb(group, "export", func,
                 f"write {what} to a sparse raw file, a block device or - (stdout)")
        p.add_argument("name")
        p.add_argument("file", metavar="TARGET",
                       help="a new file; an existing file or block device with --force; "
                            "- for standard output")
        p.add_argument("--force", action="store_true",
                       help="write over an existing file or block device")
        progress_options(p)
        return p

    device_size = _device_sizes()

    g = noun("pool", "create and inspect pools")
    p = verb(g, "create", cmd_pool_create, "create a pool in a new directory")
    p.add_argument("path", nargs="?", metavar="PATH")
    from ._lowlevel import MAX_BLOCK_SIZE as hi, MIN_BLOCK_SIZE as lo
    p.add_argument("--size", default="10G",
                   help="data capacity (default 10G; the data file is sparse; at most "
                        "2**36 blocks)")
    p.add_argument("--block-size", type=_sizes("block size", lo, hi, power_of_two=True),
                   default=64 * 1024,
                   help="block size, a power of two from 4K to 1M (default 64K)")
    p.add_argument("--checksums", action="store_true",
                   help="keep a CRC-32C of every data sub-block, verified on every read")
    p = verb(g, "scrub", cmd_pool_scrub,
             "read back and verify every block in use (exit 0 intact, 2 damaged)")
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--rate", type=_sizes("rate", 1, 2**64 - 1), metavar="SIZE",
                   help="read at most SIZE bytes per second (e.g. 100M)")
    progress_options(p)
    p = verb(g, "check", cmd_pool_check,
             "check consistency (exit 0 ok, 2 corrupted, 3 leaks)")
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--repair", action="store_true",
                   help="give leaked space back and rewrite a damaged superblock slot from "
                        "the current one (opens the pool for writing); corruption is only "
                        "reported")
    p = verb(g, "unlock", cmd_pool_unlock,
             "break a RADOS pool's writer lock (its holder is blocklisted first)")
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--force", action="store_true",
                   help="required: the holder's pool fails and its unflushed writes are lost")
    for name, func, help in (("info", cmd_pool_info, "show size, use and on-disk footprint"),
                             ("stats", cmd_pool_stats, "show the pool's counters"),
                             ("dump", cmd_pool_dump, "print the committed metadata (like thin_dump)")):
        verb(g, name, func, help).add_argument("path", nargs="?", metavar="PATH")

    g = noun("device", "thin devices and snapshots")
    verb(g, "ls", cmd_device_ls, "list devices with their space")
    p = verb(g, "create", cmd_device_create, "create a thin device (reads as zeros)")
    p.add_argument("name")
    p.add_argument("size", type=device_size, nargs="?",
                   help="virtual size (default with --external: the file's size)")
    p.add_argument("--external", metavar="FILE",
                   help="read unwritten blocks from this raw file, used in place")
    p = verb(g, "snapshot", cmd_device_snapshot, "snapshot a device (O(1), allocates nothing)")
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--readonly", action="store_true", help="make a read-only snapshot")
    p = verb(g, "rm", cmd_device_rm, "delete devices")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = verb(g, "info", cmd_device_info, "show one device")
    p.add_argument("name")
    p = verb(g, "import", cmd_device_import,
             "create a device from a raw image file or a block device (data only)")
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--size", type=device_size, help="device size (default: the file's)")
    progress_options(p)
    export_verb(g, cmd_device_export, "a device")
    p = verb(g, "send", cmd_device_send,
             "write a device as a stream (whole, or what changed since --from BASE)")
    p.add_argument("name")
    p.add_argument("--from", dest="base", metavar="BASE",
                   help="send only what differs from BASE, a read-only device the "
                        "receiver has received before")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    p.add_argument("--resume", metavar="TOKEN",
                   help="write the rest of the stream an interrupted receive stopped in")
    progress_options(p)
    p = verb(g, "receive", cmd_device_receive,
             "make a device from a stream (verified in full before it appears)")
    p.add_argument("name")
    p.add_argument("--from", dest="base", metavar="BASE",
                   help="the base an incremental stream is applied on (default: the device "
                        "received from the stream's base)")
    p.add_argument("-i", "--input", metavar="FILE", help="read from FILE (default: stdin)")
    p.add_argument("--resumable", action="store_true",
                   help="if interrupted, keep what was received and print a resume token")
    p.add_argument("--resume", metavar="TOKEN", help="continue an interrupted receive")
    p.add_argument("--show-token", action="store_true",
                   help="print the resume token of an interrupted receive of NAME")
    p.add_argument("--abort", action="store_true",
                   help="drop what an interrupted receive of NAME kept")
    progress_options(p)

    p = verb(g, "map", cmd_device_map,
             "map a device as a kernel block device (prints /dev/loopN; root)")
    p.add_argument("name")
    p.add_argument("--readonly", action="store_true", help="map it read-only")
    p = verb(g, "unmap", cmd_device_unmap, "unmap a mapped device")
    p.add_argument("target", metavar="NAME|PATH", help="the device's name or its /dev/loopN")
    verb(g, "mapped", cmd_device_mapped, "list mapped devices")
    p = verb(g, "mkfs", cmd_device_mkfs, "make an empty file system on a device")
    p.add_argument("name")
    p.add_argument("--type", choices=("ext4", "xfs"), default="ext4",
                   help="file system type (default ext4)")
    p.add_argument("--label", help="file system label")

    g = noun("image", "images: named chains of read-only layers")
    verb(g, "ls", cmd_image_ls, "list images")
    p = verb(g, "import", cmd_image_import,
             "create an image from a raw image file or a block device")
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--external", action="store_true",
                   help="use the file in place as the read-only base (no copy)")
    p.add_argument("--size", type=_device_sizes(),
                   help="image size (default: the file's)")
    p.add_argument("--format", choices=("raw", "qcow2"), default="raw",
                   help="raw (default): a raw file or block device; qcow2: the top file of "
                        "a qcow2 backing chain, one layer per file (needs qemu-img)")
    progress_options(p)
    p = export_verb(g, cmd_image_export, "an image's content")
    p.add_argument("--format", choices=("raw", "qcow2"), default="raw",
                   help="raw (default): the content as one raw file; qcow2: TARGET is a "
                        "directory that gets one qcow2 file per layer, each backed by the "
                        "one below (needs qemu-img)")
    p = verb(g, "send", cmd_image_send,
             "write an image's layers as a stream (those of --from IMAGE left out)")
    p.add_argument("name")
    p.add_argument("--from", dest="base", metavar="IMAGE",
                   help="an image the receiver has: its layers are not sent")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    p = verb(g, "receive", cmd_image_receive,
             "make an image from an image stream (layers it has already are kept)")
    p.add_argument("name", nargs="?", help="the image's name (default: as sent)")
    p.add_argument("-i", "--input", metavar="FILE", help="read from FILE (default: stdin)")
    p = verb(g, "rm", cmd_image_rm, "remove images and the layers nothing else uses")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = verb(g, "history", cmd_image_history, "show an image's layers, top first")
    p.add_argument("name")

    g = noun("stream", "send/receive streams")
    p = verb(g, "merge", cmd_stream_merge,
             "merge two consecutive streams (the second relative to the first's result) into one")
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")

    g = noun("container", "containers: writable layers on images")
    p = verb(g, "create", cmd_container_create, "create a container from an image")
    p.add_argument("name")
    p.add_argument("image")
    verb(g, "ls", cmd_container_ls, "list containers")
    p = verb(g, "commit", cmd_container_commit, "commit a container into a new image")
    p.add_argument("name")
    p.add_argument("image", help="name of the new image")
    p.add_argument("-m", "--message", help="comment of the new layer")
    export_verb(g, cmd_container_export, "a container's content")
    p = verb(g, "reset", cmd_container_reset, "drop a container's changes")
    p.add_argument("name")
    p = verb(g, "rm", cmd_container_rm, "remove containers, giving their space back")
    p.add_argument("names", nargs="+", metavar="NAME")
    for name, func, help in (("attach", cmd_container_attach, "attach a volume or a bind"),
                             ("detach", cmd_container_detach, "detach a volume or a bind")):
        p = verb(g, name, func, help)
        p.add_argument("name")
        p.add_argument("--volume", metavar="NAME")
        p.add_argument("--bind", metavar="NAME")

    p = verb(g, "mount", cmd_container_mount,
             "map a container's device and mount its file system on DIR (root)")
    p.add_argument("name")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--readonly", action="store_true", help="mount it read-only")
    verb(g, "umount", cmd_container_umount, "unmount DIR and unmap its device").add_argument(
        "dir", metavar="DIR")

    g = noun("volume", "volumes: devices outside every chain")
    p = verb(g, "create", cmd_volume_create, "create a volume")
    p.add_argument("name")
    p.add_argument("size", type=_device_sizes())
    verb(g, "ls", cmd_volume_ls, "list volumes")
    p = verb(g, "rm", cmd_volume_rm, "remove volumes")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = verb(g, "mount", cmd_volume_mount,
             "map a volume and mount it on DIR (an ext4 is made on first use; root)")
    p.add_argument("name")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--readonly", action="store_true", help="mount it read-only")
    verb(g, "umount", cmd_volume_umount, "unmount DIR and unmap its device").add_argument(
        "dir", metavar="DIR")

    g = noun("snapshotter", "containerd's snapshotter (pip install 'cowblock[containerd]')")
    p = verb(g, "serve", cmd_snapshotter_serve,
             "serve containerd's snapshots API on a Unix socket until SIGTERM")
    p.add_argument("--address", required=True, metavar="SOCKET",
                   help="the socket containerd's [proxy_plugins] entry names")
    p.add_argument("--fs", choices=("ext4", "xfs"), default="ext4",
                   help="file system of the snapshots (default ext4)")
    p.add_argument("--size", type=_device_sizes(), default=10 * 2**30,
                   help="size of every snapshot's file system (default 10G; thin)")
    p.add_argument("--pid-file", metavar="FILE", help="write the server's pid here")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="info", help="log level on stderr (default info)")

    g = noun("bind", "binds: raw image files attached as they are")
    p = verb(g, "create", cmd_bind_create, "bind an existing raw image file")
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--readonly", action="store_true")
    verb(g, "ls", cmd_bind_ls, "list binds")
    p = verb(g, "rm", cmd_bind_rm, "forget binds (the files are kept)")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = nouns.add_parser("df", help="show space used by images, containers and volumes",
                         parents=[leaf])
    p.add_argument("-v", "--verbose", action="store_true", help="one line per object")
    p.set_defaults(func=cmd_df)

    p = nouns.add_parser("serve", help="serve every device over NBD (foreground)",
                         description="Serve every device of the pool over NBD, each as an "
                         "export under its own name, until SIGTERM or SIGINT; ready once "
                         "the socket exists.", parents=[leaf])
    p.add_argument("--socket", metavar="PATH",
                   help="Unix socket to listen on (default: nbd.sock in the pool directory)")
    p.add_argument("--tcp", metavar="HOST:PORT",
                   help="also listen on TCP, e.g. 127.0.0.1:10809 (port 0: any free port)")
    p.add_argument("--readonly", action="store_true",
                   help="open the pool read-only and export every device read-only")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (with --tcp; TLS "
                   "becomes required on TCP)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    p.add_argument("--max-connections", type=int, default=512, metavar="N",
                   help="clients served at once (default 512); more are told to retry")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop (as on SIGTERM) when the parent process exits")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    p.set_defaults(func=cmd_serve)

    p = nouns.add_parser("demo", help="run the guided demo in a temporary (or given) directory",
                         parents=[leaf])
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="directory to work in (kept); default: a temporary one, removed")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.set_defaults(func=cmd_demo)

    p = nouns.add_parser("bench", help="run the benchmarks (cowblock bench --help)",
                         add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cowblock`` command with ``argv`` (default ``sys.argv[1:]``);
    return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    return _run_command(parser, args, argv)


def _run_command(parser, args, argv: list[str] | None) -> int:
    """Run a parsed command line, turning errors into messages and exit
    codes.  ``argv`` is what to send to the server holding the pool when the
    pool is busy (None: never forward)."""
    try:
        return args.func(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"cowblock: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BusyError as exc:
        if argv is not None:
            code = _through_server(args, argv)
            if code is not None:
                return code
        print(f"cowblock: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CowblockError as exc:
        print(f"cowblock: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `cowblock device ls | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"cowblock: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cowblock: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------
# Commands run by a server that holds the pool (cowblock.daemon)

# Command lines a server does not run for a client: making a pool, the
# mapping requests (the map daemon has requests of its own for them: run
# from inside it they would wait on themselves), the demo and benchmarks.
_NOT_IN_SERVER = {("pool", "create"), ("stream", "merge"),
                  ("device", "map"), ("device", "unmap"),
                  ("device", "mapped"), ("demo", None), ("bench", None),
                  ("volume", "mount"), ("volume", "umount"), ("container", "mount"),
                  ("container", "umount"), ("snapshotter", "serve")}


_STREAM_COMMANDS = {("device", "send"), ("device", "receive"), ("image", "send"),
                    ("image", "receive")}


def _through_server(args, argv: list[str]) -> int | None:
    """Send the command to the server holding the pool; None when none answers."""
    from .daemon import client
    if (args.noun, getattr(args, "verb", None)) in _NOT_IN_SERVER:
        return None
    try:
        path = _pool_path(args, getattr(args, "path", None))
    except UsageError:
        return None
    return client.forward(os.path.abspath(path), argv, pool_arg=path)


def run_held(argv: Sequence[str], pool, *, pool_arg: str | None = None, refuse=None,
             server: str = "server") -> int:
    """Run a ``cowblock`` command line on ``pool``, which this process holds
    open (the control socket's ``run``); output goes to ``sys.stdout`` and
    ``sys.stderr``, the exit code is returned.  ``pool_arg`` is the pool as
    the client named it (for the messages); ``refuse(args)`` may return a
    reason not to run the command."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    key = (args.noun, getattr(args, "verb", None))
    why = None
    if key in _NOT_IN_SERVER:
        why = f"'{' '.join(k for k in key if k)}' is not run through the {server} server"
    elif getattr(args, "repair", False):
        why = f"the pool cannot be repaired while the {server} server holds it"
    elif getattr(args, "file", None) == "-":
        why = (f"exports to standard output are not run through the {server} server: "
               f"export to a file")
    elif key in _STREAM_COMMANDS and not (getattr(args, "show_token", False)
                                          or getattr(args, "abort", False)) and (
            getattr(args, "output", 0) in (None, "-") or getattr(args, "input", 0) in (None, "-")):
        why = (f"streams on standard input or output are not run through the {server} "
               f"server: use -o FILE or -i FILE")
    elif refuse is not None:
        why = refuse(args)
    if why:
        print(f"cowblock: error: {why}", file=sys.stderr)
        return EXIT_ERROR
    if not args.pool and getattr(args, "path", None) is None:
        args.pool = pool_arg or str(pool.path)
    args.held_pool = pool
    return _run_command(parser, args, None)
