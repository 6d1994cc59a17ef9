"""Hugging Face causal LMs through the HashHop and perplexity evaluators: tiny models built from
configs with random weights and a byte-level BPE trained here with `tokenizers`; nothing is
downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
    RwkvConfig,
    RwkvForCausalLM,
)

from zoo.cli import main  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.eval.hashhop import HashHopGrid  # noqa: E402
from zoo.eval.hf import (  # noqa: E402
    HFModel,
    HFModelRef,
    encode_sample,
    evaluate_hf,
    evaluate_hf_file,
    load_hf,
    score_sample,
)
from zoo.store import Store  # noqa: E402
from zoo.tasks.hashhop import generate  # noqa: E402

CPU = torch.device("cpu")
GRID = dict(n_chars=[200], hops=[1, 2], cot=[False, True], samples=2, queries=2, hash_len=6, greedy_samples=1)


LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QUOTE_LETTER = r"[^\s\p{L}\p{N}]?[\p{L}\p{N}]+|\s+|[^\s\p{L}\p{N}]+"


def bpe(style: str = "gpt2") -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on HashHop text, pre-tokenized as GPT-2 does, as Llama 3 does
    (the closing quote and its newline become one token), or with one punctuation character
    joined to the letters after it ("quote-letter": the opening quote joins the answer)."""
    tok = Tokenizer(models.BPE())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif style == "sentencepiece":  # words keep the space before them ("▁'Q"), which decoding drops at the start
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    else:
        split = pre_tokenizers.Split(Regex(LLAMA3 if style == "llama3" else QUOTE_LETTER), "isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                     use_regex=False)])
    tok.decoder = decoders.Metaspace() if style == "sentencepiece" else decoders.ByteLevel()
    texts = [generate(400, 3, 2, 6, cot, seed=s).text for s in range(6) for cot in (False, True)]
    if style in ("quote-letter", "sentencepiece"):  # enough quoted words that quote and letter merge
        texts += [" ".join(f"'{chr(c)}" for c in (*range(65, 91), *range(97, 123)))] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=alphabet))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tokenizer():
    return bpe()


def tiny(kind: str, vocab: int):
    torch.manual_seed(0)
    cfg = {
        "llama": lambda: LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        "mamba": lambda: MambaConfig(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                     expand=2, conv_kernel=4),
        "mamba2": lambda: Mamba2Config(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                       expand=2, head_dim=16, num_heads=4, n_groups=1, conv_kernel=4, chunk_size=16),
        "rwkv": lambda: RwkvConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                   intermediate_size=64, context_length=1024),
    }[kind]()
    # transformers' own classes: importing fla (other tests do) registers its Triton Mamba and RWKV in the Auto maps
    return {"llama": LlamaForCausalLM, "mamba": MambaForCausalLM, "mamba2": Mamba2ForCausalLM,
            "rwkv": RwkvForCausalLM}[kind](cfg).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny("llama", len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


class Oracle(torch.nn.Module):
    """A scripted causal LM: at every position all its mass is on the true next token of the
    sample it is reading (found from the first chunk), through a cache of (sample, position)."""

    def __init__(self, sequences: list[list[int]], vocab: int):
        super().__init__()
        self.seqs, self.vocab = sequences, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False, past_key_values=None):
        ids = input_ids[0].tolist()
        if past_key_values is None:
            which = next(i for i, s in enumerate(self.seqs) if s[:len(ids)] == ids)
            seen = 0
        else:
            which, seen = past_key_values
        seq = self.seqs[which]
        logits = torch.zeros(1, len(ids), self.vocab)
        for j in range(len(ids)):
            p = seen + j
            logits[0, j, seq[p + 1] if p + 1 < len(seq) else 0] = 20.0
        return SimpleNamespace(logits=logits, past_key_values=(which, seen + len(ids)))


def oracle_for(tok, grid: HashHopGrid, chunked: bool = True) -> HFModel:
    seqs = [tok(s.text)["input_ids"] for c in grid.cells() for s in grid.cell_samples(*c)]
    return HFModel(Oracle(seqs, len(tok)), tok, HFModelRef(name="oracle"), CPU, None, "past_key_values",
                   chunked=chunked)


