/*
 * test_spec.c — the job spec: defaults, YAML and JSON parsing, overrides, validation, the
 * round trip through spec_to_yaml / spec_to_json, and hostile input.
 *
 * Every check prints what failed; main returns non-zero if any did. Temporary data files live
 * in a mkdtemp directory that is removed at the end.
 */
#include "common/spec.h"
#include "common/status.h"
#include "check.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A failure with status `want` whose message is one "spec: " line containing every needle. */
static void expect_error(int line, const char *what, moe_status got, moe_status want,
                         const char *needle1, const char *needle2) {
    const char *msg = moe_errmsg();
    int ok = got == want && strncmp(msg, "spec: ", 6) == 0 && !strchr(msg, '\n') &&
             (!needle1 || strstr(msg, needle1)) && (!needle2 || strstr(msg, needle2));
    if (!ok) {
        fprintf(stderr,
                "FAIL %s:%d: %s: got status %s, message \"%s\"; wanted %s with \"%s\"%s%s%s\n",
                __FILE__, line, what, moe_status_str(got), got == MOE_OK ? "" : msg,
                moe_status_str(want), needle1 ? needle1 : "", needle2 ? " and \"" : "",
                needle2 ? needle2 : "", needle2 ? "\"" : "");
        failures++;
    }
}
#define EXPECT_ERROR(call, want, n1, n2) expect_error(__LINE__, #call, (call), (want), (n1), (n2))

