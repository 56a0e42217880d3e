/*
 * imap_load_bench.c - Haven's IMAP service against Dovecot, side by side.
 *
 * One program, one sub-benchmark per first argument. bench/imap/run.sh
 * starts a throw-away havend and a throw-away Dovecot on loopback ports,
 * builds the same fixtures for both and calls these in turn, always with
 * the same arguments for both servers (only -p and -L differ):
 *
 *   load     N clients in one process (epoll, non-blocking sockets). Each
 *            loops LOGIN, SELECT INBOX, R rounds of the mix (FETCH FLAGS,
 *            FETCH BODY.PEEK[HEADER], FETCH BODY.PEEK[], STORE +/-\Seen,
 *            APPEND 4 KiB, SEARCH HEADER, STORE \Deleted + EXPUNGE, IDLE),
 *            LOGOUT, then again on the next account. Prints commands per
 *            second and each command's latency.
 *   prime    LOGIN + SELECT + LOGOUT on every account once, so that no
 *            timed phase pays for building a server's indexes.
 *   big      the timed commands on one very large mailbox (first and
 *            second SELECT, UID FETCH 1:* FLAGS, searches, STORE 1:*,
 *            STORE \Deleted on odd messages + EXPUNGE).
 *   idle     N connections logged in, SELECTed and IDLE; resident memory
 *            of the server's processes before and after; then DONE + NOOP
 *            on every one of them to check that all are still served.
 *   wake     one connection IDLE on INBOX, N messages delivered one at a
 *            time (APPEND on another connection, or written by this
 *            process into the server's storage): the time from each
 *            delivery to the idler's "* n EXISTS".
 *   maildir  writes the fixture messages as Maildir files (cur/).
 *   warm     reads every file under folders (page cache, before "big").
 *   hash, sethash, port   small helpers for run.sh.
 *
 * Every figure is printed as a human line, followed by a machine line
 * "RESULT\t..." that run.sh collects into the summary table. The servers
 * are the bench's own throw-away instances: a protocol surprise (a
 * refused login, a BAD) is counted and shown, never hidden.
 */
#include <arpa/inet.h>
#include <crypt.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dir/dir.h"
#include "dir/password.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/fsutil.h"
#include "store/store.h"

/* ---- settings (each sub-benchmark reads the ones it needs) ---- */

static struct {
    const char *host;     /* -h: server address */
    int port;             /* -p */
    const char *label;    /* -L: the server's name in the output */
    const char *user_fmt; /* -u: user name, a printf format with one %d for load/idle */
    const char *password; /* -P */
    int accounts;         /* -a: accounts u(1)..u(a) */
    int clients;          /* -c: concurrent clients (load) */
    double secs, warmup;  /* -t, -w: measured and warm-up seconds (load) */
    int rounds;           /* -R: rounds of the mix per session (load) */
    const char *mix;      /* -m: "name=weight,..." (load) */
    int idle_ms;          /* -i: how long each IDLE lasts (load); pause between deliveries (wake) */
    int append_size;      /* -s: APPEND size; maildir: mean message size */
    int conns;            /* -n: connections (idle); messages (maildir); deliveries (wake) */
    int inflight;         /* -k: connections being set up at once (idle) */
    double hold;          /* -H: seconds the idle connections are held */
    const char *mem[4];   /* -M name=spec: process groups measured (idle) */
    int nmem;
    const char *hword, *bword; /* -W, -B: rare words in subjects and bodies (big) */
    int chunk;            /* -C: sequence numbers per STORE command (big) */
    const char *deliver;  /* -d: imap, store:DIR or maildir:DIR (wake) */
    uid_t uid;            /* -U uid:gid: owner of the maildir files */
    gid_t gid;
    int chown;
} opt = {
    .host = "127.0.0.1", .label = "server", .user_fmt = "u%03d@bench.test",
    .password = "benchpw", .accounts = 100, .clients = 20, .secs = 20, .warmup = 3,
    .rounds = 10, .mix = "", .idle_ms = 10, .append_size = 4096, .conns = 1000,
    .inflight = 100, .hold = 5, .hword = "zanzibar", .bword = "quokka", .chunk = 1000,
};

/* ---- small helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "imap_load_bench: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint32_t rnd_below(uint64_t *s, uint32_t n) { return n ? (uint32_t)(rnd(s) % n) : 0; }

static void user_name(char *out, size_t n, int i)
{
    snprintf(out, n, opt.user_fmt, i); /* run.sh's format, one %d or none */
}

static int cmp_float(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return a < b ? -1 : a > b;
}

/* ---- the messages of the fixtures and of APPEND ---- */

/* Subjects carry one of these, so "SEARCH HEADER Subject <topic>" finds a
 * few messages in every mailbox (1 in 40). */
static const char *const topics[] = {
    "budget",  "harbor",   "kestrel", "lantern", "meadow",  "nickel",  "orchard", "pepper",
    "quarry",  "ribbon",   "saddle",  "timber",  "umbrella", "velvet", "walnut",  "yarrow",
    "anchor",  "beacon",   "canyon",  "dolphin", "ember",   "falcon",  "glacier", "hazel",
    "islet",   "juniper",  "kettle",  "lagoon",  "marble",  "nectar",  "oyster",  "pebble",
    "quill",   "raven",    "summit",  "thistle", "upland",  "vessel",  "willow",  "zephyr",
};
#define NTOPICS (sizeof(topics) / sizeof(topics[0]))

