/*
 * events.c — a job's events and watchers (see events.h).
 */
#include "events.h"

#include "../../common/clock.h"
#include "../../common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Too far behind: a watcher that has this many updates queued skips the next step updates
 * (it still gets every event and the final state). */
#define WATCHER_MAX_QUEUED 16

void job_update_fill(struct job_update *x, struct coordinator *co, const struct job *j) {
    Moed__V1__JobUpdate init = MOED__V1__JOB_UPDATE__INIT;
    x->u = init;
    int n = job_n_slots(j), whole = n <= JOB_WATCH_SLOTS;
    job_view_fill_slots(&x->v, j, 0, whole ? n : 0);
    x->pods = whole ? NULL : calloc((size_t)j->pods, sizeof *x->pods);
    x->pod_ptrs = whole ? NULL : calloc((size_t)j->pods, sizeof *x->pod_ptrs);
    if (x->pods && x->pod_ptrs) {
        job_pod_summaries(co, j, x->pods, x->pod_ptrs);
        x->u.n_pods = (size_t)j->pods;
        x->u.pods = x->pod_ptrs;
    }
    x->u.job = &x->v.info;
    x->u.last = j->last;
    x->u.eta_seconds = job_eta_seconds(j);
    x->u.n_slots = x->v.n_slots;
    x->u.slots = x->v.slot_ptrs;
}

void job_update_free(struct job_update *x) {
    job_view_free(&x->v);
    free(x->pods);
    free(x->pod_ptrs);
}

void job_notify(struct coordinator *co, struct job *j, const Moed__V1__Event *new_event) {
    if (!j->watchers) return;
    struct job_update x;
    job_update_fill(&x, co, j);
    Moed__V1__Event *ev[1] = {(Moed__V1__Event *)new_event};
    if (new_event) {
        x.u.n_new_events = 1;
        x.u.new_events = ev;
    }
    int final = job_is_final(j);
    struct rpc_message *msg = rpc_message_pack(&x.u.base); // once, however many watchers
    for (struct watcher *w = j->watchers, *next; w && msg; w = next) {
        next = w->next;
        if (!final && !new_event && rpc_stream_queued(w->call) >= WATCHER_MAX_QUEUED) continue;
        rpc_stream_send_packed(w->call, msg);
        if (final) rpc_stream_finish(w->call, GRPC_STATUS_OK, ""); // on_close unlinks it
    }
    rpc_message_free(msg);
    job_update_free(&x);
}

/* Stores the event (its message formatted from `fmt`), with the job's record unless
 * `deferred` (then written by the next jobs_flush_records), and tells the watchers. */
static moe_status event_commit(struct coordinator *co, struct job *j, struct store_batch *b,
                               int sync, int deferred, const char *kind, const char *fmt,
                               va_list ap) {
    char msg[768];
    vsnprintf(msg, sizeof msg, fmt, ap);
    Moed__V1__Event e = MOED__V1__EVENT__INIT;
    e.unix_ms = moe_wall_ms();
    e.kind = (char *)kind;
    e.message = msg;
    int64_t seq = j->next_event++;
    e.seq = seq; // GetJob and WatchJob carry it too: a client can go on with ListEvents from it
    if (!deferred) job_batch(b, j);
    store_batch_event(b, j->id, seq, &e);
    moe_status s = store_batch_commit(co->store, b, sync);
    if (s != MOE_OK) {
        LOG_ERROR("store: cannot record event of %s: %s", j->id, moe_errmsg());
        return s;
    }
    j->record_dirty = deferred;
    LOG_INFO("%s: %s: %s", j->id, kind, msg);
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e.base);
    if (copy) job_recent_push(j, copy);
    job_notify(co, j, &e);
    return MOE_OK;
}

moe_status job_event(struct coordinator *co, struct job *j, int sync, const char *kind,
                     const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe_status s = event_commit(co, j, store_batch_new(), sync, 0, kind, fmt, ap);
    va_end(ap);
    return s;
}

moe_status job_event_batch(struct coordinator *co, struct job *j, struct store_batch *b,
                           int sync, const char *kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe_status s = event_commit(co, j, b, sync, 0, kind, fmt, ap);
    va_end(ap);
    return s;
}

