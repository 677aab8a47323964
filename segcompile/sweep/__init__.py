"""Zoo-wide sweeps: many models x targets x calibration methods built on Ray, resumable, one table.

``config`` reads sweep.yaml, ``jobs`` expands it into build jobs with input hashes, ``steps`` is what
one job does (build, evaluation shards, finish), ``engine`` runs the steps as Ray tasks, ``table``
writes the comparison table, ``command`` is `segcompile sweep`. Only ``engine`` imports Ray.
"""
