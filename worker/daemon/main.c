/*
 * moed-worker — the worker daemon (see worker.h for what it owns).
 *
 *   moed-worker --coordinator HOST:PORT --cluster-token-file FILE [--listen 127.0.0.1:0]
 *               [--pod N] [--threads N] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
 *               [--dir SCRATCH_DIR] [--data-listen HOST:PORT] [--mpi]
 *               [--log-level debug|info|warn|error]
 *
 * main.c: the command line, the scratch directory, starting the loop, and the orderly way
 * down on SIGTERM/SIGINT: stop the job and join its thread, shut the server down, stop the
 * pump, close the handles, exit 0.
 * Under mpirun (OMPI_COMM_WORLD_RANK set) or with --mpi, MPI is initialised first thing and
 * the rank, size and mpirun job are registered: the ranks of one mpirun job are one pod.
 * Exit codes: 0 stopped by a signal; 1 could not start or join (coordinator unreachable for
 * 30 s, the cluster token refused, the address in use, MPI would not start); 2 bad command
 * line.
 */
#include "worker.h"

#include "../../common/blas_select.h"
#include "../../common/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_FAILED 1
#define EXIT_USAGE 2

static void usage(FILE *to) {
    fprintf(to,
            "usage: moed-worker --coordinator HOST:PORT --cluster-token-file FILE [options]\n"
            "\n"
            "Joins a moed cluster and trains the job slots its coordinator assigns.\n"
            "\n"
            "  --coordinator HOST:PORT     the coordinator's Cluster service\n"
            "  --cluster-token-file FILE   the cluster token (one line)\n"
            "  --listen HOST:PORT          where the Worker service listens (default\n"
            "                              127.0.0.1:0: a free port)\n"
            "  --pod N                     the pod this worker belongs to (default 0)\n"
            "  --threads N                 OpenMP threads for training (default: all cores)\n"
            "  --tls-ca FILE               verify the coordinator's TLS certificate with this CA\n"
            "  --tls-cert FILE --tls-key FILE\n"
            "                              serve the Worker service over TLS (PEM files)\n"
            "  --dir DIR                   scratch directory for trained models (default: a\n"
            "                              temporary directory, removed at exit)\n"
            "  --data-listen HOST:PORT     the data plane's listener, where the other slots of\n"
            "                              a job connect (default 127.0.0.1:0: a free port)\n"
            "  --mpi                       initialise MPI and register the rank (implied under\n"
            "                              mpirun, which sets OMPI_COMM_WORLD_RANK)\n"
            "  --log-level LEVEL           debug, info, warn or error (default info, or\n"
            "                              $MOE_LOG_LEVEL)\n");
}

static int parse_int(const char *text, const char *flag, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > 1 << 20) {
        fprintf(stderr, "moed-worker: %s must be an integer >= %d (got '%s')\n", flag, lo, text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_level(const char *text) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(text, names[i]) == 0) {
            moe_log_set_level((enum moe_log_level)i);
            return 0;
        }
    fprintf(stderr, "moed-worker: --log-level must be debug, info, warn or error (got '%s')\n",
            text);
    return -1;
}

