/*
 * moectl.h — what moectl's command files share: the exit codes, the commands' entry points,
 * and the few helpers every command writes its output with.
 *
 * Every command is `int cmd_x(int argc, char **argv)` with argv[0] the command's name, and
 * returns the process's exit code. moectl.c dispatches and runs train, eval and generate in
 * this process; cluster.c and jobs.c are the commands that talk to a coordinator; client.c is
 * how they reach it; cluster_dir.c holds a local cluster's files and processes; chaos.c
 * injects faults into a job on a local cluster, and chaos_ledger.c reads the job's event
 * history for it (on the layer of client.c); output.c holds the helpers below.
 * Layers, lowest first: output.c; cluster_dir.c; client.c; the command files (moectl.c,
 * cluster.c, jobs.c, chaos.c). A file calls only into the layers below it, and among the
 * command files only main's dispatch and chaos.c's use of cluster_restart cross over.
 * Never: output.c knows about a coordinator, a cluster or a model; it prints and parses.
 */
#ifndef MOECTL_H
#define MOECTL_H

#include <getopt.h>
#include <stddef.h>
#include <stdio.h>

/* The exit codes, the same for every command (moectl help lists them). */
enum moectl_exit {
    EXIT_OK = 0,          // success; watch: the job succeeded
    EXIT_RUN_FAILED = 1,  // the job, the run or the operation failed
    EXIT_BAD_INPUT = 2,   // usage, spec, data or model file, unknown job (NOT_FOUND)
    EXIT_CANCELLED = 3,   // watch: the job was cancelled
    EXIT_UNREACHABLE = 4, // no coordinator to talk to, or it refused our credentials
};

/* ---- output.c ---- */

/* Prints "moectl: <message>" on stderr and returns `code`. */
int moectl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A flag's integer: EXIT_OK with *out set, or EXIT_BAD_INPUT after
 * "moectl: FLAG: expected an integer in [LO, HI], got 'S'". */
int moectl_parse_int(const char *s, const char *flag, long long lo, long long hi, long long *out);

/* A command's options, for moectl_options: getopt_long's table and letters, the usage text,
 * and take(), which stores one option in ctx and returns 0, -1 for an option it does not
 * know (a usage error), or an exit code once it has said what is wrong with the value. */
struct command_line {
    const struct option *opts;
    const char *shorts; // 'h' among them: -h and --help print the usage on stdout
    void (*usage)(FILE *to, const char *cmd);
    int (*take)(void *ctx, int opt, const char *arg);
    void *ctx;
    int operands; // exactly this many after the options (-1: any number)
};
/* Reads the options of argv (argv[0] the command's name). 1: go on, with optind at the
 * first operand and *code EXIT_OK; 0: stop with *code, EXIT_OK after --help, else
 * EXIT_BAD_INPUT after the usage on stderr, or take()'s own exit code. */
int moectl_options(int argc, char **argv, const struct command_line *cl, int *code);

/* Times for people. */
void moectl_age(char *out, size_t cap, long long ms);          // "4.2s", "3m07s", "2h05m", "3d04h"
void moectl_clock(char *out, size_t cap, long long unix_ms);   // local "16:40:01"
void moectl_duration(char *out, size_t cap, double seconds);   // "0:42", "1:02:03"
/* A progress bar of `width` characters, "=====>    ", in out[width + 1]. */
void moectl_bar(char *out, int width, double frac);

struct cJSON;
/* Prints j on one line of stdout, flushes it, and frees j: 0, or -1 when out of memory
 * (nothing printed). */
int moectl_print_json(struct cJSON *j);

/* ---- the commands ---- */

int cmd_cluster(int argc, char **argv); // cluster up | down | status
int cmd_submit(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_watch(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_delete(int argc, char **argv); // an ended job, for good
int cmd_fetch(int argc, char **argv);
int cmd_steps(int argc, char **argv); // a job's stored per-step metrics (its loss curve)
int cmd_events(int argc, char **argv); // every stored event of a job (ListEvents, paged)
int cmd_chaos(int argc, char **argv); // a reproducible schedule of faults against a job
int cmd_tokenizer(int argc, char **argv); // tokenizer train (tokenize.c)
int cmd_data(int argc, char **argv);      // data prepare (tokenize.c)
struct tokenizer;
/* The tokenizer stored in model_path (*tok NULL for a byte-level model), checked against the
 * model's vocab and, when check is not NULL, against the tokenizer file `check`: EXIT_OK, or
 * EXIT_BAD_INPUT after one line saying what does not match. (tokenize.c) */
int moectl_model_tokenizer(const char *model_path, int vocab, const char *check,
                           struct tokenizer **tok);

/* Restarts what has stopped of the local cluster in `dir` the way `moectl cluster up` does:
 * the coordinator on its recorded port, each dead worker, an mpirun pod that lost any rank as a
 * new mpirun; the shape recorded in cluster.json. Waits until the coordinator serves and every
 * restarted worker has registered; prints nothing but errors. A cluster that runs whole is
 * left alone (EXIT_OK); none running at all is EXIT_BAD_INPUT. (cluster.c) */
int cluster_restart(const char *dir);

#endif
