/*
 * spec.h — the job spec: what a user writes to describe a training job.
 *
 * Owns: the spec's fields, their defaults and bounds (one table in spec.c), parsing YAML or
 * JSON (libyaml reads both) into struct job_spec, `--set key.path=value` overrides, validation,
 * and printing a complete default spec with a comment per field.
 * Never: opens data files beyond checking that they exist, or trains anything.
 * Errors name the field: "spec: router.top_k = 5 exceeds model.experts = 4".
 */
#ifndef MOE_SPEC_H
#define MOE_SPEC_H

#include "status.h"
#include "../kernels/model.h"

#include <stdint.h>

#define SPEC_MAX_SOURCES 16
#define SPEC_MAX_SCHEDULE 32
#define SPEC_PATH_MAX 1024

struct data_source_spec {
    char path[SPEC_PATH_MAX]; // a text file, or a directory of text files (read recursively)
    double weight;            // sampling weight from step 0 (> 0)
};

/* From `step` on, source i is sampled with weight weights[i] (piecewise constant). Entries
 * past the last given weight hold SPEC_WEIGHT_UNSET (spec_defaults fills them), which is how
 * validation tells [1] from [1, 0]. */
#define SPEC_WEIGHT_UNSET (-1.0)
struct schedule_point {
    long step;
    double weights[SPEC_MAX_SOURCES];
};

struct data_spec {
    int n_sources;
    struct data_source_spec sources[SPEC_MAX_SOURCES];
    int n_schedule; // sorted by step, strictly increasing, all > 0
    struct schedule_point schedule[SPEC_MAX_SCHEDULE];
    double val_fraction; // tail of each source held out for evaluation, in [0, 0.5]
    char tokenizer[SPEC_PATH_MAX]; // a SentencePiece model (moectl tokenizer train); "": bytes
    char prepared[SPEC_PATH_MAX];  // tokens of the sources (moectl data prepare); "": tokenize
                                   //   the sources when the job loads them
};

struct run_spec {
    long steps;       // optimizer steps to train
    int batch_size;   // sequences per step (global batch)
    int micro_batch;  // sequences per forward/backward, dividing batch_size; 0: batch_size
    uint64_t seed;    // initialisation and data order
    char output[SPEC_PATH_MAX]; // the trained .safetensors file; its config goes beside it (.json)
    int log_every;    // progress line every N steps
    int eval_every;   // held-out loss every N steps (0: only at the end)
    int eval_batches; // held-out batches per evaluation
    char init_from[SPEC_PATH_MAX]; // a moed .safetensors whose parameters (and expert biases)
                                   // the run starts from, every tensor's shape checked; "": seed
    char export_dir[SPEC_PATH_MAX]; // where a failed or cancelled job's survivors write its
                                    // state: absolute, beneath every worker's --export-dir;
                                    // "": that directory itself (docs/recovery.md)
};

/* Knowledge distillation from a teacher model (docs/model.md, "Distillation"). */
struct distill_spec {
    char teacher[SPEC_PATH_MAX]; // a moed .safetensors with the student's vocabulary; "": none
    float alpha;                 // loss = (1 - alpha) ce + alpha temperature^2 KL + router terms
    float temperature;           // both softmaxes of the KL are of logits / temperature
};

/* The logical mesh (docs/architecture.md, "The mesh"): pods x slots data shards. Slot s of
 * every pod owns experts [s*E/slots, (s+1)*E/slots), a copy of the dense parameters and data
 * shard p*slots+s of every batch. The math depends on (pods, slots) only, never on which
 * process plays which slot. */
#define MESH_BACKEND_MAX 16
struct mesh_spec {
    int pods;         // data-parallel copies (P)
    int slots;        // expert-parallel slots per pod (S); divides model.experts
    char backend[MESH_BACKEND_MAX]; // data plane inside a pod: "tcp" or "mpi"
    double timeout_s; // a data-plane operation that makes no progress this long fails
    /* recovery (docs/recovery.md) */
    int replicas;     // copies of every committed step's state in different failure domains:
                      // P pods give P; more (or any with one pod) are buddy copies, each slot's
                      // experts sent to the next replicas - P slots of its pod every step.
                      // 1: no redundancy, a lost slot fails the job
    int check_every;  // steps between comparisons of data-parallel replicas' state hashes (0: off)
    double spare_wait_s; // a recovery waits this long for a worker to play a lost slot
    double partition_wait_s; // a recovery whose workers hold every slot's state but cannot
                             // reach each other (a partition) is held this long, then fails
    int move_to_spare;   // a slot doubled up on a survivor moves onto an idle worker (tcp)
    int encrypt;         // the data plane's tcp links are encrypted (docs/dataplane.md)
    int bucket_kb;       // gradient bucket size for the overlapped cross-pod sync (KiB)
    /* across pods (docs/crosspod.md): "sync", every step one synchronous step over the mesh;
     * "diloco", pods take outer_every inner steps on their own, then one outer step */
    char sync[MESH_BACKEND_MAX];
    int outer_every;      // H: inner steps per outer step (diloco)
    float outer_lr;       // the outer Nesterov step's learning rate (diloco)
    float outer_momentum; // its momentum (diloco)
    int outer_overlap;    // the outer average crosses during the next period, applied one
                          // outer step late (diloco; docs/model.md "Overlapped outer steps")
    char outer_quant[MESH_BACKEND_MAX]; // what crosses at an outer step: "none" or "int8"
};

