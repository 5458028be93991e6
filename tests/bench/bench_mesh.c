/*
 * bench_mesh — training throughput of one job on 1, 2 and 4 worker processes.
 *
 * Each rank is its own process (this program re-executed with --rank, as a worker daemon is
 * its own process), connected over loopback by worker/comm's tcp backend, running the
 * distributed step of worker/trainer/slot.c. Every process gets cores / ranks OpenMP threads
 * (at least one), so the machine's cores are shared, not oversubscribed: on a 2-core machine
 * 4 ranks run at one thread each on half a core. What scales is then the work per process
 * (each holds E/S experts and B/D sequences); the table says how much of a step is the data
 * plane.
 * Columns: ms per step (median over the timed steps, slowest rank), tokens/s of the job, the
 * share of rank 0's step spent waiting in the data plane, and rank 0's bytes per step sent by
 * dispatch/combine (buddy copies, which the comm counts with them, left out) and by gradient
 * reductions.
 *
 * A second table (alone with --replicas) is the cost of keeping replicas (docs/recovery.md):
 * the same meshes with mesh.replicas = 1 (no redundancy: the update is in place, no copies)
 * against the default 2.
 * At 2 x 2 replicas = 2 costs only the previous version (an out-of-place update into a second
 * arena, no copy); at 1 x 2 and 1 x 4 it adds a buddy copy: every slot sends its experts and
 * their moments to the next slot of its pod on channel 2, overlapped with the step. The two
 * settings alternate over several rounds (the machine is shared and noisy): the ms/step are
 * the medians of all rounds' timed steps, the overhead the median of the rounds' ratios (and
 * their range), and beside it the ratio of the two fastest steps, which a neighbour's load,
 * only ever adding time, distorts least. Last, the CPU time of all ranks per step (every
 * thread of every rank process: compute, reductions, copies; the median over the rounds of
 * each setting), and its overhead: where the ranks fill the cores, as 4 ranks do on 2, every
 * CPU millisecond the copy takes is one the step waits for, and this is the figure a
 * neighbour's load leaves nearly alone (it slows a step's wall clock far more than it adds
 * CPU to it). Of that, the replica threads' (the copies, and with both settings the replica
 * check's hash: the kernel's count for the thread named moe-replica). `--replicas 1x4 ...`
 * runs only the meshes named.
 *
 * A third table (alone with --check) is the cost of the replica check (docs/operations.md):
 * at 2 x 2, mesh.check_every = 0 (never) against 1 (every step, the default): every slot
 * hashes (SHA-256) its whole state on the replica thread, overlapped with the step, and the
 * hashes ride in the step's statistics all-gather. Same rounds and columns as above, and the
 * state a slot hashes each step.
 */
#include "../../common/blas_select.h"
#include "../../common/log.h"
#include "../../common/spec.h"
#include "../../worker/comm/comm.h"
#include "../../worker/trainer/trainer.h"
#include "../rank_procs.h"
#include "bench.h"

#include <dirent.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 2
#define TIMED 8
#define MAX_RANKS 8

#define ROUNDS 6 // of each replicas setting, alternating, in the replica-overhead table

struct rank_result {
    int ok;
    double step_s[TIMED];
    double comm_s, a2a_bytes, red_bytes; // means over the timed steps
    double copy_bytes;                   // buddy copies sent per step (counted in a2a_bytes)
    double cpu_s;                        // the process's CPU time per timed step (all threads)
    double copy_cpu_s;                   // of which its replica thread's (the copies, a hash)
    double state_bytes;                  // what the replica check hashes: the whole state
    char error[200];
};

static const char *data_path = "/usr/share/games/fortunes";

/* replicas 0: the spec's default (2) */
static void make_spec(struct job_spec *s, int pods, int slots, int replicas) {
    spec_defaults(s);
    s->mesh.pods = pods;
    s->mesh.slots = slots;
    if (replicas > 0) s->mesh.replicas = replicas;
    s->model.d_model = 128;
    s->model.n_layers = 2;
    s->model.n_heads = 4;
    s->model.seq_len = 128;
    s->model.n_experts = 8;
    s->model.top_k = 2;
    s->model.d_ff = 512;
    s->model.dropless = 1;
    s->run.batch_size = 16;
    s->run.steps = 1000;
    s->data.n_sources = 1;
    snprintf(s->data.sources[0].path, SPEC_PATH_MAX, "%s", data_path);
    s->data.sources[0].weight = 1;
}

static double process_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The CPU time of this process's thread named `name` (the kernel's count, in ns: the first
 * field of its schedstat), or 0 when there is none. */
