"""X-CLIP: let the frames talk, then let the video rewrite the class names.

B. Ni, H. Peng, M. Chen, S. Zhang, G. Meng, J. Fu, S. Xiang, H. Ling. "Expanding Language-Image Pretrained
Models for General Video Recognition". ECCV 2022, arXiv:2208.02816. Official code: github.com/microsoft/VideoX,
folder X-CLIP (models/xclip.py, cct.py, mit.py, prompt.py; utils/optimizer.py; configs/). Not the
retrieval "X-CLIP" of xuguohai/X-CLIP.

ViFi-CLIP averages independent frame embeddings, so it cannot tell a clip from the same clip played
backwards. X-CLIP adds three things to CLIP. For a video x (T, 3, S, S), X^l (T, N+1, D) the tokens of
its T frames entering vision layer l (class token first), and class names c_1..c_C:

  1. Cross-frame communication, in every vision layer l (models/cct.py):
        m   = message_fc(X^l[:, 0])                            (T, D)   one message token per frame
        m   = m + MHA_msg(message_ln(m))                       (T, D)   the frames of one video attend to each other
        Z   = [X^l ; m_t] per frame                            (T, N+2, D)  message token appended last
        X'  = X^l + Attn(ln_1 Z)[:, :N+1]                      CLIP's own spatial attention sees the message...
        X^{l+1} = X' + MLP(ln_2 X')                            ...the MLP does not: it is dropped, rebuilt next layer
  2. Multi-frame integration transformer (models/mit.py), on the frame embeddings f_t = ln_post(X^L_t[0]) @ proj:
        v   = 1/T sum_t [ Block(f + P)_t + f_t ]               (E,)  P (T, E) learned; Block has its own
                                                                     residuals, so f is counted twice (as official)
  3. Video-specific prompts (models/prompt.py), from the last layer's patch tokens (no ln_post):
        ctx = LN_p( 1/T sum_t LN_pv(X^L_t[1:]) @ W_pv )        (N, E)
        u   = w (class embeddings of the frozen text tower)    (C, E)
        u   = u + Proj(CrossAttn(q = norm1 u, k = v = ctx));  u = u + MLP(norm3 u)     2 layers
        t   = w + alpha * u                                    (C, E)  alpha (E,) init 0.1: t = (1+a) w + a Delta
  logit_c = exp(s) * <v/|v|, t_c/|t_c|>                       s = logit_scale, frozen (ln 100 for OpenAI CLIP)

Each part can be switched off (ABLATIONS), and its modules are then not built. --no-messages: every vision layer
is CLIP's own block, X' = X^l + Attn(ln_1 X^l), each frame on its own; --no-mit: v = 1/T sum_t f_t; --no-prompts:
t = w. With all three off X-CLIP is ViFi-CLIP's frame averaging, with X-CLIP's frozen text tower.

Text is the raw class name ("abseiling", UCF's "ApplyEyeMakeup" unsplit); the text tower, token embeddings and
logit_scale are frozen (utils/optimizer.py fix_text), so the class embeddings w are computed once per class list.
The message, MIT and prompt parameters train at 10x the learning rate of the CLIP image tower. The new modules
use the official initialisation: message modules PyTorch's defaults, MIT and prompt Linears trunc-normal 0.02,
alpha 0.1, prompts_visual_proj a plain randn (std 1); nothing starts at zero, so step 0 is not CLIP.
Parameter names are the official ones, so a released checkpoint loads with only "module." stripped. On the same
random ViT-B/16 weights this file's logits equal those of the official XCLIP class to 3e-7 in float32 (2e-15 in
float64); for B/16 at T=8 it has the official 194.9M parameters (131.5M trained).

After build, below the divider: the recipe, where we differ from the official code and why, load_official, and
the Hugging Face format (transformers' XCLIPModel), read and written.
"""
import json
import os
import re
from collections import OrderedDict
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hub, snapshot_download   # both installed with open_clip
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from common import (BARE_TEMPLATE, CheckpointError, attention, block, check_fits, cosine_logits, encode_text,
                    frame_head, encode_captions, load_checkpoint, load_state_dict, param_groups, patch_embed,
                    prompted_similarity, tokenize)


