/*
 * test_mesh — a distributed job computes exactly what one process computes.
 *
 * For each case (2x2, 1x4, 4x1, dropless, micro-batches, three slots per pod with two
 * experts each), the trainer that plays every shard of the mesh in one process (the
 * reference) and pods x slots real processes — each its own fresh process with its own
 * data-plane listener (tests/rank_procs.h), connected over loopback through worker/comm,
 * each holding only its own experts — train the same spec. Checks:
 *   - every step's loss, cross-entropy and gradient norm are the same doubles on every slot
 *     and in the reference (bit for bit), and so is the held-out loss at the end;
 *   - the model file rank 0 writes is byte for byte the reference's;
 *   - token accounting: over each pod, the rows dispatched, the rows the experts served and
 *     the rows combined back are equal, and equal to the assignments kept after capacity
 *     (all of them when dropless);
 *   - 1x4, 2x2 and 4x1 (same shards, S a power of two) give the same file as each other,
 *     the tree order's promise (kernels/tree_sum.h); 1x1 differs from them only by rounding;
 *   - several gradient buckets per step (a bucket per layer: 2x2, 4x1, 3x1, micro-batches, a
 *     restore) give the same bits as the default single bucket and as the reference;
 *   - a slot killed with SIGKILL in the middle of a step (also inside the overlapped gradient
 *     sync, with several buckets) makes every survivor's step fail
 *     with an error naming a peer, within the data plane's bound (never a hang);
 *   - recovery's restore (worker/trainer/replica.h): after some steps every slot fences, one slot
 *     starts over with a fresh trainer (a new holder), a second epoch's comm forms and every
 *     slot returns to the plan's step — survivors from their live or previous version, the
 *     new holder from another pod's slot or from its buddy copy — and the job trains on to
 *     the same bits as the reference; the fence lists exactly the copies each slot holds;
 *   - the same two restores with a bit flipped in the source's send after its checksums were
 *     made (replica_request_corrupt): the new holder refuses the state, naming the source.
 * Runs on one OpenMP thread (ctest sets it): OpenBLAS's AVX2 sgemm is not thread-count
 * independent (see test_trainer), and a mesh test must vary one thing at a time.
 */
#include "../common/log.h"
#include "../common/spec.h"
#include "../worker/comm/comm.h"
#include "../worker/trainer/replica.h"
#include "../worker/trainer/transfer_check.h"
#include "../common/crc32c.h"
#include "../worker/trainer/trainer.h"
#include "check.h"
#include "rank_procs.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

#define STEPS 6
#define MAX_RANKS 8

static char dir[] = "/tmp/moe_test_mesh_XXXXXX";
static char text_path[512];

/* What a run reports per step and at the end, as raw doubles (compared bit for bit). */
struct run_result {
    double loss[STEPS], ce[STEPS], norm[STEPS];
    long dropped[STEPS], assignments[STEPS];
    long dispatched[STEPS], served[STEPS], returned[STEPS];
    double val;
    int ok;
    char error[256];
    double fail_seconds; // the kill case: how long the failing step took
    int n_copies;        // the restore case: what the fence listed
    struct state_copy copies[8];
    long restored_to;
    int refused_from;    // the restore refused that rank's state (-1: none)
};

/* The restore case: everyone trains `first` steps in epoch 1, fences; rank `victim` starts
 * over with a fresh trainer; epoch 2 restores every rank to `step` with sources from[]. */
struct restore_case {
    int first, step, victim;
    int corrupt; // the rank whose restore send carries a flipped bit (-1: none)
    int from[MAX_RANKS];
};

/* Pseudo-English text from a fixed generator: enough structure that routing is not uniform. */
static void write_text(const char *path) {
    static const char *words[] = {"the", "of", "mixture", "experts", "router", "token", "and",
                                  "gradient", "pod", "slot", "a", "model", "learns", "to",
                                  "send", "each", "byte", "where", "it", "belongs"};
    FILE *f = fopen(path, "w");
    unsigned long long x = 42;
    for (int i = 0; i < 20000; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        fputs(words[(x >> 33) % (sizeof words / sizeof *words)], f);
        fputc((x >> 20) % 9 == 0 ? '\n' : ' ', f);
    }
    fclose(f);
}

