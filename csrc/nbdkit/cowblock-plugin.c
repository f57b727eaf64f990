/*
 * cowblock-plugin.c - an nbdkit plugin serving the devices of a cowblock
 * pool, over the public C API (cowblock.h) alone.
 *
 *   nbdkit ./cowblock-plugin.so pool=DIR [device=NAME]
 *
 * Without device=, every device of the pool is an export under its own
 * name (NBD_OPT_LIST lists them, devices made later appear at once), as
 * with `cowblock serve`; with device=, that device is the only export,
 * whatever name the client asks for.  A read-only device is exported
 * read-only; nbdkit's -r makes every export read-only.
 *
 * The pool is opened once, after nbdkit has forked (.after_fork), and closed
 * in .cleanup, which commits: a shutdown (SIGTERM, SIGINT) makes every
 * acknowledged write durable.  A connection that wrote and leaves without a
 * flush gets its writes committed when it closes, so a client that sends
 * no flush (nbdcopy without --flush) loses nothing.  The core is thread
 * safe, so the thread model is PARALLEL.  A flush commits the whole pool:
 * multi-conn is safe.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cowblock.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#ifndef CB_BUILD_ID               /* build.py passes the hash of the core's sources */
#define CB_BUILD_ID "cowblock-core unhashed"
#endif

#define MAX_REQUEST (32u << 20)   /* as `cowblock serve`: NBD_INFO_BLOCK_SIZE maximum */
#define EXTENT_RUNS 256           /* runs asked of the core per call */
#define CACHE_PIECE (1u << 20)    /* bytes read at a time by NBD_CMD_CACHE */

static char *pool_path;           /* pool=, absolute */
static int pool_readonly;         /* readonly=true: open the pool read-only */
static const char *device_name;   /* device=, or NULL: every device */
static cb_pool *pool;
static uint64_t pool_block_size;

struct handle {
    cb_dev *dev;
    char name[CB_NAME_MAX + 1];
    uint64_t size;
    int readonly;                 /* the device's own flag */
    atomic_int dirty;             /* written since the last flush */
};

/* A cb code as an errno for the client, with nbdkit_error saying what
 * failed.  Returns -1, for the callbacks to return. */
static int
fail(int rc, const char *what, const struct handle *h, uint64_t len, uint64_t off)
{
    int err;
    switch (rc) {
    case CB_EINVAL:    err = EINVAL; break;
    case CB_ENOENT:    err = ESHUTDOWN; break;  /* device deleted under the handle */
    case CB_EROFS:     err = EPERM; break;
    case CB_ENOSPC:    err = ENOSPC; break;
    case CB_ENOMEM:    err = ENOMEM; break;
    case CB_ECLOSED:   err = ESHUTDOWN; break;
    case CB_ECORRUPT: case CB_EFAILED: case CB_ECHECKSUM: case CB_EEXTERNAL:
        err = EIO; break;
    default:  /* -errno from the system; any other code of the core: EIO */
        err = rc < 0 && (rc < CB_ERR_FIRST || rc > CB_ERR_LAST) ? -rc : EIO;
    }
    if (h)
        nbdkit_error("cowblock: %s of %" PRIu64 " bytes at offset %" PRIu64
                     " of device '%s' failed: %s", what, len, off, h->name,
                     cb_strerror(rc));
    else
        nbdkit_error("cowblock: %s failed: %s", what, cb_strerror(rc));
    nbdkit_set_error(err);
    errno = err;
    return -1;
}

/* ---- configuration and life of the pool ---------------------------- */

static int
cowblock_config(const char *key, const char *value)
{
    if (strcmp(key, "pool") == 0) {
        free(pool_path);
        pool_path = nbdkit_absolute_path(value);
        return pool_path ? 0 : -1;
    }
    if (strcmp(key, "device") == 0) {
        if (value[0] == '\0' || strlen(value) > CB_NAME_MAX || strchr(value, '/')) {
            nbdkit_error("cowblock: device=%s is not a device name "
                         "(1 to %d bytes, no '/')", value, CB_NAME_MAX);
            return -1;
        }
        device_name = value;
        return 0;
    }
    if (strcmp(key, "readonly") == 0) {
        pool_readonly = nbdkit_parse_bool(value);
        return pool_readonly < 0 ? -1 : 0;
    }
    nbdkit_error("cowblock: unknown parameter '%s' (pool=DIR, device=NAME, "
                 "readonly=BOOL)", key);
    return -1;
}

