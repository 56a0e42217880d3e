/*
 * queue_ctl.c - the operator's commands on the queue, and the control
 * socket that carries them to a running smtp service.
 *
 * queue_control runs one command (list, show, hold, release, flush,
 * delete, stats) on an open queue: the smtp service's (through the
 * socket) or one that `haven queue` opened itself while havend is not
 * running (the queue's lock file makes sure there is only ever one
 * writer).
 *
 * Protocol of RUN_DIR/queue.sock (mode 0600): the client sends one line,
 * the command's arguments separated by TAB, ended by LF (at most 8 KiB);
 * the server answers "ok" LF and the command's output, or "error REASON"
 * LF, and closes the connection.
 *
 * SECURITY: trusts only that the peer could open the socket (the daemon's
 * user). The request is still bounded: one line of 8 KiB, 64 arguments,
 * 5 seconds to send it; one client at a time.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/log.h"
#include "queue/queue_internal.h"

#define CTL_LINE_MAX 8192
#define CTL_MAX_ARGS 64
#define CTL_READ_MS 5000

static void put_time(buf *b, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(b, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
               tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Text that must stay inside one field: no TAB, CR, LF. */
static void put_field(buf *b, const char *s)
{
    for (; s && *s; s++)
        buf_put_u8(b, *s == '\t' || *s == '\r' || *s == '\n' ? ' ' : (uint8_t)*s);
}

typedef struct selector {
    uint64_t *ids;
    size_t nids;
    const char *account, *recipient;
    int state; /* -1: any */
    int all;
} selector;

static int parse_state(const char *s)
{
    for (int i = 0; i <= QSTATE_DELETED; i++)
        if (strcasecmp(s, queue_state_name(i)) == 0)
            return i;
    return -1;
}

/* argv after the command name: IDs and --account/--recipient/--state. */
static int parse_selector(int argc, char **argv, selector *sel, int allow_state, hv_err *err)
{
    memset(sel, 0, sizeof(*sel));
    sel->state = -1;
    sel->ids = calloc((size_t)argc + 1, sizeof(uint64_t));
    if (!sel->ids)
        abort();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--account") == 0 || strcmp(a, "--recipient") == 0 ||
             strcmp(a, "--state") == 0) && i + 1 < argc) {
            const char *v = argv[++i];
            if (a[2] == 'a')
                sel->account = v;
            else if (a[2] == 'r')
                sel->recipient = v;
            else if (!allow_state || (sel->state = parse_state(v)) < 0)
                return hv_err_set(err, -EINVAL, "bad --state '%s' (ready, deferred, held, "
                                  "delivered, bounced)", v);
        } else if (strcmp(a, "--all") == 0) {
            sel->all = 1;
        } else if (a[0] == '-') {
            return hv_err_set(err, -EINVAL, "unknown option '%s'", a);
        } else if (queue_parse_id(a, &sel->ids[sel->nids]) == 0) {
            sel->nids++;
        } else {
            return hv_err_set(err, -EINVAL, "'%s' is not a queue id (16 hex digits)", a);
        }
    }
    return 0;
}

static int msg_selected(const selector *sel, const qmsg *m)
{
    if (sel->nids) {
        int found = 0;
        for (size_t i = 0; i < sel->nids && !found; i++)
            found = sel->ids[i] == m->id;
        if (!found)
            return 0;
    }
    return 1;
}

static int rcpt_selected(const selector *sel, const qrcpt *r)
{
    if (sel->account && (!r->account || strcasecmp(sel->account, r->account) != 0))
        return 0;
    if (sel->recipient && strcasecmp(sel->recipient, r->address) != 0)
        return 0;
    if (sel->state >= 0 && r->state != sel->state)
        return 0;
    return 1;
}

static int any_rcpt_selected(const selector *sel, const qmsg *m)
{
    for (uint32_t i = 0; i < m->nrcpts; i++)
        if (rcpt_selected(sel, &m->rcpts[i]))
            return 1;
    return 0;
}

