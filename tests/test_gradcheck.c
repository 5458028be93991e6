/*
 * test_gradcheck — every parameter's analytic gradient against central finite differences.
 *
 * Runs the double-precision build of the kernels (MOE_REAL_DOUBLE), so the differences are
 * meaningful: h = 1e-6, and an element passes when |analytic - numeric| <= 1e-7 + 1e-5 *
 * max(|analytic|, |numeric|). Covered: every tensor, the router through the task loss, the
 * load-balancing loss and the z-loss (with large coefficients so they matter), in dropping
 * mode (a capacity that really drops tokens), dropless mode, and with expert-bias selection.
 * A perturbation that changes a routing decision (top-k or capacity) is not differentiable
 * there; such elements are skipped and counted, and the test fails if more than 2% are.
 *
 * Then gradient accumulation: a batch of 4 sequences run as micro-batches of 2 + 2 and of
 * 1 + 1 + 1 + 1 (loss_scale = share, accumulate after the first) must give the whole batch's
 * gradient to within 1e-12 relative, in every mode: routing groups are sequences, so
 * splitting the batch cannot change which tokens are dropped.
 *
 * Distillation: the same checks with a teacher's logits given (random, larger than the
 * student's so that the KL term dominates), alpha 0.6 and temperature 2, so the loss is
 * 0.4 ce + 0.6 * 4 * kl + router terms; and the KL itself against a direct evaluation of
 * sum q (log q - log p) (an independent formula, not the kernel's).
 */
#include "../kernels/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

/* The distillation in force for the next check (teacher_logits NULL: none). */
static struct model_distill distill;

static void make_batch(int *tokens, int *targets, int n, int V, unsigned seed) {
    srand(seed);
    for (int i = 0; i < n; i++) {
        tokens[i] = rand() % V;
        targets[i] = rand() % V;
    }
}

static double loss_at(struct model *m, const int *tok, const int *tgt, int B, int T) {
    return model_forward(m, tok, tgt, B, T);
}

static void check_mode(const char *mode, struct model_config cfg, int bias) {
    const int B = 3, T = 6;
    struct model m;
    if (model_alloc(&m, &cfg, B) != 0) {
        printf("FAIL %s: alloc\n", mode);
        failures++;
        return;
    }
    model_init(&m, 42);
    m.distill = distill;
    /* a larger init than training uses makes routing less uniform and gradients larger */
    for (size_t i = 0; i < m.n_decay; i++) m.param_mem[i] *= 10;
    if (bias)
        for (size_t i = 0; i < m.n_buffers; i++) m.buffer_mem[i] = 0.05 * (double)(i % 3) - 0.05;
    int tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, cfg.vocab, 7);

    loss_at(&m, tok, tgt, B, T);
    long dropped = m.stats.dropped;
    model_backward(&m, tok, tgt, B, T, 1.0, 0);
    double *analytic = malloc(sizeof(double) * m.n_params);
    memcpy(analytic, m.grad_mem, sizeof(double) * m.n_params);
    int *routing = malloc(sizeof(int) * m.n_int);
    memcpy(routing, m.int_mem, sizeof(int) * m.n_int);

    if (cfg.dropless ? dropped != 0 : dropped == 0) {
        printf("FAIL %s: expected %s, dropped %ld assignments\n", mode,
               cfg.dropless ? "no drops" : "some drops", dropped);
        failures++;
    }
    const double h = 1e-6, atol = 1e-7, rtol = 1e-5;
    size_t off = 0, checked = 0, skipped = 0;
    for (int t = 0; t < MODEL_NUM_TENSORS; t++) {
        struct model_tensor_info ti;
        model_tensor_info(&cfg, t, &ti);
        double max_rel = 0, max_abs_g = 0;
        size_t bad = 0;
        for (size_t j = 0; j < m.tensor_sizes[t]; j++) {
            double *p = &m.param_mem[off + j], saved = *p;
            *p = saved + h;
            double lp = loss_at(&m, tok, tgt, B, T);
            int flip = memcmp(routing, m.int_mem, sizeof(int) * m.n_int) != 0;
            *p = saved - h;
            double lm = loss_at(&m, tok, tgt, B, T);
            flip |= memcmp(routing, m.int_mem, sizeof(int) * m.n_int) != 0;
            *p = saved;
            if (flip) {
                skipped++;
                continue;
            }
            checked++;
            double num = (lp - lm) / (2 * h), an = analytic[off + j];
            double scale = fmax(fabs(an), fabs(num));
            if (fabs(an) > max_abs_g) max_abs_g = fabs(an);
            if (fabs(an - num) > atol + rtol * scale) {
                if (bad < 3)
                    printf("  %s %s[%zu]: analytic %.10e numeric %.10e\n", mode, ti.name, j, an,
                           num);
                bad++;
            }
            if (scale > 1e-9 && fabs(an - num) / scale > max_rel) max_rel = fabs(an - num) / scale;
        }
        int ok = bad == 0 && max_abs_g > 0;
        printf("%-4s %-9s %-24s max rel err %.2e  max |grad| %.2e%s\n", ok ? "OK" : "FAIL", mode,
               ti.name, max_rel, max_abs_g, max_abs_g > 0 ? "" : "  (gradient is all zero)");
        if (!ok) failures++;
        off += m.tensor_sizes[t];
    }
    if (skipped * 50 > checked + skipped) {
        printf("FAIL %s: %zu of %zu elements skipped for routing flips\n", mode, skipped,
               checked + skipped);
        failures++;
    }
    printf("     %-9s checked %zu elements, skipped %zu at routing discontinuities\n", mode,
           checked, skipped);
    free(analytic);
    free(routing);
    model_free(&m);
}

