"""Open-VCLIP: neighbour-frame attention, interpolated weight optimisation, weight averaging (+ Open-VCLIP++).

Z. Weng, X. Yang, A. Li, Z. Wu, Y.-G. Jiang. "Open-VCLIP: Transforming CLIP to an Open-vocabulary Video Model
via Interpolated Weight Optimization". ICML 2023, arXiv:2302.00624. Official code: github.com/wengzejia1/Open-VCLIP
(a PySlowFast fork: slowfast/models/temporalclip_video_model.py, customize_visiontransformer.py,
torch_utils/functional.py, tools/train_net.py, tools/test_net.py, weight_average_tool.py, script/).
Open-VCLIP++: Z. Wu et al., "Building an Open-Vocabulary Video CLIP Model With Better Architectures,
Optimization and Data", TPAMI 2024, arXiv:2310.05010 (training code never released).

The aim is zero-shot video recognition: fine-tune CLIP on Kinetics-400 without forgetting what makes it
open-vocabulary. Three pieces, none of which adds a parameter, so CLIP's state dict loads unchanged.

1. Neighbour-frame attention, in every visual layer. The queries of frame t attend to the keys and values of
   frames t-w..t+w (w = 1 in the released models). Past either end of the clip the missing frames' keys and
   values are ZERO rows, after the projection (no bias added), not masked out: each takes softmax mass
   exp(0) towards a zero value, so the first and last frames are slightly diluted (functional.py,
   `expand_temporal_view`). With Q_t, K_t, V_t (N+1, d) the per-head projections of frame t:
       O_t = softmax(Q_t [K_{t-w}; ..; K_{t+w}]^T / sqrt(d)) [V_{t-w}; ..; V_{t+w}],   K_s = V_s = 0 outside [0, T)
2. The classifier is frozen: W_c = normalise(1/28 sum_j normalise(TextEnc(template_j(c)))) from the original
   CLIP text tower and 28 templates. Each frame embedding is normalised, and the per-frame logits averaged:
       f_t = ln_post(cls_t) @ proj,   logit_c = exp(s) * 1/T sum_t <f_t/|f_t|, W_c>     s = logit_scale, trained
3. Interpolated weight optimisation (IWO). theta0 = CLIP's weights, theta the current ones. Each forward-backward
   pass (one per micro-batch here, one per GPU and iteration in the official code) draws alpha ~ U(0, 0.6) and
   adds the gradient of beta*L (beta = 0.5) at the interpolated weights to the usual one:
       g = grad L(theta) + beta * grad_w L(w) |_{w = alpha theta0 + (1-alpha) theta}
   The true gradient of beta*L(alpha theta0 + (1-alpha) theta) w.r.t. theta has a factor (1-alpha) on the
   second term; the official code leaves it out (tools/train_net.py keeps the multiplied line commented out,
   and the released runs are named "_bugfix_"). We leave it out too, as the released models were trained so.
   After training, the weights saved after epochs 2..22 are averaged (SWA, weight_average_tool.py) and the
   average is interpolated once more towards CLIP for testing (tools/test_net.py, TEST.PATCHING_RATIO):
       theta_test = lambda theta0 + (1-lambda) mean_e theta_e        lambda = 0.5 (B/32, B/16), 0.6 (L/14)
4. Open-VCLIP++ adds LLM-written captions of the training videos and aligns them with the video embeddings.
   Its code is unreleased; the loss here is a RECONSTRUCTION (our choices, from the paper's description),
   CLIP's symmetric InfoNCE:
       L = L_CE + lambda_cap * (CE(S, I) + CE(S^T, I)) / 2,   S_ij = exp(s) <v_i, u_j>,
       v_i = normalise(1/T sum_t f_t/|f_t|),   u_j = normalise(TextEnc(caption_j)), frozen text tower.
   train.py passes each batch's video paths to train_step so the captions can be looked up.

Two of the pieces can be switched off (ABLATIONS); neither adds or removes a parameter. --no-neighbours (w = 0,
as --temporal-window 0): O_t = softmax(Q_t K_t^T / sqrt(d)) V_t, each frame attends only to its own tokens: CLIP's
image encoder, frame by frame (common.encode_frames). --no-iwo (alpha = 0, as --iwo-alpha 0): g = grad L(theta),
the plain step. SWA and the test-time interpolation have their own switches (--no-swa, --interp-lambda 0).

A property worth knowing: nothing in the model knows which neighbour is before and which after (softmax is
blind to key order, there is no temporal position embedding, the zero padding is symmetric), so the logits of
a clip and of the same clip played backwards are identical. Open-VCLIP models motion, but not its direction:
on the embedded set's time-reversed twins it stays at chance like ViFi-CLIP (a test checks the invariance), as
long as the sampled frames do not mark the clip's end themselves (see EMBEDDED's stride).

After build, below the divider: the recipe, where we differ from the official code and why, load_official.
"""
import json
import os
import random

