"""Train, evaluate, predict and benchmark any method of this repository on one GPU (or a CPU).

    python train.py --method vificlip                     # embedded synthetic videos, tiny CLIP, a few minutes on a CPU
    python train.py --method xclip --model ViT-B-16 --pretrained openai \\
        --train-list k400/train.txt --val-list k400/val.txt --data-root k400/videos --classes k400/classes.csv
    python train.py --method vificlip --resume            # continue runs/vificlip/last.pt
    python train.py --method vificlip --eval-only --weights runs/vificlip/last.pt
    python train.py --method vificlip --weights runs/vificlip/last.pt --predict clip.mp4 --classes "a,b,c"
    python train.py --method vificlip --benchmark --model ViT-B-16

Every method file exposes RECIPE, Model (set_classes, forward, param_groups) and build(clip, args); this
file never looks inside one. Defaults come from the method's RECIPE (and a VARIANT of it with --recipe);
any flag you pass wins. With no --train-list the run uses the embedded synthetic set written by data.py
and the EMBEDDED settings below, which scale the recipe down to a tiny CLIP on a CPU.
"""
import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
import data

METHODS = ("vificlip", "xclip", "openvclip", "omniclip")

# Used when no --train-list is given: what the papers' recipes become at the scale of the embedded data
# (600 videos of 24 frames at 64 px) and of the tiny CLIP, so the default run finishes in minutes on a CPU.
# No horizontal flip: it turns "moving left" into "moving right" (the official codes flip even SSv2, whose
# classes have the same problem). A method may adjust these with an EMBEDDED dict of its own.
EMBEDDED = dict(model="tiny", frames=8, epochs=40, batch_size=32, step_batch=32, lr=1e-3, warmup_epochs=1, weight_decay=0.05,
                mixup=0.0, cutmix=0.0, smoothing=0.0, test_clips=2, test_crops=1, flip=False)

# What a recipe key falls back to when a method's RECIPE does not mention it.
BASE = dict(frames=8, sampling="segment", stride=1, lr=1e-4, lr_min_ratio=0.01, weight_decay=0.0, betas=(0.9, 0.999),
            eps=1e-8, epochs=10, warmup_epochs=0, batch_size=32, step_batch=8, grad_clip=0.0, mean="clip", flip=True,
            color_jitter=0.0, grayscale=0.0, mixup=0.0, cutmix=0.0, mix_switch=0.5, smoothing=0.0,
            test_clips=1, test_crops=1, model="ViT-B-16")

# What --weights carries over from the run that wrote the checkpoint, unless given again.
INHERITED = ("model", "quick_gelu", "frames", "sampling", "stride", "size", "mean", "test_clips", "test_crops")

