/*
 * haven_cmd.h - the subcommands of the `haven` operator command.
 *
 * haven.c parses the global options (-c CONF), loads the config when the
 * subcommand needs one and dispatches through its command table to one of
 * these. Each lives in its own file (haven_<name>.c). argv[0] is the
 * subcommand's name ("user", "verify", ...). A subcommand returns the exit
 * status: 0 on success; on failure it has printed a one-line reason to
 * stderr ("haven: ...") and returns 1 (2 for usage errors).
 */
#ifndef HV_HAVEN_CMD_H
#define HV_HAVEN_CMD_H

#include "lib/conf.h"

typedef struct haven_ctx {
    const char *conf_path; /* from -c, or the default "haven.conf" */
    conf *conf;            /* loaded config; NULL for commands that need none */
} haven_ctx;

int cmd_init(haven_ctx *ctx, int argc, char **argv);        /* haven_init.c */
int cmd_user(haven_ctx *ctx, int argc, char **argv);        /* haven_user.c */
int cmd_domain(haven_ctx *ctx, int argc, char **argv);      /* haven_domain.c */
int cmd_alias(haven_ctx *ctx, int argc, char **argv);       /* haven_alias.c */
int cmd_store(haven_ctx *ctx, int argc, char **argv);       /* haven_store.c */
int cmd_import(haven_ctx *ctx, int argc, char **argv);      /* haven_import.c */
int cmd_export(haven_ctx *ctx, int argc, char **argv);      /* haven_export.c */
int cmd_verify(haven_ctx *ctx, int argc, char **argv);      /* haven_verify.c */
int cmd_reconstruct(haven_ctx *ctx, int argc, char **argv); /* haven_verify.c */
int cmd_status(haven_ctx *ctx, int argc, char **argv);      /* haven_status.c */
int cmd_replcheck(haven_ctx *ctx, int argc, char **argv);   /* haven_replcheck.c */
int cmd_queue(haven_ctx *ctx, int argc, char **argv);       /* haven_queue.c */
int cmd_promote(haven_ctx *ctx, int argc, char **argv);     /* haven_promote.c */
int cmd_move(haven_ctx *ctx, int argc, char **argv);        /* haven_move.c */

/* Prints "haven: <reason>" to stderr and returns 1 (for one-line failures). */
int cmd_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
