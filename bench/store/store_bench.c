/*
 * store_bench.c - how fast the account store is, measured against the
 * machine it runs on.
 *
 * Shared machines are noisy, so every goal is a ratio of two figures taken
 * in the same run (interleaved in rounds, so a slow minute hurts both sides)
 * or an absolute figure with a generous margin. One program, one
 * sub-benchmark per argument; bench/store/run.sh runs them all and prints
 * the summary. Each goal line reads like
 *
 *   append_single: 1012/s  raw_fdatasync: 1410/s  ratio 0.72 (goal >= 0.7) PASS
 *
 * and is followed by a "SUMMARY\tname\tfigure\tgoal\tresult" line that
 * run.sh turns into the table (and hides from the log).
 *
 *   append DIR       store_append of 4 KiB vs raw write+fdatasync vs maildir
 *   concurrent DIR   1 writer vs W writers, each process on its own account
 *   build DIR        makes a mailbox of N messages with batches (for below)
 *   open DIR         warm and cold store_open+store_close of that account
 *   reconstruct DIR  store_reconstruct of that account
 *   rss DIR          resident memory of that account open, per message
 *   crash DIR        builds ~1 GB, SIGKILLs a writer, times the reopen
 *
 * The bench trusts its arguments (it is run by run.sh or by hand) and exits
 * on the first error with the store's reason.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/log.h"
#include "store/store.h"

#define MAX_WRITERS 256

/* Settings shared by the sub-benchmarks; 0 means "the sub's default". */
static struct {
    double secs;       /* -t: seconds per measured phase */
    int rounds;        /* -r: rounds (interleaved) or repetitions */
    long msgs;         /* -n: messages to build */
    long size;         /* -s: message size in bytes */
    long batch;        /* -b: messages per batch when building */
    int writers;       /* -w: concurrent writers */
    double kill_after; /* -k: seconds the crash child appends before SIGKILL */
    long distinct;     /* -u: distinct bodies when building (0: all unique; -1 unset) */
    long tail;         /* -T: records left after the last checkpoint (crash) */
} opt;

/* ---- small helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "store_bench: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void mkdir_or_die(const char *path)
{
    hv_err err = {0};
    if (fs_mkdir_p(path, 0700, &err) < 0)
        die("%s", err.msg);
}

/* One goal: the human line was printed already; this is the line run.sh
 * collects into the summary table. */
static void summary(const char *name, const char *figure, const char *goal, int pass)
{
    printf("SUMMARY\t%s\t%s\t%s\t%s\n", name, figure, goal, pass ? "PASS" : "MISS");
    fflush(stdout);
}

/* Names the file system under dir, and warns when sync figures would mean
 * nothing there. */
static void print_fs(const char *dir)
{
    struct statfs sf;
    const char *type = "other";
    if (statfs(dir, &sf) < 0)
        die("statfs %s: %s", dir, strerror(errno));
    switch ((unsigned long)sf.f_type) {
    case 0xEF53: type = "ext2/3/4"; break;
    case 0x58465342: type = "xfs"; break;
    case 0x9123683E: type = "btrfs"; break;
    case 0x01021994: type = "tmpfs"; break;
    case 0x2FC12FC1: type = "zfs"; break;
    case 0x794C7630: type = "overlayfs"; break;
    }
    printf("file system: %s (f_type 0x%lx)\n", type, (unsigned long)sf.f_type);
    if (sf.f_type == 0x01021994)
        printf("WARNING: tmpfs: fsync is a no-op here, every durability figure is "
               "meaningless (set STORE_BENCH_DIR to a disk-backed folder)\n");
}

/* A message body that no other message of this run has (blobs are stored
 * once per content, so equal bodies would not be written twice). */
static void msg_fill(char *m, size_t len, uint64_t n)
{
    static const char text[] = "The quick brown fox jumps over the lazy dog; "
                               "Haven stores this body once, named by its SHA-256.\r\n";
    for (size_t i = 0; i < len; i++)
        m[i] = text[i % (sizeof(text) - 1)];
    char hdr[160];
    int h = snprintf(hdr, sizeof(hdr),
                     "Message-ID: <bench-%d-%llu@haven.test>\r\nSubject: bench %llu\r\n\r\n",
                     (int)getpid(), (unsigned long long)n, (unsigned long long)n);
    memcpy(m, hdr, (size_t)h < len ? (size_t)h : len);
}

static uint64_t msg_counter;

