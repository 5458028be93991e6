/*
 * test_slot_state.c — a slot's exported state (worker/trainer/slot_state.h), without daemons:
 * written from the fenced live state and read back into a fresh slot bit for bit; refused,
 * naming what is wrong, when the file was damaged or is of another step or slot index, or the
 * slot does not hold the step asked for; a world-writable directory, and a symlink leading out
 * of the export directory, are refused. A diloco slot's file carries its outer version's carry
 * (the outer momentum and, overlapped, the mean in flight) bit for bit, and an overlapped slot
 * refuses a file without the mean. And the fence a recovery begins with: one that comes while
 * the slot's update holds the fence gate answers at once, with what the slot holds once the
 * update is done, and no update starts after it.
 */
#include "../common/log.h"
#include "../worker/trainer/fence_gate.h"
#include "../worker/trainer/outer.h"
#include "../worker/trainer/replica.h"
#include "../worker/trainer/slot_state.h"
#include "check.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/moe_test_slot_state.XXXXXX";
static char text_path[600];

static void write_text(const char *path) {
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < 4000; i++) fprintf(f, "the router sends token %d to an expert. ", i);
    if (f) fclose(f);
}

static void make_spec(struct job_spec *s) {
    spec_defaults(s);
    s->mesh.pods = 2;
    s->mesh.slots = 2;
    s->model.d_model = 32;
    s->model.n_layers = 1;
    s->model.n_heads = 2;
    s->model.seq_len = 32;
    s->model.n_experts = 4;
    s->model.d_ff = 48;
    s->run.batch_size = 8;
    s->data.n_sources = 1;
    snprintf(s->data.sources[0].path, SPEC_PATH_MAX, "%s", text_path);
    s->data.sources[0].weight = 1;
}

/* A slot's trainer with a state unlike the seed's: every float of every arena set from i. */
static int open_slot(struct trainer *t, const struct job_spec *spec, int slot, float salt) {
    if (trainer_open_slot_later(t, spec, 0, slot, 1, NULL) != MOE_OK) {
        printf("FAIL open: %s\n", moe_errmsg());
        failures++;
        return 0;
    }
    struct model *m = &t->model;
    for (size_t i = 0; i < m->n_params; i++) {
        m->param_mem[i] = salt + (float)i * 1e-3f;
        m->m_mem[i] = salt * 2 + (float)i;
        m->v_mem[i] = salt * 3 + (float)i;
    }
    m->step = 7;
    return 1;
}

/* The same, fenced: its state frozen, as the export finds it. */
static int open_fenced(struct trainer *t, const struct job_spec *spec, int slot, float salt) {
    if (!open_slot(t, spec, slot, salt)) return 0;
    struct state_copy copies[8];
    long live;
    replica_fence(t, copies, 8, &live, 0);
    return 1;
}

static int same_state(const struct model *a, const struct model *b) {
    size_t n = sizeof(real) * a->n_params;
    return a->n_params == b->n_params && a->step == b->step &&
           !memcmp(a->param_mem, b->param_mem, n) && !memcmp(a->m_mem, b->m_mem, n) &&
           !memcmp(a->v_mem, b->v_mem, n) &&
           !memcmp(a->buffer_mem, b->buffer_mem, sizeof(real) * a->n_buffers);
}

static void flip_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    fseek(f, at, SEEK_SET);
    int c = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
}

/* slot_state_export beneath the directory `path`, opened as the worker opens its own. */
static moe_status export_to(struct trainer *t, const char *job, long step, const char *path,
                            struct slot_state_file *f) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot open %s", path);
    moe_status s = slot_state_export(t, job, step, fd, path, f);
    close(fd);
    return s;
}

