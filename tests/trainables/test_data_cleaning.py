"""The per-source text cleaners, on hand-written inputs shaped like the real sources."""

from trainables.data import cleaning


def test_kjv_chapter_drops_verse_numbers_and_italic_brackets():
    raw = ("1. In the beginning God created the heaven and the earth. 2. And darkness [was] upon "
           "the deep.\n3. And God said, Let there be light. 27.( For all these [things])")
    assert cleaning.clean_kjv_chapter(raw) == (
        "In the beginning God created the heaven and the earth. And darkness was upon "
        "the deep.\nAnd God said, Let there be light. ( For all these things)"
    )


def test_kjv_chapters_start_at_every_verse_one_even_mid_line():
    # Psalms sits on one line in the package, glued to the end of Job ("days.1. Blessed").
    scripture = ("1. A b. 2. C d.\n3. E f.\n1. G h. 2. I j. full of days.1. Blessed is the man. "
                 "2. But his delight.")
    assert cleaning.split_kjv_chapters(scripture) == [
        "A b. C d.\nE f.", "G h. I j. full of days.", "Blessed is the man. But his delight.",
    ]


def test_detokenize_speech_rejoins_punctuation_and_dashes():
    raw = "Frau Präsidentin ! Wir waren _ meine Kollegin hat es erklärt _ dagegen , am 1 . Juli ( heute ) ."
    assert cleaning.detokenize_speech(raw) == (
        "Frau Präsidentin! Wir waren – meine Kollegin hat es erklärt – dagegen, am 1. Juli (heute)."
    )


def test_strip_pos_tags_keeps_words_joined_without_spaces():
    tagged = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w"
    assert cleaning.strip_pos_tags(tagged) == "迈向充满希望的新世纪——"
    assert cleaning.strip_pos_tags("１/２/m  张/q") == "１/２张"  # only the last /tag goes


def test_news_articles_split_at_headlines_after_body_text():
    lines = ["标题一", "副标题", "正文第一段。", "同胞们：", "正文第二段！", "标题二", "正文。"]
    assert cleaning.split_news_articles(lines) == [
        "标题一\n副标题\n正文第一段。\n同胞们：\n正文第二段！", "标题二\n正文。",
    ]


def test_fortune_entries_split_on_percent_lines():
    text = "Первая мысль.\n\t\t-- Автор\n%\nВторая мысль.\n%\n"
    assert cleaning.fortune_entries(text) == ["Первая мысль.\n\t\t-- Автор", "Вторая мысль."]


def test_metamath_proofs_removed_and_sections_split():
    mm = ("$( intro $)\n  ax-1 $a |- ( ph -> ( ps -> ph ) ) $.\n"
          "$(\n=-=-=-=\n  Section two\n=-=-=-=\n$)\n"
          "  idi $p |- ph $=\n    ( wi ) AB $.\n")
    stripped = cleaning.strip_metamath_proofs(mm)
    assert "( wi ) AB" not in stripped and "idi $p |- ph $." in stripped
    sections = cleaning.split_metamath_sections(stripped)
    assert len(sections) == 2
    assert sections[0].startswith("$( intro") and sections[1].startswith("$(\n=-=-=-=\n  Section two")


def test_strip_troff_keeps_text_and_drops_markup():
    page = "\n".join([
        '.\\" a comment',
        '.TH LS 1 "2023" "GNU"',
        ".SH NAME",
        "ls \\- list directory contents",
        ".SH DESCRIPTION",
        ".B ls",
        "lists \\fBfiles\\fR and \\fIfolders\\fP \\(em quickly\\&.",
        ".TP",
        ".BR \\-a \", \" \\-\\-all",
        ".PP",
    ])
    assert cleaning.strip_troff(page) == (
        "LS\nNAME\nls - list directory contents\nDESCRIPTION\nls\n"
        "lists files and folders — quickly.\n-a, --all"
    )


def test_blank_line_chunks():
    assert cleaning.split_blank_line_chunks("a\nb\n\n  \n\nc\n\n") == ["a\nb", "c"]
