/*
 * service.c — the Worker service the coordinator calls: RunSlot starts a job's slot on a
 * training thread, StopJob asks it to stop (and aborts its data plane, so that a collective
 * waiting on a peer returns at once). Who may call (worker_identify): RunSlot, StopJob and
 * FenceSlot only the coordinator, proving itself with our own current credential (which only
 * it and we know; before we registered nothing is accepted); InjectFault only the operator,
 * with the token this worker wrote to its scratch directory (moectl chaos reads it there);
 * the cluster token opens nothing here. One job at a time (two of
 * its slots at most, after a recovery that found no spare); a finished job's thread is
 * joined here, on the loop, before the next can start (main.c calls worker_reap_jobs when a
 * thread says it is done). RunSlot checks everything it is given (the mesh, the slot, the
 * binding table, the backend against what this process can do) and answers INVALID_ARGUMENT
 * naming what is wrong.
 * Recovery (docs/recovery.md): RunSlot of a newer epoch for the job this worker holds hands
 * the new binding to its training thread (and stops a second slot of the job that the new
 * binding has moved elsewhere); RunSlot with `restore` makes this worker a lost slot's new
 * holder (an idle worker, or a survivor of the same job with a free listener); FenceSlot ends
 * an epoch here and lists the state copies this worker can send; InjectFault is moectl
 * chaos's way in (cut a data-plane connection, flip a bit).
 * Never: trains or talks to the coordinator itself (the job's thread does), or blocks the
 * loop: every handler answers at once.
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "proto/moed.pb-c.h"
#include "../../proto/health.h"
#include "../../proto/methods.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int worker_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]) {
    struct worker *w = ctx;
    char mine[WORKER_CREDENTIAL_MAX];
    worker_copy_credential(w, mine);
    int coordinator = rpc_secret_equal(cred, len, mine); // "" (none yet) matches nothing
    int operator = rpc_secret_equal(cred, len, w->operator_token);
    memset(mine, 0, sizeof mine);
    if (!coordinator && !operator) return 0;
    snprintf(out, RPC_IDENTITY_MAX, "%s", coordinator ? "coordinator" : "operator");
    return 1;
}

int worker_called_by(struct rpc_call *call, const char *who) {
    const char *caller = rpc_call_identity(call);
    if (caller && strcmp(caller, who) == 0) return 1;
    rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "only the %s may call %s here", who,
               rpc_call_method(call));
    return 0;
}

void worker_reap_jobs(struct worker *w) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || !atomic_load(&j->finished) || j->exporting) continue;
        /* finished is the thread's last word: the join returns at once */
        uv_thread_join(&j->thread);
        LOG_DEBUG("%s: slot (%d, %d)'s training thread joined", j->id, j->pod, j->slot);
        w->jobs[k] = NULL;
        job_free(j);
    }
}

int worker_idle(const struct worker *w) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++)
        if (w->jobs[k]) return 0;
    return 1;
}

/* A slot it plays (not finished), or NULL. */
static struct job *any_job(struct worker *w) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++)
        if (w->jobs[k] && !atomic_load(&w->jobs[k]->finished)) return w->jobs[k];
    return NULL;
}

/* The slot (pod, slot) of job `id` this worker plays, if any (pod < 0: any slot of it). */
static struct job *find_job(struct worker *w, const char *id, int pod, int slot) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (j && !atomic_load(&j->finished) && strcmp(j->id, id) == 0 &&
            (pod < 0 || (j->pod == pod && j->slot == slot)))
            return j;
    }
    return NULL;
}

/* The id names the scratch file (<dir>/<id>.safetensors): nothing that could leave it. */
static int job_id_ok(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n >= sizeof ((struct job *)0)->id || id[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.') return 0;
    }
    return 1;
}

