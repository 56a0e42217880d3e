/*
 * haven_verify.c - `haven verify [ACCOUNT]` and `haven reconstruct ACCOUNT`.
 *
 * Both work on the store folders directly (no running havend needed): the
 * log is the truth, so these are the tools an operator reaches for when
 * something looks wrong. verify changes nothing; reconstruct rewrites only
 * the derived index.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "store/store.h"

typedef struct report_ctx {
    int lines;
} report_ctx;

static void print_problem(void *ctx, const char *problem)
{
    ((report_ctx *)ctx)->lines++;
    printf("%s\n", problem);
}

/* Returns problems found (>= 0) or -1 when the account could not be read. */
static int verify_one(const char *data_dir, const char *address)
{
    char dir[4096];
    hv_err err = {0};
    if (store_account_dir(data_dir, address, dir, sizeof(dir), &err) < 0) {
        fprintf(stderr, "haven: %s\n", err.msg);
        return -1;
    }
    report_ctx rc = {0};
    int problems = store_verify(dir, address, print_problem, &rc, &err);
    if (problems < 0) {
        printf("%s: cannot verify: %s\n", address, err.msg);
        return -1;
    }
    printf("%s: %s\n", address, problems ? "DAMAGED" : "ok");
    return problems;
}

int cmd_verify(haven_ctx *ctx, int argc, char **argv)
{
    char data_dir[4096];
    conf_path(ctx->conf, "data_dir", data_dir, sizeof(data_dir));
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: haven verify [ACCOUNT]\n");
        return 2;
    }
    if (argc == 2) {
        int p = verify_one(data_dir, argv[1]);
        if (p < 0)
            return 1;
        if (p > 0)
            return cmd_fail("%s: %d problem%s found", argv[1], p, p == 1 ? "" : "s");
        return 0;
    }
    /* Every account folder: data/accounts/DOMAIN/LOCAL. */
    char accounts[4200];
    snprintf(accounts, sizeof(accounts), "%s/accounts", data_dir);
    DIR *d = opendir(accounts);
    int total = 0, damaged = 0, bad = 0;
    struct dirent *dom;
    while (d && (dom = readdir(d))) {
        if (dom->d_name[0] == '.')
            continue;
        char dpath[4500];
        snprintf(dpath, sizeof(dpath), "%s/%s", accounts, dom->d_name);
        DIR *dd = opendir(dpath);
        struct dirent *loc;
        while (dd && (loc = readdir(dd))) {
            if (loc->d_name[0] == '.')
                continue;
            char address[600];
            snprintf(address, sizeof(address), "%s@%s", loc->d_name, dom->d_name);
            int p = verify_one(data_dir, address);
            total++;
            if (p < 0)
                bad++;
            else if (p > 0)
                damaged++;
        }
        if (dd)
            closedir(dd);
    }
    if (d)
        closedir(d);
    printf("verified %d account%s: %d damaged, %d unreadable\n", total, total == 1 ? "" : "s",
           damaged, bad);
    return damaged || bad ? 1 : 0;
}

int cmd_reconstruct(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: haven reconstruct ACCOUNT\n");
        return 2;
    }
    char data_dir[4096], dir[4096];
    conf_path(ctx->conf, "data_dir", data_dir, sizeof(data_dir));
    hv_err err = {0};
    if (store_account_dir(data_dir, argv[1], dir, sizeof(dir), &err) < 0 ||
        store_reconstruct(dir, argv[1], &err) < 0)
        return cmd_fail("reconstruct %s: %s", argv[1], err.msg);
    store_account *a;
    if (store_open(dir, argv[1], STORE_OPEN_READONLY, NULL, &a, &err) < 0)
        return cmd_fail("reconstruct %s: %s", argv[1], err.msg);
    size_t nmb = store_mailbox_count(a);
    uint64_t msgs = 0;
    for (size_t i = 0; i < nmb; i++) {
        store_mailbox_info mi;
        if (store_mailbox_at(a, i, &mi) == 0)
            msgs += mi.exists;
    }
    printf("reconstructed the index of %s from its log: %zu mailboxes, %llu messages, modseq "
           "%llu\n",
           argv[1], nmb, (unsigned long long)msgs, (unsigned long long)store_highest_modseq(a));
    store_close(a);
    return 0;
}
