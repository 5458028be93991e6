/*
 * job.c — the training thread of one job: trainer_open (a 1 x 1 mesh) or, for one slot of a
 * larger mesh, the comm (mesh.c) and trainer_open_slot; then step after step, each followed
 * by a blocking ReportStep (batched: at most one call a second, carrying every
 * step since the last); evaluation every run.eval_every steps and at the end. In a mesh
 * every slot reports its own steps (with its data-plane time and bytes), and steps,
 * evaluations and the model's save are collective: every slot makes the same calls in the
 * same order. While the
 * coordinator is unreachable, training goes on and the reports wait in a bounded backlog,
 * sent oldest first once it answers again: the coordinator sees every step, in order.
 * The thread talks to the loop only through the job's atomics, comm_mu and w->job_done.
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "proto/moed.pb-c.h"
#include "../../proto/methods.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_S 1.0 // after a failed report, wait before trying again (doubling)
#define BACKOFF_MAX_S 8.0
#define REPORT_INTERVAL_S 1.0 // batch the reports of faster steps (one call per interval)
#define REPORT_BATCH_MAX 512   // steps per call: far below the 4 MiB message limit

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Budget for a retried call: shortened once the daemon is being stopped. */
static double retry_budget(const struct job *j, double budget_s) {
    if (atomic_load(&j->w->shutting_down) && budget_s > FINISH_RETRY_SHUTDOWN_S)
        return FINISH_RETRY_SHUTDOWN_S;
    return budget_s;
}

moe_status job_call_retry(struct job *j, struct rpc_channel *ch, const char *method,
                          const ProtobufCMessage *req, const ProtobufCMessageDescriptor *type,
                          ProtobufCMessage **resp, double budget_s, struct rpc_result *res) {
    struct rpc_result local;
    if (!res) res = &local;
    double t0 = moe_clock_s();
    int warned = 0;
    for (;;) {
        moe_status s = rpc_call_sync(ch, method, req, type, resp, REPORT_TIMEOUT_S, res);
        if (s != MOE_EUNAVAILABLE) return s;
        double budget = retry_budget(j, budget_s);
        if (moe_clock_s() - t0 >= budget) return s; // rpc_call_sync's message says why
        if (!warned)
            LOG_WARN("%s: %s; retrying for up to %.0f s", j->id, moe_errmsg(), budget);
        warned = 1;
        sleep_s(0.5);
    }
}

/* ---- step reports and their backlog ---- */

struct step_entry {
    Moed__V1__StepMetrics m;
    uint8_t sha[32];  // m.state_sha256 points here on check steps
    float load[];     // m.expert_load points here
};

/* Reports not yet accepted by the coordinator, oldest first (a ring). */
struct backlog {
    struct step_entry **ring;
    size_t head, len, cap;
    long dropped;     // oldest reports dropped because the backlog was full
    long refused;     // reports the coordinator answered with an error (not sent again)
    int failing;      // the last attempt could not reach the coordinator
    double backoff_s; // wait before the next attempt while failing
    double next_try;
    unsigned contact;  // w->contact when it started failing: a change means "try now"
    double last_sent;  // when the last batch was accepted
};