static void put_list_line(buf *out, const qmsg *m)
{
    char id[QUEUE_ID_LEN + 1];
    queue_format_id(m->id, id);
    buf_printf(out, "%s\t", id);
    put_time(out, m->arrival);
    buf_printf(out, "\t%llu\t", (unsigned long long)m->size);
    if (m->mail_from[0])
        put_field(out, m->mail_from);
    else
        buf_append_str(out, "<>");
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        const qrcpt *r = &m->rcpts[i];
        buf_append_str(out, "\t");
        put_field(out, r->address);
        buf_printf(out, " %s", queue_state_name(r->state));
        if (r->reason && r->reason[0]) {
            buf_append_str(out, " ");
            put_field(out, r->reason);
        }
    }
    buf_append_str(out, "\n");
}

static int cmd_list(queue *q, int argc, char **argv, buf *out, hv_err *err)
{
    selector sel;
    int rc = parse_selector(argc, argv, &sel, 1, err);
    if (rc == 0) {
        pthread_mutex_lock(&q->mu);
        size_t n;
        qmsg **all = queue_sorted(q, &n);
        for (size_t i = 0; i < n; i++)
            if (msg_selected(&sel, all[i]) && any_rcpt_selected(&sel, all[i]))
                put_list_line(out, all[i]);
        free(all);
        pthread_mutex_unlock(&q->mu);
    }
    free(sel.ids);
    return rc;
}

static void put_notify(buf *b, unsigned n)
{
    if (!n) {
        buf_append_str(b, "default");
        return;
    }
    const char *names[] = {"never", "success", "failure", "delay"};
    int first = 1;
    for (int i = 0; i < 4; i++)
        if (n & (1u << i)) {
            buf_printf(b, "%s%s", first ? "" : ",", names[i]);
            first = 0;
        }
}

static const char *hold_kind_name(int k)
{
    return k == QHOLD_ACCOUNT ? "account" : k == QHOLD_STORE ? "store"
         : k == QHOLD_OPERATOR ? "operator" : "-";
}

static int cmd_show(queue *q, int argc, char **argv, buf *out, hv_err *err)
{
    int with_data = 0;
    uint64_t id = 0;
    int have = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--message") == 0)
            with_data = 1;
        else if (!have && queue_parse_id(argv[i], &id) == 0)
            have = 1;
        else
            return hv_err_set(err, -EINVAL, "usage: show ID [--message]");
    }
    if (!have)
        return hv_err_set(err, -EINVAL, "usage: show ID [--message]");
    pthread_mutex_lock(&q->mu);
    qmsg *m = queue_find(q, id);
    if (!m) {
        pthread_mutex_unlock(&q->mu);
        return hv_err_set(err, -ENOENT, "no message %016llx in the queue", (unsigned long long)id);
    }
    char ids[QUEUE_ID_LEN + 1];
    queue_format_id(m->id, ids);
    buf_printf(out, "id: %s\narrival: ", ids);
    put_time(out, m->arrival);
    buf_printf(out, "\nsize: %llu\nsender: ", (unsigned long long)m->size);
    put_field(out, m->mail_from[0] ? m->mail_from : "<>");
    buf_append_str(out, "\nclient: ");
    put_field(out, m->client_addr);
    buf_append_str(out, "\nhelo: ");
    put_field(out, m->client_helo);
    buf_append_str(out, "\nauth: ");
    put_field(out, m->auth_user ? m->auth_user : "-");
    buf_append_str(out, "\nenvid: ");
    put_field(out, m->envid ? m->envid : "-");
    buf_printf(out, "\nret: %s\nbody: %s\nsmtputf8: %s\ndsn: %s\n",
               m->flags & QMSG_RET_HDRS ? "hdrs" : "full",
               m->flags & QMSG_8BIT ? "8bitmime" : "7bit",
               m->flags & QMSG_SMTPUTF8 ? "yes" : "no", m->flags & QMSG_IS_DSN ? "yes" : "no");
    buf_printf(out, "segment: %llu\noffset: %llu\n", (unsigned long long)m->seg->no,
               (unsigned long long)m->frame_off);
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        const qrcpt *r = &m->rcpts[i];
        buf_printf(out, "rcpt: %u ", i);
        put_field(out, r->address);
        buf_append_str(out, "\n  account: ");
        put_field(out, r->account ? r->account : "- (remote)");
        buf_printf(out, "\n  state: %s%s\n", queue_state_name(r->state),
                   r->busy ? " (being delivered)" : "");
        if (r->state == QUEUE_HELD)
            buf_printf(out, "  hold: %s\n", hold_kind_name(r->hold_kind));
        buf_printf(out, "  attempts: %u\n", r->attempts);
        if (r->state == QUEUE_DEFERRED) {
            buf_append_str(out, "  next_attempt: ");
            put_time(out, r->next_try);
            buf_append_str(out, "\n");
        }
        buf_append_str(out, "  notify: ");
        put_notify(out, r->notify);
        if (r->orcpt) {
            buf_append_str(out, "\n  orcpt: ");
            put_field(out, r->orcpt);
        }
        buf_append_str(out, "\n  reason: ");
        put_field(out, r->reason);
        buf_append_str(out, "\n");
    }
    m->busy++; /* pinned while its data is read */
    pthread_mutex_unlock(&q->mu);
    int rc = 0;
    if (with_data) {
        buf data;
        buf_init(&data);
        rc = queue_read_data(q, m, &data, err);
        if (rc == 0) {
            buf_append_str(out, "\n");
            buf_append(out, data.data, data.len);
        }
        buf_free(&data);
    }
    pthread_mutex_lock(&q->mu);
    if (--m->busy == 0 && !m->in_table)
        queue_msg_free(m);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* hold, release, flush, delete: the same selection, a different action. */
