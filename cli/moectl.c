/*
 * moectl.c — the command line of moed: dispatch, and the commands that run in this process.
 *
 * Owns: which file runs each command, the usage text, and the in-process commands with their
 * output (human lines, a progress bar on a terminal, or --json events, one a line):
 *   moectl train SPEC [--set key.path=value ...] [--json] [--quiet]
 *                [--resume STATE] [--state-out STATE] [--stop-at STEP]
 *   moectl eval MODEL DATA [--batch N] [--max-windows N] [--tokenizer TOK] [--json]
 *   moectl generate MODEL [--prompt TEXT] [--bytes N] [--temperature T] [--seed S]
 *                  [--tokenizer TOK]
 *   moectl spec            print a complete default job spec (YAML, one comment per field)
 *   moectl tokenizer train | data prepare   learned vocabularies (tokenize.c)
 * and, talking to a coordinator (client.c says how it is found):
 *   moectl cluster up|down|status      a local cluster of real processes (cluster.c)
 *   moectl submit|jobs|status|watch|cancel|delete|fetch|steps|events   jobs on a cluster (jobs.c)
 *   moectl plot JOB -o FILE.svg|.png   a job's curves, expert load and events (plot.c)
 *   moectl chaos JOB                   faults injected into a job on a local cluster (chaos.c)
 * Exit codes: 0 success (watch: the job succeeded); 1 the run, the job or the operation failed;
 * 2 bad input: usage, a malformed or inconsistent spec, a missing or malformed data or model
 * file, an unknown job (NOT_FOUND); 3 watch: the job was cancelled; 4 the coordinator cannot be
 * reached or refused the credentials (UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED).
 * Errors are one line on stderr: "moectl: <what is wrong>".
 * Never: does the math itself (the trainer library and the kernels do), or starts gRPC
 * before a command that talks to a coordinator needs it.
 */
#include "../common/blas_select.h"
#include "../common/clock.h"
#include "../common/log.h"
#include "../common/spec.h"
#include "../common/tokenizer.h"
#include "../kernels/model.h"
#include "../worker/trainer/data.h"
#include "../worker/trainer/generate.h"
#include "../worker/trainer/model_io.h"
#include "../worker/trainer/trainer.h"
#include "../proto/rpc.h"
#include "moectl.h"
#include "plot.h"

