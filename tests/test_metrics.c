/*
 * test_metrics.c — the coordinator's Prometheus exposition (coordinator/handlers/metrics.c):
 * label values and help escaped as the text format 0.0.4 says, HELP and TYPE before each
 * family's samples, histograms with cumulative buckets ending in +Inf = _count, values that
 * read back as the same double, which jobs a scrape shows (active ones and the N most recently
 * ended), and the RPC counts the server's on_done hook feeds.
 */
#include "../coordinator/handlers/metrics.h"
#include "../coordinator/state/jobs.h"
#include "check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static char *written(struct expo *e) {
    size_t len;
    char *text = expo_take(e, &len);
    EXPECT(text && strlen(text) == len);
    return text;
}

static void test_escaping(void) {
    struct expo e = {0};
    expo_family(&e, "m_total", "counter", "help with \\ and\nnewline and \"quotes\"");
    struct label l[] = {{"job_id", "job-1"}, {"name", "a \"b\" \\ c\nd"}};
    expo_sample(&e, "m_total", l, 2, 3);
    char *t = written(&e);
    const char *want = "# HELP m_total help with \\\\ and\\nnewline and \"quotes\"\n"
                       "# TYPE m_total counter\n"
                       "m_total{job_id=\"job-1\",name=\"a \\\"b\\\" \\\\ c\\nd\"} 3\n";
    EXPECT_MSG(t && !strcmp(t, want), "got:\n%s\nwanted:\n%s", t ? t : "(none)", want);
    free(t);
}

static void test_values(void) {
    struct expo e = {0};
    expo_sample(&e, "a", NULL, 0, 0.1);
    expo_sample(&e, "b", NULL, 0, 1.0 / 3.0);
    expo_sample(&e, "c", NULL, 0, 123456789012.0);
    expo_sample(&e, "d", NULL, 0, NAN);
    expo_sample(&e, "e", NULL, 0, -INFINITY);
    char *t = written(&e);
    EXPECT_MSG(t && strstr(t, "a 0.1\n") && strstr(t, "c 123456789012\n") &&
               strstr(t, "d NaN\n") && strstr(t, "e -Inf\n"), "got:\n%s", t ? t : "(none)");
    const char *b = t ? strstr(t, "b ") : NULL;
    EXPECT(b && strtod(b + 2, NULL) == 1.0 / 3.0); // every digit the double needs
    free(t);
}

static void test_histogram(void) {
    struct histogram h = {0};
    histogram_observe(&h, 0.0005); // first bucket
    histogram_observe(&h, 0.7);    // le=1 and up
    histogram_observe(&h, 1000);   // only +Inf
    histogram_observe(&h, -1);     // a clock step back: counted as 0
    EXPECT(h.count == 4 && h.bucket[0] == 2 && h.bucket[HISTOGRAM_BUCKETS - 1] == 3);
    struct expo e = {0};
    expo_family(&e, "d_seconds", "histogram", "durations");
    struct label l[] = {{"job_id", "job-2"}};
    expo_histogram(&e, "d_seconds", l, 1, &h);
    char *t = written(&e);
    EXPECT_MSG(t && strstr(t, "d_seconds_bucket{job_id=\"job-2\",le=\"0.001\"} 2\n") &&
               strstr(t, "d_seconds_bucket{job_id=\"job-2\",le=\"0.5\"} 2\n") &&
               strstr(t, "d_seconds_bucket{job_id=\"job-2\",le=\"1\"} 3\n") &&
               strstr(t, "d_seconds_bucket{job_id=\"job-2\",le=\"300\"} 3\n") &&
               strstr(t, "d_seconds_bucket{job_id=\"job-2\",le=\"+Inf\"} 4\n") &&
               strstr(t, "d_seconds_sum{job_id=\"job-2\"} 1000.7005\n") &&
               strstr(t, "d_seconds_count{job_id=\"job-2\"} 4\n"), "got:\n%s", t ? t : "(none)");
    /* buckets ascend and never decrease */
    double last_le = -1, last_n = -1;
    int buckets = 0;
    for (const char *p = t; p && (p = strstr(p, "le=\"")); p++) {
        double le = strncmp(p + 4, "+Inf", 4) ? strtod(p + 4, NULL) : INFINITY;
        double n = strtod(strchr(p, '}') + 1, NULL);
        EXPECT(le > last_le && n >= last_n);
        last_le = le, last_n = n, buckets++;
    }
    EXPECT(buckets == HISTOGRAM_BUCKETS + 1);
    free(t);
}

static struct job *fake_job(long num, Moed__V1__JobState state, int64_t finished_ms) {
    struct job *j = calloc(1, sizeof *j);
    j->num = num;
    snprintf(j->id, sizeof j->id, "job-%ld", num);
    snprintf(j->name, sizeof j->name, "n\"%ld", num);
    snprintf(j->backend, sizeof j->backend, "tcp");
    j->state = state;
    j->finished_ms = finished_ms;
    j->step = num * 10;
    j->recoveries = (int)num;
    return j;
}

/* The sample at `line` follows a "# TYPE" of its name (a histogram's, for _bucket, _sum and
 * _count) and the family's "# HELP". */
