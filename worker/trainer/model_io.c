/* model_io.c — struct model <-> named safetensors tensors (see model_io.h). */
#include "model_io.h"
#include "../../common/fileio.h"
#include "../../common/safetensors.h"
#include "tokens.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Model files hold F32; the trainer library is built with float kernels only. */
_Static_assert(sizeof(real) == sizeof(float), "model_io expects the float kernels");

#define META_FORMAT "format"
#define META_CONFIG "moed.model_config"
#define META_TOKENIZER_SHA "moed.tokenizer_sha256"
#define TOKENIZER_TENSOR "tokenizer.model"
#define EXPERT_BIAS_NAME "moe.expert_bias"

/* The config fields, once: name in JSON, and where it lives. Ints and floats are kept apart so
 * that a float never round-trips through an int. */
struct cfg_field {
    const char *name;
    size_t offset;
    int is_float;
};
#define I(f) {#f, offsetof(struct model_config, f), 0}
#define F(f) {#f, offsetof(struct model_config, f), 1}
static const struct cfg_field cfg_fields[] = {
    I(vocab),          I(d_model),        I(n_layers),        I(n_heads),      I(seq_len),
    I(n_experts),      I(top_k),          I(d_ff),            F(capacity_factor), I(dropless),
    F(aux_loss_coef),  F(z_loss_coef),    I(bias_balancing),  F(bias_update_rate),
    F(rope_base),      F(norm_eps),       F(init_std),
};
#undef I
#undef F
#define N_CFG_FIELDS (sizeof cfg_fields / sizeof cfg_fields[0])

char *model_config_json(const struct model_config *c) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; i < N_CFG_FIELDS; i++) {
        const char *p = (const char *)c + cfg_fields[i].offset;
        double v = cfg_fields[i].is_float ? (double)*(const float *)p : (double)*(const int *)p;
        cJSON_AddNumberToObject(o, cfg_fields[i].name, v);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

moe_status model_config_from_json(struct model_config *c, const char *json, const char *origin) {
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return moe_fail(MOE_EFORMAT, "%s: model config is not a JSON object", origin);
    }
    memset(c, 0, sizeof *c);
    moe_status res = MOE_OK;
    for (size_t i = 0; i < N_CFG_FIELDS; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(o, cfg_fields[i].name);
        if (!cJSON_IsNumber(v)) {
            res = moe_fail(MOE_EFORMAT, "%s: model config lacks numeric field '%s'", origin,
                           cfg_fields[i].name);
            break;
        }
        char *p = (char *)c + cfg_fields[i].offset;
        if (cfg_fields[i].is_float)
            *(float *)p = (float)v->valuedouble;
        else
            *(int *)p = v->valueint;
    }
    cJSON_Delete(o);
    if (res != MOE_OK) return res;
    char why[256];
    if (model_config_check(c, why, sizeof why) != 0)
        return moe_fail(MOE_EFORMAT, "%s: model config: %s", origin, why);
    return MOE_OK;
}

/* Name and shape of tensor i for layer l (l ignored when the tensor has no layer dimension). */
static void tensor_name_shape(const struct model_config *c, int i, int l, char *name, size_t len,
                              int *ndim, int64_t *shape, size_t *count) {
    struct model_tensor_info ti;
    model_tensor_info(c, i, &ti);
    if (ti.per_layer)
        snprintf(name, len, "blocks.%d.%s", l, ti.name);
    else
        snprintf(name, len, "%s", ti.name);
    *ndim = ti.ndim;
    *count = 1;
    for (int d = 0; d < ti.ndim; d++) {
        shape[d] = ti.dims[d];
        *count *= (size_t)ti.dims[d];
    }
}

/* Whether `name` is one of the tensors a model of config c has. */
static int has_tensor(const struct model_config *c, const char *name) {
    char want[128];
    int ndim;
    int64_t shape[3];
    size_t count;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++)
        for (int l = 0; l < c->n_layers; l++) {
            tensor_name_shape(c, i, l, want, sizeof want, &ndim, shape, &count);
            if (!strcmp(want, name)) return 1;
        }
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(want, sizeof want, "blocks.%d.%s", l, EXPERT_BIAS_NAME);
        if (!strcmp(want, name)) return 1;
    }
    return 0;
}

/* Tensor i of layer l from f into m: the whole tensor, or for an expert tensor the rows of
 * m's experts [expert_lo, expert_lo + n_local_experts). */
