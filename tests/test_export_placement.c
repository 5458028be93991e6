/*
 * test_export_placement.c — a resumed job's slots run where their export files were written
 * (coordinator/policy/export.c export_prefer_hosts; docs/recovery.md, "Export and resume"),
 * from workers and manifests written by hand:
 *   - a 2 x 2 tcp job whose slot index 0 was written on host a and 1 on host b: inside each
 *     pod the chosen workers swap so that slot s lands on its file's host where one was
 *     chosen; a pod without such a worker keeps its order; no worker changes pod;
 *   - a worker already on its own slot index's host is not taken for another;
 *   - mpi (slot = the worker's MPI rank) and a job that does not resume are left alone.
 */
#include "../common/log.h"
#include "../coordinator/policy/export.h"
#include "check.h"

#include <stdio.h>
#include <string.h>

static struct worker workers[4];
static Moed__V1__ExportedSlot rows[2];
static Moed__V1__ExportedSlot *row_ptrs[2] = {&rows[0], &rows[1]};
static Moed__V1__ExportManifest manifest = MOED__V1__EXPORT_MANIFEST__INIT;
static struct job job;

static void setup(const char *backend, const char *const hosts[4], const char *file0,
                  const char *file1, struct worker **chosen) {
    memset(&job, 0, sizeof job);
    job.pods = job.slots = 2;
    snprintf(job.backend, sizeof job.backend, "%s", backend);
    const char *files[2] = {file0, file1};
    for (int s = 0; s < 2; s++) {
        Moed__V1__ExportedSlot r = MOED__V1__EXPORTED_SLOT__INIT;
        r.slot = s;
        r.host = (char *)files[s];
        rows[s] = r;
    }
    manifest.n_slots = 2;
    manifest.slots = row_ptrs;
    job.resume = &manifest;
    for (int i = 0; i < 4; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        snprintf(workers[i].id, sizeof workers[i].id, "w-%d", i + 1);
        snprintf(workers[i].host, sizeof workers[i].host, "%s", hosts[i]);
        chosen[i] = &workers[i];
    }
}

static const char *order(struct worker **chosen, char *buf, size_t cap) {
    snprintf(buf, cap, "%s %s | %s %s", chosen[0]->id, chosen[1]->id, chosen[2]->id,
             chosen[3]->id);
    return buf;
}

int main(void) {
    moe_log_init("test");
    struct worker *chosen[4];
    char got[128];
    static const char *const mixed[4] = {"b", "a", "c", "a"};
    setup("tcp", mixed, "a", "b", chosen);
    export_prefer_hosts(&job, chosen);
    EXPECT_MSG(!strcmp(order(chosen, got, sizeof got), "w-2 w-1 | w-4 w-3"),
               "each pod's slot 0 on host a, pod 0's slot 1 on b: got %s", got);

    static const char *const same[4] = {"a", "a", "b", "a"};
    setup("tcp", same, "a", "a", chosen);
    export_prefer_hosts(&job, chosen);
    EXPECT_MSG(!strcmp(order(chosen, got, sizeof got), "w-1 w-2 | w-3 w-4"),
               "a worker on its own slot index's host stays: got %s", got);

    setup("mpi", mixed, "a", "b", chosen);
    export_prefer_hosts(&job, chosen);
    EXPECT_MSG(!strcmp(order(chosen, got, sizeof got), "w-1 w-2 | w-3 w-4"),
               "mpi: the ranks keep their slots: got %s", got);

    setup("tcp", mixed, "a", "b", chosen);
    job.resume = NULL;
    export_prefer_hosts(&job, chosen);
    EXPECT_MSG(!strcmp(order(chosen, got, sizeof got), "w-1 w-2 | w-3 w-4"),
               "a job that does not resume: got %s", got);

    printf("test_export_placement: %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
