/*
 * spec.c — the job spec: one table of fields, a YAML/JSON reader over it, overrides,
 * validation, and the YAML/JSON writers.
 *
 * Every knob lives in spec_fields[] below: its dotted name, C type, place in struct job_spec,
 * default, bounds and the comment `moectl spec` prints. Parsing, --set, validation and both
 * writers walk that table, so adding a field is one line. The two lists (data.sources and
 * data.schedule) are table entries too, with small sub-tables for their items.
 *
 * Every failure leaves *s unchanged: parsing and overrides work on a copy that is committed
 * only when the whole input was accepted.
 */
#include "spec.h"

#include <cjson/cJSON.h>
#include <yaml.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* The table                                                                                  */

enum field_type {
    TYPE_INT,      // int
    TYPE_LONG,     // long
    TYPE_U64,      // uint64_t, any value
    TYPE_FLOAT,    // float
    TYPE_DOUBLE,   // double
    TYPE_BOOL,     // int, 0 or 1
    TYPE_STRING,   // char[size], NUL-terminated, non-empty
    TYPE_SOURCES,  // data.sources: a list of {path, weight}
    TYPE_SCHEDULE, // data.schedule: a list of {step, weights}
    TYPE_WEIGHTS,  // schedule_point.weights: a list of numbers
};

enum { BOUND_CLOSED = 0, MIN_OPEN = 1, MAX_OPEN = 2 };

struct field {
    const char *name; // dotted, as written in --set ("router.top_k")
    enum field_type type;
    size_t offset;    // into the struct the table describes
    size_t size;      // bytes of a TYPE_STRING buffer
    const char *def;  // default, written as in a spec; NULL: none
    double min, max;  // bounds, inclusive unless `open` says otherwise; +-INFINITY: none
    int open;         // MIN_OPEN | MAX_OPEN
    const char *comment;
};

/* offsetof that refuses to compile when the table's C type differs from the member's: a float
 * member described as a double would silently overwrite its neighbour. */
#define AT(type, member, ctype)                                                                   \
    (offsetof(type, member) +                                                                     \
     0 * sizeof(char[_Generic(((type *)0)->member, ctype: 1, default: -1)]))

#define NONE INFINITY

#define INT_FIELD(key, member, def, lo, hi, why)                                                  \
    {key, TYPE_INT, AT(struct job_spec, member, int), 0, def, lo, hi, BOUND_CLOSED, why}
#define LONG_FIELD(key, member, def, lo, hi, why)                                                 \
    {key, TYPE_LONG, AT(struct job_spec, member, long), 0, def, lo, hi, BOUND_CLOSED, why}
#define U64_FIELD(key, member, def, why)                                                          \
    {key, TYPE_U64, AT(struct job_spec, member, uint64_t), 0, def, -NONE, NONE, BOUND_CLOSED, why}
#define FLOAT_FIELD(key, member, def, lo, hi, open, why)                                          \
    {key, TYPE_FLOAT, AT(struct job_spec, member, float), 0, def, lo, hi, open, why}
#define DOUBLE_FIELD(key, member, def, lo, hi, open, why)                                         \
    {key, TYPE_DOUBLE, AT(struct job_spec, member, double), 0, def, lo, hi, open, why}
#define BOOL_FIELD(key, member, def, why)                                                         \
    {key, TYPE_BOOL, AT(struct job_spec, member, int), 0, def, 0, 1, BOUND_CLOSED, why}
#define STRING_FIELD(key, member, def, why)                                                       \
    {key, TYPE_STRING, AT(struct job_spec, member, char *),                                       \
     sizeof(((struct job_spec *)0)->member), def, -NONE, NONE, BOUND_CLOSED, why}
#define LIST_FIELD(key, type, why) {key, type, 0, 0, NULL, -NONE, NONE, BOUND_CLOSED, why}

/* In section order: spec_to_yaml prints them in this order. The sizes' upper bounds only keep
 * a typo from asking for terabytes; the kernels decide what actually fits. */