static double thread_cpu_s(const char *name) {
    DIR *d = opendir("/proc/self/task");
    double s = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], comm[32] = "";
        unsigned long long ns = 0;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        int named = fgets(comm, sizeof comm, f) && strncmp(comm, name, strlen(name)) == 0;
        fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->d_name);
        if (named && (f = fopen(path, "r"))) {
            if (fscanf(f, "%llu", &ns) == 1) s += (double)ns * 1e-9;
            fclose(f);
        }
    }
    if (d) closedir(d);
    return s;
}

static int rank_main(char **argv) {
    int pods = atoi(argv[2]), slots = atoi(argv[3]), rank = atoi(argv[4]), threads = atoi(argv[5]);
    int replicas = atoi(argv[6]), check = atoi(argv[7]);
    omp_set_num_threads(threads);
    struct job_spec spec;
    make_spec(&spec, pods, slots, replicas);
    if (check >= 0) spec.mesh.check_every = check;
    struct rank_result out;
    memset(&out, 0, sizeof out);
    struct comm_listener *l = NULL;
    struct comm *c = NULL;
    struct trainer t;
    if (rank_procs_open_comm(rank, pods, slots, 1, "bench", "bench", 10, &l, &c) != MOE_OK ||
        trainer_open_slot(&t, &spec, rank / slots, rank % slots, c) != MOE_OK) {
        snprintf(out.error, sizeof out.error, "%s", moe_errmsg());
    } else {
        out.ok = 1;
        /* what replica.c sends its buddies each step: its experts' parameters and moments */
        size_t x_n = 0;
        for (int i = 0; i < MODEL_NUM_TENSORS; i++)
            if (model_tensor_is_expert(i)) x_n += t.model.tensor_sizes[i];
        out.copy_bytes = (double)mesh_buddies(&spec.mesh) * 3 * x_n * sizeof(real);
        out.state_bytes = (double)(3 * t.model.n_params + t.model.n_buffers) * sizeof(real);
        for (int i = 0; i < WARMUP + TIMED && out.ok; i++) {
            if (i == WARMUP) {
                out.cpu_s = -process_cpu_s();
                out.copy_cpu_s = -thread_cpu_s("moe-replica");
            }
            struct step_report r;
            if (trainer_step(&t, &r) != MOE_OK) {
                snprintf(out.error, sizeof out.error, "%s", moe_errmsg());
                out.ok = 0;
                break;
            }
            if (i < WARMUP) continue;
            out.step_s[i - WARMUP] = r.seconds;
            out.comm_s += r.t_comm / TIMED;
            out.a2a_bytes += (double)r.bytes_alltoall / TIMED;
            out.red_bytes += (double)r.bytes_allreduce / TIMED;
        }
        out.cpu_s = (out.cpu_s + process_cpu_s()) / TIMED;
        out.copy_cpu_s = (out.copy_cpu_s + thread_cpu_s("moe-replica")) / TIMED;
        struct comm_group all;
        comm_group_all(&all, c);
        comm_barrier(c, 0, &all); /* leave together: a closed peer is not a failure then */
        trainer_close(&t);
    }
    comm_close(c);
    comm_listener_close(l);
    rank_procs_reply(&out, sizeof out);
    return out.ok ? 0 : 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs the mesh once; slowest[i] = the slowest rank's time of timed step i, *cpu the ranks'
 * CPU time per step, added. res (D entries) keeps every rank's result. check:
 * mesh.check_every (-1: the default). Returns 0, or -1 (the failure printed). */
static int run_once(const char *self, int pods, int slots, int replicas, int check, int cores,
                    struct rank_result *res, double *slowest, double cpu[2]) {
    int D = pods * slots, threads = cores / D > 0 ? cores / D : 1;
    char a[MAX_RANKS][6][16];
    char *argv[MAX_RANKS][8];
    char *const *args[MAX_RANKS];
    for (int r = 0; r < D; r++) {
        snprintf(a[r][0], 16, "%d", pods), snprintf(a[r][1], 16, "%d", slots);
        snprintf(a[r][2], 16, "%d", r), snprintf(a[r][3], 16, "%d", threads);
        snprintf(a[r][4], 16, "%d", replicas), snprintf(a[r][5], 16, "%d", check);
        char *v[] = {"--rank", a[r][0], a[r][1], a[r][2], a[r][3], a[r][4], a[r][5], NULL};
        memcpy(argv[r], v, sizeof v);
        args[r] = argv[r];
    }
    int got[MAX_RANKS], status[MAX_RANKS], ok = 1;
    if (rank_procs_run(self, D, args, res, sizeof *res, got, status) != 0) return -1;
    for (int r = 0; r < D; r++)
        if (!got[r] || !res[r].ok) {
            printf("  %d x %d (replicas %d): rank %d failed: %s\n", pods, slots, replicas, r,
                   got[r] ? res[r].error : "no result");
            ok = 0;
        }
    if (!ok) return -1;
    cpu[0] = cpu[1] = 0;
    for (int r = 0; r < D; r++) cpu[0] += res[r].cpu_s, cpu[1] += res[r].copy_cpu_s;
    for (int i = 0; i < TIMED; i++) {
        slowest[i] = 0;
        for (int r = 0; r < D; r++)
            if (res[r].step_s[i] > slowest[i]) slowest[i] = res[r].step_s[i];
    }
    return 0;
}

static double median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

static void run_mesh(const char *self, int pods, int slots, int cores) {
    int D = pods * slots, threads = cores / D > 0 ? cores / D : 1;
    struct rank_result res[MAX_RANKS];
    double slowest[TIMED], cpu[2];
    if (run_once(self, pods, slots, 0, -1, cores, res, slowest, cpu) != 0) return;
    double med = median(slowest, TIMED);
    struct job_spec s;
    make_spec(&s, pods, slots, 0);
    double tokens = (double)s.run.batch_size * s.model.seq_len;
    printf("| %d x %d | %d | %d | %8.1f | %8.0f | %5.1f%% | %7.2f | %7.2f |\n", pods, slots, D,
           threads, med * 1e3, tokens / med, 100 * res[0].comm_s / med,
           (res[0].a2a_bytes - res[0].copy_bytes) / 1e6, res[0].red_bytes / 1e6);
    fflush(stdout);
}

/* Two settings (replicas, check_every) of one mesh, alternating rounds: the ms/step of each
 * (medians of all rounds' steps), the overhead of the second (the median over the rounds of
 * each round's ratio: the two runs of a round are back to back, so a neighbour's load that
 * comes and goes cancels out more than it does between all-round medians), the rounds' range,
 * the fastest steps' ratio. res keeps the second setting's last results. */
struct pair_result {
    double ms[2], over, lo, hi, best;
    double cpu_ms[2], cpu_over; // all ranks' CPU per step: medians over the rounds, and theirs
    double thread_ms[2];        // of which the replica threads' (medians over the rounds)
};
static int run_pair(const char *self, int pods, int slots, int cores, const int set[2][2],
                    struct rank_result *res, struct pair_result *out) {
    static double steps[2][ROUNDS * TIMED];
    static struct rank_result last[MAX_RANKS];
    double ratio[ROUNDS], one[TIMED], cpu[2][ROUNDS], thread[2][ROUNDS], both[2];
    for (int round = 0; round < ROUNDS; round++) {
        double med[2];
        for (int k = 0; k < 2; k++) {
            /* the order alternates too, so neither setting always runs first */
            int which = (round % 2) ? 1 - k : k;
            double *mine = steps[which] + round * TIMED;
            if (run_once(self, pods, slots, set[which][0], set[which][1], cores, last, mine,
                         both))
                return -1;
            cpu[which][round] = both[0];
            thread[which][round] = both[1];
            if (which == 1) memcpy(res, last, sizeof last); /* the last round ends with 0 */
            memcpy(one, mine, sizeof one);
            med[which] = median(one, TIMED);
        }
        ratio[round] = med[1] / med[0];
    }
    out->ms[0] = median(steps[0], ROUNDS * TIMED) * 1e3;
    out->ms[1] = median(steps[1], ROUNDS * TIMED) * 1e3;
    out->over = median(ratio, ROUNDS) - 1; /* and ratio[] is sorted: the range */
    out->lo = ratio[0] - 1;
    out->hi = ratio[ROUNDS - 1] - 1;
    /* median() sorted the steps: [0] is the fastest of each, where a neighbour's load (which
     * only ever adds time) weighs least */
    out->best = steps[1][0] / steps[0][0] - 1;
    out->cpu_ms[0] = median(cpu[0], ROUNDS) * 1e3;
    out->cpu_ms[1] = median(cpu[1], ROUNDS) * 1e3;
    out->cpu_over = out->cpu_ms[1] / out->cpu_ms[0] - 1;
    out->thread_ms[0] = median(thread[0], ROUNDS) * 1e3;
    out->thread_ms[1] = median(thread[1], ROUNDS) * 1e3;
    return 0;
}

/* The step with mesh.replicas = 1 against 2 (see the header). */
static void run_replicas(const char *self, int pods, int slots, int cores) {
    static const int set[2][2] = {{1, -1}, {2, -1}};
    struct rank_result res[MAX_RANKS];
    struct pair_result p;
    if (run_pair(self, pods, slots, cores, set, res, &p) != 0) return;
    struct job_spec s;
    make_spec(&s, pods, slots, 2);
    const char *what = mesh_buddies(&s.mesh) > 0 ? "previous version + buddy copy"
                                                 : "previous version";
    printf("| %d x %d | %s | %7.2f | %8.1f | %8.1f | %+5.1f%% | %+5.1f%% .. %+5.1f%% "
           "| %+5.1f%% | %6.1f / %6.1f | %+5.1f%% | %5.2f / %5.2f |\n", pods, slots, what,
           res[0].copy_bytes / 1e6, p.ms[0], p.ms[1], 100 * p.over, 100 * p.lo, 100 * p.hi,
           100 * p.best, p.cpu_ms[0], p.cpu_ms[1], 100 * p.cpu_over, p.thread_ms[0],
           p.thread_ms[1]);
    fflush(stdout);
}

/* The step with mesh.check_every = 0 against 1 (see the header). */
static void run_check(const char *self, int pods, int slots, int cores) {
    static const int set[2][2] = {{0, 0}, {0, 1}};
    struct rank_result res[MAX_RANKS];
    struct pair_result p;
    if (run_pair(self, pods, slots, cores, set, res, &p) != 0) return;
    printf("| %d x %d | %7.2f | %8.1f | %8.1f | %+5.1f%% | %+5.1f%% .. %+5.1f%% | %+5.1f%% |\n",
           pods, slots, res[0].state_bytes / 1e6, p.ms[0], p.ms[1], 100 * p.over, 100 * p.lo,
           100 * p.hi, 100 * p.best);
    fflush(stdout);
}

int main(int argc, char **argv) {
    bench_child_hook(argc, argv);
    blas_select_kernels(argv);
    moe_log_init("bench");
    moe_log_set_level(MOE_LOG_ERROR);
    if (argc > 1 && strcmp(argv[1], "--rank") == 0) return rank_main(argv);
    char self[512];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    self[n] = 0;
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct job_spec s;
    make_spec(&s, 1, 1, 0);
    printf("bench_mesh: C=%d L=%d E=%d top-%d F=%d, %d x %d tokens per step, dropless, tcp "
           "data plane on loopback, mesh.replicas = %d (the default), %d cores\n",
           s.model.d_model, s.model.n_layers, s.model.n_experts, s.model.top_k, s.model.d_ff,
           s.run.batch_size, s.model.seq_len, s.mesh.replicas, cores);
    /* --replicas: only the second table; --check: only the third */
    int replicas_only = argc > 1 && strcmp(argv[1], "--replicas") == 0;
    int check_only = argc > 1 && strcmp(argv[1], "--check") == 0;
    if (!replicas_only && !check_only) {
        printf("| mesh | processes | threads each | ms/step | tokens/s | in data plane | "
               "dispatch+combine MB/step | reductions MB/step |\n"
               "|---|---|---|---|---|---|---|---|\n");
        static const int meshes[][2] = {{1, 1}, {1, 2}, {2, 1}, {1, 4}, {2, 2}};
        for (size_t i = 0; i < sizeof meshes / sizeof *meshes; i++)
            run_mesh(self, meshes[i][0], meshes[i][1], cores);
    }

    if (!check_only) {
        printf("\nkeeping replicas: mesh.replicas = 1 (none) vs 2 (the default), median of %d "
               "x %d timed steps each, alternating runs\n", ROUNDS, TIMED);
        printf("| mesh | replicas = 2 keeps | buddy MB/step (rank 0) | replicas = 1 ms/step | "
               "replicas = 2 ms/step | overhead | rounds' range | fastest step's | "
               "CPU ms/step, all ranks (1 / 2) | CPU overhead | replica threads' CPU "
               "ms/step (1 / 2) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        static const int rmeshes[][2] = {{1, 2}, {1, 4}, {2, 2}};
        int picked = 0; /* --replicas 1x4 ...: only those meshes */
        for (int a = 2; replicas_only && a < argc; a++) {
            int p = 0, sl = 0;
            if (sscanf(argv[a], "%dx%d", &p, &sl) != 2 || p < 1 || sl < 1 || p * sl > MAX_RANKS) {
                fprintf(stderr, "bench_mesh: '%s' is not a mesh PxS of at most %d ranks\n",
                        argv[a], MAX_RANKS);
                return 2;
            }
            run_replicas(self, p, sl, cores);
            picked++;
        }
        for (size_t i = 0; !picked && i < sizeof rmeshes / sizeof *rmeshes; i++)
            run_replicas(self, rmeshes[i][0], rmeshes[i][1], cores);
    }
    if (replicas_only) return 0;
    printf("\nthe replica check: mesh.check_every = 0 (never) vs 1 (every step), median of %d "
           "x %d timed steps each, alternating runs\n", ROUNDS, TIMED);
    printf("| mesh | state hashed MB/step (rank 0) | check 0 ms/step | check 1 ms/step | "
           "overhead | rounds' range | fastest step's |\n|---|---|---|---|---|---|---|\n");
    run_check(self, 2, 2, cores);
    return 0;
}
