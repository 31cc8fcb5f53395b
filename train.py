"""Train and test any method of this repository on a GPU or a CPU, or on several GPUs with torchrun (the same
command after `torchrun --nproc_per_node N`). Each run writes a folder of its own: runs/METHOD-PROTOCOL[-N].

    python train.py --method vificlip                     # embedded synthetic videos, tiny CLIP, minutes on a CPU
    python train.py --method all                          # every method, then a table of their results
    python train.py --method xclip --model ViT-B-16 --pretrained openai \\
        --train-list k400/train.txt --val-list k400/val.txt --data-root k400/videos --classes k400/classes.csv
    python train.py --method vificlip --resume            # continue the latest runs/vificlip-supervised[-N]
    python train.py --method xclip --protocol zero-shot                  # also few-shot --shots K, base2novel
"""
# Reading guide. The lesson first, in the order it runs, never looking inside a method file (each gives RECIPE, Model
# with set_classes / forward / param_groups, and build): 1. the recipe resolved into settings; 2. the batches; 3. the
# optimizer and learning rate; 4. one training step; 5. the loop; 6. the test; 7. the protocols' results; 8. one run,
# and main. Below "What makes this script a tool": flags, other modes, checkpoints, torchrun, run folders, errors.
import argparse
import contextlib
import datetime
import difflib
import errno
import functools
import gc
import glob
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
import data

METHODS = ("vificlip", "xclip", "openvclip", "omniclip")
PROTOCOLS = ("supervised", "zero-shot", "few-shot", "base2novel", "retrieval")


# ---- The lesson. 1. The recipe, resolved into settings ------------------------------------------------------
# Every key a RECIPE or VARIANTS may set (citing its official config line), its meaning, its value if they don't.
BASE = dict(
    model="ViT-B-16", frames=8,      # the open_clip architecture; T, frames per clip
    sampling="segment", stride=1,    # which frames: segment (one per T equal parts), dense (stride apart at 30 fps)
    crop="tsn", mean="clip",         # resize and crops (tsn: X-CLIP's, slowfast: PySlowFast's); clip or imagenet stats
    flip=True, color_jitter=0.0, grayscale=0.0,   # training augmentation, each a probability
    mixup=0.0, cutmix=0.0, mix_switch=0.5,        # Beta alphas (0: off); with both, the chance a batch takes CutMix
    smoothing=0.0,                   # label smoothing
    global_batch=32, micro_batch=8,  # videos per optimizer step over all processes; per forward pass (--batch-size)
    lr=1e-4, lr_min_ratio=0.01,      # the peak for global_batch (param_groups may scale groups); the end, over lr
    schedule="timm",                 # lr_factor: timm (X-CLIP's and ViFi-CLIP's) or slowfast (PySlowFast's)
    official_accum=1,                # the official run's accumulation steps: timm's schedule counts its micro-batches
    warmup_epochs=0, warmup_start_ratio=0.0,        # the warm-up, and (slowfast) where it starts, over lr
    weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, grad_clip=0.0,   # AdamW; the gradient norm's cap (0: none)
    epochs=10, val_every=1,          # training epochs; a 1-view validation every val_every epochs (0: none)
    test_clips=1, test_crops=1,      # the final test's views of a video: clips in time x crops in space
    test_fusion="softmax", test_amp=True,   # evaluate: average the views' softmax, or sum their logits; amp or fp32
    class_words=False, threads=0,    # UCF101's CamelCase names as words; CPU threads (0: one per core)
)

# The embedded demo (no --train-list) scales a recipe down to its 900 videos of 24 frames at 64 px and a tiny CLIP
# pretrained here on still images (common.synthetic_clip), minutes on a CPU; a run says what it replaced. One thread
# (the decoding workers have the other core); no flip: it turns "moving left" into "moving right" (the official codes
# flip even SSv2, whose classes have the same problem). A method's EMBEDDED adjusts more (xclip.py, openvclip.py).
EMBEDDED = dict(model="tiny", pretrained="synthetic", frames=8, epochs=20, val_every=10, global_batch=32,
                micro_batch=32, lr=1e-3, warmup_epochs=1, official_accum=1, weight_decay=0.05, mixup=0.0,
                cutmix=0.0, smoothing=0.0, test_clips=2, test_crops=1, flip=False, threads=1)

# What --weights carries over from the run that wrote the checkpoint (with the method's own options), unless given.
INHERITED = ("model", "quick_gelu", "frames", "sampling", "crop", "stride", "size", "mean", "test_clips",
             "test_crops", "test_fusion", "test_amp")


def settings(args, method, own):
    """Fill every setting not given on the command line from, in this order: EMBEDDED (the embedded demo, and
    --predict or --benchmark without a model), the --recipe variant, the method's RECIPE, BASE; but --weights of
    ours brings INHERITED and the method's own options `own`, unless the variant sets them."""
    variants = getattr(method, "VARIANTS", {})
    args.recipe = args.recipe or (args.protocol if args.protocol in variants else None)
    variant = variants.get(args.recipe, {})
    recipe = {**BASE, **method.RECIPE, **variant}
    mode = args.predict or args.benchmark is not None or args.search
    args.embedded = args.train_list is None and args.val_list is None and not mode
    if args.embedded or mode and args.model is None and args.weights is None:
        official = dict(recipe)
        recipe.update(EMBEDDED, **getattr(method, "EMBEDDED", {}))
        # A variant's learning rate keeps its ratio to the recipe's: few-shot fine-tuning of a pretrained CLIP
        # wants a gentler step than supervised training (ViFi-CLIP: 2e-6 against 2.2e-5).
        recipe["lr"] *= variant.get("lr", method.RECIPE.get("lr", 1)) / method.RECIPE.get("lr", 1)
        if args.weights or args.benchmark is not None:   # no stand-in for weights replaced, or random input
            recipe["pretrained"] = None
        # what the demo replaced, said when the run starts (prepare)
        args.demo_replaced = {k: official.get(k) for k, v in recipe.items() if v != official.get(k) and
                              getattr(args, k, None) is None}
    ours = args.weights and not hf_weights(method, args.weights)   # a transformers folder or hub id: no settings
    saved = (read_checkpoint(args.weights) or {}).get("args", {}) if ours else {}
    recipe.update({k: saved[k] for k in (*INHERITED, *own) if saved.get(k) is not None and k not in variant})
    vars(args).update({k: v for k, v in recipe.items() if getattr(args, k, None) is None})
    # Released split files (ViFi-CLIP's train1_few_shot_K.txt, fs_base_s{seed}_train.txt) are the shots already:
    # without --shots few-shot trains on the list as it is, and a {seed} in --train-list names each seed's file.
    released = "{seed}" in (args.train_list or "")
    args.shots = args.shots or (16 if args.protocol == "base2novel" and not released else None)
    args.shot_seeds = args.shot_seeds or ([1, 2, 3] if args.protocol == "base2novel" else [1])
    return args


# ---- 2. The batches (their loaders: make_loader, after the loop) ----------------------------------------------
STATS = {"imagenet": (data.IMAGENET_MEAN, data.IMAGENET_STD), "clip": (data.CLIP_MEAN, data.CLIP_STD)}


def soft_targets(label, num_classes, smoothing):
    """(B,) class ids -> (B, C) targets with label smoothing (off value smoothing/C, as timm does)."""
    return F.one_hot(label, num_classes).float() * (1 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits, target):
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def micro_batches(batches, args, device, num_classes, loader):
    """The micro-batches of one optimizer step, made ready as the step takes them: a worker's batch (video, label,
    colour draws[, index]) in uint8 -> (video (N,T,3,S,S) coloured and normalised on the device, target (N,C)
    smoothed and mixed, extra: paths for a method that asks); N = B*K for K clips a video; all-bad batches: N = 0."""
    for batch in batches:
        if not len(batch):
            yield torch.empty(0), torch.empty(0), {}
            continue
        video, label, draws, *rest = batch                                         # draws (B,[K,]T,10): a worker's
        index = rest[0] if rest else None                                           # (B,)
        if video.dim() == 6:   # K clips per video: (B,K,T,3,S,S) -> (B*K,T,3,S,S)
            K = video.shape[1]
            video, label, draws = video.flatten(0, 1), label.repeat_interleave(K), draws.flatten(0, 1)  # (B*K,T,10)
            index = None if index is None else index.repeat_interleave(K)
        video, label = video.to(device, non_blocking=True), label.to(device, non_blocking=True)
        video = data.colour_batch(video, draws)                                     # each frame its own colour
        video = data.normalise(video, *STATS[args.mean])                            # uint8 -> float
        target = soft_targets(label, num_classes, args.smoothing)                   # (N, C)
        video, target = data.mix(video, target, args.mixup, args.cutmix, args.mix_switch)
        extra = {} if index is None else dict(paths=[loader.dataset.samples[i][0] for i in index.tolist()])
        yield video, target, extra


