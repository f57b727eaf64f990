/*
 * blockio.c - the plain-file IO backend.
 *
 * Loops over short transfers and EINTR; maps ENOSPC/EDQUOT to CB_ENOSPC;
 * zero-fills reads past the end of the file.  With CB_IO_DIRECT the file is
 * opened O_DIRECT and requests that are not aligned to DIO_ALIGN (in buffer
 * address, offset or length) go through an aligned bounce buffer, with a
 * read-modify-write for unaligned writes.
 *
 * With CB_IO_MMAP (see blockio.h for the contract and its dangers) the file
 * is also mapped read-only and shared, and preads inside the mapping are
 * memcpys from it: no system call per read.  State of the mapping:
 *   map == NULL            no mapping (not asked, direct, empty file, block
 *                          device, or mmap failed): every read is a pread;
 *   map over [0, map_len)  the file is at least map_len bytes long.
 * Only truncate changes it (unmap, resize, map again), so readers need no
 * lock: the pool truncates only while it creates the file.
 */
#include "blockio.h"
#include "cowblock.h"
#ifdef CB_TESTING
#include "testio.h" /* test builds only: wraps pool files (tests/testbuild.py) */
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIO_ALIGN 4096u

struct file_io {
    struct cb_io io;
    int fd;
    int direct;
    int want_map;         /* CB_IO_MMAP asked, and not direct */
    const char *map;      /* PROT_READ, MAP_SHARED view of [0, map_len), or NULL */
    uint64_t map_len;
};

static int os_err(int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return CB_ENOSPC;
    return e > 0 ? -e : -EIO;
}

static int raw_pread(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return os_err(errno);
        }
        if (n == 0) { /* past the end: reads as zeros */
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int raw_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return os_err(errno);
        }
        if (n == 0)
            return CB_ENOSPC;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Map the file over its current size.  Not being able to is no error:
 * reads then take the pread path. */
static void map_file(struct file_io *f)
{
    struct stat st;
    if (!f->want_map || fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size <= 0 || (uint64_t)st.st_size > SIZE_MAX)
        return;
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, f->fd, 0);
    if (m == MAP_FAILED)
        return;
    f->map = m;
    f->map_len = (uint64_t)st.st_size;
}

static void unmap_file(struct file_io *f)
{
    if (f->map)
        munmap((void *)f->map, (size_t)f->map_len);
    f->map = NULL;
    f->map_len = 0;
}

static int aligned(const void *buf, size_t len, uint64_t off)
{
    return ((uintptr_t)buf % DIO_ALIGN) == 0 && len % DIO_ALIGN == 0 &&
           off % DIO_ALIGN == 0;
}

static int f_pread(cb_io *io, void *buf, size_t len, uint64_t off)
{
    struct file_io *f = (struct file_io *)io;
    if (f->map && off <= f->map_len && len <= f->map_len - off) {
        memcpy(buf, f->map + off, len); /* SIGBUS on a media error: see blockio.h */
        return 0;
    }
    if (!f->direct || aligned(buf, len, off))
        return raw_pread(f->fd, buf, len, off);
    uint64_t start = off - off % DIO_ALIGN;
    uint64_t end = (off + len + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN;
    void *b;
    if (posix_memalign(&b, DIO_ALIGN, end - start))
        return CB_ENOMEM;
    int rc = raw_pread(f->fd, b, end - start, start);
    if (rc == 0)
        memcpy(buf, (char *)b + (off - start), len);
    free(b);
    return rc;
}

static int f_pwrite(cb_io *io, const void *buf, size_t len, uint64_t off)
{
    struct file_io *f = (struct file_io *)io;
    if (!f->direct || aligned(buf, len, off))
        return raw_pwrite(f->fd, buf, len, off);
    uint64_t start = off - off % DIO_ALIGN;
    uint64_t end = (off + len + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN;
    void *b;
    if (posix_memalign(&b, DIO_ALIGN, end - start))
        return CB_ENOMEM;
    int rc = 0;
    if (start != off || end != off + len)
        rc = raw_pread(f->fd, b, end - start, start);
    if (rc == 0) {
        memcpy((char *)b + (off - start), buf, len);
        rc = raw_pwrite(f->fd, b, end - start, start);
    }
    free(b);
    return rc;
}

static int f_sync(cb_io *io)
{
    struct file_io *f = (struct file_io *)io;
    while (fdatasync(f->fd) != 0) {
        if (errno != EINTR)
            return os_err(errno);
    }
    return 0;
}

static int f_punch(cb_io *io, uint64_t off, uint64_t len)
{
    struct file_io *f = (struct file_io *)io;
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) != 0) {
        /* A file system without hole punching still works: the space
         * stays allocated and the block is reused later. */
        if (errno == EOPNOTSUPP || errno == ENOSYS)
            return 0;
        return os_err(errno);
    }
    return 0;
}