/* The case's shape; experts and batch default to 4 and 8 (0), other values for meshes whose
 * slots do not divide those. */
static void make_spec(struct job_spec *s, int pods, int slots, int dropless, int micro,
                      int experts, int batch) {
    spec_defaults(s);
    s->mesh.pods = pods;
    s->mesh.slots = slots;
    s->mesh.timeout_s = 2;
    s->model.d_model = 32;
    s->model.n_layers = 2;
    s->model.n_heads = 4;
    s->model.seq_len = 32;
    s->model.n_experts = experts ? experts : 4;
    s->model.d_ff = 48;
    s->model.top_k = 2;
    s->model.dropless = dropless;
    s->model.capacity_factor = 1.0f;
    s->model.bias_balancing = 1;
    s->run.batch_size = batch ? batch : 8;
    s->run.micro_batch = micro;
    s->run.steps = STEPS;
    s->run.eval_batches = 1;
    s->optimizer.warmup_steps = 2;
    s->optimizer.grad_clip = 0.05f; /* small: clipping acts, so the norm must agree exactly */
    s->data.n_sources = 1;
    snprintf(s->data.sources[0].path, SPEC_PATH_MAX, "%s", text_path);
    s->data.sources[0].weight = 1;
    s->data.val_fraction = 0.1;
    /* the gradient buckets' size (slot.c): the default makes one bucket of this small model;
     * the "buckets" cases set 1 KiB, a bucket per layer, through the environment that the
     * slots' processes inherit */
    const char *kb = getenv("TEST_MESH_BUCKET_KB");
    if (kb && *kb) s->mesh.bucket_kb = atoi(kb);
}

static void record(struct run_result *out, int i, const struct step_report *r) {
    out->loss[i] = r->loss;
    out->ce[i] = r->ce;
    out->norm[i] = r->grad_norm;
    out->dropped[i] = r->dropped;
    out->assignments[i] = r->assignments;
    out->dispatched[i] = r->rows_dispatched;
    out->served[i] = r->rows_served;
    out->returned[i] = r->rows_returned;
}

/* The reference: one process, every shard. */
static void run_local(const struct job_spec *spec, const char *model_path, struct run_result *out) {
    memset(out, 0, sizeof *out);
    struct trainer t;
    if (trainer_open(&t, spec) != MOE_OK) {
        snprintf(out->error, sizeof out->error, "%s", moe_errmsg());
        return;
    }
    for (int i = 0; i < STEPS; i++) {
        struct step_report r;
        if (trainer_step(&t, &r) != MOE_OK) {
            snprintf(out->error, sizeof out->error, "%s", moe_errmsg());
            trainer_close(&t);
            return;
        }
        record(out, i, &r);
    }
    out->ok = trainer_eval(&t, &out->val, NULL) == MOE_OK &&
              trainer_save_model(&t, model_path) == MOE_OK;
    if (!out->ok) snprintf(out->error, sizeof out->error, "%s", moe_errmsg());
    trainer_close(&t);
}

/* One slot: a fresh process (fork + exec of this test, as a worker daemon is its own
 * process: a forked copy of a process that already ran OpenMP would inherit a dead thread
 * pool). It opens its listener, tells the parent its address on stdout, reads every rank's
 * address from stdin (the coordinator's part), trains, and writes its run_result to stdout.
 * kill_at >= 0: rank 3 kills itself with SIGKILL just before that step. */
