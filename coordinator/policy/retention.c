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
