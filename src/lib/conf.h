/*
 * conf.h - haven.conf, the one configuration file of an instance.
 *
 * The format is "key = value" lines; '#' starts a comment. Every key is
 * declared once in conf_keys (conf.c) with its default and a description,
 * and docs/config.md lists the same keys (a test checks that). An unknown
 * key or a malformed line is an error with its line number, so a typo
 * never silently falls back to a default.
 *
 * Relative paths in values are relative to the folder holding the file.
 */
#ifndef HV_CONF_H
#define HV_CONF_H

#include <stddef.h>

#include "lib/err.h"

typedef struct conf_key {
    const char *name;
    const char *def;   /* default value as text */
    const char *help;  /* one line */
} conf_key;

extern const conf_key conf_keys[];

typedef struct conf conf;

int conf_load(const char *path, conf **out, hv_err *err);
void conf_free(conf *c);
/* The value of key (the default when unset). key must be declared. */
const char *conf_get(const conf *c, const char *key);
long long conf_get_int(const conf *c, const char *key);
int conf_get_bool(const conf *c, const char *key);
/* Resolve a path-valued key against the config file's folder into out. */
void conf_path(const conf *c, const char *key, char *out, size_t outlen);
/* The folder holding the config file. */
const char *conf_dir(const conf *c);

#endif
