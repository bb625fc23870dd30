"""Character types and their lengths, bytea, uuid, bit strings, json and jsonb, text search (tsvector, tsquery)."""

from __future__ import annotations

from typing import List, Optional, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    NotPortable,
    SPACE,
    VARHDRSZ,
    _HEX,
    _anything,
    _shown,
    _syntax,
)
from electric.postgres.protocol.values.numbers import _numeric


def _bounded_string(label: str, typmod: int) -> Check:
    if typmod < VARHDRSZ:
        return _anything
    limit = typmod - VARHDRSZ

    def check(text: str) -> None:
        # varchar_input / bpchar_input: a longer value is refused unless the
        # excess characters are all plain spaces (which are cut off).
        if len(text) > limit and text[limit:].strip(" "):
            raise InvalidValue(f"value too long for type {label}({limit})")

    return check


def check_bytea(text: str) -> None:
    if text.startswith("\\x"):
        i, n = 2, len(text)
        while i < n:
            ch = text[i]
            if ch in " \n\t\r":
                i += 1
                continue
            if ch not in _HEX:
                raise InvalidValue(f'invalid hexadecimal digit: "{ch}"')
            if i + 1 >= n:
                raise InvalidValue("invalid hexadecimal data: odd number of digits")
            if text[i + 1] not in _HEX:
                raise InvalidValue(f'invalid hexadecimal digit: "{text[i + 1]}"')
            i += 2
        return
    i, n = 0, len(text)
    while i < n:
        if text[i] != "\\":
            i += 1
        elif i + 3 < n and text[i + 1] in "0123" and text[i + 2] in "01234567" and text[i + 3] in "01234567":
            i += 4
        elif text[i + 1:i + 2] == "\\":
            i += 2
        else:
            raise _syntax("bytea", text)


def check_uuid(text: str) -> None:
    i, n = 0, len(text)
    braces = text.startswith("{")
    if braces:
        i = 1
    for byte in range(16):
        if i + 1 >= n or text[i] not in _HEX or text[i + 1] not in _HEX:
            raise _syntax("uuid", text)
        i += 2
        if i < n and text[i] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    if braces:
        if i >= n or text[i] != "}":
            raise _syntax("uuid", text)
        i += 1
    if i != n:
        raise _syntax("uuid", text)




def _bits(varying: bool, typmod: int) -> Check:
    def check(text: str) -> None:
        if text[:1] in ("b", "B"):
            body, hexadecimal = text[1:], False
        elif text[:1] in ("x", "X"):
            body, hexadecimal = text[1:], True
        else:
            body, hexadecimal = text, False
        length = len(body) * 4 if hexadecimal else len(body)
        if typmod > 0:
            if varying and length > typmod:
                raise InvalidValue(f"bit string too long for type bit varying({typmod})")
            if not varying and length != typmod:
                raise InvalidValue(f"bit string length {length} does not match type bit({typmod})")
        for ch in body:
            if hexadecimal and ch not in _HEX:
                raise InvalidValue(f'"{ch}" is not a valid hexadecimal digit')
            if not hexadecimal and ch not in "01":
                raise InvalidValue(f'"{ch}" is not a valid binary digit')

    return check


JSON_DEPTH_LIMIT = 1000
"""
Deeper documents are refused: Postgres parses JSON recursively and fails
with "stack depth limit exceeded" at a depth that depends on each server's
max_stack_depth (about 20,000 with the default).
"""

_JSON_SPACE = " \t\n\r"


def _json_word_char(ch: str) -> bool:
    # JSON_ALPHANUMERIC_CHAR: ASCII letters, digits, '_' and any non-ASCII character
    return ch.isascii() and (ch.isalnum() or ch == "_") or not ch.isascii()


class _JsonError(Exception):
    pass


def _json_number(text: str, i: int) -> int:
    """End of the number token at `i` (after an optional '-'); raises _JsonError like json_lex_number."""
    n = len(text)
    bad = False
    if i < n and text[i] == "0":
        i += 1
    elif i < n and "1" <= text[i] <= "9":
        while i < n and "0" <= text[i] <= "9":
            i += 1
    else:
        bad = True
    if i < n and text[i] == ".":
        i += 1
        if i >= n or not "0" <= text[i] <= "9":
            bad = True
        while i < n and "0" <= text[i] <= "9":
            i += 1
    if i < n and text[i] in "eE":
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        if i >= n or not "0" <= text[i] <= "9":
            bad = True
        while i < n and "0" <= text[i] <= "9":
            i += 1
    while i < n and _json_word_char(text[i]):
        bad = True
        i += 1
    if bad:
        raise _JsonError("invalid number")
    return i


