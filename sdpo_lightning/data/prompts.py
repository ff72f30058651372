"""Prompt templates, the seeded per-example template choice, and tokenization with truncation.

Prompt and completion are tokenized separately and their ids concatenated, the same way
for training, scoring and generation, so a title has the same token ids after any prompt.
The completion is ``completion_prefix + title`` followed by EOS, so the model learns to stop.
When an example is too long for ``max_length`` the oldest history items are dropped first;
the candidate list and the completion are never cut.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdpo_lightning.data.records import DataFormatError, Example

#: put after each title while rendering a hybrid prompt, where its item token goes (a
#: private-use character, refused in titles)
ITEM_MARK = "\ue000"
#: how an item token shows in a hybrid prompt's text (predictions files)
ITEM_TEXT = "<item>"

PRESETS: dict[str, list[str]] = {
    "movies": [
        "After watching {history}, which movie do you think the person will choose next "
        "from {candidates}? Answer with one title.\nAnswer:",
        "This user has watched {history} in the previous. Please predict the next movie this "
        "user will watch. Choose the answer from the following movie titles: {candidates}.\n"
        "Answer:",
    ],
    "music": [
        "After listening to {history}, which artist do you think the person will listen to "
        "next from {candidates}? Answer with one name.\nAnswer:",
        "This user has listened to {history} in the previous. Please predict the next artist "
        "this user will listen to. Choose the answer from the following artists: "
        "{candidates}.\nAnswer:",
    ],
    "books": [
        "After reading {history}, which book do you think the person will read next from "
        "{candidates}? Answer with one title.\nAnswer:",
        "This user has read {history} in the previous. Please predict the next book this user "
        "will read. Choose the answer from the following book titles: {candidates}.\nAnswer:",
    ],
}


#: History-only templates of the all-item protocol (``docs/all_item.md``): the model answers
#: with any catalogue title, so the prompt lists no candidates. Same domains and wording as
#: :data:`PRESETS`, which stay the candidate-list protocol's.
HISTORY_PRESETS: dict[str, list[str]] = {
    "movies": [
        "After watching {history}, which movie do you think the person will watch next? "
        "Answer with one title.\nAnswer:",
        "This user has watched {history} in the previous. Please predict the next movie this "
        "user will watch.\nAnswer:",
    ],
    "music": [
        "After listening to {history}, which artist do you think the person will listen to "
        "next? Answer with one name.\nAnswer:",
        "This user has listened to {history} in the previous. Please predict the next artist "
        "this user will listen to.\nAnswer:",
    ],
    "books": [
        "After reading {history}, which book do you think the person will read next? Answer "
        "with one title.\nAnswer:",
        "This user has read {history} in the previous. Please predict the next book this user "
        "will read.\nAnswer:",
    ],
}


def resolve_templates(templates: str | Sequence[str], history_only: bool = False) -> list[str]:
    """Turn a preset name, one template or a list of templates into a checked list.

    Args:
        templates: a preset name, a template, or a list of templates.
        history_only: the all-item protocol's templates (:data:`HISTORY_PRESETS`; ``{history}``
            only, no ``{candidates}``) instead of the candidate-list ones (:data:`PRESETS`).

    Raises:
        ValueError: unknown preset, a template without ``{history}`` / ``{candidates}``, or
            (``history_only``) a template with ``{candidates}``.
    """
    presets = HISTORY_PRESETS if history_only else PRESETS
    slots = ("{history}",) if history_only else ("{history}", "{candidates}")
    if isinstance(templates, str):
        if templates in presets:
            return list(presets[templates])
        if "{" not in templates:
            kind = "history-only " if history_only else ""
            raise ValueError(
                f"unknown {kind}prompt preset {templates!r}; presets: {sorted(presets)}, "
                f"or give a template with {' and '.join(slots)}"
            )
        templates = [templates]
    out = list(templates)
    if not out:
        raise ValueError("no prompt templates given")
    for t in out:
        for slot in slots:
            if slot not in t:
                raise ValueError(f"prompt template {t!r} lacks the {slot} placeholder")
        if history_only and "{candidates}" in t:
            raise ValueError(
                f"history-only prompt template {t!r} has a {{candidates}} "
                "placeholder: the all-item protocol shows no candidate list"
            )
    return out


def history_preset_of(templates: str | Sequence[str]) -> str | None:
    """The domain (``movies``, ``music``, ``books``) whose candidate-list preset ``templates``
    is (its name, or its resolved list), else None: the all-item protocol's ``auto`` prompts."""
    if isinstance(templates, str):
        return templates if templates in HISTORY_PRESETS else None
    out = list(templates)
    return next((name for name, preset in PRESETS.items() if preset == out), None)


