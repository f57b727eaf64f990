/* fusefile: cowblock devices as files of a FUSE mount (see fusefile.c).
 *
 * Lifecycle: cbf_create (mounts) -> cbf_run on a thread of its own (serves
 * until cbf_stop) -> cbf_destroy once cbf_run has returned.  cbf_add and
 * cbf_remove may be called from any thread while it runs.  Every fallible
 * call returns 0 or a negative errno.
 */
#ifndef COWBLOCK_FUSEFILE_H
#define COWBLOCK_FUSEFILE_H

#include <stdint.h>

#define CBF_NAME_MAX 255          /* bytes of a file name */
#define CBF_MAX_FILES 1024        /* files in one mount */
#define CBF_MAX_IO (1u << 20)     /* largest read or write request */

typedef struct cbf_fs cbf_fs;

/* The core's byte IO calls (cb_dev_read, cb_dev_write, cb_dev_discard,
 * cb_dev_flush of cowblock.h), as function pointers taken from the
 * compiled core, and the cb_dev handles they take as void *. */
typedef struct cbf_core {
    int (*read)(void *dev, void *buf, uint64_t len, uint64_t off);
    int (*write)(void *dev, const void *buf, uint64_t len, uint64_t off);
    int (*discard)(void *dev, uint64_t len, uint64_t off);
    int (*flush)(void *dev);
} cbf_core;

typedef struct cbf_counters {
    uint64_t reads, writes, bytes_read, bytes_written, discards, flushes, errors;
} cbf_counters;

/* 1 when built with libfuse3, 0 when not (then every call is -ENOSYS). */
int cbf_available(void);
/* Mount an empty directory of files at mountpoint (root, /dev/fuse). */
int cbf_create(const char *mountpoint, const cbf_core *core, unsigned max_threads,
               cbf_fs **out);
/* Serve requests on up to max_threads worker threads; returns after cbf_stop. */
int cbf_run(cbf_fs *fs);
/* Unmount: cbf_run returns once its workers are done.  Any thread. */
void cbf_stop(cbf_fs *fs);
/* Free everything; only after cbf_run has returned (or was never called). */
void cbf_destroy(cbf_fs *fs);
/* A file name (no '/') for dev of size bytes.  dev must stay usable until
 * cbf_remove of that name succeeds.  -EEXIST, -EINVAL, -ENFILE. */
int cbf_add(cbf_fs *fs, const char *name, void *dev, uint64_t size, int readonly);
/* Forget a file; -EBUSY while anything holds it open, -ENOENT. */
int cbf_remove(cbf_fs *fs, const char *name);
/* Open handles on a file, or -ENOENT. */
int cbf_open_count(cbf_fs *fs, const char *name);
void cbf_counters_get(cbf_fs *fs, cbf_counters *out);

#endif
