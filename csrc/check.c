/*
 * check.c - verify a pool against its invariants, and repair what can be
 * repaired without guessing.
 *
 * Runs under the exclusive lock, on a committed store: the caller (pool.c)
 * commits a writable pool first, so that everything in memory is also on
 * disk, and drives the steps (check.h).  Then:
 *   0. both superblock slots are read back and parsed as open would (the
 *      one the pool does not stand on must hold an older generation of the
 *      same pool); with repair a bad one is rewritten by a commit, which
 *      writes only that slot (check asks for it, the caller commits).  The
 *      data file must span the pool's blocks, and each external origin must
 *      still be the file it recorded;
 *   1. every committed page reachable from the superblock is read back and
 *      its header and checksum verified;
 *   2. node reference counts are recomputed from the trees;
 *   3. data reference counts are recomputed from the leaves and compared
 *      with the space map, and every entry is checked (flags, bitmap,
 *      blocks in range);
 *   4. the space map's busy bits agree with the counts (a block held for
 *      readers of older commits, txn.c, is busy and unreferenced);
 *   5. the data file is scanned (SEEK_DATA) for free blocks that still
 *      hold data: a leak of disk space, repaired by punching it out (open
 *      does this by itself after an unclean shutdown, see txn.c);
 *   6. metadata pages marked in use but unreachable: leaked pages,
 *      repaired by marking them free.
 * Corruption (1-4) is reported, never "repaired": we refuse to guess.
 * Messages name the page, its offset and its kind (meta.h's detail).
 */
#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cb_checker {
    struct cb_store *p;
    cb_check *r;
    char *buf;
    size_t len, used;
    unsigned char *pg;
    uint64_t *reach;     /* bitmap of reachable metadata pages */
    uint64_t npages;
    struct cb_tally cnt; /* recomputed data counts */
    int ioerr;           /* first IO error: the check cannot conclude */
    uint64_t from;       /* generation before the commit a slot's repair asked for */
    char why[320];       /* what was wrong with that slot */
};