import torch
import torch.nn.functional as F
from torch import nn

from common import (CheckpointError, check_fits, cosine_logits, encode_captions, encode_frames, encode_text,
                    frame_head, freeze, load_checkpoint, load_state_dict, param_groups, patch_embed, tokenize)


# ---------------------------------------------------------------------------------------------------------
# Neighbour-frame attention (functional.py _scaled_dot_product_attention, temporal_shift
# 'expand_temporal_view' and its _step2/_step3 variants)
# ---------------------------------------------------------------------------------------------------------

def neighbours(x, T, window):
    """(B*T, K, D) per-frame rows -> (B*T, (2w+1)*K, D): the rows of frames t-w..t+w side by side for each t,
    zeros for frames past either end of the clip (rows are frame-fastest: row = b*T + t)."""
    BT, K, D = x.shape
    x = x.view(BT // T, T, K, D)                                    # (B, T, K, D)
    x = F.pad(x, (0, 0, 0, 0, window, window))                      # (B, T+2w, K, D): zero frames at both ends
    x = x.unfold(1, 2 * window + 1, 1)                              # (B, T, K, D, 2w+1): a sliding window over time
    return x.permute(0, 1, 4, 2, 3).reshape(BT, (2 * window + 1) * K, D)   # (B*T, (2w+1)K, D)


def neighbour_attention(attn, x, T, window=1):
    """Multi-head attention of each frame's tokens x (B*T, K, D) over its own and its neighbours' keys and
    values, with the weights of CLIP's nn.MultiheadAttention `attn` (in_proj_weight, in_proj_bias, out_proj)."""
    H = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)   # 3 x (B*T, K, D)
    k, v = neighbours(k, T, window), neighbours(v, T, window)      # 2 x (B*T, (2w+1)K, D), zero rows at the ends
    q, k, v = (t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v))   # (B*T, H, K or (2w+1)K, D/H)
    out = F.scaled_dot_product_attention(q, k, v)                  # (B*T, H, K, D/H): no mask, zeros take mass
    return attn.out_proj(out.transpose(1, 2).flatten(2))           # (B*T, K, D)


def encode_video_frames(visual, x, T, window=1):
    """(B*T, 3, S, S) frames -> (B*T, E): CLIP's image tower with neighbour attention in every layer."""
    x = patch_embed(visual, x)                                     # (B*T, N+1, D)
    for blk in visual.transformer.resblocks:
        x = x + blk.ls_1(neighbour_attention(blk.attn, blk.ln_1(x), T, window))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return frame_head(visual, x)                                   # (B*T, E)


# ---------------------------------------------------------------------------------------------------------
# The frozen classifier's prompts (Model.classifier averages their text embeddings)
# ---------------------------------------------------------------------------------------------------------

# temporalclip_video_model.py text_prompt: 4 openings x 7 bodies ("a example" sic).
TEMPLATES = [f"{opening} {body}." for opening in ("a photo of", "a video of", "a example of", "a demonstration of")
             for body in ("{}", "a person {}", "a person using {}", "a person doing {}", "a person during {}",
                          "a person performing {}", "a person practicing {}")]


# ---------------------------------------------------------------------------------------------------------
# Open-VCLIP++ caption alignment (reconstruction)
# ---------------------------------------------------------------------------------------------------------