/* Body text; none of these is a topic or one of the rare words. */
static const char *const words[] = {
    "the",     "of",      "and",     "to",      "in",     "is",      "that",   "for",
    "it",      "as",      "was",     "with",    "be",     "by",      "on",     "not",
    "this",    "are",     "at",      "from",    "have",   "or",      "which",  "one",
    "report",  "meeting", "project", "quarter", "review", "schedule", "team",  "office",
    "please",  "attached", "thanks", "regards", "update", "numbers", "draft",  "final",
    "monday",  "friday",  "morning", "evening", "client", "invoice", "travel", "notes",
    "server",  "network", "backup",  "release", "ticket", "support", "change", "plan",
    "weather", "coffee",  "garden",  "river",   "stone",  "window",  "paper",  "light",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

/* Appends lines of words until the body is exactly len bytes (CRLF line
 * ends). rare, when set, is put in the first line. */
static void fill_body(buf *b, uint64_t *seed, size_t len, const char *rare)
{
    size_t start = b->len;
    char line[128];
    while (b->len - start < len) {
        size_t left = len - (b->len - start);
        size_t n = 0;
        if (rare && b->len == start)
            n = (size_t)snprintf(line, sizeof(line), "%s ", rare);
        while (n < 66) {
            const char *w = words[rnd_below(seed, NWORDS)];
            n += (size_t)snprintf(line + n, sizeof(line) - n, "%s ", w);
        }
        line[n - 1] = '.';
        if (n + 2 > left) {
            /* the last line: cut or pad so the total is exact */
            if (left >= 2) {
                memset(line, 'x', left - 2);
                n = left - 2;
            } else {
                n = 0;
            }
            buf_append(b, line, n);
            buf_append(b, "\r\n", left - n);
            break;
        }
        buf_append(b, line, n);
        buf_append(b, "\r\n", 2);
    }
}

static void rfc5322_date(char *out, size_t n, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, n, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* One message of about size bytes (exactly size when exact). */
static void make_message(buf *b, uint64_t *seed, long i, int64_t date, const char *topic,
                         const char *subject_extra, const char *body_rare, size_t size, int exact)
{
    char d[64];
    rfc5322_date(d, sizeof(d), date);
    unsigned k = rnd_below(seed, 500);
    buf_printf(b,
               "Return-Path: <sender%u@example.net>\r\n"
               "Received: from mx%u.example.net (mx%u.example.net [192.0.2.%u])\r\n"
               "\tby mail.bench.test with ESMTPS id %016llx\r\n"
               "\tfor <user@bench.test>; %s\r\n"
               "Message-ID: <%ld.%016llx@example.net>\r\n"
               "Date: %s\r\n"
               "From: \"Sender %u\" <sender%u@example.net>\r\n"
               "To: <user@bench.test>\r\n"
               "Subject: Report on %s (%ld)%s%s\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n"
               "Content-Transfer-Encoding: 7bit\r\n"
               "\r\n",
               k, k % 7, k % 7, k % 250 + 1, (unsigned long long)rnd(seed), d, i,
               (unsigned long long)rnd(seed), d, k, k, topic, i,
               subject_extra ? " " : "", subject_extra ? subject_extra : "");
    size_t body = size > b->len + 200 ? size - b->len : 200;
    if (!exact) {
        body = body / 2 + rnd_below(seed, (uint32_t)body);
    }
    fill_body(b, seed, body, body_rare);
}

/* ---- reading responses ---- */

/* Bytes from the server. rbuf_line hands out the first line of each
 * response and skips the literals ({n}) some responses carry, with the
 * lines that follow them, so a FETCH BODY[] answer is one "line" here. */
typedef struct rbuf {
    char *data;
    size_t len, cap, pos;
    uint64_t lit_left; /* literal bytes still to skip */
    int cont;          /* the next line continues a response */
} rbuf;

/* Room for at least want more bytes at data + len (compacts first). */
static char *rbuf_room(rbuf *r, size_t want, size_t *room)
{
    if (r->pos) {
        memmove(r->data, r->data + r->pos, r->len - r->pos);
        r->len -= r->pos;
        r->pos = 0;
    }
    if (r->cap - r->len < want) {
        size_t cap = r->cap ? r->cap : 16384;
        while (cap - r->len < want)
            cap *= 2;
        r->data = xrealloc(r->data, cap);
        r->cap = cap;
    }
    *room = r->cap - r->len;
    return r->data + r->len;
}

/* 1 with the next response's first line (no line end; valid until the next
 * rbuf_room), 0 when more bytes are needed. */
static int rbuf_line(rbuf *r, char **line, size_t *n)
{
    for (;;) {
        if (r->lit_left) {
            size_t take = r->len - r->pos;
            if (take > r->lit_left)
                take = (size_t)r->lit_left;
            r->pos += take;
            r->lit_left -= take;
            if (r->lit_left)
                return 0;
        }
        if (r->pos >= r->len)
            return 0;
        char *p = r->data + r->pos;
        char *nl = memchr(p, '\n', r->len - r->pos);
        if (!nl)
            return 0;
        size_t l = (size_t)(nl - p);
        r->pos += l + 1;
        if (l && p[l - 1] == '\r')
            l--;
        int was_cont = r->cont;
        r->cont = 0;
        if (l >= 3 && p[l - 1] == '}') {
            size_t k = l - 1;
            uint64_t v = 0, mul = 1;
            int digits = 0;
            while (k > 0 && isdigit((unsigned char)p[k - 1]) && digits < 19) {
                v += (uint64_t)(p[k - 1] - '0') * mul;
                mul *= 10;
                k--;
                digits++;
            }
            if (digits && k > 0 && p[k - 1] == '{') {
                r->lit_left = v;
                r->cont = 1;
            }
        }
        if (was_cont)
            continue;
        *line = p;
        *n = l;
        return 1;
    }
}

/* "* 12 EXISTS" -> 1 with *num = 12 when the word matches. */
static int untagged_num(const char *l, size_t n, const char *word, uint32_t *num)
{
    if (n < 4 || l[0] != '*' || l[1] != ' ' || !isdigit((unsigned char)l[2]))
        return 0;
    size_t i = 2;
    uint64_t v = 0;
    while (i < n && isdigit((unsigned char)l[i]))
        v = v * 10 + (uint64_t)(l[i++] - '0');
    size_t wl = strlen(word);
    if (i + 1 + wl > n || l[i] != ' ' || strncasecmp(l + i + 1, word, wl) != 0 ||
        (i + 1 + wl < n && l[i + 1 + wl] != ' '))
        return 0;
    *num = (uint32_t)v;
    return 1;
}

/* Numbers on a "* SEARCH" line, -1 when it is not one. */
static long search_hits(const char *l, size_t n)
{
    if (n < 8 || strncasecmp(l, "* SEARCH", 8) != 0)
        return -1;
    long hits = 0;
    for (size_t i = 8; i < n; i++)
        if (isdigit((unsigned char)l[i]) && l[i - 1] == ' ')
            hits++;
    return hits;
}

/* "tag OK ..." -> 1 for OK, 0 for NO/BAD; -1 when the line is not tagged tag. */
static int tagged_status(const char *l, size_t n, const char *tag)
{
    size_t tl = strlen(tag);
    if (n < tl + 3 || memcmp(l, tag, tl) != 0 || l[tl] != ' ')
        return -1;
    return strncasecmp(l + tl + 1, "OK", 2) == 0;
}

static int tcp_socket(int nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static struct sockaddr_in server_addr(void)
{
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &a.sin_addr) != 1)
        die("bad address %s", opt.host);
    return a;
}

/* ---- the client engine (load, prime, idle) ---- */

enum op {
    OP_LOGIN, OP_SELECT, OP_FETCH_FLAGS, OP_FETCH_HEADER, OP_FETCH_BODY, OP_STORE_SEEN,
    OP_STORE_UNSEEN, OP_APPEND, OP_SEARCH, OP_STORE_DELETED, OP_EXPUNGE, OP_IDLE, OP_NOOP,
    OP_LOGOUT, OP_N
};

static const char *const op_names[OP_N] = {
    "LOGIN", "SELECT INBOX", "FETCH 5 (FLAGS)", "FETCH 5 (BODY.PEEK[HEADER])",
    "FETCH 1 (BODY.PEEK[])", "STORE +FLAGS \\Seen", "STORE -FLAGS \\Seen", "APPEND",
    "SEARCH HEADER Subject", "STORE +FLAGS \\Deleted", "EXPUNGE", "IDLE + DONE", "NOOP",
    "LOGOUT",
};

/* The names -m takes, in the order a round runs them; "expunge" is the
 * pair STORE \Deleted + EXPUNGE. */
static const struct { const char *name; enum op op; } mix_keys[] = {
    {"fetch_flags", OP_FETCH_FLAGS}, {"fetch_header", OP_FETCH_HEADER},
    {"fetch_body", OP_FETCH_BODY},   {"store_seen", OP_STORE_SEEN},
    {"store_unseen", OP_STORE_UNSEEN}, {"append", OP_APPEND},
    {"search", OP_SEARCH},           {"expunge", OP_EXPUNGE},
    {"idle", OP_IDLE},               {"noop", OP_NOOP},
};
#define NMIX (sizeof(mix_keys) / sizeof(mix_keys[0]))

typedef struct opstat {
    uint64_t n, errors, bytes;
    double sum;
    float *lat; /* ms */
    size_t nlat, cap;
} opstat;

enum cstate { CS_FREE, CS_CONNECTING, CS_GREETING, CS_CMD, CS_IDLING };
enum plus_wait { PW_NONE, PW_LITERAL, PW_IDLE };
enum mode { M_LOAD, M_PRIME, M_IDLE };

typedef struct conn {
    int fd;
    uint32_t gen; /* bumped at each close: stale epoll events are ignored */
    enum cstate st;
    rbuf in;
    buf out;
    size_t out_off;
    int out_armed;
    buf lit; /* a synchronizing literal, sent on "+" */
    buf msg;
    enum plus_wait plus;
    unsigned ntag;
    char tag[16];
    enum op op;
    double t_sent, lat_acc, wake_at;
    uint64_t rx;
    uint8_t *plan;
    size_t nplan, step;
    uint32_t exists;
    int literal_plus;
    uint64_t seed;
    int acct;
    int holding; /* idle: sits in IDLE */
    int checked; /* idle: DONE + NOOP answered OK */
} conn;

static struct {
    enum mode mode;
    int ep;
    conn *c;
    int n;
    struct sockaddr_in addr;
    uint8_t round[256];
    size_t nround;
    long next_acct;
    long sessions, sessions_max, sessions_done;
    int measuring;
    opstat st[OP_N];
    uint64_t disconnects, connect_failures, bad_shown;
    int timers;
    /* idle */
    int started, holding, failed, lost, checked, phase;
} E;

static void conn_start(conn *c);
static void conn_next(conn *c);

static void record(enum op op, double lat, int ok, uint64_t bytes)
{
    if (!E.measuring)
        return;
    opstat *s = &E.st[op];
    s->n++;
    if (!ok) {
        s->errors++;
        return;
    }
    s->sum += lat;
    s->bytes += bytes;
    if (s->nlat == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->lat = xrealloc(s->lat, s->cap * sizeof(float));
    }
    s->lat[s->nlat++] = (float)(lat * 1000);
}

static void conn_arm(conn *c, int want_out)
{
    if (c->out_armed == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0)};
    ev.data.u64 = (uint64_t)(c - E.c) << 32 | c->gen;
    epoll_ctl(E.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->out_armed = want_out;
}

static void conn_close(conn *c)
{
    if (c->st == CS_FREE)
        return;
    epoll_ctl(E.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->gen++;
    c->st = CS_FREE;
    c->in.len = c->in.pos = 0;
    c->in.lit_left = 0;
    c->in.cont = 0;
    buf_reset(&c->out);
    buf_reset(&c->lit);
    c->out_off = 0;
    c->out_armed = 0;
    c->plus = PW_NONE;
    if (c->wake_at > 0)
        E.timers--;
    c->wake_at = 0;
}

/* Returns -1 when the connection broke (and was closed). */
static int conn_flush(conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t w = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            conn_arm(c, 1);
            return 0;
        }
        return -1;
    }
    buf_reset(&c->out);
    c->out_off = 0;
    conn_arm(c, 0);
    return 0;
}