# ---------------------------------------------------------------------------------------------------------
# 1. Cross-frame communication (models/cct.py CrossFramelAttentionBlock)
# ---------------------------------------------------------------------------------------------------------

class CrossFrameBlock(nn.Module):
    """A CLIP vision block (its ln_1, attn, ln_2, mlp, taken over with their weights) plus message modules,
    under the names the official checkpoints use: visual.transformer.resblocks.N.{message_fc,message_ln,...}."""
    def __init__(self, blk):
        super().__init__()
        D = blk.ln_1.normalized_shape[0]
        self.message_fc = nn.Linear(D, D)                  # PyTorch defaults, as official: nothing zeroed
        self.message_ln = nn.LayerNorm(D)
        self.message_attn = nn.MultiheadAttention(D, blk.attn.num_heads, batch_first=True)
        self.ln_1, self.attn, self.ls_1 = blk.ln_1, blk.attn, blk.ls_1    # ls_*: Identity for CLIP
        self.ln_2, self.mlp, self.ls_2 = blk.ln_2, blk.mlp, blk.ls_2

    def forward(self, x, T):
        BT, L, D = x.shape                                              # (B*T, N+1, D), row b*T + t
        m = self.message_fc(x[:, 0]).view(BT // T, T, D)                # (B, T, D): this layer's class tokens
        m = m + attention(self.message_attn, self.message_ln(m))        # (B, T, D): attention within a video
        h = self.ln_1(torch.cat([x, m.reshape(BT, 1, D)], dim=1))       # (B*T, N+2, D): message token last
        x = x + self.ls_1(attention(self.attn, h[:, :L], kv=h))         # (B*T, N+1, D): message out dropped
        return x + self.ls_2(self.mlp(self.ln_2(x)))


# ---------------------------------------------------------------------------------------------------------
# 2. Multi-frame integration transformer (models/mit.py)
# ---------------------------------------------------------------------------------------------------------

class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation, used by all of X-CLIP's new modules."""
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def init_linear(m):
    """MIT and prompt generator init (mit.py, prompt.py _init_weights): Linear trunc-normal 0.02, bias 0.
    LayerNorms keep their (1, 0) default; nn.MultiheadAttention's in_proj keeps its xavier default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class ResidualAttentionBlock(nn.Module):
    """A pre-LN CLIP block of width E over the T frame embeddings of each video."""
    def __init__(self, E):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, max(1, E // 64), batch_first=True)
        self.ln_1 = nn.LayerNorm(E)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(E, 4 * E), gelu=QuickGELU(), c_proj=nn.Linear(4 * E, E)))
        self.ln_2 = nn.LayerNorm(E)

    def forward(self, x):                                               # (B, T, E)
        x = x + attention(self.attn, self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MultiframeIntegrationTransformer(nn.Module):
    def __init__(self, T, E, layers=1):
        super().__init__()
        self.positional_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, T, E), std=0.02))
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(E) for _ in range(layers)])
        self.apply(init_linear)

    def forward(self, f):                                               # f (B, T, E) frame embeddings
        x = self.resblocks(f + self.positional_embedding)               # (B, T, E)
        return (x + f).mean(dim=1)                                      # (B, E): f a second time, as official


# ---------------------------------------------------------------------------------------------------------
# 3. Video-specific prompt generator (models/prompt.py)
# ---------------------------------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """Class embeddings (queries) attend to the video's patch tokens; q/k/v without bias, as official."""
    def __init__(self, E, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(E, E, bias=False) for _ in range(3))
        self.proj = nn.Linear(E, E)

    def forward(self, x, ctx):                                          # x (B, C, E), ctx (B, N, E)
        q = self.q_proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)       # (B, H, C, E/H)
        k = self.k_proj(ctx).unflatten(-1, (self.heads, -1)).transpose(1, 2)     # (B, H, N, E/H)
        v = self.v_proj(ctx).unflatten(-1, (self.heads, -1)).transpose(1, 2)     # (B, H, N, E/H)
        out = F.scaled_dot_product_attention(q, k, v)                   # (B, H, C, E/H)
        return self.proj(out.transpose(1, 2).flatten(2))                # (B, C, E)


