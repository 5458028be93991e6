/*
 * coordinator.h — the single controller: jobs, workers, and every decision about them.
 *
 * Owns: the job table (spec, state, binding of each logical slot to a worker, last metrics,
 * recent events, watchers), the worker table (address, pod, health from heartbeats), the
 * scheduler that binds queued jobs to idle workers, failure detection (heartbeat timeout), and
 * the durable record of all of it in RocksDB (store.h). A decision is written to the store
 * before it is acted on or announced, so a coordinator killed at any point restarts into a
 * state it had already promised. Everything runs on one libuv loop thread: no locks.
 * Never: touches tensors, reads training data, or exits on a bad request. Workers own the
 * tensors; the coordinator only tells them which slot to play and records what they report.
 *
 * State machine of a job (docs/protocol.md):
 *   QUEUED --schedule (every slot bound, epoch+1)--> RUNNING
 *   RUNNING --model uploaded + every slot ended ok--> SUCCEEDED
 *      |                    |--any slot's worker dead / any slot's error--> FAILED
 *      '--cancel--> CANCELLED <--cancel--'
 * A job's mesh is pods x slots; each logical slot (p, s) is played by one worker, chosen by
 * placement.c. Slot (0, 0) speaks for the job (its loss, its step); every slot reports its own
 * progress and data-plane numbers (struct binding).
 *   coordinator.c  the tables, persistence, events and watchers, submit, cancel, the
 *                  heartbeat monitor, start and stop
 *   placement.c    which idle workers play a job's slots; whether a mesh can be placed at all
 *   schedule.c     binding queued jobs in a new epoch, RunSlot and its answers
 *   failure.c      how a running job ends badly: StopJob, a slot's failure, a dead worker
 *   services.c     the RPC handlers;  store.c  RocksDB
 */
#ifndef MOE_COORDINATOR_H
#define MOE_COORDINATOR_H

#include "../common/status.h"
#include "../proto/rpc.h"
#include "proto/moed.pb-c.h"
#include "store.h"

#include <stdint.h>
#include <uv.h>

#define JOB_RECENT_EVENTS 32 // kept in memory per job for GetJob / a new watcher

/* Every knob of the coordinator, with its default in coordinator_config_defaults. */
struct coordinator_config {
    char listen[160];             // --listen, "127.0.0.1:0" picks a port
    char dir[1024];               // --dir: RocksDB and uploaded models live here
    char addr_file[1024];         // --addr-file: the bound address is written here when ready
    char client_token[256];       // from --client-token-file; "" disables the check
    char cluster_token[256];      // from --cluster-token-file; "" disables the check
    char tls_cert[1024], tls_key[1024]; // --tls-cert/--tls-key: serve TLS
    char worker_tls_ca[1024];     // --worker-tls-ca: verify workers' TLS when calling them
    long heartbeat_interval_ms;   // told to workers at registration
    long heartbeat_timeout_ms;    // a worker silent this long is dead
    int max_assign_attempts;      // RunSlot refusals before a job fails
};

void coordinator_config_defaults(struct coordinator_config *c);

#define DATA_ADDR_MAX 300 // a worker's data-plane address (worker/comm COMM_ADDR_MAX)

/* Who plays one logical slot in the job's current epoch, and how that slot is doing. */
struct binding {
    char worker_id[24];
    char address[160];             // its Worker service
    char data_address[DATA_ADDR_MAX]; // its data-plane listener
    int mpi_rank;                  // backend mpi: its rank in its pod's MPI job
    /* progress in this epoch (SlotStatus; persisted with the job record) */
    long step;
    double step_seconds, comm_seconds;
    uint64_t bytes_alltoall, bytes_allreduce;   // the last step's
    uint64_t total_alltoall, total_allreduce;   // summed over the epoch's reported steps
    int ended, ok;                 // the worker reported the slot's end (a decision: synced)
    char error[256];
    /* not persisted */
    int running;                   // RunSlot accepted in this epoch
};

struct watcher {
    struct rpc_call *call;
    struct job *job;
    struct watcher *prev, *next;
};

