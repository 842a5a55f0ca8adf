"""The tiny model: built once, reused, loadable through the production path, ASCII all the way."""

from __future__ import annotations

import json
import string

from tokenscale_server.tiny_model import MARKER_FILE, build, is_built


def test_build_is_idempotent_and_leaves_no_scratch(tiny_model_dir):
    assert is_built(tiny_model_dir)
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    assert build(tiny_model_dir) == tiny_model_dir
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()} == before
    assert not [p for p in tiny_model_dir.parent.iterdir() if p.name.startswith(f".{tiny_model_dir.name}-")]
    parameters = json.loads((tiny_model_dir / MARKER_FILE).read_text())["parameters"]
    assert 2_000_000 < parameters < 4_000_000


def test_tokenizer_round_trips_ascii_and_has_a_chat_template(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    text = "Scale up fast, scale down slowly: 1500 tokens/s (p99 < 2 s)!"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.startswith(tokenizer.bos_token) and rendered.endswith("<|assistant|>\n")
    # Every token decodes to printable ASCII: streamed deltas never split a character.
    printable = set(string.printable)
    for token_id in range(len(tokenizer)):
        assert set(tokenizer.decode([token_id], skip_special_tokens=True)) <= printable


def test_the_cli_command_reuses_a_built_directory(tiny_model_dir, capsys):
    from tokenscale_server.cli import main

    assert main(["tiny-model", str(tiny_model_dir)]) == 0
    assert str(tiny_model_dir) in capsys.readouterr().out
    assert is_built(tiny_model_dir)
