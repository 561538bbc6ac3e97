"""Which names may reach generated Python and C: strict identifiers, no keywords; and the
closest known name to a misspelt one."""
import difflib
import keyword
import re

IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")

C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef
union unsigned void volatile while _Bool _Complex _Imaginary bool true false NULL main
""".split())

# Names the generated code or the spec language itself uses.
RESERVED = frozenset("""
sum exp log sqrt tanh sigmoid relu softplus np numpy math forward backward layer dims
input param target output intermediate loss given example nograd outside initial shape dtype out self
""".split())


def name_problem(name: str) -> str | None:
    """Why `name` cannot be used for a tensor, dimension or index (None when it can)."""
    if not IDENTIFIER.match(name):
        return (f"'{name}' is not a valid name: use a letter followed by letters, digits "
                f"or underscores (at most 63 characters)")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"'{name}' is a Python keyword"
    if name in C_KEYWORDS:
        return f"'{name}' is a C keyword"
    if name in RESERVED:
        return f"'{name}' is reserved by the spec language or the generated code"
    return None


def layer_name_problem(name: str) -> str | None:
    """Layer names become module names and C prefixes: identifiers, not keywords."""
    problem = name_problem(name)
    if problem and "reserved" in problem:
        return None  # a layer may be called sigmoid or relu
    return problem


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'X'?)' for the closest of `known` to a misspelt name, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
