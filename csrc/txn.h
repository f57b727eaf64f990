/*
 * txn.h - the transaction: the commit protocol that makes the store's
 * changes durable (shadow paging, see txn.c), and its inverse, loading the
 * committed state of a pool; formatting a new one.
 *
 * Lock: the caller holds the pool lock exclusively for every call (the
 * pool layer takes it around create and open too, before the pool is
 * shared).  The caller owns the transaction: it decides when to commit,
 * and what a failed commit means (the pool layer makes it sticky).
 */
#ifndef CB_TXN_H
#define CB_TXN_H
#include "store.h"

/* What the superblock a commit writes says about the pool (compat bit
 * CB_COMPAT_CLEAN), and whether a commit with nothing changed writes one. */
#define CB_TXN_FLUSH  0  /* commit what changed; nothing changed: no write at all */
#define CB_TXN_IN_USE 1  /* always write a superblock, not marked clean (open) */
#define CB_TXN_CLEAN  2  /* always write a superblock, marked clean unless a
                          * punch failed since the open (close) */

/* Commit: fdatasync(data), the dirty metadata to fresh pages,
 * fdatasync(meta), the superblock, fdatasync(meta); then punch or keep the
 * blocks the transaction freed.  0, or the error of the step that failed:
 * then the state on disk is the last committed one and the store is not
 * fit for another commit (the caller fails the pool).  Cost: the dirty
 * nodes and records, plus the freed blocks (sorted). */
int cb_txn_commit(struct cb_store *s, int mode);
/* Has the open transaction grown past its bound (dirty nodes, freed blocks)?
 * The caller commits then, so that a transaction's memory stays bounded. */
int cb_txn_due(const struct cb_store *s);
/* Load the committed state from s->meta and s->data.io (opened by the
 * caller): the superblock slot with the highest valid generation, every
 * page verified, reference counts rebuilt from the trees; unless readonly,
 * the blocks the last commit's free log names are punched again (finishing
 * an interrupted commit).  With readonly nothing in the files changes.
 * CB_ECORRUPT (with the thread's corruption detail, meta.h), CB_EVERSION,
 * CB_ENOMEM or an IO error; on error the store holds what was loaded so
 * far, for cb_store_destroy.  Cost: every metadata page once. */
int cb_txn_load(struct cb_store *s, int readonly);
/* A full pool whose blocks are held for readers (txn.c, "Readers"): ask
 * for the readers again and release what none of them reaches any more,
 * without a commit (the free log's record of them stays true enough: a
 * later open finds them either named by a commit or free).  The number of
 * blocks released. */
uint64_t cb_txn_release_held(struct cb_store *s);
/* The generation of the newest valid superblock in s->meta, reading only
 * the two slots (nothing else of s is needed or changed).  CB_ECORRUPT if
 * neither is valid. */
int cb_txn_peek(struct cb_store *s, uint64_t *gen);
/* Write the first superblock of a new pool (generation 1, no devices). */
int cb_txn_format(struct cb_store *s);
/* Punch kept blocks until at most max are kept. */
void cb_txn_trim_kept(struct cb_store *s, uint64_t max);

#endif
