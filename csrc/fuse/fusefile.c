/* fusefile: cowblock devices as files of a FUSE file system.
 *
 * One mount holds one flat directory; each file in it is one open device
 * (cb_dev) of the pool the Python side holds.  A loop device over a file
 * turns it into a kernel block device (cowblock/mapping/).  The data path
 * runs here, in C, on libfuse's worker threads: no Python and no GIL per
 * request.  The core's calls come in as function pointers (struct cbf_core)
 * taken from cowblock._cowblock, so this module carries no copy of the core.
 *
 * Requests and what they become:
 *   read, write            cb_dev_read, cb_dev_write (clipped at the end)
 *   fsync, flush           cb_dev_flush (the pool's durability point)
 *   fallocate PUNCH_HOLE   cb_dev_discard (blocks nobody needs are freed)
 *   fallocate ZERO_RANGE   cb_dev_discard (a discarded range reads as zeros)
 *   fallocate otherwise    EOPNOTSUPP: a thin device cannot reserve space
 * Files are opened with direct_io, so the kernel keeps no page cache of
 * them: the loop device above (--direct-io=on) and the file system above it
 * cache once.
 *
 * Invariants:
 *   1. A file's cb_dev is used only through an open file handle (fi->fh
 *      points at its slot); cbf_remove refuses a file that is open, so a
 *      slot's dev outlives every request on it.
 *   2. Inode numbers are never reused (a removed file's inode answers
 *      ENOENT), so the kernel's cached attributes cannot name another device.
 *   3. The slot table and the counters of open handles are guarded by
 *      fs->lock; the IO path takes no lock.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fusefile.h"

#ifndef CBF_NO_FUSE

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct slot {
    int used;
    fuse_ino_t ino;
    char name[CBF_NAME_MAX + 1];
    void *dev;
    uint64_t size;
    int readonly;
    int opens;
    time_t mtime;
};

struct cbf_fs {
    struct fuse_session *se;
    cbf_core core;
    unsigned max_threads;
    pthread_mutex_t lock;
    struct slot slots[CBF_MAX_FILES];
    fuse_ino_t next_ino;
    time_t started;
    pthread_key_t bufkey;
    _Atomic uint64_t reads, writes, bytes_read, bytes_written, discards, flushes, errors;
};

#define ROOT_INO 1
#define ATTR_TIMEOUT 1.0

/* The core's codes (cowblock.h: -30699 .. -30600) as errno values. */
static int to_errno(int rc)
{
    if (rc >= 0)
        return 0;
    if (rc > -4096)
        return -rc;               /* an OS error passed up by the core */
    switch (rc) {
    case -30699: return EINVAL;   /* CB_EINVAL */
    case -30698: return ENODEV;   /* CB_ENOENT: the device was deleted */
    case -30696: return EROFS;    /* CB_EROFS */
    case -30695: return ENOSPC;   /* CB_ENOSPC */
    case -30689: return ENOMEM;   /* CB_ENOMEM */
    default: return EIO;          /* corrupt, failed, checksum, closed, ... */
    }
}

static struct slot *by_ino(cbf_fs *fs, fuse_ino_t ino)
{
    for (int i = 0; i < CBF_MAX_FILES; i++)
        if (fs->slots[i].used && fs->slots[i].ino == ino)
            return &fs->slots[i];
    return NULL;
}

static struct slot *by_name(cbf_fs *fs, const char *name)
{
    for (int i = 0; i < CBF_MAX_FILES; i++)
        if (fs->slots[i].used && strcmp(fs->slots[i].name, name) == 0)
            return &fs->slots[i];
    return NULL;
}

