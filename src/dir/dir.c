/*
 * dir.c - the backend-neutral part of the directory (see dir.h and
 * docs/directory.md): dir_open choosing a backend by the spec's prefix, the
 * name rules, and the dir_* entry points that validate and lowercase every
 * name before dispatching to the backend's table, so every backend gets
 * the same, already safe input and the rules cannot drift between them.
 */
#include "dir/dir.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const dir_backend *const backends[] = {&dir_sqlite_backend, &dir_pg_backend};

/* Longest alias chain resolve follows before calling it a loop. */
#define ALIAS_DEPTH_MAX 8

int dir_open(const char *spec, dir **out, hv_err *err)
{
    const char *colon = spec ? strchr(spec, ':') : NULL;
    if (colon) {
        size_t n = (size_t)(colon - spec);
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
            if (strlen(backends[i]->scheme) == n && strncmp(spec, backends[i]->scheme, n) == 0) {
                if (!colon[1])
                    return hv_err_set(err, -EINVAL, "directory '%s': nothing after '%s:'", spec,
                                      backends[i]->scheme);
                return backends[i]->open(colon + 1, out, err);
            }
        }
    }
    return hv_err_set(err, -EINVAL, "directory '%s': unknown backend (expected sqlite:PATH or pg:CONNINFO)",
                      spec ? spec : "");
}

int dir_open_conf(const conf *c, dir **out, hv_err *err)
{
    const char *spec = conf_get(c, "directory");
    const char *colon = strchr(spec, ':');
    if (c && colon && colon[1] && colon[1] != '/') {
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
            size_t n = (size_t)(colon - spec);
            if (backends[i]->where_is_path && strlen(backends[i]->scheme) == n &&
                strncmp(spec, backends[i]->scheme, n) == 0) {
                char full[4096];
                int w = snprintf(full, sizeof(full), "%.*s:%s/%s", (int)n, spec, conf_dir(c),
                                 colon + 1);
                if (w < 0 || (size_t)w >= sizeof(full))
                    return hv_err_set(err, -ENAMETOOLONG, "directory path too long");
                return dir_open(full, out, err);
            }
        }
    }
    return dir_open(spec, out, err);
}

void dir_close(dir *d)
{
    if (d)
        d->be->close(d);
}

/* Copies untrusted input into an error message safely: printable ASCII
 * only (so the reason stays one line) and not too long. */
