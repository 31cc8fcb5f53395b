"""What every method changes inside CLIP, written out in small pieces; and, below the divider, how CLIP is loaded.

Every method in this repository starts from an open_clip CLIP model and changes what happens *inside* its
vision transformer (X-CLIP adds a message token, Open-VCLIP widens the attention to neighbour frames,
OmniCLIP adds adapters and prompts). So instead of calling `clip.encode_image` as a black box we write the
ViT out here as four pieces, each using only the stable parameter names that OpenAI CLIP, open_clip and
the official checkpoints share (open_clip's internals may change, these names do not):

    patch_embed(visual, x)   conv1 -> class token -> positional embedding -> ln_pre     (B', N+1, D)
    attention(attn, x, kv)   multi-head attention from a block's own in_proj/out_proj via SDPA
    block(blk, x)            x + attn(ln_1 x);  x + mlp(ln_2 x)
    frame_head(visual, x)    ln_post(x[:, 0]) @ proj                                   (B', E)

`encode_frames` and `encode_text` put them together and equal open_clip's own encoders (a test checks it).
A method copies the loop it needs and changes one line of it. Then come the text side (tokenize, captions
in chunks), the cosine logits, CLIP's prompt templates and freezing / counting / parameter groups.

Below the divider, the tool: load_clip (open_clip architectures, the tiny ones, pretrained tags and files,
offline failures), the offline stand-in for a pretrained CLIP (synthetic_clip), and safe checkpoint loading.

Shapes: B videos, T frames, N patches, D width, E joint embedding, C classes, L text tokens.
"""
import collections
import functools
import json
import logging
import math
import os
import pickle
import re
import socket
import sys
import tempfile
import time
import urllib.parse
import warnings
import zipfile

import open_clip
import torch
import torch.nn.functional as F
from torch import nn


# ---- The vision transformer in pieces -----------------------------------------------------------------------

def patch_embed(visual, x):
    """(B', 3, S, S) frames -> (B', N+1, D) tokens: patches, class token first, positional embedding, ln_pre."""
    size = visual.conv1.kernel_size[0] * int(math.isqrt(visual.positional_embedding.shape[0] - 1))
    if x.shape[-1] != size or x.shape[-2] != size:
        raise ValueError(f"frames are {tuple(x.shape[-2:])} but this CLIP was trained on {size}x{size}; "
                         f"pass --size {size}")
    x = visual.conv1(x)                                            # (B', D, g, g)
    x = x.flatten(2).transpose(1, 2)                               # (B', N, D), N = g*g
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)                                 # (B', N+1, D)
    x = x + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def attention(attn, x, kv=None, causal=False):
    """Multi-head attention with the weights of an nn.MultiheadAttention `attn`, through SDPA.

    x (B', Lq, D) are the queries; kv (B', Lk, D) the tokens keys and values are made from (default x).
    Methods that let a frame attend to other tokens (a message token, neighbour frames, prompts) pass them
    in kv. Only in_proj_weight/in_proj_bias/out_proj are used, so this survives changes to open_clip's
    attention module and matches the official checkpoints' names.
    """
    kv = x if kv is None else kv
    H = attn.num_heads
    w_q, w_kv = attn.in_proj_weight.split([x.shape[-1], 2 * x.shape[-1]])
    b_q, b_kv = attn.in_proj_bias.split([x.shape[-1], 2 * x.shape[-1]])
    q = F.linear(x, w_q, b_q)                                      # (B', Lq, D)
    k, v = F.linear(kv, w_kv, b_kv).chunk(2, dim=-1)               # 2 x (B', Lk, D)
    q, k, v = (t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v))   # (B', H, L, D/H)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)          # (B', H, Lq, D/H)
    out = out.transpose(1, 2).flatten(2)                           # (B', Lq, D)
    return attn.out_proj(out)


def block(blk, x, causal=False):
    """One pre-LN residual block of CLIP: x + attn(ln_1 x), then x + mlp(ln_2 x).
    ls_1/ls_2 (LayerScale) are Identity for CLIP weights; kept so other open_clip models stay correct."""
    x = x + blk.ls_1(attention(blk.attn, blk.ln_1(x), causal=causal))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def frame_head(visual, x):
    """(B', N+1, D) tokens -> (B', E): the class token after ln_post, projected to the joint space."""
    return visual.ln_post(x[:, 0]) @ visual.proj


