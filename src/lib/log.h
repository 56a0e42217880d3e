/*
 * log.h - one line per event.
 *
 * Every line is "LEVEL event key=value ..." so that operators can grep by
 * account, session or reason. Values containing spaces are quoted by the
 * caller's format. Output goes to stderr (foreground) or syslog.
 */
#ifndef HV_LOG_H
#define HV_LOG_H

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(const char *ident, int use_syslog, enum log_level min);
void log_msg(enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif
