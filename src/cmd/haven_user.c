/*
 * haven_user.c - `haven user`: accounts in the directory.
 *
 *   user add ADDRESS [--password-stdin] [--quota BYTES] [--store NAME]
 *   user del ADDRESS
 *   user list [DOMAIN]
 *   user passwd ADDRESS [--password-stdin]
 *   user state ADDRESS active|held|moving|restoring
 *   user quota ADDRESS BYTES
 *   user show ADDRESS
 *
 * Everything is checked before anything is written, so a refused command
 * leaves the directory and the stores as they were. `add` creates the
 * account's store folder (with INBOX) before the directory entry: once
 * the directory names an account, every service may serve it, so its
 * folder must already be there. `del` removes only the entry; mail is
 * deleted by an operator, deliberately, never as a side effect.
 *
 * Passwords come from standard input's first line or, for `passwd` on a
 * terminal, are typed twice without echo; they are never arguments, where
 * every user of the machine could read them in the process list.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"
#include "dir/password.h"
#include "store/store.h"

static const char usage_text[] =
    "usage: haven [-c CONF] user COMMAND ...\n"
    "  user add ADDRESS [--password-stdin] [--quota BYTES] [--store NAME]\n"
    "      Add an account (and its domain when new) and create its mail folder.\n"
    "      Without --password-stdin it has no password and cannot log in yet.\n"
    "  user del ADDRESS\n"
    "      Remove the account from the directory; its mail folder is kept.\n"
    "  user list [DOMAIN]\n"
    "      One account per line: address, state, store, quota.\n"
    "  user passwd ADDRESS [--password-stdin]\n"
    "      Set the password: typed twice on a terminal, else the first line of\n"
    "      standard input.\n"
    "  user state ADDRESS active|held|moving|restoring\n"
    "      Only active accounts are served; mail for the others is held.\n"
    "  user quota ADDRESS BYTES\n"
    "      BYTES may end in K, M, G or T (powers of 1024); 0 means no quota.\n"
    "  user show ADDRESS\n"
    "      Everything the directory knows about the account.\n";

static int usage_fail(const char *form)
{
    fprintf(stderr, "haven: usage: haven user %s\n", form);
    return 2;
}

/* --- passwords --- */

static struct termios saved_tio;
static volatile sig_atomic_t echo_off;

/* Ctrl-C at the password prompt must not leave the terminal without echo. */
static void restore_echo(int sig)
{
    if (echo_off)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* cmd_fail for helpers that return 0 / -1. */
static int fail_line(const char *reason)
{
    cmd_fail("%s", reason);
    return -1;
}

/* Reads one line of at most PASSWORD_MAX bytes (a trailing CR LF or LF is
 * not part of it). 0, or -1 after printing the reason. */
static int read_line(FILE *f, char *out, size_t outlen)
{
    size_t n = 0;
    int ch, nul = 0, any = 0;
    while ((ch = getc(f)) != EOF && ch != '\n') {
        any = 1;
        if (ch == 0)
            nul = 1;
        if (n + 1 < outlen)
            out[n++] = (char)ch;
        else
            break;
    }
    out[n] = 0;
    if (n && out[n - 1] == '\r')
        out[--n] = 0;
    if (ferror(f))
        return fail_line("cannot read the password: read error");
    if (!any && ch == EOF)
        return fail_line("no password on standard input");
    if (nul)
        return fail_line("the password holds a NUL byte");
    if (n > PASSWORD_MAX) {
        cmd_fail("password longer than %d bytes", PASSWORD_MAX);
        return -1;
    }
    return 0;
}

static int prompt_noecho(const char *prompt, char *out, size_t outlen)
{
    struct termios tio;
    if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return fail_line("cannot read the terminal settings");
    tio = saved_tio;
    tio.c_lflag &= ~(tcflag_t)ECHO;
    tio.c_lflag |= ECHONL;
    struct sigaction sa = {.sa_handler = restore_echo}, old_int, old_term, old_hup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    int rc = -1;
    /* Echo goes off (and typeahead, typed while it was on, is dropped)
     * before the prompt appears: whoever answers the prompt is then sure
     * to be answering a terminal that neither echoes nor discards. */
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &tio) == 0) {
        echo_off = 1;
        fputs(prompt, stderr);
        fflush(stderr);
        rc = read_line(stdin, out, outlen);
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
        echo_off = 0;
    } else {
        cmd_fail("cannot turn off the terminal's echo");
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    return rc;
}

