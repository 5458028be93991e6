/*
 * bench_proc.h — the daemons a benchmark starts, and what it reads of them.
 *
 * Owns: a coordinator started in a temporary directory of its own (tokens written, address
 * file waited for), killed and restarted on the same port and store, stopped and its directory
 * removed; children that die with the benchmark (PR_SET_PDEATHSIG); a process's CPU time and
 * resident memory from /proc.
 * Never: asserts performance, or runs a daemon anywhere but 127.0.0.1.
 */
#ifndef MOE_BENCH_PROC_H
#define MOE_BENCH_PROC_H

#include <limits.h>
#include <sys/types.h>

#define BENCH_EXTRA_MAX 12 // flags a daemon may be given beside the harness's own

struct bench_daemon {
    pid_t pid;
    char dir[PATH_MAX];        // temporary: state, tokens, logs
    char bin[PATH_MAX];        // where the daemons are ($MOE_BUILD_DIR/bin, else beside us)
    char exe[PATH_MAX + 64];
    char log[PATH_MAX + 64];
    char addr[160];            // host:port it serves on
    int port;
    char client_token[64], cluster_token[64];
    char *extra[BENCH_EXTRA_MAX]; // more flags, given to every start
    int n_extra;
};

double bench_now(void);
/* text into a new 0600 file (0, or -1 with errno); 48 random hex digits into out (0, or -1
 * when /dev/urandom cannot be read). */
int bench_write_file(const char *path, const char *text);
int bench_random_token(char *out, size_t cap);

/* fork() whose child gets SIGTERM when this process dies: 0 in the child. */
pid_t bench_fork_child(void);
/* SIGTERM, then SIGKILL after 30 s; the exit status (-1 when killed). */
int bench_stop(pid_t pid);

/* The coordinator `name` (in the build's bin/) in a new temporary directory, on 127.0.0.1
 * with a free port, with n_extra (at most 8) more flags; returns once it wrote its address
 * file (0) or failed (-1, said). */
int bench_daemon_start(struct bench_daemon *d, const char *name, char *const *extra,
                       int n_extra);
/* Kills it with `sig`, then starts it again on the same port and directory; returns once it
 * serves again. */
int bench_daemon_restart(struct bench_daemon *d, int sig);
/* Stops it and removes its directory. */
void bench_daemon_stop(struct bench_daemon *d);

/* utime + stime of pid, in seconds (every thread that ever ran); NAN when unreadable. */
double bench_cpu_seconds(pid_t pid);
/* VmRSS of pid, in MiB; NAN when unreadable. */
double bench_rss_mib(pid_t pid);

#endif