def encode_frames(visual, x):
    """(B', 3, S, S) -> (B', E): the plain CLIP image encoder, frame by frame (B' = B*T)."""
    x = patch_embed(visual, x)
    for blk in visual.transformer.resblocks:
        x = block(blk, x)
    return frame_head(visual, x)


# ---- The text tower, and captions ---------------------------------------------------------------------------

def encode_text(clip, tokens, embeds=None):
    """(C, L) token ids -> (C, E) text embeddings: the causal text transformer, read at the end-of-text token
    (the highest id in CLIP's vocabulary, hence argmax). `embeds` (C, L, W) replaces the token embeddings,
    for methods that learn some of them (prompt learning). L may stop short of the context length, as in
    open_clip's TextTransformer: causal attention never lets a token see the padding after it."""
    x = clip.token_embedding(tokens) if embeds is None else embeds      # (C, L, W)
    x = x + clip.positional_embedding[:x.shape[1]].to(x.dtype)
    for blk in clip.transformer.resblocks:
        x = block(blk, x, causal=True)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]   # (C, W)
    return x @ clip.text_projection


def tokenize(clip, texts):
    """list of C strings -> LongTensor (C, L) on the model's device."""
    return clip.tokenizer(list(texts)).to(clip.logit_scale.device)


def encode_captions(clip, captions):
    """(K, E): captions through a CLIP's text tower as written (a caption is its own sentence), in chunks."""
    return in_chunks(lambda c: encode_text(clip, tokenize(clip, c)), list(captions))


def in_chunks(fn, items, size=512):
    """fn over items (a list or a tensor) `size` at a time, concatenated: thousands of captions in bounded memory."""
    return torch.cat([fn(items[i:i + size]) for i in range(0, len(items), size)])


def prompted_similarity(video, ctx, text, prompted, logit_scale, videos=16, captions=1024):
    """(N, K) logits of every video-caption pair when a caption's embedding depends on the video (X-CLIP's
    video-specific prompts): video (N, E), ctx (N, P, E) what the prompts attend to, text (K, E); prompted(text
    (k, E), ctx (n, P, E)) -> (n, k, E). `videos` x `captions` pairs at a time: memory stays bounded however
    many pairs (10,000 x 10,000), the cost grows with their number (each pair is one pass of the prompts)."""
    return in_chunks(lambda i: torch.cat([cosine_logits(video[i], prompted(text[j], ctx[i]), logit_scale) for j in
                                          torch.arange(len(text)).split(captions)], 1),
                     torch.arange(len(video)), videos)


# ---- Video-text logits --------------------------------------------------------------------------------------

