/*
 * backend.h - where a pool keeps its two stores ("meta" and "data"), by the
 * pool's location: a directory for the file backend (DIR/meta, DIR/data),
 * or a URL naming another backend ("rados://...", blockio_rados.h).  The
 * pool layer opens and removes its stores through here and then sees only
 * the cb_io vtable.
 */
#ifndef CB_BACKEND_H
#define CB_BACKEND_H
#include <stddef.h>

#include "blockio.h"

/* 1 if location is a URL ("scheme://..."), 0 if it is a directory. */
int cb_backend_is_url(const char *location);
/* Open store `name` of the pool at location (CB_IO_* flags).  `peer`: NULL,
 * or another store of the same pool open already: a backend with
 * connections (RADOS) uses peer's, so that fencing the pool's writer fences
 * both of its stores, while every open of a pool has its own.  -EEXIST with
 * CB_IO_CREATE if it exists, -ENOENT without if it does not; CB_EINVAL for
 * a URL of a backend this build lacks or a malformed one (the detail says
 * which: cb_corrupt_detail). */
int cb_backend_open(const char *location, const char *name, unsigned flags, cb_io *peer,
                    cb_io **out);
/* Remove store `name` (undoing a failed create): 0 if it is gone. */
int cb_backend_remove(const char *location, const char *name);

#endif
