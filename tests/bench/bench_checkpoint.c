/*
 * bench_checkpoint — the classic recovery path's disk I/O for one slot's training state: write
 * it to a file and make it durable (fsync), read it back. tests/bench/bench_recovery.sh runs it
 * beside the in-memory recovery of the same state and adds the process restart it measures.
 *
 *   bench_checkpoint SPEC DIR [--set key.path=value ...]
 *
 * The state is what a slot of SPEC's mesh holds with one slot per pod (all the experts): the
 * trainer is opened as a 1 x 1 job of SPEC's model, which holds exactly that state
 * (parameters, both AdamW moments, expert biases, step), and trained one step so that the
 * moments are real data. The file is the trainer's own state file (trainer_save_state).
 *
 * Durability: trainer_save_state writes through st_write (a temporary file renamed into place)
 * with no fsync, so this program fsyncs the file and then its directory (the rename) itself;
 * the write time includes both. The read is timed cold: after the fsync the file's pages are
 * clean and posix_fadvise(DONTNEED) drops them from the page cache (mincore checks how much
 * stayed), as a restarted process on another node would find it. A warm read (page cache)
 * follows, for comparison. The state read back is checked against a checksum taken before the
 * write (the arenas are cleared in between): a mismatch is reported as wrong, never asserted.
 *
 * Output: a human table, then one line "bench_checkpoint: state_mb=.. write_ms=.. ..." for
 * scripts. Leaves DIR/state.bin behind only on failure (it deletes it at the end).
 */
#include "../../common/blas_select.h"
#include "../../common/log.h"
#include "../../common/spec.h"
#include "../../worker/trainer/trainer.h"
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* FNV-1a over the state's bytes, 8 at a time: enough to see a wrong byte, far faster than
 * the disk. */
static uint64_t checksum(const void *p, size_t n, uint64_t h) {
    const uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i++) h = (h ^ w[i]) * 1099511628211ULL;
    const unsigned char *b = (const unsigned char *)p + n / 8 * 8;
    for (size_t i = 0; i < n % 8; i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static uint64_t state_checksum(const struct model *m) {
    size_t np = sizeof(real) * m->n_params;
    uint64_t h = 14695981039346656037ULL ^ (uint64_t)m->step;
    h = checksum(m->param_mem, np, h);
    h = checksum(m->m_mem, np, h);
    h = checksum(m->v_mem, np, h);
    return checksum(m->buffer_mem, sizeof(real) * m->n_buffers, h);
}

static void clear_state(struct model *m) {
    size_t np = sizeof(real) * m->n_params;
    memset(m->param_mem, 0, np);
    memset(m->m_mem, 0, np);
    memset(m->v_mem, 0, np);
    memset(m->buffer_mem, 0, sizeof(real) * m->n_buffers);
    m->step = -1;
}

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Drops the file's clean pages from the page cache; returns the share still resident. */
static double drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    struct stat st;
    double resident = -1;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        long page = sysconf(_SC_PAGESIZE);
        size_t pages = ((size_t)st.st_size + (size_t)page - 1) / (size_t)page;
        unsigned char *vec = malloc(pages);
        if (map != MAP_FAILED && vec && mincore(map, (size_t)st.st_size, vec) == 0) {
            size_t in = 0;
            for (size_t i = 0; i < pages; i++) in += vec[i] & 1;
            resident = (double)in / (double)pages;
        }
        free(vec);
        if (map != MAP_FAILED) munmap(map, (size_t)st.st_size);
    }
    close(fd);
    return resident;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_checkpoint SPEC DIR [--set key.path=value ...]\n");
    return 2;
}