static void test_round_trip(const struct job_spec *spec) {
    struct trainer a, b, other;
    if (!open_fenced(&a, spec, 1, 0.5f)) return;
    struct slot_state_file f;
    EXPECT(export_to(&a, "job-7", 7, dir, &f) == MOE_OK);
    EXPECT(strstr(f.path, "/job-7/slot-1-step-7.safetensors") != NULL);
    struct stat st;
    EXPECT(stat(f.path, &st) == 0 && st.st_size == f.bytes && (st.st_mode & 0777) == 0600);
    EXPECT_FAIL(export_to(&a, "job-7", 6, dir, &f), MOE_ENOTFOUND,
                "holds no state of step 6");
    if (open_slot(&b, spec, 1, 9.0f)) {
        EXPECT(slot_state_load(&b, f.path, 7, f.crc32c) == MOE_OK);
        EXPECT_MSG(same_state(&a.model, &b.model), "the loaded state differs from the exported");
        EXPECT_FAIL(slot_state_load(&b, f.path, 8, f.crc32c), MOE_EINVAL,
                    "moed.step is 7, this slot needs 8");
        EXPECT_FAIL(slot_state_load(&b, f.path, 7, f.crc32c ^ 1), MOE_EFORMAT,
                    "the export recorded");
        trainer_close(&b);
    }
    if (open_slot(&other, spec, 0, 1.0f)) {
        EXPECT_FAIL(slot_state_load(&other, f.path, 7, f.crc32c), MOE_EINVAL,
                    "moed.slot is 1, this slot needs 0");
        trainer_close(&other);
    }
    /* a byte of the data damaged after the export: the file's checksum no longer matches */
    flip_byte(f.path, (long)f.bytes - 100);
    if (open_slot(&b, spec, 1, 9.0f)) {
        EXPECT_FAIL(slot_state_load(&b, f.path, 7, f.crc32c), MOE_EFORMAT, "CRC-32C");
        trainer_close(&b);
    }
    trainer_close(&a);
}

static void test_world_writable(const struct job_spec *spec) {
    char open_dir[700];
    snprintf(open_dir, sizeof open_dir, "%s/open", dir);
    mkdir(open_dir, 0777);
    chmod(open_dir, 0777);
    struct trainer a;
    if (!open_fenced(&a, spec, 0, 0.25f)) return;
    struct slot_state_file f;
    EXPECT_FAIL(export_to(&a, "job-8", 7, open_dir, &f), MOE_EIO, "writable by anyone");
    trainer_close(&a);
}

/* A symlink where the job's directory goes, leading out of the export directory: refused by
 * what the kernel resolves, not by the text of the path, and nothing is written through it. */
static void test_symlink_out(const struct job_spec *spec) {
    char out_dir[700], link[700], stray[800];
    snprintf(out_dir, sizeof out_dir, "%s/outside", dir);
    snprintf(link, sizeof link, "%s/exports/job-9", dir);
    snprintf(stray, sizeof stray, "%s/slot-0-step-7.safetensors", out_dir);
    mkdir(out_dir, 0700);
    char exports[700];
    snprintf(exports, sizeof exports, "%s/exports", dir);
    mkdir(exports, 0700);
    EXPECT(symlink(out_dir, link) == 0);
    struct trainer a;
    if (!open_fenced(&a, spec, 0, 0.75f)) return;
    struct slot_state_file f;
    EXPECT_FAIL(export_to(&a, "job-9", 7, exports, &f), MOE_EINVAL, "job-9 is a symlink");
    struct stat st;
    EXPECT_MSG(stat(stray, &st) != 0, "the export wrote through the symlink");
    trainer_close(&a);
}

/* The carry of a diloco slot's outer version at step 0 (outer.h), filled from salt. */
static real *salted_carry(struct trainer *t, float salt) {
    real *arena[4], *carry = NULL;
    if (!outer_version(t, 0, arena, &carry)) return NULL;
    for (size_t i = 0; i < outer_carried(t); i++) carry[i] = salt + (float)i * 1e-4f;
    return carry;
}

