/*
 * tokenize.c — the commands of learned vocabularies, in this process:
 *   moectl tokenizer train DATA... --vocab N [--type bpe|unigram] -o TOK.model
 *   moectl data prepare SPEC [--set key.path=value ...] [--tokenizer TOK] -o DIR
 * and the tokenizer a model file carries, for eval and generate (moectl_model_tokenizer).
 * Owns: their options and output. Never: tokenizes or trains itself (common/tokenizer.h and
 * worker/trainer/data.h, tokens.h do).
 */
#include "../common/fileio.h"
#include "../common/spec.h"
#include "../common/tokenizer.h"
#include "../worker/trainer/data.h"
#include "../worker/trainer/data_roots.h"
#include "../worker/trainer/model_io.h"
#include "../worker/trainer/tokens.h"
#include "moectl.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *to, const char *cmd) {
    (void)cmd;
    fprintf(to, "usage: moectl tokenizer train DATA... --vocab N [--type bpe|unigram] "
                "-o TOK.model\n"
                "       moectl data prepare SPEC [--set key.path=value ...] [--tokenizer TOK] "
                "-o DIR\n");
}

/* ---- tokenizer train ---- */

struct train_tok {
    long long vocab;
    const char *type, *out;
};

/* Every DATA (a text file or a directory of them, as a data source reads it) as texts,
 * one per file. */
static int load_texts(char **paths, int n, struct data_stream *streams,
                      struct tokenizer_texts *texts, size_t *total) {
    int n_texts = 0;
    *total = 0;
    for (int i = 0; i < n; i++) {
        if (data_load_stream(&streams[i], paths[i]) != MOE_OK)
            return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
        n_texts += streams[i].n_segments;
    }
    const uint8_t **bytes = calloc((size_t)n_texts + 1, sizeof *bytes);
    size_t *lens = calloc((size_t)n_texts + 1, sizeof *lens);
    if (!bytes || !lens) {
        free(bytes);
        free(lens);
        return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    }
    int k = 0;
    for (int i = 0; i < n; i++)
        for (int g = 0; g < streams[i].n_segments; g++, k++) {
            bytes[k] = streams[i].segments[g].bytes;
            lens[k] = streams[i].segments[g].n;
            *total += lens[k];
        }
    *texts = (struct tokenizer_texts){bytes, lens, n_texts};
    return EXIT_OK;
}

static int take_train(void *ctx, int c, const char *arg) {
    struct train_tok *a = ctx;
    switch (c) {
    case 'v': return moectl_parse_int(arg, "--vocab", 260, 65536, &a->vocab);
    case 't': a->type = arg; return EXIT_OK;
    case 'o': a->out = arg; return EXIT_OK;
    default: return -1;
    }
}

static int tokenizer_train_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"vocab", required_argument, 0, 'v'},
                                         {"type", required_argument, 0, 't'},
                                         {"output", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct train_tok a = {.type = "bpe"};
    int code;
    const struct command_line cl = {opts, "v:t:o:h", usage, take_train, &a, -1};
    if (!moectl_options(argc, argv, &cl, &code)) return code;
    if (!a.vocab || !a.out || optind >= argc)
        return moectl_fail(EXIT_BAD_INPUT, "tokenizer train: needs DATA..., --vocab N and -o FILE");
    int n = argc - optind;
    struct data_stream *streams = calloc((size_t)n, sizeof *streams);
    struct tokenizer_texts texts = {0};
    size_t total = 0, len = 0;
    uint8_t *model = NULL;
    if (!streams) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    code = load_texts(argv + optind, n, streams, &texts, &total);
    if (!code && tokenizer_train(&texts, (int)a.vocab, a.type, &model, &len) != MOE_OK)
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (!code && moe_write_file_atomic(a.out, model, len, 0644) != MOE_OK)
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    if (!code)
        printf("moectl: wrote %s: %lld pieces (%s, byte fallback) learned from %zu bytes of %d "
               "file(s)\n", a.out, a.vocab, a.type, total, texts.n);
    free(model);
    free((void *)texts.bytes);
    free((void *)texts.lens);
    for (int i = 0; i < n; i++) data_stream_free(&streams[i]);
    free(streams);
    return code;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "train") == 0) return tokenizer_train_cmd(argc - 1, argv + 1);
    usage(stderr, NULL);
    return EXIT_BAD_INPUT;
}

/* ---- data prepare ---- */

struct prepare {
    const char **sets;
    int n_sets;
    const char *tokenizer, *out;
};

