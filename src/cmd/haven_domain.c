/*
 * haven_domain.c - `haven domain`: the domains this instance hosts.
 *
 *   domain add DOMAIN
 *   domain del DOMAIN     (refused while accounts or aliases are in it)
 *   domain list           (one domain per line)
 *
 * `user add` adds a new domain by itself; `domain add` is for a domain
 * that should exist before its first account. Deleting never cascades:
 * accounts go one by one, so no one loses mail to a typo here.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"

static const char usage_text[] =
    "usage: haven [-c CONF] domain COMMAND ...\n"
    "  domain add DOMAIN\n"
    "      Host DOMAIN ('user add' also adds the domain of a new account).\n"
    "  domain del DOMAIN\n"
    "      Stop hosting DOMAIN; refused while it still has accounts or aliases.\n"
    "  domain list\n"
    "      One hosted domain per line.\n";

static int print_domain(void *ctx, const char *domain)
{
    (void)ctx;
    printf("%s\n", domain);
    return 0;
}

int cmd_domain(haven_ctx *ctx, int argc, char **argv)
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
        fprintf(stderr, "haven: unknown domain command '%s' (see 'haven domain help')\n", sub);
        return 2;
    }
    if (is_list && argc != 2) {
        fprintf(stderr, "haven: usage: haven domain list\n");
        return 2;
    }
    if (!is_list && (argc != 3 || argv[2][0] == '-')) {
        fprintf(stderr, "haven: usage: haven domain %s DOMAIN\n", sub);
        return 2;
    }

    hv_err err = {0};
    char dom[DIR_DOMAIN_MAX + 1] = "";
    if (!is_list && dir_domain_normalize(argv[2], dom, &err) < 0)
        return cmd_fail("%s", err.msg);
    dir *d;
    if (dir_open_conf(ctx->conf, &d, &err) < 0)
        return cmd_fail("%s", err.msg);
    int rc;
    if (is_add)
        rc = dir_domain_add(d, dom, &err);
    else if (is_del)
        rc = dir_domain_del(d, dom, &err);
    else
        rc = dir_domain_list(d, print_domain, NULL, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (is_add)
        printf("added domain %s\n", dom);
    else if (is_del)
        printf("deleted domain %s\n", dom);
    return 0;
}
