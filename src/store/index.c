/*
 * index.c - the derived state of an account, and its checkpoint file.
 *
 * Replaying the log through ix_apply gives, per mailbox, parallel arrays in
 * uid order (uid, flags, modseq, internal date, size, blob id: 68 bytes a
 * message) plus the account's keywords, subscriptions and settings. The
 * index is never the truth: it is saved now and then to index/index.ckpt
 * with the log position it covers and a CRC32C over the whole file, and is
 * thrown away and rebuilt from the log whenever that file is missing,
 * damaged or does not match the log.
 *
 * The digest is kept here because it must follow every change: four 64-bit
 * lanes, each the sum over every item of the state (mailbox, message,
 * keyword, subscription, setting) of a hash of that item. Sums do not care
 * about order, so two copies with the same state agree whatever their
 * history, and a change costs a subtraction and an addition.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/sha256.h"
#include "store/store_internal.h"

#define IX_MAGIC "HAVENIDX"
#define IX_VERSION 4     /* 4: the INLB section; 3 (no INLB) is still read */
#define IX_VERSION_MIN 3
#define IX_HDR 104
#define TAG(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
#define TAG_KWDS TAG('K', 'W', 'D', 'S')
#define TAG_SUBS TAG('S', 'U', 'B', 'S')
#define TAG_SETT TAG('S', 'E', 'T', 'T')
#define TAG_MBOX TAG('M', 'B', 'O', 'X')
#define TAG_DIDS TAG('D', 'I', 'D', 'S')
#define TAG_INLB TAG('I', 'N', 'L', 'B')
_Static_assert(sizeof(ix_inl) == 56, "INLB entries are 56 bytes on disk");
#define TAG_END TAG('E', 'N', 'D', '!')

/* ---- digest ---- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ n);
}

static const uint64_t lane_seed[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL,
                                      0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL};

static void dg_words(store_index *ix, const uint64_t *w, size_t n, int sign)
{
    /* One chain over the words, then a cheap finish per lane: this runs for
     * every message a FLAGS or EXPUNGE record touches (twice for a flag
     * change), so it must cost little more than the words themselves. */
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++)
        h = mix64(h ^ w[i]) + i;
    for (int k = 0; k < 4; k++) {
        uint64_t l = mix64(h ^ lane_seed[k]);
        ix->digest[k] += sign > 0 ? l : (uint64_t)0 - l;
    }
}

static void dg_msg(store_index *ix, uint32_t mbox, uint32_t uid, uint64_t flags,
                   const store_blob_id *b, int sign)
{
    uint64_t w[7] = {1, (uint64_t)mbox << 32 | uid, flags};
    memcpy(&w[3], b->b, 32);
    dg_words(ix, w, 7, sign);
}

static void dg_mbox(store_index *ix, const ix_mbox *m, int sign)
{
    uint64_t w[5] = {2, m->id, str_hash(m->name, strlen(m->name)),
                     (uint64_t)m->uidvalidity << 32 | m->uidnext, m->special_use};
    dg_words(ix, w, 5, sign);
}

static void dg_str(store_index *ix, uint64_t kind, const char *a, const char *b, int sign)
{
    uint64_t w[3] = {kind, str_hash(a, strlen(a)), b ? str_hash(b, strlen(b)) : 0};
    dg_words(ix, w, 3, sign);
}

void ix_digest_final(const store_index *ix, uint8_t out[32])
{
    uint8_t lanes[32];
    for (int k = 0; k < 4; k++)
        st64(lanes + 8 * k, ix->digest[k]);
    sha256(lanes, sizeof(lanes), out);
}

/* ---- delivery ids ---- */

uint64_t ix_did_hash(const char *id, size_t len)
{
    uint8_t h[32];
    sha256(id, len, h);
    return le64(h);
}

void ix_did_add(store_index *ix, uint64_t hash, uint32_t mailbox, uint32_t uid)
{
    if (ix->ndids == STORE_DELIVERY_IDS_KEPT) {
        ix->dids[ix->did_head] = (ix_did){hash, mailbox, uid};
        ix->did_head = (ix->did_head + 1) % STORE_DELIVERY_IDS_KEPT;
        return;
    }
    if (ix->ndids == ix->dids_cap) {
        ix->dids_cap = ix->dids_cap ? ix->dids_cap * 2 : 64;
        if (ix->dids_cap > STORE_DELIVERY_IDS_KEPT)
            ix->dids_cap = STORE_DELIVERY_IDS_KEPT;
        ix->dids = realloc(ix->dids, ix->dids_cap * sizeof(ix_did));
    }
    ix->dids[ix->ndids++] = (ix_did){hash, mailbox, uid};
}

