#include "knobs.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How a knob is named in an error: "--listen" or "MOE_COMM_SHM". */
static void knob_name(const struct knob *k, int from_env, char *out, size_t cap) {
    if (from_env || !k->flag)
        snprintf(out, cap, "%s", k->env ? k->env : "?");
    else
        snprintf(out, cap, "--%s", k->flag);
}

static int choice_index(const char *choices, const char *v) {
    size_t n = strlen(v);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && n > 0 && strncmp(p, v, n) == 0) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

const char *knob_list_next(const char *v) { return v + strlen(v) + 1; }

int knob_list_count(const char *list) {
    int n = 0;
    for (const char *v = list; *v; v = knob_list_next(v)) n++;
    return n;
}

/* Appends the value v[0..len) to the list in `field`. */
static moe_status list_add(const struct knob *k, char *field, const char *v, size_t len,
                           const char *name) {
    size_t used = 0;
    while (field[used]) used += strlen(field + used) + 1; // to the empty string that ends it
    if (len == 0) return moe_fail(MOE_EINVAL, "%s needs a non-empty value", name);
    if (memchr(v, 0, len)) return moe_fail(MOE_EINVAL, "%s: a value holds a NUL byte", name);
    if (used + len + 2 > k->size)
        return moe_fail(MOE_EINVAL, "%s: the values given are longer than %zu bytes in all", name,
                        k->size - 2);
    memcpy(field + used, v, len);
    field[used + len] = 0;
    field[used + len + 1] = 0;
    return MOE_OK;
}

/* The list becomes the colon-separated entries of v (a default or the environment). */
static moe_status list_split(const struct knob *k, char *field, const char *v, const char *name) {
    memset(field, 0, k->size);
    for (const char *p = v; *p;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (len > 0) CHECK(list_add(k, field, p, len, name));
        p += len;
        if (*p == ':') p++;
    }
    return MOE_OK;
}

static moe_status set_value(const struct knob *k, void *cfg, const char *v, int from_env) {
    char name[96];
    knob_name(k, from_env, name, sizeof name);
    char *field = (char *)cfg + k->offset;
    char *end;
    switch (k->type) {
    case KNOB_BOOL:
        if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
            return moe_fail(MOE_EINVAL, "%s must be 0 or 1, not '%s'", name, v);
        *(int *)field = v[0] == '1';
        return MOE_OK;
    case KNOB_INT:
    case KNOB_LONG: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || (double)x < k->lo || (double)x > k->hi)
            return moe_fail(MOE_EINVAL, "%s must be an integer in %.0f..%.0f, not '%s'", name,
                            k->lo, k->hi, v);
        if (k->type == KNOB_INT)
            *(int *)field = (int)x;
        else
            *(long *)field = x;
        return MOE_OK;
    }
    case KNOB_DOUBLE: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < k->lo || x > k->hi)
            return moe_fail(MOE_EINVAL, "%s must be a number in %.10g..%.10g, not '%s'", name,
                            k->lo, k->hi, v);
        *(double *)field = x;
        return MOE_OK;
    }
    case KNOB_STR:
        if (strlen(v) >= k->size)
            return moe_fail(MOE_EINVAL, "%s is longer than %zu bytes", name, k->size - 1);
        memcpy(field, v, strlen(v) + 1);
        return MOE_OK;
    case KNOB_LIST: // a flag adds one value (knobs_parse empties the list at its first use)
        return from_env ? list_split(k, field, v, name) : list_add(k, field, v, strlen(v), name);
    case KNOB_CHOICE: {
        int i = choice_index(k->choices, v);
        if (i < 0)
            return moe_fail(MOE_EINVAL, "%s must be one of %s, not '%s'", name, k->choices, v);
        *(int *)field = i;
        return MOE_OK;
    }
    }
    return moe_fail(MOE_EINTERNAL, "%s: unknown knob type", name);
}

moe_status knobs_load_env(const struct knob *t, int n, void *cfg) {
    for (int i = 0; i < n; i++) {
        const char *d = t[i].def ? t[i].def : "";
        if (t[i].type == KNOB_LIST) CHECK(set_value(&t[i], cfg, d, 1)); // split, not appended
        else if (t[i].type == KNOB_STR || d[0]) CHECK(set_value(&t[i], cfg, d, 0));
        else if (t[i].type == KNOB_BOOL) *(int *)((char *)cfg + t[i].offset) = 0;
    }
    for (int i = 0; i < n; i++) {
        const char *v = t[i].env ? getenv(t[i].env) : NULL;
        if (v && v[0]) CHECK(set_value(&t[i], cfg, v, 1));
    }
    return MOE_OK;
}

