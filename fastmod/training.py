"""The training loop as a library call: `fastmod.fit(model, loss, optimizer, train, val, epochs)`.

    history = fastmod.fit(model, fastmod.losses.CrossEntropyLoss(), opt, (x_train, y_train),
                          (x_test, y_test), epochs=10, batch_size=64, checkpoint="ckpt.npz")
    history["val_acc"][-1]

What it guarantees (SPEC §3, §5):
- Data order is a function of (seed, epoch) alone: epoch e visits the samples in
  `fastmod.data.DataLoader((x, y), batch_size, shuffle, seed).order(e)` order. A checkpoint
  holds the model, the optimizer's and scheduler's state, fastmod's generator state (dropout)
  and the position (epoch, batch), so `fit(..., resume=ckpt)` continues exactly as the
  uninterrupted run would: bit-identical at a fixed thread count.
- A NaN or infinite loss stops training (`TrainingDiverged`, naming the step) before anything is
  updated or saved: the last checkpoint, written atomically at the end of the last good epoch,
  stays as it was.
- Ctrl-C (SIGINT) is honoured at the next step boundary: a resumable checkpoint is written and
  `TrainingInterrupted` (a KeyboardInterrupt) is raised; a second Ctrl-C stops at once.
- `distributed=True` runs the same loop data-parallel over MPI ranks (fastmod.distributed).
"""
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from fastmod import _runtime
from fastmod._validate import finite_float, nonneg_int, positive_int
from fastmod.data.loader import DataLoader
from fastmod.nn.embedding import Embedding
from fastmod.nn.module import Module

__all__ = ["fit", "evaluate", "History", "TrainingDiverged", "TrainingInterrupted",
           "read_fit_state"]

_FIT_STATE_KEY = "fit_state"      # the (JSON) entry fit adds to a checkpoint's meta
_FORMAT = 1


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite. Attributes: step, epoch, loss, checkpoint, history."""

    def __init__(self, message, step, epoch, loss, checkpoint, history):
        super().__init__(message)
        self.step, self.epoch, self.loss = step, epoch, loss
        self.checkpoint, self.history = checkpoint, history


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit: `checkpoint` (None when fit had none to write) resumes the run."""

    def __init__(self, message, step, epoch, checkpoint, history):
        super().__init__(message)
        self.step, self.epoch = step, epoch
        self.checkpoint, self.history = checkpoint, history


class History(dict):
    """Per-epoch curves, one list each: epoch, train_loss, train_acc, val_loss, val_acc, lr,
    time (seconds in the epoch); step_loss holds every step's loss. Accuracies are None when
    the targets are not class labels, val_* when there is no validation set.

    Attributes: steps (optimizer steps taken in all), epochs_done.
    """

    KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time", "step_loss")

    def __init__(self, data=None):
        super().__init__({k: [] for k in self.KEYS})
        if data:
            for k in self.KEYS:
                self[k] = list(data.get(k, []))

    @property
    def epochs_done(self):
        return len(self["epoch"])

    @property
    def steps(self):
        return len(self["step_loss"])

    def __repr__(self):
        if not self["epoch"]:
            return "History(no epochs)"
        last = {k: self[k][-1] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}
        return f"History({self.epochs_done} epochs, last {last})"


# ------------------------------------------------------------------------------ helpers
def _check_xy(data, who):
    if isinstance(data, dict):
        data = (data.get("x"), data.get("y"))
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"fit: {who} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise ValueError(f"fit: {who} x and y must have the same length, got x {x.shape}, y {y.shape}")
    if len(x) == 0:
        raise ValueError(f"fit: {who} is empty")
    return x, y


def _input_dtype(model, x):
    """The dtype x is fed to the model in: the model's, except integer token ids for a model
    with an Embedding (cast to floats they would be refused: Embedding takes integers)."""
    if x.dtype.kind in "iu" and any(isinstance(m, Embedding) for m in model.modules()):
        return x.dtype
    return model.dtype


