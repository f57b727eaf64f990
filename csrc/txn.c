/*
 * txn.c - the commit protocol, and its inverse: loading a committed state.
 *
 * Commit (shadow paging, as in dm-thin and LMDB):
 *   1. fdatasync(data): every data block a new entry names is durable
 *      (skipped when nothing was written to the data file since the last).
 *   2. Write every dirty node to a fresh page, children before parents;
 *      then the changed device-table pages, new external-origin pages and
 *      the free log (data blocks this transaction freed), all to fresh
 *      pages.  No page the committed superblock reaches is overwritten.
 *   3. fdatasync(meta).
 *   4. Write the superblock, generation + 1, into slot (generation + 1) % 2,
 *      the older of the two.  fdatasync(meta).  This is the commit point.
 *   5. Punch the freed data blocks out of the data file and release freed
 *      blocks and pages for reuse (DESIGN.md invariant 5).
 * A failure in 1-4 is returned to the caller, which puts the pool in the
 * sticky failed state (pool.c): the store is not fit for another commit.
 * The mode (txn.h) says whether the superblock marks the pool clean.  Open picks
 * the valid superblock with the highest generation; a torn superblock
 * write fails its checksum and the other slot wins.
 *
 * Load validates every page it reads (type, checksum, own address,
 * generation, every field's range) and rebuilds all reference counts from
 * the trees, so counts on disk can never disagree with the mappings.
 */
#include "txn.h"

#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DIRTY_LIMIT 16384u          /* nodes (64 MiB of metadata) */
#define PENDING_LIMIT (1u << 20)    /* freed blocks awaiting a commit */
#define META_RESERVE 64u            /* pages kept allocated past the metadata in use */

/* ---- encoding ------------------------------------------------------------ */

static void encode_super(struct cb_store *p, unsigned char *pg, uint64_t gen, int clean)
{
    memset(pg, 0, CB_PAGE);
    memcpy(pg + 32, "cowblock", 8);
    cb_put32(pg + 40, CB_FORMAT_VERSION);
    /* the free log about to be committed lists held runs (txn.c,
     * "Readers"), which a build that does not know them would punch */
    cb_put32(pg + 44, (p->csum_on ? CB_INCOMPAT_CSUM : 0) | (p->held.n ? CB_INCOMPAT_HELD : 0));
    /* a failed punch leaves space behind: let the next open reclaim it */
    cb_put32(pg + 48, clean && !p->data.leaky ? CB_COMPAT_CLEAN : 0);
    cb_put32(pg + 52, p->block_size);
    cb_put64(pg + 56, p->nblocks);
    cb_put64(pg + 64, p->map.now);
    cb_put64(pg + 72, p->next_dev_id);
    cb_put64(pg + 80, p->pm.npages);
    cb_put64(pg + 88, p->freelog_page);
    unsigned ndevtab = (p->ndevslots + CB_DEVTAB_RECS - 1) / CB_DEVTAB_RECS;
    cb_put32(pg + 96, ndevtab);
    memcpy(pg + 104, p->uuid, 16);
    cb_put64(pg + 120, p->created_ns);
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++)
        cb_put64(pg + CB_SB_EXT_OFF + 8 * i, p->ext[i].path ? p->ext[i].page : 0);
    for (unsigned i = 0; i < ndevtab; i++)
        cb_put64(pg + CB_SB_DEVTAB_OFF + 8 * i, p->devpages[i].page);
    uint64_t slot = gen % 2;
    cb_page_seal(pg, CB_PT_SUPER, slot, gen, (uint32_t)p->map.now, 0, 0);
}

static void encode_node(const struct cb_node *n, unsigned char *pg, uint64_t page, uint64_t gen)
{
    memset(pg, 0, CB_PAGE);
    uint16_t count = 0;
    if (n->level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++) {
            const struct cb_entry *e = &n->u.e[i];
            unsigned char *q = pg + CB_HDR + 32 * i;
            cb_put64(q, e->block);
            cb_put64(q + 8, e->origin);
            cb_put64(q + 16, e->bitmap);
            cb_put32(q + 24, e->time);
            cb_put32(q + 28, e->flags);
            count += e->flags != 0;
        }
        cb_page_seal(pg, CB_PT_LEAF, page, gen, n->time, 0, count);
    } else {
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++) {
            const struct cb_node *c = n->u.c[i];
            cb_put64(pg + CB_HDR + 8 * i, c ? c->page : 0);
            count += c != NULL;
        }
        cb_page_seal(pg, CB_PT_NODE, page, gen, n->time, n->level, count);
    }
}

static void encode_devrec(const struct cb_devrec *d, unsigned char *q)
{
    memset(q, 0, CB_DEVREC_SIZE);
    cb_put32(q, d->id);
    cb_put32(q + 4, d->flags);
    cb_put64(q + 8, d->size);
    cb_put64(q + 16, d->root ? d->root->page : 0);
    cb_put32(q + 24, d->depth);
    cb_put32(q + 28, d->birth_time);
    cb_put32(q + 32, d->snap_time);
    cb_put32(q + 36, d->origin_id);
    cb_put64(q + 40, d->created_ns);
    cb_put32(q + 48, d->external_id);
    size_t len = strlen(d->name);
    cb_put32(q + 52, (uint32_t)len);
    memcpy(q + 64, d->name, len);
}

/* ---- commit -------------------------------------------------------------- */

/* Keep META_RESERVE pages allocated in the metadata file past those in
 * use, so that a commit (which is what frees space) never needs space from
 * a full file system.  Best effort: an error here changes nothing. */
static void meta_reserve(struct cb_store *p)
{
    int fd = cb_file_fd(p->meta);
    if (fd >= 0)
        (void)posix_fallocate(fd, 0, (off_t)((p->pm.npages + META_RESERVE) * CB_PAGE));
}

static int write_page(struct cb_store *p, unsigned char *pg, uint64_t page)
{
    return cb_io_pwrite(p->meta, pg, CB_PAGE, page * CB_PAGE);
}