static void reply_empty(struct rpc_call *call) {
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

static void fail_oom(struct rpc_call *call) {
    rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
}

/* Rank k's data address as the request names it, in either form of the binding, into out;
 * "" when it names none (or one too long). O(1) in the compact form, O(slots) in a table. */
static void rank_address(const Moed__V1__RunSlotRequest *req, long k, char out[COMM_ADDR_MAX]) {
    const Moed__V1__MeshAddresses *a = req->addresses;
    int len = 0;
    out[0] = 0;
    if (a && k >= 0 && k < (long)a->n_host && k < (long)a->n_port && a->host[k] < a->n_hosts) {
        const char *host = a->hosts[a->host[k]];
        len = a->port[k] ? snprintf(out, COMM_ADDR_MAX, "%s:%u", host, a->port[k])
                         : snprintf(out, COMM_ADDR_MAX, "%s", host);
    }
    for (size_t i = 0; !a && i < req->n_bindings; i++) {
        const Moed__V1__SlotBinding *b = req->bindings[i];
        if ((long)b->pod * req->slots + b->slot == k) {
            len = snprintf(out, COMM_ADDR_MAX, "%s", b->data_address);
            break;
        }
    }
    if (len >= COMM_ADDR_MAX) out[0] = 0;
}

static int check_bindings(struct rpc_call *call, const Moed__V1__RunSlotRequest *req, long n,
                          enum comm_backend backend);
static int check_addresses(struct rpc_call *call, const Moed__V1__RunSlotRequest *req, long n,
                           enum comm_backend backend);

/* The mesh part of a RunSlot for more than one slot: the binding (a table, or the compact
 * addresses the coordinator sends) must name every slot once with a data address, and an mpi
 * slot must be this process's MPI rank. Returns 0 when it is fine, else 1 after failing the
 * call. */
static int check_mesh(struct rpc_call *call, struct worker *w, const Moed__V1__RunSlotRequest *req,
                      long n, enum comm_backend *backend) {
    if (n > COMM_MAX_RANKS) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: a %d x %d mesh has more than %d slots",
                 req->job_id, req->pods, req->slots, COMM_MAX_RANKS);
        return 1;
    }
    if (req->epoch == 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: epoch 0: a mesh binding needs an epoch",
                 req->job_id);
        return 1;
    }
    if (strcmp(req->backend, "mpi") == 0) {
        *backend = COMM_MPI;
    } else if (strcmp(req->backend, "tcp") == 0 || !req->backend[0]) {
        *backend = COMM_TCP;
    } else {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: backend '%.32s': want tcp or mpi",
                 req->job_id, req->backend);
        return 1;
    }
    if (*backend == COMM_MPI && (w->mpi_size != req->slots || w->mpi_rank != req->slot)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) of an mpi mesh needs MPI "
                 "rank %d of %d, but this worker is %s", req->job_id, req->pod, req->slot,
                 req->slot, req->slots, w->mpi_size ? "another rank" : "not under mpirun");
        return 1;
    }
    int bad = req->addresses ? check_addresses(call, req, n, *backend)
                             : check_bindings(call, req, n, *backend);
    if (!bad && req->data_key.len != COMM_KEY_BYTES) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: data_key has %zu bytes: a mesh needs "
                 "the job's %d-byte data-plane key", req->job_id, req->data_key.len,
                 COMM_KEY_BYTES);
        bad = 1;
    }
    return bad;
}

/* The binding as a table of SlotBindings: every slot once, each with a data address. */
static int check_bindings(struct rpc_call *call, const Moed__V1__RunSlotRequest *req, long n,
                          enum comm_backend backend) {
    if ((long)req->n_bindings != n) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: %zu bindings for a %d x %d mesh",
                 req->job_id, req->n_bindings, req->pods, req->slots);
        return 1;
    }
    char *seen = calloc((size_t)n, 1);
    if (!seen) {
        fail_oom(call);
        return 1;
    }
    int bad = 0;
    for (size_t i = 0; i < req->n_bindings && !bad; i++) {
        const Moed__V1__SlotBinding *b = req->bindings[i];
        long k = (long)b->pod * req->slots + b->slot;
        int needs_tcp = backend == COMM_TCP || b->pod != req->pod;
        if (b->pod < 0 || b->pod >= req->pods || b->slot < 0 || b->slot >= req->slots || seen[k]) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: binding %zu names slot (%d, %d): "
                     "outside the mesh or twice", req->job_id, i, b->pod, b->slot);
            bad = 1;
        } else if (needs_tcp && (!strchr(b->data_address, ':') ||
                                 strlen(b->data_address) >= COMM_ADDR_MAX)) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) on %.64s has no "
                     "usable data address ('%.64s')", req->job_id, b->pod, b->slot, b->worker_id,
                     b->data_address);
            bad = 1;
        }
        if (!bad) seen[k] = 1;
    }
    free(seen);
    return bad;
}