# ---- 3. The optimizer and the learning rate -----------------------------------------------------------------
def make_optimizer(args, model, device, dtype, steps_per_epoch):
    """(optimizer, schedule, loss scaler for fp16): AdamW over the method's parameter groups; on CUDA its fused
    kernel (one launch for all parameters) and TF32 float32 matrix products, as PyTorch advises from Ampere on."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if not any(p.requires_grad for p in model.parameters()):   # e.g. OmniCLIP's CLIP with both its parts off
        raise SystemExit(f"--method {args.method}: nothing to train with these settings: switch a part back on, or "
                         f"test the model with --eval-only")
    optimizer = torch.optim.AdamW(model.param_groups(args.lr, args.weight_decay), lr=args.lr,
                                  betas=tuple(args.betas), eps=args.eps, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [functools.partial(
        lr_factor, args=args, steps_per_epoch=steps_per_epoch, floor=args.lr_min_ratio * args.lr / group["lr"],
        start=args.warmup_start_ratio * args.lr / group["lr"]) for group in optimizer.param_groups])
    return optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def lr_factor(step, args, steps_per_epoch, floor, start=0.0):
    """A group's learning rate after `step` optimizer steps over its peak; floor and start (the end, the warm-up's
    start) are the recipe's values over this group's peak. timm (X-CLIP's and ViFi-CLIP's utils/optimizer.py): a
    warm-up from 0, then a cosine over all epochs, counted in official micro-batches (official_accum a step) and
    updated after each step, so step j runs at micro-batch accum * (j - 1) - 1; slowfast (PySlowFast's lr_policy,
    Open-VCLIP): set before each step from the fractional epoch, a warm-up from `start`, then COSINE_AFTER_WARMUP."""
    warmup, epochs = args.warmup_epochs, args.epochs
    if args.schedule == "timm":
        per_epoch = steps_per_epoch * args.official_accum                 # micro-batches
        t, warmup, total = max(args.official_accum * step - 1, 0), int(warmup * per_epoch), epochs * per_epoch
        return t / warmup if t < warmup else floor if t >= total else \
            floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / total))
    epoch = step / steps_per_epoch   # a warm-up to the cosine's value at its start, the peak itself
    return start + epoch * (1 - start) / warmup if epoch < warmup else floor if epoch >= epochs else \
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


# ---- 4. One training step -----------------------------------------------------------------------------------
def training_step(model, micro, accum, opt, args, autocast):
    """A step over `accum` micro-batches -> (mean loss over all processes, clips); (None, clips) if `micro` ran out."""
    optimizer, scheduler, scaler = opt
    # Each micro-batch's loss divided by the accumulation: the gradients add up to those of the step's mean loss.
    backward = lambda micro_loss: scaler.scale(micro_loss / accum).backward()
    loss, taken, clips = 0.0, 0, 0
    for video, target, extra in micro:
        if taken == 0 and hasattr(model, "begin_step"):   # work shared by the step's micro-batches (ViFi-CLIP's text)
            with autocast():
                model.begin_step()
        taken += 1
        if not len(video):   # its videos were all left out as bad; under torchrun it counts, to meet the others
            continue
        if hasattr(model, "train_step"):   # a method's own forward and backward (Open-VCLIP: a second pass)
            micro_loss = model.train_step(video, target, soft_cross_entropy, backward, autocast, **extra)
        else:
            with autocast():
                micro_loss = soft_cross_entropy(model(video), target)
            backward(micro_loss)
        loss += micro_loss.detach().float() / accum
        clips += len(video)
    if taken < accum:
        return None, clips
    if hasattr(model, "end_step"):
        model.end_step()
    average_gradients(model.parameters())             # the mean over processes (torchrun); one process: nothing
    loss = sum_over_processes(torch.as_tensor(loss)) / WORLD                  # the same on every process
    if not math.isfinite(loss.item()):   # one sync per optimizer step, not per micro-batch
        raise FloatingPointError(f"the loss is {loss.item()} and training has diverged")
    if args.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()   # the learning rate of the next step (lr_factor)
    return loss, clips


def average_gradients(params, bucket_bytes=2**26):
    """The mean of every process's .grad after a step's last backward: the global batch's gradient, exactly. Not
    DistributedDataParallel, whose reducer fires in one backward of the wrapped forward: the methods run their own
    (Open-VCLIP two a micro-batch, ViFi-CLIP one more). 64 MB buckets; a .grad missing on some processes is zero."""
    if WORLD == 1:
        return
    params = [p for p in params if p.requires_grad]
    has = sum_over_processes(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
    buckets, size = [[]], 0
    for p, n in zip(params, has.tolist()):
        if not n:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        nbytes = p.grad.numel() * p.grad.element_size()
        if buckets[-1] and (p.grad.dtype != buckets[-1][0].dtype or size + nbytes > bucket_bytes):
            buckets.append([])
            size = 0
        buckets[-1].append(p.grad)
        size += nbytes
    for bucket in filter(None, buckets):   # (the first is empty when no parameter has a gradient)
        flat = torch.cat([g.reshape(-1) for g in bucket])      # (total numel,) where the gradients are
        torch.distributed.all_reduce(flat)
        flat /= WORLD
        for g, piece in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(piece.view_as(g))


# ---- 5. The loop --------------------------------------------------------------------------------------------
def train(args, model, samples, names, val, device, autocast, dtype, out, skips):
    """Train in `out`, each epoch: its steps, validation, checkpoint, metrics line (resumed: from its checkpoint)."""
    loader = make_loader(args, device, samples, train=True, with_index=getattr(model, "needs_paths", False))
    val_loader = make_loader(args, device, val[1]) if args.val_every else None
    accum, steps_per_epoch = batch_plan(args, loader, names, val)
    model.set_classes(names)
    opt = make_optimizer(args, model, device, dtype, steps_per_epoch)
    if WORLD > 1:   # every process draws its own mixup / Open-VCLIP alpha (a resumed run restores its state below)
        seed_process(args.seed, RANK)
    start, partial, record = resume_training(out, model, opt, args)           # (0, None, None) for a new run
    for epoch in range(start, args.epochs):
        model.train()
        opt[0].zero_grad(set_to_none=True)   # nothing left of a step the last epoch cut short (or of other work)
        meter = EpochMeter(args, epoch, steps_per_epoch, device, skips, partial)   # steps, clips, loss, the bar
        partial = None
        loader.sampler.set_epoch(epoch, start=meter.steps * accum * loader.batch_size)
        loaded = data.batches(loader, skips, f"epoch {epoch + 1}", meter.waited, keep_empty=WORLD > 1)
        while meter.steps < steps_per_epoch:
            micro = micro_batches(itertools.islice(loaded, accum), args, device, len(names), loader)
            try:
                loss, clips = training_step(model, micro, accum, opt, args, autocast)
            except FloatingPointError as e:
                raise diverged(e, meter, args, out, dtype) from None
            if not meter.add(loss, clips, opt):   # the loader ran out (videos left out as bad)
                break
            if args.save_every and meter.steps % args.save_every == 0 and meter.steps < steps_per_epoch:
                save_training(out, model, opt, epoch, names, args, record, partial=meter.state())
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, args.epochs)
        record = meter.close(opt)
        if args.val_every and ((epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs):
            record["val"] = judge(args, model, val_loader, val[2], device, autocast, "val", skips)
            model.set_classes(names)
        end_epoch(record, meter, args, out, model, opt, names, skips)   # its line, checkpoint, metrics.jsonl


def batch_plan(args, loader, names, val):
    """-> (accumulation steps, optimizer steps per epoch), printed. The recipe's global batch is kept whatever the
    number of processes: global_batch = micro-batch x processes x accumulation."""
    clips = loader.batch_size * args.clips_per_video   # --batch-size, or the multiple of K below it
    accum = args.accum_steps or max(1, args.global_batch // (clips * WORLD))
    split = (f"{clips}" + (f" ({loader.batch_size} videos x {args.clips_per_video} clips)" if
                            args.clips_per_video > 1 else "") + (f" x {WORLD} processes" if WORLD > 1 else ""))
    every = f"every {args.val_every} epochs and after the last" if args.val_every > 1 else "after every epoch"
    print(f"batch {split} x {accum} accumulation = {clips * WORLD * accum} (recipe {args.global_batch})"
          + (f", chance {100 / len(names):.1f}%" if args.protocol != "retrieval" else "")
          + (f"; val: 1 view of the {len(val[1])} {val[0]} videos {every}" if args.val_every else
             "; no val, only the final test"))
    steps_per_epoch = min(len(loader) // accum, args.steps_per_epoch or math.inf)
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(loader.dataset)} training videos make no optimizer step of batch {split} x {accum} "
                         f"accumulation steps: lower --batch-size or --accum-steps")
    return accum, steps_per_epoch


def make_loader(args, device, samples, train=False, views=False, with_index=False):
    """A DataLoader over samples: one random clip (train), one centre view (per-epoch val), or the test views."""
    mean, std = STATS[args.mean]
    if train:   # the workers draw the colour augmentation; micro_batches applies it to whole batches on the device
        transform = data.TrainTransform(args.size, mean, std, args.crop, flip=args.flip, color_jitter=args.color_jitter,
                                        grayscale=args.grayscale, normalise=False, defer_colour=True)
    else:
        transform = data.TestTransform(args.size, mean, std, crops=args.test_crops if views else 1, crop=args.crop,
                                       normalise=False)
    dataset = data.VideoDataset(samples, "", args.frames, transform, args.sampling, args.stride, train=train,
                                num_clips=args.test_clips if views else 1, return_index=with_index or not train,
                                # a test puts its videos in order by their indices (in_video_order)
                                skip_bad=args.skip_bad_videos, seed=args.seed,
                                clips_per_video=args.clips_per_video if train else 1)
    # A batch holds about --batch-size clips: fewer videos when each gives several views or clips.
    batch = max(1, args.micro_batch // (args.test_clips * args.test_crops if views else
                                        args.clips_per_video if train else 1))
    # Order and augmentation follow from (seed, epoch, video) alone, the workers' seeds from the loader's own
    # generator (not mixup's global one): a resumed run, with any number of workers, sees the clips of an
    # uninterrupted one. Under torchrun each process reads its shard: of each epoch's order, or of the videos (a
    # test: videos RANK, RANK + WORLD, ..., none repeated; in_video_order puts them back together).
    sampler = data.EpochSampler(len(dataset), args.seed, RANK, WORLD) if train else range(RANK, len(dataset), WORLD)
    return torch.utils.data.DataLoader(dataset, batch, sampler=sampler, drop_last=train, num_workers=args.workers,
                                       collate_fn=data.collate, pin_memory=device.type == "cuda",
                                       persistent_workers=args.workers > 0, generator=torch.Generator(),
                                       timeout=args.loader_timeout if args.workers > 0 else 0)


# ---- 6. The test --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, loader, device, autocast, twins, desc="eval", skips=None, stats=None, fusion="softmax", amp=True):
    """Accuracy of each video's fused views; amp=False tests in float32 (Open-VCLIP). The loader yields (video (B, V =
    clips x crops, T, 3, S, S), uint8 to normalise with stats or float; label (B,); index (B,)). twins[c]: the class of
    class c's frames reversed (or -1); 'twins' accuracy, the true class beating it, is 50% blind to frame order."""
    model.eval()
    probs, labels, index, before = [], [], [], skips.count if skips else 0
    for video, label, i in progress(data.batches(loader, skips, desc), total=len(loader), desc=desc, leave=False):
        B, V = video.shape[:2]
        video = video.to(device, non_blocking=True)
        video = data.normalise(video, *stats) if stats else video
        with autocast() if amp else contextlib.nullcontext():
            logits = model(video.flatten(0, 1)).float().view(B, V, -1)      # (B*V, C) -> (B, V, C)
        probs.append(fuse(logits, fusion).cpu())                            # (B, C)
        labels.append(label)
        index.append(i)
    skipped = int(sum_over_processes((skips.count - before) if skips else 0))
    # under torchrun each process tested its shard; a video's views, one item, were fused where computed
    (probs, labels), _ = in_video_order(index, probs, labels)                      # (videos, C), (videos,)
    C = probs.shape[1]
    top = probs.topk(min(5, C), dim=1).indices
    hit = top[:, 0] == labels
    top1 = 100 * hit.float().mean().item()
    result = dict(videos=len(labels), classes=C, top1=top1, top1_se=standard_error(top1, len(hit)),
                  **({"skipped": skipped} if skipped else {}),
                  top5=100 * (top == labels[:, None]).any(1).float().mean().item())
    per_class = [hit[labels == c].float().mean().item() for c in labels.unique()]
    result["mean_class"] = 100 * sum(per_class) / len(per_class)
    twin = torch.tensor(twins)[labels]
    has = twin >= 0
    if has.any():
        beats = probs[has].gather(1, labels[has, None]) > probs[has].gather(1, twin[has, None])   # (n, 1)
        twins = 100 * beats.float().mean().item()
        result.update(twins=twins, twins_se=standard_error(twins, len(beats)))
    return result


def fuse(logits, fusion):
    """(B, V, C) logits of V views -> (B, C) scores: "softmax" averages their softmax (X-CLIP's and ViFi-CLIP's
    main.py validate), "sum" adds their logits (PySlowFast's TestMeter, ensemble_method sum: Open-VCLIP)."""
    return logits.softmax(-1).mean(1) if fusion == "softmax" else logits.sum(1)


def standard_error(percent, n):
    """The standard error of an accuracy (in %) over n videos, in points: 100 sqrt(p (1 - p) / n). Two of them
    either side of a figure is roughly where a rerun on other videos of the same kind would land."""
    p = percent / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def judge(args, model, loader, names, device, autocast, desc, skips):
    """The test of the run's protocol: retrieval ranks the captions `names` and the videos; the others classify."""
    if args.protocol == "retrieval":
        return retrieve(model, loader, names, device, autocast, desc, skips, STATS[args.mean], args.test_amp)
    model.set_classes(names)
    return evaluate(model, loader, device, autocast, data.temporal_twins(names), desc, skips, STATS[args.mean],
                    args.test_fusion, args.test_amp)


@torch.no_grad()
def retrieve(model, loader, captions, device, autocast, desc="retrieval", skips=None, stats=None, amp=True):
    """Retrieval between the loader's videos (embedded once, test views averaged) and their captions [(text, video)],
    each pair scored by the method's similarity (per pair where the text depends on the video: X-CLIP)."""
    videos, index = embed_videos(model, loader, device, autocast, desc, skips, stats, amp)
    kept = {i: n for n, i in enumerate(index.tolist())}   # a video left out as bad takes its captions with it
    with autocast() if amp else contextlib.nullcontext():
        text = model.embed_captions([c for c, v in captions if v in kept])              # (K, E)
    owner = torch.tensor([kept[v] for _, v in captions if v in kept])                    # (K,) each caption's video
    sim = model.similarity(tree(lambda x: x.to(device), videos), text).float().cpu()     # (N, K)
    return dict(retrieval_metrics(sim, owner), **({"skipped": len(captions) - len(owner)} if len(owner) < len(
        captions) else {}))


