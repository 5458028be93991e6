/*
 * plot.c — `moectl plot`: the command, and gathering what it draws (see plot.h).
 *
 *   moectl plot JOB -o FILE.svg|FILE.png [--width W] [--height H] [--json]
 *   moectl plot --from-steps STEPS [--from-status STATUS] -o FILE ...
 *
 * From a coordinator: GetJob for the job's facts, ListEvents page after page for every event
 * of its history, then ListSteps page after page for every stored step. Offline: STEPS is what
 * `moectl steps JOB --json` printed, and STATUS (optional) what `moectl status JOB --json`
 * printed. Both ways go through the same JSON readers: a reply is first turned into the JSON
 * those commands print (client_json).
 * An event's place on the step axis is the last step reported before it. A STATUS holds only
 * the coordinator's most recent events, so offline on a long job with many faults the oldest
 * go unmarked (the plot says so).
 * The file is written whole or not at all (a temporary beside it, renamed).
 * Exit codes (moectl.h): 2 for usage, a suffix other than .svg/.png, a size out of bounds, a
 * path that cannot be written, an unknown job or a malformed dump; 4 no coordinator.
 */
#include "client.h"
#include "moectl.h"
#include "plot.h"

#include "../common/fileio.h"
#include "../proto/methods.h"
#include "proto/moed.pb-c.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_WIDTH 1200
#define DEFAULT_HEIGHT 900

/* ---- the data ---- */

moe_status plot_add_step(struct plot_data *d, const struct plot_step *s, const float *load,
                         size_t n_load) {
    if (d->n_steps && s->step <= d->steps[d->n_steps - 1].step)
        return moe_fail(MOE_EFORMAT, "step %ld after step %ld: steps must ascend", s->step,
                        d->steps[d->n_steps - 1].step);
    if (!d->n_experts && n_load) d->n_experts = (int)n_load; // known from the first load
    size_t E = (size_t)d->n_experts;
    if (d->n_steps == d->cap_steps) {
        size_t cap = d->cap_steps ? 2 * d->cap_steps : 256;
        struct plot_step *st = realloc(d->steps, cap * sizeof *st);
        if (st) d->steps = st;
        float *ld = E ? realloc(d->load, cap * E * sizeof *ld) : d->load;
        if (ld) d->load = ld;
        if (!st || (E && !ld)) return moe_fail(MOE_ENOMEM, "out of memory");
        d->cap_steps = cap;
    }
    if (E && !d->load) { // the first load came after steps without one: make room now
        if (!(d->load = malloc(d->cap_steps * E * sizeof *d->load)))
            return moe_fail(MOE_ENOMEM, "out of memory");
        for (size_t k = 0; k < d->n_steps * E; k++) d->load[k] = NAN;
    }
    for (size_t e = 0; e < E; e++) // a step whose expert count differs has no load
        d->load[d->n_steps * E + e] = n_load == E ? load[e] : NAN;
    d->steps[d->n_steps++] = *s;
    return MOE_OK;
}

void plot_data_free(struct plot_data *d) {
    free(d->steps);
    free(d->load);
    free(d->events);
    memset(d, 0, sizeof *d);
}

int plot_format_of(const char *path, enum plot_format *out) {
    const char *dot = strrchr(path, '.');
    if (dot && strcasecmp(dot, ".svg") == 0) *out = PLOT_SVG;
    else if (dot && strcasecmp(dot, ".png") == 0) *out = PLOT_PNG;
    else return -1;
    return 0;
}

/* ---- reading the JSON of `moectl steps --json` and `moectl status --json` ---- */