/* The binding in compact form: a host and a port for every slot, each host one listed. */
static int check_addresses(struct rpc_call *call, const Moed__V1__RunSlotRequest *req, long n,
                           enum comm_backend backend) {
    const Moed__V1__MeshAddresses *a = req->addresses;
    if (req->n_bindings || (long)a->n_host != n || (long)a->n_port != n) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: addresses give %zu host indexes and %zu "
                 "ports (and %zu bindings) for a %d x %d mesh: want %ld of each, no bindings",
                 req->job_id, a->n_host, a->n_port, req->n_bindings, req->pods, req->slots, n);
        return 1;
    }
    for (long k = 0; k < n; k++) {
        char addr[COMM_ADDR_MAX];
        if (a->host[k] >= a->n_hosts || a->port[k] > 65535) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: addresses: rank %ld names host %u "
                     "of %zu, port %u", req->job_id, k, a->host[k], a->n_hosts, a->port[k]);
            return 1;
        }
        rank_address(req, k, addr);
        if ((backend == COMM_TCP || k / req->slots != req->pod) && !strchr(addr, ':')) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%ld, %ld) has no usable "
                     "data address ('%.64s')", req->job_id, k / req->slots, k % req->slots,
                     a->hosts[a->host[k]]);
            return 1;
        }
    }
    return 0;
}

/* The restore plan in the compact form: (rank, source) pairs, each a rank and another rank of
 * the mesh (none: every slot holds its own state). */
static int check_restore_pulls(struct rpc_call *call, const Moed__V1__RunSlotRequest *req,
                               long n) {
    size_t m = req->n_restore_pulls;
    if (req->restore_step < 0 || req->n_restore_from || m % 2) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: restore to step %lld with %zu pull "
                 "numbers (want pairs) and %zu sources", req->job_id,
                 (long long)req->restore_step, m, req->n_restore_from);
        return 1;
    }
    for (size_t i = 0; i < m; i += 2) {
        int32_t k = req->restore_pulls[i], f = req->restore_pulls[i + 1];
        if (k < 0 || k >= n || f < 0 || f >= n || f == k) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: restore_pulls: rank %d from %d: "
                     "not two ranks of the %ld", req->job_id, k, f, n);
            return 1;
        }
    }
    return 0;
}

/* The restore plan of a recovery RunSlot: one source per rank, each -1 or another rank. */
static int check_restore(struct rpc_call *call, const Moed__V1__RunSlotRequest *req, long n) {
    if (!req->restore) return 0;
    if (req->addresses) return check_restore_pulls(call, req, n); // the compact form
    if (req->restore_step < 0 || (long)req->n_restore_from != n) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: restore to step %lld with %zu sources "
                 "for %ld slots", req->job_id, (long long)req->restore_step,
                 req->n_restore_from, n);
        return 1;
    }
    for (long k = 0; k < n; k++) {
        int32_t f = req->restore_from[k];
        if (f < -1 || f >= n || f == k) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: restore_from[%ld] = %d: not -1 or "
                     "another rank of the %ld", req->job_id, k, f, n);
            return 1;
        }
    }
    return 0;
}

/* The epoch's part of a RunSlot (addresses, timeout, restore plan), owned by the caller. A
 * 1 x 1 job has no peers; a mesh's bindings passed check_mesh. */
