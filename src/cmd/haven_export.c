/*
 * haven_export.c - `haven export ACCOUNT [MAILBOX] --mbox FILE|- | --maildir DIR`:
 * an account's mail out of the store, as mboxrd or Maildir.
 *
 * A reader only: it opens the store read-only (no lock, so it may run next
 * to havend) and exports the messages each mailbox holds when it gets to
 * that mailbox. Bodies are read through store_blob_read, which checks each
 * blob's SHA-256, so a damaged blob stops the export with its name rather
 * than being written out wrong.
 *
 * Both formats are written so that `haven import` reads them back into the
 * same bytes: CRLF becomes LF except where a line itself ends in CR (see
 * mbox_crlf_to_lf), and mbox bodies get mboxrd ">From " quoting. An mbox
 * FILE appears only when complete (written beside it, then renamed); a
 * Maildir DIR must be new or empty, and each message file appears in cur/
 * only when complete (written in tmp/, then renamed), as Maildir asks.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/fsutil.h"
#include "store/maildir_reader.h"
#include "store/mbox_parser.h"
#include "store/store.h"

#define EXPORT_FLUSH_BYTES (1u << 20)

static const char export_usage[] =
    "usage: haven export ACCOUNT MAILBOX --mbox FILE|-  [--progress]\n"
    "       haven export ACCOUNT [MAILBOX] --maildir DIR [--progress]\n"
    "\n"
    "Writes the messages of MAILBOX (or, for --maildir without MAILBOX, of every\n"
    "mailbox) in uid order.\n"
    "\n"
    "  --mbox FILE     mboxrd: a From line per message with its internal date\n"
    "                  (asctime, UTC), \">From \" quoting, LF line ends. '-' writes\n"
    "                  to standard output. FILE is replaced when complete.\n"
    "  --maildir DIR   a Maildir (cur/, new/, tmp/), one file per message named\n"
    "                  TIME.UuidVuidvalidity.haven:2,FLAGS, mtime = internal date.\n"
    "                  Without MAILBOX: a Maildir++ tree, INBOX in DIR itself and\n"
    "                  mailbox A/B in DIR/.A.B. DIR must be new or empty.\n"
    "  --progress      show progress on stderr even when it is not a terminal\n"
    "\n"
    "Flags travel in Maildir file names (D F R S T); mbox has no place for them.\n"
    "Keywords are not exported.\n";

typedef struct export_run {
    const char *account;
    store_account *a;
    uint64_t messages, bytes;
    int progress, tty, dirty;
    double start, last;
} export_run;

static double export_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void export_progress(export_run *r, int end)
{
    if (!r->progress)
        return;
    double now = export_clock();
    if (end) {
        if (r->dirty)
            fputs("\r\033[K", stderr);
        r->dirty = 0;
        return;
    }
    if (now - r->last < 1.0)
        return;
    r->last = now;
    double secs = now - r->start > 0.001 ? now - r->start : 0.001;
    fprintf(stderr, "%sexport: %" PRIu64 " messages, %.1f MiB, %.0f msg/s%s",
            r->tty ? "\r\033[K" : "", r->messages, (double)r->bytes / 1048576.0,
            (double)r->messages / secs, r->tty ? "" : "\n");
    r->dirty = r->tty;
}

/* Calls fn for each message of mailbox id, with its verified body. */
typedef int (*export_msg_fn)(export_run *r, void *ctx, const store_msg *m, const uint8_t *body,
                             size_t len, hv_err *err);

static int export_mailbox(export_run *r, const store_mailbox_info *mi, export_msg_fn fn,
                          void *ctx, hv_err *err)
{
    uint32_t count;
    int rc = store_msg_count(r->a, mi->id, &count);
    if (rc < 0)
        return hv_err_set(err, rc, "mailbox %s: cannot count its messages", mi->name);
    for (uint32_t i = 0; i < count; i++) {
        store_msg m;
        if (store_msg_at(r->a, mi->id, i, &m) < 0)
            break; /* expunged since we counted */
        char *body;
        size_t len;
        if ((rc = store_blob_read(r->a, &m.blob, &body, &len, err)) < 0) {
            hv_err_prefix(err, "mailbox %s uid %u", mi->name, m.uid);
            return rc;
        }
        rc = fn(r, ctx, &m, (const uint8_t *)body, len, err);
        free(body);
        if (rc < 0)
            return rc;
        r->messages++;
        r->bytes += len;
        export_progress(r, 0);
    }
    return 0;
}

/* ---- mbox ---- */

typedef struct export_mbox {
    int fd;
    const char *path; /* for messages */
    buf out;
} export_mbox;

static int export_mbox_flush(export_mbox *x, hv_err *err)
{
    int rc = fs_write_full(x->fd, x->out.data, x->out.len);
    if (rc < 0) {
        errno = -rc;
        return hv_err_sys(err, "write %s", x->path);
    }
    buf_reset(&x->out);
    return 0;
}

