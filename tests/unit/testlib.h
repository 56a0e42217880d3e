/*
 * testlib.h - the smallest test framework that does the job.
 *
 * A test file defines TEST(name) functions and a main() that RUNs them; a
 * failed CHECK prints file:line and the expression, marks the test failed
 * and returns from it. The binary exits non-zero when any test failed.
 */
#ifndef HV_TESTLIB_H
#define HV_TESTLIB_H

#include <stdio.h>

extern int t_failed_current;
extern int t_failures;
extern int t_run;

#define TEST(name) static void name(void)

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            t_failed_current = 1;                                            \
            return;                                                          \
        }                                                                    \
    } while (0)

/* CHECK with a message printed on failure (e.g. err.msg). */
#define CHECKM(cond, ...)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            t_failed_current = 1;                                            \
            return;                                                          \
        }                                                                    \
    } while (0)

#define RUN(name) t_run_one(#name, name)

void t_run_one(const char *name, void (*fn)(void));
int t_done(void); /* prints the summary, returns the exit status */

/* A fresh empty folder under $TMPDIR (or /tmp) for this test; removed by
 * t_done unless the test failed. */
const char *t_tmpdir(void);

#endif
