"""ViFi-CLIP: fine-tune all of CLIP on video, add nothing.

H. Rasheed, M. U. Khattak, M. Maaz, S. Khan, F. S. Khan. "Fine-tuned CLIP Models are Efficient Video
Learners". CVPR 2023, arXiv:2212.03640. Official code: github.com/muzairkhattak/ViFi-CLIP
(trainers/vificlip.py, clip/model.py, configs/).

The method is the baseline every other file in this repository improves on, and a strong one. Each of the
T frames of a video goes through the CLIP image encoder on its own; the frame embeddings are averaged; the
class names go through the CLIP text encoder inside a fixed template; both towers and the temperature are
fine-tuned end to end with cross-entropy over the classes. In our notation, for a video x (T, 3, S, S)
and class names c_1..c_C:

    f_t = ViT(x_t)                          (E,)   frame embedding: class token, ln_post, @ proj
    v   = 1/T sum_t f_t                     (E,)   mean over frames, BEFORE normalising
    w_c = TextEnc("a photo of a {c}.")      (E,)   once per optimizer step: the text tower is trained too
    logit_c = exp(s) * <v/|v|, w_c/|w_c|>          s = logit_scale, trained, initialised at ln 100

Nothing in the model sees frame order: the mean is permutation invariant, so "moving left" and "moving
right" have the same embedding when their frames are the same set. The paper argues that fine-tuning
still teaches CLIP motion cues visible within single frames; the embedded synthetic set of this
repository is built so that no single frame carries the direction, which makes the limit visible.

Trainable parameters (`--tune`, the paper's Table 1 baselines): "both" is ViFi-CLIP (everything except
token_embedding, which the official code embeds once at construction and never trains); "image" trains
only the image tower (CLIP image-FT); "text" only the text tower without logit_scale (CLIP text-FT).

Bridge and prompt (`--prompt-*`, recipes "prompt-base2novel" and "prompt-few-shot"). For low-data settings
the paper first fine-tunes all of CLIP on Kinetics-400 (the bridge: a plain ViFi-CLIP, given with
--weights), then freezes every weight, logit_scale included, and learns only prompt tokens in both towers
(MaPLe's independent vision-language prompting). With n_v vision tokens P_l (n_v, D) for the layers
l < d_v and n_t text tokens Q_l (n_t, W) for the layers l < d_t (W: text width), all drawn from N(0, 0.02):

    Z_0 = [ln_pre([x_cls; x_1..x_N] + e_pos) ; ln_pre(P_0)]     (B*T, N+1+n_v, D)  appended, no position
    Z_l <- [Z_l[:, :N+1] ; P_l]                  0 < l < d_v    the prompts' outputs are dropped, new ones in
    Z_{l+1} = Block_l(Z_l)                                      past d_v the prompt outputs flow on as tokens
    f_t = ln_post(Z_L[:, 0]) @ proj                             still the class token
    H_0 = [emb(sos) ; Q_0 ; emb("{c}." eot ...)] + e_pos        (C, L, W)  the text "X .. X {c}.", X's replaced
    H_l <- [H_l[:, :1] ; Q_l ; H_l[:, 1+n_t:]]   0 < l < d_t    no position; causal mask unchanged
    w_c = ln_final(H_L[c, eot]) @ text_projection               Q's are shared by all classes

Trainable: d_t n_t W + d_v n_v D. At ViT-B/16, base-to-novel (16 tokens, depth 9) 73,728 + 110,592 =
184,320; few-shot (10 tokens, depth 12) 61,440 + 92,160 = 153,600. The prompts sit where the
official code keeps them (clip/model.py ResidualAttentionBlock_ViFi_CLIP, VisionTransformer): `ctx` on
prompt_learner, `VPT` on the image encoder, `VPT_shallow` on each prompted block, so a released prompt
checkpoint loads with only the tower prefixes renamed, and a plain ViFi-CLIP (the bridge) loads with only
the prompts missing.

After build, below the divider: the recipe, where we differ from the official code and why, load_official.
"""
import torch
from torch import nn

from common import (PHOTO_TEMPLATE, CheckpointError, block, check_fits, cosine_logits, frame_head, freeze, in_chunks,
                    load_state_dict, param_groups, patch_embed, tokenize)


def splice(x, prompt, start):
    """Write the learned tokens `prompt` (n, D), the same for every row, over positions start..start+n-1
    of x (B', L, D); start = L appends them."""
    p = prompt.to(x.dtype).expand(x.shape[0], -1, -1)                  # (B', n, D)
    return torch.cat([x[:, :start], p, x[:, start + p.shape[1]:]], dim=1)