static int export_mbox_msg(export_run *r, void *ctx, const store_msg *m, const uint8_t *body,
                           size_t len, hv_err *err)
{
    (void)r;
    export_mbox *x = ctx;
    mbox_write_message(&x->out, body, len, m->internal_date);
    return x->out.len >= EXPORT_FLUSH_BYTES ? export_mbox_flush(x, err) : 0;
}

static int export_to_mbox(export_run *r, const store_mailbox_info *mi, const char *file,
                          hv_err *err)
{
    export_mbox x = {.fd = 1, .path = "standard output"};
    char tmp[4200] = "";
    int own_fd = 0;
    struct stat st;
    if (strcmp(file, "-") != 0 && stat(file, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* A device or a pipe (/dev/null, a FIFO): write into it. Writing
         * beside it and renaming would replace it with a regular file,
         * which for /dev/null as root breaks the whole machine. */
        x.fd = open(file, O_WRONLY | O_CLOEXEC);
        if (x.fd < 0)
            return hv_err_sys(err, "open %s", file);
        x.path = file;
        own_fd = 1;
    }
    buf_init(&x.out);
    if (strcmp(file, "-") != 0 && !own_fd) {
        snprintf(tmp, sizeof(tmp), "%s.haven-export.%d", file, (int)getpid());
        x.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (x.fd < 0)
            return hv_err_sys(err, "create %s", tmp);
        x.path = tmp;
    }
    int rc = export_mailbox(r, mi, export_mbox_msg, &x, err);
    if (rc == 0)
        rc = export_mbox_flush(&x, err);
    buf_free(&x.out);
    if (x.fd == 1)
        return rc;
    if (own_fd) {
        close(x.fd);
        return rc;
    }
    if (rc == 0 && fsync(x.fd) < 0)
        rc = hv_err_sys(err, "sync %s", tmp);
    close(x.fd);
    if (rc == 0 && rename(tmp, file) < 0)
        rc = hv_err_sys(err, "rename %s to %s", tmp, file);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/* ---- Maildir ---- */

typedef struct export_maildir {
    const char *dir; /* the Maildir being written */
    uint32_t uidvalidity;
    buf out;
} export_maildir;

static int export_maildir_msg(export_run *r, void *ctx, const store_msg *m,
                              const uint8_t *body, size_t len, hv_err *err)
{
    (void)r;
    export_maildir *x = ctx;
    char base[128], suffix[16], tmp[4400], cur[4400];
    /* The uid is zero-padded so that messages of the same second sort by
     * uid, as import orders a Maildir by stamp and then by name. */
    snprintf(base, sizeof(base), "%" PRId64 ".U%010uV%u.haven",
             m->internal_date > 0 ? m->internal_date : (int64_t)0, m->uid, x->uidvalidity);
    maildir_flags_suffix(m->flags, suffix);
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s", x->dir, base);
    snprintf(cur, sizeof(cur), "%s/cur/%s%s", x->dir, base, suffix);
    buf_reset(&x->out);
    mbox_crlf_to_lf(&x->out, body, len, 0);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_sys(err, "create %s", tmp);
    int rc = fs_write_full(fd, x->out.data, x->out.len);
    /* The mtime carries the internal date back on import. */
    struct timespec times[2] = {{.tv_sec = (time_t)m->internal_date},
                                {.tv_sec = (time_t)m->internal_date}};
    if (rc == 0 && futimens(fd, times) < 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, cur) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        errno = -rc;
        return hv_err_sys(err, "write %s", cur);
    }
    return 0;
}

static int export_maildir_layout(const char *dir, int subfolder, hv_err *err)
{
    static const char *const subs[] = {"cur", "new", "tmp"};
    char p[4500];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, subs[i]);
        int rc = fs_mkdir_p(p, 0700, err);
        if (rc < 0)
            return rc;
    }
    if (subfolder) { /* Maildir++ marks subfolders so deliveries know */
        snprintf(p, sizeof(p), "%s/maildirfolder", dir);
        int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return hv_err_sys(err, "create %s", p);
        close(fd);
    }
    return 0;
}

static int export_one_maildir(export_run *r, const store_mailbox_info *mi, const char *dir,
                              int subfolder, hv_err *err)
{
    int rc = export_maildir_layout(dir, subfolder, err);
    if (rc < 0)
        return rc;
    export_maildir x = {.dir = dir, .uidvalidity = mi->uidvalidity};
    buf_init(&x.out);
    rc = export_mailbox(r, mi, export_maildir_msg, &x, err);
    buf_free(&x.out);
    return rc;
}

/* DIR must be absent or empty, so no earlier export's files get mixed in. */
static int export_check_dir(const char *dir, hv_err *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return hv_err_sys(err, "%s", dir);
    }
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            empty = 0;
    closedir(d);
    return empty ? 0 : hv_err_set(err, -EEXIST, "%s is not empty (export into a new folder)", dir);
}