struct job {
    long num;                  // N of "job-N"
    char id[24];
    char name[128];
    Moed__V1__JobState state;
    long step, total_steps;
    double loss, val_loss;
    int64_t created_ms, started_ms, finished_ms;
    char error[768];
    char *spec_json;
    int pods, slots;
    char backend[16];          // mesh.backend: "tcp" or "mpi"
    double timeout_s;          // mesh.timeout_s, told to the workers
    uint64_t epoch;            // +1 each time the job is bound; 0 while never bound
    struct binding *bindings;  // (pods * slots), slot (p, s) at p * slots + s
    int64_t model_bytes;       // > 0 once the model is uploaded and checked
    int64_t next_event;
    /* not persisted */
    int assign_attempts;
    int n_running;                            // slots whose RunSlot was accepted this epoch
    int64_t failing_ms;                       // a slot failed at this time: the job fails once
                                              // the others answered (coordinator_slot_ended)
    int first_failed;                         //   that slot, and what it said
    char first_failure[512];
    Moed__V1__StepMetrics *last;              // a private copy of the latest step's metrics
    Moed__V1__Event *recent[JOB_RECENT_EVENTS]; // ring of the latest events, private copies
    int n_recent, recent_head;
    double sec_per_step;                      // moving average, for the ETA
    struct watcher *watchers;
    int upload_fd;                            // model upload in progress (-1: none)
    int64_t upload_offset;
};

struct worker {
    long num;                  // N of "w-N"
    char id[24];
    char address[160];
    int pod;
    Moed__V1__WorkerState state;
    char version[32], host[128];
    int pid, cpus;
    char data_address[DATA_ADDR_MAX]; // its data-plane listener
    int mpi_rank, mpi_size;    // under mpirun (mpi_size 0: not)
    char mpi_job[256];         // which mpirun job: equal for the ranks of one pod only
    int64_t registered_ms, last_heartbeat_ms;
    char job_id[24];           // the job whose slot it plays (or is finishing); "" when free
    int slot;
    uint64_t epoch;            // the epoch of job_id it was bound in (0: unknown, after a
                               // coordinator restart until it re-registers)
    struct rpc_channel *channel; // to its Worker service
    int confirmed;             // registered with this coordinator process (not only loaded)
    int awaiting_idle;         // refused a job as busy: not schedulable until a heartbeat
                               // shows it idle
};

struct coordinator {
    struct coordinator_config cfg;
    uv_loop_t *loop;
    struct rpc_pump *pump;
    struct rpc_server *server;
    char address[160];         // host:port actually bound
    struct store *store;
    char models_dir[1100];
    long next_job, next_worker;
    char cluster_id[40];
    struct job **jobs;         // in submission order
    int n_jobs, cap_jobs;
    struct worker **workers;   // in registration order
    int n_workers, cap_workers;
    uv_timer_t monitor;        // heartbeat timeouts
    uv_signal_t sig_term, sig_int;
    int64_t started_ms;
    int stopping;
    uint64_t steps_reported;   // step reports handled since start (the bench reads it)
};

/* Loads the store, binds the server and writes the address file. */
moe_status coordinator_start(struct coordinator *co, uv_loop_t *loop,
                             const struct coordinator_config *cfg);
/* Stops serving and releases everything; the loop then runs dry. */
void coordinator_stop(struct coordinator *co);

/* ---- used by the service handlers (services.c) ---- */

int64_t now_ms(void);
struct job *coordinator_find_job(struct coordinator *co, const char *id);
struct worker *coordinator_find_worker(struct coordinator *co, const char *id);
int job_is_final(const struct job *j);
const char *job_state_name(Moed__V1__JobState s);

/* Accepts a validated spec as a new QUEUED job (stored before it is returned). */
moe_status coordinator_submit(struct coordinator *co, const char *spec_text, size_t len,
                              char *const *overrides, size_t n_overrides, struct job **out);
