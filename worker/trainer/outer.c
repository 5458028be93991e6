/* outer.c — the outer step of mesh.sync: diloco (see outer.h). */
#include "outer.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../kernels/quant.h"
#include "../comm/comm.h"
#include "fence_gate.h"
#include "thread_error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Channel 1: the gradient reductions' channel, idle between a step's update and the next
 * step's backward, which is where the synchronous outer step runs. The overlapped one runs
 * beside the inner steps, on channel 2: the buddy copies' channel, unused in this mode (no
 * buddies), and a restore's lanes use it only once the exchange has been joined. */
enum { CH_OUTER = 1, CH_OVERLAP = 2 };

struct outer {
    int H, P, S, overlap;
    int n_ver;                 // versions kept: 2, or 3 overlapped (one not yet complete)
    struct model_state ver[3]; // the state at the last outer steps (step -1: none)
    real *carry[3];            // (n_carry) with each: the outer momentum u (n_params), and
                               // overlapped the pods' mean Δ (n_params) and bias drift
                               // (n_buffers) that the next outer step applies
    int done[3];               // the carry's mean has arrived: only then is it a copy
    size_t n_carry;
    int cur;                   // ver[cur] is the newest
    size_t x_lo, x_n;          // this slot's experts in every arena: [x_lo, x_lo + x_n)
    real *buf;                 // (n_params + n_buffers) what crosses the pods
    real *delta;               // (n_params) the pseudo-gradient, then the pods' mean of it
    real *drift;               // (n_buffers) overlapped: the biases' change over the period
    void *qsend, *qrecv;       // mesh.outer_quant int8: this slot's wire form, the pods' (P)
    /* overlapped: the exchange in flight, on its own thread */
    pthread_t thread;
    int running;
    struct trainer *xt;
    struct comm *xcomm;        // the epoch's comm it runs in
    size_t x_nd;
    struct thread_error xerr;
    double t_total, t_cross, t_wait; // seconds in outer steps, their cross-pod all-reduce,
                                     // and (overlapped) waiting for it at the next one
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
    o->overlap = t->spec.mesh.outer_overlap;
    o->n_ver = o->overlap ? 3 : 2;
    o->n_carry = m->n_params + (o->overlap ? m->n_params + m->n_buffers : 0);
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        if (model_tensor_is_expert(i)) o->x_n += m->tensor_sizes[i];
        else if (i < 4) o->x_lo += m->tensor_sizes[i]; /* tensors 4..6 are the experts' */
    }
    for (int k = 0; k < o->n_ver; k++)
        if (model_state_alloc(m, &o->ver[k]) != 0 || !(o->carry[k] = model_arena_alloc(o->n_carry)))
            goto oom;
    o->buf = malloc(sizeof(real) * (m->n_params + m->n_buffers + 1));
    o->delta = model_arena_alloc(m->n_params);
    o->drift = calloc(m->n_buffers + 1, sizeof(real));
    if (!o->buf || !o->delta || !o->drift) goto oom;
    if (!strcmp(t->spec.mesh.outer_quant, "int8")) {
        size_t q = quant_bytes(m->n_params + m->n_buffers);
        if (!(o->qsend = malloc(q)) || !(o->qrecv = malloc(q * (size_t)o->P))) goto oom;
    }
    /* the momentum and the first mean start at zero (the arenas come zeroed) */
    if (!t->empty) copy_live_into(m, &o->ver[0]);
    o->done[0] = 1;
    return MOE_OK;
oom:
    return moe_fail(MOE_ENOMEM, "out of memory for the outer versions of the slot's state "
                    "(%zu parameters)", m->n_params);
}

void outer_close(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    if (!o) return;
    outer_abandon(t); /* the job ends: an exchange in flight is of no use */
    double n = (double)o->n_outer;
    if (n > 0 && !o->overlap)
        LOG_INFO("outer steps: %ld, %.1f ms each, of which %.1f ms in the cross-pod all-reduce",
                 o->n_outer, 1e3 * o->t_total / n, 1e3 * o->t_cross / n);
    if (n > 0 && o->overlap) /* the exchange ran beside the inner steps */
        LOG_INFO("outer steps: %ld, %.1f ms each, of which %.1f ms waiting for the exchange of "
                 "the period before; its cross-pod all-reduce took %.1f ms beside the inner "
                 "steps", o->n_outer, 1e3 * o->t_total / n, 1e3 * o->t_wait / n,
                 1e3 * o->t_cross / n);
    for (int k = 0; k < o->n_ver; k++) {
        model_state_free(&o->ver[k]);
        model_arena_free(o->carry[k], o->n_carry);
    }
    model_arena_free(o->delta, t->model.n_params);
    free(o->drift);
    free(o->qsend);
    free(o->qrecv);
    free(o->buf);
    free(o);
    t->mesh.outer = NULL;
}