static struct step_entry *entry_new(const struct trainer *t, const struct step_report *r,
                                    double val_loss) {
    int L = t->spec.model.n_layers, E = t->spec.model.n_experts;
    struct step_entry *e = calloc(1, sizeof *e + sizeof(float) * (size_t)E);
    if (!e) return NULL;
    Moed__V1__StepMetrics init = MOED__V1__STEP_METRICS__INIT;
    e->m = init;
    e->m.step = r->step;
    e->m.loss = r->loss;
    e->m.ce = r->ce;
    e->m.aux = r->aux;
    e->m.z = r->z;
    e->m.grad_norm = r->grad_norm;
    e->m.lr = r->lr;
    e->m.tokens = r->tokens;
    e->m.seconds = r->seconds;
    e->m.tokens_per_second = r->seconds > 0 ? (double)r->tokens / r->seconds : 0;
    e->m.dropped = r->dropped;
    e->m.assignments = r->assignments;
    e->m.load_max_over_mean = r->load_max_over_mean;
    e->m.reported_unix_ms = moe_wall_ms(); // when the step completed, even if sent later
    e->m.val_loss = val_loss;
    e->m.pod = t->mesh.pod;
    e->m.slot = t->mesh.slot;
    e->m.comm_seconds = r->t_comm;
    e->m.bytes_alltoall = r->bytes_alltoall;
    e->m.bytes_allreduce = r->bytes_allreduce;
    e->m.replicated_step = r->replicated_step;
    if (r->has_hash) {
        memcpy(e->sha, r->state_sha256, sizeof e->sha);
        e->m.state_sha256.data = e->sha;
        e->m.state_sha256.len = sizeof e->sha;
        e->m.state_hash_step = r->hash_step;
    }
    /* each layer's share of its assignments per expert, averaged over the layers */
    for (int l = 0; l < L; l++) {
        const long *load = t->load_sum + (size_t)l * E; // (L, E)
        long total = 0;
        for (int x = 0; x < E; x++) total += load[x];
        if (total == 0) continue;
        for (int x = 0; x < E; x++) e->load[x] += (float)((double)load[x] / total / L);
    }
    e->m.n_expert_load = (size_t)E;
    e->m.expert_load = e->load;
    return e;
}

static void backlog_push(struct backlog *b, struct step_entry *e) {
    if (b->len == b->cap && b->cap < REPORT_BACKLOG_MAX) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        if (cap > REPORT_BACKLOG_MAX) cap = REPORT_BACKLOG_MAX;
        struct step_entry **ring = malloc(cap * sizeof *ring);
        if (ring) {
            for (size_t i = 0; i < b->len; i++) ring[i] = b->ring[(b->head + i) % b->cap];
            free(b->ring);
            b->ring = ring;
            b->head = 0;
            b->cap = cap;
        }
    }
    if (b->len == b->cap) { // full (or out of memory): the oldest report goes
        if (b->cap == 0) {
            free(e);
            b->dropped++;
            return;
        }
        free(b->ring[b->head]);
        b->head = (b->head + 1) % b->cap;
        b->len--;
        if (b->dropped++ == 0)
            LOG_WARN("step report backlog full (%zu): dropping the oldest reports", b->cap);
    }
    b->ring[(b->head + b->len) % b->cap] = e;
    b->len++;
}

static void backlog_pop(struct backlog *b) {
    free(b->ring[b->head]);
    b->head = (b->head + 1) % b->cap;
    b->len--;
}

static void backlog_free(struct backlog *b) {
    while (b->len) backlog_pop(b);
    free(b->ring);
}

/* Sends the waiting reports oldest first until one cannot be delivered. Returns 1 if the
 * coordinator answered stop. While failing, waits out the backoff first (without blocking:
 * training goes on). Reports the coordinator refuses for another reason than being
 * unreachable are dropped with a warning: sending them again would not change its mind. */
static int backlog_flush(struct job *j, struct rpc_channel *ch, struct backlog *b, int now) {
    int stop = 0;
    if (b->failing && moe_clock_s() < b->next_try && atomic_load(&j->w->contact) == b->contact)
        return 0;
    if (!b->failing && !now && moe_clock_s() - b->last_sent < REPORT_INTERVAL_S) return 0;
    size_t held = b->len;
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__StepMetrics *batch[REPORT_BATCH_MAX];
    while (b->len) {
        struct step_entry *e = b->ring[b->head];
        size_t n = b->len < REPORT_BATCH_MAX ? b->len : REPORT_BATCH_MAX;
        for (size_t i = 0; i < n; i++) batch[i] = &b->ring[(b->head + i) % b->cap]->m;
        Moed__V1__StepReport req = MOED__V1__STEP_REPORT__INIT;
        req.worker_id = worker_id;
        req.job_id = j->id;
        req.pod = j->pod;
        req.slot = j->slot;
        req.epoch = j->epoch;
        req.n_metrics = n;
        req.metrics = batch;
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        moe_status s = rpc_call_sync(ch, RPC_CLUSTER_REPORT_STEP, &req.base,
                                     &moed__v1__step_report_response__descriptor, &resp,
                                     REPORT_TIMEOUT_S, &res);
        if (s == MOE_EUNAVAILABLE) {
            if (!b->failing)
                LOG_WARN("%s: cannot report step %ld (%s: %s): training goes on, reports wait "
                         "until the coordinator answers", j->id, (long)e->m.step,
                         rpc_code_name(res.code), res.details);
            b->backoff_s = b->failing ? b->backoff_s * 2 : BACKOFF_MIN_S;
            if (b->backoff_s > BACKOFF_MAX_S) b->backoff_s = BACKOFF_MAX_S;
            b->failing = 1;
            b->next_try = moe_clock_s() + b->backoff_s;
            b->contact = atomic_load(&j->w->contact);
            return stop;
        }
        if (s == MOE_OK) {
            stop |= ((const Moed__V1__StepReportResponse *)resp)->stop;
            protobuf_c_message_free_unpacked(resp, NULL);
        } else if (b->refused++ < 3 || b->refused % 1000 == 0) {
            LOG_WARN("%s: the coordinator refused the report of steps %ld.. (%ld refused so "
                     "far): %s", j->id, (long)e->m.step, b->refused, moe_errmsg());
        }
        for (size_t i = 0; i < n; i++) backlog_pop(b);
        b->last_sent = moe_clock_s();
    }
    if (b->failing)
        LOG_INFO("%s: the coordinator answers again: sent %zu held step reports", j->id, held);
    b->failing = 0;
    return stop;
}