def cosine_logits(video, text, logit_scale):
    """video (B, E), text (C, E) or (B, C, E) -> (B, C) = exp(s) * cos(video, text), in float32 whatever the
    autocast: logits of 10-35 in bf16 are rounded to steps of 0.06-0.25, enough to swap close classes."""
    with torch.autocast(video.device.type, enabled=False):
        video = F.normalize(video.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        if text.dim() == 3:
            return logit_scale.float().exp() * torch.einsum("be,bce->bc", video, text)
        return logit_scale.float().exp() * video @ text.t()


# ---- Prompts, freezing, counting ----------------------------------------------------------------------------

PHOTO_TEMPLATE = "a photo of a {}."   # CLIP's own; ViFi-CLIP fine-tunes with it
BARE_TEMPLATE = "{}"                  # the raw class name: X-CLIP, and vanilla zero-shot CLIP in ViFi-CLIP's tables


def freeze(*modules_or_params, frozen=True):
    """Set requires_grad = not frozen on every parameter of the given modules or parameters."""
    for m in modules_or_params:
        for p in (m.parameters() if isinstance(m, nn.Module) else [m]):
            p.requires_grad_(not frozen)


def count_params(module, trainable=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def param_groups(model, lr, weight_decay, no_decay=lambda name, p: False, lr_scale=lambda name: 1.0):
    """Split the trainable parameters into AdamW groups by (weight decay on/off, lr multiplier).
    no_decay(name, param) -> bool and lr_scale(name) -> float carry a method's rules."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if no_decay(name, p) else weight_decay
        scale = lr_scale(name)
        g = groups.setdefault((wd, scale), dict(params=[], names=[], weight_decay=wd, lr=lr * scale, lr_scale=scale))
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


# ============================================================================================================
# What makes this file a tool: loading CLIP (architectures, pretrained tags and files, offline failures), the
# offline stand-in for a pretrained CLIP, and checkpoints read with PyTorch's safe loader
# ============================================================================================================

# ---- Loading CLIP -------------------------------------------------------------------------------------------

# Small CLIPs for a laptop CPU, for tests and the embedded demo. The same architecture as ViT-B/16 (pre-LN
# blocks, class token, causal text tower), only narrower, shallower and on 32-pixel frames.
# The text side keeps the real 49,408-word BPE vocabulary so the real tokenizer works unchanged.
TINY_CONFIGS = {
    "tiny": dict(
        embed_dim=64,
        vision_cfg=dict(image_size=32, patch_size=8, width=128, layers=3, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    "tiny-64": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=64, patch_size=8, width=192, layers=4, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=128, heads=4, layers=3),
    ),
}


def register_tiny_configs():
    """Add TINY_CONFIGS to open_clip's model registry through its public add_model_config (the registry
    reads the files at once, so a temporary folder is enough and open_clip's own files stay untouched)."""
    if all(name in open_clip.list_models() for name in TINY_CONFIGS):
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, cfg in TINY_CONFIGS.items():
            with open(os.path.join(folder, f"{name}.json"), "w") as f:
                json.dump(cfg, f)
        open_clip.add_model_config(folder)


def _hosts_of(cfg):
    """The hosts open_clip would download a pretrained tag from."""
    hosts = []
    if cfg.get("hf_hub"):
        hosts.append(urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname)
    if cfg.get("url"):
        hosts.append(urllib.parse.urlparse(cfg["url"]).hostname)
    return hosts


def _cached_file(cfg, cache_dir=None):
    """The local path of a pretrained tag's weights if an earlier download left them in a cache, else None."""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        # "org/model/" names a repository (default file names), "org/model/file.bin" one file in it.
        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            path = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if cfg.get("url"):
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def _reachable(host, timeout=3.0):
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_clip(name="tiny", pretrained=None, quick_gelu=None, cache_dir=None):
    """Build an open_clip CLIP model.

    name        any open_clip architecture ("ViT-B-16", "ViT-L-14-336", ...) or one of TINY_CONFIGS.
    pretrained  None / "" / "none": random initialisation; a tag open_clip knows ("openai", "laion2b_s34b_b88k");
                a local file (open_clip checkpoint, or OpenAI's original ViT-B-16.pt); or "synthetic": the
                offline stand-in for a pretrained CLIP (synthetic_clip below, cached in cache_dir or data/).
    quick_gelu  OpenAI's weights were trained with QuickGELU (x * sigmoid(1.702 x)) and every official video
                repository keeps it; open_clip's plain "ViT-B-16" config uses exact GELU. None chooses
                automatically: on for the "openai" tag and for files whose name says openai.

    The tokenizer is attached as `clip.tokenizer`. Offline, a tag that is not already cached fails at once
    with a message saying how to pass a local file, instead of going through open_clip's retries.
    """
    pretrained, quick_gelu = resolve_pretrained(name, pretrained, quick_gelu, cache_dir)
    if pretrained == "synthetic":
        return synthetic_clip(name, cache_dir)
    if pretrained is None:   # random weights are asked for here: silence open_clip's warning that they are random
        logging.disable(logging.WARNING)
    try:
        clip = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=bool(quick_gelu),
                                      cache_dir=cache_dir)
    finally:
        logging.disable(logging.NOTSET)
    clip.tokenizer = tokenizer(name)
    clip.quick_gelu = bool(quick_gelu)
    return clip


def resolve_pretrained(name, pretrained=None, quick_gelu=None, cache_dir=None):
    """-> (the weights load_clip takes: None, "synthetic", a local file, or a tag open_clip downloads; quick_gelu
    decided), or an error at once: an unknown architecture or tag, or no network for weights not yet cached."""
    register_tiny_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP architecture {name!r}; choose one of {', '.join(open_clip.list_models())}")
    pretrained = None if pretrained in (None, "", "none") else pretrained
    if pretrained == "synthetic":
        return pretrained, False
    if pretrained is not None and not os.path.isfile(pretrained):
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"--pretrained {pretrained!r} is neither a file nor a tag of {name}; "
                             f"known tags: {', '.join(tags) or 'none'}")
        if quick_gelu is None:
            quick_gelu = cfg.get("quick_gelu", False)
        local = _cached_file(cfg, cache_dir)
        if local is not None:
            pretrained = local
        elif not any(_reachable(h) for h in _hosts_of(cfg)):
            raise RuntimeError(
                f"cannot download the {pretrained!r} weights of {name}: no network ({' and '.join(_hosts_of(cfg))} "
                f"unreachable). Download them where you have a network "
                f"({'https://huggingface.co/' + cfg['hf_hub'] if cfg.get('hf_hub') else cfg.get('url')}) "
                f"and pass the file: --pretrained /path/to/weights"
                f"{' (OpenAI weights: add --quick-gelu)' if cfg.get('quick_gelu') else ''}")
    if quick_gelu is None:
        quick_gelu = pretrained is not None and "openai" in os.path.basename(pretrained).lower()
    return pretrained, quick_gelu


