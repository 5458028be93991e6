/*
 * report.c — every call the training thread makes to the coordinator, and how it keeps trying.
 *
 * Owns: the blocking call retried while the coordinator is unreachable (it may be restarting),
 * with a budget that shrinks once the daemon is being stopped; the step reports, batched to at
 * most one call a second (REPORT_BATCH_MAX steps each) and held in a bounded backlog while the
 * coordinator is away, sent oldest first once it answers again, so that it sees every step in
 * order; the slot's links (its transport to each peer), sent with the first report of each
 * epoch and again after each (re-)registration; and the one-off reports: a fault (the slot
 * lost its data plane), a restore, the end.
 * Every report names its sender the same way (worker, job, slot, epoch), and every call proves
 * it: it carries the worker's own credential, as the worker holds it at the time of the call
 * (a re-registration may have changed it).
 * Never: decides what a job does next (job.c does, from what these return), or runs on the
 * loop thread: each call blocks the thread that makes it.
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "proto/moed.pb-c.h"
#include "../../proto/methods.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Who reports: the worker (its id as the coordinator last gave it), the job, the slot, the
 * slot's epoch. Every report message has these five fields. */
#define SET_SENDER(req, j, worker_id)                                                             \
    do {                                                                                          \
        (req).worker_id = (worker_id);                                                            \
        (req).job_id = (j)->id;                                                                   \
        (req).pod = (j)->pod;                                                                     \
        (req).slot = (j)->slot;                                                                   \
        (req).epoch = (j)->epoch;                                                                 \
    } while (0)

#define BACKOFF_MIN_S 1.0 // after a failed report, wait before trying again (doubling)
#define BACKOFF_MAX_S 8.0
#define REPORT_INTERVAL_S 1.0 // batch the reports of faster steps (one call per interval)
#define REPORT_BATCH_MAX 512   // steps per call: far below the 4 MiB message limit

/* One call of the training thread, with the worker's credential of the moment. */
static moe_status call_as_worker(struct job *j, struct rpc_channel *ch, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *type, ProtobufCMessage **resp,
                                 struct rpc_result *res) {
    char cred[WORKER_CREDENTIAL_MAX];
    worker_copy_credential(j->w, cred);
    rpc_channel_set_token(ch, cred);
    memset(cred, 0, sizeof cred);
    return rpc_call_sync(ch, method, req, type, resp, REPORT_TIMEOUT_S, res);
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
        moe_status s = call_as_worker(j, ch, method, req, type, resp, res);
        if (s != MOE_EUNAVAILABLE) return s;
        double budget = retry_budget(j, budget_s);
        if (moe_clock_s() - t0 >= budget) return s; // rpc_call_sync's message says why
        if (!warned)
            LOG_WARN("%s: %s; retrying for up to %.0f s", j->id, moe_errmsg(), budget);
        warned = 1;
        moe_sleep_s(0.5);
    }
}

/* ---- step reports and their backlog ---- */

