/* trainer.c — the step-by-step training loop (see trainer.h). */
#include "trainer.h"
#include "../common/log.h"
#include "../common/safetensors.h"
#include "model_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

moe_status trainer_open(struct trainer *t, const struct job_spec *spec) {
    memset(t, 0, sizeof *t);
    t->spec = *spec;
    t->spec.optimizer.total_steps = (int)spec->run.steps;
    CHECK(spec_validate(&t->spec));
    char why[256];
    if (model_config_check(&t->spec.model, why, sizeof why) != 0)
        return moe_fail(MOE_EINVAL, "spec: %s", why);

    t->B = t->spec.run.batch_size;
    t->M = t->spec.run.micro_batch > 0 ? t->spec.run.micro_batch : t->B;
    t->T = t->spec.model.seq_len;
    moe_status res;
    CHECK_GOTO(data_open(&t->data, &t->spec.data, t->T), res, fail);
    t->unigram_bits = data_unigram_entropy_bits(&t->data);
    t->tokens = malloc(sizeof(int) * (size_t)t->M * t->T);
    t->targets = malloc(sizeof(int) * (size_t)t->M * t->T);
    t->load_sum = calloc((size_t)t->spec.model.n_layers * t->spec.model.n_experts, sizeof(long));
    if (!t->tokens || !t->targets || !t->load_sum ||
        model_alloc(&t->model, &t->spec.model, t->M) != 0) {
        res = moe_fail(MOE_ENOMEM, "out of memory allocating a model of %d layers, d_model %d, "
                       "%d experts for micro-batch %d x %d (run.micro_batch can lower it)",
                       t->spec.model.n_layers, t->spec.model.d_model,
                       t->spec.model.n_experts, t->M, t->T);
        goto fail;
    }
    model_init(&t->model, t->spec.run.seed);
    return MOE_OK;
fail:
    trainer_close(t);
    return res;
}

void trainer_close(struct trainer *t) {
    /* the data spec inside t->spec is what t->data borrows, so the dataset goes first */
    data_close(&t->data);
    model_free(&t->model);
    free(t->tokens);
    free(t->targets);
    free(t->load_sum);
    t->tokens = t->targets = NULL;
    t->load_sum = NULL;
}

/* Busiest expert's share against an even split, worst layer: 1.0 is perfect balance. */
static double load_imbalance(const struct model *m) {
    int E = m->cfg.n_experts;
    double worst = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        long total = 0, mx = 0;
        for (int e = 0; e < E; e++) {
            long v = m->stats.load[(size_t)l * E + e];
            total += v;
            if (v > mx) mx = v;
        }
        double r = total ? (double)mx * E / total : 0;
        if (r > worst) worst = r;
    }
    return worst;
}

moe_status trainer_step(struct trainer *t, struct step_report *r) {
    double t0 = now_seconds();
    struct model *m = &t->model;
    long step = m->step;
    size_t n_load = (size_t)m->cfg.n_layers * m->cfg.n_experts;
    memset(r, 0, sizeof *r);
    memset(t->load_sum, 0, sizeof(long) * n_load);
    /* micro-batches in sequence order; each loss term is a mean, so its share is M/B */
    int n_micro = t->B / t->M;
    double share = (double)t->M / t->B;
    for (int i = 0; i < n_micro; i++) {
        data_train_batch(&t->data, t->spec.run.seed, step, i * t->M, t->M, t->tokens, t->targets);
        double f0 = now_seconds();
        model_forward(m, t->tokens, t->targets, t->M, t->T);
        double f1 = now_seconds();
        model_backward(m, t->tokens, t->targets, t->M, t->T, share, i > 0);
        r->t_forward += f1 - f0;
        r->t_backward += now_seconds() - f1;
        r->loss += share * m->stats.loss;
        r->ce += share * m->stats.ce;
        r->aux += share * m->stats.aux;
        r->z += share * m->stats.z;
        r->dropped += m->stats.dropped;
        for (size_t j = 0; j < n_load; j++) t->load_sum[j] += m->stats.load[j];
    }
    /* the expert-bias update and the balance figure see the whole batch's load */
    memcpy(m->stats.load, t->load_sum, sizeof(long) * n_load);
    r->lr = adamw_lr(&t->spec.optimizer, step);
    r->load_max_over_mean = load_imbalance(m);
    double u0 = now_seconds();
    r->grad_norm = model_update(m, &t->spec.optimizer);
    r->t_update = now_seconds() - u0;
    r->step = m->step;
    r->tokens = (long)t->B * t->T;
    r->assignments = r->tokens * m->cfg.top_k * m->cfg.n_layers;
    r->seconds = now_seconds() - t0;
    if (r->loss != r->loss) /* NaN: diverged. Say so rather than train on garbage. */
        return moe_fail(MOE_EINVAL, "training diverged at step %ld (loss is NaN); lower "
                        "optimizer.lr or raise optimizer.warmup_steps", r->step);
    return MOE_OK;
}

