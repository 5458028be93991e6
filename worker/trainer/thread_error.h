/*
 * thread_error.h — the first failure of a helper thread's work, kept for the thread that waits.
 *
 * Owns: what the trainer's two helper threads (slot.c's gradient reducer, replica.c's buddy
 * copies and state hashes) do alike with a failure: keep the status with its message (the
 * message is per thread: moe_errmsg), so that the training thread, when it waits for the work,
 * takes it as its own failure.
 * Never: locks. The owner's mutex guards the struct around both calls.
 */
#ifndef MOE_THREAD_ERROR_H
#define MOE_THREAD_ERROR_H

#include "../../common/status.h"

#include <stdio.h>

struct thread_error {
    moe_status status; // the first failure since the last take; MOE_OK: none
    char msg[512];
};

/* On the helper: keeps s (with this thread's message) unless a failure is kept already. */
static inline void thread_error_keep(struct thread_error *e, moe_status s) {
    if (s == MOE_OK || e->status != MOE_OK) return;
    e->status = s;
    snprintf(e->msg, sizeof e->msg, "%s", moe_errmsg());
}

/* On the waiting thread: MOE_OK, or the kept failure as this thread's, its message after
 * `prefix`. Clears it. */
static inline moe_status thread_error_take(struct thread_error *e, const char *prefix) {
    moe_status s = e->status;
    e->status = MOE_OK;
    return s == MOE_OK ? MOE_OK : moe_fail(s, "%s%s", prefix, e->msg);
}

#endif
