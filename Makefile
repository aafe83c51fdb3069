# blockjobd — plain Makefile. Objects go to $(BUILD); no recursive make except
# for the asan variant, which is the same build in another directory.

BUILD   ?= build
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wformat=2 \
           -Wmissing-prototypes -Wstrict-prototypes -Wold-style-definition -Wvla \
           -Wpointer-arith -Wcast-align -Wundef -Wimplicit-fallthrough \
           -Wnull-dereference -fno-common -fstack-protector-strong -I.
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
else
CFLAGS  += -D_FORTIFY_SOURCE=2
endif
PKGS    := libuv jansson
DEPS_PROBE = $(shell pkg-config --exists $(PKGS) cmocka 2>/dev/null && \
               test -f /usr/include/libaio.h && test -f /usr/include/zlib.h && \
               command -v qemu-img >/dev/null && command -v socat >/dev/null && \
               command -v python3 >/dev/null && \
               command -v qemu-storage-daemon >/dev/null && echo yes)
# `make run` and `make check` on a fresh machine install what is missing first.
NODEPS_GOALS := deps clean format format-check check-layering
ifneq ($(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
ifneq ($(DEPS_PROBE),yes)
$(info make: build or test dependencies missing, running 'make deps')
DEPS_LOG := $(shell $(MAKE) --no-print-directory deps >&2; echo $$?)
endif
endif
CFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -laio -lz -lm
CMOCKA  := $(shell pkg-config --libs cmocka 2>/dev/null)

LIB_SRC  := $(sort $(wildcard protocol/*.c jobs/*.c backends/*.c daemon/*.c))
LIB_SRC  := $(filter-out daemon/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
FAKE_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/fakes/*.c))
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BIN      := $(BUILD)/blockjobd

.PHONY: all deps check unit integration interop asan run format format-check \
        check-layering clean valgrind bench
all: $(BIN) blockjobd

blockjobd: $(BIN)
	@if [ "$(BUILD)" = build ]; then cp $(BIN) $@; fi

# V=1 shows the full commands.
Q := $(if $(V),,@)

# The daemon is linked statically, as a static PIE (addresses still
# randomised): idle, its resident memory is mostly the file pages of what it
# maps, and one static image maps far less than libc.so, libuv.so, ... each
# do (issue 6: idle RSS 2.4 MiB dynamic, 1.5 MiB static). A static glibc
# must not use NSS (daemon/ids.h): libuv's getpwuid_r() is wrapped, and the
# link fails on glibc's warning for any other NSS function (getpwnam,
# getaddrinfo, ...) or dlopen. STATIC=0 links dynamically; sanitizer builds
# always do. Unit tests and blockjobctl stay dynamic.
ifeq ($(SAN),1)
override STATIC := 0
endif
STATIC ?= 1
ifeq ($(STATIC),1)
BIN_LDFLAGS := -static-pie -Wl,--wrap=getpwuid_r -Wl,--fatal-warnings
BIN_LDLIBS  := $(shell pkg-config --static --libs libuv-static jansson \
                 2>/dev/null) -laio -lz -lm
else
BIN_LDFLAGS :=
BIN_LDLIBS  := $(LDLIBS)
endif
BIN_LINK_FLAGS = $(LDFLAGS) $(BIN_LDFLAGS) $(BIN_LDLIBS)

# Relinks when the link flags change (STATIC=0 after STATIC=1).
$(BUILD)/link-flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(BIN_LINK_FLAGS)' | cmp -s - $@ || \
	  echo '$(CC) $(BIN_LINK_FLAGS)' > $@
.PHONY: FORCE

$(BIN): $(LIB_OBJ) $(BUILD)/daemon/main.o $(BUILD)/link-flags
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) $(BIN_LDFLAGS) -o $@ $(filter %.o,$^) $(BIN_LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB_OBJ) $(FAKE_OBJ)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CMOCKA) $(LDLIBS)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Debian packages the build and the tests need; installs only what is missing.
# man-db and systemd: the systemd test runs `systemd-analyze verify`, which
# resolves the units' Documentation=man: lines with man(1), and
# systemd-socket-activate.
DEB_PKGS := gcc make pkg-config libuv1-dev libjansson-dev libaio-dev \
            libcmocka-dev zlib1g-dev libc6-dev python3 socat qemu-utils \
            qemu-system-common clang-format clang libclang-rt-14-dev \
            man-db systemd
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	else echo "make deps: everything is installed"; fi


unit: $(UNIT_BIN)
check: $(BIN) blockjobd $(UNIT_BIN)
	@BUILD=$(BUILD) BLOCKJOBD_SANITIZED=$(SAN) BLOCKJOBD=$(abspath $(BIN)) tests/run.sh $(UNIT_BIN) \
	  $(sort $(wildcard tests/integration/test_*)) \
	  $(sort $(wildcard tests/interop/test_*))

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 check

# The integration suite with every daemon under memcheck (tests/qmp.py's
# Daemon honours BLOCKJOBD_WRAPPER): any memory error or leak (definite,
# indirect) makes the daemon exit 99 and its test fail; "possibly lost"
# blocks are shown but not counted (an emergency exit on a second signal
# abandons requests in flight on purpose).
# Daemons killed by tests (crash test) are not leak-checked, only error-
# checked. Timeouts are stretched for valgrind's slowness.
VALGRIND_OPTS ?= -q --error-exitcode=99 --leak-check=full \
  --show-leak-kinds=definite,indirect,possible \
  --errors-for-leak-kinds=definite,indirect --track-fds=no
# memcheck needs a dynamically linked program (it replaces malloc through
# the dynamic linker; in a static one it reports glibc's own start-up as
# errors and checks no heap): the same objects, linked dynamically.
VG_BIN := $(BUILD)/blockjobd-dynamic
$(VG_BIN): $(LIB_OBJ) $(BUILD)/daemon/main.o
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

valgrind: $(VG_BIN)
	@command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
	@BLOCKJOBD_WRAPPER="valgrind $(VALGRIND_OPTS)" \
	  BLOCKJOBD=$(abspath $(VG_BIN)) QMP_TIMEOUT=600 TEST_TIMEOUT=3600 \
	  tests/run.sh $(sort $(wildcard tests/integration/test_*))

# Long forms of the reliability tests: the load test for SOAK_TIME seconds
# and SOAK_KILLS random SIGKILLs of block-stream (crash consistency).
SOAK_TIME  ?= 600
SOAK_KILLS ?= 200
.PHONY: soak
soak: $(BIN)
	@set -e; export BLOCKJOBD=$(abspath $(BIN)) LOAD_TIME=$(SOAK_TIME) \
	  CRASH_KILLS=$(SOAK_KILLS) CRASH_SEED=$${CRASH_SEED:-$$(date +%s)}; \
	  echo "soak: load and hostility for $(SOAK_TIME) s"; \
	  python3 tests/integration/test_load_clients.py; \
	  echo "soak: $(SOAK_KILLS) kills of block-stream (seed $$CRASH_SEED)"; \
	  python3 tests/integration/test_crash_stream.py

SOCKET ?= /tmp/blockjobd.sock
run: $(BIN)
	@echo "blockjobd: serving QMP on $(SOCKET); in another terminal:"
	@echo "  socat - UNIX-CONNECT:$(SOCKET)"
	@exec $(BIN) --socket $(SOCKET) $(ARGS)

C_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)
format:
	clang-format -i $(C_FILES)
format-check:
	@clang-format --dry-run -Werror $(C_FILES) && echo "format-check: ok"

# Include direction: daemon -> jobs -> backends; protocol/ depends on nothing.
check-layering:
	@! grep -n '#include *"\(daemon\|jobs\|backends\)/' protocol/*.[ch] && \
	 ! grep -n '#include *<uv.h>' protocol/*.[ch] && \
	 ! grep -n '#include *"\(daemon\|jobs\)/' backends/*.[ch] && \
	 ! grep -n '#include *"daemon/' jobs/*.[ch] && echo "check-layering: ok"

clean:
	rm -rf build build-asan blockjobd blockjobctl

# ---- fuzzing (libFuzzer, clang with ASan + UBSan) -----------------------------
# `make fuzz` runs every target for FUZZ_TIME seconds; new inputs go to
# $(BUILD)/fuzz/corpus-<target>, the checked-in seeds in tests/fuzz/corpus/
# stay untouched. tests/integration/test_fuzz_smoke.sh runs a short version.
FUZZ_CC      ?= clang
FUZZ_TIME    ?= 600
FUZZ_TARGETS := qmp qcow2 qcow2_bitmap
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_CFLAGS  := -std=gnu11 -D_GNU_SOURCE -O1 -g -I. -fno-omit-frame-pointer \
                -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=undefined \
                $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_LDFLAGS := -fsanitize=fuzzer,address,undefined \
                -Wl,--wrap=open,--wrap=open64
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
# Waiting for block-layer I/O, shared with the unit tests.
FUZZ_TEST_OBJ := $(FUZZ_DIR)/obj/tests/fakes/test_io.o
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
.SECONDARY: $(FUZZ_LIB_OBJ) $(FUZZ_TEST_OBJ) \
            $(FUZZ_TARGETS:%=$(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o)

.PHONY: fuzz fuzz-build
$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  FUZZCC $<"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB_OBJ) \
                    $(FUZZ_TEST_OBJ)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_LDFLAGS) -o $@ $^ $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: $(FUZZ_BIN)
	@for t in $(FUZZ_TARGETS); do \
	  tests/fuzz/run.sh $(FUZZ_DIR) $$t $(FUZZ_TIME) || exit 1; done

# ---- bench: `make bench` (tests/bench/, issue 6) ----------------------------
# Not part of `make check`. Builds, then runs blockjobd and qemu-storage-daemon
# side by side with fio's ceiling; writes tests/bench/results.{md,json},
# tests/bench/throughput.png and the README's "Performance" section.
# Shorter run: make bench BENCH_ARGS="--size 256M --rounds 3"
# (see python3 tests/bench/bench.py --help). Needs root to drop the page cache
# between rounds; without it the rounds run warm and the table says so.
BENCH_PKGS := fio gnuplot-nox
BENCH_ARGS ?=
.PHONY: bench-deps
bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make bench: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
bench: bench-deps $(BIN)
	@python3 tests/bench/bench.py --blockjobd $(abspath $(BIN)) $(BENCH_ARGS)

# ---- service: blockjobctl, man pages, systemd units, install (H7) -------
CTL_BIN := $(BUILD)/blockjobctl
all: $(CTL_BIN) blockjobctl
check: $(CTL_BIN) blockjobctl
.PHONY: install uninstall

blockjobctl: $(CTL_BIN)
	@if [ "$(BUILD)" = build ]; then cp $(CTL_BIN) $@; fi

# A plain client: jansson and libc only, none of the daemon's library.
$(CTL_BIN): $(BUILD)/daemon/ctl/blockjobctl.o
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs jansson 2>/dev/null)

PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
INSTALL    ?= install

# Units name the daemon by its installed path.
install: $(BIN) $(CTL_BIN)
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) \
	  $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man1 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR)
	$(INSTALL) -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/blockjobd
	$(INSTALL) -m 0755 $(CTL_BIN) $(DESTDIR)$(BINDIR)/blockjobctl
	$(INSTALL) -m 0644 daemon/blockjobd.8 $(DESTDIR)$(MANDIR)/man8/blockjobd.8
	$(INSTALL) -m 0644 daemon/blockjobctl.1 \
	  $(DESTDIR)$(MANDIR)/man1/blockjobctl.1
	for u in blockjobd.service blockjobd.socket blockjobd-readonly.socket; do \
	  sed 's|/usr/sbin/blockjobd|$(SBINDIR)/blockjobd|g' systemd/$$u \
	    > $(DESTDIR)$(UNITDIR)/$$u.tmp && chmod 0644 \
	    $(DESTDIR)$(UNITDIR)/$$u.tmp && \
	  mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	$(INSTALL) -m 0644 systemd/blockjobd.sysusers \
	  $(DESTDIR)$(SYSUSERSDIR)/blockjobd.conf

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/blockjobd $(DESTDIR)$(BINDIR)/blockjobctl \
	  $(DESTDIR)$(MANDIR)/man8/blockjobd.8 \
	  $(DESTDIR)$(MANDIR)/man1/blockjobctl.1 \
	  $(DESTDIR)$(UNITDIR)/blockjobd.service \
	  $(DESTDIR)$(UNITDIR)/blockjobd.socket \
	  $(DESTDIR)$(UNITDIR)/blockjobd-readonly.socket \
	  $(DESTDIR)$(SYSUSERSDIR)/blockjobd.conf