#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static void usage(FILE *to, const char *cmd) {
    (void)cmd; // one text for every command of this file
    fprintf(to,
            "usage: moectl <command> [options]\n"
            "\n"
            "in this process:\n"
            "  train SPEC [--set key.path=value ...] [--json] [--quiet]\n"
            "            [--resume STATE] [--state-out STATE] [--stop-at STEP]\n"
            "        train a model in this process; SPEC is YAML or JSON (see `moectl spec`).\n"
            "        --state-out writes the full training state (parameters, optimizer moments,\n"
            "        step) when the run ends, stops at --stop-at, or is interrupted; --resume\n"
            "        continues from one, reaching the same model bit for bit\n"
            "  eval MODEL DATA [--batch N] [--max-windows N] [--tokenizer TOK] [--json]\n"
            "        mean loss of a .safetensors model on a text file or directory, per token\n"
            "        and in bits per byte of text (a model trained with a tokenizer carries\n"
            "        it; --tokenizer TOK only checks that it is that one)\n"
            "  generate MODEL [--prompt TEXT] [--bytes N] [--temperature T] [--seed S]\n"
            "           [--tokenizer TOK]\n"
            "        sample N tokens of text from a model (temperature 0: always the likeliest)\n"
            "  tokenizer train DATA... --vocab N [--type bpe|unigram] -o TOK.model\n"
            "        learn a SentencePiece vocabulary of N pieces (byte fallback) from text\n"
            "  data prepare SPEC [--set key.path=value ...] [--tokenizer TOK] -o DIR\n"
            "        tokenize the spec's sources once into DIR (then data.prepared: DIR)\n"
            "  spec  print a complete default job spec to edit\n"
            "  help  this text\n"
            "\n"
            "a local cluster (coordinator + workers on 127.0.0.1; DIR defaults to\n"
            "$MOED_CLUSTER_DIR, else $HOME/.moed/cluster):\n"
            "  cluster up [--workers N | --slots S [--spares N]] [--pods P] [--backend tcp|mpi]\n"
            "             [--threads N] [--port P] [--tls|--no-tls] [--heartbeat-timeout-ms N]\n"
            "             [--dir DIR] [--json]\n"
            "        start it, or restart what of it has stopped; state and logs in DIR.\n"
            "        --slots S: P pods of S workers each (plus N spares); --backend mpi\n"
            "        launches each pod's workers with one `mpirun -np S`.\n"
            "        Defaults: 2 workers, 1 pod, the cores shared out, any free port, or what\n"
            "        the cluster in DIR last ran with\n"
            "  cluster down [--dir DIR] [--purge]\n"
            "        stop it; its jobs stay in DIR for the next `cluster up` unless --purge\n"
            "  cluster status [--json]     workers, pods, health\n"
            "\n"
            "jobs on a cluster:\n"
            "  submit SPEC [--set key.path=value ...] [--json]\n"
            "        prints the new job's id (JOB=$(moectl submit job.yaml))\n"
            "  jobs [--active] [--limit N] [--json]\n"
            "        every job and its state, oldest first (read page by page; --limit N: the\n"
            "        first N only)\n"
            "  status JOB [--json]         step, loss, speed, expert load, the mesh's slots\n"
            "                              (worker, step, step/comm ms, bytes moved), the\n"
            "                              committed step and recoveries, events\n"
            "  watch JOB [--json]          live progress until the job ends; exit code from it\n"
            "  cancel JOB [--json]\n"
            "  delete JOB [--json]         an ended job, its steps, events and model, for good\n"
            "                              (the coordinator also expires them: --job-retention-s)\n"
            "  fetch JOB -o FILE [--json]  the trained model (.safetensors)\n"
            "  steps JOB [--from STEP] [--json]  every stored step's metrics: the loss curve\n"
            "  events JOB [--page-size N] [--json]  every event of the job, oldest first, with\n"
            "                              its seq (status shows only the latest)\n"
            "  plot JOB -o FILE.svg|FILE.png [--width W] [--height H] [--json]\n"
            "        the loss, held-out loss, tokens/s and expert load against step, with the\n"
            "        failures, recoveries and moves marked (offline: --from-steps, moectl plot -h)\n"
            "  chaos JOB [--seed N] [--faults K] [--kinds kill,kill2,stop,coordinator,cut,flip]\n"
            "            [--gap-steps G] [--timeout S] [--dir DIR] [--json] [--dry-run]\n"
            "        a schedule of K faults drawn from the seed against a job on a local cluster\n"
            "        (kill -9 workers, SIGSTOP one, kill and restart the coordinator, cut a\n"
            "        data-plane connection), each waited for until the job has recovered\n"
            "  they take [--coordinator HOST:PORT] [--token-file F] [--ca F] [--cluster-dir DIR]\n"
            "  (after the command or before it: moectl --coordinator H:P jobs)\n"
            "  (or $MOED_COORDINATOR, $MOED_TOKEN or $MOED_TOKEN_FILE, $MOED_TLS_CA,\n"
            "  $MOED_CLUSTER_DIR); by default the local cluster's coordinator.addr, client.token\n"
            "  and tls/cert.pem. --json prints the reply messages of proto/moed.proto, one a line\n"
            "\n"
            "exit codes: 0 ok (watch: the job succeeded); 1 the run, the job or the operation\n"
            "failed; 2 bad input (usage, spec, data or model file, unknown job); 3 watch: the job\n"
            "was cancelled; 4 the coordinator cannot be reached or refused the credentials\n");
}

static double bits(double nats) { return nats / log(2.0); }

/* ---- train ---- */

struct progress {
    int tty;       // stdout is a terminal: draw a bar with an ETA
    int json;
    int quiet;
    int distilling; // the spec names a teacher: the lines show the KL part
    long total;
    double started;
    long tokens;
    uint64_t bytes; // of text the tokens stand for (= tokens for byte tokens)
};

static void draw_bar(const struct progress *p, const struct step_report *r) {
    double elapsed = moe_clock_s() - p->started;
    double frac = (double)r->step / p->total;
    char eta[32], bar[64];
    moectl_duration(eta, sizeof eta, elapsed / frac * (1 - frac));
    moectl_bar(bar, 30, frac);
    printf("\r\033[K[%s] %3.0f%% step %ld/%ld loss %.4f %.0f tok/s ETA %s", bar, frac * 100,
           r->step, p->total, r->loss, p->tokens / elapsed, eta);
    fflush(stdout);
}