/* Give a changed page's content a fresh home; free the old one. */
static int relocate(struct cb_store *p, uint64_t *page)
{
    uint64_t q;
    int rc = cb_pm_alloc(&p->pm, &q);
    if (rc)
        return rc;
    if (*page && (rc = cb_pm_free(&p->pm, *page)))
        return rc;
    *page = q;
    return 0;
}

static int write_node(struct cb_store *p, struct cb_node *n, unsigned char *pg, uint64_t gen)
{
    if (!n || !n->dirty)
        return 0;
    int rc;
    if (n->level)
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
            if ((rc = write_node(p, n->u.c[i], pg, gen)))
                return rc;
    if ((rc = relocate(p, &n->page)))
        return rc;
    encode_node(n, pg, n->page, gen);
    if ((rc = write_page(p, pg, n->page)))
        return rc;
    n->dirty = 0;
    p->map.ndirty--;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sort the pending list and turn it into (start, count) runs in place;
 * returns the number of runs (pairs at v[0..2*runs)). */
static size_t pending_runs(struct cb_u64vec *pend, struct cb_u64vec *runs)
{
    if (pend->n) /* qsort's pointer must not be NULL, even for no elements */
        qsort(pend->v, pend->n, sizeof *pend->v, cmp_u64);
    runs->n = 0;
    for (size_t i = 0; i < pend->n;) {
        size_t j = i + 1;
        while (j < pend->n && pend->v[j] == pend->v[j - 1] + 1)
            j++;
        if (cb_u64vec_push(runs, pend->v[i]) || cb_u64vec_push(runs, j - i))
            return (size_t)-1;
        i = j;
    }
    return runs->n / 2;
}

/* The free log: this transaction's freed runs, (start, count) pairs,
 * then the held runs, (freed_by, start, count) triples (meta.h), each kind
 * in pages of its own (level 0 and CB_FREELOG_HELD). */
static int write_freelog(struct cb_store *p, const struct cb_u64vec *runs,
                         unsigned char *pg, uint64_t gen)
{
    int rc;
    for (size_t i = 0; i < p->freelog_pages.n; i++)
        if ((rc = cb_pm_free(&p->pm, p->freelog_pages.v[i])))
            return rc;
    p->freelog_pages.n = 0;
    p->freelog_page = 0;
    const struct {
        const uint64_t *v;
        size_t n, width, max;
    } kinds[2] = {{runs->v, runs->n / 2, 2, CB_FREELOG_MAX},
                  {p->held.v, p->held.n / 3, 3, CB_HELDLOG_MAX}};
    size_t npages = 0;
    for (int k = 0; k < 2; k++)
        npages += (kinds[k].n + kinds[k].max - 1) / kinds[k].max;
    for (size_t k = 0; k < npages; k++) {
        uint64_t q;
        if ((rc = cb_pm_alloc(&p->pm, &q)) || (rc = cb_u64vec_push(&p->freelog_pages, q)))
            return rc;
    }
    size_t at = 0;
    for (uint16_t k = 0; k < 2; k++) {
        size_t n = kinds[k].n, w = kinds[k].width;
        for (size_t first = 0; first < n; first += kinds[k].max, at++) {
            memset(pg, 0, CB_PAGE);
            size_t cnt = n - first < kinds[k].max ? n - first : kinds[k].max;
            cb_put64(pg + 32, at + 1 < npages ? p->freelog_pages.v[at + 1] : 0);
            cb_put32(pg + 40, (uint32_t)cnt);
            for (size_t r = 0; r < cnt * w; r++)
                cb_put64(pg + 48 + 8 * r, kinds[k].v[first * w + r]);
            uint64_t page = p->freelog_pages.v[at];
            cb_page_seal(pg, CB_PT_FREELOG, page, gen, 0, k ? CB_FREELOG_HELD : 0,
                         (uint16_t)cnt);
            if ((rc = write_page(p, pg, page)))
                return rc;
        }
    }
    p->freelog_page = npages ? p->freelog_pages.v[0] : 0;
    return 0;
}

/* Give the freed blocks of runs back to the file system, or keep them
 * (up to keep_max kept blocks in all) for cb_sm_alloc to hand out first.
 * The runs go backwards, so that kept blocks come back in ascending order
 * and whole-block writes into them coalesce. */
static void punch_runs(struct cb_store *p, const uint64_t *runs, size_t nruns, uint64_t keep_max)
{
    for (size_t i = nruns; i-- > 0;) {
        uint64_t b = runs[2 * i], n = runs[2 * i + 1];
        int ok = 1;
        for (uint64_t k = 0; k < n; k++)
            if (cb_sm_rc(&p->sm, b + k) != 0)
                ok = 0;
        if (!ok)
            continue;
        while (n && p->sm.nkept < keep_max && cb_sm_keep(&p->sm, b + n - 1) == 0)
            n--;
        if (!n)
            continue;
        /* A punch that fails only leaves space allocated: check reports
         * it as a leak and repair gives it back. */
        if (cb_datafile_punch(&p->data, b, n) == 0)
            p->st.punched_blocks += n;
        else
            p->data.leaky = 1;
    }
}

/* ---- readers ---------------------------------------------------------------
 *
 * Readers on other hosts (a backend with a reader table, blockio.h: pin)
 * read the state of the commit they opened, with no lock against the
 * writer.  Two rules keep what they read unchanged:
 *   1. No committed data block is written in place (shared_readers makes
 *      thin copy up every first write after a commit, store.h).
 *   2. A data block freed by commit g is reachable from every generation
 *      before g.  After publishing g the writer asks for the oldest
 *      generation a registered reader pins (m); blocks freed by g are
 *      released (punched, or kept for reuse) only if m >= g, else held:
 *      busy, never punched, listed in the free log with their age, until a
 *      later commit finds m >= g.  A reader registers (at a generation no
 *      newer than any it may load) before it reads the superblock it loads
 *      (pool.c: pin, then load), so the writer's question after each
 *      commit published from then on finds it.
 * Metadata pages are not held: a reader loads all of them at open, and a
 * page reused under a load carries a newer generation than the superblock
 * the reader loads, which the load refuses (pool.c then loads again).
 * A reader whose registration lapsed is refused reads (CB_ESTALE): the
 * writer may have reused what it reached.
 */

/* The oldest generation a registered reader pins: UINT64_MAX when none
 * (or the backend has no readers), 0 when the backend cannot tell (then
 * everything freed is held). */
static uint64_t oldest_reader(struct cb_store *p)
{
    uint64_t m = UINT64_MAX;
    if (p->shared_readers && p->meta->ops->oldest_pin(p->meta, &m))
        m = 0;
    return m;
}

/* Record run (gen, start, count) as held; out of memory: the blocks stay
 * busy until the pool is opened again (the free log lists them). */
static void push_held(struct cb_store *p, uint64_t gen, uint64_t b, uint64_t n)
{
    if (cb_u64vec_push(&p->held, gen) || cb_u64vec_push(&p->held, b) ||
        cb_u64vec_push(&p->held, n)) {
        p->held.n -= p->held.n % 3;
        p->data.leaky = 1;
    }
}

/* Hold the runs commit gen freed (they are pending: rc == 0, busy). */
static void hold_runs(struct cb_store *p, uint64_t gen, const struct cb_u64vec *runs)
{
    for (size_t i = 0; i + 1 < runs->n; i += 2) {
        uint64_t b = runs->v[i], n = runs->v[i + 1];
        for (uint64_t k = 0; k < n; k++)
            (void)cb_sm_hold(&p->sm, b + k);
        push_held(p, gen, b, n);
    }
}

/* Release the held runs no registered reader can reach any more (freed by
 * a commit <= m): punched, or kept for reuse. */
static void release_held(struct cb_store *p, uint64_t m)
{
    struct cb_u64vec runs = {NULL, 0, 0};
    size_t keep = 0;
    for (size_t i = 0; i + 2 < p->held.n; i += 3) {
        uint64_t t = p->held.v[i], b = p->held.v[i + 1], n = p->held.v[i + 2];
        if (t > m) {
            memmove(p->held.v + keep, p->held.v + i, 3 * sizeof *p->held.v);
            keep += 3;
            continue;
        }
        for (uint64_t k = 0; k < n; k++)
            cb_sm_unhold(&p->sm, b + k);
        if (cb_u64vec_push(&runs, b) || cb_u64vec_push(&runs, n))
            p->data.leaky = 1; /* not punched: the next open reclaims it */
    }
    p->held.n = keep;
    punch_runs(p, runs.v, runs.n / 2, p->keep_max);
    cb_u64vec_free(&runs);
}

uint64_t cb_txn_release_held(struct cb_store *p)
{
    CB_MUST_WRITE(p);
    if (!p->held.n)
        return 0;
    uint64_t before = p->sm.nheld, m = oldest_reader(p);
    if (p->held.v[0] <= m)
        release_held(p, m);
    return before - p->sm.nheld;
}

void cb_txn_trim_kept(struct cb_store *p, uint64_t max)
{
    CB_MUST_WRITE(p);
    struct cb_u64vec blocks = {NULL, 0, 0}, runs = {NULL, 0, 0};
    uint64_t b;
    while (p->sm.nkept > max && cb_sm_unkeep_one(&p->sm, &b))
        if (cb_u64vec_push(&blocks, b)) {
            p->data.leaky = 1; /* out of memory: left for the next open to reclaim */
            break;
        }
    size_t nruns = pending_runs(&blocks, &runs);
    if (nruns != (size_t)-1)
        punch_runs(p, runs.v, nruns, 0);
    else
        p->data.leaky = 1;
    cb_u64vec_free(&blocks);
    cb_u64vec_free(&runs);
}

static int commit_meta(struct cb_store *p, uint64_t gen, int clean, struct cb_u64vec *runs)
{
    unsigned char *pg = malloc(CB_PAGE);
    if (!pg)
        return CB_ENOMEM;
    int rc = 0;
    for (unsigned i = 0; i < p->ndevslots && !rc; i++) {
        struct cb_devrec *d = p->devs[i];
        if (d && d->root && d->root->dirty) {
            rc = write_node(p, d->root, pg, gen);
            cb_store_devdirty(p, d);
        }
    }
    for (unsigned i = 0; i < CB_MAX_EXTERNALS && !rc; i++) {
        struct cb_external *x = &p->ext[i];
        if (!x->path || !x->dirty)
            continue;
        if (!(rc = relocate(p, &x->page))) {
            memset(pg, 0, CB_PAGE);
            size_t len = strlen(x->path);
            cb_put64(pg + 32, x->size);
            cb_put32(pg + 40, (uint32_t)len);
            cb_put32(pg + CB_EXT_FLAGS_OFF, x->stamped);
            memcpy(pg + CB_EXT_PATH_OFF, x->path, len);
            cb_put64(pg + CB_EXT_STAMP_OFF, x->ino);
            cb_put64(pg + CB_EXT_STAMP_OFF + 8, x->mtime_ns);
            cb_page_seal(pg, CB_PT_EXT, x->page, gen, 0, 0, 0);
            rc = write_page(p, pg, x->page);
        }
        if (!rc)
            x->dirty = 0;
    }
    unsigned ndevtab = (p->ndevslots + CB_DEVTAB_RECS - 1) / CB_DEVTAB_RECS;
    for (unsigned k = 0; k < ndevtab && !rc; k++) {
        if (!p->devpages[k].dirty)
            continue;
        if ((rc = relocate(p, &p->devpages[k].page)))
            break;
        memset(pg, 0, CB_PAGE);
        for (unsigned j = 0; j < CB_DEVTAB_RECS; j++) {
            unsigned slot = k * CB_DEVTAB_RECS + j;
            if (slot < p->ndevslots && p->devs[slot])
                encode_devrec(p->devs[slot], pg + CB_HDR + CB_DEVREC_SIZE * j);
        }
        cb_page_seal(pg, CB_PT_DEVTAB, p->devpages[k].page, gen, 0, 0, CB_DEVTAB_RECS);
        if (!(rc = write_page(p, pg, p->devpages[k].page)))
            p->devpages[k].dirty = 0;
    }
    /* pages of the device table beyond its new end are no longer needed */
    for (unsigned k = ndevtab; k < CB_SB_DEVTAB_MAX && !rc; k++) {
        if (p->devpages[k].page)
            rc = cb_pm_free(&p->pm, p->devpages[k].page);
        p->devpages[k].page = 0;
        p->devpages[k].dirty = 0;
    }
    if (!rc && pending_runs(&p->sm.pending, runs) == (size_t)-1)
        rc = CB_ENOMEM;
    if (!rc)
        rc = write_freelog(p, runs, pg, gen);
    if (!rc)
        rc = cb_io_sync(p->meta);
    if (!rc) {
        encode_super(p, pg, gen, clean);
        rc = write_page(p, pg, gen % 2);
    }
    if (!rc)
        rc = cb_io_sync(p->meta);
    if (!rc)
        meta_reserve(p);
    free(pg);
    return rc;
}

int cb_txn_commit(struct cb_store *p, int mode)
{
    CB_MUST_WRITE(p);
    assert(mode == CB_TXN_FLUSH || mode == CB_TXN_IN_USE || mode == CB_TXN_CLEAN);
    int rc = 0;
    if (p->csum_on && p->csum.dirty_list.n) {
        cb_datafile_touch(&p->data);
        rc = cb_csum_writeback(&p->csum);
    }
    /* A commit with no data written since the last one (a snapshot, a
     * delete) skips the data file's sync.  After a failed fdatasync the
     * kernel may have dropped the dirty pages: nothing written since the
     * last commit can be trusted (the caller fails the pool). */
    if (!rc)
        rc = cb_datafile_sync(&p->data);
    if (rc)
        return rc;
    /* Nothing changed, and the free log lists nothing a commit would
     * release: no commit. */
    if (mode == CB_TXN_FLUSH && !p->meta_changed && p->map.ndirty == 0 &&
        p->sm.pending.n == 0 &&
        (p->freelog_page == 0 || (p->held.n && p->held.v[0] > oldest_reader(p))))
        return 0;
    uint64_t gen = p->generation + 1;
    struct cb_u64vec runs = {NULL, 0, 0};
    rc = commit_meta(p, gen, mode == CB_TXN_CLEAN, &runs);
    if (rc) {
        cb_u64vec_free(&runs);
        return rc;
    }
    p->generation = gen;
    meta_reserve(p);
    p->meta_changed = 0;
    p->st.commits++;
    cb_sm_forget_fresh(&p->sm);
    /* the freed blocks are free from here on: punched, or kept for reuse
     * (nothing allocates in between: the caller holds the write lock);
     * unless a reader of an older commit may read them ("Readers" above:
     * asked only now, after the superblock is published) */
    uint64_t m = runs.n || p->held.n ? oldest_reader(p) : UINT64_MAX;
    if (gen > m)
        hold_runs(p, gen, &runs);
    cb_sm_release_pending(&p->sm);
    if (gen <= m)
        punch_runs(p, runs.v, runs.n / 2, p->keep_max);
    cb_u64vec_free(&runs);
    if (p->held.n && p->held.v[0] <= m)
        release_held(p, m);
    cb_pm_release_pending(&p->pm);
    /* everything in memory is on disk now */
    assert(p->map.ndirty == 0 && p->sm.pending.n == 0 && p->pm.pending.n == 0);
    return 0;
}

int cb_txn_due(const struct cb_store *p)
{
    return p->map.ndirty > DIRTY_LIMIT || p->sm.pending.n > PENDING_LIMIT;
}

int cb_txn_format(struct cb_store *p)
{
    CB_MUST_WRITE(p);
    unsigned char *pg = calloc(1, CB_PAGE);
    if (!pg)
        return CB_ENOMEM;
    /* slot 0 stays invalid (zeros) until the first commit overwrites it */
    int rc = write_page(p, pg, 0);
    p->generation = 1;
    if (!rc) {
        encode_super(p, pg, 1, 0);
        rc = write_page(p, pg, 1);
    }
    if (!rc)
        rc = cb_io_sync(p->meta);
    if (!rc)
        meta_reserve(p);
    free(pg);
    return rc;
}

/* ---- load ---------------------------------------------------------------- */

/* page -> node, for the nodes shared between devices */
struct nodemap {
    uint64_t *key;
    struct cb_node **val;
    size_t cap, n;
};

static struct cb_node **nm_slot(struct nodemap *m, uint64_t page)
{
    size_t i = (size_t)(page * 0x9E3779B97F4A7C15ull) & (m->cap - 1);
    while (m->key[i] && m->key[i] != page)
        i = (i + 1) & (m->cap - 1);
    m->key[i] = page;
    return &m->val[i];
}

static int nm_grow(struct nodemap *m)
{
    if (m->n * 2 < m->cap)
        return 0;
    struct nodemap g = {NULL, NULL, m->cap ? m->cap * 2 : 1024, 0};
    g.key = calloc(g.cap, sizeof *g.key);
    g.val = calloc(g.cap, sizeof *g.val);
    if (!g.key || !g.val) {
        free(g.key);
        free(g.val);
        return CB_ENOMEM;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i])
            *nm_slot(&g, m->key[i]) = m->val[i];
    g.n = m->n;
    free(m->key);
    free(m->val);
    *m = g;
    return 0;
}

