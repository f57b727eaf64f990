/*
 * thin.h - device operations: read, write with copy-up, discard, and the
 * walks that report what a device holds (extents, changes, usage).
 *
 * Lock: the caller holds the pool lock, shared for cb_thin_read,
 * cb_thin_read_blocks, cb_thin_data_read, cb_thin_changed and
 * cb_thin_extents, exclusive for the rest (cb_thin_usage too: it uses the
 * nodes' scratch fields).
 *
 * Transactions belong to the caller.  Where only a commit could let an
 * operation go on (the pool or the file system is full, and blocks this
 * transaction freed would be given back by its commit), the operation
 * stops before changing anything more and returns CB_THIN_COMMIT; the
 * caller commits and calls again for what is left (as dm-thin's target
 * commits when its metadata reports no free space, and retries).
 */
#ifndef CB_THIN_H
#define CB_THIN_H
#include "store.h"

/* Not an error: "commit, then call again" (see above).  Positive, so it can
 * never be mistaken for a code of cowblock.h. */
#define CB_THIN_COMMIT 1

/* Bytes [off, off + len) of the data file, verified against their
 * checksums when the pool keeps them; vpos is the device offset they stand
 * for, reported through cb_thin_bad_offset() on CB_ECHECKSUM. */
int cb_thin_data_read(struct cb_store *p, void *buf, size_t len, uint64_t off, uint64_t vpos);
/* This thread's last CB_ECHECKSUM offset. */
uint64_t cb_thin_bad_offset(void);
int cb_thin_read(struct cb_store *p, struct cb_devrec *d, void *buf,
                 uint64_t len, uint64_t off);
/* Whole blocks idx[0..n) into buf (block idx[i] at buf + i * block size),
 * their data-file reads sent to the backend together. */
int cb_thin_read_blocks(struct cb_store *p, struct cb_devrec *d, const uint64_t *idx,
                        size_t n, void *buf);
/* Write [off, off + len).  0, a negative code, or CB_THIN_COMMIT with
 * *done = the bytes from off already written (whole blocks' worth or
 * less; the rest is untouched): commit and write buf + *done at
 * off + *done.  A write that can never fit fails with CB_ENOSPC before it
 * changes anything. */
int cb_thin_write(struct cb_store *p, struct cb_devrec *d, const void *buf,
                  uint64_t len, uint64_t off, uint64_t *done);
/* Discard [off, off + len).  0, a negative code, or CB_THIN_COMMIT: commit
 * and discard the whole range again (a discard is idempotent: a range
 * already discarded is skipped). */
int cb_thin_discard(struct cb_store *p, struct cb_devrec *d, uint64_t len,
                    uint64_t off);
int cb_thin_changed(struct cb_store *p, struct cb_devrec *d, uint8_t *bits,
                    size_t nbytes);
/* Runs of blocks in [first, end) that may hold data.  With next NULL: at
 * most n pairs filled, *count = all runs.  Otherwise the walk stops where
 * run n + 1 would start, *count = runs filled, *next = where it stopped. */
int cb_thin_extents(struct cb_store *p, struct cb_devrec *d, uint64_t first, uint64_t end,
                    uint64_t *pairs, size_t n, size_t *count, uint64_t *next);
/* Sub-blocks of d that read differently from b (NULL: an all-zero
 * device), from block start on, in block order: at most n into out; *next
 * gets the block to continue from (d's block count once done).  b must
 * have d's size and external origin (CB_EINVAL).  Read-only. */
int cb_thin_delta(struct cb_store *p, const struct cb_devrec *d, const struct cb_devrec *b,
                  uint64_t start, cb_delta *out, size_t n, size_t *count, uint64_t *next);
/* Usage of every device (out[i] for the i-th device in slot order). */
int cb_thin_usage(struct cb_store *p, cb_usage *out, size_t n, size_t *count);
/* Usage of one device, walking only its own tree (read-only: the shared
 * lock is enough); equal to its entry in cb_thin_usage. */
int cb_thin_dev_usage(struct cb_store *p, const struct cb_devrec *d, cb_usage *out);

#endif
