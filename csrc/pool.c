/*
 * pool.c - the public API: pool lifecycle, the device table, handles,
 * locking and the sticky failed state.  Each entry point validates its
 * arguments, takes the pool lock, checks the state and calls one layer
 * below (thin, txn, check).
 *
 * A pool directory holds:
 *   meta   the metadata file (see meta.h)
 *   data   the sparse data file, nblocks * block_size bytes long
 * The metadata file carries an flock: exclusive for a writer, shared for
 * read-only openers, so two processes never write one pool.
 */
#include "pool.h"
#include "scrub.h"
#include "thin.h"

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

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", dir, name);
    return s;
}

static int valid_name(const char *name)
{
    if (!name)
        return 0;
    size_t len = strnlen(name, CB_NAME_MAX + 1);
    return len >= 1 && len <= CB_NAME_MAX && !strchr(name, '/');
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
    if (p->devs) {
        for (unsigned i = 0; i < CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS; i++) {
            struct cb_devrec *d = p->devs[i];
            if (!d)
                continue;
            cb_node_put(&p->map, d->root);
            free(d);
        }
        free(p->devs);
        p->devs = NULL;
    }
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++) {
        free(p->ext[i].path);
        if (p->ext[i].io)
            p->ext[i].io->ops->close(p->ext[i].io);
        memset(&p->ext[i], 0, sizeof p->ext[i]);
    }
    cb_sm_destroy(&p->sm);
    cb_pm_destroy(&p->pm);
    cb_csum_destroy(&p->csum);
    cb_u64vec_free(&p->freelog_pages);
    if (p->data)
        p->data->ops->close(p->data);
    if (p->meta)
        p->meta->ops->close(p->meta); /* drops the flock */
    p->data = p->meta = NULL;
    free(p->zero);
    free(p->scratch);
    p->zero = p->scratch = NULL;
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
    pthread_rwlock_init(&p->lock, NULL);
    p->refs = 1;
    p->flags = flags;
    p->map.sm = &p->sm;
    p->map.pm = &p->pm;
    p->path = strdup(path);
    if (!p->path) {
        pool_free(p);
        return CB_ENOMEM;
    }
    *out = p;
    return 0;
}

/* Derived geometry and the buffers that need the block size. */
int cb_pool_geometry(struct cb_pool *p)
{
    p->block_shift = (unsigned)__builtin_ctz(p->block_size);
    p->sub_size = p->block_size / 64 > 4096 ? p->block_size / 64 : 4096;
    if (p->sub_size > p->block_size)
        p->sub_size = p->block_size;
    p->nsub = p->block_size / p->sub_size;
    p->full_bitmap = p->nsub == 64 ? UINT64_MAX : (1ull << p->nsub) - 1;
    p->zero = calloc(1, p->block_size);
    if (posix_memalign(&p->scratch, 4096, p->block_size))
        p->scratch = NULL;
    return p->zero && p->scratch ? 0 : CB_ENOMEM;
}

uint64_t cb_pool_data_span(const struct cb_pool *p)
{
    uint64_t blocks = p->nblocks * (uint64_t)p->block_size;
    return p->csum_on ? blocks + cb_csum_bytes(p->nblocks * p->nsub) : blocks;
}

int cb_pool_punch(struct cb_pool *p, uint64_t b, uint64_t n)
{
    p->data_dirty = 1;
    return cb_io_punch(p->data, b * p->block_size, n * p->block_size);
}