#define EXPECT_OK(call)                                                                           \
    do {                                                                                          \
        moe_status st_ = (call);                                                                  \
        if (st_ != MOE_OK) {                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, moe_errmsg());     \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

static moe_status parse(struct job_spec *s, const char *text) {
    return spec_parse(s, text, strlen(text), "job.yaml");
}

static moe_status setf(struct job_spec *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static moe_status setf(struct job_spec *s, const char *fmt, ...) {
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return spec_set(s, buf);
}

/* ---- the temporary directory ------------------------------------------------------------- */

static char tmpdir[64];
static char file_a[128], file_b[128], corpus_dir[128], corpus_file[128];

static void write_file(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    if (!fp) {
        perror(path);
        exit(1);
    }
    fputs(text, fp);
    fclose(fp);
}

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_spec.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(file_a, sizeof file_a, "%s/a.txt", tmpdir);
    snprintf(file_b, sizeof file_b, "%s/b c.txt", tmpdir);
    snprintf(corpus_dir, sizeof corpus_dir, "%s/corpus", tmpdir);
    snprintf(corpus_file, sizeof corpus_file, "%s/corpus/one.txt", tmpdir);
    write_file(file_a, "the quick brown fox\n");
    write_file(file_b, "jumps over the lazy dog\n");
    mkdir(corpus_dir, 0755);
    write_file(corpus_file, "text\n");
}

static void remove_tmpdir(void) {
    unlink(corpus_file);
    rmdir(corpus_dir);
    unlink(file_a);
    unlink(file_b);
    if (rmdir(tmpdir) != 0) perror(tmpdir);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_defaults(void) {
    struct job_spec s;
    spec_defaults(&s);
    EXPECT(strcmp(s.name, "moe-job") == 0);
    EXPECT(s.model.vocab == 256 && s.model.d_model == 128 && s.model.n_layers == 2);
    EXPECT(s.model.n_heads == 4 && s.model.seq_len == 128 && s.model.n_experts == 4);
    EXPECT(s.model.d_ff == 256 && s.model.init_std == 0.02f && s.model.rope_base == 10000.0f);
    EXPECT(s.model.norm_eps == 1e-5f);
    EXPECT(s.model.top_k == 2 && s.model.capacity_factor == 1.25f && s.model.dropless == 0);
    EXPECT(s.model.aux_loss_coef == 0.01f && s.model.z_loss_coef == 0.001f);
    EXPECT(s.model.bias_balancing == 0 && s.model.bias_update_rate == 0.001f);
    EXPECT(s.optimizer.lr == 3e-3f && s.optimizer.min_lr == 3e-4f);
    EXPECT(s.optimizer.warmup_steps == 20 && s.optimizer.total_steps == 300);
    EXPECT(s.optimizer.beta1 == 0.9f && s.optimizer.beta2 == 0.95f && s.optimizer.eps == 1e-8f);
    EXPECT(s.optimizer.weight_decay == 0.1f && s.optimizer.grad_clip == 1.0f);
    EXPECT(s.data.n_sources == 0 && s.data.n_schedule == 0 && s.data.val_fraction == 0.05);
    EXPECT(s.run.steps == 300 && s.run.batch_size == 16 && s.run.seed == 1234);
    EXPECT(strcmp(s.run.output, "model.safetensors") == 0);
    EXPECT(s.run.log_every == 10 && s.run.eval_every == 100 && s.run.eval_batches == 16);

    /* The defaults lack only a source. */
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.sources: at least one source is required",
                 NULL);
    EXPECT_OK(setf(&s, "data.sources.0.path=%s", file_a));
    EXPECT_OK(spec_validate(&s));
}

static const char *full_yaml =
    "# a spec that changes every field\n"
    "name: full-test\n"
    "model:\n"
    "  vocab: 300\n"
    "  d_model: 64\n"
    "  layers: 3\n"
    "  heads: 8\n"
    "  seq_len: 32\n"
    "  experts: 8\n"
    "  d_ff: 96\n"
    "  init_std: 0.01\n"
    "  rope_base: 500000\n"
    "  norm_eps: 1e-6\n"
    "router:\n"
    "  top_k: 1\n"
    "  capacity_factor: 2\n"
    "  dropless: yes\n"
    "  aux_loss_coef: 0\n"
    "  z_loss_coef: 1e-4\n"
    "  bias_balancing: on\n"
    "  bias_update_rate: 0.01\n"
    "optimizer:\n"
    "  lr: 1e-3\n"
    "  min_lr: 1e-5\n"
    "  warmup_steps: 5\n"
    "  beta1: 0.8\n"
    "  beta2: 0.99\n"
    "  eps: 1e-10\n"
    "  weight_decay: 0\n"
    "  grad_clip: 0\n"
    "data:\n"
    "  sources:\n"
    "    - path: %s\n"
    "      weight: 3\n"
    "    - {path: \"%s\"}\n"
    "  schedule:\n"
    "    - step: 10\n"
    "      weights: [1, 0]\n"
    "    - {step: 20, weights: [0.5, 2.5]}\n"
    "  val_fraction: 0.1\n"
    "run:\n"
    "  steps: 50\n"
    "  batch_size: 4\n"
    "  seed: 18446744073709551615\n"
    "  output: \"out dir/model #1.safetensors\"\n"
    "  log_every: 1\n"
    "  eval_every: 0\n"
    "  eval_batches: 2\n";

static const char *full_json =
    "{\"name\": \"full-test\",\n"
    " \"model\": {\"vocab\": 300, \"d_model\": 64, \"layers\": 3, \"heads\": 8, \"seq_len\": 32,\n"
    "           \"experts\": 8, \"d_ff\": 96, \"init_std\": 0.01, \"rope_base\": 500000,\n"
    "           \"norm_eps\": 1e-6},\n"
    " \"router\": {\"top_k\": 1, \"capacity_factor\": 2.0, \"dropless\": true,\n"
    "            \"aux_loss_coef\": 0, \"z_loss_coef\": 1e-4, \"bias_balancing\": true,\n"
    "            \"bias_update_rate\": 0.01},\n"
    " \"optimizer\": {\"lr\": 1e-3, \"min_lr\": 1e-5, \"warmup_steps\": 5, \"beta1\": 0.8,\n"
    "               \"beta2\": 0.99, \"eps\": 1e-10, \"weight_decay\": 0, \"grad_clip\": 0},\n"
    " \"data\": {\"sources\": [{\"path\": \"%s\", \"weight\": 3}, {\"path\": \"%s\"}],\n"
    "          \"schedule\": [{\"step\": 10, \"weights\": [1, 0]},\n"
    "                       {\"step\": 20, \"weights\": [0.5, 2.5]}],\n"
    "          \"val_fraction\": 0.1},\n"
    " \"run\": {\"steps\": 50, \"batch_size\": 4, \"seed\": 18446744073709551615,\n"
    "         \"output\": \"out dir/model #1.safetensors\", \"log_every\": 1,\n"
    "         \"eval_every\": 0, \"eval_batches\": 2}}\n";

static void check_full(const struct job_spec *s) {
    EXPECT(strcmp(s->name, "full-test") == 0);
    EXPECT(s->model.vocab == 300 && s->model.d_model == 64 && s->model.n_layers == 3);
    EXPECT(s->model.n_heads == 8 && s->model.seq_len == 32 && s->model.n_experts == 8);
    EXPECT(s->model.d_ff == 96 && s->model.init_std == 0.01f && s->model.rope_base == 500000.0f);
    EXPECT(s->model.norm_eps == 1e-6f);
    EXPECT(s->model.top_k == 1 && s->model.capacity_factor == 2.0f && s->model.dropless == 1);
    EXPECT(s->model.aux_loss_coef == 0 && s->model.z_loss_coef == 1e-4f);
    EXPECT(s->model.bias_balancing == 1 && s->model.bias_update_rate == 0.01f);
    EXPECT(s->optimizer.lr == 1e-3f && s->optimizer.min_lr == 1e-5f);
    EXPECT(s->optimizer.warmup_steps == 5 && s->optimizer.total_steps == 50);
    EXPECT(s->optimizer.beta1 == 0.8f && s->optimizer.beta2 == 0.99f);
    EXPECT(s->optimizer.eps == 1e-10f && s->optimizer.weight_decay == 0);
    EXPECT(s->optimizer.grad_clip == 0);
    EXPECT(s->data.n_sources == 2);
    EXPECT(strcmp(s->data.sources[0].path, file_a) == 0 && s->data.sources[0].weight == 3.0);
    EXPECT(strcmp(s->data.sources[1].path, file_b) == 0 && s->data.sources[1].weight == 1.0);
    EXPECT(s->data.n_schedule == 2);
    EXPECT(s->data.schedule[0].step == 10 && s->data.schedule[0].weights[0] == 1.0 &&
           s->data.schedule[0].weights[1] == 0.0);
    EXPECT(s->data.schedule[1].step == 20 && s->data.schedule[1].weights[0] == 0.5 &&
           s->data.schedule[1].weights[1] == 2.5);
    EXPECT(s->data.val_fraction == 0.1);
    EXPECT(s->run.steps == 50 && s->run.batch_size == 4 && s->run.seed == UINT64_MAX);
    EXPECT(strcmp(s->run.output, "out dir/model #1.safetensors") == 0);
    EXPECT(s->run.log_every == 1 && s->run.eval_every == 0 && s->run.eval_batches == 2);
}

static void load_full(struct job_spec *s, const char *format) {
    char text[4096];
    snprintf(text, sizeof text, format, file_a, file_b);
    spec_defaults(s);
    EXPECT_OK(parse(s, text));
}

static void test_parse_full(void) {
    struct job_spec s;
    load_full(&s, full_yaml);
    check_full(&s);
    EXPECT_OK(spec_validate(&s));

    load_full(&s, full_json);
    check_full(&s);
    EXPECT_OK(spec_validate(&s));

    /* A partial spec changes only what it names. */
    struct job_spec d;
    spec_defaults(&s);
    spec_defaults(&d);
    EXPECT_OK(parse(&s, "router:\n  top_k: 1\n"));
    d.model.top_k = 1;
    EXPECT(memcmp(&s, &d, sizeof s) == 0);
}

/* parse(to_yaml(s)) == s and parse(to_json(s)) == s, starting from an unrelated spec so that
 * every field must really have been written. */
static int round_trips(const struct job_spec *s, const char *label) {
    char *texts[2] = {spec_to_yaml(s), spec_to_json(s)};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        struct job_spec back;
        load_full(&back, i ? full_yaml : full_json);
        if (!texts[i]) {
            fprintf(stderr, "FAIL %s: spec_to_%s returned NULL\n", label, i ? "json" : "yaml");
            ok = 0;
            continue;
        }
        moe_status st = spec_parse(&back, texts[i], strlen(texts[i]), "round-trip");
        if (st != MOE_OK || memcmp(&back, s, sizeof back) != 0) {
            size_t at = 0;
            while (at < sizeof back && ((char *)&back)[at] == ((const char *)s)[at]) at++;
            fprintf(stderr, "FAIL %s: %s does not round-trip (%s; first byte differing: %zu)\n%s\n",
                    label, i ? "json" : "yaml", st ? moe_errmsg() : "fields differ", at, texts[i]);
            ok = 0;
        }
    }
    free(texts[0]);
    free(texts[1]);
    if (!ok) failures++;
    return ok;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void) { // splitmix64: reproducible everywhere
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static long rnd_in(long lo, long hi) { return lo + (long)(rnd() % (uint64_t)(hi - lo + 1)); }

/* Any finite float from its bits, then folded into [lo, hi] (lo itself allowed only if
 * closed); printed with %.9g, which reads back as the same float. */
static float rnd_float(float lo, float hi, int lo_open) {
    for (;;) {
        uint32_t bits = (uint32_t)rnd();
        float f;
        memcpy(&f, &bits, sizeof f);
        if (!isfinite(f)) continue;
        if (rnd() % 4 == 0) f = (float)rnd_in(0, 20) / 8; // plain values too
        if (f >= lo && f <= hi && !(lo_open && f == lo)) return f;
    }
}

static double rnd_double(double lo, double hi, int lo_open) {
    for (;;) {
        uint64_t bits = rnd() & ~(1ull << 63);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (rnd() % 4 == 0) d = (double)rnd_in(0, 20) / 8;
        if (isfinite(d) && d >= lo && d <= hi && !(lo_open && d == lo)) return d;
    }
}

/* A string that is hard to write as YAML: quotes, backslashes, indicators, look-alikes of
 * numbers and bools, leading and trailing blanks, non-ASCII. Returned as a YAML double-quoted
 * scalar (for --set) in `quoted`, and raw in `raw`. */
static void rnd_string(char *raw, size_t n, char *quoted, size_t qn) {
    static const char *const pieces[] = {
        "a", "model", "/tmp/x", " ", "\"", "\\", "#", " #", ": ", "- ", "{", "}", "[", "]",
        "&", "*", "!", "%", "@", "`", "'", ",", "?", "|", ">", "true", "null", "~", "123",
        "1e5", "0x1F", "é", "日本", "\xf0\x9f\x98\x80", "---", "...", "\xe2\x80\xa8"};
    size_t len = 0, parts = (size_t)rnd_in(1, 12);
    raw[0] = '\0';
    for (size_t i = 0; i < parts; i++) {
        const char *p = pieces[rnd() % (sizeof pieces / sizeof pieces[0])];
        if (len + strlen(p) >= n) break;
        memcpy(raw + len, p, strlen(p) + 1);
        len += strlen(p);
    }
    size_t q = 0;
    quoted[q++] = '"';
    for (const char *p = raw; *p && q + 4 < qn; p++) {
        if (strncmp(p, "\xe2\x80\xa8", 3) == 0) { // YAML folds a raw line separator
            quoted[q++] = '\\';
            quoted[q++] = 'L';
            p += 2;
            continue;
        }
        if (*p == '"' || *p == '\\') quoted[q++] = '\\';
        quoted[q++] = *p;
    }
    quoted[q++] = '"';
    quoted[q] = '\0';
}

/* A random spec that passes every per-field check (not necessarily the cross-field ones),
 * built through spec_set so that the test needs no knowledge of how the lists are stored. */
static void random_spec(struct job_spec *s) {
    char raw[128], quoted[300];
    spec_defaults(s);
    rnd_string(raw, sizeof raw, quoted, sizeof quoted);
    EXPECT_OK(setf(s, "name=%s", quoted));
    EXPECT_OK(setf(s, "model.vocab=%ld", rnd_in(2, 65536)));
    EXPECT_OK(setf(s, "model.d_model=%ld", rnd_in(1, 65536)));
    EXPECT_OK(setf(s, "model.layers=%ld", rnd_in(1, 1024)));
    EXPECT_OK(setf(s, "model.heads=%ld", rnd_in(1, 64)));
    EXPECT_OK(setf(s, "model.seq_len=%ld", rnd_in(1, 1 << 20)));
    EXPECT_OK(setf(s, "model.experts=%ld", rnd_in(1, 4096)));
    EXPECT_OK(setf(s, "model.d_ff=%ld", rnd_in(1, 1 << 20)));
    EXPECT_OK(setf(s, "model.init_std=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "model.rope_base=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "model.norm_eps=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "router.top_k=%ld", rnd_in(1, 4096)));
    EXPECT_OK(setf(s, "router.capacity_factor=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "router.dropless=%s", rnd() % 2 ? "true" : "false"));
    EXPECT_OK(setf(s, "router.aux_loss_coef=%.9g", rnd_float(0, INFINITY, 0)));
    EXPECT_OK(setf(s, "router.z_loss_coef=%.9g", rnd_float(0, INFINITY, 0)));
    EXPECT_OK(setf(s, "router.bias_balancing=%s", rnd() % 2 ? "on" : "off"));
    EXPECT_OK(setf(s, "router.bias_update_rate=%.9g", rnd_float(0, INFINITY, 0)));
    EXPECT_OK(setf(s, "optimizer.lr=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "optimizer.min_lr=%.9g", rnd_float(0, INFINITY, 0)));
    EXPECT_OK(setf(s, "optimizer.warmup_steps=%ld", rnd_in(0, 2147483647)));
    EXPECT_OK(setf(s, "optimizer.beta1=%.9g", rnd_float(0, nextafterf(1, 0), 0)));
    EXPECT_OK(setf(s, "optimizer.beta2=%.9g", rnd_float(0, nextafterf(1, 0), 0)));
    EXPECT_OK(setf(s, "optimizer.eps=%.9g", rnd_float(0, INFINITY, 1)));
    EXPECT_OK(setf(s, "optimizer.weight_decay=%.9g", rnd_float(0, INFINITY, 0)));
    EXPECT_OK(setf(s, "optimizer.grad_clip=%.9g", rnd_float(-INFINITY, INFINITY, 0)));
    long n_sources = rnd_in(0, SPEC_MAX_SOURCES);
    for (long i = 0; i < n_sources; i++) {
        rnd_string(raw, sizeof raw, quoted, sizeof quoted);
        EXPECT_OK(setf(s, "data.sources.%ld.path=%s", i, quoted));
        if (rnd() % 2)
            EXPECT_OK(setf(s, "data.sources.%ld.weight=%.17g", i, rnd_double(0, 1e300, 1)));
    }
    char schedule[16384] = "data.schedule=[";
    long n_points = rnd_in(0, SPEC_MAX_SCHEDULE), step = 0;
    for (long i = 0; i < n_points; i++) {
        step += rnd_in(1, 1000);
        size_t len = strlen(schedule);
        snprintf(schedule + len, sizeof schedule - len, "%s{step: %ld, weights: [", i ? ", " : "",
                 step);
        long n_weights = n_sources ? n_sources : rnd_in(1, SPEC_MAX_SOURCES);
        for (long j = 0; j < n_weights; j++) {
            len = strlen(schedule);
            snprintf(schedule + len, sizeof schedule - len, "%s%.17g", j ? ", " : "",
                     rnd() % 3 ? rnd_double(0, 1e10, 0) : 0.0);
        }
        strcat(schedule, "]}");
    }
    strcat(schedule, "]");
    EXPECT_OK(spec_set(s, schedule));
    EXPECT_OK(setf(s, "data.val_fraction=%.17g", rnd_double(0, 0.5, 0)));
    EXPECT_OK(setf(s, "run.steps=%ld", rnd_in(1, 2147483647)));
    EXPECT_OK(setf(s, "run.batch_size=%ld", rnd_in(1, 1 << 20)));
    EXPECT_OK(setf(s, "run.seed=%llu", (unsigned long long)rnd()));
    rnd_string(raw, sizeof raw, quoted, sizeof quoted);
    EXPECT_OK(setf(s, "run.output=%s", quoted));
    EXPECT(strcmp(s->run.output, raw) == 0);
    EXPECT_OK(setf(s, "run.log_every=%ld", rnd_in(1, 2147483647)));
    EXPECT_OK(setf(s, "run.eval_every=%ld", rnd_in(0, 2147483647)));
    EXPECT_OK(setf(s, "run.eval_batches=%ld", rnd_in(1, 1 << 20)));
}

static void test_round_trip(void) {
    struct job_spec s;
    spec_defaults(&s);
    round_trips(&s, "defaults");
    load_full(&s, full_yaml);
    round_trips(&s, "full spec");
    for (int i = 0; i < 300; i++) {
        random_spec(&s);
        char label[32];
        snprintf(label, sizeof label, "random spec %d", i);
        if (!round_trips(&s, label)) break; // one printed spec is enough to debug
    }
}

static void test_writers(void) {
    struct job_spec s;
    spec_defaults(&s);
    char *yaml = spec_to_yaml(&s);
    EXPECT(yaml != NULL);
    if (!yaml) return;
    EXPECT(strstr(yaml, "  sources: []") && strstr(yaml, "# REQUIRED: e.g."));
    EXPECT(strstr(yaml, "  lr: 0.003 ") && strstr(yaml, "  norm_eps: 1e-05 "));
    EXPECT(strstr(yaml, "  seed: 1234 ") && strstr(yaml, "name: \"moe-job\" "));
    /* Every line but the header carries a comment. */
    for (char *line = yaml, *end; *line; line = end + 1) {
        end = strchr(line, '\n');
        if (!end) break;
        *end = '\0';
        if (line[0] != '#' && !strstr(line, " # ")) {
            fprintf(stderr, "FAIL %s:%d: uncommented line: %s\n", __FILE__, __LINE__, line);
            failures++;
        }
        *end = '\n';
    }
    free(yaml);

    load_full(&s, full_yaml);
    char *json = spec_to_json(&s);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    EXPECT(root != NULL);
    if (root) {
        cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        cJSON *run = cJSON_GetObjectItemCaseSensitive(root, "run");
        cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
        cJSON *sources = cJSON_GetObjectItemCaseSensitive(data, "sources");
        EXPECT(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(model, "d_model")) == 64);
        EXPECT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(root, "router"), "dropless")));
        EXPECT(cJSON_GetArraySize(sources) == 2);
        EXPECT(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetArrayItem(sources, 1), "path")),
                      file_b) == 0);
        EXPECT(strstr(json, "18446744073709551615") != NULL); // the seed, exactly
        EXPECT(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(run, "steps")) == 50);
        cJSON_Delete(root);
    }
    free(json);
}

