"""Closed vocabularies: models whose tokenizer knows a fixed list of words refuse any other.

A tokenizer declares one with ``closed_vocabulary`` in its ``tokenizer_config.json`` (transformers
keeps unknown keys of that file in ``tokenizer.init_kwargs``), as the built-in moving-shapes
model's does; CLIP's byte-level tokenizer declares none and encodes any text. Prompts are
checked before any work: by ``encode_prompt``, and by the command line before a model loads.
"""
from __future__ import annotations


def closed_vocabulary(tokenizer) -> list[str] | None:
    """The words ``tokenizer`` declares it knows, or None when it encodes any text."""
    return getattr(tokenizer, "init_kwargs", {}).get("closed_vocabulary")


def vocabulary_problem(vocabulary: list[str] | tuple[str, ...] | None, prompt: str,
                       name: str = "prompt") -> str | None:
    """Why ``prompt`` cannot be encoded with ``vocabulary`` (its unknown words, and the vocabulary),
    or None when it can; ``name`` is the argument or flag the message names."""
    if not vocabulary:
        return None
    unknown = [word for word in prompt.lower().split() if word not in vocabulary]
    if not unknown:
        return None
    return (f"{name}: {prompt!r} has words the model does not know ({', '.join(map(repr, unknown))}); "
            f"its vocabulary is {', '.join(vocabulary)}")


def folder_vocabulary(model_dir: str) -> list[str] | None:
    """The closed vocabulary a diffusers folder's tokenizer declares, read from its configuration
    file without loading anything (None: none declared, or no such file)."""
    import json
    import os

    path = os.path.join(model_dir, "tokenizer", "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("closed_vocabulary")