static moe_status copy_tensor(struct model *m, const struct st_file *f, int i, int l) {
    const struct model_config *c = &m->cfg;
    char name[128];
    int ndim;
    int64_t shape[3];
    size_t count;
    tensor_name_shape(c, i, l, name, sizeof name, &ndim, shape, &count); /* the whole shape */
    const struct st_tensor *st;
    CHECK(st_expect(f, name, ST_F32, ndim, shape, &st));
    const real *src = st->data;
    real *dst = model_tensor(&m->params, i);
    if (!model_tensor_is_expert(i)) {
        memcpy(dst + count * (size_t)l, src, sizeof(real) * count);
        return MOE_OK;
    }
    size_t per_expert = count / (size_t)c->n_experts, local = per_expert * m->n_local_experts;
    memcpy(dst + local * (size_t)l, src + per_expert * m->expert_lo, sizeof(real) * local);
    return MOE_OK;
}

moe_status model_params_from(struct model *m, const struct st_file *f) {
    const struct model_config *c = &m->cfg;
    int L = c->n_layers, E = c->n_experts;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(c, i, &ti);
        for (int l = 0; l < (ti.per_layer ? L : 1); l++) CHECK(copy_tensor(m, f, i, l));
    }
    for (int l = 0; l < L; l++) {
        char name[128];
        snprintf(name, sizeof name, "blocks.%d.%s", l, EXPERT_BIAS_NAME);
        const struct st_tensor *st;
        int64_t shape[1] = {E};
        CHECK(st_expect(f, name, ST_F32, 1, shape, &st));
        memcpy(m->buffers.expert_bias + (size_t)l * E, st->data, sizeof(real) * (size_t)E);
    }
    /* a model file may also carry its tokenizer's bytes: not a parameter */
    for (int k = 0; k < f->n_tensors; k++)
        if (strcmp(f->tensors[k].name, "tokenizer.model") != 0 &&
            !has_tensor(c, f->tensors[k].name))
            return moe_fail(MOE_EFORMAT, "%s: tensor '%s' is not in a model of this spec "
                            "(model.layers = %d)", f->path, f->tensors[k].name, L);
    return MOE_OK;
}

/* Every tensor as (name, shape, pointer), in arena order, expert biases last per layer. */
struct named {
    char name[128];
    int ndim;
    int64_t shape[3];
    real *ptr;
};

static struct named *named_tensors(const struct model *m, int *n_out) {
    const struct model_config *c = &m->cfg;
    int L = c->n_layers, n = 0;
    struct named *t = calloc((size_t)MODEL_NUM_TENSORS * L + L, sizeof *t);
    if (!t) return NULL;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(c, i, &ti);
        real *base = model_tensor(&m->params, i);
        for (int l = 0; l < (ti.per_layer ? L : 1); l++) {
            size_t count;
            tensor_name_shape(c, i, l, t[n].name, sizeof t[n].name, &t[n].ndim, t[n].shape,
                              &count);
            t[n].ptr = base + count * l;
            n++;
        }
    }
    for (int l = 0; l < L; l++) {
        snprintf(t[n].name, sizeof t[n].name, "blocks.%d.%s", l, EXPERT_BIAS_NAME);
        t[n].ndim = 1;
        t[n].shape[0] = c->n_experts;
        t[n].ptr = m->buffers.expert_bias + (size_t)l * c->n_experts;
        n++;
    }
    *n_out = n;
    return t;
}

/* model_save, plus the tokenizer file's bytes (tok_len 0: none) as the U8 tensor
 * TOKENIZER_TENSOR. */
static moe_status save_with(const struct model *m, const char *path, const char *const *extra_meta,
                            int n_extra, const uint8_t *tok, size_t tok_len) {
    int n;
    struct named *t = named_tensors(m, &n);
    struct st_tensor_out *out = calloc((size_t)n + 1, sizeof *out);
    struct st_meta *meta = calloc((size_t)n_extra + 2, sizeof *meta);
    char *cfg = model_config_json(&m->cfg);
    moe_status res;
    if (!t || !out || !meta || !cfg) {
        res = moe_fail(MOE_ENOMEM, "%s: out of memory preparing the model file", path);
        goto exit;
    }
    enum st_dtype dt = ST_F32;
    for (int i = 0; i < n; i++) {
        out[i].name = t[i].name;
        out[i].dtype = dt;
        out[i].ndim = t[i].ndim;
        for (int d = 0; d < t[i].ndim; d++) out[i].shape[d] = t[i].shape[d];
        out[i].data = t[i].ptr;
    }
    if (tok_len > 0)
        out[n++] = (struct st_tensor_out){TOKENIZER_TENSOR, ST_U8, 1, {(int64_t)tok_len}, tok};
    meta[0] = (struct st_meta){META_FORMAT, "moed"};
    meta[1] = (struct st_meta){META_CONFIG, cfg};
    for (int i = 0; i < n_extra; i++)
        meta[2 + i] = (struct st_meta){extra_meta[2 * i], extra_meta[2 * i + 1]};
    res = st_write(path, out, n, meta, n_extra + 2);
exit:
    free(cfg);
    free(meta);
    free(out);
    free(t);
    return res;
}

