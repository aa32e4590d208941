"""The GPU host benchmark still runs end to end (``--quick``, ``workers.gpus=[0]`` on a CPU
machine), so it is ready for the GPU machine and cannot rot unnoticed.

It starts real daemons, local workers and an external one; the test also checks that none
of them outlives the benchmark (each carries a tag in its environment).
"""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchrun import leftovers, run_quick

LAYOUTS = ("today", "new", "cpu")
ROWS = (
    "job wall time, new default vs today's layout",
    "job wall time, new default vs CPU only",
    "GPU busy, new default's search stage",
    "OpenCL compiler lines in the daemon's stderr, all layouts",
)


def test_quick_gpu_benchmark_runs_every_layout_and_cleans_up(tmp_path: Path) -> None:
    run = run_quick("gpu.py", tmp_path, timeout=300)
    out, lines = run.stdout, run.lines
    assert "machine : nproc=" in out and "GPUs [0] (given)" in out
    top = next(i for i, line in enumerate(lines) if line.startswith("layout "))
    for layout, line in zip(LAYOUTS, lines[top + 2 : top + 5], strict=True):
        assert line.split()[0] == layout, f"layout {layout} missing:\n{out}"
        assert " s " in line and "threads" in line
    # The new default runs GPU and CPU workers side by side; CPU only, CPU workers alone.
    new = lines[top + 3]
    assert "GPU x 1" in new and "CPU x" in new, new
    assert "GPU x" not in lines[top + 4] and "CPU x" in lines[top + 4], lines[top + 4]
    table = run.table()
    for row in ROWS:
        assert sum(line.startswith(row) for line in table) == 1, f"row {row!r} missing:\n{out}"
    opencl = next(line for line in table if line.startswith(ROWS[3]))
    # The guard kept every compiler line out (none is printed without OpenCL, either).
    assert opencl.split()[-5] == "0" and opencl.endswith("PASS"), opencl
    for layout in LAYOUTS:
        assert any(line.startswith(f"note: {layout}: search stage") for line in lines), out
    # No GPU here: the "GPU" workers' XGBoost trials fell back to the CPU, and said so.
    assert "trained on the CPU" in out
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
    assert leftovers(run) == [], "daemon or worker processes outlived the benchmark"
