# Hark: every set-up step lives here, so a fresh clone needs nothing installed by hand.
#   make run    create .venv, install the server and clients (with the microphone), espeak-ng for the Quick
#               start's speech, serve the bundled model on 127.0.0.1:50051
#   make test   create .venv, install everything the suite needs, run the whole suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

.PHONY: help
help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[mic]'
	@touch $@

# openwakeword ships the pretrained backbone's ONNX files (training/hark_training/backbone.py); --no-deps: its deps pull in tflite.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[train,dev,mic]'
	$(BIN)/python -m pip install --quiet --no-deps openwakeword==0.5.1
	@touch $@ $(SERVE_STAMP)

.PHONY: system-deps
system-deps: run-deps  ## Debian packages the data pipeline and tests use (espeak-ng, prometheus + promtool, chromium + chromedriver, PortAudio)
	@command -v espeak-ng >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing espeak-ng, prometheus, chromium and chromium-driver (Debian)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends espeak-ng prometheus chromium chromium-driver >/dev/null; }

# tritonclient[grpc] pins protobuf < 7 and Hark's stubs need 7: the OIP tests run it from a venv of its own.
TRITON_VENV := tests/.venv-triton
$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet 'tritonclient[grpc,http]' numpy
	@touch $@

.PHONY: triton-client
triton-client: $(TRITON_VENV)/.installed  ## The venv with NVIDIA's tritonclient that the OIP tests drive Hark with

