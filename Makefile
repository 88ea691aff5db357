# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: demo test lint format lock clean profile

$(BIN)/snakemake: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

demo: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)
	@echo "Validation summary (results/demo/evaluation/summary.csv):"
	@$(BIN)/python -c "import pandas as p; print(p.read_csv('results/demo/evaluation/summary.csv').to_string(index=False, float_format='%.4f'))"
	@echo "Stage 1 alone vs the cascade, same cases (results/demo/evaluation/stage1_vs_cascade.csv):"
	@$(BIN)/python -c "import pandas as p; c = p.read_csv('results/demo/evaluation/stage1_vs_cascade.csv'); print(c.to_string(index=False, float_format='%.4f')); t = c.set_index('metric').loc['tumor_dice']; print(f'The cascade gains {t.gain_mean:+.4f} +- {t.gain_std:.4f} tumor Dice over stage 1 (mean +- std of {int(t.n)} per-case differences).')"
	@echo "The trained models, exported: results/demo/model.zip. To predict your own scans with them:"
	@echo "  $(BIN)/kitscascade-predict -m results/demo/model.zip -i /path/to/scans -o predictions/"

test: $(BIN)/snakemake
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/snakemake
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

format: $(BIN)/snakemake
	$(BIN)/snakefmt .

lock: $(BIN)/snakemake
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock.new
	echo 'torch==2.13.0' >> requirements.lock.new
	sort -f requirements.lock.new | sed '1i # Pinned versions the Makefile installs with (pip -c). Regenerate with: make lock' > requirements.lock
	rm requirements.lock.new

# `snakemake --profile slurm` finds the cluster profile under its short name
profile:
	mkdir -p "$${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake"
	ln -sfn "$(CURDIR)/profiles/slurm" "$${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake/slurm"

clean:
	rm -rf results logs .snakemake $(filter-out benchmarks/%.py,$(wildcard benchmarks/*))
