"""The English rules that decide what "her" and "his" become in the text swap (rules 4-6 and 8 of
`distill.crr.lexicon`).

"her" is the counterpart of both "him" and "his", and "his" of both "her" and "hers", so the swap has to tell
the object "her" ("I saw her") from the determiner ("her book"), and the standalone "his" ("the book is his")
from the determiner ("his book"). The decision reads only what follows the word on the same line (and, for a
few verbs, the word before it), so a swap of a chunk of lines equals the swap of each line.

4. "her" (declared one-to-many: him, his) becomes "his" when it is a determiner and "him" when it is an
   object. It is an object when the next thing on the same line is: the end of the line or punctuation
   ("I saw her."); a word that cannot start the noun phrase her would determine: an article, determiner,
   pronoun, preposition, conjunction, common adverb or auxiliary ("gave her the keys", "told her that",
   "thanked her again", "with her and him"); an adverb in -ly that is not a known -ly adjective or noun
   ("told her quietly" but "her lovely garden", "her family"); "very much"; a bare verb after a causative or
   perception verb ("let her go", "made her laugh"); an -ing word after a perception verb ("saw her
   running"); "back"/"home" after a verb that moves or calls someone ("brought her back", "drove her home"
   but "hurt her back", "on her back").
   Otherwise it is a determiner ("her book", "her very old car", "her two sons", "her own").
5. "his" (declared one-to-many: her, hers) becomes "her" as a determiner and "hers" when it stands alone.
   It stands alone when the next thing on the same line is the end of the line or punctuation ("the book
   is his."), or a word that cannot begin a noun phrase: a verb such as is/was/has, a preposition, a
   conjunction or a few adverbs ("his is red", "a friend of his from school", "his and hers").
   Otherwise it is a determiner ("his book", "his own", "his 'friend'").
6. Coordination: "his and her", "his or her", "his/her", "her & his" followed by a word make the first
   word a determiner too ("his or her book" -> "her or his book"); "her and her sister" is not coordination.
8. Rules 4-6 never look past the end of the line.
9. They read at most `FOLLOW_DEPTH` (three) following words: `follow_reach` is where the reading stops, so
   text cut at or after it gets the same decision. `endpos` cuts the text for the counterfactual context of
   one token position (`distill.crr.causal`): what lies after it is not read.
"""

from __future__ import annotations

import re

# Context word lists for the rules above. Lower case.
_OBJECT_FOLLOWERS = frozenset("""
a an the this that these those some any no every each another all both either neither such what which whatever
whichever i me you he him she her it we us they them my your our their its his himself herself itself
themselves myself yourself ourselves something anything nothing everything someone anyone everyone nobody
somebody anybody everybody to with at for from in into on onto about by of off out up down over under through
throughout after before around across along behind near like as than without within toward towards upon
during since until till against among amongst between beside besides beyond via despite inside outside above
below and or but nor so yet because if when whenever while whether although though unless once where wherever
why how who whom whose whereas again away too also now then today tonight yesterday tomorrow here there well
much more ever never always often soon later already still just anymore alone together instead anyway else
everywhere anywhere somewhere nowhere
please aside enough not is was are were has had have would could should might must does did do shall seemed
seems
""".split())

# "her back", "her home": an object after a verb that moves or calls someone ("brought her back", "drove her
# home"), a determiner otherwise ("hurt her back", "on her back", "sold her home").
_OBJECT_IF_MOVED = frozenset({"back", "home"})
_MOVING_VERBS = frozenset("""
take takes took taken taking bring brings brought bringing drive drives drove driven driving walk walks walked
walking send sends sent sending call calls called calling carry carried fly flew flown welcome welcomed want
wants wanted pay paid invite invited get got accompany accompanied follow followed see saw let lets ask asked
write wrote ring rang phone phoned text texted hold held keep kept pull pulled push pushed take took win won
""".split())

_STANDALONE_FOLLOWERS = frozenset("""
is was are were would could should might must has had does did seems seemed remains remained and or nor but
than as to from at in on by for of about after before with without too also either alone anyway instead though
because since until while when whenever if so yet not now then here there again already anymore that which who
""".split())

# Words in -ly after "her" that are adjectives or nouns, not adverbs ("her lovely garden", "her family").
_LY_NOT_ADVERB = frozenset("""
family only early lovely friendly elderly lonely ugly daily weekly monthly yearly nightly hourly likely lively
silly holy jolly belly bully ally lily supply reply assembly curly burly homely costly deadly orderly comely
manly womanly motherly fatherly sisterly brotherly worldly timely earthly heavenly scholarly cowardly beastly
ghostly sickly wily oily holly rally melancholy anomaly monopoly italy emily kelly sally molly polly beverly
kimberly shelly bubbly chilly frilly hilly smelly wobbly cuddly prickly jelly fly butterfly firefly july unruly
unlikely unfriendly ungainly unsightly stately courtly portly saintly princely queenly kingly gentlemanly
maidenly lowly godly ghastly grisly surly measly sly tally gully folly doily
""".split())

