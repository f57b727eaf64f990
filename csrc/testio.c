/*
 * testio.c - the test IO backend: power-loss simulation and fault
 * injection around the plain-file backend (see testio.h).  Only built with
 * CB_TESTING (tests/testbuild.py).
 *
 * Model
 *  - The real file is the disk.  A wrapped file keeps a list of pending
 *    operations (pwrite with a copy of its bytes, punch, truncate) in call
 *    order; they reach the disk, in that order, at the file's sync (or at a
 *    clean close).  No real fdatasync is made: the power never really
 *    goes.  A read is served from the disk and then patched by
 *    every pending operation it overlaps, in order, so it sees what a page
 *    cache would show.
 *  - A power cut drops all pending operations of every wrapped file open at
 *    that moment, except a torn prefix of the last pending pwrite (global
 *    order) and, with cb_test_reorder, a random subset of the others; then
 *    those files are off: every call fails with -EIO until closed.
 *  - Counters and rules are global.  A fault rule is checked before the
 *    call does anything (a failed call has no effect), a cut rule after the
 *    call has done its work.
 *
 * Invariants
 *  1. t->nops == 0 whenever t->off.
 *  2. Pending operations of a file are kept in call order (seq increases).
 *  3. g_mu is held around every access to the global state and to a
 *     wrapper's pending list; it is never held across a call into a pool.
 */
#ifdef CB_TESTING
#include "testio.h"
#include "cowblock.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { OP_WRITE = 1, OP_PUNCH, OP_TRUNC };

struct op {
    int kind;
    uint64_t off, len;      /* OP_TRUNC: off = new size */
    unsigned char *buf;     /* OP_WRITE: a copy of the bytes */
    uint64_t seq;           /* global call order */
};

struct tio {
    struct cb_io io;
    cb_io *inner;
    int file;               /* CB_TEST_DATA or CB_TEST_META */
    int off;                /* power was cut: every call fails */
    struct op *ops;
    size_t nops, cap;
    struct tio *prev, *next;
};

