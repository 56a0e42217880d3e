/*
 * maildir_reader.c - listing, reading and naming Maildir folders; see
 * maildir_reader.h.
 *
 * A Maildir being imported may still be in use: a mail client can rename
 * a file (to change its flags) between our listing and our read. That is
 * reported as -ENOENT for the one file, not as a failure of the folder.
 */
#include "store/maildir_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"

static int maildir_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int maildir_is_maildir(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s/cur", dir);
    if (maildir_is_dir(p))
        return 1;
    snprintf(p, sizeof(p), "%s/new", dir);
    return maildir_is_dir(p);
}

uint64_t maildir_flags_from_name(const char *name)
{
    const char *info = strrchr(name, ':');
    if (!info || info[1] != '2' || info[2] != ',')
        return 0;
    uint64_t f = 0;
    for (const char *c = info + 3; *c; c++) {
        switch (*c) {
        case 'S': f |= STORE_FLAG_SEEN; break;
        case 'R': f |= STORE_FLAG_ANSWERED; break;
        case 'F': f |= STORE_FLAG_FLAGGED; break;
        case 'T': f |= STORE_FLAG_DELETED; break;
        case 'D': f |= STORE_FLAG_DRAFT; break;
        default: break; /* P (passed) and keyword letters have no store flag */
        }
    }
    return f;
}

void maildir_flags_suffix(uint64_t flags, char out[16])
{
    char *o = out;
    *o++ = ':';
    *o++ = '2';
    *o++ = ',';
    if (flags & STORE_FLAG_DRAFT)
        *o++ = 'D';
    if (flags & STORE_FLAG_FLAGGED)
        *o++ = 'F';
    if (flags & STORE_FLAG_ANSWERED)
        *o++ = 'R';
    if (flags & STORE_FLAG_SEEN)
        *o++ = 'S';
    if (flags & STORE_FLAG_DELETED)
        *o++ = 'T';
    *o = 0;
}

static uint64_t maildir_stamp(const char *name)
{
    uint64_t v = 0;
    int n = 0;
    for (; name[n] >= '0' && name[n] <= '9'; n++) {
        if (v > (UINT64_MAX - 10) / 10)
            return UINT64_MAX - 1; /* absurd, but still before "no stamp" */
        v = v * 10 + (uint64_t)(name[n] - '0');
    }
    return n ? v : UINT64_MAX;
}

static int maildir_entry_cmp(const void *a, const void *b)
{
    const maildir_entry *x = a, *y = b;
    if (x->stamp != y->stamp)
        return x->stamp < y->stamp ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int maildir_scan_sub(const char *dir, const char *sub, maildir_list *out, hv_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, sub);
    DIR *d = opendir(path);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return hv_err_sys(err, "open folder %s", path);
    }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *full = NULL;
        if (asprintf(&full, "%s/%s", path, de->d_name) < 0)
            abort();
        struct stat st;
        if (stat(full, &st) < 0 || !S_ISREG(st.st_mode)) {
            free(full); /* vanished since readdir, or not a message file */
            continue;
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 256;
            out->v = realloc(out->v, out->cap * sizeof(*out->v));
            if (!out->v)
                abort();
        }
        maildir_entry *e = &out->v[out->n++];
        e->path = full;
        e->name = full + strlen(path) + 1;
        e->stamp = maildir_stamp(e->name);
        e->flags = maildir_flags_from_name(e->name);
        e->mtime = (int64_t)st.st_mtime;
        e->size = (uint64_t)st.st_size;
        errno = 0;
    }
    int rc = 0;
    if (errno)
        rc = hv_err_sys(err, "read folder %s", path);
    closedir(d);
    return rc;
}

int maildir_list_messages(const char *dir, maildir_list *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    if (!maildir_is_maildir(dir))
        return hv_err_set(err, -EINVAL, "%s: not a Maildir (no cur/ or new/)", dir);
    int rc = maildir_scan_sub(dir, "cur", out, err);
    if (rc == 0)
        rc = maildir_scan_sub(dir, "new", out, err);
    if (rc < 0) {
        maildir_list_free(out);
        return rc;
    }
    if (out->n)
        qsort(out->v, out->n, sizeof(*out->v), maildir_entry_cmp);
    return 0;
}

void maildir_list_free(maildir_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

void maildir_lf_to_crlf(buf *out, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t *nl = memchr(p + i, '\n', n - i);
        if (!nl) {
            buf_append(out, p + i, n - i);
            return;
        }
        size_t end = (size_t)(nl - p);
        buf_append(out, p + i, end - i);
        if (end > 0 && p[end - 1] == '\r')
            buf_append(out, "\n", 1);
        else
            buf_append(out, "\r\n", 2);
        i = end + 1;
    }
}