struct step_entry {
    Moed__V1__StepMetrics m;
    uint8_t sha[32];  // m.state_sha256 points here on check steps
    float load[];     // m.expert_load points here
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
    e->m.kl = r->kl;
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
    e->m.text_bytes = r->bytes;
    e->m.bits_per_byte = r->bytes ? r->ce * (double)r->tokens / (double)r->bytes / M_LN2 : 0;
    if (val_loss > 0 && t->eval_bytes_per_token > 0)
        e->m.val_bits_per_byte = val_loss / M_LN2 / t->eval_bytes_per_token;
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

/* A step that is not after the newest waiting one was computed again after a recovery went
 * back to an earlier step: it replaces the waiting reports from it on (a report's steps must
 * ascend, or the coordinator refuses the whole batch). */
static void backlog_drop_from(struct backlog *b, long step) {
    while (b->len) {
        size_t last = (b->head + b->len - 1) % b->cap;
        if ((long)b->ring[last]->m.step < step) break;
        free(b->ring[last]);
        b->len--;
    }
}

int backlog_add(struct backlog *b, const struct trainer *t, const struct step_report *r,
                double val_loss) {
    struct step_entry *e = entry_new(t, r, val_loss);
    if (!e) return -1;
    backlog_drop_from(b, (long)e->m.step);
    backlog_push(b, e);
    return 0;
}

static void backlog_pop(struct backlog *b) {
    free(b->ring[b->head]);
    b->head = (b->head + 1) % b->cap;
    b->len--;
}

void backlog_free(struct backlog *b) {
    while (b->len) backlog_pop(b);
    free(b->ring);
}

/* The slot's transport to each peer (StepReport.links), when the coordinator does not have
 * this epoch's yet, or has not had them since it last (re-)registered us (`contact`): the
 * entries in out and ptrs (COMM_MAX_RANKS each), and their count; 0 when none is due. */
static size_t links_due(const struct job *j, unsigned contact, Moed__V1__PeerLink *out,
                        Moed__V1__PeerLink **ptrs) {
    if (!j->links_epoch || j->links_epoch != j->epoch ||
        (j->links_sent_epoch == j->epoch && j->links_sent_contact == contact))
        return 0;
    size_t n = 0;
    for (int r = 0; r < j->pods * j->slots && r < COMM_MAX_RANKS; r++) {
        if (!j->links[r]) continue;
        Moed__V1__PeerLink init = MOED__V1__PEER_LINK__INIT;
        out[n] = init;
        out[n].pod = r / j->slots;
        out[n].slot = r % j->slots;
        out[n].transport = (char *)j->links[r];
        ptrs[n] = &out[n];
        n++;
    }
    return n;
}

/* The waiting reports go oldest first until one cannot be delivered. While failing, the
 * backoff is waited out first (without blocking: training goes on). Reports the coordinator
 * refuses for another reason than being unreachable are dropped with a warning: sending them
 * again would not change its mind. */
int backlog_flush(struct job *j, struct rpc_channel *ch, struct backlog *b, int now) {
    int stop = 0;
    if (b->failing && moe_clock_s() < b->next_try && atomic_load(&j->w->contact) == b->contact)
        return 0;
    double interval = b->interval_s > 0 ? b->interval_s : REPORT_INTERVAL_S;
    if (!b->failing && !now && moe_clock_s() - b->last_sent < interval) return 0;
    size_t held = b->len;
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__StepMetrics *batch[REPORT_BATCH_MAX];
    while (b->len) {
        struct step_entry *e = b->ring[b->head];
        size_t n = b->len < REPORT_BATCH_MAX ? b->len : REPORT_BATCH_MAX;
        for (size_t i = 0; i < n; i++) batch[i] = &b->ring[(b->head + i) % b->cap]->m;
        Moed__V1__StepReport req = MOED__V1__STEP_REPORT__INIT;
        SET_SENDER(req, j, worker_id);
        req.n_metrics = n;
        req.metrics = batch;
        unsigned contact = atomic_load(&j->w->contact);
        Moed__V1__PeerLink links[COMM_MAX_RANKS], *link_ptrs[COMM_MAX_RANKS];
        req.n_links = links_due(j, contact, links, link_ptrs);
        req.links = link_ptrs;
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        moe_status s = call_as_worker(j, ch, RPC_CLUSTER_REPORT_STEP, &req.base,
                                      &moed__v1__step_report_response__descriptor, &resp, &res);
        if (s == MOE_OK && req.n_links) {
            j->links_sent_epoch = j->epoch;
            j->links_sent_contact = contact;
        }
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
            const Moed__V1__StepReportResponse *r = (const void *)resp;
            stop |= r->stop;
            atomic_store(&j->w->report_answered_ms,
                         r->heartbeat_now ? 0 : (long long)(moe_clock_s() * 1e3));
            if (r->report_interval_ms > 0) b->interval_s = (double)r->report_interval_ms / 1e3;
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

/* Every held report goes out before the end report, if the coordinator comes back within
 * the budget. */
int backlog_drain(struct job *j, struct rpc_channel *ch, struct backlog *b) {
    double t0 = moe_clock_s();
    int stop = 0;
    for (;;) {
        stop |= backlog_flush(j, ch, b, 1);
        if (!b->len) return stop;
        if (moe_clock_s() - t0 >= retry_budget(j, FINISH_RETRY_S)) {
            LOG_ERROR("%s: %zu step reports could not be delivered", j->id, b->len);
            return stop;
        }
        moe_sleep_s(0.1);
    }
}

/* ---- the one-off reports ---- */

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

void job_report_fault(struct job *j, struct rpc_channel *ch, long step, const char *error,
                      const struct fault_detail *d) {
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__FaultReport req = MOED__V1__FAULT_REPORT__INIT;
    SET_SENDER(req, j, worker_id);
    req.step = step;
    req.error = (char *)error;
    if (d) {
        req.transfer_refused = d->refused_from >= 0;
        req.source_rank = d->refused_from >= 0 ? d->refused_from : 0;
        req.mismatch_step = d->mismatch_step; /* > 0: the replicas differ: a repair */
        req.mismatch_slot = d->mismatch_slot;
        req.peer_exited = d->peer_exited != 0;
        req.exited_rank = d->peer_exited ? d->exited_rank : 0;
    }
    /* short: the coordinator learns it from the fence and heartbeats too */
    tell(j, ch, RPC_CLUSTER_REPORT_FAULT, &req.base, 2.0, "the fault");
}

void job_report_restored(struct job *j, struct rpc_channel *ch, long step, double connect_s,
                         const struct restore_stats *st) {
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__RestoredReport req = MOED__V1__RESTORED_REPORT__INIT;
    SET_SENDER(req, j, worker_id);
    req.step = step;
    req.connect_seconds = connect_s;
    req.transfer_seconds = st->transfer_s;
    req.bytes_received = st->bytes_received;
    req.bytes_sent = st->bytes_sent;
    tell(j, ch, RPC_CLUSTER_REPORT_RESTORED, &req.base, REPORT_TIMEOUT_S, "the restore");
}

moe_status job_report_end(struct job *j, struct rpc_channel *ch, int ok, int stopped,
                          const char *error, long model_bytes, const unsigned char *sha256,
                          struct rpc_result *res) {
    char worker_id[WORKER_ID_MAX];
    worker_copy_id(j->w, worker_id);
    Moed__V1__JobEndReport req = MOED__V1__JOB_END_REPORT__INIT;
    SET_SENDER(req, j, worker_id);
    req.ok = ok;
    req.stopped = stopped;
    req.unrecoverable = !ok && !stopped && j->unrecoverable;
    req.error = (char *)(error ? error : "");
    req.step = atomic_load(&j->step);
    req.model_bytes = model_bytes;
    if (sha256) {
        req.model_sha256.len = 32;
        req.model_sha256.data = (uint8_t *)sha256;
    }
    ProtobufCMessage *resp = NULL;
    moe_status s = job_call_retry(j, ch, RPC_CLUSTER_REPORT_JOB_END, &req.base,
                                  &moed__v1__empty__descriptor, &resp, FINISH_RETRY_S, res);
    if (s != MOE_OK) {
        if (!res || res->code != GRPC_STATUS_DATA_LOSS) // the caller uploads again
            LOG_ERROR("%s: could not report the job's end: %s", j->id, moe_errmsg());
        return s;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return MOE_OK;
}
