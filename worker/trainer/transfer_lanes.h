/*
 * transfer_lanes.h — moving a slot's state between two ranks over several data-plane channels
 * at once, each block checksummed as it goes (docs/recovery.md, "Checked transfers").
 *
 * Owns: cutting a list of pieces into chunks of TRANSFER_LANE_CHUNK_BYTES (whole checksum
 * blocks, so that a chunk's blocks are the piece's blocks), dealing the chunks round-robin to
 * TRANSFER_LANES lanes (one channel and one thread each: the calling thread runs the first),
 * and, per chunk, the sender's CRC-32C of its blocks just before it goes and the receiver's
 * just after it arrived, while the bytes are still in the cache. So a restore pays for no
 * separate pass over the state on either side, and the receiver's copies (and the page faults
 * of a new holder's fresh arenas) run on as many cores as there are lanes. Both ends deal the
 * same chunks to the same lanes, so each channel carries the same sequence on both.
 * Never: decides what the pieces are, sends the checksums, or judges them (replica.c does).
 */
#ifndef MOE_TRANSFER_LANES_H
#define MOE_TRANSFER_LANES_H

#include "../../common/status.h"
#include "../comm/comm.h"

#include <stddef.h>
#include <stdint.h>

#define TRANSFER_LANES 2
#define TRANSFER_LANE_CHUNK_BYTES ((size_t)8 << 20)

struct lane_piece {
    void *p;
    size_t bytes;
    const uint32_t *sum; // sender: the checksums to send for it as they are (a buddy's copy
                         // keeps its sender's), or NULL: computed chunk by chunk
};

/* Sends the n pieces to `to`; sum (the pieces' transfer_blocks, one after another) gets the
 * checksum of every block, each made before its block went out. `flip`: NULL, or a byte of
 * a piece flipped after its block's checksum and back once its chunk is sent (chaos). */
moe_status transfer_lanes_send(struct comm *c, int to, const struct lane_piece *pc, int n,
                               uint32_t *sum, unsigned char *flip);
/* Receives the n pieces from `from` into their buffers; got: the checksum of every block
 * as it arrived. */
moe_status transfer_lanes_recv(struct comm *c, int from, const struct lane_piece *pc, int n,
                               uint32_t *got);

#endif
