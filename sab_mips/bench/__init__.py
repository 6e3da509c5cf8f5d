"""Benchmark harnesses run by ``sab-mips bench NAME`` (``step``, ``retrieval``, ``heavy``, ``long``).

Each module has ``main(argv)``; it times a baseline in the same process, prints a table, writes JSON and
never asserts. Every JSON record starts with its provenance (``common.provenance``: the command, the git
commit, the machine's core count, torch and the date), so that a table quoted from it can be checked. The
measured tables and the commands that produced them are in ``benchmarks/README.md``.
"""
BENCHMARKS = ("step", "retrieval", "heavy", "long")
