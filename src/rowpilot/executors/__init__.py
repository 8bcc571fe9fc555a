"""Executors: where a task's calls run (``_base.Executor``); ``LocalExecutor`` is this
process's event loop and thread pool."""