@pytest.mark.parametrize("style", ["gpt2", "llama3", "quote-letter", "sentencepiece"])
@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_scripted_model_scores_one(style, chunk):
    tok = bpe(style)
    grid = HashHopGrid(**GRID, chunk_size=chunk)
    ids, ans = encode_sample(tok, next(grid.cell_samples(200, 1, False)))
    # the boundary cases are really there: a scored token reaches past the answer on one side
    if style == "quote-letter":
        assert all(a.lead == "'" for a in ans)
    if style == "sentencepiece":
        assert all(a.lead == " '" for a in ans)
    if style == "llama3":
        assert all(tok.convert_ids_to_tokens(ids[a.t1 - 1]) == "'Ċ" and a.lead == "" for a in ans)
    res = evaluate_hf(oracle_for(tok, grid, chunked=chunk < 100), grid)
    for c in res["cells"]:
        assert c["status"] == "ok" and c["accuracy"] == 1.0 and c["char_accuracy"] == 1.0, c
        assert c["greedy_correct"] == c["greedy_n"] == 2
        if c["cot"]:
            assert c["hop_accuracy"] == [1.0] * c["hops"] and c["depth_reached"] == c["hops"]


def test_samples_file_scores_like_the_grid(tokenizer, tmp_path):
    """Samples from a JSON Lines file (the generator's format) go through the same scoring."""
    samples = [generate(300, 2, hops, 6, cot, seed=i) for i, (hops, cot) in enumerate([(1, False), (2, True)] * 2)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s.to_json()) + "\n" for s in samples))
    seqs = [tokenizer(s.text)["input_ids"] for s in samples]
    hf = HFModel(Oracle(seqs, len(tokenizer)), tokenizer, HFModelRef(name="oracle"), CPU, None, "past_key_values")
    res = evaluate_hf_file(hf, path, greedy_samples=1, chunk_size=9)
    assert sorted((c["hops"], c["cot"], c["samples"]) for c in res["cells"]) == [(1, False, 2), (2, True, 2)]
    assert all(c["accuracy"] == 1.0 and c["greedy_correct"] == 2 and c["source"] == str(path) for c in res["cells"])


def test_a_model_one_token_off_scores_zero(tokenizer):
    """The oracle shifted by one position (predicting the token after next) gets nothing right:
    the scoring is aligned to the position that predicts each answer token."""
    grid = HashHopGrid(**GRID)
    hf = oracle_for(tokenizer, grid)
    hf.model.seqs = [s[1:] + [0] for s in hf.model.seqs]
    first = hf.model.forward

    def shifted(input_ids, use_cache=False, past_key_values=None):
        if past_key_values is None:
            ids = input_ids[0].tolist()
            which = next(i for i, s in enumerate(hf.model.seqs) if [ids[0]] + s[:len(ids) - 1] == ids)
            past_key_values = (which, 0)
        return first(input_ids, use_cache, past_key_values)

    hf.model.forward = shifted
    res = evaluate_hf(hf, grid)
    assert all(c["accuracy"] == 0.0 for c in res["cells"])


def test_random_weights_score_about_zero(llama_dir):
    hf = load_hf(HFModelRef(name=str(llama_dir)), CPU)
    res = evaluate_hf(hf, HashHopGrid(**{**GRID, "cot": [False]}))
    assert all(c["status"] == "ok" and c["accuracy"] <= 0.1 for c in res["cells"]), res["cells"]
    assert all(c["greedy_n"] == 2 and c["greedy_correct"] == 0 for c in res["cells"])


