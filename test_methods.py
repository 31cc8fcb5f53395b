"""Compact tests: every method on a tiny CLIP (no downloads), the shared pieces, the data, one CLI run.

    python -m pytest -q
"""
import importlib
import contextlib
import copy
import functools
import hashlib
import io
import json
import math
import os
import pickle
import argparse
import random
import re
import shutil
import subprocess
import sys
import time
import types
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as F_v2
from safetensors.torch import load_file, save_file

import common
import data
import omniclip
import openvclip
import train
import vificlip
import xclip

METHODS = train.METHODS   # the one list: a method registered there gets every test parametrised over it
B, T, C = 2, 4, 5
NAMES = [f"class number {i}" for i in range(C)]
# The tiny models' matrices are too small to share between threads (train.py's EMBEDDED runs on one thread for
# the same reason): one thread for the tests' own process; subprocesses the tests start say --threads 1 too.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_clip_state():
    torch.manual_seed(0)
    return common.load_clip("tiny").state_dict()


def tiny_clip(state):
    """A new tiny CLIP holding state."""
    clip = common.load_clip("tiny")
    clip.load_state_dict(state)
    return clip


def build(name, state, **kwargs):
    method = importlib.import_module(name)
    kwargs = {"frames": T, **kwargs}   # X-CLIP's temporal position embedding fixes the frame count
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in kwargs.items()]   # True: bare
    args, _ = train.get_args(["--method", name] + flags)
    torch.manual_seed(0)
    model = method.build(tiny_clip(state), args)
    model.set_classes(NAMES)
    return model


def video(seed=0, batch=B, frames=T):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """synthetic(root, train_per_class=2, val_per_class=1, T=12) -> make_synthetic's paths of a copy at root: each
    size of the set is made once, and each test gets its own copy, which it may damage."""
    made = tmp_path_factory.mktemp("synthetic")

    def copy_at(root, train_per_class=2, val_per_class=1, T=12):
        sizes = dict(train_per_class=train_per_class, val_per_class=val_per_class, T=T)
        original = made / f"{train_per_class}-{val_per_class}-{T}"
        data.make_synthetic(str(original), **sizes)   # once made, returns at once: its DONE file names these sizes
        shutil.copytree(original, root)
        return data.make_synthetic(str(root), **sizes)   # the copy is finished too: this only names its files
    return copy_at


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
        short = tokens[:, :int(tokens.argmax(-1).max()) + 1]   # cut after the last end of text, as the stand-in's
        torch.testing.assert_close(common.encode_text(clip, short), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("prompted", [False, True])
def test_vificlip_text_once_per_optimizer_step_gives_the_per_micro_batch_gradients(tiny_clip_state, prompted):
    """float64, 3 micro-batches with mixup/cutmix and label smoothing: encoding the text once for the step
    (begin_step / end_step) gives every parameter the gradient of encoding it for each micro-batch."""
    model = build("vificlip", tiny_clip_state, **(PROMPTS if prompted else {})).double()
    model.train()
    labels = [torch.tensor([k % C, (k + 2) % C]) for k in range(3)]

    def gradients(shared):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)                                         # the same mixing draws both times
        if shared:
            model.begin_step()
        for k in range(3):
            clips, target = data.mix(video(seed=k).double(), train.soft_targets(labels[k], C, 0.1).double(),
                                      0.8, 1.0, 0.5)
            loss = -(target * model(clips).log_softmax(-1)).sum(-1).mean() / 3
            loss.backward()
        if shared:
            model.end_step()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    each, once = gradients(False), gradients(True)
    text = [n for n in each if n.startswith(("clip.transformer", "prompt_learner", "clip.ln_final", "clip.text"))]
    assert text and all(each[n].abs().sum() > 0 for n in text)       # the text side does learn
    assert each.keys() == once.keys()
    for n in each:
        torch.testing.assert_close(once[n], each[n], rtol=0, atol=1e-12, msg=n)


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


def official_vifi_state(model):
    """A plain ViFi-CLIP's weights laid out as the released checkpoints have them."""
    official = {}
    for k, v in model.state_dict().items():
        if k.startswith("clip.visual."):
            official["module.image_encoder." + k.removeprefix("clip.visual.")] = v
        elif k == "clip.logit_scale":
            official["module.logit_scale"] = v
        elif k != "clip.token_embedding.weight":
            official["module.text_encoder." + k.removeprefix("clip.")] = v
    official["module.prompt_learner.complete_text_embeddings"] = torch.zeros(C, 32, 64)
    return official


def test_vificlip_loads_an_official_checkpoint(tiny_clip_state, tmp_path, monkeypatch):
    import vificlip
    source = build("vificlip", tiny_clip_state)
    torch.nn.init.normal_(source.clip.visual.proj)   # make it differ from the fresh model below
    official = official_vifi_state(source)
    path = tmp_path / "vifi.pth"
    # The real files also pickle a yacs CfgNode: save one from a stand-in module that is gone at load time.
    yacs = types.ModuleType("yacs.config")

    class CfgNode(dict):   # as yacs' own: a dict with attributes of its own, pickled with both
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__.update(__immutable__=True, __deprecated_keys__=set(), __renamed_keys__={})
    CfgNode.__module__, CfgNode.__qualname__, yacs.CfgNode = "yacs.config", "CfgNode", CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", yacs)
    torch.save(dict(model=official, config=CfgNode(TRAIN=CfgNode(LR=2.2e-5)), epoch=9, max_accuracy=80.1), path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    model = build("vificlip", tiny_clip_state)
    vificlip.load_official(model, str(path))
    model.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(video()), source(video()))
    del official["module.image_encoder.proj"]
    torch.save(dict(model=official), path)
    with pytest.raises(common.CheckpointError, match="lacks"):
        vificlip.load_official(model, str(path))


# ViFi-CLIP bridge and prompt: 2 text tokens at both text layers, 3 vision tokens at the
# first 2 of 3 vision layers


PROMPTS = dict(prompt_tokens_text=2, prompt_depth_text=2, prompt_tokens_vision=3, prompt_depth_vision=2,
               template="{}.")
PROMPT_KEYS = {"prompt_learner.ctx", "clip.transformer.resblocks.1.VPT_shallow", "clip.visual.VPT",
               "clip.visual.transformer.resblocks.1.VPT_shallow"}


def ln_1_inputs(blocks):
    """Record the input of each block (what its ln_1 sees), in call order."""
    seen = []
    handles = [blk.ln_1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone())) for blk in blocks]
    return seen, handles


def test_vificlip_prompts_only_the_prompts_train_and_all_of_them_get_gradients(tiny_clip_state):
    model = build("vificlip", tiny_clip_state, **PROMPTS).train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == PROMPT_KEYS
    torch.nn.functional.cross_entropy(model(video()), torch.tensor([1, 3])).backward()
    for n, p in model.named_parameters():
        if n in PROMPT_KEYS:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None and not p.requires_grad, n   # logit_scale too: the official prompt code freezes it
    groups = model.param_groups(1e-3, 1e-3)
    assert {n for g in groups for n in g["names"]} == PROMPT_KEYS and all(g["weight_decay"] == 1e-3 for g in groups)
    for n, p in model.named_parameters():                     # N(0, 0.02) init
        if n in PROMPT_KEYS:
            assert 0.005 < p.std().item() < 0.05, n


@pytest.mark.parametrize("off", [
    {},                                                        # the recipe's zeros
    dict(prompt_tokens_text=4, prompt_tokens_vision=4),        # tokens but depth 0
    dict(prompt_depth_text=2, prompt_depth_vision=2),          # depth but 0 tokens
])
def test_vificlip_prompts_prompts_off_is_exactly_plain_vificlip(tiny_clip_state, off):
    model = build("vificlip", tiny_clip_state, **off).eval()
    clip = model.clip
    assert not any(vificlip.is_prompt(n) for n in model.state_dict())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n != "clip.token_embedding.weight"}
    x = video()
    with torch.no_grad():   # the file's code before prompts: common's encoders, the same template
        v = common.encode_frames(clip.visual, x.flatten(0, 1)).view(B, T, -1).mean(1)
        t = common.encode_text(clip, common.tokenize(clip, [f"a photo of a {n}." for n in NAMES]))
        expected = common.cosine_logits(v, t, clip.logit_scale)
        assert torch.equal(model(x), expected)
    model.train()
    assert torch.equal(model(x).detach(), expected)          # training path: text recomputed, same numbers


def test_vificlip_prompts_plain_checkpoint_loads_into_a_prompted_model_with_only_the_prompts_missing(tiny_clip_state,
                                                                                                       tmp_path):
    plain, prompted = build("vificlip", tiny_clip_state), build("vificlip", tiny_clip_state, **PROMPTS)
    assert set(prompted.state_dict()) - PROMPT_KEYS == set(plain.state_dict())
    with torch.no_grad():
        plain.clip.visual.proj.normal_()                      # differ from the prompted model's backbone
    missing, unexpected = prompted.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == PROMPT_KEYS and not unexpected
    torch.testing.assert_close(prompted.clip.visual.proj, plain.clip.visual.proj, rtol=0, atol=0)
    # The same through load_official: a released fine-tuned ViFi-CLIP is the bridge.
    official = official_vifi_state(plain)
    torch.save(dict(model=official), tmp_path / "ft.pth")
    fresh = build("vificlip", tiny_clip_state, **PROMPTS)
    ctx = fresh.prompt_learner.ctx.detach().clone()
    vificlip.load_official(fresh, str(tmp_path / "ft.pth"))
    assert torch.equal(fresh.clip.visual.proj, plain.clip.visual.proj) and torch.equal(fresh.prompt_learner.ctx, ctx)


def test_vificlip_prompts_official_prompt_checkpoint_round_trip(tiny_clip_state, tmp_path):
    source = build("vificlip", tiny_clip_state, **PROMPTS)
    official = {}
    for k, v in source.state_dict().items():
        if k.startswith("clip.visual."):
            k = "image_encoder." + k.removeprefix("clip.visual.")
        elif k == "clip.logit_scale":
            k = "logit_scale"
        elif k.startswith("clip.") and k != "clip.token_embedding.weight":
            k = "text_encoder." + k.removeprefix("clip.")
        official["module." + k] = v                            # prompt_learner.ctx keeps its name
    official["module.prompt_learner.token_prefix"] = torch.zeros(C, 1, 64)
    official["module.prompt_learner.token_suffix"] = torch.zeros(C, 29, 64)
    assert "module.image_encoder.VPT" in official
    assert "module.text_encoder.transformer.resblocks.1.VPT_shallow" in official
    torch.save(dict(model=official), tmp_path / "prompt.pth")
    torch.manual_seed(1)
    model = build("vificlip", tiny_clip_state, **PROMPTS)
    with torch.no_grad():
        model.prompt_learner.ctx.normal_()
    vificlip.load_official(model, str(tmp_path / "prompt.pth"))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(video()), source.eval()(video()), rtol=0, atol=0)
    with pytest.raises(common.CheckpointError, match="--prompt-"):   # into a plain model: the prompts are unexpected
        vificlip.load_official(build("vificlip", tiny_clip_state), str(tmp_path / "prompt.pth"))
    with pytest.raises(common.CheckpointError, match="lacks"):   # a deeper model than the file: partial prompts
        vificlip.load_official(build("vificlip", tiny_clip_state, **{**PROMPTS, "prompt_depth_vision": 3}),
                               str(tmp_path / "prompt.pth"))


def test_vificlip_prompts_vision_prompts_are_appended_then_replaced_then_carried(tiny_clip_state):
    model = build("vificlip", tiny_clip_state, **PROMPTS).eval()
    visual, n = model.clip.visual, 3
    blocks = visual.transformer.resblocks
    assert hasattr(blocks[1], "VPT_shallow") and not hasattr(blocks[0], "VPT_shallow") \
        and not hasattr(blocks[2], "VPT_shallow")
    x = video().flatten(0, 1)
    seen, handles = ln_1_inputs(blocks)
    with torch.no_grad():
        vificlip.encode_prompted_frames(visual, x)
        plain = common.patch_embed(visual, x)                  # (B*T, N+1, D)
    for h in handles:
        h.remove()
    assert all(s.shape == (B * T, 17 + n, 128) for s in seen)   # N+1+n_v at every layer: never removed
    # Layer 0: patches first (untouched), prompts last, ln_pre on them, no positional embedding.
    assert torch.equal(seen[0][:, :17], plain)
    assert torch.equal(seen[0][:, 17:], visual.ln_pre(visual.VPT).detach().expand(B * T, -1, -1))
    # Layer 1 < d_v: the last n_v tokens are that layer's own prompts, for every frame; the rest flowed on.
    assert torch.equal(seen[1][:, 17:], blocks[1].VPT_shallow.detach().expand(B * T, -1, -1))
    # Layer 2 >= d_v: the prompt outputs of layer 1 flow on, different per frame.
    assert not torch.allclose(seen[2][0, 17:], seen[2][1, 17:])


def test_vificlip_prompts_each_vision_prompt_matters_and_the_replaced_ones_stop_mattering(tiny_clip_state):
    model = build("vificlip", tiny_clip_state, **PROMPTS).eval()
    visual, x = model.clip.visual, video().flatten(0, 1)
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        base = vificlip.encode_prompted_frames(visual, x)
        for p in (visual.VPT, blocks[1].VPT_shallow):
            saved = p.clone()
            p.add_(1.0)
            assert not torch.allclose(vificlip.encode_prompted_frames(visual, x), base), "a prompt had no effect"
            p.copy_(saved)
        # Layer 0's prompts reach layer 1's input only through the attention of the kept tokens: their own
        # outputs are replaced, so layer 1's prompt positions do not change.
        seen, handles = ln_1_inputs(blocks[1:2])
        vificlip.encode_prompted_frames(visual, x)
        visual.VPT.add_(1.0)
        vificlip.encode_prompted_frames(visual, x)
        for h in handles:
            h.remove()
    assert torch.equal(seen[0][:, 17:], seen[1][:, 17:]) and not torch.allclose(seen[0][:, :17], seen[1][:, :17])


def test_vificlip_prompts_text_context_is_shared_by_all_classes_and_deep_prompts_replace_it(tiny_clip_state):
    model = build("vificlip", tiny_clip_state, **PROMPTS).eval()
    clip, n = model.clip, 2
    x_id = common.tokenize(clip, ["x"])[0, 1]
    assert (model.tokens[:, 1:1 + n] == x_id).all() and (model.tokens[:, 1 + n] != x_id).all()
    plain = common.tokenize(clip, [f"{name}." for name in NAMES])    # "X X {c}." with the X's taken out
    assert torch.equal(model.tokens[:, 1 + n:], plain[:, 1:-n])
    photo = build("vificlip", tiny_clip_state, **{**PROMPTS, "template": "a photo of a {}."})
    assert torch.equal(photo.tokens[:, 1 + n:],       # placeholders, then the template
                       common.tokenize(clip, [f"a photo of a {name}." for name in NAMES])[:, 1:-n])
    seen, handles = ln_1_inputs(clip.transformer.resblocks)
    with torch.no_grad():
        text = model.text_features()
    for h in handles:
        h.remove()
    pos = clip.positional_embedding
    ctx = (model.prompt_learner.ctx + pos[1:1 + n]).detach()
    assert torch.equal(seen[0][:, 1:1 + n], ctx.expand(C, -1, -1))   # input: ctx + position, every class
    emb = clip.token_embedding(model.tokens) + pos
    assert torch.equal(seen[0][:, :1], emb[:, :1]) and torch.equal(seen[0][:, 1 + n:], emb[:, 1 + n:])
    deep = clip.transformer.resblocks[1].VPT_shallow.detach()
    assert torch.equal(seen[1][:, 1:1 + n], deep.expand(C, -1, -1))  # layer 1: own tokens, no position
    assert text.shape == (C, 64) and torch.isfinite(text).all()
    # Moving ctx moves every class's embedding; training mode recomputes (no stale cache).
    model.train()
    with torch.no_grad():
        model.prompt_learner.ctx.add_(1.0)
    moved = model.text_features().detach()
    assert not torch.isclose(moved, text).all(dim=-1).any()


def test_vificlip_prompts_forward_shape_finite_and_frame_order_blind(tiny_clip_state):
    model = build("vificlip", tiny_clip_state, **PROMPTS).eval()
    x = video()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (B, C) and torch.isfinite(logits).all()
        torch.testing.assert_close(model(x[:, torch.randperm(T)]), logits, atol=1e-5, rtol=1e-5)
        model.set_classes(["a_b", "c"])                         # "_" becomes a space in prompting mode
        assert model(x).shape == (B, 2)
        assert torch.equal(model.tokens[0, 3:5], common.tokenize(model.clip, ["a b"])[0, 1:3])


def test_vificlip_prompts_options_and_recipes():
    def get(*argv):
        return train.get_args(["--method", "vificlip", "--train-list", "t.txt", *argv])[0]
    a = get()
    assert (a.prompt_tokens_text, a.prompt_depth_text, a.prompt_tokens_vision, a.prompt_depth_vision) == (0, 0, 0, 0)
    assert a.template == "a photo of a {}." and a.tune == "both"
    a = get("--recipe", "prompt-base2novel")
    assert (a.prompt_tokens_text, a.prompt_depth_text, a.prompt_tokens_vision, a.prompt_depth_vision) == (16, 9, 16, 9)
    assert (a.lr, a.epochs, a.frames, a.global_batch, a.test_clips, a.test_crops, a.template) == \
        (4e-2, 11, 32, 64, 1, 1, "{}.")
    a = get("--recipe", "prompt-few-shot", "--prompt-depth-vision", "0", "--template", "a video of {}.")
    assert (a.prompt_tokens_text, a.prompt_depth_text, a.prompt_tokens_vision, a.prompt_depth_vision) == (10, 12, 10, 0)
    assert (a.lr, a.epochs, a.frames, a.global_batch, a.template) == (8e-3, 50, 32, 64, "a video of {}.")
    assert get("--tune", "image").tune == "image"


def test_vificlip_prompts_bad_options_name_the_fix(tiny_clip_state):
    with pytest.raises(ValueError, match="--prompt-depth-vision 3"):
        build("vificlip", tiny_clip_state, **{**PROMPTS, "prompt_depth_vision": 4})
    with pytest.raises(ValueError, match="drop --tune"):
        build("vificlip", tiny_clip_state, tune="image", **PROMPTS)
    with pytest.raises(ValueError, match="--prompt-tokens-text"):
        build("vificlip", tiny_clip_state, **{**PROMPTS, "prompt_tokens_text": 30})


@pytest.mark.parametrize("recipe,expected", [("prompt-base2novel", 184_320), ("prompt-few-shot", 153_600)])
def test_vificlip_prompts_trainable_count_at_vit_b16(recipe, expected):
    """The real ViT-B/16 and the real Model, built on the meta device (shapes only, 50 ms instead of 1.5 s)."""
    import open_clip
    args, _ = train.get_args(["--method", "vificlip", "--recipe", recipe, "--train-list", "t.txt"])
    with torch.device("meta"):
        clip = open_clip.create_model("ViT-B-16", device="meta")
    assert common.count_params(clip) == 149_620_737                # all of CLIP B/16, every tower trained
    model = vificlip.build(clip, args)
    assert common.count_params(model, trainable=True) == expected
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(vificlip.is_prompt(n) for n in names) and "prompt_learner.ctx" in names


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
    sparse = data.read_frames(path, [3, 60, 110])              # key frames every 8: seeks
    dense = data.read_frames(path, list(range(120)))            # one sequential pass
    torch.testing.assert_close(sparse, dense[[3, 60, 110]])


