/*
 * cluster.c — `moectl cluster up | down | status`: a local moed cluster of real processes on
 * 127.0.0.1, the embedded default a user tries first and the tests run against.
 *
 * Owns: what each subcommand does: the shape the flags ask for against what runs already,
 * which daemons to start (cluster_dir.h says how) and waiting until every worker has
 * registered, stopping them in order, and the cluster status table.
 * `cluster up` on a directory where some of these processes died restarts only those, with
 * the recorded shape, and the coordinator on its recorded port so that live workers find it.
 * Where none runs, it starts the shape recorded last time, changed by the flags given.
 * cluster_restart (moectl.h) is that partial restart for `moectl chaos`, without the output.
 * Never: touches a job's state (the coordinator's) or talks to workers directly.
 */
#include "client.h"
#include "cluster_dir.h"
#include "moectl.h"

#include "../common/clock.h"
#include "../common/fileio.h"
#include "proto/moed.pb-c.h"
#include "../proto/methods.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- cluster up: the flags ---- */

static void cluster_usage(FILE *to, const char *cmd) {
    (void)cmd; // one text for up, down and status
    fprintf(to,
            "usage: moectl cluster up [--workers N | --slots S [--spares N]] [--pods P]\n"
            "                         [--backend tcp|mpi] [--threads N] [--port P]\n"
            "                         [--tls|--no-tls] [--http|--no-http]\n"
            "                         [--heartbeat-timeout-ms N] [--dir DIR]\n"
            "                         [--data-root DIR ...] [--json]\n"
            "       moectl cluster down [--dir DIR] [--purge]\n"
            "       moectl cluster status [--json]\n"
            "                         " CLIENT_OPTIONS_USAGE "\n"
            "DIR defaults to $MOED_CLUSTER_DIR, else $HOME/.moed/cluster.\n"
            "Jobs read data only beneath the workers' data roots: --data-root (repeatable), by\n"
            "default /usr/share and the current directory (not when it is / or holds DIR).\n"
            "--http: the coordinator also serves /metrics and a live page on a port of its own\n"
            "(its address in DIR/coordinator.http; docs/operations.md).\n");
}

enum { UP_WORKERS = 1, UP_PODS = 2, UP_THREADS = 4, UP_PORT = 8, UP_TLS = 16, UP_HEARTBEAT = 32,
       UP_SLOTS = 64, UP_SPARES = 128, UP_BACKEND = 256, UP_ROOTS = 512, UP_HTTP = 1024 };
enum { OPT_SLOTS = 0x200, OPT_SPARES, OPT_BACKEND, OPT_DATA_ROOT, OPT_HTTP, OPT_NO_HTTP };

/* What the flags of `cluster up` ask for; `given` says which were given. */
struct up_flags {
    struct shape want;
    int given;
    const char *dir_flag;
    int json;
};

/* Appends `dir` to a shape's root list (common/knobs.h's list form); -1 when full. */
static int roots_add(struct shape *sh, const char *dir) {
    size_t used = 0, len = strlen(dir);
    while (sh->data_roots[used]) used += strlen(sh->data_roots + used) + 1;
    if (used + len + 2 > sizeof sh->data_roots) return -1;
    memcpy(sh->data_roots + used, dir, len + 1);
    sh->data_roots[used + len + 1] = 0;
    return 0;
}

/* --data-root DIR: an existing directory, recorded absolute and canonical. */
static int take_data_root(struct up_flags *f, const char *arg) {
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(arg, real) || stat(real, &st) != 0)
        return moectl_fail(EXIT_BAD_INPUT, "--data-root %s: %s", arg, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return moectl_fail(EXIT_BAD_INPUT, "--data-root %s: not a directory", arg);
    if (roots_add(&f->want, real) != 0)
        return moectl_fail(EXIT_BAD_INPUT, "--data-root: more directories than fit in %zu bytes",
                           sizeof f->want.data_roots);
    f->given |= UP_ROOTS;
    return EXIT_OK;
}

/* An integer flag of `cluster up` into its member of the shape, and its bit into `given`. */
static int take_int(struct up_flags *f, const char *arg, const char *flag, long lo, long hi,
                    int bit, int *out) {
    long long v;
    if (moectl_parse_int(arg, flag, lo, hi, &v)) return EXIT_BAD_INPUT;
    *out = (int)v;
    f->given |= bit;
    return EXIT_OK;
}

static int take_up_option(void *ctx, int c, const char *arg) {
    struct up_flags *f = ctx;
    struct shape *w = &f->want;
    long long v;
    switch (c) {
    case 'w': return take_int(f, arg, "--workers", 1, MAX_WORKERS, UP_WORKERS, &w->workers);
    case 'p': return take_int(f, arg, "--pods", 1, MAX_WORKERS, UP_PODS, &w->pods);
    case 't': return take_int(f, arg, "--threads", 1, 4096, UP_THREADS, &w->threads);
    case 'P': return take_int(f, arg, "--port", 0, 65535, UP_PORT, &w->port);
    case OPT_SLOTS: return take_int(f, arg, "--slots", 1, MAX_WORKERS, UP_SLOTS, &w->slots);
    case OPT_SPARES: return take_int(f, arg, "--spares", 0, MAX_WORKERS, UP_SPARES, &w->spares);
    case 'H':
        if (moectl_parse_int(arg, "--heartbeat-timeout-ms", 1, 86400000, &v)) return EXIT_BAD_INPUT;
        w->heartbeat_timeout_ms = (long)v, f->given |= UP_HEARTBEAT;
        return EXIT_OK;
    case OPT_BACKEND:
        if (strcmp(arg, "mpi") != 0 && strcmp(arg, "tcp") != 0)
            return moectl_fail(EXIT_BAD_INPUT, "--backend: tcp or mpi, not '%s'", arg);
        w->mpi = strcmp(arg, "mpi") == 0, f->given |= UP_BACKEND;
        return EXIT_OK;
    case 'T': w->tls = 1, f->given |= UP_TLS; return EXIT_OK;
    case 'N': w->tls = 0, f->given |= UP_TLS; return EXIT_OK;
    case OPT_HTTP: w->http = 1, f->given |= UP_HTTP; return EXIT_OK;
    case OPT_NO_HTTP: w->http = 0, f->given |= UP_HTTP; return EXIT_OK;
    case 'd': f->dir_flag = arg; return EXIT_OK;
    case OPT_DATA_ROOT: return take_data_root(f, arg);
    case 'j': f->json = 1; return EXIT_OK;
    default: return -1;
    }
}

