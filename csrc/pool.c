/*
 * pool.c - the public API: pool lifecycle, the device table, handles,
 * locking, the pool's state, and the transaction's owner.  Each entry
 * point validates its arguments, takes the pool lock (pool_enter), checks
 * the state and calls the layers below (thin, txn, check, dump, scrub),
 * which never call back up: where one needs a commit it says so
 * (CB_THIN_COMMIT) and the commit is made here (pool_commit).
 *
 * The stack, each layer calling only the ones below it:
 *
 *                  cowblock.h  (public API)
 *                       |
 *                     pool          lifecycle, lock, state, device table, handles
 *          +-------+----+----+--------+
 *        check   dump      scrub      |
 *          |       |         |        |
 *          |       |        thin      |     device IO, copy-up, walks
 *          |       |         |       txn    commit, load, format
 *          +-------+----+----+--------+
 *                     store         the in-memory state the layers share
 *       +---------+-------+---------+---------+
 *    mapping  spacemap   csum    datafile    meta    (trees, counts, checksums,
 *       |         |       |         |         |       punch + sync, format)
 *       +---------+-------+---------+---------+
 *              blockio  blockio_rados   file backend (fault-injecting in tests) |
 *                                   RADOS backend; backend.c picks one by the
 *                                   pool's location when pool.c opens its stores
 *
 * States of a pool (p->failed, p->shut; read-only is fixed at open):
 *
 *   create / open ----> OPEN ---- a commit or a sync fails, or a delete ---> FAILED
 *   (under the lock,     |  ^     finds the counts disagreeing with the        |
 *    before anyone       |  |     trees: pool_fail(rc), once, sticky           |
 *    sees the pool)      |  +-- every call: pool_enter .. pool_leave           |
 *                        |                                                     |
 *                      close: shut = 1 ----------> CLOSING <------------------ close
 *                                                     |  waits for the lock: the calls
 *                                                     |  inside leave; trim kept blocks and
 *                                                     |  commit CB_TXN_CLEAN (not if FAILED
 *                                                     v  or read-only); the store is freed
 *                                                  CLOSED --(last reference dropped)--> freed
 *
 *   OPEN      every call works (a read-only pool refuses mutations with
 *             CB_EROFS and never commits).
 *   FAILED    every call but close returns CB_EFAILED: no write goes on
 *             over a half-done transaction.
 *   CLOSING,  every call returns CB_ECLOSED at once, before and after
 *   CLOSED    waiting for the lock, touching nothing else; the struct, its
 *             lock and path stay until the last reference goes (the open's,
 *             cb_pool_retain's, one per cb_dev: cowblock.h, "Lifetimes").
 * A commit is made with an explicit mode (txn.h): CB_TXN_FLUSH for
 * flush and the bounded-transaction and out-of-space commits, CB_TXN_IN_USE
 * once at open (so that a crash from then on reads as unclean),
 * CB_TXN_CLEAN by close.
 *
 * A pool directory holds:
 *   meta   the metadata file (see meta.h)
 *   data   the sparse data file, nblocks * block_size bytes long
 * The metadata file carries an flock: exclusive for a writer, shared for
 * read-only openers, so two processes never write one pool.  A pool at a
 * URL (backend.h) keeps the two as that backend's stores, locked by the
 * backend (for RADOS: a RADOS lock, and fenced superblock writes).
 */
#include "backend.h"
#include "pool.h"
#include "check.h"
#include "dump.h"
#include "scrub.h"
#include "thin.h"
#include "txn.h"

#include <assert.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The build passes the hash of the sources (csrc/build_ffi.py); builds that
 * do not (the fuzz target) say so. */
#ifndef CB_BUILD_ID
#define CB_BUILD_ID "cowblock-core unhashed"
#endif

const char *cb_build_id(void)
{
    return CB_BUILD_ID;
}

const char *cb_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case CB_EINVAL: return "invalid argument";
    case CB_ENOENT: return "no such device";
    case CB_EEXIST: return "a device of that name exists";
    case CB_EROFS: return "read-only";
    case CB_ENOSPC: return "pool is full";
    case CB_ECORRUPT: return "metadata is corrupt";
    case CB_EFAILED: return "pool failed after an IO error; only close works";
    case CB_EBUSY: return "pool is open in another process";
    case CB_ETOOMANY: return "too many devices or external origins";
    case CB_EVERSION: return "unsupported on-disk format version";
    case CB_ENOMEM: return "out of memory";
    case CB_EEXTERNAL: return "external origin file is missing or unreadable";
    case CB_ECHECKSUM: return "data failed its checksum";
    case CB_ECLOSED: return "pool is closed";
    case CB_EFENCED: return "another writer took the pool over (this writer's lock was "
                            "broken): its writes are refused";
    case CB_ESTALE: return "this reader's lease on the pool lapsed: what it pinned may have "
                           "been reused (refresh the pool to read on)";
    default:
        if (code < 0 && code > -4096)
            return strerror(-code); /* glibc: static strings for errno values */
        return "unknown error";
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int valid_name(const char *name)
{
    if (!name)
        return 0;
    size_t len = strnlen(name, CB_NAME_MAX + 1);
    return len >= 1 && len <= CB_NAME_MAX && !strchr(name, '/');
}

/* ---- lock and state ------------------------------------------------------- */

/* Lock modes of pool_enter: shared, exclusive, or exclusive for a change
 * (refused with CB_EROFS on a read-only pool). */
#define SHARED 0
#define EXCLUSIVE 1
#define MUTATE 2

static void lock_write(struct cb_pool *p)
{
    pthread_rwlock_wrlock(&p->lock);
    CB_HOLD_WRITE(&p->s);
}

static void lock_read(struct cb_pool *p)
{
    pthread_rwlock_rdlock(&p->lock);
    CB_HOLD_READ(&p->s);
}