/* A number, also as client_json writes doubles: raw text with every digit. */
static double jnum(const cJSON *o, const char *name, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsRaw(v)) {
        char *end;
        double x = strtod(v->valuestring, &end);
        return end != v->valuestring && !*end ? x : dflt;
    }
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static void jstr(const cJSON *o, const char *name, char *out, size_t cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    snprintf(out, cap, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* One StepMetrics as JSON. MOE_EFORMAT when it has no step. */
static moe_status add_step_json(struct plot_data *d, const cJSON *m) {
    double step = jnum(m, "step", -1);
    if (!cJSON_IsObject(m) || step < 1)
        return moe_fail(MOE_EFORMAT, "not a step of `moectl steps JOB --json` (no \"step\")");
    double val = jnum(m, "val_loss", 0);
    struct plot_step s = {.step = (long)step, .loss = jnum(m, "loss", NAN),
                          .val_loss = val > 0 ? val : NAN,
                          .tokens_per_s = jnum(m, "tokens_per_second", NAN),
                          .unix_ms = (int64_t)jnum(m, "reported_unix_ms", 0)};
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(m, "expert_load"), *v;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    float *load = n ? malloc(n * sizeof *load) : NULL;
    if (n && !load) return moe_fail(MOE_ENOMEM, "out of memory");
    cJSON_ArrayForEach(v, arr) load[i++] = cJSON_IsNumber(v) ? (float)v->valuedouble : NAN;
    moe_status st = plot_add_step(d, &s, load, n);
    free(load);
    return st;
}

/* Which events get a marker, in what colour; `begins`: a recovery or move starts here (the
 * time of a "recovered" or "moved" is counted from the latest of these). */
static const struct {
    const char *kind;
    enum plot_mark mark;
    int stage, begins;
} marked[] = {
    {"failure", MARK_FAILURE, 0, 1},        {"worker_dead", MARK_FAILURE, 0, 0},
    {"slot_failed", MARK_FAILURE, 0, 0},    {"replica_mismatch", MARK_FAILURE, 0, 0},
    {"failed", MARK_FAILURE, 0, 0},         {"recovering", MARK_RECOVERING, 1, 0},
    {"recovery_resumed", MARK_RECOVERING, 1, 1}, {"recovery_waiting", MARK_RECOVERING, 1, 0},
    {"recovered", MARK_RECOVERED, 0, 0},    {"rebalance", MARK_MOVE, 1, 1},
    {"moving", MARK_MOVE, 1, 0},            {"moved", MARK_MOVE, 0, 0},
    {"reattached", MARK_OTHER, 1, 0},       {"requeued", MARK_OTHER, 1, 0},
    {"cancelled", MARK_OTHER, 1, 0},        {"repairing", MARK_RECOVERING, 1, 1},
    {"repaired", MARK_RECOVERED, 0, 0},
};

/* The events of a JobStatus (oldest first) that get a marker, with how long each recovery or
 * move took. */
static moe_status take_events(struct plot_data *d, const cJSON *events) {
    int n = cJSON_GetArraySize(events);
    if (n && !(d->events = calloc((size_t)n, sizeof *d->events)))
        return moe_fail(MOE_ENOMEM, "out of memory");
    const cJSON *e;
    int64_t began = 0;
    cJSON_ArrayForEach(e, events) {
        char kind[sizeof d->events[0].kind];
        jstr(e, "kind", kind, sizeof kind);
        if (e == events->child) d->events_partial = strcmp(kind, "submitted") != 0;
        for (size_t k = 0; k < sizeof marked / sizeof marked[0]; k++) {
            if (strcmp(kind, marked[k].kind) != 0) continue;
            struct plot_event *pe = &d->events[d->n_events++];
            snprintf(pe->kind, sizeof pe->kind, "%s", kind);
            pe->unix_ms = (int64_t)jnum(e, "unix_ms", 0);
            pe->mark = marked[k].mark;
            pe->stage = marked[k].stage;
            pe->seconds = -1;
            if (marked[k].begins) began = pe->unix_ms;
            int ends = pe->mark == MARK_RECOVERED || strcmp(kind, "moved") == 0;
            if (ends && began) pe->seconds = (double)(pe->unix_ms - began) / 1e3;
            break;
        }
    }
    return MOE_OK;
}

/* A JobStatus as JSON: the title's facts and the events. */
static moe_status take_status_json(struct plot_data *d, const cJSON *st) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(st, "job");
    if (!cJSON_IsObject(j))
        return moe_fail(MOE_EFORMAT, "not the output of `moectl status JOB --json` (no \"job\")");
    jstr(j, "job_id", d->job_id, sizeof d->job_id);
    jstr(j, "name", d->name, sizeof d->name);
    char state[48];
    jstr(j, "state", state, sizeof state);
    snprintf(d->state, sizeof d->state, "%s", strncmp(state, "JOB_", 4) ? state : state + 4);
    jstr(j, "backend", d->backend, sizeof d->backend);
    d->pods = (int)jnum(j, "pods", 0);
    d->slots = (int)jnum(j, "slots", 0);
    d->recoveries = (int)jnum(j, "recoveries", 0);
    d->moves = (int)jnum(j, "moves", 0);
    d->total_steps = (long)jnum(j, "total_steps", 0);
    return take_events(d, cJSON_GetObjectItemCaseSensitive(st, "events"));
}

/* Each event's step: the last step reported at or before it (the first step when none was). */
static void place_events(struct plot_data *d) {
    for (size_t i = 0; i < d->n_events; i++) {
        struct plot_event *e = &d->events[i];
        e->step = d->n_steps ? d->steps[0].step : 0;
        for (size_t k = 0; k < d->n_steps; k++)
            if (d->steps[k].unix_ms && d->steps[k].unix_ms <= e->unix_ms &&
                d->steps[k].step > e->step)
                e->step = d->steps[k].step;
    }
}

/* ---- gathering ---- */

/* A reply as `moectl ... --json` prints it, handed to take(). An exit code. */
static int take_reply(struct plot_data *d, const ProtobufCMessage *m,
                      moe_status (*take)(struct plot_data *, const cJSON *)) {
    cJSON *j = client_json(m);
    moe_status s = j ? take(d, j) : moe_fail(MOE_ENOMEM, "out of memory");
    cJSON_Delete(j);
    return s == MOE_OK ? EXIT_OK : moectl_fail(EXIT_RUN_FAILED, "plot: %s", moe_errmsg());
}

/* Every stored step of job `id`, page after page (as `moectl steps`). An exit code. */
static int gather_steps(struct client *cl, const char *id, struct plot_data *d) {
    long from = 1;
    for (;;) {
        Moed__V1__ListStepsRequest req = MOED__V1__LIST_STEPS_REQUEST__INIT;
        req.job_id = (char *)id;
        req.from_step = from;
        ProtobufCMessage *reply = NULL;
        int code = client_call(cl, RPC_JOBS_LIST_STEPS, &req.base,
                               &moed__v1__list_steps_response__descriptor, &reply, NULL);
        if (code) return code;
        const Moed__V1__ListStepsResponse *r = (const Moed__V1__ListStepsResponse *)reply;
        size_t n = r->n_steps;
        for (size_t i = 0; i < n && !code; i++) {
            code = take_reply(d, &r->steps[i]->base, add_step_json);
            from = (long)r->steps[i]->step + 1;
        }
        protobuf_c_message_free_unpacked(reply, NULL);
        if (code || !n) return code;
    }
}

/* Every event of job `id` (ListEvents, page after page) in place of GetJob's latest ones, as
 * the JSON array a JobStatus holds. An exit code. */
static int gather_events(struct client *cl, const char *id, struct plot_data *d) {
    cJSON *all = cJSON_CreateArray();
    int code = all ? EXIT_OK : moectl_fail(EXIT_RUN_FAILED, "plot: out of memory");
    for (int64_t from = 0; !code;) {
        Moed__V1__ListEventsRequest req = MOED__V1__LIST_EVENTS_REQUEST__INIT;
        req.job_id = (char *)id;
        req.from_seq = from;
        ProtobufCMessage *reply = NULL;
        if ((code = client_call(cl, RPC_JOBS_LIST_EVENTS, &req.base,
                                &moed__v1__list_events_response__descriptor, &reply, NULL)))
            break;
        const Moed__V1__ListEventsResponse *r = (const Moed__V1__ListEventsResponse *)reply;
        size_t n = r->n_events;
        for (size_t i = 0; i < n && !code; i++) {
            cJSON *e = client_json(&r->events[i]->base);
            if (!e || !cJSON_AddItemToArray(all, e))
                code = moectl_fail(EXIT_RUN_FAILED, "plot: out of memory");
        }
        int ahead = r->next_seq > from;
        from = r->next_seq;
        protobuf_c_message_free_unpacked(reply, NULL);
        if (!n) break;
        if (!code && !ahead)
            code = moectl_fail(EXIT_RUN_FAILED, "plot: ListEvents does not move past seq %lld",
                               (long long)from);
    }
    if (!code) {
        free(d->events);
        d->events = NULL;
        d->n_events = 0;
        if (take_events(d, all) != MOE_OK) code = moectl_fail(EXIT_RUN_FAILED, "plot: %s",
                                                               moe_errmsg());
        d->events_partial = 0; // the whole history: nothing is left unmarked
    }
    cJSON_Delete(all);
    return code;
}

/* The job (GetJob: its facts), its events, then its steps. An exit code. */
static int gather_job(const struct client_options *conn, const char *id, struct plot_data *d) {
    int code = client_need_job_id(id);
    struct client cl;
    if (code || (code = client_open(&cl, conn))) return code;
    Moed__V1__JobRef req = MOED__V1__JOB_REF__INIT;
    req.job_id = (char *)id;
    ProtobufCMessage *reply = NULL;
    code = client_call(&cl, RPC_JOBS_GET_JOB, &req.base, &moed__v1__job_status__descriptor,
                       &reply, NULL);
    if (!code) code = take_reply(d, reply, take_status_json);
    if (reply) protobuf_c_message_free_unpacked(reply, NULL);
    if (!code) code = gather_events(&cl, id, d);
    if (!code) code = gather_steps(&cl, id, d);
    client_close(&cl);
    return code;
}

/* A file of JSON documents, one a line, each handed to take(). An exit code. */
static int read_json_lines(const char *path, struct plot_data *d,
                           moe_status (*take)(struct plot_data *, const cJSON *)) {
    FILE *fp = fopen(path, "r");
    if (!fp) return moectl_fail(EXIT_BAD_INPUT, "plot: cannot read %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t cap = 0;
    long n = 0;
    int code = EXIT_OK;
    while (!code && getline(&text, &cap, fp) >= 0) {
        n++;
        if (!text[strspn(text, " \t\r\n")]) continue;
        cJSON *j = cJSON_Parse(text);
        if (!j || take(d, j) != MOE_OK)
            code = moectl_fail(EXIT_BAD_INPUT, "plot: %s:%ld: %s", path, n,
                               j ? moe_errmsg() : "not JSON");
        cJSON_Delete(j);
    }
    free(text);
    fclose(fp);
    return code;
}

/* ---- the command ---- */

struct plot_args {
    struct client_args common;
    const char *out, *from_steps, *from_status;
    long long width, height;
};

static void plot_usage(FILE *to, const char *cmd) {
    (void)cmd;
    fprintf(to, "usage: moectl plot JOB -o FILE.svg|FILE.png [--width W] [--height H] [--json]\n"
                "              " CLIENT_OPTIONS_USAGE "\n"
                "       moectl plot --from-steps STEPS [--from-status STATUS] -o FILE ...\n"
                "  the loss and held-out loss, tokens/s and expert load against step, with the\n"
                "  job's failures, recoveries and moves marked; the format from FILE's suffix.\n"
                "  STEPS: the output of `moectl steps JOB --json`, STATUS: of `moectl status JOB\n"
                "  --json`. W in [%d, %d] (default %d), H in [%d, %d] (default %d) pixels\n",
            PLOT_MIN_WIDTH, PLOT_MAX_SIDE, DEFAULT_WIDTH, PLOT_MIN_HEIGHT, PLOT_MAX_SIDE,
            DEFAULT_HEIGHT);
}

enum { OPT_WIDTH = 0x200, OPT_HEIGHT, OPT_FROM_STEPS, OPT_FROM_STATUS };

static int take_plot_option(void *ctx, int opt, const char *arg) {
    struct plot_args *a = ctx;
    switch (opt) {
    case 'o': a->out = arg; return 0;
    case OPT_FROM_STEPS: a->from_steps = arg; return 0;
    case OPT_FROM_STATUS: a->from_status = arg; return 0;
    case OPT_WIDTH:
        return moectl_parse_int(arg, "--width", PLOT_MIN_WIDTH, PLOT_MAX_SIDE, &a->width);
    case OPT_HEIGHT:
        return moectl_parse_int(arg, "--height", PLOT_MIN_HEIGHT, PLOT_MAX_SIDE, &a->height);
    default: return client_take_option(&a->common, opt, arg);
    }
}

/* Whether argv names --from-steps: then there is no JOB operand. */
static int offline(int argc, char **argv) {
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strncmp(argv[i], "--from-steps", 12) == 0) return 1;
    return 0;
}

/* The file being written, for cairo's stream callback. */
static int write_out(void *closure, const unsigned char *data, unsigned n) {
    return moe_atomic_write(closure, data, n) == MOE_OK ? 0 : -1;
}

/* What was drawn: one line for a person, or a JSON object with the axis and the markers. */
static int print_result(const struct plot_args *a, const struct plot_data *d,
                        const struct plot_layout *l) {
    if (!a->common.json) {
        printf("moectl: wrote %s: %s, %zu steps, %d experts, %zu events marked\n", a->out,
               d->job_id[0] ? d->job_id : d->source, d->n_steps, d->n_experts, d->n_events);
        return EXIT_OK;
    }
    cJSON *j = cJSON_CreateObject(), *marks = cJSON_AddArrayToObject(j, "markers");
    cJSON_AddStringToObject(j, "file", a->out);
    cJSON_AddStringToObject(j, "job_id", d->job_id);
    cJSON_AddNumberToObject(j, "width", (double)a->width);
    cJSON_AddNumberToObject(j, "height", (double)a->height);
    cJSON_AddNumberToObject(j, "steps", (double)d->n_steps);
    cJSON_AddNumberToObject(j, "experts", d->n_experts);
    cJSON_AddNumberToObject(j, "step_axis_start", l->s0);
    cJSON_AddNumberToObject(j, "step_axis_end", l->s1);
    cJSON_AddNumberToObject(j, "x_axis_start", l->x0);
    cJSON_AddNumberToObject(j, "x_axis_end", l->x1);
    cJSON_AddNumberToObject(j, "y_top", l->top);
    cJSON_AddNumberToObject(j, "y_bottom", l->bottom);
    cJSON_AddBoolToObject(j, "events_partial", d->events_partial);
    for (size_t i = 0; marks && i < d->n_events; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "kind", d->events[i].kind);
        cJSON_AddStringToObject(m, "mark", plot_mark_name(d->events[i].mark));
        cJSON_AddNumberToObject(m, "step", (double)d->events[i].step);
        cJSON_AddNumberToObject(m, "x", l->marker_x ? l->marker_x[i] : -1);
        cJSON_AddNumberToObject(m, "seconds", d->events[i].seconds);
        cJSON_AddItemToArray(marks, m);
    }
    if (moectl_print_json(j) != 0) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    return EXIT_OK;
}

