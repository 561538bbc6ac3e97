"""Every kind of bad spec gets a SpecError naming file, line and column."""
import pytest
import sympy as sp

from derive import LayerBuilder, SpecError, parse_spec
from derive.builtins import builtin_text

HEAD = """layer demo
dims N, I, J
input x[N, J]
param W[I, J], b[I]
output z[N, I]
"""


def error_of(text, file="demo.bp"):
    with pytest.raises(SpecError) as info:
        parse_spec(text, file)
    return info.value


@pytest.mark.parametrize("equation, line, col, words", [
    # unknown function: the column points at the function's name
    ("z[n, i] = foo(W[i, j] * x[n, j]) + b[i]", 6, 11, "unknown function 'foo'"),
    # undeclared tensor on the right-hand side
    ("z[n, i] = V[i, j] * x[n, j] + b[i]", 6, 11, "undeclared tensor 'V'"),
    # wrong number of indices
    ("z[n, i] = W[i] * x[n, i] + b[i]", 6, 11, "'W' has 2 indices [I, J], not 1"),
    # an index used with two different dimensions (i is I in W, J in x)
    ("z[n, i] = W[i, j] * x[n, i] + b[i]", 6, 26, "index 'i' runs over J here but over I"),
    # a left-hand index missing from the right: free indices differ
    ("z[n, i] = W[i, j] * x[n*j, j] + b[i]", 6, 23, "a product of two indices is not"),
    ("z[n, i] = b[i]", 6, 11, "left-hand index 'n' does not appear"),
    # an index that is not on the left and only sits inside a function: ambiguous sum
    # an index bound nowhere that sits only in parentheses or a denominator: ambiguous
    ("z[n, i] = (W[i, j] + b[i]) * sum(x[n, k], k)", 6, 17, "write sum(..., j)"),
    ("z[n, i] = b[i] * sum(x[n, k], k) / W[i, j]", 6, 41, "ambiguous"),
    # an undeclared name used as a value
    ("z[n, i] = W[i, j] * x[n, j] + b[i] * alpha", 6, 38, "undeclared name 'alpha'"),
    # powers written with ^
    ("z[n, i] = W[i, j] * x[n, j] + b[i]^2", 6, 35, "write ** for powers"),
    # a stray character
    ("z[n, i] = W[i, j] * x[n, j] + b[i] @ b[i]", 6, 31, "operator '@'"),
    ("z[n, i] = W[i, j] * x[n, j] + b[i] == 1", 6, 11,
     "a comparison is allowed only as the condition of where"),
    ("z[n, i] = W[i, j] * x[n, j] = b[i]", 6, 29, "exactly one '='"),
    ("z[n, i] = sum(W[i, j] * x[n, j], k) + b[i]", 6, 34, "'k' is summed but not used"),
    ("z[n, i] = sum(W[i, j] * x[n, j], i) + b[i]", 6, 34, "already bound"),
    ("z[n, i] = x[n, j] ** y + b[i]", 6, 22, "undeclared name 'y'"),
    ("z[n, i] = W[i, j] * x[n, j] ** 1000 + b[i]", 6, 32, "numeric exponents must be of size"),
    ("z[n, i] = W[i, j] * x[n, j] / 0 + b[i]", 6, 11, "not a finite real number"),
    ("z[n, i] = W[i, j] * x[n, j] * sqrt(-2) + b[i]", 6, 31, "not a finite real number"),
    ("z[n, i] = W[i, j] * x[n, j] - W[i, j] * x[n, j] + b[i]", 6, 11, "'n' cancels out"),
])
def test_equation_errors(equation, line, col, words):
    err = error_of(HEAD + equation + "\n")
    assert err.file == "demo.bp"
    assert (err.line, err.col) == (line, col), str(err)
    assert words in err.message, str(err)
    assert str(err).startswith(f"demo.bp:{line}:{col}: ")


def test_diagonal_and_unparseable():
    err = error_of(HEAD.replace("b[I]", "b[I], S[J, J]") + "z[n, i] = S[j, j] * x[n, j] + b[i]\n")
    assert (err.line, err.col) == (6, 11) and "uses an index twice" in err.message
    err = error_of(HEAD + "z[n, i] = W[i, j] * x[n, j] + b[i] +\n")
    assert err.line == 6 and "cannot parse" in err.message


