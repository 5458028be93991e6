/*
 * bench_scale — one real coordinator (its real RocksDB) and thousands of simulated workers
 * over real gRPC (scale_sim.h), on one machine. For each cluster size it measures:
 *
 *   - the coordinator's CPU (utime+stime from /proc/PID/stat) and RSS at steady state: every
 *     worker idle and heartbeating; then with one big job running (every slot reporting);
 *   - the time to schedule the job (pods x slots, 64 x 64 from 4,352 workers up): SubmitJob
 *     to the last RunSlot received;
 *   - a recovery for 1 and for many (64) workers of that job lost at once: the peer's fault
 *     report to the last RunSlot of the new epoch received (rec*_s), and the coordinator's own
 *     part, the fault to the last RunSlot handed to gRPC, from its log (rec*co_ms);
 *   - a coordinator SIGKILL and restart: to serving (its address file), and to every live
 *     worker registered again (reattached);
 *   - GetJob and GetCluster p99 while the job runs: their summaries (summary_only: what a
 *     status page polls) and a default page of each list (500 slots, 500 workers).
 *
 * Usage: bench_scale [--check] [--pod-size W] [--job PxS] [--lose N] [--measure-s S]
 *                    [--report-ms MS] [--heartbeat-timeout-ms MS]
 *                    [--heartbeat-interval-ms MS] [--idle-heartbeats-per-s N] [WORKERS...]
 *                    (default: 1156 4420 10064 workers; the coordinator's default timeout, 2 s)
 * On a machine too loaded for the simulators to heartbeat in time, a longer timeout keeps
 * workers from being declared dead (the heartbeats, every 500 ms, cost the same).
 * Worker i is in physical pod i / W (W = 68 by default: 64 slots and 4 spares; a job of up
 * to 64 pods leaves at least one physical pod of spares, for the 64 lost at once). --check runs
 * once and asserts correctness instead of reporting speed (the test cli_scale_small): every
 * slot bound once, logical pod p on physical pod p, every RunSlot's addresses naming its
 * worker at its rank, each lost slot replanned onto a spare, no worker lost across the
 * restart, GetJob's and GetCluster's pages listing every slot and worker once and agreeing
 * with their summaries, WatchJob sending a mesh of more than 500 slots by pod, and so do
 * ListJobs (no bindings) and the live page's API (GET /api/jobs/ID, through curl), while
 * `moectl status --json` gathers every slot and binding from GetJob's pages.
 * The daemons come from $MOE_BUILD_DIR/bin, else from beside this program.
 */
#include "../../common/log.h"
#include "../../proto/methods.h"
#include "../../proto/rpc.h"
#include "bench_proc.h"
#include "proto/moed.pb-c.h"
#include "scale_sim.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIMS_PER_PROC 2500 // listening ports + accepted connections stay under 20,000 fds
#define MAX_PROCS 16
#define WAIT_S 120.0       // any one phase

struct opts {
    int check, pod_size, pods, slots, lose_many, measure_s;
    long report_ms, heartbeat_timeout_ms, heartbeat_interval_ms;
    const char *idle_budget;    // --idle-heartbeats-per-s for the coordinator (NULL: its default)
};

struct run {
    struct opts o;
    int n;                          // simulated workers
    struct bench_daemon co;         // the coordinator
    char http_dir[64];              // --check: where its live page's address is written
    char cluster_token[64];
    struct sim_shared *sh;
    pid_t sims[MAX_PROCS];
    int n_procs;
    struct rpc_channel *ch;         // the client's
    char job[24];
    uint64_t epoch;
    int lost;                       // workers lost so far
    int failed;                     // --check: assertions that failed
    /* results */
    double reg_s, idle_cpu, idle_rss, sched_s, job_cpu, job_rss, rec1_s, recn_s, rec1_co_ms,
        recn_co_ms, serve_s,
        reattach_s, getjob_p50, getjob_p99, getcl_p50, getcl_p99, jobpage_p50, jobpage_p99,
        clpage_p50, clpage_p99;
};

#define CHECK_THAT(r, cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "bench_scale: FAILED: " __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                                                 \
            (r)->failed++;                                                                         \
        }                                                                                          \
    } while (0)

/* ---- the simulators ---- */

static int start_sims(struct run *r) {
    size_t bytes = (size_t)r->n * sizeof *r->sh;
    r->sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r->sh == MAP_FAILED) return -1;
    memset(r->sh, 0, bytes);
    r->n_procs = (r->n + SIMS_PER_PROC - 1) / SIMS_PER_PROC;
    if (r->n_procs > MAX_PROCS) return -1;
    for (int k = 0; k < r->n_procs; k++) {
        int first = k * r->n / r->n_procs, last = (k + 1) * r->n / r->n_procs;
        pid_t pid = bench_fork_child();
        if (pid < 0) return -1;
        if (pid == 0) {
            struct sim_config c = {r->co.addr, r->cluster_token, first, last - first,
                                   r->o.pod_size, r->o.report_ms, r->sh};
            _exit(sim_main(&c));
        }
        r->sims[k] = pid;
    }
    return 0;
}

static void stop_sims(struct run *r) {
    for (int k = 0; k < r->n_procs; k++) bench_stop(r->sims[k]);
    if (r->sh) munmap(r->sh, (size_t)r->n * sizeof *r->sh);
    r->sh = NULL;
}

/* ---- waiting on what the simulators share ---- */

typedef int (*done_fn)(struct run *r, void *arg);

static int wait_for(struct run *r, done_fn done, void *arg, const char *what) {
    double t0 = bench_now();
    while (!done(r, arg)) {
        if (bench_now() - t0 > WAIT_S) {
            fprintf(stderr, "bench_scale: gave up waiting for %s after %.0f s\n", what, WAIT_S);
            return -1;
        }
        usleep(2000);
    }
    return 0;
}

