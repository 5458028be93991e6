/*
 * bench_status — the control plane's costs, measured on real processes over loopback:
 *
 *   1. Status/GetJob and Status/GetCluster latency (p50/p99/max over 2000 blocking calls from
 *      one client thread) with 100 concurrent WatchJob streams open: first on a queued job
 *      (the watchers idle; it waits behind another job that keeps the one worker busy, since
 *      the coordinator refuses a job larger than its live workers), then on a running job (every watcher gets an update per step).
 *      Target: p99 < 5 ms.
 *   2. The coordinator's CPU time per training step: a real worker runs a job of 200 steps of
 *      the demo model; the coordinator's utime+stime (/proc/PID/stat, in clock ticks, and its
 *      process CPU clock, in ns) before and after, divided by the steps, next to the mean step
 *      time the worker reported. Once with the 100 watchers on the job, once without.
 *      Target: < 1% of a step.
 *
 * The daemons come from $MOE_BUILD_DIR/bin, else from beside this program (build/bin). Their
 * logs and state go to a temporary directory, removed at the end; the daemons die with us
 * (PR_SET_PDEATHSIG) if this program is killed.
 */
#include "../../common/log.h"
#include "../../proto/methods.h"
#include "../../proto/rpc.h"
#include "bench.h"
#include "bench_proc.h"
#include "proto/moed.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WATCHERS 100
#define CALLS 2000
#define WARMUP 200
#define STEPS 200
#define DATA "/usr/share/common-licenses/GPL-3"

/* The demo model (deploy/specs/demo.yaml) on one training thread, no evaluation until the end:
 * steps long enough to be real work, short enough that 200 of them take seconds. */
#define SPEC_FMT                                                                                   \
    "name: %s\n"                                                                                   \
    "model: {d_model: 128, layers: 2, heads: 4, seq_len: 128, experts: 4, d_ff: 256}\n"            \
    "router: {top_k: 2}\n"                                                                         \
    "data: {sources: [{path: " DATA "}]}\n"                                                        \
    "run: {steps: %ld, batch_size: 16, eval_every: 0, log_every: 50}\n"

struct cluster {
    char dir[PATH_MAX];
    char bin[PATH_MAX];
    char addr[160];
    char client_token[64];
    pid_t coordinator, worker;
    struct rpc_channel *ch;
};

/* ---- processes ---- */

