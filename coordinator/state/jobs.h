/*
 * jobs.h — the job table: every job the coordinator knows, its mesh, the binding of each
 * logical slot to a worker, its progress, and its durable record.
 *
 * Owns: struct job and struct binding; finding, adding, loading, deleting and freeing jobs;
 * the job's record in the store (JobRecord) and its protobuf views (JobInfo, SlotStatus); the
 * texts that name a job's slots ("slot (1, 0) of the 2 x 2 mesh, epoch 3"); and which state
 * changes are allowed (job_state_allowed: the state machine below). The changes themselves,
 * with their events and side effects, are transitions.c's.
 *
 * The state machine of a job (docs/protocol.md):
 *   QUEUED --bound (every slot, epoch + 1)--> RUNNING
 *   RUNNING --requeued (a refusal before step 1)--> QUEUED
 *   RUNNING --model uploaded and every slot ended ok--> SUCCEEDED
 *   RUNNING --a slot lost (not recoverable), or a worker cannot start it--> FAILED
 *   QUEUED or RUNNING --cancel--> CANCELLED
 * A recoverable mesh that loses a slot stays RUNNING through its recovery (epoch + 1 on the
 * replicas) and FAILS only when it cannot recover.
 * A job's mesh is pods x slots; logical slot (p, s) is index k = p * slots + s of bindings[].
 * Slot (0, 0) speaks for the job (its loss, its step); every slot reports its own progress.
 * Never: decides (policy/ does), sends a call, or writes a state change without its event.
 */
#ifndef MOE_COORD_JOBS_H
#define MOE_COORD_JOBS_H

#include "export_state.h"
#include "histogram.h"
#include "recovery_state.h"
#include "state.h"

#define JOB_RECENT_EVENTS 32 // kept in memory per job for GetJob / a new watcher

/* The transports a slot pair may use (PeerLink.transport), coded per peer in a binding. */
enum job_link { JOB_LINK_NONE = 0, JOB_LINK_SHM, JOB_LINK_TCP, JOB_LINK_MPI };
#define JOB_LINKS_MAX 256 // a worker opens no mesh of more ranks (COMM_MAX_RANKS)

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
    int idle_beats;                // heartbeats in a row, since, of its worker running nothing
    long replicated_step;          // the newest StepMetrics.replicated_step of this epoch
    /* how it reaches each peer in this epoch (StepReport.links; SlotStatus.links): a
     * JOB_LINK_* per rank, JOB_LINK_NONE until reported. Not persisted (a slot reports them
     * again once it re-registers), and zeroed with the binding at every new epoch. */
    uint8_t links[JOB_LINKS_MAX];
};

/* A client following the job (WatchJob): events.c sends it every change. */
struct watcher {
    struct rpc_call *call;
    struct job *job;
    struct watcher *prev, *next;
};