def video_caption_loss(video, text, logit_scale):
    """CLIP's symmetric InfoNCE between B videos (B, E) and their B captions (B, E); the other captions of
    the batch are the negatives, and the temperature is the model's own logit_scale."""
    logits = logit_scale.exp() * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()   # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.t().float(), labels)) / 2


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

class Model(nn.Module):
    def __init__(self, clip, window=1, iwo_alpha=0.6, iwo_ratio=0.5, swa=True, swa_start=2, interp_lambda=0.5,
                 captions=None, caption_weight=1.0):
        super().__init__()
        self.clip, self.window = clip, window
        self.iwo_alpha, self.iwo_ratio = iwo_alpha, iwo_ratio
        self.swa, self.swa_start, self.interp_lambda = swa, swa_start, interp_lambda
        self.captions, self.caption_weight = captions or {}, caption_weight
        # Trainable: the image tower and the temperature (the text tower gets no gradient in the official code).
        freeze(clip)
        freeze(clip.visual, clip.logit_scale, frozen=False)
        # theta0 (CLIP's trainable weights, for IWO and the test-time interpolation) and the SWA running sum, as
        # flat fp32 buffers so that checkpoints and --resume carry them.
        theta0 = self.flat()
        self.register_buffer("theta0", theta0)
        self.register_buffer("swa_sum", torch.zeros_like(theta0))
        # the weights training reached, kept when the last epoch replaces them by theta_test (zeros until then)
        self.register_buffer("trained", torch.zeros_like(theta0))
        self.register_buffer("swa_count", torch.zeros((), dtype=torch.long))
        # Class prompts are not saved with the weights: set_classes rebuilds them for any class list.
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)   # (28*C, L)
        self._classifier = None

    def forward(self, video):
        return self.logits(self.frame_embeddings(video))

    def frame_embeddings(self, video):
        """(B, T, 3, S, S) -> (B, T, E) unit vectors, one per frame; window 0 (--no-neighbours): CLIP's own."""
        B, T = video.shape[:2]
        frames = video.flatten(0, 1)                               # (B*T, 3, S, S)
        if self.window:
            f = encode_video_frames(self.clip.visual, frames, T, self.window)   # (B*T, E)
        else:                                                      # --no-neighbours: CLIP's own image encoder
            f = encode_frames(self.clip.visual, frames)            # (B*T, E)
        return F.normalize(f, dim=-1).view(B, T, -1)               # (B, T, E)

    def logits(self, f):
        """(B, T, E) frame embeddings -> (B, C): the per-frame logits, averaged (not renormalised), in float32
        whatever the autocast (bf16 would round them to steps of up to 0.25)."""
        with torch.autocast(f.device.type, enabled=False):
            scores = self.clip.logit_scale.float().exp() * f.float() @ self.classifier().float().t()   # (B, T, C)
        return scores.mean(1)                                                                         # (B, C)

    def loss(self, video, target, loss_fn, paths=None):
        """The training loss: cross-entropy, plus the Open-VCLIP++ caption loss when captions are known."""
        f = self.frame_embeddings(video)                           # (B, T, E)
        loss = loss_fn(self.logits(f), target)
        known = [i for i, p in enumerate(paths or []) if caption_key(p) in self.captions]
        if self.caption_weight and len(known) > 1:                 # a contrastive loss needs negatives
            tokens = tokenize(self.clip, [self.captions[caption_key(paths[i])] for i in known])
            with torch.no_grad():
                text = encode_text(self.clip, tokens)              # (B', E): the text tower is frozen
            video_emb = f[known].mean(1)                           # (B', E): mean of unit vectors
            loss = loss + self.caption_weight * video_caption_loss(video_emb, text, self.clip.logit_scale)
        return loss

    def train_step(self, video, target, loss_fn, backward, autocast, paths=None):
        """One IWO step (tools/train_net.py, TRAIN.LINEAR_CONNECT_CLIMB): backward of beta*L at the weights
        alpha*theta0 + (1-alpha)*theta, restore theta exactly, backward of L at theta on the same batch. Both
        land in .grad, so train.py's unscale, clip (1.0) and AdamW step act on their sum, as in the official
        code; the (1-alpha) factor of the exact chain rule is left out, as there. `paths` (one per video) are
        only needed for the Open-VCLIP++ caption loss."""
        if self.iwo_alpha > 0 and self.iwo_ratio > 0:
            alpha = random.uniform(0.0, self.iwo_alpha)            # Python's random, as the official code
            params = self.trainable()
            with torch.no_grad():
                saved = [p.detach().clone() for p in params]
                for p, p0 in zip(params, self.unflatten(self.theta0)):
                    p.lerp_(p0.to(p.dtype), alpha)                 # theta + alpha (theta0 - theta), in place
            with autocast():
                interpolated = self.iwo_ratio * self.loss(video, target, loss_fn, paths)
            backward(interpolated)                                 # .grad += beta grad_w L(w), w = theta_alpha
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)                                     # theta, bit for bit
            del saved
        with autocast():
            loss = self.loss(video, target, loss_fn, paths)
        backward(loss)                                             # .grad += grad L(theta)
        return loss.detach()

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]

    def flat(self):
        """The trainable parameters as one flat fp32 vector, in the buffers' layout."""
        return torch.cat([p.detach().float().flatten() for p in self.trainable()])

    def unflatten(self, flat):
        """A flat buffer -> views shaped like the trainable parameters, in the same order."""
        params = self.trainable()
        return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params)]

    @torch.no_grad()
    def on_epoch_end(self, epoch, epochs):
        """Add the weights after this epoch to the SWA sum (epochs swa_start..last, 1-based, as the official
        checkpoint files); after the last one, set theta_test = lambda theta0 + (1-lambda) mean."""
        if self.swa and epoch + 1 >= self.swa_start:
            if epoch + 1 == self.swa_start:                        # forget a sum that --weights brought along
                self.swa_sum.zero_()
                self.swa_count.zero_()
            for s, p in zip(self.unflatten(self.swa_sum), self.trainable()):
                s.add_(p)
            self.swa_count += 1
        if epoch + 1 == epochs:
            self.trained.copy_(self.flat())
            if self.swa and self.swa_count > 0:
                self.set_weights(self.swa_sum / self.swa_count)
            self.interpolate_to_clip(self.interp_lambda)

    @torch.no_grad()
    def set_weights(self, flat):
        for p, w in zip(self.trainable(), self.unflatten(flat)):
            p.copy_(w)

    @torch.no_grad()
    def interpolate_to_clip(self, lam):
        """theta <- lam * theta0 + (1 - lam) * theta (tools/test_net.py, TEST.PATCHING_MODEL)."""
        if lam:
            for p, p0 in zip(self.trainable(), self.unflatten(self.theta0)):
                p.copy_(lam * p0 + (1 - lam) * p)

    @property
    def needs_paths(self):
        """Open-VCLIP++: train_step wants each batch's video paths (paths=...) for the caption loss."""
        return bool(self.captions) and bool(self.caption_weight)

    def set_classes(self, names):
        self.tokens = tokenize(self.clip, [t.format(n) for t in TEMPLATES for n in names])   # (28*C, L), template-major
        self._classifier = None

    def classifier(self):
        """(C, E) = W. Built on first use, so on the model's device (K400: 11,200 prompts), in fp32, and from
        the frozen text tower, which never leaves theta0: the same W the official code builds at construction."""
        if not self.tokens.numel():
            raise RuntimeError("call set_classes(names) before the forward pass")
        if self._classifier is None or self._classifier.device != self.tokens.device:
            with torch.no_grad(), torch.autocast(self.tokens.device.type, enabled=False):
                w = torch.cat([encode_text(self.clip, chunk) for chunk in self.tokens.split(1024)])   # (28*C, E)
            w = F.normalize(w, dim=-1).view(len(TEMPLATES), -1, w.shape[-1])   # (28, C, E)
            self._classifier = F.normalize(w.mean(0), dim=-1)     # (C, E)
        return self._classifier

    def train(self, mode=True):
        self._classifier = None   # weights may have been loaded since: rebuild the classifier on next use
        if mode and self.trained.any():   # trained further after its last epoch: from where training was, as the
            self.set_weights(self.trained)   # official epoch checkpoints hold it, not from theta_test
            self.trained.zero_()
        return super().train(mode)

    def param_groups(self, lr, weight_decay):
        # ZERO_WD_1D_PARAM: no decay on 1-D tensors and biases; matrices and the 0-D logit_scale are decayed.
        return param_groups(self, lr, weight_decay, no_decay=lambda name, p: p.ndim == 1 or name.endswith(".bias"))

    def embed_videos(self, video):
        """(B, T, 3, S, S) -> (B, E) for retrieval: the mean of the unit frame embeddings (as the caption loss)."""
        return self.frame_embeddings(video).mean(1)

    def embed_captions(self, captions):
        """(K, E): each caption through the frozen text tower, as written (no templates: it is a sentence)."""
        return encode_captions(self.clip, captions)

    def similarity(self, videos, text):
        """(N, K) retrieval logits: cosine (forward averages per-frame logits with 28 templates a class)."""
        return cosine_logits(videos, text, self.clip.logit_scale)


