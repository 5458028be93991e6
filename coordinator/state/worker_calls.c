/*
 * worker_calls.c — the calls to workers (see worker_calls.h).
 */
#include "worker_calls.h"

#include "../../common/log.h"
#include "../../proto/methods.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void stop_job_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    (void)resp;
    char *what = arg;
    if (res->code != GRPC_STATUS_OK)
        LOG_WARN("StopJob %s: %s: %s (its heartbeat will say stop again)", what,
                 rpc_code_name(res->code), res->details);
    free(what);
}

void worker_call_stop(struct coordinator *co, const struct job *j, const struct worker *w,
                      uint64_t epoch) {
    if (!w->channel) return;
    Moed__V1__StopJobRequest ref = MOED__V1__STOP_JOB_REQUEST__INIT;
    ref.job_id = (char *)j->id;
    ref.epoch = epoch;
    char *what = malloc(80);
    if (what) snprintf(what, 80, "%s epoch %llu on %s", j->id, (unsigned long long)epoch, w->id);
    rpc_call_async(co->pump, w->channel, RPC_WORKER_STOP_JOB, &ref.base,
                   &moed__v1__empty__descriptor, STOP_JOB_DEADLINE_S, stop_job_reply, what);
}

void worker_call_stop_all(struct coordinator *co, const struct job *j) {
    for (int i = 0; i < job_n_slots(j); i++) {
        struct worker *w = workers_find(co, j->bindings[i].worker_id);
        if (w && strcmp(w->job_id, j->id) == 0) worker_call_stop(co, j, w, j->epoch);
    }
}

moe_status worker_call_probe(struct coordinator *co, const struct worker *w, rpc_reply_cb cb,
                             void *arg) {
    if (!w->channel) return moe_fail(MOE_EUNAVAILABLE, "no channel to %s", w->id);
    Moed__V1__StopJobRequest ref = MOED__V1__STOP_JOB_REQUEST__INIT; // job "": none
    return rpc_call_async(co->pump, w->channel, RPC_WORKER_STOP_JOB, &ref.base,
                          &moed__v1__empty__descriptor, PROBE_DEADLINE_S, cb, arg);
}

moe_status worker_call_fence(struct coordinator *co, const struct job *j, const struct worker *w,
                             rpc_reply_cb cb, void *arg) {
    Moed__V1__FenceRequest req = MOED__V1__FENCE_REQUEST__INIT;
    req.job_id = (char *)j->id;
    req.epoch = j->epoch;
    req.hash_copies = j->rec && j->rec->repair; // a repair learns which copies are good
    return rpc_call_async(co->pump, w->channel, RPC_WORKER_FENCE_SLOT, &req.base,
                          &moed__v1__fence_response__descriptor,
                          req.hash_copies ? REPAIR_FENCE_DEADLINE_S : FENCE_DEADLINE_S, cb, arg);
}

/* Whether a RunSlot round must stop sending: the answer given at once changed the job. */
static int round_over(struct coordinator *co, const char *job_id, uint64_t epoch, uint64_t gen) {
    struct job *j = jobs_find(co, job_id);
    return !j || j->epoch != epoch || j->state != MOED__V1__JOB_STATE__JOB_RUNNING ||
           (gen && (j->rec ? j->rec->gen : 0) != gen);
}

/* A resumed job's first epoch (not a recovery's): slot index req->slot loads its state from
 * the export's file (docs/recovery.md, "Export and resume"). */
static void resume_fields(const struct job *j, Moed__V1__RunSlotRequest *req, int restore) {
    req->resume_step = 0;
    req->resume_path = (char *)protobuf_c_empty_string;
    req->resume_crc32c = 0;
    if (restore || !j->resume) return;
    for (size_t i = 0; i < j->resume->n_slots; i++) {
        const Moed__V1__ExportedSlot *e = j->resume->slots[i];
        if (e->slot != req->slot) continue;
        req->resume_step = j->resume->step;
        req->resume_path = e->path;
        req->resume_crc32c = e->crc32c;
    }
}

/* A binding round's shared request, built once: the mesh's addresses (each distinct host
 * once) and the restore plan as pairs. Owns what the packed request points into. */
struct run_slot_round {
    Moed__V1__MeshAddresses addresses;
    char **hosts;             // into the bindings' data addresses, cut at the port's ':'
    uint32_t *host, *port;    // (n)
    int32_t *pulls;           // (rank, source) pairs
    size_t n_pulls;
};

struct host_entry {
    const char *name;
    size_t len;
    uint32_t index;
    UT_hash_handle hh;
};

static void round_free(struct run_slot_round *r) {
    for (size_t i = 0; r->hosts && i < r->addresses.n_hosts; i++) free(r->hosts[i]);
    free(r->hosts);
    free(r->host);
    free(r->port);
    free(r->pulls);
}

/* Rank k's address into host index and port (port 0: the whole address is the host). O(1)
 * per rank: the distinct hosts are hashed. Returns -1 when out of memory. */
static int round_add(struct run_slot_round *r, struct host_entry **seen, struct host_entry *e,
                     int k, const char *addr) {
    const char *colon = strrchr(addr, ':');
    char *end = NULL;
    unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
    /* only a port that prints back as it was written ("host:80", not "host:080" or "host:+80") */
    int split = colon && colon[1] >= '1' && colon[1] <= '9' && !*end && port < 65536;
    size_t len = split ? (size_t)(colon - addr) : strlen(addr);
    struct host_entry *have;
    HASH_FIND(hh, *seen, addr, len, have);
    if (!have) {
        size_t i = r->addresses.n_hosts;
        if (!(r->hosts[i] = strndup(addr, len))) return -1;
        e->name = r->hosts[i], e->len = len, e->index = (uint32_t)i;
        HASH_ADD_KEYPTR(hh, *seen, e->name, e->len, e);
        r->addresses.n_hosts++;
        have = e;
    }
    r->host[k] = have->index;
    r->port[k] = split ? (uint32_t)port : 0;
    return 0;
}