static void conn_broken(conn *c);

static void conn_cmd(conn *c, enum op op, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_cmd(conn *c, enum op op, const char *fmt, ...)
{
    snprintf(c->tag, sizeof(c->tag), "a%u", ++c->ntag);
    buf_printf(&c->out, "%s ", c->tag);
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    buf_append_str(&c->out, line);
    buf_append(&c->out, "\r\n", 2);
    c->op = op;
    c->st = CS_CMD;
    c->t_sent = now();
    c->lat_acc = 0;
    c->rx = 0;
}

static void conn_send_append(conn *c)
{
    buf_reset(&c->msg);
    const char *topic = topics[rnd_below(&c->seed, NTOPICS)];
    make_message(&c->msg, &c->seed, (long)rnd_below(&c->seed, 1000000), (int64_t)time(NULL),
                 topic, "appended", NULL, (size_t)opt.append_size, 1);
    if (c->literal_plus) {
        conn_cmd(c, OP_APPEND, "APPEND INBOX {%zu+}", c->msg.len);
        buf_append(&c->out, c->msg.data, c->msg.len);
        buf_append(&c->out, "\r\n", 2);
    } else {
        conn_cmd(c, OP_APPEND, "APPEND INBOX {%zu}", c->msg.len);
        buf_append(&c->lit, c->msg.data, c->msg.len);
        buf_append(&c->lit, "\r\n", 2);
        c->plus = PW_LITERAL;
    }
}

/* Sends the command of op (a NOOP in its place when the mailbox is empty
 * and op needs a message). */
static void conn_issue(conn *c, enum op op)
{
    char user[300];
    uint32_t n = c->exists;
    int needs_msg = op == OP_FETCH_FLAGS || op == OP_FETCH_HEADER || op == OP_FETCH_BODY ||
                    op == OP_STORE_SEEN || op == OP_STORE_UNSEEN || op == OP_STORE_DELETED;
    if (needs_msg && n == 0)
        op = OP_NOOP;
    uint32_t a = n > 5 ? 1 + rnd_below(&c->seed, n - 4) : 1, b = n > 5 ? a + 4 : n;
    uint32_t m = 1 + rnd_below(&c->seed, n ? n : 1);
    switch (op) {
    case OP_LOGIN:
        user_name(user, sizeof(user), c->acct + 1);
        conn_cmd(c, op, "LOGIN \"%s\" \"%s\"", user, opt.password);
        break;
    case OP_SELECT: conn_cmd(c, op, "SELECT INBOX"); break;
    case OP_FETCH_FLAGS: conn_cmd(c, op, "FETCH %u:%u (FLAGS)", a, b); break;
    case OP_FETCH_HEADER: conn_cmd(c, op, "FETCH %u:%u (BODY.PEEK[HEADER])", a, b); break;
    case OP_FETCH_BODY: conn_cmd(c, op, "FETCH %u (BODY.PEEK[])", m); break;
    case OP_STORE_SEEN: conn_cmd(c, op, "STORE %u +FLAGS (\\Seen)", m); break;
    case OP_STORE_UNSEEN: conn_cmd(c, op, "STORE %u -FLAGS (\\Seen)", m); break;
    case OP_APPEND: conn_send_append(c); break;
    case OP_SEARCH:
        conn_cmd(c, op, "SEARCH HEADER Subject %s", topics[rnd_below(&c->seed, NTOPICS)]);
        break;
    case OP_STORE_DELETED: conn_cmd(c, op, "STORE %u +FLAGS (\\Deleted)", n); break;
    case OP_EXPUNGE: conn_cmd(c, op, "EXPUNGE"); break;
    case OP_IDLE:
        conn_cmd(c, op, "IDLE");
        c->plus = PW_IDLE;
        break;
    case OP_NOOP: conn_cmd(c, op, "NOOP"); break;
    case OP_LOGOUT: conn_cmd(c, op, "LOGOUT"); break;
    case OP_N: break;
    }
    if (conn_flush(c) < 0)
        conn_broken(c);
}

static void plan_session(conn *c)
{
    size_t want = 3 + (E.mode == M_LOAD ? (size_t)opt.rounds * E.nround : 1);
    c->plan = xrealloc(c->plan, want);
    size_t n = 0;
    c->plan[n++] = OP_LOGIN;
    c->plan[n++] = OP_SELECT;
    if (E.mode == M_LOAD)
        for (int r = 0; r < opt.rounds; r++)
            for (size_t i = 0; i < E.nround; i++)
                c->plan[n++] = E.round[i];
    c->plan[n++] = E.mode == M_IDLE ? OP_IDLE : OP_LOGOUT;
    c->nplan = n;
    c->step = 0;
}

/* The session ended (LOGOUT answered, or it broke): the next one starts
 * on this slot, on the next account, while sessions are wanted. */
static void session_end(conn *c)
{
    conn_close(c);
    E.sessions_done++;
    if (E.mode == M_LOAD || (E.mode == M_PRIME && E.sessions < E.sessions_max))
        conn_start(c);
}

static void conn_broken(conn *c)
{
    if (c->st == CS_FREE)
        return;
    if (c->st == CS_CMD && c->op == OP_LOGOUT) {
        record(OP_LOGOUT, now() - c->t_sent, 1, c->rx);
        session_end(c);
        return;
    }
    E.disconnects++;
    if (c->st == CS_CMD || c->st == CS_IDLING)
        record(c->op, 0, 0, 0);
    if (E.mode == M_IDLE) {
        if (c->holding)
            E.lost++;
        else
            E.failed++;
        c->holding = 0;
        conn_close(c);
        return;
    }
    session_end(c);
}

static void conn_start(conn *c)
{
    c->fd = tcp_socket(1);
    c->st = CS_CONNECTING;
    c->exists = 0;
    c->holding = c->checked = 0;
    c->acct = (int)(E.next_acct++ % opt.accounts);
    E.sessions++;
    plan_session(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT};
    ev.data.u64 = (uint64_t)(c - E.c) << 32 | c->gen;
    c->out_armed = 1;
    if (epoll_ctl(E.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&E.addr, sizeof(E.addr)) < 0 && errno != EINPROGRESS) {
        if (E.mode != M_IDLE)
            die("%s: connect port %d: %s", opt.label, opt.port, strerror(errno));
        E.connect_failures++;
        conn_broken(c);
    }
}

/* The tagged answer to the current command arrived. */
static void conn_done(conn *c, int ok, const char *line, size_t n)
{
    double t = now();
    if (!ok && E.bad_shown < 5) {
        E.bad_shown++;
        fprintf(stderr, "imap_load_bench: %s: %s answered: %.*s\n", opt.label, op_names[c->op],
                (int)(n > 200 ? 200 : n), line);
    }
    record(c->op, t - c->t_sent + c->lat_acc, ok, c->rx);
    if (c->op == OP_LOGOUT) {
        session_end(c);
        return;
    }
    if (E.mode == M_IDLE && c->op == OP_IDLE) {
        conn_issue(c, OP_NOOP); /* the check after DONE */
        return;
    }
    if (E.mode == M_IDLE && c->op == OP_NOOP) {
        c->checked = ok;
        E.checked += ok;
        conn_close(c);
        return;
    }
    if (!ok && (c->op == OP_LOGIN || c->op == OP_SELECT)) {
        conn_broken(c);
        return;
    }
    c->step++;
    conn_next(c);
}

static void conn_next(conn *c)
{
    if (c->step >= c->nplan)
        die("session plan overrun");
    conn_issue(c, c->plan[c->step]);
}

static void conn_line(conn *c, const char *l, size_t n)
{
    if (c->st == CS_GREETING) {
        if (n < 4 || strncasecmp(l, "* OK", 4) != 0) {
            E.connect_failures++;
            conn_broken(c);
            return;
        }
        c->literal_plus = memmem(l, n, "LITERAL+", 8) != NULL;
        conn_next(c);
        return;
    }
    if (n >= 1 && l[0] == '+' && (n == 1 || l[1] == ' ')) {
        if (c->plus == PW_LITERAL) {
            buf_append(&c->out, c->lit.data, c->lit.len);
            buf_reset(&c->lit);
            c->plus = PW_NONE;
            if (conn_flush(c) < 0)
                conn_broken(c);
        } else if (c->plus == PW_IDLE) {
            double t = now();
            c->plus = PW_NONE;
            c->lat_acc = t - c->t_sent;
            c->st = CS_IDLING;
            if (E.mode == M_IDLE) {
                c->holding = 1;
                E.holding++;
            } else {
                c->wake_at = t + opt.idle_ms / 1000.0;
                E.timers++;
            }
        }
        return;
    }
    uint32_t num;
    if (untagged_num(l, n, "EXISTS", &num)) {
        c->exists = num;
        return;
    }
    if (untagged_num(l, n, "EXPUNGE", &num)) {
        if (c->exists)
            c->exists--;
        return;
    }
    if (n && l[0] == '*')
        return;
    int ok = tagged_status(l, n, c->tag);
    if (ok >= 0 && c->st == CS_CMD)
        conn_done(c, ok, l, n);
}

/* After DONE the IDLE's tagged answer comes; its time counts from here. */
static void conn_done_idle(conn *c)
{
    buf_append(&c->out, "DONE\r\n", 6);
    c->st = CS_CMD;
    c->t_sent = now();
    if (conn_flush(c) < 0)
        conn_broken(c);
}

static void conn_readable(conn *c)
{
    uint32_t gen = c->gen;
    for (int rounds = 0; rounds < 8; rounds++) {
        size_t room;
        char *p = rbuf_room(&c->in, 65536, &room);
        ssize_t r = read(c->fd, p, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            conn_broken(c);
            return;
        }
        c->in.len += (size_t)r;
        c->rx += (uint64_t)r;
        char *l;
        size_t n;
        while (c->gen == gen && c->st != CS_FREE && rbuf_line(&c->in, &l, &n))
            conn_line(c, l, n);
        if (c->gen != gen || c->st == CS_FREE)
            return;
        if ((size_t)r < room)
            return;
    }
}

static void engine_init(enum mode mode, int nconns)
{
    E.mode = mode;
    E.ep = epoll_create1(EPOLL_CLOEXEC);
    if (E.ep < 0)
        die("epoll_create1: %s", strerror(errno));
    E.n = nconns;
    E.c = calloc((size_t)nconns, sizeof(conn));
    if (!E.c)
        die("out of memory");
    for (int i = 0; i < nconns; i++) {
        E.c[i].fd = -1;
        E.c[i].seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1) ^ (uint64_t)getpid();
        buf_init(&E.c[i].out);
        buf_init(&E.c[i].lit);
        buf_init(&E.c[i].msg);
    }
    E.addr = server_addr();
}

