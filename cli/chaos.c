/*
 * chaos.c — `moectl chaos JOB`: a reproducible schedule of faults against a job on a local
 * cluster, each one waited out until the job has survived it (docs/recovery.md), and judged by
 * what the job did about it (docs/operations.md, "Chaos testing").
 *
 * Owns: the schedule (kinds and logical victims drawn from a seed, so that the same seed and
 * the same mesh give the same faults), injecting each fault into the processes of the cluster
 * directory (kill -9, SIGSTOP/SIGCONT, the coordinator's death and restart, Worker.InjectFault
 * with the operator token the victim wrote to its scratch directory worker-<i>/),
 * restarting what it killed so that it comes back as spares, watching the job's status and
 * committed step between faults, judging each fault by its account in the job's event history
 * (chaos_ledger.c: recovered, moved, reattached, repaired, or held) and by the job training on
 * past it, and the report of what happened (text, or --json).
 * Never: signals a process that is not one of the cluster directory's (pid files), decides
 * anything about the recovery itself (the coordinator does), or leaves a process stopped.
 */
#include "client.h"
#include "chaos_ledger.h"
#include "cluster_dir.h"
#include "moectl.h"

#include "../common/clock.h"
#include "proto/moed.pb-c.h"
#include "../proto/methods.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLL_S 0.1            // between two looks at the job
#define CALL_TIMEOUT_S 3.0    // one GetJob/GetCluster: a coordinator that is down fails at once
#define GONE_TIMEOUT_S 5.0    // a SIGKILLed process is gone well within this
#define DEFAULT_FAULTS 5
#define DEFAULT_GAP_STEPS 5
#define DEFAULT_TIMEOUT_S 120
#define MAX_FAULTS 1000
#define MAX_SAMPLES 4096      // committed-step changes kept for the report
#define TEXT_CAP 1024

enum kind { K_KILL, K_KILL2, K_STOP, K_COORDINATOR, K_CUT, K_FLIP, N_KINDS };
/* What the job did about a fault (docs/operations.md): the first that applies, in this order. */
enum outcome { O_NONE, O_REPAIRED, O_RECOVERED, O_MOVED, O_REATTACHED, O_HELD, N_OUTCOMES };
static const char *const outcome_names[N_OUTCOMES] = {"none",  "repaired",   "recovered",
                                                      "moved", "reattached", "held"};
static const char *const kind_names[N_KINDS] = {"kill", "kill2", "stop", "coordinator", "cut",
                                                "flip"};
/* What --kinds means when it is not given: every fault a recovery must survive (flip needs
 * mesh.check_every and the coordinator's repair of what the replica check reports). */
#define DEFAULT_KINDS ((1u << K_KILL) | (1u << K_KILL2) | (1u << K_STOP) | (1u << K_COORDINATOR) | \
                       (1u << K_CUT))

struct victim {
    int pod, slot;            // the logical slot, from the schedule
    char worker_id[64];       // who played it when the fault went in
    char address[256];        // its Worker service
    pid_t pid;
    int index;                // worker-<index> of the cluster directory
};

struct fault {
    enum kind kind;
    int n_victims;
    struct victim v[2];
    int peer_rank;            // cut: the rank whose connection goes
    int64_t step;             // the job's step when it went in
    int64_t seq;              // the job's next event seq when it went in: its window starts
    int64_t settled_seq;      //   ... and the next one when it was judged survived
    int64_t base;             // the step the job must train past before it is judged
    int looked;               // the job was seen once since it went in
    long long injected_ms, recovered_ms; // recovered_ms: when it was judged survived
    int recovered;            // survived (--json "recovered", the name its readers know)
    enum outcome outcome;
    struct account account;   // its window of the event history when it was judged
    int shared_with;          // index of a fault an episode of its account also covered (-1)
    char did[TEXT_CAP];       // what chaos did, for the fault's line
    char recovery[TEXT_CAP];  // how it was accounted for, in words
};

struct sample {
    long long unix_ms;
    int64_t committed;
};

/* Everything a run knows: the options, the cluster, and what it saw of the job. */
struct chaos {
    const char *job_id;
    uint64_t seed;
    int n_faults, gap_steps, json;
    int dry_run;              // print the schedule only
    unsigned kinds;
    int kinds_given;
    double timeout_s;
    char dir[PATH_MAX];
    struct client_options conn;
    struct client cl;
    struct shape shape;
    int pods, slots, mpi;     // the job's mesh
    int check_every;          // its mesh.check_every (-1: its spec does not say)
    struct fault *faults;
    long long start_ms;
    /* what the polls saw */
    Moed__V1__JobStatus *st;  // the last GetJob answer (NULL before the first)
    struct ledger ledger;     // every event of the job, read after each GetJob
    struct sample *samples;
    int n_samples;
    int decreased;            // committed_step went down (a recovery below it: a bug)
    char decrease[256];
    char error[TEXT_CAP];     // what went wrong, "" while nothing did
    pid_t stopped;            // a worker chaos has SIGSTOPped and must SIGCONT
};

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

/* Progress goes to stdout, or to stderr under --json so that stdout is the summary only. */
static void say(const struct chaos *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const struct chaos *c, const char *fmt, ...) {
    FILE *to = c->json ? stderr : stdout;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(to, fmt, ap);
    va_end(ap);
    fputc('\n', to);
    fflush(to);
}

