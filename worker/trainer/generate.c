/* generate.c — sampling text from a trained model (see generate.h). */
#include "generate.h"
#include "../../kernels/mix64.h"

#include <math.h>
#include <stdlib.h>

#define SAMPLE_DOMAIN 0x6d6f65642d67656eULL /* "moed-gen" */

static int sample(const real *logits, int V, float temperature, uint64_t seed, size_t pos) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp(((double)logits[i] - logits[best]) / temperature);
    uint64_t h = mix64(mix64(seed ^ SAMPLE_DOMAIN) ^ (uint64_t)pos);
    double u = (double)(h >> 11) * 0x1.0p-53 * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        acc += exp(((double)logits[i] - logits[best]) / temperature);
        if (u < acc) return i;
    }
    return best; /* u landed past the sum by rounding */
}

moe_status generate_tokens(struct model *m, int *ids, size_t n_prompt, size_t n_new, int start,
                           float temperature, uint64_t seed) {
    int T_max = m->cfg.seq_len, V = m->cfg.vocab;
    int *tokens = malloc(sizeof(int) * (size_t)T_max);
    if (!tokens) return moe_fail(MOE_ENOMEM, "generate: out of memory");
    for (size_t k = 0; k < n_new; k++) {
        size_t len = n_prompt + k;
        const int *ctx = len ? ids : &start;
        size_t n_ctx = len ? len : 1;
        int T = n_ctx < (size_t)T_max ? (int)n_ctx : T_max;
        for (int t = 0; t < T; t++) tokens[t] = ctx[n_ctx - (size_t)T + (size_t)t];
        model_forward(m, tokens, NULL, 1, T);
        const real *last = model_logits(m) + (size_t)(T - 1) * V;
        ids[len] = sample(last, V, temperature, seed, len);
    }
    free(tokens);
    return MOE_OK;
}

moe_status generate_bytes(struct model *m, uint8_t *out, size_t n_prompt, size_t n_new,
                          float temperature, uint64_t seed) {
    int *ids = malloc(sizeof(int) * (n_prompt + n_new + 1));
    if (!ids) return moe_fail(MOE_ENOMEM, "generate: out of memory");
    for (size_t k = 0; k < n_prompt; k++) ids[k] = out[k];
    moe_status res = generate_tokens(m, ids, n_prompt, n_new, '\n', temperature, seed);
    for (size_t k = n_prompt; k < n_prompt + n_new; k++) out[k] = (uint8_t)ids[k];
    free(ids);
    return res;
}
