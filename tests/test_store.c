/*
 * test_store.c — the coordinator's RocksDB record against a real database in a fresh directory:
 * round trips, key order (job-2 before job-10), step and event ranges, deleting a job's
 * record, steps and events (and nothing of its neighbours), batch atomicity, a
 * restart, a coordinator killed with SIGKILL right after a synced write, the lock a second
 * coordinator meets, a recovering job's record (committed step, restore plan) across a
 * restart, and a corrupted value that must fail with the key's name, not crash.
 */
#include "../common/log.h"
#include "../coordinator/state/store.h"
#include "check.h"

#include <dirent.h>
#include <inttypes.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[] = "/tmp/test_store.XXXXXX";

static char *in_dir(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* ---------------------------------------------------------------------------------------------
 * Records and collectors */

static void put_job(struct store *st, const char *id, const char *name,
                    Moed__V1__JobState state, int64_t step) {
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    Moed__Store__JobRecord rec = MOED__STORE__JOB_RECORD__INIT;
    info.job_id = (char *)id;
    info.name = (char *)name;
    info.state = state;
    info.step = step;
    rec.job = &info;
    rec.spec_json = "{\"name\":\"x\"}";
    struct store_batch *b = store_batch_new();
    store_batch_job(b, &rec);
    EXPECT_MSG(store_batch_commit(st, b, 1) == MOE_OK, "put %s: %s", id, moe_errmsg());
}

static void put_worker(struct store *st, const char *id, int32_t pod) {
    Moed__V1__WorkerInfo w = MOED__V1__WORKER_INFO__INIT;
    w.worker_id = (char *)id;
    w.address = "127.0.0.1:7001";
    w.pod = pod;
    w.state = MOED__V1__WORKER_STATE__WORKER_IDLE;
    struct store_batch *b = store_batch_new();
    store_batch_worker(b, &w);
    EXPECT_MSG(store_batch_commit(st, b, 1) == MOE_OK, "put %s: %s", id, moe_errmsg());
}

static void put_step(struct store_batch *b, const char *job, int64_t step) {
    Moed__V1__StepMetrics m = MOED__V1__STEP_METRICS__INIT;
    float load[3] = {0.5f, 0.25f, 0.25f};
    m.step = step;
    m.loss = 5.0 - 0.01 * (double)step;
    m.n_expert_load = 3;
    m.expert_load = load;
    store_batch_step(b, job, &m);
}

static void put_event(struct store_batch *b, const char *job, int64_t seq) {
    char msg[64];
    snprintf(msg, sizeof msg, "event %" PRId64, seq);
    Moed__V1__Event e = MOED__V1__EVENT__INIT;
    e.unix_ms = 1000 + seq;
    e.kind = "note";
    e.message = msg;
    store_batch_event(b, job, seq, &e);
}

/* What a scan saw, as text ("job-2", "7", "event 3"), and where to stop early. */
struct seen {
    int n;
    int stop_after; // 0: never
    char item[64][32];
};

static int seen_add(struct seen *s, const char *text) {
    if (s->n < 64) snprintf(s->item[s->n], sizeof s->item[0], "%s", text);
    s->n++;
    return s->stop_after > 0 && s->n >= s->stop_after;
}

static int see_job(const Moed__Store__JobRecord *j, void *arg) {
    return seen_add(arg, j->job->job_id);
}

static int see_worker(const Moed__V1__WorkerInfo *w, void *arg) {
    return seen_add(arg, w->worker_id);
}

static int see_step(const Moed__V1__StepMetrics *m, void *arg) {
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, m->step);
    EXPECT(m->n_expert_load == 3 && m->expert_load[1] == 0.25f);
    return seen_add(arg, t);
}

static int see_event(const Moed__V1__Event *e, void *arg) {
    EXPECT(strcmp(e->kind, "note") == 0);
    return seen_add(arg, e->message);
}

/* An event of a range read: its seq, which must be the one put_event wrote into its message. */
static int see_event_seq(int64_t seq, const Moed__V1__Event *e, void *arg) {
    char t[32];
    snprintf(t, sizeof t, "event %" PRId64, seq);
    EXPECT_MSG(strcmp(e->message, t) == 0, "seq %" PRId64 " holds \"%s\"", seq, e->message);
    snprintf(t, sizeof t, "%" PRId64, seq);
    return seen_add(arg, t);
}

