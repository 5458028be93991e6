/*
 * test_comm.c — the data plane between real processes over real sockets: every operation
 * against an independent expectation (test_comm_data.h), plain and encrypted; a handshake
 * that answers and counts nothing unauthenticated (other keys, jobs and epochs, planted and
 * live; garbage; a slowloris flood; a failed open's leftovers); a tampered encrypted frame;
 * and the never-hang promise (a rank killed, a rank stopped, comm_abort from another thread).
 * Each scenario forks its ranks from listeners the parent opened, and reaps every child.
 */
#include "check.h"
#include "test_comm_data.h"
#include "../common/log.h"
#include "../worker/comm/comm.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MAXR 8

/* One scenario: n ranks, their listeners, and per-rank overrides of the config. */
struct scenario {
    int n, pods, slots;
    double timeout_s;
    uint64_t epoch[MAXR];
    const char *key[MAXR];   // seeds of the ranks' data-plane keys (key_of)
    uint8_t key_buf[MAXR][COMM_KEY_BYTES];
    int encrypt[MAXR];
    double timeout_r[MAXR];  // > 0: this rank's first open's timeout_s instead of timeout_s
    const char *job[MAXR];
    struct comm_listener *l[MAXR];
    const char *addr[MAXR];
    char addr_buf[MAXR][COMM_ADDR_MAX]; // copies: a child closes the other ranks' listeners
    int watch;       // the ranks' comms have a peer watcher (on_peer_lost reports "lost")
    int report[2];   // children -> parent: a line each ("<rank> <event> <value>")
    int go[MAXR][2]; // parent -> child r: permission to go on / exit
    pid_t pid[MAXR];
};

typedef int (*rank_body)(struct scenario *s, int rank, struct comm *c, moe_status open_status);

static void scenario_init(struct scenario *s, int pods, int slots, double timeout_s) {
    memset(s, 0, sizeof *s);
    s->n = pods * slots, s->pods = pods, s->slots = slots, s->timeout_s = timeout_s;
    for (int r = 0; r < s->n; r++) {
        s->epoch[r] = 7;
        s->key[r] = "the job's data-plane key";
        s->job[r] = "job-test";
        if (comm_listener_open(&s->l[r], "127.0.0.1:0") != MOE_OK) {
            printf("listener: %s\n", moe_errmsg());
            exit(1);
        }
        snprintf(s->addr_buf[r], COMM_ADDR_MAX, "%s", comm_listener_address(s->l[r]));
        s->addr[r] = s->addr_buf[r];
        if (pipe(s->go[r]) != 0) exit(1);
    }
    if (pipe(s->report) != 0) exit(1);
}

static void report(struct scenario *s, int rank, const char *event, double value) {
    char line[128];
    int k = snprintf(line, sizeof line, "%d %s %.6f\n", rank, event, value);
    if (write(s->report[1], line, (size_t)k) != k) perror("report");
}

/* Child r waits for a byte from the parent (or its closing), at most `seconds`. */
static void wait_go(struct scenario *s, int rank, double seconds) {
    struct pollfd p = {.fd = s->go[rank][0], .events = POLLIN};
    if (poll(&p, 1, (int)(seconds * 1000)) > 0) {
        char b;
        if (read(s->go[rank][0], &b, 1) < 0) perror("go");
    }
}

/* A data-plane key from a seed: its bytes, zero-padded. */
static const uint8_t *key_of(uint8_t buf[COMM_KEY_BYTES], const char *seed) {
    memset(buf, 0, COMM_KEY_BYTES);
    size_t n = strlen(seed);
    memcpy(buf, seed, n < COMM_KEY_BYTES ? n : COMM_KEY_BYTES);
    return buf;
}

/* A watched rank's on_peer_lost (in its child): "lost" with the time, and whom it named. */
static struct scenario *watched_s;
static int watched_rank;
static void on_lost(void *arg, int rank, bool exited, const char *why) {
    (void)arg;
    report(watched_s, watched_rank, "lost", moe_clock_s());
    /* `exited` (certain: the process is gone) only when the probe saw it, as the text says */
    int named = (!exited && strstr(why, "rank 1 closed")) ||
                (exited && strstr(why, "rank 1 is exiting"));
    report(watched_s, watched_rank, named ? "lost_named" : "lost_bad", rank);
}

static struct comm_config config_of(struct scenario *s, int r, enum comm_backend backend) {
    watched_s = s, watched_rank = r;
    return (struct comm_config){.backend = backend, .rank = r, .size = s->n, .pods = s->pods,
                                .slots = s->slots, .epoch = s->epoch[r], .job_id = s->job[r],
                                .key = key_of(s->key_buf[r], s->key[r]),
                                .encrypt = s->encrypt[r], .peers = s->addr,
                                .timeout_s = s->timeout_r[r] > 0 ? s->timeout_r[r]
                                                                 : s->timeout_s,
                                .on_peer_lost = s->watch ? on_lost : NULL};
}

/* Forks every rank; each opens its comm and runs body; returns once all are reaped, the
 * sum of their exit codes (failed checks) plus one per child that had to be killed. */
static void scenario_fork(struct scenario *s, rank_body body) {
    fflush(stdout);
    for (int r = 0; r < s->n; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            failures = 0; // the child counts its own
            for (int q = 0; q < s->n; q++)
                if (q != r) comm_listener_close(s->l[q]);
            close(s->report[0]);
            struct comm *c = NULL;
            struct comm_config cfg = config_of(s, r, COMM_TCP);
            moe_status st = comm_open(&c, &cfg, s->l[r]);
            if (st != MOE_OK) report(s, r, "open_failed", st);
            int f = body(s, r, c, st);
            comm_close(c);
            comm_listener_close(s->l[r]);
            fflush(stdout);
            _exit(f + failures > 100 ? 100 : f + failures);
        }
        s->pid[r] = pid;
    }
    close(s->report[1]);
    s->report[1] = -1;
}

/* Reaps every child within `seconds` (kills the rest), counting failures. */
static void scenario_reap(struct scenario *s, double seconds) {
    double deadline = moe_clock_s() + seconds;
    int left = s->n;
    for (int r = 0; r < s->n; r++)
        if (!s->pid[r]) left--;
    while (left > 0) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);
        if (p > 0) {
            for (int r = 0; r < s->n; r++)
                if (s->pid[r] == p) {
                    s->pid[r] = 0;
                    left--;
                    if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
                        printf("FAIL rank %d: %d failed checks\n", r, WEXITSTATUS(status));
                        failures++;
                    } else if (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL) {
                        printf("FAIL rank %d died of signal %d\n", r, WTERMSIG(status));
                        failures++;
                    }
                }
            continue;
        }
        if (moe_clock_s() > deadline) {
            for (int r = 0; r < s->n; r++)
                if (s->pid[r]) {
                    printf("FAIL rank %d did not finish in %.0f s: killed\n", r, seconds);
                    failures++;
                    kill(s->pid[r], SIGCONT);
                    kill(s->pid[r], SIGKILL);
                }
            deadline = moe_clock_s() + 10;
        }
        usleep(2000);
    }
    for (int r = 0; r < s->n; r++) {
        comm_listener_close(s->l[r]);
        close(s->go[r][0]);
        close(s->go[r][1]);
    }
    if (s->report[0] >= 0) close(s->report[0]);
}