/* Runs the loop until until (0: no limit) or stop() says so. */
static void engine_run(double until, int (*stop)(void))
{
    struct epoll_event ev[512];
    for (;;) {
        if (stop && stop())
            return;
        double t = now();
        if (until > 0 && t >= until)
            return;
        int timeout = 100;
        if (until > 0 && (until - t) * 1000 < timeout)
            timeout = (int)((until - t) * 1000) + 1;
        if (E.timers) {
            for (int i = 0; i < E.n; i++) {
                conn *c = &E.c[i];
                if (c->wake_at <= 0)
                    continue;
                if (c->wake_at <= t) {
                    c->wake_at = 0;
                    E.timers--;
                    conn_done_idle(c);
                } else if ((c->wake_at - t) * 1000 < timeout) {
                    timeout = (int)((c->wake_at - t) * 1000) + 1;
                }
            }
        }
        int k = epoll_wait(E.ep, ev, 512, timeout);
        if (k < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < k; i++) {
            conn *c = &E.c[ev[i].data.u64 >> 32];
            if ((uint32_t)ev[i].data.u64 != c->gen || c->st == CS_FREE)
                continue;
            if (c->st == CS_CONNECTING) {
                int e = 0;
                socklen_t el = sizeof(e);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el);
                if (e) {
                    if (E.mode != M_IDLE)
                        die("%s: connect port %d: %s", opt.label, opt.port, strerror(e));
                    E.connect_failures++;
                    conn_broken(c);
                    continue;
                }
                c->st = CS_GREETING;
                conn_arm(c, 0);
                continue;
            }
            if (ev[i].events & EPOLLOUT) {
                if (conn_flush(c) < 0) {
                    conn_broken(c);
                    continue;
                }
            }
            if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                conn_readable(c);
        }
    }
}

static void parse_mix(void)
{
    int weight[NMIX];
    for (size_t i = 0; i < NMIX; i++)
        weight[i] = strcmp(mix_keys[i].name, "noop") == 0 ? 0 : 1;
    const char *p = opt.mix;
    while (*p) {
        const char *eq = strchr(p, '=');
        if (!eq)
            die("-m: expected name=weight in '%s'", p);
        size_t i;
        for (i = 0; i < NMIX; i++)
            if (strlen(mix_keys[i].name) == (size_t)(eq - p) &&
                strncmp(p, mix_keys[i].name, (size_t)(eq - p)) == 0)
                break;
        if (i == NMIX)
            die("-m: unknown command '%.*s'", (int)(eq - p), p);
        char *end;
        long w = strtol(eq + 1, &end, 10);
        if (w < 0 || w > 10)
            die("-m: weight of %s must be 0..10", mix_keys[i].name);
        weight[i] = (int)w;
        p = *end == ',' ? end + 1 : end;
    }
    E.nround = 0;
    for (size_t i = 0; i < NMIX; i++)
        for (int k = 0; k < weight[i]; k++) {
            if (mix_keys[i].op == OP_EXPUNGE)
                E.round[E.nround++] = OP_STORE_DELETED;
            E.round[E.nround++] = (uint8_t)mix_keys[i].op;
        }
}

static void print_stats(void)
{
    printf("  %-28s %9s %8s %8s %8s %8s %10s\n", "command", "count", "errors", "mean ms",
           "p50 ms", "p99 ms", "bytes in");
    for (int i = 0; i < OP_N; i++) {
        opstat *s = &E.st[i];
        if (!s->n)
            continue;
        double p50 = 0, p99 = 0;
        if (s->nlat) {
            qsort(s->lat, s->nlat, sizeof(float), cmp_float);
            p50 = s->lat[s->nlat / 2];
            p99 = s->lat[(size_t)((double)(s->nlat - 1) * 0.99)];
        }
        printf("  %-28s %9llu %8llu %8.2f %8.2f %8.2f %10.0f\n", op_names[i],
               (unsigned long long)s->n, (unsigned long long)s->errors,
               s->nlat ? s->sum * 1000 / (double)s->nlat : 0.0, p50, p99,
               s->nlat ? (double)s->bytes / (double)s->nlat : 0.0);
    }
}

static int load_main(void)
{
    parse_mix();
    if (E.nround == 0 && opt.rounds > 0)
        die("-m: the mix is empty");
    engine_init(M_LOAD, opt.clients);
    double t0 = now();
    for (int i = 0; i < E.n; i++)
        conn_start(&E.c[i]);
    engine_run(t0 + opt.warmup, NULL);
    E.measuring = 1;
    uint64_t sessions0 = (uint64_t)E.sessions_done, disc0 = E.disconnects;
    double t1 = now();
    engine_run(t1 + opt.secs, NULL);
    double t2 = now();
    E.measuring = 0;
    uint64_t total = 0, errors = 0;
    for (int i = 0; i < OP_N; i++) {
        total += E.st[i].n - E.st[i].errors;
        errors += E.st[i].errors;
    }
    double secs = t2 - t1;
    printf("%s: %d clients, %d accounts, %d rounds per session: %llu commands in %.1f s = "
           "%.0f commands/s (%llu sessions, %llu errors, %llu disconnects)\n",
           opt.label, opt.clients, opt.accounts, opt.rounds, (unsigned long long)total, secs,
           (double)total / secs, (unsigned long long)(E.sessions_done - (long)sessions0),
           (unsigned long long)errors, (unsigned long long)(E.disconnects - disc0));
    print_stats();
    printf("RESULT\tload\t%s\t%d\t%.1f\t%llu\n", opt.label, opt.clients, (double)total / secs,
           (unsigned long long)errors);
    fflush(stdout);
    return 0;
}

