/*
 * workers.c — the worker table and each worker's record (see workers.h).
 */
#include "workers.h"

#include "jobs.h"

#include "../../common/clock.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct worker *workers_find(struct coordinator *co, const char *id) {
    struct worker *w = NULL;
    HASH_FIND_STR(co->workers_by_id, id, w);
    return w;
}

struct worker *workers_index_address(struct coordinator *co, struct worker *w) {
    struct worker *had = NULL;
    HASH_FIND(hh_address, co->workers_by_address, w->address, strlen(w->address), had);
    if (had == w) return NULL;
    if (had) workers_unindex_address(co, had);
    HASH_ADD_KEYPTR(hh_address, co->workers_by_address, w->address, strlen(w->address), w);
    struct worker *now = NULL; // out of memory in the index leaves w out of it, nothing worse
    HASH_FIND(hh_address, co->workers_by_address, w->address, strlen(w->address), now);
    w->address_indexed = now == w;
    return had;
}

void workers_unindex_address(struct coordinator *co, struct worker *w) {
    if (!w->address_indexed) return;
    HASH_DELETE(hh_address, co->workers_by_address, w);
    w->address_indexed = 0;
}

static int load_worker(const Moed__V1__WorkerInfo *in, void *arg) {
    struct coordinator *co = arg;
    struct worker *w = calloc(1, sizeof *w);
    if (!w) return 1;
    snprintf(w->id, sizeof w->id, "%s", in->worker_id);
    w->num = strtol(in->worker_id + 2, NULL, 10);
    snprintf(w->address, sizeof w->address, "%s", in->address);
    w->pod = in->pod;
    w->state = in->state;
    snprintf(w->version, sizeof w->version, "%s", in->version);
    snprintf(w->host, sizeof w->host, "%s", in->host);
    w->pid = in->pid;
    w->cpus = in->cpus;
    w->registered_ms = in->registered_unix_ms;
    w->last_heartbeat_ms = in->last_heartbeat_unix_ms;
    snprintf(w->job_id, sizeof w->job_id, "%s", in->job_id);
    w->slot = in->slot;
    snprintf(w->data_address, sizeof w->data_address, "%s", in->data_address);
    snprintf(w->extra_data_address, sizeof w->extra_data_address, "%s",
             in->n_extra_data_addresses ? in->extra_data_addresses[0] : "");
    w->mpi_rank = in->mpi_rank;
    w->mpi_size = in->mpi_size;
    snprintf(w->mpi_job, sizeof w->mpi_job, "%s", in->mpi_job);
    w->wrong_copies = in->wrong_copies;
    w->drained = in->drained;
    if (co->n_workers == co->cap_workers) {
        int cap = co->cap_workers ? co->cap_workers * 2 : 16;
        struct worker **nw = realloc(co->workers, (size_t)cap * sizeof *nw);
        if (!nw) {
            free(w);
            return 1;
        }
        co->workers = nw;
        co->cap_workers = cap;
    }
    HASH_ADD_STR(co->workers_by_id, id, w);
    if (workers_find(co, w->id) != w) { // the index could not grow
        free(w);
        return 1;
    }
    co->workers[co->n_workers++] = w;
    return 0;
}

/* The identity record of a new worker and the id counter, in one synced write (one fsync, not
 * two: at thousands of registrations the fsyncs were their cost): the credential must survive
 * a restart before the worker learns it. */
static moe_status save_identity(struct coordinator *co, const struct worker *w) {
    Moed__Store__WorkerRecord r = MOED__STORE__WORKER_RECORD__INIT;
    r.worker_id = (char *)w->id;
    r.credential = (char *)w->credential;
    r.issued_unix_ms = moe_wall_ms();
    struct store_batch *b = store_batch_new();
    store_batch_worker_record(b, &r);
    coordinator_batch_meta(b, co);
    return store_batch_commit(co->store, b, 1);
}