/* Reads report lines until `want` lines arrived or `seconds` passed. */
static int read_reports(struct scenario *s, int want, double seconds, int *rank, char (*event)[32],
                        double *value) {
    static char buf[8192];
    static size_t have;
    int got = 0;
    double deadline = moe_clock_s() + seconds;
    while (got < want) {
        char *nl;
        while (got < want && (nl = memchr(buf, '\n', have))) {
            *nl = 0;
            if (sscanf(buf, "%d %31s %lf", &rank[got], event[got], &value[got]) == 3) got++;
            size_t used = (size_t)(nl - buf) + 1;
            memmove(buf, nl + 1, have - used);
            have -= used;
        }
        if (got == want) break;
        int ms = (int)((deadline - moe_clock_s()) * 1000);
        if (ms <= 0) break;
        struct pollfd p = {.fd = s->report[0], .events = POLLIN};
        if (poll(&p, 1, ms) <= 0) break;
        ssize_t k = read(s->report[0], buf + have, sizeof buf - have);
        if (k <= 0) break;
        have += (size_t)k;
    }
    return got;
}

/* ---- every operation, 2 pods x 2 slots ---------------------------------------------- */

struct thread_arg {
    struct comm *c;
    struct comm_group g;
    int channel, iters, salt;
    long wrong;
    int failed;
};

static void *a2a_thread(void *p) {
    struct thread_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        long w = td_check_alltoallv(a->c, a->channel, &a->g, a->salt + i, 977);
        if (w < 0) a->failed++;
        else a->wrong += w;
    }
    return NULL;
}

static void *allreduce_thread(void *p) {
    struct thread_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        long w = td_check_allreduce(a->c, a->channel, &a->g, 100003, a->salt + i);
        if (w < 0) a->failed++;
        else a->wrong += w;
    }
    return NULL;
}

