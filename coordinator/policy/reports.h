/*
 * reports.h — what a worker's reports about its job's slots mean (reports.c).
 * Each takes the job and the worker the report names (the handler found both).
 */
#ifndef MOE_COORD_REPORTS_H
#define MOE_COORD_REPORTS_H

#include "../state/jobs.h"
#include "../state/workers.h"

/* ReportStep. MOE_EINVAL when the steps do not ascend within 1..total_steps. *stop tells the
 * worker to stop (it does not play that slot in the current epoch). */
moe_status reports_step(struct coordinator *co, struct job *j, struct worker *w,
                        const Moed__V1__StepReport *req, int *stop);
/* ReportJobEnd: frees the worker, and decides what the slot's end means for the job (failed:
 * faults.c; done: the job SUCCEEDS once every slot ended ok and the model checked out).
 * MOE_EFORMAT: the uploaded model does not match what the worker reports (it may upload
 * again; the job stays RUNNING); MOE_EIO: it cannot be stored; MOE_EAUTH: it reports a model
 * but it is not the slot that writes it, or not the worker that uploaded it. */
moe_status reports_job_end(struct coordinator *co, struct job *j, struct worker *w,
                           const Moed__V1__JobEndReport *req);
/* UploadModel: a chunk of the model a running job's worker uploads. MOE_EAUTH: w is not the
 * worker bound to the writing slot (0, 0) in the current epoch; MOE_EINVAL: not now (the job is
 * not RUNNING, the chunk is out of order); MOE_EIO: it cannot be stored. */
moe_status reports_model_chunk(struct coordinator *co, struct job *j, const struct worker *w,
                               const Moed__V1__ModelChunk *req);

/* The slot a fault or restore report names, if w plays it in the job's current epoch (and the
 * report speaks for that epoch); -1: the report is stale and ignored; -2: the slot is outside
 * the mesh (MOE_EINVAL's message says so). */
int reports_slot(const struct job *j, const struct worker *w, int pod, int slot, uint64_t epoch);
/* (A ReportFault of slot k then goes to faults.c fault_reported, a ReportRestored to
 * recovery.c recovery_restored.) */

#endif
