"""Measuring indexes away from the model, on synthetic or recorded keys: what ``tune`` and ``bench`` run.

``datasets`` (synthetic keys and recorded memories), ``timing`` (an index's searches timed the same way
everywhere) and ``tuning`` (a parameter grid on recorded memories, its Pareto frontier and recommendation).
No model pass imports these (``scripts/import_graph.py`` ranks this package above the model and training);
the measures they share with the model's audits stay in ``sab_mips.retrieval``.
"""
