/*
 * dump.c - the committed metadata as JSON text, like thin_dump.
 *
 * The dump reads the metadata file itself, not the in-memory trees: it
 * shows exactly what the last commit made durable, and is a second reader
 * of the on-disk format (meta.h) next to txn.c's loader.  Changes not yet
 * committed are not shown; "uncommitted" says whether there are any.
 *
 * Runs under the shared pool lock (taken by pool.c).  That is enough: every metadata write
 * (commit) happens under the exclusive lock, and pages the committed
 * superblock reaches are never written in place (shadow paging), so the
 * committed state on disk cannot change while we read it.  The walk uses
 * no scratch fields of the in-memory nodes.
 *
 * Every page read is verified (type, checksum, own address, generation,
 * level) and every count bounded, so a damaged file gives CB_ECORRUPT and
 * never a crash.  The walk of a tree is bounded by the depth the device
 * record implies (levels strictly decrease, so no page can loop).
 *
 * Output (one object; integers are exact, bitmaps are integers):
 *   {"superblock": {...}, "slots": [...], "externals": [...],
 *    "devices": [{..., "mappings": [run, ...]}], "free_log": {...},
 *    "uncommitted": bool}
 * A mapping run is {"virt", "data", "length", "time"} for plain entries
 * (one complete data block each, consecutive in both spaces, same time);
 * other entries carry "flags", "bitmap" and, with CB_E_ORIGIN, "origin",
 * and their runs coalesce only when flags, bitmap and time agree and
 * data/origin advance together.
 */
#include "dump.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a growable text buffer ------------------------------------------------ */

struct jbuf {
    char *s;
    size_t n, cap;
    int err;
};

static int jb_reserve(struct jbuf *b, size_t more)
{
    if (b->err)
        return b->err;
    if (b->n + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more + 1)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s)
        return b->err = CB_ENOMEM;
    b->s = s;
    b->cap = cap;
    return 0;
}

__attribute__((format(printf, 2, 3)))
static void jb_printf(struct jbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = CB_EINVAL;
        return;
    }
    if (jb_reserve(b, (size_t)n))
        return;
    if ((size_t)n < sizeof small) {
        memcpy(b->s + b->n, small, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->n += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (at most len bytes), 0 if none. */
static size_t utf8_len(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len < k)
        return 0;
    unsigned cp = c & (0x7f >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

/* A JSON string.  Bytes that are not valid UTF-8 become \udcXX, the escape
 * Python's os.fsdecode uses, so json.loads + os.fsencode give the bytes back. */
static void jb_str(struct jbuf *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    if (jb_reserve(b, len * 6 + 2))
        return;
    char *o = b->s + b->n;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        size_t k = utf8_len(s + i, len - i);
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            o += sprintf(o, "\\u%04x", c);
            i++;
        } else if (k == 0) {
            o += sprintf(o, "\\udc%02x", c);
            i++;
        } else {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        }
    }
    *o++ = '"';
    *o = 0;
    b->n = (size_t)(o - b->s);
}

/* ---- reading pages ------------------------------------------------------------ */

struct dumper {
    struct cb_store *p;
    struct jbuf *b;
    uint64_t meta_pages;    /* from the superblock */
    uint32_t sb_time;
    unsigned char **lvl;    /* one page buffer per tree level */
    /* the mapping run being built */
    int have;
    uint64_t v, n, block, origin, bitmap;
    uint32_t time, flags;
    int first;              /* no run written yet for this device */
    uint64_t nentries;
};

static int read_meta(struct dumper *D, unsigned char *pg, uint64_t page, uint32_t type)
{
    if (page < 2 || page >= D->meta_pages)
        return CB_ECORRUPT;
    int rc = cb_io_pread(D->p->meta, pg, CB_PAGE, page * CB_PAGE);
    if (rc)
        return rc;
    return cb_page_verify(pg, type, page, D->p->generation);
}

/* ---- mapping runs ---------------------------------------------------------------- */

static void run_emit(struct dumper *D)
{
    if (!D->have)
        return;
    struct jbuf *b = D->b;
    jb_printf(b, "%s\n        {\"virt\": %llu, ", D->first ? "" : ",",
              (unsigned long long)D->v);
    if (D->flags & CB_E_MAPPED)
        jb_printf(b, "\"data\": %llu, ", (unsigned long long)D->block);
    jb_printf(b, "\"length\": %llu, \"time\": %u", (unsigned long long)D->n, D->time);
    if (D->flags != CB_E_MAPPED || D->bitmap != D->p->full_bitmap) {
        jb_printf(b, ", \"flags\": %u, \"bitmap\": %llu", D->flags,
                  (unsigned long long)D->bitmap);
        if (D->flags & CB_E_ORIGIN)
            jb_printf(b, ", \"origin\": %llu", (unsigned long long)D->origin);
    }
    jb_printf(b, "}");
    D->first = 0;
    D->have = 0;
}

static void run_add(struct dumper *D, uint64_t v, uint64_t block, uint64_t origin,
                    uint64_t bitmap, uint32_t time, uint32_t flags)
{
    D->nentries++;
    if (D->have && v == D->v + D->n && flags == D->flags && bitmap == D->bitmap &&
        time == D->time && (!(flags & CB_E_MAPPED) || block == D->block + D->n) &&
        (!(flags & CB_E_ORIGIN) || origin == D->origin + D->n)) {
        D->n++;
        return;
    }
    run_emit(D);
    D->have = 1;
    D->v = v;
    D->n = 1;
    D->block = block;
    D->origin = origin;
    D->bitmap = bitmap;
    D->time = time;
    D->flags = flags;
}

/* Walk the subtree at `page` (level `level`) covering blocks from `base`. */
static int walk(struct dumper *D, uint64_t page, unsigned level, uint64_t base)
{
    unsigned char *pg = D->lvl[level];
    int rc = read_meta(D, pg, page, level ? CB_PT_NODE : CB_PT_LEAF);
    if (rc)
        return rc;
    if (cb_get16(pg + 28) != level || cb_get32(pg + 24) > D->sb_time)
        return CB_ECORRUPT;
    if (level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++) {
            const unsigned char *q = pg + CB_HDR + 32 * i;
            uint32_t flags = cb_get32(q + 28);
            if (flags & ~CB_E_KNOWN)
                return CB_ECORRUPT;
            if (flags)
                run_add(D, base + i, cb_get64(q), cb_get64(q + 8), cb_get64(q + 16),
                        cb_get32(q + 24), flags);
        }
        return 0;
    }
    uint64_t span = cb_map_span(level);
    for (unsigned i = 0; i < CB_NODE_FANOUT; i++) {
        uint64_t child = cb_get64(pg + CB_HDR + 8 * i);
        /* pg is this level's buffer: the children use the levels below */
        if (child && (rc = walk(D, child, level - 1, base + i * span)))
            return rc;
    }
    return 0;
}