def _json_string(text: str, i: int, binary: bool) -> int:
    """End of the string token starting at the quote `i` (json_lex_string)."""
    n = len(text)
    high: Optional[int] = None
    i += 1
    while True:
        if i >= n:
            raise _JsonError("unterminated string")
        ch = text[i]
        if ch == '"':
            break
        if ord(ch) < 32:
            raise _JsonError(f"character with value 0x{ord(ch):02x} must be escaped")
        if ch == "\\":
            i += 1
            if i >= n:
                raise _JsonError("unterminated string")
            esc = text[i]
            if esc == "u":
                code = text[i + 1:i + 5]
                if len(code) < 4 or any(c not in _HEX for c in code):
                    raise _JsonError('"\\u" must be followed by four hexadecimal digits')
                i += 4
                if binary:
                    value = int(code, 16)
                    if 0xD800 <= value <= 0xDBFF:
                        if high is not None:
                            raise _JsonError("Unicode high surrogate must not follow a high surrogate")
                        high = value
                        i += 1
                        continue
                    if 0xDC00 <= value <= 0xDFFF:
                        if high is None:
                            raise _JsonError("Unicode low surrogate must follow a high surrogate")
                        high = None
                    elif high is not None:
                        raise _JsonError("Unicode low surrogate must follow a high surrogate")
                    if value == 0:
                        raise _JsonError("unsupported Unicode escape sequence: \\u0000 cannot be converted to text")
            else:
                if binary and high is not None:
                    raise _JsonError("Unicode low surrogate must follow a high surrogate")
                if esc not in '"\\/bfnrt':
                    raise _JsonError(f'escape sequence "\\{esc}" is invalid')
        elif binary and high is not None:
            raise _JsonError("Unicode low surrogate must follow a high surrogate")
        i += 1
    if high is not None:
        raise _JsonError("Unicode low surrogate must follow a high surrogate")
    return i + 1


def _json(binary: bool) -> Check:
    label = "jsonb" if binary else "json"
    number_check = _numeric(-1)

    def check(text: str) -> None:
        try:
            _parse_json(text, binary, number_check)
        except _JsonError as e:
            raise InvalidValue(f"invalid input syntax for type {label}: {e}") from None

    return check


def _parse_json(text: str, binary: bool, number_check: Check) -> None:
    """pg_parse_json as a loop: an explicit stack instead of recursion."""
    n = len(text)
    i = 0
    # expect: "value", "value_or_close" (after '['), "key_or_close" (after '{'),
    # "key", "colon", "comma_or_close"; stack holds '[' / '{'
    stack: List[str] = []
    expect = "value"

    def token(i: int):
        while i < n and text[i] in _JSON_SPACE:
            i += 1
        if i >= n:
            return "end", i, i
        ch = text[i]
        if ch in "{}[],:":
            return ch, i, i + 1
        if ch == '"':
            return "string", i, _json_string(text, i, binary)
        if ch == "-" or "0" <= ch <= "9":
            return "number", i, _json_number(text, i + 1 if ch == "-" else i)
        j = i
        while j < n and _json_word_char(text[j]):
            j += 1
        if j == i:
            raise _JsonError(f'token "{ch}" is invalid')
        word = text[i:j]
        if word in ("true", "false", "null"):
            return "literal", i, j
        raise _JsonError(f'token "{_shown(word, 50)}" is invalid')

    while True:
        kind, start, end = token(i)
        i = end
        if expect in ("value", "value_or_close"):
            if kind == "]" and expect == "value_or_close":
                stack.pop()
                expect = "comma_or_close"
            elif kind in ("string", "number", "literal"):
                if kind == "number" and binary:
                    try:
                        number_check(text[start:end])
                    except InvalidValue as e:
                        raise _JsonError(str(e)) from None
                expect = "comma_or_close"
            elif kind in ("[", "{"):
                stack.append(kind)
                if len(stack) > JSON_DEPTH_LIMIT:
                    raise NotPortable(
                        f"JSON nested deeper than {JSON_DEPTH_LIMIT} levels (databases refuse deep nesting "
                        "depending on their max_stack_depth)")
                expect = "value_or_close" if kind == "[" else "key_or_close"
            else:
                raise _JsonError("expected JSON value" if kind != "end" else "the input string ended unexpectedly")
        elif expect in ("key", "key_or_close"):
            if kind == "}" and expect == "key_or_close":
                stack.pop()
                expect = "comma_or_close"
            elif kind == "string":
                expect = "colon"
            else:
                raise _JsonError("expected string or \"}\"" if kind != "end" else "the input string ended unexpectedly")
        elif expect == "colon":
            if kind != ":":
                raise _JsonError('expected ":"')
            expect = "value"
        else:  # comma_or_close
            if not stack:
                if kind != "end":
                    raise _JsonError("expected end of input")
                return
            if kind == ",":
                expect = "value" if stack[-1] == "[" else "key"
            elif kind == "]" and stack[-1] == "[":
                stack.pop()
            elif kind == "}" and stack[-1] == "{":
                stack.pop()
            else:
                raise _JsonError('expected "," or "]"' if stack[-1] == "[" else 'expected "," or "}"')


