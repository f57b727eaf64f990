/*
 * scrub.c - read back every data block some device reads and verify it.
 *
 * 1. Walk every device's tree once per distinct node (shared nodes are
 *    skipped the second time through a pointer set) and note, per data
 *    block, which sub-blocks some entry reads from it: the bitmap of an
 *    entry naming it as its block, all of them for an origin.
 * 2. Read those sub-blocks in data-file order, coalesced per block, and
 *    verify them (cb_thin_data_read); a failed run is verified again one
 *    sub-block at a time so that each damaged sub-block is named.
 * 3. For the damaged ones (as many as the caller has room for), find the
 *    devices that read them: the first one names the place.
 *
 * Runs under the pool's shared lock; the caller's cb_scrub is updated with
 * atomic stores so another thread may watch it and set cancel.
 */
#include "scrub.h"
#include "thin.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BIT(s) (1ull << (s))

/* Per-block masks of the sub-blocks read, in chunks allocated on use. */
struct masks {
    uint64_t **chunk;
    uint64_t nchunks;
};

static int mask_or(struct masks *m, uint64_t b, uint64_t bits)
{
    uint64_t ci = b / CB_SM_CHUNK;
    if (ci >= m->nchunks)
        return CB_ECORRUPT;
    if (!m->chunk[ci] && !(m->chunk[ci] = calloc(CB_SM_CHUNK, sizeof(uint64_t))))
        return CB_ENOMEM;
    m->chunk[ci][b % CB_SM_CHUNK] |= bits;
    return 0;
}

/* Open-addressed set of node pointers. */
struct seen {
    const struct cb_node **v;
    size_t cap;
};

static int seen_add(struct seen *s, const struct cb_node *n)
{
    size_t i = ((uintptr_t)n >> 4) * 0x9E3779B97F4A7C15ull & (s->cap - 1);
    while (s->v[i]) {
        if (s->v[i] == n)
            return 0;
        i = (i + 1) & (s->cap - 1);
    }
    s->v[i] = n;
    return 1;
}

static int mark_walk(struct cb_pool *p, const struct cb_node *n, struct seen *s, struct masks *m)
{
    if (!n || !seen_add(s, n))
        return 0;
    int rc = 0;
    if (n->level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES && !rc; i++) {
            const struct cb_entry *e = &n->u.e[i];
            if (e->flags & CB_E_MAPPED)
                rc = mask_or(m, e->block, e->bitmap);
            if (!rc && (e->flags & CB_E_ORIGIN))
                rc = mask_or(m, e->origin, p->full_bitmap & ~e->bitmap);
        }
        return rc;
    }
    for (unsigned i = 0; i < CB_NODE_FANOUT && !rc; i++)
        rc = mark_walk(p, n->u.c[i], s, m);
    return rc;
}

/* Does entry e read sub-block s from data block b? */
static int reads_from(const struct cb_entry *e, uint64_t b, unsigned s)
{
    if ((e->flags & CB_E_MAPPED) && e->block == b && (e->bitmap & BIT(s)))
        return 1;
    return (e->flags & CB_E_ORIGIN) && e->origin == b && !(e->bitmap & BIT(s));
}

/* First virtual block of the tree under n that reads (b, s), or UINT64_MAX. */
static uint64_t find_reader(const struct cb_node *n, unsigned level, uint64_t base,
                            uint64_t b, unsigned s)
{
    if (!n)
        return UINT64_MAX;
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++)
            if (reads_from(&n->u.e[i], b, s))
                return base + i;
        return UINT64_MAX;
    }
    uint64_t span = cb_map_span(level);
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++) {
        uint64_t v = find_reader(n->u.c[i], level - 1, base + i * span, b, s);
        if (v != UINT64_MAX)
            return v;
    }
    return UINT64_MAX;
}

static void name_readers(struct cb_pool *p, cb_scrub_bad *x)
{
    unsigned s = (unsigned)(x->offset / p->sub_size); /* sub-block index, for now */
    x->name[0] = 0;
    x->ndevices = 0;
    uint64_t where = 0;
    for (unsigned i = 0; i < p->ndevslots; i++) {
        const struct cb_devrec *d = p->devs[i];
        if (!d)
            continue;
        uint64_t v = find_reader(d->root, d->depth, 0, x->block, s);
        if (v == UINT64_MAX)
            continue;
        if (x->ndevices++ == 0) {
            memcpy(x->name, d->name, sizeof x->name);
            where = (v << p->block_shift) + (uint64_t)s * p->sub_size;
        }
    }
    x->offset = where;
}

