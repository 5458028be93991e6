/*
 * transfer_check.h — the checksums that make a copy of a slot's state trustworthy on arrival
 * (docs/recovery.md, "Checked transfers").
 *
 * Owns: cutting a buffer into blocks of TRANSFER_BLOCK_BYTES (the last one shorter), the
 * CRC-32C of each block (common/crc32c.c), and comparing a received buffer's blocks with the
 * sender's. A sender computes the checksums from the state it sends, before it sends it, and
 * sends them after the data; the receiver recomputes them over what arrived and refuses the
 * copy at the first block that differs. Blocks, not one checksum per buffer: the blocks are
 * hashed three at a time per thread (three CRC chains in one loop) and over the OpenMP
 * threads, a mismatch names where it is, and a CRC-32C's guarantees
 * (every burst of up to 32 flipped bits, every odd number of flips) hold for any length but
 * its chance of missing random damage (2^-32) is per block.
 * Never: sends or receives (replica.c does), or decides what a mismatch means.
 */
#ifndef MOE_TRANSFER_CHECK_H
#define MOE_TRANSFER_CHECK_H

#include <stddef.h>
#include <stdint.h>

#define TRANSFER_BLOCK_BYTES ((size_t)1 << 20)

/* How many blocks `bytes` bytes are (0 for 0). */
size_t transfer_blocks(size_t bytes);

/* out[transfer_blocks(bytes)]: the CRC-32C of every block of buf; `parallel`: over the
 * OpenMP threads (the training thread), else on the calling thread alone (a helper thread
 * that must not compete with the training thread's team). */
void transfer_checksum(const void *buf, size_t bytes, uint32_t *out, int parallel);

/* The first block of buf whose CRC-32C is not want[i] (its value in *got), or -1 when every
 * block matches. `scratch` holds transfer_blocks(bytes) values. */
long transfer_verify(const void *buf, size_t bytes, const uint32_t *want, uint32_t *scratch,
                     int parallel, uint32_t *got);

#endif