# What the Quick start uses besides the server: espeak-ng to speak a test word, PortAudio for `hark listen`.
.PHONY: run-deps
run-deps:  ## Debian packages the Quick start uses (espeak-ng, PortAudio for the microphone)
	@command -v espeak-ng >/dev/null && /sbin/ldconfig -p | grep -q libportaudio.so.2 || { \
		echo "installing espeak-ng and libportaudio2 (Debian)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends espeak-ng libportaudio2 >/dev/null; }

# MBROLA's voices are in Debian's contrib and non-free components (bookworm); MBROLA us1-3 and en1, RHVoice slt and
# alan, flite and festival are never installed: they are reserved for independent evaluation.
VOICE_PACKAGES := mbrola $(addprefix mbrola-,af1 nl2 fr1 fr4 de1 de2 de3 de4 de5 de6 gr2 hu1 pl1 ro1 sw1 sw2) \
	rhvoice rhvoice-english libttspico-utils
VOICES_SOURCES := /etc/apt/sources.list.d/hark-voices.sources

# GnuSpeech (npm @echogarden/gnuspeech-wasm, GPL-3.0) runs through node from training/gnuspeech/speak.mjs; only the
# voice-data build needs it (its unit tests skip without it). Debian's Node.js if there is none.
GNUSPEECH_STAMP := training/gnuspeech/node_modules/.installed
$(GNUSPEECH_STAMP): training/gnuspeech/package.json training/gnuspeech/package-lock.json
	@command -v npm >/dev/null || { \
		echo "installing nodejs and npm (Debian)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	cd training/gnuspeech && npm ci --no-audit --no-fund --silent
	@touch $@

.PHONY: system-deps-voices
system-deps-voices: system-deps $(GNUSPEECH_STAMP)  ## Speech engines for hark data build --engines: MBROLA, RHVoice, SVOX Pico (Debian), GnuSpeech (npm)
	@command -v mbrola >/dev/null && command -v RHVoice-test >/dev/null && command -v pico2wave >/dev/null \
		&& [ -e /usr/share/mbrola/sw2 ] || { \
		echo "installing MBROLA, RHVoice and SVOX Pico (Debian contrib/non-free)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		[ -e $(VOICES_SOURCES) ] || printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
			'Suites: bookworm' 'Components: contrib non-free' \
			'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | $$SUDO tee $(VOICES_SOURCES) >/dev/null; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends $(VOICE_PACKAGES) >/dev/null; }

# The engines' Python side (Piper, DECtalk, Kokoro: the voices extra), for make model and for the engine tests.
VOICES_STAMP := $(VENV)/.installed-voices
$(VOICES_STAMP): $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[voices]'
	@touch $@

.PHONY: install
install: $(SERVE_STAMP)  ## Create .venv with the server and client

.PHONY: dev
dev: $(DEV_STAMP) system-deps  ## Create .venv with training, test and lint tools

.PHONY: run
run: $(SERVE_STAMP) run-deps  ## Serve the bundled model on 127.0.0.1:50051 (and install what the Quick start uses)
	$(BIN)/hark serve

# The Node.js client's packages and buf (tests/integration/test_other_languages.py); Debian's Node.js if there is none.
NODE_STAMP := clients/node/node_modules/.installed
$(NODE_STAMP): clients/node/package.json clients/node/package-lock.json
	@command -v npm >/dev/null || { \
		echo "installing nodejs and npm (Debian)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	cd clients/node && npm ci --no-audit --no-fund --silent
	@touch $@

.PHONY: test
test: $(DEV_STAMP) system-deps system-deps-voices $(VOICES_STAMP) triton-client $(NODE_STAMP)  ## Run the whole test suite (the speech engines too: the held-out engines' end-to-end tests need them)
	$(BIN)/python -m pytest -q

.PHONY: lint
lint: $(DEV_STAMP)  ## ruff and mypy
	$(BIN)/ruff check service training tests proto examples
	$(BIN)/ruff format --check service training tests proto examples
	$(BIN)/mypy service/hark training/hark_training

.PHONY: bench
bench: $(DEV_STAMP) system-deps  ## Streams per server core vs raw onnxruntime and a naive server (minutes; not in make test)
	$(BIN)/python loadtest/bench.py --workers-scaling $(BENCH_ARGS)

.PHONY: bench-quick
bench-quick: $(DEV_STAMP) system-deps  ## The benchmark's quick mode (under 2 minutes)
	$(BIN)/python loadtest/bench.py --quick $(BENCH_ARGS)

.PHONY: profile
profile: $(DEV_STAMP) system-deps  ## py-spy profile of the server under 90 streams of the bundled model (top costs per chunk)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python loadtest/profile.py --no-gate

SOAK_SECONDS ?= 600
FUZZ_SECONDS ?= 600
MEMORY_MINUTES ?= 10

.PHONY: soak
soak: $(DEV_STAMP)  ## Soak a real server: load, disconnects, hostile clients, reloads (10 min; SOAK_SECONDS=60)
	$(BIN)/python -m loadtest.soak --duration $(SOAK_SECONDS)

.PHONY: fuzz
fuzz: $(DEV_STAMP)  ## Fuzz request handling with atheris (10 min; FUZZ_SECONDS=60); crashes in loadtest/.cache/fuzz/
	mkdir -p loadtest/.cache/fuzz
	$(BIN)/python -m tests.fuzz.fuzz_requests -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=loadtest/.cache/fuzz/

.PHONY: memory
memory: $(DEV_STAMP) system-deps  ## Server RSS over time under 40 real-time streams (10 min; MEMORY_MINUTES=2)
	$(BIN)/python loadtest/memory.py --minutes $(MEMORY_MINUTES)

.PHONY: bench-peers
bench-peers:  ## Venvs for the peers make bench adds: MLServer (pins protobuf 6), openWakeWord (no tflite)
	$(PYTHON) -m venv loadtest/.venv-mlserver
	loadtest/.venv-mlserver/bin/pip install --quiet mlserver onnxruntime
	$(PYTHON) -m venv loadtest/.venv-oww
	loadtest/.venv-oww/bin/pip install --quiet --no-deps openwakeword==0.5.1
	loadtest/.venv-oww/bin/pip install --quiet onnxruntime scipy scikit-learn tqdm numpy

.PHONY: proto
proto: $(DEV_STAMP)  ## Regenerate the stubs in service/hark/v1 from proto/
	$(BIN)/python proto/generate.py

# The bundled keyword model (keywords/8, keywords/7's weights with 7 hops of smoothing): espeak-ng words plus MBROLA, Piper, DECtalk, Kokoro, RHVoice and SVOX Pico speech (RHVoice
# held out whole for test, Pico for validation), running speech (up to three keyword-free windows from each training
# sentence) and channel variety, the training engines but espeak-ng saying their share three times (KEYWORDS_BUILD_ARGS);
# three seeds of one recipe published
# as one ensemble (the mean of their probabilities); a model card, the detection settings chosen on an hour each of
# Pico's and GnuSpeech's keyword-free speech (TUNE_DATA, rendered with another seed than any data set it is measured
# on; $(KEYWORDS_BUDGET) false alarms per hour, thresholds from 0.6, $(KEYWORDS_SMOOTHING) hops smoothed) and the per-engine report. MODEL_STORE=runs/store
# publishes a candidate instead; compare it with `HARK_E2E_STORE=runs/store pytest tests/integration/test_end_to_end*.py`.
KEYWORDS_ENGINES := espeak-ng,mbrola,rhvoice,pico,piper,dectalk,kokoro
ENGINES_ARGS := --engines $(KEYWORDS_ENGINES) --val-engines pico --test-engines rhvoice
KEYWORDS_BUILD_ARGS := $(ENGINES_ARGS) --free-windows 3 --renders 3
MODEL_STORE ?= model_store
KEYWORDS_DATA ?= data/keywords
KEYWORDS_SEEDS := 0 1 2
KEYWORDS_BUDGET ?= 10
KEYWORDS_SMOOTHING ?= 7
TUNE_DATA ?= data/keywords-tune

.PHONY: model
model: $(VOICES_STAMP) system-deps-voices  ## Rebuild the many-engines data set, train three seeds and publish their ensemble as keywords (about 90 min on 2 idle cores)
	nice -n 10 $(BIN)/hark data build --out data/keywords $(KEYWORDS_BUILD_ARGS)
	rm -rf $(TUNE_DATA)
	nice -n 10 $(BIN)/hark data build --out $(TUNE_DATA) --engines pico,gnuspeech --val-engines pico,gnuspeech --test-engines rhvoice \
		--stream-minutes 60 --words-per-engine 60 --sentences-per-engine 50 --per-class 20 --seed 1 --no-progress
	for S in $(KEYWORDS_SEEDS); do \
		nice -n 10 $(BIN)/hark train --config training/configs/keywords_voices_renders3.toml --data data/keywords/manifest.csv --seed $$S \
			--out runs/keywords_voices-s$$S || exit 1; \
	done
	$(BIN)/hark export $(foreach S,$(KEYWORDS_SEEDS),runs/keywords_voices-s$(S)) --store $(MODEL_STORE) --name keywords
	$(call measure,$(call newest,keywords),training/results/keywords-engines.json,$(TUNE_DATA),$(KEYWORDS_BUDGET),$(KEYWORDS_SMOOTHING))

# $(call newest,MODEL): the folder of the newest version of MODEL in $(MODEL_STORE).
newest = $(MODEL_STORE)/$(1)/$$(ls $(MODEL_STORE)/$(1) | sort -n | tail -1)

# $(call measure,VERSION,REPORT[,TUNE_DATA,BUDGET,HOPS]): a version trained on $(KEYWORDS_DATA) (make model's data set) gets its
# model card, per-class thresholds for BUDGET (default 2) false alarms an hour of TUNE_DATA's validation keyword-free
# speech (default $(KEYWORDS_DATA): Pico's ten minutes; from 0.6, HOPS (default 5) hops smoothed) and its per-engine report.
measure = $(BIN)/hark engines card $(1) --data $(KEYWORDS_DATA) >/dev/null && \
	$(BIN)/hark engines thresholds $(1) --data $(or $(3),$(KEYWORDS_DATA)) --budget $(or $(4),2) --floor 0.6 --smoothing-windows $(or $(5),5) && \
	$(BIN)/hark engines eval $(1) --data $(KEYWORDS_DATA) --out $(2)

# The streaming keyword model (model_store/keywords-streaming): keywords/3's data, a causal TCN exported in streaming
# form (each hop's frames plus its state), its detection settings chosen the same way. Needs make model's data.
.PHONY: model-streaming
model-streaming: $(DEV_STAMP)  ## Train and publish the streaming keyword model keywords-streaming on make model's data (about 30 min)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_streaming_voices.toml --data $(KEYWORDS_DATA)/manifest.csv --out runs/keywords_streaming
	$(BIN)/hark export runs/keywords_streaming --store $(MODEL_STORE) --name keywords-streaming
	$(call measure,$(call newest,keywords-streaming),training/results/keywords-streaming-engines.json)

# What the licences cost and what each engine adds, measured with the leave-one-engine-out recipe
# (training/configs/keywords_loeo.toml: the streaming architecture at 64 channels, 5 min a run; its all-engines
# baseline is training/results/loeo-none-heldout.json): that recipe without the non-commercial training material
# (MBROLA, DECtalk) into runs/store-commercial, and without each training engine in turn, each then measured on
# everything that engine said (training/results/loeo-ENGINE.json). Both need make model's data.
LOEO_ENGINES := mbrola dectalk piper kokoro

.PHONY: model-commercial
model-commercial: $(DEV_STAMP)  ## The leave-one-engine-out recipe on commercially usable material only, measured per engine (about 10 min)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_loeo.toml --data $(KEYWORDS_DATA)/manifest.csv --commercial-only --out runs/keywords_commercial
	rm -rf runs/store-commercial && $(BIN)/hark export runs/keywords_commercial --store runs/store-commercial --name keywords
	$(call measure,runs/store-commercial/keywords/1,training/results/keywords-commercial-engines.json)

.PHONY: model-loeo
model-loeo: $(DEV_STAMP)  ## Leave-one-engine-out: one run per training engine, each measured on the engine it left out (about 40 min)
	for E in $(LOEO_ENGINES); do \
		nice -n 10 $(BIN)/hark train --config training/configs/keywords_loeo.toml --data $(KEYWORDS_DATA)/manifest.csv --exclude-engines $$E --out runs/loeo-$$E --quiet && \
		rm -rf runs/store-loeo-$$E && $(BIN)/hark export runs/loeo-$$E --store runs/store-loeo-$$E --name keywords --quiet && \
		$(call measure,runs/store-loeo-$$E/keywords/1,training/results/loeo-$$E-heldout.json) && \
		$(BIN)/hark engines eval runs/store-loeo-$$E/keywords/1 --data $(KEYWORDS_DATA) --splits train --engines $$E --out training/results/loeo-$$E.json || exit 1; \
	done

# What channel variety buys (speaker size, rooms, microphones, telephone band; noise stays): the 5-minute recipe, three
# seeds, on make model's data set and on a build without that variety in its training split (--dry-training:
# validation and test render exactly as in make model's), each measured per engine. Needs make model's data.
.PHONY: model-channel
model-channel: $(VOICES_STAMP) system-deps-voices  ## What channel variety buys: the 5-minute recipe, three seeds, with and without it in training (about 50 min)
	nice -n 10 $(BIN)/hark data build --out data/keywords-dry $(KEYWORDS_BUILD_ARGS) --dry-training --no-progress
	for S in 0 1 2; do for D in keywords keywords-dry; do \
		nice -n 10 $(BIN)/hark train --config training/configs/keywords_loeo.toml --data data/$$D/manifest.csv --seed $$S --out runs/channel-$$D-s$$S --quiet && \
		rm -rf runs/store-channel-$$D-s$$S && $(BIN)/hark export runs/channel-$$D-s$$S --store runs/store-channel-$$D-s$$S --name keywords --quiet && \
		$(call measure,runs/store-channel-$$D-s$$S/keywords/1,training/results/channel-$$D-s$$S.json) || exit 1; \
	done; done

# The real-speech teacher and the distilled student: the oww_transfer recipe (openWakeWord's backbone, pretrained on
# recorded human speech) fine-tuned on make model's data, then keywords/3's recipe with 0.3 of each target taken from
# the teacher's scores. The teacher holds the backbone's weights (CC BY-NC-SA 4.0), so it goes to
# runs/store-teacher only (serve it with hark serve --model-store runs/store-teacher); the student to runs/store-distilled. Both
# measured per engine. Needs make model's data.
.PHONY: model-distilled
model-distilled: $(DEV_STAMP)  ## The fine-tuned real-speech teacher and keywords/3's recipe distilled from it, measured per engine (about 70 min)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_teacher.toml --data $(KEYWORDS_DATA)/manifest.csv --out runs/keywords_teacher
	rm -rf runs/store-teacher && $(BIN)/hark export runs/keywords_teacher --store runs/store-teacher --name keywords
	$(call measure,runs/store-teacher/keywords/1,training/results/keywords-teacher-engines.json)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_distilled.toml --data $(KEYWORDS_DATA)/manifest.csv --out runs/keywords_distilled
	rm -rf runs/store-distilled && $(BIN)/hark export runs/keywords_distilled --store runs/store-distilled --name keywords
	$(call measure,runs/store-distilled/keywords/1,training/results/keywords-distilled-engines.json)

# What running speech and distillation each buy, on the leave-one-engine-out recipe (5 min a run; its run on every
# engine is training/results/loeo-none-heldout.json): without the running-speech clips (--exclude-kinds
# sentence,free), and distilled from make model-distilled's teacher (run that first).
.PHONY: model-steps
model-steps: $(DEV_STAMP)  ## The 5-minute recipe without running speech, and distilled from the teacher, measured per engine (about 20 min)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_loeo.toml --data $(KEYWORDS_DATA)/manifest.csv --exclude-kinds sentence,free --out runs/loeo-words --quiet
	rm -rf runs/store-loeo-words && $(BIN)/hark export runs/loeo-words --store runs/store-loeo-words --name keywords --quiet
	$(call measure,runs/store-loeo-words/keywords/1,training/results/loeo-words-heldout.json)
	nice -n 10 $(BIN)/hark train --config training/configs/keywords_loeo_distilled.toml --data $(KEYWORDS_DATA)/manifest.csv --out runs/loeo-distilled --quiet
	rm -rf runs/store-loeo-distilled && $(BIN)/hark export runs/loeo-distilled --store runs/store-loeo-distilled --name keywords --quiet
	$(call measure,runs/store-loeo-distilled/keywords/1,training/results/loeo-distilled-heldout.json)

# English with other languages' sounds (espeak-ng-l2): make model's data set plus that engine's clips (a copy, hard-linked
# where it can be), and one seed of keywords/7's recipe with and without them, each with the budget thresholds and
# measured on make eval-long's hour, then compared on operating curves. Needs make model's and make eval-long's data.
L2_DATA ?= data/keywords-l2

.PHONY: model-accents
model-accents: $(VOICES_STAMP) system-deps-voices  ## English with other languages' sounds: one seed with and one without, on eval-long's hour and operating curves (about 70 min)
	rm -rf $(L2_DATA) && (cp -al $(KEYWORDS_DATA) $(L2_DATA) 2>/dev/null || cp -a $(KEYWORDS_DATA) $(L2_DATA))
	nice -n 10 $(BIN)/hark data voices --out $(L2_DATA) --engines $(KEYWORDS_ENGINES),espeak-ng-l2 --only espeak-ng-l2 \
		--val-engines pico --test-engines rhvoice --free-windows 3 --renders 3 --no-progress
	for R in without:keywords_voices_renders3:$(KEYWORDS_DATA) with:keywords_voices_l2:$(L2_DATA); do \
		set -- $$(echo $$R | tr : ' '); \
		nice -n 10 $(BIN)/hark train --config training/configs/$$2.toml --data $$3/manifest.csv --seed 0 --out runs/accents-$$1 --quiet && \
		rm -rf runs/store-accents-$$1 && $(BIN)/hark export runs/accents-$$1 --store runs/store-accents-$$1 --name keywords --quiet && \
		$(BIN)/hark engines card runs/store-accents-$$1/keywords/1 --data $$3 >/dev/null && \
		$(BIN)/hark engines thresholds runs/store-accents-$$1/keywords/1 --data $(TUNE_DATA) --budget $(KEYWORDS_BUDGET) --floor 0.6 --smoothing-windows 5 && \
		$(BIN)/hark engines eval runs/store-accents-$$1/keywords/1 --data $(LONG_DATA) --out training/results/accents-$$1-seed0-long-streams.json || exit 1; \
	done
	$(BIN)/hark engines curve runs/store-accents-without/keywords/1 runs/store-accents-with/keywords/1 --data $(LONG_DATA) --tune-data $(TUNE_DATA) \
		--out training/results/curve-accents.json --plot training/results/curve-accents.png

# The served keywords version measured on an hour of each held-out engine's streams (40 minutes of it keyword-free)
# instead of make model's 15: ten minutes hold only a handful of false alarms. Its own data set, of the held-out
# engines only (Pico and GnuSpeech as validation, RHVoice as test, espeak-ng's test voices); nothing is tuned.
LONG_DATA ?= data/keywords-long

.PHONY: eval-long
eval-long: $(VOICES_STAMP) system-deps-voices  ## The served keywords version on an hour of each held-out engine's streams, as served (about 10 min)
	rm -rf $(LONG_DATA)
	nice -n 10 $(BIN)/hark data build --out $(LONG_DATA) --engines espeak-ng,pico,rhvoice,gnuspeech --val-engines pico,gnuspeech \
		--test-engines rhvoice --stream-minutes 60 --words-per-engine 60 --sentences-per-engine 50 --no-progress
	$(BIN)/hark engines eval $(call newest,keywords) --data $(LONG_DATA) \
		--out training/results/keywords-long-streams.json

# A second hour of the held-out engines' streams (Pico and GnuSpeech as validation, RHVoice as test; a seed no other
# data set here uses; espeak-ng left out, whose test voices another seed would draw anew), for comparisons that rest
# on a handful of false alarms: `hark engines curve ... --data $(LONG_DATA) --data $(LONG_B_DATA)` pools the two hours.
LONG_B_DATA ?= data/keywords-long-b

.PHONY: data-second-hour
data-second-hour: $(VOICES_STAMP) system-deps-voices  ## A second hour of Pico's, GnuSpeech's and RHVoice's streams, to pool with make eval-long's (about 5 min)
	rm -rf $(LONG_B_DATA)
	nice -n 10 $(BIN)/hark data build --out $(LONG_B_DATA) --engines pico,rhvoice,gnuspeech --val-engines pico,gnuspeech \
		--test-engines rhvoice --stream-minutes 60 --words-per-engine 60 --sentences-per-engine 50 --per-class 20 --seed 7 --no-progress

.PHONY: model-espeak
model-espeak: $(DEV_STAMP) system-deps  ## The first bundled model's recipe (keywords/1: espeak-ng words only, about 25 min) into runs/store-espeak
	$(BIN)/hark data build --out data/keywords-espeak
	$(BIN)/hark train --config training/configs/keywords.toml --data data/keywords-espeak/manifest.csv --out runs/keywords
	$(BIN)/hark export runs/keywords --store runs/store-espeak --name keywords

.PHONY: clean
clean:  ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis clients/node/node_modules training/gnuspeech/node_modules

.PHONY: percussion
percussion: $(DEV_STAMP)  ## Rebuild the bundled sound-event model (model_store/percussion) from Debian's drum samples (about 30 min)
	@test -d /usr/share/hydrogen/data/drumkits && test -d /usr/share/lmms/samples/drums && test -d /usr/share/sonic-pi/samples || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			hydrogen-drumkits lmms-common sonic-pi-samples >/dev/null; }
	$(BIN)/hark data drums --out data/drums
	nice -n 15 $(BIN)/hark train --config training/configs/percussion.toml --quiet
	$(BIN)/hark export runs/percussion --store model_store --name percussion --quiet
	$(BIN)/hark eval percussion --store model_store --events data/drums/scenes/val --tune-detection
	$(BIN)/hark eval percussion --store model_store --quiet
	$(BIN)/hark eval percussion --store model_store --events data/drums/scenes/test