struct bad_case {
    const char *text;
    moe_status want;
    const char *needle1, *needle2;
};

static void test_bad_input(void) {
    char long_output[3000] = "run:\n  output: ";
    memset(long_output + strlen(long_output), 'x', 2000);
    char many_sources[2048] = "data:\n  sources:\n";
    for (int i = 0; i < 17; i++) strcat(many_sources, "    - {path: a}\n");

    const struct bad_case cases[] = {
        {"model:\n  vocab: 256\n  d_modle: 64\n", MOE_EINVAL,
         "spec: model.d_modle: unknown field", "(in job.yaml line 3)"},
        {"optimizer:\n  lr: -0.1\n", MOE_EINVAL, "spec: optimizer.lr = -0.1: must be > 0", NULL},
        {"router:\n  top_k: two\n", MOE_EINVAL,
         "spec: router.top_k: expected an integer, got 'two'", "line 2"},
        {"model:\n  layers: 2.5\n", MOE_EINVAL,
         "model.layers: expected an integer, got '2.5'", NULL},
        {"model:\n  vocab: [1]\n", MOE_EINVAL,
         "model.vocab: expected an integer, got a list", NULL},
        {"model: [1, 2]\n", MOE_EINVAL, "model: expected a mapping", NULL},
        {"- 1\n- 2\n", MOE_EINVAL, "top level: expected a mapping", NULL},
        {"just text\n", MOE_EINVAL, "top level: expected a mapping", NULL},
        {"foo: 1\n", MOE_EINVAL, "spec: foo: unknown field", NULL},
        {"model:\n  vocab: 1\n", MOE_EINVAL, "model.vocab = 1: must be in [2, 65536]", NULL},
        {"model:\n  vocab: 99999999999999999999999\n", MOE_EINVAL,
         "model.vocab = 99999999999999999999999: must be in [2, 65536]", NULL},
        {"model:\n  d_model: -99999999999999999999999\n", MOE_EINVAL,
         "model.d_model", "must be in"},
        {"run:\n  steps: 9223372036854775808\n", MOE_EINVAL, "run.steps", "must be in"},
        {"run:\n  steps: 3000000000\n", MOE_EINVAL, "run.steps = 3000000000", "2147483647"},
        {"run:\n  steps: 0\n", MOE_EINVAL, "run.steps = 0: must be in [1, ", NULL},
        {"run:\n  seed: 18446744073709551616\n", MOE_EINVAL,
         "run.seed = 18446744073709551616", NULL},
        {"run:\n  seed: -1\n", MOE_EINVAL, "run.seed: expected a non-negative integer", NULL},
        {"optimizer:\n  beta1: 1\n", MOE_EINVAL, "optimizer.beta1 = 1: must be in [0, 1)", NULL},
        {"optimizer:\n  beta2: 0.99999999\n", MOE_EINVAL, "optimizer.beta2", "[0, 1)"},
        {"optimizer:\n  lr: 1e999\n", MOE_EINVAL, "optimizer.lr = 1e999", NULL},
        {"optimizer:\n  lr: 1e39\n", MOE_EINVAL, "optimizer.lr = 1e39: out of range", NULL},
        {"optimizer:\n  lr: .nan\n", MOE_EINVAL, "optimizer.lr: expected a number", NULL},
        {"optimizer:\n  lr: 0x10\n", MOE_EINVAL, "optimizer.lr: expected a number", NULL},
        {"optimizer:\n  lr: inf\n", MOE_EINVAL, "optimizer.lr: expected a number", NULL},
        {"optimizer:\n  eps: 0\n", MOE_EINVAL, "optimizer.eps = 0: must be > 0", NULL},
        {"optimizer:\n  weight_decay: -1\n", MOE_EINVAL,
         "optimizer.weight_decay = -1: must be >= 0", NULL},
        {"optimizer:\n  total_steps: 5\n", MOE_EINVAL,
         "optimizer.total_steps: unknown field", NULL},
        {"router:\n  dropless: maybe\n", MOE_EINVAL,
         "router.dropless: expected true or false", NULL},
        {"router:\n  capacity_factor: 0\n", MOE_EINVAL,
         "router.capacity_factor = 0: must be > 0", NULL},
        {"name: \"\"\n", MOE_EINVAL, "name: must not be empty", NULL},
        {"name: \"a\\tb\"\n", MOE_EINVAL, "name", "control characters"},
        {long_output, MOE_EINVAL, "run.output: too long", NULL},
        {"model:\n  vocab: 256\n  vocab: 512\n", MOE_EINVAL, "model.vocab: given twice", "line 3"},
        {"data:\n  sources:\n    - {weight: 2}\n", MOE_EINVAL,
         "data.sources.0.path: required", NULL},
        {"data:\n  sources:\n    - {path: a}\n    - {path: b, colour: red}\n", MOE_EINVAL,
         "data.sources.1.colour: unknown field", "line 4"},
        {"data:\n  sources: a.txt\n", MOE_EINVAL, "data.sources: expected a list", NULL},
        {"data:\n  sources:\n    - a.txt\n", MOE_EINVAL,
         "data.sources.0: expected a mapping", NULL},
        {"data:\n  sources:\n    - {path: a, weight: 0}\n", MOE_EINVAL,
         "data.sources.0.weight = 0: must be > 0", NULL},
        {"data:\n  sources:\n    - {path: a, path: b}\n", MOE_EINVAL,
         "data.sources.0.path: given twice", NULL},
        {many_sources, MOE_EINVAL, "data.sources: 17 sources, at most 16", NULL},
        {"data:\n  schedule:\n    - {step: 0, weights: [1]}\n", MOE_EINVAL,
         "data.schedule.0.step = 0: must be in [1, ", NULL},
        {"data:\n  schedule:\n    - {step: 5, weights: [1, -1]}\n", MOE_EINVAL,
         "data.schedule.0.weights.1 = -1: must be >= 0", NULL},
        {"data:\n  schedule:\n    - {step: 5}\n", MOE_EINVAL,
         "data.schedule.0.weights: required", NULL},
        {"data:\n  schedule:\n    - {step: 5, weights: []}\n", MOE_EINVAL,
         "data.schedule.0.weights: 0 weights", NULL},
        {"data:\n  schedule:\n    - {step: 5, weights: 1}\n", MOE_EINVAL,
         "data.schedule.0.weights: expected a list of numbers", NULL},
        {"data:\n  val_fraction: 0.6\n", MOE_EINVAL,
         "data.val_fraction = 0.6: must be in [0, 0.5]", NULL},
        {"? [a]\n: 1\n", MOE_EINVAL, "keys must be names", NULL},
        {"\"model\\0x\": 1\n", MOE_EINVAL, "model?x: unknown field", NULL},
        {"model:\n  vocab: 256\n d_model: 3\n", MOE_EFORMAT, "malformed", "(in job.yaml line 3)"},
        {"{\"model\": {\"vocab\": 256,}\n", MOE_EFORMAT, "malformed", "job.yaml"},
        {"model: {vocab: 256\n", MOE_EFORMAT, "malformed", NULL},
        {"a: 1\n---\nb: 2\n", MOE_EFORMAT, "more than one document", NULL},
        {"model: *undefined\n", MOE_EFORMAT, "malformed", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct job_spec s, before;
        spec_defaults(&s);
        memcpy(&before, &s, sizeof s);
        moe_status st = parse(&s, cases[i].text);
        char what[64];
        snprintf(what, sizeof what, "bad case %zu", i);
        expect_error(__LINE__, what, st, cases[i].want, cases[i].needle1, cases[i].needle2);
        if (memcmp(&s, &before, sizeof s) != 0) {
            fprintf(stderr, "FAIL %s:%d: bad case %zu changed the spec\n", __FILE__, __LINE__, i);
            failures++;
        }
    }

    /* Without an origin the line is still given. */
    struct job_spec s;
    spec_defaults(&s);
    const char *text = "router:\n  top_k: two\n";
    EXPECT_ERROR(spec_parse(&s, text, strlen(text), NULL), MOE_EINVAL, "router.top_k", "(line 2)");
}

static void test_validate(void) {
    struct job_spec base, s;
    load_full(&base, full_yaml);
    EXPECT_OK(spec_validate(&base));

#define FRESH() memcpy(&s, &base, sizeof s)
    FRESH();
    EXPECT_OK(spec_set(&s, "model.experts=4"));
    EXPECT_OK(spec_set(&s, "router.top_k=5"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "spec: router.top_k = 5 exceeds model.experts = 4",
                 NULL);
    FRESH();
    EXPECT_OK(spec_set(&s, "model.d_model=130"));
    EXPECT_OK(spec_set(&s, "model.heads=4"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "model.d_model = 130", "model.heads = 4");
    FRESH();
    EXPECT_OK(spec_set(&s, "model.d_model=12"));
    EXPECT_OK(spec_set(&s, "model.heads=4"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "model.d_model / model.heads", "even");
    FRESH();
    EXPECT_OK(spec_set(&s, "model.vocab=100"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "model.vocab = 100", "256");
    FRESH();
    EXPECT_OK(spec_set(&s, "optimizer.min_lr=0.01"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL,
                 "optimizer.min_lr = 0.01 exceeds optimizer.lr = 0.001", NULL);
    FRESH();
    EXPECT_OK(spec_set(&s, "data.sources=[]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.sources: at least one source is required",
                 NULL);
    FRESH();
    EXPECT_OK(spec_set(&s, "data.sources.0.path=/x/y"));
    EXPECT_OK(spec_validate(&s)); // validation touches no file: a daemon must not tell
    EXPECT_ERROR(spec_check_source(&s, 0), MOE_ENOTFOUND,
                 "spec: data.sources.0.path: /x/y: No such file or directory", NULL);
    FRESH();
    EXPECT_OK(spec_set(&s, "data.sources.1.path=/dev/null"));
    EXPECT_OK(spec_validate(&s));
    EXPECT_OK(spec_check_source(&s, 0));
    EXPECT_ERROR(spec_check_source(&s, 1), MOE_EINVAL, "data.sources.1.path: /dev/null",
                 "not a file");
    FRESH();
    EXPECT_OK(setf(&s, "data.sources.1.path=%s", corpus_dir)); // a directory is a source
    EXPECT_OK(spec_validate(&s));
    if (geteuid() != 0) { // root reads anything
        FRESH();
        chmod(file_a, 0);
        EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.sources.0.path", "Permission denied");
        chmod(file_a, 0644);
    }

    /* Specs edited in code get the per-field checks too. */
    FRESH();
    s.optimizer.lr = 0;
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "spec: optimizer.lr = 0: must be > 0", NULL);
    FRESH();
    s.optimizer.beta2 = NAN;
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "optimizer.beta2", NULL);
    FRESH();
    s.model.dropless = 2;
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "router.dropless = 2", NULL);
    FRESH();
    memset(s.name, 'x', sizeof s.name);
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "spec: name: not NUL-terminated", NULL);
    FRESH();
    strcpy(s.run.output, "bad\xff.bin");
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "run.output", "UTF-8");
    FRESH();
    s.data.n_sources = 99;
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.sources: 99 sources", NULL);
    FRESH();
    s.data.n_schedule = -1;
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule", NULL);
#undef FRESH
}

static void test_schedule(void) {
    struct job_spec s;
    load_full(&s, full_yaml);
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1, 0]},"
                           " {step: 200, weights: [0, 1]}]"));
    EXPECT(s.data.n_schedule == 2 && s.data.schedule[1].step == 200);
    EXPECT(s.data.schedule[1].weights[0] == 0 && s.data.schedule[1].weights[1] == 1);
    EXPECT_OK(spec_validate(&s));

    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1, 0]},"
                           " {step: 100, weights: [0, 1]}]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.1.step = 100", "increase");
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 300, weights: [1, 0]},"
                           " {step: 200, weights: [0, 1]}]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.1.step = 200", "increase");
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [0, 0]}]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.0.weights: all zero", NULL);
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1, 2, 3]}]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.0.weights: 3 weights for 2 sources",
                 NULL);
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1]}]"));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.0.weights: 1 weights for 2 sources",
                 NULL);

    /* Adding a source makes the schedule one weight short until it is rewritten. */
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1, 0]}]"));
    EXPECT_OK(setf(&s, "data.sources.2.path=%s", corpus_dir));
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.schedule.0.weights: 2 weights for 3 sources",
                 NULL);
    EXPECT_OK(spec_set(&s, "data.schedule=[{step: 100, weights: [1, 0, 0.5]}]"));
    EXPECT_OK(spec_validate(&s));

    EXPECT_OK(spec_set(&s, "data.schedule=[]"));
    EXPECT(s.data.n_schedule == 0);
    EXPECT_OK(spec_validate(&s));

    /* Schedules written in code: over spec_defaults (as the trainer's test does), and over a
     * zeroed struct, whose trailing zero weights change nothing. Both validate; the first
     * round-trips exactly, the second to the same weights (its unused slots read back in the
     * form spec_defaults gives them). */
    struct job_spec coded;
    spec_defaults(&coded);
    coded.data.n_sources = 2;
    snprintf(coded.data.sources[0].path, SPEC_PATH_MAX, "%s", file_a);
    coded.data.sources[0].weight = 1;
    snprintf(coded.data.sources[1].path, SPEC_PATH_MAX, "%s", file_b);
    coded.data.sources[1].weight = 0.5;
    coded.data.n_schedule = 1;
    coded.data.schedule[0].step = 6;
    coded.data.schedule[0].weights[0] = 0.2;
    coded.data.schedule[0].weights[1] = 1.0;
    EXPECT_OK(spec_validate(&coded));
    round_trips(&coded, "schedule over spec_defaults");
    char *yaml = spec_to_yaml(&coded);
    EXPECT(yaml && strstr(yaml, "weights: [0.2, 1]}"));
    free(yaml);
    coded.data.schedule[0].weights[1] = -1; // unset in this encoding
    EXPECT_ERROR(spec_validate(&coded), MOE_EINVAL, "data.schedule.0.weights: 1 weights", NULL);

    memset(&coded.data.schedule, 0, sizeof coded.data.schedule);
    coded.data.n_schedule = 1;
    coded.data.schedule[0].step = 6;
    coded.data.schedule[0].weights[0] = 0.2;
    coded.data.schedule[0].weights[1] = 1.0;
    EXPECT_OK(spec_validate(&coded));
    yaml = spec_to_yaml(&coded);
    struct job_spec back;
    spec_defaults(&back);
    EXPECT(yaml && spec_parse(&back, yaml, strlen(yaml), "zeros") == MOE_OK);
    EXPECT_OK(spec_validate(&back));
    EXPECT(back.data.n_schedule == 1 && back.data.schedule[0].step == 6);
    EXPECT(memcmp(back.data.schedule[0].weights, coded.data.schedule[0].weights,
                  sizeof back.data.schedule[0].weights) == 0);
    free(yaml);
    coded.data.schedule[0].weights[2] = 3;
    EXPECT_ERROR(spec_validate(&coded), MOE_EINVAL, "data.schedule.0.weights: 3 weights for 2", NULL);

    char many[4096] = "data.schedule=[";
    for (int i = 0; i < SPEC_MAX_SCHEDULE + 1; i++) {
        char point[64];
        snprintf(point, sizeof point, "%s{step: %d, weights: [1]}", i ? ", " : "", i + 1);
        strcat(many, point);
    }
    strcat(many, "]");
    EXPECT_ERROR(spec_set(&s, many), MOE_EINVAL, "data.schedule: 33 points, at most 32", NULL);
}

