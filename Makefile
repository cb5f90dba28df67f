# Two entry points: `make run` and `make test`. Both set everything up on a fresh
# Debian machine (as root): system packages, a virtualenv, the project.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8733
# System packages: libpcap for capture; tcpdump/tshark are the oracles the tests and
# benchmarks compare against; iproute2 for network namespaces; chromium for browser tests;
# libbpf1 loads the committed eBPF object (attribution); libndpi4.2 labels connections
# (loaded with ctypes, no headers needed), ndpiReader (libndpi-bin) is the labels oracle;
# libsqlite3-dev: the bulk writer's packed rows through SQLite's C API (store/_packedrows.c);
# acl (setfacl): a test that an ACL cannot make a program root runs writable by others.
RUN_DEBS  := libpcap-dev gcc python3-dev libbpf1 libndpi4.2 libsqlite3-dev
# Only `make bpf` (rebuilding the committed eBPF object) needs these; nothing at run time.
BPF_DEBS  := clang llvm bpftool libbpf-dev
BPF_DIR   := apppaccap/attribution/bpf
TEST_DEBS := $(RUN_DEBS) tcpdump tshark iproute2 iputils-ping curl procps chromium fonts-liberation libndpi-bin acl \
             clickhouse-server

.PHONY: run test setup setup-test debs-run debs-test clean docs bpf

run: setup
	$(VENV)/bin/apppaccap serve --host $(HOST) --port $(PORT) --data-dir ./data --export-dir ./export

# Two workers: the live and browser tests in order on one (tests/conftest.py groups them),
# everything that needs no interface on the other.
test: setup-test
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

setup: debs-run $(VENV)/.installed
setup-test: debs-test $(VENV)/.installed-test

debs-run:
	@sh installer/debs.sh $(RUN_DEBS)
debs-test:
	@sh installer/debs.sh $(TEST_DEBS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py apppaccap/ingest/_pcapscan.c \
                    apppaccap/store/_packedrows.c apppaccap/capture/_frames.c \
                    apppaccap/capture/_record.c \
                    apppaccap/usage/_usagecount.c
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

docs: $(VENV)/.installed
	$(PY) -m apppaccap.docs > docs/API.md

clean:
	rm -rf $(VENV) build *.egg-info

# The eBPF attribution object (CO-RE) is committed: pip install needs no compiler.
# Rebuild it after editing appattr.bpf.c (needs $(BPF_DEBS) and /sys/kernel/btf/vmlinux);
# vmlinux.h is generated from the running kernel's BTF and not committed.
bpf:
	@sh installer/debs.sh $(BPF_DEBS)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $(BPF_DIR)/vmlinux.h
	clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$(BPF_DIR) \
	    -c $(BPF_DIR)/appattr.bpf.c -o $(BPF_DIR)/appattr.bpf.o
	llvm-strip -g $(BPF_DIR)/appattr.bpf.o