static int all_registered(struct run *r, void *arg) {
    (void)arg;
    for (int i = 0; i < r->n; i++)
        if (atomic_load(&r->sh[i].registrations) == 0) return 0;
    return 1;
}

/* The newest epoch a live worker was bound in: a worker of an older binding (a RunSlot round
 * that a loaded machine let time out, then a new binding) plays until its StopJob arrives. */
static uint64_t newest_epoch(struct run *r) {
    uint64_t e = 0;
    for (int i = 0; i < r->n; i++)
        if (!atomic_load(&r->sh[i].dead) && atomic_load(&r->sh[i].pod) >= 0 &&
            atomic_load(&r->sh[i].epoch) > e)
            e = atomic_load(&r->sh[i].epoch);
    return e;
}

static int in_epoch(struct sim_shared *s, uint64_t e) {
    return !atomic_load(&s->dead) && atomic_load(&s->pod) >= 0 && atomic_load(&s->epoch) == e;
}

/* Every slot of the job played by a live worker in the newest epoch, after `*after`. */
static int job_bound(struct run *r, void *arg) {
    uint64_t after = *(uint64_t *)arg, e = newest_epoch(r);
    int n = 0;
    for (int i = 0; e > after && i < r->n; i++) n += in_epoch(&r->sh[i], e);
    return n >= r->o.pods * r->o.slots;
}

/* The last RunSlot of the newest epoch's slots, in seconds after t0_ns; checks each slot is
 * played by exactly one live worker in it. */
static double last_runslot(struct run *r, int64_t t0_ns, uint64_t *epoch) {
    int n_slots = r->o.pods * r->o.slots;
    int *seen = calloc((size_t)n_slots, sizeof *seen);
    int64_t last = t0_ns;
    *epoch = newest_epoch(r);
    for (int i = 0; seen && i < r->n; i++) {
        struct sim_shared *s = &r->sh[i];
        if (!in_epoch(s, *epoch)) continue;
        int k = atomic_load(&s->pod) * r->o.slots + atomic_load(&s->slot);
        if (k >= 0 && k < n_slots) seen[k]++;
        if (atomic_load(&s->runslot_ns) > last) last = atomic_load(&s->runslot_ns);
    }
    for (int k = 0; seen && k < n_slots; k++)
        CHECK_THAT(r, seen[k] == 1, "slot (%d, %d) is played by %d workers", k / r->o.slots,
                   k % r->o.slots, seen[k]);
    free(seen);
    return (double)(last - t0_ns) / 1e9;
}

/* ---- client calls ---- */

/* A call of the client's; UNAVAILABLE (a connection the coordinator's restart broke) is tried
 * again for up to 10 s. */
static ProtobufCMessage *call(struct run *r, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *type) {
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    moe_status s;
    for (int i = 0; i < 50; i++) {
        s = rpc_call_sync(r->ch, method, req, type, &resp, 30.0, &res);
        if (s != MOE_EUNAVAILABLE) break;
        usleep(200000);
    }
    if (s != MOE_OK) {
        fprintf(stderr, "bench_scale: %s\n", moe_errmsg());
        return NULL;
    }
    return resp;
}

/* Whether every worker is alive, idle and reachable (probed), from GetCluster's pages. */
static int cluster_ready(struct run *r, void *arg) {
    (void)arg;
    char token[32] = "";
    int ready = 0;
    do {
        Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
        req.page_size = 1000;
        req.page_token = token;
        Moed__V1__ClusterStatus *st = (Moed__V1__ClusterStatus *)call(
            r, RPC_STATUS_GET_CLUSTER, &req.base, &moed__v1__cluster_status__descriptor);
        if (!st) return 0;
        for (size_t i = 0; i < st->n_workers; i++)
            ready += st->workers[i]->reachable &&
                     st->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_IDLE;
        snprintf(token, sizeof token, "%s", st->next_page_token);
        protobuf_c_message_free_unpacked(&st->base, NULL);
    } while (token[0]);
    if (ready < r->n) usleep(200000);
    return ready >= r->n;
}

/* ---- the idle workers' lease (--check with --idle-heartbeats-per-s) ---- */

static void progress(const struct run *r, const char *what, double v);

#define FIXED_IDLE_MS 5000 // the coordinator's --idle-heartbeat-interval-ms default

static long want_idle_ms(const struct run *r) {
    long budget = r->o.idle_budget ? atol(r->o.idle_budget) : 200;
    return budget > 0 ? ((long)r->n * 1000 + budget - 1) / budget : FIXED_IDLE_MS;
}

/* Every live idle worker was told an idle interval longer than the fixed one: the one its
 * number (all of them idle now) gives, or (told before every worker registered) between. */
static int idle_told_longer(struct run *r, void *arg) {
    (void)arg;
    for (int i = 0; i < r->n; i++)
        if (!atomic_load(&r->sh[i].dead) && atomic_load(&r->sh[i].idle_ms) <= FIXED_IDLE_MS)
            return 0;
    return 1;
}

static int cluster_dead(struct run *r) {
    Moed__V1__GetClusterRequest gc = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    gc.summary_only = 1;
    Moed__V1__ClusterStatus *st = (Moed__V1__ClusterStatus *)call(
        r, RPC_STATUS_GET_CLUSTER, &gc.base, &moed__v1__cluster_status__descriptor);
    int dead = st ? st->workers_dead : -1;
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
    return dead;
}

/* The idle interval grows with the idle workers (a budget of heartbeats a second), and the
 * coordinator judges each by what it told it: one idle worker gone silent is declared dead
 * within the timeout plus that interval (less the busy interval), and none of the others,
 * which heartbeat that seldom, is. */
