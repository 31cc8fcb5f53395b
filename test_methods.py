"""Compact tests: every method on a tiny CLIP (no downloads), the shared pieces, the data, one CLI run.

    python -m pytest -q
"""
import importlib
import contextlib
import json
import os
import pickle
import random
import sys
import time
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common
import data
import omniclip
import openvclip
import train
import xclip

METHODS = ["vificlip", "xclip", "openvclip", "omniclip"]
B, T, C = 2, 4, 5
NAMES = [f"class number {i}" for i in range(C)]


@pytest.fixture(scope="module")
def tiny_clip_state():
    torch.manual_seed(0)
    return common.load_clip("tiny").state_dict()


def tiny_clip(state):
    clip = common.load_clip("tiny")
    clip.load_state_dict(state)
    return clip


def build(name, state, **kwargs):
    method = importlib.import_module(name)
    kwargs = {"frames": T, **kwargs}   # X-CLIP's temporal position embedding fixes the frame count
    args, _ = train.get_args(["--method", name] + [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()])
    torch.manual_seed(0)
    model = method.build(tiny_clip(state), args)
    model.set_classes(NAMES)
    return model


def video(seed=0, batch=B, frames=T):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# common.py
# ---------------------------------------------------------------------------------------------------------

def test_pieces_equal_open_clip_encoders(tiny_clip_state):
    clip = tiny_clip(tiny_clip_state).eval()
    x = torch.randn(3, 3, 32, 32)
    tokens = common.tokenize(clip, ["a photo of a circle moving left.", "square"])
    with torch.no_grad():
        torch.testing.assert_close(common.encode_frames(clip.visual, x), clip.encode_image(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(common.encode_text(clip, tokens), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_attention_with_separate_keys_matches_torch():
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    q, kv = torch.randn(2, 7, 64), torch.randn(2, 11, 64)
    torch.testing.assert_close(common.attention(mha, q, kv), mha(q, kv, kv, need_weights=False)[0])


def test_offline_pretrained_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(common, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(common, "_cached_file", lambda cfg, cache_dir=None: None)
    start = time.time()
    with pytest.raises(RuntimeError, match="--pretrained /path/to/weights"):
        common.load_clip("ViT-B-16", "openai")
    assert time.time() - start < 5


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="openai"):
        common.load_clip("ViT-B-16", "no-such-tag")


# ---------------------------------------------------------------------------------------------------------
# Every method: shapes, gradient flow
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_forward_shape_and_finite(name, tiny_clip_state):
    model = build(name, tiny_clip_state).eval()
    with torch.no_grad():
        logits = model(video())
    assert logits.shape == (B, C)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_exactly_the_trainable_parameters(name, tiny_clip_state):
    model = build(name, tiny_clip_state).train()
    with torch.no_grad():   # a zero-initialised output layer (OmniCLIP's adapters) passes no gradient upstream
        for p in model.parameters():   # at step 0: give such tensors the small values one step would
            if p.requires_grad and not p.any():
                p.normal_(0, 0.02)
    logits = model(video())
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"trainable {n} got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    groups = model.param_groups(1e-3, 0.01)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name", METHODS)
def test_set_classes_changes_the_class_count(name, tiny_clip_state):
    model = build(name, tiny_clip_state).eval()
    model.set_classes(["a", "b"])
    with torch.no_grad():
        assert model(video()).shape == (B, 2)


# ---------------------------------------------------------------------------------------------------------
# ViFi-CLIP
# ---------------------------------------------------------------------------------------------------------

def test_vificlip_is_blind_to_frame_order(tiny_clip_state):
    model = build("vificlip", tiny_clip_state).eval()
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, torch.randperm(T)]), atol=1e-5, rtol=1e-5)


def test_vificlip_is_clip_on_the_mean_frame_embedding(tiny_clip_state):
    model = build("vificlip", tiny_clip_state).eval()
    clip = model.clip
    x = video()
    with torch.no_grad():
        v = clip.encode_image(x.flatten(0, 1)).view(B, T, -1).mean(1)
        t = clip.encode_text(common.tokenize(clip, [f"a photo of a {n}." for n in NAMES]))
        expected = clip.logit_scale.exp() * torch.nn.functional.normalize(v, dim=-1) @ \
            torch.nn.functional.normalize(t, dim=-1).t()
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tune,trained,frozen", [
    ("both", ["clip.visual.", "clip.transformer.", "clip.logit_scale"], ["clip.token_embedding"]),
    ("image", ["clip.visual."], ["clip.transformer.", "clip.logit_scale", "clip.token_embedding"]),
    ("text", ["clip.transformer.", "clip.text_projection"], ["clip.visual.", "clip.logit_scale"]),
])
def test_vificlip_tune_switches(tiny_clip_state, tune, trained, frozen):
    model = build("vificlip", tiny_clip_state, tune=tune)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    for prefix in trained:
        assert all(v for n, v in grads.items() if n.startswith(prefix)), prefix
    for prefix in frozen:
        assert not any(v for n, v in grads.items() if n.startswith(prefix)), prefix


def test_vificlip_loads_an_official_checkpoint(tiny_clip_state, tmp_path, monkeypatch):
    import vificlip
    source = build("vificlip", tiny_clip_state)
    torch.nn.init.normal_(source.clip.visual.proj)   # make it differ from the fresh model below
    official = {}
    for k, v in source.state_dict().items():
        if k.startswith("clip.visual."):
            official["module.image_encoder." + k.removeprefix("clip.visual.")] = v
        elif k == "clip.logit_scale":
            official["module.logit_scale"] = v
        elif k != "clip.token_embedding.weight":
            official["module.text_encoder." + k.removeprefix("clip.")] = v
    official["module.prompt_learner.complete_text_embeddings"] = torch.zeros(C, 32, 64)
    path = tmp_path / "vifi.pth"
    # The real files also pickle a yacs CfgNode: save one from a stand-in module that is gone at load time.
    yacs = types.ModuleType("yacs.config")
    yacs.CfgNode = type("CfgNode", (dict,), {"__module__": "yacs.config"})
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", yacs)
    torch.save(dict(model=official, config=yacs.CfgNode(TRAIN={"LR": 2.2e-5}), epoch=9), path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    model = build("vificlip", tiny_clip_state)
    vificlip.load_official(model, str(path))
    model.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(video()), source(video()))
    del official["module.image_encoder.proj"]
    torch.save(dict(model=official), path)
    with pytest.raises(RuntimeError, match="missing"):
        vificlip.load_official(model, str(path))


# ---------------------------------------------------------------------------------------------------------
# data.py
# ---------------------------------------------------------------------------------------------------------