@pytest.mark.parametrize("kind", ["llama", "mamba", "mamba2", "rwkv"])
def test_chunked_through_the_cache_equals_one_forward(kind, tokenizer, tmp_path, one_thread):
    model = tiny(kind, len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    hf = load_hf(HFModelRef(name=str(tmp_path)), CPU)
    assert hf.chunked == (kind != "mamba")  # transformers' Mamba-1 cache continues one token at a time
    ids = torch.randint(0, len(tokenizer), (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = hf.model(input_ids=ids).logits
        chunked = torch.cat([lg for _, lg in hf.iter_logits(ids, chunk_size=7)], dim=1)
        after_bos = hf.model(input_ids=torch.cat([torch.zeros(2, 1, dtype=torch.long), ids], dim=1)).logits[:, 1:]
    assert hf.bos_id() == 0  # windows start after the BOS token the tokenizer puts before text
    torch.testing.assert_close(chunked, after_bos, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # logits at chosen positions only (`logits_to_keep` where the model takes it)
        kept = hf.forward(ids[:, :20], hf.new_state(), [3, 7, 19])
    torch.testing.assert_close(kept, full[:, [3, 7, 19]], atol=1e-4, rtol=1e-4)
    sample = generate(200, 2, 2, 6, False, seed=3)
    a = score_sample(hf, sample, chunk_size=6, greedy=True)
    b = score_sample(hf, sample, chunk_size=1 << 20, greedy=True)
    assert [(s.exact, s.chars_ok, s.greedy_text) for s in a] == [(s.exact, s.chars_ok, s.greedy_text) for s in b]
    assert [s.nll for s in a] == pytest.approx([s.nll for s in b], rel=1e-4)


def test_length_past_the_maximum_is_na_and_rope_override_lifts_it(tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    grid = HashHopGrid(**{**GRID, "hops": [1], "cot": [False], "n_chars": [100, 800]})
    res = evaluate_hf(load_hf(HFModelRef(name=str(tmp_path)), CPU), grid)
    short, long = res["cells"]
    assert short["status"] == "ok" and long["status"] == "n/a"
    assert "runs at most 256" in long["reason"] and str(long["length"]) in long["reason"]
    from zoo.eval.ppl import RopeScaling

    hf = load_hf(HFModelRef(name=str(tmp_path), rope_scaling=RopeScaling(method="yarn", factor=4)), CPU)
    assert hf.model.config.rope_parameters["rope_type"] == "yarn"
    assert hf.model.config.rope_parameters["original_max_position_embeddings"] == 256 and hf.max_length == 1024
    assert all(c["status"] == "ok" for c in evaluate_hf(hf, grid)["cells"])
    ids = torch.arange(60)[None] % len(tokenizer)
    with torch.no_grad():  # the override reaches the rotary embedding: the same weights compute otherwise
        plain = load_hf(HFModelRef(name=str(tmp_path)), CPU).model(input_ids=ids).logits
        assert hf.model.model.rotary_emb.rope_type == "yarn"
        assert (hf.model(input_ids=ids).logits - plain).abs().max() > 1e-5  # random weights: small, not zero


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_end_to_end_stores_an_hf_run(llama_dir, tmp_path, capsys):
    root = tmp_path / "store"
    rc, out, err = run_cli(capsys, "hashhop", "eval", "--hf", str(llama_dir), "--n-chars", "200,400", "--hops", "1",
                           "--samples", "2", "--queries", "2", "--hash-len", "6", "--device", "cpu", "--dtype",
                           "float32", "--root", str(root))
    assert rc == 0, err
    store = Store(root)
    (run,) = store.runs(kind="hf")
    assert run["config"]["hf"]["name"] == str(llama_dir) and run["config"]["hf"]["dtype"] == "float32"
    assert run["provenance"]["transformers"] and run["provenance"]["fingerprint"]
    tok = run["provenance"]["tokenizer"]
    assert tok["name"] == str(llama_dir) and tok["vocab"] == 400 and tok["sha256"] and run["summary"]["params"] > 0
    rows = store.results(run["id"], "hashhop")
    assert sorted(r["n_chars"] for r in rows) == [200, 400] and all(r["status"] == "ok" for r in rows)
    saved = json.loads((root / "runs" / run["id"] / "hashhop_eval.json").read_text())
    assert saved["run_id"] == run["id"] and len(saved["cells"]) == 2

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # some files fall in the held-out split
        (corpus / f"f{i}.py").write_text(generate(300, 2, 1, 6, False, seed=i).text)
    rc, out, err = run_cli(capsys, "ppl", "--hf", str(llama_dir), "--lengths", "32,64,600", "--text", str(corpus),
                           "--windows", "2", "--device", "cpu", "--root", str(root))
    assert rc == 0, err
    ppl = [r for r in store.results(run["id"], "ppl") if r["scope"] == "all"]
    by_len = {r["length"]: r for r in ppl}
    assert by_len[32]["status"] == "ok" and 1 < by_len[32]["ppl"] < 5 * 400
    assert by_len[600]["status"] == "n/a" and "runs at most 512" in by_len[600]["reason"]


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "missing", "cannot load the Hugging Face model"),
    (lambda d: "no-such-org/no-such-model", "couldn't find them in the cached files"),  # offline: not cached
    (lambda d: _no_lm_head(d), "has no causal language-model head"),
])
def test_bad_model_is_one_line(make, match, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "hashhop", "eval", "--hf", str(make(tmp_path)), "--n-chars", "400",
                           "--root", str(tmp_path / "store"), "--device", "cpu")
    assert rc == 2 and match in err and err.strip().count("\n") == 0, err


def _no_lm_head(d: Path) -> Path:
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(d)
    return d


def test_length_past_the_maximum_on_the_cli_is_one_line(llama_dir, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "hashhop", "eval", "--hf", str(llama_dir), "--n-chars", "3000", "--hops", "1",
                           "--samples", "1", "--device", "cpu", "--root", str(tmp_path))
    assert rc == 0 and "n/a" in out and "runs at most 512" in out, out + err


SPEC = """
name = "hf-beside-zoo"
mixers = ["nope"]

[model]
d_model = 16
n_layers = 1

[task]
name = "hashhop"
config = {{ hops = [1], hash_len = 6 }}

[train]
steps = 2
seq_len = 128
batch_size = 2

[eval.hashhop]
n_chars = [200, 400]
hops = [1]
samples = 2
queries = 2
hash_len = 6

[hf.tiny-llama]
name = "{path}"
dtype = "float32"
"""


def test_a_spec_lists_an_hf_model_and_the_report_draws_it_beside_zoo_runs(llama_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(path=llama_dir))
    root, out = tmp_path / "store", tmp_path / "report"
    rc, _, err = run_cli(capsys, "compare", str(spec), "--root", str(root), "--device", "cpu")
    assert rc == 0, err
    store = Store(root)
    (hf_run,) = store.runs(kind="hf")
    (zoo_run,) = store.runs(kind="train")
    assert hf_run["config"]["label"] == "tiny-llama" and hf_run["config"]["experiment"] == "hf-beside-zoo"
    assert {r["n_chars"] for r in store.results(hf_run["id"], "hashhop")} == {200, 400}
    rc, _, err = run_cli(capsys, "report", str(spec), "--root", str(root), "--out", str(out), "--no-pdf")
    assert rc == 0, err
    html = (out / "index.html").read_text()
    assert "tiny-llama" in html and "nope" in html and f"{llama_dir} (revision default, float32)" in html
    curves = (out / "data" / "hashhop_curves.csv").read_text().splitlines()
    assert sum(line.startswith(f"tiny-llama,{hf_run['id']},") for line in curves) == 2
    assert sum(line.startswith(f"nope,{zoo_run['id']},") for line in curves) == 2
    # the model is evaluated once: a second compare finds its rows stored
    rc, _, err = run_cli(capsys, "compare", str(spec), "--root", str(root), "--device", "cpu")
    assert rc == 0 and len(store.results(hf_run["id"], "hashhop")) == 2
    # a model that cannot load is a failed run with its reason, named in the output
    spec.write_text(SPEC.format(path=llama_dir) + f'[hf.broken]\nname = "{tmp_path / "missing"}"\n')
    rc, out, err = run_cli(capsys, "compare", str(spec), "--root", str(root), "--device", "cpu")
    (broken,) = [r for r in store.runs(kind="hf") if r["config"]["label"] == "broken"]
    assert broken["status"] == "failed" and "cannot load the Hugging Face model" in broken["reason"]
    assert rc == 1 and "1 pretrained model(s) failed: broken" in out


def test_rope_overrides_map_to_transformers_rope_parameters():
    from zoo.eval.hf import rope_parameters
    from zoo.eval.ppl import RopeScaling

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=1024)
    theta = cfg.rope_parameters["rope_theta"]
    pi, limit = rope_parameters(cfg, RopeScaling(method="pi", factor=4))
    assert pi == {"rope_type": "linear", "rope_theta": theta, "factor": 4.0,
                  "original_max_position_embeddings": 1024} and limit == 4096
    ntk, _ = rope_parameters(cfg, RopeScaling(method="ntk", factor=4))
    assert ntk["rope_type"] == "default" and ntk["rope_theta"] == pytest.approx(theta * 4 ** (16 / 14))
    assert rope_parameters(cfg, RopeScaling(method="dynamic-ntk", factor=2))[0]["rope_type"] == "dynamic"
    with pytest.raises(ZooError, match="has no RoPE parameters"):
        rope_parameters(MambaConfig(), RopeScaling(method="yarn", factor=2))
    with pytest.raises(ZooError, match="no transformers counterpart"):
        rope_parameters(cfg, RopeScaling(method="rerope", factor=2))