@functools.lru_cache(maxsize=None)
def tokenizer(name):
    """open_clip's tokenizer of an architecture, read once (its 49,408-word vocabulary) and shared: it keeps no state
    but a cache of words it has split."""
    return open_clip.get_tokenizer(name)


# ---- An offline stand-in for a pretrained CLIP --------------------------------------------------------------

STEPS, BATCH = 300, 256   # the stand-in's schedule: optimizer steps, and image-caption pairs in each


def synthetic_path(name="tiny", cache_dir=None, steps=STEPS, batch=BATCH, seed=0):
    """Where synthetic_clip caches the stand-in CLIP, named after what it was trained with: the schedule, the
    seed and a version that goes up whenever anything else of its training changes, so that an older file is
    never taken for this stand-in (v2: each distinct caption encoded once and fused AdamW, the same training
    rounded otherwise)."""
    return os.path.join(cache_dir or "data", f"synthetic-{name}-v2-s{steps}-b{batch}-seed{seed}.pt")


def synthetic_clip(name="tiny", cache_dir=None, steps=STEPS, batch=BATCH, lr=1e-3, seed=0):
    """A CLIP pretrained here, once, on a CPU, on still images of coloured shapes and their
    captions ("a red circle", "a photo of a small blue square on the left."), drawn by data.py in the style of
    the embedded videos. Like OpenAI's CLIP it learns what things look like and their names, and never sees
    motion: zero-shot it tells a circle from a square in a video but not "moving left" from "moving right".
    Trained once, then loaded from cache_dir (default data/), the file named after the arguments.

    The loss is CLIP's symmetric InfoNCE; captions repeat within a batch (there are a few hundred distinct
    ones), so every image whose caption equals caption j counts as a positive of j instead of a negative.
    Each distinct caption goes through the text tower once, up to the longest one's end-of-text token.
    """
    path = synthetic_path(name, cache_dir, steps, batch, seed)
    with torch.random.fork_rng():   # a fixed initialisation, without touching the caller's random state
        torch.manual_seed(seed)
        clip = load_clip(name)
    if os.path.isfile(path):
        clip.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return clip
    import data          # the one place this file reaches into data.py: it draws the image-caption pairs
    from tqdm import tqdm
    size = clip.visual.image_size[0]
    mean, std = torch.tensor(data.CLIP_MEAN)[:, None, None], torch.tensor(data.CLIP_STD)[:, None, None]
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98), fused=True)
    warmup = max(1, steps // 10)
    clip.train()
    print(f"pretraining the stand-in CLIP ({name}) on synthetic image-caption pairs, once: {steps} steps of {batch}")
    tic = time.perf_counter()
    for step in (bar := tqdm(range(steps), desc="pretraining", disable=not sys.stderr.isatty())):
        for g in optimizer.param_groups:   # linear warm-up, then cosine to 0
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        images, captions = data.synthetic_stills(batch, [seed, step])                 # uint8 (batch, 64, 64, 3)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255         # (batch, 3, 64, 64)
        x = (F.interpolate(x, size=(size, size), mode="bilinear", antialias=True) - mean) / std
        distinct = sorted(set(captions))                                       # K captions, each once
        index = torch.tensor([distinct.index(c) for c in captions])            # (batch,) each image's caption
        tokens = tokenize(clip, distinct)                                      # (K, L)
        tokens = tokens[:, :int(tokens.argmax(-1).max()) + 1]                  # (K, L') up to the last end of text
        text = encode_text(clip, tokens)[index]                                # (batch, E)
        logits = cosine_logits(encode_frames(clip.visual, x), text, clip.logit_scale)
        same = (index[:, None] == index[None]).float()                         # (batch, batch) equal captions
        target = same / same.sum(1, keepdim=True)
        loss = -((target * logits.log_softmax(1)).sum(1).mean()            # images -> captions
                 + (target * logits.t().log_softmax(1)).sum(1).mean()) / 2  # captions -> images
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))   # CLIP's clamp of the temperature
        bar.set_postfix(loss=f"{loss.item():.3f}")
    optimizer.zero_grad(set_to_none=True)   # the stand-in is handed over without its last step's gradients
    clip.eval()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(clip.state_dict(), f"{path}.tmp")
    os.replace(f"{path}.tmp", path)   # atomic: an interrupted run never leaves half a cache
    print(f"pretrained in {time.perf_counter() - tic:.0f}s, final loss {loss.item():.3f}; saved to {path}")
    return clip