int outer_due(const struct trainer *t) {
    const struct outer *o = t->mesh.outer;
    return o && t->model.step % o->H == 0;
}

/* The complete versions, newest first, into idx[]: how many (at most 2). */
static int newest_done(const struct outer *o, int idx[2]) {
    int n = 0;
    for (int k = 0; k < o->n_ver; k++) {
        if (o->ver[k].step < 0 || !o->done[k]) continue;
        if (n < 2) idx[n++] = k;
        else if (o->ver[k].step > o->ver[idx[1]].step) idx[1] = k;
        if (n == 2 && o->ver[idx[1]].step > o->ver[idx[0]].step) {
            int s = idx[0];
            idx[0] = idx[1], idx[1] = s;
        }
    }
    return n;
}

long outer_committed(const struct trainer *t) {
    int idx[2];
    const struct outer *o = t->mesh.outer;
    return newest_done(o, idx) == 2 && o->ver[idx[1]].step > 0 ? o->ver[idx[1]].step : 0;
}

size_t outer_carried(const struct trainer *t) { return t->mesh.outer->n_carry; }

/* ---- the outer step ---- */

/* n floats between a part of an arena and the buffer: into the buffer, or (out) back. */
static size_t move(real *part, real *buf, size_t n, int out) {
    if (out) memcpy(part, buf, sizeof(real) * n);
    else memcpy(buf, part, sizeof(real) * n);
    return n;
}

/* What crosses the pods, packed from (out 0) or unpacked into (out 1) d (n_params) and b
 * (n_buffers): the dense part (the same on every slot of a pod), then this slot's experts.
 * Returns the dense part's length. */
static size_t pack(struct outer *o, const struct model *m, real *d, real *b, int out) {
    size_t n = m->n_params, hi = o->x_lo + o->x_n, k = 0;
    k += move(d, o->buf, o->x_lo, out);
    k += move(d + hi, o->buf + k, n - hi, out);
    k += move(b, o->buf + k, m->n_buffers, out);
    move(d + o->x_lo, o->buf + k, o->x_n, out);
    return k;
}

/* delta = theta_outer - theta_inner, from the newest version to the live state. */
static void pseudo_gradient(struct outer *o, const struct model *m) {
    const real *outer = o->ver[o->cur].param_mem, *inner = m->param_mem;
    for (size_t i = 0; i < m->n_params; i++) o->delta[i] = outer[i] - inner[i];
}

/* The pods' sum of x (n), quantised (mesh.outer_quant int8): each pod's wire form goes to
 * every other, and each adds them decoded in pod order, so every pod holds the same bits. */
static moe_status allreduce_int8(struct outer *o, struct comm *c, int ch,
                                 const struct comm_group *g, real *x, size_t n) {
    quant_encode(o->qsend, x, n);
    CHECK(comm_allgather(c, ch, g, o->qsend, quant_bytes(n), o->qrecv));
    quant_sum(x, o->qrecv, o->P, n);
    return MOE_OK;
}

/* The pods' sum of the packed buffer, in pod order: the dense part is the same on every slot
 * of a pod, so each slot carries one chunk of it across (with its experts, one all-reduce:
 * one exchange with two pods) and the pod gathers the chunks; then the mean. */
static moe_status average_over_pods(struct outer *o, struct trainer *t, size_t nd, int ch) {
    struct comm *c = t->mesh.comm;
    struct comm_group pod, cross;
    comm_group_pod(&pod, c, t->mesh.pod);
    comm_group_slot(&cross, c, t->mesh.slot);
    real *buf = o->buf;
    size_t n = t->model.n_params + t->model.n_buffers, lo = 0, hi = nd;
    if (o->S > 1) comm_chunk(nd, o->S, pod.me, &lo, &hi);
    size_t len = hi - lo, at = nd - len;
    if (at != lo) memmove(buf + at, buf + lo, sizeof(real) * len);
    double t0 = moe_clock_s();
    moe_status s = o->qsend ? allreduce_int8(o, c, ch, &cross, buf + at, n - at)
                            : comm_allreduce(c, ch, &cross, buf + at, n - at);
    o->t_cross += moe_clock_s() - t0;
    CHECK(s);
    if (at != lo) memmove(buf + lo, buf + at, sizeof(real) * len);
    if (o->S > 1) CHECK(comm_allgather_chunks(c, ch, &pod, buf, nd));
    const real inv = (real)1 / (real)o->P;
    for (size_t i = 0; i < n; i++) buf[i] *= inv;
    return MOE_OK;
}