/* "a,b,c" from what a scan saw, for one-line comparisons. */
static const char *seen_list(const struct seen *s) {
    static char buf[2048];
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->n && i < 64 && o < sizeof buf - 40; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%s", i ? "," : "", s->item[i]);
    return buf;
}

#define EXPECT_SEEN(s, want)                                                                      \
    EXPECT_MSG(strcmp(seen_list(&(s)), (want)) == 0, "saw [%s], wanted [%s]", seen_list(&(s)),     \
               (want))

static struct store *open_or_die(const char *path) {
    struct store *st;
    if (store_open(&st, path, 0) != MOE_OK) {
        printf("FAIL cannot open %s: %s\n", path, moe_errmsg());
        exit(1);
    }
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Tests */

/* A coordinator that dies by SIGKILL right after its writes: the synced decision and the
 * unsynced metrics (only a machine crash may lose those) are there when it restarts. While it
 * lives, a second coordinator on the same directory is refused by RocksDB's lock.
 * Runs first, before this process has touched RocksDB, so that the child forks a process
 * without RocksDB's background threads. */
static void test_killed_coordinator(void) {
    const char *path = in_dir("killed");
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(ready[0]);
        close(go[1]);
        struct store *st;
        if (store_open(&st, path, 0) != MOE_OK) _exit(3);
        Moed__Store__MetaRecord meta = MOED__STORE__META_RECORD__INIT;
        meta.next_job = 2;
        meta.next_worker = 1;
        meta.cluster_id = "c-killed";
        Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
        info.job_id = "job-1";
        info.state = MOED__V1__JOB_STATE__JOB_QUEUED;
        Moed__Store__JobRecord rec = MOED__STORE__JOB_RECORD__INIT;
        rec.job = &info;
        rec.next_event = 1;
        struct store_batch *b = store_batch_new();
        store_batch_meta(b, &meta);
        store_batch_job(b, &rec);
        put_event(b, "job-1", 0);
        if (store_batch_commit(st, b, 1) != MOE_OK) _exit(4);
        b = store_batch_new();
        put_step(b, "job-1", 1);
        if (store_batch_commit(st, b, 0) != MOE_OK) _exit(5);
        if (write(ready[1], "r", 1) != 1) _exit(6);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(7);
        raise(SIGKILL); // no store_close: the database is left as a crash leaves it
        _exit(8);
    }
    close(ready[1]);
    close(go[0]);
    char c;
    EXPECT_MSG(read(ready[0], &c, 1) == 1, "the child failed before its writes");

    struct store *second = NULL;
    EXPECT_FAIL(store_open(&second, path, 0), MOE_EIO, path);
    EXPECT_MSG(strstr(moe_errmsg(), "lock") != NULL, "lock failure says: %s", moe_errmsg());
    EXPECT(second == NULL);
    /* Waiting for a lock whose holder lives on: refused after the wait, not sooner. */
    double t0 = moe_clock_s();
    EXPECT_FAIL(store_open(&second, path, 0.3), MOE_EIO, path);
    EXPECT_MSG(moe_clock_s() - t0 >= 0.29, "refused after %.3f s of a 0.3 s wait",
               moe_clock_s() - t0);
    EXPECT(second == NULL);

    /* A restart that races its predecessor's death (chaos restarts a coordinator right after
     * kill -9): opened at once with the wait, as soon as the lock is free, without waitpid. */
    EXPECT(write(go[1], "g", 1) == 1);
    struct store *st = NULL;
    EXPECT_MSG(store_open(&st, path, 10) == MOE_OK, "open after the holder's kill: %s",
               moe_errmsg());
    int wstatus;
    EXPECT(waitpid(pid, &wstatus, 0) == pid);
    EXPECT_MSG(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL,
               "child ended with status 0x%x, not by SIGKILL", wstatus);
    close(ready[0]);
    close(go[1]);
    if (!st) st = open_or_die(path);
    Moed__Store__MetaRecord *meta = NULL;
    EXPECT(store_meta_get(st, &meta) == MOE_OK);
    EXPECT(meta && meta->next_job == 2 && strcmp(meta->cluster_id, "c-killed") == 0);
    if (meta) moed__store__meta_record__free_unpacked(meta, NULL);
    Moed__Store__JobRecord *j = NULL;
    EXPECT_MSG(store_job_get(st, "job-1", &j) == MOE_OK, "%s", moe_errmsg());
    EXPECT(j && j->job->state == MOED__V1__JOB_STATE__JOB_QUEUED && j->next_event == 1);
    if (j) moed__store__job_record__free_unpacked(j, NULL);
    struct seen ev = {0}, steps = {0};
    EXPECT(store_events_tail(st, "job-1", 0, see_event, &ev) == MOE_OK);
    EXPECT_SEEN(ev, "event 0");
    EXPECT(store_steps_scan(st, "job-1", 0, see_step, &steps) == MOE_OK);
    EXPECT_SEEN(steps, "1");
    store_close(st);
}

