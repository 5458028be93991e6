/*
 * handshake.h — layer 4 of worker/comm: connecting a comm's tcp links.
 *
 * Owns: comm_connect_all, the one way comm_open gets authenticated links.
 * Never: moves payload (engine.h does, once the links are up).
 */
#ifndef MOE_COMM_HANDSHAKE_H
#define MOE_COMM_HANDSHAKE_H

#include "comm_internal.h"

/* Connects and authenticates every tcp link of the comm (the lower rank dials, one
 * connection per channel), under c->open_deadline. `l` may be NULL when no lower rank is a
 * tcp peer. */
moe_status comm_connect_all(struct comm *c, const struct comm_config *cfg,
                            struct comm_listener *l);

#endif