static const struct field spec_fields[] = {
    STRING_FIELD("name", name, "moe-job", "shown by moectl status, stored in the model's metadata"),

    INT_FIELD("mesh.pods", mesh.pods, "1", 1, 1024,
              "data-parallel pods (P): each holds a full copy of the model"),
    INT_FIELD("mesh.slots", mesh.slots, "1", 1, 1024,
              "slots per pod (S): slot s owns experts [s*E/S, (s+1)*E/S); must divide experts"),
    STRING_FIELD("mesh.backend", mesh.backend, "tcp",
                 "data plane inside a pod: tcp (any workers) or mpi (a pod is one mpirun job)"),
    DOUBLE_FIELD("mesh.timeout_s", mesh.timeout_s, "2", 0, 3600, MIN_OPEN,
                 "a data-plane operation with no progress for this long fails (never hangs)"),
    INT_FIELD("mesh.replicas", mesh.replicas, "2", 1, 16,
              "copies of each committed step's state in different failure domains (pods count; "
              "the rest are buddy copies); 1: a lost slot fails the job"),
    INT_FIELD("mesh.check_every", mesh.check_every, "1", 0, 1000000000,
              "steps between hash comparisons of data-parallel replicas' state (0: never)"),
    DOUBLE_FIELD("mesh.spare_wait_s", mesh.spare_wait_s, "60", 0, 86400, BOUND_CLOSED,
                 "a recovery waits this long for a worker to play a lost slot, then fails"),
    DOUBLE_FIELD("mesh.partition_wait_s", mesh.partition_wait_s, "600", 0, 86400, BOUND_CLOSED,
                 "a recovery whose workers all hold their state but cannot reach each other (a "
                 "partition) retries this long, then fails"),
    BOOL_FIELD("mesh.move_to_spare", mesh.move_to_spare, "true",
               "a slot a survivor plays beside its own moves onto the next idle worker (tcp; "
               "false: it stays, and idle workers are left to queued jobs)"),
    BOOL_FIELD("mesh.encrypt", mesh.encrypt, "false",
               "encrypt the data plane's tcp links (AES-256-GCM) for networks nobody vouches for; "
               "shared memory between slots of one host stays as is"),
    INT_FIELD("mesh.bucket_kb", mesh.bucket_kb, "1024", 1, 1048576,
              "gradients reduced across pods in buckets of at least this many KiB, each started "
              "as soon as its layers' backward is done (fewer, larger buckets: fewer round trips)"),
    STRING_FIELD("mesh.sync", mesh.sync, "sync",
                 "across pods: sync (one synchronous step over the mesh) or diloco (pods take "
                 "mesh.outer_every steps apart, then average their progress: slow links)"),
    INT_FIELD("mesh.outer_every", mesh.outer_every, "20", 1, 1000000,
              "diloco: inner steps between outer steps (H); run.steps must be a multiple"),
    FLOAT_FIELD("mesh.outer_lr", mesh.outer_lr, "1", 0, NONE, MIN_OPEN,
                "diloco: learning rate of the outer Nesterov step on the pods' mean progress (1 with momentum 0: plain averaging; DiLoCo's 0.7 suits long runs)"),
    FLOAT_FIELD("mesh.outer_momentum", mesh.outer_momentum, "0", 0, 1, MAX_OPEN,
                "diloco: momentum of the outer Nesterov step, in [0, 1)"),
    BOOL_FIELD("mesh.outer_overlap", mesh.outer_overlap, "false",
               "diloco: the pods' average crosses during the next outer_every inner steps and "
               "is applied one outer step late (the pods never wait for it)"),
    STRING_FIELD("mesh.outer_quant", mesh.outer_quant, "none",
                 "diloco: what crosses the pods at an outer step: none (float32) or int8 (a "
                 "quarter of the bytes: one scale per 256 values, added in pod order in float32)"),

    INT_FIELD("model.vocab", model.vocab, "256", 2, 65536,
              "vocabulary size (V); at least 256: tokens are bytes"),
    INT_FIELD("model.d_model", model.d_model, "128", 1, 65536, "residual stream width (C)"),
    INT_FIELD("model.layers", model.n_layers, "2", 1, 1024, "transformer blocks (L)"),
    INT_FIELD("model.heads", model.n_heads, "4", 1, 65536,
              "attention heads (NH); must divide d_model into even head sizes"),
    INT_FIELD("model.seq_len", model.seq_len, "128", 1, 1 << 20, "context length in tokens (T)"),
    INT_FIELD("model.experts", model.n_experts, "4", 1, 4096, "experts per MoE layer (E)"),
    INT_FIELD("model.d_ff", model.d_ff, "256", 1, 1 << 20, "hidden size of each SwiGLU expert (F)"),
    FLOAT_FIELD("model.init_std", model.init_std, "0.02", 0, NONE, MIN_OPEN,
                "std of the normal initialisation"),
    FLOAT_FIELD("model.rope_base", model.rope_base, "10000", 0, NONE, MIN_OPEN,
                "rotary position embedding base"),
    FLOAT_FIELD("model.norm_eps", model.norm_eps, "1e-5", 0, NONE, MIN_OPEN, "RMSNorm epsilon"),

    INT_FIELD("router.top_k", model.top_k, "2", 1, 4096, "experts per token (K), at most experts"),
    FLOAT_FIELD("router.capacity_factor", model.capacity_factor, "1.25", 0, NONE, MIN_OPEN,
                "expert capacity = capacity_factor * T * K / E per sequence"),
    BOOL_FIELD("router.dropless", model.dropless, "false", "true: no capacity limit, no drops"),
    FLOAT_FIELD("router.aux_loss_coef", model.aux_loss_coef, "0.01", 0, NONE, BOUND_CLOSED,
                "weight of the Switch load-balancing loss"),
    FLOAT_FIELD("router.z_loss_coef", model.z_loss_coef, "0.001", 0, NONE, BOUND_CLOSED,
                "weight of the router z-loss"),
    BOOL_FIELD("router.bias_balancing", model.bias_balancing, "false",
               "true: auxiliary-loss-free balancing bias (DeepSeek-V3)"),
    FLOAT_FIELD("router.bias_update_rate", model.bias_update_rate, "0.001", 0, NONE, BOUND_CLOSED,
                "bias step per optimizer step when bias_balancing"),

    FLOAT_FIELD("optimizer.lr", optimizer.lr, "3e-3", 0, NONE, MIN_OPEN, "peak learning rate"),
    FLOAT_FIELD("optimizer.min_lr", optimizer.min_lr, "3e-4", 0, NONE, BOUND_CLOSED,
                "learning rate at the end of the cosine decay (<= lr)"),
    INT_FIELD("optimizer.warmup_steps", optimizer.warmup_steps, "20", 0, INT_MAX,
              "steps of linear warm-up"),
    FLOAT_FIELD("optimizer.beta1", optimizer.beta1, "0.9", 0, 1, MAX_OPEN,
                "AdamW first-moment decay"),
    FLOAT_FIELD("optimizer.beta2", optimizer.beta2, "0.95", 0, 1, MAX_OPEN,
                "AdamW second-moment decay"),
    FLOAT_FIELD("optimizer.eps", optimizer.eps, "1e-8", 0, NONE, MIN_OPEN, "AdamW epsilon"),
    FLOAT_FIELD("optimizer.weight_decay", optimizer.weight_decay, "0.1", 0, NONE, BOUND_CLOSED,
                "decoupled weight decay, matrices only"),
    FLOAT_FIELD("optimizer.grad_clip", optimizer.grad_clip, "1.0", -NONE, NONE, BOUND_CLOSED,
                "clip the global gradient norm to this; <= 0 disables"),

    LIST_FIELD("data.sources", TYPE_SOURCES,
               "text files or directories, sampled by weight"),
    LIST_FIELD("data.schedule", TYPE_SCHEDULE,
               "from each step on, sample the sources with these weights"),
    DOUBLE_FIELD("data.val_fraction", data.val_fraction, "0.05", 0, 0.5, BOUND_CLOSED,
                 "tail of each source held out for evaluation"),
    STRING_FIELD("data.tokenizer", data.tokenizer, "",
                 "a SentencePiece model (moectl tokenizer train); model.vocab follows it; "
                 "empty: tokens are bytes"),
    STRING_FIELD("data.prepared", data.prepared, "",
                 "a directory of the sources' tokens (moectl data prepare); empty: the "
                 "sources are tokenized as they load"),

    /* run.steps also becomes optimizer.total_steps, an int: hence INT_MAX. */
    LONG_FIELD("run.steps", run.steps, "300", 1, INT_MAX, "optimizer steps to train"),
    INT_FIELD("run.batch_size", run.batch_size, "16", 1, 1 << 20,
              "sequences per step, over all workers"),
    INT_FIELD("run.micro_batch", run.micro_batch, "0", 0, 1 << 20,
              "sequences per forward/backward, gradients accumulated; 0: the whole batch"),
    U64_FIELD("run.seed", run.seed, "1234", "initialisation and data order"),
    STRING_FIELD("run.output", run.output, "model.safetensors",
                 "the trained model; its config goes beside it (.json)"),
    INT_FIELD("run.log_every", run.log_every, "10", 1, INT_MAX, "progress line every N steps"),
    INT_FIELD("run.eval_every", run.eval_every, "100", 0, INT_MAX,
              "held-out loss every N steps; 0: only at the end"),
    INT_FIELD("run.eval_batches", run.eval_batches, "16", 1, 1 << 20,
              "held-out batches per evaluation"),
    STRING_FIELD("run.init_from", run.init_from, "",
                 "start from this model's parameters (same shapes; fresh optimizer); "
                 "empty: from run.seed"),
    STRING_FIELD("run.export_dir", run.export_dir, "",
                 "where the survivors of a failed or cancelled job write its state: an "
                 "absolute directory beneath every worker's --export-dir; empty: that "
                 "directory itself"),

    STRING_FIELD("distill.teacher", distill.teacher, "",
                 "a teacher model (.safetensors, the same vocabulary) to distill from; "
                 "empty: none"),
    FLOAT_FIELD("distill.alpha", distill.alpha, "0.5", 0, 1, BOUND_CLOSED,
                "loss = (1 - alpha) ce + alpha temperature^2 KL(teacher || student)"),
    FLOAT_FIELD("distill.temperature", distill.temperature, "2", 0, NONE, MIN_OPEN,
                "softmax temperature of both distributions in the KL"),
};
#define N_FIELDS (sizeof spec_fields / sizeof spec_fields[0])

/* Section comments for spec_to_yaml, in the order the table visits them. */
static const struct {
    const char *name, *comment;
} spec_sections[] = {
    {"mesh", "the logical mesh: pods x slots, and the data plane between them"},
    {"model", "the transformer: byte tokens, rotary attention, SwiGLU experts"},
    {"router", "which experts see which tokens, and the balancing losses"},
    {"optimizer", "AdamW, linear warm-up, cosine decay to min_lr at run.steps"},
    {"data", "what to train on"},
    {"run", "how long, how big, and where the model goes"},
    {"distill", "learning from a teacher model's outputs (off without a teacher)"},
};

/* Items of data.sources. */
static const struct field source_fields[] = {
    {"path", TYPE_STRING, AT(struct data_source_spec, path, char *), SPEC_PATH_MAX, NULL, -NONE,
     NONE, BOUND_CLOSED, "a text file, or a directory of text files"},
    {"weight", TYPE_DOUBLE, AT(struct data_source_spec, weight, double), 0, "1.0", 0, NONE,
     MIN_OPEN, "sampling weight"},
};

/* Items of data.schedule. */
static const struct field schedule_fields[] = {
    {"step", TYPE_LONG, AT(struct schedule_point, step, long), 0, NULL, 1, INT_MAX, BOUND_CLOSED,
     "first step these weights apply to"},
    {"weights", TYPE_WEIGHTS, 0, 0, NULL, -NONE, NONE, BOUND_CLOSED, "one weight per source"},
};
static const struct field schedule_weight = {
    "weight", TYPE_DOUBLE, 0, 0, NULL, 0, NONE, BOUND_CLOSED, "a source's weight from this step"};

/* A schedule point stores no count: weights past the ones given hold this, so that validation
 * can tell "[1, 0]" from "[1]" once the number of sources is known. spec_defaults fills every
 * point with it, so a schedule written in code after spec_defaults is counted right too. */
#define WEIGHT_UNSET SPEC_WEIGHT_UNSET

static void clear_schedule(struct data_spec *d) {
    memset(d->schedule, 0, sizeof d->schedule);
    for (int i = 0; i < SPEC_MAX_SCHEDULE; i++)
        for (int j = 0; j < SPEC_MAX_SOURCES; j++) d->schedule[i].weights[j] = WEIGHT_UNSET;
}

/* The weights a point gives: those before the first unset one, less trailing zeros past the
 * sources (a schedule built in code over a zeroed struct has them, and they change nothing). */
static int schedule_weight_count(const struct schedule_point *p, int n_sources) {
    int n = 0;
    while (n < SPEC_MAX_SOURCES && p->weights[n] != WEIGHT_UNSET) n++;
    while (n > n_sources && p->weights[n - 1] == 0) n--;
    return n;
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const struct field *find_field(const struct field *table, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}

/* "model" is a section because some field is called "model.<something>". */
static int is_section(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < N_FIELDS; i++)
        if (strncmp(spec_fields[i].name, name, n) == 0 && spec_fields[i].name[n] == '.') return 1;
    return 0;
}

static void *member(void *base, const struct field *f) { return (char *)base + f->offset; }
static const void *cmember(const void *base, const struct field *f) {
    return (const char *)base + f->offset;
}

/* ------------------------------------------------------------------------------------------ */
/* Text helpers                                                                               */

/* User text quoted in a one-line message: control characters (a quoted key may hold a newline)
 * become '?', and long values are cut. */
