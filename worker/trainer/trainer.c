/* trainer.c — the step-by-step training loop (see trainer.h). */
#include "trainer.h"

#include "../../common/clock.h"
#include "../../common/safetensors.h"
#include "../../common/tokenizer.h"
#include "../../kernels/tree_sum.h"
#include "../comm/comm.h"
#include "model_io.h"
#include "outer.h"
#include "tokens.h"
#include "replica.h"
#include "slot.h"
#include "step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(real) == sizeof(float), "the trainer adds shard gradients as floats");

/* With data.tokenizer, model.vocab is the tokenizer's: left at its default (256) it is set,
 * given it must agree. Checked before the sources load, so that a mismatch is the one thing
 * said; the dataset's own copy of the tokenizer is checked again once loaded. */
static moe_status vocab_follows_tokenizer(struct trainer *t, const struct data_access *a) {
    if (!t->spec.data.tokenizer[0]) return MOE_OK;
    uint8_t *bytes;
    size_t n;
    struct tokenizer *tok;
    CHECK(data_tokenizer_open(a ? a->roots : NULL, "data.tokenizer", t->spec.data.tokenizer,
                              &bytes, &n, &tok));
    int V = tokenizer_vocab(tok);
    tokenizer_free(tok);
    free(bytes);
    if (t->spec.model.vocab != 256 && t->spec.model.vocab != V)
        return moe_fail(MOE_EINVAL, "spec: model.vocab = %d, but data.tokenizer '%s' has %d "
                        "pieces (leave model.vocab out: it follows the tokenizer)",
                        t->spec.model.vocab, t->spec.data.tokenizer, V);
    t->spec.model.vocab = V;
    return MOE_OK;
}

static moe_status check_vocab(const struct trainer *t) {
    if (t->data.tok && tokenizer_vocab(t->data.tok) != t->spec.model.vocab)
        return moe_fail(MOE_EINVAL, "data.tokenizer '%s' changed while the job loaded it",
                        t->spec.data.tokenizer);
    return MOE_OK;
}

/* slot_mode: this process plays (pod, slot) and holds that slot's experts; its comm may come
 * later (trainer_rebind). init 0: the state is left zero, to be received (replica_restore). */
static moe_status open_common(struct trainer *t, const struct job_spec *spec, int pod, int slot,
                              struct comm *comm, int slot_mode, int init,
                              const struct data_access *access) {
    memset(t, 0, sizeof *t);
    t->spec = *spec;
    t->spec.optimizer.total_steps = (int)spec->run.steps;
    CHECK(spec_validate(&t->spec));
    char why[256];
    if (model_config_check(&t->spec.model, why, sizeof why) != 0)
        return moe_fail(MOE_EINVAL, "spec: %s", why);

    struct trainer_mesh *mesh = &t->mesh;
    mesh->pods = t->spec.mesh.pods;
    mesh->slots = t->spec.mesh.slots;
    mesh->shards = mesh->pods * mesh->slots;
    mesh->pod = pod;
    mesh->slot = slot;
    mesh->comm = comm;
    int E = t->spec.model.n_experts;
    mesh->n_local_experts = slot_mode ? E / mesh->slots : E;
    mesh->expert_lo = slot_mode ? slot * mesh->n_local_experts : 0;

    t->B = t->spec.run.batch_size;
    t->Bd = t->B / mesh->shards;
    int diloco = mesh_diloco(&t->spec.mesh);
    if (diloco && !slot_mode)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = diloco trains the pods apart, which "
                        "moectl train (one model) does not play: submit it to a cluster");
    t->Bstep = diloco ? t->B / mesh->pods : t->B;
    t->M = t->spec.run.micro_batch > 0 ? t->spec.run.micro_batch : t->Bd;
    t->T = t->spec.model.seq_len;
    moe_status res;
    CHECK_GOTO(vocab_follows_tokenizer(t, access), res, fail);
    CHECK_GOTO(data_open_access(&t->data, &t->spec.data, t->T, access), res, fail);
    CHECK_GOTO(check_vocab(t), res, fail);
    t->unigram_bits = data_unigram_entropy_bits(&t->data);
    t->tokens = malloc(sizeof(int) * (size_t)t->M * t->T);
    t->targets = malloc(sizeof(int) * (size_t)t->M * t->T);
    t->load_sum = calloc((size_t)t->spec.model.n_layers * E, sizeof(long));
    if (!t->tokens || !t->targets || !t->load_sum ||
        model_alloc_experts(&t->model, &t->spec.model, t->M, mesh->expert_lo,
                            mesh->n_local_experts) != 0) {
        res = moe_fail(MOE_ENOMEM, "out of memory allocating a model of %d layers, d_model %d, "
                       "%d experts for micro-batch %d x %d (run.micro_batch can lower it)",
                       t->spec.model.n_layers, t->spec.model.d_model, mesh->n_local_experts,
                       t->M, t->T);
        goto fail;
    }
    if (!slot_mode && mesh->shards > 1) {
        mesh->shard_grads = calloc((size_t)mesh->shards, sizeof *mesh->shard_grads);
        if (!mesh->shard_grads) goto oom;
        mesh->shard_grads[0] = t->model.grad_mem;
        for (int d = 1; d < mesh->shards; d++)
            if (!(mesh->shard_grads[d] = calloc(t->model.n_params, sizeof(real)))) goto oom;
    }
    if (init) model_init(&t->model, t->spec.run.seed);
    /* the files a spec names besides its data are read as its data is */
    const struct data_roots *roots = access ? access->roots : NULL;
    char tok_sha[65] = ""; // the job's tokens, which a teacher and an init_from must share
    if (t->data.tok_model) tokens_sha256_hex(t->data.tok_model, t->data.tok_model_len, tok_sha);
    CHECK_GOTO(teacher_open(&t->teacher, &t->spec, t->M, roots, tok_sha), res, fail);
    if (init) CHECK_GOTO(model_init_from(&t->model, &t->spec, roots, tok_sha), res, fail);
    t->empty = !init;
    if (comm) CHECK_GOTO(slot_exec_open(t), res, fail);
    if (slot_mode) CHECK_GOTO(replica_open(t), res, fail);
    if (slot_mode && diloco) CHECK_GOTO(outer_open(t), res, fail);
    return MOE_OK;