def retrieval_metrics(sim, owner):
    """sim (N videos, K captions), owner (K,) each caption's video -> R@1, R@5, R@10, median and mean rank both ways,
    as CLIP4Clip's evaluation: text to video ranks a caption's video among the N; video to text scores each video by
    its best caption and ranks the query's own. A tie counts against the query (alike scores rank last)."""
    N, K = sim.shape
    t2v = (sim >= sim[owner, torch.arange(K)]).sum(0)                        # (K,) videos as high or higher
    best = sim.new_full((N, N), -math.inf).scatter_reduce(1, owner.expand(N, K), sim, "amax")   # (N, N) by video
    v2t = (best >= best.diagonal()[:, None]).sum(1)                          # (N,) videos as high or higher
    figures = dict(videos=N, captions=K, chance_r1=100 / N)
    for way, ranks in (("t2v", t2v), ("v2t", v2t)):
        figures.update({f"{way}_r{k}": 100 * (ranks <= k).float().mean().item() for k in (1, 5, 10)})
        figures.update({f"{way}_median_rank": statistics.median(ranks.tolist()),
                        f"{way}_mean_rank": ranks.float().mean().item()})
    return figures


@torch.no_grad()
def embed_videos(model, loader, device, autocast, desc, skips, stats, amp):
    """The loader's videos -> (the method's embed_videos of each, test views averaged, in video order; indices)."""
    model.eval()
    parts, index = [], []
    for video, _, i in progress(data.batches(loader, skips, desc), total=len(loader), desc=desc, leave=False):
        B, V = video.shape[:2]
        video = data.normalise(video.to(device, non_blocking=True), *stats)
        with autocast() if amp else contextlib.nullcontext():
            state = model.embed_videos(video.flatten(0, 1))                              # (B*V, ...)
        parts.append(tree(lambda x: x.float().view(B, V, *x.shape[1:]).mean(1).cpu(), state))   # (B, ...)
        index.append(i)
    (videos,), index = in_video_order(index, parts)
    return videos, index


def in_video_order(index, *parts):
    """The batches of a test: index [(B,) videos' indices] and parts, each a list of batches (tensors, or method
    video states) -> (each part whole, index), in video order; under torchrun, every process's shard gathered."""
    shards = gather((index, parts))
    index = torch.cat([i for shard in shards for i in shard[0]])
    order = index.argsort()
    return [tree(lambda *x: torch.cat(x)[order], *[p for shard in shards for p in shard[1][k]])
            for k in range(len(parts))], index[order]


def tree(fn, *states):
    """fn on each tensor of a method's video state: a tensor, or a tuple of them (X-CLIP's video and context)."""
    return tuple(map(fn, *states)) if isinstance(states[0], tuple) else fn(*states)


# ---- 7. The protocols' results (data.protocol_data picks what each trains and tests on) ----------------------
def summarise(protocol, results):
    """results {title: [metrics of each shot seed]} -> (figures, result line): the protocol's headline or the test's."""
    if len(results) == 1 and protocol != "base2novel":
        (title, ms), = results.items()
        figures = {k: ms[0][k] if isinstance(ms[0][k], int) and len({m[k] for m in ms}) == 1 else
                   statistics.fmean(m[k] for m in ms) for k in ms[0] if isinstance(ms[0][k], (int, float))}
        return figures, f"{title} {format_metrics(figures)}"
    mean = {t: {k: statistics.fmean(m[k] for m in ms) for k in ("top1", "top5")} for t, ms in results.items()}
    runs = len(next(iter(results.values())))
    over = f" (averaged over {runs} shot seeds)" if runs > 1 else ""
    if protocol == "base2novel":
        b = statistics.fmean(m["top1"] for t, m in mean.items() if t.endswith("base"))
        n = statistics.fmean(m["top1"] for t, m in mean.items() if t.endswith("novel"))
        hm = harmonic_mean(b, n)
        return dict(base=b, novel=n, hm=hm), f"base {b:.1f}  novel {n:.1f}  HM {hm:.1f}{over}"
    top1, top5 = [m["top1"] for m in mean.values()], [m["top5"] for m in mean.values()]
    figures = dict(top1=statistics.fmean(top1), top1_std=statistics.pstdev(top1), top5=statistics.fmean(top5),
                   top5_std=statistics.pstdev(top5))
    return figures, (f"mean over {len(mean)} test sets: top1 {figures['top1']:.1f} ± {figures['top1_std']:.1f}  "
                     f"top5 {figures['top5']:.1f} ± {figures['top5_std']:.1f}{over}")


def harmonic_mean(base, novel):
    """Base-to-novel's headline: 2BN / (B + N), from the seed-averaged accuracies (ViFi-CLIP README)."""
    return 2 * base * novel / (base + novel) if base + novel else 0.0


# ---- 8. One run, and main -----------------------------------------------------------------------------------
def build_model(args, method, seed):
    """The method's model on its CLIP, with the weights it tests or starts from -> (model, ckpt, device settings)."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device, autocast, dtype = device_and_precision(args)
    if args.threads or WORLD > 1:   # under torchrun, the processes of a machine share its cores
        torch.set_num_threads(args.threads or PROCESS_CORES)
    clip = load_clip(args)
    args.size = args.size or clip.visual.image_size[0]
    model = method.build(clip, args)
    ckpt = load_weights(model, method, tested, args) if (tested := tested_path(args, seed)) else None
    share_weights(model)
    return model, ckpt, (device, autocast, dtype)


def run(args, method, seed, out):
    """Build, train (unless --eval-only) and test one model in the folder `out`; -> {test title: metrics}."""
    model, ckpt, (device, autocast, dtype) = build_model(args, method, seed)
    train_samples, names, tests = data.protocol_data(args, seed, ckpt and ckpt.get("classes"))
    if train_samples is None and not args.eval_only:
        raise SystemExit("give the training videos with --train-list, or test a model with --eval-only --weights")
    model.to(device)
    if args.compile:   # in place (nn.Module.compile): every call of the model, a method's train_step's too, compiled
        model.compile()
    describe(args, model, seed, train_samples, names, tests[0], device, dtype)
    os.makedirs(out, exist_ok=True)
    skips = data.SkipLog(out)
    if args.eval_only:
        weights, trained = tested_weights(args, seed, ckpt)
    else:
        train(args, model, train_samples, names, tests[0], device, autocast, dtype, out, skips)
        weights, trained = os.path.join(out, "last.pt"), args.epochs
    results, views = {}, view_count(args)
    for title, samples, test_names in tests:   # the recipe's views, fused as the method's official test fuses them
        loader = make_loader(args, device, samples, views=True)
        m = judge(args, model, loader, test_names, device, autocast, f"{title} ({views})", skips)
        record_test(args, out, seed, title, views, len(samples), weights, trained, m, skips)
        results[title] = m
    return results


def main(argv=None):
    """One command: a run of --method on --protocol over its shot seeds, then its result; or another mode."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, method = get_args(argv)
    if args.compare:
        return compare(args.compare)
    if args.method == "all" or "," in args.method:
        return run_all(argv, METHODS if args.method == "all" else args.method.split(","))
    start_processes(args)
    if args.predict or args.benchmark is not None or args.search or args.export_hf:
        return use_model(args, method)   # one video, a sentence, a speed test or an export: no run folder
    if (args := begin(args)) is None:   # the run's folder (new, or the run it continues) and data; None: nothing to do
        return None
    if args.embed:
        return embed(args, method)
    results = {}
    for seed in args.shot_seeds:
        for title, m in run(args, method, seed, seed_folder(args.out, seed, args)).items():
            results.setdefault(title, []).append(m)
    figures, result_line = summarise(args.protocol, results)
    finish(args, figures, result_line, results)   # the result in metrics.jsonl, and where everything went
    return results


# ==============================================================================================================
# What makes this script a tool
# ==============================================================================================================

# torchrun's RANK and WORLD_SIZE: this process and the count (0 and 1 without); RUN, the run in progress (for Ctrl-C).
RANK, WORLD, LOCAL_RANK, RUN = 0, 1, 0, None
# The cores this process may use: all of them, or under torchrun an equal share per process on the machine.
PROCESS_CORES = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
# Flags that mean something only under some protocols: under another they are refused, not ignored.
PROTOCOL_FLAGS = dict(shots=("few-shot", "base2novel"), shot_seeds=("few-shot", "base2novel"), base_classes=(
    "base2novel",), unseen_only=("zero-shot",), class_subsets=("zero-shot",), val_classes=("zero-shot",))
# Dense peak TFLOP/s of common GPUs in bf16/fp16 (and fp32), from their data sheets, for MFU (else --peak-tflops).
PEAK_TFLOPS = {"H200": (989, 67), "H100": (989, 67), "A100": (312, 19.5), "L40S": (362, 91.6), "A10G": (70, 31),
               "L4": (121, 30), "RTX 4090": (165, 82.6), "RTX 3090": (71, 35.6), "V100": (125, 15.7), "T4": (65, 8.1)}
RUNS = "runs"   # where the run folders go
# What --resume takes from this command line, not from the run it continues (the decoding workers are this machine's).
RUN_CONTROL = ("resume", "eval_only", "overwrite", "out", "explicit", "run", "argv", "workers", "dist_timeout")
# Settings renamed since: a config.json or checkpoint written before still resumes, under the new names.
RENAMED = dict(step_batch="micro_batch", batch_size="global_batch", schedule_accum="official_accum")
# Settings in which two runs may differ without learning differently: where they are, what ran them, how fast.
BOOKKEEPING = (*RUN_CONTROL, "command", "resumed", "started", "versions", "method", "protocol", "embedded",
               "threads", "device", "compile", "loader_timeout", "save_every", "embedded_dir", "demo_replaced")
# Between runs of different methods, only these: their recipes differ in everything else by design.
HEADLINE = ("model", "pretrained", "frames", "epochs", "lr", "global_batch", "weight_decay", "seed", "shots",
            "clips_per_video", "eval_only")


def at_least(low):
    """An argparse type: an integer >= low (argparse then refuses --frames 0 in one line, naming the flag)."""
    def parse(text):
        if text.lstrip("-").isdecimal() and int(text) >= low:
            return int(text)
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return parse