static void check_idle_lease(struct run *r) {
    long want = want_idle_ms(r);
    if (want <= FIXED_IDLE_MS * 6 / 5) return; // no budget given that lengthens it
    int told = wait_for(r, idle_told_longer, NULL, "the adapted idle interval");
    int shorter = 0, first = -1;
    for (int i = 0; i < r->n; i++)
        if (atomic_load(&r->sh[i].idle_ms) <= FIXED_IDLE_MS && !shorter++) first = i;
    CHECK_THAT(r, told == 0, "%d idle workers were not told an interval longer than %d ms (the "
               "first: %s, told %ld ms)", shorter, FIXED_IDLE_MS, first >= 0 ? r->sh[first].id : "",
               first >= 0 ? atomic_load(&r->sh[first].idle_ms) : 0L);
    int gone = r->n - 1; // in the physical pod of spares
    atomic_store(&r->sh[gone].dead, 1);
    r->lost++;
    double t0 = bench_now(), bound = (r->o.heartbeat_timeout_ms + want -
                                      r->o.heartbeat_interval_ms) / 1e3 + 3.0;
    int dead = 0;
    while ((dead = cluster_dead(r)) == 0 && bench_now() - t0 < bound + 10) usleep(200000);
    double took = bench_now() - t0;
    CHECK_THAT(r, dead == 1 && took <= bound, "a silent idle worker: %d dead after %.1f s (want "
               "1 within %.1f s: the timeout plus the idle interval of %ld ms)", dead, took,
               bound, want);
    progress(r, "silent idle worker declared dead, s:", took);
}

static int submit(struct run *r) {
    char spec[1024];
    snprintf(spec, sizeof spec,
             "name: scale\n"
             "mesh: {pods: %d, slots: %d}\n"
             "model: {d_model: 32, layers: 1, heads: 2, seq_len: 16, experts: %d, d_ff: 32}\n"
             "router: {top_k: 1}\n"
             "data: {sources: [{path: /usr/share/common-licenses/GPL-3}]}\n"
             "run: {steps: 100000000, batch_size: %d, eval_every: 0}\n",
             r->o.pods, r->o.slots, r->o.slots, r->o.pods * r->o.slots);
    Moed__V1__SubmitJobRequest req = MOED__V1__SUBMIT_JOB_REQUEST__INIT;
    req.spec = spec;
    Moed__V1__JobInfo *ji = (Moed__V1__JobInfo *)call(r, RPC_JOBS_SUBMIT_JOB, &req.base,
                                                      &moed__v1__job_info__descriptor);
    if (!ji) return -1;
    snprintf(r->job, sizeof r->job, "%s", ji->job_id);
    protobuf_c_message_free_unpacked(&ji->base, NULL);
    return 0;
}

/* The job runs, no recovery in progress, at step min_step or later: the next phase starts
 * from a steady job (a restart amid a recovery resumes it: a new epoch, rightly). */
static int job_settled(struct run *r, void *arg) {
    long min_step = *(long *)arg;
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = r->job;
    Moed__V1__JobStatus *st = (Moed__V1__JobStatus *)call(r, RPC_STATUS_GET_JOB, &ref.base,
                                                          &moed__v1__job_status__descriptor);
    int settled = st && st->job && st->job->state == MOED__V1__JOB_STATE__JOB_RUNNING &&
                  !st->job->recovering && st->job->step >= min_step;
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
    if (!settled) usleep(100000);
    return settled;
}

static int settle(struct run *r, long min_step) {
    return wait_for(r, job_settled, &min_step, "the job to run on, not recovering");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50 and p99 (ms) of `n` calls of method. */
static void latency(struct run *r, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *type, int n, double *p50, double *p99) {
    double *t = calloc((size_t)n, sizeof *t);
    int got = 0;
    for (int i = 0; t && i < n; i++) {
        double t0 = bench_now();
        ProtobufCMessage *m = call(r, method, req, type);
        if (!m) break;
        t[got++] = (bench_now() - t0) * 1e3;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    qsort(t, (size_t)got, sizeof *t, cmp_double);
    *p50 = got ? t[got / 2] : NAN;
    *p99 = got ? t[(got * 99) / 100 < got ? (got * 99) / 100 : got - 1] : NAN;
    free(t);
}

/* ---- phases ---- */

static void steady(struct run *r, double *cpu, double *rss) {
    double c0 = bench_cpu_seconds(r->co.pid), t0 = bench_now();
    sleep((unsigned)r->o.measure_s);
    *cpu = 100.0 * (bench_cpu_seconds(r->co.pid) - c0) / (bench_now() - t0);
    *rss = bench_rss_mib(r->co.pid);
}

/* The placement rule on a cluster of idle physical pods of W >= S workers: logical pod p
 * takes S workers of the lowest-numbered physical pod with S idle, so physical pod p. */
static void check_placement(struct run *r) {
    int misplaced = 0;
    for (int i = 0; i < r->n; i++)
        misplaced += in_epoch(&r->sh[i], r->epoch) &&
                     atomic_load(&r->sh[i].pod) != i / r->o.pod_size;
    CHECK_THAT(r, misplaced == 0, "%d slots not in the physical pod of their logical pod",
               misplaced);
}

static int schedule_job(struct run *r) {
    uint64_t none = 0;
    int64_t t0 = sim_now_ns();
    if (submit(r) || wait_for(r, job_bound, &none, "the job's RunSlots")) return -1;
    r->sched_s = last_runslot(r, t0, &r->epoch);
    check_placement(r);
    return 0;
}

/* The live worker that plays slot (p, s), or -1. */
static int player(struct run *r, int p, int s) {
    for (int i = 0; i < r->n; i++)
        if (!atomic_load(&r->sh[i].dead) && atomic_load(&r->sh[i].pod) == p &&
            atomic_load(&r->sh[i].slot) == s)
            return i;
    return -1;
}

/* What a peer of a lost worker sends when its data plane breaks (worker/daemon/report.c). */
static int report_fault(struct run *r, int peer, int lost_slot) {
    struct sim_shared *s = &r->sh[peer];
    struct rpc_channel *ch;
    if (rpc_channel_open(&ch, r->co.addr, NULL, s->credential, 1) != MOE_OK) return -1;
    Moed__V1__FaultReport req = MOED__V1__FAULT_REPORT__INIT;
    char err[96];
    snprintf(err, sizeof err, "recv from rank %d: connection reset by peer (simulated)",
             lost_slot);
    req.worker_id = s->id;
    req.job_id = r->job;
    req.pod = atomic_load(&s->pod);
    req.slot = atomic_load(&s->slot);
    req.epoch = atomic_load(&s->epoch);
    req.step = atomic_load(&s->step);
    req.error = err;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    moe_status st = rpc_call_sync(ch, RPC_CLUSTER_REPORT_FAULT, &req.base,
                                  &moed__v1__empty__descriptor, &resp, 30.0, &res);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
    rpc_channel_close(ch);
    if (st != MOE_OK) fprintf(stderr, "bench_scale: ReportFault: %s\n", moe_errmsg());
    return st == MOE_OK ? 0 : -1;
}

/* The coordinator's own part of the recovery to `epoch`: its log line (policy/recovery.c
 * log_plan_times) "<job>: epoch E: N RunSlots sent M ms after the fault"; NAN when absent. */
static double coordinator_plan_ms(const struct run *r, uint64_t epoch) {
    FILE *f = fopen(r->co.log, "r");
    char line[1024], want[64];
    double ms = NAN;
    snprintf(want, sizeof want, "%s: epoch %llu: ", r->job, (unsigned long long)epoch);
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, want), *q = p ? strstr(p, "RunSlots sent ") : NULL;
        long long v;
        if (q && sscanf(q, "RunSlots sent %lld ms", &v) == 1) ms = (double)v;
    }
    if (f) fclose(f);
    return ms;
}

