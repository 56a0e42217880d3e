/* testlib.c - see testlib.h. */
#include "testlib.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/fsutil.h"

int t_failed_current;
int t_failures;
int t_run;
static char t_dir[4096];

const char *t_tmpdir(void)
{
    if (t_dir[0])
        fs_rm_rf(t_dir);
    const char *base = getenv("TMPDIR");
    snprintf(t_dir, sizeof(t_dir), "%s/haven-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(t_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    return t_dir;
}

void t_run_one(const char *name, void (*fn)(void))
{
    t_failed_current = 0;
    t_run++;
    fn();
    if (t_failed_current) {
        t_failures++;
        printf("FAIL %s\n", name);
    } else {
        printf("ok   %s\n", name);
    }
    fflush(stdout);
}

int t_done(void)
{
    if (t_dir[0] && !t_failures)
        fs_rm_rf(t_dir);
    printf("%d tests, %d failed\n", t_run, t_failures);
    return t_failures ? 1 : 0;
}