static void test_set(void) {
    struct job_spec s, before;
    spec_defaults(&s);
    EXPECT_OK(spec_set(&s, "router.top_k=1"));
    EXPECT(s.model.top_k == 1);
    EXPECT_OK(spec_set(&s, "run.steps = 1000"));
    EXPECT(s.run.steps == 1000 && s.optimizer.total_steps == 1000);
    EXPECT_OK(spec_set(&s, "optimizer.lr=3e-4"));
    EXPECT(s.optimizer.lr == 3e-4f);
    EXPECT_OK(spec_set(&s, "router.dropless=yes"));
    EXPECT(s.model.dropless == 1);
    EXPECT_OK(spec_set(&s, "data.val_fraction=0.2"));
    EXPECT(s.data.val_fraction == 0.2);
    EXPECT_OK(spec_set(&s, "run.seed=18446744073709551615"));
    EXPECT(s.run.seed == UINT64_MAX);
    EXPECT_OK(spec_set(&s, "name=my job"));
    EXPECT(strcmp(s.name, "my job") == 0);
    EXPECT_OK(spec_set(&s, "name=\"quoted: # job\""));
    EXPECT(strcmp(s.name, "quoted: # job") == 0);

    /* Sources: index n_sources appends one with the default weight. */
    EXPECT_OK(setf(&s, "data.sources.0.path=%s", file_a));
    EXPECT(s.data.n_sources == 1 && s.data.sources[0].weight == 1.0);
    EXPECT(strcmp(s.data.sources[0].path, file_a) == 0);
    EXPECT_OK(spec_set(&s, "data.sources.1.weight=2.5"));
    EXPECT(s.data.n_sources == 2 && s.data.sources[1].weight == 2.5);
    EXPECT_ERROR(spec_validate(&s), MOE_EINVAL, "data.sources.1.path: must not be empty", NULL);
    EXPECT_OK(setf(&s, "data.sources.1.path=%s", file_b));
    EXPECT_OK(spec_validate(&s));
    EXPECT_OK(spec_set(&s, "data.sources.0.weight=4"));
    EXPECT(s.data.n_sources == 2 && s.data.sources[0].weight == 4.0);

    memcpy(&before, &s, sizeof s);
    EXPECT_ERROR(spec_set(&s, "data.sources.3.path=x"), MOE_EINVAL,
                 "data.sources.3.path: no source 3", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.2.weight=0"), MOE_EINVAL,
                 "data.sources.2.weight = 0: must be > 0", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.x.path=a"), MOE_EINVAL,
                 "data.sources.x.path: unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.-1.path=a"), MOE_EINVAL, "unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.99999999999999999999.path=a"), MOE_EINVAL,
                 "unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.0.colour=red"), MOE_EINVAL,
                 "data.sources.0.colour: unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources.0=x"), MOE_EINVAL, "unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "router.top_k=two"), MOE_EINVAL,
                 "spec: router.top_k: expected an integer, got 'two'", NULL);
    EXPECT_ERROR(spec_set(&s, "router.top_k=2.5"), MOE_EINVAL, "router.top_k: expected an integer",
                 NULL);
    EXPECT_ERROR(spec_set(&s, "router.top_k="), MOE_EINVAL,
                 "router.top_k: expected an integer, got ''", NULL);
    EXPECT_ERROR(spec_set(&s, "model.d_modle=3"), MOE_EINVAL, "spec: model.d_modle: unknown field",
                 NULL);
    EXPECT_ERROR(spec_set(&s, "model=3"), MOE_EINVAL, "spec: model: unknown field", NULL);
    EXPECT_ERROR(spec_set(&s, "run.steps"), MOE_EINVAL, "expected key.path=value", NULL);
    EXPECT_ERROR(spec_set(&s, "=5"), MOE_EINVAL, "expected key.path=value", NULL);
    EXPECT_ERROR(spec_set(&s, "name="), MOE_EINVAL, "name: must not be empty", NULL);
    EXPECT_ERROR(spec_set(&s, "run.steps=0"), MOE_EINVAL, "run.steps = 0", NULL);
    EXPECT_ERROR(spec_set(&s, "run.steps=99999999999999999999"), MOE_EINVAL, "run.steps", NULL);
    EXPECT_ERROR(spec_set(&s, "router.top_k=[1,"), MOE_EFORMAT, "router.top_k: malformed value",
                 NULL);
    EXPECT_ERROR(spec_set(&s, "router.top_k=[1]"), MOE_EINVAL,
                 "router.top_k: expected an integer, got a list", NULL);
    EXPECT_ERROR(spec_set(&s, " run.steps=5"), MOE_EINVAL, "expected key.path=value", NULL);
    EXPECT_ERROR(spec_set(&s, "data.sources=[{path: a}, {colour: b}]"), MOE_EINVAL,
                 "data.sources.1.colour: unknown field", NULL);
    EXPECT(memcmp(&s, &before, sizeof s) == 0); // failed overrides change nothing

    /* A whole list replaces the old one. */
    EXPECT_OK(setf(&s, "data.sources=[{path: \"%s\"}, {path: \"%s\", weight: 2}, {path: \"%s\"}]",
                   file_b, file_a, corpus_dir));
    EXPECT(s.data.n_sources == 3 && strcmp(s.data.sources[0].path, file_b) == 0);
    EXPECT(s.data.sources[1].weight == 2 && s.data.sources[2].weight == 1);
    EXPECT_OK(spec_validate(&s));
}

