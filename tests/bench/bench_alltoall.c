/*
 * bench_alltoall.c — all-to-all-v bandwidth of the data plane against Open MPI, on one host.
 *
 * nccl-tests convention: for each size S (the total send buffer of one rank, S / n bytes to
 * each rank, itself included), warm-up runs, then timed runs; time is the slowest rank's
 * mean per call, algbw = S / time, busbw = algbw * (n - 1) / n, and "wrong" counts bytes
 * that arrived different from what was sent (checked after the timed runs). Columns: the
 * tcp backend with shared memory between local peers (the default), the tcp backend over
 * loopback sockets only (MOE_COMM_SHM=0), MPI_Alltoallv and moed's mpi backend (one pod of
 * n MPI ranks), the last two in one mpirun job that this program starts on itself. A second
 * table measures the cost of data-plane encryption: the tcp loopback column again with every
 * link encrypted (comm_config.encrypt: AES-256-GCM per frame), same sizes, same rounds.
 *
 *   bench_alltoall [--ranks 4] [--min 65536] [--max 67108864] [--seconds 0.5] [--repeat 3]
 * Rounds alternate between the backends, and each column keeps its best time per size (a
 * shared host's neighbours come and go); "wrong" adds up over every round.
 *   MOE_BENCH_MPIRUN_ARGS overrides the mpirun options (default: see MPIRUN_ARGS).
 * Never: asserts speed; it reports (the exit code is non-zero only for wrong results or a
 * failed run).
 */
#include "bench.h"
#include "../../common/log.h"
#include "../../worker/comm/comm.h"

#include <mpi.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SIZES 32
#define MPIRUN_ARGS "--oversubscribe --mca btl self,vader,tcp --mca btl_tcp_if_include lo " \
                    "--mca oob_tcp_if_include lo"

struct opts {
    int ranks;
    size_t min, max;
    double seconds;
    int repeat;
};

struct result {
    size_t bytes;
    double time_s; // slowest rank's mean per call
    long wrong;
};

static uint8_t pattern(int from, int to, size_t k) {
    return (uint8_t)(from * 37 + to * 11 + k * 13 + (k >> 12));
}

static int n_sizes(const struct opts *o, size_t *sizes) {
    int n = 0;
    for (size_t s = o->min; s <= o->max && n < MAX_SIZES; s *= 4) sizes[n++] = s;
    return n;
}

/* Runs every size with `step` (one all-to-all-v of `per` bytes to each rank); the caller
 * supplies the barrier and the max-reduction of the time across ranks. */
typedef int (*a2a_fn)(void *ctx, const void *send, const size_t *counts, void *recv);
typedef double (*max_fn)(void *ctx, double v);
typedef long (*sum_fn)(void *ctx, long v);

static int run_sizes(void *ctx, a2a_fn step, max_fn max_all, sum_fn sum_all, int rank, int n,
                     const struct opts *o, struct result *out) {
    size_t sizes[MAX_SIZES];
    int ns = n_sizes(o, sizes);
    uint8_t *send = malloc(o->max), *recv = malloc(o->max);
    if (!send || !recv) return -1;
    for (int si = 0; si < ns; si++) {
        size_t per = sizes[si] / (size_t)n, counts[COMM_MAX_RANKS];
        for (int j = 0; j < n; j++) {
            counts[j] = per;
            for (size_t k = 0; k < per; k++) send[(size_t)j * per + k] = pattern(rank, j, k);
        }
        memset(recv, 0, (size_t)n * per);
        /* warm-up, and an estimate of how many calls fill the time budget */
        double t0 = bench_now();
        for (int i = 0; i < 3; i++)
            if (step(ctx, send, counts, recv) != 0) return -1;
        double one = max_all(ctx, (bench_now() - t0) / 3);
        int iters = (int)(o->seconds / (one > 1e-6 ? one : 1e-6));
        if (iters < 5) iters = 5;
        if (iters > 1000) iters = 1000;
        max_all(ctx, 0); // a barrier
        t0 = bench_now();
        for (int i = 0; i < iters; i++)
            if (step(ctx, send, counts, recv) != 0) return -1;
        double t = max_all(ctx, (bench_now() - t0) / iters);
        long wrong = 0;
        for (int j = 0; j < n; j++)
            for (size_t k = 0; k < per; k++)
                wrong += recv[(size_t)j * per + k] != pattern(j, rank, k);
        out[si] = (struct result){.bytes = (size_t)n * per, .time_s = t,
                                  .wrong = sum_all(ctx, wrong)};
    }
    free(send);
    free(recv);
    return ns;
}