moe_status workers_add_new(struct coordinator *co, struct worker **out) {
    Moed__V1__WorkerInfo wi = MOED__V1__WORKER_INFO__INIT;
    char id[24], cred[WORKER_CREDENTIAL_MAX];
    snprintf(id, sizeof id, "w-%ld", co->next_worker);
    CHECK(rpc_new_credential(id, cred, sizeof cred));
    wi.worker_id = id;
    if (load_worker(&wi, co) != 0)
        return moe_fail(MOE_ENOMEM, "out of memory for the worker table");
    co->next_worker++;
    struct worker *w = co->workers[co->n_workers - 1];
    memcpy(w->credential, cred, sizeof cred);
    OPENSSL_cleanse(cred, sizeof cred);
    *out = w;
    return save_identity(co, w);
}

int workers_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]) {
    struct coordinator *co = ctx;
    /* "w-N.<secret>": the id before the dot says whose secret to compare with */
    const char *dot = memchr(cred, '.', len);
    size_t n = dot ? (size_t)(dot - cred) : 0;
    char id[24];
    if (n < 3 || n >= sizeof id) return 0;
    memcpy(id, cred, n);
    id[n] = 0;
    struct worker *w = workers_find(co, id);
    if (!w || !w->credential[0] || !rpc_secret_equal(cred, len, w->credential)) return 0;
    snprintf(out, RPC_IDENTITY_MAX, "%s", w->id);
    return 1;
}

moe_status worker_connect(struct coordinator *co, struct worker *w) {
    if (w->channel) rpc_channel_close(w->channel);
    w->channel = NULL;
    struct rpc_tls tls = {NULL, NULL, co->cfg.worker_tls_ca};
    return rpc_channel_open(&w->channel, w->address, co->cfg.worker_tls_ca[0] ? &tls : NULL,
                            w->credential, 0);
}

static int load_identity(const Moed__Store__WorkerRecord *r, void *arg) {
    struct worker *w = workers_find(arg, r->worker_id);
    if (w) snprintf(w->credential, sizeof w->credential, "%s", r->credential);
    return 0;
}

moe_status workers_load(struct coordinator *co) {
    CHECK(store_workers_scan(co->store, load_worker, co));
    CHECK(store_worker_records_scan(co->store, load_identity, co));
    int64_t now = moe_wall_ms();
    for (int i = 0; i < co->n_workers; i++) {
        struct worker *w = co->workers[i];
        if (!worker_alive(w)) continue;
        w->last_heartbeat_ms = now;
        /* not stored whether it heartbeats seldom when idle: an idle one is waited for as
         * long as if it did, until it registers again */
        w->beats_idle = !w->job_id[0];
        workers_index_address(co, w);
        CHECK(worker_connect(co, w));
    }
    return MOE_OK;
}

void workers_free(struct coordinator *co) {
    HASH_CLEAR(hh, co->workers_by_id);
    HASH_CLEAR(hh_address, co->workers_by_address);
    for (int i = 0; i < co->n_workers; i++) {
        if (co->workers[i]->channel) rpc_channel_close(co->workers[i]->channel);
        OPENSSL_cleanse(co->workers[i]->credential, sizeof co->workers[i]->credential);
        free(co->workers[i]);
    }
    free(co->workers);
    co->workers = NULL;
    co->n_workers = 0;
}

int worker_alive(const struct worker *w) {
    return w->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
           w->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
}

int worker_schedulable(const struct worker *w) {
    return w->state == MOED__V1__WORKER_STATE__WORKER_IDLE && !w->job_id[0] && w->channel &&
           !w->awaiting_idle && !w->drained && w->reachable && !w->refused[0];
}

void worker_set_free(struct worker *w, int awaiting_idle) {
    w->job_id[0] = 0;
    if (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY)
        w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
    if (awaiting_idle) w->awaiting_idle = 1;
}

void worker_mark_dead(struct coordinator *co, struct worker *w) {
    w->state = MOED__V1__WORKER_STATE__WORKER_DEAD;
    w->job_id[0] = 0;
    worker_save(co, w);
}