/* The next version, made from the newest one by the outer Nesterov step on `mean` (n_params),
 * with the live moments and biases; the live parameters become it. Through the fence gate: a
 * fence lists the versions held, and none may change after it. */
static moe_status new_version(struct trainer *t, const real *mean) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    CHECK(fence_gate_enter(t->mesh.gate, "the outer step", t->model.step));
    int nw = (o->cur + 1) % o->n_ver;
    struct model_state *v = &o->ver[nw];
    const struct model_state *old = &o->ver[o->cur];
    v->step = -1;
    o->done[nw] = !o->overlap; /* overlapped: complete when its period's mean arrives */
    outer_nesterov(v->param_mem, o->carry[nw], old->param_mem, o->carry[o->cur], mean,
                   m->n_params, t->spec.mesh.outer_lr, t->spec.mesh.outer_momentum);
    memcpy(m->param_mem, v->param_mem, sizeof(real) * m->n_params);
    copy_live_into(m, v);
    o->cur = nw;
    fence_gate_leave(t->mesh.gate);
    return MOE_OK;
}

/* The inner AdamW starts again from zero moments (docs/model.md, "Outer steps": measured
 * against averaging them). */
static void reset_moments(struct model *m) {
    memset(m->m_mem, 0, sizeof(real) * m->n_params);
    memset(m->v_mem, 0, sizeof(real) * m->n_params);
}

static moe_status synchronous_step(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    pseudo_gradient(o, m);
    size_t nd = pack(o, m, o->delta, m->buffer_mem, 0);
    CHECK(average_over_pods(o, t, nd, CH_OUTER));
    pack(o, m, o->delta, m->buffer_mem, 1); /* the live biases become the pods' mean */
    reset_moments(m);
    return new_version(t, o->delta);
}

/* ---- overlapped (mesh.outer_overlap): docs/model.md, "Overlapped outer steps" ---- */

static void *exchange_main(void *arg) {
    struct outer *o = arg;
    thread_error_keep(&o->xerr, average_over_pods(o, o->xt, o->x_nd, CH_OVERLAP));
    return NULL;
}

/* The packed buffer's mean over the pods, on its own thread while the inner steps go on. */
static moe_status exchange_start(struct outer *o, struct trainer *t, size_t nd) {
    o->xt = t;
    o->xcomm = t->mesh.comm;
    o->x_nd = nd;
    o->xerr.status = MOE_OK;
    int e = pthread_create(&o->thread, NULL, exchange_main, o);
    if (e != 0)
        return moe_fail(MOE_ENOMEM, "cannot start the outer exchange's thread: %s", strerror(e));
    o->running = 1;
    return MOE_OK;
}

/* The exchange in flight, if any, waited for: MOE_OK with the mean in buf, or its failure. */
static moe_status exchange_join(struct outer *o) {
    if (!o->running) return MOE_OK;
    pthread_join(o->thread, NULL);
    o->running = 0;
    return thread_error_take(&o->xerr, "the overlapped outer exchange: ");
}

void outer_abandon(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    if (!o || !o->running) return;
    comm_abort(o->xcomm); /* the thread's collective returns now */
    (void)exchange_join(o);
}

/* The pods' mean that arrived (in buf) for the newest version: into its carry, and with it the
 * version is complete, a copy another pod holds too. With `last`, it is applied at once, in
 * place: the job's last version holds every period's progress. Through the fence gate (a
 * fence lists the complete versions). */
static moe_status keep_mean(struct trainer *t, int last) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    struct model_state *v = &o->ver[o->cur];
    real *mean = o->carry[o->cur] + m->n_params, *drift = mean + m->n_params;
    CHECK(fence_gate_enter(t->mesh.gate, "the outer step", t->model.step));
    pack(o, m, mean, drift, 1);
    if (last) {
        outer_nesterov(v->param_mem, o->carry[o->cur], v->param_mem, o->carry[o->cur], mean,
                       m->n_params, t->spec.mesh.outer_lr, t->spec.mesh.outer_momentum);
        for (size_t i = 0; i < m->n_buffers; i++) v->buffer_mem[i] -= drift[i];
        memset(mean, 0, sizeof(real) * (m->n_params + m->n_buffers));
        memcpy(m->param_mem, v->param_mem, sizeof(real) * m->n_params);
        memcpy(m->buffer_mem, v->buffer_mem, sizeof(real) * m->n_buffers);
    }
    o->done[o->cur] = 1;
    fence_gate_leave(t->mesh.gate);
    return MOE_OK;
}