/* The restore case's epoch change in a rank (see struct restore_case). */
static moe_status change_epoch(struct trainer *t, const struct job_spec *spec, int rank,
                               struct comm_listener *l, struct comm **c,
                               const struct restore_case *rc, struct run_result *out) {
    long live;
    const char *damage = getenv("TEST_MESH_DAMAGE_COPY"); /* check_damaged_copy */
    if (damage && atoi(damage) == rank) replica_damage_copies(t);
    out->n_copies = replica_fence(t, out->copies, 8, &live, 0);
    comm_close(*c);
    *c = NULL;
    int n = spec->mesh.pods * spec->mesh.slots, slots = spec->mesh.slots;
    static char addrs[RANK_PROCS_MAX][COMM_ADDR_MAX];
    const char *peers[RANK_PROCS_MAX];
    for (int r = 0; r < n; r++) peers[r] = addrs[r];
    /* the same listeners, so the same addresses: the parent sends the table once more */
    if (rank_procs_read_table(n, addrs, peers) != 0)
        return moe_fail(MOE_EIO, "no second address table");
    struct comm_config cc = {.backend = COMM_TCP, .rank = rank, .size = n,
                             .pods = spec->mesh.pods, .slots = slots, .epoch = 8,
                             .job_id = "job-mesh", .key = rank_procs_key("mesh-test-token"),
                             .peers = peers,
                             .timeout_s = spec->mesh.timeout_s};
    if (rank == rc->victim) { /* a new holder, as the daemon makes one: nothing of the job in
                               * memory, the trainer built before the comm, its state zero */
        trainer_close(t);
        CHECK(trainer_open_slot_later(t, spec, rank / slots, rank % slots, 0, NULL));
    }
    CHECK(comm_open(c, &cc, l));
    CHECK(trainer_rebind(t, *c));
    struct restore_plan p = {rc->step, rc->from, n};
    struct restore_stats st;
    if (rank == rc->corrupt) replica_request_corrupt(t);
    moe_status s = replica_restore(t, &p, &st);
    out->refused_from = s == MOE_OK ? -1 : st.refused_from;
    CHECK(s);
    out->restored_to = t->model.step;
    return MOE_OK;
}

/* TEST_MESH_KILL_IN_SYNC: rank 3 dies the moment its step's gradient reductions move their
 * first bytes (channel 1's reduce bytes grow), i.e. inside the sync that overlaps the
 * backward, instead of before the step. */
static struct comm *watch_comm;
static uint64_t watch_base;

static void *kill_in_sync(void *arg) {
    (void)arg;
    for (;;) {
        struct comm_stats st;
        comm_get_stats(watch_comm, &st);
        if (st.reduce_bytes > watch_base) raise(SIGKILL);
        usleep(20);
    }
    return NULL;
}

static void kill_self(struct comm *c) {
    if (!getenv("TEST_MESH_KILL_IN_SYNC")) {
        usleep(20000); /* the others are inside the step's all-to-alls by now */
        raise(SIGKILL);
    }
    struct comm_stats st;
    comm_get_stats(c, &st);
    watch_comm = c;
    watch_base = st.reduce_bytes;
    pthread_t th;
    if (pthread_create(&th, NULL, kill_in_sync, NULL) != 0) raise(SIGKILL);
    pthread_detach(th);
}

static int slot_main(int argc, char **argv) {
    if (argc != 13) return 2;
    int pods = atoi(argv[2]), slots = atoi(argv[3]), dropless = atoi(argv[4]);
    int micro = atoi(argv[5]), rank = atoi(argv[6]), kill_at = atoi(argv[7]);
    int experts = atoi(argv[10]), batch = atoi(argv[11]);
    const char *model_path = argv[8];
    snprintf(text_path, sizeof text_path, "%s", argv[9]);
    struct job_spec spec;
    make_spec(&spec, pods, slots, dropless, micro, experts, batch);
    if (kill_at >= 0) spec.run.steps = 1000; /* the killed step comes long before the end */
    struct run_result out;
    memset(&out, 0, sizeof out);
    struct comm_listener *l = NULL;
    struct comm *c = NULL;
    struct trainer t;
    int opened = 0;
    if (rank_procs_open_comm(rank, pods, slots, 7, "job-mesh", "mesh-test-token",
                             spec.mesh.timeout_s, &l, &c) != MOE_OK)
        goto fail;
    if (trainer_open_slot(&t, &spec, rank / slots, rank % slots, c) != MOE_OK) goto fail;
    opened = 1;
    struct restore_case rc;
    int restoring = sscanf(argv[12], "%d,%d,%d,%d,%d,%d,%d,%d", &rc.first, &rc.step,
                           &rc.victim, &rc.corrupt, &rc.from[0], &rc.from[1], &rc.from[2],
                           &rc.from[3]) == 4 + pods * slots;
    while (t.model.step < spec.run.steps) {
        int i = (int)t.model.step;
        struct step_report r;
        if (restoring && i == rc.first) {
            restoring = 0;
            if (change_epoch(&t, &spec, rank, l, &c, &rc, &out) != MOE_OK) goto fail;
            continue;
        }
        if (i == kill_at && rank == 3) kill_self(c);
        double t0 = moe_clock_s();
        if (trainer_step(&t, &r) != MOE_OK) {
            out.fail_seconds = moe_clock_s() - t0;
            goto fail;
        }
        if (i < STEPS) record(&out, i, &r);
    }
    if (trainer_eval(&t, &out.val, NULL) != MOE_OK) goto fail;
    if (trainer_save_model(&t, model_path) != MOE_OK) goto fail;
    out.ok = 1;
    goto done;
fail:
    snprintf(out.error, sizeof out.error, "%s", moe_errmsg());
done:
    if (opened) trainer_close(&t);
    comm_close(c);
    comm_listener_close(l);
    rank_procs_reply(&out, sizeof out);
    return out.ok ? 0 : 1;
}