/* The flags that make no shape together. */
static int check_up_flags(const struct up_flags *f) {
    if ((f->given & UP_WORKERS) && (f->given & (UP_SLOTS | UP_SPARES)))
        return moectl_fail(EXIT_BAD_INPUT, "--workers and --slots/--spares: give one shape "
                           "(--slots S makes pods x S workers, plus --spares)");
    if ((f->given & UP_SPARES) && !(f->given & UP_SLOTS))
        return moectl_fail(EXIT_BAD_INPUT, "--spares needs --slots");
    if ((f->given & UP_BACKEND) && f->want.mpi && !(f->given & UP_SLOTS))
        return moectl_fail(EXIT_BAD_INPUT, "--backend mpi needs --slots S: each pod's S workers "
                           "are one mpirun job");
    return EXIT_OK;
}

enum up_output { UP_TEXT, UP_JSON, UP_QUIET };
static int bring_up(const char *dir_flag, const struct shape *want, int given,
                    enum up_output output, int restart_only);

static int cluster_up(int argc, char **argv) {
    static const struct option opts[] = {{"workers", required_argument, 0, 'w'},
                                         {"pods", required_argument, 0, 'p'},
                                         {"threads", required_argument, 0, 't'},
                                         {"port", required_argument, 0, 'P'},
                                         {"tls", no_argument, 0, 'T'},
                                         {"no-tls", no_argument, 0, 'N'},
                                         {"http", no_argument, 0, OPT_HTTP},
                                         {"no-http", no_argument, 0, OPT_NO_HTTP},
                                         {"heartbeat-timeout-ms", required_argument, 0, 'H'},
                                         {"slots", required_argument, 0, OPT_SLOTS},
                                         {"spares", required_argument, 0, OPT_SPARES},
                                         {"backend", required_argument, 0, OPT_BACKEND},
                                         {"data-root", required_argument, 0, OPT_DATA_ROOT},
                                         {"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct up_flags f = {0};
    const struct command_line cmd = {opts, "w:p:t:P:Td:jh", cluster_usage, take_up_option, &f, 0};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code) || (code = check_up_flags(&f))) return code;
    return bring_up(f.dir_flag, &f.want, f.given, f.json ? UP_JSON : UP_TEXT, 0);
}

/* ---- cluster up: what runs, what to start ---- */

static int cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The port of "host:port", or -1. */
static int port_of(const char *address) {
    const char *colon = strrchr(address, ':');
    if (!colon) return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    return *end == 0 && p > 0 && p < 65536 ? (int)p : -1;
}

/* What bring_up learns and decides on its way, step by step. */
struct up {
    char dir[PATH_MAX];
    char coord_exe[PATH_CAP], worker_exe[PATH_CAP], mpirun[PATH_CAP];
    char client_token[PATH_CAP], cluster_token[PATH_CAP], cert[PATH_CAP], key[PATH_CAP];
    struct shape old; // recorded last time, when have_old
    int have_old;
    struct shape sh;  // the cluster this call brings up
    pid_t coord;      // the coordinator (0: none runs)
    int coord_started;
    int n_files;      // workers with a pid file
    int n_alive;      // of them, alive
    pid_t *pids;      // [MAX_WORKERS] per worker (0: not running)
    pid_t *launchers; // [MAX_WORKERS] per pod: its mpirun, if any
    int *started;     // [MAX_WORKERS] per worker: started by this call
    char address[256]; // where the coordinator listens
};

