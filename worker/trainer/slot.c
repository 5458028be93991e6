/* slot.c — one slot of a distributed job: the distributed step (see slot.h). */
#include "slot.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../kernels/layers.h"
#include "../../kernels/tree_sum.h"
#include "../comm/comm.h"
#include "model_io.h"
#include "outer.h"
#include "replica.h"
#include "step.h"
#include "thread_error.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Channel 0 carries what the compute thread waits for (dispatch, combine, statistics);
 * channel 1 the gradient reductions that overlap the backward. */
enum { CH_MOE = 0, CH_GRAD = 1 };

/* A piece of the gradient arena that a bucket carries. */
struct seg {
    real *p;
    size_t n;
};

/* Gradients reduced together: the blocks of layers [lo, hi] (hi first, as the backward
 * finishes them), the final norm with layer L-1 and the embedding with layer 0. Dense blocks
 * are packed into buf[0, n_dense), this slot's expert blocks (already added over the pod's
 * sources) after them; the bucket is reduced as one buffer, each element in the mesh's order
 * (docs/dataplane.md, "Gradient buckets"). */
struct bucket {
    int lo, hi;
    struct seg *segs;  // dense segments, then n_eseg expert segments
    int n_dseg, n_eseg;
    size_t n_dense, n_expert;
    real *buf;         // (n_dense + n_expert)
};

struct slot_exec {
    struct trainer *t;
    struct comm *comm;
    struct comm_group pod, cross, all; // my pod (slot order), my slot over pods, every rank
    int P, S, D, E, El, K, C, F, L;    // P: the pods a step's gradients cross (1 with diloco)
    size_t rows_max;                   // rows the pod may send this slot's experts in a layer
    /* The rows other slots sent to this slot's experts, saved per layer for the backward,
     * and one layer's working rows. They grow to the most rows seen (rows_max is the worst
     * case routing allows, every token choosing this slot: rarely near). */
    struct served {
        real *xe, *h1, *h2, *ha;       // (cap, C | F)
        size_t cap;
    } *served;                         // (L)
    real *ye_r, *dye_r, *dxe_r;        // (cap_t, C)
    real *dh1_r, *dh2_r;               // (cap_t, F)
    size_t cap_t;
    real *leaves;                      // (S - 1, leaf_layers, 3, El, F * C): sources 1..
    int leaves_per_layer;              // micro-batches: every layer keeps its leaves
    size_t leaf_layers;                // L with micro-batches, else 1 (reused per layer)
    int *cnt;                          // (L, S, El) rows from source i for local expert e
    int *cnt_send;                     // (S, El)
    size_t *send_b, *recv_b;           // (S) bytes of the all-to-all at hand
    uint8_t *stats;                    // (D + 1, stat record) the statistics all-gather
    struct model_exec exec;
    moe_status hook_status;
    double t_comm;                     // this step's seconds in data-plane calls
    long rows_dispatched, rows_served, rows_returned; // this step's forward rows

    /* the reducer: a thread that reduces the queued buckets in order, on channel 1 */
    struct bucket *buckets;            // (n_buckets), from layer L-1's down to layer 0's
    int n_buckets;
    int *bucket_of;                    // (L) the bucket whose lowest layer is l, else -1
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *queue;                        // (n_buckets) bucket indices
    size_t q_cap, q_head, q_len;
    int busy, stop;
    struct thread_error err;
    /* where the cross-pod time went, over the exec's steps (logged at close) */
    double t_cross, t_wait;            // seconds in cross-pod reductions; the step waiting
    long sync_steps;
};

static size_t stat_record_bytes(const struct slot_exec *x);

/* ---- the reducer ---- */

static void bucket_pack(const struct bucket *b) {
    real *o = b->buf;
    for (int i = 0; i < b->n_dseg + b->n_eseg; i++) {
        memcpy(o, b->segs[i].p, sizeof(real) * b->segs[i].n);
        o += b->segs[i].n;
    }
}

static void bucket_unpack(const struct bucket *b) {
    const real *o = b->buf;
    for (int i = 0; i < b->n_dseg + b->n_eseg; i++) {
        memcpy(b->segs[i].p, o, sizeof(real) * b->segs[i].n);
        o += b->segs[i].n;
    }
}

/* Dense: reduce-scatter in the pod, all-reduce of this slot's chunk over pods, all-gather in
 * the pod; experts: all-reduce over pods. The chunk is moved next to the expert part (the rest
 * of the dense part is garbage between the reduce-scatter and the all-gather), so the
 * cross-pod traffic of the bucket is one all-reduce: one exchange with two pods. */
