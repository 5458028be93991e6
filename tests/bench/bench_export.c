/*
 * bench_export — what the export of a job that cannot go on costs one slot, and what its
 * resume costs (docs/recovery.md, "Export and resume"): slot_state_export (write, fsync, rename,
 * fsync of the directory, then the file read back for its CRC-32C) and slot_state_load (read,
 * the file's and every tensor's CRC-32C, the copy into the model).
 *
 *   bench_export DIR [--set key.path=value ...] [--runs N]
 *
 * The slot is slot (0, 0) of a 2 x 2 mesh of the model below (override with --set): the
 * dense parameters and half the experts, both moments and the buffers. The read-back of the
 * export and the load read a file whose pages are still in the page cache (a worker resumes
 * where the file was just written, or from shared storage): the numbers are the checksums'
 * and the copies' cost plus one write to disk, not a cold read.
 * Output: a table, then one line "bench_export: state_mb=.. export_ms=.. load_ms=..".
 */
#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../worker/trainer/replica.h"
#include "../../worker/trainer/slot_state.h"
#include "bench.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static moe_status make_spec(struct job_spec *s, const char *text, char **sets, int n_sets) {
    spec_defaults(s);
    s->mesh.pods = 2;
    s->mesh.slots = 2;
    s->model.d_model = 512;
    s->model.n_layers = 2;
    s->model.n_heads = 8;
    s->model.seq_len = 64;
    s->model.n_experts = 8;
    s->model.d_ff = 1024;
    s->run.batch_size = 4;
    s->data.n_sources = 1;
    snprintf(s->data.sources[0].path, SPEC_PATH_MAX, "%s", text);
    s->data.sources[0].weight = 1;
    CHECK(spec_set_all(s, (const char *const *)sets, (size_t)n_sets));
    return spec_validate(s);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of n timings of export (what = 0) or load (what = 1), in seconds; -1 on error. */
static double timed(struct trainer *t, int dirfd, const char *dir, int what, int runs,
                    struct slot_state_file *f) {
    double s[32];
    for (int i = 0; i < runs; i++) {
        double t0 = moe_clock_s();
        moe_status r = what ? slot_state_load(t, f->path, t->model.step, f->crc32c)
                            : slot_state_export(t, "job-bench", t->model.step, dirfd, dir, f);
        if (r != MOE_OK) {
            fprintf(stderr, "bench_export: %s\n", moe_errmsg());
            return -1;
        }
        s[i] = moe_clock_s() - t0;
    }
    qsort(s, (size_t)runs, sizeof s[0], cmp_double);
    return s[runs / 2];
}

int main(int argc, char **argv) {
    bench_child_hook(argc, argv);
    moe_log_init("bench");
    moe_log_set_level(MOE_LOG_WARN);
    if (argc < 2) return fprintf(stderr, "usage: bench_export DIR [--set k=v ...] [--runs N]\n"), 2;
    const char *dir = argv[1];
    char *sets[64];
    int n_sets = 0, runs = 5;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--set") && n_sets < 64) sets[n_sets++] = argv[i + 1];
        if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
    }
    if (runs < 1 || runs > 31) runs = 5;
    char text[SPEC_PATH_MAX - 64];
    snprintf(text, sizeof text, "%.900s/bench_export.txt", dir);
    FILE *tf = fopen(text, "w");
    for (int i = 0; tf && i < 20000; i++) fprintf(tf, "the router sends token %d onwards. ", i);
    if (!tf || fclose(tf) != 0) return fprintf(stderr, "bench_export: cannot write %s\n", text), 1;
    struct job_spec spec;
    struct trainer t;
    if (make_spec(&spec, text, sets, n_sets) != MOE_OK ||
        trainer_open_slot_later(&t, &spec, 0, 0, 1, NULL) != MOE_OK)
        return fprintf(stderr, "bench_export: %s\n", moe_errmsg()), 1;
    struct state_copy copies[8];
    long live;
    replica_fence(&t, copies, 8, &live, 0); // the export reads the fenced state
    struct slot_state_file f;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) return fprintf(stderr, "bench_export: cannot open %s\n", dir), 1;
    double ex = timed(&t, dirfd, dir, 0, runs, &f);
    double ld = ex < 0 ? -1 : timed(&t, dirfd, dir, 1, runs, &f);
    close(dirfd);
    double mb = (double)f.bytes / 1e6;
    if (ld >= 0) {
        printf("%-28s %10s %10s %10s\n", "slot (0, 0) of a 2 x 2 mesh", "MB", "ms", "MB/s");
        printf("%-28s %10.1f %10.1f %10.0f\n", "export (write+fsync+CRC)", mb, ex * 1e3, mb / ex);
        printf("%-28s %10.1f %10.1f %10.0f\n", "load (read+CRCs+copy)", mb, ld * 1e3, mb / ld);
        printf("bench_export: state_mb=%.1f export_ms=%.1f load_ms=%.1f runs=%d\n", mb, ex * 1e3,
               ld * 1e3, runs);
    }
    unlink(f.path);
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/job-bench", dir);
    rmdir(sub);
    unlink(text);
    trainer_close(&t);
    return ld < 0;
}