/* At the end of the job: every held report goes out before the end report, if the
 * coordinator comes back within the budget. */
static int backlog_drain(struct job *j, struct rpc_channel *ch, struct backlog *b) {
    double t0 = moe_clock_s();
    int stop = 0;
    for (;;) {
        stop |= backlog_flush(j, ch, b, 1);
        if (!b->len) return stop;
        if (moe_clock_s() - t0 >= retry_budget(j, FINISH_RETRY_S)) {
            LOG_ERROR("%s: %zu step reports could not be delivered", j->id, b->len);
            return stop;
        }
        sleep_s(0.1);
    }
}

/* ---- the thread ---- */

static void log_step(const struct job *j, const struct trainer *t, const struct step_report *r,
                     double val) {
    char vbuf[48] = "";
    if (val > 0) snprintf(vbuf, sizeof vbuf, " val %.4f", val);
    LOG_INFO("%s: step %ld/%ld loss %.4f ce %.4f aux %.4f lr %.2e grad %.3f load %.2f "
             "%.0f tok/s%s", j->id, r->step, t->spec.run.steps, r->loss, r->ce, r->aux, r->lr,
             r->grad_norm, r->load_max_over_mean, r->seconds > 0 ? r->tokens / r->seconds : 0.0,
             vbuf);
}

/* Runs the steps. Returns 1 when all steps ran, 0 when the job ended early; *error says why
 * (empty when it was stopped). */
static int train(struct job *j, struct rpc_channel *ch, struct trainer *t, struct backlog *b,
                 char *error, size_t error_len, moe_status *why) {
    long total = t->spec.run.steps;
    int log_every = t->spec.run.log_every > 0 ? t->spec.run.log_every : 1;
    while (t->model.step < total) {
        if (atomic_load(&j->stop) != JOB_RUN) return 0;
        struct step_report r;
        if ((*why = trainer_step(t, &r)) != MOE_OK) {
            /* told to stop while a collective waited: the abort is not the job's error */
            if (atomic_load(&j->stop) == JOB_RUN) snprintf(error, error_len, "%s", moe_errmsg());
            return 0;
        }
        atomic_store(&j->step, r.step);
        double val = 0;
        int eval_now = r.step == total ||
                       (t->spec.run.eval_every > 0 && r.step % t->spec.run.eval_every == 0);
        if (eval_now && t->spec.data.val_fraction > 0 &&
            (*why = trainer_eval(t, &val, NULL)) != MOE_OK) {
            if (atomic_load(&j->stop) == JOB_RUN) snprintf(error, error_len, "%s", moe_errmsg());
            return 0;
        }
        if (r.step == 1 || r.step % log_every == 0 || r.step == total || val > 0)
            log_step(j, t, &r, val);
        struct step_entry *e = entry_new(t, &r, val);
        if (!e) {
            *why = MOE_ENOMEM;
            snprintf(error, error_len, "out of memory for a step report");
            return 0;
        }
        backlog_push(b, e);
        /* an evaluation and the last step go out at once; other steps within the interval */
        if (backlog_flush(j, ch, b, val > 0 || r.step == total)) {
            int run = JOB_RUN;
            if (atomic_compare_exchange_strong(&j->stop, &run, JOB_STOP_COORDINATOR))
                LOG_INFO("%s: the coordinator says stop after step %ld", j->id, r.step);
            job_abort_comm(j); // the other slots must not wait for us in the next collective
        }
    }
    return 1;
}