def encode_prompted_frames(visual, x):
    """(B', 3, S, S) -> (B', E): common.encode_frames, plus the vision prompts where the model has them:
    `visual.VPT` appended at the input, `resblocks[i].VPT_shallow` replacing them at layers 0 < i < d_v."""
    x = patch_embed(visual, x)                                         # (B', N+1, D), after ln_pre
    if hasattr(visual, "VPT"):
        # The official ln_pre runs on [tokens; prompts]; LayerNorm is per token, so this is the same.
        x = splice(x, visual.ln_pre(visual.VPT), x.shape[1])           # (B', N+1+n_v, D)
    for blk in visual.transformer.resblocks:
        if hasattr(blk, "VPT_shallow"):                                # this layer's own prompts
            x = splice(x, blk.VPT_shallow, x.shape[1] - blk.VPT_shallow.shape[0])   # (B', N+1+n_v, D)
        x = block(blk, x)
    return frame_head(visual, x)                                       # reads the class token only


def encode_prompted_text(clip, tokens, ctx=None):
    """(C, L) ids -> (C, E): common.encode_text, plus the text prompts where the model has them: `ctx`
    over the n_t placeholders after SOS, `resblocks[i].VPT_shallow` over the same positions at 0 < i < d_t."""
    x = clip.token_embedding(tokens)                                   # (C, L, W)
    if ctx is not None:
        x = splice(x, ctx, 1)                                          # (C, L, W): [sos | ctx | name . eot]
    x = x + clip.positional_embedding.to(x.dtype)                      # on the context too
    for blk in clip.transformer.resblocks:
        if hasattr(blk, "VPT_shallow"):
            x = splice(x, blk.VPT_shallow, 1)                          # (C, L, W), no position added
        x = block(blk, x, causal=True)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]   # (C, W) at end-of-text
    return x @ clip.text_projection


def new_prompt(n, width, like):
    """(n, width) learned tokens, N(0, 0.02) as every prompt of the official code."""
    return nn.Parameter(torch.empty(n, width, dtype=like.dtype, device=like.device).normal_(std=0.02))