def test_written_video_decodes_with_the_shape_where_the_generator_put_it(tmp_path):
    frames = data.render_clip("square", "moving right", np.random.default_rng(0), T=24, size=64)
    path = str(tmp_path / "clip.mp4")
    data.write_video(path, frames)
    assert data.video_length(path) == 24
    wanted = [20, 0, 5, 5, 23]
    got = data.read_frames(path, wanted)
    assert got.shape == (5, 64, 64, 3) and got.dtype == torch.uint8
    assert np.abs(got.numpy().astype(float) - frames[wanted].astype(float)).mean() < 10
    # The object's horizontal centre: where the frame differs most from its own median colour (the background).
    def centre_x(f):
        diff = np.abs(f.astype(float) - np.median(f.reshape(-1, 3), axis=0)).sum(-1)
        cols = (diff > 100).sum(0)
        return (cols * np.arange(64)).sum() / cols.sum()
    xs = [centre_x(f) for f in got.numpy()]
    assert xs[1] < xs[2] < xs[0] < xs[4]                      # moving right: x grows with the frame index
    for f, i in zip(got.numpy(), wanted):
        assert abs(centre_x(f) - centre_x(frames[i])) < 1.5


def test_seeking_gives_the_frames_sequential_decoding_gives(tmp_path):
    frames = data.render_clip("circle", "growing", np.random.default_rng(1), T=120, size=64)
    path = str(tmp_path / "long.mp4")
    data.write_video(path, frames)
    sparse = data.read_frames(path, [3, 60, 110])              # gaps > SEEK_GAP: seeks
    dense = data.read_frames(path, list(range(120)))            # one sequential pass
    torch.testing.assert_close(sparse, dense[[3, 60, 110]])


def test_segment_and_dense_sampling():
    assert data.sample_indices(80, 8, "segment") == [5, 15, 25, 35, 45, 55, 65, 75]
    rng = random.Random(0)
    for _ in range(20):
        idx = data.sample_indices(80, 8, "segment", train=True, rng=rng)
        assert all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(idx))
    dense = data.sample_indices(300, 8, "dense", stride=16)
    assert np.all(np.diff(dense) == 16) and dense[0] == (300 - 113) // 2
    clips = [data.sample_indices(300, 8, "dense", stride=16, clip=k, num_clips=3) for k in range(3)]
    assert clips[0][0] == 0 and clips[2][-1] == 299 and len({c[0] for c in clips}) == 3


def test_short_videos_repeat_frames_in_order():
    idx = data.sample_indices(5, 8, "segment")
    assert len(idx) == 8 and idx == sorted(idx) and set(idx) == set(range(5))
    idx = data.sample_indices(20, 8, "dense", stride=16)            # span 113 > 20: stride shrinks
    assert len(idx) == 8 and max(idx) < 20 and idx == sorted(idx)
    assert data.sample_indices(3, 8, "dense", stride=4) == sorted(data.sample_indices(3, 8, "dense", stride=4))


def test_bad_inputs_name_the_file(tmp_path):
    bad_list = tmp_path / "train.txt"
    bad_list.write_text("a.mp4 0\nb.mp4 zero\n")
    with pytest.raises(ValueError, match=r"train.txt:2"):
        data.read_list(str(bad_list))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    with pytest.raises(data.VideoError, match="corrupt.mp4"):
        data.read_frames(str(corrupt), [0])
    with pytest.raises(data.VideoError, match="missing.mp4"):
        data.read_frames(str(tmp_path / "missing.mp4"), [0])


def test_temporal_twins_are_the_time_reversed_classes():
    names = data.synthetic_classes()
    twins = data.temporal_twins(names)
    assert names[twins[names.index("circle moving left")]] == "circle moving right"
    assert names[twins[names.index("triangle shrinking")]] == "triangle growing"
    assert all(twins[t] == i for i, t in enumerate(twins))
    assert data.temporal_twins(["dog", "circle growing"]) == [-1, -1]