static int parse_args(struct worker_config *cfg, int argc, char **argv) {
    static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                         {"cluster-token-file", required_argument, 0, 't'},
                                         {"listen", required_argument, 0, 'l'},
                                         {"pod", required_argument, 0, 'p'},
                                         {"threads", required_argument, 0, 'n'},
                                         {"tls-ca", required_argument, 0, 'a'},
                                         {"tls-cert", required_argument, 0, 'C'},
                                         {"tls-key", required_argument, 0, 'K'},
                                         {"dir", required_argument, 0, 'd'},
                                         {"data-listen", required_argument, 0, 'D'},
                                         {"mpi", no_argument, 0, 'M'},
                                         {"log-level", required_argument, 0, 'L'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    cfg->listen = "127.0.0.1:0";
    cfg->data_listen = "127.0.0.1:0";
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cfg->coordinator = optarg; break;
        case 't': cfg->token_file = optarg; break;
        case 'l': cfg->listen = optarg; break;
        case 'p':
            if (parse_int(optarg, "--pod", 0, &cfg->pod)) return EXIT_USAGE;
            break;
        case 'n':
            if (parse_int(optarg, "--threads", 1, &cfg->threads)) return EXIT_USAGE;
            break;
        case 'a': cfg->tls.ca_file = optarg; break;
        case 'C': cfg->serve_tls.cert_file = optarg; break;
        case 'K': cfg->serve_tls.key_file = optarg; break;
        case 'd': cfg->dir = optarg; break;
        case 'D': cfg->data_listen = optarg; break;
        case 'M': cfg->mpi = 1; break;
        case 'L':
            if (parse_level(optarg)) return EXIT_USAGE;
            break;
        case 'h': usage(stdout); return -1;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (!cfg->serve_tls.cert_file != !cfg->serve_tls.key_file) {
        fprintf(stderr, "moed-worker: --tls-cert and --tls-key go together\n");
        return EXIT_USAGE;
    }
    if (optind != argc) {
        fprintf(stderr, "moed-worker: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!cfg->coordinator || !cfg->token_file) {
        fprintf(stderr, "moed-worker: --coordinator and --cluster-token-file are required\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    return 0;
}

/* ---- scratch directory ---- */

/* --dir is checked (and made) before anything starts. */
static moe_status scratch_use_dir(struct worker *w) {
    const char *dir = w->cfg.dir;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create --dir %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0)
        return moe_fail(MOE_EIO, "--dir %s is not a writable directory", dir);
    snprintf(w->scratch, sizeof w->scratch, "%s", dir);
    return MOE_OK;
}

/* Without --dir: a temporary directory, made once we joined (until then a signal ends the
 * process the default way and leaves nothing behind). */
static moe_status scratch_make_temp(struct worker *w) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0]) tmp = "/tmp";
    snprintf(w->scratch, sizeof w->scratch, "%s/moed-worker-XXXXXX", tmp);
    if (!mkdtemp(w->scratch))
        return moe_fail(MOE_EIO, "cannot create a scratch directory under %s: %s", tmp,
                        strerror(errno));
    w->scratch_is_temp = 1;
    return MOE_OK;
}

/* The temporary directory holds only our flat files (models, their configs, temporaries). */
static void scratch_remove(struct worker *w) {
    if (!w->scratch_is_temp) return;
    DIR *d = opendir(w->scratch);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    if (rmdir(w->scratch) != 0)
        LOG_WARN("cannot remove the scratch directory %s: %s", w->scratch, strerror(errno));
}

/* The address the coordinator will call: a wildcard or loopback listen address becomes
 * 127.0.0.1 (the local cluster); any other host is given as it was. */
static void advertised_address(struct worker *w, int port) {
    const char *listen = w->cfg.listen;
    const char *colon = strrchr(listen, ':');
    size_t host_len = colon ? (size_t)(colon - listen) : strlen(listen);
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(host_len < 255 ? host_len : 255), listen);
    if (!host[0] || strcmp(host, "127.0.0.1") == 0 || strcmp(host, "0.0.0.0") == 0 ||
        strcmp(host, "[::]") == 0 || strcmp(host, "::") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    snprintf(w->address, sizeof w->address, "%s:%d", host, port);
}

/* The data plane's address as peers should dial it: a wildcard host ("0.0.0.0:0" listens
 * everywhere) is no address to dial, so it becomes the host the Worker service advertises. */
static void advertised_data_address(struct worker *w, int k) {
    const char *a = comm_listener_address(w->listeners[k]);
    const char *colon = strrchr(a, ':');
    size_t host_len = colon ? (size_t)(colon - a) : 0;
    int wildcard = host_len == 0 || (host_len == 7 && strncmp(a, "0.0.0.0", 7) == 0) ||
                   (host_len == 4 && strncmp(a, "[::]", 4) == 0) ||
                   (host_len == 2 && strncmp(a, "::", 2) == 0);
    char *out = w->data_addresses[k];
    if (!wildcard || !colon) {
        snprintf(out, COMM_ADDR_MAX, "%s", a);
        return;
    }
    const char *wcolon = strrchr(w->address, ':');
    int wlen = wcolon ? (int)(wcolon - w->address) : (int)strlen(w->address);
    snprintf(out, COMM_ADDR_MAX, "%.*s%s", wlen, w->address, colon);
}