/* The directory (absolute, created) and the daemons' executables. */
static int up_dir(struct up *u, const char *dir_flag) {
    if (client_cluster_dir(dir_flag, u->dir, sizeof u->dir) != MOE_OK ||
        find_daemon("moed-coordinator", u->coord_exe) != MOE_OK ||
        find_daemon("moed-worker", u->worker_exe) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (u->dir[0] != '/') { // the daemons and the hints we print need it absolute
        char cwd[PATH_MAX], abs[PATH_CAP];
        if (!getcwd(cwd, sizeof cwd))
            return moectl_fail(EXIT_RUN_FAILED, "getcwd: %s", strerror(errno));
        int n = snprintf(abs, sizeof abs, "%s/%s", cwd, u->dir);
        if (n < 0 || (size_t)n >= sizeof u->dir)
            return moectl_fail(EXIT_BAD_INPUT, "%s: path too long", abs);
        memcpy(u->dir, abs, (size_t)n + 1);
    }
    if (moe_mkdir_p(u->dir, 0700) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    return EXIT_OK;
}

/* What runs already: the coordinator, the workers of the pid files. A pod that mpirun
 * launched lives and dies with its mpirun: ranks it left behind cannot form an MPI job
 * again, so they go, and the pod starts over. */
static void survey(struct up *u) {
    char path[PATH_CAP];
    const char *dir = u->dir;
    u->have_old = read_shape(dir, &u->old);
    u->coord = read_pid(in_dir(path, dir, "coordinator.pid"));
    if (!daemon_alive(u->coord)) u->coord = 0;
    u->n_files = worker_files(dir);
    for (int i = 0; i < u->n_files; i++) {
        u->pids[i] = read_pid(worker_file(path, dir, i, ".pid"));
        if (!daemon_alive(u->pids[i])) u->pids[i] = 0;
        else u->n_alive++;
    }
    const struct shape *old = &u->old;
    for (int p = 0; u->have_old && old->mpi && old->slots > 0 && p < old->pods; p++) {
        int first = p * old->slots, end = (p + 1) * old->slots;
        u->launchers[p] = read_pid(mpirun_file(path, dir, p, ".pid"));
        int whole = daemon_alive(u->launchers[p]);
        for (int i = first; i < end; i++) whole &= u->pids[i] != 0;
        if (whole) continue;
        if (daemon_alive(u->launchers[p])) kill(u->launchers[p], SIGKILL);
        u->launchers[p] = 0;
        for (int i = first; i < end; i++)
            if (u->pids[i]) {
                kill(u->pids[i], SIGKILL);
                u->pids[i] = 0;
                u->n_alive--;
            }
    }
}

/* The first flag given that differs from the running shape, or NULL. */
static const char *shape_conflict(const struct shape *want, int given, const struct shape *sh) {
    if ((given & UP_WORKERS) && want->workers != sh->workers) return "--workers";
    if ((given & UP_PODS) && want->pods != sh->pods) return "--pods";
    if ((given & UP_THREADS) && want->threads != sh->threads) return "--threads";
    if ((given & UP_SLOTS) && want->slots != sh->slots) return "--slots";
    if ((given & UP_SPARES) && want->spares != sh->spares) return "--spares";
    if ((given & UP_BACKEND) && want->mpi != sh->mpi) return "--backend";
    if ((given & UP_TLS) && want->tls != sh->tls) return "--tls";
    if ((given & UP_HTTP) && want->http != sh->http) return "--http";
    if ((given & UP_HEARTBEAT) && want->heartbeat_timeout_ms != sh->heartbeat_timeout_ms)
        return "--heartbeat-timeout-ms";
    if ((given & UP_ROOTS) && memcmp(want->data_roots, sh->data_roots, sizeof sh->data_roots))
        return "--data-root";
    return NULL;
}

/* Part of a cluster runs: the rest comes back in the recorded shape, which the flags may
 * only repeat. *whole: all of it runs, so there is nothing to start (an error, unless
 * restart_only). */
static int plan_restart(struct up *u, const struct shape *want, int given, int restart_only,
                        int *whole) {
    const char *dir = u->dir;
    if (!u->have_old)
        return moectl_fail(EXIT_BAD_INPUT, "moed processes are running from %s but its "
                           "cluster.json is missing; `moectl cluster down --dir %s` first",
                           dir, dir);
    struct shape *sh = &u->sh;
    *sh = u->old;
    *whole = u->coord != 0 && u->n_alive == sh->workers;
    for (int i = 0; i < sh->workers; i++) *whole &= u->pids[i] != 0;
    if (*whole && !restart_only)
        return moectl_fail(EXIT_BAD_INPUT, "a cluster is already running in %s (coordinator "
                           "pid %d at %s, %d workers); `moectl cluster down --dir %s` stops it",
                           dir, (int)u->coord, sh->address, sh->workers, dir);
    if (*whole) return EXIT_OK;
    const char *conflict = shape_conflict(want, given, sh);
    if (conflict)
        return moectl_fail(EXIT_BAD_INPUT, "%s: the cluster in %s is partly running with "
                           "another shape (--workers %d --pods %d --threads %d%s); `moectl "
                           "cluster down --dir %s` first to change it",
                           conflict, dir, sh->workers, sh->pods, sh->threads,
                           sh->tls ? " --tls" : "", dir);
    return EXIT_OK;
}

/* Nothing runs: the flags given, over the shape it last ran with, over defaults. Whatever
 * pid and address files remain are stale. */
static int plan_fresh(struct up *u, const struct shape *want, int given) {
    struct shape *sh = &u->sh;
    *sh = u->have_old ? u->old : (struct shape){.workers = 2, .pods = 1};
    if (given & UP_WORKERS) sh->workers = want->workers, sh->slots = 0, sh->spares = 0, sh->mpi = 0;
    if (given & UP_PODS) sh->pods = want->pods;
    if (given & UP_SLOTS) sh->slots = want->slots, sh->spares = 0, sh->mpi = 0;
    if (given & UP_SPARES) sh->spares = want->spares;
    if (given & UP_BACKEND) sh->mpi = want->mpi;
    if (sh->slots > 0) {
        if ((long)sh->pods * sh->slots + sh->spares > MAX_WORKERS)
            return moectl_fail(EXIT_BAD_INPUT, "--pods %d x --slots %d + --spares %d: more "
                               "than %d workers", sh->pods, sh->slots, sh->spares, MAX_WORKERS);
        sh->workers = sh->pods * sh->slots + sh->spares;
    }
    if (given & (UP_SLOTS | UP_SPARES | UP_PODS)) given |= UP_WORKERS; // threads follow
    if (given & UP_PORT) sh->port = want->port;
    if (given & UP_TLS) sh->tls = want->tls;
    if (given & UP_HTTP) sh->http = want->http;
    if (given & UP_HEARTBEAT) sh->heartbeat_timeout_ms = want->heartbeat_timeout_ms;
    if (given & UP_ROOTS) memcpy(sh->data_roots, want->data_roots, sizeof sh->data_roots);
    if (given & UP_THREADS) {
        sh->threads = want->threads;
    } else if (!u->have_old || (given & UP_WORKERS)) {
        sh->threads = cpu_count() / sh->workers; // the machine shared out
        if (sh->threads < 1) sh->threads = 1;
    }
    if (sh->pods > sh->workers)
        return moectl_fail(EXIT_BAD_INPUT, "--pods %d: more pods than workers (%d)", sh->pods,
                           sh->workers);
    char path[PATH_CAP];
    for (int i = 0; i < u->n_files; i++) unlink(worker_file(path, u->dir, i, ".pid"));
    unlink(in_dir(path, u->dir, "coordinator.pid"));
    unlink(in_dir(path, u->dir, "coordinator.addr"));
    unlink(in_dir(path, u->dir, "coordinator.http"));
    if (!sh->tls) rm_tree(in_dir(path, u->dir, "tls")); // clients would take its cert as a CA
    return EXIT_OK;
}

/* Does the directory `root` (canonical) hold the cluster directory `dir`, or is it it? */
static int holds(const char *root, const char *dir) {
    char real[PATH_MAX];
    if (!realpath(dir, real)) snprintf(real, sizeof real, "%s", dir);
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/') return 1;
    return strncmp(real, root, n) == 0 && (real[n] == '/' || real[n] == 0);
}

/* The workers' data roots (docs/security-data-roots.md). Given ones must not hold the
 * cluster directory, whose tokens a job could otherwise read. None given or recorded: the
 * system's shared data (/usr/share: the demo's fortunes, the tests' licences) and the
 * directory `cluster up` runs in, where a user keeps the data of the specs they submit from
 * there (the client makes relative data paths absolute from its own current directory) —
 * unless that is / or holds the cluster directory. */
static int data_roots(struct up *u) {
    struct shape *sh = &u->sh;
    for (const char *r = sh->data_roots; *r; r += strlen(r) + 1)
        if (holds(r, u->dir))
            return moectl_fail(EXIT_BAD_INPUT, "--data-root %s holds the cluster directory %s "
                               "(its tokens): jobs must not read it; choose a directory beside "
                               "it", r, u->dir);
    if (sh->data_roots[0]) return EXIT_OK;
    struct stat st;
    if (stat("/usr/share", &st) == 0 && S_ISDIR(st.st_mode)) roots_add(sh, "/usr/share");
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd) || !strcmp(cwd, "/") || !strcmp(cwd, "/usr/share")) return EXIT_OK;
    if (holds(cwd, u->dir))
        fprintf(stderr, "moectl: cluster up: the current directory %s holds the cluster "
                "directory, so it is no data root (--data-root DIR adds one)\n", cwd);
    else if (roots_add(sh, cwd) != 0)
        return moectl_fail(EXIT_BAD_INPUT, "the current directory's path is too long");
    return EXIT_OK;
}

/* Before anything starts (a cluster that cannot be whole is none): mpirun when the shape
 * needs it, the data roots, the credentials, the TLS certificate. */