enum action { ACT_HOLD, ACT_RELEASE, ACT_FLUSH, ACT_DELETE };

static int cmd_act(queue *q, enum action act, int argc, char **argv, buf *out, hv_err *err)
{
    static const char *names[] = {"hold", "release", "flush", "delete"};
    selector sel;
    int rc = parse_selector(argc, argv, &sel, 0, err);
    if (rc < 0) {
        free(sel.ids);
        return rc;
    }
    int narrowed = sel.nids || sel.account || sel.recipient;
    if (!narrowed && !sel.all && act != ACT_FLUSH) {
        free(sel.ids);
        return hv_err_set(err, -EINVAL, "%s needs ID..., --account A, --recipient R or --all",
                          names[act]);
    }
    size_t done = 0, busy = 0;
    pthread_mutex_lock(&q->mu);
    if (sel.nids) {
        for (size_t i = 0; i < sel.nids; i++)
            if (!queue_find(q, sel.ids[i])) {
                pthread_mutex_unlock(&q->mu);
                rc = hv_err_set(err, -ENOENT, "no message %016llx in the queue",
                                (unsigned long long)sel.ids[i]);
                free(sel.ids);
                return rc;
            }
    }
    size_t n;
    qmsg **all = queue_sorted(q, &n);
    for (size_t i = 0; i < n; i++) {
        qmsg *m = all[i];
        if (!msg_selected(&sel, m))
            continue;
        if (act == ACT_DELETE && sel.nids && !sel.account && !sel.recipient) {
            /* The whole message. */
            char id[QUEUE_ID_LEN + 1];
            queue_format_id(m->id, id);
            buf fr;
            buf_init(&fr);
            size_t start = qlog_frame_begin(&fr, QREC_DELETE, queue_now(q));
            buf_put_u64(&fr, m->id);
            qlog_frame_end(&fr, start);
            rc = qlog_append(q, &fr, NULL, NULL, NULL, err);
            buf_free(&fr);
            if (rc < 0)
                break;
            log_info("queue_deleted id=%s by=operator", id);
            done += m->unfinished;
            queue_msg_finished(q, m);
            continue;
        }
        m->busy++; /* pinned: a last recipient deleted frees it below */
        for (uint32_t k = 0; k < m->nrcpts && m->in_table; k++) {
            qrcpt *r = &m->rcpts[k];
            if (!rcpt_selected(&sel, r))
                continue;
            int st = r->state;
            if (st == QUEUE_DELIVERED || st == QUEUE_BOUNCED || st == QSTATE_DELETED)
                continue;
            if (r->busy) {
                busy++;
                continue;
            }
            switch (act) {
            case ACT_HOLD:
                if (st == QUEUE_HELD && r->hold_kind == QHOLD_OPERATOR)
                    continue;
                queue_set_state(q, r, QUEUE_HELD, QHOLD_OPERATOR, "held by operator");
                done++;
                break;
            case ACT_RELEASE:
                if (st != QUEUE_HELD)
                    continue;
                sched_release_one(q, r);
                done++;
                break;
            case ACT_FLUSH:
                if (st != QUEUE_DEFERRED || r->queued)
                    continue;
                sched_heap_remove(q, r);
                sched_make_ready(q, r);
                done++;
                break;
            case ACT_DELETE:
                queue_set_state(q, r, QSTATE_DELETED, 0, "deleted by operator");
                done++;
                break;
            }
        }
        if (--m->busy == 0 && !m->in_table)
            queue_msg_free(m);
    }
    free(all);
    if (rc == 0 && (act == ACT_DELETE || act == ACT_HOLD))
        rc = queue_sync_locked(q, err);
    pthread_cond_broadcast(&q->work_cv);
    pthread_mutex_unlock(&q->mu);
    free(sel.ids);
    if (rc == 0) {
        buf_printf(out, "%s %zu\n", act == ACT_HOLD ? "held" : act == ACT_RELEASE ? "released"
                                    : act == ACT_FLUSH ? "flushed" : "deleted", done);
        if (busy)
            buf_printf(out, "busy %zu (being delivered now; not changed)\n", busy);
    }
    return rc;
}

