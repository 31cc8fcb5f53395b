"""Video data, in the order a clip is made: the dataset, which frames, decoding, the transforms (and the colour,
normalisation and mixup train.py applies to whole batches). Below the divider, the tool: the datasets' files, the
protocols, the loader, the decoder's fall-backs, and a synthetic set made in seconds. Nothing here knows models.

    VideoDataset[i]: (path, label) of a list (read_list; read_dataset: UCF101, HMDB51, Kinetics, SSv2)
        --clip_indices (video_info, then segment_indices or dense_indices)--> T frame indices
        --read_frames--> uint8 (T,H,W,3) --TrainTransform--> uint8 (T,3,S,S) [and colour draws]
    DataLoader -> video (B,T,3,S,S), label (B,) --colour_batch, normalise, mix (on the device)--> float (B,T,3,S,S)

Two official pipelines, as their code has them, each recipe naming its own: frames "segment" (TSN: X-CLIP,
ViFi-CLIP, OmniCLIP) or "dense" (PySlowFast: Open-VCLIP), crops "tsn" or "slowfast". A video that cannot be
decoded raises VideoError naming the file, never a tensor of zeros that would train on blank clips.

The synthetic set: 3 shapes x 4 motions = 12 classes of 24-frame 64x64 clips of one coloured shape on a dark
textured background. The motions come in temporal twins ("moving left" is "moving right" played backwards,
"growing" is "shrinking"), the *set* of frames alike for both: a model that averages per-frame features is at
chance (50%) between twins, so accuracy between twins measures what a video method adds to CLIP.
synthetic_stills draws captioned single frames, for pretraining a tiny CLIP that knows shapes but not motion.
"""

import bisect
import csv
import functools
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import time
import warnings

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
import torchvision.transforms.v2.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

TARGET_FPS = 30  # PySlowFast's DATA.TARGET_FPS: a dense clip's stride counts frames of a 30 fps video
SEEK_GAP = 32  # frames; without a key-frame index, seek only over gaps longer than this
SEEK_SAVES = 4  # frames; with an index, seek when the key frame before the wanted frame skips more than this
_ONE_THREAD = dict(threads=1) if int(av.__version__.split(".")[0]) >= 17 else {}   # (older PyAV has one only)
_FIX = ("check that the file plays (ffprobe FILE), re-encode it (ffmpeg -i FILE -c:v libx264 OUT.mp4), "
        "or remove its line from the list file")


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded. The message always starts with the video's path."""


class DataError(ValueError):
    """An annotation file that cannot be used as it is: the message names the file and line, the value and the fix."""


# ---- the dataset: one clip (training) or all the views (test) of a video --------------------------------------------
class VideoDataset(torch.utils.data.Dataset):
    """Videos listed in `list_file` (paths relative to `root`), or (path, label) samples from read_dataset.
    train: (video (T,3,S,S), label), one random clip (clips_per_video K > 1: K clips of one decoding pass, each its
      own draw: (K,T,3,S,S)), drawn from (seed, epoch, i), so that a restart draws it again (key epoch * n + i).
    test:  (video (V,T,3,S,S), label) with V = num_clips * crops views, clip-major, for the caller to fuse.
    A deferred colour adds its draws: (video, label, draws[, index]); return_index adds the index. skip_bad: a video
    that cannot be decoded becomes a Skipped item, which collate() leaves out."""

    def __init__(self, list_file, root, num_frames, transform, mode="segment", stride=1, train=False, num_clips=1,
                 return_index=False, skip_bad=False, seed=0, clips_per_video=1):
        if isinstance(list_file, (str, os.PathLike)):
            self.samples = [(os.path.join(root, path), label) for path, label in read_list(list_file)]
            source, hint = list_file, f"check the root folder ({root}) or the list"
        else:  # samples from read_dataset, few_shot, ...: their paths already include the root
            self.samples = [(path, int(label)) for path, label in list_file]
            source, hint = "the samples given", "check the root given to read_dataset, or the annotation file"
        self.labels = [label for _, label in self.samples]
        if not self.samples:
            raise ValueError(f"{source}: lists no videos; expected 'path label' lines or (path, label) pairs")
        missing = [path for path, _ in self.samples if not os.path.isfile(path)]
        if missing:  # check up front: a wrong root should fail now, not hours into an epoch
            raise FileNotFoundError(f"{source}: {len(missing)} of {len(self.samples)} videos are missing, "
                                    f"e.g. {missing[0]}; {hint}")
        self.num_frames, self.transform, self.mode, self.stride = num_frames, transform, mode, stride
        self.train, self.num_clips, self.return_index, self.skip_bad = train, num_clips, return_index, skip_bad
        self.seed, self.clips_per_video = seed, clips_per_video

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, i = divmod(key, len(self.samples))
        try:
            # A test view draws only where the official test does (several TSN clips): from the video alone.
            rng = random.Random(f"{self.seed}:{epoch}:{i}" if self.train else f"{self.seed}:test:{i}")
            item = self._load(i, rng)
        except VideoError as e:
            if not self.skip_bad:
                raise
            return Skipped((self.samples[i][0], str(e)))
        return (*item, i) if self.return_index else item

    def _load(self, i, rng):
        (path, label), T = self.samples[i], self.num_frames
        K = self.clips_per_video if self.train else self.num_clips
        picks = clip_indices(path, T, self.mode, self.stride, train=self.train, num_clips=K, rng=rng)
        frames = read_frames(path, [j for clip in picks for j in clip])    # one decoding pass: (K*T,H,W,3)
        if not self.train:   # each clip (crops,T,3,S,S), or (T,3,S,S) from a one-view transform
            views = [self.transform(clip) for clip in frames.split(T)]
            return torch.cat([v.reshape(-1, *v.shape[-4:]) for v in views]), label  # (num_clips*crops,T,3,S,S)
        clips = [self.transform(clip, rng) for clip in frames.split(T)]   # each video, or (video, colour draws)
        clips = [clip if isinstance(clip, tuple) else (clip,) for clip in clips]
        parts = clips[0] if K == 1 else [torch.stack(part) for part in zip(*clips)]  # (T,3,S,S) or (K,T,3,S,S)
        return parts[0], label, *parts[1:]


# ---- which frames: "segment" (TSN) or "dense" (PySlowFast) sampling -------------------------------------------------
def clip_indices(path, T, mode="segment", stride=1, train=False, num_clips=1, rng=None):
    """[T frame indices of each of num_clips clips] of the video at `path` (training: num_clips random clips)."""
    n, fps, ticks = video_info(path)
    return [sample_indices(n, T, mode, stride, train=train, clip=0 if train else k, num_clips=1 if train else num_clips,
                           rng=rng, fps=fps, ticks=ticks) for k in range(num_clips)]


def sample_indices(num_frames, T, mode="segment", stride=1, train=False, clip=0, num_clips=1, rng=None,
                   fps=TARGET_FPS, ticks=None):
    """T sorted frame indices in [0, num_frames): random when train (from `rng`), else clip `clip` of num_clips."""
    if num_frames < 1 or T < 1 or not 0 <= clip < num_clips or mode not in ("segment", "dense"):
        raise ValueError(f"sample_indices: need num_frames >= 1, T >= 1, 0 <= clip < num_clips and mode 'segment' "
                         f"or 'dense'; got {num_frames}, {T}, {clip}, {num_clips}, {mode!r}")
    rng = random if rng is None else rng
    if mode == "segment":
        return segment_indices(num_frames, T, train, num_clips, rng)
    return dense_indices(num_frames, T, stride, train, clip, num_clips, rng, fps, ticks)


def segment_indices(n, T, train=False, num_clips=1, rng=random):
    """TSN, the mmaction2 SampleFrames of X-CLIP, ViFi-CLIP and OmniCLIP's code, with one frame per clip.
    train: T segments of n // T frames, a random frame of each (the last n mod T frames never drawn); for n < T
      the frames round(i * n / T) mod n (halves to even, as numpy's around; out_of_bound_opt "loop" wraps them:
      n = 3, T = 8 gives 0 0 1 1 2 2 2 0).
    test, one clip: frame int(i * a + a / 2) of segment i, a = n / T (the middle of each segment); several clips:
      training draws, as X-CLIP's build.py samples them (VideoDataset seeds them per video)."""
    if not train and num_clips == 1:
        a = n / T
        return [int(i * a + a / 2.0) for i in range(T)]
    if n < T:   # np.around(arange(T) * n / T) (Python's round also takes halves to even), looped into [0, n)
        return [round(i * (n / T)) % n for i in range(T)]
    a = n // T
    return [i * a + rng.randrange(a) for i in range(T)]