static moe_status round_build(struct run_slot_round *r, const struct job *j, int restore) {
    int n = job_n_slots(j);
    Moed__V1__MeshAddresses init = MOED__V1__MESH_ADDRESSES__INIT;
    *r = (struct run_slot_round){.addresses = init};
    r->hosts = calloc((size_t)n, sizeof *r->hosts);
    r->host = calloc((size_t)n, sizeof *r->host);
    r->port = calloc((size_t)n, sizeof *r->port);
    struct host_entry *entries = calloc((size_t)n, sizeof *entries), *seen = NULL;
    int bad = !r->hosts || !r->host || !r->port || !entries;
    for (int k = 0; k < n && !bad; k++)
        bad = round_add(r, &seen, &entries[k], k, j->bindings[k].data_address) != 0;
    HASH_CLEAR(hh, seen);
    free(entries);
    if (!bad && restore && j->restore_from) {
        r->pulls = calloc(2 * (size_t)n, sizeof *r->pulls);
        for (int k = 0; r->pulls && k < n; k++)
            if (j->restore_from[k] >= 0) {
                r->pulls[r->n_pulls++] = k;
                r->pulls[r->n_pulls++] = j->restore_from[k];
            }
        bad = !r->pulls;
    }
    r->addresses.hosts = r->hosts;
    r->addresses.n_host = r->addresses.n_port = (size_t)n;
    r->addresses.host = r->host;
    r->addresses.port = r->port;
    if (bad) round_free(r);
    return bad ? moe_fail(MOE_ENOMEM, "out of memory sending RunSlot") : MOE_OK;
}

/* The request every slot of the round shares, packed once (pod and slot 0: each call's tail
 * sets them). O(slots) to build and pack; each call then costs O(1) here. */
static struct rpc_message *round_pack(struct run_slot_round *r, const struct job *j,
                                      int restore) {
    Moed__V1__RunSlotRequest req = MOED__V1__RUN_SLOT_REQUEST__INIT;
    req.job_id = (char *)j->id;
    req.spec_json = j->spec_json;
    req.pods = j->pods;
    req.slots = j->slots;
    req.epoch = j->epoch;
    req.backend = (char *)j->backend;
    req.timeout_s = j->timeout_s;
    req.addresses = &r->addresses;
    req.data_key.len = sizeof j->data_key;
    req.data_key.data = (uint8_t *)j->data_key;
    if (restore && j->restore_from) {
        req.restore = 1;
        req.restore_step = j->restore_step;
        req.n_restore_pulls = r->n_pulls;
        req.restore_pulls = r->pulls;
    }
    return rpc_message_pack(&req.base);
}

/* Slot k's call of the round: the shared request with what is the slot's own appended (its
 * pod and slot, a resumed job's file of its slot index). */
static moe_status send_run_slot(struct coordinator *co, const struct job *j, int k, int restore,
                                const struct rpc_message *m, rpc_reply_cb cb,
                                struct assign_ctx *a) {
    struct worker *w = workers_find(co, j->bindings[k].worker_id);
    if (!w || !w->channel) return moe_fail(MOE_EUNAVAILABLE, "no channel to %s", a->worker_id);
    Moed__V1__RunSlotRequest tail = MOED__V1__RUN_SLOT_REQUEST__INIT;
    tail.pod = k / j->slots;
    tail.slot = k % j->slots;
    resume_fields(j, &tail, restore);
    return rpc_call_async_packed(co->pump, w->channel, RPC_WORKER_RUN_SLOT, m, &tail.base,
                                 &moed__v1__empty__descriptor, RUN_SLOT_DEADLINE_S, cb, a);
}

moe_status worker_call_run_slots(struct coordinator *co, struct job *j, int restore, uint64_t gen,
                                 rpc_reply_cb cb) {
    struct run_slot_round r;
    CHECK(round_build(&r, j, restore));
    struct rpc_message *m = round_pack(&r, j, restore);
    round_free(&r); // packed: the bytes are the message's
    if (!m) return moe_fail(MOE_ENOMEM, "out of memory sending RunSlot");
    /* copies of what a synchronous answer may change */
    char job_id[24];
    snprintf(job_id, sizeof job_id, "%s", j->id);
    uint64_t epoch = j->epoch;
    for (int k = 0; k < job_n_slots(j); k++) {
        struct assign_ctx *a = calloc(1, sizeof *a);
        if (!a) break;
        a->co = co;
        snprintf(a->job_id, sizeof a->job_id, "%s", job_id);
        snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
        a->epoch = epoch;
        a->gen = gen;
        a->slot = k;
        moe_status s = send_run_slot(co, j, k, restore, m, cb, a);
        if (s != MOE_OK) {
            struct rpc_result res = {s == MOE_EUNAVAILABLE ? GRPC_STATUS_UNAVAILABLE
                                                           : GRPC_STATUS_INTERNAL, ""};
            snprintf(res.details, sizeof res.details, "%s", moe_errmsg());
            cb(a, &res, NULL); // may requeue, fail or re-plan the job: stop sending
            if (round_over(co, job_id, epoch, gen)) break;
            j = jobs_find(co, job_id);
        }
    }
    rpc_message_free(m); // the calls hold references to its bytes
    return MOE_OK;
}
