/*
 * worker.h — the worker daemon: one process that plays one slot of a job at a time.
 *
 * Owns: joining the cluster (RegisterWorker, then a Heartbeat every interval the coordinator
 * gives, registering again when a restarted coordinator asks), the Worker service the
 * coordinator calls (RunSlot, StopJob, FenceSlot, InjectFault), and the training thread of the
 * job it runs: the trainer library's steps, step reports batched to one call a second (kept in
 * order while the coordinator is unreachable), the model's upload and the job's end report. A
 * scratch directory holds the trained model between saving and upload. For a slot of a larger
 * mesh it also owns the data-plane listener (opened at startup, its address registered) and
 * the job's comm, opened from RunSlot's binding table and aborted by StopJob; under mpirun,
 * MPI's initialisation.
 * The files, each calling only those below it:
 *   main.c        command line (one knob table), scratch directory, loop, signals, reaping
 *                 finished jobs when their thread says so, the orderly way down
 *   service.c     the Worker service handlers; starting a job's thread, joining it (loop)
 *   cluster.c     registration and heartbeats (loop thread)
 *   job.c         the training thread: epochs, steps, evaluation, recovery's waits
 *   upload.c      the training thread's ending: save, hash, upload
 *   report.c      the training thread's calls to the coordinator: retries, step reports and
 *                 their backlog, fault, restored and end reports
 *   mesh.c        a job as both threads share it: its comm (opened by the thread, aborted by
 *                 the loop), the hand-over of a later epoch, the fence, stopping it
 *   worker.h      the shared state (struct worker, struct job) and the functions between files
 * Threads: the libuv loop thread owns struct worker and every RPC handler and callback; the
 * training thread owns its trainer and its own channel to the coordinator. They share only
 * what is marked below (atomics, and worker_id under id_mu).
 * Never: decides which job runs where or whether a job is over (the coordinator does), calls
 * the gRPC API directly (proto/rpc.h does), or exits from a handler: a bad request gets an
 * error status and the daemon keeps serving.
 */
#ifndef MOE_WORKER_DAEMON_H
#define MOE_WORKER_DAEMON_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "../../proto/rpc.h"
#include "../comm/comm.h"
#include "../trainer/data_roots.h"
#include "../trainer/replica.h"
#include "../trainer/trainer.h"

#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#define WORKER_ID_MAX 64
/* Slots one worker may play at once: its own, and one more of the same job when a recovery
 * finds no spare (docs/recovery.md). Each has its own data-plane listener. */
#define WORKER_MAX_SLOTS 2
#define WORKER_TOKEN_MAX 256
#define WORKER_CREDENTIAL_MAX 128 // "w-N.<64 hex>" from the coordinator; "operator.<64 hex>"
#define OPERATOR_TOKEN_FILE "operator.token" // in the scratch directory (service.c)

/* Retry budgets for calls to a coordinator that may be restarting. */
#define REGISTER_RETRY_S 30.0   // joining at startup
#define DIAGNOSE_TIMEOUT_S 5.0  // a dial that names why the coordinator cannot be reached
#define REPORT_TIMEOUT_S 10.0   // one ReportStep
#define FINISH_RETRY_S 600.0    // UploadModel and ReportJobEnd: the model must not be lost
#define FINISH_RETRY_SHUTDOWN_S 5.0 // ... unless the daemon is being stopped
#define REPORT_BACKLOG_MAX 100000

/* From the command line and the environment (main.c's knob table); fixed once the daemon
 * runs (both threads read it without locks). An empty string is a flag not given. */