struct loader {
    struct cb_store *p;
    struct nodemap nodes;
    unsigned char *pg;
    uint64_t sb_time;
    uint64_t meta_pages;
    uint64_t *roots;      /* root page of each device slot, while loading */
    int readonly;         /* change nothing in the files (cb_txn_load) */
};

static int read_page(struct loader *L, uint64_t page, uint32_t type)
{
    if (page < 2 || page >= L->meta_pages) {
        cb_meta_bad(page, type, "named, but outside the %llu pages the superblock records",
                    (unsigned long long)L->meta_pages);
        return CB_ECORRUPT;
    }
    int rc = cb_io_pread(L->p->meta, L->pg, CB_PAGE, page * CB_PAGE);
    if (rc)
        return rc;
    if ((rc = cb_page_verify(L->pg, type, page, L->p->generation)))
        return rc;
    if (cb_pm_test(&L->p->pm, page)) {
        cb_meta_bad(page, type, "reached twice (one page used by two structures)");
        return CB_ECORRUPT;
    }
    return cb_pm_mark(&L->p->pm, page);
}

static int check_entry(struct cb_store *p, const struct cb_entry *e, uint64_t sb_time)
{
    if (e->flags & ~CB_E_KNOWN || e->time > sb_time || (e->bitmap & ~p->full_bitmap))
        return CB_ECORRUPT;
    if (e->flags & CB_E_MAPPED) {
        if (e->block >= p->nblocks || e->bitmap == 0)
            return CB_ECORRUPT;
    } else if (e->block || e->bitmap) {
        return CB_ECORRUPT;
    }
    if (e->flags & CB_E_ORIGIN) {
        if (!(e->flags & CB_E_MAPPED) || e->origin >= p->nblocks ||
            e->origin == e->block || e->bitmap == p->full_bitmap)
            return CB_ECORRUPT;
    } else if (e->origin) {
        return CB_ECORRUPT;
    }
    return 0;
}

