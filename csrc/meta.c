/*
 * meta.c - sealing and verifying metadata pages.
 *
 * The checksum is salted with the page type so that a valid page of one
 * type can never pass as another, and covers the page's own address so a
 * page written to the wrong place is caught.
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
