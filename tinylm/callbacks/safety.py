"""Training that survives being stopped: randomness that is a function of the step (so a resume
is exact), a clean stop on SIGINT/SIGTERM, and a clear stop when the loss stops being a number.
Checkpoints are written atomically by ``tinylm.checkpoint.AtomicCheckpointIO``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tinylm.callbacks.checkpoints import LastCheckpoint
from tinylm.data import derived_seed
from tinylm.errors import TinyLMError

# Added to the key of the dropout seeds, so they are not the data order's seeds.
DROPOUT_STREAM = 1


class StepSeed(Callback):
    """Seeds torch's random numbers (dropout) before every training batch from (seed, rank,
    batch number), as the data order is. What a step draws is then a function of the step:
    a resumed run draws exactly what an uninterrupted one does, whatever drew random numbers
    in between (validation loaders, callbacks, the restart itself), and no random state needs
    saving. Ranks draw different dropout masks, as they see different batches."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._step, self._micro_batch = -1, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        # With gradient accumulation several batches share a step; count them from its first.
        if trainer.global_step != self._step:
            self._step, self._micro_batch = trainer.global_step, 0
        else:
            self._micro_batch += 1
        n = trainer.global_step * trainer.accumulate_grad_batches + self._micro_batch
        seed = derived_seed(self.seed, trainer.global_rank, n, DROPOUT_STREAM)
        # The generator dropout draws from. (torch.manual_seed seeds every backend, looking each
        # one up, which costs far more a step than seeding the one in use: docs/performance.md.)
        torch.default_generator.manual_seed(seed)
        if pl_module.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # this process's GPU
        elif pl_module.device.type != "cpu":
            torch.manual_seed(seed)


class Interrupted(TinyLMError):
    """Training stopped on a signal, after saving a checkpoint to resume from."""

    label = "stopped"
    bad_input = False

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class SecondCtrlC:
    """Ends the process on a second Ctrl-C even while the main thread is inside a native kernel
    (an attention kernel running for minutes), where no Python signal handler can run until it
    returns. The C-level handler writes each signal's number to a pipe (``signal.set_wakeup_fd``)
    whatever the main thread does, and a thread reading that pipe does the stopping."""

    def __init__(self, checkpoint: LastCheckpoint) -> None:
        self.checkpoint = checkpoint
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # as set_wakeup_fd requires
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="tinylm-ctrl-c", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        interrupts = 0
        while data := os.read(self._read, 64):  # b"" once the pipe is closed
            interrupts += data.count(signal.SIGINT)
            if interrupts == 1 and signal.SIGINT in data:
                os.write(2, b"\nCtrl-C: stopping after this step, with a checkpoint; "
                            b"Ctrl-C again stops at once, without saving\n")
            elif interrupts >= 2:
                saved = self.checkpoint.saved_step
                kept = (f"; the last checkpoint is {self.checkpoint.path.absolute()} (step {saved})"
                        if saved is not None else "")
                os.write(2, f"stopped: Ctrl-C twice: stopped at once, without saving{kept}\n".encode())
                os._exit(128 + signal.SIGINT)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)
        self._thread.join(timeout=5)
        os.close(self._read)


class StopOnSignal(Callback):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice) during training: the current step
    finishes, last.ckpt is written, and training stops before the next step; ``signum`` then
    says which signal.

    A signal never interrupts a step half-way (an optimizer step cut short would leave a
    checkpoint no uninterrupted run has). The stop starts no validation and draws no pictures
    of its own: it writes no value an uninterrupted run would not write at that step. Only a
    validation the step was due for anyway runs first (a resumed run would skip it), and
    last.ckpt is written after it, as in any run. A second Ctrl-C stops at once, without saving.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint: LastCheckpoint, resume_command: str = "") -> None:
        self.checkpoint = checkpoint
        self.resume_command = resume_command  # printed as it is: "tinylm train ckpt_path=<run>"
        self.signum: int | None = None  # the signal training stopped on
        self.step: int | None = None  # the step it stopped after
        self._received = 0
        self._previous: dict[int, Any] = {}
        self._checked_step = -1
        self._second: SecondCtrlC | None = None

    def _receive(self, signum: int, frame: Any) -> None:
        if self._received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self._received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has just installed its SIGTERM handler (it stops without a checkpoint);
        # ours takes its place while training runs.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._receive) for s in self.SIGNALS}
            self._second = SecondCtrlC(self.checkpoint)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._checked_step or self.signum is not None:
            return  # within gradient accumulation: stop only after an optimizer step
        self._checked_step = trainer.global_step
        # Every process must stop at the same step, and the signal may reach only one.
        received = torch.tensor(self._received, device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(received, reduce_op="max"))
        if signum:
            self.signum, self.step = signum, trainer.global_step
            if not validation_due(trainer):  # else last.ckpt is written after that validation
                self.checkpoint.save(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        # The step that saw the signal is over, its logging and due validation included: stop
        # before this one. Set here, not at the step's end, where Lightning would answer
        # should_stop with a validation and a write of the step's scalars of its own.
        if self.signum is not None:
            trainer.should_stop = True  # LitLM.on_train_batch_start then skips the batch

    def _restore(self) -> None:
        if self._second is not None:
            self._second.close()
            self._second = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()

    def stopped(self) -> Interrupted | None:
        """What to tell the user when training stopped on a signal; None otherwise."""
        if self.signum is None:
            return None
        path, saved = self.checkpoint.path.absolute(), self.checkpoint.saved_step
        resume = self.resume_command or f"tinylm train ckpt_path={path}"
        if saved == self.step:
            kept = f"and saved {path}; resume with: {resume}"
        elif saved is not None:
            kept = f"(its weights were not finite, not saved); resume from step {saved}: {resume}"
        else:
            kept = "(its weights were not finite, not saved); no checkpoint was written"
        return Interrupted(
            f"{signal.Signals(self.signum).name} received; training stopped after step {self.step} {kept}",
            self.signum,
        )


def validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after the batch that just ended: every val_check_interval
    batches, counted across the endless training stream (check_val_every_n_epoch=null)."""
    every = trainer.val_check_batch
    if not trainer.enable_validation or trainer.check_val_every_n_epoch is not None or not every:
        return False
    batches = trainer.fit_loop.epoch_loop.total_batch_idx + 1
    return every != float("inf") and batches % int(every) == 0


class DivergedError(TinyLMError):
    """The training loss became NaN or infinite."""

    bad_input = False


class StopOnNonFiniteLoss(Callback):
    """Stops training, before the optimizer step, at the first loss that is NaN or infinite:
    its gradients would make every weight NaN. The last checkpoint stays as it was: LastCheckpoint
    never writes weights that are not finite."""

    def __init__(self, checkpoint: LastCheckpoint, lr: float) -> None:
        self.checkpoint, self.lr = checkpoint, lr

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        if torch.isfinite(loss):
            return
        if self.checkpoint.saved_step is not None:
            kept = (f"the last good checkpoint is kept: {self.checkpoint.path.absolute()} "
                    f"(step {self.checkpoint.saved_step})")
        else:
            kept = "no checkpoint had been written yet"
        raise DivergedError(
            f"train/loss is {loss.item()} at step {trainer.global_step}: training stopped; {kept}. "
            f"Lower optim.lr (now {self.lr:g}), e.g. optim.lr={self.lr / 10:g}, "
            f"or lengthen optim.warmup_steps"
        )