class PromptGeneratorLayer(nn.Module):
    def __init__(self, E):
        super().__init__()
        self.cross_attn = CrossAttention(E, max(1, E // 64))
        self.norm1 = nn.LayerNorm(E)
        self.norm3 = nn.LayerNorm(E)
        # Index 2 is the official Dropout(0); an Identity keeps the last Linear's name mlp.3.
        self.mlp = nn.Sequential(nn.Linear(E, 4 * E), QuickGELU(), nn.Identity(), nn.Linear(4 * E, E))

    def forward(self, u, ctx):
        u = u + self.cross_attn(self.norm1(u), ctx)
        return u + self.mlp(self.norm3(u))


class VideoSpecificPrompt(nn.Module):
    def __init__(self, E, layers=2, alpha=0.1):
        super().__init__()
        self.norm = nn.LayerNorm(E)
        self.decoder = nn.ModuleList([PromptGeneratorLayer(E) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((E,), alpha))
        self.apply(init_linear)

    def forward(self, text, ctx):                                       # text (B, C, E), ctx (B, N, E)
        ctx = self.norm(ctx)
        for layer in self.decoder:
            text = layer(text, ctx)
        return self.alpha * text                                        # (B, C, E): alpha * (w + Delta)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

class Model(nn.Module):
    """CLIP's towers are registered under CLIP's own attribute names (visual, transformer, token_embedding,
    positional_embedding, ln_final, text_projection, logit_scale) next to mit and prompts_*, so that
    state_dict() has exactly the official keys, and a released checkpoint loads without renaming."""
    def __init__(self, clip, T=8, template=BARE_TEMPLATE, mit_layers=1, prompts_layers=2, prompts_alpha=0.1,
                 grad_checkpointing=False, messages=True, mit=True, prompts=True):
        super().__init__()
        # Effective values of xclip.load (alpha 0.1, 2 prompt layers, 1 MIT layer), not the XCLIP class defaults.
        D, E = clip.visual.conv1.out_channels, clip.visual.proj.shape[1]
        self.T, self.template, self.grad_checkpointing = T, template, grad_checkpointing
        if mit and mit_layers < 1:
            raise ValueError(f"xclip.py: --mit-layers {mit_layers} would still add the position embedding and count "
                             f"the frame embeddings twice; give 1 or more, or --no-mit for no integration transformer")
        # A part switched off (ABLATIONS) is not built: its parameters do not exist, its attribute is None.
        self.messages = messages
        if messages:
            clip.visual.transformer.resblocks = nn.ModuleList(
                [CrossFrameBlock(blk) for blk in clip.visual.transformer.resblocks])
        self.visual = clip.visual
        self.transformer, self.token_embedding, self.ln_final = clip.transformer, clip.token_embedding, clip.ln_final
        self.positional_embedding, self.text_projection = clip.positional_embedding, clip.text_projection
        self.logit_scale, self.tokenizer = clip.logit_scale, clip.tokenizer
        self.mit = MultiframeIntegrationTransformer(T, E, mit_layers) if mit else None
        self.prompts_generator = None
        if prompts:
            self.prompts_visual_ln = nn.LayerNorm(D)
            self.prompts_visual_proj = nn.Parameter(torch.randn(D, E))     # std 1, as official (xclip.py)
            self.prompts_generator = VideoSpecificPrompt(E, prompts_layers, prompts_alpha)
        # utils/optimizer.py fix_text: train only what is named visual./mit/prompts; text and logit_scale frozen.
        for name, p in self.named_parameters():
            p.requires_grad_(any(k in name for k in ("visual.", "mit", "prompts")))
        # Class tokens are not weights: set_classes rebuilds them for any class list.
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        self._text = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_text", None))

    def forward(self, video):
        if self.prompts_generator is None:                              # --no-prompts: t = w
            return cosine_logits(self.embed_videos(video), self.text_features(), self.logit_scale)   # (B, C)
        v, ctx = self.embed_videos(video)                               # (B, E), (B, N, E)
        return cosine_logits(v, self.prompted(self.text_features(), ctx), self.logit_scale)   # (B, C)

    def embed_videos(self, video):
        """(B, T, 3, S, S) -> the video embedding v (B, E) and what the prompts attend to, ctx (B, N, E);
        with --no-prompts v alone."""
        B, T = video.shape[:2]
        if self.mit is not None and T != self.T:
            raise ValueError(f"this X-CLIP was built for {self.T} frames (its mit.positional_embedding is "
                             f"(1, {self.T}, E)) but got {T}; pass --frames {self.T} or build with --frames {T}")
        x = patch_embed(self.visual, video.flatten(0, 1))               # (B*T, N+1, D), frames of a video contiguous
        for blk in self.visual.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self.vision_layer, blk, x, T, use_reentrant=False)
            else:
                x = self.vision_layer(blk, x, T)
        f = frame_head(self.visual, x).view(B, T, -1)                   # (B*T, E) -> (B, T, E)
        v = f.mean(1) if self.mit is None else self.mit(f)              # (B, E); --no-mit: the plain mean
        if self.prompts_generator is None:
            return v
        patches = self.prompts_visual_ln(x[:, 1:])                      # (B*T, N, D): no ln_post, as official
        return v, patches.view(B, T, *patches.shape[1:]).mean(1) @ self.prompts_visual_proj   # ctx (B, N, E)

    def vision_layer(self, blk, x, T):
        """(B*T, N+1, D) -> (B*T, N+1, D): X-CLIP's cross-frame block, or with --no-messages CLIP's own block
        (common.block), each frame on its own."""
        return blk(x, T) if self.messages else block(blk, x)

    def prompted(self, text, ctx):
        """(C, E) class or caption embeddings, rewritten for each video by its ctx (B, N, E) -> (B, C, E)."""
        w = text.to(ctx.dtype).expand(len(ctx), -1, -1)                # (B, C, E)
        return w + self.prompts_generator(w, ctx)                      # one set of classes per video

    def set_classes(self, names):
        self.tokens = tokenize(self, [self.template.format(n) for n in names])   # (C, L)
        self._text = None

    def text_features(self):
        """(C, E) class embeddings of the frozen text tower, computed once per class list, device and dtype
        (in the weights' own precision, outside autocast: it is done once)."""
        if not self.tokens.numel():
            raise RuntimeError("call set_classes(names) before the forward pass")
        w = self.text_projection
        if self._text is None or (self._text.device, self._text.dtype) != (w.device, w.dtype):
            with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
                self._text = encode_text(self, self.tokens)
        return self._text

    def param_groups(self, lr, weight_decay):
        """utils/optimizer.py: 10x LR for message_/mit/prompts parameters; no decay for 1-D tensors, biases
        and positional embeddings (no_weight_decay_keywords). Four groups; the official eight split the
        same rules once more by module and are otherwise identical."""
        new = ("message_", "mit", "prompts")
        return param_groups(
            self, lr, weight_decay,
            no_decay=lambda name, p: p.ndim <= 1 or name.endswith(".bias") or "positional_embedding" in name,
            lr_scale=lambda name: 10.0 if any(k in name for k in new) else 1.0)

    def embed_captions(self, captions):
        """(K, E): each caption through the frozen text tower (the template is "{}": a class name is its caption)."""
        return encode_captions(self, captions)

    def similarity(self, videos, text):
        """(N, K) retrieval logits: the prompts rewrite every caption for every video, as forward does for the
        classes, so each pair is scored on its own (common.prompted_similarity, in chunks); with --no-prompts
        plain cosines."""
        if self.prompts_generator is None:
            return cosine_logits(videos, text, self.logit_scale)
        return prompted_similarity(*videos, text, self.prompted, self.logit_scale)


def build(clip, args):
    layers = getattr(args, "mit_layers", None)
    return Model(clip, T=args.frames, template=getattr(args, "template", None) or BARE_TEMPLATE,
                 mit_layers=1 if layers is None else layers,
                 grad_checkpointing=getattr(args, "grad_checkpointing", False),
                 **{part: getattr(args, part, None) is not False for part in ABLATIONS})   # None: not given, kept


# =========================================================================================================
# What makes X-CLIP a tool: the official recipe and its variants, the embedded demo's setting, the flags, where
# we differ from the official code and why, loading the released checkpoints, and the Hugging Face format.
# =========================================================================================================

# Fully-supervised Kinetics-400, ViT-B/16 with 8 frames: configs/k400/16_8.yaml over the defaults of
# utils/config.py; optimizer and schedule from utils/optimizer.py; final 4x3-view test from main.py.
RECIPE = dict(
    frames=8,                  # DATA.NUM_FRAMES
    sampling="segment",        # TSN segments, one random frame each (datasets/pipeline.py SampleFrames)
    crop="tsn",                # datasets/build.py: Resize(-1, 256), MultiScaleCrop, Resize(224), Flip; test below
    stride=1,
    lr=8e-6,                   # TRAIN.LR; x10 for message/MIT/prompt parameters (param_groups)
    lr_min_ratio=0.01,         # CosineLRScheduler(lr_min=TRAIN.LR / 100), the same floor for the 10x groups
    schedule="timm", official_accum=4,   # per micro-batch, warm-up from 0; ACCUMULATION_STEPS 4 (16_8.yaml)
    weight_decay=1e-3,         # TRAIN.WEIGHT_DECAY; not on 1-D tensors, biases, positional embeddings
    betas=(0.9, 0.98), eps=1e-8,
    epochs=30, warmup_epochs=5,
    global_batch=256,          # 8 per GPU x 4 accumulation steps x 8 GPUs (config + README command)
    grad_clip=0.0,             # main.py clips nothing
    mean="imagenet",           # datasets/build.py normalises with ImageNet statistics
    flip=True, color_jitter=0.8, grayscale=0.2,
    mixup=0.8, cutmix=1.0, mix_switch=0.5, smoothing=0.1,   # AUG defaults (datasets/blending.py)
    test_clips=4, test_crops=3,   # main.py sets TEST.NUM_CLIP 4, NUM_CROP 3 for the final test
    template=BARE_TEMPLATE,    # utils/tools.py generate_text: the raw names of labels/*.csv
)

# Other official settings (--recipe NAME), as overrides of RECIPE.
VARIANTS = {
    "k400-16f": dict(frames=16, official_accum=8),   # configs/k400/16_16.yaml (4 x 8 accumulation: same 256)
    "k400-32f": dict(frames=32, official_accum=8),   # configs/k400/16_32.yaml
    # configs/hmdb51/16_32.yaml and ucf101/16_32.yaml: 2/4/8/16-shot, from CLIP, 4 x 2 accumulation x 8 GPUs.
    # Tested after training with main.py's 4 clips x 3 crops, like every X-CLIP training run.
    "few-shot": dict(frames=32, lr=2e-6, epochs=50, global_batch=64, official_accum=2),
    # No config released: K400 with 32 frames for 10 epochs (maintainer, VideoX issue #68), text frozen; the
    # accumulation of 16_32.yaml. The transfer is tested with --only_test, whose views are utils/config.py's
    # defaults, TEST.NUM_CLIP 1 x NUM_CROP 1.
    "zero-shot": dict(frames=32, epochs=10, official_accum=8, test_clips=1, test_crops=1),
}

# The embedded demo trains a tiny CLIP: train.py's lr 1e-3 would give the new modules 10x, 1e-2, which (from a
# random CLIP) trained worse than 3e-4 with the new modules at 3e-3. The figures are in the README's Measured part.
EMBEDDED = dict(lr=3e-4)


# The parts a run can switch off, each with --no-PART (train.py names the run after them: xclip-supervised-no-mit);
# the model is then exactly the simpler one the docstring gives, and the part's modules are not built.
ABLATIONS = ("messages", "mit", "prompts")


def add_args(parser):
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute each vision block in the backward pass: less activation memory for "
                             "one more forward (the official code does this for ViT-L/14 at 336 px)")
    parser.add_argument("--mit-layers", type=int, help="blocks of the multi-frame integration transformer (1, as "
                                                       "official; --no-mit for none)")
    parser.add_argument("--no-messages", dest="messages", action="store_false", default=None,
                        help="ablation: every vision block is CLIP's own, no message token: the frames are encoded "
                             "independently, as by CLIP")
    parser.add_argument("--no-mit", dest="mit", action="store_false", default=None,
                        help="ablation: the video embedding is the plain mean of the frame embeddings (no integration "
                             "transformer, no position embedding)")
    parser.add_argument("--no-prompts", dest="prompts", action="store_false", default=None,
                        help="ablation: the class embeddings are the frozen text tower's, not rewritten for each "
                             "video (no video-specific prompt generator)")


# Where we differ from the official code, and why:
#  1. Text embeddings are cached per class list (set_classes), in the weights' precision, and dropped when
#     weights are loaded; the official cache is never invalidated (a second class list silently reuses the
#     first's) and its forward switches the model back to train mode on every call, also during evaluation.
#     We leave the mode alone.
#  2. The spatial attention computes queries for the N+1 image tokens only: the message token's output is
#     discarded anyway, so the result is the same with one query fewer.
#  3. The prompt context averages the normed patch tokens over frames before projecting them (the projection is
#     linear): the same up to round-off, with T times fewer FLOPs in the projection.
#  4. No DropPath: DROP_PATH_RATE is 0 in every released config (and the official DropPath draws per token,
#     not per sample). All dropouts of the official modules are 0 and are left out.
#  5. Gradient checkpointing (--grad-checkpointing) checkpoints every block; the official code uses
#     checkpoint_sequential with 3 segments. Same gradients, a different memory/time trade.
#  6. The message attention has as many heads as its CLIP block (D/64 for every OpenAI ViT, as official; the
#     tiny test CLIP has 32-wide heads). New modules always use QuickGELU, as official, even if the CLIP uses
#     GELU.
#  7. Mixed precision is torch.autocast (bf16 where the GPU has it), not apex O1 (fp16); the final similarity is
#     computed in float32 all the same (common.cosine_logits), where bf16 would round logits of 10-35 to steps
#     of up to 0.25. The official validation loader drops the last odd video of each GPU's shard (drop_last
#     with 2 videos per batch); we test every video.


def load_official(model, path):
    """Load a released X-CLIP checkpoint: the authors' file (its "model" state dict, "module." stripped, no
    renaming), or a Hugging Face folder or hub id (read_hf). The MIT's temporal position embedding fixes T, so a
    checkpoint of another frame count is refused."""
    if not model.messages or model.mit is None or model.prompts_generator is None:
        raise CheckpointError(f"{path}: released X-CLIP weights hold every part of X-CLIP, and this model was built "
                              f"without some: leave out --no-messages, --no-mit and --no-prompts to load them")
    state = read_hf(model, path) if is_hf(path) else load_state_dict(path)
    pos = state.get("mit.positional_embedding")
    if pos is not None and pos.shape[1] != model.T:
        raise ValueError(f"{path} was trained with {pos.shape[1]} frames (mit.positional_embedding "
                         f"{tuple(pos.shape)}) but this model has {model.T}: pass --frames {pos.shape[1]}")
    check_fits(model, state, path, "an X-CLIP checkpoint")
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path} is not an X-CLIP checkpoint: it lacks {len(missing)} of this model's tensors "
                              f"{missing[:3]} and holds {len(unexpected)} others {unexpected[:3]}; check --method")
    model.load_state_dict(state)