def dense_indices(n, T, stride=1, train=False, clip=0, num_clips=1, rng=random, fps=TARGET_FPS, ticks=None):
    """PySlowFast's pyav decoder, Open-VCLIP: a window of stride * (T - 1) frames of a TARGET_FPS video, i.e.
    ceil(stride * (T - 1) / 30 * fps) frames of this one, starts at random in training and at k / num_clips of
    the free range for test clip k (the fork's decoder ignores USE_OFFSET_SAMPLING). The frames from its first
    timestamp (ticks per frame: int(start * ticks)) to its last, and one more, are kept; the T indices are
    linspace(0, stride * T / 30 * fps - 1, T) into them (float32, truncated), clamped to the last kept frame (a
    short video repeats its last frame). A video without a duration is decoded whole and sampled from
    linspace(start, start + stride * T / 30 * fps - 1, T), its test clips at k * (free range // (num_clips - 1)),
    or the middle for one clip (USE_OFFSET_SAMPLING on that path)."""
    span = stride * T / TARGET_FPS * fps                                  # the clip's length in this video's frames
    if ticks is None:   # decoded whole: the clip is cut from all n frames
        delta = max(n - span, 0)
        start = rng.uniform(0, delta) if train else \
            math.floor(delta / 2) if num_clips == 1 else clip * math.floor(delta / (num_clips - 1))
        first, kept, end = 0, n, start + max(1.0, span) - 1
    else:   # selective decoding: the frames between two timestamps (and one more) are kept
        window = max(1.0, math.ceil(stride * (T - 1) / TARGET_FPS * fps))
        delta = max(n - window, 0)
        start = rng.uniform(0, delta) if train else delta * clip / num_clips
        first_pts, last_pts = int(start * ticks), int((start + window - 1) * ticks)
        first = math.ceil(first_pts / ticks)                               # the first frame at or after first_pts
        last = min(math.floor(last_pts / ticks) + 1, n - 1)                # the last at or before, and one more
        kept, start, end = last - first + 1, 0, max(1.0, span) - 1
    picks = torch.linspace(start, end, T).clamp(0, kept - 1).long()       # float32, as torch.linspace
    return [first + int(p) for p in picks]


def video_length(path) -> int:
    """Number of frames of the video at `path`, from the container's count or, if it has none, by demuxing."""
    return video_info(path)[0]


def video_info(path):
    """(frames, fps, timestamp ticks per frame or None) of the video at `path`, cached per (path, size, mtime)."""
    try:
        stat = os.stat(path)
    except OSError as e:
        raise VideoError(f"{path}: cannot be opened ({e}); {_FIX}") from e
    return _video_info(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2 ** 16)
def _video_info(path, size, changed):
    with _open(path) as container:
        stream = container.streams.video[0]
        try:  # webm, avi and raw streams often store no count (0): count packets then, which needs no decoding
            n = stream.frames or sum(1 for packet in container.demux(stream) if packet.size > 0)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: cannot be read ({e}); {_FIX}") from e
        fps = float(stream.average_rate or TARGET_FPS)
        ticks = stream.duration / stream.frames if stream.duration and stream.frames else None
    if n <= 0:
        raise VideoError(f"{path}: holds no video frames; {_FIX}")
    return n, fps, ticks


# ---- decoding: read_frames is the only function that touches a decoder ----------------------------------------------
def read_frames(path, indices) -> torch.Tensor:
    """Decode the frames `indices` (any order, repeats allowed) -> uint8 (len(indices), H, W, 3) RGB, in that order:
    first the fast path (_decode seeks near each wanted frame), then fall-backs, each slower and asking less."""
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"read_frames({path}): indices must be a non-empty list of frame numbers >= 0, got {indices}")
    wanted, how = sorted(set(indices)), dict(by_timestamp=True)
    while True:
        try:
            arrays = _decode(path, wanted, **how)
            break
        except _Skipped:      # rare (timestamps with gaps or repeats): the frames a full decode gives, exactly
            how["skip"] = False
        except _SeekDamage:   # trouble after a seek (open GOPs, intra refresh): decode from the start
            how["seek"] = False
        except _BadTimestamps:  # count frames from the start instead: slower, but needs no timestamps
            how = dict(by_timestamp=False)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed ({e}); {_FIX}") from e
    return torch.from_numpy(np.stack([arrays[i] for i in indices]))  # (len(indices),H,W,3)


def _decode(path, wanted, by_timestamp, skip=True, seek=True):
    """Decode the sorted frame numbers `wanted` -> {number: uint8 (H,W,3)}, as a player shows them (rotated, at the
    first frame's size). by_timestamp: a frame's number comes from its timestamp (right after a seek too), else from
    counting; skip: frames nobody refers to are not decoded (H.264); seek=False: decode from the start."""
    with _open(path) as container, av.logging.Capture(local=False) as logs:
        reader = _Reader(path, container, logs, wanted, by_timestamp, skip, seek)
        return {k: reader.rgb(reader.decode_to(k)) for k in wanted}


class _Reader:
    """One pass of _decode through a video: where decoding is; the fall-backs' checks are below the divider."""

    def __init__(self, path, container, logs, wanted, by_timestamp, skip, seek):
        stream = container.streams.video[0]
        stream.thread_count = 1   # the DataLoader workers are the parallelism; damage reports precede their frame
        if by_timestamp and not (stream.average_rate and stream.time_base):
            raise _BadTimestamps
        self.path, self.container, self.stream, self.logs = path, container, stream, logs
        self.by_timestamp, self.start = by_timestamp, stream.start_time or 0
        self.ticks = 1 / (stream.time_base * stream.average_rate) if by_timestamp else None  # timestamp ticks a frame
        self.keys = _key_frames(stream, self.ticks) if by_timestamp else []
        self.skip = skip and by_timestamp and stream.codec_context.name == "h264"   # see _packets
        self.wants, self.skippable = set(wanted), {}   # skippable: {pts: number} of packets sent so, not yet passed
        self.frames, self.current, self.frame = _packets(self), -1, None
        self.seeking, self.seeked_from, self.seeked = by_timestamp and seek, None, False
        self.to_rgb, self.size, self.damage, self.reported = VideoReformatter(), None, None, 0

    def seek_before(self, k):
        """Seek to the key frame at or before frame k when that skips frames (SEEK_SAVES; SEEK_GAP without an index)."""
        at = bisect.bisect_right(self.keys, k)
        key = self.keys[at - 1] if at else -1   # the key frame at or before k (-1: none known)
        if self.seeking and (key - self.current > SEEK_SAVES if self.keys else k - self.current > SEEK_GAP):
            self.container.seek(self.start + int(k * self.ticks), stream=self.stream)
            self.frames, self.seeked_from, self.seeked = _packets(self), self.current, True
            self.skippable.clear()

    def decode_to(self, k):
        """The first frame numbered k or more, seeking first if that skips frames; damage near it is refused."""
        self.seek_before(k)
        while self.current < k or self.seeked_from is not None:
            frame = next(self.frames, None)
            self.current, self.frame = _frame_number(self, frame, k), frame
            _note_damage(self, frame, self.current)
        _refuse_damage(self, k)
        return self.frame

    def rgb(self, frame):
        """The frame as upright uint8 (H,W,3) RGB at the first frame's size (one converter, one thread)."""
        self.size = self.size or (frame.width, frame.height)   # (W, H) of the first frame taken
        image = self.to_rgb.reformat(frame, width=self.size[0], height=self.size[1], format="rgb24",
                                     **_ONE_THREAD).to_ndarray()
        turns = round((frame.rotation or 0) / 90) % 4   # quarter turns counterclockwise, as a player shows it
        return np.rot90(image, turns) if turns else image


def _open(path):
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot be opened ({e}); {_FIX}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream; {_FIX}")
    return container


# ---- transforms: uint8 (T,H,W,3) -> normalised float, by two official pipelines, each recipe naming its own (crop=):
#   "tsn"      X-CLIP's datasets/build.py (ViFi-CLIP ships the same file; OmniCLIP takes X-CLIP's recipe), mmaction2
#              style: short side to 256/224 of the input, MultiScaleCrop, resize to S x S, flip, per-frame colour
#              jitter, grayscale; test: short side 256/224 S and the centre, or short side S and three crops.
#   "slowfast" Open-VCLIP's slowfast/datasets/utils.py spatial_sampling: a random short side in [S, 256/224 S], a
#              random S x S crop, flip; test: short side S, the centre crop, or three crops along the long side.
class TrainTransform:
    """A training clip's augmentation, crop="tsn" or "slowfast" (see above): (T,H,W,3) uint8 -> (T,3,size,size)
    float, every draw from `rng`. short_side: the TSN resize and the top of the slowfast jitter (default 256/224 of
    size). normalise=False returns uint8, for normalise() on the device; defer_colour=True also leaves out the
    colour -> (uint8 clip, its (T,10) colour draws), for colour_batch() on the device, as train.py does."""

    def __init__(self, size, mean, std, crop="tsn", scales=(1, .875, .75, .66), flip=True, color_jitter=0.8,
                 grayscale=0.2, short_side=None, normalise=True, defer_colour=False):
        if crop not in ("tsn", "slowfast"):
            raise ValueError(f"TrainTransform: crop must be 'tsn' or 'slowfast', got {crop!r}")
        self.size, self.mean, self.std, self.crop = size, list(mean), list(std), crop
        self.normalise, self.defer_colour = normalise and not defer_colour, defer_colour
        self.scales, self.flip, self.color_jitter, self.grayscale = scales, flip, color_jitter, grayscale
        self.short_side = short_side or int(256 / 224 * size)   # build.py's scale_resize

    def _crop_box(self, height, width, rng=random):
        """MultiScaleCrop (TSN, random_crop=False) -> (top, left, h, w): each side one of scales * short side (scale
        indices at most one apart, within 3 pixels of size snapped to it), at a corner or the centre."""
        sides = [int(min(height, width) * s) for s in self.scales]
        pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
        h, w = (self.size if abs(side - self.size) < 3 else side for side in rng.choice(pairs))
        dy, dx = (height - h) // 4, (width - w) // 4
        top, left = rng.choice([(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx)])
        return top, left, h, w

    def __call__(self, frames, rng=random):
        x, S = frames.permute(0, 3, 1, 2), self.size                                   # (T,3,H,W)
        if self.crop == "tsn":
            x = resize(x, *short_side_size(*x.shape[-2:], self.short_side, "mmcv"))     # (T,3,H',W')
            top, left, h, w = self._crop_box(*x.shape[-2:], rng)
            x = resize(x[..., top:top + h, left:left + w], S, S)                         # (T,3,S,S)
        else:   # the short side drawn from [S, short_side] and rounded (numpy's round: halves to even, as Python's)
            x = resize(x, *short_side_size(*x.shape[-2:], int(round(rng.uniform(S, self.short_side))), "slowfast"))
            height, width = x.shape[-2:]   # numpy's randint(0, height - S): the last offset is never drawn
            top, left = (rng.randrange(side - S) if side > S else 0 for side in (height, width))
            x = x[..., top:top + S, left:left + S]                                         # (T,3,S,S)
        if self.flip and rng.random() < 0.5:
            x = F.horizontal_flip(x)   # (the colour ops act on each pixel alone or on whole frames: a flip commutes)
        draws = _colour_draws(rng, len(x), self.color_jitter, self.grayscale)
        if self.defer_colour:
            return x, draws
        x = colour(x, draws)
        return normalise(x, self.mean, self.std) if self.normalise else x


