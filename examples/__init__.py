"""Example jobs, with tests written with `weir.testing.JobTester`.

Installed with Weir as the package ``weir.examples``, so ``weir demo`` runs
``sensor_stats.py`` from a wheel as well as from a checkout.
"""