oom:
    res = moe_fail(MOE_ENOMEM, "out of memory for the gradients of %d data shards (%zu "
                   "parameters each)", mesh->shards, t->model.n_params);
fail:
    trainer_close(t);
    return res;
}

moe_status trainer_open(struct trainer *t, const struct job_spec *spec) {
    return open_common(t, spec, 0, 0, NULL, 0, 1, NULL);
}

moe_status trainer_open_access(struct trainer *t, const struct job_spec *spec,
                               const struct data_access *access) {
    return open_common(t, spec, 0, 0, NULL, 0, 1, access);
}

static moe_status check_slot(const struct job_spec *spec, int pod, int slot) {
    if (pod < 0 || pod >= spec->mesh.pods || slot < 0 || slot >= spec->mesh.slots)
        return moe_fail(MOE_EINVAL, "slot (%d, %d) is outside the %d x %d mesh", pod, slot,
                        spec->mesh.pods, spec->mesh.slots);
    return MOE_OK;
}

moe_status trainer_open_slot_later(struct trainer *t, const struct job_spec *spec, int pod,
                                   int slot, int init, const struct data_access *access) {
    CHECK(check_slot(spec, pod, slot));
    return open_common(t, spec, pod, slot, NULL, 1, init, access);
}

moe_status trainer_open_slot(struct trainer *t, const struct job_spec *spec, int pod, int slot,
                             struct comm *comm) {
    if (!comm) return moe_fail(MOE_EINVAL, "trainer_open_slot: no data-plane communicator");
    CHECK(check_slot(spec, pod, slot));
    if (comm_size(comm) != spec->mesh.pods * spec->mesh.slots ||
        comm_rank(comm) != pod * spec->mesh.slots + slot)
        return moe_fail(MOE_EINVAL, "slot (%d, %d): the communicator has rank %d of %d, the "
                        "%d x %d mesh needs rank %d of %d", pod, slot, comm_rank(comm),
                        comm_size(comm), spec->mesh.pods, spec->mesh.slots,
                        pod * spec->mesh.slots + slot, spec->mesh.pods * spec->mesh.slots);
    return open_common(t, spec, pod, slot, comm, 1, 1, NULL);
}

int trainer_writes_model(const struct trainer *t) {
    return !t->mesh.comm || (t->mesh.pod == 0 && t->mesh.slot == 0);
}

moe_status trainer_rebind(struct trainer *t, struct comm *comm) {
    if (!t->mesh.rep || !comm) return moe_fail(MOE_EINVAL, "trainer_rebind: not a slot");
    int P = t->mesh.pods, S = t->mesh.slots, rank = t->mesh.pod * S + t->mesh.slot;
    if (comm_size(comm) != P * S || comm_rank(comm) != rank)
        return moe_fail(MOE_EINVAL, "slot (%d, %d): the communicator has rank %d of %d, the "
                        "%d x %d mesh needs rank %d", t->mesh.pod, t->mesh.slot,
                        comm_rank(comm), comm_size(comm), P, S, rank);
    if (t->mesh.exec) slot_exec_close(t);
    t->mesh.comm = comm;
    return slot_exec_open(t);
}

