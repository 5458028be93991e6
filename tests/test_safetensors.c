/*
 * test_safetensors.c — round trips, atomic writes, and every malformed-file path of the reader,
 * ending with a fuzz loop of byte flips and truncations that must never crash.
 */
#include "../common/log.h"
#include "../common/safetensors.h"
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/test_st.XXXXXX";

static char *in_dir(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int n_dir_entries(void) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n + 1);
    if (fread(p, 1, *n, f) != *n) *n = 0;
    fclose(f);
    return p;
}

/* A file with the given header text (unpadded) and `n` data bytes of value 0xab. */
static void write_raw(const char *path, const char *header, size_t n) {
    size_t h = strlen(header);
    uint8_t *buf = calloc(8 + h + n + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, 0xab, n);
    write_bytes(path, buf, 8 + h + n);
    free(buf);
}

static void test_round_trip(void) {
    float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
    double f64[4] = {3.141592653589793, -1e300, 0, 2.5};
    int32_t i32[1] = {-123456};
    int64_t i64[8] = {1, -2, 3, -4, (int64_t)1 << 40, 6, 7, INT64_MIN};
    uint16_t bf16[3] = {0x3f80, 0xbf80, 0x7f80};
    uint16_t f16[5] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0};
    uint8_t u8[7] = {0, 1, 2, 3, 250, 255, 7}; // odd size: the tensors after it are unaligned
    struct st_tensor_out ts[] = {
        {"layers.0.w", ST_F32, 2, {2, 3}, f32},
        {"u8", ST_U8, 1, {7}, u8},
        {"f64", ST_F64, 1, {4}, f64},
        {"scalar", ST_I32, 0, {0}, i32},
        {"i64", ST_I64, 3, {2, 2, 2}, i64},
        {"bf16", ST_BF16, 1, {3}, bf16},
        {"f16", ST_F16, 2, {1, 5}, f16},
        {"empty", ST_F32, 2, {0, 4}, NULL},
    };
    int n = (int)(sizeof ts / sizeof ts[0]);
    struct st_meta meta[] = {{"format", "pt"}, {"config", "{\"d_model\": 64, \"note\": \"é\"}"}};
    const char *path = in_dir("model.safetensors");
    EXPECT(st_write(path, ts, n, meta, 2) == MOE_OK);
    EXPECT(n_dir_entries() == 1); // no temp file left behind

    size_t size;
    uint8_t *raw = read_bytes(path, &size);
    EXPECT(raw && size >= 8);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)raw[i] << (8 * i);
    EXPECT(hlen % 8 == 0);
    char *hdr = strndup((const char *)raw + 8, hlen);
    char *m = strstr(hdr, "__metadata__"), *first = strstr(hdr, "layers.0.w");
    EXPECT(m && first && m < first);
    size_t total = sizeof f32 + sizeof f64 + sizeof i32 + sizeof i64 + sizeof bf16 + sizeof f16 +
                   sizeof u8;
    EXPECT(size == 8 + hlen + total);
    free(hdr);
    free(raw);

    struct st_file f;
    EXPECT(st_read(&f, path) == MOE_OK);
    EXPECT(f.n_tensors == n);
    for (int i = 0; i < n && i < f.n_tensors; i++) {
        const struct st_tensor *t = st_find(&f, ts[i].name);
        EXPECT(t != NULL);
        if (!t) continue;
        EXPECT(t->dtype == ts[i].dtype);
        EXPECT(t->ndim == ts[i].ndim);
        size_t nb = st_dtype_size(ts[i].dtype);
        for (int k = 0; k < ts[i].ndim; k++) {
            EXPECT(t->shape[k] == ts[i].shape[k]);
            nb *= (size_t)ts[i].shape[k];
        }
        EXPECT(t->nbytes == nb);
        if (nb) EXPECT(memcmp(t->data, ts[i].data, nb) == 0);
    }
    /* Laid out in the order given, contiguous. */
    const uint8_t *expect_at = st_find(&f, "layers.0.w")->data;
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = st_find(&f, ts[i].name);
        if (!t) continue;
        EXPECT((const uint8_t *)t->data == expect_at);
        expect_at += t->nbytes;
    }
    EXPECT(f.n_meta == 2);
    EXPECT(st_meta_get(&f, "format") && strcmp(st_meta_get(&f, "format"), "pt") == 0);
    EXPECT(st_meta_get(&f, "config") && strcmp(st_meta_get(&f, "config"), meta[1].value) == 0);
    EXPECT(st_meta_get(&f, "nope") == NULL);
    EXPECT(st_find(&f, "nope") == NULL);

    const struct st_tensor *t = NULL;
    int64_t good[2] = {2, 3}, bad[2] = {3, 2};
    EXPECT(st_expect(&f, "layers.0.w", ST_F32, 2, good, &t) == MOE_OK && t && t->nbytes == 24);
    EXPECT_FAIL(st_expect(&f, "layers.0.w", ST_F32, 2, bad, &t), MOE_EFORMAT,
                "tensor 'layers.0.w' is [2, 3] F32, expected [3, 2] F32");
    EXPECT(t == NULL);
    EXPECT_FAIL(st_expect(&f, "layers.0.w", ST_F64, 2, good, NULL), MOE_EFORMAT, "expected [2, 3] F64");
    EXPECT_FAIL(st_expect(&f, "layers.0.w", ST_F32, 1, good, NULL), MOE_EFORMAT, "expected [2] F32");
    EXPECT_FAIL(st_expect(&f, "missing", ST_F32, 2, good, NULL), MOE_ENOTFOUND, "no tensor 'missing'");
    st_close(&f);
    st_close(&f); // closing twice is harmless

    /* Overwriting replaces the file; no metadata means no __metadata__ entry. */
    EXPECT(st_write(path, ts, 1, NULL, 0) == MOE_OK);
    EXPECT(st_read(&f, path) == MOE_OK);
    EXPECT(f.n_tensors == 1 && f.n_meta == 0);
    st_close(&f);

    /* No tensors at all is a valid (if useless) file. */
    EXPECT(st_write(path, NULL, 0, meta, 1) == MOE_OK);
    EXPECT(st_read(&f, path) == MOE_OK);
    EXPECT(f.n_tensors == 0 && f.n_meta == 1);
    st_close(&f);
    unlink(path);
}