static const char *shown(const char *text, size_t len, char *buf, size_t n) {
    size_t keep = len < n - 4 ? len : n - 4, i;
    for (i = 0; i < keep; i++) {
        unsigned char ch = (unsigned char)text[i];
        buf[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (keep < len) memcpy(buf + i, "...", 4);
    else buf[i] = '\0';
    return buf;
}

/* YAML text is Unicode without control characters. A string that is not (a path with a stray
 * byte) could never be written back, so it is refused: decodes strict UTF-8 and rejects C0/C1
 * controls, DEL, surrogates and the non-characters U+FFFE/U+FFFF. Returns a reason or NULL. */
static const char *text_problem(const char *text, size_t len) {
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    while (p < end) {
        uint32_t cp;
        int extra;
        if (*p < 0x80) cp = *p, extra = 0;
        else if ((*p & 0xe0) == 0xc0) cp = *p & 0x1f, extra = 1;
        else if ((*p & 0xf0) == 0xe0) cp = *p & 0x0f, extra = 2;
        else if ((*p & 0xf8) == 0xf0) cp = *p & 0x07, extra = 3;
        else return "is not valid UTF-8";
        if (end - p <= extra) return "is not valid UTF-8";
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xc0) != 0x80) return "is not valid UTF-8";
            cp = cp << 6 | (p[i] & 0x3f);
        }
        static const uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
        if (cp < smallest[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return "is not valid UTF-8";
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0xfffe || cp == 0xffff)
            return "must not contain control characters";
        p += extra + 1;
    }
    return NULL;
}

/* Decimal only: YAML 1.1 would read 010 as octal and 0x10 as hex, which surprises more than it
 * helps in a spec. Returns 0 when the text is not an integer; *overflow when it does not fit. */
static int parse_integer(const char *t, size_t len, int is_unsigned, long long *v, uint64_t *u,
                         int *overflow) {
    size_t i = (len > 0 && (t[0] == '+' || (t[0] == '-' && !is_unsigned))) ? 1 : 0;
    if (i == len) return 0;
    for (size_t j = i; j < len; j++)
        if (t[j] < '0' || t[j] > '9') return 0; // also stops at an embedded NUL
    errno = 0;
    if (is_unsigned) *u = strtoull(t, NULL, 10);
    else *v = strtoll(t, NULL, 10);
    *overflow = errno == ERANGE;
    return 1;
}

/* strtod also reads hex, "inf", "nan" and leading blanks; a spec number is plain decimal. */
static int parse_real(const char *t, size_t len, double *v) {
    if (len == 0) return 0;
    for (size_t i = 0; i < len; i++)
        if (!t[i] || !strchr("0123456789+-.eE", t[i])) return 0;
    char *end;
    errno = 0;
    *v = strtod(t, &end);
    return end == t + len;
}

static int parse_bool(const char *t, size_t len, int *v) {
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < N_OF(yes); i++) {
        if (strlen(yes[i]) == len && strncasecmp(t, yes[i], len) == 0) return *v = 1, 1;
        if (strlen(no[i]) == len && strncasecmp(t, no[i], len) == 0) return *v = 0, 1;
    }
    return 0;
}

/* The shortest decimal that reads back as exactly the same value, so that written specs say
 * 0.003 rather than 0.00300000003 and still round-trip bit for bit. */