/* Bits per byte of text of a mean loss of `nats` per token over `tokens` covering `bytes`. */
static double bits_per_byte(double nats, double tokens, double bytes) {
    return bytes > 0 ? bits(nats) * tokens / bytes : NAN;
}

static void print_step(const struct progress *p, const struct step_report *r) {
    double elapsed = moe_clock_s() - p->started;
    double tps = p->tokens / elapsed, bps = (double)p->bytes / elapsed;
    double bpb = bits_per_byte(r->ce, (double)r->tokens, (double)r->bytes);
    if (p->json) {
        /* the loss with every digit: a distributed run must match it exactly */
        printf("{\"event\":\"step\",\"step\":%ld,\"loss\":%.17g,\"ce\":%.6f,\"aux\":%.6f,"
               "\"z\":%.6f,\"kl\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f,"
               "\"bytes_per_s\":%.1f,\"bits_per_byte\":%.6f,"
               "\"load_max_over_mean\":%.4f,\"dropped\":%ld,\"step_ms\":%.2f,"
               "\"forward_ms\":%.2f,\"backward_ms\":%.2f,\"optimizer_ms\":%.2f}\n",
               r->step, r->loss, r->ce, r->aux, r->z, r->kl, r->lr, r->grad_norm, tps, bps, bpb,
               r->load_max_over_mean, r->dropped, 1e3 * r->seconds, 1e3 * r->t_forward,
               1e3 * r->t_backward, 1e3 * r->t_update);
        return;
    }
    if (p->tty) printf("\r\033[K");
    char kl[32] = "";
    if (p->distilling) snprintf(kl, sizeof kl, ", kl %.4f", r->kl);
    printf("step %5ld/%ld | loss %.4f (ce %.4f = %.3f bits/byte%s, aux %.4f z %.3f) | lr %.2e | "
           "%6.0f tok/s | load max/mean %.2f | dropped %.1f%%\n",
           r->step, p->total, r->loss, r->ce, bpb, kl, r->aux, r->z, r->lr, tps,
           r->load_max_over_mean, 100.0 * r->dropped / (double)r->assignments);
    fflush(stdout);
}

/* loss: nats per token; bpt: the windows' bytes per token. */
static void print_eval(const struct progress *p, long step, double loss, double bpt,
                       long windows, double unigram) {
    if (p->json) {
        printf("{\"event\":\"eval\",\"step\":%ld,\"val_loss\":%.6f,\"val_bits_per_token\":%.6f,"
               "\"val_bits_per_byte\":%.6f,\"bytes_per_token\":%.6f,"
               "\"unigram_bits_per_byte\":%.6f,\"windows\":%ld}\n",
               step, loss, bits(loss), bits(loss) / bpt, bpt, unigram, windows);
    } else {
        if (p->tty) printf("\r\033[K");
        printf("eval step %ld: held-out loss %.4f nats/token = %.4f bits/byte over %ld windows "
               "(%.3f bytes/token; unigram entropy %.4f bits/byte)\n",
               step, loss, bits(loss) / bpt, windows, bpt, unigram);
    }
    fflush(stdout);
}

/* Writes the full training state; says where it went and how to go on. 0 on success. */
static int save_state(const struct trainer *t, const char *path, const struct progress *p,
                      const char *why) {
    if (trainer_save_state(t, path) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    if (p->json)
        printf("{\"event\":\"state\",\"reason\":\"%s\",\"step\":%ld,\"state\":\"%s\"}\n", why,
               t->model.step, path);
    else {
        if (p->tty) printf("\r\033[K");
        printf("moectl: %s at step %ld; training state written to %s (continue with "
               "--resume %s)\n", why, t->model.step, path, path);
    }
    fflush(stdout);
    return 0;
}

/* A positive integer flag: EXIT_OK, or EXIT_BAD_INPUT after saying what is wrong. */
static int parse_positive(const char *s, const char *flag, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v <= 0)
        return moectl_fail(EXIT_BAD_INPUT, "%s: expected a positive integer, got '%s'", flag, s);
    *out = v;
    return EXIT_OK;
}