static pid_t spawn(char *const argv[], const char *log_path) {
    pid_t pid = bench_fork_child();
    if (pid != 0) return pid;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        dup2(fd, 2);
        dup2(fd, 1);
        close(fd);
    }
    execv(argv[0], argv);
    fprintf(stderr, "bench_status: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static void find_bin(struct cluster *c) {
    const char *build = getenv("MOE_BUILD_DIR");
    if (build && build[0]) {
        snprintf(c->bin, sizeof c->bin, "%s/bin", build);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    snprintf(c->bin, sizeof c->bin, "%s", n > 0 ? dirname(self) : ".");
}

static int start_coordinator(struct cluster *c) {
    char cluster_token[64];
    if (bench_random_token(c->client_token, sizeof c->client_token) ||
        bench_random_token(cluster_token, sizeof cluster_token))
        return -1;
    char ct[PATH_MAX + 32], kt[PATH_MAX + 32], state[PATH_MAX + 32], addr_file[PATH_MAX + 32],
        exe[PATH_MAX + 32], log[PATH_MAX + 32];
    snprintf(ct, sizeof ct, "%s/client.token", c->dir);
    snprintf(kt, sizeof kt, "%s/cluster.token", c->dir);
    snprintf(state, sizeof state, "%s/state", c->dir);
    snprintf(addr_file, sizeof addr_file, "%s/addr", c->dir);
    snprintf(exe, sizeof exe, "%s/moed-coordinator", c->bin);
    snprintf(log, sizeof log, "%s/coordinator.log", c->dir);
    if (bench_write_file(ct, c->client_token) || bench_write_file(kt, cluster_token)) return -1;
    char *argv[] = {exe,
                    "--dir",
                    state,
                    "--listen",
                    "127.0.0.1:0",
                    "--addr-file",
                    addr_file,
                    "--client-token-file",
                    ct,
                    "--cluster-token-file",
                    kt,
                    NULL};
    c->coordinator = spawn(argv, log);
    for (int i = 0; i < 3000; i++) { // 30 s
        FILE *f = fopen(addr_file, "r");
        if (f) {
            int got = fscanf(f, "%159s", c->addr) == 1;
            fclose(f);
            if (got) break;
        }
        if (waitpid(c->coordinator, NULL, WNOHANG) == c->coordinator) {
            c->coordinator = 0;
            fprintf(stderr, "bench_status: the coordinator exited; see %s\n", log);
            return -1;
        }
        usleep(10000);
    }
    if (!c->addr[0]) return -1;
    return rpc_channel_open(&c->ch, c->addr, NULL, c->client_token, 0) == MOE_OK ? 0 : -1;
}

static int start_worker(struct cluster *c) {
    char exe[PATH_MAX + 32], kt[PATH_MAX + 32], log[PATH_MAX + 32];
    snprintf(exe, sizeof exe, "%s/moed-worker", c->bin);
    snprintf(kt, sizeof kt, "%s/cluster.token", c->dir);
    snprintf(log, sizeof log, "%s/worker.log", c->dir);
    char *argv[] = {exe, "--coordinator", c->addr, "--cluster-token-file", kt, "--threads", "1",
                    "--data-root", "/usr/share", NULL}; // the spec's corpus is beneath it
    c->worker = spawn(argv, log);
    return c->worker > 0 ? 0 : -1;
}

/* The coordinator's CPU time: utime+stime from /proc (bench_cpu_seconds: clock ticks, every
 * thread that ever ran), and its process CPU clock (ns). */
static double cpu_clock_seconds(pid_t pid) {
    clockid_t id;
    struct timespec ts;
    if (clock_getcpuclockid(pid, &id) != 0 || clock_gettime(id, &ts) != 0) return NAN;
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- calls ---- */

static Moed__V1__JobInfo *submit(struct cluster *c, const char *name, long steps) {
    char spec[1024];
    snprintf(spec, sizeof spec, SPEC_FMT, name, steps);
    Moed__V1__SubmitJobRequest req = MOED__V1__SUBMIT_JOB_REQUEST__INIT;
    req.spec = spec;
    ProtobufCMessage *resp = NULL;
    if (rpc_call_sync(c->ch, RPC_JOBS_SUBMIT_JOB, &req.base, &moed__v1__job_info__descriptor,
                      &resp, 10, NULL) != MOE_OK) {
        fprintf(stderr, "bench_status: %s\n", moe_errmsg());
        return NULL;
    }
    return (Moed__V1__JobInfo *)resp;
}

static Moed__V1__JobStatus *get_job(struct cluster *c, const char *id) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    if (rpc_call_sync(c->ch, RPC_STATUS_GET_JOB, &ref.base, &moed__v1__job_status__descriptor,
                      &resp, 10, NULL) != MOE_OK) {
        fprintf(stderr, "bench_status: %s\n", moe_errmsg());
        return NULL;
    }
    return (Moed__V1__JobStatus *)resp;
}

/* Submits a job of `steps` steps; its id into id[32]. */
static int submit_id(struct cluster *c, const char *name, long steps, char id[32]) {
    Moed__V1__JobInfo *info = submit(c, name, steps);
    if (!info) return -1;
    snprintf(id, 32, "%s", info->job_id);
    moed__v1__job_info__free_unpacked(info, NULL);
    return 0;
}

static void cancel_job(struct cluster *c, const char *id) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    if (rpc_call_sync(c->ch, RPC_JOBS_CANCEL_JOB, &ref.base, &moed__v1__job_info__descriptor,
                      &resp, 10, NULL) != MOE_OK)
        fprintf(stderr, "bench_status: %s\n", moe_errmsg());
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
}

static int is_final(Moed__V1__JobState s) {
    return s == MOED__V1__JOB_STATE__JOB_SUCCEEDED || s == MOED__V1__JOB_STATE__JOB_FAILED ||
           s == MOED__V1__JOB_STATE__JOB_CANCELLED;
}

/* Polls GetJob every `poll_s` until the job reaches `want` (or any final state); the mean of
 * the worker-reported step times seen along the way goes to *sampled_step_s. */
