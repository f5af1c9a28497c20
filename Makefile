# EwallML: the Makefile is the interface. `make help` lists the targets.
#
#   make demo    install what is needed, build (release), make the model, embed the sample photos,
#                index them, ask for similar products
#   make test    install what is needed, make model + fixtures, run every test
#   make bench   benchmarks against the Python reference pipeline, same run (bench/out/)
#
# Everything is idempotent: a second run only does what is missing.

SHELL := /bin/bash
PY    := /usr/bin/python3
SWIFT ?= swift
MODEL := models/resnet50.pt
CARD  := models/resnet50.card.json
# make model also writes the int8 file of the same weights and the photos `--precision auto`
# measures drift on (docs/precision.md).
MODEL_INT8 := models/resnet50_int8.pt
GUARD_DIR  := models/resnet50.calibration
FIX   := .fixtures

# Debian packages: native libraries, SQLite, the PostgreSQL server the tests start on
# loopback, the Python reference, and the photo sources for the samples (desktop wallpapers
# and scikit-image's data, real photographs).
APT_PACKAGES := libtorch-dev libfaiss-dev libopenblas-dev libturbojpeg0-dev libpng-dev libwebp-dev \
                libsqlite3-dev libpq-dev postgresql sqlite3 wrk curl iproute2 libhiredis-dev redis-server clang-format \
                python3-torch python3-torchvision python3-pil python3-numpy python3-skimage python3-requests python3-faiss \
                mate-backgrounds plasma-workspace-wallpapers
DEPS_STAMP := .build/.deps-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-8)

.PHONY: help deps build torch-backend model samples fixtures check test demo bench bench-1m clean serve gpu-bundle

help:
	@echo "make demo     install deps, build (release), make the model, run ewall-embed over the sample photos served"
	@echo "              from a loopback HTTP server into sqlite:data/ewall.sqlite, twice (the rerun skips all)"
	@echo "make test     install deps, make model and fixtures, make check, build (no warnings allowed), check the"
	@echo "              docs' commands against the binaries, run all tests"
	@echo "make check    format (swift-format, clang-format) and @unchecked Sendable checks; make test runs it"
	@echo "make bench    benchmarks vs the Python reference (bench/out/): model, decode, real photos, the job, the shared-job"
	@echo "              queue (PostgreSQL), FAISS index, classifier,"
	@echo "              ewall-serve under wrk load, the Redis cache warm vs cold, FAISS kernels vs Python faiss,"
	@echo "              index kinds at 100,000 products (IVF-Flat, IVF-SQ8 + re-ranking: size, build, served p99, recall)"
	@echo "make bench-1m the index kinds at 1,000,000 products (about 45 min; needs ~50 GB of disk under /tmp)"
	@echo "make serve    after make demo: ewall-serve on http://127.0.0.1:8080 over the demo store and index"
	@echo "make deps     apt-get install the Debian packages listed in APT_PACKAGES (root or sudo)"
	@echo "make model    export $(MODEL): pretrained if the weights download, else random-init (loud warning)"
	@echo "make build    swift build -c release, and the torch backend .build/release/libewall_torch.so"
	@echo "              (LIBTORCH=/path: the backend against another libtorch, e.g. a CUDA one or a pip wheel's torch/)"
	@echo "make gpu-bundle  the decoder archive bench/gpu/run.sh links on a GPU machine (see docs/precision.md \"GPU\")"
	@echo "make clean    remove build outputs, fixtures, samples (keeps the model)"

deps: $(DEPS_STAMP)
$(DEPS_STAMP):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p .build && touch $@

