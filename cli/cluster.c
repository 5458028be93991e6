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
#include "proto/moed.pb-c.h"
#include "../proto/methods.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- cluster up ---- */

static int cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int parse_int_flag(const char *s, const char *flag, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || errno || v < lo || v > hi) {
        moectl_fail(EXIT_BAD_INPUT, "%s: expected an integer in [%ld, %ld], got '%s'", flag, lo,
                    hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The port of "host:port", or -1. */
static int port_of(const char *address) {
    const char *colon = strrchr(address, ':');
    if (!colon) return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    return *end == 0 && p > 0 && p < 65536 ? (int)p : -1;
}

/* Waits for the coordinator to write its address file, as long as it lives. */
static int wait_for_address(const char *dir, pid_t pid, char *address, size_t cap) {
    char path[PATH_CAP], log[PATH_CAP];
    in_dir(path, dir, "coordinator.addr");
    in_dir(log, dir, "coordinator.log");
    double deadline = moe_clock_s() + UP_TIMEOUT_S;
    for (;;) {
        if (read_small_file(path, address, cap) == 0 && port_of(address) > 0) return EXIT_OK;
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
        sleep_s(0.02);
    }
}

/* Is registered worker `w` worker i of the shape? By pid when we know it (we started it),
 * else (a rank mpirun started) by its pod, MPI rank and launcher. */
static int is_worker(const Moed__V1__WorkerInfo *w, const struct shape *sh, int i,
                     const pid_t *pids, const pid_t *launchers) {
    if (pids[i]) return w->pid == pids[i];
    if (!worker_by_mpirun(sh, i)) return 0;
    int pod = worker_pod(sh, i);
    return w->pod == pod && w->mpi_size == sh->slots && w->mpi_rank == i % sh->slots &&
           launchers[pod] && parent_of(w->pid) == launchers[pod];
}

/* Polls GetCluster until every worker we run is registered and alive. The pids of workers
 * that an mpirun started are learnt here, and written to their pid files. */
static int wait_for_workers(struct client *c, const char *dir, pid_t coord, pid_t *pids,
                            const struct shape *sh, const pid_t *launchers, const int *only) {
    int n = sh->workers, want = 0;
    for (int i = 0; i < n; i++) want += !only || only[i];
    double deadline = moe_clock_s() + UP_TIMEOUT_S;
    char log[PATH_CAP];
    int alive = 0;
    char last_error[600] = "";
    for (;;) {
        Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
        ProtobufCMessage *reply = NULL;
        struct rpc_result res;
        if (rpc_call_sync(c->ch, RPC_STATUS_GET_CLUSTER, &req.base,
                          &moed__v1__cluster_status__descriptor, &reply, 5.0, &res) == MOE_OK) {
            const Moed__V1__ClusterStatus *cs = (const Moed__V1__ClusterStatus *)reply;
            alive = 0;
            for (int i = 0; i < n; i++)
                for (size_t k = 0; (!only || only[i]) && k < cs->n_workers; k++) {
                    const Moed__V1__WorkerInfo *w = cs->workers[k];
                    int up = w->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                             w->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
                    if (up && is_worker(w, sh, i, pids, launchers)) {
                        if (!pids[i]) {
                            pids[i] = (pid_t)w->pid;
                            write_pid(worker_file(log, dir, i, ".pid"), pids[i]);
                        }
                        alive++;
                        break;
                    }
                }
            protobuf_c_message_free_unpacked(reply, NULL);
            if (alive == want) return EXIT_OK;
        } else if (res.code == GRPC_STATUS_UNAUTHENTICATED ||
                   res.code == GRPC_STATUS_PERMISSION_DENIED) {
            return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
        } else {
            snprintf(last_error, sizeof last_error, "%s", moe_errmsg());
        }
        reap();
        if (!daemon_alive(coord)) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) exited", (int)coord);
            show_log_tail(in_dir(log, dir, "coordinator.log"), 6);
            return EXIT_RUN_FAILED;
        }
        for (int i = 0; i < n; i++) {
            if (only && !only[i]) continue;
            int by_mpirun = !pids[i] && worker_by_mpirun(sh, i);
            pid_t watch = by_mpirun ? launchers[worker_pod(sh, i)] : pids[i];
            if (daemon_alive(watch)) continue;
            if (by_mpirun) {
                moectl_fail(EXIT_RUN_FAILED, "the mpirun of pod %d (pid %d) exited while its "
                            "workers started", worker_pod(sh, i), (int)watch);
                show_log_tail(mpirun_file(log, dir, worker_pod(sh, i), ".log"), 6);
            } else {
                moectl_fail(EXIT_RUN_FAILED, "worker %d (pid %d) exited while starting", i,
                            (int)pids[i]);
            }
            show_log_tail(worker_file(log, dir, i, ".log"), 6);
            return EXIT_RUN_FAILED;
        }
        if (moe_clock_s() > deadline) {
            moectl_fail(EXIT_RUN_FAILED,
                        "only %d of %d workers registered with the coordinator within %.0f s%s%s; "
                        "logs are in %s (`moectl cluster down --dir %s` stops what runs)",
                        alive, want, UP_TIMEOUT_S, last_error[0] ? ": " : "", last_error, dir, dir);
            return EXIT_RUN_FAILED;
        }
        sleep_s(0.1);
    }
}