static int export_to_maildir(export_run *r, const char *mailbox, const char *dir, hv_err *err)
{
    int rc = export_check_dir(dir, err);
    if (rc == 0)
        rc = fs_mkdir_p(dir, 0700, err);
    if (rc < 0)
        return rc;
    if (mailbox) {
        store_mailbox_info mi;
        if (store_mailbox_find(r->a, mailbox, &mi) < 0)
            return hv_err_set(err, -ENOENT, "%s has no mailbox %s", r->account, mailbox);
        rc = export_one_maildir(r, &mi, dir, 0, err);
    } else {
        size_t n = store_mailbox_count(r->a);
        for (size_t i = 0; i < n && rc == 0; i++) {
            store_mailbox_info mi;
            if (store_mailbox_at(r->a, i, &mi) < 0)
                break;
            char sub[4200], enc[2048];
            if (strcmp(mi.name, "INBOX") == 0) {
                snprintf(sub, sizeof(sub), "%s", dir);
            } else if (maildir_folder_name(mi.name, enc, sizeof(enc)) < 0) {
                return hv_err_set(err, -EINVAL, "mailbox %s has no Maildir++ name", mi.name);
            } else {
                snprintf(sub, sizeof(sub), "%s/%s", dir, enc);
            }
            /* store_mailbox_info.name lives only until the next call */
            char name[1024];
            snprintf(name, sizeof(name), "%s", mi.name);
            mi.name = name;
            rc = export_one_maildir(r, &mi, sub, strcmp(name, "INBOX") != 0, err);
        }
    }
    if (rc < 0)
        return rc;
    /* One sync for the whole tree instead of one per file. */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) < 0)
        rc = hv_err_sys(err, "sync %s", dir);
    if (fd >= 0)
        close(fd);
    return rc;
}

int cmd_export(haven_ctx *ctx, int argc, char **argv)
{
    const char *pos_args[2] = {0}, *mbox = NULL, *maildir = NULL;
    int npos = 0, progress = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(export_usage, stdout);
            return 0;
        } else if (strcmp(a, "--mbox") == 0 || strcmp(a, "--maildir") == 0) {
            if (i + 1 >= argc || mbox || maildir) {
                fprintf(stderr, "haven: give one of --mbox FILE or --maildir DIR\n%s",
                        export_usage);
                return 2;
            }
            if (strcmp(a, "--mbox") == 0)
                mbox = argv[++i];
            else
                maildir = argv[++i];
        } else if (strcmp(a, "--progress") == 0) {
            progress = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "haven: unknown option '%s'\n%s", a, export_usage);
            return 2;
        } else if (npos < 2) {
            pos_args[npos++] = a;
        } else {
            fprintf(stderr, "haven: too many arguments\n%s", export_usage);
            return 2;
        }
    }
    if (npos < 1 || (!mbox && !maildir)) {
        fputs(export_usage, stderr);
        return 2;
    }
    const char *account = pos_args[0], *mailbox = pos_args[1];
    if (mbox && !mailbox) {
        fprintf(stderr, "haven: --mbox needs a MAILBOX (--maildir can export them all)\n");
        return 2;
    }

    hv_err err = {0};
    char data_dir[4096], dir[4096];
    conf_path(ctx->conf, "data_dir", data_dir, sizeof(data_dir));
    if (store_account_dir(data_dir, account, dir, sizeof(dir), &err) < 0)
        return cmd_fail("%s", err.msg);
    export_run r = {.account = account};
    int rc = store_open(dir, account, STORE_OPEN_READONLY, NULL, &r.a, &err);
    if (rc == -ENOENT)
        return cmd_fail("no such account %s", account);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    r.tty = isatty(2);
    r.progress = progress || r.tty;
    r.start = r.last = export_clock();

    if (mbox) {
        store_mailbox_info mi;
        if (store_mailbox_find(r.a, mailbox, &mi) < 0)
            rc = hv_err_set(&err, -ENOENT, "%s has no mailbox %s", account, mailbox);
        else
            rc = export_to_mbox(&r, &mi, mbox, &err);
    } else {
        rc = export_to_maildir(&r, mailbox, maildir, &err);
    }
    export_progress(&r, 1);
    store_close(r.a);
    if (rc < 0)
        return cmd_fail("%s", err.msg);
    /* Standard output may be the export itself. */
    FILE *say = mbox && strcmp(mbox, "-") == 0 ? stderr : stdout;
    fprintf(say, "exported %" PRIu64 " messages (%" PRIu64 " bytes) from %s%s%s to %s\n",
            r.messages, r.bytes, account, mailbox ? "/" : "", mailbox ? mailbox : "",
            mbox ? (strcmp(mbox, "-") ? mbox : "standard output") : maildir);
    return 0;
}