void worker_info(Moed__V1__WorkerInfo *wi, const struct worker *w, char *extra[1]) {
    Moed__V1__WorkerInfo init = MOED__V1__WORKER_INFO__INIT;
    *wi = init;
    wi->worker_id = (char *)w->id;
    wi->address = (char *)w->address;
    wi->pod = w->pod;
    wi->state = w->state;
    wi->version = (char *)w->version;
    wi->host = (char *)w->host;
    wi->pid = w->pid;
    wi->last_heartbeat_unix_ms = w->last_heartbeat_ms;
    wi->job_id = (char *)w->job_id;
    wi->slot = w->slot;
    wi->registered_unix_ms = w->registered_ms;
    wi->cpus = w->cpus;
    wi->data_address = (char *)w->data_address;
    extra[0] = (char *)w->extra_data_address;
    wi->n_extra_data_addresses = w->extra_data_address[0] ? 1 : 0;
    wi->extra_data_addresses = extra;
    wi->mpi_rank = w->mpi_rank;
    wi->mpi_size = w->mpi_size;
    wi->mpi_job = (char *)w->mpi_job;
    wi->wrong_copies = w->wrong_copies;
    wi->drained = w->drained;
    wi->reachable = w->reachable;
    wi->refused = (char *)w->refused;
    wi->probing = w->probing;
}

void worker_batch(struct store_batch *b, const struct worker *w) {
    Moed__V1__WorkerInfo wi;
    char *extra[1];
    worker_info(&wi, w, extra);
    store_batch_worker(b, &wi); // packs now
}

moe_status worker_save(struct coordinator *co, const struct worker *w) {
    struct store_batch *b = store_batch_new();
    worker_batch(b, w);
    return store_batch_commit(co->store, b, 1);
}

moe_status worker_save_unsynced(struct coordinator *co, const struct worker *w) {
    struct store_batch *b = store_batch_new();
    worker_batch(b, w);
    return store_batch_commit(co->store, b, 0);
}

/* The pods of the workers that did not leave, ascending by pod number: counted into an array
 * indexed by pod number when the numbers are small (O(workers), the usual case: pods numbered
 * from 0), else sorted, never searched, so that ten thousand workers in thousands of pods cost
 * a pass or a sort, not their product. */
static int by_pod(const void *a, const void *b) {
    const Moed__V1__PodInfo *x = a, *y = b;
    return (x->pod > y->pod) - (x->pod < y->pod);
}

/* The sorted way: one entry per worker, sorted, then merged. */
static size_t pods_sorted(struct cluster_view *v, const struct coordinator *co) {
    size_t n = 0;
    for (int i = 0; i < co->n_workers; i++) {
        const struct worker *w = co->workers[i];
        if (w->state == MOED__V1__WORKER_STATE__WORKER_LEFT) continue;
        Moed__V1__PodInfo pi = MOED__V1__POD_INFO__INIT;
        pi.pod = w->pod;
        pi.workers = 1;
        pi.alive = worker_alive(w);
        v->pods[n++] = pi;
    }
    qsort(v->pods, n, sizeof *v->pods, by_pod);
    size_t n_pods = 0;
    for (size_t i = 0; i < n; i++) {
        if (n_pods && v->pods[n_pods - 1].pod == v->pods[i].pod) {
            v->pods[n_pods - 1].workers++;
            v->pods[n_pods - 1].alive += v->pods[i].alive;
        } else {
            v->pods[n_pods++] = v->pods[i];
        }
    }
    return n_pods;
}

/* The counted way, for pod numbers below `limit`: 0 when it cannot count (out of memory). */
static size_t pods_counted(struct cluster_view *v, const struct coordinator *co, int limit) {
    int *count = calloc(2 * (size_t)limit, sizeof *count); // workers, alive: per pod number
    if (!count) return 0;
    for (int i = 0; i < co->n_workers; i++) {
        const struct worker *w = co->workers[i];
        if (w->state == MOED__V1__WORKER_STATE__WORKER_LEFT) continue;
        count[2 * w->pod]++;
        count[2 * w->pod + 1] += worker_alive(w);
    }
    size_t n_pods = 0;
    for (int p = 0; p < limit; p++) {
        if (!count[2 * p]) continue;
        Moed__V1__PodInfo pi = MOED__V1__POD_INFO__INIT;
        pi.pod = p;
        pi.workers = count[2 * p];
        pi.alive = count[2 * p + 1];
        v->pods[n_pods++] = pi;
    }
    free(count);
    return n_pods;
}