/* Opens the trainer for this job's slot: the plain trainer for a 1 x 1 mesh, else the slot's
 * share of the model and then the comm. Returns 1; 0 when there is no trainer; -1 when the
 * trainer is open but the comm is not. *error says why not; *why is the status. */
static int open_trainer(struct job *j, struct trainer *t, char *error, size_t error_len,
                        moe_status *why) {
    moe_status s;
    if (j->pods * j->slots == 1) {
        s = trainer_open(t, &j->spec);
    } else {
        /* the slow part first (data, memory, initialisation: seconds for a big model), so
         * that the peers of the epoch are not left waiting on us in its first transfer; a
         * recovery's new holder skips initialising the state it is about to receive */
        int rank = j->pod * j->slots + j->slot;
        int pulls = j->cur.restore && j->cur.restore_from && j->cur.restore_from[rank] >= 0;
        s = trainer_open_slot_later(t, &j->spec, j->pod, j->slot, !pulls);
        if (s != MOE_OK) {
            snprintf(error, error_len, "%s", moe_errmsg());
            *why = s;
            return 0;
        }
        s = job_open_comm(j);
        if (s == MOE_OK) {
            struct comm *c;
            uv_mutex_lock(&j->comm_mu);
            c = j->comm;
            uv_mutex_unlock(&j->comm_mu);
            s = trainer_rebind(t, c);
        }
        if (s != MOE_OK) {
            /* the trainer is ours: keep it for the next epoch (a data-plane failure) */
            snprintf(error, error_len, "%s", moe_errmsg());
            *why = s;
            return -1;
        }
    }
    *why = s;
    if (s != MOE_OK) snprintf(error, error_len, "%s", moe_errmsg());
    return s == MOE_OK;
}

/* ---- recovery: the epochs of one slot (docs/recovery.md) ---- */


/* A data-plane failure (a peer lost, the epoch aborted, a stale or broken connection) is one
 * the coordinator can recover from; anything else (bad spec, memory, divergence) ends the job. */
static int data_plane_error(moe_status s) {
    return s == MOE_EUNAVAILABLE || s == MOE_EINTERNAL || s == MOE_EAUTH;
}

/* A report whose answer is Empty, retried for budget_s; a failure is only logged: the
 * coordinator also learns what it says from fences, heartbeats and registrations. */
static void tell(struct job *j, struct rpc_channel *ch, const char *method,
                 const ProtobufCMessage *req, double budget_s, const char *what) {
    ProtobufCMessage *resp = NULL;
    if (job_call_retry(j, ch, method, req, &moed__v1__empty__descriptor, &resp, budget_s,
                       NULL) == MOE_OK)
        protobuf_c_message_free_unpacked(resp, NULL);
    else
        LOG_WARN("%s: could not report %s: %s", j->id, what, moe_errmsg());
}

static void report_fault(struct job *j, struct rpc_channel *ch, long step, const char *error) {
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__FaultReport req = MOED__V1__FAULT_REPORT__INIT;
    req.worker_id = worker_id;
    req.job_id = j->id;
    req.pod = j->pod;
    req.slot = j->slot;
    req.epoch = j->epoch;
    req.step = step;
    req.error = (char *)error;
    /* short: the coordinator learns it from the fence and heartbeats too */
    tell(j, ch, RPC_CLUSTER_REPORT_FAULT, &req.base, 2.0, "the fault");
}

static void report_restored(struct job *j, struct rpc_channel *ch, long step, double connect_s,
                            const struct restore_stats *st) {
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__RestoredReport req = MOED__V1__RESTORED_REPORT__INIT;
    req.worker_id = worker_id;
    req.job_id = j->id;
    req.pod = j->pod;
    req.slot = j->slot;
    req.epoch = j->epoch;
    req.step = step;
    req.connect_seconds = connect_s;
    req.transfer_seconds = st->transfer_s;
    req.bytes_received = st->bytes_received;
    req.bytes_sent = st->bytes_sent;
    tell(j, ch, RPC_CLUSTER_REPORT_RESTORED, &req.base, REPORT_TIMEOUT_S, "the restore");
}

