/*
 * test_links_text.c — how `moectl status` says which transport each slot uses to its peers
 * (cli/links_text.c): grouped by pod, the slot's own pod "within", equal pods after it joined,
 * mixed pods counted, nothing reported yet said so, a short buffer cut and terminated.
 */
#include "../cli/links_text.h"
#include "check.h"

#include <stdio.h>
#include <string.h>

static Moed__V1__PeerLink links[16];
static Moed__V1__PeerLink *ptrs[16];

/* Slot (pod, slot) of a mesh with the given peers: "P.S:t" for each. */
static Moed__V1__SlotStatus slot_with(int pod, int slot, int n, const char *const *peers) {
    Moed__V1__SlotStatus s = MOED__V1__SLOT_STATUS__INIT;
    s.pod = pod;
    s.slot = slot;
    for (int i = 0; i < n; i++) {
        Moed__V1__PeerLink l = MOED__V1__PEER_LINK__INIT;
        l.pod = peers[i][0] - '0';
        l.slot = peers[i][2] - '0';
        l.transport = (char *)peers[i] + 4;
        links[i] = l;
        ptrs[i] = &links[i];
    }
    s.n_links = (size_t)n;
    s.links = ptrs;
    return s;
}

#define EXPECT_TEXT(s, want)                                                                      \
    do {                                                                                          \
        char out[256];                                                                            \
        links_text(&(s), out, sizeof out);                                                        \
        EXPECT_MSG(!strcmp(out, want), "got \"%s\", want \"%s\"", out, want);                     \
    } while (0)

int main(void) {
    const char *two_by_two[] = {"0.1:shm", "1.0:tcp", "1.1:tcp"};
    Moed__V1__SlotStatus s = slot_with(0, 0, 3, two_by_two);
    EXPECT_TEXT(s, "shm within pod 0, tcp to pod 1");
    /* pod 1's view of the same mesh: pods in order, its own in the middle */
    const char *from_pod1[] = {"0.0:tcp", "0.1:tcp", "1.1:shm", "2.0:tcp", "3.0:tcp"};
    s = slot_with(1, 0, 5, from_pod1);
    EXPECT_TEXT(s, "tcp to pod 0, shm within pod 1, tcp to pods 2-3");
    /* a pod whose peers differ is counted, and breaks a run of equal pods */
    const char *mixed[] = {"1.0:tcp", "2.0:shm", "2.1:tcp", "2.2:tcp", "3.0:tcp", "4.0:tcp"};
    s = slot_with(0, 0, 6, mixed);
    EXPECT_TEXT(s, "tcp to pod 1, shm x1 + tcp x2 to pod 2, tcp to pods 3-4");
    /* the mpi backend: the pod by mpi, the others by tcp; links in any order */
    const char *mpi[] = {"1.1:tcp", "0.1:mpi", "1.0:tcp"};
    s = slot_with(0, 0, 3, mpi);
    EXPECT_TEXT(s, "mpi within pod 0, tcp to pod 1");
    s = slot_with(0, 0, 0, NULL);
    EXPECT_TEXT(s, "not reported yet");
    /* cut to the buffer, and terminated */
    s = slot_with(0, 0, 3, two_by_two);
    char small[12];
    memset(small, 'x', sizeof small);
    links_text(&s, small, sizeof small);
    EXPECT_MSG(!strcmp(small, "shm within "), "got \"%.12s\"", small);
    if (failures) {
        printf("test_links_text: %d failures\n", failures);
        return 1;
    }
    printf("test_links_text: ok\n");
    return 0;
}
