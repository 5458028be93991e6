/*
 * check.h — the one assertion the C tests share: EXPECT(cond, fmt, ...) prints the failed
 * check with its location and counts it; main() returns non-zero when `failures` > 0.
 */
#ifndef MOE_TESTS_CHECK_H
#define MOE_TESTS_CHECK_H

#include <stdio.h>

static int failures;

#define EXPECT(cond, ...)                                                                         \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                          \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

#endif
