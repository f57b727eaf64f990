/* crc32c.h - CRC-32C (Castagnoli), as used by iSCSI, ext4 and dm-persistent-data. */
#ifndef CB_CRC32C_H
#define CB_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* Continue a CRC-32C over buf.  Start with crc = 0; the result of one call
 * may be fed to the next to checksum data in pieces. */
uint32_t cb_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
