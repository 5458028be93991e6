/*
 * failure.c — how a running job ends badly, and whom it tells: StopJob to the slots still
 * bound, a slot's failure (a mesh waits for every slot's answer, or MESH_FAILURE_WINDOW_MS,
 * to name the slot that stopped answering rather than the first peer that noticed), a worker
 * declared dead by the monitor, and the reason text that names the slot, the worker and the
 * data-plane ranks an error mentions.
 * A recoverable mesh (mesh_recoverable) does not fail here when a slot is lost: the dead
 * worker is handed to recovery.c instead.
 * Never: recovers a job (recovery.c re-binds lost slots from the replicas), or decides that a
 * worker is dead by itself (the monitor in coordinator.c does, from heartbeats; a recovery's
 * fence round does for the workers that cannot answer it).
 */
#include "coordinator.h"

#include "../common/log.h"
#include "../proto/methods.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void stop_job_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    char *what = arg;
    if (res->code != GRPC_STATUS_OK)
        LOG_WARN("StopJob %s: %s: %s (its heartbeat will say stop again)", what,
                 rpc_code_name(res->code), res->details);
    free(what);
}

void coordinator_stop_worker(struct coordinator *co, struct job *j, struct worker *w) {
    if (!w->channel) return;
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = j->id;
    char *what = malloc(64);
    if (what) snprintf(what, 64, "%s on %s", j->id, w->id);
    rpc_call_async(co->pump, w->channel, RPC_WORKER_STOP_JOB, &ref.base,
                   &moed__v1__empty__descriptor, 5.0, stop_job_reply, what);
}

void coordinator_stop_workers(struct coordinator *co, struct job *j) {
    for (int i = 0; i < j->pods * j->slots; i++) {
        struct worker *w = coordinator_find_worker(co, j->bindings[i].worker_id);
        if (w && strcmp(w->job_id, j->id) == 0) coordinator_stop_worker(co, j, w);
    }
}

/* A data-plane error names its peer by rank ("comm: rank 2 closed its connection"); the
 * operator needs the worker: " [rank 2 = slot (1, 0) on w-4 at 127.0.0.1:40133]" is added
 * for each rank the message names. */
void coordinator_name_ranks(const struct job *j, char *why, size_t cap) {
    int n = j->pods * j->slots;
    char *seen = calloc((size_t)n, 1);
    if (!seen) return;
    for (const char *p = strstr(why, "rank "); p; p = strstr(p + 5, "rank ")) {
        char *end;
        long r = strtol(p + 5, &end, 10);
        if (end == p + 5 || r < 0 || r >= n || seen[r]) continue;
        seen[r] = 1;
        size_t len = strlen(why);
        snprintf(why + len, cap - len, " [rank %ld = slot (%ld, %ld) on %s at %s]", r,
                 r / j->slots, r % j->slots, j->bindings[r].worker_id, j->bindings[r].address);
    }
    free(seen);
}

void coordinator_fail_slot(struct coordinator *co, struct job *j, int k, const char *kind,
                           const char *fmt, ...) {
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (j->pods * j->slots > 1) coordinator_name_ranks(j, why, sizeof why);
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING) return;
    /* A 1 x 1 job keeps the message it always had; a mesh says which slot. */
    if (j->pods * j->slots == 1 || k < 0)
        coordinator_finish_job(co, j, MOED__V1__JOB_STATE__JOB_FAILED, kind, "%s", why);
    else
        coordinator_finish_job(co, j, MOED__V1__JOB_STATE__JOB_FAILED, kind, "slot (%d, %d) of "
                               "the %d x %d mesh, epoch %llu: %s", k / j->slots, k % j->slots,
                               j->pods, j->slots, (unsigned long long)j->epoch, why);
    coordinator_stop_workers(co, j); // a slot blocked in a collective returns at once
    coordinator_release_workers(co, j, 1);
}