/* Gets a password and hashes it into hash: from stdin's first line, or
 * asked twice on the terminal when interactive is set and stdin is one. */
static int get_password_hash(const char *address, int interactive, char *hash, size_t hashlen)
{
    char pw[PASSWORD_MAX + 3], again[PASSWORD_MAX + 3];
    int rc;
    if (interactive && isatty(STDIN_FILENO)) {
        char prompt[DIR_ADDRESS_MAX + 32];
        snprintf(prompt, sizeof(prompt), "New password for %s: ", address);
        rc = prompt_noecho(prompt, pw, sizeof(pw));
        if (rc == 0)
            rc = prompt_noecho("Again: ", again, sizeof(again));
        if (rc == 0 && strcmp(pw, again) != 0) {
            cmd_fail("the passwords do not match; nothing changed");
            rc = -1;
        }
        explicit_bzero(again, sizeof(again));
    } else {
        rc = read_line(stdin, pw, sizeof(pw));
    }
    hv_err err = {0};
    if (rc == 0 && password_hash(pw, hash, hashlen, &err) < 0) {
        cmd_fail("%s", err.msg);
        rc = -1;
    }
    explicit_bzero(pw, sizeof(pw));
    return rc;
}

/* --- sizes --- */

/* Digits with an optional K, M, G or T (powers of 1024). */
static int parse_bytes(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    int shift = 0;
    switch (*s) {
    case 0: break;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    default: return -1;
    }
    if (*s && s[1])
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    v <<= shift;
    if (v > INT64_MAX)
        return -1;
    *out = v;
    return 0;
}

static void format_quota(uint64_t q, char *out, size_t n)
{
    if (q == 0)
        snprintf(out, n, "unlimited");
    else
        snprintf(out, n, "%llu", (unsigned long long)q);
}

static void format_time(int64_t t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t == 0 || !gmtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, n, "never");
}

/* --- helpers shared by the subcommands --- */

/* 0, or -1 after printing the reason. */
static int open_dir(haven_ctx *ctx, dir **d)
{
    hv_err err = {0};
    if (dir_open_conf(ctx->conf, d, &err) < 0) {
        cmd_fail("%s", err.msg);
        return -1;
    }
    return 0;
}

/* The mail folder of an account when it lives on this node's store. */
static int local_mail_dir(haven_ctx *ctx, const char *address, const char *store, char *out,
                          size_t outlen)
{
    if (strcmp(store, conf_get(ctx->conf, "store_name")) != 0)
        return -1;
    char data_dir[4096];
    conf_path(ctx->conf, "data_dir", data_dir, sizeof(data_dir));
    return store_account_dir(data_dir, address, out, outlen, NULL) < 0 ? -1 : 0;
}

/* Creates the account's folder and INBOX; both may exist already (an
 * account deleted from the directory and added again keeps its mail).
 * 0, or -1 after printing the reason. */
static int create_mail_dir(const char *path, const char *address)
{
    hv_err err = {0};
    store_account *a;
    if (store_open(path, address, STORE_OPEN_CREATE, NULL, &a, &err) < 0) {
        cmd_fail("cannot create the mail folder of %s: %s", address, err.msg);
        return -1;
    }
    store_mailbox_info info;
    int rc = 0;
    if (store_mailbox_find(a, "INBOX", &info) < 0 &&
        store_mailbox_create(a, "INBOX", 0, NULL, &err) < 0) {
        cmd_fail("cannot create INBOX of %s: %s", address, err.msg);
        rc = -1;
    }
    store_close(a);
    return rc;
}

/* --- subcommands --- */

