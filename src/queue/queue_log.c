/*
 * queue_log.c - the queue's log on disk (docs/queue-format.md).
 *
 * Everything the queue knows is in one append-only log of segment files:
 * each message (envelope, recipient states and data) as one frame, each
 * later recipient state change as a small frame. Frames carry a length, a
 * CRC32C and a sequence number that grows by one per record, which is what
 * tells a torn tail (cut at open) from damage in the middle (reported with
 * its place and skipped, the segment kept for an operator).
 *
 * Durability is a group commit: appends happen under the queue lock, and
 * whoever needs its bytes durable either finds a sync in progress and
 * waits for the next one, or becomes the leader and runs one fdatasync
 * for everything written so far. Twenty sessions submitting at once thus
 * share one disk flush instead of paying twenty.
 *
 * Space comes back by whole segments, oldest first: a segment goes when it
 * and every older one hold no live message (state records in it can then
 * only concern finished messages). Messages that stay long (held mail)
 * are copied forward, with their current states, into the newest segment
 * so that the old ones can go.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "queue/queue_internal.h"

#define READ_CHUNK (1u << 20)

/* ---------- encoding ---------- */

size_t qlog_frame_begin(buf *b, int type, int64_t now)
{
    size_t start = b->len;
    buf_put_u32(b, 0); /* length, filled by qlog_frame_end */
    buf_put_u32(b, 0); /* crc, filled by qlog_append */
    buf_put_u8(b, (uint8_t)type);
    buf_put_u8(b, QLOG_VERSION);
    buf_put_u16(b, 0);
    buf_put_u32(b, 0);
    buf_put_u64(b, 0); /* seq, filled by qlog_append */
    buf_put_u64(b, (uint64_t)now);
    return start;
}

void qlog_frame_end(buf *b, size_t start)
{
    st32(b->data + start, (uint32_t)(b->len - start - QLOG_FRAME_HDR));
}

void qlog_put_str(buf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > 65535)
        n = 65535; /* callers check lengths; this only keeps the frame sane */
    buf_put_u16(b, (uint16_t)n);
    buf_append(b, s ? s : "", n);
}

static void put_rcpt_state(buf *b, const qrcpt *r)
{
    buf_put_u8(b, r->state);
    buf_put_u8(b, r->hold_kind);
    buf_put_u8(b, r->flags);
    buf_put_u8(b, 0);
    buf_put_u32(b, r->attempts);
    buf_put_u64(b, (uint64_t)r->next_try);
    qlog_put_str(b, r->reason);
}

void qlog_put_message(buf *b, const qmsg *m, const qbounce *parent, const void *data,
                      size_t len, uint32_t *data_rel)
{
    size_t frame_start = b->len - QLOG_FRAME_HDR - QLOG_BODY_HDR;
    buf_put_u64(b, m->id);
    buf_put_u64(b, (uint64_t)m->arrival);
    buf_put_u32(b, m->flags);
    qlog_put_str(b, m->mail_from);
    qlog_put_str(b, m->envid);
    qlog_put_str(b, m->client_addr);
    qlog_put_str(b, m->client_helo);
    qlog_put_str(b, m->auth_user);
    buf_put_u32(b, m->nrcpts);
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        const qrcpt *r = &m->rcpts[i];
        qlog_put_str(b, r->address);
        qlog_put_str(b, r->account);
        qlog_put_str(b, r->orcpt);
        buf_put_u32(b, r->notify);
        put_rcpt_state(b, r);
    }
    buf_put_u64(b, parent ? parent->msg->id : 0);
    buf_put_u32(b, parent ? (uint32_t)parent->n : 0);
    for (size_t i = 0; parent && i < parent->n; i++) {
        buf_put_u32(b, parent->idx[i]);
        buf_put_u8(b, QUEUE_BOUNCED);
        buf_put_u8(b, 0);
        buf_put_u16(b, 0);
        qlog_put_str(b, parent->reason[i]);
    }
    buf_put_u64(b, len);
    *data_rel = (uint32_t)(b->len - frame_start);
    if (data)
        buf_append(b, data, len);
}

