/*
 * test_comm_mpi.c — the mpi backend: 2 pods x 2 slots, each pod one `mpirun -np 2` job,
 * pods joined by tcp. Inside a pod the data plane goes through Open MPI; across pods
 * through tcp; groups mixing both (all four ranks) through both at once. Every result is
 * checked against the same independent expectations as test_comm's tcp runs
 * (test_comm_data.h), so the two backends give the same bits.
 * Run plainly, it launches the two mpirun jobs on itself and reaps them; without mpirun on
 * the PATH it skips (exit 77).
 */
#define _XOPEN_SOURCE 700 // nftw
#include "check.h"
#include "test_comm_data.h"
#include "../common/log.h"
#include "../worker/comm/comm.h"

#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PODS 2
#define SLOTS 2
#define SIZE (PODS * SLOTS)

/* ---- inside mpirun ---- */

struct thread_arg {
    struct comm *c;
    struct comm_group g;
    int channel, salt;
    long wrong;
};
static void *a2a_thread(void *p) {
    struct thread_arg *a = p;
    for (int i = 0; i < 8; i++)
        a->wrong += td_check_alltoallv(a->c, a->channel, &a->g, a->salt + i, 999) != 0;
    return NULL;
}
static void *allreduce_thread(void *p) {
    struct thread_arg *a = p;
    for (int i = 0; i < 8; i++)
        a->wrong += td_check_allreduce(a->c, a->channel, &a->g, 70001, a->salt + i) != 0;
    return NULL;
}

/* The pod is the failure domain: rank 1 (pod 0) stops; rank 0 (its MPI partner) must give
 * up after the timeout by aborting pod 0's whole MPI job; pod 1 sees pod 0 vanish and fails
 * its collective with it, but lives on. */
#define STALL_TIMEOUT 1.5
static int rank_stall(struct comm *c, int rank) {
    struct comm_group all, pod_g;
    comm_group_all(&all, c);
    comm_group_pod(&pod_g, c, rank / SLOTS);
    if (rank == 1) { // stopped until MPI_Abort's teardown (which sends SIGCONT, then kills)
        raise(SIGSTOP);
        for (;;) pause();
    }
    if (rank == 0) {
        long w = td_check_alltoallv(c, 0, &pod_g, 1, 1000);
        printf("FAIL: rank 0's alltoallv with a stopped MPI peer returned (%ld: %s)\n", w,
               moe_errmsg());
        return 1;
    }
    double t0 = moe_clock_s();
    float buf[64] = {0};
    moe_status st = comm_allreduce(c, 0, &all, buf, 64);
    double dt = moe_clock_s() - t0;
    EXPECT_MSG(st == MOE_EUNAVAILABLE, "rank %d: allreduce with a dead pod: %s: %s", rank,
               moe_status_str(st), moe_errmsg());
    EXPECT_MSG(dt < 2 * STALL_TIMEOUT + 5, "rank %d: failing took %.1f s", rank, dt);
    printf("rank %d: pod 0 gone after %.2f s: %s\n", rank, dt, moe_errmsg());
    comm_close(c);
    comm_mpi_finalize();
    return failures ? 1 : 0;
}

/* comm_abort while a pod peer has not yet entered the operation: the MPI transfers are
 * settled, not torn out, so the peer's operation completes and nobody aborts the MPI job.
 * The order is made, not hoped for: the abort comes only once rank 0's operation has posted
 * its transfers (an operation begun after comm_abort posts nothing and fails at once, and a
 * peer that then enters it stalls and aborts the job: that is not what this checks), and
 * rank 1 enters only once rank 0 has aborted (a file in the test's directory), well within
 * the timeout_s that the settle waits for it. */
#define ABORT_TIMEOUT 5
struct abort_arg {
    struct comm *c;
    const char *dir;
    bool saw_op;
};
static void *abort_soon(void *p) {
    struct abort_arg *a = p;
    for (double until = moe_clock_s() + 30; !comm_ops_in_flight(a->c) && moe_clock_s() < until;)
        usleep(1000);
    a->saw_op = comm_ops_in_flight(a->c) > 0;
    usleep(200000); // the operation is well under way, waiting for rank 1
    comm_abort(a->c);
    char path[600];
    snprintf(path, sizeof path, "%s/aborted", a->dir);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
    return NULL;
}