static size_t pods_of(struct cluster_view *v, const struct coordinator *co) {
    int top = -1, low = 0; // a registration with a negative pod is refused; a record is
    for (int i = 0; i < co->n_workers; i++) { // not trusted to say the same
        if (co->workers[i]->pod > top) top = co->workers[i]->pod;
        if (co->workers[i]->pod < low) low = co->workers[i]->pod;
    }
    size_t n_pods = 0;
    if (low == 0 && top >= 0 && top < 4 * co->n_workers + 64)
        n_pods = pods_counted(v, co, top + 1);
    if (!n_pods) n_pods = pods_sorted(v, co);
    for (size_t k = 0; k < n_pods; k++) {
        v->pods[k].healthy = v->pods[k].alive == v->pods[k].workers;
        v->pod_ptrs[k] = &v->pods[k];
    }
    return n_pods;
}

/* The first worker whose number is above `after`: the table is in registration order, which
 * is ascending worker number. */
static int workers_index_after(const struct coordinator *co, long after) {
    int lo = 0, hi = co->n_workers;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (co->workers[mid]->num <= after) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Every worker's state, counted for the summary of each page. */
static void count_workers(Moed__V1__ClusterStatus *st, const struct coordinator *co) {
    st->workers_total = co->n_workers;
    for (int i = 0; i < co->n_workers; i++) switch (co->workers[i]->state) {
        case MOED__V1__WORKER_STATE__WORKER_IDLE: st->workers_idle++; break;
        case MOED__V1__WORKER_STATE__WORKER_BUSY: st->workers_busy++; break;
        case MOED__V1__WORKER_STATE__WORKER_DEAD: st->workers_dead++; break;
        case MOED__V1__WORKER_STATE__WORKER_LEFT: st->workers_left++; break;
        default: break;
        }
}

/* The page's workers: from the first above `after`, at most max_workers of them and about
 * max_bytes (one at least); next_token names the last one when more follow. */
static void page_workers(struct cluster_view *v, const struct coordinator *co, int64_t now,
                         long after, int max_workers, size_t max_bytes) {
    size_t n = 0, bytes = 0;
    int i = workers_index_after(co, after);
    for (; i < co->n_workers && n < (size_t)max_workers; i++) {
        const struct worker *w = co->workers[i];
        worker_info(&v->infos[n], w, &v->extra[n]); // each its own slot of v->extra
        v->infos[n].ms_since_heartbeat = now - w->last_heartbeat_ms;
        bytes += protobuf_c_message_get_packed_size(&v->infos[n].base) + 8;
        if (n && bytes > max_bytes) break;
        v->info_ptrs[n] = &v->infos[n];
        n++;
    }
    if (i < co->n_workers && n)
        snprintf(v->next_token, sizeof v->next_token, "%ld", co->workers[i - 1]->num);
    v->st.n_workers = n;
    v->st.workers = v->info_ptrs;
}

moe_status cluster_view_fill(struct cluster_view *v, const struct coordinator *co, int64_t now,
                             long after, int max_workers, size_t max_bytes) {
    Moed__V1__ClusterStatus init = MOED__V1__CLUSTER_STATUS__INIT;
    memset(v, 0, sizeof *v);
    v->st = init;
    size_t n = (size_t)co->n_workers, page = (size_t)(max_workers > 0 ? max_workers : 0);
    if (page > n) page = n;
    v->infos = calloc(page + 1, sizeof *v->infos);
    v->info_ptrs = calloc(page + 1, sizeof *v->info_ptrs);
    v->extra = calloc(page + 1, sizeof *v->extra);
    v->pods = calloc(n + 1, sizeof *v->pods);
    v->pod_ptrs = calloc(n + 1, sizeof *v->pod_ptrs);
    if (!v->infos || !v->info_ptrs || !v->extra || !v->pods || !v->pod_ptrs) {
        cluster_view_free(v);
        return moe_fail(MOE_ENOMEM, "out of memory");
    }
    page_workers(v, co, now, after, (int)page, max_bytes);
    v->st.next_page_token = v->next_token;
    v->st.n_pods = pods_of(v, co);
    v->st.pods = v->pod_ptrs;
    count_workers(&v->st, co);
    for (int i = 0; i < co->n_jobs; i++) {
        v->st.jobs_queued += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_QUEUED;
        v->st.jobs_running += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    }
    v->st.jobs_total = co->n_jobs;
    return MOE_OK;
}

void cluster_view_free(struct cluster_view *v) {
    free(v->infos);
    free(v->info_ptrs);
    free(v->extra);
    free(v->pods);
    free(v->pod_ptrs);
}
