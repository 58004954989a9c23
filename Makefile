# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBS   := var/.debian-packages

.PHONY: run test unit integration screenshots deps venv kafka-jars schemas clean

run: deps venv kafka-jars
	$(BIN)/poststelle up

test: deps venv kafka-jars
	$(BIN)/python -m pytest -q -ra

# no servers needed: tests that start NSD, slapd, clamd, Dovecot or Kafka (and the integration suite) are left out
unit: venv
	$(BIN)/python -m pytest -q -m "not (integration or kafka or slapd or nsd or clamd or dovecot)"

integration: deps venv kafka-jars
	$(BIN)/python -m pytest -q -m integration

# the portal's pages as docs/operations.md shows them, taken by the browser test (make test keeps them in var/)
screenshots: deps venv kafka-jars
	POSTSTELLE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -m integration tests/integration/test_portal.py

deps: $(DEBS)
$(DEBS): deploy/local/install-debian-packages.sh
	bash deploy/local/install-debian-packages.sh
	@mkdir -p var && touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

kafka-jars: venv deps
	$(BIN)/python -c "from pipeline.cli.components import load_config; from pipeline.localstack.kafka import ensure_kafka_jars, jars_dir; s = load_config('deploy/local/poststelle.toml'); print('kafka jars:', ensure_kafka_jars(jars_dir(s), s.local.kafka_version))"

schemas: venv
	$(BIN)/poststelle schemas export

clean:
	rm -rf var/run var/log