void trainer_close(struct trainer *t) {
    if (t->mesh.outer) outer_close(t);
    if (t->mesh.rep) replica_close(t);
    if (t->mesh.exec) slot_exec_close(t);
    if (t->mesh.shard_grads) {
        /* arena 0 is the model's own: put it back before the model frees it */
        if (t->mesh.shard_grads[0]) model_swap_grad_arena(&t->model, t->mesh.shard_grads[0]);
        for (int d = 1; d < t->mesh.shards; d++) free(t->mesh.shard_grads[d]);
        free(t->mesh.shard_grads);
        t->mesh.shard_grads = NULL;
    }
    /* the data spec inside t->spec is what t->data borrows, so the dataset goes first */
    data_close(&t->data);
    teacher_close(&t->teacher);
    model_free(&t->model);
    free(t->tokens);
    free(t->targets);
    free(t->load_sum);
    t->tokens = t->targets = NULL;
    t->load_sum = NULL;
}

/* Adds the shards' gradient arenas as the mesh does: the slots of each pod in tree order,
 * then the pods in tree order (kernels/tree_sum.h). The sum lands in arena 0. */
static void reduce_shards(struct trainer *t) {
    struct trainer_mesh *mesh = &t->mesh;
    int P = mesh->pods, S = mesh->slots;
    size_t n = t->model.n_params;
    real **leaves = mesh->shard_grads;
    real *pod_sums[P];
    for (int p = 0; p < P; p++) {
        tree_sum_f32(leaves + (size_t)p * S, S, n);
        pod_sums[p] = leaves[(size_t)p * S];
    }
    tree_sum_f32(pod_sums, P, n);
}

moe_status trainer_step(struct trainer *t, struct step_report *r) {
    if (t->mesh.exec) return slot_step(t, r);
    double t0 = moe_clock_s();
    struct model *m = &t->model;
    long step = m->step;
    step_begin(t, r);
    /* every shard of the mesh in turn, each into its own gradient arena; the losses add in
     * shard order, exactly as the slots' all-gather adds them */
    int D = t->mesh.shards;
    struct shard_losses total = {0};
    for (int d = 0; d < D; d++) {
        if (D > 1) model_swap_grad_arena(m, t->mesh.shard_grads[d]);
        struct shard_losses part = {0};
        step_shard_passes(t, d, step, &part, r, NULL); /* no hooks: cannot fail */
        total.loss += part.loss;
        total.ce += part.ce;
        total.aux += part.aux;
        total.z += part.z;
        total.kl += part.kl;
        total.dropped += part.dropped;
    }
    double u0 = moe_clock_s();
    if (D > 1) {
        reduce_shards(t);
        model_swap_grad_arena(m, t->mesh.shard_grads[0]);
    }
    r->loss = total.loss;
    r->ce = total.ce;
    r->aux = total.aux;
    r->z = total.z;
    r->kl = total.kl;
    r->dropped = total.dropped;
    /* the expert-bias update and the balance figure see the whole batch's load */
    memcpy(m->stats.load, t->load_sum, sizeof(long) * (size_t)m->cfg.n_layers * m->cfg.n_experts);
    r->lr = adamw_lr(&t->spec.optimizer, step);
    r->load_max_over_mean = step_load_imbalance(m);
    r->grad_norm = model_update(m, &t->spec.optimizer);
    r->t_update = moe_clock_s() - u0;
    return step_end(t, r, t0);
}

/* Shard d's part of an evaluation: windows [d * per, (d + 1) * per) of the `want` spread
 * evenly over the `total` held-out windows, in passes of up to M; the sum of ce * windows. */
static moe_status eval_shard(struct trainer *t, int d, long per, long want, long total,
                             double *part) {
    double sum = 0;
    long done = 0;
    while (done < per) {
        int b = 0;
        for (; b < t->M && done + b < per; b++) {
            long w = (long)((double)(d * per + done + b) * total / want);
            data_val_window(&t->data, w, t->tokens + (size_t)b * t->T,
                            t->targets + (size_t)b * t->T);
        }
        if (t->mesh.exec)
            CHECK(slot_forward(t, b));
        else
            model_forward(&t->model, t->tokens, t->targets, b, t->T);
        sum += t->model.stats.ce * b;
        done += b;
    }
    *part = sum;
    return MOE_OK;
}

