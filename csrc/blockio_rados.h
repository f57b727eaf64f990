/*
 * blockio_rados.h - the Ceph RADOS IO backend: a pool's two stores ("meta"
 * and "data") as striped RADOS objects, behind the same cb_io vtable as the
 * file backend.  Compiled only where librados is present (CB_HAVE_RADOS,
 * set by csrc/build_ffi.py); backend.c dispatches to it by URL.
 *
 * Location:  rados://POOL/NAME[?KEY=VALUE&...]
 *   POOL   the RADOS pool
 *   NAME   the cowblock pool's name in it: 1..96 of [A-Za-z0-9._-]
 *   conf=PATH          ceph.conf to read (default: librados' search, and
 *                      $CEPH_CONF)
 *   id=CLIENT          client id, as in client.CLIENT (default: admin)
 *   object_size=BYTES  stripe object size, a power of two from 64 KiB to
 *                      32 MiB (default 4 MiB); fixed at create (the value
 *                      at open is ignored: the store records its own)
 *   timeout=SECONDS    OSD and monitor op timeout, 1..3600 (default 30):
 *                      an op a dead cluster cannot serve fails with
 *                      -ETIMEDOUT instead of waiting for ever
 *   lease=SECONDS      how long the writer's lock lasts unless renewed, 2..3600
 *                      or 0 for no lease (default 30).  A thread renews it
 *                      every lease / 3 s; a writer that cannot renew for a
 *                      whole lease is fenced (its next commit fails).  A
 *                      writer that finds a lapsed lock blocklists its old
 *                      holder before it takes the pool over.
 * Values cannot contain '&'.
 *
 * Objects of store S ("meta" or "data") of pool NAME:
 *   NAME.S              the head: xattrs cb.osize (object size), cb.head
 *                       (bytes of the store kept in the head itself),
 *                       cb.size (bytes the store spans), cb.seq (fence
 *                       sequence, below); for the meta store also the first
 *                       CB_IO_HEAD_BYTES of the store (the two superblock
 *                       slots) and the pool's writer lock; and in its omap
 *                       the pool's documents (cowblock.h "Documents"):
 *                       cb.doc.DOC and cb.gen.DOC, written under the fence
 *                       (the last section of blockio_rados.c says why there)
 *   NAME.S.%016x        bytes [i * osize, (i + 1) * osize) of the store;
 *                       absent = zeros (reads zero-fill, punch removes)
 *
 * Writes outside the head are rados_aio_write with up to RIO_MAX_OPS (and
 * RIO_MAX_BYTES) in flight; pwrite returns once the op is queued, and an
 * error is reported by the next sync, like a write into the page cache and
 * fdatasync.  A sync waits until every op in flight has completed (RADOS
 * acknowledges a write once it is durable on every replica) and persists
 * a grown size.  RADOS orders the ops of one client on one object, so a
 * read sees every write queued before it.
 *
 * Reads (pread, and preadv for the core's batches of runs) are cut at
 * object ends into rados_aio_read ops of at most RIO_READ_CHUNK, up to
 * RIO_MAX_READS in flight per call; the call returns once all of them have
 * completed (on an error too), so a read spanning objects is whole when
 * the caller sees it.  The head is read synchronously.  A fenced (meta)
 * store's objects are read whole, once each, into copies that serve later
 * reads: by a read-only opener while it is open, and by the writer from
 * taking the lock until its first write (so its open loads the metadata an
 * object at a time, not a round trip per page).
 *
 * Fencing (CB_IO_FENCED, the meta store): every change of the head --
 * a superblock write, a new size -- is one RADOS op that asserts cb.seq is
 * the value this opener last saw (cmpxattr) and bumps it.  A writer whose
 * lock was broken and a newer writer committed therefore fails its next
 * commit with CB_EFENCED and can never overwrite a newer superblock; a
 * client blocklisted by `cowblock pool unlock --force` gets -ESHUTDOWN on
 * every op, reported as CB_EFENCED too.  Once fenced, a store refuses every
 * later write (sticky).
 *
 * Thread safety: as the file backend's (preads from many threads, writes
 * under the pool's exclusive lock); the in-flight accounting has its own
 * mutex.  Clients: the two stores of one open pool share one librados
 * client (so blocklisting the lock holder fences both); each open of a pool
 * has its own (so a reader and a writer in one process are fenced apart).
 */
#ifndef CB_BLOCKIO_RADOS_H
#define CB_BLOCKIO_RADOS_H
#include <stddef.h>

#include "blockio.h"

/* Open store `store` ("meta" or "data") of the pool at url (CB_IO_* flags:
 * CREATE makes it and fails with -EEXIST if it exists; READONLY; FENCED).
 * With peer (a store of this backend), it shares peer's client; without,
 * it connects a client of its own.  -ENOENT if it does not exist,
 * CB_EINVAL for a malformed URL (the detail says what: cb_corrupt_detail). */
int cb_rados_open(const char *url, const char *store, unsigned flags, cb_io *peer,
                  cb_io **out);
/* Remove every object of the store (a failed create undone). */
int cb_rados_remove(const char *url, const char *store);
/* Break the pool's writer lock: blocklist the holder's client first (its
 * later writes fail), then release its lock.  holder names whom (or "" if
 * nobody held it).  Needs a client allowed to blocklist (mon caps). */
int cb_rados_break_lock(const char *url, char *holder, size_t len);

#endif
