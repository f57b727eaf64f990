/*
 * thin.c - device operations (DESIGN.md section 4).
 *
 * Reading sub-block s of virtual block v through entry e:
 *   MAPPED and bit s set  -> data block e.block
 *   ORIGIN                -> data block e.origin (always a complete block)
 *   ZERO, or no external  -> zeros
 *   otherwise             -> the device's external origin file at v
 *
 * Writing into v:
 *   the entry is private (its block has one reference and was written
 *   after the device's last snapshot)  -> write in place;
 *   otherwise                          -> allocate a block and write only
 *   the sub-blocks touched; the new entry keeps the old block as its origin
 *   for the rest (copy-up by bitmap).  Once every sub-block is present the
 *   origin reference is dropped.
 *
 * The "written after the last snapshot" test (entry time >= snap_time) is
 * what makes in-place writes crash safe: a block that some committed state
 * may still show through another device is never overwritten, even after
 * that other device is deleted in the open transaction.
 *
 * Invariants kept here:
 *  1. ORIGIN implies MAPPED and an incomplete bitmap.
 *  2. bitmap != 0 implies MAPPED; bitmap has no bit >= nsub.
 *  3. A data block is written only while no committed entry can show it
 *     through another device (see above), or before any entry names it.
 *  4. With data checksums, a block is written only before any committed
 *     entry names it (private also means "allocated since the last
 *     commit"), and only in whole sub-blocks, whose checksums are recorded
 *     with the write; every sub-block read from the data file is verified
 *     (see csum.h).  The same holds where readers on other hosts share the
 *     pool (shared_readers, store.h): a reader reads a committed state, so
 *     no committed block may change under it.
 */
#include "thin.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define BIT(s) (1ull << (s))

static uint64_t bits_between(unsigned s0, unsigned s1) /* inclusive */
{
    uint64_t hi = s1 >= 63 ? UINT64_MAX : BIT(s1 + 1) - 1;
    return hi & ~(BIT(s0) - 1);
}

#ifndef NDEBUG
/* Invariants 1 and 2 above, for one entry (debug builds assert them on
 * every entry a write or discard leaves behind). */
static int entry_ok(const struct cb_store *p, const struct cb_entry *e)
{
    if ((e->flags & ~CB_E_KNOWN) || (e->bitmap & ~p->full_bitmap))
        return 0;
    if ((e->flags & CB_E_ORIGIN) &&
        (!(e->flags & CB_E_MAPPED) || e->bitmap == p->full_bitmap || e->origin >= p->nblocks))
        return 0;
    if (e->flags & CB_E_MAPPED)
        return e->bitmap != 0 && e->block < p->nblocks;
    return e->bitmap == 0;
}
#endif

static struct cb_external *ext_of(struct cb_store *p, const struct cb_devrec *d)
{
    return d->external_id ? &p->ext[d->external_id - 1] : NULL;
}

/* ---- reading ------------------------------------------------------------ */

/* The data-file reads one call collects: reads contiguous both in the data
 * file and in the destination buffer coalesce into one piece (one pread),
 * and up to RUNS_MAX pieces go to the backend together (cb_io_preadv, which
 * keeps them in flight at once where requests have a high latency). */
#define RUNS_MAX 64u

struct run {
    size_t n;                   /* pieces collected, not read yet */
    struct cb_io_vec v[RUNS_MAX];
    uint64_t vpos[RUNS_MAX];    /* device offset each piece stands for (error reports) */
};

static __thread uint64_t bad_offset;

uint64_t cb_thin_bad_offset(void)
{
    return bad_offset;
}

/* Check whole sub-blocks buf[0..len), read from data-file offset off
 * (sub-block aligned), against their checksums. */
static int verify(struct cb_store *p, const char *buf, size_t len, uint64_t off, uint64_t vpos)
{
    uint32_t sub = p->sub_size;
    for (size_t k = 0; k < len; k += sub) {
        uint64_t slot = (off + k) / sub;
        uint32_t want;
        int rc = cb_csum_get(&p->csum, slot, &want);
        if (rc)
            return rc;
        if (cb_csum_of(slot, buf + k, sub) != want) {
            bad_offset = vpos + k;
            __atomic_fetch_add(&p->st.checksum_failures, 1, __ATOMIC_RELAXED);
            return CB_ECHECKSUM;
        }
    }
    return 0;
}

int cb_thin_data_read(struct cb_store *p, void *buf, size_t len, uint64_t off, uint64_t vpos)
{
    CB_MUST_READ(p);
    if (!p->csum_on)
        return cb_io_pread(p->data.io, buf, len, off);
    /* Only whole sub-blocks can be verified: the parts of partly covered
     * ones go through a buffer. */
    uint32_t sub = p->sub_size;
    char *dst = buf;
    while (len) {
        uint32_t skip = (uint32_t)(off % sub);
        int rc;
        size_t n;
        if (skip == 0 && len >= sub) {
            n = len - len % sub;
            if (!(rc = cb_io_pread(p->data.io, dst, n, off)))
                rc = verify(p, dst, n, off, vpos);
        } else {
            _Alignas(4096) char tmp[CB_MAX_BLOCK_SIZE / 64];
            n = sub - skip < len ? sub - skip : len;
            if (!(rc = cb_io_pread(p->data.io, tmp, sub, off - skip)))
                rc = verify(p, tmp, sub, off - skip, vpos - skip);
            if (!rc)
                memcpy(dst, tmp + skip, n);
        }
        if (rc)
            return rc;
        dst += n;
        off += n;
        vpos += n;
        len -= n;
    }
    return 0;
}

