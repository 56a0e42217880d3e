/*
 * haven_move.c - `haven move`: moving accounts between stores while their
 * owners use them (docs/move.md).
 *
 *   haven move ACCOUNT --to STORE     one account (repl_move_account)
 *   haven move --from S --to T        evacuate store S: every account on it,
 *                                     --slots N at a time, never two of one
 *                                     slot (the account's virtual server)
 *   haven move --status               the moves this node has run
 *
 * Runs on the node of the source store: the mover reads the account's log
 * there and streams it to the target's repl service. An evacuation takes
 * accounts whose owners tried to log in first (they are waiting), then
 * smaller before larger (more accounts done sooner), and keeps its
 * progress in DATA/moves/evacuate-S-T.state. It needs no state of its own
 * to resume: the directory says which accounts are still on S, and a move
 * cut short goes on from what the target holds.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "repl/repl.h"

#define MAX_SLOTS 64

typedef struct evac_item {
    char address[DIR_ADDRESS_MAX + 1];
    int64_t last_login_attempt;
    uint64_t bytes;
    enum dir_state state;
    uint32_t slot;  /* the account's "virtual server": one move per slot at a time */
    int taken;
} evac_item;

typedef struct evac {
    const conf *c;
    const char *from, *to;
    evac_item *items;
    size_t n, cap, next;
    unsigned slots;
    int verbose;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t busy_slots[MAX_SLOTS];
    unsigned nbusy;
    size_t done, failed, skipped;
    uint64_t bytes_total, bytes_done;
    int64_t started;
    char state_path[4400];
} evac;

static int collect_cb(void *ctx, const dir_account *a)
{
    evac *e = ctx;
    if (strcmp(a->store, e->from) != 0)
        return 0;
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 64;
        e->items = realloc(e->items, e->cap * sizeof(*e->items));
        if (!e->items)
            return -ENOMEM;
    }
    evac_item *it = &e->items[e->n++];
    snprintf(it->address, sizeof(it->address), "%s", a->address);
    it->last_login_attempt = a->last_login_attempt;
    it->state = a->state;
    it->slot = a->slot;
    it->taken = 0;
    it->bytes = 0;
    return 0;
}

/* Waiting owners first (most recent attempt first), then small before
 * large, then by name so the order is stable across restarts. */
static int item_cmp(const void *pa, const void *pb)
{
    const evac_item *a = pa, *b = pb;
    if (a->last_login_attempt != b->last_login_attempt)
        return a->last_login_attempt > b->last_login_attempt ? -1 : 1;
    if (a->bytes != b->bytes)
        return a->bytes < b->bytes ? -1 : 1;
    return strcmp(a->address, b->address);
}

static void evac_state_write(evac *e)
{
    int64_t now = time(NULL), el = now - e->started;
    long long eta = -1;
    if (e->bytes_done > 0 && e->bytes_total > e->bytes_done && el > 0)
        eta = (long long)((double)(e->bytes_total - e->bytes_done) * (double)el /
                          (double)e->bytes_done);
    else if (e->bytes_done >= e->bytes_total)
        eta = 0;
    char text[1024];
    int n = snprintf(text, sizeof(text),
                     "from=%s\nto=%s\nslots=%u\naccounts_total=%zu\naccounts_done=%zu\n"
                     "accounts_failed=%zu\naccounts_skipped=%zu\nbytes_total=%llu\n"
                     "bytes_done=%llu\nstarted=%lld\nupdated=%lld\neta_s=%lld\n",
                     e->from, e->to, e->slots, e->n, e->done, e->failed, e->skipped,
                     (unsigned long long)e->bytes_total, (unsigned long long)e->bytes_done,
                     (long long)e->started, (long long)now, eta);
    hv_err err = {0};
    if (fs_write_file_atomic(e->state_path, text, (size_t)n, 0644, &err) < 0)
        fprintf(stderr, "haven: move: cannot write %s: %s\n", e->state_path, err.msg);
}