static void format_real(double v, int is_float, char *buf, size_t n) {
    if (v == floor(v) && fabs(v) < 1e15) { // 10000, not 1e+04
        snprintf(buf, n, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        double back = strtod(buf, NULL);
        if (is_float ? (float)back == (float)v : back == v) return;
    }
}

static const char *type_noun(enum field_type t) {
    switch (t) {
    case TYPE_INT:
    case TYPE_LONG: return "an integer";
    case TYPE_U64: return "a non-negative integer";
    case TYPE_FLOAT:
    case TYPE_DOUBLE: return "a number";
    case TYPE_BOOL: return "true or false";
    case TYPE_STRING: return "a string";
    case TYPE_SOURCES: return "a list of {path, weight}";
    case TYPE_SCHEDULE: return "a list of {step, weights}";
    case TYPE_WEIGHTS: return "a list of numbers";
    }
    return "a value";
}

static int is_integer_type(enum field_type t) {
    return t == TYPE_INT || t == TYPE_LONG || t == TYPE_BOOL;
}

/* ------------------------------------------------------------------------------------------ */
/* One value: check and store (parse, --set), check in place (validate), format (writers)      */

static void format_bound(const struct field *f, double b, char *buf, size_t n) {
    if (is_integer_type(f->type)) snprintf(buf, n, "%lld", (long long)b);
    else snprintf(buf, n, "%g", b);
}

/* "must be in [0, 1)", "must be > 0", ... — said the same way by parse and validate. */
static moe_status fail_bounds(const struct field *f, const char *name, const char *value) {
    char lo[32], hi[32];
    format_bound(f, f->min, lo, sizeof lo);
    format_bound(f, f->max, hi, sizeof hi);
    int has_min = isfinite(f->min), has_max = isfinite(f->max);
    int min_open = f->open & MIN_OPEN, max_open = f->open & MAX_OPEN;
    if (has_min && has_max)
        return moe_fail(MOE_EINVAL, "spec: %s = %s: must be in %c%s, %s%c", name, value,
                        min_open ? '(' : '[', lo, hi, max_open ? ')' : ']');
    if (has_min)
        return moe_fail(MOE_EINVAL, "spec: %s = %s: must be %s %s", name, value,
                        min_open ? ">" : ">=", lo);
    return moe_fail(MOE_EINVAL, "spec: %s = %s: must be %s %s", name, value,
                    max_open ? "<" : "<=", hi);
}

static int within_bounds(const struct field *f, double v) {
    if (v < f->min || v > f->max) return 0;
    if ((f->open & MIN_OPEN) && v == f->min) return 0;
    if ((f->open & MAX_OPEN) && v == f->max) return 0;
    return 1;
}

static moe_status check_string(const struct field *f, const char *name, const char *text,
                               size_t len) {
    char buf[80];
    /* A string whose default is empty is optional (data.tokenizer): empty means "none". */
    if (len == 0 && !(f->def && !f->def[0]))
        return moe_fail(MOE_EINVAL, "spec: %s: must not be empty", name);
    if (len == 0) return MOE_OK;
    if (len >= f->size)
        return moe_fail(MOE_EINVAL, "spec: %s: too long (%zu bytes, at most %zu)", name, len,
                        f->size - 1);
    const char *problem = text_problem(text, len);
    if (problem)
        return moe_fail(MOE_EINVAL, "spec: %s = '%s': %s", name, shown(text, len, buf, sizeof buf),
                        problem);
    return MOE_OK;
}

/* Parses `text` (a YAML scalar's value) as field f and stores it into base, or fails naming
 * `name` without touching base. */
static moe_status set_scalar(const struct field *f, void *base, const char *name,
                             const char *text, size_t len) {
    char buf[80];
    const char *value = shown(text, len, buf, sizeof buf);
    long long i = 0;
    uint64_t u = 0;
    double d = 0;
    int overflow = 0;

    switch (f->type) {
    case TYPE_INT:
    case TYPE_LONG:
        if (!parse_integer(text, len, 0, &i, &u, &overflow))
            return moe_fail(MOE_EINVAL, "spec: %s: expected %s, got '%s'", name,
                            type_noun(f->type), value);
        if (overflow || !within_bounds(f, (double)i)) return fail_bounds(f, name, value);
        // the bounds are within the C type, so these conversions are exact
        if (f->type == TYPE_INT) *(int *)member(base, f) = (int)i;
        else *(long *)member(base, f) = (long)i;
        return MOE_OK;
    case TYPE_U64:
        if (!parse_integer(text, len, 1, &i, &u, &overflow))
            return moe_fail(MOE_EINVAL, "spec: %s: expected %s, got '%s'", name,
                            type_noun(f->type), value);
        if (overflow)
            return moe_fail(MOE_EINVAL, "spec: %s = %s: must be at most %" PRIu64, name, value,
                            UINT64_MAX);
        *(uint64_t *)member(base, f) = u;
        return MOE_OK;
    case TYPE_FLOAT:
    case TYPE_DOUBLE:
        if (!parse_real(text, len, &d))
            return moe_fail(MOE_EINVAL, "spec: %s: expected %s, got '%s'", name,
                            type_noun(f->type), value);
        if (f->type == TYPE_FLOAT) d = (float)d; // bounds apply to what is stored
        if (!isfinite(d))
            return moe_fail(MOE_EINVAL, "spec: %s = %s: out of range for a %s", name, value,
                            f->type == TYPE_FLOAT ? "32-bit float" : "double");
        if (d == 0) d = 0; // -0 would print as "0" in JSON and not round-trip
        if (!within_bounds(f, d)) return fail_bounds(f, name, value);
        if (f->type == TYPE_FLOAT) *(float *)member(base, f) = (float)d;
        else *(double *)member(base, f) = d;
        return MOE_OK;
    case TYPE_BOOL:
        if (!parse_bool(text, len, &overflow))
            return moe_fail(MOE_EINVAL, "spec: %s: expected true or false, got '%s'", name, value);
        *(int *)member(base, f) = overflow;
        return MOE_OK;
    case TYPE_STRING:
        CHECK(check_string(f, name, text, len));
        memset(member(base, f), 0, f->size); // the tail too: specs compare equal with memcmp
        memcpy(member(base, f), text, len);
        return MOE_OK;
    case TYPE_SOURCES:
    case TYPE_SCHEDULE:
    case TYPE_WEIGHTS: break;
    }
    return moe_fail(MOE_EINTERNAL, "spec: %s: not a scalar field", name);
}

/* The value of a scalar field as a spec would write it (strings unquoted). */
static void format_scalar(const struct field *f, const void *base, char *buf, size_t n) {
    const void *p = cmember(base, f);
    switch (f->type) {
    case TYPE_INT: snprintf(buf, n, "%d", *(const int *)p); return;
    case TYPE_LONG: snprintf(buf, n, "%ld", *(const long *)p); return;
    case TYPE_U64: snprintf(buf, n, "%" PRIu64, *(const uint64_t *)p); return;
    case TYPE_FLOAT: format_real(*(const float *)p, 1, buf, n); return;
    case TYPE_DOUBLE: format_real(*(const double *)p, 0, buf, n); return;
    case TYPE_BOOL: snprintf(buf, n, "%s", *(const int *)p ? "true" : "false"); return;
    case TYPE_STRING: snprintf(buf, n, "%.*s", (int)f->size, (const char *)p); return;
    case TYPE_SOURCES:
    case TYPE_SCHEDULE:
    case TYPE_WEIGHTS: break;
    }
    snprintf(buf, n, "?");
}

/* Re-checks a stored value against its field, for specs built or edited in code. */
static moe_status check_stored(const struct field *f, const void *base, const char *name) {
    char value[64];
    const void *p = cmember(base, f);
    double v;
    switch (f->type) {
    case TYPE_INT: v = *(const int *)p; break;
    case TYPE_LONG: v = (double)*(const long *)p; break;
    case TYPE_FLOAT: v = *(const float *)p; break;
    case TYPE_DOUBLE: v = *(const double *)p; break;
    case TYPE_BOOL:
        if (*(const int *)p != 0 && *(const int *)p != 1)
            return moe_fail(MOE_EINVAL, "spec: %s = %d: must be 0 (false) or 1 (true)", name,
                            *(const int *)p);
        return MOE_OK;
    case TYPE_STRING: {
        size_t len = strnlen(p, f->size);
        if (len == f->size)
            return moe_fail(MOE_EINVAL, "spec: %s: not NUL-terminated within %zu bytes", name,
                            f->size);
        return check_string(f, name, p, len);
    }
    default: return MOE_OK; // u64: every value is valid; lists are checked by their own code
    }
    format_scalar(f, base, value, sizeof value);
    if (!isfinite(v))
        return moe_fail(MOE_EINVAL, "spec: %s = %s: must be a finite number", name, value);
    if (!within_bounds(f, v)) return fail_bounds(f, name, value);
    return MOE_OK;
}

static void set_defaults(const struct field *table, size_t n, void *base) {
    for (size_t i = 0; i < n; i++) {
        if (!table[i].def) continue;
        // The defaults pass the same checks as user input; a failure here is a typo in the
        // table, which test_spec catches.
        (void)set_scalar(&table[i], base, table[i].name, table[i].def, strlen(table[i].def));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Reading a YAML document into the spec                                                      */

struct reader {
    struct job_spec *s;
    yaml_document_t *doc;
    const char *origin;          // the file, for messages; NULL when unknown
    int with_lines;              // 0 for --set, where "line 1" would only confuse
    unsigned char seen[N_FIELDS]; // a field given twice is an error, not "last one wins"
};

/* Appends where the failing node is to the message moe_fail just set. */
static moe_status at(const struct reader *r, const yaml_node_t *node, moe_status st) {
    if (st == MOE_OK || !r->with_lines) return st;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", moe_errmsg()); // moe_fail must not read its own buffer
    size_t line = node->start_mark.line + 1;
    if (r->origin) return moe_fail(st, "%s (in %s line %zu)", msg, r->origin, line);
    return moe_fail(st, "%s (line %zu)", msg, line);
}

static const char *node_kind(const yaml_node_t *node, char *buf, size_t n) {
    if (node->type == YAML_MAPPING_NODE) return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE) return "a list";
    char value[80];
    snprintf(buf, n, "'%s'",
             shown((const char *)node->data.scalar.value, node->data.scalar.length, value,
                   sizeof value));
    return buf;
}

static moe_status fail_kind(const struct reader *r, const yaml_node_t *node, const char *name,
                            const char *expected) {
    char buf[96];
    return at(r, node,
              moe_fail(MOE_EINVAL, "spec: %s: expected %s, got %s", name, expected,
                       node_kind(node, buf, sizeof buf)));
}

static moe_status read_scalar(const struct reader *r, const struct field *f, void *base,
                              const char *name, const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE) return fail_kind(r, node, name, type_noun(f->type));
    return at(r, node,
              set_scalar(f, base, name, (const char *)node->data.scalar.value,
                         node->data.scalar.length));
}

/* The key of a pair, which must be a name: a scalar without NUL bytes (it is used as a C
 * string). Anything else is reported as an unknown field under `prefix`. */
static moe_status key_of(const struct reader *r, const yaml_node_pair_t *pair, const char *prefix,
                         const char **key, const yaml_node_t **node) {
    const yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
    char buf[64];
    *node = k;
    if (k->type != YAML_SCALAR_NODE)
        return at(r, k, moe_fail(MOE_EINVAL, "spec: %s: keys must be names, got %s",
                                 *prefix ? prefix : "top level",
                                 k->type == YAML_MAPPING_NODE ? "a mapping" : "a list"));
    *key = (const char *)k->data.scalar.value;
    if (strlen(*key) != k->data.scalar.length)
        return at(r, k, moe_fail(MOE_EINVAL, "spec: %s%s%s: unknown field", prefix,
                                 *prefix ? "." : "",
                                 shown(*key, k->data.scalar.length, buf, sizeof buf)));
    return MOE_OK;
}

static long seq_len(const yaml_node_t *seq) {
    return seq->data.sequence.items.top - seq->data.sequence.items.start;
}
static const yaml_node_t *seq_item(const struct reader *r, const yaml_node_t *seq, long i) {
    return yaml_document_get_node(r->doc, seq->data.sequence.items.start[i]);
}

/* Reads the mapping `node` into an item struct described by `table` (a source, a schedule
 * point). `given` reports which of the table's fields appeared. */
static moe_status read_item(const struct reader *r, const struct field *table, size_t n,
                            void *item, const char *prefix, const yaml_node_t *node, int *given);

static moe_status read_weights(const struct reader *r, struct schedule_point *point,
                               const char *prefix, const yaml_node_t *node) {
    char name[96];
    snprintf(name, sizeof name, "%s.weights", prefix);
    if (node->type != YAML_SEQUENCE_NODE) return fail_kind(r, node, name, "a list of numbers");
    long n = seq_len(node);
    if (n < 1 || n > SPEC_MAX_SOURCES)
        return at(r, node, moe_fail(MOE_EINVAL, "spec: %s: %ld weights, expected 1 to %d",
                                    name, n, SPEC_MAX_SOURCES));
    for (long i = 0; i < n; i++) {
        const yaml_node_t *w = seq_item(r, node, i);
        char wname[112];
        snprintf(wname, sizeof wname, "%s.%ld", name, i);
        struct field f = schedule_weight;
        f.offset = offsetof(struct schedule_point, weights) + (size_t)i * sizeof(double);
        CHECK(read_scalar(r, &f, point, wname, w));
    }
    return MOE_OK;
}

static moe_status read_item(const struct reader *r, const struct field *table, size_t n,
                            void *item, const char *prefix, const yaml_node_t *node, int *given) {
    if (node->type != YAML_MAPPING_NODE) {
        char expected[64];
        snprintf(expected, sizeof expected, "a mapping {%s, %s}", table[0].name, table[1].name);
        return fail_kind(r, node, prefix, expected);
    }
    for (const yaml_node_pair_t *p = node->data.mapping.pairs.start;
         p < node->data.mapping.pairs.top; p++) {
        const char *key;
        const yaml_node_t *k, *v = yaml_document_get_node(r->doc, p->value);
        CHECK(key_of(r, p, prefix, &key, &k));
        char name[96], buf[64];
        snprintf(name, sizeof name, "%s.%s", prefix, shown(key, strlen(key), buf, sizeof buf));
        const struct field *f = find_field(table, n, key);
        if (!f) return at(r, k, moe_fail(MOE_EINVAL, "spec: %s: unknown field", name));
        if (given[f - table]++)
            return at(r, k, moe_fail(MOE_EINVAL, "spec: %s: given twice", name));
        if (f->type == TYPE_WEIGHTS) CHECK(read_weights(r, item, prefix, v));
        else CHECK(read_scalar(r, f, item, name, v));
    }
    for (size_t i = 0; i < n; i++)
        if (!given[i] && !table[i].def)
            return at(r, node,
                      moe_fail(MOE_EINVAL, "spec: %s.%s: required", prefix, table[i].name));
    return MOE_OK;
}

/* data.sources and data.schedule: a list of items read against a table of their fields. */
#define LIST_FIELDS_MAX 4 // fields of a list item (source_fields, schedule_fields)
_Static_assert(N_OF(source_fields) <= LIST_FIELDS_MAX && N_OF(schedule_fields) <= LIST_FIELDS_MAX,
               "a list item has more fields than read_list counts");
struct list_kind {
    const char *name;          // "data.sources"
    int type;                  // TYPE_SOURCES / TYPE_SCHEDULE
    const char *unit;          // "sources"
    long max;
    const struct field *fields;
    size_t n_fields;
    size_t item_size;
    int item_defaults;         // each item starts from its fields' defaults
};

static const struct list_kind sources_list = {
    "data.sources", TYPE_SOURCES, "sources", SPEC_MAX_SOURCES, source_fields,
    N_OF(source_fields), sizeof(struct data_source_spec), 1};
static const struct list_kind schedule_list = {
    "data.schedule", TYPE_SCHEDULE, "points", SPEC_MAX_SCHEDULE, schedule_fields,
    N_OF(schedule_fields), sizeof(struct schedule_point), 0};

/* A list replaces whatever the spec held before: a file or --set gives the whole list. The
 * caller has cleared `items`; *n_out is set once every item was read. */
static moe_status read_list(const struct reader *r, const yaml_node_t *node,
                            const struct list_kind *k, void *items, int *n_out) {
    if (node->type != YAML_SEQUENCE_NODE)
        return fail_kind(r, node, k->name, type_noun(k->type));
    long n = seq_len(node);
    if (n > k->max)
        return at(r, node, moe_fail(MOE_EINVAL, "spec: %s: %ld %s, at most %ld", k->name, n,
                                    k->unit, k->max));
    for (long i = 0; i < n; i++) {
        const yaml_node_t *item = seq_item(r, node, i);
        void *dst = (char *)items + (size_t)i * k->item_size;
        char prefix[48];
        snprintf(prefix, sizeof prefix, "%s.%ld", k->name, i);
        if (k->item_defaults) set_defaults(k->fields, k->n_fields, dst);
        int given[LIST_FIELDS_MAX] = {0};
        CHECK(read_item(r, k->fields, k->n_fields, dst, prefix, item, given));
    }
    *n_out = (int)n;
    return MOE_OK;
}

/* Any field of the main table, list or scalar. */
static moe_status read_field(const struct reader *r, const struct field *f, const yaml_node_t *v) {
    struct data_spec *data = &r->s->data;
    if (f->type == TYPE_SOURCES) {
        memset(data->sources, 0, sizeof data->sources);
        return read_list(r, v, &sources_list, data->sources, &data->n_sources);
    }
    if (f->type == TYPE_SCHEDULE) {
        clear_schedule(data);
        return read_list(r, v, &schedule_list, data->schedule, &data->n_schedule);
    }
    return read_scalar(r, f, r->s, f->name, v);
}

/* Walks a mapping of fields and sections; `prefix` is "" at the top or a section name. The
 * depth is bounded by the table's names, not by the input. */
static moe_status read_mapping(struct reader *r, const yaml_node_t *node, const char *prefix) {
    for (const yaml_node_pair_t *p = node->data.mapping.pairs.start;
         p < node->data.mapping.pairs.top; p++) {
        const char *key;
        const yaml_node_t *k, *v = yaml_document_get_node(r->doc, p->value);
        CHECK(key_of(r, p, prefix, &key, &k));
        char name[128], buf[64];
        snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", key); // long: unknown
        const struct field *f = find_field(spec_fields, N_FIELDS, name);
        if (f) {
            if (r->seen[f - spec_fields]++)
                return at(r, k, moe_fail(MOE_EINVAL, "spec: %s: given twice", name));
            CHECK(read_field(r, f, v));
        } else if (is_section(name)) {
            if (v->type != YAML_MAPPING_NODE) return fail_kind(r, v, name, "a mapping of fields");
            CHECK(read_mapping(r, v, name));
        } else {
            shown(name, strlen(name), buf, sizeof buf);
            return at(r, k, moe_fail(MOE_EINVAL, "spec: %s: unknown field", buf));
        }
    }
    return MOE_OK;
}

/* Failures of the text as a whole. `key` names the --set key whose value it is (no location
 * then: the value is one line); otherwise the location is the line in `origin`. */
static moe_status fail_text(const char *key, const char *origin, size_t line, const char *fmt,
                            ...) __attribute__((format(printf, 4, 5)));
static moe_status fail_text(const char *key, const char *origin, size_t line, const char *fmt,
                            ...) {
    char what[512], buf[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (key)
        return moe_fail(MOE_EFORMAT, "spec: %s: %s", shown(key, strlen(key), buf, sizeof buf),
                        what);
    if (origin) return moe_fail(MOE_EFORMAT, "spec: %s (in %s line %zu)", what, origin, line);
    return moe_fail(MOE_EFORMAT, "spec: %s (line %zu)", what, line);
}

static moe_status fail_syntax(const yaml_parser_t *p, const char *key, const char *origin) {
    return fail_text(key, origin, p->problem_mark.line + 1, "malformed %s: %s%s%s%s",
                     key ? "value" : "YAML/JSON", p->problem ? p->problem : "cannot be parsed",
                     p->context ? " (" : "", p->context ? p->context : "", p->context ? ")" : "");
}

/* libyaml's scanner slows down quadratically with flow nesting ("[[[[..." 100k deep takes
 * 20 s) and its loader holds every node in memory. A spec is 5 levels deep and a few hundred
 * values, so a first pass over the events refuses anything far beyond that, and a second
 * document, before the document is built. */
#define SPEC_MAX_DEPTH 32
#define SPEC_MAX_EVENTS 20000

static moe_status check_shape(const char *text, size_t len, const char *key, const char *origin) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return moe_fail(MOE_ENOMEM, "spec: out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    moe_status st = MOE_OK;
    int depth = 0, documents = 0;
    for (long events = 0; st == MOE_OK; events++) {
        yaml_event_t event;
        if (!yaml_parser_parse(&parser, &event)) {
            st = fail_syntax(&parser, key, origin);
            break;
        }
        yaml_event_type_t type = event.type;
        size_t line = event.start_mark.line + 1;
        yaml_event_delete(&event);
        if (type == YAML_STREAM_END_EVENT) break;
        if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) depth++;
        if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) depth--;
        if (type == YAML_DOCUMENT_START_EVENT && ++documents > 1)
            st = fail_text(key, origin, line, "more than one document");
        else if (depth > SPEC_MAX_DEPTH)
            st = fail_text(key, origin, line, "nested more than %d levels deep", SPEC_MAX_DEPTH);
        else if (events > SPEC_MAX_EVENTS)
            st = fail_text(key, origin, line, "more than %d values: not a job spec",
                           SPEC_MAX_EVENTS);
    }
    yaml_parser_delete(&parser);
    return st;
}

