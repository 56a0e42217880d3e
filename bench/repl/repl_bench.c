/*
 * repl_bench.c - load and measurements for bench/repl/run.sh.
 *
 * Works on the stores of a running primary and replica (two havend
 * instances on one machine), as a delivery process would: it appends to the
 * primary's account stores with the store API, and watches the replica's
 * stores (inotify on the account's log folder) to see when a change has
 * arrived there and is durable.
 *
 *   repl_bench lag PRIMARY_DATA REPLICA_DATA ACCOUNTS COUNT RATE
 *       COUNT single appends of 4 KiB, RATE per second, round-robin over
 *       ACCOUNTS accounts; for each, the time from the primary's commit
 *       until the replica's log holds that modseq. Prints p50/p99/max ms.
 *   repl_bench throughput CONF WRITERS SECONDS ROUNDS
 *       WRITERS threads, each appending 4 KiB messages to its own account
 *       on the primary of CONF, in ROUNDS pairs of phases of SECONDS: one
 *       where each append is followed by repl_sync_wait (as a writer in
 *       sync mode does: it waits for the replicas' acks), one without
 *       (async). Prints messages/s of each and the sync/async ratio (the
 *       median of the rounds': the load of a shared machine changes).
 *   repl_bench fill DATA ACCOUNT BYTES MSGSIZE
 *       Creates ACCOUNT with BYTES of messages of MSGSIZE in batches.
 *   repl_bench diskbw DIR BYTES EVERY
 *       Sequential write of BYTES into one file in 1 MiB writes, with an
 *       fdatasync every EVERY bytes (0: only at the end): MB/s.
 *   repl_bench diskfiles DIR BYTES SIZE EVERY
 *       BYTES as files of SIZE, written as the replica writes a backlog's
 *       blobs (temp file, rename, writeback started, a syncfs every EVERY
 *       bytes): MB/s. The files are left for the caller to remove.
 *   repl_bench syncwrite CONF ACCOUNT COUNT
 *       COUNT appends to ACCOUNT on the primary of CONF, each followed by
 *       repl_sync_wait as a writer in sync mode does; prints how many were
 *       acknowledged by the replicas, acknowledged degraded (async), and
 *       refused (tests/integration/test_repl_sync.py uses it).
 *   repl_bench catchup REPLICA_DATA ACCOUNT MODSEQ
 *       Waits until the replica's ACCOUNT reaches MODSEQ, printing
 *       progress every 5 s; prints the elapsed seconds, in all and from
 *       the moment the account appeared on the replica (without the start
 *       of the replica's havend and the handshake).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/conf.h"
#include "repl/repl_sync.h"
#include "store/store.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const hv_err *err)
{
    fprintf(stderr, "repl_bench: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static char *message(size_t size, unsigned n)
{
    char *m = malloc(size);
    int h = snprintf(m, size, "From: bench@example.net\r\nSubject: bench %u\r\n\r\n", n);
    for (size_t i = (size_t)h; i < size; i++)
        m[i] = (i % 78 == 77) ? '\n' : (char)('a' + (i + n) % 26);
    if (size >= 2) {
        m[size - 2] = '\r';
        m[size - 1] = '\n';
    }
    return m;
}

static store_account *open_acct(const char *data, const char *name, int flags, uint32_t *inbox)
{
    char dir[4400];
    hv_err err = {0};
    store_account *a;
    if (store_account_dir(data, name, dir, sizeof(dir), &err) < 0 ||
        store_open(dir, name, flags, NULL, &a, &err) < 0)
        die(name, &err);
    if (inbox) {
        store_mailbox_info mi;
        if (store_mailbox_find(a, "INBOX", &mi) == 0)
            *inbox = mi.id;
        else if (store_mailbox_create(a, "INBOX", 0, inbox, &err) < 0)
            die("create INBOX", &err);
    }
    return a;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double appeared; /* when wait_replica first found the account there */

/* Waits until the replica's account exists and reaches modseq. */
static void wait_replica(const char *data, const char *name, store_account **rp, int ifd,
                         int *wd, uint64_t modseq)
{
    hv_err err = {0};
    for (;;) {
        if (!*rp) {
            char dir[4400], logdir[4500];
            store_account_dir(data, name, dir, sizeof(dir), &err);
            snprintf(logdir, sizeof(logdir), "%s/log", dir);
            if (*wd < 0)
                *wd = inotify_add_watch(ifd, logdir, IN_MODIFY | IN_CREATE);
            struct stat st;
            if (*wd >= 0 && stat(dir, &st) == 0 &&
                store_open(dir, name, STORE_OPEN_READONLY, NULL, rp, &err) < 0)
                *rp = NULL;
            if (*rp && !appeared)
                appeared = now_s();
        }
        if (*rp) {
            if (store_refresh(*rp, &err) < 0)
                die("refresh replica", &err);
            if (store_highest_modseq(*rp) >= modseq)
                return;
        }
        struct pollfd p = {.fd = ifd, .events = POLLIN};
        poll(&p, 1, *wd >= 0 ? 100 : 20);
        char evbuf[4096];
        while (read(ifd, evbuf, sizeof(evbuf)) > 0)
            ;
    }
}