static void test_diloco_carry(struct job_spec spec) {
    snprintf(spec.mesh.sync, sizeof spec.mesh.sync, "diloco");
    spec.mesh.outer_overlap = 1;
    struct trainer a, b;
    if (!open_fenced(&a, &spec, 1, 0.5f)) return;
    real *sent = salted_carry(&a, 3.0f);
    EXPECT(sent != NULL && outer_carried(&a) == 2 * a.model.n_params + a.model.n_buffers);
    struct slot_state_file f;
    EXPECT(export_to(&a, "job-10", 0, dir, &f) == MOE_OK);
    if (sent && open_slot(&b, &spec, 1, 9.0f)) {
        EXPECT(slot_state_load(&b, f.path, 0, f.crc32c) == MOE_OK);
        real *arena[4], *got = NULL;
        EXPECT(outer_version(&b, 0, arena, &got) == 1);
        EXPECT_MSG(got && !memcmp(got, sent, sizeof(real) * outer_carried(&a)),
                   "the loaded outer momentum and mean differ from the exported");
        trainer_close(&b);
    }
    trainer_close(&a);
    /* a diloco slot without the overlap exports the momentum only: not enough to overlap */
    spec.mesh.outer_overlap = 0;
    if (!open_fenced(&a, &spec, 1, 0.5f)) return;
    EXPECT(export_to(&a, "job-11", 0, dir, &f) == MOE_OK);
    spec.mesh.outer_overlap = 1;
    if (open_slot(&b, &spec, 1, 9.0f)) {
        EXPECT_FAIL(slot_state_load(&b, f.path, 0, f.crc32c), MOE_EINVAL, "no state.outer_mean");
        trainer_close(&b);
    }
    trainer_close(&a);
}

struct update_run {
    struct trainer *t;
    moe_status s;
    atomic_int done;
};

static void *run_update(void *arg) {
    struct update_run *u = arg;
    u->s = replica_update(u->t, 1.0);
    atomic_store(&u->done, 1);
    return NULL;
}

static int has_copy(const struct state_copy *c, int n, int slot, long step) {
    for (int i = 0; i < n; i++)
        if (c[i].slot == slot && c[i].step == step) return 1;
    return 0;
}

/* One try: an update on a thread, a fence from here once the update holds the gate (or has
 * ended). Returns 1 when the fence answered while the update still held the gate. */
static int fence_an_update(const struct job_spec *spec) {
    struct trainer t;
    if (!open_slot(&t, spec, 1, 0.5f)) return 0;
    long step = t.model.step;
    /* the replica thread hashes the state once and is then idle, waiting without the gate: a
     * busy gate below is the update's */
    replica_step_begin(&t);
    EXPECT(replica_step_join(&t) == MOE_OK);
    struct update_run u = {&t, MOE_OK, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, run_update, &u) != 0) {
        trainer_close(&t);
        return 0;
    }
    pthread_mutex_t *gate = &t.mesh.gate->mu;
    int busy = 0;
    while (!busy && !atomic_load(&u.done))
        if (!(busy = pthread_mutex_trylock(gate) != 0)) pthread_mutex_unlock(gate);
    struct state_copy c[8];
    long live = -2;
    int n = replica_fence(&t, c, 8, &live, 0);
    int during = 0; /* the update held the gate before the fence and still holds it */
    if (busy && !(during = pthread_mutex_trylock(gate) != 0)) pthread_mutex_unlock(gate);
    pthread_join(th, NULL);
    EXPECT_MSG(u.s == MOE_OK, "the update that had begun before the fence failed: %s",
               moe_errmsg());
    EXPECT_MSG(live == step + 1 && t.model.step == step + 1,
               "the fence said live step %ld; the slot is at %ld (from %ld)", live, t.model.step,
               step);
    EXPECT_MSG(n == 2 && has_copy(c, n, 1, step + 1) && has_copy(c, n, 1, step),
               "the fence listed %d copies, not steps %ld and %ld of slot 1", n, step + 1, step);
    EXPECT_FAIL(replica_update(&t, 1.0), MOE_EINTERNAL, "fenced by the coordinator");
    trainer_close(&t);
    return during;
}

static void test_fence_during_update(struct job_spec spec) {
    spec.model.d_model = 128; /* an update of ~1.6 M parameters: milliseconds to land in */
    spec.model.d_ff = 1024;
    spec.mesh.check_every = 1;
    int during = 0;
    for (int i = 0; i < 20 && during < 3 && !failures; i++) during += fence_an_update(&spec);
    EXPECT_MSG(during > 0, "no fence was answered while its update ran (20 tries)");
}

int main(void) {
    moe_log_init("test");
    moe_log_set_level(MOE_LOG_WARN);
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    snprintf(text_path, sizeof text_path, "%s/text.txt", dir);
    write_text(text_path);
    struct job_spec spec;
    make_spec(&spec);
    test_round_trip(&spec);
    test_world_writable(&spec);
    test_symlink_out(&spec);
    test_diloco_carry(spec);
    test_fence_during_update(spec);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    printf("test_slot_state: %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