@dataclass
class EncodedExample:
    """Token ids of one example.

    Attributes:
        prompt_ids: the prompt (with BOS if the tokenizer adds one).
        candidate_ids: completion ids (prefix + title + EOS) of every candidate, in order.
        target_index: index of the target among the candidates.
        prompt: the prompt text.
        history_used: how many (most recent) history items the prompt kept.
    """

    prompt_ids: list[int]
    candidate_ids: list[list[int]]
    target_index: int
    prompt: str
    history_used: int


class PromptBuilder:
    """Renders and tokenizes prompts.

    Args:
        templates: a preset name (``movies``, ``music``, ``books``), a template, or a list.
        seed: seeds the per-example template choice (a function of seed and example index).
        separator: joins titles inside ``{history}`` and ``{candidates}``.
        completion_prefix: put before the title in the completion; ``"auto"`` (resolved by
            :meth:`resolve_prefix`) is ``""`` for SentencePiece tokenizers, which add a word
            boundary themselves, and ``" "`` for byte-level BPE tokenizers.
        history_only: templates with ``{history}`` only (:data:`HISTORY_PRESETS`, the all-item
            protocol; prompts come from :meth:`encode_history`).
    """

    def __init__(
        self,
        templates: str | Sequence[str] = "movies",
        seed: int = 0,
        separator: str = ", ",
        completion_prefix: str = "auto",
        history_only: bool = False,
    ) -> None:
        self.templates = resolve_templates(templates, history_only)
        self.seed = seed
        self.separator = separator
        self.completion_prefix = completion_prefix

    def template_for(self, index: int) -> str:
        """The template used for example ``index`` (deterministic in seed and index)."""
        if len(self.templates) == 1:
            return self.templates[0]
        rng = random.Random(self.seed * 1_000_003 + index)
        return self.templates[rng.randrange(len(self.templates))]

    def render(
        self,
        example: Example,
        index: int,
        history: Sequence[str] | None = None,
        item_mark: str = "",
    ) -> str:
        """The prompt text of ``example`` (optionally with a shortened history); ``item_mark``
        is put after every history and candidate title (hybrid prompts)."""
        hist = example.history if history is None else history
        join = lambda titles: self.separator.join(t + item_mark for t in titles)  # noqa: E731
        return self.template_for(index).format(
            history=join(hist), candidates=join(example.candidates)
        )

    def _hybrid_ids(
        self,
        example: Example,
        index: int,
        hist: Sequence[str],
        tokenizer,
        items: Any,
        source: str = "data",
    ) -> tuple[str, list[int]]:
        """Text (item tokens shown as :data:`ITEM_TEXT`) and ids of a hybrid prompt: the text
        between item tokens is tokenized piece by piece and each title's item token id (from
        ``items.token_ids``) follows it, in the template's order of history and candidates."""
        pieces = self.render(example, index, hist, ITEM_MARK).split(ITEM_MARK)
        t = self.template_for(index)
        order = [list(hist), list(example.candidates)]
        if t.index("{candidates}") < t.index("{history}"):
            order.reverse()
        item_ids = items.token_ids(order[0] + order[1])
        if len(item_ids) != len(pieces) - 1:
            raise ValueError(
                f"{source}, record {index}: a title or the template contains {ITEM_MARK!r}, the "
                "character hybrid prompts reserve for item tokens"
            )
        ids = list(tokenizer(pieces[0])["input_ids"])
        for item, piece in zip(item_ids, pieces[1:], strict=False):
            ids.append(item)
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else [])
        return ITEM_TEXT.join(pieces), ids

    def resolve_prefix(self, tokenizer) -> str:
        """Fix ``completion_prefix="auto"`` for this tokenizer and return it."""
        if self.completion_prefix == "auto":
            ids = tokenizer("x", add_special_tokens=False)["input_ids"]
            first = tokenizer.convert_ids_to_tokens(ids[:1])[0] if ids else ""
            self.completion_prefix = "" if first.startswith("\u2581") else " "
        return self.completion_prefix

    def completion_text(self, title: str) -> str:
        """The completion text of a title (without EOS)."""
        return self.completion_prefix + title

    def encode(
        self,
        example: Example,
        index: int,
        tokenizer,
        max_length: int,
        title_ids: dict[str, list[int]] | None = None,
        source: str = "data",
        items: Any = None,
    ) -> EncodedExample:
        """Tokenize one example, dropping the oldest history items until it fits.

        Args:
            example: the example.
            index: its index in its split (drives the template choice).
            tokenizer: a Hugging Face tokenizer with ``eos_token_id``.
            max_length: budget for prompt + the longest candidate completion.
            title_ids: cache of completion ids per title (filled as a side effect).
            source: file name for error messages.
            items: an :class:`~sdpo_lightning.modeling.hybrid.ItemTable` for hybrid prompts (each
                title followed by its item token); ``None``: text prompts.

        Raises:
            DataFormatError: (a ``ValueError``) the example does not fit even with one history
                item; it names the file and record.
        """
        self.resolve_prefix(tokenizer)
        cache = {} if title_ids is None else title_ids
        cands = []
        for title in example.candidates:
            if title not in cache:
                ids = tokenizer(self.completion_text(title), add_special_tokens=False)["input_ids"]
                cache[title] = list(ids) + [tokenizer.eos_token_id]
            cands.append(cache[title])
        longest = max(len(c) for c in cands)
        prompt, prompt_ids, used = self._fit_history(
            example, index, tokenizer, max_length, longest, items, source
        )
        return EncodedExample(
            prompt_ids=prompt_ids,
            candidate_ids=cands,
            target_index=example.target_index,
            prompt=prompt,
            history_used=used,
        )

    def encode_history(
        self,
        history: Sequence[str],
        index: int,
        tokenizer: Any,
        max_length: int,
        longest: int,
        source: str = "data",
    ) -> tuple[str, list[int], int]:
        """A history-only prompt (the all-item protocol): ``(text, ids, history items kept)``.

        Rendered with the template of ``index`` (as :meth:`template_for`); the oldest history
        items are dropped until the prompt plus ``longest`` tokens (the longest catalogue
        completion) fit ``max_length``, as :meth:`encode` does.

        Raises:
            DataFormatError: empty history, or no fit even with one history item.
        """
        if not history:
            raise DataFormatError(source, f"record {index}", "empty history")
        example = Example(history=tuple(history), candidates=(), target=None)
        return self._fit_history(example, index, tokenizer, max_length, longest, None, source)

    def _prompt(
        self,
        example: Example,
        index: int,
        hist: Sequence[str],
        tokenizer: Any,
        items: Any,
        source: str,
    ) -> tuple[str, list[int]]:
        """Text and ids of the prompt of ``example`` with history ``hist``."""
        if items is None:
            prompt = self.render(example, index, hist)
            return prompt, list(tokenizer(prompt)["input_ids"])
        return self._hybrid_ids(example, index, hist, tokenizer, items, source)

    def _fit_history(
        self,
        example: Example,
        index: int,
        tokenizer: Any,
        max_length: int,
        longest: int,
        items: Any,
        source: str,
    ) -> tuple[str, list[int], int]:
        """The prompt with the most recent history items that fit: ``(text, ids, items kept)``.

        The result is the one of dropping the oldest item until ``prompt + longest`` fits
        ``max_length``: the most items that fit, as a prompt's token count never falls when a
        title is added (tokenizers split at the separator's blank or punctuation). It is found
        with O(log n) prompts tokenized: the whole history first, then a galloping search (1, 2,
        4, ... recent items) and a binary search between the last that fit and the first that
        did not, so a 10,000-item history costs about 30 tokenizer calls, not 10,000.

        Raises:
            DataFormatError: the prompt does not fit even with one history item.
        """
        hist, tried = example.history, {}

        def fits(k: int) -> bool:
            if k not in tried:
                tried[k] = self._prompt(
                    example, index, hist[len(hist) - k :], tokenizer, items, source
                )
            return len(tried[k][1]) + longest <= max_length

        if fits(len(hist)):
            return (*tried[len(hist)], len(hist))
        lo, hi = _largest_fitting(fits, len(hist))
        if lo == 0:
            fits(1)
            raise DataFormatError(
                source,
                f"record {index}",
                f"prompt needs {len(tried[1][1])} tokens with one history item plus {longest} for "
                f"the longest completion, over max_length={max_length}; the candidate list and "
                "completions are never cut — raise max_length or shorten the template",
            )
        return (*tried[lo], lo)


def _largest_fitting(fits: Callable[[int], bool], n: int) -> tuple[int, int]:
    """``(lo, hi)`` with ``hi = lo + 1``, ``fits(lo)`` (or ``lo == 0``) and not ``fits(hi)``,
    given not ``fits(n)``, for ``fits`` true up to some count and false above it: gallop
    (1, 2, 4, ...), then bisect."""
    lo, hi, k = 0, n, 1
    while k < hi:
        if not fits(k):
            hi = k
            break
        lo, k = k, 2 * k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi
