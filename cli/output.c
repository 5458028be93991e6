/*
 * output.c — the helpers moectl.h declares for every command: the error line, reading a
 * command's options, a flag's integer, times and durations for people, a progress bar, a
 * cJSON object as one line.
 */
#include "moectl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int moectl_fail(int code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "moectl: %s\n", msg);
    return code;
}

int moectl_parse_int(const char *s, const char *flag, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!s[0] || *end || errno || v < lo || v > hi)
        return moectl_fail(EXIT_BAD_INPUT, "%s: expected an integer in [%lld, %lld], got '%s'",
                           flag, lo, hi, s);
    *out = v;
    return EXIT_OK;
}

int moectl_options(int argc, char **argv, const struct command_line *cl, int *code) {
    *code = EXIT_OK;
    int c;
    while ((c = getopt_long(argc, argv, cl->shorts, cl->opts, NULL)) != -1) {
        if (c == 'h') {
            cl->usage(stdout, argv[0]);
            return 0;
        }
        int r = c == '?' ? -1 : cl->take(cl->ctx, c, optarg);
        if (r == 0) continue;
        if (r < 0) cl->usage(stderr, argv[0]);
        *code = r < 0 ? EXIT_BAD_INPUT : r;
        return 0;
    }
    if (cl->operands >= 0 && argc - optind != cl->operands) {
        cl->usage(stderr, argv[0]);
        *code = EXIT_BAD_INPUT;
        return 0;
    }
    return 1;
}

void moectl_age(char *out, size_t cap, long long ms) {
    if (ms < 0) ms = 0;
    long long s = ms / 1000;
    if (s < 60)
        snprintf(out, cap, "%.1fs", ms / 1000.0);
    else if (s < 3600)
        snprintf(out, cap, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, cap, "%lldh%02lldm", s / 3600, s / 60 % 60);
    else
        snprintf(out, cap, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

void moectl_clock(char *out, size_t cap, long long unix_ms) {
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, cap, "%H:%M:%S", &tm);
}

void moectl_duration(char *out, size_t cap, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
}

void moectl_bar(char *out, int width, double frac) {
    int filled = (int)(frac * width);
    for (int i = 0; i < width; i++) out[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    out[width] = 0;
}

int moectl_print_json(struct cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    if (text) printf("%s\n", text);
    fflush(stdout);
    cJSON_free(text);
    cJSON_Delete(j);
    return text ? 0 : -1;
}