static Moed__V1__JobStatus *wait_job(struct cluster *c, const char *id, Moed__V1__JobState want,
                                     double timeout_s, double poll_s, double *sampled_step_s) {
    double t0 = bench_now(), sum = 0;
    long n = 0, last_step = -1;
    for (;;) {
        Moed__V1__JobStatus *st = get_job(c, id);
        if (!st) return NULL;
        if (st->last && st->last->step != last_step && st->last->seconds > 0) {
            sum += st->last->seconds;
            n++;
            last_step = st->last->step;
        }
        if (st->job->state == want || is_final(st->job->state) || bench_now() - t0 > timeout_s) {
            if (sampled_step_s) *sampled_step_s = n ? sum / n : NAN;
            return st;
        }
        moed__v1__job_status__free_unpacked(st, NULL);
        usleep((useconds_t)(poll_s * 1e6));
    }
}

/* ---- watchers: one thread per WatchJob stream ---- */

struct watchers {
    struct cluster *c;
    char job[32];
    uv_thread_t threads[WATCHERS];
    int started; // threads to join
    atomic_int opened, ended, failed;
    atomic_long updates;
    /* watcher 0 adds up the worker's step times of every step it sees */
    double step_seconds;
    long steps_seen;
    char error[256];
};

struct watcher_arg {
    struct watchers *w;
    int index;
};

static void watcher_main(void *arg) {
    struct watcher_arg *a = arg;
    struct watchers *w = a->w;
    Moed__V1__WatchJobRequest req = MOED__V1__WATCH_JOB_REQUEST__INIT;
    req.job_id = w->job;
    struct rpc_stream *s = NULL;
    if (rpc_stream_open(&s, w->c->ch, RPC_STATUS_WATCH_JOB, &req.base, 0) != MOE_OK) {
        atomic_fetch_add(&w->failed, 1);
        atomic_fetch_add(&w->opened, 1);
        free(a);
        return;
    }
    int first = 1, r;
    long last_step = -1;
    ProtobufCMessage *msg;
    struct rpc_result res;
    while ((r = rpc_stream_next(s, &moed__v1__job_update__descriptor, &msg, &res)) == 1) {
        if (first) atomic_fetch_add(&w->opened, 1);
        first = 0;
        atomic_fetch_add(&w->updates, 1);
        Moed__V1__JobUpdate *u = (Moed__V1__JobUpdate *)msg;
        if (a->index == 0 && u->last && u->last->step != last_step) {
            last_step = u->last->step;
            w->step_seconds += u->last->seconds;
            w->steps_seen++;
        }
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    if (first) atomic_fetch_add(&w->opened, 1);
    if (r == 0) {
        atomic_fetch_add(&w->ended, 1);
    } else {
        if (atomic_fetch_add(&w->failed, 1) == 0)
            snprintf(w->error, sizeof w->error, "%s", moe_errmsg());
    }
    rpc_stream_close(s);
    free(a);
}

static int watchers_start(struct watchers *w, struct cluster *c, const char *job) {
    memset(w, 0, sizeof *w);
    w->c = c;
    snprintf(w->job, sizeof w->job, "%s", job);
    for (int i = 0; i < WATCHERS; i++) {
        struct watcher_arg *a = malloc(sizeof *a);
        if (!a) return -1;
        *a = (struct watcher_arg){w, i};
        if (uv_thread_create(&w->threads[w->started], watcher_main, a) != 0) {
            free(a);
            return -1;
        }
        w->started++;
    }
    for (int i = 0; i < 3000 && atomic_load(&w->opened) < WATCHERS; i++) usleep(10000);
    return atomic_load(&w->opened) == WATCHERS && atomic_load(&w->failed) == 0 ? 0 : -1;
}

static void watchers_join(struct watchers *w) {
    for (int i = 0; i < w->started; i++) uv_thread_join(&w->threads[i]);
    w->started = 0;
}

/* ---- latency ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times CALLS blocking calls after WARMUP untimed ones; prints one table row. */
static int latency_row(struct cluster *c, const char *label, const char *method,
                       const ProtobufCMessage *req, const ProtobufCMessageDescriptor *type) {
    static double t[CALLS];
    int errors = 0;
    double cpu0 = 0;
    for (int i = 0; i < WARMUP + CALLS; i++) {
        if (i == WARMUP) cpu0 = cpu_clock_seconds(c->coordinator);
        ProtobufCMessage *resp = NULL;
        double t0 = bench_now();
        moe_status s = rpc_call_sync(c->ch, method, req, type, &resp, 10, NULL);
        double dt = bench_now() - t0;
        if (s != MOE_OK) errors++;
        if (resp) protobuf_c_message_free_unpacked(resp, NULL);
        if (i >= WARMUP) t[i - WARMUP] = dt;
    }
    double cpu = cpu_clock_seconds(c->coordinator) - cpu0;
    double sum = 0;
    for (int i = 0; i < CALLS; i++) sum += t[i];
    qsort(t, CALLS, sizeof t[0], cmp_double);
    double p50 = t[CALLS / 2], p99 = t[(int)(CALLS * 0.99)], max = t[CALLS - 1];
    printf("  %-26s %-11s %6d %7.3f %7.3f %7.3f %7.3f %7d %10.0f   %s\n", label,
           strrchr(method, '/') + 1, CALLS, 1e3 * sum / CALLS, 1e3 * p50, 1e3 * p99, 1e3 * max,
           errors, 1e6 * cpu / CALLS, p99 < 5e-3 ? "met" : "MISSED");
    return errors;
}

static int latency_table(struct cluster *c, const char *label, const char *job) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = (char *)job;
    Moed__V1__GetClusterRequest gc = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    int errors = latency_row(c, label, RPC_STATUS_GET_JOB, &ref.base,
                             &moed__v1__job_status__descriptor);
    errors += latency_row(c, label, RPC_STATUS_GET_CLUSTER, &gc.base,
                          &moed__v1__cluster_status__descriptor);
    return errors;
}