static int typed_before(const char *text, const char *line) {
    char name[96], want[128];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(line, "{ "), line);
    static const char *const suffixes[] = {"", "_bucket", "_sum", "_count"};
    for (int i = 0; i < 4; i++) {
        size_t n = strlen(name), k = strlen(suffixes[i]);
        if (n <= k || strcmp(name + n - k, suffixes[i])) continue;
        snprintf(want, sizeof want, "# TYPE %.*s %s", (int)(n - k), name, i ? "histogram\n" : "");
        const char *t = strstr(text, want);
        snprintf(want, sizeof want, "# HELP %.*s ", (int)(n - k), name);
        const char *h = strstr(text, want);
        if (t && t < line && h && h < t) return 1;
    }
    return 0;
}

/* 8 jobs: 2 active, 6 ended at shuffled times; --metrics-ended-jobs 3 shows the 2 active ones
 * and the 3 that ended last, in submission order. */
static void test_which_jobs(void) {
    struct coordinator co;
    memset(&co, 0, sizeof co);
    const int64_t finished[] = {0, 500, 100, 0, 700, 300, 600, 200};
    struct job *jobs[8];
    for (int i = 0; i < 8; i++)
        jobs[i] = fake_job(i + 1, finished[i] ? MOED__V1__JOB_STATE__JOB_SUCCEEDED
                                              : MOED__V1__JOB_STATE__JOB_RUNNING, finished[i]);
    co.jobs = jobs;
    co.n_jobs = 8;
    co.cfg.metrics_ended_jobs = 3;
    struct job **shown;
    int n;
    EXPECT(metrics_jobs(&co, 3, &shown, &n) == MOE_OK);
    const long want[] = {1, 2, 4, 5, 7}; // running 1, 4; ended last: 5 (700), 7 (600), 2 (500)
    EXPECT(n == 5);
    for (int i = 0; i < n && i < 5; i++) EXPECT_MSG(shown[i]->num == want[i], "%d: job-%ld", i,
                                                    shown[i]->num);
    free(shown);

    char *text;
    size_t len;
    co.started_ms = 1000;
    EXPECT(metrics_render(&co, 2000, &text, &len) == MOE_OK);
    EXPECT(text && strstr(text, "moed_job_step{job_id=\"job-5\"} 50\n") &&
           !strstr(text, "job_id=\"job-3\"") && !strstr(text, "job_id=\"job-6\"") &&
           strstr(text, "moed_job_recoveries_total{job_id=\"job-7\"} 7\n") &&
           strstr(text, "moed_job_info{job_id=\"job-4\",name=\"n\\\"4\",backend=\"tcp\"} 1\n") &&
           strstr(text, "moed_coordinator_jobs{state=\"SUCCEEDED\"} 6\n") &&
           strstr(text, "moed_coordinator_uptime_seconds 1\n"));
    /* every family's samples follow its HELP and TYPE */
    int samples = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (*p != '#') {
            EXPECT_MSG(typed_before(text, p), "no TYPE and HELP before %.60s", p);
            samples++;
        }
    EXPECT(samples > 50);
    free(text);
    for (int i = 0; i < 8; i++) free(jobs[i]);
}

static void test_rpc_counts(void) {
    static const struct rpc_method methods[] = {
        {"/moed.v1.Jobs/SubmitJob", NULL, RPC_UNARY, RPC_AUTH_CLIENT, NULL},
        {"/moed.v1.Cluster/Heartbeat", NULL, RPC_UNARY, RPC_AUTH_IDENTITY, NULL},
    };
    struct coordinator co;
    memset(&co, 0, sizeof co);
    co.rpc_stats = rpc_stats_new(methods, 2);
    EXPECT(co.rpc_stats != NULL);
    rpc_stats_on_done(&co, 1, GRPC_STATUS_OK, 0.002);
    rpc_stats_on_done(&co, 1, GRPC_STATUS_OK, 0.003);
    rpc_stats_on_done(&co, 0, GRPC_STATUS_INVALID_ARGUMENT, 0.0001);
    rpc_stats_on_done(&co, -1, GRPC_STATUS_UNIMPLEMENTED, 0.0001);
    char *text;
    size_t len;
    EXPECT(metrics_render(&co, 0, &text, &len) == MOE_OK);
    EXPECT_MSG(text && strstr(text, "moed_rpc_server_handled_total{service=\"moed.v1.Cluster\","
                                    "method=\"Heartbeat\",code=\"OK\"} 2\n") &&
               strstr(text, "moed_rpc_server_handled_total{service=\"moed.v1.Jobs\",method="
                            "\"SubmitJob\",code=\"INVALID_ARGUMENT\"} 1\n") &&
               strstr(text, "{service=\"unknown\",method=\"unknown\","
                            "code=\"UNIMPLEMENTED\"} 1\n") &&
               strstr(text, "moed_rpc_server_handling_seconds_bucket{service=\"moed.v1.Cluster\","
                            "method=\"Heartbeat\",le=\"0.005\"} 2\n"),
               "got:\n%s", text ? text : "(none)");
    free(text);
    rpc_stats_free(co.rpc_stats);
}

int main(void) {
    test_escaping();
    test_values();
    test_histogram();
    test_which_jobs();
    test_rpc_counts();
    if (failures) printf("%d checks failed\n", failures);
    else printf("test_metrics: ok\n");
    return failures != 0;
}