moe_status job_event_deferred(struct coordinator *co, struct job *j, const char *kind,
                              const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe_status s = event_commit(co, j, store_batch_new(), 0, 1, kind, fmt, ap);
    va_end(ap);
    return s;
}

static void watch_closed(struct rpc_call *c, void *arg) {
    (void)c;
    struct watcher *w = arg;
    if (w->prev)
        w->prev->next = w->next;
    else if (w->job)
        w->job->watchers = w->next;
    if (w->next) w->next->prev = w->prev;
    free(w);
}

moe_status job_watch(struct job *j, struct rpc_call *call) {
    struct watcher *w = calloc(1, sizeof *w);
    if (!w) return moe_fail(MOE_ENOMEM, "out of memory");
    w->call = call;
    w->job = j;
    w->next = j->watchers;
    if (j->watchers) j->watchers->prev = w;
    j->watchers = w;
    rpc_stream_on_close(call, watch_closed, w);
    return MOE_OK;
}

void job_record_late_steps(struct coordinator *co, struct job *j,
                           Moed__V1__StepMetrics *const *m, size_t n) {
    struct store_batch *b = store_batch_new();
    for (size_t i = 0; i < n; i++) store_batch_step(b, j->id, m[i]);
    if (store_batch_commit(co->store, b, 0) != MOE_OK)
        LOG_WARN("%s: late steps %ld..%ld not stored: %s", j->id, (long)m[0]->step,
                 (long)m[n - 1]->step, moe_errmsg());
    co->steps_reported += n;
}

void job_record_steps(struct coordinator *co, struct job *j, int k,
                      Moed__V1__StepMetrics *const *m, size_t n) {
    struct binding *bd = &j->bindings[k];
    for (size_t i = 0; i < n; i++) {
        bd->total_alltoall += m[i]->bytes_alltoall;
        bd->total_allreduce += m[i]->bytes_allreduce;
    }
    const Moed__V1__StepMetrics *newest = m[n - 1];
    if ((long)newest->step > bd->step) bd->step = (long)newest->step;
    bd->step_seconds = newest->seconds;
    bd->comm_seconds = newest->comm_seconds;
    bd->bytes_alltoall = newest->bytes_alltoall;
    bd->bytes_allreduce = newest->bytes_allreduce;
    if (k == 0) { // slot (0, 0) speaks for the job: its loss, its step, the stored curve
        struct store_batch *b = store_batch_new();
        for (size_t i = 0; i < n; i++) {
            store_batch_step(b, j->id, m[i]);
            if (m[i]->step > j->step) j->step = m[i]->step;
            j->loss = m[i]->loss;
            if (m[i]->val_loss > 0) j->val_loss = m[i]->val_loss;
            if (m[i]->val_bits_per_byte > 0) j->val_bits_per_byte = m[i]->val_bits_per_byte;
            if (m[i]->seconds > 0)
                j->sec_per_step = j->sec_per_step > 0
                                      ? 0.9 * j->sec_per_step + 0.1 * m[i]->seconds
                                      : m[i]->seconds;
        }
        Moed__V1__StepMetrics *copy = (Moed__V1__StepMetrics *)pb_clone(&newest->base);
        if (copy) {
            if (!copy->reported_unix_ms) copy->reported_unix_ms = moe_wall_ms();
            if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
            j->last = copy;
        }
        if (store_batch_commit(co->store, b, 0) != MOE_OK)
            LOG_WARN("%s: steps up to %ld not stored: %s", j->id, j->step, moe_errmsg());
    }
    /* The slots' figures reach the store with the job's record at the next flush, not with
     * every report: a record holds every slot, and writing it per report cost O(slots) bytes
     * per report, O(slots^2) a step (150 MB/s at 1,024 slots). A restart loses at most a
     * flush's worth of them, which the slots report again as they re-register. */
    j->record_dirty = 1;
    co->steps_reported += n;
    /* a watcher of a big mesh follows the job by slot (0, 0): an update per slot's report,
     * each O(slots), made one step O(slots^2) */
    if (k == 0 || job_n_slots(j) <= JOB_WATCH_SLOTS) job_notify(co, j, NULL);
}