static void *evac_worker(void *arg)
{
    evac *e = arg;
    for (;;) {
        /* The first account in priority order whose slot no other worker
         * is moving now (DESIGN.md: one account at a time per slot). */
        pthread_mutex_lock(&e->mu);
        evac_item *it = NULL;
        for (;;) {
            while (e->next < e->n && e->items[e->next].taken)
                e->next++;
            if (e->next >= e->n)
                break;
            for (size_t i = e->next; i < e->n && !it; i++) {
                if (e->items[i].taken)
                    continue;
                int busy = 0;
                for (unsigned k = 0; k < e->nbusy; k++)
                    busy |= e->busy_slots[k] == e->items[i].slot;
                if (!busy)
                    it = &e->items[i];
            }
            if (it)
                break;
            pthread_cond_wait(&e->cv, &e->mu);
        }
        if (!it) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        it->taken = 1;
        e->busy_slots[e->nbusy++] = it->slot;
        pthread_mutex_unlock(&e->mu);
        int skip = it->state != DIR_STATE_ACTIVE && it->state != DIR_STATE_MOVING;
        repl_move_opts o = {.account = it->address, .to = e->to, .verbose = e->verbose};
        repl_move_result r;
        hv_err err = {0};
        int rc = skip ? 0 : repl_move_account(e->c, &o, &r, &err);
        pthread_mutex_lock(&e->mu);
        if (skip) {
            e->skipped++;
            printf("skipped %s state=%s (only active accounts move)\n", it->address,
                   dir_state_name(it->state));
        } else if (rc < 0) {
            e->failed++;
            printf("failed %s reason=\"%s\"\n", it->address, err.msg);
        } else {
            e->done++;
            printf("moved %s bytes=%llu records=%llu rounds=%d freeze_ms=%lld total_ms=%lld\n",
                   it->address, (unsigned long long)r.bytes_sent,
                   (unsigned long long)r.records_sent, r.rounds, (long long)r.freeze_ms,
                   (long long)r.total_ms);
        }
        e->bytes_done += it->bytes;
        for (unsigned k = 0; k < e->nbusy; k++)
            if (e->busy_slots[k] == it->slot) {
                e->busy_slots[k] = e->busy_slots[--e->nbusy];
                break;
            }
        pthread_cond_broadcast(&e->cv);
        fflush(stdout);
        evac_state_write(e);
        pthread_mutex_unlock(&e->mu);
    }
}

static int evacuate(haven_ctx *ctx, const char *from, const char *to, unsigned slots,
                    int verbose)
{
    const conf *c = ctx->conf;
    if (strcmp(from, conf_get(c, "store_name")) != 0)
        return cmd_fail("move: this node serves store '%s'; run the evacuation of '%s' with the "
                        "config of %s's node", conf_get(c, "store_name"), from, from);
    if (strcmp(from, to) == 0)
        return cmd_fail("move: --from and --to name the same store");
    evac e = {.c = c, .from = from, .to = to, .slots = slots, .verbose = verbose};
    pthread_mutex_init(&e.mu, NULL);
    pthread_cond_init(&e.cv, NULL);
    hv_err err = {0};
    dir *d;
    if (dir_open_conf(c, &d, &err) < 0)
        return cmd_fail("move: %s", err.msg);
    dir_store ts;
    int rc = dir_store_get(d, to, &ts, &err);
    if (rc == 0)
        rc = dir_account_list(d, NULL, collect_cb, &e, &err);
    dir_close(d);
    if (rc < 0) {
        free(e.items);
        return cmd_fail("move: %s", err.msg);
    }
    for (size_t i = 0; i < e.n; i++) {
        e.items[i].bytes = repl_move_account_bytes(c, e.items[i].address);
        e.bytes_total += e.items[i].bytes;
    }
    qsort(e.items, e.n, sizeof(*e.items), item_cmp);
    char data[4096];
    conf_path(c, "data_dir", data, sizeof(data));
    snprintf(e.state_path, sizeof(e.state_path), "%s/moves", data);
    if (fs_mkdir_p(e.state_path, 0755, &err) < 0)
        return cmd_fail("move: %s", err.msg);
    snprintf(e.state_path, sizeof(e.state_path), "%s/moves/evacuate-%s-%s.state", data, from,
             to);
    e.started = time(NULL);
    printf("evacuating store %s to %s: %zu accounts, %llu bytes, %u slots\n", from, to, e.n,
           (unsigned long long)e.bytes_total, slots);
    fflush(stdout);
    evac_state_write(&e);
    unsigned nt = slots < e.n ? slots : (unsigned)e.n;
    pthread_t th[MAX_SLOTS];
    for (unsigned i = 0; i < nt; i++)
        pthread_create(&th[i], NULL, evac_worker, &e);
    for (unsigned i = 0; i < nt; i++)
        pthread_join(th[i], NULL);
    evac_state_write(&e);
    printf("summary: accounts=%zu moved=%zu failed=%zu skipped=%zu seconds=%lld\n", e.n, e.done,
           e.failed, e.skipped, (long long)(time(NULL) - e.started));
    free(e.items);
    pthread_mutex_destroy(&e.mu);
    pthread_cond_destroy(&e.cv);
    return e.failed ? 1 : 0;
}