static store_account *acct_open(const char *dir, int create, uint32_t *inbox)
{
    store_account *a;
    hv_err err = {0};
    if (store_open(dir, "bench@haven.test", create ? STORE_OPEN_CREATE : 0, NULL, &a, &err) < 0)
        die("open %s: %s", dir, err.msg);
    store_mailbox_info mi;
    if (store_mailbox_find(a, "INBOX", &mi) == 0) {
        *inbox = mi.id;
    } else if (!create) {
        die("%s has no INBOX (run the build step first)", dir);
    } else if (store_mailbox_create(a, "INBOX", 0, inbox, &err) < 0) {
        die("create INBOX in %s: %s", dir, err.msg);
    }
    return a;
}

static void append_one(store_account *a, uint32_t inbox, char *m, size_t len)
{
    hv_err err = {0};
    uint32_t uid;
    msg_fill(m, len, msg_counter++);
    if (store_append(a, inbox, m, len, 0, time(NULL), &uid, &err) < 0)
        die("store_append: %s", err.msg);
}

/* Builds n messages of len bytes in batches; returns the seconds taken.
 * With distinct > 0 the bodies repeat after that many: the index and the
 * log are exactly what unique bodies give (a record and an index entry per
 * message), but the blob folder holds distinct files, not n. */
static double build_batches(store_account *a, uint32_t inbox, long n, size_t len, long batch,
                            long distinct)
{
    char *m = malloc(len);
    double t0 = now();
    for (long done = 0; done < n;) {
        store_batch *b;
        hv_err err = {0};
        if (store_batch_begin(a, &b, &err) < 0)
            die("store_batch_begin: %s", err.msg);
        long k = n - done < batch ? n - done : batch;
        for (long i = 0; i < k; i++) {
            uint64_t c = msg_counter++;
            msg_fill(m, len, distinct > 0 ? c % (uint64_t)distinct : c);
            if (store_batch_add(b, inbox, m, len, 0, time(NULL), NULL, &err) < 0)
                die("store_batch_add: %s", err.msg);
        }
        if (store_batch_commit(b, &err) < 0)
            die("store_batch_commit: %s", err.msg);
        done += k;
    }
    free(m);
    return now() - t0;
}

static uint32_t inbox_count(store_account *a, uint32_t inbox)
{
    uint32_t n = 0;
    store_msg_count(a, inbox, &n);
    return n;
}

/* ---- page cache ---- */

static const char *cache_method = "none";

static int fadvise_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    /* Dirty pages are not dropped; everything the store wrote is synced. */
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return 0;
}

/* Drops the cached pages of what store_open reads: the index checkpoint,
 * the log segments and the lock file, with posix_fadvise(DONTNEED) on each
 * (the files are synced first: dirty pages are not dropped). Blobs are left
 * alone: opening never reads them. With STORE_BENCH_DROP_CACHES=1 it writes
 * 1 to /proc/sys/vm/drop_caches instead (root only, and it empties the page
 * cache of everyone on the machine, so it is not the default). */
static void drop_cache(const char *acct)
{
    const char *g = getenv("STORE_BENCH_DROP_CACHES");
    if (g && strcmp(g, "1") == 0) {
        int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            sync();
            int ok = write(fd, "1", 1) == 1;
            close(fd);
            if (ok) {
                cache_method = "drop_caches";
                return;
            }
        }
        fprintf(stderr, "store_bench: cannot write /proc/sys/vm/drop_caches; using fadvise\n");
    }
    char p[4200];
    snprintf(p, sizeof(p), "%s/index", acct);
    nftw(p, fadvise_one, 16, FTW_PHYS);
    snprintf(p, sizeof(p), "%s/log", acct);
    nftw(p, fadvise_one, 16, FTW_PHYS);
    snprintf(p, sizeof(p), "%s/lock", acct);
    struct stat st;
    if (stat(p, &st) == 0)
        fadvise_one(p, &st, FTW_F, NULL);
    cache_method = "posix_fadvise(DONTNEED) per file";
}

/* Fraction of a file's pages in the page cache (to check a drop worked). */
static double resident_fraction(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    fstat(fd, &st);
    double frac = -1;
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            size_t pg = (size_t)sysconf(_SC_PAGESIZE);
            size_t npages = ((size_t)st.st_size + pg - 1) / pg, in = 0;
            unsigned char *vec = malloc(npages);
            if (mincore(p, (size_t)st.st_size, vec) == 0) {
                for (size_t i = 0; i < npages; i++)
                    in += vec[i] & 1;
                frac = (double)in / (double)npages;
            }
            free(vec);
            munmap(p, (size_t)st.st_size);
        }
    }
    close(fd);
    return frac;
}

/* ---- sizes ---- */