def method_names(text):
    """An argparse type: a method of METHODS, all, or several as a,b."""
    if wrong := [m for m in text.split(",") if m not in METHODS] if text != "all" else []:
        raise argparse.ArgumentTypeError(f"no method {wrong[0]!r}; choose from {', '.join(METHODS)}, all, or a,b")
    return text


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, with the closest flag to a mistyped one, not the whole usage."""
        typed = re.findall(r"unrecognized arguments: (\S+)", message)
        close = typed and difflib.get_close_matches(typed[0].split("=")[0], self._option_string_actions, 1)
        self.exit(2, f"error: {message}{f' (did you mean {close[0]}?)' if close else ''}; --help lists every flag\n")


def get_args(argv=None):
    # --help is added last: the first parse, which only looks for --method, must not answer it with one flag
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("--method", type=method_names, default="vificlip", help=f"the method to train: "
                   f"{', '.join(METHODS)}; all, or a,b: each in a run folder of its own, then a table of the results")
    method_name = p.parse_known_args(argv)[0].method   # all, a,b: main() runs each; this parser serves --help
    method_name = (METHODS[0] if method_name == "all" else method_name).split(",")[0]
    method = importlib.import_module(method_name)
    p.add_argument("--recipe", choices=sorted(getattr(method, "VARIANTS", {})), help="one of the method's other "
                   "official settings (VARIANTS in its file); default: the one named like --protocol, else RECIPE")
    p.add_argument("--protocol", choices=PROTOCOLS, default="supervised", help=(
        "supervised: train and test on the same classes. zero-shot: test on the test data's own classes (another "
        "dataset, the embedded set's held-out ones), over every --split. few-shot: --shots videos per class. "
        "base2novel: --shots videos of each base class per --shot-seeds; base and novel tested apart, and their "
        "harmonic mean. retrieval: rank the --val-list videos for each caption and the captions for each video "
        "(MSR-VTT's csv, MSVD's test_list.txt, 'path<TAB>caption' lines): R@1, R@5, R@10, median, mean rank"))
    g = p.add_argument_group("model")
    g.add_argument("--model", help="open_clip architecture, e.g. ViT-B-16 (the papers'), ViT-L-14, or tiny / "
                                   "tiny-64 (offline configs for CPUs); default: tiny on the embedded data")
    g.add_argument("--pretrained", help="CLIP weights: a tag (openai), a local file (to work offline), synthetic (a "
                   "tiny CLIP pretrained here on still shapes; the embedded default) or none (random initialisation)")
    g.add_argument("--quick-gelu", action="store_true", default=None, help="OpenAI weights in a file not *openai*")
    g.add_argument("--weights", help="a checkpoint to start from: ours (runs/*/last.pt) or the authors' released one")
    g = p.add_argument_group("data (default: the embedded synthetic set)")
    g.add_argument("--train-list", help='the training videos as published: a "path label" list (mmaction2, X-CLIP), '
                   "UCF101's ucfTrainTestlist or trainlist0N.txt, HMDB51's split folder, a Kinetics CSV, an SSv2 JSON")
    g.add_argument("--val-list", help="the test videos, same formats: 1 view after each epoch, then all views")
    g.add_argument("--data-root", default="", help="folder the videos of --train-list are in")
    g.add_argument("--val-root", help="folder the videos of --val-list are in (default: --data-root)")
    g.add_argument("--classes", help='"id,name" CSV of a plain list\'s classes (--predict: also "name1,name2,...")')
    g.add_argument("--val-classes", help='"id,name" CSV for a plain --val-list whose classes differ (zero-shot)')
    g.add_argument("--split", type=int, nargs="+", help="UCF101/HMDB51 official split(s): training uses the "
                   "first, the final test runs on each and reports mean and std (default 1; zero-shot: 1 2 3)")
    g.add_argument("--class-words", action=argparse.BooleanOptionalAction, help="turn CamelCase names into words "
                   "(UCF101's ApplyEyeMakeup -> Apply Eye Makeup), as Open-VCLIP does; default from the recipe")
    g.add_argument("--embedded-dir", default="data/embedded", help="where the synthetic set is generated (once)")
    g.add_argument("--frames", type=at_least(1), help="frames per clip (T); more frames cost time linearly")
    g.add_argument("--sampling", choices=["segment", "dense"], help="segment: one frame per equal part (TSN, "
                   "X-CLIP's code); dense: T frames --stride apart at 30 fps (PySlowFast's, Open-VCLIP)")
    g.add_argument("--stride", type=at_least(1), help="frame stride of dense sampling, counted at 30 fps")
    g.add_argument("--crop", choices=["tsn", "slowfast"], help="resizing and cropping, train and test: tsn (X-CLIP's "
                   "multi-scale crops) or slowfast (Open-VCLIP's short-side jitter); default from the recipe")
    g.add_argument("--size", type=at_least(8), help="input side in pixels; default: the CLIP's own")
    g.add_argument("--workers", type=at_least(0), default=max(0, PROCESS_CORES - 1), help="decoding processes, one "
                   "FFmpeg thread each; default: this process's cores but the one that trains; fewer if memory is low")
    g.add_argument("--clips-per-video", type=at_least(1), default=1, help="K clips cut from each decoded video, "
                   "each augmented its own way (repeated augmentation); K times the steps an epoch: --epochs / K")
    g.add_argument("--skip-bad-videos", action="store_true", help="leave out videos that cannot be decoded, listed "
                   "in the run's skipped.txt and counted in the epoch lines and the tests. Default: stop, naming it")
    g.add_argument("--loader-timeout", type=at_least(1), default=600, help="seconds to wait for one batch from the "
                   "decoding workers before stopping the run (a worker stuck on a video)")
    g.add_argument("--threads", type=at_least(0), help="CPU threads of the model's operations in the main process "
                   "(0: PyTorch's default, one per core); 1 suits small models beside decoding workers")
    g = p.add_argument_group("optimisation (defaults: the method's RECIPE)")
    g.add_argument("--epochs", type=at_least(1))
    g.add_argument("--batch-size", type=at_least(1), dest="micro_batch", help="videos per forward pass of one "
                   "process (default 8); lower it if memory runs short: accumulation keeps the recipe's batch")
    g.add_argument("--accum-steps", type=at_least(1), help="forward passes per optimizer step; default: enough to "
                   "reach the recipe's global batch with --batch-size on every process")
    g.add_argument("--lr", type=float, help="peak learning rate (after warm-up); the recipe's is for its global batch")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0: off)")
    g.add_argument("--mixup", type=float, help="mixup Beta alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="cutmix Beta alpha (0: off)")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--save-every", type=at_least(0), default=0, help="also checkpoint every N optimizer steps, for a "
                   "run killed mid-epoch to resume there (0: at epoch ends only; 500 where an epoch takes hours)")
    g.add_argument("--steps-per-epoch", type=at_least(1), help="cap the optimizer steps per epoch (quick checks)")
    g.add_argument("--val-every", type=at_least(0), help="validate (1 view per test video) every N epochs; 0: only "
                   "the final test. Raise it when the test set is large next to the training set")
    g = p.add_argument_group("protocols (see --protocol)")
    g.add_argument("--shots", type=at_least(1), help="videos per class drawn for training (few-shot 2, 4, 8, 16; "
                   "base2novel 16); without it a released split trains as it is (train1_few_shot_K.txt, the papers')")
    g.add_argument("--shot-seeds", type=int, nargs="+", help="a training run per draw of --shots videos, or per file "
                   "of a --train-list with {seed} (fs_base_s{seed}_train.txt), averaged (default 1; base2novel 1 2 3)")
    g.add_argument("--base-classes", help='base2novel: "id,name" CSV of the base classes (default: the more '
                   "frequent half of the training data, ViFi-CLIP's rule). A plain training list whose labels all "
                   "fall below its count is read as labelled by it, as ViFi-CLIP's released base lists are")
    g.add_argument("--unseen-only", action="store_true", help="zero-shot: only the classes new to training (K600: 220)")
    g.add_argument("--class-subsets", nargs="+", metavar="CSV|NxSIZE", help='zero-shot: test on subsets of the '
                   'test classes, given as "id,name" CSVs or drawn from --seed as e.g. 3x160 (the K600 protocol)')
    g = p.add_argument_group("evaluation and modes")
    g.add_argument("--test-clips", type=at_least(1), help="temporal clips per video in the final test")
    g.add_argument("--test-crops", type=int, choices=[1, 3], help="spatial crops per clip in the final test")
    g.add_argument("--eval-only", action="store_true", help="only run the final test: of --weights, of --resume "
                   "RUN, or of the CLIP as pretrained (with what the method adds at its initialisation)")
    g.add_argument("--predict", metavar="VIDEO", help="print one video's most likely classes and exit: with "
                   "the weights of --resume [RUN] or --weights (else the stand-in CLIP), --classes (else the run's)")
    g.add_argument("--benchmark", type=at_least(1), nargs="?", const=20, metavar="STEPS", help="time STEPS (20) "
                   "training steps on random input and exit: clips/s, FLOPs, MFU, memory; the loader's of --train-list")
    g.add_argument("--embed", action="store_true", help="write an embedding per video of --val-list (test views "
                   "averaged) to the run's embeddings.pt for --search: of --weights, --resume RUN or the bare CLIP")
    g.add_argument("--search", metavar="SENTENCE", help="print the --top-k videos of --embeddings nearest a sentence")
    g.add_argument("--embeddings", metavar="FILE", help="an embeddings.pt written by --embed (for --search)")
    g.add_argument("--top-k", type=at_least(1), default=5, help="how many videos --search prints")
    g.add_argument("--compare", nargs="+", metavar="RUN", help="print a table of run folders (globs: runs/xclip-*) "
                   "and exit: method, protocol, the settings that differ, epochs, results with standard errors")
    g.add_argument("--export-hf", nargs=2, metavar=("RUN", "OUT"), help="write RUN's model (a run, a checkpoint or "
                   "any --weights) to OUT as transformers' XCLIPModel.from_pretrained(OUT) reads it (X-CLIP only)")
    g.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for --benchmark's MFU (known for common GPUs)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="the run's folder: config.json, metrics.jsonl, last.pt (default: a new "
                                 "runs/METHOD-PROTOCOL[-N], -eval for --eval-only; a finished run is never reused)")
    g.add_argument("--overwrite", action="store_true", help="let --out replace the run already in that folder")
    g.add_argument("--resume", nargs="?", const="auto", metavar="RUN", help="continue a run (folder or last.pt) with "
                   "its settings but the flags given; no RUN: the latest of --method, --protocol; --eval-only tests it")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (bf16, else fp16)")
    g.add_argument("--compile", action="store_true", help="compile the model with torch.compile: faster steps on a "
                   "GPU after a minute or more of compiling (again for each new class list); seldom on a CPU")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dist-timeout", type=at_least(1), default=30, help="torchrun only: minutes a process waits for "
                   "the others (one stuck or dead) before it stops; raise it if rank 0's set-up takes longer")
    shared = set(vars(p.parse_args([])))
    if hasattr(method, "add_args"):
        method.add_args(p.add_argument_group(f"{method_name} options"))
    p.add_argument("-h", "--help", action="help", help="show every flag and exit (a method's own flags: with --method)")
    args = p.parse_args(argv)
    modes = (args.eval_only, args.predict, args.benchmark is not None, args.embed, args.search, args.export_hf)
    if sum(map(bool, modes)) > 1:
        raise SystemExit("--eval-only, --predict, --benchmark, --embed, --search and --export-hf are different runs: "
                         "give one")
    if any(modes[1:3] + modes[4:]) and (args.method == "all" or "," in args.method):
        raise SystemExit(f"--method {args.method} trains and tests each method in turn; --predict, --benchmark, "
                         f"--search and --export-hf take one method")
    if args.export_hf:   # the model --eval-only would test: RUN's weights, and a run's own settings
        if args.weights:
            raise SystemExit("--export-hf RUN OUT exports the weights of RUN: leave --weights out")
        args.weights = args.export_hf[0]
    if args.predict and args.resume:   # --predict --resume RUN: that run's checkpoint, as --eval-only tests it
        if args.weights:
            raise SystemExit("--predict takes the weights of --resume RUN or of --weights FILE: give one of them")
        args.weights = latest_run(method_name, args.protocol, trained=True) if args.resume == "auto" else args.resume
        if args.weights is None:
            raise SystemExit(f"--resume: no {method_name} {args.protocol} run in {RUNS}/ has a checkpoint; name one")
        if args.resume == "auto":
            print(f"--resume: {args.weights}, the latest {method_name} {args.protocol} run with a checkpoint")
    if args.search:   # the model that made the embeddings: its method, CLIP and weights
        if not args.embeddings:
            raise SystemExit("--search needs --embeddings FILE, an embeddings.pt written by --embed")
        made = read_embeddings(args.embeddings)
        if (maker := made.get("method")) != method_name:
            raise SystemExit(f"{args.embeddings} was made by --method {maker}: add --method {maker}")
        args.weights = made["weights"]
        vars(args).update({k: v for k, v in made["settings"].items() if getattr(args, k, None) is None})
    if args.weights and os.path.isdir(args.weights) and not hf_weights(method, args.weights):   # a run: its last.pt
        if not (found := checkpoints(args.weights)):
            raise SystemExit(f"{args.weights}: this folder holds no checkpoint (last.pt); give a training run's folder")
        args.weights = found[0]
    args.own = sorted(set(vars(args)) - shared)   # the method's own options
    settings(args, method, args.own)   # the recipe's values for every setting not given
    p.set_defaults(**dict.fromkeys(vars(args), unset := object()))   # the flags given: --resume keeps the rest
    args.explicit = sorted(k for k, v in vars(p.parse_args(argv)).items() if v is not unset)
    args.run, args.argv = None, list(argv if argv is not None else sys.argv[1:])   # place_run() sets run
    args.eval_only = args.eval_only or args.embed   # --embed trains nothing either: it runs as a test does
    for key, protocols in PROTOCOL_FLAGS.items():
        if key in args.explicit and args.protocol not in protocols:
            raise SystemExit(f"--{key.replace('_', '-')} means something only under --protocol {' or '.join(protocols)}"
                             f", not {args.protocol}: add --protocol {protocols[0]}, or leave it out")
    return args, method


# ---- The device, the CLIP, and what a run prints: its lines, each epoch's count and bar ------------------------
def device_and_precision(args):
    """(device, autocast, dtype): --device (auto: cuda, mps, cpu); on CUDA bf16 autocast (else fp16, loss-scaled)."""
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else
                          "mps" if torch.backends.mps.is_available() else "cpu")
    dtype = None if device.type != "cuda" or args.no_amp else \
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else contextlib.nullcontext, dtype


def load_clip(args):
    """The CLIP of --model and --pretrained, or one line why not; under torchrun rank 0 fills the cache first."""
    wait = functools.partial(torch.distributed.barrier, **(
        dict(device_ids=[LOCAL_RANK]) if WORLD > 1 and comm_device().type == "cuda" else {}))
    try:
        if RANK > 0:
            wait()
        clip = common.load_clip(args.model, args.pretrained, args.quick_gelu)
        if RANK == 0 and WORLD > 1:
            wait()
    except (ValueError, RuntimeError) as e:   # an unknown architecture or tag, no network, a broken weights file
        raise SystemExit(f"--model {args.model} --pretrained {args.pretrained}: {e}") from None
    args.quick_gelu = clip.quick_gelu
    if not args.pretrained and not args.weights and not args.model.startswith("tiny"):
        print(f"note: {args.model} starts from random weights; the papers start from --pretrained openai")
    return clip


def view_count(args):
    """The test's views in words: "4 clips x 3 crops", "1 clip x 1 crop"."""
    return " x ".join(f"{n} {w}{'s' * (n > 1)}" for n, w in ((args.test_clips, "clip"), (args.test_crops, "crop")))


