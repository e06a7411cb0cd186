"""The `fastmod` command.

    fastmod train                          # the seed's CNN on the bundled digits, default settings
    fastmod train --model transformer      # any of: mlp resnet_s cnn bn_resnet densenet transformer
    fastmod train --data mnist/            # your data: a directory of MNIST IDX files, or an .npz
    fastmod train --resume runs/cnn/checkpoint.npz
    fastmod train --eval-only runs/cnn/checkpoint.npz
    fastmod train --model mlp --profile    # + a per-layer profile of one batch (fastmod.profile)
    fastmod bench                          # bench/compare.py's workloads (needs the source tree)

`fastmod train` runs fastmod.fit: it shows a progress bar, prints the test accuracy, the parameter
count and the wall time, and writes OUT/checkpoint.npz, OUT/history.json and OUT/curves.png.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from fastmod._validate import finite_float, positive_int

MODELS = ("mlp", "resnet_s", "cnn", "bn_resnet", "densenet", "transformer")
DEFAULT_MODEL = "cnn"

# Per-architecture defaults: short runs that reach >= 95% test accuracy on the bundled digits
# (>= 97% for the default CNN) -- see README's model zoo for the measured numbers.
MODEL_DEFAULTS = {
    "mlp":         dict(epochs=12, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0),
    "resnet_s":    dict(epochs=6, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0),
    "cnn":         dict(epochs=15, batch_size=128, lr=5e-3, optimizer="adam", weight_decay=0.0),
    "bn_resnet":   dict(epochs=6, batch_size=128, lr=5e-3, optimizer="adam", weight_decay=0.0),
    "densenet":    dict(epochs=12, batch_size=128, lr=1.5e-2, optimizer="adam", weight_decay=0.0),
    "transformer": dict(epochs=20, batch_size=128, lr=4e-3, optimizer="adamw", weight_decay=1e-2),
}
TEST_FRACTION = 0.2          # the fixed, seeded test split of data sets that come without one
SPLIT_SEED = 0               # the split does not move with --seed: every run tests on the same set
HYPER = ("epochs", "batch_size", "lr", "optimizer", "weight_decay")


class CLIError(Exception):
    """A problem to report in one line (exit status 1)."""


class _Say:
    """Output switch: with --distributed, only rank 0 prints (and writes the run's files)."""
    quiet = False


def _out(msg=""):
    if not _Say.quiet:
        print(msg, flush=True)


def _note(msg):
    if not _Say.quiet:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ data
def load_data(path):
    """(info, (x_train, y_train), (x_test, y_test)) from the bundled digits (path None) or a
    user's .npz / IDX directory; split when the data has no test set."""
    from fastmod.data.datasets import load_dataset
    from fastmod.data.loader import train_test_split
    ds = load_dataset(path)
    train, test = ds["train"], ds["test"]
    if test is None:
        xtr, xte, ytr, yte = train_test_split(train[0], train[1], TEST_FRACTION, seed=SPLIT_SEED)
        train, test = (xtr, ytr), (xte, yte)
        split = f"seeded {round(100 * (1 - TEST_FRACTION))}/{round(100 * TEST_FRACTION)} split"
    else:
        split = "the files' own train/test sets"
        if train[0].shape[1:] != test[0].shape[1:]:
            raise CLIError(f"{ds['name']}: train samples have shape {train[0].shape[1:]} but test "
                           f"samples {test[0].shape[1:]}")
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    if num_classes < 2:
        raise CLIError(f"{ds['name']}: all labels are 0; classification needs at least 2 classes")
    info = {"name": ds["name"], "split": split, "num_classes": num_classes,
            "sample_shape": list(train[0].shape[1:])}
    return info, train, test


def _as_images(x, who):
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) stays; anything else cannot feed a conv net."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise CLIError(f"--model {who} needs images of shape (N, H, W) or (N, C, H, W), got samples "
                   f"of shape {x.shape[1:]}")


def model_input(name, x):
    """x (N, ...) as the architecture reads it: flat vectors (mlp, resnet_s), NCHW images
    (cnn, bn_resnet, densenet), or a sequence of rows as tokens (transformer: (N, H, W*C))."""
    if name in ("mlp", "resnet_s"):
        return x.reshape(len(x), -1)
    if name == "transformer":
        if x.ndim == 2:
            raise CLIError("--model transformer reads each image's rows as tokens: it needs "
                           f"images of shape (N, H, W), got samples of shape {x.shape[1:]}")
        if x.ndim == 4:                       # (N, C, H, W) -> rows of C*W features
            x = x.transpose(0, 2, 1, 3)
        return x.reshape(len(x), x.shape[1], -1)
    return _as_images(x, name)