static int prepare(struct up *u) {
    if (u->sh.mpi && find_mpirun(u->mpirun) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    int code = data_roots(u);
    if (code) return code;
    in_dir(u->client_token, u->dir, "client.token");
    in_dir(u->cluster_token, u->dir, "cluster.token");
    in_dir(u->cert, u->dir, "tls/cert.pem");
    in_dir(u->key, u->dir, "tls/key.pem");
    if (ensure_token(u->client_token) != MOE_OK || ensure_token(u->cluster_token) != MOE_OK ||
        (u->sh.tls && ensure_tls(u->dir) != MOE_OK))
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    return EXIT_OK;
}

/* ---- cluster up: starting the daemons ---- */

/* Waits for the coordinator to write its address file, as long as it lives. */
static int wait_for_address(const char *dir, pid_t pid, char *address, size_t cap) {
    char path[PATH_CAP], log[PATH_CAP];
    in_dir(path, dir, "coordinator.addr");
    in_dir(log, dir, "coordinator.log");
    double deadline = moe_clock_s() + UP_TIMEOUT_S;
    for (;;) {
        if (read_first_line(path, address, cap) == 0 && port_of(address) > 0) return EXIT_OK;
        reap();
        if (!daemon_alive(pid)) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) exited while starting",
                        (int)pid);
            show_log_tail(log, 6);
            return EXIT_RUN_FAILED;
        }
        if (moe_clock_s() > deadline) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) did not write %s within %.0f s",
                        (int)pid, path, UP_TIMEOUT_S);
            show_log_tail(log, 6);
            return EXIT_RUN_FAILED;
        }
        moe_sleep_s(0.02);
    }
}

/* The port the coordinator's live workers know: the address file's, else cluster.json's;
 * -1 when neither holds one. */
static int recorded_port(const struct up *u) {
    char path[PATH_CAP], recorded[256] = "";
    if (read_first_line(in_dir(path, u->dir, "coordinator.addr"), recorded, sizeof recorded) != 0 ||
        port_of(recorded) < 0)
        snprintf(recorded, sizeof recorded, "%s", u->sh.address);
    return port_of(recorded);
}

/* The coordinator: on its old port while workers that know that port still live. When it
 * runs already, its address. */
static int start_coordinator(struct up *u) {
    const char *dir = u->dir;
    char path[PATH_CAP];
    if (u->coord) {
        if (read_first_line(in_dir(path, dir, "coordinator.addr"), u->address,
                            sizeof u->address) != 0 || port_of(u->address) < 0)
            snprintf(u->address, sizeof u->address, "%s", u->sh.address);
        return EXIT_OK;
    }
    int port = u->sh.port;
    if (u->n_alive && (port = recorded_port(u)) < 0)
        return moectl_fail(EXIT_RUN_FAILED, "cannot restart the coordinator where its "
                           "workers look for it: no address in %s/coordinator.addr or "
                           "cluster.json; `moectl cluster down --dir %s` and up again",
                           dir, dir);
    char listen[64], store[PATH_CAP], addr_file[PATH_CAP], log[PATH_CAP], hb[32];
    char http_file[PATH_CAP];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(hb, sizeof hb, "%ld", u->sh.heartbeat_timeout_ms);
    in_dir(store, dir, "coordinator");
    in_dir(addr_file, dir, "coordinator.addr");
    in_dir(log, dir, "coordinator.log");
    in_dir(http_file, dir, "coordinator.http");
    unlink(addr_file);
    unlink(http_file);
    const char *args[32];
    int n = 0;
    args[n++] = u->coord_exe;
    args[n++] = "--listen", args[n++] = listen;
    args[n++] = "--dir", args[n++] = store;
    args[n++] = "--client-token-file", args[n++] = u->client_token;
    args[n++] = "--cluster-token-file", args[n++] = u->cluster_token;
    args[n++] = "--addr-file", args[n++] = addr_file;
    if (u->sh.tls) {
        args[n++] = "--tls-cert", args[n++] = u->cert, args[n++] = "--tls-key", args[n++] = u->key;
        /* the workers serve the same 127.0.0.1 certificate: the coordinator verifies it */
        args[n++] = "--worker-tls-ca", args[n++] = u->cert;
    }
    if (u->sh.heartbeat_timeout_ms) args[n++] = "--heartbeat-timeout-ms", args[n++] = hb;
    if (u->sh.http) // a free port: the address file says which (written before coordinator.addr)
        args[n++] = "--http-listen", args[n++] = "127.0.0.1:0", args[n++] = "--http-addr-file",
        args[n++] = http_file;
    args[n] = NULL;
    if (spawn(args, log, &u->coord) != MOE_OK ||
        write_pid(in_dir(path, dir, "coordinator.pid"), u->coord) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    u->coord_started = 1;
    return wait_for_address(dir, u->coord, u->address, sizeof u->address);
}

/* The strings a worker's command line points into (a --data-root takes two: the recorded
 * list holds at most this many). */
#define MAX_ARG_ROOTS (sizeof ((struct shape *)0)->data_roots / 2)
struct worker_argv {
    const char *args[32 + 2 * MAX_ARG_ROOTS];
    char pod[16], threads[16];
};

/* A worker's command line, without --dir (an mpirun rank adds its own). Returns its length. */
static int worker_command(const struct up *u, int pod, struct worker_argv *w) {
    snprintf(w->pod, sizeof w->pod, "%d", pod);
    snprintf(w->threads, sizeof w->threads, "%d", u->sh.threads);
    const char **args = w->args;
    int n = 0;
    args[n++] = u->worker_exe;
    args[n++] = "--coordinator", args[n++] = u->address;
    args[n++] = "--cluster-token-file", args[n++] = u->cluster_token;
    args[n++] = "--listen", args[n++] = "127.0.0.1:0";
    args[n++] = "--pod", args[n++] = w->pod;
    args[n++] = "--threads", args[n++] = w->threads;
    if (u->sh.tls) {
        args[n++] = "--tls-ca", args[n++] = u->cert;
        args[n++] = "--tls-cert", args[n++] = u->cert, args[n++] = "--tls-key", args[n++] = u->key;
    }
    for (const char *r = u->sh.data_roots; *r; r += strlen(r) + 1)
        args[n++] = "--data-root", args[n++] = r;
    args[n] = NULL;
    return n;
}

/* The workers that are missing, each in its pod (worker_pod); a pod of mpirun-launched
 * workers as one mpirun. */
static int start_workers(struct up *u) {
    const struct shape *sh = &u->sh;
    for (int i = 0; i < sh->workers; i++) {
        if (u->pids[i]) continue;
        char scratch[PATH_CAP], log[PATH_CAP], path[PATH_CAP];
        int p = worker_pod(sh, i);
        if (moe_mkdir_p(worker_file(scratch, u->dir, i, ""), 0700) != MOE_OK)
            return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        struct worker_argv w;
        int n = worker_command(u, p, &w);
        u->started[i] = 1;
        if (worker_by_mpirun(sh, i)) {
            if (u->launchers[p]) continue; // this pod's mpirun was started for an earlier rank
            if (spawn_mpi_pod(u->dir, u->mpirun, sh, p, w.args, &u->launchers[p]) != MOE_OK)
                return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            continue;
        }
        w.args[n++] = "--dir", w.args[n++] = scratch;
        w.args[n] = NULL;
        if (spawn(w.args, worker_file(log, u->dir, i, ".log"), &u->pids[i]) != MOE_OK ||
            write_pid(worker_file(path, u->dir, i, ".pid"), u->pids[i]) != MOE_OK)
            return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    }
    return EXIT_OK;
}

/* ---- cluster up: waiting until it serves ---- */

/* Is registered worker `w` worker i of the shape? By pid when we know it (we started it),
 * else (a rank mpirun started) by its pod, MPI rank and launcher. */
static int is_worker(const Moed__V1__WorkerInfo *w, const struct up *u, int i) {
    const struct shape *sh = &u->sh;
    if (u->pids[i]) return w->pid == u->pids[i];
    if (!worker_by_mpirun(sh, i)) return 0;
    int pod = worker_pod(sh, i);
    return w->pod == pod && w->mpi_size == sh->slots && w->mpi_rank == i % sh->slots &&
           u->launchers[pod] && parent_of(w->pid) == u->launchers[pod];
}

/* How many of the workers waited for (only: NULL for all) the coordinator counts alive.
 * The pids of workers that an mpirun started are learnt here, and written to their pid
 * files. */
static int count_registered(struct up *u, const Moed__V1__ClusterStatus *cs, const int *only) {
    int alive = 0;
    char path[PATH_CAP];
    for (int i = 0; i < u->sh.workers; i++)
        for (size_t k = 0; (!only || only[i]) && k < cs->n_workers; k++) {
            const Moed__V1__WorkerInfo *w = cs->workers[k];
            int up = w->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                     w->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
            if (up && is_worker(w, u, i)) {
                if (!u->pids[i]) {
                    u->pids[i] = (pid_t)w->pid;
                    write_pid(worker_file(path, u->dir, i, ".pid"), u->pids[i]);
                }
                alive++;
                break;
            }
        }
    return alive;
}

/* EXIT_OK while every process waited for lives; else says which died, with its log. */
static int check_alive(const struct up *u, const int *only) {
    const struct shape *sh = &u->sh;
    char log[PATH_CAP];
    reap();
    if (!daemon_alive(u->coord)) {
        moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) exited", (int)u->coord);
        show_log_tail(in_dir(log, u->dir, "coordinator.log"), 6);
        return EXIT_RUN_FAILED;
    }
    for (int i = 0; i < sh->workers; i++) {
        if (only && !only[i]) continue;
        int by_mpirun = !u->pids[i] && worker_by_mpirun(sh, i);
        pid_t watch = by_mpirun ? u->launchers[worker_pod(sh, i)] : u->pids[i];
        if (daemon_alive(watch)) continue;
        if (by_mpirun) {
            moectl_fail(EXIT_RUN_FAILED, "the mpirun of pod %d (pid %d) exited while its "
                        "workers started", worker_pod(sh, i), (int)watch);
            show_log_tail(mpirun_file(log, u->dir, worker_pod(sh, i), ".log"), 6);
        } else {
            moectl_fail(EXIT_RUN_FAILED, "worker %d (pid %d) exited while starting", i,
                        (int)u->pids[i]);
        }
        show_log_tail(worker_file(log, u->dir, i, ".log"), 6);
        return EXIT_RUN_FAILED;
    }
    return EXIT_OK;
}

