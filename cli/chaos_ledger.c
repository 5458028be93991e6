/*
 * chaos_ledger.c — a job's event history for `moectl chaos`, and the account of a window of
 * it (chaos_ledger.h says what it owns).
 */
#include "chaos_ledger.h" // first: through proto/rpc.h, _GNU_SOURCE before any system header

#include "proto/moed.pb-c.h"
#include "../proto/methods.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_kind(const char *kind, const char *const *list) {
    for (; *list; list++)
        if (strcmp(kind, *list) == 0) return 1;
    return 0;
}

/* Events that open a recovery or a move, or mark its progress (docs/recovery.md). */
static const char *const episode_kinds[] = {"failure", "rebalance", "recovery_resumed",
                                            "recovering", "moving", "recovery_waiting", NULL};
/* Events of a job that has ended: nothing is in progress after them. */
static const char *const final_kinds[] = {"failed", "worker_dead", "cancelled", "succeeded",
                                          NULL};

static moe_status keep(struct ledger *l, const Moed__V1__Event *e) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        struct ledger_event *ev = realloc(l->ev, cap * sizeof *ev);
        if (!ev) return moe_fail(MOE_ENOMEM, "chaos: out of memory for the job's events");
        l->ev = ev, l->cap = cap;
    }
    struct ledger_event *k = &l->ev[l->n];
    k->message = strdup(e->message);
    if (!k->message) return moe_fail(MOE_ENOMEM, "chaos: out of memory for the job's events");
    k->seq = e->seq, k->unix_ms = e->unix_ms;
    snprintf(k->kind, sizeof k->kind, "%s", e->kind);
    l->n++;
    return MOE_OK;
}

moe_status ledger_pull(struct ledger *l, struct rpc_channel *ch, const char *job_id,
                       double timeout_s, struct rpc_result *res, size_t *n_new) {
    size_t before = l->n;
    for (;;) { // pages until an empty one
        Moed__V1__ListEventsRequest req = MOED__V1__LIST_EVENTS_REQUEST__INIT;
        req.job_id = (char *)job_id;
        req.from_seq = l->next_seq;
        ProtobufCMessage *reply = NULL;
        moe_status s = rpc_call_sync(ch, RPC_JOBS_LIST_EVENTS, &req.base,
                                     &moed__v1__list_events_response__descriptor, &reply,
                                     timeout_s, res);
        if (s != MOE_OK) return s;
        const Moed__V1__ListEventsResponse *r = (const Moed__V1__ListEventsResponse *)reply;
        size_t n = r->n_events;
        int64_t from = l->next_seq;
        for (size_t i = 0; i < n && s == MOE_OK; i++)
            if (r->events[i]->seq >= l->next_seq) { // ascending; never one twice
                s = keep(l, r->events[i]);
                l->next_seq = r->events[i]->seq + 1;
            }
        if (r->next_seq > l->next_seq) l->next_seq = r->next_seq;
        protobuf_c_message_free_unpacked(reply, NULL);
        if (s != MOE_OK) return s;
        if (!n) break;
        if (l->next_seq <= from)
            return moe_fail(MOE_EFORMAT, "ListEvents %s does not move past seq %lld",
                            job_id, (long long)from);
    }
    if (n_new) *n_new = l->n - before;
    return MOE_OK;
}

void ledger_free(struct ledger *l) {
    for (size_t i = 0; i < l->n; i++) free(l->ev[i].message);
    free(l->ev);
    memset(l, 0, sizeof *l);
}

const struct ledger_event *ledger_find(const struct ledger *l, const char *kind, int64_t from) {
    for (size_t i = 0; i < l->n; i++)
        if (l->ev[i].seq >= from && strcmp(l->ev[i].kind, kind) == 0) return &l->ev[i];
    return NULL;
}

int ledger_episode_since(const struct ledger *l, int64_t from) {
    for (size_t i = l->n; i-- > 0 && l->ev[i].seq >= from;)
        if (is_kind(l->ev[i].kind, episode_kinds) || !strcmp(l->ev[i].kind, "recovered") ||
            !strcmp(l->ev[i].kind, "moved"))
            return 1;
    return 0;
}

/* ---- the account of a window ---- */

struct window {
    int64_t from, to;
    struct account *a;
};

static void span(struct account *a, int64_t seq) {
    if (a->first_seq < 0 || seq < a->first_seq) a->first_seq = seq;
    if (seq > a->last_seq) a->last_seq = seq;
}

/* An episode [start, e] closed by e: counted when it overlaps the window. */
static int closes_in(const struct window *w, int64_t start, const struct ledger_event *e) {
    if (start >= w->to || e->seq < w->from) return 0;
    span(w->a, start >= w->from ? start : w->from);
    span(w->a, e->seq);
    if (start < w->from && (w->a->earlier_seq < 0 || start < w->a->earlier_seq))
        w->a->earlier_seq = start;
    return 1;
}

void ledger_account(const struct ledger *l, int64_t from, int64_t to, struct account *a) {
    memset(a, 0, sizeof *a);
    a->first_seq = a->last_seq = a->earlier_seq = a->open_seq = a->repair_seq = -1;
    const struct window w = {from, to, a};
    int64_t open = -1, repair = -1; // where the episode in progress began (-1: none)
    for (size_t i = 0; i < l->n && l->ev[i].seq < to; i++) {
        const struct ledger_event *e = &l->ev[i];
        int in = e->seq >= from;
        if (is_kind(e->kind, episode_kinds)) {
            if (open < 0) open = e->seq;
        } else if (!strcmp(e->kind, "recovered") || !strcmp(e->kind, "moved")) {
            int recovered = strcmp(e->kind, "recovered") == 0;
            if (closes_in(&w, open >= 0 ? open : e->seq, e)) {
                if (recovered) a->recovered++, a->recovered_by = e;
                else a->moved++, a->moved_by = e;
            }
            open = -1;
        } else if (!strcmp(e->kind, "replica_mismatch")) {
            if (repair < 0) repair = e->seq;
            if (in) a->mismatches++, a->mismatch = e, span(a, e->seq);
        } else if (!strcmp(e->kind, "repaired")) {
            if (closes_in(&w, repair >= 0 ? repair : e->seq, e)) a->repaired++, a->repaired_by = e;
            /* a repair may fence and rebind: that is the repair's, not a recovery left open */
            if (repair >= 0 && open > repair) open = -1;
            repair = -1;
        } else if (!strcmp(e->kind, "reattached")) {
            if (in) a->reattached++, span(a, e->seq);
        } else if (is_kind(e->kind, final_kinds)) {
            open = repair = -1;
        }
    }
    a->open_seq = open;
    a->repair_seq = repair;
    if (open >= 0 && open < from) a->earlier_seq = open;
}