static uint64_t du_total;

static int du_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)p, (void)ftw;
    if (flag == FTW_F)
        du_total += (uint64_t)st->st_size;
    return 0;
}

static uint64_t du(const char *path)
{
    du_total = 0;
    nftw(path, du_one, 16, FTW_PHYS);
    return du_total;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* ---- 1. single-writer appends vs the machine's fdatasync ---- */

typedef struct phase_result {
    uint64_t ops;
    double secs;
} phase_result;

/* Runs op until secs have passed; the op that ends after the deadline is
 * counted with the time it took, so the rate stays exact. */
static void run_for(double secs, phase_result *r, void (*op)(void *), void *ctx)
{
    double t0 = now(), end = t0 + secs, t;
    do {
        op(ctx);
        r->ops++;
    } while ((t = now()) < end);
    r->secs += t - t0;
}

typedef struct append_ctx {
    char *m;
    size_t len;
    int fd;                   /* raw: the file; maildir: new/ */
    const char *tmpd, *newd;  /* maildir */
    store_account *a;         /* store */
    uint32_t inbox;
} append_ctx;

static void raw_op(void *p)
{
    append_ctx *c = p;
    if (fs_write_full(c->fd, c->m, c->len) < 0 || fdatasync(c->fd) < 0)
        die("raw write: %s", strerror(errno));
}

static void raw_phase(const char *dir, append_ctx *c, double secs, phase_result *r)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/raw.dat", dir);
    c->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (c->fd < 0)
        die("open %s: %s", path, strerror(errno));
    run_for(secs, r, raw_op, c);
    close(c->fd);
}

/* What a Dovecot/Postfix-style maildir delivery costs: a new file in tmp/,
 * fsync, rename into new/, fsync of new/. */
static void maildir_op(void *p)
{
    append_ctx *c = p;
    char name[64], from[4300], to[4300];
    uint64_t n = msg_counter++;
    msg_fill(c->m, c->len, n);
    snprintf(name, sizeof(name), "%lld.P%dQ%llu.bench", (long long)time(NULL), (int)getpid(),
             (unsigned long long)n);
    snprintf(from, sizeof(from), "%s/%s", c->tmpd, name);
    snprintf(to, sizeof(to), "%s/%s", c->newd, name);
    int fd = open(from, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || fs_write_full(fd, c->m, c->len) < 0 || fsync(fd) < 0)
        die("maildir write %s: %s", from, strerror(errno));
    close(fd);
    if (rename(from, to) < 0 || fsync(c->fd) < 0)
        die("maildir rename %s: %s", to, strerror(errno));
}

static void maildir_phase(const char *dir, append_ctx *c, double secs, phase_result *r)
{
    char tmpd[4200], newd[4200];
    snprintf(tmpd, sizeof(tmpd), "%s/maildir/tmp", dir);
    snprintf(newd, sizeof(newd), "%s/maildir/new", dir);
    mkdir_or_die(tmpd);
    mkdir_or_die(newd);
    c->tmpd = tmpd;
    c->newd = newd;
    c->fd = open(newd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->fd < 0)
        die("open %s: %s", newd, strerror(errno));
    run_for(secs, r, maildir_op, c);
    close(c->fd);
}

static void store_op(void *p)
{
    append_ctx *c = p;
    append_one(c->a, c->inbox, c->m, c->len);
}

static void store_phase(append_ctx *c, double secs, phase_result *r)
{
    run_for(secs, r, store_op, c);
}