void qlog_put_state(buf *b, const qmsg *m, const qrcpt *r)
{
    buf_put_u64(b, m->id);
    buf_put_u32(b, r->idx);
    put_rcpt_state(b, r);
}

/* ---------- decoding ---------- */

static char *rd_str(rd *r, int null_if_empty)
{
    uint16_t n = rd_u16(r);
    const uint8_t *p = rd_bytes(r, n);
    if (!r->ok)
        return NULL;
    if (n == 0 && null_if_empty)
        return NULL;
    if (memchr(p, 0, n)) {
        r->ok = 0;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s)
        abort();
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static void free_msg(qmsg *m)
{
    if (!m)
        return;
    for (uint32_t i = 0; m->rcpts && i < m->nrcpts; i++) {
        free(m->rcpts[i].address);
        free(m->rcpts[i].account);
        free(m->rcpts[i].orcpt);
        free(m->rcpts[i].reason);
    }
    free(m->rcpts);
    free(m->mail_from);
    free(m->envid);
    free(m->client_addr);
    free(m->client_helo);
    free(m->auth_user);
    free(m);
}

static void rd_rcpt_state(rd *r, qrcpt *x)
{
    x->state = rd_u8(r);
    x->hold_kind = rd_u8(r);
    x->flags = rd_u8(r);
    (void)rd_u8(r);
    x->attempts = rd_u32(r);
    x->next_try = (int64_t)rd_u64(r);
    free(x->reason);
    x->reason = rd_str(r, 0);
    if (x->state > QSTATE_DELETED || x->hold_kind > QHOLD_OPERATOR)
        r->ok = 0;
}

typedef struct parent_upd {
    uint64_t id;
    uint32_t n;
    uint32_t *idx;
    char **reason;
} parent_upd;

/* Decodes a MESSAGE body (after the body header). */
static int decode_message(const uint8_t *p, size_t n, uint32_t body_off, qmsg **out,
                          parent_upd *pu)
{
    rd r;
    rd_init(&r, p, n);
    qmsg *m = calloc(1, sizeof(*m));
    if (!m)
        abort();
    memset(pu, 0, sizeof(*pu));
    m->id = rd_u64(&r);
    m->arrival = (int64_t)rd_u64(&r);
    m->flags = rd_u32(&r);
    m->mail_from = rd_str(&r, 0);
    m->envid = rd_str(&r, 1);
    m->client_addr = rd_str(&r, 0);
    m->client_helo = rd_str(&r, 0);
    m->auth_user = rd_str(&r, 1);
    uint32_t nr = rd_u32(&r);
    if (!r.ok || nr == 0 || nr > r.left / 24)
        goto bad;
    m->rcpts = calloc(nr, sizeof(qrcpt));
    if (!m->rcpts)
        abort();
    m->nrcpts = nr;
    for (uint32_t i = 0; i < nr && r.ok; i++) {
        qrcpt *x = &m->rcpts[i];
        x->msg = m;
        x->idx = i;
        x->heap_idx = SIZE_MAX;
        x->address = rd_str(&r, 0);
        x->account = rd_str(&r, 1);
        x->orcpt = rd_str(&r, 1);
        x->notify = rd_u32(&r);
        rd_rcpt_state(&r, x);
    }
    pu->id = rd_u64(&r);
    pu->n = rd_u32(&r);
    if (!r.ok || pu->n > r.left / 10)
        goto bad;
    if (pu->n) {
        pu->idx = calloc(pu->n, sizeof(uint32_t));
        pu->reason = calloc(pu->n, sizeof(char *));
        if (!pu->idx || !pu->reason)
            abort();
    }
    for (uint32_t i = 0; i < pu->n && r.ok; i++) {
        pu->idx[i] = rd_u32(&r);
        (void)rd_u32(&r); /* state (BOUNCED), reserved */
        pu->reason[i] = rd_str(&r, 0);
    }
    uint64_t len = rd_u64(&r);
    if (!r.ok || len != r.left)
        goto bad;
    m->size = len;
    m->data_rel = body_off + (uint32_t)(n - r.left);
    *out = m;
    return 0;
bad:
    for (uint32_t i = 0; i < pu->n; i++)
        free(pu->reason ? pu->reason[i] : NULL);
    free(pu->idx);
    free(pu->reason);
    memset(pu, 0, sizeof(*pu));
    free_msg(m);
    return -EINVAL;
}

static void free_parent(parent_upd *pu)
{
    for (uint32_t i = 0; i < pu->n; i++)
        free(pu->reason[i]);
    free(pu->idx);
    free(pu->reason);
}

/* ---------- segments ---------- */

static void seg_path(const queue *q, uint64_t no, char *out, size_t len)
{
    snprintf(out, len, "%s/%020llu.qlog", q->dir, (unsigned long long)no);
}

static int seg_create(queue *q, uint64_t no, qseg **out, hv_err *err)
{
    char path[4096];
    seg_path(q, no, path, sizeof(path));
    uint8_t h[QLOG_SEG_HDR] = {0};
    memcpy(h, QLOG_MAGIC, 8);
    st32(h + 8, QLOG_VERSION);
    st64(h + 16, no);
    st64(h + 24, q->last_id);
    st64(h + 32, q->seq);
    st32(h + 44, crc32c(0, h, 44));
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_sys(err, "create queue segment %s", path);
    int rc = fs_write_full(fd, h, sizeof(h));
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    if (rc < 0) {
        errno = -rc;
        rc = hv_err_sys(err, "write queue segment header %s", path);
        close(fd);
        unlink(path);
        return rc;
    }
    rc = fs_fsync_dir(q->dir, err);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    qseg *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->no = no;
    s->fd = fd;
    s->size = QLOG_SEG_HDR;
    *out = s;
    return 0;
}

static void seg_link(queue *q, qseg *s)
{
    s->next = NULL;
    if (q->tail)
        q->tail->next = s;
    else
        q->segs = s;
    q->tail = s;
}

void qseg_unref(queue *q, qseg *s)
{
    (void)q;
    if (--s->refs == 0 && s->gone) {
        close(s->fd);
        free(s);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int list_segments(const char *dir, uint64_t **out, size_t *n, hv_err *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return hv_err_sys(err, "open queue folder %s", dir);
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strlen(e->d_name) != 25 || strcmp(e->d_name + 20, ".qlog") != 0)
            continue;
        char *end;
        unsigned long long no = strtoull(e->d_name, &end, 10);
        if (end != e->d_name + 20)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            *out = realloc(*out, cap * sizeof(uint64_t));
            if (!*out)
                abort();
        }
        (*out)[(*n)++] = no;
    }
    closedir(d);
    if (*n)
        qsort(*out, *n, sizeof(uint64_t), cmp_u64);
    return 0;
}

