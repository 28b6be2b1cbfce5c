"""lm-evaluation-harness both ways: its tasks on slmlab's model, and slmlab's logic suite as an lm-eval task.

Defined here:

* :func:`run_harness` — lm-eval tasks run in process on the model slmlab loads (a spec, plus a run
  or PEFT adapter checked against it by :func:`~slmlab.evaluate.suites.resolve_adapter`), wrapped in
  lm-eval's ``HFLM``, which takes a model instance (a ``PeftModel`` included: it forwards ``config``,
  ``device`` and ``forward`` to the base model, so the adapter is scored unmerged). Tasks come from
  slmlab's own task directory plus any ``include_path``; lm-eval's builtin tasks only with
  ``include_defaults=True`` (their data sets come from the Hugging Face hub: offline, only what the
  local datasets cache already holds).
* :func:`task_dir` — the directory holding the shipped task ``slmlab_logic_mc`` (YAML + JSONL).
  Pass it to lm-eval's ``--include_path``::

      lm_eval --model hf --model_args pretrained=<model dir> --tasks slmlab_logic_mc \\
          --include_path "$(python -c 'from slmlab.evaluate.harness import task_dir; print(task_dir())')"

* :func:`load_logic_mc` — the task's ``custom_dataset``: lm-eval passes ``dataset_kwargs.data_files``
  to ``datasets.load_dataset`` unchanged, so a relative path there is relative to the *working
  directory*, not to the YAML (checked in lm-eval 0.4.13). The YAML names this function instead
  (``!function slmlab.evaluate.harness.load_logic_mc``, imported by module name), which reads the
  JSONL beside the YAML wherever slmlab is installed: no copy, no absolute path, no datasets cache.
* :func:`write_logic_task_data` — regenerates the shipped JSONL from
  :func:`~slmlab.evaluate.loglik.logic_choice_items` (the first 60 held-out ``logic`` puzzles).

The shipped task scores exactly the (question, choice) pairs that
:func:`~slmlab.evaluate.loglik.multiple_choice_accuracy` scores (``target_delimiter`` is empty: the
choices carry their own leading space), so lm-eval's ``acc`` on it equals slmlab's in-process
log-prob scoring on the same items (tests/test_harness.py checks it item by item).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from slmlab.errors import SlmlabError, unknown_name_message

__all__ = [
    "LOGIC_TASK",
    "LOGIC_TASK_ITEMS",
    "check_tasks",
    "load_logic_mc",
    "load_tasks",
    "local_tasks",
    "read_logic_items",
    "result_rows",
    "run_harness",
    "task_dir",
    "task_manager",
    "write_logic_task_data",
    "write_results",
]

LOGIC_TASK = "slmlab_logic_mc"
LOGIC_TASK_ITEMS = 60  # how many held-out logic puzzles the shipped task holds


# --------------------------------------------------------------------------- the shipped task


def task_dir() -> Path:
    """The directory of slmlab's lm-eval tasks (``--include_path`` for the ``lm_eval`` command)."""
    return Path(str(resources.files("slmlab") / "resources" / "lm_eval"))


def _logic_data_file(directory: Path | None = None) -> Path:
    return (directory or task_dir()) / f"{LOGIC_TASK}.jsonl"


def read_logic_items() -> list[dict]:
    """The shipped task's items: ``{"question", "choices", "answer", "id"}``, in file order."""
    lines = _logic_data_file().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_logic_mc(**_: Any):
    """``custom_dataset`` of ``slmlab_logic_mc.yaml``: the shipped JSONL as a ``DatasetDict`` with a ``test`` split.

    lm-eval calls it with the task's metadata (and the model's arguments) as keywords; none are needed.
    """
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_logic_items())})


def write_logic_task_data(directory: str | Path | None = None, n: int = LOGIC_TASK_ITEMS) -> Path:
    """(Re)write ``slmlab_logic_mc.jsonl`` from the ``logic`` suite's first ``n`` held-out puzzles; its path.

    The default directory is the package's own (:func:`task_dir`): run it in a source checkout when
    the logic recipe changes, and commit the file.
    """
    from slmlab.evaluate.loglik import logic_choice_items
    from slmlab.io import atomic_write_text

    keys = ("id", "question", "choices", "answer")
    lines = [json.dumps({k: item[k] for k in keys}, ensure_ascii=False) for item in logic_choice_items(n=n)]
    path = _logic_data_file(Path(directory) if directory is not None else None)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- tasks