/* Records the first thing that went wrong (later ones follow from it). Returns -1. */
static int chaos_error(struct chaos *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int chaos_error(struct chaos *c, const char *fmt, ...) {
    if (c->error[0]) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- the schedule ---- */

/* splitmix64: tiny, and the same sequence on every machine for a seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int below(uint64_t *state, int n) {
    return n > 1 ? (int)(next_random(state) % (uint64_t)n) : 0;
}

/* Why `kind` cannot hit a pods x slots job of this backend, or NULL when it can. */
static const char *kind_unfit(enum kind k, int pods, int slots, int mpi, int check_every) {
    if (k == K_FLIP && check_every == 0)
        return "flip needs mesh.check_every > 0: nothing else finds a flipped bit";
    if (k == K_KILL2 && (pods < 2 || slots < 2))
        return "kill2 kills two workers in different pods and different slot indices: it needs "
               "a job of at least 2 pods x 2 slots";
    if (k == K_KILL2 && mpi && pods < 3)
        return "kill2 on an mpi job takes two whole pods down (a pod is one failure domain): "
               "with fewer than 3 pods no copy of their slots would remain";
    if ((k == K_STOP || k == K_CUT || k == K_FLIP) && mpi)
        return "stop, cut and flip act on one worker of the tcp data plane; with the mpi "
               "backend use kill or coordinator";
    if ((k == K_CUT) && pods * slots < 2) return "cut needs a job of at least 2 slots";
    return NULL;
}

/* The kinds in use, in kind order. */
static int kinds_list(unsigned kinds, enum kind *out) {
    int n = 0;
    for (int k = 0; k < N_KINDS; k++)
        if (kinds & (1u << k)) out[n++] = (enum kind)k;
    return n;
}

/* Draws the faults from the seed: every kind once first, in a shuffled order (so that K >= the
 * number of kinds covers them all), then kinds at random; the victims as logical slots, so
 * that the same seed on the same mesh names the same slots whoever plays them. */
static void make_schedule(struct chaos *c) {
    uint64_t rng = c->seed;
    enum kind order[N_KINDS];
    int n = kinds_list(c->kinds, order);
    for (int i = n - 1; i > 0; i--) {
        int j = below(&rng, i + 1);
        enum kind t = order[i];
        order[i] = order[j], order[j] = t;
    }
    int P = c->pods, S = c->slots;
    for (int i = 0; i < c->n_faults; i++) {
        struct fault *f = &c->faults[i];
        memset(f, 0, sizeof *f);
        f->kind = i < n ? order[i] : order[below(&rng, n)];
        f->peer_rank = -1;
        f->shared_with = -1;
        if (f->kind == K_COORDINATOR) continue;
        f->n_victims = 1;
        f->v[0].pod = below(&rng, P);
        f->v[0].slot = below(&rng, S);
        if (f->kind == K_KILL2) { // another pod and another slot index: recoverable
            f->n_victims = 2;
            f->v[1].pod = (f->v[0].pod + 1 + below(&rng, P - 1)) % P;
            f->v[1].slot = (f->v[0].slot + 1 + below(&rng, S - 1)) % S;
        } else if (f->kind == K_CUT) {
            int own = f->v[0].pod * S + f->v[0].slot;
            f->peer_rank = below(&rng, P * S - 1);
            if (f->peer_rank >= own) f->peer_rank++;
        }
    }
}

static void victims_text(char *out, size_t cap, const struct fault *f) {
    out[0] = 0;
    if (f->kind == K_COORDINATOR) {
        snprintf(out, cap, "the coordinator");
    } else if (f->n_victims == 2) {
        snprintf(out, cap, "slots (%d, %d) and (%d, %d)", f->v[0].pod, f->v[0].slot, f->v[1].pod,
                 f->v[1].slot);
    } else {
        int n = snprintf(out, cap, "slot (%d, %d)", f->v[0].pod, f->v[0].slot);
        if (f->kind == K_CUT && n > 0 && (size_t)n < cap)
            snprintf(out + n, cap - (size_t)n, ", its connection to rank %d", f->peer_rank);
    }
}

static void print_schedule(const struct chaos *c) {
    say(c, "chaos %s (%d pod%s x %d slot%s, %s): %d fault%s from seed %llu, %d steps apart, "
        "each waited for up to %.0f s",
        c->job_id, c->pods, c->pods == 1 ? "" : "s", c->slots, c->slots == 1 ? "" : "s",
        c->mpi ? "mpi" : "tcp", c->n_faults, c->n_faults == 1 ? "" : "s",
        (unsigned long long)c->seed, c->gap_steps, c->timeout_s);
    for (int i = 0; i < c->n_faults; i++) {
        char what[160];
        victims_text(what, sizeof what, &c->faults[i]);
        say(c, "  %-3d %-12s %s", i + 1, kind_names[c->faults[i].kind], what);
    }
}

/* ---- watching the job ---- */

/* Reads the job's events past those held, and prints the new ones (not those before the run
 * started). 1: read; 0: the coordinator did not answer; -1: an error, recorded. */
static int take_events(struct chaos *c) {
    size_t n_new = 0;
    struct rpc_result res;
    if (ledger_pull(&c->ledger, c->cl.ch, c->job_id, CALL_TIMEOUT_S, &res, &n_new) != MOE_OK) {
        if (res.code == GRPC_STATUS_UNAVAILABLE || res.code == GRPC_STATUS_DEADLINE_EXCEEDED ||
            res.code == GRPC_STATUS_CANCELLED)
            return 0;
        return chaos_error(c, "%s", moe_errmsg());
    }
    for (size_t i = c->ledger.n - n_new; i < c->ledger.n; i++) {
        const struct ledger_event *e = &c->ledger.ev[i];
        if (e->unix_ms < c->start_ms) continue;
        char when[16];
        moectl_clock(when, sizeof when, e->unix_ms);
        say(c, "    %s %-5lld %-16s %s", when, (long long)e->seq, e->kind, e->message);
    }
    return 1;
}

/* Keeps every change of committed_step, and notes one that goes down. */
static void take_committed(struct chaos *c, int64_t committed) {
    if (c->n_samples > 0) {
        int64_t last = c->samples[c->n_samples - 1].committed;
        if (committed == last) return;
        if (committed < last && !c->decreased) {
            c->decreased = 1;
            snprintf(c->decrease, sizeof c->decrease, "committed_step went down from %lld to %lld",
                     (long long)last, (long long)committed);
        }
    }
    if (c->n_samples < MAX_SAMPLES)
        c->samples[c->n_samples++] = (struct sample){moe_wall_ms(), committed};
}

/* One GetJob, then the events that came since the last look (ListEvents). 1: c->st is the
 * fresh answer and c->ledger at least as new; 0: the coordinator did not answer (it may be
 * restarting; c->st keeps the previous one); -1: an answer that ends the run (NOT_FOUND,
 * credentials), recorded in c->error. */
static int poll_job(struct chaos *c) {
    Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
    req.job_id = (char *)c->job_id;
    ProtobufCMessage *reply = NULL;
    struct rpc_result res;
    if (rpc_call_sync(c->cl.ch, RPC_JOBS_GET_JOB, &req.base,
                      &moed__v1__job_status__descriptor, &reply, CALL_TIMEOUT_S, &res) != MOE_OK) {
        if (res.code == GRPC_STATUS_UNAVAILABLE || res.code == GRPC_STATUS_DEADLINE_EXCEEDED ||
            res.code == GRPC_STATUS_CANCELLED)
            return 0;
        return chaos_error(c, "%s", moe_errmsg());
    }
    Moed__V1__JobStatus *st = (Moed__V1__JobStatus *)reply;
    if (!st->job) {
        protobuf_c_message_free_unpacked(reply, NULL);
        return chaos_error(c, "GetJob %s: the coordinator answered without the job", c->job_id);
    }
    if (c->st) protobuf_c_message_free_unpacked(&c->st->base, NULL);
    c->st = st;
    take_committed(c, st->job->committed_step);
    return take_events(c);
}

/* "FAILED at step 12: <error>" */
static void job_text(char *out, size_t cap, const Moed__V1__JobInfo *j) {
    snprintf(out, cap, "%s at step %lld (committed %lld, %d recover%s%s)%s%s",
             client_job_state(j->state), (long long)j->step, (long long)j->committed_step,
             j->recoveries, j->recoveries == 1 ? "y" : "ies", j->recovering ? ", recovering" : "",
             j->error[0] ? ": " : "", j->error);
}

/* ---- the processes of the cluster directory ---- */

/* worker-<i> of the directory whose pid file names `pid`, or -1: chaos signals only those. */
static int worker_index(const struct chaos *c, pid_t pid) {
    char path[PATH_CAP];
    int n = worker_files(c->dir);
    for (int i = 0; i < n; i++)
        if (read_pid(worker_file(path, c->dir, i, ".pid")) == pid) return i;
    return -1;
}

static int wait_gone(pid_t pid) {
    double deadline = moe_clock_s() + GONE_TIMEOUT_S;
    while (daemon_alive(pid)) {
        reap();
        if (moe_clock_s() > deadline) return -1;
        moe_sleep_s(0.01);
    }
    return 0;
}

/* The workers as the coordinator sees them, or NULL when it does not answer. */
static Moed__V1__ClusterStatus *get_cluster(struct chaos *c) {
    struct rpc_result res;
    return client_get_cluster(&c->cl, CALL_TIMEOUT_S, &res);
}

/* Who plays slot (pod, slot) now: its worker id from the job, its pid and address from the
 * cluster, its index from the pid files. */
static int find_victim(struct chaos *c, struct victim *v) {
    const Moed__V1__JobStatus *st = c->st;
    size_t rank = (size_t)(v->pod * c->slots + v->slot);
    if (rank >= st->n_slots || !st->slots[rank]->worker_id[0])
        return chaos_error(c, "slot (%d, %d) of %s is not bound to a worker", v->pod, v->slot,
                           c->job_id);
    snprintf(v->worker_id, sizeof v->worker_id, "%s", st->slots[rank]->worker_id);
    Moed__V1__ClusterStatus *cs = get_cluster(c);
    if (!cs) return chaos_error(c, "%s", moe_errmsg());
    v->pid = 0;
    for (size_t i = 0; i < cs->n_workers; i++)
        if (strcmp(cs->workers[i]->worker_id, v->worker_id) == 0) {
            v->pid = cs->workers[i]->pid;
            snprintf(v->address, sizeof v->address, "%s", cs->workers[i]->address);
        }
    protobuf_c_message_free_unpacked(&cs->base, NULL);
    if (!v->pid) return chaos_error(c, "worker %s (slot (%d, %d)) is not in the cluster's "
                                    "worker list", v->worker_id, v->pod, v->slot);
    v->index = worker_index(c, v->pid);
    if (v->index < 0 || !daemon_alive(v->pid))
        return chaos_error(c, "worker %s (slot (%d, %d), pid %d) is not a live process of the "
                           "cluster in %s: chaos acts only on the processes of its pid files",
                           v->worker_id, v->pod, v->slot, (int)v->pid, c->dir);
    return 0;
}

/* The coordinator's death closes our channel's connection; a new channel avoids gRPC's
 * reconnect backoff after it comes back. */
static int reconnect(struct chaos *c) {
    client_close(&c->cl);
    int code = client_open(&c->cl, &c->conn);
    return code ? chaos_error(c, "cannot reach the restarted coordinator") : 0;
}

static int restart_cluster(struct chaos *c, const char *what) {
    if (cluster_restart(c->dir) != EXIT_OK)
        return chaos_error(c, "restarting %s in %s failed (see its log there)", what, c->dir);
    return 0;
}

/* ---- the faults ---- */

/* A slot index none of whose copies (slot s of every pod) would outlive the workers of f's
 * victims, or -1. A worker may play two slots (a recovery without a spare doubled one up), so
 * two victims in different pods and slot indices can still take every copy of one. */
static int slot_index_lost(const struct chaos *c, const struct fault *f) {
    const Moed__V1__JobStatus *st = c->st;
    for (int s = 0; s < c->slots; s++) {
        int kept = 0;
        for (int p = 0; p < c->pods && !kept; p++) {
            size_t r = (size_t)(p * c->slots + s);
            const char *w = r < st->n_slots ? st->slots[r]->worker_id : "";
            kept = w[0] && strcmp(w, f->v[0].worker_id) != 0 &&
                   (f->n_victims < 2 || strcmp(w, f->v[1].worker_id) != 0);
        }
        if (!kept) return s;
    }
    return -1;
}

/* Finds the victims; a kill2 whose victims would take every copy of a slot index waits (up
 * to --timeout) until the coordinator has moved the doubled slot onto a spare: the fault is
 * meant to be recoverable. */
static int find_kill_victims(struct chaos *c, struct fault *f) {
    double t0 = moe_clock_s();
    for (int said = 0;; said = 1) {
        for (int i = 0; i < f->n_victims; i++)
            if (find_victim(c, &f->v[i])) return -1;
        int s = f->n_victims == 2 ? slot_index_lost(c, f) : -1;
        if (s < 0) break;
        if (!said)
            say(c, "fault %d/%d: kill2 waits: %s and %s play every copy of slot index %d (one "
                "plays two slots); waiting until a doubled slot moves onto a spare",
                (int)(f - c->faults) + 1, c->n_faults, f->v[0].worker_id, f->v[1].worker_id, s);
        if (interrupted) return chaos_error(c, "interrupted (signal %d)", (int)interrupted);
        if (moe_clock_s() - t0 > c->timeout_s)
            return chaos_error(c, "fault %d (kill2): %s and %s still play every copy of slot "
                               "index %d after %.0f s (is mesh.move_to_spare off?)",
                               (int)(f - c->faults) + 1, f->v[0].worker_id, f->v[1].worker_id,
                               s, c->timeout_s);
        moe_sleep_s(POLL_S);
        if (poll_job(c) < 0) return -1;
    }
    f->step = f->base = c->st->job->step;
    return 0;
}

static int inject_kill(struct chaos *c, struct fault *f) {
    if (find_kill_victims(c, f)) return -1;
    f->injected_ms = moe_wall_ms();
    for (int i = 0; i < f->n_victims; i++) // back to back: "at once" for the coordinator
        if (kill(f->v[i].pid, SIGKILL) != 0)
            return chaos_error(c, "kill -9 %d (%s): %s", (int)f->v[i].pid, f->v[i].worker_id,
                               strerror(errno));
    for (int i = 0; i < f->n_victims; i++)
        if (wait_gone(f->v[i].pid))
            return chaos_error(c, "worker %s (pid %d) still runs %.0f s after SIGKILL",
                               f->v[i].worker_id, (int)f->v[i].pid, GONE_TIMEOUT_S);
    char who[2][160];
    for (int i = 0; i < f->n_victims; i++)
        snprintf(who[i], sizeof who[i], "%s (pid %d, slot (%d, %d), worker-%d)", f->v[i].worker_id,
                 (int)f->v[i].pid, f->v[i].pod, f->v[i].slot, f->v[i].index);
    /* At once, not after the recovery: the restarted workers are the spares it may need. */
    int failed = restart_cluster(c, "the killed workers");
    snprintf(f->did, sizeof f->did, "killed %s%s%s; %s", who[0], f->n_victims == 2 ? " and " : "",
             f->n_victims == 2 ? who[1] : "",
             failed      ? "restarting them failed"
             : c->mpi    ? "restarted the pod's mpirun: its ranks are spares"
             : f->n_victims == 1 ? "restarted it as a spare" : "restarted them as spares");
    return failed;
}

/* Fenced: the coordinator began (or advanced, or finished) a recovery or a move after the
 * fault, or stopped the job, or holds the worker dead. A recovery or move already in progress
 * when the fault went in is not enough (issue 18): its fence may have passed the worker. */
static int fenced(struct chaos *c, const struct fault *f) {
    const Moed__V1__JobInfo *j = c->st->job;
    if (client_job_final(j->state) || ledger_episode_since(&c->ledger, f->seq)) return 1;
    Moed__V1__ClusterStatus *cs = get_cluster(c);
    if (!cs) return 0;
    int dead = 0;
    for (size_t i = 0; i < cs->n_workers; i++)
        dead |= strcmp(cs->workers[i]->worker_id, f->v[0].worker_id) == 0 &&
                cs->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_DEAD;
    protobuf_c_message_free_unpacked(&cs->base, NULL);
    return dead;
}

static int inject_stop(struct chaos *c, struct fault *f) {
    struct victim *v = &f->v[0];
    if (find_victim(c, v)) return -1;
    f->injected_ms = moe_wall_ms();
    if (kill(v->pid, SIGSTOP) != 0)
        return chaos_error(c, "kill -STOP %d (%s): %s", (int)v->pid, v->worker_id, strerror(errno));
    c->stopped = v->pid;
    /* Said now: the events of the fencing come while it is stopped. */
    say(c, "fault %d/%d at step %lld: stop: SIGSTOP %s (pid %d, slot (%d, %d)); waiting until the "
        "coordinator fences it", (int)(f - c->faults) + 1, c->n_faults, (long long)f->step,
        v->worker_id, (int)v->pid, v->pod, v->slot);
    double t0 = moe_clock_s();
    int ok = 0;
    while (!interrupted && moe_clock_s() - t0 < c->timeout_s) {
        if (poll_job(c) < 0) break;
        if ((ok = fenced(c, f))) break;
        moe_sleep_s(POLL_S);
    }
    kill(v->pid, SIGCONT);
    c->stopped = 0;
    snprintf(f->did, sizeof f->did, "stopped %s (pid %d, slot (%d, %d)) for %.1f s, until %s; "
             "then SIGCONT", v->worker_id, (int)v->pid, v->pod, v->slot, moe_clock_s() - t0,
             ok ? "the coordinator fenced it" : "chaos gave up");
    if (!ok) return chaos_error(c, "fault stop: the coordinator did not fence %s (SIGSTOPped) "
                                "within %.0f s", v->worker_id, c->timeout_s);
    return 0;
}

static int inject_coordinator(struct chaos *c, struct fault *f) {
    char path[PATH_CAP];
    pid_t pid = read_pid(in_dir(path, c->dir, "coordinator.pid"));
    if (!daemon_alive(pid))
        return chaos_error(c, "no live coordinator in %s (coordinator.pid says %d)", c->dir,
                           (int)pid);
    f->injected_ms = moe_wall_ms();
    if (kill(pid, SIGKILL) != 0)
        return chaos_error(c, "kill -9 %d (the coordinator): %s", (int)pid, strerror(errno));
    if (wait_gone(pid))
        return chaos_error(c, "the coordinator (pid %d) still runs %.0f s after SIGKILL", (int)pid,
                           GONE_TIMEOUT_S);
    double t0 = moe_clock_s();
    if (restart_cluster(c, "the coordinator")) return -1;
    pid_t now = read_pid(in_dir(path, c->dir, "coordinator.pid"));
    snprintf(f->did, sizeof f->did, "killed the coordinator (pid %d); restarted it as pid %d on "
             "its port in %.2f s", (int)pid, (int)now, moe_clock_s() - t0);
    return reconnect(c);
}

/* cut and flip: Worker.InjectFault on the victim's worker, with the operator token that worker
 * wrote to its scratch directory (worker-<i>/operator.token: only the cluster directory's owner
 * can read it; the cluster token opens nothing on a worker). */
static int inject_rpc(struct chaos *c, struct fault *f) {
    struct victim *v = &f->v[0];
    if (find_victim(c, v)) return -1;
    char token_file[PATH_CAP], token[256], ca[PATH_CAP];
    worker_file(token_file, c->dir, v->index, "/operator.token");
    in_dir(ca, c->dir, "tls/cert.pem");
    if (rpc_read_token(token_file, token, sizeof token) != MOE_OK)
        return chaos_error(c, "%s", moe_errmsg());
    struct client w;
    if (client_open_at(&w, v->address, token, access(ca, R_OK) == 0 ? ca : NULL))
        return chaos_error(c, "cannot open a channel to worker %s at %s", v->worker_id, v->address);
    Moed__V1__InjectFaultRequest req = MOED__V1__INJECT_FAULT_REQUEST__INIT;
    req.job_id = (char *)c->job_id;
    req.kind = (char *)kind_names[f->kind];
    req.peer_rank = f->peer_rank;
    ProtobufCMessage *reply = NULL;
    struct rpc_result res;
    f->injected_ms = moe_wall_ms();
    moe_status s = rpc_call_sync(w.ch, RPC_WORKER_INJECT_FAULT, &req.base,
                                 &moed__v1__empty__descriptor, &reply, CALL_TIMEOUT_S, &res);
    client_close(&w);
    if (s != MOE_OK) return chaos_error(c, "%s", moe_errmsg());
    protobuf_c_message_free_unpacked(reply, NULL);
    if (f->kind == K_CUT)
        snprintf(f->did, sizeof f->did, "cut the data-plane connection of %s (slot (%d, %d), rank "
                 "%d) to rank %d", v->worker_id, v->pod, v->slot, v->pod * c->slots + v->slot,
                 f->peer_rank);
    else
        snprintf(f->did, sizeof f->did, "flipped a bit of the live parameters of %s (slot (%d, "
                 "%d))", v->worker_id, v->pod, v->slot);
    return 0;
}

static int inject(struct chaos *c, struct fault *f) {
    f->step = f->base = c->st->job->step;
    f->seq = c->ledger.next_seq; // read by the poll that let it go in
    switch (f->kind) {
    case K_KILL:
    case K_KILL2: return inject_kill(c, f);
    case K_STOP: return inject_stop(c, f);
    case K_COORDINATOR: return inject_coordinator(c, f);
    case K_CUT:
    case K_FLIP: return inject_rpc(c, f);
    default: return chaos_error(c, "fault kind %d", (int)f->kind);
    }
}

/* Polls the job every POLL_S until reached() says it is there (1; 0: not yet, -1: an error
 * it recorded), for up to c->timeout_s. 0 when reached, -1 after an error (recorded), 1
 * when the time ran out. */
static int poll_until(struct chaos *c, int (*reached)(struct chaos *c, const void *arg),
                      const void *arg) {
    double t0 = moe_clock_s();
    for (;;) {
        if (interrupted) return chaos_error(c, "interrupted (signal %d)", (int)interrupted);
        int r = poll_job(c);
        if (r < 0) return -1;
        if (r > 0 && (r = reached(c, arg)) != 0) return r > 0 ? 0 : -1;
        if (moe_clock_s() - t0 > c->timeout_s) return 1;
        moe_sleep_s(POLL_S);
    }
}

struct gap {
    int index;    // of the fault to come
    int64_t base; // the step the gap counts from
};

/* -1 (recorded) when the job has ended before fault `index` could go in, else 0. */
static int ended_before(struct chaos *c, int index) {
    const Moed__V1__JobInfo *j = c->st->job;
    if (!client_job_final(j->state)) return 0;
    char jt[TEXT_CAP];
    job_text(jt, sizeof jt, j);
    return chaos_error(c, "the job ended before fault %d of %d: %s%s", index + 1, c->n_faults, jt,
                       j->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED
                           ? " (give it more run.steps, or fewer faults)" : "");
}

/* The job has done `gap_steps` steps since the base and is not recovering. */
static int gap_done(struct chaos *c, const void *arg) {
    const struct gap *g = arg;
    const Moed__V1__JobInfo *j = c->st->job;
    if (ended_before(c, g->index)) return -1;
    return j->state == MOED__V1__JOB_STATE__JOB_RUNNING && !j->recovering &&
           j->step >= g->base + c->gap_steps && j->n_bindings > 0;
}

static int wait_gap(struct chaos *c, int index, int64_t base) {
    const struct gap g = {index, base};
    int r = poll_until(c, gap_done, &g);
    if (r <= 0) return r;
    return chaos_error(c, "fault %d of %d: the job did not make %d steps past step %lld "
                       "within %.0f s", index + 1, c->n_faults, c->gap_steps, (long long)base,
                       c->timeout_s);
}

/* ---- judging a fault ---- */

/* What the account of its window says the job did about a fault of kind k, the first that
 * applies; O_NONE: not enough yet (a kill needs a recovery or a move, a flip its repair or a
 * recovery that restored the state over it). */
static enum outcome outcome_of(enum kind k, const struct account *a) {
    if (k == K_FLIP) return a->repaired ? O_REPAIRED : a->recovered ? O_RECOVERED : O_NONE;
    if (a->recovered) return O_RECOVERED;
    if (a->moved) return O_MOVED;
    if (k == K_KILL || k == K_KILL2) return O_NONE;
    if (k == K_COORDINATOR && a->reattached) return O_REATTACHED;
    return O_HELD;
}

/* "events 120-131", or the empty window. */
static void window_text(char *out, size_t cap, const struct fault *f) {
    const struct account *a = &f->account;
    if (a->first_seq >= 0)
        snprintf(out, cap, "events %lld-%lld", (long long)a->first_seq, (long long)a->last_seq);
    else
        snprintf(out, cap, "no event of the job between seq %lld and %lld", (long long)f->seq,
                 (long long)f->settled_seq);
}

/* The fault's account in words, into f->recovery. */
static void describe(struct chaos *c, int i) {
    struct fault *f = &c->faults[i];
    const struct account *a = &f->account;
    char w[96], what[TEXT_CAP], earlier[160] = "";
    window_text(w, sizeof w, f);
    switch (f->outcome) {
    case O_REPAIRED:
        snprintf(what, sizeof what, "replica_mismatch at seq %lld, repaired at seq %lld: %.600s",
                 (long long)(a->mismatch ? a->mismatch->seq : -1),
                 (long long)a->repaired_by->seq, a->repaired_by->message);
        break;
    case O_RECOVERED:
        snprintf(what, sizeof what, "%d recover%s%s (%s), the last at seq %lld: %.600s",
                 a->recovered, a->recovered == 1 ? "y" : "ies",
                 a->moved ? " and a move" : "", w, (long long)a->recovered_by->seq,
                 a->recovered_by->message);
        break;
    case O_MOVED:
        snprintf(what, sizeof what, "a move (%s), at seq %lld: %.600s", w,
                 (long long)a->moved_by->seq, a->moved_by->message);
        break;
    case O_REATTACHED:
        snprintf(what, sizeof what, "%d slot%s reattached to the restarted coordinator (%s); no "
                 "recovery needed", a->reattached, a->reattached == 1 ? "" : "s", w);
        break;
    default:
        snprintf(what, sizeof what, "the job needed nothing: no recovery, move or repair (%s)",
                 w);
    }
    if (a->earlier_seq >= 0)
        snprintf(earlier, sizeof earlier, "; it landed during an episode that began at seq %lld%s",
                 (long long)a->earlier_seq, f->shared_with >= 0
                     ? ", in the previous fault's window: that one counts for both" : "");
    snprintf(f->recovery, sizeof f->recovery, "%.800s%.160s%s", what, earlier,
             c->st->job->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED ? "; the job SUCCEEDED" : "");
}

/* Fault i is survived with outcome o: the account is kept, and an episode that began in the
 * previous fault's window (after it was judged) is said to cover both. */
static void settle(struct chaos *c, int i, const struct account *a, enum outcome o) {
    struct fault *f = &c->faults[i];
    f->account = *a;
    f->outcome = o;
    f->settled_seq = c->ledger.next_seq;
    f->recovered = 1;
    f->recovered_ms = moe_wall_ms();
    if (i > 0 && a->earlier_seq >= c->faults[i - 1].seq) {
        f->shared_with = i - 1;
        c->faults[i - 1].shared_with = i;
    }
    describe(c, i);
}

/* Survived: the job is RUNNING with no recovery, move or repair in progress, what the fault
 * needed has happened (outcome_of), and it trained --gap-steps (at least 1) past the step it
 * was at when the fault went in and past any recovery after it; or it SUCCEEDED. FAILED or
 * CANCELLED ends the run. */
static int fault_settled(struct chaos *c, const void *arg) {
    const int i = *(const int *)arg;
    struct fault *f = &c->faults[i];
    const Moed__V1__JobInfo *j = c->st->job;
    struct account a;
    ledger_account(&c->ledger, f->seq, c->ledger.next_seq, &a);
    enum outcome o = outcome_of(f->kind, &a);
    if (j->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED) {
        settle(c, i, &a, o == O_NONE ? O_HELD : o);
        return 1;
    }
    if (client_job_final(j->state)) {
        char jt[TEXT_CAP];
        job_text(jt, sizeof jt, j);
        return chaos_error(c, "fault %d (%s) was not survived: the job %s", i + 1,
                           kind_names[f->kind], jt);
    }
    int busy = j->state != MOED__V1__JOB_STATE__JOB_RUNNING || j->recovering ||
               a.open_seq >= 0 || a.repair_seq >= 0 || o == O_NONE;
    if (busy || !f->looked) { // the first look after a restart: its stored step is the base
        if (j->step > f->base) f->base = j->step;
        f->looked = 1;
        return 0;
    }
    if (j->step < f->base + (c->gap_steps > 0 ? c->gap_steps : 1)) return 0;
    settle(c, i, &a, o);
    return 1;
}

/* What fault i still waits for, in words. */
static void missing_text(struct chaos *c, int i, char *out, size_t cap) {
    const struct fault *f = &c->faults[i];
    struct account a;
    ledger_account(&c->ledger, f->seq, c->ledger.next_seq, &a);
    const struct ledger_event *last = c->ledger.n ? &c->ledger.ev[c->ledger.n - 1] : NULL;
    char ev[400] = "no event";
    if (last)
        snprintf(ev, sizeof ev, "the last event: seq %lld %s: %.300s", (long long)last->seq,
                 last->kind, last->message);
    if (a.repair_seq >= 0)
        snprintf(out, cap, "replica_mismatch at seq %lld and no repaired after it (%s)",
                 (long long)a.repair_seq, ev);
    else if (a.open_seq >= 0)
        snprintf(out, cap, "a recovery or move in progress since seq %lld (%s)",
                 (long long)a.open_seq, ev);
    else if (outcome_of(f->kind, &a) == O_NONE)
        snprintf(out, cap, "%s (%s)", f->kind == K_FLIP
                     ? "no replica_mismatch then repaired (is mesh.check_every on?)"
                     : "no recovery or move after it", ev);
    else
        snprintf(out, cap, "the job did not train %d step%s past step %lld (%s)",
                 c->gap_steps > 0 ? c->gap_steps : 1, c->gap_steps > 1 ? "s" : "",
                 (long long)f->base, ev);
}

static int wait_settled(struct chaos *c, int i) {
    int r = poll_until(c, fault_settled, &i);
    if (r <= 0) return r;
    char jt[TEXT_CAP] = "not answering", miss[TEXT_CAP];
    if (c->st) job_text(jt, sizeof jt, c->st->job);
    missing_text(c, i, miss, sizeof miss);
    return chaos_error(c, "fault %d (%s) was not survived within %.0f s: %s; the job is %s", i + 1,
                       kind_names[c->faults[i].kind], c->timeout_s, miss, jt);
}

/* One fault: inject it, wait until the job has survived it. Returns 0 when it did. */
static int run_fault(struct chaos *c, int i) {
    struct fault *f = &c->faults[i];
    if (ended_before(c, i)) return -1;
    int failed = inject(c, f);
    char what[160];
    victims_text(what, sizeof what, f);
    if (f->kind == K_STOP) // its first line went out with the SIGSTOP
        say(c, "fault %d/%d: %s", i + 1, c->n_faults, f->did[0] ? f->did : what);
    else
        say(c, "fault %d/%d at step %lld: %s: %s", i + 1, c->n_faults, (long long)f->step,
            kind_names[f->kind], f->did[0] ? f->did : what);
    if (failed || wait_settled(c, i)) return -1;
    const Moed__V1__JobInfo *j = c->st->job;
    say(c, "fault %d/%d %s after %.2f s: %s; job %s at step %lld, committed %lld, %d recover%s, "
        "%d move%s", i + 1, c->n_faults, outcome_names[f->outcome],
        (f->recovered_ms - f->injected_ms) / 1000.0, f->recovery, client_job_state(j->state),
        (long long)j->step, (long long)j->committed_step, j->recoveries,
        j->recoveries == 1 ? "y" : "ies", j->moves, j->moves == 1 ? "" : "s");
    return 0;
}

/* ---- the report ---- */

static int n_recovered(const struct chaos *c) {
    int n = 0;
    for (int i = 0; i < c->n_faults; i++) n += c->faults[i].recovered;
    return n;
}

/* The faults injected (of `kind`, or all when it is -1) by outcome; n[O_NONE]: those not
 * survived. */
static void count_outcomes(const struct chaos *c, int kind, int n[N_OUTCOMES]) {
    memset(n, 0, N_OUTCOMES * sizeof *n);
    for (int i = 0; i < c->n_faults; i++)
        if (c->faults[i].injected_ms && (kind < 0 || (int)c->faults[i].kind == kind))
            n[c->faults[i].recovered ? c->faults[i].outcome : O_NONE]++;
}

/* "12 recovered, 3 held" (the outcomes that occurred), or "none". */
static void outcomes_text(char *out, size_t cap, const int n[N_OUTCOMES]) {
    size_t len = 0;
    out[0] = 0;
    for (int o = 1; o <= N_OUTCOMES; o++) {
        int k = o % N_OUTCOMES; // O_NONE ("not survived") last
        if (!n[k] || len >= cap) continue;
        len += (size_t)snprintf(out + len, cap - len, "%s%d %s", len ? ", " : "", n[k],
                                k == O_NONE ? "not survived" : outcome_names[k]);
    }
    if (!len) snprintf(out, cap, "none");
}

static void print_json(const struct chaos *c, int ok) {
    cJSON *j = cJSON_CreateObject(), *fs = cJSON_CreateArray(), *cs = cJSON_CreateArray();
    cJSON_AddStringToObject(j, "job_id", c->job_id);
    cJSON_AddNumberToObject(j, "seed", (double)c->seed);
    cJSON_AddBoolToObject(j, "ok", ok);
    cJSON_AddStringToObject(j, "error", c->error);
    for (int i = 0; i < c->n_faults; i++) {
        const struct fault *f = &c->faults[i];
        cJSON *o = cJSON_CreateObject(), *vs = cJSON_CreateArray();
        cJSON_AddNumberToObject(o, "index", i + 1);
        cJSON_AddStringToObject(o, "kind", kind_names[f->kind]);
        for (int k = 0; k < f->n_victims; k++) {
            cJSON *v = cJSON_CreateObject();
            cJSON_AddStringToObject(v, "worker_id", f->v[k].worker_id);
            cJSON_AddNumberToObject(v, "pod", f->v[k].pod);
            cJSON_AddNumberToObject(v, "slot", f->v[k].slot);
            cJSON_AddNumberToObject(v, "rank", f->v[k].pod * c->slots + f->v[k].slot);
            cJSON_AddNumberToObject(v, "pid", f->v[k].pid);
            cJSON_AddItemToArray(vs, v);
        }
        cJSON_AddItemToObject(o, "victims", vs);
        if (f->kind == K_CUT) cJSON_AddNumberToObject(o, "peer_rank", f->peer_rank);
        cJSON_AddBoolToObject(o, "injected", f->injected_ms > 0);
        cJSON_AddNumberToObject(o, "step", (double)f->step);
        cJSON_AddNumberToObject(o, "injected_unix_ms", (double)f->injected_ms);
        cJSON_AddBoolToObject(o, "recovered", f->recovered);
        cJSON_AddNumberToObject(o, "recovered_unix_ms", (double)f->recovered_ms);
        cJSON_AddStringToObject(o, "outcome", outcome_names[f->recovered ? f->outcome : O_NONE]);
        cJSON_AddNumberToObject(o, "seq", (double)f->seq);
        cJSON_AddNumberToObject(o, "settled_seq", (double)f->settled_seq);
        cJSON_AddNumberToObject(o, "first_seq", (double)f->account.first_seq);
        cJSON_AddNumberToObject(o, "last_seq", (double)f->account.last_seq);
        cJSON_AddNumberToObject(o, "began_before_seq", (double)f->account.earlier_seq);
        cJSON_AddNumberToObject(o, "shared_with", f->shared_with + 1);
        cJSON_AddStringToObject(o, "did", f->did);
        cJSON_AddStringToObject(o, "recovery", f->recovery);
        cJSON_AddItemToArray(fs, o);
    }
    cJSON_AddItemToObject(j, "faults", fs);
    int n[N_OUTCOMES];
    count_outcomes(c, -1, n);
    cJSON *os = cJSON_AddObjectToObject(j, "outcomes");
    for (int o = 0; o < N_OUTCOMES; o++)
        cJSON_AddNumberToObject(os, o == O_NONE ? "not_survived" : outcome_names[o], n[o]);
    const Moed__V1__JobInfo *job = c->st ? c->st->job : NULL;
    cJSON_AddStringToObject(j, "final_state", job ? client_job_state(job->state) : "UNKNOWN");
    cJSON_AddNumberToObject(j, "step", job ? (double)job->step : 0);
    cJSON_AddNumberToObject(j, "committed_step", job ? (double)job->committed_step : 0);
    cJSON_AddNumberToObject(j, "recoveries", job ? job->recoveries : 0);
    cJSON_AddNumberToObject(j, "moves", job ? job->moves : 0);
    cJSON_AddStringToObject(j, "job_error", job ? job->error : "");
    for (int i = 0; i < c->n_samples; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "unix_ms", (double)c->samples[i].unix_ms);
        cJSON_AddNumberToObject(s, "committed_step", (double)c->samples[i].committed);
        cJSON_AddItemToArray(cs, s);
    }
    cJSON_AddItemToObject(j, "committed_steps", cs);
    cJSON_AddBoolToObject(j, "committed_step_decreased", c->decreased);
    moectl_print_json(j);
}

/* "kill 8 (7 recovered, 1 moved); stop 3 (...)": the outcomes of each kind injected. */
static void kinds_text(const struct chaos *c, char *out, size_t cap) {
    size_t len = 0;
    out[0] = 0;
    for (int k = 0; k < N_KINDS && len < cap; k++) {
        int n[N_OUTCOMES], total = 0;
        char o[256];
        count_outcomes(c, k, n);
        for (int i = 0; i < N_OUTCOMES; i++) total += n[i];
        if (!total) continue;
        outcomes_text(o, sizeof o, n);
        len += (size_t)snprintf(out + len, cap - len, "%s%s %d (%s)", len ? "; " : "",
                                kind_names[k], total, o);
    }
}

static void print_summary(const struct chaos *c) {
    char jt[TEXT_CAP] = "unknown (the coordinator never answered)", all[256], by[TEXT_CAP];
    if (c->st) job_text(jt, sizeof jt, c->st->job);
    int n[N_OUTCOMES], shared = 0;
    count_outcomes(c, -1, n);
    outcomes_text(all, sizeof all, n);
    kinds_text(c, by, sizeof by);
    for (int i = 0; i < c->n_faults; i++) shared += c->faults[i].shared_with > i;
    say(c, "chaos %s: %d of %d fault%s survived: %s", c->job_id, n_recovered(c), c->n_faults,
        c->n_faults == 1 ? "" : "s", all);
    say(c, "  by kind: %s%s", by[0] ? by : "no fault injected",
        shared ? "" : "; no episode covered two faults");
    if (shared)
        say(c, "  %d episode%s covered two faults (each counts for both)", shared,
            shared == 1 ? "" : "s");
    say(c, "  the job is %s; committed step %s (%d value%s seen)", jt,
        c->decreased ? c->decrease : "never went down", c->n_samples,
        c->n_samples == 1 ? "" : "s");
}

/* ---- options ---- */

static void chaos_usage(FILE *to, const char *cmd) {
    (void)cmd;
    fprintf(to,
            "usage: moectl chaos JOB [--seed N] [--faults K] [--kinds KIND,...] [--gap-steps G]\n"
            "                    [--timeout S] [--dir CLUSTER_DIR] [--json] [--dry-run]\n"
            "  kinds: kill (kill -9 a slot's worker), kill2 (two, in different pods and slot\n"
            "  indices, at once), stop (SIGSTOP a slot's worker until it is fenced), coordinator\n"
            "  (kill -9 it and restart it), cut (one data-plane connection of a slot's worker),\n"
            "  flip (a bit of a slot's live parameters: the replica check must report it and\n"
            "  the coordinator repair it).\n"
            "  Each fault is judged by what the job did about it, read from its events after the\n"
            "  fault: recovered, moved, reattached (after a coordinator restart), repaired\n"
            "  (flip), or held (it needed nothing); and the job must train G steps past it with\n"
            "  nothing in progress. FAILED, or no progress within S seconds, fails the run.\n"
            "  Defaults: seed 1, 5 faults, kinds kill,kill2,stop,coordinator,cut (those the\n"
            "  job's mesh allows), G = 5 steps, S = 120 s for each wait. The same seed on the\n"
            "  same mesh gives the same faults and victims.\n"
            "  --dry-run prints the schedule and injects nothing.\n");
}

static int parse_kinds(const char *list, unsigned *out) {
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", list) >= (int)sizeof buf)
        return moectl_fail(EXIT_BAD_INPUT, "--kinds: list too long");
    *out = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < N_KINDS && strcmp(t, kind_names[k]) != 0) k++;
        if (k == N_KINDS)
            return moectl_fail(EXIT_BAD_INPUT, "--kinds: unknown fault kind '%s' (kill, kill2, "
                               "stop, coordinator, cut, flip)", t);
        *out |= 1u << k;
    }
    if (!*out) return moectl_fail(EXIT_BAD_INPUT, "--kinds: no fault kind given");
    return 0;
}

