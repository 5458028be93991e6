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
 *      |                    |    (a recoverable mesh instead recovers: RUNNING, recovering,
 *      |                    |     epoch+1 on the replicas; FAILED only when it cannot)
 *      '--cancel--> CANCELLED <--cancel--'
 * A job's mesh is pods x slots; each logical slot (p, s) is played by one worker, chosen by
 * placement.c. Slot (0, 0) speaks for the job (its loss, its step); every slot reports its own
 * progress and data-plane numbers (struct binding).
 *   coordinator.c  the tables, persistence, events and watchers, submit, cancel, the
 *                  heartbeat monitor, start and stop
 *   placement.c    which idle workers play a job's slots; whether a mesh can be placed at all
 *   schedule.c     binding queued jobs in a new epoch, RunSlot and its answers
 *   failure.c      how a running job ends badly: StopJob, a slot's failure, a dead worker
 *   recovery.c     how a recoverable mesh survives a lost slot: fence, plan, rebind, restore;
 *                  the committed step and the replica hash check
 *   services.c     the RPC handlers;  store.c  RocksDB
 */
#ifndef MOE_COORDINATOR_H
#define MOE_COORDINATOR_H

#include "../common/spec.h"
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

/* Defaults (docs/operations.md): a dead worker is noticed within 2 s, and the check keeps
 * room for three missed heartbeats. */
#define COORD_HEARTBEAT_INTERVAL_MS 500
#define COORD_HEARTBEAT_TIMEOUT_MS 2000

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
    long replicated_step;          // the newest StepMetrics.replicated_step of this epoch
};

struct recovery;     // recovery.c: a recovery in progress
struct replica_hash; // recovery.c: the latest state hash of one slot

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
    /* recovery (recovery.c, docs/recovery.md); the spec's knobs are read from spec_json */
    int recoverable;           // mesh_recoverable(): a lost slot is recovered, not fatal
    int replicas;              // mesh.replicas
    int buddies;               // mesh_buddies(): the slots after each in its pod holding its copy
    double spare_wait_s;       // mesh.spare_wait_s
    int64_t committed_step;    // min over the slots of their replicated_step; never decreases
    int recoveries;            // recoveries completed
    int moves;                 // doubled slots moved onto a spare ("moved" events)
    int move_to_spare;         // mesh.move_to_spare: doubled slots move onto idle workers
    int recovering;            // a recovery is in progress (fence .. every slot restored)
    int64_t restore_step;      // T of the latest recovery epoch (0: none yet)
    int64_t next_move_ms;      // no move of a doubled slot before (a move failed lately)
    int32_t *restore_from;     // (pods * slots) its sources, RunSlotRequest.restore_from
    int64_t recovery_signal_ms; // the first fault signal of the recovery in progress
    /* not persisted */
    struct recovery *rec;      // the recovery this process drives (NULL: none)
    struct replica_hash *hashes; // (pods * slots) the latest state hash each slot reported
    uint64_t replica_matches;  // hash comparisons that agreed
    int replica_verified;      // the first agreement has been announced (event replica_check)
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
    char extra_data_address[DATA_ADDR_MAX]; // its listener for a second slot of one job ("":
                               // it cannot play two; see placement_replace)
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
    uint64_t recovery_calls;   // numbers the rounds of recovery calls (stale replies are dropped)
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
/* Appends " [rank 2 = slot (1, 0) on w-4 at 127.0.0.1:40133]" for each data-plane rank that
 * `why` names. */
void coordinator_name_ranks(const struct job *j, char *why, size_t cap);
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
/* The monitor found w silent for silent_ms: it is dead, and the slot it played has failed
 * (or, in a recoverable mesh, is recovered). */
void coordinator_worker_dead(struct coordinator *co, struct worker *w, int64_t silent_ms);
/* Marks w DEAD and unbinds it (saved), as the monitor does. */
void coordinator_mark_dead(struct coordinator *co, struct worker *w);

/* ---- recovery.c (docs/recovery.md) ---- */

/* What a fault signal says about the worker of the slot it names. */
enum fault_kind {
    FAULT_REPORTED, // the worker reported a data-plane error: it is alive and holds its state
    FAULT_DEAD,     // the worker is gone (heartbeats, fence, RunSlot unreachable)
    FAULT_ENDED,    // the worker is alive but its slot ended with an error: its state is gone
    FAULT_HOLDING,  // the worker holds a frozen state no recovery of ours will pick up
};
/* Reads the recovery knobs of a job's spec into j (submit, load). */
void recovery_configure(struct job *j, const struct mesh_spec *m);
/* A fault signal for slot k of recoverable job j (k < 0: none in particular): starts a
 * recovery, notes the signal in the one in progress, or restarts it (a new fault of the
 * recovery's own epoch). `what` says what was seen, for the event "failure". */