static char self_exe[512];

/* Runs the mesh as separate processes; results per rank in out[]. */
static int run_mesh(const struct job_spec *spec, const char *model_path, int kill_at,
                    const struct restore_case *rc, struct run_result *out) {
    int D = spec->mesh.pods * spec->mesh.slots;
    char a[MAX_RANKS][9][64];
    char *argv[MAX_RANKS][14];
    char *const *args[MAX_RANKS];
    for (int r = 0; r < D; r++) {
        snprintf(a[r][0], 32, "%d", spec->mesh.pods);
        snprintf(a[r][1], 32, "%d", spec->mesh.slots);
        snprintf(a[r][2], 32, "%d", spec->model.dropless);
        snprintf(a[r][3], 32, "%d", spec->run.micro_batch);
        snprintf(a[r][4], 32, "%d", r);
        snprintf(a[r][5], 32, "%d", kill_at);
        snprintf(a[r][6], 32, "%d", spec->model.n_experts);
        snprintf(a[r][7], 32, "%d", spec->run.batch_size);
        snprintf(a[r][8], 64, "none");
        if (rc) {
            int o = snprintf(a[r][8], 64, "%d,%d,%d,%d", rc->first, rc->step, rc->victim,
                             rc->corrupt);
            for (int k = 0; k < D; k++) o += snprintf(a[r][8] + o, (size_t)(64 - o), ",%d", rc->from[k]);
        }
        char *v[] = {"--slot", a[r][0], a[r][1], a[r][2], a[r][3], a[r][4], a[r][5],
                     (char *)model_path, text_path, a[r][6], a[r][7], a[r][8], NULL};
        memcpy(argv[r], v, sizeof v);
        args[r] = argv[r];
    }
    int got[MAX_RANKS], status[MAX_RANKS];
    if (rank_procs_run(self_exe, D, args, out, sizeof *out, got, status) != 0) {
        printf("FAIL cannot start %d processes\n", D);
        failures++;
        return -1;
    }
    for (int r = 0; r < D; r++) {
        if (!got[r]) snprintf(out[r].error, sizeof out[r].error, "no result (the process died)");
        /* a slot that reported success must also exit cleanly (no sanitizer report) */
        if (out[r].ok && !(WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 0)) {
            out[r].ok = 0;
            snprintf(out[r].error, sizeof out[r].error, "reported success, then exited with "
                     "status 0x%x (a sanitizer report?)", status[r]);
        }
    }
    return 0;
}

static int same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

#define SAME(a, b) (memcmp(&(a), &(b), sizeof(a)) == 0)