@pytest.mark.parametrize("keyint", [250, 16, 5])
def test_seeks_by_the_key_frame_index_give_exactly_the_sequential_frames(tmp_path, keyint):
    """B-frames (x264's veryfast preset) with sparse, short and very short key-frame intervals: any set of
    frames, in any order, equals the same frames of one pass decoding every frame."""
    frames = data.render_clip("square", "moving right", np.random.default_rng(2), T=150, size=64)
    path = str(tmp_path / "video.mp4")
    data.write_video(path, frames, keyint=keyint)
    with av.open(path) as container:
        assert sum(e.is_keyframe for e in container.streams.video[0].index_entries) == -(-150 // keyint)
    every = data.read_frames(path, range(150))
    rng = random.Random(keyint)
    for wanted in ([0, 149], [149, 0, 75], [16, 17, 40, 41, 120],
                   data.sample_indices(150, 8, "segment", train=True, rng=rng),
                   data.sample_indices(150, 16, "dense", stride=4, train=True, rng=rng),
                   sorted(rng.sample(range(150), 30))):
        assert torch.equal(data.read_frames(path, wanted), every[list(wanted)]), wanted


def test_reencode_keeps_the_frames_at_a_short_side_with_frequent_key_frames(tmp_path):
    src, dst = str(tmp_path / "src.mp4"), str(tmp_path / "fast" / "dst.mp4")
    frames = np.stack([np.kron(data.render_clip("circle", "growing", np.random.default_rng(3), T=40, size=64)[t],
                               np.ones((1, 2, 1), np.uint8))[:, :96] for t in range(40)])   # (40, 64, 96, 3)
    data.write_video(src, frames, fps=25, keyint=250)
    data.reencode(src, dst, short_side=32, keyint=16)
    out = data.read_frames(dst, range(40))
    with av.open(dst) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 25 and [e.is_keyframe for e in stream.index_entries].count(True) == 3
    smaller = torch.nn.functional.interpolate(data.read_frames(src, range(40)).permute(0, 3, 1, 2).float(),
                                              size=(32, 48), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    assert out.shape == (40, 32, 48, 3) and (out.float() - smaller).abs().mean() < 6   # x264 crf 23 on a tiny clip


class Start:
    """A stand-in rng whose uniform() returns a chosen clip start (the official decoder's random.uniform)."""
    def __init__(self, start):
        self.start = start

    def uniform(self, low, high):
        return self.start


def test_tsn_sampling_is_mmaction2s_sample_frames():
    """The official SampleFrames(clip_len=1, num_clips=T) (X-CLIP's datasets/pipeline.py), worked by hand."""
    # test: int(i * a + a / 2), a = n / T
    assert data.sample_indices(80, 8, "segment") == [5, 15, 25, 35, 45, 55, 65, 75]
    assert data.sample_indices(37, 8, "segment") == [2, 6, 11, 16, 20, 25, 30, 34]
    # n < T, train and test alike: np.around(arange(8) * 5 / 8) = around(0, .625, 1.25, 1.875, 2.5, ..) (2.5 -> 2)
    assert data.sample_indices(5, 8, "segment", train=True) == [0, 1, 1, 2, 2, 3, 4, 4]
    assert data.sample_indices(5, 8, "segment") == [0, 0, 1, 2, 2, 3, 4, 4]   # int(i * .625 + .3125)
    # train, n mod T > 0: segments of n // T = 4 frames, so frames 32..36 are never drawn
    rng, seen = random.Random(0), set()
    for _ in range(300):
        idx = data.sample_indices(37, 8, "segment", train=True, rng=rng)
        assert all(4 * i <= f < 4 * i + 4 for i, f in enumerate(idx))
        seen.update(idx)
    assert seen == set(range(32))
    # several test clips are training draws (X-CLIP's multi-view test uses the training sampler), seeded per video
    views = [data.sample_indices(80, 8, "segment", clip=k, num_clips=4, rng=random.Random(f"0:test:{k}"))
             for k in range(4)]
    assert all(all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(v)) for v in views)
    assert len(set(map(tuple, views))) > 1


@pytest.mark.parametrize("n,T,official", [
    (1, 8, [0] * 8),
    (3, 8, [0, 0, 1, 1, 2, 2, 2, 0]),   # around(7 * 3 / 8) = 3, looped to 0
    (7, 8, [0, 1, 2, 3, 4, 4, 5, 6]),
    (20, 32, [0, 1, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 8, 8, 9, 9, 10, 11, 11, 12, 12, 13, 14, 14, 15, 16, 16, 17, 18, 18,
              19, 19]),
])
def test_a_video_shorter_than_the_clip_gets_the_official_looped_frames(n, T, official):
    """SampleFrames with out_of_bound_opt "loop", its default: np.around(arange(T) * n / T) mod n, in training and
    in a test of several clips; never an index outside [0, n), on either sampler and every test path."""
    assert data.sample_indices(n, T, "segment", train=True) == official
    assert data.sample_indices(n, T, "segment", clip=1, num_clips=3) == official
    for kwargs in (dict(train=True), dict(), dict(clip=2, num_clips=3)):
        for mode, extra in (("segment", {}), ("dense", dict(stride=16, fps=25.0)),
                            ("dense", dict(stride=8, ticks=512))):
            idx = data.sample_indices(n, T, mode, rng=random.Random(0), **extra, **kwargs)
            assert len(idx) == T and all(0 <= i < n for i in idx), (mode, extra, kwargs, idx)


def test_cli_videos_of_1_and_3_frames_train_and_test(tmp_path):
    """Valid videos shorter than the clip (--frames 8), on both samplers: the run finishes."""
    rng = np.random.default_rng(0)
    for name, n in (("one.mp4", 1), ("three.mp4", 3)):
        data.write_video(str(tmp_path / name), rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
        assert data.video_info(str(tmp_path / name))[0] == n
    (tmp_path / "list.txt").write_text("one.mp4 0\nthree.mp4 1\n")
    (tmp_path / "classes.csv").write_text("0,a\n1,b\n")
    for sampling in ("segment", "dense"):
        results = train.main(["--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "list.txt"),
                              "--data-root", str(tmp_path), "--classes", str(tmp_path / "classes.csv"),
                              "--model", "tiny", "--frames", "8", "--batch-size", "2", "--accum-steps", "1",
                              "--epochs", "1", "--workers", "0", "--sampling", sampling, "--test-clips", "2",
                              "--out", str(tmp_path / sampling)])
        assert results["test"][0]["videos"] == 2


def test_dense_sampling_is_the_official_pyav_decoders():
    """Open-VCLIP's decoder.py (pyav, TARGET_FPS 30, SAMPLING_RATE 16, 8 frames), worked by hand: the window is
    ceil(16 * 7 / 30 * fps) frames from start = free * k / 3 (test) or uniform(0, free) (train); the frames with
    timestamps int(start * ticks) .. int((start + window - 1) * ticks) and one more are kept, and the picks are
    linspace(0, 16 * 8 / 30 * fps - 1, 8), truncated and clamped to the kept ones. The official decoder run on
    such files (300 frames at 30 and 25 fps, 60 frames) returns the same frames."""
    def dense(n, fps, **k):
        return data.sample_indices(n, 8, "dense", 16, fps=fps, ticks=512, **k)
    # 300 frames at 30 fps: window 112, free 188; starts 0, 62.67, 125.33 -> kept frames 0..112, 63..174, 126..237
    assert dense(300, 30, clip=0, num_clips=3) == [0, 18, 36, 54, 72, 90, 108, 112]
    assert dense(300, 30, clip=1, num_clips=3) == [63, 81, 99, 117, 135, 153, 171, 174]
    assert dense(300, 30, clip=2, num_clips=3) == [126, 144, 162, 180, 198, 216, 234, 237]
    # 25 fps: window ceil(93.3) = 94, picks linspace(0, 105.67, 8) clamped to the 95 kept frames
    assert dense(300, 25, clip=0, num_clips=3) == [0, 15, 30, 45, 60, 75, 90, 94]
    # start 137.33: kept frames 138..231 (94 of them, so the last pick, 105.67, is clamped to 93)
    assert dense(300, 25, clip=2, num_clips=3) == [138, 153, 168, 183, 198, 213, 228, 231]
    # 60 frames: the window does not fit, every frame is kept and the last one repeats
    assert dense(60, 30, clip=1, num_clips=3) == [0, 18, 36, 54, 59, 59, 59, 59]
    # training windows: start 10.3 keeps frames 11..122 (timestamps from int(5273.6) to int(62105.6), and one more)
    assert dense(300, 30, train=True, rng=Start(10.3)) == [11, 29, 47, 65, 83, 101, 119, 122]
    assert dense(300, 30, train=True, rng=Start(188.0)) == [188, 206, 224, 242, 260, 278, 296, 299]


def test_dense_sampling_reads_the_videos_own_rate_and_timestamps(tmp_path):
    frames = np.zeros((60, 16, 16, 3), np.uint8)
    for fps in (30, 25):
        path = str(tmp_path / f"v{fps}.mp4")
        data.write_video(path, frames, fps=fps, keyint=30)
        n, rate, ticks = data.video_info(path)
        assert (n, rate) == (60, fps) and ticks and float(ticks).is_integer()
        clips = data.clip_indices(path, 8, "dense", 16, num_clips=3)
        assert clips[0] == data.sample_indices(60, 8, "dense", 16, fps=fps, ticks=ticks)
    assert clips == [[0, 15, 30, 45, 59, 59, 59, 59]] * 3          # 25 fps: window 94 > 60 frames


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


def damaged_copy(good, bad, gop=1):
    """A copy of the video `good` with 6 bytes flipped in the middle of its key frame number `gop` (0-based):
    FFmpeg decodes it without an error, concealing the broken blocks, as with a real damaged download."""
    with av.open(good) as container:
        keys = [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.is_keyframe]
    flip_bytes(good, bad, *keys[gop])


def flip_bytes(good, bad, pos, size):
    """bad = good with 6 bytes flipped in the middle of the packet at byte `pos`, `size` bytes long."""
    content = bytearray(open(good, "rb").read())
    for i in range(pos + size // 2, pos + size // 2 + 6):
        content[i] ^= 0x5A
    open(bad, "wb").write(bytes(content))


def test_damaged_frames_are_refused_naming_the_file_and_frame_the_others_come_out_exact(tmp_path):
    good, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    data.write_video(good, data.render_clip("circle", "moving left", np.random.default_rng(1), T=24))  # keys 0, 8, 16
    damaged_copy(good, bad, gop=1)
    frames = data.read_frames(good, range(24))
    with pytest.raises(data.VideoError, match=r"bad.mp4: frame 9 may be damaged"):
        data.read_frames(bad, [9])
    with pytest.raises(data.VideoError, match=r"bad.mp4: frame \d+ may be damaged"):
        data.read_frames(bad, range(24))
    assert torch.equal(data.read_frames(bad, [0, 2, 4]), frames[[0, 2, 4]])        # before the damage
    assert torch.equal(data.read_frames(bad, [16, 20, 23]), frames[[16, 20, 23]])  # after the next clean key frame


PICT = av.video.frame.PictureType   # frame.pict_type is a bare int in PyAV 18
# read_frames lets the H.264 decoder skip the non-reference frames it is not asked for (skip_frame NONREF): the
# frames must be those of a plain decode of every frame, for any indices, and odd files (timestamps with a gap
# or a repeat, damage) must come out as they did without skipping.

FRAMES = 300   # frames: a key-frame interval of 250 leaves a second, short group of pictures


def moving_texture(T, height=64, width=96, seed=0):
    """(T,H,W,3) uint8: a blotchy, grainy texture panning diagonally, with a bright square crossing it: every
    frame differs, as in real video, so x264 makes P- and B-frames that all carry data."""
    rng = np.random.default_rng(seed)
    H, W = height + T // 2 + 1, width + T + 1
    blotches = np.kron(rng.uniform(0, 255, (H // 8 + 2, W // 8 + 2, 3)), np.ones((8, 8, 1)))[:H, :W]
    texture = 0.5 * blotches + rng.normal(0, 20, (H, W, 3)) + 40
    frames = np.empty((T, height, width, 3), np.uint8)
    for t in range(T):
        frame = texture[t // 2:t // 2 + height, t:t + width].copy()
        x = (2 * t) % (width - 16)
        frame[20:36, x:x + 16] = 240
        frames[t] = frame.clip(0, 255)
    return frames


def decode_all(path):
    """Every frame of a plain decode (FFmpeg's default threads, nothing skipped): [(pts, (H,W,3) uint8)]."""
    with av.open(path) as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


@pytest.fixture(scope="module", params=[250, 16, 5])
def textured_video(request, tmp_path_factory):
    keyint = request.param
    path = str(tmp_path_factory.mktemp(f"keyint{keyint}") / "video.mp4")
    data.write_video(path, moving_texture(FRAMES), fps=30, keyint=keyint)
    return path, keyint, np.stack([a for _, a in decode_all(path)])


def test_x264_writes_non_reference_b_frames_that_nonref_skips(textured_video):
    path, keyint, every = textured_video
    with av.open(path) as container:
        keys = sum(e.is_keyframe for e in container.streams.video[0].index_entries)
        types = [PICT(f.pict_type).name for f in container.decode(video=0)]
    assert len(types) == FRAMES and keys == types.count("I") == -(-FRAMES // keyint) and types.count("B") > FRAMES // 3
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = {round(f.pts * stream.time_base * 30): f.to_ndarray(format="rgb24") for f in container.decode(stream)}
    assert FRAMES // 4 < FRAMES - len(kept) < types.count("B")   # most B-frames are skipped, the reference ones not
    assert all(np.array_equal(a, every[i]) for i, a in kept.items())


def index_sets(n, seed):
    rng = random.Random(seed)
    for T in (8, 16, 32):
        for _ in range(3):
            yield data.sample_indices(n, T, "segment", train=True, rng=rng)
        for clip in range(3):
            yield data.sample_indices(n, T, "segment", clip=clip, num_clips=3)
    for _ in range(3):
        yield data.sample_indices(n, 8, "dense", stride=16, train=True, rng=rng)
        yield data.sample_indices(n, 16, "dense", stride=4, train=True, rng=rng)
        yield data.sample_indices(n, 32, "dense", stride=2, train=True, rng=rng)
    for clip in range(3):
        yield data.sample_indices(n, 8, "dense", stride=16, clip=clip, num_clips=3)
    yield list(range(n))                                                   # dense: every frame
    yield list(range(100, 140))
    for size in (2, 5, 40):
        yield sorted(rng.sample(range(n), size))
        yield rng.sample(range(n), size)                                   # any order
    for i in [0, 1, 2, 3, 5, 16, 17, 249, 250, 251, 298, n - 1]:
        yield [i]                                                          # single frames, the last one
    yield [n - 1, 0]
    yield [5, 5, 5, 6, 5]                                                  # repeats
    yield [n - 1, n - 1, 120, 119, 119]
    yield [3, 4] + [7] * 3 + [250, 251, 252]


def test_read_frames_are_exactly_the_frames_of_a_full_decode(textured_video):
    path, keyint, every = textured_video
    for wanted in index_sets(FRAMES, keyint):
        got = data.read_frames(path, wanted)
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), every[wanted]), (keyint, wanted)


@pytest.fixture(scope="module", params=["open-gop=1:keyint=24:min-keyint=24:bframes=3:b-pyramid=normal:scenecut=0",
                                        "open-gop=1:keyint=24:min-keyint=24:bframes=2:b-pyramid=none:scenecut=0",
                                        "intra-refresh=1:keyint=60"])
def valid_after_seek_video(request, tmp_path_factory):
    """Valid H.264 whose frames just after a seek point refer to frames before it (open GOPs, intra refresh):
    a decode that starts at the seek point reports trouble a decode from the start does not."""
    path = str(tmp_path_factory.mktemp("seek") / "video.mp4")
    keyint = int(re.search(r"keyint=(\d+)", request.param)[1])
    data.write_video(path, moving_texture(FRAMES), fps=30, keyint=keyint, options={"x264-params": request.param})
    return path, np.stack([a for _, a in decode_all(path)])


def test_valid_video_is_not_refused_for_what_a_seek_makes_the_decoder_report(valid_after_seek_video):
    path, every = valid_after_seek_video
    for wanted in [[45], [0, 30, 60], [60], [200], *index_sets(FRAMES, 7)]:
        got = data.read_frames(path, wanted)
        assert np.array_equal(got.numpy(), every[wanted]), wanted


def test_skipping_changes_no_frame_of_the_code_without_it(textured_video):
    path, keyint, every = textured_video
    for wanted in list(index_sets(FRAMES, keyint + 1))[::8]:   # some of every kind
        wanted = sorted(set(wanted))
        with_skip, without = data._decode(path, wanted, True), data._decode(path, wanted, True, skip=False)
        assert with_skip.keys() == without.keys() and all(np.array_equal(with_skip[k], without[k]) for k in wanted)


def encode(path, frames, pts, pyramid=True):
    """frames -> mkv (millisecond timestamps `pts`), x264 with 3 B-frames, reference B-frames only if pyramid."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "20", "preset": "veryfast", "x264-params":
                                      f"bframes=3:b-adapt=0:scenecut=0:b-pyramid={'normal' if pyramid else 'none'}"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, t in zip(frames, pts):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            container.mux(stream.encode(f))
        container.mux(stream.encode())


def test_a_gap_in_the_timestamps_gives_the_next_frame_as_without_skipping(tmp_path):
    """No reference B-frames: B-frames 1, 2, 3 of each group of 4 are all skippable. With no frame at 80 ms
    (number 2) and 880 ms (22), frame 2 asked for is the next one, 3, which skipping would have skipped."""
    frames = moving_texture(40, seed=1)
    path = str(tmp_path / "gap.mkv")
    kept = [i for i in range(40) if i not in (2, 22)]
    encode(path, frames[kept], [40 * i for i in kept], pyramid=False)
    with av.open(path) as container:
        assert container.streams.video[0].average_rate == 25
        assert [PICT(f.pict_type).name for f in container.decode(video=0)][:5] == ["I", "B", "B", "B", "P"]
    plain = dict(decode_all(path))                                 # {pts: frame}
    first_from = lambda k: plain[min(p for p in plain if p >= 40 * k)]
    with pytest.raises(data._Skipped):
        data._decode(path, [2], True)
    for wanted in ([2], [1, 2], [2, 3], [2, 22], [0, 2, 10, 22, 39], list(range(40)), [22, 2, 2]):
        got = data.read_frames(path, wanted).numpy()
        assert all(np.array_equal(g, first_from(k)) for g, k in zip(got, wanted)), wanted
        without = data._decode(path, sorted(set(wanted)), True, skip=False)
        assert all(np.array_equal(g, without[k]) for g, k in zip(got, wanted)), wanted


def test_repeated_timestamps_fall_back_to_counting_frames_as_without_skipping(tmp_path):
    """Frames 5 and 6 one millisecond apart (both numbered 5) and 6..: timestamps cannot place the frames, so
    frames are counted from the start, also when the two were skipped and only their numbers seen."""
    frames = moving_texture(40, seed=2)
    path = str(tmp_path / "repeat.mkv")
    pts = [40 * i for i in range(40)]
    pts[6] = pts[5] + 1
    encode(path, frames, pts, pyramid=False)
    plain = [a for _, a in decode_all(path)]
    with pytest.raises(data._Skipped):                          # frames 5 and 6 were skipped, their numbers seen
        data._decode(path, [4, 30], True)
    with pytest.raises(data._BadTimestamps):
        data._decode(path, [4, 30], True, skip=False)
    for wanted in ([4, 30], [3, 7], [5], [6], [0, 39], list(range(40))):
        got = data.read_frames(path, wanted).numpy()
        assert all(np.array_equal(g, plain[k]) for g, k in zip(got, wanted)), wanted


def flipped(good, bad, frame):
    """A copy of `good` with 6 bytes flipped in the middle of the packet of frame number `frame` (pts order)."""
    with av.open(good) as container:
        stream = container.streams.video[0]
        packets = {round(p.pts * stream.time_base * stream.average_rate): (p.pos, p.size)
                   for p in container.demux(stream) if p.size}
    flip_bytes(good, bad, *packets[frame])


def test_damage_is_refused_every_time_and_the_clean_frames_come_out_exact(tmp_path):
    good, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    data.write_video(good, moving_texture(48, seed=3), fps=30, keyint=16)        # key frames 0, 16, 32
    every = data.read_frames(good, range(48))
    flipped(good, bad, 16)                                                       # the second key frame
    for _ in range(3):                                   # again and again: the log must be heard every time
        with pytest.raises(data.VideoError, match=r"bad.mp4: frame 20 may be damaged"):
            data.read_frames(bad, [20])
        with pytest.raises(data.VideoError, match=r"bad.mp4: frame \d+ may be damaged"):
            data.read_frames(bad, [2, 13, 18, 40])
    assert torch.equal(data.read_frames(bad, [0, 5, 9]), every[[0, 5, 9]])       # before the damage
    assert torch.equal(data.read_frames(bad, [32, 40, 47]), every[[32, 40, 47]])  # after the next clean key frame


def test_a_damaged_video_read_again_is_refused_again(tmp_path):
    """PyAV drops a log message identical to the one before it, even from an earlier file: damage that logs one
    kind of message (two frames missing: 'mmco: unref short failure') must be refused at every read."""
    good, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    data.write_video(good, data.render_clip("square", "moving right", np.random.default_rng(0), T=150), keyint=250)
    with av.open(good) as inp, av.open(bad, "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.size and round(packet.pts * packet.time_base * 8) not in (50, 51):
                packet.stream = stream
                out.mux(packet)
    for _ in range(3):
        with pytest.raises(data.VideoError, match=r"bad.mp4: frame \d+ may be damaged.*'mmco: unref short failure'"):
            data.read_frames(bad, range(148))


def test_damage_in_a_skipped_frame_harms_no_other_frame_and_a_wanted_one_is_refused(tmp_path):
    """Without skipping, a broken B-frame that nothing refers to made every frame after it, up to the next key
    frame, refused; skipped, it harms none. (FFmpeg does not notice every broken B-frame: take one it does.)"""
    good, bad = str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")
    data.write_video(good, moving_texture(48, seed=4), fps=30, keyint=250)
    every = data.read_frames(good, range(48))
    with av.open(good) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = {round(f.pts * stream.time_base * 30) for f in container.decode(stream)}
    for nonref in sorted(set(range(10, 40)) - kept):                           # frames nothing refers to
        flipped(good, bad, nonref)
        with av.logging.Capture() as logs, av.open(bad) as container:
            frames = list(container.decode(video=0))
        if logs or any(f.is_corrupt for f in frames):
            break
    else:
        pytest.skip("FFmpeg noticed none of the broken B-frames")
    with pytest.raises(data.VideoError, match=rf"bad.mp4: frame {nonref} may be damaged"):
        data.read_frames(bad, [nonref])
    others = [i for i in range(0, 48, 3) if i != nonref]
    assert torch.equal(data.read_frames(bad, others), every[others])
    with pytest.raises(data.VideoError, match=r"bad.mp4: frame \d+ may be damaged"):
        data._decode(bad, others, True, skip=False)                           # as it was without skipping


def test_rotation_flag_is_applied_and_a_size_change_is_brought_to_the_first_size(tmp_path):
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255                                           # a white block at the top left
    for degrees, block in ((90, (slice(-16, None), slice(0, 16))), (-90, (slice(0, 16), slice(-16, None)))):
        path = str(tmp_path / f"rotated{degrees}.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=8, options={"qp": "0"})
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
            stream.set_display_rotation(degrees)                    # counterclockwise, as a phone flags it
            for _ in range(4):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        shown = data.read_frames(path, [0, 3])
        assert shown.shape == (2, 64, 48, 3)                        # upright, as a player shows it
        assert shown[0][block].float().mean() > 200 and shown[0].float().mean() < 255 * 16 * 16 / (64 * 48) + 20

    # A raw H.264 stream whose size changes midway (two encodings joined): every frame at the first size.
    parts = []
    for k, (h, w) in enumerate(((64, 64), (32, 48))):
        path = str(tmp_path / f"part{k}.h264")
        with av.open(path, "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=8, options={"qp": "0"})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for _ in range(6):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 100 + 50 * k, np.uint8),
                                                                       format="rgb24")))
            container.mux(stream.encode())
        parts.append(open(path, "rb").read())
    joined = tmp_path / "joined.h264"
    joined.write_bytes(b"".join(parts))
    frames = data.read_frames(str(joined), range(12))
    assert frames.shape == (12, 64, 64, 3)
    assert (frames[:6].float().mean() - 100).abs() < 3 and (frames[6:].float().mean() - 150).abs() < 3


def test_lists_and_class_files_as_people_write_them(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_bytes("\ufeffa b/clip one.mp4 0\r\n\r\nc.mp4 1\r\n".encode("utf-8"))   # BOM, Windows line ends
    assert data.read_list(str(listed)) == [("a b/clip one.mp4", 0), ("c.mp4", 1)]
    classes = tmp_path / "classes.csv"
    classes.write_bytes('\ufeffid,name\r\n0,"push, then pull"\r\n1,"say ""hi"""\r\n2,plain, unquoted\r\n'.encode())
    assert data.load_classes(str(classes)) == ["push, then pull", 'say "hi"', "plain, unquoted"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(data.DataError, match="empty.txt: lists no videos"):
        data.read_list(str(empty))
    # No comments: HMDB51 names videos "#437_...", listed without a folder by ViFi-CLIP's released lists
    hashed = tmp_path / "fs_base_s1_train.txt"
    hashed.write_text("#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi 5\nc.mp4 1\n# a note 2\n")
    assert data.read_list(str(hashed)) == [("#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi", 5),
                                            ("c.mp4", 1), ("# a note", 2)]   # a video too: a missing one is refused
    gap = tmp_path / "gap.csv"
    gap.write_text("0,a\n2,c\n")
    with pytest.raises(data.DataError, match="gap.csv: class ids must run 0..C-1 without gaps.*no id 1"):
        data.load_classes(str(gap))
    (tmp_path / "a b").mkdir()
    for name in ("a b/clip one.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"")
    beyond = tmp_path / "beyond.txt"
    beyond.write_text("a b/clip one.mp4 0\nc.mp4 7\n")
    with pytest.raises(data.DataError, match=r"beyond.txt:2: label 7 is no class id: 3 classes"):
        data.read_dataset(str(beyond), str(tmp_path), classes=["x", "y", "z"])
    absent = tmp_path / "absent.txt"
    absent.write_text("c.mp4 0\n\ngone.mp4 1\n")
    samples, _ = data.read_dataset(str(absent), str(tmp_path), classes=["x", "y"])
    with pytest.raises(data.DataError, match=r"absent.txt:3: no video at .*gone.mp4 \(1 of the 2 listed are missing\)"):
        data.check_videos(str(absent), str(tmp_path), samples)


def test_uint8_clips_normalised_on_the_device_equal_the_transforms_own_normalisation():
    frames = torch.randint(0, 256, (6, 40, 56, 3), dtype=torch.uint8)
    for make in (lambda **k: data.TrainTransform(32, data.CLIP_MEAN, data.CLIP_STD, **k),
                 lambda **k: data.TestTransform(32, data.CLIP_MEAN, data.CLIP_STD, crops=3, **k)):
        raw = make(normalise=False)(frames, *([random.Random(3)] if isinstance(make(), data.TrainTransform) else []))
        done = make()(frames, *([random.Random(3)] if isinstance(make(), data.TrainTransform) else []))
        assert raw.dtype == torch.uint8 and torch.equal(data.normalise(raw, data.CLIP_MEAN, data.CLIP_STD), done)
        batch = torch.stack([raw, raw])                              # a batch, as train.py normalises it
        assert torch.equal(data.normalise(batch, data.CLIP_MEAN, data.CLIP_STD)[1], done)


def test_colour_applied_to_the_batch_on_the_device_equals_the_transform_applying_it():
    """TrainTransform(defer_colour=True) hands the colour draws on; data.colour_batch applies them to a batch
    (on the device in training): on the CPU the same bits as the transform colouring each clip itself."""
    frames = torch.randint(0, 256, (4, 40, 56, 3), dtype=torch.uint8)
    whole = data.TrainTransform(32, data.CLIP_MEAN, data.CLIP_STD, normalise=False)
    deferred = data.TrainTransform(32, data.CLIP_MEAN, data.CLIP_STD, defer_colour=True)
    clips, draws, done = [], [], []
    for seed in range(24):
        clip, d = deferred(frames, random.Random(seed))
        clips.append(clip)
        draws.append(d)
        done.append(whole(frames, random.Random(seed)))
    draws = torch.stack(draws)                                          # (24, T=4, 10)
    assert draws[:, 0, 0].any() and (draws[:, 0, 0] == 0).any() and draws[:, 0, 9].any()  # jitter, none, grayscale
    # X-CLIP's ColorJitter: jitter or not, and grayscale, once per clip; the factors and their order per frame
    assert (draws[:, :, [0, 9]] == draws[:, :1, [0, 9]]).all()
    jittered = draws[draws[:, 0, 0] == 1]                               # (n, T, 10)
    assert (jittered[:, 1:, 1:5] != jittered[:, :1, 1:5]).all()       # every frame its own factors
    assert len({tuple(frame[5:9].tolist()) for clip in jittered for frame in clip}) > 1   # and orders
    assert torch.equal(data.colour_batch(torch.stack(clips), draws), torch.stack(done))
    one = data.colour(clips[0][:1], draws[0][:1])                       # a frame coloured alone: the same pixels
    assert torch.equal(one[0], done[0][0])


def test_colour_of_many_frames_at_once_is_torchvisions_per_frame():
    """data.colour runs each operation on all the frames it concerns at once, each frame with its own factor: the
    formulas of torchvision's adjust_* on uint8 images, run frame by frame, to within rounding."""
    ops = (F_v2.adjust_brightness, F_v2.adjust_contrast, F_v2.adjust_saturation, F_v2.adjust_hue)
    rng, diffs = random.Random(0), []
    for _ in range(20):
        x = torch.randint(0, 256, (6, 3, 12, 20), dtype=torch.uint8)
        draws = data._colour_draws(rng, 6, 1.0, 0.3)
        frames = []
        for frame, row in zip(x, draws.tolist()):
            for k in map(int, row[5:9]):
                frame = ops[k](frame, row[1 + k])
            frames.append(F_v2.rgb_to_grayscale(frame, num_output_channels=3) if row[9] else frame)
        diffs.append((data.colour(x, draws).int() - torch.stack(frames).int()).abs())
    diffs = torch.stack(diffs)
    assert diffs.max() <= 2 and diffs.float().mean() < 1e-3


def test_colour_one_frame_at_a_time_on_large_cpu_frames_gives_the_same_bits(monkeypatch):
    """On a CPU, frames of 96 px and more are coloured one at a time (cheaper there): the same pixels, to the bit,
    as all the frames at once, the way a GPU and small frames take them."""
    rng = random.Random(1)
    x = torch.randint(0, 256, (5, 3, 96, 100), dtype=torch.uint8)
    draws = [data._colour_draws(rng, 5, 1.0, 0.4) for _ in range(6)]
    one_by_one = [data.colour(x, d) for d in draws]
    monkeypatch.setattr(data, "_ONE_BY_ONE", 10 ** 9)                    # all at once, whatever the size
    assert all(torch.equal(a, data.colour(x, d)) for a, d in zip(one_by_one, draws))


def test_clips_per_video_come_from_one_decoding_pass_each_its_own_draw(tmp_path, monkeypatch):
    path = str(tmp_path / "v.mp4")
    data.write_video(path, data.render_clip("circle", "moving left", np.random.default_rng(1), T=24))
    transform = data.TrainTransform(32, data.CLIP_MEAN, data.CLIP_STD, defer_colour=True)
    one = data.VideoDataset([(path, 3)], "", 4, transform, train=True, seed=5)
    three = data.VideoDataset([(path, 3)], "", 4, transform, train=True, seed=5, clips_per_video=3,
                              return_index=True)
    decoded, read = [], data.read_frames
    monkeypatch.setattr(data, "read_frames", lambda p, i: decoded.append(list(i)) or read(p, i))
    video, label, draws, index = three[0]
    assert video.shape == (3, 4, 3, 32, 32) and draws.shape == (3, 4, 10) and (label, index) == (3, 0)
    assert len(decoded) == 1 and len(decoded[0]) == 12                  # 3 clips x 4 frames, one pass
    assert not torch.equal(video[0], video[1]) and not torch.equal(video[1], video[2])
    clip, label, d = one[0]                                             # K = 1: what a clip always was
    rng = random.Random("5:0:0")
    expected = transform(read(path, data.sample_indices(24, 4, train=True, rng=rng)), rng)
    assert torch.equal(clip, expected[0]) and torch.equal(d, expected[1])


def test_cli_clips_per_video_and_colour_of_whole_batches_give_the_numbers_of_colour_clip_by_clip(
        synthetic, tmp_path, monkeypatch, capsys):
    """The training loop colours whole batches (colour drawn in the workers, applied on the device), here with 2
    clips per video: every figure equals a run that colours each clip alone, as the transform itself would."""
    paths = synthetic(tmp_path / "set")
    argv = tiny_run_args(paths, "--epochs", "1", "--clips-per-video", "2", "--val-every", "0", "--test-clips", "1")
    train.main(argv + ["--out", str(tmp_path / "batch")])
    assert "batch 4 (2 videos x 2 clips) x 1 accumulation = 4" in capsys.readouterr().out
    monkeypatch.setattr(data, "colour_batch", lambda video, draws: torch.stack(
        [data.colour(clip, d) for clip, d in zip(video, draws)]))
    train.main(argv + ["--out", str(tmp_path / "alone")])
    drop = ("seconds", "val_seconds", "clips_per_s", "data_wait", "weights")
    a, b = ([{k: v for k, v in r.items() if k not in drop}
             for r in train.read_metrics(str(tmp_path / run / "metrics.jsonl"))] for run in ("batch", "alone"))
    assert a == b and len(a) == 3


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
# data.py: datasets in their published formats, and the protocols' selections
# ---------------------------------------------------------------------------------------------------------


def touch_files(root, *relative):
    for rel in relative:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text)


# ---------------------------------------------------------------- UCF101

def ucf_fixture(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    # CRLF line ends and a trailing space, as the official files have
    write_text(str(lists / "classInd.txt"), "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    write_text(str(lists / "trainlist01.txt"),
          "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
          "YoYo/v_YoYo_g08_c01.avi 3\r\n"
          "HandstandPushups/v_HandStandPushups_g08_c01.avi 2 \r\n")
    write_text(str(lists / "testlist01.txt"),
          "YoYo/v_YoYo_g01_c01.avi\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
          "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    write_text(str(lists / "trainlist02.txt"), "YoYo/v_YoYo_g01_c01.avi 3\n")
    return lists


def test_data_ucf101_folder_and_file_forms(tmp_path):
    lists = ucf_fixture(tmp_path)
    root = str(tmp_path / "UCF-101")
    train, names = data.read_dataset(str(lists), root)
    assert names == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]  # classInd order, verbatim
    assert train == [(os.path.join(root, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"), 0),
                     (os.path.join(root, "YoYo/v_YoYo_g08_c01.avi"), 2),
                     (os.path.join(root, "HandstandPushups/v_HandStandPushups_g08_c01.avi"), 1)]
    test, _ = data.read_dataset(str(lists), root, train=False)
    assert [label for _, label in test] == [2, 0, 1]  # from the folder part, 0-indexed
    assert test[0][0] == os.path.join(root, "YoYo/v_YoYo_g01_c01.avi")
    assert data.read_dataset(str(lists), root, split=2) == ([(os.path.join(root, "YoYo/v_YoYo_g01_c01.avi"), 2)], names)
    # the file form: split and train come from the file name, whatever the arguments say
    assert data.read_dataset(str(lists / "testlist01.txt"), root, train=True, split=3) == (test, names)
    assert data.read_dataset(str(lists / "trainlist01.txt"), root, train=False) == (train, names)


def test_data_ucf101_bad_lines(tmp_path):
    lists = ucf_fixture(tmp_path)
    with open(lists / "testlist01.txt", "a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi\r\n")  # a class that classInd.txt lacks
    with pytest.raises(ValueError, match=r"testlist01\.txt:4: "):
        data.read_dataset(str(lists), train=False)
    with open(lists / "trainlist01.txt", "a") as f:
        f.write("YoYo/v_YoYo_g09_c01.avi 4\r\n")  # label out of 1..3
    with pytest.raises(ValueError, match=r"trainlist01\.txt:4: "):
        data.read_dataset(str(lists))
    write_text(str(lists / "classInd.txt"), "1 ApplyEyeMakeup\n3 YoYo\n")  # a gap in the ids
    with pytest.raises(ValueError, match=r"classInd\.txt:2: "):
        data.read_dataset(str(lists))


# ---------------------------------------------------------------- HMDB51

def hmdb_fixture(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    for name in ("ride_bike", "brush_hair"):  # written out of order: ids must still be alphabetical
        for k in (1, 2, 3):
            marks = (1, 2, 0) if k == 1 else (2, 1, 1)
            write_text(str(splits / f"{name}_test_split{k}.txt"),
                  "".join(f"v_{name}_{i}.avi {m} \r\n" for i, m in enumerate(marks)))
    return splits


def test_data_hmdb51(tmp_path):
    splits = hmdb_fixture(tmp_path)
    root = str(tmp_path / "hmdb51")
    train, names = data.read_dataset(str(splits), root)
    assert names == ["brush hair", "ride bike"]
    assert train == [(os.path.join(root, "brush_hair", "v_brush_hair_0.avi"), 0),
                     (os.path.join(root, "ride_bike", "v_ride_bike_0.avi"), 1)]
    test, _ = data.read_dataset(str(splits), root, train=False)
    assert test == [(os.path.join(root, "brush_hair", "v_brush_hair_1.avi"), 0),
                    (os.path.join(root, "ride_bike", "v_ride_bike_1.avi"), 1)]  # mark 0 is in neither
    train2, _ = data.read_dataset(str(splits), root, split=2)
    assert [os.path.basename(p) for p, _ in train2] == ["v_brush_hair_1.avi", "v_brush_hair_2.avi",
                                                          "v_ride_bike_1.avi", "v_ride_bike_2.avi"]
    write_text(str(splits / "ride_bike_test_split1.txt"), "v_ride_bike_0.avi 1\nv_ride_bike_1.avi 3\n")
    with pytest.raises(ValueError, match=r"ride_bike_test_split1\.txt:2: "):
        data.read_dataset(str(splits), root)
    with pytest.raises(FileNotFoundError, match="_test_split4"):
        data.read_dataset(str(splits), root, split=4)


def test_every_line_the_official_loaders_keep_is_a_sample_hash_names_included(tmp_path):
    """Against the official loaders on the same files: mmaction2's list reader (X-CLIP, ViFi-CLIP) takes every
    non-blank line; HMDB51's split files every video of the mark; no reader has comments."""
    listed = tmp_path / "list.txt"
    lines = ["#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi 5", "ride_bike/#1 jump.avi 5", "a.avi 0"]
    listed.write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    official = [(line.rsplit(maxsplit=1)[0], int(line.rsplit(maxsplit=1)[1])) for line in lines]
    assert data.read_list(str(listed)) == official
    samples, _ = data.read_dataset(str(listed), "root", classes=[str(c) for c in range(6)])
    assert samples == [(os.path.join("root", path), label) for path, label in official]
    splits = hmdb_fixture(tmp_path)
    hashed = "#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi"
    write_text(str(splits / "ride_bike_test_split1.txt"), f"{hashed} 1 \r\nv_ride_bike_1.avi 2 \r\n")
    train, _ = data.read_dataset(str(splits), "hmdb51")
    assert train[-1] == (os.path.join("hmdb51", "ride_bike", hashed), 1)


def test_cli_a_list_of_one_hash_named_video_trains(tmp_path):
    data.write_video(str(tmp_path / "#437_ride_bike.mp4"), np.zeros((8, 32, 32, 3), dtype=np.uint8))
    (tmp_path / "list.txt").write_text("#437_ride_bike.mp4 0\n")
    (tmp_path / "classes.csv").write_text("0,ride bike\n")
    results = train.main(["--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "list.txt"),
                          "--data-root", str(tmp_path), "--classes", str(tmp_path / "classes.csv"), "--model", "tiny",
                          "--frames", "4", "--batch-size", "1", "--accum-steps", "1", "--epochs", "1", "--workers", "0",
                          "--out", str(tmp_path / "run")])
    assert results["test"][0]["videos"] == 1


# ---------------------------------------------------------------- Kinetics

KINETICS_CSV = ('label,youtube_id,time_start,time_end,split,is_cc\n'
                'abseiling,aaaaaaaaaaa,14,24,train,0\n'
                '"passing American football (in game), or not",-bbbbbbbbbb,0,10,train,0\n'
                '\n'
                'abseiling,ccccccccccc,100,110,train,0\n'
                'zumba,ddddddddddd,5,15,train,0\n')


def test_data_kinetics(tmp_path):
    write_text(str(tmp_path / "k400" / "train.csv"), KINETICS_CSV)
    root = tmp_path / "videos"
    touch_files(str(root), "abseiling/aaaaaaaaaaa_000014_000024.mp4", "-bbbbbbbbbb_000000_000010.mkv",
          "-bbbbbbbbbb_000000_000010.jpg",   # a thumbnail of the same name is no video
          "zumba/nested/ddddddddddd_000005_000015.webm")  # ccccccccccc is missing (a dead YouTube video)
    with pytest.warns(UserWarning, match=r"1 of 4 .*ccccccccccc_000100_000110"):
        samples, names = data.read_dataset(str(tmp_path / "k400" / "train.csv"), str(root))
    assert names == ["abseiling", "passing American football (in game), or not", "zumba"]
    assert samples == [(str(root / "abseiling/aaaaaaaaaaa_000014_000024.mp4"), 0),
                       (str(root / "-bbbbbbbbbb_000000_000010.mkv"), 1),
                       (str(root / "zumba/nested/ddddddddddd_000005_000015.webm"), 2)]
    # classes fix the ids (e.g. K400's order when testing on another csv); an unknown label names its line
    classes = ["zumba", "yoga", "passing American football (in game), or not", "abseiling"]
    with pytest.warns(UserWarning):
        samples, names = data.read_dataset(str(tmp_path / "k400" / "train.csv"), str(root), classes=classes)
    assert names == classes and [label for _, label in samples] == [3, 2, 0]
    with pytest.raises(ValueError, match=r"train\.csv:6: .*'zumba'"):
        data.read_dataset(str(tmp_path / "k400" / "train.csv"), str(root), classes=classes[1:])
    with pytest.raises(FileNotFoundError, match=r"train\.csv.*nowhere"):
        data.read_dataset(str(tmp_path / "k400" / "train.csv"), str(tmp_path / "nowhere"))


def test_data_kinetics_no_warning_when_complete_and_bad_lines(tmp_path):
    csv_file = str(tmp_path / "val.csv")
    write_text(csv_file, "label,youtube_id,time_start,time_end,split\nzumba,ddddddddddd,5,15,val\n")
    touch_files(str(tmp_path / "v"), "ddddddddddd_000005_000015.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.read_dataset(csv_file, str(tmp_path / "v"))[0] == [
            (str(tmp_path / "v" / "ddddddddddd_000005_000015.mp4"), 0)]
    write_text(csv_file, "label,youtube_id,time_start,time_end,split\nzumba,ddddddddddd,5,15,val\n"
                         "yoga,eeeeeeeeeee,x,10,val\n")
    with pytest.raises(ValueError, match=r"val\.csv:3: "):
        data.read_dataset(csv_file, str(tmp_path / "v"))
    write_text(csv_file, "label,youtube_id,start,end\nzumba,ddddddddddd,5,15\n")
    with pytest.raises(ValueError, match=r"val\.csv:1: "):
        data.read_dataset(csv_file, str(tmp_path / "v"))


# ---------------------------------------------------------------- Something-Something v2

def test_data_ssv2(tmp_path):
    labels = {"Holding something next to something": "1", "Pushing something from left to right": "0"}
    items = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
             {"id": "42326", "label": "pushing a cup from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a cup"]}]
    write_text(str(tmp_path / "ann" / "something-something-v2-labels.json"), json.dumps(labels))
    write_text(str(tmp_path / "ann" / "validation.json"), json.dumps(items))
    root = str(tmp_path / "20bn")
    touch_files(root, "42326.mp4")  # re-encoded: only the mp4 is there
    samples, names = data.read_dataset(str(tmp_path / "ann" / "validation.json"), root)
    assert names == ["Pushing something from left to right", "Holding something next to something"]
    assert samples == [(os.path.join(root, "78687.webm"), 1), (os.path.join(root, "42326.mp4"), 0)]
    # labels.json is the other name the labels file goes by
    os.rename(tmp_path / "ann" / "something-something-v2-labels.json", tmp_path / "ann" / "labels.json")
    assert data.read_dataset(str(tmp_path / "ann" / "validation.json"), root) == (samples, names)
    items.append({"id": "1", "template": "Dropping [something]"})  # not a class of the labels file
    write_text(str(tmp_path / "ann" / "validation.json"), json.dumps(items))
    with pytest.raises(ValueError, match=r"validation\.json: item 2: "):
        data.read_dataset(str(tmp_path / "ann" / "validation.json"), root)
    write_text(str(tmp_path / "ann" / "validation.json"), '[\n{"id": "1",\n')
    with pytest.raises(ValueError, match=r"validation\.json:3: "):
        data.read_dataset(str(tmp_path / "ann" / "validation.json"), root)
    os.remove(tmp_path / "ann" / "labels.json")
    with pytest.raises(FileNotFoundError, match="something-something-v2-labels.json"):
        data.read_dataset(str(tmp_path / "ann" / "validation.json"), root)


# ---------------------------------------------------------------- plain lists, VideoDataset

def test_data_plain_list_and_classes(tmp_path):
    write_text(str(tmp_path / "train.txt"), "a.mp4 0\nsub dir/b.mp4 1\n")
    assert data.read_dataset(str(tmp_path / "train.txt"), "/r") == ([("/r/a.mp4", 0), ("/r/sub dir/b.mp4", 1)], None)
    assert data.read_dataset(str(tmp_path / "train.txt"), classes=("x", "y"))[1] == ["x", "y"]
    with pytest.raises(ValueError, match="train.txt"):
        data.read_dataset(str(tmp_path / "train.txt"), classes=["x"])
    write_text(str(tmp_path / "bad.txt"), "a.mp4 0\nb.mp4 one\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: "):
        data.read_dataset(str(tmp_path / "bad.txt"))


def test_data_classes_remap_own_formats(tmp_path):
    lists = ucf_fixture(tmp_path)  # classInd: ApplyEyeMakeup, HandstandPushups, YoYo
    classes = ["YoYo", "Extra", "ApplyEyeMakeup", "HandstandPushups"]  # e.g. the training set's names
    samples, names = data.read_dataset(str(lists), "/r", train=False, classes=classes)
    assert names == classes and [label for _, label in samples] == [0, 2, 3]
    with pytest.raises(ValueError, match=r"ucfTrainTestlist.*'HandstandPushups'"):
        data.read_dataset(str(lists), "/r", train=False, classes=classes[:3])


def test_data_dataset_format(tmp_path):
    lists, splits = ucf_fixture(tmp_path), hmdb_fixture(tmp_path)
    assert data.dataset_format(str(lists)) == data.dataset_format(str(lists) + "/") == "ucf101"
    assert data.dataset_format(str(lists / "testlist03.txt")) == "ucf101"
    assert data.dataset_format(str(splits)) == "hmdb51"
    assert data.dataset_format("k400/validate.csv") == "kinetics"
    assert data.dataset_format("ssv2/train.json") == "ssv2"
    assert data.dataset_format("lists/train.txt") == "list"


def test_data_video_dataset_takes_samples(tmp_path, monkeypatch):
    touch_files(str(tmp_path), "v/a.mp4")
    monkeypatch.chdir(tmp_path)  # a relative sample path must not be joined with root again
    ds = data.VideoDataset([("v/a.mp4", 3)], root="not/used", num_frames=2, transform=None)
    assert ds.samples == [("v/a.mp4", 3)] and ds.labels == [3]
    with pytest.raises(FileNotFoundError, match=r"the samples given: 1 of 2 .*b\.mp4"):
        data.VideoDataset([(str(tmp_path / "v/a.mp4"), 0), (str(tmp_path / "v/b.mp4"), 1)], "", 2, None)
    with pytest.raises(ValueError, match="the samples given: lists no videos"):
        data.VideoDataset([], "", 2, None)
    write_text(str(tmp_path / "list.txt"), "a.mp4 0\nb.mp4 1\n")  # the list-file form still joins root
    with pytest.raises(FileNotFoundError, match=r"list\.txt: 1 of 2 .*b\.mp4"):
        data.VideoDataset(str(tmp_path / "list.txt"), str(tmp_path / "v"), 2, None)


# ---------------------------------------------------------------- protocol helpers

def class_counts(samples):
    out = {}
    for _, label in samples:
        out[label] = out.get(label, 0) + 1
    return out


def test_data_few_shot():
    train = [(f"c{c}/v{i:02d}.avi", c) for c in range(4) for i in range(10)]
    test = [(f"c{c}/t{i:02d}.avi", c) for c in range(4) for i in range(3)]
    state = random.getstate()
    picked = data.few_shot(train, 3, seed=1)
    assert random.getstate() == state  # the global random state is untouched
    assert class_counts(picked) == {0: 3, 1: 3, 2: 3, 3: 3} and len(set(picked)) == 12
    assert set(picked) <= set(train) and not set(picked) & set(test)
    assert data.few_shot(train, 3, seed=1) == picked
    assert data.few_shot(list(reversed(train)), 3, seed=1) == picked  # list order does not matter
    assert data.few_shot(train, 3, seed=2) != picked
    assert data.few_shot(train, 10, seed=5) == train  # all of them, in a fixed order
    short = [s for s in train if not (s[1] == 2 and s[0] > "c2/v01.avi")]  # class 2 keeps 2 videos
    with pytest.raises(ValueError, match="class 2 has 2 videos"):
        data.few_shot(short, 3, seed=0)
    with pytest.raises(ValueError, match="class 1 has 0 videos"):  # a class missing altogether
        data.few_shot([s for s in train if s[1] != 1], 1, seed=0)


def test_data_base_novel():
    hmdb = [("v", c) for c in range(51) for _ in range(70)]  # HMDB51: all counts equal
    base, novel = data.base_novel(hmdb, 51)
    assert base == list(range(25, 51)) and novel == list(range(25))
    # by hand: counts 5, 1, 3, 3, 9 -> order by (count, id): 1, 2, 3, 0, 4 -> ceil(5/2) = 3 base: 3, 0, 4
    by_hand = [("v", c) for c, n in enumerate([5, 1, 3, 3, 9]) for _ in range(n)]
    assert data.base_novel(by_hand, 5) == ([0, 3, 4], [1, 2])
    assert data.base_novel([("v", 0), ("v", 0), ("v", 3)], 4) == ([0, 3], [1, 2])  # classes with 0 videos are novel
    with pytest.raises(ValueError, match="label 4"):
        data.base_novel([("v", 4)], 4)


def test_data_select_classes():
    samples = [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 1)]
    assert data.select_classes(samples, [3, 1]) == [("b", 1), ("d", 0), ("e", 1)]
    assert data.select_classes(samples, []) == []
    with pytest.raises(ValueError):
        data.select_classes(samples, [1, 1])


def test_data_camel_words():
    assert data.camel_words("ApplyEyeMakeup") == "Apply Eye Makeup"
    assert data.camel_words("YoYo") == "Yo Yo"
    assert data.camel_words("PlayingDaf") == "Playing Daf"
    assert data.camel_words("HandstandPushups") == "Handstand Pushups"
    assert data.camel_words("BMXRacing") == "BMX Racing"
    assert data.camel_words("brush hair") == "brush hair"
    assert data.camel_words("Cleaning an iPhone") == "Cleaning an iPhone"  # has spaces: left alone
    assert data.camel_words("Skijet") == "Skijet"


# ---------------------------------------------------------------------------------------------------------
# train.py
# ---------------------------------------------------------------------------------------------------------

def test_schedule_and_mixing():
    target = train.soft_targets(torch.tensor([0, 2]), 4, 0.1)
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    assert target[0, 0] == pytest.approx(0.925)
    x, y = data.mix(torch.randn(4, 2, 3, 8, 8), train.soft_targets(torch.arange(4), 4, 0.0), 0.8, 1.0, 0.5)
    torch.testing.assert_close(y.sum(1), torch.ones(4))


def test_crop_boxes_are_the_official_ones():
    """Sizes and offsets as X-CLIP's mmaction2 pipeline (mmcv.rescale_size rounds, CenterCrop floors, ThreeCrop
    left, right = 2 * ((L - S) // 2), middle) and Open-VCLIP's spatial_sampling (the long side floored, the
    centre ceiled, uniform_crop 0 / centre / L - S) give them, as their code computes them for 224 inputs."""
    def boxes(crop, crops, height, width):
        return data.TestTransform(224, data.CLIP_MEAN, data.CLIP_STD, crops=crops, crop=crop).boxes(height, width)
    assert boxes("tsn", 1, 256, 340) == ((256, 340), [(16, 58)])
    assert boxes("tsn", 1, 360, 480) == ((256, 341), [(16, 58)])                  # 341.33 rounds to 341
    assert boxes("tsn", 3, 256, 340) == ((224, 298), [(0, 0), (0, 74), (0, 37)])   # 297.5 rounds up to 298
    assert boxes("tsn", 3, 720, 1280) == ((224, 398), [(0, 0), (0, 174), (0, 87)])
    assert boxes("tsn", 3, 340, 256) == ((298, 224), [(0, 0), (74, 0), (37, 0)])   # portrait: down the height
    assert boxes("slowfast", 1, 256, 340) == ((224, 297), [(0, 37)])               # 297.5 floored, 36.5 ceiled
    assert boxes("slowfast", 3, 256, 340) == ((224, 297), [(0, 0), (0, 37), (0, 73)])
    assert boxes("slowfast", 3, 340, 256) == ((297, 224), [(0, 0), (37, 0), (73, 0)])
    assert data.short_side_size(144, 176, 256, "mmcv") == (256, 313)              # 312.9: torchvision says 312
    tsn = data.TrainTransform(224, data.CLIP_MEAN, data.CLIP_STD)
    sizes = {tsn._crop_box(256, 340, random.Random(s))[2:] for s in range(400)}
    assert sizes == {(h, w) for h in (256, 224, 192, 168) for w in (256, 224, 192, 168)
                     if abs((256, 224, 192, 168).index(h) - (256, 224, 192, 168).index(w)) <= 1}
    frames = torch.randint(0, 256, (2, 256, 340, 3), dtype=torch.uint8)
    jitter = data.TrainTransform(224, data.CLIP_MEAN, data.CLIP_STD, crop="slowfast", normalise=False)
    assert jitter(frames, random.Random(0)).shape == (2, 3, 224, 224)
    # the official resize is plain bilinear (no antialiasing): the test view equals F.interpolate's, rounded
    view = data.TestTransform(224, data.CLIP_MEAN, data.CLIP_STD, crop="slowfast", normalise=False)(frames)[0]
    plain = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(224, 297), mode="bilinear",
                                            align_corners=False)[..., 37:37 + 224]
    assert (view.float() - plain).abs().max() <= 0.5 + 1e-3


def test_schedules_give_the_official_learning_rates():
    """X-CLIP's timm CosineLRScheduler (K400: 100 micro-batches an epoch, accumulation 4, 30 epochs, 5 warm-up,
    lr_min LR / 100 for both the 1x and the 10x groups) and Open-VCLIP's lr_policy (22 epochs, 2 warm-up from
    3.33e-8, cosine after the warm-up to 3.33e-8), as their code gives them at these steps."""
    def lr(args, steps_per_epoch, peak, step, base):   # the rate optimizer step `step` (1-based) runs at
        return peak * train.lr_factor(step - 1, args, steps_per_epoch, floor=0.01 * base / peak,
                                      start=args.warmup_start_ratio * base / peak)
    xclip_args = argparse.Namespace(schedule="timm", official_accum=4, warmup_epochs=5, epochs=30, warmup_start_ratio=0)
    official = {1: (0, 0), 2: (4.800e-8, 4.800e-7), 126: (7.984e-6, 7.984e-5), 127: (7.463e-6, 7.458e-5),
                375: (4.061e-6, 4.025e-5), 750: (8.005e-8, 8.055e-8)}
    for step, values in official.items():
        got = [lr(xclip_args, 25, peak, step, 8e-6) for peak in (8e-6, 8e-5)]
        assert got == pytest.approx(values, rel=5e-4, abs=1e-12), step
    ovc = argparse.Namespace(schedule="slowfast", official_accum=1, warmup_epochs=2, epochs=22, warmup_start_ratio=0.01)
    official = {0: 3.33e-8, 1: 4.978e-8, 100: 1.682e-6, 199: 3.314e-6, 200: 3.33e-6, 1200: 1.682e-6, 2199: 3.330e-8}
    for iteration, value in official.items():
        assert lr(ovc, 100, 3.33e-6, iteration + 1, 3.33e-6) == pytest.approx(value, rel=5e-4), iteration


def test_mixup_partners_are_a_random_permutation_as_the_official_blending():
    """X-CLIP's CutmixMixupBlending.do_mixup: lam from Beta, then torch.randperm(B) partners (a video may meet
    itself); with the same torch seed ours draws the same numbers in the same order."""
    video, target = torch.randn(4, 2, 3, 8, 8), train.soft_targets(torch.arange(4), 4, 0.0)
    torch.manual_seed(3)
    mixed, mixed_target = data.mix(video, target, 0.8, 0.0, 0.5)
    torch.manual_seed(3)
    lam = torch.distributions.Beta(0.8, 0.8).sample()
    partner = torch.randperm(4)
    torch.testing.assert_close(mixed, lam * video + (1 - lam) * video[partner])
    torch.testing.assert_close(mixed_target, lam * target + (1 - lam) * target[partner])
    fixed = 0
    for seed in range(50):   # about one video in four keeps its own partner, and so its own label
        torch.manual_seed(seed)
        _, t = data.mix(video, target, 0.8, 0.0, 0.5)
        fixed += int((t.max(1).values == 1).sum())
    assert 20 < fixed < 100


def test_harmonic_mean_and_split_summary_by_hand():
    assert train.harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)   # 53.33
    assert train.harmonic_mean(0.0, 0.0) == 0.0
    # Two shot seeds: B and N are averaged over seeds first (70, 30), then HM = 2*70*30/100 = 42.
    results = {"test base": [dict(top1=60.0, top5=90.0), dict(top1=80.0, top5=100.0)],
               "test novel": [dict(top1=20.0, top5=50.0), dict(top1=40.0, top5=70.0)]}
    figures, line = train.summarise("base2novel", results)
    assert figures == pytest.approx(dict(base=70.0, novel=30.0, hm=42.0)) and "HM 42.0" in line
    # Three splits: mean and population standard deviation over the splits.
    results = {f"split {k}": [dict(top1=t, top5=100.0)] for k, t in zip((1, 2, 3), (60.0, 70.0, 80.0))}
    figures, line = train.summarise("zero-shot", results)
    assert figures["top1"] == pytest.approx(70.0) and figures["top1_std"] == pytest.approx((200 / 3) ** 0.5)
    assert "70.0 ± 8.2" in line
    one = dict(videos=4, classes=12, top1=25.0, top1_se=21.7, top5=50.0, mean_class=25.0)
    figures, line = train.summarise("supervised", {"test": [one]})   # one test: its own figures
    assert figures == {k: pytest.approx(v) for k, v in one.items()} and line.startswith("test top1  25.0 ±21.7")


@pytest.mark.parametrize("view_logits,by_softmax,by_sum", [
    # 2 views, 3 classes. softmax: (0.909, 0.045, 0.045) and (0.011, 0.519, 0.470), mean (0.460, 0.282, 0.258);
    # sum (3.0, 4.0, 3.9)
    ([[3.0, 0.0, 0.0], [0.0, 4.0, 3.9]], 0, 1),
    # 3 views, 2 classes. softmax: (0.993, 0.007) and twice (0.182, 0.818), mean (0.453, 0.547); sum (5.0, 3.0)
    ([[5.0, 0.0], [0.0, 1.5], [0.0, 1.5]], 1, 0),
])
def test_evaluate_fuses_the_views_as_each_official_test_does(view_logits, by_softmax, by_sum):
    """A video's views where the two official fusions pick different classes: averaged softmax (X-CLIP's and
    ViFi-CLIP's test) and summed logits (PySlowFast's, Open-VCLIP's). (With 2 views of 2 classes they always agree.)"""
    view_logits = torch.tensor(view_logits)
    V, C = view_logits.shape

    class Fixed(torch.nn.Module):
        def forward(self, video):                  # video (B*V, T, 3, S, S); the first pixel says which view
            return view_logits[video[:, 0, 0, 0, 0].long()]

    video = torch.arange(V, dtype=torch.float32).view(1, V, 1, 1, 1, 1).expand(1, V, 1, 3, 2, 2)   # view k is all k
    for fusion, picked in (("softmax", by_softmax), ("sum", by_sum)):
        for label in range(C):
            m = train.evaluate(Fixed(), [(video, torch.tensor([label]), torch.tensor([0]))], torch.device("cpu"),
                               contextlib.nullcontext, [-1] * C, fusion=fusion)
            assert m["top1"] == (100.0 if label == picked else 0.0), (fusion, label)
    assert train.fuse(view_logits[None], "softmax")[0].argmax() == by_softmax
    assert torch.equal(train.fuse(view_logits[None], "sum")[0], view_logits.sum(0))


def test_predict_ranks_with_the_methods_own_fusion(tmp_path, capsys):
    """--predict fuses the test's views as the method's test does: where averaged softmax and summed logits
    disagree, each fusion ranks its own class first."""
    view_logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 3.9]])   # softmax picks a, sum picks b (see above)

    class Fixed(torch.nn.Module):
        def set_classes(self, names):
            pass

        def forward(self, video):                  # (V, T, 3, S, S) -> the same (V, C) logits for any video
            return view_logits

    path = str(tmp_path / "clip.mp4")
    data.write_video(path, np.zeros((8, 32, 32, 3), dtype=np.uint8))
    for fusion, first in (("softmax", "a"), ("sum", "b")):
        args, method = train.get_args(["--method", "vificlip", "--predict", path, "--classes", "a,b,c",
                                       "--model", "tiny", "--workers", "0", "--test-clips", "2", "--test-crops", "1"])
        args.size, args.test_fusion = 32, fusion
        train.predict(args, Fixed(), method, torch.device("cpu"), contextlib.nullcontext, None)
        assert capsys.readouterr().out.splitlines()[1].split()[-1] == first, fusion


def test_synthetic_stills_show_what_their_captions_say():
    images, captions = data.synthetic_stills(64, seed=3)
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8 and len(captions) == 64
    again, _ = data.synthetic_stills(64, seed=3)
    assert np.array_equal(images, again)
    for image, caption in zip(images, captions):
        words = caption.replace(".", "").split()
        assert sum(shape in words for shape in data.SHAPES) == 1
        assert not any(m in caption for m in ("moving", "growing"))
        for c, colour in enumerate(data.COLOURS):
            if colour in words:   # a named colour is painted: pixels of exactly that palette value
                painted = (image == data._PALETTE[c].astype(np.uint8)).all(-1)
                assert painted.sum() > 0.02 * painted.size, caption


def test_synthetic_clip_is_trained_once_and_cached(tmp_path, monkeypatch):
    torch.manual_seed(123)
    before = torch.rand(())
    torch.manual_seed(123)
    clip = common.synthetic_clip("tiny", str(tmp_path), steps=3, batch=16)   # the real thing: STEPS x BATCH
    assert torch.rand(()) == before   # the caller's random state is untouched
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("synthetic-tiny")
    assert not torch.equal(clip.visual.proj, common.load_clip("tiny").visual.proj)   # it trained
    monkeypatch.setattr(torch.optim, "AdamW", None)   # a second call must not train again
    again = common.synthetic_clip("tiny", str(tmp_path), steps=3, batch=16)
    for (k, a), b in zip(clip.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    monkeypatch.setattr(common, "synthetic_clip", lambda name, cache_dir: ("synthetic", name, cache_dir))
    assert common.load_clip("tiny-64", "synthetic", cache_dir="c") == ("synthetic", "tiny-64", "c")


def test_embedded_zero_shot_split_holds_out_combinations_it_has_seen_the_parts_of(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set")
    seen, unseen = data.load_classes(paths["seen"]), data.load_classes(paths["unseen"])
    assert unseen == list(data.UNSEEN) and not set(seen) & set(unseen) and len(seen) + len(unseen) == 12
    for name in unseen:
        shape, motion = name.split(" ", 1)
        assert any(n.startswith(shape) for n in seen) and any(n.endswith(motion) for n in seen)
    assert sorted(t for t in data.temporal_twins(unseen)) == [0, 1, 2, 3]   # two pairs of twins
    train_list, val_list = data.read_list(paths["seen_train"]), data.read_list(paths["unseen_val"])
    names = data.synthetic_classes()
    assert {label for _, label in train_list} == set(range(8)) and len(val_list) == 4
    for path, label in train_list:   # renumbered labels still name the class the video was drawn from
        assert names[int(path.split("_")[1])] == seen[label]
    for path, label in val_list:
        assert path.startswith("videos/val_") and names[int(path.split("_")[1])] == unseen[label]


def test_cli_protocols(synthetic, tmp_path, capsys):
    """base2novel with two shot seeds and a zero-shot test, through train.main on a small synthetic set."""
    paths = synthetic(tmp_path / "set", train_per_class=3, val_per_class=2)
    common_args = ["--method", "vificlip", "--model", "tiny", "--pretrained", "none", "--frames", "2",
                   "--batch-size", "4", "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "1",
                   "--epochs", "1", "--test-clips", "1", "--test-crops", "1", "--data-root", paths["root"]]
    out = str(tmp_path / "b2n")
    results = train.main(common_args + ["--protocol", "base2novel", "--shots", "2", "--shot-seeds", "1", "2",
                                        "--train-list", paths["train"], "--val-list", paths["val"],
                                        "--classes", paths["classes"], "--out", out])
    printed = capsys.readouterr().out
    assert set(results) == {"test base", "test novel"} and all(len(v) == 2 for v in results.values())
    assert "test base (1 clip x 1 crop, 12 videos)" in printed and "test novel (1 clip x 1 crop, 12 videos)" in printed
    summary = json.loads(open(os.path.join(out, "metrics.jsonl")).read().splitlines()[-1])
    b = sum(m["top1"] for m in results["test base"]) / 2
    n = sum(m["top1"] for m in results["test novel"]) / 2
    assert summary["summary"] == "base2novel" and summary["hm"] == pytest.approx(train.harmonic_mean(b, n))
    # The ViFi rule with equal counts: base = the last 6 class ids; each seed trained on 2 videos of each.
    ckpt = torch.load(os.path.join(out, "seed2", "last.pt"), weights_only=False)
    assert ckpt["classes"] == data.synthetic_classes()[6:]
    # Zero-shot: the trained model, tested with --eval-only on the held-out classes' names.
    results = train.main(common_args + ["--protocol", "zero-shot", "--eval-only", "--weights",
                                        os.path.join(out, "seed1", "last.pt"), "--val-list", paths["unseen_val"],
                                        "--val-classes", paths["unseen"], "--out", str(tmp_path / "zs")])
    assert list(results) == ["test"] and "(chance 25.0)" in capsys.readouterr().out
    # The K600 protocol: drop the classes the model was trained on, test two random subsets of 3 of the rest.
    out = str(tmp_path / "k600")
    results = train.main(common_args + ["--protocol", "zero-shot", "--eval-only", "--weights",
                                        os.path.join(tmp_path, "b2n", "seed1", "last.pt"), "--val-list", paths["val"],
                                        "--val-classes", paths["classes"], "--unseen-only", "--class-subsets", "2x3",
                                        "--out", out])
    assert list(results) == ["test subset 1", "test subset 2"]
    tested = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert "mean over 2 test sets" in capsys.readouterr().out and tested[-1]["summary"] == "zero-shot"
    assert tested[-1]["top1"] == pytest.approx((tested[0]["top1"] + tested[1]["top1"]) / 2)


def test_released_split_files_load_as_they_are(synthetic, tmp_path):
    """ViFi-CLIP's released splits: a few-shot list is trained on as it is (no --shots, no draw), and the base
    lists, one per seed, count their labels 0..B-1 in the base class file: each maps through its name."""
    paths = synthetic(tmp_path / "set", train_per_class=3, val_per_class=2)
    names, train_list = data.synthetic_classes(), data.read_list(paths["train"])
    shots = tmp_path / "train1_few_shot_2.txt"
    shots.write_text("".join(f"{p} {c}\n" for p, c in train_list if p.endswith(("_0.mp4", "_2.mp4"))))
    common_args = ["--method", "vificlip", "--data-root", paths["root"], "--val-list", paths["val"],
                   "--classes", paths["classes"]]
    args, _ = train.get_args(common_args + ["--protocol", "few-shot", "--train-list", str(shots)])
    train_samples, _, _ = data.protocol_data(args, seed=1)
    assert args.shots is None and train_samples == [(os.path.join(paths["root"], p), c) for p, c in
                                                    data.read_list(str(shots))]
    base = [names[c] for c in (7, 2, 9, 4, 11, 0)]                      # a base class file in its own order
    (tmp_path / "base.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(base)))
    for seed in (1, 2):   # fs_base_s{seed}_train.txt: each seed's own videos, labels local to base.csv
        (tmp_path / f"fs_base_s{seed}_train.txt").write_text("".join(
            f"{p} {base.index(names[c])}\n" for p, c in train_list if names[c] in base and p.endswith(f"_{seed}.mp4")))
    args, _ = train.get_args(common_args + ["--protocol", "base2novel", "--base-classes", str(tmp_path / "base.csv"),
                                            "--train-list", str(tmp_path / "fs_base_s{seed}_train.txt")])
    assert args.shots is None and args.shot_seeds == [1, 2, 3]
    for seed in (1, 2):
        train_samples, trained, tests = data.protocol_data(args, seed)
        assert trained == base and len(train_samples) == 6               # relabelled 0..5 in the file's order
        for path, label in train_samples:   # the video's own class, whatever the file's numbering
            assert path.endswith(f"_{seed}.mp4") and names[int(os.path.basename(path).split("_")[1])] == trained[label]
        assert [t for t, _, _ in tests] == ["test base", "test novel"]
        assert [len(s) for _, s, _ in tests] == [12, 12]


def test_released_weights_test_on_a_plain_list_with_its_class_file(synthetic, tmp_path):
    """--eval-only with the authors' weights (no checkpoint of ours to carry the names): the class file names
    a plain test list's labels, for every protocol."""
    paths = synthetic(tmp_path / "set", train_per_class=1)
    for protocol in ("supervised", "few-shot"):
        args, _ = train.get_args(["--method", "xclip", "--protocol", protocol, "--eval-only", "--val-list",
                                  paths["val"], "--classes", paths["classes"], "--data-root", paths["root"]])
        train_samples, names, tests = data.protocol_data(args, seed=1)
        assert train_samples is None and names == data.synthetic_classes() and len(tests[0][1]) == 12
    base = data.synthetic_classes()[6:]                                 # base-to-novel: one seed's released file
    (tmp_path / "base.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(base)))
    argv = ["--method", "vificlip", "--protocol", "base2novel", "--eval-only", "--val-list", paths["val"],
            "--classes", paths["classes"], "--data-root", paths["root"], "--shot-seeds", "1"]
    args, _ = train.get_args(argv + ["--base-classes", str(tmp_path / "base.csv")])
    _, names, tests = data.protocol_data(args, seed=1)
    assert names == base and [(t, len(s), len(n)) for t, s, n in tests] == [("test base", 6, 6), ("test novel", 6, 6)]
    with pytest.raises(data.DataError, match="needs the classes .* and the base classes"):
        data.protocol_data(train.get_args(argv)[0], seed=1)


def test_zero_shot_unseen_only_keeps_the_classes_training_never_saw(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set")
    argv = ["--method", "vificlip", "--protocol", "zero-shot", "--train-list", paths["seen_train"], "--classes",
            paths["seen"], "--val-list", paths["val"], "--val-classes", paths["classes"], "--data-root", paths["root"],
            "--unseen-only"]
    args, _ = train.get_args(argv)
    _, names, tests = data.protocol_data(args, seed=1)
    assert names == data.load_classes(paths["seen"]) and len(tests) == 1
    title, samples, test_names = tests[0]
    assert sorted(test_names) == sorted(data.UNSEEN) and len(samples) == 4
    args, _ = train.get_args(argv + ["--class-subsets", "3x2"])
    tests = data.protocol_data(args, seed=1)[2]
    assert [t for t, _, _ in tests] == ["test subset 1", "test subset 2", "test subset 3"]
    assert all(len(ns) == 2 and set(ns) <= set(data.UNSEEN) for _, _, ns in tests)
    assert tests == data.protocol_data(args, seed=1)[2]   # drawn from --seed: the same every time


def test_weights_load_strictly_except_new_trainable_tensors(tiny_clip_state, tmp_path):
    plain = build("vificlip", tiny_clip_state)
    path = str(tmp_path / "last.pt")
    train.save_checkpoint(path, dict(model=plain.state_dict(), args=dict(method="vificlip")))
    train.read_checkpoint.cache_clear()
    prompted = build("vificlip", tiny_clip_state, prompt_tokens_vision=2, prompt_depth_vision=1)
    # the bridge: only the new prompt is missing
    train.load_weights(prompted, vificlip, path, argparse.Namespace(own=[]))
    assert torch.equal(prompted.clip.visual.proj, plain.clip.visual.proj)
    state = plain.state_dict()
    del state["clip.visual.proj"]                         # a frozen tensor missing: not the same model
    train.save_checkpoint(path, dict(model=state, args=dict(method="vificlip")))
    train.read_checkpoint.cache_clear()
    with pytest.raises(SystemExit, match="does not fit this model .1 tensors, e.g. clip.visual.proj"):
        train.load_weights(prompted, vificlip, path, argparse.Namespace(own=[]))
    train.read_checkpoint.cache_clear()


def tiny_run_args(paths, *extra, method="vificlip"):
    return ["--method", method, "--train-list", paths["train"], "--val-list", paths["val"],
            "--data-root", paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4",
            "--batch-size", "4", "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "2", "--lr", "1e-3",
            "--test-clips", "2", "--test-crops", "1", *extra]


def files_of(folder):
    """{relative path: bytes} of every file under folder: a run left untouched compares equal."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def test_cli_runs_get_folders_of_their_own_and_never_overwrite_each_other(synthetic, tmp_path, monkeypatch, capsys):
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    train.main(tiny_run_args(paths, "--epochs", "1", "--lr", "2e-3"))
    printed = capsys.readouterr()
    first = os.path.join("runs", "vificlip-supervised")
    assert "\r" not in printed.err + printed.out                   # no progress bars when not on a terminal
    tail = printed.out.splitlines()[-5:]                           # the last lines say where everything went
    assert [line.split()[0] for line in tail] == ["run", "settings", "metrics", "checkpoint", "result"]
    assert tail[3].endswith(os.path.join(first, "last.pt")) and tail[4].startswith("result      test top1")
    config = json.load(open(os.path.join(first, "config.json")))
    assert config["lr"] == 2e-3 and config["epochs"] == 1 and config["frames"] == 4
    assert config["smoothing"] == {**train.BASE, **vificlip.RECIPE}["smoothing"]   # recipe values too
    assert config["command"].startswith("python train.py --method vificlip") and "started" in config
    saved = files_of(first)

    train.main(tiny_run_args(paths, "--epochs", "1", "--protocol", "few-shot", "--shots", "1"))
    train.main(tiny_run_args(paths, "--epochs", "1"))
    assert sorted(os.listdir("runs")) == ["vificlip-few-shot", "vificlip-supervised", "vificlip-supervised-2"]
    assert files_of(first) == saved                                 # two later runs left the first alone
    capsys.readouterr()

    # --resume alone picks the latest run of the method and protocol; a finished run says so and trains nothing.
    latest = files_of("runs/vificlip-supervised-2")
    assert train.main(tiny_run_args(paths, "--resume")) is None
    assert "runs/vificlip-supervised-2 is finished" in capsys.readouterr().out
    assert files_of("runs/vificlip-supervised-2") == latest

    # Training on: the run's own settings come back (lr 2e-3 was not given again), one line per epoch, and the
    # finished 1-epoch test and result stay beside the new ones.
    train.main(["--method", "vificlip", "--resume", first, "--epochs", "2"])   # nothing else needs repeating
    state = torch.load(os.path.join(first, "last.pt"), weights_only=False)
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 4 and state["args"]["lr"] == 2e-3
    lines = train.read_metrics(os.path.join(first, "metrics.jsonl"))
    assert [r["epoch"] for r in lines if "epoch" in r] == [1, 2]
    assert [r["trained_epochs"] for r in lines if "result" in r] == [1, 2]
    assert lines[-2]["views"] == "2 clips x 1 crop" and lines[-2]["weights"] == os.path.join(first, "last.pt")
    assert json.load(open(os.path.join(first, "config.json")))["epochs"] == 2

    # An eval-only run tests that checkpoint into a folder of its own, says which, and gets the same figures.
    saved = files_of(first)
    result = train.main(["--method", "vificlip", "--eval-only", "--resume", first])
    assert files_of(first) == saved
    tested = train.read_metrics(os.path.join("runs", "vificlip-supervised-eval", "metrics.jsonl"))
    assert tested[0]["weights"] == os.path.join(first, "last.pt")
    assert tested[0]["top1"] == lines[-2]["top1"] and result["test"][0]["twins"] == lines[-2]["twins"]

    # An explicit --out holding a run is refused with the flag that overrides it; eval-only never writes there.
    with pytest.raises(SystemExit, match="--overwrite"):
        train.main(tiny_run_args(paths, "--epochs", "1", "--out", first))
    with pytest.raises(SystemExit, match="never writes into"):
        train.main(tiny_run_args(paths, "--eval-only", "--weights", os.path.join(first, "last.pt"), "--out", first))
    assert files_of(first) == saved
    train.main(tiny_run_args(paths, "--epochs", "1", "--out", first, "--overwrite"))
    assert [r["epoch"] for r in train.read_metrics(os.path.join(first, "metrics.jsonl")) if "epoch" in r] == [1]
    with pytest.raises(SystemExit, match="add --method vificlip"):
        train.main(tiny_run_args(paths, "--resume", first)[2:] + ["--method", "xclip"])


def test_cli_resume_cuts_the_metrics_back_to_the_checkpoint(synthetic, tmp_path, capsys):
    """A kill between a checkpoint and its metrics line, or after lines of a later epoch that never reached the
    checkpoint: the resumed run ends with exactly one line per epoch."""
    paths = synthetic(tmp_path / "set")
    out = str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--epochs", "1", "--out", out))
    metrics = os.path.join(out, "metrics.jsonl")
    train.append_metrics(metrics, dict(epoch=2, loss=1.0))            # written, but its checkpoint never was
    train.main(tiny_run_args(paths, "--epochs", "2", "--resume", out, "--val-every", "0"))
    lines = train.read_metrics(metrics)
    assert [r.get("epoch") or (r["trained_epochs"], "result" in r) for r in lines] == [   # the finished 1-epoch
        1, (1, False), (1, True), 2, (2, False), (2, True)]                                # tests stay
    assert "val" not in lines[3]
    # Killed after epoch 2's checkpoint, before its line: the checkpoint holds the line, and puts it back; tests
    # that never reached their result line go.
    epoch2 = lines[3]
    with open(metrics, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines[:3] + [dict(lines[4], trained_epochs=3)])
    train.main(tiny_run_args(paths, "--epochs", "3", "--resume", out, "--val-every", "0"))
    lines = train.read_metrics(metrics)
    assert [r["epoch"] for r in lines if "epoch" in r] == [1, 2, 3] and lines[3] == epoch2
    assert [r["trained_epochs"] for r in lines if "epoch" not in r] == [1, 1, 3, 3]


def test_cli_a_run_written_before_the_setting_renames_resumes_to_the_uninterrupted_numbers(synthetic, tmp_path):
    """config.json and last.pt of the earlier format (step_batch, batch_size, schedule_accum; the unused best)
    resume under today's names, to the weights of a run that was never stopped."""
    paths = synthetic(tmp_path / "set")
    whole, old = str(tmp_path / "whole"), str(tmp_path / "old")
    train.main(tiny_run_args(paths, "--epochs", "2", "--out", whole, "--val-every", "0"))
    train.main(tiny_run_args(paths, "--epochs", "1", "--out", old, "--val-every", "0"))
    before = {new: was for was, new in train.RENAMED.items()}
    config = json.load(open(os.path.join(old, "config.json")))
    json.dump({before.get(k, k): v for k, v in config.items()}, open(os.path.join(old, "config.json"), "w"))
    state = torch.load(os.path.join(old, "last.pt"), weights_only=False)
    state.update(best=0.0, args={before.get(k, k): v for k, v in state["args"].items()})
    torch.save(state, os.path.join(old, "last.pt"))
    assert "schedule_accum" in state["args"] and "official_accum" not in state["args"]
    train.main(tiny_run_args(paths, "--epochs", "2", "--resume", old, "--val-every", "0"))
    config = json.load(open(os.path.join(old, "config.json")))
    assert config["official_accum"] == vificlip.RECIPE["official_accum"] and "schedule_accum" not in config
    a, b = (torch.load(os.path.join(run, "last.pt"), weights_only=False)["model"] for run in (whole, old))
    assert all(torch.equal(a[k], b[k]) for k in a)
    json.dump(dict(config, schedule_accum=3, batch_size=24), open(os.path.join(old, "config.json"), "w"))
    args, _ = train.get_args(tiny_run_args(paths, "--resume", old))
    train.place_run(args)   # an old name's value is the run's own setting under the new name
    assert (args.official_accum, args.global_batch) == (3, 24)


def test_cli_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again_in_place(synthetic, tmp_path,
                                                                                          monkeypatch, capsys):
    paths = synthetic(tmp_path / "set")
    out, real_train = str(tmp_path / "run"), train.train
    monkeypatch.setattr(train, "train", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):   # killed at once: config.json written, no checkpoint, no epoch line
        train.main(tiny_run_args(paths, "--epochs", "1", "--out", out))
    assert os.path.isfile(os.path.join(out, "config.json")) and not os.path.exists(os.path.join(out, "last.pt"))
    monkeypatch.setattr(train, "train", real_train)
    with pytest.raises(SystemExit, match=rf"--resume {re.escape(out)}"):   # the plain command points to --resume ...
        train.main(tiny_run_args(paths, "--epochs", "1", "--out", out))
    train.main(["--method", "vificlip", "--resume", out])                 # ... which works
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().out
    assert [r.get("epoch") for r in train.read_metrics(os.path.join(out, "metrics.jsonl"))][0] == 1
    assert os.path.isfile(os.path.join(out, "last.pt"))
    with pytest.raises(SystemExit, match=r"--resume .*nowhere: no such folder or file"):
        train.main(["--method", "vificlip", "--resume", str(tmp_path / "nowhere")])


def test_an_unwritable_run_folder_is_not_called_full(tmp_path, monkeypatch):
    def read_only(state, path):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "Read-only file system")
    monkeypatch.setattr(torch, "save", read_only)
    with pytest.raises(SystemExit) as stop:
        train.save_checkpoint(str(tmp_path / "last.pt"), dict(a=torch.zeros(3)))
    assert f"cannot write to {tmp_path}: it is read-only" in str(stop.value) and "space" not in str(stop.value)
    monkeypatch.setattr(torch, "save",
                        lambda state, path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(SystemExit, match="no space left on"):
        train.save_checkpoint(str(tmp_path / "last.pt"), dict(a=torch.zeros(3)))


def test_help_shows_every_flag_and_modes_are_one_at_a_time(capsys):
    with pytest.raises(SystemExit):
        train.get_args(["--help"])
    shown = capsys.readouterr().out
    flags = set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', open(train.__file__).read()))
    assert len(flags) > 40 and [f for f in flags if f not in shown] == []
    with pytest.raises(SystemExit):
        train.get_args(["--method", "xclip", "--help"])
    assert "--grad-checkpointing" in capsys.readouterr().out        # a method's own flags, with --method
    for modes in (["--predict", "clip.mp4", "--benchmark"], ["--eval-only", "--embed"], ["--search", "a", "--embed"]):
        with pytest.raises(SystemExit, match="are different runs: give one"):
            train.get_args(modes)


def test_same_command_same_numbers_first_run_included(tmp_path, monkeypatch):
    """Two first runs in two fresh folders: each generates its videos, pretrains the stand-in CLIP and trains
    with decoding workers. The videos are the same bytes, and every figure of the two runs is equal."""
    monkeypatch.setattr(common, "synthetic_clip", functools.partial(common.synthetic_clip, steps=4, batch=32))
    runs = []
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        monkeypatch.chdir(tmp_path / copy)
        paths = data.make_synthetic("set", train_per_class=4, val_per_class=2, T=12)
        videos = {name: open(os.path.join(paths["root"], "videos", name), "rb").read()
                  for name in os.listdir(os.path.join(paths["root"], "videos"))}
        train.main(tiny_run_args(paths, "--pretrained", "synthetic", "--epochs", "2", "--workers", "2",
                                 "--batch-size", "8", "--out", "run"))
        drop = ("seconds", "val_seconds", "clips_per_s", "data_wait")
        runs.append((videos, [{k: v for k, v in r.items() if k not in drop}
                              for r in train.read_metrics(os.path.join("run", "metrics.jsonl"))]))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][1]) == 4 and runs[0][1] == runs[1][1]


def test_cli_bad_videos_stop_the_run_or_are_left_out_counted_and_listed(synthetic, tmp_path, capsys):
    paths = synthetic(tmp_path / "set", T=24)
    for split in ("train", "val"):   # one damaged video in each list
        video = os.path.join(paths["root"], data.read_list(paths[split])[0][0])
        os.replace(video, video + ".good")
        damaged_copy(video + ".good", video, gop=0)
    argv = tiny_run_args(paths, "--epochs", "1", "--frames", "8", "--batch-size", "6", "--steps-per-epoch", "4")
    with pytest.raises(data.VideoError, match="may be damaged"):
        train.main(argv + ["--out", str(tmp_path / "stop")])
    out = str(tmp_path / "skip")
    result = train.main(argv + ["--out", out, "--skip-bad-videos"])
    printed = capsys.readouterr().out
    listed = open(os.path.join(out, "skipped.txt")).read().splitlines()
    assert {line.split("\t")[0] for line in listed} == {"epoch 1", "val", "test (2 clips x 1 crop)"}
    assert all("may be damaged" in line for line in listed)
    lines = train.read_metrics(os.path.join(out, "metrics.jsonl"))
    assert lines[0]["skipped"] == 2 and lines[0]["val"]["skipped"] == 1       # the epoch counts its val pass too
    assert result["test"][0]["skipped"] == 1 and result["test"][0]["videos"] == 11
    assert "skipped 2 bad videos" in printed and "12 videos, 1 left out as bad" in printed
    assert f"skipped     3 videos that could not be decoded, listed in {out}/skipped.txt" in printed


def test_the_epoch_loss_counts_only_the_micro_batches_of_steps_taken(synthetic, tmp_path, monkeypatch):
    """A bad video left out of a one-video batch leaves the epoch's last accumulation cut short: its loss never
    reached a step, so the epoch's loss is the mean over the steps' micro-batches (every loss 1 here: 1, not 11/12)."""
    paths = synthetic(tmp_path / "set")
    video = os.path.join(paths["root"], data.read_list(paths["train"])[0][0])
    os.replace(video, video + ".good")
    damaged_copy(video + ".good", video, gop=0)
    monkeypatch.setattr(train, "soft_cross_entropy", lambda logits, target: logits.float().sum() * 0 + 1.0)
    train.main(tiny_run_args(paths, "--epochs", "1", "--batch-size", "1", "--accum-steps", "2", "--steps-per-epoch",
                             "100", "--skip-bad-videos", "--val-every", "0", "--out", str(tmp_path / "run")))
    line = train.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))[0]
    assert line["skipped"] == 1 and line["loss"] == 1.0


def test_cli_a_full_disk_a_diverged_loss_and_a_cut_checkpoint_lose_nothing(synthetic, tmp_path, monkeypatch, capsys):
    paths = synthetic(tmp_path / "set")
    out = str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--epochs", "1", "--out", out))
    saved = files_of(out)
    real_save = torch.save

    def full_disk(obj, f):   # writes part of the file, then fails as torch does on a full disk
        open(f, "wb").write(b"PK" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    def unchanged():   # the checkpoint as it was, no temp file, one metrics line per epoch it holds
        now = files_of(out)
        epochs = [r["epoch"] for r in train.read_metrics(os.path.join(out, "metrics.jsonl")) if "epoch" in r]
        return now["last.pt"] == saved["last.pt"] and sorted(now) == sorted(saved) and epochs == [1]

    with pytest.raises(SystemExit, match=r"no space left on .*run: need about \d+ MB for last.pt"):
        train.main(["--method", "vificlip", "--resume", out, "--epochs", "2"])
    assert unchanged()
    nested = dict(a=torch.zeros(3), b=[torch.zeros(2, dtype=torch.int64), (torch.zeros(1, dtype=torch.uint8), "x", 5)])
    assert train.tensor_bytes(dict(nested, c=None)) == 3 * 4 + 2 * 8 + 1   # the estimate: every tensor's bytes
    monkeypatch.setattr(torch, "save", real_save)

    monkeypatch.setattr(train, "soft_cross_entropy", lambda logits, target: logits.sum() * float("nan"))
    with pytest.raises(SystemExit, match=r"epoch 2, step 1: the loss is nan.*last good checkpoint.*lower --lr"):
        train.main(["--method", "vificlip", "--resume", out, "--epochs", "2"])
    assert unchanged()

    with open(os.path.join(out, "last.pt"), "r+b") as f:               # cut short, as by a copy that died
        f.truncate(os.path.getsize(os.path.join(out, "last.pt")) // 2)
    with pytest.raises(SystemExit, match=r"last.pt: not a whole checkpoint"):
        train.main(["--method", "vificlip", "--resume", out, "--epochs", "2"])
    with pytest.raises(SystemExit, match=r"cannot make the run's folder"):
        train.main(tiny_run_args(paths, "--out", os.path.join(out, "config.json", "sub")))
    for flag, says in ((["--val-classes", paths["classes"]], "--val-classes means something only under --protocol "
                        "zero-shot, not supervised: add --protocol zero-shot"),
                       (["--shots", "4"], "--shots means something only under --protocol few-shot or base2novel, not "
                        "supervised: add --protocol few-shot")):
        with pytest.raises(SystemExit, match=re.escape(says)):
            train.main(tiny_run_args(paths, *flag, "--out", str(tmp_path / "vc")))
    assert not os.path.exists(tmp_path / "vc")   # refused before anything was written
    with pytest.raises(SystemExit):
        train.get_args(["--frames", "0"])
    assert "--frames: expected an integer >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.get_args(["--epcohs", "3"])   # one line, the closest flag, no usage
    assert capsys.readouterr().err.splitlines() == [
        "error: unrecognized arguments: --epcohs 3 (did you mean --epochs?); --help lists every flag"]


def test_cli_bad_input_is_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("clip.mp4 0\nclip.mp4 one\n")
    (tmp_path / "classes.csv").write_text("0,a\n1,b\n")
    done = subprocess.run([sys.executable, "train.py", "--train-list", str(bad), "--val-list", str(bad),
                           "--classes", str(tmp_path / "classes.csv"), "--model", "tiny",
                           "--out", str(tmp_path / "run")],
                          cwd=os.path.dirname(os.path.abspath(train.__file__)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"error: {bad}:2: expected 'relative/path.mp4 label' with label an integer class id >= 0, got 'clip.mp4 one'; "
        f"fix or remove the line"]


class Payload:
    """What a malicious pickle holds: reading it runs `how` (os.system or exec), which would create `marker`."""
    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return exec, (f"open({self.marker!r}, 'w').close()",)


def refused_in_one_line(call, marker, names):
    """call() stops with one line that names the global the file asks for, and the payload never ran."""
    with pytest.raises((SystemExit, common.CheckpointError)) as e:
        call()
    message = str(e.value.code if isinstance(e.value, SystemExit) else e.value)
    assert "\n" not in message and "would run code" in message and names in message, message
    assert not os.path.exists(marker)
    return message


def test_cli_files_that_would_run_code_are_refused_in_one_line_in_every_layout(synthetic, tiny_clip_state, tmp_path):
    paths = synthetic(tmp_path / "set")
    marker, run = tmp_path / "ran", str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--epochs", "1", "--out", run, "--val-every", "0"))
    ours = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    weights = str(tmp_path / "evil.pt")
    tiny = ["--model", "tiny", "--val-list", paths["val"], "--data-root", paths["root"], "--classes", paths["classes"]]
    layouts = {   # our own checkpoint; X-CLIP's and ViFi-CLIP's releases (with their config); Open-VCLIP's
        "vificlip": dict(ours, evil=Payload(marker, "system")),
        "xclip": dict(model=build("xclip", tiny_clip_state).state_dict(), config=Payload(marker, "exec"), epoch=29),
        "openvclip": {"model_state": {"model.logit_scale": torch.ones(())}, "cfg": Payload(marker, "system")},
    }
    for name, state in layouts.items():
        train.read_checkpoint.cache_clear()
        torch.save(state, weights)
        refused_in_one_line(lambda: train.main(["--method", name, "--eval-only", "--weights", weights, *tiny]), marker,
                            "posix.system" if name != "xclip" else "builtins.exec")
    torch.save(dict(ours, evil=Payload(marker, "exec")), os.path.join(run, "last.pt"))   # a run folder's last.pt
    train.read_checkpoint.cache_clear()
    for extra in (["--epochs", "2"], ["--eval-only"]):
        refused_in_one_line(lambda: train.main(tiny_run_args(paths, "--resume", run, *extra)), marker, "builtins.exec")
    torch.save({"videos/train_0_0.mp4": Payload(marker, "system")}, weights)            # Open-VCLIP++'s captions
    refused_in_one_line(lambda: openvclip.load_captions(weights), marker, "posix.system")
    (tmp_path / "cut.pt").write_bytes(open(os.path.join(run, "config.json"), "rb").read())   # no checkpoint at all
    with pytest.raises(SystemExit, match=r"cut.pt: not a whole checkpoint .*take another copy"):
        train.main(["--method", "vificlip", "--eval-only", "--weights", str(tmp_path / "cut.pt"), *tiny])


def test_cli_a_checkpoint_that_does_not_fit_the_command_is_one_line_naming_the_flag(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set")
    run = str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--method", "xclip", "--epochs", "1", "--out", run, "--val-every", "0"))
    weights, test = os.path.join(run, "last.pt"), ["--val-list", paths["val"], "--data-root", paths["root"],
                                                   "--classes", paths["classes"], "--eval-only", "--workers", "0"]
    cases = [(["--method", "vificlip"], "was trained with --method xclip, not vificlip: add --method xclip"),
             (["--method", "xclip", "--model", "tiny-64"], "give --model tiny, or leave those flags out"),
             (["--method", "xclip", "--frames", "8"], "give --frames 4, or leave those flags out")]
    for flags, says in cases:
        train.read_checkpoint.cache_clear()
        with pytest.raises(SystemExit) as e:
            train.main([*flags, "--weights", weights, *test])
        assert "\n" not in str(e.value.code) and says in e.value.code and weights in e.value.code, e.value.code


def test_cli_predict_with_resume_uses_that_runs_checkpoint_and_names_its_weights(synthetic, tmp_path, monkeypatch,
                                                                                  capsys):
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    train.main(tiny_run_args(paths, "--epochs", "1", "--val-every", "0"))
    video = os.path.join(paths["root"], data.read_list(paths["val"])[0][0])
    capsys.readouterr()
    train.main(["--method", "vificlip", "--predict", video, "--resume", "runs/vificlip-supervised", "--workers", "0"])
    trained = capsys.readouterr().out
    assert "weights runs/vificlip-supervised/last.pt" in trained and "circle" in trained   # its own class names
    train.main(["--method", "vificlip", "--predict", video, "--classes", paths["classes"], "--model", "tiny",
                "--workers", "0"])
    bare = capsys.readouterr().out
    assert "weights none: the CLIP as pretrained" in bare and "knows only the embedded set" in bare
    assert trained.splitlines()[1:3] != bare.splitlines()[1:3]


def test_cli_a_finished_run_trained_further_keeps_its_results_and_eval_folders_pair_with_their_runs(
        synthetic, tmp_path, monkeypatch, capsys):
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    train.main(tiny_run_args(paths, "--epochs", "2", "--val-every", "0"))
    run = os.path.join("runs", "vificlip-supervised")
    first = train.read_metrics(os.path.join(run, "metrics.jsonl"))
    train.main(tiny_run_args(paths, "--resume", run, "--epochs", "3", "--val-every", "0"))
    lines = train.read_metrics(os.path.join(run, "metrics.jsonl"))
    assert lines[:len(first)] == first and [r.get("trained_epochs") for r in first if "epoch" not in r] == [2, 2]
    assert [r.get("epoch") or (r.get("trained_epochs"), "result" in r) for r in lines] == [
        1, 2, (2, False), (2, True), 3, (3, False), (3, True)]
    capsys.readouterr()
    assert train.main(tiny_run_args(paths, "--resume", run, "--epochs", "2")) is None
    assert f"{run} is finished (3 epochs)" in capsys.readouterr().out
    train.main(tiny_run_args(paths, "--epochs", "3", "--val-every", "0", "--steps-per-epoch", "1"))   # a second run
    for tested in (run, run + "-2", run):   # each test in a folder named after what it tested
        train.main(tiny_run_args(paths, "--eval-only", "--resume", tested))
    assert sorted(os.listdir("runs")) == ["vificlip-supervised", "vificlip-supervised-2", "vificlip-supervised-2-eval",
                                          "vificlip-supervised-eval", "vificlip-supervised-eval-2"]
    assert "(after epoch 3 of its 3)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="the folder of an --eval-only run, which trains nothing; to run it again: "
                                         f"--eval-only --resume {re.escape(run)}"):
        train.main(tiny_run_args(paths, "--resume", run + "-eval"))
    with pytest.raises(SystemExit, match=f"continue it with --method vificlip --resume {re.escape(run)}"):
        train.main(tiny_run_args(paths, "--method", "xclip", "--out", run))


def test_cli_predict_speaks_of_the_file_it_was_given(tmp_path):
    base = ["--method", "vificlip", "--model", "tiny", "--workers", "0", "--predict"]
    for path, says in ((tmp_path / "gone.mp4", "no such file"), (tmp_path, "a folder; give one video file")):
        with pytest.raises(SystemExit, match=f"--predict {re.escape(str(path))}: {says}"):
            train.main([*base, str(path)])   # before the class names are asked for
    (tmp_path / "README.md").write_text("# not a video")
    with pytest.raises(SystemExit, match=r"--predict .*README.md: cannot be opened .*: give a video file that plays$"):
        train.main([*base, str(tmp_path / "README.md")])


def test_cli_clips_per_second_count_training_not_the_validation(synthetic, tmp_path, monkeypatch):
    paths = synthetic(tmp_path / "set")
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: time.sleep(0.5) or real(*a, **k))
    train.main(tiny_run_args(paths, "--epochs", "2", "--val-every", "2", "--out", str(tmp_path / "run")))
    plain, validated = train.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))[:2]
    assert "val_seconds" not in plain and validated["val_seconds"] >= 0.5
    for r in (plain, validated):   # 2 steps of 4 clips over the epoch's training seconds
        assert r["clips_per_s"] == pytest.approx(8 / r["seconds"])


def test_cli_ctrl_c_ends_in_the_line_to_continue_and_the_run_continues_exactly(synthetic, tmp_path):
    import signal
    import threading
    paths = synthetic(tmp_path / "set")
    # 3 epochs of 6 steps (about 2 s) still to go when the first ends: time enough for the signal to land in training
    argv = tiny_run_args(paths, "--epochs", "4", "--steps-per-epoch", "6", "--val-every", "0", "--save-every", "2",
                         "--threads", "1")
    stopped = str(tmp_path / "stopped")
    proc = subprocess.Popen([sys.executable, "-u", os.path.abspath(train.__file__), *argv, "--out", stopped],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as from a terminal

    def ctrl_c_after_the_first_epoch():   # interrupted once its first epoch has a checkpoint
        for line in proc.stdout:
            if line.startswith("epoch 1/4"):
                proc.send_signal(signal.SIGINT)
                break
    watcher = threading.Thread(target=ctrl_c_after_the_first_epoch)
    watcher.start()
    train.main(argv + ["--out", str(tmp_path / "whole")])   # the uninterrupted run, while the process starts
    watcher.join()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped by Ctrl-C: {re.escape(stopped)} keeps its checkpoint after epoch \d of 4( and \d "
                        rf"steps of epoch \d)?; continue with: python train.py --method vificlip --resume "
                        rf"{re.escape(stopped)}", last), last
    train.main(["--method", "vificlip", "--resume", stopped])
    a, b = (torch.load(os.path.join(run, "last.pt"), weights_only=True)["model"]
            for run in (tmp_path / "whole", stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_killed_mid_epoch_with_workers_resumes_to_exactly_the_uninterrupted_numbers(synthetic, tmp_path,
                                                                                         monkeypatch):
    paths = synthetic(tmp_path / "set", train_per_class=4)
    argv = tiny_run_args(paths, "--epochs", "2", "--workers", "2", "--steps-per-epoch", "6", "--mixup", "0.8",
                         "--save-every", "2")   # and the recipe's colour jitter, grayscale, flips, cutmix
    whole = train.main(argv + ["--out", str(tmp_path / "whole")])
    real_save, saves = train.save_checkpoint, []

    def killed_after_the_second_save(path, state):   # epoch 1, step 4 of 6: mid-epoch
        real_save(path, state)
        saves.append(state.get("partial"))
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", killed_after_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv + ["--out", str(tmp_path / "killed")])
    assert saves[-1]["steps"] == 4
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    resumed = train.main(["--method", "vificlip", "--resume", str(tmp_path / "killed")])

    def figures(run):
        drop = ("seconds", "val_seconds", "clips_per_s", "data_wait", "weights")
        return [{k: v for k, v in r.items() if k not in drop}
                for r in train.read_metrics(os.path.join(tmp_path, run, "metrics.jsonl"))]
    assert len(figures("whole")) == 4 and figures("killed") == figures("whole") and resumed == whole
    epoch1 = train.read_metrics(os.path.join(tmp_path, "killed", "metrics.jsonl"))[0]   # steps 5, 6 after the resume
    assert epoch1["clips_per_s"] * epoch1["seconds"] == pytest.approx(2 * 4, rel=0.05)
    a, b = (torch.load(os.path.join(tmp_path, run, "last.pt"), weights_only=False)["model"]
            for run in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_benchmark_reports_model_and_loader_and_which_bounds(synthetic, tmp_path, capsys):
    paths = synthetic(tmp_path / "set")
    train.main(["--method", "vificlip", "--benchmark", "2", "--batch-size", "4", "--frames", "4", "--workers", "0",
                "--train-list", paths["train"], "--data-root", paths["root"], "--classes", paths["classes"],
                "--peak-tflops", "1"])
    model_line, loader_line = capsys.readouterr().out.strip().splitlines()[-2:]
    flops = float(re.search(r"([\d.]+) GFLOP per clip", model_line).group(1))
    clips = float(re.search(r"([\d.]+) clips/s training", model_line).group(1))
    mfu = float(re.search(r"MFU ([\d.]+)% of 1 TFLOP/s", model_line).group(1))
    assert flops > 0 and mfu == pytest.approx(flops * clips / 1e3 * 100, rel=0.02, abs=0.06)
    assert re.search(r"the data loader: [\d.]+ clips/s with 0 workers on .*train.txt; training is bound by the "
                     r"(model|data loader)", loader_line)


def test_compile_gives_the_eager_logits_and_gradients(tiny_clip_state):
    """--compile on X-CLIP, through AOTAutograd (the forward and backward graphs inductor would generate code
    for; inductor itself takes a minute per model here, and gave the logits to 4e-7 when measured): the
    logits, the loss and every gradient equal the eager model's."""
    eager = build("xclip", tiny_clip_state).train()
    compiled = build("xclip", tiny_clip_state).train()
    compiled.compile(backend="aot_eager")   # as train.py's --compile does it: in place, the methods kept
    x, target = video(), F.one_hot(torch.tensor([1, 3]), C).float()
    runs = []
    for model in (eager, compiled):   # one training step each (the test mode would be a second compilation)
        logits = model(x)
        loss = train.soft_cross_entropy(logits, target)
        loss.backward()
        runs.append((logits.detach(), loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))


# =========================================================================================================
# omniclip
# =========================================================================================================

# ---------------------------------------------------------------------------------------------------------
# More than one process: train.py under torchrun (gloo on the CPU), against one process
# ---------------------------------------------------------------------------------------------------------

PROCESSES = int(os.environ.get("TORCHRUN_PROCESSES", 2))   # TORCHRUN_PROCESSES=4 pytest -k torchrun: with 4


def torchrun(*argv, cwd, processes=PROCESSES, ok=True):
    """train.py started by torchrun, as a user would start it; -> (return code, stdout + stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
               os.path.abspath(train.__file__), *argv]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == ok, output[-4000:]
    return output, time.perf_counter() - started


def weight_gap(a, b):
    """max |a - b| over two state dicts, leaving out the attention key biases: a key bias adds the same
    number to every score of a query, which the softmax cancels, so its gradient is pure rounding noise, and
    Adam (dividing by the noise's own size) turns noise of any size into a step of about lr."""
    gap = 0.0
    for k in a:
        x, y = a[k].double().flatten(), b[k].double().flatten()
        if k.endswith("in_proj_bias"):
            D = x.numel() // 3
            x, y = torch.cat([x[:D], x[2 * D:]]), torch.cat([y[:D], y[2 * D:]])   # queries and values
        gap = max(gap, (x - y).abs().max().item())
    return gap


def test_epoch_shards_together_hold_the_whole_batch_and_test_shards_each_video_once(monkeypatch, tmp_path):
    one = list(data.EpochSampler(23, seed=3))
    shards = [list(data.EpochSampler(23, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert [len(s) for s in shards] == [11, 11]                        # equal counts: every process steps together
    for m in range(11 // 4):                                            # micro-batch m of b = 4 on each process
        assert sorted(shards[0][4 * m:4 * m + 4] + shards[1][4 * m:4 * m + 4]) == sorted(one[8 * m:8 * m + 8])
    resumed = data.EpochSampler(23, seed=3, rank=1, world=2)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == shards[1][4:]
    args = train.get_args(["--method", "vificlip", "--model", "tiny", "--train-list", "t.txt", "--size", "32"])[0]
    videos, tested = [(str(tmp_path / f"{i}.mp4"), 0) for i in range(11)], []
    for path, _ in videos:
        open(path, "w").close()
    for rank in range(3):   # a test's loader on each of 3 processes
        monkeypatch.setattr(train, "RANK", rank)
        monkeypatch.setattr(train, "WORLD", 3)
        loader = train.make_loader(args, torch.device("cpu"), videos, views=True)
        tested.append(list(loader.sampler))
    assert sorted(sum(tested, [])) == list(range(11))                  # nothing padded, nothing twice
    monkeypatch.setattr(train, "WORLD", 1)
    monkeypatch.setattr(train, "RANK", 0)
    assert list(train.make_loader(args, torch.device("cpu"), videos).sampler) == list(range(11))   # all, in order


def test_the_averaged_gradient_is_the_one_process_gradient_of_the_whole_batch(monkeypatch):
    """average_gradients on 2 processes, played by 2 threads whose all-reduces meet (each gets the sum of both):
    the .grad itself equals the gradient of the whole batch's mean loss on one process (a wrong divisor barely
    moves AdamW's weights, but it changes clipping and other optimizers); a parameter that only process 0 used
    counts as zero on process 1; one that neither used keeps .grad None."""
    import threading
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    models = [torch.nn.ParameterDict(dict(w=torch.nn.Parameter(torch.randn(4, 3)), b=torch.nn.Parameter(torch.randn(3)),
                                          partial=torch.nn.Parameter(torch.ones(2)),
                                          unused=torch.nn.Parameter(torch.ones(2))))]
    models.append(copy.deepcopy(models[0]))   # each process its own copy of the same weights

    def loss(m, rank):   # the mean loss of a process's 4 rows; `partial` serves process 0's samples only
        rows = slice(4 * rank, 4 * rank + 4)
        return ((x[rows] @ m["w"] + m["b"] - y[rows]) ** 2).mean() + (0.3 * m["partial"].sum() if rank == 0 else 0)

    sent, met = {}, threading.Barrier(2)

    def all_reduce(t):   # the sum over both "processes", in place, as torch.distributed.all_reduce
        sent[threading.current_thread().name] = t.clone()
        met.wait()
        total = sum(sent.values())
        met.wait()
        t.copy_(total)

    monkeypatch.setattr(train, "WORLD", 2)
    monkeypatch.setattr(train, "comm_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)

    def process(rank):
        loss(models[rank], rank).backward()
        train.average_gradients(list(models[rank].values()))

    threads = [threading.Thread(target=process, args=(rank,), name=f"process {rank}") for rank in (0, 1)]
    [t.start() for t in threads], [t.join() for t in threads]
    one = copy.deepcopy(models[0])
    for p in one.values():
        p.grad = None
    ((loss(one, 0) + loss(one, 1)) / 2).backward()   # one process, the whole batch
    for m in models:
        for name in ("w", "b", "partial"):
            torch.testing.assert_close(m[name].grad, one[name].grad, rtol=1e-6, atol=1e-7)
        assert m["unused"].grad is None


def test_torchrun_processes_train_test_and_resume_as_one_process_with_the_whole_batch(synthetic, tmp_path, monkeypatch):
    """b videos on each of P processes = P b videos on one: the same weights (to 1e-5; 3e-8 measured with two),
    the same val and test figures over an odd number of test videos, and a resume under P processes lands where
    the one-process resume does."""
    paths = synthetic(tmp_path / "set")
    odd = tmp_path / "odd.txt"
    odd.write_text("".join(open(paths["val"]).readlines()[:11]))         # 11 test videos: 6 + 5 on two processes
    P = PROCESSES
    monkeypatch.chdir(tmp_path)
    argv = tiny_run_args(paths, "--val-list", str(odd), "--mixup", "0", "--cutmix", "0", "--epochs", "1",
                         "--val-every", "1")
    train.main(argv + ["--batch-size", str(2 * P), "--out", "one"])
    first = torch.load(os.path.join("one", "last.pt"), weights_only=False)
    printed, _ = torchrun(*argv, "--batch-size", "2", "--workers", "1", "--out", "two", cwd=tmp_path)
    assert f"batch 2 x {P} processes x 1 accumulation = {2 * P}" in printed
    assert printed.count("run folder") == 1                              # one voice: rank 0's
    two = torch.load(os.path.join("two", "last.pt"), weights_only=False)
    assert weight_gap(first["model"], two["model"]) < 1e-5
    assert len(two["rngs"]) == P and not torch.equal(two["rngs"][0]["torch"], two["rngs"][1]["torch"])

    def figures(run):   # [{name: number}] of each line: the loss, and the val and test figures
        keep = ("loss", "videos", "top1", "top5", "mean_class", "twins")
        return [{f"{k}{'.' + j if isinstance(v, dict) else ''}": w for k, v in r.items()
                 for j, w in (v.items() if isinstance(v, dict) else [(k, v)]) if k in keep or j in keep}
                for r in train.read_metrics(os.path.join(run, "metrics.jsonl"))]
    assert figures("two")[0]["val.videos"] == 11 and figures("two")[1]["videos"] == 11
    assert figures("two")[:2] == [pytest.approx(line, abs=1e-5) for line in figures("one")[:2]]
    alone = train.main(["--method", "vificlip", "--eval-only", "--resume", "two"])   # two's weights, one process
    assert {k: alone["test"][0][k] for k in ("videos", "top1", "top5", "mean_class", "twins")} == \
        {k: figures("two")[1][k] for k in ("videos", "top1", "top5", "mean_class", "twins")}

    train.main(["--method", "vificlip", "--resume", "one", "--epochs", "2"])
    printed, _ = torchrun("--method", "vificlip", "--resume", "two", "--epochs", "2", cwd=tmp_path)
    assert "resumed two/last.pt after epoch 1" in printed
    one, two = (torch.load(os.path.join(run, "last.pt"), weights_only=False) for run in ("one", "two"))
    assert two["epoch"] == 2 and weight_gap(one["model"], two["model"]) < 1e-5
    assert [r["epoch"] for r in train.read_metrics(os.path.join("two", "metrics.jsonl")) if "epoch" in r] == [1, 2]
    assert figures("two")[:3] == [pytest.approx(line, abs=1e-5) for line in figures("one")[:3]]


def test_torchrun_openvclip_each_process_takes_its_own_alpha_and_the_gradients_are_averaged(synthetic, tmp_path,
                                                                                            monkeypatch):
    """The interpolated-weight step under P processes: each process draws its own alpha (as each GPU of the
    official runs), and the step equals one process averaging the gradients of the P shares of the batch, each
    taken at its own alpha, then clipping and stepping once."""
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    argv = tiny_run_args(paths, "--batch-size", "2", "--steps-per-epoch", "1", "--epochs", "1", "--val-every", "0",
                         "--mixup", "0", "--cutmix", "0", "--iwo-alpha", "0.6", "--no-swa", "--interp-lambda", "0",
                         "--warmup-epochs", "0", "--test-clips", "1")
    argv[1] = "openvclip"
    torchrun(*argv, "--out", "run", cwd=tmp_path)
    trained = torch.load(os.path.join("run", "last.pt"), weights_only=False)["model"]

    args, method = train.get_args(argv)                                 # the same model, data and draws, by hand
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    clip = common.load_clip(args.model, args.pretrained, args.quick_gelu)
    args.size = args.size or clip.visual.image_size[0]
    model = method.build(clip, args).train()
    samples, names = data.read_videos(args.train_list, args.data_root, 1, True, args.classes)
    model.set_classes(names)
    dataset = train.make_loader(args, torch.device("cpu"), samples, train=True).dataset
    params = [p for p in model.parameters() if p.requires_grad]
    grads, alphas = [], []
    for rank in range(PROCESSES):
        keys = list(data.EpochSampler(len(samples), args.seed, rank, PROCESSES))[:2]   # its first micro-batch
        video, label, draws = data.collate([dataset[k] for k in keys])
        video = data.normalise(data.colour_batch(video, draws), *train.STATS[args.mean])
        target = train.soft_targets(label, len(names), args.smoothing)
        train.seed_process(args.seed, rank)
        state = random.getstate()
        alphas.append(random.uniform(0.0, args.iwo_alpha))                # what train_step is about to draw
        random.setstate(state)
        model.zero_grad(set_to_none=True)
        model.train_step(video, target, train.soft_cross_entropy, lambda loss: loss.backward(), contextlib.nullcontext)
        grads.append([p.grad.clone() for p in params])
    assert len(set(alphas)) == PROCESSES
    for p, *g in zip(params, *grads):
        p.grad = sum(g) / PROCESSES
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    torch.optim.AdamW(model.param_groups(args.lr, args.weight_decay), lr=args.lr, betas=tuple(args.betas),
                      eps=args.eps).step()
    model.on_epoch_end(0, 1)                                            # the run's one epoch ends
    assert weight_gap(model.state_dict(), trained) < 1e-5


def test_torchrun_a_failing_process_ends_the_run_with_its_message_or_its_bad_video_is_left_out(synthetic, tmp_path):
    """A damaged video in process 1's first batch: process 1 stops with the one-line error naming it, and
    torchrun ends process 0 (waiting for process 1's gradients) at once instead of letting it hang. With
    --skip-bad-videos and one video per batch, process 1's first batch holds nothing: it still counts as a
    micro-batch, so the processes stay in step, and the video is listed and counted once."""
    paths = synthetic(tmp_path / "set")
    samples = data.read_list(paths["train"])
    path = os.path.join(paths["root"], samples[list(data.EpochSampler(len(samples), 0, 1, PROCESSES))[0]][0])
    damaged_copy(path, path + ".bad.mp4", gop=0)
    os.replace(path + ".bad.mp4", path)
    printed, seconds = torchrun(*tiny_run_args(paths, "--batch-size", "2", "--epochs", "1", "--mixup", "0"),
                                "--out", str(tmp_path / "run"), cwd=tmp_path, ok=False)
    cause = rf"process 1 of {PROCESSES}: error: {re.escape(path)}: frame \d+ may be damaged"
    assert re.search(cause, printed) and re.search(cause, printed.split("Root Cause")[1])   # torchrun's summary too
    assert f"process 0 of {PROCESSES}: stopped because another process" in printed
    assert not re.search(r"\[rank\d+\]: Traceback", printed)                # no process's traceback
    assert seconds < 120

    torchrun(*tiny_run_args(paths, "--batch-size", "1", "--epochs", "1", "--skip-bad-videos", "--val-every", "0",
                            "--steps-per-epoch", "1000", "--dist-timeout", "1"),   # every batch: none to spare
             "--out", str(tmp_path / "skipping"), cwd=tmp_path)
    epoch, test = train.read_metrics(str(tmp_path / "skipping" / "metrics.jsonl"))[:2]
    assert epoch["skipped"] == 1 and "skipped" not in test
    assert [line.split("\t")[1] for line in open(tmp_path / "skipping" / "skipped.txt")] == [path]


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
    assert omniclip.RECIPE["new_lr_scale"] == 10 and not hasattr(omniclip, "EMBEDDED")   # the demo keeps 10x
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
    model = omniclip_omni(tiny_clip_state, no_spg=True, pta_position=position).eval()
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
    plain = omniclip_omni(tiny_clip_state, no_spg=True).eval()
    model = omniclip_omni(tiny_clip_state).eval()
    x = video()
    with torch.no_grad():
        a, b = plain(x), model(x)
        assert not torch.allclose(a, b)                          # extra keys change the softmax
        assert (a - b).norm() < 0.2 * a.norm()
        torch.testing.assert_close(model(omniclip_reverse(x)), b, atol=1e-5, rtol=1e-5)   # prompts are per frame


@pytest.mark.parametrize("kwargs", [dict(no_spg=True), dict(pta_position="serial")])
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
    for kwargs, mixes in ((dict(no_pta=True), False), ({}, True)):
        model = omniclip_wake_up(omniclip_omni(tiny_clip_state, **kwargs)).eval()
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
    trainable = L * (omniclip_pta_params(D, 32, 8) + omniclip_spg_params(D, 32, 3))
    assert common.count_params(model, trainable=True) == trainable
    assert model.describe().startswith(f"{trainable:,} trainable")
    model = omniclip_omni(tiny_clip_state, pta_ratio=0.5, pta_layers="1-2", spg_scales="1,2", spg_layers="0")
    assert sorted(model.pta) == ["1", "2"] and sorted(model.spg) == ["0"]
    assert common.count_params(model, trainable=True) == (2 * omniclip_pta_params(D, 64, 8)
                                                          + omniclip_spg_params(D, 32, 2))
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


def test_xclip_refuses_another_frame_count_in_one_line_for_classes_and_retrieval_alike(tiny_clip_state):
    """X-CLIP's temporal position embedding fixes T: a clip of another length is refused naming the flag, whether
    it is classified (forward) or embedded for retrieval (embed_videos)."""
    model = build("xclip", tiny_clip_state)
    for call in (model, model.embed_videos):
        with pytest.raises(ValueError, match=rf"built for {T} frames .* but got {T + 2}; pass --frames {T}"):
            call(video(frames=T + 2))


def test_xclip_state_dict_has_the_official_names(tiny_clip_state):
    keys = set(xclip_build(tiny_clip_state).state_dict())
    official = {"visual.conv1.weight", "visual.proj", "visual.transformer.resblocks.2.message_fc.weight",
                "visual.transformer.resblocks.0.message_ln.bias",
                "visual.transformer.resblocks.1.message_attn.in_proj_weight",
                "visual.transformer.resblocks.0.attn.out_proj.weight", "mit.positional_embedding",
                "mit.resblocks.0.attn.in_proj_weight", "mit.resblocks.0.mlp.c_proj.bias", "prompts_visual_ln.weight",
                "prompts_visual_proj", "prompts_generator.norm.weight", "prompts_generator.alpha",
                "prompts_generator.decoder.1.cross_attn.q_proj.weight",
                "prompts_generator.decoder.0.cross_attn.proj.bias",
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
    with pytest.raises(common.CheckpointError, match="lacks 1 of this model's tensors"):
        xclip.load_official(model, str(path))


def test_xclip_forward_refuses_another_frame_count(tiny_clip_state):
    with pytest.raises(ValueError, match="--frames 4"):
        xclip_build(tiny_clip_state)(video(frames=6))


def test_xclip_recipe_values():
    assert xclip.RECIPE["lr"] == 8e-6 and xclip.RECIPE["global_batch"] == 256 and xclip.RECIPE["template"] == "{}"
    assert xclip.RECIPE["mean"] == "imagenet" and xclip.RECIPE["betas"] == (0.9, 0.98)
    assert xclip.VARIANTS["few-shot"] == dict(frames=32, lr=2e-6, epochs=50, global_batch=64, official_accum=2)
    zero_shot = xclip.VARIANTS["zero-shot"]
    assert (zero_shot["test_clips"], zero_shot["test_crops"]) == (1, 1)   # --only_test


def test_xclip_cli_train_with_checkpointing_then_eval(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set", train_per_class=1)
    out = str(tmp_path / "run")
    base = ["--method", "xclip", "--train-list", paths["train"], "--val-list", paths["val"],
            "--data-root", paths["root"], "--classes", paths["classes"], "--model", "tiny", "--frames", "4",
            "--batch-size", "4", "--accum-steps", "1", "--workers", "0", "--steps-per-epoch", "1",
            "--out", out, "--test-clips", "1", "--test-crops", "1"]
    trained = train.main(base + ["--epochs", "1", "--grad-checkpointing"])
    # the same weights, reloaded
    again = train.main(base[:-6] + ["--out", f"{out}-eval", "--eval-only", "--weights", f"{out}/last.pt"])
    assert again["test"][0] == pytest.approx(trained["test"][0])


# ---- X-CLIP in the Hugging Face format
# transformers is not a dependency, so what its XCLIPModel gives was recorded once, with transformers 5.25.0 and
# torch 2.14.1 on a CPU: XCLIPModel(XCLIPConfig(**HF_TINY_CONFIG)) has 179 tensors, whose sorted "name (shape)" lines
# hash to HF_TINY_KEYS; loaded with hf_tiny_state() (strict), its logits_per_video for video() and NAMES (our token
# ids, the attention mask up to end-of-text) are HF_TINY_LOGITS, to 7 significant digits. Ours differed by 4.8e-6.
HF_TINY_KEYS = ("39760c20d1a4b4c1e80dd947bccd65308cace3af775d1f3ca925667cef0764fc", 179)
HF_TINY_LOGITS = [[-4.694757, -14.46792, -8.253208, -5.257583, -5.432278],
                  [-11.58487, -15.85649, -10.61413, -10.72453, -12.13582]]
HF_TINY_CONFIG = dict(
    model_type="xclip", architectures=["XCLIPModel"], logit_scale_init_value=4.605170249938965,   # ln 100 in float32
    projection_dim=64,
    prompt_layers=2, prompt_hidden_act="quick_gelu", prompt_num_attention_heads=1, prompt_alpha=0.1,
    text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, vocab_size=49408, max_position_embeddings=32),
    vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                       mit_hidden_size=64, mit_intermediate_size=256, mit_num_hidden_layers=1,
                       mit_num_attention_heads=1, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_frames=4,
                       image_size=32, patch_size=8))


def hf_tiny_state(seed=0, T=T, D=128, W=64, E=64, P=8, S=32, L=32, V=49408):
    """Every tensor of transformers' XCLIPModel for common's "tiny" CLIP (vision D wide, 3 layers; text W wide, 2
    layers; joint E) at T frames, under its names (written from modeling_x_clip.py), drawn in this order from a
    seeded generator: matrices N(0, 1/fan_in), LayerNorm weights 1 + 0.1 N(0, 1), other vectors 0.1 N(0, 1)."""
    shapes = {"text_model.embeddings.token_embedding.weight": (V, W),
              "text_model.embeddings.position_embedding.weight": (L, W)}

    def linear(name, n_out, n_in, bias=True):
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes.update({f"{name}.bias": (n_out,)} if bias else {})

    def norm(name, n):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (n,)

    def layer(name, n, attn="self_attn"):
        for p in ("q", "k", "v", "out"):
            linear(f"{name}.{attn}.{p}_proj", n, n)
        if attn == "message_attn":   # the message modules, then the CLIP layer's own
            linear(f"{name}.message_fc", n, n)
            norm(f"{name}.message_ln", n)
            layer(name, n)
            return
        norm(f"{name}.layer_norm1", n)
        linear(f"{name}.mlp.fc1", 4 * n, n)
        linear(f"{name}.mlp.fc2", n, 4 * n)
        norm(f"{name}.layer_norm2", n)

    for i in range(2):
        layer(f"text_model.encoder.layers.{i}", W)
    norm("text_model.final_layer_norm", W)
    shapes["vision_model.embeddings.class_embedding"] = (D,)
    shapes["vision_model.embeddings.patch_embedding.weight"] = (D, 3, P, P)
    shapes["vision_model.embeddings.position_embedding.weight"] = ((S // P) ** 2 + 1, D)
    norm("vision_model.pre_layernorm", D)
    for i in range(3):
        layer(f"vision_model.encoder.layers.{i}", D, "message_attn")
    norm("vision_model.post_layernorm", D)
    linear("visual_projection", E, D, bias=False)
    linear("text_projection", E, W, bias=False)
    norm("prompts_visual_layernorm", D)
    shapes["prompts_visual_projection"] = (D, E)
    shapes["mit.position_embedding"] = (1, T, E)
    layer("mit.encoder.layers.0", E)
    shapes["prompts_generator.alpha"] = (E,)
    norm("prompts_generator.layernorm", E)
    for i in range(2):
        for p in "qkv":
            linear(f"prompts_generator.decoder.{i}.cross_attn.{p}_proj", E, E, bias=False)
        linear(f"prompts_generator.decoder.{i}.cross_attn.proj", E, E)
        norm(f"prompts_generator.decoder.{i}.norm1", E)
        norm(f"prompts_generator.decoder.{i}.norm3", E)
        linear(f"prompts_generator.decoder.{i}.mlp.0", 4 * E, E)
        linear(f"prompts_generator.decoder.{i}.mlp.3", E, 4 * E)
    g, state = torch.Generator().manual_seed(seed), {}
    for k, s in shapes.items():
        x = torch.randn(s, generator=g)
        state[k] = x * math.prod(s[1:]) ** -0.5 if len(s) > 1 else 1 + 0.1 * x if k.endswith(".weight") else 0.1 * x
    state["logit_scale"] = torch.tensor(math.log(100.0))
    return state


def hf_keys(state):
    """sha256 of the sorted "name (shape)" lines, and the count."""
    lines = "\n".join(f"{k} {tuple(t.shape)}" for k, t in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest(), len(state)


def xclip_quick(name="tiny", frames=T, quick_gelu=True):
    """X-CLIP on a CLIP with QuickGELU, as transformers' needs (its MIT runs the CLIP's activation)."""
    model = xclip.Model(common.load_clip(name, quick_gelu=quick_gelu), T=frames).eval()
    model.set_classes(NAMES)
    return model


def hf_folder(folder, state, weights="model.safetensors", config=HF_TINY_CONFIG):
    """A folder as transformers writes it: config.json and the weights, safetensors or (as the hub's) torch.save."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    (save_file if weights.endswith(".safetensors") else torch.save)(state, os.path.join(folder, weights))
    return str(folder)


def test_xclip_hf_builder_has_the_tensors_of_transformers():
    assert hf_keys(hf_tiny_state()) == HF_TINY_KEYS


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_xclip_hf_weights_give_the_logits_of_transformers(tmp_path, weights):
    """The hub's folders hold pytorch_model.bin, saved by transformers 4.22 with its position_ids buffers."""
    state = hf_tiny_state()
    if weights == "pytorch_model.bin":
        state = {**state, "text_model.embeddings.position_ids": torch.arange(32)[None]}
    model = xclip_quick()
    xclip.load_official(model, hf_folder(tmp_path, state, weights))
    with torch.no_grad():
        torch.testing.assert_close(model(video()), torch.tensor(HF_TINY_LOGITS), atol=1e-4, rtol=0)
    assert xclip.hf_config(model) == HF_TINY_CONFIG


def test_xclip_hf_export_then_load_gives_the_same_model(tmp_path):
    model = xclip_perturbed(xclip_quick())
    xclip.save_hf(model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    written = load_file(tmp_path / "model.safetensors")
    assert hf_keys(written) == HF_TINY_KEYS                              # transformers' names and shapes
    ours = model.state_dict()
    back = xclip.from_hf(written)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], t) for k, t in ours.items())
    again = xclip_quick()
    xclip.load_official(again, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again(video()), model(video()))
    state = hf_tiny_state()                                              # and the other way: theirs -> ours -> theirs
    twice = xclip.to_hf(xclip.from_hf(state))
    assert twice.keys() == state.keys() and all(torch.equal(twice[k], t) for k, t in state.items())


def test_xclip_hf_hub_id_is_read_from_the_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = xclip_quick()
    assert xclip.is_hf("microsoft/xclip-tiny") and not xclip.is_hf(str(tmp_path))
    with pytest.raises(common.CheckpointError) as e:
        xclip.load_official(model, "microsoft/xclip-tiny")
    assert str(e.value) == (f"microsoft/xclip-tiny is not in the Hugging Face cache ({tmp_path}): download it "
                            f"where there is a network (hf download microsoft/xclip-tiny) and pass its folder, or the "
                            f"id again")
    repo, commit = tmp_path / "models--microsoft--xclip-tiny", "0" * 40   # what hf download leaves in the cache
    hf_folder(repo / "snapshots" / commit, hf_tiny_state())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    xclip.load_official(model, "microsoft/xclip-tiny")
    with torch.no_grad():
        torch.testing.assert_close(model(video()), torch.tensor(HF_TINY_LOGITS), atol=1e-4, rtol=0)


def test_xclip_hf_refuses_another_clip_or_frame_count_in_one_line(tmp_path):
    folder = hf_folder(tmp_path / "hf", hf_tiny_state())
    cases = [(xclip_quick(frames=8), "was trained with 4 frames"), (xclip_quick("tiny-64"), "pass --model tiny"),
             (xclip_quick(quick_gelu=False), "with --quick-gelu")]
    for model, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            xclip.load_official(model, folder)
        assert str(e.value).startswith(folder) and "\n" not in str(e.value)
    with pytest.raises(common.CheckpointError, match="with --quick-gelu"):
        xclip.save_hf(xclip_quick(quick_gelu=False), str(tmp_path / "out"))
    with pytest.raises(common.CheckpointError, match="built without some"):            # an ablation
        xclip.save_hf(xclip.Model(common.load_clip("tiny", quick_gelu=True), T=T, mit=False), str(tmp_path / "out"))
    clip = hf_folder(tmp_path / "clip", {}, config=dict(model_type="clip"))
    with pytest.raises(common.CheckpointError, match="a transformers 'clip' model, not an X-CLIP"):
        xclip.load_official(xclip_quick(), clip)


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
    args = train.get_args(["--method", OPENVCLIP_NAME, "--model", "ViT-L-14", "--benchmark",
                           "--interp-lambda", "0.3"])[0]
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
    with pytest.raises(common.CheckpointError, match="lacks"):
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
        text = model.clip.encode_text(common.tokenize(model.clip, ["a person climbs down a wall",
                                                                   "a dog runs on grass"]))
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

def test_openvclip_cli_run_averages_and_interpolates_at_the_end(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set")
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


def test_openvclip_cli_passes_each_batch_video_paths_for_the_captions(synthetic, tmp_path, monkeypatch):
    paths = synthetic(tmp_path / "set")
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


# ---------------------------------------------------------------- retrieval

def test_retrieval_metrics_by_hand():
    """Ranks worked by hand: queries are rows of the retrieval; ties count against the query."""
    sim = torch.tensor([[0.9, 0.1, 0.3],      # 3 videos x 3 captions, caption k of video k
                        [0.2, 0.8, 0.3],
                        [0.4, 0.7, 0.5]])
    m = train.retrieval_metrics(sim, torch.tensor([0, 1, 2]))
    # t2v: caption 0 -> video 0 first (1); caption 1 -> video 1 first (0.8 > 0.7); caption 2 -> video 2 first (0.5)
    # v2t: video 0 -> caption 0 (1); video 1 -> caption 1 (1); video 2: 0.7 > 0.5, its caption second (2)
    assert (m["t2v_r1"], m["t2v_median_rank"], m["t2v_mean_rank"]) == (100.0, 1, 1.0)
    assert (m["v2t_r1"], m["v2t_median_rank"], m["v2t_mean_rank"]) == (pytest.approx(200 / 3), 1, pytest.approx(4 / 3))
    constant = train.retrieval_metrics(torch.zeros(3, 3), torch.tensor([0, 1, 2]))   # all tied: all last
    assert (constant["t2v_r1"], constant["t2v_median_rank"], constant["v2t_mean_rank"]) == (0.0, 3, 3.0)
    perfect = train.retrieval_metrics(torch.eye(4), torch.arange(4))
    assert all(perfect[f"{w}_{k}"] == v for w in ("t2v", "v2t") for k, v in (("r1", 100), ("median_rank", 1)))
    # MSVD: several captions a video. Video 0 owns captions 0, 1; video 1 owns 2. v2t takes the best own caption.
    sim = torch.tensor([[0.2, 0.9, 0.5],
                        [0.3, 0.1, 0.4]])
    m = train.retrieval_metrics(sim, torch.tensor([0, 0, 1]))
    # t2v: caption 0 (video 0 0.2 < 0.3): rank 2; caption 1: 1; caption 2 (0.4 < 0.5): rank 2
    # v2t: video 0's best own caption is caption 1, first; video 1's caption 2 is first of its row
    assert m["t2v_mean_rank"] == pytest.approx(5 / 3) and m["t2v_median_rank"] == 2 and m["v2t_r1"] == 100.0
    assert (m["videos"], m["captions"], m["chance_r1"]) == (2, 3, 50.0)
    even = train.retrieval_metrics(torch.tensor([[1.0, 0.0], [2.0, 1.0]]), torch.tensor([0, 1]))
    assert even["t2v_median_rank"] == 1.5   # ranks 2 and 1: their median as np.median gives it


def test_video_to_text_with_several_captions_ranks_videos_by_their_best_caption_as_clip4clip():
    """MSVD's protocol (CLIP4Clip's multi-sentence evaluation): a video query scores every candidate video by the
    maximum over that video's captions, and its rank is its own video's among the N videos, not its best own
    caption's among the K captions. Ranks worked by hand; a tie still counts against the query."""
    sim = torch.tensor([[0.90, 0.10, 0.95, 0.20, 0.50],      # 3 videos x 5 captions: video 0 owns captions 0, 1,
                        [0.80, 0.70, 0.60, 0.30, 0.10],      # video 1 owns 2, 3, video 2 owns 4
                        [0.30, 0.30, 0.20, 0.20, 0.30]])
    m = train.retrieval_metrics(sim, torch.tensor([0, 0, 1, 1, 2]))
    # video 0: videos' best captions 0.90, 0.95, 0.50: its own second (2)
    # video 1: 0.80, 0.60, 0.10: its own second (2); among the captions it would be third (0.8, 0.7 above it)
    # video 2: 0.30, 0.20, 0.30: tied with video 0, so second (2); among the captions it would be third
    assert (m["v2t_r1"], m["v2t_r5"], m["v2t_median_rank"], m["v2t_mean_rank"]) == (0.0, 100.0, 2, 2.0)
    # text to video is as with one caption a video: captions 0-4 find their videos at 1, 3, 2, 1, 2
    assert (m["t2v_r1"], m["t2v_median_rank"], m["t2v_mean_rank"]) == (pytest.approx(40), 2, pytest.approx(9 / 5))


def test_readers_of_retrieval_sets_in_their_published_formats(tmp_path):
    for name in ("video7020.mp4", "video9731.mp4", "abc_1_5.avi", "def_2_8.avi", "mine/a b.mp4"):
        touch_files(tmp_path, name)
    csv = tmp_path / "MSRVTT_JSFUSION_test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr7020,video7020,a family is having coversation\n"
                   "ret1,msr9731,video9731,\"a man, singing\"\n")
    videos, captions = data.read_captions(str(csv), str(tmp_path))
    assert videos == [str(tmp_path / "video7020.mp4"), str(tmp_path / "video9731.mp4")]
    assert captions == [("a family is having coversation", 0), ("a man, singing", 1)]
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("abc_1_5\ndef_2_8\n")
    with open(msvd / "raw-captions.pkl", "wb") as f:
        pickle.dump({"abc_1_5": [["a", "cat", "plays"], ["the", "cat", "jumps"]], "def_2_8": [["a", "dog"]]}, f,
                    protocol=4)
    videos, captions = data.read_captions(str(msvd / "test_list.txt"), str(tmp_path))
    assert videos == [str(tmp_path / "abc_1_5.avi"), str(tmp_path / "def_2_8.avi")]
    assert captions == [("a cat plays", 0), ("the cat jumps", 0), ("a dog", 1)]
    plain = tmp_path / "captions.txt"
    plain.write_text("mine/a b.mp4\tsomeone waves\n\nmine/a b.mp4\ta wave\nvideo7020.mp4\ttalking\n")
    assert data.read_captions(str(plain), str(tmp_path)) == (
        [str(tmp_path / "mine/a b.mp4"), str(tmp_path / "video7020.mp4")],
        [("someone waves", 0), ("a wave", 0), ("talking", 1)])
    bad = [("mine/a b.mp4 someone waves\n", "captions.txt:1: expected 'path<TAB>caption'"),
           ("mine/a b.mp4\t \n", "captions.txt:1: an empty caption"),
           ("video7020.mp4\tok\ngone.mp4\tmissing\n", "captions.txt:2: no video at .*gone.mp4")]
    for text, says in bad:
        plain.write_text(text)
        with pytest.raises(data.DataError, match=says) as e:
            data.read_captions(str(plain), str(tmp_path))
        assert "\n" not in str(e.value)
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr1,video1,gone\n")
    with pytest.raises(data.DataError, match=r"MSRVTT_JSFUSION_test.csv:2: no video at .*video1.mp4"):
        data.read_captions(str(csv), str(tmp_path))
    marker = tmp_path / "ran"
    with open(msvd / "raw-captions.pkl", "wb") as f:   # a caption file that would run code: refused, never run
        pickle.dump({"abc_1_5": Payload(marker, "system")}, f)
    with pytest.raises(data.DataError, match=r"raw-captions.pkl: not loaded, because reading it would run code \(it "
                                             r"names posix.system\)"):
        data.read_captions(str(msvd / "test_list.txt"), str(tmp_path))
    assert not marker.exists()


# ------------------------------------------------------- lists and class files as the published loaders read them
def test_data_retrieval_lists_find_videos_as_clip4clips_loaders(tmp_path):
    """MSR-VTT: root/video<N>.mp4, else .webm (CLIP4Clip's dataloader_msrvtt_retrieval.py); MSVD: <id> with any
    video extension anywhere under root (its dataloader_msvd_retrieval.py walks the folder); two for one id: refused."""
    touch_files(str(tmp_path), "video1.mp4", "video2.webm", "video3.mp4", "video3.webm", "clips/abc.mp4",
                "def.avi", "def.txt")
    csv = tmp_path / "MSRVTT_JSFUSION_test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nr1,m1,video1,one\nr2,m2,video2,two\nr3,m3,video3,three\n")
    videos, _ = data.read_captions(str(csv), str(tmp_path))
    assert videos == [str(tmp_path / n) for n in ("video1.mp4", "video2.webm", "video3.mp4")]
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("abc\ndef\n")
    with open(msvd / "raw-captions.pkl", "wb") as f:
        pickle.dump({"abc": [["a", "cat"]], "def": [["a", "dog"]], "gone": [["none"]]}, f, protocol=4)
    videos, captions = data.read_captions(str(msvd / "test_list.txt"), str(tmp_path))
    assert videos == [str(tmp_path / "clips/abc.mp4"), str(tmp_path / "def.avi")]
    assert captions == [("a cat", 0), ("a dog", 1)]
    touch_files(str(tmp_path), "other/abc.webm")
    with pytest.raises(data.DataError, match=r"test_list.txt:1: two videos for 'abc' under .*: .*clips/abc.mp4 and "
                                             r".*other/abc.webm; keep one") as e:
        data.read_captions(str(msvd / "test_list.txt"), str(tmp_path))
    assert "\n" not in str(e.value)
    (msvd / "test_list.txt").write_text("gone\n")
    with pytest.raises(data.DataError, match=r"test_list.txt:1: no video at .*gone\.\*"):
        data.read_captions(str(msvd / "test_list.txt"), str(tmp_path))


def test_data_class_files_of_one_name_a_line_as_mmaction2s_label_maps(tmp_path):
    label_map = tmp_path / "label_map_k400.txt"
    label_map.write_text("abseiling\nair drumming\n\n\"push, pull\"\nanswering questions\n")
    assert data.load_classes(str(label_map)) == ["abseiling", "air drumming", "push, pull", "answering questions"]
    for text, line, says in (("abseiling\n1,air drumming\n", 2, "one class name a line"),
                             ("0,abseiling\nair drumming\n", 2, "'id,name'")):
        label_map.write_text(text)
        with pytest.raises(data.DataError, match=rf"label_map_k400.txt:{line}: expected {says}") as e:
            data.load_classes(str(label_map))
        assert "\n" not in str(e.value)
    label_map.write_text("abseiling\nair drumming\n")   # taken wherever an "id,name" file is
    touch_files(str(tmp_path), "a.mp4", "b.mp4")
    (tmp_path / "test.txt").write_text("a.mp4 1\nb.mp4 0\n")
    assert data.read_videos(str(tmp_path / "test.txt"), str(tmp_path), 1, False, str(label_map)) == (
        [(str(tmp_path / "a.mp4"), 1), (str(tmp_path / "b.mp4"), 0)], ["abseiling", "air drumming"])


def test_data_a_csv_of_unknown_columns_names_them_and_every_known_format(tmp_path):
    msrvtt, other = tmp_path / "MSRVTT_JSFUSION_test.csv", tmp_path / "other.csv"
    msrvtt.write_text("key,vid_key,video_id,sentence\nr1,m1,video1,one\n")
    other.write_text("a,b,c\n1,2,3\n")
    known = r"Kinetics' video list: label,youtube_id,time_start,time_end.*MSR-VTT's captions: key,vid_key,video_id," \
            r"sentence.*class file: id,name"
    for read, path, found in ((data.read_dataset, msrvtt, "key,vid_key,video_id,sentence"), (data.read_captions, other,
                              "a,b,c"), (data.read_dataset, other, "a,b,c"), (data.load_classes, other, "a,b,c")):
        with pytest.raises(data.DataError, match=rf"{path.name}:1: the columns {found} are no CSV format read here.*"
                                                 + known) as e:
            read(str(path))
        assert "\n" not in str(e.value)


def test_data_read_test_videos_takes_any_list_a_test_takes(tmp_path):
    touch_files(str(tmp_path), "video1.mp4", "video2.webm", "a b.mp4", "c.mp4")
    (tmp_path / "msrvtt.csv").write_text("key,vid_key,video_id,sentence\nr1,m1,video1,one\nr2,m2,video2,two\n"
                                         "r3,m3,video1,again\n")
    assert data.read_test_videos(str(tmp_path / "msrvtt.csv"), str(tmp_path)) == (
        [(str(tmp_path / "video1.mp4"), 0), (str(tmp_path / "video2.webm"), 0)], [["one", "again"], ["two"]])
    (tmp_path / "captions.txt").write_text("a b.mp4\tsomeone waves\nc.mp4\t2 dogs\na b.mp4\ta wave\n")
    assert data.read_test_videos(str(tmp_path / "captions.txt"), str(tmp_path)) == (
        [(str(tmp_path / "a b.mp4"), 0), (str(tmp_path / "c.mp4"), 0)], [["someone waves", "a wave"], ["2 dogs"]])
    (tmp_path / "test.txt").write_text("a b.mp4 3\nc.mp4\t1\n")
    assert data.read_test_videos(str(tmp_path / "test.txt"), str(tmp_path)) == (
        [(str(tmp_path / "a b.mp4"), 3), (str(tmp_path / "c.mp4"), 1)], None)
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("video2\n")
    with open(msvd / "raw-captions.pkl", "wb") as f:
        pickle.dump({"video2": [["a", "dog"], ["the", "dog"]]}, f, protocol=4)
    assert data.read_test_videos(str(msvd / "test_list.txt"), str(tmp_path)) == (
        [(str(tmp_path / "video2.webm"), 0)], [["a dog", "the dog"]])


@pytest.mark.parametrize("name", METHODS)
def test_retrieval_pieces_give_the_forward_and_a_class_sentence_scores_as_its_class(name, tiny_clip_state):
    """similarity(embed_videos(v), embed_captions(captions)) scores every pair; a method's sentence for a class,
    given as a caption, scores as that class does in forward (Open-VCLIP averages 28 sentences: its caption
    scores are the cosine of the same pieces). X-CLIP's pairs in chunks equal its forward on each pair."""
    model = build(name, tiny_clip_state).eval()
    x = video(batch=3)
    template = "{}" if name == "xclip" else getattr(model, "template", "{}")
    with torch.no_grad():
        logits = model(x)                                                     # (3, C)
        state, text = model.embed_videos(x), model.embed_captions([template.format(n) for n in NAMES])
        sim = model.similarity(state, text)
        if name != "openvclip":
            torch.testing.assert_close(sim, logits, rtol=1e-5, atol=1e-4)
        else:
            v = F.normalize(model.frame_embeddings(x).mean(1), dim=-1)
            torch.testing.assert_close(sim, model.clip.logit_scale.exp() * v @ F.normalize(text, dim=-1).t())
        if name == "xclip":   # chunks of 2 videos x 2 captions: every pair as on its own
            v, ctx = state
            prompted = lambda t, c: (w := t.expand(len(c), -1, -1)) + model.prompts_generator(w, c)
            chunked = common.prompted_similarity(v, ctx, text, prompted, model.logit_scale, videos=2, captions=2)
            torch.testing.assert_close(chunked, sim, rtol=1e-5, atol=1e-5)


def test_cli_retrieval_embed_and_search_round_trip(synthetic, tmp_path, monkeypatch, capsys):
    """The embedded retrieval set: 96 videos, one caption each that no other shares; --protocol retrieval tests
    it; --embed writes its embeddings; --search finds a video by its caption, as the retrieval test ranks it."""
    paths = synthetic(tmp_path / "set")
    paths["retrieval"] = data.make_retrieval_set(paths["root"], T=12)
    listed = data.read_captions(paths["retrieval"], paths["root"])
    assert len(listed[0]) == 96 and len({c for c, _ in listed[1]}) == 96
    monkeypatch.chdir(tmp_path)
    test = ["--method", "vificlip", "--model", "tiny", "--protocol", "retrieval", "--val-list", paths["retrieval"],
            "--data-root", paths["root"], "--workers", "0", "--frames", "4", "--test-clips", "1", "--test-crops", "1",
            "--batch-size", "32", "--threads", "1"]
    scored, metrics = [], train.retrieval_metrics
    monkeypatch.setattr(train, "retrieval_metrics", lambda sim, owner: scored.append(sim) or metrics(sim, owner))
    results = train.main([*test, "--eval-only"])
    assert results["retrieval"][0]["videos"] == 96 and scored[0].shape == (96, 96)
    train.main([*test, "--embed"])
    stored = torch.load(os.path.join("runs", "vificlip-retrieval-random-embed", "embeddings.pt"), weights_only=True)
    assert stored["embeddings"].shape == (96, 64) and torch.allclose(stored["embeddings"].norm(dim=1), torch.ones(96))
    capsys.readouterr()
    found = train.main(["--method", "vificlip", "--search", listed[1][5][0], "--embeddings",
                        os.path.join("runs", "vificlip-retrieval-random-embed", "embeddings.pt"), "--top-k", "3"])
    assert "the 3 closest of the 96" in capsys.readouterr().out   # the same model (seed) ranks as the test did:
    assert [path for path, _ in found] == [listed[0][i] for i in scored[0][:, 5].topk(3).indices]
    with pytest.raises(SystemExit, match="was made by --method vificlip: add --method vificlip"):
        train.main(["--method", "xclip", "--search", "a", "--embeddings",
                    os.path.join("runs", "vificlip-retrieval-random-embed", "embeddings.pt")])


# ---------------------------------------------------------------------------------------------------------
# Added after mutation testing (see the mutation report): each test pins down a behaviour that a surviving
# mutant changed and no test noticed.
# ---------------------------------------------------------------------------------------------------------

def test_timm_schedule_leaves_the_warm_up_at_the_micro_batch_where_it_ends():
    """timm's CosineLRScheduler (warmup_prefix off): warm-up while t < warmup_t, the cosine over t from t = warmup_t
    on. With one micro-batch a step (official_accum 1) optimizer step j runs at t = j - 1, so the boundary is hit."""
    import math
    args = argparse.Namespace(schedule="timm", official_accum=1, warmup_epochs=1, epochs=4, warmup_start_ratio=0)
    floor = 0.01   # 10 steps an epoch: warm-up 10 micro-batches, 40 in all
    assert train.lr_factor(10, args, 10, floor) == pytest.approx(9 / 10)
    assert train.lr_factor(11, args, 10, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_soft_cross_entropy_is_torchs_cross_entropy_and_linear_in_the_target():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))   # 3 videos, 5 classes: not square
    label = torch.tensor([0, 4, 2])
    for smoothing in (0.0, 0.1):   # timm's smoothing (off = s / C) is torch's label_smoothing
        torch.testing.assert_close(train.soft_cross_entropy(logits, train.soft_targets(label, 5, smoothing)),
                                   F.cross_entropy(logits, label, label_smoothing=smoothing))
    mixed = 0.7 * F.one_hot(label, 5).float() + 0.3 * F.one_hot(label.roll(1), 5).float()   # a mixup target
    torch.testing.assert_close(train.soft_cross_entropy(logits, mixed),
                               0.7 * F.cross_entropy(logits, label) + 0.3 * F.cross_entropy(logits, label.roll(1)))


def test_micro_batches_of_several_clips_per_video_repeat_each_label_for_its_clips():
    """3 videos x 2 clips of uint8 frames (B != K) and their colour draws -> 6 clips, each coloured by its own
    draws and normalised, each with its video's target."""
    args = argparse.Namespace(mean="clip", smoothing=0.0, mixup=0.0, cutmix=0.0, mix_switch=0.5)
    video = torch.randint(0, 256, (3, 2, T, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    draws = torch.stack([torch.stack([data._colour_draws(rng, T, 1.0, 0.5) for _ in range(2)]) for _ in range(3)])
    label = torch.tensor([4, 0, 2])
    (clips, target, extra), = train.micro_batches([(video, label, draws)], args, torch.device("cpu"), 5, None)
    alone = torch.stack([data.colour(clip, d) for clip, d in zip(video.flatten(0, 1), draws.flatten(0, 1))])
    assert not torch.equal(alone, video.flatten(0, 1))                  # the draws do colour
    assert torch.equal(clips, data.normalise(alone, *train.STATS["clip"])) and extra == {}
    assert torch.equal(target, F.one_hot(torch.tensor([4, 4, 0, 0, 2, 2]), 5).float())


def test_training_step_steps_once_on_the_mean_of_its_micro_batches_text_gradient_included(tiny_clip_state):
    """ViFi-CLIP (its text tower trains, encoded once a step by begin_step/end_step), 3 micro-batches of 2 clips of
    4 frames, plain SGD at lr 1: the step moves every weight by minus the gradient of the mean of the 3 losses,
    returns the mean of the 3 losses and the 6 clips; a step cut short (2 of 3) takes no step."""
    model, reference = build("vificlip", tiny_clip_state), build("vificlip", tiny_clip_state)
    micro = [(video(seed=k, batch=2), train.soft_targets(torch.tensor([k, 4 - k]), C, 0.0), {}) for k in range(3)]
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=1.0)
    opt = (sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0), torch.amp.GradScaler("cpu", enabled=False))
    args = argparse.Namespace(grad_clip=0.0)
    before = [p.detach().clone() for p in params]
    assert train.training_step(model, iter(micro[:2]), 3, opt, args, contextlib.nullcontext) == (None, 4)
    sgd.zero_grad(set_to_none=True)
    assert all(torch.equal(p, b) for p, b in zip(params, before))             # no step
    loss, clips = train.training_step(model, iter(micro), 3, opt, args, contextlib.nullcontext)
    losses = [train.soft_cross_entropy(reference(v), t) for v, t, _ in micro]
    (sum(losses) / 3).backward()
    assert clips == 6 and loss.item() == pytest.approx(sum(l.item() for l in losses) / 3, rel=1e-5)
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().max() > 0 for n, p in reference.named_parameters()
               if "transformer.resblocks" in n and "visual" not in n)          # the text tower learns
    for p, b, r in zip(params, before, ref_params):
        torch.testing.assert_close(b - p, r.grad if r.grad is not None else torch.zeros_like(r), rtol=1e-4, atol=1e-6)


def test_make_optimizer_sets_each_groups_floor_and_start_and_the_cuda_only_settings(tiny_clip_state, monkeypatch):
    """floor and start are absolute (lr_min_ratio and warmup_start_ratio of --lr) in every group, the 10x groups
    included; TF32, the fused AdamW and the fp16 loss scaler only on CUDA (asked here of a CPU with a cuda device)."""
    model = build("xclip", tiny_clip_state)
    args = argparse.Namespace(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, lr_min_ratio=0.01,
                              warmup_start_ratio=0.02, schedule="slowfast", official_accum=1, warmup_epochs=1, epochs=3)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: enabled)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        optimizer, schedule, scaled = train.make_optimizer(args, model, torch.device("cpu"), None, 10)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not optimizer.defaults["fused"] and scaled is False
        assert len(set(schedule.base_lrs)) == 2                                   # peaks 1x and 10x
        for group, peak, factor in zip(optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
            assert peak * factor(0) == pytest.approx(0.02 * 1e-3)              # the warm-up's start
            assert peak * factor(30) == pytest.approx(0.01 * 1e-3)             # the end: 3 epochs of 10 steps
        optimizer, _, scaled = train.make_optimizer(args, model, torch.device("cuda"), torch.float16, 10)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert optimizer.defaults["fused"] is True and scaled is True
        assert train.make_optimizer(args, model, torch.device("cuda"), torch.bfloat16, 10)[2] is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_evaluate_figures_of_seven_videos_by_hand():
    """One view each of 8 classes; ranks of the true class: 1, 2 (tied with its twin), 6, 2, 1, 5, 1. top1 3/7,
    top5 6/7 (6th is out), per class (2/3, 1/2, 0, 0), twins 0 <-> 1 over the 5 videos of those classes: the
    true class beats its twin in 3 (a tie is no win); standard errors 100 sqrt(p (1 - p) / n)."""
    import math
    rows = torch.tensor([
        [5., 4, 0, 0, 0, 0, 0, -1],    # label 0: first; beats twin 1
        [3., 3, 0, 1, 5, 0, 0, -1],    # label 1: second, tied with twin 0: no win
        [5., 4, 0.5, 3, 2, 1, 0, -1],  # label 2: sixth, out of the top 5
        [4., 5, 0, 0, 0, 0, 0, -1],    # label 0: second; loses to twin 1
        [1., 5, 0, 0, 0, 0, 0, -1],    # label 1: first; beats twin 0
        [5., 4, 3, 1, 2, 0, 0, -1],    # label 3: fifth
        [5., 1, 0, 0, 0, 0, 0, -1]])   # label 0: first; beats twin 1
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0])

    class Fixed(torch.nn.Module):
        def forward(self, video):
            return rows[video[:, 0, 0, 0, 0].long()]

    entered = []

    def autocast():
        entered.append(1)
        return contextlib.nullcontext()

    clips = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1, 1, 1).expand(7, 1, 1, 3, 2, 2)
    twins = [1, 0] + [-1] * 6
    m = train.evaluate(Fixed(), [(clips, labels, torch.arange(7))], torch.device("cpu"), autocast, twins)
    assert entered == [1] and "skipped" not in m
    assert (m["videos"], m["classes"]) == (7, 8)
    assert m["top1"] == pytest.approx(100 * 3 / 7) and m["top5"] == pytest.approx(100 * 6 / 7)
    assert m["mean_class"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 4)
    assert m["twins"] == pytest.approx(60.0) and m["twins_se"] == pytest.approx(100 * math.sqrt(0.6 * 0.4 / 5))
    assert m["top1_se"] == pytest.approx(100 * math.sqrt(3 / 7 * 4 / 7 / 7))
    train.evaluate(Fixed(), [(clips, labels, torch.arange(7))], torch.device("cpu"), autocast, twins, amp=False)
    assert entered == [1]                                                        # amp=False: no autocast


def test_fused_softmax_views_are_probabilities_and_the_standard_error_by_hand():
    import math
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))   # 2 videos, 3 views, 4 classes
    fused = train.fuse(logits, "softmax")
    torch.testing.assert_close(fused, logits.softmax(-1).mean(1))
    torch.testing.assert_close(fused.sum(-1), torch.ones(2))                    # --predict prints them as %
    assert train.standard_error(25.0, 4) == pytest.approx(100 * math.sqrt(3 / 64))
    assert train.standard_error(90.0, 10) == pytest.approx(100 * math.sqrt(0.09 / 10))


def test_summary_line_says_when_figures_are_averaged_over_shot_seeds_and_equal_accuracies_keep_their_mean():
    two = {"test base": [dict(top1=60.0, top5=90.0), dict(top1=80.0, top5=100.0)],
           "test novel": [dict(top1=20.0, top5=50.0), dict(top1=40.0, top5=70.0)]}
    assert train.summarise("base2novel", two)[1].endswith("  HM 42.0 (averaged over 2 shot seeds)")
    one = {t: ms[:1] for t, ms in two.items()}
    assert train.summarise("base2novel", one)[1].endswith("  HM 30.0")
    splits = {f"split {k}": [dict(top1=t, top5=100.0)] for k, t in zip((1, 2, 3), (60.0, 70.0, 80.0))}
    assert "averaged" not in train.summarise("zero-shot", splits)[1]
    assert train.harmonic_mean(50.0, 50.0) == 50.0


def test_sample_indices_edge_cases_by_hand():
    with pytest.raises(ValueError, match="num_frames >= 1"):
        data.sample_indices(0, 8)
    # decoded whole (no timestamps), 300 frames at 30 fps, stride 8: the clip spans 64 frames, the free range 236.
    # One test clip: the middle, start floor(236 / 2) = 118, linspace(118, 181, 8).
    assert data.sample_indices(300, 8, "dense", 8, fps=30) == [118, 127, 136, 145, 154, 163, 172, 181]
    # three: starts k * floor(236 / 2) = 0, 118, 236
    assert data.sample_indices(300, 8, "dense", 8, fps=30, clip=2, num_clips=3) == list(range(236, 300, 9))
    # 40 frames: the clip does not fit, both clips start at 0 and the last frame repeats
    assert data.sample_indices(40, 8, "dense", 8, fps=30, clip=1, num_clips=2) == [0, 9, 18, 27, 36, 39, 39, 39]
    # one frame a clip, with timestamps: a window of 1 frame, free range 9, test clip 1 of 4 starts at 2.25: frame 3
    assert data.sample_indices(10, 1, "dense", 8, fps=30, ticks=512, clip=1, num_clips=4) == [3]


def test_mix_by_hand_nothing_to_mix_mixup_of_two_and_cutmix_boxes():
    """X-CLIP's blending: nothing drawn when both are off or the batch is one video; with both on, torch.rand() <
    switch picks CutMix; CutMix pastes the partner's box of int(S sqrt(1 - lam)) around a random centre, clipped
    at the border, and mixes the targets by the area pasted. Frames 8 x 10 (not square), 20 seeds per case."""
    import math
    video, target = torch.randn(4, 2, 3, 8, 10), train.soft_targets(torch.arange(4), 4, 0.0)
    for v, t, mixup, cutmix in ((video, target, 0.0, 0.0), (video[:1], target[:1], 0.8, 1.0)):
        state = torch.get_rng_state()
        out = data.mix(v, t, mixup, cutmix, 0.5)
        assert out[0] is v and out[1] is t and torch.equal(torch.get_rng_state(), state)

    def cut(v, t, lam, partner, cy, cx):
        h, w = int(8 * math.sqrt(1 - lam)), int(10 * math.sqrt(1 - lam))
        y0, y1, x0, x1 = max(cy - h // 2, 0), min(cy + h // 2, 8), max(cx - w // 2, 0), min(cx + w // 2, 10)
        out = v.clone()
        out[..., y0:y1, x0:x1] = v[partner][..., y0:y1, x0:x1]
        area = 1 - (y1 - y0) * (x1 - x0) / 80
        return out, area * t + (1 - area) * t[partner]

    kinds = set()
    for seed in range(20):
        for mixup, cutmix, B in ((0.0, 1.0, 4), (0.8, 1.0, 4), (0.8, 0.0, 2)):
            torch.manual_seed(seed)
            u = torch.rand(()) if mixup > 0 and cutmix > 0 else None
            if u is None and cutmix > 0 or u is not None and u < 0.5:
                lam = float(torch.distributions.Beta(cutmix, cutmix).sample())
                partner = torch.randperm(B)
                cy, cx = int(torch.randint(8, ())), int(torch.randint(10, ()))
                expected = cut(video[:B], target[:B], lam, partner, cy, cx)
                kinds.add(("cutmix", cy - int(8 * math.sqrt(1 - lam)) // 2 > 0))
            else:
                lam = float(torch.distributions.Beta(mixup, mixup).sample())
                partner = torch.randperm(B)
                expected = (lam * video[:B] + (1 - lam) * video[:B][partner],
                            lam * target[:B] + (1 - lam) * target[:B][partner])
                kinds.add(("mixup", B, bool((partner != torch.arange(B)).any())))
            torch.manual_seed(seed)
            got = data.mix(video[:B], target[:B], mixup, cutmix, 0.5)
            torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
            torch.testing.assert_close(got[1], expected[1])
    assert {("cutmix", True), ("cutmix", False), ("mixup", 2, True), ("mixup", 4, True)} <= kinds   # every path


def test_multiscale_crop_snaps_sides_within_3_pixels_and_takes_the_5_fixed_places():
    """mmaction2 MultiScaleCrop (random_crop=False): sides int(short * scale), one within 3 px of the input size
    set to it, the two scale indices at most one apart, and (top, left) one of the 5 fixed places on the
    (H - h) // 4, (W - w) // 4 grid: the corners and the centre."""
    tsn = data.TrainTransform(224, data.CLIP_MEAN, data.CLIP_STD)
    # 258: 258, 225 (3 px or less from 224: snapped), 193, 170; 260: 260, 227 (3 px away: kept), 195, 171
    for height, sides in ((258, (258, 224, 193, 170)), (260, (260, 227, 195, 171))):
        expected = set()
        for i, h in enumerate(sides):
            for j, w in enumerate(sides):
                if abs(i - j) <= 1:
                    dy, dx = (height - h) // 4, (340 - w) // 4
                    expected |= {(top, left, h, w) for top, left in
                                 ((0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx))}
        assert {tsn._crop_box(height, 340, random.Random(s)) for s in range(1000)} == expected


def test_test_crops_and_sizes_of_portrait_frames_and_rounding_by_hand():
    view = data.TestTransform(224, data.CLIP_MEAN, data.CLIP_STD, crops=1, crop="slowfast")
    assert view.boxes(340, 256) == ((297, 224), [(37, 0)])                      # centre ceil(73 / 2)
    assert data.short_side_size(120, 124, 224, "mmcv") == (224, 231)            # 231.47 rounds down
    assert data.short_side_size(124, 120, 224, "mmcv") == (231, 224)


def test_protocol_helpers_on_an_empty_list_and_their_messages():
    assert data.few_shot([], 2, seed=0) == []
    with pytest.raises(ValueError, match=r"label 4 is outside 0\.\.3"):
        data.base_novel([("v", 4)], 4)


def test_xclip_quick_gelu_is_clips():
    import open_clip.transformer
    x = torch.linspace(-4, 4, 17)
    assert torch.equal(xclip.QuickGELU()(x), open_clip.transformer.QuickGELU()(x))
    assert xclip.QuickGELU()(torch.tensor(1.0)).item() == pytest.approx(1 / (1 + np.exp(-1.702)))


def test_xclip_mit_block_and_prompt_layer_are_the_official_residual_blocks():
    """mit.py ResidualAttentionBlock: x + attn(ln_1 x), then + mlp(ln_2 .); prompt.py PromptGeneratorLayer:
    u + cross_attn(norm1 u, ctx), then + mlp(norm3 .). torch's own attention (nn.MultiheadAttention) as reference."""
    torch.manual_seed(0)
    E = 128
    blk, x = xclip.ResidualAttentionBlock(E), torch.randn(2, 5, E)
    y = blk.ln_1(x)
    ref = x + blk.attn(y, y, y, need_weights=False)[0]
    torch.testing.assert_close(blk(x), ref + blk.mlp(blk.ln_2(ref)))
    layer, u, ctx = xclip.PromptGeneratorLayer(E), torch.randn(2, 3, E), torch.randn(2, 7, E)
    a = layer.cross_attn
    mha = torch.nn.MultiheadAttention(E, a.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(a.proj.weight)
        mha.out_proj.bias.copy_(a.proj.bias)
    q = layer.norm1(u)
    ref = u + mha(q, ctx, ctx, need_weights=False)[0]
    torch.testing.assert_close(layer(u, ctx), ref + layer.mlp(layer.norm3(ref)))


def video_prompt_inputs(model, call):
    """Run call() and return (the prompt generator's (text, ctx), its output)."""
    seen = {}
    handle = model.prompts_generator.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    try:
        call()
    finally:
        handle.remove()
    return seen["args"], seen["out"]


def test_xclip_class_embeddings_get_the_prompts_made_from_the_videos_patch_tokens(tiny_clip_state):
    model = xclip_perturbed(xclip_build(tiny_clip_state))
    x = video()
    logits = {}
    (w, ctx), out = video_prompt_inputs(model, lambda: logits.update(all=model(x)))
    N = model.visual.positional_embedding.shape[0] - 1                          # patches, no class token
    assert ctx.shape == (B, N, model.text_projection.shape[1])
    seen = {}
    model.mit.register_forward_hook(lambda m, args, v: seen.update(v=v))
    model(x)
    torch.testing.assert_close(logits["all"], common.cosine_logits(seen["v"], w + out, model.logit_scale))


def test_omniclip_video_prompts_are_x_clips_formula(tiny_clip_state):
    """--video-prompts: the class embeddings plus alpha * (the layers' update of them), the layers
    u + cross_attn(norm1 u, norm ctx), then + mlp(norm3 .); ctx from the patch tokens only."""
    model = omniclip_wake_up(omniclip_omni(tiny_clip_state, video_prompts=True))
    x = video()
    logits = {}
    (text, ctx), out = video_prompt_inputs(model, lambda: logits.update(all=model(x)))
    N = model.clip.visual.positional_embedding.shape[0] - 1
    assert ctx.shape == (B, N, text.shape[-1])
    frames, _ = model.frame_features(x)
    torch.testing.assert_close(logits["all"], common.cosine_logits(frames.mean(1), text + out, model.clip.logit_scale))
    vsp = model.prompts_generator
    u, c = text.expand(B, -1, -1), vsp.norm(ctx)
    for layer in vsp.decoder:
        u = u + layer.cross_attn(layer.norm1(u), c, c, need_weights=False)[0]
        u = u + layer.mlp(layer.norm3(u))
    torch.testing.assert_close(out, vsp.alpha * u)


def test_omniclip_st_block_adds_the_adapter_once_in_parallel_or_before_the_block_in_serial(tiny_clip_state):
    model = omniclip_wake_up(omniclip_omni(tiny_clip_state))
    visual = model.clip.visual
    blk, pta = visual.transformer.resblocks[0], model.pta["0"]
    x = common.patch_embed(visual, video().flatten(0, 1))                       # (B*T, K, D)
    with torch.no_grad():
        y = blk.ln_1(x)
        out = x + blk.ls_1(common.attention(blk.attn, y)) + 0.5 * pta(y, T)     # parallel: the same ln_1 x
        torch.testing.assert_close(omniclip.st_block(blk, x, T, pta, None, False, 0.5),
                                   out + blk.mlp(blk.ln_2(out)))
        torch.testing.assert_close(omniclip.st_block(blk, x, T, pta, None, True, 0.5),
                                   common.block(blk, x + 0.5 * pta(blk.ln_1(x), T)))


def test_omniclip_temporal_adapter_attends_over_time_with_the_time_embedding_added():
    torch.manual_seed(0)
    Bv, K, D, Da = 2, 3, 64, 16
    pta = omniclip.TemporalAdapter(D, Da, T)
    with torch.no_grad():
        for p in pta.parameters():
            p.normal_(std=0.5)
    z = torch.randn(Bv * T, K, D)
    h = pta.down_proj(z).view(Bv, T, K, Da).transpose(1, 2).reshape(Bv * K, T, Da) + pta.temporal_embedding
    a = pta.attn(h, h, h, need_weights=False)[0]
    torch.testing.assert_close(pta(z, T), pta.up_proj(a.view(Bv, K, T, Da).transpose(1, 2).reshape(Bv * T, K, Da)))


def test_omniclip_spg_prompts_are_region_averages_plus_scale_embeddings_then_refined():
    torch.manual_seed(0)
    D, g = 64, 4
    spg = omniclip.SelfPromptGenerator(D, 16, scales=(1, 2))
    with torch.no_grad():
        for p in spg.parameters():
            p.normal_(std=0.5)
    x = torch.randn(3, 1 + g * g, D)
    grid = x[:, 1:].view(3, g, g, D)                                            # row-major patches
    regions = [grid.mean((1, 2))] + [grid[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((1, 2))
                                     for i in range(2) for j in range(2)]
    q = torch.stack(regions, 1) + spg.scale_embedding[[0, 1, 1, 1, 1]]          # (3, 1 + 4, D)
    torch.testing.assert_close(spg(x), q + spg.up_proj(F.gelu(spg.down_proj(spg.norm(q)))))


def test_omniclip_temporal_embedding_resampled_to_more_frames_than_it_has_channels():
    e = torch.randn(4, 8)                                                       # 4 frames, 8 channels
    r = omniclip.resample(e, 8)
    assert r.shape == (8, 8)
    torch.testing.assert_close(r[[0, -1]], e[[0, -1]])                          # first and last rows kept
    torch.testing.assert_close(r[1], e[0] + (e[1] - e[0]) * 3 / 7)              # frame 1 of 8 sits at 3/7


# ---------------------------------------------------------------------------------------------------------
# A newcomer's third hour: every line a run prints is true of what it did, every suggestion works as given
# ---------------------------------------------------------------------------------------------------------

def test_cli_a_run_trained_further_and_stopped_in_its_test_resumes_to_a_test_of_its_new_weights(synthetic, tmp_path,
                                                                                                   monkeypatch):
    """A finished 1-epoch run trained on to 2 epochs, stopped by a real SIGINT as its final test starts, is not
    finished: resumed, it tests its new weights (trained_epochs 2), and its 1-epoch test and result stay."""
    import signal
    paths = synthetic(tmp_path / "set")
    out = str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--epochs", "1", "--val-every", "0", "--out", out))
    judge = train.judge

    def ctrl_c(*args, **kwargs):   # the final test begins: Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
        return judge(*args, **kwargs)

    monkeypatch.setattr(train, "judge", ctrl_c)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)   # even in a job run ignoring SIGINT
    with pytest.raises(SystemExit) as stopped:
        try:
            train.cli(["--method", "vificlip", "--resume", out, "--epochs", "2"])
        finally:
            signal.signal(signal.SIGINT, ignored)
    assert stopped.value.code == 130
    monkeypatch.setattr(train, "judge", judge)
    assert train.main(["--method", "vificlip", "--resume", out]) is not None      # not "finished": tested now
    lines = train.read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [(r.get("test"), r.get("result") is not None, r["trained_epochs"]) for r in lines if "epoch" not in r] == [
        ("test", False, 1), (None, True, 1), ("test", False, 2), (None, True, 2)]
    assert train.main(["--method", "vificlip", "--resume", out]) is None           # now it is finished


def test_cli_predict_without_a_run_uses_the_stand_in_and_points_to_a_run(synthetic, tmp_path, monkeypatch, capsys):
    """--predict without weights takes the stand-in CLIP, as --eval-only and --embed do; without classes it
    names the flags that give them; --resume without a name takes the latest run that has a checkpoint, and
    says so; predicting a video of the embedded set itself prints no caution about real videos."""
    paths = synthetic(tmp_path / "data" / "embedded")
    made = []
    monkeypatch.setattr(common, "synthetic_clip", lambda name, cache_dir=None: made.append(name) or
                        common.load_clip(name))
    monkeypatch.chdir(tmp_path)
    clip = os.path.join(paths["root"], data.read_list(paths["val"])[0][0])
    predict = ["--method", "vificlip", "--predict", clip, "--workers", "0", "--frames", "4"]
    train.main([*predict, "--classes", "circle moving left,square growing"])
    printed = capsys.readouterr().out
    assert made == ["tiny"] and "the CLIP as pretrained (synthetic)" in printed and "note:" not in printed
    with pytest.raises(SystemExit, match="--classes .* or the weights of a trained run.*--resume RUN or --weights"):
        train.main(predict)
    train.main(tiny_run_args(paths, "--epochs", "1", "--val-every", "0"))          # runs/vificlip-supervised
    os.makedirs(os.path.join("runs", "vificlip-supervised-2"))                      # a newer run, stopped at once
    train.write_config(argparse.Namespace(out=os.path.join("runs", "vificlip-supervised-2"), argv=[],
                                          method="vificlip", protocol="supervised", eval_only=False),
                       started="9999-01-01T00:00:00")
    capsys.readouterr()
    train.main([*predict, "--resume"])
    printed = capsys.readouterr().out
    assert "--resume: runs/vificlip-supervised, the latest vificlip supervised run with a checkpoint" in printed
    assert "weights runs/vificlip-supervised/last.pt" in printed and printed.count("%") == 5


def test_cli_resume_and_out_messages_agree_with_each_other(synthetic, tmp_path, monkeypatch, capsys):
    """An --eval-only or --embed folder is refused for --resume in one line, with the command that runs it again;
    --out naming one is refused without advice to continue it; --eval-only --resume of a run that has no
    checkpoint yet says to train it first. Folders of runs that test no trained run are named after what they
    used (the CLIP, or the weights file), never like a second test of a trained run."""
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    train.main(tiny_run_args(paths, "--eval-only"))
    train.main(tiny_run_args(paths, "--embed"))
    assert sorted(os.listdir("runs")) == ["vificlip-supervised-random-embed", "vificlip-supervised-random-eval"]
    for folder, mode in (("vificlip-supervised-random-eval", "--eval-only"), ("vificlip-supervised-random-embed",
                                                                              "--embed")):
        capsys.readouterr()
        with pytest.raises(SystemExit, match=f"the folder of an {mode} run, which trains nothing; to run it again: "
                                             f"{mode}$"):
            train.main(["--method", "vificlip", "--resume", os.path.join("runs", folder)])
        assert "starting it again" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        train.main(tiny_run_args(paths, "--out", os.path.join("runs", "vificlip-supervised-random-eval")))
    assert "holds another run" in str(refused.value.code) and "--resume" not in str(refused.value.code)
    os.makedirs(os.path.join("runs", "stopped"))   # stopped by Ctrl-C before its first checkpoint: config only
    train.write_config(argparse.Namespace(out=os.path.join("runs", "stopped"), argv=[], method="vificlip",
                                          protocol="supervised", eval_only=False), started="2026-01-01T00:00:00")
    with pytest.raises(SystemExit, match=r"--eval-only --resume runs/stopped: it has no checkpoint yet .*train it "
                                         r"first: --method vificlip --resume runs/stopped$"):
        train.main(["--method", "vificlip", "--eval-only", "--resume", os.path.join("runs", "stopped")])
    assert "starting it again" not in capsys.readouterr().out


def test_cli_embed_takes_any_test_list_and_says_what_it_wrote(synthetic, tmp_path, monkeypatch, capsys):
    """--embed of a trained supervised run on a caption list (MSR-VTT's csv), without --protocol retrieval, and
    with it (the README's example): it embeds, and its closing lines name what it wrote, no metrics file."""
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    out = os.path.join("runs", "trained")
    train.main(tiny_run_args(paths, "--epochs", "1", "--val-every", "0", "--out", out))
    videos = [p for p, _ in data.read_list(paths["val"])][:3]
    with open("msrvtt.csv", "w") as f:
        f.write("key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},{os.path.splitext(p)[0]},clip {i}\n"
                                                             for i, p in enumerate(videos)))
    config = json.load(open(os.path.join(out, "config.json")))   # as a run on the embedded set: its --val-list wins
    json.dump(dict(config, embedded=True), open(os.path.join(out, "config.json"), "w"))
    for extra in ([], ["--protocol", "retrieval"]):
        capsys.readouterr()
        train.main(["--method", "vificlip", "--embed", "--resume", out, "--val-list", "msrvtt.csv", "--val-root",
                    paths["root"], "--workers", "0", *extra])
        printed = capsys.readouterr().out
        assert "embedding the 3 videos of msrvtt.csv" in printed and "metrics" not in printed
        assert "testing" not in printed and "tested" not in printed
        folder = printed.split("run folder")[1].split()[0]
        assert f"embeddings  {folder}/embeddings.pt (3 videos)" in printed
        assert len(torch.load(os.path.join(folder, "embeddings.pt"), weights_only=True)["paths"]) == 3
    assert not os.path.exists(os.path.join("data", "embedded"))


def test_cli_offline_weights_fail_before_the_embedded_set_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(common, "_cached_file", lambda cfg, cache_dir=None: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="--model ViT-B-16 --pretrained openai: cannot download"):
        train.main(["--method", "vificlip", "--model", "ViT-B-16", "--pretrained", "openai"])
    assert not os.path.exists(os.path.join("data", "embedded"))


def test_a_checkpoint_pickled_with_protocol_4_or_5_is_refused_in_one_line(tmp_path):
    for protocol in (4, 5):
        path = str(tmp_path / f"p{protocol}.pt")
        torch.save(dict(model={"w": torch.ones(2)}), path, pickle_protocol=protocol)
        with pytest.raises(common.CheckpointError, match=f"written with pickle protocol {protocol}, which PyTorch's "
                                                         f"safe loader cannot read as data.*torch.save it again"):
            common.load_checkpoint(path)
    torch.save(dict(model={"w": torch.ones(2)}), str(tmp_path / "p2.pt"))
    assert torch.equal(common.load_checkpoint(str(tmp_path / "p2.pt"))["model"]["w"], torch.ones(2))


def test_cli_small_truths_plurals_integers_and_what_an_eval_only_run_trains(synthetic, tmp_path, capsys):
    paths = synthetic(tmp_path / "set")
    out = str(tmp_path / "run")
    train.main(tiny_run_args(paths, "--eval-only", "--test-clips", "1", "--out", out))
    printed = capsys.readouterr().out
    assert "(1 clip x 1 crop, 12 videos)" in printed and "trainable" not in printed
    result = train.read_metrics(os.path.join(out, "metrics.jsonl"))[-1]
    assert type(result["videos"]) is int and type(result["classes"]) is int


# ---------------------------------------------------------------------------------------------------------
# The method contract through the command line: one tiny run of each registered method, and what a user does
# with it (resume, --eval-only, --predict, --embed, --search). A new method gets all of it by its one line in
# train.METHODS.
# ---------------------------------------------------------------------------------------------------------

def run_contract(name, root, synthetic):
    """Everything a user does with a method, on the tiny CLIP and 12 embedded-style videos -> what each step gave."""
    paths = synthetic(root / "set")
    run, straight, got = str(root / "run"), str(root / "straight"), {}
    args = tiny_run_args(paths, "--val-every", "0", "--steps-per-epoch", "1", method=name)
    got["first"] = train.main([*args, "--epochs", "1", "--out", run])["test"][0]
    got["resumed"] = train.main(["--method", name, "--resume", run, "--epochs", "2"])["test"][0]
    got["straight"] = train.main([*args, "--epochs", "2", "--out", straight])["test"][0]
    got["weights"] = [train.load_checkpoint(os.path.join(f, "last.pt"))["model"] for f in (run, straight)]
    got["eval"] = train.main(["--method", name, "--eval-only", "--resume", run, "--out", str(root / "eval")])
    video = os.path.join(paths["root"], data.read_list(paths["val"])[0][0])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        train.main(["--method", name, "--predict", video, "--weights", os.path.join(run, "last.pt")])
    got["predicted"], got["classes"] = printed.getvalue(), data.load_classes(paths["classes"])
    captions = root / "captions.txt"
    captions.write_text("".join(f"{p}\t{label} clip {k}\n"
                                for k, (p, label) in enumerate(data.read_list(paths["val"]))))
    train.main(["--method", name, "--embed", "--resume", run, "--val-list", str(captions), "--val-root", paths["root"],
                "--out", str(root / "embed")])
    got["embedded"] = torch.load(str(root / "embed" / "embeddings.pt"), weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        got["found"] = train.main(["--method", name, "--search", "a circle moving left", "--embeddings",
                                   str(root / "embed" / "embeddings.pt"), "--top-k", "3"])
    got["searched"], got["captions"] = printed.getvalue(), captions.read_text().splitlines()
    return got


@pytest.fixture(scope="module", params=METHODS)
def contract(request, tmp_path_factory, synthetic):
    return request.param, run_contract(request.param, tmp_path_factory.mktemp(request.param), synthetic)


def test_contract_a_run_resumed_trains_to_the_weights_of_an_uninterrupted_one(contract):
    name, got = contract
    first, straight = got["weights"]
    assert first.keys() == straight.keys() and all(torch.equal(first[k], straight[k]) for k in first), name
    assert got["resumed"]["top1"] == got["straight"]["top1"] and got["first"]["videos"] == 12


def test_contract_eval_only_tests_the_runs_weights_as_the_run_did(contract):
    name, got = contract
    assert got["eval"]["test"][0]["top1"] == got["resumed"]["top1"], name


def test_contract_predict_embed_and_search(contract):
    name, got = contract
    lines = got["predicted"].splitlines()
    assert re.match(r".* \(2 clips x 1 crop; weights .*last.pt\):$", lines[0]), name
    top = [line for line in lines if re.match(r"  +[\d.]+%  \S", line)]
    assert top == lines[1:6] and len(top) == 5, name                          # the 5 most likely, and only they
    assert len({line.split("%  ", 1)[1] for line in top} & set(got["classes"])) == 5, name   # of the run's classes
    stored = got["embedded"]
    assert len(stored["paths"]) == 12 and torch.allclose(stored["embeddings"].norm(dim=1), torch.ones(12))
    assert len(got["found"]) == 3 and {p for p, _ in got["found"]} <= set(stored["paths"])
    listed = {os.path.basename(path): caption for path, caption in (line.split("\t") for line in got["captions"])}
    assert [[listed[os.path.basename(p)]] for p in stored["paths"]] == stored["captions"], name
    for path, score in got["found"]:   # each hit's score and its own caption, beside its path
        assert f"  {score:6.3f}  {path}  ({listed[os.path.basename(path)]})" in got["searched"], name


def test_a_new_method_copied_and_registered_in_one_line_gets_the_contract(synthetic, tmp_path, monkeypatch):
    """A fifth method: vificlip.py copied as seqclip.py and named once in train.METHODS (as a researcher forks
    it); the same contract passes for it, found through the one list."""
    folder = tmp_path / "fork"
    folder.mkdir()
    (folder / "seqclip.py").write_text(open(vificlip.__file__).read())
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(train, "METHODS", (*train.METHODS, "seqclip"))
    got = run_contract("seqclip", tmp_path, synthetic)
    assert all(torch.equal(a, b) for a, b in zip(*(w.values() for w in got["weights"])))
    assert got["eval"]["test"][0]["top1"] == got["resumed"]["top1"] and len(got["embedded"]["paths"]) == 12


@pytest.mark.parametrize("name,recipe", [(m, r) for m in METHODS
                                         for r in (None, *getattr(importlib.import_module(m), "VARIANTS", {}))])
def test_the_demo_names_the_recipe_values_it_replaced_and_flags_that_give_them_back(name, recipe):
    """The flags printed at a demo run's start, given to it, train with the recipe's values: each one parses, and
    every value a flag can give back is the recipe's again (the global batch through accumulation)."""
    argv = ["--method", name, *(["--recipe", recipe] if recipe else [])]
    demo = train.get_args(argv)[0]
    replaced = demo.demo_replaced
    assert replaced.get("model") is not None and replaced["model"] != "tiny"
    flags, unflagged = train.restore_flags(replaced, demo.micro_batch)
    again = train.get_args([*argv, *flags.split()])[0]
    for key, value in replaced.items():
        if key == "global_batch":
            assert again.micro_batch * again.accum_steps == value, (name, recipe)
        elif key in unflagged:
            assert value is None or key in ("official_accum", "flip"), (name, recipe, key)
        else:
            assert getattr(again, key) == value, (name, recipe, key)


def test_compare_and_method_subsets_tabulate_runs_by_what_differs(synthetic, tmp_path, monkeypatch, capsys):
    """--method a,b trains just those methods and prints the table --compare prints of their folders (plus the
    times); --compare shows the settings in which runs differ (all of them between runs of one method, the
    headline ones between methods), the epochs trained and the results with their standard errors."""
    paths = synthetic(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    args = [*tiny_run_args(paths, "--epochs", "1", "--val-every", "0", "--steps-per-epoch", "1")]
    args[1] = "vificlip,xclip"
    table = train.main(args)
    assert table[0] == "| run | method | protocol | global_batch | epochs | top-1 | twins | CPU-s | wall |"   # recipes
    assert [row.split(" | ")[0:3] for row in table[2:]] == [["| runs/vificlip-supervised", "vificlip", "supervised"],
                                                            ["| runs/xclip-supervised", "xclip", "supervised"],
                                                            ["| all", "", ""]]
    result = train.read_metrics(os.path.join("runs", "xclip-supervised", "metrics.jsonl"))[-1]
    assert table[3].startswith(f"| runs/xclip-supervised | xclip | supervised | 256 | 1 | {result['top1']:.1f} ± "
                               f"{result['top1_se']:.1f} | {result['twins']:.1f} ± {result['twins_se']:.1f} | ")
    capsys.readouterr()
    compared = train.main(["--compare", "runs/*"])   # the same table, without the times
    assert [compared[0], *compared[2:]] == [r.rsplit(" | ", 2)[0] + " |" for r in [table[0], *table[2:-1]]]
    again = train.main([*args, "--resume"])   # both finished: nothing to train, each still its own row
    assert [row.split(" | ")[0] for row in again[2:]] == [row.split(" | ")[0] for row in table[2:]]
    with pytest.raises(SystemExit, match="--method vificlip,xclip trains and tests each method in turn; --predict"):
        train.get_args([*args, "--predict", "clip.mp4"])
    args[1] = "vificlip"
    train.main([*args, "--lr", "2e-3", "--seed", "1"])
    os.makedirs(os.path.join("runs", "stopped"))   # a run stopped before its first result
    config = json.load(open(os.path.join("runs", "vificlip-supervised", "config.json")))
    json.dump(dict(config, lr=5e-3, epochs=7), open(os.path.join("runs", "stopped", "config.json"), "w"))
    table = train.main(["--compare", "runs/vificlip-*", "runs/stopped"])
    assert table[0].startswith("| run | method | protocol | lr | seed |")
    assert [row.split(" | ")[3:5] for row in table[2:]] == [["0.001", "0"], ["0.002", "1"], ["0.005", "0"]]
    assert table[-1].endswith("| none yet |")
    with pytest.raises(SystemExit, match="no run folder"):
        train.main(["--compare", "runs/nothing-*"])
    assert train.method_names("all") == "all" and train.method_names("xclip,omniclip") == "xclip,omniclip"
    with pytest.raises(argparse.ArgumentTypeError, match="no method 'seqclip'; choose from vificlip, xclip"):
        train.method_names("xclip,seqclip")


# ---- ablations: each switch gives exactly the simpler model ---------------------------------------------------
# A part named in a method file's ABLATIONS, switched off with --no-PART, leaves the model its docstring gives. Where
# the simpler model runs the same operations in the same order, the outputs are compared bit for bit (torch.equal).

ABLATION_PARTS = [("xclip", "messages", "message_"), ("xclip", "mit", "mit."), ("xclip", "prompts", "prompts_"),
                  ("omniclip", "pta", "pta."), ("omniclip", "spg", "spg.")]   # (method, part, its parameter names)


def ablated(name, state, *parts, **kwargs):
    return build(name, state, **{f"no_{part}": True for part in parts}, **kwargs)


def xclip_frame_embeddings(model, x):
    """(B, T, E): the frame embeddings f of X-CLIP's vision tower, before the MIT, as embed_videos makes them."""
    h = common.patch_embed(model.visual, x.flatten(0, 1))                          # (B*T, N+1, D)
    for blk in model.visual.transformer.resblocks:
        h = model.vision_layer(blk, h, x.shape[1])
    return common.frame_head(model.visual, h).view(*x.shape[:2], -1)


@pytest.mark.parametrize("name, parts", [("xclip", ("messages", "mit", "prompts")),
                                         ("openvclip", ("neighbours", "iwo")), ("omniclip", ("pta", "spg"))])
def test_ablation_flags_are_no_part_and_none_unless_given(name, parts):
    assert importlib.import_module(name).ABLATIONS == parts
    assert all(getattr(train.get_args(["--method", name])[0], part) is None for part in parts)   # --weights' carry
    args, _ = train.get_args(["--method", name, *(f"--no-{part}" for part in parts)])
    assert all(getattr(args, part) is False for part in parts)
    assert not hasattr(vificlip, "ABLATIONS")                                      # ViFi-CLIP adds nothing


@pytest.mark.parametrize("name, part, prefix", ABLATION_PARTS)
def test_ablation_builds_no_parameter_of_the_part_switched_off(tiny_clip_state, name, part, prefix):
    full = {n for n, _ in build(name, tiny_clip_state).named_parameters()}
    kept = {n for n, _ in ablated(name, tiny_clip_state, part).named_parameters()}
    assert kept == {n for n in full if prefix not in n}
    assert any(prefix in n for n in full)


@pytest.mark.parametrize("name", ["xclip", "openvclip", "omniclip"])
def test_ablation_of_every_part_leaves_exactly_clips_parameters(tiny_clip_state, name):
    clip = {n for n, _ in tiny_clip(tiny_clip_state).named_parameters()}
    model = ablated(name, tiny_clip_state, *importlib.import_module(name).ABLATIONS)
    assert {n for n, _ in model.named_parameters()} == (clip if name == "xclip" else {"clip." + n for n in clip})


def test_ablation_xclip_without_its_three_parts_is_vificlip_frame_averaging(tiny_clip_state):
    model = ablated("xclip", tiny_clip_state, "messages", "mit", "prompts").eval()
    vifi = build("vificlip", tiny_clip_state, template=model.template).eval()     # the same bare class names
    x = video()
    with torch.no_grad():
        assert torch.equal(model(x), vifi(x))            # the same CLIP operations on the same weights, in order


def test_ablation_xclip_without_messages_encodes_each_frame_as_clip(tiny_clip_state):
    model = ablated("xclip", tiny_clip_state, "messages").eval()
    x = video()
    with torch.no_grad():
        f = common.encode_frames(model.visual, x.flatten(0, 1)).view(B, T, -1)    # (B, T, E)
        assert torch.equal(xclip_frame_embeddings(model, x), f)
        assert torch.equal(model.embed_videos(x)[0], model.mit(f))


def test_ablation_xclip_without_mit_is_the_mean_of_the_frame_embeddings(tiny_clip_state):
    model = ablated("xclip", tiny_clip_state, "mit").eval()
    x = video(frames=T + 2)                                                        # no position embedding: any T
    with torch.no_grad():
        assert torch.equal(model.embed_videos(x)[0], xclip_frame_embeddings(model, x).mean(1))
    with pytest.raises(ValueError, match="--no-mit"):
        build("xclip", tiny_clip_state, mit_layers=0)
    assert len(build("xclip", tiny_clip_state, mit_layers=2).mit.resblocks) == 2


def test_ablation_xclip_without_prompts_scores_the_frozen_class_embeddings(tiny_clip_state, tmp_path):
    model = ablated("xclip", tiny_clip_state, "prompts").eval()
    x = video()
    with torch.no_grad():
        v, w = model.embed_videos(x), common.encode_text(model, model.tokens)       # (B, E), (C, E)
        assert torch.equal(model(x), common.cosine_logits(v, w, model.logit_scale))
        assert torch.equal(model.similarity(v, w), common.cosine_logits(v, w, model.logit_scale))
    path = tmp_path / "xclip.pth"
    torch.save({"model": build("xclip", tiny_clip_state).state_dict()}, path)
    with pytest.raises(common.CheckpointError, match="--no-prompts"):             # official weights need every part
        xclip.load_official(model, str(path))


def test_ablation_openvclip_without_neighbours_encodes_each_frame_as_clip(tiny_clip_state):
    model = ablated("openvclip", tiny_clip_state, "neighbours", temporal_window=2).eval()   # the switch wins
    x = video()
    with torch.no_grad():
        f = F.normalize(common.encode_frames(model.clip.visual, x.flatten(0, 1)), dim=-1).view(B, T, -1)
        assert torch.equal(model.frame_embeddings(x), f)
        assert torch.equal(model(x), build("openvclip", tiny_clip_state, temporal_window=0).eval()(x))


def test_ablation_openvclip_without_iwo_steps_as_a_plain_forward_and_backward(tiny_clip_state):
    x, y = video(), train.soft_targets(torch.tensor([1, 3]), C, 0.0)
    plain = openvclip_model_with(tiny_clip_state).train()
    openvclip_perturb(plain)                                                       # theta != theta0
    plain.loss(x, y, train.soft_cross_entropy).backward()
    for kwargs, same in ((dict(no_iwo=True), True), ({}, False)):                 # over the recipe's alpha 0.6
        model = openvclip_model_with(tiny_clip_state, **kwargs).train()
        openvclip_perturb(model)
        drawn = random.getstate()
        model.train_step(x, y, train.soft_cross_entropy, lambda loss: loss.backward(), contextlib.nullcontext)
        assert (random.getstate() == drawn) == same                               # no alpha drawn without IWO
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.trainable(), plain.trainable())) == same


def test_ablation_omniclip_without_pta_and_spg_is_frozen_clip_frame_averaging(tiny_clip_state):
    model = omniclip_wake_up(ablated("omniclip", tiny_clip_state, "pta", "spg")).eval()   # nothing left to wake
    clip, x = model.clip, video()
    with torch.no_grad():
        tokens = common.tokenize(clip, [model.template.format(n) for n in NAMES])
        v = common.encode_frames(clip.visual, x.flatten(0, 1)).view(B, T, -1).mean(1)
        assert torch.equal(model(x), common.cosine_logits(v, common.encode_text(clip, tokens), clip.logit_scale))


def test_gradients_left_on_the_clip_do_not_reach_the_first_step(synthetic, tmp_path, monkeypatch):
    """A CLIP handed over with .grad still set (the stand-in pretrained in the same process leaves its last step's)
    trains to the weights of a clean one: each epoch starts from no gradient."""
    paths = synthetic(tmp_path / "set")
    argv = tiny_run_args(paths, "--epochs", "1", "--val-every", "0", "--test-clips", "1")
    train.main([*argv, "--out", str(tmp_path / "clean")])
    load = common.load_clip

    def with_gradients(*args, **kwargs):
        clip = load(*args, **kwargs)
        for p in clip.parameters():
            p.grad = torch.ones_like(p)
        return clip

    monkeypatch.setattr(common, "load_clip", with_gradients)
    train.main([*argv, "--out", str(tmp_path / "stale")])
    clean, stale = (train.load_checkpoint(str(tmp_path / run / "last.pt"))["model"] for run in ("clean", "stale"))
    assert all(torch.equal(clean[k], stale[k]) for k in clean)


def test_xclip_export_hf_from_the_command_line(synthetic, tmp_path):
    """--export-hf RUN OUT writes the model --eval-only would test; --weights OUT tests the same model. Other methods
    are refused in one line."""
    paths = synthetic(tmp_path / "set", train_per_class=1)
    run, hf = str(tmp_path / "run"), str(tmp_path / "hf")
    trained = train.main(tiny_run_args(paths, "--quick-gelu", "--epochs", "1", "--val-every", "0", "--out", run,
                                       method="xclip"))
    assert train.main(["--method", "xclip", "--export-hf", run, hf]) == hf
    assert sorted(os.listdir(hf)) == ["config.json", "model.safetensors"]
    again = train.main(tiny_run_args(paths, "--quick-gelu", "--eval-only", "--weights", hf, "--out", run + "-hf",
                                     method="xclip"))
    assert again["test"][0] == pytest.approx(trained["test"][0])
    with pytest.raises(SystemExit, match="only X-CLIP has a transformers class"):
        train.main(["--method", "vificlip", "--export-hf", run, hf])


def test_cli_a_model_with_nothing_to_train_is_one_line(synthetic, tmp_path):
    paths = synthetic(tmp_path / "set", train_per_class=1)
    with pytest.raises(SystemExit, match="--method omniclip: nothing to train with these settings"):
        train.main(tiny_run_args(paths, "--no-pta", "--no-spg", "--out", str(tmp_path / "run"), method="omniclip"))