/* Reads the options. 1: go on; 0: stop with *code. */
static int plot_options(int argc, char **argv, struct plot_args *a, enum plot_format *fmt,
                        int *code) {
    static const struct option opts[] = {CLIENT_LONG_OPTIONS,
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {"output", required_argument, 0, 'o'},
                                         {"width", required_argument, 0, OPT_WIDTH},
                                         {"height", required_argument, 0, OPT_HEIGHT},
                                         {"from-steps", required_argument, 0, OPT_FROM_STEPS},
                                         {"from-status", required_argument, 0, OPT_FROM_STATUS},
                                         {0, 0, 0, 0}};
    const struct command_line cl = {opts, "jho:", plot_usage, take_plot_option, a,
                                    offline(argc, argv) ? 0 : 1};
    if (!moectl_options(argc, argv, &cl, code)) return 0;
    if (!a->out || !a->out[0]) *code = moectl_fail(EXIT_BAD_INPUT, "plot: -o FILE is required");
    else if (plot_format_of(a->out, fmt) != 0)
        *code = moectl_fail(EXIT_BAD_INPUT, "plot: -o %s: the format comes from the suffix: "
                            ".svg or .png", a->out);
    else if (a->from_status && !a->from_steps)
        *code = moectl_fail(EXIT_BAD_INPUT, "plot: --from-status goes with --from-steps");
    return *code == EXIT_OK;
}