/* Loses `n` workers of the job at once, a peer reports the fault; the seconds from the
 * report to the last RunSlot of the new epoch (received), and in *co_ms the coordinator's
 * own part (sent). */
static double lose(struct run *r, int n, double *co_ms) {
    int lost[1024], n_lost = 0;
    for (int k = 0; k < n && n_lost < 1024; k++) {
        /* (k mod P, 1 + k mod (S - 1)): no slot index lost in every pod at once, or its
         * every copy would be gone (the job rightly fails) */
        int p = k % r->o.pods, s = 1 + k % (r->o.slots - 1);
        int i = player(r, p, s);
        if (i >= 0) lost[n_lost++] = i;
    }
    int peer = player(r, 0, 0);
    for (int k = 0; k < n_lost; k++) atomic_store(&r->sh[lost[k]].dead, 1);
    r->lost += n_lost;
    uint64_t before = r->epoch;
    int64_t t0 = sim_now_ns();
    if (peer < 0 || report_fault(r, peer, 1) ||
        wait_for(r, job_bound, &before, "the recovery's RunSlots"))
        return NAN;
    double s = last_runslot(r, t0, &r->epoch);
    *co_ms = coordinator_plan_ms(r, r->epoch);
    for (int i = 0; i < r->n; i++) // every lost slot went to a spare, restored
        if (atomic_load(&r->sh[i].pod) >= 0 && atomic_load(&r->sh[i].epoch) == r->epoch &&
            atomic_load(&r->sh[i].runslots) == 1)
            CHECK_THAT(r, atomic_load(&r->sh[i].restores) == 1,
                       "a spare took a slot without a restore");
    return s;
}

static int live_reregistered(struct run *r, void *arg) {
    const int *before = arg;
    for (int i = 0; i < r->n; i++)
        if (!atomic_load(&r->sh[i].dead) && atomic_load(&r->sh[i].registrations) <= before[i])
            return 0;
    return 1;
}

static int restart(struct run *r) {
    int *before = calloc((size_t)r->n, sizeof *before);
    int stops = 0;
    if (!before) return -1;
    for (int i = 0; i < r->n; i++) { // stops: of the job's slots (not of stale bindings)
        before[i] = atomic_load(&r->sh[i].registrations);
        stops += in_epoch(&r->sh[i], r->epoch) ? atomic_load(&r->sh[i].stops) : 0;
    }
    double t0 = bench_now();
    int rc = bench_daemon_restart(&r->co, SIGKILL);
    r->serve_s = bench_now() - t0;
    if (rc == 0) rc = wait_for(r, live_reregistered, before, "every worker to register again");
    if (rc == 0) r->reattach_s = bench_now() - t0;
    free(before);
    if (rc) return rc;
    sleep(2); // a few heartbeats: a worker the restart lost would be told to stop by now
    int after = 0;
    for (int i = 0; i < r->n; i++)
        after += atomic_load(&r->sh[i].epoch) == r->epoch ? atomic_load(&r->sh[i].stops) : 0;
    CHECK_THAT(r, after == stops, "%d slots stopped after the restart", after - stops);
    /* A lost worker the coordinator had not yet declared dead when it was killed (it knew it
     * only as lost to its job) comes back from the store as it was, and is declared dead when
     * its heartbeat timeout passes after the restart: wait that long for the count. */
    Moed__V1__GetClusterRequest gc = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    gc.page_size = 1;
    Moed__V1__ClusterStatus *st = NULL;
    for (double t1 = bench_now(); bench_now() - t1 < r->o.heartbeat_timeout_ms / 1e3 + 10;
         usleep(100000)) {
        if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
        st = (Moed__V1__ClusterStatus *)call(r, RPC_STATUS_GET_CLUSTER, &gc.base,
                                             &moed__v1__cluster_status__descriptor);
        if (st && st->workers_dead >= r->lost) break;
    }
    CHECK_THAT(r, st && st->workers_total == r->n && st->workers_dead == r->lost,
               "after the restart: %d workers, %d dead (want %d, %d)", st ? st->workers_total : -1,
               st ? st->workers_dead : -1, r->n, r->lost);
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
    uint64_t e;
    last_runslot(r, 0, &e);
    CHECK_THAT(r, e == r->epoch, "the restart moved the job from epoch %llu to %llu",
               (unsigned long long)r->epoch, (unsigned long long)e);
    return 0;
}