static struct epoch_binding *binding_of(const Moed__V1__RunSlotRequest *req, long n,
                                        double timeout_s) {
    struct epoch_binding *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->epoch = req->epoch;
    b->timeout_s = timeout_s;
    if (n > 1) b->peers = calloc((size_t)n, sizeof *b->peers);
    b->restore = req->restore;
    b->restore_step = req->restore_step;
    if (req->restore) b->restore_from = calloc((size_t)n, sizeof *b->restore_from);
    if ((n > 1 && !b->peers) || (req->restore && !b->restore_from)) {
        epoch_binding_free(b);
        return NULL;
    }
    for (size_t i = 0; n > 1 && i < req->n_bindings; i++) {
        const Moed__V1__SlotBinding *sb = req->bindings[i];
        snprintf(b->peers[sb->pod * req->slots + sb->slot], COMM_ADDR_MAX, "%s", sb->data_address);
    }
    for (long k = 0; n > 1 && req->addresses && k < n; k++) rank_address(req, k, b->peers[k]);
    for (long k = 0; req->restore && k < n; k++)
        b->restore_from[k] = req->addresses ? -1 : req->restore_from[k];
    for (size_t i = 0; req->restore && i + 1 < req->n_restore_pulls; i += 2)
        b->restore_from[req->restore_pulls[i]] = req->restore_pulls[i + 1];
    return b;
}

/* A second slot of the job that the new epoch binds elsewhere (the coordinator moved it onto a
 * spare): it stops, here, alone; StopJob would stop both slots. */
static void drop_unbound(struct worker *w, const struct job *j,
                         const Moed__V1__RunSlotRequest *req) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *o = w->jobs[k];
        if (!o || o == j || atomic_load(&o->finished) || strcmp(o->id, j->id) != 0 ||
            job_epoch(o) >= req->epoch)
            continue;
        char addr[COMM_ADDR_MAX];
        rank_address(req, (long)o->pod * req->slots + o->slot, addr);
        if (!addr[0] || !strcmp(addr, w->data_addresses[o->local])) continue;
        if (job_stop(o, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: slot (%d, %d) moves to %s in epoch %llu: stopping it here", o->id,
                     o->pod, o->slot, addr, (unsigned long long)req->epoch);
    }
}

/* RunSlot of a newer epoch for the slot this worker holds: a recovery re-forms the mesh. */
static void run_next_epoch(struct rpc_call *call, struct worker *w, struct job *j,
                           const Moed__V1__RunSlotRequest *req) {
    long n = (long)req->pods * req->slots;
    enum comm_backend backend;
    if (!j->recoverable || n != (long)j->pods * j->slots || req->pods != j->pods) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s: epoch %llu: this worker plays slot "
                 "(%d, %d) of epoch %llu and the job cannot move to another epoch", req->job_id,
                 (unsigned long long)req->epoch, j->pod, j->slot,
                 (unsigned long long)job_epoch(j));
        return;
    }
    if (check_mesh(call, w, req, n, &backend) || check_restore(call, req, n)) return;
    double timeout = req->timeout_s > 0 ? req->timeout_s : j->spec.mesh.timeout_s;
    struct epoch_binding *b = binding_of(req, n, timeout);
    if (!b) {
        fail_oom(call);
        return;
    }
    LOG_INFO("%s: epoch %llu for slot (%d, %d)%s", req->job_id, (unsigned long long)req->epoch,
             req->pod, req->slot, req->restore ? ", restoring" : "");
    job_next_epoch(j, b);
    drop_unbound(w, j, req);
    reply_empty(call);
}

/* The worker's slot (its data listener) for a new slot of a job: the one whose address the
 * binding names for it, else any free one; -1 when none is free. */
