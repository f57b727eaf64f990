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

#include <stdarg.h>
#include <stdio.h>

/* The corruption detail of the last failure on this thread (meta.h). */
static __thread char detail[320];
static __thread uint64_t detail_page;
static __thread int detail_context; /* a context was appended already */

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
    if (cb_get32(page) != type) {
        uint32_t m = cb_get32(page);
        cb_meta_bad(blocknr, type, "bad magic 0x%08x (%s)", m,
                    m == 0 ? "zeros" : cb_page_type_name(m));
        return CB_ECORRUPT;
    }
    if (cb_get32(page + 4) != page_crc(page, type)) {
        cb_meta_bad(blocknr, type, "bad checksum");
        return CB_ECORRUPT;
    }
    if (cb_get64(page + 8) != blocknr) {
        cb_meta_bad(blocknr, type, "records its address as page %llu (a misdirected write)",
                    (unsigned long long)cb_get64(page + 8));
        return CB_ECORRUPT;
    }
    if (cb_get64(page + 16) > max_generation) {
        cb_meta_bad(blocknr, type, "generation %llu is newer than the superblock's %llu",
                    (unsigned long long)cb_get64(page + 16),
                    (unsigned long long)max_generation);
        return CB_ECORRUPT;
    }
    return 0;
}

const char *cb_page_type_name(uint32_t type)
{
    switch (type) {
    case CB_PT_SUPER: return "superblock";
    case CB_PT_LEAF: return "mapping leaf";
    case CB_PT_NODE: return "mapping node";
    case CB_PT_DEVTAB: return "device table page";
    case CB_PT_EXT: return "external origin page";
    case CB_PT_FREELOG: return "free log page";
    default: return "page of unknown type";
    }
}

void cb_meta_bad(uint64_t page, uint32_t type, const char *fmt, ...)
{
    size_t n = 0;
    if (type == CB_PT_SUPER)
        n = (size_t)snprintf(detail, sizeof detail, "superblock slot %llu (offset 0x%llx): ",
                             (unsigned long long)page, (unsigned long long)page * CB_PAGE);
    else if (page || type)
        n = (size_t)snprintf(detail, sizeof detail, "metadata page %llu (offset 0x%llx, a %s): ",
                             (unsigned long long)page, (unsigned long long)page * CB_PAGE,
                             cb_page_type_name(type));
    if (n >= sizeof detail)
        n = sizeof detail - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail + n, sizeof detail - n, fmt, ap);
    va_end(ap);
    detail_page = page;
    detail_context = 0;
}

void cb_meta_context(const char *fmt, ...)
{
    size_t n = strlen(detail);
    if (!n || detail_context || n + 8 >= sizeof detail)
        return;
    detail_context = 1;
    n += (size_t)snprintf(detail + n, sizeof detail - n, " (in ");
    if (n + 2 >= sizeof detail)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail + n, sizeof detail - n - 1, fmt, ap);
    va_end(ap);
    n = strlen(detail);
    snprintf(detail + n, sizeof detail - n, ")");
}

void cb_meta_clear(void)
{
    detail[0] = 0;
    detail_page = 0;
    detail_context = 0;
}

size_t cb_corrupt_detail(char *buf, size_t len, uint64_t *page)
{
    size_t n = strlen(detail);
    if (buf && len)
        snprintf(buf, len, "%s", detail);
    if (page)
        *page = detail_page;
    cb_meta_clear();
    return n;
}