/* ---- the status calls' pages and summaries (--check) ---- */

/* Every slot of the job, from GetJob pages of `size`, counted in seen[]; the summary of the
 * first page in *first (the caller frees it). The number of pages, or -1. */
static int job_pages(struct run *r, int size, int *seen, Moed__V1__JobStatus **first) {
    char token[32] = "";
    int pages = 0, n_slots = r->o.pods * r->o.slots;
    do {
        Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
        req.job_id = r->job;
        req.page_size = size;
        req.page_token = token;
        Moed__V1__JobStatus *st = (Moed__V1__JobStatus *)call(
            r, RPC_STATUS_GET_JOB, &req.base, &moed__v1__job_status__descriptor);
        if (!st) return -1;
        CHECK_THAT(r, st->n_slots <= (size_t)size, "a GetJob page of %zu slots (asked %d)",
                   st->n_slots, size);
        for (size_t i = 0; i < st->n_slots; i++) {
            int k = st->slots[i]->pod * r->o.slots + st->slots[i]->slot;
            if (k >= 0 && k < n_slots) seen[k]++;
        }
        snprintf(token, sizeof token, "%s", st->next_page_token);
        if (!*first) *first = st;
        else protobuf_c_message_free_unpacked(&st->base, NULL);
        pages++;
    } while (token[0] && pages <= n_slots);
    return pages;
}

/* GetJob's pages list every slot once, bound to one worker each, and its per-pod summary
 * agrees with them; a token it never gave out is refused. */
static void check_job_pages(struct run *r) {
    int n_slots = r->o.pods * r->o.slots, size = 37; // pages that end mid-pod
    int *seen = calloc((size_t)n_slots, sizeof *seen);
    Moed__V1__JobStatus *st = NULL;
    int pages = seen ? job_pages(r, size, seen, &st) : -1;
    CHECK_THAT(r, pages == (n_slots + size - 1) / size, "GetJob: %d pages of %d for %d slots",
               pages, size, n_slots);
    for (int k = 0; seen && k < n_slots; k++)
        CHECK_THAT(r, seen[k] == 1, "GetJob's pages list slot %d %d times", k, seen[k]);
    CHECK_THAT(r, st && st->n_pods == (size_t)r->o.pods, "GetJob: %zu pod summaries for %d pods",
               st ? st->n_pods : 0, r->o.pods);
    for (size_t p = 0; st && p < st->n_pods; p++) {
        const Moed__V1__PodSummary *ps = st->pods[p];
        CHECK_THAT(r, ps->pod == (int)p && ps->slots == r->o.slots && ps->bound == r->o.slots &&
                          ps->alive == r->o.slots && ps->failed == 0 &&
                          ps->min_step <= ps->max_step,
                   "pod %zu's summary: pod %d, %d slots, %d bound, %d alive, %d failed, steps "
                   "%lld..%lld", p, ps->pod, ps->slots, ps->bound, ps->alive, ps->failed,
                   (long long)ps->min_step, (long long)ps->max_step);
    }
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
    free(seen);
    Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
    req.job_id = r->job;
    req.summary_only = 1;
    st = (Moed__V1__JobStatus *)call(r, RPC_STATUS_GET_JOB, &req.base,
                                     &moed__v1__job_status__descriptor);
    CHECK_THAT(r, st && !st->n_slots && !st->job->n_bindings && !st->next_page_token[0] &&
                      st->n_pods == (size_t)r->o.pods,
               "GetJob summary_only: %zu slots, %zu bindings, %zu pods", st ? st->n_slots : 0,
               st ? st->job->n_bindings : 0, st ? st->n_pods : 0);
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
    req.summary_only = 0;
    req.page_token = (char *)"99999999";
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_call_sync(r->ch, RPC_STATUS_GET_JOB, &req.base, &moed__v1__job_status__descriptor, &resp,
                  30.0, &res);
    CHECK_THAT(r, !resp && res.code == GRPC_STATUS_INVALID_ARGUMENT,
               "GetJob with a token past the mesh: status %d, not INVALID_ARGUMENT", res.code);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
}

