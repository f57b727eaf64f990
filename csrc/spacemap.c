/*
 * spacemap.c - see spacemap.h.
 *
 * Invariants (checked by cb_pool_check):
 *  1. busy bit set  <=>  rc > 0, or the block is on the pending list, or
 *     its held bit is set.
 *  2. nbusy of a chunk and sm->busy equal the number of busy bits.
 *  3. A block on the pending list, or held, has rc == 0.
 */
#include "spacemap.h"
#include "cowblock.h"

#include <stdlib.h>
#include <string.h>

int cb_u64vec_push(struct cb_u64vec *vec, uint64_t x)
{
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 64;
        uint64_t *v = realloc(vec->v, cap * sizeof *v);
        if (!v)
            return CB_ENOMEM;
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = x;
    return 0;
}

void cb_u64vec_free(struct cb_u64vec *vec)
{
    free(vec->v);
    memset(vec, 0, sizeof *vec);
}

int cb_sm_init(struct cb_spacemap *sm, uint64_t nblocks)
{
    memset(sm, 0, sizeof *sm);
    sm->nblocks = nblocks;
    sm->nchunks = (nblocks + CB_SM_CHUNK - 1) / CB_SM_CHUNK;
    sm->chunks = calloc(sm->nchunks ? sm->nchunks : 1, sizeof *sm->chunks);
    return sm->chunks ? 0 : CB_ENOMEM;
}

void cb_sm_destroy(struct cb_spacemap *sm)
{
    if (sm->chunks)
        for (uint64_t i = 0; i < sm->nchunks; i++)
            free(sm->chunks[i]);
    free(sm->chunks);
    cb_u64vec_free(&sm->pending);
    cb_u64vec_free(&sm->fresh);
    cb_u64vec_free(&sm->kept);
    memset(sm, 0, sizeof *sm);
}

static struct cb_sm_chunk *chunk_get(struct cb_spacemap *sm, uint64_t b)
{
    struct cb_sm_chunk **cp = &sm->chunks[b / CB_SM_CHUNK];
    if (!*cp)
        *cp = calloc(1, sizeof **cp);
    return *cp;
}

uint32_t cb_sm_rc(const struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return 0;
    const struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    return c ? c->rc[b % CB_SM_CHUNK] : 0;
}

static void set_busy(struct cb_spacemap *sm, struct cb_sm_chunk *c, uint64_t i)
{
    uint64_t m = 1ull << (i % 64);
    if (!(c->busy[i / 64] & m)) {
        c->busy[i / 64] |= m;
        c->nbusy++;
        sm->busy++;
    }
}

static void clear_busy(struct cb_spacemap *sm, struct cb_sm_chunk *c, uint64_t i)
{
    uint64_t m = 1ull << (i % 64);
    if (c->busy[i / 64] & m) {
        c->busy[i / 64] &= ~m;
        c->nbusy--;
        sm->busy--;
    }
}

int cb_sm_inc(struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return CB_ECORRUPT;
    struct cb_sm_chunk *c = chunk_get(sm, b);
    if (!c)
        return CB_ENOMEM;
    uint64_t i = b % CB_SM_CHUNK;
    if (c->rc[i] == UINT32_MAX)
        return CB_ECORRUPT;
    c->rc[i]++;
    set_busy(sm, c, i);
    return 0;
}

int cb_sm_dec(struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return CB_ECORRUPT;
    struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    uint64_t i = b % CB_SM_CHUNK;
    if (!c || c->rc[i] == 0)
        return CB_ECORRUPT;
    if (--c->rc[i] == 0)
        return cb_u64vec_push(&sm->pending, b);
    return 0;
}

static void take(struct cb_spacemap *sm, struct cb_sm_chunk *c, uint64_t base,
                 uint64_t i, uint64_t *out)
{
    uint64_t m = 1ull << (i % 64);
    if (c->kept[i / 64] & m) {
        c->kept[i / 64] &= ~m;
        sm->nkept--;
    }
    c->rc[i] = 1;
    set_busy(sm, c, i);
    *out = base + i;
    sm->cursor = base + i + 1 < sm->nblocks ? base + i + 1 : 0;
}

