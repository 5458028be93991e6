/*
 * test_common.c — the small shared helpers of common/: the knob table (defaults, environment,
 * command line, bounds, --help), the atomic file writer and the file hash, the two clocks,
 * CRC-32C.
 * Exits non-zero on any failed check.
 */
#include "../common/clock.h"
#include "../common/crc32c.h"
#include "../common/fileio.h"
#include "../common/knobs.h"
#include "check.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct cfg {
    char listen[16];
    int pod;
    long timeout_ms;
    double rate;
    int verbose;
    int level;
    int shm;
};

static const struct knob table[] = {
    {"listen", NULL, KNOB_STR, KNOB_AT(struct cfg, listen), "127.0.0.1:0", 0, 0, NULL,
     "HOST:PORT", "where to listen"},
    {"pod", NULL, KNOB_INT, KNOB_AT(struct cfg, pod), "0", 0, 1 << 20, NULL, "N", "the pod"},
    {"timeout-ms", "TEST_KNOB_TIMEOUT", KNOB_LONG, KNOB_AT(struct cfg, timeout_ms), "2000", 10,
     3600000, NULL, "MS", "a worker silent this long is dead"},
    {"rate", NULL, KNOB_DOUBLE, KNOB_AT(struct cfg, rate), "0.5", 0, 1, NULL, "R", "a rate"},
    {"verbose", NULL, KNOB_BOOL, KNOB_AT(struct cfg, verbose), "", 0, 0, NULL, NULL, "say more"},
    {"log-level", NULL, KNOB_CHOICE, KNOB_AT(struct cfg, level), "info", 0, 0,
     "debug|info|warn|error", NULL, "how much to log"},
    {NULL, "TEST_KNOB_SHM", KNOB_BOOL, KNOB_AT(struct cfg, shm), "1", 0, 0, NULL, NULL,
     "move bulk data through shared memory"},
};
static const int n_table = (int)(sizeof table / sizeof table[0]);

static moe_status parse(struct cfg *c, int *help, int argc, const char **argv) {
    memset(c, 0x7f, sizeof *c); // every field must come from the table
    return knobs_parse(table, n_table, c, argc, (char **)argv, help);
}

