# The two commands a person needs: `make run` and `make test`.
# Both set up everything from nothing (apt packages, .venv) and are idempotent.
SHELL := /bin/bash
PY := .venv/bin/python
APT_PACKAGES := espeak-ng libespeak-ng1 festival festvox-te-nsk sox redis-server
# the tests drive a real headless Chromium (WebRTC) inside a loopback network namespace (iproute2, util-linux);
# torch.compile (inductor) needs a C++ compiler (g++)
APT_TEST_PACKAGES := chromium chromium-driver fonts-lohit-telu iproute2 util-linux g++
# Triton Inference Server (tests/test_triton.py, `maata triton serve`): the nvidia-pytriton wheel bundles
# tritonserver 2.51 with its python backend; tritonclient talks to it. Installed with --no-deps: their declared pins
# (numpy<2, protobuf<7, ml-dtypes<=0.5.4) would downgrade what the rest of the project needs, while the parts used
# here (the server binary and python backend, tritonclient.grpc.aio, its model_config_pb2) work with this venv's
# versions (tests/test_triton.py); python-rapidjson is tritonclient.grpc's one missing dependency.
TRITON_PIP := nvidia-pytriton==0.7.0 tritonclient==2.73.0 python-rapidjson==1.25
CHECKPOINT ?= checkpoints/codec_v2.safetensors

.PHONY: setup run test apt apt-test venv protos k8s-tools clean

apt: .setup-stamp-apt
.setup-stamp-apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES); \
	fi
	@touch $@

apt-test: .setup-stamp-apt-test
.setup-stamp-apt-test: .setup-stamp-apt
	@if ! dpkg -s $(APT_TEST_PACKAGES) >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_TEST_PACKAGES); \
	fi
	@touch $@

venv: .setup-stamp-venv
.setup-stamp-venv: pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,data]'
	$(PY) -m pip install -q --no-deps $(TRITON_PIP)
	@touch $@

# the services' gRPC code (maata_protos/v1) is build output of protos/: remade when a .proto or the generator changes
protos: maata_protos/v1/__init__.py
maata_protos/v1/__init__.py: $(wildcard protos/maata/v1/*.proto) services/protogen.py .setup-stamp-venv
	$(PY) -m services.protogen

setup: apt venv protos

# real helm + kubectl for the deployment tests (tests/test_deploy_*.py), cached under .tools/
k8s-tools: .tools/k8s-tools-2.2.2
.tools/k8s-tools-2.2.2: tools/get_k8s_tools.sh .setup-stamp-venv
	tools/get_k8s_tools.sh $(PY)

run: setup
	.venv/bin/maata codec demo --checkpoint $(CHECKPOINT) --out out/demo
	.venv/bin/maata serve

test: setup apt-test k8s-tools
	$(PY) -m pytest -q -ra

clean:
	rm -rf .venv .setup-stamp-* out runs .tools maata_protos/v1