static int body_ops(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    EXPECT(comm_rank(c) == rank && comm_size(c) == 4);
    const char *shm_off = getenv("MOE_COMM_SHM");
    int want_shm = shm_off && strcmp(shm_off, "0") == 0 ? 0 : 3;
    EXPECT_MSG(comm_shm_peers(c) == want_shm, "rank %d: %d peers through shared memory, wanted %d",
               rank, comm_shm_peers(c), want_shm);
    /* encryption covers the tcp links, never shared memory */
    const char *enc = getenv("MOE_COMM_ENCRYPT");
    int want_enc = enc && strcmp(enc, "1") == 0 ? 3 - want_shm : 0;
    EXPECT_MSG(comm_encrypted_peers(c) == want_enc, "rank %d: %d peers through encrypted tcp, "
               "wanted %d", rank, comm_encrypted_peers(c), want_enc);
    struct comm_group all, pod2;
    comm_group_all(&all, c);
    EXPECT(all.n == 4 && all.me == rank && all.ranks[3] == 3);
    comm_group_pod(&pod2, c, 1 - rank / 2);
    EXPECT(pod2.me == -1);
    struct comm_group pod, slot, rev = {.n = 4, .me = 3 - rank, .ranks = {3, 2, 1, 0}};
    comm_group_pod(&pod, c, rank / 2);
    comm_group_slot(&slot, c, rank % 2);
    EXPECT(pod.n == 2 && pod.ranks[0] == (rank / 2) * 2 && pod.ranks[pod.me] == rank);
    EXPECT(slot.n == 2 && slot.ranks[0] == rank % 2 && slot.ranks[1] == 2 + rank % 2 &&
           slot.ranks[slot.me] == rank);

    /* alltoallv: uneven and zero sizes, small and large (the large one wraps the rings). */
    struct comm_stats s0, s1;
    comm_get_stats(c, &s0);
    size_t sent = 0;
    for (int j = 0; j < 4; j++)
        if (j != rank) sent += td_a2a_bytes(rank, j, 1, 3);
    long w = td_check_alltoallv(c, 0, &all, 1, 3);
    EXPECT_MSG(w == 0, "rank %d alltoallv small: %ld wrong (%s)", rank, w, moe_errmsg());
    comm_get_stats(c, &s1);
    EXPECT_MSG(s1.alltoall_bytes - s0.alltoall_bytes == sent, "stats: %llu sent, counted %llu",
               (unsigned long long)sent,
               (unsigned long long)(s1.alltoall_bytes - s0.alltoall_bytes));
    for (int salt = 2; salt < 6; salt++) {
        w = td_check_alltoallv(c, 0, &all, salt, 977);
        EXPECT_MSG(w == 0, "rank %d alltoallv salt %d: %ld wrong (%s)", rank, salt, w,
                   moe_errmsg());
    }
    w = td_check_alltoallv(c, 1, &all, 6, 20011); // up to ~20 MB per pair
    EXPECT_MSG(w == 0, "rank %d alltoallv large: %ld wrong (%s)", rank, w, moe_errmsg());
    w = td_check_alltoallv(c, 0, &pod, 7, 1000);
    EXPECT_MSG(w == 0, "rank %d alltoallv pod: %ld wrong (%s)", rank, w, moe_errmsg());
    w = td_check_alltoallv(c, 0, &rev, 8, 1000);
    EXPECT_MSG(w == 0, "rank %d alltoallv reversed group: %ld wrong (%s)", rank, w,
               moe_errmsg());

    /* allreduce: sizes below, at and past the group and the piece size; three groups. */
    size_t sizes[] = {0, 1, 3, 4, 1001, 300007, 1100003};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        w = td_check_allreduce(c, 1, &all, sizes[i], 10 + (int)i);
        EXPECT_MSG(w == 0, "rank %d allreduce n=%zu: %ld wrong (%s)", rank, sizes[i], w,
                   moe_errmsg());
        w = td_check_allreduce(c, 0, &pod, sizes[i], 20 + (int)i);
        EXPECT_MSG(w == 0, "rank %d pod allreduce n=%zu: %ld wrong (%s)", rank, sizes[i], w,
                   moe_errmsg());
        w = td_check_allreduce(c, 1, &slot, sizes[i], 30 + (int)i);
        EXPECT_MSG(w == 0, "rank %d slot allreduce n=%zu: %ld wrong (%s)", rank, sizes[i], w,
                   moe_errmsg());
    }
    w = td_check_allreduce(c, 0, &rev, 5003, 40);
    EXPECT_MSG(w == 0, "rank %d reversed-group allreduce: %ld wrong", rank, w);
    {
        /* The expectation is sensitive to order: a left-to-right sum differs somewhere. */
        float *want = td_expect_f32(&all, 5003, 41);
        size_t differ = 0;
        for (size_t i = 0; i < 5003; i++) {
            float seq = ((td_f32(0, i, 41) + td_f32(1, i, 41)) + td_f32(2, i, 41)) +
                        td_f32(3, i, 41);
            differ += memcmp(&seq, &want[i], sizeof seq) != 0;
        }
        EXPECT_MSG(differ > 0, "test data cannot tell tree order from sequential order");
        free(want);
    }

    /* reduce_scatter alone: only my chunk is defined. */
    {
        size_t n = 10007, lo, hi;
        float *buf = malloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++) buf[i] = td_f32(rank, i, 50);
        EXPECT(comm_reduce_scatter(c, 0, &all, buf, n) == MOE_OK);
        float *want = td_expect_f32(&all, n, 50);
        comm_chunk(n, 4, rank, &lo, &hi);
        EXPECT(hi - lo == 2502 || hi - lo == 2501);
        EXPECT_MSG(memcmp(buf + lo, want + lo, (hi - lo) * sizeof(float)) == 0,
                   "rank %d reduce_scatter chunk differs", rank);
        /* allgather_chunks of a buffer where only my chunk is valid */
        for (size_t i = 0; i < n; i++)
            if (i < lo || i >= hi) buf[i] = -1;
        EXPECT(comm_allgather_chunks(c, 1, &all, buf, n) == MOE_OK);
        EXPECT_MSG(memcmp(buf, want, n * sizeof(float)) == 0, "rank %d allgather_chunks", rank);
        free(buf);
        free(want);
    }

    /* f64 and i64 */
    {
        size_t n = 777;
        double *d = malloc(sizeof(double) * n);
        int64_t *v = malloc(sizeof(int64_t) * n);
        for (size_t i = 0; i < n; i++) d[i] = td_f64(rank, i, 60), v[i] = td_i64(rank, i, 61);
        EXPECT(comm_allreduce_f64(c, 0, &all, d, n) == MOE_OK);
        EXPECT(comm_allreduce_i64(c, 1, &slot, v, n) == MOE_OK);
        double *want = td_expect_f64(&all, n, 60);
        EXPECT_MSG(memcmp(d, want, n * sizeof(double)) == 0, "rank %d allreduce_f64", rank);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += v[i] != td_i64(slot.ranks[0], i, 61) + td_i64(slot.ranks[1], i, 61);
        EXPECT_MSG(bad == 0, "rank %d allreduce_i64: %zu wrong", rank, bad);
        free(d);
        free(v);
        free(want);
    }

    /* allgather, barrier */
    {
        char mine[5], got[20];
        for (int k = 0; k < 5; k++) mine[k] = (char)('a' + rank * 5 + k);
        EXPECT(comm_allgather(c, 0, &all, mine, 5, got) == MOE_OK);
        for (int k = 0; k < 20; k++) EXPECT(got[k] == (char)('a' + k));
        EXPECT(comm_barrier(c, 1, &all) == MOE_OK);
        EXPECT(comm_barrier(c, 0, &pod) == MOE_OK);
    }

    /* send / recv around a ring: even ranks send first, odd ranks receive first. */
    {
        size_t n = 3 << 20;
        uint8_t *out = malloc(n), *in = malloc(n);
        for (size_t k = 0; k < n; k++) out[k] = (uint8_t)(rank * 13 + k * 5);
        int to = (rank + 1) % 4, from = (rank + 3) % 4;
        moe_status a, b;
        if (rank % 2 == 0) {
            a = comm_send(c, 0, to, out, n);
            b = comm_recv(c, 0, from, in, n);
        } else {
            b = comm_recv(c, 0, from, in, n);
            a = comm_send(c, 0, to, out, n);
        }
        EXPECT_MSG(a == MOE_OK && b == MOE_OK, "rank %d send/recv: %s", rank, moe_errmsg());
        size_t bad = 0;
        for (size_t k = 0; k < n; k++) bad += in[k] != (uint8_t)(from * 13 + k * 5);
        EXPECT_MSG(bad == 0, "rank %d recv: %zu wrong bytes", rank, bad);
        EXPECT_FAIL(comm_send(c, 0, rank, out, 1), MOE_EINVAL, "not a peer");
        free(out);
        free(in);
    }

    /* Disagreements: MOE_EINVAL on both ends, and the comm still works afterwards. */
    {
        char buf[200] = {0};
        if (rank == 0) EXPECT_FAIL(comm_send(c, 1, 1, buf, 100), MOE_EINVAL, "rank 1");
        if (rank == 1) EXPECT_FAIL(comm_recv(c, 1, 0, buf, 50), MOE_EINVAL, "rank 0");
        size_t sb[2] = {0, 10}, rb[2] = {0, 10};
        if (rank == 1) rb[0] = 11; // pod 0: rank 1 expects 11 bytes from rank 0, which sends 10
        if (rank == 0) sb[1] = 10, rb[1] = 10;
        if (rank < 2) {
            if (rank == 1) sb[0] = 10, sb[1] = 0, rb[1] = 0;
            moe_status a = comm_alltoallv(c, 0, &pod, buf, sb, buf + 100, rb);
            EXPECT_MSG(a == MOE_EINVAL && strstr(moe_errmsg(), rank == 0 ? "rank 1" : "rank 0"),
                       "rank %d: mismatched alltoallv gave %s: %s", rank, moe_status_str(a),
                       moe_errmsg());
        }
        EXPECT_MSG(comm_barrier(c, 0, &all) == MOE_OK, "rank %d barrier after EINVAL: %s", rank,
                   moe_errmsg());
        w = td_check_allreduce(c, 1, &all, 999, 70);
        EXPECT_MSG(w == 0, "rank %d allreduce after EINVAL: %ld", rank, w);
    }

    /* Two channels at once from two threads. */
    {
        struct thread_arg a = {.c = c, .g = pod, .channel = 0, .iters = 12, .salt = 100};
        struct thread_arg b = {.c = c, .g = all, .channel = 1, .iters = 12, .salt = 200};
        pthread_t ta, tb;
        pthread_create(&ta, NULL, a2a_thread, &a);
        pthread_create(&tb, NULL, allreduce_thread, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        EXPECT_MSG(a.failed == 0 && a.wrong == 0, "rank %d channel 0 thread: %d failed, %ld wrong",
                   rank, a.failed, a.wrong);
        EXPECT_MSG(b.failed == 0 && b.wrong == 0, "rank %d channel 1 thread: %d failed, %ld wrong",
                   rank, b.failed, b.wrong);
    }
    EXPECT(comm_barrier(c, 0, &all) == MOE_OK);
    return 0;
}

