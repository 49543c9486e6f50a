"""The stage harness of a rule's job: its log file, its GPU slots and its image-loading switches.

Only the scripts in workflow/scripts import this module, and no stage's code imports it: none of it changes a
number, so editing it (or ``gpu_slots``, which it uses) reruns nothing (``pipeline_lib.config.code_inputs``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from .gpu_slots import claim_for_job
from .io import LOADING, log


def configure_loading(config: dict | None) -> None:
    """Set ``io.LOADING`` from a config's ``speed`` section (absent: one thread, no pinned memory)."""
    s = (config or {}).get("speed") or {}
    LOADING.update(workers=int(s.get("num_workers", 0) or 0), pin_memory=bool(s.get("pin_memory", False)))


@contextlib.contextmanager
def stage_log(log_path: str | os.PathLike | None, job=None) -> Iterator[logging.Logger]:
    """Send the ``pipeline_lib`` logger, stdout and stderr (tqdm progress) of a rule to its log file. With the
    ``job`` (a script's ``snakemake`` object), a GPU job first takes its GPU slots (``gpu_slots``) and the
    loading switches are set from its config."""
    if log_path is None:
        yield log
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            if job is not None:
                claim_for_job(job)
                configure_loading(getattr(job, "config", None))
            yield log
        except BaseException:
            log.exception("stage failed")
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)