class TestTransform:
    """Deterministic test views, crop="tsn" or "slowfast" (see above): (T,H,W,3) uint8 -> (crops,T,3,size,size) float
    (uint8 with normalise=False). tsn: short side to 256/224 of size, the centre; or to size, three crops at 0,
    2 * ((L - S) // 2), (L - S) // 2 of the long side L (ThreeCrop). slowfast: short side to size (the configs'
    TRAIN_JITTER_SCALES[0], TEST_CROP_SIZE), the centre at ceil((L - S) / 2), or three crops at 0, centre, L - S."""

    def __init__(self, size, mean, std, crops=1, crop="tsn", short_side=None, normalise=True):
        if crops not in (1, 3) or crop not in ("tsn", "slowfast"):
            raise ValueError(f"TestTransform: crops must be 1 or 3 and crop 'tsn' or 'slowfast', got {crops}, {crop!r}")
        self.size, self.mean, self.std, self.crops, self.crop = size, list(mean), list(std), crops, crop
        self.normalise, self.short_side = normalise, short_side or int(256 / 224 * size)

    def boxes(self, height, width):
        """(resized (H', W'), [(top, left) of each crop]) for a frame of height x width."""
        S, tsn = self.size, self.crop == "tsn"
        H, W = short_side_size(height, width, self.short_side if tsn and self.crops == 1 else S,
                               "mmcv" if tsn else "slowfast")
        free = max(H, W) - S   # along the long side
        if tsn:
            centre, along = ((H - S) // 2, (W - S) // 2), [0, 2 * (free // 2), free // 2]
        else:
            centre, along = (math.ceil((H - S) / 2), math.ceil((W - S) / 2)), [0, math.ceil(free / 2), free]
        if self.crops == 1:
            return (H, W), [centre]
        # tsn: ThreeCrop moves along the width when the height is the crop's (a square frame too); slowfast's
        # uniform_crop along the height only when the frame is taller than wide
        tall = H != S if tsn else H > W
        return (H, W), [(o, centre[1]) if tall else (centre[0], o) for o in along]

    def __call__(self, frames):
        x, S = frames.permute(0, 3, 1, 2), self.size                                   # (T,3,H,W)
        (H, W), offsets = self.boxes(*x.shape[-2:])
        x = resize(x, H, W)                                                               # (T,3,H',W')
        x = torch.stack([x[..., top:top + S, left:left + S] for top, left in offsets])    # (crops,T,3,S,S)
        return normalise(x, self.mean, self.std) if self.normalise else x


def resize(x, height, width):
    """(T, 3, H, W) uint8 -> (T, 3, height, width), bilinear without antialiasing, as both official pipelines,
    in float and rounded: within half a level of PySlowFast's float frames, one of mmcv's cv2 INTER_LINEAR."""
    if x.shape[-2:] == (height, width):
        return x
    out = torch.nn.functional.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def short_side_size(height, width, short, rule):
    """(H', W') of a frame resized so that its short side is `short`. mmcv (X-CLIP's Resize, mmcv.rescale_size):
    both sides scaled and rounded half up; slowfast (random_short_side_scale_jitter): the long side floored."""
    if rule == "mmcv":
        scale = short / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if width < height:
        return int(math.floor(height / width * short)), short
    return short, int(math.floor(width / height * short))


def _colour_draws(rng, T, color_jitter, grayscale, strengths=(0.4, 0.4, 0.2, 0.1)):
    """X-CLIP's ColorJitter then GrayScale (datasets/pipeline.py) for T frames -> (T, 10) float64: [jitter?, brightness,
    contrast, saturation, hue, the order of the four, grayscale?], jitter and grayscale per clip, the rest per frame."""
    draws = torch.zeros(T, 10, dtype=torch.float64)
    if rng.random() < color_jitter:
        b, c, s, h = strengths
        for t in range(T):
            order = [0, 1, 2, 3]
            rng.shuffle(order)
            draws[t, :9] = torch.tensor([1, rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c),
                                         rng.uniform(1 - s, 1 + s), rng.uniform(-h, h), *order], dtype=torch.float64)
    draws[:, 9] = float(rng.random() < grayscale)
    return draws


# torchvision's colour operations on uint8 images, for many frames at once, each with its own factor (N,1,1,1):
# the same formulas, on float frames that hold whole levels between the operations, as uint8 images would.
def _luma(x):
    r, g, b = x.unbind(-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)    # (N,1,H,W)


def _blend(x, y, ratio):
    return x.mul(ratio.float()).add_(y.mul((1.0 - ratio).float())).clamp_(0, 255).trunc_()


def _hue(x, f):
    """The hue turned by f of a full turn, through HSV (Pillow's formulas, as torchvision's adjust_hue)."""
    x = x / 255
    top, bottom = x.amax(-3), x.amin(-3)                                               # (N,H,W)
    flat = top == bottom
    spread = torch.where(flat, torch.ones_like(top), top - bottom)
    s = (top - bottom) / torch.where(flat, torch.ones_like(top), top)
    rc, gc, bc = ((top.unsqueeze(-3) - x) / spread.unsqueeze(-3)).unbind(-3)
    r, g, _ = x.unbind(-3)
    h = torch.where(top == r, bc - gc, torch.where(top == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + 1.0).fmod(1.0).add_(f.float().flatten(1)[..., None]).remainder_(1.0)   # (N,H,W)
    h6 = h * 6
    i = h6.floor()
    frac = h6 - i
    v, p = top, ((1.0 - s) * top).clamp_(0, 1)
    q, t = ((1.0 - s * frac) * top).clamp_(0, 1), ((s * frac + 1.0 - s) * top).clamp_(0, 1)
    vpqt = torch.stack((v, p, q, t), -3)                                              # (N,4,H,W)
    select = _HUE_SECTORS.to(x.device, non_blocking=True)[:, i.long().remainder_(6)]   # (3,N,H,W)
    rgb = vpqt.gather(-3, select.moveaxis(0, -3))                                     # (N,3,H,W)
    return rgb.mul_(255 + 1.0 - 1e-3).trunc_()                                         # to uint8 as torchvision


_HUE_SECTORS = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])   # rgb from (v,p,q,t)
_COLOUR_OPS = (lambda x, f: x.mul(f.float()).clamp_(0, 255).trunc_(),                       # brightness
               lambda x, f: _blend(x, _luma(x).floor_().mean((-3, -2, -1), keepdim=True), f),  # contrast
               lambda x, f: _blend(x, _luma(x).floor_(), f),                                    # saturation
               _hue)
_ONE_BY_ONE = 96 * 96   # pixels of a frame from which a CPU colours one frame at a time


def colour(x, draws):
    """(T, 3, H, W) uint8 frames coloured as their (T, 10) draws say: each frame's four operations in its own order,
    then grayscale; one call per operation for all the frames, or on a CPU from 96 px on frame by frame, as fast."""
    draws = draws.cpu()   # which frames get what is decided on the CPU: a GPU batch is never waited for
    on, grey = draws[:, 0] > 0, draws[:, 9] > 0
    if not on.any() and not grey.any():
        return x
    y, factors = x.float(), draws[:, 1:5, None, None, None].to(x.device)                # (T,4,1,1,1)
    if x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= _ONE_BY_ONE:   # one frame at a time
        for t in on.nonzero().flatten().tolist():
            for k in draws[t, 5:9].long().tolist():                              # its operations, in its order
                y[t:t + 1] = _COLOUR_OPS[k](y[t:t + 1], factors[t:t + 1, k])
    else:   # one call per operation and position, for all the frames that take it there
        for position in range(4):
            for k, op in enumerate(_COLOUR_OPS):
                frames = (on & (draws[:, 5 + position] == k)).nonzero().flatten().to(x.device)   # frame indices
                if len(frames):
                    y[frames] = op(y[frames], factors[frames, k])
    if grey.any():
        frames = grey.nonzero().flatten().to(x.device)
        y[frames] = _luma(y[frames]).trunc_().expand(-1, 3, -1, -1)
    return y.to(torch.uint8)


