/*
 * maildir_reader.h - reading (and naming for writing) Maildir folders.
 *
 * `haven import` reads a Maildir as a list of message files from cur/ and
 * new/ (tmp/ holds deliveries in progress and is left alone), sorted by the
 * timestamp that starts a Maildir file name, then by name, so messages are
 * appended in the order they were delivered. Flags come from the ":2,"
 * suffix of the name (S seen, R answered, F flagged, T deleted, D draft;
 * P and keyword letters are ignored); the internal date is the file's mtime.
 * Bodies are read with bare LF turned into CRLF (an existing CRLF stays).
 *
 * A Maildir++ root also holds subfolders named ".A.B" for the mailbox
 * "A/B", each level in IMAP's modified UTF-7. maildir_list_folders finds
 * them; maildir_folder_name makes the name `haven export` writes.
 */
#ifndef HV_MAILDIR_READER_H
#define HV_MAILDIR_READER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

typedef struct maildir_entry {
    char *path;        /* DIR/cur/NAME or DIR/new/NAME */
    const char *name;  /* the file name, inside path */
    uint64_t stamp;    /* the name's leading decimal timestamp; UINT64_MAX when none */
    uint64_t flags;    /* STORE_FLAG_* from the ":2," suffix */
    int64_t mtime;     /* seconds since the epoch */
    uint64_t size;     /* bytes on disk (before LF -> CRLF) */
} maildir_entry;

typedef struct maildir_list {
    maildir_entry *v;
    size_t n, cap;
} maildir_list;

/* 1 when dir is a folder holding cur/ or new/, else 0. */
int maildir_is_maildir(const char *dir);

/* Lists the messages of the Maildir dir, sorted. Files starting with '.'
 * and anything that is not a regular file are left out. */
int maildir_list_messages(const char *dir, maildir_list *out, hv_err *err);
void maildir_list_free(maildir_list *l);

/* STORE_FLAG_* of a file name ("1700000000.x.host:2,RS" -> SEEN|ANSWERED). */
uint64_t maildir_flags_from_name(const char *name);
/* The ":2,..." suffix for flags, letters in ASCII order as Maildir asks;
 * out must hold 16 bytes. */
void maildir_flags_suffix(uint64_t flags, char out[16]);

/* Reads one message file into out (replacing its contents) with LF turned
 * into CRLF. -EFBIG (with err) when the stored size would exceed max_size;
 * *size_out is then the size known so far. -ENOENT when the file vanished
 * (a mail client renamed it while we read). */
int maildir_read_message(const char *path, uint64_t max_size, buf *out, uint64_t *size_out,
                         hv_err *err);

/* Appends p with bare LF turned into CRLF. */
void maildir_lf_to_crlf(buf *out, const uint8_t *p, size_t n);

/* A Maildir++ subfolder of a root. */
typedef struct maildir_folder {
    char *dir;   /* ROOT/.A.B */
    char *name;  /* "A/B", UTF-8 */
} maildir_folder;

typedef struct maildir_folder_list {
    maildir_folder *v;
    size_t n, cap;
} maildir_folder_list;

/* Lists the ".A.B" subfolders of root that are Maildirs, sorted by name
 * (so a parent comes before its children). -EINVAL with the folder named
 * when a name has an empty level or bad modified UTF-7. */
int maildir_list_folders(const char *root, maildir_folder_list *out, hv_err *err);
void maildir_folder_list_free(maildir_folder_list *l);

/* "A/B" -> ".A.B" with each level in modified UTF-7 ('.' inside a level is
 * encoded too, as "&AC4-", so it cannot split the level). 0, or -EINVAL for
 * bad UTF-8 or an empty level, -ENAMETOOLONG when out is too small. */
int maildir_folder_name(const char *mailbox, char *out, size_t outlen);

/* One level of a Maildir++ name, modified UTF-7 -> UTF-8 (appended to out,
 * NUL-terminated). Bytes >= 0x80 pass through (Dovecot's UTF-8 folders).
 * 0 or -EINVAL. */
int maildir_mutf7_decode(const char *s, size_t n, buf *out);

#endif