class Model(nn.Module):
    def __init__(self, clip, tune="both", template=PHOTO_TEMPLATE, text_tokens=0, text_depth=0,
                 vision_tokens=0, vision_depth=0):
        super().__init__()
        self.clip = clip
        self.template = template
        self.n_text = text_tokens if text_depth else 0     # a tower's prompts need tokens and depth
        n_vision = vision_tokens if vision_depth else 0
        vis, txt = clip.visual.transformer.resblocks, clip.transformer.resblocks
        for flag, depth, layers in (("text", text_depth, len(txt)), ("vision", vision_depth, len(vis))):
            if not 0 <= depth <= layers:
                raise ValueError(f"--prompt-depth-{flag} {depth}: this CLIP has {layers} {flag} layers; "
                                 f"pass --prompt-depth-{flag} {layers} or less")
        if self.n_text + 3 > clip.positional_embedding.shape[0]:
            raise ValueError(f"--prompt-tokens-text {self.n_text} leaves no room for the class name in "
                             f"{clip.positional_embedding.shape[0]} text tokens: pass fewer")
        freeze(clip)
        # Prompts live on the modules the official code puts them on: prompt_learner.ctx, the image
        # encoder's VPT, and VPT_shallow on each prompted block (no extra keys when they are off).
        self.prompt_learner = nn.Module()
        if self.n_text or n_vision:
            if tune != "both":
                raise ValueError(f"--tune {tune} fine-tunes a tower, but with prompts only the prompts train: "
                                 "drop --tune, or set the --prompt-tokens-* options to 0")
            W, D = clip.ln_final.weight.shape[0], clip.visual.conv1.out_channels
            if self.n_text:
                self.prompt_learner.ctx = new_prompt(self.n_text, W, clip.positional_embedding)
                for blk in txt[1:text_depth]:
                    blk.VPT_shallow = new_prompt(self.n_text, W, clip.positional_embedding)
            if n_vision:
                clip.visual.VPT = new_prompt(n_vision, D, clip.visual.class_embedding)
                for blk in vis[1:vision_depth]:
                    blk.VPT_shallow = new_prompt(n_vision, D, clip.visual.class_embedding)
            # Everything else stays frozen, logit_scale included; the new prompts require grad.
            self.text_trainable = bool(self.n_text)
        else:
            if tune in ("both", "image"):
                freeze(clip.visual, frozen=False)
            if tune in ("both", "text"):
                # The text tower minus token_embedding: the official code embeds the prompts once, at
                # construction, so the word embeddings never receive a gradient.
                freeze(clip.transformer, clip.ln_final, clip.positional_embedding, clip.text_projection,
                       frozen=False)
            if tune == "both":
                freeze(clip.logit_scale, frozen=False)
            self.text_trainable = tune in ("both", "text")
        # Class tokens are not saved with the weights: set_classes rebuilds them for any class list.
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        self._text_cache = None
        self._step_text = self._text_leaf = None   # the text of the current optimizer step (begin_step)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_text_cache", None))

    def forward(self, video):
        return cosine_logits(self.embed_videos(video), self.text_features(), self.clip.logit_scale)   # (B, C)

    def embed_videos(self, video):
        """(B, T, 3, S, S) -> (B, E): the mean of the frames' embeddings, before normalising (retrieval too)."""
        B, T = video.shape[:2]
        frames = encode_prompted_frames(self.clip.visual, video.flatten(0, 1))   # (B*T, E): frames are independent
        return frames.view(B, T, -1).mean(dim=1)                     # (B, E)

    def set_classes(self, names):
        self._step_text = self._text_leaf = None
        self.tokens = self.tokenize(names, self.template)            # (C, L)
        self._text_cache = None

    def tokenize(self, names, template):
        """(C, L) tokens of the names in the template; with text prompts "X X .. X {c}.": each X is one token,
        which ctx overwrites (trainers/vificlip.py VLPromptLearner, which also turns "_" into spaces then)."""
        if not self.n_text:
            return tokenize(self.clip, [template.format(n) for n in names])
        placeholders = " ".join(["X"] * self.n_text)
        return tokenize(self.clip, [f"{placeholders} {template.format(n.replace('_', ' '))}" for n in names])

    def text_features(self):
        """(C, E). Recomputed on every training step while the text side is learning (its tower, or the
        text prompts through the frozen tower); computed once and cached when there is no gradient to carry
        (evaluation, or a frozen text side)."""
        if not self.tokens.numel():
            raise RuntimeError("call set_classes(names) before the forward pass")
        if torch.is_grad_enabled() and self._text_leaf is not None:   # within an optimizer step (begin_step)
            return self._text_leaf
        if torch.is_grad_enabled() and self.text_trainable:
            return self.encode_text()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.encode_text()
        return self._text_cache

    def encode_text(self):
        return encode_prompted_text(self.clip, self.tokens, getattr(self.prompt_learner, "ctx", None))

    def begin_step(self):
        """Called by train.py before the micro-batches of an optimizer step: encode the text once, and hand
        the forward passes a detached copy that collects the gradient of all of them."""
        self._step_text = self.encode_text() if self.text_trainable and torch.is_grad_enabled() else None
        self._text_leaf = None if self._step_text is None else self._step_text.detach().requires_grad_()

    def end_step(self):
        """Called after the last micro-batch's backward: the summed gradient goes through the text tower once."""
        if self._text_leaf is not None and self._text_leaf.grad is not None:
            self._step_text.backward(self._text_leaf.grad)
        self._step_text = self._text_leaf = None

    def train(self, mode=True):
        self._text_cache = None   # weights are about to change (or just did): cached text is stale
        return super().train(mode)

    def param_groups(self, lr, weight_decay):
        # One group: the official optimizer decays every parameter, biases, norms, logit_scale and prompts included.
        return param_groups(self, lr, weight_decay)

    def embed_captions(self, captions):
        """(K, E): captions through the text side as class names go, but a caption is its own sentence (no
        template), so "a photo of a {c}." as a caption scores as class c does."""
        ctx = getattr(self.prompt_learner, "ctx", None)
        return in_chunks(lambda c: encode_prompted_text(self.clip, self.tokenize(c, "{}"), ctx), list(captions))

    def similarity(self, videos, text):
        """(N, K) retrieval logits of embed_videos' (N, E) and embed_captions' (K, E): cosine, as forward."""
        return cosine_logits(videos, text, self.clip.logit_scale)


def build(clip, args):
    def option(name):
        return getattr(args, name, None) or 0
    return Model(clip, tune=getattr(args, "tune", "both"), template=getattr(args, "template", None) or PHOTO_TEMPLATE,
                 text_tokens=option("prompt_tokens_text"), text_depth=option("prompt_depth_text"),
                 vision_tokens=option("prompt_tokens_vision"), vision_depth=option("prompt_depth_vision"))


# =========================================================================================================
# What makes ViFi-CLIP a tool: the official recipe and its variants, the flags, where we differ from the
# official code and why, and loading the released checkpoints.
# =========================================================================================================