/* At step kH: the mean of period k-1 (it crossed during period k) is applied to the version
 * period k started from, the new version; this period's own progress starts across. */
static moe_status overlapped_step(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    double w0 = moe_clock_s();
    CHECK(exchange_join(o));
    o->t_wait += moe_clock_s() - w0;
    if (!o->done[o->cur]) CHECK(keep_mean(t, 0));
    pseudo_gradient(o, m);
    const real *base = o->ver[o->cur].buffer_mem, *mean = o->carry[o->cur] + m->n_params;
    for (size_t i = 0; i < m->n_buffers; i++) o->drift[i] = base[i] - m->buffer_mem[i];
    size_t nd = pack(o, m, o->delta, o->drift, 0);
    for (size_t i = 0; i < m->n_buffers; i++) m->buffer_mem[i] = base[i] - mean[m->n_params + i];
    reset_moments(m);
    CHECK(new_version(t, mean));
    CHECK(exchange_start(o, t, nd));
    if (m->step < t->spec.run.steps) return MOE_OK;
    /* the last outer step waits for its own period's mean */
    w0 = moe_clock_s();
    CHECK(exchange_join(o));
    o->t_wait += moe_clock_s() - w0;
    return keep_mean(t, 1);
}

moe_status outer_step(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    double t0 = moe_clock_s();
    CHECK(o->overlap ? overlapped_step(t) : synchronous_step(t));
    o->t_total += moe_clock_s() - t0;
    o->n_outer++;
    return MOE_OK;
}

/* ---- the versions, for replica.c ---- */

int outer_copies(const struct trainer *t, long steps[2]) {
    const struct outer *o = t->mesh.outer;
    int idx[2], n = newest_done(o, idx);
    for (int i = 0; i < n; i++) steps[i] = o->ver[idx[i]].step;
    return n;
}

static int find(const struct outer *o, long step) {
    for (int k = 0; k < o->n_ver; k++)
        if (step >= 0 && o->ver[k].step == step && o->done[k]) return k;
    return -1;
}

int outer_version(const struct trainer *t, long step, real *arena[4], real **carry) {
    struct outer *o = t->mesh.outer;
    int k = find(o, step);
    if (k < 0) return 0;
    struct model_state *v = &o->ver[k];
    arena[0] = v->param_mem, arena[1] = v->m_mem, arena[2] = v->v_mem, arena[3] = v->buffer_mem;
    *carry = o->carry[k];
    return 1;
}

/* Only version k is kept (the newest): the others are dropped. */
static void keep_only(struct outer *o, int k) {
    for (int j = 0; j < o->n_ver; j++)
        if (j != k) o->ver[j].step = -1, o->done[j] = 0;
    o->cur = k;
    o->done[k] = 1;
}

moe_status outer_return(struct trainer *t, long step) {
    struct outer *o = t->mesh.outer;
    struct model *m = &t->model;
    int k = find(o, step);
    if (k < 0 && step == 0) { /* the initial state is a function of the seed */
        model_init(m, t->spec.run.seed);
        k = 0;
        copy_live_into(m, &o->ver[0]);
        memset(o->carry[0], 0, sizeof(real) * o->n_carry);
    }
    if (k < 0) {
        long held[2] = {-1, -1};
        outer_copies(t, held);
        return moe_fail(MOE_EINVAL, "restore: the plan says this slot holds its state at outer "
                        "step %ld, but its copies are of steps %ld and %ld", step, held[0],
                        held[1]);
    }
    const struct model_state *v = &o->ver[k];
    memcpy(m->param_mem, v->param_mem, sizeof(real) * m->n_params);
    memcpy(m->m_mem, v->m_mem, sizeof(real) * m->n_params);
    memcpy(m->v_mem, v->v_mem, sizeof(real) * m->n_params);
    memcpy(m->buffer_mem, v->buffer_mem, sizeof(real) * m->n_buffers);
    m->step = step;
    keep_only(o, k);
    return MOE_OK;
}

real *outer_incoming_momentum(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    keep_only(o, 0);
    o->ver[0].step = -1; /* overwritten now: no copy to offer */
    return o->carry[0];
}

void outer_adopt(struct trainer *t) {
    struct outer *o = t->mesh.outer;
    copy_live_into(&t->model, &o->ver[0]);
    keep_only(o, 0);
}