static void check_accumulation(const char *mode, struct model_config cfg) {
    enum { B = 4, T = 6 };
    struct model m;
    if (model_alloc(&m, &cfg, B) != 0) {
        printf("FAIL %s: alloc\n", mode);
        failures++;
        return;
    }
    model_init(&m, 43);
    m.distill = distill;
    for (size_t i = 0; i < m.n_decay; i++) m.param_mem[i] *= 10;
    int tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, cfg.vocab, 11);
    double full_loss = model_forward(&m, tok, tgt, B, T);
    model_backward(&m, tok, tgt, B, T, 1.0, 0);
    double *full = malloc(sizeof(double) * m.n_params);
    memcpy(full, m.grad_mem, sizeof(double) * m.n_params);
    for (int micro = 2; micro >= 1; micro--) {
        double loss = 0, share = (double)micro / B;
        for (int i = 0; i < B / micro; i++) {
            /* a micro-batch's teacher logits are the batch's rows of those sequences */
            if (distill.teacher_logits)
                m.distill.teacher_logits =
                    distill.teacher_logits + (size_t)i * micro * T * cfg.vocab;
            loss += share * model_forward(&m, tok + i * micro * T, tgt + i * micro * T, micro, T);
            model_backward(&m, tok + i * micro * T, tgt + i * micro * T, micro, T, share, i > 0);
        }
        double worst = 0, gmax = 0;
        for (size_t j = 0; j < m.n_params; j++) {
            double d = fabs(m.grad_mem[j] - full[j]);
            if (fabs(full[j]) > gmax) gmax = fabs(full[j]);
            if (d > worst) worst = d;
        }
        int ok = worst <= 1e-12 * gmax && fabs(loss - full_loss) <= 1e-12 * fabs(full_loss);
        printf("%-4s %-9s accumulate %d micro-batches of %d: max |grad diff| %.2e (max |grad| "
               "%.2e), loss diff %.2e\n", ok ? "OK" : "FAIL", mode, B / micro, micro, worst, gmax,
               fabs(loss - full_loss));
        if (!ok) failures++;
    }
    free(full);
    model_free(&m);
}

/* The mean KL of the last forward against sum_n sum_i q (log q - log p) / N computed here from
 * softmaxes of the logits / T, and the objective against its parts. */
static void check_kl_value(struct model_config cfg) {
    enum { B = 3, T = 6 };
    struct model m;
    if (model_alloc(&m, &cfg, B) != 0) {
        printf("FAIL kl: alloc\n");
        failures++;
        return;
    }
    model_init(&m, 44);
    m.distill = distill;
    int tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, cfg.vocab, 13);
    double loss = model_forward(&m, tok, tgt, B, T);
    const real *z = model_logits(&m), *zt = distill.teacher_logits;
    int V = cfg.vocab;
    double tau = distill.temperature, kl = 0;
    for (int n = 0; n < B * T; n++) {
        double sp = 0, sq = 0;
        for (int i = 0; i < V; i++) {
            sp += exp(z[n * V + i] / tau);
            sq += exp(zt[n * V + i] / tau);
        }
        for (int i = 0; i < V; i++) {
            double p = exp(z[n * V + i] / tau) / sp, q = exp(zt[n * V + i] / tau) / sq;
            kl += q * log(q / p);
        }
    }
    kl /= B * T;
    double a = distill.alpha;
    double want = (1 - a) * m.stats.ce + a * tau * tau * kl + cfg.aux_loss_coef * m.stats.aux +
                  cfg.z_loss_coef * m.stats.z;
    int ok = fabs(m.stats.kl - kl) <= 1e-12 * kl && kl > 0 && fabs(loss - want) <= 1e-12 * want;
    printf("%-4s kl        mean KL %.12f (direct %.12f), loss %.12f (from its parts %.12f)\n",
           ok ? "OK" : "FAIL", m.stats.kl, kl, loss, want);
    if (!ok) failures++;
    model_free(&m);
}

int main(void) {
    struct model_config cfg = {
        .vocab = 16, .d_model = 8, .n_layers = 2, .n_heads = 2, .seq_len = 6, .n_experts = 4,
        .top_k = 2, .d_ff = 6, .capacity_factor = 0.75f, .dropless = 0, .aux_loss_coef = 0.3f,
        .z_loss_coef = 0.2f, .bias_balancing = 0, .bias_update_rate = 0.01f,
        .rope_base = 10000, .norm_eps = 1e-5f, .init_std = 0.02f,
    };
    check_mode("dropping", cfg, 0);
    cfg.dropless = 1;
    check_mode("dropless", cfg, 0);
    cfg.dropless = 0;
    cfg.bias_balancing = 1;
    check_mode("biased", cfg, 1);
    cfg.top_k = 1;
    cfg.bias_balancing = 0;
    check_mode("top1", cfg, 0);
    cfg.top_k = 2;
    check_accumulation("dropping", cfg);
    cfg.dropless = 1;
    check_accumulation("dropless", cfg);

    /* distillation: the teacher's logits for the largest batch (4 x 6 tokens) */
    real teacher[4 * 6 * 16];
    srand(5);
    for (size_t i = 0; i < sizeof teacher / sizeof teacher[0]; i++)
        teacher[i] = 3.0 * ((double)rand() / RAND_MAX - 0.5);
    distill = (struct model_distill){teacher, 0.6f, 2.0f};
    cfg.dropless = 0;
    check_mode("distill", cfg, 0);
    cfg.dropless = 1;
    check_mode("distill-1", cfg, 0);
    check_accumulation("distill", cfg);
    check_kl_value(cfg);
    if (failures) {
        printf("gradcheck: %d FAILED\n", failures);
        return 1;
    }
    printf("gradcheck: all tensors OK\n");
    return 0;
}
