/* outer.c — the outer step of mesh.sync: diloco (see outer.h). */
#include "outer.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../comm/comm.h"
#include "replica.h"

#include <stdlib.h>
#include <string.h>

/* Channel 1: the gradient reductions' channel, idle between a step's update and the next
 * step's backward, which is where the outer step runs. */
enum { CH_OUTER = 1 };

struct outer {
    int H, P, S;
    struct model_state ver[2]; // the state at the last two outer steps (step -1: none)
    real *mom[2];              // (n_params) the outer momentum with each
    int cur;                   // ver[cur] is the newest
    size_t x_lo, x_n;          // this slot's experts in every arena: [x_lo, x_lo + x_n)
    real *buf;                 // (n_params + n_buffers) what crosses the pods
    real *delta;               // (n_params) the pods' mean pseudo-gradient
    double t_total, t_cross;   // seconds in outer steps, and in their cross-pod all-reduce
    long n_outer;
};

static void copy_live_into(const struct model *m, struct model_state *v) {
    memcpy(v->param_mem, m->param_mem, sizeof(real) * m->n_params);
    memcpy(v->m_mem, m->m_mem, sizeof(real) * m->n_params);
    memcpy(v->v_mem, m->v_mem, sizeof(real) * m->n_params);
    memcpy(v->buffer_mem, m->buffer_mem, sizeof(real) * m->n_buffers);
    v->step = m->step;
}

moe_status outer_open(struct trainer *t) {
    struct outer *o = calloc(1, sizeof *o);
    if (!o) return moe_fail(MOE_ENOMEM, "out of memory");
    t->mesh.outer = o;
    const struct model *m = &t->model;
    o->H = t->spec.mesh.outer_every;
    o->P = t->mesh.pods;
    o->S = t->mesh.slots;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        if (model_tensor_is_expert(i)) o->x_n += m->tensor_sizes[i];
        else if (i < 4) o->x_lo += m->tensor_sizes[i]; /* tensors 4..6 are the experts' */
    }
    for (int k = 0; k < 2; k++)
        if (model_state_alloc(m, &o->ver[k]) != 0 || !(o->mom[k] = model_arena_alloc(m->n_params)))
            goto oom;
    o->buf = malloc(sizeof(real) * (m->n_params + m->n_buffers + 1));
    o->delta = model_arena_alloc(m->n_params);
    if (!o->buf || !o->delta) goto oom;
    if (!t->empty) copy_live_into(m, &o->ver[0]); /* the momentum starts at zero */
    return MOE_OK;
oom:
    return moe_fail(MOE_ENOMEM, "out of memory for the outer versions of the slot's state "
                    "(%zu parameters)", m->n_params);
}

void outer_close(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    if (!o) return;
    if (o->n_outer > 0)
        LOG_INFO("outer steps: %ld, %.1f ms each, of which %.1f ms in the cross-pod all-reduce",
                 o->n_outer, 1e3 * o->t_total / o->n_outer, 1e3 * o->t_cross / o->n_outer);
    for (int k = 0; k < 2; k++) {
        model_state_free(&o->ver[k]);
        model_arena_free(o->mom[k], t->model.n_params);
    }
    model_arena_free(o->delta, t->model.n_params);
    free(o->buf);
    free(o);
    t->mesh.outer = NULL;
}

int outer_due(const struct trainer *t) {
    const struct outer *o = t->mesh.outer;
    return o && t->model.step % o->H == 0;
}

long outer_committed(const struct trainer *t) {
    const struct outer *o = t->mesh.outer;
    long older = o->ver[1 - o->cur].step;
    return older > 0 ? older : 0;
}

/* ---- the outer step ---- */

/* n floats between a part of an arena and the buffer: into the buffer, or (out) back. */
static size_t move(real *part, real *buf, size_t n, int out) {
    if (out) memcpy(part, buf, sizeof(real) * n);
    else memcpy(buf, part, sizeof(real) * n);
    return n;
}

/* What crosses the pods, packed: the dense part (the pseudo-gradient and the biases: the
 * same on every slot of a pod), then this slot's experts' pseudo-gradient. `out` 0 packs from
 * the live state and returns the dense part's length; 1 unpacks the means into delta and the
 * live biases. */
static size_t pack(struct outer *o, struct model *m, int out) {
    size_t n = m->n_params, hi = o->x_lo + o->x_n, k = 0;
    if (!out) {
        const real *outer = o->ver[o->cur].param_mem, *inner = m->param_mem;
        for (size_t i = 0; i < n; i++) o->delta[i] = outer[i] - inner[i];
    }
    k += move(o->delta, o->buf, o->x_lo, out);
    k += move(o->delta + hi, o->buf + k, n - hi, out);
    k += move(m->buffer_mem, o->buf + k, m->n_buffers, out);
    move(o->delta + o->x_lo, o->buf + k, o->x_n, out);
    return k;
}