int maildir_read_message(const char *path, uint64_t max_size, buf *out, uint64_t *size_out,
                         hv_err *err)
{
    buf_reset(out);
    *size_out = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return hv_err_set(err, -ENOENT, "%s: vanished (renamed by a mail client?)", path);
        return hv_err_sys(err, "open %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = hv_err_sys(err, "stat %s", path);
        close(fd);
        return rc;
    }
    *size_out = (uint64_t)st.st_size;
    if ((uint64_t)st.st_size > max_size) {
        close(fd);
        return hv_err_set(err, -EFBIG, "%s: %llu bytes, over the limit of %llu", path,
                          (unsigned long long)st.st_size, (unsigned long long)max_size);
    }
    /* Read the raw bytes, then widen in place from the end: every bare LF
     * gains a CR, so the CRLF text is never held twice. */
    size_t raw = 0;
    for (;;) {
        buf_reserve(out, 65536);
        ssize_t r = read(fd, out->data + raw, out->cap - raw - 1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int rc = hv_err_sys(err, "read %s", path);
            close(fd);
            return rc;
        }
        if (r == 0)
            break;
        raw += (size_t)r;
        out->len = raw;
        if (raw > max_size) { /* the file grew while we read */
            close(fd);
            *size_out = raw;
            return hv_err_set(err, -EFBIG, "%s: more than %llu bytes", path,
                              (unsigned long long)max_size);
        }
    }
    close(fd);
    size_t bare = 0;
    for (size_t i = 0; i < raw; i++)
        if (out->data[i] == '\n' && (i == 0 || out->data[i - 1] != '\r'))
            bare++;
    *size_out = raw + bare;
    if (raw + bare > max_size)
        return hv_err_set(err, -EFBIG, "%s: %llu bytes with CRLF line ends, over the limit of %llu",
                          path, (unsigned long long)(raw + bare), (unsigned long long)max_size);
    buf_reserve(out, bare);
    uint8_t *d = out->data;
    size_t w = raw + bare;
    for (size_t i = raw; i-- > 0;) {
        d[--w] = d[i];
        if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r'))
            d[--w] = '\r';
    }
    out->len = raw + bare;
    out->data[out->len] = 0;
    return 0;
}

/* ---- Maildir++ folder names ---- */

static const char mutf7_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static void maildir_put_utf8(buf *out, uint32_t cp)
{
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xc0 | cp >> 6);
        u[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xe0 | cp >> 12);
        u[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (uint8_t)(0xf0 | cp >> 18);
        u[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        u[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_append(out, u, n);
}

int maildir_mutf7_decode(const char *s, size_t n, buf *out)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] != '&') {
            buf_append(out, s + i, 1);
            i++;
            continue;
        }
        i++;
        if (i < n && s[i] == '-') {
            buf_append(out, "&", 1);
            i++;
            continue;
        }
        uint32_t bits = 0, hi = 0;
        int nbits = 0, units = 0;
        while (i < n && s[i] != '-') {
            const char *pos = s[i] ? strchr(mutf7_b64, s[i]) : NULL;
            if (!pos)
                return -EINVAL;
            bits = (bits << 6 | (uint32_t)(pos - mutf7_b64)) & 0xffffff;
            nbits += 6;
            if (nbits >= 16) {
                nbits -= 16;
                uint32_t u = bits >> nbits & 0xffff;
                units++;
                if (hi) {
                    if (u < 0xdc00 || u > 0xdfff)
                        return -EINVAL;
                    maildir_put_utf8(out, 0x10000 + ((hi - 0xd800) << 10) + (u - 0xdc00));
                    hi = 0;
                } else if (u >= 0xd800 && u <= 0xdbff) {
                    hi = u;
                } else if ((u >= 0xdc00 && u <= 0xdfff) || u == 0) {
                    return -EINVAL;
                } else {
                    maildir_put_utf8(out, u);
                }
            }
            i++;
        }
        /* unterminated, empty, a lone surrogate or non-zero padding bits */
        if (i >= n || units == 0 || hi || nbits >= 6 || (bits & ((1u << nbits) - 1)))
            return -EINVAL;
        i++;
    }
    buf_append(out, "", 0);
    return 0;
}

