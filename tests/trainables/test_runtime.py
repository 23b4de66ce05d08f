"""Process settings: subnormal floats flushed in every intra-op thread."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# in a child process: the setting is process-wide and must not leak into the other tests
_CHILD = """
import json, torch
from trainables.runtime import denormals_flushed, flush_denormals
torch.set_num_threads(2)
before = denormals_flushed()  # also starts the OpenMP workers before the setting, the hard case
applied = flush_denormals()
x = torch.full((1 << 18,), 1e-40)
smallest_normal = torch.full((1 << 18,), 1.5e-38)
print(json.dumps({"before": before, "applied": applied, "nonzero": int((x * 3.0).count_nonzero()),
                  "sum_of_tiny": float((x * 1e-3).sum()),
                  "normals_kept": bool(((smallest_normal * 1.0) == smallest_normal).all())}))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ/DAZ is x86")
def test_flush_denormals_reaches_every_intra_op_thread():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] is False  # subnormals survive by default: the check can fail
    assert result["applied"] is True
    assert result["nonzero"] == 0
    assert result["sum_of_tiny"] == 0.0
    assert result["normals_kept"] is True