static void test_ops(const char *what) {
    printf("ops (%s)\n", what);
    struct scenario s;
    scenario_init(&s, 2, 2, 10);
    scenario_fork(&s, body_ops);
    scenario_reap(&s, 60);
}

/* ---- the handshake: nothing unauthenticated is answered or counts ------------------- */

/* Connector and acceptor disagree (key, epoch either way, job): no link forms, nobody is
 * answered, and at the open's deadline each names the other rank and what it saw. */
static int body_mismatch(struct scenario *s, int rank, struct comm *c, moe_status st) {
    const char *who = rank == 0 ? "rank 1" : "rank 0";
    const char *saw = rank == 0 ? "without an authentic answer" : "did not authenticate";
    EXPECT_MSG(st == MOE_EUNAVAILABLE && strstr(moe_errmsg(), who) && strstr(moe_errmsg(), saw),
               "rank %d: wanted MOE_EUNAVAILABLE naming %s and \"%s\", got %s: %s", rank, who,
               saw, moe_status_str(st), moe_errmsg());
    return 0;
}

static void test_mismatch(const char *what, int which) {
    printf("mismatch: %s\n", what);
    struct scenario s;
    scenario_init(&s, 1, 2, 0.4);
    if (which == 0) s.key[1] = "another job's data-plane key";
    if (which == 1) s.epoch[0] = 6; // rank 0 (connector) is stale
    if (which == 2) s.epoch[1] = 6; // rank 1 (acceptor) is stale
    if (which == 3) s.job[1] = "job-other";
    double t0 = moe_clock_s();
    scenario_fork(&s, body_mismatch);
    scenario_reap(&s, 20);
    EXPECT_MSG(moe_clock_s() - t0 < 6, "the mismatch took %.1f s", moe_clock_s() - t0);
}

/* A recovery's RunSlots reach workers one at a time: rank 0 opens epoch 7 while rank 1 still
 * opens epoch 6 (a short one here). Rank 1's old open sees only hellos it cannot verify and
 * fails at its deadline; it opens epoch 7 then, and rank 0's one open succeeds: it dialled
 * again each time rank 1 closed it without an answer. */
static int body_lagging_acceptor(struct scenario *s, int rank, struct comm *c, moe_status st) {
    struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
    if (rank == 0) {
        EXPECT_MSG(st == MOE_OK, "rank 0: the open of epoch 7 with rank 1 behind: %s",
                   moe_errmsg());
        if (st == MOE_OK) {
            long w = td_check_allreduce(c, 0, &all, 99, 82);
            EXPECT_MSG(w == 0, "rank 0 allreduce in epoch 7: %ld (%s)", w, moe_errmsg());
        }
        return 0;
    }
    EXPECT_MSG(st == MOE_EUNAVAILABLE && strstr(moe_errmsg(), "did not authenticate"),
               "rank 1: its epoch-6 open should time out, having refused epoch 7's hellos, got "
               "%s: %s", moe_status_str(st), moe_errmsg());
    struct comm *next = NULL;
    struct comm_config cfg = config_of(s, rank, COMM_TCP);
    cfg.epoch = 7;
    cfg.timeout_s = s->timeout_s;
    moe_status st2 = comm_open(&next, &cfg, s->l[rank]);
    EXPECT_MSG(st2 == MOE_OK, "rank 1: the open of epoch 7: %s", moe_errmsg());
    if (st2 == MOE_OK) {
        long w = td_check_allreduce(next, 0, &all, 99, 82);
        EXPECT_MSG(w == 0, "rank 1 allreduce in epoch 7: %ld (%s)", w, moe_errmsg());
        comm_close(next);
    }
    return 0;
}

static void test_lagging_acceptor(void) {
    printf("mismatch: the acceptor one epoch behind, then caught up\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 2);
    s.epoch[1] = 6;
    s.timeout_r[1] = 0.3;
    scenario_fork(&s, body_lagging_acceptor);
    scenario_reap(&s, 30);
}

/* The comm opens anyway, and so does the next epoch's through the same listeners. */
static int body_strangers(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open with strangers around: %s", rank, moe_errmsg());
    if (st == MOE_OK) {
        struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
        long w = td_check_allreduce(c, 0, &all, 1234, 80);
        EXPECT_MSG(w == 0, "rank %d allreduce with strangers around: %ld (%s)", rank, w,
                   moe_errmsg());
    }
    struct comm *next = NULL;
    struct comm_config cfg = config_of(s, rank, COMM_TCP);
    cfg.epoch++;
    moe_status st2 = comm_open(&next, &cfg, s->l[rank]);
    EXPECT_MSG(st2 == MOE_OK, "rank %d: next epoch's open: %s", rank, moe_errmsg());
    if (st2 == MOE_OK) {
        struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
        long w = td_check_allreduce(next, 1, &all, 4321, 81);
        EXPECT_MSG(w == 0, "rank %d allreduce in the next epoch: %ld (%s)", rank, w,
                   moe_errmsg());
        comm_close(next);
    }
    return 0;
}

static int connect_to(const char *addr) {
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) perror("connect");
    return fd;
}

/* A stranger learns nothing: once the scenario is over its socket reads end of file or a
 * reset, never a byte. */
static void expect_nothing_back(int fd, const char *who) {
    char b[64];
    ssize_t k = recv(fd, b, sizeof b, MSG_DONTWAIT);
    EXPECT_MSG(k == 0 || (k < 0 && errno == ECONNRESET), "%s got %zd bytes back (errno %d)", who,
               k, k < 0 ? errno : 0);
}

/* A process that plays `rank` of a 2-rank comm with the given job, epoch and key (a real v2
 * hello, as a stale or foreign worker sends it) until its open's deadline, then exits: 0
 * when its open failed, as it must. */
static pid_t rogue(struct scenario *s, int rank, const char *job, uint64_t epoch,
                   const char *key, double timeout_s) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid != 0) return pid;
    for (int q = 0; q < s->n; q++)
        if (q != rank) comm_listener_close(s->l[q]);
    uint8_t kb[COMM_KEY_BYTES];
    struct comm_config cfg = {.backend = COMM_TCP, .rank = rank, .size = 2, .pods = 1,
                              .slots = 2, .epoch = epoch, .job_id = job, .key = key_of(kb, key),
                              .peers = s->addr, .timeout_s = timeout_s};
    struct comm *c = NULL;
    moe_status st = comm_open(&c, &cfg, rank ? s->l[rank] : NULL);
    comm_close(c);
    _exit(st == MOE_EUNAVAILABLE ? 0 : 1);
}