def test_undeclared_dimension():
    err = error_of("layer demo\ndims N\ninput x[N, K]\n")
    assert (err.line, err.col) == (3, 12) and "undeclared dimension 'K'" in err.message


def test_tensor_assigned_twice():
    err = error_of(HEAD + "z[n, i] = b[i] * x[n, j]\nz[n, i] = W[i, j] * x[n, j]\n")
    assert (err.line, err.col) == (7, 1) and "assigned twice (first on line 6)" in err.message


def test_assigning_an_input():
    err = error_of(HEAD + "x[n, j] = W[i, j] * 2 * z[n, i]\n")
    assert (err.line, err.col) == (6, 1) and "declared as input" in err.message


def test_cycle():
    text = """layer demo
dims N
input x[N]
intermediate a[N], b[N]
output c[N]
a[n] = b[n] + x[n]
b[n] = a[n] * 2
c[n] = a[n]
"""
    err = error_of(text)
    assert "cycle" in err.message and err.line in (6, 7)
    assert "lines" in err.message


@pytest.mark.parametrize("decl, col, words", [
    ("input 2x[N]", 7, "cannot parse"),
    ("input for[N]", 7, "cannot parse"),           # Python keyword: not even parseable
    ("input int[N]", 7, "'int' is a C keyword"),
    ("input double", 7, "'double' is a C keyword"),
    ("input x_[N], match[N]", 14, "'match' is a Python keyword"),
    ("input exp[N]", 7, "reserved"),
    ("input N[N]", 7, "already declared as a dimension"),
    ("input y[N], y[N]", 13, "already declared on line 3"),
    ("input _x[N]", 7, "not a valid name"),
    ("input x[3]", 9, "dimensions of 'x' must be names"),
    ("loss L[N]", 6, "must be a scalar"),
    ("frobnicate x", 1, "unknown statement 'frobnicate'"),
])
def test_declaration_errors(decl, col, words):
    err = error_of(f"layer demo\ndims N\n{decl}\n")
    assert (err.line, err.col) == (3, col), str(err)
    assert words in err.message, str(err)


def test_gradient_name_clash():
    err = error_of("layer demo\ndims N\ninput x[N], dx[N]\noutput y[N]\ny[n] = x[n] + dx[n]\n")
    assert err.line == 3 and "'dx' names the gradient of 'x'" in err.message


def test_output_never_assigned():
    err = error_of(HEAD)
    assert err.line == 5 and "no equation assigns it" in err.message


def test_missing_layer_line_and_non_ascii():
    assert error_of("dims N\n").line == 1
    err = error_of("layer demo\ndims N\ninput x[N]  \n output y[N]\ny[n] = x[n] \u00b7 2\n")
    assert (err.line, err.col) == (5, 13) and "ASCII" in err.message


def test_index_only_in_denominator_is_ambiguous():
    err = error_of(HEAD + "z[n, i] = b[i] / W[i, j] + b[i]\n")
    assert (err.line, err.col) == (6, 23), str(err)
    assert err.message == ("index 'j' is not bound here and appears only inside parentheses, "
                           "a denominator or a power, so where its sum goes is ambiguous; "
                           "write sum(..., j)")


def test_condition_errors():
    base = builtin_text("softmax_cross_entropy")
    bad = base.replace("given  sum(t[n, i], i) = 1", "given  t[n, i] = 1")
    err = error_of(bad)
    assert err.line == 7 and "sum(T[n, i], i) = value" in err.message
    bad = base.replace("given  sum(t[n, i], i) = 1", "given# sum(t[n, i], i) = 1")
    assert "expected a condition" in error_of(bad).message
    bad = base.replace("given  sum(t[n, i], i) = 1", "given  sum(t[n, i], j) = 1")
    assert "not an index of 't'" in error_of(bad).message


def test_output_read_by_another_equation_is_allowed():
    """Issue 12: such an output keeps its upstream gradient (tests/test_read_outputs.py);
    only a loss read by another equation is refused."""
    text = "layer demo\ndims N\ninput x[N]\noutput y[N], z[N]\ny[n] = 2*x[n]\nz[n] = y[n]\n"
    assert [t.name for t in parse_spec(text).upstream] == ["y", "z"]
    err = error_of("layer demo\ndims N\ninput x[N]\noutput z[N]\nloss L\n"
                   "L = sum(x[n], n)\nz[n] = L * x[n]\n")
    assert err.line == 5 and "the loss 'L' is read by the equation on line 7" in err.message


