/*
 * membership.h — who is in the cluster and what each worker should be doing (membership.c).
 */
#ifndef MOE_COORD_MEMBERSHIP_H
#define MOE_COORD_MEMBERSHIP_H

#include "../state/workers.h"

/* A well-formed RegisterWorker (the handler checked its fields and who calls): `known` is the
 * worker whose own credential the call carried, re-registering, and gets its record updated;
 * NULL makes a new worker with the next id and a new credential. One that still runs the slot
 * we bound it to is reattached, one that no longer does has lost that slot (faults.c). It is
 * then judged from `peer` (rpc_call_peer) and probed (reachability.h). *out is the worker.
 * The caller answers, then runs a schedule pass (a new worker may take a queued job). */
moe_status membership_register(struct coordinator *co, const Moed__V1__RegisterRequest *req,
                               struct worker *known, const char *peer, struct worker **out);
/* A Heartbeat of worker w (the caller, proven by its credential): fills resp (reregister,
 * stop_job, refused). */
void membership_heartbeat(struct coordinator *co, struct worker *w,
                          const Moed__V1__HeartbeatRequest *req, Moed__V1__HeartbeatResponse *resp);
/* The monitor's tick: workers silent past the heartbeat timeout are dead. A tick that comes
 * late by half the timeout or more (the coordinator itself stood still: a blocked disk, a
 * starved process) judges no one: the heartbeats that waited meanwhile are read first. */
void membership_check(struct coordinator *co, int64_t now);
/* The idle heartbeat interval to tell w now (0: idle heartbeats are off), which it may use
 * from its next heartbeat on: it grows with the idle workers (--idle-heartbeats-per-s), and
 * w's silence while idle is judged by the longest of the last two it was told. O(1). */
long membership_idle_told(struct coordinator *co, struct worker *w);
/* How often a training worker reports its steps now (StepReportResponse.report_interval_ms):
 * once a second, less often as more workers train (--step-reports-per-s), never less often
 * than the heartbeat interval. O(1). */
long membership_report_interval(const struct coordinator *co);
/* After the store was loaded: each known worker may be using the interval the coordinator
 * before the restart told it (as many idle workers, the same interval), until it registers
 * again. */
void membership_loaded(struct coordinator *co);

#endif