void recovery_signal(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* ReportFault of the current epoch, from the worker bound to slot k. */
void recovery_fault_report(struct coordinator *co, struct job *j, int k,
                           const Moed__V1__FaultReport *r);
/* ReportRestored of the current epoch, from the worker bound to slot k. */
void recovery_restored(struct coordinator *co, struct job *j, int k,
                       const Moed__V1__RestoredReport *r);
/* A worker bound to slot k of j's current epoch says (heartbeat, registration) that it runs
 * `epoch` of j, holding a fenced state or not. Returns 1 when it keeps its slot (a recovery may
 * have been started for it: it holds, or missed its new epoch while no recovery of this
 * process will reach it), 0 when it must be told to stop. */
int recovery_worker_state(struct coordinator *co, struct job *j, int k, struct worker *w,
                          uint64_t epoch, int holding, const char *how);
/* Step metrics of the current epoch from slot k: its replicated step (the committed step) and
 * its state hash (the replica check). */
void recovery_step_reported(struct coordinator *co, struct job *j, int k,
                            const Moed__V1__StepMetrics *m);
/* Re-plans recoveries waiting for a spare, and fails those that waited mesh.spare_wait_s. */
void recovery_poll(struct coordinator *co);
/* Moves a slot that plays on a worker's second listener (a recovery without a spare doubled it
 * up) onto an idle worker, once one is there: fence, plan, restore as in a recovery, with the
 * events "rebalance", "moving" and "moved". Called by every schedule pass. */
void recovery_rebalance(struct coordinator *co);
/* Recoveries the store says were in progress when the previous coordinator stopped: fenced
 * again (coordinator_start). */
void recovery_resume(struct coordinator *co);
/* Whether the recovery in progress has given up on w (it did not answer its fence, or held
 * nothing) while w is still in the binding it fenced: w must stop and become a spare. */
int recovery_dropped(const struct job *j, const struct worker *w);
/* The round of calls the job's recovery waits for (0: none). */
uint64_t recovery_round(const struct job *j);
/* Drops the recovery state of a job that ends (or is freed). */
void recovery_end(struct job *j);
/* schedule.c: binds queued jobs to idle workers, oldest job first (a recovery waiting for a
 * spare is served before them). */
void coordinator_schedule(struct coordinator *co);
/* One RunSlot call of a binding round; `gen` tells the rounds of a recovery apart (0 when the
 * scheduler sends it). */
struct assign_ctx {
    struct coordinator *co;
    char job_id[24];
    char worker_id[24];
    uint64_t epoch;
    uint64_t gen;
    int slot; // p * slots + s
};
/* RunSlot, with j's whole binding table (and, with `restore`, j->restore_step and
 * j->restore_from), to the worker of every slot; each answer goes to `cb` with a struct
 * assign_ctx it must free. A call that cannot be sent is answered INTERNAL at once; sending
 * stops when that answer changed the job's epoch or state, or (recovery) its round. */
void coordinator_send_run_slots(struct coordinator *co, struct job *j, int restore, uint64_t gen,
                                rpc_reply_cb cb);
/* The binding as text: "slot (0, 0) bound to w-1 at ..." or "epoch 2: 2 x 2 mesh (tcp) bound:
 * (0, 0) w-1, ...". */
void coordinator_binding_text(const struct job *j, char *out, size_t cap);
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
/* Recovery: new workers for the slots of j with need[k] set, none of them in `exclude`
 * (worker ids, n_exclude): tcp any schedulable worker, preferring the physical pod of the
 * logical pod's other workers (`keep[k]`: the worker staying in slot k, or NULL); mpi a whole
 * idle MPI job of S ranks for each logical pod with a needy slot (every slot of such a pod must
 * be needy). Fills out[k] for the needy slots and returns 1, or returns the first needy slot
 * it cannot place, as -1 - k. */
int placement_replace(const struct coordinator *co, const struct job *j, const char *need,
                      struct worker *const *keep, char (*exclude)[24], int n_exclude,
                      struct worker **out);

/* The service tables (services.c). */
extern const struct rpc_method coordinator_methods[];
extern const int coordinator_n_methods;

/* Deep copy of a protobuf-c message (pack + unpack). */
ProtobufCMessage *pb_clone(const ProtobufCMessage *m);

#endif
