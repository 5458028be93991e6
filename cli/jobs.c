/*
 * jobs.c — moectl's job commands: submit, jobs, status, watch, cancel, delete, fetch, steps,
 * events.
 *
 * Owns: turning a spec file and its overrides into a SubmitJob request, and showing the Jobs
 * service's answers to a person (tables, a live progress line, the mesh's slot table) or to a
 * script (--json: the reply messages, one per line). Exit codes follow moectl.h; watch's
 * comes from the job.
 * Never: validates a spec beyond parsing it (the coordinator is the authority, and answers
 * INVALID_ARGUMENT naming the field), or writes a partial model file.
 */
#include "client.h"
#include "links_text.h"
#include "moectl.h"

#include "../common/clock.h"
#include "../common/fileio.h"
#include "../common/spec.h"
#include "proto/moed.pb-c.h"
#include "../proto/methods.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define RECONNECT_S 60.0   // watch: how long to wait for a coordinator that went away
#define THROTTLE_S 1.0     // watch, not on a terminal: at most one step line per this long
#define REDRAW_S 0.05      // watch, on a terminal: at most 20 redraws a second

static void job_usage(FILE *to, const char *cmd) {
    static const struct {
        const char *cmd, *args;
    } forms[] = {
        {"submit", "SPEC [--set key.path=value ...] [--resume-from JOB] [--json]"},
        {"jobs", "[--active] [--limit N] [--page-size N] [--json]"},
        {"status", "JOB [--json]"},
        {"watch", "JOB [--json]"},
        {"cancel", "JOB [--json]"},
        {"delete", "JOB [--json]"},
        {"fetch", "JOB -o FILE [--json]"},
        {"steps", "JOB [--from STEP] [--json]"},
        {"events", "JOB [--page-size N] [--json]"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        if (strcmp(forms[i].cmd, cmd) == 0)
            fprintf(to, "usage: moectl %s %s\n              " CLIENT_OPTIONS_USAGE "\n", cmd,
                    forms[i].args);
}

/* What a job command was given: the connection options and --json, and where it has them,
 * options of its own (`extra`, ended by an all-zero entry; getopt letters `shorts`) that
 * take_extra stores in ctx, returning 0 or -1 (a usage error). */
#define JOB_MAX_EXTRA 4
struct job_args {
    struct client_args common;
    const struct option *extra;
    const char *shorts;
    int (*take_extra)(void *ctx, int opt, const char *arg);
    void *ctx;
};

static int take_job_option(void *ctx, int opt, const char *arg) {
    struct job_args *a = ctx;
    int r = client_take_option(&a->common, opt, arg);
    return r < 0 && a->take_extra ? a->take_extra(a->ctx, opt, arg) : r;
}

/* Reads a job command's options. 1: go on, optind at the first of exactly `operands`
 * operands; 0: stop with *code (EXIT_OK after --help). */
static int parse_args(int argc, char **argv, struct job_args *a, int operands, int *code) {
    struct option opts[JOB_MAX_EXTRA + 7] = {CLIENT_LONG_OPTIONS, {"json", no_argument, 0, 'j'},
                                             {"help", no_argument, 0, 'h'}};
    for (int i = 0; a->extra && i < JOB_MAX_EXTRA && a->extra[i].name; i++)
        opts[6 + i] = a->extra[i];
    char shorts[16];
    snprintf(shorts, sizeof shorts, "jh%s", a->shorts ? a->shorts : "");
    const struct command_line cmd = {opts, shorts, job_usage, take_job_option, a, operands};
    return moectl_options(argc, argv, &cmd, code);
}

/* ---- submit ---- */

struct submit_ctx {
    const char **sets;
    int n_sets;
    const char *resume_from; // --resume-from JOB: start from that job's export
};

static int take_set(void *ctx, int c, const char *arg) {
    struct submit_ctx *s = ctx;
    if (c == 'r') {
        s->resume_from = arg;
        return 0;
    }
    if (c != 's') return -1;
    s->sets[s->n_sets++] = arg;
    return 0;
}

/* p (a SPEC_PATH_MAX buffer, spec field `field`) made absolute from cwd; "" stays "". */
static int absolute_path(char *p, const char *cwd, const char *field) {
    if (p[0] == '/' || p[0] == 0) return 0;
    const char *rel = p;
    while (rel[0] == '.' && rel[1] == '/') rel += 2;
    char abs[SPEC_PATH_MAX + PATH_MAX + 2];
    snprintf(abs, sizeof abs, "%s/%s", cwd, rel);
    if (strlen(abs) >= SPEC_PATH_MAX)
        return moectl_fail(EXIT_BAD_INPUT, "spec: %s: %s is longer than %d bytes once made "
                           "absolute", field, abs, SPEC_PATH_MAX - 1);
    memcpy(p, abs, strlen(abs) + 1);
    return 0;
}

/* Data and model paths as `moectl train` would read them: relative to the current directory,
 * which the daemons do not share. */
static int absolute_sources(struct job_spec *spec) {
    char cwd[PATH_MAX], field[64];
    if (!getcwd(cwd, sizeof cwd))
        return moectl_fail(EXIT_RUN_FAILED, "getcwd: %s", strerror(errno));
    for (int i = 0; i < spec->data.n_sources; i++) {
        snprintf(field, sizeof field, "data.sources.%d.path", i);
        int code = absolute_path(spec->data.sources[i].path, cwd, field);
        if (code) return code;
    }
    int code = absolute_path(spec->distill.teacher, cwd, "distill.teacher");
    if (!code) code = absolute_path(spec->run.export_dir, cwd, "run.export_dir");
    return code ? code : absolute_path(spec->run.init_from, cwd, "run.init_from");
}

/* The paths as this machine sees them: one that is not here (or not readable by this user)
 * may be on the workers' hosts, which check every path themselves before the job starts
 * (RunSlot): a note, and the spec goes. One that is here but no file or directory (a device)
 * is surely a mistake: refused. */
static int check_sources_here(const struct job_spec *spec) {
    for (int i = 0; i < spec->data.n_sources && i < SPEC_MAX_SOURCES; i++) {
        moe_status s = spec_check_source(spec, i);
        if (s == MOE_ENOTFOUND)
            fprintf(stderr, "moectl: note: data.sources.%d.path %s is not on this machine; the "
                    "workers will check it\n", i, spec->data.sources[i].path);
        else if (s != MOE_OK)
            return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    }
    return 0;
}

int cmd_submit(int argc, char **argv) {
    static const struct option set[] = {{"set", required_argument, 0, 's'},
                                        {"resume-from", required_argument, 0, 'r'},
                                        {0, 0, 0, 0}};
    struct submit_ctx sc = {calloc((size_t)argc, sizeof(char *)), 0, NULL};
    if (!sc.sets) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    struct job_args a = {.extra = set, .shorts = "s:r:", .take_extra = take_set, .ctx = &sc};
    int code, go_on = parse_args(argc, argv, &a, 1, &code);
    struct job_spec *spec = NULL;
    char *json = NULL;
    ProtobufCMessage *reply = NULL;
    struct client cl = {0};
    if (!go_on) goto exit;
    spec = malloc(sizeof *spec);
    if (!spec) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    spec_defaults(spec);
    moe_status s = spec_load_file(spec, argv[optind]);
    if (s == MOE_OK) s = spec_set_all(spec, sc.sets, (size_t)sc.n_sets);
    if (s != MOE_OK) {
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
        goto exit;
    }
    if (sc.resume_from && (code = client_need_job_id(sc.resume_from))) goto exit;
    if ((code = absolute_sources(spec))) goto exit;
    if ((code = check_sources_here(spec))) goto exit;
    if (!(json = spec_to_json(spec))) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    if ((code = client_open(&cl, &a.common.conn))) goto exit;
    Moed__V1__SubmitJobRequest req = MOED__V1__SUBMIT_JOB_REQUEST__INIT;
    req.spec = json; // overrides are already applied: the coordinator gets one complete spec
    if (sc.resume_from) req.resume_from = (char *)sc.resume_from;
    if ((code = client_call(&cl, RPC_JOBS_SUBMIT_JOB, &req.base, &moed__v1__job_info__descriptor,
                            &reply, NULL)))
        goto exit;
    if (a.common.json)
        client_print_json(reply);
    else
        printf("%s\n", ((const Moed__V1__JobInfo *)reply)->job_id);
exit:
    if (reply) protobuf_c_message_free_unpacked(reply, NULL);
    if (cl.ch) client_close(&cl);
    free(json);
    free(spec);
    free(sc.sets);
    return code;
}

/* ---- jobs ---- */

struct jobs_ctx {
    int active;
    long long limit, page_size; // 0: every job; 0: the coordinator's page size
};

static int take_jobs_option(void *ctx, int c, const char *arg) {
    struct jobs_ctx *j = ctx;
    if (c == 'a') j->active = 1;
    else if (c == 'l') return moectl_parse_int(arg, "--limit", 1, 1LL << 40, &j->limit);
    else if (c == 'p') return moectl_parse_int(arg, "--page-size", 1, 1 << 30, &j->page_size);
    else return -1;
    return 0;
}

/* "12 jobs: 1 running, 2 queued, 6 succeeded, 2 failed, 1 cancelled" (the states it has). */
static void print_job_counts(const Moed__V1__ListJobsResponse *r) {
    const struct {
        int n;
        const char *what;
    } c[] = {{r->running, "running"},     {r->queued, "queued"}, {r->succeeded, "succeeded"},
             {r->failed, "failed"},       {r->cancelled, "cancelled"}};
    int all = r->queued + r->running + r->succeeded + r->failed + r->cancelled, first = 1;
    printf("%d job%s", all, all == 1 ? "" : "s");
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        if (c[i].n) {
            printf("%s %d %s", first ? ":" : ",", c[i].n, c[i].what);
            first = 0;
        }
    printf("\n");
}

static void print_jobs(const Moed__V1__ListJobsResponse *r) {
    long long now = moe_wall_ms();
    printf("%-10s %-16s %-10s %-13s %-8s %-8s %-5s %-10s %s\n", "JOB", "NAME", "STATE", "STEP",
           "LOSS", "VAL", "MESH", "CREATED", "ERROR");
    for (size_t i = 0; i < r->n_jobs; i++) {
        const Moed__V1__JobInfo *j = r->jobs[i];
        char step[48], loss[24] = "-", val[24] = "-", mesh[24] = "-", age[32];
        snprintf(step, sizeof step, "%lld/%lld", (long long)j->step, (long long)j->total_steps);
        if (j->step > 0) snprintf(loss, sizeof loss, "%.4f", j->loss);
        if (j->val_loss > 0) snprintf(val, sizeof val, "%.4f", j->val_loss);
        if (j->pods > 0) snprintf(mesh, sizeof mesh, "%dx%d", j->pods, j->slots);
        moectl_age(age, sizeof age, now - j->created_unix_ms);
        printf("%-10s %-16.16s %-10s %-13s %-8s %-8s %-5s %-10s %.60s\n", j->job_id, j->name,
               client_job_state(j->state), step, loss, val, mesh, strcat(age, " ago"), j->error);
    }
    if (r->next_page_token[0]) // stopped at --limit
        printf("... %zu of %d shown (--limit)\n", r->n_jobs, r->total);
}

/* Every page of ListJobs (up to --limit jobs), as one reply. */
int cmd_jobs(int argc, char **argv) {
    static const struct option opts[] = {{"active", no_argument, 0, 'a'},
                                         {"limit", required_argument, 0, 'l'},
                                         {"page-size", required_argument, 0, 'p'},
                                         {0, 0, 0, 0}};
    struct jobs_ctx jc = {0};
    int code;
    struct job_args a = {.extra = opts, .shorts = "al:p:", .take_extra = take_jobs_option,
                         .ctx = &jc};
    if (!parse_args(argc, argv, &a, 0, &code)) return code;
    struct client cl;
    if ((code = client_open(&cl, &a.common.conn))) return code;
    Moed__V1__ListJobsRequest req = MOED__V1__LIST_JOBS_REQUEST__INIT;
    req.active_only = jc.active;
    req.page_size = (int32_t)jc.page_size;
    ProtobufCMessage *reply = NULL;
    code = client_call_pages(&cl, RPC_JOBS_LIST_JOBS, &req.base,
                             &moed__v1__list_jobs_response__descriptor, "jobs",
                             (size_t)jc.limit, 0, &reply, NULL, 0);
    client_close(&cl);
    if (code) return code;
    Moed__V1__ListJobsResponse *r = (Moed__V1__ListJobsResponse *)reply;
    if (jc.limit && r->n_jobs > (size_t)jc.limit) { // the last page went past it
        for (size_t i = (size_t)jc.limit; i < r->n_jobs; i++)
            moed__v1__job_info__free_unpacked(r->jobs[i], NULL);
        r->n_jobs = (size_t)jc.limit;
        if (!r->next_page_token[0]) r->next_page_token = strdup("more");
    }
    if (a.common.json) {
        client_print_json(reply);
    } else if (!r->n_jobs) {
        printf("no %sjobs (moectl submit SPEC starts one)\n", jc.active ? "active " : "");
    } else {
        print_job_counts(r);
        print_jobs(r);
    }
    protobuf_c_message_free_unpacked(reply, NULL);
    return EXIT_OK;
}

/* ---- shared pieces of status and watch ---- */

/* "max/mean 1.31, shares 27 23 25 25%" (per-expert shares while they fit on a line). */
static void load_text(char *out, size_t cap, const Moed__V1__StepMetrics *m) {
    int n = snprintf(out, cap, "max/mean %.2f", m->load_max_over_mean);
    if (!m->n_expert_load || n < 0 || (size_t)n >= cap) return;
    if (m->n_expert_load <= 16) {
        n += snprintf(out + n, cap - (size_t)n, " [");
        for (size_t e = 0; e < m->n_expert_load && (size_t)n < cap; e++)
            n += snprintf(out + n, cap - (size_t)n, "%s%.0f", e ? " " : "",
                          100.0 * m->expert_load[e]);
        if ((size_t)n < cap) snprintf(out + n, cap - (size_t)n, "]%%");
    } else {
        float lo = m->expert_load[0], hi = lo;
        for (size_t e = 1; e < m->n_expert_load; e++) {
            if (m->expert_load[e] < lo) lo = m->expert_load[e];
            if (m->expert_load[e] > hi) hi = m->expert_load[e];
        }
        snprintf(out + n, cap - (size_t)n, " (%zu experts, shares %.1f..%.1f%%)", m->n_expert_load,
                 100.0 * lo, 100.0 * hi);
    }
}

/* The mesh, one line per slot: who plays it, how far it is, where its time and bytes go.
 * Bytes are this epoch's totals; times are the slot's last step. */
static void print_slots(Moed__V1__SlotStatus *const *slots, size_t n, int job_ended,
                        const char *indent) {
    if (!n) return;
    printf("%s%-4s %-4s %-8s %-5s %-7s %9s %9s %9s %11s  %s\n", indent, "POD", "SLOT", "WORKER",
           "RANK", "STEP", "STEP MS", "COMM MS", "A2A MB", "REDUCE MB", "STATE");
    for (size_t i = 0; i < n; i++) {
        const Moed__V1__SlotStatus *s = slots[i];
        const char *state = !s->worker_id[0] ? "unbound"
                            : s->ended      ? (s->ok ? "done" : "failed")
                            : job_ended     ? "stopped"
                            : s->step > 0   ? "training"
                                            : "starting";
        printf("%s%-4d %-4d %-8s %-5d %-7lld %9.1f %9.1f %9.2f %11.2f  %s%s%.60s\n", indent,
               s->pod, s->slot, s->worker_id[0] ? s->worker_id : "-",
               (int)i, (long long)s->step, // the data-plane rank: pod-major order
               1e3 * s->step_seconds, 1e3 * s->comm_seconds, s->total_bytes_alltoall / 1e6,
               s->total_bytes_allreduce / 1e6, state, s->error[0] ? ": " : "", s->error);
    }
}

/* How each slot reaches its peers in this epoch (docs/dataplane.md, "Transports"). */
static void print_links(Moed__V1__SlotStatus *const *slots, size_t n, int job_ended,
                        const char *indent) {
    size_t known = 0;
    for (size_t i = 0; i < n; i++) known += slots[i]->n_links;
    if (job_ended && !known) return; // a finished job seen by a restarted coordinator
    for (size_t i = 0; i < n; i++) {
        char text[512];
        printf("%s%-9s (%d, %d) %s\n", indent, i ? "" : "links", slots[i]->pod, slots[i]->slot,
               links_text(slots[i], text, sizeof text));
    }
}

/* The busiest slot's share of its last step spent on the data plane (0 without a mesh). */
static double comm_share(Moed__V1__SlotStatus *const *slots, size_t n) {
    double worst = 0;
    for (size_t i = 0; n > 1 && i < n; i++)
        if (slots[i]->step_seconds > 0 && slots[i]->comm_seconds / slots[i]->step_seconds > worst)
            worst = slots[i]->comm_seconds / slots[i]->step_seconds;
    return worst;
}

static void print_event(const Moed__V1__Event *e, const char *indent) {
    char when[16];
    moectl_clock(when, sizeof when, e->unix_ms);
    printf("%s%s %-12s %s\n", indent, when, e->kind, e->message);
}

/* The recovery state of a mesh job: how far its state is safe in other processes' memory,
 * and the failures it came through (docs/recovery.md). */
static void print_recovery(const Moed__V1__JobInfo *j) {
    if (j->pods <= 0 && !j->recoveries && !j->recovering) return;
    char moves[32] = "";
    if (j->moves > 0)
        snprintf(moves, sizeof moves, ", %d move%s", j->moves, j->moves == 1 ? "" : "s");
    printf("  recovery  committed step %lld, %d recover%s%s%s\n", (long long)j->committed_step,
           j->recoveries, j->recoveries == 1 ? "y" : "ies", moves,
           j->recovering ? "; RECOVERING now (fencing, rebinding, restoring)" : "");
    if (j->held_since_unix_ms) { // a partition waited out (docs/recovery.md, "Partitions")
        char when[16], age[32];
        moectl_clock(when, sizeof when, j->held_since_unix_ms);
        moectl_age(age, sizeof age, moe_wall_ms() - j->held_since_unix_ms);
        printf("  held      since %s (%s): %s\n", when, age, j->held);
    }
}

/* What a FAILED or CANCELLED job left on disk, and where a job resumed from (docs/recovery.md,
 * "Export and resume"): "exported step 40: slots 0-1 complete" or "slot 1 missing: ...". */
static void print_export(const Moed__V1__JobInfo *j) {
    if (j->resumed_from[0])
        printf("  resumed   from %s at step %lld\n", j->resumed_from, (long long)j->resumed_step);
    const Moed__V1__ExportManifest *m = j->exported;
    if (!m) return;
    if (m->in_progress) {
        printf("  export    in progress: the survivors are writing the job's state\n");
        return;
    }
    if (m->complete && m->n_slots > 1)
        printf("  export    exported step %lld: slots 0-%d complete\n", (long long)m->step,
               (int)m->n_slots - 1);
    else if (m->complete)
        printf("  export    exported step %lld: slot 0 complete\n", (long long)m->step);
    else if (m->n_slots)
        printf("  export    exported step %lld: %zu of %zu slots; %s\n", (long long)m->step,
               m->n_slots, m->n_slots + m->n_missing, m->why_missing);
    else
        printf("  export    nothing exported: %s\n", m->why_missing);
    for (size_t i = 0; i < m->n_slots; i++)
        printf("            slot %d  %s (%s on %s, %lld bytes, CRC-32C %08x)\n",
               m->slots[i]->slot, m->slots[i]->path, m->slots[i]->worker_id, m->slots[i]->host,
               (long long)m->slots[i]->bytes, m->slots[i]->crc32c);
}

/* ---- status ---- */

/* The shape of every command that names one job and makes one call: parse the options,
 * connect, send a JobRef. With `pages` (a repeated field of the reply) and --json, every page
 * of it is fetched and joined. 1 with *reply set; 0 with *code to exit with. */
static int call_on_job_paged(int argc, char **argv, struct job_args *a, const char *method,
                             const ProtobufCMessageDescriptor *reply_type, const char *pages,
                             ProtobufCMessage **reply, int *code) {
    *reply = NULL;
    if (!parse_args(argc, argv, a, 1, code)) return 0;
    const char *id = argv[optind];
    if ((*code = client_need_job_id(id))) return 0;
    struct client cl;
    if ((*code = client_open(&cl, &a->common.conn))) return 0;
    Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
    req.job_id = (char *)id;
    if (pages && a->common.json)
        *code = client_call_pages(&cl, method, &req.base, reply_type, pages, 0, 0, reply, NULL, 0);
    else
        *code = client_call(&cl, method, &req.base, reply_type, reply, NULL);
    client_close(&cl);
    return *code == EXIT_OK;
}

static int call_on_job(int argc, char **argv, struct job_args *a, const char *method,
                       const ProtobufCMessageDescriptor *reply_type, ProtobufCMessage **reply,
                       int *code) {
    return call_on_job_paged(argc, argv, a, method, reply_type, NULL, reply, code);
}

/* The headline: "job-2 'tiny' RUNNING: step 135/300 (45%), ETA 0:42". */
static void print_headline(const Moed__V1__JobStatus *st) {
    const Moed__V1__JobInfo *j = st->job;
    double pct = j->total_steps > 0 ? 100.0 * (double)j->step / (double)j->total_steps : 0;
    char eta[32] = "";
    if (st->eta_seconds > 0) {
        char d[24];
        moectl_duration(d, sizeof d, st->eta_seconds);
        snprintf(eta, sizeof eta, ", ETA %s", d);
    }
    printf("%s '%s' %s%s: step %lld/%lld (%.0f%%)%s\n", j->job_id, j->name,
           client_job_state(j->state), j->held_since_unix_ms ? ", HELD (partition)" : "",
           (long long)j->step, (long long)j->total_steps, pct, eta);
}

/* The last step's metrics, or without them the job's loss. */
static void print_metrics(const Moed__V1__JobInfo *j, const Moed__V1__StepMetrics *m) {
    if (m) {
        printf("  loss      %.4f (ce %.4f = %.4f bits/byte, aux %.4f, z %.4f", m->loss, m->ce,
               m->bits_per_byte, m->aux, m->z);
        if (m->kl > 0) printf(", kl %.4f", m->kl);
        printf(")");
        if (j->val_loss > 0) printf("   val loss %.4f", j->val_loss);
        printf("\n  speed     %.0f tok/s, %.3f s/step, lr %.2e, grad norm %.3g\n",
               m->tokens_per_second, m->seconds, m->lr, m->grad_norm);
        char load[256];
        load_text(load, sizeof load, m);
        printf("  experts   load %s", load);
        if (m->assignments > 0)
            printf(", dropped %.1f%%", 100.0 * (double)m->dropped / (double)m->assignments);
        printf("\n");
    } else if (j->step > 0) {
        printf("  loss      %.4f", j->loss);
        if (j->val_loss > 0) printf("   val loss %.4f", j->val_loss);
        printf("\n");
    }
}

/* A mesh too big for a slot table: one line per pod (GetJob's summary). */
static void print_pods(const Moed__V1__JobStatus *st) {
    printf("  pods      %d slots in %zu pods, a line each (--json lists every slot)\n",
           st->job->pods * st->job->slots, st->n_pods);
    printf("    %-4s %6s %6s %8s %6s %6s %9s %9s  %s\n", "POD", "BOUND", "ALIVE", "TRAINING",
           "ENDED", "FAILED", "MIN STEP", "MAX STEP", "WORST");
    for (size_t i = 0; i < st->n_pods; i++) {
        const Moed__V1__PodSummary *p = st->pods[i];
        printf("    %-4d %6d %6d %8d %6d %6d %9lld %9lld  %s\n", p->pod, p->bound, p->alive,
               p->training, p->ended, p->failed, (long long)p->min_step, (long long)p->max_step,
               p->worst);
    }
}

/* The mesh: its shape, its recovery state, and a slot table with the expert load, or for a
 * single slot its binding. */
static void print_mesh(const Moed__V1__JobStatus *st) {
    const Moed__V1__JobInfo *j = st->job;
    const Moed__V1__StepMetrics *m = st->last;
    if (j->pods > 0) {
        printf("  mesh      %d pod%s x %d slot%s%s%s", j->pods, j->pods == 1 ? "" : "s", j->slots,
               j->slots == 1 ? "" : "s", j->backend[0] ? ", backend " : "", j->backend);
        if (j->epoch) printf(", epoch %llu", (unsigned long long)j->epoch);
        printf("\n");
    }
    print_recovery(j);
    print_export(j);
    if (st->next_page_token[0]) { // more slots than a page: each pod in a line instead
        print_pods(st);
    } else if (st->n_slots > 1) {
        print_slots(st->slots, st->n_slots, client_job_final(j->state), "    ");
        print_links(st->slots, st->n_slots, client_job_final(j->state), "  ");
        if (m && m->n_expert_load) {
            printf("  expert load (share of assignments, averaged over layers)\n    ");
            for (size_t e = 0; e < m->n_expert_load; e++)
                printf("%se%zu %.1f%%", e ? "  " : "", e, 100.0 * m->expert_load[e]);
            printf("\n");
        }
    }
    for (size_t i = 0; st->n_slots <= 1 && i < j->n_bindings; i++) {
        const Moed__V1__SlotBinding *b = j->bindings[i];
        printf("  %-9s (pod %d, slot %d) on %s at %s\n", i ? "" : "bindings", b->pod, b->slot,
               b->worker_id, b->worker_address);
    }
}

/* When it was created, started and finished; its model, its error, its events. */
static void print_history(const Moed__V1__JobStatus *st) {
    const Moed__V1__JobInfo *j = st->job;
    char when[16], age[32];
    moectl_clock(when, sizeof when, j->created_unix_ms);
    moectl_age(age, sizeof age, moe_wall_ms() - j->created_unix_ms);
    printf("  created   %s (%s ago)", when, age);
    if (j->started_unix_ms) {
        moectl_clock(when, sizeof when, j->started_unix_ms);
        printf(", started %s", when);
    }
    if (j->finished_unix_ms) {
        moectl_clock(when, sizeof when, j->finished_unix_ms);
        printf(", finished %s", when);
    }
    printf("\n");
    if (j->model_bytes > 0)
        printf("  model     %lld bytes (moectl fetch %s -o FILE)\n", (long long)j->model_bytes,
               j->job_id);
    if (j->error[0]) printf("  error     %s\n", j->error);
    if (st->n_events) {
        printf("  events\n");
        for (size_t i = 0; i < st->n_events; i++) print_event(st->events[i], "    ");
    }
}

int cmd_status(int argc, char **argv) {
    struct job_args a = {0};
    ProtobufCMessage *reply;
    int code;
    /* the text shows the first page of slots (a big mesh by pod); --json every page */
    if (!call_on_job_paged(argc, argv, &a, RPC_JOBS_GET_JOB, &moed__v1__job_status__descriptor,
                           "slots job.bindings", &reply, &code))
        return code;
    const Moed__V1__JobStatus *st = (const Moed__V1__JobStatus *)reply;
    if (a.common.json || !st->job) {
        client_print_json(reply);
    } else {
        print_headline(st);
        print_metrics(st->job, st->last);
        print_mesh(st);
        print_history(st);
    }
    protobuf_c_message_free_unpacked(reply, NULL);
    return EXIT_OK;
}

/* ---- watch ---- */

struct watch {
    const char *job_id;
    int json, tty;
    int bar_shown;         // a progress line is on the terminal, to be erased before printing
    char bar[512];
    double drawn_at;       // when the progress line was last drawn
    int drawn_state;
    long long last_step;   // the last step shown (-1: none yet)
    double line_at;        // not a terminal: when the last step line went out
    char pending[512];     // not a terminal: a step line the throttle held back
    struct event_set seen; // events already printed (a reconnect replays recent ones)
    uint64_t table_epoch;  // the epoch whose slot table was printed (a mesh's, once running)
    uint64_t step_epoch;   // the epoch of the steps shown
    int recovering;        // the job was recovering at the last update
    int got_any;           // an update came: a broken stream after that is worth waiting out
    double lost_at;        // when the stream broke; 0 while it is up
};

static int terminal_width(void) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) return ws.ws_col;
    return 80;
}

