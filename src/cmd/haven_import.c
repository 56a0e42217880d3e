/*
 * haven_import.c - `haven import ACCOUNT MAILBOX FILE...`: mbox files and
 * Maildir folders into an account's store.
 *
 * Works on the store folder directly (like verify), next to a running
 * havend if need be: the store serialises writers with its lock. Messages
 * are appended in batches (IMPORT_BATCH_MSGS messages or IMPORT_BATCH_BYTES,
 * whichever comes first), each made durable as a whole, so a 180,000-message
 * folder costs a few hundred syncs rather than 180,000, and an interruption
 * loses at most the batch in flight.
 *
 * Resuming: every message read counts as a position (1, 2, ... across all
 * FILEs, in order, whether imported or skipped). After a failure or an
 * interrupt the command says the last position that is durable; running the
 * same command with --skip P continues from there without duplicates.
 * Re-running without --skip would import everything again, as duplicates.
 *
 * Every input is checked (exists, is an mbox or a Maildir) before anything
 * is written, so a typo in the last FILE does not leave a half import.
 * The inputs are trusted no further than that: the parsers are bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "store/maildir_reader.h"
#include "store/mbox_parser.h"
#include "store/store.h"

#define IMPORT_BATCH_MSGS 1000
#define IMPORT_BATCH_BYTES (64ull << 20)
#define IMPORT_READ_CHUNK (1u << 20)

static const char import_usage[] =
    "usage: haven import ACCOUNT MAILBOX FILE... [--recursive] [--skip N]\n"
    "                    [--max-size BYTES] [--progress]\n"
    "\n"
    "Appends the messages of each FILE to MAILBOX of ACCOUNT (created if missing).\n"
    "A FILE is an mbox file (mboxrd or mboxo; '-' reads one from standard input)\n"
    "or a Maildir folder (one holding cur/ or new/).\n"
    "\n"
    "  --recursive     also import a Maildir++ root's subfolders: .A.B goes to\n"
    "                  MAILBOX/A/B (to A/B when MAILBOX is INBOX, as the root of a\n"
    "                  Maildir++ tree is the INBOX)\n"
    "  --skip N        pass over the first N messages (counted across all FILEs in\n"
    "                  order): to continue an interrupted import, give the position\n"
    "                  it reported. Without it, running again imports duplicates.\n"
    "  --max-size B    skip (and report) messages over B bytes (default and maximum:\n"
    "                  store_max_message_size); suffixes K, M, G\n"
    "  --progress      show progress on stderr even when it is not a terminal\n"
    "\n"
    "Skipped messages (too big, empty) are reported with their place; the import\n"
    "goes on and exits with status 1 at the end. On SIGINT or SIGTERM the messages\n"
    "read so far are committed and the position to resume from is printed; a second\n"
    "signal stops at once.\n";

static volatile sig_atomic_t import_interrupted;

/* The first SIGINT/SIGTERM asks for a clean stop after the current message
 * (reads and syncs are restarted, not failed); a second one, for an import
 * stuck on a silent pipe say, ends the process at once. */
static void import_on_signal(int sig)
{
    if (import_interrupted) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
    import_interrupted = 1;
}

/* ---- progress on stderr ---- */

typedef struct import_progress {
    int on;        /* print at all */
    int tty;       /* rewrite one line in place */
    int dirty;     /* a progress line is on screen and not ended */
    double start;  /* monotonic seconds */
    double last;
} import_progress;

static double import_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Ends an in-place progress line so that another line can be printed. */
static void import_progress_break(import_progress *pg)
{
    if (pg->dirty) {
        fputs("\r\033[K", stderr);
        pg->dirty = 0;
    }
}

/* ---- the run ---- */

typedef struct import_input {
    const char *path;
    int is_maildir;
    maildir_folder_list folders; /* --recursive only */
} import_input;