static void decide_failure(struct coordinator *co, struct job *j) {
    int n = j->pods * j->slots, silent = -1;
    for (int k = 0; k < n && silent < 0; k++)
        if (!j->bindings[k].ended) silent = k;
    if (silent < 0) { // everyone answered: the first failure is the cause
        coordinator_fail_slot(co, j, j->first_failed, "failed", "%s", j->first_failure);
        return;
    }
    const struct binding *b = &j->bindings[silent];
    struct worker *w = coordinator_find_worker(co, b->worker_id);
    coordinator_fail_slot(co, j, silent, "failed",
                          "worker %s (%s, pod %d) stopped answering its peers after step %ld; "
                          "first report: slot (%d, %d) on %s", b->worker_id, b->address,
                          w ? w->pod : -1, b->step, j->first_failed / j->slots,
                          j->first_failed % j->slots, j->first_failure);
}

void coordinator_slot_failed(struct coordinator *co, struct job *j, int k, long step,
                             const char *error) {
    struct binding *b = &j->bindings[k];
    b->ended = 1;
    b->ok = 0;
    snprintf(b->error, sizeof b->error, "%s", error);
    if (j->pods * j->slots == 1) {
        coordinator_fail_slot(co, j, k, "failed", "%s at step %ld: %s", b->worker_id, step, error);
        return;
    }
    if (!j->failing_ms) {
        j->failing_ms = now_ms();
        j->first_failed = k;
        snprintf(j->first_failure, sizeof j->first_failure, "%s at step %ld: %s", b->worker_id,
                 step, error);
        coordinator_event(co, j, 0, "slot_failed", "slot (%d, %d) on %s failed at step %ld: %s; "
                          "stopping the other slots", k / j->slots, k % j->slots, b->worker_id,
                          step, error);
        coordinator_stop_workers(co, j); // their collectives return now, and they answer
    }
    coordinator_check_failing(co, j, now_ms());
}

void coordinator_check_failing(struct coordinator *co, struct job *j, int64_t now) {
    if (!j->failing_ms || j->state != MOED__V1__JOB_STATE__JOB_RUNNING) return;
    int open = 0;
    for (int k = 0; k < j->pods * j->slots; k++) open += !j->bindings[k].ended;
    if (!open || now - j->failing_ms >= MESH_FAILURE_WINDOW_MS) decide_failure(co, j);
}

void coordinator_mark_dead(struct coordinator *co, struct worker *w) {
    w->state = MOED__V1__WORKER_STATE__WORKER_DEAD;
    w->job_id[0] = 0;
    coordinator_save_worker(co, w);
}

void coordinator_worker_dead(struct coordinator *co, struct worker *w, int64_t silent_ms) {
    LOG_WARN("%s at %s is dead: no heartbeat for %.1f s", w->id, w->address, silent_ms / 1000.0);
    char job_id[24];
    snprintf(job_id, sizeof job_id, "%s", w->job_id);
    coordinator_mark_dead(co, w);
    struct job *j = job_id[0] ? coordinator_find_job(co, job_id) : NULL;
    int k = j ? job_slot_of(j, w) : -1;
    if (!j || j->state != MOED__V1__JOB_STATE__JOB_RUNNING || k < 0 || j->bindings[k].ended)
        return;
    long step = j->bindings[k].step > j->step ? j->bindings[k].step : j->step;
    if (j->recoverable)
        recovery_signal(co, j, k, FAULT_DEAD, "worker %s (%s, pod %d) died at step %ld: no "
                        "heartbeat for %.1f s", w->id, w->address, w->pod, step,
                        silent_ms / 1000.0);
    else if (j->failing_ms) // its peers reported losing it first: the reason says what they saw
        coordinator_fail_slot(co, j, k, "worker_dead",
                              "worker %s (%s, pod %d) stopped answering its peers after step "
                              "%ld (no heartbeat for %.1f s); first report: slot (%d, %d) on %s",
                              w->id, w->address, w->pod, j->bindings[k].step, silent_ms / 1000.0,
                              j->first_failed / j->slots, j->first_failed % j->slots,
                              j->first_failure);
    else
        coordinator_fail_slot(co, j, k, "worker_dead",
                              "worker %s (%s, pod %d) died at step %ld: no heartbeat for %.1f s",
                              w->id, w->address, w->pod, step, silent_ms / 1000.0);
}
