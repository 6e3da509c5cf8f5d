"""The import graph follows the layers (scripts/import_graph.py), and the check itself can fail."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_the_project_imports_follow_the_layers_without_cycles():
    assert import_graph.check(ROOT) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_wrong_way_import_and_a_cycle_are_reported(tmp_path):
    root = _write(tmp_path, {
        "sab_mips/__init__.py": "",
        "sab_mips/model/__init__.py": "",
        "sab_mips/model/sab.py": "from ..training import loop\n",  # model -> training: upwards
        "sab_mips/training/__init__.py": "",
        "sab_mips/training/loop.py": "def f():\n    from sab_mips.training import other\n",  # lazy import counts
        "sab_mips/training/other.py": "from . import loop\nimport benchmarks.step\n",
        "indexes/__init__.py": "import sab_mips.model\n",
        "benchmarks/step.py": "",
    })
    problems = "\n".join(import_graph.check(root))
    assert "sab_mips.model.sab imports sab_mips.training.loop: layer sab_mips.model (rank 4)" in problems
    assert "nothing may import benchmarks/" in problems
    assert "indexes imports sab_mips.model: indexes/ imports nothing" in problems
    assert "import cycle: sab_mips.training.loop <-> sab_mips.training.other" in problems