static int free_local_slot(const struct worker *w, const Moed__V1__RunSlotRequest *req) {
    char mine[COMM_ADDR_MAX];
    rank_address(req, (long)req->pod * req->slots + req->slot, mine);
    for (int k = 0; mine[0] && k < WORKER_MAX_SLOTS; k++)
        if (w->listeners[k] && !w->jobs[k] && !strcmp(mine, w->data_addresses[k])) return k;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++)
        if (!w->jobs[k] && w->listeners[k]) return k;
    return -1;
}

/* A busy worker takes a second slot only of the job it plays, as a recovery's restore (one
 * that found no spare gives a survivor a lost slot; never a second job, never under mpirun).
 * Returns 1 after refusing the call. */
static int refuse_busy(struct rpc_call *call, struct worker *w,
                       const Moed__V1__RunSlotRequest *req, int local) {
    if (worker_idle(w)) return 0;
    struct job *other = any_job(w);
    if (other && strcmp(other->id, req->job_id) == 0 && req->restore && local >= 0) return 0;
    struct job *busy = other ? other : w->jobs[0] ? w->jobs[0] : w->jobs[1];
    rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "busy with %s", busy ? busy->id : "a job");
    return 1;
}

/* The request for a new slot: its id, its place in the mesh, the binding table and the
 * restore plan. Returns 1 after failing the call. */
static int check_new_slot(struct rpc_call *call, struct worker *w,
                          const Moed__V1__RunSlotRequest *req, enum comm_backend *backend) {
    if (!job_id_ok(req->job_id)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
                 "job_id '%.64s' is not a job id (letters, digits, '-', '_', '.'; at most 63)",
                 req->job_id);
        return 1;
    }
    if (req->pods < 1 || req->slots < 1) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: the mesh must have pods >= 1 and slots >= 1 (got %d x %d)", req->job_id,
                 req->pods, req->slots);
        return 1;
    }
    if (req->pod < 0 || req->pod >= req->pods || req->slot < 0 || req->slot >= req->slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: slot (%d, %d) is outside the %d x %d mesh", req->job_id, req->pod,
                 req->slot, req->pods, req->slots);
        return 1;
    }
    long n = (long)req->pods * req->slots;
    *backend = COMM_TCP;
    if (n > 1 && check_mesh(call, w, req, n, backend)) return 1;
    return check_restore(call, req, n);
}

/* The spec RunSlot carries, parsed and held against the binding. Returns 1 after failing the
 * call. */
static int check_spec(struct rpc_call *call, struct job *j, const Moed__V1__RunSlotRequest *req) {
    if (spec_parse(&j->spec, req->spec_json, strlen(req->spec_json), "RunSlot spec_json") !=
            MOE_OK ||
        spec_validate(&j->spec) != MOE_OK) {
        LOG_WARN("%s: refused: %s", req->job_id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        return 1;
    }
    if (j->spec.mesh.pods != req->pods || j->spec.mesh.slots != req->slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: the spec's mesh is %d x %d but RunSlot "
                 "binds a %d x %d mesh", req->job_id, j->spec.mesh.pods, j->spec.mesh.slots,
                 req->pods, req->slots);
        return 1;
    }
    if (req->restore && !mesh_recoverable(&j->spec.mesh)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: restore asked for a job whose mesh "
                 "keeps no copies (mesh.replicas = %d)", req->job_id, j->spec.mesh.replicas);
        return 1;
    }
    return 0;
}

/* The spec's data paths, each opened beneath the worker's data roots: a path it may not read,
 * or that is missing or empty on this host, fails the job now, naming the field, the path and
 * the host (data lives on each worker's host, and they may differ), rather than in its
 * training thread. Returns 1 after failing the call. */
static int check_data(struct rpc_call *call, const struct worker *w, const struct job *j,
                      const Moed__V1__RunSlotRequest *req) {
    if (data_check_sources(w->roots, &j->spec.data) == MOE_OK &&
        model_files_check(w->roots, &j->spec) == MOE_OK)
        return 0;
    LOG_WARN("%s: refused: %s", req->job_id, moe_errmsg());
    rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s (on host %s)", moe_errmsg(), w->host);
    return 1;
}

