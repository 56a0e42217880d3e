/*
 * imap_cmd_auth.c - the commands around logging in: CAPABILITY, NOOP,
 * LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE PLAIN, ENABLE, NAMESPACE.
 *
 * Passwords travel only over TLS, or in clear text from loopback when the
 * config allows it. A failed login is answered late (the delay grows with
 * the failures from that address), and a login to an account that is not
 * active is refused with the reason and recorded, so the restore scheduler
 * can move that account up its queue.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "dir/password.h"
#include "imap/imap_internal.h"
#include "lib/log.h"

void imap_cmd_capability(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_out(s, "* CAPABILITY %s\r\n", imap_capabilities(s));
    imap_tagged(s, "OK", "CAPABILITY completed");
}

void imap_cmd_noop(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_tagged(s, "OK", "NOOP completed");
}

void imap_cmd_logout(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_out(s, "* BYE Haven logging out\r\n");
    imap_out(s, "%s OK LOGOUT completed\r\n", s->tag);
    s->after = AFTER_CLOSE;
}

void imap_cmd_id(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_out(s, "* ID (\"name\" \"Haven\" \"vendor\" \"Haven\")\r\n");
    imap_tagged(s, "OK", "ID completed");
}

void imap_cmd_starttls(imap_session *s, const imap_command *c)
{
    (void)c;
    if (s->tls) {
        imap_tagged(s, "BAD", "TLS is already active");
        return;
    }
    imap_out(s, "%s OK Begin TLS negotiation now\r\n", s->tag);
    s->after = AFTER_STARTTLS;
}

/* ---- password login ---- */

