/*
 * coordinator.c — the coordinator's process: its flags, start, the monitor's tick, stop
 * (see coordinator.h).
 */
#include "coordinator.h"

#include "../common/clock.h"
#include "../common/fileio.h"
#include "../common/log.h"
#include "../common/netaddr.h"
#include "../common/sdnotify.h"
#include "../proto/health.h"
#include "handlers/handlers.h"
#include "handlers/http.h"
#include "handlers/metrics.h"
#include "policy/export.h"
#include "policy/faults.h"
#include "policy/membership.h"
#include "policy/recovery.h"
#include "policy/retention.h"
#include "policy/schedule.h"
#include "state/jobs.h"
#include "state/models.h"
#include "state/workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE_LOCK_WAIT_S 10.0 // a restart waits this long for a dying predecessor's lock

#define CFG(field) KNOB_AT(struct coordinator_config, field)
#define XSTR(x) STR(x)
#define STR(x) #x

const struct knob coordinator_knobs[] = {
    {"dir", NULL, KNOB_STR, CFG(dir), "", 0, 0, NULL, "DIR",
     "where jobs are stored: RocksDB in DIR/db, uploaded models in DIR/models (required)"},
    {"listen", NULL, KNOB_STR, CFG(listen), "127.0.0.1:0", 0, 0, NULL, "HOST:PORT",
     "where the Jobs, Status and Cluster services listen; port 0 picks a free one; 0.0.0.0 "
     "listens everywhere"},
    {"advertise", "MOED_COORDINATOR_ADVERTISE", KNOB_STR, CFG(advertise), "", 0, 0, NULL,
     "HOST[:PORT]", "the address clients and workers dial, as logged and written to --addr-file; "
     "PORT defaults to the bound port; without it, the --listen host, or for a wildcard "
     "--listen this machine's hostname"},
    {"addr-file", NULL, KNOB_STR, CFG(addr_file), "", 0, 0, NULL, "FILE",
     "write the bound address here once serving"},
    {"client-token-file", NULL, KNOB_STR, CFG(client_token_file), "", 0, 0, NULL, "FILE",
     "the token clients must send (one line); without it client calls are not authenticated"},
    {"cluster-token-file", NULL, KNOB_STR, CFG(cluster_token_file), "", 0, 0, NULL, "FILE",
     "the token workers must send (one line); without it worker calls are not authenticated"},
    {"tls-cert", NULL, KNOB_STR, CFG(tls_cert), "", 0, 0, NULL, "FILE",
     "serve TLS with this certificate (PEM; with --tls-key)"},
    {"tls-key", NULL, KNOB_STR, CFG(tls_key), "", 0, 0, NULL, "FILE",
     "the certificate's private key (PEM)"},
    {"worker-tls-ca", NULL, KNOB_STR, CFG(worker_tls_ca), "", 0, 0, NULL, "FILE",
     "verify workers' TLS certificates with this CA when calling them"},
    {"heartbeat-interval-ms", NULL, KNOB_LONG, CFG(heartbeat_interval_ms),
     XSTR(COORD_HEARTBEAT_INTERVAL_MS), 10, 3600000, NULL, "MS", "how often workers heartbeat"},
    {"heartbeat-timeout-ms", NULL, KNOB_LONG, CFG(heartbeat_timeout_ms),
     XSTR(COORD_HEARTBEAT_TIMEOUT_MS), 10, 3600000, NULL, "MS",
     "a worker silent this long is dead (at least twice the interval)"},
    {"idle-heartbeat-interval-ms", NULL, KNOB_LONG, CFG(idle_heartbeat_interval_ms),
     XSTR(COORD_IDLE_HEARTBEAT_INTERVAL_MS), 0, 3600000, NULL, "MS",
     "how often idle workers heartbeat (0: as busy ones; dead after the timeout plus the "
     "difference)"},
    {"idle-heartbeats-per-s", NULL, KNOB_LONG, CFG(idle_heartbeats_per_s),
     XSTR(COORD_IDLE_HEARTBEATS_PER_S), 0, 1000000, NULL, "N",
     "the idle workers' heartbeats a second, at most: past N x the idle interval / 1000 idle "
     "workers, their interval grows with their number, up to a minute (0: fixed)"},
    {"step-reports-per-s", NULL, KNOB_LONG, CFG(step_reports_per_s),
     XSTR(COORD_STEP_REPORTS_PER_S), 0, 1000000, NULL, "N",
     "the training workers' step reports a second, at most: past N busy workers they report "
     "less often than once a second, never less often than the heartbeat interval (0: 1 s)"},
    {"max-assign-attempts", NULL, KNOB_INT, CFG(max_assign_attempts),
     XSTR(COORD_MAX_ASSIGN_ATTEMPTS), 1, 1000, NULL, "N",
     "RunSlot refusals (other than busy or unreachable) before a job fails"},
    {"job-retention-s", NULL, KNOB_LONG, CFG(job_retention_s), XSTR(COORD_JOB_RETENTION_S), 0,
     1e12, NULL, "S", "delete an ended job (its record, steps, events and model) this long after "
     "it ended; 0 keeps ended jobs until `moectl delete`"},
    {"max-finished-jobs", NULL, KNOB_LONG, CFG(max_finished_jobs), XSTR(COORD_MAX_FINISHED_JOBS),
     0, 1e9, NULL, "N", "keep at most N ended jobs, deleting the oldest beyond that; 0: no limit"},
    {"max-events-per-job", NULL, KNOB_LONG, CFG(max_events_per_job),
     XSTR(COORD_MAX_EVENTS_PER_JOB), 0, 1e12, NULL, "N",
     "keep a job's newest N events, deleting older ones (ListEvents); 0: no limit"},
    {"max-steps-per-job", NULL, KNOB_LONG, CFG(max_steps_per_job), XSTR(COORD_MAX_STEPS_PER_JOB),
     0, 1e12, NULL, "N",
     "keep a job's newest N stored steps, deleting older ones (ListSteps); 0: no limit"},
    {"http-listen", NULL, KNOB_STR, CFG(http_listen), "", 0, 0, NULL, "HOST:PORT",
     "serve /metrics (Prometheus) and the live page over HTTP here; port 0 picks a free one; "
     "off when not given (docs/operations.md)"},
    {"http-addr-file", NULL, KNOB_STR, CFG(http_addr_file), "", 0, 0, NULL, "FILE",
     "write the HTTP port's bound address here once serving"},
    {"http-open", NULL, KNOB_BOOL, CFG(http_open), "", 0, 0, NULL, NULL,
     "let /metrics be scraped without the client token (the page's data still needs it)"},
    {"metrics-ended-jobs", NULL, KNOB_LONG, CFG(metrics_ended_jobs),
     XSTR(COORD_METRICS_ENDED_JOBS), 0, 10000, NULL, "N",
     "/metrics shows the active jobs and the N most recently ended"},
    {"log-level", "MOE_LOG_LEVEL", KNOB_CHOICE, CFG(log_level), "info", 0, 0,
     "debug|info|warn|error|off", NULL, "how much to log"},
};
const int coordinator_n_knobs = (int)(sizeof coordinator_knobs / sizeof coordinator_knobs[0]);

