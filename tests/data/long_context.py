"""Deterministic builder for long-context chat-completion requests.

The request carries a synthetic hut-maintenance ledger as one text part. The
ledger mixes ASCII with multi-byte place names and symbols (so its UTF-8 byte
count differs from its character count), holds one "needle" sentence half
way through and ends with an END sentinel line. ``metadata`` records the
SHA-256, the UTF-8 byte count and the character count of the ledger text, so
a consumer can prove the document arrived whole and unaltered.

The same ``target_bytes`` always yields the same request, byte for byte: no
random numbers, clocks or environment are involved.

Example:
    >>> req = long_context_request(300_000)
    >>> size = len(encode_compact(req))
    >>> 300_000 - MAX_SHORTFALL <= size <= 300_000
    True
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

__all__ = [
    "END_SENTINEL",
    "MAX_SHORTFALL",
    "NEEDLE",
    "OVER_1_MIB",
    "OVER_256_KIB",
    "encode_compact",
    "ledger_text",
    "long_context_request",
]

NEEDLE: Final = (
    "NOTE: the spare radio battery for Hollin Saddle hut is kept under bunk 31B."
)
"""Sentence placed once, about half way through the ledger."""

END_SENTINEL: Final = "END OF LEDGER"
"""Prefix of the ledger's last line; the entry count follows it."""

MAX_SHORTFALL: Final = 512
"""Largest gap between ``target_bytes`` and the encoded request size."""

OVER_256_KIB: Final = 300_000
"""A size above 262,144 bytes and below 1 MiB."""

OVER_1_MIB: Final = 1_200_000
"""A size above 1,048,576 bytes."""

_PLACES: Final = (
    "Hollin Saddle",
    "Rötkopf",
    "Šmarna gora",
    "Jökulsá Col",
    "Łomnica Ridge",
    "Ålfjell",
    "Žabljak Pass",
    "Sněžka",
    "Großer Hüttenkogel",
    "Brannock Ridge",
    "Larchmere",
    "Čertovica",
)
_ITEMS: Final = (
    "stove",
    "water tank",
    "solar panel",
    "bunk frame",
    "radio mast",
    "shovel rack",
    "first-aid cabinet",
    "roof hatch",
    "wood burner",
    "rope winch",
)
_FINDINGS: Final = (
    "inspected and found sound",
    "cracked seal replaced",
    "bolts tightened after the thaw",
    "repainted after frost damage",
    "weak signal reported at dusk",
    "restocked to full",
    "{hours} hours of use logged",
    "moved to shelf {shelf} to dry",
    "\u2212{cold} °C recorded overnight beside it",
)
_WARDENS: Final = (
    "E. Lindqvist",
    "T. Moreau",
    "N. Kovač",
    "Y. Sato",
    "D. Achterberg",
    "F. Ó Briain",
    "H. Zielińska",
    "G. Oyelaran",
)
_INTRO: Final = "The complete maintenance ledger follows.\n\n"
_QUESTION: Final = (
    "Where is the spare radio battery for Hollin Saddle hut kept, and which "
    "entry records it? Also give the number of the final entry."
)


def encode_compact(request: dict[str, object]) -> bytes:
    """Encode a request the way its size is measured here.

    Args:
        request: A JSON-compatible request body.

    Returns:
        The UTF-8 bytes of compact JSON (no spaces after separators,
        non-ASCII characters written as themselves, not as escapes).
    """
    text = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