# ------------------------------------------------------------------------------ models
def build_model(name, in_shape, num_classes):
    """The architecture `name` for inputs of shape `in_shape` (as model_input gives them)."""
    from fastmod import models
    if name == "mlp":
        (d,) = in_shape
        return models.mlp([d, 256, 128, num_classes], activation="relu")
    if name == "resnet_s":
        (d,) = in_shape
        return models.resnet_s(128, 4, num_classes, in_features=d)
    if name == "cnn":
        c, h, w = in_shape
        return models.cnn(in_channels=c, num_classes=num_classes, image_size=(h, w))
    if name == "bn_resnet":
        c, h, w = in_shape
        return models.bn_resnet(in_channels=c, num_classes=num_classes)
    if name == "densenet":
        c, h, w = in_shape
        return models.densenet(in_channels=c, num_classes=num_classes)
    if name == "transformer":
        t, d = in_shape
        return models.transformer_classifier(num_classes, in_features=d, d_model=64, nhead=4,
                                             num_layers=2, dim_feedforward=128, dropout=0.1,
                                             max_len=t)
    raise CLIError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")


def build_optimizer(name, params, lr, weight_decay):
    from fastmod import optim
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise CLIError(f"unknown optimizer {name!r} (choose from sgd, adam, adamw)")


def build_scheduler(optimizer, total_steps):
    """Cosine decay of the learning rate from lr to 0 over the whole run, stepped every
    minibatch: lr * (1 + cos(pi * step / total_steps)) / 2 (CosineAnnealingLR's formula).

    A LambdaLR keeps the horizon out of the checkpoint, so a run resumed with a larger
    --epochs follows the cosine of its new length (down to 0 at its new end) instead of the
    old cosine continuing upwards past its end."""
    from fastmod.optim.lr_scheduler import LambdaLR
    total = max(1, total_steps)
    return LambdaLR(optimizer, lambda step: (1 + math.cos(math.pi * min(step, total) / total)) / 2)


# ------------------------------------------------------------------------------ outputs
def write_plot(history, path, title):
    """Loss and accuracy curves as a PNG (matplotlib, Agg). Returns the path, or None with a
    one-line note when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _note("note: matplotlib is not installed, so no plot was written "
              "(pip install matplotlib, or pip install \"fastmod[train]\")")
        return None
    ep = history["epoch"]
    steps = np.asarray(history["step_loss"], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if len(steps) and ep:
        per_epoch = len(steps) / len(ep)
        t = np.arange(1, len(steps) + 1) / per_epoch
        ax1.plot(t, steps, color="0.8", lw=0.8, label="train (per step)")
    ax1.plot(ep, history["train_loss"], "o-", label="train")
    if any(v is not None for v in history["val_loss"]):
        ax1.plot(ep, history["val_loss"], "s-", label="test")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.grid(alpha=0.3)
    if any(v is not None for v in history["train_acc"]):
        ax2.plot(ep, [100 * a for a in history["train_acc"]], "o-", label="train")
    if any(v is not None for v in history["val_acc"]):
        ax2.plot(ep, [100 * a for a in history["val_acc"]], "s-", label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ train
def _config_from_checkpoint(path):
    from fastmod.io import load
    ckpt = load(path)
    config = ckpt.meta.get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise CLIError(f"{path}: not a checkpoint written by `fastmod train` (no run "
                       "configuration in it); use fastmod.load_into(path, model) from Python")
    return ckpt, config


def _prepare(config):
    """Data (normalized, shaped for the model) from a run's config (which it completes)."""
    info, train, test = load_data(config["data"])
    where = info["name"] if info["name"] != "digits" else "the bundled digits"
    # a checkpoint's model fixes the sample shape and the number of classes
    if config.setdefault("sample_shape", info["sample_shape"]) != info["sample_shape"]:
        raise CLIError(f"{where}: samples have shape {tuple(info['sample_shape'])}, but the "
                       f"checkpoint's model was trained on {tuple(config['sample_shape'])}")
    num_classes = config.setdefault("num_classes", info["num_classes"])
    if info["num_classes"] > num_classes:
        raise CLIError(f"{where}: label {info['num_classes'] - 1} is out of range for the "
                       f"checkpoint's model, which has {num_classes} classes")
    info["num_classes"] = num_classes
    name = config["model"]
    xtr, xte = model_input(name, train[0]), model_input(name, test[0])
    if "norm" not in config:       # scalar mean/std of the training inputs, kept for eval-only
        config["norm"] = [float(xtr.mean()), float(xtr.std()) or 1.0]
    mean, std = config["norm"]
    xtr = ((xtr - mean) / std).astype(np.float32)
    xte = ((xte - mean) / std).astype(np.float32)
    return info, (xtr, train[1]), (xte, test[1])


