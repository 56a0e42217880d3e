# Haven's build. Plain make: every .c under src/<part>/ goes into
# build/libhaven.a except src/cmd, which holds the two programs.
#
#   make           build bin/haven and bin/havend
#   make test      every test (unit, unit under ASan+UBSan, integration)
#   make run       install missing Debian packages, build, start a demo node
#   make bench     every benchmark in bench/
#   make fuzz      build the libFuzzer targets and run each for FUZZ_SECONDS

CC      ?= cc
OPT     ?= -O2
CFLAGS  += -std=c17 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wno-missing-field-initializers -Isrc $(PQ_CFLAGS)
# libpq (the PostgreSQL directory backend) keeps its header in a folder of its own.
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
LDLIBS  += -levent_openssl -levent_pthreads -levent_core -lssl -lcrypto -lsqlite3 -lpq -lcrypt -lresolv -lpthread
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRC    := $(sort $(filter-out src/cmd/%,$(wildcard src/*/*.c)))
HAVEN_SRC  := src/cmd/haven.c $(sort $(wildcard src/cmd/haven_*.c))
HAVEND_SRC := src/cmd/havend.c $(sort $(wildcard src/cmd/havend_*.c))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
BENCH_SRC  := $(sort $(wildcard bench/*/*_bench.c))
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))

LIB_OBJ      := $(LIB_SRC:%.c=build/obj/%.o)
LIB_ASAN_OBJ := $(LIB_SRC:%.c=build/asan/%.o)
UNIT_BIN     := $(UNIT_SRC:tests/unit/%.c=build/tests/%)
UNIT_ASAN    := $(UNIT_SRC:tests/unit/%.c=build/tests-asan/%)
BENCH_BIN    := $(BENCH_SRC:%.c=build/%)
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)

all: bin/haven bin/havend

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -MMD -MP -c $< -o $@

# ar keeps only base names: two parts with a file of the same name would
# silently replace each other's object, so refuse that.
build/libhaven.a: $(LIB_OBJ)
	@d=$$(printf '%s\n' $(notdir $^) | sort | uniq -d); \
	  [ -z "$$d" ] || { echo "Makefile: two sources named $$d under src/: rename one"; exit 1; }
	@rm -f $@
	ar rcs $@ $^

build/libhaven-asan.a: $(LIB_ASAN_OBJ)
	@rm -f $@
	ar rcs $@ $^

bin/haven: $(HAVEN_SRC:%.c=build/obj/%.o) build/libhaven.a
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

bin/havend: $(HAVEND_SRC:%.c=build/obj/%.o) build/libhaven.a
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/tests/%: build/obj/tests/unit/%.o build/obj/tests/unit/testlib.o build/libhaven.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/tests-asan/%: build/asan/tests/unit/%.o build/asan/tests/unit/testlib.o build/libhaven-asan.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

build/bench/%: bench/%.c build/libhaven.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Fuzz targets link against an archive of the library built for fuzzing,
# so each pulls in only the objects it uses.
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -g -O1 -Isrc $(PQ_CFLAGS)
FUZZ_OBJ := $(LIB_SRC:src/%.c=build/fuzz/obj/%.o)
build/fuzz/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<
build/fuzz/libhaven-fuzz.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^
build/fuzz/%: tests/fuzz/%.c build/fuzz/libhaven-fuzz.a
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $^ $(LDLIBS)

deps:
	@scripts/deps.sh

test: deps all $(UNIT_BIN) $(UNIT_ASAN)
	@tests/run.sh $(UNIT_BIN) $(UNIT_ASAN) $(sort $(wildcard tests/integration/test_*))

run: deps all
	@scripts/run.sh

bench: deps all $(BENCH_BIN)
	@for b in $(sort $(wildcard bench/*/run.sh)); do echo "== $$b"; $$b || exit 1; done

FUZZ_SECONDS ?= 60
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do echo "== $$f ($(FUZZ_SECONDS)s)"; \
	  mkdir -p build/fuzz/corpus/$$(basename $$f); \
	  $$f -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus/$$(basename $$f) \
	      tests/fuzz/corpus/$$(basename $$f) || exit 1; done

clean:
	rm -rf build bin

.PHONY: all deps test run bench fuzz clean
# Unit-test objects are intermediate: keep them between builds (no rebuild
# of a missing one when its program is current, unlike .SECONDARY without
# names, which also let a new library source be skipped).
.PRECIOUS: build/obj/%.o build/asan/%.o build/fuzz/obj/%.o

-include $(shell find build -name '*.d' 2>/dev/null)
