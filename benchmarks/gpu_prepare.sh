#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what benchmarks/gpu_check.sh needs on the GPU machine, which has
# no network: the wheels of the packages its image lacks (.whl/) and Fashion-MNIST (.gpu_data/).
# Both folders are git-ignored (.git/info/exclude), rebuilt from scratch on each run (.whl/ is
# emptied first: keep other wheels elsewhere) and travel with `run`'s carry. Run from anywhere:
#     bash benchmarks/gpu_prepare.sh
# The GPU machine runs Python 3.12 (CPython, x86-64) with torch 2.11, transformers 5.17.0,
# huggingface_hub 1.33.0, accelerate 1.15.0, numpy 2.5.2 and, among others, pyarrow, pandas, scipy,
# fsspec, xxhash, aiohttp, requests (see the device notes' package list); it lacks datasets, POT,
# evaluate, dill and multiprocess. Each wheel's Requires-Dist is checked against that list below.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
LIMIT_MIB=${GPU_PREPARE_LIMIT_MIB:-60}   # `run` refuses a working tree + carry over 64 MiB

# The versions of our .venv (pip freeze), except where noted.
#   fsspec: already on the GPU machine, but datasets 5.2.0 requires fsspec<=2026.9.0 and the
#   image's version is not listed, so ours is carried (~0.2 MiB) and shadows it; datasets' other
#   pins hold there: huggingface-hub>=1.31.0,<3.0 (1.33.0 there), dill<0.4.2 and
#   multiprocess<0.70.20 (carried).
WHEELS=(
    datasets==5.2.0
    POT==0.9.7.post1
    evaluate==0.4.6
    dill==0.4.1
    multiprocess==0.70.19
    fsspec==2026.9.0
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

rm -rf .whl
mkdir -p .whl
args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp)
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
"$PY" -m pip download -q "${args[@]}" -d .whl "${WHEELS[@]}"

# POT's wheel ships ot/bsp/bsp_wrap*.so with its debug information: 174 MB unpacked, 31 MiB of the
# 33 MiB wheel. `import ot` loads it, so it cannot be left out; `strip --strip-debug` takes it to
# ~1 MB (code and symbols unchanged). The wheel is rewritten with a matching RECORD.
command -v strip >/dev/null || { echo "gpu_prepare: 'strip' (binutils) is needed to shrink POT's wheel" >&2; exit 1; }
"$PY" - .whl/pot-*.whl <<'EOF'
import base64, hashlib, os, subprocess, sys, tempfile, zipfile

path = sys.argv[1]
with zipfile.ZipFile(path) as z:
    infos = z.infolist()
    data = {i.filename: z.read(i) for i in infos}
record = next(n for n in data if n.endswith(".dist-info/RECORD"))
before = os.path.getsize(path)
with tempfile.TemporaryDirectory() as tmp:
    for name in data:
        if name.startswith("ot/") and name.endswith(".so"):
            f = os.path.join(tmp, "x.so")
            with open(f, "wb") as fh:
                fh.write(data[name])
            subprocess.run(["strip", "--strip-debug", f], check=True)
            with open(f, "rb") as fh:
                data[name] = fh.read()
lines = []
for name in data:
    if name == record:
        lines.append(f"{name},,")
        continue
    digest = base64.urlsafe_b64encode(hashlib.sha256(data[name]).digest()).rstrip(b"=").decode()
    lines.append(f"{name},sha256={digest},{len(data[name])}")
data[record] = ("\n".join(lines) + "\n").encode()
tmp_path = path + ".tmp"
with zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for i in infos:
        z.writestr(i, data[i.filename], compress_type=zipfile.ZIP_DEFLATED)
os.replace(tmp_path, path)
print(f"stripped debug info from POT's extensions: {before / 2**20:.1f} MiB -> {os.path.getsize(path) / 2**20:.1f} MiB")
EOF

# Every wheel's Requires-Dist (for CPython 3.12 on Linux, no extras) must be met by another wheel
# here or by a package the GPU machine has; versions are checked where the device notes give one.
"$PY" - .whl/*.whl <<'EOF'
import re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DEVICE_VERSIONS = {  # the GPU machine's pip list, as the device notes give it
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "tokenizers": "0.23.2", "torch": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0",
}
DEVICE_PRESENT = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()  # the device notes' package list (image 'cuda', 2026-11-17)
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

wheels = {}
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = canonicalize_name(re.search(r"^Name: (.+)$", meta, re.M).group(1).strip())
    version = re.search(r"^Version: (.+)$", meta, re.M).group(1).strip()
    reqs = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", meta, re.M)]
    wheels[name] = (version, reqs, path)

problems = 0
for name, (version, reqs, path) in sorted(wheels.items()):
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = canonicalize_name(req.name)
        if dep in wheels:
            have, where = wheels[dep][0], "carried"
        elif dep in DEVICE_VERSIONS:
            have, where = DEVICE_VERSIONS[dep], "on the GPU machine"
        elif dep in DEVICE_PRESENT:
            print(f"  {name} {version}: {req} -- on the GPU machine (version not listed)")
            continue
        else:
            print(f"  {name} {version}: {req} -- MISSING on the GPU machine and not carried")
            problems += 1
            continue
        ok = req.specifier.contains(Version(have), prereleases=True)
        print(f"  {name} {version}: {req} -- {dep} {have} {where}{'' if ok else '  <-- CONFLICT'}")
        problems += not ok
if problems:
    sys.exit(f"gpu_prepare: {problems} unmet requirement(s) above")
print(f"requirements: every Requires-Dist of the {len(wheels)} wheels is met")
EOF

# Fashion-MNIST: the GPU machine cannot apt-get; jtln_hf/data/fashion_mnist.py reads JTLN_FASHION_MNIST_DIR.
src=/usr/share/datasets/fashion-mnist
mkdir -p .gpu_data/fashion-mnist
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [[ -f $src/$f ]] || { echo "gpu_prepare: $src/$f is missing (make data installs it)" >&2; exit 1; }
    cp -p "$src/$f" .gpu_data/fashion-mnist/
done

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for line in /.whl/ /.gpu_data/; do
    grep -qxF "$line" "$exclude" || echo "$line" >>"$exclude"
done

# What `run` sends: tracked and untracked-not-ignored files, plus the carried folders.
"$PY" - "$LIMIT_MIB" <<'EOF'
import os, subprocess, sys

limit = float(sys.argv[1]) * 2**20
names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(n) for n in names if n and os.path.isfile(n) and not os.path.islink(n))
rows = [("working tree (git ls-files, tracked + untracked)", tree)]
for folder in (".whl", ".gpu_data"):
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            p = os.path.join(root, f)
            rows.append((p, os.path.getsize(p)))
for name, size in rows:
    print(f"{size / 2**20:9.2f} MiB  {name}")
total = sum(size for _, size in rows)
print(f"{total / 2**20:9.2f} MiB  total (limit {limit / 2**20:.0f} MiB)")
if total > limit:
    sys.exit("gpu_prepare: too large for one `run` call")
EOF
echo "ready: carry [\".whl\", \".gpu_data\"] and run bash benchmarks/gpu_check.sh"
