/*
 * state.h — what the coordinator knows: struct coordinator, passed to every function of every
 * layer of coordinator/.
 *
 * coordinator/ is three layers that only call downward, one folder each:
 *   handlers/  the RPC handlers: decode a request, call one policy, answer. Nothing else.
 *              Also the optional HTTP port (http.h): /metrics and the live page, read-only.
 *   policy/    every decision: admitting and binding jobs (schedule.c, placement.c), what a
 *              worker's registration and heartbeats mean (membership.c), what its reports mean
 *              (reports.c), whether a lost slot is recovered or fails its job (faults.c), how a
 *              recovery goes (recovery.c, recovery_plan.c, replicas.c).
 *   state/     the tables and their durable record: jobs and their state machine (jobs.c,
 *              transitions.c), workers (workers.c), events and watchers (events.c), uploaded
 *              models (models.c), RocksDB (store.c), and the calls that go out to workers
 *              (worker_calls.c), durations counted for /metrics (histogram.c). State
 *              records decisions; it never makes one.
 * The process around them (coordinator.c: start, the monitor's tick, stop; main.c: flags) sits
 * on top. docs/architecture.md walks one step through these files.
 *
 * Owns: struct coordinator — the configuration, the job and worker tables, the store, the pump
 * the outgoing calls go through, and the process's handles. Defined here, at the bottom, so
 * that each layer can take it without including one above.
 * Threads: one. Everything of the coordinator runs on its libuv loop thread: no locks.
 */
#ifndef MOE_COORD_STATE_H
#define MOE_COORD_STATE_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "../../proto/rpc.h"
#include "proto/moed.pb-c.h"
#include "store.h"

#include <stdint.h>
#include <uv.h>

/* Every knob of the coordinator; main.c's table (coordinator_knobs) fills it. */
struct coordinator_config {
    char listen[160];             // --listen, "127.0.0.1:0" picks a port
    char dir[1024];               // --dir: RocksDB and uploaded models live here
    char addr_file[1024];         // --addr-file: the bound address is written here when ready
    char advertise[300];          // --advertise HOST[:PORT]: the address we log, write and
                                  // judge workers by ("": derived from listen, coordinator.c)
    char client_token_file[1024], cluster_token_file[1024];
    char client_token[256];       // read from client_token_file; "" disables the check
    char cluster_token[256];      // read from cluster_token_file; "" disables the check
    char tls_cert[1024], tls_key[1024]; // --tls-cert/--tls-key: serve TLS
    char worker_tls_ca[1024];     // --worker-tls-ca: verify workers' TLS when calling them
    long heartbeat_interval_ms;   // told to workers at registration
    long heartbeat_timeout_ms;    // a worker silent this long is dead
    long idle_heartbeat_interval_ms; // told to workers: how seldom they heartbeat while idle
                                  // (an idle worker is allowed this much longer, less the
                                  // interval, before it is dead)
    long idle_heartbeats_per_s;   // the idle workers' heartbeats together, at most: their
                                  // interval grows with their number (0: fixed interval)
    long step_reports_per_s;      // the training workers' step reports together, at most:
                                  // their interval grows up to the heartbeat interval (0: 1 s)
    int max_assign_attempts;      // RunSlot refusals before a job fails
    long job_retention_s;         // an ended job is deleted this long after it ended (0: kept)
    long max_finished_jobs;       // the oldest ended jobs beyond this many are deleted (0: all)
    long max_events_per_job;      // a job keeps its newest this many events (0: all)
    long max_steps_per_job;       // ... and its newest this many stored steps (0: all)
    int log_level;                // enum moe_log_level
    /* the HTTP port (handlers/http_service.c): /metrics and the live page; off when "" */
    char http_listen[160];        // --http-listen HOST:PORT, port 0 picks a free one
    char http_addr_file[1024];    // --http-addr-file: its bound address is written here
    int http_open;                // --http-open: /metrics is served without the client token
    long metrics_ended_jobs;      // --metrics-ended-jobs: ended jobs /metrics still shows
};