/* "stats": the queue's numbers as "NAME VALUE" lines, read-only, for the
 * http service's /metrics (docs/http.md). One pass over the table under
 * the lock: no sorting, no disk. A recipient a delivery thread has counts
 * as delivering, not in its state; deleted ones are not counted. */
static int cmd_stats(queue *q, int argc, buf *out, hv_err *err)
{
    if (argc > 0)
        return hv_err_set(err, -EINVAL, "usage: stats");
    unsigned long long msgs = 0, bytes = 0, delivering = 0, segs = 0, seg_bytes = 0;
    unsigned long long mstate[QUEUE_HELD + 1] = {0}, rstate[QUEUE_BOUNCED + 1] = {0};
    unsigned long long held[QHOLD_OPERATOR + 1] = {0};
    long long oldest = 0;
    pthread_mutex_lock(&q->mu);
    for (size_t i = 0; i < q->tab_cap; i++)
        for (qmsg *m = q->tab[i]; m; m = m->hnext) {
            msgs++;
            bytes += m->size;
            if (!oldest || m->arrival < oldest)
                oldest = m->arrival;
            int has[QUEUE_HELD + 1] = {0};
            for (uint32_t k = 0; k < m->nrcpts; k++) {
                const qrcpt *r = &m->rcpts[k];
                if (r->state > QUEUE_BOUNCED)
                    continue;
                if (r->busy) {
                    delivering++;
                    continue;
                }
                rstate[r->state]++;
                if (r->state <= QUEUE_HELD)
                    has[r->state] = 1;
                if (r->state == QUEUE_HELD && r->hold_kind <= QHOLD_OPERATOR)
                    held[r->hold_kind]++;
            }
            for (int k = 0; k <= QUEUE_HELD; k++)
                mstate[k] += (unsigned long long)has[k];
        }
    for (const qseg *sg = q->segs; sg; sg = sg->next) {
        segs++;
        seg_bytes += sg->size;
    }
    buf_printf(out, "messages %llu\nbytes %llu\noldest_arrival_ms %lld\n", msgs, bytes, oldest);
    for (int k = 0; k <= QUEUE_HELD; k++)
        buf_printf(out, "messages_%s %llu\n", queue_state_name(k), mstate[k]);
    for (int k = 0; k <= QUEUE_BOUNCED; k++)
        buf_printf(out, "recipients_%s %llu\n", queue_state_name(k), rstate[k]);
    buf_printf(out, "recipients_delivering %llu\nheld_account %llu\nheld_store %llu\n"
               "held_operator %llu\nsubmitted %llu\nsyncs %llu\nlog_segments %llu\n"
               "log_bytes %llu\naccepting %d\n", delivering, held[QHOLD_ACCOUNT],
               held[QHOLD_STORE], held[QHOLD_OPERATOR], (unsigned long long)q->nsubmits,
               (unsigned long long)q->nsyncs, segs, seg_bytes, !q->broken);
    if (q->broken) {
        buf_append_str(out, "broken_reason ");
        put_field(out, q->broken_msg);
        buf_append_str(out, "\n");
    }
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int queue_control(queue *q, int argc, char **argv, buf *out, hv_err *err)
{
    if (argc < 1)
        return hv_err_set(err, -EINVAL, "no queue command");
    const char *c = argv[0];
    if (strcmp(c, "list") == 0)
        return cmd_list(q, argc - 1, argv + 1, out, err);
    if (strcmp(c, "show") == 0)
        return cmd_show(q, argc - 1, argv + 1, out, err);
    if (strcmp(c, "hold") == 0)
        return cmd_act(q, ACT_HOLD, argc - 1, argv + 1, out, err);
    if (strcmp(c, "release") == 0)
        return cmd_act(q, ACT_RELEASE, argc - 1, argv + 1, out, err);
    if (strcmp(c, "flush") == 0)
        return cmd_act(q, ACT_FLUSH, argc - 1, argv + 1, out, err);
    if (strcmp(c, "delete") == 0)
        return cmd_act(q, ACT_DELETE, argc - 1, argv + 1, out, err);
    if (strcmp(c, "stats") == 0)
        return cmd_stats(q, argc - 1, out, err);
    return hv_err_set(err, -EINVAL, "unknown queue command '%s'", c);
}

/* ---------- the socket ---------- */

typedef struct ctl_server {
    queue *q;
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int stop;
    pthread_t tid;
} ctl_server;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (errno == EAGAIN) {
                struct pollfd pfd = {fd, POLLOUT, 0};
                if (poll(&pfd, 1, CTL_READ_MS) > 0)
                    continue;
            }
            return;
        }
        b += w;
        n -= (size_t)w;
    }
}

