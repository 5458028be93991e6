/* step.c — what the local step and a slot's step share (see step.h). */
#include "step.h"

#include "../../common/clock.h"

#include <string.h>

void step_begin(struct trainer *t, struct step_report *r) {
    const struct model_config *c = &t->model.cfg;
    memset(r, 0, sizeof *r);
    memset(t->load_sum, 0, sizeof(long) * (size_t)c->n_layers * c->n_experts);
    /* every slot counts the whole batch's bytes itself: the batch is a pure function */
    r->bytes = data_train_batch_bytes(&t->data, t->spec.run.seed, t->model.step, 0, t->B);
}

/* Each loss term is a mean over the batch an update averages (the whole batch, or a pod's
 * between outer steps), so a pass's share of it is M / Bstep. */
int step_shard_passes(struct trainer *t, int shard, long step, struct shard_losses *part,
                      struct step_report *r, const struct model_exec *ex) {
    struct model *m = &t->model;
    size_t n_load = (size_t)m->cfg.n_layers * m->cfg.n_experts;
    int n_micro = t->Bd / t->M;
    double share = (double)t->M / t->Bstep;
    int res = 0;
    for (int i = 0; i < n_micro; i++) {
        t->pass = i;
        data_train_batch(&t->data, t->spec.run.seed, step, shard * t->Bd + i * t->M, t->M,
                         t->tokens, t->targets);
        double f0 = moe_clock_s(), loss;
        /* the teacher's logits of the same tokens, when distilling: part of the forward */
        teacher_forward(&t->teacher, m, &t->spec.distill, t->tokens, t->M, t->T);
        if (model_forward_exec(m, t->tokens, t->targets, t->M, t->T, ex, &loss) != 0) {
            res = -1;
            break;
        }
        double f1 = moe_clock_s();
        if (model_backward_exec(m, t->tokens, t->targets, t->M, t->T, share, i > 0, ex) != 0) {
            res = -1;
            break;
        }
        r->t_forward += f1 - f0;
        r->t_backward += moe_clock_s() - f1;
        part->loss += share * m->stats.loss;
        part->ce += share * m->stats.ce;
        part->aux += share * m->stats.aux;
        part->z += share * m->stats.z;
        part->kl += share * m->stats.kl;
        part->dropped += m->stats.dropped;
        for (size_t j = 0; j < n_load; j++) t->load_sum[j] += m->stats.load[j];
    }
    teacher_detach(m); /* evaluations and the rest are plain cross-entropy */
    return res;
}

double step_load_imbalance(const struct model *m) {
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

moe_status step_end(struct trainer *t, struct step_report *r, double t0) {
    struct model *m = &t->model;
    r->step = m->step;
    r->tokens = (long)t->B * t->T;
    r->assignments = r->tokens * m->cfg.top_k * m->cfg.n_layers;
    r->seconds = moe_clock_s() - t0;
    if (r->loss != r->loss)
        return moe_fail(MOE_EINVAL, "training diverged at step %ld (loss is NaN); lower "
                        "optimizer.lr or raise optimizer.warmup_steps", r->step);
    return MOE_OK;
}