def build(clip, args):
    def arg(name, default):
        value = getattr(args, name, None)
        return default if value is None else value
    # TEST.PATCHING_RATIO of script/testing/temporal_test_{b32,b16,l14}/*.sh
    lam = arg("interp_lambda", 0.6 if "L-14" in str(arg("model", "")) else 0.5)
    captions = arg("captions", None)
    return Model(clip, window=arg("temporal_window", 1) if arg("neighbours", True) else 0,   # ABLATIONS
                 iwo_alpha=arg("iwo_alpha", 0.6) if arg("iwo", True) else 0.0,
                 iwo_ratio=arg("iwo_ratio", 0.5), swa=not arg("no_swa", False),
                 swa_start=arg("swa_start", max(1, round(arg("warmup_epochs", 2)))), interp_lambda=lam,
                 captions=load_captions(captions) if captions else None, caption_weight=arg("caption_weight", 1.0))


# =========================================================================================================
# What makes Open-VCLIP a tool: the official recipe, the embedded demo's setting, the flags, where we differ from
# the official code and why, the Open-VCLIP++ caption file, and loading the released checkpoints.
# =========================================================================================================

# script/training/temporal_b16/train_tclip_interpolation_0.0-0.6_ratio0.5.sh, which overrides
# configs/Kinetics/TemporalCLIP_vitb16_8x16_STAdapter.yaml; test views from script/testing/temporal_test_b16/*.
RECIPE = dict(
    frames=8, sampling="dense", stride=16,   # DATA.NUM_FRAMES 8, SAMPLING_RATE 16 at TARGET_FPS 30 (decoder.py, pyav)
    crop="slowfast",             # TRAIN_JITTER_SCALES [224, 256], random 224 crop, flip; test: short side 224, centre
    lr=3.33e-6,                  # SOLVER.BASE_LR (script), for a batch of 64
    lr_min_ratio=0.01,           # SOLVER.COSINE_END_LR 3.33e-8 = BASE_LR / 100
    schedule="slowfast", warmup_start_ratio=0.01,   # lr_policy.py, WARMUP_START_LR 3.33e-8, COSINE_AFTER_WARMUP
    weight_decay=0.01,           # SOLVER.WEIGHT_DECAY (yaml), ZERO_WD_1D_PARAM True (see param_groups)
    betas=(0.9, 0.999), eps=1e-8,   # OPTIMIZING_METHOD adamw, torch defaults
    epochs=22, warmup_epochs=2,  # SOLVER.MAX_EPOCH 22, WARMUP_EPOCHS 2.0 (script)
    global_batch=64,             # TRAIN.BATCH_SIZE 64: global over 8 GPUs
    grad_clip=1.0,               # SOLVER.CLIP_GRAD_L2NORM
    mean="clip",                 # DATA.MEAN / STD are CLIP's
    flip=True, color_jitter=0.0, grayscale=0.0,   # AUG.ENABLE False: crops and flips only
    mixup=0.0, cutmix=0.0, smoothing=0.0,         # MIXUP.ENABLE False, soft_cross_entropy on hard labels
    test_clips=3, test_crops=1,  # TEST.NUM_ENSEMBLE_VIEWS 3, NUM_SPATIAL_CROPS 1
    test_fusion="sum", test_amp=False,   # DATA.ENSEMBLE_METHOD sum of the raw logits (meters.py); test in float32
    temporal_window=1,           # MODEL.TEMPORAL_MODELING_TYPE expand_temporal_view
    iwo_alpha=0.6, iwo_ratio=0.5,   # TRAIN.LINEAR_CONNECT_SAMPLE_R 0.6 (L 0.0), LINEAR_CONNECT_LOSS_RATIO 0.5
    swa_start=None,              # weight_average_tool.py wa_start 2 = the warm-up epochs (None: take those)
    interp_lambda=None,          # TEST.PATCHING_RATIO: 0.5 for B/32 and B/16, 0.6 for L/14 (None: by model)
    class_words=True,            # UCF101 "ApplyEyeMakeup" -> "Apply Eye Makeup" (zs_label_db/ucf101_full/process.py)
)