static int
cowblock_config_complete(void)
{
    if (pool_path == NULL) {
        nbdkit_error("cowblock: the pool=DIR parameter is required");
        return -1;
    }
    return 0;
}

#define cowblock_config_help \
    "pool=DIR        (required) The cowblock pool directory.\n" \
    "device=NAME                Export only this device (default: every\n" \
    "                           device, under its own name).\n" \
    "readonly=BOOL              Open the pool read-only: nothing is written\n" \
    "                           to it, every export is read-only."

static int
cowblock_after_fork(void)
{
    cb_stat st;
    int rc = cb_pool_open(pool_path, pool_readonly ? CB_OPEN_READONLY : 0, &pool);
    if (rc < 0) {
        pool = NULL;
        nbdkit_error("cowblock: cannot open the pool '%s': %s", pool_path, cb_strerror(rc));
        return -1;
    }
    rc = cb_pool_stat(pool, &st);
    if (rc < 0)
        return fail(rc, "reading the pool's figures", NULL, 0, 0);
    pool_block_size = st.block_size;
    if (device_name) {
        cb_devinfo info;
        rc = cb_pool_info(pool, device_name, &info);
        if (rc < 0) {
            nbdkit_error("cowblock: device '%s' of pool '%s': %s", device_name,
                         pool_path, cb_strerror(rc));
            return -1;
        }
    }
    return 0;
}

static void
cowblock_cleanup(void)
{
    if (pool) {
        int rc = cb_pool_close(pool);   /* commits */
        if (rc < 0)
            nbdkit_error("cowblock: closing the pool '%s' failed: %s", pool_path,
                         cb_strerror(rc));
        pool = NULL;
    }
}

static void
cowblock_unload(void)
{
    free(pool_path);
}

/* ---- exports ----------------------------------------------------------- */

static int
cowblock_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports)
{
    cb_devinfo *infos = NULL;
    size_t n = 0, count = 0;
    int rc;

    (void)readonly; (void)is_tls;
    if (device_name)
        return nbdkit_add_export(exports, device_name, NULL);
    /* The table may grow between the two calls: ask again until it fits. */
    for (;;) {
        rc = cb_pool_list(pool, infos, n, &count);
        if (rc < 0) {
            free(infos);
            return fail(rc, "listing the devices", NULL, 0, 0);
        }
        if (count <= n)
            break;
        free(infos);
        n = count + 16;
        infos = malloc(n * sizeof *infos);
        if (infos == NULL) {
            nbdkit_error("cowblock: listing the devices: out of memory");
            return -1;
        }
    }
    for (size_t i = 0; i < count; i++)
        if (nbdkit_add_export(exports, infos[i].name, NULL) < 0) {
            free(infos);
            return -1;
        }
    free(infos);
    return 0;
}

static void *
cowblock_open(int readonly)
{
    const char *name = device_name ? device_name : nbdkit_export_name();
    struct handle *h;
    cb_devinfo info;
    int rc;

    (void)readonly;   /* nbdkit refuses writes on a -r server by itself */
    if (name == NULL || name[0] == '\0') {
        nbdkit_error("cowblock: no export name: ask for a device by name "
                     "(NBD_OPT_LIST lists them) or start with device=NAME");
        return NULL;
    }
    h = calloc(1, sizeof *h);
    if (h == NULL) {
        nbdkit_error("cowblock: out of memory");
        return NULL;
    }
    rc = cb_dev_open(pool, name, &h->dev);
    if (rc == 0)
        rc = cb_dev_info(h->dev, &info);
    if (rc < 0) {
        nbdkit_error("cowblock: export '%s': %s", name, cb_strerror(rc));
        nbdkit_set_error(rc == CB_ENOENT ? ENOENT : EIO);
        if (h->dev)
            cb_dev_close(h->dev);
        free(h);
        return NULL;
    }
    memcpy(h->name, info.name, sizeof h->name);
    h->size = info.size;
    h->readonly = (info.flags & CB_DEV_READONLY) != 0;
    atomic_init(&h->dirty, 0);
    return h;
}

static void
cowblock_close(void *handle)
{
    struct handle *h = handle;
    if (atomic_load(&h->dirty)) {  /* a client that left without a flush */
        int rc = cb_dev_flush(h->dev);
        if (rc < 0 && rc != CB_ECLOSED)
            nbdkit_error("cowblock: committing the writes to '%s' after the client "
                         "left failed: %s", h->name, cb_strerror(rc));
        else if (rc == 0)
            nbdkit_debug("cowblock: committed the unflushed writes to '%s' after "
                         "the client left", h->name);
    }
    cb_dev_close(h->dev);
    free(h);
}