/* Defaults (docs/operations.md): a dead worker is noticed within 2 s, and the check keeps
 * room for three missed heartbeats. */
#define COORD_HEARTBEAT_INTERVAL_MS 500
#define COORD_HEARTBEAT_TIMEOUT_MS 2000
#define COORD_IDLE_HEARTBEAT_INTERVAL_MS 5000
/* 200 idle heartbeats a second cost a few percent of a core (~100-150 us each); below 1,000
 * idle workers the interval above holds, at 10,000 they heartbeat every 50 s. The interval
 * the budget gives is never longer than a minute. */
#define COORD_IDLE_HEARTBEATS_PER_S 200
#define COORD_IDLE_HEARTBEAT_MAX_MS 60000
/* Step reports: once a second each (worker/daemon/report.c) up to 1,000 training workers,
 * then less often, but never less often than the heartbeat interval: a report is the
 * worker's heartbeat, and a hung worker is still dead after the timeout. */
#define COORD_STEP_REPORTS_PER_S 1000
#define COORD_REPORT_INTERVAL_MIN_MS 1000
#define COORD_MAX_ASSIGN_ATTEMPTS 3
/* Retention (docs/operations.md): an ended job stays a week, and at most this many stay
 * (what keeps the tables, and every page of ListJobs, bounded). */
#define COORD_JOB_RETENTION_S 604800 // 7 days
#define COORD_MAX_FINISHED_JOBS 10000
/* ... and a job, however long it runs or often it recovers, keeps this much history: an event
 * or a step is a few hundred bytes, so at most ~5 MB and ~300 MB of store a job. */
#define COORD_MAX_EVENTS_PER_JOB 20000
#define COORD_MAX_STEPS_PER_JOB 1000000
#define COORD_METRICS_ENDED_JOBS 20 // the most recently ended jobs /metrics shows

#define DATA_ADDR_MAX 300 // a worker's data-plane address (worker/comm COMM_ADDR_MAX)

struct job;    // jobs.h
struct worker; // workers.h
struct http_service; // handlers/http_service.c
struct rpc_stats;    // handlers/metrics.c
struct rpc_health;   // proto/health.h

struct coordinator {
    struct coordinator_config cfg;
    uv_loop_t *loop;
    struct rpc_pump *pump;     // the outgoing calls (worker_calls.c) and the server's
    struct rpc_server *server;
    char address[300];         // host:port as advertised (the port actually bound)
    struct store *store;
    char models_dir[1100];     // uploaded models (models.c)
    long next_job, next_worker;
    char cluster_id[40];
    struct job **jobs;         // in submission order
    int n_jobs, cap_jobs;
    struct worker **workers;   // in registration order
    int n_workers, cap_workers;
    struct worker *workers_by_id; // the same workers, by id (uthash; workers.c)
    struct worker *workers_by_address; // the last registered at each address (workers.c)
    uv_timer_t monitor;        // the heartbeat monitor's tick (coordinator.c)
    int64_t checked_ms;        // when membership_check last ran (0: never)
    long idle_interval_ms;     // the idle interval told now (membership.c; 0: not yet counted)
    long report_interval_ms;   // the step report interval told now (membership.c; 0: not yet)
    uv_signal_t sig_term, sig_int;
    int64_t started_ms;
    int stopping;
    uint64_t steps_reported;   // step reports handled since start (the bench reads it)
    uint64_t recovery_calls;   // numbers the rounds of recovery calls (stale replies are dropped)
    struct http_service *http; // the HTTP port, when --http-listen asks for one
    char http_address[160];    //   host:port it bound
    struct rpc_stats *rpc_stats; // the server's calls by method and code (/metrics)
    struct rpc_health *health;   // grpc.health.v1: SERVING from start until stopping
};

/* The meta record: the id counters and the cluster id. */
void coordinator_batch_meta(struct store_batch *b, const struct coordinator *co);
moe_status coordinator_save_meta(struct coordinator *co);

/* Deep copy of a protobuf-c message (pack + unpack); NULL when out of memory. */
ProtobufCMessage *pb_clone(const ProtobufCMessage *m);

#endif