/* Next code point of UTF-8 s[*i..n), or -1 when malformed. */
static int32_t maildir_utf8_next(const uint8_t *s, size_t n, size_t *i)
{
    uint8_t c = s[*i];
    uint32_t cp, min;
    size_t len;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if ((c & 0xe0) == 0xc0) {
        cp = c & 0x1f; len = 2; min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        cp = c & 0x0f; len = 3; min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        cp = c & 0x07; len = 4; min = 0x10000;
    } else {
        return -1;
    }
    if (*i + len > n)
        return -1;
    for (size_t k = 1; k < len; k++) {
        if ((s[*i + k] & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (s[*i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *i += len;
    return (int32_t)cp;
}

static void maildir_b64_flush(buf *out, uint32_t *bits, int *nbits)
{
    while (*nbits >= 6) {
        *nbits -= 6;
        buf_append(out, &mutf7_b64[*bits >> *nbits & 0x3f], 1);
    }
}

/* One level, UTF-8 -> modified UTF-7, with '.' encoded as well. */
static int maildir_mutf7_encode(const uint8_t *s, size_t n, buf *out)
{
    size_t i = 0;
    int in_b64 = 0, nbits = 0;
    uint32_t bits = 0;
    while (i < n) {
        int32_t cp = maildir_utf8_next(s, n, &i);
        if (cp <= 0)
            return -EINVAL;
        if (cp >= 0x20 && cp <= 0x7e && cp != '.') {
            if (in_b64) {
                if (nbits)
                    buf_append(out, &mutf7_b64[bits << (6 - nbits) & 0x3f], 1);
                buf_append(out, "-", 1);
                in_b64 = 0;
                nbits = 0;
                bits = 0;
            }
            buf_append(out, cp == '&' ? "&-" : (const char *)&s[i - 1], cp == '&' ? 2 : 1);
            continue;
        }
        if (!in_b64) {
            buf_append(out, "&", 1);
            in_b64 = 1;
        }
        uint32_t units[2];
        int nu = 1;
        if (cp >= 0x10000) {
            units[0] = 0xd800 + ((uint32_t)(cp - 0x10000) >> 10);
            units[1] = 0xdc00 + ((uint32_t)(cp - 0x10000) & 0x3ff);
            nu = 2;
        } else {
            units[0] = (uint32_t)cp;
        }
        for (int k = 0; k < nu; k++) {
            bits = (bits << 16 | units[k]) & 0x3fffff;
            nbits += 16;
            maildir_b64_flush(out, &bits, &nbits);
        }
    }
    if (in_b64) {
        if (nbits)
            buf_append(out, &mutf7_b64[bits << (6 - nbits) & 0x3f], 1);
        buf_append(out, "-", 1);
    }
    return 0;
}

int maildir_folder_name(const char *mailbox, char *out, size_t outlen)
{
    buf b;
    buf_init(&b);
    const char *p = mailbox;
    int rc = 0;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0) {
            rc = -EINVAL;
            break;
        }
        buf_append(&b, ".", 1);
        if ((rc = maildir_mutf7_encode((const uint8_t *)p, n, &b)) < 0)
            break;
        if (!slash)
            break;
        p = slash + 1;
    }
    if (rc == 0 && b.len + 1 > outlen)
        rc = -ENAMETOOLONG;
    if (rc == 0)
        memcpy(out, b.data, b.len + 1);
    buf_free(&b);
    return rc;
}

static int maildir_folder_cmp(const void *a, const void *b)
{
    return strcmp(((const maildir_folder *)a)->name, ((const maildir_folder *)b)->name);
}

/* ".A.B" -> "A/B"; -EINVAL for an empty level, bad modified UTF-7 or a '/'
 * that decoding would smuggle into a level. */
static int maildir_decode_folder(const char *dotted, buf *name)
{
    const char *p = dotted + 1;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0)
            return -EINVAL;
        size_t start = name->len;
        if (maildir_mutf7_decode(p, n, name) < 0)
            return -EINVAL;
        if (memchr(name->data + start, '/', name->len - start))
            return -EINVAL;
        if (!dot)
            return 0;
        buf_append(name, "/", 1);
        p = dot + 1;
    }
}

int maildir_list_folders(const char *root, maildir_folder_list *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    DIR *d = opendir(root);
    if (!d)
        return hv_err_sys(err, "open folder %s", root);
    struct dirent *de;
    int rc = 0;
    buf name;
    buf_init(&name);
    while ((de = readdir(d))) {
        if (de->d_name[0] != '.' || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *dir = NULL;
        if (asprintf(&dir, "%s/%s", root, de->d_name) < 0)
            abort();
        if (!maildir_is_dir(dir) || !maildir_is_maildir(dir)) {
            free(dir);
            continue;
        }
        buf_reset(&name);
        if (maildir_decode_folder(de->d_name, &name) < 0) {
            rc = hv_err_set(err, -EINVAL,
                            "%s: not a valid Maildir++ folder name (empty level or bad "
                            "modified UTF-7)", dir);
            free(dir);
            break;
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 16;
            out->v = realloc(out->v, out->cap * sizeof(*out->v));
            if (!out->v)
                abort();
        }
        out->v[out->n].dir = dir;
        out->v[out->n].name = strdup((const char *)name.data);
        out->n++;
    }
    closedir(d);
    buf_free(&name);
    if (rc < 0) {
        maildir_folder_list_free(out);
        return rc;
    }
    if (out->n)
        qsort(out->v, out->n, sizeof(*out->v), maildir_folder_cmp);
    return 0;
}

void maildir_folder_list_free(maildir_folder_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].dir);
        free(l->v[i].name);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}