static int rank_abort(struct comm *c, int rank, const char *dir) {
    struct comm_group pod_g;
    comm_group_pod(&pod_g, c, rank / SLOTS);
    if (rank == 0) {
        pthread_t t;
        struct abort_arg a = {.c = c, .dir = dir};
        pthread_create(&t, NULL, abort_soon, &a);
        double t0 = moe_clock_s();
        long w = td_check_alltoallv(c, 0, &pod_g, 5, 8000); // megabytes: rendezvous sends
        double dt = moe_clock_s() - t0;
        pthread_join(t, NULL);
        EXPECT_MSG(a.saw_op, "rank 0: its alltoallv never had its transfers posted");
        EXPECT_MSG(w < 0 && strstr(moe_errmsg(), "aborted"), "rank 0: %ld: %s", w,
                   moe_errmsg());
        EXPECT_MSG(dt > 0.15 && dt < ABORT_TIMEOUT + 1, "rank 0's aborted alltoallv took %.2f s",
                   dt);
        printf("rank 0: aborted alltoallv returned after %.2f s: %s\n", dt, moe_errmsg());
    } else if (rank == 1) {
        char path[600];
        snprintf(path, sizeof path, "%s/aborted", dir);
        for (double until = moe_clock_s() + 30; access(path, F_OK) != 0 && moe_clock_s() < until;)
            usleep(10000);
        EXPECT_MSG(access(path, F_OK) == 0, "rank 1: rank 0 never aborted");
        usleep(100000); // enters after rank 0 was aborted
        long w = td_check_alltoallv(c, 0, &pod_g, 5, 8000);
        EXPECT_MSG(w == 0, "rank 1: its alltoallv with an aborted peer: %ld: %s", w,
                   moe_errmsg());
    }
    comm_close(c);
    comm_mpi_finalize();
    return failures ? 1 : 0;
}

static int read_file(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    return n > 0 ? 0 : -1;
}

/* The job's data-plane key, as RunSlot would carry it (31 characters and a zero). */
static const uint8_t mpi_test_key[COMM_KEY_BYTES] = "test_comm_mpi: a data-plane key";

