/*
 * csum.c - see csum.h.
 */
#include "csum.h"
#include "cowblock.h"
#include "crc32c.h"
#include "meta.h"

#include <stdlib.h>
#include <string.h>

#define SALT 0x64617461u /* "data" */

uint64_t cb_csum_bytes(uint64_t nslots)
{
    return cb_csum_table_bytes(nslots);
}

int cb_csum_init(struct cb_csum *c, cb_io *io, uint64_t base, uint64_t nslots)
{
    memset(c, 0, sizeof *c);
    c->io = io;
    c->base = base;
    c->nslots = nslots;
    c->npages = cb_csum_bytes(nslots) / CB_PAGE;
    c->pages = calloc(c->npages ? c->npages : 1, sizeof *c->pages);
    c->dirty = calloc((c->npages + 63) / 64 + 1, sizeof *c->dirty);
    if (!c->pages || !c->dirty) {
        cb_csum_destroy(c);
        return CB_ENOMEM;
    }
    return 0;
}

void cb_csum_destroy(struct cb_csum *c)
{
    if (c->pages)
        for (uint64_t i = 0; i < c->npages; i++)
            free(c->pages[i]);
    free(c->pages);
    free(c->dirty);
    cb_u64vec_free(&c->dirty_list);
    memset(c, 0, sizeof *c);
}

uint32_t cb_csum_of(uint64_t slot, const void *buf, size_t len)
{
    return cb_crc32c((uint32_t)(slot ^ (slot >> 32)) ^ SALT, buf, len);
}

static int page_of(struct cb_csum *c, uint64_t pg, unsigned char **out)
{
    unsigned char *q = __atomic_load_n(&c->pages[pg], __ATOMIC_ACQUIRE);
    if (q) {
        *out = q;
        return 0;
    }
    void *fresh;
    if (posix_memalign(&fresh, CB_PAGE, CB_PAGE))
        return CB_ENOMEM;
    int rc = cb_io_pread(c->io, fresh, CB_PAGE, c->base + pg * CB_PAGE);
    if (rc) {
        free(fresh);
        return rc;
    }
    unsigned char *expected = NULL;
    if (!__atomic_compare_exchange_n(&c->pages[pg], &expected, (unsigned char *)fresh, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        free(fresh); /* another reader loaded it first */
        *out = expected;
        return 0;
    }
    *out = fresh;
    return 0;
}

int cb_csum_get(struct cb_csum *c, uint64_t slot, uint32_t *out)
{
    if (slot >= c->nslots)
        return CB_ECORRUPT;
    unsigned char *q;
    int rc = page_of(c, slot / CB_CSUM_PER_PAGE, &q);
    if (rc)
        return rc;
    *out = cb_get32(q + 4 * (slot % CB_CSUM_PER_PAGE));
    return 0;
}

int cb_csum_set(struct cb_csum *c, uint64_t slot, uint32_t value)
{
    if (slot >= c->nslots)
        return CB_ECORRUPT;
    uint64_t pg = slot / CB_CSUM_PER_PAGE;
    unsigned char *q;
    int rc = page_of(c, pg, &q);
    if (rc)
        return rc;
    if (!(c->dirty[pg / 64] & (1ull << (pg % 64)))) {
        if ((rc = cb_u64vec_push(&c->dirty_list, pg)))
            return rc;
        c->dirty[pg / 64] |= 1ull << (pg % 64);
    }
    cb_put32(q + 4 * (slot % CB_CSUM_PER_PAGE), value);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int cb_csum_writeback(struct cb_csum *c)
{
    if (c->dirty_list.n)
        qsort(c->dirty_list.v, c->dirty_list.n, sizeof *c->dirty_list.v, cmp_u64);
    size_t kept = 0;
    int rc = 0;
    for (size_t i = 0; i < c->dirty_list.n; i++) {
        uint64_t pg = c->dirty_list.v[i];
        int r = rc ? rc : cb_io_pwrite(c->io, c->pages[pg], CB_PAGE, c->base + pg * CB_PAGE);
        if (r) {
            rc = r;
            c->dirty_list.v[kept++] = pg; /* still dirty */
            continue;
        }
        c->dirty[pg / 64] &= ~(1ull << (pg % 64));
    }
    c->dirty_list.n = kept;
    return rc;
}