static void test_atomic_write(void) {
    float x[4] = {1, 2, 3, 4};
    struct st_tensor_out t = {"x", ST_F32, 1, {4}, x};
    char path[600];
    snprintf(path, sizeof path, "%s/no/such/dir/m.safetensors", dir);
    EXPECT_FAIL(st_write(path, &t, 1, NULL, 0), MOE_EIO, "No such file or directory");
    EXPECT(strstr(moe_errmsg(), path) != NULL);
    EXPECT(access(path, F_OK) != 0);
    EXPECT(n_dir_entries() == 0);

    /* Bad input fails before anything is created. */
    const char *p = in_dir("bad.safetensors");
    struct st_tensor_out dup[2] = {t, t};
    EXPECT_FAIL(st_write(p, dup, 2, NULL, 0), MOE_EINVAL, "tensor 'x' given twice");
    struct st_tensor_out neg = {"n", ST_F32, 2, {2, -1}, x};
    EXPECT_FAIL(st_write(p, &neg, 1, NULL, 0), MOE_EINVAL, "invalid shape [2, -1]");
    struct st_tensor_out nodata = {"n", ST_F32, 1, {4}, NULL};
    EXPECT_FAIL(st_write(p, &nodata, 1, NULL, 0), MOE_EINVAL, "has no data");
    EXPECT(n_dir_entries() == 0);

    /* A write that fails half way (file size limit) leaves neither the file nor a temp file. */
    size_t big = 1 << 20;
    float *data = calloc(big, sizeof *data);
    struct st_tensor_out bt = {"big", ST_F32, 1, {(int64_t)big}, data};
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 65536;
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        moe_status s = st_write(p, &bt, 1, NULL, 0);
        setrlimit(RLIMIT_FSIZE, &old);
        EXPECT(s == MOE_EIO && strstr(moe_errmsg(), p) != NULL);
        EXPECT(access(p, F_OK) != 0);
        EXPECT(n_dir_entries() == 0);
    }
    free(data);
}