static int user_add(haven_ctx *ctx, int argc, char **argv)
{
    static const char form[] = "add ADDRESS [--password-stdin] [--quota BYTES] [--store NAME]";
    const char *address = NULL, *store = NULL, *quota_arg = NULL;
    int pw_stdin = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--password-stdin") == 0)
            pw_stdin = 1;
        else if (strcmp(a, "--quota") == 0 && i + 1 < argc)
            quota_arg = argv[++i];
        else if (strncmp(a, "--quota=", 8) == 0)
            quota_arg = a + 8;
        else if (strcmp(a, "--store") == 0 && i + 1 < argc)
            store = argv[++i];
        else if (strncmp(a, "--store=", 8) == 0)
            store = a + 8;
        else if (a[0] == '-' || address)
            return usage_fail(form);
        else
            address = a;
    }
    if (!address)
        return usage_fail(form);

    hv_err err = {0};
    char addr[DIR_ADDRESS_MAX + 1], st[DIR_STORE_NAME_MAX + 1];
    if (dir_address_normalize(address, addr, &err) < 0)
        return cmd_fail("%s", err.msg);
    if (dir_store_name_normalize(store ? store : conf_get(ctx->conf, "store_name"), st, &err) < 0)
        return cmd_fail("%s", err.msg);
    uint64_t quota = 0;
    if (quota_arg && parse_bytes(quota_arg, &quota) < 0)
        return cmd_fail("bad quota '%s' (bytes, optionally with K, M, G or T)", quota_arg);
    char hash[PASSWORD_HASH_MAX] = "";
    if (pw_stdin && get_password_hash(addr, 0, hash, sizeof(hash)) < 0)
        return 1;

    dir *d = NULL;
    if (open_dir(ctx, &d) < 0) {
        explicit_bzero(hash, sizeof(hash));
        return 1;
    }
    dir_account acct;
    char target[DIR_ADDRESS_MAX + 1];
    int rc = 1;
    if (dir_account_get(d, addr, &acct, &err) == 0) {
        cmd_fail("account %s already exists", addr);
        goto out;
    }
    if (dir_alias_get(d, addr, target, &err) == 0) {
        cmd_fail("%s is already an alias (of %s)", addr, target);
        goto out;
    }

    char path[4400];
    int local = local_mail_dir(ctx, addr, st, path, sizeof(path)) == 0;
    struct stat sb;
    int existed = local && stat(path, &sb) == 0;
    if (local && create_mail_dir(path, addr) < 0)
        goto out;
    if (dir_account_add(d, addr, hash[0] ? hash : NULL, st, quota, &err) < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }
    printf("added %s on store %s", addr, st);
    if (local)
        printf(existed ? "; kept its existing mail folder %s" : "; mail folder %s", path);
    printf("\n");
    if (!hash[0])
        printf("%s has no password, so it cannot log in: set one with "
               "'haven user passwd %s'\n", addr, addr);
    rc = 0;
out:
    explicit_bzero(hash, sizeof(hash));
    dir_close(d);
    return rc;
}

static int user_del(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 3 || argv[2][0] == '-')
        return usage_fail("del ADDRESS");
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    hv_err err = {0};
    dir_account a;
    int rc = 1;
    if (dir_account_get(d, argv[2], &a, &err) < 0 || dir_account_del(d, a.address, &err) < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }
    char path[4400];
    struct stat sb;
    if (local_mail_dir(ctx, a.address, a.store, path, sizeof(path)) == 0 && stat(path, &sb) == 0)
        printf("deleted %s; its mail is kept in %s (remove it when no longer needed)\n",
               a.address, path);
    else
        printf("deleted %s; its mail on store %s is kept\n", a.address, a.store);
    rc = 0;
out:
    dir_close(d);
    return rc;
}

static int print_account(void *ctx, const dir_account *a)
{
    (void)ctx;
    char q[32];
    format_quota(a->quota_bytes, q, sizeof(q));
    printf("%s %s %s %s\n", a->address, dir_state_name(a->state), a->store, q);
    return 0;
}

static int user_list(haven_ctx *ctx, int argc, char **argv)
{
    if (argc > 3 || (argc == 3 && argv[2][0] == '-'))
        return usage_fail("list [DOMAIN]");
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    hv_err err = {0};
    int rc = dir_account_list(d, argc == 3 ? argv[2] : NULL, print_account, NULL, &err);
    dir_close(d);
    return rc < 0 ? cmd_fail("%s", err.msg) : 0;
}

