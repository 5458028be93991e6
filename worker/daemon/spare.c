/*
 * spare.c — an idle worker prepares for the slot a recovery may give it: the coordinator's
 * heartbeat answer names a running recoverable job (and sends its spec once), and the worker
 * maps and faults in, on libuv's thread pool, the arenas that slot's trainer allocates first
 * (parameters, gradients, both moments: kernels/arena_pool.h), within --spare-arena-mb. When
 * a recovery then makes it the new holder, its trainer takes them, and the state transfer
 * writes at memory speed into pages that are already there (docs/recovery.md, "Where a
 * recovery's time goes"). Told no job, or once it runs one, it lets what is left go.
 * Never: allocates on the loop thread, holds more than the cap, or delays a RunSlot: a trainer
 * that opens while the arenas are still being prepared takes those that are ready and maps
 * the rest itself.
 */
#include "worker.h"

#include "../../common/log.h"
#include "../../kernels/arena_pool.h"
#include "../../kernels/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPARE_ARENAS 4 // model_alloc's first four: parameters, gradients, m, v

struct prepare {
    uv_work_t req;
    struct worker *w;
    char job_id[64];
    size_t bytes;
    int count, got;
};

static void prepare_run(uv_work_t *req) {
    struct prepare *p = req->data;
    p->got = arena_pool_prepare(p->bytes, p->count);
}

static void prepare_done(uv_work_t *req, int status) {
    struct prepare *p = req->data;
    struct worker *w = p->w;
    w->spare_preparing = 0;
    if (status == 0 && p->got > 0) {
        LOG_INFO("spare: %d arenas of %.1f MB prepared for a slot of %s", p->got,
                 (double)p->bytes / 1e6, p->job_id);
    }
    free(p);
}

/* The size of one arena of the job's slot, and how many fit the cap (0: none). */
static int plan(const struct worker *w, const char *job_id, const char *spec_json,
                size_t *bytes) {
    struct job_spec *sp = calloc(1, sizeof *sp);
    if (!sp) return 0;
    int n = 0;
    if (spec_parse(sp, spec_json, strlen(spec_json), "the spare's spec_json") != MOE_OK ||
        spec_validate(sp) != MOE_OK) {
        LOG_WARN("spare: %s's spec: %s", job_id, moe_errmsg());
    } else {
        int slots = sp->mesh.slots, E = sp->model.n_experts;
        double b = model_params_of(&sp->model, slots > 1 ? E / slots : E) * sizeof(real);
        double cap = (double)w->cfg.spare_arena_mb * 1e6;
        n = b >= (double)ARENA_MAPPED_MIN && b <= cap ? (int)(cap / b) : 0;
        if (n > SPARE_ARENAS) n = SPARE_ARENAS;
        *bytes = (size_t)b;
    }
    free(sp);
    return n;
}

static void release(struct worker *w, const char *why) {
    size_t freed = arena_pool_release();
    if (freed) LOG_INFO("spare: released %.1f MB of prepared arenas (%s)", freed / 1e6, why);
    w->spare_job[0] = 0;
}

/* A slot runs here (or is being set up): 1 while one of them has not yet started its steps
 * (its trainer may be taking the prepared arenas right now), 2 once all have, 0 with none. */
static int slots_here(const struct worker *w) {
    int n = 0, steps = 1;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        const struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished)) continue;
        n++;
        steps &= atomic_load(&j->in_steps) != 0;
    }
    return n == 0 ? 0 : steps ? 2 : 1;
}

void worker_spare_hint(struct worker *w, int busy, const char *job_id, const char *spec_json) {
    if (w->spare_preparing) return; // the next answer after it is done
    int here = slots_here(w);
    if (busy || here) { /* an answer to a heartbeat sent before a RunSlot came is no hint */
        if (here == 2 && arena_pool_count() > 0) release(w, "running a slot");
        return;
    }
    if (!job_id[0]) {
        if (w->spare_job[0] || arena_pool_count() > 0) release(w, "no job to stand by for");
        return;
    }
    if (strcmp(job_id, w->spare_job) == 0 || !spec_json[0] || w->cfg.spare_arena_mb <= 0)
        return;
    release(w, "another job to stand by for");
    /* considered from now on, prepared or not (arenas too small or over the cap): the
     * heartbeats say so, and the coordinator stops sending the spec */
    snprintf(w->spare_job, sizeof w->spare_job, "%s", job_id);
    struct prepare *p = calloc(1, sizeof *p);
    if (!p) return;
    p->w = w;
    p->req.data = p;
    snprintf(p->job_id, sizeof p->job_id, "%s", job_id);
    p->count = plan(w, job_id, spec_json, &p->bytes);
    if (p->count <= 0 || uv_queue_work(w->loop, &p->req, prepare_run, prepare_done) != 0) {
        free(p);
        return;
    }
    w->spare_preparing = 1;
}