def colour_batch(video, draws):
    """(B, T, 3, S, S) uint8 clips, (B, T, 10) draws -> uint8: colour() on a whole batch, where it is (a GPU)."""
    return colour(video.flatten(0, 1), draws.flatten(0, 1)).view(video.shape)    # (B*T,3,S,S) -> (B,T,3,S,S)


def normalise(x, mean, std):
    """uint8 (..., 3, H, W) -> float (x / 255 - mean) / std: the transforms' last step, on the device in train.py."""
    return F.normalize(x.float() / 255, list(mean), list(std))


def mix(video, target, mixup, cutmix, switch):
    """Mixup or CutMix of a training batch (B, T, 3, S, S), target (B, C), as X-CLIP's datasets/blending.py: one
    lambda per batch, each video's partner from torch.randperm(B) (maybe itself); one CutMix box for all frames."""
    if (mixup <= 0 and cutmix <= 0) or video.shape[0] < 2:
        return video, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < switch)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(video.shape[0]).to(video.device)
    partner = video[order]
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
    return video, lam * target + (1 - lam) * target[order]


# =====================================================================================================================
# The tool: the datasets' files, the protocols, the loader's batches, the decoder's fall-backs, the synthetic set.
# =====================================================================================================================

# ---- lists, class files and the standard datasets, read in the formats they are published in ------------------------
def _lines(file, strip=str.strip):
    """(line number, strip(line)) of the non-blank lines (UCF101's end with '\\r'); a byte-order mark is skipped."""
    with open(file, encoding="utf-8-sig") as f:
        return [(n, strip(line)) for n, line in enumerate(f, 1) if line.strip()]


def read_list(list_file):
    """Lines "path label" -> [(path, label)]. Paths may hold spaces. Every non-blank line is a video: the format
    (mmaction2's, X-CLIP's, ViFi-CLIP's) has no comments, and HMDB51 has videos named "#437_How_To_Ride_...avi"."""
    return [(path, label) for _, path, label in _list_lines(list_file)]


def _list_lines(list_file):
    """[(line number, path, label)] of a "path label" list; an empty list is refused."""
    samples = []
    for n, line in _lines(list_file):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdecimal():
            raise DataError(f"{list_file}:{n}: expected 'relative/path.mp4 label' with label an integer "
                            f"class id >= 0, got {line!r}; fix or remove the line")
        samples.append((n, parts[0], int(parts[1])))
    if not samples:
        raise DataError(f"{list_file}: lists no videos; expected one 'relative/path.mp4 label' line per video")
    return samples


def load_classes(csv_file):
    """Class names by id 0..C-1 from "id,name" lines (optional header "id,name") or one name a line, ids from 0
    (mmaction2's label_map_k400.txt), one way throughout. Read by the csv module's rules, as spreadsheets write it:
    a name holding a comma is quoted ("3,\"push, pull\""); a later unquoted name may hold commas too."""
    names, first = {}, None   # first: whether the first line is a name alone; every line goes the same way
    with open(csv_file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            n, line = f"{csv_file}:{reader.line_num}", ",".join(row)
            if not "".join(row).strip() or (not names and [c.strip().lower() for c in row] == ["id", "name"]):
                continue
            bare = len(row) == 1 or not row[0].strip().isdecimal()   # a name alone, not "id,name"
            if first is None and bare and len(row) > 1:   # a header of other columns
                raise _csv_error(csv_file, row)
            first = bare if first is None else first
            id_, name = (len(names), line.strip()) if bare else (int(row[0]), ",".join(row[1:]).strip())
            if bare != first or not name:
                way = "one class name a line" if first else "'id,name' with id an integer >= 0"
                raise DataError(f"{n}: expected {way}, as on the first line, got {line!r}; fix the line")
            if id_ in names:
                raise DataError(f"{n}: class id {id_} appears a second time; ids must be unique")
            names[id_] = name
    if not names or max(names) != len(names) - 1:
        missing = min(set(range(max(names, default=-1) + 1)) - set(names), default=0)
        raise DataError(f"{csv_file}: class ids must run 0..C-1 without gaps; found {len(names)} ids, the largest "
                        f"{max(names, default=None)}" + (f", no id {missing}" if names else "; the file is empty"))
    return [names[i] for i in range(len(names))]


_KINETICS = ("label", "youtube_id", "time_start", "time_end")
_VIDEO_TYPES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")


def _csv_error(path, found):
    """The error for a CSV whose columns no reader here knows: it names them and the formats that are read."""
    columns = ','.join(found or ()) or '(none)'
    return DataError(f"{path}:1: the columns {columns} are no CSV format read here; Kinetics' video list: "
                     f"{','.join(_KINETICS)},...; MSR-VTT's captions: key,vid_key,video_id,sentence (--protocol "
                     f"retrieval); a class file: id,name (or one name a line, quoted if it holds a comma)")


def _existing(*paths):
    """The first of `paths` that is a file, else the first (for the missing-video error to name)."""
    return next((path for path in paths if os.path.isfile(path)), paths[0])


def _files_by_stem(root):
    """{file name without extension: [its paths]} of every video file under root (a thumbnail or .json of the same
    name is no video), in sorted order (one copy wins)."""
    found = {}
    for folder, subfolders, files in os.walk(root or os.curdir):
        subfolders.sort()
        for stem, ext in sorted(map(os.path.splitext, files)):
            if ext.lower() in _VIDEO_TYPES:
                found.setdefault(stem, []).append(os.path.join(folder, stem + ext))
    return found


def _json(file):
    with open(file, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:  # its message has the line but not the file
            raise ValueError(f"{file}:{e.lineno}: not valid JSON ({e.msg}); download the file again") from e


def _ucf101(list_file, root):
    """A UCF101 trainlist/testlist with classInd.txt ("1 ApplyEyeMakeup") beside it. Train lines end with a
    1-indexed label ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"); test lines do not: the folder is the class."""
    class_file, names = os.path.join(os.path.dirname(list_file), "classInd.txt"), []
    for n, line in _lines(class_file):
        if line.split()[0] != str(len(names) + 1) or len(line.split()) != 2:
            raise ValueError(f"{class_file}:{n}: expected '{len(names) + 1} ClassName', got {line!r}; fix the line")
        names.append(line.split()[1])
    by_folder, samples = {name.lower(): i for i, name in enumerate(names)}, []  # UCF101 spells HandStand two ways
    for n, line in _lines(list_file):
        parts = line.split()
        label = by_folder.get(parts[0].split("/")[0].lower()) if len(parts) == 1 else None
        if len(parts) == 2 and parts[1].isdecimal() and 1 <= int(parts[1]) <= len(names):
            label = int(parts[1]) - 1  # the file counts from 1, we from 0
        if label is None:
            raise ValueError(f"{list_file}:{n}: expected 'Class/video.avi' with Class in {class_file}, optionally "
                             f"then a label 1..{len(names)}, got {line!r}; fix or remove the line")
        samples.append((os.path.join(root, parts[0]), label))
    return samples, names


def _hmdb51(folder, root, split, train):
    """HMDB51: a file <class>_test_split<k>.txt per class and split, every video of the class with a mark:
    1 train, 2 test, 0 unused. Ids follow the alphabetical order of the class folders, as in every paper."""
    files = (re.fullmatch(r"(.+)_test_split(\d+)\.txt", file) for file in os.listdir(folder))
    classes = sorted(m[1] for m in files if m and int(m[2]) == split)
    if not classes:
        raise FileNotFoundError(f"{folder}: holds neither classInd.txt (UCF101) nor <class>_test_split{split}.txt "
                                f"files (HMDB51); pass a folder of one of those, or a file")
    samples = []
    for label, name in enumerate(classes):
        file = os.path.join(folder, f"{name}_test_split{split}.txt")
        for n, line in _lines(file):
            video, _, mark = line.rpartition(" ")
            if not video.strip() or mark not in ("0", "1", "2"):
                raise ValueError(f"{file}:{n}: expected 'video.avi mark' with mark 1 (train), 2 (test) or 0 "
                                 f"(unused), got {line!r}; fix or remove the line")
            if mark == ("1" if train else "2"):
                samples.append((os.path.join(root, name, video.strip()), label))
    return samples, [name.replace("_", " ") for name in classes]


def _kinetics(csv_file, root, classes):
    """A Kinetics-400/600/700 csv. Each row is 10 s of a YouTube video, which the downloaders save as
    <youtube_id>_<start:06d>_<end:06d>.<ext>, in per-class folders or in one: so clips are found by name."""
    with open(csv_file, encoding="utf-8-sig", newline="") as f:
        reader, clips = csv.DictReader(f), []  # labels may be quoted and hold commas; clips: (line, file stem, name)
        if not set(_KINETICS) <= set(reader.fieldnames or ()):
            raise _csv_error(csv_file, reader.fieldnames)
        for row in reader:  # a row too short has None in its last fields
            label, youtube_id, start, end = ((row[column] or "").strip() for column in _KINETICS)
            if not (label and youtube_id and start.isdecimal() and end.isdecimal()):
                raise ValueError(f"{csv_file}:{reader.line_num}: expected 'label,youtube_id,time_start,time_end,...' "
                                 f"with whole seconds, got {row}; fix or remove the line")
            clips.append((reader.line_num, f"{youtube_id}_{int(start):06d}_{int(end):06d}", label))
    names = list(classes) if classes is not None else sorted({label for _, _, label in clips})
    ids = {name: i for i, name in enumerate(names)}
    for n, _, label in clips:
        if label not in ids:
            raise ValueError(f"{csv_file}:{n}: label {label!r} is not among the {len(names)} classes given; add it "
                             f"to classes or remove the line")
    found = _files_by_stem(root)
    samples = [(found[stem][0], ids[label]) for _, stem, label in clips if stem in found]
    missing = [stem for _, stem, _ in clips if stem not in found]
    if not samples:
        raise FileNotFoundError(f"{csv_file}: none of its {len(clips)} clips is under {root!r}, e.g. "
                                f"{''.join(missing[:1])}.*; check root")
    if missing:  # YouTube videos disappear: 5-10% of a Kinetics set is missing for everyone
        warnings.warn(f"{csv_file}: skipping the {len(missing)} of {len(clips)} clips that are not under {root!r}, "
                      f"e.g. {missing[0]}", stacklevel=3)
    return samples, names


def _ssv2(json_file, root):
    """Something-Something v2: a json list of {"id", "template", ...}, the class the template without brackets."""
    label_file = _existing(*(os.path.join(os.path.dirname(json_file), name)
                             for name in ("something-something-v2-labels.json", "labels.json")))
    if not os.path.isfile(label_file):
        raise FileNotFoundError(f"{json_file}: needs something-something-v2-labels.json (or labels.json) beside it")
    ids = {name: int(i) for name, i in _json(label_file).items()}
    if sorted(ids.values()) != list(range(len(ids))):
        raise ValueError(f"{label_file}: class ids must run 0..C-1, once each; download the labels file again")
    samples = []
    for i, item in enumerate(_json(json_file)):
        template = item.get("template") if isinstance(item, dict) else None
        name = template.replace("[", "").replace("]", "") if isinstance(template, str) else None
        if name not in ids or not str(item.get("id", "")).isdecimal():
            raise ValueError(f"{json_file}: item {i}: expected {{\"id\": \"78687\", \"template\": \"Holding [something]"
                             f"...\"}} with the template, brackets removed, in {label_file}; got {item!r}; fix or "
                             f"remove the item (test.json has no templates: evaluate on validation.json)")
        video = _existing(*(os.path.join(root, f"{item['id']}.{ext}") for ext in ("webm", "mp4")))  # mp4: re-encoded
        samples.append((video, ids[name]))
    return samples, sorted(ids, key=ids.get)


def dataset_format(path):
    """The format read_dataset reads `path` as: "ucf101", "hmdb51", "kinetics", "ssv2" or "list"."""
    name = os.path.basename(os.path.normpath(path)).lower()
    if os.path.isfile(os.path.join(path, "classInd.txt")) or re.fullmatch(r"(train|test)list0*(\d+)\.txt", name):
        return "ucf101"
    if os.path.isdir(path):
        return "hmdb51"
    return {".csv": "kinetics", ".json": "ssv2"}.get(os.path.splitext(name)[1], "list")


def read_dataset(path, root="", split=1, train=True, classes=None):
    """A dataset's own annotation files, in the format `path` shows -> (samples [(video path, label)], names or None):
      UCF101    the ucfTrainTestlist folder (split, train pick trainlist0k/testlist0k.txt) or one of its lists
      HMDB51    the folder of <class>_test_split<k>.txt files (split, train pick the videos marked 1 or 2)
      Kinetics  a .csv: label,youtube_id,time_start,time_end,...; missing clips are skipped with a warning
      SSv2      a .json list (train.json, validation.json) with something-something-v2-labels.json beside it
      else      a "path label" list (read_list); names = classes, or None
    classes (a list of names, e.g. the training set's) fixes the label ids by name: label k is classes[k]."""
    kind, split = dataset_format(path), int(split)
    if kind == "ucf101" and os.path.isdir(path):  # the folder: take the split's list
        path = os.path.join(path, f"{'train' if train else 'test'}list{split:02d}.txt")
    if kind == "kinetics":
        return _kinetics(path, root, classes)  # maps by name itself, to name the line of an unknown label
    if kind == "list":
        lines = _list_lines(path)
        for n, _, label in lines:
            if classes is not None and label >= len(classes):
                raise DataError(f"{path}:{n}: label {label} is no class id: {len(classes)} classes are given (ids "
                                f"0..{len(classes) - 1}); fix the line, or give the class file that goes with the list")
        samples = [(os.path.join(root, video), label) for _, video, label in lines]
        return samples, None if classes is None else list(classes)
    samples, names = (_ucf101(path, root) if kind == "ucf101" else _ssv2(path, root) if kind == "ssv2"
                      else _hmdb51(path, root, split, train))
    if classes is None:
        return samples, names
    ids = {name: i for i, name in enumerate(classes)}
    unknown = sorted({names[label] for _, label in samples} - set(ids))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} of its classes are not among the {len(classes)} given, e.g. "
                         f"{unknown[0]!r}; give classes that include them, or none")
    return [(video, ids[names[label]]) for video, label in samples], list(classes)