struct worker_config {
    char coordinator[256];        // host:port
    char token_file[PATH_MAX];
    char listen[256];             // default 127.0.0.1:0
    int pod;
    int threads;                  // OpenMP threads for training; 0: OpenMP's default (all cores)
    char tls_ca[PATH_MAX];        // the coordinator's CA
    char tls_cert[PATH_MAX];      // with tls_key: serve the Worker service over TLS
    char tls_key[PATH_MAX];
    char dir[PATH_MAX];           // scratch directory; "": a temporary one under tmpdir
    char tmpdir[1024];            // $TMPDIR, default /tmp
    char data_listen[COMM_ADDR_MAX]; // the data-plane listener, default <--listen host>:0
    char advertise[300];          // --advertise HOST[:PORT]: the address we register ("":
                                  // derived from --listen, docs/operations.md "Addresses")
    char data_advertise[300];     // --data-advertise HOST: where peers dial our data listeners
    int mpi;                      // --mpi: initialise MPI (also when OMPI_COMM_WORLD_RANK is set)
    char data_roots[8192];        // --data-root (repeatable): a knob list (common/knobs.h)
    char export_dir[PATH_MAX];    // --export-dir: where a job's state is exported when it
                                  // cannot go on and its spec names no run.export_dir ("":
                                  // <scratch>/exports)
    long memory_limit_mb;         // a slot needing more is refused (0: 90% of physical memory)
    long spare_arena_mb;          // --spare-arena-mb: what an idle worker may hold prepared for
                                  // a slot a recovery may give it (spare.c; 0: nothing)
    int log_level;                // enum moe_log_level
    struct rpc_tls tls;           // ca_file (tls_ca) only: for calls to the coordinator
    struct rpc_tls serve_tls;     // cert_file + key_file: for the Worker service
};

struct worker;

/* Why a job is asked to stop. The coordinator's word ends the job without a model; a
 * shutdown that arrives after the last step still uploads the finished model. */
enum job_stop { JOB_RUN = 0, JOB_STOP_COORDINATOR, JOB_STOP_SHUTDOWN };

/* The binding of one epoch of a job, from a RunSlot: the first (adopted when the job is made)
 * or a recovery's later one, handed from the loop to the training thread. */
struct epoch_binding {
    uint64_t epoch;
    double timeout_s;
    char (*peers)[COMM_ADDR_MAX]; // (pods * slots) data addresses, rank order
    uint8_t data_key[COMM_KEY_BYTES]; // the job's data-plane key (RunSlot; the same every epoch)
    int restore;                  // return to restore_step first (docs/recovery.md)
    long restore_step;
    int *restore_from;            // (pods * slots) the rank sending each rank its state, or -1
};
void epoch_binding_free(struct epoch_binding *b);

/* One job's slot in training. Created by RunSlot on the loop, run by its own thread, joined
 * and freed on the loop once `finished` is set (service.c: worker_reap_jobs). */
struct job {
    struct worker *w;
    int local;                    // which of the worker's slots (and data listeners) it uses
    char id[64];
    int pod, slot;
    struct job_spec spec;
    uv_thread_t thread;
    /* the mesh, from RunSlot (a 1 x 1 job has no comm) */
    int pods, slots;
    uint64_t epoch;
    enum comm_backend backend;
    double timeout_s;
    char (*peers)[COMM_ADDR_MAX]; // (pods * slots) data addresses, rank order
    uint8_t data_key[COMM_KEY_BYTES]; // the job's data-plane key (RunSlot; the same every epoch)
    uv_mutex_t comm_mu;           // guards comm between the thread (open, close) and the loop
    struct comm *comm;            //   (StopJob's abort)
    int aborted;                  // comm_abort was called (under comm_mu)
    uint64_t fenced_epoch;        // the newest epoch FenceSlot ended (under comm_mu): a comm
                                  //   of that epoch or older is aborted as soon as it opens
    atomic_int open_cancel;       // a stop, a fence of the epoch, or a newer epoch waiting: the
                                  //   comm being opened gives up (comm_config.cancel)
    /* the transport to each peer (thread only): reported with the epoch's first step report
     * and again after a re-registration (StepReport.links) */
    const char *links[COMM_MAX_RANKS]; // (pods * slots) comm_peer_transport; NULL: itself
    uint64_t links_epoch;         // the epoch they describe (0: none yet)
    uint64_t links_sent_epoch;    // what the coordinator has: links of this epoch, sent
    unsigned links_sent_contact;  //   while w->contact was this
    /* recovery (docs/recovery.md) */
    int recoverable;              // mesh_recoverable(spec): a data-plane error waits for the
                                  //   coordinator's next epoch instead of ending the job
    struct epoch_binding cur;     // this epoch's restore plan (thread only; peers above)
    uv_mutex_t ep_mu;             // guards next, trainer and epoch between loop and thread
    uv_cond_t ep_cv;              //   signalled when next arrives or stop is set
    struct epoch_binding *next;   //   a newer epoch's binding, not yet taken by the thread
    struct trainer *trainer;      //   the thread's trainer while it is open (FenceSlot)
    atomic_int holding;           // fenced and waiting for the next epoch (heartbeats say so)
    atomic_int in_steps;          // the thread runs the step loop (job.c: train): a peer lost
                                  //   now is a fault the comm's watcher reports at once
    struct rpc_channel *report_ch; // the thread's channel to the coordinator (any thread may
                                  //   call on it: the watcher's report of a lost peer)
    int unrecoverable;            // (thread only) the slot could not load its data or spec here:
                                  //   its end report says a recovery would fail the same way
    /* export and resume (docs/recovery.md, "Export and resume") */
    long resume_step;             // a resumed job's first epoch: load the state after this step
    char resume_path[SPEC_PATH_MAX + 128]; //   from this file ("": start from the seed)
    uint32_t resume_crc32c;       //   whose whole file has this CRC-32C
    int exporting;                // (loop only) ExportState writes in flight: not freed until 0
    /* shared with the loop */
    atomic_int stop;     // enum job_stop: set by the loop, read by the thread between steps
    atomic_long step;    // last completed step, for heartbeats and re-registration
    atomic_int finished; // the thread has reported the end and is returning
};