static void test_meta(struct store *st) {
    Moed__Store__MetaRecord *m = NULL;
    EXPECT(store_meta_get(st, &m) == MOE_OK);
    EXPECT(m && m->next_job == 1 && m->next_worker == 1 && m->cluster_id &&
           strcmp(m->cluster_id, "") == 0);
    Moed__Store__MetaRecord upd = *m;
    upd.next_job = 11;
    upd.next_worker = 4;
    upd.cluster_id = "c-1234";
    struct store_batch *b = store_batch_new();
    store_batch_meta(b, &upd);
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    moed__store__meta_record__free_unpacked(m, NULL);

    EXPECT(store_meta_get(st, &m) == MOE_OK);
    EXPECT(m && m->next_job == 11 && m->next_worker == 4 && strcmp(m->cluster_id, "c-1234") == 0);
    moed__store__meta_record__free_unpacked(m, NULL);
}

static void test_jobs(struct store *st) {
    /* Written out of order, read in submission order: numerically, not as text. */
    const char *ids[] = {"job-10", "job-2", "job-1", "job-100", "job-9", "job-3"};
    for (int i = 0; i < 6; i++)
        put_job(st, ids[i], "demo", MOED__V1__JOB_STATE__JOB_QUEUED, 0);
    put_job(st, "job-2", "demo", MOED__V1__JOB_STATE__JOB_RUNNING, 40); // overwrites

    struct seen s = {0};
    EXPECT(store_jobs_scan(st, see_job, &s) == MOE_OK);
    EXPECT_SEEN(s, "job-1,job-2,job-3,job-9,job-10,job-100");

    struct seen stop = {.stop_after = 2};
    EXPECT(store_jobs_scan(st, see_job, &stop) == MOE_OK);
    EXPECT_SEEN(stop, "job-1,job-2");

    Moed__Store__JobRecord *j = NULL;
    EXPECT(store_job_get(st, "job-2", &j) == MOE_OK);
    EXPECT(j && strcmp(j->job->job_id, "job-2") == 0 && strcmp(j->job->name, "demo") == 0 &&
           j->job->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->job->step == 40 &&
           strcmp(j->spec_json, "{\"name\":\"x\"}") == 0);
    if (j) moed__store__job_record__free_unpacked(j, NULL);

    j = (Moed__Store__JobRecord *)1;
    EXPECT_FAIL(store_job_get(st, "job-9999", &j), MOE_ENOTFOUND, "no job job-9999");
    EXPECT(j == NULL);
    EXPECT_FAIL(store_job_get(st, "job-07", &j), MOE_EINVAL, "job-07");
    EXPECT_FAIL(store_job_get(st, "w-2", &j), MOE_EINVAL, "w-2");
    EXPECT_FAIL(store_job_get(st, "job-", &j), MOE_EINVAL, "job-");
    EXPECT_FAIL(store_job_get(st, "job-1x", &j), MOE_EINVAL, "job-1x");
    EXPECT_FAIL(store_job_get(st, "job-1234567890123456789", &j), MOE_EINVAL, "job-12345");
    EXPECT_FAIL(store_job_get(st, NULL, &j), MOE_EINVAL, "bad id");
}

static int see_record(const Moed__Store__WorkerRecord *r, void *arg) {
    char t[32];
    snprintf(t, sizeof t, "%.8s=%.16s", r->worker_id, r->credential);
    return seen_add(arg, t);
}