static unsigned fail_slot(const char *addr)
{
    unsigned h = 2166136261u;
    for (const char *p = addr; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % 256;
}

/* Counts a failure from this client address; returns the delay to apply. */
static unsigned note_failure(imap_server *srv, const char *addr)
{
    pthread_mutex_lock(&srv->fmu);
    unsigned i = fail_slot(addr);
    int64_t now = (int64_t)time(NULL);
    if (strcmp(srv->fails[i].addr, addr) != 0 || now - srv->fails[i].last > 3600) {
        snprintf(srv->fails[i].addr, sizeof(srv->fails[i].addr), "%s", addr);
        srv->fails[i].fails = 0;
    }
    unsigned n = ++srv->fails[i].fails;
    srv->fails[i].last = now;
    pthread_mutex_unlock(&srv->fmu);
    unsigned shift = n > 4 ? 4 : n - 1;
    return srv->lim.auth_fail_delay_ms << shift;
}

static void clear_failures(imap_server *srv, const char *addr)
{
    pthread_mutex_lock(&srv->fmu);
    unsigned i = fail_slot(addr);
    if (strcmp(srv->fails[i].addr, addr) == 0)
        srv->fails[i].fails = 0;
    pthread_mutex_unlock(&srv->fmu);
}

static void login_failed(imap_session *s, const char *user, const char *why)
{
    unsigned delay = note_failure(s->srv, s->peer);
    log_info("imap: session=%s peer=%s user=%s login failed reason=\"%s\" delay_ms=%u", s->id,
             s->peer, user, why, delay);
    /* The loop holds the answer back (imap_session_job_done); the worker
     * goes on with other sessions' commands. */
    s->delay_ms = delay > 30000 ? 30000 : delay;
    imap_out(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n", s->tag);
}

static void create_default_mailboxes(imap_session *s)
{
    static const struct { const char *name; uint32_t use; } defs[] = {
        {"INBOX", 0},
        {"Drafts", STORE_USE_DRAFTS},
        {"Sent", STORE_USE_SENT},
        {"Trash", STORE_USE_TRASH},
        {"Junk", STORE_USE_JUNK},
        {"Archive", STORE_USE_ARCHIVE},
    };
    store_account *st = s->acct->st;
    if (store_setting_get(st, "haven.default-mailboxes"))
        return;
    hv_err err;
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        if (store_mailbox_find(st, defs[i].name, NULL) == 0)
            continue;
        if (store_mailbox_create(st, defs[i].name, defs[i].use, NULL, &err) == 0 &&
            strcmp(defs[i].name, "INBOX") != 0)
            store_subscribe(st, defs[i].name, 1, &err);
    }
    store_subscribe(st, "INBOX", 1, &err);
    store_setting_set(st, "haven.default-mailboxes", "1", &err);
}

/* Checks a user name and password and, on success, moves the session to
 * the authenticated state. Writes the tagged response either way. */
static void do_login(imap_session *s, const char *user_in, const char *pass)
{
    char user[DIR_ADDRESS_MAX + 1];
    hv_err err = {0};
    if (dir_address_normalize(user_in, user, &err) < 0) {
        login_failed(s, "-", "malformed user name");
        return;
    }
    dir *d = imap_worker_dir(s->srv, &err);
    if (!d) {
        log_error("imap: session=%s directory unavailable: %s", s->id, err.msg);
        imap_out(s, "%s NO [UNAVAILABLE] directory unavailable, try again later\r\n", s->tag);
        return;
    }
    dir_account acc;
    if (dir_account_get(d, user, &acc, &err) < 0) {
        if (err.code != -ENOENT) {
            log_error("imap: session=%s directory lookup failed: %s", s->id, err.msg);
            imap_out(s, "%s NO [UNAVAILABLE] directory unavailable, try again later\r\n",
                     s->tag);
            return;
        }
        login_failed(s, user, "no such account");
        return;
    }
    if (password_verify(pass, acc.password_hash) != 0) {
        login_failed(s, user, "wrong password");
        return;
    }
    if (acc.state != DIR_STATE_ACTIVE) {
        /* Tell the scheduler someone is waiting for this account. */
        dir_account_login_attempt(d, user, (int64_t)time(NULL), NULL);
        const char *why = acc.state == DIR_STATE_MOVING      ? "is being moved"
                          : acc.state == DIR_STATE_RESTORING ? "is being restored"
                                                             : "is on hold";
        log_info("imap: session=%s user=%s login refused state=%s", s->id, user,
                 dir_state_name(acc.state));
        imap_out(s, "%s NO [UNAVAILABLE] Your mailbox %s; please try again later\r\n", s->tag,
                 why);
        return;
    }
    const char *here = conf_get(s->srv->conf, "store_name");
    if (strcmp(acc.store, here) != 0) {
        /* Served by another store (the proxy knows where): never open or
         * create a copy here. */
        log_info("imap: session=%s user=%s login refused reason=\"account lives on store %s, "
                 "this is %s\"", s->id, user, acc.store, here);
        imap_out(s, "%s NO [UNAVAILABLE] Your mailbox is served by another server; connect "
                 "through the proxy\r\n", s->tag);
        return;
    }
    imap_account *a = imap_account_get(s->srv, user, &err);
    if (!a) {
        log_error("imap: session=%s user=%s store unavailable: %s", s->id, user, err.msg);
        imap_out(s, "%s NO [UNAVAILABLE] %s\r\n", s->tag,
                 err.code == -EUCLEAN ? "Your mailbox needs repair; the operators are told"
                                      : "Your mailbox is unavailable; try again later");
        return;
    }
    char fence_why[256];
    if (store_account_fenced(a->st, fence_why, sizeof(fence_why))) {
        /* Moved (or being moved) to another store: the copy here is no
         * longer the account's truth. */
        imap_account_put(s->srv, a);
        log_info("imap: session=%s user=%s login refused reason=\"%s\"", s->id, user, fence_why);
        imap_out(s, "%s NO [UNAVAILABLE] Your mailbox is not served here now (%s); please try "
                 "again\r\n", s->tag, fence_why);
        return;
    }
    clear_failures(s->srv, s->peer);
    pthread_mutex_lock(&a->mu);
    s->acct = a;
    snprintf(s->user, sizeof(s->user), "%s", user);
    s->state = IMAP_AUTH;
    create_default_mailboxes(s);
    pthread_mutex_unlock(&a->mu);
    imap_parser_limits lim = {.max_line = s->srv->lim.max_line,
                              .max_literal = s->srv->lim.max_message,
                              .max_total = s->srv->lim.max_message + 65536};
    imap_parser_set_limits(s->parser, &lim);
    log_info("imap: session=%s user=%s login peer=%s tls=%d", s->id, user, s->peer, s->tls);
    imap_out(s, "%s OK [CAPABILITY %s] Logged in\r\n", s->tag, imap_capabilities(s));
}

static int clear_text_allowed(imap_session *s)
{
    return s->tls || (s->is_loopback && s->srv->plaintext_loopback);
}

void imap_cmd_login(imap_session *s, const imap_command *c)
{
    if (c->nargs != 2 || c->args[0].type == IMAP_ARG_LIST || c->args[1].type == IMAP_ARG_LIST ||
        c->args[0].type == IMAP_ARG_NIL || c->args[1].type == IMAP_ARG_NIL) {
        imap_tagged(s, "BAD", "usage: LOGIN user password");
        return;
    }
    if (!clear_text_allowed(s)) {
        imap_tagged(s, "NO", "[PRIVACYREQUIRED] Use STARTTLS or port 993 first");
        return;
    }
    do_login(s, c->args[0].str, c->args[1].str);
}

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Strict base64; returns decoded length or -1. out must hold len*3/4+3. */
static long b64_decode(const char *in, size_t len, char *out)
{
    long o = 0;
    unsigned acc = 0;
    int bits = 0;
    size_t i;
    for (i = 0; i < len && in[i] != '='; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    for (; i < len; i++)
        if (in[i] != '=')
            return -1;
    return o;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd */
static void sasl_plain(imap_session *s, const char *b64)
{
    size_t len = strlen(b64);
    if (len > 4096) {
        imap_out(s, "%s BAD SASL response too long\r\n", s->tag);
        return;
    }
    char *raw = malloc(len + 4);
    long n = strcmp(b64, "=") == 0 ? 0 : b64_decode(b64, len, raw);
    if (n < 0) {
        free(raw);
        imap_out(s, "%s BAD invalid base64\r\n", s->tag);
        return;
    }
    raw[n] = 0;
    char *authz = raw, *authc = memchr(raw, 0, (size_t)n);
    char *pass = authc && authc + 1 < raw + n ? memchr(authc + 1, 0, (size_t)(raw + n - authc - 1))
                                              : NULL;
    if (!authc || !pass) {
        free(raw);
        imap_out(s, "%s BAD malformed PLAIN response\r\n", s->tag);
        return;
    }
    authc++;
    pass++;
    if (*authz && strcasecmp(authz, authc) != 0) {
        login_failed(s, "-", "authorization identity differs (not supported)");
        free(raw);
        return;
    }
    do_login(s, authc, pass);
    memset(raw, 0, (size_t)n);
    free(raw);
}

void imap_cmd_authenticate(imap_session *s, const imap_command *c)
{
    if (c->nargs < 1 || c->args[0].type != IMAP_ARG_ATOM) {
        imap_tagged(s, "BAD", "usage: AUTHENTICATE mechanism [initial-response]");
        return;
    }
    if (strcasecmp(c->args[0].str, "PLAIN") != 0) {
        imap_tagged(s, "NO", "Unsupported authentication mechanism");
        return;
    }
    if (!clear_text_allowed(s)) {
        imap_tagged(s, "NO", "[PRIVACYREQUIRED] Use STARTTLS or port 993 first");
        return;
    }
    if (c->nargs >= 2) {
        sasl_plain(s, c->args[1].str);
        return;
    }
    imap_out(s, "+ \r\n");
    s->sasl_step = 1;
    s->after = AFTER_SASL;
}

void imap_sasl_line(imap_session *s, const char *line)
{
    s->sasl_step = 0;
    if (strcmp(line, "*") == 0) {
        imap_out(s, "%s BAD Authentication cancelled\r\n", s->tag);
        return;
    }
    sasl_plain(s, line);
}

void imap_cmd_enable(imap_session *s, const imap_command *c)
{
    if (c->nargs == 0) {
        /* RFC 5161: "ENABLE" 1*(SP capability); a bare ENABLE is a syntax
         * error, not an empty success. */
        imap_tagged(s, "BAD", "usage: ENABLE capability...");
        return;
    }
    buf b;
    buf_init(&b);
    for (size_t i = 0; i < c->nargs; i++) {
        const char *x = c->args[i].str;
        if (c->args[i].type != IMAP_ARG_ATOM)
            continue;
        if (strcasecmp(x, "CONDSTORE") == 0 && !s->condstore) {
            s->condstore = 1;
            buf_append_str(&b, " CONDSTORE");
        } else if (strcasecmp(x, "QRESYNC") == 0 && !s->qresync) {
            s->qresync = s->condstore = 1;
            buf_append_str(&b, " QRESYNC");
        } else if (strcasecmp(x, "IMAP4rev2") == 0 && !s->rev2) {
            s->rev2 = 1;
            buf_append_str(&b, " IMAP4rev2");
        }
    }
    imap_out(s, "* ENABLED%s\r\n", b.len ? (char *)b.data : "");
    buf_free(&b);
    imap_tagged(s, "OK", "ENABLE completed");
}

void imap_cmd_namespace(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_out(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
    imap_tagged(s, "OK", "NAMESPACE completed");
}

void imap_cmd_idle(imap_session *s, const imap_command *c)
{
    (void)c;
    if (s->state == IMAP_SELECTED)
        imap_view_sync(s, 1);
    imap_out(s, "+ idling\r\n");
    s->after = AFTER_IDLE;
}

void imap_idle_done(imap_session *s)
{
    const char *line = (const char *)s->line.data;
    if (strcasecmp(line, "DONE") != 0) {
        imap_out(s, "%s BAD expected DONE\r\n", s->tag);
        return;
    }
    imap_tagged(s, "OK", "IDLE terminated");
}