static int64_t
cowblock_get_size(void *handle)
{
    return (int64_t)((struct handle *)handle)->size;
}

static int
cowblock_block_size(void *handle, uint32_t *minimum, uint32_t *preferred,
                    uint32_t *maximum)
{
    (void)handle;
    /* The core takes any offset and length; a write of a sixty-fourth of a
     * block (a sub-block) into a shared block copies nothing more. */
    *minimum = 1;
    *preferred = pool_block_size / 64 > 4096 ? (uint32_t)(pool_block_size / 64) : 4096;
    *maximum = MAX_REQUEST;
    return 0;
}

static int cowblock_can_write(void *handle)
{
    return !pool_readonly && !((struct handle *)handle)->readonly;
}
static int cowblock_can_flush(void *handle) { (void)handle; return 1; }
static int cowblock_can_trim(void *handle) { return cowblock_can_write(handle); }
static int cowblock_can_zero(void *handle) { return cowblock_can_write(handle); }
static int cowblock_can_fast_zero(void *handle) { return cowblock_can_write(handle); }
static int cowblock_can_fua(void *handle) { (void)handle; return NBDKIT_FUA_NATIVE; }
static int cowblock_can_multi_conn(void *handle) { (void)handle; return 1; }
static int cowblock_can_extents(void *handle) { (void)handle; return 1; }
static int cowblock_can_cache(void *handle) { (void)handle; return NBDKIT_CACHE_NATIVE; }

/* ---- data ---------------------------------------------------------------- */

static int
commit(struct handle *h, const char *what, uint32_t count, uint64_t offset)
{
    int rc;
    atomic_store(&h->dirty, 0);
    rc = cb_dev_flush(h->dev);
    if (rc < 0) {
        atomic_store(&h->dirty, 1);
        return fail(rc, what, h, count, offset);
    }
    return 0;
}

/* nbdkit advertises the maximum of .block_size but lets requests up to its
 * own limit through: refuse what is over ours, as `cowblock serve` does. */
static int
too_big(const char *what, uint32_t count)
{
    if (count <= MAX_REQUEST)
        return 0;
    nbdkit_error("cowblock: %s of %" PRIu32 " bytes exceeds the maximum block size %u",
                 what, count, MAX_REQUEST);
    nbdkit_set_error(EINVAL);
    errno = EINVAL;
    return -1;
}

static int
cowblock_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct handle *h = handle;
    int rc;
    (void)flags;
    if (too_big("read", count) < 0)
        return -1;
    rc = cb_dev_read(h->dev, buf, count, offset);
    return rc < 0 ? fail(rc, "read", h, count, offset) : 0;
}

/* NBD_CMD_CACHE: read the range (into the page cache), keep nothing. */
static int
cowblock_cache(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct handle *h = handle;
    size_t piece = count < CACHE_PIECE ? count : CACHE_PIECE;
    char *scratch;
    (void)flags;
    if (too_big("cache", count) < 0)
        return -1;
    if (count == 0)
        return 0;
    scratch = malloc(piece);
    if (scratch == NULL) {
        nbdkit_error("cowblock: cache of %" PRIu32 " bytes: out of memory", count);
        nbdkit_set_error(ENOMEM);
        return -1;
    }
    for (uint64_t pos = offset, end = offset + count; pos < end; ) {
        uint64_t n = end - pos < piece ? end - pos : piece;
        int rc = cb_dev_read(h->dev, scratch, n, pos);
        if (rc < 0) {
            free(scratch);
            return fail(rc, "cache", h, count, offset);
        }
        pos += n;
    }
    free(scratch);
    return 0;
}

static int
cowblock_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
    struct handle *h = handle;
    int rc;
    if (too_big("write", count) < 0)
        return -1;
    rc = cb_dev_write(h->dev, buf, count, offset);
    if (rc < 0)
        return fail(rc, "write", h, count, offset);
    atomic_store(&h->dirty, 1);
    return flags & NBDKIT_FLAG_FUA ? commit(h, "FUA flush after a write", count, offset) : 0;
}

static int
cowblock_flush(void *handle, uint32_t flags)
{
    (void)flags;
    return commit(handle, "flush", 0, 0);
}

static int
cowblock_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct handle *h = handle;
    int rc = cb_dev_discard(h->dev, count, offset);
    if (rc < 0)
        return fail(rc, "trim", h, count, offset);
    atomic_store(&h->dirty, 1);
    return flags & NBDKIT_FLAG_FUA ? commit(h, "FUA flush after a trim", count, offset) : 0;
}