const ix_did *ix_did_find(const store_index *ix, uint64_t hash)
{
    /* At most 4096 compares of one word: far below the cost of the
     * fdatasync that every delivery pays anyway. */
    for (uint32_t i = 0; i < ix->ndids; i++)
        if (ix->dids[i].hash == hash)
            return &ix->dids[i];
    return NULL;
}

/* The i-th remembered delivery, oldest first. */
static const ix_did *did_at(const store_index *ix, uint32_t i)
{
    return &ix->dids[(ix->ndids == STORE_DELIVERY_IDS_KEPT ? ix->did_head + i : i) %
                     STORE_DELIVERY_IDS_KEPT];
}

/* ---- state ---- */

void ix_init(store_index *ix)
{
    memset(ix, 0, sizeof(*ix));
    ix->next_mailbox_id = 1;
}

static void mbox_free(ix_mbox *m)
{
    free(m->name);
    if (!m->mapped) {
        free(m->uid);
        free(m->flags);
        free(m->modseq);
        free(m->idate);
        free(m->size);
        free(m->blob);
    }
    free(m);
}

void ix_free(store_index *ix)
{
    for (size_t i = 0; i < ix->nmb; i++)
        mbox_free(ix->mb[i]);
    free(ix->mb);
    for (int i = 0; i < STORE_KEYWORD_MAX; i++)
        free(ix->keywords[i]);
    for (size_t i = 0; i < ix->nsubs; i++)
        free(ix->subs[i]);
    free(ix->subs);
    for (size_t i = 0; i < ix->nsettings; i++) {
        free(ix->settings[i].key);
        free(ix->settings[i].val);
    }
    free(ix->settings);
    free(ix->dids);
    if (ix->map)
        munmap(ix->map, ix->maplen);
    if (ix->inl_map)
        munmap(ix->inl_map, ix->inl_maplen);
    ix_init(ix);
}

ix_mbox *ix_mbox_by_id(const store_index *ix, uint32_t id)
{
    for (size_t i = 0; i < ix->nmb; i++)
        if (ix->mb[i]->id == id)
            return ix->mb[i];
    return NULL;
}

