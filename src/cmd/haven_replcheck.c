/*
 * haven_replcheck.c - `haven replcheck`: does every replica hold what the
 * primary holds?
 *
 * Asks the primary's repl service (RUN_DIR/repl.sock) to compare, account
 * by account, the primary's store_digest with each connected replica's at
 * the same modseq (waiting briefly for a replica that is catching up). A
 * matching account costs one round trip, so the check is O(accounts); for
 * an account that differs the two logs' record CRCs are compared to name
 * the first modseq where they part. Prints one line per differing account
 * and a summary; exits 1 when any differs or the check could not be made.
 * `--status` prints the links' state, lag and rates instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"
#include "lib/buf.h"
#include "repl/repl.h"

int cmd_replcheck(haven_ctx *ctx, int argc, char **argv)
{
    const char *account = NULL, *store = NULL;
    int status = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--store") == 0 && i + 1 < argc)
            store = argv[++i];
        else if (strcmp(argv[i], "--status") == 0)
            status = 1;
        else if (argv[i][0] != '-' && !account)
            account = argv[i];
        else {
            fprintf(stderr, "haven: replcheck: unexpected '%s' (usage: replcheck [ACCOUNT | "
                    "--store STORE] | replcheck --status)\n", argv[i]);
            return 2;
        }
    }
    if ((account && store) || (status && (account || store))) {
        fprintf(stderr, "haven: replcheck: give ACCOUNT, --store STORE or --status, not several\n");
        return 2;
    }
    hv_err err = {0};
    char norm[DIR_ADDRESS_MAX + 1];
    if (account) {
        if (dir_address_normalize(account, norm, &err) < 0)
            return cmd_fail("replcheck: %s", err.msg);
        account = norm;
    }
    if (store) {
        char sn[DIR_STORE_NAME_MAX + 1];
        if (dir_store_name_normalize(store, sn, &err) < 0)
            return cmd_fail("replcheck: %s", err.msg);
        if (strcmp(sn, conf_get(ctx->conf, "store_name")) != 0)
            return cmd_fail("replcheck: this instance serves store '%s', not '%s': run it with "
                            "the config of %s's primary", conf_get(ctx->conf, "store_name"), sn,
                            sn);
    }
    if (!repl_configured(ctx->conf))
        return cmd_fail("replcheck: replication is not configured in %s (repl_port or "
                        "repl_primary)", ctx->conf_path);
    char cmd[DIR_ADDRESS_MAX + 32];
    snprintf(cmd, sizeof(cmd), "%s%s%s", status ? "status" : "replcheck", account ? " " : "",
             account ? account : "");
    buf reply;
    buf_init(&reply);
    int rc = repl_ctl_ask(ctx->conf, cmd, &reply, status ? 10000 : -1, &err);
    if (rc < 0) {
        buf_free(&reply);
        return cmd_fail("replcheck: %s", err.msg);
    }
    const char *text = reply.len ? (const char *)reply.data : "";
    if (strncmp(text, "error: ", 7) == 0) {
        size_t n = strcspn(text + 7, "\n");
        int r = cmd_fail("replcheck: %.*s", (int)n, text + 7);
        buf_free(&reply);
        return r;
    }
    fputs(text, stdout);
    int differ = 0;
    const char *sum = strstr(text, "summary: ");
    const char *d = sum ? strstr(sum, " differ=") : NULL;
    if (d)
        differ = atoi(d + 8);
    buf_free(&reply);
    if (status)
        return 0;
    if (!sum)
        return cmd_fail("replcheck: the repl service gave no summary");
    if (differ)
        fprintf(stderr, "haven: replcheck: %d account%s differ%s\n", differ,
                differ == 1 ? "" : "s", differ == 1 ? "s" : "");
    return differ ? 1 : 0;
}
