/*
 * trainer.h — the training loop as a library: one process, step by step.
 *
 * Owns: a job's model (parameters, gradients, AdamW moments, expert biases), its dataset,
 * the batch buffers, and the sequence "batch(seed, step) -> forward -> backward -> update".
 * The worker daemon (worker/daemon/job.c) drives exactly these calls for each slot it plays;
 * `moectl train` drives them in-process, playing every shard of the mesh in turn.
 * Inside: trainer.c plays the local mesh and hands a slot's step to slot.c; both build on
 * step.c (one shard's passes, the report) and model_io.c (the files); replica.c keeps a
 * slot's copies. Nothing below trainer.c calls back into it.
 * Never: prints progress or parses command lines (callers do), and never writes to disk
 * except through the explicit save calls.
 */
#ifndef MOE_TRAINER_H
#define MOE_TRAINER_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "../../kernels/model.h"
#include "data.h"
#include "teacher.h"

struct comm;
struct slot_exec;
struct outer;
struct fence_gate;

/* The logical mesh as the trainer plays it (docs/architecture.md, "The mesh"):
 *   D = pods * slots data shards; shard d = p * slots + s reads sequences
 *       [d * B/D, (d+1) * B/D) of every batch;
 *   slot s owns experts [s * E/S, (s+1) * E/S) in every pod;
 *   gradients of different shards add in tree order (kernels/tree_sum.h): dense ones over
 *   all D shards, an expert's over its S sources inside the pod and then over the P pods.
 * Local (comm == NULL): one process plays every shard in turn and adds the same way: the
 * reference the distributed run must match bit for bit. A 1 x 1 mesh is the plain trainer.
 * Slot (comm != NULL): this process plays shard (pod, slot); the collectives are over comm. */
struct trainer_mesh {
    int pods, slots, shards;  // P, S, D = P * S
    int pod, slot;            // the slot this process plays (slot mode); 0, 0 when local
    struct comm *comm;        // NULL: local
    int expert_lo, n_local_experts; // the experts this slot owns (all E when local)
    real **shard_grads;       // local, D > 1: a gradient arena per shard (0 is the model's)
    struct slot_exec *exec;   // slot mode: the distributed step's state (slot.h)
    struct replica *rep;      // slot mode: previous version, buddy copies (replica.h)
    struct outer *outer;      // slot mode, mesh.sync diloco: the outer versions (outer.h)
    struct fence_gate *gate;  // slot mode: the lock a fence takes, the replica's (fence_gate.h)
    long mismatch_step;       // slot mode: > 0 when the last step stopped because the state
    int mismatch_slot;        //   hashes of slot index mismatch_slot's replicas differed there
};

struct trainer {
    struct job_spec spec;
    struct trainer_mesh mesh;
    struct model model;
    struct dataset data;
    struct teacher teacher; // distill.teacher, whole in every process (teacher.h)
    int *tokens, *targets; // (M, T): one micro-batch
    int B, M, T;           // sequences per step, per micro-batch (M divides B / D), length
    int Bd;                // sequences of one data shard per step: B / D
    int Bstep;             // sequences one update averages over: B, or a pod's B / P between
                           //   the outer steps of mesh.sync diloco
    int pass;              // the shard's pass (micro-batch) running now, of Bd / M
    long *load_sum;        // (L, E) expert loads summed over the step's micro-batches
    double unigram_bits;   // entropy of the training data, the bar a model must beat
                           //   (bits per byte of text)
    double eval_bytes_per_token; // of the last trainer_eval's windows (1 for byte tokens):
                                 //   bits per byte = loss / ln 2 / eval_bytes_per_token
    int empty;             // opened without initialising: the state is to be received
};

