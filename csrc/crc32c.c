/*
 * crc32c.c - CRC-32C with the SSE4.2 instruction when the CPU has it (three
 * streams interleaved for long buffers) and a slicing-by-8 table otherwise.
 * Both give the same value; the choice is made once, on first use.
 */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82F63B78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static int table_ready;

static void build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (POLY & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len)
{
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE))
        build_table(); /* idempotent; racing builders write the same values */
    while (len && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc; /* little-endian hosts only reach here in the same order */
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
              table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
              table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
/*
 * Three lanes at once.  The crc32 instruction takes 3 cycles and can start
 * every cycle, so one dependent chain runs at a third of its throughput.
 * Runs of 3 * LANE bytes are split into three lanes checksummed side by
 * side (the second and third from a zero state), then joined: the register
 * is linear, so the state after A||B||C is
 *     crcA * x^(8 * 2 LANE)  ^  crcB * x^(8 * LANE)  ^  crcC   (mod P).
 * Multiplying by those two constants goes through byte tables built once.
 */
#define LANE 1360u /* 3 lanes = 4080 bytes: one run per 4 KiB sub-block */

static uint32_t shift_tab[2][4][256]; /* [0]: x^(8 LANE), [1]: x^(16 LANE) */
static int shift_ready;

/* a * b mod P, reflected (the top bit is x^0) */
static uint32_t gf_mul(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;
    for (uint32_t m = 0x80000000u; m; m >>= 1) {
        if (a & m)
            prod ^= b;
        b = (b >> 1) ^ (POLY & (0u - (b & 1u))); /* b *= x */
    }
    return prod;
}

static void build_shift(void)
{
    uint32_t k = 0x80000000u; /* x^0 */
    for (unsigned t = 0; t < 2; t++) {
        for (unsigned i = 0; i < 8 * LANE; i++)
            k = (k >> 1) ^ (POLY & (0u - (k & 1u)));
        for (unsigned b = 0; b < 4; b++)
            for (unsigned v = 0; v < 256; v++)
                shift_tab[t][b][v] = gf_mul((uint32_t)v << (8 * b), k);
    }
    __atomic_store_n(&shift_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t shift(unsigned t, uint32_t c)
{
    return shift_tab[t][0][c & 0xff] ^ shift_tab[t][1][(c >> 8) & 0xff] ^
           shift_tab[t][2][(c >> 16) & 0xff] ^ shift_tab[t][3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    if (len >= 3 * LANE && !__atomic_load_n(&shift_ready, __ATOMIC_ACQUIRE))
        build_shift(); /* idempotent; racing builders write the same values */
    while (len >= 3 * LANE) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < LANE; i += 8) {
            uint64_t wa, wb, wd;
            memcpy(&wa, p + i, 8);
            memcpy(&wb, p + LANE + i, 8);
            memcpy(&wd, p + 2 * LANE + i, 8);
            a = __builtin_ia32_crc32di(a, wa);
            b = __builtin_ia32_crc32di(b, wb);
            d = __builtin_ia32_crc32di(d, wd);
        }
        c = shift(1, (uint32_t)a) ^ shift(0, (uint32_t)b) ^ (uint32_t)d;
        p += 3 * LANE;
        len -= 3 * LANE;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t cb_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    crc = ~crc;
#if defined(__x86_64__)
    static int have_hw = -1;
    if (have_hw < 0)
        have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (have_hw)
        return ~crc_hw(crc, p, len);
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    {
        while (len--) {
            crc ^= *p++;
            for (int k = 0; k < 8; k++)
                crc = (crc >> 1) ^ (POLY & (0u - (crc & 1u)));
        }
        return ~crc;
    }
#endif
    return ~crc_sw(crc, p, len);
}
