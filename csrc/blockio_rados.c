/*
 * blockio_rados.c - the RADOS IO backend (layout, fencing and threading in
 * blockio_rados.h).
 *
 * State of one open store:
 *   inflight ops     aio writes, zeroes and removes queued, not completed;
 *                    each holds a struct rop until its callback has run
 *   err              first error an op in flight reported; returned (and
 *                    kept) by every later sync: like fdatasync after lost
 *                    writeback, nothing written since can be trusted
 *   lost             CB_EFENCED once fenced: every later write refuses
 *   size             bytes the store spans as this opener sees it;
 *   size_saved       what cb.size on the head says (sync brings it up)
 *   seq              cb.seq as this opener last wrote or read it (fenced
 *                    stores; read again when the lock is taken)
 * Invariant: a head change of a fenced store is one op asserting seq.
 */
#ifdef CB_HAVE_RADOS
#include "blockio_rados.h"
#include "cowblock.h"
#include "meta.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

#define RIO_MAX_OPS 64
#define RIO_MAX_BYTES (64u << 20)
#define RIO_READ_CHUNK (1u << 20) /* largest read op: a large read is many in flight */
#define RIO_MAX_READS 32          /* read ops one pread keeps in flight */
#define RIO_DEFAULT_OSIZE (4u << 20)
#define RIO_MIN_OSIZE (64u << 10)
#define RIO_MAX_OSIZE (32u << 20)
#define RIO_NAME_MAX 96
#define RIO_LOCK "cowblock"
#define RIO_READERS "cowblock.readers"
#define RIO_READER_TAG "cowblock"
#define RIO_READER_LEASE 30u  /* a reader's lease when the writer's is 0 (none) */
#define LOST(r) __atomic_load_n(&(r)->lost, __ATOMIC_ACQUIRE)

/* ---- the location ---------------------------------------------------------- */

struct rurl {
    char pool[256];
    char name[RIO_NAME_MAX + 1];
    char conf[4096];      /* "" = librados' default search */
    char id[128];
    uint64_t osize;
    unsigned timeout;
    unsigned lease;       /* seconds the writer's lock lasts unrenewed; 0: for ever */
};

static int bad_url(const char *url, const char *why)
{
    cb_meta_bad(0, 0, "bad RADOS location '%.200s': %s", url, why);
    return CB_EINVAL;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static int copy_part(char *dst, size_t cap, const char *s, size_t n)
{
    if (n == 0 || n >= cap)
        return -1;
    memcpy(dst, s, n);
    dst[n] = 0;
    return 0;
}

static int parse_url(const char *url, struct rurl *u)
{
    memset(u, 0, sizeof *u);
    u->osize = RIO_DEFAULT_OSIZE;
    u->timeout = 30;
    u->lease = 30;
    snprintf(u->id, sizeof u->id, "admin");
    if (strncmp(url, "rados://", 8))
        return bad_url(url, "it does not start with rados://");
    const char *s = url + 8, *slash = strchr(s, '/');
    if (!slash || slash == s)
        return bad_url(url, "no RADOS pool named (rados://POOL/NAME)");
    if (copy_part(u->pool, sizeof u->pool, s, (size_t)(slash - s)))
        return bad_url(url, "the RADOS pool name is too long");
    s = slash + 1;
    size_t n = strcspn(s, "?");
    if (n == 0 || n > RIO_NAME_MAX)
        return bad_url(url, "the pool NAME must be 1 to 96 characters");
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return bad_url(url, "the pool NAME may hold only letters, digits, '.', '_' and '-'");
    }
    memcpy(u->name, s, n);
    s += n;
    if (*s == '?')
        s++;
    while (*s) {
        size_t len = strcspn(s, "&"), klen = strcspn(s, "=");
        if (klen >= len)
            return bad_url(url, "a query part is not KEY=VALUE");
        const char *v = s + klen + 1;
        size_t vlen = len - klen - 1;
        uint64_t x;
        if (klen == 4 && !memcmp(s, "conf", 4)) {
            if (copy_part(u->conf, sizeof u->conf, v, vlen))
                return bad_url(url, "conf= needs a path");
        } else if (klen == 2 && !memcmp(s, "id", 2)) {
            if (copy_part(u->id, sizeof u->id, v, vlen))
                return bad_url(url, "id= needs a client id");
        } else if (klen == 11 && !memcmp(s, "object_size", 11)) {
            if (parse_u64(v, vlen, &x) || x < RIO_MIN_OSIZE || x > RIO_MAX_OSIZE ||
                (x & (x - 1)))
                return bad_url(url, "object_size= must be a power of two from 65536 to "
                               "33554432 bytes");
            u->osize = x;
        } else if (klen == 7 && !memcmp(s, "timeout", 7)) {
            if (parse_u64(v, vlen, &x) || x < 1 || x > 3600)
                return bad_url(url, "timeout= must be 1 to 3600 seconds");
            u->timeout = (unsigned)x;
        } else if (klen == 5 && !memcmp(s, "lease", 5)) {
            if (parse_u64(v, vlen, &x) || x > 3600 || x == 1)
                return bad_url(url, "lease= must be 0 (none) or 2 to 3600 seconds");
            u->lease = (unsigned)x;
        } else {
            return bad_url(url, "unknown query key (known: conf, id, object_size, timeout, "
                           "lease)");
        }
        s += len;
        if (*s == '&')
            s++;
    }
    return 0;
}

/* ---- clients: one per open pool, shared by its two stores ------------------ */

struct rclient {
    pid_t pid;            /* the process that connected it */
    unsigned refs;        /* stores using it (atomic) */
    rados_t cl;
};

static int connect_client(const struct rurl *u, rados_t *out)
{
    rados_t cl;
    int rc = rados_create(&cl, u->id);
    if (rc < 0)
        return rc;
    char t[16];
    snprintf(t, sizeof t, "%u", u->timeout);
    rc = rados_conf_read_file(cl, u->conf[0] ? u->conf : NULL);
    if (rc < 0 && !u->conf[0])
        rc = 0; /* no default file: $CEPH_CONF or the environment may do */
    if (rc >= 0)
        rc = rados_conf_parse_env(cl, NULL);
    if (rc >= 0)
        rc = rados_conf_set(cl, "rados_osd_op_timeout", t);
    if (rc >= 0)
        rc = rados_conf_set(cl, "rados_mon_op_timeout", t);
    if (rc >= 0)
        rc = rados_conf_set(cl, "client_mount_timeout", t);
    if (rc >= 0)
        rc = rados_connect(cl);
    if (rc < 0) {
        rados_shutdown(cl);
        return rc;
    }
    *out = cl;
    return 0;
}

static int client_new(const struct rurl *u, struct rclient **out)
{
    struct rclient *c = calloc(1, sizeof *c);
    if (!c)
        return CB_ENOMEM;
    int rc = connect_client(u, &c->cl);
    if (rc) {
        free(c);
        return rc;
    }
    c->pid = getpid();
    c->refs = 1;
    *out = c;
    return 0;
}

static void client_put(struct rclient *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    /* a client inherited through fork is never touched (it would hang) */
    if (c->pid == getpid())
        rados_shutdown(c->cl);
    free(c);
}

/* ---- one open store --------------------------------------------------------- */

struct rio;

struct rop {                /* one aio op in flight */
    struct rio *r;
    rados_completion_t comp;
    rados_write_op_t wop;   /* for zeroes, or NULL */
    size_t bytes;
    int enoent_ok;          /* removing or zeroing what is not there is fine */
    struct rop *next;       /* on r->done once complete */
};