static const char *quoted(const char *in, char *buf, size_t n)
{
    size_t o = 0, i = 0;
    for (; in[i] && o + 4 < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        buf[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (in[i]) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

static int is_alnum_ascii(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

static char lower_ascii(char ch) { return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch; }

/* Describes a rejected character for a reason string. */
static void char_desc(unsigned char ch, char *buf, size_t n)
{
    if (ch > 0x20 && ch < 0x7f)
        snprintf(buf, n, "'%c'", ch);
    else
        snprintf(buf, n, "byte 0x%02x", ch);
}

/* The checks on a local part of len bytes; writes it lowercased to out.
 * Returns 0, or -1 with the reason in why. */
static int local_check(const char *in, size_t len, char *out, char *why, size_t whylen)
{
    if (len == 0)
        return snprintf(why, whylen, "empty local part"), -1;
    if (len > DIR_LOCAL_MAX)
        return snprintf(why, whylen, "local part longer than %d characters", DIR_LOCAL_MAX), -1;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (!is_alnum_ascii((unsigned char)ch) && ch != '.' && ch != '_' && ch != '+' &&
            ch != '-') {
            char c[16];
            char_desc((unsigned char)ch, c, sizeof(c));
            return snprintf(why, whylen, "%s is not allowed in the local part", c), -1;
        }
        if (ch == '.' && i + 1 < len && in[i + 1] == '.')
            return snprintf(why, whylen, "'..' in the local part"), -1;
        out[i] = lower_ascii(ch);
    }
    if (in[0] == '.' || in[len - 1] == '.')
        return snprintf(why, whylen, "local part starts or ends with '.'"), -1;
    /* Legal in mail, but the local part becomes a folder name, and one
     * starting with '-' reads as an option to every shell tool. */
    if (in[0] == '-')
        return snprintf(why, whylen, "local part starts with '-'"), -1;
    out[len] = 0;
    return 0;
}

static int domain_check(const char *in, size_t len, char *out, char *why, size_t whylen)
{
    if (len == 0)
        return snprintf(why, whylen, "empty domain"), -1;
    if (len > DIR_DOMAIN_MAX)
        return snprintf(why, whylen, "domain longer than %d characters", DIR_DOMAIN_MAX), -1;
    size_t label = 0; /* start of the current label */
    for (size_t i = 0; i <= len; i++) {
        char ch = i < len ? in[i] : '.';
        if (ch == '.') {
            size_t n = i - label;
            if (n == 0)
                return snprintf(why, whylen, "empty label in the domain"), -1;
            if (n > 63)
                return snprintf(why, whylen, "domain label longer than 63 characters"), -1;
            if (in[label] == '-' || in[i - 1] == '-')
                return snprintf(why, whylen, "domain label starts or ends with '-'"), -1;
            label = i + 1;
            if (i < len)
                out[i] = '.';
            continue;
        }
        if (!is_alnum_ascii((unsigned char)ch) && ch != '-') {
            char c[16];
            char_desc((unsigned char)ch, c, sizeof(c));
            return snprintf(why, whylen, "%s is not allowed in a domain", c), -1;
        }
        out[i] = lower_ascii(ch);
    }
    out[len] = 0;
    return 0;
}

int dir_domain_normalize(const char *in, char out[DIR_DOMAIN_MAX + 1], hv_err *err)
{
    char why[128], q[80];
    if (!in)
        in = "";
    size_t len = strnlen(in, DIR_DOMAIN_MAX + 1);
    if (domain_check(in, len, out, why, sizeof(why)) < 0)
        return hv_err_set(err, -EINVAL, "malformed domain '%s': %s", quoted(in, q, sizeof(q)),
                          why);
    return 0;
}

int dir_address_normalize(const char *in, char out[DIR_ADDRESS_MAX + 1], hv_err *err)
{
    char why[128], q[80];
    if (!in)
        in = "";
    size_t len = strnlen(in, DIR_ADDRESS_MAX + 1);
    const char *at = memchr(in, '@', len);
    if (len == 0)
        snprintf(why, sizeof(why), "empty address");
    else if (len > DIR_ADDRESS_MAX)
        snprintf(why, sizeof(why), "longer than %d characters", DIR_ADDRESS_MAX);
    else if (!at)
        snprintf(why, sizeof(why), "no '@'");
    else if (memchr(at + 1, '@', len - (size_t)(at - in) - 1))
        snprintf(why, sizeof(why), "more than one '@'");
    else if (local_check(in, (size_t)(at - in), out, why, sizeof(why)) == 0 &&
             domain_check(at + 1, len - (size_t)(at - in) - 1, out + (at - in) + 1, why,
                          sizeof(why)) == 0) {
        out[at - in] = '@';
        return 0;
    }
    return hv_err_set(err, -EINVAL, "malformed address '%s': %s", quoted(in, q, sizeof(q)), why);
}

int dir_store_name_normalize(const char *in, char out[DIR_STORE_NAME_MAX + 1], hv_err *err)
{
    char q[80];
    if (!in)
        in = "";
    size_t len = strnlen(in, DIR_STORE_NAME_MAX + 1);
    const char *why = NULL;
    if (len == 0)
        why = "empty";
    else if (len > DIR_STORE_NAME_MAX)
        why = "longer than 64 characters";
    else if (in[0] == '.' || in[0] == '-')
        why = "starts with '.' or '-'";
    for (size_t i = 0; !why && i < len; i++) {
        if (!is_alnum_ascii((unsigned char)in[i]) && in[i] != '.' && in[i] != '_' && in[i] != '-')
            why = "only letters, digits and . _ - are allowed";
        out[i] = lower_ascii(in[i]);
    }
    if (why)
        return hv_err_set(err, -EINVAL, "malformed store name '%s': %s",
                          quoted(in, q, sizeof(q)), why);
    out[len] = 0;
    return 0;
}

static int store_address_check(const char *in, hv_err *err)
{
    char q[80];
    size_t len = in ? strnlen(in, DIR_STORE_ADDRESS_MAX + 1) : 0;
    if (len == 0 || len > DIR_STORE_ADDRESS_MAX)
        return hv_err_set(err, -EINVAL, "store address must be 1..%d characters",
                          DIR_STORE_ADDRESS_MAX);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)in[i] <= 0x20 || (unsigned char)in[i] >= 0x7f)
            return hv_err_set(err, -EINVAL, "malformed store address '%s'",
                              quoted(in, q, sizeof(q)));
    return 0;
}

int dir_hostport_split(const char *address, char *host, size_t hostcap, int *port, hv_err *err)
{
    char q[80];
    const char *why = NULL;
    size_t len = address ? strnlen(address, DIR_STORE_ADDRESS_MAX + 1) : 0;
    const char *h = address, *colon = NULL;
    size_t hlen = 0;
    if (len == 0 || len > DIR_STORE_ADDRESS_MAX) {
        why = "empty or too long";
    } else if (address[0] == '[') {
        /* An IPv6 literal: its colons are why it is bracketed. */
        const char *close = memchr(address, ']', len);
        if (!close || close[1] != ':')
            why = "an IPv6 address must be written [addr]:port";
        else {
            h = address + 1;
            hlen = (size_t)(close - h);
            colon = close + 1;
        }
    } else {
        colon = memchr(address, ':', len);
        if (!colon)
            why = "no ':port'";
        else if (memchr(colon + 1, ':', len - (size_t)(colon - address) - 1))
            why = "more than one ':' (write an IPv6 address as [addr]:port)";
        else
            hlen = (size_t)(colon - address);
    }
    for (size_t i = 0; !why && i < hlen; i++)
        if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f || h[i] == '[' ||
            h[i] == ']' || h[i] == '/')
            why = "the host holds a character no host name or address has";
    if (!why && hlen == 0)
        why = "empty host";
    if (!why && hlen >= hostcap)
        why = "host too long";
    long p = 0;
    if (!why) {
        const char *ps = colon + 1;
        size_t plen = len - (size_t)(ps - address);
        if (plen == 0 || plen > 5 || strspn(ps, "0123456789") != plen)
            why = "the port is not a number";
        else if ((p = strtol(ps, NULL, 10)) < 1 || p > 65535)
            why = "the port is not in 1..65535";
    }
    if (why)
        return hv_err_set(err, -EINVAL, "address '%s' is not host:port: %s",
                          quoted(address ? address : "", q, sizeof(q)), why);
    memcpy(host, h, hlen);
    host[hlen] = 0;
    *port = (int)p;
    return 0;
}