/* ---- sections ---------------------------------------------------------------------- */

static void hex(struct jbuf *b, const unsigned char *x, size_t n)
{
    jb_printf(b, "\"");
    for (size_t i = 0; i < n; i++)
        jb_printf(b, "%02x", x[i]);
    jb_printf(b, "\"");
}

static int dump_slots(struct dumper *D, unsigned char *pg)
{
    struct jbuf *b = D->b;
    jb_printf(b, "  \"slots\": [");
    for (unsigned s = 0; s < 2; s++) {
        int rc = cb_io_pread(D->p->meta, pg, CB_PAGE, (uint64_t)s * CB_PAGE);
        if (rc)
            return rc;
        int valid = cb_page_verify(pg, CB_PT_SUPER, s, UINT64_MAX) == 0 &&
                    memcmp(pg + 32, "cowblock", 8) == 0;
        jb_printf(b, "%s\n    {\"slot\": %u, \"valid\": %s", s ? "," : "", s,
                  valid ? "true" : "false");
        if (valid)
            jb_printf(b, ", \"generation\": %llu, \"current\": %s",
                      (unsigned long long)cb_get64(pg + 16),
                      cb_get64(pg + 16) == D->p->generation ? "true" : "false");
        jb_printf(b, "}");
    }
    jb_printf(b, "\n  ],\n");
    return 0;
}

static void dump_super(struct dumper *D, const unsigned char *sb, unsigned ndevtab)
{
    struct jbuf *b = D->b;
    struct cb_store *p = D->p;
    jb_printf(b, "  \"superblock\": {\n    \"slot\": %llu,\n    \"generation\": %llu,\n"
                 "    \"version\": %u,\n    \"incompat\": %u,\n    \"checksums\": %s,\n"
                 "    \"compat\": %u,\n"
                 "    \"block_size\": %u,\n    \"sub_block_size\": %u,\n"
                 "    \"nblocks\": %llu,\n    \"time\": %llu,\n    \"next_dev_id\": %llu,\n"
                 "    \"meta_pages\": %llu,\n    \"free_log_page\": %llu,\n"
                 "    \"created_ns\": %llu,\n    \"uuid\": ",
              (unsigned long long)(p->generation % 2), (unsigned long long)cb_get64(sb + 16),
              cb_get32(sb + 40), cb_get32(sb + 44),
              (cb_get32(sb + 44) & CB_INCOMPAT_CSUM) ? "true" : "false", cb_get32(sb + 48),
              cb_get32(sb + 52),
              p->sub_size, (unsigned long long)cb_get64(sb + 56),
              (unsigned long long)cb_get64(sb + 64), (unsigned long long)cb_get64(sb + 72),
              (unsigned long long)cb_get64(sb + 80), (unsigned long long)cb_get64(sb + 88),
              (unsigned long long)cb_get64(sb + 120));
    hex(b, sb + 104, 16);
    jb_printf(b, ",\n    \"devtab_pages\": [");
    for (unsigned k = 0; k < ndevtab; k++)
        jb_printf(b, "%s%llu", k ? ", " : "",
                  (unsigned long long)cb_get64(sb + CB_SB_DEVTAB_OFF + 8 * k));
    jb_printf(b, "]\n  },\n");
}

