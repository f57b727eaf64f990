/*
 * store.h - what an open pool holds in memory, shared by the layers under
 * the pool layer: geometry, the two files, the space maps, the device
 * trees, the device table, external origins, the free log and counters.
 *
 * Built by txn (cb_txn_format for a new pool, cb_txn_load for an existing
 * one), changed by thin (device IO) and txn (commit), read by check, dump
 * and scrub.  pool.c owns the store (it sits inside struct cb_pool) and is
 * the only layer that takes the lock guarding it.
 *
 * Lock contract: every function of the layers below pool.c that takes a
 * struct cb_store runs with the pool lock held by its caller -- shared
 * where it only reads, exclusive where it changes anything (each header
 * says which).  Debug builds (assertions on: COWBLOCK_DEBUG, the sanitizer
 * and CB_TESTING builds) record the holder (the exclusive holder's thread,
 * the shared holder per thread) and assert it on entry of every function
 * with CB_MUST_WRITE / CB_MUST_READ; release builds compile both to
 * nothing.
 */
#ifndef CB_STORE_H
#define CB_STORE_H
#include <pthread.h>
#include <stdint.h>

#include "blockio.h"
#include "cowblock.h"
#include "csum.h"
#include "datafile.h"
#include "mapping.h"
#include "meta.h"
#include "spacemap.h"

struct cb_devrec {
    uint32_t id;          /* 1.., never reused */
    uint32_t flags;       /* CB_DEV_READONLY */
    uint64_t size;        /* bytes */
    uint64_t nblocks;     /* virtual blocks */
    unsigned depth;
    uint32_t birth_time;
    uint32_t snap_time;
    uint32_t origin_id;
    uint64_t created_ns;
    uint32_t external_id;
    char name[CB_NAME_MAX + 1];
    struct cb_node *root;
    unsigned slot;        /* index in the device table */
    int deleted;          /* handles may outlive the record's table slot (pool.c) */
    unsigned handles;     /* open cb_dev handles (pool.c) */
};

struct cb_external {
    uint64_t size;        /* bytes, as recorded at creation */
    uint32_t stamped;     /* CB_EXT_STAMPED: ino and mtime_ns recorded (meta.h) */
    uint64_t ino, mtime_ns;
    int changed;          /* not the file recorded: reads refused (io is NULL) */
    char why[200];        /* why io is NULL, for messages ("" if it is not) */
    uint64_t page;        /* committed page, 0 if not yet */
    char *path;
    cb_io *io;            /* NULL when the file could not be opened */
    int dirty;
};

struct cb_devpage {
    uint64_t page;        /* committed page, 0 if never */
    int dirty;
};

/* Who holds the pool lock (debug builds; see the top of this file). */
struct cb_holder {
    pthread_t writer;     /* valid while writing != 0 */
    int writing;          /* the lock is held exclusively by writer */
};

struct cb_store {
    /* the geometry, also by its field names: p->block_size, p->geo */
    union {
        struct cb_geometry geo;
        struct {
            CB_GEOMETRY_FIELDS
        };
    };
    struct cb_datafile data;
    cb_io *meta;
    const char *path;     /* the pool's directory, for messages (owned by pool.c) */

    uint64_t generation;  /* last committed */
    uint64_t next_dev_id;
    uint8_t uuid[16];
    uint64_t created_ns;
    /* Transaction state (txn.c):
     *   meta_changed  something to commit beyond dirty nodes and freed
     *                 blocks (a device record, an external, the table's
     *                 size); cleared by a commit
     *   was_clean     the superblock loaded says the pool was closed
     *                 cleanly (CB_COMPAT_CLEAN): no allocation since, so
     *                 open need not look for free blocks holding data */
    int meta_changed;
    int was_clean;
    char sb_damage[2][200]; /* why each superblock slot failed at load, "" if valid */
    uint64_t keep_max;    /* freed blocks to keep allocated for reuse (cb_pool_set_keep) */
    struct cb_csum csum;

    struct cb_spacemap sm;
    struct cb_pagemap pm;
    struct cb_mapping map;

    struct cb_devrec **devs;   /* by slot; NULL = free slot */
    unsigned ndevslots;        /* slots in use or reserved */
    unsigned ndevs;
    struct cb_devpage devpages[CB_SB_DEVTAB_MAX];

    struct cb_external ext[CB_MAX_EXTERNALS]; /* id = index + 1 */
    uint64_t freelog_page;     /* committed free log chain head */
    struct cb_u64vec freelog_pages; /* pages of the committed free log */
    /* Readers on other hosts (txn.c, "Readers"): the backend keeps a reader
     * table (blockio.h, pin).  Then no committed block is written in place
     * (every first write after a commit copies up, as with checksums), and
     * the blocks a commit frees are held while a reader of an older commit
     * is registered: (gen, start, count) triples, gen the commit that freed
     * [start, start + count), oldest first. */
    int shared_readers;
    struct cb_u64vec held;

    cb_stat st;                /* counters */
    unsigned char *zero;       /* a block of zeros */
    void *scratch;             /* a block for read-modify-write (under the write lock) */

    struct cb_holder holder;   /* debug builds */
};

/* An empty store (nothing allocated, no files). */
void cb_store_init(struct cb_store *s);
/* Free everything the store holds and close its files.  Device records
 * still referenced by handles must have been detached first (pool.c). */
void cb_store_destroy(struct cb_store *s);
/* Set the geometry and allocate the buffers sized by the block size. */
int cb_store_geometry(struct cb_store *s, uint32_t block_size, uint64_t nblocks, int csum_on);
/* Record for a name, or NULL.  Shared lock. */
struct cb_devrec *cb_store_find(struct cb_store *s, const char *name);
/* Mark a device's table page dirty.  Exclusive lock. */
void cb_store_devdirty(struct cb_store *s, struct cb_devrec *d);
/* The identity of external origin x's file (st, or better the open file's):
 * recorded at attach time and committed with it (meta.h). */
struct stat;
void cb_store_stamp_external(struct cb_external *x, const struct stat *st);
/* 1 (and why, a sentence) if x's file is not the one recorded, 0 if it is
 * or nothing was recorded. */
int cb_store_external_changed(const struct cb_external *x, char *why, size_t len);

/* ---- the lock contract (debug builds) ---------------------------------- */
#ifndef NDEBUG
#include <assert.h>
/* The pool lock's holder is recorded by pool.c. */
void cb_holder_wrlocked(struct cb_store *s);
void cb_holder_rdlocked(struct cb_store *s);
void cb_holder_unlocking(struct cb_store *s);
int cb_holder_writer(const struct cb_store *s);   /* this thread holds it exclusively */
int cb_holder_reader(const struct cb_store *s);   /* this thread holds it, either way */
/* The invariants of the device table and space map (cheap, O(devices)). */
int cb_store_consistent(const struct cb_store *s);
#define CB_MUST_WRITE(s) assert(cb_holder_writer(s))
#define CB_MUST_READ(s) assert(cb_holder_reader(s))
#define CB_CONSISTENT(s) assert(cb_store_consistent(s))
#define CB_HOLD_WRITE(s) cb_holder_wrlocked(s)
#define CB_HOLD_READ(s) cb_holder_rdlocked(s)
#define CB_HOLD_END(s) cb_holder_unlocking(s)
#else
#define CB_MUST_WRITE(s) ((void)0)
#define CB_MUST_READ(s) ((void)0)
#define CB_CONSISTENT(s) ((void)0)
#define CB_HOLD_WRITE(s) ((void)0)
#define CB_HOLD_READ(s) ((void)0)
#define CB_HOLD_END(s) ((void)0)
#endif

#endif
