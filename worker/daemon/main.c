/*
 * moed-worker — the worker daemon (see worker.h for what it owns).
 *
 *   moed-worker --coordinator HOST:PORT --cluster-token-file FILE [--listen 127.0.0.1:0]
 *               [--advertise HOST[:PORT]] [--data-advertise HOST] [--pod N] [--threads N]
 *               [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
 *               [--dir SCRATCH_DIR] [--data-listen HOST:PORT] [--mpi] [--data-root DIR ...]
 *               [--log-level debug|info|warn|error|off]
 *
 * main.c: the command line and environment (one knob table: --help, the defaults and the
 * checks all come from it), the data roots (opened once, before anything is served), the
 * scratch directory, starting the loop, reaping a job whose
 * thread is done, and the orderly way down on SIGTERM/SIGINT: stop the job and join its
 * thread, shut the server down, stop the pump, close the handles, exit 0.
 * Under mpirun (OMPI_COMM_WORLD_RANK set) or with --mpi, MPI is initialised first thing and
 * the rank, size and mpirun job are registered: the ranks of one mpirun job are one pod.
 * Exit codes: 0 stopped by a signal, or after --help; 1 could not start or join (coordinator
 * unreachable for 30 s, the cluster token refused, the address in use, MPI would not start);
 * 2 bad command line (one line on stderr names the flag).
 */
#include "worker.h"

#include "../../common/blas_select.h"
#include "../../common/fileio.h"
#include "../../common/knobs.h"
#include "../../common/log.h"
#include "../../common/netaddr.h"
#include "../../common/sdnotify.h"
#include "../../proto/health.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_FAILED 1
#define EXIT_USAGE 2

/* ---- the command line ---- */

#define AT(field) KNOB_AT(struct worker_config, field)
static const struct knob knobs[] = {
    {"coordinator", NULL, KNOB_STR, AT(coordinator), "", 0, 0, NULL, "HOST:PORT",
     "the coordinator's Cluster service (required)"},
    {"cluster-token-file", NULL, KNOB_STR, AT(token_file), "", 0, 0, NULL, "FILE",
     "the cluster token, one line (required)"},
    {"listen", NULL, KNOB_STR, AT(listen), "127.0.0.1:0", 0, 0, NULL, "HOST:PORT",
     "where the Worker service listens; port 0 picks a free port; 0.0.0.0 listens everywhere"},
    {"advertise", "MOED_ADVERTISE", KNOB_STR, AT(advertise), "", 0, 0, NULL, "HOST[:PORT]",
     "the address the coordinator and the other workers dial for the Worker service; PORT "
     "defaults to the bound port; without it, the --listen host, or for a wildcard --listen "
     "this machine's hostname (127.0.0.1 when the coordinator is on loopback)"},
    {"data-advertise", "MOED_DATA_ADVERTISE", KNOB_STR, AT(data_advertise), "", 0, 0, NULL,
     "HOST", "the host the other workers dial for the data plane's listeners; without it, the "
     "--data-listen host, or for a wildcard the advertised host"},
    {"pod", NULL, KNOB_INT, AT(pod), "0", 0, 1 << 20, NULL, "N",
     "the pod this worker belongs to"},
    {"threads", NULL, KNOB_INT, AT(threads), "", 1, 1 << 20, NULL, "N",
     "OpenMP threads for training; all cores when not given"},
    {"tls-ca", NULL, KNOB_STR, AT(tls_ca), "", 0, 0, NULL, "FILE",
     "verify the coordinator's TLS certificate with this CA"},
    {"tls-cert", NULL, KNOB_STR, AT(tls_cert), "", 0, 0, NULL, "FILE",
     "serve the Worker service over TLS with this PEM certificate; needs --tls-key"},
    {"tls-key", NULL, KNOB_STR, AT(tls_key), "", 0, 0, NULL, "FILE",
     "the PEM private key of --tls-cert"},
    {"dir", NULL, KNOB_STR, AT(dir), "", 0, 0, NULL, "DIR",
     "scratch directory for trained models; without it, a temporary directory under "
     "$TMPDIR, removed at exit"},
    {"export-dir", NULL, KNOB_STR, AT(export_dir), "", 0, 0, NULL, "DIR",
     "where the state of a job that cannot go on is written when its spec names no "
     "run.export_dir; without it, DIR/exports under --dir (docs/recovery.md)"},
    {"data-listen", NULL, KNOB_STR, AT(data_listen), "", 0, 0, NULL, "HOST:PORT",
     "the data plane's listener, where the other slots of a job connect; port 0 picks a "
     "free port; without it, the --listen host and port 0"},
    {"mpi", NULL, KNOB_BOOL, AT(mpi), "", 0, 0, NULL, NULL,
     "initialise MPI and register the rank (implied under mpirun, which sets "
     "OMPI_COMM_WORLD_RANK)"},
    {"data-root", "MOED_DATA_ROOTS", KNOB_LIST, AT(data_roots), "", 0, 0, NULL, "DIR",
     "a directory whose files jobs may train on: every data.sources path must lie beneath one "
     "(symlinks may not leave it); without any, the worker refuses every data source"},
    {"memory-limit-mb", "MOED_MEMORY_LIMIT_MB", KNOB_LONG, AT(memory_limit_mb), "0", 0,
     1L << 40, NULL, "MB",
     "refuse a slot whose model, gradients, optimizer moments and activations need more than "
     "this; 0: 90% of this host's physical memory"},
    {"spare-arena-mb", "MOED_SPARE_ARENA_MB", KNOB_LONG, AT(spare_arena_mb), "4096", 0,
     1L << 40, NULL, "MB",
     "while idle, hold up to this much memory mapped and faulted in for the slot of a running "
     "job that a recovery may give this worker (its state arrives faster); 0: none"},
    {"log-level", "MOE_LOG_LEVEL", KNOB_CHOICE, AT(log_level), "info", 0, 0,
     "debug|info|warn|error|off", NULL, "how much to log to stderr"},
    {NULL, "TMPDIR", KNOB_STR, AT(tmpdir), "/tmp", 0, 0, NULL, "DIR",
     "where the temporary scratch directory goes when --dir is not given"},
};
#undef AT
static const int n_knobs = (int)(sizeof knobs / sizeof knobs[0]);