/* Polls GetCluster until every worker waited for (only: NULL for all) is registered and
 * alive. */
static int wait_for_workers(struct up *u, struct client *c, const int *only) {
    int want = 0, alive = 0;
    for (int i = 0; i < u->sh.workers; i++) want += !only || only[i];
    double deadline = moe_clock_s() + UP_TIMEOUT_S;
    char last_error[600] = "";
    for (;;) {
        struct rpc_result res;
        Moed__V1__ClusterStatus *cs = client_get_cluster(c, 5.0, &res);
        if (cs) {
            alive = count_registered(u, cs, only);
            protobuf_c_message_free_unpacked(&cs->base, NULL);
            if (alive == want) return EXIT_OK;
        } else if (res.code == GRPC_STATUS_UNAUTHENTICATED ||
                   res.code == GRPC_STATUS_PERMISSION_DENIED) {
            return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
        } else {
            snprintf(last_error, sizeof last_error, "%s", moe_errmsg());
        }
        int code = check_alive(u, only);
        if (code) return code;
        if (moe_clock_s() > deadline)
            return moectl_fail(EXIT_RUN_FAILED,
                               "only %d of %d workers registered with the coordinator within "
                               "%.0f s%s%s; logs are in %s (`moectl cluster down --dir %s` stops "
                               "what runs)", alive, want, UP_TIMEOUT_S, last_error[0] ? ": " : "",
                               last_error, u->dir, u->dir);
        moe_sleep_s(0.1);
    }
}

/* Ready when the coordinator counts every one of our workers alive (restart_only: every one
 * restarted here). */