/* ---------- reading frames ---------- */

typedef struct freader {
    int fd;
    uint64_t size;
    uint64_t off;
    buf chunk;
    uint64_t chunk_off;
} freader;

static const uint8_t *fr_window(freader *fr, uint64_t off, size_t n)
{
    if (off + n > fr->size)
        return NULL;
    if (off >= fr->chunk_off && off + n <= fr->chunk_off + fr->chunk.len)
        return fr->chunk.data + (off - fr->chunk_off);
    size_t want = n > READ_CHUNK ? n : READ_CHUNK;
    if (off + want > fr->size)
        want = (size_t)(fr->size - off);
    buf_reset(&fr->chunk);
    buf_reserve(&fr->chunk, want);
    ssize_t r = fs_pread_full(fr->fd, fr->chunk.data, want, (off_t)off);
    if (r < (ssize_t)n)
        return NULL;
    fr->chunk.len = (size_t)r;
    fr->chunk_off = off;
    return fr->chunk.data;
}

enum { FR_FRAME, FR_END, FR_BAD };

/* The next frame at fr->off: checks length, CRC and version. */
static int fr_next(freader *fr, const uint8_t **frame, size_t *len)
{
    if (fr->off == fr->size)
        return FR_END;
    const uint8_t *h = fr_window(fr, fr->off, QLOG_FRAME_HDR);
    if (!h)
        return FR_BAD;
    uint32_t body = le32(h);
    if (body < QLOG_BODY_HDR || body > QLOG_MAX_BODY)
        return FR_BAD;
    const uint8_t *f = fr_window(fr, fr->off, QLOG_FRAME_HDR + (size_t)body);
    if (!f)
        return FR_BAD;
    uint32_t crc = crc32c(0, f, 4);
    crc = crc32c(crc, f + QLOG_FRAME_HDR, body);
    if (crc != le32(f + 4) || f[QLOG_FRAME_HDR + 1] != QLOG_VERSION)
        return FR_BAD;
    *frame = f;
    *len = QLOG_FRAME_HDR + (size_t)body;
    fr->off += *len;
    return FR_FRAME;
}