static void clear_bar(struct watch *w) {
    if (w->bar_shown) printf("\r\033[K");
    w->bar_shown = 0;
}

static void draw_bar(struct watch *w) {
    int width = terminal_width() - 1; // the last column would wrap on some terminals
    printf("\r\033[K%.*s", width, w->bar);
    fflush(stdout);
    w->bar_shown = 1;
}

static void say(struct watch *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct watch *w, const char *fmt, ...) {
    int redraw = w->bar_shown;
    clear_bar(w);
    fflush(stdout);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moectl: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (redraw) draw_bar(w);
}

/* Appends to a fixed buffer, dropping what does not fit. */
struct line {
    char *p;
    size_t cap, n;
};

static void put(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct line *l, const char *fmt, ...) {
    if (l->n + 1 >= l->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(l->p + l->n, l->cap - l->n, fmt, ap);
    va_end(ap);
    if (k > 0) l->n = l->n + (size_t)k < l->cap ? l->n + (size_t)k : l->cap - 1;
}

/* One progress line. On a terminal: a bar, and what matters most first, since a narrow
 * terminal cuts the end off: "job-2 [====>      ]  45% 135/300 ETA 0:42 loss 2.3456 ...".
 * Otherwise a log line: "job-2 step 135/300 (45%) | loss 2.3456 | ... | ETA 0:42". */
static void step_text(char *out, size_t cap, const Moed__V1__JobUpdate *u, int tty) {
    const Moed__V1__JobInfo *j = u->job;
    const Moed__V1__StepMetrics *m = u->last;
    double frac = j->total_steps > 0 ? (double)j->step / (double)j->total_steps : 0;
    if (frac > 1) frac = 1;
    struct line l = {out, cap, 0};
    out[0] = 0;
    char eta[24] = "", load[200] = "";
    if (u->eta_seconds > 0 && !client_job_final(j->state))
        moectl_duration(eta, sizeof eta, u->eta_seconds);
    if (m) load_text(load, sizeof load, m);
    const char *sep = tty ? " " : " | ";
    if (tty) {
        char bar[32];
        moectl_bar(bar, 20, frac);
        put(&l, "%s [%s] %3.0f%% %lld/%lld", j->job_id, bar, 100 * frac, (long long)j->step,
            (long long)j->total_steps);
        if (eta[0]) put(&l, " ETA %s", eta);
    } else {
        put(&l, "%s step %lld/%lld (%.0f%%)", j->job_id, (long long)j->step,
            (long long)j->total_steps, 100 * frac);
    }
    if (j->step > 0) put(&l, "%sloss %.4f", sep, m ? m->loss : j->loss);
    if (j->val_loss > 0) put(&l, " val %.4f", j->val_loss);
    if (m) put(&l, "%s%.0f tok/s%sload %s", sep, m->tokens_per_second, sep, load);
    if (u->n_slots > 1 && j->step > 0) // the slowest slot's share of its step on the data plane
        put(&l, "%scomm %.0f%%", sep, 100 * comm_share(u->slots, u->n_slots));
    if (j->pods > 0 && j->committed_step > 0)
        put(&l, "%scommitted %lld", sep, (long long)j->committed_step);
    if (j->recoveries > 0)
        put(&l, "%s%d recover%s", sep, j->recoveries, j->recoveries == 1 ? "y" : "ies");
    if (j->moves > 0) put(&l, "%s%d move%s", sep, j->moves, j->moves == 1 ? "" : "s");
    if (j->recovering) put(&l, "%sRECOVERING", sep);
    if (!tty && eta[0]) put(&l, "%sETA %s", sep, eta);
}

/* The update's events that were not shown yet, above the progress line, which is drawn
 * again below them. */
static void show_events(struct watch *w, const Moed__V1__JobUpdate *u, int final) {
    for (size_t i = 0; i < u->n_new_events; i++) {
        if (!event_set_add(&w->seen, u->new_events[i])) continue;
        int redraw = w->bar_shown;
        clear_bar(w);
        printf("%s ", u->job->job_id);
        print_event(u->new_events[i], "");
        if (redraw && !final) draw_bar(w);
    }
}

/* A mesh's slot table: once every slot trains (who plays what), and at the end. */
static void show_slot_table(struct watch *w, const Moed__V1__JobUpdate *u, int final) {
    const Moed__V1__JobInfo *j = u->job;
    int all_training = u->n_slots > 1;
    for (size_t i = 0; i < u->n_slots; i++) all_training &= u->slots[i]->step > 0;
    if (u->n_slots <= 1 || !((all_training && w->table_epoch != j->epoch) || final)) return;
    clear_bar(w);
    printf("%s %d x %d mesh, epoch %llu:\n", j->job_id, j->pods, j->slots,
           (unsigned long long)j->epoch);
    print_slots(u->slots, u->n_slots, final, "  ");
    w->table_epoch = j->epoch;
}

/* A recovery returns the job to an earlier step in a new epoch: the replayed steps are
 * shown again, and so is the change into and out of recovering. */
static void follow_recovery(struct watch *w, const Moed__V1__JobUpdate *u, int final) {
    const Moed__V1__JobInfo *j = u->job;
    if (j->epoch != w->step_epoch) {
        w->step_epoch = j->epoch;
        if (j->step < w->last_step) w->last_step = j->step - 1;
    }
    if (j->recovering == w->recovering) return;
    w->recovering = j->recovering;
    if (!w->tty && !final) {
        char line[512];
        step_text(line, sizeof line, u, 0);
        printf("%s\n", line);
    }
}

/* The progress: on a terminal the bar, redrawn at most every REDRAW_S; otherwise a line
 * for each new step, at most one every THROTTLE_S (the last one held back in `pending`). */
static void show_progress(struct watch *w, const Moed__V1__JobUpdate *u, int final) {
    const Moed__V1__JobInfo *j = u->job;
    double now = moe_clock_s();
    if (w->tty) {
        if (j->state == MOED__V1__JOB_STATE__JOB_QUEUED)
            snprintf(w->bar, sizeof w->bar, "%s QUEUED: waiting for free workers", j->job_id);
        else
            step_text(w->bar, sizeof w->bar, u, 1);
        if (!final && (now - w->drawn_at >= REDRAW_S || (int)j->state != w->drawn_state)) {
            draw_bar(w);
            w->drawn_at = now;
            w->drawn_state = (int)j->state;
        }
    } else if (j->step > w->last_step) {
        char line[512];
        step_text(line, sizeof line, u, 0);
        if (now - w->line_at >= THROTTLE_S || final) {
            printf("%s\n", line);
            w->pending[0] = 0;
            w->line_at = now;
        } else {
            snprintf(w->pending, sizeof w->pending, "%s", line);
        }
    }
    if (j->step > w->last_step) w->last_step = j->step;
}

/* "job-2 SUCCEEDED at step 300/300, loss 1.2345; model 1234 bytes (moectl fetch ...)" */
static void show_outcome(struct watch *w, const Moed__V1__JobInfo *j) {
    clear_bar(w);
    printf("%s %s at step %lld/%lld", j->job_id, client_job_state(j->state), (long long)j->step,
           (long long)j->total_steps);
    if (j->step > 0) printf(", loss %.4f", j->loss);
    if (j->val_loss > 0) printf(", val loss %.4f", j->val_loss);
    if (j->recoveries > 0)
        printf(" after %d recover%s", j->recoveries, j->recoveries == 1 ? "y" : "ies");
    if (j->error[0]) printf(": %s", j->error);
    if (j->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED)
        printf("; model %lld bytes (moectl fetch %s -o FILE)", (long long)j->model_bytes,
               j->job_id);
    printf("\n");
}

/* Shows one update; returns the job's state. */
static int watch_update(struct watch *w, const Moed__V1__JobUpdate *u) {
    if (!u->job) return 0;
    const Moed__V1__JobInfo *j = u->job;
    if (w->json) {
        client_print_json(&u->base);
        return j->state;
    }
    int final = client_job_final(j->state);
    /* A step line the throttle held back is older than this update's events: it goes first
     * when nothing else would ever print it. */
    if (final && w->pending[0]) {
        printf("%s\n", w->pending);
        w->pending[0] = 0;
    }
    show_events(w, u, final);
    show_slot_table(w, u, final);
    follow_recovery(w, u, final);
    show_progress(w, u, final);
    if (final) show_outcome(w, j);
    fflush(stdout);
    return j->state;
}

static int retryable(grpc_status_code code) {
    return code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_CANCELLED;
}

/* The stream broke (r: 0 it ended, -1 it failed, saying `why`). A coordinator that restarts
 * comes back with the job where it was: wait for it, up to RECONNECT_S. EXIT_OK to try
 * again; else the exit code, after saying why. */
static int watch_lost(struct watch *w, int r, grpc_status_code status, const char *why) {
    if (r == -1 && (!w->got_any || !retryable(status))) {
        clear_bar(w);
        int code = client_exit_code(status);
        return moectl_fail(code ? code : EXIT_RUN_FAILED, "%s", why);
    }
    double now = moe_clock_s();
    if (!w->lost_at) {
        w->lost_at = now;
        say(w, "lost the coordinator (%s); reconnecting for up to %.0f s", why, RECONNECT_S);
    } else if (now - w->lost_at > RECONNECT_S) {
        clear_bar(w);
        return moectl_fail(EXIT_UNREACHABLE, "gave up after %.0f s without the coordinator: %s",
                           RECONNECT_S, why);
    }
    moe_sleep_s(0.5);
    return EXIT_OK;
}

/* Follows the job's updates until it ends: its last state, or 0 with *code set. */
static int follow(struct watch *w, struct client *cl, int *code) {
    Moed__V1__WatchJobRequest req = MOED__V1__WATCH_JOB_REQUEST__INIT;
    req.job_id = (char *)w->job_id;
    struct rpc_stream *s = NULL;
    int state = 0;
    for (;;) {
        if (!s && rpc_stream_open(&s, cl->ch, RPC_JOBS_WATCH_JOB, &req.base, 0) != MOE_OK) {
            *code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            return 0;
        }
        ProtobufCMessage *msg = NULL;
        struct rpc_result res;
        int r = rpc_stream_next(s, &moed__v1__job_update__descriptor, &msg, &res);
        if (r == 1) {
            if (w->lost_at) say(w, "reconnected to %s", cl->target);
            w->lost_at = 0;
            w->got_any = 1;
            state = watch_update(w, (const Moed__V1__JobUpdate *)msg);
            protobuf_c_message_free_unpacked(msg, NULL);
            if (!client_job_final(state)) continue;
            rpc_stream_close(s);
            return state;
        }
        char why[600];
        snprintf(why, sizeof why, "%s", r == 0 ? "the stream ended before the job did"
                                               : moe_errmsg());
        rpc_stream_close(s);
        s = NULL;
        if ((*code = watch_lost(w, r, res.code, why))) return 0;
    }
}

int cmd_watch(int argc, char **argv) {
    struct job_args a = {0};
    int code;
    if (!parse_args(argc, argv, &a, 1, &code)) return code;
    struct watch w = {.job_id = argv[optind], .json = a.common.json, .last_step = -1,
                      .line_at = -1e9};
    w.tty = !w.json && isatty(STDOUT_FILENO);
    if ((code = client_need_job_id(w.job_id))) return code;
    struct client cl;
    if ((code = client_open(&cl, &a.common.conn))) return code;
    int state = follow(&w, &cl, &code);
    client_close(&cl);
    event_set_free(&w.seen);
    if (code) return code;
    switch (state) {
    case MOED__V1__JOB_STATE__JOB_SUCCEEDED: return EXIT_OK;
    case MOED__V1__JOB_STATE__JOB_CANCELLED: return EXIT_CANCELLED;
    default: return EXIT_RUN_FAILED;
    }
}

/* ---- cancel ---- */

int cmd_cancel(int argc, char **argv) {
    struct job_args a = {0};
    ProtobufCMessage *reply;
    int code;
    if (!call_on_job(argc, argv, &a, RPC_JOBS_CANCEL_JOB, &moed__v1__job_info__descriptor, &reply,
                     &code))
        return code;
    const Moed__V1__JobInfo *j = (const Moed__V1__JobInfo *)reply;
    if (a.common.json)
        client_print_json(reply);
    else
        printf("%s %s at step %lld/%lld\n", j->job_id, client_job_state(j->state),
               (long long)j->step, (long long)j->total_steps);
    protobuf_c_message_free_unpacked(reply, NULL);
    return EXIT_OK;
}

/* ---- delete ---- */

/* An ended job, its steps, events and model go for good (its id is never used again). */
int cmd_delete(int argc, char **argv) {
    struct job_args a = {0};
    ProtobufCMessage *reply;
    int code;
    if (!call_on_job(argc, argv, &a, RPC_JOBS_DELETE_JOB, &moed__v1__empty__descriptor, &reply,
                     &code))
        return code;
    if (a.common.json)
        client_print_json(reply);
    else
        printf("%s deleted\n", argv[optind]);
    protobuf_c_message_free_unpacked(reply, NULL);
    return EXIT_OK;
}

/* ---- fetch ---- */

/* Interrupted mid-transfer: the temporary file goes, so no partial model is ever left. */
static char fetch_tmp[PATH_MAX + 8];
static void fetch_interrupted(int sig) {
    if (fetch_tmp[0]) unlink(fetch_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int take_output(void *ctx, int c, const char *arg) {
    if (c != 'o') return -1;
    *(const char **)ctx = arg;
    return 0;
}

/* A model on its way into fetch_tmp. */
struct fetch {
    const char *id;
    int fd;
    long long written, total; // total: -1 before the first chunk
};

/* One chunk: it must follow the bytes before it, within a total that does not change. */
static int fetch_chunk(struct fetch *f, const Moed__V1__ModelChunk *ch) {
    const char *bad = NULL;
    if (ch->offset != f->written)
        bad = "a chunk out of order";
    else if (ch->total_bytes < 0 || (f->total >= 0 && ch->total_bytes != f->total))
        bad = "a changing total size";
    else if (f->written + (long long)ch->data.len > ch->total_bytes)
        bad = "more bytes than the total size";
    if (bad)
        return moectl_fail(EXIT_RUN_FAILED, "fetch %s: the coordinator sent %s (offset %lld, "
                           "%zu bytes, total %lld, after %lld bytes)", f->id, bad,
                           (long long)ch->offset, ch->data.len, (long long)ch->total_bytes,
                           f->written);
    f->total = ch->total_bytes;
    if (moe_write_all(f->fd, ch->data.data, ch->data.len) != 0)
        return moectl_fail(EXIT_RUN_FAILED, "cannot write %s: %s", fetch_tmp, strerror(errno));
    f->written += (long long)ch->data.len;
    return EXIT_OK;
}

/* The FetchModel stream, every byte of it, into f->fd. An exit code. */
static int fetch_stream(struct client *cl, struct fetch *f) {
    Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
    req.job_id = (char *)f->id;
    struct rpc_stream *s = NULL;
    if (rpc_stream_open(&s, cl->ch, RPC_JOBS_FETCH_MODEL, &req.base, 0) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    int code = EXIT_OK;
    for (;;) {
        ProtobufCMessage *msg = NULL;
        struct rpc_result res;
        int r = rpc_stream_next(s, &moed__v1__model_chunk__descriptor, &msg, &res);
        if (r == 0) break;
        if (r < 0) {
            int c = client_exit_code(res.code);
            if (res.code == GRPC_STATUS_FAILED_PRECONDITION)
                code = moectl_fail(EXIT_RUN_FAILED, "%s has no model to fetch: only a SUCCEEDED "
                                   "job has one (%s)", f->id, moe_errmsg());
            else
                code = client_fail(cl, c ? c : EXIT_RUN_FAILED, &res);
            break;
        }
        code = fetch_chunk(f, (const Moed__V1__ModelChunk *)msg);
        protobuf_c_message_free_unpacked(msg, NULL);
        if (code) break;
    }
    if (!code && (f->total < 0 || f->written != f->total))
        code = moectl_fail(EXIT_RUN_FAILED, "fetch %s: the stream ended after %lld of %lld bytes",
                           f->id, f->written, f->total);
    rpc_stream_close(s);
    return code;
}

/* The whole model is in fetch_tmp: on disk, then under its name. */
static int fetch_commit(struct fetch *f, const char *out) {
    int fd = f->fd;
    f->fd = -1;
    if (fsync(fd) != 0 || close(fd) != 0)
        return moectl_fail(EXIT_RUN_FAILED, "cannot write %s: %s", fetch_tmp, strerror(errno));
    if (rename(fetch_tmp, out) != 0 || moe_sync_parent(out) != 0)
        return moectl_fail(EXIT_RUN_FAILED, "cannot rename %s to %s: %s", fetch_tmp, out,
                           strerror(errno));
    return EXIT_OK;
}

int cmd_fetch(int argc, char **argv) {
    static const struct option output[] = {{"output", required_argument, 0, 'o'}, {0, 0, 0, 0}};
    const char *out = NULL;
    struct job_args a = {.extra = output, .shorts = "o:", .take_extra = take_output, .ctx = &out};
    int code;
    if (!parse_args(argc, argv, &a, 1, &code)) return code;
    struct fetch f = {.id = argv[optind], .fd = -1, .total = -1};
    if ((code = client_need_job_id(f.id))) return code;
    if (!out || !out[0]) return moectl_fail(EXIT_BAD_INPUT, "fetch: -o FILE is required");
    if (strlen(out) + 5 > sizeof fetch_tmp)
        return moectl_fail(EXIT_BAD_INPUT, "fetch: %s: path too long", out);
    struct client cl;
    if ((code = client_open(&cl, &a.common.conn))) return code;

    snprintf(fetch_tmp, sizeof fetch_tmp, "%s.tmp", out);
    f.fd = open(fetch_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) {
        code = moectl_fail(EXIT_RUN_FAILED, "cannot write %s: %s", fetch_tmp, strerror(errno));
        fetch_tmp[0] = 0;
        client_close(&cl);
        return code;
    }
    signal(SIGINT, fetch_interrupted);
    signal(SIGTERM, fetch_interrupted);
    signal(SIGHUP, fetch_interrupted);
    if (!(code = fetch_stream(&cl, &f))) code = fetch_commit(&f, out);
    if (code) {
        if (f.fd >= 0) close(f.fd);
        unlink(fetch_tmp);
    }
    fetch_tmp[0] = 0;
    client_close(&cl);
    if (code) return code;
    if (a.common.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "job_id", f.id);
        cJSON_AddStringToObject(j, "file", out);
        cJSON_AddNumberToObject(j, "bytes", (double)f.written);
        moectl_print_json(j);
    } else {
        printf("moectl: wrote %s: the model of %s, %lld bytes\n", out, f.id, f.written);
    }
    return EXIT_OK;
}

/* ---- steps: the stored loss curve ---- */

static int take_from(void *ctx, int c, const char *arg) {
    if (c != 'f') return -1;
    char *end;
    long v = strtol(arg, &end, 10);
    if (!arg[0] || *end || v < 1) {
        moectl_fail(EXIT_BAD_INPUT, "--from: expected a step >= 1, got '%s'", arg);
        return -1;
    }
    *(long *)ctx = v;
    return 0;
}

int cmd_steps(int argc, char **argv) {
    static const struct option from_step[] = {{"from", required_argument, 0, 'f'}, {0, 0, 0, 0}};
    long from = 1;
    struct job_args a = {.extra = from_step, .shorts = "f:", .take_extra = take_from,
                         .ctx = &from};
    int code;
    if (!parse_args(argc, argv, &a, 1, &code)) return code;
    const char *id = argv[optind];
    if ((code = client_need_job_id(id))) return code;
    struct client cl;
    if ((code = client_open(&cl, &a.common.conn))) return code;
    if (!a.common.json)
        printf("%-7s %-9s %-9s %-8s %-8s %-9s %-9s %-9s %-9s %s\n", "STEP", "LOSS", "CE",
               "BITS/B", "AUX", "LR", "GRAD", "TOK/S", "VAL", "VAL BITS/B");
    for (;;) { // pages of steps until an empty one
        Moed__V1__ListStepsRequest req = MOED__V1__LIST_STEPS_REQUEST__INIT;
        req.job_id = (char *)id;
        req.from_step = from;
        ProtobufCMessage *reply = NULL;
        if ((code = client_call(&cl, RPC_JOBS_LIST_STEPS, &req.base,
                                &moed__v1__list_steps_response__descriptor, &reply, NULL)))
            break;
        const Moed__V1__ListStepsResponse *r = (const Moed__V1__ListStepsResponse *)reply;
        for (size_t i = 0; i < r->n_steps; i++) {
            const Moed__V1__StepMetrics *m = r->steps[i];
            if (a.common.json) {
                client_print_json(&m->base);
            } else {
                char val[24] = "-", vbpb[24] = "-";
                if (m->val_loss > 0) snprintf(val, sizeof val, "%.4f", m->val_loss);
                if (m->val_bits_per_byte > 0)
                    snprintf(vbpb, sizeof vbpb, "%.4f", m->val_bits_per_byte);
                printf("%-7lld %-9.4f %-9.4f %-8.4f %-8.4f %-9.2e %-9.3g %-9.0f %-9s %s\n",
                       (long long)m->step, m->loss, m->ce, m->bits_per_byte, m->aux, m->lr,
                       m->grad_norm, m->tokens_per_second, val, vbpb);
            }
            from = (long)m->step + 1;
        }
        size_t n = r->n_steps;
        protobuf_c_message_free_unpacked(reply, NULL);
        if (!n) break;
    }
    fflush(stdout);
    client_close(&cl);
    return code;
}

/* ---- events: the whole history ---- */

static int take_page_size(void *ctx, int c, const char *arg) {
    if (c != 'p') return -1;
    return moectl_parse_int(arg, "--page-size", 1, 10000, ctx);
}

/* One event: "0  2025-06-01 12:00:03  submitted  job-2 'tiny' ...". */
static void print_event_line(const Moed__V1__Event *e) {
    time_t t = (time_t)(e->unix_ms / 1000);
    struct tm tm;
    char when[32];
    localtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    printf("%-5lld %s  %-16s %s\n", (long long)e->seq, when, e->kind, e->message);
}

/* Every stored event of a job, ListEvents page after page (GetJob has only the latest). */
int cmd_events(int argc, char **argv) {
    static const struct option opts[] = {{"page-size", required_argument, 0, 'p'},
                                         {0, 0, 0, 0}};
    long long page_size = 0; // 0: the coordinator's
    struct job_args a = {.extra = opts, .shorts = "p:", .take_extra = take_page_size,
                         .ctx = &page_size};
    int code;
    if (!parse_args(argc, argv, &a, 1, &code)) return code;
    const char *id = argv[optind];
    if ((code = client_need_job_id(id))) return code;
    struct client cl;
    if ((code = client_open(&cl, &a.common.conn))) return code;
    if (!a.common.json) printf("%-5s %-20s %-16s %s\n", "SEQ", "TIME", "KIND", "MESSAGE");
    for (int64_t from = 0;;) { // pages until an empty one
        Moed__V1__ListEventsRequest req = MOED__V1__LIST_EVENTS_REQUEST__INIT;
        req.job_id = (char *)id;
        req.from_seq = from;
        req.max_events = (int32_t)page_size;
        ProtobufCMessage *reply = NULL;
        if ((code = client_call(&cl, RPC_JOBS_LIST_EVENTS, &req.base,
                                &moed__v1__list_events_response__descriptor, &reply, NULL)))
            break;
        const Moed__V1__ListEventsResponse *r = (const Moed__V1__ListEventsResponse *)reply;
        for (size_t i = 0; i < r->n_events; i++) {
            if (a.common.json) client_print_json(&r->events[i]->base);
            else print_event_line(r->events[i]);
        }
        size_t n = r->n_events;
        int ahead = r->next_seq > from; // a reply that does not move on would loop for ever
        from = r->next_seq;
        protobuf_c_message_free_unpacked(reply, NULL);
        if (!n) break;
        if (!ahead) {
            code = moectl_fail(EXIT_RUN_FAILED, "events: the coordinator's next_seq %lld does "
                               "not move past %lld", (long long)from, (long long)req.from_seq);
            break;
        }
    }
    fflush(stdout);
    client_close(&cl);
    return code;
}
