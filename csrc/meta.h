/*
 * meta.h - the on-disk metadata format.
 *
 * The metadata file is an array of 4 KiB pages.  Pages 0 and 1 are the two
 * superblock slots; a commit writes generation g into slot g % 2, so the
 * slot it overwrites is always the older one.  Every other page is one of
 * the types below and is never written in place while a committed
 * superblock can reach it (shadow paging).
 *
 * Every page starts with the same 32-byte header, all little-endian:
 *
 *   0  u32 magic        page type
 *   4  u32 crc          CRC-32C of bytes 8..4095, seeded with a per-type salt
 *   8  u64 blocknr      the page's own address (catches misdirected writes)
 *  16  u64 generation   transaction that wrote it (<= superblock generation)
 *  24  u32 time         snapshot clock when the node last changed
 *  28  u16 level        tree level (0 = leaf)
 *  30  u16 count        entries in use (type specific)
 *
 * Superblock payload (offsets from the page start):
 *  32 char[8] "cowblock"   40 u32 version   44 u32 incompat (CSUM)   48 u32 compat (CLEAN)
 *  52 u32 block_size       56 u64 nblocks   64 u64 time       72 u64 next_dev_id
 *  80 u64 meta_pages       88 u64 freelog   96 u32 ndevtab    100 u32 reserved
 * 104 u8[16] uuid         120 u64 created_ns
 * 128 u64 ext_pages[64]   640 u64 devtab_pages[432]
 *
 * Leaf: 127 entries of 32 bytes from offset 32:
 *   u64 block, u64 origin, u64 bitmap, u32 time, u32 flags
 * Interior node: 508 u64 child page numbers from offset 32 (0 = empty).
 * Device table page: 15 records of 256 bytes from offset 32 (id 0 = empty):
 *   0 u32 id  4 u32 flags  8 u64 size  16 u64 root  24 u32 depth
 *  28 u32 birth_time  32 u32 snap_time  36 u32 origin_id  40 u64 created_ns
 *  48 u32 external_id  52 u32 name_len  64 char name[128]
 * External origin page: 32 u64 size, 40 u32 path_len, 44 u32 flags,
 *   48 char path[], 3848 u64 inode, 3856 u64 mtime_ns.  With CB_EXT_STAMPED
 *   in flags, inode and mtime_ns (and size) are what the file showed when
 *   it was attached; open refuses reads through an origin that no longer
 *   matches (its bytes may have changed under the devices that read it)
 *   and check reports it.  Flags are compat: a reader ignores bits it does
 *   not know, and a writer that does not know them wrote 0 (unstamped;
 *   pools from before the stamp read as such).
 * Free log page: 32 u64 next, 40 u32 n, 48 (u64 start, u64 count)[253]:
 *   the data blocks the committing transaction freed, punched out of the
 *   data file once the commit is durable (and again at open, in case the
 *   process died in between).  Pages of level CB_FREELOG_HELD come after
 *   those and hold 168 (u64 freed_by, u64 start, u64 count) runs from
 *   offset 48: blocks commit freed_by freed that are held for readers of
 *   older commits (txn.c, "Readers"; superblock incompat bit
 *   CB_INCOMPAT_HELD while any are listed), sorted by freed_by, then start.
 *
 * The data file: nblocks blocks of block_size bytes, then (with
 * CB_INCOMPAT_CSUM) one u32 checksum per sub-block, in whole pages
 * (csum.h).  The geometry below is what the superblock's block size,
 * block count and feature bits imply for both files.
 */
#ifndef CB_META_H
#define CB_META_H
#include <stdint.h>
#include <string.h>

#define CB_PAGE 4096u
#define CB_HDR 32u
#define CB_FORMAT_VERSION 1u
#define CB_MAX_POOL_BLOCKS (1ull << 36) /* data blocks a pool may have */
/* compat feature bits (superblock offset 48): readers that do not know a
 * bit may ignore it */
#define CB_COMPAT_CLEAN 1u  /* written by close: no allocation since this commit */
/* incompat feature bits (superblock offset 44): readers that do not know a
 * bit must refuse the pool */
#define CB_INCOMPAT_CSUM 1u   /* data checksums at the tail of the data file (csum.h) */
#define CB_INCOMPAT_HELD 2u    /* the free log holds runs of earlier commits, kept for
                                * readers (txn.c, "Readers"): never punch them blind */
#define CB_INCOMPAT_KNOWN (CB_INCOMPAT_CSUM | CB_INCOMPAT_HELD)

enum cb_page_type {
    CB_PT_SUPER = 0x42534243,   /* "CBSB" */
    CB_PT_LEAF = 0x464c4243,    /* "CBLF" */
    CB_PT_NODE = 0x444e4243,    /* "CBND" */
    CB_PT_DEVTAB = 0x54444243,  /* "CBDT" */
    CB_PT_EXT = 0x54584243,     /* "CBXT" */
    CB_PT_FREELOG = 0x4c464243, /* "CBFL" */
};