static int take_prepare(void *ctx, int c, const char *arg) {
    struct prepare *a = ctx;
    switch (c) {
    case 's': a->sets[a->n_sets++] = arg; return EXIT_OK;
    case 't': a->tokenizer = arg; return EXIT_OK;
    case 'o': a->out = arg; return EXIT_OK;
    default: return -1;
    }
}

static void print_prepared(const struct dataset *d, const char *dir) {
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        printf("moectl: %s/%d.tok: %s: %zu tokens for %zu bytes (%.3f bytes/token)\n", dir, j,
               s->path, s->n, s->n_bytes, (double)s->n_bytes / (double)s->n);
    }
    printf("moectl: wrote %s (use it with data.prepared: %s)\n", dir, dir);
}

static moe_status set_tokenizer(struct job_spec *spec, const char *path) {
    size_t n = strlen(path) + 32;
    char *set = malloc(n);
    if (!set) return moe_fail(MOE_ENOMEM, "out of memory");
    snprintf(set, n, "data.tokenizer=%s", path);
    moe_status s = spec_set(spec, set);
    free(set);
    return s;
}

static int data_prepare_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"set", required_argument, 0, 's'},
                                         {"tokenizer", required_argument, 0, 't'},
                                         {"output", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct prepare a = {.sets = calloc((size_t)argc, sizeof(char *))};
    if (!a.sets) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    int code;
    struct job_spec spec;
    struct dataset d;
    const struct command_line cl = {opts, "s:t:o:h", usage, take_prepare, &a, 1};
    if (!moectl_options(argc, argv, &cl, &code)) goto exit;
    code = EXIT_BAD_INPUT;
    if (!a.out) {
        moectl_fail(code, "data prepare: needs -o DIR");
        goto exit;
    }
    spec_defaults(&spec);
    moe_status s = spec_load_file(&spec, argv[optind]);
    if (s == MOE_OK) s = spec_set_all(&spec, a.sets, (size_t)a.n_sets);
    if (s == MOE_OK && a.tokenizer) s = set_tokenizer(&spec, a.tokenizer);
    spec.data.prepared[0] = 0; // the sources themselves are read, and tokenized
    if (s == MOE_OK && !spec.data.tokenizer[0])
        s = moe_fail(MOE_EINVAL, "data prepare: no tokenizer (--tokenizer or data.tokenizer)");
    if (s == MOE_OK) s = data_open(&d, &spec.data, spec.model.seq_len);
    if (s != MOE_OK) {
        moectl_fail(code, "%s", moe_errmsg());
        goto exit;
    }
    if (tokens_prepare(&d, a.out) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
    } else {
        print_prepared(&d, a.out);
        code = EXIT_OK;
    }
    data_close(&d);
exit:
    free(a.sets);
    return code;
}

int cmd_data(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "prepare") == 0) return data_prepare_cmd(argc - 1, argv + 1);
    usage(stderr, NULL);
    return EXIT_BAD_INPUT;
}

/* ---- a model's tokenizer ---- */

int moectl_model_tokenizer(const char *model_path, int vocab, const char *check,
                           struct tokenizer **tok) {
    uint8_t *bytes = NULL, *other = NULL;
    size_t n = 0, n_other = 0;
    char sha[65], other_sha[65];
    *tok = NULL;
    if (model_load_tokenizer(model_path, &bytes, &n, sha) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    int code = EXIT_OK;
    if (check && data_read_file(NULL, "--tokenizer", check, &other, &n_other) != MOE_OK)
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    else if (check && !bytes)
        code = moectl_fail(EXIT_BAD_INPUT, "%s: a byte-level model (trained without a "
                           "tokenizer): --tokenizer %s does not apply", model_path, check);
    else if (check && (tokens_sha256_hex(other, n_other, other_sha), strcmp(sha, other_sha)))
        code = moectl_fail(EXIT_BAD_INPUT, "--tokenizer %s is not the tokenizer %s was trained "
                           "with (SHA-256 %.12s..., the model's %.12s...)", check, model_path,
                           other_sha, sha);
    else if (bytes && tokenizer_load(bytes, n, model_path, tok) != MOE_OK)
        code = moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    else if (*tok && tokenizer_vocab(*tok) != vocab)
        code = moectl_fail(EXIT_BAD_INPUT, "%s: its tokenizer has %d pieces, its model.vocab "
                           "is %d", model_path, tokenizer_vocab(*tok), vocab);
    if (code && *tok) {
        tokenizer_free(*tok);
        *tok = NULL;
    }
    free(bytes);
    free(other);
    return code;
}