static void test_malformed(void) {
    struct st_file f;
    const char *p = in_dir("bad.safetensors");

    EXPECT_FAIL(st_read(&f, in_dir("absent.safetensors")), MOE_EIO, "No such file or directory");
    EXPECT_FAIL(st_read(&f, dir), MOE_EIO, "not a regular file");

    write_bytes(p, "", 0);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "not a safetensors file (0 bytes");
    write_bytes(p, "\x10\0\0", 3);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "not a safetensors file (3 bytes");

    uint8_t garbage[100];
    for (int i = 0; i < 100; i++) garbage[i] = (uint8_t)(i * 37 + 11);
    memcpy(garbage, "\xd2\x02\x96\x49\0\0\0\0", 8); // 1234567890
    write_bytes(p, garbage, sizeof garbage);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT,
                "bad.safetensors: not a safetensors file (header size 1234567890 exceeds file size 100)");
    EXPECT(f.buf == NULL && f.n_tensors == 0); // a failed read leaves nothing to close

    /* Header under the file size but over the sanity limit. */
    size_t hugelen = 100u * 1000u * 1000u + 8;
    FILE *fp = fopen(p, "wb");
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)hugelen >> (8 * i));
    fwrite(le, 1, 8, fp);
    fseek(fp, (long)hugelen + 8 - 1, SEEK_SET);
    fputc(' ', fp);
    fclose(fp);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "exceeds the limit");

    /* Truncations of a valid file. */
    float x[16] = {0};
    struct st_tensor_out t = {"wte", ST_F32, 2, {4, 4}, x};
    const char *good = in_dir("good.safetensors");
    EXPECT(st_write(good, &t, 1, NULL, 0) == MOE_OK);
    size_t size;
    uint8_t *raw = read_bytes(good, &size);
    write_bytes(p, raw, size - 1);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "data_offsets [0, 64] lie outside the 63-byte");
    write_bytes(p, raw, 20);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "exceeds file size 20");
    write_bytes(p, raw, 5);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "5 bytes, shorter than");
    free(raw);
    unlink(good);

    struct {
        const char *header;
        size_t data;
        const char *needle;
    } cases[] = {
        {"not json at all", 0, "header is not valid JSON"},
        {"[1, 2, 3]", 0, "header is not a JSON object"},
        {"{}  x", 0, "trailing bytes"},
        {"{\"a\": 3}", 0, "tensor 'a' is not an object"},
        {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "no dtype"},
        {"{\"a\": {\"dtype\": \"Q4\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
         "unsupported dtype 'Q4'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
         "shape entry 0 is not a non-negative integer"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
         "shape entry 0"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4,
         "shape entry 0"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 4]}}", 4, "no shape"},
        {"{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
         1, "has 9 dims (at most 8)"},
        {"{\"wte\": {\"dtype\": \"F32\", \"shape\": [4, 4], \"data_offsets\": [0, 12]}}", 12,
         "tensor 'wte' data_offsets [0, 12] do not match shape [4, 4] of F32 (64 bytes)"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1e15, 1e15], \"data_offsets\": [0, 4]}}", 4,
         "(more than 2^62 bytes)"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 4,
         "lie outside the 4-byte data section"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4,
         "lie outside"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
         "not a pair of non-negative integers"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, -4]}}", 4,
         "not a pair"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
         12, "tensors 'a' [0, 8] and 'b' [4, 12] overlap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8,
         "data bytes [0, 4) belong to no tensor"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, "tensor 'a' appears twice"},
        {"{\"__metadata__\": {\"k\": 3}}", 0, "__metadata__ entry 'k' is not a string"},
        {"{\"__metadata__\": [\"k\"]}", 0, "__metadata__ is not an object"},
        {"{\"__metadata__\": {}, \"__metadata__\": {}}", 0, "more than one __metadata__"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(p, cases[i].header, cases[i].data);
        EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, cases[i].needle);
    }

    /* A name of ST_NAME_MAX bytes is one too long. */
    char hdr[1024], name[ST_NAME_MAX + 1];
    memset(name, 'n', ST_NAME_MAX);
    name[ST_NAME_MAX] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
             name);
    write_raw(p, hdr, 1);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "bytes (at most 255)");
    name[ST_NAME_MAX - 1] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
             name);
    write_raw(p, hdr, 1);
    EXPECT(st_read(&f, p) == MOE_OK && f.n_tensors == 1);
    st_close(&f);

    /* A header with a NUL inside. */
    static const char nul_hdr[] = "{\"a\0\": {}}";
    uint8_t buf[8 + sizeof nul_hdr] = {sizeof nul_hdr - 1};
    memcpy(buf + 8, nul_hdr, sizeof nul_hdr - 1);
    write_bytes(p, buf, 8 + sizeof nul_hdr - 1);
    EXPECT_FAIL(st_read(&f, p), MOE_EFORMAT, "NUL byte");
    unlink(p);
}

