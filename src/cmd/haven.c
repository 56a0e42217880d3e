/*
 * haven.c - main() of `haven`, the operator command.
 *
 * Parses the global options, finds the subcommand in one table, loads the
 * instance's config for the subcommands that need one and hands over to
 * cmd_<name>() (one file each, haven_<name>.c). The same table writes the
 * help text, so a command cannot exist without being explained, and the
 * commands the design promises but that are not built yet are listed as
 * such and refuse to run instead of pretending.
 *
 * Exit status: 0 success, 1 failure (one-line reason on stderr), 2 usage
 * error or a command that is not built yet.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "cmd/version.h"
#include "lib/conf.h"
#include "store/store.h"

typedef int (*cmd_handler)(haven_ctx *ctx, int argc, char **argv);

typedef struct haven_command {
    const char *name;
    int needs_config;
    int own_help;        /* the handler answers --help itself, without a config */
    cmd_handler handler; /* NULL: designed, not built yet */
    const char *forms;   /* argument forms, one per line */
    const char *help;    /* what it does; may span lines */
} haven_command;

static const haven_command commands[] = {
    {"init", 0, 0, cmd_init,
     "init DIR [--imap-port N] [--smtp-port N] [--submission-port N] [--lmtp-port N]\n"
     "         [--http-port N] [--hostname H] [--imaps-port N] [--submissions-port N]",
     "Write a ready single-node instance into DIR: haven.conf (commented), data/,\n"
     "queue/, run/, a self-signed certificate in tls/ (for H, default localhost)\n"
     "and the directory database. Ports default to the standard ones (143, 25,\n"
     "587, 24, 8080; 993 and 465 for implicit TLS, which are disabled when the\n"
     "plain port was moved and no port is given for them). Plaintext LOGIN is\n"
     "allowed from loopback only. Refuses to overwrite an existing haven.conf."},
    {"user", 1, 1, cmd_user,
     "user add ADDRESS [--password-stdin] [--quota BYTES] [--store NAME]\n"
     "user del ADDRESS\n"
     "user list [DOMAIN]\n"
     "user passwd ADDRESS [--password-stdin]\n"
     "user state ADDRESS active|held|moving|restoring\n"
     "user quota ADDRESS BYTES\n"
     "user show ADDRESS",
     "Manage accounts in the directory. 'add' creates the domain when it is new and\n"
     "the account's mail folder; without --password-stdin (the first line of\n"
     "standard input) the account has no password yet. 'passwd' asks twice on a\n"
     "terminal. 'del' removes the entry, never the mail. Only 'active' accounts are\n"
     "served; mail for the other states is held, never bounced. BYTES may end in\n"
     "K, M, G or T; 0 is no quota."},
    {"domain", 1, 1, cmd_domain,
     "domain add DOMAIN\n"
     "domain del DOMAIN\n"
     "domain list",
     "Manage the domains this instance hosts. 'del' is refused while the domain\n"
     "still has accounts or aliases."},
    {"store", 1, 1, cmd_store,
     "store add NAME ADDRESS [--replica] [--lmtp H:P] [--repl H:P]\n"
     "store list\n"
     "store show NAME\n"
     "store address NAME [ADDRESS] [--lmtp H:P] [--repl H:P]",
     "Name the stores accounts live on and say where each one's services are\n"
     "(host:port): IMAP (ADDRESS; the proxy relays each login there), lmtp (the\n"
     "queue of every node delivers the store's mail there) and repl (where 'move'\n"
     "streams accounts to it). Epochs and roles change with 'promote', not by hand."},
    {"alias", 1, 1, cmd_alias,
     "alias add ADDRESS TARGET\n"
     "alias del ADDRESS\n"
     "alias list",
     "Manage aliases: mail to ADDRESS goes to TARGET (an account or another alias,\n"
     "followed up to 8 steps). SMTP accepts an alias at RCPT only when it leads to\n"
     "an account. 'add' adds the domain of ADDRESS when it is new."},
    {"import", 1, 1, cmd_import,
     "import ACCOUNT MAILBOX FILE... [--recursive] [--skip N] [--max-size BYTES]\n"
     "                              [--progress]",
     "Append the messages of each FILE (an mbox file, '-' for standard input, or a\n"
     "Maildir folder) to MAILBOX of ACCOUNT, creating the mailbox if needed. In\n"
     "durable batches; an interrupted import says where to continue (--skip)."},
    {"export", 1, 1, cmd_export,
     "export ACCOUNT MAILBOX --mbox FILE|- [--progress]\n"
     "export ACCOUNT [MAILBOX] --maildir DIR [--progress]",
     "Write a mailbox out as mboxrd ('-': standard output), or one mailbox or the\n"
     "whole account as a Maildir (Maildir++ for the whole account; DIR must be new\n"
     "or empty). What export writes, import reads back into the same bytes."},
    {"verify", 1, 0, cmd_verify,
     "verify [ACCOUNT]",
     "Check one account, or every account, offline: every log record's CRC, every\n"
     "blob's SHA-256 and the index against the log. Prints each problem with its\n"
     "place; exit status 1 when any was found."},
    {"reconstruct", 1, 0, cmd_reconstruct,
     "reconstruct ACCOUNT",
     "Rebuild ACCOUNT's index from its log alone (the log is the truth; the index\n"
     "is derived). Nothing is replicated by it."},
    {"status", 1, 0, cmd_status,
     "status",
     "Ask the running havend (over run/admin.sock) how it is. When havend is not\n"
     "running, says so, prints what can be seen offline and exits with status 1."},
    {"queue", 1, 0, cmd_queue,
     "queue list [--account A] [--recipient R] [--state S] [ID...]\n"
     "queue show ID [--message]\n"
     "queue hold ID... | --account A | --recipient R | --all\n"
     "queue release ID... | --account A | --recipient R | --all\n"
     "queue flush [ID... | --account A | --recipient R]\n"
     "queue delete ID... | --recipient R | --account A",
     "Inspect and steer the SMTP queue: through the running smtp service, or on\n"
     "the queue folder itself when havend is not running. 'list' prints one line\n"
     "per message, TAB-separated: id, arrival (UTC), size, sender (<> for none),\n"
     "then one field per recipient: 'ADDRESS STATE[ REASON]' (STATE: ready,\n"
     "deferred, held, delivered, bounced, deleted); the filters keep messages\n"
     "with a matching recipient. 'hold' keeps recipients until 'release' (held\n"
     "mail never expires); 'release' delivers held mail in arrival order; 'flush'\n"
     "retries deferred recipients now; 'delete' drops messages or recipients\n"
     "without a bounce. More: docs/queue.md."},
    /* Named by the design's operator contract; later issues build them. */
    {"replcheck", 1, 0, cmd_replcheck,
     "replcheck [ACCOUNT | --store STORE]\n"
     "replcheck --status",
     "On a primary: compare each account's digest with every connected replica's\n"
     "(at the same modseq; a replica catching up is waited for briefly). Prints\n"
     "each account that differs with the first modseq where the logs part, then a\n"
     "summary; exit status 1 when any differs. --status shows the replication\n"
     "links, lag per store and account, and bytes/s. See docs/replication.md."},
    {"promote", 1, 0, cmd_promote, "promote STORE",
     "Run with a replica's config: make it STORE's primary, bumping the store's\n"
     "epoch. With the primary connected, a switchover: the primary stops writing,\n"
     "ships everything, and hands over (no loss). Without it, a failover. The old\n"
     "primary, seeing the newer epoch, stops writing and rejoins as a replica.\n"
     "See docs/replication.md."},
    {"move", 1, 0, cmd_move,
     "move ACCOUNT --to STORE [--freeze-records N] [-v]\n"
     "move --from STORE --to STORE [--slots N] [-v]\n"
     "move --status",
     "Run on the node of the account's store. Moves the account to STORE while it\n"
     "stays in use: streams its log and blobs to STORE's repl service (its repl\n"
     "address in the directory) in rounds, then freezes it for a moment (state\n"
     "'moving': new mail is held, sessions reconnect), ships the rest, compares\n"
     "digests, flips the directory and releases the held mail. If STORE holds an\n"
     "older copy only the difference moves. Run again after a crash, it goes on;\n"
     "a failure rolls back to the source and says why. --from evacuates a whole\n"
     "store, N accounts at a time and one per slot: owners who tried to log in\n"
     "first, then smaller before larger; run it again to resume. --status shows\n"
     "the moves and evacuations run here (DATA/moves). See docs/move.md."},
    {"backup", 1, 0, NULL, "backup",
     "Incremental, per-account backup of new log segments and blobs."},
    {"restore", 1, 0, NULL, "restore",
     "Prioritised restore of accounts from a backup."},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const haven_command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Forms flush left under two spaces, the explanation indented below them. */
static void print_command(FILE *f, const haven_command *c)
{
    const char *p = c->forms;
    while (*p) {
        size_t n = strcspn(p, "\n");
        fprintf(f, "  %.*s\n", (int)n, p);
        p += n + (p[n] == '\n');
    }
    p = c->help;
    while (*p) {
        size_t n = strcspn(p, "\n");
        fprintf(f, "      %.*s\n", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

static void usage(FILE *f)
{
    fputs("usage: haven [-c CONF] COMMAND [ARGS...]\n"
          "       haven help [COMMAND] | --help | --version\n"
          "\n"
          "The operator command of Haven. It talks to a running havend over its admin\n"
          "socket, or works directly on the instance's files (directory, stores).\n"
          "\n"
          "Global options (before COMMAND):\n"
          "  -c CONF       the instance's config file (default: $HAVEN_CONF if set,\n"
          "                else ./haven.conf)\n"
          "  -h, --help    this text ('haven COMMAND --help' shows one command)\n"
          "  --version     print the version\n"
          "\n"
          "Commands:\n", f);
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (commands[i].handler)
            print_command(f, &commands[i]);
    fputs("\nComing later (designed, not built yet; calling them exits with status 2):\n", f);
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!commands[i].handler)
            print_command(f, &commands[i]);
    fputs("\n"
          "Exit status: 0 success; 1 failure, with a one-line reason on stderr;\n"
          "2 usage error, or a command that is not built yet.\n"
          "More: docs/operations.md and docs/config.md.\n", f);
}

int cmd_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("haven: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("haven: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see 'haven --help')\n", stderr);
    return 2;
}

static int help_command(int argc, char **argv)
{
    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    const haven_command *c = find_command(argv[1]);
    if (!c)
        return usage_error("unknown command '%s'", argv[1]);
    printf("usage: haven [-c CONF] ...\n");
    print_command(stdout, c);
    if (!c->handler)
        printf("      (not built yet)\n");
    return 0;
}

static int is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

int main(int argc, char **argv)
{
    haven_ctx ctx = {0};
    const char *env = getenv("HAVEN_CONF");
    ctx.conf_path = env && *env ? env : "haven.conf";

    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("haven %s\n", HAVEN_VERSION);
            return 0;
        } else if (strcmp(a, "-c") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a config file", a);
            ctx.conf_path = argv[i];
        } else if (strncmp(a, "-c", 2) == 0) {
            ctx.conf_path = a + 2;
        } else if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (strcmp(sub_argv[0], "help") == 0)
        return help_command(sub_argc, sub_argv);

    const haven_command *c = find_command(sub_argv[0]);
    if (!c)
        return usage_error("unknown command '%s'", sub_argv[0]);
    /* Help must work before an instance exists, so no config is loaded. */
    int wants_help = sub_argc > 1 && (is_help(sub_argv[1]) ||
                                      (c->own_help && strcmp(sub_argv[1], "help") == 0));
    if (wants_help && (!c->own_help || !c->handler))
        return help_command(2, (char *[]){"help", sub_argv[0], NULL});
    if (!c->handler) {
        fprintf(stderr, "haven: '%s' is not built yet (see 'haven --help')\n", c->name);
        return 2;
    }

    if (c->needs_config && !wants_help) {
        hv_err err = {0};
        if (conf_load(ctx.conf_path, &ctx.conf, &err) < 0) {
            if (err.code == -ENOENT || err.code == -EACCES || err.code == -ENOTDIR)
                return cmd_fail("cannot read %s: %s (run 'haven init DIR' first or pass -c)",
                                ctx.conf_path, strerror(-err.code));
            return cmd_fail("%s", err.msg);
        }
        /* A fenced store (a replica, a demoted primary) refuses writes
         * from the operator command too: `import` into a replica would
         * make it diverge. */
        char data[4096], fence[4200];
        conf_path(ctx.conf, "data_dir", data, sizeof(data));
        snprintf(fence, sizeof(fence), "%s/fence", data);
        store_set_fence(fence);
    }
    int rc = c->handler(&ctx, sub_argc, sub_argv);
    conf_free(ctx.conf);
    if (fflush(stdout) != 0 && rc == 0)
        rc = cmd_fail("cannot write to standard output");
    return rc;
}