/* The pods' sum of the packed buffer, in pod order: the dense part is the same on every slot
 * of a pod, so each slot carries one chunk of it across (with its experts, one all-reduce:
 * one exchange with two pods) and the pod gathers the chunks; then the mean. */
static moe_status average_over_pods(struct outer *o, struct trainer *t, size_t nd, size_t n) {
    struct comm *c = t->mesh.comm;
    struct comm_group pod, cross;
    comm_group_pod(&pod, c, t->mesh.pod);
    comm_group_slot(&cross, c, t->mesh.slot);
    real *buf = o->buf;
    size_t lo = 0, hi = nd;
    if (o->S > 1) comm_chunk(nd, o->S, pod.me, &lo, &hi);
    size_t len = hi - lo, at = nd - len;
    if (at != lo) memmove(buf + at, buf + lo, sizeof(real) * len);
    double t0 = moe_clock_s();
    moe_status s = comm_allreduce(c, CH_OUTER, &cross, buf + at, n - at);
    o->t_cross += moe_clock_s() - t0;
    CHECK(s);
    if (at != lo) memmove(buf + lo, buf + at, sizeof(real) * len);
    if (o->S > 1) CHECK(comm_allgather_chunks(c, CH_OUTER, &pod, buf, nd));
    const real inv = (real)1 / (real)o->P;
    for (size_t i = 0; i < n; i++) buf[i] *= inv;
    return MOE_OK;
}

moe_status outer_step(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    double t0 = moe_clock_s();
    size_t nd = pack(o, m, 0);
    CHECK(average_over_pods(o, t, nd, m->n_params + m->n_buffers));
    pack(o, m, 1);
    /* the inner AdamW starts again from zero moments (docs/model.md, "Outer steps": measured
     * against averaging them) */
    memset(m->m_mem, 0, sizeof(real) * m->n_params);
    memset(m->v_mem, 0, sizeof(real) * m->n_params);
    /* the new version is written under the replica lock: a fence lists the versions held,
     * and none may change after it */
    CHECK(replica_lock_unfenced(t, "the outer step"));
    int nw = 1 - o->cur;
    struct model_state *v = &o->ver[nw];
    const struct model_state *old = &o->ver[o->cur];
    v->step = -1;
    outer_nesterov(v->param_mem, o->mom[nw], old->param_mem, o->mom[o->cur], o->delta,
                   m->n_params, t->spec.mesh.outer_lr, t->spec.mesh.outer_momentum);
    memcpy(m->param_mem, v->param_mem, sizeof(real) * m->n_params);
    copy_live_into(m, v);
    o->cur = nw;
    replica_unlock(t);
    o->t_total += moe_clock_s() - t0;
    o->n_outer++;
    return MOE_OK;
}

/* ---- the versions, for replica.c ---- */

int outer_copies(const struct trainer *t, long steps[2]) {
    const struct outer *o = t->mesh.outer;
    int n = 0;
    for (int k = 0; k < 2; k++)
        if (o->ver[k].step >= 0) steps[n++] = o->ver[k].step;
    return n;
}

static int find(const struct outer *o, long step) {
    for (int k = 0; k < 2; k++)
        if (step >= 0 && o->ver[k].step == step) return k;
    return -1;
}

int outer_version(const struct trainer *t, long step, real *arena[4], real **mom) {
    struct outer *o = t->mesh.outer;
    int k = find(o, step);
    if (k < 0) return 0;
    struct model_state *v = &o->ver[k];
    arena[0] = v->param_mem, arena[1] = v->m_mem, arena[2] = v->v_mem, arena[3] = v->buffer_mem;
    *mom = o->mom[k];
    return 1;
}

moe_status outer_return(struct trainer *t, long step) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    int k = find(o, step);
    if (k < 0 && step == 0) { /* the initial state is a function of the seed */
        model_init(m, t->spec.run.seed);
        k = 0;
        copy_live_into(m, &o->ver[0]);
        memset(o->mom[0], 0, sizeof(real) * m->n_params);
    }
    if (k < 0)
        return moe_fail(MOE_EINVAL, "restore: the plan says this slot holds its state at outer "
                        "step %ld, but it holds %ld and %ld", step, o->ver[0].step,
                        o->ver[1].step);
    const struct model_state *v = &o->ver[k];
    memcpy(m->param_mem, v->param_mem, sizeof(real) * m->n_params);
    memcpy(m->m_mem, v->m_mem, sizeof(real) * m->n_params);
    memcpy(m->v_mem, v->v_mem, sizeof(real) * m->n_params);
    memcpy(m->buffer_mem, v->buffer_mem, sizeof(real) * m->n_buffers);
    m->step = step;
    o->cur = k;
    o->ver[1 - k].step = -1;
    return MOE_OK;
}

real *outer_incoming_momentum(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    o->ver[0].step = o->ver[1].step = -1; /* overwritten now: no copy to offer */
    o->cur = 0;
    return o->mom[0];
}

void outer_adopt(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    copy_live_into(&t->model, &o->ver[0]);
    o->cur = 0;
}