#ifndef FUZZ_ITERS
#define FUZZ_ITERS 2000 // -DFUZZ_ITERS=1000000 for a longer soak
#endif

static uint64_t rng_state = 0x1234567;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_fuzz(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint8_t b[3] = {9, 8, 7};
    int64_t c[2] = {-1, 1};
    struct st_tensor_out ts[] = {
        {"a", ST_F32, 2, {2, 3}, a}, {"b", ST_U8, 1, {3}, b}, {"c", ST_I64, 1, {2}, c}};
    struct st_meta meta[] = {{"k", "v"}};
    const char *good = in_dir("fuzz_src.safetensors"), *p = in_dir("fuzz.safetensors");
    EXPECT(st_write(good, ts, 3, meta, 1) == MOE_OK);
    size_t size;
    uint8_t *orig = read_bytes(good, &size);
    uint8_t *buf = malloc(size);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)orig[i] << (8 * i);
    int n_ok = 0;
    for (int iter = 0; iter < FUZZ_ITERS; iter++) {
        memcpy(buf, orig, size);
        size_t n = size;
        int flips = 1 + (int)(rng() % 4);
        for (int k = 0; k < flips; k++) {
            /* Mostly the header, where the parser lives; sometimes the length field. */
            size_t at = rng() % 10 < 8 ? 8 + rng() % hlen : rng() % size;
            if (rng() % 3 == 0) buf[at] = (uint8_t)rng();
            else buf[at] ^= (uint8_t)(1u << (rng() % 8));
        }
        if (rng() % 4 == 0) n = rng() % (size + 1);
        write_bytes(p, buf, n);
        struct st_file f;
        moe_status s = st_read(&f, p);
        if (s == MOE_OK) {
            n_ok++;
            for (int i = 0; i < f.n_tensors; i++) {
                const struct st_tensor *t = &f.tensors[i];
                const uint8_t *d = t->data;
                EXPECT(d >= f.buf + 8 && d + t->nbytes <= f.buf + f.size);
                volatile uint8_t sum = 0;
                for (size_t k = 0; k < t->nbytes; k++) sum ^= d[k]; // ASan checks the range
                (void)sum;
            }
            st_close(&f);
        } else {
            EXPECT(s == MOE_EFORMAT);
            EXPECT(strlen(moe_errmsg()) > 0 && strchr(moe_errmsg(), '\n') == NULL);
            EXPECT(f.buf == NULL);
        }
    }
    printf("fuzz: %d of %d mutated files still valid\n", n_ok, FUZZ_ITERS);
    fflush(stdout);
    free(buf);
    free(orig);
    unlink(good);
    unlink(p);
}

int main(void) {
    moe_log_init("test");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_round_trip();
    test_atomic_write();
    test_malformed();
    test_fuzz();
    if (rmdir(dir) != 0) {
        fprintf(stderr, "%s not empty after the tests: %s\n", dir, strerror(errno));
        failures++;
    }
    if (failures) {
        fprintf(stderr, "test_safetensors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_safetensors: ok\n");
    return 0;
}