static void free_raw(struct cb_node *n)
{
    free(n);
}

static int load_node(struct loader *L, uint64_t page, unsigned level, struct cb_node **out)
{
    struct cb_store *p = L->p;
    int rc = nm_grow(&L->nodes);
    if (rc)
        return rc;
    struct cb_node **slot = nm_slot(&L->nodes, page);
    if (*slot) {
        if ((*slot)->level != level || (*slot)->rc == UINT32_MAX) {
            cb_meta_bad(page, level ? CB_PT_NODE : CB_PT_LEAF,
                        "shared at level %u and at level %u", (*slot)->level, level);
            return CB_ECORRUPT;
        }
        (*slot)->rc++;
        *out = *slot;
        return 0;
    }
    if ((rc = read_page(L, page, level ? CB_PT_NODE : CB_PT_LEAF)))
        return rc;
    if (cb_get16(L->pg + 28) != level || cb_get32(L->pg + 24) > L->sb_time) {
        cb_meta_bad(page, level ? CB_PT_NODE : CB_PT_LEAF,
                    "level %u where %u belongs, or time %u past the superblock's %llu",
                    cb_get16(L->pg + 28), level, cb_get32(L->pg + 24),
                    (unsigned long long)L->sb_time);
        return CB_ECORRUPT;
    }
    struct cb_node *n = calloc(1, sizeof *n);
    if (!n)
        return CB_ENOMEM;
    n->rc = 1;
    n->level = (uint16_t)level;
    n->page = page;
    n->time = cb_get32(L->pg + 24);
    *slot = n;
    L->nodes.n++;
    p->map.nnodes++;
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++) {
            const unsigned char *q = L->pg + CB_HDR + 32 * i;
            struct cb_entry *e = &n->u.e[i];
            e->block = cb_get64(q);
            e->origin = cb_get64(q + 8);
            e->bitmap = cb_get64(q + 16);
            e->time = cb_get32(q + 24);
            e->flags = cb_get32(q + 28);
            if ((rc = check_entry(p, e, L->sb_time)) || (rc = cb_entry_ref(&p->sm, e))) {
                if (rc == CB_ECORRUPT)
                    cb_meta_bad(page, CB_PT_LEAF,
                                "entry %u is malformed (flags 0x%x, block %llu, origin %llu, "
                                "bitmap 0x%llx, time %u; the pool has %llu blocks)",
                                i, e->flags, (unsigned long long)e->block,
                                (unsigned long long)e->origin, (unsigned long long)e->bitmap,
                                e->time, (unsigned long long)p->nblocks);
                return rc;
            }
        }
        *out = n;
        return 0;
    }
    uint64_t kids[CB_NODE_FANOUT];
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
        kids[i] = cb_get64(L->pg + CB_HDR + 8 * i);
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
        if (kids[i] && (rc = load_node(L, kids[i], level - 1, &n->u.c[i])))
            return rc;
    *out = n;
    return 0;
}