# ---- The Hugging Face format ----------------------------------------------------------------------------------
# transformers' XCLIPModel (models/x_clip/modeling_x_clip.py, configuration_x_clip.py) follows the official code, so
# it computes these logits (2 and 3 above: equal up to round-off); its layout differs: to_hf, from_hf, hf_config. Its
# MIT runs the vision tower's activation, which must then be QuickGELU as ours. The MIT's and prompts' heads are the
# authors' E // 64, written, never read (transformers' conversion script left 8 for ViT-L/14, where E // 64 is 12).
NAMES = [   # (ours, transformers'): a whole name, or a prefix where it ends with "."
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."), ("visual.proj", "visual_projection.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.conv1.", "vision_model.embeddings.patch_embedding."), ("visual.ln_pre.", "vision_model.pre_layernorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."), ("ln_final.", "text_model.final_layer_norm."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("token_embedding.", "text_model.embeddings.token_embedding."), ("text_projection", "text_projection.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("mit.positional_embedding", "mit.position_embedding"), ("mit.resblocks.", "mit.encoder.layers."),
    ("prompts_visual_ln.", "prompts_visual_layernorm."), ("prompts_visual_proj", "prompts_visual_projection"),
    ("prompts_generator.norm.", "prompts_generator.layernorm.")]
