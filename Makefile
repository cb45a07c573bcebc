# The README's two commands live here: `make check` and `make demo`.
# Everything else (build directories, sanitizer builds, fuzzing, benchmarks) hangs off them.

BUILD    ?= build
SANITIZE ?= 0
TSAN     ?= 0
JOBS     ?= $(shell nproc)
CTEST_ARGS ?=
FUZZ_SECONDS ?= 20
# make soak: its length (two phases of half each) and the PostgreSQL major version
# (empty: Debian's). SOAK_SECONDS=30 is a quick check.
SOAK_SECONDS ?= 240
SOAK_PG ?=
# PostgreSQL major versions the integration and e2e suites run against (each test is
# registered once per version, e.g. e2e/test_basic@18). 15 is Debian's; the others are
# installed by scripts/pg-versions.sh (.ci/run uses all five: 14 15 16 17 18).
PG_VERSIONS ?= 15 18
PG_WHEELS := $(filter-out 15,$(PG_VERSIONS))
empty :=
space := $(empty) $(empty)

# mbedTLS line: empty = the system's (Debian 12: 2.28); 3.6 = Debian 13's 3.6 LTS packages,
# fetched and unpacked into $(WP_CACHE)/mbedtls-3.6 by scripts/mbedtls-3.6.sh (nothing is
# installed), built in build-mbedtls36/ (build-mbedtls36-asan, -tsan with the sanitizers).
# `make check MBEDTLS=3.6` runs the suite against it (docs/tls.md).
MBEDTLS ?=
WP_CACHE ?= /var/cache/waypoint
export WP_CACHE
ifeq ($(MBEDTLS),3.6)
MBEDTLS_SUFFIX := -mbedtls36
CMAKE_FLAGS += -DWP_MBEDTLS_ROOT=$(WP_CACHE)/mbedtls-3.6/root
else ifneq ($(MBEDTLS),)
$(error MBEDTLS must be empty (the system's mbedTLS) or 3.6, not '$(MBEDTLS)')
endif

ifeq ($(SANITIZE),1)
BUILD := build-asan
CMAKE_FLAGS += -DWP_SANITIZE=ON
endif
ifeq ($(TSAN),1)
BUILD := build-tsan
CMAKE_FLAGS += -DWP_TSAN=ON
endif
ifneq ($(MBEDTLS_SUFFIX),)
BUILD := $(if $(filter build,$(BUILD)),build$(MBEDTLS_SUFFIX),$(BUILD)$(MBEDTLS_SUFFIX))
endif

.PHONY: all deps build check compat demo fuzz bench soak format clean

all: build

deps:
	./scripts/deps.sh
	$(if $(PG_WHEELS),./scripts/pg-versions.sh $(PG_WHEELS) >/dev/null)
	$(if $(MBEDTLS_SUFFIX),./scripts/mbedtls-3.6.sh >/dev/null)

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

# Re-configured on every build so a changed PG_VERSIONS takes effect (a second or so).
build: deps $(BUILD)/CMakeCache.txt
	cmake -S . -B $(BUILD) "-DWP_PG_VERSIONS=$(subst $(space),;,$(strip $(PG_VERSIONS)))" >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

check: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

# Five real drivers (pgx, psycopg, asyncpg, pgjdbc, node-postgres) through Waypoint with
# TLS; they install into $(WP_CACHE)/compat (default /var/cache/waypoint). docs/compatibility.md.
compat: build
	WP_BINARY_DIR=$(abspath $(BUILD)) ./test/compat/run.sh

# The unit, integration and e2e suites inside Debian 13 (a debootstrapped trixie cached in
# $(WP_CACHE)/debian13, with its own mbedTLS 3.6 and PostgreSQL 17), built in
# build-debian13/: scripts/debian13.sh, docs/testing.md.
.PHONY: check-debian13
check-debian13:
	JOBS=$(JOBS) CTEST_ARGS="$(CTEST_ARGS)" ./scripts/debian13.sh check

demo: build
	./scripts/demo.sh $(BUILD)

fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz.sh

# Also builds the mbedTLS 3.6 Waypoint, for the TLS rows (2.28 and 3.6 side by side).
bench: build
	$(if $(MBEDTLS_SUFFIX),,$(MAKE) --no-print-directory build MBEDTLS=3.6 PG_VERSIONS="$(PG_VERSIONS)")
	BENCH_WAYPOINT36=$(abspath build-mbedtls36)/waypoint ./bench/run.sh $(BUILD)

# Minutes of connect storms, load, vanishing clients, revocations, terminated backends,
# reloads and PostgreSQL restarts; then threads, fds, RSS and wp_ backends must be back
# (bench/soak.sh; docs/testing.md). Prints PASS/FAIL with the numbers; not part of check.
soak: build
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_PG=$(SOAK_PG) ./bench/soak.sh $(BUILD)

format:
	clang-format -i cmd/waypoint/*.c lib/*.c lib/*.h test/unit/*.c test/integration/*.c test/support/*.c test/support/*.h

clean:
	rm -rf build build-asan build-tsan build-fuzz build-mbedtls36 build-asan-mbedtls36 build-tsan-mbedtls36
