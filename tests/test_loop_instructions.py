"""bench/loop_instructions.py: the static count of each entry's vector loops."""
import pytest

from bench import loop_instructions

from .oracles import require_oracle


def test_every_entry_of_a_layer_has_its_loops_counted(capsys):
    """The backward's loops too: the tool compiled only the source's first part
    (-DBP_PART=1: the shared functions and the forward), so `layernorm` listed forward
    loops alone."""
    require_oracle("cc")
    assert loop_instructions.main(["layernorm"]) == 0
    entries = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert entries == {"forward", "backward"}


def test_a_merged_forward_backward_is_counted_at_full_width(capsys):
    """An entry named alone: only its loops (sigmoid + BCE's loss and dz in one pass)."""
    require_oracle("cc")
    loop_instructions.main(["sigmoid_bce", "forward_backward"])
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(l.startswith("forward_backward") for l in lines)


def test_an_unknown_layer_is_one_line():
    with pytest.raises(SystemExit, match="'softmax_ce' is neither a built-in layer"):
        loop_instructions.main(["softmax_ce"])


def test_an_unknown_entry_is_refused_not_silently_empty(capsys):
    with pytest.raises(SystemExit):
        loop_instructions.main(["gelu", "backwrd"])
    assert "no entry backwrd" in capsys.readouterr().err