static int valid_name(const char *name, size_t len)
{
    if (len == 0 || len > CB_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '/' || name[i] == 0)
            return 0;
    return 1;
}

static int load_devtab(struct loader *L, unsigned ndevtab)
{
    struct cb_store *p = L->p;
    p->devs = calloc((size_t)CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS, sizeof *p->devs);
    L->roots = calloc((size_t)CB_SB_DEVTAB_MAX * CB_DEVTAB_RECS, sizeof *L->roots);
    if (!p->devs || !L->roots)
        return CB_ENOMEM;
    p->ndevslots = ndevtab * CB_DEVTAB_RECS;
    for (unsigned k = 0; k < ndevtab; k++) {
        uint64_t page = cb_get64(L->pg + CB_SB_DEVTAB_OFF + 8 * k);
        p->devpages[k].page = page;
    }
    for (unsigned k = 0; k < ndevtab; k++) {
        int rc = read_page(L, p->devpages[k].page, CB_PT_DEVTAB);
        if (rc)
            return rc;
        for (unsigned j = 0; j < CB_DEVTAB_RECS; j++) {
            const unsigned char *q = L->pg + CB_HDR + CB_DEVREC_SIZE * j;
            uint32_t id = cb_get32(q);
            if (id == 0)
                continue;
            struct cb_devrec *d = calloc(1, sizeof *d);
            if (!d)
                return CB_ENOMEM;
            p->devs[k * CB_DEVTAB_RECS + j] = d;
            p->ndevs++;
            d->id = id;
            d->slot = k * CB_DEVTAB_RECS + j;
            d->flags = cb_get32(q + 4);
            d->size = cb_get64(q + 8);
            uint64_t root = cb_get64(q + 16);
            d->depth = cb_get32(q + 24);
            d->birth_time = cb_get32(q + 28);
            d->snap_time = cb_get32(q + 32);
            d->origin_id = cb_get32(q + 36);
            d->created_ns = cb_get64(q + 40);
            d->external_id = cb_get32(q + 48);
            uint32_t nlen = cb_get32(q + 52);
            if (d->size == 0 || d->size > CB_MAX_DEV_SIZE || d->size % 512 ||
                d->flags & ~CB_DEV_READONLY || id >= p->next_dev_id ||
                d->origin_id >= p->next_dev_id || d->birth_time > L->sb_time ||
                d->snap_time > L->sb_time || d->external_id > CB_MAX_EXTERNALS ||
                (d->external_id && !p->ext[d->external_id - 1].path) || nlen > CB_NAME_MAX) {
                cb_meta_bad(p->devpages[k].page, CB_PT_DEVTAB,
                            "record %u (device id %u) has a field out of range", j, id);
                return CB_ECORRUPT;
            }
            d->nblocks = (d->size + p->block_size - 1) >> p->block_shift;
            if (d->depth != cb_map_depth(d->nblocks)) {
                cb_meta_bad(p->devpages[k].page, CB_PT_DEVTAB,
                            "record %u (device id %u): tree depth %u, its size needs %u", j,
                            id, d->depth, cb_map_depth(d->nblocks));
                return CB_ECORRUPT;
            }
            memcpy(d->name, q + 64, nlen);
            d->name[nlen] = 0;
            int bad = !valid_name(d->name, nlen);
            for (unsigned b = 64 + nlen; b < 192; b++)
                bad |= q[b] != 0;
            if (bad) {
                cb_meta_bad(p->devpages[k].page, CB_PT_DEVTAB,
                            "record %u (device id %u) has a malformed name", j, id);
                return CB_ECORRUPT;
            }
            /* the tree is loaded once the page buffer is free again */
            L->roots[d->slot] = root;
        }
    }
    /* names and ids unique */
    for (unsigned i = 0; i < p->ndevslots; i++)
        for (unsigned j = i + 1; p->devs[i] && j < p->ndevslots; j++)
            if (p->devs[j] && (p->devs[i]->id == p->devs[j]->id ||
                               strcmp(p->devs[i]->name, p->devs[j]->name) == 0)) {
                cb_meta_bad(p->devpages[j / CB_DEVTAB_RECS].page, CB_PT_DEVTAB,
                            "device '%s' (id %u) repeats the name or id of '%s' (id %u)",
                            p->devs[j]->name, p->devs[j]->id, p->devs[i]->name,
                            p->devs[i]->id);
                return CB_ECORRUPT;
            }
    for (unsigned i = 0; i < p->ndevslots; i++) {
        struct cb_devrec *d = p->devs[i];
        if (!d)
            continue;
        uint64_t root = L->roots[i];
        int rc;
        if (root && (rc = load_node(L, root, d->depth, &d->root))) {
            if (rc == CB_ECORRUPT)
                cb_meta_context("the mapping tree of device '%s'", d->name);
            return rc;
        }
    }
    return 0;
}