int main(int argc, char **argv) {
    blas_select_kernels(argv);
    moe_log_init("bench");
    moe_log_set_level(MOE_LOG_ERROR);
    if (argc < 3) return usage();
    struct job_spec spec;
    spec_defaults(&spec);
    if (spec_load_file(&spec, argv[1]) != MOE_OK) {
        fprintf(stderr, "bench_checkpoint: %s\n", moe_errmsg());
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--set") != 0 || i + 1 >= argc) return usage();
        if (spec_set(&spec, argv[++i]) != MOE_OK) {
            fprintf(stderr, "bench_checkpoint: %s\n", moe_errmsg());
            return 2;
        }
    }
    int slots = spec.mesh.slots;
    /* one slot per pod holds every expert: a 1 x 1 trainer holds the same state */
    spec.mesh.pods = spec.mesh.slots = 1;
    spec.mesh.replicas = 1;
    spec.run.eval_every = 0;
    if (slots != 1)
        printf("bench_checkpoint: note: SPEC has %d slots per pod; this measures the state of "
               "the whole model (a slot holds 1/%d of the experts)\n", slots, slots);
    char path[SPEC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state.bin", argv[2]);

    struct trainer t;
    double t_open = bench_now();
    if (trainer_open(&t, &spec) != MOE_OK) {
        fprintf(stderr, "bench_checkpoint: %s\n", moe_errmsg());
        return 1;
    }
    t_open = bench_now() - t_open;
    struct step_report r;
    if (trainer_step(&t, &r) != MOE_OK) { /* real moments, not zero pages */
        fprintf(stderr, "bench_checkpoint: %s\n", moe_errmsg());
        trainer_close(&t);
        return 1;
    }
    struct model *m = &t.model;
    double bytes = (double)sizeof(real) * (3.0 * (double)m->n_params + (double)m->n_buffers);
    uint64_t want = state_checksum(m);
    long want_step = m->step;

    double t0 = bench_now();
    moe_status s = trainer_save_state(&t, path);
    double t1 = bench_now();
    int synced = s == MOE_OK && fsync_path(path, O_RDONLY) == 0 &&
                 fsync_path(argv[2], O_RDONLY | O_DIRECTORY) == 0;
    double t2 = bench_now();
    if (s != MOE_OK || !synced) {
        fprintf(stderr, "bench_checkpoint: %s\n", s != MOE_OK ? moe_errmsg() : strerror(errno));
        trainer_close(&t);
        return 1;
    }
    struct stat st;
    double file_mb = stat(path, &st) == 0 ? (double)st.st_size / 1e6 : 0;

    double resident = drop_cache(path);
    clear_state(m);
    double t3 = bench_now();
    s = trainer_load_state(&t, path);
    double t4 = bench_now();
    int wrong = s != MOE_OK || m->step != want_step || state_checksum(m) != want;
    clear_state(m);
    double t5 = bench_now();
    moe_status s2 = trainer_load_state(&t, path);
    double t6 = bench_now();
    wrong += s2 != MOE_OK || m->step != want_step || state_checksum(m) != want;
    if (s != MOE_OK || s2 != MOE_OK) fprintf(stderr, "bench_checkpoint: %s\n", moe_errmsg());

    double w_ms = (t2 - t0) * 1e3, rc_ms = (t4 - t3) * 1e3, rw_ms = (t6 - t5) * 1e3;
    printf("bench_checkpoint: C=%d L=%d E=%d F=%d: %zu parameters, state %.1f MB (file %.1f MB)"
           ", %s\n", m->cfg.d_model, m->cfg.n_layers, m->cfg.n_experts, m->cfg.d_ff,
           m->n_params, bytes / 1e6, file_mb, path);
    printf("| operation | ms | MB/s |\n|---|---|---|\n");
    printf("| trainer_open (data, allocate, initialise: a restarted process's setup) | %.1f | |\n",
           t_open * 1e3);
    printf("| write (st_write) | %.1f | %.0f |\n", (t1 - t0) * 1e3, file_mb / (t1 - t0));
    printf("| + fsync file and directory | %.1f | |\n", (t2 - t1) * 1e3);
    printf("| write, durable | %.1f | %.0f |\n", w_ms, file_mb / (t2 - t0));
    printf("| read cold (%.0f%% of the file left in the page cache) | %.1f | %.0f |\n",
           resident < 0 ? -1 : 100 * resident, rc_ms, file_mb / (t4 - t3));
    printf("| read warm (page cache) | %.1f | %.0f |\n", rw_ms, file_mb / (t6 - t5));
    printf("wrong: %d\n", wrong);
    printf("bench_checkpoint: state_mb=%.1f file_mb=%.1f open_ms=%.1f write_ms=%.1f "
           "fsync_ms=%.1f read_cold_ms=%.1f read_warm_ms=%.1f resident=%.3f wrong=%d\n",
           bytes / 1e6, file_mb, t_open * 1e3, w_ms, (t2 - t1) * 1e3, rc_ms, rw_ms, resident,
           wrong);
    trainer_close(&t);
    if (!wrong) unlink(path);
    return wrong ? 1 : 0;
}