def check_videos(path, root, samples):
    """Refuse samples of the annotation file `path` whose video is not on disk, naming the first one's line."""
    missing = [video for video, _ in samples if not os.path.isfile(video)]
    if not missing:
        return
    where = path + (next(f":{n}" for n, video, _ in _list_lines(path) if os.path.join(root, video) == missing[0])
                    if dataset_format(path) == "list" else "")
    raise DataError(f"{where}: no video at {missing[0]} ({len(missing)} of the {len(samples)} listed are missing); "
                    f"check the root folder ({root or '.'}: --data-root, --val-root) or the list")


def read_captions(path, root=""):
    """A retrieval test set -> (videos [path], captions [(text, its video's index)]), in the file's order: MSR-VTT's
    1k-A csv (key,vid_key,video_id,sentence; root/video<N>.mp4 or .webm: CLIP4Clip's dataloader_msrvtt_retrieval.py),
    MSVD's test_list.txt with raw-captions.pkl beside it (id -> tokenised captions; the one video <id>.* under root:
    its dataloader_msvd_retrieval.py), or "path<TAB>caption" lines."""
    pairs, raw = [], os.path.join(os.path.dirname(path), "raw-captions.pkl")   # (where, video, caption)
    if path.lower().endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not {"video_id", "sentence"} <= set(reader.fieldnames or ()):
                raise _csv_error(path, reader.fieldnames)
            pairs = [(f"{path}:{reader.line_num}", (row["video_id"] or "").strip(), (row["sentence"] or "").strip())
                     for row in reader]
        pairs = [(where, _existing(*(os.path.join(root, f"{vid}.{ext}") for ext in ("mp4", "webm"))), caption)
                 for where, vid, caption in pairs]
    elif os.path.isfile(raw):
        captions, found = _plain_pickle(raw), _files_by_stem(root)
        for n, vid in _lines(path):
            if not isinstance(captions, dict) or not isinstance(captions.get(vid), list):
                raise DataError(f"{path}:{n}: raw-captions.pkl beside it holds no list of captions for {vid!r}")
            videos = found.get(vid, [])
            if len(videos) > 1:
                raise DataError(f"{path}:{n}: two videos for {vid!r} under {root or '.'}: {videos[0]} and "
                                f"{videos[1]}; keep one")
            video = videos[0] if videos else os.path.join(root, f"{vid}.*")   # none: the error below names it
            pairs += [(f"{path}:{n}", video, " ".join(c) if isinstance(c, list) else c) for c in captions[vid]]
    else:
        for n, line in _lines(path, strip=lambda line: line.rstrip("\r\n")):
            video, tab, caption = line.partition("\t")
            if not tab:
                raise DataError(f"{path}:{n}: expected 'path<TAB>caption', got {line!r}; fix or remove the line")
            pairs.append((f"{path}:{n}", os.path.join(root, video.strip()), caption.strip()))
    videos, captions = {}, []
    for where, video, caption in pairs:
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: an empty caption; write one, or remove the line")
        if not os.path.isfile(video):
            raise DataError(f"{where}: no video at {video}; check the root folder ({root or '.'}: --val-root) or the "
                            f"file")
        captions.append((caption.strip(), videos.setdefault(video, len(videos))))
    if not captions:
        raise DataError(f"{path}: holds no captions")
    return list(videos), captions