# Fully-supervised Kinetics-400 recipe: configs/fully_supervised/k400/16_16_vifi_clip.yaml and the defaults
# of utils/config.py; test views from the README (--opts TEST.NUM_CLIP 4 TEST.NUM_CROP 3).
RECIPE = dict(
    frames=16,                 # DATA.NUM_FRAMES
    sampling="segment",        # TSN: one frame per equal segment (datasets/pipeline.py SampleFrames)
    crop="tsn",                # datasets/build.py (the same file as X-CLIP's)
    stride=1,                  # (input side: 224, the CLIP's own; train.py takes it from the model)
    lr=2.2e-5,                 # TRAIN.LR (absolute, not scaled by batch)
    lr_min_ratio=0.01,         # timm cosine with lr_min = LR / 100 (utils/optimizer.py build_scheduler)
    schedule="timm", official_accum=16,   # counted per micro-batch; ACCUMULATION_STEPS 16 (16_16_vifi_clip.yaml)
    weight_decay=1e-3,         # TRAIN.WEIGHT_DECAY, on every parameter (utils/optimizer.py)
    betas=(0.9, 0.98), eps=1e-8,
    epochs=30, warmup_epochs=5,
    global_batch=512,          # 4 per GPU x 16 accumulation steps x 8 GPUs (README)
    grad_clip=0.0,             # none in the official code
    mean="imagenet",           # datasets/build.py normalises with ImageNet statistics, not CLIP's
    flip=True, color_jitter=0.8, grayscale=0.2,
    mixup=0.8, cutmix=1.0, mix_switch=0.5, smoothing=0.1,   # AUG defaults, never overridden
    test_clips=4, test_crops=3,
    template=PHOTO_TEMPLATE,   # TRAINER.ViFi_CLIP.CTX_INIT "a photo of a" + " {}."
    prompt_tokens_text=0, prompt_tokens_vision=0,   # TRAINER.ViFi_CLIP.PROMPT_MODEL False: no prompts,
    prompt_depth_text=0, prompt_depth_vision=0,     # the whole of CLIP is fine-tuned
)

# The other official settings, as overrides of RECIPE (chosen with --recipe NAME).
VARIANTS = {
    # configs/zero_shot/train/k400/16_16_vifi_clip.yaml: K400 training for zero-shot transfer (32 frames).
    "zero-shot": dict(frames=32, lr=8e-6, epochs=10, global_batch=256, official_accum=8, test_clips=1, test_crops=1),
    # configs/few_shot/finetuning_few_shot/*: 2/4/8/16-shot fine-tuning from CLIP.
    "few-shot": dict(frames=32, lr=2e-6, epochs=50, global_batch=64, official_accum=2, test_clips=1, test_crops=1),
    # configs/base2novel/finetuning_base2novel/*: base-class fine-tuning from CLIP.
    "base2novel": dict(frames=32, lr=2e-6, epochs=11, global_batch=64, official_accum=2, test_clips=1, test_crops=1),
    # configs/fully_supervised/k400/16_16_image_tuned_clip.yaml (text-FT has the same numbers): add --tune.
    "one-tower": dict(lr=8e-6, global_batch=256, official_accum=8),
    # Bridge and prompt from a K400 ViFi-CLIP (--weights): configs/base2novel/prompting_base2novel/
    # {hmdb,ucf,ssv2}/16_32_prompting*_s{1,2,3}.yaml. Their CTX_INIT "a photo of a" is ignored for 16 tokens.
    "prompt-base2novel": dict(frames=32, lr=4e-2, epochs=11, global_batch=64, official_accum=2,
                              test_clips=1, test_crops=1, template="{}.",
                              prompt_tokens_text=16, prompt_tokens_vision=16,
                              prompt_depth_text=9, prompt_depth_vision=9),
    # configs/few_shot/prompting_few_shot/{hmdb51,ucf101,ssv2}/16_32_prompting_{2,4,8,16}_shot.yaml.
    "prompt-few-shot": dict(frames=32, lr=8e-3, epochs=50, global_batch=64, official_accum=2,
                            test_clips=1, test_crops=1, template="{}.",
                            prompt_tokens_text=10, prompt_tokens_vision=10,
                            prompt_depth_text=12, prompt_depth_vision=12),
}