static uint64_t frame_seq(const uint8_t *f) { return le64(f + QLOG_FRAME_HDR + 8); }

/* From off, do valid frames with consecutive sequence numbers (the first
 * above after_seq) run to exactly the end of the file? A frame image
 * inside a message body cannot do that unless it guessed the numbers. */
static int chain_to_end(freader *fr, uint64_t off, uint64_t after_seq)
{
    uint64_t last = 0;
    int seen = 0;
    fr->off = off;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int r = fr_next(fr, &f, &n);
        if (r == FR_END)
            return seen;
        if (r != FR_FRAME)
            return 0;
        uint64_t s = frame_seq(f);
        if (seen ? s != last + 1 : s <= after_seq)
            return 0;
        seen = 1;
        last = s;
    }
}

static int find_valid_after(freader *fr, uint64_t off, uint64_t after_seq, uint64_t *found)
{
    for (uint64_t o = off + 1; o + QLOG_FRAME_HDR + QLOG_BODY_HDR <= fr->size; o++) {
        const uint8_t *f;
        size_t n;
        fr->off = o;
        if (fr_next(fr, &f, &n) == FR_FRAME && chain_to_end(fr, o, after_seq)) {
            *found = o;
            return 1;
        }
    }
    return 0;
}

/* ---------- recovery ---------- */

static qmsg *table_take(queue *q, uint64_t id)
{
    if (!q->tab_cap)
        return NULL;
    size_t h = (size_t)(id * 0x9E3779B97F4A7C15ull >> 20) & (q->tab_cap - 1);
    for (qmsg **pp = &q->tab[h]; *pp; pp = &(*pp)->hnext)
        if ((*pp)->id == id) {
            qmsg *m = *pp;
            *pp = m->hnext;
            m->hnext = NULL;
            m->in_table = 0;
            q->nmsgs--;
            return m;
        }
    return NULL;
}


static int rcpt_finished(int st)
{
    return st == QUEUE_DELIVERED || st == QUEUE_BOUNCED || st == QSTATE_DELETED;
}

static void recount(qmsg *m)
{
    m->unfinished = 0;
    for (uint32_t i = 0; i < m->nrcpts; i++)
        if (!rcpt_finished(m->rcpts[i].state))
            m->unfinished++;
}

static void drop_recovered(qmsg *m)
{
    if (m->seg) {
        m->seg->live--;
        m->seg->live_bytes -= m->frame_len;
    }
    free_msg(m);
}

