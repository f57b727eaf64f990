/*
 * scrub.c - read back every data block some device reads and verify it.
 *
 * 1. Walk every device's tree once per distinct node (shared nodes are
 *    skipped the second time through a pointer set) and note, per data
 *    block, which sub-blocks some entry reads from it: the bitmap of an
 *    entry naming it as its block, all of them for an origin.
 * 2. Read those sub-blocks in data-file order, coalesced per block, and
 *    verify them (cb_thin_data_read); a failed run is verified again one
 *    sub-block at a time so that each damaged sub-block is named, with the
 *    devices that read it now (the first one names the place).
 *
 * Online: the walk runs under the pool's lock, shared; the reads run under
 * it again for a slice of blocks at a time (SLICE bytes), the pool layer
 * taking and releasing it around each step (scrub.h), so writers wait for
 * one slice at most.  Between slices the pool may change, so a slice skips
 * blocks freed since the walk, and a sub-block that fails is reported only
 * if some device still reads it (a block freed and reused may hold stale
 * sub-blocks that no entry shows); blocks allocated since the walk are not
 * read (they were just written).  The caller's cb_scrub is updated with
 * atomic stores so another thread may watch it and set cancel; with
 * rate_limit set, the scrub sleeps between slices to stay under it.
 */
#include "scrub.h"
#include "thin.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLICE (4u << 20) /* bytes of blocks read per lock hold */

#define BIT(s) (1ull << (s))

/* Note that sub-blocks `bits` of block b are read by some entry. */
static int mask_or(struct cb_tally *m, uint64_t b, uint64_t bits)
{
    uint64_t *slot;
    int rc = cb_tally_at(m, b, &slot);
    if (!rc)
        *slot |= bits;
    return rc;
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

static int mark_walk(struct cb_store *p, const struct cb_node *n, struct seen *s, struct cb_tally *m)
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

static void name_readers(struct cb_store *p, cb_scrub_bad *x)
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

/* Record one damaged sub-block, with the devices that read it now; one no
 * device reads is not damage (see the top of this file). */
static void found(struct cb_store *p, cb_scrub *pr, cb_scrub_bad *bad, size_t n,
                  size_t *count, uint64_t b, unsigned s, int err)
{
    cb_scrub_bad x;
    memset(&x, 0, sizeof x);
    x.block = b;
    x.offset = (uint64_t)s * p->sub_size;
    x.length = p->sub_size;
    x.error = err;
    name_readers(p, &x);
    if (x.ndevices == 0)
        return;
    if (*count < n)
        bad[*count] = x;
    (*count)++;
    add(&pr->bad, 1);
}

/* Read sub-blocks [s, t] of block b (one run), sub-block by sub-block if
 * the run as a whole fails. */
static int scrub_run(struct cb_store *p, cb_scrub *pr, char *buf, uint64_t b, unsigned s,
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

static void pace(const cb_scrub *pr, const struct timespec *t0)
{
    uint64_t rate = __atomic_load_n(&pr->rate_limit, __ATOMIC_RELAXED);
    if (!rate)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double spent = (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
    double due = (double)__atomic_load_n(&pr->done_bytes, __ATOMIC_RELAXED) / (double)rate;
    if (due > spent) {
        double wait = due - spent > 1.0 ? 1.0 : due - spent; /* cancel stays responsive */
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Read and verify the blocks of [from, to) that the walk marked and that
 * are still in use.  Caller holds the lock shared. */
static int scrub_slice(struct cb_store *p, cb_scrub *pr, struct cb_tally *m, char *buf,
                       uint64_t from, uint64_t to, cb_scrub_bad *bad, size_t n, size_t *count)
{
    int rc = 0;
    for (uint64_t b = from; b < to && !rc; b++) {
        uint64_t bits = cb_tally_get(m, b);
        if (!bits)
            continue;
        if (cb_sm_rc(&p->sm, b) == 0) { /* freed since the walk */
            add(&pr->done_bytes, (uint64_t)__builtin_popcountll(bits) * p->sub_size);
            continue;
        }
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
    return rc;
}

struct cb_scrubber {
    struct cb_store *p;
    cb_scrub *pr;
    struct cb_tally m;    /* sub-blocks to read, per data block */
    char *buf;            /* a block */
    struct timespec t0;   /* start, for the rate limit */
    uint64_t from, nblocks, slice;
};

void cb_scrub_end(struct cb_scrubber *x)
{
    if (!x)
        return;
    free(x->buf);
    cb_tally_free(&x->m);
    free(x);
}

int cb_scrub_begin(struct cb_store *p, cb_scrub *pr, struct cb_scrubber **out)
{
    CB_MUST_READ(p);
    *out = NULL;
    struct cb_scrubber *x = calloc(1, sizeof *x);
    if (!x)
        return CB_ENOMEM;
    x->p = p;
    x->pr = pr;
    clock_gettime(CLOCK_MONOTONIC, &x->t0);
    struct seen seen = {NULL, 0};
    size_t cap = 64;
    while (cap < 2 * p->map.nnodes + 2)
        cap *= 2;
    seen.v = calloc(cap, sizeof(struct cb_node *));
    seen.cap = cap;
    int rc = 0;
    if (!seen.v || cb_tally_init(&x->m, p->nblocks) ||
        posix_memalign((void **)&x->buf, 4096, p->block_size))
        rc = CB_ENOMEM;
    __atomic_store_n(&pr->checksums, p->csum_on, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < p->ndevslots && !rc; i++)
        if (p->devs[i])
            rc = mark_walk(p, p->devs[i]->root, &seen, &x->m);
    free(seen.v);
    uint64_t total = 0;
    for (uint64_t ci = 0; ci < x->m.nchunks && !rc; ci++)
        for (uint64_t i = 0; x->m.chunk[ci] && i < CB_SM_CHUNK; i++)
            total += (uint64_t)__builtin_popcountll(x->m.chunk[ci][i]) * p->sub_size;
    __atomic_store_n(&pr->total_bytes, total, __ATOMIC_RELAXED);
    x->nblocks = p->nblocks;
    x->slice = SLICE / p->block_size ? SLICE / p->block_size : 1;
    if (rc) {
        cb_scrub_end(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* Skip the chunks the walk marked nothing in; is there a slice left? */
int cb_scrub_more(struct cb_scrubber *x)
{
    while (x->from < x->nblocks) {
        uint64_t ci = x->from / CB_SM_CHUNK;
        if (x->m.chunk[ci])
            return 1;
        x->from = (ci + 1) * CB_SM_CHUNK;
    }
    return 0;
}

int cb_scrub_cancelled(const struct cb_scrubber *x)
{
    return __atomic_load_n(&x->pr->cancel, __ATOMIC_RELAXED) ? -ECANCELED : 0;
}

int cb_scrub_slice(struct cb_scrubber *x, cb_scrub_bad *bad, size_t n, size_t *count)
{
    CB_MUST_READ(x->p);
    uint64_t to = x->from + x->slice < x->nblocks ? x->from + x->slice : x->nblocks;
    int rc = scrub_slice(x->p, x->pr, &x->m, x->buf, x->from, to, bad, n, count);
    x->from = to;
    return rc;
}

void cb_scrub_pace(const struct cb_scrubber *x)
{
    pace(x->pr, &x->t0);
}