static moe_status reduce_bucket(struct slot_exec *x, const struct bucket *b) {
    real *buf = b->buf;
    size_t nd = b->n_dense, lo = 0, hi = nd;
    bucket_pack(b);
    if (x->S > 1 && nd) {
        CHECK(comm_reduce_scatter(x->comm, CH_GRAD, &x->pod, buf, nd));
        comm_chunk(nd, x->S, x->pod.me, &lo, &hi);
    }
    size_t len = hi - lo, at = nd - len;
    if (x->P > 1 && len + b->n_expert) {
        if (at != lo) memmove(buf + at, buf + lo, sizeof(real) * len);
        double t0 = moe_clock_s();
        moe_status s = comm_allreduce(x->comm, CH_GRAD, &x->cross, buf + at, len + b->n_expert);
        x->t_cross += moe_clock_s() - t0;
        CHECK(s);
        if (at != lo) memmove(buf + lo, buf + at, sizeof(real) * len);
    }
    if (x->S > 1 && nd) CHECK(comm_allgather_chunks(x->comm, CH_GRAD, &x->pod, buf, nd));
    bucket_unpack(b);
    return MOE_OK;
}

static void *reducer_main(void *arg) {
    struct slot_exec *x = arg;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->stop && x->q_len == 0) pthread_cond_wait(&x->cv, &x->mu);
        if (x->q_len == 0) break; /* stopping, nothing left */
        int bi = x->queue[x->q_head];
        x->q_head = (x->q_head + 1) % x->q_cap;
        x->q_len--;
        x->busy = 1;
        int failed = x->err.status != MOE_OK;
        pthread_mutex_unlock(&x->mu);
        moe_status s = failed ? MOE_OK : reduce_bucket(x, &x->buckets[bi]);
        pthread_mutex_lock(&x->mu);
        thread_error_keep(&x->err, s);
        x->busy = 0;
        pthread_cond_broadcast(&x->cv);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