static const char *const state_names[] = {"active", "held", "moving", "restoring"};
static const char *const role_names[] = {"primary", "replica"};

const char *dir_state_name(enum dir_state s)
{
    return (unsigned)s < 4 ? state_names[s] : "unknown";
}

int dir_state_parse(const char *s, enum dir_state *out, hv_err *err)
{
    char q[80];
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, state_names[i]) == 0) {
            *out = (enum dir_state)i;
            return 0;
        }
    }
    return hv_err_set(err, -EINVAL, "unknown state '%s' (active, held, moving or restoring)",
                      quoted(s ? s : "", q, sizeof(q)));
}

const char *dir_store_role_name(enum dir_store_role r)
{
    return (unsigned)r < 2 ? role_names[r] : "unknown";
}

int dir_store_role_parse(const char *s, enum dir_store_role *out, hv_err *err)
{
    char q[80];
    for (int i = 0; i < 2; i++) {
        if (s && strcmp(s, role_names[i]) == 0) {
            *out = (enum dir_store_role)i;
            return 0;
        }
    }
    return hv_err_set(err, -EINVAL, "unknown store role '%s' (primary or replica)",
                      quoted(s ? s : "", q, sizeof(q)));
}

static int hash_check(const char *hash, hv_err *err)
{
    if (!hash)
        return 0;
    size_t len = strnlen(hash, DIR_HASH_MAX + 1);
    if (len > DIR_HASH_MAX)
        return hv_err_set(err, -EINVAL, "password hash longer than %d characters", DIR_HASH_MAX);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)hash[i] <= 0x20 || (unsigned char)hash[i] >= 0x7f)
            return hv_err_set(err, -EINVAL, "password hash holds a space or control character");
    return 0;
}

/* The entry points: every name is validated and lowercased here, so each
 * backend gets the same, already safe input. */

int dir_domain_add(dir *d, const char *domain, hv_err *err)
{
    char dom[DIR_DOMAIN_MAX + 1];
    int rc = dir_domain_normalize(domain, dom, err);
    return rc < 0 ? rc : d->be->domain_add(d, dom, err);
}

int dir_domain_del(dir *d, const char *domain, hv_err *err)
{
    char dom[DIR_DOMAIN_MAX + 1];
    int rc = dir_domain_normalize(domain, dom, err);
    return rc < 0 ? rc : d->be->domain_del(d, dom, err);
}

int dir_domain_exists(dir *d, const char *domain, hv_err *err)
{
    char dom[DIR_DOMAIN_MAX + 1];
    int rc = dir_domain_normalize(domain, dom, err);
    return rc < 0 ? rc : d->be->domain_exists(d, dom, err);
}

int dir_domain_list(dir *d, dir_domain_cb cb, void *ctx, hv_err *err)
{
    return d->be->domain_list(d, cb, ctx, err);
}