struct rule {
    int kind, file;
    uint64_t n;
    int err;                /* fault: positive errno; 0 for a cut rule */
    int sticky;             /* fault from the nth call on */
    int torn;               /* cut rule: torn bytes */
    int done;               /* cut rule fired */
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_enabled;
static struct tio *g_files;
static uint64_t g_count[3][CB_TEST_NKINDS]; /* [file][kind]; [0] unused */
static struct rule g_rules[CB_TEST_MAX_RULES];
static unsigned g_nrules;
static uint64_t g_seq, g_cuts, g_injected, g_torn;
static unsigned g_keep_percent;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static const struct cb_io_ops tio_ops;

/* ---- helpers ----------------------------------------------------------- */

static uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int is_mutation(int kind)
{
    return kind == CB_TEST_PWRITE || kind == CB_TEST_SYNC || kind == CB_TEST_PUNCH ||
           kind == CB_TEST_TRUNCATE;
}

static uint64_t count_of(int kind, int file)
{
    if (file == CB_TEST_ANY)
        return g_count[CB_TEST_DATA][kind] + g_count[CB_TEST_META][kind];
    return g_count[file][kind];
}

static int rule_matches(const struct rule *r, int kind, int file)
{
    int k = r->kind == kind || (r->kind == CB_TEST_MUTATE && is_mutation(kind));
    return k && (r->file == CB_TEST_ANY || r->file == file);
}

static int err_code(int err)
{
    return err == ENOSPC || err == EDQUOT ? CB_ENOSPC : -err;
}

static void free_ops(struct tio *t)
{
    for (size_t i = 0; i < t->nops; i++)
        free(t->ops[i].buf);
    t->nops = 0;
}

static int push_op(struct tio *t, int kind, uint64_t off, uint64_t len, const void *buf)
{
    if (t->nops == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct op *v = realloc(t->ops, cap * sizeof *v);
        if (!v)
            return CB_ENOMEM;
        t->ops = v;
        t->cap = cap;
    }
    struct op *o = &t->ops[t->nops];
    o->kind = kind;
    o->off = off;
    o->len = len;
    o->buf = NULL;
    o->seq = ++g_seq;
    if (buf) {
        if (!(o->buf = malloc(len ? len : 1)))
            return CB_ENOMEM;
        memcpy(o->buf, buf, len);
    }
    t->nops++;
    return 0;
}

/* Apply one pending operation (or the first `limit` bytes of a pwrite) to
 * the disk. */
static int apply_op(struct tio *t, const struct op *o, uint64_t limit)
{
    cb_io *in = t->inner;
    switch (o->kind) {
    case OP_WRITE:
        return in->ops->pwrite(in, o->buf, limit < o->len ? limit : o->len, o->off);
    case OP_PUNCH:
        return in->ops->punch(in, o->off, o->len);
    default:
        return in->ops->truncate(in, o->off);
    }
}

static int apply_all(struct tio *t)
{
    int rc = 0;
    for (size_t i = 0; i < t->nops && !rc; i++)
        rc = apply_op(t, &t->ops[i], UINT64_MAX);
    free_ops(t);
    return rc;
}

/* The power cut, under g_mu. */
static void cut(int torn)
{
    const struct op *last = NULL;
    for (struct tio *t = g_files; t; t = t->next)
        for (size_t i = 0; i < t->nops; i++)
            if (t->ops[i].kind == OP_WRITE && (!last || t->ops[i].seq > last->seq))
                last = &t->ops[i];
    uint64_t tear = torn > 0 ? (uint64_t)torn / 512 * 512 : 0;
    for (struct tio *t = g_files; t; t = t->next) {
        if (t->off)
            continue;
        for (size_t i = 0; i < t->nops; i++) {
            const struct op *o = &t->ops[i];
            if (o == last) {
                if (tear)
                    apply_op(t, o, tear);
                if (tear && tear < o->len)
                    g_torn++;
            } else if (g_keep_percent && rng_next() % 100 < g_keep_percent) {
                apply_op(t, o, UINT64_MAX);
            }
        }
        free_ops(t);
        t->off = 1;
    }
    g_cuts++;
}

/* Count a call and decide whether it fails (under g_mu). */
static int before(struct tio *t, int kind)
{
    if (t->off)
        return -EIO;
    g_count[t->file][kind]++;
    if (is_mutation(kind))
        g_count[t->file][CB_TEST_MUTATE]++;
    for (unsigned i = 0; i < g_nrules; i++) {
        const struct rule *r = &g_rules[i];
        if (!r->err || !rule_matches(r, kind, t->file))
            continue;
        uint64_t c = count_of(r->kind, r->file);
        if (c == r->n || (r->sticky && c > r->n)) {
            g_injected++;
            return err_code(r->err);
        }
    }
    return 0;
}

/* After a call did its work: a cut rule may fire (under g_mu). */
static void after(struct tio *t, int kind)
{
    for (unsigned i = 0; i < g_nrules; i++) {
        struct rule *r = &g_rules[i];
        if (r->err || r->done || !rule_matches(r, kind, t->file))
            continue;
        if (count_of(r->kind, r->file) == r->n) {
            r->done = 1;
            cut(r->torn);
        }
    }
}

/* ---- the page-cache view ----------------------------------------------- */

/* Patch buf = bytes [off, off + len) of the disk with the pending ops. */
static void overlay(const struct tio *t, unsigned char *buf, uint64_t len, uint64_t off)
{
    uint64_t end = off + len;
    for (size_t i = 0; i < t->nops; i++) {
        const struct op *o = &t->ops[i];
        uint64_t a, b;
        if (o->kind == OP_TRUNC) {
            a = o->off;
            b = UINT64_MAX;
        } else {
            a = o->off;
            b = o->off + o->len;
        }
        if (a < off)
            a = off;
        if (b > end)
            b = end;
        if (a >= b)
            continue;
        if (o->kind == OP_WRITE)
            memcpy(buf + (a - off), o->buf + (a - o->off), b - a);
        else
            memset(buf + (a - off), 0, b - a);
    }
}

/* Sorted disjoint [start, end) pairs. */
struct ivs {
    uint64_t *v;
    size_t n, cap; /* n pairs */
};

static int ivs_reserve(struct ivs *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 16;
    while (cap < n)
        cap *= 2;
    uint64_t *v = realloc(s->v, cap * 2 * sizeof *v);
    if (!v)
        return CB_ENOMEM;
    s->v = v;
    s->cap = cap;
    return 0;
}

/* s = s with [a, b) added (add) or removed (!add). */
static int ivs_edit(struct ivs *s, uint64_t a, uint64_t b, int add)
{
    if (a >= b)
        return 0;
    struct ivs r = {NULL, 0, 0};
    if (ivs_reserve(&r, s->n + 2))
        return CB_ENOMEM;
    int placed = !add; /* [a, b) emitted (never, when removing) */
    for (size_t i = 0; i < s->n; i++) {
        uint64_t x = s->v[2 * i], y = s->v[2 * i + 1];
        if (add) {
            if (!placed && x <= b && y >= a) { /* overlaps or touches: merge */
                a = x < a ? x : a;
                b = y > b ? y : b;
                continue;
            }
            if (!placed && x > b) {
                r.v[2 * r.n] = a;
                r.v[2 * r.n + 1] = b;
                r.n++;
                placed = 1;
            }
            r.v[2 * r.n] = x;
            r.v[2 * r.n + 1] = y;
            r.n++;
        } else {
            if (x < a) {
                r.v[2 * r.n] = x;
                r.v[2 * r.n + 1] = y < a ? y : a;
                r.n++;
            }
            if (y > b) {
                r.v[2 * r.n] = x > b ? x : b;
                r.v[2 * r.n + 1] = y;
                r.n++;
            }
        }
    }
    if (!placed) {
        r.v[2 * r.n] = a;
        r.v[2 * r.n + 1] = b;
        r.n++;
    }
    free(s->v);
    *s = r;
    return 0;
}

/* ---- the backend ----------------------------------------------------------- */

static int t_pread(cb_io *io, void *buf, size_t len, uint64_t off)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    int rc = before(t, CB_TEST_PREAD);
    if (!rc)
        rc = t->inner->ops->pread(t->inner, buf, len, off);
    if (!rc) {
        overlay(t, buf, len, off);
        after(t, CB_TEST_PREAD);
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_pwrite(cb_io *io, const void *buf, size_t len, uint64_t off)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    int rc = before(t, CB_TEST_PWRITE);
    if (!rc)
        rc = push_op(t, OP_WRITE, off, len, buf);
    if (!rc)
        after(t, CB_TEST_PWRITE);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_sync(cb_io *io)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    int rc = before(t, CB_TEST_SYNC);
    if (rc) {
        if (!t->off)
            free_ops(t); /* the kernel dropped the dirty pages */
    } else {
        /* The real file stands for the disk, and the machine never really
         * loses power: a real fdatasync would only cost time. */
        rc = apply_all(t);
        if (!rc)
            after(t, CB_TEST_SYNC);
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_punch(cb_io *io, uint64_t off, uint64_t len)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    int rc = before(t, CB_TEST_PUNCH);
    if (!rc)
        rc = push_op(t, OP_PUNCH, off, len, NULL);
    if (!rc)
        after(t, CB_TEST_PUNCH);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_truncate(cb_io *io, uint64_t size)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    int rc = before(t, CB_TEST_TRUNCATE);
    if (!rc)
        rc = push_op(t, OP_TRUNC, size, 0, NULL);
    if (!rc)
        after(t, CB_TEST_TRUNCATE);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_size(cb_io *io, uint64_t *out)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    uint64_t size = 0;
    int rc = t->off ? -EIO : t->inner->ops->size(t->inner, &size);
    for (size_t i = 0; !rc && i < t->nops; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind == OP_WRITE && o->off + o->len > size)
            size = o->off + o->len;
        else if (o->kind == OP_TRUNC)
            size = o->off;
    }
    if (!rc)
        *out = size;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int t_next_data(cb_io *io, uint64_t off, uint64_t *out, uint64_t *hole)
{
    struct tio *t = (struct tio *)io;
    cb_io *in = t->inner;
    pthread_mutex_lock(&g_mu);
    int rc = t->off ? -EIO : 0;
    if (!rc && t->nops == 0) {
        rc = in->ops->next_data(in, off, out, hole);
        pthread_mutex_unlock(&g_mu);
        return rc;
    }
    /* the disk's data extents, then the pending operations on top */
    struct ivs s = {NULL, 0, 0};
    uint64_t size = 0, pos = 0;
    if (!rc)
        rc = in->ops->size(in, &size);
    while (!rc && pos < size) {
        uint64_t d, h;
        if ((rc = in->ops->next_data(in, pos, &d, &h)) || d == UINT64_MAX || d >= size)
            break;
        if (h <= d)
            h = d + 1;
        rc = ivs_edit(&s, d, h, 1);
        pos = h;
    }
    for (size_t i = 0; !rc && i < t->nops; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind == OP_WRITE)
            rc = ivs_edit(&s, o->off, o->off + o->len, 1);
        else if (o->kind == OP_PUNCH)
            rc = ivs_edit(&s, o->off, o->off + o->len, 0);
        else
            rc = ivs_edit(&s, o->off, UINT64_MAX, 0);
    }
    if (!rc) {
        *out = *hole = UINT64_MAX;
        for (size_t i = 0; i < s.n; i++) {
            if (s.v[2 * i + 1] > off) {
                *out = s.v[2 * i] > off ? s.v[2 * i] : off;
                *hole = s.v[2 * i + 1];
                break;
            }
        }
    }
    free(s.v);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static void t_close(cb_io *io)
{
    struct tio *t = (struct tio *)io;
    pthread_mutex_lock(&g_mu);
    if (!t->off)
        apply_all(t); /* written back eventually, but not synced */
    free_ops(t);
    if (t->prev)
        t->prev->next = t->next;
    else
        g_files = t->next;
    if (t->next)
        t->next->prev = t->prev;
    pthread_mutex_unlock(&g_mu);
    t->inner->ops->close(t->inner);
    free(t->ops);
    free(t);
}

static const struct cb_io_ops tio_ops = {
    t_pread, t_pwrite, t_sync, t_punch, t_size, t_truncate, t_next_data, t_close,
};

int cb_testio_wrap(const char *path, cb_io **io)
{
    size_t n = strlen(path);
    int file = 0;
    if (n >= 5 && strcmp(path + n - 5, "/data") == 0)
        file = CB_TEST_DATA;
    else if (n >= 5 && strcmp(path + n - 5, "/meta") == 0)
        file = CB_TEST_META;
    pthread_mutex_lock(&g_mu);
    int on = g_enabled;
    pthread_mutex_unlock(&g_mu);
    if (!on || !file)
        return 0;
    struct tio *t = calloc(1, sizeof *t);
    if (!t) {
        (*io)->ops->close(*io);
        *io = NULL;
        return CB_ENOMEM;
    }
    t->io.ops = &tio_ops;
    t->inner = *io;
    t->file = file;
    pthread_mutex_lock(&g_mu);
    t->next = g_files;
    if (g_files)
        g_files->prev = t;
    g_files = t;
    pthread_mutex_unlock(&g_mu);
    *io = &t->io;
    return 0;
}

cb_io *cb_testio_inner(cb_io *io)
{
    return io->ops == &tio_ops ? ((struct tio *)io)->inner : io;
}

/* ---- control ------------------------------------------------------------- */

void cb_test_enable(int on)
{
    pthread_mutex_lock(&g_mu);
    g_enabled = on != 0;
    pthread_mutex_unlock(&g_mu);
}

void cb_test_reset(void)
{
    pthread_mutex_lock(&g_mu);
    memset(g_count, 0, sizeof g_count);
    memset(g_rules, 0, sizeof g_rules);
    g_nrules = 0;
    g_cuts = g_injected = g_torn = 0;
    g_keep_percent = 0;
    pthread_mutex_unlock(&g_mu);
}

uint64_t cb_test_count(int kind, int file)
{
    if (kind < 0 || kind >= CB_TEST_NKINDS || file < 0 || file > CB_TEST_META)
        return 0;
    pthread_mutex_lock(&g_mu);
    uint64_t c = count_of(kind, file);
    pthread_mutex_unlock(&g_mu);
    return c;
}

static int add_rule(struct rule r)
{
    if (r.kind < 0 || r.kind >= CB_TEST_NKINDS || r.file < 0 || r.file > CB_TEST_META ||
        r.n == 0 || r.err < 0)
        return CB_EINVAL;
    pthread_mutex_lock(&g_mu);
    int rc = CB_EINVAL;
    if (g_nrules < CB_TEST_MAX_RULES) {
        g_rules[g_nrules++] = r;
        rc = 0;
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

int cb_test_fail(int kind, int file, uint64_t n, int err)
{
    if (err <= 0)
        return CB_EINVAL;
    return add_rule((struct rule){kind, file, n, err, 0, 0, 0});
}

int cb_test_fail_from(int kind, int file, uint64_t n, int err)
{
    if (err <= 0)
        return CB_EINVAL;
    return add_rule((struct rule){kind, file, n, err, 1, 0, 0});
}

void cb_test_power_cut(int torn_bytes)
{
    pthread_mutex_lock(&g_mu);
    cut(torn_bytes);
    pthread_mutex_unlock(&g_mu);
}

int cb_test_power_cut_at(int kind, int file, uint64_t n, int torn_bytes)
{
    return add_rule((struct rule){kind, file, n, 0, 0, torn_bytes, 0});
}

void cb_test_reorder(unsigned keep_percent, uint64_t seed)
{
    pthread_mutex_lock(&g_mu);
    g_keep_percent = keep_percent > 100 ? 100 : keep_percent;
    g_rng = seed;
    pthread_mutex_unlock(&g_mu);
}

uint64_t cb_test_cuts(void)
{
    pthread_mutex_lock(&g_mu);
    uint64_t c = g_cuts;
    pthread_mutex_unlock(&g_mu);
    return c;
}

uint64_t cb_test_torn(void)
{
    pthread_mutex_lock(&g_mu);
    uint64_t c = g_torn;
    pthread_mutex_unlock(&g_mu);
    return c;
}

uint64_t cb_test_injected(void)
{
    pthread_mutex_lock(&g_mu);
    uint64_t c = g_injected;
    pthread_mutex_unlock(&g_mu);
    return c;
}

uint64_t cb_test_pending(int file)
{
    uint64_t c = 0;
    pthread_mutex_lock(&g_mu);
    for (struct tio *t = g_files; t; t = t->next)
        if (file == CB_TEST_ANY || file == t->file)
            c += t->nops;
    pthread_mutex_unlock(&g_mu);
    return c;
}

uint64_t cb_test_open_files(void)
{
    uint64_t c = 0;
    pthread_mutex_lock(&g_mu);
    for (struct tio *t = g_files; t; t = t->next)
        c++;
    pthread_mutex_unlock(&g_mu);
    return c;
}

#else
typedef int cb_testio_not_built; /* ISO C forbids an empty translation unit */
#endif /* CB_TESTING */