moe_status model_save(const struct model *m, const char *path, const char *const *extra_meta,
                      int n_extra) {
    return save_with(m, path, extra_meta, n_extra, NULL, 0);
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

moe_status model_save_job(const struct model *m, const struct job_spec *spec,
                          const uint8_t *tokenizer, size_t tokenizer_len, const char *path) {
    char step[32], sha[65];
    snprintf(step, sizeof step, "%ld", m->step);
    char *spec_json = spec_to_json(spec);
    if (!spec_json) return moe_fail(MOE_ENOMEM, "out of memory serialising the spec");
    if (tokenizer_len > 0) tokens_sha256_hex(tokenizer, tokenizer_len, sha);
    const char *meta[] = {"moed.step", step, "moed.job_name", spec->name,
                          META_TOKENIZER_SHA, sha};
    moe_status res = save_with(m, path, meta, tokenizer_len > 0 ? 3 : 2, tokenizer, tokenizer_len);
    if (res == MOE_OK) {
        char cfg_path[SPEC_PATH_MAX + 16];
        config_path_for(path, cfg_path, sizeof cfg_path);
        size_t n = strlen(spec_json) + 64;
        char *doc = malloc(n);
        if (!doc) {
            res = moe_fail(MOE_ENOMEM, "out of memory");
        } else {
            snprintf(doc, n, "{\"step\": %ld, \"spec\": %s}\n", m->step, spec_json);
            res = moe_write_file_atomic(cfg_path, doc, strlen(doc), 0644);
            free(doc);
        }
        if (res != MOE_OK) unlink(path); /* both files or neither */
    }
    free(spec_json);
    return res;
}

moe_status model_load(struct model *m, const char *path, int B_max) {
    struct st_file f;
    CHECK(st_read(&f, path));
    moe_status res = model_load_st(m, &f, path, B_max);
    st_close(&f);
    return res;
}

moe_status model_load_st(struct model *m, const struct st_file *file, const char *path,
                         int B_max) {
    const struct st_file *f = file;
    moe_status res = MOE_OK;
    struct named *t = NULL;
    int model_ready = 0;
    const char *cfg_json = st_meta_get(f, META_CONFIG);
    if (!cfg_json) {
        res = moe_fail(MOE_EFORMAT, "%s: not a moed model (no '%s' metadata)", path, META_CONFIG);
        goto exit;
    }
    struct model_config cfg;
    CHECK_GOTO(model_config_from_json(&cfg, cfg_json, path), res, exit);
    if (model_alloc(m, &cfg, B_max) != 0) {
        res = moe_fail(MOE_ENOMEM, "%s: out of memory allocating the model", path);
        goto exit;
    }
    model_ready = 1;
    int n;
    t = named_tensors(m, &n);
    if (!t) {
        res = moe_fail(MOE_ENOMEM, "%s: out of memory", path);
        goto exit;
    }
    for (int i = 0; i < n; i++) {
        const struct st_tensor *st;
        CHECK_GOTO(st_expect(f, t[i].name, ST_F32, t[i].ndim, t[i].shape, &st), res, exit);
        memcpy(t[i].ptr, st->data, st->nbytes);
    }
exit:
    free(t);
    if (res != MOE_OK && model_ready) model_free(m);
    return res;
}

moe_status model_load_tokenizer(const char *path, uint8_t **bytes, size_t *n, char sha[65]) {
    struct st_file f;
    CHECK(st_read(&f, path));
    moe_status res = MOE_OK;
    const struct st_tensor *t = st_find(&f, TOKENIZER_TENSOR);
    const char *want = st_meta_get(&f, META_TOKENIZER_SHA);
    *bytes = NULL;
    *n = 0;
    sha[0] = 0;
    if (!t) goto exit;
    if (t->dtype != ST_U8 || t->ndim != 1 || !want || strlen(want) != 64) {
        res = moe_fail(MOE_EFORMAT, "%s: malformed '%s' tensor", path, TOKENIZER_TENSOR);
        goto exit;
    }
    tokens_sha256_hex(t->data, t->nbytes, sha);
    if (strcmp(sha, want) != 0) {
        res = moe_fail(MOE_EFORMAT, "%s: its tokenizer does not match the SHA-256 in its "
                       "metadata (a corrupt file)", path);
        goto exit;
    }
    if (!(*bytes = malloc(t->nbytes ? t->nbytes : 1))) {
        res = moe_fail(MOE_ENOMEM, "%s: out of memory", path);
        goto exit;
    }
    memcpy(*bytes, t->data, t->nbytes);
    *n = t->nbytes;
exit:
    st_close(&f);
    return res;
}
