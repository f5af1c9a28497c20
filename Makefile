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
FIX   := .fixtures

# Debian packages: native libraries, SQLite, the PostgreSQL server the tests start on
# loopback, the Python reference, and the photo sources for the samples (desktop wallpapers
# and scikit-image's data, real photographs).
APT_PACKAGES := libtorch-dev libfaiss-dev libopenblas-dev libturbojpeg0-dev libpng-dev libwebp-dev \
                libsqlite3-dev postgresql sqlite3 wrk curl iproute2 libhiredis-dev redis-server \
                python3-torch python3-torchvision python3-pil python3-numpy python3-skimage python3-requests python3-faiss \
                mate-backgrounds plasma-workspace-wallpapers
DEPS_STAMP := .build/.deps-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-8)

.PHONY: help deps build model samples fixtures test demo bench clean serve gpu-bundle

help:
	@echo "make demo     install deps, build (release), make the model, run ewall-embed over the sample photos served"
	@echo "              from a loopback HTTP server into sqlite:data/ewall.sqlite, twice (the rerun skips all)"
	@echo "make test     install deps, make model and fixtures, run all tests"
	@echo "make bench    benchmarks vs the Python reference (bench/out/): model, decode, real photos, the job, the shared-job"
	@echo "              queue (PostgreSQL), FAISS index, classifier,"
	@echo "              ewall-serve under wrk load, the Redis cache warm vs cold, FAISS kernels vs Python faiss"
	@echo "make serve    after make demo: ewall-serve on http://127.0.0.1:8080 over the demo store and index"
	@echo "make deps     apt-get install the Debian packages listed in APT_PACKAGES (root or sudo)"
	@echo "make model    export $(MODEL): pretrained if the weights download, else random-init (loud warning)"
	@echo "make build    swift build -c release (LIBTORCH=/path: against another libtorch, e.g. a CUDA one)"
	@echo "make gpu-bundle  the decoder archive bench/gpu/run.sh links on a GPU machine (see README \"GPU\")"
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

# LIBTORCH=/path builds the shim against another libtorch than Debian's CPU-only one: a
# pytorch.org libtorch folder, or a pip wheel's torch/ folder (include/ and lib/), e.g. a CUDA
# build for --device cuda. Untested here (no CUDA libtorch on these machines); see README "GPU".
ifneq ($(LIBTORCH),)
TORCH_ABI   := $(shell $(PY) -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)
TORCH_FLAGS := -Xcxx -I$(LIBTORCH)/include -Xcxx -I$(LIBTORCH)/include/torch/csrc/api/include \
               -Xcxx -D_GLIBCXX_USE_CXX11_ABI=$(TORCH_ABI) -Xlinker -L$(LIBTORCH)/lib -Xlinker -rpath \
               -Xlinker $(LIBTORCH)/lib $(if $(wildcard $(LIBTORCH)/lib/libtorch_cuda.so),-Xlinker --no-as-needed \
               -Xlinker -ltorch_cuda -Xlinker --as-needed)
endif

build: deps
	$(SWIFT) build -c release --product ewall $(TORCH_FLAGS)
	$(SWIFT) build -c release --product ewall-embed $(TORCH_FLAGS)
	$(SWIFT) build -c release --product rebuild-faiss-index $(TORCH_FLAGS)
	$(SWIFT) build -c release --product ewall-serve $(TORCH_FLAGS)

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

# --no-parallel: the suites each drive libtorch, subprocesses and servers on a 2-core machine;
# run side by side they starve each other's timers and turn timing margins into flaky failures.
test: deps model fixtures
	$(SWIFT) build --build-tests
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

bench: build model
	$(PY) data/make_samples.py --out data/samples --bench 400 --real 192
	$(SWIFT) build -c release --product ewall-bench
	$(PY) bench/run_bench.py --ewall-bench .build/release/ewall-bench --model $(MODEL) --out bench/out
	$(PY) bench/run_bench.py --ewall-bench .build/release/ewall-bench --model $(MODEL) --images data/samples/real \
	    --out bench/out/real
	$(SWIFT) build -c release --product ewall
	$(PY) bench/real_photos_bench.py --ewall .build/release/ewall --model $(MODEL) --out bench/out
	$(PY) bench/drift_bench.py --ewall .build/release/ewall --model $(MODEL) --out bench/out
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
	$(SWIFT) build -c release --product ewall-serve
	$(PY) bench/serve_bench.py --serve .build/release/ewall-serve --ewall-bench .build/release/ewall-bench \
	    --rebuild .build/release/rebuild-faiss-index --model $(MODEL) --out bench/out
	$(PY) bench/redis_bench.py --serve .build/release/ewall-serve --ewall-bench .build/release/ewall-bench \
	    --model $(MODEL) --out bench/out

clean:
	rm -rf .build/release .build/debug $(FIX) data/samples data/demo bench/out