# The embedded demo. Chosen when it trained a random-initialised tiny CLIP (now --pretrained none): its theta0 is
# noise, not knowledge to keep, so interpolating towards it at test time only undoes learning (lambda 0), and IWO
# has nothing to preserve while it doubles the cost of every step. From the synthetic-pretrained default theta0
# does know shapes: the paper's --iwo-alpha 0.6 --interp-lambda 0.5 is the setting to try (these defaults were not
# re-measured for it). The tests exercise IWO and the interpolation. SWA averages the last quarter of the 20 epochs
# (16..20): the weights of early epochs are far from the end when training from scratch.
# stride 10: the recipe's 16 (at 30 fps) spans 3.7 s, longer than an embedded clip (24 frames at 8 fps, 3 s), and
# the official sampler then ends every clip on three copies of its last frame. That marks a clip's end, and with it
# the direction of the motion, which the model itself cannot see: with stride 16 the twins rose above chance from
# the repeats alone. Stride 10 spans 2.4 s, 8 distinct frames.
EMBEDDED = dict(iwo_alpha=0.0, interp_lambda=0.0, swa_start=16, stride=10)


# The parts a run can switch off, each with --no-PART (train.py names the run after them: openvclip-supervised-no-iwo);
# the model is then exactly the simpler one the docstring gives. Each overrides its setting's flag.
ABLATIONS = ("neighbours", "iwo")