static int user_passwd(haven_ctx *ctx, int argc, char **argv)
{
    static const char form[] = "passwd ADDRESS [--password-stdin]";
    const char *address = NULL;
    int pw_stdin = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--password-stdin") == 0)
            pw_stdin = 1;
        else if (argv[i][0] == '-' || address)
            return usage_fail(form);
        else
            address = argv[i];
    }
    if (!address)
        return usage_fail(form);
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    hv_err err = {0};
    dir_account a;
    char hash[PASSWORD_HASH_MAX] = "";
    int rc = 1;
    /* Known account first: nobody should type a password for a typo. */
    if (dir_account_get(d, address, &a, &err) < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }
    if (get_password_hash(a.address, !pw_stdin, hash, sizeof(hash)) < 0)
        goto out;
    if (dir_account_set_password(d, a.address, hash, &err) < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }
    printf("password of %s changed\n", a.address);
    rc = 0;
out:
    explicit_bzero(hash, sizeof(hash));
    dir_close(d);
    return rc;
}

static int user_state(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 4 || argv[2][0] == '-' || argv[3][0] == '-')
        return usage_fail("state ADDRESS active|held|moving|restoring");
    hv_err err = {0};
    enum dir_state state;
    char addr[DIR_ADDRESS_MAX + 1];
    if (dir_address_normalize(argv[2], addr, &err) < 0 ||
        dir_state_parse(argv[3], &state, &err) < 0)
        return cmd_fail("%s", err.msg);
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    dir_account a;
    int rc = dir_account_get(d, addr, &a, &err);
    if (rc == 0)
        rc = dir_account_set_state(d, addr, state, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    if (a.state == state)
        printf("%s is %s (unchanged)\n", addr, dir_state_name(state));
    else
        printf("%s is now %s (was %s)\n", addr, dir_state_name(state), dir_state_name(a.state));
    return 0;
}

static int user_quota(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 4 || argv[2][0] == '-')
        return usage_fail("quota ADDRESS BYTES");
    uint64_t quota;
    if (parse_bytes(argv[3], &quota) < 0)
        return cmd_fail("bad quota '%s' (bytes, optionally with K, M, G or T)", argv[3]);
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    hv_err err = {0};
    dir_account a;
    int rc = dir_account_get(d, argv[2], &a, &err);
    if (rc == 0)
        rc = dir_account_set_quota(d, a.address, quota, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    char q[32];
    format_quota(quota, q, sizeof(q));
    printf("quota of %s is now %s\n", a.address, q);
    return 0;
}

static int user_show(haven_ctx *ctx, int argc, char **argv)
{
    if (argc != 3 || argv[2][0] == '-')
        return usage_fail("show ADDRESS");
    dir *d = NULL;
    if (open_dir(ctx, &d) < 0)
        return 1;
    hv_err err = {0};
    dir_account a;
    int rc = dir_account_get(d, argv[2], &a, &err);
    dir_close(d);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    char q[32], created[64], login[64], path[4400];
    format_quota(a.quota_bytes, q, sizeof(q));
    format_time(a.created, created, sizeof(created));
    format_time(a.last_login_attempt, login, sizeof(login));
    printf("address: %s\n", a.address);
    printf("state: %s\n", dir_state_name(a.state));
    printf("store: %s\n", a.store);
    printf("slot: %u\n", a.slot);
    printf("quota: %s\n", q);
    printf("password: %s\n", a.password_hash[0] ? "set" : "none (cannot log in)");
    printf("created: %s\n", created);
    printf("last login attempt: %s\n", login);
    if (local_mail_dir(ctx, a.address, a.store, path, sizeof(path)) == 0)
        printf("mail folder: %s\n", path);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(haven_ctx *ctx, int argc, char **argv);
} user_commands[] = {
    {"add", user_add},       {"del", user_del},     {"list", user_list},
    {"passwd", user_passwd}, {"state", user_state}, {"quota", user_quota},
    {"show", user_show},
};

int cmd_user(haven_ctx *ctx, int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(user_commands) / sizeof(user_commands[0]); i++)
        if (strcmp(argv[1], user_commands[i].name) == 0)
            return user_commands[i].fn(ctx, argc, argv);
    fprintf(stderr, "haven: unknown user command '%s' (see 'haven user help')\n", argv[1]);
    return 2;
}