static int rank_main(void) {
    const char *dir = getenv("MOE_COMM_TEST_DIR"), *pod_s = getenv("MOE_COMM_TEST_POD");
    if (!dir || !pod_s) {
        printf("FAIL: run under mpirun without MOE_COMM_TEST_DIR / MOE_COMM_TEST_POD\n");
        return 1;
    }
    int slot, slots;
    if (comm_mpi_init(&slot, &slots) != MOE_OK) {
        printf("FAIL: %s\n", moe_errmsg());
        return 1;
    }
    EXPECT(slots == SLOTS);
    int pod = atoi(pod_s), rank = pod * SLOTS + slot;
    struct comm_listener *l = NULL;
    if (comm_listener_open(&l, "127.0.0.1:0") != MOE_OK) {
        printf("FAIL: %s\n", moe_errmsg());
        return 1;
    }
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/addr.%d", dir, rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    fprintf(f, "%s", comm_listener_address(l));
    fclose(f);
    rename(tmp, path); // others see the whole address or nothing
    static char addr[SIZE][COMM_ADDR_MAX];
    const char *peers[SIZE] = {0};
    double deadline = moe_clock_s() + 30;
    for (int q = 0; q < SIZE; q++) {
        if (q / SLOTS == pod) continue; // reached through MPI: no address needed
        snprintf(path, sizeof path, "%s/addr.%d", dir, q);
        while (read_file(path, addr[q], sizeof addr[q]) != 0 && moe_clock_s() < deadline)
            usleep(10000);
        peers[q] = addr[q];
    }
    const char *scenario = getenv("MOE_COMM_TEST_SCENARIO");
    bool stall = scenario && strcmp(scenario, "stall") == 0;
    bool abort_scenario = scenario && strcmp(scenario, "abort") == 0;
    struct comm_config cfg = {.backend = COMM_MPI, .rank = rank, .size = SIZE, .pods = PODS,
                              .slots = SLOTS, .epoch = 3, .job_id = "job-mpi",
                              .key = mpi_test_key, .peers = peers,
                              .timeout_s = stall            ? STALL_TIMEOUT
                                           : abort_scenario ? ABORT_TIMEOUT
                                                            : 20};
    struct comm *c = NULL;
    moe_status st = comm_open(&c, &cfg, l);
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    if (stall) return rank_stall(c, rank);
    if (abort_scenario) return rank_abort(c, rank, dir);

    struct comm_group all = {.n = SIZE, .me = rank, .ranks = {0, 1, 2, 3}}, pod_g, slot_g;
    comm_group_pod(&pod_g, c, pod);
    comm_group_slot(&slot_g, c, slot);
    long w;
    /* alltoallv: through MPI (pod), and mixed (all) */
    for (int salt = 1; salt < 4; salt++) {
        w = td_check_alltoallv(c, 0, &pod_g, salt, 977);
        EXPECT_MSG(w == 0, "rank %d pod alltoallv (MPI) %d: %ld wrong (%s)", rank, salt, w,
                   moe_errmsg());
        w = td_check_alltoallv(c, 1, &all, 10 + salt, 977);
        EXPECT_MSG(w == 0, "rank %d alltoallv (MPI + tcp) %d: %ld wrong (%s)", rank, salt, w,
                   moe_errmsg());
    }
    w = td_check_alltoallv(c, 0, &all, 20, 20011);
    EXPECT_MSG(w == 0, "rank %d large alltoallv: %ld wrong (%s)", rank, w, moe_errmsg());
    /* allreduce over pod (MPI), slot (tcp), all (both): the tree order of the group */
    size_t sizes[] = {0, 1, 3, 1001, 1100003};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        w = td_check_allreduce(c, 0, &pod_g, sizes[i], 20 + (int)i);
        EXPECT_MSG(w == 0, "rank %d pod allreduce n=%zu: %ld (%s)", rank, sizes[i], w,
                   moe_errmsg());
        w = td_check_allreduce(c, 1, &slot_g, sizes[i], 30 + (int)i);
        EXPECT_MSG(w == 0, "rank %d slot allreduce n=%zu: %ld (%s)", rank, sizes[i], w,
                   moe_errmsg());
        w = td_check_allreduce(c, 0, &all, sizes[i], 10 + (int)i);
        EXPECT_MSG(w == 0, "rank %d allreduce n=%zu: %ld (%s)", rank, sizes[i], w, moe_errmsg());
    }
    {
        size_t n = 333;
        double *d = malloc(sizeof(double) * n);
        for (size_t i = 0; i < n; i++) d[i] = td_f64(rank, i, 60);
        EXPECT(comm_allreduce_f64(c, 1, &all, d, n) == MOE_OK);
        double *want = td_expect_f64(&all, n, 60);
        EXPECT_MSG(memcmp(d, want, n * sizeof(double)) == 0, "rank %d allreduce_f64", rank);
        free(d), free(want);
    }
    /* send/recv: to the pod partner (MPI), then across pods (tcp) */
    {
        size_t n = 1 << 20;
        uint8_t *out = malloc(n), *in = malloc(n);
        for (size_t k = 0; k < n; k++) out[k] = (uint8_t)(rank * 13 + k * 5);
        int partners[2] = {pod * SLOTS + (1 - slot), (1 - pod) * SLOTS + slot};
        for (int p = 0; p < 2; p++) {
            int q = partners[p];
            moe_status a, b;
            if (rank < q) {
                a = comm_send(c, 0, q, out, n);
                b = comm_recv(c, 0, q, in, n);
            } else {
                b = comm_recv(c, 0, q, in, n);
                a = comm_send(c, 0, q, out, n);
            }
            size_t bad = 0;
            for (size_t k = 0; k < n; k++) bad += in[k] != (uint8_t)(q * 13 + k * 5);
            EXPECT_MSG(a == MOE_OK && b == MOE_OK && bad == 0, "rank %d send/recv with %d: %s",
                       rank, q, moe_errmsg());
        }
        free(out), free(in);
    }
    /* two channels from two threads (MPI_THREAD_MULTIPLE) */
    {
        struct thread_arg a = {.c = c, .g = pod_g, .channel = 0, .salt = 100};
        struct thread_arg b = {.c = c, .g = all, .channel = 1, .salt = 200};
        pthread_t ta, tb;
        pthread_create(&ta, NULL, a2a_thread, &a);
        pthread_create(&tb, NULL, allreduce_thread, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        EXPECT_MSG(a.wrong == 0 && b.wrong == 0, "rank %d threads: %ld, %ld wrong", rank, a.wrong,
                   b.wrong);
    }
    EXPECT(comm_barrier(c, 0, &all) == MOE_OK);
    struct comm_stats s;
    comm_get_stats(c, &s);
    EXPECT(s.alltoall_bytes > 0 && s.reduce_bytes > 0 && s.other_bytes > 0);
    comm_close(c);
    comm_listener_close(l);
    comm_mpi_finalize();
    printf("rank %d (pod %d, MPI rank %d): %d failures\n", rank, pod, slot, failures);
    return failures ? 1 : 0;
}

/* ---- the launcher ---- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *f) {
    (void)st, (void)flag, (void)f;
    remove(path);
    return 0;
}

/* Runs the two pods' mpirun jobs of one scenario; each pod's exit status lands in
 * status[p] (-1 when it had to be killed after `seconds`). */
