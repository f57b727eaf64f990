/*
 * datafile.c - see datafile.h.
 */
#include "datafile.h"

int cb_datafile_write(struct cb_datafile *f, const void *buf, size_t len, uint64_t off)
{
    f->dirty = 1;
    return cb_io_pwrite(f->io, buf, len, off);
}

int cb_datafile_punch(struct cb_datafile *f, uint64_t b, uint64_t n)
{
    f->dirty = 1;
    return cb_io_punch(f->io, b << f->block_shift, n << f->block_shift);
}

void cb_datafile_touch(struct cb_datafile *f)
{
    f->dirty = 1;
}

int cb_datafile_sync(struct cb_datafile *f)
{
    if (!f->dirty)
        return 0;
    int rc = cb_io_sync(f->io);
    if (!rc)
        f->dirty = 0;
    return rc;
}

void cb_datafile_close(struct cb_datafile *f)
{
    if (f->io)
        f->io->ops->close(f->io);
    f->io = NULL;
}