static void check_case(const char *name, int pods, int slots, int dropless, int micro,
                       int experts, int batch, char ref_path[512]) {
    struct job_spec spec;
    make_spec(&spec, pods, slots, dropless, micro, experts, batch);
    char mesh_path[512];
    snprintf(ref_path, 512, "%s/%s.ref.safetensors", dir, name);
    snprintf(mesh_path, sizeof mesh_path, "%s/%s.mesh.safetensors", dir, name);
    struct run_result ref, out[MAX_RANKS];
    run_local(&spec, ref_path, &ref);
    EXPECT_MSG(ref.ok, "%s: reference failed: %s", name, ref.error);
    if (run_mesh(&spec, mesh_path, -1, NULL, out) != 0) return;
    int D = pods * slots, all_ok = 1;
    for (int r = 0; r < D; r++) {
        EXPECT_MSG(out[r].ok, "%s: rank %d failed: %s", name, r, out[r].error);
        all_ok &= out[r].ok;
    }
    if (!all_ok || !ref.ok) return;
    for (int r = 0; r < D; r++)
        for (int i = 0; i < STEPS; i++) {
            EXPECT_MSG(SAME(out[r].loss[i], ref.loss[i]) && SAME(out[r].ce[i], ref.ce[i]) &&
                           SAME(out[r].norm[i], ref.norm[i]),
                       "%s: rank %d step %d: loss %.17g ce %.17g norm %.17g, reference %.17g "
                       "%.17g %.17g", name, r, i + 1, out[r].loss[i], out[r].ce[i],
                       out[r].norm[i], ref.loss[i], ref.ce[i], ref.norm[i]);
            EXPECT_MSG(out[r].dropped[i] == ref.dropped[i], "%s: rank %d step %d: dropped %ld "
                       "vs %ld", name, r, i + 1, out[r].dropped[i], ref.dropped[i]);
        }
    for (int r = 0; r < D; r++)
        EXPECT_MSG(SAME(out[r].val, ref.val), "%s: rank %d held-out loss %.17g, reference %.17g",
                   name, r, out[r].val, ref.val);
    EXPECT_MSG(same_file(mesh_path, ref_path), "%s: rank 0's model file differs from the "
               "reference's", name);
    /* token accounting, per pod and step */
    if (slots > 1)
        for (int p = 0; p < pods; p++)
            for (int i = 0; i < STEPS; i++) {
                long disp = 0, served = 0, back = 0;
                for (int s = 0; s < slots; s++) {
                    const struct run_result *o = &out[p * slots + s];
                    disp += o->dispatched[i];
                    served += o->served[i];
                    back += o->returned[i];
                    EXPECT_MSG(o->dispatched[i] == o->returned[i], "%s: rank %d step %d sent "
                               "%ld rows, got %ld back", name, p * slots + s, i + 1,
                               o->dispatched[i], o->returned[i]);
                }
                /* assignments and dropped count the whole batch: this pod has 1/pods of it */
                long kept = (ref.assignments[i] - ref.dropped[i]) / pods;
                if (dropless) EXPECT(ref.dropped[i] == 0);
                EXPECT_MSG(disp == served && served == back && (pods > 1 || disp == kept),
                           "%s: pod %d step %d: dispatched %ld, served %ld, combined %ld, kept "
                           "%ld", name, p, i + 1, disp, served, back, kept);
                EXPECT_MSG(disp > 0, "%s: nothing dispatched", name);
            }
    printf("%s %-26s %d x %d: %d steps, loss %.6f -> %.6f, val %.6f, identical on every "
           "rank and to the reference\n", failures ? "...." : "OK  ", name, pods, slots, STEPS,
           ref.loss[0], ref.loss[STEPS - 1], ref.val);
}

/* Recovery's restore, without daemons: see struct restore_case. want[] lists the copies
 * rank `lister` must report at the fence. */