def _is_classification(out, y):
    return out.ndim == 2 and y.ndim == 1 and y.dtype.kind in "iu"


def _finite_params(model):
    return all(np.all(np.isfinite(p.data)) for p in model.parameters())


def evaluate(model, loss, data, batch_size=512):
    """(mean loss, accuracy or None) of `model` on data (x, y), in eval mode under no_grad;
    the model's training mode is restored afterwards. `model` may be a planned model
    (fastmod.inference(model))."""
    from fastmod.planned import PlannedModel
    x, y = _check_xy(data, "data")
    if isinstance(model, PlannedModel):                  # fastmod.inference(model): eval already
        dt, model = _input_dtype(model.model, x), _Frozen(model)
    else:
        dt = _input_dtype(model, x)
    was_training = model.training
    model.eval()
    total, correct, acc_ok = 0.0, 0, True
    try:
        with _runtime.no_grad():
            for s in range(0, len(x), batch_size):
                xb = np.ascontiguousarray(x[s:s + batch_size], dtype=dt)
                yb = y[s:s + batch_size]
                out = model(xb)
                total += float(loss(out, yb)) * len(xb)
                if acc_ok and _is_classification(out, yb):
                    correct += int(np.count_nonzero(out.argmax(1) == yb))
                else:
                    acc_ok = False
    finally:
        model.train(was_training)
    return total / len(x), (correct / len(x) if acc_ok else None)


class _Frozen:
    """A PlannedModel seen through evaluate's Module calls (train / eval do nothing)."""
    training = False

    def __init__(self, planned):
        self.planned = planned

    def __call__(self, x):
        return self.planned(x)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


class _SigintFlag:
    """While active (main thread only), the first Ctrl-C sets a flag the loop polls at step
    boundaries; the second one raises KeyboardInterrupt at once."""

    def __init__(self, enabled):
        self.hit = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._prev = None

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        if self.enabled:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._prev)
        return False


