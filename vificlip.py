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
    w_c = TextEnc("a photo of a {c}.")      (E,)   recomputed every step: the text tower is trained too
    logit_c = exp(s) * <v/|v|, w_c/|w_c|>          s = logit_scale, trained, initialised at ln 100

Nothing in the model sees frame order: the mean is permutation invariant, so "moving left" and "moving
right" have the same embedding when their frames are the same set. The paper argues that fine-tuning
still teaches CLIP motion cues visible within single frames; the embedded synthetic set of this
repository is built so that no single frame carries the direction, which makes the limit visible.

Trainable parameters (`--tune`, the paper's Table 1 baselines): "both" is ViFi-CLIP (everything except
token_embedding, which the official code embeds once at construction and never trains); "image" trains
only the image tower (CLIP image-FT); "text" only the text tower without logit_scale (CLIP text-FT).

Where we differ from the official code, and why:
- Text features are cached while evaluating (no gradient): identical results, since CLIP has no dropout;
  the official code re-runs the text tower for every test view.
- Colour jitter is drawn once per video (data.py), the official pipeline draws it per frame.
- Weights stay fp32 with autocast on the GPU; the official code relies on apex O1 and casts inputs to
  fp16 by hand (spec §2 "dtype").
- The learning rate follows the cosine per optimizer step, the official one per micro-batch; with no
  gradient accumulation these are the same.