static int dump_externals(struct dumper *D, const unsigned char *sb, unsigned char *pg)
{
    struct jbuf *b = D->b;
    int first = 1;
    jb_printf(b, "  \"externals\": [");
    for (unsigned i = 0; i < CB_MAX_EXTERNALS; i++) {
        uint64_t page = cb_get64(sb + CB_SB_EXT_OFF + 8 * i);
        if (!page)
            continue;
        int rc = read_meta(D, pg, page, CB_PT_EXT);
        if (rc)
            return rc;
        uint32_t len = cb_get32(pg + 40);
        if (len > CB_PATH_MAX)
            return CB_ECORRUPT;
        jb_printf(b, "%s\n    {\"id\": %u, \"page\": %llu, \"size\": %llu, \"path\": ",
                  first ? "" : ",", i + 1, (unsigned long long)page,
                  (unsigned long long)cb_get64(pg + 32));
        jb_str(b, (const char *)pg + CB_EXT_PATH_OFF, len);
        jb_printf(b, "}");
        first = 0;
    }
    jb_printf(b, "%s],\n", first ? "" : "\n  ");
    return 0;
}

static int dump_device(struct dumper *D, const unsigned char *q, int first)
{
    struct jbuf *b = D->b;
    struct cb_store *p = D->p;
    uint32_t id = cb_get32(q), flags = cb_get32(q + 4), nlen = cb_get32(q + 52);
    uint64_t size = cb_get64(q + 8), root = cb_get64(q + 16);
    uint32_t depth = cb_get32(q + 24);
    if (nlen > CB_NAME_MAX || size > CB_MAX_DEV_SIZE ||
        depth != cb_map_depth((size + p->block_size - 1) >> p->block_shift))
        return CB_ECORRUPT;
    jb_printf(b, "%s\n    {\"id\": %u, \"name\": ", first ? "" : ",", id);
    jb_str(b, (const char *)q + 64, nlen);
    jb_printf(b, ", \"size\": %llu, \"flags\": %u, \"readonly\": %s, \"depth\": %u,"
                 " \"birth_time\": %u, \"snap_time\": %u, \"origin_id\": %u,"
                 " \"external_id\": %u, \"created_ns\": %llu, \"root\": %llu,"
                 "\n      \"mappings\": [",
              (unsigned long long)size, flags, (flags & CB_DEV_READONLY) ? "true" : "false",
              depth, cb_get32(q + 28), cb_get32(q + 32), cb_get32(q + 36), cb_get32(q + 48),
              (unsigned long long)cb_get64(q + 40), (unsigned long long)root);
    D->have = 0;
    D->first = 1;
    D->nentries = 0;
    int rc = 0;
    if (root) {
        D->lvl = calloc(depth + 1, sizeof *D->lvl);
        if (!D->lvl)
            return CB_ENOMEM;
        for (unsigned l = 0; l <= depth; l++)
            if (!(D->lvl[l] = malloc(CB_PAGE)))
                rc = CB_ENOMEM;
        if (!rc)
            rc = walk(D, root, depth, 0);
        for (unsigned l = 0; l <= depth; l++)
            free(D->lvl[l]);
        free(D->lvl);
        D->lvl = NULL;
    }
    if (rc)
        return rc;
    run_emit(D);
    jb_printf(b, "%s],\n      \"mapped_entries\": %llu}", D->first ? "" : "\n      ",
              (unsigned long long)D->nentries);
    return 0;
}