LAYER = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
         ("attn.", "self_attn.")]                                # message_fc, message_ln, message_attn: the same
TRANSPOSED = ("visual.proj", "text_projection")
SPLIT = re.compile(r"(.*\.layers\.\d+\.(?:self|message)_attn)\.([qkv])_proj\.(weight|bias)")


def rename(name, to_hf=True):
    """One tensor's name, ours -> transformers' (or back): the first pair of NAMES (in a layer: of LAYER) that fits."""
    def swap(part, pairs):
        return next((b + part[len(a):] for a, b in (pairs if to_hf else [(b, a) for a, b in pairs])
                     if part == a or a.endswith(".") and part.startswith(a)), part)
    layer, rest = re.fullmatch(r"(.*?(?:resblocks|layers)\.\d+\.)?(.*)", name).groups()
    return swap(name, NAMES) if layer is None else swap(layer, NAMES) + swap(rest, LAYER)


def to_hf(state):
    """Our state dict -> XCLIPModel's: renamed, each in_proj cut into q/k/v_proj, the projections transposed."""
    out = {}
    for name, t in state.items():
        key, t = rename(name), t.t() if name in TRANSPOSED else t
        stem, _, kind = key.rpartition(".in_proj_")                   # (3D, D) -> three (D, D)
        out.update({f"{stem}.{p}_proj.{kind}": x for p, x in zip("qkv", t.chunk(3))} if stem else {key: t})
    return out


