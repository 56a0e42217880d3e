/*
 * haven_store.c - `haven store`: the stores accounts live on.
 *
 *   store add NAME ADDRESS [--replica]
 *   store list                      (NAME TAB ADDRESS TAB ROLE TAB EPOCH)
 *   store show NAME
 *   store address NAME ADDRESS
 *
 * ADDRESS is host:port of the store's IMAP service: the proxy relays the
 * logins of the store's accounts there. Epochs are raised by `haven
 * promote`, never by hand, and roles follow promotions; this command only
 * names stores and says where they are.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"

static const char usage_text[] =
    "usage: haven [-c CONF] store COMMAND ...\n"
    "  store add NAME ADDRESS [--replica]\n"
    "      A new store (a primary unless --replica) whose IMAP service is at\n"
    "      ADDRESS (host:port).\n"
    "  store list\n"
    "      One 'NAME<TAB>ADDRESS<TAB>ROLE<TAB>EPOCH' per line.\n"
    "  store show NAME\n"
    "  store address NAME ADDRESS\n"
    "      The store's IMAP service moved to ADDRESS.\n";

static void print_store(const dir_store *s, int long_form)
{
    if (long_form)
        printf("name: %s\naddress: %s\nrole: %s\nepoch: %llu\n", s->name, s->address,
               dir_store_role_name(s->role), (unsigned long long)s->epoch);
    else
        printf("%s\t%s\t%s\t%llu\n", s->name, s->address, dir_store_role_name(s->role),
               (unsigned long long)s->epoch);
}

static int list_one(void *ctx, const dir_store *s)
{
    (void)ctx;
    print_store(s, 0);
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
    int replica = is_add && argc == 5 && strcmp(argv[4], "--replica") == 0;
    int ok = is_list ? argc == 2 : is_show ? argc == 3 : is_addr ? argc == 4
                                                                  : argc == 4 || replica;
    for (int i = 2; ok && i < argc; i++)
        if (argv[i][0] == '-' && !(replica && i == 4))
            ok = 0;
    if (!ok) {
        fprintf(stderr, "haven: usage: haven store %s\n",
                is_add    ? "add NAME ADDRESS [--replica]"
                : is_list ? "list"
                : is_show ? "show NAME"
                          : "address NAME ADDRESS");
        return 2;
    }
    hv_err err = {0};
    dir *d;
    if (dir_open_conf(ctx->conf, &d, &err) < 0)
        return cmd_fail("%s", err.msg);
    int rc;
    dir_store st;
    if (is_add)
        rc = dir_store_add(d, argv[2], argv[3], replica ? DIR_ROLE_REPLICA : DIR_ROLE_PRIMARY,
                           &err);
    else if (is_addr)
        rc = dir_store_set_address(d, argv[2], argv[3], &err);
    else if (is_show)
        rc = dir_store_get(d, argv[2], &st, &err);
    else
        rc = dir_store_list(d, list_one, NULL, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (is_add)
        printf("added store %s at %s\n", argv[2], argv[3]);
    else if (is_addr)
        printf("store %s is now at %s\n", argv[2], argv[3]);
    else if (is_show)
        print_store(&st, 1);
    return 0;
}