/* The pods train apart between outer steps (mesh.sync: diloco). */
static inline int mesh_diloco(const struct mesh_spec *m) { return m->sync[0] == 'd'; }

/* Buddy copies of each slot's experts (the slots after it in its pod hold them): what
 * mesh.replicas asks beyond the pods, at most slots - 1. */
static inline int mesh_buddies(const struct mesh_spec *m) {
    int b = m->replicas - m->pods;
    if (b > m->slots - 1) b = m->slots - 1;
    return b > 0 ? b : 0;
}
/* Whether a lost slot can be recovered: a mesh (not 1 x 1) whose every slot's state is in at
 * least two failure domains. */
static inline int mesh_recoverable(const struct mesh_spec *m) {
    /* mpi: a pod is one failure domain, so buddies inside it do not count */
    int domains = m->pods + (m->backend[0] == 'm' ? 0 : mesh_buddies(m));
    return m->pods * m->slots > 1 && m->replicas >= 2 && domains >= 2;
}

struct job_spec {
    char name[128];
    struct mesh_spec mesh;         // "mesh" section
    struct model_config model;   // "model" and "router" sections
    struct adamw_config optimizer; // "optimizer" section; total_steps := run.steps
    struct data_spec data;
    struct run_spec run;
    struct distill_spec distill;
};

/* Fills every field with its default. data has no sources (the one field without a default). */
void spec_defaults(struct job_spec *s);

/* Parses YAML or JSON text over the defaults. Unknown fields, wrong types and out-of-range
 * values fail with MOE_EINVAL naming the field; malformed text fails with MOE_EFORMAT naming
 * the line. Does not validate cross-field consistency: call spec_validate. */
moe_status spec_parse(struct job_spec *s, const char *text, size_t len, const char *origin);
moe_status spec_load_file(struct job_spec *s, const char *path);

/* Applies one "key.path=value" override, e.g. "router.top_k=2", "data.sources.0.path=x.txt",
 * "run.steps=100". Same errors as spec_parse. */
moe_status spec_set(struct job_spec *s, const char *assignment);
/* Applies n overrides in order (a later one wins), all or none: the first that fails leaves
 * s as it was. More than the limits below is MOE_EINVAL before any is read. */
moe_status spec_set_all(struct job_spec *s, const char *const *assignments, size_t n);

/* What one submission may carry (docs/security.md). A spec is a few KiB and a handful
 * of overrides; these are far above any real one, and keep the parse of one request short. */
#define SPEC_TEXT_MAX (1 << 20)            // bytes of spec text (a file, or SubmitJob.spec)
#define SPEC_MAX_OVERRIDES 1000            // "key.path=value" overrides
#define SPEC_OVERRIDES_BYTES_MAX (64 << 10) // their bytes, all together
/* MOE_EINVAL naming the limit a spec of spec_bytes bytes with these n overrides exceeds. */
moe_status spec_check_sizes(size_t spec_bytes, const char *const *assignments, size_t n);

/* Cross-field checks: top_k <= experts, heads divide d_model, head dim even, schedule well
 * formed, ... Fails with MOE_EINVAL naming the field. Touches no file: a daemon that validates
 * a spec must not tell its sender which paths exist on its host (docs/security.md). */
moe_status spec_validate(const struct job_spec *s);

/* That data source i exists here, is readable and is a file or a directory: for a client
 * checking its own user's paths (`moectl submit`), never a daemon. MOE_ENOTFOUND when it is
 * not there or not readable here (the workers' hosts may have it: a note, not an error);
 * MOE_EINVAL when it is there but no file or directory. Both name the field. */
moe_status spec_check_source(const struct job_spec *s, int i);

/* A complete spec in YAML with every field, its value and a one-line comment. Caller frees. */
char *spec_to_yaml(const struct job_spec *s);
/* The same as JSON (no comments), for safetensors metadata and the config file. Caller frees. */
char *spec_to_json(const struct job_spec *s);

#endif