def _encoded_len(text: str) -> int:
    """Return the bytes ``text`` takes inside a compact JSON string literal."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _entry(index: int) -> str:
    """Build ledger entry ``index`` (1-based) from arithmetic on the index."""
    finding = _FINDINGS[(index * 5 + index // 9) % len(_FINDINGS)].format(
        hours=20 + (index * 613) % 4000,
        shelf=1 + (index * 11) % 30,
        cold=1 + (index * 7) % 25,
    )
    place = _PLACES[(index * 7 + index // 5) % len(_PLACES)]
    item = _ITEMS[(index * 3 + index // 7) % len(_ITEMS)]
    warden = _WARDENS[(index * 13 + index // 3) % len(_WARDENS)]
    serial = 100 + (index * 7919) % 900
    hour, minute = (index * 37) % 24, (index * 53) % 60
    return (
        f"entry {index:06d} | {place} hut | {item} #{serial}: {finding} "
        f"(warden {warden}, {hour:02d}:{minute:02d})"
    )


def _end_line(count: int) -> str:
    """Return the sentinel line that closes a ledger of ``count`` entries."""
    return f"{END_SENTINEL} — {count} entries."


def ledger_text(budget: int) -> str:
    """Build a ledger whose JSON-escaped size is at most ``budget`` bytes.

    The size counts each line's bytes inside a JSON string literal plus two
    bytes for every escaped newline between lines. The ledger stops as soon
    as the next entry would not fit beside the closing sentinel line.

    Args:
        budget: Upper bound, in bytes, for the escaped ledger.

    Returns:
        The ledger text: entries joined by newlines, with :data:`NEEDLE`
        appended to the first entry past the half-way mark and the sentinel
        line last.

    Raises:
        ValueError: If ``budget`` cannot hold one entry, the needle and the
            sentinel line.
    """
    end_reserve = 2 + _encoded_len(_end_line(10 ** len(str(budget))))
    lines: list[str] = []
    used = 0
    needle_placed = False
    index = 0
    while True:
        index += 1
        line = _entry(index)
        if not needle_placed and used >= (budget - end_reserve) // 2:
            line = f"{line} {NEEDLE}"
        cost = _encoded_len(line) + (2 if lines else 0)
        if used + cost + end_reserve > budget:
            break
        lines.append(line)
        used += cost
        needle_placed = needle_placed or line.endswith(NEEDLE)
    if not needle_placed:
        msg = f"budget of {budget} bytes is too small for a ledger"
        raise ValueError(msg)
    lines.append(_end_line(len(lines)))
    return "\n".join(lines)


def _build(document: str, label: str, digits: int | None) -> dict[str, object]:
    """Assemble the request around ``document``.

    Args:
        document: The ledger text.
        label: Value for ``metadata.fixture``.
        digits: When set, the byte and character counts are replaced by
            strings of this many nines, to measure the envelope size.

    Returns:
        The request body.
    """
    raw = document.encode("utf-8")
    doc_bytes, doc_chars = str(len(raw)), str(len(document))
    if digits is not None:
        doc_bytes = doc_chars = "9" * digits
    return {
        "model": "gpt-4.1",
        "messages": [
            {
                "role": "system",
                "content": (
                    "You review hut maintenance ledgers. Cite the entry number "
                    "whenever you rely on an entry."
                ),
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": _INTRO + document},
                    {"type": "text", "text": _QUESTION},
                ],
            },
        ],
        "max_completion_tokens": 300,
        "metadata": {
            "fixture": label,
            "doc_sha256": hashlib.sha256(raw).hexdigest(),
            "doc_bytes": doc_bytes,
            "doc_chars": doc_chars,
        },
    }


def long_context_request(target_bytes: int) -> dict[str, object]:
    """Build a chat request whose compact JSON is close to ``target_bytes``.

    Size is measured by :func:`encode_compact`. The result is never larger
    than ``target_bytes`` and at most :data:`MAX_SHORTFALL` bytes smaller.

    Args:
        target_bytes: Wanted size of the compact UTF-8 JSON encoding.

    Returns:
        A chat-completion request. ``messages[1].content[0].text`` is an
        introduction followed by the ledger; ``metadata`` holds
        ``doc_sha256``, ``doc_bytes`` and ``doc_chars`` of the ledger text,
        the counts written as decimal strings.

    Raises:
        ValueError: If ``target_bytes`` is too small to hold the envelope,
            one entry, the needle and the sentinel.
    """
    label = f"long-{target_bytes}"
    digits = len(str(target_bytes))
    envelope = len(encode_compact(_build("", label, digits)))
    document = ledger_text(target_bytes - envelope)
    return _build(document, label, None)


if __name__ == "__main__":
    for size in (OVER_256_KIB, OVER_1_MIB):
        body = encode_compact(long_context_request(size))
        print(f"target {size:,} B -> {len(body):,} B")
