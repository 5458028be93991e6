/*
 * cpu_reference — the CPU reference alone, no CUDA: the GPU test's 20 training steps of the
 * small model, one line per step with the loss to 9 significant digits.
 *
 * tests/gpu/Makefile builds it twice, with OpenBLAS where cblas.h exists and with
 * MOE_NO_BLAS (kernels/noblas.h), and `make noblas-check` compares the two curves: the
 * stand-in GEMM must compute the same model (agreement to ~1e-6 relative, rounding only).
 */
#include "gpu_common.h"

#include <stdio.h>

int main(void) {
    struct model_config cfg = gpu_test_model();
    struct adamw_config opt = gpu_test_adamw();
    struct model m;
    if (model_alloc(&m, &cfg, GPU_TEST_B) != 0) {
        fprintf(stderr, "cpu_reference: out of memory\n");
        return 1;
    }
    gpu_test_init(&m);
    int T = cfg.seq_len, tok[GPU_TEST_B * 64], tgt[GPU_TEST_B * 64];
    for (long s = 0; s < GPU_TEST_STEPS; s++) {
        gpu_test_batch(tok, tgt, GPU_TEST_B, T, s, GPU_TEST_SEED);
        double loss = model_forward(&m, tok, tgt, GPU_TEST_B, T);
        model_backward(&m, tok, tgt, GPU_TEST_B, T, 1.0, 0);
        double norm = model_update(&m, &opt);
        printf("step %2ld loss %.9g ce %.9g aux %.9g z %.9g dropped %ld norm %.9g\n", s, loss,
               m.stats.ce, m.stats.aux, m.stats.z, m.stats.dropped, norm);
    }
    model_free(&m);
    return 0;
}