static int cmd_lag(int argc, char **argv)
{
    if (argc != 7)
        return 2;
    const char *pd = argv[2], *rd = argv[3];
    int naccts = atoi(argv[4]), count = atoi(argv[5]);
    double rate = atof(argv[6]);
    store_account **pa = calloc((size_t)naccts, sizeof(*pa)), **ra = calloc((size_t)naccts, sizeof(*ra));
    uint32_t *inbox = calloc((size_t)naccts, sizeof(*inbox));
    int *wd = malloc((size_t)naccts * sizeof(int));
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    char name[64];
    for (int i = 0; i < naccts; i++) {
        snprintf(name, sizeof(name), "lag%d@bench.example", i);
        pa[i] = open_acct(pd, name, STORE_OPEN_CREATE, &inbox[i]);
        wd[i] = -1;
        wait_replica(rd, name, &ra[i], ifd, &wd[i], store_highest_modseq(pa[i]));
    }
    double *lat = malloc((size_t)count * sizeof(double));
    char *msg = message(4096, 1);
    double start = now_s();
    hv_err err = {0};
    for (int n = 0; n < count; n++) {
        double due = start + n / rate;
        double t = now_s();
        if (due > t)
            usleep((useconds_t)((due - t) * 1e6));
        int i = n % naccts;
        snprintf(name, sizeof(name), "lag%d@bench.example", i);
        if (store_append(pa[i], inbox[i], msg, 4096, 0, time(NULL), NULL, &err) < 0)
            die("append", &err);
        double t0 = now_s();
        wait_replica(rd, name, &ra[i], ifd, &wd[i], store_highest_modseq(pa[i]));
        lat[n] = (now_s() - t0) * 1000.0;
    }
    qsort(lat, (size_t)count, sizeof(double), cmp_d);
    printf("lag_ms p50=%.2f p99=%.2f max=%.2f count=%d rate=%.0f accounts=%d\n",
           lat[count / 2], lat[(int)(count * 0.99)], lat[count - 1], count, rate, naccts);
    return 0;
}

/* The throughput run: WRITERS threads, each on its own account, in
 * phases that alternate async (append only) and sync (append, then
 * repl_sync_wait). The machine's load changes from second to second, so
 * short alternating phases compare the two under the same conditions. */
typedef struct tput_arg {
    const conf *c;
    int id;
    const char *data;
    pthread_mutex_t *mu;
    const int *phase;      /* -1 stop, else the phase number; odd phases are sync */
    uint64_t *done;        /* per phase */
} tput_arg;

static void *tput_main(void *p)
{
    tput_arg *t = p;
    char name[64];
    snprintf(name, sizeof(name), "tput%d@bench.example", t->id);
    uint32_t inbox;
    store_account *a = open_acct(t->data, name, STORE_OPEN_CREATE, &inbox);
    repl_sync *rs = NULL;
    hv_err err = {0};
    if (repl_sync_open(t->c, &rs, &err) < 0 || !rs)
        die("sync mode is not configured for this instance", &err);
    char *msg = message(4096, (unsigned)t->id);
    for (;;) {
        pthread_mutex_lock(t->mu);
        int ph = *t->phase;
        pthread_mutex_unlock(t->mu);
        if (ph < 0)
            break;
        if (store_append(a, inbox, msg, 4096, 0, time(NULL), NULL, &err) < 0)
            die("append", &err);
        int degraded = 0;
        if ((ph & 1) && repl_sync_wait(rs, name, store_highest_modseq(a), &degraded, &err) < 0)
            die("sync wait", &err);
        if (degraded) {
            fprintf(stderr, "repl_bench: replication degraded during the sync run\n");
            exit(1);
        }
        pthread_mutex_lock(t->mu);
        /* An append that straddles a phase change counts for neither. */
        if (*t->phase == ph)
            t->done[ph]++;
        pthread_mutex_unlock(t->mu);
    }
    repl_sync_close(rs);
    store_close(a);
    free(msg);
    return NULL;
}