static void usage(FILE *to) {
    fprintf(to, "usage: moed-worker --coordinator HOST:PORT --cluster-token-file FILE [options]\n"
                "\n"
                "Joins a moed cluster and trains the job slots its coordinator assigns.\n"
                "\n");
    knobs_print(to, knobs, n_knobs, 0);
    fprintf(to, "\nEnvironment:\n");
    knobs_print(to, knobs, n_knobs, 1);
    knobs_print(to, comm_knobs, comm_n_knobs, 1); // the data plane's (worker/comm)
    knobs_print(to, blas_knobs, blas_n_knobs, 1);
}

/* --advertise and --data-advertise are dialable (never a wildcard), and --data-listen without a
 * value follows --listen's host (binding everywhere binds the data plane everywhere too). */
static moe_status check_addresses(struct worker_config *cfg) {
    char out[300], host[NET_HOST_MAX];
    int port;
    if (cfg->advertise[0])
        CHECK(net_advertise_parse("--advertise", cfg->advertise, 1, out, sizeof out));
    if (cfg->data_advertise[0])
        CHECK(net_advertise_parse("--data-advertise", cfg->data_advertise, -1, out, sizeof out));
    if (net_split(cfg->listen, host, sizeof host, &port) != 0 || port < 0)
        return moe_fail(MOE_EINVAL, "--listen '%s' is not HOST:PORT", cfg->listen);
    if (!cfg->data_listen[0])
        snprintf(cfg->data_listen, sizeof cfg->data_listen, strchr(host, ':') ? "[%s]:0" : "%s:0",
                 host);
    return MOE_OK;
}

/* Defaults, then the environment, then the flags. Returns 0 to go on, -1 after --help, or
 * EXIT_USAGE after saying what is wrong. */
static int parse_args(struct worker_config *cfg, int argc, char **argv) {
    int help = 0;
    moe_status s = knobs_parse(knobs, n_knobs, cfg, argc, argv, &help);
    if (help) {
        usage(stdout);
        return -1;
    }
    if (s != MOE_OK) {
        fprintf(stderr, "moed-worker: %s\n", moe_errmsg());
        return EXIT_USAGE;
    }
    if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
        fprintf(stderr, "moed-worker: --tls-cert and --tls-key go together\n");
        return EXIT_USAGE;
    }
    if (!cfg->coordinator[0] || !cfg->token_file[0]) {
        fprintf(stderr, "moed-worker: --coordinator and --cluster-token-file are required\n");
        return EXIT_USAGE;
    }
    if (check_addresses(cfg) != MOE_OK) {
        fprintf(stderr, "moed-worker: %s\n", moe_errmsg());
        return EXIT_USAGE;
    }
    cfg->tls.ca_file = cfg->tls_ca[0] ? cfg->tls_ca : NULL;
    cfg->serve_tls.cert_file = cfg->tls_cert[0] ? cfg->tls_cert : NULL;
    cfg->serve_tls.key_file = cfg->tls_key[0] ? cfg->tls_key : NULL;
    moe_log_set_level((enum moe_log_level)cfg->log_level);
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
    const char *tmp = w->cfg.tmpdir;
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

