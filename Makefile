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
# RASA=pro make run: the same with Rasa Pro and the CALM example (examples/calm);
# needs RASA_LICENSE (docs/rasa-pro.md).
ifeq ($(RASA),pro)
run:
	@$(call FOREGROUND,scripts/run-pro.sh)
else
run: $(STAMP) $(MODEL)
	@$(call FOREGROUND,scripts/run.sh)
endif

# Two replicas as one deployment, with redis-server and the emulator; see docs/deployment.md.
run-replicas: $(STAMP) $(MODEL)
	@$(call FOREGROUND,scripts/run-replicas.sh)

# TEST_WORKERS: pytest-xdist workers per suite (most tests wait on servers and
# timers, so more workers than the 2 cores help; docs/testing.md). 0: one process.
TEST_WORKERS ?= 4

# Two suites: Rasa 3.6 in .venv, then Rasa Pro in .venv-pro (scripts/test-pro.sh
# makes it; docs/rasa-pro.md). Both run even when the first fails; either failing fails.
# PYTEST_ARGS selects within the Rasa 3.6 suite, PRO_PYTEST_ARGS within the Rasa Pro one;
# RASA=pro or RASA=3.6 runs one suite only.
# .venv-pro comes first: the Rasa 3.6 suite's browser test of rasa-webchat also runs
# against a Rasa Pro server (tests/e2e/test_browser_webchat_pro.py). Its failures
# are reported by scripts/test-pro.sh, which runs it again.
test: typecheck $(STAMP) $(MODEL)
	@status=0; \
	if [ "$(RASA)" != 3.6 ]; then scripts/venv-pro.sh || true; fi; \
	if [ "$(RASA)" != pro ]; then $(VENV)/bin/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS) || status=$$?; fi; \
	if [ "$(RASA)" != 3.6 ]; then TEST_WORKERS=$(TEST_WORKERS) scripts/test-pro.sh || status=$$?; fi; \
	exit $$status

# mypy over connectors/servicenow, at the strictness pyproject.toml states, once:
# under .venv (Python 3.10, Rasa 3.6's pins). Rasa itself has no type hints in
# either Rasa; under .venv-pro mypy also reads the hints of redis-py 8, aiohttp 3.14
# and sanic 25, which differ from 4.6's, 3.9's and 21.12's (docs/rasa-pro.md, "Tests").
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
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[rasa,test,browser]'
	@touch $@

# Rasa keeps the old file when nothing changed, hence the touch. --quiet: no
# progress bars or INFO lines; quiet_rasa.py: no third-party deprecation notices.
$(MODEL): $(STAMP) config.yml domain.yml $(wildcard data/*.yml)
	@echo "Training the demo model into $@ (about a minute)"
	@PYTHONWARNINGS=ignore::DeprecationWarning $(PY) scripts/quiet_rasa.py train --quiet \
		--fixed-model-name $(patsubst %.tar.gz,%,$(notdir $@)) --out $(dir $@) --skip-validation
	@touch $@

clean:
	rm -rf $(VENV) .venv-pro models examples/calm/models .rasa .pytest_cache .mypy_cache *.egg-info build test-output logs .rasa-token