typedef struct import_run {
    const char *account;
    store_account *a;
    store_batch *batch;
    uint32_t batch_msgs;
    uint64_t batch_bytes;
    uint64_t max_size;

    uint64_t pos;           /* messages read, across all inputs */
    uint64_t skip;          /* --skip */
    uint64_t durable_pos;   /* every position up to here is committed or reported */
    uint64_t imported, imported_bytes, skipped;

    uint32_t mailbox;       /* where messages of the current input go */
    const char *input;      /* its path, for messages */
    size_t input_no, ninputs;
    uint64_t input_size, input_done; /* mbox bytes, for the percentage */

    import_progress pg;
} import_run;

static void import_progress_show(import_run *r, int force)
{
    import_progress *pg = &r->pg;
    if (!pg->on)
        return;
    double now = import_clock();
    if (!force && now - pg->last < 1.0)
        return;
    pg->last = now;
    double secs = now - pg->start > 0.001 ? now - pg->start : 0.001;
    uint64_t msgs = r->imported + r->batch_msgs, bytes = r->imported_bytes + r->batch_bytes;
    char where[64] = "";
    if (r->input_size)
        snprintf(where, sizeof(where), ", file %zu/%zu %d%%", r->input_no, r->ninputs,
                 (int)(r->input_done * 100 / r->input_size));
    else if (r->ninputs > 1)
        snprintf(where, sizeof(where), ", file %zu/%zu", r->input_no, r->ninputs);
    fprintf(stderr, "%simport: %" PRIu64 " messages, %.1f MiB, %.0f msg/s, %.1f MiB/s%s%s",
            pg->tty ? "\r\033[K" : "", msgs, (double)bytes / 1048576.0, (double)msgs / secs,
            (double)bytes / 1048576.0 / secs, where,
            pg->tty ? "" : "\n");
    pg->dirty = pg->tty;
    fflush(stderr);
}

static int import_commit(import_run *r, hv_err *err)
{
    if (!r->batch) {
        r->durable_pos = r->pos;
        return 0;
    }
    store_batch *b = r->batch;
    r->batch = NULL;
    int rc = store_batch_commit(b, err);
    if (rc < 0)
        return rc;
    r->imported += r->batch_msgs;
    r->imported_bytes += r->batch_bytes;
    r->batch_msgs = 0;
    r->batch_bytes = 0;
    r->durable_pos = r->pos;
    return 0;
}