def _make_model(config, info, in_shape):
    import fastmod
    fastmod.manual_seed(config["seed"])
    try:
        return build_model(config["model"], tuple(in_shape), info["num_classes"])
    except (ImportError, AttributeError) as e:
        raise CLIError(f"--model {config['model']} is not available in this fastmod build ({e})") from None


def cmd_train(args):
    import fastmod
    from fastmod import losses
    from fastmod.training import TrainingDiverged, TrainingInterrupted, evaluate, fit

    if args.threads is not None:
        try:
            positive_int(args.threads, "--threads")
        except ValueError as e:
            raise CLIError(str(e)) from None
        fastmod.set_num_threads(args.threads)
    if args.resume and args.eval_only:
        raise CLIError("--resume and --eval-only cannot be used together")
    ranks = 1
    if args.distributed:
        if args.eval_only:
            raise CLIError("--distributed is for training; --eval-only runs in one process")
        import fastmod.distributed as dist
        dist.init(threads=args.threads)        # MPI; threads = cores / ranks unless --threads
        ranks = dist.world_size()
        _Say.quiet = dist.rank() != 0

    ckpt = None
    if args.resume or args.eval_only:
        path = args.resume or args.eval_only
        ckpt, config = _config_from_checkpoint(path)
        given = [k for k in ("model", "batch_size", "lr", "optimizer", "weight_decay", "seed")
                 if getattr(args, k) is not None and getattr(args, k) != config.get(k)]
        if given:
            _note("note: using the checkpoint's settings; ignoring "
                  + ", ".join(f"--{k.replace('_', '-')}" for k in given))
        if args.data is not None and os.path.abspath(args.data) != (
                os.path.abspath(config["data"]) if config["data"] else None):
            if args.resume:
                raise CLIError("--data cannot change when resuming (the run continues on the "
                               f"data it started with: {config['data'] or 'the bundled digits'})")
            config["data"] = os.path.abspath(args.data)
        if args.resume and args.epochs is not None:
            config["epochs"] = args.epochs
        out = args.out or os.path.dirname(os.path.abspath(path))
    else:
        name = args.model or DEFAULT_MODEL
        config = {"model": name, "seed": 0 if args.seed is None else args.seed,
                  "data": os.path.abspath(args.data) if args.data else None}
        for k in HYPER:
            v = getattr(args, k)
            config[k] = MODEL_DEFAULTS[name][k] if v is None else v
        out = args.out or os.path.join("runs", name)
    _check_hyper(config)

    info, train, test = _prepare(config)
    model = _make_model(config, info, train[0].shape[1:])
    nparams = model.num_parameters()
    crit = losses.CrossEntropyLoss()
    data_name = "bundled UCI digits" if info["name"] == "digits" else info["name"]

    if args.eval_only:
        model.load_state_dict(ckpt.state_dict)
        t0 = time.perf_counter()
        test_loss, test_acc = evaluate(fastmod.inference(model), crit, test)   # planned
        _out(f"{config['model']} from {args.eval_only} on {data_name} ({len(test[1])} test "
             f"samples): test accuracy {100 * test_acc:.2f}%, loss {test_loss:.4f}, "
             f"{nparams:,} parameters, {time.perf_counter() - t0:.2f} s")
        if args.profile:
            _print_profile(model, crit, train, config["batch_size"])
        return 0

    os.makedirs(out, exist_ok=True)
    ckpt_path = os.path.join(out, "checkpoint.npz")
    steps_per_epoch = -(-len(train[1]) // config["batch_size"])
    opt = build_optimizer(config["optimizer"], model.parameters(), config["lr"], config["weight_decay"])
    sched = build_scheduler(opt, config["epochs"] * steps_per_epoch)
    _out(f"fastmod train: {config['model']} ({nparams:,} parameters) on {data_name}: "
         f"{len(train[1])} train / {len(test[1])} test samples ({info['split']}), "
         f"{info['num_classes']} classes; {config['epochs']} epoch{'s' if config['epochs'] != 1 else ''}, "
         f"batch {config['batch_size']}, "
         f"{config['optimizer']} lr {config['lr']:g}"
         + (f" wd {config['weight_decay']:g}" if config["weight_decay"] else "")
         + f", {_threads_text(ranks)}")
    if args.resume:
        from fastmod.training import read_fit_state
        done = (read_fit_state(ckpt) or {}).get("epoch", 0)
        _out(f"resuming from {args.resume} (after {done} of {config['epochs']} epochs)")
        if done >= config["epochs"]:
            _note(f"note: the run already has its {config['epochs']} epochs; pass a larger "
                  "--epochs to train further")
        if config.get("threads") not in (None, fastmod.get_num_threads()):
            _note(f"note: the run used {config['threads']} threads and resumes with "
                  f"{fastmod.get_num_threads()}: results agree within float tolerance, "
                  "bit-identical only at the same thread count (--threads)")
    config["threads"] = fastmod.get_num_threads()
    t0 = time.perf_counter()
    try:
        history = fit(model, crit, opt, train, test, epochs=config["epochs"],
                      batch_size=config["batch_size"], seed=config["seed"], scheduler=sched,
                      scheduler_interval="step", checkpoint=ckpt_path,
                      resume=ckpt if args.resume else None,
                      meta={"config": config}, progress=not args.no_progress,
                      distributed=bool(args.distributed))
    except TrainingDiverged as e:
        raise CLIError(str(e).replace("fit: ", "", 1)) from None
    except TrainingInterrupted as e:
        _note(f"\ninterrupted at step {e.step} (epoch {e.epoch}); a resumable checkpoint is in "
              f"{e.checkpoint}\nresume with: fastmod train --resume {e.checkpoint}")
        return 130
    wall = time.perf_counter() - t0
    if _Say.quiet:                             # distributed: rank 0 reports and writes
        return 0
    # the final test evaluation with the planned model (fastmod.inference: BatchNorm folded,
    # activations fused, buffers reused); the same values as the history's last epoch
    test_loss, test_acc = evaluate(fastmod.inference(model), crit, test)
    _write_json({"config": config, "data": info, "parameters": nparams, "wall_time": wall,
                 "threads": fastmod.get_num_threads(), "ranks": ranks, "test_accuracy": test_acc,
                 "history": dict(history)}, os.path.join(out, "history.json"))
    png = write_plot(history, os.path.join(out, "curves.png"),
                     f"fastmod {config['model']} on {os.path.basename(data_name)}: "
                     f"test accuracy {100 * test_acc:.2f}%")
    _out(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) | {nparams:,} parameters | "
         f"wall time {wall:.1f} s on {_threads_text(ranks)}")
    _out(f"checkpoint: {ckpt_path}" + (f" | curves: {png}" if png else ""))
    if args.profile:
        _print_profile(model, crit, train, config["batch_size"])
    return 0


