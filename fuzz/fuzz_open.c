/*
 * fuzz_open.c - libFuzzer target for the metadata parser and the open path.
 *
 * The input is the metadata file of a pool.  Each run writes it into a
 * scratch pool directory (on tmpfs when available) next to a sparse data
 * file as long as the input's superblocks ask for (capped), then:
 *   1. opens it read-only: lists devices, reads blocks at the start, middle
 *      and end of each, asks for extents, changed bits and usage, checks
 *      and dumps the pool, closes;
 *   2. opens it writable: reads, writes into the first writable device,
 *      snapshots and deletes, flushes, checks, closes; and opens it once
 *      more read-only to check what that commit wrote.
 * Any crash, sanitizer report, leak, hang (-timeout) or huge allocation
 * (-rss_limit_mb / -malloc_limit_mb) is a finding: DESIGN.md section 2,
 * invariant 6 says bad bytes give an error, never a crash.
 *
 * Checksums: random mutations almost never keep a CRC-32C valid, so most
 * inputs are resealed before use (every page whose magic names a page type
 * gets its checksum recomputed), which lets the fuzzer reach the semantic
 * checks behind the checksum.  One input in eight (by a hash of its bytes)
 * is used as it is, to keep the checksum paths fuzzed too.
 *
 * Mutations: half of them are libFuzzer's own byte-level ones, the other
 * half set one aligned field of one page (a header field, a superblock
 * field, a leaf entry, a child pointer, a device record, a free-log run)
 * to an "interesting" value: 0, 1, all ones, powers of two, the number of
 * another page of the file, a field's neighbour value.  Together with the
 * resealing this is what reaches the checks behind the checksums.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cowblock.h"
#include "meta.h"

#define MAX_DATA (1ull << 30) /* sparse data file cap: keeps O(nblocks) walks short */
#define MAX_META (16u << 20)

static char dir[256], meta_path[300], data_path[300];
static unsigned char *scratch;