static int prime_stop(void) { return E.sessions_done >= E.sessions_max; }

static int prime_main(void)
{
    engine_init(M_PRIME, opt.clients < opt.accounts ? opt.clients : opt.accounts);
    E.sessions_max = opt.accounts;
    E.measuring = 1;
    double t0 = now();
    for (int i = 0; i < E.n; i++)
        conn_start(&E.c[i]);
    engine_run(0, prime_stop);
    uint64_t errors = 0;
    for (int i = 0; i < OP_N; i++)
        errors += E.st[i].errors;
    printf("%s: primed %d accounts (LOGIN, SELECT, LOGOUT) in %.1f s, %llu errors\n", opt.label,
           opt.accounts, now() - t0, (unsigned long long)errors);
    if (errors)
        die("%s: priming failed: the accounts cannot be used", opt.label);
    return 0;
}

/* ---- resident memory of a server's processes ---- */

typedef struct memfig {
    long rss_kb, pss_kb;
    int nproc;
} memfig;

static long proc_kb(int pid, const char *file, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/%s", pid, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t kl = strlen(key);
    long v = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* The parent and the name (comm) of a process; -1 when it is gone. */
static int proc_stat(int pid, int *ppid, char *comm, size_t commlen)
{
    char path[64], text[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = 0;
    char *lp = strchr(text, '('), *rp = strrchr(text, ')');
    if (!lp || !rp || rp[1] != ' ')
        return -1;
    snprintf(comm, commlen, "%.*s", (int)(rp - lp - 1), lp + 1);
    char state;
    if (sscanf(rp + 2, "%c %d", &state, ppid) != 2)
        return -1;
    return 0;
}

static void mem_add(memfig *m, int pid)
{
    long rss = proc_kb(pid, "status", "VmRSS"), pss = proc_kb(pid, "smaps_rollup", "Pss");
    if (rss < 0)
        return;
    m->rss_kb += rss;
    m->pss_kb += pss > 0 ? pss : 0;
    m->nproc++;
}

/* spec: "pid:P" one process; "children:P[:comm]" its children (of that
 * name); "tree:P" the process and its children. */
static memfig mem_measure(const char *spec)
{
    memfig m = {0, 0, 0};
    char kind[16] = "", comm[64] = "";
    int pid = 0;
    const char *c1 = strchr(spec, ':');
    if (!c1 || (size_t)(c1 - spec) >= sizeof(kind))
        die("bad memory spec '%s'", spec);
    memcpy(kind, spec, (size_t)(c1 - spec));
    pid = atoi(c1 + 1);
    const char *c2 = strchr(c1 + 1, ':');
    if (c2)
        snprintf(comm, sizeof(comm), "%s", c2 + 1);
    if (pid <= 0)
        die("bad pid in memory spec '%s'", spec);
    if (strcmp(kind, "pid") == 0) {
        mem_add(&m, pid);
        return m;
    }
    if (strcmp(kind, "tree") == 0)
        mem_add(&m, pid);
    else if (strcmp(kind, "children") != 0)
        die("bad memory spec '%s'", spec);
    DIR *d = opendir("/proc");
    if (!d)
        die("/proc: %s", strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        int p = atoi(de->d_name), pp;
        char pc[64];
        if (proc_stat(p, &pp, pc, sizeof(pc)) < 0 || pp != pid)
            continue;
        if (comm[0] && strcmp(pc, comm) != 0)
            continue;
        mem_add(&m, p);
    }
    closedir(d);
    return m;
}

static int idle_setup_done(void)
{
    /* keep E.inflight connections being set up; stop when all are placed */
    while (E.started < opt.conns && E.started - E.holding - E.failed < opt.inflight) {
        conn_start(&E.c[E.started]);
        E.started++;
    }
    return E.holding + E.failed >= opt.conns;
}

static int idle_check_done(void)
{
    int open = 0;
    for (int i = 0; i < E.n; i++)
        open += E.c[i].st != CS_FREE;
    return open == 0;
}

static int idle_main(void)
{
    if (opt.nmem == 0)
        die("idle: give at least one -M name=spec");
    engine_init(M_IDLE, opt.conns);
    E.measuring = 1;
    memfig before[4], after[4];
    for (int g = 0; g < opt.nmem; g++)
        before[g] = mem_measure(strchr(opt.mem[g], '=') + 1);
    double t0 = now();
    engine_run(0, idle_setup_done);
    double t1 = now();
    printf("%s: %d connections logged in, SELECTed and IDLE in %.1f s (%d failed)\n",
           opt.label, E.holding, t1 - t0, E.failed);
    printf("RESULT\tidle_setup\t%s\t%d\t%.1f\n", opt.label, opt.conns, t1 - t0);
    fflush(stdout);
    /* Hold them (a server that drops idle clients shows here as lost),
     * then measure. */
    engine_run(t1 + opt.hold, NULL);
    for (int g = 0; g < opt.nmem; g++)
        after[g] = mem_measure(strchr(opt.mem[g], '=') + 1);
    int held = E.holding - E.lost;
    for (int g = 0; g < opt.nmem; g++) {
        const char *name = opt.mem[g];
        int nl = (int)(strchr(name, '=') - name);
        double rss = (double)(after[g].rss_kb - before[g].rss_kb) / (held ? held : 1);
        double pss = (double)(after[g].pss_kb - before[g].pss_kb) / (held ? held : 1);
        printf("  %.*s: %d process(es), RSS %ld kB -> %ld kB, PSS %ld kB -> %ld kB: "
               "%.1f KiB RSS, %.1f KiB PSS per connection\n",
               nl, name, after[g].nproc, before[g].rss_kb, after[g].rss_kb, before[g].pss_kb,
               after[g].pss_kb, rss, pss);
        printf("RESULT\tidle\t%s\t%.*s\t%d\t%.1f\t%.1f\t%d\n", opt.label, nl, name, opt.conns,
               rss, pss, after[g].nproc);
    }
    /* Every connection that was placed: DONE, then NOOP. */
    E.lost = 0;
    for (int i = 0; i < E.n; i++) {
        conn *c = &E.c[i];
        if (c->st == CS_IDLING)
            conn_done_idle(c);
    }
    double t2 = now();
    engine_run(t2 + 120, idle_check_done);
    int alive = E.checked;
    printf("  after %.0f s held: %d of %d answered DONE + NOOP (%d failed to set up, %d lost "
           "while idle)\n",
           opt.hold, alive, opt.conns, E.failed, opt.conns - alive - E.failed);
    printf("RESULT\tidle_alive\t%s\t%d\t%d\n", opt.label, opt.conns, alive);
    fflush(stdout);
    for (int i = 0; i < E.n; i++)
        conn_close(&E.c[i]);
    return 0;
}

/* ---- one blocking connection (big) ---- */

typedef struct bconn {
    int fd;
    rbuf in;
    unsigned ntag;
    uint32_t exists;
} bconn;

typedef struct bres {
    double secs;
    uint64_t fetches, expunges, bytes; /* "* n FETCH", "* n EXPUNGE" answers */
    long hits;                         /* numbers on "* SEARCH", -1: none */
} bres;

static int b_line(bconn *c, char **l, size_t *n, uint64_t *bytes)
{
    while (!rbuf_line(&c->in, l, n)) {
        size_t room;
        char *p = rbuf_room(&c->in, 1 << 20, &room);
        ssize_t r = read(c->fd, p, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("%s: connection closed: %s", opt.label, r < 0 ? strerror(errno) : "EOF");
        c->in.len += (size_t)r;
        *bytes += (uint64_t)r;
    }
    return 1;
}

static void b_open(bconn *c)
{
    memset(c, 0, sizeof(*c));
    /* The read buffer is made and touched before anything is timed: its
     * first-touch page faults (about 500 for the 2 MiB a big FETCH answer
     * passes through) are this client's cost, the same for both servers,
     * and on this machine they cost about as much as Haven's whole answer. */
    size_t room;
    rbuf_room(&c->in, 4u << 20, &room);
    memset(c->in.data, 0, c->in.cap);
    c->fd = tcp_socket(0);
    struct sockaddr_in a = server_addr();
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("%s: connect port %d: %s", opt.label, opt.port, strerror(errno));
    char *l;
    size_t n;
    uint64_t bytes = 0;
    b_line(c, &l, &n, &bytes);
    if (n < 4 || strncasecmp(l, "* OK", 4) != 0)
        die("%s: greeting: %.*s", opt.label, (int)n, l);
}

static void b_close(bconn *c)
{
    close(c->fd);
    free(c->in.data);
    c->fd = -1;
    c->in.data = NULL;
}

static bres b_cmd(bconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bres b_cmd(bconn *c, const char *fmt, ...)
{
    bres r = {0, 0, 0, 0, -1};
    char tag[16];
    snprintf(tag, sizeof(tag), "b%u", ++c->ntag);
    buf cmd;
    buf_init(&cmd);
    buf_printf(&cmd, "%s ", tag);
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    buf_reserve(&cmd, (size_t)need + 3);
    va_start(ap, fmt);
    vsnprintf((char *)cmd.data + cmd.len, (size_t)need + 1, fmt, ap);
    va_end(ap);
    cmd.len += (size_t)need;
    buf_append(&cmd, "\r\n", 2);
    double t0 = now();
    for (size_t off = 0; off < cmd.len;) {
        ssize_t w = write(c->fd, cmd.data + off, cmd.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("%s: write: %s", opt.label, strerror(errno));
        off += (size_t)w;
    }
    for (;;) {
        char *l;
        size_t n;
        b_line(c, &l, &n, &r.bytes);
        uint32_t num;
        if (n && l[0] == '*') {
            if (untagged_num(l, n, "EXISTS", &num))
                c->exists = num;
            r.fetches += untagged_num(l, n, "FETCH", &num);
            r.expunges += untagged_num(l, n, "EXPUNGE", &num);
            long h = search_hits(l, n);
            if (h >= 0)
                r.hits = h;
            continue;
        }
        int ok = tagged_status(l, n, tag);
        if (ok < 0)
            continue;
        r.secs = now() - t0;
        if (!ok)
            die("%s: '%.60s' failed: %.*s", opt.label, (char *)cmd.data, (int)n, l);
        break;
    }
    buf_free(&cmd);
    return r;
}

static void big_report(const char *step, const char *what, bres r)
{
    printf("  %-14s %-46s %9.3f s", step, what, r.secs);
    if (r.fetches)
        printf("  %8llu FETCH", (unsigned long long)r.fetches);
    if (r.expunges)
        printf("  %8llu EXPUNGE", (unsigned long long)r.expunges);
    if (r.hits >= 0)
        printf("  %ld hits", r.hits);
    printf("  (%llu bytes in)\n", (unsigned long long)r.bytes);
    printf("RESULT\tbig\t%s\t%s\t%.4f\t%llu\t%ld\n", opt.label, step, r.secs,
           (unsigned long long)(r.fetches + r.expunges), r.hits);
    fflush(stdout);
}

static int big_main(void)
{
    char user[300];
    user_name(user, sizeof(user), 0);
    printf("%s: one mailbox, user %s\n", opt.label, user);
    bconn c;
    b_open(&c);
    bres r = b_cmd(&c, "LOGIN \"%s\" \"%s\"", user, opt.password);
    big_report("login_first", "LOGIN (first since the server started)", r);
    bres s = b_cmd(&c, "SELECT INBOX");
    big_report("select_first", "SELECT INBOX (first: the server indexes)", s);
    uint32_t exists = c.exists;
    if (exists < 2)
        die("%s: the big mailbox has %u messages", opt.label, exists);
    b_cmd(&c, "LOGOUT");
    b_close(&c);

    b_open(&c);
    r = b_cmd(&c, "LOGIN \"%s\" \"%s\"", user, opt.password);
    big_report("login_second", "LOGIN (again, new connection)", r);
    s = b_cmd(&c, "SELECT INBOX");
    big_report("select_second", "SELECT INBOX (second: indexes exist)", s);
    if (c.exists != exists)
        die("%s: EXISTS changed between two SELECTs (%u, %u)", opt.label, exists, c.exists);
    r = b_cmd(&c, "UID FETCH 1:* (FLAGS)");
    big_report("fetch_flags", "UID FETCH 1:* (FLAGS)", r);
    if (r.fetches != exists)
        printf("  WARNING: %llu FETCH responses for %u messages\n",
               (unsigned long long)r.fetches, exists);
    char what[200];
    snprintf(what, sizeof(what), "UID SEARCH HEADER Subject %s", opt.hword);
    big_report("search_header", what, b_cmd(&c, "UID SEARCH HEADER Subject %s", opt.hword));
    big_report("search_header2", "  the same again",
               b_cmd(&c, "UID SEARCH HEADER Subject %s", opt.hword));
    snprintf(what, sizeof(what), "SEARCH BODY %s", opt.bword);
    big_report("search_body", what, b_cmd(&c, "SEARCH BODY %s", opt.bword));
    big_report("search_body2", "  the same again", b_cmd(&c, "SEARCH BODY %s", opt.bword));
    big_report("store_seen", "STORE 1:* +FLAGS (\\Seen)", b_cmd(&c, "STORE 1:* +FLAGS (\\Seen)"));
    /* Odd sequence numbers cannot be a range: several commands of
     * opt.chunk numbers each, all timed together. */
    bres odd = {0, 0, 0, 0, -1};
    int ncmd = 0;
    for (uint32_t first = 1; first <= exists; first += 2 * (uint32_t)opt.chunk) {
        buf set;
        buf_init(&set);
        for (uint32_t q = first; q <= exists && q < first + 2 * (uint32_t)opt.chunk; q += 2)
            buf_printf(&set, "%s%u", set.len ? "," : "", q);
        bres x = b_cmd(&c, "STORE %s +FLAGS.SILENT (\\Deleted)", (char *)set.data);
        odd.secs += x.secs;
        odd.fetches += x.fetches;
        odd.bytes += x.bytes;
        ncmd++;
        buf_free(&set);
    }
    snprintf(what, sizeof(what), "STORE odd +FLAGS.SILENT (\\Deleted) (%d cmds)", ncmd);
    big_report("store_odd", what, odd);
    r = b_cmd(&c, "EXPUNGE");
    big_report("expunge", "EXPUNGE (half of the mailbox)", r);
    if (r.expunges != (exists + 1) / 2)
        printf("  WARNING: %llu EXPUNGE responses, expected %u\n",
               (unsigned long long)r.expunges, (exists + 1) / 2);
    b_cmd(&c, "LOGOUT");
    b_close(&c);
    return 0;
}

/* ---- IDLE wake latency (wake) ---- */

/* One connection IDLEs on INBOX; messages are delivered one at a time and
 * each is timed from the start of its delivery to the "* n EXISTS" that
 * tells the idler. A thread reads the idler, so an EXISTS that arrives
 * while the delivery is still running is stamped when it arrives. The
 * delivery is either an APPEND on a second IMAP connection (-d imap, the
 * default) or a write by this process into the server's own storage, as
 * a local delivery agent would do it: -d store:DIR appends through Haven's
 * store API to the account folder DIR (what the lmtp service does), -d
 * maildir:DIR writes a file into the Maildir DIR (tmp/, fsync, rename into
 * new/, what an MDA does for Dovecot). */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t exists; /* the highest EXISTS the idler was told */
    double at;       /* when it arrived */
    int ended;       /* IDLE answered (after DONE) or the connection broke */
} WK = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static void *wake_reader(void *arg)
{
    bconn *c = arg;
    double t_read = now();
    for (;;) {
        char *l;
        size_t n;
        while (!rbuf_line(&c->in, &l, &n)) {
            size_t room;
            char *p = rbuf_room(&c->in, 65536, &room);
            ssize_t r = read(c->fd, p, room);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                pthread_mutex_lock(&WK.mu);
                WK.ended = 1;
                pthread_cond_broadcast(&WK.cv);
                pthread_mutex_unlock(&WK.mu);
                return NULL;
            }
            t_read = now();
            c->in.len += (size_t)r;
        }
        uint32_t num;
        int tagged = n && l[0] != '*' && l[0] != '+';
        if (untagged_num(l, n, "EXISTS", &num) || tagged) {
            pthread_mutex_lock(&WK.mu);
            if (tagged) {
                WK.ended = 1;
            } else if (num > WK.exists) {
                WK.exists = num;
                WK.at = t_read;
            }
            pthread_cond_broadcast(&WK.cv);
            pthread_mutex_unlock(&WK.mu);
            if (tagged)
                return NULL;
        }
    }
}

static void b_write(bconn *c, const void *p, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t w = write(c->fd, (const char *)p + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("%s: write: %s", opt.label, strerror(errno));
        off += (size_t)w;
    }
}

/* A Maildir delivery: the file is complete and synced in tmp/, then
 * renamed into new/ (Maildir's rule: a reader never sees half a file). */
static void maildir_deliver(const char *folder, const buf *m, int i)
{
    char name[200], tmp[4400], dst[4400];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(name, sizeof(name), "%lld.M%ldP%dQ%d.wake,S=%zu,W=%zu", (long long)ts.tv_sec,
             ts.tv_nsec / 1000, (int)getpid(), i, m->len, m->len);
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s", folder, name);
    snprintf(dst, sizeof(dst), "%s/new/%s", folder, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        die("%s: %s", tmp, strerror(errno));
    if (write(fd, m->data, m->len) != (ssize_t)m->len || fdatasync(fd) < 0)
        die("write %s: %s", tmp, strerror(errno));
    if (opt.chown && fchown(fd, opt.uid, opt.gid) < 0)
        die("chown %s: %s", tmp, strerror(errno));
    close(fd);
    if (rename(tmp, dst) < 0)
        die("rename %s: %s", tmp, strerror(errno));
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* p50 and p99 (nearest rank) of n values, in ms; sorts v. */
static void percentiles(double *v, size_t n, double *p50, double *p99)
{
    *p50 = *p99 = -1;
    if (!n)
        return;
    qsort(v, n, sizeof(double), cmp_double);
    *p50 = v[(n - 1) / 2] * 1000;
    *p99 = v[(size_t)((double)(n - 1) * 0.99 + 0.5)] * 1000;
}

static int wake_main(void)
{
    char user[300];
    user_name(user, sizeof(user), 0);
    const char *how = opt.deliver ? opt.deliver : "imap";
    enum { D_IMAP, D_STORE, D_MAILDIR } kind = D_IMAP;
    const char *dirpath = NULL;
    if (strncmp(how, "store:", 6) == 0)
        kind = D_STORE, dirpath = how + 6;
    else if (strncmp(how, "maildir:", 8) == 0)
        kind = D_MAILDIR, dirpath = how + 8;
    else if (strcmp(how, "imap") != 0)
        die("-d: imap, store:DIR or maildir:DIR");
    const char *mode = kind == D_IMAP ? "imap" : "local";

    bconn idler, app;
    b_open(&idler);
    b_cmd(&idler, "LOGIN \"%s\" \"%s\"", user, opt.password);
    b_cmd(&idler, "SELECT INBOX");
    store_account *st = NULL;
    uint32_t inbox = 0;
    if (kind == D_IMAP) {
        b_open(&app);
        b_cmd(&app, "LOGIN \"%s\" \"%s\"", user, opt.password);
    } else if (kind == D_STORE) {
        hv_err err = {0};
        store_mailbox_info mi;
        /* Write as the account's owner, as the server's own delivery would
         * (run.sh runs as root; a server may run as another user). */
        struct stat sb;
        if (stat(dirpath, &sb) < 0)
            die("%s: %s", dirpath, strerror(errno));
        if (geteuid() == 0 && sb.st_uid != 0 &&
            (setgid(sb.st_gid) < 0 || setuid(sb.st_uid) < 0))
            die("cannot become uid %u: %s", (unsigned)sb.st_uid, strerror(errno));
        if (store_open(dirpath, user, 0, NULL, &st, &err) < 0)
            die("%s: %s", dirpath, err.msg);
        if (store_mailbox_find(st, "INBOX", &mi) < 0)
            die("%s: no INBOX", dirpath);
        inbox = mi.id;
    }
    WK.exists = idler.exists;
    b_write(&idler, "w1 IDLE\r\n", 9);
    for (;;) {
        char *l;
        size_t n;
        uint64_t bytes = 0;
        b_line(&idler, &l, &n, &bytes);
        if (n && l[0] == '+')
            break;
        if (n && l[0] != '*')
            die("%s: IDLE refused: %.*s", opt.label, (int)n, l);
    }
    pthread_t th;
    if (pthread_create(&th, NULL, wake_reader, &idler) != 0)
        die("pthread_create failed");

    int samples = opt.conns;
    double *total = calloc((size_t)samples, sizeof(double));
    double *after = calloc((size_t)samples, sizeof(double));
    double *store_t = calloc((size_t)samples, sizeof(double));
    if (!total || !after || !store_t)
        die("out of memory");
    size_t got = 0;
    int timeouts = 0;
    uint64_t seed = 0x1D1E1D1EULL;
    buf m;
    buf_init(&m);
    for (int i = 0; i < samples; i++) {
        buf_reset(&m);
        make_message(&m, &seed, 900000 + i, (int64_t)time(NULL), topics[i % (int)NTOPICS],
                     "wake", NULL, (size_t)opt.append_size, 1);
        pthread_mutex_lock(&WK.mu);
        uint32_t want = WK.exists + 1;
        pthread_mutex_unlock(&WK.mu);
        double t0 = now();
        if (kind == D_IMAP) {
            char cmd[64];
            int cl = snprintf(cmd, sizeof(cmd), "x%u APPEND INBOX {%zu+}\r\n", ++app.ntag, m.len);
            b_write(&app, cmd, (size_t)cl);
            b_write(&app, m.data, m.len);
            b_write(&app, "\r\n", 2);
            char tag[16];
            snprintf(tag, sizeof(tag), "x%u", app.ntag);
            for (;;) {
                char *l;
                size_t n;
                uint64_t bytes = 0;
                b_line(&app, &l, &n, &bytes);
                int ok = tagged_status(l, n, tag);
                if (ok == 0)
                    die("%s: APPEND failed: %.*s", opt.label, (int)n, l);
                if (ok == 1)
                    break;
            }
        } else if (kind == D_STORE) {
            hv_err err = {0};
            uint32_t uid;
            if (store_append(st, inbox, m.data, m.len, 0, (int64_t)time(NULL), &uid, &err) < 0)
                die("%s: store_append: %s", dirpath, err.msg);
        } else {
            maildir_deliver(dirpath, &m, i);
        }
        double t1 = now();
        pthread_mutex_lock(&WK.mu);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 10;
        while (WK.exists < want && !WK.ended)
            if (pthread_cond_timedwait(&WK.cv, &WK.mu, &dl) == ETIMEDOUT)
                break;
        int ok = WK.exists >= want;
        double at = WK.at;
        int ended = WK.ended;
        pthread_mutex_unlock(&WK.mu);
        if (ended)
            die("%s: the idle connection broke", opt.label);
        if (!ok) {
            timeouts++;
            continue;
        }
        total[got] = at - t0;
        after[got] = at - t1;
        store_t[got] = t1 - t0;
        got++;
        /* Let the server settle: samples are one delivery each. */
        struct timespec pause = {opt.idle_ms / 1000, (long)(opt.idle_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    buf_free(&m);
    b_write(&idler, "DONE\r\n", 6);
    pthread_join(th, NULL);
    if (kind == D_IMAP) {
        b_cmd(&app, "LOGOUT");
        b_close(&app);
    }
    if (st)
        store_close(st);
    close(idler.fd);
    free(idler.in.data);

    double t50, t99, a50, a99, s50, s99;
    double amin = got ? after[0] : 0;
    for (size_t i = 1; i < got; i++)
        if (after[i] < amin)
            amin = after[i];
    percentiles(total, got, &t50, &t99);
    percentiles(after, got, &a50, &a99);
    percentiles(store_t, got, &s50, &s99);
    printf("%s: IDLE wake, delivery by %s: %zu samples, %d timeouts (10 s)\n", opt.label,
           kind == D_IMAP ? "IMAP APPEND on a second connection" : how, got, timeouts);
    printf("  delivery start -> EXISTS     p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms\n", t50, t99,
           got ? total[got - 1] * 1000 : -1.0);
    printf("  delivery took                p50 %8.2f ms  p99 %8.2f ms\n", s50, s99);
    printf("  delivery done -> EXISTS      p50 %8.2f ms  p99 %8.2f ms  min %8.2f ms\n", a50, a99,
           amin * 1000);
    printf("RESULT\twake\t%s\t%s\t%zu\t%.3f\t%.3f\t%.3f\t%.3f\t%d\n", opt.label, mode, got, t50,
           t99, a50, a99, timeouts);
    fflush(stdout);
    free(total);
    free(after);
    free(store_t);
    return 0; /* timeouts are a finding (run.sh's summary), not a failure */
}

/* ---- fixtures ---- */

/* Writes opt.conns messages into DIR/cur: subjects "Report on <topic>
 * (i)", every 10,000th (from the 5,000th) with the word -W in its
 * subject, every 9,000th (from the 4,500th) with -B in its body. File
 * names carry the size (S=, W=: the files have CRLF line ends) and a
 * timestamp that orders them, which is also their mtime. */
static int maildir_main(const char *folder)
{
    char path[4200];
    static const char *const sub[] = {"", "/cur", "/new", "/tmp"};
    for (size_t i = 0; i < 4; i++) {
        hv_err err = {0};
        snprintf(path, sizeof(path), "%s%s", folder, sub[i]);
        if (fs_mkdir_p(path, 0700, &err) < 0)
            die("%s", err.msg);
        if (opt.chown && chown(path, opt.uid, opt.gid) < 0)
            die("chown %s: %s", path, strerror(errno));
    }
    uint64_t seed = 0x5EED5EED12345ULL;
    buf m;
    buf_init(&m);
    const int64_t base = 1700000000;
    double t0 = now();
    uint64_t total = 0;
    for (long i = 0; i < opt.conns; i++) {
        buf_reset(&m);
        make_message(&m, &seed, i, base + i, topics[i % (long)NTOPICS],
                     i % 10000 == 5000 ? opt.hword : NULL, i % 9000 == 4500 ? opt.bword : NULL,
                     (size_t)opt.append_size, 0);
        snprintf(path, sizeof(path), "%s/cur/%lld.M%07ldP1.bench,S=%zu,W=%zu:2,", folder,
                 (long long)(base + i), i, m.len, m.len);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            die("%s: %s", path, strerror(errno));
        if (write(fd, m.data, m.len) != (ssize_t)m.len)
            die("write %s: %s", path, strerror(errno));
        struct timespec ts[2] = {{base + i, 0}, {base + i, 0}};
        futimens(fd, ts);
        if (opt.chown && fchown(fd, opt.uid, opt.gid) < 0)
            die("chown %s: %s", path, strerror(errno));
        close(fd);
        total += m.len;
    }
    buf_free(&m);
    printf("maildir: %d messages, %.1f MB, in %.1f s\n", opt.conns, (double)total / 1e6,
           now() - t0);
    return 0;
}

/* Reads every file under a folder, so that a timed phase starts with the
 * page cache as warm for one server as for the other (this machine's
 * kernel drops file pages that were not touched for a while). */
static uint64_t warm_files, warm_bytes;

static int warm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type != FTW_F)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOATIME);
    if (fd < 0)
        fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* renamed or removed meanwhile: nothing to warm */
    static char b[1 << 16];
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        warm_bytes += (uint64_t)n;
    close(fd);
    warm_files++;
    return 0;
}

static int warm_main(int n, char **folders)
{
    double t0 = now();
    for (int i = 0; i < n; i++)
        if (nftw(folders[i], warm_one, 64, FTW_PHYS) < 0)
            die("%s: %s", folders[i], strerror(errno));
    printf("read %llu files, %.0f MB, in %.1f s\n", (unsigned long long)warm_files,
           (double)warm_bytes / 1e6, now() - t0);
    return 0;
}

/* A yescrypt hash of the password: "default" is Haven's own (libcrypt's
 * default cost), a number 1..11 is that yescrypt cost. */
static int hash_main(const char *cost, const char *password)
{
    char out[PASSWORD_HASH_MAX];
    if (strcmp(cost, "default") == 0) {
        hv_err err = {0};
        if (password_hash(password, out, sizeof(out), &err) < 0)
            die("hash: %s", err.msg);
        printf("%s\n", out);
        return 0;
    }
    char *setting = crypt_gensalt_ra("$y$", strtoul(cost, NULL, 10), NULL, 0);
    if (!setting)
        die("hash: libcrypt refused yescrypt cost %s", cost);
    struct crypt_data cd;
    memset(&cd, 0, sizeof(cd));
    const char *h = crypt_r(password, setting, &cd);
    free(setting);
    if (!h || h[0] == '*')
        die("hash: libcrypt refused to hash");
    printf("%s\n", h);
    return 0;
}

/* Sets the password hash of accounts in Haven's directory (run.sh gives
 * every bench account the same hash as Dovecot's passwd-file). */
static int sethash_main(const char *conf_file, const char *hash, char **addrs, int n)
{
    conf *c;
    dir *d;
    hv_err err = {0};
    if (conf_load(conf_file, &c, &err) < 0)
        die("%s", err.msg);
    if (dir_open_conf(c, &d, &err) < 0)
        die("%s", err.msg);
    for (int i = 0; i < n; i++)
        if (dir_account_set_password(d, addrs[i], hash, &err) < 0)
            die("%s: %s", addrs[i], err.msg);
    dir_close(d);
    conf_free(c);
    return 0;
}

/* A free TCP port on the loopback address (for run.sh). */
static int port_main(void)
{
    int fd = tcp_socket(0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0)
        die("port: %s", strerror(errno));
    printf("%d\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

static void usage(void)
{
    fputs("usage: imap_load_bench load|prime|big|idle|wake [options]\n"
          "       imap_load_bench maildir [-n N] [-s SIZE] [-U UID:GID] DIR\n"
          "       imap_load_bench hash COST|default PASSWORD\n"
          "       imap_load_bench sethash CONF HASH ADDRESS...\n"
          "       imap_load_bench port\n"
          "       imap_load_bench warm FOLDER...\n"
          "options: -h HOST -p PORT -L LABEL -u USERFMT -P PASSWORD -a ACCOUNTS\n"
          "         -c CLIENTS -t SECS -w WARMUP -R ROUNDS -m MIX -i IDLE_MS -s SIZE\n"
          "         -n CONNS -k INFLIGHT -H HOLD_SECS -M NAME=SPEC -W WORD -B WORD -C CHUNK\n"
          "         -d imap|store:DIR|maildir:DIR (wake)\n"
          "see the top of bench/imap/imap_load_bench.c and docs/bench-imap.md\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *sub = argv[1];
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(sub, "hash") == 0)
        return argc == 4 ? hash_main(argv[2], argv[3]) : (usage(), 2);
    if (strcmp(sub, "sethash") == 0)
        return argc >= 5 ? sethash_main(argv[2], argv[3], argv + 4, argc - 4) : (usage(), 2);
    if (strcmp(sub, "port") == 0)
        return port_main();
    if (strcmp(sub, "warm") == 0)
        return argc >= 3 ? warm_main(argc - 2, argv + 2) : (usage(), 2);
    optind = 2;
    int o;
    while ((o = getopt(argc, argv, "h:p:L:u:P:a:c:t:w:R:m:i:s:n:k:H:M:W:B:C:U:d:")) != -1) {
        switch (o) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'L': opt.label = optarg; break;
        case 'u': opt.user_fmt = optarg; break;
        case 'P': opt.password = optarg; break;
        case 'a': opt.accounts = atoi(optarg); break;
        case 'c': opt.clients = atoi(optarg); break;
        case 't': opt.secs = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'R': opt.rounds = atoi(optarg); break;
        case 'm': opt.mix = optarg; break;
        case 'i': opt.idle_ms = atoi(optarg); break;
        case 's': opt.append_size = atoi(optarg); break;
        case 'n': opt.conns = atoi(optarg); break;
        case 'k': opt.inflight = atoi(optarg); break;
        case 'H': opt.hold = atof(optarg); break;
        case 'M':
            if (opt.nmem == 4 || !strchr(optarg, '='))
                usage();
            opt.mem[opt.nmem++] = optarg;
            break;
        case 'W': opt.hword = optarg; break;
        case 'B': opt.bword = optarg; break;
        case 'C': opt.chunk = atoi(optarg); break;
        case 'd': opt.deliver = optarg; break;
        case 'U': {
            unsigned u, g;
            if (sscanf(optarg, "%u:%u", &u, &g) != 2)
                usage();
            opt.uid = (uid_t)u;
            opt.gid = (gid_t)g;
            opt.chown = 1;
            break;
        }
        default: usage();
        }
    }
    if (opt.accounts < 1 || opt.clients < 1 || opt.conns < 1 || opt.inflight < 1 ||
        opt.chunk < 1 || opt.rounds < 0 || opt.append_size < 256)
        die("an option is out of range");
    if (strcmp(sub, "maildir") == 0)
        return optind + 1 == argc ? maildir_main(argv[optind]) : (usage(), 2);
    if (opt.port <= 0)
        die("-p PORT is needed");
    if (strcmp(sub, "load") == 0)
        return load_main();
    if (strcmp(sub, "prime") == 0)
        return prime_main();
    if (strcmp(sub, "big") == 0)
        return big_main();
    if (strcmp(sub, "idle") == 0)
        return idle_main();
    if (strcmp(sub, "wake") == 0)
        return wake_main();
    usage();
}