/* Cancels a queued or running job; MOE_EINVAL if it already ended. */
moe_status coordinator_cancel(struct coordinator *co, struct job *j);
/* Moves a job to a final state with an event, tells watchers and frees its worker. */
moe_status coordinator_finish_job(struct coordinator *co, struct job *j, Moed__V1__JobState state,
                                  const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Appends an event to a job (stored now) and sends it to the job's watchers. */
moe_status coordinator_event(struct coordinator *co, struct job *j, int sync, const char *kind,
                             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same, committed in one batch with the records already in `b` (consumed). */
moe_status coordinator_event_batch(struct coordinator *co, struct job *j, struct store_batch *b,
                                   int sync, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Adds a worker's record to a store batch. */
void coordinator_batch_worker(struct store_batch *b, const struct worker *w);
/* The index (p * slots + s) of the slot `w` plays in j's current epoch, or -1. */
int job_slot_of(const struct job *j, const struct worker *w);
/* Fails a running job because of slot k (its worker named), stops the other slots. */
void coordinator_fail_slot(struct coordinator *co, struct job *j, int k, const char *kind,
                           const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A slot of a running job ended badly (`error`, at `step`). A 1 x 1 job fails now. A mesh
 * stops its other slots and fails once every slot has answered, or MESH_FAILURE_WINDOW_MS
 * after the first failure: the peers of a dead slot all report losing it, and the slot that
 * never answered is the one the reason names. */
void coordinator_slot_failed(struct coordinator *co, struct job *j, int k, long step,
                             const char *error);
/* Decides a failing mesh job whose window has passed (the monitor's tick). */
void coordinator_check_failing(struct coordinator *co, struct job *j, int64_t now);
#define MESH_FAILURE_WINDOW_MS 2000

/* Tells every worker still bound to j to stop it (StopJob, asynchronous). */
void coordinator_stop_workers(struct coordinator *co, struct job *j);
void coordinator_stop_worker(struct coordinator *co, struct job *j, struct worker *w);
/* Frees the workers bound to j; with still_running, those still running it stay bound until
 * they report its end (or a heartbeat shows them idle). */
void coordinator_release_workers(struct coordinator *co, struct job *j, int still_running);
/* The monitor found w silent for silent_ms: it is dead, and the slot it played has failed. */
void coordinator_worker_dead(struct coordinator *co, struct worker *w, int64_t silent_ms);
/* schedule.c: binds queued jobs to idle workers, oldest job first. */
void coordinator_schedule(struct coordinator *co);
/* Adds the job's record (info, spec, event counter) to a store batch. */
void coordinator_batch_job(struct store_batch *b, const struct job *j);
/* A new worker record with the next id ("w-N"); the caller fills and saves it. */
moe_status coordinator_add_worker(struct coordinator *co, struct worker **out);
/* (Re)opens the channel to a worker's Worker service at w->address. */
moe_status coordinator_connect_worker(struct coordinator *co, struct worker *w);
/* Persists the id counters and the cluster id. */
moe_status coordinator_save_meta(struct coordinator *co);
/* Persists a worker's record. */
moe_status coordinator_save_worker(struct coordinator *co, const struct worker *w);
/* Sends a JobUpdate to every watcher of `j`, with `new_event` if not NULL; finishes the
 * watchers' streams when the job has ended. */
void coordinator_notify(struct coordinator *co, struct job *j, const Moed__V1__Event *new_event);

/* Protobuf views of a job (pointing into the job; valid until it changes). */
struct job_view {
    Moed__V1__JobInfo info;
    Moed__V1__SlotBinding *bind;
    Moed__V1__SlotBinding **bind_ptrs;
    Moed__V1__SlotStatus *slot;      // every slot of the mesh, pod-major
    Moed__V1__SlotStatus **slot_ptrs;
    size_t n_slots;
};
void job_view_fill(struct job_view *v, const struct job *j);
void job_view_free(struct job_view *v);
double job_eta_seconds(const struct job *j);

/* placement.c: which idle workers play a job's slots. */
/* MOE_EINVAL naming the reason when the mesh can never be placed on the workers registered
 * and alive now (more slots than workers; mpi: too few MPI jobs of `slots` ranks). */
moe_status placement_check(const struct coordinator *co, int pods, int slots, const char *backend);
/* Fills out[p * slots + s] with the worker for each slot and returns 1, or returns 0 when the
 * idle workers cannot hold the whole mesh now (nothing is changed). */
int placement_choose(const struct coordinator *co, const struct job *j, struct worker **out);
/* A worker that can be given a slot now. */
int worker_schedulable(const struct worker *w);

/* The service tables (services.c). */
extern const struct rpc_method coordinator_methods[];
extern const int coordinator_n_methods;

/* Deep copy of a protobuf-c message (pack + unpack). */
ProtobufCMessage *pb_clone(const ProtobufCMessage *m);

#endif
