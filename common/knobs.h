/*
 * knobs.h — a daemon's flags and environment knobs as one table.
 *
 * Owns: reading a table of knobs (name, environment variable, type, default, bounds, help)
 * into a configuration struct, in one order: defaults, then the environment, then the command
 * line; every value checked against its type and bounds, with an error that names the flag or
 * variable and what it accepts; and printing --help from the same table, so the help, the
 * defaults and the checks can never disagree. A library's environment-only knobs (the data
 * plane's MOE_COMM_*) are a table of their own, printed under the daemon's flags.
 * Never: reads a file, exits, or checks how knobs relate to each other (the daemon does: "the
 * timeout must be at least twice the interval").
 */
#ifndef MOE_KNOBS_H
#define MOE_KNOBS_H

#include "status.h"

#include <stddef.h>
#include <stdio.h>

enum knob_type {
    KNOB_BOOL,   // a flag without a value sets it to 1; the environment takes 0/1
    KNOB_INT,    // int, within [lo, hi]
    KNOB_LONG,   // long, within [lo, hi]
    KNOB_DOUBLE, // double, within [lo, hi]
    KNOB_STR,    // copied into a char array of `size` bytes; longer is an error
    KNOB_CHOICE, // int: the index of the value in `choices` ("debug|info|warn|error")
    KNOB_LIST,   // repeatable: a char array of `size` bytes holding the values as a list (below)
};

/* KNOB_LIST: every use of the flag adds a value; the flags given replace the environment's
 * list, which is colon-separated like $PATH (empty entries ignored). The field holds the
 * values one after another, each NUL-terminated, and an empty string after the last:
 *   for (const char *v = cfg.roots; *v; v = knob_list_next(v)) ...
 * A list that would not fit in the field is an error naming the flag. */
const char *knob_list_next(const char *v);
int knob_list_count(const char *list);

struct knob {
    const char *flag;    // "listen" for --listen; NULL: environment only
    const char *env;     // "MOE_COMM_SHM"; NULL: command line only
    enum knob_type type;
    size_t offset;       // of the field in the configuration struct
    size_t size;         // KNOB_STR: the field's capacity
    const char *def;     // the default, as it would be written ("" for none)
    double lo, hi;       // KNOB_INT / _LONG / _DOUBLE bounds
    const char *choices; // KNOB_CHOICE: "a|b|c"
    const char *arg;     // the value's name in --help: "HOST:PORT", "MS"
    const char *help;    // one sentence (wrapped when printed)
};

/* Field offset and size for a table row: KNOB_AT(struct coordinator_config, listen). */
#define KNOB_AT(type, field) offsetof(type, field), sizeof(((type *)0)->field)

/* Defaults, the environment, then argv (getopt_long; argv[0] is the program). MOE_EINVAL
 * names the flag or variable and what it takes: "--pod must be an integer in 0..1048576, not
 * 'x'". Arguments that are not flags are an error. With --help (or -h) anywhere, *help is 1,
 * nothing is read and the result is MOE_OK: help is printed whatever else is wrong. */
moe_status knobs_parse(const struct knob *t, int n, void *cfg, int argc, char **argv, int *help);

/* Only the defaults and the environment (a library's tunables). */
moe_status knobs_load_env(const struct knob *t, int n, void *cfg);

/* Prints every flag of the table with its value, help, default and bounds; with env_only, the
 * environment knobs instead ("MOE_COMM_SHM=0|1  ..."). */
void knobs_print(FILE *to, const struct knob *t, int n, int env_only);

#endif
