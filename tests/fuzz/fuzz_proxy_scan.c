/* fuzz_proxy_scan.c - the proxy's response scanner (where a store's
 * response stream may take the proxy's own "* BYE"): any bytes, fed whole
 * or byte by byte, must leave the same state, and never crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/proxy_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    px_scan whole, bytes;
    memset(&whole, 0, sizeof(whole));
    memset(&bytes, 0, sizeof(bytes));
    px_scan_feed(&whole, (const char *)data, size);
    for (size_t i = 0; i < size; i++)
        px_scan_feed(&bytes, (const char *)data + i, 1);
    if (whole.literal != bytes.literal || whole.linelen != bytes.linelen ||
        px_scan_at_boundary(&whole) != px_scan_at_boundary(&bytes))
        abort();
    return 0;
}