static int run_flush(struct cb_store *p, struct run *r)
{
    size_t n = r->n;
    r->n = 0;
    if (!n)
        return 0;
    CB_MUST_READ(p);
    if (!p->csum_on)
        return cb_io_preadv(p->data.io, r->v, n);
    for (size_t i = 0; i < n; i++) {
        int rc = cb_thin_data_read(p, r->v[i].buf, r->v[i].len, r->v[i].off, r->vpos[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int run_add(struct cb_store *p, struct run *r, uint64_t off, char *dst, size_t len,
                   uint64_t vpos)
{
    if (r->n) {
        struct cb_io_vec *last = &r->v[r->n - 1];
        if (last->off + last->len == off && (char *)last->buf + last->len == dst) {
            last->len += len;
            return 0;
        }
    }
    int rc = r->n == RUNS_MAX ? run_flush(p, r) : 0;
    r->v[r->n] = (struct cb_io_vec){dst, len, off};
    r->vpos[r->n] = vpos;
    r->n++;
    return rc;
}

static int read_external(struct cb_store *p, const struct cb_devrec *d, uint64_t pos,
                         char *dst, size_t len)
{
    struct cb_external *x = ext_of(p, d);
    if (!x->io) {
        cb_meta_bad(0, 0, "%s", x->why[0] ? x->why : "external origin cannot be read");
        return CB_EEXTERNAL;
    }
    if (pos >= x->size) {
        memset(dst, 0, len);
        return 0;
    }
    size_t n = x->size - pos < len ? (size_t)(x->size - pos) : len;
    int rc = cb_io_pread(x->io, dst, n, pos);
    if (rc == 0 && n < len)
        memset(dst + n, 0, len - n);
    return rc;
}

/* Bytes [boff, boff + len) of block v as entry e shows them. */
static int read_part(struct cb_store *p, const struct cb_devrec *d,
                     const struct cb_entry *e, uint64_t v, uint32_t boff,
                     size_t len, char *dst, struct run *r)
{
    uint64_t bs = p->block_size;
    if (e && (e->flags & CB_E_MAPPED) && e->bitmap == p->full_bitmap)
        return run_add(p, r, e->block * bs + boff, dst, len, v * bs + boff);
    int has_ext = d->external_id && !(e && (e->flags & CB_E_ZERO));
    if (!e || !(e->flags & (CB_E_MAPPED | CB_E_ORIGIN))) {
        if (!has_ext) {
            memset(dst, 0, len);
            return 0;
        }
        int rc = run_flush(p, r);
        return rc ? rc : read_external(p, d, v * bs + boff, dst, len);
    }
    uint32_t sub = p->sub_size;
    while (len) {
        unsigned s = boff / sub;
        size_t n = sub - boff % sub;
        if (n > len)
            n = len;
        int rc;
        if ((e->flags & CB_E_MAPPED) && (e->bitmap & BIT(s)))
            rc = run_add(p, r, e->block * bs + boff, dst, n, v * bs + boff);
        else if (e->flags & CB_E_ORIGIN)
            rc = run_add(p, r, e->origin * bs + boff, dst, n, v * bs + boff);
        else if (!has_ext) {
            memset(dst, 0, n);
            rc = 0;
        } else {
            rc = run_flush(p, r);
            if (!rc)
                rc = read_external(p, d, v * bs + boff, dst, n);
        }
        if (rc)
            return rc;
        boff += (uint32_t)n;
        dst += n;
        len -= n;
    }
    return 0;
}

/* [off, off + len) into dst, its data-file reads collected in r. */
static int read_range(struct cb_store *p, struct cb_devrec *d, char *dst, uint64_t len,
                      uint64_t off, struct run *r)
{
    uint64_t bs = p->block_size;
    while (len) {
        uint64_t v = off >> p->block_shift;
        uint32_t boff = (uint32_t)(off & (bs - 1));
        size_t n = bs - boff < len ? bs - boff : len;
        const struct cb_entry *e = cb_map_lookup(d->root, d->depth, v);
        int rc = read_part(p, d, e, v, boff, n, dst, r);
        if (rc)
            return rc;
        dst += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Pieces are only collected until run_flush reads them (and returns once
 * they are read): on an error, the ones not read yet are dropped. */
int cb_thin_read(struct cb_store *p, struct cb_devrec *d, void *buf,
                 uint64_t len, uint64_t off)
{
    CB_MUST_READ(p);
    struct run r;
    r.n = 0;
    int rc = read_range(p, d, buf, len, off, &r);
    return rc ? rc : run_flush(p, &r);
}

int cb_thin_read_blocks(struct cb_store *p, struct cb_devrec *d, const uint64_t *idx,
                        size_t n, void *buf)
{
    CB_MUST_READ(p);
    struct run r;
    r.n = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = read_range(p, d, (char *)buf + i * (size_t)p->block_size, p->block_size,
                        idx[i] << p->block_shift, &r);
    return rc ? rc : run_flush(p, &r);
}

/* ---- writing ------------------------------------------------------------ */

/* After a failed write of whole sub-blocks at data-file offset off: the
 * file may hold the old bytes, the new ones, or a mix.  Record checksums of
 * what it holds, so that a write that failed leaves every byte readable as
 * old or new (as without checksums) rather than failing verification. */
static void resum(struct cb_store *p, uint64_t off, size_t len)
{
    uint32_t sub = p->sub_size;
    char *buf = malloc(sub);
    for (size_t k = 0; buf && k < len; k += sub) {
        uint64_t slot = (off + k) / sub;
        if (cb_io_pread(p->data.io, buf, sub, off + k) == 0)
            cb_csum_set(&p->csum, slot, cb_csum_of(slot, buf, sub));
    }
    free(buf);
}

static int data_write(struct cb_store *p, uint64_t block, uint32_t boff,
                      const void *src, size_t len)
{
    uint64_t off = block * p->block_size + boff;
    if (p->csum_on) {
        /* whole sub-blocks only (write_into completes the edges); the
         * checksums go first, so a failed write cannot leave data that
         * verifies against a stale checksum */
        uint32_t sub = p->sub_size;
        assert(off % sub == 0 && len % sub == 0);
        for (size_t k = 0; k < len; k += sub) {
            uint64_t slot = (off + k) / sub;
            int rc = cb_csum_set(&p->csum, slot, cb_csum_of(slot, (const char *)src + k, sub));
            if (rc)
                return rc;
        }
    }
    int rc = cb_datafile_write(&p->data, src, len, off);
    if (rc == 0)
        p->st.data_bytes_written += len;
    else if (p->csum_on)
        resum(p, off, len);
    return rc;
}

/*
 * Write src = bytes [boff, boff + len) of block v into data block `target`,
 * which already holds the sub-blocks in `present`.  Sub-blocks only partly
 * covered and not present are completed from `view` (the entry as readers
 * see it now), so `target` ends up holding whole sub-blocks.
 */
static int write_into(struct cb_store *p, const struct cb_devrec *d,
                      const struct cb_entry *view, uint64_t v, uint64_t target,
                      uint64_t present, uint32_t boff, size_t len, const char *src)
{
    uint32_t sub = p->sub_size;
    uint32_t a = boff - boff % sub;
    uint32_t b = (uint32_t)((boff + len + sub - 1) / sub * sub);
    int head_partial = a != boff && !(present & BIT(a / sub));
    int tail_partial = b != boff + len && !(present & BIT((b - 1) / sub));
    if (!head_partial && !tail_partial && (!p->csum_on || (a == boff && b == boff + len)))
        return data_write(p, target, boff, src, len);
    /* With checksums, edges are completed even when present in target:
     * a checksum covers a whole sub-block. */
    /* Complete the partly covered edge sub-blocks in the scratch block
     * (from wherever the view reads them, target included), then write
     * the whole aligned range. */
    char *buf = (char *)p->scratch;
    struct run r;
    r.n = 0;
    int rc = 0;
    if (a != boff) {
        rc = read_part(p, d, view, v, a, sub, buf, &r);
        if (head_partial)
            p->st.copyup_bytes += boff - a;
    }
    if (!rc && b != boff + len && (b - sub != a || a == boff)) {
        rc = read_part(p, d, view, v, b - sub, sub, buf + (b - sub - a), &r);
        if (tail_partial)
            p->st.copyup_bytes += b - (boff + len);
    }
    if (!rc)
        rc = run_flush(p, &r);
    if (rc)
        return rc;
    memcpy(buf + (boff - a), src, len);
    return data_write(p, target, a, buf, b - a);
}

/* Copy the sub-blocks in `which` from block `from` to block `to`; vpos is
 * the device offset of the block (error reports). */
static int copy_subs(struct cb_store *p, uint64_t from, uint64_t to, uint64_t which,
                     uint64_t vpos)
{
    uint32_t sub = p->sub_size;
    char *buf = (char *)p->scratch;
    for (unsigned s = 0; s < p->nsub; s++) {
        if (!(which & BIT(s)))
            continue;
        unsigned t = s;
        while (t + 1 < p->nsub && (which & BIT(t + 1)))
            t++;
        uint64_t off = (uint64_t)s * sub, len = (uint64_t)(t - s + 1) * sub;
        int rc = cb_thin_data_read(p, buf, len, from * p->block_size + off, vpos + off);
        if (!rc)
            rc = data_write(p, to, (uint32_t)off, buf, len);
        if (rc)
            return rc;
        p->st.copyup_bytes += len;
        s = t;
    }
    return 0;
}

/* Return a block allocated for a write that no entry came to name.  It
 * may hold part of that write, or old data if it was a kept block: punch
 * it, or a clean close would leave its space leaked. */
static void give_back(struct cb_store *p, uint64_t b)
{
    cb_datafile_punch(&p->data, b, 1);
    cb_sm_unalloc(&p->sm, b);
}

/* May this entry be written in place (see the top of this file)? */
static int private_entry(struct cb_store *p, const struct cb_devrec *d, const struct cb_entry *e)
{
    return e && (e->flags & CB_E_MAPPED) && e->time >= d->snap_time &&
           cb_sm_rc(&p->sm, e->block) == 1 &&
           (!(p->csum_on || p->shared_readers) || cb_sm_fresh(&p->sm, e->block));
}

/* Blocks a write of [off, off + len) will allocate, at most. */
static uint64_t blocks_needed(struct cb_store *p, struct cb_devrec *d, uint64_t len, uint64_t off)
{
    uint64_t need = 0;
    if (len == 0)
        return 0;
    uint64_t span = ((off + len - 1) >> p->block_shift) - (off >> p->block_shift) + 1;
    if (span <= p->sm.nblocks - p->sm.busy)
        return span; /* fits even if every block needs a new one: no lookups */
    for (uint64_t v = off >> p->block_shift; v <= (off + len - 1) >> p->block_shift; v++)
        need += !private_entry(p, d, cb_map_lookup(d->root, d->depth, v));
    return need;
}

static int write_block(struct cb_store *p, struct cb_devrec *d, uint64_t v,
                       uint32_t boff, size_t len, const char *src)
{
    struct cb_entry *e;
    int rc = cb_map_writable(&p->map, &d->root, d->depth, v, &e);
    if (rc)
        return rc;
    uint32_t sub = p->sub_size;
    uint64_t touched = bits_between(boff / sub, (unsigned)((boff + len - 1) / sub));
    int full = boff == 0 && len == p->block_size;
    uint32_t now = p->map.now;

    if (private_entry(p, d, e)) {
        /* private block: in place */
        struct cb_entry view = *e;
        rc = full ? data_write(p, e->block, 0, src, len)
                  : write_into(p, d, &view, v, e->block, e->bitmap, boff, len, src);
        if (rc)
            return rc;
        e->bitmap |= touched;
        e->time = now;
        if (e->bitmap == p->full_bitmap && (e->flags & CB_E_ORIGIN)) {
            rc = cb_sm_dec(&p->sm, e->origin);
            e->flags &= ~CB_E_ORIGIN;
            e->origin = 0;
        }
        assert(entry_ok(p, e));
        return rc;
    }

    /* New block.  What the new entry keeps from the old one: */
    struct cb_entry old = *e, ne = {0, 0, 0, now, CB_E_MAPPED};
    uint64_t nb;
    /* CB_ENOSPC with blocks pending: cb_thin_write asks for a commit
     * (nothing was changed but the path made writable) */
    if ((rc = cb_sm_alloc(&p->sm, &nb)))
        return rc;
    ne.block = nb;
    uint64_t copy = 0; /* sub-blocks to carry over from old.block */
    if (full) {
        ne.bitmap = p->full_bitmap;
        rc = data_write(p, nb, 0, src, len);
    } else if ((old.flags & CB_E_MAPPED) && old.bitmap == p->full_bitmap) {
        ne.flags |= CB_E_ORIGIN;
        ne.origin = old.block;
        ne.bitmap = touched;
        rc = write_into(p, d, &old, v, nb, 0, boff, len, src);
    } else {
        if (old.flags & CB_E_MAPPED)
            copy = old.bitmap & ~touched;
        ne.flags |= old.flags & (CB_E_ORIGIN | CB_E_ZERO);
        ne.origin = old.origin;
        ne.bitmap = touched | old.bitmap;
        rc = write_into(p, d, &old, v, nb, 0, boff, len, src);
        if (!rc && copy)
            rc = copy_subs(p, old.block, nb, copy, v << p->block_shift);
    }
    /* References: the new entry holds nb (counted by alloc) and maybe an
     * origin; the old entry's references are dropped. */
    if (ne.bitmap == p->full_bitmap) {
        ne.flags &= ~CB_E_ORIGIN;
        ne.origin = 0;
    }
    /* The origin's increment fails only on a corrupt count: then nothing is
     * installed and nb goes back, as when the data write fails. */
    if (!rc && (ne.flags & CB_E_ORIGIN))
        rc = cb_sm_inc(&p->sm, ne.origin);
    if (rc) {
        give_back(p, nb);
        return rc;
    }
    if (old.flags & CB_E_MAPPED)
        p->st.copyups++;
    *e = ne;
    assert(entry_ok(p, e));
    return cb_entry_unref(&p->sm, &old);
}

/*
 * Whole blocks v .. v+k-1 from src, in three phases so that data blocks
 * that happen to be consecutive get one pwrite: plan (private entries are
 * written in place, the others get a new block), write, then install the
 * new entries.  Nothing is installed unless every pwrite succeeded.
 */
#define FULL_BATCH 256u

static int write_full_blocks(struct cb_store *p, struct cb_devrec *d, uint64_t v,
                             uint64_t k, const char *src)
{
    struct cb_entry *ent[FULL_BATCH];
    uint64_t target[FULL_BATCH];
    uint8_t fresh[FULL_BATCH];
    uint64_t bs = p->block_size, i;
    int rc = 0;
    for (i = 0; i < k; i++) {
        if ((rc = cb_map_writable(&p->map, &d->root, d->depth, v + i, &ent[i])))
            break;
        fresh[i] = !private_entry(p, d, ent[i]);
        if (!fresh[i])
            target[i] = ent[i]->block;
        else if ((rc = cb_sm_alloc(&p->sm, &target[i])))
            break;
    }
    for (uint64_t j = 0; j < i && !rc;) {
        uint64_t r = j + 1;
        while (r < i && target[r] == target[r - 1] + 1)
            r++;
        rc = data_write(p, target[j], 0, src + j * bs, (r - j) * bs);
        j = r;
    }
    if (rc) {
        for (uint64_t j = 0; j < i; j++)
            if (fresh[j])
                give_back(p, target[j]);
        return rc;
    }
    uint32_t now = p->map.now;
    for (i = 0; i < k && !rc; i++) {
        struct cb_entry *e = ent[i], old = *e;
        if (fresh[i]) {
            *e = (struct cb_entry){target[i], 0, p->full_bitmap, now, CB_E_MAPPED};
            if (old.flags & CB_E_MAPPED)
                p->st.copyups++;
            rc = cb_entry_unref(&p->sm, &old);
        } else {
            e->bitmap = p->full_bitmap;
            e->time = now;
            if (e->flags & CB_E_ORIGIN) {
                e->flags &= ~CB_E_ORIGIN;
                e->origin = 0;
                rc = cb_sm_dec(&p->sm, old.origin);
            }
        }
    }
    return rc;
}

int cb_thin_write(struct cb_store *p, struct cb_devrec *d, const void *buf,
                  uint64_t len, uint64_t off, uint64_t *done)
{
    CB_MUST_WRITE(p);
    const char *src = buf;
    uint64_t bs = p->block_size;
    *done = 0;
    /* All or nothing with respect to space: a write the pool cannot hold
     * fails before it changes anything.  Blocks this transaction freed are
     * free once it is committed: ask for that before reporting a full pool. */
    uint64_t need = blocks_needed(p, d, len, off);
    if (need > p->sm.nblocks - p->sm.busy && p->sm.pending.n)
        return CB_THIN_COMMIT;
    if (need > p->sm.nblocks - p->sm.busy)
        return CB_ENOSPC;
    while (len) {
        uint64_t v = off >> p->block_shift;
        uint32_t boff = (uint32_t)(off & (bs - 1));
        size_t n = bs - boff < len ? bs - boff : len;
        int rc;
        if (boff == 0 && len >= 2 * bs) {
            uint64_t k = len / bs < FULL_BATCH ? len / bs : FULL_BATCH;
            rc = write_full_blocks(p, d, v, k, src);
            n = k * bs;
        } else {
            rc = write_block(p, d, v, boff, n, src);
        }
        if (rc == CB_ENOSPC && p->sm.pending.n) {
            /* The pool or the file system is full: blocks this transaction
             * freed are released (and punched) by its commit.  The caller
             * commits, then this block is tried again. */
            return CB_THIN_COMMIT;
        }
        if (rc)
            return rc;
        src += n;
        off += n;
        len -= n;
        *done += n;
    }
    return 0;
}

/* ---- discard ------------------------------------------------------------ */

/* Does block v of d read from its external origin when unmapped? */
static int ext_covers(struct cb_store *p, const struct cb_devrec *d, uint64_t v)
{
    struct cb_external *x = ext_of(p, d);
    return x && (v << p->block_shift) < x->size;
}

/* Does v of d read anything but zeros through entry e? */
static int reads_data(struct cb_store *p, const struct cb_devrec *d,
                      const struct cb_entry *e, uint64_t v)
{
    return (e && (e->flags & (CB_E_MAPPED | CB_E_ORIGIN))) ||
           (ext_covers(p, d, v) && !(e && (e->flags & CB_E_ZERO)));
}

/* Space a discard needs: the partly covered blocks at its two ends are
 * zeroed by writing, which may copy up. */
static int discard_reserve(struct cb_store *p, struct cb_devrec *d, uint64_t len, uint64_t off)
{
    uint64_t bs = p->block_size, need = 0;
    uint64_t first = off >> p->block_shift, last = (off + len - 1) >> p->block_shift;
    if (len == 0)
        return 0;
    if (off % bs || (first == last && len < bs)) {
        const struct cb_entry *e = cb_map_lookup(d->root, d->depth, first);
        need += reads_data(p, d, e, first) && !private_entry(p, d, e);
    }
    if (last != first && (off + len) % bs) {
        const struct cb_entry *e = cb_map_lookup(d->root, d->depth, last);
        need += reads_data(p, d, e, last) && !private_entry(p, d, e);
    }
    if (need > p->sm.nblocks - p->sm.busy && p->sm.pending.n)
        return CB_THIN_COMMIT; /* a commit frees what this transaction freed */
    return need > p->sm.nblocks - p->sm.busy ? CB_ENOSPC : 0;
}

int cb_thin_discard(struct cb_store *p, struct cb_devrec *d, uint64_t len, uint64_t off)
{
    CB_MUST_WRITE(p);
    uint64_t bs = p->block_size;
    uint64_t end = off + len;
    int rc0 = discard_reserve(p, d, len, off);
    if (rc0)
        return rc0;
    while (off < end) {
        uint64_t v = off >> p->block_shift;
        if (!ext_covers(p, d, v)) {
            /* skip holes: they read as zeros already */
            uint64_t nv = cb_map_seek(d->root, d->depth, v);
            if (nv == UINT64_MAX || nv >= (end + bs - 1) >> p->block_shift)
                return 0;
            if (nv > v) {
                v = nv;
                off = v << p->block_shift;
            }
        }
        uint32_t boff = (uint32_t)(off & (bs - 1));
        size_t n = bs - boff < end - off ? bs - boff : end - off;
        const struct cb_entry *e = cb_map_lookup(d->root, d->depth, v);
        int has_data = reads_data(p, d, e, v);
        int rc = 0;
        if (has_data && n == bs) {
            struct cb_entry *w;
            rc = cb_map_writable(&p->map, &d->root, d->depth, v, &w);
            if (!rc) {
                struct cb_entry old = *w;
                w->block = w->origin = w->bitmap = 0;
                w->flags = CB_E_ZERO;
                w->time = p->map.now;
                rc = cb_entry_unref(&p->sm, &old);
            }
        } else if (has_data) {
            /* part of a block: write zeros over it */
            rc = write_block(p, d, v, boff, n, (const char *)p->zero);
        }
        if (rc == CB_ENOSPC && p->sm.pending.n)
            return CB_THIN_COMMIT; /* discarding the first part again is harmless */
        if (rc)
            return rc;
        off += n;
    }
    return 0;
}

/* ---- walks -------------------------------------------------------------- */

static void changed_walk(const struct cb_node *n, unsigned level, uint64_t base,
                         uint32_t birth, uint64_t nblocks, uint8_t *bits)
{
    if (!n || n->time < birth)
        return; /* untouched since the device was born */
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES && base + i < nblocks; i++) {
            const struct cb_entry *e = &n->u.e[i];
            if (e->time >= birth && e->time != 0)
                bits[(base + i) / 8] |= (uint8_t)(1u << ((base + i) % 8));
        }
        return;
    }
    uint64_t span = cb_map_span(level);
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
        changed_walk(n->u.c[i], level - 1, base + i * span, birth, nblocks, bits);
}

int cb_thin_changed(struct cb_store *p, struct cb_devrec *d, uint8_t *bits, size_t nbytes)
{
    CB_MUST_READ(p);
    (void)p;
    if (nbytes < (d->nblocks + 7) / 8)
        return CB_EINVAL;
    memset(bits, 0, nbytes);
    changed_walk(d->root, d->depth, 0, d->birth_time, d->nblocks, bits);
    return 0;
}

struct extents {
    uint64_t *pairs;
    size_t n, count;
    uint64_t start, len; /* run being built */
};

static void ext_emit(struct extents *x)
{
    if (x->len) {
        if (x->count < x->n) {
            x->pairs[2 * x->count] = x->start;
            x->pairs[2 * x->count + 1] = x->len;
        }
        x->count++;
    }
    x->len = 0;
}

static void ext_add(struct extents *x, uint64_t v)
{
    if (x->len && x->start + x->len == v) {
        x->len++;
        return;
    }
    ext_emit(x);
    x->start = v;
    x->len = 1;
}

int cb_thin_extents(struct cb_store *p, struct cb_devrec *d, uint64_t first, uint64_t end,
                    uint64_t *pairs, size_t n, size_t *count, uint64_t *next)
{
    CB_MUST_READ(p);
    struct extents x = {pairs, n, 0, 0, 0};
    uint64_t v = first;
    if (end > d->nblocks)
        end = d->nblocks;
    while (v < end) {
        if (!ext_covers(p, d, v)) {
            uint64_t nv = cb_map_seek(d->root, d->depth, v);
            if (nv == UINT64_MAX || nv >= end) {
                v = end;
                break;
            }
            v = nv;
        }
        if (reads_data(p, d, cb_map_lookup(d->root, d->depth, v), v)) {
            /* with next: stop where run n + 1 would start */
            if (next && !(x.len && x.start + x.len == v) && x.count + (x.len != 0) == n)
                break;
            ext_add(&x, v);
        }
        v++;
    }
    ext_emit(&x);
    *count = x.count;
    if (next)
        *next = v < end ? v : end;
    return 0;
}

/* ---- usage -------------------------------------------------------------- */

/* Every distinct node of every device, grouped by level. */
struct nodeset {
    struct cb_node **v;
    size_t n, cap;
};

static int collect(struct nodeset *s, struct cb_node *n)
{
    if (!n || n->mark)
        return 0;
    n->mark = 1;
    n->aux = 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        struct cb_node **v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return CB_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = n;
    if (n->level)
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++) {
            int rc = collect(s, n->u.c[i]);
            if (rc)
                return rc;
        }
    return 0;
}

static int by_level_desc(const void *a, const void *b)
{
    const struct cb_node *x = *(struct cb_node *const *)a, *y = *(struct cb_node *const *)b;
    return (int)y->level - (int)x->level;
}

/* Add k (devices reaching a leaf) to the count of block b. */
static int count_readers(struct cb_tally *t, uint64_t b, uint64_t k)
{
    uint64_t *slot;
    int rc = cb_tally_at(t, b, &slot);
    if (!rc)
        *slot += k;
    return rc;
}

/* Blocks named by a leaf (block and origin of each entry). */
static uint64_t leaf_refs(const struct cb_node *n)
{
    uint64_t k = 0;
    for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++)
        k += ((n->u.e[i].flags & CB_E_MAPPED) != 0) + ((n->u.e[i].flags & CB_E_ORIGIN) != 0);
    return k;
}

/* Blocks reached only by this device: walk the nodes that only it reaches
 * (aux == 1 after the device-count pass). */
static uint64_t exclusive_walk(const struct cb_node *n, const struct cb_tally *c)
{
    if (!n || n->aux != 1)
        return 0;
    uint64_t k = 0;
    if (n->level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++) {
            const struct cb_entry *e = &n->u.e[i];
            if ((e->flags & CB_E_MAPPED) && cb_tally_get(c, e->block) == 1)
                k++;
            if ((e->flags & CB_E_ORIGIN) && cb_tally_get(c, e->origin) == 1)
                k++;
        }
        return k;
    }
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
        k += exclusive_walk(n->u.c[i], c);
    return k;
}

/* Blocks changed_walk would mark, counted; *last is set if the device's
 * last block is one of them. */
static uint64_t changed_count(const struct cb_node *n, unsigned level, uint64_t base,
                              uint32_t birth, uint64_t nblocks, int *last)
{
    if (!n || n->time < birth || base >= nblocks)
        return 0;
    uint64_t k = 0;
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES && base + i < nblocks; i++) {
            const struct cb_entry *e = &n->u.e[i];
            if (e->time >= birth && e->time != 0) {
                k++;
                if (base + i == nblocks - 1)
                    *last = 1;
            }
        }
        return k;
    }
    uint64_t span = cb_map_span(level);
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
        k += changed_count(n->u.c[i], level - 1, base + i * span, birth, nblocks, last);
    return k;
}