def test_builder_reports_the_same_errors():
    b = (LayerBuilder("demo").dims("N", "I", "J").input("x[N, J]").param("W[I, J]")
         .output("z[N, I]").equation("z[n, i] = W[i, j]"))
    with pytest.raises(SpecError) as info:
        b.build()
    assert info.value.file == "<LayerBuilder demo>" and "left-hand index 'n'" in str(info.value)


def test_gradient_name_that_is_a_keyword():
    err = error_of("layer demo\ndims N\ninput x[N]\noutput o[N]\no[n] = x[n]\n")
    assert err.line == 4 and "'do'" in err.message and "C keyword" in err.message


@pytest.mark.parametrize("line, col, words", [
    ("example x = abc", 13, "'abc' is not a number"),
    ("example q = 1", 9, "'q' is not a dimension or an input"),
    ("example y = 1", 9, "'y' is not a dimension or an input"),
    ("example x 1", 8, "'name = number' pairs"),
    ("example N = 0", 9, "integer from 1 to 16"),
    ("example x = inf", 9, "finite"),
])
def test_example_statement_errors(line, col, words):
    err = error_of(f"layer d\ndims N\ninput x, v[N]\noutput y[N]\ny[n] = x * v[n]\n{line}\n")
    assert (err.line, err.col) == (6, col), str(err)
    assert words in err.message


LABELS = """layer labels
dims N, I, J
input z[N, I]
input u[N, J]
target t[N] in I
output y[N]
"""


@pytest.mark.parametrize("text, line, col, words", [
    # a label tensor used as a value, not inside brackets
    (LABELS + "y[n] = t[n] * z[n, 0]", 7, 8, "use it only inside another tensor"),
    (LABELS + "y[n] = t[n] + sum(z[n, i], i)", 7, 8, "holds integer indices into I"),
    # labels into I gathering along a J slot
    (LABELS + "y[n] = u[n, t[n]]", 7, 13, "'t' holds indices into I, but this slot of 'u' "
                                          "runs over J"),
    # a float tensor used as an index
    (LABELS + "y[n] = z[n, u[n, 0]]", 7, 13, "must be plain index names or an integer"),
    # declarations
    (LABELS.replace("target t[N] in I", "target t[N] in K") + "y[n] = z[n, t[n]]", 5, 16,
     "undeclared dimension 'K' after 'in'"),
    (LABELS.replace("target t[N] in I", "target t[N] < I") + "y[n] = z[n, t[n]]", 5, 8,
     "declared like t[N] in I"),
    (LABELS.replace("output y[N]", "output y[N] in I") + "y[n] = z[n, 0]", 6, 8,
     "only inputs and targets can hold integer indices"),
])
def test_integer_label_errors(text, line, col, words):
    e = error_of(text)
    assert (e.line, e.col) == (line, col) and words in e.message, (e.line, e.col, e.message)


def test_example_value_of_a_label_is_an_index():
    e = error_of(LABELS + "y[n] = z[n, t[n]]\nexample t = 1.5")
    assert (e.line, e.col) == (8, 9) and "holds indices into I" in e.message


def test_gather_and_scalar_label_parse():
    layer = parse_spec(LABELS + "y[n] = z[n, t[n]]")
    assert layer.tensors["t"].values == "I" and "t" not in [x.name for x in
                                                              layer.differentiable]
    scalar = parse_spec("layer pick\ndims I\ninput z[I]\ntarget c in I\nloss L\n"
                        "L = -z[c]")
    assert scalar.tensors["c"].values == "I" and scalar.tensors["c"].dims == ()


@pytest.mark.parametrize("line, col, words", [
    ("nograd q", 8, "'q' is not declared (declare it before 'nograd')"),
    ("nograd y", 8, "'y' is declared as output; only inputs and parameters"),
    ("nograd x[0]", 8, "comma-separated list of tensor names"),
])
def test_nograd_statement_errors(line, col, words):
    err = error_of(f"layer d\ndims N\ninput x, v[N]\noutput y[N]\ny[n] = x * v[n]\n{line}\n")
    assert (err.line, err.col) == (6, col) and words in err.message, str(err)


def test_nograd_inputs_get_no_gradient():
    layer = parse_spec("layer d\ndims N\ninput x, v[N]\noutput y[N]\nnograd x\n"
                       "y[n] = x * v[n]\n")
    assert [t.name for t in layer.differentiable] == ["v"]