moe_status knobs_parse(const struct knob *t, int n, void *cfg, int argc, char **argv, int *help) {
    *help = 0;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { // help wins over bad knobs
            *help = 1;
            return MOE_OK;
        }
    CHECK(knobs_load_env(t, n, cfg));
    struct option *opts = calloc((size_t)n + 2, sizeof *opts);
    if (!opts) return moe_fail(MOE_ENOMEM, "out of memory reading the command line");
    int n_opts = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i].flag) continue;
        opts[n_opts].name = t[i].flag;
        opts[n_opts].has_arg = t[i].type == KNOB_BOOL ? no_argument : required_argument;
        opts[n_opts].val = 1000 + i;
        n_opts++;
    }
    opts[n_opts].name = "help";
    opts[n_opts].val = 'h';
    /* the first use of a repeatable flag replaces the environment's list */
    unsigned char *listed = calloc((size_t)n, 1);
    if (!listed) {
        free(opts);
        return moe_fail(MOE_ENOMEM, "out of memory reading the command line");
    }
    moe_status s = MOE_OK;
    optind = 1;
    opterr = 0;
    int c;
    while (s == MOE_OK && (c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c == 'h') {
            *help = 1;
        } else if (c >= 1000) {
            const struct knob *k = &t[c - 1000];
            if (k->type == KNOB_LIST && !listed[c - 1000]++)
                memset((char *)cfg + k->offset, 0, k->size);
            s = set_value(k, cfg, k->type == KNOB_BOOL ? "1" : optarg, 0);
        } else if (c == ':') {
            s = moe_fail(MOE_EINVAL, "%s needs a value", argv[optind - 1]);
        } else {
            s = moe_fail(MOE_EINVAL, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (s == MOE_OK && optind < argc)
        s = moe_fail(MOE_EINVAL, "unexpected argument '%s'", argv[optind]);
    free(listed);
    free(opts);
    return s;
}

/* Prints `text` from column `col`, wrapped before `width`; the first line continues at *at. */
static void wrap(FILE *to, const char *text, int col, int width, int at) {
    const char *p = text;
    while (*p) {
        const char *sp = strchr(p, ' ');
        int len = sp ? (int)(sp - p) : (int)strlen(p);
        if (at > col && at + 1 + len > width) {
            fprintf(to, "\n%*s", col, "");
            at = col;
        } else if (at > col) {
            fputc(' ', to);
            at++;
        } else {
            fprintf(to, "%*s", col - at, "");
            at = col;
        }
        fprintf(to, "%.*s", len, p);
        at += len;
        p += len;
        while (*p == ' ') p++;
    }
    fputc('\n', to);
}

void knobs_print(FILE *to, const struct knob *t, int n, int env_only) {
    enum { COL = 30, WIDTH = 96 };
    for (int i = 0; i < n; i++) {
        const struct knob *k = &t[i];
        if (env_only ? k->flag != NULL || !k->env : !k->flag) continue;
        char head[128];
        const char *arg = k->arg ? k->arg : k->type == KNOB_CHOICE ? k->choices : "VALUE";
        if (env_only)
            snprintf(head, sizeof head, "  %s=%s%s", k->env, k->type == KNOB_BOOL ? "0|1" : arg,
                     k->type == KNOB_LIST ? ":..." : "");
        else if (k->type == KNOB_BOOL)
            snprintf(head, sizeof head, "  --%s", k->flag);
        else
            snprintf(head, sizeof head, "  --%s %s", k->flag, arg);
        /* help (default D; LO..HI; or $ENV) */
        char text[768], extra[256] = "";
        size_t o = 0;
        if (k->def && k->def[0])
            o += (size_t)snprintf(extra + o, sizeof extra - o, "%sdefault %s", o ? "; " : "",
                                  k->def);
        if ((k->type == KNOB_INT || k->type == KNOB_LONG) && o < sizeof extra)
            o += (size_t)snprintf(extra + o, sizeof extra - o, "%s%.0f..%.0f", o ? "; " : "",
                                  k->lo, k->hi);
        if (k->type == KNOB_DOUBLE && o < sizeof extra)
            o += (size_t)snprintf(extra + o, sizeof extra - o, "%s%.10g..%.10g", o ? "; " : "",
                                  k->lo, k->hi);
        if (!env_only && k->type == KNOB_LIST && o < sizeof extra)
            o += (size_t)snprintf(extra + o, sizeof extra - o, "%srepeatable", o ? "; " : "");
        if (!env_only && k->env && o < sizeof extra)
            o += (size_t)snprintf(extra + o, sizeof extra - o, "%sor $%s%s", o ? "; " : "", k->env,
                                  k->type == KNOB_LIST ? ", colon-separated" : "");
        snprintf(text, sizeof text, o ? "%s (%s)" : "%s", k->help, extra);
        fputs(head, to);
        int at = (int)strlen(head);
        if (at >= COL) {
            fputc('\n', to);
            at = 0;
        }
        wrap(to, text, COL, WIDTH, at);
    }
}
