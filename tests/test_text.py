import sys

import pytest
import torch

from nuwa_fast.config import TextConfig
from nuwa_fast.text import BOS, EOS, PAD, ByteTokenizer, HFTextEncoder, TextEncoder

torch.set_num_threads(1)

CFG = TextConfig(max_len=16, width=32, layers=2, heads=2)
tok = ByteTokenizer()


def test_tokenizer_batch_and_padding():
    ids, mask = tok.encode(["a", "abc"], max_len=16)
    assert ids.tolist() == [[BOS, 97, EOS, PAD, PAD], [BOS, 97, 98, 99, EOS]]
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


@pytest.mark.parametrize("empty", ["", None])
def test_tokenizer_empty_prompt_is_bos_eos(empty):
    ids, mask = tok.encode([empty], max_len=8)
    assert ids.tolist() == [[BOS, EOS]] and mask.all()


def test_tokenizer_truncates_to_max_len():
    ids, mask = tok.encode(["x" * 100, "hi"], max_len=10)
    assert ids.shape == (2, 10)
    assert ids[0].tolist() == [BOS] + [ord("x")] * 8 + [EOS]
    assert mask[1].sum() == 4


def test_tokenizer_unicode_and_surrogates():
    ids, _ = tok.encode(["é\U0001F600"], max_len=16)
    assert ids[0, 1:-1].tolist() == list("é\U0001F600".encode("utf-8"))
    ids, _ = tok.encode(["a\ud800b"], max_len=16)                 # lone surrogate: invalid UTF-8
    assert ids[0].tolist() == [BOS, 97, ord("?"), 98, EOS]


@pytest.mark.parametrize("bad,what", [([1], r"prompts\[0\] must be a str"), ("abc", "list of str"),
                                      ([b"abc"], "got bytes")])
def test_tokenizer_rejects_non_str(bad, what):
    with pytest.raises(TypeError, match=what):
        tok.encode(bad, max_len=8)


def test_tokenizer_rejects_tiny_max_len():
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["a"], max_len=1)


def make_encoder():
    torch.manual_seed(0)
    return TextEncoder(CFG, out_width=24).eval()


def test_text_encoder_shapes_and_grad():
    enc = make_encoder()
    emb, mask = enc.encode_prompts(["a red cat", "", None], device="cpu")
    assert emb.shape == (3, 11, 24) and mask.shape == (3, 11)
    assert mask.sum(1).tolist() == [11, 2, 2]
    assert (emb[~mask] == 0).all()
    emb.sum().backward()
    assert enc.embed.weight.grad is not None


def test_text_encoder_padding_invariance():
    enc = make_encoder()
    alone, m1 = enc.encode_prompts(["hi"])
    padded, m2 = enc.encode_prompts(["hi", "a much longer prompt"])
    assert m2[0].sum() == m1[0].sum() == 4 and padded.shape[1] > alone.shape[1]
    err = (alone[0] - padded[0, :4]).abs().max().item()
    print(f"padding invariance max err {err:.2e}")
    assert err < 1e-5


def test_text_encoder_rejects_too_long_ids():
    enc = make_encoder()
    ids = torch.full((1, CFG.max_len + 1), 97)
    with pytest.raises(ValueError, match="max_len"):
        enc(ids, torch.ones_like(ids, dtype=torch.bool))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "the", "##s"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(d / "vocab.txt")).save_pretrained(d / "enc")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(d / "enc")
    return str(d / "enc")


def test_hf_text_encoder(bert_dir):
    enc = HFTextEncoder(bert_dir, out_width=24, max_len=16).train()
    assert not enc.backbone.training
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    emb, mask = enc.encode_prompts(["the red cats", "", None])
    assert emb.shape == (3, 6, 24) and mask.sum(1).tolist() == [6, 2, 2]   # [CLS] the red cat ##s [SEP]
    emb.sum().backward()
    assert enc.proj.weight.grad is not None
    with pytest.raises(TypeError, match="list of str"):
        enc.encode_prompts("the cat")


def test_hf_text_encoder_bad_path(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        HFTextEncoder(str(tmp_path / "missing"), out_width=8)


def test_hf_text_encoder_without_transformers(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        HFTextEncoder(str(tmp_path), out_width=8)