/* ---- CPU per step ---- */

struct cpu_run {
    double ticks_s, clock_s; // coordinator CPU over the run
    long steps;
    double worker_step_s; // mean step time the worker reported
    double wall_step_s; // (finished - started) / steps, from the job's own timestamps
};

/* Whether a worker has registered and been found reachable (so may be given a job) within
 * 60 s. */
static int worker_ready(struct cluster *c) {
    for (double t0 = bench_now(); bench_now() - t0 < 60; usleep(50000)) {
        Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        if (rpc_call_sync(c->ch, RPC_STATUS_GET_CLUSTER, &req.base,
                          &moed__v1__cluster_status__descriptor, &resp, 10, NULL) != MOE_OK)
            continue;
        const Moed__V1__ClusterStatus *cs = (const Moed__V1__ClusterStatus *)resp;
        int ready = cs->n_workers > 0 && cs->workers[0]->reachable;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (ready) return 1;
    }
    fprintf(stderr, "bench_status: no worker became reachable within 60 s\n");
    return 0;
}

/* Whether job id runs within 60 s. */
static int job_reaches_running(struct cluster *c, const char *id) {
    Moed__V1__JobStatus *st = wait_job(c, id, MOED__V1__JOB_STATE__JOB_RUNNING, 60, 0.05, NULL);
    int running = st && st->job->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    if (st) moed__v1__job_status__free_unpacked(st, NULL);
    if (!running) fprintf(stderr, "bench_status: %s did not start running\n", id);
    return running;
}

static void cpu_row(const char *label, const struct cpu_run *r) {
    double per_step = r->clock_s / r->steps;
    printf("  %-26s %5ld %8.1f %8.1f %9.1f %9.2f %9.2f %7.2f%%   %s\n", label, r->steps,
           1e3 * r->ticks_s, 1e3 * r->clock_s, 1e6 * per_step, 1e3 * r->worker_step_s,
           1e3 * r->wall_step_s, 100 * per_step / r->worker_step_s,
           per_step / r->worker_step_s < 0.01 ? "met" : "MISSED");
}