static int take_option(void *ctx, int o, const char *arg) {
    struct chaos *c = ctx;
    long long v = 0;
    if (client_option(&c->conn, o, arg)) return EXIT_OK;
    switch (o) {
    case 's':
        if (moectl_parse_int(arg, "--seed", 0, INT64_MAX, &v)) return EXIT_BAD_INPUT;
        c->seed = (uint64_t)v;
        return EXIT_OK;
    case 'f':
        if (moectl_parse_int(arg, "--faults", 1, MAX_FAULTS, &v)) return EXIT_BAD_INPUT;
        c->n_faults = (int)v;
        return EXIT_OK;
    case 'k':
        if (parse_kinds(arg, &c->kinds)) return EXIT_BAD_INPUT;
        c->kinds_given = 1;
        return EXIT_OK;
    case 'g':
        if (moectl_parse_int(arg, "--gap-steps", 0, 1000000000, &v)) return EXIT_BAD_INPUT;
        c->gap_steps = (int)v;
        return EXIT_OK;
    case 't':
        if (moectl_parse_int(arg, "--timeout", 1, 86400, &v)) return EXIT_BAD_INPUT;
        c->timeout_s = (double)v;
        return EXIT_OK;
    case 'j': c->json = 1; return EXIT_OK;
    case 'n': c->dry_run = 1; return EXIT_OK;
    default: return -1;
    }
}