struct train_args {
    const char **sets; // the --set overrides, in order
    int n_sets;
    const char *resume, *state_out;
    long stop_at; // 0: run to run.steps
    struct progress p;
};

static int take_train_option(void *ctx, int c, const char *arg) {
    struct train_args *a = ctx;
    switch (c) {
    case 's': a->sets[a->n_sets++] = arg; return EXIT_OK;
    case 'j': a->p.json = 1; return EXIT_OK;
    case 'q': a->p.quiet = 1; return EXIT_OK;
    case 'r': a->resume = arg; return EXIT_OK;
    case 'o': a->state_out = arg; return EXIT_OK;
    case 'S': return parse_positive(arg, "--stop-at", &a->stop_at);
    default: return -1;
    }
}

/* The spec with its overrides, a trainer on it, resumed from a state when asked. An exit
 * code; on EXIT_OK the trainer is open. */
static int open_run(struct trainer *t, const char *spec_path, const struct train_args *a) {
    struct job_spec spec;
    spec_defaults(&spec);
    moe_status s = spec_load_file(&spec, spec_path);
    if (s == MOE_OK) s = spec_set_all(&spec, a->sets, (size_t)a->n_sets);
    if (s != MOE_OK) return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (trainer_open(t, &spec) != MOE_OK) return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (a->resume && trainer_load_state(t, a->resume) != MOE_OK) {
        trainer_close(t);
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    }
    if (a->stop_at > t->spec.run.steps) {
        trainer_close(t);
        return moectl_fail(EXIT_BAD_INPUT, "--stop-at %ld is past run.steps = %ld", a->stop_at,
                           t->spec.run.steps);
    }
    return EXIT_OK;
}

static void print_run(const struct trainer *t, long last) {
    const struct model *m = &t->model;
    printf("moectl: training '%s': %zu parameters (%d layers, d_model %d, %d experts, "
           "top-%d), batch %d x %d, steps %ld..%ld of %ld\n",
           t->spec.name, m->n_params, m->cfg.n_layers, m->cfg.d_model, m->cfg.n_experts,
           m->cfg.top_k, t->B, t->T, m->step + 1, last, t->spec.run.steps);
    if (t->teacher.on)
        printf("moectl: distilling from %s (%zu parameters, %d layers, d_model %d, %d experts): "
               "loss = %.3g ce + %.3g x %.3g^2 KL at temperature %.3g\n", t->spec.distill.teacher,
               t->teacher.model.n_params, t->teacher.model.cfg.n_layers,
               t->teacher.model.cfg.d_model, t->teacher.model.cfg.n_experts,
               1 - t->spec.distill.alpha, t->spec.distill.alpha, t->spec.distill.temperature,
               t->spec.distill.temperature);
    if (t->spec.run.init_from[0] && m->step == 0)
        printf("moectl: parameters from %s; optimizer moments start at zero\n",
               t->spec.run.init_from);
    if (t->mesh.shards > 1)
        printf("moectl: playing the %d data shards of the %d x %d mesh in turn: the model a "
               "%d x %d job writes, byte for byte\n", t->mesh.shards, t->mesh.pods, t->mesh.slots,
               t->mesh.pods, t->mesh.slots);
}

/* The steps up to `last`, each shown as the progress asks, with an evaluation where the
 * spec wants one (*val: the last held-out loss). An interruption writes the state when
 * state_out is given. An exit code. */
static int run_steps(struct trainer *t, struct progress *p, long last, const char *state_out,
                     double *val) {
    long windows = 0;
    while (t->model.step < last) {
        if (interrupted) {
            if (state_out && save_state(t, state_out, p, "interrupted") == 0)
                return EXIT_RUN_FAILED;
            return moectl_fail(EXIT_RUN_FAILED, "interrupted: no model written");
        }
        struct step_report r;
        if (trainer_step(t, &r) != MOE_OK) return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        p->tokens += r.tokens;
        p->bytes += r.bytes;
        if (!p->quiet && (r.step % t->spec.run.log_every == 0 || r.step == 1 || r.step == p->total))
            print_step(p, &r);
        else if (!p->quiet && p->tty)
            draw_bar(p, &r);
        int eval_now = r.step == p->total ||
                       (t->spec.run.eval_every > 0 && r.step % t->spec.run.eval_every == 0);
        if (eval_now && t->spec.data.val_fraction > 0) {
            if (trainer_eval(t, val, &windows) != MOE_OK)
                return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            if (!p->quiet)
                print_eval(p, r.step, *val, t->eval_bytes_per_token, windows, t->unigram_bits);
        }
    }
    return EXIT_OK;
}