static void apply_frame(queue *q, qseg *s, uint64_t off, const uint8_t *f, size_t len)
{
    const uint8_t *body = f + QLOG_FRAME_HDR;
    size_t blen = len - QLOG_FRAME_HDR;
    const uint8_t *p = body + QLOG_BODY_HDR;
    size_t n = blen - QLOG_BODY_HDR;
    switch (body[0]) {
    case QREC_MESSAGE: {
        qmsg *m;
        parent_upd pu;
        if (decode_message(p, n, QLOG_FRAME_HDR + QLOG_BODY_HDR, &m, &pu) < 0) {
            log_error("queue_record_bad segment=%llu offset=%llu reason=\"message record "
                      "malformed\"", (unsigned long long)s->no, (unsigned long long)off);
            return;
        }
        if (m->id > q->last_id)
            q->last_id = m->id;
        m->seg = s;
        m->frame_off = off;
        m->frame_len = (uint32_t)len;
        s->live++;
        s->live_bytes += len;
        qmsg *old = table_take(q, m->id);
        if (old)
            drop_recovered(old); /* a copy forward supersedes it */
        recount(m);
        if (m->unfinished)
            queue_table_insert(q, m);
        else
            drop_recovered(m);
        if (pu.id) {
            qmsg *pm = queue_find(q, pu.id);
            for (uint32_t i = 0; pm && i < pu.n; i++) {
                if (pu.idx[i] >= pm->nrcpts)
                    continue;
                qrcpt *r = &pm->rcpts[pu.idx[i]];
                r->state = QUEUE_BOUNCED;
                r->hold_kind = 0;
                free(r->reason);
                r->reason = pu.reason[i];
                pu.reason[i] = NULL;
            }
            if (pm) {
                recount(pm);
                if (!pm->unfinished)
                    drop_recovered(table_take(q, pm->id));
            }
        }
        free_parent(&pu);
        break;
    }
    case QREC_STATE: {
        rd r;
        rd_init(&r, p, n);
        uint64_t id = rd_u64(&r);
        uint32_t idx = rd_u32(&r);
        qrcpt tmp = {0};
        rd_rcpt_state(&r, &tmp);
        qmsg *m = r.ok ? queue_find(q, id) : NULL;
        if (!r.ok)
            log_error("queue_record_bad segment=%llu offset=%llu reason=\"state record "
                      "malformed\"", (unsigned long long)s->no, (unsigned long long)off);
        if (!m || idx >= m->nrcpts) {
            free(tmp.reason);
            return; /* its message finished and its segment went */
        }
        qrcpt *x = &m->rcpts[idx];
        x->state = tmp.state;
        x->hold_kind = tmp.hold_kind;
        x->flags = tmp.flags;
        x->attempts = tmp.attempts;
        x->next_try = tmp.next_try;
        free(x->reason);
        x->reason = tmp.reason;
        recount(m);
        if (!m->unfinished)
            drop_recovered(table_take(q, id));
        break;
    }
    case QREC_DELETE: {
        rd r;
        rd_init(&r, p, n);
        uint64_t id = rd_u64(&r);
        qmsg *m = r.ok ? table_take(q, id) : NULL;
        if (m)
            drop_recovered(m);
        break;
    }
    default:
        log_error("queue_record_bad segment=%llu offset=%llu reason=\"unknown type %u\"",
                  (unsigned long long)s->no, (unsigned long long)off, body[0]);
    }
}

static void note_damage(queue *q, uint64_t seg, uint64_t off, uint64_t bytes)
{
    q->damage = realloc(q->damage, (q->ndamage + 1) * sizeof(qdamage));
    if (!q->damage)
        abort();
    q->damage[q->ndamage++] = (qdamage){seg, off, bytes};
    log_error("queue_damage segment=%llu offset=%llu bytes=%llu reason=\"frames fail their "
              "checksum; skipped, the segment is kept as .damaged\"",
              (unsigned long long)seg, (unsigned long long)off, (unsigned long long)bytes);
}

