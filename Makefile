# Quick start: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test test-large lint clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The tests whose numbers depend on the CPU's kernels run twice: as the
# machine has them (oneDNN where TensorFlow uses it) and on Eigen's kernels
# (TF_ENABLE_ONEDNN_OPTS=0), the path of CPUs that oneDNN does not cover.
KERNEL_TESTS := tests/test_losses.py tests/test_model.py tests/test_transfer.py \
    tests/test_distribute.py tests/test_export.py
test: $(STAMP)
	$(PY) -m pytest -q -m "not large"
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -q -m "not large" $(KERNEL_TESTS)

test-large: $(STAMP)
	$(PY) -m pytest -q -m large

# The whole pipeline on X-Domain-synth in the decisive benchmark's regime
# (3,400 items, 400 with street photos; 10% of the street labels), each
# step a command users run too.
# Every step skips work already done, so an interrupted demo resumes.
# Each step's wall time goes to $(TIMES) ($(call lap,NAME) after a step; t
# is set at the start of the step's line) and is printed as a table at the
# end.
DET_STEPS ?= 700
TIMES := $(DEMO)/timings.tsv
lap = printf '%s\t%s\n' '$(1)' $$(($$(date +%s) - t)) >> $(TIMES)
demo: $(STAMP)
	@mkdir -p $(DEMO) && printf 'step\tseconds\n' > $(TIMES)
	@echo "== 1/7 render X-Domain-synth and convert it to TFRecords"
	t=$$(date +%s); { test -f $(DEMO)/data/manifest.jsonl || \
	    $(PY) datasets/make_synthetic.py \
	    --out $(DEMO)/data --items 3400 --street_items 400 \
	    --street_per_item 3 --image_size 128 --missing_rate 0.1 --seed 0 \
	    --workers 2 --quiet \
	    --contact_sheet $(DEMO)/contact_sheet.png; } && $(call lap,render)
	t=$$(date +%s); { test -f $(DEMO)/shards/summary.json || \
	    $(PY) datasets/convert_manifest.py \
	    --manifest $(DEMO)/data/manifest.jsonl --out $(DEMO)/shards; } && \
	    $(call lap,convert)
	@echo "== 2/7 train the garment detector (Model Garden Faster R-CNN)"
	t=$$(date +%s); { test -f $(DEMO)/det_records/detection_records.json || \
	    $(PY) datasets/make_detection_records.py --domain street \
	    --manifest $(DEMO)/data/manifest.jsonl --out $(DEMO)/det_records; } \
	    && $(call lap,detector records)
	t=$$(date +%s); test -d $(DEMO)/detector/export || { \
	    $(PY) -m mtct_tf.detect train --preset demo \
	        --records $(DEMO)/det_records --model_dir $(DEMO)/detector \
	        --steps $(DET_STEPS) --no_eval && \
	    $(call lap,detector train) && t=$$(date +%s) && \
	    $(PY) -m mtct_tf.detect evaluate --records $(DEMO)/det_records \
	        --model_dir $(DEMO)/detector --eval_split test && \
	    $(call lap,detector test) && t=$$(date +%s) && \
	    $(PY) -m mtct_tf.detect export --model_dir $(DEMO)/detector && \
	    $(call lap,detector export); }
	@echo "== 3/7 crop the street photos with the detector"
	t=$$(date +%s); { test -f $(DEMO)/crops/summary.json || \
	    $(PY) datasets/crop_with_detector.py \
	    --detector $(DEMO)/detector/export --source $(DEMO)/shards \
	    --out $(DEMO)/crops; } && $(call lap,crop)
	@echo "== 4/7 stage 1 (shop) and stage 2 (street, t-STE) on detector crops"
	t=$$(date +%s); $(PY) -m mtct_tf.train --experiment demo \
	    --model_dir $(DEMO)/mtct \
	    --stage all --override data.shards_dir=$(DEMO)/shards \
	    --override data.street_shards_dir=$(DEMO)/crops && \
	    $(call lap,shop + street stages)
	@echo "== FTT: the same shop stage, street fine-tuning without the t-STE"
	t=$$(date +%s); { test -d $(DEMO)/ftt/shop || { mkdir -p $(DEMO)/ftt && \
	    cp -r $(DEMO)/mtct/shop $(DEMO)/ftt/shop; }; } && \
	    $(PY) -m mtct_tf.train --experiment demo --model_dir $(DEMO)/ftt \
	    --stage all --override method=ftt \
	    --override street.cross_domain.kind=none \
	    --override data.shards_dir=$(DEMO)/shards \
	    --override data.street_shards_dir=$(DEMO)/crops && \
	    $(call lap,FTT street stage)
	@echo "== 5/7 shop test: the shop stage on its own domain"
	t=$$(date +%s); $(PY) -m mtct_tf.evaluate --model_dir $(DEMO)/mtct \
	    --stage shop --domain shop && $(call lap,shop test)
	@echo "== 6/7 street test (10% of the street labels, every layer fine-tuned):"
	@echo "   No-Adapt (shop model) vs FTT vs MTCT"
	t=$$(date +%s); $(PY) -m mtct_tf.evaluate --domain street \
	    --row No-Adapt=$(DEMO)/mtct@shop --row FTT=$(DEMO)/ftt \
	    --row MTCT=$(DEMO)/mtct && $(call lap,street test)
	@echo "== street test of the MTCT model: annotated boxes vs detector crops vs whole photos"
	t=$$(date +%s); $(PY) -m mtct_tf.evaluate --model_dir $(DEMO)/mtct \
	    --domain street --box_source gt --box_source detector \
	    --box_source none && $(call lap,box sources)
	@echo "== 7/7 export for TF Serving and Keras, predict a street photo"
	t=$$(date +%s); $(PY) export/export_saved_model.py --model $(DEMO)/mtct \
	    --export_dir $(DEMO)/serving --keras_out $(DEMO)/mtct.keras \
	    --with_detector $(DEMO)/detector/export && $(call lap,export)
	@echo "== the first street test photo, beside its annotation"
	t=$$(date +%s); $(PY) -m mtct_tf.predict \
	    --manifest $(DEMO)/data/manifest.jsonl --pick test/street \
	    --model $(DEMO)/serving/mtct --top_k 3 --out $(DEMO)/annotated.png \
	    && $(call lap,predict)
	@echo "== what the decisive benchmark found over 3 seeds (docs/RESULTS.md;"
	@echo "   the demo above is one seed):"
	@$(PY) -m mtct_tf.benchmark ablation --show
	@echo "demo done: see $(DEMO)/ (eval/, annotated.png, serving/)"
	@echo "wall time per step ($(TIMES); done earlier: 0 s or no line):"
	@awk -F '\t' 'NR > 1 { printf "  %-22s %5d s\n", $$1, $$2; n += $$2 } \
	    END { printf "  %-22s %5d s (%d min %02d s)\n", "total", n, \
	    n / 60, n % 60 }' $(TIMES)

clean:
	rm -rf runs .pytest_cache