struct worker {
    uv_loop_t *loop;
    struct worker_config cfg;
    char token[WORKER_TOKEN_MAX]; // the cluster token: only for registering as a new worker
    char operator_token[WORKER_CREDENTIAL_MAX]; // made at start, written to the scratch
                                  // directory: what InjectFault needs (moectl chaos)
    char address[300];            // where our Worker service listens, as registered
    char data_host[300];          // the host our data listeners are dialled at
    char refused[1024];           // why the coordinator gives us no job ("": it may), as it
                                  // last said (cluster.c, loop thread)
    /* the data plane's listening sockets: one per slot this worker may play ([0] is its own,
     * registered as data_address; the others as extra_data_addresses) */
    struct comm_listener *listeners[WORKER_MAX_SLOTS];
    char data_addresses[WORKER_MAX_SLOTS][COMM_ADDR_MAX];
    int mpi_rank, mpi_size;       // under mpirun: MPI_COMM_WORLD (mpi_size 0: no MPI)
    char mpi_job[256];            // identifies our mpirun job (its ranks share it)
    char host[256];
    int cpus;
    char scratch[PATH_MAX];
    int scratch_is_temp;          // made by us: removed at exit
    struct data_roots *roots;     // where jobs may read data (trainer/data_roots.h); fixed once
                                  // the daemon runs, read by both threads

    struct rpc_pump *pump;
    struct rpc_server *server;
    struct rpc_health *health;    // grpc.health.v1: SERVING from registration until stopping
    struct rpc_channel *coord;    // the loop's channel (wait_for_ready) for register/heartbeat

    uv_mutex_t id_mu;             // guards worker_id and credential: the training thread puts
    char worker_id[WORKER_ID_MAX];  // them in its reports
    char credential[WORKER_CREDENTIAL_MAX]; // our own, from registration ("": none yet, or
                                  // the coordinator no longer knows it): our calls carry it,
                                  // and the Worker service accepts the coordinator's only with it

    long heartbeat_ms;
    long idle_heartbeat_ms;       // while it runs no slot, a heartbeat this seldom (0: every tick)
    uint64_t heartbeat_sent_ms;   // when the last one left (uv_now)
    uv_timer_t heartbeat;
    int heartbeat_in_flight;
    int heartbeat_again;          // worker_heartbeat_now while one was in flight
    int reregistering;
    int coordinator_lost;         // the last heartbeat failed (log the change, not every tick)
    int diagnosing;               // a dial naming why the coordinator is lost, on the thread pool
    atomic_uint contact;          // +1 when the coordinator answers again or re-registers us:
                                  // the training thread then retries its reports at once
    atomic_llong report_answered_ms; // (training thread) when a step report was last answered
                                  // as our heartbeat (moe_clock_s ms; 0: never, or the answer
                                  // asked for a heartbeat): the heartbeat tick skips until an
                                  // interval after it

