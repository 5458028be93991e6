/*
 * export_state.h — a job's export in progress, as data (docs/recovery.md, "Export and resume").
 *
 * Owns: the record of one export from the job's end (FAILED or CANCELLED) to the manifest:
 * the phase, what each bound worker's fence answered (the copies it holds), the step chosen,
 * and for each slot index the worker asked to write it and what it answered. struct job
 * points to it; it is not persisted (the manifest, JobInfo.export, is).
 * Never: decides anything (policy/export.c drives an export through these fields).
 */
#ifndef MOE_COORD_EXPORT_STATE_H
#define MOE_COORD_EXPORT_STATE_H

#include "recovery_state.h"

#include <stdint.h>

enum export_phase { EXP_FENCING, EXP_WRITING };

/* One slot index's file: who was asked to write it, and what came back. */
struct export_slot {
    char worker_id[24];  // "" : no worker holds a copy at the step (nobody asked)
    int answered, ok;
    char host[128];
    char path[1200];
    int64_t bytes;
    uint32_t crc32c;
    char why[300];       // !ok: the worker's error, or why nobody holds it
};

struct job_export {
    enum export_phase phase;
    uint64_t gen;                // the round of calls in flight; older answers are dropped
    int sending, pending;
    int n;                       // pods * slots
    struct fence_answer *ans;    // (n) what each bound slot's worker answered
    int64_t step;                // the step exported (-1: none held)
    int slots;                   // slot indices
    struct export_slot *out;     // (slots)
    int64_t started_ms;
};

/* Frees x and what it holds (NULL: nothing); state/jobs.c, beside the recovery's record. */
void job_export_free(struct job_export *x);

#endif
