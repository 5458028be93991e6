/*
 * transitions.h — every change of a job's state, with what must go with it.
 *
 * Owns: the moves of jobs.h's state machine: a job admitted (QUEUED, stored with its first
 * event and the id counter), bound (RUNNING in a new epoch, its workers BUSY), requeued,
 * finished (SUCCEEDED, FAILED, CANCELLED). Each is stored, synced, with its event before any
 * worker or watcher hears of it (principle 5), and refused when the machine does not allow it.
 * The side effects of an ending live here too: a failed or cancelled job's workers are told to
 * stop (a recoverable mesh's after its export: export_due) and freed, its upload and its
 * recovery are dropped, its watchers' streams end.
 * Never: decides that a transition should happen (policies do), or sends RunSlot.
 */
#ifndef MOE_COORD_TRANSITIONS_H
#define MOE_COORD_TRANSITIONS_H

#include "jobs.h"
#include "workers.h"

/* Removes ended jobs for good: their records, steps and events in one synced batch, then
 * their model files, then from the table (freed: `del` holds dangling pointers after). Job
 * numbers are not reused (the meta counter stays). MOE_EINVAL, with nothing removed, when one
 * has not ended; MOE_EIO when the store refuses (nothing removed either). */
moe_status job_delete(struct coordinator *co, struct job *const *del, int n);

/* A new QUEUED job from a validated spec, stored with its "submitted" event and the advanced
 * job counter in one synced batch, then added to the table. `resume` (NULL: none): the
 * complete export it starts from (a copy is kept; its step is the job's committed step). */
moe_status job_admit(struct coordinator *co, const struct job_spec *spec,
                     const Moed__V1__ExportManifest *resume, struct job **out);

/* QUEUED -> RUNNING: binds slot k to chosen[k] in epoch + 1 and stores the binding with the
 * event "scheduled" (the workers' records in the same batch). On failure nothing changed. */
moe_status job_bind(struct coordinator *co, struct job *j, struct worker **chosen);

/* RUNNING -> QUEUED (a refusal before any step): every slot unbound, the workers that may have
 * started it told to stop (they stay bound until they say they have), event "requeued". */
void job_requeue(struct coordinator *co, struct job *j, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A final state with its event (`kind`, the message; the error for FAILED and CANCELLED): the
 * recovery in progress and an unfinished upload are dropped, the watchers' streams end.
 * MOE_EINVAL when the job already ended. */
moe_status job_finish(struct coordinator *co, struct job *j, Moed__V1__JobState state,
                      const char *kind, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* RUNNING -> FAILED because of slot k (k < 0: the mesh as a whole): a mesh's reason names the
 * slot and the workers of the ranks it mentions; every worker still bound is told to stop and
 * stays bound until it reports (or a heartbeat shows it idle). Nothing if not RUNNING. */
void job_fail(struct coordinator *co, struct job *j, int k, const char *kind, const char *fmt,
              ...) __attribute__((format(printf, 5, 6)));

/* QUEUED or RUNNING -> CANCELLED; a running job's workers are told to stop. MOE_EINVAL when it
 * already ended. */
moe_status job_cancel(struct coordinator *co, struct job *j);

#endif
