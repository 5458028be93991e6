/*
 * bench_train — training-step throughput of the demo config and a larger one, next to the
 * machine's best sgemm rate measured in the same run.
 *
 * Achieved GFLOP/s counts the model's matrix products only (the convention of MFU figures):
 * per token and layer, forward: q,k,v,out projections 8C^2, attention scores and mixing 4TC
 * (the full T x T product is computed), router 2CE, and 6CF per kept (token, expert)
 * assignment; plus the tied LM head 2CV. A training step is 3x the forward (the backward
 * computes two products per forward product).
 * The training runs under the OpenBLAS core type that won the sgemm probe (re-exec).
 * The demo config runs twice: on bytes (vocabulary 256), and with a learned vocabulary of
 * BENCH_VOCAB pieces trained on the same data first, so tok/s and bytes of text per second
 * (what a tokenizer buys: more text per step) compare.
 */
#include "../../common/blas_select.h"
#include "../../common/log.h"
#include "../../common/spec.h"
#include "../../common/tokenizer.h"
#include "../../common/fileio.h"
#include "../../worker/trainer/trainer.h"
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BENCH_VOCAB 2048 /* the vocabulary README measures learning with */

struct bench_cfg {
    const char *name;
    int C, L, NH, T, E, K, F, B;
    int dropless;
    int tokenized; // 1: data.tokenizer is the BENCH_VOCAB tokenizer
};

static char tok_path[] = "/tmp/bench_train_tok.XXXXXX";

/* A BENCH_VOCAB-piece BPE tokenizer of the data, written to tok_path. */
static int make_tokenizer(const char *data) {
    struct data_stream st;
    if (data_load_stream(&st, data) != MOE_OK) return -1;
    const uint8_t **bytes = calloc((size_t)st.n_segments, sizeof *bytes);
    size_t *lens = calloc((size_t)st.n_segments, sizeof *lens), len = 0;
    uint8_t *model = NULL;
    int fd = mkstemp(tok_path), ok = bytes && lens && fd >= 0;
    for (int k = 0; ok && k < st.n_segments; k++) {
        bytes[k] = st.segments[k].bytes;
        lens[k] = st.segments[k].n;
    }
    struct tokenizer_texts texts = {bytes, lens, st.n_segments};
    double t0 = bench_now();
    ok = ok && tokenizer_train(&texts, BENCH_VOCAB, "bpe", &model, &len) == MOE_OK &&
         moe_write_all(fd, model, len) == 0;
    if (ok) printf("# tokenizer: %d-piece BPE of the data, trained in %.1f s\n", BENCH_VOCAB,
                   bench_now() - t0);
    if (fd >= 0) close(fd);
    free(model);
    free(bytes);
    free(lens);
    data_stream_free(&st);
    return ok ? 0 : -1;
}

static double step_flops(const struct model_config *c, int B, int T, long kept) {
    double N = (double)B * T, C = c->d_model, L = c->n_layers;
    double dense = N * L * (8 * C * C + 4.0 * T * C + 2 * C * c->n_experts) + N * 2 * C * c->vocab;
    double experts = (double)kept * 6 * C * c->d_ff; /* kept assignments summed over layers */
    return 3 * (dense + experts);
}

