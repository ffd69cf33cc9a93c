# One-command set-up. `make demo` runs the whole system locally; `make test` runs every test.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

WEB_STAMP := web/node_modules/.installed
CLIENT_ZIP := lambdas/api/static/client-zip.js
VIEWER := web/build/viewer/index.html

.PHONY: demo test bench synth clean web viewer

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Browser code from npm, pinned by version and integrity (web/package-lock.json).
$(WEB_STAMP): web/package.json web/package-lock.json
	npm ci --prefix web --ignore-scripts --no-audit --no-fund
	touch $@

$(CLIENT_ZIP): $(WEB_STAMP)
	mkdir -p $(@D)
	cp web/node_modules/client-zip/index.js $@

# OHIF's prebuilt npm package (tarball pinned by version and integrity in web/viewer.json)
# with our configuration and data-source shim.
$(VIEWER): web/viewer.json web/app-config.js web/dicomshare-viewer.js web/dicomshare-viewer.css \
		web/build_viewer.py web/inline_styles.mjs
	$(PYTHON) web/build_viewer.py

viewer: $(VIEWER)

web: $(CLIENT_ZIP) $(VIEWER)

demo: $(STAMP) web
	$(BIN)/dicomshare local demo

test: $(STAMP) web
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

synth: $(STAMP) web
	$(BIN)/python app.py

clean:
	rm -rf $(VENV) cdk.out .dicomshare test-artifacts web/node_modules web/build web/.cache lambdas/api/static