/* This worker's memory budget in bytes: --memory-limit-mb, or 90% of physical memory. */
static double memory_budget(const struct worker *w) {
    if (w->cfg.memory_limit_mb > 0) return (double)w->cfg.memory_limit_mb * (1 << 20);
    double pages = (double)sysconf(_SC_PHYS_PAGES), page = (double)sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? 0.9 * pages * page : INFINITY;
}

/* What the slot's model takes at least (its share of the experts, the smallest micro-batch
 * it can run): more than the budget fails the job now, naming the fields, instead of letting
 * one spec take the host's memory. Returns 1 after failing the call. */
static int check_memory(struct rpc_call *call, const struct worker *w, const struct job *j,
                        const Moed__V1__RunSlotRequest *req) {
    const struct job_spec *sp = &j->spec;
    int shards = sp->mesh.pods * sp->mesh.slots;
    int n_local = sp->mesh.slots > 1 ? sp->model.n_experts / sp->mesh.slots : sp->model.n_experts;
    int M = sp->run.micro_batch > 0 ? sp->run.micro_batch : sp->run.batch_size / shards;
    double need = model_bytes_needed(&sp->model, M > 0 ? M : 1, n_local);
    double budget = memory_budget(w);
    if (need <= budget) return 0;
    rpc_refuse(call, GRPC_STATUS_INVALID_ARGUMENT,
               "%s: slot (%d, %d) needs at least %.3g GiB (model.d_model %d, model.layers %d, "
               "model.d_ff %d, %d of model.experts, micro-batch %d x model.seq_len %d), more "
               "than this worker's memory limit of %.3g GiB (--memory-limit-mb)",
               req->job_id, req->pod, req->slot, need / (1 << 30), sp->model.d_model,
               sp->model.n_layers, sp->model.d_ff, n_local, M, sp->model.seq_len,
               budget / (1 << 30));
    return 1;
}

/* A new job's slot from a checked request, with its first epoch's binding adopted; NULL after
 * failing the call. */
static struct job *job_of(struct rpc_call *call, struct worker *w,
                          const Moed__V1__RunSlotRequest *req, int local,
                          enum comm_backend backend) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        fail_oom(call);
        return NULL;
    }
    uv_mutex_init(&j->comm_mu);
    uv_mutex_init(&j->ep_mu);
    uv_cond_init(&j->ep_cv);
    spec_defaults(&j->spec);
    if (check_spec(call, j, req) || check_memory(call, w, j, req) ||
        check_data(call, w, j, req)) {
        job_free(j);
        return NULL;
    }
    long n = (long)req->pods * req->slots;
    struct epoch_binding *b =
        binding_of(req, n, req->timeout_s > 0 ? req->timeout_s : j->spec.mesh.timeout_s);
    if (!b) {
        fail_oom(call);
        job_free(j);
        return NULL;
    }
    job_adopt(j, b);
    if (n > 1) memcpy(j->data_key, req->data_key.data, COMM_KEY_BYTES); // check_mesh: 32 bytes
    j->pods = req->pods;
    j->slots = req->slots;
    j->recoverable = n > 1 && mesh_recoverable(&j->spec.mesh);
    j->backend = backend;
    j->w = w;
    j->local = local;
    snprintf(j->id, sizeof j->id, "%s", req->job_id);
    j->pod = req->pod;
    j->slot = req->slot;
    if (!req->restore && req->resume_path[0]) { // a resumed job's first epoch
        j->resume_step = (long)req->resume_step;
        snprintf(j->resume_path, sizeof j->resume_path, "%s", req->resume_path);
        j->resume_crc32c = req->resume_crc32c;
    }
    atomic_init(&j->stop, JOB_RUN);
    atomic_init(&j->step, 0);
    atomic_init(&j->finished, 0);
    atomic_init(&j->holding, 0);
    return j;
}

