"""Specs that grow with a depth, for the cost of the symbolic side: nested functions
tanh(tanh(...x...)), a chain of tanh intermediates, and a dense tanh MLP of many layers.
A derivation should take time, and print formulas of a size, linear in the depth."""
from __future__ import annotations


def nested(depth: int) -> str:
    """a = tanh(tanh(... x ...)), `depth` calls deep, in one equation."""
    body = "x[n, i]"
    for _ in range(depth):
        body = f"tanh({body})"
    return f"layer nested\ndims N, I\ninput x[N, I]\noutput a[N, I]\n\na[n, i] = {body}\n"


def chain(depth: int) -> str:
    """h1 = tanh(h0), h2 = tanh(h1), ..., a = tanh(h_{depth-1}): `depth` equations."""
    eqs = [f"h{k}[n, i] = tanh(h{k - 1}[n, i])" for k in range(1, depth)]
    eqs.append(f"a[n, i] = tanh(h{depth - 1}[n, i])")
    inter = ", ".join(f"h{k}[N, I]" for k in range(1, depth))
    return ("layer chain\ndims N, I\ninput h0[N, I]\n"
            + (f"intermediate {inter}\n" if inter else "")
            + "output a[N, I]\n\n" + "\n".join(eqs) + "\n")


def mlp(depth: int) -> str:
    """`depth` dense layers with tanh between them, written out by hand."""
    eqs, params, inter = [], [], []
    prev = "x"
    for k in range(1, depth + 1):
        params.append(f"W{k}[I, I], b{k}[I]")
        out = "y" if k == depth else f"z{k}"
        eqs.append(f"{out}[n, i] = W{k}[i, j] * {prev}[n, j] + b{k}[i]")
        if k < depth:
            eqs.append(f"a{k}[n, i] = tanh(z{k}[n, i])")
            inter += [f"z{k}[N, I]", f"a{k}[N, I]"]
            prev = f"a{k}"
    return ("layer deep\ndims N, I\ninput x[N, I]\nparam " + ", ".join(params)
            + ("\nintermediate " + ", ".join(inter) if inter else "")
            + "\noutput y[N, I]\n\n" + "\n".join(eqs) + "\n")


# (name, spec maker, depth, what is timed, target in seconds)
CASES = [("nested tanh x50", nested, 50, "derive", 5.0),
         ("tanh chain x50", chain, 50, "derive", 5.0),
         ("tanh MLP x40", mlp, 40, "derive", 5.0),
         ("tanh MLP x40", mlp, 40, "C", 5.0)]
