# The two commands of the quick start, and the rest of the developer loop.
#   make demo   install what is missing, build, start a local cluster, train the demo job on
#               it, fetch the model, stop the cluster
#   make check  install, build (warnings as errors) and run every test, also under ASan+UBSan
#   make bench  benchmarks (numbers come from here, never from tests)
#   make soak   a 100-fault chaos soak of every kind, flips included (2-7 minutes here)
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
MAKEFLAGS  += --no-print-directory
DEMO_OUT   ?= out/demo

.PHONY: all deps test-deps build asan demo check test test-asan bench soak clean

all: build

deps:
	@bash deploy/install-deps.sh

test-deps:
	@bash deploy/install-deps.sh --tests

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMOE_WERROR=ON -DMOE_SANITIZE=ON -DMOE_CUDA=OFF >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

demo: build
	@bash deploy/demo.sh $(BUILD)/bin $(DEMO_OUT)

# The sanitizer build leaves out the CUDA kernels (the release build compiles them where nvcc
# exists; nothing on a CPU machine runs them), and runs every test except those labelled
# "slow" (full training runs, which the release build covers and which only repeat the same
# code paths more times).
check: test-deps build asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

test: test-deps build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD)/bin/bench_train
	./$(BUILD)/bin/bench_mesh
	./$(BUILD)/bin/bench_alltoall
	./$(BUILD)/bin/bench_status
	./$(BUILD)/bin/bench_scale
	./$(BUILD)/bin/bench_transfer_check
	mkdir -p $(BUILD)/bench_export && ./$(BUILD)/bin/bench_export $(BUILD)/bench_export
	bash tests/bench/bench_recovery.sh ./$(BUILD)/bin
	bash tests/bench/bench_ettr.sh ./$(BUILD)/bin
	bash tests/bench/bench_xpod.sh ./$(BUILD)/bin

# cli_chaos_soak at length: 100 faults of kill, kill2, stop, coordinator, cut and flip on one
# job, then flips and kills; the model must come out byte for byte (SOAK_SEED picks the faults)
SOAK_SEED ?= 5
soak: test-deps build
	CHAOS_SOAK_FAULTS=100 CHAOS_SOAK_STEPS=50000 CHAOS_SOAK_SEED=$(SOAK_SEED) \
	  bash tests/cli_chaos_soak.sh ./$(BUILD)/bin/moectl

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