#define CB_LEAF_ENTRIES 127u
#define CB_NODE_FANOUT 508u
#define CB_DEVTAB_RECS 15u
#define CB_DEVREC_SIZE 256u
#define CB_SB_EXT_OFF 128u
#define CB_SB_DEVTAB_OFF 640u
#define CB_SB_DEVTAB_MAX 432u
#define CB_FREELOG_MAX 253u
#define CB_HELDLOG_MAX 168u
#define CB_FREELOG_HELD 1u  /* level of a free log page of held runs */
#define CB_EXT_PATH_OFF 48u
#define CB_EXT_FLAGS_OFF 44u
#define CB_EXT_STAMP_OFF 3848u /* after the longest path (CB_PATH_MAX) */
#define CB_EXT_STAMPED 1u      /* inode and mtime_ns recorded */

/* Entry flags */
#define CB_E_MAPPED 1u  /* block holds the sub-blocks set in bitmap */
#define CB_E_ORIGIN 2u  /* sub-blocks absent from block come from origin */
#define CB_E_ZERO   4u  /* absent sub-blocks read as zeros even over an external origin */
#define CB_E_KNOWN  (CB_E_MAPPED | CB_E_ORIGIN | CB_E_ZERO)

static inline uint16_t cb_get16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap16(v);
#endif
    return v;
}
static inline uint32_t cb_get32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}
static inline uint64_t cb_get64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline void cb_put16(void *p, uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap16(v);
#endif
    memcpy(p, &v, 2);
}
static inline void cb_put32(void *p, uint32_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}
static inline void cb_put64(void *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* ---- geometry ------------------------------------------------------------
 * What a pool's block size, block count and feature bits imply.  The field
 * list is a macro so that a struct holding a geometry can also name its
 * fields directly (an anonymous member, see store.h). */
#define CB_GEOMETRY_FIELDS                                                     \
    uint32_t block_size;  /* bytes, a power of two */                          \
    unsigned block_shift; /* log2(block_size) */                               \
    uint32_t sub_size;    /* bytes per bitmap bit (sub-block) */               \
    unsigned nsub;        /* sub-blocks per block (1..64) */                   \
    uint64_t full_bitmap; /* all nsub bits */                                  \
    uint64_t nblocks;     /* data blocks in the pool */                        \
    int csum_on;          /* data checksums (CB_INCOMPAT_CSUM) */

struct cb_geometry {
    CB_GEOMETRY_FIELDS
};

/* Fill in g from the block size (a valid one: a power of two in
 * [CB_MIN_BLOCK_SIZE, CB_MAX_BLOCK_SIZE]), block count and checksum bit. */
void cb_geometry_set(struct cb_geometry *g, uint32_t block_size, uint64_t nblocks, int csum_on);
/* Bytes of the checksum table for nslots sub-blocks (whole pages). */
static inline uint64_t cb_csum_table_bytes(uint64_t nslots)
{
    return (nslots + CB_PAGE / 4 - 1) / (CB_PAGE / 4) * CB_PAGE;
}
/* Bytes the data file must span: the blocks, then the checksum table. */
uint64_t cb_geometry_data_span(const struct cb_geometry *g);

/* Fill in the header and seal the page with its checksum. */
void cb_page_seal(unsigned char *page, uint32_t type, uint64_t blocknr,
                  uint64_t generation, uint32_t time, uint16_t level,
                  uint16_t count);
/* Check magic, checksum, own address and generation bound.  Returns 0 or
 * CB_ECORRUPT, with the calling thread's corruption detail set (below). */
int cb_page_verify(const unsigned char *page, uint32_t type, uint64_t blocknr,
                   uint64_t max_generation);

/* The calling thread's corruption detail: what the code that returned
 * CB_ECORRUPT found, as text that names the page, its offset in the
 * metadata file and its kind, e.g.
 *   "metadata page 1234 (offset 0x4d2000, a mapping leaf): bad checksum"
 * and, where the damage is not one page's (the data file's size), page 0.
 * cb_meta_bad sets it (page 0: fmt is the whole text); cb_meta_context
 * appends " (in ...)" once to say which structure reached the page;
 * cb_meta_clear forgets it.  Read through cb_corrupt_detail (cowblock.h). */
void cb_meta_bad(uint64_t page, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cb_meta_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cb_meta_clear(void);
/* The detail kept aside while code that may set it runs (and restored). */
struct cb_meta_saved {
    char text[320];
    uint64_t page;
    int context;
};
void cb_meta_save(struct cb_meta_saved *out);
void cb_meta_restore(const struct cb_meta_saved *in);
/* Verify superblock page sb read from slot: 0, CB_ECORRUPT or CB_EVERSION
 * with the thread's corruption detail saying why.  Open and check parse a
 * slot the same way. */
int cb_meta_parse_super(const unsigned char *sb, uint64_t slot, uint64_t meta_file_pages);
/* A page type's name for messages ("mapping leaf"), "page" if unknown. */
const char *cb_page_type_name(uint32_t type);

#endif