static void import_skipped(import_run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void import_skipped(import_run *r, const char *fmt, ...)
{
    import_progress_break(&r->pg);
    va_list ap;
    va_start(ap, fmt);
    fputs("haven: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("; skipped\n", stderr);
    va_end(ap);
    r->skipped++;
}

/* Queues one message (at position r->pos, already counted) in the batch,
 * committing the batch when it is full. */
static int import_add(import_run *r, const uint8_t *data, size_t len, uint64_t flags,
                      int64_t internal_date, hv_err *err)
{
    int rc;
    if (!r->batch && (rc = store_batch_begin(r->a, &r->batch, err)) < 0)
        return rc;
    if ((rc = store_batch_add(r->batch, r->mailbox, data, len, flags, internal_date, NULL,
                              err)) < 0)
        return rc;
    r->batch_msgs++;
    r->batch_bytes += len;
    if (r->batch_msgs >= IMPORT_BATCH_MSGS || r->batch_bytes >= IMPORT_BATCH_BYTES)
        rc = import_commit(r, err);
    import_progress_show(r, 0);
    return rc;
}

/* Checked after each message: on SIGINT/SIGTERM the batch in flight is
 * committed, so the position reported is exact. */
static int import_check_interrupt(import_run *r, hv_err *err)
{
    if (!import_interrupted)
        return 0;
    int rc = import_commit(r, err);
    if (rc < 0)
        return rc;
    return hv_err_set(err, -EINTR, "interrupted");
}

static int import_mbox_message(void *ctx, const mbox_message *m, hv_err *err)
{
    import_run *r = ctx;
    r->pos++;
    if (r->pos <= r->skip)
        return 0;
    if (m->too_big) {
        import_skipped(r, "%s: message %" PRIu64 " at byte %" PRIu64 ": %" PRIu64
                       " bytes, over the limit of %" PRIu64,
                       r->input, m->number, m->offset, m->size, r->max_size);
    } else if (m->size == 0) {
        import_skipped(r, "%s: message %" PRIu64 " at byte %" PRIu64 " is empty", r->input,
                       m->number, m->offset);
    } else {
        int rc = import_add(r, m->data, (size_t)m->size, 0, m->internal_date, err);
        if (rc < 0) {
            hv_err_prefix(err, "%s: message %" PRIu64 " at byte %" PRIu64, r->input, m->number,
                          m->offset);
            return rc;
        }
    }
    return import_check_interrupt(r, err);
}

static int import_mbox(import_run *r, const char *path, hv_err *err)
{
    int fd = 0;
    if (strcmp(path, "-") != 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return hv_err_sys(err, "open %s", path);
    struct stat st;
    r->input_size = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
    r->input_done = 0;
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    mbox_parser_options opt = {.max_message_size = r->max_size};
    mbox_parser *p = mbox_parser_new(&opt, import_mbox_message, r);
    uint8_t *chunk = malloc(IMPORT_READ_CHUNK);
    if (!chunk)
        abort();
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, IMPORT_READ_CHUNK);
        if (n < 0 && errno == EINTR) {
            if ((rc = import_check_interrupt(r, err)) < 0)
                break;
            continue;
        }
        if (n < 0) {
            rc = hv_err_sys(err, "read %s", path);
            break;
        }
        if (n == 0) {
            rc = mbox_parser_finish(p, err);
            break;
        }
        r->input_done += (uint64_t)n;
        if ((rc = mbox_parser_feed(p, chunk, (size_t)n, err)) < 0)
            break;
    }
    /* The parser's own complaint (not an mbox) has no file name yet. */
    if (rc == -EINVAL && strncmp(err->msg, "not an mbox", 11) == 0)
        hv_err_prefix(err, "%s", strcmp(path, "-") ? path : "standard input");
    free(chunk);
    mbox_parser_free(p);
    if (fd != 0)
        close(fd);
    r->input_size = 0;
    return rc;
}

static int import_maildir(import_run *r, const char *dir, hv_err *err)
{
    maildir_list l;
    int rc = maildir_list_messages(dir, &l, err);
    if (rc < 0)
        return rc;
    buf body;
    buf_init(&body);
    hv_err e2;
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        const maildir_entry *m = &l.v[i];
        r->pos++;
        if (r->pos <= r->skip)
            continue;
        uint64_t size;
        int got = maildir_read_message(m->path, r->max_size, &body, &size, &e2);
        if (got == -EFBIG) {
            import_skipped(r, "%s", e2.msg);
        } else if (got == -ENOENT) {
            import_skipped(r, "%s", e2.msg);
        } else if (got < 0) {
            *err = e2;
            rc = got;
        } else if (body.len == 0) {
            import_skipped(r, "%s is empty", m->path);
        } else if ((rc = import_add(r, body.data, body.len, m->flags, m->mtime, err)) < 0) {
            hv_err_prefix(err, "%s", m->path);
        }
        if (rc == 0)
            rc = import_check_interrupt(r, err);
    }
    buf_free(&body);
    maildir_list_free(&l);
    return rc;
}

/* ---- setup ---- */