/* Loads the single document of `text`. *root is NULL for an empty document (a file of only
 * comments is a spec that changes nothing). */
static moe_status load_document(yaml_document_t *doc, const char *text, size_t len,
                                const char *key, const char *origin, yaml_node_t **root) {
    CHECK(check_shape(text, len, key, origin));
    yaml_parser_t parser;
    moe_status st = MOE_OK;
    if (!yaml_parser_initialize(&parser)) return moe_fail(MOE_ENOMEM, "spec: out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (yaml_parser_load(&parser, doc)) *root = yaml_document_get_root_node(doc);
    else st = fail_syntax(&parser, key, origin); // libyaml has freed doc
    yaml_parser_delete(&parser);
    return st;
}

static int is_empty_scalar(const yaml_node_t *node) {
    return node->type == YAML_SCALAR_NODE && node->data.scalar.length == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Public: defaults, parse, load, set                                                         */

void spec_defaults(struct job_spec *s) {
    memset(s, 0, sizeof *s);
    set_defaults(spec_fields, N_FIELDS, s);
    clear_schedule(&s->data);
    s->optimizer.total_steps = (int)s->run.steps;
}

moe_status spec_parse(struct job_spec *s, const char *text, size_t len, const char *origin) {
    yaml_document_t doc;
    yaml_node_t *root = NULL;
    if (len == 0) text = ""; // libyaml asserts on a NULL buffer, even an empty one
    CHECK(load_document(&doc, text, len, NULL, origin, &root));

    moe_status st = MOE_OK;
    struct job_spec *copy = malloc(sizeof *copy);
    if (!copy) {
        st = moe_fail(MOE_ENOMEM, "spec: out of memory");
        goto exit;
    }
    memcpy(copy, s, sizeof *copy);
    struct reader r = {.s = copy, .doc = &doc, .origin = origin, .with_lines = 1};
    if (root && !is_empty_scalar(root)) {
        if (root->type != YAML_MAPPING_NODE)
            CHECK_GOTO(fail_kind(&r, root, "top level", "a mapping of sections (model, ...)"), st,
                       exit);
        CHECK_GOTO(read_mapping(&r, root, ""), st, exit);
    }
    copy->optimizer.total_steps = (int)copy->run.steps;
    memcpy(s, copy, sizeof *s);
exit:
    free(copy);
    yaml_document_delete(&doc);
    return st;
}

moe_status spec_load_file(struct job_spec *s, const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return moe_fail(MOE_EIO, "spec: %s: %s", path, strerror(errno));
    moe_status st = MOE_OK;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= SPEC_TEXT_MAX) {
                st = moe_fail(MOE_EINVAL, "spec: %s: larger than %d MiB, not a job spec", path,
                              SPEC_TEXT_MAX >> 20);
                goto exit;
            }
            cap = cap ? 2 * cap : 4096;
            char *grown = realloc(text, cap);
            if (!grown) {
                st = moe_fail(MOE_ENOMEM, "spec: %s: out of memory", path);
                goto exit;
            }
            text = grown;
        }
        size_t got = fread(text + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    if (ferror(fp)) { // a directory opens fine and fails here with EISDIR
        st = moe_fail(MOE_EIO, "spec: %s: %s", path, strerror(errno));
        goto exit;
    }
    st = spec_parse(s, text, len, path);
exit:
    free(text);
    fclose(fp);
    return st;
}

/* "data.sources.N.path" / "data.sources.N.weight": N may be n_sources, which appends. */
static moe_status set_source_field(struct reader *r, const char *key, const yaml_node_t *v) {
    const char *p = key + strlen("data.sources.");
    char *dot;
    errno = 0;
    long i = (*p >= '0' && *p <= '9') ? strtol(p, &dot, 10) : -1;
    if (i < 0 || errno || *dot != '.') return moe_fail(MOE_EINVAL, "spec: %s: unknown field", key);
    struct data_spec *data = &r->s->data;
    if (i > data->n_sources || i >= SPEC_MAX_SOURCES)
        return moe_fail(MOE_EINVAL,
                        "spec: %s: no source %ld (there are %d; index %d appends, at most %d)",
                        key, i, data->n_sources, data->n_sources, SPEC_MAX_SOURCES);
    const struct field *f = find_field(source_fields, N_OF(source_fields), dot + 1);
    if (!f) return moe_fail(MOE_EINVAL, "spec: %s: unknown field", key);
    if (i == data->n_sources) {
        memset(&data->sources[i], 0, sizeof data->sources[i]);
        set_defaults(source_fields, N_OF(source_fields), &data->sources[i]);
        data->n_sources++; // on failure the copy holding it is dropped
    }
    return read_scalar(r, f, &data->sources[i], key, v);
}

moe_status spec_check_sizes(size_t spec_bytes, const char *const *assignments, size_t n) {
    if (spec_bytes > SPEC_TEXT_MAX)
        return moe_fail(MOE_EINVAL, "spec: %zu bytes, more than the limit of %d KiB: not a job "
                        "spec", spec_bytes, SPEC_TEXT_MAX >> 10);
    if (n > SPEC_MAX_OVERRIDES)
        return moe_fail(MOE_EINVAL, "spec: %zu overrides, more than the limit of %d", n,
                        SPEC_MAX_OVERRIDES);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += strlen(assignments[i]);
    if (bytes > SPEC_OVERRIDES_BYTES_MAX)
        return moe_fail(MOE_EINVAL, "spec: the overrides total %zu bytes, more than the limit of "
                        "%d KiB", bytes, SPEC_OVERRIDES_BYTES_MAX >> 10);
    return MOE_OK;
}

/* One "key.path=value" into `s` itself, which the caller throws away on failure (spec_set and
 * spec_set_all apply to a copy, so that a failure changes nothing). */
static moe_status set_one(struct job_spec *s, const char *assignment) {
    char buf[80], key[128];
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment || *assignment == ' ')
        return moe_fail(MOE_EINVAL, "spec: --set '%s': expected key.path=value",
                        shown(assignment, strlen(assignment), buf, sizeof buf));
    size_t klen = (size_t)(eq - assignment);
    while (klen > 0 && assignment[klen - 1] == ' ') klen--; // "--set 'run.steps = 5'"
    if (klen >= sizeof key)
        return moe_fail(MOE_EINVAL, "spec: %s: unknown field",
                        shown(assignment, klen, buf, sizeof buf));
    memcpy(key, assignment, klen);
    key[klen] = '\0';

    /* The value is what would follow "key: " in a file, so quoting and lists work the same. */
    yaml_document_t doc;
    yaml_node_t *root = NULL;
    CHECK(load_document(&doc, eq + 1, strlen(eq + 1), key, NULL, &root));

    moe_status st = MOE_OK;
    struct reader r = {.s = s, .doc = &doc, .with_lines = 0};
    yaml_node_t empty = {.type = YAML_SCALAR_NODE};
    empty.data.scalar.value = (yaml_char_t *)"";
    if (!root) root = &empty; // "key=" sets the empty string (and fails for numbers)

    const struct field *f = find_field(spec_fields, N_FIELDS, key);
    if (f) st = read_field(&r, f, root);
    else if (strncmp(key, "data.sources.", strlen("data.sources.")) == 0)
        st = set_source_field(&r, key, root);
    else
        st = moe_fail(MOE_EINVAL, "spec: %s: unknown field", shown(key, klen, buf, sizeof buf));
    s->optimizer.total_steps = (int)s->run.steps;
    yaml_document_delete(&doc);
    return st;
}

