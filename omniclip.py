"""OmniCLIP: parallel temporal adapters and self-prompts on a frozen CLIP.

M. Liu, B. Li, Y. Yu. "OmniCLIP: Adapting CLIP for Video Recognition with Spatial-Temporal Omni-Scale
Feature Learning". ECAI 2024, arXiv:2408.06158. Official repository: github.com/XiaoBuL/OmniCLIP, which
holds only a README ("The code will be released soon!"): no code, configs or checkpoints. This file is
therefore a reading of the paper, not a port, and every detail below carries its source
(the reasons are given where each choice is made):
  [P] the paper's readable text (the abstract and the start of Sec. 1: every stored copy we could reach
  stops there, so Sec. 3-4, the equations, implementation details and tables, remain unread),
  [R] a third-party review of the paper (themoonlight.io), [V] verified in another method's official code
  (X-CLIP, ViFi-CLIP, ST-Adapter, AIM), [D] our choice, with the other readings behind flags.

The idea [P]: turn every block of CLIP's image encoder into a spatial-temporal block that learns features
at three scales: spatial (within a frame, the frozen attention), temporal (across frames, a parallel
temporal adapter, PTA) and dynamic spatial-temporal (object regions whose place and size change over time,
a self-prompt generator, SPG). In our notation, for X_l (B*T, K, D), K = N + 1 tokens per frame:

    S   = SPG(X)        = Q + W_up GELU(W_dn LN(Q)),   Q = [pool_g(patch grid of X) + e_g]_{g=1,2,4}   (B*T, P, D)
    A   = MSA(q = ln_1 X, k = v = ln_1 [X; S])          frozen spatial attention; prompt outputs dropped (B*T, K, D)
    U   = PTA(ln_1 X)   = W_u MHSA_t(W_d Z + E_t)       Z regrouped (B*T, K, D) -> (B*K, T, D)      (B*T, K, D)
    X'  = X + A + s U                                   parallel: both branches read the same ln_1 X
    X'' = X' + MLP(ln_2 X')                             frozen
    v   = 1/T sum_t ln_post(X_L[t, 0]) @ proj           (B, E)    mean of the frame class tokens
    w_c = TextEnc("a photo of a {c}.")                   (C, E)    frozen, cached per class list
    logit_c = exp(logit_scale) * <v/|v|, w_c/|w_c|>                logit_scale frozen too

W_u is zero at initialisation, so with SPG off the model starts as frame-averaged CLIP exactly; every CLIP
weight is frozen (--finetune-visual trains the image tower too). Each part can be switched off (ABLATIONS),
and its modules are then not built: --no-pta: U = 0; --no-spg: no prompts, A = MSA(ln_1 X), CLIP's own
attention. With both off the model is frozen CLIP's frame mean against the templated class names, exactly.
Trainable parameters at ViT-B/16 with 8 frames and the defaults: 8,944,128 = PTA 12 x 445,632 + SPG 12 x
299,712 (`python omniclip.py` prints them). The paper's own parameter and GFLOP figures could not be retrieved.

What is the paper's, and what is ours:
- [P] Spatial-temporal blocks with a PTA, and an SPG that makes prompts for dynamic object features.
- [R] PTA: tokens at the same position regrouped across frames, (B*K, T, D); a bottleneck of down
  projection, self-attention over time and up projection; parallel, not serial or a side network.
- [D] PTA beside the spatial attention, reading ln_1's output (--pta-position serial: before the
  attention, as AIM and ST-Adapter place theirs). Fusion scale s = 1 (--pta-scale).
- [D] PTA width D/4 = 192, AIM's ratio (--pta-ratio 0.5 is ST-Adapter's 384); heads = width / 64.
- [D] PTA in all layers and on every token, class token included (--pta-layers, e.g. 6-11).
- [D] E_t: a learned temporal embedding after the down projection, one row per frame of the training T,
  linearly interpolated to any other T (reading: use the first T rows). No extra activation.
- [D] Init: W_u, b_u and every bias zero; other weights and E_t trunc-normal(0.02) (ST-Adapter and AIM
  both zero their last projection [V]).
- [D] SPG prompts = the frame's own patch grid average-pooled to 1x1, 2x2, 4x4 (P = 21; --spg-scales,
  --spg-pool max), plus a per-scale embedding e_g (zero init), refined by a residual bottleneck of width
  D/4 (--spg-ratio) whose output layer starts at zero. Made afresh in every layer from that layer's input
  (--spg-layers), seen only as keys and values by the frozen attention, never by the PTA or the MLP.
  Readings not built: prompts carried through the layers; a small network on the class token.
- [D] Video embedding: mean of the frame class tokens (ViFi-CLIP shows it strong); no temporal head.
- [D] Text: frozen encoder, "a photo of a {}." (--template). --video-prompts adds X-CLIP's
  video-specific prompt generator (prompt.py), off by default: the abstract does not mention one.
- [D] Recipe: X-CLIP's (configs/k400/16_8.yaml, hmdb51/16_32.yaml) and ViFi-CLIP's zero-shot one, since
  the paper's implementation details were not readable; new modules at 10x the base LR (X-CLIP
  utils/optimizer.py [V]).

After build, below the divider: the recipe, and where the X-CLIP-style pieces differ from X-CLIP's code.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from common import (PHOTO_TEMPLATE, attention, cosine_logits, count_params, encode_captions, encode_text, frame_head,
                    freeze, param_groups, patch_embed, prompted_similarity, tokenize)


# ---------------------------------------------------------------------------------------------------------
# Self-prompt generator (S), parallel temporal adapter (U), and the block that joins them (X', X'')
# ---------------------------------------------------------------------------------------------------------

class SelfPromptGenerator(nn.Module):
    """SPG: prompt tokens pooled from the frame's own patch grid at several scales, then refined."""

    def __init__(self, width, hidden, scales=(1, 2, 4), pool="avg"):
        super().__init__()
        self.scales = tuple(scales)
        self.pool = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
        self.scale_embedding = nn.Parameter(torch.zeros(len(self.scales), width))
        self.norm = nn.LayerNorm(width)
        self.down_proj = nn.Linear(width, hidden)
        self.up_proj = nn.Linear(hidden, width)
        nn.init.trunc_normal_(self.down_proj.weight, std=0.02)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)   # prompts start as plain region averages: in-distribution tokens
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x):
        BT, K, D = x.shape                                         # block input X: (B*T, K, D)
        g = math.isqrt(K - 1)
        grid = x[:, 1:].transpose(1, 2).unflatten(2, (g, g))       # (B*T, D, g, g) patch grid, class token out
        q = torch.cat([self.pool(grid, s).flatten(2).transpose(1, 2) + e      # (B*T, s*s, D)
                       for s, e in zip(self.scales, self.scale_embedding)], dim=1)   # (B*T, P, D)
        return q + self.up_proj(F.gelu(self.down_proj(self.norm(q))))            # (B*T, P, D)


