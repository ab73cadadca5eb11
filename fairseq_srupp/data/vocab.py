"""fairseq's special symbols and vocabulary files (one word, or ``word count``, per line)."""
from pathlib import Path
from typing import Dict, List, Tuple, Union

from .files import atomic_file, check_utf8_text, file_chunks
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