static void test_knobs(void) {
    struct cfg c;
    int help;
    unsetenv("TEST_KNOB_TIMEOUT");
    unsetenv("TEST_KNOB_SHM");
    const char *none[] = {"prog"};
    EXPECT(parse(&c, &help, 1, none) == MOE_OK);
    EXPECT(!strcmp(c.listen, "127.0.0.1:0") && c.pod == 0 && c.timeout_ms == 2000);
    EXPECT(c.rate == 0.5 && c.verbose == 0 && c.level == 1 && c.shm == 1 && !help);

    const char *all[] = {"prog", "--listen", "0.0.0.0:7", "--pod=3", "--timeout-ms", "50",
                         "--rate", "0.25", "--verbose", "--log-level", "warn"};
    EXPECT(parse(&c, &help, 11, all) == MOE_OK);
    EXPECT(!strcmp(c.listen, "0.0.0.0:7") && c.pod == 3 && c.timeout_ms == 50);
    EXPECT(c.rate == 0.25 && c.verbose == 1 && c.level == 2 && help == 0);
    /* --help wins over anything wrong beside it */
    setenv("TEST_KNOB_SHM", "maybe", 1);
    const char *asks[] = {"prog", "--pod", "x", "--help"};
    EXPECT(parse(&c, &help, 4, asks) == MOE_OK && help == 1);
    unsetenv("TEST_KNOB_SHM");

    /* the environment is read before the command line, which wins */
    setenv("TEST_KNOB_TIMEOUT", "700", 1);
    setenv("TEST_KNOB_SHM", "0", 1);
    EXPECT(parse(&c, &help, 1, none) == MOE_OK && c.timeout_ms == 700 && c.shm == 0);
    const char *over[] = {"prog", "--timeout-ms", "900"};
    EXPECT(parse(&c, &help, 3, over) == MOE_OK && c.timeout_ms == 900);
    setenv("TEST_KNOB_SHM", "yes", 1);
    EXPECT_FAIL(parse(&c, &help, 1, none), MOE_EINVAL, "TEST_KNOB_SHM must be 0 or 1, not 'yes'");
    unsetenv("TEST_KNOB_SHM");
    setenv("TEST_KNOB_TIMEOUT", "5", 1);
    EXPECT_FAIL(parse(&c, &help, 1, none), MOE_EINVAL, "TEST_KNOB_TIMEOUT must be an integer in 10..3600000");
    unsetenv("TEST_KNOB_TIMEOUT");

    const char *bad_int[] = {"prog", "--pod", "x"};
    EXPECT_FAIL(parse(&c, &help, 3, bad_int), MOE_EINVAL, "--pod must be an integer in 0..1048576, not 'x'");
    const char *neg[] = {"prog", "--pod", "-1"};
    EXPECT_FAIL(parse(&c, &help, 3, neg), MOE_EINVAL, "--pod must be an integer");
    const char *bad_rate[] = {"prog", "--rate", "2"};
    EXPECT_FAIL(parse(&c, &help, 3, bad_rate), MOE_EINVAL, "--rate must be a number in 0..1, not '2'");
    const char *nan[] = {"prog", "--rate", "nan"};
    EXPECT_FAIL(parse(&c, &help, 3, nan), MOE_EINVAL, "--rate must be a number");
    const char *lvl[] = {"prog", "--log-level", "loud"};
    EXPECT_FAIL(parse(&c, &help, 3, lvl), MOE_EINVAL, "--log-level must be one of debug|info|warn|error");
    const char *longs[] = {"prog", "--listen", "a-much-too-long-address:1"};
    EXPECT_FAIL(parse(&c, &help, 3, longs), MOE_EINVAL, "--listen is longer than 15 bytes");
    const char *unknown[] = {"prog", "--colour"};
    EXPECT_FAIL(parse(&c, &help, 2, unknown), MOE_EINVAL, "unknown option '--colour'");
    const char *missing[] = {"prog", "--pod"};
    EXPECT_FAIL(parse(&c, &help, 2, missing), MOE_EINVAL, "--pod needs a value");
    const char *stray[] = {"prog", "extra"};
    EXPECT_FAIL(parse(&c, &help, 2, stray), MOE_EINVAL, "unexpected argument 'extra'");

    /* --help comes from the same table: every flag, its default, bounds and environment */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    knobs_print(f, table, n_table, 0);
    knobs_print(f, table, n_table, 1);
    fclose(f);
    EXPECT(strstr(text, "--listen HOST:PORT") && strstr(text, "(default 127.0.0.1:0)"));
    EXPECT(strstr(text, "10..3600000;") && strstr(text, "$TEST_KNOB_TIMEOUT)"));
    EXPECT(strstr(text, "--log-level debug|info|warn|error") && strstr(text, "--verbose "));
    EXPECT(strstr(text, "TEST_KNOB_SHM=0|1") && strstr(text, "(default 1)"));
    free(text);
}

/* A repeatable flag: the flags replace the environment's colon-separated list. */
struct list_cfg {
    char roots[24];
};
static const struct knob list_table[] = {
    {"root", "TEST_KNOB_ROOTS", KNOB_LIST, KNOB_AT(struct list_cfg, roots), "", 0, 0, NULL, "DIR",
     "a root"},
};

static int list_is(const char *list, const char *const *want, int n) {
    int i = 0;
    for (const char *v = list; *v; v = knob_list_next(v), i++)
        if (i >= n || strcmp(v, want[i]) != 0) return 0;
    return i == n && knob_list_count(list) == n;
}

