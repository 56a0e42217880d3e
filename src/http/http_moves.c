/*
 * http_moves.c - reading the progress files of account moves for
 * /metrics.
 *
 * `haven move` keeps one file per move, DATA/moves/ACCOUNT.move, and one
 * per evacuation of a store, DATA/moves/evacuate-FROM-TO.state: key=value
 * lines (docs/http.md lists the keys). They are written by another
 * process at its own pace, so a file read here may be from any version of
 * that command or caught half-written: unknown keys are ignored, and a
 * file that does not parse is skipped (and counted) rather than reported
 * with made-up numbers. Everything is bounded: file size, line content,
 * number of files.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "lib/log.h"

/* One key's place in a struct: text (copied, checked) or a number. */
typedef struct key_spec {
    const char *name;
    size_t off;
    size_t size;   /* text: the buffer's size; 0: a number (double) */
    int negative;  /* a number may be below 0 (then it means "unknown") */
} key_spec;

static const key_spec move_keys[] = {
    {"account", offsetof(http_move, account), sizeof(((http_move *)0)->account), 0},
    {"from", offsetof(http_move, from), sizeof(((http_move *)0)->from), 0},
    {"to", offsetof(http_move, to), sizeof(((http_move *)0)->to), 0},
    {"phase", offsetof(http_move, phase), sizeof(((http_move *)0)->phase), 0},
    {"bytes_total", offsetof(http_move, bytes_total), 0, 0},
    {"bytes_done", offsetof(http_move, bytes_done), 0, 0},
    {"started", offsetof(http_move, started), 0, 0},
    {"updated", offsetof(http_move, updated), 0, 0},
    {NULL, 0, 0, 0},
};

static const key_spec evac_keys[] = {
    {"from", offsetof(http_evac, from), sizeof(((http_evac *)0)->from), 0},
    {"to", offsetof(http_evac, to), sizeof(((http_evac *)0)->to), 0},
    {"slots", offsetof(http_evac, slots), 0, 0},
    {"accounts_total", offsetof(http_evac, accounts_total), 0, 0},
    {"accounts_done", offsetof(http_evac, accounts_done), 0, 0},
    {"accounts_failed", offsetof(http_evac, accounts_failed), 0, 0},
    {"bytes_total", offsetof(http_evac, bytes_total), 0, 0},
    {"bytes_done", offsetof(http_evac, bytes_done), 0, 0},
    {"started", offsetof(http_evac, started), 0, 0},
    {"updated", offsetof(http_evac, updated), 0, 0},
    {"eta_s", offsetof(http_evac, eta_s), 0, 1},
    {NULL, 0, 0, 0},
};

static void trim(const char **s, const char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t'))
        (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
        (*e)--;
}

static int set_key(const key_spec *k, void *obj, const char *v, size_t n, hv_err *err)
{
    char *field = (char *)obj + k->off;
    if (k->size) {
        if (n >= k->size)
            return hv_err_set(err, -EINVAL, "%s is longer than %zu bytes", k->name, k->size - 1);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
                return hv_err_set(err, -EINVAL, "%s holds a control character", k->name);
        memcpy(field, v, n);
        field[n] = 0;
        return 0;
    }
    double *d = (double *)(void *)field;
    if (n == 0) { /* given empty: not known */
        *d = -1;
        return 0;
    }
    char tmp[64];
    if (n >= sizeof(tmp))
        return hv_err_set(err, -EINVAL, "%s is not a number", k->name);
    memcpy(tmp, v, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    double x = strtod(tmp, &end);
    if (end == tmp || *end || errno == ERANGE || !isfinite(x) || (x < 0 && !k->negative))
        return hv_err_set(err, -EINVAL, "%s=%s is not a number%s", k->name, tmp,
                          k->negative ? "" : " of 0 or more");
    *d = x < 0 ? -1 : x;
    return 0;
}

static int parse_kv(const char *text, size_t len, const key_spec *keys, void *obj, hv_err *err)
{
    for (const key_spec *k = keys; k->name; k++)
        if (!k->size)
            *(double *)(void *)((char *)obj + k->off) = -1;
    const char *p = text, *end = text + len;
    int lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        lineno++;
        const char *s = p, *e = le;
        p = nl ? nl + 1 : end;
        trim(&s, &e);
        if (s == e || *s == '#')
            continue;
        const char *eq = memchr(s, '=', (size_t)(e - s));
        if (!eq)
            return hv_err_set(err, -EINVAL, "line %d has no '='", lineno);
        const char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
        trim(&ks, &ke);
        trim(&vs, &ve);
        if (memchr(s, 0, (size_t)(e - s)))
            return hv_err_set(err, -EINVAL, "line %d holds a NUL byte", lineno);
        size_t kn = (size_t)(ke - ks);
        for (const key_spec *k = keys; k->name; k++)
            if (strlen(k->name) == kn && memcmp(k->name, ks, kn) == 0) {
                int rc = set_key(k, obj, vs, (size_t)(ve - vs), err);
                if (rc < 0) {
                    hv_err_prefix(err, "line %d", lineno);
                    return rc;
                }
                break;
            }
    }
    return 0;
}

int http_move_parse(const char *text, size_t len, http_move *m, hv_err *err)
{
    memset(m, 0, sizeof(*m));
    int rc = parse_kv(text, len, move_keys, m, err);
    if (rc < 0)
        return rc;
    if (!m->account[0] || !m->phase[0])
        return hv_err_set(err, -EINVAL, "account= and phase= are required");
    for (const char *c = m->phase; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            return hv_err_set(err, -EINVAL, "phase '%s' is not a word", m->phase);
    return 0;
}

int http_evac_parse(const char *text, size_t len, http_evac *e, hv_err *err)
{
    memset(e, 0, sizeof(*e));
    int rc = parse_kv(text, len, evac_keys, e, err);
    if (rc < 0)
        return rc;
    if (!e->from[0] || !e->to[0])
        return hv_err_set(err, -EINVAL, "from= and to= are required");
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

/* Reads one regular file of at most HTTP_MOVE_FILE_MAX bytes. */
static int read_small(int dirfd, const char *name, char **out, size_t *len, hv_err *err)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return hv_err_sys(err, "open %s", name);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > HTTP_MOVE_FILE_MAX) {
        close(fd);
        return hv_err_set(err, -EINVAL, "%s is not a regular file of at most %d bytes", name,
                          HTTP_MOVE_FILE_MAX);
    }
    char *b = malloc(HTTP_MOVE_FILE_MAX + 1);
    if (!b)
        abort();
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, b + n, HTTP_MOVE_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int rc = hv_err_sys(err, "read %s", name);
            free(b);
            close(fd);
            return rc;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > HTTP_MOVE_FILE_MAX) { /* grew since fstat */
            free(b);
            close(fd);
            return hv_err_set(err, -EINVAL, "%s is bigger than %d bytes", name,
                              HTTP_MOVE_FILE_MAX);
        }
    }
    close(fd);
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

