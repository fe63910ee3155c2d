"""What ``segstream finetune`` shows: a progress bar while training, a table after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from segstream.finetune import EvalPoint, FinetuneResult, Hooks


@contextmanager
def bars(console: Any) -> Iterator[Hooks]:
    """Hooks that draw the training progress and print every held-out evaluation."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:

        class _Bars(Hooks):
            task: TaskID | None = None

            def start(self, total_steps: int) -> None:
                self.task = bar.add_task("fine-tuning", total=total_steps, info="")

            def step(self, step: int, loss: float) -> None:
                if self.task is not None:
                    bar.update(self.task, completed=step, info=f"loss {loss:.4f}")

            def evaluated(self, point: EvalPoint) -> None:
                bar.console.print(
                    f"step {point.step:>5} (epoch {point.epoch:.2f}): held-out loss "
                    f"{point.loss:.4f}, retrieval@1 {point.accuracy:.3f}, MRR {point.mrr:.3f}"
                    + (f", next-category acc {point.category_accuracy:.3f}"
                       if point.category_accuracy is not None else ""))

        yield _Bars()


def print_result(result: FinetuneResult, seconds: float) -> None:
    """The held-out table (and the co-occurrence check), the directory and its version."""
    from rich.console import Console
    from rich.table import Table

    from segstream.encoding import Encoder

    version = Encoder(result.path, device="cpu", dtype="float32").model_version
    table = Table(title=f"fine-tuned in {seconds:.0f}s, {result.steps} steps"
                  + (" (stopped early)" if result.stopped_early else ""))
    for col in ("held-out", "loss", "retrieval@1", "MRR"):
        table.add_column(col, justify="right")
    for label, point in (("base", result.base), (f"best (step {result.best.step})",
                                                  result.best)):
        table.add_row(label, f"{point.loss:.4f}", f"{point.accuracy:.3f}", f"{point.mrr:.3f}")
    Console().print(table)
    check = result.training.get("check")
    if check:
        before, after = check["before"], check["after"]
        t = Table(title=f"co-occurrence check: {after['held_out_pairs']} held-out pairs, "
                  f"{after['new_items']} new items vs {after['catalog']} catalog items")
        for col in ("measure", "base", "fine-tuned"):
            t.add_column(col, justify="right")
        for label, key in (("cosine, co-occurring pairs", "positive_cosine"),
                           ("cosine, random pairs", "random_cosine"),
                           ("gap", "gap"),
                           ("AUC, co-occurring vs random", "auc"),
                           (f"recall@{after['k']}, new item by title", "recall_title_only"),
                           (f"recall@{after['k']}, new item by full text", "recall_full_text"),
                           (f"recall@{after['k']} by chance", "chance_recall")):
            if key in after:
                t.add_row(label, f"{before[key]:.4f}", f"{after[key]:.4f}")
        Console().print(t)
    print(f"model directory: {result.path}")
    print(f"model version:   {version}")
    print(f"evaluate it:     segstream eval FILE ... --model {result.path}")