/* 1: go on; 0: stop with *code (EXIT_OK after --help). */
static int parse_options(struct chaos *c, int argc, char **argv, int *code) {
    static const struct option opts[] = {CLIENT_LONG_OPTIONS,
                                         {"dir", required_argument, 0, OPT_CLUSTER_DIR},
                                         {"seed", required_argument, 0, 's'},
                                         {"faults", required_argument, 0, 'f'},
                                         {"kinds", required_argument, 0, 'k'},
                                         {"gap-steps", required_argument, 0, 'g'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"json", no_argument, 0, 'j'},
                                         {"dry-run", no_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    c->seed = 1, c->n_faults = DEFAULT_FAULTS, c->gap_steps = DEFAULT_GAP_STEPS;
    c->timeout_s = DEFAULT_TIMEOUT_S, c->kinds = DEFAULT_KINDS;
    const struct command_line cmd = {opts, "s:f:k:g:t:jh", chaos_usage, take_option, c, 1};
    if (!moectl_options(argc, argv, &cmd, code)) return 0;
    c->job_id = argv[optind];
    return (*code = client_need_job_id(c->job_id)) == EXIT_OK;
}

/* The cluster directory must hold a local cluster: chaos kills and restarts its processes. */
static int open_cluster(struct chaos *c) {
    if (client_cluster_dir(c->conn.cluster_dir, c->dir, sizeof c->dir) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (!read_shape(c->dir, &c->shape))
        return moectl_fail(EXIT_BAD_INPUT, "no local cluster in %s (no readable cluster.json): "
                           "chaos needs one made by `moectl cluster up`; give --dir DIR", c->dir);
    c->conn.cluster_dir = c->dir;
    return client_open(&c->cl, &c->conn);
}

/* mesh.check_every of a stored spec (every field explicit), or -1. */
static int spec_check_every(const char *spec_json) {
    cJSON *spec = cJSON_Parse(spec_json ? spec_json : "");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(spec, "mesh"), "check_every");
    int n = cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
    cJSON_Delete(spec);
    return n;
}

/* Waits for a just-submitted job to run; refuses one that has ended. Sets the mesh. */
static int check_job(struct chaos *c) {
    double t0 = moe_clock_s();
    for (;;) {
        int r = poll_job(c);
        if (r < 0) {
            fprintf(stderr, "moectl: %s\n", c->error);
            return strstr(c->error, "NOT_FOUND") ? EXIT_BAD_INPUT : EXIT_UNREACHABLE;
        }
        if (r == 0 && !c->st)
            return moectl_fail(EXIT_UNREACHABLE, "chaos: the coordinator of %s does not answer",
                               c->dir);
        const Moed__V1__JobInfo *j = c->st->job;
        if (client_job_final(j->state))
            return moectl_fail(EXIT_BAD_INPUT, "chaos: %s is %s, not running: there is nothing "
                               "to inject faults into", c->job_id, client_job_state(j->state));
        if (j->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->n_bindings > 0) break;
        if (moe_clock_s() - t0 > c->timeout_s)
            return moectl_fail(EXIT_RUN_FAILED, "chaos: %s is still %s after %.0f s", c->job_id,
                               client_job_state(j->state), c->timeout_s);
        moe_sleep_s(POLL_S);
    }
    const Moed__V1__JobInfo *j = c->st->job;
    c->pods = j->pods > 0 ? j->pods : 1;
    c->slots = j->slots > 0 ? j->slots : 1;
    c->mpi = strcmp(j->backend, "mpi") == 0;
    c->check_every = spec_check_every(c->st->spec_json);
    return 0;
}

/* Given kinds must fit the mesh; default ones that do not are dropped. */
static int check_kinds(struct chaos *c) {
    for (int k = 0; k < N_KINDS; k++) {
        const char *why = kind_unfit((enum kind)k, c->pods, c->slots, c->mpi, c->check_every);
        if (!(c->kinds & (1u << k)) || !why) continue;
        if (c->kinds_given)
            return moectl_fail(EXIT_BAD_INPUT, "chaos %s (%d x %d, %s): %s", c->job_id, c->pods,
                               c->slots, c->mpi ? "mpi" : "tcp", why);
        c->kinds &= ~(1u << k);
    }
    return 0;
}

int cmd_chaos(int argc, char **argv) {
    struct chaos c = {0};
    int code;
    if (!parse_options(&c, argc, argv, &code)) return code;
    if ((code = open_cluster(&c))) return code;
    c.start_ms = moe_wall_ms();
    c.faults = calloc((size_t)c.n_faults, sizeof *c.faults);
    c.samples = calloc(MAX_SAMPLES, sizeof *c.samples);
    if (!c.faults || !c.samples) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    if ((code = check_job(&c)) || (code = check_kinds(&c))) goto exit;
    make_schedule(&c);
    print_schedule(&c);
    if (c.dry_run) {
        if (c.json) print_json(&c, 1);
        goto exit;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if (!wait_gap(&c, 0, c.st->job->step))
        for (int i = 0; i < c.n_faults; i++)
            if (run_fault(&c, i)) break;
    if (c.stopped) kill(c.stopped, SIGCONT); // never leave a worker stopped
    if (!c.error[0] && poll_job(&c) > 0) { // the final state
        const Moed__V1__JobInfo *j = c.st->job;
        if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING &&
            j->state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) {
            char jt[TEXT_CAP];
            job_text(jt, sizeof jt, j);
            chaos_error(&c, "after the last fault the job is %s", jt);
        }
    }
    if (c.decreased) chaos_error(&c, "%s: a recovery went below the committed step", c.decrease);
    print_summary(&c);
    int ok = !c.error[0];
    if (c.json) print_json(&c, ok);
    code = ok ? EXIT_OK : moectl_fail(EXIT_RUN_FAILED, "chaos %s: %s", c.job_id, c.error);
exit:
    if (c.st) protobuf_c_message_free_unpacked(&c.st->base, NULL);
    if (c.cl.ch) client_close(&c.cl);
    free(c.faults);
    free(c.samples);
    ledger_free(&c.ledger);
    return code;
}
