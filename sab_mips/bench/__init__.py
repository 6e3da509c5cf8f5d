"""Benchmark harnesses run by ``sab-mips bench NAME`` (``step``, ``retrieval``, ``heavy``, ``long``).

Each module has ``main(argv)``; it times a baseline in the same process, prints a table, writes JSON and
never asserts. The measured tables and the commands that produced them are in ``benchmarks/README.md``.
"""
BENCHMARKS = ("step", "retrieval", "heavy", "long")
