/*
 * err.h - an error status that carries its reason.
 *
 * Functions return 0 on success and a negative errno-style code on failure;
 * when they fail they also fill an hv_err with a one-line, human-readable
 * reason that travels up to the log or the operator unchanged.
 */
#ifndef HV_ERR_H
#define HV_ERR_H

#include <errno.h>

typedef struct hv_err {
    int code;          /* negative errno-style code, 0 when no error */
    char msg[512];     /* one line, no trailing newline */
} hv_err;

/* Sets err (if not NULL) and returns code (which should be negative). */
int hv_err_set(hv_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like hv_err_set, with ": strerror(errno)" appended; returns -errno. */
int hv_err_sys(hv_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix an existing error message with context ("account x: ..."). */
void hv_err_prefix(hv_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void hv_err_clear(hv_err *err);

#endif