int dir_account_add(dir *d, const char *address, const char *password_hash,
                    const char *store, uint64_t quota_bytes, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1], st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0)
        rc = dir_store_name_normalize(store, st, err);
    if (rc == 0)
        rc = hash_check(password_hash, err);
    if (rc == 0 && quota_bytes > INT64_MAX)
        rc = hv_err_set(err, -EINVAL, "quota too large");
    if (rc < 0)
        return rc;
    if (password_hash && !*password_hash)
        password_hash = NULL;
    return d->be->account_add(d, addr, strchr(addr, '@') + 1, password_hash, st, quota_bytes,
                              err);
}

int dir_account_del(dir *d, const char *address, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    return rc < 0 ? rc : d->be->account_del(d, addr, err);
}

int dir_account_get(dir *d, const char *address, dir_account *out, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    return rc < 0 ? rc : d->be->account_get(d, addr, out, err);
}

int dir_account_list(dir *d, const char *domain, dir_account_cb cb, void *ctx, hv_err *err)
{
    if (!domain)
        return d->be->account_list(d, NULL, cb, ctx, err);
    char dom[DIR_DOMAIN_MAX + 1];
    int rc = dir_domain_normalize(domain, dom, err);
    return rc < 0 ? rc : d->be->account_list(d, dom, cb, ctx, err);
}

int dir_account_set_password(dir *d, const char *address, const char *password_hash,
                             hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0)
        rc = hash_check(password_hash, err);
    if (rc < 0)
        return rc;
    if (password_hash && !*password_hash)
        password_hash = NULL;
    return d->be->account_set_password(d, addr, password_hash, err);
}

int dir_account_set_state(dir *d, const char *address, enum dir_state state, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0 && (unsigned)state > DIR_STATE_RESTORING)
        rc = hv_err_set(err, -EINVAL, "unknown state %d", (int)state);
    return rc < 0 ? rc : d->be->account_set_state(d, addr, state, err);
}

int dir_account_set_quota(dir *d, const char *address, uint64_t quota_bytes, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0 && quota_bytes > INT64_MAX)
        rc = hv_err_set(err, -EINVAL, "quota too large");
    return rc < 0 ? rc : d->be->account_set_quota(d, addr, quota_bytes, err);
}

int dir_account_set_store(dir *d, const char *address, const char *store, uint32_t slot,
                          hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1], st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0)
        rc = dir_store_name_normalize(store, st, err);
    return rc < 0 ? rc : d->be->account_set_store(d, addr, st, slot, err);
}

int dir_account_move_commit(dir *d, const char *address, const char *store, uint32_t slot,
                            enum dir_state state, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1], st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0)
        rc = dir_store_name_normalize(store, st, err);
    if (rc == 0 && (unsigned)state > DIR_STATE_RESTORING)
        rc = hv_err_set(err, -EINVAL, "unknown state %d", (int)state);
    return rc < 0 ? rc : d->be->account_move_commit(d, addr, st, slot, state, err);
}

int dir_account_login_attempt(dir *d, const char *address, int64_t when, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    return rc < 0 ? rc : d->be->account_login_attempt(d, addr, when, err);
}

int dir_alias_add(dir *d, const char *address, const char *target, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1], tgt[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    if (rc == 0)
        rc = dir_address_normalize(target, tgt, err);
    if (rc == 0 && strcmp(addr, tgt) == 0)
        rc = hv_err_set(err, -ELOOP, "alias %s would point to itself", addr);
    return rc < 0 ? rc : d->be->alias_add(d, addr, strchr(addr, '@') + 1, tgt, err);
}

int dir_alias_del(dir *d, const char *address, hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    return rc < 0 ? rc : d->be->alias_del(d, addr, err);
}

int dir_alias_get(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1], hv_err *err)
{
    char addr[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, addr, err);
    return rc < 0 ? rc : d->be->alias_get(d, addr, out, err);
}

int dir_alias_resolve(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1], hv_err *err)
{
    char first[DIR_ADDRESS_MAX + 1], cur[DIR_ADDRESS_MAX + 1], next[DIR_ADDRESS_MAX + 1];
    int rc = dir_address_normalize(address, first, err);
    if (rc < 0)
        return rc;
    memcpy(cur, first, sizeof(cur));
    dir_account acct;
    for (int depth = 0; depth <= ALIAS_DEPTH_MAX; depth++) {
        rc = d->be->account_get(d, cur, &acct, err);
        if (rc == 0) {
            memcpy(out, cur, strlen(cur) + 1);
            return 0;
        }
        if (rc != -ENOENT)
            return rc;
        rc = d->be->alias_get(d, cur, next, err);
        if (rc == -ENOENT && depth == 0)
            return hv_err_set(err, -ENOENT, "no account or alias %s", cur);
        if (rc == -ENOENT)
            return hv_err_set(err, -ENOENT, "alias %s leads to %s, which is no account", first,
                              cur);
        if (rc < 0)
            return rc;
        memcpy(cur, next, sizeof(cur));
    }
    return hv_err_set(err, -ELOOP, "alias %s: more than %d aliases in a row (a loop?)", first,
                      ALIAS_DEPTH_MAX);
}