static int bench_append(const char *dir)
{
    double secs = opt.secs ? opt.secs : 2;
    int rounds = opt.rounds ? opt.rounds : 3;
    size_t len = opt.size ? (size_t)opt.size : 4096;
    mkdir_or_die(dir);
    print_fs(dir);
    char acct[4200];
    snprintf(acct, sizeof(acct), "%s/account", dir);
    uint32_t inbox;
    store_account *a = acct_open(acct, 1, &inbox);
    append_ctx c = {.m = malloc(len), .len = len, .a = a, .inbox = inbox};
    msg_fill(c.m, len, 0);

    /* Warm-up: first writes allocate journal space, folders, inodes. */
    phase_result w = {0};
    raw_phase(dir, &c, 0.2, &w);
    maildir_phase(dir, &c, 0.2, &w);
    store_phase(&c, 0.2, &w);

    /* Each round is cut into short slices, and every slice runs the three
     * kinds one after the other in a rotating order: a burst of load from
     * elsewhere lands on all three, not on whichever ran at that moment. */
    int slices = (int)(secs / 0.25 + 0.5);
    if (slices < 1)
        slices = 1;
    phase_result raw = {0}, md = {0}, st = {0};
    double lo = 1e9, hi = 0;
    for (int r = 0; r < rounds; r++) {
        phase_result rr = {0}, rs = {0};
        for (int sl = 0; sl < slices; sl++) {
            for (int k = 0; k < 3; k++) {
                switch ((k + sl + r) % 3) {
                case 0: raw_phase(dir, &c, secs / slices, &rr); break;
                case 1: maildir_phase(dir, &c, secs / slices, &md); break;
                case 2: store_phase(&c, secs / slices, &rs); break;
                }
            }
        }
        double ratio = ((double)rs.ops / rs.secs) / ((double)rr.ops / rr.secs);
        lo = ratio < lo ? ratio : lo;
        hi = ratio > hi ? ratio : hi;
        printf("  round %d: store %.0f/s raw %.0f/s ratio %.2f\n", r + 1,
               (double)rs.ops / rs.secs, (double)rr.ops / rr.secs, ratio);
        raw.ops += rr.ops, raw.secs += rr.secs;
        st.ops += rs.ops, st.secs += rs.secs;
    }
    store_close(a);
    free(c.m);

    double r_raw = (double)raw.ops / raw.secs, r_md = (double)md.ops / md.secs,
           r_st = (double)st.ops / st.secs;
    double ratio = r_st / r_raw;
    int pass = ratio >= 0.7;
    printf("append_single: %.0f/s  raw_fdatasync: %.0f/s  ratio %.2f (rounds %.2f..%.2f) "
           "(goal >= 0.7) %s\n",
           r_st, r_raw, ratio, lo, hi, pass ? "PASS" : "MISS");
    char fig[128];
    snprintf(fig, sizeof(fig), "%.0f/s vs raw %.0f/s = %.2f", r_st, r_raw, ratio);
    summary("1. append 4 KiB, 1 writer / raw fdatasync", fig, ">= 0.7", pass);
    printf("append_single: %.0f/s  naive_maildir: %.0f/s  ratio %.2f (info: > 1 means "
           "cheaper than maildir delivery)\n",
           r_st, r_md, r_st / r_md);
    printf("  per append: store %.2f ms, raw fdatasync %.2f ms, maildir %.2f ms; "
           "store / (raw + maildir) cost %.2f\n",
           1e3 / r_st, 1e3 / r_raw, 1e3 / r_md, (1 / r_st) / (1 / r_raw + 1 / r_md));
    return 0;
}

/* ---- 2. concurrent writers, one account each ---- */

typedef struct conc_shared {
    double deadline;
    uint64_t ops[MAX_WRITERS];
} conc_shared;

/* Forks nw processes; each appends (store, or raw write+fdatasync) to its
 * own account or file until the shared deadline. All start together: they
 * block reading a pipe that the parent closes. Returns appends per second. */