/* Replays one segment. last: the newest segment (a bad tail is torn). */
static int replay_segment(queue *q, qseg *s, int last, hv_err *err)
{
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return hv_err_sys(err, "stat queue segment %llu", (unsigned long long)s->no);
    freader fr = {.fd = s->fd, .size = (uint64_t)st.st_size, .off = QLOG_SEG_HDR};
    buf_init(&fr.chunk);
    s->size = fr.size;
    int rc = 0;
    for (;;) {
        const uint8_t *f;
        size_t n;
        uint64_t at = fr.off;
        int r = fr_next(&fr, &f, &n);
        if (r == FR_END)
            break;
        if (r == FR_FRAME && frame_seq(f) > q->seq) {
            q->seq = frame_seq(f);
            apply_frame(q, s, at, f, n);
            continue;
        }
        uint64_t found;
        if (find_valid_after(&fr, at, q->seq, &found)) {
            note_damage(q, s->no, at, found - at);
            s->damaged = 1;
            fr.off = found;
            continue;
        }
        if (last) {
            /* A torn write: never acknowledged, so cut it off. */
            if (ftruncate(s->fd, (off_t)at) < 0 || fdatasync(s->fd) < 0) {
                rc = hv_err_sys(err, "cut torn tail of queue segment %llu",
                                (unsigned long long)s->no);
                break;
            }
            q->dropped_tail += fr.size - at;
            log_warn("queue_torn_tail segment=%llu offset=%llu bytes=%llu",
                     (unsigned long long)s->no, (unsigned long long)at,
                     (unsigned long long)(fr.size - at));
            s->size = at;
        } else {
            note_damage(q, s->no, at, fr.size - at);
            s->damaged = 1;
        }
        break;
    }
    buf_free(&fr.chunk);
    return rc;
}

int qlog_open(queue *q, hv_err *err)
{
    uint64_t *nos;
    size_t n;
    int rc = list_segments(q->dir, &nos, &n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char path[4096];
        seg_path(q, nos[i], path, sizeof(path));
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = hv_err_sys(err, "open queue segment %s", path);
            break;
        }
        uint8_t h[QLOG_SEG_HDR];
        ssize_t got = fs_pread_full(fd, h, sizeof(h), 0);
        int ok = got == (ssize_t)sizeof(h) && memcmp(h, QLOG_MAGIC, 8) == 0 &&
                 le32(h + 8) == QLOG_VERSION && le64(h + 16) == nos[i] &&
                 crc32c(0, h, 44) == le32(h + 44);
        if (!ok) {
            struct stat st;
            if (i == n - 1 && fstat(fd, &st) == 0 && st.st_size <= QLOG_SEG_HDR) {
                /* Created but never used: a crash during rotation. */
                close(fd);
                unlink(path);
                log_warn("queue_torn_segment segment=%llu", (unsigned long long)nos[i]);
                continue;
            }
            close(fd);
            note_damage(q, nos[i], 0, 0);
            /* Keep it out of the way (and out of the numbering). */
            char dpath[4200];
            snprintf(dpath, sizeof(dpath), "%s.damaged", path);
            rename(path, dpath);
            continue;
        }
        if (le64(h + 24) > q->last_id)
            q->last_id = le64(h + 24);
        if (le64(h + 32) > q->seq)
            q->seq = le64(h + 32);
        qseg *s = calloc(1, sizeof(*s));
        if (!s)
            abort();
        s->no = nos[i];
        s->fd = fd;
        seg_link(q, s);
        rc = replay_segment(q, s, i == n - 1, err);
    }
    free(nos);
    if (rc < 0)
        return rc;
    if (!q->tail) {
        qseg *s;
        rc = seg_create(q, 1, &s, err);
        if (rc < 0)
            return rc;
        seg_link(q, s);
    }
    return 0;
}

void qlog_close(queue *q)
{
    qseg *s = q->segs;
    while (s) {
        qseg *next = s->next;
        close(s->fd);
        free(s);
        s = next;
    }
    q->segs = q->tail = NULL;
    free(q->damage);
    q->damage = NULL;
}

/* ---------- appending ---------- */

static int set_broken(queue *q, int rc, const char *what, hv_err *err)
{
    q->broken = 1;
    snprintf(q->broken_msg, sizeof(q->broken_msg), "%s: %s", what, strerror(-rc));
    log_error("queue_broken reason=\"%s\"", q->broken_msg);
    return hv_err_set(err, rc, "queue %s", q->broken_msg);
}

