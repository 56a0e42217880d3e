/*
 * haven_store.c - `haven store`: the stores accounts live on.
 *
 *   store add NAME ADDRESS [--replica] [--lmtp H:P] [--repl H:P]
 *   store add NAME --address H:P [--replica] [--lmtp H:P] [--repl H:P]
 *   store list       (NAME TAB ADDRESS TAB ROLE TAB EPOCH TAB LMTP TAB REPL)
 *   store show NAME
 *   store address NAME [ADDRESS | --address H:P] [--lmtp H:P] [--repl H:P]
 *
 * A store publishes three addresses: ADDRESS is host:port of its IMAP
 * service (the proxy relays the logins of the store's accounts there),
 * --lmtp of its lmtp service (every node's queue delivers the store's
 * mail there) and --repl of its repl service (`haven move` streams
 * accounts to it there). Epochs are raised by `haven promote`, never by
 * hand, and roles follow promotions; this command only names stores and
 * says where they are.
 *
 * Each address is its own directory change (one transaction, one version
 * bump), so `store address` with several of them makes several; every
 * step on the way is a valid directory. The LMTP and repl addresses are
 * checked before anything is written, so a bad one leaves nothing behind.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"

static const char usage_text[] =
    "usage: haven [-c CONF] store COMMAND ...\n"
    "  store add NAME ADDRESS [--replica] [--lmtp H:P] [--repl H:P]\n"
    "  store add NAME --address H:P [--replica] [--lmtp H:P] [--repl H:P]\n"
    "      A new store (a primary unless --replica) whose IMAP service is at\n"
    "      ADDRESS (host:port), its lmtp service at --lmtp (where every node's\n"
    "      queue delivers its accounts' mail) and its repl service at --repl\n"
    "      (where 'haven move' streams accounts to it).\n"
    "  store list\n"
    "      One 'NAME<TAB>ADDRESS<TAB>ROLE<TAB>EPOCH<TAB>LMTP<TAB>REPL' per line;\n"
    "      '-' for an address that is not set.\n"
    "  store show NAME\n"
    "  store address NAME [ADDRESS] [--lmtp H:P] [--repl H:P]\n"
    "      The store's services moved: IMAP to ADDRESS, lmtp and repl to the\n"
    "      options' H:P ('' unsets one). At least one of them.\n"
    "  A store without an lmtp address gets its mail from the lmtp service of\n"
    "  the node that delivers it (a single node needs none).\n";

static const char *or_dash(const char *s) { return *s ? s : "-"; }

static void print_store(const dir_store *s, int long_form)
{
    if (long_form)
        printf("name: %s\naddress: %s\nlmtp_address: %s\nrepl_address: %s\nrole: %s\n"
               "epoch: %llu\n",
               s->name, s->address, or_dash(s->lmtp_address), or_dash(s->repl_address),
               dir_store_role_name(s->role), (unsigned long long)s->epoch);
    else
        printf("%s\t%s\t%s\t%llu\t%s\t%s\n", s->name, s->address, dir_store_role_name(s->role),
               (unsigned long long)s->epoch, or_dash(s->lmtp_address),
               or_dash(s->repl_address));
}

static int list_one(void *ctx, const dir_store *s)
{
    (void)ctx;
    print_store(s, 0);
    return 0;
}

/* The arguments of add and address: positionals and the options. */
typedef struct store_args {
    const char *name, *address, *lmtp, *repl;
    int replica;
} store_args;

/* "--opt VALUE" or "--opt=VALUE" at argv[*i]: 1 with *out set (and *i
 * past VALUE), 0 when argv[*i] is not that option, -1 when VALUE is
 * missing or the option came twice. */
static int take_opt(int argc, char **argv, int *i, const char *opt, const char **out)
{
    size_t n = strlen(opt);
    const char *a = argv[*i];
    if (strncmp(a, opt, n) != 0 || (a[n] != 0 && a[n] != '='))
        return 0;
    if (*out)
        return -1;
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (*i + 1 >= argc)
        return -1;
    *out = argv[++*i];
    return 1;
}

