/*
 * gpu_common.h — what the GPU test and benchmark drivers share: the small model they compare
 * CPU and GPU on, its optimizer settings, a deterministic learnable text and its batches, and
 * random numbers from the project's hash.
 *
 * Owns: the test configuration, so the CPU-only reference run (cpu_reference.c) and the
 * GPU comparison (check_gpu.c) train the very same model on the very same batches.
 * Never: touches a GPU (it is included by the CPU-only driver too).
 */
#ifndef MOE_TESTS_GPU_COMMON_H
#define MOE_TESTS_GPU_COMMON_H

#include "../../kernels/mix64.h"
#include "../../kernels/model.h"

#include <math.h>
#include <string.h>

/* Learnable text for the training-curve comparison: repetitive enough that 20 steps of a tiny
 * model visibly lower the loss, varied enough that every expert sees traffic. */
static const char gpu_test_text[] =
    "the cat sat on the mat and the dog sat on the log. a small bird sang in the tall tree "
    "while the old man read his paper by the window. every morning the baker opens the shop "
    "at six and sells warm bread to the people of the town. the river runs past the mill, "
    "under the bridge and out to the sea where the boats wait for the tide. numbers: 0 1 2 3 "
    "4 5 6 7 8 9 10 11 12 13 14 15 16. letters: abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOP. "
    "the cat sat on the mat; the dog sat on the log; the bird sang in the tree; the man read "
    "the paper; the baker sold the bread; the river ran to the sea. END.\n";

/* Sequence i of step s: a window of the text at an offset from the hash of (seed, s, i). */
static inline void gpu_test_batch(int *tokens, int *targets, int B, int T, long step,
                                  uint64_t seed) {
    size_t len = sizeof gpu_test_text - 1;
    for (int b = 0; b < B; b++) {
        uint64_t h = mix64(mix64(mix64(seed) ^ (uint64_t)step) ^ (uint64_t)b);
        size_t off = (size_t)(h % (len - (size_t)T - 1));
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = (unsigned char)gpu_test_text[off + t];
            targets[b * T + t] = (unsigned char)gpu_test_text[off + t + 1];
        }
    }
}

/* The compared model: two layers, dropping capacity, every loss term on. Small enough for
 * the plain-C GEMM of a MOE_NO_BLAS build. */
static inline struct model_config gpu_test_model(void) {
    struct model_config c;
    memset(&c, 0, sizeof c);
    c.vocab = 256;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.seq_len = 64;
    c.n_experts = 4;
    c.top_k = 2;
    c.d_ff = 128;
    c.capacity_factor = 1.25f;
    c.dropless = 0;
    c.aux_loss_coef = 0.01f;
    c.z_loss_coef = 0.001f;
    c.bias_balancing = 0;
    c.bias_update_rate = 0.001f;
    c.rope_base = 10000.0f;
    c.norm_eps = 1e-5f;
    c.init_std = 0.02f;
    return c;
}

enum { GPU_TEST_B = 4, GPU_TEST_STEPS = 20 };
#define GPU_TEST_SEED 1234u

static inline struct adamw_config gpu_test_adamw(void) {
    struct adamw_config o;
    o.lr = 3e-3f;
    o.min_lr = 3e-4f;
    o.warmup_steps = 5;
    o.total_steps = GPU_TEST_STEPS;
    o.beta1 = 0.9f;
    o.beta2 = 0.95f;
    o.eps = 1e-8f;
    o.weight_decay = 0.1f;
    o.grad_clip = 1.0f;
    return o;
}

/* The starting point both sides train from: model_init, with the router weights scaled up
 * 10x so that routing is decisive (probabilities far apart): with the tiny init, top-k
 * choices sit near ties that float rounding differences between CPU and GPU could flip. */
static inline void gpu_test_init(struct model *m) {
    model_init(m, GPU_TEST_SEED);
    size_t n = m->tensor_sizes[3];
    for (size_t i = 0; i < n; i++) m->params.router_w[i] *= 10;
}

/* Normal(0, 1) numbers from a counter: value i of stream `seed`. */
static inline double gpu_test_normal(uint64_t seed, uint64_t i) {
    uint64_t h = mix64(mix64(seed ^ 0x746573742d726e67ULL) ^ i);
    double u1 = ((double)(h >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(mix64(h) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static inline void gpu_test_fill(float *x, size_t n, uint64_t seed, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * gpu_test_normal(seed, i));
}

#endif