static void unlock(struct cb_pool *p)
{
    CB_HOLD_END(&p->s);
    pthread_rwlock_unlock(&p->lock);
}

/* Take the lock in the given mode and check the pool may be used; on an
 * error the lock is not held.  pool_leave releases it and returns rc. */
static int pool_enter(struct cb_pool *p, int mode)
{
    if (__atomic_load_n(&p->shut, __ATOMIC_ACQUIRE))
        return CB_ECLOSED;
    if (mode == SHARED)
        lock_read(p);
    else
        lock_write(p);
    /* closed while this call waited for the lock: the lock orders it after
     * close's release of everything */
    if (__atomic_load_n(&p->shut, __ATOMIC_RELAXED)) {
        unlock(p);
        return CB_ECLOSED;
    }
    if (p->failed) {
        unlock(p);
        return CB_EFAILED;
    }
    if (mode == MUTATE && (p->flags & CB_OPEN_READONLY)) {
        unlock(p);
        return CB_EROFS;
    }
    return 0;
}

static int pool_leave(struct cb_pool *p, int rc)
{
    CB_CONSISTENT(&p->s);
    unlock(p);
    return rc;
}

/* OPEN -> FAILED (see the top of this file).  The first error sticks. */
static int pool_fail(struct cb_pool *p, int rc)
{
    CB_MUST_WRITE(&p->s);
    assert(rc < 0);
    if (!p->failed)
        p->failed = rc;
    return rc;
}

/* The one place a commit is made.  A read-only pool has nothing to commit;
 * a failed commit fails the pool. */
static int pool_commit(struct cb_pool *p, int mode)
{
    CB_MUST_WRITE(&p->s);
    if (p->failed)
        return CB_EFAILED;
    if (p->flags & CB_OPEN_READONLY)
        return 0;
    int rc = cb_txn_commit(&p->s, mode);
    return rc ? pool_fail(p, rc) : 0;
}

/* Commit if the open transaction has grown past its bound. */
static int pool_maybe_commit(struct cb_pool *p)
{
    return cb_txn_due(&p->s) ? pool_commit(p, CB_TXN_FLUSH) : 0;
}

/* ---- lifecycle ------------------------------------------------------------ */

/* Everything but the struct, its lock and path: what close gives back.
 * Device handles stay allocated (their owners free them with
 * cb_dev_close) but lose their records. */
static void pool_release_resources(struct cb_pool *p)
{
    while (p->handles) {
        struct cb_dev *h = p->handles;
        p->handles = h->next;
        if (h->rec->deleted && h->rec->handles == 1)
            free(h->rec);
        else
            h->rec->handles--;
        h->rec = NULL;
        h->prev = h->next = NULL;
    }
    cb_store_destroy(&p->s);
}

/* Drop one reference (cowblock.h, "Lifetimes"); the last frees the struct. */
static void pool_unref(struct cb_pool *p)
{
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    pthread_rwlock_destroy(&p->lock);
    free(p->path);
    free(p);
}

/* A pool nobody else has seen (create and open failing). */
static void pool_free(struct cb_pool *p)
{
    pool_release_resources(p);
    pool_unref(p);
}

static int pool_alloc(const char *path, unsigned flags, struct cb_pool **out)
{
    struct cb_pool *p = calloc(1, sizeof *p);
    if (!p)
        return CB_ENOMEM;
    cb_store_init(&p->s);
    pthread_rwlock_init(&p->lock, NULL);
    p->refs = 1;
    p->flags = flags;
    p->path = strdup(path);
    if (!p->path) {
        pool_free(p);
        return CB_ENOMEM;
    }
    p->s.path = p->path;
    *out = p;
    return 0;
}