/* ---- the monitor ---- */

static void monitor_tick(uv_timer_t *t) {
    struct coordinator *co = t->data;
    int64_t now = moe_wall_ms();
    membership_check(co, now);
    faults_tick(co, now);
    export_poll(co);
    schedule_pass(co);
    retention_tick(co, now);
    retention_trim(co);
    jobs_flush_records(co); // the slots' progress, once a tick
    moe_notify_watchdog(); // a loop that stops ticking is what WatchdogSec= catches
}

/* ---- start ---- */

static moe_status open_store(struct coordinator *co, const char *dir) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create %s: %s", dir, strerror(errno));
    snprintf(co->models_dir, sizeof co->models_dir, "%s/models", dir);
    if (mkdir(co->models_dir, 0700) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create %s: %s", co->models_dir, strerror(errno));
    char db[1100];
    snprintf(db, sizeof db, "%s/db", dir);
    /* A coordinator restarted right after a kill -9 can find its predecessor's lock on the
     * database for a moment, until the kernel has torn all of that process down. */
    moe_status opened = store_open(&co->store, db, 0);
    if (opened != MOE_OK) {
        if (!strstr(moe_errmsg(), "lock")) return opened;
        LOG_WARN("%s; waiting up to %.0f s for it to be released (another coordinator on this "
                 "directory, or the previous one still exiting)", moe_errmsg(), STORE_LOCK_WAIT_S);
        CHECK(store_open(&co->store, db, STORE_LOCK_WAIT_S));
    }
    return MOE_OK;
}