struct rio {
    struct cb_io io;
    struct rclient *c;
    rados_ioctx_t ctx;
    int have_ctx;
    char head[RIO_NAME_MAX + 16];
    unsigned flags;
    uint64_t osize;
    unsigned oshift;
    uint64_t head_bytes;   /* store bytes kept in the head object (meta: superblocks) */
    uint64_t size, size_saved;
    uint64_t seq;
    int fenced;            /* CB_IO_FENCED */
    int locked;
    char cookie[160];
    unsigned lease;        /* seconds (0: the lock lasts until unlocked) */
    pthread_t renewer;     /* renews the lock every lease / 3 s while locked */
    int renewing;          /* renewer was started */
    int stop;              /* tells renewer to end (under lease_mu) */
    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cv;
    /* The reader table (read-only openers of the meta store): a shared
     * lock RIO_READERS on the head whose cookie names the pinned
     * generation.  pin_until is when the lease may lapse, by this host's
     * monotonic clock (ns); pin_lost is sticky until the next pin.  All
     * three under lease_mu. */
    int pinned;
    char pin_cookie[160];
    uint64_t pin_until;
    int pin_lost;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned inflight;
    size_t inflight_bytes;
    int err;
    int lost;
    struct rop *done;      /* completed ops, freed by the next caller */

    /* A read-only opener of a fenced (meta) store reads each object whole,
     * once, and serves every later read from that copy: one RADOS read of
     * an object is atomic with respect to the writer's writes to it, so the
     * pages a reader loads come from one moment of each object, not from
     * page reads spread over the writer's next commits.  Freed at close.
     * The writer does the same from taking the lock until its first write,
     * punch or truncate (which frees the copies and stops it: `wrote`), so
     * that loading the metadata at open is a read per object, not one
     * round trip per page; nothing else writes the store meanwhile.
     * Under mu: cache, ncache, wrote. */
    char **cache;          /* by object index, NULL if not read yet */
    uint64_t ncache;
    int wrote;

    char *scan;            /* next_data's copy of object scan_idx (osize bytes) */
    uint64_t scan_idx, scan_len;
    char zeros[4096];
};

static int map_err(int rc)
{
    if (rc == -ESHUTDOWN)  /* blocklisted: another writer took the pool */
        return CB_EFENCED;
    if (rc == -ENOSPC || rc == -EDQUOT)
        return CB_ENOSPC;
    return rc;
}

static void oid_of(const struct rio *r, uint64_t idx, char *buf, size_t len)
{
    snprintf(buf, len, "%s.%016llx", r->head, (unsigned long long)idx);
}

static void free_done(struct rop *d)
{
    while (d) {
        struct rop *n = d->next;
        rados_aio_release(d->comp);
        if (d->wop)
            rados_release_write_op(d->wop);
        free(d);
        d = n;
    }
}

/* Take the completed ops off r's list (mu held); free them unlocked. */
static struct rop *take_done(struct rio *r)
{
    struct rop *d = r->done;
    r->done = NULL;
    return d;
}