MAXSTRLEN = (1 << 11) - 1  # bytes of one lexeme
MAXSTRPOS = (1 << 20) - 1  # bytes of all lexemes
MAXENTRYPOS = 1 << 14
_TS_OPERATORS = "!&|()<"


class _TsError(Exception):
    pass


def _ts_space(ch: str) -> bool:
    if ch.isascii():
        return ch in SPACE
    if ch.isspace():
        # t_isspace asks the database's LC_CTYPE about non-ASCII characters
        raise NotPortable(
            "text search value with non-ASCII white space, which each database classifies by its own locale")
    return False


def _ts_token(text: str, i: int, query: bool, with_positions: bool) -> Tuple[Optional[str], int]:
    """
    gettoken_tsvector from `i`: (lexeme, end) or (None, i) at the end of
    input.  In a query operators end a word and positions are not read.
    """
    n = len(text)
    state = "word"
    after_escape = ""
    word: List[str] = []
    while True:
        ch = text[i] if i < n else "\0"
        if state == "word":
            if ch == "\0":
                return None, i
            if ch == "'":
                state = "quoted"
            elif ch == "\\":
                state, after_escape = "escaped", "inword"
            elif query and ch in _TS_OPERATORS:
                raise _TsError()
            elif not _ts_space(ch):
                word.append(ch)
                state = "inword"
        elif state == "escaped":
            if ch == "\0":
                raise InvalidValue(f'there is no escaped character: "{_shown(text)}"')
            word.append(ch)
            state = after_escape
        elif state == "inword":
            if ch == "\\":
                state, after_escape = "escaped", "inword"
            elif ch == "\0" or _ts_space(ch) or (query and ch in _TS_OPERATORS):
                if not word:
                    raise _TsError()
                return "".join(word), i
            elif ch == ":":
                if not word:
                    raise _TsError()
                if query:
                    return "".join(word), i
                state = "inpos"
            else:
                word.append(ch)
        elif state == "quoted":
            if ch == "'":
                state = "quote_end"
            elif ch == "\\":
                state, after_escape = "escaped", "quoted"
            elif ch == "\0":
                raise _TsError()
            else:
                word.append(ch)
        elif state == "quote_end":
            if ch == "'":
                word.append(ch)
                state = "quoted"
                i += 1
                continue
            if not word:
                raise _TsError()
            if query:
                return "".join(word), i
            state = "waitpos"
            continue  # recheck this character
        elif state == "waitpos":
            if ch == ":":
                state = "inpos"
            else:
                return "".join(word), i
        elif state == "inpos":
            if not ("0" <= ch <= "9"):
                raise _TsError()
            j = i
            while j < n and "0" <= text[j] <= "9":
                j += 1
            significant = text[i:j].lstrip("0")
            value = int(significant or "0") if len(significant) < 25 else (1 << 63) - 1
            value = min(value, (1 << 63) - 1) & 0xFFFFFFFF  # atoi: a long cut to int
            if value & 0x80000000:
                value -= 1 << 32
            limited = MAXENTRYPOS - 1 if value >= MAXENTRYPOS else value
            if limited & 0x3FFF == 0:
                raise InvalidValue(f'wrong position info in tsvector: "{_shown(text)}"')
            weight_set = False
            state = "posdelim"
        elif state == "posdelim":
            if ch == ",":
                state = "inpos"
            elif ch in "aAbBcC*":
                if weight_set:
                    raise _TsError()
                weight_set = True
            elif ch in "dD":
                if weight_set:
                    raise _TsError()
            elif ch == "\0" or _ts_space(ch):
                return "".join(word), i
            elif not ("0" <= ch <= "9"):
                raise _TsError()
        i += 1