def tested_path(args, seed):
    """The checkpoint a run starts from or tests: --weights, or --eval-only --resume RUN's (a resumed run: none)."""
    return args.weights if not args.run else os.path.join(seed_folder(args.run, seed, args), "last.pt") if \
        args.eval_only else None


def describe(args, model, seed, train_samples, names, val, device, dtype):
    seen = "" if args.eval_only or not train_samples else f"{len(train_samples)} train videos ({len(names)} classes), "
    trainable = "" if args.eval_only else f"{common.count_params(model, trainable=True) / 1e6:.2f}M trainable of "
    print(f"{args.method}, {args.protocol}{f' (shot seed {seed})' if len(args.shot_seeds) > 1 else ''}: "
          f"{trainable}{common.count_params(model) / 1e6:.2f}M parameters, {seen}{len(val[1])} {val[0]} videos "
          f"({len(val[2])} {'captions' if args.protocol == 'retrieval' else 'classes'}), {args.frames} frames "
          f"at {args.size}px, device {device}" + (f" ({dtype})" if dtype else ""))


def tested_weights(args, seed, ckpt):
    """An --eval-only run: say what it tests -> (the weights, as its metrics lines name them; epochs trained)."""
    tested, trained = tested_path(args, seed), ckpt and ckpt["epoch"]
    held = f" (after epoch {trained} of its {ckpt['args'].get('epochs')})" if ckpt else ""
    print(f"testing {tested}{held}" if tested else f"testing the CLIP as pretrained "
          f"({args.pretrained or 'random weights'}), and whatever {args.method} adds to it at its initialisation: no "
          f"video training (give --weights or --resume RUN to test a trained model)")
    return tested or f"pretrained {args.pretrained or 'none'}, no video training", trained


def record_test(args, out, seed, title, views, videos, weights, trained, m, skips):
    left_out = f", {m['skipped']} left out as bad (listed in {skips.path})" if m.get("skipped") else ""
    print(f"{title} ({views}, {videos} videos{left_out}): {format_metrics(m)}")
    append_metrics(os.path.join(out, "metrics.jsonl"), dict(test=title, protocol=args.protocol, views=views,
                   weights=weights, trained_epochs=trained, **m, **({"shot_seed": seed} if args.shots else {})))


def finish(args, figures, result_line, results):
    """The run's result line in metrics.jsonl (after a summary over several tests or seeds), then its last lines."""
    record = dict(result=result_line, protocol=args.protocol, trained_epochs=None if args.eval_only else args.epochs,
                  **figures)
    if len(args.shot_seeds) > 1 or len(results) > 1:
        print(f"{args.protocol}: {result_line}")
        record["summary"] = args.protocol
    append_metrics(os.path.join(args.out, "metrics.jsonl"), record)
    closing_lines(args, result_line)


class EpochMeter:
    """An epoch's count (steps, clips, loss sum, seconds waiting for data); its bar; a partial checkpoint resumes it."""
    def __init__(self, args, epoch, steps_per_epoch, device, skips, partial=None):
        p = partial or dict(steps=0, seen=0, loss_sum=torch.zeros(()))
        self.epoch, self.steps, self.seen, self.loss_sum = epoch, p["steps"], p["seen"], p["loss_sum"].to(device)
        self.tic, self.resumed_at, self.waited, self.skipped = time.perf_counter(), self.seen, [0.0], skips.count
        self.bar = progress(total=steps_per_epoch, initial=self.steps, desc=f"epoch {epoch + 1}/{args.epochs}")

    def add(self, loss, clips, opt):
        """Count a step's clips, and its loss if it was taken; -> whether it was (not when the loader ran out)."""
        self.seen += clips
        if loss is None:
            return False
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        if not self.bar.disable:   # on a terminal only: reading the loss waits for the GPU
            elapsed = time.perf_counter() - self.tic
            self.bar.update()
            self.bar.set_postfix(loss=f"{self.loss_sum.item() / self.steps:.3f}", lr=f"{opt[1].get_last_lr()[0]:.2e}",
                                 clips_s=f"{WORLD * (self.seen - self.resumed_at) / elapsed:.1f}",
                                 data=f"{self.waited[0] / elapsed:.0%}")
        return True

    def state(self):   # what a checkpoint from within the epoch keeps of the count
        return dict(steps=self.steps, seen=self.seen, loss_sum=self.loss_sum.cpu())

    def close(self, opt):
        """-> the epoch's record: its mean loss, last learning rate, share of time spent waiting for data."""
        self.bar.close()
        self.trained = time.perf_counter() - self.tic
        return dict(epoch=self.epoch + 1, loss=self.loss_sum.item() / max(self.steps, 1), lr=opt[1].get_last_lr()[0],
                    data_wait=self.waited[0] / self.trained)


def diverged(e, meter, args, out, dtype):
    return SystemExit(f"epoch {meter.epoch + 1}, step {meter.steps + 1}: {e}. {os.path.join(out, 'last.pt')} is the "
                      f"last good checkpoint, kept: lower --lr (now {args.lr:g}){' or add --no-amp' if dtype else ''}, "
                      f"then --resume {out}")


def end_epoch(record, meter, args, out, model, opt, names, skips):
    """The epoch's record completed over all processes (time, clips/s, bad videos), printed, checkpointed, appended."""
    seen, left_out = sum_over_processes(meter.seen - meter.resumed_at), sum_over_processes(skips.count - meter.skipped)
    record.update(seconds=meter.trained, clips_per_s=seen / meter.trained)
    shown, val = "", ""
    if "val" in record:
        record["val_seconds"] = time.perf_counter() - meter.tic - meter.trained
        shown, val = f"  val {format_metrics(record['val'])}", f" + {record['val_seconds']:.0f}s val"
    if left_out:
        record["skipped"] = int(left_out)
        shown += f"  skipped {record['skipped']} bad videos ({skips.path})"
    print(f"epoch {record['epoch']}/{args.epochs}  loss {record['loss']:.3f}{shown}  ({record['seconds']:.0f}s{val}, "
          f"{record['clips_per_s']:.0f} clips/s, {record['data_wait']:.0%} waiting for data)", flush=True)
    save_training(out, model, opt, record["epoch"], names, args, record)
    append_metrics(os.path.join(out, "metrics.jsonl"), record)


def format_metrics(m):
    """top-1 (± standard error, chance), mean-class, top-5 from 50 classes, twins; or retrieval's ranks both ways."""
    if "t2v_r1" in m:
        return "  ".join(f"{way} R@1 {m[f'{way}_r1']:5.1f} R@5 {m[f'{way}_r5']:5.1f} R@10 {m[f'{way}_r10']:5.1f} MdR "
                         f"{m[f'{way}_median_rank']:g} MnR {m[f'{way}_mean_rank']:.1f}" for way in ("t2v", "v2t")) + \
            f"  (chance R@1 {m['chance_r1']:.1f})"
    return (f"top1 {m['top1']:5.1f} ±{m['top1_se']:.1f} (chance {100 / m['classes']:.1f})  mean-class "
            f"{m['mean_class']:5.1f}" + (f"  top5 {m['top5']:5.1f}" if m["classes"] >= 50 else "")
            + (f"  twins {m['twins']:5.1f} ±{m['twins_se']:.1f} (chance 50)" if "twins" in m else ""))


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; none in a log file or pipe, where each epoch's plain line says as much."""
    return tqdm(iterable, disable=not sys.stderr.isatty() or RANK > 0, dynamic_ncols=True, **kwargs)


# ---- The model without a run folder: --predict, --search, --benchmark; and --embed ---------------------------
def use_model(args, method):
    if args.predict and (WORLD > 1 or not os.path.isfile(args.predict)):
        raise SystemExit("--predict reads one video on one device: run it without torchrun" if WORLD > 1 else
                         f"--predict {args.predict}: " + ("a folder; give one video file" if os.path.isdir(
                             args.predict) else "no such file"))
    if args.export_hf and not hasattr(method, "save_hf"):
        raise SystemExit(f"--export-hf: only X-CLIP has a transformers class (XCLIPModel), not --method {args.method}")
    model, ckpt, (device, autocast, dtype) = build_model(args, method, None)
    if args.export_hf:
        return export_hf(args, method, model)
    if args.predict:
        return predict(args, model, method, device, autocast, ckpt)
    if args.search:
        return search(args, model, device, autocast)
    return benchmark(args, model, device, autocast, dtype)


def export_hf(args, method, model):
    """--export-hf RUN OUT: the model --eval-only would test, written by the method's save_hf for transformers."""
    method.save_hf(model, out := args.export_hf[1])
    print(f"--export-hf: wrote {os.path.join(out, 'config.json')} and model.safetensors, the weights of "
          f"{args.weights}; in transformers: XCLIPModel.from_pretrained({out!r})")
    return out