static void run_pods(const char *scenario, double seconds, int status[PODS], double took[PODS]) {
    for (int p = 0; p < PODS; p++) status[p] = -1, took[p] = 0;
    char dir[] = "/tmp/moe-comm-mpi-XXXXXX";
    char self[4096];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!mkdtemp(dir) || k <= 0) {
        perror("mkdtemp/readlink");
        failures++;
        return;
    }
    self[k] = 0;
    pid_t pid[PODS];
    fflush(stdout);
    for (int p = 0; p < PODS; p++) {
        pid[p] = fork();
        if (pid[p] == 0) {
            setpgid(0, 0); // so that a hung job can be killed whole
            char pod[8];
            snprintf(pod, sizeof pod, "%d", p);
            /* Each mpirun its own session directory: two of them starting at once race to
             * create the shared default one (/tmp/ompi.HOST.UID), and the loser fails. */
            char session[600];
            snprintf(session, sizeof session, "%s/session.%d", dir, p);
            mkdir(session, 0700);
            setenv("MOE_COMM_TEST_DIR", dir, 1);
            setenv("MOE_COMM_TEST_POD", pod, 1);
            setenv("MOE_COMM_TEST_SCENARIO", scenario, 1);
            setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
            setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
            setenv("ASAN_OPTIONS", "detect_leaks=0", 1); // Open MPI's own allocations
            /* This VM has no network but lo: keep Open MPI on it. */
            execlp("mpirun", "mpirun", "--oversubscribe", "-np", "2", "--mca", "btl",
                   "self,vader,tcp", "--mca", "btl_tcp_if_include", "lo", "--mca",
                   "oob_tcp_if_include", "lo", "--mca", "orte_tmpdir_base", session, self,
                   (char *)NULL);
            perror("exec mpirun");
            _exit(127);
        }
    }
    double t0 = moe_clock_s(), deadline = t0 + seconds;
    int left = PODS;
    while (left > 0) {
        int st;
        pid_t got = waitpid(-1, &st, WNOHANG);
        if (got > 0) {
            for (int p = 0; p < PODS; p++)
                if (got == pid[p]) {
                    left--;
                    pid[p] = 0;
                    status[p] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                    took[p] = moe_clock_s() - t0;
                }
            continue;
        }
        if (moe_clock_s() > deadline) {
            for (int p = 0; p < PODS; p++)
                if (pid[p]) {
                    printf("FAIL: pod %d's mpirun did not finish in %.0f s: killed\n", p,
                           seconds);
                    failures++;
                    kill(-pid[p], SIGKILL);
                    status[p] = -1;
                }
            deadline = moe_clock_s() + 30;
        }
        usleep(10000);
    }
    for (int r = 0; r < SIZE; r++) {
        char path[600];
        snprintf(path, sizeof path, "%s/addr.%d", dir, r);
        unlink(path);
    }
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); // addresses, marks, sessions
}

int main(int argc, char **argv) {
    moe_log_init("test");
    if (getenv("OMPI_COMM_WORLD_SIZE")) return rank_main();
    if (system("command -v mpirun > /dev/null 2>&1") != 0) {
        printf("test_comm_mpi: no mpirun on the PATH: skipped\n");
        return 77;
    }
    int status[PODS];
    double took[PODS];
    printf("every operation through MPI, tcp and both\n");
    run_pods("ops", 90, status, took);
    for (int p = 0; p < PODS; p++)
        EXPECT_MSG(status[p] == 0, "pod %d's mpirun: exit status %d", p, status[p]);
    printf("an MPI rank stops: its pod aborts, the other pod fails its collective and lives\n");
    run_pods("stall", 60, status, took);
    EXPECT_MSG(status[0] != 0 && status[0] != -1,
               "pod 0's mpirun should have been aborted, exit status %d", status[0]);
    EXPECT_MSG(took[0] < STALL_TIMEOUT + 10, "pod 0's abort took %.1f s", took[0]);
    EXPECT_MSG(status[1] == 0, "pod 1's mpirun: exit status %d", status[1]);
    printf("  pod 0 aborted after %.1f s (exit %d), pod 1 done after %.1f s\n", took[0],
           status[0], took[1]);
    printf("comm_abort with MPI transfers pending: settled, the MPI job lives\n");
    run_pods("abort", 60, status, took);
    for (int p = 0; p < PODS; p++)
        EXPECT_MSG(status[p] == 0, "pod %d's mpirun: exit status %d", p, status[p]);
    printf("test_comm_mpi: %d failures\n", failures);
    return failures ? 1 : 0;
}