def check_tsvector(text: str) -> None:
    if len(text.encode("utf-8")) > MAXSTRPOS:
        raise InvalidValue("string is too long for tsvector")
    i = 0
    try:
        while True:
            word, i = _ts_token(text, i, False, True)
            if word is None:
                return
            size = len(word.encode("utf-8"))
            if size >= MAXSTRLEN:
                raise InvalidValue(f"word is too long ({size} bytes, max {MAXSTRLEN} bytes)")
    except _TsError:
        raise InvalidValue(f'syntax error in tsvector: "{_shown(text)}"') from None


def check_tsquery(text: str) -> None:
    try:
        _parse_tsquery(text)
    except _TsError:
        raise InvalidValue(f'syntax error in tsquery: "{_shown(text)}"') from None


def _ts_modifiers(text: str, i: int) -> int:
    if i >= len(text) or text[i] != ":":
        return i
    i += 1
    while i < len(text) and text[i] in "aAbBcCdD*":
        i += 1
    return i


def _ts_phrase(text: str, i: int) -> Optional[int]:
    """parse_phrase_operator: the index after "<->" / "<N>", or None."""
    n = len(text)
    if i >= n or text[i] != "<":
        return None
    i += 1
    if i < n and text[i] == "-":
        i += 1
    elif i < n and "0" <= text[i] <= "9":
        j = i
        while j < n and "0" <= text[j] <= "9":
            j += 1
        significant = text[i:j].lstrip("0")
        if len(significant) > 6 or int(significant or "0") > MAXENTRYPOS:
            raise InvalidValue(f"distance in phrase operator must be an integer value between zero and {MAXENTRYPOS} inclusive")
        i = j
    else:
        return None
    if i >= n or text[i] != ">":
        return None
    i += 1
    return i if i < n else None  # at the very end it is not taken as an operator


def _parse_tsquery(text: str) -> None:
    n = len(text)
    i = 0
    state = "first"
    depth = 0
    operators: List[List[str]] = [[]]  # per parenthesis level: pending operators (for the 32-deep stack)
    priority = {"|": 1, "&": 2, "<": 3, "!": 4}

    def push_operator(op: str) -> None:
        stack = operators[-1]
        while stack:
            top = stack[-1]
            if (op != "!" and priority[op] > priority[top]) or (op == "!" and priority[op] >= priority[top]):
                break
            stack.pop()
        if len(stack) == 32:
            raise InvalidValue("tsquery stack too small")
        stack.append(op)

    while True:
        ch = text[i] if i < n else "\0"
        if state in ("first", "operand"):
            if ch == "!":
                push_operator("!")
                state = "operand"
                i += 1
                continue
            if ch == "(":
                depth += 1
                operators.append([])
                state = "operand"
                i += 1
                continue
            if ch == ":":
                raise _TsError()
            if ch == "\0" or not _ts_space(ch):
                word, end = _ts_token(text, i, True, False)
                if word is None:
                    if state == "first":
                        return
                    raise InvalidValue(f'no operand in tsquery: "{_shown(text)}"')
                if len(word.encode("utf-8")) >= MAXSTRLEN:
                    raise InvalidValue("word is too long in tsquery")
                i = _ts_modifiers(text, end)
                state = "operator"
                continue
            i += 1
        else:
            if ch in "&|":
                push_operator(ch)
                state = "operand"
                i += 1
                continue
            phrase_end = _ts_phrase(text, i)
            if phrase_end is not None:
                push_operator("<")
                state = "operand"
                i = phrase_end
                continue
            if ch == ")":
                depth -= 1
                if depth < 0:
                    raise _TsError()
                operators.pop()
                i += 1
                continue
            if ch == "\0":
                if depth:
                    raise _TsError()
                return
            if not _ts_space(ch):
                raise _TsError()
            i += 1