static int load_externals(struct loader *L, const unsigned char *sb)
{
    struct cb_store *p = L->p;
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++) {
        uint64_t page = cb_get64(sb + CB_SB_EXT_OFF + 8 * i);
        if (!page)
            continue;
        int rc = read_page(L, page, CB_PT_EXT);
        if (rc)
            return rc;
        uint32_t len = cb_get32(L->pg + 40);
        if (len == 0 || len > CB_PATH_MAX || memchr(L->pg + CB_EXT_PATH_OFF, 0, len)) {
            cb_meta_bad(page, CB_PT_EXT, "malformed path (length %u)", len);
            return CB_ECORRUPT;
        }
        struct cb_external *x = &p->ext[i];
        x->size = cb_get64(L->pg + 32);
        x->page = page;
        x->stamped = cb_get32(L->pg + CB_EXT_FLAGS_OFF) & CB_EXT_STAMPED;
        x->ino = cb_get64(L->pg + CB_EXT_STAMP_OFF);
        x->mtime_ns = cb_get64(L->pg + CB_EXT_STAMP_OFF + 8);
        if (x->size > CB_MAX_DEV_SIZE) {
            cb_meta_bad(page, CB_PT_EXT, "size %llu out of range", (unsigned long long)x->size);
            return CB_ECORRUPT;
        }
        if (!(x->path = malloc(len + 1)))
            return CB_ENOMEM;
        memcpy(x->path, L->pg + CB_EXT_PATH_OFF, len);
        x->path[len] = 0;
        /* Only what add_external accepts: opening a FIFO named by a hostile
         * file would block for ever, a character device read for ever. */
        struct stat st;
        x->io = NULL; /* reads through it fail with CB_EEXTERNAL */
        if (stat(x->path, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) &&
            cb_file_open(x->path, CB_IO_READONLY, &x->io) != 0)
            x->io = NULL;
        if (!x->io) {
            snprintf(x->why, sizeof x->why, "external origin '%.120s' is missing or "
                     "cannot be read", x->path);
            continue;
        }
        /* An origin edited since it was attached changed the bytes of
         * every device reading it: refuse reads rather than serve them. */
        if ((x->changed = cb_store_external_changed(x, x->why, sizeof x->why))) {
            x->io->ops->close(x->io);
            x->io = NULL;
        }
    }
    return 0;
}