def _include_paths(include_path: list[str | Path] | None) -> list[str]:
    paths = [Path(p).expanduser() for p in include_path or []]
    for p in paths:
        if not p.exists():
            raise SlmlabError(f"--include-path {p}: no such file or directory (a folder of lm-eval task YAMLs)")
    return [str(task_dir()), *(str(p.resolve()) for p in paths)]


def task_manager(include_path: list[str | Path] | None = None, include_defaults: bool = False):
    """lm-eval's ``TaskManager`` over slmlab's task directory, ``include_path`` and (optionally) lm-eval's builtins.

    Indexing the builtin tasks (thousands of YAMLs) takes seconds; they are left out by default.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=_include_paths(include_path), include_defaults=include_defaults)


def local_tasks(include_path: list[str | Path] | None = None) -> list[str]:
    """Task, group and tag names in slmlab's task directory and ``include_path``."""
    return list(task_manager(include_path).all_tasks)


def _unknown_tasks_message(missing: list[str], local: list[str], include_defaults: bool) -> str:
    lines = [unknown_name_message("lm-eval task", name, local) for name in missing]
    if include_defaults:
        lines.append("Not one of lm-eval's builtin tasks either.")
    else:
        lines.append(
            "Only local tasks run offline: slmlab's own, and YAMLs you add with --include-path (their data "
            "files local too). lm-eval's builtin tasks load their data sets from the Hugging Face hub; to run "
            "one whose data set is already in the local datasets cache, pass --include-defaults."
        )
    return "\n".join(lines)


def check_tasks(manager, tasks: list[str], include_defaults: bool, local: list[str] | None = None) -> None:
    """Every name must be a task, group or tag ``manager`` knows (or a task YAML path); refuse otherwise."""
    if not tasks:
        raise SlmlabError("name at least one lm-eval task, e.g. " + LOGIC_TASK)
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if missing:
        local = local if local is not None else sorted(known)
        raise SlmlabError(_unknown_tasks_message(missing, local, include_defaults))


def _offline_errors() -> tuple[type[BaseException], ...]:
    """What ``datasets``/``huggingface_hub`` raise when a task's data set would have to come from the hub."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return ConnectionError, DatasetNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled


# --------------------------------------------------------------------------- running


def _hflm(model, tokenizer, batch_size: int):
    """lm-eval's ``HFLM`` around a loaded model instance and its tokenizer (no weights are loaded again)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _check_out(out: Path | None, overwrite: bool, log_samples: bool) -> Path | None:
    if out is None:
        return None
    from slmlab.evaluate.suites import samples_path_for
    from slmlab.outputs import check_output

    out = check_output(out, "file", overwrite=overwrite, what="results file")
    if log_samples:
        check_output(samples_path_for(out), "file", overwrite=overwrite, what="samples file")
    return out


def _dumps(value: Any, indent: int | None = None) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(value, ensure_ascii=False, indent=indent, default=handle_non_serializable)


def write_results(out: Path, results: dict) -> Path | None:
    """``results`` (without samples) to ``out`` as JSON; the samples, if any, beside it as JSONL. Both atomic.

    Returns the samples file's path, or None when there were no samples.
    """
    from slmlab.evaluate.suites import samples_path_for
    from slmlab.io import atomic_write_text

    samples = results.get("samples")
    samples_path = None
    if samples:
        samples_path = samples_path_for(out)
        lines = [_dumps({"task": task, **sample}) for task, rows in samples.items() for sample in rows]
        atomic_write_text(samples_path, "\n".join(lines) + "\n")
    report = {k: v for k, v in results.items() if k != "samples"}
    atomic_write_text(out, _dumps(report, indent=2) + "\n")
    return samples_path