static int finish_cpu_run(struct cluster *c, const char *job, struct cpu_run *r, double ticks0,
                          double clock0, double *sampled) {
    Moed__V1__JobStatus *st =
        wait_job(c, job, MOED__V1__JOB_STATE__JOB_SUCCEEDED, 600, 0.25, sampled);
    r->ticks_s = bench_cpu_seconds(c->coordinator) - ticks0;
    r->clock_s = cpu_clock_seconds(c->coordinator) - clock0;
    if (!st || st->job->state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) {
        fprintf(stderr, "bench_status: %s ended %s: %s\n", job,
                st ? protobuf_c_enum_descriptor_get_value(&moed__v1__job_state__descriptor,
                                                          st->job->state)
                         ->name
                   : "?",
                st ? st->job->error : moe_errmsg());
        if (st) moed__v1__job_status__free_unpacked(st, NULL);
        return -1;
    }
    r->steps = (long)st->job->step;
    r->wall_step_s = (st->job->finished_unix_ms - st->job->started_unix_ms) * 1e-3 / r->steps;
    moed__v1__job_status__free_unpacked(st, NULL);
    return 0;
}

/* Stops the daemons (which ends any watch stream still open), joins the watchers, closes
 * the channel; -1 when a daemon did not exit 0 on SIGTERM. */
static int teardown(struct cluster *c, struct watchers *w) {
    int wrc = bench_stop(c->worker), crc = bench_stop(c->coordinator);
    watchers_join(w);
    if (c->ch) rpc_channel_close(c->ch);
    c->ch = NULL;
    if (wrc == 0 && crc == 0) return 0;
    printf("# the daemons exited %d (worker) and %d (coordinator) on SIGTERM; logs kept in %s\n",
           wrc, crc, c->dir);
    return -1;
}

static int run(struct cluster *c) {
    struct watchers *w = calloc(1, sizeof *w);
    if (!w) return 1;
    int rc = 1;
    if (start_coordinator(c) != 0) {
        fprintf(stderr, "bench_status: the coordinator did not start; see %s\n", c->dir);
        goto out;
    }
    printf("# coordinator pid %d at %s; state, logs in %s\n", (int)c->coordinator, c->addr, c->dir);

    /* 1. latency with 100 idle watchers on a queued job: the one worker is busy with another
     * (a job bigger than the live workers would be refused, not queued) */
    char blocker[32], qid[32];
    if (start_worker(c) != 0 || !worker_ready(c)) goto out;
    if (submit_id(c, "bench-blocker", 1000000, blocker) != 0) goto out;
    if (!job_reaches_running(c, blocker)) goto out;
    if (submit_id(c, "bench-watched", STEPS, qid) != 0) goto out;
    if (watchers_start(w, c, qid) != 0) {
        fprintf(stderr, "bench_status: %d of %d watchers opened, %d failed: %s\n",
                atomic_load(&w->opened), WATCHERS, atomic_load(&w->failed), w->error);
        goto out;
    }
    printf("\n# Status RPC latency, ms (blocking calls one after another from one client thread; "
           "%d timed after %d warm-up)\n",
           CALLS, WARMUP);
    printf("  %-26s %-11s %6s %7s %7s %7s %7s %7s %10s   %s\n", "condition", "method", "calls",
           "mean", "p50", "p99", "max", "errors", "coord us", "p99 < 5 ms");
    printf("  %-26s %-11s %6s %7s %7s %7s %7s %7s %10s\n", "", "", "", "", "", "", "", "",
           "cpu/call");
    int errors = latency_table(c, "queued, 100 idle watchers", qid);

    /* 2. CPU per step with the 100 watchers: the worker leaves the blocker for the watched job */
    struct cpu_run with = {0}, without = {0};
    double ticks0 = bench_cpu_seconds(c->coordinator);
    double clock0 = cpu_clock_seconds(c->coordinator), sampled;
    cancel_job(c, blocker);
    if (finish_cpu_run(c, qid, &with, ticks0, clock0, &sampled) != 0) goto out;
    watchers_join(w);
    with.worker_step_s = w->steps_seen ? w->step_seconds / w->steps_seen : sampled;
    long watched_updates = atomic_load(&w->updates);
    int watched_ended = atomic_load(&w->ended), watched_failed = atomic_load(&w->failed);

    /* 3. CPU per step without watchers */
    ticks0 = bench_cpu_seconds(c->coordinator);
    clock0 = cpu_clock_seconds(c->coordinator);
    char bid[32];
    if (submit_id(c, "bench-unwatched", STEPS, bid) != 0) goto out;
    if (finish_cpu_run(c, bid, &without, ticks0, clock0, &sampled) != 0) goto out;
    without.worker_step_s = sampled;

    /* 4. latency with 100 watchers on a running job: an update to each of them per step */
    char rid[32];
    if (submit_id(c, "bench-running", 1000000, rid) != 0) goto out;
    if (!job_reaches_running(c, rid) || watchers_start(w, c, rid) != 0) {
        fprintf(stderr, "bench_status: %s is not running with its watchers\n", rid);
        goto out;
    }
    long u0 = atomic_load(&w->updates);
    double l0 = bench_now();
    errors += latency_table(c, "running, 100 watching", rid);
    double update_rate = (atomic_load(&w->updates) - u0) / (bench_now() - l0);
    cancel_job(c, rid);
    watchers_join(w);
    printf("  (coord cpu/call: the coordinator's CPU time over the timed calls, divided by them; "
           "while a job runs it includes the step reports and watcher updates of that time)\n");
    printf("  (while running: the watchers received %.0f updates/s in all; every stream of both "
           "sets ended: %s)\n",
           update_rate,
           watched_ended == WATCHERS && watched_failed == 0 && atomic_load(&w->ended) == WATCHERS
               ? "yes"
               : "NO");

    printf("\n# Coordinator CPU per training step (demo model: C=128 L=2 T=128 E=4 F=256 B=16, "
           "%d steps, one worker on 1 thread)\n",
           STEPS);
    printf("  %-26s %5s %8s %8s %9s %9s %9s %8s   %s\n", "condition", "steps", "cpu ms", "cpu ms",
           "cpu us", "step ms", "step ms", "share", "< 1%");
    printf("  %-26s %5s %8s %8s %9s %9s %9s %8s\n", "", "", "ticks", "clock", "per step", "worker",
           "wall", "");
    cpu_row("100 watchers", &with);
    cpu_row("no watchers", &without);
    printf("  (the first row's job includes the worker leaving the cancelled blocker for it; %ld "
           "updates went to the watchers; ticks are 1/%ld s)\n",
           watched_updates, sysconf(_SC_CLK_TCK));
    rc = errors ? 1 : 0;
out:
    if (teardown(c, w) != 0) rc = 1;
    free(w);
    return rc;
}