moe_status trainer_eval(struct trainer *t, double *loss, long *windows) {
    long total = data_val_windows(&t->data);
    if (total == 0)
        return moe_fail(MOE_EINVAL, "eval: no held-out data (data.val_fraction is %g)",
                        t->spec.data.val_fraction);
    int D = t->mesh.shards;
    long want = (long)t->spec.run.eval_batches * t->B;
    if (want > total) want = total;
    want -= want % D; /* every shard evaluates as many windows, in as many passes */
    if (want == 0)
        return moe_fail(MOE_EINVAL, "eval: %ld held-out windows cannot be shared by %d data "
                        "shards (raise data.val_fraction)", total, D);
    long per = want / D;
    double sum = 0;
    uint64_t bytes = 0; // every slot counts all windows' bytes itself
    for (long i = 0; i < want; i++)
        bytes += data_val_window_bytes(&t->data, (long)((double)i * total / want));
    t->eval_bytes_per_token = (double)bytes / ((double)want * t->T);
    if (t->mesh.exec) {
        double part;
        CHECK(eval_shard(t, t->mesh.pod * t->mesh.slots + t->mesh.slot, per, want, total, &part));
        CHECK(slot_sum_over_shards(t, part, &sum));
    } else {
        for (int d = 0; d < D; d++) {
            double part;
            CHECK(eval_shard(t, d, per, want, total, &part));
            sum += part;
        }
    }
    *loss = sum / want;
    if (windows) *windows = want;
    return MOE_OK;
}

moe_status trainer_save_model(const struct trainer *t, const char *path) {
    if (t->mesh.exec) return slot_save_model(t, path);
    return model_save_job(&t->model, &t->spec, t->data.tok_model, t->data.tok_model_len, path);
}

/* The state file: the four arenas as flat tensors, the step in metadata. */
moe_status trainer_save_state(const struct trainer *t, const char *path) {
    const struct model *m = &t->model;
    if (t->mesh.exec)
        return moe_fail(MOE_EINVAL, "%s: a slot of a distributed job holds part of the state; "
                        "its replicas live in memory, not in state files", path);
    char step[32];
    snprintf(step, sizeof step, "%ld", m->step);
    struct st_tensor_out out[4] = {
        {"state.params", ST_F32, 1, {(int64_t)m->n_params}, m->param_mem},
        {"state.adam_m", ST_F32, 1, {(int64_t)m->n_params}, m->m_mem},
        {"state.adam_v", ST_F32, 1, {(int64_t)m->n_params}, m->v_mem},
        {"state.buffers", ST_F32, 1, {(int64_t)m->n_buffers}, m->buffer_mem},
    };
    char *cfg = model_config_json(&m->cfg);
    if (!cfg) return moe_fail(MOE_ENOMEM, "out of memory");
    struct st_meta meta[] = {{"format", "moed-state"}, {"moed.step", step},
                             {"moed.model_config", cfg}};
    moe_status res = st_write(path, out, 4, meta, 3);
    free(cfg);
    return res;
}

moe_status trainer_load_state(struct trainer *t, const char *path) {
    struct model *m = &t->model;
    if (t->mesh.exec)
        return moe_fail(MOE_EINVAL, "%s: state files hold a whole model, not a slot's part", path);
    struct st_file f;
    CHECK(st_read(&f, path));
    moe_status res = MOE_OK;
    const char *cfg_json = st_meta_get(&f, "moed.model_config");
    const char *step = st_meta_get(&f, "moed.step");
    struct model_config cfg;
    if (!cfg_json || !step) {
        res = moe_fail(MOE_EFORMAT, "%s: not a moed state file", path);
        goto exit;
    }
    CHECK_GOTO(model_config_from_json(&cfg, cfg_json, path), res, exit);
    if (memcmp(&cfg, &m->cfg, sizeof cfg) != 0) {
        res = moe_fail(MOE_EINVAL, "%s: state was saved for a different model config", path);
        goto exit;
    }
    int64_t np = (int64_t)m->n_params, nb = (int64_t)m->n_buffers;
    struct { const char *name; int64_t n; real *dst; } parts[] = {
        {"state.params", np, m->param_mem}, {"state.adam_m", np, m->m_mem},
        {"state.adam_v", np, m->v_mem},     {"state.buffers", nb, m->buffer_mem},
    };
    for (int i = 0; i < 4; i++) {
        const struct st_tensor *st;
        CHECK_GOTO(st_expect(&f, parts[i].name, ST_F32, 1, &parts[i].n, &st), res, exit);
        memcpy(parts[i].dst, st->data, st->nbytes);
    }
    m->step = strtol(step, NULL, 10);
exit:
    st_close(&f);
    return res;
}