/* GetCluster's pages list every worker once, and its counts agree with them. */
static void check_cluster_pages(struct run *r) {
    char token[32] = "";
    int *seen = calloc((size_t)r->n + 1, sizeof *seen); // by N of "w-N": 1 .. n
    int busy = 0, pages = 0, total = -1, busy_said = -1, odd = 0;
    do {
        Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
        req.page_size = 33;
        req.page_token = token;
        Moed__V1__ClusterStatus *st = (Moed__V1__ClusterStatus *)call(
            r, RPC_STATUS_GET_CLUSTER, &req.base, &moed__v1__cluster_status__descriptor);
        if (!st || !seen) break;
        for (size_t i = 0; i < st->n_workers; i++) {
            int w = atoi(st->workers[i]->worker_id + 2);
            if (w >= 1 && w <= r->n) seen[w]++;
            else odd++;
            busy += st->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
        }
        total = st->workers_total;
        busy_said = st->workers_busy;
        snprintf(token, sizeof token, "%s", st->next_page_token);
        protobuf_c_message_free_unpacked(&st->base, NULL);
    } while (token[0] && ++pages <= r->n);
    int once = 0;
    for (int i = 1; seen && i <= r->n; i++) once += seen[i] == 1;
    CHECK_THAT(r, once == r->n && odd == 0 && total == r->n,
               "GetCluster's pages: %d of %d workers listed once, %d unknown ids, total %d", once,
               r->n, odd, total);
    CHECK_THAT(r, busy == busy_said && busy >= r->o.pods * r->o.slots,
               "GetCluster: %d busy in its pages, %d in its summary, for %d slots", busy,
               busy_said, r->o.pods * r->o.slots);
    free(seen);
    Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    req.summary_only = 1;
    Moed__V1__ClusterStatus *st = (Moed__V1__ClusterStatus *)call(
        r, RPC_STATUS_GET_CLUSTER, &req.base, &moed__v1__cluster_status__descriptor);
    CHECK_THAT(r, st && !st->n_workers && !st->next_page_token[0] && st->workers_total == r->n &&
                      st->n_pods > 0,
               "GetCluster summary_only: %zu workers listed, total %d, %zu pods",
               st ? st->n_workers : 0, st ? st->workers_total : -1, st ? st->n_pods : 0);
    if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* WatchJob of a mesh bigger than a page (500 slots) sends it by pod: no slot, no binding, a
 * summary of every pod, and the job's step moving on from update to update. */
static void check_watch(struct run *r) {
    if (r->o.pods * r->o.slots <= 500) return; // a smaller mesh comes whole, as before
    Moed__V1__WatchJobRequest req = MOED__V1__WATCH_JOB_REQUEST__INIT;
    req.job_id = r->job;
    struct rpc_stream *s;
    if (rpc_stream_open(&s, r->ch, RPC_STATUS_WATCH_JOB, &req.base, 60.0) != MOE_OK) {
        CHECK_THAT(r, 0, "WatchJob: %s", moe_errmsg());
        return;
    }
    long first = -1, last = -1;
    for (int n = 0; n < 4; n++) {
        ProtobufCMessage *m = NULL;
        struct rpc_result res;
        if (rpc_stream_next(s, &moed__v1__job_update__descriptor, &m, &res) != 1) break;
        const Moed__V1__JobUpdate *u = (const Moed__V1__JobUpdate *)m;
        CHECK_THAT(r, !u->n_slots && !u->job->n_bindings && u->n_pods == (size_t)r->o.pods,
                   "WatchJob of %d slots: an update with %zu slots, %zu bindings, %zu pods",
                   r->o.pods * r->o.slots, u->n_slots, u->job->n_bindings, u->n_pods);
        if (first < 0) first = (long)u->job->step;
        last = (long)u->job->step;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    rpc_stream_close(s);
    CHECK_THAT(r, first >= 0 && last > first, "WatchJob: the step went from %ld to %ld in 4 "
               "updates", first, last);
}

/* What `cmd` printed, parsed as JSON; NULL when it failed (said) or printed no JSON. */
static cJSON *command_json(const char *cmd, const char *what) {
    FILE *p = popen(cmd, "r");
    size_t n = 0, cap = 1 << 16;
    char *buf = malloc(cap + 1);
    while (p && buf) {
        if (n == cap) {
            char *grown = realloc(buf, 2 * cap + 1);
            if (!grown) break;
            buf = grown;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, p);
        if (k == 0) break;
        n += k;
    }
    int rc = p ? pclose(p) : -1;
    cJSON *o = buf && rc == 0 ? (buf[n] = 0, cJSON_Parse(buf)) : NULL;
    if (!o) fprintf(stderr, "bench_scale: %s: exit status %d\n", what, rc);
    free(buf);
    return o;
}

/* GET /api/jobs/JOB of the live page's API (--check), through curl. */
static cJSON *http_get_job(struct run *r) {
    char path[128], addr[160] = "", cmd[512];
    snprintf(path, sizeof path, "%s/http.addr", r->http_dir);
    FILE *f = fopen(path, "r");
    int got = f && fscanf(f, "%159s", addr) == 1;
    if (f) fclose(f);
    if (!got) return NULL;
    snprintf(cmd, sizeof cmd, "curl -sf --max-time 30 -H 'Authorization: Bearer %s' "
             "http://%s/api/jobs/%s", r->co.client_token, addr, r->job);
    return command_json(cmd, "GET /api/jobs/ID");
}

/* `moectl status JOB --json`, which gathers every page. */
static cJSON *moectl_status(struct run *r) {
    char cmd[PATH_MAX + 512];
    snprintf(cmd, sizeof cmd, "MOED_COORDINATOR=%s MOED_TOKEN=%s '%s/moectl' status %s --json",
             r->co.addr, r->co.client_token, r->co.bin, r->job);
    return command_json(cmd, "moectl status --json");
}

static int json_len(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItem(o, a);
    return cJSON_GetArraySize(b ? cJSON_GetObjectItem(x, b) : x);
}

/* ListJobs and the live page's API of a mesh bigger than a watch's (500 slots): the job's
 * entry in the list carries no binding, and the page's answer comes by pod, without slots,
 * every slot bound: a poll costs the same at 4,096 slots as at 500. */
static void check_big_mesh_listed(struct run *r) {
    if (r->o.pods * r->o.slots <= 500) return;
    Moed__V1__ListJobsRequest lr = MOED__V1__LIST_JOBS_REQUEST__INIT;
    Moed__V1__ListJobsResponse *l = (Moed__V1__ListJobsResponse *)call(
        r, RPC_JOBS_LIST_JOBS, &lr.base, &moed__v1__list_jobs_response__descriptor);
    CHECK_THAT(r, l && l->n_jobs == 1 && !l->jobs[0]->n_bindings && l->jobs[0]->pods == r->o.pods,
               "ListJobs: %zu jobs, the first with %zu bindings", l ? l->n_jobs : 0,
               l && l->n_jobs ? l->jobs[0]->n_bindings : 0);
    if (l) protobuf_c_message_free_unpacked(&l->base, NULL);
    cJSON *o = http_get_job(r);
    cJSON *pods = cJSON_GetObjectItem(o, "pod_summaries"), *slots = cJSON_GetObjectItem(o, "slots");
    int bound = 0;
    for (int i = 0; i < cJSON_GetArraySize(pods); i++) {
        cJSON *b = cJSON_GetObjectItem(cJSON_GetArrayItem(pods, i), "bound");
        bound += cJSON_IsNumber(b) ? b->valueint : 0;
    }
    CHECK_THAT(r, o && cJSON_GetArraySize(slots) == 0 &&
                      cJSON_GetArraySize(pods) == r->o.pods && bound == r->o.pods * r->o.slots,
               "the live page's API: %d slots, %d pods, %d bound", cJSON_GetArraySize(slots),
               cJSON_GetArraySize(pods), bound);
    cJSON_Delete(o);
    int n_slots = r->o.pods * r->o.slots;
    o = moectl_status(r);
    CHECK_THAT(r, o && json_len(o, "slots", NULL) == n_slots &&
                      json_len(o, "job", "bindings") == n_slots,
               "moectl status --json of %d slots: %d slots, %d bindings", n_slots,
               json_len(o, "slots", NULL), json_len(o, "job", "bindings"));
    cJSON_Delete(o);
}

/* The summaries (what a status page polls) and a default page of each list. */
static void status_latency(struct run *r) {
    Moed__V1__JobRef jr = MOED__V1__JOB_REF__INIT;
    jr.job_id = r->job;
    jr.summary_only = 1;
    latency(r, RPC_STATUS_GET_JOB, &jr.base, &moed__v1__job_status__descriptor, 300,
            &r->getjob_p50, &r->getjob_p99);
    jr.summary_only = 0;
    latency(r, RPC_STATUS_GET_JOB, &jr.base, &moed__v1__job_status__descriptor, 100,
            &r->jobpage_p50, &r->jobpage_p99);
    Moed__V1__GetClusterRequest gc = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    gc.summary_only = 1;
    latency(r, RPC_STATUS_GET_CLUSTER, &gc.base, &moed__v1__cluster_status__descriptor, 300,
            &r->getcl_p50, &r->getcl_p99);
    gc.summary_only = 0;
    latency(r, RPC_STATUS_GET_CLUSTER, &gc.base, &moed__v1__cluster_status__descriptor, 100,
            &r->clpage_p50, &r->clpage_p99);
}

static void progress(const struct run *r, const char *what, double v) {
    fprintf(stderr, "bench_scale: %d workers: %s %.3f\n", r->n, what, v);
}

/* Every RunSlot's binding named its callee at its own rank (scale_sim.c checks each). */
static void check_named(struct run *r) {
    int misbound = 0;
    for (int i = 0; i < r->n; i++) misbound += atomic_load(&r->sh[i].misbound);
    CHECK_THAT(r, misbound == 0, "%d RunSlots' addresses did not name their worker", misbound);
}

static int phases(struct run *r) {
    double t0 = bench_now();
    if (wait_for(r, all_registered, NULL, "every registration") ||
        wait_for(r, cluster_ready, NULL, "every worker probed and idle"))
        return -1;
    r->reg_s = bench_now() - t0;
    progress(r, "registered and probed, s:", r->reg_s);
    if (r->o.check) check_idle_lease(r);
    if (!r->o.check) steady(r, &r->idle_cpu, &r->idle_rss);
    progress(r, "idle coordinator CPU, %:", r->idle_cpu);
    if (schedule_job(r)) return -1;
    progress(r, "job scheduled, s:", r->sched_s);
    if (r->o.check) check_job_pages(r);
    if (r->o.check) check_cluster_pages(r);
    if (r->o.check) check_watch(r);
    if (r->o.check) check_big_mesh_listed(r);
    if (!r->o.check) steady(r, &r->job_cpu, &r->job_rss);
    if (!r->o.check) status_latency(r);
    if (settle(r, 2)) return -1; // a fault after some steps, as in a real run
    r->rec1_s = lose(r, 1, &r->rec1_co_ms);
    progress(r, "recovery of 1, s:", r->rec1_s);
    if (isnan(r->rec1_s) || settle(r, 0)) return -1;
    r->recn_s = lose(r, r->o.lose_many, &r->recn_co_ms);
    progress(r, "recovery of many, s:", r->recn_s);
    if (isnan(r->recn_s) || settle(r, 0)) return -1;
    check_named(r);
    return restart(r);
}

static int run_size(struct run *r) {
    char timeout[32], interval[32];
    snprintf(timeout, sizeof timeout, "%ld", r->o.heartbeat_timeout_ms);
    snprintf(interval, sizeof interval, "%ld", r->o.heartbeat_interval_ms);
    char http_addr[96];
    snprintf(r->http_dir, sizeof r->http_dir, "/tmp/moe-scale-http-XXXXXX");
    if (r->o.check && !mkdtemp(r->http_dir)) return -1;
    snprintf(http_addr, sizeof http_addr, "%s/http.addr", r->http_dir);
    char *flags[10] = {"--heartbeat-timeout-ms", timeout, "--heartbeat-interval-ms", interval};
    int n_flags = 4;
    if (r->o.check) {
        flags[n_flags++] = "--http-listen";
        flags[n_flags++] = "127.0.0.1:0";
        flags[n_flags++] = "--http-addr-file";
        flags[n_flags++] = http_addr;
    }
    if (r->o.idle_budget) {
        flags[n_flags++] = "--idle-heartbeats-per-s";
        flags[n_flags++] = (char *)r->o.idle_budget;
    }
    if (bench_daemon_start(&r->co, "moed-coordinator", flags, n_flags) != 0)
        return -1;
    snprintf(r->cluster_token, sizeof r->cluster_token, "%s", r->co.cluster_token);
    int rc = start_sims(r);
    if (rc == 0) rc = rpc_channel_open(&r->ch, r->co.addr, NULL, r->co.client_token, 1);
    if (rc == 0) rc = phases(r);
    if (r->ch) rpc_channel_close(r->ch);
    stop_sims(r);
    bench_daemon_stop(&r->co);
    if (r->o.check) {
        unlink(http_addr);
        rmdir(r->http_dir);
    }
    return rc;
}

static void print_row(const struct run *r) {
    printf("%7d %6dx%-3d %6.1f %7.1f %7.0f %7.1f %7.0f %8.3f %8.3f %8.3f %8.0f %8.0f %7.2f "
           "%8.2f %7.2f %7.2f %7.2f %7.2f\n",
           r->n, r->o.pods, r->o.slots, r->reg_s, r->idle_cpu, r->idle_rss, r->job_cpu,
           r->job_rss, r->sched_s, r->rec1_s, r->recn_s, r->rec1_co_ms, r->recn_co_ms,
           r->serve_s, r->reattach_s,
           r->getjob_p99, r->jobpage_p99, r->getcl_p99, r->clpage_p99);
    fflush(stdout);
}

static int parse(int argc, char **argv, struct opts *o, int *sizes, int *n_sizes) {
    *o = (struct opts){0, 68, 0, 64, 64, 10, 1000, 2000, 500, NULL};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check")) o->check = 1;
        else if (!strcmp(argv[i], "--pod-size") && i + 1 < argc) o->pod_size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--job") && i + 1 < argc &&
                 sscanf(argv[++i], "%dx%d", &o->pods, &o->slots) == 2) continue;
        else if (!strcmp(argv[i], "--lose") && i + 1 < argc) o->lose_many = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--measure-s") && i + 1 < argc) o->measure_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--report-ms") && i + 1 < argc) o->report_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--heartbeat-timeout-ms") && i + 1 < argc)
            o->heartbeat_timeout_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--heartbeat-interval-ms") && i + 1 < argc)
            o->heartbeat_interval_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--idle-heartbeats-per-s") && i + 1 < argc)
            o->idle_budget = argv[++i];
        else if (argv[i][0] != '-' && *n_sizes < 8) sizes[(*n_sizes)++] = atoi(argv[i]);
        else return -1;
    }
    if (!*n_sizes) {
        int def[] = {1156, 4420, 10064}; // 16 and 64 job pods, and a pod of spares
        memcpy(sizes, def, sizeof def);
        *n_sizes = 3;
    }
    return o->pod_size > 1 && o->slots > 1 && o->lose_many > 0 && o->report_ms > 0 ? 0 : -1;
}