/* Fresh-block bookkeeping of an allocation just made. */
static int took(struct cb_spacemap *sm, struct cb_sm_chunk *c, uint64_t i, uint64_t b)
{
    if (sm->track_fresh) {
        if (cb_u64vec_push(&sm->fresh, b)) {
            cb_sm_unalloc(sm, b);
            return CB_ENOMEM;
        }
        c->fresh[i / 64] |= 1ull << (i % 64);
    }
    return 0;
}

int cb_sm_alloc(struct cb_spacemap *sm, uint64_t *out)
{
    if (sm->busy >= sm->nblocks)
        return CB_ENOSPC;
    while (sm->nkept && sm->kept.n) { /* kept blocks first (stale entries skipped) */
        uint64_t b = sm->kept.v[--sm->kept.n];
        struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
        uint64_t i = b % CB_SM_CHUNK;
        if (c && (c->kept[i / 64] >> (i % 64)) & 1 && !((c->busy[i / 64] >> (i % 64)) & 1)) {
            uint64_t cursor = sm->cursor;
            take(sm, c, b / CB_SM_CHUNK * CB_SM_CHUNK, i, out);
            sm->cursor = cursor; /* the scan goes on where it was */
            int rc = took(sm, c, i, b);
            if (rc)
                cb_sm_keep(sm, b); /* back where it was (the list has room: b just left it) */
            return rc;
        }
    }
    uint64_t b = sm->cursor < sm->nblocks ? sm->cursor : 0;
    /* One lap around the pool from the cursor, a chunk at a time; full
     * chunks are skipped by their count, busy words by their value. */
    for (uint64_t scanned = 0; scanned <= sm->nblocks;) {
        if (b >= sm->nblocks)
            b = 0;
        uint64_t base = b / CB_SM_CHUNK * CB_SM_CHUNK;
        uint64_t limit = sm->nblocks - base < CB_SM_CHUNK ? sm->nblocks - base : CB_SM_CHUNK;
        struct cb_sm_chunk *c = sm->chunks[base / CB_SM_CHUNK];
        if (!c || c->nbusy < limit) {
            if (!c && !(c = chunk_get(sm, base)))
                return CB_ENOMEM;
            for (uint64_t i = b - base; i < limit; i = (i / 64 + 1) * 64) {
                uint64_t bits = c->busy[i / 64] | ((1ull << (i % 64)) - 1);
                if (bits == UINT64_MAX)
                    continue;
                uint64_t j = i / 64 * 64 + (uint64_t)__builtin_ctzll(~bits);
                if (j >= limit)
                    break;
                take(sm, c, base, j, out);
                return took(sm, c, j, *out);
            }
        }
        scanned += base + limit - b;
        b = base + limit;
    }
    return CB_ENOSPC;
}

void cb_sm_unalloc(struct cb_spacemap *sm, uint64_t b)
{
    struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    uint64_t i = b % CB_SM_CHUNK;
    c->rc[i] = 0;
    c->fresh[i / 64] &= ~(1ull << (i % 64));
    clear_busy(sm, c, i);
}

int cb_sm_fresh(const struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return 0;
    const struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    uint64_t i = b % CB_SM_CHUNK;
    return c && (c->fresh[i / 64] >> (i % 64)) & 1;
}

int cb_sm_keep(struct cb_spacemap *sm, uint64_t b)
{
    struct cb_sm_chunk *c = b < sm->nblocks ? chunk_get(sm, b) : NULL;
    uint64_t i = b % CB_SM_CHUNK, m = 1ull << (i % 64);
    if (!c)
        return b < sm->nblocks ? CB_ENOMEM : CB_ECORRUPT;
    if ((c->kept[i / 64] & m) || (c->busy[i / 64] & m))
        return 0;
    int rc = cb_u64vec_push(&sm->kept, b);
    if (rc)
        return rc;
    c->kept[i / 64] |= m;
    sm->nkept++;
    return 0;
}