static int pool_lock_file(struct cb_pool *p)
{
    int fd = cb_file_fd(p->meta);
    if (fd < 0)
        return 0;
    int op = (p->flags & CB_OPEN_READONLY) ? LOCK_SH : LOCK_EX;
    if (flock(fd, op | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? CB_EBUSY : -errno;
    return 0;
}

static int open_files(struct cb_pool *p, unsigned ioflags)
{
    char *m = join(p->path, "meta"), *d = join(p->path, "data");
    int rc = (m && d) ? 0 : CB_ENOMEM;
    unsigned ro = (p->flags & CB_OPEN_READONLY) ? CB_IO_READONLY : 0;
    unsigned direct = (p->flags & CB_OPEN_DIRECT) ? CB_IO_DIRECT : 0;
    unsigned map = (p->flags & CB_OPEN_MMAP) ? CB_IO_MMAP : 0; /* data file only */
    if (!rc)
        rc = cb_file_open(m, ioflags | ro, &p->meta);
    if (!rc)
        rc = pool_lock_file(p);
    if (!rc)
        rc = cb_file_open(d, ioflags | ro | direct | map, &p->data);
    free(m);
    free(d);
    return rc;
}

/* Undo what a failed create made: the files it created, and the directory
 * if it created it (then empty again).  Nothing else is touched. */
static void remove_created(const char *path, int meta, int data, int dir)
{
    char *m = join(path, "meta"), *d = join(path, "data");
    if (meta && m)
        unlink(m);
    if (data && d)
        unlink(d);
    free(m);
    free(d);
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
    int made_dir = mkdir(path, 0755) == 0;
    if (!made_dir && errno != EEXIST)
        return -errno;
    struct cb_pool *p;
    int rc = pool_alloc(path, flags, &p);
    if (rc) {
        remove_created(path, 0, 0, made_dir);
        return rc;
    }
    p->block_size = block_size;
    p->nblocks = size / block_size;
    p->next_dev_id = 1;
    p->map.now = 1;
    p->created_ns = now_ns();
    if (getrandom(p->uuid, sizeof p->uuid, 0) != (ssize_t)sizeof p->uuid)
        memcpy(p->uuid, &p->created_ns, sizeof p->created_ns);
    p->csum_on = (flags & CB_CREATE_CHECKSUMS) != 0;
    p->flags &= ~CB_CREATE_CHECKSUMS;
    rc = cb_pool_geometry(p);
    if (!rc) {
        rc = open_files(p, CB_IO_CREATE);
        if (rc == -EEXIST)
            rc = CB_EEXIST;
    }
    if (!rc)
        rc = p->data->ops->truncate(p->data, cb_pool_data_span(p));
    if (!rc && p->csum_on)
        rc = cb_csum_init(&p->csum, p->data, p->nblocks * (uint64_t)block_size,
                          p->nblocks * p->nsub);
    if (!rc && !(rc = cb_sm_init(&p->sm, p->nblocks)))
        p->sm.track_fresh = p->csum_on;
    if (!rc)
        rc = cb_pm_init(&p->pm, 2);
    if (!rc && !(p->devs = calloc((size_t)CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS, sizeof *p->devs)))
        rc = CB_ENOMEM;
    if (!rc)
        rc = cb_txn_format(p);
    if (!rc)
        rc = cb_io_sync(p->data);
    if (rc) {
        /* O_CREAT | O_EXCL: a file is open here only if this call made it */
        int made_meta = p->meta != NULL, made_data = p->data != NULL;
        pool_free(p);
        remove_created(path, made_meta, made_data, made_dir);
        return rc;
    }
    *out = p;
    return 0;
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
    rc = open_files(p, 0);
    if (rc == -ENOENT)
        rc = CB_ENOENT;
    if (!rc)
        rc = cb_txn_load(p);
    if (!rc && !(flags & CB_OPEN_READONLY)) {
        /* After an unclean shutdown, blocks the lost transaction had
         * allocated and written hold data but are free: punch them out.
         * Then commit once without the clean mark, so that a crash from
         * here on is seen as unclean by the next open. */
        uint64_t found, punched;
        if (!p->was_clean)
            rc = cb_check_free_data(p, 1, &found, &punched);
        if (!rc) {
            p->meta_changed = 1;
            rc = cb_txn_commit(p);
        }
    }
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
    /* New calls are refused from here on, so the lock below is not starved
     * by readers coming in; it waits for the calls already inside. */
    if (__atomic_exchange_n(&p->shut, 1, __ATOMIC_ACQ_REL))
        return CB_ECLOSED;
    pthread_rwlock_wrlock(&p->lock);
    int rc = 0;
    if (!p->failed && !(p->flags & CB_OPEN_READONLY)) {
        /* kept blocks hold stale data: a clean pool has none (the commit
         * below makes the punches durable) */
        cb_txn_trim_kept(p, 0);
        p->closing = 1; /* this commit marks the pool clean */
        p->meta_changed = 1;
        rc = cb_txn_commit(p);
    }
    pool_release_resources(p);
    pthread_rwlock_unlock(&p->lock);
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

/* Take the lock in the given mode and check the pool may be used (pool.h). */
int cb_pool_enter(struct cb_pool *p, int write)
{
    if (__atomic_load_n(&p->shut, __ATOMIC_ACQUIRE))
        return CB_ECLOSED;
    if (write)
        pthread_rwlock_wrlock(&p->lock);
    else
        pthread_rwlock_rdlock(&p->lock);
    /* closed while this call waited for the lock: the lock orders it after
     * close's release of everything */
    if (__atomic_load_n(&p->shut, __ATOMIC_RELAXED)) {
        pthread_rwlock_unlock(&p->lock);
        return CB_ECLOSED;
    }
    if (p->failed) {
        pthread_rwlock_unlock(&p->lock);
        return CB_EFAILED;
    }
    if (write == CB_LOCK_MUTATE && (p->flags & CB_OPEN_READONLY)) {
        pthread_rwlock_unlock(&p->lock);
        return CB_EROFS;
    }
    return 0;
}

int cb_pool_leave(struct cb_pool *p, int rc)
{
    pthread_rwlock_unlock(&p->lock);
    return rc;
}

#define MUTATE CB_LOCK_MUTATE
#define EXCLUSIVE CB_LOCK_EXCLUSIVE
#define SHARED CB_LOCK_SHARED

int cb_pool_flush(cb_pool *p)
{
    int rc = cb_pool_enter(p, EXCLUSIVE);
    return rc ? rc : cb_pool_leave(p, cb_txn_commit(p));
}

int cb_pool_stat(cb_pool *p, cb_stat *out)
{
    int rc = cb_pool_enter(p, SHARED);
    if (rc)
        return rc;
    *out = p->st;
    out->reads = __atomic_load_n(&p->st.reads, __ATOMIC_RELAXED);
    out->bytes_read = __atomic_load_n(&p->st.bytes_read, __ATOMIC_RELAXED);
    out->block_size = p->block_size;
    out->nblocks = p->nblocks;
    out->used_blocks = p->sm.busy - p->sm.pending.n; /* freed ones count as free */
    out->ndevices = p->ndevs;
    out->generation = p->generation;
    out->time = p->map.now;
    out->meta_pages = p->pm.nbusy;
    out->meta_file_pages = p->pm.npages;
    out->checksums = (uint64_t)p->csum_on;
    out->kept_blocks = p->sm.nkept;
    out->checksum_failures = __atomic_load_n(&p->st.checksum_failures, __ATOMIC_RELAXED);
    return cb_pool_leave(p, 0);
}

/* ---- device table ----------------------------------------------------------- */

struct cb_devrec *cb_pool_find(struct cb_pool *p, const char *name)
{
    for (unsigned i = 0; i < p->ndevslots; i++)
        if (p->devs[i] && strcmp(p->devs[i]->name, name) == 0)
            return p->devs[i];
    return NULL;
}

void cb_pool_devdirty(struct cb_pool *p, struct cb_devrec *d)
{
    p->devpages[d->slot / CB_DEVTAB_RECS].dirty = 1;
    p->meta_changed = 1;
}

static int new_rec(struct cb_pool *p, const char *name, struct cb_devrec **out)
{
    if (cb_pool_find(p, name))
        return CB_EEXIST;
    if (p->ndevs >= CB_MAX_DEVICES || p->next_dev_id >= UINT32_MAX)
        return CB_ETOOMANY;
    unsigned slot = 0;
    while (slot < p->ndevslots && p->devs[slot])
        slot++;
    if (slot >= CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS)
        return CB_ETOOMANY;
    struct cb_devrec *d = calloc(1, sizeof *d);
    if (!d)
        return CB_ENOMEM;
    if (slot == p->ndevslots) {
        p->ndevslots++;
        p->devpages[slot / CB_DEVTAB_RECS].dirty = 1;
    }
    snprintf(d->name, sizeof d->name, "%s", name);
    d->id = (uint32_t)p->next_dev_id++;
    d->slot = slot;
    d->created_ns = now_ns();
    p->devs[slot] = d;
    p->ndevs++;
    cb_pool_devdirty(p, d);
    *out = d;
    return 0;
}

static void set_geometry(struct cb_pool *p, struct cb_devrec *d, uint64_t size)
{
    d->size = size;
    d->nblocks = (size + p->block_size - 1) >> p->block_shift;
    d->depth = cb_map_depth(d->nblocks);
}

static int add_external(struct cb_pool *p, const char *path, uint64_t *size, uint32_t *id)
{
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
        if (!p->ext[i].path) {
            if (free_slot < 0)
                free_slot = (int)i;
            continue;
        }
        char why[200];
        if (strcmp(p->ext[i].path, real) == 0 && p->ext[i].size == (uint64_t)st.st_size &&
            p->ext[i].io && !cb_txn_external_changed(&p->ext[i], why, sizeof why)) {
            *id = i + 1;
            *size = p->ext[i].size;
            return 0;
        }
    }
    if (free_slot < 0)
        return CB_ETOOMANY;
    struct cb_external *x = &p->ext[free_slot];
    int rc = cb_file_open(real, CB_IO_READONLY, &x->io);
    if (rc)
        return rc == CB_ENOMEM ? rc : CB_EEXTERNAL;
    cb_txn_stamp_external(x, &st); /* what the file is now (meta.h) */
    if (!(x->path = strdup(real))) {
        x->io->ops->close(x->io);
        x->io = NULL;
        return CB_ENOMEM;
    }
    x->size = (uint64_t)st.st_size;
    x->page = 0;
    x->dirty = 1;
    p->meta_changed = 1;
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
    int rc = cb_pool_enter(p, MUTATE);
    if (rc)
        return rc;
    if (cb_pool_find(p, name))
        return cb_pool_leave(p, CB_EEXIST);
    uint32_t ext = 0;
    uint64_t esize = 0;
    if (external_path && (rc = add_external(p, external_path, &esize, &ext)))
        return cb_pool_leave(p, rc);
    if (size == 0)
        size = (esize + 511) / 512 * 512;
    if (size == 0 || size > CB_MAX_DEV_SIZE)
        return cb_pool_leave(p, CB_EINVAL);
    struct cb_devrec *d;
    if ((rc = new_rec(p, name, &d)))
        return cb_pool_leave(p, rc);
    set_geometry(p, d, size);
    d->external_id = ext;
    d->birth_time = d->snap_time = p->map.now;
    return cb_pool_leave(p, cb_txn_maybe_commit(p));
}

int cb_pool_snapshot(cb_pool *p, const char *source, const char *name, unsigned dev_flags)
{
    if (!valid_name(name) || !source || (dev_flags & ~CB_DEV_READONLY))
        return CB_EINVAL;
    int rc = cb_pool_enter(p, MUTATE);
    if (rc)
        return rc;
    struct cb_devrec *s = cb_pool_find(p, source), *d;
    if (!s)
        return cb_pool_leave(p, CB_ENOENT);
    if (cb_pool_find(p, name))
        return cb_pool_leave(p, CB_EEXIST);
    if (p->map.now == UINT32_MAX)
        return cb_pool_leave(p, CB_ETOOMANY);
    if ((rc = new_rec(p, name, &d)))
        return cb_pool_leave(p, rc);
    /* O(1): share the root; both sides treat older entries as shared */
    uint32_t t = ++p->map.now;
    set_geometry(p, d, s->size);
    d->flags = dev_flags;
    d->external_id = s->external_id;
    d->origin_id = s->id;
    d->root = s->root;
    if (d->root)
        d->root->rc++;
    d->birth_time = d->snap_time = t;
    s->snap_time = t;
    cb_pool_devdirty(p, s);
    return cb_pool_leave(p, cb_txn_maybe_commit(p));
}

static void drop_external_if_unused(struct cb_pool *p, uint32_t id)
{
    if (!id)
        return;
    for (unsigned i = 0; i < p->ndevslots; i++)
        if (p->devs[i] && p->devs[i]->external_id == id)
            return;
    struct cb_external *x = &p->ext[id - 1];
    if (x->page)
        cb_pm_free(&p->pm, x->page);
    if (x->io)
        x->io->ops->close(x->io);
    free(x->path);
    memset(x, 0, sizeof *x);
    p->meta_changed = 1;
}

int cb_pool_delete(cb_pool *p, const char *name)
{
    if (!name)
        return CB_EINVAL;
    int rc = cb_pool_enter(p, MUTATE);
    if (rc)
        return rc;
    struct cb_devrec *d = cb_pool_find(p, name);
    if (!d)
        return cb_pool_leave(p, CB_ENOENT);
    rc = cb_node_put(&p->map, d->root);
    d->root = NULL;
    cb_pool_devdirty(p, d);
    p->devs[d->slot] = NULL;
    p->ndevs--;
    while (p->ndevslots && !p->devs[p->ndevslots - 1])
        p->ndevslots--;
    drop_external_if_unused(p, d->external_id);
    d->deleted = 1;
    if (d->handles == 0)
        free(d);
    if (rc) {
        p->failed = rc; /* counts disagreed with the trees: stop writing */
        return cb_pool_leave(p, rc);
    }
    return cb_pool_leave(p, cb_txn_maybe_commit(p));
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
    int rc = cb_pool_enter(p, SHARED);
    if (rc)
        return rc;
    size_t k = 0;
    for (unsigned i = 0; i < p->ndevslots; i++) {
        if (!p->devs[i])
            continue;
        if (k < n)
            fill_info(p->devs[i], &out[k]);
        k++;
    }
    *count = k;
    return cb_pool_leave(p, 0);
}

int cb_pool_info(cb_pool *p, const char *name, cb_devinfo *out)
{
    if (!name)
        return CB_EINVAL;
    int rc = cb_pool_enter(p, SHARED);
    if (rc)
        return rc;
    struct cb_devrec *d = cb_pool_find(p, name);
    if (!d)
        return cb_pool_leave(p, CB_ENOENT);
    fill_info(d, out);
    return cb_pool_leave(p, 0);
}

int cb_pool_external_path(cb_pool *p, uint32_t id, char *buf, size_t len)
{
    if (id == 0 || id > CB_MAX_EXTERNALS || !buf || len == 0)
        return CB_EINVAL;
    int rc = cb_pool_enter(p, SHARED);
    if (rc)
        return rc;
    if (!p->ext[id - 1].path)
        return cb_pool_leave(p, CB_ENOENT);
    snprintf(buf, len, "%s", p->ext[id - 1].path);
    return cb_pool_leave(p, strlen(p->ext[id - 1].path) < len ? 0 : CB_EINVAL);
}

int cb_pool_uuid(cb_pool *p, uint8_t out[16])
{
    if (!out)
        return CB_EINVAL;
    int rc = cb_pool_enter(p, SHARED);
    if (rc)
        return rc;
    memcpy(out, p->uuid, 16);
    return cb_pool_leave(p, 0);
}

int cb_pool_usage(cb_pool *p, cb_usage *out, size_t n, size_t *count)
{
    int rc = cb_pool_enter(p, EXCLUSIVE); /* the walk uses scratch fields of nodes */
    return rc ? rc : cb_pool_leave(p, cb_thin_usage(p, out, n, count));
}

int cb_pool_check(cb_pool *p, int repair, cb_check *out, char *buf, size_t len)
{
    int rc = cb_pool_enter(p, repair ? MUTATE : EXCLUSIVE);
    return rc ? rc : cb_pool_leave(p, cb_check_run(p, repair, out, buf, len));
}

int cb_pool_set_keep(cb_pool *p, uint64_t max_blocks)
{
    int rc = cb_pool_enter(p, MUTATE);
    if (rc)
        return rc;
    p->keep_max = max_blocks < p->nblocks ? max_blocks : p->nblocks;
    cb_txn_trim_kept(p, p->keep_max);
    return cb_pool_leave(p, 0);
}

int cb_pool_scrub(cb_pool *p, cb_scrub *progress, cb_scrub_bad *bad, size_t n, size_t *count)
{
    if (!progress || !count || (!bad && n))
        return CB_EINVAL;
    return cb_scrub_run(p, progress, bad, n, count); /* takes the lock itself */
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
    int rc = cb_pool_enter(p, EXCLUSIVE);
    if (rc)
        return rc;
    struct cb_devrec *d = cb_pool_find(p, name);
    if (!d)
        return cb_pool_leave(p, CB_ENOENT);
    struct cb_dev *h = calloc(1, sizeof *h);
    if (!h)
        return cb_pool_leave(p, CB_ENOMEM);
    h->pool = p;
    h->rec = d;
    d->handles++;
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED); /* dropped by cb_dev_close */
    h->next = p->handles;
    if (p->handles)
        p->handles->prev = h;
    p->handles = h;
    *out = h;
    return cb_pool_leave(p, 0);
}

void cb_dev_close(cb_dev *h)
{
    if (!h)
        return;
    struct cb_pool *p = h->pool;
    pthread_rwlock_wrlock(&p->lock);
    if (h->rec) { /* still attached: the pool is not closed */
        if (h->prev)
            h->prev->next = h->next;
        else
            p->handles = h->next;
        if (h->next)
            h->next->prev = h->prev;
        if (--h->rec->handles == 0 && h->rec->deleted)
            free(h->rec);
    }
    pthread_rwlock_unlock(&p->lock);
    free(h);
    pool_unref(p);
}

/* Enter for an operation on a device: live, and writable if asked. */
static int dev_enter(cb_dev *h, int mode)
{
    int rc = cb_pool_enter(h->pool, mode);
    if (rc)
        return rc;
    if (h->rec->deleted)
        return cb_pool_leave(h->pool, CB_ENOENT);
    if (mode == MUTATE && (h->rec->flags & CB_DEV_READONLY))
        return cb_pool_leave(h->pool, CB_EROFS);
    return 0;
}

static int in_range(const struct cb_devrec *d, uint64_t len, uint64_t off)
{
    return off <= d->size && len <= d->size - off;
}

int cb_dev_info(cb_dev *h, cb_devinfo *out)
{
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    fill_info(h->rec, out);
    return cb_pool_leave(h->pool, 0);
}

int cb_dev_read(cb_dev *h, void *buf, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, SHARED);
    if (rc)
        return rc;
    if (!in_range(h->rec, len, off) || (!buf && len))
        return cb_pool_leave(h->pool, CB_EINVAL);
    rc = cb_thin_read(h->pool, h->rec, buf, len, off);
    __atomic_fetch_add(&h->pool->st.reads, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->pool->st.bytes_read, len, __ATOMIC_RELAXED);
    return cb_pool_leave(h->pool, rc);
}