# The torch backend (libewall_torch.so, Sources/CTorchShim) is the only thing linked against
# libtorch; the executables load it at run time from beside themselves (docs/precision.md, "Bring your own
# libtorch"). By default it is SwiftPM's ewall_torch product, against Debian's CPU libtorch.
# LIBTORCH=/path builds it instead with g++ against another libtorch, without rebuilding any
# Swift: a pytorch.org libtorch folder or a pip wheel's torch/ folder (include/ and lib/), e.g. a
# CUDA build for --device cuda. libtorch_cuda is linked only when its CUDA libraries resolve
# (ldd); otherwise the backend is CPU-only and says so when CUDA is asked for.
TORCH_BACKEND := .build/release/libewall_torch.so
comma := ,
ifneq ($(LIBTORCH),)
LIBTORCH_DIR := $(abspath $(LIBTORCH))
# The C++ ABI libtorch was built with, from how c10::Error's std::string is mangled.
TORCH_ABI  ?= $(shell nm -D --defined-only $(LIBTORCH_DIR)/lib/libc10.so | grep -q '_ZN3c105ErrorC1ENS_14SourceLocationENSt7__cxx11' && echo 1 || echo 0)
TORCH_CUDA := $(shell [ -e $(LIBTORCH_DIR)/lib/libtorch_cuda.so ] && ! ldd $(LIBTORCH_DIR)/lib/libtorch_cuda.so | grep -q 'not found' && echo yes)
# --no-as-needed: nothing names a libtorch_cuda symbol, but loading it is what registers CUDA.
TORCH_CUDA_LIBS := $(if $(TORCH_CUDA),-Wl$(comma)--no-as-needed -ltorch_cuda -Wl$(comma)--as-needed)
endif

build: deps
	$(SWIFT) build -c release --product ewall
	$(SWIFT) build -c release --product ewall-embed
	$(SWIFT) build -c release --product rebuild-faiss-index
	$(SWIFT) build -c release --product ewall-serve
	@$(MAKE) --no-print-directory torch-backend

# $(TORCH_BACKEND).libtorch records the LIBTORCH a backend was built against; without LIBTORCH,
# such a backend is replaced by SwiftPM's again.
torch-backend:
ifeq ($(LIBTORCH),)
	@if [ -e $(TORCH_BACKEND).libtorch ]; then rm -f $(TORCH_BACKEND) $(TORCH_BACKEND).libtorch; fi
	$(SWIFT) build -c release --product ewall_torch
else
	@[ -e $(LIBTORCH_DIR)/lib/libtorch_cpu.so ] || { echo "LIBTORCH=$(LIBTORCH): no lib/libtorch_cpu.so there"; exit 2; }
	@[ -e $(LIBTORCH_DIR)/lib/libtorch_cuda.so ] && [ -z "$(TORCH_CUDA)" ] && { \
	  echo "note: $(LIBTORCH_DIR)/lib/libtorch_cuda.so cannot find its CUDA libraries here:"; \
	  ldd $(LIBTORCH_DIR)/lib/libtorch_cuda.so | grep 'not found' | sort -u | sed 's/^\s*/  /'; \
	  echo "      the backend is built CPU-only (--device cuda will say this libtorch has no CUDA)"; } || true
	@mkdir -p $(dir $(TORCH_BACKEND))
	g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -D_GLIBCXX_USE_CXX11_ABI=$(TORCH_ABI) \
	    -ISources/CTorchLoader/include -I$(LIBTORCH_DIR)/include \
	    -I$(LIBTORCH_DIR)/include/torch/csrc/api/include Sources/CTorchShim/torch_shim.cpp \
	    -o $(TORCH_BACKEND).tmp -Wl,-z,defs -L$(LIBTORCH_DIR)/lib -Wl,-rpath,$(LIBTORCH_DIR)/lib \
	    $(TORCH_CUDA_LIBS) -ltorch_cpu -lc10
	@mv -f $(TORCH_BACKEND).tmp $(TORCH_BACKEND) && echo $(LIBTORCH_DIR) > $(TORCH_BACKEND).libtorch
	@echo "$(TORCH_BACKEND): against $(LIBTORCH_DIR) (C++11 ABI $(TORCH_ABI)$(if $(TORCH_CUDA),$(comma) with CUDA,$(comma) CPU only))"
endif

# The GPU machine's checks (bench/gpu/run.sh) link our decoder from this archive.
gpu-bundle:
	bench/gpu/bundle.sh

serve: build model
	.build/release/ewall-serve --db sqlite:data/ewall.sqlite --index data/faiss --model $(MODEL)

samples: data/samples/manifest.json
data/samples/manifest.json: data/make_samples.py | $(DEPS_STAMP)
	$(PY) data/make_samples.py --out data/samples

