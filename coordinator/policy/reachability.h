/*
 * reachability.h — whether the coordinator can use a worker at the address it advertised.
 *
 * Owns: the judgement made at each registration (docs/operations.md, "Addresses"): a worker
 * whose Worker service or data-plane address is loopback while the coordinator is not, or
 * whose connection came from another host, is refused at once (common/netaddr.h's rule); any
 * other is probed — one cheap call (worker_call_probe) with the worker's credential, over TLS
 * when configured — and is schedulable only once the probe answered. A failed probe is
 * diagnosed by a dial of its own (proto/diagnose.h, on libuv's thread pool: never on the loop)
 * so that the reason names the TLS mistake, and the worker is probed again, from its
 * heartbeats, after a backoff (1 s doubling to 60 s). The reason is the worker's `refused`:
 * in GetCluster, in the RegisterWorker and Heartbeat answers, in one WARN line when it changes.
 * Cost: one probe per registration and per backoff period of a refused worker, never per
 * heartbeat.
 * Never: marks a worker dead or unbinds it (a BUSY worker re-registering keeps its slot while
 * it is probed; membership.c and faults.c judge liveness), or blocks the loop.
 */
#ifndef MOE_COORD_REACHABILITY_H
#define MOE_COORD_REACHABILITY_H

#include "../state/workers.h"

#define PROBE_BACKOFF_MIN_MS 1000
#define PROBE_BACKOFF_MAX_MS 60000
#define PROBE_DIAGNOSE_S 3.0 // the diagnosing dial's bound

/* A registration of w (its record updated, its channel open) from `peer` (rpc_call_peer):
 * refused at once for a loopback address, else probed. */
void reach_registered(struct coordinator *co, struct worker *w, const char *peer);
/* A heartbeat of w at `now`: a worker refused by a failed probe is probed again once its
 * backoff has passed. */
void reach_heartbeat(struct coordinator *co, struct worker *w, int64_t now);

#endif