static void reducer_push(struct slot_exec *x, int bucket) {
    pthread_mutex_lock(&x->mu);
    /* a bucket is pushed once per step, and the step waits for all before the next */
    x->queue[(x->q_head + x->q_len) % x->q_cap] = bucket;
    x->q_len++;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

/* Waits until every queued reduction ran; the first one's error, if any. */
static moe_status reducer_wait(struct slot_exec *x) {
    pthread_mutex_lock(&x->mu);
    while (x->q_len || x->busy) pthread_cond_wait(&x->cv, &x->mu);
    moe_status s = thread_error_take(&x->err, "");
    pthread_mutex_unlock(&x->mu);
    return s;
}

/* Layer l's blocks into b's segments: dense ones (the final norm before layer L-1's, the
 * embedding after layer 0's) or, with `expert`, this slot's three expert blocks. */
static int layer_segs(const struct slot_exec *x, int l, int expert, struct seg *o) {
    const struct model_params *g = &x->t->model.grads;
    size_t C = (size_t)x->C, E = (size_t)x->E, L = (size_t)l;
    size_t ex = (size_t)x->El * x->F * C;
    int n = 0;
    if (expert) {
        o[n++] = (struct seg){g->w_gate + L * ex, ex};
        o[n++] = (struct seg){g->w_up + L * ex, ex};
        o[n++] = (struct seg){g->w_down + L * ex, ex};
        return n;
    }
    if (l == x->L - 1) o[n++] = (struct seg){g->lnf_w, C};
    o[n++] = (struct seg){g->qkv_w + L * 3 * C * C, 3 * C * C};
    o[n++] = (struct seg){g->attn_out + L * C * C, C * C};
    o[n++] = (struct seg){g->router_w + L * E * C, E * C};
    o[n++] = (struct seg){g->ln1_w + L * C, C};
    o[n++] = (struct seg){g->ln2_w + L * C, C};
    if (l == 0) o[n++] = (struct seg){g->wte, x->t->model.tensor_sizes[0]};
    return n;
}

static moe_status bucket_init(struct slot_exec *x, struct bucket *b, int hi, int lo) {
    int layers = hi - lo + 1, with_exp = x->P > 1;
    b->lo = lo, b->hi = hi;
    b->segs = calloc((size_t)layers * 10, sizeof *b->segs);
    if (!b->segs) return moe_fail(MOE_ENOMEM, "out of memory");
    for (int l = hi; l >= lo; l--) b->n_dseg += layer_segs(x, l, 0, b->segs + b->n_dseg);
    for (int l = hi; with_exp && l >= lo; l--)
        b->n_eseg += layer_segs(x, l, 1, b->segs + b->n_dseg + b->n_eseg);
    for (int i = 0; i < b->n_dseg + b->n_eseg; i++)
        *(i < b->n_dseg ? &b->n_dense : &b->n_expert) += b->segs[i].n;
    b->buf = model_arena_alloc(b->n_dense + b->n_expert + 1); // huge pages (kernels/model.c)
    if (!b->buf) return moe_fail(MOE_ENOMEM, "out of memory for a gradient bucket");
    return MOE_OK;
}

/* Layers L-1 down to 0 fill buckets of at least mesh.bucket_kb; the last takes what is left.
 * Every slot cuts the same buckets (the same spec, the same sizes per slot index). */
static moe_status buckets_open(struct slot_exec *x) {
    size_t want = (size_t)x->t->spec.mesh.bucket_kb * 1024, have = 0;
    struct seg tmp[10];
    x->buckets = calloc((size_t)x->L, sizeof *x->buckets);
    x->bucket_of = malloc(sizeof(int) * (size_t)x->L);
    if (!x->buckets || !x->bucket_of) return moe_fail(MOE_ENOMEM, "out of memory");
    int hi = x->L - 1;
    for (int l = x->L - 1; l >= 0; l--) {
        x->bucket_of[l] = -1;
        int n = layer_segs(x, l, 0, tmp);
        if (x->P > 1) n += layer_segs(x, l, 1, tmp + n);
        for (int i = 0; i < n; i++) have += sizeof(real) * tmp[i].n;
        if (have < want && l > 0) continue;
        x->bucket_of[l] = x->n_buckets;
        CHECK(bucket_init(x, &x->buckets[x->n_buckets++], hi, l));
        hi = l - 1;
        have = 0;
    }
    x->q_cap = (size_t)x->n_buckets;
    x->queue = calloc(x->q_cap, sizeof *x->queue);
    return x->queue ? MOE_OK : moe_fail(MOE_ENOMEM, "out of memory");
}

static void buckets_close(struct slot_exec *x) {
    for (int i = 0; x->buckets && i < x->n_buckets; i++) {
        struct bucket *b = &x->buckets[i];
        free(b->segs);
        model_arena_free(b->buf, b->n_dense + b->n_expert + 1);
    }
    free(x->buckets);
    free(x->bucket_of);
    free(x->queue);
}

/* ---- the experts' hooks (compute thread, channel 0) ---- */

/* A step's gradients are final in its last pass: only then are they summed and reduced. */
static int last_pass(const struct slot_exec *x) {
    return x->t->pass == x->t->Bd / x->t->M - 1;
}

/* A data-plane call on the compute thread: its time counts as the step's t_comm; on failure
 * `on_error` runs with the status in s_. */
#define TIMED(call, on_error)                                                                     \
    do {                                                                                          \
        double timed_t0_ = moe_clock_s();                                                         \
        moe_status s_ = (call);                                                                   \
        x->t_comm += moe_clock_s() - timed_t0_;                                                   \
        if (s_ != MOE_OK) {                                                                       \
            on_error;                                                                             \
        }                                                                                         \
    } while (0)
/* in a hook: keep the status for the step, abandon the pass */
#define HOOK(call) TIMED(call, x->hook_status = s_; return -1)

/* Rows this slot sends to member j (expert_off is expert-major, so slot j's experts are one
 * contiguous run) and receives from member i (the counts it announced). */
static size_t rows_to(const struct slot_exec *x, const struct moe_acts *a, int j) {
    return (size_t)(a->expert_off[(j + 1) * x->El] - a->expert_off[j * x->El]);
}
static size_t rows_from(const struct slot_exec *x, const int *cnt, int i) {
    size_t r = 0;
    for (int e = 0; e < x->El; e++) r += (size_t)cnt[i * x->El + e];
    return r;
}

static int grow(real **p, size_t n) {
    free(*p);
    *p = malloc(sizeof(real) * (n ? n : 1));
    return *p != NULL;
}

/* Room for `rows` served rows in layer l and in the working buffers. */
static moe_status ensure_rows(struct slot_exec *x, int l, size_t rows) {
    size_t C = (size_t)x->C, F = (size_t)x->F;
    size_t want = rows + rows / 4; /* some headroom: routing moves a little from step to step */
    if (want > x->rows_max) want = x->rows_max;
    struct served *sv = &x->served[l];
    if (rows > sv->cap) {
        sv->cap = 0;
        if (!grow(&sv->xe, want * C) || !grow(&sv->h1, want * F) || !grow(&sv->h2, want * F) ||
            !grow(&sv->ha, want * F))
            goto oom;
        sv->cap = want;
    }
    if (rows > x->cap_t) {
        x->cap_t = 0;
        if (!grow(&x->ye_r, want * C) || !grow(&x->dye_r, want * C) ||
            !grow(&x->dxe_r, want * C) || !grow(&x->dh1_r, want * F) || !grow(&x->dh2_r, want * F))
            goto oom;
        x->cap_t = want;
    }
    return MOE_OK;
oom:
    return moe_fail(MOE_ENOMEM, "out of memory for the %zu rows the pod sent slot %d's experts "
                    "in layer %d", rows, x->pod.me, l);
}

/* Between experts: a peer whose process died is found within one expert's compute, not at
 * the next collective (a large share of a step later), so the fault is reported and the
 * recovery starts while this slot would otherwise still compute a step it will throw away. */
static int peers_alive(struct slot_exec *x) {
    moe_status s = comm_check_peers(x->comm);
    if (s == MOE_OK) return 1;
    x->hook_status = s;
    return 0;
}

static int hook_between(void *ctx) { return peers_alive(ctx) ? 0 : -1; }

static int hook_forward(void *ctx, int l, struct moe_acts *a, const struct moe_layer_cfg *c) {
    struct slot_exec *x = ctx;
    int S = x->S, El = x->El, C = x->C, F = x->F;
    const struct model_params *p = &x->t->model.params;
    int *cnt = x->cnt + (size_t)l * S * El;
    for (int j = 0; j < S; j++) {
        for (int e = 0; e < El; e++)
            x->cnt_send[j * El + e] = a->expert_off[j * El + e + 1] - a->expert_off[j * El + e];
        x->send_b[j] = x->recv_b[j] = sizeof(int) * (size_t)El;
    }
    HOOK(comm_alltoallv(x->comm, CH_MOE, &x->pod, x->cnt_send, x->send_b, cnt, x->recv_b));
    size_t rows_in = 0;
    for (int j = 0; j < S; j++) {
        x->send_b[j] = rows_to(x, a, j) * C * sizeof(real);
        size_t r = rows_from(x, cnt, j);
        x->recv_b[j] = r * C * sizeof(real);
        rows_in += r;
    }
    if (rows_in > x->rows_max) {
        x->hook_status = moe_fail(MOE_EINTERNAL, "layer %d: the pod sent %zu rows to slot %d's "
                                  "experts, more than the %zu the routing allows", l, rows_in,
                                  x->pod.me, x->rows_max);
        return -1;
    }
    if (ensure_rows(x, l, rows_in) != MOE_OK) {
        x->hook_status = MOE_ENOMEM;
        return -1;
    }
    const struct served *sv = &x->served[l];
    real *xe = sv->xe, *h1 = sv->h1, *h2 = sv->h2, *ha = sv->ha;
    HOOK(comm_alltoallv(x->comm, CH_MOE, &x->pod, a->xe, x->send_b, xe, x->recv_b));
    x->rows_dispatched += a->expert_off[x->E];
    x->rows_served += (long)rows_in;
    /* each source's rows for each of our experts: the same products, over the same rows, as
     * the source's own model would compute with the expert at home */
    size_t r = 0;
    size_t FC = (size_t)F * C;
    for (int i = 0; i < S; i++)
        for (int e = 0; e < El; e++) {
            int m = cnt[i * El + e];
            size_t w = ((size_t)l * El + e) * FC;
            if (!peers_alive(x)) return -1;
            expert_ffn_forward(x->ye_r + r * C, h1 + r * F, h2 + r * F, ha + r * F, xe + r * C,
                               p->w_gate + w, p->w_up + w, p->w_down + w, m, C, F);
            r += (size_t)m;
        }
    /* the answers go back the way the rows came */
    HOOK(comm_alltoallv(x->comm, CH_MOE, &x->pod, x->ye_r, x->recv_b, a->ye, x->send_b));
    for (int j = 0; j < S; j++) x->rows_returned += (long)(x->send_b[j] / (C * sizeof(real)));
    (void)c;
    return 0;
}

static int hook_backward(void *ctx, int l, const struct moe_acts *a, struct moe_scratch *s,
                         const struct moe_layer_cfg *c) {
    struct slot_exec *x = ctx;
    int S = x->S, El = x->El, C = x->C, F = x->F;
    struct model *m = &x->t->model;
    const struct model_params *p = &m->params;
    const int *cnt = x->cnt + (size_t)l * S * El;
    for (int j = 0; j < S; j++) {
        x->send_b[j] = rows_to(x, a, j) * C * sizeof(real);
        x->recv_b[j] = rows_from(x, cnt, j) * C * sizeof(real);
    }
    HOOK(comm_alltoallv(x->comm, CH_MOE, &x->pod, s->dye, x->send_b, x->dye_r, x->recv_b));
    const struct served *sv = &x->served[l]; /* sized by this layer's forward */
    const real *xe = sv->xe, *h1 = sv->h1, *h2 = sv->h2, *ha = sv->ha;
    size_t FC = (size_t)F * C, layer = (size_t)El * FC;
    /* source i's weight gradients of our experts are a leaf of the mesh's tree; source 0's
     * are written straight into the gradient arena, where the tree's sum lands */
    real *leaf[3][S];
    for (int i = 0; i < S; i++) {
        real *own[3] = {m->grads.w_gate + l * layer, m->grads.w_up + l * layer,
                        m->grads.w_down + l * layer};
        /* with micro-batches each layer keeps its own leaves until the last pass adds them */
        size_t slot_l = x->leaves_per_layer ? (size_t)l : 0;
        real *leaves = i == 0 ? NULL
                              : x->leaves + ((size_t)(i - 1) * x->leaf_layers + slot_l) * 3 * layer;
        for (int k = 0; k < 3; k++) leaf[k][i] = i == 0 ? own[k] : leaves + (size_t)k * layer;
    }
    size_t r = 0;
    for (int i = 0; i < S; i++)
        for (int e = 0; e < El; e++) {
            int rows = cnt[i * El + e];
            size_t w = ((size_t)l * El + e) * FC, o = (size_t)e * FC;
            if (!peers_alive(x)) return -1;
            expert_ffn_backward(x->dxe_r + r * C, leaf[0][i] + o, leaf[1][i] + o, leaf[2][i] + o,
                                x->dh1_r, x->dh2_r, x->dye_r + r * C, xe + r * C, h1 + r * F,
                                h2 + r * F, ha + r * F, p->w_gate + w, p->w_up + w,
                                p->w_down + w, rows, C, F, c->accumulate);
            r += (size_t)rows;
        }
    /* the sources' sum, once their last pass is in (micro-batches accumulate per source,
     * exactly as each source's own model would) */
    if (last_pass(x))
        for (int k = 0; k < 3; k++) tree_sum_f32(leaf[k], S, layer);
    HOOK(comm_alltoallv(x->comm, CH_MOE, &x->pod, x->dxe_r, x->recv_b, s->dxe, x->send_b));
    (void)c;
    return 0;
}

/* Layer l's gradients are final: when it is the last layer of a bucket, reduce the bucket
 * while the backward goes on below. Layer 0's waits for the embedding (slot_step). */
static int hook_layer_done(void *ctx, int l) {
    struct slot_exec *x = ctx;
    if (!last_pass(x) || l == 0 || x->bucket_of[l] < 0) return 0;
    reducer_push(x, x->bucket_of[l]);
    return 0;
}

/* ---- open / close ---- */

moe_status slot_exec_open(struct trainer *t) {
    struct slot_exec *x = calloc(1, sizeof *x);
    if (!x) return moe_fail(MOE_ENOMEM, "out of memory");
    t->mesh.exec = x;
    const struct model_config *c = &t->spec.model;
    x->t = t;
    x->comm = t->mesh.comm;
    /* diloco: inner steps reduce inside the pod; the pods meet in the outer step (outer.c) */
    x->P = mesh_diloco(&t->spec.mesh) ? 1 : t->mesh.pods;
    x->S = t->mesh.slots;
    x->D = t->mesh.shards;
    x->E = c->n_experts;
    x->El = t->mesh.n_local_experts;
    x->K = c->top_k;
    x->C = c->d_model;
    x->F = c->d_ff;
    x->L = c->n_layers;
    comm_group_pod(&x->pod, x->comm, t->mesh.pod);
    comm_group_slot(&x->cross, x->comm, t->mesh.slot);
    comm_group_all(&x->all, x->comm);
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    CHECK(buckets_open(x));
    x->stats = malloc(stat_record_bytes(x) * ((size_t)x->D + 1));
    if (!x->stats) return moe_fail(MOE_ENOMEM, "out of memory");

    x->exec.ctx = x;
    x->exec.layer_done = hook_layer_done;
    x->exec.between = hook_between;
    if (x->S > 1) {
        x->exec.experts_forward = hook_forward;
        x->exec.experts_backward = hook_backward;
        /* a source sends one of our experts at most every token's K choices (dropless) or
         * capacity rows per sequence */
        size_t N = (size_t)t->M * t->T, K = (size_t)x->K, El = (size_t)x->El;
        size_t by_tokens = N * (K < El ? K : El);
        size_t by_capacity = (size_t)t->M * model_expert_capacity(c, t->T) * El;
        x->rows_max = (size_t)x->S * (by_tokens < by_capacity ? by_tokens : by_capacity);
        size_t L = (size_t)x->L, C = (size_t)x->C, F = (size_t)x->F;
        x->served = calloc(L, sizeof *x->served);
        x->leaves_per_layer = t->Bd / t->M > 1;
        x->leaf_layers = x->leaves_per_layer ? L : 1;
        x->leaves = malloc(sizeof(real) * (size_t)(x->S - 1) * x->leaf_layers * 3 * El * F * C);
        x->cnt = calloc(L * x->S * El, sizeof(int));
        x->cnt_send = calloc((size_t)x->S * El, sizeof(int));
        x->send_b = calloc((size_t)x->S, sizeof(size_t));
        x->recv_b = calloc((size_t)x->S, sizeof(size_t));
        if (!x->served || !x->leaves || !x->cnt || !x->cnt_send ||
            !x->send_b || !x->recv_b)
            return moe_fail(MOE_ENOMEM, "out of memory for slot %d's %d experts' gradients",
                            t->mesh.slot, x->El);
    }
    if (pthread_create(&x->thread, NULL, reducer_main, x) != 0)
        return moe_fail(MOE_ENOMEM, "cannot start the gradient reduction thread");
    x->thread_started = 1;
    return MOE_OK;
}

void slot_exec_close(struct trainer *t) {
    struct slot_exec *x = t->mesh.exec;
    if (!x) return;
    if (x->thread_started) {
        pthread_mutex_lock(&x->mu);
        x->stop = 1;
        x->q_len = 0; /* a closing trainer does not finish its reductions */
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
        pthread_join(x->thread, NULL);
    }
    if (x->sync_steps > 0 && x->P > 1)
        LOG_INFO("gradient sync over %ld steps: %d bucket%s, cross-pod reductions %.1f ms "
                     "per step, the step waited %.1f ms for them (%.0f%% hidden)",
                     x->sync_steps, x->n_buckets, x->n_buckets == 1 ? "" : "s",
                     1e3 * x->t_cross / x->sync_steps, 1e3 * x->t_wait / x->sync_steps,
                     x->t_cross > 0 ? 100 * (1 - fmin(1, x->t_wait / x->t_cross)) : 0);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    buckets_close(x);
    free(x->stats);
    for (int l = 0; x->served && l < x->L; l++) {
        struct served *sv = &x->served[l];
        free(sv->xe), free(sv->h1), free(sv->h2), free(sv->ha);
    }
    free(x->served);
    free(x->ye_r), free(x->dye_r), free(x->dxe_r), free(x->dh1_r), free(x->dh2_r);
    free(x->leaves);
    free(x->cnt), free(x->cnt_send), free(x->send_b), free(x->recv_b);
    free(x);
    t->mesh.exec = NULL;
}

/* ---- the step ---- */

/* A failed pass: the epoch is over for this slot. Abort the comm so that the reducer's
 * pending operation returns now, and keep the first error's message. */
static moe_status pass_failed(struct slot_exec *x) {
    moe_status s = x->hook_status != MOE_OK ? x->hook_status : MOE_EINTERNAL;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", moe_errmsg());
    comm_abort(x->comm);
    reducer_wait(x);
    replica_step_abandon(x->t);
    outer_abandon(x->t);
    x->hook_status = MOE_OK;
    return moe_fail(s, "%s", msg);
}

moe_status slot_forward(struct trainer *t, int B) {
    struct slot_exec *x = t->mesh.exec;
    double loss;
    if (model_forward_exec(&t->model, t->tokens, t->targets, B, t->T,
                           x->S > 1 ? &x->exec : NULL, &loss) != 0)
        return pass_failed(x);
    return MOE_OK;
}

moe_status slot_sum_over_shards(struct trainer *t, double v, double *sum) {
    struct slot_exec *x = t->mesh.exec;
    double all[COMM_MAX_RANKS];
    CHECK(comm_allgather(x->comm, CH_MOE, &x->all, &v, sizeof v, all));
    double s = 0;
    for (int d = 0; d < x->D; d++) s += all[d];
    *sum = s;
    return MOE_OK;
}

/* The global gradient norm: this slot's dense blocks (the same on every slot after the
 * reductions) and every slot's expert blocks, added in the whole model's block order. */
static moe_status grad_norm(struct slot_exec *x, double *norm) {
    struct model *m = &x->t->model;
    size_t nb = model_n_norm_blocks(m), L = (size_t)x->L, El = (size_t)x->El;
    size_t n_exp = 3 * L * El; /* blocks of the three expert tensors, in order */
    double *local = malloc(sizeof(double) * nb);
    double *all = malloc(sizeof(double) * n_exp * (size_t)x->S);
    if (!local || !all) {
        free(local), free(all);
        return moe_fail(MOE_ENOMEM, "out of memory");
    }
    model_norm_blocks(m, local);
    /* local order: wte, qkv (L), attn_out (L), router (L), gate/up/down (L * El each), ... */
    size_t first_exp = 1 + 3 * L;
    moe_status res = MOE_OK;
    if (x->S > 1)
        res = comm_allgather(x->comm, CH_MOE, &x->pod, local + first_exp,
                             sizeof(double) * n_exp, all);
    else
        memcpy(all, local + first_exp, sizeof(double) * n_exp);
    if (res == MOE_OK) {
        double total = 0;
        for (size_t k = 0; k < first_exp; k++) total += local[k];
        for (int ti = 0; ti < 3; ti++)
            for (size_t l = 0; l < L; l++)
                for (int e = 0; e < x->E; e++) {
                    size_t j = (size_t)e / El, el = (size_t)e % El;
                    total += all[j * n_exp + (size_t)ti * L * El + l * El + el];
                }
        for (size_t k = first_exp + n_exp; k < nb; k++) total += local[k];
        *norm = sqrt(total);
    }
    free(local);
    free(all);
    return res;
}

/* What every shard gives the statistics all-gather: its losses and, on a check step, the
 * SHA-256 of its state at the step's start (the replica thread's, joined before). */
struct stat_part {
    double loss[5]; // loss, ce, aux, z, kl
    int64_t hash_step; // -1: no hash this step
    uint8_t sha[32];
};

/* The replica check, before the update: the data-parallel replicas (the same slot index in
 * every pod) must have hashed the same state. Every shard sees every hash, so every slot
 * stops at the same step when one pair differs, holding the step's live state and the
 * previous version, which the last check agreed on: the coordinator repairs from there. */
static moe_status check_replicas(struct slot_exec *x, const struct stat_part *parts) {
    struct trainer *t = x->t;
    for (int d = x->S; d < x->D; d++) {
        const struct stat_part *a = &parts[d % x->S], *b = &parts[d];
        if (a->hash_step < 0 || b->hash_step != a->hash_step || !memcmp(a->sha, b->sha, 32))
            continue;
        t->mesh.mismatch_step = a->hash_step;
        t->mesh.mismatch_slot = d % x->S;
        return moe_fail(MOE_EINTERNAL, "replica mismatch: the state of slot index %d after step "
                        "%lld differs between pods 0 (%02x%02x%02x%02x...) and %d "
                        "(%02x%02x%02x%02x...): stopped before the update for a repair",
                        d % x->S, (long long)a->hash_step, a->sha[0], a->sha[1], a->sha[2],
                        a->sha[3], d / x->S, b->sha[0], b->sha[1], b->sha[2], b->sha[3]);
    }
    return MOE_OK;
}

/* One shard's record in the statistics all-gather: its stat_part, then its dropped count and
 * its expert loads (L, E). */
static size_t stat_record_bytes(const struct slot_exec *x) {
    return sizeof(struct stat_part) + sizeof(int64_t) * (1 + (size_t)x->L * x->E);
}

/* The whole batch's statistics into r and the model: the shards' losses gathered and added in
 * shard order, the dropped count and the expert loads added exactly. One all-gather over every
 * rank carries all of it: a single exchange, since it crosses the pods' slow links. Between
 * diloco's outer steps a pod's batch is the batch: the all-gather stays inside the pod, except
 * on a check step, whose hashes every pod must see (the pod's records still make the sums). */
static moe_status gather_statistics(struct slot_exec *x, const struct shard_losses *part,
                                    struct step_report *r) {
    struct trainer *t = x->t;
    size_t n_load = (size_t)x->L * x->E, rec = stat_record_bytes(x);
    struct stat_part mine = {{part->loss, part->ce, part->aux, part->z, part->kl}, -1, {0}};
    struct stat_part parts[COMM_MAX_RANKS];
    long hs;
    if (replica_hash(t, mine.sha, &hs)) mine.hash_step = hs;
    uint8_t *all = x->stats, *own = x->stats + (size_t)x->D * rec;
    int64_t dropped = part->dropped;
    memcpy(own, &mine, sizeof mine);
    memcpy(own + sizeof mine, &dropped, sizeof dropped);
    for (size_t j = 0; j < n_load; j++) {
        int64_t v = t->load_sum[j];
        memcpy(own + sizeof mine + sizeof(int64_t) * (1 + j), &v, sizeof v);
    }
    int diloco = t->mesh.outer != NULL, whole = !diloco || replica_checks(t, t->model.step);
    TIMED(comm_allgather(x->comm, CH_MOE, whole ? &x->all : &x->pod, own, rec, all),
          return s_);
    int n = whole ? x->D : x->S;
    for (int d = 0; d < n; d++) memcpy(&parts[d], all + (size_t)d * rec, sizeof parts[d]);
    if (whole) CHECK(check_replicas(x, parts));
    int lo = diloco && whole ? t->mesh.pod * x->S : 0, hi = lo + (diloco ? x->S : x->D);
    double sum[5] = {0, 0, 0, 0, 0};
    for (int d = lo; d < hi; d++)
        for (int k = 0; k < 5; k++) sum[k] += parts[d].loss[k];
    r->loss = sum[0];
    r->ce = sum[1];
    r->aux = sum[2];
    r->z = sum[3];
    r->kl = sum[4];
    for (size_t j = 0; j < 1 + n_load; j++) {
        uint64_t total = 0; /* integers: exact in any order (two's complement, no UB) */
        for (int d = lo; d < hi; d++) {
            int64_t v;
            memcpy(&v, all + (size_t)d * rec + sizeof mine + sizeof v * j, sizeof v);
            total += (uint64_t)v;
        }
        if (j == 0) r->dropped = (long)(int64_t)total;
        else t->load_sum[j - 1] = t->model.stats.load[j - 1] = (long)(int64_t)total;
    }
    return MOE_OK;
}

/* The data plane's part of the report: this step's time in it, its rows and bytes. */
static void report_comm(const struct slot_exec *x, const struct comm_stats *before,
                        struct step_report *r) {
    struct comm_stats after;
    comm_get_stats(x->comm, &after);
    r->t_comm = x->t_comm;
    r->rows_dispatched = x->rows_dispatched;
    r->rows_served = x->rows_served;
    r->rows_returned = x->rows_returned;
    r->bytes_alltoall = after.alltoall_bytes - before->alltoall_bytes;
    r->bytes_allreduce = (after.reduce_bytes - before->reduce_bytes) +
                         (after.other_bytes - before->other_bytes);
}

/* in the step: fail it */
#define STEP(call) TIMED(call, res = s_; goto fail)

moe_status slot_step(struct trainer *t, struct step_report *r) {
    struct slot_exec *x = t->mesh.exec;
    struct model *m = &t->model;
    double t0 = moe_clock_s();
    long step = m->step;
    step_begin(t, r);
    struct comm_stats before;
    comm_get_stats(x->comm, &before);
    x->t_comm = 0;
    x->rows_dispatched = x->rows_served = x->rows_returned = 0;
    moe_status res = MOE_OK;

    t->mesh.mismatch_step = 0;
    /* a fence that came during the last update (replica.c) aborted the comm: the step fails
     * before its hash and copies start, and the slot joins the next epoch that much sooner */
    STEP(comm_check_peers(x->comm));
    replica_apply_flip(t);
    replica_step_begin(t); /* buddy copies of S(step) and its hash, beside the compute */
    int shard = t->mesh.pod * x->S + t->mesh.slot;
    struct shard_losses part = {0};
    if (step_shard_passes(t, shard, step, &part, r, &x->exec) != 0) return pass_failed(x);
    /* the embedding's gradient is final only now (the LM head and the encoder share it) */
    reducer_push(x, x->bucket_of[0]);
    double w0 = moe_clock_s();
    STEP(reducer_wait(x));
    x->t_wait += moe_clock_s() - w0;
    x->sync_steps++;
    /* before the all-rank collective: whoever passes it knows every buddy copy of S(step) is
     * whole (docs/recovery.md, "Why two versions are enough") */
    STEP(replica_step_join(t));
    if ((res = gather_statistics(x, &part, r)) != MOE_OK) goto fail;

    double u0 = moe_clock_s(), norm = 0;
    STEP(grad_norm(x, &norm));
    r->lr = adamw_lr(&t->spec.optimizer, step);
    r->load_max_over_mean = step_load_imbalance(m);
    r->grad_norm = norm;
    if ((res = replica_update(t, norm)) != MOE_OK) goto fail;
    if (outer_due(t)) STEP(outer_step(t));
    r->t_update = moe_clock_s() - u0;
    /* every slot passed this step's all-rank collective; with diloco, the last outer step
     * before the one this slot passed (docs/recovery.md, "Outer steps") */
    r->replicated_step = t->mesh.outer ? outer_committed(t) : step;
    r->has_hash = replica_hash(t, r->state_sha256, &r->hash_step);
    report_comm(x, &before, r);
    return step_end(t, r, t0);
fail:
    comm_abort(x->comm);
    replica_step_abandon(t);
    outer_abandon(t);
    return res;
}

/* ---- the model at the end ---- */

/* Pod 0 holds every expert once: its slots send theirs to rank 0, which writes the file. */
static moe_status gather_and_write(const struct trainer *t, const char *path) {
    const struct slot_exec *x = t->mesh.exec;
    const struct model *m = &t->model;
    if (t->mesh.pod != 0) return MOE_OK;
    size_t L = (size_t)x->L, FC = (size_t)x->F * x->C, layer = (size_t)x->El * FC;
    const real *own[3] = {m->params.w_gate, m->params.w_up, m->params.w_down};
    if (t->mesh.slot != 0) {
        for (int k = 0; k < 3; k++)
            CHECK(comm_send(x->comm, CH_MOE, 0, own[k], sizeof(real) * L * layer));
        return MOE_OK;
    }
    struct model full;
    if (model_alloc(&full, &m->cfg, 1) != 0)
        return moe_fail(MOE_ENOMEM, "out of memory assembling the whole model to save it");
    for (int i = 0; i < MODEL_NUM_TENSORS; i++)
        if (!model_tensor_is_expert(i))
            memcpy(model_tensor(&full.params, i), model_tensor(&m->params, i),
                   sizeof(real) * m->tensor_sizes[i]);
    memcpy(full.buffer_mem, m->buffer_mem, sizeof(real) * m->n_buffers);
    full.step = m->step;
    moe_status res = MOE_OK;
    real *part = malloc(sizeof(real) * L * layer);
    if (!part) {
        res = moe_fail(MOE_ENOMEM, "out of memory receiving the experts");
        goto exit;
    }
    real *dst[3] = {full.params.w_gate, full.params.w_up, full.params.w_down};
    size_t whole_layer = (size_t)x->E * FC;
    for (int j = 0; j < x->S; j++)
        for (int k = 0; k < 3; k++) {
            const real *src = own[k];
            if (j > 0) {
                CHECK_GOTO(comm_recv(x->comm, CH_MOE, x->pod.ranks[j], part,
                                     sizeof(real) * L * layer), res, exit);
                src = part;
            }
            for (size_t l = 0; l < L; l++)
                memcpy(dst[k] + l * whole_layer + (size_t)j * layer, src + l * layer,
                       sizeof(real) * layer);
        }
    res = model_save_job(&full, &t->spec, t->data.tok_model, t->data.tok_model_len,
                         path);
exit:
    free(part);
    model_free(&full);
    return res;
}

moe_status slot_save_model(const struct trainer *t, const char *path) {
    struct slot_exec *x = t->mesh.exec;
    moe_status res = gather_and_write(t, path);
    /* every slot leaves together: the job's last collective, after which closing the comm
     * is no longer a peer's failure for anyone still finishing */
    moe_status b = comm_barrier(x->comm, CH_MOE, &x->all);
    return res != MOE_OK ? res : b;
}