/* ---- moed's data plane ---- */

static const uint8_t bench_key[COMM_KEY_BYTES] = "bench: a data-plane key";

struct comm_ctx {
    struct comm *c;
    struct comm_group g;
};

static int comm_step(void *p, const void *send, const size_t *counts, void *recv) {
    struct comm_ctx *x = p;
    moe_status s = comm_alltoallv(x->c, 0, &x->g, send, counts, recv, counts);
    if (s != MOE_OK) fprintf(stderr, "bench: alltoallv: %s\n", moe_errmsg());
    return s == MOE_OK ? 0 : -1;
}
static double comm_max(void *p, double v) {
    struct comm_ctx *x = p;
    double all[COMM_MAX_RANKS];
    if (comm_allgather(x->c, 1, &x->g, &v, sizeof v, all) != MOE_OK) return -1;
    for (int i = 0; i < x->g.n; i++)
        if (all[i] > v) v = all[i];
    return v;
}
static long comm_sum(void *p, long v) {
    struct comm_ctx *x = p;
    int64_t w = v;
    if (comm_allreduce_i64(x->c, 1, &x->g, &w, 1) != MOE_OK) return -1;
    return (long)w;
}

/* Forks o->ranks processes on the tcp backend; rank 0 writes the results into `out`
 * through a pipe. Returns the number of sizes, or -1. */