_CAUSATIVE = frozenset("""
let lets letting make makes made making help helps helped helping watch watches watched watching see sees saw
seen seeing hear hears heard hearing feel feels felt notice notices noticed bid bade
""".split())
_BARE_VERBS = frozenset("""
go come do be make take get know see say tell think leave stay feel try win lose sing dance cry laugh smile
speak talk walk run eat sleep sit stand finish decide choose pay drive fly fall play work write read join wait
explain use open enter pass change move continue understand believe remember forget find keep give bring buy
sell send show meet call carry hold look listen learn teach arrive die live grow become begin start stop cook
clean wash drink fight lie jump climb swim hide shout scream whisper answer ask agree apologise apologize
breathe relax rest fail succeed marry leave fix build
""".split())
_PERCEPTION = frozenset("""
see sees saw seen seeing watch watches watched watching hear hears heard hearing notice notices noticed find
finds found catch catches caught keep keeps kept leave leaves left imagine imagined picture pictured spot
spotted feel felt
""".split())
_ING_NOUNS = frozenset("""
wedding morning evening clothing building painting writing feeling wing king ring thing string spring ceiling
darling sibling earring stocking pudding meeting training bedding offspring upbringing being beginning ending
setting drawing recording ceiling
""".split())
_POSSESSIVES = frozenset({"his", "her", "their", "my", "your", "our", "its"})
_COORDINATORS = frozenset({"and", "or", "nor"})

# What follows a her/his on the same line: an optional opening quote/bracket and a word, a digit, a joining
# "/" or "&", or nothing (punctuation, end of line).
_FOLLOW_RE = re.compile(r"[^\S\n]*(?:[\"'\u201c\u2018(\[]?([^\W\d_][\w'\u2019-]*)|(\d)|([/&]))?")
_PREV_RE = re.compile(r"([^\W\d_]+)[^\S\n]*$")
_STOP, _WORD, _NUM, _JOIN = 0, 1, 2, 3


# The most `_following` calls one decision chains (a coordinated possessive: "his" "or" "her" "book").
FOLLOW_DEPTH = 3


def follow_reach(text: str, end: int) -> int:
    """Where rules 4-6 for the word ending at `end` stop reading: the end of the last of the FOLLOW_DEPTH words
    they may chain. The text cut there or later gives the same decision (each match is the same: a word ends
    where the text does, a quote without a word after it or punctuation fails either way)."""
    pos = end
    for _ in range(FOLLOW_DEPTH):
        pos = _FOLLOW_RE.match(text, pos).end()
    return pos


def _following(text: str, pos: int, endpos: int) -> tuple[int, str, int]:
    """(kind, lower-cased word, end) of what follows `pos` on the same line, the text ending at `endpos`."""
    m = _FOLLOW_RE.match(text, pos, endpos)
    if m.group(1):
        return _WORD, m.group(1).lower(), m.end()
    if m.group(2):
        return _NUM, "", m.end()
    if m.group(3):
        return _JOIN, "", m.end()
    return _STOP, "", pos


def _previous_word(text: str, start: int) -> str:
    m = _PREV_RE.search(text, max(0, start - 40), start)
    return m.group(1).lower() if m else ""


def _coordinated_determiner(text: str, pos: int, self_word: str, endpos: int) -> bool:
    """After "and"/"or"/"/" at `pos`: is the next word a possessive (other than `self_word`) with a noun after?"""
    kind, word, end = _following(text, pos, endpos)
    return (kind == _WORD and word in _POSSESSIVES and word != self_word
            and _following(text, end, endpos)[0] in (_WORD, _NUM))


def _pronoun_by_what_follows(text: str, kind: int, word: str, after: int, self_word: str,
                             endpos: int) -> bool | None:
    """The part of rules 4 and 5 that "her" and "his" share: True (object / standalone) before the end of the
    line or punctuation, False (determiner) before a number or a coordinated possessive; None: undecided."""
    if kind == _STOP:
        return True
    if kind == _NUM:
        return False
    if kind == _JOIN or word in _COORDINATORS:
        return not _coordinated_determiner(text, after, self_word, endpos)
    return None


def her_is_object(text: str, start: int, end: int, endpos: int | None = None) -> bool:
    """Rule 4: True if the "her" at text[start:end] is an object pronoun (-> "him"), False if a determiner.
    `endpos`: the text ends there (rule 9); None: at its end."""
    endpos = len(text) if endpos is None else endpos
    kind, word, after = _following(text, end, endpos)
    shared = _pronoun_by_what_follows(text, kind, word, after, "her", endpos)
    if shared is not None:
        return shared
    if word in _OBJECT_FOLLOWERS:
        return True
    if word == "very":
        return _following(text, after, endpos)[1] == "much"
    if word in _OBJECT_IF_MOVED:
        return _previous_word(text, start) in _MOVING_VERBS
    if word.endswith("ly") and word not in _LY_NOT_ADVERB:
        return True
    prev = _previous_word(text, start)
    if prev in _CAUSATIVE and word in _BARE_VERBS:
        return True
    return prev in _PERCEPTION and word.endswith("ing") and word not in _ING_NOUNS


def his_is_standalone(text: str, start: int, end: int, endpos: int | None = None) -> bool:
    """Rule 5: True if the "his" at text[start:end] stands alone (-> "hers"), False if a determiner (-> "her").
    `endpos` as for `her_is_object`."""
    endpos = len(text) if endpos is None else endpos
    kind, word, after = _following(text, end, endpos)
    shared = _pronoun_by_what_follows(text, kind, word, after, "his", endpos)
    return shared if shared is not None else word in _STANDALONE_FOLLOWERS
