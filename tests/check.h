/*
 * check.h — the assertions the C tests share. Each prints the failed check with its location
 * and counts it; a test's main() returns non-zero when `failures` > 0.
 *   EXPECT(cond)                   prints the condition
 *   EXPECT_MSG(cond, fmt, ...)     prints a message
 *   EXPECT_FAIL(call, want, text)  `call` must return status `want` with `text` in moe_errmsg()
 * Tests that time a wait use moe_clock_s() (common/clock.h).
 */
#ifndef MOE_TESTS_CHECK_H
#define MOE_TESTS_CHECK_H

#include "../common/clock.h"

#include <stdio.h>
#include <string.h>

static int failures;

#define EXPECT_MSG(cond, ...)                                                                     \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                          \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

#define EXPECT(cond) EXPECT_MSG(cond, "%s", #cond)

#define EXPECT_FAIL(call, want, needle)                                                           \
    do {                                                                                          \
        moe_status s_ = (call);                                                                   \
        EXPECT_MSG(s_ == (want) && strstr(moe_errmsg(), (needle)),                                \
                   "%s: got %s \"%s\", wanted %s containing \"%s\"", #call, moe_status_str(s_), \
                   moe_errmsg(), moe_status_str(want), (needle));                                 \
    } while (0)

#endif
