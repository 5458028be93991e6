/* transfer_check.c — per-block CRC-32C of a state transfer (see transfer_check.h). */
#include "transfer_check.h"

#include "../../common/crc32c.h"

size_t transfer_blocks(size_t bytes) {
    return (bytes + TRANSFER_BLOCK_BYTES - 1) / TRANSFER_BLOCK_BYTES;
}

/* Whole blocks three at a time (moe_crc32c_3: three chains in one loop), over the threads;
 * the last one or two whole blocks and the short tail one by one. */
void transfer_checksum(const void *buf, size_t bytes, uint32_t *out, int parallel) {
    const unsigned char *p = buf;
    const size_t B = TRANSFER_BLOCK_BYTES;
    long whole = (long)(bytes / B), triples = whole / 3;
#pragma omp parallel for schedule(static) if (parallel && triples > 1)
    for (long t = 0; t < triples; t++) {
        const unsigned char *q = p + (size_t)t * 3 * B;
        const void *three[3] = {q, q + B, q + 2 * B};
        moe_crc32c_3(three, B, out + 3 * t);
    }
    for (long i = 3 * triples; i < whole; i++) out[i] = moe_crc32c(0, p + (size_t)i * B, B);
    if (bytes % B) out[whole] = moe_crc32c(0, p + (size_t)whole * B, bytes % B);
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