static int f_size(cb_io *io, uint64_t *out)
{
    struct file_io *f = (struct file_io *)io;
    struct stat st;
    if (fstat(f->fd, &st) != 0)
        return os_err(errno);
    *out = (uint64_t)st.st_size;
    return 0;
}

static int f_truncate(cb_io *io, uint64_t size)
{
    struct file_io *f = (struct file_io *)io;
    unmap_file(f); /* never a mapping past the end of the file */
    int rc = 0;
    while (ftruncate(f->fd, (off_t)size) != 0) {
        if (errno != EINTR) {
            rc = os_err(errno);
            break;
        }
    }
    map_file(f);
    return rc;
}

static int f_next_data(cb_io *io, uint64_t off, uint64_t *out, uint64_t *hole)
{
    struct file_io *f = (struct file_io *)io;
    off_t d = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        if (errno == ENXIO) {
            *out = UINT64_MAX;
            *hole = UINT64_MAX;
            return 0;
        }
        if (errno == EINVAL || errno == EOPNOTSUPP) { /* no SEEK_DATA here */
            uint64_t size;
            int rc = f_size(io, &size);
            if (rc)
                return rc;
            *out = off < size ? off : UINT64_MAX;
            *hole = size;
            return 0;
        }
        return os_err(errno);
    }
    off_t h = lseek(f->fd, d, SEEK_HOLE);
    if (h < 0)
        return os_err(errno);
    *out = (uint64_t)d;
    *hole = (uint64_t)h;
    return 0;
}

static void f_close(cb_io *io)
{
    struct file_io *f = (struct file_io *)io;
    unmap_file(f);
    close(f->fd);
    free(f);
}

static const struct cb_io_ops file_ops = {
    f_pread, f_pwrite, f_sync, f_punch, f_size, f_truncate, f_next_data, f_close,
    NULL, /* lock: the pool flocks the descriptor */
    NULL, NULL, NULL, /* reader table: the flock keeps readers and a writer apart */
    NULL, NULL, NULL, /* documents: the binding keeps them as files beside the pool */
    NULL, /* preadv: one pread per piece (the page cache serves them) */
};

int cb_file_open(const char *path, unsigned flags, cb_io **out)
{
    int oflags = O_CLOEXEC;
    oflags |= (flags & CB_IO_READONLY) ? O_RDONLY : O_RDWR;
    if (flags & CB_IO_CREATE)
        oflags |= O_CREAT | O_EXCL;
    if (flags & CB_IO_DIRECT)
        oflags |= O_DIRECT;
    /* O_NONBLOCK so that a FIFO planted where a pool file should be cannot
     * block the open; anything but a regular file or block device is
     * refused, then the descriptor goes back to blocking mode. */
    int fd = open(path, oflags | O_NONBLOCK, 0644);
    if (fd < 0)
        return os_err(errno);
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        close(fd);
        return CB_ECORRUPT;
    }
    struct file_io *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return CB_ENOMEM;
    }
    f->io.ops = &file_ops;
    f->fd = fd;
    f->direct = (flags & CB_IO_DIRECT) != 0;
    f->want_map = (flags & CB_IO_MMAP) && !f->direct;
    map_file(f);
    *out = &f->io;
#ifdef CB_TESTING
    return cb_testio_wrap(path, out);
#endif
    return 0;
}

int cb_file_fd(cb_io *io)
{
#ifdef CB_TESTING
    io = cb_testio_inner(io);
#endif
    return io->ops == &file_ops ? ((struct file_io *)io)->fd : -1;
}