# ---- Checkpoints, read safely -------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A file that is not loaded as a checkpoint, in one line: the file, why, and what to do."""


class _Inert:
    """Stands in for the one class besides tensors that the authors' released checkpoints name: their yacs config
    object (X-CLIP and ViFi-CLIP pickle it; PySlowFast's fvcore config is a yacs subclass). It is built as a plain
    OrderedDict holding the config's values: no code of yacs, or of the file, runs."""
    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


STAND_INS = [(_Inert, "yacs.config.CfgNode"), (_Inert, "fvcore.common.config.CfgNode")]


def load_checkpoint(path, what="checkpoint"):
    """A checkpoint (or another file torch.save wrote: `what`), ours or a released one, read with PyTorch's
    safe loader (weights_only=True): it builds tensors, numbers, strings and containers, and refuses any other
    class or function a file names, since unpickling one would run code from the file. Only the STAND_INS are
    admitted besides, by their exact names. Our own checkpoints need nothing more: their settings, class names,
    random states and metrics are plain."""
    try:
        with torch.serialization.safe_globals(STAND_INS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")   # said in the one line below, if it fails
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if (protocol := _pickle_protocol(path)) >= 4:   # pickle_protocol=4 or 5: safe loading refuses its FRAME opcode
            raise CheckpointError(
                f"{path}: written with pickle protocol {protocol}, which PyTorch's safe loader cannot "
                f"read as data. If you trust the file, load it once yourself (torch.load(FILE, weights_only=False)) "
                f"and torch.save it again with the default protocol, then give that file") from None
        try:   # what the file names besides what the safe loader and STAND_INS admit, read without running it
            named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError, OSError):   # not torch.save's zip format: the message names the first
            named = re.findall(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(e))
        named = [n for n in named if n not in {name for _, name in STAND_INS}]
        if named:
            raise CheckpointError(
                f"{path}: not loaded, because reading it would run code (it names {', '.join(named)}), which a {what} "
                f"never needs. If you trust the file and where it came from, load it once yourself "
                f"(torch.load(FILE, weights_only=False)), torch.save the plain data you need from it (its state "
                f"dict), and give that file") from None
        reason = str(e).strip().splitlines()[-1]
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0]
    raise CheckpointError(f"{path}: not a whole {what} ({reason[:200]}); it was cut short or is no {what} at all: "
                          f"take another copy, or start without it")


def _pickle_protocol(path):
    """The pickle protocol of a checkpoint (its data.pkl inside torch.save's zip, or the whole file), read from its
    first two bytes (PROTO n), without unpickling anything; 0 if it names none."""
    try:
        with zipfile.ZipFile(path) as z:
            head = z.open(next(n for n in z.namelist() if n.endswith("data.pkl"))).read(2)
    except (zipfile.BadZipFile, StopIteration, OSError):
        with open(path, "rb") as f:
            head = f.read(2)
    return head[1] if head[:1] == b"\x80" and len(head) == 2 else 0


def load_state_dict(path):
    """The state dict of a checkpoint an official repository released ({"model": state_dict, "config": ...,
    ...}, "module." prefixed by DistributedDataParallel; PySlowFast's "model_state"), "module." stripped."""
    ckpt = load_checkpoint(path)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def check_fits(model, state, path, what):
    """Refuse, in one line, a released checkpoint whose tensors do not fit `model` (another --model): the
    file, what it holds, the first tensor that differs, and the flag to change."""
    own = model.state_dict()
    wrong = [k for k in sorted(own.keys() & state.keys()) if own[k].shape != state[k].shape]
    if wrong:
        # visual.conv1.weight is (width, 3, patch, patch): it says which ViT the file holds
        conv = next((v for k, v in state.items() if k.endswith("visual.conv1.weight")), None)
        holds = (f"a ViT of width {conv.shape[0]} with {conv.shape[-1]}-px patches" if conv is not None
                 else "another model")
        raise CheckpointError(f"{path}: {what} of {holds}, which does not fit this --model ({wrong[0]} is "
                              f"{tuple(state[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here; "
                              f"{len(wrong)} tensors differ): give the --model it was trained with")
