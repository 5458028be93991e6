/*
 * temp_tree.h — a temporary directory tree for the C tests that read files (test_data,
 * test_tokens): one per test process under /tmp, paths relative to it, files written whole.
 * Every failure to make the tree is fatal (exit 2): a test on a tree it could not make would
 * test nothing. Removing what a test made is the test's own business (test_data checks the
 * tree holds nothing else; tree_remove() takes whatever is there).
 */
#ifndef MOE_TESTS_TEMP_TREE_H
#define MOE_TESTS_TEMP_TREE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char root[80];

/* Makes /tmp/NAME.XXXXXX, the root of every path below. */
static inline void tree_make(const char *name) {
    snprintf(root, sizeof root, "/tmp/%s.XXXXXX", name);
    if (!mkdtemp(root)) {
        fprintf(stderr, "mkdtemp %s: %s\n", root, strerror(errno));
        exit(2);
    }
}

/* root/rel, in one of 8 rotating buffers (so a call may take a few of them at once). */
static inline const char *at(const char *rel) {
    static char buf[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root, rel);
    return buf[k];
}

static inline void put(const char *rel, const void *p, size_t n) {
    FILE *f = fopen(at(rel), "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s: %s\n", at(rel), strerror(errno));
        exit(2);
    }
    fclose(f);
}

static inline void put_str(const char *rel, const char *s) { put(rel, s, strlen(s)); }

static inline void make_dir(const char *rel) {
    if (mkdir(at(rel), 0755) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", at(rel), strerror(errno));
        exit(2);
    }
}

/* Removes the whole tree; says so when it cannot. */
static inline void tree_remove(void) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
}

#endif