int dir_alias_list(dir *d, dir_alias_cb cb, void *ctx, hv_err *err)
{
    return d->be->alias_list(d, cb, ctx, err);
}

int dir_store_add(dir *d, const char *name, const char *address, enum dir_store_role role,
                  hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_store_name_normalize(name, st, err);
    if (rc == 0)
        rc = store_address_check(address, err);
    if (rc == 0 && (unsigned)role > DIR_ROLE_REPLICA)
        rc = hv_err_set(err, -EINVAL, "unknown store role %d", (int)role);
    return rc < 0 ? rc : d->be->store_add(d, st, address, role, err);
}

int dir_store_get(dir *d, const char *name, dir_store *out, hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_store_name_normalize(name, st, err);
    return rc < 0 ? rc : d->be->store_get(d, st, out, err);
}

int dir_store_list(dir *d, dir_store_cb cb, void *ctx, hv_err *err)
{
    return d->be->store_list(d, cb, ctx, err);
}

int dir_store_set_epoch(dir *d, const char *name, uint64_t epoch, hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_store_name_normalize(name, st, err);
    if (rc == 0 && epoch > INT64_MAX)
        rc = hv_err_set(err, -EINVAL, "epoch too large");
    return rc < 0 ? rc : d->be->store_set_epoch(d, st, epoch, err);
}

int dir_store_set_role(dir *d, const char *name, enum dir_store_role role, hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_store_name_normalize(name, st, err);
    if (rc == 0 && (unsigned)role > DIR_ROLE_REPLICA)
        rc = hv_err_set(err, -EINVAL, "unknown store role %d", (int)role);
    return rc < 0 ? rc : d->be->store_set_role(d, st, role, err);
}

int dir_store_set_address(dir *d, const char *name, const char *address, hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1];
    int rc = dir_store_name_normalize(name, st, err);
    if (rc == 0)
        rc = store_address_check(address, err);
    return rc < 0 ? rc : d->be->store_set_address(d, st, DIR_SERVICE_IMAP, address, err);
}

/* The LMTP and repl addresses are dialled by Haven itself (the queue,
 * `haven move`), so they must be host:port now rather than fail at every
 * delivery later; "" unsets. */
static int service_address_set(dir *d, const char *name, enum dir_store_service service,
                               const char *address, hv_err *err)
{
    char st[DIR_STORE_NAME_MAX + 1], host[DIR_STORE_ADDRESS_MAX + 1];
    int port;
    if (!address)
        address = "";
    int rc = dir_store_name_normalize(name, st, err);
    if (rc == 0 && *address)
        rc = dir_hostport_split(address, host, sizeof(host), &port, err);
    return rc < 0 ? rc : d->be->store_set_address(d, st, service, address, err);
}

int dir_store_set_lmtp_address(dir *d, const char *name, const char *address, hv_err *err)
{
    return service_address_set(d, name, DIR_SERVICE_LMTP, address, err);
}

int dir_store_set_repl_address(dir *d, const char *name, const char *address, hv_err *err)
{
    return service_address_set(d, name, DIR_SERVICE_REPL, address, err);
}

int dir_version(dir *d, uint64_t *out, hv_err *err) { return d->be->version(d, out, err); }

int dir_watch_fd(dir *d) { return d->be->watch_fd(d); }

int dir_watch_drain(dir *d, uint64_t *version_out, hv_err *err)
{
    return d->be->watch_drain(d, version_out, err);
}

/* ---- one handle per thread ---- */

static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static void thread_handle_free(void *p) { dir_close(p); }
static void thread_key_make(void) { pthread_key_create(&thread_key, thread_handle_free); }

dir *dir_thread(const char *spec, hv_err *err)
{
    pthread_once(&thread_key_once, thread_key_make);
    dir *d = pthread_getspecific(thread_key);
    if (d)
        return d;
    if (dir_open(spec, &d, err) < 0)
        return NULL;
    pthread_setspecific(thread_key, d);
    return d;
}