def resample(e, T):
    """(T0, C) -> (T, C): linear interpolation along time, first and last rows kept."""
    if e.shape[0] == T:
        return e
    return F.interpolate(e.t()[None], size=T, mode="linear", align_corners=True)[0].t()


class TemporalAdapter(nn.Module):
    """PTA: down-project, attend over time between tokens at one position, up-project (zero init)."""

    def __init__(self, width, hidden, frames):
        super().__init__()
        self.down_proj = nn.Linear(width, hidden)
        self.temporal_embedding = nn.Parameter(torch.zeros(frames, hidden))
        self.attn = nn.MultiheadAttention(hidden, max(1, hidden // 64), batch_first=True)
        self.up_proj = nn.Linear(hidden, width)
        for w in (self.down_proj.weight, self.temporal_embedding, self.attn.in_proj_weight, self.attn.out_proj.weight):
            nn.init.trunc_normal_(w, std=0.02)
        for b in (self.down_proj.bias, self.attn.in_proj_bias, self.attn.out_proj.bias):
            nn.init.zeros_(b)
        # The branch adds exactly 0 at the start: training begins at CLIP. With small q/k weights the
        # attention over time also starts near uniform, i.e. order-blind; order is learned, not given.
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def time_embedding(self, T):
        """(T, hidden): E_t as trained, or linearly resampled along time for another frame count."""
        return resample(self.temporal_embedding, T)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "temporal_embedding"   # a checkpoint trained with another T: resample its rows
        if key in state_dict and state_dict[key].shape[0] != self.temporal_embedding.shape[0]:
            state_dict[key] = resample(state_dict[key], self.temporal_embedding.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z, T):
        BT, K, _ = z.shape                                         # z = ln_1(X): (B*T, K, D)
        h = self.down_proj(z)                                      # (B*T, K, Da)
        h = h.view(BT // T, T, K, -1).transpose(1, 2).flatten(0, 1)   # (B*K, T, Da): one position, all frames
        h = attention(self.attn, h + self.time_embedding(T))       # (B*K, T, Da): each video attends to itself
        h = h.view(BT // T, K, T, -1).transpose(1, 2).flatten(0, 1)   # (B*T, K, Da)
        return self.up_proj(h)                                     # (B*T, K, D)


def st_block(blk, x, T, pta=None, spg=None, serial=False, scale=1.0):
    """A frozen CLIP block made spatial-temporal. x (B*T, K, D) -> (B*T, K, D).
    The spatial attention's queries are the frame's K tokens; its keys and values also include the P
    prompts, which is the same as attending over [X; S] and dropping the prompt outputs."""
    if pta is not None and serial:
        x = x + scale * pta(blk.ln_1(x), T)
    y = blk.ln_1(x)                                                # (B*T, K, D)
    kv = y if spg is None else torch.cat([y, blk.ln_1(spg(x))], dim=1)   # (B*T, K+P, D)
    out = x + blk.ls_1(attention(blk.attn, y, kv))
    if pta is not None and not serial:
        out = out + scale * pta(y, T)                              # parallel: the same ln_1 X as the attention
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


# ---------------------------------------------------------------------------------------------------------
# Optional: X-CLIP's video-specific prompt generator (X-CLIP prompt.py), parameter names as there
# ---------------------------------------------------------------------------------------------------------

class PromptGeneratorLayer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(0.0),   # X-CLIP's indices
                                 nn.Linear(4 * width, width))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cross_attn.in_proj_weight, std=0.02)

    def forward(self, u, ctx):                                     # u (B, C, E) class queries, ctx (B, N, E)
        u = u + attention(self.cross_attn, self.norm1(u), ctx)
        return u + self.mlp(self.norm3(u))


class VideoSpecificPrompt(nn.Module):
    """Each class embedding attends to the video's patch tokens; the result, scaled by alpha (0.1 per
    channel), is added to the class embedding. alpha scales u, which still contains c: X-CLIP's form."""

    def __init__(self, width, layers=2, alpha=0.1):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.ModuleList([PromptGeneratorLayer(width) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((width,), alpha))

    def forward(self, text, ctx):                                  # text (C, E), ctx (B, N, E)
        u = text.expand(ctx.shape[0], -1, -1)                      # (B, C, E)
        ctx = self.norm(ctx)
        for layer in self.decoder:
            u = layer(u, ctx)
        return self.alpha * u                                      # (B, C, E)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

class Model(nn.Module):
    def __init__(self, clip, frames=8, use_pta=True, use_spg=True, pta_ratio=0.25, pta_layers="all",
                 pta_position="parallel", pta_scale=1.0, spg_ratio=0.25, spg_scales=(1, 2, 4), spg_pool="avg",
                 spg_layers="all", finetune_visual=False, video_prompts=False, new_lr_scale=10.0,
                 template=PHOTO_TEMPLATE):
        super().__init__()
        self.clip = clip
        freeze(clip)                                               # both towers and logit_scale
        if finetune_visual:
            freeze(clip.visual, frozen=False)
        visual = clip.visual
        D, depth = visual.conv1.out_channels, len(visual.transformer.resblocks)
        # ModuleDicts keyed by block index, so --pta-layers 6-11 gives pta.6 ... pta.11.
        self.pta = nn.ModuleDict({str(i): TemporalAdapter(D, round(pta_ratio * D), frames)
                                  for i in sorted(_layers(pta_layers, depth))} if use_pta else {})
        self.spg = nn.ModuleDict({str(i): SelfPromptGenerator(D, round(spg_ratio * D), spg_scales, spg_pool)
                                  for i in sorted(_layers(spg_layers, depth))} if use_spg else {})
        self.pta_serial, self.pta_scale = pta_position == "serial", pta_scale
        self.prompts_generator = None
        if video_prompts:
            E = clip.text_projection.shape[1]
            self.prompts_visual_ln = nn.LayerNorm(D)
            self.prompts_visual_proj = nn.Parameter(torch.randn(D, E))   # std 1, as X-CLIP's xclip.py
            self.prompts_generator = VideoSpecificPrompt(E)
        self.new_lr_scale = new_lr_scale
        self.template = template
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        self._text = None

    def forward(self, video):
        v, text = self.embed_videos(video), self.text_features()   # (B, E) [and ctx (B, N, E)], (C, E)
        if self.prompts_generator is not None:
            v, text = v[0], text + self.prompts_generator(text, v[1])   # (B, C, E): per video
        return cosine_logits(v, text, self.clip.logit_scale)       # (B, C)

    def embed_videos(self, video):
        """(B, T, 3, S, S) -> the mean frame embedding (B, E) [and what video prompts attend to, ctx (B, N, E)]."""
        frames, x = self.frame_features(video)
        if self.prompts_generator is None:
            return frames.mean(dim=1)                              # (B, E): mean before normalising
        ctx = x[:, 1:].unflatten(0, video.shape[:2]).mean(dim=1)   # (B, N, D) patch tokens averaged over time
        return frames.mean(dim=1), self.prompts_visual_ln(ctx) @ self.prompts_visual_proj   # (B, E), (B, N, E)

    def frame_features(self, video):
        """video (B, T, 3, S, S) -> frame embeddings (B, T, E) and the last tokens (B*T, K, D)."""
        B, T = video.shape[:2]
        visual = self.clip.visual
        x = patch_embed(visual, video.flatten(0, 1))               # (B*T, K, D), frames of a video adjacent
        for i, blk in enumerate(visual.transformer.resblocks):
            pta = self.pta[str(i)] if str(i) in self.pta else None
            spg = self.spg[str(i)] if str(i) in self.spg else None
            x = st_block(blk, x, T, pta, spg, self.pta_serial, self.pta_scale)
        return frame_head(visual, x).view(B, T, -1), x            # (B, T, E), (B*T, K, D)

    def set_classes(self, names):
        self.tokens = tokenize(self.clip, [self.template.format(n) for n in names])   # (C, L)
        self._text = None

    def text_features(self):
        """(C, E), computed once per class list: the text tower is frozen in every setting."""
        if not self.tokens.numel():
            raise RuntimeError("call set_classes(names) before the forward pass")
        if self._text is None or self._text.device != self.tokens.device:
            with torch.no_grad():
                self._text = encode_text(self.clip, self.tokens)
        return self._text

    def load_state_dict(self, *args, **kwargs):
        self._text = None                                          # new text weights: the cache is stale
        return super().load_state_dict(*args, **kwargs)

    def param_groups(self, lr, weight_decay):
        # X-CLIP utils/optimizer.py: new modules at 10x the LR of CLIP's weights; no weight decay on 1-D
        # tensors, biases and embeddings (positional there; here also the temporal and scale embeddings).
        return param_groups(self, lr, weight_decay,
                            no_decay=lambda n, p: p.ndim < 2 or n.endswith(".bias") or "embedding" in n,
                            lr_scale=lambda n: 1.0 if n.startswith("clip.") else self.new_lr_scale)

    def describe(self):
        """Trainable parameters by module, for the report."""
        parts = {"pta": self.pta, "spg": self.spg, "clip": self.clip}
        counts = {k: count_params(m, trainable=True) for k, m in parts.items()}
        counts["video prompts"] = count_params(self, trainable=True) - sum(counts.values())
        total = count_params(self, trainable=True)
        return (f"{total:,} trainable of {count_params(self):,} parameters: "
                + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v))

    def embed_captions(self, captions):
        """(K, E): each caption through the frozen text tower, as written (the template is for class names)."""
        return encode_captions(self.clip, captions)

    def similarity(self, videos, text):
        """(N, K) retrieval logits: cosine, or with video prompts every pair on its own (prompted_similarity)."""
        if self.prompts_generator is None:
            return cosine_logits(videos, text, self.clip.logit_scale)
        return prompted_similarity(*videos, text, lambda t, c: t + self.prompts_generator(t, c), self.clip.logit_scale)


def build(clip, args):
    get = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)
    return Model(clip, frames=get("frames", 8), use_pta=get("pta", True), use_spg=get("spg", True),   # ABLATIONS
                 pta_ratio=get("pta_ratio", 0.25), pta_layers=get("pta_layers", "all"),
                 pta_position=get("pta_position", "parallel"), pta_scale=get("pta_scale", 1.0),
                 spg_ratio=get("spg_ratio", 0.25), spg_pool=get("spg_pool", "avg"),
                 spg_scales=[int(s) for s in str(get("spg_scales", "1,2,4")).split(",")],
                 spg_layers=get("spg_layers", "all"),
                 finetune_visual=get("finetune_visual", False), video_prompts=get("video_prompts", False),
                 new_lr_scale=get("new_lr_scale", 10.0), template=get("template", PHOTO_TEMPLATE))


# =========================================================================================================
# What makes OmniCLIP a tool: the recipe (X-CLIP's) and its variants, the embedded demo's setting, the flags,
# and where the X-CLIP-style pieces differ from X-CLIP's code and why.
# =========================================================================================================

# Supervised Kinetics-400 at 8 frames. The paper's recipe was not readable [P]; these are X-CLIP's
# (configs/k400/16_8.yaml + utils/config.py defaults) [V], the recipe the OmniCLIP regimes follow.
RECIPE = dict(
    frames=8,                  # DATA.NUM_FRAMES of X-CLIP k400/16_8
    sampling="segment",        # TSN segments (X-CLIP datasets/pipeline.py SampleFrames)
    crop="tsn",                # X-CLIP datasets/build.py
    stride=1,
    lr=8e-6,                   # TRAIN.LR: the CLIP weights (with --finetune-visual); new modules get 10x = 8e-5
    lr_min_ratio=0.01,         # cosine to LR/100 for every group (X-CLIP utils/optimizer.py build_scheduler)
    schedule="timm", official_accum=4,   # X-CLIP's timm schedule per micro-batch, ACCUMULATION_STEPS 4 (16_8.yaml)
    weight_decay=1e-3,         # TRAIN.WEIGHT_DECAY; none on 1-D params, biases, embeddings (utils/optimizer.py)
    betas=(0.9, 0.98), eps=1e-8,
    epochs=30, warmup_epochs=5,
    global_batch=256,          # 8 per GPU x 4 accumulation x 8 GPUs (README)
    grad_clip=0.0,             # none in X-CLIP
    mean="imagenet",           # X-CLIP datasets/build.py normalises with ImageNet statistics
    flip=True, color_jitter=0.8, grayscale=0.2,
    mixup=0.8, cutmix=1.0, mix_switch=0.5, smoothing=0.1,   # AUG defaults of X-CLIP
    test_clips=4, test_crops=3,                             # X-CLIP main.py's test after training
    template=PHOTO_TEMPLATE,   # [D] CLIP's photo template, as ViFi-CLIP (X-CLIP itself uses the bare class name)
    new_lr_scale=10.0,         # X-CLIP utils/optimizer.py: message, MIT and prompt modules at 10x TRAIN.LR
)

VARIANTS = {
    # Few-shot HMDB51/UCF101 K = 2/4/8/16 from CLIP: X-CLIP configs/hmdb51/16_32.yaml; X-CLIP's main.py tests
    # every training run with 4 clips x 3 crops, few-shot included.
    "few-shot": dict(frames=32, lr=2e-6, epochs=50, global_batch=64, official_accum=2),
    # Train on K400 for zero-shot transfer: ViFi-CLIP configs/zero_shot/train/k400/16_16_vifi_clip.yaml; the
    # transfer is tested as X-CLIP's --only_test does, with utils/config.py's default 1 clip x 1 crop.
    "zero-shot": dict(frames=32, lr=8e-6, epochs=10, global_batch=256, official_accum=8, test_clips=1, test_crops=1),
}

# No EMBEDDED: the embedded demo trains only the new modules of a frozen tiny CLIP, so their LR is the one that
# matters, and it keeps the recipe's 10x (train.py's 1e-3 x 10): from the synthetic-pretrained CLIP that gave
# better test twins than 6x or 3x (3x had looked best from a random CLIP). The figures are in the README's
# Measured part.


def _bool(text):
    return str(text).lower() in ("1", "true", "yes", "on")


def _layers(spec, depth):
    """'all', 'none', 'a-b' (inclusive) or 'i,j,k' -> the set of block indices."""
    spec = str(spec).replace(" ", "")
    if spec == "all":
        return set(range(depth))
    if spec in ("none", ""):
        return set()
    if "-" in spec:
        a, b = spec.split("-")
        return set(range(int(a), int(b) + 1))
    return {int(i) for i in spec.split(",")}


# The parts a run can switch off, each with --no-PART (train.py names the run after them: omniclip-supervised-no-pta);
# the model is then exactly the simpler one the docstring gives, and the part's modules are not built.
ABLATIONS = ("pta", "spg")


def add_args(parser):
    a = parser.add_argument
    a("--no-pta", dest="pta", action="store_false", default=None,
      help="ablation: no parallel temporal adapters, U = 0: every frame is encoded on its own (with its self-prompts)")
    a("--no-spg", dest="spg", action="store_false", default=None,
      help="ablation: no self-prompt generators: the spatial attention is CLIP's own (with --no-pta: frozen CLIP's "
           "frame mean)")
    a("--pta-ratio", type=float, default=0.25, help="PTA width / D (0.25: AIM's, 0.5: ST-Adapter's)")
    a("--pta-layers", default="all", help="blocks with a PTA: all, none, 6-11 or 0,4,8")
    a("--pta-position", choices=["parallel", "serial"], default="parallel",
      help="beside the spatial attention (our reading of the paper) or before it (AIM / ST-Adapter)")
    a("--pta-scale", type=float, default=1.0, help="s in X + A + s*PTA")
    a("--spg-ratio", type=float, default=0.25, help="width / D of the SPG refinement bottleneck")
    a("--spg-scales", default="1,2,4", help="pooled grid sizes that make the prompts (P = sum g^2)")
    a("--spg-pool", choices=["avg", "max"], default="avg", help="how a region of the patch grid is pooled")
    a("--spg-layers", default="all", help="blocks with an SPG: all, none, 6-11 or 0,4,8")
    a("--finetune-visual", type=_bool, nargs="?", const=True, default=False,
      help="also train the CLIP image tower (at the base LR; new modules at new_lr_scale x)")
    a("--video-prompts", type=_bool, nargs="?", const=True, default=False,
      help="X-CLIP's video-specific text prompt generator (off: not in the paper's abstract)")
    a("--new-lr-scale", type=float, default=None, help="LR multiplier of the new modules (default: the recipe's)")
    a("--template", default=None, help="text template with {} for the class name (default 'a photo of a {}.')")


# Where the X-CLIP-style pieces differ from X-CLIP's code, and why (OmniCLIP's own code was never released):
#  1. The prompt generator's q/k/v projections have biases (nn.MultiheadAttention through common.attention,
#     so the one SDPA path serves every attention here); its MLP uses GELU, not QuickGELU.
#  2. The video prompts' context averages the last layer's patch tokens over the frames before
#     prompts_visual_ln; X-CLIP normalises each frame's tokens first, then averages. LayerNorm is not linear,
#     so the two differ.
#  3. The pipeline is X-CLIP's as its code has it (data.py's segment sampling and tsn crops, per-frame colour,
#     randperm mixup partners; train.py's timm schedule with the floor LR/100 for every group, so the 10x groups
#     end at 1/1000 of their peak). The final similarity is computed in float32 (common.cosine_logits).


if __name__ == "__main__":
    # python omniclip.py [--model ViT-B-16 --frames 8 --pta-ratio 0.5 ...]: the parameter count of a setting.
    import argparse

    import common
    parser = argparse.ArgumentParser(description="trainable parameters of OmniCLIP (random-init CLIP)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--frames", type=int, default=8)
    add_args(parser)
    args = parser.parse_args()
    print(f"OmniCLIP on {args.model}, {args.frames} frames: {build(common.load_clip(args.model), args).describe()}")