def predict(args, model, method, device, autocast, ckpt):
    """The most likely classes of one video: the test's views, fused as the method's own test fuses them."""
    try:   # the test's views (V, T, 3, S, S)
        video = make_loader(args, device, [(args.predict, 0)], views=True).dataset[0][0]
    except data.VideoError as e:
        raise SystemExit(f"--predict {str(e).split('; check that')[0]}: give a video file that plays") from None
    if not args.classes and not (ckpt or {}).get("classes"):
        raise SystemExit("give the class names: --classes classes.csv or --classes 'name one,name two,...', or the "
                         "weights of a trained run, which know its classes: --resume RUN or --weights FILE")
    names = ckpt["classes"] if not args.classes else data.load_classes(args.classes) if os.path.isfile(
        args.classes) else [n.strip() for n in args.classes.split(",") if n.strip()]   # a CSV, or "a,b,c"
    model.set_classes(names)
    model.to(device).eval()
    video = data.normalise(video.to(device), *STATS[args.mean])
    with torch.no_grad(), autocast() if args.test_amp else contextlib.nullcontext():
        scores = fuse(model(video).float()[None], args.test_fusion)[0]               # (C,)
    probs = scores if args.test_fusion == "softmax" else scores.softmax(-1)        # summed logits, ranked the same
    made = args.weights or f"none: the CLIP as pretrained ({args.pretrained or 'random'}), no video training"
    embedded = os.path.abspath(args.predict).startswith(os.path.abspath(args.embedded_dir) + os.sep)
    top = [f"  {100 * p:5.1f}%  {names[c]}" for p, c in zip(*probs.topk(min(5, len(names))))]
    print(f"{args.predict} ({view_count(args)}; weights {made}):", *top, sep="\n")
    if args.model.startswith("tiny") and not embedded:
        print(f"note: --model {args.model} knows only the embedded set's synthetic shapes (and, trained, their "
              f"motions); for real videos use --model ViT-B-16 --pretrained openai, or weights trained on your classes")


def embed(args, method):
    """--embed: embeddings.pt, each --val-list video's unit embedding (X-CLIP: the video's), path and captions."""
    if not args.val_list:
        raise SystemExit("--embed: give the videos to embed with --val-list (any list a test takes)")
    seed, path = args.shot_seeds[0], os.path.join(args.out, "embeddings.pt")
    model, ckpt, (device, autocast, dtype) = build_model(args, method, seed)
    samples, said = data.read_test_videos(args.val_list, args.val_root or args.data_root, (args.split or [1])[0])
    weights = tested_path(args, seed)
    print(f"{args.method}: embedding the {len(samples)} videos of {args.val_list} ({view_count(args)}, {args.frames} "
          f"frames at {args.size}px) with " + (weights or f"the CLIP as pretrained ({args.pretrained or 'random'})"))
    videos, index = embed_videos(model.to(device), make_loader(args, device, samples, views=True), device, autocast,
                                 "embed", data.SkipLog(args.out), STATS[args.mean], args.test_amp)
    made = dict(paths=[samples[i][0] for i in index.tolist()], method=args.method, weights=weights,
                captions=said and [said[i] for i in index.tolist()], views=view_count(args),
                settings={k: getattr(args, k) for k in (*INHERITED, "pretrained", *args.own)})
    if RANK == 0:
        save_checkpoint(path, dict(made, embeddings=F.normalize(videos[0] if isinstance(videos, tuple) else videos,
                                                                dim=-1)))
    closing_lines(args, f"{path} ({len(made['paths'])} videos): search them with --search SENTENCE --embeddings {path}")
    return {"embedded": [made]}


def search(args, model, device, autocast):
    """--search: the --top-k videos closest to a sentence, by cosine. X-CLIP and OmniCLIP's video prompts use the
    caption's embedding alone: their test's per-pair scores would need each video's context and a pass per video."""
    stored = read_embeddings(args.embeddings)
    model.to(device).eval()
    with torch.no_grad(), autocast() if args.test_amp else contextlib.nullcontext():
        text = F.normalize(model.embed_captions([args.search]).float(), dim=-1)[0]       # (E,)
    tic = time.perf_counter()
    scores = stored["embeddings"].float().to(device) @ text                              # (N,)
    top = scores.topk(min(args.top_k, len(scores)))
    print(f"{args.search!r}: the {len(top[0])} closest of the {len(scores)} videos of {args.embeddings} (searched in "
          f"{time.perf_counter() - tic:.3f} s; made by {stored['weights'] or 'the CLIP as pretrained'}):")
    captions = stored.get("captions")   # what the videos' own list says of them, to judge the ranking by
    for score, i in zip(*top):
        print(f"  {score:6.3f}  {stored['paths'][i]}" + (f"  ({' | '.join(captions[i])})" if captions else ""))
    return [(stored["paths"][i], score.item()) for score, i in zip(*top)]