static int
cowblock_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    static const char zeros[1 << 16];
    struct handle *h = handle;
    int rc = 0;

    if (flags & NBDKIT_FLAG_MAY_TRIM) {
        /* a discard reads as zeros and allocates nothing: always fast */
        rc = cb_dev_discard(h->dev, count, offset);
        if (rc < 0)
            return fail(rc, "write zeroes (discard)", h, count, offset);
    } else {
        if (flags & NBDKIT_FLAG_FAST_ZERO) {
            /* zeros without a hole are written like data: no faster than a write */
            nbdkit_set_error(ENOTSUP);
            errno = ENOTSUP;
            return -1;
        }
        for (uint64_t pos = offset, end = offset + count; pos < end; ) {
            uint64_t n = end - pos < sizeof zeros ? end - pos : sizeof zeros;
            rc = cb_dev_write(h->dev, zeros, n, pos);
            if (rc < 0)
                return fail(rc, "write zeroes", h, count, offset);
            pos += n;
        }
    }
    atomic_store(&h->dirty, 1);
    return flags & NBDKIT_FLAG_FUA ? commit(h, "FUA flush after write zeroes", count, offset)
                                   : 0;
}

/* Holes and zeros from the mapping: runs of blocks that may hold data are
 * data, everything else reads as zeros and is a hole.  One call of the core
 * per request, at most EXTENT_RUNS runs: nbdkit lets a plugin describe less
 * than the range asked (from its start on), and the client asks on from
 * where the reply ended, so a request costs the same whatever its length. */
static int
cowblock_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents)
{
    struct handle *h = handle;
    const uint64_t bs = pool_block_size;
    const uint64_t hole = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
    uint64_t pairs[2 * EXTENT_RUNS];
    uint64_t dev_blocks = (h->size + bs - 1) / bs;
    uint64_t first = offset / bs, last = (offset + count + bs - 1) / bs;
    uint64_t pos = first * bs, next = 0, stop;
    size_t n = 0;
    int rc;

    if (last > dev_blocks)
        last = dev_blocks;
    rc = cb_dev_extents_range(h->dev, first, last - first, pairs,
                              flags & NBDKIT_FLAG_REQ_ONE ? 1 : EXTENT_RUNS, &n, &next);
    if (rc < 0)
        return fail(rc, "block status", h, count, offset);
    for (size_t i = 0; i < n; i++) {
        uint64_t start = pairs[2 * i] * bs;
        stop = (pairs[2 * i] + pairs[2 * i + 1]) * bs;
        if (stop > h->size)
            stop = h->size;
        if (start > pos && nbdkit_add_extent(extents, pos, start - pos, hole) < 0)
            return -1;
        if (nbdkit_add_extent(extents, start, stop - start, 0) < 0)
            return -1;
        pos = stop;
    }
    /* [pos, next) reads as zeros */
    stop = next * bs < h->size ? next * bs : h->size;
    if (stop > pos && nbdkit_add_extent(extents, pos, stop - pos, hole) < 0)
        return -1;
    return 0;
}

static struct nbdkit_plugin plugin = {
    .name = "cowblock",
    .longname = "cowblock thin devices",
    .version = CB_BUILD_ID,
    .description = "Serves the thin devices of a cowblock pool, one export per device.",
    .unload = cowblock_unload,
    .config = cowblock_config,
    .config_complete = cowblock_config_complete,
    .config_help = cowblock_config_help,
    .magic_config_key = "pool",
    .after_fork = cowblock_after_fork,
    .cleanup = cowblock_cleanup,
    .list_exports = cowblock_list_exports,
    .open = cowblock_open,
    .close = cowblock_close,
    .get_size = cowblock_get_size,
    .block_size = cowblock_block_size,
    .can_write = cowblock_can_write,
    .can_flush = cowblock_can_flush,
    .can_trim = cowblock_can_trim,
    .can_zero = cowblock_can_zero,
    .can_fast_zero = cowblock_can_fast_zero,
    .can_fua = cowblock_can_fua,
    .can_multi_conn = cowblock_can_multi_conn,
    .can_extents = cowblock_can_extents,
    .can_cache = cowblock_can_cache,
    .cache = cowblock_cache,
    .pread = cowblock_pread,
    .pwrite = cowblock_pwrite,
    .flush = cowblock_flush,
    .trim = cowblock_trim,
    .zero = cowblock_zero,
    .extents = cowblock_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
