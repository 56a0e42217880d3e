/*
 * smtp.h - the smtp and lmtp services of havend.
 *
 * smtp: the MX port (mail for hosted domains, checked against the
 * directory at RCPT), submission (587, STARTTLS then AUTH) and submissions
 * (465, implicit TLS). An accepted message is handed to the durable queue
 * (queue.h) before the 250; the same process runs the queue's delivery
 * runner. lmtp: RFC 2033 delivery into the account stores with one reply
 * per recipient, used by the queue runner and by any other MTA. See
 * docs/smtp.md.
 *
 * SECURITY: everything a client sends is untrusted and goes through the
 * bounded parsers of smtp_parser.h; limits come from haven.conf
 * (smtp_max_*, smtp_client_*). A failing session ends that session, never
 * the process. The lmtp port writes into stores without authentication:
 * it must listen where only trusted hosts reach it (loopback by default).
 */
#ifndef HV_SMTP_H
#define HV_SMTP_H

#include "lib/conf.h"
#include "lib/err.h"

/* Runs until SIGTERM/SIGINT. The fds are listening sockets; any may be -1
 * (port disabled). Opens the queue (queue_dir) and runs its runner. */
int smtp_service_run(const conf *c, int fd_smtp, int fd_submission, int fd_submissions,
                     hv_err *err);
/* Runs the LMTP service on fd_lmtp until SIGTERM/SIGINT. */
int lmtp_service_run(const conf *c, int fd_lmtp, hv_err *err);

#endif
