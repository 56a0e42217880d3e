/*
 * blob.c - message bodies, stored once per account, named by SHA-256.
 *
 * blobs/ab/abcdef...: the first two hex digits fan the files out. A blob is
 * written to blobs/tmp/, synced, renamed into place and its folder synced
 * before any log record names it, so a committed record never names a blob
 * that a crash could take away. Blobs are immutable; a COPY names the same
 * blob again.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/sha256.h"
#include "store/store_internal.h"

void blob_path(const char *acct_dir, const store_blob_id *id, char *out, size_t outlen)
{
    char hex[65];
    hex_encode(id->b, 32, hex);
    snprintf(out, outlen, "%s/blobs/%.2s/%s", acct_dir, hex, hex);
}

/* Writes data to a temp file (synced when asked) and renames it to path. */
static int put_file(const char *acct_dir, const char *path, const void *data, size_t len,
                    int sync, hv_err *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s/blobs/tmp/%d.XXXXXX", acct_dir, (int)getpid());
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "create blob temp file in %s/blobs/tmp", acct_dir);
    int rc = fs_write_full(fd, data, len);
    if (rc == 0 && sync && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc < 0) {
        errno = -rc;
        rc = hv_err_sys(err, "write blob %s", tmp);
        unlink(tmp);
        return rc;
    }
    if (rename(tmp, path) < 0) {
        rc = hv_err_sys(err, "rename blob into %s", path);
        unlink(tmp);
        return rc;
    }
    return 0;
}

int blob_write(const char *acct_dir, const void *data, size_t len, store_blob_id *id_out,
               int sync, hv_err *err)
{
    char path[4096], dir[4096];
    sha256(data, len, id_out->b);
    blob_path(acct_dir, id_out, path, sizeof(path));
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = 0;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        /* Already stored. It may have been renamed in by a writer that died
         * before syncing, so make sure it is durable before we name it. */
        int rc = 0;
        if (sync && fsync(fd) < 0)
            rc = hv_err_sys(err, "fsync blob %s", path);
        close(fd);
        if (rc == 0 && sync)
            rc = fs_fsync_dir(dir, err);
        return rc;
    }
    if (mkdir(dir, 0700) == 0) {
        char parent[4096];
        snprintf(parent, sizeof(parent), "%s/blobs", acct_dir);
        /* Rare (create_layout makes them all): sync the new entry now. */
        if (fs_fsync_dir(parent, err) < 0)
            return err ? err->code : -EIO;
    } else if (errno != EEXIST) {
        return hv_err_sys(err, "mkdir %s", dir);
    }
    int rc = put_file(acct_dir, path, data, len, sync, err);
    if (rc < 0)
        return rc;
    return sync ? fs_fsync_dir(dir, err) : 0;
}

int blob_check(const char *acct_dir, const store_blob_id *id, uint64_t size, hv_err *err)
{
    char path[4096];
    blob_path(acct_dir, id, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? hv_err_set(err, -ENOENT, "blob %s is missing", path)
                               : hv_err_sys(err, "open blob %s", path);
    sha256_ctx *c = sha256_new();
    static __thread uint8_t chunk[1 << 16];
    uint64_t total = 0;
    ssize_t r;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0) {
        sha256_update(c, chunk, (size_t)r);
        total += (uint64_t)r;
    }
    int saved = errno;
    close(fd);
    uint8_t got[32];
    sha256_final(c, got);
    if (r < 0) {
        errno = saved;
        return hv_err_sys(err, "read blob %s", path);
    }
    if (memcmp(got, id->b, 32) != 0)
        return hv_err_set(err, -EUCLEAN, "blob %s: content does not match its SHA-256", path);
    if (total != size)
        return hv_err_set(err, -EUCLEAN, "blob %s: size %llu, log says %llu", path,
                          (unsigned long long)total, (unsigned long long)size);
    return 0;
}

int blob_put(const char *acct_dir, const store_blob_id *id, const void *data, size_t len,
             hv_err *err)
{
    char path[4096];
    blob_path(acct_dir, id, path, sizeof(path));
    return put_file(acct_dir, path, data, len, 0, err);
}