static int rotate(queue *q, hv_err *err)
{
    /* Everything in the old tail becomes durable first, so only the newest
     * segment can ever have a torn tail. */
    if (fdatasync(q->tail->fd) < 0)
        return set_broken(q, -errno, "sync segment", err);
    q->synced = q->written;
    qseg *s;
    int rc = seg_create(q, q->tail->no + 1, &s, err);
    if (rc < 0)
        return set_broken(q, rc, "create segment", err);
    seg_link(q, s);
    return 0;
}

int qlog_append(queue *q, buf *frames, qseg **seg_out, uint64_t *off_out, uint64_t *end,
                hv_err *err)
{
    if (q->broken)
        return hv_err_set(err, -EIO, "queue refuses writes after a failure: %s", q->broken_msg);
    uint64_t segsize = q->tune.segment_size ? q->tune.segment_size : QLOG_SEG_SIZE_DEFAULT;
    if (q->tail->size + frames->len > segsize && q->tail->size > QLOG_SEG_HDR) {
        int rc = rotate(q, err);
        if (rc < 0)
            return rc;
    }
    for (size_t p = 0; p < frames->len;) {
        uint8_t *f = frames->data + p;
        uint32_t body = le32(f);
        st64(f + QLOG_FRAME_HDR + 8, ++q->seq);
        uint32_t crc = crc32c(0, f, 4);
        st32(f + 4, crc32c(crc, f + QLOG_FRAME_HDR, body));
        p += QLOG_FRAME_HDR + body;
    }
    qseg *s = q->tail;
    int rc = fs_pwrite_full(s->fd, frames->data, frames->len, (off_t)s->size);
    if (rc < 0)
        return set_broken(q, rc, "write", err);
    if (seg_out)
        *seg_out = s;
    if (off_out)
        *off_out = s->size;
    s->size += frames->len;
    q->written += frames->len;
    if (end)
        *end = q->written;
    return 0;
}

int qlog_append_tail(queue *q, buf *frame, const void *tail, size_t tail_len, qseg **seg_out,
                     uint64_t *off_out, uint64_t *end, hv_err *err)
{
    if (q->broken)
        return hv_err_set(err, -EIO, "queue refuses writes after a failure: %s", q->broken_msg);
    uint64_t segsize = q->tune.segment_size ? q->tune.segment_size : QLOG_SEG_SIZE_DEFAULT;
    size_t total = frame->len + tail_len;
    if (q->tail->size + total > segsize && q->tail->size > QLOG_SEG_HDR) {
        int rc = rotate(q, err);
        if (rc < 0)
            return rc;
    }
    uint8_t *f = frame->data;
    st64(f + QLOG_FRAME_HDR + 8, ++q->seq);
    uint32_t crc = crc32c(0, f, 4);
    crc = crc32c(crc, f + QLOG_FRAME_HDR, frame->len - QLOG_FRAME_HDR);
    st32(f + 4, crc32c(crc, tail, tail_len));
    qseg *s = q->tail;
    struct iovec iov[2] = {{f, frame->len}, {(void *)tail, tail_len}};
    off_t at = (off_t)s->size;
    int rc = 0;
    for (int i = 0; rc == 0 && i < 2;) {
        ssize_t n = pwritev(s->fd, iov + i, 2 - i, at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            break;
        }
        at += n;
        while (i < 2 && (size_t)n >= iov[i].iov_len)
            n -= (ssize_t)iov[i++].iov_len;
        if (i < 2) {
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + n;
            iov[i].iov_len -= (size_t)n;
        }
    }
    if (rc < 0)
        return set_broken(q, rc, "write", err);
    if (seg_out)
        *seg_out = s;
    if (off_out)
        *off_out = s->size;
    s->size += total;
    q->written += total;
    if (end)
        *end = q->written;
    return 0;
}