"""
from torch import nn
import torch

from common import (PHOTO_TEMPLATE, cosine_logits, encode_frames, encode_text, freeze, load_state_dict,
                    param_groups, tokenize)

# Fully-supervised Kinetics-400 recipe: configs/fully_supervised/k400/16_16_vifi_clip.yaml and the defaults
# of utils/config.py; test views from the README (--opts TEST.NUM_CLIP 4 TEST.NUM_CROP 3).
RECIPE = dict(
    frames=16,                 # DATA.NUM_FRAMES
    sampling="segment",        # TSN: one frame per equal segment (datasets/pipeline.py SampleFrames)
    stride=1,                  # (input side: 224, the CLIP's own; train.py takes it from the model)
    lr=2.2e-5,                 # TRAIN.LR (absolute, not scaled by batch)
    lr_min_ratio=0.01,         # timm cosine with lr_min = LR / 100 (utils/tools.py build_scheduler)
    weight_decay=1e-3,         # TRAIN.WEIGHT_DECAY, on every parameter (utils/optimizer.py)
    betas=(0.9, 0.98), eps=1e-8,
    epochs=30, warmup_epochs=5,
    batch_size=512,            # 4 per GPU x 16 accumulation steps x 8 GPUs (README)
    grad_clip=0.0,             # none in the official code
    mean="imagenet",           # datasets/build.py normalises with ImageNet statistics, not CLIP's
    flip=True, color_jitter=0.8, grayscale=0.2,
    mixup=0.8, cutmix=1.0, mix_switch=0.5, smoothing=0.1,   # AUG defaults, never overridden
    test_clips=4, test_crops=3,
    template=PHOTO_TEMPLATE,   # TRAINER.ViFi_CLIP.CTX_INIT "a photo of a" + " {}."
)

# The other official settings, as overrides of RECIPE (chosen with --recipe NAME).
VARIANTS = {
    # configs/zero_shot/train/k400/16_16_vifi_clip.yaml: K400 training for zero-shot transfer (32 frames).
    "zero-shot": dict(frames=32, lr=8e-6, epochs=10, batch_size=256, test_clips=1, test_crops=1),
    # configs/few_shot/finetuning_few_shot/*: 2/4/8/16-shot fine-tuning from CLIP.
    "few-shot": dict(frames=32, lr=2e-6, epochs=50, batch_size=64, test_clips=1, test_crops=1),
    # configs/base2novel/finetuning_base2novel/*: base-class fine-tuning from CLIP.
    "base2novel": dict(frames=32, lr=2e-6, epochs=11, batch_size=64, test_clips=1, test_crops=1),
    # configs/fully_supervised/k400/16_16_image_tuned_clip.yaml (text-FT has the same numbers): add --tune.
    "one-tower": dict(lr=8e-6, batch_size=256),
}


def add_args(parser):
    parser.add_argument("--tune", choices=["both", "image", "text"], default="both",
                        help="which tower to fine-tune: both (ViFi-CLIP), image or text (the paper's CLIP "
                             "image-FT / text-FT baselines)")
    parser.add_argument("--template", default=None,
                        help="text template with {} for the class name; default from the recipe "
                             "('a photo of a {}.'); '{}' gives vanilla zero-shot CLIP's bare names")


class Model(nn.Module):
    def __init__(self, clip, tune="both", template=PHOTO_TEMPLATE):
        super().__init__()
        self.clip = clip
        self.template = template
        freeze(clip)
        if tune in ("both", "image"):
            freeze(clip.visual, frozen=False)
        if tune in ("both", "text"):
            # The text tower minus token_embedding: the official code embeds the prompts once, at
            # construction, so the word embeddings never receive a gradient.
            freeze(clip.transformer, clip.ln_final, clip.positional_embedding, clip.text_projection, frozen=False)
        if tune == "both":
            freeze(clip.logit_scale, frozen=False)
        self.text_trainable = tune in ("both", "text")
        # Class tokens are not saved with the weights: set_classes rebuilds them for any class list.
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        self._text_cache = None

    def set_classes(self, names):
        self.tokens = tokenize(self.clip, [self.template.format(n) for n in names])   # (C, L)
        self._text_cache = None

    def train(self, mode=True):
        self._text_cache = None   # weights are about to change (or just did): cached text is stale
        return super().train(mode)

    def text_features(self):
        """(C, E). Recomputed on every training step, since the text tower is being trained; computed
        once and cached when there is no gradient to carry (evaluation, or a frozen text tower)."""
        if not self.tokens.numel():
            raise RuntimeError("call set_classes(names) before the forward pass")
        if torch.is_grad_enabled() and self.text_trainable:
            return encode_text(self.clip, self.tokens)
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = encode_text(self.clip, self.tokens)
        return self._text_cache

    def forward(self, video):
        B, T = video.shape[:2]                                       # video (B, T, 3, S, S)
        frames = encode_frames(self.clip.visual, video.flatten(0, 1))   # (B*T, E): frames are independent
        v = frames.view(B, T, -1).mean(dim=1)                        # (B, E): mean before normalising
        return cosine_logits(v, self.text_features(), self.clip.logit_scale)   # (B, C)

    def param_groups(self, lr, weight_decay):
        # One group: the official optimizer decays every parameter, biases, norms and logit_scale included.
        return param_groups(self, lr, weight_decay)


def load_official(model, path):
    """Load a released ViFi-CLIP checkpoint (spec §7) into `model`.

    Official keys are image_encoder.* / text_encoder.* / logit_scale behind DDP's "module."; the class-specific
    prompt buffers (prompt_learner.*) are dropped because set_classes rebuilds them. token_embedding is not in
    the file (it was never trained): it stays as loaded by --pretrained, which must be OpenAI's CLIP.
    """
    mapped = {}
    for key, value in load_state_dict(path).items():
        if key.startswith("prompt_learner."):
            continue
        if key.startswith("image_encoder."):
            key = "clip.visual." + key.removeprefix("image_encoder.")
        elif key.startswith("text_encoder."):
            key = "clip." + key.removeprefix("text_encoder.")
        elif key == "logit_scale":
            key = "clip.logit_scale"
        mapped[key] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if k != "clip.token_embedding.weight"]
    if missing or unexpected:
        raise RuntimeError(f"{path} is not a ViFi-CLIP checkpoint for this architecture: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def build(clip, args):
    return Model(clip, tune=getattr(args, "tune", "both"), template=getattr(args, "template", None) or PHOTO_TEMPLATE)