static void say(struct cb_checker *c, const char *fmt, ...)
{
    if (!c->buf || c->used + 1 >= c->len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->buf + c->used, c->len - c->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->used += (size_t)n < c->len - c->used ? (size_t)n : c->len - c->used - 1;
    if (c->used + 1 < c->len)
        c->buf[c->used++] = '\n';
    c->buf[c->used] = 0;
}

static void error(struct cb_checker *c, const char *what, uint64_t a, uint64_t b)
{
    if (c->r->errors++ < 100)
        say(c, "error: %s (%llu, %llu)", what, (unsigned long long)a, (unsigned long long)b);
}

/* An error told as a sentence (counted like error()). */
static void __attribute__((format(printf, 2, 3))) errorf(struct cb_checker *c, const char *fmt, ...)
{
    if (c->r->errors++ >= 100)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    say(c, "error: %s", line);
}

static void reach(struct cb_checker *c, uint64_t page)
{
    if (page < c->npages)
        c->reach[page / 64] |= 1ull << (page % 64);
}

static void verify_page(struct cb_checker *c, uint64_t page, uint32_t type)
{
    reach(c, page);
    int rc = cb_io_pread(c->p->meta, c->pg, CB_PAGE, page * CB_PAGE);
    if (rc) {
        /* an unreadable page says nothing about the metadata's validity */
        if (!c->ioerr)
            c->ioerr = rc;
        return;
    }
    if (cb_page_verify(c->pg, type, page, c->p->generation) != 0) {
        char why[320];
        cb_corrupt_detail(why, sizeof why, NULL);
        errorf(c, "%s", why);
    }
}

static int blank(const unsigned char *pg)
{
    for (unsigned i = 0; i < CB_PAGE; i++)
        if (pg[i])
            return 0;
    return 1;
}

/* What is wrong with superblock slot s as it is on disk now, in why; 0 if
 * nothing (or CB_E* of a read that failed). */
static int slot_problem(struct cb_checker *c, unsigned s, char *why, size_t len)
{
    struct cb_store *p = c->p;
    why[0] = 0;
    int rc = cb_io_pread(p->meta, c->pg, CB_PAGE, (uint64_t)s * CB_PAGE);
    if (rc)
        return rc;
    if (s != p->generation % 2 && p->generation == 1 && blank(c->pg))
        return 0; /* never written: a new pool's first commit writes it */
    uint64_t msize;
    if ((rc = p->meta->ops->size(p->meta, &msize)))
        return rc;
    if (cb_meta_parse_super(c->pg, s, msize / CB_PAGE)) {
        cb_corrupt_detail(why, len, NULL);
        return 0;
    }
    uint64_t gen = cb_get64(c->pg + 16);
    if (s == p->generation % 2 ? gen != p->generation : gen >= p->generation)
        snprintf(why, len, "superblock slot %u (offset 0x%x): generation %llu where the "
                 "pool stands on generation %llu", s, s * CB_PAGE, (unsigned long long)gen,
                 (unsigned long long)p->generation);
    else if (cb_get32(c->pg + 52) != p->block_size || cb_get64(c->pg + 56) != p->nblocks ||
             memcmp(c->pg + 104, p->uuid, 16))
        snprintf(why, len, "superblock slot %u (offset 0x%x): block size, size or uuid "
                 "differ from the current superblock's (a superblock of another pool?)",
                 s, s * CB_PAGE);
    return 0;
}

/* A device's external origin: still the file that was attached? */
static void check_external(struct cb_checker *c, const struct cb_devrec *d,
                           const struct cb_external *x)
{
    char why[200];
    if (!x->path)
        errorf(c, "device '%s' names external origin that does not exist", d->name);
    else if (x->changed)
        errorf(c, "device '%s': %s; reads through it are refused", d->name, x->why);
    else if (!x->io)
        say(c, "warning: device '%s': external origin '%s' cannot be read", d->name, x->path);
    else if (cb_store_external_changed(x, why, sizeof why))
        errorf(c, "device '%s': %s (while the pool was open); reopening refuses reads "
               "through it", d->name, why);
    else if (!x->stamped)
        say(c, "warning: device '%s': external origin '%s' was attached without a record "
            "of its identity (by an older version, or a block device): changes to it "
            "cannot be detected", d->name, x->path);
}

/* Both superblock slots.  The slot the pool does not stand on is the one
 * the next commit writes, so repair is a commit: it rewrites that slot
 * from the current state and never touches the slot the pool stands on
 * until the new one is durable (a power cut leaves the current one). */
/* Superblock slot s (one step of the slots' check, check.h). */
int cb_check_slot(struct cb_checker *c, unsigned s, int repair)
{
    struct cb_store *p = c->p;
    CB_MUST_WRITE(p);
    char *why = c->why;
    int rc = slot_problem(c, s, why, sizeof c->why);
    if (rc)
        return rc;
    if (!why[0]) {
        if (p->sb_damage[s][0] && repair) {
            c->r->repaired++;
            say(c, "repaired: %s, when the pool was opened from the other slot (had it "
                "held a newer commit, that commit is lost): rewritten from the current "
                "superblock by a commit since", p->sb_damage[s]);
            p->sb_damage[s][0] = 0; /* told */
        } else if (p->sb_damage[s][0])
            say(c, "warning: %s, when the pool was opened from the other slot (had it held "
                "a newer commit, that commit is lost); a commit has rewritten it since", p->sb_damage[s]);
        return 0;
    }
    if (s == p->generation % 2 || !repair) {
        errorf(c, "%s", why);
        return 0;
    }
    /* the next commit writes exactly this slot */
    c->from = p->generation;
    return CB_CHECK_COMMIT;
}

/* After the commit cb_check_slot asked for: is slot s good now? */
int cb_check_rewritten(struct cb_checker *c, unsigned s)
{
    struct cb_store *p = c->p;
    CB_MUST_WRITE(p);
    char again[320];
    int rc = slot_problem(c, s, again, sizeof again);
    if (rc)
        return rc;
    if (again[0]) {
        errorf(c, "%s (rewriting it failed: %s)", c->why, again);
        return 0;
    }
    c->r->repaired++;
    say(c, "repaired: %s: rewritten from generation %llu (now generation %llu)", c->why,
        (unsigned long long)c->from, (unsigned long long)p->generation);
    return 0;
}

static int count(struct cb_checker *c, uint64_t b)
{
    struct cb_store *p = c->p;
    if (b >= p->nblocks) {
        error(c, "entry names a block outside the data file (block, nblocks)", b, p->nblocks);
        return 0;
    }
    uint64_t *slot;
    int rc = cb_tally_at(&c->cnt, b, &slot);
    if (!rc)
        ++*slot;
    return rc;
}

static int walk(struct cb_checker *c, struct cb_node *n, unsigned level)
{
    struct cb_store *p = c->p;
    if (n->level != level)
        error(c, "node at the wrong level (level, expected)", n->level, level);
    n->aux++; /* parents seen */
    if (n->mark)
        return 0;
    n->mark = 1;
    c->r->nodes++;
    if (n->dirty)
        error(c, "node not committed after commit (page, level)", n->page, n->level);
    else
        verify_page(c, n->page, level ? CB_PT_NODE : CB_PT_LEAF);
    int rc = 0;
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES && !rc; i++) {
            const struct cb_entry *e = &n->u.e[i];
            if (e->flags & ~CB_E_KNOWN || (e->bitmap & ~p->full_bitmap) ||
                ((e->flags & CB_E_ORIGIN) && !(e->flags & CB_E_MAPPED)) ||
                ((e->flags & CB_E_MAPPED) && e->bitmap == 0) ||
                ((e->flags & CB_E_ORIGIN) && e->bitmap == p->full_bitmap))
                error(c, "malformed entry (page, index)", n->page, i);
            if (e->flags & CB_E_MAPPED) {
                c->r->mapped_entries++;
                rc = count(c, e->block);
            }
            if (!rc && (e->flags & CB_E_ORIGIN))
                rc = count(c, e->origin);
        }
        return rc;
    }
    for (unsigned i = 0; i < CB_NODE_FANOUT && !rc; i++)
        if (n->u.c[i])
            rc = walk(c, n->u.c[i], level - 1);
    return rc;
}

