/* tokens.c — prepared token datasets (see tokens.h). */
#include "tokens.h"

#include "../../common/fileio.h"
#include "../../common/tokenizer.h"
#include "data_roots.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "J.tok files are little-endian");

#define TOKENS_FORMAT "moed-tokens/1"

void tokens_sha256_hex(const void *bytes, size_t n, char hex[65]) {
    unsigned char sha[32];
    unsigned int len = 0;
    if (EVP_Digest(bytes, n, sha, &len, EVP_sha256(), NULL) != 1 || len != 32)
        memset(sha, 0, sizeof sha);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", sha[i]);
}

static char *index_json(const struct dataset *d) {
    char hex[65];
    tokens_sha256_hex(d->tok_model, d->tok_model_len, hex);
    cJSON *root = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(root, "sources");
    cJSON_AddStringToObject(root, "format", TOKENS_FORMAT);
    cJSON_AddStringToObject(root, "tokenizer_sha256", hex);
    cJSON_AddNumberToObject(root, "vocab", tokenizer_vocab(d->tok));
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        char file[32];
        snprintf(file, sizeof file, "%d.tok", j);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", s->path);
        cJSON_AddStringToObject(o, "file", file);
        cJSON_AddNumberToObject(o, "tokens", (double)s->n);
        cJSON_AddNumberToObject(o, "bytes", (double)s->n_bytes);
        cJSON_AddNumberToObject(o, "files", s->n_files);
        cJSON_AddItemToArray(list, o);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

static void remove_written(const char *dir, int n_tok) {
    char path[SPEC_PATH_MAX + 32];
    for (int j = 0; j < n_tok; j++) {
        snprintf(path, sizeof path, "%s/%d.tok", dir, j);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/index.json", dir);
    unlink(path);
}

moe_status tokens_prepare(const struct dataset *d, const char *dir) {
    if (!d->tok) return moe_fail(MOE_EINVAL, "data prepare: no tokenizer");
    if (strlen(dir) >= SPEC_PATH_MAX)
        return moe_fail(MOE_EINVAL, "%.64s...: path too long", dir);
    CHECK(moe_mkdir_p(dir, 0755));
    char path[SPEC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/index.json", dir);
    unlink(path); // an old index must not describe half-new token files
    moe_status res = MOE_OK;
    int j = 0;
    for (; j < d->n_sources && res == MOE_OK; j++) {
        const struct data_stream *s = &d->sources[j];
        snprintf(path, sizeof path, "%s/%d.tok", dir, j);
        res = moe_write_file_atomic(path, s->ids, s->n * sizeof *s->ids, 0644);
    }
    char *index = res == MOE_OK ? index_json(d) : NULL;
    if (res == MOE_OK && !index) res = moe_fail(MOE_ENOMEM, "data prepare: out of memory");
    snprintf(path, sizeof path, "%s/index.json", dir);
    if (res == MOE_OK) res = moe_write_file_atomic(path, index, strlen(index), 0644);
    free(index);
    if (res != MOE_OK) remove_written(dir, j);
    return res;
}

/* The index's entry for source j, checked against the spec and the loaded tokenizer. */
static moe_status check_index(const struct dataset *d, int j, const cJSON *root,
                              const char *shown, const cJSON **entry) {
    char hex[65];
    tokens_sha256_hex(d->tok_model, d->tok_model_len, hex);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(root, "tokenizer_sha256");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "sources");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, TOKENS_FORMAT) != 0 ||
        !cJSON_IsString(sha) || !cJSON_IsArray(list))
        return moe_fail(MOE_EFORMAT, "%s: not a prepared token index (%s)", shown, TOKENS_FORMAT);
    if (strcmp(sha->valuestring, hex) != 0)
        return moe_fail(MOE_EINVAL, "%s: prepared with another tokenizer than data.tokenizer "
                        "(SHA-256 %.12s..., not %.12s...): run moectl data prepare again",
                        shown, sha->valuestring, hex);
    const struct data_spec *spec = d->spec;
    const cJSON *e = cJSON_GetArrayItem(list, j);
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(e, "path");
    if (cJSON_GetArraySize(list) != spec->n_sources || !cJSON_IsString(path) ||
        strcmp(path->valuestring, spec->sources[j].path) != 0)
        return moe_fail(MOE_EINVAL, "%s: prepared for other sources than data.sources (source "
                        "%d is '%s' here): run moectl data prepare again", shown, j,
                        spec->sources[j].path);
    *entry = e;
    return MOE_OK;
}