static void test_overflow(void) {
    struct job_spec s;
    spec_defaults(&s);
    static const char *const huge[] = {
        "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "18446744073709551616", "999999999999999999999999999999999999"};
    static const char *const keys[] = {"model.d_model", "optimizer.warmup_steps", "run.steps",
                                       "run.batch_size", "run.log_every", "run.eval_every"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
            EXPECT_ERROR(setf(&s, "%s=%s", keys[k], huge[i]), MOE_EINVAL, keys[k], huge[i]);
        }
    EXPECT_OK(spec_set(&s, "optimizer.warmup_steps=2147483647"));
    EXPECT(s.optimizer.warmup_steps == 2147483647);
    EXPECT_OK(spec_set(&s, "run.steps=2147483647"));
    EXPECT(s.run.steps == 2147483647 && s.optimizer.total_steps == 2147483647);
    EXPECT_OK(spec_set(&s, "run.seed=0"));
    EXPECT_ERROR(spec_set(&s, "run.seed=18446744073709551616"), MOE_EINVAL, "run.seed", NULL);
    EXPECT_ERROR(spec_set(&s, "data.val_fraction=1e400"), MOE_EINVAL, "data.val_fraction", NULL);
    EXPECT_OK(spec_set(&s, "data.val_fraction=1e-400")); // underflows to 0, which is allowed
    EXPECT(s.data.val_fraction == 0);
}

static void test_files(void) {
    struct job_spec s;
    spec_defaults(&s);
    char path[160], text[4096];
    snprintf(path, sizeof path, "%s/job.yaml", tmpdir);
    snprintf(text, sizeof text, full_yaml, file_a, file_b);
    write_file(path, text);
    EXPECT_OK(spec_load_file(&s, path));
    check_full(&s);

    write_file(path, "model:\n  heads: 0\n");
    EXPECT_ERROR(spec_load_file(&s, path), MOE_EINVAL, "model.heads = 0", path);
    unlink(path);
    EXPECT_ERROR(spec_load_file(&s, path), MOE_EIO, path, "No such file or directory");
    EXPECT_ERROR(spec_load_file(&s, tmpdir), MOE_EIO, tmpdir, "Is a directory");
    check_full(&s); // failures left it alone
}

/* Hostile input must fail cleanly (or parse), never crash, leak or hang. */
static void test_garbage(void) {
    struct job_spec s, defaults;
    spec_defaults(&defaults);

    memcpy(&s, &defaults, sizeof s);
    EXPECT_OK(spec_parse(&s, "", 0, "empty"));
    EXPECT_OK(parse(&s, "# nothing but a comment\n\n"));
    EXPECT_OK(parse(&s, "---\n"));
    EXPECT_OK(spec_parse(&s, NULL, 0, "null"));
    EXPECT(memcmp(&s, &defaults, sizeof s) == 0);
    EXPECT_ERROR(spec_parse(&s, "a\0b", 3, "nul"), MOE_EFORMAT, "nul", NULL);
    EXPECT_ERROR(parse(&s, "\xff\xfe\xfd garbage"), MOE_EFORMAT, "malformed", NULL);

    /* Random bytes, and random damage to a valid spec. */
    char text[4096];
    snprintf(text, sizeof text, full_yaml, file_a, file_b);
    size_t text_len = strlen(text);
    for (int i = 0; i < 3000; i++) {
        char buf[4096];
        size_t len;
        if (i % 2) {
            len = (size_t)rnd_in(0, 512);
            for (size_t j = 0; j < len; j++) buf[j] = (char)rnd();
        } else {
            len = text_len;
            memcpy(buf, text, len);
            for (long k = rnd_in(1, 4); k > 0; k--) buf[rnd() % len] = (char)rnd();
        }
        memcpy(&s, &defaults, sizeof s);
        moe_status st = spec_parse(&s, buf, len, "garbage");
        if (st != MOE_OK && (strncmp(moe_errmsg(), "spec: ", 6) || strchr(moe_errmsg(), '\n'))) {
            fprintf(stderr, "FAIL %s:%d: garbage %d: bad message \"%s\"\n", __FILE__, __LINE__, i,
                    moe_errmsg());
            failures++;
        }
        buf[len < 200 ? len : 200] = '\0';
        memmove(buf + 12, buf, strlen(buf) + 1);
        memcpy(buf, "router.top_k", 12);
        buf[12] = '=';
        (void)spec_set(&s, buf);
    }

    /* Deep nesting and alias bombs. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 16);
    if (deep) {
        memset(deep, '[', depth);
        memset(deep + depth, ']', depth);
        deep[2 * depth] = '\0';
        EXPECT_ERROR(parse(&s, deep), MOE_EFORMAT, "nested more than", "line 1");
        free(deep);
    }
    depth = 20000;
    deep = malloc(5 * depth + 16);
    if (deep) {
        for (size_t i = 0; i < depth; i++) memcpy(deep + 4 * i, "{a: ", 4);
        deep[4 * depth] = '1';
        memset(deep + 4 * depth + 1, '}', depth);
        deep[5 * depth + 1] = '\0';
        EXPECT_ERROR(parse(&s, deep), MOE_EFORMAT, "nested more than", NULL);
        free(deep);
    }
    char *wide = malloc(3 * 100000 + 16);
    if (wide) {
        strcpy(wide, "x: [");
        for (int i = 0; i < 100000; i++) strcat(wide + 4 + 2 * i, "1,");
        strcat(wide, "1]");
        EXPECT_ERROR(parse(&s, wide), MOE_EFORMAT, "more than", "values");
        free(wide);
    }
    const char *bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "data: {sources: *d, schedule: *d}\n";
    EXPECT_ERROR(parse(&s, bomb), MOE_EINVAL, "spec: a: unknown field", NULL);
    const char *bomb2 = "data:\n"
                        "  schedule: [{step: 1, weights: &w [1, 1, 1, 1]},\n"
                        "             {step: 2, weights: *w}]\n"
                        "  sources: [{path: a}, {path: b}, {path: c}, {path: d}]\n";
    EXPECT_OK(parse(&s, bomb2));
    EXPECT(s.data.n_schedule == 2 && s.data.schedule[1].weights[3] == 1);
}

int main(void) {
    make_tmpdir();
    test_defaults();
    test_parse_full();
    test_writers();
    test_round_trip();
    test_bad_input();
    test_validate();
    test_schedule();
    test_set();
    test_overflow();
    test_files();
    test_garbage();
    remove_tmpdir();
    if (failures) {
        fprintf(stderr, "test_spec: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_spec: all checks passed\n");
    return 0;
}