/* Takes the next epoch's binding as the job's: epoch, peers, timeout, restore plan. */
static void adopt(struct job *j, struct epoch_binding *b) {
    uv_mutex_lock(&j->comm_mu);
    j->epoch = b->epoch;
    j->aborted = 0;
    free(j->peers);
    j->peers = b->peers;
    b->peers = NULL;
    j->timeout_s = b->timeout_s;
    uv_mutex_unlock(&j->comm_mu);
    free(j->cur.restore_from);
    j->cur = *b;
    b->restore_from = NULL;
    free(b);
}

/* After a data-plane failure: freeze the state, tell the coordinator, and wait for its next
 * epoch (returns 1, the binding adopted) or for stop (returns 0). The state stays in memory
 * however long the coordinator is away. */
static int wait_for_epoch(struct job *j, struct rpc_channel *ch, struct trainer *t, int have_t,
                          const char *error) {
    struct state_copy copies[REPLICA_MAX_COPIES];
    long live = -1;
    if (have_t) replica_fence(t, copies, REPLICA_MAX_COPIES, &live);
    job_close_comm(j);
    long step = have_t ? t->model.step : 0;
    LOG_WARN("%s: slot (%d, %d) lost its data plane in epoch %llu after step %ld (%s): holding "
             "its state for the coordinator's next epoch", j->id, j->pod, j->slot,
             (unsigned long long)j->epoch, step, error);
    atomic_store(&j->holding, 1);
    report_fault(j, ch, step, error);
    uv_mutex_lock(&j->ep_mu);
    while (atomic_load(&j->stop) == JOB_RUN && !(j->next && j->next->epoch > j->epoch))
        uv_cond_wait(&j->ep_cv, &j->ep_mu);
    int go = atomic_load(&j->stop) == JOB_RUN;
    if (go) { /* under the same lock: the loop never sees the binding taken but not adopted */
        adopt(j, j->next);
        j->next = NULL;
    }
    uv_mutex_unlock(&j->ep_mu);
    if (!go) return 0;
    atomic_store(&j->holding, 0);
    LOG_INFO("%s: slot (%d, %d) joins epoch %llu%s", j->id, j->pod, j->slot,
             (unsigned long long)j->epoch, j->cur.restore ? " to restore" : "");
    return 1;
}

/* The restore of a recovery epoch, once the comm and the trainer are up. */
static moe_status restore(struct job *j, struct rpc_channel *ch, struct trainer *t,
                          double connect_s) {
    struct restore_plan p = {j->cur.restore_step, j->cur.restore_from, j->pods * j->slots};
    struct restore_stats st;
    CHECK(replica_restore(t, &p, &st));
    atomic_store(&j->step, t->model.step);
    report_restored(j, ch, t->model.step, connect_s, &st);
    return MOE_OK;
}

/* Joins the job's current epoch: the first one opens the trainer, a later one re-forms the
 * comm under the trainer it has; either restores if the binding says so. */
static int join_epoch(struct job *j, struct rpc_channel *ch, struct trainer *t, int *have_t,
                      char *error, size_t error_len, moe_status *why) {
    double t0 = moe_clock_s();
    if (!*have_t) {
        int opened = open_trainer(j, t, error, error_len, why);
        if (opened == 0) return 0;
        *have_t = 1; /* opened, maybe without its comm (-1): it waits for the next epoch */
        uv_mutex_lock(&j->ep_mu);
        j->trainer = t;
        uv_mutex_unlock(&j->ep_mu);
        if (opened < 0) return 0;
    } else {
        if ((*why = job_open_comm(j)) == MOE_OK) {
            uv_mutex_lock(&j->comm_mu);
            struct comm *c = j->comm;
            uv_mutex_unlock(&j->comm_mu);
            *why = trainer_rebind(t, c);
        }
        if (*why != MOE_OK) {
            snprintf(error, error_len, "%s", moe_errmsg());
            return 0;
        }
    }
    if (j->cur.restore && (*why = restore(j, ch, t, moe_clock_s() - t0)) != MOE_OK) {
        snprintf(error, error_len, "restoring step %ld: %s", j->cur.restore_step, moe_errmsg());
        return 0;
    }
    return 1;
}

