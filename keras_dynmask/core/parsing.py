"""Text to patterns: `parse_pattern("causal & window(3)")`.

Grammar, with Python's precedence (`~` binds tighter than `&`, `&` than
`|`)::

    expression := term ("|" term)*
    term       := factor ("&" factor)*
    factor     := "~" factor | "(" expression ")" | word
    word       := causal | forward | backward | bidirectional
                | window(L) | window(L, R) | prefix | prefix(P)
                | segment | span | span(LEN, POS)

A word with numbers may end with a name for the variables a layer holds
for them: `window(2, name=local)`, `prefix(3, name=p)`.
"""

import re

from keras_dynmask.core import patterns

# word: (pattern class, argument counts it accepts)
_WORDS = {
    "causal": (patterns.Causal, (0,)),
    "forward": (patterns.Causal, (0,)),
    "backward": (patterns.Backward, (0,)),
    "bidirectional": (patterns.Bidirectional, (0,)),
    "window": (patterns.Window, (1, 2)),
    "prefix": (patterns.Prefix, (0, 1)),
    "segment": (patterns.Segment, (0,)),
    "span": (patterns.Span, (0, 2)),
}
_TOKEN = re.compile(r"\s*(?:(?P<int>\d+)|(?P<word>[A-Za-z_]\w*)|(?P<op>\S))")


def parse_pattern(text):
    """Turns pattern text into a `Pattern`.

    Args:
        text: str. For example `"causal & window(3)"`, `"causal | prefix"`,
            `"segment & ~span(2, 4)"`.

    Returns:
        A `keras_dynmask.core.patterns.Pattern`; `str()` of it parses back to an
        equal pattern.

    Raises:
        ValueError: naming the text and where it went wrong.

    Example:

    >>> import keras_dynmask
    >>> p = keras_dynmask.parse_pattern("causal & (window(2) | prefix(1))")
    >>> print(p)
    causal & (window(2) | prefix(1))
    >>> p.mask(3).numpy().astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]]])
    """
    if not isinstance(text, str):
        raise ValueError(
            f"pattern text must be a str, received text={text!r} "
            f"of type {type(text).__name__}"
        )
    return _Parser(text).parse()


def as_pattern(pattern, name="pattern"):
    """A `Pattern` from a `Pattern` or from its text."""
    if isinstance(pattern, patterns.Pattern):
        return pattern
    if isinstance(pattern, str):
        return parse_pattern(pattern)
    raise ValueError(
        f"{name} must be a Pattern or pattern text such as 'causal', "
        f"received {name}={pattern!r} of type {type(pattern).__name__}"
    )


class _Parser:
    def __init__(self, text):
        self.text = text
        self.tokens = []
        for match in _TOKEN.finditer(text):
            kind = match.lastgroup
            self.tokens.append((kind, match.group(kind), match.start(kind)))
        self.index = 0

    def parse(self):
        if not self.tokens:
            self._fail("it is empty", len(self.text))
        pattern = self._expression()
        if self.index < len(self.tokens):
            _, value, position = self.tokens[self.index]
            self._fail(f"unexpected {value!r}", position)
        return pattern

    def _expression(self):
        parts = [self._term()]
        while self._accept("|"):
            parts.append(self._term())
        return parts[0] if len(parts) == 1 else patterns.Or(*parts)

    def _term(self):
        parts = [self._factor()]
        while self._accept("&"):
            parts.append(self._factor())
        return parts[0] if len(parts) == 1 else patterns.And(*parts)

    def _factor(self):
        if self._accept("~"):
            return patterns.Not(self._factor())
        if self._accept("("):
            pattern = self._expression()
            self._expect(")")
            return pattern
        kind, value, position = self._next("a pattern word")
        if kind != "word":
            self._fail(f"expected a pattern word, found {value!r}", position)
        if value.lower() not in _WORDS:
            self._fail(
                f"unknown pattern word {value!r}; known words are "
                f"{', '.join(sorted(_WORDS))}",
                position,
            )
        cls, counts = _WORDS[value.lower()]
        arguments, name = self._arguments() if self._peek("(") else ([], None)
        if name is not None and not issubclass(cls, patterns._Word):
            self._fail(f"{value} takes no name", position)
        if len(arguments) not in counts:
            expected = " or ".join(str(count) for count in counts)
            self._fail(
                f"{value} takes {expected} int arguments, "
                f"received {len(arguments)}",
                position,
            )
        try:
            if name is None:
                return cls(*arguments)
            return cls(*arguments, name=name)
        except ValueError as error:
            self._fail(str(error), position)

    def _arguments(self):
        """`(ints, name)` from `(1, 2)`, `(1, name=local)` or `(name=p)`."""
        self._expect("(")
        arguments, name = [], None
        while True:
            kind, value, position = self._next("an int or name=")
            if kind == "word" and value == "name" and self._accept("="):
                kind, name, position = self._next("a name")
                if kind != "word":
                    self._fail(f"expected a name, found {name!r}", position)
                self._expect(")")
                return arguments, name
            if kind != "int":
                self._fail(f"expected an int, found {value!r}", position)
            arguments.append(int(value))
            if not self._accept(","):
                break
        self._expect(")")
        return arguments, name

    def _peek(self, op):
        return (
            self.index < len(self.tokens)
            and self.tokens[self.index][0] == "op"
            and self.tokens[self.index][1] == op
        )

    def _accept(self, op):
        if self._peek(op):
            self.index += 1
            return True
        return False

    def _expect(self, op):
        if not self._accept(op):
            if self.index < len(self.tokens):
                _, value, position = self.tokens[self.index]
                self._fail(f"expected {op!r}, found {value!r}", position)
            self._fail(f"expected {op!r} at the end", len(self.text))

    def _next(self, expected):
        if self.index >= len(self.tokens):
            self._fail(f"expected {expected} at the end", len(self.text))
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _fail(self, reason, position):
        raise ValueError(
            f"Cannot parse pattern={self.text!r}: {reason} (at character "
            f"{position})\n    {self.text}\n    {' ' * position}^"
        )