/* The 1, 5 and 15 minute load averages: other work on the machine shows in the numbers. */
static const char *loadavg(char *buf, size_t cap) {
    FILE *f = fopen("/proc/loadavg", "r");
    buf[0] = 0;
    if (!f || !fgets(buf, (int)cap, f)) snprintf(buf, cap, "?");
    if (f) fclose(f);
    int spaces = 0;
    for (char *p = buf; *p; p++)
        if ((*p == ' ' && ++spaces == 3) || *p == '\n') *p = 0;
    return buf;
}

int main(void) {
    moe_log_init("bench");
    setvbuf(stdout, NULL, _IOLBF, 0); // progress shows as it happens, also into a file
    rpc_init(); // paired with rpc_shutdown_library at the end, whatever happens
    struct cluster c;
    memset(&c, 0, sizeof c);
    find_bin(&c);
    snprintf(c.dir, sizeof c.dir, "%s/bench_status.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(c.dir)) {
        perror("bench_status: mkdtemp");
        return 1;
    }
    char cpu[128] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    printf("# bench_status: %ld cores (%s); coordinator, worker and this client on one machine, "
           "loopback, insecure channels; %d WatchJob streams on one client channel\n",
           sysconf(_SC_NPROCESSORS_ONLN), cpu, WATCHERS);
    printf("# daemons from %s; load average before: %s\n", c.bin, loadavg(line, sizeof line));
    fflush(stdout);
    int rc = run(&c);
    printf("# load average after: %s\n", loadavg(line, sizeof line));
    if (rc == 0) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c.dir);
        if (system(cmd) != 0) fprintf(stderr, "bench_status: could not remove %s\n", c.dir);
    }
    rpc_shutdown_library();
    return rc;
}