/* One cluster size, measured (or checked): the number of failures. */
static int one_size(const struct opts *o, int n) {
    struct run r = {.o = *o, .n = n};
    int failed = 0;
    double *res[] = {&r.reg_s, &r.idle_cpu, &r.idle_rss, &r.sched_s, &r.job_cpu,
                     &r.job_rss, &r.rec1_s, &r.recn_s, &r.rec1_co_ms, &r.recn_co_ms,
                     &r.serve_s, &r.reattach_s,
                     &r.getjob_p50, &r.getjob_p99, &r.getcl_p50, &r.getcl_p99,
                     &r.jobpage_p50, &r.jobpage_p99, &r.clpage_p50, &r.clpage_p99};
    for (size_t i = 0; i < sizeof res / sizeof res[0]; i++) *res[i] = NAN; // not measured
    int whole = n / o->pod_size - 1; // a physical pod left over for spares
    if (!r.o.pods) r.o.pods = whole < 64 ? (whole > 2 ? whole : 2) : 64;
    if (r.o.lose_many > r.o.pods * (r.o.slots - 1)) r.o.lose_many = r.o.pods;
    if (run_size(&r) != 0) {
        fprintf(stderr, "bench_scale: %d workers: did not complete (coordinator log: %s)\n",
                r.n, r.co.log);
        failed++;
    }
    print_row(&r); // what did not complete: nan
    return failed + r.failed;
}