model: $(MODEL)
$(MODEL): models/export_resnet50.py data/samples/manifest.json | $(DEPS_STAMP)
	@$(PY) models/export_resnet50.py --out $(MODEL) --weights IMAGENET1K_V2 2>/dev/null || { \
	  rc=$$?; [ $$rc = 3 ] || exit $$rc; \
	  echo "##################################################################################"; \
	  echo "# WARNING: the pretrained ImageNet weights could not be downloaded (no internet)."; \
	  echo "# Making a RANDOM-INIT ResNet50 instead (seed 0, BatchNorm recalibrated on the"; \
	  echo "# sample photos). Its vectors carry NO meaning: for tests and demos only."; \
	  echo "##################################################################################"; \
	  $(PY) models/export_resnet50.py --out $(MODEL) --random-init --seed 0 \
	      --calibration-dir data/samples/calibration; }
	$(PY) data/make_samples.py --guard 96 --guard-dir $(GUARD_DIR)
	@if grep -q '"pretrained": true' $(CARD); then \
	  $(PY) models/export_resnet50.py --out $(MODEL_INT8) --int8 --weights IMAGENET1K_V2 \
	      --calibration-dir data/samples/calibration; \
	else \
	  $(PY) models/export_resnet50.py --out $(MODEL_INT8) --int8 --random-init --seed 0 \
	      --calibration-dir data/samples/calibration; fi

fixtures: $(FIX)/images/.done $(FIX)/torch/.done $(FIX)/reference/.done
$(FIX)/images/.done: Tests/Fixtures/make_image_fixtures.py | $(DEPS_STAMP)
	$(PY) Tests/Fixtures/make_image_fixtures.py $(FIX)/images && touch $@
$(FIX)/torch/.done: Tests/Fixtures/make_torch_fixtures.py | $(DEPS_STAMP)
	$(PY) Tests/Fixtures/make_torch_fixtures.py $(FIX)/torch && touch $@