#define JOB_DATA_KEY_BYTES 32
struct job {
    long num;                  // N of "job-N"
    char id[24];
    char name[128];
    Moed__V1__JobState state;  // changed only by transitions.c
    long step, total_steps;
    double loss, val_loss;
    double val_bits_per_byte; // the last evaluation's, in memory only (0: none since start)
    int64_t created_ms, started_ms, finished_ms;
    char error[768];
    char *spec_json;
    int pods, slots;
    char backend[16];          // mesh.backend: "tcp" or "mpi"
    double timeout_s;          // mesh.timeout_s, told to the workers
    uint64_t epoch;            // +1 each time the job is bound; 0 while never bound
    struct binding *bindings;  // (pods * slots), slot (p, s) at p * slots + s
    struct slot_index *by_worker; // which slot each worker of `bindings` plays (jobs.c)
    int64_t model_bytes;       // > 0 once the model is uploaded and checked
    int64_t next_event;
    /* recovery (docs/recovery.md); the spec's knobs, read by job_read_mesh */
    int recoverable;           // mesh_recoverable(): a lost slot is recovered, not fatal
    int replicas;              // mesh.replicas
    int buddies;               // mesh_buddies(): the slots after each in its pod holding its copy
    double spare_wait_s;       // mesh.spare_wait_s
    double partition_wait_s;   // mesh.partition_wait_s
    int move_to_spare;         // mesh.move_to_spare: doubled slots move onto idle workers
    int64_t committed_step;    // min over the slots of their replicated_step; never decreases
    int recoveries;            // recoveries completed
    int moves;                 // doubled slots moved onto a spare ("moved" events)
    int recovering;            // a recovery is in progress (fence .. every slot restored)
    int64_t restore_step;      // T of the latest recovery epoch (0: none yet)
    int64_t next_move_ms;      // no move of a doubled slot before (a move failed lately)
    int32_t *restore_from;     // (pods * slots) its sources, RunSlotRequest.restore_from
    int64_t recovery_since_ms; // where the recovery in progress is timed from: a silent
                               //   lost worker's last sign of life, else its first signal
                               //   (recovery.c since_fault)
    uint8_t data_key[JOB_DATA_KEY_BYTES]; // the data-plane key (RunSlotRequest.data_key);
                               //   random at admission, never in JobInfo
    /* export and resume (docs/recovery.md, "Export and resume"; policy/export.c) */
    Moed__V1__ExportManifest *exported; // what the job's end left on disk (JobInfo.export);
                               //   NULL: nothing tried
    Moed__V1__ExportManifest *resume; // a resumed job: the export it starts from
                               //   (JobRecord.resume; its job_id is JobInfo.resumed_from)
    int export_due;            // ended holding its state: policy/export.c exports it, then
                               //   stops the workers (not persisted)
    struct job_export *exp;    // the export in progress (not persisted)
    /* not persisted */
    int record_dirty;          // its record changed since written: jobs_flush_records writes it
    int64_t events_below, steps_below; // its stored events and steps numbered below these
                               // are deleted (policy/retention.c; 0 after a start: trimmed again)
    struct recovery *rec;      // the recovery this process drives (NULL: none)
    struct histogram recovery_seconds; // each recovery's total: the lost worker's last sign
                                       //   of life to every slot back
                               //   this process saw end (/metrics)
    struct replica_hash *hashes; // (pods * slots) the latest state hash each slot reported
    struct replica_hash *agreed; // (slots * REPLICA_AGREED_KEEP) the newest agreed hashes
    struct repair_watch *repair; // a repair whose replay has not yet shown the wrong copy
    uint64_t replica_matches;  // hash comparisons that agreed
    int replica_verified;      // the first agreement has been announced (event replica_check)
    int assign_attempts;
    int n_running;                            // slots whose RunSlot was accepted this epoch
    int64_t failing_ms;                       // a slot failed at this time: the job fails once
                                              // the others answered (policy/faults.c)
    int first_failed;                         //   that slot, and what it said
    char first_failure[512];
    Moed__V1__StepMetrics *last;              // a private copy of the latest step's metrics
    Moed__V1__Event *recent[JOB_RECENT_EVENTS]; // ring of the latest events, private copies
    int n_recent, recent_head;
    double sec_per_step;                      // moving average, for the ETA
    struct watcher *watchers;
    int upload_fd;                            // model upload in progress (-1: none; models.c)
    int64_t upload_offset;
    int deleted;                              // being removed from the table (job_delete)
    char upload_worker[24];                   //   the worker uploading it (its chunks only)
};

/* ---- the table ---- */

struct job *jobs_find(struct coordinator *co, const char *id);
/* The index in co->jobs of the first job whose number is above `num` (n_jobs: none): where
 * a page that follows job-<num> starts, whether or not job-<num> is still there. */
int jobs_index_after(const struct coordinator *co, long num);
/* A new QUEUED job "job-N" from a validated spec (N = co->next_job; not yet in the table). */
struct job *job_create(struct coordinator *co, const struct job_spec *spec);
moe_status jobs_add(struct coordinator *co, struct job *j);
/* Reads every job with its recent events and latest step from the store (coordinator_start). */
moe_status jobs_load(struct coordinator *co);
/* Frees a job and whatever recovery it had in progress. */
void job_free(struct job *j);
/* The two halves of deleting ended jobs (transitions.c's job_delete puts their model files
 * between them): their records, steps and events removed in one synced batch (MOE_EINVAL,
 * with nothing removed, when one has not ended; MOE_EIO when the store refuses); then the
 * jobs dropped from the table and freed (`del` holds dangling pointers after). */
moe_status jobs_delete_records(struct coordinator *co, struct job *const *del, int n);
void jobs_drop(struct coordinator *co, struct job *const *del, int n);

/* The mesh and recovery knobs of a spec into j (creation and loading). */
void job_read_mesh(struct job *j, const struct mesh_spec *m);

/* ---- questions ---- */

int job_is_final(const struct job *j);
const char *job_state_name(Moed__V1__JobState s);
/* Whether `to` may follow j's state (the machine above). */
int job_state_allowed(const struct job *j, Moed__V1__JobState to);
static inline int job_n_slots(const struct job *j) { return j->pods * j->slots; }
/* The index (p * slots + s) of the (first) slot worker `worker_id` plays in the current epoch,
 * or -1. O(1): a hash table of the binding, rebuilt (O(pods * slots)) on the first lookup after
 * job_bindings_changed, so the heartbeats and step reports of a 4,096-slot job do not scan it. */
