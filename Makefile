# Two commands: `make run` (the demo bot against the local ServiceNow
# emulator, or a real instance) and `make test`. Both set up .venv first.

VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  := models/demo.tar.gz
STAMP  := $(VENV)/.installed

# Rasa phones home unless told not to; CI has no internet.
export RASA_TELEMETRY_ENABLED := false
export SQLALCHEMY_SILENCE_UBER_WARNING := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run run-replicas test typecheck bench soak install model clean

# In a terminal, the script gets the terminal to itself (bash -m runs it as a
# job of its own): Ctrl-C then reaches the script, which stops everything and
# exits 0, and not make, which would report an error whatever the script did.
FOREGROUND = if [ -t 0 ]; then exec bash -mc '"$$0" "$$@"; exit $$?' $(1); else exec $(1); fi

# SERVICENOW_FRONTEND=socketio make run: the socket.io flavour, with the stock
# rasa-webchat widget (fetched from the npm registry) on http://127.0.0.1:8080/.
run: $(STAMP) $(MODEL)
	@$(call FOREGROUND,scripts/run.sh)

# Two replicas as one deployment, with redis-server and the emulator; see docs/deployment.md.
run-replicas: $(STAMP) $(MODEL)
	@$(call FOREGROUND,scripts/run-replicas.sh)

test: typecheck $(STAMP) $(MODEL)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# mypy over connectors/servicenow, at the strictness pyproject.toml states.
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Measure against the local emulator; see docs/benchmarks.md. BENCH_ARGS=--quick for a short run,
# BENCH_ARGS="--baseline <commit>" to measure that commit side by side (set up under build/baseline/).
bench: $(STAMP) $(MODEL)
	$(PY) -m bench $(BENCH_ARGS)

# Faults under load, checked from outside: three replicas per API, redis-server, the emulator, a few
# hundred users; see docs/reliability.md, "Soak". SOAK_ARGS="--duration 120 --seed 7 --users 60 --faults kill9,redis".
soak: $(STAMP) $(MODEL)
	$(PY) -m soak $(SOAK_ARGS)

install: $(STAMP)

model: $(MODEL)

$(STAMP): pyproject.toml constraints.txt
	@python=$$(scripts/find-python.sh) || exit 1; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then \
		echo "Creating $(VENV) with $$python"; rm -rf $(VENV); "$$python" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

# Rasa keeps the old file when nothing changed, hence the touch. --quiet: no
# progress bars or INFO lines; quiet_rasa.py: no third-party deprecation notices.
$(MODEL): $(STAMP) config.yml domain.yml $(wildcard data/*.yml)
	@echo "Training the demo model into $@ (about a minute)"
	@PYTHONWARNINGS=ignore::DeprecationWarning $(PY) scripts/quiet_rasa.py train --quiet \
		--fixed-model-name $(patsubst %.tar.gz,%,$(notdir $@)) --out $(dir $@) --skip-validation
	@touch $@

clean:
	rm -rf $(VENV) models .rasa .pytest_cache .mypy_cache *.egg-info build test-output
