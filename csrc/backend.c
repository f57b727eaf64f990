/*
 * backend.c - a pool's location to its stores' IO backend (backend.h), and
 * the public calls that name backends rather than pools (cowblock.h).
 */
#include "backend.h"
#include "cowblock.h"
#include "meta.h"
#ifdef CB_HAVE_RADOS
#include "blockio_rados.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cb_backend_is_url(const char *location)
{
    const char *s = strstr(location, "://");
    if (!s || s == location)
        return 0;
    for (const char *c = location; c < s; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '+'))
            return 0;
    return 1;
}

#ifdef CB_HAVE_RADOS
static int is_rados(const char *location)
{
    return strncmp(location, "rados://", 8) == 0;
}
#endif

static int no_backend(const char *location)
{
    size_t n = strcspn(location, ":");
    cb_meta_bad(0, 0, "this build of cowblock has no '%.*s' backend (it has: %s)", (int)n,
                location, cb_backends());
    return CB_EINVAL;
}

int cb_backend_open(const char *location, const char *name, unsigned flags, cb_io *peer,
                    cb_io **out)
{
    if (cb_backend_is_url(location)) {
#ifdef CB_HAVE_RADOS
        if (is_rados(location))
            return cb_rados_open(location, name, flags, peer, out);
#endif
        (void)peer;
        return no_backend(location);
    }
    size_t n = strlen(location) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path)
        return CB_ENOMEM;
    snprintf(path, n, "%s/%s", location, name);
    int rc = cb_file_open(path, flags & ~CB_IO_FENCED, out);
    free(path);
    return rc;
}

int cb_backend_remove(const char *location, const char *name)
{
    if (cb_backend_is_url(location)) {
#ifdef CB_HAVE_RADOS
        if (is_rados(location))
            return cb_rados_remove(location, name);
#endif
        return no_backend(location);
    }
    size_t n = strlen(location) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path)
        return CB_ENOMEM;
    snprintf(path, n, "%s/%s", location, name);
    int rc = unlink(path) == 0 || errno == ENOENT ? 0 : -errno;
    free(path);
    return rc;
}

const char *cb_backends(void)
{
#ifdef CB_HAVE_RADOS
    return "file rados";
#else
    return "file";
#endif
}

int cb_pool_unlock(const char *location, char *holder, size_t len)
{
    if (!location || !holder || !len)
        return CB_EINVAL;
    holder[0] = 0;
    if (!cb_backend_is_url(location)) {
        cb_meta_bad(0, 0, "a pool in a directory is locked with flock, which its holder's "
                    "exit releases: there is no lock to break");
        return CB_EINVAL;
    }
#ifdef CB_HAVE_RADOS
    if (is_rados(location))
        return cb_rados_break_lock(location, holder, len);
#endif
    return no_backend(location);
}
