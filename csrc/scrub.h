/*
 * scrub.h - verify every data block that some device reads (cowblock.h,
 * cb_pool_scrub), online: the caller drives it and takes the pool lock
 * shared around each step, releasing it in between, so that writers wait
 * for one slice at most.
 *
 *   cb_scrub_begin   (shared lock) walk the trees, note what to read
 *   while (cb_scrub_more(x)) {          (no lock: the scrub's own state)
 *       cb_scrub_cancelled(x)           (no lock) -ECANCELED if asked to stop
 *       cb_scrub_slice(x, ...)          (shared lock) read one slice
 *       cb_scrub_pace(x)                (no lock) sleep under the rate limit
 *   }
 *   cb_scrub_end     (no lock) free the scrub's state
 */
#ifndef CB_SCRUB_H
#define CB_SCRUB_H
#include "store.h"

struct cb_scrubber;

int cb_scrub_begin(struct cb_store *s, cb_scrub *progress, struct cb_scrubber **out);
int cb_scrub_more(struct cb_scrubber *x);
int cb_scrub_cancelled(const struct cb_scrubber *x);
int cb_scrub_slice(struct cb_scrubber *x, cb_scrub_bad *bad, size_t n, size_t *count);
void cb_scrub_pace(const struct cb_scrubber *x);
void cb_scrub_end(struct cb_scrubber *x);

#endif