def from_hf(state):
    """XCLIPModel's state dict -> ours, the inverse of to_hf (position_ids, saved before transformers 4.31, dropped)."""
    out = {}
    for key, t in state.items():
        split = SPLIT.fullmatch(key)
        if key.endswith("position_ids") or split and split[2] != "q":
            continue
        if split:   # (3D, D): q, k, v stacked, as nn.MultiheadAttention packs them
            t = torch.cat([state[f"{split[1]}.{p}_proj.{split[3]}"] for p in "qkv"])
            key = f"{split[1]}.in_proj_{split[3]}"
        name = rename(key, to_hf=False)
        out[name] = t.t() if name in TRANSPOSED else t
    return out


def hf_config(model):
    """transformers' XCLIPConfig of this Model, as config.json holds it: the sizes of its modules."""
    def sizes(blocks, p=""):   # of a transformer: the text's, the vision's, and with p = "mit_" the MIT's
        return {f"{p}hidden_size": blocks[0].attn.embed_dim, f"{p}intermediate_size": blocks[0].mlp.c_fc.out_features,
                f"{p}num_hidden_layers": len(blocks), f"{p}num_attention_heads": blocks[0].attn.num_heads}
    vision, blocks = model.visual, model.visual.transformer.resblocks
    if not model.messages or model.mit is None or model.prompts_generator is None:
        raise CheckpointError("transformers' XCLIPModel has every part of X-CLIP, and this model was built without "
                              "some (--no-messages, --no-mit or --no-prompts)")
    if isinstance(blocks[0].mlp.gelu, nn.GELU):
        raise CheckpointError("transformers' XCLIPModel runs its MIT with the CLIP's activation, X-CLIP's MIT "
                              "QuickGELU: no XCLIPConfig has this CLIP's exact GELU; build or train with --quick-gelu")
    act, prompts = dict(hidden_act="quick_gelu", layer_norm_eps=blocks[0].ln_1.eps), model.prompts_generator.decoder
    return dict(
        model_type="xclip", architectures=["XCLIPModel"], logit_scale_init_value=model.logit_scale.item(),
        projection_dim=vision.proj.shape[1], prompt_layers=len(prompts), prompt_hidden_act="quick_gelu",
        prompt_num_attention_heads=prompts[0].cross_attn.heads, prompt_alpha=0.1,   # alpha: the weights hold its value
        text_config=dict(sizes(model.transformer.resblocks), **act, vocab_size=model.token_embedding.num_embeddings,
                         max_position_embeddings=model.positional_embedding.shape[0]),
        vision_config=dict(sizes(blocks), **sizes(model.mit.resblocks, "mit_"), **act, num_frames=model.T,
                           image_size=vision.image_size[0], patch_size=vision.conv1.kernel_size[0]))