int main(int argc, char **argv) {
    struct opts o;
    int sizes[8], n_sizes = 0, failed = 0;
    if (parse(argc, argv, &o, sizes, &n_sizes)) {
        fprintf(stderr, "usage: bench_scale [--check] [--pod-size W] [--job PxS] [--lose N] "
                        "[--measure-s S] [--report-ms MS] [--heartbeat-timeout-ms MS] "
                        "[--heartbeat-interval-ms MS] [--idle-heartbeats-per-s N] "
                        "[WORKERS...]\n");
        return 2;
    }
    moe_log_set_level(MOE_LOG_ERROR);
    printf("bench_scale: one coordinator, simulated workers over gRPC (heartbeat %ld ms, a "
           "step report per %ld ms per slot)\n"
           "%7s %10s %6s %7s %7s %7s %7s %8s %8s %8s %8s %8s %7s %8s %7s %7s %7s %7s\n",
           o.heartbeat_interval_ms, o.report_ms, "workers", "job", "reg_s", "idle%", "idleMiB",
           "job%", "jobMiB", "sched_s", "rec1_s", "recN_s", "rec1coms", "recNcoms", "serve_s",
           "reatt_s", "job_p99",
           "jobpg99", "cl_p99", "clpg99");
    /* each size in a process of its own, forked before this one ever ran gRPC: the
     * simulators fork from it, and a child forked after gRPC started never gets its
     * registrations through (a second size in one process stalled at every registration) */
    for (int k = 0; k < n_sizes; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit(one_size(&o, sizes[k]) ? 1 : 0);
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
            failed++;
    }
    if (o.check) printf("bench_scale --check: %s\n", failed ? "FAILED" : "ok");
    return failed ? 1 : 0;
}