def test_exponents_may_be_tensors():
    text = "layer d\ndims N\ninput s, v[N]\noutput y[N]\n"
    assert parse_spec(text + "y[n] = v[n] ** s\n").tensors["s"].dims == ()
    assert parse_spec(text + "y[n] = s ** v[n]\n").equations[0].rhs == \
        sp.Symbol("s") ** sp.IndexedBase("v")[sp.Idx("n", sp.Symbol("N", integer=True,
                                                                        positive=True))]


# ---- continuation lines and newcomers' messages (issue 17) ----------------------------

def test_a_statement_continues_inside_brackets_and_after_a_backslash():
    one_line = parse_spec(HEAD + "z[n, i] = W[i, j] * x[n, j] + b[i]\n")
    for text in ("z[n, i] = (W[i, j] *\n  # a comment inside\n\n  x[n, j] + b[i])\n",
                 "z[n, i] = W[i, j] * x[n, j] \\\n    + b[i]\n"):
        layer = parse_spec(HEAD + text)
        assert layer.equations[0].line == 6
        assert layer.equations[0].rhs == one_line.equations[0].rhs
        # documents and generated comments show the statement on one line
        assert layer.equations[0].text in ("z[n, i] = (W[i, j] * x[n, j] + b[i])",
                                           "z[n, i] = W[i, j] * x[n, j] + b[i]")


def test_errors_in_continued_statements_point_at_the_line_they_are_on():
    err = error_of(HEAD + "z[n, i] = (W[i, j] * x[n, j]\n    + foo(b[i]))\n")
    assert (err.line, err.col) == (7, 7) and "unknown function 'foo'" in err.message
    err = error_of(HEAD + "z[n, i] = sigmoid(W[i, j] * x[n, j]\n\n")
    assert (err.line, err.col) == (6, 18) and "'(' is never closed" in err.message
    err = error_of(HEAD + "z[n, i] = b[i] \\\n")
    assert err.line == 6 and "ends in a backslash" in err.message


def test_a_layer_description_may_hold_an_open_parenthesis():
    layer = parse_spec("layer demo  an affine map (rows are examples\n" + HEAD.split("\n", 1)[1]
                       + "z[n, i] = W[i, j] * x[n, j] + b[i]\n")
    assert layer.doc == "an affine map (rows are examples"


def test_a_byte_order_mark_is_accepted():
    layer = parse_spec("\ufeff" + HEAD + "z[n, i] = W[i, j] * x[n, j] + b[i]\n")
    assert layer.name == "demo"


@pytest.mark.parametrize("equation, col, words", [
    ("z[n, i] = c[n, i]", 11, "undeclared tensor 'c'; declare it first"),
    ("z[n, i] = N[n] * b[i]", 11, "'N' is a dimension, not a tensor"),
    ("z[n, i] = sigmod(W[i, j] * x[n, j]) + b[i]", 11, "did you mean 'sigmoid'?"),
    ("z[n, i] = b[] * W[i, j] * x[n, j]", 11, "'b[]' has no indices"),
    ("z[n, i] = 1e-400 * W[i, j] * x[n, j] + b[i]", 11, "1e-400 is too small for a float"),
    ("z[n, i] = 1e400 * W[i, j] * x[n, j] + b[i]", 11, "numbers must be finite"),
])
def test_newcomers_messages(equation, col, words):
    err = error_of(HEAD + equation + "\n")
    assert (err.line, err.col) == (6, col), str(err)
    assert words in err.message and "(not declared)" not in err.message, str(err)


def test_an_unknown_layer_name_suggests_the_close_builtin_and_names_no_file():
    from derive.builtins import builtin, resolve

    for call in (lambda: resolve("layernrom"), lambda: builtin("layernrom")):
        with pytest.raises(SpecError) as info:
            call()
        assert "did you mean 'layernorm'?" in str(info.value)
        assert not str(info.value).startswith("<")       # no '<command line>:' from Python


def test_an_overlong_statement_says_what_to_do():
    long_sum = " + ".join(["x[n, j] * W[i, j]"] * 120)
    err = error_of(HEAD + f"z[n, i] = ({long_sum}\n + b[i])\n")
    assert err.line == 6 and "longer than 2000 characters; name parts of it" in err.message