int job_slot_of(const struct job *j, const char *worker_id);
/* Whoever writes a binding's worker_id (binding, re-binding, clearing, loading) calls this. */
void job_bindings_changed(struct job *j);
/* Seconds to the last step at the recent rate; 0 when unknown: not running, no rate yet, or a
 * recovery (or a held partition) in progress. */
double job_eta_seconds(const struct job *j);
/* The job's recent events, oldest first, as pointers into its ring (out: JOB_RECENT_EVENTS). */
size_t job_recent_events(const struct job *j, Moed__V1__Event **out);
/* Adds a private copy of an event to the ring, dropping the oldest when it is full. */
void job_recent_push(struct job *j, Moed__V1__Event *copy);
/* Drops the recovery in progress (its answers are ignored from now): the job ends, or every
 * slot is back. */
void job_drop_recovery(struct job *j);

/* ---- texts ---- */

/* "(1, 0)" */
const char *job_slot_text(const struct job *j, int k, char *buf, size_t cap);
/* "slot (1, 0) of the 2 x 2 mesh, epoch 3"; k < 0: "the 2 x 2 mesh, epoch 3" */
const char *job_slot_where(const struct job *j, int k, char *buf, size_t cap);
/* "slot (0, 0) bound to w-1 at ..." or "epoch 2: 2 x 2 mesh (tcp) bound: (0, 0) w-1, ..." */
void job_binding_text(const struct job *j, char *out, size_t cap);
/* A data-plane error names its peer by rank ("comm: rank 2 closed its connection"); the
 * operator needs the worker: " [rank 2 = slot (1, 0) on w-4 at 127.0.0.1:40133]" is appended
 * for each rank `why` names. */
void job_name_ranks(const struct job *j, char *why, size_t cap);
/* The rank (= slot index) a data-plane error reported by slot `reporter` says failed: the
 * last peer it names ("comm: rank 0 gave up on the operation because of rank 2" -> 2), never
 * the reporter itself, nor a rank only an unproven peer claimed ("refused rank 0: ..."), nor
 * one the text gives as its writer's own ("we are rank 0"); -1 when it names none. */
int job_blamed_rank(const struct job *j, const char *why, int reporter);

/* ---- records and views ---- */

/* Adds the job's record (info, spec, event counter) to a store batch. */
void job_batch(struct store_batch *b, const struct job *j);
/* Writes (not synced) the record of every job whose record_dirty is set, in one batch: what
 * changes with every report (each slot's step and figures) reaches the store once per monitor
 * tick, not once per report. */
void jobs_flush_records(struct coordinator *co);

/* Protobuf views of a job (pointing into the job; valid until it changes). */
struct job_view {
    Moed__V1__JobInfo info;
    Moed__V1__SlotBinding *bind;
    Moed__V1__SlotBinding **bind_ptrs;
    Moed__V1__SlotStatus *slot;      // every slot of the mesh, pod-major
    Moed__V1__SlotStatus **slot_ptrs;
    size_t n_slots;
    Moed__V1__PeerLink *link;        // every slot's reported links, slot after slot
    Moed__V1__PeerLink **link_ptrs;
};
void job_view_fill(struct job_view *v, const struct job *j);
/* The same with only the slots first .. first + n - 1 (0 <= first, first + n <= the mesh's
 * slots) and their bindings: a page of GetJob. */
void job_view_fill_slots(struct job_view *v, const struct job *j, int first, int n);
/* Every pod of j's mesh summarised (PodSummary) into out[pods], ptrs[pods] pointing at them:
 * O(slots), a lookup of each bound slot's worker (a hash table), no allocation; the strings
 * are static. */
void job_pod_summaries(struct coordinator *co, const struct job *j, Moed__V1__PodSummary *out,
                       Moed__V1__PodSummary **ptrs);
/* A slot's report of its links (StepReport.links) into binding k: unknown transports and
 * peers outside the mesh are left out. Returns how many it took. */
int job_record_links(struct job *j, int k, Moed__V1__PeerLink *const *links, size_t n);
/* "shm", "tcp", "mpi" for a JOB_LINK_*, NULL for JOB_LINK_NONE or an unknown code; and back
 * (JOB_LINK_NONE for a name it does not know). */
const char *job_link_name(int code);
int job_link_code(const char *name);
/* Slot k's binding as a message (pointing into the job). */
Moed__V1__SlotBinding job_slot_binding(const struct job *j, int k);
void job_view_free(struct job_view *v);

#endif