void job_thread(void *arg) {
    struct job *j = arg;
    struct worker *w = j->w;
    /* OpenMP's thread count is per thread: set it where the math runs */
    if (w->cfg.threads > 0) omp_set_num_threads(w->cfg.threads);
    struct rpc_channel *ch = NULL;
    if (rpc_channel_open(&ch, w->cfg.coordinator, &w->cfg.tls, w->token, 0) != MOE_OK) {
        LOG_ERROR("%s: %s", j->id, moe_errmsg());
        goto done;
    }
    struct trainer t;
    int have_t = 0, logged = 0, complete = 0;
    struct backlog b = {0};
    char error[512] = "";
    double t0 = moe_clock_s();
    for (;;) {
        moe_status why = MOE_OK;
        error[0] = 0;
        if (join_epoch(j, ch, &t, &have_t, error, sizeof error, &why)) {
            if (!logged)
                LOG_INFO("%s: training '%s': %zu parameters (%d layers, d_model %d, %d experts, "
                         "top-%d), batch %d x %d, %ld steps, %d threads", j->id, t.spec.name,
                         t.model.n_params, t.spec.model.n_layers, t.spec.model.d_model,
                         t.spec.model.n_experts, t.spec.model.top_k, t.B, t.T, t.spec.run.steps,
                         omp_get_max_threads());
            logged = 1;
            complete = train(j, ch, &t, &b, error, sizeof error, &why);
            if (complete) {
                if (backlog_drain(j, ch, &b)) {
                    int run = JOB_RUN;
                    atomic_compare_exchange_strong(&j->stop, &run, JOB_STOP_COORDINATOR);
                }
                if (atomic_load(&j->stop) == JOB_STOP_COORDINATOR) break;
                LOG_INFO("%s: trained %ld steps in %.1f s", j->id, t.model.step,
                         moe_clock_s() - t0);
                int saved = job_finish_ok(j, ch, &t, j->recoverable);
                if (saved) break;
                why = MOE_EUNAVAILABLE; /* the collective save lost a peer: recover, save again */
                snprintf(error, sizeof error, "saving the model: %s", moe_errmsg());
                complete = 0;
            }
        }
        if (atomic_load(&j->stop) != JOB_RUN || !j->recoverable || !data_plane_error(why))
            break;
        if (!wait_for_epoch(j, ch, &t, have_t, error[0] ? error : "the epoch was aborted"))
            break;
    }
    if (!complete) {
        if (backlog_drain(j, ch, &b)) {
            int run = JOB_RUN;
            atomic_compare_exchange_strong(&j->stop, &run, JOB_STOP_COORDINATOR);
        }
        long step = have_t ? t.model.step : 0;
        int stop = atomic_load(&j->stop);
        if (stop == JOB_RUN && error[0]) {
            LOG_ERROR("%s: failed at step %ld: %s", j->id, step, error);
            job_report_end(j, ch, 0, 0, error, 0, NULL, NULL);
        } else {
            LOG_INFO("%s: stopped after step %ld (%s)", j->id, step,
                     stop == JOB_STOP_SHUTDOWN ? "the worker is shutting down"
                                               : "the coordinator asked");
            job_report_end(j, ch, 0, 1, stop == JOB_STOP_SHUTDOWN ? "worker shut down" : "stopped",
                           0, NULL, NULL);
        }
    } else if (atomic_load(&j->stop) == JOB_STOP_COORDINATOR) {
        LOG_INFO("%s: stopped after step %ld (the coordinator asked)", j->id, t.model.step);
        job_report_end(j, ch, 0, 1, "stopped", 0, NULL, NULL);
    }
    backlog_free(&b);
    uv_mutex_lock(&j->ep_mu);
    j->trainer = NULL;
    uv_mutex_unlock(&j->ep_mu);
    if (have_t) trainer_close(&t);
    job_close_comm(j);
done:
    rpc_channel_close(ch);
    atomic_store(&j->finished, 1);
    uv_async_send(&w->job_done); // last: after it, the loop may join and free j
}