def add_args(parser):
    parser.add_argument("--tune", choices=["both", "image", "text"], default="both",
                        help="which tower to fine-tune: both (ViFi-CLIP), image or text (the paper's CLIP "
                             "image-FT / text-FT baselines); with prompts only the prompts train")
    parser.add_argument("--template", default=None,
                        help="text template with {} for the class name; default from the recipe "
                             "('a photo of a {}.'); '{}' gives vanilla zero-shot CLIP's bare names; with text "
                             "prompts the learned tokens come first (the prompt recipes use '{}.')")
    prompts = "Any prompt freezes all of CLIP and trains only the prompts: start from a fine-tuned ViFi-CLIP " \
              "checkpoint with --weights (or use --recipe prompt-base2novel / prompt-few-shot)"
    for tower, width in (("text", "W"), ("vision", "D")):
        parser.add_argument(f"--prompt-tokens-{tower}", type=int, default=None, metavar="N",
                            help=f"learned {tower} prompt tokens per layer, each ({width},) (default 0: plain "
                                 f"ViFi-CLIP fine-tuning; 16 or 10 in the official recipes). {prompts}")
        parser.add_argument(f"--prompt-depth-{tower}", type=int, default=None, metavar="D",
                            help=f"how many {tower} layers, from the input, get prompts of their own (1: the "
                                 f"input only; up to the layer count; 0: none). 9 or 12 officially")


# Where we differ from the official code, and why:
#  1. Text features are cached whenever no gradient flows into them: while evaluating, and while training with a
#     frozen text side (--tune image, or vision prompts only). Identical results, since CLIP has no dropout; the
#     official code re-runs the text tower in every forward pass, for every test view too.
#  2. In training, the text is encoded once per optimizer step, not once per micro-batch (begin_step/end_step):
#     the text weights do not change within a step, so the micro-batches can share one encoding W, each adding
#     its gradient dL/dW to a detached copy, and one backward pass takes the sum through the text tower. The
#     gradients are the same (the chain rule is linear in dL/dW); the text tower, 52% of a micro-batch's FLOPs
#     with Kinetics-400's 400 classes at B/16, runs once instead of accumulation-steps times.
#  3. Weights stay fp32 with autocast on the GPU; the official code relies on apex O1 and casts inputs to
#     fp16 by hand in its model's forward. Prompts are cast to the activations' dtype, not forced to fp16. The
#     final similarity is computed in float32 (common.cosine_logits).
#  4. The official validation loader drops the last odd video of each GPU's shard (drop_last with 2 videos per
#     batch); we test every video. The pipeline (frames, crops, colour per frame, mixup partners, the schedule
#     counted in micro-batches) is the official one: data.py and train.py say how.
#  5. Prompting: the class tokens are embedded by the frozen token_embedding at each pass, not stored as
#     prefix/suffix buffers (identical, and any class list works). The placeholders come before --template;
#     the prompt recipes set "{}.", which gives the official "X X .. X {c}.". Word-initialised context
#     (CTX_INIT with n_t <= 4) is not built: no official setting uses it. Vision-only prompts (no text
#     tokens) are allowed; the official code insists on d_t >= 1.


def is_prompt(name):
    """The official rule for what trains in prompting mode (trainers/vificlip.py returnCLIP)."""
    return "prompt_learner" in name or "VPT" in name


def load_official(model, path):
    """Load a released ViFi-CLIP checkpoint into `model`.

    Official keys are image_encoder.* / text_encoder.* / logit_scale / prompt_learner.ctx behind DDP's
    "module."; the class-specific buffers (prompt_learner.complete_text_embeddings, token_prefix,
    token_suffix) are dropped because set_classes rebuilds them. token_embedding is not in the file (it was
    never trained): it stays as loaded by --pretrained, which must be OpenAI's CLIP. A fine-tuned
    checkpoint loaded into a prompted model is the bridge: the prompts keep their random init.
    """
    mapped = {}
    for key, value in load_state_dict(path).items():
        if key.startswith("prompt_learner.") and key != "prompt_learner.ctx":
            continue
        if key.startswith("image_encoder."):
            key = "clip.visual." + key.removeprefix("image_encoder.")
        elif key.startswith("text_encoder."):
            key = "clip." + key.removeprefix("text_encoder.")
        elif key == "logit_scale":
            key = "clip.logit_scale"
        mapped[key] = value
    check_fits(model, mapped, path, "a ViFi-CLIP checkpoint")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if k != "clip.token_embedding.weight"]
    prompts = sorted(n for n, _ in model.named_parameters() if is_prompt(n))
    if prompts and sorted(k for k in missing if is_prompt(k)) == prompts:
        missing = [k for k in missing if not is_prompt(k)]        # the bridge: no prompts in the file at all
    if missing or unexpected:
        hint = ("; the file has prompts: pass the --prompt-* options it was trained with"
                if any(is_prompt(k) for k in missing + unexpected) else "")
        raise CheckpointError(f"{path} is not a ViFi-CLIP checkpoint of this model: it lacks {missing[:3]} "
                              f"({len(missing)}) and holds {unexpected[:3]} ({len(unexpected)}){hint}")