static int pool_lock_file(struct cb_pool *p)
{
    int fd = cb_file_fd(p->s.meta);
    if (fd < 0) { /* not a file: the backend's own lock, if it has one */
        cb_io *m = p->s.meta;
        return m->ops->lock ? m->ops->lock(m, !(p->flags & CB_OPEN_READONLY)) : 0;
    }
    int op = (p->flags & CB_OPEN_READONLY) ? LOCK_SH : LOCK_EX;
    if (flock(fd, op | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? CB_EBUSY : -errno;
    return 0;
}

static int open_files(struct cb_pool *p, unsigned ioflags)
{
    unsigned ro = (p->flags & CB_OPEN_READONLY) ? CB_IO_READONLY : 0;
    unsigned direct = (p->flags & CB_OPEN_DIRECT) ? CB_IO_DIRECT : 0;
    unsigned map = (p->flags & CB_OPEN_MMAP) ? CB_IO_MMAP : 0; /* data file only */
    int rc = cb_backend_open(p->path, "meta", ioflags | ro | CB_IO_FENCED, NULL, &p->s.meta);
    if (!rc)
        p->s.shared_readers = p->s.meta->ops->pin != NULL;
    if (!rc)
        rc = pool_lock_file(p);
    if (!rc)
        rc = cb_backend_open(p->path, "data", ioflags | ro | direct | map, p->s.meta,
                             &p->s.data.io);
    return rc;
}

/* Undo what a failed create made: the files it created, and the directory
 * if it created it (then empty again).  Nothing else is touched. */
static void remove_created(const char *path, int meta, int data, int dir)
{
    if (meta)
        (void)cb_backend_remove(path, "meta");
    if (data)
        (void)cb_backend_remove(path, "data");
    if (dir)
        rmdir(path);
}

int cb_pool_create(const char *path, uint64_t size, uint32_t block_size,
                   unsigned flags, cb_pool **out)
{
    if (!path || !out || !*path || block_size < CB_MIN_BLOCK_SIZE ||
        block_size > CB_MAX_BLOCK_SIZE || (block_size & (block_size - 1)) ||
        size < block_size || (flags & ~(CB_OPEN_DIRECT | CB_OPEN_MMAP | CB_CREATE_CHECKSUMS)) ||
        ((flags & CB_OPEN_DIRECT) && (flags & CB_OPEN_MMAP)))
        return CB_EINVAL;
    if (size / block_size > (1ull << 36))
        return CB_EINVAL;
    int made_dir = 0;
    if (!cb_backend_is_url(path)) {
        made_dir = mkdir(path, 0755) == 0;
        if (!made_dir && errno != EEXIST)
            return -errno;
    }
    struct cb_pool *p;
    int rc = pool_alloc(path, flags & ~CB_CREATE_CHECKSUMS, &p);
    if (rc) {
        remove_created(path, 0, 0, made_dir);
        return rc;
    }
    struct cb_store *s = &p->s;
    lock_write(p); /* nobody else sees p yet: held for the layers' contract */
    s->next_dev_id = 1;
    s->map.now = 1;
    s->created_ns = now_ns();
    if (getrandom(s->uuid, sizeof s->uuid, 0) != (ssize_t)sizeof s->uuid)
        memcpy(s->uuid, &s->created_ns, sizeof s->created_ns);
    rc = cb_store_geometry(s, block_size, size / block_size, (flags & CB_CREATE_CHECKSUMS) != 0);
    if (!rc) {
        rc = open_files(p, CB_IO_CREATE);
        if (rc == -EEXIST)
            rc = CB_EEXIST;
    }
    if (!rc)
        rc = s->data.io->ops->truncate(s->data.io, cb_geometry_data_span(&s->geo));
    if (!rc && s->csum_on)
        rc = cb_csum_init(&s->csum, s->data.io, s->nblocks * (uint64_t)block_size,
                          s->nblocks * s->nsub);
    if (!rc && !(rc = cb_sm_init(&s->sm, s->nblocks)))
        s->sm.track_fresh = s->csum_on || s->shared_readers;
    if (!rc)
        rc = cb_pm_init(&s->pm, 2);
    if (!rc && !(s->devs = calloc((size_t)CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS, sizeof *s->devs)))
        rc = CB_ENOMEM;
    if (!rc)
        rc = cb_txn_format(s);
    if (!rc)
        rc = cb_io_sync(s->data.io);
    unlock(p);
    if (rc) {
        /* O_CREAT | O_EXCL: a file is open here only if this call made it */
        int made_meta = s->meta != NULL, made_data = s->data.io != NULL;
        pool_free(p);
        remove_created(path, made_meta, made_data, made_dir);
        return rc;
    }
    *out = p;
    return 0;
}

/* ---- readers of a shared pool (txn.c, "Readers") ---------------------------- */

#define READER_TRIES 16 /* loads that met a page reused by a newer commit */

/* Register as a reader: pin the generation the superblock shows now.  A
 * pin at g keeps what g and every later generation reach from the commits
 * published after it, so the load that follows, which reads the superblock
 * after the pin is in place, may load any commit it finds (txn.c,
 * "Readers"). */
static int pin_newest(struct cb_store *s)
{
    uint64_t g;
    int rc = cb_txn_peek(s, &g);
    return rc ? rc : s->meta->ops->pin(s->meta, g, 1);
}

/* Free what a failed load left in s, keeping its stores open. */
static void reset_store(struct cb_store *s)
{
    cb_io *meta = s->meta, *data = s->data.io;
    int shared = s->shared_readers;
    uint64_t keep = s->keep_max;
    s->meta = NULL;
    s->data.io = NULL;
    cb_store_destroy(s);
    struct cb_holder holder = s->holder;
    cb_store_init(s);
    s->holder = holder;
    s->path = NULL;
    s->meta = meta;
    s->data.io = data;
    s->shared_readers = shared;
    s->keep_max = keep;
}

/* Load a read-only store whose stores are open: for a shared pool,
 * pinned first; a load that met a page a newer commit reused is made
 * again.  Then the pin moves up to the generation loaded. */
static int load_reader(struct cb_store *s)
{
    if (!s->shared_readers)
        return cb_txn_load(s, 1);
    for (int i = 0;; i++) {
        int rc = pin_newest(s);
        if (!rc)
            rc = cb_txn_load(s, 1);
        if (!rc)
            return s->meta->ops->pin(s->meta, s->generation, 0);
        uint64_t now;
        if (rc != CB_ECORRUPT || i + 1 >= READER_TRIES || cb_txn_peek(s, &now) ||
            now == s->generation)
            return rc; /* not a page reused under the load: damage */
        const char *path = s->path;
        reset_store(s);
        s->path = path;
    }
}

/* After a read by a reader of a shared pool: 0 if its registration still
 * held when the read completed, else CB_ESTALE (what it read may be
 * another commit's data). */
static int reader_valid(struct cb_pool *p)
{
    if (!(p->flags & CB_OPEN_READONLY) || !p->s.shared_readers)
        return 0;
    if (__atomic_load_n(&p->stale, __ATOMIC_ACQUIRE))
        return CB_ESTALE;
    return p->s.meta->ops->pin_valid(p->s.meta);
}

/* The reads' result, unless the reader's lease lapsed meanwhile: that
 * error wins (a checksum or corruption error then says nothing). */
static int read_result(struct cb_pool *p, int rc)
{
    int stale = reader_valid(p);
    return stale ? stale : rc;
}

int cb_pool_open(const char *path, unsigned flags, cb_pool **out)
{
    if (!path || !out || (flags & ~(CB_OPEN_READONLY | CB_OPEN_DIRECT | CB_OPEN_MMAP)) ||
        ((flags & CB_OPEN_DIRECT) && (flags & CB_OPEN_MMAP)))
        return CB_EINVAL;
    struct cb_pool *p;
    int rc = pool_alloc(path, flags, &p);
    if (rc)
        return rc;
    lock_write(p); /* nobody else sees p yet: held for the layers' contract */
    rc = open_files(p, 0);
    if (rc == -ENOENT)
        rc = CB_ENOENT;
    if (!rc)
        rc = (flags & CB_OPEN_READONLY) ? load_reader(&p->s) : cb_txn_load(&p->s, 0);
    if (!rc && !(flags & CB_OPEN_READONLY)) {
        /* After an unclean shutdown, blocks the lost transaction had
         * allocated and written hold data but are free: punch them out.
         * Then commit once without the clean mark, so that a crash from
         * here on is seen as unclean by the next open. */
        uint64_t found, punched;
        if (!p->s.was_clean)
            rc = cb_check_free_data(&p->s, 1, &found, &punched);
        if (!rc)
            rc = pool_commit(p, CB_TXN_IN_USE);
    }
    unlock(p);
    if (rc) {
        pool_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int cb_pool_close(cb_pool *p)
{
    if (!p)
        return 0;
    /* OPEN or FAILED -> CLOSING: new calls are refused from here on, so the
     * lock below is not starved by readers coming in; it waits for the calls
     * already inside. */
    if (__atomic_exchange_n(&p->shut, 1, __ATOMIC_ACQ_REL))
        return CB_ECLOSED;
    lock_write(p);
    int rc = 0;
    if (!p->failed && !(p->flags & CB_OPEN_READONLY)) {
        /* kept blocks hold stale data: a clean pool has none (the commit
         * below makes the punches durable) */
        cb_txn_trim_kept(&p->s, 0);
        rc = pool_commit(p, CB_TXN_CLEAN);
    }
    pool_release_resources(p); /* CLOSING -> CLOSED */
    unlock(p);
    pool_unref(p); /* the open's reference */
    return rc;
}

void cb_pool_retain(cb_pool *p)
{
    if (p)
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
}

void cb_pool_release(cb_pool *p)
{
    if (p)
        pool_unref(p);
}

int cb_pool_flush(cb_pool *p)
{
    int rc = pool_enter(p, EXCLUSIVE);
    return rc ? rc : pool_leave(p, pool_commit(p, CB_TXN_FLUSH));
}

/* Give handle h the record of its device in store ns, or, if ns has no
 * device of that id (deleted by the writer), keep its record detached
 * from the table and marked deleted. */
static void rehome_handle(struct cb_pool *p, struct cb_dev *h, struct cb_store *ns)
{
    struct cb_devrec *d = h->rec, *nd = NULL;
    for (unsigned i = 0; i < ns->ndevslots && !nd; i++)
        if (ns->devs[i] && ns->devs[i]->id == d->id)
            nd = ns->devs[i];
    if (!nd) {
        if (!d->deleted) { /* out of the old table, which is freed next */
            p->s.devs[d->slot] = NULL;
            cb_node_put(&p->s.map, d->root);
            d->root = NULL;
            d->deleted = 1;
        }
        return;
    }
    nd->handles++;
    h->rec = nd;
    if (--d->handles == 0 && d->deleted)
        free(d);
}

int cb_pool_refresh(cb_pool *p, uint64_t *generation)
{
    int rc = pool_enter(p, EXCLUSIVE);
    if (rc)
        return rc;
    /* a writer is always at the newest commit; a reader of a file pool
     * holds its flock, which keeps every writer out */
    if (!(p->flags & CB_OPEN_READONLY) || !p->s.shared_readers) {
        if (generation)
            *generation = p->s.generation;
        return pool_leave(p, 0);
    }
    struct cb_store *ns = malloc(sizeof *ns);
    if (!ns)
        return pool_leave(p, CB_ENOMEM);
    cb_store_init(ns);
    ns->holder = p->s.holder; /* this thread holds the lock (debug builds) */
    ns->path = p->path;
    ns->meta = p->s.meta;
    ns->data.io = p->s.data.io;
    ns->shared_readers = 1;
    ns->keep_max = p->s.keep_max;
    rc = load_reader(ns);
    if (rc) {
        /* the pin may have moved on already: the old state is not safe to
         * read any more, until a refresh succeeds */
        __atomic_store_n(&p->stale, 1, __ATOMIC_RELEASE);
        ns->meta = NULL;
        ns->data.io = NULL;
        cb_store_destroy(ns);
        free(ns);
        return pool_leave(p, rc);
    }
    for (struct cb_dev *h = p->handles; h; h = h->next)
        rehome_handle(p, h, ns);
    ns->st = p->s.st;
    p->s.meta = NULL;
    p->s.data.io = NULL;
    cb_store_destroy(&p->s);
    memcpy(&p->s, ns, sizeof *ns);
    p->s.map.sm = &p->s.sm; /* the two pointers into the store itself */
    p->s.map.pm = &p->s.pm;
    free(ns);
    __atomic_store_n(&p->stale, 0, __ATOMIC_RELEASE);
    if (generation)
        *generation = p->s.generation;
    return pool_leave(p, 0);
}

int cb_pool_stat(cb_pool *p, cb_stat *out)
{
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    struct cb_store *s = &p->s;
    *out = s->st;
    out->reads = __atomic_load_n(&s->st.reads, __ATOMIC_RELAXED);
    out->bytes_read = __atomic_load_n(&s->st.bytes_read, __ATOMIC_RELAXED);
    out->block_size = s->block_size;
    out->nblocks = s->nblocks;
    out->used_blocks = s->sm.busy - s->sm.pending.n; /* freed ones count as free */
    out->ndevices = s->ndevs;
    out->generation = s->generation;
    out->time = s->map.now;
    out->meta_pages = s->pm.nbusy;
    out->meta_file_pages = s->pm.npages;
    out->checksums = (uint64_t)s->csum_on;
    out->kept_blocks = s->sm.nkept;
    out->held_blocks = s->sm.nheld;
    out->checksum_failures = __atomic_load_n(&s->st.checksum_failures, __ATOMIC_RELAXED);
    return pool_leave(p, 0);
}

/* ---- device table ----------------------------------------------------------- */

static int new_rec(struct cb_pool *p, const char *name, struct cb_devrec **out)
{
    struct cb_store *s = &p->s;
    CB_MUST_WRITE(s);
    if (cb_store_find(s, name))
        return CB_EEXIST;
    if (s->ndevs >= CB_MAX_DEVICES || s->next_dev_id >= UINT32_MAX)
        return CB_ETOOMANY;
    unsigned slot = 0;
    while (slot < s->ndevslots && s->devs[slot])
        slot++;
    if (slot >= CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS)
        return CB_ETOOMANY;
    struct cb_devrec *d = calloc(1, sizeof *d);
    if (!d)
        return CB_ENOMEM;
    if (slot == s->ndevslots) {
        s->ndevslots++;
        s->devpages[slot / CB_DEVTAB_RECS].dirty = 1;
    }
    snprintf(d->name, sizeof d->name, "%s", name);
    d->id = (uint32_t)s->next_dev_id++;
    d->slot = slot;
    d->created_ns = now_ns();
    s->devs[slot] = d;
    s->ndevs++;
    cb_store_devdirty(s, d);
    *out = d;
    return 0;
}

static void set_geometry(struct cb_pool *p, struct cb_devrec *d, uint64_t size)
{
    d->size = size;
    d->nblocks = (size + p->s.block_size - 1) >> p->s.block_shift;
    d->depth = cb_map_depth(d->nblocks);
}

static int add_external(struct cb_pool *p, const char *path, uint64_t *size, uint32_t *id)
{
    struct cb_store *s = &p->s;
    CB_MUST_WRITE(s);
    char real[PATH_MAX];
    if (!realpath(path, real))
        return errno == ENOENT ? CB_EEXTERNAL : -errno;
    if (strlen(real) > CB_PATH_MAX)
        return CB_EINVAL;
    struct stat st;
    if (stat(real, &st) != 0)
        return -errno;
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return CB_EEXTERNAL;
    int free_slot = -1;
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++) {
        if (!s->ext[i].path) {
            if (free_slot < 0)
                free_slot = (int)i;
            continue;
        }
        char why[200];
        if (strcmp(s->ext[i].path, real) == 0 && s->ext[i].size == (uint64_t)st.st_size &&
            s->ext[i].io && !cb_store_external_changed(&s->ext[i], why, sizeof why)) {
            *id = i + 1;
            *size = s->ext[i].size;
            return 0;
        }
    }
    if (free_slot < 0)
        return CB_ETOOMANY;
    struct cb_external *x = &s->ext[free_slot];
    int rc = cb_file_open(real, CB_IO_READONLY, &x->io);
    if (rc)
        return rc == CB_ENOMEM ? rc : CB_EEXTERNAL;
    cb_store_stamp_external(x, &st); /* what the file is now (meta.h) */
    if (!(x->path = strdup(real))) {
        x->io->ops->close(x->io);
        x->io = NULL;
        return CB_ENOMEM;
    }
    x->size = (uint64_t)st.st_size;
    x->page = 0;
    x->dirty = 1;
    s->meta_changed = 1;
    *id = (uint32_t)free_slot + 1;
    *size = x->size;
    return 0;
}

int cb_pool_create_device(cb_pool *p, const char *name, uint64_t size,
                          const char *external_path)
{
    if (!valid_name(name) || size % 512 || size > CB_MAX_DEV_SIZE ||
        (size == 0 && !external_path))
        return CB_EINVAL;
    int rc = pool_enter(p, MUTATE);
    if (rc)
        return rc;
    if (cb_store_find(&p->s, name))
        return pool_leave(p, CB_EEXIST);
    uint32_t ext = 0;
    uint64_t esize = 0;
    if (external_path && (rc = add_external(p, external_path, &esize, &ext)))
        return pool_leave(p, rc);
    if (size == 0)
        size = (esize + 511) / 512 * 512;
    if (size == 0 || size > CB_MAX_DEV_SIZE)
        return pool_leave(p, CB_EINVAL);
    struct cb_devrec *d;
    if ((rc = new_rec(p, name, &d)))
        return pool_leave(p, rc);
    set_geometry(p, d, size);
    d->external_id = ext;
    d->birth_time = d->snap_time = p->s.map.now;
    return pool_leave(p, pool_maybe_commit(p));
}

int cb_pool_snapshot(cb_pool *p, const char *source, const char *name, unsigned dev_flags)
{
    if (!valid_name(name) || !source || (dev_flags & ~CB_DEV_READONLY))
        return CB_EINVAL;
    int rc = pool_enter(p, MUTATE);
    if (rc)
        return rc;
    struct cb_store *st = &p->s;
    struct cb_devrec *s = cb_store_find(st, source), *d;
    if (!s)
        return pool_leave(p, CB_ENOENT);
    if (cb_store_find(st, name))
        return pool_leave(p, CB_EEXIST);
    if (st->map.now == UINT32_MAX)
        return pool_leave(p, CB_ETOOMANY);
    if ((rc = new_rec(p, name, &d)))
        return pool_leave(p, rc);
    /* O(1): share the root; both sides treat older entries as shared */
    uint32_t t = ++st->map.now;
    set_geometry(p, d, s->size);
    d->flags = dev_flags;
    d->external_id = s->external_id;
    d->origin_id = s->id;
    d->root = s->root;
    if (d->root)
        d->root->rc++;
    d->birth_time = d->snap_time = t;
    s->snap_time = t;
    cb_store_devdirty(st, s);
    return pool_leave(p, pool_maybe_commit(p));
}

static void drop_external_if_unused(struct cb_pool *p, uint32_t id)
{
    struct cb_store *s = &p->s;
    CB_MUST_WRITE(s);
    if (!id)
        return;
    for (unsigned i = 0; i < s->ndevslots; i++)
        if (s->devs[i] && s->devs[i]->external_id == id)
            return;
    struct cb_external *x = &s->ext[id - 1];
    if (x->page)
        cb_pm_free(&s->pm, x->page);
    if (x->io)
        x->io->ops->close(x->io);
    free(x->path);
    memset(x, 0, sizeof *x);
    s->meta_changed = 1;
}

int cb_pool_delete(cb_pool *p, const char *name)
{
    if (!name)
        return CB_EINVAL;
    int rc = pool_enter(p, MUTATE);
    if (rc)
        return rc;
    struct cb_store *s = &p->s;
    struct cb_devrec *d = cb_store_find(s, name);
    if (!d)
        return pool_leave(p, CB_ENOENT);
    rc = cb_node_put(&s->map, d->root);
    d->root = NULL;
    cb_store_devdirty(s, d);
    s->devs[d->slot] = NULL;
    s->ndevs--;
    while (s->ndevslots && !s->devs[s->ndevslots - 1])
        s->ndevslots--;
    drop_external_if_unused(p, d->external_id);
    d->deleted = 1;
    if (d->handles == 0)
        free(d);
    if (rc) /* counts disagreed with the trees: stop writing */
        return pool_leave(p, pool_fail(p, rc));
    return pool_leave(p, pool_maybe_commit(p));
}

static void fill_info(const struct cb_devrec *d, cb_devinfo *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->name, d->name, sizeof out->name);
    out->id = d->id;
    out->origin_id = d->origin_id;
    out->size = d->size;
    out->flags = d->flags;
    out->external_id = d->external_id;
    out->created_ns = d->created_ns;
    out->birth_time = d->birth_time;
    out->snap_time = d->snap_time;
}

int cb_pool_list(cb_pool *p, cb_devinfo *out, size_t n, size_t *count)
{
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    struct cb_store *s = &p->s;
    size_t k = 0;
    for (unsigned i = 0; i < s->ndevslots; i++) {
        if (!s->devs[i])
            continue;
        if (k < n)
            fill_info(s->devs[i], &out[k]);
        k++;
    }
    *count = k;
    return pool_leave(p, 0);
}

int cb_pool_info(cb_pool *p, const char *name, cb_devinfo *out)
{
    if (!name)
        return CB_EINVAL;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    struct cb_devrec *d = cb_store_find(&p->s, name);
    if (!d)
        return pool_leave(p, CB_ENOENT);
    fill_info(d, out);
    return pool_leave(p, 0);
}

int cb_pool_external_path(cb_pool *p, uint32_t id, char *buf, size_t len)
{
    if (id == 0 || id > CB_MAX_EXTERNALS || !buf || len == 0)
        return CB_EINVAL;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    const struct cb_external *x = &p->s.ext[id - 1];
    if (!x->path)
        return pool_leave(p, CB_ENOENT);
    snprintf(buf, len, "%s", x->path);
    return pool_leave(p, strlen(x->path) < len ? 0 : CB_EINVAL);
}

int cb_pool_uuid(cb_pool *p, uint8_t out[16])
{
    if (!out)
        return CB_EINVAL;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    memcpy(out, p->s.uuid, 16);
    return pool_leave(p, 0);
}

int cb_pool_usage(cb_pool *p, cb_usage *out, size_t n, size_t *count)
{
    int rc = pool_enter(p, EXCLUSIVE); /* the walk uses scratch fields of nodes */
    return rc ? rc : pool_leave(p, cb_thin_usage(&p->s, out, n, count));
}

int cb_pool_check(cb_pool *p, int repair, cb_check *out, char *buf, size_t len)
{
    int rc = pool_enter(p, repair ? MUTATE : EXCLUSIVE);
    if (rc)
        return rc;
    /* check reads back what is committed: commit what is in memory first */
    if ((rc = pool_commit(p, CB_TXN_FLUSH)))
        return pool_leave(p, rc);
    struct cb_checker *c;
    if ((rc = cb_check_begin(&p->s, out, buf, len, &c)))
        return pool_leave(p, rc);
    /* a damaged slot the pool does not stand on is what the next commit
     * writes: check asks for that commit, made here (check.h) */
    for (unsigned slot = 0; slot < 2 && !rc; slot++)
        if ((rc = cb_check_slot(c, slot, repair)) == CB_CHECK_COMMIT &&
            !(rc = pool_commit(p, CB_TXN_IN_USE)))
            rc = cb_check_rewritten(c, slot);
    if (!rc)
        rc = cb_check_rest(c, repair);
    cb_check_end(c);
    return pool_leave(p, rc);
}

int cb_pool_dump(cb_pool *p, char **json, size_t *len)
{
    if (!p || !json)
        return CB_EINVAL;
    *json = NULL;
    size_t n = 0;
    if (len)
        *len = 0;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    rc = pool_leave(p, cb_dump_run(&p->s, json, &n));
    if (!rc && len)
        *len = n;
    return rc;
}

void cb_free(void *ptr)
{
    free(ptr);
}

int cb_pool_set_keep(cb_pool *p, uint64_t max_blocks)
{
    int rc = pool_enter(p, MUTATE);
    if (rc)
        return rc;
    struct cb_store *s = &p->s;
    s->keep_max = max_blocks < s->nblocks ? max_blocks : s->nblocks;
    cb_txn_trim_kept(s, s->keep_max);
    return pool_leave(p, 0);
}

int cb_pool_scrub(cb_pool *p, cb_scrub *progress, cb_scrub_bad *bad, size_t n, size_t *count)
{
    if (!progress || !count || (!bad && n))
        return CB_EINVAL;
    *count = 0;
    /* the walk, then one slice at a time, each under the lock shared (scrub.h) */
    struct cb_scrubber *x;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    rc = pool_leave(p, cb_scrub_begin(&p->s, progress, &x));
    while (!rc && cb_scrub_more(x)) {
        if ((rc = cb_scrub_cancelled(x)) || (rc = pool_enter(p, SHARED)))
            break;
        rc = pool_leave(p, read_result(p, cb_scrub_slice(x, bad, n, count)));
        cb_scrub_pace(x);
    }
    cb_scrub_end(x);
    return rc;
}

uint64_t cb_bad_offset(void)
{
    return cb_thin_bad_offset();
}

/* ---- device handles ----------------------------------------------------------- */

int cb_dev_open(cb_pool *p, const char *name, cb_dev **out)
{
    if (!name || !out)
        return CB_EINVAL;
    int rc = pool_enter(p, EXCLUSIVE);
    if (rc)
        return rc;
    struct cb_devrec *d = cb_store_find(&p->s, name);
    if (!d)
        return pool_leave(p, CB_ENOENT);
    struct cb_dev *h = calloc(1, sizeof *h);
    if (!h)
        return pool_leave(p, CB_ENOMEM);
    h->pool = p;
    h->rec = d;
    d->handles++;
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED); /* dropped by cb_dev_close */
    h->next = p->handles;
    if (p->handles)
        p->handles->prev = h;
    p->handles = h;
    *out = h;
    return pool_leave(p, 0);
}

void cb_dev_close(cb_dev *h)
{
    if (!h)
        return;
    struct cb_pool *p = h->pool;
    lock_write(p);
    if (h->rec) { /* still attached: the pool is not closed */
        assert(h->rec->handles > 0);
        if (h->prev)
            h->prev->next = h->next;
        else
            p->handles = h->next;
        if (h->next)
            h->next->prev = h->prev;
        if (--h->rec->handles == 0 && h->rec->deleted)
            free(h->rec);
    }
    unlock(p);
    free(h);
    pool_unref(p);
}

/* Enter for an operation on a device: live, and writable if asked. */
static int dev_enter(cb_dev *h, int mode)
{
    int rc = pool_enter(h->pool, mode);
    if (rc)
        return rc;
    assert(h->rec->handles > 0);
    if (h->rec->deleted)
        return pool_leave(h->pool, CB_ENOENT);
    assert(h->pool->s.devs[h->rec->slot] == h->rec); /* a live record is in the table */
    if (mode == MUTATE && (h->rec->flags & CB_DEV_READONLY))
        return pool_leave(h->pool, CB_EROFS);
    return 0;
}

static int in_range(const struct cb_devrec *d, uint64_t len, uint64_t off)
{
    return off <= d->size && len <= d->size - off;
}

/* Write through thin, committing where it asks (thin.h) and going on with
 * what is left. */
static int dev_write(struct cb_pool *p, struct cb_devrec *d, const char *src, uint64_t len,
                     uint64_t off)
{
    for (;;) {
        uint64_t done;
        int rc = cb_thin_write(&p->s, d, src, len, off, &done);
        if (rc == CB_ENOSPC && cb_txn_release_held(&p->s))
            rc = CB_THIN_COMMIT; /* room again: go on where the write stopped */
        if (rc != CB_THIN_COMMIT)
            return rc;
        assert(done <= len);
        if ((rc = pool_commit(p, CB_TXN_FLUSH)))
            return rc;
        src += done;
        off += done;
        len -= done;
    }
}

int cb_dev_info(cb_dev *h, cb_devinfo *out)
{
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    fill_info(h->rec, out);
    return pool_leave(h->pool, 0);
}

int cb_dev_read(cb_dev *h, void *buf, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    struct cb_store *s = &h->pool->s;
    if (!in_range(h->rec, len, off) || (!buf && len))
        return pool_leave(h->pool, CB_EINVAL);
    rc = read_result(h->pool, cb_thin_read(s, h->rec, buf, len, off));
    __atomic_fetch_add(&s->st.reads, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->st.bytes_read, len, __ATOMIC_RELAXED);
    return pool_leave(h->pool, rc);
}

int cb_dev_write(cb_dev *h, const void *buf, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    if (!in_range(h->rec, len, off) || (!buf && len))
        return pool_leave(p, CB_EINVAL);
    rc = dev_write(p, h->rec, buf, len, off);
    p->s.st.writes++;
    p->s.st.bytes_written += len;
    if (!rc)
        rc = pool_maybe_commit(p);
    return pool_leave(p, rc);
}

int cb_dev_discard(cb_dev *h, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    if (!in_range(h->rec, len, off))
        return pool_leave(p, CB_EINVAL);
    while ((rc = cb_thin_discard(&p->s, h->rec, len, off)) == CB_THIN_COMMIT ||
           (rc == CB_ENOSPC && cb_txn_release_held(&p->s)))
        if (rc == CB_THIN_COMMIT && (rc = pool_commit(p, CB_TXN_FLUSH)))
            break;
    if (!rc)
        rc = pool_maybe_commit(p);
    return pool_leave(p, rc);
}

int cb_dev_flush(cb_dev *h)
{
    int rc = dev_enter(h, EXCLUSIVE);
    return rc ? rc : pool_leave(h->pool, pool_commit(h->pool, CB_TXN_FLUSH));
}

static int blocks_in_range(struct cb_pool *p, const struct cb_devrec *d,
                           const uint64_t *idx, size_t n)
{
    uint64_t whole = d->size >> p->s.block_shift; /* blocks lying wholly inside */
    for (size_t i = 0; i < n; i++)
        if (idx[i] >= whole)
            return 0;
    return 1;
}

int cb_dev_read_blocks(cb_dev *h, const uint64_t *idx, size_t n, void *buf)
{
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    struct cb_store *s = &p->s;
    if ((n && (!idx || !buf)) || !blocks_in_range(p, h->rec, idx, n))
        return pool_leave(p, CB_EINVAL);
    rc = cb_thin_read_blocks(s, h->rec, idx, n, buf);
    rc = read_result(p, rc);
    __atomic_fetch_add(&s->st.reads, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->st.bytes_read, n * (uint64_t)s->block_size, __ATOMIC_RELAXED);
    return pool_leave(p, rc);
}

int cb_dev_write_blocks(cb_dev *h, const uint64_t *idx, size_t n, const void *buf)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    struct cb_store *s = &p->s;
    if ((n && (!idx || !buf)) || !blocks_in_range(p, h->rec, idx, n))
        return pool_leave(p, CB_EINVAL);
    const char *src = buf;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = dev_write(p, h->rec, src + i * (size_t)s->block_size, s->block_size,
                       idx[i] << s->block_shift);
        s->st.writes++;
        s->st.bytes_written += s->block_size;
    }
    if (!rc)
        rc = pool_maybe_commit(p);
    return pool_leave(p, rc);
}

