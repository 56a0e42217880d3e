/*
 * verify.c - `haven verify`: every check the store can make, offline.
 *
 * Reads the whole log from the first segment (not from the checkpoint as
 * open does), checks each segment header and each record's CRC and
 * meaning, rebuilds the index from scratch, compares the saved checkpoint
 * with the rebuilt state at the exact position the checkpoint claims to
 * cover, and re-hashes every blob a record names. Each problem is reported
 * with its place; nothing is changed (repairs are open's and reconstruct's).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/sha256.h"
#include "store/store_internal.h"

typedef struct blob_ref {
    store_blob_id id;
    uint64_t size, seg, off;
    uint32_t mailbox, uid;
    uint32_t len; /* frame length */
    int in_log;   /* an inline append carries this body in the log */
} blob_ref;

typedef struct verify_ctx {
    const char *name;
    store_report_cb report;
    void *ctx;
    int problems;
} verify_ctx;

__attribute__((format(printf, 3, 4))) static void say(verify_ctx *v, int problem,
                                                      const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (problem)
        v->problems++;
    if (v->report) {
        char full[1100];
        snprintf(full, sizeof(full), "%s%s", problem ? "" : "note: ", line);
        v->report(v->ctx, full);
    }
}

static int cmp_ref(const void *a, const void *b)
{
    return memcmp(((const blob_ref *)a)->id.b, ((const blob_ref *)b)->id.b, 32);
}

static void check_ckpt(verify_ctx *v, const store_index *ck, const store_index *ix, int *done)
{
    if (*done || ck->seg != ix->seg || ck->off != ix->off)
        return;
    *done = 1;
    v->problems += ix_compare(ck, ix, v->report, v->ctx, v->name);
}