def _seeds(seed: int | None) -> dict[str, int | None]:
    keys = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    return dict.fromkeys(keys, seed)


def load_tasks(manager, tasks: list[str]) -> list:
    """Build the named tasks (their data loaded) before any model does; the top-level Task and Group objects.

    A data set that would have to come from the hub is a :class:`SlmlabError` saying that only local
    tasks run offline. The objects go to ``simple_evaluate`` as they are, so nothing is built twice.
    """
    try:
        loaded = manager.load(tasks)
    except _offline_errors() as exc:
        raise SlmlabError(
            f"lm-eval task(s) {', '.join(tasks)}: a data set is not on this machine ({type(exc).__name__}: {exc}). "
            "Only local tasks run offline: slmlab's own and YAMLs with local data files (--include-path); a "
            "builtin task's data set must already be in the local datasets cache."
        ) from None
    children = {name for names in loaded["group_map"].values() for name in names}
    groups = [g for name, g in loaded["groups"].items() if name not in children]
    return groups + [t for name, t in loaded["tasks"].items() if name not in children]


def run_harness(
    tasks: list[str],
    model_spec: str,
    adapter: str | Path | None = None,
    *,
    limit: float | None = None,
    include_path: list[str | Path] | None = None,
    include_defaults: bool = False,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
    seed: int | None = 1234,
    out: Path | None = None,
    overwrite: bool = True,
) -> dict:
    """Run lm-eval ``tasks`` in process on ``model_spec`` (+ ``adapter``); lm-eval's results dict.

    Task names, the tasks' data, the adapter and ``out`` are checked before the model loads; an
    unknown task is a :class:`SlmlabError` listing the local tasks. ``limit`` is lm-eval's (the
    first N documents of each task; below 1, a fraction). ``seed`` seeds Python, NumPy, torch and the
    few-shot sampler as lm-eval does (None: leave the global RNGs alone). With ``log_samples`` the
    dict holds ``samples`` (per document: arguments, responses, metrics). With ``out``, the results
    are written there as JSON and the samples beside it (``*.samples.jsonl``), both atomically; an
    existing non-empty file is refused unless ``overwrite``. The dict also gets a ``slmlab`` entry:
    model, adapter, tasks, limit.
    """
    import lm_eval

    from slmlab.evaluate.suites import load_model, resolve_adapter

    if batch_size < 1:
        raise SlmlabError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit <= 0:
        raise SlmlabError(f"limit must be positive, got {limit}")
    tasks = list(tasks)
    manager = task_manager(include_path, include_defaults)
    check_tasks(manager, tasks, include_defaults, local_tasks(include_path) if include_defaults else None)
    out = _check_out(out, overwrite, log_samples)
    source = resolve_adapter(adapter, model_spec)
    built = load_tasks(manager, tasks)

    model, tokenizer = load_model(source)
    results = lm_eval.simple_evaluate(model=_hflm(model, tokenizer, batch_size), tasks=built, task_manager=manager,
                                      limit=limit, num_fewshot=num_fewshot, log_samples=log_samples,
                                      bootstrap_iters=bootstrap_iters, **_seeds(seed))
    if results is None:  # lm-eval returns None on non-zero ranks only
        raise SlmlabError("lm-eval returned no results (not the main process?)")
    results = dict(results)
    results["slmlab"] = {"model": model_spec, "adapter": None if adapter is None else str(adapter), "tasks": tasks,
                         "limit": limit}
    if out is not None:
        write_results(out, results)
    return results


# --------------------------------------------------------------------------- reading results


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def result_rows(results: dict) -> list[tuple[str, str, float | None, float | None]]:
    """``(task, metric, value, stderr)`` for every metric of every task (and group) in lm-eval's results.

    lm-eval keys a metric as ``"<metric>,<filter>"``; the filter is kept in the name unless it is ``none``.
    Its standard error is ``"<metric>_stderr,<filter>"`` (``"N/A"`` there becomes None).
    """
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if not filt or name.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            label = name if filt == "none" else f"{name} ({filt})"
            rows.append((task, label, _number(value), _number(stderr)))
    return rows
