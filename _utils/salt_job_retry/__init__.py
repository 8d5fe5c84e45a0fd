"""
salt-job-retry: jobs reach every targeted minion, even one that was down.

Shared core of the ``job_retry`` runner, returner and engine. The Redis schema
and every Redis operation live in :mod:`salt_job_retry.store`.
"""

__version__ = "0.2.0"