/* Bytes of the blocks d changed since it was created, the last block
 * counted up to the device's end (as cb_dev_changed reports them). */
static uint64_t changed_bytes(const struct cb_store *p, const struct cb_devrec *d)
{
    int last = 0;
    uint64_t k = changed_count(d->root, d->depth, 0, d->birth_time, d->nblocks, &last);
    uint64_t bytes = k << p->block_shift;
    uint64_t tail = d->size & (p->block_size - 1);
    return last && tail ? bytes - (p->block_size - tail) : bytes;
}

int cb_thin_usage(struct cb_store *p, cb_usage *out, size_t n, size_t *count)
{
    CB_MUST_WRITE(p); /* the walk uses the nodes' scratch fields */
    struct nodeset s = {NULL, 0, 0};
    struct cb_tally c;
    int rc = cb_tally_init(&c, p->nblocks);
    if (rc)
        return rc;
    for (unsigned i = 0; i < p->ndevslots && !rc; i++)
        if (p->devs[i])
            rc = collect(&s, p->devs[i]->root);
    if (rc)
        goto done;
    if (s.n)
        qsort(s.v, s.n, sizeof *s.v, by_level_desc);
    /* devices reaching each node: roots count one per device, then parents
     * pass their count down (parents sort before children) */
    for (unsigned i = 0; i < p->ndevslots; i++)
        if (p->devs[i] && p->devs[i]->root)
            p->devs[i]->root->aux++;
    for (size_t k = 0; k < s.n && !rc; k++) {
        struct cb_node *x = s.v[k];
        if (x->level) {
            for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
                if (x->u.c[i])
                    x->u.c[i]->aux += x->aux;
        } else {
            for (unsigned i = 0; i < CB_LEAF_ENTRIES && !rc; i++) {
                const struct cb_entry *e = &x->u.e[i];
                if (e->flags & CB_E_MAPPED)
                    rc = count_readers(&c, e->block, x->aux);
                if (!rc && (e->flags & CB_E_ORIGIN))
                    rc = count_readers(&c, e->origin, x->aux);
            }
        }
    }
    if (rc)
        goto done;
    size_t k = 0;
    for (unsigned i = 0; i < p->ndevslots; i++) {
        struct cb_devrec *d = p->devs[i];
        if (!d)
            continue;
        if (k < n) {
            out[k].id = d->id;
            memcpy(out[k].name, d->name, sizeof out[k].name);
            out[k].exclusive = exclusive_walk(d->root, &c);
            out[k].changed_bytes = changed_bytes(p, d);
        }
        k++;
    }
    /* now reuse aux for the number of block references under each node:
     * children sort after parents, so walk the array backwards */
    for (size_t j = s.n; j-- > 0;) {
        struct cb_node *x = s.v[j];
        if (x->level == 0) {
            x->aux = leaf_refs(x);
        } else {
            uint64_t sum = 0;
            for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
                if (x->u.c[i])
                    sum += x->u.c[i]->aux;
            x->aux = sum;
        }
    }
    k = 0;
    for (unsigned i = 0; i < p->ndevslots; i++) {
        struct cb_devrec *d = p->devs[i];
        if (!d)
            continue;
        if (k < n) {
            out[k].mapped = d->root ? d->root->aux : 0;
            if (out[k].exclusive > out[k].mapped)
                out[k].exclusive = out[k].mapped;
            out[k].shared = out[k].mapped - out[k].exclusive;
        }
        k++;
    }
    *count = k;
done:
    for (size_t j = 0; j < s.n; j++) {
        s.v[j]->mark = 0;
        s.v[j]->aux = 0;
    }
    free(s.v);
    cb_tally_free(&c);
    return rc;
}

