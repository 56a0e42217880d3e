/* fsutil.c - durable file-system helpers; see fsutil.h. */
#include "lib/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int fs_pwrite_full(int fd, const void *p, size_t n, off_t off)
{
    const char *c = p;
    while (n) {
        ssize_t w = pwrite(fd, c, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

ssize_t fs_pread_full(int fd, void *p, size_t n, off_t off)
{
    char *c = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, c + got, n - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int fs_fsync_dir(const char *dir, hv_err *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open directory %s", dir);
    if (fsync(fd) < 0) {
        int rc = hv_err_sys(err, "fsync directory %s", dir);
        close(fd);
        return rc;
    }
    close(fd);
    return 0;
}

int fs_mkdir_p(const char *path, int mode, hv_err *err)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n >= sizeof(tmp))
        return hv_err_set(err, -ENAMETOOLONG, "path too long: %s", path);
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
            return hv_err_sys(err, "mkdir %s", tmp);
        *p = '/';
    }
    if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
        return hv_err_sys(err, "mkdir %s", tmp);
    return 0;
}

int fs_write_file_atomic(const char *path, const void *p, size_t n, int mode, hv_err *err)
{
    char tmp[4200], dir[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return hv_err_sys(err, "create %s", tmp);
    int rc = fs_write_full(fd, p, n);
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc < 0) {
        errno = -rc;
        unlink(tmp);
        return hv_err_sys(err, "write %s", tmp);
    }
    if (rename(tmp, path) < 0) {
        rc = hv_err_sys(err, "rename %s", tmp);
        unlink(tmp);
        return rc;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    return fs_fsync_dir(dir, err);
}

int fs_read_file(const char *path, char **out, size_t *len, hv_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = hv_err_sys(err, "stat %s", path);
        close(fd);
        return rc;
    }
    char *p = malloc((size_t)st.st_size + 1);
    if (!p)
        abort();
    ssize_t r = fs_pread_full(fd, p, (size_t)st.st_size, 0);
    close(fd);
    if (r < 0) {
        free(p);
        errno = (int)-r;
        return hv_err_sys(err, "read %s", path);
    }
    p[r] = 0;
    *out = p;
    if (len)
        *len = (size_t)r;
    return 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(p) < 0 && errno != ENOENT ? -1 : 0;
}

int fs_rm_rf(const char *path)
{
    return nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT ? -errno : 0;
}