STATS = {"imagenet": (data.IMAGENET_MEAN, data.IMAGENET_STD), "clip": (data.CLIP_MEAN, data.CLIP_STD)}


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="vificlip", help="which method file to train")
    method_name = p.parse_known_args(argv)[0].method
    method = importlib.import_module(method_name)
    p.add_argument("--recipe", choices=sorted(getattr(method, "VARIANTS", {})), default=None,
                   help="one of the method's other official settings (see VARIANTS in its file); default: RECIPE")

    g = p.add_argument_group("model")
    g.add_argument("--model", help="open_clip architecture, e.g. ViT-B-16 (the papers'), ViT-L-14, or tiny / "
                                   "tiny-64 (offline configs for CPUs); default: tiny on the embedded data")
    g.add_argument("--pretrained", help="CLIP weights: a tag (openai) or a local file. Offline, download the file "
                                        "elsewhere and pass its path. Default: random initialisation")
    g.add_argument("--quick-gelu", action="store_true", default=None,
                   help="use QuickGELU (needed by OpenAI weights loaded from a file not named *openai*)")
    g.add_argument("--weights", help="start from a checkpoint of this repository (runs/*/last.pt) or the authors' "
                                     "released checkpoint of this method")

    g = p.add_argument_group("data (default: the embedded synthetic set)")
    g.add_argument("--train-list", help='"relative/path label" lines, one video each (mmaction2 / X-CLIP format)')
    g.add_argument("--val-list", help="same format; evaluated after each epoch and in the final multi-view test")
    g.add_argument("--data-root", default="", help="folder the paths in the lists are relative to")
    g.add_argument("--classes", help='"id,name" CSV of class names (or, with --predict, "name1,name2,...")')
    g.add_argument("--embedded-dir", default="data/embedded", help="where the synthetic set is generated (once)")
    g.add_argument("--frames", type=int, help="frames per clip (T); more frames cost time linearly")
    g.add_argument("--sampling", choices=["segment", "dense"], help="segment: one frame per equal part (TSN); "
                                                                     "dense: consecutive frames at --stride")
    g.add_argument("--stride", type=int, help="frame stride of dense sampling")
    g.add_argument("--size", type=int, help="input side in pixels; default: the CLIP's own")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes; raise if the GPU waits on data (low clips/s, low GPU use)")

    g = p.add_argument_group("optimisation (defaults: the method's RECIPE)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, dest="step_batch",
                   help="videos per forward pass (default 8); lower it and raise --accum-steps if you run out of memory")
    g.add_argument("--accum-steps", type=int, help="forward passes per optimizer step; default: enough to reach "
                                                   "the recipe's effective batch (its batch_size)")
    g.add_argument("--lr", type=float, help="peak learning rate (after warm-up); the recipe's is for its batch size")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0: off)")
    g.add_argument("--mixup", type=float, help="mixup Beta alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="cutmix Beta alpha (0: off)")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--steps-per-epoch", type=int, help="cap the optimizer steps per epoch (quick checks)")

    g = p.add_argument_group("evaluation and modes")
    g.add_argument("--test-clips", type=int, help="temporal clips per video in the final test")
    g.add_argument("--test-crops", type=int, choices=[1, 3], help="spatial crops per clip in the final test")
    g.add_argument("--eval-only", action="store_true", help="only run the final test (with --weights or --resume)")
    g.add_argument("--predict", metavar="VIDEO", help="print the most likely classes of one video and exit")
    g.add_argument("--benchmark", type=int, nargs="?", const=20, metavar="STEPS",
                   help="time STEPS (default 20) training steps on random input, 400 classes, and exit")

    g = p.add_argument_group("run")
    g.add_argument("--out", help="output folder for checkpoints and metrics.jsonl (default runs/METHOD)")
    g.add_argument("--resume", nargs="?", const="auto", help="continue from a checkpoint (default OUT/last.pt)")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (bf16, else fp16)")
    g.add_argument("--seed", type=int, default=0)

    if hasattr(method, "add_args"):
        method.add_args(p.add_argument_group(f"{method_name} options"))
    args = p.parse_args(argv)

    # Defaults: flag > EMBEDDED (embedded data only) > --recipe variant > RECIPE > BASE.
    # With --weights from a run of ours, the model and the input it was trained on are read from the checkpoint.
    recipe = {**BASE, **method.RECIPE, **getattr(method, "VARIANTS", {}).get(args.recipe, {})}
    args.embedded = args.train_list is None and not (args.predict or args.benchmark is not None)
    if args.embedded or (args.predict or args.benchmark is not None) and args.model is None and args.weights is None:
        recipe.update(EMBEDDED, **getattr(method, "EMBEDDED", {}))
    saved = (read_checkpoint(args.weights) or {}).get("args", {}) if args.weights else {}
    recipe.update({k: saved[k] for k in INHERITED if saved.get(k) is not None})
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.recipe_values = recipe
    args.out = args.out or os.path.join("runs", method_name)
    return args, method


# ---------------------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------------------

