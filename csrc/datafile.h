/*
 * datafile.h - the data file under the device layer: positioned writes and
 * punches that remember the file needs a sync, and that sync.
 *
 * Every write and every punch of the data file goes through here, so that
 * the next commit's fdatasync(data) covers it: a write must be durable
 * before a committed entry names its block, and a punch lost to a power
 * cut would leave a free block holding data.  Reads go to the IO backend
 * directly (cb_io_pread on io).
 *
 * Not thread-safe: callers hold the pool lock exclusively for a write, a
 * punch or a sync (store.h).
 */
#ifndef CB_DATAFILE_H
#define CB_DATAFILE_H
#include <stddef.h>
#include <stdint.h>

#include "blockio.h"

struct cb_datafile {
    cb_io *io;            /* the data file (owned: closed by cb_datafile_close) */
    unsigned block_shift; /* of the pool's block size */
    int dirty;            /* written or punched since its last fdatasync */
    int leaky;            /* a punch failed: free blocks may still hold data,
                           * so the pool must not be marked clean (txn.c) */
};

/* Bytes [off, off + len) from buf; marks the file dirty.  0 or the IO error. */
int cb_datafile_write(struct cb_datafile *f, const void *buf, size_t len, uint64_t off);
/* Give blocks [b, b + n) back to the file system; marks the file dirty.
 * 0 or the IO error (the caller decides whether a failure leaks). */
int cb_datafile_punch(struct cb_datafile *f, uint64_t b, uint64_t n);
/* Something else wrote the file (the checksum table): it needs a sync. */
void cb_datafile_touch(struct cb_datafile *f);
/* fdatasync if dirty; clean again on success. */
int cb_datafile_sync(struct cb_datafile *f);
void cb_datafile_close(struct cb_datafile *f);

#endif
