/*
 * worker_calls.h — the calls the coordinator makes to workers' Worker service.
 *
 * Owns: building and sending RunSlot (every slot's data address in compact form, and a
 * recovery's restore step and sources: one request packed once per round, O(slots), that
 * every slot's call shares), StopJob, FenceSlot and the reachability probe, asynchronously on
 * the loop, with their deadlines. An
 * answer goes to the callback the policy gave, with a context naming the job, worker, epoch
 * and round it belongs to, so that a late answer to an older binding is recognised and dropped.
 * Never: decides what an answer means (the policy's callback does) or waits for one.
 */
#ifndef MOE_COORD_WORKER_CALLS_H
#define MOE_COORD_WORKER_CALLS_H

#include "jobs.h"
#include "workers.h"

#define FENCE_DEADLINE_S 1.0   // a killed worker is refused at once, a stopped one times out
#define REPAIR_FENCE_DEADLINE_S 10.0 // a repair's fence hashes every own copy (1.8 GB/s each)
#define RUN_SLOT_DEADLINE_S 10.0
#define STOP_JOB_DEADLINE_S 5.0
#define PROBE_DEADLINE_S 5.0   // the reachability probe (policy/reachability.c)

/* One RunSlot call of a binding round; `gen` tells the rounds of a recovery apart (0 when the
 * scheduler sends it). The callback frees it. */
struct assign_ctx {
    struct coordinator *co;
    char job_id[24];
    char worker_id[24];
    uint64_t epoch;
    uint64_t gen;
    int slot; // p * slots + s
};

/* RunSlot, with j's whole binding table (and, with `restore`, j->restore_step and
 * j->restore_from), to the worker of every slot; each answer goes to `cb`. A call that cannot
 * be sent is answered at once (UNAVAILABLE without a channel, INTERNAL otherwise); sending stops
 * when that answer changed the job's epoch or state, or (gen != 0) its recovery's round.
 * MOE_ENOMEM when nothing could be sent. */
moe_status worker_call_run_slots(struct coordinator *co, struct job *j, int restore, uint64_t gen,
                                 rpc_reply_cb cb);
/* StopJob for j's slots on w in `epoch` or older (its answer is only logged: its heartbeat will
 * say stop again). The epoch is the binding's that ends: a RunSlot of a newer one that reaches
 * the worker first keeps running (the calls may cross). */
void worker_call_stop(struct coordinator *co, const struct job *j, const struct worker *w,
                      uint64_t epoch);
/* StopJob, of j's current epoch, to every worker still bound to j. */
void worker_call_stop_all(struct coordinator *co, const struct job *j);
/* The reachability probe: StopJob of no job (a no-op the worker answers at once) on w's
 * channel, with its credential and over TLS when configured, exactly as a RunSlot would go. */
moe_status worker_call_probe(struct coordinator *co, const struct worker *w, rpc_reply_cb cb,
                             void *arg);
/* FenceSlot for j's current epoch to w; `cb` gets the FenceResponse. */
moe_status worker_call_fence(struct coordinator *co, const struct job *j, const struct worker *w,
                             rpc_reply_cb cb, void *arg);

#endif