    uv_signal_t sigterm, sigint;
    uv_async_t job_done;          // the training thread's "I am finished" (wake-ups coalesce)
    struct job *jobs[WORKER_MAX_SLOTS]; // the slots it plays ([k] uses listeners[k]); all of
                                  // one job when there are two; NULL where none

    char spare_job[64];           // (loop) the job whose slot arenas it prepared, or found it
                                  //   need not (spare.c): HeartbeatRequest.prepared_job_id
    int spare_preparing;          // (loop) they are being prepared on the thread pool

    atomic_int shutting_down;     // SIGTERM/SIGINT seen: no new jobs, short retries
    int server_down;
    int exit_code;
};

/* Any thread: the worker's id as the coordinator last gave it. */
static inline void worker_copy_id(struct worker *w, char out[WORKER_ID_MAX]) {
    uv_mutex_lock(&w->id_mu);
    memcpy(out, w->worker_id, WORKER_ID_MAX);
    uv_mutex_unlock(&w->id_mu);
}

/* Any thread: the credential that goes with the id ("" when none). */
static inline void worker_copy_credential(struct worker *w, char out[WORKER_CREDENTIAL_MAX]) {
    uv_mutex_lock(&w->id_mu);
    memcpy(out, w->credential, WORKER_CREDENTIAL_MAX);
    uv_mutex_unlock(&w->id_mu);
}

/* cluster.c (loop thread) */
moe_status worker_register(struct worker *w); // blocking, at startup, with retries
void worker_heartbeat_start(struct worker *w);
void worker_heartbeat_now(struct worker *w); // an extra one (a job just ended)

/* spare.c (loop thread): a heartbeat's answer to an idle (`busy` 0) or busy worker: prepare
 * the arenas of a slot of job_id (spec_json: its spec, "" when already sent), or release. */
void worker_spare_hint(struct worker *w, int busy, const char *job_id, const char *spec_json);

/* service.c (loop thread) */
extern const struct rpc_method worker_methods[];
extern const int worker_n_methods;
extern const char *const worker_health_names[]; // grpc.health.v1 names besides ""
extern const int worker_n_health_names;
/* rpc_identify_fn of the Worker service (ctx: the worker): "coordinator" for our own current
 * credential (only the coordinator and we know it), "operator" for operator_token. */
int worker_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]);
int worker_idle(const struct worker *w); // no job thread at all (finished ones reaped)
/* Whether the call comes from `who` ("coordinator", "operator"); refused (and logged under the
 * rate limit) otherwise. */
int worker_called_by(struct rpc_call *call, const char *who);

/* export.c (loop thread; the write on libuv's thread pool) */
/* ExportState: writes this worker's own copy of a slot index at a step to a file. */
void worker_export_state(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx);
void worker_reap_jobs(struct worker *w); // joins and frees the jobs whose thread has finished

/* job.c: the training thread's body (service.c starts it) */
void job_thread(void *arg);

/* upload.c (training thread): save the trained model, upload it, report the end; returns 1.
 * With `recoverable`, a save that lost a peer reports nothing and returns 0 (moe_errmsg says
 * what happened): the job recovers and saves again. */
int job_finish_ok(struct job *j, struct rpc_channel *ch, const struct trainer *t,
                  int recoverable);

/* report.c (training thread) */
/* A blocking call to the coordinator, retried while it is unreachable, for up to `budget_s`
 * (shortened when the daemon is shutting down). `res` (may be NULL) gets the last attempt's
 * gRPC outcome. */
moe_status job_call_retry(struct job *j, struct rpc_channel *ch, const char *method,
                          const ProtobufCMessage *req, const ProtobufCMessageDescriptor *type,
                          ProtobufCMessage **resp, double budget_s, struct rpc_result *res);