static void compare_nodes(struct cb_checker *c, struct cb_node *n)
{
    if (!n || n->mark != 1)
        return;
    n->mark = 2;
    if (n->aux != n->rc)
        error(c, "node reference count wrong (page, count)", n->page, n->rc);
    if (n->level)
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
            compare_nodes(c, n->u.c[i]);
}

static void reset_marks(struct cb_node *n)
{
    if (!n || n->mark == 0)
        return;
    n->mark = 0;
    n->aux = 0;
    if (n->level)
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
            reset_marks(n->u.c[i]);
}

static void compare_counts(struct cb_checker *c)
{
    struct cb_store *p = c->p;
    for (uint64_t ci = 0; ci < p->sm.nchunks; ci++) {
        const struct cb_sm_chunk *ch = p->sm.chunks[ci];
        const uint64_t *want = c->cnt.chunk[ci];
        uint64_t base = ci * CB_SM_CHUNK;
        uint64_t limit = p->nblocks - base < CB_SM_CHUNK ? p->nblocks - base : CB_SM_CHUNK;
        for (uint64_t i = 0; i < limit; i++) {
            uint64_t have = ch ? ch->rc[i] : 0, w = want ? want[i] : 0;
            int busy = ch && (ch->busy[i / 64] >> (i % 64)) & 1;
            int held = ch && (ch->held[i / 64] >> (i % 64)) & 1;
            if (have != w)
                error(c, "data block reference count wrong (block, count)", base + i, have);
            if (held && w > 0)
                error(c, "block held for readers but in use (block, count)", base + i, w);
            else if (busy != (w > 0 || held))
                error(c, "block both free and used (block, count)", base + i, w);
        }
    }
}

int cb_check_free_data(struct cb_store *p, int punch, uint64_t *found, uint64_t *punched)
{
    CB_MUST_WRITE(p);
    uint64_t bs = p->block_size, off = 0, end = p->nblocks * bs;
    *found = *punched = 0;
    while (off < end) {
        uint64_t data, hole;
        int rc = p->data.io->ops->next_data(p->data.io, off, &data, &hole);
        if (rc)
            return rc;
        if (data >= end)
            break;
        if (hole > end)
            hole = end;
        for (uint64_t b = data / bs; b * bs < hole; b++) {
            if (cb_sm_rc(&p->sm, b) || cb_sm_kept(&p->sm, b) || cb_sm_held(&p->sm, b))
                continue; /* in use, kept for reuse or held for readers on purpose */
            uint64_t first = b;
            while ((b + 1) * bs < hole && cb_sm_rc(&p->sm, b + 1) == 0 &&
                   !cb_sm_kept(&p->sm, b + 1) && !cb_sm_held(&p->sm, b + 1))
                b++;
            *found += b - first + 1;
            if (punch && cb_datafile_punch(&p->data, first, b - first + 1) == 0)
                *punched += b - first + 1;
        }
        off = hole > off ? (hole + bs - 1) / bs * bs : off + bs;
    }
    return 0;
}

static int scan_leaks(struct cb_checker *c, int repair)
{
    uint64_t punched;
    int rc = cb_check_free_data(c->p, repair, &c->r->leaked_blocks, &punched);
    c->r->repaired += punched;
    if (c->r->leaked_blocks)
        say(c, "leak: %llu free data blocks still hold data in the file%s",
            (unsigned long long)c->r->leaked_blocks, repair ? " (punched out)" : "");
    return rc;
}

