"""``--compile``: the DeepSpeed engine's own ``engine.compile`` (torch.compile with the accelerator's backend).

``engine.compile`` compiles the module in place (``nn.Module.compile``), so parameter names, state dicts,
checkpoints and exported models are those of the eager module (no ``_orig_mod.`` prefix). Compilation itself is
lazy: it happens in the first forward/backward of each new case (training; validation in eval mode without
gradients; a smaller last validation batch), which is why the first step and the first validation take longer.

Decisions:

* backend: the accelerator's (``inductor`` on CPU and CUDA), as DeepSpeed chooses it.
* shapes: torch's automatic dynamic shapes (``dynamic=None``): the first shape is compiled static, the first
  different batch size recompiles once with a symbolic batch dimension that serves all later sizes, so a smaller
  last validation batch costs one recompile, never one per size.
* random numbers: inductor's ``fallback_random``, so compiled dropout and s1 sampling draw exactly what eager
  mode draws (a compiled run reproduces the eager run's losses and resumes as it does).
"""

from __future__ import annotations

import shutil

import torch

from ds_kronos.errors import UserError


def compile_problem(backend: str) -> str | None:
    """Why this platform cannot compile with ``backend``, or None."""
    from deepspeed.runtime.compiler import is_compile_supported

    if not is_compile_supported() or not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported by torch {torch.__version__} on this Python"
    if backend == "inductor" and not torch.cuda.is_available():
        from torch._inductor import config

        compilers = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        if not any(c and shutil.which(c) for c in compilers if c) and not shutil.which("g++"):
            return "inductor on CPU needs a C++ compiler (g++ or clang++; set CXX) and none was found"
    return None


def compile_backend() -> str:
    """The accelerator's backend, checked, with the settings above; a one-line UserError if it cannot compile."""
    from deepspeed.accelerator import get_accelerator

    backend = get_accelerator().get_compile_backend()
    problem = compile_problem(backend)
    if problem:
        raise UserError(f"--compile: {problem}; run without --compile")
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return backend


def compile_engine(engine) -> str:
    """Compile ``engine`` (before its first step) with DeepSpeed's ``engine.compile``; returns the backend used."""
    backend = compile_backend()
    engine.compile(backend=backend, compile_kwargs={"dynamic": None})
    if not engine.is_compiled:
        raise UserError("--compile: DeepSpeed's engine.compile left the engine uncompiled")
    return backend


def compile_module(module: torch.nn.Module) -> str:
    """The same compilation for a plain module (what ``engine.compile`` does to the engine's module); for the
    torch DDP baseline of benchmarks/train_throughput.py."""
    backend = compile_backend()
    module.compile(backend=backend, dynamic=None)
    return backend


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far, by torch.compile's own accounting (forward graphs and
    backward graphs; backward graphs are compiled at their first backward)."""
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(times) for name, times in compilation_time_metrics.items()
               if name == "_compile.compile_inner" or "backward" in name.lower())