int cb_dev_write(cb_dev *h, const void *buf, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    if (!in_range(h->rec, len, off) || (!buf && len))
        return cb_pool_leave(p, CB_EINVAL);
    rc = cb_thin_write(p, h->rec, buf, len, off);
    p->st.writes++;
    p->st.bytes_written += len;
    if (!rc)
        rc = cb_txn_maybe_commit(p);
    return cb_pool_leave(p, rc);
}

int cb_dev_discard(cb_dev *h, uint64_t len, uint64_t off)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    if (!in_range(h->rec, len, off))
        return cb_pool_leave(h->pool, CB_EINVAL);
    rc = cb_thin_discard(h->pool, h->rec, len, off);
    if (!rc)
        rc = cb_txn_maybe_commit(h->pool);
    return cb_pool_leave(h->pool, rc);
}

int cb_dev_flush(cb_dev *h)
{
    int rc = dev_enter(h, EXCLUSIVE);
    return rc ? rc : cb_pool_leave(h->pool, cb_txn_commit(h->pool));
}

static int blocks_in_range(struct cb_pool *p, const struct cb_devrec *d,
                           const uint64_t *idx, size_t n)
{
    uint64_t whole = d->size >> p->block_shift; /* blocks lying wholly inside */
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
    if ((n && (!idx || !buf)) || !blocks_in_range(p, h->rec, idx, n))
        return cb_pool_leave(p, CB_EINVAL);
    char *dst = buf;
    for (size_t i = 0; i < n && !rc; i++)
        rc = cb_thin_read(p, h->rec, dst + i * (size_t)p->block_size, p->block_size,
                          idx[i] << p->block_shift);
    __atomic_fetch_add(&p->st.reads, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&p->st.bytes_read, n * (uint64_t)p->block_size, __ATOMIC_RELAXED);
    return cb_pool_leave(p, rc);
}