static void fill_stat(cbf_fs *fs, fuse_ino_t ino, const struct slot *s, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = getuid();
    st->st_gid = getgid();
    if (!s) {
        st->st_mode = S_IFDIR | 0700;
        st->st_nlink = 2;
        st->st_mtime = st->st_ctime = st->st_atime = fs->started;
        return;
    }
    st->st_mode = S_IFREG | (s->readonly ? 0400 : 0600);
    st->st_nlink = 1;
    st->st_size = (off_t)s->size;
    st->st_blksize = 4096;
    st->st_blocks = (blkcnt_t)((s->size + 511) / 512);
    st->st_mtime = st->st_ctime = st->st_atime = s->mtime;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    conn->max_write = CBF_MAX_IO;
    conn->max_read = CBF_MAX_IO;
    conn->max_readahead = CBF_MAX_IO;
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct fuse_entry_param e;
    if (parent != ROOT_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof e);
    pthread_mutex_lock(&fs->lock);
    struct slot *s = by_name(fs, name);
    if (s) {
        e.ino = s->ino;
        fill_stat(fs, s->ino, s, &e.attr);
    }
    pthread_mutex_unlock(&fs->lock);
    if (!s) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    e.attr_timeout = ATTR_TIMEOUT;
    e.entry_timeout = ATTR_TIMEOUT;
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct stat st;
    (void)fi;
    if (ino == ROOT_INO) {
        fill_stat(fs, ino, NULL, &st);
        fuse_reply_attr(req, &st, ATTR_TIMEOUT);
        return;
    }
    pthread_mutex_lock(&fs->lock);
    struct slot *s = by_ino(fs, ino);
    if (s)
        fill_stat(fs, ino, s, &st);
    pthread_mutex_unlock(&fs->lock);
    if (!s)
        fuse_reply_err(req, ENOENT);
    else
        fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* Only what changes nothing is accepted: a device's size is fixed, and
 * modes and times are the mapping's, not the user's. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct stat st;
    (void)fi;
    pthread_mutex_lock(&fs->lock);
    struct slot *s = ino == ROOT_INO ? NULL : by_ino(fs, ino);
    int found = ino == ROOT_INO || s;
    int err = 0;
    if (found && (to_set & FUSE_SET_ATTR_SIZE) && (!s || (uint64_t)attr->st_size != s->size))
        err = EPERM;
    if (found)
        fill_stat(fs, ino, s, &st);
    pthread_mutex_unlock(&fs->lock);
    if (!found)
        fuse_reply_err(req, ENOENT);
    else if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    (void)fi;
    if (ino != ROOT_INO) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    if (size > 65536)
        size = 65536;
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    struct stat st;
    memset(&st, 0, sizeof st);
    /* Entry k (k >= 2) is slot k - 2; off is the index of the next entry. */
    pthread_mutex_lock(&fs->lock);
    for (off_t k = off; k < CBF_MAX_FILES + 2; k++) {
        const char *name;
        if (k == 0) {
            name = ".";
            st.st_ino = ROOT_INO;
            st.st_mode = S_IFDIR;
        } else if (k == 1) {
            name = "..";
            st.st_ino = ROOT_INO;
            st.st_mode = S_IFDIR;
        } else {
            struct slot *s = &fs->slots[k - 2];
            if (!s->used)
                continue;
            name = s->name;
            st.st_ino = s->ino;
            st.st_mode = S_IFREG;
        }
        size_t n = fuse_add_direntry(req, buf + used, size - used, name, &st, k + 1);
        if (n > size - used)
            break;
        used += n;
    }
    pthread_mutex_unlock(&fs->lock);
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    int err = 0;
    pthread_mutex_lock(&fs->lock);
    struct slot *s = by_ino(fs, ino);
    if (!s)
        err = ino == ROOT_INO ? EISDIR : ENOENT;
    else if (s->readonly && (fi->flags & O_ACCMODE) != O_RDONLY)
        err = EROFS;
    else if (fi->flags & O_TRUNC)
        err = EPERM;
    else
        s->opens++;
    pthread_mutex_unlock(&fs->lock);
    if (err) {
        fuse_reply_err(req, err);
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)s;
    fi->direct_io = 1;   /* no page cache in the kernel for this file */
    fi->keep_cache = 0;
    fi->nonseekable = 0;
    if (fuse_reply_open(req, fi) == -ENOENT) {
        /* The opener was interrupted: the kernel never got its handle. */
        pthread_mutex_lock(&fs->lock);
        s->opens--;
        pthread_mutex_unlock(&fs->lock);
    }
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct slot *s = (struct slot *)(uintptr_t)fi->fh;
    (void)ino;
    pthread_mutex_lock(&fs->lock);
    if (s && s->opens > 0)
        s->opens--;
    pthread_mutex_unlock(&fs->lock);
    fuse_reply_err(req, 0);
}