static void reap_rogue(pid_t pid, const char *what) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: its open did not fail as it "
               "should (status %d)", what, status);
}

/* Hellos of another key, another job, an older and a newer epoch, planted before the open
 * (each dialled, was never answered, gave up and closed: its hello waits in the accept
 * queue), wrong-key hellos all through the open, garbage, half a hello, silence, a reset. */
static void test_strangers(void) {
    printf("strangers: planted and live hellos of other keys, jobs and epochs; garbage, "
           "silence\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 1);
    const char *key = s.key[0], *other = "another job's data-plane key";
    pid_t planted[4] = {rogue(&s, 0, "job-test", 7, other, 0.1),
                        rogue(&s, 0, "job-other", 7, key, 0.1),
                        rogue(&s, 0, "job-test", 6, key, 0.1),
                        rogue(&s, 0, "job-test", 8, key, 0.1)};
    for (int i = 0; i < 4; i++) reap_rogue(planted[i], "a planted hello");
    int junk = connect_to(s.addr[1]), silent = connect_to(s.addr[1]), half = connect_to(s.addr[1]);
    char garbage[3000];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)mix64(i);
    if (write(junk, garbage, sizeof garbage) < 0) perror("write");
    if (write(half, garbage, 40) < 0) perror("write");
    int reset = connect_to(s.addr[1]); // connects, then resets at once
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(reset, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(reset);
    pid_t live = rogue(&s, 0, "job-test", 7, other, 0.5); // dials again and again meanwhile
    double t0 = moe_clock_s();
    scenario_fork(&s, body_strangers);
    reap_rogue(live, "wrong-key hellos during the open");
    scenario_reap(&s, 30);
    EXPECT_MSG(moe_clock_s() - t0 < 8, "opening with strangers took %.1f s", moe_clock_s() - t0);
    expect_nothing_back(junk, "garbage");
    expect_nothing_back(half, "half a hello");
    expect_nothing_back(silent, "a silent connection");
    close(junk), close(silent), close(half);
}

/* Job 4's open on rank 1 failed (its rank 0 was a newer epoch), and job 4's rank 0 went on
 * dialling after it: its hellos wait in rank 1's queue. Job 5 opens on the same listeners. */
static void test_after_failed_open(void) {
    printf("a failed open's queued connections do not touch the next job's open\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 1);
    s.job[0] = s.job[1] = "job-5";
    pid_t old0 = rogue(&s, 0, "job-4", 2, s.key[0], 0.3);
    pid_t old1 = rogue(&s, 1, "job-4", 1, s.key[0], 0.1);
    reap_rogue(old1, "job 4's rank 1");
    reap_rogue(old0, "job 4's rank 0");
    double t0 = moe_clock_s();
    scenario_fork(&s, body_strangers);
    scenario_reap(&s, 30);
    EXPECT_MSG(moe_clock_s() - t0 < 8, "job 5's opens took %.1f s", moe_clock_s() - t0);
}

/* 1,200 silent connections (slowloris) on the acceptor's listener before and through a real
 * open: the oldest silent one makes room for each newcomer, and real peers' hellos are read
 * as soon as they are accepted. */
static void test_slowloris(void) {
    enum { SILENT = 1200 };
    printf("slowloris: %d silent connections on the acceptor's listener\n", SILENT);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < SILENT + 256) {
        rl.rlim_cur = rl.rlim_max < SILENT + 256 ? rl.rlim_max : SILENT + 256;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct scenario s;
    scenario_init(&s, 1, 2, 2);
    const char *colon = strrchr(s.addr[1], ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd[SILENT], n = 0;
    for (; n < SILENT; n++) {
        fd[n] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd[n] < 0) break;
        connect(fd[n], (struct sockaddr *)&sa, sizeof sa); // in progress, or queued
    }
    EXPECT_MSG(n >= 1000, "only %d sockets (RLIMIT_NOFILE)", n);
    double t0 = moe_clock_s();
    scenario_fork(&s, body_strangers);
    scenario_reap(&s, 60);
    EXPECT_MSG(moe_clock_s() - t0 < 20, "opening through the flood took %.1f s",
               moe_clock_s() - t0);
    int data = 0;
    for (int i = 0; i < n; i++) {
        char b[16];
        data += recv(fd[i], b, sizeof b, MSG_DONTWAIT) > 0;
        close(fd[i]);
    }
    EXPECT_MSG(data == 0, "%d silent connections got bytes back", data);
}

/* ---- encryption: a tampered frame fails the comm ------------------------------------ */

/* A man in the middle on rank 0's connections to rank 1: forwards both ways and flips one
 * bit in the first stream from rank 0 that passes flip_at bytes. */
struct proxy {
    int lfd;
    char addr[64];
    const char *target;
    long flip_at;
    atomic_int stop;
};

static void forward(int from, int to, long *moved, long flip_at, int *a, int *b) {
    char buf[65536];
    ssize_t k = recv(from, buf, sizeof buf, MSG_DONTWAIT);
    if (k == 0 || (k < 0 && errno != EAGAIN)) {
        close(*a), close(*b);
        *a = *b = -1;
        return;
    }
    if (k < 0) return;
    if (flip_at >= 0 && *moved <= flip_at && *moved + k > flip_at) buf[flip_at - *moved] ^= 1;
    *moved += k;
    for (ssize_t off = 0; off < k;) {
        ssize_t w = send(to, buf + off, (size_t)(k - off), MSG_NOSIGNAL);
        if (w <= 0) return;
        off += w;
    }
}

static void *proxy_main(void *p) {
    struct proxy *x = p;
    int a[COMM_CHANNELS], b[COMM_CHANNELS], n = 0, flipped = -1;
    long up[COMM_CHANNELS] = {0}, down[COMM_CHANNELS] = {0};
    double end = moe_clock_s() + 40;
    while (!atomic_load(&x->stop) && moe_clock_s() < end) {
        struct pollfd pf[1 + 2 * COMM_CHANNELS] = {{.fd = x->lfd, .events = POLLIN}};
        for (int i = 0; i < n; i++) {
            pf[1 + 2 * i] = (struct pollfd){.fd = a[i], .events = POLLIN};
            pf[2 + 2 * i] = (struct pollfd){.fd = b[i], .events = POLLIN};
        }
        if (poll(pf, (nfds_t)(1 + 2 * n), 50) <= 0) continue;
        if (pf[0].revents && n < COMM_CHANNELS) {
            a[n] = accept(x->lfd, NULL, NULL);
            b[n] = connect_to(x->target);
            n++;
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (a[i] >= 0 && pf[1 + 2 * i].revents) {
                long before = up[i];
                bool mine = flipped < 0 || flipped == i;
                forward(a[i], b[i], &up[i], mine ? x->flip_at : -1, &a[i], &b[i]);
                if (mine && before <= x->flip_at && up[i] > x->flip_at) flipped = i;
            }
            if (a[i] >= 0 && pf[2 + 2 * i].revents)
                forward(b[i], a[i], &down[i], -1, &b[i], &a[i]);
        }
    }
    for (int i = 0; i < n; i++)
        if (a[i] >= 0) close(a[i]), close(b[i]);
    return NULL;
}

static int body_tamper(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open through the proxy: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    /* only rank 0 asked for encryption: a link is encrypted when either end asks */
    EXPECT_MSG(comm_encrypted_peers(c) == 1, "rank %d: %d encrypted peers", rank,
               comm_encrypted_peers(c));
    struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
    size_t n = (size_t)1 << 20;
    float *buf = calloc(n, sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 1000) * 0.5f;
    moe_status r = comm_allreduce(c, 0, &all, buf, n);
    free(buf);
    if (rank == 1) {
        EXPECT_MSG(r == MOE_EAUTH && strstr(moe_errmsg(), "failed authentication"),
                   "rank 1: a tampered frame should fail with MOE_EAUTH, got %s: %s",
                   moe_status_str(r), moe_errmsg());
        return 0;
    }
    /* two members reduce in one exchange: rank 0 may have received all of rank 1's (intact)
     * buffer before rank 1 found the flipped frame; it learns at its next operation at the
     * latest, which can never succeed across the broken link */
    if (r == MOE_OK) r = comm_barrier(c, 0, &all);
    EXPECT_MSG(r != MOE_OK, "rank 0: the allreduce and the barrier after it succeeded across a "
               "tampered link");
    return 0;
}

static void test_tamper(void) {
    printf("encryption: a bit flipped on the way fails the comm with an authentication error\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 5);
    s.encrypt[0] = 1;
    struct proxy px = {.target = s.addr_buf[1], .flip_at = 256 << 10};
    px.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof sa;
    if (bind(px.lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(px.lfd, 8) != 0 ||
        getsockname(px.lfd, (struct sockaddr *)&sa, &sl) != 0) {
        perror("proxy");
        failures++;
        return;
    }
    snprintf(px.addr, sizeof px.addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    s.addr[1] = px.addr; // rank 0 dials rank 1 through the proxy
    pthread_t t;
    pthread_create(&t, NULL, proxy_main, &px);
    setenv("MOE_COMM_SHM", "0", 1); // the proxy is on this host: keep the link on tcp
    scenario_fork(&s, body_tamper);
    unsetenv("MOE_COMM_SHM");
    scenario_reap(&s, 30);
    atomic_store(&px.stop, 1);
    pthread_join(t, NULL);
    close(px.lfd);
}

/* ---- never hangs -------------------------------------------------------------------- */

static int body_kill(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    struct comm_group all = {.n = 4, .me = rank, .ranks = {0, 1, 2, 3}};
    size_t per = 16 << 20;
    uint8_t *sbuf = calloc(4, per), *rbuf = calloc(4, per);
    size_t sb[4] = {per, per, per, per}, rb[4] = {per, per, per, per};
    report(s, rank, "started", moe_clock_s());
    moe_status r = MOE_OK;
    double t = 0;
    for (int i = 0; i < 500 && r == MOE_OK; i++) {
        t = moe_clock_s();
        r = comm_alltoallv(c, 0, &all, sbuf, sb, rbuf, rb);
    }
    double end = moe_clock_s();
    /* A survivor names rank 3, or a survivor that gave up because of rank 3 (a failing
     * rank shuts its links down, so that the failure spreads at once). */
    const char *ev = r != MOE_EUNAVAILABLE ? "failed_bad"
                     : strstr(moe_errmsg(), "rank 3") ? "failed_named"
                                                      : "failed_other";
    report(s, rank, ev, end);
    report(s, rank, "call_s", end - t);
    if (r != MOE_EUNAVAILABLE)
        printf("rank %d: after the failure: %s: %s\n", rank, moe_status_str(r), moe_errmsg());
    /* The comm is broken now: a later call fails at once (far under the scenario's 10 s
     * timeout, with room for a loaded machine). */
    double t1 = moe_clock_s();
    EXPECT(comm_barrier(c, 1, &all) == MOE_EUNAVAILABLE);
    EXPECT_MSG(moe_clock_s() - t1 < 1.0, "rank %d: the broken comm took %.2f s to fail", rank,
               moe_clock_s() - t1);
    wait_go(s, rank, 20); // stay alive so that peers see rank 3 fail, not us leaving
    free(sbuf);
    free(rbuf);
    return 0;
}

static void test_kill(void) {
    printf("kill -9 a rank in the middle of a large alltoallv\n");
    struct scenario s;
    scenario_init(&s, 2, 2, 10); // the timeout is long: only EOF can explain a fast failure
    scenario_fork(&s, body_kill);
    int rank[16];
    char ev[16][32];
    double val[16];
    int got = read_reports(&s, 4, 20, rank, ev, val);
    EXPECT_MSG(got == 4, "only %d ranks started", got);
    usleep(150000); // a few alltoallvs in
    double killed = moe_clock_s();
    kill(s.pid[3], SIGKILL);
    got = read_reports(&s, 6, 20, rank, ev, val);
    EXPECT_MSG(got == 6, "only %d reports after the kill", got);
    int named = 0;
    for (int i = 0; i < got; i++) {
        if (strcmp(ev[i], "call_s") == 0) {
            EXPECT_MSG(val[i] < 2.0, "rank %d's failing call took %.2f s", rank[i], val[i]);
            continue;
        }
        named += strcmp(ev[i], "failed_named") == 0;
        EXPECT_MSG(strcmp(ev[i], "failed_bad") != 0, "rank %d: not MOE_EUNAVAILABLE", rank[i]);
        EXPECT_MSG(val[i] - killed < 2.0, "rank %d returned %.2f s after the kill", rank[i],
                   val[i] - killed);
        printf("  rank %d failed %.3f s after the kill (%s)\n", rank[i], val[i] - killed, ev[i]);
    }
    EXPECT_MSG(named > 0, "no survivor named the killed rank 3");
    for (int r = 0; r < 4; r++)
        if (write(s.go[r][1], "g", 1) < 0) perror("go");
    scenario_reap(&s, 20);
}

/* comm_check_peers, between operations: a live peer is never taken for a dead one; a
 * killed one is found without any operation, long before the timeout, and named. */
static int body_check_peers(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
    EXPECT(comm_barrier(c, 0, &all) == MOE_OK); /* the links have carried bytes */
    report(s, rank, "started", moe_clock_s());
    if (rank == 1) {
        wait_go(s, rank, 20); /* the parent kills it meanwhile */
        return 0;
    }
    moe_status r = MOE_OK;
    long looks = 0;
    double end = moe_clock_s() + 20;
    while ((r = comm_check_peers(c)) == MOE_OK && moe_clock_s() < end) {
        looks++;
        usleep(500);
    }
    report(s, rank, r == MOE_EUNAVAILABLE && strstr(moe_errmsg(), "rank 1") ? "found" : "missed",
           moe_clock_s());
    report(s, rank, "looks", (double)looks);
    /* the comm is broken: an operation fails at once */
    EXPECT(comm_barrier(c, 1, &all) == MOE_EUNAVAILABLE);
    return 0;
}

static void test_check_peers(void) {
    printf("comm_check_peers finds a killed rank between operations\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 10); // the timeout is long: only the check can explain a find
    scenario_fork(&s, body_check_peers);
    int rank[8];
    char ev[8][32];
    double val[8];
    int got = read_reports(&s, 2, 20, rank, ev, val);
    EXPECT_MSG(got == 2, "only %d ranks started", got);
    usleep(100000); // rank 0 looks at a live peer a while first
    double killed = moe_clock_s();
    kill(s.pid[1], SIGKILL);
    got = read_reports(&s, 2, 20, rank, ev, val);
    EXPECT_MSG(got == 2, "only %d reports after the kill", got);
    for (int i = 0; i < got; i++) {
        if (strcmp(ev[i], "looks") == 0) {
            EXPECT_MSG(val[i] > 10, "rank 0 looked only %.0f times before the kill", val[i]);
            continue;
        }
        EXPECT_MSG(strcmp(ev[i], "found") == 0, "rank 0 did not find the killed rank 1: %s",
                   ev[i]);
        EXPECT_MSG(val[i] - killed < 2.0, "rank 0 found it %.2f s after the kill",
                   val[i] - killed);
        printf("  rank 0 found it %.3f s after the kill\n", val[i] - killed);
    }
    if (write(s.go[0][1], "g", 1) < 0) perror("go");
    scenario_reap(&s, 20);
}

/* The peer watcher: while both ranks move data (over every channel, large and small, shared
 * memory or tcp) it never takes a live peer for a dead one nor disturbs a byte; once rank 1
 * is killed, rank 0, doing nothing with its comm, is told at once and the dead rank named
 * (its closed connection, or over shared memory its exiting process); its operations then
 * find the death on their own. */
static int body_watch(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    struct comm_group all = {.n = 2, .me = rank, .ranks = {0, 1}};
    long wrong = 0;
    for (int i = 0; i < 20; i++)
        wrong += td_check_allreduce(c, i % COMM_CHANNELS, &all, i % 2 ? 3 : 1 << 20, 30 + i);
    EXPECT_MSG(wrong == 0, "rank %d: %ld wrong values with the watcher on", rank, wrong);
    report(s, rank, "started", moe_clock_s());
    wait_go(s, rank, 20); /* rank 1 is killed meanwhile; rank 0 waits, its comm idle */
    if (rank != 0) return 0;
    /* the watcher may have seen the process exiting before its sockets closed: the data
     * plane's own check meets the closed connection once it is there */
    moe_status r;
    double end = moe_clock_s() + 10;
    while ((r = comm_check_peers(c)) == MOE_OK && moe_clock_s() < end) usleep(1000);
    EXPECT(r == MOE_EUNAVAILABLE);
    return 0;
}

static void test_watch(void) {
    printf("the peer watcher reports a killed rank at once, with no operation pending\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 10); // the timeout is long: only the watcher can explain a report
    s.watch = 1;
    scenario_fork(&s, body_watch);
    int rank[8];
    char ev[8][32];
    double val[8];
    int got = read_reports(&s, 2, 20, rank, ev, val);
    EXPECT_MSG(got == 2, "only %d ranks started", got);
    for (int i = 0; i < got; i++)
        EXPECT_MSG(strcmp(ev[i], "started") == 0, "rank %d: %s before the kill", rank[i], ev[i]);
    double killed = moe_clock_s();
    kill(s.pid[1], SIGKILL);
    got = read_reports(&s, 2, 20, rank, ev, val);
    EXPECT_MSG(got == 2, "only %d reports after the kill", got);
    for (int i = 0; i < got; i++) {
        EXPECT_MSG(rank[i] == 0 && strcmp(ev[i], "lost_bad") != 0, "rank %d: %s", rank[i], ev[i]);
        if (strcmp(ev[i], "lost") != 0) continue;
        EXPECT_MSG(val[i] >= killed && val[i] - killed < 1.0, "rank 0 was told %.3f s after "
                   "the kill", val[i] - killed);
        printf("  rank 0 was told %.3f s after the kill\n", val[i] - killed);
    }
    if (write(s.go[0][1], "g", 1) < 0) perror("go");
    scenario_reap(&s, 20);
}

static void test_stop(void) {
    printf("SIGSTOP a rank\n");
    struct scenario s;
    double timeout = 1.0;
    scenario_init(&s, 2, 2, timeout);
    scenario_fork(&s, body_kill); // the same loop; rank 3 is stopped instead of killed
    int rank[16];
    char ev[16][32];
    double val[16];
    int got = read_reports(&s, 4, 20, rank, ev, val);
    EXPECT_MSG(got == 4, "only %d ranks started", got);
    usleep(150000);
    double stopped = moe_clock_s();
    kill(s.pid[3], SIGSTOP);
    got = read_reports(&s, 6, 20, rank, ev, val);
    EXPECT_MSG(got == 6, "only %d reports after the stop", got);
    int named = 0;
    for (int i = 0; i < got; i++) {
        if (strcmp(ev[i], "call_s") == 0) continue;
        named += strcmp(ev[i], "failed_named") == 0;
        EXPECT_MSG(strcmp(ev[i], "failed_bad") != 0, "rank %d: not MOE_EUNAVAILABLE", rank[i]);
        double after = val[i] - stopped;
        EXPECT_MSG(after < timeout + 1.5 && after >= timeout * 0.5,
                   "rank %d failed %.2f s after the stop (timeout %.1f s)", rank[i], after,
                   timeout);
        printf("  rank %d failed %.3f s after the stop (%s)\n", rank[i], after, ev[i]);
    }
    EXPECT_MSG(named > 0, "no survivor named the stopped rank 3");
    kill(s.pid[3], SIGKILL);
    for (int r = 0; r < 4; r++)
        if (write(s.go[r][1], "g", 1) < 0) perror("go");
    scenario_reap(&s, 20);
}

struct abort_arg {
    struct comm *c;
    double delay;
};
static void *abort_later(void *p) {
    struct abort_arg *a = p;
    usleep((useconds_t)(a->delay * 1e6));
    comm_abort(a->c);
    return NULL;
}

static int body_abort(struct scenario *s, int rank, struct comm *c, moe_status st) {
    EXPECT_MSG(st == MOE_OK, "rank %d open: %s", rank, moe_errmsg());
    if (st != MOE_OK) return 1;
    if (rank == 1) { // never sends: only the abort can end rank 0's wait
        wait_go(s, rank, 20);
        return 0;
    }
    struct abort_arg a = {.c = c, .delay = 0.3};
    pthread_t t;
    pthread_create(&t, NULL, abort_later, &a);
    char buf[16];
    double t0 = moe_clock_s();
    EXPECT_FAIL(comm_recv(c, 0, 1, buf, sizeof buf), MOE_EINTERNAL, "aborted");
    double dt = moe_clock_s() - t0;
    EXPECT_MSG(dt > 0.25 && dt < 1.0, "abort took %.2f s to wake the recv", dt);
    pthread_join(t, NULL);
    t0 = moe_clock_s();
    EXPECT_FAIL(comm_send(c, 1, 1, buf, 4), MOE_EINTERNAL, "aborted");
    EXPECT_MSG(moe_clock_s() - t0 < 1.0, "a send on an aborted comm took %.2f s (timeout 30 s)",
               moe_clock_s() - t0);
    if (write(s->go[1][1], "g", 1) < 0) perror("go");
    return 0;
}

static void test_abort(void) {
    printf("comm_abort from another thread\n");
    struct scenario s;
    scenario_init(&s, 1, 2, 30);
    scenario_fork(&s, body_abort);
    scenario_reap(&s, 20);
}

/* A stop or a fence while the comm is still forming: the open gives up at once instead of
 * waiting out its deadline (5 x timeout_s), though the peer never answers. */
struct cancel_arg {
    atomic_int flag;
    double delay;
};
static void *cancel_later(void *p) {
    struct cancel_arg *a = p;
    usleep((useconds_t)(a->delay * 1e6));
    atomic_store(&a->flag, 1);
    return NULL;
}

/* In a child: the data plane's tunables are read once per process, and the other scenarios
 * set them (MOE_COMM_SHM=0) for their own children. */
static void test_cancel_open(void) {
    printf("an open called off while a peer stays silent\n");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        failures = 0;
        struct scenario s;
        scenario_init(&s, 1, 2, 30); // rank 1 listens but never takes a connection
        struct cancel_arg a = {.delay = 0.3};
        atomic_init(&a.flag, 0);
        struct comm_config cfg = config_of(&s, 0, COMM_TCP);
        cfg.cancel = &a.flag;
        pthread_t t;
        pthread_create(&t, NULL, cancel_later, &a);
        struct comm *c = NULL;
        double t0 = moe_clock_s();
        EXPECT_FAIL(comm_open(&c, &cfg, s.l[0]), MOE_EINTERNAL, "called off");
        double dt = moe_clock_s() - t0;
        EXPECT_MSG(dt > 0.25 && dt < 2.0, "the open gave up after %.2f s (deadline 150 s)", dt);
        pthread_join(t, NULL);
        EXPECT_MSG(c == NULL, "a cancelled open returned a comm");
        fflush(stdout);
        _exit(failures > 100 ? 100 : failures);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the cancel scenario failed");
}

static int selected(int argc, char **argv, const char *name) {
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

/* Arguments, if any, name the scenarios to run (ops, encrypt, mismatch, strangers, slowloris,
 * tamper, watch, kill, check_peers, stop, abort, cancel). */
int main(int argc, char **argv) {
    moe_log_init("test");
    signal(SIGPIPE, SIG_DFL); // the data plane must not need SIGPIPE ignored
    double t0 = moe_clock_s();
    if (selected(argc, argv, "ops")) {
        test_ops("shared memory between local peers, large payloads by cma");
        setenv("MOE_COMM_CMA_MIN", "1", 1); // every payload by descriptor, mismatches too
        test_ops("shared memory, every payload by cma");
        unsetenv("MOE_COMM_CMA_MIN");
        setenv("MOE_COMM_CMA", "0", 1); // every byte through the rings
        setenv("MOE_COMM_SHM_RING_MB", "1", 1); // small rings: many wrap-arounds
        test_ops("shared memory rings only");
        unsetenv("MOE_COMM_CMA");
        unsetenv("MOE_COMM_SHM_RING_MB");
        setenv("MOE_COMM_SHM", "0", 1);
        test_ops("tcp only");
        unsetenv("MOE_COMM_SHM");
    }
    if (selected(argc, argv, "ops") || selected(argc, argv, "encrypt")) {
        setenv("MOE_COMM_ENCRYPT", "1", 1);
        test_ops("encryption asked: shared memory stays as is");
        setenv("MOE_COMM_SHM", "0", 1);
        test_ops("tcp only, encrypted");
        unsetenv("MOE_COMM_SHM");
        unsetenv("MOE_COMM_ENCRYPT");
    }
    if (selected(argc, argv, "cancel")) test_cancel_open();
    if (selected(argc, argv, "mismatch")) {
        test_mismatch("another data-plane key", 0);
        test_mismatch("stale connector epoch", 1);
        test_mismatch("stale acceptor epoch", 2);
        test_mismatch("another job", 3);
        test_lagging_acceptor();
    }
    if (selected(argc, argv, "strangers")) {
        test_strangers();
        test_after_failed_open();
    }
    if (selected(argc, argv, "slowloris")) test_slowloris();
    if (selected(argc, argv, "tamper")) test_tamper();
    if (selected(argc, argv, "watch")) {
        test_watch();
        setenv("MOE_COMM_SHM", "0", 1);
        test_watch();
        unsetenv("MOE_COMM_SHM");
    }
    if (selected(argc, argv, "kill")) {
        test_kill();
        setenv("MOE_COMM_SHM", "0", 1);
        test_kill();
        unsetenv("MOE_COMM_SHM");
    }
    if (selected(argc, argv, "check_peers")) {
        test_check_peers();
        setenv("MOE_COMM_SHM", "0", 1);
        test_check_peers();
        unsetenv("MOE_COMM_SHM");
    }
    if (selected(argc, argv, "stop")) test_stop();
    if (selected(argc, argv, "abort")) test_abort();
    printf("test_comm: %d failures in %.1f s\n", failures, moe_clock_s() - t0);
    return failures ? 1 : 0;
}
