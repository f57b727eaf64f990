/*
 * dump.h - the committed metadata as JSON text (cowblock.h, cb_pool_dump).
 *
 * Lock: shared.  Reads the metadata file, not the in-memory trees.
 */
#ifndef CB_DUMP_H
#define CB_DUMP_H
#include "store.h"

/* On success *json is malloc'd and NUL-terminated, *len its length. */
int cb_dump_run(struct cb_store *s, char **json, size_t *len);

#endif