static void free_buf(void *p)
{
    free(p);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct slot *s = (struct slot *)(uintptr_t)fi->fh;
    (void)ino;
    if (off < 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((uint64_t)off >= s->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > CBF_MAX_IO)
        size = CBF_MAX_IO;
    if (size > s->size - (uint64_t)off)
        size = s->size - (uint64_t)off;
    /* One buffer per worker thread, as large as the largest request. */
    void *buf = pthread_getspecific(fs->bufkey);
    if (!buf) {
        if (posix_memalign(&buf, 4096, CBF_MAX_IO)) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        pthread_setspecific(fs->bufkey, buf);
    }
    int rc = fs->core.read(s->dev, buf, size, (uint64_t)off);
    if (rc) {
        atomic_fetch_add(&fs->errors, 1);
        fuse_reply_err(req, to_errno(rc));
        return;
    }
    atomic_fetch_add(&fs->reads, 1);
    atomic_fetch_add(&fs->bytes_read, size);
    fuse_reply_buf(req, buf, size);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size,
                     off_t off, struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct slot *s = (struct slot *)(uintptr_t)fi->fh;
    (void)ino;
    if (s->readonly) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (off < 0 || (uint64_t)off > s->size) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((uint64_t)off == s->size && size) {
        fuse_reply_err(req, ENOSPC);   /* a fixed-size file cannot grow */
        return;
    }
    if (size > s->size - (uint64_t)off)
        size = s->size - (uint64_t)off;
    int rc = size ? fs->core.write(s->dev, data, size, (uint64_t)off) : 0;
    if (rc) {
        atomic_fetch_add(&fs->errors, 1);
        fuse_reply_err(req, to_errno(rc));
        return;
    }
    atomic_fetch_add(&fs->writes, 1);
    atomic_fetch_add(&fs->bytes_written, size);
    fuse_reply_write(req, size);
}

static void do_flush(fuse_req_t req, struct slot *s, cbf_fs *fs)
{
    int rc = s->readonly ? 0 : fs->core.flush(s->dev);
    if (rc)
        atomic_fetch_add(&fs->errors, 1);
    else
        atomic_fetch_add(&fs->flushes, 1);
    fuse_reply_err(req, to_errno(rc));
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    if ((fi->flags & O_ACCMODE) == O_RDONLY) {
        fuse_reply_err(req, 0);
        return;
    }
    do_flush(req, (struct slot *)(uintptr_t)fi->fh, fuse_req_userdata(req));
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    do_flush(req, (struct slot *)(uintptr_t)fi->fh, fuse_req_userdata(req));
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct slot *s = (struct slot *)(uintptr_t)fi->fh;
    (void)ino;
    int zero = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
    if (!zero || (mode & ~(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
        || ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE))) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    if (s->readonly) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (off < 0 || len <= 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    uint64_t o = (uint64_t)off, n = (uint64_t)len;
    if (o >= s->size) {
        fuse_reply_err(req, 0);        /* past the end: nothing to zero */
        return;
    }
    if (n > s->size - o)
        n = s->size - o;
    int rc = fs->core.discard(s->dev, n, o);
    if (rc)
        atomic_fetch_add(&fs->errors, 1);
    else
        atomic_fetch_add(&fs->discards, 1);
    fuse_reply_err(req, to_errno(rc));
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    cbf_fs *fs = fuse_req_userdata(req);
    struct statvfs sv;
    (void)ino;
    memset(&sv, 0, sizeof sv);
    uint64_t total = 0, files = 0;
    pthread_mutex_lock(&fs->lock);
    for (int i = 0; i < CBF_MAX_FILES; i++)
        if (fs->slots[i].used) {
            total += (fs->slots[i].size + 4095) / 4096;
            files++;
        }
    pthread_mutex_unlock(&fs->lock);
    /* f_bsize is the discard granularity the loop driver takes from us. */
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_blocks = total;
    sv.f_files = files;
    sv.f_namemax = CBF_NAME_MAX;
    fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readdir = op_readdir,
    .open = op_open,
    .release = op_release,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
    .statfs = op_statfs,
};

int cbf_available(void)
{
    return 1;
}

int cbf_create(const char *mountpoint, const cbf_core *core, unsigned max_threads,
               cbf_fs **out)
{
    if (!mountpoint || !core || !core->read || !core->write || !core->discard ||
        !core->flush || !out)
        return -EINVAL;
    cbf_fs *fs = calloc(1, sizeof *fs);
    if (!fs)
        return -ENOMEM;
    fs->core = *core;
    fs->max_threads = max_threads ? max_threads : 8;
    fs->next_ino = ROOT_INO + 1;
    fs->started = time(NULL);
    if (pthread_mutex_init(&fs->lock, NULL)) {
        free(fs);
        return -ENOMEM;
    }
    if (pthread_key_create(&fs->bufkey, free_buf)) {
        pthread_mutex_destroy(&fs->lock);
        free(fs);
        return -ENOMEM;
    }
    char *argv[] = {"cowblock", "-o",
                    "fsname=cowblock,subtype=cowblock,default_permissions,max_read=1048576",
                    NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    fs->se = fuse_session_new(&args, &ops, sizeof ops, fs);
    if (!fs->se) {
        cbf_destroy(fs);
        return -EIO;
    }
    if (fuse_session_mount(fs->se, mountpoint) != 0) {
        fuse_session_destroy(fs->se);
        fs->se = NULL;
        cbf_destroy(fs);
        return -EIO;
    }
    *out = fs;
    return 0;
}

int cbf_run(cbf_fs *fs)
{
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg)
        return -ENOMEM;
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_max_threads(cfg, fs->max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, fs->max_threads);
    int rc = fuse_session_loop_mt(fs->se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return rc < 0 ? rc : 0;
}

void cbf_stop(cbf_fs *fs)
{
    if (fs && fs->se) {
        fuse_session_exit(fs->se);
        fuse_session_unmount(fs->se);  /* wakes the workers: their reads end */
    }
}

void cbf_destroy(cbf_fs *fs)
{
    if (!fs)
        return;
    if (fs->se)
        fuse_session_destroy(fs->se);
    void *buf = pthread_getspecific(fs->bufkey);
    free(buf);
    pthread_key_delete(fs->bufkey);
    pthread_mutex_destroy(&fs->lock);
    free(fs);
}

int cbf_add(cbf_fs *fs, const char *name, void *dev, uint64_t size, int readonly)
{
    if (!fs || !name || !*name || strlen(name) > CBF_NAME_MAX || strchr(name, '/') ||
        !strcmp(name, ".") || !strcmp(name, "..") || !dev)
        return -EINVAL;
    int rc = -ENFILE;
    pthread_mutex_lock(&fs->lock);
    if (by_name(fs, name)) {
        rc = -EEXIST;
    } else {
        for (int i = 0; i < CBF_MAX_FILES; i++) {
            struct slot *s = &fs->slots[i];
            if (s->used)
                continue;
            memset(s, 0, sizeof *s);
            s->used = 1;
            s->ino = fs->next_ino++;
            strcpy(s->name, name);
            s->dev = dev;
            s->size = size;
            s->readonly = readonly != 0;
            s->mtime = time(NULL);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&fs->lock);
    return rc;
}

int cbf_remove(cbf_fs *fs, const char *name)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&fs->lock);
    struct slot *s = by_name(fs, name);
    if (s && s->opens) {
        rc = -EBUSY;
    } else if (s) {
        s->used = 0;
        s->dev = NULL;
        rc = 0;
    }
    pthread_mutex_unlock(&fs->lock);
    if (rc == 0 && fs->se) {
        fuse_lowlevel_notify_inval_entry(fs->se, ROOT_INO, name, strlen(name));
    }
    return rc;
}

int cbf_open_count(cbf_fs *fs, const char *name)
{
    pthread_mutex_lock(&fs->lock);
    struct slot *s = by_name(fs, name);
    int n = s ? s->opens : -ENOENT;
    pthread_mutex_unlock(&fs->lock);
    return n;
}

void cbf_counters_get(cbf_fs *fs, cbf_counters *out)
{
    out->reads = atomic_load(&fs->reads);
    out->writes = atomic_load(&fs->writes);
    out->bytes_read = atomic_load(&fs->bytes_read);
    out->bytes_written = atomic_load(&fs->bytes_written);
    out->discards = atomic_load(&fs->discards);
    out->flushes = atomic_load(&fs->flushes);
    out->errors = atomic_load(&fs->errors);
}

#else /* CBF_NO_FUSE: built without libfuse3; every call says so. */

int cbf_available(void) { return 0; }
int cbf_create(const char *m, const cbf_core *c, unsigned t, cbf_fs **o)
{ (void)m; (void)c; (void)t; (void)o; return -ENOSYS; }
int cbf_run(cbf_fs *fs) { (void)fs; return -ENOSYS; }
void cbf_stop(cbf_fs *fs) { (void)fs; }
void cbf_destroy(cbf_fs *fs) { (void)fs; }
int cbf_add(cbf_fs *fs, const char *n, void *d, uint64_t s, int r)
{ (void)fs; (void)n; (void)d; (void)s; (void)r; return -ENOSYS; }
int cbf_remove(cbf_fs *fs, const char *n) { (void)fs; (void)n; return -ENOSYS; }
int cbf_open_count(cbf_fs *fs, const char *n) { (void)fs; (void)n; return -ENOSYS; }
void cbf_counters_get(cbf_fs *fs, cbf_counters *out) { (void)fs; memset(out, 0, sizeof *out); }

#endif