/* The spec is copied once for all of them, not once per override: a request's cost is its
 * overrides' length plus one spec, never their number times the spec (the ~22 KiB struct). */
moe_status spec_set_all(struct job_spec *s, const char *const *assignments, size_t n) {
    if (!n) return MOE_OK;
    CHECK(spec_check_sizes(0, assignments, n));
    struct job_spec *copy = malloc(sizeof *copy);
    if (!copy) return moe_fail(MOE_ENOMEM, "spec: out of memory");
    memcpy(copy, s, sizeof *copy);
    moe_status st = MOE_OK;
    for (size_t i = 0; i < n && st == MOE_OK; i++) st = set_one(copy, assignments[i]);
    if (st == MOE_OK) memcpy(s, copy, sizeof *s);
    free(copy);
    return st;
}

moe_status spec_set(struct job_spec *s, const char *assignment) {
    return spec_set_all(s, &assignment, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Validation                                                                                 */

static moe_status validate_model(const struct job_spec *s) {
    const struct model_config *m = &s->model;
    if (m->vocab < 256)
        return moe_fail(MOE_EINVAL,
                        "spec: model.vocab = %d: must be at least 256 (tokens are bytes)",
                        m->vocab);
    if (m->top_k > m->n_experts)
        return moe_fail(MOE_EINVAL, "spec: router.top_k = %d exceeds model.experts = %d",
                        m->top_k, m->n_experts);
    if (m->d_model % m->n_heads != 0)
        return moe_fail(MOE_EINVAL, "spec: model.d_model = %d is not divisible by model.heads = %d",
                        m->d_model, m->n_heads);
    if ((m->d_model / m->n_heads) % 2 != 0)
        return moe_fail(MOE_EINVAL,
                        "spec: model.d_model / model.heads = %d / %d = %d: the head size must be "
                        "even (rotary pairs)",
                        m->d_model, m->n_heads, m->d_model / m->n_heads);
    if (s->optimizer.min_lr > s->optimizer.lr) {
        char lo[32], hi[32];
        format_real(s->optimizer.min_lr, 1, lo, sizeof lo);
        format_real(s->optimizer.lr, 1, hi, sizeof hi);
        return moe_fail(MOE_EINVAL, "spec: optimizer.min_lr = %s exceeds optimizer.lr = %s", lo,
                        hi);
    }
    return MOE_OK;
}

/* mesh.sync: diloco (docs/crosspod.md): pods to average, and every point where the pods must
 * hold the same model (the end, an evaluation) an outer step. */
static moe_status validate_diloco(const struct job_spec *s) {
    const struct mesh_spec *m = &s->mesh;
    if (strcmp(m->sync, "sync") != 0 && strcmp(m->sync, "diloco") != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = '%s': must be sync or diloco", m->sync);
    if (!mesh_diloco(m) && m->outer_overlap)
        return moe_fail(MOE_EINVAL, "spec: mesh.outer_overlap = true needs mesh.sync = diloco "
                        "(the synchronous mode has no outer step to overlap)");
    if (strcmp(m->outer_quant, "none") != 0 && strcmp(m->outer_quant, "int8") != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.outer_quant = '%s': must be none or int8",
                        m->outer_quant);
    if (!mesh_diloco(m) && strcmp(m->outer_quant, "none") != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.outer_quant = %s needs mesh.sync = diloco (the "
                        "synchronous mode's gradients cross unquantised)", m->outer_quant);
    if (!mesh_diloco(m)) return MOE_OK;
    int H = m->outer_every;
    if (m->pods < 2)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = diloco averages the pods' progress: it "
                        "needs mesh.pods >= 2 (has %d)", m->pods);
    if (s->run.steps % H != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = diloco: run.steps = %ld is not a multiple "
                        "of mesh.outer_every = %d (the job ends on an outer step)", s->run.steps,
                        H);
    if (s->run.eval_every > 0 && s->run.eval_every % H != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = diloco: run.eval_every = %d is not a "
                        "multiple of mesh.outer_every = %d (the pods hold one model only after "
                        "an outer step)", s->run.eval_every, H);
    if (mesh_buddies(m) > 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.sync = diloco: mesh.replicas = %d exceeds "
                        "mesh.pods = %d (the pods' copies of each outer step are its replicas; "
                        "buddy copies are not kept in this mode)", m->replicas, m->pods);
    return MOE_OK;
}

/* The mesh rules of docs/model.md: every slot owns the same number of experts, and every data
 * shard the same number of sequences (and of micro-batches). */
static moe_status validate_mesh(const struct job_spec *s) {
    const struct mesh_spec *m = &s->mesh;
    if (strcmp(m->backend, "tcp") != 0 && strcmp(m->backend, "mpi") != 0)
        return moe_fail(MOE_EINVAL, "spec: mesh.backend = '%s': must be tcp or mpi", m->backend);
    if (s->model.n_experts % m->slots != 0)
        return moe_fail(MOE_EINVAL,
                        "spec: mesh.slots = %d does not divide model.experts = %d (slot s owns "
                        "experts [s*E/S, (s+1)*E/S))", m->slots, s->model.n_experts);
    long shards = (long)m->pods * m->slots;
    if (s->run.batch_size % shards != 0)
        return moe_fail(MOE_EINVAL,
                        "spec: run.batch_size = %d is not divisible by mesh.pods x mesh.slots = "
                        "%d x %d = %ld data shards", s->run.batch_size, m->pods, m->slots, shards);
    int buddies = m->replicas > m->pods ? m->replicas - m->pods : 0;
    /* a 1 x 1 job has nobody to hold a copy: it runs without one (docs/recovery.md) */
    if (shards > 1 && buddies > m->slots - 1)
        return moe_fail(MOE_EINVAL,
                        "spec: mesh.replicas = %d needs %d buddy cop%s of each slot besides the "
                        "%d pod%s, but a pod of mesh.slots = %d has only %d other slot%s to "
                        "hold them", m->replicas, buddies, buddies == 1 ? "y" : "ies", m->pods,
                        m->pods == 1 ? "" : "s", m->slots, m->slots - 1,
                        m->slots == 2 ? "" : "s");
    CHECK(validate_diloco(s));
    int per_shard = (int)(s->run.batch_size / shards);
    if (s->run.micro_batch > 0 && shards > 1 && per_shard % s->run.micro_batch != 0)
        return moe_fail(MOE_EINVAL,
                        "spec: run.micro_batch = %d does not divide the %d sequences of each of "
                        "the %ld data shards (run.batch_size / (mesh.pods x mesh.slots))",
                        s->run.micro_batch, per_shard, shards);
    return MOE_OK;
}

static moe_status validate_source_count(const struct data_spec *d) {
    if (d->n_sources < 1)
        return moe_fail(MOE_EINVAL, "spec: data.sources: at least one source is required");
    if (d->n_sources > SPEC_MAX_SOURCES)
        return moe_fail(MOE_EINVAL, "spec: data.sources: %d sources, at most %d", d->n_sources,
                        SPEC_MAX_SOURCES);
    return MOE_OK;
}

static moe_status validate_sources(const struct data_spec *d) {
    for (int i = 0; i < d->n_sources; i++) {
        char name[64];
        for (size_t j = 0; j < N_OF(source_fields); j++) {
            snprintf(name, sizeof name, "data.sources.%d.%s", i, source_fields[j].name);
            CHECK(check_stored(&source_fields[j], &d->sources[i], name));
        }
    }
    return MOE_OK;
}

moe_status spec_check_source(const struct job_spec *s, int i) {
    /* Only that it is there and readable: reading it is the data loader's job. */
    const char *path = s->data.sources[i].path;
    char name[64];
    struct stat st;
    snprintf(name, sizeof name, "data.sources.%d.path", i);
    if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
        int e = errno;
        return moe_fail(e == ENOENT || e == ENOTDIR || e == EACCES ? MOE_ENOTFOUND : MOE_EINVAL,
                        "spec: %s: %s: %s", name, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return moe_fail(MOE_EINVAL, "spec: %s: %s: not a file or a directory", name, path);
    return MOE_OK;
}

static moe_status validate_schedule(const struct data_spec *d) {
    if (d->n_schedule < 0 || d->n_schedule > SPEC_MAX_SCHEDULE)
        return moe_fail(MOE_EINVAL, "spec: data.schedule: %d points, at most %d", d->n_schedule,
                        SPEC_MAX_SCHEDULE);
    for (int i = 0; i < d->n_schedule; i++) {
        const struct schedule_point *p = &d->schedule[i];
        char name[64];
        snprintf(name, sizeof name, "data.schedule.%d.step", i);
        CHECK(check_stored(&schedule_fields[0], p, name));
        if (i > 0 && p->step <= d->schedule[i - 1].step)
            return moe_fail(MOE_EINVAL,
                            "spec: %s = %ld: steps must increase (data.schedule.%d.step = %ld)",
                            name, p->step, i - 1, d->schedule[i - 1].step);
        int given = schedule_weight_count(p, d->n_sources);
        snprintf(name, sizeof name, "data.schedule.%d.weights", i);
        if (given != d->n_sources)
            return moe_fail(MOE_EINVAL, "spec: %s: %d weights for %d sources (one per source)",
                            name, given, d->n_sources);
        double total = 0;
        for (int j = 0; j < given; j++) {
            char wname[80];
            snprintf(wname, sizeof wname, "%s.%d", name, j);
            struct field f = schedule_weight;
            f.offset = (size_t)j * sizeof(double);
            CHECK(check_stored(&f, p->weights, wname));
            total += p->weights[j];
        }
        if (!(total > 0))
            return moe_fail(MOE_EINVAL, "spec: %s: all zero; some source must have weight > 0",
                            name);
    }
    return MOE_OK;
}

/* An export directory is absolute and climbs nowhere: a worker writes beneath exactly it. */
static moe_status validate_export_dir(const char *d) {
    if (!d[0]) return MOE_OK;
    if (d[0] != '/')
        return moe_fail(MOE_EINVAL, "spec: run.export_dir = \"%s\" is not an absolute path", d);
    for (const char *p = d; (p = strstr(p, "..")); p += 2)
        if ((p == d || p[-1] == '/') && (p[2] == '/' || p[2] == 0))
            return moe_fail(MOE_EINVAL, "spec: run.export_dir = \"%s\" contains \"..\"", d);
    return MOE_OK;
}

moe_status spec_validate(const struct job_spec *s) {
    for (size_t i = 0; i < N_FIELDS; i++)
        CHECK(check_stored(&spec_fields[i], s, spec_fields[i].name));
    CHECK(validate_model(s));
    CHECK(validate_mesh(s));
    if (s->run.micro_batch > 0 && s->run.batch_size % s->run.micro_batch != 0)
        return moe_fail(MOE_EINVAL, "spec: run.micro_batch = %d does not divide run.batch_size = %d",
                        s->run.micro_batch, s->run.batch_size);
    CHECK(validate_export_dir(s->run.export_dir));
    CHECK(validate_source_count(&s->data)); // the schedule's checks need a sane count
    CHECK(validate_schedule(&s->data));
    CHECK(validate_sources(&s->data)); // last: the only check that touches the filesystem
    return MOE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing YAML                                                                               */

struct strbuf {
    char *p;
    size_t len, cap;
    int failed; // an allocation failed: the result is NULL
};

static void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct strbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Strings are always double-quoted: a path may look like a number, a bool, or hold ": " or
 * " #". check_string keeps control characters out, so what needs escaping is '"', '\' and
 * the two Unicode line separators, which YAML would otherwise fold into a space. */
static void sb_quoted(struct strbuf *b, const char *text) {
    sb_printf(b, "\"");
    for (const char *p = text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            sb_printf(b, "\\%c", *p);
        } else if (strncmp(p, "\xe2\x80\xa8", 3) == 0 || strncmp(p, "\xe2\x80\xa9", 3) == 0) {
            sb_printf(b, "\\%c", p[2] == '\xa8' ? 'L' : 'P'); // U+2028, U+2029
            p += 2;
        } else {
            sb_printf(b, "%c", *p);
        }
    }
    sb_printf(b, "\"");
}

#define COMMENT_COLUMN 36

static void sb_comment(struct strbuf *b, size_t line_start, const char *comment) {
    size_t width = b->failed ? 0 : b->len - line_start;
    sb_printf(b, "%*s# %s\n", width < COMMENT_COLUMN ? (int)(COMMENT_COLUMN - width) : 2, "",
              comment);
}

static void yaml_scalar_line(struct strbuf *b, const struct field *f, const void *base,
                             const char *key, int indent) {
    size_t start = b->len;
    sb_printf(b, "%*s%s: ", indent, "", key);
    if (f->type == TYPE_STRING) {
        sb_quoted(b, cmember(base, f));
    } else {
        char value[64];
        format_scalar(f, base, value, sizeof value);
        sb_printf(b, "%s", value);
    }
    sb_comment(b, start, f->comment);
}

static void yaml_sources(struct strbuf *b, const struct field *f, const struct data_spec *d) {
    size_t start = b->len;
    if (d->n_sources == 0) {
        sb_printf(b, "  sources: []");
        sb_comment(b, start, "REQUIRED: e.g. [{path: /usr/share/games/fortunes, weight: 1.0}]");
        return;
    }
    sb_printf(b, "  sources:");
    sb_comment(b, start, f->comment);
    for (int i = 0; i < d->n_sources && i < SPEC_MAX_SOURCES; i++) {
        char weight[32];
        format_real(d->sources[i].weight, 0, weight, sizeof weight);
        sb_printf(b, "    - {path: ");
        sb_quoted(b, d->sources[i].path);
        sb_printf(b, ", weight: %s}\n", weight);
    }
}

static void yaml_schedule(struct strbuf *b, const struct field *f, const struct data_spec *d) {
    size_t start = b->len;
    if (d->n_schedule <= 0) {
        sb_printf(b, "  schedule: []");
        sb_comment(b, start, "optional: e.g. [{step: 1000, weights: [1.0, 0.5]}], one per source");
        return;
    }
    sb_printf(b, "  schedule:");
    sb_comment(b, start, f->comment);
    for (int i = 0; i < d->n_schedule && i < SPEC_MAX_SCHEDULE; i++) {
        const struct schedule_point *p = &d->schedule[i];
        sb_printf(b, "    - {step: %ld, weights: [", p->step);
        for (int j = 0; j < SPEC_MAX_SOURCES && p->weights[j] != WEIGHT_UNSET; j++) {
            char w[32];
            format_real(p->weights[j], 0, w, sizeof w);
            sb_printf(b, "%s%s", j ? ", " : "", w);
        }
        sb_printf(b, "]}\n");
    }
}

static const char *section_comment(const char *name, size_t len) {
    for (size_t i = 0; i < N_OF(spec_sections); i++)
        if (strlen(spec_sections[i].name) == len && strncmp(spec_sections[i].name, name, len) == 0)
            return spec_sections[i].comment;
    return "";
}

char *spec_to_yaml(const struct job_spec *s) {
    struct strbuf b = {0};
    sb_printf(&b, "# moed job spec. Every field is listed with its value; a field left out takes\n"
                  "# its default. Override any field with --set section.field=value.\n");
    const char *section = "";
    size_t section_len = 0;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const struct field *f = &spec_fields[i];
        const char *dot = strchr(f->name, '.');
        size_t len = dot ? (size_t)(dot - f->name) : 0;
        if (len && (len != section_len || strncmp(section, f->name, len) != 0)) {
            size_t start = b.len;
            sb_printf(&b, "%.*s:", (int)len, f->name);
            sb_comment(&b, start, section_comment(f->name, len));
            section = f->name;
            section_len = len;
        }
        if (f->type == TYPE_SOURCES) yaml_sources(&b, f, &s->data);
        else if (f->type == TYPE_SCHEDULE) yaml_schedule(&b, f, &s->data);
        else yaml_scalar_line(&b, f, s, dot ? dot + 1 : f->name, dot ? 2 : 0);
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing JSON                                                                               */

/* Numbers as the YAML writer prints them, so JSON also says 0.003. Written raw because cJSON
 * prints doubles with 15 digits when that is within an epsilon, which does not read back
 * exactly. %g never writes a number JSON would reject ("1e-05", "0.5", "-2"). */
static cJSON *json_real(double v, int is_float) {
    if (!isfinite(v)) return cJSON_CreateNull(); // only in a spec that fails validation
    char text[32];
    format_real(v, is_float, text, sizeof text);
    return cJSON_CreateRaw(text);
}

static cJSON *json_scalar(const struct field *f, const void *base) {
    const void *p = cmember(base, f);
    char text[32];
    switch (f->type) {
    case TYPE_INT: return cJSON_CreateNumber(*(const int *)p);
    case TYPE_LONG: return cJSON_CreateNumber((double)*(const long *)p);
    case TYPE_U64: // a double would round seeds above 2^53: write the digits themselves
        snprintf(text, sizeof text, "%" PRIu64, *(const uint64_t *)p);
        return cJSON_CreateRaw(text);
    case TYPE_FLOAT: return json_real(*(const float *)p, 1);
    case TYPE_DOUBLE: return json_real(*(const double *)p, 0);
    case TYPE_BOOL: return cJSON_CreateBool(*(const int *)p);
    case TYPE_STRING: {
        char value[SPEC_PATH_MAX];
        format_scalar(f, base, value, sizeof value);
        return cJSON_CreateString(value);
    }
    case TYPE_SOURCES:
    case TYPE_SCHEDULE:
    case TYPE_WEIGHTS: break;
    }
    return NULL;
}

/* Adds item to object; cJSON does not take ownership when adding fails. */
static int json_add(cJSON *object, const char *key, cJSON *item) {
    if (item && cJSON_AddItemToObject(object, key, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

static int json_add_to_array(cJSON *array, cJSON *item) {
    if (item && cJSON_AddItemToArray(array, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

static cJSON *json_sources(const struct data_spec *d) {
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; list && i < d->n_sources && i < SPEC_MAX_SOURCES; i++) {
        cJSON *item = cJSON_CreateObject();
        int ok = json_add_to_array(list, item);
        for (size_t j = 0; ok && j < N_OF(source_fields); j++) {
            const struct field *f = &source_fields[j];
            ok = json_add(item, f->name, json_scalar(f, &d->sources[i]));
        }
        if (!ok) {
            cJSON_Delete(list);
            return NULL;
        }
    }
    return list;
}

static cJSON *json_schedule(const struct data_spec *d) {
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; list && i < d->n_schedule && i < SPEC_MAX_SCHEDULE; i++) {
        const struct schedule_point *p = &d->schedule[i];
        cJSON *item = cJSON_CreateObject(), *weights = NULL;
        int ok = json_add_to_array(list, item) &&
                 json_add(item, "step", json_scalar(&schedule_fields[0], p)) &&
                 json_add(item, "weights", weights = cJSON_CreateArray());
        for (int j = 0; ok && j < SPEC_MAX_SOURCES && p->weights[j] != WEIGHT_UNSET; j++)
            ok = json_add_to_array(weights, json_real(p->weights[j], 0));
        if (!ok) {
            cJSON_Delete(list);
            return NULL;
        }
    }
    return list;
}

/* cJSON leaves U+2028/U+2029 raw inside strings, as JSON allows, but a YAML reader (ours)
 * folds them into spaces. "\u2028" means the same to both. The copy is also what lets callers
 * free() the result whatever allocator cJSON was given. */
static char *escape_line_separators(const char *json) {
    char *out = malloc(2 * strlen(json) + 1), *q = out; // 3 bytes become at most 6

    for (const char *p = json; out && *p; p++) {
        if (strncmp(p, "\xe2\x80\xa8", 3) == 0 || strncmp(p, "\xe2\x80\xa9", 3) == 0) {
            q += sprintf(q, "\\u%s", p[2] == '\xa8' ? "2028" : "2029");
            p += 2;
        } else {
            *q++ = *p;
        }
    }
    if (out) *q = '\0';
    return out;
}

/* The object of the section `name` belongs to ("model" for "model.vocab"), made on first use. */
static cJSON *json_section(cJSON *root, const char *name, const char **key) {
    const char *dot = strchr(name, '.');
    *key = dot ? dot + 1 : name;
    if (!dot) return root;
    char section[32];
    snprintf(section, sizeof section, "%.*s", (int)(dot - name), name);
    cJSON *object = cJSON_GetObjectItemCaseSensitive(root, section);
    if (object) return object;
    object = cJSON_CreateObject();
    return json_add(root, section, object) ? object : NULL;
}

char *spec_to_json(const struct job_spec *s) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    for (size_t i = 0; ok && i < N_FIELDS; i++) {
        const struct field *f = &spec_fields[i];
        const char *key;
        cJSON *section = json_section(root, f->name, &key);
        if (!section) {
            ok = 0;
            break;
        }
        cJSON *value;
        if (f->type == TYPE_SOURCES) value = json_sources(&s->data);
        else if (f->type == TYPE_SCHEDULE) value = json_schedule(&s->data);
        else value = json_scalar(f, s);
        ok = json_add(section, key, value);
    }
    char *printed = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!printed) return NULL;
    char *text = escape_line_separators(printed);
    cJSON_free(printed);
    return text;
}
