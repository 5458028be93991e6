/*
 * bench_gpu — GPU benchmarks, never a test (reports, does not pass or fail on speed):
 *
 *   bench_gpu moe  [key=value ...]   the MoE layer alone, forward + backward: ms, TFLOP/s, MFU
 *                                    keys: C E K F B T reps fp32 (defaults: C=4096 E=8 K=2
 *                                    F=14336 B=8 T=2048, i.e. 16384 tokens, bf16, dropless)
 *   bench_gpu step [key=value ...]   the whole training step (forward, backward, AdamW):
 *                                    keys: V C L NH T E K F B reps fp32 (defaults below)
 *   bench_gpu dump DIR               writes the small test model, a batch and the CPU
 *                                    reference's loss for tests/gpu/torch_ref.py --check
 *
 * FLOPs count matrix products only (the MFU convention), as tests/bench/bench_train.c: per
 * token and layer, forward 8C^2 (q, k, v, out), 4TC (the full T x T scores and mixing, as both
 * implementations compute them), 2CE (router), 6CF per kept assignment; plus 2CV for the LM
 * head; a training step is 3x the forward. MFU divides by the GPU's dense bf16 peak: 989.4
 * TFLOP/s for an H100 SXM (the datasheet's dense figure; MOE_PEAK_TFLOPS overrides it, e.g.
 * for another GPU). Times: CUDA events around the region for the layer, the host clock around
 * a whole step (which synchronises); warm-up first, the median of `reps` runs reported.
 */
#include "gpu_common.h"

#include "../../kernels/cuda/layers_cuda.h"
#include "../../kernels/cuda/model_cuda.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define H100_SXM_BF16_DENSE_TFLOPS 989.4

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "bench_gpu: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                    cudaGetErrorString(e_));                                                      \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)

static struct cuda_ctx *ctx;