static void test_knob_list(void) {
    struct list_cfg c;
    int help;
    unsetenv("TEST_KNOB_ROOTS");
    const char *none[] = {"prog"};
    memset(&c, 0x7f, sizeof c);
    EXPECT(knobs_parse(list_table, 1, &c, 1, (char **)none, &help) == MOE_OK);
    EXPECT(list_is(c.roots, NULL, 0));
    setenv("TEST_KNOB_ROOTS", "/a::/bb:", 1);
    EXPECT(knobs_parse(list_table, 1, &c, 1, (char **)none, &help) == MOE_OK);
    const char *env[] = {"/a", "/bb"};
    EXPECT(list_is(c.roots, env, 2));
    const char *two[] = {"prog", "--root", "/x", "--root=/y:z"};
    EXPECT(knobs_parse(list_table, 1, &c, 4, (char **)two, &help) == MOE_OK);
    const char *flags[] = {"/x", "/y:z"}; // a flag's value is one entry, colons and all
    EXPECT(list_is(c.roots, flags, 2));
    const char *empty[] = {"prog", "--root", ""};
    EXPECT_FAIL(knobs_parse(list_table, 1, &c, 3, (char **)empty, &help), MOE_EINVAL,
                "--root needs a non-empty value");
    const char *many[] = {"prog", "--root", "/0123456789", "--root", "/0123456789"};
    EXPECT_FAIL(knobs_parse(list_table, 1, &c, 5, (char **)many, &help), MOE_EINVAL,
                "--root: the values given are longer than 22 bytes in all");
    unsetenv("TEST_KNOB_ROOTS");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    knobs_print(f, list_table, 1, 0);
    fclose(f);
    EXPECT(strstr(text, "--root DIR") && strstr(text, "repeatable; or $TEST_KNOB_ROOTS, colon-separated"));
    free(text);
}

static void test_fileio(void) {
    char dir[] = "/tmp/moe_test_common.XXXXXX";
    EXPECT(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/file", dir);
    EXPECT(moe_write_file_atomic(path, "first\n", 6, 0640) == MOE_OK);
    EXPECT(moe_write_file_atomic(path, "second\n", 7, 0640) == MOE_OK);
    struct stat st;
    EXPECT(stat(path, &st) == 0 && st.st_size == 7 && (st.st_mode & 0777) == 0640);

    /* the hash against libcrypto's one-shot SHA256 of the same bytes */
    unsigned char sum[32], want[32];
    int64_t size = -1;
    EXPECT(moe_file_sha256(path, sum, &size) == MOE_OK && size == 7);
    SHA256((const unsigned char *)"second\n", 7, want);
    EXPECT(!memcmp(sum, want, 32));
    EXPECT_FAIL(moe_file_sha256("/nonexistent/x", sum, &size), MOE_EIO, "/nonexistent/x");

    /* an aborted write leaves the old file and no temporary behind */
    struct moe_atomic_file af;
    EXPECT(moe_atomic_begin(&af, path, 0600) == MOE_OK);
    EXPECT(moe_atomic_write(&af, "partial", 7) == MOE_OK);
    moe_atomic_abort(&af);
    EXPECT(stat(path, &st) == 0 && st.st_size == 7);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
    EXPECT(system(cmd) == 0);
    EXPECT_FAIL(moe_write_file_atomic("/nonexistent/dir/f", "x", 1, 0600), MOE_EIO,
                "cannot write /nonexistent/dir/f");

    /* a directory with its parents; a file in the way is named */
    char deep[160];
    snprintf(deep, sizeof deep, "%s/a/b/c", dir);
    EXPECT(moe_mkdir_p(deep, 0700) == MOE_OK && moe_mkdir_p(deep, 0700) == MOE_OK);
    EXPECT(stat(deep, &st) == 0 && S_ISDIR(st.st_mode));
    snprintf(deep, sizeof deep, "%s/file/x", dir);
    EXPECT_FAIL(moe_mkdir_p(deep, 0700), MOE_EIO, "/file");
    snprintf(cmd, sizeof cmd, "rm -rf %s/a", dir);
    EXPECT(system(cmd) == 0);
    unlink(path);
    rmdir(dir);
}

/* Directories beneath an open one: made, reopened, never left through ".." or a symlink; a
 * durable atomic file written beneath it. */
static void test_dir_beneath(void) {
    char dir[] = "/tmp/moe_test_beneath.XXXXXX";
    EXPECT(mkdtemp(dir) != NULL);
    int root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), sub = -1;
    EXPECT(root >= 0);
    EXPECT(moe_dir_open_beneath(root, "x/y", 1, 0700, "ROOT/x/y", &sub) == MOE_OK);
    struct moe_atomic_file af;
    EXPECT(moe_atomic_begin_at(&af, sub, "f", "ROOT/x/y/f", 0600, 1) == MOE_OK);
    EXPECT(moe_atomic_write(&af, "durable", 7) == MOE_OK && moe_atomic_commit(&af) == MOE_OK);
    close(sub);
    char path[160];
    struct stat st;
    snprintf(path, sizeof path, "%s/x/y/f", dir);
    EXPECT(stat(path, &st) == 0 && st.st_size == 7 && (st.st_mode & 0777) == 0600);
    EXPECT(moe_dir_open_beneath(root, "x/./y/", 0, 0700, "ROOT", &sub) == MOE_OK);
    close(sub);
    EXPECT_FAIL(moe_dir_open_beneath(root, "x/../..", 1, 0700, "ROOT/x/../..", &sub), MOE_EINVAL,
                "\"..\" is not allowed");
    snprintf(path, sizeof path, "%s/x/out", dir);
    EXPECT(symlink("/tmp", path) == 0);
    EXPECT_FAIL(moe_dir_open_beneath(root, "x/out/z", 1, 0700, "ROOT/x/out/z", &sub), MOE_EINVAL,
                "out is a symlink");
    EXPECT_FAIL(moe_dir_open_beneath(root, "nope", 0, 0700, "ROOT/nope", &sub), MOE_EIO,
                "cannot open ROOT/nope");
    /* a file committed over a symlink replaces the link, not what it points at */
    EXPECT(moe_dir_open_beneath(root, "x", 0, 0700, "ROOT/x", &sub) == MOE_OK);
    EXPECT(moe_atomic_begin_at(&af, sub, "out", "ROOT/x/out", 0600, 1) == MOE_OK);
    EXPECT(moe_atomic_write(&af, "ab", 2) == MOE_OK && moe_atomic_commit(&af) == MOE_OK);
    close(sub);
    EXPECT(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 2);
    close(root);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    EXPECT(system(cmd) == 0);
}

