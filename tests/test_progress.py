"""Progress: a redrawn bar on a terminal, periodic plain lines in a log, the job's lines intact."""

from __future__ import annotations

import io

from mlrepro.training.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_epoch_step_loss_and_rate() -> None:
    log = io.StringIO()
    progress = Progress(total_steps=3, epochs=1, stream=log, interval_s=0.0)
    for step in (1, 2, 3):
        progress.update(step, 1, 2.5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue()
    assert lines[-1].startswith("epoch 1/1 step 3/3 loss 2.500 ") and lines[-1].endswith(" steps/s")


def test_between_intervals_nothing_is_written_except_the_last_step() -> None:
    log = io.StringIO()
    progress = Progress(total_steps=1000, epochs=2, stream=log, interval_s=3600)
    for step in range(1, 1001):
        progress.update(step, 1 + (step - 1) // 500, 1.0)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 2/2 step 1000/1000 ")


def test_a_terminal_gets_one_redrawn_bar_and_the_jobs_lines_between() -> None:
    terminal = Terminal()
    progress = Progress(total_steps=4, epochs=1, stream=terminal, interval_s=0.0)
    progress.update(2, 1, 1.0)
    progress.write("[1,     2] loss: 1.000")
    progress.update(4, 1, 0.5)
    progress.close()
    out = terminal.getvalue()
    assert out.count("\r\x1b[2K[############............] epoch 1/1 step 2/4") == 1
    assert "\r\x1b[2K[1,     2] loss: 1.000\n" in out
    last_draw = out.rsplit("\r\x1b[2K", 1)[1]
    assert last_draw.startswith("[########################] epoch 1/1 step 4/4 loss 0.500 ")
    assert last_draw.endswith(" steps/s\n")
