/*
 * cluster_dir.h — a local cluster's directory and its processes, for `moectl cluster`.
 *
 * Owns: the layout of a cluster directory, the shape recorded in it, starting a daemon (own
 * session, output to a log, pid file) or a pod of workers under one mpirun, recognising our
 * daemons among the host's processes, and the credentials and TLS material. A cluster
 * directory holds:
 *   client.token, cluster.token   credentials (0600), kept across restarts
 *   cluster.json                  the shape it was started with (the workers' data roots too)
 *                                 and the coordinator's address
 *   coordinator/                  the coordinator's RocksDB: jobs survive `cluster down`
 *   coordinator.{addr,pid,log}    where it listens ("host:port", written by the coordinator
 *                                 once it serves), its pid, its output
 *   coordinator.http              with --http: where its HTTP port listens ("host:port")
 *   worker-<i>.{pid,log}          worker i's pid and output; worker-<i>/ its scratch directory
 *   mpirun-<p>.{pid,log}          --backend mpi: the mpirun that launched pod p's workers
 *   tls/{cert,key}.pem            with --tls: a self-signed certificate for 127.0.0.1, which
 *                                 clients use as their CA
 * Shapes: --workers N spreads N workers round-robin over the pods (worker i in pod i % P);
 * --slots S gives each of the P pods S workers (worker p * S + s is slot s of pod p, started
 * with --pod p) and --spares N adds N more after them, spread round-robin over the pods.
 * With --backend mpi each pod's S workers are one `mpirun -np S` (MPI rank s = slot s = worker
 * p * S + s); spares are plain workers. A pod launched by mpirun lives and dies as a whole.
 * Never: decides what to start or stop (cluster.c does), or talks to the daemons.
 */
#ifndef MOECTL_CLUSTER_DIR_H
#define MOECTL_CLUSTER_DIR_H

#include "../common/status.h"

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

#define UP_TIMEOUT_S 30.0   // for the coordinator's address, then for every worker to register
#define DOWN_TIMEOUT_S 10.0 // SIGTERM, then SIGKILL whatever is left after this long
#define MAX_WORKERS 1024
#define PATH_CAP (PATH_MAX + 64)

/* What a cluster was started with: recorded in cluster.json so that a partial restart
 * brings back the same cluster whatever flags it is given. */
struct shape {
    int workers, pods, threads, tls;
    int slots, spares;        // --slots S (0: --workers N round-robin), --spares N
    int mpi;                  // --backend mpi: each pod's S workers are one mpirun job
    int port;                 // asked for (0: pick)
    long heartbeat_timeout_ms; // 0: the coordinator's default
    int http;                 // --http: the coordinator serves /metrics and the live page
    char address[256];        // where the coordinator listened last
    char data_roots[4096];    // the workers' --data-root directories, absolute: a knob list
                              // (common/knobs.h: NUL-separated, "" after the last); "" none yet
};

/* ---- files (paths are shorter than PATH_MAX, names short: these never truncate) ---- */
char *in_dir(char *out, const char *dir, const char *name);            // DIR/name
char *worker_file(char *out, const char *dir, int i, const char *suffix); // DIR/worker-<i>SUFFIX
char *mpirun_file(char *out, const char *dir, int pod, const char *suffix); // DIR/mpirun-<p>SUFFIX
/* The text of a small file (up to cap - 1 bytes), surrounding whitespace cut: 0, or -1 with
 * errno set when it cannot be read or holds no byte at all (ENODATA). */
int read_small_file(const char *path, char *out, size_t cap);
/* The same, cut at the end of its first line (address, pid and token files hold one). */
int read_first_line(const char *path, char *out, size_t cap);
pid_t read_pid(const char *path);                               // 0 when none
moe_status write_pid(const char *path, pid_t pid);
int worker_files(const char *dir); // workers with a pid file: one past the highest index
void rm_tree(const char *path);

/* ---- the recorded shape (cluster.json) ---- */
int read_shape(const char *dir, struct shape *sh); // 1 when a valid one was read
moe_status write_shape(const char *dir, const struct shape *sh);
int worker_pod(const struct shape *sh, int i);       // the pod of worker i
int worker_by_mpirun(const struct shape *sh, int i); // worker i is rank i % S of its pod's mpirun

/* ---- processes ---- */
/* Alive and one of ours (a moed daemon, or an mpirun of moed-worker); a zombie is gone once
 * every thread of it is (the last ones hold its files and locks). */
int daemon_alive(pid_t pid);
void reap(void); // reaps our exited children
pid_t parent_of(pid_t pid); // from /proc; 0 when unknown
/* argv[0] in its own session, stdin /dev/null, output appended to `log`; returns once it
 * exec'd (or failed to). Before the process has any thread. */
moe_status spawn(const char *const argv[], const char *log, pid_t *out);
void show_log_tail(const char *log, int lines); // on stderr, indented
moe_status find_daemon(const char *name, char *out); // beside moectl, or $MOED_BIN_DIR
moe_status find_mpirun(char *out);                   // on $PATH
/* Pod p's S workers as one `mpirun -np S` (worker_args: the worker's command line without
 * --dir, which each rank adds from its rank); its pid in DIR/mpirun-<p>.pid. */
moe_status spawn_mpi_pod(const char *dir, const char *mpirun, const struct shape *sh, int p,
                         const char *const *worker_args, pid_t *launcher);

/* ---- credentials ---- */
moe_status ensure_token(const char *path); // kept if it exists, else 32 random bytes as hex
moe_status ensure_tls(const char *dir);    // DIR/tls/{cert,key}.pem for 127.0.0.1

#endif
