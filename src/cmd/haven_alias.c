/*
 * haven_alias.c - `haven alias`: addresses that deliver to another one.
 *
 *   alias add ADDRESS TARGET   (the domain of ADDRESS is added when new)
 *   alias del ADDRESS
 *   alias list                 (ADDRESS TAB TARGET per line)
 *
 * SMTP checks recipients against accounts and aliases at RCPT time, and
 * LMTP follows aliases (up to 8 steps) to the account that gets the mail.
 * A target may be an account or another alias; one that leads nowhere is
 * refused at RCPT, so mail to it is never accepted and bounced later.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"

static const char usage_text[] =
    "usage: haven [-c CONF] alias COMMAND ...\n"
    "  alias add ADDRESS TARGET\n"
    "      Mail to ADDRESS goes to TARGET (an account or another alias).\n"
    "  alias del ADDRESS\n"
    "      Remove the alias; mail to ADDRESS is refused again.\n"
    "  alias list\n"
    "      One 'ADDRESS<TAB>TARGET' per line.\n";

static int print_alias(void *ctx, const char *address, const char *target)
{
    (void)ctx;
    printf("%s\t%s\n", address, target);
    return 0;
}

int cmd_alias(haven_ctx *ctx, int argc, char **argv)
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
    int is_add = strcmp(sub, "add") == 0, is_del = strcmp(sub, "del") == 0;
    int is_list = strcmp(sub, "list") == 0;
    if (!is_add && !is_del && !is_list) {
        fprintf(stderr, "haven: unknown alias command '%s' (see 'haven alias help')\n", sub);
        return 2;
    }
    int want = is_add ? 4 : is_del ? 3 : 2;
    if (argc != want || (argc > 2 && argv[2][0] == '-') || (argc > 3 && argv[3][0] == '-')) {
        fprintf(stderr, "haven: usage: haven alias %s\n",
                is_add ? "add ADDRESS TARGET" : is_del ? "del ADDRESS" : "list");
        return 2;
    }
    hv_err err = {0};
    dir *d;
    if (dir_open_conf(ctx->conf, &d, &err) < 0)
        return cmd_fail("%s", err.msg);
    int rc;
    char addr[DIR_ADDRESS_MAX + 1] = "", target[DIR_ADDRESS_MAX + 1] = "";
    if (is_add) {
        rc = dir_address_normalize(argv[2], addr, &err);
        if (rc == 0)
            rc = dir_address_normalize(argv[3], target, &err);
        if (rc == 0 && strcmp(addr, target) == 0)
            rc = hv_err_set(&err, -EINVAL, "an alias cannot point at itself");
        if (rc == 0)
            rc = dir_alias_add(d, addr, target, &err);
    } else if (is_del) {
        rc = dir_address_normalize(argv[2], addr, &err);
        if (rc == 0)
            rc = dir_alias_del(d, addr, &err);
    } else {
        rc = dir_alias_list(d, print_alias, NULL, &err);
    }
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (is_add)
        printf("added alias %s -> %s\n", addr, target);
    else if (is_del)
        printf("deleted alias %s\n", addr);
    return 0;
}