static int show_status(haven_ctx *ctx)
{
    char data[4096], path[4400];
    conf_path(ctx->conf, "data_dir", data, sizeof(data));
    snprintf(path, sizeof(path), "%s/moves", data);
    DIR *dd = opendir(path);
    if (!dd) {
        printf("no moves have run on this node\n");
        return 0;
    }
    struct dirent *de;
    while ((de = readdir(dd))) {
        size_t n = strlen(de->d_name);
        int is_move = n > 5 && strcmp(de->d_name + n - 5, ".move") == 0;
        int is_evac = n > 6 && strcmp(de->d_name + n - 6, ".state") == 0;
        if (!is_move && !is_evac)
            continue;
        char fp[4700];
        snprintf(fp, sizeof(fp), "%s/%s", path, de->d_name);
        char *text;
        size_t len;
        hv_err err = {0};
        if (fs_read_file(fp, &text, &len, &err) < 0)
            continue;
        /* One line per file: its key=value pairs side by side. */
        printf("%s", is_evac ? "evacuation" : "move");
        for (char *p = text; *p;) {
            size_t l = strcspn(p, "\n");
            if (l && !(l > 7 && strncmp(p, "reason=", 7) == 0 && l == 7))
                printf(" %.*s", (int)l, p);
            p += l + (p[l] == '\n');
        }
        printf("\n");
        free(text);
    }
    closedir(dd);
    return 0;
}

int cmd_move(haven_ctx *ctx, int argc, char **argv)
{
    const char *account = NULL, *from = NULL, *to = NULL;
    unsigned slots = 1;
    int verbose = 0, status = 0;
    uint64_t freeze_records = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            to = argv[++i];
        else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
            from = argv[++i];
        else if (strcmp(argv[i], "--slots") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > MAX_SLOTS) {
                fprintf(stderr, "haven: move: --slots takes 1 to %d\n", MAX_SLOTS);
                return 2;
            }
            slots = (unsigned)v;
        } else if (strcmp(argv[i], "--freeze-records") == 0 && i + 1 < argc) {
            char *end;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (*end || v < 1) {
                fprintf(stderr, "haven: move: --freeze-records takes a positive number\n");
                return 2;
            }
            freeze_records = v;
        } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
            verbose = 1;
        else if (strcmp(argv[i], "--status") == 0)
            status = 1;
        else if (argv[i][0] != '-' && !account)
            account = argv[i];
        else {
            fprintf(stderr, "haven: move: unexpected '%s' (usage: move ACCOUNT --to STORE | "
                    "move --from STORE --to STORE [--slots N] | move --status)\n", argv[i]);
            return 2;
        }
    }
    if (status)
        return show_status(ctx);
    if (!to || (account && from) || (!account && !from)) {
        fprintf(stderr, "haven: move: give ACCOUNT --to STORE, or --from STORE --to STORE\n");
        return 2;
    }
    hv_err err = {0};
    char tn[DIR_STORE_NAME_MAX + 1], fn[DIR_STORE_NAME_MAX + 1];
    if (dir_store_name_normalize(to, tn, &err) < 0)
        return cmd_fail("move: %s", err.msg);
    if (from) {
        if (dir_store_name_normalize(from, fn, &err) < 0)
            return cmd_fail("move: %s", err.msg);
        return evacuate(ctx, fn, tn, slots, verbose);
    }
    char norm[DIR_ADDRESS_MAX + 1];
    if (dir_address_normalize(account, norm, &err) < 0)
        return cmd_fail("move: %s", err.msg);
    repl_move_opts o = {.account = norm, .to = tn, .freeze_records = freeze_records,
                        .verbose = verbose};
    repl_move_result r;
    if (repl_move_account(ctx->conf, &o, &r, &err) < 0)
        return cmd_fail("move: %s: %s", norm, err.msg);
    if (r.already)
        printf("%s is on store %s already\n", norm, tn);
    else
        printf("moved %s to %s: modseq=%llu bytes=%llu records=%llu rounds=%d freeze_ms=%lld "
               "total_ms=%lld\n", norm, tn, (unsigned long long)r.modseq,
               (unsigned long long)r.bytes_sent, (unsigned long long)r.records_sent, r.rounds,
               (long long)r.freeze_ms, (long long)r.total_ms);
    return 0;
}