/* The data, from the coordinator or from the files. An exit code. */
static int gather(const struct plot_args *a, const char *job, struct plot_data *d) {
    if (!a->from_steps) return gather_job(&a->common.conn, job, d);
    snprintf(d->source, sizeof d->source, "%s", a->from_steps);
    int code = a->from_status ? read_json_lines(a->from_status, d, take_status_json) : 0;
    if (!code) code = read_json_lines(a->from_steps, d, add_step_json);
    if (!code && !d->job_id[0]) snprintf(d->job_id, sizeof d->job_id, "steps");
    return code;
}

int cmd_plot(int argc, char **argv) {
    struct plot_args a = {.width = DEFAULT_WIDTH, .height = DEFAULT_HEIGHT};
    enum plot_format fmt = PLOT_SVG;
    int code;
    if (!plot_options(argc, argv, &a, &fmt, &code)) return code;
    const char *job = a.from_steps ? NULL : argv[optind];
    struct moe_atomic_file file; // first, so that a path we cannot write costs no RPC
    if (moe_atomic_begin(&file, a.out, 0644) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "plot: %s", moe_errmsg());
    struct plot_data d = {0};
    struct plot_layout l = {0};
    code = gather(&a, job, &d);
    if (!code) {
        place_events(&d);
        if (plot_draw(&d, fmt, (int)a.width, (int)a.height, write_out, &file, &l) != MOE_OK ||
            moe_atomic_commit(&file) != MOE_OK)
            code = moectl_fail(EXIT_RUN_FAILED, "plot: %s", moe_errmsg());
    }
    moe_atomic_abort(&file); // after a commit: nothing left to drop
    if (!code) code = print_result(&a, &d, &l);
    free(l.marker_x);
    plot_data_free(&d);
    return code;
}