static void check_restore(const char *name, int pods, int slots, const struct restore_case *rc,
                          int lister, const struct state_copy *want, int n_want) {
    struct job_spec spec;
    make_spec(&spec, pods, slots, 0, 0, 0, 0);
    char ref_path[512], path[512];
    snprintf(ref_path, sizeof ref_path, "%s/%s.ref.safetensors", dir, name);
    snprintf(path, sizeof path, "%s/%s.restored.safetensors", dir, name);
    struct run_result ref, out[MAX_RANKS];
    run_local(&spec, ref_path, &ref);
    if (run_mesh(&spec, path, -1, rc, out) != 0) return;
    int D = pods * slots, ok = ref.ok;
    for (int r = 0; r < D; r++) {
        EXPECT_MSG(out[r].ok, "%s: rank %d failed: %s", name, r, out[r].error);
        ok &= out[r].ok;
    }
    if (!ok) return;
    for (int r = 0; r < D; r++) {
        EXPECT_MSG(out[r].restored_to == rc->step, "%s: rank %d restored to step %ld, not %d",
                   name, r, out[r].restored_to, rc->step);
        for (int i = 0; i < STEPS; i++)
            EXPECT_MSG(SAME(out[r].loss[i], ref.loss[i]) && SAME(out[r].norm[i], ref.norm[i]),
                       "%s: rank %d step %d: loss %.17g norm %.17g, reference %.17g %.17g", name,
                       r, i + 1, out[r].loss[i], out[r].norm[i], ref.loss[i], ref.norm[i]);
        EXPECT_MSG(SAME(out[r].val, ref.val), "%s: rank %d held-out loss differs", name, r);
    }
    const struct run_result *o = &out[lister];
    int match = o->n_copies == n_want;
    for (int i = 0; match && i < n_want; i++) {
        int found = 0;
        for (int k = 0; k < o->n_copies; k++)
            found |= o->copies[k].slot == want[i].slot && o->copies[k].step == want[i].step;
        match = found;
    }
    char got[200] = "";
    for (int k = 0, n = 0; k < o->n_copies; k++)
        n += snprintf(got + n, sizeof got - (size_t)n, " (%d, %ld)", o->copies[k].slot,
                      o->copies[k].step);
    EXPECT_MSG(match, "%s: rank %d's fence listed%s", name, lister, got);
    EXPECT_MSG(same_file(path, ref_path), "%s: the restored job's model differs from the "
               "reference's", name);
    printf("%s restore %-18s %d x %d: fence after step %d, rank %d new, back to step %d, then "
           "to step %d: identical to the reference; rank %d held%s\n", failures ? "...." : "OK  ",
           name, pods, slots, rc->first, rc->victim, rc->step, STEPS, lister, got);
}

/* A restore whose source sends a flipped bit (after its checksums were made): the new holder
 * refuses the state, naming the source, and never trains on it. */