struct step_report {
    long step;          // the step just completed (1-based count of updates)
    double loss, ce, aux, z;
    double kl;          // mean distillation KL(teacher_T || student_T); 0 without a teacher
    double grad_norm, lr;
    long dropped;       // assignments dropped by capacity this step
    long assignments;   // (token, expert) assignments routed this step, all layers
    double load_max_over_mean; // busiest expert's load / mean load, worst layer (1.0 = balanced)
    double seconds;     // wall time of the step: data + forward + backward + update
    double t_forward, t_backward, t_update; // its parts (the rest is reading the batch)
    long tokens;        // tokens processed this step, all shards
    uint64_t bytes;     // bytes of text their targets stand for (= tokens for byte tokens):
                        //   bits per byte = ce * tokens / bytes / ln 2
    /* the data plane, this slot only (0 when local) */
    double t_comm;            // seconds waiting for dispatch/combine and gradient reductions
    uint64_t bytes_alltoall;  // bytes this slot sent in dispatch and combine all-to-alls
    uint64_t bytes_allreduce; // bytes this slot sent reducing gradients and statistics
    /* token accounting of the forward passes, all layers: rows (token, expert assignments)
     * this slot dispatched to the pod's experts, served with its own experts, and got back
     * combined. Over a pod, dispatched = served = returned = assignments kept. */
    long rows_dispatched, rows_served, rows_returned;
    /* recovery (slot mode): the newest step known committed (every slot completed it, buddy
     * copies whole), and on check steps the state hash of step hash_step */
    long replicated_step;
    int has_hash;
    long hash_step;
    unsigned char state_sha256[32];
};

/* Validates the spec, loads the data, allocates and initialises the model from run.seed.
 * Plays every shard of spec->mesh in this process. */
moe_status trainer_open(struct trainer *t, const struct job_spec *spec);
/* The same, reading the data as `access` says (data.h): the worker daemon confines it to its
 * data roots and stops the load when the job is stopped. NULL: as trainer_open. */
moe_status trainer_open_access(struct trainer *t, const struct job_spec *spec,
                               const struct data_access *access);

/* The same for one slot of a distributed job: this process plays (pod, slot) of spec->mesh
 * and reaches the other slots through comm (rank pod * slots + slot, already open). The
 * model holds the dense parameters and this slot's experts only. trainer_step, trainer_eval
 * and trainer_save_model are then collective: every slot of the job calls them in the same
 * order, and an error on one (a dead peer) is an error on all. */
moe_status trainer_open_slot(struct trainer *t, const struct job_spec *spec, int pod, int slot,
                             struct comm *comm);

/* The same without a comm yet (the distributed step forms at trainer_rebind): the slow part
 * of joining — data, memory, initialisation — happens before the epoch's data plane is up.
 * init 0 leaves the state zero and marks it empty (no copy to offer) until replica_restore
 * receives it: a recovery's new holder. The data is read as `access` says (NULL: any path,
 * never stopped; see trainer_open_access). */
moe_status trainer_open_slot_later(struct trainer *t, const struct job_spec *spec, int pod,
                                   int slot, int init, const struct data_access *access);

/* Slot mode: the slot goes on in a new epoch with `comm` (the last one is closed): the model
 * and its copies are kept, the distributed step re-forms over the new comm. */
moe_status trainer_rebind(struct trainer *t, struct comm *comm);

/* 1 when this process writes the job's model file in trainer_save_model (local, or rank 0). */
int trainer_writes_model(const struct trainer *t);
void trainer_close(struct trainer *t);

/* One optimizer step on the batch of step t->model.step. */
moe_status trainer_step(struct trainer *t, struct step_report *r);

/* Mean cross-entropy (nats per token; sets t->eval_bytes_per_token) over run.eval_batches
 * batches of held-out windows spread evenly over the held-out data; MOE_EINVAL if the spec holds nothing out. */
moe_status trainer_eval(struct trainer *t, double *loss, long *windows);

/* The trained model: `path` (.safetensors) plus `path` with .json for .safetensors (the job
 * spec and the step). Both are written atomically. In slot mode, collective: the slots of
 * pod 0 send their experts to rank 0, which writes the whole model; the others write nothing. */
moe_status trainer_save_model(const struct trainer *t, const char *path);

/* The full training state (parameters, moments, expert biases, step) for an exact replay. */
moe_status trainer_save_state(const struct trainer *t, const char *path);
moe_status trainer_load_state(struct trainer *t, const char *path);

#endif