static void test_clocks(void) {
    int64_t wall = moe_wall_ms();
    EXPECT(wall > 1700000000000LL); // after 2023: a unix time in milliseconds
    double a = moe_clock_s(), b = moe_clock_s();
    EXPECT(b >= a);
}

/* CRC-32C: RFC 3720's check value, the same value in pieces as whole (the hardware path
 * takes 8 bytes at a time, so odd lengths and offsets cover its tail), and one flipped bit
 * changes it. */
static void test_crc32c(void) {
    EXPECT(moe_crc32c(0, "123456789", 9) == 0xE3069283u);
    EXPECT(moe_crc32c(0, "", 0) == 0);
    unsigned char buf[4099];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 131 + 7);
    uint32_t whole = moe_crc32c(0, buf, sizeof buf);
    uint32_t parts = moe_crc32c(moe_crc32c(moe_crc32c(0, buf, 5), buf + 5, 1000), buf + 1005,
                                sizeof buf - 1005);
    EXPECT(whole == parts);
    const void *three[3] = {buf, buf + 1, buf + 3};
    uint32_t got[3];
    moe_crc32c_3(three, 4001, got); /* not a multiple of 8: the tail of every chain */
    for (int k = 0; k < 3; k++) EXPECT(got[k] == moe_crc32c(0, three[k], 4001));
    buf[2047] ^= 0x10;
    EXPECT(moe_crc32c(0, buf, sizeof buf) != whole);
}

int main(void) {
    test_crc32c();
    test_knobs();
    test_knob_list();
    test_fileio();
    test_dir_beneath();
    test_clocks();
    if (failures) printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