static void op_complete(rados_completion_t comp, void *arg)
{
    struct rop *o = arg;
    struct rio *r = o->r;
    int rv = rados_aio_get_return_value(comp);
    pthread_mutex_lock(&r->mu);
    if (rv < 0 && !(rv == -ENOENT && o->enoent_ok) && !r->err)
        r->err = map_err(rv);
    r->inflight--;
    r->inflight_bytes -= o->bytes;
    o->next = r->done;
    r->done = o;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Wait for room for one more op of `bytes`; a new op, or NULL (ENOMEM). */
static struct rop *op_begin(struct rio *r, size_t bytes)
{
    pthread_mutex_lock(&r->mu);
    while (r->inflight >= RIO_MAX_OPS ||
           (r->inflight && r->inflight_bytes + bytes > RIO_MAX_BYTES))
        pthread_cond_wait(&r->cv, &r->mu);
    struct rop *d = take_done(r);
    pthread_mutex_unlock(&r->mu);
    free_done(d);
    struct rop *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->r = r;
    o->bytes = bytes;
    if (rados_aio_create_completion2(o, op_complete, &o->comp) < 0) {
        free(o);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    r->inflight++;
    r->inflight_bytes += bytes;
    pthread_mutex_unlock(&r->mu);
    return o;
}

/* The op could not be queued: it never completes. */
static void op_abandon(struct rop *o)
{
    struct rio *r = o->r;
    pthread_mutex_lock(&r->mu);
    r->inflight--;
    r->inflight_bytes -= o->bytes;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    o->next = NULL;
    free_done(o);
}

/* Wait until nothing is in flight; the first error any op reported. */
static int drain(struct rio *r)
{
    pthread_mutex_lock(&r->mu);
    while (r->inflight)
        pthread_cond_wait(&r->cv, &r->mu);
    struct rop *d = take_done(r);
    int rc = r->err;
    pthread_mutex_unlock(&r->mu);
    free_done(d);
    return rc;
}

static int get_xattr_u64(struct rio *r, const char *name, uint64_t *out)
{
    char buf[32];
    int n = rados_getxattr(r->ctx, r->head, name, buf, sizeof buf - 1);
    if (n == -ENODATA) {
        cb_meta_bad(0, 0, "RADOS object '%s' has no %s attribute", r->head, name);
        return CB_ECORRUPT;
    }
    if (n < 0)
        return map_err(n);
    if (parse_u64(buf, (size_t)n, out)) {
        cb_meta_bad(0, 0, "RADOS object '%s' has a malformed %s attribute", r->head, name);
        return CB_ECORRUPT;
    }
    return 0;
}

/* The result of an op on the head that asserted cb.seq (when `fenced`):
 * a failed assertion, or a blocklisted client, means another writer took
 * the store over, and the store refuses every later write (sticky). */
static int fenced_result(struct rio *r, int rc, int fenced)
{
    if (rc == -ECANCELED || (rc == -ENODATA && fenced))
        rc = CB_EFENCED; /* someone else changed the head since this opener last did */
    else if (rc < 0)
        rc = map_err(rc);
    if (rc == CB_EFENCED)
        __atomic_store_n(&r->lost, rc, __ATOMIC_RELEASE);
    return rc < 0 ? rc : 0;
}

/* One op on the head: assert the fence (fenced stores), bump it, set the
 * size, write [off, off + n) of buf.  Synchronous: a commit needs its result. */
static int head_op(struct rio *r, const void *buf, size_t n, uint64_t off, int create)
{
    if (LOST(r))
        return LOST(r);
    char cur[24], next[24], size[24];
    rados_write_op_t op = rados_create_write_op();
    if (!op)
        return CB_ENOMEM;
    if (create) {
        char v[24];
        rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
        snprintf(v, sizeof v, "%llu", (unsigned long long)r->osize);
        rados_write_op_setxattr(op, "cb.osize", v, strlen(v));
        snprintf(v, sizeof v, "%llu", (unsigned long long)r->head_bytes);
        rados_write_op_setxattr(op, "cb.head", v, strlen(v));
    } else if (r->fenced) {
        snprintf(cur, sizeof cur, "%llu", (unsigned long long)r->seq);
        rados_write_op_cmpxattr(op, "cb.seq", LIBRADOS_CMPXATTR_OP_EQ, cur, strlen(cur));
    } else {
        rados_write_op_assert_exists(op);
    }
    uint64_t nseq = create ? 0 : r->seq + 1;
    snprintf(next, sizeof next, "%llu", (unsigned long long)nseq);
    rados_write_op_setxattr(op, "cb.seq", next, strlen(next));
    snprintf(size, sizeof size, "%llu", (unsigned long long)r->size);
    rados_write_op_setxattr(op, "cb.size", size, strlen(size));
    if (buf && n)
        rados_write_op_write(op, buf, n, off);
    int rc = fenced_result(r, rados_write_op_operate(op, r->ctx, r->head, NULL, 0),
                           r->fenced);
    rados_release_write_op(op);
    if (rc)
        return rc;
    r->seq = nseq;
    r->size_saved = r->size;
    return 0;
}

/* Whether reads of the store's objects go through `cache` (see there). */
static int caching(struct rio *r)
{
    if (!r->fenced)
        return 0;
    if (r->flags & CB_IO_READONLY)
        return 1;
    pthread_mutex_lock(&r->mu);
    int on = r->locked && !r->wrote;
    pthread_mutex_unlock(&r->mu);
    return on;
}

/* The writer's first change of the store: no more copies. */
static void stop_caching(struct rio *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->wrote) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    r->wrote = 1;
    char **c = r->cache;
    uint64_t n = r->ncache;
    r->cache = NULL;
    r->ncache = 0;
    pthread_mutex_unlock(&r->mu);
    for (uint64_t i = 0; i < n; i++)
        free(c[i]);
    free(c);
}

/* Bytes [in, in + n) of object idx into dst from its copy, reading the
 * object whole on first use.  The copy is made under mu, so a writer's
 * stop_caching never frees a copy being read; a copy read while the
 * writer started writing is used once and not kept. */
static int cached_read(struct rio *r, uint64_t idx, char *dst, uint64_t in, size_t n)
{
    pthread_mutex_lock(&r->mu);
    if (idx < r->ncache && r->cache[idx]) {
        memcpy(dst, r->cache[idx] + in, n);
        pthread_mutex_unlock(&r->mu);
        return 0;
    }
    pthread_mutex_unlock(&r->mu);
    char *obj = malloc(r->osize), oid[sizeof r->head + 20];
    if (!obj)
        return CB_ENOMEM;
    oid_of(r, idx, oid, sizeof oid);
    int got = rados_read(r->ctx, oid, obj, (size_t)r->osize, 0);
    if (got == -ENOENT)
        got = 0;
    if (got < 0) {
        free(obj);
        return map_err(got);
    }
    memset(obj + got, 0, (size_t)(r->osize - (uint64_t)got));
    pthread_mutex_lock(&r->mu);
    if (!r->wrote && idx >= r->ncache) {
        uint64_t m = idx + 1 > 2 * r->ncache ? idx + 1 : 2 * r->ncache;
        char **c = realloc(r->cache, m * sizeof *c);
        if (c) {
            memset(c + r->ncache, 0, (m - r->ncache) * sizeof *c);
            r->cache = c;
            r->ncache = m;
        }
    }
    if (r->wrote || idx >= r->ncache) {   /* not kept (or no room to keep it) */
        memcpy(dst, obj + in, n);
        pthread_mutex_unlock(&r->mu);
        free(obj);
        return 0;
    }
    if (r->cache[idx])                     /* another thread read it meanwhile: keep the first */
        free(obj);
    else
        r->cache[idx] = obj;
    memcpy(dst, r->cache[idx] + in, n);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* One aio read of a call to r_preadv. */
struct rread {
    rados_completion_t comp;
    char *dst;
    size_t len;
};

/* Wait for read q and release it; what the object did not hold (past its
 * end, or no object at all) reads as zeros. */
static int read_end(struct rread *q)
{
    rados_aio_wait_for_complete(q->comp);
    int got = rados_aio_get_return_value(q->comp);
    rados_aio_release(q->comp);
    if (got == -ENOENT)
        got = 0;
    if (got < 0)
        return map_err(got);
    if ((size_t)got < q->len)
        memset(q->dst + got, 0, q->len - (size_t)got);
    return 0;
}

/* A synchronous read of [in, in + n) of object `name`, zero-filled. */
static int read_sync(struct rio *r, const char *name, char *p, size_t n, uint64_t in)
{
    int got = rados_read(r->ctx, name, p, n, in);
    if (got == -ENOENT)
        got = 0;
    if (got < 0)
        return map_err(got);
    if ((size_t)got < n)
        memset(p + got, 0, n - (size_t)got);
    return 0;
}

/* Every piece is cut at object ends (and into ops of at most
 * RIO_READ_CHUNK) and read with aio, up to RIO_MAX_READS at once, the
 * oldest waited for first when that many are out; the call returns only
 * once every op it queued has completed, so a read that spans objects is
 * whole before the caller sees it.  Each op sees every write queued before
 * it (RADOS orders one client's ops on one object).  All state is the
 * call's own: preads run concurrently from many threads.  The head (the
 * meta store's superblocks) and a read-only meta store's object copies
 * are read synchronously, as before. */
static int r_preadv(cb_io *io, const struct cb_io_vec *v, size_t nv)
{
    struct rio *r = (struct rio *)io;
    int cache = caching(r);
    struct rread q[RIO_MAX_READS];
    size_t first = 0, queued = 0;
    int err = 0;
    for (size_t i = 0; i < nv && !err; i++) {
        char *p = v[i].buf;
        size_t len = v[i].len;
        uint64_t off = v[i].off;
        while (len && !err) {
            char oid[sizeof r->head + 20];
            uint64_t in, n;
            if (off < r->head_bytes) {
                n = r->head_bytes - off < len ? r->head_bytes - off : len;
                err = read_sync(r, r->head, p, (size_t)n, off);
            } else if (cache) {
                in = off & (r->osize - 1);
                n = r->osize - in < len ? r->osize - in : len;
                err = cached_read(r, off >> r->oshift, p, in, (size_t)n);
            } else {
                in = off & (r->osize - 1);
                n = r->osize - in < len ? r->osize - in : len;
                if (n > RIO_READ_CHUNK)
                    n = RIO_READ_CHUNK;
                if (queued == RIO_MAX_READS) {
                    err = read_end(&q[first]);
                    first = (first + 1) % RIO_MAX_READS;
                    queued--;
                    if (err)
                        break;
                }
                struct rread *x = &q[(first + queued) % RIO_MAX_READS];
                x->dst = p;
                x->len = (size_t)n;
                int rc = rados_aio_create_completion2(NULL, NULL, &x->comp);
                if (rc < 0) {
                    err = map_err(rc);
                    break;
                }
                oid_of(r, off >> r->oshift, oid, sizeof oid);
                rc = rados_aio_read(r->ctx, oid, x->comp, p, (size_t)n, in);
                if (rc < 0) {
                    rados_aio_release(x->comp);
                    err = map_err(rc);
                    break;
                }
                queued++;
            }
            p += n;
            off += n;
            len -= (size_t)n;
        }
    }
    for (; queued; queued--, first = (first + 1) % RIO_MAX_READS) {
        int rc = read_end(&q[first]);
        if (!err)
            err = rc;
    }
    return err;
}

static int r_pread(cb_io *io, void *buf, size_t len, uint64_t off)
{
    struct cb_io_vec v = {buf, len, off};
    return r_preadv(io, &v, 1);
}

static int r_pwrite(cb_io *io, const void *buf, size_t len, uint64_t off)
{
    struct rio *r = (struct rio *)io;
    if (r->flags & CB_IO_READONLY)
        return -EBADF;
    if (LOST(r))
        return LOST(r);
    stop_caching(r);
    const char *p = buf;
    r->scan_idx = UINT64_MAX;
    if (off + len > r->size)
        r->size = off + len;
    while (len) {
        uint64_t n;
        if (off < r->head_bytes) {
            /* the superblock region: a guarded, synchronous op after
             * everything queued before it */
            n = r->head_bytes - off < len ? r->head_bytes - off : len;
            int rc = drain(r);
            if (!rc)
                rc = head_op(r, p, (size_t)n, off, 0);
            if (rc)
                return rc;
        } else {
            uint64_t in = off & (r->osize - 1);
            n = r->osize - in < len ? r->osize - in : len;
            char oid[sizeof r->head + 20];
            oid_of(r, off >> r->oshift, oid, sizeof oid);
            struct rop *o = op_begin(r, (size_t)n);
            if (!o)
                return CB_ENOMEM;
            int rc = rados_aio_write(r->ctx, oid, o->comp, p, (size_t)n, in);
            if (rc < 0) {
                op_abandon(o);
                return map_err(rc);
            }
        }
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return 0;
}

static int r_sync(cb_io *io)
{
    struct rio *r = (struct rio *)io;
    if (r->flags & CB_IO_READONLY)
        return 0;
    int rc = drain(r);
    if (!rc && LOST(r))
        rc = LOST(r);
    if (!rc && r->size != r->size_saved)
        rc = head_op(r, NULL, 0, 0, 0);
    return rc;
}

/* Remove object idx, or zero [in, in + n) of it; queued like a write. */
static int queue_punch(struct rio *r, uint64_t idx, uint64_t in, uint64_t n)
{
    char oid[sizeof r->head + 20];
    oid_of(r, idx, oid, sizeof oid);
    struct rop *o = op_begin(r, 0);
    if (!o)
        return CB_ENOMEM;
    o->enoent_ok = 1;
    int rc;
    if (in == 0 && n == r->osize) {
        rc = rados_aio_remove(r->ctx, oid, o->comp);
    } else {
        o->wop = rados_create_write_op();
        if (!o->wop) {
            op_abandon(o);
            return CB_ENOMEM;
        }
        rados_write_op_assert_exists(o->wop);
        rados_write_op_zero(o->wop, in, n);
        rc = rados_aio_write_op_operate(o->wop, r->ctx, o->comp, oid, NULL, 0);
    }
    if (rc < 0) {
        op_abandon(o);
        return map_err(rc);
    }
    return 0;
}

static int r_punch(cb_io *io, uint64_t off, uint64_t len)
{
    struct rio *r = (struct rio *)io;
    if (r->flags & CB_IO_READONLY)
        return -EBADF;
    r->scan_idx = UINT64_MAX;
    if (LOST(r))
        return LOST(r);
    stop_caching(r);
    if (off < r->head_bytes) { /* never done by the pool; zeros, guarded */
        uint64_t n = r->head_bytes - off < len ? r->head_bytes - off : len;
        char *z = calloc(1, (size_t)n);
        if (!z)
            return CB_ENOMEM;
        int rc = drain(r);
        if (!rc)
            rc = head_op(r, z, (size_t)n, off, 0);
        free(z);
        if (rc)
            return rc;
        off += n;
        len -= n;
    }
    while (len) {
        uint64_t in = off & (r->osize - 1);
        uint64_t n = r->osize - in < len ? r->osize - in : len;
        int rc = queue_punch(r, off >> r->oshift, in, n);
        if (rc)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

static int r_size(cb_io *io, uint64_t *out)
{
    struct rio *r = (struct rio *)io;
    /* a reader of the meta store sees it grow as the writer commits (the
     * writer persists a new size before the superblock that needs it) */
    if ((r->flags & CB_IO_READONLY) && r->fenced) {
        int rc = get_xattr_u64(r, "cb.size", &r->size);
        if (rc)
            return rc;
    }
    *out = r->size;
    return 0;
}

static int r_truncate(cb_io *io, uint64_t size)
{
    struct rio *r = (struct rio *)io;
    if (r->flags & CB_IO_READONLY)
        return -EBADF;
    stop_caching(r);
    int rc = 0;
    if (size < r->size && r->size > r->head_bytes) {
        uint64_t from = size > r->head_bytes ? size : r->head_bytes;
        rc = r_punch(io, from, r->size - from);
    }
    if (!rc)
        rc = drain(r);
    if (!rc) {
        r->size = size;
        rc = head_op(r, NULL, 0, 0, 0);
    }
    return rc;
}

/* Data is where an object holds a non-zero granule: RADOS' C API shows no
 * extents inside an object, and zeros read the same as a hole, so absent
 * objects are skipped and present ones read and scanned.  The last object
 * read is kept (scan_idx) for the caller's next call, which starts past
 * the run just returned; any write or punch forgets it.  Runs never cross
 * an object's end.  Callers hold the pool lock exclusively (check). */
#define RIO_GRANULE 4096u
static int r_next_data(cb_io *io, uint64_t off, uint64_t *out, uint64_t *hole)
{
    struct rio *r = (struct rio *)io;
    uint64_t end = r->size;
    *out = *hole = UINT64_MAX;
    if (off < r->head_bytes) {
        *out = off;
        *hole = r->head_bytes < end ? r->head_bytes : end;
        return off < end ? 0 : (*out = *hole = UINT64_MAX, 0);
    }
    if (!r->scan && !(r->scan = malloc(r->osize)))
        return CB_ENOMEM;
    for (uint64_t idx = off >> r->oshift; off < end; idx++, off = idx << r->oshift) {
        if (r->scan_idx != idx) {
            char oid[sizeof r->head + 20];
            oid_of(r, idx, oid, sizeof oid);
            int got = rados_read(r->ctx, oid, r->scan, (size_t)r->osize, 0);
            if (got == -ENOENT)
                got = 0;
            if (got < 0)
                return map_err(got);
            memset(r->scan + got, 0, (size_t)(r->osize - (uint64_t)got));
            r->scan_len = (uint64_t)got;
            r->scan_idx = idx;
        }
        uint64_t base = idx << r->oshift, in = off - base;
        uint64_t lim = r->scan_len;
        if (base + lim > end)
            lim = end - base;
        for (uint64_t g = in / RIO_GRANULE * RIO_GRANULE; g < lim; g += RIO_GRANULE) {
            uint64_t n = lim - g < RIO_GRANULE ? lim - g : RIO_GRANULE;
            if (memcmp(r->scan + g, r->zeros, (size_t)n) == 0)
                continue;
            uint64_t h = g + n;
            while (h < lim) {
                uint64_t m = lim - h < RIO_GRANULE ? lim - h : RIO_GRANULE;
                if (memcmp(r->scan + h, r->zeros, (size_t)m) == 0)
                    break;
                h += m;
            }
            *out = base + (g > in ? g : in);
            *hole = base + h;
            return 0;
        }
    }
    return 0;
}

/* The OSD could not decode a lock's record (the xattr lock.NAME on the head
 * is damaged): say how to clear it rather than give a bare EIO. */
static int bad_lock_record(const char *pool, const char *oid, const char *lock)
{
    cb_meta_bad(0, 0, "the record of lock '%s' on RADOS object '%s' is damaged (the OSD "
                "cannot decode it); if no writer is running, remove it with `rados -p %s "
                "rmxattr %s lock.%s` and open again", lock, oid, pool, oid, lock);
    return CB_ECORRUPT;
}

/* The holder of the writer lock, for messages: "client.N at ADDR (cookie)". */
static void describe_holder(rados_ioctx_t ctx, const char *oid, char *buf, size_t len)
{
    int excl;
    char tag[128], clients[512], cookies[512], addrs[512];
    size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies, al = sizeof addrs;
    ssize_t n = rados_list_lockers(ctx, oid, RIO_LOCK, &excl, tag, &tl, clients, &cl,
                                   cookies, &kl, addrs, &al);
    if (n <= 0)
        snprintf(buf, len, "%s", n == 0 ? "" : "an unknown holder");
    else
        snprintf(buf, len, "%.200s at %.200s (%.200s)", clients, addrs, cookies);
}

static uint64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

static unsigned reader_lease(const struct rio *r)
{
    return r->lease ? r->lease : RIO_READER_LEASE;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* How long before the lease's end by this host's clock a reader stops
 * trusting it: the OSD starts the lease when it takes the request, after
 * this host sent it, so only a difference in clock rates (a tenth) and a
 * late wake-up of the reader's thread (up to 1 s) are covered.  Renewals
 * come every lease / 3, well inside what is left. */
static uint64_t pin_margin_ns(const struct rio *r)
{
    uint64_t lease = (uint64_t)reader_lease(r) * 1000000000ull;
    return lease / 10 + (lease / 4 < 1000000000ull ? lease / 4 : 1000000000ull);
}

/* Take (flags 0) or renew (LIBRADOS_LOCK_FLAG_MUST_RENEW) the reader
 * lock under cookie; on success *sent is when the request left. */
static int lock_pin(struct rio *r, const char *cookie, uint8_t flags, uint64_t *sent)
{
    struct timeval dur = {(time_t)reader_lease(r), 0};
    *sent = mono_ns();
    return rados_lock_shared(r->ctx, r->head, RIO_READERS, cookie, RIO_READER_TAG,
                             "cowblock reader", &dur, flags);
}

/* One round of the reader's renewal (lease_mu held, dropped meanwhile). */
static void renew_pin(struct rio *r)
{
    if (!r->pinned || r->pin_lost)
        return;
    char cookie[sizeof r->pin_cookie];
    memcpy(cookie, r->pin_cookie, sizeof cookie);
    pthread_mutex_unlock(&r->lease_mu);
    uint64_t sent;
    int rc = lock_pin(r, cookie, LIBRADOS_LOCK_FLAG_MUST_RENEW, &sent);
    pthread_mutex_lock(&r->lease_mu);
    if (strcmp(cookie, r->pin_cookie))
        return; /* pinned anew meanwhile */
    if (rc >= 0 && sent + (uint64_t)reader_lease(r) * 1000000000ull > r->pin_until + pin_margin_ns(r))
        r->pin_until = sent + (uint64_t)reader_lease(r) * 1000000000ull - pin_margin_ns(r);
    else if (rc == -ENOENT || rc == -ESHUTDOWN || mono_ns() >= r->pin_until)
        r->pin_lost = 1; /* lapsed: a writer may have reused what it reached */
}

/* Renew the writer's lock, or the reader's pin, every lease / 3 s.  A
 * writer's renewal that fails for a whole lease means another writer may
 * have the lock now: the store is fenced. */
static void *renew_main(void *arg)
{
    struct rio *r = arg;
    uint64_t last_ok = mono_s();
    unsigned lease = r->locked ? r->lease : reader_lease(r);
    pthread_mutex_lock(&r->lease_mu);
    while (!r->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)lease * 1000000000ull / 3;
        until.tv_sec += (time_t)(ns / 1000000000ull);
        until.tv_nsec = (long)(ns % 1000000000ull);
        while (!r->stop && pthread_cond_timedwait(&r->lease_cv, &r->lease_mu, &until) == 0)
            ;
        if (r->stop)
            break;
        if (!r->locked) {
            renew_pin(r);
            continue;
        }
        pthread_mutex_unlock(&r->lease_mu);
        struct timeval dur = {(time_t)r->lease, 0};
        int rc = rados_lock_exclusive(r->ctx, r->head, RIO_LOCK, r->cookie, "cowblock writer",
                                      &dur, LIBRADOS_LOCK_FLAG_MUST_RENEW);
        pthread_mutex_lock(&r->lease_mu);
        if (rc >= 0) {
            last_ok = mono_s();
        } else if (rc == -ENOENT || rc == -EBUSY || rc == -ESHUTDOWN ||
                   mono_s() - last_ok >= r->lease) {
            /* the lock is gone, someone else has it, or it has lapsed */
            __atomic_store_n(&r->lost, CB_EFENCED, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&r->lease_mu);
    return NULL;
}

static void stop_renewer(struct rio *r)
{
    if (!r->renewing)
        return;
    pthread_mutex_lock(&r->lease_mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->lease_cv);
    pthread_mutex_unlock(&r->lease_mu);
    pthread_join(r->renewer, NULL);
    r->renewing = 0;
}

/* The writer that held the lock before, as cb.writer on the head names it
 * (its client's address), is blocklisted before this one writes a byte:
 * a writer whose lease lapsed while it stalled may wake up and write, and
 * the lock's own record of it is gone once it lapsed.  A writer that closed
 * cleanly left cb.writer empty.  Then cb.writer names this writer. */
static int fence_previous(struct rio *r)
{
    char prev[256];
    int n = rados_getxattr(r->ctx, r->head, "cb.writer", prev, sizeof prev - 1);
    if (n == -ENODATA)
        n = 0;
    if (n < 0)
        return map_err(n);
    prev[n] = 0;
    if (n > 0) {
        int rc = rados_blocklist_add(r->c->cl, prev, 0);
        if (rc < 0) {
            cb_meta_bad(0, 0, "the pool's last writer (%s) did not close it and could not be "
                        "fenced (blocklist: %s): not taking the pool over", prev,
                        strerror(-rc));
            return CB_EBUSY;
        }
    }
    char *me = NULL;
    int rc = rados_getaddrs(r->c->cl, &me);
    if (rc < 0)
        return map_err(rc);
    rc = rados_setxattr(r->ctx, r->head, "cb.writer", me, strlen(me));
    rados_buffer_free(me);
    return rc < 0 ? map_err(rc) : 0;
}

static int r_lock(cb_io *io, int exclusive)
{
    struct rio *r = (struct rio *)io;
    if (!exclusive)
        return 0; /* readers take no lock: they see the last commit */
    char host[64] = "?", desc[128];
    unsigned char rnd[8] = {0};
    gethostname(host, sizeof host - 1);
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        memset(rnd, 0, sizeof rnd);
    snprintf(r->cookie, sizeof r->cookie, "cowblock pid %d on %s %02x%02x%02x%02x%02x%02x%02x%02x",
             (int)getpid(), host, rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(desc, sizeof desc, "cowblock writer");
    struct timeval dur = {(time_t)r->lease, 0};
    int rc = rados_lock_exclusive(r->ctx, r->head, RIO_LOCK, r->cookie, desc,
                                  r->lease ? &dur : NULL, 0);
    if (rc == -EIO) {
        char pool[256];
        if (rados_ioctx_get_pool_name(r->ctx, pool, sizeof pool) < 0)
            snprintf(pool, sizeof pool, "POOL");
        return bad_lock_record(pool, r->head, RIO_LOCK);
    }
    if (rc == -EBUSY || rc == -EEXIST) {
        char who[700];
        describe_holder(r->ctx, r->head, who, sizeof who);
        if (r->lease)
            cb_meta_bad(0, 0, "pool is open for writing by %s; if that writer is gone, its "
                        "lock lapses within %u s, or `cowblock pool unlock --force` breaks "
                        "it now", who, r->lease);
        else
            cb_meta_bad(0, 0, "pool is open for writing by %s; if that writer is gone, "
                        "`cowblock pool unlock --force` breaks its lock", who);
        return CB_EBUSY;
    }
    if (rc < 0)
        return map_err(rc);
    r->locked = 1;
    if ((rc = fence_previous(r)))
        return rc;
    if (r->lease && !(rc = pthread_create(&r->renewer, NULL, renew_main, r)))
        r->renewing = 1;
    else if (r->lease)
        return -rc;
    /* the fence starts from the head as it is under the lock */
    uint64_t size;
    if ((rc = get_xattr_u64(r, "cb.seq", &r->seq)) || (rc = get_xattr_u64(r, "cb.size", &size)))
        return rc;
    r->size = r->size_saved = size;
    return 0;
}

static void r_close(cb_io *io)
{
    struct rio *r = (struct rio *)io;
    stop_renewer(r);
    if (r->have_ctx) {
        int rc = drain(r);
        if (!rc && !LOST(r) && !(r->flags & CB_IO_READONLY) && r->size != r->size_saved)
            (void)head_op(r, NULL, 0, 0, 0);
        if (r->pinned && !r->pin_lost)
            (void)rados_unlock(r->ctx, r->head, RIO_READERS, r->pin_cookie);
        if (r->locked && !LOST(r)) { /* a clean close: nobody to fence after it */
            (void)rados_setxattr(r->ctx, r->head, "cb.writer", "", 0);
            (void)rados_unlock(r->ctx, r->head, RIO_LOCK, r->cookie);
        }
        rados_ioctx_destroy(r->ctx);
    }
    if (r->c)
        client_put(r->c);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->lease_mu);
    pthread_cond_destroy(&r->lease_cv);
    for (uint64_t i = 0; i < r->ncache; i++)
        free(r->cache[i]);
    free(r->cache);
    free(r->scan);
    free(r);
}

/* ---- the reader table ---------------------------------------------------------- */

/* Drop the read-only opener's copies of the meta store's objects. */
static void forget_cache(struct rio *r)
{
    pthread_mutex_lock(&r->mu);
    for (uint64_t i = 0; i < r->ncache; i++) {
        free(r->cache[i]);
        r->cache[i] = NULL;
    }
    pthread_mutex_unlock(&r->mu);
}

static int r_pin(cb_io *io, uint64_t gen, int forget)
{
    struct rio *r = (struct rio *)io;
    if (!(r->flags & CB_IO_READONLY) || !r->fenced)
        return CB_EINVAL;
    char host[64] = "?", cookie[sizeof r->pin_cookie];
    unsigned char rnd[8] = {0};
    gethostname(host, sizeof host - 1);
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        memset(rnd, 0, sizeof rnd);
    snprintf(cookie, sizeof cookie, "g%llu pid %d on %s %02x%02x%02x%02x%02x%02x%02x%02x",
             (unsigned long long)gen, (int)getpid(), host, rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    uint64_t sent;
    int rc = lock_pin(r, cookie, 0, &sent);
    if (rc < 0)
        return map_err(rc);
    if (forget)
        forget_cache(r);
    pthread_mutex_lock(&r->lease_mu);
    char old[sizeof r->pin_cookie];
    int had = r->pinned && !r->pin_lost;
    memcpy(old, r->pin_cookie, sizeof old);
    memcpy(r->pin_cookie, cookie, sizeof cookie);
    r->pin_until = sent + (uint64_t)reader_lease(r) * 1000000000ull - pin_margin_ns(r);
    r->pinned = 1;
    r->pin_lost = 0;
    pthread_mutex_unlock(&r->lease_mu);
    /* the new registration is in place before the old one goes, so a
     * writer never sees this reader unregistered */
    if (had)
        (void)rados_unlock(r->ctx, r->head, RIO_READERS, old);
    if (!r->renewing) {
        if ((rc = pthread_create(&r->renewer, NULL, renew_main, r)))
            return -rc;
        r->renewing = 1;
    }
    return 0;
}

static int r_pin_valid(cb_io *io)
{
    struct rio *r = (struct rio *)io;
    pthread_mutex_lock(&r->lease_mu);
    if (r->pinned && !r->pin_lost && mono_ns() >= r->pin_until)
        r->pin_lost = 1;
    int rc = r->pinned && r->pin_lost ? CB_ESTALE : 0;
    pthread_mutex_unlock(&r->lease_mu);
    return rc;
}

/* The generation a reader cookie names ("g<gen> ..."); 0 (holding every
 * generation back) for one this backend did not write. */
static uint64_t cookie_gen(const char *c)
{
    uint64_t g = 0;
    if (*c++ != 'g')
        return 0;
    size_t n = strspn(c, "0123456789");
    return parse_u64(c, n, &g) ? 0 : g;
}

static int r_oldest_pin(cb_io *io, uint64_t *gen)
{
    struct rio *r = (struct rio *)io;
    size_t cap = 4096;
    for (;;) {
        char *buf = malloc(4 * cap);
        if (!buf)
            return CB_ENOMEM;
        int excl;
        size_t tl = cap, cl = cap, kl = cap, al = cap;
        ssize_t n = rados_list_lockers(r->ctx, r->head, RIO_READERS, &excl, buf, &tl,
                                       buf + cap, &cl, buf + 2 * cap, &kl, buf + 3 * cap, &al);
        if (n == -ERANGE && cap < (64u << 20)) {
            free(buf);
            cap *= 4;
            continue;
        }
        if (n == -ENOENT || n == 0) {
            free(buf);
            *gen = UINT64_MAX;
            return 0;
        }
        if (n < 0) {
            free(buf);
            return map_err((int)n);
        }
        uint64_t oldest = UINT64_MAX;
        const char *c = buf + 2 * cap, *end = c + (kl < cap ? kl : cap);
        for (ssize_t i = 0; i < n && c < end; i++) {
            uint64_t g = cookie_gen(c);
            if (g < oldest)
                oldest = g;
            c += strnlen(c, (size_t)(end - c)) + 1;
        }
        free(buf);
        *gen = oldest;
        return 0;
    }
}
/* documents: the section at the end of this file */
static int r_doc_get(cb_io *io, const char *name, uint64_t known, char **data, size_t *len,
                     uint64_t *gen);
static int r_doc_put(cb_io *io, const char *name, const void *data, size_t len, uint64_t *gen);
static int r_doc_list(cb_io *io, char **names, size_t *len);

static const struct cb_io_ops rados_ops = {
    .pread = r_pread,
    .pwrite = r_pwrite,
    .sync = r_sync,
    .punch = r_punch,
    .size = r_size,
    .truncate = r_truncate,
    .next_data = r_next_data,
    .close = r_close,
    .lock = r_lock,
    .pin = r_pin,
    .pin_valid = r_pin_valid,
    .oldest_pin = r_oldest_pin,
    .doc_get = r_doc_get,
    .doc_put = r_doc_put,
    .doc_list = r_doc_list,
    .preadv = r_preadv,
};

static int open_ctx(const char *url, const char *store, struct rio *peer, struct rurl *u,
                    struct rio **out)
{
    int rc = parse_url(url, u);
    if (rc)
        return rc;
    struct rio *r = calloc(1, sizeof *r);
    if (!r)
        return CB_ENOMEM;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_mutex_init(&r->lease_mu, NULL);
    pthread_cond_init(&r->lease_cv, NULL);
    r->lease = u->lease;
    r->io.ops = &rados_ops;
    r->scan_idx = UINT64_MAX;
    snprintf(r->head, sizeof r->head, "%s.%s", u->name, store);
    if (peer) {
        r->c = peer->c;
        __atomic_add_fetch(&r->c->refs, 1, __ATOMIC_RELAXED);
    }
    if ((!peer && (rc = client_new(u, &r->c))) ||
        (rc = rados_ioctx_create(r->c->cl, u->pool, &r->ctx)) < 0) {
        if (rc == -ENOENT)
            cb_meta_bad(0, 0, "no RADOS pool '%s' in the cluster", u->pool);
        r_close(&r->io);
        return rc == -ENOENT ? CB_EINVAL : map_err(rc);
    }
    r->have_ctx = 1;
    *out = r;
    return 0;
}

int cb_rados_open(const char *url, const char *store, unsigned flags, cb_io *peer,
                  cb_io **out)
{
    struct rurl u;
    struct rio *r;
    if (peer && peer->ops != &rados_ops)
        return CB_EINVAL;
    int rc = open_ctx(url, store, (struct rio *)peer, &u, &r);
    if (rc)
        return rc;
    r->flags = flags;
    r->fenced = (flags & CB_IO_FENCED) != 0;
    if (flags & CB_IO_CREATE) {
        r->osize = u.osize;
        r->head_bytes = r->fenced ? CB_IO_HEAD_BYTES : 0;
        rc = head_op(r, NULL, 0, 0, 1);
    } else {
        uint64_t hb = 0;
        if (!(rc = get_xattr_u64(r, "cb.osize", &r->osize)) &&
            !(rc = get_xattr_u64(r, "cb.head", &hb)) &&
            !(rc = get_xattr_u64(r, "cb.size", &r->size)) &&
            !(rc = get_xattr_u64(r, "cb.seq", &r->seq)) &&
            (r->osize < RIO_MIN_OSIZE || r->osize > RIO_MAX_OSIZE ||
             (r->osize & (r->osize - 1)) || (hb != 0 && hb != CB_IO_HEAD_BYTES))) {
            cb_meta_bad(0, 0, "RADOS object '%s' records an object size of %llu and a "
                        "head of %llu bytes", r->head, (unsigned long long)r->osize,
                        (unsigned long long)hb);
            rc = CB_ECORRUPT;
        } else if (!rc && peer && ((struct rio *)peer)->osize != r->osize) {
            /* both stores are made with one object size: a head that says
             * otherwise would map offsets to the wrong objects */
            cb_meta_bad(0, 0, "RADOS objects '%s' and '%s' record different object sizes "
                        "(%llu and %llu bytes)", ((struct rio *)peer)->head, r->head,
                        (unsigned long long)((struct rio *)peer)->osize,
                        (unsigned long long)r->osize);
            rc = CB_ECORRUPT;
        }
        r->head_bytes = hb;
        r->size_saved = r->size;
    }
    if (rc) {
        r_close(&r->io);
        return rc;
    }
    r->oshift = (unsigned)__builtin_ctzll(r->osize);
    *out = &r->io;
    return 0;
}

int cb_rados_remove(const char *url, const char *store)
{
    cb_io *io;
    int rc = cb_rados_open(url, store, 0, NULL, &io);
    if (rc)
        return rc == -ENOENT ? 0 : rc;
    struct rio *r = (struct rio *)io;
    uint64_t end = r->size > r->head_bytes ? r->size : r->head_bytes;
    for (uint64_t i = r->head_bytes >> r->oshift; !rc && (i << r->oshift) < end; i++)
        rc = queue_punch(r, i, 0, r->osize);
    int d = drain(r);
    if (!rc)
        rc = d;
    if (!rc && (rc = rados_remove(r->ctx, r->head)) == -ENOENT)
        rc = 0;
    r->flags |= CB_IO_READONLY; /* nothing left to save at close */
    r_close(io);
    return map_err(rc);
}

int cb_rados_break_lock(const char *url, char *holder, size_t len)
{
    struct rurl u;
    int rc = parse_url(url, &u);
    if (rc)
        return rc;
    rados_t cl;
    rados_ioctx_t ctx;
    if ((rc = connect_client(&u, &cl)))
        return rc;
    char head[RIO_NAME_MAX + 16];
    snprintf(head, sizeof head, "%s.meta", u.name);
    if ((rc = rados_ioctx_create(cl, u.pool, &ctx)) < 0) {
        rados_shutdown(cl);
        return rc;
    }
    int excl;
    char tag[128], clients[512], cookies[512], addrs[512];
    size_t tl = sizeof tag, ncl = sizeof clients, kl = sizeof cookies, al = sizeof addrs;
    ssize_t n = rados_list_lockers(ctx, head, RIO_LOCK, &excl, tag, &tl, clients, &ncl,
                                   cookies, &kl, addrs, &al);
    if (len)
        holder[0] = 0;
    if (n == -EIO) {
        rc = bad_lock_record(u.pool, head, RIO_LOCK);
    } else if (n < 0) {
        rc = (int)n;
    } else if (n > 0) {
        snprintf(holder, len, "%.200s at %.200s (%.200s)", clients, addrs, cookies);
        /* fence first: once the lock is gone a new writer may start, and the
         * old one must not write a byte after that */
        rc = rados_blocklist_add(cl, addrs, 0);
        if (rc >= 0)
            rc = rados_break_lock(ctx, head, RIO_LOCK, clients, cookies);
        if (rc == -ENOENT)
            rc = 0;
    }
    rados_ioctx_destroy(ctx);
    rados_shutdown(cl);
    return rc < 0 ? (rc == CB_ECORRUPT ? rc : map_err(rc)) : 0;
}
/* ---- documents (blockio.h doc_*, cowblock.h "Documents") ----------------------
 *
 * Each document of a pool is two omap entries of the meta head NAME.meta:
 *   cb.doc.DOC   its bytes
 *   cb.gen.DOC   its generation, decimal: the cb.seq the put set
 * Why the head's omap: a RADOS op is atomic on one object only, and the
 * fence (cb.seq, an xattr of the head) must be asserted by the very op that
 * changes the document, or a writer whose lock was broken could still
 * write one after a newer writer took over.  So a put is the same guarded
 * op as a superblock write -- cmpxattr cb.seq == what this opener last saw,
 * set it to seq + 1 -- with the two omap entries set in it; it leaves the
 * superblock bytes and cb.size alone.  A separate object per document
 * could not be guarded by the head's cb.seq, and a generation kept inside
 * each document's object would fence nothing.  omap rather than xattrs:
 * values of megabytes are what omap is for, and reading one key does not
 * read the others.  The generation is the new cb.seq, which only grows
 * (every put and commit of every writer bumps it under the fence), so
 * two versions of one document never share a generation, and a reader can
 * tell a change by reading cb.gen.DOC alone (one small read) before it
 * reads the document with its generation in one read op, which RADOS runs
 * atomically against the writer's ops on the head.  Readers (read-only
 * openers included) take no lock and read the head as it is now. */

#define DOC_KEY_MAX (CB_DOC_NAME_MAX + 8)
#define DOC_LIST_STEP 1000

static void doc_keys(const char *name, char *doc, char *gen)
{
    snprintf(doc, DOC_KEY_MAX, "cb.doc.%s", name);
    snprintf(gen, DOC_KEY_MAX, "cb.gen.%s", name);
}

static int doc_parse_gen(struct rio *r, const char *name, const char *val, size_t n,
                         uint64_t *out)
{
    if (parse_u64(val, n, out) || *out == 0) {
        cb_meta_bad(0, 0, "RADOS object '%s': the generation of document '%s' is malformed",
                    r->head, name);
        return CB_ECORRUPT;
    }
    return 0;
}

/* Read the omap values of keys[0..nkeys) of the head in one op: vals[i]
 * (malloc'd, or NULL when the key is absent) and lens[i]. */
static int doc_read(struct rio *r, const char *const *keys, size_t nkeys, char **vals,
                    size_t *lens)
{
    for (size_t i = 0; i < nkeys; i++) {
        vals[i] = NULL;
        lens[i] = 0;
    }
    rados_read_op_t op = rados_create_read_op();
    if (!op)
        return CB_ENOMEM;
    rados_omap_iter_t it = NULL;
    int prval = 0;
    rados_read_op_omap_get_vals_by_keys(op, keys, nkeys, &it, &prval);
    int rc = rados_read_op_operate(op, r->ctx, r->head, 0);
    if (rc >= 0 && prval < 0)
        rc = prval;
    if (rc >= 0) {
        for (;;) {
            char *k, *v;
            size_t vl;
            if ((rc = rados_omap_get_next(it, &k, &v, &vl)) < 0 || !k)
                break;
            for (size_t i = 0; i < nkeys; i++) {
                if (strcmp(k, keys[i]) || vals[i])
                    continue;
                if (!(vals[i] = malloc(vl + 1))) {
                    rc = CB_ENOMEM;
                    break;
                }
                if (vl)
                    memcpy(vals[i], v, vl);
                vals[i][vl] = 0;
                lens[i] = vl;
            }
            if (rc)
                break;
        }
    }
    if (it)
        rados_omap_get_end(it);
    rados_release_read_op(op);
    if (rc < 0) {
        for (size_t i = 0; i < nkeys; i++) {
            free(vals[i]);
            vals[i] = NULL;
        }
        return rc == CB_ENOMEM ? rc : map_err(rc);
    }
    return 0;
}

static int r_doc_get(cb_io *io, const char *name, uint64_t known, char **data, size_t *len,
                     uint64_t *gen)
{
    struct rio *r = (struct rio *)io;
    char dkey[DOC_KEY_MAX], gkey[DOC_KEY_MAX];
    doc_keys(name, dkey, gkey);
    *data = NULL;
    *len = 0;
    *gen = 0;
    const char *gonly[1] = {gkey};
    char *v[2];
    size_t l[2];
    int rc = doc_read(r, gonly, 1, v, l);
    if (rc)
        return rc;
    if (!v[0])
        return 0; /* no such document */
    rc = doc_parse_gen(r, name, v[0], l[0], gen);
    free(v[0]);
    if (rc || *gen == known)
        return rc;
    /* changed: the bytes and their generation, together */
    const char *both[2] = {dkey, gkey};
    if ((rc = doc_read(r, both, 2, v, l)))
        return rc;
    if (!v[1]) { /* removed by hand meanwhile */
        free(v[0]);
        *gen = 0;
        return 0;
    }
    rc = doc_parse_gen(r, name, v[1], l[1], gen);
    free(v[1]);
    if (!rc && !v[0]) {
        cb_meta_bad(0, 0, "RADOS object '%s' has a generation for document '%s' but not "
                    "the document", r->head, name);
        rc = CB_ECORRUPT;
    }
    if (rc) {
        free(v[0]);
        *gen = 0;
        return rc;
    }
    *data = v[0];
    *len = l[0];
    return 0;
}

static int r_doc_put(cb_io *io, const char *name, const void *data, size_t len, uint64_t *gen)
{
    struct rio *r = (struct rio *)io;
    if (r->flags & CB_IO_READONLY)
        return -EBADF;
    if (!r->fenced)
        return CB_EINVAL; /* documents live on the meta store's head only */
    if (LOST(r))
        return LOST(r);
    int rc = drain(r); /* after every write queued before it, as a commit is */
    if (rc)
        return rc;
    char dkey[DOC_KEY_MAX], gkey[DOC_KEY_MAX], cur[24], next[24];
    doc_keys(name, dkey, gkey);
    uint64_t nseq = r->seq + 1;
    snprintf(cur, sizeof cur, "%llu", (unsigned long long)r->seq);
    snprintf(next, sizeof next, "%llu", (unsigned long long)nseq);
    rados_write_op_t op = rados_create_write_op();
    if (!op)
        return CB_ENOMEM;
    rados_write_op_cmpxattr(op, "cb.seq", LIBRADOS_CMPXATTR_OP_EQ, cur, strlen(cur));
    rados_write_op_setxattr(op, "cb.seq", next, strlen(next));
    const char *keys[2] = {dkey, gkey};
    const char *vals[2] = {data, next};
    size_t lens[2] = {len, strlen(next)};
    rados_write_op_omap_set(op, keys, vals, lens, 2);
    rc = fenced_result(r, rados_write_op_operate(op, r->ctx, r->head, NULL, 0), 1);
    rados_release_write_op(op);
    if (rc)
        return rc;
    r->seq = nseq;
    *gen = nseq;
    return 0;
}

static int r_doc_list(cb_io *io, char **names, size_t *len)
{
    struct rio *r = (struct rio *)io;
    char *out = NULL, *after = NULL; /* the last key seen */
    size_t used = 0, cap = 0;
    int rc = 0;
    unsigned char more = 1;
    *names = NULL;
    *len = 0;
    while (!rc && more) {
        rados_read_op_t op = rados_create_read_op();
        if (!op) {
            rc = CB_ENOMEM;
            break;
        }
        rados_omap_iter_t it = NULL;
        int prval = 0;
        more = 0;
        rados_read_op_omap_get_vals2(op, after ? after : "", "cb.gen.", DOC_LIST_STEP, &it, &more, &prval);
        rc = rados_read_op_operate(op, r->ctx, r->head, 0);
        if (rc >= 0 && prval < 0)
            rc = prval;
        rc = rc < 0 ? map_err(rc) : 0;
        while (!rc) {
            char *k, *v;
            size_t vl;
            if ((rc = rados_omap_get_next(it, &k, &v, &vl)) < 0) {
                rc = map_err(rc);
                break;
            }
            if (!k)
                break;
            size_t kl = strlen(k);
            free(after);
            if (!(after = strdup(k))) {
                rc = CB_ENOMEM;
                break;
            }
            if (kl <= 7 || kl >= DOC_KEY_MAX)
                continue; /* not one of ours (too long for a document name) */
            if (used + kl - 7 + 1 > cap) {
                size_t ncap = cap ? 2 * cap : 256;
                while (ncap < used + kl)
                    ncap *= 2;
                char *n = realloc(out, ncap);
                if (!n) {
                    rc = CB_ENOMEM;
                    break;
                }
                out = n;
                cap = ncap;
            }
            memcpy(out + used, k + 7, kl - 7 + 1);
            used += kl - 7 + 1;
        }
        if (it)
            rados_omap_get_end(it);
        rados_release_read_op(op);
    }
    free(after);
    if (rc) {
        free(out);
        return rc;
    }
    *names = out;
    *len = used;
    return 0;
}

#endif /* CB_HAVE_RADOS */