/* ---- the way down ---- */

static void handle_closed(uv_handle_t *h) { (void)h; }

static void pump_stopped(void *arg) {
    struct worker *w = arg;
    w->pump = NULL;
    rpc_channel_close(w->coord); // no call of the loop is left on it
    w->coord = NULL;
    uv_close((uv_handle_t *)&w->heartbeat, handle_closed);
    uv_close((uv_handle_t *)&w->sigterm, handle_closed);
    uv_close((uv_handle_t *)&w->sigint, handle_closed);
    uv_close((uv_handle_t *)&w->job_done, handle_closed);
}

static void server_stopped(void *arg) {
    struct worker *w = arg;
    w->server = NULL;
    if (w->pump)
        rpc_pump_stop(w->pump, pump_stopped, w); // cancels a heartbeat in flight
    else
        pump_stopped(w);
}

void worker_shutdown_continue(struct worker *w) {
    if (w->server_down) return;
    w->server_down = 1;
    uv_timer_stop(&w->heartbeat);
    if (w->server)
        rpc_server_shutdown(w->server, server_stopped, w);
    else
        server_stopped(w);
}

static void shutdown_begin(struct worker *w, int exit_code) {
    if (atomic_exchange(&w->shutting_down, 1)) return;
    w->exit_code = exit_code;
    uv_timer_stop(&w->heartbeat);
    int waiting = 0;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished)) continue;
        int run = JOB_RUN;
        atomic_compare_exchange_strong(&j->stop, &run, JOB_STOP_SHUTDOWN);
        job_wake(j); // one holding its state for a next epoch stops waiting
        LOG_INFO("%s: waiting for slot (%d, %d) to stop after its current step", j->id, j->pod,
                 j->slot);
        waiting = 1;
    }
    if (waiting) return; // worker_on_job_done continues once the threads are done
    worker_reap_job(w);
    worker_shutdown_continue(w);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct worker *w = h->data;
    if (atomic_load(&w->shutting_down)) {
        LOG_INFO("%s again: already stopping", strsignal(signum));
        return;
    }
    LOG_INFO("%s: stopping", strsignal(signum));
    shutdown_begin(w, 0);
}

/* ---- start ---- */

/* Under mpirun: MPI first (before any thread), and the identity of our mpirun job, which
 * only its ranks share: the host and the launcher's contact address (unique per live mpirun
 * on a host), else its job namespace. */
static moe_status start_mpi(struct worker *w) {
    if (!w->cfg.mpi && !getenv("OMPI_COMM_WORLD_RANK")) return MOE_OK;
    int rank = 0, size = 0;
    CHECK(comm_mpi_init(&rank, &size));
    const char *id = getenv("OMPI_MCA_orte_hnp_uri");
    if (!id || !id[0]) id = getenv("PMIX_NAMESPACE");
    char fallback[32];
    if (!id || !id[0]) {
        snprintf(fallback, sizeof fallback, "ppid-%d", (int)getppid());
        id = fallback;
    }
    w->mpi_rank = rank;
    w->mpi_size = size;
    snprintf(w->mpi_job, sizeof w->mpi_job, "%.120s/%.130s", w->host, id);
    LOG_INFO("MPI: rank %d of %d in mpirun job %s", rank, size, w->mpi_job);
    return MOE_OK;
}

