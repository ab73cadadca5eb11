"""fairseq's special symbols and vocabulary files (one word, or ``word count``, per line)."""
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .files import atomic_file, check_utf8_text, existing_file, file_chunks
from .prep import PrepError, count, log

# Every fairseq Dictionary starts with these, at indices 0-3, before any word of the data.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
EOS_ID, UNK_ID = FAIRSEQ_SPECIALS.index("</s>"), FAIRSEQ_SPECIALS.index("<unk>")


def read_vocab_lines(path: Union[str, Path], blank_lines: bool = True) -> Tuple[List[Tuple[str, str]], int]:
    """The ``(word, count field)`` of each line of a vocabulary file in file order, and how many
    lines repeated an earlier word (skipped: only the first line of a word counts, as the paper's
    and Transformer-XL's vocabularies do). The count field is ``""`` when the line has none.
    ``blank_lines=False`` refuses empty lines (a paper vocabulary is indexed by line)."""
    check_utf8_text(file_chunks(path), str(path), "a vocabulary file must be UTF-8 text")
    entries, seen, repeated = [], set(), 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                if blank_lines:
                    continue
                raise ValueError(
                    "{}, line {}: empty line; the vocabulary file needs one token per line".format(path, number))
            if fields[0] in seen:
                repeated += 1
                continue
            seen.add(fields[0])
            entries.append((fields[0], fields[1] if len(fields) > 1 else ""))
    return entries, repeated


def vocab_file_to_dict(vocab: Path, dest, aliases: Dict[str, str]) -> int:
    """Write a fairseq ``dict.txt`` from a vocabulary file with one word per line (first field;
    a second field, if an integer, is kept as the count, e.g. ``1b_word_vocab.txt``'s ``word count``).

    Words named in ``aliases`` (e.g. ``<S>`` → ``</s>``, ``<UNK>`` → ``<unk>``) and fairseq's own
    special symbols are left out: fairseq's dictionary already holds them at indices 0-3. The other
    words keep the file's order; a word listed again is skipped, as Transformer-XL's vocabulary
    does. Returns the number of words written.
    """
    entries, repeated = read_vocab_lines(vocab)
    words = ["{} {}\n".format(word, freq if freq.isdigit() else "1") for word, freq in entries
             if word not in aliases and word not in FAIRSEQ_SPECIALS]
    if repeated:
        log("{}: skipped {} repeated word(s), keeping each word's first line".format(vocab, count(repeated)))
    if not words:
        raise PrepError("{} holds no words: pass a vocabulary with one word per line".format(vocab))
    with atomic_file(dest, "w", encoding="utf-8") as out:
        out.writelines(words)
    return len(words)


def checked_srcdict(path: Optional[Union[str, Path]], option: str = "--srcdict") -> Optional[Path]:
    """``path`` as given with ``option``: a fairseq ``dict.txt``, read line by line as fairseq reads it,
    so that a bad line is refused before any work, naming the option, the file and the line
    (fairseq's own message, seen only once fairseq-preprocess runs, names neither)."""
    if path is None:
        return None
    path = existing_file(path, option)
    where = "{} {}".format(option, path)
    check_utf8_text(file_chunks(path), where, "a fairseq dict.txt must be UTF-8 text")
    with open(path, encoding="utf-8") as f:  # text mode splits lines as fairseq's readlines() does
        bad = first_dictionary_problem(f)
    if bad is not None:
        number, _, problem = bad
        raise PrepError("{}, line {}: {}; fix or remove that line, or drop {} to build the dictionary "
                        "from the data".format(where, count(number), problem, option))
    return path


OVERWRITE_FLAG = "#fairseq:overwrite"


def parse_dictionary_line(line: str) -> Tuple[str, bool]:
    """(symbol, overwrite flag) of one line of a fairseq ``dict.txt``, parsed as
    ``fairseq.data.Dictionary.add_from_file`` does: ``<symbol> <count> [#fairseq:overwrite]``.
    Raises ValueError saying what is wrong."""
    if not line.strip():
        raise ValueError("an empty line")
    fields = line.rstrip().rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == OVERWRITE_FLAG
    if overwrite:
        fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2:
        raise ValueError("expected '<symbol> <count>'")
    symbol, count_field = fields
    try:
        int(count_field)
    except ValueError:
        raise ValueError("expected '<symbol> <count>', and '{}' is not a count".format(count_field)) from None
    return symbol, overwrite


def first_dictionary_problem(lines: Iterable[str]) -> Optional[Tuple[int, str, str]]:
    """(line number, line, what is wrong) of the first line of a ``dict.txt`` that fairseq would refuse,
    or None when every line is fine."""
    seen = {symbol: 0 for symbol in FAIRSEQ_SPECIALS}  # a fairseq Dictionary holds them before line 1
    for number, line in enumerate(lines, 1):
        problem = dictionary_line_problem(line, number, seen)
        if problem is not None:
            return number, line, problem
    return None


def dictionary_line_problem(line: str, number: int, seen: Dict[str, int]) -> Optional[str]:
    """What fairseq would refuse in line ``number`` of a ``dict.txt`` (None: nothing); ``seen``
    maps the symbols of the lines before to their line (0: fairseq's specials) and is updated."""
    try:
        symbol, overwrite = parse_dictionary_line(line)
    except ValueError as err:
        return str(err)
    if symbol in seen and not overwrite:
        if seen[symbol] == 0:
            return "'{}' is a fairseq special symbol, which dict.txt leaves out".format(symbol)
        return "'{}' is already on line {}".format(symbol, seen[symbol])
    seen.setdefault(symbol, number)
    return None
