/*
 * check.h - verify an open pool against its invariants, and repair what can
 * be repaired without guessing (cowblock.h, cb_pool_check).
 *
 * Lock: exclusive (the walks use the nodes' scratch fields; repair and
 * punching change the store).  cb_check_run expects a committed store:
 * the caller commits first, so that what is in memory is on disk too.
 */
#ifndef CB_CHECK_H
#define CB_CHECK_H
#include "store.h"

int cb_check_run(struct cb_store *s, int repair, cb_check *out, char *buf, size_t len);
/* Find (and with punch, punch out) free data blocks that hold data.
 * Cost: one SEEK_DATA walk of the data file. */
int cb_check_free_data(struct cb_store *s, int punch, uint64_t *found, uint64_t *punched);

#endif
