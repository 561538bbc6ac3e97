"""codegen.loops.inline_cheap: scratch arrays cheaper to recompute than to store are
substituted into their readers, at a cost linear in the number of nests."""
import sympy as sp

from codegen import loops
from codegen.loops import Nest, Temp, inline_cheap
from derive.spec import index

n = index("n", "N")


def chain(length):
    """t0 = 2 x; t_k = 2 t_{k-1} (scratch, each read once); y = t_last + x."""
    x = sp.IndexedBase("x")
    nests, temps, prev = [], [], x[n]
    for k in range(length):
        name = f"t{k}"
        nests.append(Nest("elementwise", name, (n,), (n,), (), 2 * prev))
        temps.append(Temp(name, (n,)))
        prev = sp.IndexedBase(name)[n]
    nests.append(Nest("elementwise", "y", (n,), (n,), (), prev + x[n]))
    return nests, temps


def test_a_chain_of_scratch_arrays_folds_into_its_reader():
    nests, temps = inline_cheap(*chain(5))
    assert temps == [] and [m.target for m in nests] == ["y"]
    assert nests[0].body == 33 * sp.IndexedBase("x")[n]


def test_cost_is_linear_in_the_number_of_nests(monkeypatch):
    """Reads are indexed once and updated per substitution: the array reads of about three
    nests per scratch array are looked at, not of every nest (the old loop rescanned all
    of them for each, 20 000 scans for 200)."""
    looked = []
    real = loops._names_read
    monkeypatch.setattr(loops, "_names_read", lambda m: looked.append(m) or real(m))
    size = 200
    nests, temps = inline_cheap(*chain(size))
    assert [m.target for m in nests] == ["y"]
    assert len(looked) <= 3 * size