def add_args(parser):
    parser.add_argument("--temporal-window", type=int, choices=[0, 1, 2, 3],
                        help="neighbour frames on each side each frame attends to (1: released models; 2, 3: "
                             "expand_temporal_view_step2/3; 0: none, as --no-neighbours)")
    parser.add_argument("--iwo-alpha", type=float, help="IWO draws alpha ~ U(0, this) (0.6); 0: as --no-iwo")
    parser.add_argument("--iwo-ratio", type=float, help="weight beta of the interpolated loss (0.5)")
    parser.add_argument("--no-swa", action="store_true", help="test the last weights instead of their average")
    parser.add_argument("--swa-start", type=int, help="first epoch (1-based) whose weights are averaged; "
                                                      "default: the warm-up epochs (2), as the official files 2..22")
    parser.add_argument("--interp-lambda", type=float, help="weight of the original CLIP in the test weights "
                                                            "(0.5 for B, 0.6 for L/14; 0: none, 1: CLIP itself)")
    parser.add_argument("--captions", help="Open-VCLIP++: caption file, {video path: caption} (torch.save or "
                                           "json); needs the per-batch video paths from train.py")
    parser.add_argument("--caption-weight", type=float, default=1.0, help="weight of the video-caption loss")
    parser.add_argument("--no-neighbours", dest="neighbours", action="store_false", default=None,
                        help="ablation: each frame attends only to its own tokens (window 0, whatever "
                             "--temporal-window): CLIP's image encoder frame by frame")
    parser.add_argument("--no-iwo", dest="iwo", action="store_false", default=None,
                        help="ablation: no interpolated weight optimisation (alpha 0, whatever --iwo-alpha): each "
                             "training step is the plain forward and backward")