/* The id counters and the cluster id; a new cluster gets a random id. */
static moe_status load_meta(struct coordinator *co) {
    Moed__Store__MetaRecord *meta;
    CHECK(store_meta_get(co->store, &meta));
    co->next_job = meta->next_job > 0 ? meta->next_job : 1;
    co->next_worker = meta->next_worker > 0 ? meta->next_worker : 1;
    snprintf(co->cluster_id, sizeof co->cluster_id, "%s", meta->cluster_id);
    moed__store__meta_record__free_unpacked(meta, NULL);
    if (co->cluster_id[0]) return MOE_OK;
    unsigned char rnd[8];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0x5a, sizeof rnd);
    for (int i = 0; i < 8; i++) snprintf(co->cluster_id + 2 * i, 3, "%02x", rnd[i]);
    return coordinator_save_meta(co);
}

/* Jobs and workers as the store has them. Workers we knew get a full heartbeat timeout from
 * now to show they are still there; their running jobs stay RUNNING meanwhile (principle 5:
 * a restart loses nothing). */
static moe_status load_tables(struct coordinator *co) {
    CHECK(jobs_load(co));
    CHECK(workers_load(co));
    membership_loaded(co);
    for (int i = 0; i < co->n_workers; i++) {
        struct worker *w = co->workers[i];
        struct job *j = w->job_id[0] ? jobs_find(co, w->job_id) : NULL;
        if (j && job_slot_of(j, w->id) >= 0) w->epoch = j->epoch; // the binding it was given
    }
    int running = 0;
    for (int i = 0; i < co->n_jobs; i++)
        running += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    LOG_INFO("store %s/db: %d jobs (%d running), %d workers known, cluster %s", co->cfg.dir,
             co->n_jobs, running, co->n_workers, co->cluster_id);
    return MOE_OK;
}

/* The address we log, write to --addr-file and judge workers' addresses by
 * (docs/operations.md, "Addresses"): --advertise; else the --listen host; for a wildcard
 * listen, this machine's hostname. */
static moe_status advertised_address(struct coordinator *co, int port) {
    const struct coordinator_config *cfg = &co->cfg;
    if (cfg->advertise[0])
        return net_advertise_parse("--advertise", cfg->advertise, port, co->address,
                                   sizeof co->address);
    char host[NET_HOST_MAX];
    int unused;
    if (net_split(cfg->listen, host, sizeof host, &unused) != 0) host[0] = 0;
    if (net_host_is_wildcard(host)) {
        if (gethostname(host, sizeof host) != 0 || !host[0])
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = 0;
        LOG_INFO("--listen %s binds every address; advertising %s:%d (this machine's hostname; "
                 "--advertise HOST[:PORT] names another)", cfg->listen, host, port);
    }
    return net_advertise_parse("the advertised address", host, port, co->address,
                               sizeof co->address);
}