static int wait_ready(struct up *u, int restart_only) {
    char token[256];
    if (rpc_read_token(u->client_token, token, sizeof token) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    struct client cl;
    int code = client_open_at(&cl, u->address, token, u->sh.tls ? u->cert : NULL);
    if (code) return code;
    code = wait_for_workers(u, &cl, restart_only ? u->started : NULL);
    client_close(&cl);
    return code;
}

/* ---- cluster up: what it says ---- */

/* The live page's address ("" without --http): the coordinator wrote it before serving. */
static const char *http_url(const struct up *u, char *out, size_t cap) {
    char path[PATH_CAP], addr[256];
    out[0] = 0;
    if (u->sh.http && read_first_line(in_dir(path, u->dir, "coordinator.http"), addr,
                                      sizeof addr) == 0)
        snprintf(out, cap, "%s://%s/", u->sh.tls ? "https" : "http", addr);
    return out;
}

static void print_up_json(const struct up *u) {
    const struct shape *sh = &u->sh;
    char log[PATH_CAP];
    cJSON *j = cJSON_CreateObject(), *ws = cJSON_CreateArray(), *co = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "dir", u->dir);
    cJSON_AddStringToObject(j, "address", u->address);
    cJSON_AddStringToObject(j, "client_token_file", u->client_token);
    if (sh->tls) cJSON_AddStringToObject(j, "tls_ca", u->cert);
    else cJSON_AddNullToObject(j, "tls_ca");
    char url[300];
    if (http_url(u, url, sizeof url)[0]) cJSON_AddStringToObject(j, "http_url", url);
    else cJSON_AddNullToObject(j, "http_url");
    cJSON_AddNumberToObject(co, "pid", u->coord);
    cJSON_AddStringToObject(co, "log", in_dir(log, u->dir, "coordinator.log"));
    cJSON_AddBoolToObject(co, "started", u->coord_started);
    cJSON_AddItemToObject(j, "coordinator", co);
    for (int i = 0; i < sh->workers; i++) {
        cJSON *w = cJSON_CreateObject();
        cJSON_AddNumberToObject(w, "index", i);
        cJSON_AddNumberToObject(w, "pod", worker_pod(sh, i));
        cJSON_AddNumberToObject(w, "pid", u->pids[i]);
        if (sh->slots > 0 && i < sh->pods * sh->slots)
            cJSON_AddNumberToObject(w, "slot", i % sh->slots);
        else if (sh->slots > 0)
            cJSON_AddBoolToObject(w, "spare", 1);
        if (worker_by_mpirun(sh, i))
            cJSON_AddNumberToObject(w, "mpirun_pid", u->launchers[worker_pod(sh, i)]);
        cJSON_AddStringToObject(w, "log", worker_file(log, u->dir, i, ".log"));
        cJSON_AddBoolToObject(w, "started", u->started[i]);
        cJSON_AddItemToArray(ws, w);
    }
    cJSON_AddItemToObject(j, "workers", ws);
    cJSON_AddNumberToObject(j, "pods", sh->pods);
    cJSON_AddNumberToObject(j, "slots", sh->slots);
    cJSON_AddNumberToObject(j, "spares", sh->spares);
    cJSON_AddStringToObject(j, "backend", sh->mpi ? "mpi" : "tcp");
    cJSON_AddNumberToObject(j, "threads_per_worker", sh->threads);
    cJSON *roots = cJSON_AddArrayToObject(j, "data_roots");
    for (const char *r = sh->data_roots; roots && *r; r += strlen(r) + 1)
        cJSON_AddItemToArray(roots, cJSON_CreateString(r));
    moectl_print_json(j);
}

static const char *plural(int n) { return n == 1 ? "" : "s"; }

static void print_up_text(const struct up *u) {
    const struct shape *sh = &u->sh;
    const char *dir = u->dir;
    char log[PATH_CAP];
    int n_started = 0;
    for (int i = 0; i < sh->workers; i++) n_started += u->started[i];
    const char *how = u->coord_started && n_started == sh->workers ? "started"
                      : u->coord_started || n_started             ? "restarted what had stopped"
                                                                  : "running";
    printf("moectl: cluster up (%s): coordinator at %s, %d worker%s in %d pod%s, %d thread%s "
           "each%s\n", how, u->address, sh->workers, plural(sh->workers), sh->pods,
           plural(sh->pods), sh->threads, plural(sh->threads), sh->tls ? ", TLS" : "");
    printf("  directory    %s (state, logs, pids; jobs survive `moectl cluster down`)\n", dir);
    printf("  coordinator  pid %-7d %s%s\n", (int)u->coord, in_dir(log, dir, "coordinator.log"),
           u->coord_started ? "" : " (was running)");
    if (sh->slots > 0)
        printf("  shape        %d pod%s x %d slot%s%s, %d spare%s%s\n", sh->pods, plural(sh->pods),
               sh->slots, plural(sh->slots), sh->mpi ? " (each pod one mpirun)" : "", sh->spares,
               plural(sh->spares), sh->spares ? " (round-robin over the pods)" : "");
    for (int i = 0; i < sh->workers; i++) {
        char role[96] = "";
        if (worker_by_mpirun(sh, i))
            snprintf(role, sizeof role, ", MPI rank %d of mpirun pid %d", i % sh->slots,
                     (int)u->launchers[worker_pod(sh, i)]);
        else if (sh->slots > 0 && i >= sh->pods * sh->slots)
            snprintf(role, sizeof role, ", spare");
        printf("  worker %-4d  pid %-7d %s (pod %d%s)%s\n", i, (int)u->pids[i],
               worker_file(log, dir, i, ".log"), worker_pod(sh, i), role,
               u->started[i] ? "" : " (was running)");
    }
    printf("  credentials  %s (client), %s (workers)\n", u->client_token, u->cluster_token);
    printf("  data roots  ");
    for (const char *r = sh->data_roots; *r; r += strlen(r) + 1) printf(" %s", r);
    printf("%s (jobs read data only beneath these)\n", sh->data_roots[0] ? "" : " none");
    if (sh->tls) printf("  TLS          the coordinator's certificate, clients' CA: %s\n", u->cert);
    char url[300];
    if (http_url(u, url, sizeof url)[0])
        printf("  live page    %s#token=<the client token> (Prometheus: %smetrics)\n", url, url);
    char def[PATH_MAX];
    if (client_cluster_dir(NULL, def, sizeof def) == MOE_OK && strcmp(def, dir) == 0)
        printf("use it:   moectl submit SPEC; moectl jobs; moectl watch JOB\n"
               "stop it:  moectl cluster down\n");
    else
        printf("use it:   export MOED_CLUSTER_DIR=%s (or --cluster-dir %s); then\n"
               "          moectl submit SPEC; moectl jobs; moectl watch JOB\n"
               "stop it:  moectl cluster down --dir %s\n",
               dir, dir, dir);
    fflush(stdout);
}

/* ---- cluster up: the steps in order ---- */

/* What `cluster up` does once its flags are read: start the cluster in DIR, or restart what
 * of it has stopped. `restart_only` (moectl chaos): a cluster must run there already, one
 * that runs whole is left alone, and only the workers restarted here are waited for, since a
 * worker that was fenced and resumed may not be alive in the coordinator's eyes yet. */
static int bring_up(const char *dir_flag, const struct shape *want, int given,
                    enum up_output output, int restart_only) {
    struct up *u = calloc(1, sizeof *u);
    if (!u) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    int code = up_dir(u, dir_flag);
    if (code) goto exit;
    u->pids = calloc(MAX_WORKERS, sizeof *u->pids);
    u->launchers = calloc(MAX_WORKERS, sizeof *u->launchers);
    u->started = calloc(MAX_WORKERS, sizeof *u->started);
    if (!u->pids || !u->launchers || !u->started) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    survey(u);
    int whole = 0;
    if (restart_only && !u->coord && !u->n_alive)
        code = moectl_fail(EXIT_BAD_INPUT, "no cluster runs in %s (no live coordinator or "
                           "worker from its pid files): `moectl cluster up --dir %s` starts one",
                           u->dir, u->dir);
    else if (u->coord || u->n_alive)
        code = plan_restart(u, want, given, restart_only, &whole);
    else
        code = plan_fresh(u, want, given);
    if (code || whole) goto exit;
    if ((code = prepare(u)) || (code = start_coordinator(u))) goto exit;
    snprintf(u->sh.address, sizeof u->sh.address, "%s", u->address);
    if ((code = start_workers(u))) goto exit;
    if (write_shape(u->dir, &u->sh) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }
    if ((code = wait_ready(u, restart_only))) goto exit;
    if (output == UP_JSON) print_up_json(u);
    else if (output == UP_TEXT) print_up_text(u);
exit:
    free(u->pids);
    free(u->launchers);
    free(u->started);
    free(u);
    return code;
}

