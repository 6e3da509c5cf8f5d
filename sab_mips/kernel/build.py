"""Building the compiled SAB recurrence (``recurrence.cpp``) at first use, and why it may be unavailable.

``torch.utils.cpp_extension.load`` compiles the file with the machine's C++ compiler and ``ninja`` the first
time a process asks for it (about a minute on 2 cores) and caches the result: the build directory is
torch's extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), keyed by the
source, so later processes load it in a second and a changed source is rebuilt. Nothing is compiled at
install time: a machine without a compiler still runs every model, on the Python path.
"""
from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("recurrence.cpp")
NAME = "sab_mips_recurrence"

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def compiled_module() -> ModuleType | None:
    """The compiled extension (built now if it is not cached yet), or None when it cannot be built
    (``build_failure`` says why)."""
    global _module, _failure
    with _lock:
        if _module is None and _failure is None:
            _failure = missing_tool()
            if _failure is None:
                try:
                    from torch.utils.cpp_extension import load

                    _module = load(name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp-simd"], verbose=False)
                except Exception as error:  # a compiler error, a missing header: the Python path remains
                    _failure = f"the C++ build failed: {first_error(str(error)) or type(error).__name__}"
        return _module


def build_failure() -> str | None:
    """Why the extension is unavailable (after ``compiled_module`` returned None), else None."""
    compiled_module()
    return _failure


def missing_tool() -> str | None:
    """What the build needs and this machine lacks (a C++ compiler, ninja), or None."""
    if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
        return "ninja is not installed (pip install ninja)"
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    return None


def first_error(message: str) -> str:
    """The first line of a build log that names an error (the compiler's), else its first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [""])[0][:300]