static int run_config(const struct bench_cfg *bc, const char *data, double sgemm_best) {
    struct job_spec s;
    spec_defaults(&s);
    snprintf(s.name, sizeof s.name, "%s", bc->name);
    s.model.d_model = bc->C;
    s.model.n_layers = bc->L;
    s.model.n_heads = bc->NH;
    s.model.seq_len = bc->T;
    s.model.n_experts = bc->E;
    s.model.top_k = bc->K;
    s.model.d_ff = bc->F;
    s.model.dropless = bc->dropless;
    s.run.batch_size = bc->B;
    s.run.steps = 1000;
    s.data.n_sources = 1;
    snprintf(s.data.sources[0].path, sizeof s.data.sources[0].path, "%s", data);
    s.data.sources[0].weight = 1;
    if (bc->tokenized) snprintf(s.data.tokenizer, sizeof s.data.tokenizer, "%s", tok_path);
    struct trainer t;
    if (trainer_open(&t, &s) != MOE_OK) {
        fprintf(stderr, "bench_train: %s\n", moe_errmsg());
        return 1;
    }
    struct step_report r;
    for (int i = 0; i < 2; i++) trainer_step(&t, &r); /* warm-up */
    int steps = 0;
    long kept = 0;
    uint64_t bytes = 0;
    double flops = 0, t0 = bench_now(), dt, tf = 0, tb = 0, tu = 0;
    do {
        trainer_step(&t, &r);
        tf += r.t_forward;
        tb += r.t_backward;
        tu += r.t_update;
        steps++;
        kept = r.assignments - r.dropped;
        bytes += r.bytes;
        flops += step_flops(&t.model.cfg, t.B, t.T, kept);
        dt = bench_now() - t0;
    } while (steps < 3 || dt < 5.0);
    double gflops = flops / dt / 1e9;
    printf("%-6s V=%-4d C=%-4d L=%d NH=%-2d T=%-4d E=%-2d K=%d F=%-5d B=%-3d %-8s params %9zu | "
           "%7.1f ms/step %9.0f tok/s %9.0f bytes/s | %7.1f GFLOP/s = %5.1f%% of best sgemm\n",
           bc->name, t.model.cfg.vocab, bc->C, bc->L, bc->NH, bc->T, bc->E, bc->K, bc->F, bc->B,
           bc->dropless ? "dropless" : "cf 1.25", t.model.n_params, 1e3 * dt / steps,
           (double)steps * t.B * t.T / dt, (double)bytes / dt, gflops, 100 * gflops / sgemm_best);
    printf("       per step: forward %.1f ms, backward %.1f ms, optimizer %.1f ms, data and "
           "other %.1f ms; %.1f%% of expert assignments dropped by capacity (last step)\n",
           1e3 * tf / steps, 1e3 * tb / steps, 1e3 * tu / steps, 1e3 * (dt - tf - tb - tu) / steps,
           100.0 * r.dropped / r.assignments);
    fflush(stdout);
    trainer_close(&t);
    return 0;
}

int main(int argc, char **argv) {
    bench_child_hook(argc, argv);
    moe_log_init("bench");
    const char *data = getenv("MOE_BENCH_DATA") ? getenv("MOE_BENCH_DATA") : "/usr/share/games/fortunes";
    const char *measured = getenv("MOE_BENCH_SGEMM");
    if (!measured) {
        char best_core[32];
        printf("# sgemm probe: every OpenBLAS core type this CPU may run, 2048^3, 2 threads max\n");
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            perror("bench_train: /proc/self/exe");
            return 1;
        }
        self[n] = 0;
        double best = bench_best_sgemm(self, 2048, best_core, sizeof best_core, 1);
        printf("# best sgemm: %.1f GFLOP/s with OPENBLAS_CORETYPE=%s\n", best,
               *best_core ? best_core : "(default)");
        char buf[64];
        snprintf(buf, sizeof buf, "%.3f", best);
        setenv("MOE_BENCH_SGEMM", buf, 1);
        measured = getenv("MOE_BENCH_SGEMM");
        fflush(stdout);
    }
    /* train on the kernels moed itself picks (what `moectl train` runs on): may re-exec */
    blas_select_kernels(argv);
    double best = atof(measured);
    printf("# training step (forward + backward + AdamW), kernels %s (moed's choice: %s), data %s\n",
           bench_corename(), blas_preferred_coretype() ? blas_preferred_coretype() : "OpenBLAS default",
           data);
    static const struct bench_cfg cfgs[] = {
        {"demo", 128, 2, 4, 128, 4, 2, 256, 16, 0, 0},
        {"demo", 128, 2, 4, 128, 4, 2, 256, 16, 0, 1}, /* the same on learned tokens */
        /* dropless: from a random initialisation routing is skewed and capacity 1.25 dropped
         * 4-57% of assignments from run to run, so the step measured a varying fraction of
         * the work; dropless computes (and counts) every assignment */
        {"large", 512, 2, 8, 256, 8, 2, 2048, 16, 1, 0},
        {"large", 512, 2, 8, 256, 8, 2, 2048, 32, 1, 0}, /* same model, 8192 tokens per step */

    };
    if (make_tokenizer(data) != 0) {
        fprintf(stderr, "bench_train: cannot train a tokenizer on %s: %s\n", data, moe_errmsg());
        return 1;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0] && rc == 0; i++)
        rc = run_config(&cfgs[i], data, best);
    unlink(tok_path);
    return rc;
}