/* After the last step: the state when asked, and once run.steps are done the model and the
 * line that says so. An exit code. */
static int finish_run(struct trainer *t, const struct progress *p, const char *state_out,
                      double val) {
    if (state_out && save_state(t, state_out, p, t->model.step < p->total ? "stopped" : "done"))
        return EXIT_RUN_FAILED;
    if (t->model.step < p->total) return EXIT_OK; // --stop-at: the model is not finished
    if (trainer_save_model(t, t->spec.run.output) != MOE_OK)
        return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    double secs = moe_clock_s() - p->started;
    if (p->json)
        printf("{\"event\":\"done\",\"steps\":%ld,\"seconds\":%.3f,\"tokens_per_s\":%.1f,"
               "\"val_bits_per_byte\":%.6f,\"unigram_bits_per_byte\":%.6f,\"model\":\"%s\"}\n",
               t->model.step, secs, p->tokens / secs,
               isnan(val) ? -1.0 : bits(val) / t->eval_bytes_per_token,
               t->unigram_bits, t->spec.run.output);
    else if (!p->quiet)
        printf("moectl: trained %ld steps in %.1f s (%.0f tok/s); wrote %s and its config "
               "beside it\n",
               t->model.step, secs, p->tokens / secs, t->spec.run.output);
    return EXIT_OK;
}

static int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"set", required_argument, 0, 's'},
                                         {"json", no_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"resume", required_argument, 0, 'r'},
                                         {"state-out", required_argument, 0, 'o'},
                                         {"stop-at", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct train_args a = {.sets = calloc((size_t)argc, sizeof(char *))};
    if (!a.sets) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    const struct command_line cmd = {opts, "s:jqh", usage, take_train_option, &a, 1};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code)) goto exit;
    if (a.stop_at && !a.state_out) {
        code = moectl_fail(EXIT_BAD_INPUT, "--stop-at needs --state-out: the stopped run's "
                           "state would be lost");
        goto exit;
    }
    struct trainer t;
    if ((code = open_run(&t, argv[optind], &a))) goto exit;
    struct progress *p = &a.p;
    p->tty = !p->json && isatty(STDOUT_FILENO);
    p->total = t.spec.run.steps;
    p->distilling = t.teacher.on;
    long last = a.stop_at ? a.stop_at : p->total;
    if (!p->json && !p->quiet) print_run(&t, last);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double val = NAN;
    p->started = moe_clock_s();
    code = run_steps(&t, p, last, a.state_out, &val);
    if (!code) code = finish_run(&t, p, a.state_out, val);
    trainer_close(&t);
exit:
    free(a.sets);
    return code;
}

/* ---- eval ---- */

struct eval_args {
    long batch, max_windows;
    int json;
    const char *tokenizer; // to check against the model's
};

static int take_eval_option(void *ctx, int c, const char *arg) {
    struct eval_args *a = ctx;
    switch (c) {
    case 'b': return parse_positive(arg, "--batch", &a->batch);
    case 'w': return parse_positive(arg, "--max-windows", &a->max_windows);
    case 'j': a->json = 1; return EXIT_OK;
    case 'k': a->tokenizer = arg; return EXIT_OK;
    default: return -1;
    }
}

/* The mean loss over `want` windows spread evenly over the stream's `total`, `batch` at a
 * time; *done says how many were read (fewer when out of memory), *bytes the bytes of text
 * their targets stand for. */