static moe_status serve(struct coordinator *co, uv_loop_t *loop) {
    const struct coordinator_config *cfg = &co->cfg;
    CHECK(rpc_pump_start(&co->pump, loop));
    struct rpc_tls tls = {cfg->tls_cert, cfg->tls_key, NULL};
    struct rpc_server_config sc = {
        .listen = cfg->listen,
        .tls = cfg->tls_cert[0] ? &tls : NULL,
        .client_token = cfg->client_token,
        .cluster_token = cfg->cluster_token,
        .identify = workers_identify, // workers' own credentials (state/workers.c)
        .role = "coordinator",
        .on_done = rpc_stats_on_done, // counted for /metrics
    };
    co->rpc_stats = rpc_stats_new(coordinator_methods, coordinator_n_methods);
    co->health = rpc_health_new(coordinator_health_names, coordinator_n_health_names);
    if (!co->rpc_stats || !co->health) return moe_fail(MOE_ENOMEM, "out of memory");
    sc.health = co->health;
    int port = 0;
    CHECK(rpc_server_start(&co->server, co->pump, &sc, coordinator_methods, coordinator_n_methods,
                           co, &port));
    CHECK(advertised_address(co, port));
    /* the HTTP port first: once the address file is there, all of the coordinator serves */
    if (cfg->http_listen[0]) CHECK(http_service_start(co));
    if (cfg->addr_file[0]) {
        char line[320];
        int n = snprintf(line, sizeof line, "%s\n", co->address);
        CHECK(moe_write_file_atomic(cfg->addr_file, line, (size_t)n, 0644));
    }
    LOG_INFO("listening on %s (%s)", co->address, cfg->tls_cert[0] ? "TLS" : "insecure");
    return MOE_OK;
}

static void on_signal(uv_signal_t *s, int signum) {
    struct coordinator *co = s->data;
    LOG_INFO("signal %d: shutting down", signum);
    coordinator_stop(co);
}

moe_status coordinator_start(struct coordinator *co, uv_loop_t *loop,
                             const struct coordinator_config *cfg) {
    memset(co, 0, sizeof *co);
    co->cfg = *cfg;
    co->loop = loop;
    co->started_ms = moe_wall_ms();
    CHECK(open_store(co, cfg->dir));
    CHECK(load_meta(co));
    CHECK(load_tables(co));
    models_sweep(co); // files of jobs whose deletion was stored just before a crash
    CHECK(serve(co, loop));
    uv_timer_init(loop, &co->monitor);
    co->monitor.data = co;
    long tick = cfg->heartbeat_timeout_ms / 10;
    if (tick < 50) tick = 50;
    if (tick > 1000) tick = 1000;
    uv_timer_start(&co->monitor, monitor_tick, (uint64_t)tick, (uint64_t)tick);
    uv_signal_init(loop, &co->sig_term);
    uv_signal_init(loop, &co->sig_int);
    co->sig_term.data = co->sig_int.data = co;
    uv_signal_start(&co->sig_term, on_signal, SIGTERM);
    uv_signal_start(&co->sig_int, on_signal, SIGINT);
    recovery_resume(co); // recoveries the previous process had not finished: fenced again
    schedule_pass(co);
    rpc_health_set(co->health, 1);
    return MOE_OK;
}

/* ---- stop ---- */

static void pump_stopped(void *arg) {
    struct coordinator *co = arg;
    jobs_flush_records(co); // a clean stop loses no progress
    for (int i = 0; i < co->n_jobs; i++) job_free(co->jobs[i]);
    free(co->jobs);
    co->jobs = NULL;
    co->n_jobs = 0;
    workers_free(co);
    store_close(co->store);
    co->store = NULL;
    rpc_stats_free(co->rpc_stats);
    co->rpc_stats = NULL;
    rpc_health_free(co->health);
    co->health = NULL;
    LOG_INFO("stopped");
}

static void server_stopped(void *arg) {
    struct coordinator *co = arg;
    rpc_pump_stop(co->pump, pump_stopped, co);
}

void coordinator_stop(struct coordinator *co) {
    if (co->stopping) return;
    co->stopping = 1;
    rpc_health_set(co->health, 0); // probes see it go before the port does
    moe_notify_stopping("stopping");
    uv_close((uv_handle_t *)&co->monitor, NULL);
    uv_close((uv_handle_t *)&co->sig_term, NULL);
    uv_close((uv_handle_t *)&co->sig_int, NULL);
    http_service_stop(co); // before the tables its requests read go
    rpc_server_shutdown(co->server, server_stopped, co);
}