# Reference tensors and vectors from the Python pipeline, for the parity tests.
$(FIX)/reference/.done: reference/ewall_reference.py $(MODEL) $(FIX)/images/.done data/samples/manifest.json
	@mkdir -p $(FIX)/reference
	@{ ls data/samples/photos/*; ls $(FIX)/images/exif_orientation_*.jpg; \
	   for f in cmyk_adobe_600x400.jpg ycck_adobe_600x400.jpg gray16_451x300.png rgba_cutout_451x300.png \
	            gray_alpha_451x300.png palette_transparent_451x300.png alpha_451x300.webp interlaced_451x300.png \
	            progressive_600x400.jpg lossless_451x300.webp \
	            xmp_orientation_6_451x300.png xmp_orientation_6_451x300.jpg exif6_xmp8_451x300.jpg exif6_xmp8_451x300.png \
	            junk_before_dqt_600x400.jpg junk_before_exif6_451x300.jpg jfif_revision_2_600x400.jpg \
	            adobe_transform_7_600x400.jpg; do echo $(FIX)/images/$$f; done; } > $(FIX)/reference/files.txt
	$(PY) reference/ewall_reference.py --list $(FIX)/reference/files.txt --mode squash224 \
	    --tensors $(FIX)/reference/squash224.npy --model $(MODEL) --vectors $(FIX)/reference/vectors_fp32.npy
	$(PY) reference/ewall_reference.py --list $(FIX)/reference/files.txt --mode resize256-crop224 \
	    --tensors $(FIX)/reference/resize256-crop224.npy
	@touch $@

# The house rules, checked by tools: swift-format (.swift-format) and clang-format (.clang-format)
# find nothing to change, and every @unchecked Sendable says why it is safe. `make test` runs it.
C_SOURCES = $(shell find Sources -name '*.c' -o -name '*.cpp' -o -name '*.h' | sort)
check: deps
	$(SWIFT) format lint --recursive --strict Sources Tests Package.swift
	clang-format --dry-run -Werror $(C_SOURCES)
	$(PY) scripts/check_unchecked_sendable.py

# --no-parallel: the suites each drive libtorch, subprocesses and servers on a 2-core machine;
# run side by side they starve each other's timers and turn timing margins into flaky failures.
# The build's log is kept: a compiler warning in Sources/ or Tests/ fails the run
# (scripts/check_warnings.py), and so does a command in the docs that no longer parses
# (docs/check_docs.py, against the built binaries' --help).
test: deps model fixtures check
	@mkdir -p .build
	set -o pipefail; $(SWIFT) build --build-tests 2>&1 | tee .build/build-tests.log
	$(PY) scripts/check_warnings.py .build/build-tests.log
	$(PY) docs/check_docs.py --bin .build/debug
	$(SWIFT) test --skip-build --no-parallel

# The main job, for real: the sample photos served over HTTP on loopback, embedded into the
# default SQLite store, then the same manifest again (everything is skipped). One row is a
# deliberately truncated JPEG and one a missing image: each costs one failed row, nothing else.
DEMO_PORT ?= 8765
demo: build model $(FIX)/images/.done
	@mkdir -p data/demo && rm -rf data/demo/www && mkdir -p data/demo/www && \
	  cp data/samples/photos/* data/demo/www/ && cp $(FIX)/images/truncated_half.jpg data/demo/www/
	@{ echo "product_id,image_url,title,category,in_stock"; i=0; \
	   cats=(down coat jeans fleece); titles=("구스다운 롱패딩" "울 코트" "리바이스 청바지" "sample photo"); \
	   for f in $$(ls data/samples/photos); do i=$$((i+1)); \
	     if [ $$i -le 16 ]; then echo "demo-$$i,http://127.0.0.1:$(DEMO_PORT)/$$f,sample photo $$f,$${cats[$$((i % 4))]},true"; \
	     else echo "demo-$$i,http://127.0.0.1:$(DEMO_PORT)/$$f,$${titles[$$((i % 4))]} $$f,generic,true"; fi; done; \
	   echo "demo-truncated,http://127.0.0.1:$(DEMO_PORT)/truncated_half.jpg,a damaged JPEG,generic,true"; \
	   echo "demo-missing,http://127.0.0.1:$(DEMO_PORT)/no-such-image.jpg,a missing image,generic,true"; \
	 } > data/demo/manifest.csv
	@$(PY) -m http.server $(DEMO_PORT) --bind 127.0.0.1 --directory data/demo/www >/dev/null 2>&1 & srv=$$!; \
	  trap "kill $$srv" EXIT; sleep 1; \
	  echo; echo "== ewall-embed over data/demo/manifest.csv (http://127.0.0.1:$(DEMO_PORT)) into sqlite:data/ewall.sqlite"; echo; \
	  .build/release/ewall-embed --manifest data/demo/manifest.csv --failures data/demo/failures.jsonl; rc=$$?; \
	  echo "(exit status $$rc: 1 means some rows failed; they are in data/demo/failures.jsonl)"; \
	  echo; echo "== the same manifest again: everything is skipped, nothing is fetched"; echo; \
	  .build/release/ewall-embed --manifest data/demo/manifest.csv; rc=$$?; \
	  echo "(exit status $$rc: the two failed rows are still not embedded; --retry-failed retries transient failures only)"; \
	  [ $$rc -le 1 ]
	@echo; echo "== rebuild-faiss-index: the index of those vectors, into data/faiss/"; echo
	.build/release/rebuild-faiss-index
	@echo; echo "== ewall similar demo-1 --any-category"; echo
	.build/release/ewall similar demo-1 --any-category
	@echo; echo "== ewall classify: the generic products (dry run); 16 demo products were filed under 4 categories"; echo
	.build/release/ewall classify
	@echo; echo "== ewall calibrate: leave-one-out on those 16"; echo
	.build/release/ewall calibrate
	@echo; echo "== ewall-serve over the same store and index (make serve runs it in the foreground)"; echo
	@.build/release/ewall-serve --port $(DEMO_PORT) --watch-seconds 0 > data/demo/serve.log 2>&1 & srv=$$!; \
	  trap "kill $$srv" EXIT; for i in $$(seq 50); do curl -sf http://127.0.0.1:$(DEMO_PORT)/healthz >/dev/null && break; sleep 0.2; done; \
	  set -x; curl -s "http://127.0.0.1:$(DEMO_PORT)/api/recommendations/similar/demo-1?k=3&any_category=true"; echo; \
	  curl -s -X POST http://127.0.0.1:$(DEMO_PORT)/api/recommendations/classify -H 'Content-Type: application/json' \
	       -d '{"title": "노스페이스 눕시 다운 자켓"}'; echo; \
	  curl -s -X POST http://127.0.0.1:$(DEMO_PORT)/api/embeddings -H 'Content-Type: application/json' \
	       -d '{"image_url": "http://169.254.169.254/latest/meta-data/"}'; echo

# The benchmarks compare named paths: the tools run fp32 unless a bench passes --precision.
bench: export EWALL_PRECISION = fp32
bench: build model
	$(PY) data/make_samples.py --out data/samples --bench 400 --real 192
	$(SWIFT) build -c release --product ewall-bench
	$(PY) bench/run_bench.py --ewall-bench .build/release/ewall-bench --model $(MODEL) --out bench/out
	$(PY) bench/run_bench.py --ewall-bench .build/release/ewall-bench --model $(MODEL) --images data/samples/real \
	    --out bench/out/real
	$(SWIFT) build -c release --product ewall
	$(PY) bench/real_photos_bench.py --ewall .build/release/ewall --model $(MODEL) --out bench/out
	$(PY) bench/drift_bench.py --ewall .build/release/ewall --model $(MODEL) --out bench/out
	$(SWIFT) build -c release --product ewall-bench
	$(PY) bench/precision_bench.py --ewall .build/release/ewall --ewall-bench .build/release/ewall-bench \
	    --model $(MODEL) --images data/samples/real --out bench/out
	$(PY) bench/memory_bench.py --ewall-bench .build/release/ewall-bench --model $(MODEL) --out bench/out
	$(SWIFT) build -c release --product ewall-embed
	$(PY) bench/embed_job_bench.py --ewall-embed .build/release/ewall-embed --ewall-bench .build/release/ewall-bench \
	    --model $(MODEL) --out bench/out
	$(PY) bench/queue_bench.py --ewall-bench .build/release/ewall-bench --ewall-embed .build/release/ewall-embed \
	    --model $(MODEL) --images data/samples/real --out bench/out
	$(SWIFT) build -c release --product rebuild-faiss-index
	$(PY) bench/index_bench.py --ewall-bench .build/release/ewall-bench --rebuild .build/release/rebuild-faiss-index \
	    --out bench/out
	$(PY) bench/faiss_kernel_bench.py --ewall-bench .build/release/ewall-bench --out bench/out
	$(SWIFT) build -c release --product ewall
	$(PY) bench/classify_bench.py --ewall-bench .build/release/ewall-bench --ewall .build/release/ewall --out bench/out
	# The gift detector's rule steps over 100k products on one thread, and its precision/recall on data/gift_labelled.tsv.
	.build/release/ewall-bench gifts --labelled data/gift_labelled.tsv --rules data/gift_rules.json --count 100000 \
	    | tee bench/out/gift_bench.json
	$(SWIFT) build -c release --product ewall-serve
	$(PY) bench/serve_bench.py --serve .build/release/ewall-serve --ewall-bench .build/release/ewall-bench \
	    --rebuild .build/release/rebuild-faiss-index --model $(MODEL) --out bench/out
	$(PY) bench/redis_bench.py --serve .build/release/ewall-serve --ewall-bench .build/release/ewall-bench \
	    --model $(MODEL) --out bench/out
	$(PY) bench/index_scale_bench.py --rebuild .build/release/rebuild-faiss-index --serve .build/release/ewall-serve \
	    --ewall-bench .build/release/ewall-bench --model $(MODEL) --count 100000 --kinds auto,sq8 --out bench/out
	# The live catalogue: a PostgreSQL of its own followed by ewall sync, served by ewall-serve.
	$(PY) bench/sync_bench.py --ewall .build/release/ewall --serve .build/release/ewall-serve \
	    --rebuild .build/release/rebuild-faiss-index --ewall-bench .build/release/ewall-bench --model $(MODEL) \
	    --count 20000 --seconds 15 --out bench/out
	# A new product through ewall sync --job and a --follow worker, against the sync embedding it.
	$(PY) bench/sync_job_bench.py --ewall .build/release/ewall --ewall-embed .build/release/ewall-embed \
	    --model $(MODEL) --products 20 --out bench/out

# The index kinds at 10^6 (bench/index_scale_bench.py; docs/faiss-index.md and bench/README.md quote it).
bench-1m: build model
	$(PY) bench/index_scale_bench.py --rebuild .build/release/rebuild-faiss-index --serve .build/release/ewall-serve \
	    --ewall-bench .build/release/ewall-bench --model $(MODEL) --count 1000000 --kinds auto,sq8 --out bench/out

clean:
	rm -rf .build/release .build/debug $(FIX) data/samples data/demo bench/out