int store_verify(const char *dir, const char *name, store_report_cb report, void *ctx,
                 hv_err *err)
{
    verify_ctx v = {name, report, ctx, 0};
    char logdir[4096], ckpt[4200];
    snprintf(logdir, sizeof(logdir), "%s/log", dir);
    snprintf(ckpt, sizeof(ckpt), "%s/index/index.ckpt", dir);
    seg_list segs;
    int rc = log_list_segments(logdir, &segs, err);
    if (rc < 0)
        return rc;
    if (segs.n == 0) {
        free(segs.no);
        return hv_err_set(err, -EUCLEAN, "account %s has no log segments", name);
    }

    store_index ck, ix;
    hv_err lerr = {0};
    int have_ck = ix_load(&ck, ckpt, &lerr) == 0, ck_done = 0;
    if (!have_ck && lerr.code == -ENOENT)
        say(&v, 0, "%s: no index checkpoint yet (built at the next open)", name);
    else if (!have_ck)
        say(&v, 1, "%s: %s (rebuilt at the next open, or by haven reconstruct)", name, lerr.msg);
    ix_init(&ix);
    ix.seg = segs.no[0];
    ix.off = SEG_HDR;
    if (have_ck)
        check_ckpt(&v, &ck, &ix, &ck_done);

    blob_ref *refs = NULL;
    size_t nrefs = 0, cap = 0;
    buf scratch;
    buf_init(&scratch);
    for (size_t i = 0; i < segs.n; i++) {
        char path[4200];
        log_seg_path(logdir, segs.no[i], path, sizeof(path));
        if (i && segs.no[i] != segs.no[i - 1] + 1)
            say(&v, 1, "%s: log segments %llu to %llu are missing", name,
                (unsigned long long)segs.no[i - 1] + 1, (unsigned long long)segs.no[i] - 1);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say(&v, 1, "%s: cannot open %s: %s", name, path, strerror(errno));
            continue;
        }
        struct stat st;
        fstat(fd, &st);
        uint64_t base;
        hv_err herr;
        if (log_seg_check_header(fd, segs.no[i], &base, &herr) < 0) {
            if (i + 1 == segs.n && st.st_size <= SEG_HDR)
                say(&v, 0, "%s: %s (a segment whose creation was cut short; removed at the "
                           "next open)", name, herr.msg);
            else
                say(&v, 1, "%s: %s", name, herr.msg);
            close(fd);
            continue;
        }
        if (base != ix.modseq)
            say(&v, 1, "%s: log segment %llu starts after modseq %llu, the log before it ends "
                       "at %llu", name, (unsigned long long)segs.no[i],
                (unsigned long long)base, (unsigned long long)ix.modseq);
        ix.seg = segs.no[i];
        ix.off = SEG_HDR;
        if (have_ck)
            check_ckpt(&v, &ck, &ix, &ck_done);
        log_reader lr;
        log_reader_init(&lr, fd, segs.no[i], SEG_HDR, (uint64_t)st.st_size);
        const uint8_t *f;
        size_t n;
        enum log_next r;
        while ((r = log_reader_next(&lr, &f, &n)) == LOG_FRAME) {
            uint64_t off = lr.off - n;
            store_record rec;
            hv_err aerr = {0};
            if (rec_decode(f + REC_FRAME_HDR, n - REC_FRAME_HDR, &rec, &scratch) < 0) {
                say(&v, 1, "%s: log segment %llu offset %llu: malformed record", name,
                    (unsigned long long)segs.no[i], (unsigned long long)off);
                continue;
            }
            if (ix_apply(&ix, &rec, &aerr) < 0) {
                say(&v, 1, "%s: log segment %llu offset %llu: %s", name,
                    (unsigned long long)segs.no[i], (unsigned long long)off, aerr.msg);
                continue;
            }
            ix.last_seg = segs.no[i];
            ix.last_off = off;
            ix.off = lr.off;
            if (rec.type == STORE_REC_APPEND) {
                int in_log = 0;
                if (rec.body) {
                    uint8_t got[32];
                    sha256(rec.body, (size_t)rec.size, got);
                    in_log = memcmp(got, rec.blob.b, 32) == 0;
                    if (!in_log)
                        say(&v, 1, "%s: log segment %llu offset %llu: inline body does not "
                                   "match its SHA-256", name, (unsigned long long)segs.no[i],
                            (unsigned long long)off);
                }
                if (nrefs == cap) {
                    cap = cap ? cap * 2 : 1024;
                    refs = realloc(refs, cap * sizeof(blob_ref));
                }
                refs[nrefs++] = (blob_ref){rec.blob, rec.size, segs.no[i], off, rec.mailbox,
                                           rec.uid, (uint32_t)n, in_log};
            }
            if (have_ck)
                check_ckpt(&v, &ck, &ix, &ck_done);
        }
        if (r == LOG_BAD) {
            uint64_t valid;
            if (i + 1 == segs.n && !log_find_valid_after(fd, lr.off, lr.size, ix.modseq, &valid))
                say(&v, 0, "%s: log segment %llu offset %llu: torn tail of %llu bytes (a write "
                           "that never completed; cut at the next open)", name,
                    (unsigned long long)segs.no[i], (unsigned long long)lr.off,
                    (unsigned long long)(lr.size - lr.off));
            else
                say(&v, 1, "%s: log segment %llu offset %llu: invalid record (CRC or length "
                           "mismatch); the rest of this segment is unreadable", name,
                    (unsigned long long)segs.no[i], (unsigned long long)lr.off);
        }
        log_reader_free(&lr);
        close(fd);
    }
    if (have_ck && !ck_done)
        say(&v, 1, "%s: index checkpoint claims log segment %llu offset %llu, which is not a "
                   "record boundary of the log", name, (unsigned long long)ck.seg,
            (unsigned long long)ck.off);

    if (nrefs)
        qsort(refs, nrefs, sizeof(blob_ref), cmp_ref);
    for (size_t i = 0; i < nrefs;) {
        /* All references to one blob: is its body also in the log? */
        size_t j = i;
        int in_log = 0;
        while (j < nrefs && memcmp(refs[j].id.b, refs[i].id.b, 32) == 0)
            in_log |= refs[j++].in_log;
        /* A body in the log needs no file; one left by an older version is
         * still checked, since nothing else would notice it is damaged. */
        char path[4200];
        blob_path(dir, &refs[i].id, path, sizeof(path));
        hv_err berr;
        if ((!in_log || access(path, F_OK) == 0) &&
            blob_check(dir, &refs[i].id, refs[i].size, &berr) < 0)
            say(&v, !in_log, "%s: log segment %llu offset %llu (mailbox %u uid %u): %s%s", name,
                (unsigned long long)refs[i].seg, (unsigned long long)refs[i].off,
                refs[i].mailbox, refs[i].uid, berr.msg,
                in_log ? " (not used: its body is in the log, which readers take)" : "");
        i = j;
    }
    /* The checkpoint's INLB: each entry must name an inline append of that
     * blob at exactly that place, or readers would miss the body. */
    for (uint64_t k = 0; have_ck && k < ck.ninl; k++) {
        const ix_inl *e = &ck.inl[k];
        blob_ref key = {.id = e->id};
        const blob_ref *hit = nrefs ? bsearch(&key, refs, nrefs, sizeof(blob_ref), cmp_ref) : NULL;
        int ok = 0;
        if (hit) {
            while (hit > refs && memcmp(hit[-1].id.b, e->id.b, 32) == 0)
                hit--;
            for (; !ok && hit < refs + nrefs && memcmp(hit->id.b, e->id.b, 32) == 0; hit++)
                ok = hit->in_log && hit->seg == e->seg && hit->off == e->off && hit->len == e->len;
        }
        if (!ok) {
            char hex[65];
            hex_encode(e->id.b, 32, hex);
            say(&v, 1, "%s: index: inline body %s is said to be at log segment %llu offset "
                       "%llu, where the log has no inline append of it (haven reconstruct "
                       "rebuilds the index)", name, hex, (unsigned long long)e->seg,
                (unsigned long long)e->off);
        }
    }
    free(refs);
    buf_free(&scratch);
    if (have_ck)
        ix_free(&ck);
    ix_free(&ix);
    free(segs.no);
    return v.problems;
}