int cb_dev_changed(cb_dev *h, uint8_t *bits, size_t nbytes)
{
    if (!bits && nbytes)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : pool_leave(h->pool, cb_thin_changed(&h->pool->s, h->rec, bits, nbytes));
}

int cb_dev_extents(cb_dev *h, uint64_t *pairs, size_t n, size_t *count)
{
    if ((!pairs && n) || !count)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : pool_leave(h->pool, cb_thin_extents(&h->pool->s, h->rec, 0, UINT64_MAX,
                                                            pairs, n, count, NULL));
}

int cb_dev_extents_range(cb_dev *h, uint64_t first, uint64_t nblocks, uint64_t *pairs,
                         size_t n, size_t *count, uint64_t *next)
{
    if ((!pairs && n) || !count || !next)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    const struct cb_devrec *d = h->rec;
    if (first > d->nblocks || nblocks > d->nblocks - first)
        return pool_leave(h->pool, CB_EINVAL);
    return pool_leave(h->pool, cb_thin_extents(&h->pool->s, h->rec, first, first + nblocks,
                                                  pairs, n, count, next));
}

int cb_dev_delta(cb_dev *h, cb_dev *base, uint64_t start, cb_delta *out, size_t n,
                 size_t *count, uint64_t *next)
{
    if (!out || n == 0 || !count || !next || (base && base->pool != h->pool))
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    if (base && base->rec->deleted)
        return pool_leave(h->pool, CB_ENOENT);
    return pool_leave(h->pool, cb_thin_delta(&h->pool->s, h->rec, base ? base->rec : NULL,
                                                start, out, n, count, next));
}