int cb_dev_write_blocks(cb_dev *h, const uint64_t *idx, size_t n, const void *buf)
{
    int rc = dev_enter(h, MUTATE);
    if (rc)
        return rc;
    struct cb_pool *p = h->pool;
    if ((n && (!idx || !buf)) || !blocks_in_range(p, h->rec, idx, n))
        return cb_pool_leave(p, CB_EINVAL);
    const char *src = buf;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = cb_thin_write(p, h->rec, src + i * (size_t)p->block_size, p->block_size,
                           idx[i] << p->block_shift);
        p->st.writes++;
        p->st.bytes_written += p->block_size;
    }
    if (!rc)
        rc = cb_txn_maybe_commit(p);
    return cb_pool_leave(p, rc);
}

int cb_dev_changed(cb_dev *h, uint8_t *bits, size_t nbytes)
{
    if (!bits && nbytes)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : cb_pool_leave(h->pool, cb_thin_changed(h->pool, h->rec, bits, nbytes));
}

int cb_dev_extents(cb_dev *h, uint64_t *pairs, size_t n, size_t *count)
{
    if ((!pairs && n) || !count)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : cb_pool_leave(h->pool, cb_thin_extents(h->pool, h->rec, 0, UINT64_MAX,
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
        return cb_pool_leave(h->pool, CB_EINVAL);
    return cb_pool_leave(h->pool, cb_thin_extents(h->pool, h->rec, first, first + nblocks,
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
        return cb_pool_leave(h->pool, CB_ENOENT);
    return cb_pool_leave(h->pool, cb_thin_delta(h->pool, h->rec, base ? base->rec : NULL,
                                                start, out, n, count, next));
}

int cb_dev_usage(cb_dev *h, cb_usage *out)
{
    if (!out)
        return CB_EINVAL;
    int rc = dev_enter(h, SHARED);
    return rc ? rc : cb_pool_leave(h->pool, cb_thin_dev_usage(h->pool, h->rec, out));
}