static void cluster_usage(FILE *to) {
    fprintf(to,
            "usage: moectl cluster up [--workers N | --slots S [--spares N]] [--pods P]\n"
            "                         [--backend tcp|mpi] [--threads N] [--port P]\n"
            "                         [--tls|--no-tls] [--heartbeat-timeout-ms N] [--dir DIR]\n"
            "                         [--json]\n"
            "       moectl cluster down [--dir DIR] [--purge]\n"
            "       moectl cluster status [--json]\n"
            "                         " CLIENT_OPTIONS_USAGE "\n"
            "DIR defaults to $MOED_CLUSTER_DIR, else $HOME/.moed/cluster.\n");
}

enum { UP_WORKERS = 1, UP_PODS = 2, UP_THREADS = 4, UP_PORT = 8, UP_TLS = 16, UP_HEARTBEAT = 32,
       UP_SLOTS = 64, UP_SPARES = 128, UP_BACKEND = 256 };
enum { OPT_SLOTS = 0x200, OPT_SPARES, OPT_BACKEND };

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
                                         {"heartbeat-timeout-ms", required_argument, 0, 'H'},
                                         {"slots", required_argument, 0, OPT_SLOTS},
                                         {"spares", required_argument, 0, OPT_SPARES},
                                         {"backend", required_argument, 0, OPT_BACKEND},
                                         {"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct shape want = {0}; // what the flags ask for; `given` says which were given
    const char *dir_flag = NULL;
    int json = 0, given = 0, c;
    long v;
    while ((c = getopt_long(argc, argv, "w:p:t:P:Td:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'w':
            if (parse_int_flag(optarg, "--workers", 1, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.workers = (int)v, given |= UP_WORKERS;
            break;
        case 'p':
            if (parse_int_flag(optarg, "--pods", 1, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.pods = (int)v, given |= UP_PODS;
            break;
        case 't':
            if (parse_int_flag(optarg, "--threads", 1, 4096, &v)) return EXIT_BAD_INPUT;
            want.threads = (int)v, given |= UP_THREADS;
            break;
        case 'P':
            if (parse_int_flag(optarg, "--port", 0, 65535, &v)) return EXIT_BAD_INPUT;
            want.port = (int)v, given |= UP_PORT;
            break;
        case 'H':
            if (parse_int_flag(optarg, "--heartbeat-timeout-ms", 1, 86400000, &v))
                return EXIT_BAD_INPUT;
            want.heartbeat_timeout_ms = v, given |= UP_HEARTBEAT;
            break;
        case OPT_SLOTS:
            if (parse_int_flag(optarg, "--slots", 1, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.slots = (int)v, given |= UP_SLOTS;
            break;
        case OPT_SPARES:
            if (parse_int_flag(optarg, "--spares", 0, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.spares = (int)v, given |= UP_SPARES;
            break;
        case OPT_BACKEND:
            if (strcmp(optarg, "mpi") != 0 && strcmp(optarg, "tcp") != 0)
                return moectl_fail(EXIT_BAD_INPUT, "--backend: tcp or mpi, not '%s'", optarg);
            want.mpi = strcmp(optarg, "mpi") == 0, given |= UP_BACKEND;
            break;
        case 'T': want.tls = 1, given |= UP_TLS; break;
        case 'N': want.tls = 0, given |= UP_TLS; break;
        case 'd': dir_flag = optarg; break;
        case 'j': json = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    if ((given & UP_WORKERS) && (given & (UP_SLOTS | UP_SPARES)))
        return moectl_fail(EXIT_BAD_INPUT, "--workers and --slots/--spares: give one shape "
                           "(--slots S makes pods x S workers, plus --spares)");
    if ((given & UP_SPARES) && !(given & UP_SLOTS))
        return moectl_fail(EXIT_BAD_INPUT, "--spares needs --slots");
    if ((given & UP_BACKEND) && want.mpi && !(given & UP_SLOTS))
        return moectl_fail(EXIT_BAD_INPUT, "--backend mpi needs --slots S: each pod's S workers "
                           "are one mpirun job");

    return bring_up(dir_flag, &want, given, json ? UP_JSON : UP_TEXT, 0);
}

/* What `cluster up` does once its flags are read: start the cluster in DIR, or restart what
 * of it has stopped. `restart_only` (moectl chaos): a cluster must run there already, one
 * that runs whole is left alone, and only the workers restarted here are waited for, since a
 * worker that was fenced and resumed may not be alive in the coordinator's eyes yet. */
static int bring_up(const char *dir_flag, const struct shape *want_in, int given,
                    enum up_output output, int restart_only) {
    const struct shape want = *want_in;
    int json = output == UP_JSON;
    char dir[PATH_MAX], path[PATH_CAP], coord_exe[PATH_CAP], worker_exe[PATH_CAP];
    if (client_cluster_dir(dir_flag, dir, sizeof dir) != MOE_OK ||
        find_daemon("moed-coordinator", coord_exe) != MOE_OK ||
        find_daemon("moed-worker", worker_exe) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (dir[0] != '/') { // the daemons and the hints we print need it absolute
        char cwd[PATH_MAX], abs[PATH_CAP];
        if (!getcwd(cwd, sizeof cwd)) return moectl_fail(EXIT_RUN_FAILED, "getcwd: %s", strerror(errno));
        int n = snprintf(abs, sizeof abs, "%s/%s", cwd, dir);
        if (n < 0 || (size_t)n >= sizeof dir) return moectl_fail(EXIT_BAD_INPUT, "%s: path too long", abs);
        memcpy(dir, abs, (size_t)n + 1);
    }
    if (mkdir_p(dir, 0700) != MOE_OK) return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());

    /* What runs already? */
    struct shape sh, old;
    int have_old = read_shape(dir, &old);
    pid_t coord = read_pid(in_dir(path, dir, "coordinator.pid"));
    if (!daemon_alive(coord)) coord = 0;
    int n_files = worker_files(dir);
    int n_alive = 0;
    pid_t *pids = calloc(MAX_WORKERS, sizeof *pids);
    pid_t *launchers = calloc(MAX_WORKERS, sizeof *launchers); // per pod: its mpirun, if any
    int *started = calloc(MAX_WORKERS, sizeof *started);
    int code = EXIT_OK;
    struct client cl = {0};
    if (!pids || !started || !launchers) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    for (int i = 0; i < n_files; i++) {
        pids[i] = read_pid(worker_file(path, dir, i, ".pid"));
        if (!daemon_alive(pids[i])) pids[i] = 0;
        else n_alive++;
    }
    /* A pod that mpirun launched lives and dies with its mpirun: ranks it left behind cannot
     * form an MPI job again, so they go, and the pod starts over. */
    for (int p = 0; have_old && old.mpi && old.slots > 0 && p < old.pods; p++) {
        launchers[p] = read_pid(mpirun_file(path, dir, p, ".pid"));
        int whole = daemon_alive(launchers[p]);
        for (int i = p * old.slots; i < (p + 1) * old.slots; i++) whole &= pids[i] != 0;
        if (whole) continue;
        if (daemon_alive(launchers[p])) kill(launchers[p], SIGKILL);
        launchers[p] = 0;
        for (int i = p * old.slots; i < (p + 1) * old.slots; i++)
            if (pids[i]) {
                kill(pids[i], SIGKILL);
                pids[i] = 0;
                n_alive--;
            }
    }
    if (restart_only && !coord && !n_alive) {
        code = moectl_fail(EXIT_BAD_INPUT, "no cluster runs in %s (no live coordinator or "
                           "worker from its pid files): `moectl cluster up --dir %s` starts one",
                           dir, dir);
        goto exit;
    }
    if (coord || n_alive) {
        if (!have_old) {
            code = moectl_fail(EXIT_BAD_INPUT, "moed processes are running from %s but its "
                               "cluster.json is missing; `moectl cluster down --dir %s` first",
                               dir, dir);
            goto exit;
        }
        sh = old;
        int all = coord != 0 && n_alive == sh.workers;
        for (int i = 0; i < sh.workers; i++) all &= pids[i] != 0;
        if (all && restart_only) goto exit; // nothing to restart
        if (all) {
            code = moectl_fail(EXIT_BAD_INPUT, "a cluster is already running in %s (coordinator "
                               "pid %d at %s, %d workers); `moectl cluster down --dir %s` stops it",
                               dir, (int)coord, sh.address, sh.workers, dir);
            goto exit;
        }
        const char *conflict = (given & UP_WORKERS) && want.workers != sh.workers ? "--workers"
                               : (given & UP_PODS) && want.pods != sh.pods        ? "--pods"
                               : (given & UP_THREADS) && want.threads != sh.threads ? "--threads"
                               : (given & UP_SLOTS) && want.slots != sh.slots      ? "--slots"
                               : (given & UP_SPARES) && want.spares != sh.spares   ? "--spares"
                               : (given & UP_BACKEND) && want.mpi != sh.mpi        ? "--backend"
                               : (given & UP_TLS) && want.tls != sh.tls           ? "--tls"
                               : (given & UP_HEARTBEAT) &&
                                       want.heartbeat_timeout_ms != sh.heartbeat_timeout_ms
                                   ? "--heartbeat-timeout-ms"
                                   : NULL;
        if (conflict) {
            code = moectl_fail(EXIT_BAD_INPUT, "%s: the cluster in %s is partly running with "
                               "another shape (--workers %d --pods %d --threads %d%s); `moectl "
                               "cluster down --dir %s` first to change it",
                               conflict, dir, sh.workers, sh.pods, sh.threads,
                               sh.tls ? " --tls" : "", dir);
            goto exit;
        }
    } else {
        /* A fresh start: the flags given, over the shape it last ran with, over defaults. */
        sh = have_old ? old : (struct shape){.workers = 2, .pods = 1};
        if (given & UP_WORKERS) sh.workers = want.workers, sh.slots = 0, sh.spares = 0, sh.mpi = 0;
        if (given & UP_PODS) sh.pods = want.pods;
        if (given & UP_SLOTS) sh.slots = want.slots, sh.spares = 0, sh.mpi = 0;
        if (given & UP_SPARES) sh.spares = want.spares;
        if (given & UP_BACKEND) sh.mpi = want.mpi;
        if (sh.slots > 0) {
            if ((long)sh.pods * sh.slots + sh.spares > MAX_WORKERS) {
                code = moectl_fail(EXIT_BAD_INPUT, "--pods %d x --slots %d + --spares %d: more "
                                   "than %d workers", sh.pods, sh.slots, sh.spares, MAX_WORKERS);
                goto exit;
            }
            sh.workers = sh.pods * sh.slots + sh.spares;
        }
        if (given & (UP_SLOTS | UP_SPARES | UP_PODS)) given |= UP_WORKERS; // threads follow
        if (given & UP_PORT) sh.port = want.port;
        if (given & UP_TLS) sh.tls = want.tls;
        if (given & UP_HEARTBEAT) sh.heartbeat_timeout_ms = want.heartbeat_timeout_ms;
        if (given & UP_THREADS) {
            sh.threads = want.threads;
        } else if (!have_old || (given & UP_WORKERS)) {
            sh.threads = cpu_count() / sh.workers; // the machine shared out
            if (sh.threads < 1) sh.threads = 1;
        }
        if (sh.pods > sh.workers) {
            code = moectl_fail(EXIT_BAD_INPUT, "--pods %d: more pods than workers (%d)", sh.pods,
                               sh.workers);
            goto exit;
        }
        /* Nothing runs: whatever pid and address files remain are stale. */
        for (int i = 0; i < n_files; i++) unlink(worker_file(path, dir, i, ".pid"));
        unlink(in_dir(path, dir, "coordinator.pid"));
        unlink(in_dir(path, dir, "coordinator.addr"));
        if (!sh.tls) rm_tree(in_dir(path, dir, "tls")); // clients would take its cert as a CA
    }

    char mpirun[PATH_CAP] = ""; // before anything starts: a cluster that cannot be whole is none
    if (sh.mpi && find_mpirun(mpirun) != MOE_OK) {
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
        goto exit;
    }
    char client_token[PATH_CAP], cluster_token[PATH_CAP], cert[PATH_CAP], key[PATH_CAP];
    in_dir(client_token, dir, "client.token");
    in_dir(cluster_token, dir, "cluster.token");
    in_dir(cert, dir, "tls/cert.pem");
    in_dir(key, dir, "tls/key.pem");
    if (ensure_token(client_token) != MOE_OK || ensure_token(cluster_token) != MOE_OK ||
        (sh.tls && ensure_tls(dir) != MOE_OK)) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }

    /* The coordinator: on its old port while workers that know that port still live. */
    char address[256] = "";
    int coord_started = 0;
    if (!coord) {
        int port = sh.port;
        if (n_alive) {
            char recorded[256] = "";
            if (read_small_file(in_dir(path, dir, "coordinator.addr"), recorded,
                                sizeof recorded) != 0 || port_of(recorded) < 0)
                snprintf(recorded, sizeof recorded, "%s", sh.address);
            port = port_of(recorded);
            if (port < 0) {
                code = moectl_fail(EXIT_RUN_FAILED, "cannot restart the coordinator where its "
                                   "workers look for it: no address in %s/coordinator.addr or "
                                   "cluster.json; `moectl cluster down --dir %s` and up again",
                                   dir, dir);
                goto exit;
            }
        }
        char listen[64], store[PATH_CAP], addr_file[PATH_CAP], log[PATH_CAP], hb[32];
        snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
        snprintf(hb, sizeof hb, "%ld", sh.heartbeat_timeout_ms);
        in_dir(store, dir, "coordinator");
        in_dir(addr_file, dir, "coordinator.addr");
        in_dir(log, dir, "coordinator.log");
        unlink(addr_file);
        const char *args[32];
        int n = 0;
        args[n++] = coord_exe;
        args[n++] = "--listen", args[n++] = listen;
        args[n++] = "--dir", args[n++] = store;
        args[n++] = "--client-token-file", args[n++] = client_token;
        args[n++] = "--cluster-token-file", args[n++] = cluster_token;
        args[n++] = "--addr-file", args[n++] = addr_file;
        if (sh.tls) args[n++] = "--tls-cert", args[n++] = cert, args[n++] = "--tls-key", args[n++] = key;
        /* the workers serve the same 127.0.0.1 certificate: the coordinator verifies it */
        if (sh.tls) args[n++] = "--worker-tls-ca", args[n++] = cert;
        if (sh.heartbeat_timeout_ms) args[n++] = "--heartbeat-timeout-ms", args[n++] = hb;
        args[n] = NULL;
        if (spawn(args, log, &coord) != MOE_OK ||
            write_pid(in_dir(path, dir, "coordinator.pid"), coord) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        coord_started = 1;
        if ((code = wait_for_address(dir, coord, address, sizeof address))) goto exit;
    } else if (read_small_file(in_dir(path, dir, "coordinator.addr"), address, sizeof address) != 0 ||
               port_of(address) < 0) {
        snprintf(address, sizeof address, "%s", sh.address);
    }
    snprintf(sh.address, sizeof sh.address, "%s", address);

    /* The workers that are missing, each in its pod (worker_pod); a pod of mpirun-launched
     * workers as one mpirun. */
    for (int i = 0; i < sh.workers; i++) {
        if (pids[i]) continue;
        char pod[16], threads[16], scratch[PATH_CAP], log[PATH_CAP];
        int p = worker_pod(&sh, i);
        snprintf(pod, sizeof pod, "%d", p);
        snprintf(threads, sizeof threads, "%d", sh.threads);
        worker_file(scratch, dir, i, "");
        worker_file(log, dir, i, ".log");
        if (mkdir_p(scratch, 0700) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        const char *args[32];
        int n = 0;
        args[n++] = worker_exe;
        args[n++] = "--coordinator", args[n++] = address;
        args[n++] = "--cluster-token-file", args[n++] = cluster_token;
        args[n++] = "--listen", args[n++] = "127.0.0.1:0";
        args[n++] = "--pod", args[n++] = pod;
        args[n++] = "--threads", args[n++] = threads;
        if (sh.tls) {
            args[n++] = "--tls-ca", args[n++] = cert;
            args[n++] = "--tls-cert", args[n++] = cert, args[n++] = "--tls-key", args[n++] = key;
        }
        if (worker_by_mpirun(&sh, i)) {
            args[n] = NULL;
            started[i] = 1;
            if (launchers[p]) continue; // this pod's mpirun was started for an earlier rank
            if (spawn_mpi_pod(dir, mpirun, &sh, p, args, &launchers[p]) != MOE_OK) {
                code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
                goto exit;
            }
            continue;
        }
        args[n++] = "--dir", args[n++] = scratch;
        args[n] = NULL;
        if (spawn(args, log, &pids[i]) != MOE_OK ||
            write_pid(worker_file(path, dir, i, ".pid"), pids[i]) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        started[i] = 1;
    }
    if (write_shape(dir, &sh) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }

    /* Ready when the coordinator counts every one of our workers alive. */
    char token[256];
    if (rpc_read_token(client_token, token, sizeof token) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }
    if ((code = client_open_at(&cl, address, token, sh.tls ? cert : NULL))) goto exit;
    if ((code = wait_for_workers(&cl, dir, coord, pids, &sh, launchers,
                                 restart_only ? started : NULL)))
        goto exit;
    if (output == UP_QUIET) goto exit;

    char log[PATH_CAP];
    if (json) {
        cJSON *j = cJSON_CreateObject(), *ws = cJSON_CreateArray(), *co = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "dir", dir);
        cJSON_AddStringToObject(j, "address", address);
        cJSON_AddStringToObject(j, "client_token_file", client_token);
        if (sh.tls) cJSON_AddStringToObject(j, "tls_ca", cert);
        else cJSON_AddNullToObject(j, "tls_ca");
        cJSON_AddNumberToObject(co, "pid", coord);
        cJSON_AddStringToObject(co, "log", in_dir(log, dir, "coordinator.log"));
        cJSON_AddBoolToObject(co, "started", coord_started);
        cJSON_AddItemToObject(j, "coordinator", co);
        for (int i = 0; i < sh.workers; i++) {
            cJSON *w = cJSON_CreateObject();
            cJSON_AddNumberToObject(w, "index", i);
            cJSON_AddNumberToObject(w, "pod", worker_pod(&sh, i));
            cJSON_AddNumberToObject(w, "pid", pids[i]);
            if (sh.slots > 0 && i < sh.pods * sh.slots) cJSON_AddNumberToObject(w, "slot", i % sh.slots);
            else if (sh.slots > 0) cJSON_AddBoolToObject(w, "spare", 1);
            if (worker_by_mpirun(&sh, i))
                cJSON_AddNumberToObject(w, "mpirun_pid", launchers[worker_pod(&sh, i)]);
            cJSON_AddStringToObject(w, "log", worker_file(log, dir, i, ".log"));
            cJSON_AddBoolToObject(w, "started", started[i]);
            cJSON_AddItemToArray(ws, w);
        }
        cJSON_AddItemToObject(j, "workers", ws);
        cJSON_AddNumberToObject(j, "pods", sh.pods);
        cJSON_AddNumberToObject(j, "slots", sh.slots);
        cJSON_AddNumberToObject(j, "spares", sh.spares);
        cJSON_AddStringToObject(j, "backend", sh.mpi ? "mpi" : "tcp");
        cJSON_AddNumberToObject(j, "threads_per_worker", sh.threads);
        char *text = cJSON_PrintUnformatted(j);
        if (text) printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(j);
    } else {
        int n_started = 0;
        for (int i = 0; i < sh.workers; i++) n_started += started[i];
        const char *how = coord_started && n_started == sh.workers ? "started"
                          : coord_started || n_started             ? "restarted what had stopped"
                                                                   : "running";
        printf("moectl: cluster up (%s): coordinator at %s, %d worker%s in %d pod%s, %d thread%s "
               "each%s\n",
               how, address, sh.workers, sh.workers == 1 ? "" : "s", sh.pods,
               sh.pods == 1 ? "" : "s", sh.threads, sh.threads == 1 ? "" : "s",
               sh.tls ? ", TLS" : "");
        printf("  directory    %s (state, logs, pids; jobs survive `moectl cluster down`)\n", dir);
        printf("  coordinator  pid %-7d %s%s\n", (int)coord, in_dir(log, dir, "coordinator.log"),
               coord_started ? "" : " (was running)");
        if (sh.slots > 0)
            printf("  shape        %d pod%s x %d slot%s%s, %d spare%s%s\n", sh.pods,
                   sh.pods == 1 ? "" : "s", sh.slots, sh.slots == 1 ? "" : "s",
                   sh.mpi ? " (each pod one mpirun)" : "", sh.spares, sh.spares == 1 ? "" : "s",
                   sh.spares ? " (round-robin over the pods)" : "");
        for (int i = 0; i < sh.workers; i++) {
            char role[96] = "";
            if (worker_by_mpirun(&sh, i))
                snprintf(role, sizeof role, ", MPI rank %d of mpirun pid %d", i % sh.slots,
                         (int)launchers[worker_pod(&sh, i)]);
            else if (sh.slots > 0 && i >= sh.pods * sh.slots)
                snprintf(role, sizeof role, ", spare");
            printf("  worker %-4d  pid %-7d %s (pod %d%s)%s\n", i, (int)pids[i],
                   worker_file(log, dir, i, ".log"), worker_pod(&sh, i), role,
                   started[i] ? "" : " (was running)");
        }
        printf("  credentials  %s (client), %s (workers)\n", client_token, cluster_token);
        if (sh.tls) printf("  TLS          the coordinator's certificate, clients' CA: %s\n", cert);
        char def[PATH_MAX];
        int is_default = client_cluster_dir(NULL, def, sizeof def) == MOE_OK && strcmp(def, dir) == 0;
        if (is_default)
            printf("use it:   moectl submit SPEC; moectl jobs; moectl watch JOB\n"
                   "stop it:  moectl cluster down\n");
        else
            printf("use it:   export MOED_CLUSTER_DIR=%s (or --cluster-dir %s); then\n"
                   "          moectl submit SPEC; moectl jobs; moectl watch JOB\n"
                   "stop it:  moectl cluster down --dir %s\n",
                   dir, dir, dir);
    }
    fflush(stdout);

exit:
    if (cl.ch) client_close(&cl);
    free(pids);
    free(launchers);
    free(started);
    return code;
}

int cluster_restart(const char *dir) {
    const struct shape none = {0};
    return bring_up(dir, &none, 0, UP_QUIET, 1);
}

/* ---- cluster down ---- */

static int cluster_down(int argc, char **argv) {
    static const struct option opts[] = {{"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"purge", no_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir_flag = NULL;
    int purge = 0, c;
    while ((c = getopt_long(argc, argv, "d:ph", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir_flag = optarg; break;
        case 'p': purge = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    char dir[PATH_MAX], path[PATH_CAP];
    if (client_cluster_dir(dir_flag, dir, sizeof dir) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("moectl: no cluster in %s: nothing to stop\n", dir);
        return EXIT_OK;
    }

    /* Workers first, so that the coordinator sees them leave; then the coordinator and the
     * mpiruns (which end by themselves once their ranks have; a signal only for stragglers). */
    int n_workers = worker_files(dir), n_mpi = 0;
    struct stat ms;
    while (n_mpi < MAX_WORKERS && stat(mpirun_file(path, dir, n_mpi, ".pid"), &ms) == 0) n_mpi++;
    int n = n_workers + n_mpi; // pids[n_workers + p]: pod p's mpirun
    pid_t coord = read_pid(in_dir(path, dir, "coordinator.pid"));
    pid_t *pids = calloc((size_t)n + 1, sizeof *pids);
    if (!pids) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    int n_running = 0, killed = 0;
    for (int i = 0; i < n_workers; i++) {
        pids[i] = read_pid(worker_file(path, dir, i, ".pid"));
        if (daemon_alive(pids[i]) && kill(pids[i], SIGTERM) == 0) n_running++;
        else pids[i] = 0;
    }
    double t0 = moe_clock_s();
    for (;;) {
        int left = 0;
        for (int i = 0; i < n_workers; i++) left += daemon_alive(pids[i]);
        if (!left || moe_clock_s() - t0 > DOWN_TIMEOUT_S * 0.6) break;
        sleep_s(0.02);
    }
    for (int p = 0; p < n_mpi; p++) {
        pid_t m = read_pid(mpirun_file(path, dir, p, ".pid"));
        pids[n_workers + p] = daemon_alive(m) && kill(m, SIGTERM) == 0 ? m : 0;
    }
    int coord_ran = daemon_alive(coord) && kill(coord, SIGTERM) == 0;
    for (;;) {
        int left = coord_ran && daemon_alive(coord);
        for (int i = 0; i < n; i++) left += daemon_alive(pids[i]);
        if (!left) break;
        if (moe_clock_s() - t0 > DOWN_TIMEOUT_S) {
            for (int i = 0; i < n; i++)
                if (daemon_alive(pids[i])) {
                    fprintf(stderr, "moectl: %s %d (pid %d) ignored SIGTERM for %.0f s: "
                            "killed\n", i < n_workers ? "worker" : "the mpirun of pod",
                            i < n_workers ? i : i - n_workers, (int)pids[i], DOWN_TIMEOUT_S);
                    kill(pids[i], SIGKILL), killed++;
                }
            if (coord_ran && daemon_alive(coord)) {
                fprintf(stderr, "moectl: the coordinator (pid %d) ignored SIGTERM for %.0f s: "
                        "killed\n", (int)coord, DOWN_TIMEOUT_S);
                kill(coord, SIGKILL), killed++;
            }
            for (int k = 0; k < 100; k++) { // SIGKILL is quick, but not instantaneous
                int any = coord_ran && daemon_alive(coord);
                for (int i = 0; i < n; i++) any += daemon_alive(pids[i]);
                if (!any) break;
                sleep_s(0.02);
            }
            break;
        }
        sleep_s(0.02);
    }
    for (int i = 0; i < n_workers; i++) unlink(worker_file(path, dir, i, ".pid"));
    for (int p = 0; p < n_mpi; p++) unlink(mpirun_file(path, dir, p, ".pid"));
    unlink(in_dir(path, dir, "coordinator.pid"));
    unlink(in_dir(path, dir, "coordinator.addr"));
    free(pids);

    if (purge) {
        static const char *const names[] = {"coordinator", "coordinator.log", "client.token",
                                            "cluster.token", "cluster.json", "tls",
                                            "coordinator.addr.tmp", "cluster.json.tmp"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) rm_tree(in_dir(path, dir, names[i]));
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
    const char *what = coord_ran || n_running ? "stopped" : "nothing was running";
    if (coord_ran || n_running)
        printf("moectl: cluster down: stopped %s and %d worker%s%s in %s; %s\n",
               coord_ran ? "the coordinator" : "no coordinator", n_running,
               n_running == 1 ? "" : "s", killed ? " (some with SIGKILL)" : "", dir,
               purge ? "its state is removed"
                     : "its state is kept (`moectl cluster up` on it brings the jobs back)");
    else
        printf("moectl: cluster down: %s in %s%s\n", what, dir,
               purge ? "; its state is removed" : "");
    return EXIT_OK;
}

/* ---- cluster status ---- */

static int cluster_status(int argc, char **argv) {
    static const struct option opts[] = {CLIENT_LONG_OPTIONS,
                                         {"dir", required_argument, 0, OPT_CLUSTER_DIR},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct client_options o = {0};
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        if (client_option(&o, c, optarg)) continue;
        switch (c) {
        case 'j': json = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    struct client cl;
    int code = client_open(&cl, &o);
    if (code) return code;
    Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    code = client_call(&cl, RPC_STATUS_GET_CLUSTER, &req.base,
                       &moed__v1__cluster_status__descriptor, &reply, NULL);
    if (code) goto exit;
    const Moed__V1__ClusterStatus *cs = (const Moed__V1__ClusterStatus *)reply;
    if (json) {
        client_print_json(reply);
        goto exit;
    }
    char up[32], age[32];
    client_age(up, sizeof up, (long long)(cs->uptime_seconds * 1000));
    int alive = 0;
    for (size_t i = 0; i < cs->n_workers; i++)
        alive += cs->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                 cs->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
    printf("coordinator %s (version %s, up %s, heartbeat timeout %.1f s)\n",
           cs->coordinator_address[0] ? cs->coordinator_address : cl.target,
           cs->coordinator_version, up, cs->heartbeat_timeout_ms / 1000.0);
    printf("workers: %d alive of %zu registered; jobs: %d running, %d queued, %d in all\n", alive,
           cs->n_workers, cs->jobs_running, cs->jobs_queued, cs->jobs_total);
    if (cs->n_workers) {
        printf("\n%-8s %-4s %-6s %-22s %-22s %-6s %-10s %-12s %-8s %s\n", "WORKER", "POD",
               "STATE", "ADDRESS", "DATA PLANE", "MPI", "HEARTBEAT", "JOB", "PID", "CPUS");
        for (size_t i = 0; i < cs->n_workers; i++) {
            const Moed__V1__WorkerInfo *w = cs->workers[i];
            char job[80] = "-", mpi[24] = "-";
            if (w->job_id[0]) snprintf(job, sizeof job, "%s/%d", w->job_id, w->slot);
            if (w->mpi_size > 0) snprintf(mpi, sizeof mpi, "%d/%d", w->mpi_rank, w->mpi_size);
            client_age(age, sizeof age, w->ms_since_heartbeat);
            printf("%-8s %-4d %-6s %-22s %-22s %-6s %-10s %-12s %-8d %d\n", w->worker_id, w->pod,
                   client_enum_name(&moed__v1__worker_state__descriptor, w->state), w->address,
                   w->data_address[0] ? w->data_address : "-", mpi, strcat(age, " ago"), job,
                   w->pid, w->cpus);
        }
    }
    if (cs->n_pods) {
        printf("\n%-4s %-8s %-6s %s\n", "POD", "WORKERS", "ALIVE", "HEALTH");
        for (size_t i = 0; i < cs->n_pods; i++) {
            const Moed__V1__PodInfo *p = cs->pods[i];
            printf("%-4d %-8d %-6d %s\n", p->pod, p->workers, p->alive,
                   p->healthy ? "healthy" : "DEGRADED");
        }
    }
exit:
    if (reply) protobuf_c_message_free_unpacked(reply, NULL);
    client_close(&cl);
    return code;
}

int cmd_cluster(int argc, char **argv) {
    if (argc < 2) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "up") == 0) return cluster_up(argc - 1, argv + 1);
    if (strcmp(sub, "down") == 0) return cluster_down(argc - 1, argv + 1);
    if (strcmp(sub, "status") == 0) return cluster_status(argc - 1, argv + 1);
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        cluster_usage(stdout);
        return EXIT_OK;
    }
    fprintf(stderr, "moectl: cluster %s: unknown subcommand (up, down or status)\n", sub);
    return EXIT_BAD_INPUT;
}
