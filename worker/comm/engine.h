/*
 * engine.h — layer 4 of worker/comm: moving the transfers of one operation.
 *
 * Owns: comm_exchange, the one way collectives.c moves bytes.
 * Never: exposes how a peer is reached (transport.h is below it, not for its callers).
 */
#ifndef MOE_COMM_ENGINE_H
#define MOE_COMM_ENGINE_H

#include "comm_internal.h"

/* Moves every xfer to completion, all peers at once (never send-then-receive), failing at
 * once on a broken connection or comm_abort, and with MOE_EUNAVAILABLE naming the rank when
 * a peer makes no progress for timeout_s; any such failure marks the comm broken. Returns
 * MOE_EINVAL (after completing every transfer, the comm still usable) when a peer disagreed
 * about a size; the message names it. */
moe_status comm_exchange(struct comm *c, int channel, struct xfer *x, int nx);

#endif