/* The operator's credential for InjectFault (moectl chaos): new at each start, readable only
 * by whoever can read our scratch directory (our own user), gone when we stop. */
static moe_status operator_token_write(struct worker *w) {
    CHECK(rpc_new_credential("operator", w->operator_token, sizeof w->operator_token));
    char path[PATH_MAX + 32], line[WORKER_CREDENTIAL_MAX + 1];
    snprintf(path, sizeof path, "%s/%s", w->scratch, OPERATOR_TOKEN_FILE);
    int n = snprintf(line, sizeof line, "%s\n", w->operator_token);
    return moe_write_file_atomic(path, line, (size_t)n, 0600);
}

static void operator_token_remove(struct worker *w) {
    if (!w->scratch[0] || !w->operator_token[0]) return;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", w->scratch, OPERATOR_TOKEN_FILE);
    unlink(path);
}

/* The address the coordinator and the peers dial (docs/operations.md, "Addresses"):
 * --advertise; else the --listen host; for a wildcard listen, this machine's hostname, or
 * 127.0.0.1 when the coordinator is on loopback (the local cluster). */
static moe_status advertised_address(struct worker *w, int port) {
    if (w->cfg.advertise[0])
        return net_advertise_parse("--advertise", w->cfg.advertise, port, w->address,
                                   sizeof w->address);
    char host[NET_HOST_MAX];
    int unused;
    net_split(w->cfg.listen, host, sizeof host, &unused); // checked by check_addresses
    if (net_host_is_wildcard(host)) {
        int local = net_addr_is_loopback(w->cfg.coordinator);
        snprintf(host, sizeof host, "%s", local ? "127.0.0.1" : w->host);
        LOG_INFO("--listen %s binds every address; advertising %s:%d (%s; --advertise "
                 "HOST[:PORT] names another)", w->cfg.listen, host, port,
                 local ? "the coordinator is on loopback" : "this machine's hostname");
    }
    return net_advertise_parse("the advertised address", host, port, w->address,
                               sizeof w->address);
}

/* The host the peers dial our data listeners at: --data-advertise; else the --data-listen
 * host; for a wildcard, the host of our advertised address. */
static void advertised_data_host(struct worker *w) {
    char host[NET_HOST_MAX];
    int port;
    if (w->cfg.data_advertise[0]) {
        snprintf(w->data_host, sizeof w->data_host, "%s", w->cfg.data_advertise);
        return;
    }
    if (net_split(w->cfg.data_listen, host, sizeof host, &port) == 0 &&
        !net_host_is_wildcard(host)) {
        snprintf(w->data_host, sizeof w->data_host, strchr(host, ':') ? "[%s]" : "%s", host);
        return;
    }
    const char *colon = strrchr(w->address, ':');
    snprintf(w->data_host, sizeof w->data_host, "%.*s", (int)(colon - w->address), w->address);
}

/* Listener k's address as peers dial it: the data host and the port it bound. */
static void advertised_data_address(struct worker *w, int k) {
    const char *a = comm_listener_address(w->listeners[k]);
    const char *colon = strrchr(a, ':');
    snprintf(w->data_addresses[k], COMM_ADDR_MAX, "%.250s%.8s", w->data_host,
             colon ? colon : ":0");
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
    rpc_health_free(w->health);
    w->health = NULL;
    if (w->pump)
        rpc_pump_stop(w->pump, pump_stopped, w); // cancels a heartbeat in flight
    else
        pump_stopped(w);
}

/* The jobs are gone: take the daemon down (server, pump, handles). */
static void shutdown_continue(struct worker *w) {
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
    rpc_health_set(w->health, 0); // draining: probes see NOT_SERVING while the jobs stop
    moe_notify_stopping("stopping");
    int waiting = 0;
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || (atomic_load(&j->finished) && !j->exporting)) continue;
        job_stop(j, JOB_STOP_SHUTDOWN); // an export in flight ends in on_job_done too
        LOG_INFO("%s: waiting for slot (%d, %d) to stop after its current step", j->id, j->pod,
                 j->slot);
        waiting = 1;
    }
    if (waiting) return; // on_job_done goes on once the threads are done
    worker_reap_jobs(w);
    shutdown_continue(w);
}

/* A training thread is done (wake-ups coalesce, so look at the whole state rather than
 * count): join it; a worker that has become idle says so at once (the coordinator may bind
 * it), and a shutdown that waited for the jobs goes on. */