static double conc_phase(const char *dir, int nw, int raw, double secs, conc_shared *sh)
{
    int ready[2], go[2];
    if (pipe(ready) < 0 || pipe(go) < 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pids[MAX_WRITERS];
    for (int i = 0; i < nw; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork: %s", strerror(errno));
        if (pids[i] > 0)
            continue;
        close(ready[0]);
        close(go[1]);
        size_t len = opt.size ? (size_t)opt.size : 4096;
        char *m = malloc(len);
        msg_fill(m, len, 0);
        char path[4200];
        store_account *a = NULL;
        uint32_t inbox = 0;
        int fd = -1;
        if (raw) {
            snprintf(path, sizeof(path), "%s/raw%d.dat", dir, i);
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (fd < 0)
                die("open %s: %s", path, strerror(errno));
        } else {
            snprintf(path, sizeof(path), "%s/acct%d", dir, i);
            a = acct_open(path, 0, &inbox);
        }
        char c = 'r', dummy;
        if (write(ready[1], &c, 1) != 1 || read(go[0], &dummy, 1) != 0)
            _exit(2);
        uint64_t n = 0;
        double end = sh->deadline;
        while (now() < end) {
            if (raw) {
                if (fs_write_full(fd, m, len) < 0 || fdatasync(fd) < 0)
                    _exit(3);
            } else {
                append_one(a, inbox, m, len);
            }
            if (now() <= end)
                n++;
        }
        sh->ops[i] = n;
        _exit(0);
    }
    close(ready[1]);
    close(go[0]);
    for (int i = 0; i < nw; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1)
            die("a writer died before starting");
    }
    sh->deadline = now() + secs;
    close(go[1]); /* everyone's read returns 0 now */
    close(ready[0]);
    uint64_t total = 0;
    for (int i = 0; i < nw; i++) {
        int status;
        waitpid(pids[i], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("writer %d failed (status 0x%x)", i, status);
        total += sh->ops[i];
    }
    return (double)total / secs;
}

static int bench_concurrent(const char *dir)
{
    double secs = opt.secs ? opt.secs : 2;
    int rounds = opt.rounds ? opt.rounds : 3;
    int nw = opt.writers ? opt.writers : 16;
    if (nw < 2 || nw > MAX_WRITERS)
        die("writers must be 2..%d", MAX_WRITERS);
    mkdir_or_die(dir);
    print_fs(dir);
    for (int i = 0; i < nw; i++) {
        char path[4200];
        uint32_t inbox;
        snprintf(path, sizeof(path), "%s/acct%d", dir, i);
        store_close(acct_open(path, 1, &inbox));
    }
    conc_shared *sh = mmap(NULL, sizeof(conc_shared), PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    conc_phase(dir, 1, 0, 0.2, sh); /* warm-up */
    conc_phase(dir, nw, 0, 0.2, sh);
    double one = 0, many = 0;
    for (int r = 0; r < rounds; r++) {
        double o, m;
        if (r % 2 == 0) {
            o = conc_phase(dir, 1, 0, secs, sh);
            m = conc_phase(dir, nw, 0, secs, sh);
        } else {
            m = conc_phase(dir, nw, 0, secs, sh);
            o = conc_phase(dir, 1, 0, secs, sh);
        }
        printf("  round %d: 1 writer %.0f/s, %d writers %.0f/s, ratio %.2f\n", r + 1, o, nw, m,
               m / o);
        one += o / rounds;
        many += m / rounds;
    }
    double ratio = many / one;
    int pass = ratio >= 3;
    printf("append_concurrent: %.0f/s (%d writers, %d accounts)  append_single: %.0f/s  "
           "ratio %.2f (goal >= 3) %s\n",
           many, nw, nw, one, ratio, pass ? "PASS" : "MISS");
    char fig[128], name[96];
    snprintf(fig, sizeof(fig), "%.0f/s vs 1 writer %.0f/s = %.2f", many, one, ratio);
    snprintf(name, sizeof(name), "2. append 4 KiB, %d writers / 1 writer", nw);
    summary(name, fig, ">= 3", pass);
    /* The same with bare write+fdatasync: how far the file system itself
     * lets concurrent syncs share a journal commit. */
    double r1 = conc_phase(dir, 1, 1, secs, sh), rn = conc_phase(dir, nw, 1, secs, sh);
    printf("raw_fdatasync_concurrent: %.0f/s (%d writers)  raw_fdatasync: %.0f/s  ratio %.2f "
           "(info: the file system's own scaling)\n",
           rn, nw, r1, rn / r1);
    munmap(sh, sizeof(conc_shared));
    return 0;
}

/* ---- 3-6. the big mailbox ---- */

static int bench_build(const char *acct)
{
    long n = opt.msgs ? opt.msgs : 180000;
    long batch = opt.batch ? opt.batch : 1000;
    size_t len = opt.size ? (size_t)opt.size : 2048;
    long distinct = opt.distinct < 0 ? 1000 : opt.distinct;
    uint32_t inbox;
    store_account *a = acct_open(acct, 1, &inbox);
    print_fs(acct);
    long have = inbox_count(a, inbox);
    if (have >= n) {
        printf("build: the account already holds %ld messages\n", have);
        store_close(a);
        return 0;
    }
    double t = build_batches(a, inbox, n - have, len, batch, distinct);
    char bodies[64] = "every body unique";
    if (distinct)
        snprintf(bodies, sizeof(bodies), "%ld distinct bodies", distinct);
    printf("build: %ld messages of %zu bytes (%s) in batches of %ld: %.1f s (%.0f "
           "messages/s)\n",
           n - have, len, bodies, batch, t, (double)(n - have) / t);
    store_close(a);
    return 0;
}

/* Times store_open+store_close; returns seconds. */
static double timed_open(const char *acct, uint64_t *replayed)
{
    store_stats s0, s1;
    store_get_stats(&s0);
    store_account *a;
    hv_err err = {0};
    double t0 = now();
    if (store_open(acct, "bench@haven.test", 0, NULL, &a, &err) < 0)
        die("open %s: %s", acct, err.msg);
    store_close(a);
    double t = now() - t0;
    store_get_stats(&s1);
    if (replayed)
        *replayed = s1.records_replayed - s0.records_replayed;
    return t;
}

static int bench_open(const char *acct)
{
    int reps = opt.rounds ? opt.rounds : 9;
    uint32_t inbox;
    store_account *a = acct_open(acct, 0, &inbox);
    uint32_t n = inbox_count(a, inbox);
    store_close(a);
    char ckpt[4200], logd[4200];
    snprintf(ckpt, sizeof(ckpt), "%s/index/index.ckpt", acct);
    snprintf(logd, sizeof(logd), "%s/log", acct);
    printf("mailbox: %u messages, index checkpoint %.1f MB, log %.1f MB\n", n,
           (double)file_size(ckpt) / 1e6, (double)du(logd) / 1e6);

    double warm[64], cold[64];
    if (reps > 64)
        reps = 64;
    uint64_t replayed = 0;
    timed_open(acct, NULL); /* caches hot, and any pending checkpoint written */
    for (int i = 0; i < reps; i++)
        warm[i] = timed_open(acct, &replayed);
    double resid = 0;
    int creps = reps < 5 ? reps : 5;
    for (int i = 0; i < creps; i++) {
        drop_cache(acct);
        resid += resident_fraction(ckpt) / creps;
        cold[i] = timed_open(acct, NULL);
    }
    double wmin = warm[0], wmax = warm[0];
    for (int i = 0; i < reps; i++) {
        wmin = warm[i] < wmin ? warm[i] : wmin;
        wmax = warm[i] > wmax ? warm[i] : wmax;
    }
    /* The machine's price of fresh memory, measured now: map, touch and
     * unmap as many bytes as the checkpoint holds (mmap, not malloc, which
     * may hand back pages it already has). An open that copies the index
     * into new memory pays at least this for each copy. */
    size_t clen = (size_t)file_size(ckpt);
    double touch[9];
    for (int i = 0; i < 9; i++) {
        double t0 = now();
        char *p = mmap(NULL, clen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap: %s", strerror(errno));
        memset(p, 1, clen);
        munmap(p, clen);
        touch[i] = now() - t0;
    }
    double tm = median(touch, 9) * 1e3;
    double wm = median(warm, reps) * 1e3, cm = median(cold, creps) * 1e3;
    int wpass = wm < 20, cpass = cm < 200;
    printf("open_warm: %.1f ms (median of %d, %.1f..%.1f; %llu tail records replayed) "
           "(goal < 20 ms) %s\n",
           wm, reps, wmin * 1e3, wmax * 1e3, (unsigned long long)replayed,
           wpass ? "PASS" : "MISS");
    char fig[128];
    snprintf(fig, sizeof(fig), "%.1f ms (%u msgs)", wm, n);
    summary("3a. warm open of the mailbox", fig, "< 20 ms", wpass);
    printf("open_cold: %.1f ms (median of %d; cache dropped with %s; checkpoint %.0f%% "
           "resident after the drop) (goal < 200 ms) %s\n",
           cm, creps, cache_method, resid * 100, cpass ? "PASS" : "MISS");
    snprintf(fig, sizeof(fig), "%.1f ms (%s)", cm,
             strcmp(cache_method, "drop_caches") == 0 ? "drop_caches" : "fadvise");
    summary("3b. cold open of the mailbox", fig, "< 200 ms", cpass);
    printf("  open_cold / open_warm %.1f\n", cm / wm);
    printf("  fresh memory: mmap+touch+munmap of %.1f MB takes %.1f ms here; open_warm is "
           "%.1f times that\n",
           (double)clen / 1e6, tm, wm / tm);
    /* How much of a cold open is the device: read the checkpoint alone,
     * cold, into memory that is already faulted in. */
    char *buf = malloc(clen ? clen : 1);
    memset(buf, 0, clen);
    drop_cache(acct);
    double t0 = now();
    int fd = open(ckpt, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fs_pread_full(fd, buf, clen, 0) != (ssize_t)clen)
        die("read %s: %s", ckpt, strerror(errno));
    close(fd);
    double tr = now() - t0;
    free(buf);
    printf("  cold read of the checkpoint alone: %.1f ms (%.0f MB/s)\n", tr * 1e3,
           (double)clen / 1e6 / tr);
    return 0;
}

static int bench_reconstruct(const char *acct)
{
    int reps = opt.rounds ? opt.rounds : 3;
    if (reps > 16)
        reps = 16;
    double t[16];
    uint64_t rebuilt = 0;
    for (int i = 0; i < reps; i++) {
        store_stats s0, s1;
        store_get_stats(&s0);
        hv_err err = {0};
        double t0 = now();
        if (store_reconstruct(acct, "bench@haven.test", &err) < 0)
            die("reconstruct %s: %s", acct, err.msg);
        t[i] = now() - t0;
        store_get_stats(&s1);
        rebuilt = s1.records_replayed - s0.records_replayed;
    }
    double warm = median(t, reps);
    drop_cache(acct);
    hv_err err = {0};
    double t0 = now();
    if (store_reconstruct(acct, "bench@haven.test", &err) < 0)
        die("reconstruct %s: %s", acct, err.msg);
    double cold = now() - t0;
    double worst = warm > cold ? warm : cold;
    int pass = worst < 3;
    printf("reconstruct: warm %.2f s (median of %d), cold %.2f s (%s); %llu records "
           "replayed (goal < 3 s) %s\n",
           warm, reps, cold, cache_method, (unsigned long long)rebuilt,
           pass ? "PASS" : "MISS");
    char fig[128];
    snprintf(fig, sizeof(fig), "warm %.2f s, cold %.2f s", warm, cold);
    summary("4. reconstruct of the mailbox", fig, "< 3 s", pass);
    return 0;
}

static long statm_resident(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &res) != 2)
        die("cannot read /proc/self/statm");
    fclose(f);
    return res * sysconf(_SC_PAGESIZE);
}

static int bench_rss(const char *acct)
{
    /* run.sh starts this as its own process: nothing of the store is
     * allocated before the first figure. */
    long before = statm_resident();
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    store_account *a;
    hv_err err = {0};
    if (store_open(acct, "bench@haven.test", 0, NULL, &a, &err) < 0)
        die("open %s: %s", acct, err.msg);
    long after = statm_resident();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    uint64_t n = 0;
    for (size_t i = 0; i < store_mailbox_count(a); i++) {
        store_mailbox_info mi;
        if (store_mailbox_at(a, i, &mi) == 0)
            n += mi.exists;
    }
    if (n == 0)
        die("%s holds no message", acct);
    double per = (double)(after - before) / (double)n;
    int pass = per < 100;
    printf("rss_per_message: %.1f bytes (%.1f MB resident for %llu messages) (goal < 100 "
           "bytes) %s\n",
           per, (double)(after - before) / 1e6, (unsigned long long)n, pass ? "PASS" : "MISS");
    printf("  peak during open: %.1f bytes per message (ru_maxrss %ld -> %ld KiB)\n",
           (double)(ru1.ru_maxrss - ru0.ru_maxrss) * 1024 / (double)n, ru0.ru_maxrss,
           ru1.ru_maxrss);
    char fig[128];
    snprintf(fig, sizeof(fig), "%.1f B/msg (%llu msgs)", per, (unsigned long long)n);
    summary("6. resident memory per message, open", fig, "< 100 B", pass);
    store_close(a);
    return 0;
}

/* ---- 5. reopen after SIGKILL ---- */

static int bench_crash(const char *acct)
{
    long n = opt.msgs ? opt.msgs : 1000;
    size_t len = opt.size ? (size_t)opt.size : 1024 * 1024;
    long batch = opt.batch ? opt.batch : 100;
    double kill_after = opt.kill_after ? opt.kill_after : 0.5;
    /* Writers checkpoint every 4096 records (the default), so a tail of
     * 3500 plus what the killed writer adds is close to the longest tail
     * a default store ever replays. */
    long tail = opt.tail ? opt.tail : 3500;
    uint32_t inbox;
    store_account *a = acct_open(acct, 1, &inbox);
    print_fs(acct);
    long have = inbox_count(a, inbox);
    if (have < n) {
        double t = build_batches(a, inbox, n - have, len, batch, 0);
        printf("build: %ld messages of %zu bytes in batches of %ld: %.1f s (%.0f MB/s)\n",
               n - have, len, batch, t, (double)(n - have) * (double)len / 1e6 / t);
    }
    /* A checkpoint, then a known tail of small messages (ten distinct
     * bodies: records, not files, are what the reopen replays). */
    hv_err cerr = {0};
    if (store_checkpoint(a, &cerr) < 0)
        die("checkpoint: %s", cerr.msg);
    build_batches(a, inbox, tail, 4096, 1000, 10);
    store_close(a);

    /* A writer that keeps appending, killed mid-way: usually inside a sync
     * or a blob write, now and then inside the log write itself. */
    int ready[2];
    if (pipe(ready) < 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        uint32_t ib;
        store_account *c = acct_open(acct, 0, &ib);
        char *m = malloc(len);
        append_one(c, ib, m, len);
        char ch = 'r';
        if (write(ready[1], &ch, 1) != 1)
            _exit(2);
        for (;;)
            append_one(c, ib, m, len);
    }
    close(ready[1]);
    char ch;
    if (read(ready[0], &ch, 1) != 1)
        die("the appending child died before its first append");
    close(ready[0]);
    struct timespec ts = {(time_t)kill_after,
                          (long)((kill_after - (double)(time_t)kill_after) * 1e9)};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);

    store_stats s0, s1;
    store_get_stats(&s0);
    store_account *b;
    hv_err err = {0};
    double t0 = now();
    if (store_open(acct, "bench@haven.test", 0, NULL, &b, &err) < 0)
        die("reopen %s after SIGKILL: %s", acct, err.msg);
    double t = now() - t0;
    store_get_stats(&s1);
    uint32_t msgs = inbox_count(b, inbox);
    store_close(b);

    drop_cache(acct);
    double tc = timed_open(acct, NULL);

    uint64_t size = du(acct);
    char logd[4200];
    snprintf(logd, sizeof(logd), "%s/log", acct);
    double worst = t > tc ? t : tc;
    int pass = worst < 1;
    uint64_t replayed = s1.records_replayed - s0.records_replayed;
    printf("reopen_after_sigkill: %.1f ms (%.2f GB account, %u messages, log %.1f MB; "
           "%llu tail records replayed, %.1f us each; %llu torn tail cut) cold %.1f ms (%s) "
           "(goal < 1 s) %s\n",
           t * 1e3, (double)size / 1e9, msgs, (double)du(logd) / 1e6,
           (unsigned long long)replayed, replayed ? t * 1e6 / (double)replayed : 0,
           (unsigned long long)(s1.tail_truncations - s0.tail_truncations), tc * 1e3,
           cache_method, pass ? "PASS" : "MISS");
    /* The contrast: a replay of the whole log, what an open would cost if it
     * were proportional to the account's history. */
    hv_err rerr = {0};
    double t1 = now();
    if (store_reconstruct(acct, "bench@haven.test", &rerr) < 0)
        die("reconstruct %s: %s", acct, rerr.msg);
    printf("  full replay of the same log (store_reconstruct): %.1f ms\n", (now() - t1) * 1e3);
    char fig[128], name[96];
    snprintf(fig, sizeof(fig), "%.1f ms, cold %.1f ms", t * 1e3, tc * 1e3);
    snprintf(name, sizeof(name), "5. reopen after SIGKILL, %.2f GB account", (double)size / 1e9);
    summary(name, fig, "< 1 s", pass);
    return 0;
}

