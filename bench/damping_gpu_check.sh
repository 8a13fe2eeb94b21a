#!/usr/bin/env bash
# One prepared device run for the fused damping kernel (issue 20): environment, the CuPy
# parity tests, then the benchmark; logs and the JSON document go to $OUT (default
# /tmp/damping-gpu).  Uses the machine's own python3 and cupy (no project install needed:
# kernels/ and the tests import only numpy, cupy and pytest).
#   bash bench/damping_gpu_check.sh
set -u
OUT=${OUT:-/tmp/damping-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem \
        --format=csv
    $PY -c 'import sys, numpy, cupy; print(sys.version.split()[0], "numpy", numpy.__version__,
"cupy", cupy.__version__, "runtime", cupy.cuda.runtime.runtimeGetVersion())'
    nproc
} 2>&1 | tee "$OUT/env.txt"
# --noconftest: tests/conftest.py brings up the dev services, which these tests do not use.
timeout 200 $PY -m pytest --noconftest -p no:cacheprovider -q -m gpu \
    tests/unit/test_damping_cupy.py 2>&1 | tee "$OUT/pytest.txt"
timeout 240 $PY -m bench.damping --sizes 1e5,1e6,4e6 --backends cupy \
    --dtypes float64,float32 --repeat 5 --probe --parity-rows 1e5 \
    --variants H1MB2G1,H1MB2G2,H0MB2G1,H1MB3G2 --chunk-mib 32,64,128,256 \
    --json-out "$OUT/damping.json" 2>&1 | tee "$OUT/bench.txt"
# Hardware counters for one float64 launch over 1e6 windows (where ncu can read them).
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ -z "${SKIP_NCU:-}" ]; then
    timeout 120 "$NCU" --clock-control none -k regex:damp_windows --launch-count 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
        --section WarpStateStats --section LaunchStats \
        $PY -c 'import numpy as np, cupy
from bench.damping import make_closes
from kernels import damping_gpu
from kernels.damping import _library_unit
c = cupy.asarray(make_closes(1_000_000, 64, 0))
lib = np.random.default_rng(1).normal(size=(64, 63))
launch, _ = damping_gpu.prepared_launch(c, _library_unit(lib, 62), np.float64)
launch()
cupy.cuda.Device().synchronize()' 2>&1 | tee "$OUT/ncu.txt"
fi