static void cleanup(void)
{
    unlink(meta_path);
    unlink(data_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *base = getenv("FUZZ_TMPDIR");
    if (!base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/cowblock-fuzz-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        abort();
    }
    snprintf(meta_path, sizeof meta_path, "%s/meta", dir);
    snprintf(data_path, sizeof data_path, "%s/data", dir);
    scratch = malloc(MAX_META);
    if (!scratch)
        abort();
    atexit(cleanup);
    return 0;
}

static uint32_t fnv(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int known_type(uint32_t t)
{
    return t == CB_PT_SUPER || t == CB_PT_LEAF || t == CB_PT_NODE || t == CB_PT_DEVTAB ||
           t == CB_PT_EXT || t == CB_PT_FREELOG;
}

static void reseal(unsigned char *m, size_t n)
{
    for (size_t off = 0; off + CB_PAGE <= n; off += CB_PAGE) {
        unsigned char *pg = m + off;
        uint32_t t = cb_get32(pg);
        if (known_type(t))
            cb_page_seal(pg, t, cb_get64(pg + 8), cb_get64(pg + 16), cb_get32(pg + 24),
                         cb_get16(pg + 28), cb_get16(pg + 30));
    }
}

/* Bytes the data file must span for the input's superblocks (capped). */
static uint64_t data_size(const unsigned char *m, size_t n)
{
    uint64_t want = 0;
    for (size_t s = 0; s < 2 && (s + 1) * CB_PAGE <= n; s++) {
        const unsigned char *sb = m + s * CB_PAGE;
        uint64_t bs = cb_get32(sb + 52), nb = cb_get64(sb + 56);
        if (bs && nb <= MAX_DATA / bs && nb * bs > want)
            want = nb * bs;
    }
    return want ? want : 1 << 20;
}

static int write_file(const char *path, const void *buf, size_t len, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    int rc = 0;
    if (len && write(fd, buf, len) != (ssize_t)len)
        rc = -1;
    if (!rc && size && ftruncate(fd, (off_t)size) != 0)
        rc = -1;
    close(fd);
    return rc;
}

static void read_some(cb_pool *p, cb_dev *d, uint64_t bs)
{
    cb_devinfo info;
    if (cb_dev_info(d, &info))
        return;
    unsigned char *buf = malloc(bs);
    if (!buf)
        return;
    uint64_t offs[3] = {0, info.size / 2, info.size > bs ? info.size - bs : 0};
    for (int i = 0; i < 3; i++) {
        uint64_t len = info.size - offs[i] < bs ? info.size - offs[i] : bs;
        cb_dev_read(d, buf, len, offs[i]);
    }
    uint64_t idx = 0;
    if (info.size >= bs)
        cb_dev_read_blocks(d, &idx, 1, buf);
    free(buf);
    uint64_t pairs[16];
    size_t count;
    cb_dev_extents(d, pairs, 8, &count);
    uint64_t nbits = (info.size + bs - 1) / bs;
    if (nbits <= (1u << 20)) {
        uint8_t *bits = malloc(nbits / 8 + 1);
        if (bits) {
            cb_dev_changed(d, bits, nbits / 8 + 1);
            free(bits);
        }
    }
    cb_usage u;
    cb_dev_usage(d, &u);
    (void)p;
}

static void walk(cb_pool *p, int write)
{
    cb_stat st;
    if (cb_pool_stat(p, &st))
        return;
    size_t n = 0;
    if (cb_pool_list(p, NULL, 0, &n))
        return;
    cb_devinfo *infos = calloc(n ? n : 1, sizeof *infos);
    if (!infos)
        return;
    size_t got;
    if (cb_pool_list(p, infos, n, &got) == 0) {
        for (size_t i = 0; i < got && i < n && i < 8; i++) {
            cb_dev *d;
            if (cb_dev_open(p, infos[i].name, &d))
                continue;
            read_some(p, d, st.block_size);
            if (infos[i].external_id) {
                char path[CB_PATH_MAX + 1];
                cb_pool_external_path(p, infos[i].external_id, path, sizeof path);
            }
            if (write && !(infos[i].flags & CB_DEV_READONLY)) {
                static unsigned char blk[8192];
                memset(blk, 0xa5, sizeof blk);
                uint64_t size = infos[i].size;
                uint64_t len = size < sizeof blk ? size : sizeof blk, tail = size < 100 ? size : 100;
                cb_dev_write(d, blk, len, 0);
                cb_dev_write(d, blk, tail, size - tail);
                cb_dev_discard(d, infos[i].size < 4096 ? infos[i].size : 4096, 0);
                write = 2; /* once */
            }
            cb_dev_close(d);
            if (write == 2)
                break;
        }
        if (write && got) {
            cb_pool_snapshot(p, infos[0].name, "fuzz-snapshot", 0);
            cb_pool_delete(p, infos[(got < n ? got : n) - 1].name);
            cb_pool_create_device(p, "fuzz-new", 1 << 20, NULL);
            cb_pool_flush(p);
        }
    }
    free(infos);
    cb_usage us[4];
    size_t cnt;
    cb_pool_usage(p, us, 4, &cnt);
    cb_check chk;
    char msg[512];
    cb_pool_check(p, 0, &chk, msg, sizeof msg);
    char *json;
    size_t len;
    if (cb_pool_dump(p, &json, &len) == 0)
        cb_free(json);
}

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

static uint64_t rnd(unsigned *seed)
{
    return (uint64_t)rand_r(seed) << 31 ^ (uint64_t)rand_r(seed);
}

/* An aligned field of a page of type t: (offset, size). */
static void pick_field(uint32_t t, unsigned *seed, unsigned *off, unsigned *size)
{
    static const uint8_t hdr[][2] = {{8, 8}, {16, 8}, {24, 4}, {28, 2}, {30, 2}};
    static const uint16_t sb[][2] = {{40, 4}, {44, 4}, {48, 4}, {52, 4}, {56, 8}, {64, 8},
                                     {72, 8}, {80, 8}, {88, 8}, {96, 4}, {128, 8}, {136, 8},
                                     {640, 8}, {648, 8}, {656, 8}};
    static const uint8_t dev[][2] = {{0, 4}, {4, 4}, {8, 8}, {16, 8}, {24, 4}, {28, 4},
                                     {32, 4}, {36, 4}, {40, 8}, {48, 4}, {52, 4}, {64, 1}};
    unsigned r = (unsigned)rnd(seed);
    if (r % 5 == 0) {
        *off = hdr[r / 5 % 5][0];
        *size = hdr[r / 5 % 5][1];
        return;
    }
    r /= 5;
    switch (t) {
    case CB_PT_SUPER:
        *off = sb[r % 15][0];
        *size = sb[r % 15][1];
        break;
    case CB_PT_LEAF: {
        static const uint8_t e[][2] = {{0, 8}, {8, 8}, {16, 8}, {24, 4}, {28, 4}};
        unsigned i = r % CB_LEAF_ENTRIES, k = r / CB_LEAF_ENTRIES % 5;
        *off = CB_HDR + 32 * i + e[k][0];
        *size = e[k][1];
        break;
    }
    case CB_PT_NODE:
        *off = CB_HDR + 8 * (r % CB_NODE_FANOUT);
        *size = 8;
        break;
    case CB_PT_DEVTAB: {
        unsigned j = r % CB_DEVTAB_RECS, k = r / CB_DEVTAB_RECS % 12;
        *off = CB_HDR + CB_DEVREC_SIZE * j + dev[k][0];
        *size = dev[k][1];
        break;
    }
    case CB_PT_EXT:
        *off = r % 3 == 0 ? 32 : r % 3 == 1 ? 40 : CB_EXT_PATH_OFF + r / 3 % 64;
        *size = r % 3 == 0 ? 8 : r % 3 == 1 ? 4 : 1;
        break;
    case CB_PT_FREELOG:
        *off = r % 4 == 0 ? 32 : r % 4 == 1 ? 40 : 48 + 16 * (r / 4 % CB_FREELOG_MAX) + 8 * (r % 2);
        *size = r % 4 == 1 ? 4 : 8;
        break;
    default:
        *off = (r % (CB_PAGE / 8)) * 8;
        *size = 8;
    }
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    unsigned s = seed;
    size_t npages = size / CB_PAGE;
    if (npages == 0 || rnd(&s) % 2)
        return LLVMFuzzerMutate(data, size, max_size);
    for (int n = 1 + (int)(rnd(&s) % 3); n > 0; n--) {
        unsigned char *pg = data + (rnd(&s) % npages) * CB_PAGE;
        unsigned off, fsize;
        pick_field(cb_get32(pg), &s, &off, &fsize);
        uint64_t old = fsize == 8 ? cb_get64(pg + off) : fsize == 4 ? cb_get32(pg + off)
                     : fsize == 2 ? cb_get16(pg + off) : pg[off];
        uint64_t v;
        switch (rnd(&s) % 10) {
        case 0: v = 0; break;
        case 1: v = 1; break;
        case 2: v = UINT64_MAX; break;
        case 3: v = 1ull << (rnd(&s) % 64); break;
        case 4: v = (1ull << (rnd(&s) % 64)) - 1; break;
        case 5: case 6: v = rnd(&s) % (npages + 2); break; /* another page */
        case 7: v = old + 1; break;
        case 8: v = old - 1; break;
        default: v = rnd(&s) % 256; break;
        }
        if (fsize == 8)
            cb_put64(pg + off, v);
        else if (fsize == 4)
            cb_put32(pg + off, (uint32_t)v);
        else if (fsize == 2)
            cb_put16(pg + off, (uint16_t)v);
        else
            pg[off] = (uint8_t)v;
    }
    return size;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    if (size > MAX_META)
        return -1;
    memcpy(scratch, in, size);
    if (fnv(in, size) % 8 != 0)
        reseal(scratch, size);
    if (write_file(meta_path, scratch, size, 0) || write_file(data_path, NULL, 0, data_size(scratch, size)))
        abort();
    cb_pool *p;
    if (cb_pool_open(dir, CB_OPEN_READONLY, &p) == 0) {
        walk(p, 0);
        cb_pool_close(p);
    }
    if (cb_pool_open(dir, 0, &p) == 0) {
        walk(p, 1);
        cb_pool_close(p);
        if (cb_pool_open(dir, CB_OPEN_READONLY, &p) == 0) {
            walk(p, 0);
            cb_pool_close(p);
        }
    }
    return 0;
}
