/* Compare cb_crc32c with the bitwise definition (see test_crc32c.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"

static uint32_t reference(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

int main(void)
{
    enum { MAX = 3 * 16384 + 64 };
    unsigned char *buf = malloc(MAX + 8);
    unsigned long checked = 0;
    srand(7);
    for (size_t i = 0; i < MAX + 8; i++)
        buf[i] = (unsigned char)rand();
    if (cb_crc32c(0, "123456789", 9) != 0xE3069283u) {
        printf("check value wrong: %08x\n", cb_crc32c(0, "123456789", 9));
        return 1;
    }
    size_t lens[] = {0, 1, 7, 8, 9, 4079, 4080, 4081, 4095, 4096, 4097, 8160, 8192,
                     12240, 16384, 16385, 3 * 16384, MAX};
    for (size_t a = 0; a < 8; a++) {
        for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
            size_t n = lens[k];
            uint32_t seed = (uint32_t)(a * 2654435761u);
            uint32_t want = reference(seed, buf + a, n);
            uint32_t got = cb_crc32c(seed, buf + a, n);
            /* in two pieces, as callers may feed it */
            uint32_t split = cb_crc32c(cb_crc32c(seed, buf + a, n / 3), buf + a + n / 3, n - n / 3);
            if (got != want || split != want) {
                printf("len %zu align %zu: got %08x split %08x want %08x\n", n, a, got, split, want);
                return 1;
            }
            checked++;
        }
    }
    for (int r = 0; r < 2000; r++) {
        size_t n = (size_t)rand() % MAX, a = (size_t)rand() % 8;
        if (cb_crc32c(5, buf + a, n) != reference(5, buf + a, n)) {
            printf("random len %zu align %zu differs\n", n, a);
            return 1;
        }
        checked++;
    }
    printf("checked %lu buffers\n", checked);
    free(buf);
    return 0;
}