static int cmd_throughput(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    conf *c;
    hv_err err = {0};
    if (conf_load(argv[2], &c, &err) < 0)
        die("config", &err);
    char data[4096];
    conf_path(c, "data_dir", data, sizeof(data));
    int writers = atoi(argv[3]), rounds = atoi(argv[5]);
    double secs = atof(argv[4]);
    if (writers < 1 || rounds < 1 || rounds > 100 || secs <= 0)
        return 2;
    int nph = 2 * rounds + 1, phase = 0;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    tput_arg *ta = calloc((size_t)writers, sizeof(*ta));
    pthread_t *th = calloc((size_t)writers, sizeof(*th));
    for (int i = 0; i < writers; i++) {
        ta[i] = (tput_arg){.c = c, .id = i, .data = data, .mu = &mu,
                           .phase = &phase, .done = calloc((size_t)nph, sizeof(uint64_t))};
        pthread_create(&th[i], NULL, tput_main, &ta[i]);
    }
    /* Phase 0 warms up (accounts created, links streaming); then async and
     * sync take turns. */
    double *el = calloc((size_t)nph, sizeof(double));
    for (int ph = 0; ph < nph; ph++) {
        double t0 = now_s();
        usleep((useconds_t)((ph ? secs : 1.0) * 1e6));
        pthread_mutex_lock(&mu);
        phase = ph + 1 < nph ? ph + 1 : -1;
        pthread_mutex_unlock(&mu);
        el[ph] = now_s() - t0;
    }
    /* Round r: phase 2r+1 sync, 2r+2 async. */
    double sum_sync = 0, sum_async = 0, *ratio = calloc((size_t)rounds, sizeof(double));
    for (int r = 0; r < rounds; r++) {
        uint64_t ns = 0, na = 0;
        for (int i = 0; i < writers; i++) {
            ns += ta[i].done[2 * r + 1];
            na += ta[i].done[2 * r + 2];
        }
        double rs = (double)ns / el[2 * r + 1], ra = (double)na / el[2 * r + 2];
        sum_sync += rs;
        sum_async += ra;
        ratio[r] = ra > 0 ? rs / ra : 0;
    }
    for (int i = 0; i < writers; i++)
        pthread_join(th[i], NULL);
    qsort(ratio, (size_t)rounds, sizeof(double), cmp_d);
    printf("throughput writers=%d rounds=%d seconds=%.1f async_msgs_per_s=%.0f "
           "sync_msgs_per_s=%.0f ratio_median=%.2f ratio_min=%.2f ratio_max=%.2f\n", writers,
           rounds, secs, sum_async / rounds, sum_sync / rounds, ratio[rounds / 2], ratio[0],
           ratio[rounds - 1]);
    conf_free(c);
    return 0;
}

static int cmd_fill(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    uint64_t bytes = strtoull(argv[4], NULL, 10);
    size_t size = (size_t)strtoull(argv[5], NULL, 10);
    uint32_t inbox;
    store_account *a = open_acct(argv[2], argv[3], STORE_OPEN_CREATE, &inbox);
    hv_err err = {0};
    unsigned n = 0;
    char *msg = message(size, 0);
    for (uint64_t done = 0; done < bytes;) {
        store_batch *b;
        if (store_batch_begin(a, &b, &err) < 0)
            die("batch", &err);
        for (int k = 0; k < 256 && done < bytes; k++, n++, done += size) {
            /* Distinct bodies: blobs are content-addressed. */
            snprintf(msg + 32, 16, "%010u", n);
            msg[42] = ' ';
            if (store_batch_add(b, inbox, msg, size, 0, time(NULL), NULL, &err) < 0)
                die("batch add", &err);
        }
        if (store_batch_commit(b, &err) < 0)
            die("commit", &err);
    }
    printf("fill account=%s messages=%u bytes=%llu modseq=%llu\n", argv[3], n,
           (unsigned long long)bytes, (unsigned long long)store_highest_modseq(a));
    store_close(a);
    return 0;
}

static int cmd_diskbw(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    char path[4200];
    snprintf(path, sizeof(path), "%s/diskbw.tmp", argv[2]);
    uint64_t bytes = strtoull(argv[3], NULL, 10), every = strtoull(argv[4], NULL, 10);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(path, NULL);
    char *blk = malloc(1 << 20);
    memset(blk, 'x', 1 << 20);
    double t0 = now_s();
    uint64_t since = 0;
    for (uint64_t done = 0; done < bytes; done += 1 << 20) {
        if (write(fd, blk, 1 << 20) != 1 << 20)
            die("write", NULL);
        since += 1 << 20;
        if (every && since >= every) {
            fdatasync(fd);
            since = 0;
        }
    }
    fdatasync(fd);
    double el = now_s() - t0;
    close(fd);
    unlink(path);
    free(blk);
    printf("diskbw bytes=%llu sync_every=%llu MBps=%.1f\n", (unsigned long long)bytes,
           (unsigned long long)every, (double)bytes / el / 1e6);
    return 0;
}

/* The replica's own pattern for a backlog of blobs: one file per message
 * (written in a temp folder, renamed into one of 256 fan-out folders),
 * writeback started at once, a syncfs every EVERY bytes. */