static void test_workers(struct store *st) {
    put_worker(st, "w-10", 1);
    put_worker(st, "w-2", 0);
    put_worker(st, "w-1", 0);
    struct seen s = {0};
    EXPECT(store_workers_scan(st, see_worker, &s) == MOE_OK);
    EXPECT_SEEN(s, "w-1,w-2,w-10");
    /* identities live under their own prefix: the WorkerInfo scan never sees them */
    struct store_batch *b = store_batch_new();
    Moed__Store__WorkerRecord r = MOED__STORE__WORKER_RECORD__INIT;
    r.worker_id = "w-10";
    r.credential = "w-10.secret";
    store_batch_worker_record(b, &r);
    r.worker_id = "w-2";
    r.credential = "w-2.secret";
    store_batch_worker_record(b, &r);
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    struct seen ids = {0}, recs = {0};
    EXPECT(store_workers_scan(st, see_worker, &ids) == MOE_OK);
    EXPECT_SEEN(ids, "w-1,w-2,w-10");
    EXPECT(store_worker_records_scan(st, see_record, &recs) == MOE_OK);
    EXPECT_SEEN(recs, "w-2=w-2.secret,w-10=w-10.secret");
    b = store_batch_new();
    r.worker_id = "job-1";
    store_batch_worker_record(b, &r);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "job-1");
}

/* Range reads of job-2's events 0..11 (and job-3's and job-20's one each), as ListEvents pages
 * through them: from a seq on, in seq order (10 after 9), stopping where the callback says. */
static void test_events_range(struct store *st) {
    struct seen all = {0};
    EXPECT(store_events_range(st, "job-2", 0, see_event_seq, &all) == MOE_OK);
    EXPECT_SEEN(all, "0,1,2,3,4,5,6,7,8,9,10,11");
    struct seen below = {0};
    EXPECT(store_events_range(st, "job-2", -7, see_event_seq, &below) == MOE_OK);
    EXPECT(below.n == 12);
    struct seen late = {0};
    EXPECT(store_events_range(st, "job-2", 9, see_event_seq, &late) == MOE_OK);
    EXPECT_SEEN(late, "9,10,11");
    struct seen page = {.stop_after = 2};
    EXPECT(store_events_range(st, "job-2", 5, see_event_seq, &page) == MOE_OK);
    EXPECT_SEEN(page, "5,6");
    /* Pages of 5, each from one past the last seq seen, until one comes back empty. */
    struct seen pages[4] = {{.stop_after = 5}, {.stop_after = 5}, {.stop_after = 5},
                            {.stop_after = 5}};
    int64_t from = 0;
    int n_pages = 0;
    for (; n_pages < 4; n_pages++) {
        EXPECT(store_events_range(st, "job-2", from, see_event_seq, &pages[n_pages]) == MOE_OK);
        if (!pages[n_pages].n) break;
        from = atoll(pages[n_pages].item[pages[n_pages].n - 1]) + 1;
    }
    EXPECT_MSG(n_pages == 3, "%d pages", n_pages);
    EXPECT_SEEN(pages[0], "0,1,2,3,4");
    EXPECT_SEEN(pages[2], "10,11");
    struct seen past = {0};
    EXPECT(store_events_range(st, "job-2", 12, see_event_seq, &past) == MOE_OK);
    EXPECT(past.n == 0);
    struct seen j3 = {0};
    EXPECT(store_events_range(st, "job-3", 0, see_event_seq, &j3) == MOE_OK);
    EXPECT_SEEN(j3, "0");
    /* job-20's events end the database; job-2's range must not run into them. */
    struct seen j20 = {0};
    EXPECT(store_events_range(st, "job-20", 1, see_event_seq, &j20) == MOE_OK);
    EXPECT(j20.n == 0);
    struct seen gone = {0};
    EXPECT(store_events_range(st, "job-99", 0, see_event_seq, &gone) == MOE_OK);
    EXPECT(gone.n == 0);
    EXPECT_FAIL(store_events_range(st, "job-x", 0, see_event_seq, &gone), MOE_EINVAL, "job-x");
}

