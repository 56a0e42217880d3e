/* test_proxy_scan.c - the proxy's response scanner: a BYE may go only
 * between two whole responses, never into a literal or a line. */
#include <string.h>

#include "proxy/proxy_internal.h"
#include "testlib.h"

static int boundary_after(const char *s, size_t chunk)
{
    px_scan sc;
    memset(&sc, 0, sizeof(sc));
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += chunk)
        px_scan_feed(&sc, s + i, n - i < chunk ? n - i : chunk);
    return px_scan_at_boundary(&sc);
}

TEST(boundaries)
{
    for (size_t chunk = 1; chunk <= 64; chunk *= 2) {
        CHECK(boundary_after("", chunk) == 1);
        CHECK(boundary_after("* OK ready\r\n", chunk) == 1);
        CHECK(boundary_after("* OK rea", chunk) == 0);
        /* Inside a literal, even one that contains CRLFs and "{9}". */
        CHECK(boundary_after("* 1 FETCH (BODY[] {12}\r\nab\r\n{9}\r\nxx", chunk) == 0);
        CHECK(boundary_after("* 1 FETCH (BODY[] {12}\r\nab\r\n{9}\r\nxxx)\r\n", chunk) == 1);
        /* A literal8 announcement, and a long line whose tail is kept. */
        CHECK(boundary_after("* 1 FETCH (BINARY[] ~{3}\r\nabc", chunk) == 0);
        CHECK(boundary_after("* 1 FETCH (BINARY[] ~{3}\r\nabc)\r\n", chunk) == 1);
        CHECK(boundary_after("* 1 FETCH (X \"0123456789012345678901234567890123\" {2}\r\nab",
                             chunk) == 0);
        /* Braces that are not a literal announcement. */
        CHECK(boundary_after("* OK {not a literal}\r\n", chunk) == 1);
        CHECK(boundary_after("* OK {}\r\n", chunk) == 1);
    }
}

int main(void)
{
    RUN(boundaries);
    return t_done();
}
