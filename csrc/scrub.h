/*
 * scrub.h - verify every data block that some device reads (cowblock.h,
 * cb_pool_scrub).  Caller holds the pool lock shared.
 */
#ifndef CB_SCRUB_H
#define CB_SCRUB_H
#include "pool.h"

int cb_scrub_run(struct cb_pool *p, cb_scrub *progress, cb_scrub_bad *bad, size_t n,
                 size_t *count);

#endif