/* ---- main ---- */

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
    fprintf(stderr,
            "usage: store_bench [-t secs] [-r rounds] [-n msgs] [-s bytes] [-b batch]\n"
            "                   [-w writers] [-k secs] [-u distinct] [-T tail] SUB DIR\n"
            "SUB: append | concurrent | build | open | reconstruct | rss | crash\n"
            "See bench/store/run.sh and docs/bench-store.md.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int c;
    opt.distinct = -1;
    while ((c = getopt(argc, argv, "t:r:n:s:b:w:k:u:T:")) != -1) {
        switch (c) {
        case 't': opt.secs = atof(optarg); break;
        case 'r': opt.rounds = atoi(optarg); break;
        case 'n': opt.msgs = atol(optarg); break;
        case 's': opt.size = atol(optarg); break;
        case 'b': opt.batch = atol(optarg); break;
        case 'w': opt.writers = atoi(optarg); break;
        case 'k': opt.kill_after = atof(optarg); break;
        case 'u': opt.distinct = atol(optarg); break;
        case 'T': opt.tail = atol(optarg); break;
        default: usage();
        }
    }
    if (argc - optind != 2)
        usage();
    const char *sub = argv[optind], *dir = argv[optind + 1];
    /* The crash test makes the store warn about the torn tail it cuts and
     * the temp blob it removes; that is expected, not news. */
    log_init("store_bench", 0, LOG_LVL_ERROR);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(sub, "append") == 0)
        return bench_append(dir);
    if (strcmp(sub, "concurrent") == 0)
        return bench_concurrent(dir);
    if (strcmp(sub, "build") == 0)
        return bench_build(dir);
    if (strcmp(sub, "open") == 0)
        return bench_open(dir);
    if (strcmp(sub, "reconstruct") == 0)
        return bench_reconstruct(dir);
    if (strcmp(sub, "rss") == 0)
        return bench_rss(dir);
    if (strcmp(sub, "crash") == 0)
        return bench_crash(dir);
    usage();
}