static int cmd_diskfiles(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    uint64_t bytes = strtoull(argv[3], NULL, 10), size = strtoull(argv[4], NULL, 10),
             every = strtoull(argv[5], NULL, 10);
    char dir[4200], p[4400], tmp[4400];
    snprintf(dir, sizeof(dir), "%s/diskfiles.tmp", argv[2]);
    if (mkdir(dir, 0700) < 0)
        die(dir, NULL);
    snprintf(p, sizeof(p), "%s/tmp", dir);
    mkdir(p, 0700);
    for (int i = 0; i < 256; i++) {
        snprintf(p, sizeof(p), "%s/%02x", dir, i);
        mkdir(p, 0700);
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *blk = malloc(size);
    memset(blk, 'x', size);
    double t0 = now_s();
    uint64_t since = 0, n = 0;
    for (uint64_t done = 0; done < bytes; done += size, n++) {
        snprintf(tmp, sizeof(tmp), "%s/tmp/%llu", dir, (unsigned long long)n);
        snprintf(p, sizeof(p), "%s/%02x/%llu", dir, (unsigned)(n * 2654435761u >> 24) & 255,
                 (unsigned long long)n);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, blk, size) != (ssize_t)size)
            die("write", NULL);
        close(fd);
        if (rename(tmp, p) < 0)
            die("rename", NULL);
        fd = open(p, O_RDONLY | O_CLOEXEC);
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        close(fd);
        since += size;
        if (since >= every) {
            syncfs(dfd);
            since = 0;
        }
    }
    syncfs(dfd);
    double el = now_s() - t0;
    close(dfd);
    free(blk);
    printf("diskfiles bytes=%llu files=%llu MBps=%.1f\n", (unsigned long long)bytes,
           (unsigned long long)n, (double)bytes / el / 1e6);
    return 0;
}

static int cmd_catchup(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    uint64_t modseq = strtoull(argv[4], NULL, 10);
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    store_account *ra = NULL;
    int wd = -1;
    double t0 = now_s(), last = t0;
    /* Progress while waiting: one step per 5 s. */
    for (;;) {
        uint64_t have = 0;
        if (ra) {
            hv_err err = {0};
            store_refresh(ra, &err);
            have = store_highest_modseq(ra);
        }
        if (have >= modseq)
            break;
        if (now_s() - last >= 5) {
            last = now_s();
            fprintf(stderr, "catchup %s: modseq %llu of %llu after %.0f s\n", argv[3],
                    (unsigned long long)have, (unsigned long long)modseq, last - t0);
        }
        wait_replica(argv[2], argv[3], &ra, ifd, &wd, have + 1);
    }
    double end = now_s();
    printf("catchup account=%s modseq=%llu seconds=%.2f stream_seconds=%.2f\n", argv[3],
           (unsigned long long)modseq, end - t0, end - (appeared ? appeared : t0));
    return 0;
}

static int cmd_syncwrite(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    conf *c;
    hv_err err = {0};
    if (conf_load(argv[2], &c, &err) < 0)
        die("config", &err);
    char data[4096];
    conf_path(c, "data_dir", data, sizeof(data));
    uint32_t inbox;
    store_account *a = open_acct(data, argv[3], STORE_OPEN_CREATE, &inbox);
    repl_sync *rs;
    if (repl_sync_open(c, &rs, &err) < 0 || !rs)
        die("sync mode is not configured", &err);
    int count = atoi(argv[4]), ok = 0, degraded = 0, refused = 0;
    char *msg = message(2048, 7);
    for (int i = 0; i < count; i++) {
        if (store_append(a, inbox, msg, 2048, 0, time(NULL), NULL, &err) < 0)
            die("append", &err);
        int d = 0;
        hv_err e2 = {0};
        if (repl_sync_wait(rs, argv[3], store_highest_modseq(a), &d, &e2) < 0) {
            refused++;
            if (refused == 1)
                fprintf(stderr, "refused: %s\n", e2.msg);
        } else if (d) {
            degraded++;
        } else {
            ok++;
        }
    }
    printf("syncwrite ok=%d degraded=%d refused=%d modseq=%llu\n", ok, degraded, refused,
           (unsigned long long)store_highest_modseq(a));
    repl_sync_close(rs);
    store_close(a);
    conf_free(c);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc >= 2 && strcmp(argv[1], "lag") == 0)
        rc = cmd_lag(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "throughput") == 0)
        rc = cmd_throughput(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "fill") == 0)
        rc = cmd_fill(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "diskbw") == 0)
        rc = cmd_diskbw(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "diskfiles") == 0)
        rc = cmd_diskfiles(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "syncwrite") == 0)
        rc = cmd_syncwrite(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "catchup") == 0)
        rc = cmd_catchup(argc, argv);
    if (rc == 2)
        fprintf(stderr, "usage: see the comment at the top of bench/repl/repl_bench.c\n");
    return rc;
}
