# Two commands on a fresh machine (Python 3.11, no GPU):
#   make report   set up .venv, then fine-tune on the sample photographs and write the parity + latency report
#   make test     set up .venv with the test extras, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup report zoo test fuzz test-gpu gpu-check timm-suite clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,serve,weights]'
	# TensorRT's type stubs, for the type check of its calls (no dependencies: they would pull TensorRT itself)
	$(PY) -m pip install --no-deps --target $(VENV)/trt-stubs tensorrt-stubs==10.13.0.35.1
	# Triton's perf_analyzer (no binary on the index: from tritonclient 2.48's wheel, with libb64 and libcudart 12);
	# where it cannot be installed, the reason goes into $(VENV)/perf-analyzer/not-installed.txt and serving measures
	# with its own closed loop (docs/serving.md); a failure that recorded no reason stops the setup
	$(PY) -m benchmarks.serve.perf_analyzer --install $(VENV)/perf-analyzer || test -s $(VENV)/perf-analyzer/not-installed.txt
	touch $@

setup: $(VENV)/.installed

# The main job for any timm model: make report MODEL=resnet18 (the default's folders are out/run and out/report, any
# other model's out/<model>/run and out/<model>/report; a run already trained there is reused, make clean retrains)
MODEL ?= alexnet_bn
run_out = $(if $(filter alexnet_bn,$(1)),$(OUT),$(OUT)/$(1))
RUN_OUT = $(call run_out,$(MODEL))
BENCHMARK_ARGS ?=
# EXPORT_ARGS given: export.onnx runs first with them (make zoo: --explain, NNCF beside ours); the benchmark reuses its
# graphs, and measures a graph that failed its gate from its own export (hence the leading - : a failed gate goes on)
EXPORT_ARGS ?=
# Models whose ImageNet weights a package ships (alexnet_zoo/packaged.py, installed by make setup) are fine-tuned
# from them, as users do (3 epochs); the others are trained from timm's random init (6 epochs)
PACKAGED_WEIGHTS = tf_efficientnet_lite0
TRAIN_START = $(if $(filter $(MODEL),$(PACKAGED_WEIGHTS)),--pretrained --epochs 3,--epochs 6)

report: $(VENV)/.installed
	$(PY) -m alexnet_zoo.samples --write-folder $(OUT)/photos
	# no colour jitter here: several sample photographs differ mainly by colour (6 epochs: 98.9 % without, 77.8 % with)
	test -f $(RUN_OUT)/run/model.safetensors || $(PY) -m alexnet_zoo.train --data $(OUT)/photos --model $(MODEL) \
		$(TRAIN_START) --lr 1e-3 --color-jitter 0 --output $(RUN_OUT)/run
	$(if $(EXPORT_ARGS),-$(PY) -m export.onnx --checkpoint $(RUN_OUT)/run --output-dir $(RUN_OUT)/graphs \
		--parity-images $(OUT)/photos/val $(EXPORT_ARGS))
	$(PY) -m benchmarks --checkpoint $(RUN_OUT)/run --data $(OUT)/photos/val --onnx-dir $(RUN_OUT)/graphs \
		--output-dir $(RUN_OUT)/report $(BENCHMARK_ARGS)

# docs/zoo.md's table ($(OUT)/zoo.md): the main job for every model of the table, then one row per model from their reports (one machine,
# one sitting); a model whose int8 fails its gate still has its report (and its row says so)
ZOO_MODELS ?= alexnet_bn alexnet alexnet_lrn mobilenetv3_small_100 efficientnet_b0 tf_efficientnet_lite0 convnext_atto resnet18 \
	vit_tiny_patch16_224
zoo: $(VENV)/.installed
	for m in $(ZOO_MODELS); do $(MAKE) --no-print-directory report MODEL=$$m \
		EXPORT_ARGS='--explain' \
		BENCHMARK_ARGS='--backends torch,onnxruntime,openvino --precisions fp32,fp16,int8 --no-progress' || true; done
	$(PY) -m benchmarks.zoo $(foreach m,$(ZOO_MODELS),$(call run_out,$(m))/report/report.json) \
		--output $(OUT)/zoo.md

# two processes, each pinned to its share of the CPUs (tests/conftest.py); one file's tests stay in one process; a
# process that dies is a failure, not replaced (pytest-xdist's loadfile scheduling can wait forever after a replacement)
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile --max-worker-restart 0

# Every reader against 1,000 random hostile inputs (hypothesis), every writer killed at 20 random moments and run
# into a full disk, a server killed under load (the tests marked faults, which make test leaves out), and the
# promises make test checks more cheaply at full strength (marked full: a re-export from a copy of the code elsewhere, the
# zoo's four models at their own resolution, benchmarked and served, the other AlexNets' exports, the AlexNet outlier's remedies); prints the
# examples per reader and the kills tried. make test runs the same properties smaller, and cheaper tests of the
# promises the faults tests check (docs/reliability.md).
KILL_SEED ?= $(shell date +%s)
fuzz: $(VENV)/.installed
	ALEXNET_ZOO_KILL_MOMENTS=20 ALEXNET_ZOO_KILL_SEED=$(KILL_SEED) $(PY) -m pytest -m 'faults or fuzz or full' \
		--hypothesis-profile=fuzz --hypothesis-show-statistics -q
	@echo "kill moments drawn with ALEXNET_ZOO_KILL_SEED=$(KILL_SEED) (make fuzz KILL_SEED=$(KILL_SEED) draws them again)"

# On a machine with an NVIDIA GPU: TensorRT too (the trt extra), then every GPU-marked test. A GPU test that skips
# fails here (ALEXNET_ZOO_REQUIRE_GPU, tests/conftest.py), so a green run means every one of them ran.
test-gpu: $(VENV)/.installed
	$(PY) -m pip install -e '.[dev,serve,weights,trt]'
	ALEXNET_ZOO_REQUIRE_GPU=1 $(PY) -m pytest -m 'gpu or tensorrt' -rs

# On a GPU machine whose python3 already has CUDA PyTorch, timm, onnx and onnxruntime (no install, no index):
# one CUDA training epoch, the PyTorch rows on CUDA with parity, the GPU tests without TensorRT; all in one folder.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m benchmarks.gpu_check --output-dir $(OUT)/gpu-check

# timm's own model test suite (from the sdist of the installed timm) on the three AlexNets; needs the package index.
# GITHUB_ACTIONS=1 skips timm's tests that download pretrained weights.
timm-suite: $(VENV)/.installed
	rm -rf $(OUT)/timm-src && mkdir -p $(OUT)/timm-src
	$(PY) -m pip download --no-deps --no-binary :all: -d $(OUT)/timm-src "timm==$$($(PY) -c 'import timm; print(timm.__version__)')"
	tar -xzf $(OUT)/timm-src/timm-*.tar.gz -C $(OUT)/timm-src
	cd $(OUT)/timm-src/timm-*/ && GITHUB_ACTIONS=1 $(abspath $(PY)) -m pytest tests/test_models.py -k alexnet -q -p no:cacheprovider

clean:
	rm -rf $(OUT)
