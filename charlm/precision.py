"""The arithmetic of a training step: float32, or bf16 autocast where the hardware has it.

Under bf16 autocast the matrix products (and on a CPU the LSTM's fused recurrence) run in
bfloat16, while the weights, the optimizer's state and the checkpoints stay float32, and
validation, `eval`, `sample` and `inspect-neurons` run in float32, so that figures compare
across machines. `--precision auto` takes bf16 where it is native and known to pay: on a
CUDA GPU that has it, and on a CPU with AVX512-BF16 or AMX for an LSTM or GRU of at least
AUTO_BF16_CPU_WIDTH units. On such a CPU a training step of 384 or 512 units ran 1.1x to
1.7x faster in bf16, but one of 256 units (the default for short runs) ran slower than in
float32, and a vanilla RNN's gain is not measured (bench/README.md). A CPU without native
bf16 would emulate it many times slower, or fail inside oneDNN, so asking for it there is
an error rather than a silent slowdown.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .config import PRECISIONS
from .errors import UsageError

AUTO_BF16_CPU_CELLS = ("lstm", "gru")  # where bf16 autocast was measured faster on a CPU (bench/README.md)
AUTO_BF16_CPU_WIDTH = 384  # ... from this many units; at 256 float32 was the faster


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16), as torch sees it."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
            return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
        except Exception:  # an older or unusual build: ask the older private checks below
            pass
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        function = getattr(torch.cpu, check, None)
        try:
            if function is not None and function():
                return True
        except Exception:
            pass
    return False


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (shown in its summary)."""

    name: str  # "fp32" or "bf16"
    why: str

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The context a training step's forward pass runs in; reusable, step after step."""
        if self.name == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def describe(self) -> str:
        kind = "bf16 autocast, float32 weights" if self.name == "bf16" else "float32"
        return f"{kind}; {self.why}"


def resolve_precision(requested: str, device: torch.device, cell: str, hidden: int | None = None) -> Precision:
    """The precision a run on `device` of a `cell` model `hidden` units wide (None: not known yet)
    uses when `requested` is auto, fp32 or bf16.

    Raises UsageError for bf16 where the device cannot compute in it natively."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return Precision("fp32", "asked for")
    native, lacking = _native_bf16(device)
    if requested == "bf16":
        if not native:
            raise UsageError(f"--precision bf16: {lacking}; use --precision fp32 or auto")
        return Precision("bf16", "asked for")
    if not native:
        return Precision("fp32", f"auto: {lacking}")
    if device.type == "cpu" and cell not in AUTO_BF16_CPU_CELLS:
        article = "an" if cell == "rnn" else "a"
        return Precision("fp32", f"auto: bf16 is not measured faster on a CPU for {article} {cell.upper()}")
    if device.type == "cpu" and hidden is not None and hidden < AUTO_BF16_CPU_WIDTH:
        return Precision("fp32", f"auto: float32 is the faster on a CPU below {AUTO_BF16_CPU_WIDTH} units")
    where = "this GPU" if device.type == "cuda" else "this CPU"
    return Precision("bf16", f"auto: native bf16 on {where}")


def _native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` has native bf16, else the reason it lacks it)."""
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(), "this GPU has no native bf16")
    if device.type == "cpu":
        return (cpu_has_native_bf16(), "this CPU has no native bf16 (AVX512-BF16 or AMX)")
    return (False, f"charlm trains in bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, not on {device.type}")
