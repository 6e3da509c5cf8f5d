"""The compiled SAB recurrence: C++ forward and backward of a chunk of steps (``recurrence.cpp``), built at
first use (``build``), as one autograd node (``function``). ``sab_mips.model.compiled_path`` decides when a
layer's pass runs on it; the Python path stays the reference twin and the fallback."""
from .build import build_failure, compiled_module
from .function import ChunkInputs, CompiledRecurrence, RecurrenceSpec

__all__ = ["ChunkInputs", "CompiledRecurrence", "RecurrenceSpec", "build_failure", "compiled_module"]
