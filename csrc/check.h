/*
 * check.h - verify an open pool against its invariants, and repair what can
 * be repaired without guessing (cowblock.h, cb_pool_check).
 *
 * Lock: exclusive (the walks use the nodes' scratch fields; repair and
 * punching change the store).  The check expects a committed store: the
 * caller commits first, so that what is in memory is on disk too.
 */
#ifndef CB_CHECK_H
#define CB_CHECK_H
#include "store.h"

/* The check runs in steps the caller drives, so that the commit a repair
 * needs is made by the transaction's owner, not here:
 *
 *   cb_check_begin(s, out, buf, len, &c)
 *   for slot in 0, 1:
 *       rc = cb_check_slot(c, slot, repair)
 *       CB_CHECK_COMMIT: the slot the pool does not stand on is damaged and
 *           the next commit writes exactly that slot: commit, then
 *           cb_check_rewritten(c, slot) reports whether that repaired it
 *   cb_check_rest(c, repair)     every other check (see check.c)
 *   cb_check_end(c)
 *
 * Results go to out and (messages, one per line) to buf; 0 whatever was
 * found, an error only when the check cannot conclude (CB_ENOMEM, IO). */
#define CB_CHECK_COMMIT 1 /* positive: not an error (as CB_THIN_COMMIT) */
struct cb_checker;
int cb_check_begin(struct cb_store *s, cb_check *out, char *buf, size_t len,
                   struct cb_checker **c);
int cb_check_slot(struct cb_checker *c, unsigned slot, int repair);
int cb_check_rewritten(struct cb_checker *c, unsigned slot);
int cb_check_rest(struct cb_checker *c, int repair);
void cb_check_end(struct cb_checker *c);
/* Find (and with punch, punch out) free data blocks that hold data.
 * Cost: one SEEK_DATA walk of the data file. */
int cb_check_free_data(struct cb_store *s, int punch, uint64_t *found, uint64_t *punched);

#endif