static int dump_devices(struct dumper *D, const unsigned char *sb, unsigned ndevtab,
                        unsigned char *pg)
{
    struct jbuf *b = D->b;
    int first = 1, rc;
    jb_printf(b, "  \"devices\": [");
    /* one device-table page at a time: pg holds it while its trees are walked */
    for (unsigned k = 0; k < ndevtab; k++) {
        if ((rc = read_meta(D, pg, cb_get64(sb + CB_SB_DEVTAB_OFF + 8 * k), CB_PT_DEVTAB)))
            return rc;
        for (unsigned j = 0; j < CB_DEVTAB_RECS; j++) {
            const unsigned char *q = pg + CB_HDR + CB_DEVREC_SIZE * j;
            if (cb_get32(q) == 0)
                continue;
            if ((rc = dump_device(D, q, first)))
                return rc;
            first = 0;
        }
    }
    jb_printf(b, "%s],\n", first ? "" : "\n  ");
    return 0;
}

static int dump_freelog(struct dumper *D, uint64_t page, unsigned char *pg)
{
    struct jbuf *b = D->b;
    int first = 1;
    jb_printf(b, "  \"free_log\": {\"pages\": [");
    /* pages first, then runs: a second pass keeps the JSON in one piece */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t pgno = page, hops = 0;
        first = 1;
        while (pgno) {
            if (hops++ >= D->meta_pages)
                return CB_ECORRUPT; /* a loop */
            int rc = read_meta(D, pg, pgno, CB_PT_FREELOG);
            if (rc)
                return rc;
            /* held runs (level CB_FREELOG_HELD) say which commit freed them */
            uint32_t n = cb_get32(pg + 40), held = cb_get16(pg + 28) == CB_FREELOG_HELD;
            if (n > (held ? CB_HELDLOG_MAX : CB_FREELOG_MAX) || cb_get16(pg + 28) > CB_FREELOG_HELD)
                return CB_ECORRUPT;
            if (pass == 0) {
                jb_printf(b, "%s%llu", first ? "" : ", ", (unsigned long long)pgno);
                first = 0;
            }
            for (uint32_t i = 0; pass == 1 && i < n; i++) {
                const unsigned char *e = pg + 48 + (held ? 24 : 16) * i + (held ? 8 : 0);
                jb_printf(b, "%s\n    {\"start\": %llu, \"count\": %llu", first ? "" : ",",
                          (unsigned long long)cb_get64(e), (unsigned long long)cb_get64(e + 8));
                if (held)
                    jb_printf(b, ", \"held_since\": %llu", (unsigned long long)cb_get64(e - 8));
                jb_printf(b, "}");
                first = 0;
            }
            pgno = cb_get64(pg + 32);
        }
        if (pass == 0)
            jb_printf(b, "], \"runs\": [");
        else
            jb_printf(b, "%s]},\n", first ? "" : "\n  ");
    }
    return 0;
}

static int dump_run(struct cb_store *p, struct jbuf *b)
{
    unsigned char *sb = malloc(CB_PAGE), *pg = malloc(CB_PAGE);
    struct dumper D = {.p = p, .b = b};
    int rc = sb && pg ? 0 : CB_ENOMEM;
    uint64_t slot = p->generation % 2;
    if (!rc)
        rc = cb_io_pread(p->meta, sb, CB_PAGE, slot * CB_PAGE);
    if (!rc && (cb_page_verify(sb, CB_PT_SUPER, slot, p->generation) ||
                cb_get64(sb + 16) != p->generation))
        rc = CB_ECORRUPT;
    unsigned ndevtab = rc ? 0 : cb_get32(sb + 96);
    if (!rc && ndevtab > CB_SB_DEVTAB_MAX)
        rc = CB_ECORRUPT;
    if (!rc) {
        D.meta_pages = cb_get64(sb + 80);
        D.sb_time = (uint32_t)cb_get64(sb + 64);
        jb_printf(b, "{\n");
        dump_super(&D, sb, ndevtab);
        rc = dump_slots(&D, pg);
    }
    if (!rc)
        rc = dump_externals(&D, sb, pg);
    if (!rc)
        rc = dump_devices(&D, sb, ndevtab, pg);
    if (!rc)
        rc = dump_freelog(&D, cb_get64(sb + 88), pg);
    if (!rc) {
        int pending = p->meta_changed || p->map.ndirty || p->sm.pending.n;
        jb_printf(b, "  \"uncommitted\": %s\n}\n", pending ? "true" : "false");
    }
    free(sb);
    free(pg);
    return rc ? rc : b->err;
}

int cb_dump_run(struct cb_store *p, char **json, size_t *len)
{
    CB_MUST_READ(p);
    struct jbuf b = {NULL, 0, 0, 0};
    int rc = dump_run(p, &b);
    if (rc) {
        free(b.s);
        return rc;
    }
    *json = b.s;
    *len = b.n;
    return 0;
}