def benchmark(args, model, device, autocast, dtype, warmup=3):
    """--benchmark: training steps on random input (400 classes); with --train-list, the data loader's speed too."""
    model.set_classes([f"class {i}" for i in range(400)])
    model.to(device).train()
    opt = make_optimizer(args, model, device, dtype, args.benchmark)   # the training step's, at accumulation 1
    video = torch.randn(args.micro_batch, args.frames, 3, args.size, args.size, device=device)
    target = soft_targets(torch.randint(400, (args.micro_batch,), device=device), 400, 0.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    one_step = lambda: training_step(model, [(video, target, {})], 1, opt, args, autocast)   # torchrun's all-reduce too
    from torch.utils.flop_counter import FlopCounterMode
    one_step()   # the first step fills caches (a frozen text side is encoded once): count a later one
    with FlopCounterMode(display=False) as counter:
        one_step()
    flops = counter.get_total_flops() / args.micro_batch                  # per training clip
    if args.compile:   # counted before: the counter does not see inside compiled code (compiled in warm-up)
        model.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in progress(range(warmup + args.benchmark), desc="benchmark", leave=False):
        if i == warmup:
            sync()
            start = time.perf_counter()
        one_step()
    sync()
    clips = args.benchmark * args.micro_batch / (time.perf_counter() - start)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    import resource   # Unix only: imported where it is used
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak GPU memory" if device.type == "cuda" else \
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak RSS"
    peak = args.peak_tflops or next((p[0] if dtype else p[1] for k, p in PEAK_TFLOPS.items() if k in name), None)
    mfu = f", MFU {flops * clips / (peak * 1e12):.1%} of {peak:g} TFLOP/s" if peak else \
        " (MFU: give the device's peak with --peak-tflops)"
    together = f" ({sum_over_processes(clips):.1f} clips/s over the {WORLD} processes)" if WORLD > 1 else ""
    print(f"benchmark {args.method} {args.model} on {device}{f' ({name})' if name else ''} ({dtype or torch.float32}):"
          f" batch {args.micro_batch} x {args.frames} frames x {args.size}px, 400 classes: {clips:.1f} clips/s "
          f"training{together}, {flops / 1e9:.4g} GFLOP per clip, {flops * clips / 1e12:.3g} TFLOP/s{mfu}, {mem}"
          + (" (per process)" if WORLD > 1 else ""))
    if not args.train_list:
        print("the data loader: give --train-list (with --data-root, --classes) to time it on your videos too")
        return
    samples, names = data.read_videos(args.train_list, args.data_root, (args.split or [1])[0], True, args.classes)
    loader = make_loader(args, device, samples[:args.micro_batch * (args.benchmark + 2)], train=True)
    micro = micro_batches(data.batches(loader, None, "benchmark"), args, device, len(names), loader)
    next(micro)   # the first batch: the workers' start-up is not throughput
    start = time.perf_counter()
    loaded = sum(len(video) for video, _, _ in itertools.islice(micro, args.benchmark)) / (time.perf_counter() - start)
    slow = loaded < clips
    print(f"the data loader: {loaded:.1f} clips/s with {args.workers} worker{'s' * (args.workers != 1)} on "
          f"{args.train_list}; training is bound by {'the data loader' if slow else 'the model'} (at most "
          f"{min(loaded, clips):.1f} clips/s)"
          + ("; more --workers, or re-encoding the videos to a short key-frame interval, would help" if slow else ""))


# ---- Checkpoints and resume ---------------------------------------------------------------------------------
def resume_training(out, model, opt, args):
    """A resumed run's state back -> (epochs done, a part-done epoch's count, the last record), else (0, None, None)."""
    checkpoint = os.path.join(out, "last.pt")
    if not (args.run and os.path.isfile(checkpoint)):
        return 0, None, None
    state = load_checkpoint(checkpoint)   # every process reads the same file: the run folder must be shared
    for part, key in zip((model, *opt), ("model", "optimizer", "scheduler", "scaler")):
        part.load_state_dict(state[key])
    rngs = state.get("rngs") or [state["rng"]]   # every process's random states ("rng": rank 0's)
    if len(rngs) == WORLD or WORLD == 1:
        rng = rngs[RANK]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():   # every GPU's, or under torchrun this process's own
            if WORLD > 1 or len(rng["cuda"]) != torch.cuda.device_count():
                torch.cuda.set_rng_state(rng["cuda"][0])
            else:
                torch.cuda.set_rng_state_all(rng["cuda"])
    epoch, partial, record = state["epoch"], state.get("partial"), state.get("line")
    if RANK == 0:
        trim_metrics(os.path.join(out, "metrics.jsonl"), epoch, record)
    print(f"resumed {checkpoint} after epoch {epoch}" + (f", step {partial['steps']}" if partial else "") + (
        " (all its epochs were done: testing it)" if epoch >= args.epochs else "") + (f"; it ran on {len(rngs)} "
        f"processes, so mixup's draws differ from an uninterrupted run's" if len(rngs) != WORLD else ""))
    return epoch, partial, record


def save_training(out, model, opt, epoch, names, args, record, **extra):
    """out/last.pt, with every process's random state and the last epoch's record ("line": a kill may take it)."""
    cuda = ([torch.cuda.get_rng_state()] if WORLD > 1 else torch.cuda.get_rng_state_all()) \
        if torch.cuda.is_available() else None   # every GPU's, or under torchrun this process's own
    rngs = gather(dict(python=random.getstate(), torch=torch.get_rng_state(), cuda=cuda))
    if RANK == 0:
        parts = zip(("model", "optimizer", "scheduler", "scaler"), (model, *opt))
        save_checkpoint(os.path.join(out, "last.pt"), dict({k: part.state_dict() for k, part in parts}, epoch=epoch,
                        rng=rngs[0], classes=names, args=saved_args(args), line=record,
                        **(dict(rngs=rngs) if WORLD > 1 else {}), **extra))


def save_checkpoint(path, state):
    """torch.save through a temporary file and a rename, never half a checkpoint; a failed write stops in one line."""
    folder, tmp = os.path.dirname(path) or ".", f"{path}.tmp"
    os.makedirs(folder, exist_ok=True)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:   # torch reports a full disk as "... unexpected pos ..."
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = str(e).strip().splitlines()[0]   # torch's, for an unwritable file: "open file failed with strerror"
        kept = "The previous checkpoint is as it was"
        if getattr(e, "errno", None) in (errno.EROFS, errno.EACCES) or re.search("Read-only|Permission den", reason):
            raise SystemExit(f"cannot write to {folder}: it is read-only or not ours ({reason}). {kept}: make the "
                             f"folder writable again (or copy the run elsewhere) and --resume") from None
        need, free = tensor_bytes(state) / 2**20, shutil.disk_usage(folder).free / 2**20
        raise SystemExit(f"no space left on {folder}: need about {need:.0f} MB for {os.path.basename(path)}, "
                         f"{free:.0f} MB free ({reason}). {kept}: free some space and --resume, or move the run "
                         f"folder elsewhere") from None


def tensor_bytes(obj):
    """The bytes of every tensor in a nested state (what a checkpoint of it holds, give or take a little)."""
    parts = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else sum(map(tensor_bytes, parts))


def hf_weights(method, path):
    """--weights in the Hugging Face format (a transformers folder or hub id): the method's load_official reads it."""
    return bool(path) and hasattr(method, "is_hf") and method.is_hf(path)


@functools.lru_cache(maxsize=1)
def read_checkpoint(path):
    """A checkpoint written by this file, or None for any other file (an official release)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--weights: no file at {path}; give a checkpoint file, or a run folder (its last.pt)")
    ckpt = load_checkpoint(path)
    return ckpt if isinstance(ckpt, dict) and "model" in ckpt and "args" in ckpt else None


def load_checkpoint(path):
    """common.load_checkpoint: nothing in the file runs; a file refused stops the run in one line."""
    try:
        return common.load_checkpoint(path)
    except common.CheckpointError as e:
        raise SystemExit(str(e)) from None


read_embeddings = functools.lru_cache(maxsize=1)(load_checkpoint)   # an --embed file, read once for --search


def load_weights(model, method, path, args):
    """Ours strictly but for trainable tensors new to the model (ViFi-CLIP's prompts); others: load_official."""
    ckpt, name = None if hf_weights(method, path) else read_checkpoint(path), method.__name__
    if ckpt is None:
        if not hasattr(method, "load_official"):
            raise SystemExit(f"{path} is not a checkpoint of this repository and {name} reads no official one")
        try:
            return method.load_official(model, path)
        except ValueError as e:   # common.CheckpointError among them: the file, what it holds, the flag
            raise SystemExit(str(e)) from None
    saved, state, own = ckpt["args"], ckpt["model"], model.state_dict()
    if saved.get("method") != name:
        raise SystemExit(f"{path} was trained with --method {saved.get('method')}, not {name}: add --method "
                         f"{saved.get('method')}")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    wrong += sorted(own.keys() - state.keys() - trainable) + sorted(state.keys() - own.keys())
    if wrong:
        flags = [f"--no-{k.replace('_', '-')}" if k in getattr(method, "ABLATIONS", ()) else
                 f"--{k.replace('_', '-')} {saved[k]}" for k in (*INHERITED, *args.own)
                 if k in saved and saved[k] != getattr(args, k, None) and saved[k] is not None]
        raise SystemExit(f"{path}: a {name} checkpoint of --model {saved.get('model')} ({saved.get('frames')} frames, "
                         f"{saved.get('size')} px) that does not fit this model ({len(wrong)} tensors, e.g. "
                         f"{wrong[0]}): " + (f"give {' '.join(flags)}, or leave those flags out" if flags else
                                            "give the flags it was trained with (its run's config.json)"))
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        print(f"{path}: {len(missing)} trainable tensors new to this model start from their initialisation "
              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return ckpt


# ---- More than one GPU: one process per GPU (torchrun), the same model, each its own share of every batch -----
def start_processes(args):
    """Join torchrun's process group, once: NCCL between GPUs, gloo on CPUs; --dist-timeout bounds every wait."""
    global RANK, WORLD, LOCAL_RANK
    if "RANK" not in os.environ or torch.distributed.is_initialized():
        return
    RANK, WORLD, LOCAL_RANK = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if gpu := args.device in ("auto", "cuda") and torch.cuda.is_available() or args.device.startswith("cuda"):
        torch.cuda.set_device(LOCAL_RANK)
        args.device = f"cuda:{LOCAL_RANK}"   # one GPU per process, whatever --device said
    timeout = datetime.timedelta(minutes=args.dist_timeout)
    torch.distributed.init_process_group("nccl" if gpu else "gloo", timeout=timeout)
    if RANK > 0:   # one voice: the others' errors still reach stderr, saying which process (one_line)
        sys.stdout = open(os.devnull, "w")


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    out = [obj] * WORLD
    if WORLD > 1:
        torch.distributed.all_gather_object(out, obj)
    return out


def comm_device():
    """Where collectives take their tensors: the process's GPU with NCCL, the CPU with gloo."""
    return torch.device(f"cuda:{LOCAL_RANK}") if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def sum_over_processes(x):
    """x (a number or a tensor) summed over the processes; a tensor comes back on its own device."""
    if WORLD == 1:
        return x
    t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
    torch.distributed.all_reduce(total := t.to(comm_device()))
    return total.to(t.device) if isinstance(x, torch.Tensor) else total.item()


def seed_process(seed, rank):
    """Each process's own draws (mixup's, Open-VCLIP's alpha), as each official GPU's; not the clips' (per video)."""
    random.seed(f"{seed}:process {rank}")
    torch.manual_seed(seed * 1_000_003 + rank)


def share_weights(model):
    """Rank 0's parameters and buffers on every process: equal already, certainly so (as DistributedDataParallel)."""
    if WORLD > 1:
        for t in model.state_dict().values():
            sent = t.to(comm_device())   # NCCL sends only from a GPU, and the model may still be on the CPU
            torch.distributed.broadcast(sent, src=0)
            t.copy_(sent)


# ---- Run folders: each run writes into a folder of its own, never into another run's; --method all, --compare --
def saved_args(args):
    """The resolved settings, as config.json and the checkpoints keep them."""
    return {k: v for k, v in vars(args).items() if k not in ("explicit", "own", "demo_replaced")}


def append_metrics(path, record):
    if RANK == 0:   # one writer
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path):
    lines = open(path).read().splitlines() if os.path.isfile(path) else []
    return [json.loads(line) for line in lines if line.strip()]


def trim_metrics(path, epoch, line=None):
    """metrics.jsonl cut to a checkpoint's epochs and finished tests; its last epoch line back if a kill took it."""
    records = read_metrics(path)
    finished = {r.get("trained_epochs") for r in records if "result" in r}
    kept = [r for r in records if r.get("epoch", epoch + 1) <= epoch or "epoch" not in r and r.get("trained_epochs")
            in finished]
    kept += [line] if line and line["epoch"] not in [r.get("epoch") for r in kept] else []
    with open(f"{path}.tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(f"{path}.tmp", path)


def seed_folder(folder, seed, args):
    """A run over several shot seeds keeps one checkpoint and metrics file per seed, in folder/seedN."""
    return os.path.join(folder, f"seed{seed}") if len(args.shot_seeds) > 1 else folder


def checkpoints(folder, name="last.pt"):
    """A run's checkpoints: its own, then each shot seed's (seedN/last.pt); or its files of another name."""
    return glob.glob(os.path.join(folder, name)) + sorted(glob.glob(os.path.join(folder, "seed*", name)))


def read_config(folder):
    path = os.path.join(folder, "config.json")
    config = json.loads(open(path).read()) if os.path.isfile(path) else None
    return config and {RENAMED.get(k, k): v for k, v in config.items()}   # a run written before a rename


def latest_run(method, protocol, trained=False):
    """The training run of this method and protocol that started last (trained: with a checkpoint), or None."""
    found = [(c["started"], folder) for folder in glob.glob(os.path.join(RUNS, "*"))
             if (c := read_config(folder)) and c.get("method") == method and c.get("protocol") == protocol
             and not c.get("eval_only") and "started" in c and (checkpoints(folder) or not trained)]
    return max(found)[1] if found else None


def begin(args):
    """Rank 0 prepares the run, every process takes its settings -> them, or None with nothing to do (finished)."""
    device, ready = args.device, prepare(args) if RANK == 0 else None
    args, ready = gather((args, ready))[0]   # rank 0's
    if WORLD > 1:
        args.device = device   # this process's own GPU
    global RUN
    RUN = args   # what a Ctrl-C says it stopped, and where --method all finds the run (a finished one too)
    if not ready:
        return None
    if not os.path.isdir(args.out):
        raise SystemExit(f"process {RANK} cannot see the run folder {args.out} that process 0 made: under torchrun "
                         f"on several machines, put the run (--out) and the videos on a filesystem all of them share")
    return args


def restore_flags(replaced, micro_batch):
    """The flags giving back the recipe values the demo replaced -> (flags, the settings no flag gives back)."""
    batch = replaced.get("micro_batch", micro_batch)
    made = dict(micro_batch=f"--batch-size {batch}",   # the global batch comes back through accumulation
                global_batch=f"--accum-steps {max(1, replaced.get('global_batch', 0) // batch)}")
    flags = {k: made.get(k, f"--{k.replace('_', '-')} {v}") for k, v in replaced.items()
             if v is not None and k not in ("official_accum", "flip")}
    return " ".join(flags.values()), [k for k in replaced if k not in flags]


def prepare(args):
    """Place the run (place_run) and generate the embedded set if it is used; -> False when there is nothing to do."""
    try:
        place_run(args)
    except OSError as e:
        raise SystemExit(f"cannot make the run's folder: {e}; choose another --out") from None
    top = os.path.join(args.out, "metrics.jsonl")
    if args.run and not args.eval_only:
        # Finished: a result line for the checkpoint's epochs, written once every shot seed is trained and tested.
        done = min((load_checkpoint(p)["epoch"] for p in checkpoints(args.out)), default=0)
        result = [r["result"] for r in read_metrics(top) if "result" in r and r.get("trained_epochs") == done]
        if result and done >= args.epochs:
            print(f"{args.out} is finished ({done} epochs): {result[-1]}. Test it again with --eval-only --resume "
                  f"{args.out}, or train on with --resume {args.out} --epochs N (N > {done})")
            return False
        print(f"continuing {args.out}" + (f" (the latest {args.method} {args.protocol} run)"
                                          if args.resume == "auto" and "out" not in args.explicit else ""))
        if len(args.shot_seeds) > 1:   # each seed's own file is cut back as the seed resumes
            trim_metrics(top, 0)
        write_config(args)
    if args.embedded:   # the synthetic set; zero-shot trains on 8 of its classes and tests on the 4 held out
        if replaced := getattr(args, "demo_replaced", None):   # what it replaced, and the flags that give it back
            flags, unflagged = restore_flags(replaced, args.micro_batch)
            print(f"the embedded demo replaces the recipe's {', '.join(f'{k} {v}' for k, v in replaced.items())}; to "
                  f"train with them: {flags}" + (f" ({', '.join(unflagged)}: no flag gives these back: see EMBEDDED "
                                                 "in train.py or in the method's file)" if unflagged else ""))
        try:   # first, that the CLIP's weights can be had (offline, a tag not yet downloaded cannot)
            common.resolve_pretrained(args.model, args.pretrained, args.quick_gelu)
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"--model {args.model} --pretrained {args.pretrained}: {e}") from None
        paths = data.make_synthetic(args.embedded_dir)
        keys = ("seen_train", "unseen_val", "seen", "unseen") if args.protocol == "zero-shot" else \
            ("train", "val", "classes", None)
        args.train_list, args.val_list, args.classes, args.val_classes = (paths.get(k) for k in keys)
        if args.protocol == "retrieval":   # 96 videos, each with a caption of its own
            args.val_list = data.make_retrieval_set(paths["root"])
        args.data_root = paths["root"]
    return True


def place_run(args):
    """Where this run writes (args.out), which run it continues or tests (args.run); config.json written."""
    if args.resume:
        args.run = resumed_run(args)
        if not args.eval_only:
            args.out = args.run
            return   # prepare() updates its config.json once it knows the run has something left to do
    if args.out:
        held = [p for f in ("config.json", "metrics.jsonl", "skipped.txt") for p in glob.glob(os.path.join(
            args.out, f))] + checkpoints(args.out)
        if args.eval_only and checkpoints(args.out):   # only training runs leave checkpoints
            raise SystemExit(f"--out {args.out} holds a training run, which --eval-only never writes into: drop --out")
        if held and not args.overwrite:
            other = read_config(args.out) or {}
            go_on = "" if other.get("eval_only") else \
                f", continue it with --method {other.get('method', args.method)} --resume {args.out}"
            raise SystemExit(f"--out {args.out} holds another run ({held[0]}); choose a new folder{go_on}, or replace "
                             f"it with --overwrite")
        for path in held + glob.glob(os.path.join(args.out, "seed*")):   # the files, then the shot seeds' folders
            (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
        os.makedirs(args.out, exist_ok=True)
    else:   # an --eval-only or --embed run is named after what it uses: the run it tests, else the weights or CLIP
        mode = "-embed" if args.embed else "-eval" if args.eval_only else ""
        tested = args.run or args.eval_only and args.weights and read_config(os.path.dirname(args.weights) or ".") \
            and os.path.dirname(args.weights)
        used = "" if not mode or tested else "-" + os.path.splitext(os.path.basename(
            args.weights or args.pretrained or "random"))[0]
        parts = getattr(importlib.import_module(args.method), "ABLATIONS", ())   # those switched off name it: -no-mit
        off = "".join(f"-no-{k.replace('_', '-')}" for k in parts if getattr(args, k, None) is False)
        stem = f"{tested}{mode}" if tested else os.path.join(RUNS, f"{args.method}-{args.protocol}{off}{used}{mode}")
        for n in itertools.count(1):   # the first free name, made at once: two runs started together get one each
            with contextlib.suppress(FileExistsError):
                os.makedirs(path := stem if n == 1 else f"{stem}-{n}")
                break
        args.out = path
    write_config(args, started=datetime.datetime.now().isoformat(timespec="microseconds"))


def resumed_run(args):
    """The run folder --resume names (or the latest), or one line why not; its settings back but the flags given."""
    if args.resume == "auto":
        folder = args.out or latest_run(args.method, args.protocol)
        if folder is None:
            raise SystemExit(f"--resume: no {args.method} {args.protocol} run in {RUNS}/: name one, or drop --resume")
    elif not os.path.exists(args.resume):
        raise SystemExit(f"--resume {args.resume}: no such folder or file; give a run folder or its last.pt")
    else:
        folder = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume) or "."
        if re.fullmatch(r"seed\d+", os.path.basename(folder)) and read_config(os.path.dirname(folder)):
            folder = os.path.dirname(folder)   # a shot seed's checkpoint: the run is the folder above
    kept = checkpoints(folder)
    saved = read_config(folder) or kept and read_checkpoint(kept[0])["args"]
    if not saved or not kept and any("epoch" in r for r in read_metrics(os.path.join(folder, "metrics.jsonl"))):
        raise SystemExit(f"--resume: {folder} holds no checkpoint (last.pt); start without --resume")
    if saved.get("eval_only"):   # an --eval-only or --embed run's folder
        mode, of = "--embed" if saved.get("embed") else "--eval-only", saved.get("run") or saved.get("weights")
        raise SystemExit(f"--resume {folder}: the folder of an {mode} run, which trains nothing; to run it again: "
                         f"{mode}" + (f" --resume {of}" if saved.get("run") else f" --weights {of}" if of else ""))
    if (method := saved.get("method")) != args.method:
        raise SystemExit(f"--resume: {folder} is a run of --method {method}; add --method {method}")
    if not kept:   # stopped before its first checkpoint (no epoch line): start it again in place
        if args.eval_only:
            raise SystemExit(f"{'--embed' if args.embed else '--eval-only'} --resume {folder}: it has no checkpoint "
                             f"yet (no epoch ended); train it first: --method {args.method} --resume {folder}")
        print(f"{folder} stopped before its first checkpoint: starting it again from the beginning, in that folder")
    data_given = {"train_list", "val_list"} & set(args.explicit)   # then not the embedded set, whatever the run's
    for key, value in saved.items():
        if (key := RENAMED.get(key, key)) in vars(args) and key not in (*args.explicit, *RUN_CONTROL):
            setattr(args, key, value if key != "embedded" else value and not data_given)
    return folder


def write_config(args, **extra):
    """config.json: the run's resolved settings, the command that started it and those that resumed it, versions."""
    old = read_config(args.out) or {}
    command = " ".join(["python train.py", *map(shlex.quote, args.argv)])
    config = {**old, **saved_args(args), **extra, "versions": dict(python=sys.version.split()[0],
              torch=torch.__version__, open_clip=importlib.metadata.version("open_clip_torch"))}
    resumed = "command" in old   # the command that started it, and then those that resumed it
    config["resumed" if resumed else "command"] = old.get("resumed", []) + [command] if resumed else command
    path = os.path.join(args.out, "config.json")
    try:   # the first write of a run: a folder it cannot write to stops it now, not after an epoch
        with open(f"{path}.tmp", "w") as f:
            json.dump(config, f, indent=2, default=str)
        os.replace(f"{path}.tmp", path)
    except OSError as e:
        raise SystemExit(f"--out {args.out}: cannot write there ({e.strerror}); choose a folder you can write "
                         "to") from None


def closing_lines(args, result_line):
    where = [("run folder", args.out), ("settings", os.path.join(args.out, "config.json"))]
    if not args.embed:
        where.append(("metrics", os.path.join(args.out, "metrics.jsonl") + (" (its tests and the result)" if
                      args.eval_only else " (one line per epoch, then the tests and the result)")))
    if args.eval_only:
        where.append(("embedded by" if args.embed else "tested", ", ".join(checkpoints(args.run)) if args.run else
                      args.weights or f"the CLIP as pretrained ({args.pretrained or 'none'}), no video training"))
    else:
        where.append(("checkpoint", ", ".join(checkpoints(args.out))))
    if args.embedded:
        where.append(("videos", f"{os.path.relpath(args.data_root)} (generated once, reused)"))
    if skipped := checkpoints(args.out, "skipped.txt"):
        count = sum(1 for p in skipped for _ in open(p))
        where.append(("skipped", f"{count} videos that could not be decoded, listed in {', '.join(skipped)}"))
    if args.pretrained == "synthetic":
        where.append(("CLIP", f"{common.synthetic_path(args.model)} (pretrained once, reused)"))
    for key, value in where + [("embeddings" if args.embed else "result", result_line)]:
        print(f"{key:11s} {value}")


def run_all(argv, names):
    """--method all (or a,b): each method with the same flags, then --compare's table with CPU and wall times."""
    cpu_seconds = lambda: sum(os.times()[:4])   # user, system, and the joined children's (decoding workers)
    clock = lambda seconds: f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
    spent, start = {}, (cpu_seconds(), time.perf_counter())
    for name in names:
        at = next(k for k, a in enumerate(argv) if a == "--method" or a.startswith("--method="))
        sub = [*argv[:at], f"--method={name}", *argv[at + (1 if "=" in argv[at] else 2):]]
        cpu, wall = cpu_seconds(), time.perf_counter()
        main(sub)
        gc.collect()   # the DataLoader workers are joined, so that their CPU time is counted
        spent[RUN.out] = {"CPU-s": f"{cpu_seconds() - cpu:.0f}", "wall": clock(time.perf_counter() - wall)}
        print()
    total = {"CPU-s": f"{cpu_seconds() - start[0]:.0f}", "wall": clock(time.perf_counter() - start[1])}
    return compare(list(spent), spent, total)


def compare(patterns, extra=None, total=None):
    """--compare: a row per run folder, the settings in which they differ; extra {folder: {column: value}}, total."""
    configs = {f: c for p in patterns for f in (sorted(glob.glob(p)) or [p]) if (c := read_config(f))}
    if not configs:
        raise SystemExit(f"--compare {' '.join(patterns)}: no run folder (with a config.json) there")
    one_method = len({c.get("method") for c in configs.values()}) == 1
    differ = lambda k: len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1
    keys = sorted({k for c in configs.values() for k in c if k not in (*BOOKKEEPING, "epochs") and differ(k) and
                   (one_method or k in HEADLINE)})   # "epochs": the column of those trained
    rows = []
    for f in configs:
        result = next((r for r in reversed(read_metrics(os.path.join(f, "metrics.jsonl"))) if "result" in r), None)
        rows.append({"run": f, "method": configs[f]["method"], "protocol": configs[f]["protocol"],
                     **{k: str(configs[f].get(k, "-")) for k in keys},
                     "epochs": "-" if not result else str(result.get("trained_epochs") or 0),
                     **result_cells(result), **(extra or {}).get(f, {})})
    rows += [{"run": "all", **total}] if total else []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    table += [f"| {' | '.join(row.get(k, '') for k in columns)} |" for row in rows]
    print("\n".join(table))
    return table


def result_cells(r):
    """A result line as cells: top-1, twins or R@1, R@5 (± standard error); base, novel, HM; or a mean (± std)."""
    if r is None:
        return {"result": "none yet"}
    if "t2v_r1" in r:
        return {f"{way} R@{k}": f"{r[f'{way}_r{k}']:.1f} ± {standard_error(r[f'{way}_r{k}'], r[n]):.1f}"
                for way, n in (("t2v", "captions"), ("v2t", "videos")) for k in (1, 5)}
    if "hm" in r:
        return {k: f"{r[k]:.1f}" for k in ("base", "novel", "hm")}
    if "top1_std" in r:
        return {"top-1": f"{r['top1']:.1f} ± {r['top1_std']:.1f} (std)"}
    return {"top-1": f"{r['top1']:.1f} ± {r['top1_se']:.1f}",
            **({"twins": f"{r['twins']:.1f} ± {r['twins_se']:.1f}"} if "twins" in r else {})}


# ---- One-line errors ----------------------------------------------------------------------------------------
def one_line(e):
    """The one line `e` stops the run with (under torchrun: naming the process), or None to keep its traceback."""
    if isinstance(e, SystemExit):
        message = e.code
    elif isinstance(e, (data.DataError, data.VideoError, common.CheckpointError, FileNotFoundError)):   # bad input
        # A DataLoader worker's error arrives with the worker's traceback in its message: keep its last line.
        message = "error: " + re.sub(r"^[\w.]*(Error|Exception): ", "", str(e).strip().splitlines()[-1]) + (
            " (or leave such videos out with --skip-bad-videos)" if isinstance(e, data.VideoError) else "")
    elif WORLD > 1 and "torch/distributed/" in traceback.extract_tb(e.__traceback__)[-1].filename.replace(os.sep, "/"):
        # A collective failed: another process stopped (its own line says why) or hangs; not for torchrun's summary.
        return (f"process {RANK} of {WORLD}: stopped because another process stopped (see its message), or did not "
                f"answer within --dist-timeout: {str(e).strip().splitlines()[0][:200]}")
    else:
        return None
    if WORLD > 1 and isinstance(message, str):
        message = f"process {RANK} of {WORLD}: {message}"
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            with contextlib.suppress(OSError), open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
                json.dump({"message": {"message": message, "extraInfo": {
                    "py_callstack": message, "timestamp": str(int(time.time()))}}}, f)
    return message


def cli(argv=None):
    """The command line: main(); a bad input or a failure ends in one line, Ctrl-C in what it keeps and how to go on."""
    try:
        main(argv)
    except KeyboardInterrupt:
        run, line = RUN, "stopped by Ctrl-C"
        if RANK == 0 and run and run.out and not run.eval_only:
            go_on = f"python train.py --method {run.method} --resume {run.out}"
            kept = [load_checkpoint(p) for p in checkpoints(run.out)]
            at = ", ".join(f"epoch {c['epoch']} of {run.epochs}" + (f" and {c['partial']['steps']} steps of epoch "
                           f"{c['epoch'] + 1}" if c.get("partial") else "") for c in kept)
            line += (f": {run.out} keeps its checkpoint after {at}; continue with: {go_on}" if kept else
                     f": {run.out} holds no checkpoint yet; start it again, in place, with: {go_on}")
        if RANK == 0:
            print(line, file=sys.stderr)
        raise SystemExit(130) from None
    except (Exception, SystemExit) as e:
        if (line := one_line(e)) is None and not isinstance(e, SystemExit):
            raise
        raise SystemExit(line) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        cli()
    finally:   # all is said: a Ctrl-C in Python's second of shutdown has nothing to stop (it would print a traceback)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