ix_mbox *ix_mbox_by_name(const store_index *ix, const char *name)
{
    size_t lo = 0, hi = ix->nmb;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ix->mb[mid]->name, name);
        if (c == 0)
            return ix->mb[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int mbox_cmp(const void *a, const void *b)
{
    return strcmp((*(ix_mbox *const *)a)->name, (*(ix_mbox *const *)b)->name);
}

static void mbox_sort(store_index *ix)
{
    if (ix->nmb)
        qsort(ix->mb, ix->nmb, sizeof(ix_mbox *), mbox_cmp);
}

uint32_t ix_seek(const ix_mbox *m, uint32_t uid)
{
    uint32_t lo = 0, hi = m->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->uid[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void mbox_reserve(ix_mbox *m, uint32_t want)
{
    if (want <= m->cap)
        return;
    uint32_t cap = m->cap ? m->cap : 16;
    while (cap < want)
        cap = cap < (1u << 30) ? cap * 2 : want;
    if (m->mapped) {
        /* The arrays live in the checkpoint's mapping: growing them means
         * taking a private copy first. */
        uint32_t *uid = malloc(cap * sizeof(*uid));
        uint64_t *flags = malloc(cap * sizeof(*flags)), *modseq = malloc(cap * sizeof(*modseq));
        int64_t *idate = malloc(cap * sizeof(*idate));
        uint64_t *size = malloc(cap * sizeof(*size));
        store_blob_id *blob = malloc(cap * sizeof(*blob));
        if (!uid || !flags || !modseq || !idate || !size || !blob)
            abort();
        if (m->n) {
            memcpy(uid, m->uid, m->n * sizeof(*uid));
            memcpy(flags, m->flags, m->n * sizeof(*flags));
            memcpy(modseq, m->modseq, m->n * sizeof(*modseq));
            memcpy(idate, m->idate, m->n * sizeof(*idate));
            memcpy(size, m->size, m->n * sizeof(*size));
            memcpy(blob, m->blob, m->n * sizeof(*blob));
        }
        m->uid = uid, m->flags = flags, m->modseq = modseq, m->idate = idate;
        m->size = size, m->blob = blob;
        m->mapped = 0;
        m->cap = cap;
        return;
    }
    m->uid = realloc(m->uid, cap * sizeof(*m->uid));
    m->flags = realloc(m->flags, cap * sizeof(*m->flags));
    m->modseq = realloc(m->modseq, cap * sizeof(*m->modseq));
    m->idate = realloc(m->idate, cap * sizeof(*m->idate));
    m->size = realloc(m->size, cap * sizeof(*m->size));
    m->blob = realloc(m->blob, cap * sizeof(*m->blob));
    if (!m->uid || !m->flags || !m->modseq || !m->idate || !m->size || !m->blob)
        abort();
    m->cap = cap;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        abort();
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static int bad(hv_err *err, const store_record *r, const char *why)
{
    return hv_err_set(err, -EUCLEAN, "%s record modseq %llu: %s", rec_type_name(r->type),
                      (unsigned long long)r->modseq, why);
}

static int apply_flags(store_index *ix, ix_mbox *m, const store_record *r)
{
    for (size_t k = 0; k < r->nranges; k++) {
        for (uint32_t i = ix_seek(m, r->ranges[k].lo); i < m->n && m->uid[i] <= r->ranges[k].hi;
             i++) {
            uint64_t old = m->flags[i], nf = old;
            if (r->mode == STORE_FLAGS_ADD)
                nf |= r->flags;
            else if (r->mode == STORE_FLAGS_REMOVE)
                nf &= ~r->flags;
            else
                nf = r->flags;
            if (nf != old) {
                dg_msg(ix, m->id, m->uid[i], old, &m->blob[i], -1);
                dg_msg(ix, m->id, m->uid[i], nf, &m->blob[i], +1);
                m->flags[i] = nf;
            }
            m->modseq[i] = r->modseq;
        }
    }
    return 0;
}

static void apply_expunge(store_index *ix, ix_mbox *m, const store_record *r)
{
    uint32_t w = 0;
    size_t k = 0;
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t uid = m->uid[i];
        while (k < r->nranges && r->ranges[k].hi < uid)
            k++;
        if (k < r->nranges && r->ranges[k].lo <= uid) {
            dg_msg(ix, m->id, uid, m->flags[i], &m->blob[i], -1);
            m->total_size -= m->size[i];
            continue;
        }
        if (w != i) {
            m->uid[w] = m->uid[i];
            m->flags[w] = m->flags[i];
            m->modseq[w] = m->modseq[i];
            m->idate[w] = m->idate[i];
            m->size[w] = m->size[i];
            m->blob[w] = m->blob[i];
        }
        w++;
    }
    m->n = w;
}

static int apply_sub(store_index *ix, const store_record *r)
{
    char *name = dup_n(r->name, r->name_len);
    size_t i;
    for (i = 0; i < ix->nsubs; i++)
        if (strcmp(ix->subs[i], name) == 0)
            break;
    if (r->mode && i == ix->nsubs) {
        ix->subs = realloc(ix->subs, (ix->nsubs + 1) * sizeof(char *));
        ix->subs[ix->nsubs++] = name;
        dg_str(ix, 3, name, NULL, +1);
        return 0;
    }
    if (!r->mode && i < ix->nsubs) {
        dg_str(ix, 3, name, NULL, -1);
        free(ix->subs[i]);
        ix->subs[i] = ix->subs[--ix->nsubs];
    }
    free(name);
    return 0;
}

static void apply_setting(store_index *ix, const store_record *r)
{
    char *key = dup_n(r->name, r->name_len);
    size_t i;
    for (i = 0; i < ix->nsettings; i++)
        if (strcmp(ix->settings[i].key, key) == 0)
            break;
    if (i < ix->nsettings) {
        dg_str(ix, 4, key, ix->settings[i].val, -1);
        free(ix->settings[i].key);
        free(ix->settings[i].val);
        ix->settings[i] = ix->settings[--ix->nsettings];
    }
    if (r->value_len) {
        ix->settings = realloc(ix->settings, (ix->nsettings + 1) * sizeof(ix_kv));
        ix->settings[ix->nsettings].key = key;
        ix->settings[ix->nsettings].val = dup_n(r->value, r->value_len);
        dg_str(ix, 4, key, ix->settings[ix->nsettings].val, +1);
        ix->nsettings++;
    } else {
        free(key);
    }
}

int ix_apply(store_index *ix, const store_record *r, hv_err *err)
{
    if (r->type == STORE_REC_CHECKPOINT)
        return r->modseq == ix->modseq ? 0 : bad(err, r, "modseq out of sequence");
    if (r->modseq != ix->modseq + 1)
        return bad(err, r, "modseq out of sequence");
    ix_mbox *m = NULL;
    if (r->type == STORE_REC_MAILBOX_RENAME || r->type == STORE_REC_MAILBOX_DELETE ||
        r->type == STORE_REC_APPEND || r->type == STORE_REC_FLAGS ||
        r->type == STORE_REC_EXPUNGE) {
        m = ix_mbox_by_id(ix, r->mailbox);
        if (!m)
            return bad(err, r, "names a mailbox that does not exist");
    }
    switch (r->type) {
    case STORE_REC_MAILBOX_CREATE: {
        if (ix_mbox_by_id(ix, r->mailbox) || r->mailbox == 0)
            return bad(err, r, "mailbox id already in use");
        char *name = dup_n(r->name, r->name_len);
        if (ix_mbox_by_name(ix, name)) {
            free(name);
            return bad(err, r, "mailbox name already in use");
        }
        m = calloc(1, sizeof(*m));
        m->id = r->mailbox;
        m->name = name;
        m->uidvalidity = r->uidvalidity;
        m->uidnext = 1;
        m->special_use = r->special_use;
        ix->mb = realloc(ix->mb, (ix->nmb + 1) * sizeof(ix_mbox *));
        ix->mb[ix->nmb++] = m;
        mbox_sort(ix);
        if (r->mailbox >= ix->next_mailbox_id)
            ix->next_mailbox_id = r->mailbox + 1;
        if (r->uidvalidity > ix->last_uidvalidity)
            ix->last_uidvalidity = r->uidvalidity;
        dg_mbox(ix, m, +1);
        break;
    }
    case STORE_REC_MAILBOX_RENAME: {
        char *name = dup_n(r->name, r->name_len);
        ix_mbox *other = ix_mbox_by_name(ix, name);
        if (other && other != m) {
            free(name);
            return bad(err, r, "new mailbox name already in use");
        }
        dg_mbox(ix, m, -1);
        free(m->name);
        m->name = name;
        dg_mbox(ix, m, +1);
        mbox_sort(ix);
        break;
    }
    case STORE_REC_MAILBOX_DELETE: {
        for (uint32_t i = 0; i < m->n; i++)
            dg_msg(ix, m->id, m->uid[i], m->flags[i], &m->blob[i], -1);
        dg_mbox(ix, m, -1);
        size_t i;
        for (i = 0; ix->mb[i] != m; i++)
            ;
        memmove(&ix->mb[i], &ix->mb[i + 1], (ix->nmb - i - 1) * sizeof(ix_mbox *));
        ix->nmb--;
        mbox_free(m);
        m = NULL;
        break;
    }
    case STORE_REC_APPEND:
        if (r->uid < m->uidnext || r->uid == 0)
            return bad(err, r, "uid not above the mailbox's uidnext");
        mbox_reserve(m, m->n + 1);
        m->uid[m->n] = r->uid;
        m->flags[m->n] = r->flags;
        m->modseq[m->n] = r->modseq;
        m->idate[m->n] = r->internal_date;
        m->size[m->n] = r->size;
        m->blob[m->n] = r->blob;
        m->n++;
        m->total_size += r->size;
        dg_mbox(ix, m, -1);
        m->uidnext = r->uid + 1;
        dg_mbox(ix, m, +1);
        dg_msg(ix, m->id, r->uid, r->flags, &r->blob, +1);
        if (r->delivery_id_len)
            ix_did_add(ix, ix_did_hash(r->delivery_id, r->delivery_id_len), m->id, r->uid);
        break;
    case STORE_REC_FLAGS:
        apply_flags(ix, m, r);
        break;
    case STORE_REC_EXPUNGE:
        apply_expunge(ix, m, r);
        break;
    case STORE_REC_SUBSCRIBE:
        apply_sub(ix, r);
        break;
    case STORE_REC_SETTING:
        apply_setting(ix, r);
        break;
    case STORE_REC_KEYWORD: {
        char **slot = &ix->keywords[r->keyword_bit - STORE_KEYWORD_FIRST];
        if (*slot)
            return bad(err, r, "keyword bit already assigned");
        *slot = dup_n(r->name, r->name_len);
        dg_str(ix, 5, *slot, NULL, +1);
        break;
    }
    default:
        return bad(err, r, "unknown record type");
    }
    if (m)
        m->highestmodseq = r->modseq;
    ix->modseq = r->modseq;
    return 0;
}

/* ---- checkpoint file ---- */

static void put_str16(buf *b, const char *s)
{
    size_t n = strlen(s);
    buf_put_u16(b, (uint16_t)n);
    buf_append(b, s, n);
}

static size_t section_begin(buf *b, uint32_t tag)
{
    buf_put_u32(b, tag);
    buf_put_u32(b, 0);
    buf_put_u64(b, 0);
    return b->len;
}

static void section_end(buf *b, size_t start) { st64(b->data + start - 8, b->len - start); }

int ix_save(const store_index *ix, const ix_inl *inl, size_t ninl, const char *path,
            uint64_t *inl_at, hv_err *err)
{
    buf b;
    buf_init(&b);
    size_t msgs = 0;
    for (size_t i = 0; i < ix->nmb; i++)
        msgs += ix->mb[i]->n;
    buf_reserve(&b, IX_HDR + msgs * 68 + ninl * sizeof(ix_inl) + 4096);
    buf_append(&b, IX_MAGIC, 8);
    buf_put_u32(&b, IX_VERSION);
    buf_put_u32(&b, 0);
    buf_put_u64(&b, ix->modseq);
    buf_put_u64(&b, ix->seg);
    buf_put_u64(&b, ix->off);
    buf_put_u64(&b, ix->last_seg);
    buf_put_u64(&b, ix->last_off);
    buf_put_u32(&b, ix->next_mailbox_id);
    buf_put_u32(&b, ix->last_uidvalidity);
    for (int k = 0; k < 4; k++)
        buf_put_u64(&b, ix->digest[k]);
    buf_put_u64(&b, 0); /* reserved; header is IX_HDR bytes */

    size_t s = section_begin(&b, TAG_KWDS);
    for (int i = 0; i < STORE_KEYWORD_MAX; i++)
        if (ix->keywords[i]) {
            buf_put_u8(&b, (uint8_t)(i + STORE_KEYWORD_FIRST));
            put_str16(&b, ix->keywords[i]);
        }
    section_end(&b, s);
    s = section_begin(&b, TAG_SUBS);
    for (size_t i = 0; i < ix->nsubs; i++)
        put_str16(&b, ix->subs[i]);
    section_end(&b, s);
    s = section_begin(&b, TAG_SETT);
    for (size_t i = 0; i < ix->nsettings; i++) {
        put_str16(&b, ix->settings[i].key);
        buf_put_u32(&b, (uint32_t)strlen(ix->settings[i].val));
        buf_append_str(&b, ix->settings[i].val);
    }
    section_end(&b, s);
    if (ix->ndids) {
        s = section_begin(&b, TAG_DIDS);
        for (uint32_t i = 0; i < ix->ndids; i++) {
            const ix_did *d = did_at(ix, i);
            buf_put_u64(&b, d->hash);
            buf_put_u32(&b, d->mailbox);
            buf_put_u32(&b, d->uid);
        }
        section_end(&b, s);
    }
    /* Where inline bodies are in the log: read in place from the mapping,
     * so the entries start on an 8-byte boundary of the file. */
    s = section_begin(&b, TAG_INLB);
    buf_put_u64(&b, ninl);
    while (b.len % 8)
        buf_put_u8(&b, 0);
    if (inl_at)
        *inl_at = b.len;
    if (ninl)
        buf_append(&b, inl, ninl * sizeof(ix_inl));
    section_end(&b, s);
    for (size_t i = 0; i < ix->nmb; i++) {
        const ix_mbox *m = ix->mb[i];
        s = section_begin(&b, TAG_MBOX);
        buf_put_u32(&b, m->id);
        buf_put_u32(&b, m->uidvalidity);
        buf_put_u32(&b, m->uidnext);
        buf_put_u32(&b, m->special_use);
        buf_put_u64(&b, m->highestmodseq);
        buf_put_u64(&b, m->total_size);
        buf_put_u32(&b, m->n);
        put_str16(&b, m->name);
        /* Arrays start on an 8-byte boundary of the file, so a reader can
         * use them in place from a mapping; 8-byte items first. */
        while (b.len % 8)
            buf_put_u8(&b, 0);
        buf_append(&b, m->flags, (size_t)m->n * 8);
        buf_append(&b, m->modseq, (size_t)m->n * 8);
        buf_append(&b, m->idate, (size_t)m->n * 8);
        buf_append(&b, m->size, (size_t)m->n * 8);
        buf_append(&b, m->blob, (size_t)m->n * 32);
        buf_append(&b, m->uid, (size_t)m->n * 4);
        section_end(&b, s);
    }
    buf_put_u32(&b, TAG_END);
    buf_put_u32(&b, crc32c(0, b.data, b.len));
    int rc = fs_write_file_atomic(path, b.data, b.len, 0600, err);
    buf_free(&b);
    return rc;
}

static char *get_str16(rd *r)
{
    uint16_t n = rd_u16(r);
    const uint8_t *p = rd_bytes(r, n);
    return p ? dup_n((const char *)p, n) : NULL;
}

static int load_mbox(store_index *ix, rd *r)
{
    ix_mbox *m = calloc(1, sizeof(*m));
    m->id = rd_u32(r);
    m->uidvalidity = rd_u32(r);
    m->uidnext = rd_u32(r);
    m->special_use = rd_u32(r);
    m->highestmodseq = rd_u64(r);
    m->total_size = rd_u64(r);
    uint32_t n = rd_u32(r);
    m->name = get_str16(r);
    size_t pad = (size_t)((8 - ((uintptr_t)r->p & 7)) & 7);
    if (!r->ok || !m->name || r->left < pad || (uint64_t)n * 68 != r->left - pad) {
        mbox_free(m);
        return -1;
    }
    rd_bytes(r, pad);
    if (n) {
        /* In place: the mapping is private, so changes copy pages on
         * write and never reach the file. */
        m->flags = (uint64_t *)rd_bytes(r, (size_t)n * 8);
        m->modseq = (uint64_t *)rd_bytes(r, (size_t)n * 8);
        m->idate = (int64_t *)rd_bytes(r, (size_t)n * 8);
        m->size = (uint64_t *)rd_bytes(r, (size_t)n * 8);
        m->blob = (store_blob_id *)rd_bytes(r, (size_t)n * 32);
        m->uid = (uint32_t *)rd_bytes(r, (size_t)n * 4);
        m->n = m->cap = n;
        m->mapped = 1;
    }
    ix->mb = realloc(ix->mb, (ix->nmb + 1) * sizeof(ix_mbox *));
    ix->mb[ix->nmb++] = m;
    return 0;
}

int ix_load(store_index *ix, const char *path, hv_err *err)
{
    ix_init(ix);
    /* Mapped, not read: a warm open then costs no fresh memory, and the
     * arrays are used where they lie (see load_mbox). A checkpoint is only
     * ever replaced by rename, never rewritten, so the mapping stays valid. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? hv_err_set(err, -ENOENT, "index %s: missing", path)
                               : hv_err_sys(err, "open %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = hv_err_sys(err, "stat %s", path);
        close(fd);
        return rc;
    }
    size_t len = (size_t)st.st_size;
    if (len < IX_HDR + 8) {
        close(fd);
        return hv_err_set(err, -EUCLEAN, "index %s: not a Haven index checkpoint", path);
    }
    /* No MAP_POPULATE: on a writable private mapping it would copy every
     * page up front; read faults share the page cache, and only pages
     * written later (flag changes, expunges) get copied. */
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return hv_err_sys(err, "mmap %s", path);
    const uint8_t *p = map;
    if (memcmp(p, IX_MAGIC, 8) != 0 || le32(p + 8) < IX_VERSION_MIN || le32(p + 8) > IX_VERSION) {
        munmap(map, len);
        return hv_err_set(err, -EUCLEAN, "index %s: not a Haven index checkpoint (version)", path);
    }
    if (crc32c(0, p, len - 4) != le32(p + len - 4) || le32(p + len - 8) != TAG_END) {
        munmap(map, len);
        return hv_err_set(err, -EUCLEAN, "index %s: checksum mismatch", path);
    }
    ix->map = map;
    ix->maplen = len;
    rd r;
    rd_init(&r, p + 16, IX_HDR - 16);
    ix->modseq = rd_u64(&r);
    ix->seg = rd_u64(&r);
    ix->off = rd_u64(&r);
    ix->last_seg = rd_u64(&r);
    ix->last_off = rd_u64(&r);
    ix->next_mailbox_id = rd_u32(&r);
    ix->last_uidvalidity = rd_u32(&r);
    for (int k = 0; k < 4; k++)
        ix->digest[k] = rd_u64(&r);
    rd sec;
    rd_init(&sec, p + IX_HDR, len - IX_HDR - 8);
    int ok = 1;
    while (ok && sec.left) {
        uint32_t tag = rd_u32(&sec);
        rd_u32(&sec);
        uint64_t slen = rd_u64(&sec);
        const uint8_t *sp = rd_bytes(&sec, (size_t)slen);
        if (!sp) {
            ok = 0;
            break;
        }
        rd s;
        rd_init(&s, sp, (size_t)slen);
        switch (tag) {
        case TAG_KWDS:
            while (ok && s.left) {
                uint8_t bit = rd_u8(&s);
                char *name = get_str16(&s);
                if (!name || bit < STORE_KEYWORD_FIRST || bit > 63 ||
                    ix->keywords[bit - STORE_KEYWORD_FIRST]) {
                    free(name);
                    ok = 0;
                } else {
                    ix->keywords[bit - STORE_KEYWORD_FIRST] = name;
                }
            }
            break;
        case TAG_SUBS:
            while (ok && s.left) {
                char *name = get_str16(&s);
                if (!name) {
                    ok = 0;
                    break;
                }
                ix->subs = realloc(ix->subs, (ix->nsubs + 1) * sizeof(char *));
                ix->subs[ix->nsubs++] = name;
            }
            break;
        case TAG_SETT:
            while (ok && s.left) {
                char *key = get_str16(&s);
                uint32_t vl = rd_u32(&s);
                const uint8_t *v = rd_bytes(&s, vl);
                if (!key || !v) {
                    free(key);
                    ok = 0;
                    break;
                }
                ix->settings = realloc(ix->settings, (ix->nsettings + 1) * sizeof(ix_kv));
                ix->settings[ix->nsettings].key = key;
                ix->settings[ix->nsettings].val = dup_n((const char *)v, vl);
                ix->nsettings++;
            }
            break;
        case TAG_MBOX:
            ok = load_mbox(ix, &s) == 0;
            break;
        case TAG_INLB: {
            uint64_t n = rd_u64(&s);
            size_t pad = (size_t)((8 - ((uintptr_t)s.p & 7)) & 7);
            if (!s.ok || ix->inl || s.left < pad || n > (s.left - pad) / sizeof(ix_inl) ||
                n * sizeof(ix_inl) != s.left - pad) {
                ok = 0;
                break;
            }
            rd_bytes(&s, pad);
            ix->inl = n ? (const ix_inl *)rd_bytes(&s, (size_t)n * sizeof(ix_inl)) : NULL;
            ix->ninl = n;
            for (uint64_t i = 1; ok && i < n; i++)
                ok = memcmp(ix->inl[i - 1].id.b, ix->inl[i].id.b, 32) < 0;
            break;
        }
        case TAG_DIDS:
            if (s.left % 16 || s.left / 16 > STORE_DELIVERY_IDS_KEPT || ix->ndids) {
                ok = 0;
                break;
            }
            while (s.left) {
                uint64_t h = rd_u64(&s);
                uint32_t mb = rd_u32(&s);
                ix_did_add(ix, h, mb, rd_u32(&s));
            }
            break;
        default:
            break; /* a later version's section: skip it */
        }
    }
    if (!ok) {
        ix_free(ix);
        return hv_err_set(err, -EUCLEAN, "index %s: malformed section", path);
    }
    mbox_sort(ix);
    return 0;
}

int ix_map_inl(store_index *ix, const char *path, uint64_t at, uint64_t ninl, hv_err *err)
{
    void *map = NULL;
    size_t len = 0;
    if (ninl) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return hv_err_sys(err, "open %s", path);
        struct stat st;
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < at + ninl * sizeof(ix_inl)) {
            close(fd);
            return hv_err_set(err, -EUCLEAN, "index %s: shorter than just written", path);
        }
        len = (size_t)st.st_size;
        map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (map == MAP_FAILED)
            return hv_err_sys(err, "mmap %s", path);
    }
    if (ix->inl_map)
        munmap(ix->inl_map, ix->inl_maplen);
    ix->inl_map = map;
    ix->inl_maplen = len;
    ix->inl = map ? (const ix_inl *)((const uint8_t *)map + at) : NULL;
    ix->ninl = ninl;
    return 0;
}

const ix_inl *ix_inl_find(const store_index *ix, const store_blob_id *id)
{
    uint64_t lo = 0, hi = ix->ninl;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = memcmp(ix->inl[mid].id.b, id->b, 32);
        if (c == 0)
            return &ix->inl[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- comparison (verify) ---- */

#define DIFF(...)                                                   \
    do {                                                            \
        char line_[600];                                            \
        snprintf(line_, sizeof(line_), __VA_ARGS__);                \
        if (report)                                                 \
            report(ctx, line_);                                     \
        diffs++;                                                    \
    } while (0)

int ix_compare(const store_index *a, const store_index *b, store_report_cb report, void *ctx,
               const char *name)
{
    int diffs = 0;
    if (a->modseq != b->modseq)
        DIFF("%s: index: modseq %llu, log says %llu", name, (unsigned long long)a->modseq,
             (unsigned long long)b->modseq);
    if (a->nmb != b->nmb)
        DIFF("%s: index: %zu mailboxes, log says %zu", name, a->nmb, b->nmb);
    for (size_t i = 0; i < a->nmb && i < b->nmb; i++) {
        const ix_mbox *x = a->mb[i], *y = b->mb[i];
        if (strcmp(x->name, y->name) != 0 || x->id != y->id) {
            DIFF("%s: index: mailbox '%s' (id %u), log says '%s' (id %u)", name, x->name, x->id,
                 y->name, y->id);
            continue;
        }
        if (x->uidvalidity != y->uidvalidity || x->uidnext != y->uidnext ||
            x->highestmodseq != y->highestmodseq || x->total_size != y->total_size ||
            x->special_use != y->special_use)
            DIFF("%s: index: mailbox '%s' header differs from the log", name, x->name);
        if (x->n != y->n) {
            DIFF("%s: index: mailbox '%s' has %u messages, log says %u", name, x->name, x->n,
                 y->n);
            continue;
        }
        for (uint32_t k = 0; k < x->n; k++) {
            if (x->uid[k] != y->uid[k] || x->flags[k] != y->flags[k] ||
                x->modseq[k] != y->modseq[k] || x->idate[k] != y->idate[k] ||
                x->size[k] != y->size[k] || memcmp(&x->blob[k], &y->blob[k], 32) != 0) {
                DIFF("%s: index: mailbox '%s' message uid %u differs from the log", name,
                     x->name, y->uid[k]);
                break;
            }
        }
    }
    for (int i = 0; i < STORE_KEYWORD_MAX; i++) {
        const char *x = a->keywords[i], *y = b->keywords[i];
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
            DIFF("%s: index: keyword bit %d differs from the log", name, i + STORE_KEYWORD_FIRST);
    }
    int did_diff = a->ndids != b->ndids;
    for (uint32_t i = 0; !did_diff && i < a->ndids; i++)
        did_diff = memcmp(did_at(a, i), did_at(b, i), sizeof(ix_did)) != 0;
    if (did_diff)
        DIFF("%s: index: remembered delivery ids differ from the log", name);
    if (memcmp(a->digest, b->digest, sizeof(a->digest)) != 0)
        DIFF("%s: index: digest differs from the log", name);
    return diffs;
}