static void check_refusal(const char *name, int pods, int slots, const struct restore_case *rc) {
    struct job_spec spec;
    make_spec(&spec, pods, slots, 0, 0, 0, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.refused.safetensors", dir, name);
    struct run_result out[MAX_RANKS];
    if (run_mesh(&spec, path, -1, rc, out) != 0) return;
    const struct run_result *v = &out[rc->victim];
    EXPECT_MSG(!v->ok && v->refused_from == rc->corrupt && strstr(v->error, "failed its checksum"),
               "%s: rank %d: ok %d, refused_from %d: %s", name, rc->victim, v->ok, v->refused_from,
               v->error);
    printf("%s refusal %-18s %d x %d: rank %d refused rank %d's state: %s\n",
           failures ? "...." : "OK  ", name, pods, slots, rc->victim, rc->corrupt, v->error);
}

/* A buddy copy damaged in its holder's memory after it arrived (TEST_MESH_DAMAGE_COPY: a bit
 * flipped in every copy rank 3 holds, just before the fence): its fence checks the copies
 * against their sender's checksums and leaves them out, so no plan can name them; asked to
 * send one anyway, it says it holds none. */
static void check_damaged_copy(void) {
    struct job_spec spec;
    make_spec(&spec, 1, 4, 0, 0, 0, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/damaged.safetensors", dir);
    struct restore_case rc = {5, 4, 2, -1, {-1, -1, 3, -1}};
    struct run_result out[MAX_RANKS];
    setenv("TEST_MESH_DAMAGE_COPY", "3", 1);
    int ran = run_mesh(&spec, path, -1, &rc, out) == 0;
    unsetenv("TEST_MESH_DAMAGE_COPY");
    if (!ran) return;
    const struct run_result *h = &out[3];
    int buddy = 0;
    for (int k = 0; k < h->n_copies; k++) buddy |= h->copies[k].slot != 3;
    EXPECT_MSG(h->n_copies == 2 && !buddy, "damaged copy: rank 3's fence listed %d copies, %s "
               "of slot 2", h->n_copies, buddy ? "one" : "none");
    EXPECT_MSG(!h->ok && strstr(h->error, "holds no copy"), "damaged copy: rank 3: ok %d: %s",
               h->ok, h->error);
    printf("%s damaged buddy copy 1 x 4: rank 3's fence lists only its own 2 versions; asked "
           "for slot 2: %s\n", failures ? "...." : "OK  ", h->error);
}

/* The blocks of a transfer: 7 whole blocks and a short one (two triples, one lone block, the
 * tail), each the CRC-32C of its bytes alone; a flipped bit in block 5 is found there. */
static void check_transfer_blocks(void) {
    size_t bytes = 7 * TRANSFER_BLOCK_BYTES + 12345;
    unsigned char *buf = malloc(bytes);
    uint32_t sum[8], scratch[8], got = 0;
    if (!buf) return;
    for (size_t i = 0; i < bytes; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    EXPECT(transfer_blocks(bytes) == 8 && transfer_blocks(0) == 0);
    transfer_checksum(buf, bytes, sum, 1);
    for (size_t b = 0; b < 8; b++) {
        size_t off = b * TRANSFER_BLOCK_BYTES, len = b < 7 ? TRANSFER_BLOCK_BYTES : 12345;
        EXPECT_MSG(sum[b] == moe_crc32c(0, buf + off, len), "block %zu's checksum", b);
    }
    EXPECT(transfer_verify(buf, bytes, sum, scratch, 0, &got) == -1);
    buf[5 * TRANSFER_BLOCK_BYTES + 77] ^= 0x40;
    EXPECT(transfer_verify(buf, bytes, sum, scratch, 1, &got) == 5 && got != sum[5]);
    free(buf);
    printf("%s transfer blocks: 8 blocks' CRC-32C, a flipped bit found in block 5\n",
           failures ? "...." : "OK  ");
}

static void check_kill(const char *when) {
    struct job_spec spec;
    make_spec(&spec, 2, 2, 0, 0, 0, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/kill.safetensors", dir);
    unlink(path);
    struct run_result out[MAX_RANKS];
    if (run_mesh(&spec, path, 2, NULL, out) != 0) return;
    EXPECT_MSG(!out[3].ok, "the killed rank reported success");
    for (int r = 0; r < 3; r++) {
        EXPECT_MSG(!out[r].ok && out[r].error[0], "rank %d: no error after a peer died", r);
        /* the step itself takes milliseconds; the rest is the data plane noticing */
        EXPECT_MSG(out[r].fail_seconds < spec.mesh.timeout_s + 0.5,
                   "rank %d took %.2f s to fail (bound %.1f s)", r, out[r].fail_seconds,
                   spec.mesh.timeout_s);
        printf("     rank %d failed after %.3f s: %s\n", r, out[r].fail_seconds, out[r].error);
    }
    printf("%s kill -9 of rank 3 %s: every survivor's step failed within the bound\n",
           failures ? "...." : "OK  ", when);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--slot") == 0) {
        moe_log_init("test-slot");
        moe_log_set_level(MOE_LOG_ERROR);
        signal(SIGPIPE, SIG_IGN);
        return slot_main(argc, argv);
    }
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) return perror("readlink"), 1;
    self_exe[n] = 0;
    moe_log_init("test");
    moe_log_set_level(MOE_LOG_WARN);
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    snprintf(text_path, sizeof text_path, "%s/text.txt", dir);
    write_text(text_path);
    signal(SIGPIPE, SIG_IGN);

    char f22[512], f14[512], f11[512], f41[512], fdl[512], fmb[512], f3[512];
    check_case("dropping", 2, 2, 0, 0, 0, 0, f22);
    check_case("dropping", 1, 4, 0, 0, 0, 0, f14);
    check_case("dropless", 1, 4, 1, 0, 0, 0, fdl);
    check_case("pods-only", 4, 1, 0, 0, 0, 0, f41);
    check_case("micro-batches", 2, 1, 0, 2, 0, 0, fmb);
    check_case("micro-batches", 1, 2, 1, 2, 0, 0, fmb);
    check_case("micro-batches", 2, 2, 0, 1, 0, 0, fmb);
    /* three slots: a tree of odd width, and two experts per slot */
    check_case("three-slots", 1, 3, 0, 0, 6, 6, f3);
    check_case("three-slots", 2, 3, 1, 0, 6, 12, f3);
    EXPECT_MSG(same_file(f22, f14), "2x2 and 1x4 (4 shards each) wrote different models");
    EXPECT_MSG(same_file(f22, f41), "2x2 and 4x1 (4 shards each) wrote different models");
    /* several buckets per step, each reduced while the backward goes on: two pods (one
     * exchange per bucket), four (reduce-scatter and all-gather across pods), three (a tree
     * of odd width across pods), and with micro-batches (only the last pass starts them) */
    char fb22[512], fb41[512], fb31[512], fbmb[512];
    setenv("TEST_MESH_BUCKET_KB", "1", 1);
    check_case("buckets", 2, 2, 0, 0, 0, 0, fb22);
    check_case("buckets-pods", 4, 1, 0, 0, 0, 0, fb41);
    check_case("buckets-three-pods", 3, 1, 0, 0, 0, 6, fb31);
    check_case("buckets-micro", 2, 2, 0, 1, 0, 0, fbmb);
    unsetenv("TEST_MESH_BUCKET_KB");
    EXPECT_MSG(same_file(f22, fb22) && same_file(f22, fb41),
               "2x2 and 4x1 with a bucket per layer wrote another model than 2x2 with one bucket");

    /* one shard adds its gradient in one GEMM instead of four: close, not the same bits */
    struct job_spec one;
    make_spec(&one, 1, 1, 0, 0, 0, 0);
    struct run_result r11;
    snprintf(f11, sizeof f11, "%s/one.safetensors", dir);
    run_local(&one, f11, &r11);
    EXPECT(r11.ok);
    struct trainer t4;
    struct job_spec four;
    make_spec(&four, 1, 4, 0, 0, 0, 0);
    if (trainer_open(&t4, &four) == MOE_OK) {
        struct step_report r;
        trainer_step(&t4, &r);
        EXPECT_MSG(fabs(r.loss - r11.loss[0]) < 1e-6, "1x4 first loss %.9g vs 1x1 %.9g", r.loss,
                   r11.loss[0]);
        trainer_close(&t4);
    }
    check_transfer_blocks();
    check_kill("mid-step");
    /* the same inside the overlapped sync, with a bucket per layer */
    setenv("TEST_MESH_BUCKET_KB", "1", 1);
    setenv("TEST_MESH_KILL_IN_SYNC", "1", 1);
    check_kill("during the overlapped gradient sync");
    unsetenv("TEST_MESH_KILL_IN_SYNC");
    unsetenv("TEST_MESH_BUCKET_KB");
    /* 2 x 2: the new holder of slot (1, 1) pulls slot 1's state from pod 0 */
    struct restore_case pods_case = {4, 4, 3, -1, {-1, -1, -1, 1}};
    struct state_copy pods_want[] = {{.slot = 1, .step = 4}, {.slot = 1, .step = 3}};
    check_restore("pod-replica", 2, 2, &pods_case, 1, pods_want, 2);
    setenv("TEST_MESH_BUCKET_KB", "1", 1); /* the same, reducing a bucket per layer */
    check_restore("pod-replica-buckets", 2, 2, &pods_case, 1, pods_want, 2);
    unsetenv("TEST_MESH_BUCKET_KB");
    /* 1 x 4 with buddies: everyone is one step past the target and goes back to its previous
     * version; slot 2's new holder pulls from slot 3, which holds its buddy copy */
    struct restore_case buddy_case = {5, 4, 2, -1, {-1, -1, 3, -1}};
    struct state_copy buddy_want[] = {{.slot = 3, .step = 5}, {.slot = 3, .step = 4},
                                     {.slot = 2, .step = 4}};
    check_restore("buddy", 1, 4, &buddy_case, 3, buddy_want, 3);
    /* the same two restores with their source's send corrupted: refused */
    struct restore_case pods_bad = {4, 4, 3, 1, {-1, -1, -1, 1}};
    check_refusal("pod-replica", 2, 2, &pods_bad);
    struct restore_case buddy_bad = {5, 4, 2, 3, {-1, -1, 3, -1}};
    check_refusal("buddy", 1, 4, &buddy_bad);
    check_damaged_copy();

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    if (failures) printf("%d checks FAILED\n", failures);
    else printf("mesh: all checks OK\n");
    return failures != 0;
}