int cluster_restart(const char *dir) {
    const struct shape none = {0};
    return bring_up(dir, &none, 0, UP_QUIET, 1);
}

/* ---- cluster down ---- */

struct down_flags {
    const char *dir_flag;
    int purge;
};

static int take_down_option(void *ctx, int c, const char *arg) {
    struct down_flags *f = ctx;
    switch (c) {
    case 'd': f->dir_flag = arg; return 0;
    case 'p': f->purge = 1; return 0;
    default: return -1;
    }
}

static int n_alive(const pid_t *pids, int n) {
    int left = 0;
    for (int i = 0; i < n; i++) left += daemon_alive(pids[i]);
    return left;
}

/* The cluster's processes: pids[i] worker i (n_workers of them), pids[n_workers + p] the
 * mpirun of pod p (n_mpi), and the coordinator; 0 for those that did not run. */
struct down {
    const char *dir;
    pid_t *pids;
    int n_workers, n_mpi;
    pid_t coord;
    int n_running; // workers that took our SIGTERM
    int coord_ran;
    int killed;    // processes that needed SIGKILL
};

/* Workers first, so that the coordinator sees them leave: SIGTERM, and a while to go. */
static void stop_workers(struct down *d) {
    char path[PATH_CAP];
    for (int i = 0; i < d->n_workers; i++) {
        d->pids[i] = read_pid(worker_file(path, d->dir, i, ".pid"));
        if (daemon_alive(d->pids[i]) && kill(d->pids[i], SIGTERM) == 0) d->n_running++;
        else d->pids[i] = 0;
    }
}

/* Then the coordinator and the mpiruns (which end by themselves once their ranks have; a
 * signal only for stragglers). */
static void stop_the_rest(struct down *d) {
    char path[PATH_CAP];
    for (int p = 0; p < d->n_mpi; p++) {
        pid_t m = read_pid(mpirun_file(path, d->dir, p, ".pid"));
        d->pids[d->n_workers + p] = daemon_alive(m) && kill(m, SIGTERM) == 0 ? m : 0;
    }
    d->coord_ran = daemon_alive(d->coord) && kill(d->coord, SIGTERM) == 0;
}

static int left_running(const struct down *d) {
    return (d->coord_ran && daemon_alive(d->coord)) + n_alive(d->pids, d->n_workers + d->n_mpi);
}

/* SIGKILL for whatever ignored SIGTERM, said on stderr; then a moment for it to go. */
static void kill_stragglers(struct down *d) {
    for (int i = 0; i < d->n_workers + d->n_mpi; i++)
        if (daemon_alive(d->pids[i])) {
            int worker = i < d->n_workers;
            fprintf(stderr, "moectl: %s %d (pid %d) ignored SIGTERM for %.0f s: killed\n",
                    worker ? "worker" : "the mpirun of pod", worker ? i : i - d->n_workers,
                    (int)d->pids[i], DOWN_TIMEOUT_S);
            kill(d->pids[i], SIGKILL), d->killed++;
        }
    if (d->coord_ran && daemon_alive(d->coord)) {
        fprintf(stderr, "moectl: the coordinator (pid %d) ignored SIGTERM for %.0f s: killed\n",
                (int)d->coord, DOWN_TIMEOUT_S);
        kill(d->coord, SIGKILL), d->killed++;
    }
    for (int k = 0; k < 100 && left_running(d); k++) // SIGKILL is quick, but not instantaneous
        moe_sleep_s(0.02);
}

static void stop_cluster(struct down *d) {
    char path[PATH_CAP];
    struct stat st;
    while (d->n_mpi < MAX_WORKERS && stat(mpirun_file(path, d->dir, d->n_mpi, ".pid"), &st) == 0)
        d->n_mpi++;
    d->coord = read_pid(in_dir(path, d->dir, "coordinator.pid"));
    stop_workers(d);
    double t0 = moe_clock_s();
    while (n_alive(d->pids, d->n_workers) && moe_clock_s() - t0 <= DOWN_TIMEOUT_S * 0.6)
        moe_sleep_s(0.02);
    stop_the_rest(d);
    while (left_running(d)) {
        if (moe_clock_s() - t0 > DOWN_TIMEOUT_S) {
            kill_stragglers(d);
            break;
        }
        moe_sleep_s(0.02);
    }
    for (int i = 0; i < d->n_workers; i++) unlink(worker_file(path, d->dir, i, ".pid"));
    for (int p = 0; p < d->n_mpi; p++) unlink(mpirun_file(path, d->dir, p, ".pid"));
    unlink(in_dir(path, d->dir, "coordinator.pid"));
    unlink(in_dir(path, d->dir, "coordinator.addr"));
}

/* --purge: the state, the logs and the scratch directories; the directory itself when
 * nothing else is in it. n: how many workers and mpiruns had pid files. */
static void purge(const char *dir, int n) {
    static const char *const names[] = {"coordinator", "coordinator.log", "client.token",
                                        "cluster.token", "cluster.json", "tls"};
    char path[PATH_CAP];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        rm_tree(in_dir(path, dir, names[i]));
    /* what a crash left of an atomic write: "worker-0.pid.tmp.XXXXXX" (common/fileio.h), or
     * "cluster.json.tmp" from an older moectl */
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *tmp = strstr(e->d_name, ".tmp");
        if (tmp && tmp != e->d_name && (!tmp[4] || tmp[4] == '.'))
            unlink(in_dir(path, dir, e->d_name));
    }
    if (d) closedir(d);
    for (int i = 0; i < MAX_WORKERS; i++) {
        struct stat ws;
        int any = 0;
        if (lstat(worker_file(path, dir, i, ""), &ws) == 0) rm_tree(path), any = 1;
        if (lstat(worker_file(path, dir, i, ".log"), &ws) == 0) unlink(path), any = 1;
        if (lstat(mpirun_file(path, dir, i, ".log"), &ws) == 0) unlink(path), any = 1;
        if (!any && i >= n) break;
    }
    rmdir(dir); // only if nothing else was in it
}