int cb_sm_kept(const struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return 0;
    const struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    uint64_t i = b % CB_SM_CHUNK;
    return c && (c->kept[i / 64] >> (i % 64)) & 1;
}

int cb_sm_unkeep_one(struct cb_spacemap *sm, uint64_t *out)
{
    while (sm->kept.n) {
        uint64_t b = sm->kept.v[--sm->kept.n];
        struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
        uint64_t i = b % CB_SM_CHUNK, m = 1ull << (i % 64);
        if (c && (c->kept[i / 64] & m)) {
            c->kept[i / 64] &= ~m;
            sm->nkept--;
            *out = b;
            return 1;
        }
    }
    return 0;
}

void cb_sm_forget_fresh(struct cb_spacemap *sm)
{
    for (size_t k = 0; k < sm->fresh.n; k++) {
        uint64_t b = sm->fresh.v[k];
        struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
        uint64_t i = b % CB_SM_CHUNK;
        if (c)
            c->fresh[i / 64] &= ~(1ull << (i % 64));
    }
    sm->fresh.n = 0;
}

void cb_sm_release_pending(struct cb_spacemap *sm)
{
    for (size_t k = 0; k < sm->pending.n; k++) {
        uint64_t b = sm->pending.v[k];
        struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
        uint64_t i = b % CB_SM_CHUNK;
        if (c && c->rc[i] == 0 && !((c->held[i / 64] >> (i % 64)) & 1))
            clear_busy(sm, c, i);
    }
    sm->pending.n = 0;
}

int cb_sm_hold(struct cb_spacemap *sm, uint64_t b)
{
    struct cb_sm_chunk *c = b < sm->nblocks ? chunk_get(sm, b) : NULL;
    if (!c)
        return b < sm->nblocks ? CB_ENOMEM : CB_ECORRUPT;
    uint64_t i = b % CB_SM_CHUNK, m = 1ull << (i % 64);
    if (c->rc[i])
        return CB_ECORRUPT;
    if (c->kept[i / 64] & m) {
        c->kept[i / 64] &= ~m;
        sm->nkept--;
    }
    if (!(c->held[i / 64] & m)) {
        c->held[i / 64] |= m;
        sm->nheld++;
    }
    set_busy(sm, c, i);
    return 0;
}

void cb_sm_unhold(struct cb_spacemap *sm, uint64_t b)
{
    struct cb_sm_chunk *c = b < sm->nblocks ? sm->chunks[b / CB_SM_CHUNK] : NULL;
    uint64_t i = b % CB_SM_CHUNK, m = 1ull << (i % 64);
    if (!c || !(c->held[i / 64] & m))
        return;
    c->held[i / 64] &= ~m;
    sm->nheld--;
    if (c->rc[i] == 0)
        clear_busy(sm, c, i);
}

int cb_sm_held(const struct cb_spacemap *sm, uint64_t b)
{
    if (b >= sm->nblocks)
        return 0;
    const struct cb_sm_chunk *c = sm->chunks[b / CB_SM_CHUNK];
    uint64_t i = b % CB_SM_CHUNK;
    return c && (c->held[i / 64] >> (i % 64)) & 1;
}

/* ---- tallies ------------------------------------------------------------ */

int cb_tally_init(struct cb_tally *t, uint64_t nblocks)
{
    t->nchunks = (nblocks + CB_SM_CHUNK - 1) / CB_SM_CHUNK;
    t->chunk = calloc(t->nchunks ? t->nchunks : 1, sizeof *t->chunk);
    return t->chunk ? 0 : CB_ENOMEM;
}

void cb_tally_free(struct cb_tally *t)
{
    for (uint64_t i = 0; t->chunk && i < t->nchunks; i++)
        free(t->chunk[i]);
    free(t->chunk);
    t->chunk = NULL;
}

