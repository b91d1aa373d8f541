"""Optional TensorBoard sink (``--tensorboard``; ``pip install -e .[tensorboard]``).

Every row the trainer appends to ``metrics.jsonl`` is also written as scalars (tag = the
metrics key, e.g. ``loss/critic``; global step = the row's ``step``) to event files in
``<run>/tb/``; view them with ``tensorboard --logdir runs``. Without the flag nothing is imported.
"""
from __future__ import annotations

import math
from pathlib import Path

from pyscorepen.errors import PyScorePenError

TB_DIR = "tb"


def _summary_writer_cls():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:   # torch.utils.tensorboard raises ImportError without the package
        raise PyScorePenError(
            "--tensorboard needs the 'tensorboard' package, which is not installed "
            f"({err}). Install it with `pip install -e .[tensorboard]` (or `pip install tensorboard`), "
            "or run without --tensorboard; metrics.jsonl is written either way.") from None
    return SummaryWriter


def require() -> None:
    """Fail with a one-paragraph error, before anything is written, if TensorBoard is missing."""
    _summary_writer_cls()


class TensorBoardLog:
    """Writes metrics rows as scalars to ``<run_dir>/tb``.

    ``resume_step``: the step of the checkpoint a resumed run starts from; events logged after
    it by the interrupted process are purged (TensorBoard's ``purge_step``), as ``metrics.jsonl``
    rows are.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        writer_cls = _summary_writer_cls()
        purge = None if not resume_step else resume_step + 1
        self.writer = writer_cls(log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
