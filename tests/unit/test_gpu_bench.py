"""``bench/gpu.py --smoke``: the GPU bench's code on a CPU with tiny sizes (compiled rows trace with
dynamo but generate no code), so a broken bench shows up in CI rather than on a lent GPU."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


def test_gpu_bench_smoke_runs_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench           # dataclasses look their module up there
    spec.loader.exec_module(bench)
    bench.main(["--smoke", "--sections", "cifar,digits,sampling,syncs"])
    out = capsys.readouterr().out
    for row in ("trainer compiled bf16+CL", "bare compiled fp32+TF32", "digits job 8 steps", "fast_sample 3 NFE b4"):
        assert row in out
    assert "| workload | variant | img/s |" in out