static int bench_tcp(const struct opts *o, bool encrypt, struct result *out) {
    int n = o->ranks;
    struct comm_listener *l[COMM_MAX_RANKS];
    char addr[COMM_MAX_RANKS][COMM_ADDR_MAX];
    const char *peers[COMM_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        if (comm_listener_open(&l[r], "127.0.0.1:0") != MOE_OK) {
            fprintf(stderr, "bench: %s\n", moe_errmsg());
            return -1;
        }
        snprintf(addr[r], sizeof addr[r], "%s", comm_listener_address(l[r]));
        peers[r] = addr[r];
    }
    int fd[2];
    if (pipe(fd) != 0) return -1;
    pid_t pid[COMM_MAX_RANKS];
    fflush(stdout);
    for (int r = 0; r < n; r++) {
        pid[r] = fork();
        if (pid[r] != 0) continue;
        struct comm_config cfg = {.backend = COMM_TCP, .rank = r, .size = n, .pods = 1,
                                  .slots = n, .epoch = 1, .job_id = "bench", .key = bench_key,
                                  .encrypt = encrypt, .peers = peers, .timeout_s = 30};
        struct comm_ctx x = {.g = {.n = n, .me = r}};
        for (int j = 0; j < n; j++) x.g.ranks[j] = j;
        if (comm_open(&x.c, &cfg, l[r]) != MOE_OK) {
            fprintf(stderr, "bench: rank %d: %s\n", r, moe_errmsg());
            _exit(1);
        }
        struct result res[MAX_SIZES];
        int ns = run_sizes(&x, comm_step, comm_max, comm_sum, r, n, o, res);
        if (r == 0 && ns > 0 && write(fd[1], res, sizeof *res * (size_t)ns) < 0) _exit(1);
        comm_close(x.c);
        _exit(ns > 0 ? 0 : 1);
    }
    close(fd[1]);
    int ns = 0, bad = 0;
    ssize_t k;
    size_t got = 0;
    while ((k = read(fd[0], (char *)out + got, sizeof *out * MAX_SIZES - got)) > 0)
        got += (size_t)k;
    close(fd[0]);
    ns = (int)(got / sizeof *out);
    for (int r = 0; r < n; r++) {
        int st;
        waitpid(pid[r], &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        comm_listener_close(l[r]);
    }
    return bad ? -1 : ns;
}

/* ---- Open MPI, inside the mpirun job ---- */

struct mpi_ctx {
    int n;
    int *counts, *displs;
};

static int mpi_step(void *p, const void *send, const size_t *counts, void *recv) {
    struct mpi_ctx *x = p;
    for (int j = 0; j < x->n; j++) {
        x->counts[j] = (int)counts[j];
        x->displs[j] = j ? x->displs[j - 1] + x->counts[j - 1] : 0;
    }
    return MPI_Alltoallv(send, x->counts, x->displs, MPI_BYTE, recv, x->counts, x->displs,
                         MPI_BYTE, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}
static double mpi_max(void *p, double v) {
    double m;
    MPI_Allreduce(&v, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m;
}
static long mpi_sum(void *p, long v) {
    long s;
    MPI_Allreduce(&v, &s, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return s;
}

/* Under mpirun: MPI_Alltoallv, then moed's mpi backend; rank 0 prints lines
 * "R <mpi|moe-mpi> bytes time wrong" that the parent parses. */
static int mpi_child(const struct opts *o) {
    int rank, n;
    if (comm_mpi_init(&rank, &n) != MOE_OK) {
        fprintf(stderr, "bench: %s\n", moe_errmsg());
        return 1;
    }
    struct result res[MAX_SIZES];
    int counts[COMM_MAX_RANKS], displs[COMM_MAX_RANKS];
    struct mpi_ctx m = {.n = n, .counts = counts, .displs = displs};
    int ns = run_sizes(&m, mpi_step, mpi_max, mpi_sum, rank, n, o, res);
    for (int i = 0; rank == 0 && i < ns; i++)
        printf("R mpi %zu %.9f %ld\n", res[i].bytes, res[i].time_s, res[i].wrong);
    struct comm_config cfg = {.backend = COMM_MPI, .rank = rank, .size = n, .pods = 1,
                              .slots = n, .epoch = 1, .job_id = "bench", .key = bench_key,
                              .timeout_s = 30};
    struct comm_ctx x = {.g = {.n = n, .me = rank}};
    for (int j = 0; j < n; j++) x.g.ranks[j] = j;
    if (comm_open(&x.c, &cfg, NULL) != MOE_OK) {
        fprintf(stderr, "bench: mpi backend: %s\n", moe_errmsg());
        return 1;
    }
    int ns2 = run_sizes(&x, comm_step, comm_max, comm_sum, rank, n, o, res);
    for (int i = 0; rank == 0 && i < ns2; i++)
        printf("R moe-mpi %zu %.9f %ld\n", res[i].bytes, res[i].time_s, res[i].wrong);
    fflush(stdout);
    comm_close(x.c);
    comm_mpi_finalize();
    return ns > 0 && ns2 > 0 ? 0 : 1;
}

static int bench_mpi(const char *self, const struct opts *o, struct result *mpi,
                     struct result *moe_mpi, int *n_mpi, int *n_moe) {
    const char *args = getenv("MOE_BENCH_MPIRUN_ARGS");
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun %s -np %d '%s' "
             "--mpi-child --min %zu --max %zu --seconds %g",
             args ? args : MPIRUN_ARGS, o->ranks, self, o->min, o->max, o->seconds);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[256], kind[16];
    *n_mpi = *n_moe = 0;
    while (fgets(line, sizeof line, p)) {
        struct result r;
        if (sscanf(line, "R %15s %zu %lf %ld", kind, &r.bytes, &r.time_s, &r.wrong) != 4) continue;
        if (strcmp(kind, "mpi") == 0 && *n_mpi < MAX_SIZES) mpi[(*n_mpi)++] = r;
        if (strcmp(kind, "moe-mpi") == 0 && *n_moe < MAX_SIZES) moe_mpi[(*n_moe)++] = r;
    }
    return pclose(p) == 0 ? 0 : -1;
}

static void keep_best(struct result *best, int *n_best, const struct result *r, int n,
                      int round) {
    if (n < 0 || (round > 0 && *n_best < 0)) {
        *n_best = -1;
        return;
    }
    for (int i = 0; i < n; i++) {
        if (round == 0 || i >= *n_best || r[i].time_s < best[i].time_s) {
            long wrong = round == 0 || i >= *n_best ? 0 : best[i].wrong;
            best[i] = r[i];
            best[i].wrong += wrong;
        } else {
            best[i].wrong += r[i].wrong;
        }
    }
    if (n > *n_best) *n_best = n;
}

static double busbw(const struct result *r, int n) {
    return r->time_s > 0 ? (double)r->bytes / r->time_s / 1e9 * (n - 1) / n : 0;
}

/* The second table: tcp loopback plain against encrypted; returns the encrypted runs' wrong
 * bytes. */
static long print_encryption(const struct opts *o, const struct result *plain, int n_plain,
                             const struct result *enc, int n_enc) {
    printf("# data-plane encryption, tcp loopback only (MOE_COMM_SHM=0), same sizes and rounds: "
           "plain vs AES-256-GCM per frame\n");
    printf("# %10s | %9s %8s | %9s %8s %8s | %s\n", "bytes", "time(us)", "busbw", "time(us)",
           "busbw", "wrong", "encrypted/plain busbw");
    long wrong = 0;
    size_t sizes[MAX_SIZES];
    int ns = n_sizes(o, sizes);
    for (int i = 0; i < ns; i++) {
        const struct result *p = i < n_plain ? &plain[i] : NULL, *e = i < n_enc ? &enc[i] : NULL;
        printf("  %10zu |", sizes[i]);
        if (p) printf(" %9.1f %8.3f |", p->time_s * 1e6, busbw(p, o->ranks));
        else printf(" %9s %8s |", "-", "-");
        if (e) printf(" %9.1f %8.3f %8ld |", e->time_s * 1e6, busbw(e, o->ranks), e->wrong);
        else printf(" %9s %8s %8s |", "-", "-", "-");
        if (p && e && busbw(p, o->ranks) > 0)
            printf(" %.2f", busbw(e, o->ranks) / busbw(p, o->ranks));
        printf("\n");
        if (e) wrong += e->wrong;
    }
    return wrong;
}

int main(int argc, char **argv) {
    moe_log_init("bench");
    struct opts o = {.ranks = 4, .min = 64 << 10, .max = 64 << 20, .seconds = 0.5, .repeat = 3};
    bool child = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mpi-child") == 0) child = true;
        else if (strcmp(argv[i], "--ranks") == 0 && i + 1 < argc) o.ranks = atoi(argv[++i]);
        else if (strcmp(argv[i], "--min") == 0 && i + 1 < argc) o.min = strtoull(argv[++i], 0, 10);
        else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc) o.max = strtoull(argv[++i], 0, 10);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) o.seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) o.repeat = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: %s [--ranks N] [--min BYTES] [--max BYTES] [--seconds S] "
                    "[--repeat R]\n",
                    argv[0]);
            return 2;
        }
    }
    if (o.ranks < 2 || o.ranks > 64 || o.min < (size_t)o.ranks || o.max < o.min || o.repeat < 1) {
        fprintf(stderr, "bench: bad options\n");
        return 2;
    }
    if (child) return mpi_child(&o);
    signal(SIGPIPE, SIG_IGN);

    /* Rounds alternate between the backends and each keeps its best time per size, so that
     * a neighbour's burst on a shared host does not decide the comparison. */
    struct result shm[MAX_SIZES], tcp[MAX_SIZES], mpi[MAX_SIZES], moe_mpi[MAX_SIZES];
    struct result r_shm[MAX_SIZES], r_tcp[MAX_SIZES], r_mpi[MAX_SIZES], r_moe[MAX_SIZES];
    struct result enc[MAX_SIZES], r_enc[MAX_SIZES];
    int n_shm = 0, n_tcp = 0, n_mpi = 0, n_moe = 0, n_enc = 0, mpi_rc = 0;
    char self[4096];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    self[k > 0 ? k : 0] = 0;
    bool have_mpirun = system("command -v mpirun > /dev/null 2>&1") == 0;
    if (!have_mpirun) printf("# no mpirun on the PATH: the MPI columns are left out\n");
    for (int round = 0; round < o.repeat; round++) {
        int a = bench_tcp(&o, false, r_shm);
        setenv("MOE_COMM_SHM", "0", 1);
        int b = bench_tcp(&o, false, r_tcp);
        int e = bench_tcp(&o, true, r_enc);
        unsetenv("MOE_COMM_SHM");
        int c = 0, d = 0;
        int rc = !have_mpirun ? 0 : k > 0 ? bench_mpi(self, &o, r_mpi, r_moe, &c, &d) : -1;
        if (rc != 0) mpi_rc = rc;
        keep_best(shm, &n_shm, r_shm, a, round);
        keep_best(tcp, &n_tcp, r_tcp, b, round);
        keep_best(enc, &n_enc, r_enc, e, round);
        keep_best(mpi, &n_mpi, r_mpi, c, round);
        keep_best(moe_mpi, &n_moe, r_moe, d, round);
    }

    printf("# all-to-all-v, %d ranks on one host; bytes = each rank's send buffer; "
           "busbw = algbw * (n-1)/n in GB/s (1e9 B/s); best of %d alternating rounds\n",
           o.ranks, o.repeat);
    printf("# %-10s | %-27s | %-27s | %-27s | %-20s | %s\n", "", "tcp+shm (default)",
           "tcp loopback only", "MPI_Alltoallv", "moed mpi backend", "tcp+shm/MPI");
    printf("# %10s | %9s %8s %8s | %9s %8s %8s | %9s %8s %8s | %9s %8s | %s\n", "bytes",
           "time(us)", "busbw", "wrong", "time(us)", "busbw", "wrong", "time(us)", "busbw",
           "wrong", "time(us)", "busbw", "busbw ratio");
    long wrong = 0;
    size_t sizes[MAX_SIZES];
    int ns = n_sizes(&o, sizes);
    for (int i = 0; i < ns; i++) {
        printf("  %10zu |", sizes[i]);
        const struct result *cols[4] = {i < n_shm ? &shm[i] : NULL, i < n_tcp ? &tcp[i] : NULL,
                                        i < n_mpi ? &mpi[i] : NULL,
                                        i < n_moe ? &moe_mpi[i] : NULL};
        for (int c = 0; c < 4; c++) {
            if (!cols[c]) {
                printf(c == 3 ? " %9s %8s |" : " %9s %8s %8s |", "-", "-", "-");
                continue;
            }
            wrong += cols[c]->wrong;
            if (c == 3)
                printf(" %9.1f %8.3f |", cols[c]->time_s * 1e6, busbw(cols[c], o.ranks));
            else
                printf(" %9.1f %8.3f %8ld |", cols[c]->time_s * 1e6, busbw(cols[c], o.ranks),
                       cols[c]->wrong);
        }
        if (cols[0] && cols[2]) printf(" %.2f", busbw(cols[0], o.ranks) / busbw(cols[2], o.ranks));
        printf("\n");
    }
    wrong += print_encryption(&o, tcp, n_tcp, enc, n_enc);
    if (n_shm < 0 || n_tcp < 0 || n_enc < 0 || mpi_rc != 0)
        printf("# a run failed: tcp+shm %d, tcp %d, tcp encrypted %d, mpirun %d\n", n_shm, n_tcp,
               n_enc, mpi_rc);
    printf("# wrong results: %ld\n", wrong);
    return wrong || n_shm < 0 || n_tcp < 0 || n_enc < 0 || mpi_rc != 0 ? 1 : 0;
}
