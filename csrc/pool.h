/*
 * pool.h - the pool object shared by the pool, thin and txn layers.
 *
 * State of a pool:      OPEN --(metadata write fails)--> FAILED
 *                          \--(close)--> CLOSED       FAILED --(close)--> CLOSED
 *                       CLOSED --(last reference dropped)--> freed
 * In FAILED every call but close returns CB_EFAILED (sticky failure: no
 * write goes on over a half-done transaction).  Close sets `shut` first
 * (from then on cb_pool_enter refuses with CB_ECLOSED, before and after
 * taking the lock), then takes the lock exclusively, which waits for every
 * call inside to leave, commits, and releases everything but the struct,
 * its lock and path; cb_dev handles are detached (rec = NULL).  The struct
 * is freed when `refs` drops to zero (cowblock.h, "Lifetimes").
 *
 * Locking: `lock` is a reader/writer lock.  Reads of device data and of
 * metadata take it shared; everything that changes metadata, allocates, or
 * commits takes it exclusive.  Data IO of a write happens under the
 * exclusive lock, which makes allocation and copy-up of a block atomic with
 * respect to other writers, and means a reader never sees an entry whose
 * data is not yet written.
 */
#ifndef CB_POOL_H
#define CB_POOL_H
#include <pthread.h>
#include <stdint.h>

#include "blockio.h"
#include "cowblock.h"
#include "csum.h"
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
    int deleted;          /* handles may outlive the record's table slot */
    unsigned handles;     /* open cb_dev handles */
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

struct cb_pool {
    pthread_rwlock_t lock;
    unsigned refs;        /* open's + cb_pool_retain's + one per cb_dev (atomic) */
    int shut;             /* cb_pool_close has begun (atomic) */
    char *path;
    unsigned flags;       /* CB_OPEN_* */
    int failed;           /* sticky error code, 0 if healthy */
    cb_io *data;
    cb_io *meta;
    int lockfd;

    uint32_t block_size;
    unsigned block_shift;
    uint32_t sub_size;    /* bytes per bitmap bit */
    unsigned nsub;        /* sub-blocks per block (1..64) */
    uint64_t full_bitmap; /* all nsub bits */
    uint64_t nblocks;

    uint64_t generation;  /* last committed */
    uint64_t next_dev_id;
    uint8_t uuid[16];
    uint64_t created_ns;
    int meta_changed;     /* something to commit beyond node pages */
    int was_clean;        /* the superblock loaded says: closed cleanly */
    char sb_damage[2][200]; /* why each superblock slot failed at load, "" if valid */
    int closing;          /* the commit being made is close's: mark clean */
    int leaky;            /* a punch failed: free blocks may still hold data */
    int data_dirty;       /* data written or punched since the last fdatasync(data) */
    uint64_t keep_max;    /* freed blocks to keep allocated for reuse (cb_pool_set_keep) */
    int csum_on;          /* data checksums (CB_INCOMPAT_CSUM) */
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

    struct cb_dev *handles;    /* open device handles (list) */
    cb_stat st;                /* counters */
    unsigned char *zero;       /* a block of zeros */
    void *scratch;             /* a block for read-modify-write (under the write lock) */
};

struct cb_dev {
    struct cb_pool *pool;
    struct cb_devrec *rec;     /* NULL once the pool is closed */
    struct cb_dev *prev, *next;
};

/* Take the pool lock (CB_LOCK_SHARED, or CB_LOCK_EXCLUSIVE; CB_LOCK_MUTATE is
 * exclusive and refused with CB_EROFS on a read-only pool) and check the
 * pool is neither closed (CB_ECLOSED) nor failed; on an error the lock is
 * not held.  cb_pool_leave releases it and returns rc.  Every entry point
 * that touches the pool goes through these: close relies on it. */
#define CB_LOCK_SHARED 0
#define CB_LOCK_EXCLUSIVE 1
#define CB_LOCK_MUTATE 2
int cb_pool_enter(struct cb_pool *p, int mode);
int cb_pool_leave(struct cb_pool *p, int rc);
/* Record for a name, or NULL. */
struct cb_devrec *cb_pool_find(struct cb_pool *p, const char *name);
/* Block shift, sub-block size and the buffers sized by the block size. */
int cb_pool_geometry(struct cb_pool *p);
/* Bytes the data file must span: the blocks, then the checksum table. */
uint64_t cb_pool_data_span(const struct cb_pool *p);
/* Punch data blocks [b, b + n) out of the data file; the next commit's
 * fdatasync makes it durable (a punch lost to a power cut would leave a free
 * block holding data).  Every punch of the data file goes through here. */
int cb_pool_punch(struct cb_pool *p, uint64_t b, uint64_t n);
/* Mark a device's table page dirty. */
void cb_pool_devdirty(struct cb_pool *p, struct cb_devrec *d);

/* txn.c: commit protocol and loading */
int cb_txn_commit(struct cb_pool *p);
int cb_txn_load(struct cb_pool *p);
/* Verify superblock page sb read from slot: 0, CB_ECORRUPT or CB_EVERSION
 * with the thread's corruption detail saying why (meta.h). */
int cb_txn_parse_super(const unsigned char *sb, uint64_t slot, uint64_t meta_file_pages);
int cb_txn_format(struct cb_pool *p);
/* Commit if the open transaction has grown past its bound. */
int cb_txn_maybe_commit(struct cb_pool *p);
/* Punch kept blocks until at most max are kept. */
void cb_txn_trim_kept(struct cb_pool *p, uint64_t max);
/* The identity of external origin x's file (st, or better the open file's):
 * recorded at attach time and committed with it (meta.h). */
struct stat;
void cb_txn_stamp_external(struct cb_external *x, const struct stat *st);
/* 1 (and why, a sentence) if x's file is not the one recorded, 0 if it is
 * or nothing was recorded. */
int cb_txn_external_changed(const struct cb_external *x, char *why, size_t len);
/* check.c */
int cb_check_run(struct cb_pool *p, int repair, cb_check *out, char *buf, size_t len);
/* Find (and with punch, punch out) free data blocks that hold data. */
int cb_check_free_data(struct cb_pool *p, int punch, uint64_t *found, uint64_t *punched);

#endif