/* Serve, then join the cluster (blocking: the coordinator may still be starting). */
static moe_status start(struct worker *w) {
    CHECK(rpc_pump_start(&w->pump, w->loop));
    struct rpc_server_config sc = {.listen = w->cfg.listen,
                                   .tls = w->cfg.serve_tls.cert_file ? &w->cfg.serve_tls : NULL,
                                   .client_token = NULL,
                                   .cluster_token = w->token,
                                   .role = "worker"};
    int port = 0;
    CHECK(rpc_server_start(&w->server, w->pump, &sc, worker_methods, worker_n_methods, w, &port));
    advertised_address(w, port);
    CHECK(comm_listener_open(&w->listeners[0], w->cfg.data_listen));
    advertised_data_address(w, 0);
    /* a second slot's listener, on the same host and any port (mpi pods never double up) */
    if (!w->mpi_size) {
        char extra[COMM_ADDR_MAX];
        snprintf(extra, sizeof extra, "%s", w->cfg.data_listen);
        char *colon = strrchr(extra, ':');
        if (colon) snprintf(colon, sizeof extra - (size_t)(colon - extra), ":0");
        for (int k = 1; k < WORKER_MAX_SLOTS; k++) {
            CHECK(comm_listener_open(&w->listeners[k], extra));
            advertised_data_address(w, k);
        }
    }
    CHECK(rpc_channel_open(&w->coord, w->cfg.coordinator, &w->cfg.tls, w->token, 1));
    LOG_INFO("moed-worker %s listening on %s, data plane on %s (pod %d%s); joining %s",
             MOED_VERSION, w->address, w->data_addresses[0], w->cfg.pod,
             w->mpi_size ? ", under mpirun" : "", w->cfg.coordinator);
    CHECK(worker_register(w));
    if (!w->cfg.dir) CHECK(scratch_make_temp(w));
    LOG_INFO("scratch directory %s", w->scratch);
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    worker_heartbeat_start(w);
    return MOE_OK;
}

int main(int argc, char **argv) {
    blas_select_kernels(argv);
    moe_log_init("worker");
    signal(SIGPIPE, SIG_IGN);

    static struct worker w; // static: zeroed, and large (paths)
    int code = parse_args(&w.cfg, argc, argv);
    if (code) return code < 0 ? 0 : code;
    if (rpc_read_token(w.cfg.token_file, w.token, sizeof w.token) != MOE_OK) {
        LOG_ERROR("%s", moe_errmsg());
        return EXIT_FAILED;
    }
    if (gethostname(w.host, sizeof w.host) != 0) snprintf(w.host, sizeof w.host, "unknown");
    w.host[sizeof w.host - 1] = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    w.cpus = w.cfg.threads > 0 ? w.cfg.threads : (int)(cores > 0 ? cores : 1);
    w.heartbeat_ms = 1000;
    if (w.cfg.dir && scratch_use_dir(&w) != MOE_OK) {
        LOG_ERROR("%s", moe_errmsg());
        return EXIT_FAILED;
    }
    if (start_mpi(&w) != MOE_OK) {
        LOG_ERROR("%s", moe_errmsg());
        return EXIT_FAILED;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    w.loop = &loop;
    uv_mutex_init(&w.id_mu);
    atomic_init(&w.shutting_down, 0);
    uv_timer_init(&loop, &w.heartbeat);
    w.heartbeat.data = &w;
    uv_async_init(&loop, &w.job_done, worker_on_job_done);
    w.job_done.data = &w;
    uv_signal_init(&loop, &w.sigterm);
    uv_signal_init(&loop, &w.sigint);
    w.sigterm.data = w.sigint.data = &w;

    if (start(&w) != MOE_OK) {
        LOG_ERROR("%s", moe_errmsg());
        shutdown_begin(&w, EXIT_FAILED);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) LOG_WARN("the event loop closed with handles still open");
    uv_mutex_destroy(&w.id_mu);
    for (int k = 0; k < WORKER_MAX_SLOTS; k++)
        if (w.listeners[k]) comm_listener_close(w.listeners[k]);
    if (w.mpi_size) comm_mpi_finalize();
    scratch_remove(&w);
    rpc_shutdown_library();
    LOG_INFO("stopped");
    return w.exit_code;
}
