/* transfer_check.c — per-block CRC-32C of a state transfer (see transfer_check.h). */
#include "transfer_check.h"

#include "../../common/crc32c.h"

size_t transfer_blocks(size_t bytes) {
    return (bytes + TRANSFER_BLOCK_BYTES - 1) / TRANSFER_BLOCK_BYTES;
}

void transfer_checksum(const void *buf, size_t bytes, uint32_t *out, int parallel) {
    const unsigned char *p = buf;
    long n = (long)transfer_blocks(bytes);
#pragma omp parallel for schedule(static) if (parallel && n > 1)
    for (long i = 0; i < n; i++) {
        size_t off = (size_t)i * TRANSFER_BLOCK_BYTES;
        size_t len = bytes - off < TRANSFER_BLOCK_BYTES ? bytes - off : TRANSFER_BLOCK_BYTES;
        out[i] = moe_crc32c(0, p + off, len);
    }
}

long transfer_verify(const void *buf, size_t bytes, const uint32_t *want, uint32_t *scratch,
                     int parallel, uint32_t *got) {
    transfer_checksum(buf, bytes, scratch, parallel);
    size_t n = transfer_blocks(bytes);
    for (size_t i = 0; i < n; i++)
        if (scratch[i] != want[i]) {
            *got = scratch[i];
            return (long)i;
        }
    return -1;
}