/* "1048576", "512K", "100M", "2G" -> bytes; -1 when malformed. */
static int import_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -1;
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024, end++;
    if (*end || v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

/* Checks one FILE before anything is written: it exists, and is a Maildir
 * or starts like an mbox (an empty file is an empty mbox). */
static int import_check_input(import_input *in, int recursive, hv_err *err)
{
    if (strcmp(in->path, "-") == 0)
        return 0;
    struct stat st;
    if (stat(in->path, &st) < 0)
        return hv_err_sys(err, "%s", in->path);
    if (S_ISDIR(st.st_mode)) {
        if (!maildir_is_maildir(in->path))
            return hv_err_set(err, -EINVAL, "%s: a folder but not a Maildir (no cur/ or new/)",
                              in->path);
        in->is_maildir = 1;
        if (recursive)
            return maildir_list_folders(in->path, &in->folders, err);
        return 0;
    }
    int fd = open(in->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open %s", in->path);
    char head[5];
    ssize_t n = read(fd, head, sizeof(head));
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return hv_err_sys(err, "read %s", in->path);
    }
    /* An empty file is an empty mbox. */
    if (n > 0 && (n < (ssize_t)sizeof(head) || memcmp(head, "From ", 5) != 0))
        return hv_err_set(err, -EINVAL,
                          "%s: not an mbox (the first line does not start with \"From \") "
                          "and not a Maildir", in->path);
    return 0;
}

/* The mailbox a Maildir++ subfolder goes to. */
static void import_sub_name(const char *mailbox, const char *sub, char *out, size_t outlen)
{
    if (strcasecmp(mailbox, "INBOX") == 0)
        snprintf(out, outlen, "%s", sub);
    else
        snprintf(out, outlen, "%s/%s", mailbox, sub);
}

static int import_mailbox_id(store_account *a, const char *name, uint32_t *id, hv_err *err)
{
    store_mailbox_info mi;
    if (store_mailbox_find(a, name, &mi) == 0) {
        *id = mi.id;
        return 0;
    }
    int rc = store_mailbox_create(a, name, 0, id, err);
    if (rc < 0)
        hv_err_prefix(err, "create mailbox %s", name);
    return rc;
}

static void import_store_options(const conf *c, store_options *o)
{
    memset(o, 0, sizeof(*o));
    o->segment_size = (uint64_t)conf_get_int(c, "store_segment_size");
    o->checkpoint_records = (uint32_t)conf_get_int(c, "store_checkpoint_records");
    o->max_message_size = (uint64_t)conf_get_int(c, "store_max_message_size");
}

int cmd_import(haven_ctx *ctx, int argc, char **argv)
{
    const char *pos_args[3] = {0};
    int npos = 0, recursive = 0, progress = 0, stdin_used = 0;
    uint64_t skip = 0, max_size = 0;
    import_input *inputs = calloc((size_t)argc, sizeof(*inputs));
    size_t ninputs = 0;
    int rc = 2, only_files = 0;
    hv_err err = {0};
    if (!inputs)
        abort();

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (!only_files && strcmp(a, "--") == 0) {
            only_files = 1;
        } else if (!only_files && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            fputs(import_usage, stdout);
            rc = 0;
            goto out;
        } else if (!only_files && strcmp(a, "--recursive") == 0) {
            recursive = 1;
        } else if (!only_files && strcmp(a, "--progress") == 0) {
            progress = 1;
        } else if (!only_files && (strcmp(a, "--skip") == 0 || strncmp(a, "--skip=", 7) == 0)) {
            val = a[6] == '=' ? a + 7 : (i + 1 < argc ? argv[++i] : NULL);
            char *end;
            if (!val || !*val || val[0] == '-' || (errno = 0, skip = strtoull(val, &end, 10), errno) ||
                *end) {
                fprintf(stderr, "haven: --skip needs a number of messages\n%s", import_usage);
                goto out;
            }
        } else if (!only_files &&
                   (strcmp(a, "--max-size") == 0 || strncmp(a, "--max-size=", 11) == 0)) {
            val = a[10] == '=' ? a + 11 : (i + 1 < argc ? argv[++i] : NULL);
            if (!val || import_parse_size(val, &max_size) < 0 || max_size == 0) {
                fprintf(stderr, "haven: --max-size needs a size in bytes (K, M, G allowed)\n%s",
                        import_usage);
                goto out;
            }
        } else if (!only_files && a[0] == '-' && a[1] != 0) {
            fprintf(stderr, "haven: unknown option '%s'\n%s", a, import_usage);
            goto out;
        } else if (npos < 2) {
            pos_args[npos++] = a;
        } else {
            if (strcmp(a, "-") == 0 && stdin_used++) {
                fprintf(stderr, "haven: standard input ('-') can be read only once\n");
                goto out;
            }
            inputs[ninputs++].path = a;
        }
    }
    if (npos < 2 || ninputs == 0) {
        fputs(import_usage, stderr);
        goto out;
    }
    const char *account = pos_args[0], *mailbox = pos_args[1];
    rc = 1;

    for (size_t i = 0; i < ninputs; i++) {
        if (import_check_input(&inputs[i], recursive, &err) < 0) {
            cmd_fail("%s", err.msg);
            goto out;
        }
    }

    char data_dir[4096], dir[4096];
    conf_path(ctx->conf, "data_dir", data_dir, sizeof(data_dir));
    if (store_account_dir(data_dir, account, dir, sizeof(dir), &err) < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }
    store_options sopt;
    import_store_options(ctx->conf, &sopt);
    if (!max_size || max_size > sopt.max_message_size)
        max_size = sopt.max_message_size;
    store_account *a;
    int orc = store_open(dir, account, 0, &sopt, &a, &err);
    if (orc == -ENOENT) {
        cmd_fail("no such account %s", account);
        goto out;
    } else if (orc < 0) {
        cmd_fail("%s", err.msg);
        goto out;
    }

    /* Every target mailbox exists before the first batch: a batch holds
     * the account's write lock and appends only to mailboxes it can see. */
    uint32_t main_id;
    uint32_t **sub_ids = calloc(ninputs, sizeof(*sub_ids));
    if (!sub_ids)
        abort();
    int setup_rc = import_mailbox_id(a, mailbox, &main_id, &err);
    for (size_t i = 0; i < ninputs && setup_rc == 0; i++) {
        import_input *in = &inputs[i];
        if (!in->folders.n)
            continue;
        sub_ids[i] = calloc(in->folders.n, sizeof(uint32_t));
        if (!sub_ids[i])
            abort();
        for (size_t k = 0; k < in->folders.n && setup_rc == 0; k++) {
            char name[2048];
            import_sub_name(mailbox, in->folders.v[k].name, name, sizeof(name));
            setup_rc = import_mailbox_id(a, name, &sub_ids[i][k], &err);
        }
    }

    import_run r = {0};
    r.account = account;
    r.a = a;
    r.skip = skip;
    r.max_size = max_size;
    r.ninputs = ninputs;
    r.pg.on = progress || isatty(2);
    r.pg.tty = isatty(2);
    r.pg.start = r.pg.last = import_clock();

    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = import_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    int run_rc = setup_rc;
    for (size_t i = 0; i < ninputs && run_rc == 0; i++) {
        import_input *in = &inputs[i];
        r.input_no = i + 1;
        r.input = strcmp(in->path, "-") ? in->path : "standard input";
        r.mailbox = main_id;
        if (!in->is_maildir) {
            run_rc = import_mbox(&r, in->path, &err);
            continue;
        }
        run_rc = import_maildir(&r, in->path, &err);
        for (size_t k = 0; k < in->folders.n && run_rc == 0; k++) {
            r.mailbox = sub_ids[i][k];
            r.input = in->folders.v[k].dir;
            run_rc = import_maildir(&r, in->folders.v[k].dir, &err);
        }
    }
    if (run_rc == 0)
        run_rc = import_commit(&r, &err);
    if (r.batch)
        store_batch_abort(r.batch);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    import_progress_break(&r.pg);
    printf("imported %" PRIu64 " messages (%" PRIu64 " bytes) into %s/%s%s\n", r.imported,
           r.imported_bytes, account, mailbox,
           recursive ? " and its subfolders" : "");
    fflush(stdout);
    if (run_rc < 0) {
        if (r.durable_pos > skip)
            cmd_fail("%s; messages up to position %" PRIu64 " are imported: to continue, run "
                     "the same command with --skip %" PRIu64, err.msg, r.durable_pos,
                     r.durable_pos);
        else
            cmd_fail("%s", err.msg);
    } else if (r.skipped) {
        cmd_fail("skipped %" PRIu64 " message%s (reported above)", r.skipped,
                 r.skipped == 1 ? "" : "s");
    } else if (skip > r.pos) {
        cmd_fail("--skip %" PRIu64 " passed over every message (there are %" PRIu64 ")", skip,
                 r.pos);
    } else {
        rc = 0;
    }
    for (size_t i = 0; i < ninputs; i++)
        free(sub_ids[i]);
    free(sub_ids);
    store_close(a);
out:
    for (size_t i = 0; i < ninputs; i++)
        maildir_folder_list_free(&inputs[i].folders);
    free(inputs);
    return rc;
}