static void test_steps_and_events(struct store *st) {
    struct store_batch *b = store_batch_new();
    for (int64_t step = 1; step <= 12; step++) put_step(b, "job-2", step);
    put_step(b, "job-3", 5); // another job's steps stay out of job-2's range
    put_step(b, "job-20", 1);
    EXPECT(store_batch_commit(st, b, 0) == MOE_OK);

    struct seen s = {0};
    EXPECT(store_steps_scan(st, "job-2", 9, see_step, &s) == MOE_OK);
    EXPECT_SEEN(s, "9,10,11,12");
    struct seen all = {0};
    EXPECT(store_steps_scan(st, "job-2", -5, see_step, &all) == MOE_OK);
    EXPECT(all.n == 12);
    struct seen none = {0};
    EXPECT(store_steps_scan(st, "job-2", 13, see_step, &none) == MOE_OK);
    EXPECT(none.n == 0);
    struct seen other = {0};
    EXPECT(store_steps_scan(st, "job-3", 0, see_step, &other) == MOE_OK);
    EXPECT_SEEN(other, "5");
    EXPECT_FAIL(store_steps_scan(st, "job-x", 0, see_step, &none), MOE_EINVAL, "job-x");

    b = store_batch_new();
    for (int64_t seq = 0; seq < 12; seq++) put_event(b, "job-2", seq);
    put_event(b, "job-3", 0);
    put_event(b, "job-20", 0);
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);

    struct seen tail = {0};
    EXPECT(store_events_tail(st, "job-2", 3, see_event, &tail) == MOE_OK);
    EXPECT_SEEN(tail, "event 9,event 10,event 11");
    struct seen one = {0};
    EXPECT(store_events_tail(st, "job-2", 1, see_event, &one) == MOE_OK);
    EXPECT_SEEN(one, "event 11");
    struct seen more = {0};
    EXPECT(store_events_tail(st, "job-2", 100, see_event, &more) == MOE_OK);
    EXPECT(more.n == 12 && strcmp(more.item[0], "event 0") == 0);
    struct seen every = {0};
    EXPECT(store_events_tail(st, "job-2", 0, see_event, &every) == MOE_OK);
    EXPECT(every.n == 12 && strcmp(every.item[11], "event 11") == 0);
    struct seen j3 = {0};
    EXPECT(store_events_tail(st, "job-3", 5, see_event, &j3) == MOE_OK);
    EXPECT_SEEN(j3, "event 0");
    /* job-20 is the last job with events: the walk back starts at the end of the database. */
    struct seen j20 = {0};
    EXPECT(store_events_tail(st, "job-20", 2, see_event, &j20) == MOE_OK);
    EXPECT_SEEN(j20, "event 0");
    struct seen empty = {0};
    EXPECT(store_events_tail(st, "job-1", 5, see_event, &empty) == MOE_OK);
    EXPECT(empty.n == 0);
    struct seen gone = {0};
    EXPECT(store_events_tail(st, "job-99", 5, see_event, &gone) == MOE_OK);
    EXPECT(gone.n == 0);
    test_events_range(st);
}

/* Deleting job-4 removes its record, steps and events, and nothing of job-40 or job-5 (whose
 * keys share job-4's digits or sit next to its ranges); the meta counter stays. They are all
 * gone again at the end (test_reopen counts what is left). */
static void test_delete_job(struct store *st) {
    put_job(st, "job-4", "four", MOED__V1__JOB_STATE__JOB_SUCCEEDED, 3);
    put_job(st, "job-40", "forty", MOED__V1__JOB_STATE__JOB_FAILED, 1);
    struct store_batch *b = store_batch_new();
    for (int64_t k = 1; k <= 3; k++) put_step(b, "job-4", k), put_event(b, "job-4", k - 1);
    put_step(b, "job-40", 1);
    put_event(b, "job-40", 0);
    put_step(b, "job-5", 5);
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    Moed__Store__MetaRecord *before = NULL, *after = NULL;
    EXPECT(store_meta_get(st, &before) == MOE_OK);
    b = store_batch_new();
    store_batch_delete_job(b, "job-4");
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    Moed__Store__JobRecord *rec = NULL;
    EXPECT_FAIL(store_job_get(st, "job-4", &rec), MOE_ENOTFOUND, "job-4");
    struct seen steps = {0}, events = {0}, j40 = {0}, j40e = {0}, j5 = {0}, jobs = {0};
    EXPECT(store_steps_scan(st, "job-4", 0, see_step, &steps) == MOE_OK);
    EXPECT(store_events_tail(st, "job-4", 0, see_event, &events) == MOE_OK);
    EXPECT_MSG(steps.n == 0 && events.n == 0, "job-4 kept %d steps and %d events", steps.n,
               events.n);
    EXPECT(store_steps_scan(st, "job-40", 0, see_step, &j40) == MOE_OK);
    EXPECT_SEEN(j40, "1");
    EXPECT(store_events_tail(st, "job-40", 0, see_event, &j40e) == MOE_OK);
    EXPECT_SEEN(j40e, "event 0");
    EXPECT(store_steps_scan(st, "job-5", 0, see_step, &j5) == MOE_OK);
    EXPECT_SEEN(j5, "5");
    EXPECT(store_job_get(st, "job-40", &rec) == MOE_OK);
    if (rec) moed__store__job_record__free_unpacked(rec, NULL);
    EXPECT(store_jobs_scan(st, see_job, &jobs) == MOE_OK);
    for (int i = 0; i < jobs.n && i < 64; i++) EXPECT(strcmp(jobs.item[i], "job-4") != 0);
    EXPECT(store_meta_get(st, &after) == MOE_OK);
    EXPECT(before && after && before->next_job == after->next_job);
    if (before) moed__store__meta_record__free_unpacked(before, NULL);
    if (after) moed__store__meta_record__free_unpacked(after, NULL);
    b = store_batch_new();
    store_batch_delete_job(b, "job-04");
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "job-04");
    b = store_batch_new(); // two in one batch; job-5 has steps but no record
    store_batch_delete_job(b, "job-40");
    store_batch_delete_job(b, "job-5");
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    struct seen left = {0};
    EXPECT(store_steps_scan(st, "job-5", 0, see_step, &left) == MOE_OK);
    EXPECT(store_job_get(st, "job-40", &rec) == MOE_ENOTFOUND && left.n == 0);
}

