/*
 * test_job_texts.c — what the coordinator says about a failed mesh job's slots
 * (coordinator/state/jobs.c): the slot a data-plane error blames (job_blamed_rank: the peer it
 * names, never the healthy reporter, nor a rank that only an unproven connection claimed), and
 * the workers appended for the ranks it names (job_name_ranks); and a slot's reported links
 * (job_record_links) as GetJob shows them (job_view_fill: SlotStatus.links).
 */
#include "../common/log.h"
#include "../coordinator/state/jobs.h"
#include "check.h"

#include <stdio.h>
#include <string.h>

/* A 2 x 2 mesh bound to w-1..w-4 (rank k = slot index k). */
static struct job *mesh(void) {
    static struct binding b[4];
    static struct job j;
    memset(&j, 0, sizeof j);
    j.pods = j.slots = 2;
    j.bindings = b;
    for (int k = 0; k < 4; k++) {
        snprintf(b[k].worker_id, sizeof b[k].worker_id, "w-%d", k + 1);
        snprintf(b[k].address, sizeof b[k].address, "127.0.0.1:%d", 7000 + k);
    }
    return &j;
}

static void test_blamed(void) {
    struct job *j = mesh();
    EXPECT(job_blamed_rank(j, "w-1 at step 5: comm: rank 2 closed its connection", 0) == 2);
    EXPECT(job_blamed_rank(j, "w-2 at step 5: comm: rank 0 gave up on the operation because "
                              "of rank 3", 1) == 3);
    EXPECT(job_blamed_rank(j, "w-1 at step 0: comm: rank 1 never connected; refused rank 0: "
                              "it is in job job-4, we are in job job-5", 0) == 1);
    EXPECT(job_blamed_rank(j, "w-2 at step 0: comm: no connection with rank 1 within 5.0 s "
                              "(we are rank 1 of 4)", 1) == -1); // only itself
    EXPECT(job_blamed_rank(j, "w-3 at step 0: comm: refused rank 0: it is in epoch 7", 2) == -1);
    EXPECT(job_blamed_rank(j, "w-1 at step 3: out of memory", 0) == -1);
    EXPECT(job_blamed_rank(j, "w-1: comm: rank 9 closed its connection", 0) == -1);
}

static void test_named(void) {
    struct job *j = mesh();
    char why[700] = "comm: rank 1 never connected; refused rank 0: it is in job job-4";
    job_name_ranks(j, why, sizeof why);
    EXPECT_MSG(strstr(why, "[rank 1 = slot (0, 1) on w-2 at 127.0.0.1:7001]") &&
                   !strstr(why, "w-1"), "%s", why);
    char self[700] = "comm: rank 3: it expected another rank (we are rank 0 of 4)";
    job_name_ranks(j, self, sizeof self);
    EXPECT_MSG(strstr(self, "on w-4") && !strstr(self, "on w-1"), "%s", self);
}

static Moed__V1__PeerLink link_of(int pod, int slot, const char *transport) {
    Moed__V1__PeerLink l = MOED__V1__PEER_LINK__INIT;
    l.pod = pod;
    l.slot = slot;
    l.transport = (char *)transport;
    return l;
}

static void test_links(void) {
    struct job *j = mesh();
    EXPECT(job_link_code("shm") == JOB_LINK_SHM && job_link_code("mpi") == JOB_LINK_MPI &&
           job_link_code("carrier pigeon") == JOB_LINK_NONE && job_link_code(NULL) == JOB_LINK_NONE);
    EXPECT(!strcmp(job_link_name(JOB_LINK_TCP), "tcp") && !job_link_name(JOB_LINK_NONE) &&
           !job_link_name(99));
    /* slot (0, 0): its pod peer by shm, the other pod by tcp; itself, a peer outside the
     * mesh and an unknown transport are left out */
    Moed__V1__PeerLink l[7] = {link_of(0, 1, "shm"), link_of(1, 0, "tcp"), link_of(1, 1, "tcp"),
                               link_of(0, 0, "shm"), link_of(2, 0, "tcp"), link_of(1, 1, "udp"),
                               link_of(2147483647, 1, "tcp")};
    Moed__V1__PeerLink *p[7] = {&l[0], &l[1], &l[2], &l[3], &l[4], &l[5], &l[6]};
    EXPECT(job_record_links(j, 0, p, 7) == 3);
    struct job_view v;
    job_view_fill(&v, j);
    EXPECT(v.n_slots == 4 && v.slot[0].n_links == 3 && v.slot[1].n_links == 0);
    if (v.n_slots == 4 && v.slot[0].n_links == 3) {
        EXPECT(v.slot[0].links[0]->pod == 0 && v.slot[0].links[0]->slot == 1 &&
               !strcmp(v.slot[0].links[0]->transport, "shm"));
        EXPECT(v.slot[0].links[2]->pod == 1 && v.slot[0].links[2]->slot == 1 &&
               !strcmp(v.slot[0].links[2]->transport, "tcp"));
    }
    job_view_free(&v);
    /* a second report replaces the first (a slot sends them again after re-registering) */
    EXPECT(job_record_links(j, 0, p, 1) == 1);
    job_view_fill(&v, j);
    EXPECT(v.n_slots == 4 && v.slot[0].n_links == 1);
    job_view_free(&v);
}

int main(void) {
    moe_log_init("test");
    test_blamed();
    test_named();
    test_links();
    if (failures) {
        printf("test_job_texts: %d failures\n", failures);
        return 1;
    }
    printf("test_job_texts: ok\n");
    return 0;
}