# Where we differ from the official code, and why:
#  1. The attention is our own function rather than common.attention: the zero keys/values come after the
#     projection, which a token-level kv cannot express (a zero token would still get the bias).
#  2. IWO interpolates only the trainable weights (visual tower, logit_scale); the text tower is frozen, so its
#     interpolation is the identity. Both passes add into .grad (autograd accumulates), which equals the
#     official "copy the gradients, restore, add them back" without the gradient copy. The passes run one after
#     the other, so activations are never held twice; the extra memory is three buffers the size of theta (theta0,
#     the SWA sum, `trained`), and during the step a copy of theta, freed once restored after the first pass, and
#     the first pass's gradients, alive through the second (as the official gradient copy is).
#  3. One alpha per micro-batch (each train_step call), as the official code draws one per GPU in every
#     iteration: with the default micro-batch of 8 videos, the official 8 per GPU, an optimizer step of the
#     recipe's 64 videos averages the gradients of 8 alphas, as the official DDP step does.
#  4. SWA is a running sum in buffers (so checkpoints and --resume carry it) over the states after epochs
#     e >= --swa-start (1-based, default = warm-up epochs = 2, the official files 2..22); the average and the
#     interpolation are applied at the last epoch's on_epoch_end, so the last validation, the checkpoint and
#     the final test all use theta_test. Ask for none of it with --no-swa and --interp-lambda 0.
#  5. Training runs under bf16 autocast where the GPU has it (the official TRAIN.MIXED_PRECISION is fp16); the
#     test runs in float32, as the official one. Frames are resized as uint8, the official code resizes floats:
#     pixels may differ by rounding to whole levels.
#  6. The classifier is built from the frozen text tower for set_classes' names on first use (the official
#     builds it once at construction); identical, and it works for any class list. No gradient checkpointing
#     for L/14.


def caption_key(path):
    """Join captions and list entries by file name without folder or extension ("abseiling/x.mp4" -> "x"):
    the released caption file's keys (class folder or not, extension or not) were not available to check."""
    return os.path.splitext(os.path.basename(str(path)))[0]


def load_captions(path):
    """{video: caption} from a json file or a torch-serialised dict (the released
    blip_llama2_caption/refine_llama2_videocaption_noprioract.pt, expected to be such a dict), keyed by caption_key."""
    if path.endswith(".json"):
        with open(path) as f:
            captions = json.load(f)
    else:
        captions = load_checkpoint(path, "caption file")   # PyTorch's safe loader: nothing in the file runs
    if not isinstance(captions, dict):
        raise ValueError(f"{path}: expected a dict {{video path: caption}}, got {type(captions).__name__}")
    for key, text in captions.items():
        if not isinstance(text, str):
            raise ValueError(f"{path}: the caption of {key!r} is a {type(text).__name__}, not a string")
    return {caption_key(k): v for k, v in captions.items()}


def load_official(model, path, interp_lambda=None):
    """Load a released Open-VCLIP checkpoint (swa_2_22.pth: {'model_state': {'model.' + OpenAI CLIP key}}),
    then interpolate towards theta0 with the model's lambda: the file holds the weight average BEFORE the
    test-time interpolation (the official test script applies it when it loads the file). theta0 comes from
    --pretrained, which must be OpenAI's CLIP with QuickGELU (--pretrained openai, or the ViT-*-quickgelu
    architectures)."""
    state = {"clip." + k.removeprefix("model."): v for k, v in load_state_dict(path).items()}
    state = {k: v for k, v in state.items() if k not in ("clip.input_resolution", "clip.context_length",
                                                         "clip.vocab_size")}   # OpenAI JIT metadata, if any
    check_fits(model, state, path, "an Open-VCLIP checkpoint")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("theta0", "swa_", "trained"))]
    if missing or unexpected:
        raise CheckpointError(f"{path} is not an Open-VCLIP checkpoint of this model: it lacks {missing[:3]} "
                              f"({len(missing)}) and holds {unexpected[:3]} ({len(unexpected)}); check --method")
    model.interpolate_to_clip(model.interp_lambda if interp_lambda is None else interp_lambda)
    model.train(model.training)   # the text tower may have changed: rebuild the classifier on next use