moe_status trainer_eval(struct trainer *t, double *loss, long *windows) {
    long total = data_val_windows(&t->data);
    if (total == 0)
        return moe_fail(MOE_EINVAL, "eval: no held-out data (data.val_fraction is %g)",
                        t->spec.data.val_fraction);
    long want = (long)t->spec.run.eval_batches * t->B;
    if (want > total) want = total;
    double sum = 0;
    long done = 0;
    while (done < want) {
        int b = 0;
        for (; b < t->M && done + b < want; b++) {
            /* spread the windows evenly over the whole held-out set */
            long w = (long)((double)(done + b) * total / want);
            data_val_window(&t->data, w, t->tokens + (size_t)b * t->T,
                            t->targets + (size_t)b * t->T);
        }
        model_forward(&t->model, t->tokens, t->targets, b, t->T);
        sum += t->model.stats.ce * b;
        done += b;
    }
    *loss = sum / done;
    if (windows) *windows = done;
    return MOE_OK;
}

/* "x.safetensors" -> "x.json"; any other name gets ".json" appended. */
static void config_path_for(const char *model_path, char *out, size_t len) {
    const char *ext = ".safetensors";
    size_t n = strlen(model_path), e = strlen(ext);
    if (n > e && strcmp(model_path + n - e, ext) == 0)
        snprintf(out, len, "%.*s.json", (int)(n - e), model_path);
    else
        snprintf(out, len, "%s.json", model_path);
}

static moe_status write_file_atomic(const char *path, const char *text) {
    char tmp[SPEC_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        int err = errno;
        if (fd >= 0) close(fd), unlink(tmp);
        return moe_fail(MOE_EIO, "%s: cannot write: %s", path, strerror(err));
    }
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return moe_fail(MOE_EIO, "%s: cannot write: %s", path, strerror(err));
    }
    return MOE_OK;
}

moe_status trainer_save_model(const struct trainer *t, const char *path) {
    char step[32];
    snprintf(step, sizeof step, "%ld", t->model.step);
    char *spec_json = spec_to_json(&t->spec);
    if (!spec_json) return moe_fail(MOE_ENOMEM, "out of memory serialising the spec");
    const char *meta[] = {"moed.step", step, "moed.job_name", t->spec.name};
    moe_status res = model_save(&t->model, path, meta, 2);
    if (res == MOE_OK) {
        char cfg_path[SPEC_PATH_MAX + 16];
        config_path_for(path, cfg_path, sizeof cfg_path);
        size_t n = strlen(spec_json) + 64;
        char *doc = malloc(n);
        if (!doc) {
            res = moe_fail(MOE_ENOMEM, "out of memory");
        } else {
            snprintf(doc, n, "{\"step\": %ld, \"spec\": %s}", t->model.step, spec_json);
            res = write_file_atomic(cfg_path, doc);
            free(doc);
        }
        if (res != MOE_OK) unlink(path); /* both files or neither */
    }
    free(spec_json);
    return res;
}

/* The state file: the four arenas as flat tensors, the step in metadata. */
moe_status trainer_save_state(const struct trainer *t, const char *path) {
    const struct model *m = &t->model;
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
