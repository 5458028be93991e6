/* links_text.c — a slot's links as one line (see links_text.h). */
#include "links_text.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_KINDS 4 // shm, tcp, mpi, and room for a name this moectl does not know

/* How a slot reaches the peers of one pod: each transport and how many peers use it. */
struct pod_links {
    const char *kind[MAX_KINDS];
    int count[MAX_KINDS];
    int n;
};

static void pod_add(struct pod_links *p, const char *kind) {
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->kind[i], kind)) {
            p->count[i]++;
            return;
        }
    if (p->n == MAX_KINDS) return;
    p->kind[p->n] = kind;
    p->count[p->n++] = 1;
}

/* Appends to out (at *len), never past cap. */
__attribute__((format(printf, 4, 5))) static void append(char *out, size_t cap, size_t *len,
                                                         const char *fmt, ...) {
    if (*len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (w > 0) *len += (size_t)w < cap - *len ? (size_t)w : cap - *len - 1;
}

/* What the slot's links to `pod` say: "tcp", or "shm x1 + tcp x2" when its peers there
 * differ; "" when it has no peer there. */
static void describe_pod(const Moed__V1__SlotStatus *s, int pod, char *out, size_t cap) {
    struct pod_links p = {0};
    for (size_t i = 0; i < s->n_links; i++)
        if (s->links[i]->pod == pod) pod_add(&p, s->links[i]->transport);
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < p.n; i++) {
        if (p.n == 1)
            append(out, cap, &len, "%s", p.kind[i]);
        else
            append(out, cap, &len, "%s%s x%d", i ? " + " : "", p.kind[i], p.count[i]);
    }
}

const char *links_text(const Moed__V1__SlotStatus *s, char *out, size_t cap) {
    if (!cap) return out;
    out[0] = 0;
    if (!s->n_links) {
        snprintf(out, cap, "not reported yet");
        return out;
    }
    int lo = s->links[0]->pod, hi = lo;
    for (size_t i = 1; i < s->n_links; i++) {
        if (s->links[i]->pod < lo) lo = s->links[i]->pod;
        if (s->links[i]->pod > hi) hi = s->links[i]->pod;
    }
    size_t len = 0;
    for (int pod = lo; pod <= hi; pod++) {
        char cur[96], next[96];
        describe_pod(s, pod, cur, sizeof cur);
        if (!cur[0]) continue; // no peer in that pod
        const char *sep = len ? ", " : "";
        if (pod == s->pod) {
            append(out, cap, &len, "%s%s within pod %d", sep, cur, pod);
            continue;
        }
        int last = pod; // the other pods after it that look the same join it
        for (int q = pod + 1; q <= hi && q != s->pod; q++) {
            describe_pod(s, q, next, sizeof next);
            if (strcmp(next, cur) != 0) break;
            last = q;
        }
        if (last == pod)
            append(out, cap, &len, "%s%s to pod %d", sep, cur, pod);
        else
            append(out, cap, &len, "%s%s to pods %d-%d", sep, cur, pod, last);
        pod = last;
    }
    return out;
}