class _Progress:
    """A tqdm bar per epoch with running loss and accuracy; without tqdm, one plain line per
    epoch (on stderr)."""

    def __init__(self, enabled, epochs, steps_per_epoch, stream=None):
        self.enabled, self.epochs, self.n = enabled, epochs, steps_per_epoch
        self.stream = stream or sys.stderr
        self.bar = None
        self._tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self._tqdm = tqdm
            except ImportError:
                self._tqdm = None

    def start(self, epoch, done):
        if self.enabled and self._tqdm is not None:
            self.bar = self._tqdm(total=self.n, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}",
                                  unit="step", leave=True, file=self.stream, dynamic_ncols=True)

    def update(self, loss, acc):
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if acc is not None:
                post["acc"] = f"{100 * acc:.2f}%"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def end(self, epoch, row):
        msg = _epoch_summary(row)
        if self.bar is not None:
            self.bar.set_postfix_str(msg, refresh=True)
            self.bar.close()
            self.bar = None
        elif self.enabled:
            print(f"epoch {epoch + 1}/{self.epochs}: {msg}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _pct(a):
    return "-" if a is None else f"{100 * a:.2f}%"


def _epoch_summary(row):
    s = f"loss {row['train_loss']:.4f}, acc {_pct(row['train_acc'])}"
    if row["val_loss"] is not None:
        s += f", val_loss {row['val_loss']:.4f}, val_acc {_pct(row['val_acc'])}"
    return s + f", {row['time']:.1f}s"


# ------------------------------------------------------------------------------ checkpoints
def _write_checkpoint(path, model, optimizer, fit_state, meta):
    """fastmod.save (atomic: a temporary file, then rename) with fit's state in the meta."""
    from fastmod.io import save
    save(path, model, optimizer, **dict(meta or {}), **{_FIT_STATE_KEY: fit_state})


def _load(ckpt):
    from fastmod.io import load
    return load(ckpt) if isinstance(ckpt, (str, os.PathLike)) else ckpt


def read_fit_state(ckpt):
    """The dict fit stored in a checkpoint (a path, or what fastmod.load returned), or None."""
    return _load(ckpt).meta.get(_FIT_STATE_KEY)


def _restore(resume, model, optimizer, scheduler):
    """Load model, optimizer, scheduler, RNG and position from a checkpoint; returns fit_state."""
    ckpt = _load(resume)
    where = ckpt.path
    state = ckpt.meta.get(_FIT_STATE_KEY)
    if state is None:
        raise ValueError(f"fit: {where} holds no training state (it was not written by fit); "
                         "load its weights with fastmod.load_into(path, model)")
    if state.get("format") != _FORMAT:
        raise ValueError(f"fit: {where}: unsupported training-state format {state.get('format')!r}")
    if ckpt.optimizer is None:
        raise ValueError(f"fit: {where} holds no optimizer state to resume from")
    if ckpt.optimizer_type != type(optimizer).__name__:
        raise ValueError(f"fit: {where} holds {ckpt.optimizer_type} state, cannot resume "
                         f"{type(optimizer).__name__}")
    if (scheduler is None) != (state.get("scheduler") is None):
        raise ValueError(f"fit: {where} was written " + ("with" if scheduler is None else "without")
                         + " a learning-rate scheduler; resume with the same setup")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(ckpt.optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    _runtime.set_rng_state(state["rng"])
    return state


# ------------------------------------------------------------------------------ fit

def fit(model, loss, optimizer, train, val=None, epochs=1, *, batch_size=64, seed=0,
        shuffle=True, drop_last=False, scheduler=None, scheduler_interval="epoch",
        clip_grad_norm=None, checkpoint=None, resume=None, meta=None, eval_batch_size=512,
        progress=True, callback=None, handle_sigint=True, distributed=False):
    """Train `model` on `train` for `epochs` epochs (in all, counting those of a resumed run).

    Each step: zero_grad, forward, loss, backward, optional gradient clipping, optimizer step,
    and (scheduler_interval='step') a scheduler step. Each epoch ends with an evaluation on
    `val`, a scheduler step (scheduler_interval='epoch') and a checkpoint.

    Args:
        model: a fastmod Module taking x batches (cast to the model's dtype, except integer
            token ids for a model with an Embedding).
        loss: e.g. fastmod.losses.CrossEntropyLoss(); `loss(out, y)` -> float, `loss.backward()`.
        optimizer: a fastmod.optim optimizer over model's parameters.
        train, val: pairs (x, y) of arrays with samples along axis 0 (val may be None).
        epochs: the epoch to train up to.
        batch_size, seed, shuffle, drop_last: the minibatches, as fastmod.data.DataLoader
            serves them (epoch e's order depends on (seed, e) only).
        scheduler: an LRScheduler, stepped per epoch or per step (scheduler_interval).
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        checkpoint: path written (atomically) at each epoch end and on Ctrl-C.
        resume: a checkpoint (path, or what fastmod.load returned) to continue from.
        meta: extra JSON-serializable metadata stored in every checkpoint (fastmod.save's meta).
        progress: show a progress bar (tqdm; a plain line per epoch without it).
        callback: called after every step as callback(info) with info a dict of step, epoch,
            batch, loss, model, optimizer (for logging or tests).
        handle_sigint: turn Ctrl-C into a checkpoint + TrainingInterrupted (main thread only).
        distributed: data-parallel over MPI ranks (launch with `mpirun -n N`; needs mpi4py,
            see fastmod.distributed): every global batch is split over the ranks, gradients,
            the step's loss and accuracy and the Ctrl-C flag are reduced, validation is
            sharded; rank 0 shows the progress and writes the checkpoints. N ranks follow the
            curve of one process at the same batch_size (one rank: bit-identical).

    Returns:
        a History (dict of per-epoch lists: epoch, train_loss, train_acc, val_loss, val_acc,
        lr, time; and step_loss).

    Raises:
        TrainingDiverged: the loss was NaN or infinite (the message names the step).
        TrainingInterrupted: Ctrl-C; the checkpoint (when given) resumes the run.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fit: model must be a fastmod Module, got {type(model).__name__}")
    for name in ("step", "zero_grad", "state_dict", "load_state_dict"):
        if not hasattr(optimizer, name):
            raise TypeError(f"fit: optimizer must be a fastmod.optim optimizer, got "
                            f"{type(optimizer).__name__}")
    x, y = _check_xy(train, "train")
    if val is not None:
        val = _check_xy(val, "val")
    epochs = nonneg_int(epochs, "fit: epochs")
    batch_size = positive_int(batch_size, "fit: batch_size")
    eval_batch_size = positive_int(eval_batch_size, "fit: eval_batch_size")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if clip_grad_norm is not None:
        from fastmod.optim import clip_grad_norm_
        clip_value = finite_float(clip_grad_norm, "fit: clip_grad_norm", 0.0, low_open=True)
    dist = None
    if distributed:
        from fastmod.distributed import FitHelper
        dist = FitHelper()                 # MPI init; threads = cores / ranks unless set
    root = dist is None or dist.root
    seed = int(seed)
    n = len(x)
    dt = _input_dtype(model, x)
    x = np.ascontiguousarray(x, dtype=dt) if x.dtype != dt else x
    loader = DataLoader((x, y), batch_size=batch_size, shuffle=bool(shuffle), seed=seed,
                        drop_last=bool(drop_last))
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"fit: batch_size {batch_size} > {n} samples with drop_last=True: no steps")
    if dist is not None:
        dist.check_batches(n, batch_size, bool(drop_last))
    params = list(model.parameters())

    history = History()
    epoch, batch, running = 0, 0, [0.0, 0, 0]      # position; running loss sum, correct, seen
    epoch_time = 0.0
    if resume is not None:
        st = _restore(resume, model, optimizer, scheduler)
        if st["n_train"] != n or st["batch_size"] != batch_size or st["seed"] != seed \
                or st["shuffle"] != shuffle or st["drop_last"] != drop_last:
            raise ValueError(
                "fit: the checkpoint was written for another data layout: "
                f"{st['n_train']} samples, batch_size {st['batch_size']}, seed {st['seed']}, "
                f"shuffle {st['shuffle']}, drop_last {st['drop_last']}; got {n}, {batch_size}, "
                f"{seed}, {shuffle}, {drop_last} (resume needs the same data and settings)")
        history = History(st["history"])
        epoch, batch, running = st["epoch"], st["batch"], list(st["running"])
        epoch_time = st.get("epoch_time", 0.0)
    last_good = None                       # description of the newest checkpoint we wrote

    def fit_state():
        return {"format": _FORMAT, "epoch": epoch, "batch": batch, "running": running,
                "epoch_time": epoch_time, "history": dict(history),
                "rng": _runtime.get_rng_state(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "n_train": n, "batch_size": batch_size, "seed": seed, "shuffle": shuffle,
                "drop_last": drop_last}

    def diverged(what, step, lval):
        bar.close()
        kept = (f"the last good checkpoint, {checkpoint} ({last_good}), is unchanged" if last_good
                else f"{checkpoint} was not written in this run" if checkpoint
                else "no checkpoint was being written")
        return TrainingDiverged(f"fit: {what}; training stopped and {kept}. Try a lower learning "
                                "rate or gradient clipping.", step, epoch + 1, lval,
                                checkpoint if last_good else None, history)

    def save(where):
        if root:                               # distributed: rank 0 writes, the others agree
            _write_checkpoint(checkpoint, model, optimizer, fit_state(), meta)
        return where

    net = dist.wrap(model) if dist is not None else model     # after resume: rank 0's weights
    bar = _Progress(progress and root, epochs, steps_per_epoch)
    classify = False                       # targets are class labels (accuracy is tracked)
    model.train()
    with _SigintFlag(handle_sigint) as sigint:
        try:
            while epoch < epochs:
                order = loader.order(epoch)       # a function of (seed, epoch) alone
                bar.start(epoch, batch)
                t0 = time.perf_counter()
                while batch < steps_per_epoch:
                    if (dist.stop if dist is not None else sigint.hit):
                        epoch_time += time.perf_counter() - t0
                        raise _Interrupt()
                    idx = order[batch * batch_size:(batch + 1) * batch_size]
                    if dist is not None:
                        idx = dist.shard(idx)     # this rank's part of the global batch
                    xb, yb = x[idx], y[idx]
                    step = history.steps + 1
                    optimizer.zero_grad()
                    out = net(xb)
                    lval = float(loss(out, yb))
                    classify = _is_classification(out, yb)
                    correct = int(np.count_nonzero(out.argmax(1) == yb)) if classify else 0
                    count = len(idx)
                    if dist is not None:          # global mean loss, correct, count; Ctrl-C flag
                        lval, correct, count = dist.reduce_step(lval, correct, count, sigint.hit)
                    if not math.isfinite(lval):
                        raise diverged(f"the loss is {lval} at step {step} (epoch {epoch + 1}, "
                                       f"batch {batch + 1} of {steps_per_epoch})", step, lval)
                    # the data needs no gradient: the first layer skips its input gradient
                    net.backward(loss.backward(), need_input_grad=False)
                    if clip_grad_norm is not None:
                        clip_grad_norm_(params, clip_value)
                    optimizer.step()
                    if scheduler is not None and scheduler_interval == "step":
                        scheduler.step()
                    batch += 1
                    history["step_loss"].append(lval)
                    running[0] += lval * count
                    running[1] += correct
                    running[2] += count
                    bar.update(running[0] / running[2], running[1] / running[2] if classify else None)
                    if callback is not None:
                        callback({"step": step, "epoch": epoch + 1, "batch": batch, "loss": lval,
                                  "model": model, "optimizer": optimizer})
                epoch_time += time.perf_counter() - t0
                # ---- end of epoch: evaluate, schedule, record, checkpoint
                val_loss = val_acc = None
                if val is not None:
                    val_loss, val_acc = (evaluate(model, loss, val, eval_batch_size) if dist is None
                                         else dist.evaluate(evaluate, model, loss, val, eval_batch_size))
                lr = float(optimizer.param_groups[0]["lr"])
                row = {"epoch": epoch + 1, "train_loss": running[0] / running[2],
                       "train_acc": (running[1] / running[2]) if classify else None,
                       "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "time": epoch_time}
                for k, v in row.items():
                    history[k].append(v)
                if scheduler is not None and scheduler_interval == "epoch":
                    scheduler.step()
                bar.end(epoch, row)
                if checkpoint is not None and not _finite_params(model):
                    raise diverged(f"the parameters hold NaN or infinite values after step "
                                   f"{history.steps} (end of epoch {epoch + 1})",
                                   history.steps, float("nan"))
                epoch, batch, running, epoch_time = epoch + 1, 0, [0.0, 0, 0], 0.0
                if checkpoint is not None:
                    last_good = save(f"end of epoch {epoch}")
        except _Interrupt:
            bar.close()
            where = None
            if checkpoint is not None:
                save(f"epoch {epoch + 1}, batch {batch}")
                where = checkpoint
            msg = (f"fit: interrupted after step {history.steps} (epoch {epoch + 1}, batch {batch} "
                   f"of {steps_per_epoch}); "
                   + (f"checkpoint written to {where}: resume with fit(..., resume={where!r})"
                      if where else "no checkpoint path was given, nothing was saved"))
            raise TrainingInterrupted(msg, history.steps, epoch + 1, where, history) from None
        except BaseException as e:
            if dist is not None:
                dist.on_error(e)          # one rank failing alone: abort the job, not a hang
            raise
        finally:
            bar.close()
    return history


class _Interrupt(Exception):
    """Internal: the SIGINT flag was seen at a step boundary."""
