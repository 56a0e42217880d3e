/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum on every on-disk record.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at
 * run time) and a slicing table otherwise; both give identical results.
 */
#ifndef HV_CRC32C_H
#define HV_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC: start with crc = 0 for a fresh checksum. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
