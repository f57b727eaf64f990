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

void cb_meta_save(struct cb_meta_saved *out)
{
    _Static_assert(sizeof out->text == sizeof detail, "the saved detail's size");
    memcpy(out->text, detail, sizeof detail);
    out->page = detail_page;
    out->context = detail_context;
}

void cb_meta_restore(const struct cb_meta_saved *in)
{
    memcpy(detail, in->text, sizeof detail);
    detail_page = in->page;
    detail_context = in->context;
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

int cb_meta_parse_super(const unsigned char *sb, uint64_t slot, uint64_t meta_file_pages)
{
    if (cb_page_verify(sb, CB_PT_SUPER, slot, UINT64_MAX))
        return CB_ECORRUPT;
    /* a commit writes generation g into slot g % 2: anything else would
     * make the next commit overwrite the superblock it started from */
    uint64_t gen = cb_get64(sb + 16);
    if (gen % 2 != slot || gen >= (1ull << 62)) {
        cb_meta_bad(slot, CB_PT_SUPER, "generation %llu does not belong in slot %llu",
                    (unsigned long long)gen, (unsigned long long)slot);
        return CB_ECORRUPT;
    }
    if (memcmp(sb + 32, "cowblock", 8)) {
        cb_meta_bad(slot, CB_PT_SUPER, "no \"cowblock\" signature");
        return CB_ECORRUPT;
    }
    if (cb_get32(sb + 40) != CB_FORMAT_VERSION || (cb_get32(sb + 44) & ~CB_INCOMPAT_KNOWN)) {
        cb_meta_bad(slot, CB_PT_SUPER, "format version %u, incompatible features 0x%x "
                    "(this cowblock reads version %u, features 0x%x)", cb_get32(sb + 40),
                    cb_get32(sb + 44), CB_FORMAT_VERSION, CB_INCOMPAT_KNOWN);
        return CB_EVERSION;
    }
    uint32_t bs = cb_get32(sb + 52);
    uint64_t nblocks = cb_get64(sb + 56);
    uint64_t mpages = cb_get64(sb + 80);
    if (bs < CB_MIN_BLOCK_SIZE || bs > CB_MAX_BLOCK_SIZE || (bs & (bs - 1)) ||
        nblocks == 0 || nblocks > CB_MAX_POOL_BLOCKS || mpages < 2 ||
        mpages > meta_file_pages || cb_get64(sb + 64) > UINT32_MAX ||
        cb_get32(sb + 96) > CB_SB_DEVTAB_MAX || cb_get64(sb + 72) > UINT32_MAX ||
        cb_get64(sb + 72) == 0) {
        cb_meta_bad(slot, CB_PT_SUPER, "a field out of bounds (block size %u, %llu blocks, "
                    "%llu metadata pages of the file's %llu, %u device table pages)", bs,
                    (unsigned long long)nblocks, (unsigned long long)mpages,
                    (unsigned long long)meta_file_pages, cb_get32(sb + 96));
        return CB_ECORRUPT;
    }
    return 0; /* the data file's size is checked once the geometry is known */
}