int qlog_sync_to(queue *q, uint64_t end, hv_err *err)
{
    while (q->synced < end) {
        if (q->broken)
            return hv_err_set(err, -EIO, "queue refuses writes after a failure: %s",
                              q->broken_msg);
        if (q->syncing) {
            pthread_cond_wait(&q->sync_cv, &q->mu);
            continue;
        }
        q->syncing = 1;
        q->nsyncs++;
        uint64_t target = q->written;
        qseg *s = q->tail;
        s->refs++;
        pthread_mutex_unlock(&q->mu);
        int rc = fdatasync(s->fd) < 0 ? -errno : 0;
        pthread_mutex_lock(&q->mu);
        qseg_unref(q, s);
        q->syncing = 0;
        if (rc < 0)
            set_broken(q, rc, "sync", NULL);
        else if (target > q->synced)
            q->synced = target;
        pthread_cond_broadcast(&q->sync_cv);
    }
    return 0;
}

/* ---------- reclaiming space ---------- */

static void seg_drop(queue *q, qseg *s)
{
    char path[4096];
    seg_path(q, s->no, path, sizeof(path));
    if (s->damaged) {
        char dpath[4200];
        snprintf(dpath, sizeof(dpath), "%s.damaged", path);
        rename(path, dpath);
    } else {
        unlink(path);
    }
    log_debug("queue_segment_dropped segment=%llu", (unsigned long long)s->no);
    q->segs = s->next;
    s->gone = 1;
    if (s->refs == 0) {
        close(s->fd);
        free(s);
    }
}

/* Copies message m forward into the tail with its current states. */
static int copy_forward(queue *q, qmsg *m, hv_err *err)
{
    buf data;
    buf_init(&data);
    m->busy++; /* pinned while unlocked */
    pthread_mutex_unlock(&q->mu);
    int rc = queue_read_data(q, m, &data, err);
    pthread_mutex_lock(&q->mu);
    m->busy--;
    /* m may have finished meanwhile. */
    if (!m->in_table) {
        if (m->busy == 0)
            queue_msg_free(m);
        buf_free(&data);
        return 0;
    }
    if (rc < 0) {
        buf_free(&data);
        return rc;
    }
    buf fr;
    buf_init(&fr);
    size_t start = qlog_frame_begin(&fr, QREC_MESSAGE, queue_now(q));
    uint32_t rel;
    qlog_put_message(&fr, m, NULL, data.data, data.len, &rel);
    qlog_frame_end(&fr, start);
    buf_free(&data);
    qseg *s;
    uint64_t off;
    rc = qlog_append(q, &fr, &s, &off, NULL, err);
    if (rc == 0) {
        m->seg->live--;
        m->seg->live_bytes -= m->frame_len;
        m->seg = s;
        m->frame_off = off;
        m->frame_len = (uint32_t)fr.len;
        m->data_rel = rel;
        s->live++;
        s->live_bytes += fr.len;
    }
    buf_free(&fr);
    return rc;
}

int qlog_reclaim(queue *q, hv_err *err)
{
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    while (q->segs != q->tail && q->segs->live == 0)
        seg_drop(q, q->segs);
    qseg *old = q->segs;
    if (old != q->tail && !q->broken) {
        /* Worth copying when that frees much (old is mostly finished), or
         * when old blocks a later segment that could otherwise go. */
        int worth = old->live_bytes * 2 <= old->size;
        for (qseg *s = old->next; !worth && s && s != q->tail; s = s->next)
            worth = s->live_bytes * 2 <= s->size;
        if (worth) {
            size_t n;
            qmsg **all = queue_sorted(q, &n);
            uint64_t *ids = malloc((n ? n : 1) * sizeof(uint64_t));
            if (!ids)
                abort();
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (all[i]->seg == old)
                    ids[k++] = all[i]->id;
            free(all);
            for (size_t i = 0; i < k && rc == 0; i++) {
                qmsg *m = queue_find(q, ids[i]);
                if (m && m->seg == old)
                    rc = copy_forward(q, m, err);
            }
            free(ids);
            if (rc == 0 && k) {
                log_info("queue_compacted segment=%llu messages=%zu",
                         (unsigned long long)old->no, k);
                rc = qlog_sync_to(q, q->written, err);
            }
            while (rc == 0 && q->segs != q->tail && q->segs->live == 0)
                seg_drop(q, q->segs);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}