int cb_dev_usage(cb_dev *h, cb_usage *out)
{
    if (!out)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : pool_leave(h->pool, cb_thin_dev_usage(&h->pool->s, h->rec, out));
}

/* ---- documents (cowblock.h "Documents") -------------------------------------
 * The store's own: the meta store's backend keeps them (blockio.h doc_*),
 * or has none (the file backend: the binding keeps files beside the pool). */

static int doc_name_ok(const char *name)
{
    size_t n = name ? strnlen(name, CB_DOC_NAME_MAX + 1) : 0;
    if (n == 0 || n > CB_DOC_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The pool's meta store, if it keeps documents; else the detail says why. */
static cb_io *doc_store(struct cb_pool *p)
{
    cb_io *m = p->s.meta;
    if (m->ops->doc_get && m->ops->doc_put && m->ops->doc_list)
        return m;
    cb_meta_bad(0, 0, "the pool in '%.200s' keeps no documents in its store (a pool in a "
                "directory keeps them as files beside it)", p->path);
    return NULL;
}

int cb_pool_doc_get(cb_pool *p, const char *name, uint64_t known_gen, char **data,
                    size_t *len, uint64_t *gen)
{
    if (!p || !data || !len || !gen)
        return CB_EINVAL;
    *data = NULL;
    *len = 0;
    *gen = 0;
    if (!doc_name_ok(name))
        return CB_EINVAL;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    cb_io *m = doc_store(p);
    return pool_leave(p, m ? m->ops->doc_get(m, name, known_gen, data, len, gen) : CB_EINVAL);
}

int cb_pool_doc_put(cb_pool *p, const char *name, const void *data, size_t len, uint64_t *gen)
{
    if (!p || (!data && len))
        return CB_EINVAL;
    if (!doc_name_ok(name))
        return CB_EINVAL;
    if (len > CB_DOC_MAX) {
        cb_meta_bad(0, 0, "document '%s' is %zu bytes, more than the %u bytes "
                    "(CB_DOC_MAX, 8 MiB) one op of the store may carry", name, len,
                    (unsigned)CB_DOC_MAX);
        return CB_EINVAL;
    }
    int rc = pool_enter(p, MUTATE);
    if (rc)
        return rc;
    cb_io *m = doc_store(p);
    if (!m)
        return pool_leave(p, CB_EINVAL);
    uint64_t g = 0;
    rc = m->ops->doc_put(m, name, data ? data : "", len, &g);
    if (rc)
        return pool_leave(p, pool_fail(p, rc));
    if (gen)
        *gen = g;
    return pool_leave(p, 0);
}

int cb_pool_doc_list(cb_pool *p, char **names, size_t *len)
{
    if (!p || !names || !len)
        return CB_EINVAL;
    *names = NULL;
    *len = 0;
    int rc = pool_enter(p, SHARED);
    if (rc)
        return rc;
    cb_io *m = doc_store(p);
    return pool_leave(p, m ? m->ops->doc_list(m, names, len) : CB_EINVAL);
}
