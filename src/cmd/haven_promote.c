/*
 * haven_promote.c - `haven promote STORE`: make this node, a replica of
 * STORE, its primary (docs/replication.md, "Promotion and fencing").
 *
 * Run with the replica's config. The replica's repl service does the
 * work (RUN_DIR/repl.sock, command "promote"): with the primary connected
 * it is a switchover (the primary fences itself, ships and has
 * acknowledged every record, hands over; nothing is lost); without it a
 * failover (the replica takes over with what it holds durably). Either
 * way the store's epoch goes up in the directory, this node's fence goes
 * and the old primary, once it meets the new epoch, fences itself and
 * rejoins as a replica. Waits until the service runs as primary.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"
#include "lib/buf.h"
#include "repl/repl.h"

int cmd_promote(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "haven: promote: usage: promote STORE\n");
        return 2;
    }
    hv_err err = {0};
    char sn[DIR_STORE_NAME_MAX + 1];
    if (dir_store_name_normalize(argv[1], sn, &err) < 0)
        return cmd_fail("promote: %s", err.msg);
    if (strcmp(sn, conf_get(ctx->conf, "store_name")) != 0)
        return cmd_fail("promote: this instance serves store '%s', not '%s': run it with the "
                        "config of the replica to promote", conf_get(ctx->conf, "store_name"), sn);
    if (!repl_configured(ctx->conf))
        return cmd_fail("promote: replication is not configured in %s", ctx->conf_path);
    buf reply;
    buf_init(&reply);
    /* A switchover lasts as long as the primary's backlog takes to ship. */
    int rc = repl_ctl_ask(ctx->conf, "promote", &reply, -1, &err);
    if (rc < 0) {
        buf_free(&reply);
        return cmd_fail("promote: %s", err.msg);
    }
    const char *text = reply.len ? (const char *)reply.data : "";
    if (strncmp(text, "error: ", 7) == 0) {
        size_t n = strcspn(text + 7, "\n");
        rc = cmd_fail("promote: %.*s", (int)n, text + 7);
        buf_free(&reply);
        return rc;
    }
    fputs(text, stdout);
    buf_free(&reply);
    /* The service restarts in its new role: wait until it answers as one. */
    for (int i = 0; i < 300; i++) {
        buf r;
        buf_init(&r);
        hv_err e2 = {0};
        int ok = repl_ctl_ask(ctx->conf, "role", &r, 2000, &e2) == 0 && r.len &&
                 strstr((const char *)r.data, "role: primary") != NULL;
        buf_free(&r);
        if (ok)
            return 0;
        usleep(100000);
    }
    return cmd_fail("promote: the repl service did not come back as primary within 30 s; "
                    "see the log");
}