static int cmp_move(const void *a, const void *b)
{
    return strcmp(((const http_move *)a)->account, ((const http_move *)b)->account);
}

static int cmp_evac(const void *a, const void *b)
{
    const http_evac *x = a, *y = b;
    int c = strcmp(x->from, y->from);
    return c ? c : strcmp(x->to, y->to);
}

int http_moves_read(const char *data_dir, http_moves *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    char path[4200];
    snprintf(path, sizeof(path), "%s/moves", data_dir);
    DIR *d = opendir(path);
    if (!d)
        return errno == ENOENT ? 0 : hv_err_sys(err, "open %s", path);
    size_t capm = 0, cape = 0, seen = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *name = de->d_name;
        int is_move = ends_with(name, ".move");
        int is_evac = strncmp(name, "evacuate-", 9) == 0 && ends_with(name, ".state");
        if (name[0] == '.' || (!is_move && !is_evac))
            continue; /* temporary files of an atomic write, and others */
        if (++seen > HTTP_MOVE_FILES_MAX) {
            out->skipped++;
            continue;
        }
        char *text = NULL;
        size_t len = 0;
        hv_err e = {0};
        int rc = read_small(dirfd(d), name, &text, &len, &e);
        if (rc == 0 && is_move) {
            if (out->nmoves == capm) {
                capm = capm ? capm * 2 : 16;
                out->moves = realloc(out->moves, capm * sizeof(*out->moves));
                if (!out->moves)
                    abort();
            }
            rc = http_move_parse(text, len, &out->moves[out->nmoves], &e);
            if (rc == 0)
                out->nmoves++;
        } else if (rc == 0) {
            if (out->nevacs == cape) {
                cape = cape ? cape * 2 : 4;
                out->evacs = realloc(out->evacs, cape * sizeof(*out->evacs));
                if (!out->evacs)
                    abort();
            }
            rc = http_evac_parse(text, len, &out->evacs[out->nevacs], &e);
            if (rc == 0)
                out->nevacs++;
        }
        free(text);
        /* The file's name says whose it is: two files cannot then claim
         * one account (or one evacuation), which would be two series of
         * the same name and labels. */
        const char *acct = is_move && rc == 0 ? out->moves[out->nmoves - 1].account : "";
        if (rc == 0 && is_move &&
            (strlen(acct) != strlen(name) - 5 || strncmp(name, acct, strlen(name) - 5) != 0)) {
            rc = hv_err_set(&e, -EINVAL, "account= does not match the file name");
            out->nmoves--;
        } else if (rc == 0 && !is_move) {
            char want[300];
            const http_evac *ev = &out->evacs[out->nevacs - 1];
            snprintf(want, sizeof(want), "evacuate-%s-%s.state", ev->from, ev->to);
            if (strcmp(want, name) != 0) {
                rc = hv_err_set(&e, -EINVAL, "from= and to= do not match the file name");
                out->nevacs--;
            }
        }
        if (rc < 0) {
            out->skipped++;
            /* Debug only: a scrape every few seconds would repeat it
             * forever; the skipped count is the metric that tells. */
            log_debug("http: move_file_skipped file=%s reason=\"%s\"", name, e.msg);
        }
    }
    closedir(d);
    if (out->nmoves)
        qsort(out->moves, out->nmoves, sizeof(*out->moves), cmp_move);
    if (out->nevacs)
        qsort(out->evacs, out->nevacs, sizeof(*out->evacs), cmp_evac);
    return 0;
}

void http_moves_free(http_moves *m)
{
    free(m->moves);
    free(m->evacs);
    memset(m, 0, sizeof(*m));
}
