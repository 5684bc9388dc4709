"""The Triton (CUDA) kernels of the fused norm: their cases (tests/triton_cases.py) run in a subprocess under
``TRITON_INTERPRET=1`` on CPU tensors, which must be set before triton is imported, and on CUDA where present;
and every kernel compiles to a CUDA binary here, GPU or not (the interpreter does not compile)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("triton_cases.py")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _run_cases(interpret: bool) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", str(CASES)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


@needs_triton
def test_triton_kernels_match_the_general_path_under_the_interpreter():
    _run_cases(interpret=True)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_match_the_general_path_on_cuda():
    _run_cases(interpret=False)


def _signature(kernel, dtype: str) -> tuple[dict[str, str], dict[str, object]]:
    """Argument types and constexpr values of a launch on ``dtype`` inputs (float32 statistics)."""
    constexprs = {kernel.arg_names[i] for i in kernel.constexprs}
    values = {"BLOCK_C": 64, "BLOCK_P": 8, "BLOCK": 1024}  # flags (FIRST, LAST, HAS_*): on for fp32, off for bf16
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr"):
            signature[name] = f"*{dtype}"
        elif name.endswith("_ptr"):
            signature[name] = "*fp64" if "set_weight" in name else "*fp32"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    return signature, {name: values.get(name, dtype == "fp32") for name in constexprs}


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter does not compile")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_kernel_compiles_for_cuda(dtype):
    """PTX and a cubin for sm_90 (H100/H200) with triton's own ptxas, both branches of every flag: no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fedhn.norms import fused_triton as kernels

    for kernel in (kernels._moment_partials, kernels._gradient_partials, kernels._group_forward,
                   kernels._group_backward, kernels._normalize, kernels._grad_input):  # fmt: skip
        signature, constants = _signature(kernel, dtype)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel.fn.__name__