static void scan_pages(struct cb_checker *c, int repair)
{
    struct cb_pagemap *pm = &c->p->pm;
    for (uint64_t pg = 2; pg < pm->npages; pg++) {
        int used = cb_pm_test(pm, pg);
        int reached = pg < c->npages && (c->reach[pg / 64] >> (pg % 64)) & 1;
        if (used && !reached) {
            c->r->leaked_pages++;
            if (repair) {
                pm->busy[pg / 64] &= ~(1ull << (pg % 64));
                pm->nbusy--;
                c->r->repaired++;
            }
        } else if (reached && !used) {
            error(c, "reachable metadata page marked free (page, 0)", pg, 0);
        }
    }
    if (c->r->leaked_pages)
        say(c, "leak: %llu metadata pages in use but unreachable%s",
            (unsigned long long)c->r->leaked_pages, repair ? " (freed)" : "");
}

int cb_check_begin(struct cb_store *p, cb_check *out, char *buf, size_t len,
                   struct cb_checker **out_c)
{
    CB_MUST_WRITE(p);
    memset(out, 0, sizeof *out);
    if (buf && len)
        buf[0] = 0;
    *out_c = NULL;
    struct cb_checker *c = calloc(1, sizeof *c);
    if (!c)
        return CB_ENOMEM;
    *c = (struct cb_checker){p, out, buf, len, 0, malloc(CB_PAGE), NULL, p->pm.npages,
                             {NULL, 0}, 0, 0, {0}};
    c->reach = calloc((c->npages + 63) / 64 + 1, sizeof *c->reach);
    if (!c->pg || !c->reach || cb_tally_init(&c->cnt, p->nblocks)) {
        cb_check_end(c);
        return CB_ENOMEM;
    }
    /* both superblock slots (cb_check_slot), then the rest (cb_check_rest) */
    reach(c, 0);
    reach(c, 1);
    *out_c = c;
    return 0;
}

void cb_check_end(struct cb_checker *c)
{
    cb_meta_clear(); /* the details went into the messages */
    if (!c)
        return;
    cb_tally_free(&c->cnt);
    free(c->reach);
    free(c->pg);
    free(c);
}

int cb_check_rest(struct cb_checker *c, int repair)
{
    struct cb_store *p = c->p;
    CB_MUST_WRITE(p);
    cb_check *out = c->r;
    int rc;
    /* the data file's size, device table, externals, free log */
    uint64_t dsize;
    if ((rc = p->data.io->ops->size(p->data.io, &dsize)))
        return rc;
    if (dsize < cb_geometry_data_span(&p->geo))
        errorf(c, "data file '%s/data' is %llu bytes, shorter than the %llu bytes the "
               "pool's %llu blocks of %u bytes%s need (truncated?)", p->path,
               (unsigned long long)dsize, (unsigned long long)cb_geometry_data_span(&p->geo),
               (unsigned long long)p->nblocks, p->block_size,
               p->csum_on ? " and their checksums" : "");
    for (unsigned k = 0; k < CB_SB_DEVTAB_MAX; k++)
        if (p->devpages[k].page)
            verify_page(c, p->devpages[k].page, CB_PT_DEVTAB);
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++)
        if (p->ext[i].path && p->ext[i].page)
            verify_page(c, p->ext[i].page, CB_PT_EXT);
    for (size_t i = 0; i < p->freelog_pages.n; i++)
        verify_page(c, p->freelog_pages.v[i], CB_PT_FREELOG);
    for (unsigned i = 0; i < p->ndevslots && !rc; i++) {
        struct cb_devrec *d = p->devs[i];
        if (!d)
            continue;
        if (d->depth != cb_map_depth(d->nblocks))
            error(c, "device tree depth wrong (id, depth)", d->id, d->depth);
        if (d->external_id)
            check_external(c, d, &p->ext[d->external_id - 1]);
        if (d->root)
            rc = walk(c, d->root, d->depth);
    }
    for (unsigned i = 0; i < p->ndevslots; i++)
        if (p->devs[i])
            compare_nodes(c, p->devs[i]->root);
    for (unsigned i = 0; i < p->ndevslots; i++)
        if (p->devs[i])
            reset_marks(p->devs[i]->root);
    if (!rc)
        rc = c->ioerr;
    if (rc)
        return rc;
    compare_counts(c);
    if (out->errors == 0) {
        /* leaks are only safe to repair in an otherwise consistent pool */
        rc = scan_leaks(c, repair);
        scan_pages(c, repair);
    }
    if (out->errors > 100)
        say(c, "... %llu errors in all", (unsigned long long)out->errors);
    return rc;
}