def save_hf(model, folder):
    """--export-hf: this Model as a folder XCLIPModel.from_pretrained(folder) loads: config.json, model.safetensors."""
    config = hf_config(model)
    os.makedirs(folder, exist_ok=True)
    Path(folder, "config.json").write_text(json.dumps(config, indent=2))
    state = {k: t.detach().contiguous().clone() for k, t in to_hf(model.state_dict()).items()}   # q/k/v: own storage
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def is_hf(path):
    """A folder whose config.json names a transformers model_type, or a hub id (owner/name, no folder owner here)."""
    config = Path(path, "config.json")
    return '"model_type"' in config.read_text() if config.is_file() else \
        re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not os.path.exists(path.split("/")[0])


def read_hf(model, path):
    """A Hugging Face X-CLIP folder, or a hub id in the local cache (nothing is downloaded), checked against model ->
    our state dict, from model.safetensors, else pytorch_model.bin through PyTorch's safe loader."""
    try:
        folder = path if os.path.isdir(path) else snapshot_download(path, local_files_only=True)
    except FileNotFoundError:   # huggingface_hub's LocalEntryNotFoundError
        raise CheckpointError(f"{path} is not in the Hugging Face cache ({hub.HF_HUB_CACHE}): download it where there "
                              f"is a network (hf download {path}) and pass its folder, or the id again") from None
    config = json.loads(Path(folder, "config.json").read_text())
    if config.get("model_type") != "xclip":
        raise CheckpointError(f"{path}: a transformers {config.get('model_type')!r} model, not an X-CLIP (\"xclip\")")
    check_hf(model, config, path)
    weights = os.path.join(folder, "model.safetensors")
    return from_hf(load_file(weights) if os.path.isfile(weights) else load_checkpoint(f"{folder}/pytorch_model.bin"))