static void run_slot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__RunSlotRequest *req = (const Moed__V1__RunSlotRequest *)msg;
    if (!worker_called_by(call, "coordinator")) return;
    if (atomic_load(&w->shutting_down)) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "worker %s is shutting down", w->worker_id);
        return;
    }
    worker_reap_jobs(w); // a job that just ended may not have been joined yet
    struct job *same = find_job(w, req->job_id, req->pod, req->slot);
    if (same && job_epoch(same) == req->epoch) {
        /* a coordinator that restarted may send the same slot again: it runs already */
        LOG_INFO("%s: RunSlot again for the slot it is running: nothing to do", req->job_id);
        reply_empty(call);
        return;
    }
    if (same && req->epoch > job_epoch(same)) {
        run_next_epoch(call, w, same, req);
        return;
    }
    int local = free_local_slot(w, req);
    enum comm_backend backend;
    if (refuse_busy(call, w, req, local) || check_new_slot(call, w, req, &backend)) return;
    struct job *j = job_of(call, w, req, local, backend);
    if (!j) return;
    if (uv_thread_create(&j->thread, job_thread, j) != 0) {
        LOG_ERROR("%s: cannot start a training thread", j->id);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker cannot start a training thread");
        job_free(j);
        return;
    }
    w->jobs[local] = j;
    LOG_INFO("%s: running slot (%d, %d) of the %d x %d mesh of '%s' (epoch %llu): %ld steps%s",
             j->id, j->pod, j->slot, j->pods, j->slots, j->spec.name,
             (unsigned long long)j->epoch, j->spec.run.steps,
             local > 0 ? " (a second slot of this worker)" : "");
    reply_empty(call);
}

static void stop_job(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__StopJobRequest *req = (const Moed__V1__StopJobRequest *)msg;
    if (!worker_called_by(call, "coordinator")) return;
    int found = 0;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished) || strcmp(j->id, req->job_id) != 0) continue;
        uint64_t e = job_epoch(j);
        if (req->epoch && e > req->epoch) {
            /* the stop of an older binding, overtaken by the RunSlot of this one */
            LOG_INFO("%s: slot (%d, %d): StopJob of epoch %llu ignored: it runs epoch %llu",
                     j->id, j->pod, j->slot, (unsigned long long)req->epoch,
                     (unsigned long long)e);
            continue;
        }
        if (job_stop(j, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: slot (%d, %d): stop requested by the coordinator", j->id, j->pod,
                     j->slot);
        found = 1;
    }
    if (!found) LOG_DEBUG("StopJob %.64s: not running here", req->job_id);
    reply_empty(call); // idempotent: stopping a job that is not here is done already
}

static void fence_slot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__FenceRequest *req = (const Moed__V1__FenceRequest *)msg;
    if (!worker_called_by(call, "coordinator")) return;
    Moed__V1__FenceResponse resp = MOED__V1__FENCE_RESPONSE__INIT;
    struct state_copy copies[REPLICA_MAX_COPIES];
    Moed__V1__StateCopy pb[REPLICA_MAX_COPIES], *ptrs[REPLICA_MAX_COPIES];
    int n = 0;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished) || strcmp(j->id, req->job_id) != 0) continue;
        /* two slots of one job: one answer with the copies of both (each names its slot) */
        int got = 0;
        long live = -1;
        double t0 = moe_clock_s();
        int holds = job_fence(j, req->epoch, copies + n, REPLICA_MAX_COPIES - n, &got, &live,
                              req->hash_copies);
        double took_ms = (moe_clock_s() - t0) * 1e3;
        if (!resp.holds || (holds && live < resp.step)) {
            resp.pod = j->pod;
            resp.slot = j->slot;
            resp.step = live;
        }
        resp.holds |= holds;
        if (job_epoch(j) > resp.epoch) resp.epoch = job_epoch(j);
        n += got;
        LOG_INFO("%s: slot (%d, %d) fenced at epoch %llu: live step %ld, %d cop%s (%.1f ms)",
                 j->id, j->pod, j->slot, (unsigned long long)req->epoch, live, got,
                 got == 1 ? "y" : "ies", took_ms);
    }
    for (int i = 0; i < n; i++) {
        Moed__V1__StateCopy c = MOED__V1__STATE_COPY__INIT;
        c.slot = copies[i].slot;
        c.step = copies[i].step;
        if (copies[i].has_sha) {
            c.sha256.data = copies[i].sha;
            c.sha256.len = sizeof copies[i].sha;
        }
        pb[i] = c;
        ptrs[i] = &pb[i];
    }
    resp.n_copies = (size_t)n;
    resp.copies = ptrs;
    rpc_reply(call, &resp.base); // holds = false: nothing of that job here
}