static void serve_client(ctl_server *s, int fd)
{
    char line[CTL_LINE_MAX + 1];
    size_t len = 0;
    int64_t deadline = mono_ms() + CTL_READ_MS;
    int complete = 0;
    while (len < CTL_LINE_MAX) {
        int64_t left = deadline - mono_ms();
        struct pollfd pfd = {fd, POLLIN, 0};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            break;
        ssize_t r = recv(fd, line + len, CTL_LINE_MAX - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        char *nl = memchr(line + len, '\n', (size_t)r);
        len += (size_t)r;
        if (nl) {
            *nl = 0;
            complete = 1;
            break;
        }
    }
    if (!complete) {
        static const char msg[] = "error request must be one line of at most 8 KiB\n";
        write_all(fd, msg, sizeof(msg) - 1);
        return;
    }
    char *argv[CTL_MAX_ARGS];
    int argc = 0;
    for (char *p = line; argc < CTL_MAX_ARGS;) {
        argv[argc++] = p;
        char *t = strchr(p, '\t');
        if (!t)
            break;
        *t = 0;
        p = t + 1;
    }
    buf out;
    buf_init(&out);
    hv_err err = {0};
    int rc = queue_control(s->q, argc, argv, &out, &err);
    if (rc < 0) {
        char msg[600];
        int n = snprintf(msg, sizeof(msg), "error %s\n", err.msg);
        write_all(fd, msg, (size_t)n);
    } else {
        write_all(fd, "ok\n", 3);
        write_all(fd, out.data, out.len);
    }
    buf_free(&out);
}

static void *ctl_main(void *arg)
{
    ctl_server *s = arg;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pfd = {s->fd, POLLIN, 0};
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        serve_client(s, c);
        close(c);
    }
    return NULL;
}

void *queue_ctl_start(queue *q, const char *path, hv_err *err)
{
    ctl_server *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->q = q;
    if (strlen(path) >= sizeof(s->path)) {
        hv_err_set(err, -ENAMETOOLONG, "control socket path too long: %s", path);
        free(s);
        return NULL;
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    char dir[sizeof(s->path)];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        if (fs_mkdir_p(dir, 0700, err) < 0) {
            free(s);
            return NULL;
        }
    }
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        hv_err_sys(err, "socket");
        free(s);
        return NULL;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, s->path, strlen(s->path) + 1);
    unlink(s->path); /* a stale one from a crash; we hold the queue lock */
    mode_t old = umask(0077);
    int rc = bind(s->fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(s->fd, 16) < 0) {
        hv_err_sys(err, "bind %s", s->path);
        close(s->fd);
        free(s);
        return NULL;
    }
    pthread_create(&s->tid, NULL, ctl_main, s);
    return s;
}

void queue_ctl_stop(void *ctl)
{
    ctl_server *s = ctl;
    if (!s)
        return;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    pthread_join(s->tid, NULL);
    close(s->fd);
    unlink(s->path);
    free(s);
}