/* A batch is all or nothing: everything visible after its commit, nothing after a failed one
 * or a dropped one. */
static void test_batches(struct store *st) {
    Moed__Store__MetaRecord meta = MOED__STORE__META_RECORD__INIT;
    meta.next_job = 31;
    meta.next_worker = 4;
    meta.cluster_id = "c-1234";
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    info.job_id = "job-30";
    info.state = MOED__V1__JOB_STATE__JOB_QUEUED;
    Moed__Store__JobRecord rec = MOED__STORE__JOB_RECORD__INIT;
    rec.job = &info;
    rec.next_event = 1;

    struct store_batch *b = store_batch_new();
    store_batch_job(b, &rec);
    put_event(b, "job-30", 0);
    store_batch_meta(b, &meta);
    put_worker(st, "w-3", 2); // a commit between the adds does not disturb the batch
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    Moed__Store__JobRecord *j = NULL;
    Moed__Store__MetaRecord *m = NULL;
    struct seen ev = {0};
    EXPECT(store_job_get(st, "job-30", &j) == MOE_OK);
    EXPECT(store_meta_get(st, &m) == MOE_OK && m->next_job == 31);
    EXPECT(store_events_tail(st, "job-30", 0, see_event, &ev) == MOE_OK);
    EXPECT_SEEN(ev, "event 0");
    if (j) moed__store__job_record__free_unpacked(j, NULL);
    if (m) moed__store__meta_record__free_unpacked(m, NULL);

    /* One bad add spoils the whole batch, whatever came before it. */
    info.job_id = "job-31";
    meta.next_job = 32;
    b = store_batch_new();
    store_batch_job(b, &rec);
    store_batch_meta(b, &meta);
    put_event(b, "jb-31", 0);
    put_event(b, "job-31", -1); // ignored: the batch already failed, the first failure reports
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "jb-31");
    EXPECT_FAIL(store_job_get(st, "job-31", &j), MOE_ENOTFOUND, "job-31");
    EXPECT(store_meta_get(st, &m) == MOE_OK && m->next_job == 31);
    moed__store__meta_record__free_unpacked(m, NULL);

    b = store_batch_new();
    store_batch_job(b, &rec);
    store_batch_free(b);
    EXPECT_FAIL(store_job_get(st, "job-31", &j), MOE_ENOTFOUND, "job-31");

    /* Each adder's own refusals. */
    Moed__V1__JobInfo nojob = MOED__V1__JOB_INFO__INIT;
    nojob.job_id = "job-007";
    Moed__Store__JobRecord bad = MOED__STORE__JOB_RECORD__INIT;
    b = store_batch_new();
    store_batch_job(b, &bad);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "without its job");
    bad.job = &nojob;
    b = store_batch_new();
    store_batch_job(b, &bad);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "job-007");
    b = store_batch_new();
    put_event(b, "job-31", -1);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "negative");
    b = store_batch_new();
    put_step(b, "job-31", -2);
    EXPECT_FAIL(store_batch_commit(st, b, 0), MOE_EINVAL, "negative");
    Moed__V1__WorkerInfo w = MOED__V1__WORKER_INFO__INIT;
    w.worker_id = "job-1";
    b = store_batch_new();
    store_batch_worker(b, &w);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "want w-N");
    b = store_batch_new();
    store_batch_worker(b, NULL);
    EXPECT_FAIL(store_batch_commit(st, b, 1), MOE_EINVAL, "no worker");
    EXPECT_FAIL(store_batch_commit(st, NULL, 1), MOE_ENOMEM, "batch");
    b = store_batch_new(); // an empty batch commits as nothing
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);

    /* Large values go through the heap buffer. */
    static char big_spec[100000];
    memset(big_spec, 'x', sizeof big_spec - 1);
    info.job_id = "job-31";
    rec.spec_json = big_spec;
    b = store_batch_new();
    store_batch_job(b, &rec);
    EXPECT(store_batch_commit(st, b, 1) == MOE_OK);
    EXPECT(store_job_get(st, "job-31", &j) == MOE_OK &&
           strlen(j->spec_json) == sizeof big_spec - 1);
    if (j) moed__store__job_record__free_unpacked(j, NULL);
}