def read_test_videos(path, root="", split=1):
    """Any test list (--embed) -> ([(video path, label)], each video's captions or None): read_dataset's videos, or
    a captions file's, each once with label 0 and the list of its captions."""
    kind, captions = dataset_format(path), False
    if kind == "kinetics":   # a CSV: Kinetics' video list, or MSR-VTT's captions
        with open(path, encoding="utf-8-sig", newline="") as f:
            captions = {"video_id", "sentence"} <= set(next(csv.reader(f), ()))
    elif kind == "list":   # MSVD's ids with raw-captions.pkl beside them, or "path<TAB>caption" (not a class id)
        first = next(iter(_lines(path)), (0, ""))[1]
        captions = os.path.isfile(os.path.join(os.path.dirname(path), "raw-captions.pkl")) or (
            "\t" in first and not first.rsplit("\t", 1)[1].strip().isdecimal())
    if captions:
        videos, pairs = read_captions(path, root)
        said = [[] for _ in videos]
        for text, video in pairs:
            said[video].append(text)
        return [(video, 0) for video in videos], said
    samples, _ = read_dataset(path, root, split=split, train=False)
    check_videos(path, root, samples)
    return samples, None


def _plain_pickle(path):
    """A pickle loaded refusing every class and function: captions load, no code runs (PyTorch's safe loader does
    not read the pickle protocol of MSVD's raw-captions.pkl)."""
    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"{module}.{name}")
    try:
        with open(path, "rb") as f:
            return Plain(f).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not loaded, because reading it would run code (it names {e}), which a file of "
                        f"captions never needs; save its captions as plain lists of strings") from None
    except (EOFError, ValueError, IndexError) as e:
        raise DataError(f"{path}: not a whole pickle ({e}); take another copy") from None


def camel_words(name):
    """"ApplyEyeMakeup" -> "Apply Eye Makeup": UCF101's names as Open-VCLIP feeds them to the text encoder (its
    name file also rewrites "Yo Yo" as "Yoyo"; X-CLIP and ViFi-CLIP keep CamelCase). Names with spaces stay."""
    camel = r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])"  # between "aB" and before the B of "ABc"
    return name if " " in name else re.sub(camel, " ", name)


# ---- the protocols: which videos and classes each trains and tests on -----------------------------------------------
def few_shot(samples, shots, seed):
    """`shots` videos of every class 0..C-1, drawn by random.Random(seed) from its videos sorted by path."""
    by_class, rng, picked = {}, random.Random(seed), []
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    for c in range(max(by_class, default=-1) + 1):
        paths = sorted(by_class.get(c, []))
        if len(paths) < shots:
            raise ValueError(f"few_shot: class {c} has {len(paths)} videos, fewer than shots={shots}; lower shots "
                             f"or drop the class with select_classes")
        picked += [(path, c) for path in sorted(rng.sample(paths, shots))]
    return picked