static int cluster_down(int argc, char **argv) {
    static const struct option opts[] = {{"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"purge", no_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct down_flags f = {0};
    const struct command_line cmd = {opts, "d:ph", cluster_usage, take_down_option, &f, 0};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code)) return code;
    char dir[PATH_MAX];
    if (client_cluster_dir(f.dir_flag, dir, sizeof dir) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("moectl: no cluster in %s: nothing to stop\n", dir);
        return EXIT_OK;
    }
    struct down d = {.dir = dir, .n_workers = worker_files(dir)};
    d.pids = calloc((size_t)d.n_workers + MAX_WORKERS + 1, sizeof *d.pids);
    if (!d.pids) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    stop_cluster(&d);
    free(d.pids);
    if (f.purge) purge(dir, d.n_workers + d.n_mpi);
    if (d.coord_ran || d.n_running)
        printf("moectl: cluster down: stopped %s and %d worker%s%s in %s; %s\n",
               d.coord_ran ? "the coordinator" : "no coordinator", d.n_running,
               plural(d.n_running), d.killed ? " (some with SIGKILL)" : "", dir,
               f.purge ? "its state is removed"
                       : "its state is kept (`moectl cluster up` on it brings the jobs back)");
    else
        printf("moectl: cluster down: nothing was running in %s%s\n", dir,
               f.purge ? "; its state is removed" : "");
    return EXIT_OK;
}

/* ---- cluster status ---- */

static void print_workers(const Moed__V1__ClusterStatus *cs) {
    printf("\n%-8s %-4s %-7s %-22s %-22s %-6s %-10s %-12s %-8s %s\n", "WORKER", "POD", "STATE",
           "ADDRESS", "DATA PLANE", "MPI", "HEARTBEAT", "JOB", "PID", "CPUS");
    for (size_t i = 0; i < cs->n_workers; i++) {
        const Moed__V1__WorkerInfo *w = cs->workers[i];
        char job[80] = "-", mpi[24] = "-", age[32];
        if (w->job_id[0]) snprintf(job, sizeof job, "%s/%d", w->job_id, w->slot);
        if (w->mpi_size > 0) snprintf(mpi, sizeof mpi, "%d/%d", w->mpi_rank, w->mpi_size);
        moectl_age(age, sizeof age, w->ms_since_heartbeat);
        printf("%-8s %-4d %-7s %-22s %-22s %-6s %-10s %-12s %-8d %d\n", w->worker_id, w->pod,
               w->drained ? "DRAINED" // wrong copies twice: see docs/operations.md
               : w->refused[0] && (w->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                                   w->state == MOED__V1__WORKER_STATE__WORKER_BUSY)
                   ? "REFUSED" // the coordinator cannot use its address: said below
                   : client_enum_name(&moed__v1__worker_state__descriptor, w->state),
               w->address,
               w->data_address[0] ? w->data_address : "-", mpi, strcat(age, " ago"), job,
               w->pid, w->cpus);
    }
    for (size_t i = 0; i < cs->n_workers; i++)
        if (cs->workers[i]->refused[0])
            printf("%s refused: %s\n", cs->workers[i]->worker_id, cs->workers[i]->refused);
}

static void print_pods(const Moed__V1__ClusterStatus *cs) {
    printf("\n%-4s %-8s %-6s %s\n", "POD", "WORKERS", "ALIVE", "HEALTH");
    for (size_t i = 0; i < cs->n_pods; i++) {
        const Moed__V1__PodInfo *p = cs->pods[i];
        printf("%-4d %-8d %-6d %s\n", p->pod, p->workers, p->alive,
               p->healthy ? "healthy" : "DEGRADED");
    }
}

/* The counts cover the whole cluster whatever the pages held (docs/protocol.md "Paging"). */
static void print_cluster(const Moed__V1__ClusterStatus *cs, const char *target) {
    char up[32];
    moectl_age(up, sizeof up, (long long)(cs->uptime_seconds * 1000));
    printf("coordinator %s (version %s, up %s, heartbeat timeout %.1f s)\n",
           cs->coordinator_address[0] ? cs->coordinator_address : target,
           cs->coordinator_version, up, cs->heartbeat_timeout_ms / 1000.0);
    printf("workers: %d alive of %d registered (%d idle, %d busy, %d dead, %d left); jobs: %d "
           "running, %d queued, %d in all\n", cs->workers_idle + cs->workers_busy,
           cs->workers_total, cs->workers_idle, cs->workers_busy, cs->workers_dead,
           cs->workers_left, cs->jobs_running, cs->jobs_queued, cs->jobs_total);
    if (cs->n_workers) print_workers(cs);
    if (cs->n_pods) print_pods(cs);
}

/* A local cluster's HTTP port (cluster up --http), where its directory records one. */
static void print_http(const char *dir_flag) {
    char dir[PATH_MAX], path[PATH_CAP], addr[256];
    struct shape sh;
    if (client_cluster_dir(dir_flag, dir, sizeof dir) != MOE_OK || !read_shape(dir, &sh) ||
        !sh.http || read_first_line(in_dir(path, dir, "coordinator.http"), addr, sizeof addr))
        return;
    printf("\nlive page %s://%s/#token=<the client token>; Prometheus: /metrics there\n",
           sh.tls ? "https" : "http", addr);
}

static int cluster_status(int argc, char **argv) {
    static const struct option opts[] = {CLIENT_LONG_OPTIONS,
                                         {"dir", required_argument, 0, OPT_CLUSTER_DIR},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct client_args a = {0};
    const struct command_line cmd = {opts, "jh", cluster_usage, client_take_option, &a, 0};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code)) return code;
    struct client cl;
    if ((code = client_open(&cl, &a.conn))) return code;
    Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    code = client_call_pages(&cl, RPC_STATUS_GET_CLUSTER, &req.base,
                             &moed__v1__cluster_status__descriptor, "workers", 0, 0, &reply, NULL,
                             0);
    if (!code && a.json) client_print_json(reply);
    else if (!code) print_cluster((const Moed__V1__ClusterStatus *)reply, cl.target);
    if (!code && !a.json && !a.conn.coordinator) print_http(a.conn.cluster_dir);
    if (reply) protobuf_c_message_free_unpacked(reply, NULL);
    client_close(&cl);
    return code;
}

int cmd_cluster(int argc, char **argv) {
    if (argc < 2) {
        cluster_usage(stderr, "cluster");
        return EXIT_BAD_INPUT;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "up") == 0) return cluster_up(argc - 1, argv + 1);
    if (strcmp(sub, "down") == 0) return cluster_down(argc - 1, argv + 1);
    if (strcmp(sub, "status") == 0) return cluster_status(argc - 1, argv + 1);
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        cluster_usage(stdout, "cluster");
        return EXIT_OK;
    }
    fprintf(stderr, "moectl: cluster %s: unknown subcommand (up, down or status)\n", sub);
    return EXIT_BAD_INPUT;
}