static double mean_loss(struct model *m, const struct data_stream *st, long batch, long want,
                        long total, long *done, uint64_t *bytes) {
    int T = m->cfg.seq_len;
    size_t n = (size_t)batch * T;
    int *tok = malloc(sizeof(int) * n), *tgt = malloc(sizeof(int) * n);
    double sum = 0;
    *done = 0;
    while (tok && tgt && *done < want) {
        int b = 0;
        for (; b < batch && *done + b < want; b++) {
            long w = (long)((double)(*done + b) * total / want);
            stream_window(st, T, w, tok + (size_t)b * T, tgt + (size_t)b * T);
            *bytes += stream_window_bytes(st, T, w);
        }
        model_forward(m, tok, tgt, b, T);
        sum += m->stats.ce * b;
        *done += b;
    }
    free(tok);
    free(tgt);
    return *done ? sum / *done : 0;
}

/* The evaluation of a loaded model on a loaded (tokenized) stream, and its line. */
static int eval_stream(struct model *m, const struct data_stream *st, const struct eval_args *a,
                       const char *model_path, const char *data_path) {
    int T = m->cfg.seq_len;
    long total = stream_windows(st, T), done = 0;
    long want = a->max_windows && a->max_windows < total ? a->max_windows : total;
    uint64_t bytes = 0;
    double loss = total ? mean_loss(m, st, a->batch, want, total, &done, &bytes) : 0;
    double bpb = bits_per_byte(loss, (double)done * T, (double)bytes);
    const char *unit = st->ids ? "tokens" : "bytes";
    if (total == 0)
        return moectl_fail(EXIT_BAD_INPUT, "%s: %zu %s, fewer than one window of seq_len+1 = %d",
                           data_path, st->n, unit, T + 1);
    if (done < want) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    if (a->json)
        printf("{\"model\":\"%s\",\"data\":\"%s\",\"windows\":%ld,\"seq_len\":%d,"
               "\"loss\":%.6f,\"bits_per_token\":%.6f,\"bits_per_byte\":%.6f,"
               "\"tokens\":%ld,\"bytes\":%llu}\n",
               model_path, data_path, done, T, loss, bits(loss), bpb, done * T,
               (unsigned long long)bytes);
    else
        printf("eval %s on %s: %ld windows of %d %s: loss %.4f nats/token = %.4f bits/byte "
               "(%.3f bytes/token)\n",
               model_path, data_path, done, T, unit, loss, bpb, (double)bytes / (done * T));
    return EXIT_OK;
}

static int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"batch", required_argument, 0, 'b'},
                                         {"max-windows", required_argument, 0, 'w'},
                                         {"json", no_argument, 0, 'j'},
                                         {"tokenizer", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    struct eval_args a = {.batch = 8};
    const struct command_line cmd = {opts, "b:w:jk:", usage, take_eval_option, &a, 2};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code)) return code;
    const char *model_path = argv[optind], *data_path = argv[optind + 1];
    struct model m;
    struct tokenizer *tok = NULL;
    if (model_load(&m, model_path, (int)a.batch) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if ((code = moectl_model_tokenizer(model_path, m.cfg.vocab, a.tokenizer, &tok))) {
        model_free(&m);
        return code;
    }
    struct data_stream st;
    moe_status s = data_load_stream(&st, data_path);
    if (s == MOE_OK && tok && (s = data_tokenize_stream(&st, tok)) != MOE_OK) data_stream_free(&st);
    if (s != MOE_OK) {
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
        goto exit;
    }
    code = eval_stream(&m, &st, &a, model_path, data_path);
    data_stream_free(&st);
exit:
    if (tok) tokenizer_free(tok);
    model_free(&m);
    return code;
}

/* ---- generate ---- */

struct generate_args {
    const char *prompt, *tokenizer;
    long n_new, seed;
    double temperature;
};

static int take_generate_option(void *ctx, int c, const char *arg) {
    struct generate_args *a = ctx;
    char *end;
    switch (c) {
    case 'p': a->prompt = arg; return EXIT_OK;
    case 'k': a->tokenizer = arg; return EXIT_OK;
    case 'n': return parse_positive(arg, "--bytes", &a->n_new);
    case 's': return parse_positive(arg, "--seed", &a->seed);
    case 't':
        a->temperature = strtod(arg, &end);
        if (*arg == 0 || *end != 0 || !(a->temperature >= 0) || a->temperature > 100)
            return moectl_fail(EXIT_BAD_INPUT,
                               "--temperature: expected a number in [0, 100], got '%s'", arg);
        return EXIT_OK;
    default: return -1;
    }
}

