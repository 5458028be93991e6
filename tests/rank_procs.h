/*
 * rank_procs.h — the ranks of a mesh as separate processes, for tests and benchmarks that run
 * the distributed step without daemons.
 *
 * Owns: starting n fresh processes (fork + exec of the calling program: a forked copy of a
 * process that already ran OpenMP would inherit a dead thread pool, and a worker daemon is its
 * own process anyway), playing the coordinator's part of handing every rank the others'
 * data-plane addresses, and collecting one fixed-size result from each.
 * Protocol with a rank: it prints its listener's address on a line of stdout, reads n address
 * lines from stdin, runs, and writes its result struct to stdout.
 * Never: interprets the results, or leaves a child unreaped.
 */
#ifndef MOE_TESTS_RANK_PROCS_H
#define MOE_TESTS_RANK_PROCS_H

#include "../worker/comm/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define RANK_PROCS_MAX 8

/* Rank side: announce l's address, read the n addresses (addrs keeps them, peers points in). */
static int rank_procs_exchange(struct comm_listener *l, int n, char addrs[][COMM_ADDR_MAX],
                               const char **peers) {
    printf("%s\n", comm_listener_address(l));
    fflush(stdout);
    for (int r = 0; r < n; r++) {
        if (!fgets(addrs[r], COMM_ADDR_MAX, stdin)) return -1;
        addrs[r][strcspn(addrs[r], "\n")] = 0;
        peers[r] = addrs[r];
    }
    return 0;
}

/* Rank side: the address table again, for a second epoch on the same listeners. */
static inline int rank_procs_read_table(int n, char addrs[][COMM_ADDR_MAX], const char **peers) {
    for (int r = 0; r < n; r++) {
        if (!fgets(addrs[r], COMM_ADDR_MAX, stdin)) return -1;
        addrs[r][strcspn(addrs[r], "\n")] = 0;
        peers[r] = addrs[r];
    }
    return 0;
}

/* A test's data-plane key: the seed's bytes, zero-padded (the ranks of one test share it). */
static inline const uint8_t *rank_procs_key(const char *seed) {
    static uint8_t key[COMM_KEY_BYTES];
    memset(key, 0, sizeof key);
    size_t n = strlen(seed);
    memcpy(key, seed, n < sizeof key ? n : sizeof key);
    return key;
}

/* Rank side, all of the above and the comm: a listener, the address exchange, comm_open
 * (tcp) as rank `rank` of a pods x slots mesh, with rank_procs_key(key_seed). *l and *c are
 * the caller's to close. */
static moe_status rank_procs_open_comm(int rank, int pods, int slots, uint64_t epoch,
                                       const char *job, const char *key_seed, double timeout_s,
                                       struct comm_listener **l, struct comm **c) {
    static char addrs[RANK_PROCS_MAX][COMM_ADDR_MAX];
    const char *peers[RANK_PROCS_MAX];
    int n = pods * slots;
    *c = NULL;
    CHECK(comm_listener_open(l, "127.0.0.1:0"));
    if (rank_procs_exchange(*l, n, addrs, peers) != 0)
        return moe_fail(MOE_EIO, "rank %d: no address table on stdin", rank);
    struct comm_config cc = {.backend = COMM_TCP, .rank = rank, .size = n, .pods = pods,
                             .slots = slots, .epoch = epoch, .job_id = job,
                             .key = rank_procs_key(key_seed), .peers = peers,
                             .timeout_s = timeout_s};
    return comm_open(c, &cc, *l);
}

/* Rank side: the result, last thing on stdout. */
static void rank_procs_reply(const void *result, size_t size) {
    fwrite(result, size, 1, stdout);
    fflush(stdout);
}

/* Parent side: runs `self` with args[r] (a NULL-terminated argv without argv[0]) for each of
 * the n ranks. results gets n * size bytes (a rank that died leaves its part zeroed, and
 * got[r] = 0); status[r] is its waitpid status. Returns 0, or -1 when it cannot start them. */
static int rank_procs_run(const char *self, int n, char *const *const *args, void *results,
                          size_t size, int *got, int *status) {
    pid_t pids[RANK_PROCS_MAX];
    FILE *from[RANK_PROCS_MAX], *to[RANK_PROCS_MAX];
    if (n > RANK_PROCS_MAX) return -1;
    for (int r = 0; r < n; r++) {
        int in[2], out[2];
        if (pipe(in) != 0) return -1;
        if (pipe(out) != 0) return close(in[0]), close(in[1]), -1;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(in[0], 0);
            dup2(out[1], 1);
            close(in[0]), close(in[1]), close(out[0]), close(out[1]);
            char *argv[32];
            int k = 0;
            argv[k++] = (char *)self;
            for (int i = 0; args[r][i] && k < 31; i++) argv[k++] = args[r][i];
            argv[k] = NULL;
            execv(self, argv);
            _exit(127);
        }
        close(in[0]);
        close(out[1]);
        pids[r] = pid;
        to[r] = fdopen(in[1], "w");
        from[r] = fdopen(out[0], "r");
    }
    char addrs[RANK_PROCS_MAX][COMM_ADDR_MAX];
    for (int r = 0; r < n; r++)
        if (!fgets(addrs[r], sizeof addrs[r], from[r])) snprintf(addrs[r], COMM_ADDR_MAX, "-\n");
    /* twice: a rank that forms a second epoch on the same listeners reads it again
     * (rank_procs_read_table); the others never read the second copy */
    for (int r = 0; r < n; r++) {
        for (int copy = 0; copy < 2; copy++)
            for (int q = 0; q < n; q++) fputs(addrs[q], to[r]);
        fclose(to[r]);
    }
    for (int r = 0; r < n; r++) {
        char *dst = (char *)results + (size_t)r * size;
        got[r] = fread(dst, size, 1, from[r]) == 1;
        if (!got[r]) memset(dst, 0, size);
        fclose(from[r]);
        waitpid(pids[r], &status[r], 0);
    }
    return 0;
}

#endif