int cb_tally_at(struct cb_tally *t, uint64_t b, uint64_t **slot)
{
    uint64_t ci = b / CB_SM_CHUNK;
    if (ci >= t->nchunks)
        return CB_ECORRUPT;
    if (!t->chunk[ci] && !(t->chunk[ci] = calloc(CB_SM_CHUNK, sizeof(uint64_t))))
        return CB_ENOMEM;
    *slot = &t->chunk[ci][b % CB_SM_CHUNK];
    return 0;
}

uint64_t cb_tally_get(const struct cb_tally *t, uint64_t b)
{
    uint64_t ci = b / CB_SM_CHUNK;
    return ci < t->nchunks && t->chunk[ci] ? t->chunk[ci][b % CB_SM_CHUNK] : 0;
}

/* ---- metadata pages ---------------------------------------------------- */

static int pm_grow(struct cb_pagemap *pm, uint64_t npages)
{
    if (npages <= pm->cap) {
        if (npages > pm->npages)
            pm->npages = npages;
        return 0;
    }
    uint64_t cap = pm->cap ? pm->cap : 1024;
    while (cap < npages)
        cap *= 2;
    uint64_t *b = realloc(pm->busy, cap / 8);
    if (!b)
        return CB_ENOMEM;
    memset((char *)b + pm->cap / 8, 0, (cap - pm->cap) / 8);
    pm->busy = b;
    pm->cap = cap;
    pm->npages = npages;
    return 0;
}

int cb_pm_init(struct cb_pagemap *pm, uint64_t npages)
{
    memset(pm, 0, sizeof *pm);
    int rc = pm_grow(pm, npages < 2 ? 2 : npages);
    if (rc)
        return rc;
    cb_pm_mark(pm, 0);
    cb_pm_mark(pm, 1);
    pm->cursor = 2;
    return 0;
}

void cb_pm_destroy(struct cb_pagemap *pm)
{
    free(pm->busy);
    cb_u64vec_free(&pm->pending);
    memset(pm, 0, sizeof *pm);
}

int cb_pm_test(const struct cb_pagemap *pm, uint64_t p)
{
    return p < pm->npages && (pm->busy[p / 64] >> (p % 64)) & 1;
}

int cb_pm_mark(struct cb_pagemap *pm, uint64_t p)
{
    if (p >= pm->npages) {
        int rc = pm_grow(pm, p + 1);
        if (rc)
            return rc;
    }
    if (!cb_pm_test(pm, p)) {
        pm->busy[p / 64] |= 1ull << (p % 64);
        pm->nbusy++;
    }
    return 0;
}

int cb_pm_alloc(struct cb_pagemap *pm, uint64_t *out)
{
    for (uint64_t p = pm->cursor; p < pm->npages; p++) {
        if (pm->busy[p / 64] == UINT64_MAX) {
            p = p / 64 * 64 + 63;
            continue;
        }
        if (!cb_pm_test(pm, p)) {
            cb_pm_mark(pm, p);
            pm->cursor = p + 1;
            *out = p;
            return 0;
        }
    }
    for (uint64_t p = 2; p < pm->cursor && p < pm->npages; p++) {
        if (!cb_pm_test(pm, p)) {
            cb_pm_mark(pm, p);
            pm->cursor = p + 1;
            *out = p;
            return 0;
        }
    }
    uint64_t p = pm->npages;
    int rc = cb_pm_mark(pm, p);
    if (rc)
        return rc;
    pm->cursor = p + 1;
    *out = p;
    return 0;
}

int cb_pm_free(struct cb_pagemap *pm, uint64_t p)
{
    if (p < 2 || !cb_pm_test(pm, p))
        return CB_ECORRUPT;
    return cb_u64vec_push(&pm->pending, p);
}

void cb_pm_release_pending(struct cb_pagemap *pm)
{
    for (size_t k = 0; k < pm->pending.n; k++) {
        uint64_t p = pm->pending.v[k];
        if (cb_pm_test(pm, p)) {
            pm->busy[p / 64] &= ~(1ull << (p % 64));
            pm->nbusy--;
        }
    }
    pm->pending.n = 0;
    pm->cursor = 2;
}