/* generate with a learned vocabulary: the prompt encoded, the new tokens decoded. */
static int generate_text(struct model *m, const struct tokenizer *tok,
                         const struct generate_args *a) {
    uint32_t *prompt = NULL;
    size_t n_prompt = 0, cap = 0;
    int piece_len = 0, code = EXIT_OK;
    uint32_t *nl = NULL;
    size_t n_nl = 0, nl_cap = 0;
    moe_status s = tokenizer_encode(tok, (const uint8_t *)a->prompt, strlen(a->prompt), &prompt,
                                    &n_prompt, &cap);
    if (s == MOE_OK) s = tokenizer_encode(tok, (const uint8_t *)"\n", 1, &nl, &n_nl, &nl_cap);
    int *ids = s == MOE_OK ? malloc(sizeof(int) * (n_prompt + (size_t)a->n_new)) : NULL;
    if (s == MOE_OK && ids) {
        for (size_t k = 0; k < n_prompt; k++) ids[k] = (int)prompt[k];
        s = generate_tokens(m, ids, n_prompt, (size_t)a->n_new, (int)nl[0],
                            (float)a->temperature, (uint64_t)a->seed);
    }
    if (s != MOE_OK || !ids) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", s != MOE_OK ? moe_errmsg() : "out of memory");
    } else {
        fputs(a->prompt, stdout);
        uint8_t piece[256];
        for (size_t k = n_prompt; k < n_prompt + (size_t)a->n_new; k++) {
            if (tokenizer_token_bytes(tok, ids[k]) > (int)sizeof piece) continue;
            piece_len = (int)tokenizer_decode_token(tok, ids[k], piece);
            fwrite(piece, 1, (size_t)piece_len, stdout);
        }
        fputc('\n', stdout);
    }
    free(ids);
    free(prompt);
    free(nl);
    return code;
}

