# The two commands a newcomer needs: `make demo` and `make test`. Everything they need
# (virtualenv, Debian packages, dev services) is installed/started on the way.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint services down status bench clean

demo: $(STAMP) services          ## run the whole pipeline once on the embedded defaults
	$(BIN)/sepstream demo

test: $(STAMP) services          ## the whole test suite against the real services
	$(BIN)/python -m pytest -ra

lint: $(STAMP)                   ## ruff, mypy, shell and compose checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	bash -n deploy/dev.sh deploy/python.sh .ci/run
	SEPSTREAM_PG_PASSWORD=compose-check SEPSTREAM_PG_WRITER_PASSWORD=compose-check \
	  SEPSTREAM_PG_READER_PASSWORD=compose-check docker-compose -f docker-compose.yml config -q

services: $(STAMP)               ## Kafka API (Tansu), PostgreSQL+TimescaleDB, Redis
	bash deploy/dev.sh up

down:                            ## stop the dev services
	bash deploy/dev.sh down

status:
	bash deploy/dev.sh status

bench: $(STAMP) services         ## benchmarks (not tests); figures go to docs/BENCHMARKS.md
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.e2e --compare --latency --rss
	$(BIN)/python -m bench.damping
	$(BIN)/python -m bench.indicators

$(STAMP):
	test -x $(BIN)/python || $$(bash deploy/python.sh) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

clean: down
	rm -rf $(VENV) .dev test-artifacts
