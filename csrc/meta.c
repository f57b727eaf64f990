/*
 * meta.c - sealing and verifying metadata pages.
 *
 * The checksum is salted with the page type so that a valid page of one
 * type can never pass as another, and covers the page's own address so a
 * page written to the wrong place is caught.  The geometry a superblock
 * implies is derived here too, the one place that knows the data file's
 * layout.
 */
#include "meta.h"
#include "cowblock.h"
#include "crc32c.h"

static uint32_t salt(uint32_t type)
{
    return type * 0x9E3779B1u ^ 0x636f7762u;
}

static uint32_t page_crc(const unsigned char *page, uint32_t type)
{
    return cb_crc32c(salt(type), page + 8, CB_PAGE - 8);
}

void cb_page_seal(unsigned char *page, uint32_t type, uint64_t blocknr,
                  uint64_t generation, uint32_t time, uint16_t level,
                  uint16_t count)
{
    cb_put32(page, type);
    cb_put64(page + 8, blocknr);
    cb_put64(page + 16, generation);
    cb_put32(page + 24, time);
    cb_put16(page + 28, level);
    cb_put16(page + 30, count);
    cb_put32(page + 4, page_crc(page, type));
}

void cb_geometry_set(struct cb_geometry *g, uint32_t block_size, uint64_t nblocks, int csum_on)
{
    g->block_size = block_size;
    g->block_shift = (unsigned)__builtin_ctz(block_size);
    g->sub_size = block_size / 64 > 4096 ? block_size / 64 : 4096;
    if (g->sub_size > block_size)
        g->sub_size = block_size;
    g->nsub = block_size / g->sub_size;
    g->full_bitmap = g->nsub == 64 ? UINT64_MAX : (1ull << g->nsub) - 1;
    g->nblocks = nblocks;
    g->csum_on = csum_on != 0;
}

uint64_t cb_geometry_data_span(const struct cb_geometry *g)
{
    uint64_t blocks = g->nblocks * (uint64_t)g->block_size;
    return g->csum_on ? blocks + cb_csum_table_bytes(g->nblocks * g->nsub) : blocks;
}

int cb_page_verify(const unsigned char *page, uint32_t type, uint64_t blocknr,
                   uint64_t max_generation)
{
    if (cb_get32(page) != type)
        return CB_ECORRUPT;
    if (cb_get32(page + 4) != page_crc(page, type))
        return CB_ECORRUPT;
    if (cb_get64(page + 8) != blocknr)
        return CB_ECORRUPT;
    if (cb_get64(page + 16) > max_generation)
        return CB_ECORRUPT;
    return 0;
}
