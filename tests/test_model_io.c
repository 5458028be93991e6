/*
 * test_model_io — model files round-trip exactly, and bad ones are refused by name.
 *
 * A model saved and loaded back has the same config, parameters and expert biases, bit for
 * bit. A file with one tensor of the wrong shape, one missing tensor, or no moed config is
 * refused with MOE_EFORMAT / MOE_ENOTFOUND and a message naming the tensor or the problem.
 */
#include "../common/log.h"
#include "check.h"
#include "../common/safetensors.h"
#include "../kernels/model.h"
#include "../worker/trainer/model_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* Re-writes src's tensors to dst, applying `edit` to the tensor called `target`:
 * 's' changes its shape (same byte count, dims swapped), 'd' drops it. */
static void rewrite(const char *src, const char *dst, const char *target, char edit, int keep_meta) {
    struct st_file f;
    if (st_read(&f, src) != MOE_OK) {
        printf("FAIL reading %s: %s\n", src, moe_errmsg());
        failures++;
        return;
    }
    struct st_tensor_out *out = calloc((size_t)f.n_tensors, sizeof *out);
    struct st_meta *meta = calloc((size_t)f.n_meta + 1, sizeof *meta);
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const struct st_tensor *t = &f.tensors[i];
        int hit = strcmp(t->name, target) == 0;
        if (hit && edit == 'd') continue;
        out[n] = (struct st_tensor_out){.name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                        .data = t->data};
        memcpy(out[n].shape, t->shape, sizeof t->shape);
        if (hit && edit == 's') { /* (E, F, C) -> (E, C, F): same bytes, wrong shape */
            out[n].shape[1] = t->shape[2];
            out[n].shape[2] = t->shape[1];
        }
        n++;
    }
    int nm = 0;
    for (int i = 0; keep_meta && i < f.n_meta; i++)
        meta[nm++] = (struct st_meta){f.meta_keys[i], f.meta_values[i]};
    if (st_write(dst, out, n, meta, nm) != MOE_OK) {
        printf("FAIL writing %s: %s\n", dst, moe_errmsg());
        failures++;
    }
    free(out);
    free(meta);
    st_close(&f);
}

int main(void) {
    moe_log_set_level(MOE_LOG_WARN);
    char dir[] = "/tmp/moe_test_model_io_XXXXXX";
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    char good[128], bad[128];
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);

    struct model_config cfg = {.vocab = 256, .d_model = 16, .n_layers = 2, .n_heads = 2,
                               .seq_len = 8, .n_experts = 4, .top_k = 2, .d_ff = 24,
                               .capacity_factor = 1.25f, .aux_loss_coef = 0.01f,
                               .z_loss_coef = 0.001f, .bias_balancing = 1,
                               .bias_update_rate = 0.001f, .rope_base = 10000,
                               .norm_eps = 1e-5f, .init_std = 0.02f};
    struct model m, back;
    EXPECT_MSG(model_alloc(&m, &cfg, 2) == 0, "alloc");
    model_init(&m, 99);
    for (size_t i = 0; i < m.n_buffers; i++) m.buffer_mem[i] = 0.001f * (float)i;
    EXPECT_MSG(model_save(&m, good, NULL, 0) == MOE_OK, "save: %s", moe_errmsg());
    EXPECT_MSG(model_load(&back, good, 2) == MOE_OK, "load: %s", moe_errmsg());
    EXPECT_MSG(memcmp(&back.cfg, &m.cfg, sizeof cfg) == 0, "config changed in the round trip");
    EXPECT_MSG(memcmp(back.param_mem, m.param_mem, sizeof(real) * m.n_params) == 0,
           "parameters changed in the round trip");
    EXPECT_MSG(memcmp(back.buffer_mem, m.buffer_mem, sizeof(real) * m.n_buffers) == 0,
           "expert biases changed in the round trip");
    model_free(&back);

    moe_status s;
    rewrite(good, bad, "blocks.1.moe.experts.gate.weight", 's', 1);
    s = model_load(&back, bad, 2);
    EXPECT_MSG(s == MOE_EFORMAT && strstr(moe_errmsg(), "blocks.1.moe.experts.gate.weight"),
           "wrong shape: status %d, message '%s'", s, moe_errmsg());
    if (s == MOE_OK) model_free(&back);

    rewrite(good, bad, "blocks.0.attn.qkv.weight", 'd', 1);
    s = model_load(&back, bad, 2);
    EXPECT_MSG(s != MOE_OK && strstr(moe_errmsg(), "blocks.0.attn.qkv.weight"),
           "missing tensor: status %d, message '%s'", s, moe_errmsg());
    if (s == MOE_OK) model_free(&back);

    rewrite(good, bad, "", 0, 0);
    s = model_load(&back, bad, 2);
    EXPECT_MSG(s == MOE_EFORMAT && strstr(moe_errmsg(), "not a moed model"),
           "no config: status %d, message '%s'", s, moe_errmsg());
    if (s == MOE_OK) model_free(&back);

    model_free(&m);
    unlink(good);
    unlink(bad);
    rmdir(dir);
    if (failures) {
        printf("test_model_io: %d FAILED\n", failures);
        return 1;
    }
    printf("test_model_io: OK\n");
    return 0;
}