static int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {{"prompt", required_argument, 0, 'p'},
                                         {"bytes", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"seed", required_argument, 0, 's'},
                                         {"tokenizer", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    struct generate_args a = {.prompt = "", .n_new = 200, .seed = 1, .temperature = 0.8};
    const struct command_line cmd = {opts, "p:n:t:s:k:", usage, take_generate_option, &a, 1};
    int code;
    if (!moectl_options(argc, argv, &cmd, &code)) return code;
    if (a.n_new > (1L << 20)) return moectl_fail(EXIT_BAD_INPUT, "--bytes: at most 1048576");
    struct model m;
    struct tokenizer *tok = NULL;
    if (model_load(&m, argv[optind], 1) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if ((code = moectl_model_tokenizer(argv[optind], m.cfg.vocab, a.tokenizer, &tok)) || tok) {
        if (tok) code = generate_text(&m, tok, &a);
        if (tok) tokenizer_free(tok);
        model_free(&m);
        return code;
    }
    size_t n_prompt = strlen(a.prompt), n = n_prompt + (size_t)a.n_new;
    uint8_t *text = malloc(n);
    if (!text) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
    } else {
        memcpy(text, a.prompt, n_prompt);
        if (generate_bytes(&m, text, n_prompt, (size_t)a.n_new, (float)a.temperature,
                           (uint64_t)a.seed) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        } else {
            fwrite(text, 1, n, stdout);
            fputc('\n', stdout);
        }
    }
    free(text);
    model_free(&m);
    return code;
}

/* ---- spec ---- */

static int cmd_spec(void) {
    struct job_spec s;
    spec_defaults(&s);
    char *yaml = spec_to_yaml(&s);
    if (!yaml) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    fputs(yaml, stdout);
    free(yaml);
    return 0;
}

/* ---- global options ---- */

/* The options that may come before the command (`moectl --coordinator H:P jobs`): the
 * connection options, which take a value, and --json. */
static int global_option(const char *arg, int *takes_value) {
    static const char *const with_value[] = {"--coordinator", "--token-file", "--ca",
                                             "--cluster-dir"};
    for (size_t i = 0; i < sizeof with_value / sizeof with_value[0]; i++) {
        size_t n = strlen(with_value[i]);
        if (strncmp(arg, with_value[i], n) != 0) continue;
        if (arg[n] == 0) return *takes_value = 1, 1;
        if (arg[n] == '=') return *takes_value = 0, 1;
    }
    *takes_value = 0;
    return strcmp(arg, "--json") == 0;
}

/* Moves the global options given before the command to just after it (after `cluster`'s
 * subcommand), where every command's own parser takes them: `moectl --coordinator X jobs`
 * is `moectl jobs --coordinator X`. Returns the new argc, or -1 after saying what is wrong.
 * `out` has room for argc + 1 pointers. */
static int hoist_global_options(int argc, char **argv, char **out) {
    int i = 1, n_global = 0;
    while (i < argc && argv[i][0] == '-' && strcmp(argv[i], "--help") && strcmp(argv[i], "-h")) {
        int takes_value;
        if (!global_option(argv[i], &takes_value))
            return moectl_fail(EXIT_BAD_INPUT, "%s: not an option that may come before the "
                               "command (moectl help lists them)", argv[i]), -1;
        if (takes_value && i + 1 >= argc)
            return moectl_fail(EXIT_BAD_INPUT, "%s: needs a value", argv[i]), -1;
        i += 1 + takes_value;
    }
    n_global = i - 1;
    if (i >= argc) return moectl_fail(EXIT_BAD_INPUT, "no command after the options"), -1;
    const char *cmd = argv[i];
    int in_process = !strcmp(cmd, "train") || !strcmp(cmd, "eval") ||
                     !strcmp(cmd, "generate") || !strcmp(cmd, "spec") || !strcmp(cmd, "help") ||
                     !strcmp(cmd, "tokenizer") || !strcmp(cmd, "data");
    for (int k = 1; k <= n_global && in_process; k++)
        if (strcmp(argv[k], "--json") != 0 && argv[k][0] == '-')
            return moectl_fail(EXIT_BAD_INPUT, "%s: '%s' runs in this process and talks to no "
                               "coordinator", argv[k], cmd), -1;
    int head = (!strcmp(cmd, "cluster") && i + 1 < argc) ? 2 : 1; // the command [subcommand]
    int m = 0;
    out[m++] = argv[0];
    for (int k = 0; k < head; k++) out[m++] = argv[i + k];
    for (int k = 1; k <= n_global; k++) out[m++] = argv[k];
    for (int k = i + head; k < argc; k++) out[m++] = argv[k];
    out[m] = NULL;
    return m;
}

static int run_command(int argc, char **argv);

int main(int argc, char **argv) {
    moe_log_init("cli");
    if (argc < 2 || argv[1][0] != '-' || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return run_command(argc, argv);
    char **hoisted = calloc((size_t)argc + 1, sizeof *hoisted);
    if (!hoisted) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    int n = hoist_global_options(argc, argv, hoisted);
    int code = n < 0 ? EXIT_BAD_INPUT : run_command(n, hoisted);
    free(hoisted);
    return code;
}

static int run_command(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr, NULL);
        return EXIT_BAD_INPUT;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0 || strcmp(cmd, "eval") == 0 || strcmp(cmd, "generate") == 0)
        blas_select_kernels(argv);
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "spec") == 0) return cmd_spec();
    if (strcmp(cmd, "tokenizer") == 0) return cmd_tokenizer(argc - 1, argv + 1);
    if (strcmp(cmd, "data") == 0) return cmd_data(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout, NULL);
        return 0;
    }
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } client_cmds[] = {{"cluster", cmd_cluster}, {"submit", cmd_submit}, {"jobs", cmd_jobs},
                       {"status", cmd_status},   {"watch", cmd_watch},   {"cancel", cmd_cancel},
                       {"fetch", cmd_fetch},     {"steps", cmd_steps},   {"chaos", cmd_chaos},
                       {"delete", cmd_delete}, {"plot", cmd_plot}, {"events", cmd_events}};
    for (size_t i = 0; i < sizeof client_cmds / sizeof client_cmds[0]; i++) {
        if (strcmp(cmd, client_cmds[i].name) != 0) continue;
        int code = client_cmds[i].run(argc - 1, argv + 1);
        /* gRPC is started by the first channel (never before `cluster up` has forked its
         * daemons); stop it cleanly, whether or not this command got that far. */
        rpc_init();
        rpc_shutdown_library();
        return code;
    }
    fprintf(stderr, "moectl: unknown command '%s' (moectl help lists them)\n", cmd);
    return EXIT_BAD_INPUT;
}