struct step_entry; // report.c: one step's metrics as they go on the wire
/* Step reports not yet accepted by the coordinator, oldest first (a ring of at most
 * REPORT_BACKLOG_MAX; when full, the oldest go). Zero-initialised before the first step. */
struct backlog {
    struct step_entry **ring;
    size_t head, len, cap;
    long dropped;     // oldest reports dropped because the backlog was full
    long refused;     // reports the coordinator answered with an error (not sent again)
    int failing;      // the last attempt could not reach the coordinator
    double backoff_s; // wait before the next attempt while failing
    double next_try;
    unsigned contact; // w->contact when it started failing: a change means "try now"
    double last_sent; // when the last batch was accepted
    double interval_s; // batch this long (the coordinator's report_interval_ms; 0: 1 s)
};
/* The report of step r (with its evaluation loss, 0 if none) joins the backlog; -1 when out of
 * memory. */
int backlog_add(struct backlog *b, const struct trainer *t, const struct step_report *r,
                double val_loss);
/* Sends what waits if it is time (`now`: at once; else at most one call a second, or after
 * the backoff while failing). Never blocks training for long: one call. Returns 1 when the
 * coordinator answered stop. */
int backlog_flush(struct job *j, struct rpc_channel *ch, struct backlog *b, int now);
/* The job's end: every held report goes out first, retried within the finish budget. Returns
 * 1 when the coordinator answered stop. */
int backlog_drain(struct job *j, struct rpc_channel *ch, struct backlog *b);
void backlog_free(struct backlog *b);
/* The slot lost its data plane and holds its state for the next epoch (a short try: the
 * coordinator also learns it from the fence and heartbeats). d (NULL: a plain data-plane
 * fault) says more: refused_from >= 0, the state that rank sent for a restore was refused for
 * its checksum (error says where); mismatch_step > 0, the replicas of slot index
 * mismatch_slot differed at that step (a repair, not a recovery); peer_exited, the process
 * of rank exited_rank was seen exiting (the coordinator need not wait for its fence). */
struct fault_detail {
    int refused_from;
    long mismatch_step;
    int mismatch_slot;
    int peer_exited, exited_rank;
};
void job_report_fault(struct job *j, struct rpc_channel *ch, long step, const char *error,
                      const struct fault_detail *d);
/* The slot restored its state in a recovery epoch, and what it took. */
void job_report_restored(struct job *j, struct rpc_channel *ch, long step, double connect_s,
                         const struct restore_stats *st);
/* ReportJobEnd: ok with the model's size and hash, or failed (`error`) or stopped. */
moe_status job_report_end(struct job *j, struct rpc_channel *ch, int ok, int stopped,
                          const char *error, long model_bytes, const unsigned char *sha256,
                          struct rpc_result *res);

/* mesh.c: a job as the loop and its thread share it */
/* Training thread: opens the job's comm (rank pod * slots + slot) from its binding; the error
 * names the peer. */
moe_status job_open_comm(struct job *j);
void job_close_comm(struct job *j);
/* Any thread: asks the job to stop. RUN becomes `why`; the coordinator's stop also aborts the
 * comm (a collective waiting on a peer returns now), a shutdown lets the step finish; a slot
 * holding its state for the next epoch stops waiting. Returns 1 when this call stopped it. */
int job_stop(struct job *j, enum job_stop why);
/* The epoch the coordinator should hear about: a pending newer one, else the current one
 * (loop thread). */
uint64_t job_epoch(struct job *j);
/* Hands a recovery's binding (owned from now on) to the thread: any thread (the loop). */
void job_next_epoch(struct job *j, struct epoch_binding *b);
/* Takes a binding (owned from now on) as the job's: epoch, peers, timeout, restore plan. The
 * loop for a new job, the training thread for a later epoch (holding ep_mu). */
void job_adopt(struct job *j, struct epoch_binding *b);
/* FenceSlot: aborts the comm of `epoch` or older and freezes the trainer's state; fills the
 * copies it can send. Returns 1 when it holds state. Loop thread. */
int job_fence(struct job *j, uint64_t epoch, struct state_copy *copies, int max, int *n,
              long *live, int hash);
void job_free(struct job *j); // the loop, once the thread is joined

#endif