def test_transforms_shapes():
    frames = torch.randint(0, 255, (6, 48, 64, 3), dtype=torch.uint8)
    x = data.TrainTransform(32, data.IMAGENET_MEAN, data.IMAGENET_STD)(frames)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert data.TestTransform(32, data.CLIP_MEAN, data.CLIP_STD, crops=3)(frames).shape == (3, 6, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------
# train.py
# ---------------------------------------------------------------------------------------------------------

def test_schedule_and_mixing():
    assert train.lr_factor(0, 10, 100, 0.01) == 0 and train.lr_factor(5, 10, 100, 0.01) == 0.5
    assert abs(train.lr_factor(100, 10, 100, 0.01) - 0.01) < 1e-9
    target = train.soft_targets(torch.tensor([0, 2]), 4, 0.1)
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    assert target[0, 0] == pytest.approx(0.925)
    x, y = train.mix(torch.randn(4, 2, 3, 8, 8), train.soft_targets(torch.arange(4), 4, 0.0), 0.8, 1.0, 0.5)
    torch.testing.assert_close(y.sum(1), torch.ones(4))


def test_cli_train_resume_eval_predict(tmp_path, capsys):
    paths = data.make_synthetic(str(tmp_path / "set"), train_per_class=2, val_per_class=1, T=12)
    out = str(tmp_path / "run")
    base = ["--method", "vificlip", "--train-list", paths["train"], "--val-list", paths["val"],
            "--data-root", paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4",
            "--batch-size", "4", "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "2", "--lr", "1e-3",
            "--out", out, "--test-clips", "2", "--test-crops", "1"]
    train.main(base + ["--epochs", "1"])
    first = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert first["epoch"] == 1 and not os.path.exists(os.path.join(out, "last.pt.tmp"))
    train.main(base + ["--epochs", "2", "--resume"])
    state = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 4
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [line.get("epoch") for line in lines if "epoch" in line] == [1, 2]
    assert lines[-1]["views"] == "2 clips x 1 crops" and "twins" in lines[-1]
    result = train.main(base + ["--eval-only", "--weights", os.path.join(out, "last.pt")])
    assert 0 <= result["test"][0]["top1"] <= 100
    capsys.readouterr()
    video_path = os.path.join(paths["root"], data.read_list(paths["val"])[0][0])
    train.main(["--method", "vificlip", "--weights", os.path.join(out, "last.pt"), "--predict", video_path])
    printed = capsys.readouterr().out
    assert printed.count("%") == 5 and any(w in printed for w in ("moving", "growing", "shrinking"))


# =========================================================================================================
# omniclip
# =========================================================================================================

def omniclip_omni(state, **kwargs):
    return build("omniclip", state, **{"frames": 8, **kwargs})   # built for 8 frames, fed T = 4


def omniclip_wake_up(model, seed=1):
    """Move every new parameter by N(0, 0.1^2), as training would. At initialisation the zero up-projections
    silence the branches and stop the gradient to everything upstream of them, and the small attention
    weights keep the temporal attention near uniform, which is blind to order to first order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and not n.startswith("clip."):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def omniclip_reverse(x):
    return x.flip(1)


# ---------------------------------------------------------------------------------------------------------
# Zero-initialised branches
# ---------------------------------------------------------------------------------------------------------



def test_omniclip_zero_init_branches_pass_no_gradient_upstream_at_step_zero(tiny_clip_state):
    """Why omniclip_wake_up exists: at initialisation only the up-projections and the scale embeddings learn."""
    model = omniclip_omni(tiny_clip_state).train()
    F.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
    assert model.pta["0"].up_proj.weight.grad.abs().sum() > 0
    assert model.spg["0"].scale_embedding.grad.abs().sum() > 0
    assert not model.pta["0"].down_proj.weight.grad.any()


# ---------------------------------------------------------------------------------------------------------
# What is trained
# ---------------------------------------------------------------------------------------------------------

def test_omniclip_only_new_modules_train_by_default(tiny_clip_state):
    model = omniclip_omni(tiny_clip_state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("clip.") for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"pta", "spg"}
    assert len(model.pta) == len(model.spg) == len(model.clip.visual.transformer.resblocks)


def test_omniclip_finetune_visual_trains_the_image_tower_only(tiny_clip_state):
    assert omniclip.RECIPE["new_lr_scale"] == 10 and omniclip.EMBEDDED["new_lr_scale"] == 3
    model = omniclip_omni(tiny_clip_state, finetune_visual="true", new_lr_scale=10)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(v for n, v in grads.items() if n.startswith("clip.visual."))
    assert not any(v for n, v in grads.items() if n.startswith("clip.") and not n.startswith("clip.visual."))
    groups = model.param_groups(1e-3, 0.01)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert lr["clip.visual.conv1.weight"] == pytest.approx(1e-3)
    assert lr["pta.0.down_proj.weight"] == pytest.approx(1e-2)          # X-CLIP's 10x for new modules
    assert wd["pta.0.down_proj.weight"] == 0.01 and wd["clip.visual.conv1.weight"] == 0.01
    for name in ("pta.0.down_proj.bias", "pta.0.temporal_embedding", "spg.0.scale_embedding",
                 "spg.0.norm.weight", "clip.visual.positional_embedding"):
        assert wd[name] == 0.0, name


def test_omniclip_training_changes_no_clip_weight(tiny_clip_state):
    model = omniclip_omni(tiny_clip_state).train()
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.05))
    for _ in range(2):
        F.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(before[k], v) for k, v in model.clip.state_dict().items())
    assert model.pta["0"].down_proj.weight.abs().sum() > 0 and model.pta["0"].up_proj.weight.any()


# ---------------------------------------------------------------------------------------------------------
# Start at CLIP; become order-aware; never mix videos
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position", ["parallel", "serial"])
def test_omniclip_without_spg_the_initial_model_is_frame_averaged_clip_exactly(tiny_clip_state, position):
    model = omniclip_omni(tiny_clip_state, use_spg="false", pta_position=position).eval()
    clip, x = model.clip, video()
    with torch.no_grad():
        tokens = common.tokenize(clip, [f"a photo of a {n}." for n in NAMES])
        v = common.encode_frames(clip.visual, x.flatten(0, 1)).view(B, T, -1).mean(1)
        expected = common.cosine_logits(v, common.encode_text(clip, tokens), clip.logit_scale)
        assert torch.equal(model(x), expected)                   # bit for bit: the PTA adds exact zeros
        v = clip.encode_image(x.flatten(0, 1)).view(B, T, -1).mean(1)
        torch.testing.assert_close(model(x), common.cosine_logits(v, clip.encode_text(tokens), clip.logit_scale),
                                   atol=1e-5, rtol=1e-5)


def test_omniclip_spg_changes_the_start_only_a_little_and_not_the_order_blindness(tiny_clip_state):
    plain = omniclip_omni(tiny_clip_state, use_spg="false").eval()
    model = omniclip_omni(tiny_clip_state).eval()
    x = video()
    with torch.no_grad():
        a, b = plain(x), model(x)
        assert not torch.allclose(a, b)                          # extra keys change the softmax
        assert (a - b).norm() < 0.2 * a.norm()
        torch.testing.assert_close(model(omniclip_reverse(x)), b, atol=1e-5, rtol=1e-5)   # prompts are per frame


@pytest.mark.parametrize("kwargs", [dict(use_spg="false"), dict(pta_position="serial")])
def test_omniclip_adapters_make_the_model_see_frame_order(tiny_clip_state, kwargs):
    model = omniclip_omni(tiny_clip_state, **kwargs).eval()
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(omniclip_reverse(x)), model(x), atol=1e-5, rtol=1e-5)
        omniclip_wake_up(model)
        assert (model(omniclip_reverse(x)) - model(x)).abs().max() > 1e-3


def test_omniclip_only_the_pta_mixes_frames(tiny_clip_state):
    x = video()
    y = x.clone()
    y[:, 2] += 1.0                                               # change frame 2 of every video
    for use_pta, mixes in (("false", False), ("true", True)):
        model = omniclip_wake_up(omniclip_omni(tiny_clip_state, use_pta=use_pta)).eval()
        with torch.no_grad():
            diff = (model.frame_features(x)[0] - model.frame_features(y)[0]).abs().amax(dim=(0, 2))   # (T,)
        assert diff[2] > 1e-3
        assert (diff[[0, 1, 3]] > 1e-4).all() if mixes else (diff[[0, 1, 3]] < 1e-5).all()


@pytest.mark.parametrize("kwargs", [{}, dict(pta_position="serial", video_prompts="true")])
def test_omniclip_the_videos_of_a_batch_never_mix(tiny_clip_state, kwargs):
    model = omniclip_wake_up(omniclip_omni(tiny_clip_state, **kwargs)).eval()
    x = video(batch=3)
    y = x.clone()
    y[1] = torch.randn_like(y[1])
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], atol=1e-5, rtol=1e-5)
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_omniclip_pta_attends_over_time_at_one_position_only():
    torch.manual_seed(0)
    pta = omniclip_wake_up(omniclip.TemporalAdapter(16, 8, frames=4))
    z = torch.randn(2 * 4, 5, 16)                                # (B*T, K, D), B = 2, T = 4, K = 5
    w = z.clone()
    w[1 * 4 + 2, 3] += 1.0                                       # video 1, frame 2, token 3
    with torch.no_grad():
        changed = (pta(z, 4) - pta(w, 4)).abs().amax(-1).view(2, 4, 5) > 1e-6   # (B, T, K)
    expected = torch.zeros(2, 4, 5, dtype=torch.bool)
    expected[1, :, 3] = True                                     # every frame of that video, that token only
    assert torch.equal(changed, expected)


# ---------------------------------------------------------------------------------------------------------
# The self-prompt generator, the options, the parameter count, the text cache
# ---------------------------------------------------------------------------------------------------------

def test_omniclip_spg_prompts_start_as_region_averages():
    torch.manual_seed(0)
    spg = omniclip.SelfPromptGenerator(16, 4, scales=(1, 2, 4))
    x = torch.randn(6, 1 + 16, 16)                               # (B*T, K, D), a 4x4 patch grid
    with torch.no_grad():
        s = spg(x)
    assert s.shape == (6, 1 + 4 + 16, 16)
    grid = x[:, 1:].view(6, 4, 4, 16)
    torch.testing.assert_close(s[:, 0], grid.mean((1, 2)))                       # the whole frame
    torch.testing.assert_close(s[:, 1], grid[:, :2, :2].mean((1, 2)))            # top-left quadrant
    torch.testing.assert_close(s[:, 5:], x[:, 1:])                               # 4x4 regions = the patches
    spg = omniclip.SelfPromptGenerator(16, 4, scales=(2,), pool="max")
    with torch.no_grad():
        torch.testing.assert_close(spg(x)[:, 3], grid[:, 2:, 2:].amax((1, 2)))


def omniclip_pta_params(D, Da, T):
    return (D * Da + Da) + (3 * Da * Da + 3 * Da) + (Da * Da + Da) + (Da * D + D) + T * Da


def omniclip_spg_params(D, Ds, scales):
    return 2 * D + (D * Ds + Ds) + (Ds * D + D) + scales * D


def test_omniclip_parameter_count_matches_the_docstring_formula(tiny_clip_state):
    # ViT-B/16, 8 frames, defaults: the docstring's 8,944,128 (python omniclip.py checks it on the model).
    assert 12 * omniclip_pta_params(768, 192, 8) == 5_347_584 and 12 * omniclip_spg_params(768, 192, 3) == 3_596_544
    assert 12 * (omniclip_pta_params(768, 192, 8) + omniclip_spg_params(768, 192, 3)) == 8_944_128
    D, L = 128, 3                                                # the tiny CLIP, built for 8 frames
    model = omniclip_omni(tiny_clip_state)
    assert common.count_params(model, trainable=True) == L * (omniclip_pta_params(D, 32, 8) + omniclip_spg_params(D, 32, 3))
    assert model.describe().startswith(f"{L * (omniclip_pta_params(D, 32, 8) + omniclip_spg_params(D, 32, 3)):,} trainable")
    model = omniclip_omni(tiny_clip_state, pta_ratio=0.5, pta_layers="1-2", spg_scales="1,2", spg_layers="0")
    assert sorted(model.pta) == ["1", "2"] and sorted(model.spg) == ["0"]
    assert common.count_params(model, trainable=True) == 2 * omniclip_pta_params(D, 64, 8) + omniclip_spg_params(D, 32, 2)
    with torch.no_grad():
        assert model(video()).shape == (B, C)


def test_omniclip_text_is_encoded_once_per_class_list(tiny_clip_state, monkeypatch):
    calls = []
    real = omniclip.encode_text
    monkeypatch.setattr(omniclip, "encode_text", lambda clip, tokens: calls.append(len(tokens)) or real(clip, tokens))
    model = omniclip_omni(tiny_clip_state).train()
    model(video())
    F.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
    model.eval()
    with torch.no_grad():
        first = model(video())
    assert calls == [C]
    model.set_classes(NAMES[:2])
    with torch.no_grad():
        assert model(video()).shape == (B, 2)
    assert calls == [C, 2]
    model.set_classes(NAMES)
    with torch.no_grad():
        torch.testing.assert_close(model(video()), first)


def test_omniclip_a_checkpoint_trained_with_other_frames_loads_with_its_temporal_embedding_resampled(tiny_clip_state):
    eight = omniclip_wake_up(omniclip_omni(tiny_clip_state)).eval()                 # built for 8 frames
    four = omniclip_omni(tiny_clip_state, frames=4).eval()
    assert four.pta["0"].temporal_embedding.shape[0] == 4
    four.load_state_dict(eight.state_dict())
    x = video(frames=4)
    with torch.no_grad():
        torch.testing.assert_close(four(x), eight(x))             # both resample 8 rows to 4 the same way
    torch.testing.assert_close(four.pta["0"].temporal_embedding[[0, -1]], eight.pta["0"].temporal_embedding[[0, -1]])


# =========================================================================================================
# xclip
# =========================================================================================================

def xclip_build(state, **kwargs):
    return build("xclip", state, **kwargs)


def xclip_perturbed(model, seed=1, scale=0.05):
    """Move every weight off its initial value (alpha, LayerNorms and biases start constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------------------
# X-CLIP
# ---------------------------------------------------------------------------------------------------------

def test_xclip_trains_the_image_side_and_freezes_the_text_side(tiny_clip_state):
    model = xclip_build(tiny_clip_state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for prefix in ("visual.conv1", "visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.2.message_fc",
                   "visual.transformer.resblocks.1.message_attn", "mit.", "prompts_generator.", "prompts_visual_"):
        assert any(n.startswith(prefix) for n in trainable), prefix
    for prefix in ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                   "logit_scale"):
        assert not any(n.startswith(prefix) for n in trainable), prefix


def test_xclip_state_dict_has_the_official_names(tiny_clip_state):
    keys = set(xclip_build(tiny_clip_state).state_dict())
    official = {"visual.conv1.weight", "visual.proj", "visual.transformer.resblocks.2.message_fc.weight",
                "visual.transformer.resblocks.0.message_ln.bias", "visual.transformer.resblocks.1.message_attn.in_proj_weight",
                "visual.transformer.resblocks.0.attn.out_proj.weight", "mit.positional_embedding",
                "mit.resblocks.0.attn.in_proj_weight", "mit.resblocks.0.mlp.c_proj.bias", "prompts_visual_ln.weight",
                "prompts_visual_proj", "prompts_generator.norm.weight", "prompts_generator.alpha",
                "prompts_generator.decoder.1.cross_attn.q_proj.weight", "prompts_generator.decoder.0.cross_attn.proj.bias",
                "prompts_generator.decoder.1.norm3.weight", "prompts_generator.decoder.0.mlp.3.weight",
                "token_embedding.weight", "positional_embedding", "transformer.resblocks.0.ln_1.weight",
                "ln_final.bias", "text_projection", "logit_scale"}
    assert official <= keys
    assert not any(k.startswith("clip.") or "cross_attn.q_proj.bias" in k for k in keys)


def test_xclip_official_initialisation(tiny_clip_state):
    model = xclip_build(tiny_clip_state)
    assert torch.all(model.prompts_generator.alpha == 0.1)
    assert 0.9 < model.prompts_visual_proj.std() < 1.1                     # plain randn, not scaled
    for lin in (model.mit.resblocks[0].mlp.c_fc, model.mit.resblocks[0].attn.out_proj,
                model.prompts_generator.decoder[0].mlp[0], model.prompts_generator.decoder[1].cross_attn.q_proj):
        assert 0.018 < lin.weight.std() < 0.022
        assert lin.bias is None or torch.all(lin.bias == 0)
    assert model.visual.transformer.resblocks[0].message_fc.bias.abs().sum() > 0   # PyTorch default, not zeroed
    assert model.mit.positional_embedding.abs().sum() > 0


def test_xclip_cross_frame_block_equals_the_appended_token_formulation(tiny_clip_state):
    """The block as the official code writes it: append the message token, run the full attention over
    N+2 tokens, drop the message token. Ours computes queries for the N+1 image tokens only."""
    model = xclip_perturbed(xclip_build(tiny_clip_state))
    blk = model.visual.transformer.resblocks[1]
    x = torch.randn(B * T, 17, 128)                                        # (B*T, N+1, D)
    with torch.no_grad():
        m = blk.message_fc(x[:, 0]).view(B, T, -1)
        h = blk.message_ln(m)
        m = m + blk.message_attn(h, h, h, need_weights=False)[0]
        z = torch.cat([x, m.reshape(B * T, 1, -1)], dim=1)
        h = blk.ln_1(z)
        z = z + blk.attn(h, h, h, need_weights=False)[0]
        expected = z[:, :17] + blk.mlp(blk.ln_2(z[:, :17]))
        torch.testing.assert_close(blk(x, T), expected, atol=1e-5, rtol=1e-5)


def test_xclip_frames_talk_within_a_video_but_never_across_videos(tiny_clip_state):
    model = xclip_perturbed(xclip_build(tiny_clip_state)).eval()
    seen = []
    model.mit.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = video()
    y = x.clone()
    y[0, 3] = torch.randn(3, 32, 32)                                       # change the last frame of video 0
    with torch.no_grad():
        model(x), model(y)
    before, after = seen                                                   # frame embeddings (B, T, E)
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-3                 # frame 0 heard of frame 3's change
    torch.testing.assert_close(before[1], after[1])                        # video 1 did not


def test_xclip_changing_video_2_leaves_video_1_unchanged(tiny_clip_state):
    model = xclip_perturbed(xclip_build(tiny_clip_state)).train()
    x = video()
    y = x.clone()
    y[1] = torch.randn(T, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_xclip_reversing_the_frames_changes_the_logits(tiny_clip_state):
    model = xclip_perturbed(xclip_build(tiny_clip_state)).eval()
    x = video()
    with torch.no_grad():
        assert (model(x) - model(x.flip(1))).abs().max() > 1e-3


def test_xclip_mit_counts_the_frame_embeddings_twice(tiny_clip_state):
    mit = xclip_build(tiny_clip_state).mit
    blk = mit.resblocks[0]
    with torch.no_grad():
        for p in (blk.attn.out_proj.weight, blk.attn.out_proj.bias, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias):
            p.zero_()                                                      # the block becomes the identity
        f = torch.randn(B, T, 64)
        torch.testing.assert_close(mit(f), (2 * f + mit.positional_embedding).mean(1))


def test_xclip_prompt_output_is_alpha_times_the_updated_text(tiny_clip_state):
    gen = xclip_build(tiny_clip_state).prompts_generator
    with torch.no_grad():
        gen.alpha.copy_(torch.rand(64))
        for layer in gen.decoder:                                          # no update: u stays the text
            for p in (layer.cross_attn.proj.weight, layer.cross_attn.proj.bias, layer.mlp[3].weight, layer.mlp[3].bias):
                p.zero_()
        text, ctx = torch.randn(B, C, 64), torch.randn(B, 16, 64)
        torch.testing.assert_close(gen(text, ctx), gen.alpha * text)


def test_xclip_text_is_cached_per_class_list_and_eval_mode_is_kept(tiny_clip_state):
    model = xclip_build(tiny_clip_state).eval()
    x = video()
    other = [f"another name {i}" for i in range(C)]
    with torch.no_grad():
        model(x)                                                           # caches NAMES
        model.set_classes(other)
        got = model(x)
        expected = common.encode_text(model, common.tokenize(model, other))   # raw names, no template
    torch.testing.assert_close(model.text_features(), expected)
    fresh = xclip_build(tiny_clip_state).eval()
    fresh.set_classes(other)
    with torch.no_grad():
        torch.testing.assert_close(got, fresh(x))
    assert not model.training


def test_xclip_gradient_checkpointing_gives_the_same_gradients(tiny_clip_state):
    grads = []
    for flag in (False, True):
        model = xclip_perturbed(xclip_build(tiny_clip_state)).train()
        model.grad_checkpointing = flag
        F.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_xclip_param_groups_have_the_10x_groups_and_no_decay_rules(tiny_clip_state):
    model = xclip_build(tiny_clip_state)
    groups = model.param_groups(1e-3, 0.05)
    assert len(groups) == 4 and {(g["lr"], g["weight_decay"]) for g in groups} == {
        (1e-3, 0.05), (1e-3, 0.0), (1e-2, 0.05), (1e-2, 0.0)}
    where = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert where["visual.conv1.weight"] == (1.0, 0.05)
    assert where["visual.positional_embedding"] == (1.0, 0.0)
    assert where["visual.class_embedding"] == (1.0, 0.0)
    assert where["visual.transformer.resblocks.0.attn.in_proj_bias"] == (1.0, 0.0)
    assert where["visual.transformer.resblocks.0.message_fc.weight"] == (10.0, 0.05)
    assert where["visual.transformer.resblocks.0.message_ln.weight"] == (10.0, 0.0)
    assert where["mit.positional_embedding"] == (10.0, 0.0)                 # 3-D, exempt by its name
    assert where["mit.resblocks.0.mlp.c_fc.weight"] == (10.0, 0.05)
    assert where["prompts_visual_proj"] == (10.0, 0.05)
    assert where["prompts_generator.alpha"] == (10.0, 0.0)


def test_xclip_loads_an_official_checkpoint_and_refuses_another_frame_count(tiny_clip_state, tmp_path):
    source = xclip_perturbed(xclip_build(tiny_clip_state)).eval()                      # text tower changed too
    path = tmp_path / "k400_tiny.pth"
    torch.save(dict(model={"module." + k: v for k, v in source.state_dict().items()}, epoch=29), path)
    model = xclip_build(tiny_clip_state).eval()
    with torch.no_grad():
        model(video())                                                     # text cached before the load
    xclip.load_official(model, str(path))
    with torch.no_grad():
        torch.testing.assert_close(model(video()), source(video()))
    eight = build("xclip", tiny_clip_state, frames=8)
    with pytest.raises(ValueError, match="trained with 4 frames"):
        xclip.load_official(eight, str(path))
    state = source.state_dict()
    del state["visual.transformer.resblocks.1.message_ln.weight"]
    torch.save(dict(model=state), path)
    with pytest.raises(RuntimeError, match="missing"):
        xclip.load_official(model, str(path))


def test_xclip_forward_refuses_another_frame_count(tiny_clip_state):
    with pytest.raises(ValueError, match="--frames 4"):
        xclip_build(tiny_clip_state)(video(frames=6))


def test_xclip_recipe_values():
    assert xclip.RECIPE["lr"] == 8e-6 and xclip.RECIPE["batch_size"] == 256 and xclip.RECIPE["template"] == "{}"
    assert xclip.RECIPE["mean"] == "imagenet" and xclip.RECIPE["betas"] == (0.9, 0.98)
    assert xclip.VARIANTS["few-shot"] == dict(frames=32, lr=2e-6, epochs=50, batch_size=64)


def test_xclip_cli_train_with_checkpointing_then_eval(tmp_path):
    paths = data.make_synthetic(str(tmp_path / "set"), train_per_class=1, val_per_class=1, T=12)
    out = str(tmp_path / "run")
    base = ["--method", "xclip", "--train-list", paths["train"], "--val-list", paths["val"],
            "--data-root", paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4",
            "--batch-size", "4", "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "1",
            "--out", out, "--test-clips", "1", "--test-crops", "1"]
    trained = train.main(base + ["--epochs", "1", "--grad-checkpointing"])
    again = train.main(base + ["--eval-only", "--weights", f"{out}/last.pt"])      # the same weights, reloaded
    assert again["test"][0] == pytest.approx(trained["test"][0])


# =========================================================================================================
# openvclip
# =========================================================================================================

OPENVCLIP_NAME = "openvclip"
OPENVCLIP_DEFAULTS = dict(interp_lambda=0.5, swa_start=2, iwo_alpha=0.6)   # the recipe's, not the embedded demo's


def openvclip_model_with(state, **kwargs):
    return build(OPENVCLIP_NAME, state, **{**OPENVCLIP_DEFAULTS, **kwargs})


def openvclip_perturb(model, scale=0.05, seed=1):
    """Move the trainable weights away from theta0, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable():
            p.add_(scale * torch.randn(p.shape, generator=g))


def openvclip_flat(model):
    return torch.cat([p.detach().flatten() for p in model.trainable()])


# ---------------------------------------------------------------------------------------------------------
# The shared tests of test_methods.py, for this method
# ---------------------------------------------------------------------------------------------------------

def test_openvclip_gradients_reach_exactly_the_visual_tower_and_logit_scale(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state).train()
    F.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
    for n, p in model.named_parameters():
        if n.startswith("clip.visual.") or n == "clip.logit_scale":
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
        else:
            assert not p.requires_grad and p.grad is None, f"text-side {n} got a gradient"
    groups = model.param_groups(1e-3, 0.01)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.trainable()}


# ---------------------------------------------------------------------------------------------------------
# Neighbour-frame attention
# ---------------------------------------------------------------------------------------------------------

def openvclip_reference_encoder(visual, x, T, window):
    """The official semantics written plainly: per frame, cat the projected keys/values of frames t-w..t+w
    (zeros past the ends), explicit softmax. x (B*T, 3, S, S) -> (B*T, E)."""
    h = common.patch_embed(visual, x)
    BT, K, D = h.shape
    for blk in visual.transformer.resblocks:
        a, H = blk.attn, blk.attn.num_heads
        q, k, v = F.linear(blk.ln_1(h), a.in_proj_weight, a.in_proj_bias).view(BT // T, T, K, 3, H, D // H).unbind(3)
        out = torch.empty_like(q)                                   # (B, T, K, H, d)
        for t in range(T):
            ks = [k[:, s] if 0 <= s < T else torch.zeros_like(k[:, 0]) for s in range(t - window, t + window + 1)]
            vs = [v[:, s] if 0 <= s < T else torch.zeros_like(v[:, 0]) for s in range(t - window, t + window + 1)]
            scores = torch.einsum("bqhd,bkhd->bhqk", q[:, t], torch.cat(ks, 1)) / (D // H) ** 0.5
            out[:, t] = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), torch.cat(vs, 1))
        h = h + a.out_proj(out.reshape(BT, K, D))
        h = h + blk.mlp(blk.ln_2(h))
    return common.frame_head(visual, h)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_openvclip_neighbour_attention_matches_a_per_frame_reference(tiny_clip_state, window):
    visual = tiny_clip(tiny_clip_state).visual
    x = torch.randn(2 * 7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(openvclip.encode_video_frames(visual, x, 7, window),
                                   openvclip_reference_encoder(visual, x, 7, window), atol=2e-5, rtol=1e-4)


def test_openvclip_identical_frames_inner_frames_are_clip_boundary_frames_are_diluted(tiny_clip_state):
    """One layer's attention on T identical frames: duplicated keys leave every softmax average unchanged, so
    inner frames get exactly CLIP's attention; frames 0 and T-1 also see K zero keys, each worth exp(0) of
    softmax mass towards a zero value, which scales their per-head output by 2Z / (2Z + K), Z = sum exp(score).
    (A mask instead of zeros would make the boundary frames equal CLIP too.)"""
    attn = tiny_clip(tiny_clip_state).visual.transformer.resblocks[0].attn
    K, D, H, Tn = 17, 128, attn.num_heads, 5
    frame = torch.randn(1, K, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = openvclip.neighbour_attention(attn, frame.expand(Tn, K, D).contiguous(), Tn, 1)   # (T, K, D)
        torch.testing.assert_close(out[1:-1], common.attention(attn, frame).expand(Tn - 2, K, D), atol=1e-6, rtol=1e-5)
        q, k, v = (t.view(K, H, D // H).transpose(0, 1) for t in
                   F.linear(frame[0], attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))   # (H, K, d)
        scores = q @ k.transpose(1, 2) / (D // H) ** 0.5                                      # (H, K, K)
        plain = scores.softmax(-1) @ v                                                        # (H, K, d)
        Z = scores.exp().sum(-1, keepdim=True)                                                # (H, K, 1)
        diluted = attn.out_proj((plain * 2 * Z / (2 * Z + K)).transpose(0, 1).reshape(K, D))
        torch.testing.assert_close(out[0], diluted, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out[-1], diluted, atol=1e-6, rtol=1e-5)
        assert (out[0] - out[1]).abs().max() > 1e-3                 # the dilution is visible


def test_openvclip_identical_frames_whole_tower_clip_beyond_the_reach_of_the_ends(tiny_clip_state):
    """Through L layers the boundary effect spreads w frames per layer: with identical frames, frames at least
    L*w from both ends equal the frame-level CLIP embedding, the others do not."""
    visual = tiny_clip(tiny_clip_state).visual
    L, Tn = len(visual.transformer.resblocks), 9                    # L = 3: frames 3..5 are out of reach
    frame = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = openvclip.encode_video_frames(visual, frame.expand(Tn, -1, -1, -1), Tn, 1)   # (T, E)
        clip = common.encode_frames(visual, frame)                   # (1, E)
    reach = [min(t, Tn - 1 - t) >= L for t in range(Tn)]
    for t in range(Tn):
        close = torch.allclose(ours[t], clip[0], atol=1e-5, rtol=1e-5)
        assert close == reach[t], f"frame {t}: equal to CLIP {close}, expected {reach[t]}"


def test_openvclip_window_zero_is_frame_level_clip(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state, temporal_window=0).eval()
    x = video()
    with torch.no_grad():
        f = F.normalize(model.clip.encode_image(x.flatten(0, 1)), dim=-1).view(B, T, -1)
        torch.testing.assert_close(model(x), model.logits(f), atol=1e-5, rtol=1e-5)


def test_openvclip_blind_to_time_reversal_but_not_to_shuffling(tiny_clip_state):
    """Softmax ignores key order and there is no temporal position embedding: a clip and its reverse give the
    same logits (so the time-reversed twins of the embedded set stay at chance), other orders do not."""
    model = openvclip_model_with(tiny_clip_state).eval()
    x = video(frames=6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.flip(1)), atol=1e-5, rtol=1e-5)
        assert (model(x) - model(x[:, [0, 2, 4, 1, 3, 5]])).abs().max() > 1e-3


def test_openvclip_logits_are_the_mean_of_per_frame_logits_with_the_28_template_classifier(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state).eval()
    clip, x = model.clip, video()
    assert len(openvclip.TEMPLATES) == 28 and "a example of a person doing {}." in openvclip.TEMPLATES
    with torch.no_grad():
        prompts = common.tokenize(clip, [t.format(n) for n in NAMES for t in openvclip.TEMPLATES])   # class-major
        W = F.normalize(F.normalize(clip.encode_text(prompts), dim=-1).view(C, 28, -1).mean(1), dim=-1)   # (C, E)
        f = openvclip.encode_video_frames(clip.visual, x.flatten(0, 1), T, 1)
        per_frame = clip.logit_scale.exp() * F.normalize(f, dim=-1) @ W.t()         # (B*T, C)
        torch.testing.assert_close(model(x), per_frame.view(B, T, C).mean(1), atol=1e-5, rtol=1e-5)


def test_openvclip_weight_decay_on_matrices_and_logit_scale_only(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state)
    decay = {n for g in model.param_groups(1e-3, 0.01) if g["weight_decay"] > 0 for n in g["names"]}
    assert "clip.logit_scale" in decay and "clip.visual.proj" in decay and "clip.visual.conv1.weight" in decay
    assert not any(n.endswith(".bias") or "ln_" in n or n.endswith("class_embedding") for n in decay)


# ---------------------------------------------------------------------------------------------------------
# Interpolated weight optimisation
# ---------------------------------------------------------------------------------------------------------

def test_openvclip_iwo_step_gradient_is_the_official_formula_and_theta_is_restored(tiny_clip_state, monkeypatch):
    model = openvclip_model_with(tiny_clip_state).train()
    openvclip_perturb(model)
    x, y = video(), train.soft_targets(torch.tensor([1, 3]), C, 0.0)
    theta = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    theta0 = dict(zip(theta, model.unflatten(model.theta0)))
    alpha, draws = 0.37, []
    monkeypatch.setattr(openvclip.random, "uniform", lambda a, b: draws.append((a, b)) or alpha)
    prior = {n: torch.randn_like(p) for n, p in theta.items()}         # gradients of earlier micro-batches
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.grad = prior[n].clone()
    seen = []
    model.train_step(x, y, train.soft_cross_entropy, lambda loss: (seen.append(loss.item()), loss.backward()),
                     contextlib.nullcontext)
    assert draws == [(0.0, 0.6)]
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, theta[n]), f"{n} not restored exactly"
    # Direct computation: grad L(theta) + 0.5 grad_w L(w) at w = alpha theta0 + (1-alpha) theta, no (1-alpha).
    def grad_at(weights, scale):
        weights = {n: w.detach().requires_grad_() for n, w in weights.items()}
        loss = scale * train.soft_cross_entropy(torch.func.functional_call(model, weights, (x,)), y)
        return loss.item(), dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
    loss_int, g_int = grad_at({n: alpha * theta0[n] + (1 - alpha) * theta[n] for n in theta}, 0.5)
    loss_main, g_main = grad_at(theta, 1.0)
    assert seen == pytest.approx([loss_int, loss_main], rel=1e-4)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, prior[n] + g_main[n] + g_int[n], atol=1e-5, rtol=1e-4)
    # ... and one SGD step moves theta by exactly that gradient.
    opt = torch.optim.SGD(model.trainable(), lr=0.1)
    opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, theta[n] - 0.1 * (prior[n] + g_main[n] + g_int[n]), atol=1e-6, rtol=1e-5)


def test_openvclip_iwo_off_is_the_plain_step(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state, iwo_alpha=0.0).train()
    x, y = video(), train.soft_targets(torch.tensor([1, 3]), C, 0.0)
    calls = []
    model.train_step(x, y, train.soft_cross_entropy, lambda loss: (calls.append(1), loss.backward()),
                     contextlib.nullcontext)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------------
# Weight averaging and test-time interpolation
# ---------------------------------------------------------------------------------------------------------

def test_openvclip_weight_average_of_two_states_is_their_mean(tiny_clip_state):
    model = openvclip_model_with(tiny_clip_state, interp_lambda=0.0, swa_start=2)
    model.swa_sum.fill_(7.0), model.swa_count.fill_(5)              # as if --weights brought an old sum along
    openvclip_perturb(model, seed=1)
    model.on_epoch_end(0, 3)                                        # epoch 1 < swa_start: not averaged
    openvclip_perturb(model, seed=2)
    a = openvclip_flat(model)
    model.on_epoch_end(1, 3)
    openvclip_perturb(model, seed=3)
    b = openvclip_flat(model)
    model.on_epoch_end(2, 3)                                        # last epoch: theta <- mean(a, b)
    assert model.swa_count.item() == 2
    torch.testing.assert_close(openvclip_flat(model), (a + b) / 2)
    state = model.state_dict()                                      # checkpoints carry the running sum
    assert {"theta0", "swa_sum", "swa_count"} <= set(state) and "tokens" not in state


def test_openvclip_interpolation_with_lambda_one_gives_back_clip_and_half_the_midpoint(tiny_clip_state):
    clip_model = openvclip_model_with(tiny_clip_state).eval()
    for lam in (1.0, 0.5):
        model = openvclip_model_with(tiny_clip_state, interp_lambda=lam).eval()
        model.swa = False                                           # --no-swa: interpolate the last weights
        openvclip_perturb(model)
        trained = openvclip_flat(model)
        model.on_epoch_end(0, 1)
        torch.testing.assert_close(openvclip_flat(model), lam * openvclip_flat(clip_model) + (1 - lam) * trained)
    with torch.no_grad():
        model = openvclip_model_with(tiny_clip_state, interp_lambda=1.0).eval()
        openvclip_perturb(model)
        model.on_epoch_end(0, 1)
        torch.testing.assert_close(model(video()), clip_model(video()))


def test_openvclip_lambda_follows_the_model_size(monkeypatch):
    monkeypatch.setattr(openvclip, "Model", lambda clip, **kwargs: kwargs)   # build() without building a ViT-L
    for model, lam in (("ViT-L-14", 0.6), ("ViT-B-16", 0.5), ("ViT-B-32", 0.5)):
        args = train.get_args(["--method", OPENVCLIP_NAME, "--model", model, "--benchmark"])[0]
        assert openvclip.build(None, args)["interp_lambda"] == lam
    args = train.get_args(["--method", OPENVCLIP_NAME, "--model", "ViT-L-14", "--benchmark", "--interp-lambda", "0.3"])[0]
    assert openvclip.build(None, args)["interp_lambda"] == 0.3


def test_openvclip_loads_the_released_swa_checkpoint_and_interpolates(tiny_clip_state, tmp_path):
    source = openvclip_model_with(tiny_clip_state)
    openvclip_perturb(source)
    swa = {"model." + k.removeprefix("clip."): v for k, v in source.state_dict().items() if k.startswith("clip.")}
    path = str(tmp_path / "swa_2_22.pth")
    torch.save({"model_state": swa}, path)
    clip_weights = openvclip_flat(openvclip_model_with(tiny_clip_state))
    model = openvclip_model_with(tiny_clip_state, interp_lambda=0.5)
    openvclip.load_official(model, path)
    torch.testing.assert_close(openvclip_flat(model), 0.5 * clip_weights + 0.5 * openvclip_flat(source))
    openvclip.load_official(model, path, interp_lambda=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(video()), source.eval()(video()))
    del swa["model.visual.proj"]
    torch.save({"model_state": swa}, path)
    with pytest.raises(RuntimeError, match="missing"):
        openvclip.load_official(model, path)


# ---------------------------------------------------------------------------------------------------------
# Open-VCLIP++ caption alignment
# ---------------------------------------------------------------------------------------------------------

def test_openvclip_video_caption_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    v, t, s = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.tensor(2.0)
    vn, tn = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
    S = s.exp() * vn @ tn.t()
    expected = -0.5 * (S.log_softmax(1).diag().mean() + S.log_softmax(0).diag().mean())
    torch.testing.assert_close(openvclip.video_caption_loss(v, t, s), expected)
    aligned = openvclip.video_caption_loss(t, t, torch.tensor(4.6))   # matching pairs: lower loss
    assert aligned < openvclip.video_caption_loss(v, t, torch.tensor(4.6))


def test_openvclip_captions_add_the_caption_loss_to_the_training_loss(tiny_clip_state, tmp_path):
    path = str(tmp_path / "captions.pt")
    torch.save({"abseiling/vid_a.mp4": "a person climbs down a wall", "vid_b": "a dog runs on grass"}, path)
    model = openvclip_model_with(tiny_clip_state, captions=path, caption_weight=0.7, iwo_alpha=0.0).train()
    x, y = video(), train.soft_targets(torch.tensor([1, 3]), C, 0.0)
    paths = ["videos/abseiling/vid_a.mp4", "other/vid_b.avi"]
    with torch.no_grad():
        f = model.frame_embeddings(x)
        text = model.clip.encode_text(common.tokenize(model.clip, ["a person climbs down a wall", "a dog runs on grass"]))
        expected = train.soft_cross_entropy(model.logits(f), y) + 0.7 * openvclip.video_caption_loss(
            f.mean(1), text, model.clip.logit_scale)
        torch.testing.assert_close(model.loss(x, y, train.soft_cross_entropy, paths), expected)
        plain = train.soft_cross_entropy(model(x), y)
        torch.testing.assert_close(model.loss(x, y, train.soft_cross_entropy, ["x/unknown.mp4", paths[1]]), plain)
    loss = model.train_step(x, y, train.soft_cross_entropy, lambda l: l.backward(),
                            contextlib.nullcontext, paths=paths)
    torch.testing.assert_close(loss, expected)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("clip.transformer."))
    bad = str(tmp_path / "bad.json")
    json.dump({"a.mp4": ["two", "captions"]}, open(bad, "w"))
    with pytest.raises(ValueError, match="bad.json"):
        openvclip.load_captions(bad)


# ---------------------------------------------------------------------------------------------------------
# Through train.py
# ---------------------------------------------------------------------------------------------------------

def test_openvclip_cli_run_averages_and_interpolates_at_the_end(tmp_path):
    paths = data.make_synthetic(str(tmp_path / "set"), train_per_class=2, val_per_class=1, T=12)
    out = str(tmp_path / "run")
    args = ["--method", OPENVCLIP_NAME, "--train-list", paths["train"], "--val-list", paths["val"], "--data-root",
            paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4", "--batch-size", "4",
            "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "1", "--lr", "1e-3", "--out", out,
            "--epochs", "2", "--warmup-epochs", "1", "--interp-lambda", "0.5", "--test-clips", "1"]
    random.seed(0)
    result = train.main(args)
    state = torch.load(os.path.join(out, "last.pt"), weights_only=False)["model"]
    assert state["swa_count"].item() == 2 and 0 <= result["test"][0]["top1"] <= 100
    params = [k for k, v in state.items() if k.startswith("clip.visual.") or k == "clip.logit_scale"]
    theta0 = state["theta0"]
    final = torch.cat([state[k].flatten() for k in params])
    torch.testing.assert_close(final, 0.5 * theta0 + 0.5 * state["swa_sum"] / 2)


def test_openvclip_cli_passes_each_batch_video_paths_for_the_captions(tmp_path, monkeypatch):
    paths = data.make_synthetic(str(tmp_path / "set"), train_per_class=2, val_per_class=1, T=12)
    listed = {os.path.join(paths["root"], p) for p, _ in data.read_list(paths["train"])}
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({p: "a video of a shape" for p in listed}))
    seen, step = [], openvclip.Model.train_step

    def spy(self, *args, paths=None, **kwargs):
        seen.append(paths)
        return step(self, *args, paths=paths, **kwargs)

    monkeypatch.setattr(openvclip.Model, "train_step", spy)
    train.main(["--method", "openvclip", "--train-list", paths["train"], "--val-list", paths["val"], "--data-root",
                paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4", "--batch-size", "4",
                "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "1", "--epochs", "1", "--out",
                str(tmp_path / "run"), "--test-clips", "1", "--test-crops", "1", "--captions", str(captions)])
    assert len(seen[0]) == 4 and set(seen[0]) <= listed