/* What test_jobs .. test_batches left, read by a restarted coordinator. */
static void test_reopen(const char *path) {
    struct store *st = open_or_die(path);
    struct seen jobs = {0}, workers = {0}, steps = {0}, ev = {0};
    EXPECT(store_jobs_scan(st, see_job, &jobs) == MOE_OK);
    EXPECT_SEEN(jobs, "job-1,job-2,job-3,job-9,job-10,job-30,job-31,job-100");
    EXPECT(store_workers_scan(st, see_worker, &workers) == MOE_OK);
    EXPECT_SEEN(workers, "w-1,w-2,w-3,w-10");
    EXPECT(store_steps_scan(st, "job-2", 11, see_step, &steps) == MOE_OK);
    EXPECT_SEEN(steps, "11,12");
    EXPECT(store_events_tail(st, "job-2", 2, see_event, &ev) == MOE_OK);
    EXPECT_SEEN(ev, "event 10,event 11");
    Moed__Store__MetaRecord *m = NULL;
    EXPECT(store_meta_get(st, &m) == MOE_OK);
    EXPECT(m && m->next_job == 31 && m->next_worker == 4 && strcmp(m->cluster_id, "c-1234") == 0);
    if (m) moed__store__meta_record__free_unpacked(m, NULL);

    /* The same process opening the same directory twice is refused too. */
    struct store *again = NULL;
    EXPECT_FAIL(store_open(&again, path, 0), MOE_EIO, path);
    EXPECT(again == NULL);
    store_close(st);
}

struct replica_seen {
    const uint8_t *sha; // what the step was written with
    int64_t replicated, hash_step;
    int sha_ok;
};

static int see_replica(const Moed__V1__StepMetrics *m, void *arg) {
    struct replica_seen *r = arg;
    r->replicated = m->replicated_step;
    r->hash_step = m->state_hash_step;
    r->sha_ok = m->state_sha256.len == 32 && memcmp(m->state_sha256.data, r->sha, 32) == 0;
    return 1;
}

/* A recovering job's record (docs/recovery.md): the committed step, the recovery counters
 * and the latest restore plan survive a restart, and a step's replica fields are kept. */
static void test_recovery_record(void) {
    const char *path = in_dir("recovery");
    struct store *st = open_or_die(path);
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    Moed__Store__JobRecord rec = MOED__STORE__JOB_RECORD__INIT;
    int32_t from[4] = {-1, -1, 0, -1};
    info.job_id = "job-7";
    info.name = "mesh";
    info.state = MOED__V1__JOB_STATE__JOB_RUNNING;
    info.epoch = 3;
    info.pods = 2;
    info.slots = 2;
    info.committed_step = 41;
    info.recoveries = 2;
    info.recovering = 1;
    rec.job = &info;
    rec.spec_json = "{}";
    rec.restore_step = 41;
    rec.n_restore_from = 4;
    rec.restore_from = from;
    rec.recovery_since_ms = 1764580000123;
    uint8_t sha[32];
    for (int i = 0; i < 32; i++) sha[i] = (uint8_t)(i * 7);
    Moed__V1__StepMetrics m = MOED__V1__STEP_METRICS__INIT;
    m.step = 42;
    m.replicated_step = 41;
    m.state_sha256.len = 32;
    m.state_sha256.data = sha;
    m.state_hash_step = 40;
    struct store_batch *b = store_batch_new();
    store_batch_job(b, &rec);
    store_batch_step(b, "job-7", &m);
    EXPECT_MSG(store_batch_commit(st, b, 1) == MOE_OK, "recovery record: %s", moe_errmsg());
    store_close(st);

    st = open_or_die(path); // as a restarted coordinator reads it
    Moed__Store__JobRecord *j = NULL;
    EXPECT(store_job_get(st, "job-7", &j) == MOE_OK);
    EXPECT(j && j->job->committed_step == 41 && j->job->recoveries == 2 && j->job->recovering &&
           j->job->epoch == 3 && j->restore_step == 41 && j->recovery_since_ms == 1764580000123);
    EXPECT(j && j->n_restore_from == 4 && j->restore_from[0] == -1 && j->restore_from[2] == 0 &&
           j->restore_from[3] == -1);
    if (j) moed__store__job_record__free_unpacked(j, NULL);
    struct replica_seen got = {.sha = sha};
    EXPECT(store_steps_scan(st, "job-7", 42, see_replica, &got) == MOE_OK);
    EXPECT_MSG(got.replicated == 41 && got.hash_step == 40 && got.sha_ok,
               "step 42 read back: replicated_step %lld, state_hash_step %lld, sha %s",
               (long long)got.replicated, (long long)got.hash_step, got.sha_ok ? "same" : "differs");
    store_close(st);
}