static void inject_fault(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__InjectFaultRequest *req = (const Moed__V1__InjectFaultRequest *)msg;
    if (!worker_called_by(call, "operator")) return;
    struct job *j = find_job(w, req->job_id, -1, -1);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%.64s does not run on this worker",
                 req->job_id);
        return;
    }
    if (strcmp(req->kind, "cut") == 0) {
        int n = 0; /* every slot of the job here: a worker playing two cuts both */
        for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
            struct job *o = w->jobs[k];
            if (!o || atomic_load(&o->finished) || strcmp(o->id, req->job_id) != 0) continue;
            uv_mutex_lock(&o->comm_mu);
            if (o->comm) n += comm_cut(o->comm, req->peer_rank);
            uv_mutex_unlock(&o->comm_mu);
        }
        if (n <= 0) {
            rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s: no data-plane connection to "
                     "rank %d to cut", j->id, req->peer_rank);
            return;
        }
        LOG_WARN("chaos: %s: cut %d data-plane connection%s to rank %d", j->id, n,
                 n == 1 ? "" : "s", req->peer_rank);
    } else if (strcmp(req->kind, "flip") == 0 || strcmp(req->kind, "corrupt-transfer") == 0) {
        int flip = strcmp(req->kind, "flip") == 0;
        uv_mutex_lock(&j->ep_mu);
        int ok = j->trainer && j->trainer->mesh.rep;
        if (ok && flip) replica_request_flip(j->trainer);
        if (ok && !flip) replica_request_corrupt(j->trainer);
        uv_mutex_unlock(&j->ep_mu);
        if (!ok) {
            rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s: no slot state to corrupt yet",
                     j->id);
            return;
        }
        if (!flip) LOG_WARN("chaos: %s: the next state this worker sends for a restore carries a "
                            "flipped bit", j->id);
    } else {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "fault kind '%.32s': want cut, flip or "
                 "corrupt-transfer", req->kind);
        return;
    }
    reply_empty(call);
}

const struct rpc_method worker_methods[] = {
    {RPC_WORKER_RUN_SLOT, &moed__v1__run_slot_request__descriptor, RPC_UNARY,
     RPC_AUTH_IDENTITY, run_slot},
    {RPC_WORKER_STOP_JOB, &moed__v1__stop_job_request__descriptor, RPC_UNARY, RPC_AUTH_IDENTITY,
     stop_job},
    {RPC_WORKER_FENCE_SLOT, &moed__v1__fence_request__descriptor, RPC_UNARY,
     RPC_AUTH_IDENTITY, fence_slot},
    {RPC_WORKER_INJECT_FAULT, &moed__v1__inject_fault_request__descriptor, RPC_UNARY,
     RPC_AUTH_IDENTITY, inject_fault},
    {RPC_WORKER_EXPORT_STATE, &moed__v1__export_state_request__descriptor, RPC_UNARY,
     RPC_AUTH_IDENTITY, worker_export_state},
    RPC_HEALTH_METHODS, // no token: stock probes send none (proto/health.h)
};
const int worker_n_methods = sizeof worker_methods / sizeof worker_methods[0];
const char *const worker_health_names[] = {"moed.v1.Worker"};
const int worker_n_health_names = sizeof worker_health_names / sizeof worker_health_names[0];
