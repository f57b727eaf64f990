/*
 * blockio.h - the IO backend under the pool: positioned reads and writes,
 * durability, and giving space back.  The mapping code sees only this
 * vtable, so another backend (an object store, a fault-injecting test
 * backend) plugs in without touching it.
 *
 * Every call returns 0 or a negative code (-errno, or CB_ENOSPC when the
 * file system is full).  pread zero-fills whatever lies past the end of the
 * file, so a short file reads like a sparse one.
 */
#ifndef CB_BLOCKIO_H
#define CB_BLOCKIO_H
#include <stddef.h>
#include <stdint.h>

typedef struct cb_io cb_io;

/* One piece of a vectored read: len bytes at off into buf. */
struct cb_io_vec {
    void *buf;
    size_t len;
    uint64_t off;
};

struct cb_io_ops {
    int (*pread)(cb_io *io, void *buf, size_t len, uint64_t off);
    int (*pwrite)(cb_io *io, const void *buf, size_t len, uint64_t off);
    int (*sync)(cb_io *io);                         /* fdatasync */
    int (*punch)(cb_io *io, uint64_t off, uint64_t len);
    int (*size)(cb_io *io, uint64_t *out);          /* bytes the file spans */
    int (*truncate)(cb_io *io, uint64_t size);
    /* Next byte >= off that may hold data (SEEK_DATA); *out = UINT64_MAX
     * when none.  Backends without the notion report every byte as data. */
    int (*next_data)(cb_io *io, uint64_t off, uint64_t *out, uint64_t *hole);
    void (*close)(cb_io *io);
    /* Optional (NULL: the backend has none, and the pool flocks the file
     * under cb_file_fd instead).  Take the store's writer lock (exclusive),
     * or what a reader needs (nothing, for RADOS); CB_EBUSY, with the
     * holder named in cb_corrupt_detail, when another writer holds it.
     * Released by close. */
    int (*lock)(cb_io *io, int exclusive);
    /* Optional, all three or none (NULL: readers cannot share the store
     * with a writer, as the file backend's flock ensures).  The reader
     * table of a store that readers on other hosts share with a writer:
     *   pin         register this (read-only) opener as a reader of
     *               generation gen, or move its registration to gen; held
     *               under a lease the backend renews.  With forget, also
     *               drops what the opener cached of the store, so that the
     *               next reads see the store as it is now.
     *   pin_valid   0 while the registration's lease holds by this host's
     *               clock (with a margin), CB_ESTALE once it may have
     *               lapsed: from then on a writer may reuse what the
     *               pinned generation reaches.  Sticky until the next pin.
     *   oldest_pin  the oldest generation a live reader has pinned, or
     *               UINT64_MAX when no reader is registered. */
    int (*pin)(cb_io *io, uint64_t gen, int forget);
    int (*pin_valid)(cb_io *io);
    int (*oldest_pin)(cb_io *io, uint64_t *gen);
    /* Optional, all three or none (NULL: the store keeps no documents; a
     * pool in a directory keeps its documents as files beside it, written by
     * the binding).  Small named documents (the snapshotter's and the Docker
     * model's JSON, cowblock.h "Documents") kept in the store itself, so
     * that every host sharing it sees them.  doc_put replaces one whole
     * document in one atomic op, fenced like the superblock (CB_EFENCED,
     * sticky, once another writer took over) and ordered after every write
     * queued before it; *gen gets the document's new generation.  doc_get
     * sets *gen to the document's generation (0: no such document) and, when
     * it differs from known, *data (malloc'd; free()) and *len to its
     * bytes, read in one op with the generation; *data stays NULL
     * otherwise.  doc_list gives the names, each NUL-terminated, back to
     * back in *names (malloc'd, NULL when none) and their bytes in *len. */
    int (*doc_get)(cb_io *io, const char *name, uint64_t known, char **data, size_t *len,
                   uint64_t *gen);
    int (*doc_put)(cb_io *io, const char *name, const void *data, size_t len, uint64_t *gen);
    int (*doc_list)(cb_io *io, char **names, size_t *len);
    /* Optional (NULL: one pread per piece, in order).  The n pieces of v
     * (not overlapping in memory), each read as pread reads it; once it
     * returns, nothing is still being read into any of the buffers.  A
     * backend with a high latency per request (RADOS) keeps the pieces in
     * flight together.  0, or an error of some piece (the buffers then hold
     * nothing to rely on). */
    int (*preadv)(cb_io *io, const struct cb_io_vec *v, size_t n);
};

struct cb_io {
    const struct cb_io_ops *ops;
};

#define CB_IO_CREATE   1u  /* create; fail if it exists */
#define CB_IO_READONLY 2u
#define CB_IO_DIRECT   4u  /* O_DIRECT; unaligned requests go through a bounce buffer */
#define CB_IO_MMAP     8u  /* serve preads from a read-only shared mapping (below) */
#define CB_IO_FENCED  16u  /* writes of [0, CB_IO_HEAD_BYTES) fail with CB_EFENCED once
                            * another opener has written there (backends that can
                            * share a store between hosts; the file backend relies on
                            * its flock instead) */
#define CB_IO_HEAD_BYTES 8192u /* the metadata's two superblock slots */

/*
 * CB_IO_MMAP (opt-in, never together with CB_IO_DIRECT, which wins): the
 * file is mapped PROT_READ, MAP_SHARED over the size it has at open (and
 * again after each truncate), and a pread that lies wholly inside the
 * mapping is a memcpy from it instead of a system call; any other pread
 * (past the mapping, or when the mapping could not be made: an empty file,
 * a block device, no address space) is a plain pread.  Writes, punches and
 * syncs stay system calls: MAP_SHARED shares the page cache with pwrite, so
 * the mapping sees every write at once, and a punched range reads as zeros.
 *
 * Why opt-in (like SQLite's mmap_size): a read fault the kernel cannot
 * serve -- an IO error on the disk, or a page past the end of a file that
 * someone shrank -- arrives as SIGBUS, which kills the process, where pread
 * would return -EIO.  So the file must never shrink while it is mapped:
 * truncate drops the mapping before it changes the size and maps the new
 * size after (it must not run concurrently with reads; the pool truncates
 * its data file only while it creates it).  The data file of a pool is never
 * truncated after that, nor grown: it is made nblocks * block_size long at
 * create, so mapping its whole (sparse) size at open covers every block.
 */

/* Open a plain file as an IO backend (CB_IO_* flags). */
int cb_file_open(const char *path, unsigned flags, cb_io **out);
/* The file descriptor under a file backend, for locking; -1 for others. */
int cb_file_fd(cb_io *io);

static inline int cb_io_pread(cb_io *io, void *b, size_t n, uint64_t o) { return io->ops->pread(io, b, n, o); }
static inline int cb_io_preadv(cb_io *io, const struct cb_io_vec *v, size_t n)
{
    if (io->ops->preadv)
        return io->ops->preadv(io, v, n);
    for (size_t i = 0; i < n; i++) {
        int rc = io->ops->pread(io, v[i].buf, v[i].len, v[i].off);
        if (rc)
            return rc;
    }
    return 0;
}
static inline int cb_io_pwrite(cb_io *io, const void *b, size_t n, uint64_t o) { return io->ops->pwrite(io, b, n, o); }
static inline int cb_io_sync(cb_io *io) { return io->ops->sync(io); }
static inline int cb_io_punch(cb_io *io, uint64_t o, uint64_t n) { return io->ops->punch(io, o, n); }

#endif