/* Raw RocksDB puts, as disk corruption or a stranger's tool would leave them. */
static void raw_put(const char *path, const char *key, const char *val, size_t vlen) {
    char *err = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_t *db = rocksdb_open(o, path, &err);
    if (err) {
        printf("FAIL raw open %s: %s\n", path, err);
        exit(1);
    }
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_put(db, wo, key, strlen(key), val, vlen, &err);
    if (err) {
        printf("FAIL raw put %s: %s\n", key, err);
        exit(1);
    }
    rocksdb_writeoptions_destroy(wo);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
}

static void test_corrupt(void) {
    const char *path = in_dir("corrupt");
    struct store *st = open_or_die(path);
    put_job(st, "job-1", "fine", MOED__V1__JOB_STATE__JOB_QUEUED, 0);
    put_job(st, "job-3", "fine", MOED__V1__JOB_STATE__JOB_QUEUED, 0);
    put_worker(st, "w-1", 0);
    store_close(st);

    /* Field 1, length 80, then 3 bytes: a truncated JobInfo. */
    raw_put(path, "j/00000000000000000002", "\x0a\x50" "abc", 5);
    /* Parses (no fields at all) but lacks the JobInfo every job record carries. */
    raw_put(path, "j/00000000000000000004", "", 0);
    raw_put(path, "w/00000000000000000002", "\xff\xff\xff", 3);
    raw_put(path, "m", "\x08", 1);

    st = open_or_die(path);
    Moed__Store__JobRecord *j = NULL;
    EXPECT_FAIL(store_job_get(st, "job-2", &j), MOE_EFORMAT, "key j/00000000000000000002");
    EXPECT(j == NULL);
    EXPECT_FAIL(store_job_get(st, "job-4", &j), MOE_EFORMAT, "key j/00000000000000000004");
    EXPECT(store_job_get(st, "job-1", &j) == MOE_OK);
    if (j) moed__store__job_record__free_unpacked(j, NULL);
    struct seen s = {0};
    EXPECT_FAIL(store_jobs_scan(st, see_job, &s), MOE_EFORMAT, "j/00000000000000000002");
    EXPECT_SEEN(s, "job-1"); // the records before the bad one were seen
    struct seen w = {0};
    EXPECT_FAIL(store_workers_scan(st, see_worker, &w), MOE_EFORMAT, "w/00000000000000000002");
    Moed__Store__MetaRecord *m = NULL;
    EXPECT_FAIL(store_meta_get(st, &m), MOE_EFORMAT, "key m ");
    EXPECT(m == NULL);
    store_close(st);
}

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        if (d) closedir(d);
    }
    if (remove(path) != 0) printf("warning: cannot remove %s\n", path);
}

int main(void) {
    moe_log_init("test");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_killed_coordinator();

    const char *path = in_dir("db/nested"); // store_open creates missing parents
    struct store *st = open_or_die(path);
    test_meta(st);
    test_jobs(st);
    test_workers(st);
    test_steps_and_events(st);
    test_delete_job(st);
    test_batches(st);
    store_close(st);
    test_reopen(path);
    test_recovery_record();
    test_corrupt();

    rm_rf(dir);
    if (failures) {
        printf("test_store: %d failures\n", failures);
        return 1;
    }
    printf("test_store: ok\n");
    return 0;
}
