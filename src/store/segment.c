/*
 * segment.c - account log segments on disk.
 *
 * A segment is log/NNNNNNNNNNNNNNNNNNNN.log: a 40-byte header (magic,
 * version, segment number, the modseq of the last record before it, CRC32C)
 * and then frames back to back. Segments are only ever appended to; a new
 * one is started when the current one would pass the configured size, so
 * old segments can later be shipped or backed up as they are.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "store/store_internal.h"

#define READ_CHUNK (1u << 20)

void log_seg_path(const char *logdir, uint64_t no, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%020llu.log", logdir, (unsigned long long)no);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int log_list_segments(const char *logdir, seg_list *out, hv_err *err)
{
    out->no = NULL;
    out->n = 0;
    DIR *d = opendir(logdir);
    if (!d)
        return hv_err_sys(err, "open log folder %s", logdir);
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len != 24 || strcmp(e->d_name + 20, ".log") != 0)
            continue;
        char *end;
        unsigned long long no = strtoull(e->d_name, &end, 10);
        if (end != e->d_name + 20)
            continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 8;
            out->no = realloc(out->no, cap * sizeof(uint64_t));
        }
        out->no[out->n++] = no;
    }
    closedir(d);
    if (out->n)
        qsort(out->no, out->n, sizeof(uint64_t), cmp_u64);
    return 0;
}

int log_seg_create(const char *logdir, uint64_t no, uint64_t base_modseq, hv_err *err)
{
    char path[4096];
    log_seg_path(logdir, no, path, sizeof(path));
    uint8_t h[SEG_HDR] = {0};
    memcpy(h, SEG_MAGIC, 8);
    st32(h + 8, 1);
    st64(h + 16, no);
    st64(h + 24, base_modseq);
    st32(h + 36, crc32c(0, h, 36));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_sys(err, "create log segment %s", path);
    int rc = fs_write_full(fd, h, sizeof(h));
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc < 0) {
        errno = -rc;
        rc = hv_err_sys(err, "write log segment header %s", path);
        unlink(path);
        return rc;
    }
    return fs_fsync_dir(logdir, err);
}

int log_seg_check_header(int fd, uint64_t no, uint64_t *base_modseq, hv_err *err)
{
    uint8_t h[SEG_HDR];
    ssize_t r = fs_pread_full(fd, h, sizeof(h), 0);
    if (r != (ssize_t)sizeof(h))
        return hv_err_set(err, -EUCLEAN, "log segment %llu: header is short",
                          (unsigned long long)no);
    if (memcmp(h, SEG_MAGIC, 8) != 0 || le32(h + 8) != 1 || crc32c(0, h, 36) != le32(h + 36) ||
        le64(h + 16) != no)
        return hv_err_set(err, -EUCLEAN, "log segment %llu: header damaged",
                          (unsigned long long)no);
    if (base_modseq)
        *base_modseq = le64(h + 24);
    return 0;
}

void log_reader_init(log_reader *lr, int fd, uint64_t seg, uint64_t off, uint64_t size)
{
    lr->fd = fd;
    lr->seg = seg;
    lr->off = off;
    lr->size = size;
    buf_init(&lr->chunk);
    lr->chunk_off = off;
}

void log_reader_free(log_reader *lr) { buf_free(&lr->chunk); }

/* Makes bytes [off, off+n) available in the chunk; returns a pointer or NULL
 * when the file ends first. */
static const uint8_t *lr_window(log_reader *lr, uint64_t off, size_t n)
{
    if (off + n > lr->size)
        return NULL;
    if (off >= lr->chunk_off && off + n <= lr->chunk_off + lr->chunk.len)
        return lr->chunk.data + (off - lr->chunk_off);
    size_t want = n > READ_CHUNK ? n : READ_CHUNK;
    if (off + want > lr->size)
        want = (size_t)(lr->size - off);
    buf_reset(&lr->chunk);
    buf_reserve(&lr->chunk, want);
    ssize_t r = fs_pread_full(lr->fd, lr->chunk.data, want, (off_t)off);
    if (r < (ssize_t)n)
        return NULL;
    lr->chunk.len = (size_t)r;
    lr->chunk_off = off;
    return lr->chunk.data;
}

enum log_next log_reader_next(log_reader *lr, const uint8_t **frame, size_t *len)
{
    if (lr->off == lr->size)
        return LOG_END;
    const uint8_t *h = lr_window(lr, lr->off, REC_FRAME_HDR);
    if (!h)
        return LOG_BAD;
    uint32_t body = le32(h);
    if (body < REC_BODY_HDR || body > REC_MAX_BODY)
        return LOG_BAD;
    const uint8_t *f = lr_window(lr, lr->off, REC_FRAME_HDR + body);
    if (!f || rec_crc(f, f + REC_FRAME_HDR, body) != le32(f + 4))
        return LOG_BAD;
    *frame = f;
    *len = REC_FRAME_HDR + body;
    lr->off += REC_FRAME_HDR + body;
    return LOG_FRAME;
}

/* From off, do valid frames follow one another, with modseqs that only
 * go on from after_modseq, to exactly the end of the file? */
static int chain_to_end(log_reader *lr, uint64_t off, uint64_t after_modseq)
{
    int seen = 0;
    uint64_t last = 0;
    lr->off = off;
    for (;;) {
        const uint8_t *f;
        size_t n;
        enum log_next r = log_reader_next(lr, &f, &n);
        if (r == LOG_END)
            return 1;
        if (r != LOG_FRAME)
            return 0;
        uint64_t modseq = le64(f + REC_FRAME_HDR + 8);
        int checkpoint = f[REC_FRAME_HDR] == STORE_REC_CHECKPOINT;
        if (!seen) {
            /* Damaged records may have taken some modseqs: only "later". */
            if (modseq < after_modseq + (checkpoint ? 0 : 1))
                return 0;
            seen = 1;
        } else if (checkpoint ? modseq != last : modseq != last + 1) {
            return 0;
        }
        last = modseq;
    }
}

int log_find_valid_after(int fd, uint64_t off, uint64_t size, uint64_t after_modseq,
                         uint64_t *found_off)
{
    /* Slow on purpose and only on the error path: try every offset. One
     * reader serves every try, so the file is read in chunks once, not once
     * per offset (which made a torn tail cost its size squared).
     *
     * A single valid-looking frame is not enough: message bodies travel in
     * the log (inline appends), so a sender can put a frame image in one,
     * and a crash tearing that record would expose it. Real records after
     * a damaged one run on, valid and with growing modseqs, to the end of
     * the file; an image inside a torn body cannot, unless the tear falls
     * exactly where the sender chose. */
    log_reader lr;
    log_reader_init(&lr, fd, 0, off + 1, size);
    int found = 0;
    for (uint64_t o = off + 1; !found && o + REC_FRAME_HDR + REC_BODY_HDR <= size; o++) {
        const uint8_t *f;
        size_t n;
        lr.off = o;
        if (log_reader_next(&lr, &f, &n) == LOG_FRAME && chain_to_end(&lr, o, after_modseq)) {
            *found_off = o;
            found = 1;
        }
    }
    log_reader_free(&lr);
    return found;
}
