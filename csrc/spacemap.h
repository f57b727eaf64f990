/*
 * spacemap.h - reference counts of data blocks and of metadata pages, and
 * the search for free ones.
 *
 * Data reference counts are a function of the mappings: each leaf counts
 * once for every block it names (as its block or as its origin), whatever
 * the number of devices that share the leaf.  They are rebuilt from the
 * trees at open and kept in memory, in chunks allocated on first use so a
 * huge, mostly empty pool costs little.
 *
 * A block whose count drops to zero is not free at once: it joins the
 * pending list of the open transaction, stays busy, and is released (and
 * punched out of the data file) only after the commit that freed it is
 * durable (DESIGN.md invariant 5).  Metadata pages follow the same rule.
 * Where readers on other hosts share the pool (txn.c, "Readers"), a freed
 * block may instead be held after that commit: busy, not punched, until no
 * registered reader's generation can reach it any more.
 *
 * Not thread-safe: the pool's write lock guards every mutation.
 */
#ifndef CB_SPACEMAP_H
#define CB_SPACEMAP_H
#include <stddef.h>
#include <stdint.h>

#define CB_SM_CHUNK 16384u

struct cb_sm_chunk {
    uint32_t nbusy;
    uint64_t busy[CB_SM_CHUNK / 64];  /* rc > 0 or pending */
    uint64_t fresh[CB_SM_CHUNK / 64]; /* allocated since the last commit */
    uint64_t kept[CB_SM_CHUNK / 64];  /* free, not punched: reused first */
    uint64_t held[CB_SM_CHUNK / 64];  /* rc == 0, kept busy for readers of older commits */
    uint32_t rc[CB_SM_CHUNK];
};

struct cb_u64vec {
    uint64_t *v;
    size_t n, cap;
};
int cb_u64vec_push(struct cb_u64vec *vec, uint64_t x);
void cb_u64vec_free(struct cb_u64vec *vec);

struct cb_spacemap {
    uint64_t nblocks;
    uint64_t nchunks;
    struct cb_sm_chunk **chunks;
    uint64_t busy;      /* blocks with rc > 0 or pending */
    uint64_t cursor;    /* where the next search starts */
    struct cb_u64vec pending;  /* freed in the open transaction */
    int track_fresh;           /* keep the fresh bits (pools with checksums) */
    struct cb_u64vec fresh;    /* allocated in the open transaction */
    uint64_t nkept;            /* blocks with the kept bit */
    struct cb_u64vec kept;     /* kept blocks (entries whose bit is clear are stale) */
    uint64_t nheld;            /* blocks with the held bit */
};

int cb_sm_init(struct cb_spacemap *sm, uint64_t nblocks);
void cb_sm_destroy(struct cb_spacemap *sm);
uint32_t cb_sm_rc(const struct cb_spacemap *sm, uint64_t b);
/* rc++; fails with CB_ECORRUPT past the end or on overflow. */
int cb_sm_inc(struct cb_spacemap *sm, uint64_t b);
/* rc--; at zero the block goes to the pending list. */
int cb_sm_dec(struct cb_spacemap *sm, uint64_t b);
/* Find a free block, set rc = 1.  CB_ENOSPC when none. */
int cb_sm_alloc(struct cb_spacemap *sm, uint64_t *out);
/* Undo an allocation that no mapping ever saw: free at once. */
void cb_sm_unalloc(struct cb_spacemap *sm, uint64_t b);
/* After a durable commit: make every pending block free again, but for
 * those cb_sm_hold made held.  The caller punches them first. */
void cb_sm_release_pending(struct cb_spacemap *sm);
/* With track_fresh: was b allocated after the last commit (so that no
 * committed mapping can name it)?  Always 0 without track_fresh. */
int cb_sm_fresh(const struct cb_spacemap *sm, uint64_t b);
/* After a durable commit: nothing is fresh any more. */
void cb_sm_forget_fresh(struct cb_spacemap *sm);

/* Held blocks: unreferenced, yet busy (never allocated, never punched)
 * because a reader of an older commit may still read them.  hold: b has
 * rc == 0 and is pending (after a commit) or free (at load); CB_ECORRUPT
 * if b is out of range or referenced.  unhold: b becomes free (the
 * caller punches or keeps it). */
int cb_sm_hold(struct cb_spacemap *sm, uint64_t b);
void cb_sm_unhold(struct cb_spacemap *sm, uint64_t b);
int cb_sm_held(const struct cb_spacemap *sm, uint64_t b);

/* Kept blocks: free blocks whose space is still allocated in the data file
 * (not punched, see txn.c), which cb_sm_alloc hands out before any other,
 * so that a write lands in space the file system has already allocated. */
int cb_sm_keep(struct cb_spacemap *sm, uint64_t b);       /* b free; CB_ENOMEM */
int cb_sm_kept(const struct cb_spacemap *sm, uint64_t b);
/* Take one kept block off the kept set (to punch it); 0 if none. */
int cb_sm_unkeep_one(struct cb_spacemap *sm, uint64_t *out);

/* A tally: one u64 per data block, in CB_SM_CHUNK chunks allocated on the
 * first write to them, for walks that add something up per block (check's
 * recomputed counts, usage's device counts, scrub's sub-block masks).  A
 * chunk never written stays NULL and reads as zeros. */
struct cb_tally {
    uint64_t **chunk;
    uint64_t nchunks;
};
int cb_tally_init(struct cb_tally *t, uint64_t nblocks);   /* CB_ENOMEM */
void cb_tally_free(struct cb_tally *t);
/* The slot of block b, its chunk allocated if need be: CB_ECORRUPT past
 * the end, CB_ENOMEM. */
int cb_tally_at(struct cb_tally *t, uint64_t b, uint64_t **slot);
uint64_t cb_tally_get(const struct cb_tally *t, uint64_t b);

/* Metadata pages: a dense bitmap over the pages of the metadata file. */
struct cb_pagemap {
    uint64_t npages;      /* pages the bitmap covers (file span) */
    uint64_t cap;         /* bits allocated */
    uint64_t *busy;
    uint64_t nbusy;
    uint64_t cursor;
    struct cb_u64vec pending;
};
int cb_pm_init(struct cb_pagemap *pm, uint64_t npages);
void cb_pm_destroy(struct cb_pagemap *pm);
int cb_pm_test(const struct cb_pagemap *pm, uint64_t p);
int cb_pm_mark(struct cb_pagemap *pm, uint64_t p);   /* used at open */
int cb_pm_alloc(struct cb_pagemap *pm, uint64_t *out);
int cb_pm_free(struct cb_pagemap *pm, uint64_t p);   /* pending until commit */
void cb_pm_release_pending(struct cb_pagemap *pm);

#endif