def base_novel(samples, num_classes):
    """ViFi-CLIP's base-to-novel split -> (base ids, novel ids), sorted. Base: the ceil(C/2) classes with the most
    training videos, ties to the later id (HMDB51, 70 in every class, gets 25..50, as the official split files)."""
    counts = [0] * num_classes
    for _, label in samples:
        if not 0 <= label < num_classes:
            raise ValueError(f"base_novel: label {label} is outside 0..{num_classes - 1}; check num_classes")
        counts[label] += 1
    order = sorted(range(num_classes), key=lambda c: (counts[c], c))  # fewest videos first
    return sorted(order[num_classes // 2:]), sorted(order[:num_classes // 2])


def select_classes(samples, class_ids):
    """The samples of the classes class_ids, relabelled by position: class_ids[k] becomes k."""
    position = {c: k for k, c in enumerate(class_ids)}
    if len(position) != len(class_ids):
        raise ValueError(f"select_classes: class_ids repeats an id: {list(class_ids)}")
    return [(path, position[label]) for path, label in samples if label in position]


def protocol_data(args, seed, trained_names=None):
    """The training videos, their class names, and the test sets [(title, samples, names)] of a run's protocol,
    from train.py's flags `args`. Names are the datasets' own; --class-words turns them to words last."""
    train_list = args.train_list and args.train_list.replace("{seed}", str(seed))   # a released file per seed
    if train_list:
        train, names = read_videos(train_list, args.data_root, (args.split or [1])[0], True, args.classes)
    else:   # testing released weights: the class names come from --classes (or our checkpoint)
        train, names = None, trained_names or (load_classes(args.classes) if args.classes and os.path.isfile(
            args.classes) else None)
    if args.protocol == "base2novel":
        if names is None or not (train or args.base_classes):
            raise DataError("--protocol base2novel without --train-list needs the classes (--classes) and the base "
                            "classes (--base-classes)")
        base = (class_ids(load_classes(args.base_classes), names, args.base_classes) if args.base_classes
                else base_novel(train, len(names))[0])
        if args.base_classes and train and dataset_format(train_list) == "list" and max(c for _, c in train) < len(
                base):   # ViFi-CLIP's released lists count 0..B-1 in the base file
            train = [(path, base[c]) for path, c in train]
        novel = [c for c in range(len(names)) if c not in base]
        train = train and select_classes(train, base)
    if args.shots and train is not None:
        train = few_shot(train, args.shots, seed)
    elif train and args.protocol in ("few-shot", "base2novel"):
        counts = [sum(1 for _, c in train if c == k) for k in sorted({c for _, c in train})]
        print(f"{train_list}: the shots as listed (no --shots, no draw), {min(counts)} to {max(counts)} videos per "
              f"class")
    if not args.val_list:
        raise DataError("give the test videos with --val-list (any format --train-list takes)")
    text = camel_words if args.class_words else (lambda n: n)
    if args.protocol == "retrieval":   # the test: videos and their captions
        videos, captions = read_captions(args.val_list, args.val_root or args.data_root)
        return train, [text(n) for n in names or []], [("retrieval", [(v, 0) for v in videos], captions)]
    fmt, tests = dataset_format(args.val_list), []
    has_splits = fmt in ("ucf101", "hmdb51")
    splits = args.split or ([1, 2, 3] if args.protocol == "zero-shot" and has_splits else [1])
    for split in splits if has_splits else splits[:1]:
        given = (args.val_classes or args.classes) if fmt == "list" else None   # zero-shot tests on its own classes
        samples, val_names = read_videos(args.val_list, args.val_root or args.data_root, split, False,
                                         given if args.protocol == "zero-shot" else names)
        tag = f"split {split}" if len(splits) > 1 else "test"
        if args.protocol == "base2novel":   # each half scored with a classifier over its own classes only
            groups = [(f"{tag} base", base), (f"{tag} novel", novel)]
        else:   # every test class, or those training never saw (--unseen-only), or --class-subsets of them
            keep = [c for c in range(len(val_names)) if not (args.unseen_only and val_names[c] in (names or []))]
            groups = [(tag, keep)]
            if args.class_subsets and re.fullmatch(r"\d+x\d+", args.class_subsets[0]):
                n, size = map(int, args.class_subsets[0].split("x"))
                rng = random.Random(args.seed)   # the same subsets for every method and run
                groups = [(f"{tag} subset {k + 1}", sorted(rng.sample(keep, size))) for k in range(n)]
            elif args.class_subsets:
                groups = [(f"{tag} {os.path.basename(f)}", class_ids(load_classes(f), val_names, f))
                          for f in args.class_subsets]
        tests += [(title, select_classes(samples, ids), [val_names[c] for c in ids]) for title, ids in groups]
    if args.protocol == "base2novel":
        names = [names[c] for c in base]
    return train, [text(n) for n in names or []], [(t, s, [text(n) for n in ns]) for t, s, ns in tests]


def read_videos(path, root, split, train, names=None):
    """(samples, names) of one side of a dataset (read_dataset); `names`: a list of names or a class file."""
    names = load_classes(names) if isinstance(names, str) else names
    samples, names = read_dataset(path, root, split=split, train=train, classes=names)
    check_videos(path, root, samples)
    if names is None:
        raise DataError(f"{path} is a plain list: give its class names with --classes (--val-classes for a test "
                        f"list with other classes)")
    return samples, names


def class_ids(wanted, names, source):
    missing = [n for n in wanted if n not in names]
    if missing:
        raise DataError(f"{source}: {len(missing)} classes are not classes of the data, e.g. {missing[0]!r}")
    return [names.index(n) for n in wanted]


# ---- the loader: training order (each process its shard), and the videos that could not be decoded ---------------
class EpochSampler(torch.utils.data.Sampler):
    """The training order, keys epoch * n + i: a permutation drawn from (seed, epoch) alone, so a resumed run can
    start part way (`start`). Process `rank` of `world` takes every world-th, n // world, as DistributedSampler."""

    def __init__(self, n, seed, rank=0, world=1):
        self.n, self.seed, self.rank, self.world, self.epoch, self.start = n, seed, rank, world, 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        shard = order[self.rank::self.world][:self.n // self.world]      # (n // world,) this process's videos
        return iter((self.epoch * self.n + shard[self.start:]).tolist())

    def __len__(self):
        return self.n // self.world - self.start


class Skipped(tuple):
    """(path, reason) of a video VideoDataset(skip_bad=True) could not decode."""


class Batch(tuple):
    """A collated batch (video, label[, index]; empty if no video decoded) with .skipped: [(path, reason)]."""
    def __new__(cls, items, skipped=()):
        batch = super().__new__(cls, items)
        batch.skipped = list(skipped)
        return batch

    def __reduce__(self):   # DataLoader workers pickle the batch: keep .skipped
        return Batch, (tuple(self), self.skipped)


def collate(items):
    """The DataLoader's collate_fn: default_collate over the videos that decoded, the others in .skipped."""
    kept = [item for item in items if not isinstance(item, Skipped)]
    return Batch(torch.utils.data.default_collate(kept) if kept else (),
                 [tuple(item) for item in items if isinstance(item, Skipped)])


class SkipLog:
    """The videos --skip-bad-videos left out: each one is written to the run's skipped.txt and counted."""

    def __init__(self, folder):
        self.path, self.count = os.path.join(folder, "skipped.txt"), 0

    def add(self, batch, where):
        for path, reason in getattr(batch, "skipped", ()):
            self.count += 1
            with open(self.path, "a") as f:
                f.write(f"{where}\t{path}\t{reason}\n")


def batches(loader, skips, where, waited=None, keep_empty=False):
    """The loader's batches that hold videos (keep_empty: all), skipped videos logged to `skips`; workers silent for
    the loader's timeout stop the run in one line. waited[0] adds up the seconds spent waiting for batches."""
    it = iter(loader)
    while True:
        try:
            tic = time.perf_counter()
            batch = next(it)
            if waited is not None:
                waited[0] += time.perf_counter() - tic
        except StopIteration:
            return
        except RuntimeError as e:
            if "timed out" not in str(e):
                raise
            raise DataError(f"{where}: no batch from the decoding workers in {loader.timeout:.0f} s, so one of them is "
                            f"stuck (on a video that hangs the decoder?); rerun with --workers 0 to see which video, "
                            f"or raise --loader-timeout") from None
        if skips is not None:
            skips.add(batch, where)
        if len(batch) or keep_empty:
            yield batch


# ---- the decoder's fall-backs: what _Reader checks so that the fast path gives a full decode's frames, or none ------
def _key_frames(stream, ticks):
    """The key frames' numbers from the container's index (mp4 has one), counted from the first entry: entries carry
    decoding timestamps, a fixed delay behind the frames' own. A wrong guess costs only time."""
    entries = stream.index_entries
    return [round((e.timestamp - entries[0].timestamp) / ticks) for e in entries if e.is_keyframe]


def _packets(reader):
    """container.decode(stream), with H.264 packets of frames not wanted sent to be skipped (skip_frame NONREF, per
    packet, from its timestamp): most are B-frames no frame refers to (in HEVC a higher temporal layer may)."""
    for packet in reader.container.demux(reader.stream):
        if reader.skip:
            number = None if packet.pts is None else round((packet.pts - reader.start) / reader.ticks)
            unwanted = number is not None and number not in reader.wants
            reader.stream.codec_context.skip_frame = "NONREF" if unwanted else "DEFAULT"
            if unwanted and packet.pts in reader.skippable:   # two packets with one timestamp
                raise _Skipped
            if unwanted:
                reader.skippable[packet.pts] = number
        yield from packet.decode()


def _frame_number(reader, frame, k):
    """The number of the frame just decoded on the way to frame k, or the fall-back that must take over."""
    if frame is None and reader.by_timestamp:  # fewer timestamps than frames (variable frame rate)
        raise _Skipped if reader.skippable else _BadTimestamps   # (a skipped frame might have been taken)
    if frame is None:
        raise VideoError(f"{reader.path}: frame {k} was asked for but only frames 0..{reader.current} decode, "
                         f"although the container reports {reader.stream.frames}; {_FIX}")
    if reader.by_timestamp and frame.pts is None:
        raise _BadTimestamps
    number = round((frame.pts - reader.start) / reader.ticks) if reader.by_timestamp else reader.current + 1
    _check_skipped(reader, frame, number, k)
    if reader.seeked_from is not None:  # the first frame after a seek: the keyframe we landed on
        if number > k:
            raise _BadTimestamps
        # landing at or before where we were: key frames lie further apart than our gaps, so seek no more
        reader.seeking, reader.seeked_from = number > reader.seeked_from, None
    elif number <= reader.current:  # out of order: H.264 with B-frames in AVI, variable frame rate
        raise _BadTimestamps
    return number


def _check_skipped(reader, frame, number, k):
    """Raise _Skipped if frames skipped before this one would not have passed in order in a full decode."""
    if not reader.skippable:
        return
    skipped = sorted((pts, n) for pts, n in reader.skippable.items() if pts <= frame.pts)
    for pts, _ in skipped:
        del reader.skippable[pts]
    skipped = [n for pts, n in skipped if pts != frame.pts]
    if skipped and (reader.seeked_from is not None or skipped[-1] >= min(k, number) or any(
            a >= b for a, b in zip([reader.current] + skipped, skipped))):
        raise _Skipped


def _note_damage(reader, frame, number):
    """FFmpeg conceals broken packets: a frame it marks corrupt, or an error it logs (a few frames early, B-frames
    being reordered), marks every frame from there to the next clean key frame as damaged."""
    errors = [message.strip() for level, _, message in reader.logs[reader.reported:] if level <= av.logging.ERROR]
    reader.reported = len(reader.logs)
    if errors or frame.is_corrupt:
        reader.damage = reader.damage or (number, errors[0] if errors else "a frame the decoder marks corrupt")
    elif frame.key_frame:
        reader.damage = None   # a clean key frame: what follows no longer depends on the damage


def _refuse_damage(reader, k):
    """Damage reported near frame k: after a seek, decode again from the start (_SeekDamage); else refused."""
    if reader.damage and reader.seeked:
        raise _SeekDamage
    if reader.damage:   # the report comes as the frames before the broken one leave the decoder: it is near
        raise VideoError(f"{reader.path}: frame {k} may be damaged: near frame {reader.damage[0]} the decoder reports "
                         f"'{reader.damage[1]}' and conceals it until the next clean key frame; {_FIX}")


class _BadTimestamps(Exception):
    """A video's timestamps cannot place its frames: missing, not increasing, a seek that overshoots."""


class _SeekDamage(Exception):
    """Trouble after a seek, which valid video can cause (frames after an open-GOP I-frame or an intra-refresh
    point refer to frames before it): decode again from the start, where only real damage is reported."""


class _Skipped(Exception):
    """A skipped frame might have changed what a full decode returns: decode again without skipping."""


# FFmpeg reports damage it conceals only in its log, which PyAV forwards from this level on (_decode captures it),
# every message, even one repeating the last, and not to Python's logging (FFmpeg's lines beside our error).
if av.logging.get_level() is None or av.logging.get_level() < av.logging.ERROR:
    av.logging.set_level(av.logging.ERROR)
av.logging.set_skip_repeated(False)
logging.getLogger("libav").addHandler(logging.NullHandler())
logging.getLogger("libav").propagate = False


# ---- the synthetic set (see the module docstring for why twins) -----------------------------------------------------
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("moving left", "moving right", "growing", "shrinking")
_REVERSED = dict(zip(MOTIONS, ("moving right", "moving left", "shrinking", "growing")))
_PALETTE = np.array([(235, 40, 40), (40, 210, 60), (60, 100, 255), (240, 220, 40), (225, 50, 225),
                     (40, 220, 230), (255, 140, 20), (240, 240, 240)], dtype=np.float32)
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")  # the names of _PALETTE
_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
# zero-shot: train on the other 8 classes, test on these 4 (each shape and motion seen, never together; 2 twin pairs)
UNSEEN = ("circle growing", "circle shrinking", "triangle moving left", "triangle moving right")


def synthetic_classes():
    return [f"{shape} {motion}" for shape in SHAPES for motion in MOTIONS]


def temporal_twins(names):
    """For each name, the index of its time-reversed twin in `names` (same shape, opposite motion), else -1."""
    position = {name: i for i, name in enumerate(names)}
    motions = [next((m for m in MOTIONS if name.endswith(m)), None) for name in names]
    return [position.get(name[:len(name) - len(m)] + _REVERSED[m], -1) if m else -1 for name, m in zip(names, motions)]


def render_clip(shape, motion, rng, T=24, size=64, colour=None):
    """One shape in _PALETTE[colour] (default: drawn) moving or changing size on a static dark textured background
    -> uint8 (T,size,size,3). Reversed, any clip is a clip of its twin class, with the same probability."""
    t = np.linspace(0, 1, T)[:, None, None]  # (T,1,1) time from 0 to 1
    if motion in ("moving left", "moving right"):
        radius, travel = size * rng.uniform(0.13, 0.18), size * rng.uniform(0.4, 0.5)  # the shape spans 26-36%
        x0 = rng.uniform(radius, size - radius - travel)  # the span [x0, x0+travel] is drawn alike for both ways
        cx, cy = x0 + travel * (t if motion == "moving right" else 1 - t), rng.uniform(radius, size - radius)
    elif motion in ("growing", "shrinking"):
        small, big = size * rng.uniform(0.13, 0.17), size * rng.uniform(0.36, 0.40)
        radius = small + (big - small) * (t if motion == "growing" else 1 - t)
        cx, cy = rng.uniform(big, size - big, 2)
    else:
        raise ValueError(f"render_clip: motion must be one of {MOTIONS}, got {motion!r}")
    mask = _draw(shape, cx, cy, radius, size)  # (T,size,size)
    background = rng.uniform(10, 60, 3) + rng.normal(0, 6, (size, size, 3))  # (size,size,3), same in every frame
    colour = _PALETTE[rng.integers(len(_PALETTE)) if colour is None else colour]
    return np.where(mask[..., None], colour, background).clip(0, 255).astype(np.uint8)  # (T,size,size,3)


def _draw(shape, cx, cy, radius, size):
    """The pixels covered by a shape of centre (cx, cy) and radius: scalars, or (T,1,1) arrays for T frames."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, (size,size) each
    dx, dy = xx - cx, yy - cy  # each broadcasts with radius to (T,size,size)
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= radius ** 2
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= radius * np.sqrt(np.pi) / 2  # same area as the circle
    if shape == "triangle":  # apex up: symmetric left-right, so no frame hints at the direction
        return (abs(dy) <= radius) & (abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"render_clip: shape must be one of {SHAPES}, got {shape!r}")


def synthetic_stills(n, seed, size=64):
    """n still images like the synthetic videos' frames, with captions -> uint8 (n,size,size,3), [str]: the stand-in
    for CLIP's web images (common.synthetic_clip), "a photo of a small red circle on the left.", never motion."""
    rng = np.random.default_rng(seed)
    shape, colour, big = rng.integers(len(SHAPES), size=n), rng.integers(len(_PALETTE), size=n), rng.random(n) < 0.5
    radius = size * np.where(big, rng.uniform(0.28, 0.40, n), rng.uniform(0.13, 0.20, n))  # the videos' range
    cx, cy = rng.uniform(radius, size - radius, (2, n))
    r, x, y = (a[:, None, None] for a in (radius, cx, cy))  # (n,1,1) each
    mask = np.empty((n, size, size), dtype=bool)
    for k, name in enumerate(SHAPES):  # each image's own shape only
        mask[shape == k] = _draw(name, x[shape == k], y[shape == k], r[shape == k], size)  # (n_k,size,size)
    background = rng.uniform(10, 60, (n, 1, 1, 3)) + rng.normal(0, 6, (n, size, size, 3))  # (n,size,size,3)
    images = np.where(mask[..., None], _PALETTE[colour][:, None, None], background).clip(0, 255).astype(np.uint8)
    say = (rng.random((n, 3)) < (0.4, 0.8, 0.4)).tolist()  # mention the size, the colour, the place?
    templates, captions = ("a {}", "a photo of a {}.", "{}", "a {} on a dark background"), []
    for i, t in enumerate(rng.integers(len(templates), size=n)):
        place = "on the left" if cx[i] < size / 3 else "on the right" if cx[i] > 2 * size / 3 else "in the middle"
        words = [("big" if big[i] else "small")] * say[i][0] + [COLOURS[colour[i]]] * say[i][1] + \
            [SHAPES[shape[i]]] + [place] * say[i][2]
        captions.append(templates[t].format(" ".join(words)))
    return images, captions


def write_video(path, frames, fps=8, keyint=8, options=None):
    """Encode uint8 (T,H,W,3) RGB frames (H, W even) to an mp4, H.264 if PyAV's ffmpeg has libx264, a key frame every
    `keyint` frames; options default to a constant quantiser, whose bytes never change (x264's crf varies per call)."""
    frames = np.asarray(frames, dtype=np.uint8)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_video({path}): frames are {width}x{height}; yuv420p needs even sides, crop or pad")
    with av.open(str(path), "w") as container:
        options = (options or {"qp": "20", "preset": "veryfast"}) if _CODEC == "libx264" else {}
        stream = container.add_stream(_CODEC, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyint
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def reencode(src, dst, short_side=256, keyint=16):
    """Re-encode one video for fast training reads: the short side brought to `short_side` (the official pipelines
    read Kinetics at 340x256 or 320) and a key frame every `keyint` frames, so that read_frames seeks close to every
    frame it wants. Frames as read_frames shows them, by x264 at crf 23 (faster to decode than qp), once:
        for path, _ in data.read_list("train.txt"): data.reencode(f"videos/{path}", f"fast/{path}")"""
    frames = read_frames(src, range(video_length(src))).permute(0, 3, 1, 2)   # (T,3,H,W) uint8
    height, width = frames.shape[-2:]
    scale = short_side / min(height, width)
    size = [2 * round(height * scale / 2), 2 * round(width * scale / 2)]      # even sides for yuv420p
    frames = F.resize(frames, size, antialias=True).permute(0, 2, 3, 1)       # (T,H',W',3)
    with _open(src) as container:
        fps = container.streams.video[0].average_rate or 30
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    write_video(dst, frames.numpy(), fps=fps, keyint=keyint, options={"crf": "23", "preset": "veryfast"})


def _done(root):
    """The parameters a finished make_synthetic left in root/DONE, or None."""
    done = os.path.join(root, "DONE")
    return _json(done) if os.path.isfile(done) else None


def make_synthetic(root, seed=0, train_per_class=40, val_per_class=35, T=24, size=64):
    """Write the synthetic set: root/videos/<split>_<class>_<n>.mp4, root/{train,val}.txt, root/classes.csv, and the
    zero-shot protocol's seen_train.txt with seen.csv (the classes not in UNSEEN), unseen_val.txt with unseen.csv.
    Deterministic from the arguments, and reused once finished; 420 test videos: an accuracy's s.e. below 2.5."""
    root = os.path.abspath(root)
    splits, names = {"train": train_per_class, "val": val_per_class}, synthetic_classes()
    params = dict(seed=seed, train_per_class=train_per_class, val_per_class=val_per_class, T=T, size=size,
                  codec=_CODEC, version=4)
    paths = dict(root=root, **{name: os.path.join(root, f"{name}.{'txt' if '_' in name or name in splits else 'csv'}")
                               for name in ("train", "val", "classes", "seen_train", "unseen_val", "seen", "unseen")})
    if _done(root) == params:
        return paths
    if os.path.exists(root) and _done(root) is None and os.listdir(root):
        raise FileExistsError(f"make_synthetic: {root} exists but was not written by make_synthetic (no DONE "
                              f"file); remove it or choose another root")
    print(f"generating the embedded synthetic set in {os.path.relpath(root)}, once: "
          f"{12 * (train_per_class + val_per_class)} videos", flush=True)
    tmp = f"{root}.tmp-{os.getpid()}"   # renamed to root at the end: an interrupted run never looks finished
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "videos"))
    jobs = [(split, c, n) for split in splits for c in range(len(names)) for n in range(splits[split])]
    for split, c, n in jobs:
        rng = np.random.default_rng([seed, list(splits).index(split), c, n])  # one stream per video: any order
        shape, motion = names[c].split(" ", 1)
        write_video(os.path.join(tmp, f"videos/{split}_{c}_{n}.mp4"), render_clip(shape, motion, rng, T, size))
    files = {f"{split}.txt": "".join(f"videos/{s}_{c}_{n}.mp4 {c}\n" for s, c, n in jobs if s == split)
             for split in splits}
    groups = dict(seen=[c for c, n in enumerate(names) if n not in UNSEEN], unseen=[names.index(n) for n in UNSEEN])
    for group, split in (("seen", "train"), ("unseen", "val")):   # labels renumbered within the group
        files[f"{group}_{split}.txt"] = "".join(f"videos/{s}_{c}_{n}.mp4 {groups[group].index(c)}\n"
                                                for s, c, n in jobs if s == split and c in groups[group])
    for group, ids in dict(classes=range(len(names)), **groups).items():
        files[f"{group}.csv"] = "id,name\n" + "".join(f"{i},{names[c]}\n" for i, c in enumerate(ids))
    files["DONE"] = json.dumps(params)  # written last, though only the rename below makes the set visible
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    if _done(root) == params:  # another process finished the same set meanwhile
        shutil.rmtree(tmp)
        return paths
    shutil.rmtree(root, ignore_errors=True)  # an older synthetic set (it has a DONE file), or an empty folder
    os.rename(tmp, root)
    return paths


def make_retrieval_set(root, seed=0, T=24, size=64):
    """The retrieval test set beside a synthetic set -> the path of root/retrieval.txt ("path<TAB>a red circle moving
    left"), one video of each colour, shape and motion (96), made once (the list, written last, marks it whole)."""
    path = os.path.join(root, "retrieval.txt")
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    lines, kinds = [], [(s, m, c) for s in SHAPES for m in MOTIONS for c in range(len(COLOURS))]
    for i, (shape, motion, colour) in enumerate(kinds):
        rng = np.random.default_rng([seed, 2, i])   # one stream per video, apart from the classes' (0 and 1)
        write_video(os.path.join(root, f"videos/retrieval_{i}.mp4"), render_clip(shape, motion, rng, T, size, colour))
        lines.append(f"videos/retrieval_{i}.mp4\ta {COLOURS[colour]} {shape} {motion}\n")
    with open(f"{path}.tmp-{os.getpid()}", "w") as f:
        f.writelines(lines)
    os.replace(f"{path}.tmp-{os.getpid()}", path)
    return path