static void on_job_done(uv_async_t *a) {
    struct worker *w = a->data;
    int had = !worker_idle(w);
    worker_reap_jobs(w);
    if (had && worker_idle(w)) worker_heartbeat_now(w);
    if (atomic_load(&w->shutting_down) && worker_idle(w)) shutdown_continue(w);
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
                                   .cluster_token = NULL, // it opens nothing here
                                   .identify = worker_identify,
                                   .role = "worker"};
    sc.health = w->health = rpc_health_new(worker_health_names, worker_n_health_names);
    if (!w->health) return moe_fail(MOE_ENOMEM, "out of memory");
    int port = 0;
    CHECK(rpc_server_start(&w->server, w->pump, &sc, worker_methods, worker_n_methods, w, &port));
    CHECK(advertised_address(w, port));
    advertised_data_host(w);
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
    /* the operator token before registering: once the coordinator lists us, `moectl chaos`
     * may read it, and must not find the one a killed predecessor left in the same place */
    if (!w->cfg.dir[0]) CHECK(scratch_make_temp(w));
    CHECK(operator_token_write(w));
    CHECK(worker_register(w));
    rpc_health_set(w->health, 1);
    moe_notify_ready("registered"); // Type=notify (deploy/systemd): ready once registered
    LOG_INFO("scratch directory %s", w->scratch);
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    worker_heartbeat_start(w);
    return MOE_OK;
}

/* The directories jobs may read (docs/security-data-roots.md), each held open from now on;
 * none that holds the daemon's own secrets. */
static moe_status open_data_roots(struct worker *w) {
    const char *dirs[256];
    int n = 0;
    for (const char *v = w->cfg.data_roots; *v; v = knob_list_next(v)) {
        if (n == (int)(sizeof dirs / sizeof dirs[0]))
            return moe_fail(MOE_EINVAL, "more than %d --data-root directories", n);
        dirs[n++] = v;
    }
    CHECK(data_roots_open(&w->roots, dirs, n));
    CHECK(data_roots_guard(w->roots, w->cfg.token_file, "--cluster-token-file"));
    if (w->cfg.tls_key[0]) CHECK(data_roots_guard(w->roots, w->cfg.tls_key, "--tls-key"));
    for (int i = 0; i < n; i++) LOG_INFO("data root %s", data_roots_dir(w->roots, i));
    if (n == 0) LOG_WARN("no --data-root: jobs cannot read any data file on this worker");
    return MOE_OK;
}

/* What the daemon needs before its loop: the token, the data roots, the host, the cores, the
 * scratch directory given with --dir, and MPI (before any thread). */
static moe_status prepare(struct worker *w) {
    CHECK(rpc_read_token(w->cfg.token_file, w->token, sizeof w->token));
    CHECK(open_data_roots(w));
    if (gethostname(w->host, sizeof w->host) != 0) snprintf(w->host, sizeof w->host, "unknown");
    w->host[sizeof w->host - 1] = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    w->cpus = w->cfg.threads > 0 ? w->cfg.threads : (int)(cores > 0 ? cores : 1);
    w->heartbeat_ms = 1000;
    if (w->cfg.dir[0]) CHECK(scratch_use_dir(w));
    return start_mpi(w);
}

static void init_loop(struct worker *w, uv_loop_t *loop) {
    uv_loop_init(loop);
    w->loop = loop;
    uv_mutex_init(&w->id_mu);
    atomic_init(&w->shutting_down, 0);
    uv_timer_init(loop, &w->heartbeat);
    w->heartbeat.data = w;
    uv_async_init(loop, &w->job_done, on_job_done);
    w->job_done.data = w;
    uv_signal_init(loop, &w->sigterm);
    uv_signal_init(loop, &w->sigint);
    w->sigterm.data = w->sigint.data = w;
}

int main(int argc, char **argv) {
    blas_select_kernels(argv);
    moe_log_init("worker");
    signal(SIGPIPE, SIG_IGN);

    static struct worker w; // static: zeroed, and large (paths)
    int code = parse_args(&w.cfg, argc, argv);
    if (code) return code < 0 ? 0 : code;
    if (prepare(&w) != MOE_OK) {
        LOG_ERROR("%s", moe_errmsg());
        data_roots_close(w.roots);
        return EXIT_FAILED;
    }
    uv_loop_t loop;
    init_loop(&w, &loop);
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
    operator_token_remove(&w);
    scratch_remove(&w);
    data_roots_close(w.roots);
    rpc_shutdown_library();
    LOG_INFO("stopped");
    return w.exit_code;
}
