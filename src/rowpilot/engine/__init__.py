"""The engine: from a job's settings to a finished run.

The job (``job``), the scheduler and what it uses: admission slots, the probe, crash
recovery, ``--workers auto`` sizing, retries, logs and progress. Internal: the public
surface is ``rowpilot`` and ``rowpilot.errors``.
"""