def check_hf(model, config, path):
    """Refuse in one line an X-CLIP config of other towers than this model's (hf_config refuses a GELU CLIP)."""
    try:
        ours, theirs = towers(hf_config(model)), towers(config)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if ours != theirs:
        fits = next((name for name in sorted(open_clip.list_models(), key=len) if clip_towers(name) == theirs), None)
        raise CheckpointError(
            f"{path}: an X-CLIP on the towers of --model {fits}, not this model's: pass --model {fits}"
            if fits else f"{path}: an X-CLIP on towers no open_clip --model has: {theirs}")


def towers(config):
    """What --model decides in a transformers X-CLIP config: E, the vision tower, the text tower."""
    v, t = config["vision_config"], config["text_config"]
    return (config.get("projection_dim"), v.get("image_size"), v.get("patch_size"), *(c.get(k) for c in (v, t) for k
            in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act")),
            t.get("vocab_size"), t.get("max_position_embeddings"))


def clip_towers(name):
    """towers() of an open_clip --model, if a plain CLIP (with QuickGELU, as an X-CLIP's); else None."""
    cfg = open_clip.get_model_config(name)
    if set(cfg) <= {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}:
        v, t = CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])
        return (cfg["embed_dim"], v.image_size, v.patch_size, v.width, int(v.width * v.mlp_ratio), v.layers,
                v.width // v.head_width, "quick_gelu", t.width, int(t.width * t.mlp_ratio), t.layers, t.heads,
                "quick_gelu", t.vocab_size, t.context_length)