static void ctx_ok(const char *what) {
    const char *e = cuda_ctx_error(ctx);
    if (e) {
        fprintf(stderr, "bench_gpu: %s: %s\n", what, e);
        exit(2);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n) {
    qsort(x, n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static double peak_tflops(void) {
    const char *e = getenv("MOE_PEAK_TFLOPS");
    return e && atof(e) > 0 ? atof(e) : H100_SXM_BF16_DENSE_TFLOPS;
}

/* key=value arguments into named ints */
struct opt {
    const char *key;
    int *val;
};

static void parse(int argc, char **argv, const struct opt *opts, int n) {
    for (int i = 2; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        int found = 0;
        for (int j = 0; eq && j < n; j++)
            if (strlen(opts[j].key) == (size_t)(eq - argv[i]) &&
                !strncmp(argv[i], opts[j].key, eq - argv[i])) {
                *opts[j].val = atoi(eq + 1);
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "bench_gpu: unknown argument %s\n", argv[i]);
            exit(2);
        }
    }
}

static void *dalloc(size_t bytes) {
    void *p;
    CK(cudaMalloc(&p, bytes ? bytes : 4));
    return p;
}

static void device_line(void) {
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# device: %s, %d SMs; peak used for MFU: %.1f TFLOP/s dense bf16 (%s)\n", prop.name,
           prop.multiProcessorCount, peak_tflops(),
           getenv("MOE_PEAK_TFLOPS") ? "MOE_PEAK_TFLOPS" : "H100 SXM datasheet");
}

static void use_ctx(int fp32) {
    char why[512];
    ctx = cuda_ctx_create(fp32 ? CUDA_FP32 : CUDA_BF16, why, sizeof why);
    if (!ctx) {
        fprintf(stderr, "bench_gpu: %s\n", why);
        exit(2);
    }
}

/* ---- the MoE layer ---- */

static int bench_moe(int argc, char **argv) {
    int C = 4096, E = 8, K = 2, F = 14336, B = 8, T = 2048, reps = 10, fp32 = 0;
    struct opt opts[] = {{"C", &C}, {"E", &E}, {"K", &K}, {"F", &F},
                         {"B", &B}, {"T", &T}, {"reps", &reps}, {"fp32", &fp32}};
    parse(argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (reps < 1) reps = 1;
    use_ctx(fp32);
    device_line();
    struct moe_layer_cfg c;
    memset(&c, 0, sizeof c);
    c.B = B, c.T = T, c.C = C, c.E = E, c.K = K, c.F = F;
    c.capacity = T * K; /* dropless: every assignment is computed and counted */
    c.aux_coef = 0.01, c.z_coef = 0.001;
    size_t N = (size_t)B * T, NK = N * K, nw = (size_t)E * F * C;

    /* weights in one arena registered with the context: bf16 copies made once, as in training */
    size_t n_arena = (size_t)E * C + 3 * nw;
    float *arena = (float *)dalloc(sizeof(float) * n_arena);
    float *grads = (float *)dalloc(sizeof(float) * n_arena);
    float *rw = arena, *wg = rw + (size_t)E * C, *wu = wg + nw, *wd = wu + nw;
    float *drw = grads, *dwg = drw + (size_t)E * C, *dwu = dwg + nw, *dwd = dwu + nw;
    init_normal_cuda(arena, n_arena, 7, 0, 0.02, ctx);
    float *inp = (float *)dalloc(sizeof(float) * N * C);
    float *dout = (float *)dalloc(sizeof(float) * N * C);
    init_normal_cuda(inp, N * C, 7, 1, 1.0, ctx); /* unit RMS, as after RMSNorm */
    init_normal_cuda(dout, N * C, 7, 2, 1e-3, ctx);
    ctx_ok("inputs");
    if (cuda_ctx_set_param_arena(ctx, arena, n_arena) != 0) ctx_ok("arena");
    float *out = (float *)dalloc(sizeof(float) * N * C);
    float *dinp = (float *)dalloc(sizeof(float) * N * C);
    float *scratch = (float *)dalloc(sizeof(float) * moe_backward_scratch_size(&c));
    struct moe_acts_cuda a;
    a.logits = (float *)dalloc(sizeof(float) * N * E);
    a.probs = (float *)dalloc(sizeof(float) * N * E);
    a.lse = (float *)dalloc(sizeof(float) * N);
    a.topk = (int *)dalloc(sizeof(int) * NK);
    a.gates = (float *)dalloc(sizeof(float) * NK);
    a.row_of = (int *)dalloc(sizeof(int) * NK);
    a.expert_off = (int *)dalloc(sizeof(int) * (E + 1));
    a.row_token = (int *)dalloc(sizeof(int) * NK);
    a.xe = (float *)dalloc(sizeof(float) * NK * C);
    a.h1 = (float *)dalloc(sizeof(float) * NK * F);
    a.h2 = (float *)dalloc(sizeof(float) * NK * F);
    a.ha = (float *)dalloc(sizeof(float) * NK * F);
    a.ye = (float *)dalloc(sizeof(float) * NK * C);
    int *off = (int *)calloc(E + 1, sizeof(int));
    long *load = (long *)calloc(E, sizeof(long));
    a.expert_off_host = off;

    cudaEvent_t ev[3];
    for (int i = 0; i < 3; i++) CK(cudaEventCreate(&ev[i]));
    cudaStream_t st = cuda_ctx_stream(ctx);
    double *t_fwd = (double *)calloc(reps, sizeof(double));
    double *t_bwd = (double *)calloc(reps, sizeof(double));
    double *t_all = (double *)calloc(reps, sizeof(double));
    double aux, z;
    for (int it = -3; it < reps; it++) { /* three warm-ups: workspaces grow, cuBLAS loads */
        CK(cudaEventRecord(ev[0], st));
        router_forward_cuda(&a, load, inp, rw, NULL, &c, ctx);
        router_losses_cuda(&aux, &z, &a, &c, ctx);
        experts_forward_cuda(out, &a, inp, wg, wu, wd, &c, ctx);
        CK(cudaEventRecord(ev[1], st));
        moe_backward_cuda(dinp, drw, dwg, dwu, dwd, scratch, dout, &a, inp, rw, wg, wu, wd, &c,
                          ctx);
        CK(cudaEventRecord(ev[2], st));
        CK(cudaEventSynchronize(ev[2]));
        ctx_ok("moe layer");
        if (it < 0) continue;
        float f, b;
        CK(cudaEventElapsedTime(&f, ev[0], ev[1]));
        CK(cudaEventElapsedTime(&b, ev[1], ev[2]));
        t_fwd[it] = f, t_bwd[it] = b, t_all[it] = f + b;
    }
    long kept = off[E];
    double fwd_flops = 2.0 * N * C * E + 6.0 * C * F * (double)kept;
    double ms_f = median(t_fwd, reps), ms_b = median(t_bwd, reps), ms = median(t_all, reps);
    double tflops = 3 * fwd_flops / (ms * 1e-3) / 1e12;
    printf("# MoE layer, %s, dropless: C=%d E=%d K=%d F=%d tokens=%zu (B=%d T=%d), %ld "
           "assignments; expert loads", fp32 ? "fp32" : "bf16 (fp32 accumulate)", C, E, K, F, N, B,
           T, kept);
    for (int e = 0; e < E; e++) printf(" %d", off[e + 1] - off[e]);
    printf("\n");
    printf("moe_layer forward  %9.3f ms  %7.1f TFLOP/s\n", ms_f, fwd_flops / (ms_f * 1e-3) / 1e12);
    printf("moe_layer backward %9.3f ms  %7.1f TFLOP/s\n", ms_b,
           2 * fwd_flops / (ms_b * 1e-3) / 1e12);
    printf("moe_layer fwd+bwd  %9.3f ms  %7.1f TFLOP/s  MFU %5.1f%% of %.1f (median of %d)\n", ms,
           tflops, 100 * tflops / peak_tflops(), peak_tflops(), reps);
    cuda_ctx_destroy(ctx);
    return 0;
}

/* ---- the whole step ---- */

static double step_flops(const struct model_config *c, int B, int T, long kept) {
    double N = (double)B * T, C = c->d_model, L = c->n_layers;
    double dense = N * L * (8 * C * C + 4.0 * T * C + 2 * C * c->n_experts) + N * 2 * C * c->vocab;
    return 3 * (dense + (double)kept * 6 * C * c->d_ff);
}

static int bench_step(int argc, char **argv) {
    int V = 256, C = 2048, L = 4, NH = 16, T = 1024, E = 8, K = 2, F = 4096, B = 16, reps = 10;
    int fp32 = 0;
    struct opt opts[] = {{"V", &V}, {"C", &C}, {"L", &L}, {"NH", &NH}, {"T", &T}, {"E", &E},
                         {"K", &K}, {"F", &F}, {"B", &B}, {"reps", &reps}, {"fp32", &fp32}};
    parse(argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (reps < 1) reps = 1;
    use_ctx(fp32);
    device_line();
    struct model_config cfg = gpu_test_model();
    cfg.vocab = V, cfg.d_model = C, cfg.n_layers = L, cfg.n_heads = NH, cfg.seq_len = T;
    cfg.n_experts = E, cfg.top_k = K, cfg.d_ff = F, cfg.dropless = 1;
    struct adamw_config opt = gpu_test_adamw();
    opt.total_steps = 1000;
    struct model_cuda m;
    char why[512];
    if (model_alloc_cuda(&m, &cfg, B, ctx, why, sizeof why) != 0) {
        fprintf(stderr, "bench_gpu: model_alloc_cuda: %s\n", why);
        return 2;
    }
    model_init_cuda(&m, 1);
    ctx_ok("init");
    int *tok = (int *)malloc(sizeof(int) * B * T), *tgt = (int *)malloc(sizeof(int) * B * T);
    for (size_t i = 0; i < (size_t)B * T; i++) {
        tok[i] = (int)(mix64(i) % V);
        tgt[i] = (int)(mix64(i + 1) % V);
    }
    double *ts = (double *)calloc(reps, sizeof(double));
    double *tf = (double *)calloc(reps, sizeof(double));
    double *tb = (double *)calloc(reps, sizeof(double));
    double *tu = (double *)calloc(reps, sizeof(double));
    long kept = 0;
    for (int it = -2; it < reps; it++) {
        double t0 = now();
        model_forward_cuda(&m, tok, tgt, B, T); /* synchronises (the loss) */
        double t1 = now();
        model_backward_cuda(&m, tok, tgt, B, T, 1.0, 0);
        cuda_ctx_sync(ctx);
        double t2 = now();
        model_update_cuda(&m, &opt); /* synchronises */
        double t3 = now();
        ctx_ok("training step");
        kept = (long)B * T * K * L - m.stats.dropped;
        if (it < 0) continue;
        ts[it] = t3 - t0, tf[it] = t1 - t0, tb[it] = t2 - t1, tu[it] = t3 - t2;
    }
    double s = median(ts, reps), flops = step_flops(&cfg, B, T, kept);
    double tflops = flops / s / 1e12;
    printf("# model: V=%d C=%d L=%d NH=%d T=%d E=%d K=%d F=%d B=%d (%d tokens), dropless, %zu "
           "parameters, %s, attention %s\n",
           V, C, L, NH, T, E, K, F, B, B * T, m.n_params, fp32 ? "fp32" : "bf16",
           cuda_ctx_attention(ctx) == CUDA_ATTN_FUSED ? "fused" : "gemm");
    printf("moed_step %9.2f ms (forward %.2f, backward %.2f, update %.2f; median of %d)  "
           "%9.0f tok/s  %7.1f TFLOP/s  MFU %5.1f%%\n",
           1e3 * s, 1e3 * median(tf, reps), 1e3 * median(tb, reps), 1e3 * median(tu, reps), reps,
           B * T / s, tflops, 100 * tflops / peak_tflops());
    model_free_cuda(&m);
    cuda_ctx_destroy(ctx);
    return 0;
}

/* ---- the small model for torch_ref.py --check ---- */

static void write_file(const char *dir, const char *name, const void *data, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "bench_gpu: %s: %s\n", path, strerror(errno));
        exit(2);
    }
}

static int dump(const char *dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_gpu: %s: %s\n", dir, strerror(errno));
        return 2;
    }
    struct model_config c = gpu_test_model();
    c.bias_balancing = 1; /* the bias takes part in the selection: checked too */
    struct model m;
    if (model_alloc(&m, &c, GPU_TEST_B) != 0) return 2;
    gpu_test_init(&m);
    for (size_t i = 0; i < m.n_buffers; i++) m.buffer_mem[i] = 0.01f * (float)((i % 3) - 1.0);
    int N = GPU_TEST_B * c.seq_len;
    int *tok = (int *)malloc(sizeof(int) * N), *tgt = (int *)malloc(sizeof(int) * N);
    gpu_test_batch(tok, tgt, GPU_TEST_B, c.seq_len, 0, GPU_TEST_SEED);
    double loss = model_forward(&m, tok, tgt, GPU_TEST_B, c.seq_len);
    write_file(dir, "params.bin", m.param_mem, sizeof(float) * m.n_params);
    write_file(dir, "expert_bias.bin", m.buffer_mem, sizeof(float) * m.n_buffers);
    write_file(dir, "tokens.bin", tok, sizeof(int) * N);
    write_file(dir, "targets.bin", tgt, sizeof(int) * N);
    char json[2048];
    int n = snprintf(json, sizeof json,
                     "{\"vocab\": %d, \"d_model\": %d, \"n_layers\": %d, \"n_heads\": %d, "
                     "\"seq_len\": %d, \"n_experts\": %d, \"top_k\": %d, \"d_ff\": %d, "
                     "\"capacity_factor\": %.9g, \"dropless\": %d, \"aux_loss_coef\": %.9g, "
                     "\"z_loss_coef\": %.9g, \"bias_balancing\": %d, \"rope_base\": %.9g, "
                     "\"norm_eps\": %.9g, \"batch\": %d,\n \"cpu_loss\": %.17g, \"cpu_ce\": %.17g, "
                     "\"cpu_aux\": %.17g, \"cpu_z\": %.17g, \"cpu_dropped\": %ld}\n",
                     c.vocab, c.d_model, c.n_layers, c.n_heads, c.seq_len, c.n_experts, c.top_k,
                     c.d_ff, c.capacity_factor, c.dropless, c.aux_loss_coef, c.z_loss_coef,
                     c.bias_balancing, c.rope_base, c.norm_eps, GPU_TEST_B, loss, m.stats.ce,
                     m.stats.aux, m.stats.z, m.stats.dropped);
    write_file(dir, "model.json", json, (size_t)n);
    printf("bench_gpu: wrote %s (CPU loss %.9f)\n", dir, loss);
    model_free(&m);
    free(tok), free(tgt);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "moe")) return bench_moe(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "step")) return bench_step(argc, argv);
    if (argc == 3 && !strcmp(argv[1], "dump")) return dump(argv[2]);
    fprintf(stderr, "usage: bench_gpu moe|step [key=value ...] | bench_gpu dump DIR\n");
    return 2;
}
