/*
 * imap_parser.h - the IMAP command parser (RFC 3501, RFC 9051 command
 * syntax; LITERAL+ / LITERAL- of RFC 7888; literal8 "~{n}" of RFC 3516).
 *
 * The session feeds it bytes as they arrive, in chunks of any size down to
 * one byte; it returns at each event (a whole command, a synchronizing
 * literal waiting for "+", a syntax error) and says how much it consumed,
 * so pipelined commands stay in the caller's buffer. Feeding one byte at a
 * time gives exactly what feeding the whole buffer gives.
 *
 * SECURITY: every byte comes from an unauthenticated client. Memory is
 * bounded by the limits: the command text (max_line), literal data
 * (max_literal each, max_total together) and the argument tree (max_args,
 * max_depth); a command that exceeds one is answered with an error, never
 * by growing. The session passes tighter limits before login. Literal data
 * is never read as commands: after an error the parser still skips the
 * data of a non-synchronizing literal the client announced. See
 * docs/imap-parser.md for what is accepted.
 */
#ifndef HV_IMAP_PARSER_H
#define HV_IMAP_PARSER_H

#include <stddef.h>

#define IMAP_PARSER_DEFAULT_MAX_LINE    (64u * 1024)
#define IMAP_PARSER_DEFAULT_MAX_LITERAL ((size_t)64 * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_TOTAL   ((size_t)128 * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_DEPTH   16u
#define IMAP_PARSER_DEFAULT_MAX_ARGS    100000u

typedef enum {
    IMAP_ARG_ATOM,   /* also sequence sets, flags (\Seen, \*), BODY[...]<n.m> */
    IMAP_ARG_STRING, /* quoted or literal */
    IMAP_ARG_NIL,    /* the atom NIL in any case; str keeps its text ("nil") */
    IMAP_ARG_LIST,
} imap_arg_type;

typedef struct imap_arg {
    imap_arg_type type;
    /* ATOM, STRING, NIL: the bytes, NUL-terminated. A literal may contain
     * NUL itself: use len, and reject NUL where a C string is meant
     * (mailbox names, passwords). Quoted strings have their escapes
     * removed and never contain NUL. */
    const char *str;
    size_t len;
    int literal;                /* STRING from a literal: 1 = {n} or {n+}, 2 = ~{n} */
    struct imap_arg *list;      /* LIST: the elements (NULL when empty) */
    size_t nlist;
} imap_arg;

typedef struct imap_command {
    const char *tag;
    /* The command name, upper-cased. "UID" and the atom after it are
     * joined with one space: "UID FETCH", and args start after it. A bare
     * "UID" at the end of the line stays "UID" with no args. */
    const char *name;
    imap_arg *args;
    size_t nargs;
} imap_command;

/* A zero field means its default. */
typedef struct imap_parser_limits {
    size_t max_line;    /* command text, all lines of one command, without literal
                           data and line ends (default 64 KiB; 8 KiB before login) */
    size_t max_literal; /* one literal (default 64 MiB) */
    size_t max_total;   /* all literal data of one command (default 128 MiB) */
    unsigned max_depth; /* list nesting (default 16) */
    unsigned max_args;  /* arguments, lists and their elements included (default 100000) */
    size_t max_literal_nonsync; /* one {n+} literal: default max_literal; 4096 when
                                   the server announces LITERAL- instead of LITERAL+ */
} imap_parser_limits;

typedef struct imap_parser imap_parser;

/* lim may be NULL (all defaults). Allocation failure aborts, as buf does. */
imap_parser *imap_parser_new(const imap_parser_limits *lim);
void imap_parser_free(imap_parser *p);
/* Replaces the limits (e.g. after login); they apply from the next byte. */
void imap_parser_set_limits(imap_parser *p, const imap_parser_limits *lim);
/* The limits with every default filled in. */
void imap_parser_limits_default(imap_parser_limits *lim);

enum imap_parse_result {
    IMAP_PARSE_MORE,     /* all input consumed, command incomplete */
    IMAP_PARSE_CONTINUE, /* a synchronizing literal {n} / ~{n} was announced and is within
                            the limits: send "+ OK\r\n" and feed on, or refuse it */
    IMAP_PARSE_DONE,     /* a whole command is ready: imap_parser_command() */
    IMAP_PARSE_ERROR,    /* imap_parser_error() says why; the input is discarded through
                            the end of the bad command's line (and the data of any
                            {n+} literal ending it), so the next byte starts a command */
};

/* Feeds up to len bytes and returns at the first event; *used is how many
 * were consumed (all of them for MORE). After DONE or ERROR the parser
 * stays there (returning it again, consuming nothing) until reset. */
enum imap_parse_result imap_parser_feed(imap_parser *p, const char *data, size_t len,
                                        size_t *used);

/* The command after DONE; valid until imap_parser_reset. */
const imap_command *imap_parser_command(imap_parser *p);

/* The tag and the upper-cased command name read so far, or NULL: lets the
 * caller judge a literal at CONTINUE (e.g. APPEND's own size limit). */
const char *imap_parser_tag(imap_parser *p);
const char *imap_parser_name(imap_parser *p);

/* After ERROR: the reason (one line, for "tag BAD reason"), and in
 * *tag_out (if not NULL) the tag, or NULL when none was read whole. */
const char *imap_parser_error(imap_parser *p, const char **tag_out);
/* The error was a limit (line, literal, total literal size, arguments,
 * nesting) or a refused literal: the caller may answer "BAD [TOOBIG]" or
 * close the connection. */
int imap_parser_error_too_big(imap_parser *p);
/* The error left the parser unable to find the next command (a {n+}
 * literal too large to even count was announced): close the connection.
 * A fatal parser consumes everything and returns ERROR from then on. */
int imap_parser_error_fatal(imap_parser *p);

/* After DONE or ERROR (or a refused literal): frees the command and its
 * memory; the next byte fed starts a new command. */
void imap_parser_reset(imap_parser *p);

/* At CONTINUE only: the size of the announced literal (0 otherwise). */
size_t imap_parser_pending_literal(imap_parser *p);
/* At CONTINUE only: drops the command instead of taking the literal (the
 * client sends no data for a synchronizing literal that got no "+").
 * The parser then reports as after ERROR (reason "literal refused",
 * too_big set, the tag); call imap_parser_reset before feeding more. */
void imap_parser_refuse_literal(imap_parser *p);

#endif