/* One device's usage from its own tree.  A data block the device names is
 * exclusive when every node on the path to the entry has rc == 1 (no other
 * device root or interior slot points at it, so no other device reaches
 * the leaf) and the block's reference count is 1 (no other leaf names it,
 * as block or as origin: mapping.c invariant 3).  Given exact counts this
 * is what cb_thin_usage finds for the device.  Only reads: nodes are not
 * marked, so callers may hold the lock shared. */
static int dev_usage_walk(const struct cb_store *p, const struct cb_node *n, int private_path,
                          cb_usage *u)
{
    private_path = private_path && n->rc == 1;
    if (n->level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++) {
            const struct cb_entry *e = &n->u.e[i];
            uint64_t b[2];
            unsigned k = 0;
            if (e->flags & CB_E_MAPPED)
                b[k++] = e->block;
            if (e->flags & CB_E_ORIGIN)
                b[k++] = e->origin; /* copy-up: the old block still read from */
            for (unsigned j = 0; j < k; j++) {
                if (b[j] >= p->nblocks)
                    return CB_ECORRUPT;
                u->mapped++;
                if (private_path && cb_sm_rc(&p->sm, b[j]) == 1)
                    u->exclusive++;
            }
        }
        return 0;
    }
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++) {
        const struct cb_node *c = n->u.c[i];
        int rc = c ? dev_usage_walk(p, c, private_path, u) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

int cb_thin_dev_usage(struct cb_store *p, const struct cb_devrec *d, cb_usage *out)
{
    CB_MUST_READ(p);
    cb_usage u;
    memset(&u, 0, sizeof u);
    u.id = d->id;
    memcpy(u.name, d->name, sizeof u.name);
    int rc = d->root ? dev_usage_walk(p, d->root, 1, &u) : 0;
    if (rc)
        return rc;
    u.shared = u.mapped - u.exclusive;
    u.changed_bytes = changed_bytes(p, d);
    *out = u;
    return 0;
}

/* ---- delta -------------------------------------------------------------- */

/*
 * Which sub-blocks of a device read differently from a base device, found
 * by walking both trees side by side.  A subtree both devices reach through
 * the same node is identical in both and skipped without being read, so
 * the cost is the nodes on the paths to the blocks where the two differ:
 * for a device and its ancestor (or a snapshot of it), O(changed).  Where
 * the nodes differ, entries are compared sub-block by sub-block by where
 * each reads from (a data block, the external origin, or zeros): the same
 * data block and sub-block is the same bytes, anything else is reported.
 * Nothing is read from the data file.
 */
struct delta_walk {
    struct cb_store *p;
    const struct cb_devrec *d, *b; /* b may be NULL: an all-zero base */
    uint64_t start;                /* first block wanted */
    uint64_t ext_blocks;           /* blocks d reads from an external origin b does not share */
    cb_delta *out;
    size_t n, count;
    uint64_t next;                 /* where to resume once out is full */
    int full;
};

#define SRC_ZERO 0u
#define SRC_EXT 1u

/* Where sub-block s reads from through entry e: SRC_ZERO, SRC_EXT, or a
 * data block + 2. */
static uint64_t sub_source(const struct cb_entry *e, unsigned s, int has_ext)
{
    if (e && (e->flags & CB_E_MAPPED) && (e->bitmap & BIT(s)))
        return e->block + 2;
    if (e && (e->flags & CB_E_ORIGIN))
        return e->origin + 2;
    if (e && (e->flags & CB_E_ZERO))
        return SRC_ZERO;
    return has_ext ? SRC_EXT : SRC_ZERO;
}

static void delta_entry(struct delta_walk *w, const struct cb_entry *e,
                        const struct cb_entry *f, uint64_t v)
{
    if (w->full || v < w->start || v >= w->d->nblocks)
        return;
    int ext_d = w->d->external_id && (v << w->p->block_shift) < w->p->ext[w->d->external_id - 1].size;
    int ext_b = w->b && w->b->external_id && ext_d;
    uint64_t data = 0, zero = 0;
    unsigned nsub = w->p->nsub; /* sub-blocks of v inside the device */
    uint64_t left = w->d->size - (v << w->p->block_shift);
    if (left < w->p->block_size)
        nsub = (unsigned)((left + w->p->sub_size - 1) / w->p->sub_size);
    for (unsigned s = 0; s < nsub; s++) {
        uint64_t x = sub_source(e, s, ext_d), y = sub_source(f, s, ext_b);
        if (x == y)
            continue;
        if (x == SRC_ZERO)
            zero |= BIT(s);
        else
            data |= BIT(s);
    }
    if (!data && !zero)
        return;
    if (!data) {
        /* the block reads as zeros in d: report all of it, so that a
         * receiver discards it whole and holds no block for it either */
        unsigned s = 0;
        while (s < nsub && sub_source(e, s, ext_d) == SRC_ZERO)
            s++;
        if (s == nsub)
            zero = nsub == 64 ? UINT64_MAX : BIT(nsub) - 1;
    }
    if (w->count == w->n) {
        w->full = 1;
        w->next = v;
        return;
    }
    w->out[w->count++] = (cb_delta){v, data, zero};
}

/* Blocks covered by a node at `level`. */
static uint64_t node_cover(unsigned level)
{
    return level ? cb_map_span(level) * CB_NODE_FANOUT : CB_LEAF_ENTRIES;
}

static void delta_walk(struct delta_walk *w, const struct cb_node *x, const struct cb_node *y,
                       unsigned level, uint64_t base)
{
    uint64_t end = base + node_cover(level);
    if (w->full || end <= w->start || base >= w->d->nblocks)
        return;
    if (x == y && (x || base >= w->ext_blocks))
        return; /* the same node (or a hole in both, outside an external origin) */
    if (!x && !y) {
        /* a hole in both that d reads from its external origin */
        uint64_t stop = end < w->ext_blocks ? end : w->ext_blocks;
        for (uint64_t v = base > w->start ? base : w->start; v < stop && !w->full; v++)
            delta_entry(w, NULL, NULL, v);
        return;
    }
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES && !w->full; i++)
            delta_entry(w, x ? &x->u.e[i] : NULL, y ? &y->u.e[i] : NULL, base + i);
        return;
    }
    uint64_t span = cb_map_span(level);
    for (unsigned i = 0; i < CB_NODE_FANOUT && !w->full; i++)
        delta_walk(w, x ? x->u.c[i] : NULL, y ? y->u.c[i] : NULL, level - 1, base + i * span);
}

int cb_thin_delta(struct cb_store *p, const struct cb_devrec *d, const struct cb_devrec *b,
                  uint64_t start, cb_delta *out, size_t n, size_t *count, uint64_t *next)
{
    CB_MUST_READ(p);
    if (b && (b->size != d->size || b->external_id != d->external_id))
        return CB_EINVAL;
    struct delta_walk w = {p, d, b, start, 0, out, n, 0, d->nblocks, 0};
    if (!b && d->external_id) {
        uint64_t xs = p->ext[d->external_id - 1].size;
        w.ext_blocks = (xs + p->block_size - 1) >> p->block_shift;
    }
    if (start < d->nblocks)
        delta_walk(&w, d->root, b ? b->root : NULL, d->depth, 0);
    *count = w.count;
    *next = w.full ? w.next : d->nblocks;
    return 0;
}
