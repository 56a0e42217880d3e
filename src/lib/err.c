/* err.c - building error reasons; see err.h. */
#include "lib/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int hv_err_set(hv_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int hv_err_sys(hv_err *err, const char *fmt, ...)
{
    int saved = errno ? errno : EIO;
    if (err) {
        char head[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(head, sizeof(head), fmt, ap);
        va_end(ap);
        snprintf(err->msg, sizeof(err->msg), "%s: %s", head, strerror(saved));
        err->code = -saved;
    }
    return -saved;
}

void hv_err_prefix(hv_err *err, const char *fmt, ...)
{
    if (!err)
        return;
    char head[128], old[sizeof(err->msg) - 130];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old) - 1);
    old[sizeof(old) - 1] = 0;
    snprintf(err->msg, sizeof(err->msg), "%s: %s", head, old);
}

void hv_err_clear(hv_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
