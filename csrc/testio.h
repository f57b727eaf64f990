/*
 * testio.h - a fault-injecting, power-loss-simulating IO backend for tests.
 *
 * Compiled only when CB_TESTING is defined (tests/testbuild.py builds that
 * variant; the normal build never defines it), in the spirit of SQLite's
 * test VFS and pager fault injection.
 *
 * When enabled (cb_test_enable(1)), cb_file_open() wraps the plain-file
 * backend of every pool file it opens: a path ending in "/data" is the data
 * file, one ending in "/meta" the metadata file; every other file (external
 * origins) is left alone.  The wrapper
 *
 *  - holds every pwrite, punch and truncate in memory, in order, until the
 *    file's sync, which applies them to the real file (the "disk"; no real
 *    fdatasync is needed, the machine never really loses power).
 *    Reads, size and next_data see the pending writes (the page cache);
 *  - on a power cut drops every pending write of every wrapped file, and
 *    optionally lets a prefix of the last pending pwrite reach the disk (a
 *    torn write), and optionally a random subset of the other pending
 *    writes (a disk that reorders between barriers).  Then the "machine is
 *    off": every call on those files returns -EIO until they are closed;
 *  - counts the calls of each kind on each file, and makes the Nth call of
 *    a kind fail with a given errno (once, or from then on);
 *  - closed without a power cut, applies what is pending (the kernel would
 *    write it back eventually) without syncing.
 *
 * A failed sync (injected) loses that file's pending writes: after a failed
 * fdatasync the kernel may have dropped the dirty pages.
 *
 * All state is global and guarded by one mutex: tests drive one pool at a
 * time.  Every cb_test_* function may be called at any time, from any
 * thread.
 */
#ifndef CB_TESTIO_H
#define CB_TESTIO_H
#ifdef CB_TESTING
#include <stdint.h>

#include "blockio.h"

/* Kinds of calls (counters and fault rules). */
#define CB_TEST_PREAD    0
#define CB_TEST_PWRITE   1
#define CB_TEST_SYNC     2   /* fdatasync */
#define CB_TEST_PUNCH    3   /* fallocate(PUNCH_HOLE) */
#define CB_TEST_TRUNCATE 4
#define CB_TEST_MUTATE   5   /* any of pwrite, sync, punch, truncate */
#define CB_TEST_NKINDS   6

/* Files.  In rules and counters, CB_TEST_ANY means either / both. */
#define CB_TEST_ANY  0
#define CB_TEST_DATA 1
#define CB_TEST_META 2

#define CB_TEST_MAX_RULES 32

/* Wrap pool files opened from now on (1) or not (0, the default). */
void cb_test_enable(int on);
/* Forget counters, fault and cut rules, and the figures below.  Files
 * already off stay off until closed. */
void cb_test_reset(void);
/* Calls of `kind` on `file` since the last reset. */
uint64_t cb_test_count(int kind, int file);
/* Make the nth call (1-based, counted since the reset) of `kind` on `file`
 * fail with `err` (a positive errno; ENOSPC/EDQUOT come back as CB_ENOSPC,
 * as from the file backend).  cb_test_fail: that call only;
 * cb_test_fail_from: that call and every later one.  0 or CB_EINVAL. */
int cb_test_fail(int kind, int file, uint64_t n, int err);
int cb_test_fail_from(int kind, int file, uint64_t n, int err);
/* Power cut now.  torn_bytes > 0: the first torn_bytes bytes (rounded down
 * to 512-byte sectors) of the last pending pwrite reach the disk. */
void cb_test_power_cut(int torn_bytes);
/* Power cut right after the nth call of `kind` on `file` completes (that
 * call returns 0; the next one sees the machine off).  0 or CB_EINVAL. */
int cb_test_power_cut_at(int kind, int file, uint64_t n, int torn_bytes);
/* At the next power cuts, each other pending write also reaches the disk
 * with probability keep_percent / 100 (0, the default, drops them all). */
void cb_test_reorder(unsigned keep_percent, uint64_t seed);
/* Figures since the reset: power cuts made, of which with a torn write
 * (a strict prefix of the last pending pwrite reached the disk), faults
 * injected. */
uint64_t cb_test_cuts(void);
uint64_t cb_test_torn(void);
uint64_t cb_test_injected(void);
/* Pending (unsynced) writes of `file` over the wrapped files open now. */
uint64_t cb_test_pending(int file);
/* Wrapped files open now. */
uint64_t cb_test_open_files(void);

/* For blockio.c: wrap *io if testing is enabled and path names a pool file
 * (0, or CB_ENOMEM after closing *io); the backend under a wrapper. */
int cb_testio_wrap(const char *path, cb_io **io);
cb_io *cb_testio_inner(cb_io *io);

#endif /* CB_TESTING */
#endif
