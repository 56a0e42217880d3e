/*
 * version.h - the one version string both programs report (`haven
 * --version`, `havend --version`, the admin socket's "status"), so the
 * operator command and the daemon can never disagree about what they are.
 */
#ifndef HV_VERSION_H
#define HV_VERSION_H

#ifndef HAVEN_VERSION
#define HAVEN_VERSION "0.1.0-dev"
#endif

#endif
