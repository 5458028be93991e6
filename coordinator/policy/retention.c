/*
 * retention.c — expiring ended jobs (see retention.h).
 */
#include "retention.h"

#include "../../common/log.h"

/* Whether j, ended, has outlived the retention period. */
static int expired(const struct coordinator *co, const struct job *j, int64_t now_ms) {
    if (co->cfg.job_retention_s <= 0) return 0;
    int64_t ended = j->finished_ms ? j->finished_ms : j->created_ms;
    return now_ms - ended >= (int64_t)co->cfg.job_retention_s * 1000;
}

/* Where j's history should start: `below` moved on by at least a tenth of `keep` (so that a
 * running job is trimmed in steps, not at every event), or 0 when nothing is due. */
static int64_t trim_to(int64_t newest, long keep, int64_t below) {
    int64_t to = newest + 1 - keep, step = keep / 10 > 0 ? keep / 10 : 1;
    return keep > 0 && to > 0 && to >= below + step ? to : 0;
}

void retention_trim(struct coordinator *co) {
    struct store_batch *b = NULL;
    int trimmed = 0;
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        int64_t ev = trim_to(j->next_event - 1, co->cfg.max_events_per_job, j->events_below);
        int64_t st = trim_to(j->step, co->cfg.max_steps_per_job, j->steps_below);
        if (!ev && !st) continue;
        if (!b && !(b = store_batch_new())) return;
        if (ev) store_batch_trim_events(b, j->id, j->events_below = ev);
        if (st) store_batch_trim_steps(b, j->id, j->steps_below = st);
        trimmed++;
    }
    if (b && store_batch_commit(co->store, b, 0) != MOE_OK)
        LOG_WARN("retention: trimming %d jobs' history: %s", trimmed, moe_errmsg());
}

int retention_tick(struct coordinator *co, int64_t now_ms) {
    if (co->cfg.job_retention_s <= 0 && co->cfg.max_finished_jobs <= 0) return 0;
    long ended = 0;
    for (int i = 0; i < co->n_jobs; i++) ended += job_is_final(co->jobs[i]);
    long excess = co->cfg.max_finished_jobs > 0 ? ended - co->cfg.max_finished_jobs : 0;
    struct job *del[RETENTION_BATCH];
    int n = 0;
    for (int i = 0; i < co->n_jobs && n < RETENTION_BATCH; i++) {
        struct job *j = co->jobs[i];
        if (!job_is_final(j)) continue;
        if (excess > 0) {
            excess--; // the oldest ended jobs go first, whatever their age
            del[n++] = j;
        } else if (expired(co, j, now_ms)) {
            del[n++] = j;
        }
    }
    if (!n) return 0;
    if (job_delete(co, del, n) != MOE_OK) {
        LOG_ERROR("retention: cannot delete %d ended jobs: %s", n, moe_errmsg());
        return 0;
    }
    LOG_INFO("retention: deleted %d ended job%s (kept for %ld s, at most %ld)", n,
             n == 1 ? "" : "s", co->cfg.job_retention_s, co->cfg.max_finished_jobs);
    return n;
}
