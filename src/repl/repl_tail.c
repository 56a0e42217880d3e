/*
 * repl_tail.c - reading an account's log from a known position, and making
 * sure what is shipped is durable on the primary.
 *
 * store_changes_since finds its start by scanning the segment that holds
 * the wanted modseq from its beginning: fine for an IMAP client now and
 * then, too slow for a replication stream that asks after every commit
 * (each small delivery would re-read up to a 64 MiB segment). The stream
 * knows where its last record ended, so it continues from there with the
 * store's own frame reader and record decoder (store_internal.h: the one
 * reader of the format, not a second one), and falls back to
 * store_changes_since whenever the position does not hold what it should.
 * (A public store_changes_from(position) would let this file go.)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repl/repl_internal.h"
#include "store/store_internal.h"

int repl_tail_read(const char *acct_dir, uint64_t seg, uint64_t off, uint64_t since,
                   uint64_t upto, store_record_cb cb, void *ctx, hv_err *err)
{
    char logdir[4400], path[4600];
    snprintf(logdir, sizeof(logdir), "%s/log", acct_dir);
    uint64_t expect = since + 1;
    buf scratch;
    buf_init(&scratch);
    int rc = -ESTALE;
    while (expect <= upto) {
        log_seg_path(logdir, seg, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        struct stat st;
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < off) {
            close(fd);
            break;
        }
        log_reader lr;
        log_reader_init(&lr, fd, seg, off, (uint64_t)st.st_size);
        const uint8_t *f;
        size_t n;
        enum log_next nx;
        int stop = 0, bad = 0;
        while (expect <= upto && (nx = log_reader_next(&lr, &f, &n)) == LOG_FRAME) {
            store_record r;
            if (rec_decode(f + REC_FRAME_HDR, n - REC_FRAME_HDR, &r, &scratch) < 0) {
                bad = 1;
                break;
            }
            if (r.type == STORE_REC_CHECKPOINT)
                continue;
            if (r.modseq != expect) {
                bad = 1;
                break;
            }
            r.raw = f;
            r.raw_len = n;
            r.segment = seg;
            r.offset = lr.off - n;
            expect++;
            if (cb(ctx, &r)) {
                stop = 1;
                break;
            }
        }
        log_reader_free(&lr);
        close(fd);
        if (stop || expect > upto) {
            rc = stop ? 1 : 0;
            break;
        }
        if (bad)
            break;
        /* End of this segment: the stream goes on in the next one. */
        seg++;
        off = SEG_HDR;
    }
    buf_free(&scratch);
    if (rc == -ESTALE)
        hv_err_set(err, -ESTALE, "log position %llu/%llu does not continue at modseq %llu",
                   (unsigned long long)seg, (unsigned long long)off,
                   (unsigned long long)expect);
    return rc;
}

int repl_sync_log(const char *acct_dir, uint64_t hint_seg, hv_err *err)
{
    char logdir[4400], path[4600];
    snprintf(logdir, sizeof(logdir), "%s/log", acct_dir);
    uint64_t last = 0;
    if (hint_seg) {
        /* The newest segment is the hint or a few after it. */
        for (uint64_t s = hint_seg;; s++) {
            log_seg_path(logdir, s, path, sizeof(path));
            if (access(path, F_OK) < 0)
                break;
            last = s;
        }
    }
    if (!last) {
        seg_list sl;
        int rc = log_list_segments(logdir, &sl, err);
        if (rc < 0)
            return rc;
        if (sl.n)
            last = sl.no[sl.n - 1];
        free(sl.no);
        if (!last)
            return 0;
    }
    log_seg_path(logdir, last, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open %s", path);
    int rc = fdatasync(fd) < 0 ? hv_err_sys(err, "fdatasync %s", path) : 0;
    close(fd);
    return rc;
}

int repl_make_durable(const char *acct_dir, uint64_t seg, uint64_t end, repl_durable *d,
                      hv_err *err)
{
    /* Covered by the writer's own sync (the common case: every synced
     * commit moves the mark), or by a sync of this segment earlier in the
     * pass: the record was written before the pass began. */
    if (seg == d->synced_seg || seg < d->seg || (seg == d->seg && end <= d->off))
        return 0;
    if (!d->looked) {
        d->looked = 1;
        if (store_durable_end(acct_dir, &d->seg, &d->off) == 0 &&
            (seg < d->seg || (seg == d->seg && end <= d->off)))
            return 0;
    }
    /* Past the mark: a writer that died between its write and its sync
     * left it (or the mark could not be written). */
    char logdir[4400], path[4600];
    snprintf(logdir, sizeof(logdir), "%s/log", acct_dir);
    log_seg_path(logdir, seg, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open %s", path);
    int rc = fdatasync(fd) < 0 ? hv_err_sys(err, "fdatasync %s", path) : 0;
    close(fd);
    if (rc == 0)
        d->synced_seg = seg;
    return rc;
}
