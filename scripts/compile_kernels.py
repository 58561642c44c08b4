"""Compile the CPU scan kernels into numba's disk cache for float32 and float64, both at once.

``make venv`` runs it after installing: numba compiles each dtype's kernels once (about 25 s
each here) and every later process loads them from ``neurossm_app/model/__pycache__``; without
it, each test worker and each CLI call that starts before the cache is written compiles its own.
"""

import subprocess
import sys

CODE = "import torch; from neurossm_app.model.scan import compile_cpu_kernels; compile_cpu_kernels(torch.{})"

processes = [subprocess.Popen([sys.executable, "-c", CODE.format(d)]) for d in ("float32", "float64")]
sys.exit(max(p.wait() for p in processes))
