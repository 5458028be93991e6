/*
 * events.h — a job's events and the clients watching it.
 *
 * Owns: appending an event to a job (the job's record and the event in one store batch,
 * committed before anyone hears of it; a private copy in the job's ring of recent events), the
 * watchers of a job (WatchJob streams) and what they are sent: a JobUpdate for every event and
 * every reported step (recorded here too: the loss curve; of a mesh of more than
 * JOB_WATCH_SLOTS slots, slot (0, 0)'s steps only), the stream finished when the job ends. A
 * watcher that falls behind skips step updates, never events or the end.
 * Never: decides what happens (policies name the event), or blocks on a slow client.
 */
#ifndef MOE_COORD_EVENTS_H
#define MOE_COORD_EVENTS_H

#include "jobs.h"

/* Appends an event to j, stored with the job's record now (sync: on disk before it returns,
 * for decisions), then sent to its watchers. */
moe_status job_event(struct coordinator *co, struct job *j, int sync, const char *kind,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same, committed in one batch with the records already in `b` (consumed). */
moe_status job_event_batch(struct coordinator *co, struct job *j, struct store_batch *b,
                           int sync, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* An event stored now (not synced) without the job's record, which the next
 * jobs_flush_records writes: for what a worker tells again should the event's change be lost
 * (a reattachment), so that a thousand of them after a restart do not write the record, every
 * slot in it, a thousand times. */
moe_status job_event_deferred(struct coordinator *co, struct job *j, const char *kind,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Slot k's step metrics of the current epoch (n >= 1, steps ascending): its numbers for the
 * mesh view; from slot (0, 0), which speaks for the job, also the job's step, loss and speed
 * and the stored loss curve (stored at once, without fsync: metrics are not decisions). The
 * job's record follows at the next jobs_flush_records; then the watchers get an update. */
void job_record_steps(struct coordinator *co, struct job *j, int k,
                      Moed__V1__StepMetrics *const *m, size_t n);
/* Slot (0, 0)'s steps of the epoch before a recovery's, reported late: only stored, for the
 * curve (ListSteps). A step the new epoch computes again is stored again, with the same values
 * (every step replays bit for bit); the job's step, loss and slot figures follow the current
 * epoch alone. */
void job_record_late_steps(struct coordinator *co, struct job *j,
                           Moed__V1__StepMetrics *const *m, size_t n);

/* A JobUpdate's view of j (pointing into it; valid until it changes): the job, its last
 * metrics and ETA, and every slot and binding of a mesh of up to JOB_WATCH_SLOTS slots, or for
 * a bigger mesh none of them but a summary per pod (docs/protocol.md, "Watching"). */
#define JOB_WATCH_SLOTS 500
struct job_update {
    Moed__V1__JobUpdate u;
    struct job_view v;
    Moed__V1__PodSummary *pods, **pod_ptrs;
};
void job_update_fill(struct job_update *x, struct coordinator *co, const struct job *j);
void job_update_free(struct job_update *x);

/* Sends a JobUpdate to every watcher of j, with `new_event` if not NULL; finishes the
 * watchers' streams when the job has ended. */
void job_notify(struct coordinator *co, struct job *j, const Moed__V1__Event *new_event);
/* Adds `call` (a WatchJob stream whose first update went out) to j's watchers; it leaves the
 * list when its stream closes. */
moe_status job_watch(struct job *j, struct rpc_call *call);

#endif