/* (gen, start, count) by generation, then start: the order the free log
 * keeps them in (each page's runs ascending, load_freelog checks it) */
static int cmp_triple(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    int c = cmp_u64(x, y);
    return c ? c : cmp_u64(x + 1, y + 1);
}

/* The free log's runs of commits before the one loaded: held for readers
 * (txn.c, "Readers") where a registered reader may still reach them, else
 * punched (a writer), or left as they are (a reader).  Only blocks no
 * mapping names are held. */
static void load_held(struct cb_store *p, struct cb_u64vec *held, int readonly,
                      struct cb_u64vec *punch)
{
    if (held->n)
        qsort(held->v, held->n / 3, 3 * sizeof *held->v, cmp_triple);
    uint64_t m = readonly ? 0 : (held->n ? oldest_reader(p) : UINT64_MAX);
    for (size_t i = 0; i + 2 < held->n; i += 3) {
        uint64_t t = held->v[i], b = held->v[i + 1], n = held->v[i + 2];
        if (t <= m) {
            if (cb_u64vec_push(punch, b) || cb_u64vec_push(punch, n))
                p->data.leaky = 1;
            continue;
        }
        for (uint64_t k = 0, first = 0; k <= n; k++) {
            if (k < n && cb_sm_hold(&p->sm, b + k) == 0)
                continue; /* a block no mapping names: held */
            if (k > first)
                push_held(p, t, b + first, k - first);
            first = k + 1;
        }
    }
}

static int load_freelog(struct loader *L)
{
    struct cb_store *p = L->p;
    uint64_t page = p->freelog_page;
    struct cb_u64vec runs = {NULL, 0, 0}, held = {NULL, 0, 0};
    int rc = 0;
    for (uint64_t hops = 0; page && !rc; hops++) {
        uint64_t end = 0; /* a page's runs are sorted and disjoint (pending_runs) */
        if (hops >= L->meta_pages) {
            cb_meta_bad(page, CB_PT_FREELOG, "the free log's chain loops");
            rc = CB_ECORRUPT;
            break;
        }
        if ((rc = read_page(L, page, CB_PT_FREELOG)) ||
            (rc = cb_u64vec_push(&p->freelog_pages, page)))
            break;
        /* level 0: (start, count) runs the last commit freed; CB_FREELOG_HELD:
         * (freed_by, start, count) runs held for readers (meta.h) */
        uint32_t n = cb_get32(L->pg + 40), level = cb_get16(L->pg + 28);
        uint32_t max = level ? CB_HELDLOG_MAX : CB_FREELOG_MAX, w = level ? 3 : 2;
        uint64_t pgen = cb_get64(L->pg + 16), last = 0;
        if (level > CB_FREELOG_HELD || n > max) {
            cb_meta_bad(page, CB_PT_FREELOG, "%u runs of kind %u, at most %u fit", n, level,
                        max);
            rc = CB_ECORRUPT;
            break;
        }
        for (uint32_t i = 0; i < n && !rc; i++) {
            const unsigned char *e = L->pg + 48 + 8 * w * i;
            uint64_t t = level ? cb_get64(e) : 0, b = cb_get64(e + 8 * (w - 2)),
                     c = cb_get64(e + 8 * (w - 1));
            if (t != last)
                end = 0; /* held runs: sorted by the commit that freed them, then start */
            last = t;
            if (c == 0 || b >= p->nblocks || c > p->nblocks - b || b < end ||
                (level && (t == 0 || t > pgen))) {
                cb_meta_bad(page, CB_PT_FREELOG, "run %u (blocks %llu + %llu, freed by "
                            "commit %llu) out of range or out of order", i,
                            (unsigned long long)b, (unsigned long long)c,
                            (unsigned long long)(level ? t : pgen));
                rc = CB_ECORRUPT;
            }
            else if (!level && !(rc = cb_u64vec_push(&runs, b)))
                rc = cb_u64vec_push(&runs, c);
            else if (level && !(rc = cb_u64vec_push(&held, t)) &&
                     !(rc = cb_u64vec_push(&held, b)))
                rc = cb_u64vec_push(&held, c);
            end = b + c;
        }
        page = cb_get64(L->pg + 32);
    }
    /* The last commit's runs: held as the older ones are where a reader
     * may reach them, else punched, finishing an interrupted commit.  Never
     * on a read-only pool, which changes nothing in its files: the blocks
     * stay allocated until the next writable open punches them (check
     * counts them as leaked). */
    for (size_t i = 0; !rc && p->shared_readers && !L->readonly && i + 1 < runs.n; i += 2)
        if (!(rc = cb_u64vec_push(&held, p->generation)) &&
            !(rc = cb_u64vec_push(&held, runs.v[i])))
            rc = cb_u64vec_push(&held, runs.v[i + 1]);
    if (!rc && p->shared_readers && !L->readonly)
        runs.n = 0; /* all in held now */
    if (!rc)
        load_held(p, &held, L->readonly, &runs);
    if (!rc && !L->readonly)
        punch_runs(p, runs.v, runs.n / 2, 0);
    cb_u64vec_free(&runs);
    cb_u64vec_free(&held);
    return rc;
}

int cb_txn_peek(struct cb_store *p, uint64_t *gen)
{
    uint64_t msize;
    struct cb_meta_saved saved; /* a slot's damage is not news: keep the caller's detail */
    cb_meta_save(&saved);
    unsigned char *pg = malloc(2 * CB_PAGE);
    int rc = pg ? 0 : CB_ENOMEM;
    /* the slots before the size, as cb_txn_load reads them */
    for (uint64_t s = 0; s < 2 && !rc; s++)
        rc = cb_io_pread(p->meta, pg + s * CB_PAGE, CB_PAGE, s * CB_PAGE);
    if (!rc)
        rc = p->meta->ops->size(p->meta, &msize);
    *gen = 0;
    for (uint64_t s = 0; s < 2 && !rc && msize >= 2 * CB_PAGE; s++)
        if (cb_meta_parse_super(pg + s * CB_PAGE, s, msize / CB_PAGE) == 0 &&
            cb_get64(pg + s * CB_PAGE + 16) > *gen)
            *gen = cb_get64(pg + s * CB_PAGE + 16);
    free(pg);
    cb_meta_restore(&saved);
    if (!rc && *gen == 0) {
        cb_meta_bad(0, 0, "no valid superblock");
        rc = CB_ECORRUPT;
    }
    return rc;
}

