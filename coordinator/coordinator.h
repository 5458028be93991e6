/*
 * coordinator.h — the single controller's process: start, the monitor's tick, stop.
 *
 * Owns: bringing the coordinator up from its directory (RocksDB in DIR/db, uploaded models in
 * DIR/models): the store opened (waiting briefly for a dying predecessor's lock), the tables
 * loaded, recoveries that were in progress fenced again, the server started on its address
 * and the address file written; the monitor's tick (silent workers are dead, failure windows
 * that passed, a schedule pass); and the orderly way down (server, then pump, then store).
 * The layers it starts are described in state/state.h; docs/architecture.md walks one step
 * through them.
 * Never: handles a request or makes a decision itself (handlers/ and policy/ do), or exits on
 * a bad request.
 */
#ifndef MOE_COORDINATOR_H
#define MOE_COORDINATOR_H

#include "../common/knobs.h"
#include "state/state.h"

#include <uv.h>

/* The coordinator's flags (main.c reads them into a struct coordinator_config). */
extern const struct knob coordinator_knobs[];
extern const int coordinator_n_knobs;

/* Loads the store, binds the server and writes the address file. */
moe_status coordinator_start(struct coordinator *co, uv_loop_t *loop,
                             const struct coordinator_config *cfg);
/* Stops serving and releases everything; the loop then runs dry. */
void coordinator_stop(struct coordinator *co);

#endif