/* Parses argv[2..]; 0, or -1 for a usage error. */
static int parse_args(int argc, char **argv, int is_add, store_args *a)
{
    memset(a, 0, sizeof(*a));
    int npos = 0;
    for (int i = 2; i < argc; i++) {
        int r;
        if ((r = take_opt(argc, argv, &i, "--lmtp", &a->lmtp)) != 0 ||
            (r = take_opt(argc, argv, &i, "--repl", &a->repl)) != 0 ||
            (r = take_opt(argc, argv, &i, "--address", &a->address)) != 0) {
            if (r < 0)
                return -1;
        } else if (is_add && strcmp(argv[i], "--replica") == 0 && !a->replica) {
            a->replica = 1;
        } else if (argv[i][0] == '-') {
            return -1;
        } else if (npos == 0) {
            a->name = argv[i];
            npos++;
        } else if (npos == 1 && !a->address) {
            a->address = argv[i];
            npos++;
        } else {
            return -1;
        }
    }
    if (!a->name)
        return -1;
    if (is_add)
        return a->address ? 0 : -1;
    return a->address || a->lmtp || a->repl ? 0 : -1;
}

/* A given --lmtp or --repl value must be host:port (or "", unset). */
static int check_hostport(const char *v, hv_err *err)
{
    char host[DIR_STORE_ADDRESS_MAX + 1];
    int port;
    return !v || !*v ? 0 : dir_hostport_split(v, host, sizeof(host), &port, err);
}

static int store_change(haven_ctx *ctx, int is_add, const store_args *a)
{
    hv_err err = {0};
    if (check_hostport(a->lmtp, &err) < 0 || check_hostport(a->repl, &err) < 0)
        return cmd_fail("%s", err.msg);
    dir *d;
    if (dir_open_conf(ctx->conf, &d, &err) < 0)
        return cmd_fail("%s", err.msg);
    int rc = 0;
    if (is_add)
        rc = dir_store_add(d, a->name, a->address,
                           a->replica ? DIR_ROLE_REPLICA : DIR_ROLE_PRIMARY, &err);
    else if (a->address)
        rc = dir_store_set_address(d, a->name, a->address, &err);
    /* On add, an empty option is just no address yet: nothing to write. */
    if (rc == 0 && a->lmtp && (!is_add || *a->lmtp))
        rc = dir_store_set_lmtp_address(d, a->name, a->lmtp, &err);
    if (rc == 0 && a->repl && (!is_add || *a->repl))
        rc = dir_store_set_repl_address(d, a->name, a->repl, &err);
    dir_store st;
    if (rc == 0)
        rc = dir_store_get(d, a->name, &st, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (is_add)
        printf("added store %s at %s (lmtp %s, repl %s)\n", st.name, st.address,
               or_dash(st.lmtp_address), or_dash(st.repl_address));
    else
        printf("store %s is now at %s (lmtp %s, repl %s)\n", st.name, st.address,
               or_dash(st.lmtp_address), or_dash(st.repl_address));
    return 0;
}

int cmd_store(haven_ctx *ctx, int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    int is_add = strcmp(sub, "add") == 0, is_list = strcmp(sub, "list") == 0;
    int is_show = strcmp(sub, "show") == 0, is_addr = strcmp(sub, "address") == 0;
    if (!is_add && !is_list && !is_show && !is_addr) {
        fprintf(stderr, "haven: unknown store command '%s' (see 'haven store help')\n", sub);
        return 2;
    }
    store_args a;
    int ok = is_list ? argc == 2
             : is_show ? argc == 3 && argv[2][0] != '-'
                       : parse_args(argc, argv, is_add, &a) == 0;
    if (!ok) {
        fprintf(stderr, "haven: usage: haven store %s\n",
                is_add    ? "add NAME ADDRESS|--address H:P [--replica] [--lmtp H:P] [--repl H:P]"
                : is_list ? "list"
                : is_show ? "show NAME"
                          : "address NAME [ADDRESS] [--lmtp H:P] [--repl H:P]");
        return 2;
    }
    if (is_add || is_addr)
        return store_change(ctx, is_add, &a);
    hv_err err = {0};
    dir *d;
    if (dir_open_conf(ctx->conf, &d, &err) < 0)
        return cmd_fail("%s", err.msg);
    int rc;
    dir_store st;
    if (is_show)
        rc = dir_store_get(d, argv[2], &st, &err);
    else
        rc = dir_store_list(d, list_one, NULL, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (is_show)
        print_store(&st, 1);
    return 0;
}