static double entry_number(const cJSON *e, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, key);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 ? v->valuedouble : -1;
}

/* Maps DIR/J.tok into s after checking its size against the index and its ids against V. */
static moe_status map_tokens(struct data_stream *s, const struct dataset *d, int j,
                             const struct data_roots *roots, size_t n_tokens) {
    char path[SPEC_PATH_MAX + 32], shown[SPEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%d.tok", d->spec->prepared, j);
    struct data_name name = {"data.prepared", path};
    data_name_str(&name, NULL, shown, sizeof shown);
    int fd, is_dir;
    CHECK(data_path_open(roots, &name, &fd, &is_dir));
    struct stat st;
    size_t want = n_tokens * sizeof(uint32_t);
    if (is_dir || fstat(fd, &st) != 0 || (size_t)st.st_size != want || want == 0) {
        close(fd);
        return moe_fail(MOE_EFORMAT, "%s: expected %zu tokens (%zu bytes) as its index says",
                        shown, n_tokens, want);
    }
    void *p = mmap(NULL, want, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return moe_fail(MOE_EIO, "%s: cannot map: %s", shown, strerror(e));
    s->ids = p;
    s->ids_mapped = want;
    uint32_t V = (uint32_t)tokenizer_vocab(d->tok);
    for (size_t q = 0; q < n_tokens; q++)
        if (s->ids[q] >= V)
            return moe_fail(MOE_EFORMAT, "%s: token %zu is id %u, outside the tokenizer's %u",
                            shown, q, s->ids[q], V);
    (void)madvise(p, want, MADV_RANDOM);
    return MOE_OK;
}

moe_status tokens_load_source(struct data_stream *s, const struct dataset *d, int j,
                              const struct data_roots *roots) {
    memset(s, 0, sizeof *s);
    const struct data_spec *spec = d->spec;
    if (!d->tok)
        return moe_fail(MOE_EINVAL, "spec: data.prepared needs data.tokenizer (the one it was "
                        "prepared with)");
    char path[SPEC_PATH_MAX + 32], shown[SPEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/index.json", spec->prepared);
    struct data_name name = {"data.prepared", path};
    data_name_str(&name, NULL, shown, sizeof shown);
    uint8_t *text;
    size_t len;
    CHECK(data_read_file(roots, "data.prepared", path, &text, &len));
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!root) return moe_fail(MOE_EFORMAT, "%s: not JSON", shown);
    const cJSON *e = NULL;
    moe_status res = check_index(d, j, root, shown, &e);
    double n = res == MOE_OK ? entry_number(e, "tokens") : 0;
    double bytes = res == MOE_OK ? entry_number(e, "bytes") : 0;
    double files = res == MOE_OK ? entry_number(e, "files") : 0;
    cJSON_Delete(root);
    if (res == MOE_OK && (n < 1 || bytes < 0 || files < 0))
        res = moe_fail(MOE_EFORMAT, "%s: source %d has no token count", shown, j);
    if (res == MOE_OK) res = map_tokens(s, d, j, roots, (size_t)n);
    if (res != MOE_OK) {
        if (s->ids_mapped) munmap((void *)s->ids, s->ids_mapped);
        memset(s, 0, sizeof *s);
        return res;
    }
    snprintf(s->path, sizeof s->path, "%s", spec->sources[j].path);
    s->tok = d->tok;
    s->n = s->n_train = (size_t)n;
    s->n_bytes = (size_t)bytes;
    s->n_files = (int)files;
    return MOE_OK;
}
