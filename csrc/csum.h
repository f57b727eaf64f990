/*
 * csum.h - checksums of data sub-blocks (optional, chosen when the pool is
 * made; superblock incompat bit CB_INCOMPAT_CSUM).
 *
 * One CRC-32C per sub-block of every data block, kept in a table at the
 * tail of the data file, right after the last data block:
 *
 *   slot(block, s) = block * nsub + s         u32, little-endian
 *   table offset   = nblocks * block_size     (block aligned)
 *   table size     = nblocks * nsub * 4 bytes, rounded up to 4 KiB pages
 *
 * The CRC is seeded with the slot number, so a sub-block written to the
 * wrong place, or a table entry read for the wrong block, fails to verify.
 *
 * Why the table may be updated in place without shadow paging: with
 * checksums on, a data block is written only while no committed mapping
 * names it (thin.c makes every first write after a commit copy on write,
 * whatever the reference count).  So a slot changes only while its block is
 * unreachable from the committed state; a crash, even one that tears the
 * table page, changes no slot that committed state relies on, because the
 * bytes of those slots are the same in the old and the new page.  The
 * commit writes the dirty table pages before its fdatasync(data), which
 * makes them durable together with the data they describe.
 *
 * Table pages are loaded on first use and kept (at 64 KiB blocks the table
 * is 1/1024 of the data it covers).  Readers, under the pool's shared lock,
 * may load pages concurrently: a page is published with a compare-and-swap
 * and a reader that loses the race frees its copy.  Writers hold the pool
 * lock exclusively.
 */
#ifndef CB_CSUM_H
#define CB_CSUM_H
#include <stddef.h>
#include <stdint.h>

#include "blockio.h"
#include "spacemap.h"

#define CB_CSUM_PER_PAGE 1024u /* u32 slots in a 4 KiB table page */

struct cb_csum {
    cb_io *io;               /* the data file */
    uint64_t base;           /* byte offset of the table */
    uint64_t nslots;
    uint64_t npages;
    unsigned char **pages;   /* loaded pages (NULL = not yet) */
    uint64_t *dirty;         /* bitmap over pages */
    struct cb_u64vec dirty_list;
};

/* Bytes the table takes for nslots slots (whole pages). */
uint64_t cb_csum_bytes(uint64_t nslots);
int cb_csum_init(struct cb_csum *c, cb_io *io, uint64_t base, uint64_t nslots);
void cb_csum_destroy(struct cb_csum *c);
/* The checksum a sub-block in slot `slot` holding buf[0..len) must have. */
uint32_t cb_csum_of(uint64_t slot, const void *buf, size_t len);
/* Expected checksum of a slot (loads its page: shared lock is enough). */
int cb_csum_get(struct cb_csum *c, uint64_t slot, uint32_t *out);
/* Record a slot's checksum (exclusive lock). */
int cb_csum_set(struct cb_csum *c, uint64_t slot, uint32_t value);
/* Write every dirty page (no sync: the commit's fdatasync(data) follows).
 * A failed write leaves the page dirty. */
int cb_csum_writeback(struct cb_csum *c);

#endif