int cb_txn_load(struct cb_store *p, int readonly)
{
    CB_MUST_WRITE(p);
    uint64_t msize, dsize;
    int rc;
    unsigned char *sb[2] = {malloc(CB_PAGE), malloc(CB_PAGE)};
    struct loader L = {p, {NULL, NULL, 0, 0}, malloc(CB_PAGE), 0, 0, NULL, readonly};
    if (!sb[0] || !sb[1] || !L.pg) {
        rc = CB_ENOMEM;
        goto out;
    }
    /* The superblocks before the size: a writer sharing the store with
     * this (reading) opener makes a new size durable before the superblock
     * that needs it, so the size read after a superblock covers it. */
    for (int s = 0; s < 2; s++)
        if ((rc = cb_io_pread(p->meta, sb[s], CB_PAGE, (uint64_t)s * CB_PAGE)))
            goto out;
    if ((rc = p->meta->ops->size(p->meta, &msize)) ||
        (rc = p->data.io->ops->size(p->data.io, &dsize)))
        goto out;
    uint64_t mfpages = msize / CB_PAGE;
    int ok[2];
    cb_meta_clear();
    for (int s = 0; s < 2; s++) {
        p->sb_damage[s][0] = 0;
        if (mfpages < 2) {
            ok[s] = CB_ECORRUPT;
            snprintf(p->sb_damage[s], sizeof p->sb_damage[s],
                     "the metadata file is %llu bytes, too short for both superblocks",
                     (unsigned long long)msize);
            continue;
        }
        if ((ok[s] = cb_meta_parse_super(sb[s], (uint64_t)s, mfpages)))
            cb_corrupt_detail(p->sb_damage[s], sizeof p->sb_damage[s], NULL);
    }
    int best = -1;
    for (int s = 0; s < 2; s++)
        if (ok[s] == 0 && (best < 0 || cb_get64(sb[s] + 16) > cb_get64(sb[best] + 16)))
            best = s;
    if (best < 0) {
        rc = (ok[0] == CB_EVERSION || ok[1] == CB_EVERSION) ? CB_EVERSION : CB_ECORRUPT;
        cb_meta_bad(0, 0, "no valid superblock: %s; %s", p->sb_damage[0],
                    p->sb_damage[1]);
        goto out;
    }
    const unsigned char *s = sb[best];
    /* the slot a new pool's first commit has not yet written is all zeros */
    int other = 1 - best, blank = 1;
    for (unsigned i = 0; i < CB_PAGE && blank; i++)
        blank = sb[other][i] == 0;
    if (blank && cb_get64(s + 16) == 1)
        p->sb_damage[other][0] = 0;
    p->generation = cb_get64(s + 16);
    p->map.now = (uint32_t)cb_get64(s + 64);
    p->next_dev_id = cb_get64(s + 72);
    L.meta_pages = cb_get64(s + 80);
    L.sb_time = p->map.now;
    p->freelog_page = cb_get64(s + 88);
    p->was_clean = (cb_get32(s + 48) & CB_COMPAT_CLEAN) != 0;
    memcpy(p->uuid, s + 104, 16);
    p->created_ns = cb_get64(s + 120);
    if ((rc = cb_store_geometry(p, cb_get32(s + 52), cb_get64(s + 56),
                                (cb_get32(s + 44) & CB_INCOMPAT_CSUM) != 0)) ||
        (rc = cb_sm_init(&p->sm, p->nblocks)) || (rc = cb_pm_init(&p->pm, L.meta_pages)))
        goto out;
    if (dsize < cb_geometry_data_span(&p->geo)) {
        /* not metadata damage: the data file lost its tail */
        char name[CB_PATH_MAX + 32];
        cb_meta_bad(0, 0, "%s is %llu bytes, shorter than the %llu bytes "
                    "the pool's %llu blocks of %u bytes%s need (truncated?)",
                    cb_store_data_name(p, name, sizeof name),
                    (unsigned long long)dsize, (unsigned long long)cb_geometry_data_span(&p->geo),
                    (unsigned long long)p->nblocks, p->block_size,
                    p->csum_on ? " and their checksums" : "");
        rc = CB_ECORRUPT;
        goto out;
    }
    if (p->csum_on && (rc = cb_csum_init(&p->csum, p->data.io, p->nblocks * (uint64_t)p->block_size,
                                         p->nblocks * p->nsub)))
        goto out;
    p->sm.track_fresh = p->csum_on || p->shared_readers;
    /* parse everything that needs the superblock before L.pg is reused */
    unsigned ndevtab = cb_get32(s + 96);
    if ((rc = load_externals(&L, s)))
        goto out;
    memcpy(L.pg, s, CB_PAGE);
    if ((rc = load_devtab(&L, ndevtab)))
        goto out;
    rc = load_freelog(&L);
out:
    if (rc) {
        /* Nodes not yet attached to a device would leak: the map holds
         * every node loaded, so free them all here and detach roots. */
        for (size_t i = 0; i < L.nodes.cap; i++)
            if (L.nodes.key && L.nodes.key[i])
                free_raw(L.nodes.val[i]);
        for (unsigned i = 0; p->devs && i < p->ndevslots; i++)
            if (p->devs[i])
                p->devs[i]->root = NULL;
        p->map.nnodes = 0;
    }
    free(L.nodes.key);
    free(L.nodes.val);
    free(L.pg);
    free(L.roots);
    free(sb[0]);
    free(sb[1]);
    return rc;
}
