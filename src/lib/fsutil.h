/*
 * fsutil.h - the file-system moves every durable write is built from.
 *
 * Retrying short reads/writes and EINTR, syncing a directory after a
 * rename, writing a whole file atomically. Each returns 0 or -errno and
 * fills err with the path involved.
 */
#ifndef HV_FSUTIL_H
#define HV_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "lib/err.h"

int fs_write_full(int fd, const void *p, size_t n);            /* 0 or -errno */
int fs_pwrite_full(int fd, const void *p, size_t n, off_t off); /* 0 or -errno */
/* Reads up to n bytes at off; returns bytes read (short only at EOF) or -errno. */
ssize_t fs_pread_full(int fd, void *p, size_t n, off_t off);
int fs_fsync_dir(const char *dir, hv_err *err);
int fs_mkdir_p(const char *path, int mode, hv_err *err);
/* Write tmp, fsync, rename over path, fsync the directory. */
int fs_write_file_atomic(const char *path, const void *p, size_t n, int mode, hv_err *err);
/* Reads a whole (small) file into a malloc'd, NUL-terminated buffer. */
int fs_read_file(const char *path, char **out, size_t *len, hv_err *err);
/* Removes a directory tree (for tests and account deletion). */
int fs_rm_rf(const char *path);

#endif