def _print_profile(model, crit, train, batch_size):
    """`--profile`: fastmod.profile's table for one batch of the training data (the first
    batch_size samples) through the trained model."""
    import fastmod
    from fastmod.training import _input_dtype
    x, y = train[0][:batch_size], train[1][:batch_size]
    x = np.ascontiguousarray(x, dtype=_input_dtype(model, x))
    _out("")
    _out(str(fastmod.profile(model, x, y, loss=crit)))


def _threads_text(ranks):
    from fastmod import get_num_threads
    t = get_num_threads()
    threads = f"{t} thread{'s' if t != 1 else ''}"
    return threads if ranks == 1 else f"{ranks} MPI ranks x {threads}"


def _check_hyper(config):
    """The hyper-parameters' values (argparse checked their types) -> CLIError naming the flag."""
    try:
        positive_int(config["epochs"], "--epochs")
        positive_int(config["batch_size"], "--batch-size")
        finite_float(config["lr"], "--lr", 0.0, low_open=True)
        finite_float(config["weight_decay"], "--weight-decay", 0.0)
    except ValueError as e:
        raise CLIError(str(e)) from None


# ------------------------------------------------------------------------------ bench
def _compare_script():
    """bench/compare.py of the source tree fastmod runs from (an editable install), else of the
    current directory (a checkout next to a regular install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.dirname(here), os.getcwd()):
        path = os.path.join(root, "bench", "compare.py")
        if os.path.isfile(path):
            return path
    return os.path.join(os.path.dirname(here), "bench", "compare.py")


def cmd_bench(args, rest):
    script = _compare_script()
    if not os.path.isfile(script):
        _out("fastmod bench runs bench/compare.py from fastmod's source tree, which this "
             "installation does not include.\nGet the source (the fastmod repository), install it "
             "with `pip install -e .` and run `fastmod bench` or `python bench/compare.py --help` "
             "there (add torch to compare against PyTorch).")
        return 1
    return subprocess.call([sys.executable, script, *rest])


# ------------------------------------------------------------------------------ main
def make_parser():
    ap = argparse.ArgumentParser(
        prog="fastmod", description="fastmod: CPU neural networks on Cython kernels.",
        epilog="`fastmod train` with no options trains the CNN on the bundled digits. "
               "`fastmod <command> --help` lists a command's options.")
    from fastmod import __version__
    ap.add_argument("--version", action="store_true",
                    help=f"print the version (fastmod {__version__}); with --verbose also the "
                         "CPU, instruction-set level, BLAS, threads and build flags")
    ap.add_argument("-v", "--verbose", action="store_true", help="with --version: the full configuration")
    sub = ap.add_subparsers(dest="command", metavar="{train,bench,config}")
    tr = sub.add_parser(
        "train", help="train a model of the seed on the bundled digits or your data",
        description="Train one of the seed's architectures with fastmod.fit: progress bar, test "
                    "accuracy, checkpoint (OUT/checkpoint.npz), curves (OUT/curves.png).",
        epilog="Per-model defaults (epochs, batch size, lr, optimizer, weight decay): "
               + "; ".join(f"{m}: {d['epochs']}, {d['batch_size']}, {d['lr']:g}, {d['optimizer']}, "
                           f"{d['weight_decay']:g}" for m, d in MODEL_DEFAULTS.items()))
    tr.add_argument("--model", choices=MODELS, default=None,
                    help=f"architecture (default {DEFAULT_MODEL}; the transformer reads each "
                         "image's rows as tokens)")
    tr.add_argument("--epochs", type=int, default=None, help="epochs to train (per-model default)")
    tr.add_argument("--batch-size", type=int, default=None, help="minibatch size (per-model default)")
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine decay)")
    tr.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                    help="sgd (Nesterov momentum 0.9), adam or adamw (per-model default)")
    tr.add_argument("--weight-decay", type=float, default=None, help="weight decay (default per model)")
    tr.add_argument("--threads", type=int, default=None,
                    help="threads for fastmod's kernels (default: FASTMOD_NUM_THREADS, "
                         "OMP_NUM_THREADS or all cores)")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of initialization and data order (default 0; the test split is fixed)")
    tr.add_argument("--out", metavar="DIR", default=None,
                    help="where to write checkpoint.npz, history.json, curves.png (default runs/MODEL; "
                         "with --resume, the checkpoint's directory)")
    tr.add_argument("--resume", metavar="CKPT", default=None,
                    help="continue a run from its checkpoint (exactly as if uninterrupted; "
                         "a larger --epochs extends it, stretching the cosine schedule)")
    tr.add_argument("--eval-only", metavar="CKPT", default=None,
                    help="only evaluate a checkpoint on the test set")
    tr.add_argument("--data", metavar="PATH", default=None,
                    help="your data: an .npz with arrays x (N, ...) and y (N,) (or Keras' x_train, "
                         "y_train, x_test, y_test), or a directory of MNIST-format IDX files "
                         "(train-images-idx3-ubyte[.gz], ...); default: the bundled digits")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--profile", action="store_true",
                    help="after training, print the per-layer time, GFLOP/s and memory of one "
                         "inference and one train step on a batch (fastmod.profile)")
    tr.add_argument("--distributed", action="store_true",
                    help="data-parallel over MPI ranks: mpirun -n N fastmod train --distributed "
                         "(needs mpi4py: pip install \".[mpi]\"); N ranks follow one process's "
                         "curve at the same --batch-size")
    sub.add_parser("config", help="show the CPU features, the kernels' instruction-set level, "
                                  "BLAS, threads and build flags (fastmod.show_config())")
    sub.add_parser("bench", add_help=False,
                   help="time the reference workloads against PyTorch (bench/compare.py; "
                        "needs the source tree; options are passed on)")
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = make_parser()
    if argv[:1] == ["bench"]:
        try:
            return cmd_bench(None, argv[1:])
        except KeyboardInterrupt:
            return 130
    args = ap.parse_args(argv)
    if args.version or args.command == "config":
        from fastmod import __version__, show_config
        if args.command == "config" or args.verbose:
            show_config()
        else:
            print(f"fastmod {__version__}")
        return 0
    if args.command is None:
        ap.print_help()
        return 0
    try:
        return cmd_train(args)
    except ImportError as e:                                   # --distributed without mpi4py
        print(f"fastmod {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except (CLIError, ValueError, FileNotFoundError) as e:    # DataError, CheckpointError too
        print(f"fastmod {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:              # outside fit's own handling (e.g. while loading)
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        _Say.quiet = False