static void add(uint64_t *field, uint64_t k)
{
    __atomic_fetch_add(field, k, __ATOMIC_RELAXED);
}

/* Record one damaged sub-block (its index in offset until named). */
static void found(struct cb_pool *p, cb_scrub *pr, cb_scrub_bad *bad, size_t n,
                  size_t *count, uint64_t b, unsigned s, int err)
{
    if (*count < n) {
        cb_scrub_bad *x = &bad[*count];
        memset(x, 0, sizeof *x);
        x->block = b;
        x->offset = (uint64_t)s * p->sub_size;
        x->length = p->sub_size;
        x->error = err;
    }
    (*count)++;
    add(&pr->bad, 1);
}

/* Read sub-blocks [s, t] of block b (one run), sub-block by sub-block if
 * the run as a whole fails. */
static int scrub_run(struct cb_pool *p, cb_scrub *pr, char *buf, uint64_t b, unsigned s,
                     unsigned t, cb_scrub_bad *bad, size_t n, size_t *count)
{
    uint32_t sub = p->sub_size;
    uint64_t off = (b << p->block_shift) + (uint64_t)s * sub;
    size_t len = (size_t)(t - s + 1) * sub;
    int rc = cb_thin_data_read(p, buf, len, off, 0);
    if (rc == CB_ENOMEM)
        return rc;
    for (unsigned k = s; rc && k <= t; k++) {
        int r = cb_thin_data_read(p, buf, sub, (b << p->block_shift) + (uint64_t)k * sub, 0);
        if (r == CB_ENOMEM)
            return r;
        if (r)
            found(p, pr, bad, n, count, b, k, r);
    }
    add(&pr->done_bytes, len);
    return 0;
}

int cb_scrub_run(struct cb_pool *p, cb_scrub *pr, cb_scrub_bad *bad, size_t n, size_t *count)
{
    struct masks m = {NULL, p->sm.nchunks};
    size_t cap = 64;
    while (cap < 2 * p->map.nnodes + 2)
        cap *= 2;
    struct seen seen = {calloc(cap, sizeof(struct cb_node *)), cap};
    m.chunk = calloc(m.nchunks ? m.nchunks : 1, sizeof *m.chunk);
    char *buf = NULL;
    int rc = seen.v && m.chunk ? 0 : CB_ENOMEM;
    *count = 0;
    __atomic_store_n(&pr->checksums, p->csum_on, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < p->ndevslots && !rc; i++)
        if (p->devs[i])
            rc = mark_walk(p, p->devs[i]->root, &seen, &m);
    free(seen.v);
    if (!rc && posix_memalign((void **)&buf, 4096, p->block_size))
        rc = CB_ENOMEM;
    uint64_t total = 0;
    for (uint64_t ci = 0; ci < m.nchunks && !rc; ci++)
        for (uint64_t i = 0; m.chunk[ci] && i < CB_SM_CHUNK; i++)
            total += (uint64_t)__builtin_popcountll(m.chunk[ci][i]) * p->sub_size;
    __atomic_store_n(&pr->total_bytes, total, __ATOMIC_RELAXED);
    for (uint64_t ci = 0; ci < m.nchunks && !rc; ci++) {
        for (uint64_t i = 0; m.chunk[ci] && i < CB_SM_CHUNK && !rc; i++) {
            uint64_t bits = m.chunk[ci][i];
            if (!bits)
                continue;
            if (__atomic_load_n(&pr->cancel, __ATOMIC_RELAXED)) {
                rc = -ECANCELED;
                break;
            }
            uint64_t b = ci * CB_SM_CHUNK + i;
            for (unsigned s = 0; s < p->nsub && !rc; s++) {
                if (!(bits & BIT(s)))
                    continue;
                unsigned t = s;
                while (t + 1 < p->nsub && (bits & BIT(t + 1)))
                    t++;
                rc = scrub_run(p, pr, buf, b, s, t, bad, n, count);
                s = t;
            }
            add(&pr->blocks, 1);
        }
    }
    for (size_t k = 0; k < *count && k < n && !rc; k++)
        name_readers(p, &bad[k]);
    free(buf);
    for (uint64_t ci = 0; m.chunk && ci < m.nchunks; ci++)
        free(m.chunk[ci]);
    free(m.chunk);
    return rc;
}
