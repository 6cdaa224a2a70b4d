"""The GPU-readiness script, run on the CPU with tiny ViTs for a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_lora_check.py"


def test_gpu_check_runs_tiny_on_cpu(labeled_images):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", str(labeled_images), "--steps", "3", "--device", "cpu",
         "--tiny", "--max-images", "30", "--batch-size", "10"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    assert report["steps"] == 3
    assert report["timed_steps"] == 2
    assert report["adapted_modules"] == {"dinov2": 8, "gastronet": 8}
    assert report["images_per_second"] > 0
    assert report["host_peak_rss_mib"] > 0
