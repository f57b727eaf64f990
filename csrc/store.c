/*
 * store.c - the in-memory state of an open pool (store.h): setting it up,
 * tearing it down, the device table's lookups, and the record of who holds
 * the pool lock that debug builds assert against.
 *
 * Invariants (asserted by cb_store_consistent in debug builds):
 *  1. ndevs records sit in devs[0 .. ndevslots), each at devs[d->slot].
 *  2. No record in the table is marked deleted.
 *  3. The space map counts at most nblocks busy blocks.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void cb_store_init(struct cb_store *s)
{
    memset(s, 0, sizeof *s);
    s->map.sm = &s->sm;
    s->map.pm = &s->pm;
}

void cb_store_destroy(struct cb_store *s)
{
    if (s->devs) {
        for (unsigned i = 0; i < CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS; i++) {
            struct cb_devrec *d = s->devs[i];
            if (!d)
                continue;
            cb_node_put(&s->map, d->root);
            free(d);
        }
        free(s->devs);
        s->devs = NULL;
    }
    s->ndevs = s->ndevslots = 0;
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++) {
        free(s->ext[i].path);
        if (s->ext[i].io)
            s->ext[i].io->ops->close(s->ext[i].io);
        memset(&s->ext[i], 0, sizeof s->ext[i]);
    }
    cb_sm_destroy(&s->sm);
    cb_pm_destroy(&s->pm);
    cb_csum_destroy(&s->csum);
    cb_u64vec_free(&s->freelog_pages);
    cb_u64vec_free(&s->held);
    cb_datafile_close(&s->data);
    if (s->meta)
        s->meta->ops->close(s->meta); /* drops the flock */
    s->meta = NULL;
    free(s->zero);
    free(s->scratch);
    s->zero = NULL;
    s->scratch = NULL;
}

int cb_store_geometry(struct cb_store *s, uint32_t block_size, uint64_t nblocks, int csum_on)
{
    cb_geometry_set(&s->geo, block_size, nblocks, csum_on);
    s->data.block_shift = s->block_shift;
    s->zero = calloc(1, s->block_size);
    if (posix_memalign(&s->scratch, 4096, s->block_size))
        s->scratch = NULL;
    return s->zero && s->scratch ? 0 : CB_ENOMEM;
}

struct cb_devrec *cb_store_find(struct cb_store *s, const char *name)
{
    CB_MUST_READ(s);
    for (unsigned i = 0; i < s->ndevslots; i++)
        if (s->devs[i] && strcmp(s->devs[i]->name, name) == 0)
            return s->devs[i];
    return NULL;
}

void cb_store_devdirty(struct cb_store *s, struct cb_devrec *d)
{
    CB_MUST_WRITE(s);
    s->devpages[d->slot / CB_DEVTAB_RECS].dirty = 1;
    s->meta_changed = 1;
}

void cb_store_stamp_external(struct cb_external *x, const struct stat *st)
{
    struct stat now;
    int fd = cb_file_fd(x->io);
    if (fd >= 0 && fstat(fd, &now) == 0)
        st = &now; /* the file opened, not what the path named a moment before */
    x->why[0] = 0;
    x->stamped = S_ISREG(st->st_mode) ? CB_EXT_STAMPED : 0; /* a device node's say nothing */
    x->ino = (uint64_t)st->st_ino;
    x->mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
}

int cb_store_external_changed(const struct cb_external *x, char *why, size_t len)
{
    struct stat st;
    why[0] = 0;
    if (!x->stamped)
        return 0;
    if (stat(x->path, &st) != 0) {
        snprintf(why, len, "external origin '%.120s' is missing or cannot be read", x->path);
        return 1;
    }
    uint64_t mt = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    if ((uint64_t)st.st_size == x->size && (uint64_t)st.st_ino == x->ino && mt == x->mtime_ns)
        return 0;
    int n = snprintf(why, len, "external origin '%.100s' changed since it was attached:",
                     x->path);
    const char *sep = "";
    if ((uint64_t)st.st_size != x->size && n >= 0 && (size_t)n < len) {
        n += snprintf(why + n, len - (size_t)n, " size %llu, was %llu",
                      (unsigned long long)st.st_size, (unsigned long long)x->size);
        sep = ";";
    }
    if ((uint64_t)st.st_ino != x->ino && n >= 0 && (size_t)n < len) {
        n += snprintf(why + n, len - (size_t)n, "%s inode %llu, was %llu (replaced)", sep,
                      (unsigned long long)st.st_ino, (unsigned long long)x->ino);
        sep = ";";
    }
    if (mt != x->mtime_ns && n >= 0 && (size_t)n < len)
        snprintf(why + n, len - (size_t)n, "%s modified %lld.%09lld, was %lld.%09lld", sep,
                 (long long)(mt / 1000000000ull), (long long)(mt % 1000000000ull),
                 (long long)(x->mtime_ns / 1000000000ull),
                 (long long)(x->mtime_ns % 1000000000ull));
    return 1;
}

#ifndef NDEBUG
/* The store this thread holds the pool lock of, shared (a thread holds at
 * most one pool's lock at a time: no call enters a second pool). */
static __thread const struct cb_store *reading;

void cb_holder_wrlocked(struct cb_store *s)
{
    __atomic_store_n(&s->holder.writer, pthread_self(), __ATOMIC_RELAXED);
    __atomic_store_n(&s->holder.writing, 1, __ATOMIC_RELEASE);
}

void cb_holder_rdlocked(struct cb_store *s)
{
    assert(reading == NULL); /* no thread takes two pool locks */
    reading = s;
}

void cb_holder_unlocking(struct cb_store *s)
{
    if (reading == s) {
        reading = NULL;
        return;
    }
    assert(cb_holder_writer(s)); /* only the holder releases the lock */
    __atomic_store_n(&s->holder.writing, 0, __ATOMIC_RELEASE);
}

int cb_holder_writer(const struct cb_store *s)
{
    return __atomic_load_n(&s->holder.writing, __ATOMIC_ACQUIRE) &&
           pthread_equal(__atomic_load_n(&s->holder.writer, __ATOMIC_RELAXED), pthread_self());
}

int cb_holder_reader(const struct cb_store *s)
{
    return reading == s || cb_holder_writer(s);
}

int cb_store_consistent(const struct cb_store *s)
{
    unsigned n = 0;
    if (s->ndevslots > CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS)
        return 0;
    for (unsigned i = 0; i < s->ndevslots; i++) {
        const struct cb_devrec *d = s->devs[i];
        if (!d)
            continue;
        if (d->slot != i || d->deleted)
            return 0;
        n++;
    }
    if (n != s->ndevs)
        return 0;
    return s->sm.busy <= s->sm.nblocks;
}
#endif