def pick_device(name):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_context(device, disabled):
    """Mixed precision on CUDA only: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if device.type != "cuda" or disabled:
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def soft_targets(label, num_classes, smoothing):
    """(B,) class ids -> (B, C) targets with label smoothing (off value smoothing/C, as timm does)."""
    off = smoothing / num_classes
    return F.one_hot(label, num_classes).float() * (1 - smoothing) + off


def mix(video, target, mixup, cutmix, switch):
    """Mixup or CutMix with the reversed batch as partner (timm's Mixup, used by X-CLIP and ViFi-CLIP).
    video (B, T, 3, S, S); CutMix cuts one box shared by all frames of a video."""
    if (mixup <= 0 and cutmix <= 0) or video.shape[0] < 2:
        return video, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < switch)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = video.flip(0)
    if use_cutmix:
        S_h, S_w = video.shape[-2:]
        h, w = int(S_h * math.sqrt(1 - lam)), int(S_w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(S_h, ())), int(torch.randint(S_w, ()))
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, S_h)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, S_w)
        video = video.clone()
        video[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (S_h * S_w)            # the box was clipped at the border
    else:
        video = lam * video + (1 - lam) * partner
    return video, lam * target + (1 - lam) * target.flip(0)


def soft_cross_entropy(logits, target):
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def default_train_step(model, video, target, loss_fn, backward, autocast):
    """One forward and backward pass. A method can replace it with its own `train_step` (same arguments
    minus the model) to, e.g., take an extra pass at other weights (Open-VCLIP)."""
    with autocast():
        loss = loss_fn(model(video), target)
    backward(loss)
    return loss.detach()


def lr_factor(step, warmup, total, min_ratio):
    """Linear warm-up from 0, then cosine to min_ratio, evaluated at the global step (as timm's
    CosineLRScheduler without warmup_prefix, which the official codes use)."""
    if step < warmup:
        return step / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@torch.no_grad()
def evaluate(model, loader, device, autocast, twins, desc="eval"):
    """Accuracy of softmax-averaged views. The loader yields video (B, V, T, 3, S, S) with V = clips x crops.
    twins[c] is the class with class c's frames in reverse order (or -1); 'twins' accuracy is how often the
    true class beats its twin, the figure a model that cannot see frame order leaves at 50%."""
    model.eval()
    probs, labels = [], []
    for video, label in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        B, V = video.shape[:2]
        with autocast():
            logits = model(video.to(device, non_blocking=True).flatten(0, 1))   # (B*V, C)
        probs.append(logits.float().softmax(-1).view(B, V, -1).mean(1).cpu())  # (B, C)
        labels.append(label)
    probs, labels = torch.cat(probs), torch.cat(labels)
    C = probs.shape[1]
    top = probs.topk(min(5, C), dim=1).indices
    result = dict(top1=100 * (top[:, 0] == labels).float().mean().item(),
                  top5=100 * (top == labels[:, None]).any(1).float().mean().item())
    per_class = [(top[labels == c, 0] == c).float().mean().item() for c in labels.unique()]
    result["mean_class"] = 100 * sum(per_class) / len(per_class)
    twin = torch.tensor(twins)[labels]
    has = twin >= 0
    if has.any():
        true_p = probs[has].gather(1, labels[has, None])
        twin_p = probs[has].gather(1, twin[has, None])
        result["twins"] = 100 * (true_p > twin_p).float().mean().item()
    return result


def format_metrics(m):
    s = f"top1 {m['top1']:5.1f}  top5 {m['top5']:5.1f}  mean-class {m['mean_class']:5.1f}"
    if "twins" in m:
        s += f"  twins {m['twins']:5.1f} (chance 50)"
    return s


def save_checkpoint(path, state):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves a half-written checkpoint."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state():
    return dict(python=random.getstate(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.lru_cache(maxsize=1)
def read_checkpoint(path):
    """A checkpoint written by this file, or None for any other file (an official release)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--weights: no file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:   # an official checkpoint whose pickled config needs the official code base
        return None
    return ckpt if isinstance(ckpt, dict) and "model" in ckpt and "args" in ckpt else None


def load_weights(model, method, path):
    """Our own checkpoints load strictly; anything else goes to the method's load_official."""
    ckpt = read_checkpoint(path)
    if ckpt is not None:
        if ckpt["args"].get("method") != method.__name__:
            raise ValueError(f"{path} was trained with --method {ckpt['args'].get('method')}, not {method.__name__}")
        model.load_state_dict(ckpt["model"])
        return ckpt
    if not hasattr(method, "load_official"):
        raise ValueError(f"{path} is not a checkpoint of this repository and {method.__name__} has no load_official")
    method.load_official(model, path)
    return None


def class_names(args, ckpt):
    """--classes as a CSV file, or as "a,b,c" (with --predict), or the names stored in a checkpoint."""
    if args.classes and os.path.isfile(args.classes):
        return data.load_classes(args.classes)
    if args.classes:
        return [n.strip() for n in args.classes.split(",") if n.strip()]
    if ckpt is not None and ckpt.get("classes"):
        return ckpt["classes"]
    raise SystemExit("give the class names: --classes classes.csv or --classes 'name one,name two,...'")


# ---------------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------------

def predict(args, model, method, device, autocast, ckpt):
    names = class_names(args, ckpt)
    model.set_classes(names)
    model.to(device).eval()
    mean, std = STATS[args.mean]
    transform = data.TestTransform(args.size, mean, std, crops=args.test_crops)
    n = data.video_length(args.predict)
    clips = [transform(data.read_frames(args.predict, data.sample_indices(
        n, args.frames, args.sampling, args.stride, clip=k, num_clips=args.test_clips)))
        for k in range(args.test_clips)]
    video = torch.cat(clips).to(device)                              # (V, T, 3, S, S)
    with torch.no_grad(), autocast():
        probs = model(video).float().softmax(-1).mean(0)             # (C,)
    print(f"{args.predict} ({args.test_clips} clips x {args.test_crops} crops):")
    for p, c in zip(*probs.topk(min(5, len(names)))):
        print(f"  {100 * p:5.1f}%  {names[c]}")


def benchmark(args, model, device, autocast, dtype, warmup=3):
    """Training steps on random input: clips/s and peak memory, data loading excluded."""
    model.set_classes([f"class {i}" for i in range(400)])
    model.to(device).train()
    opt = torch.optim.AdamW(model.param_groups(args.lr, args.weight_decay))
    video = torch.randn(args.step_batch, args.frames, 3, args.size, args.size, device=device)
    label = torch.randint(400, (args.step_batch,), device=device)
    step = getattr(model, "train_step", None) or (lambda *a: default_train_step(model, *a))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = args.benchmark
    for i in tqdm(range(warmup + steps), desc="benchmark", leave=False):
        if i == warmup:
            sync()
            start = time.perf_counter()
        step(video, soft_targets(label, 400, 0.0), soft_cross_entropy, lambda loss: loss.backward(), autocast)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    clips = steps * args.step_batch / (time.perf_counter() - start)
    if device.type == "cuda":
        mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak GPU memory"
    else:
        import resource
        mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak RSS"
    print(f"benchmark {args.method} {args.model} on {device} ({dtype or torch.float32}): batch {args.step_batch} "
          f"x {args.frames} frames x {args.size}px, 400 classes: {clips:.1f} clips/s training, {mem}")


def make_loaders(args, device, with_index=False):
    if args.embedded:
        paths = data.make_synthetic(args.embedded_dir)
        args.train_list, args.val_list, args.data_root = paths["train"], paths["val"], paths["root"]
        args.classes = args.classes or paths["classes"]
    if not args.val_list or not args.classes:
        raise SystemExit("with --train-list, also give --val-list and --classes")
    mean, std = STATS[args.mean]
    common_kw = dict(root=args.data_root, num_frames=args.frames, mode=args.sampling, stride=args.stride)
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                     persistent_workers=args.workers > 0)
    train = data.VideoDataset(args.train_list, train=True, return_index=with_index, transform=data.TrainTransform(
        args.size, mean, std, flip=args.flip, color_jitter=args.color_jitter, grayscale=args.grayscale), **common_kw)
    val = data.VideoDataset(args.val_list, transform=data.TestTransform(args.size, mean, std), **common_kw)
    test = data.VideoDataset(args.val_list, num_clips=args.test_clips, transform=data.TestTransform(
        args.size, mean, std, crops=args.test_crops), **common_kw)
    return (torch.utils.data.DataLoader(train, args.step_batch, shuffle=True, drop_last=True, **loader_kw),
            torch.utils.data.DataLoader(val, args.step_batch, **loader_kw),
            torch.utils.data.DataLoader(test, max(1, args.step_batch // (args.test_clips * args.test_crops)),
                                        **loader_kw))


def main(argv=None):
    args, method = get_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = pick_device(args.device)
    autocast, dtype = amp_context(device, args.no_amp)

    clip = common.load_clip(args.model, args.pretrained, args.quick_gelu)
    args.quick_gelu = clip.quick_gelu
    if not args.pretrained and not args.weights and not args.model.startswith("tiny"):
        print(f"note: {args.model} starts from random weights; the papers start from --pretrained openai")
    args.size = args.size or clip.visual.image_size[0]
    model = method.build(clip, args)
    ckpt = load_weights(model, method, args.weights) if args.weights else None
    if args.predict:
        return predict(args, model, method, device, autocast, ckpt)
    if args.benchmark is not None:
        return benchmark(args, model, device, autocast, dtype)

    train_loader, val_loader, test_loader = make_loaders(args, device, getattr(model, "needs_paths", False))
    names = data.load_classes(args.classes)
    twins = data.temporal_twins(names)
    model.set_classes(names)
    model.to(device)
    if args.accum_steps is None:
        args.accum_steps = max(1, args.batch_size // args.step_batch)
    print(f"{args.method}: {common.count_params(model, trainable=True) / 1e6:.2f}M trainable of "
          f"{common.count_params(model) / 1e6:.2f}M parameters, {len(names)} classes (chance "
          f"{100 / len(names):.1f}%), {len(train_loader.dataset)} train / {len(val_loader.dataset)} val videos, "
          f"{args.frames} frames at {args.size}px, batch {args.step_batch} x {args.accum_steps} accumulation "
          f"(recipe {args.batch_size}), device {device}" + (f" ({dtype})" if dtype else ""))
    steps_per_epoch = len(train_loader) // args.accum_steps
    if args.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.steps_per_epoch)
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train_loader.dataset)} training videos make no optimizer step of batch "
                         f"{args.step_batch} x {args.accum_steps} accumulation steps: lower --batch-size or --accum-steps")
    total, warmup = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.param_groups(args.lr, args.weight_decay), lr=args.lr,
                                  betas=tuple(args.betas), eps=args.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, args.lr_min_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    start_epoch, best = 0, 0.0

    resume = os.path.join(args.out, "last.pt") if args.resume == "auto" else args.resume
    if resume:
        if not os.path.isfile(resume):
            raise SystemExit(f"--resume: no checkpoint at {resume}; start without --resume")
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, best = state["epoch"], state["best"]
        print(f"resumed {resume} after epoch {start_epoch}")
    step_fn = getattr(model, "train_step", None) or (lambda *a: default_train_step(model, *a))
    accum = args.accum_steps

    def backward(loss):
        scaler.scale(loss / accum).backward()

    os.makedirs(args.out, exist_ok=True)
    metrics_file = os.path.join(args.out, "metrics.jsonl")
    for epoch in range(start_epoch, 0 if args.eval_only else args.epochs):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True)
        tic, seen, loss_sum, micro = time.perf_counter(), 0, torch.zeros((), device=device), 0
        for video, label, *index in train_loader:
            video, label = video.to(device, non_blocking=True), label.to(device, non_blocking=True)
            target = soft_targets(label, len(names), args.smoothing)
            video, target = mix(video, target, args.mixup, args.cutmix, args.mix_switch)
            extra = dict(paths=[train_loader.dataset.samples[i][0] for i in index[0].tolist()]) if index else {}
            loss = step_fn(video, target, soft_cross_entropy, backward, autocast, **extra)
            loss_sum, seen, micro = loss_sum + loss.float(), seen + video.shape[0], micro + 1   # no GPU sync
            if micro % accum:
                continue
            if args.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            bar.update()
            bar.set_postfix(loss=f"{loss_sum.item() / micro:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            clips_s=f"{seen / (time.perf_counter() - tic):.1f}")
            if bar.n >= steps_per_epoch:
                break
        bar.close()
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, args.epochs)
        val = evaluate(model, val_loader, device, autocast, twins)
        best = max(best, val["top1"])
        line = dict(epoch=epoch + 1, loss=loss_sum.item() / max(micro, 1), lr=scheduler.get_last_lr()[0],
                    seconds=time.perf_counter() - tic, **val)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {line['loss']:.3f}  val {format_metrics(val)}  "
              f"({line['seconds']:.0f}s)")
        with open(metrics_file, "a") as f:
            f.write(json.dumps(line) + "\n")
        save_checkpoint(os.path.join(args.out, "last.pt"), dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), epoch=epoch + 1, best=best, rng=rng_state(), classes=names,
            args={k: v for k, v in vars(args).items() if k != "recipe_values"}))

    views = f"{args.test_clips} clips x {args.test_crops} crops"
    test = evaluate(model, test_loader, device, autocast, twins, desc=f"test ({views})")
    print(f"test ({views}): {format_metrics(test)}  (chance {100 / len(names):.1f}%)")
    with open(metrics_file, "a") as f:
        f.write(json.dumps(dict(test=True, views=views, **test)) + "\n")
    return test


if __name__ == "__main__":
    main()
