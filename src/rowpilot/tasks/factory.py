"""From a job's settings to its task: the one place that knows every kind."""

from __future__ import annotations

from rowpilot._config import JobConfig
from rowpilot.tasks.base import Task
from rowpilot.tasks.python import PythonTask, load_task


def build_task(config: JobConfig) -> Task:
    """The job's task, loaded and checked (nothing of the run is touched)."""
    if isinstance(config.task, Task):
        return config.task
    if config.is_local:
        return _local_task(config)
    if config.is_prompt:
        # Imported here: the SDKs cost a CLI start that runs a plain function nothing.
        from rowpilot.llm.session import PromptTask, build_prompt_spec

        return PromptTask(build_prompt_spec(config), config.task_version)
    if isinstance(config.task, str):
        return load_task(config.task, config.task_version, config=config)
    assert config.task is not None  # build_config checked that there is a task
    return PythonTask(config.task, version=config.task_version, config=config)


def _local_task(config: JobConfig) -> Task:
    from rowpilot.local_model.tasks import EmbedTask, LocalLabelTask, check_local_model

    assert config.text_column is not None  # build_config checked it
    version = config.task_version
    if config.embed:
        return EmbedTask(
            config.text_column, config.embed_batch, normalise=config.normalise, version=version
        )
    from rowpilot.local_model.model import DEFAULT_THRESHOLD

    check_local_model(config.model or "")
    threshold = config.threshold if config.threshold is not None else DEFAULT_THRESHOLD
    labels = config.labels or []
    return LocalLabelTask(
        config.text_column, labels, threshold, config.embed_batch, version=version
    )
