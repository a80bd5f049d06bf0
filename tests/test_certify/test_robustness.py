"""The protocol's PGD with several losses (`cnode robustness --pgd-loss`): an input counts as robust only if PGD with
every loss left it correct, checked against the attacks run one by one."""

import pytest
import torch

from certify.bounds.attacks import pgd
from certify.robustness import format_robustness, robustness
from contraction.errors import CNodeError
from nodes.data import load_dataset

_KW = dict(gaussian=(), salt_pepper=(), attack_eps=(0.2, 0.3), certify_eps=(), draws=1, square_queries=5,
           progress=False)


def test_pgd_with_both_losses_counts_an_input_only_if_it_survives_each(tiny_trained):
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=30)
    runs = {losses: robustness(model, data, pgd_losses=losses, batch_size=len(data), **_KW)
            for losses in (("ce",), ("margin",), ("ce", "margin"))}
    x, y = data.tensors()
    disagree = 0
    for eps in _KW["attack_eps"]:  # Linf; L2 (pgd_l2) runs the same helper with norm 2
        survived = {}
        for loss in ("ce", "margin"):  # the protocol's attack, run here by hand: batch 0, seed 0
            adv = pgd(model, x, y, eps=eps, steps=20, step_size=2.5 * eps / 20, seed=0, loss=loss)
            with torch.no_grad():
                survived[loss] = model(adv).argmax(1) == y
            assert runs[(loss,)]["pgd"][str(eps)] == pytest.approx(float(survived[loss].double().mean()))
        both = survived["ce"] & survived["margin"]
        assert runs[("ce", "margin")]["pgd"][str(eps)] == pytest.approx(float(both.double().mean()))
        disagree += int((survived["ce"] != survived["margin"]).sum())
    assert disagree > 0  # else "both" could be either loss alone and the test would not tell
    assert runs[("ce", "margin")]["pgd_loss"] == "ce+margin"
    assert "PGD-20 Linf (ce+margin)" in format_robustness(runs[("ce", "margin")])
    for bad in ((), ("hinge",)):
        with pytest.raises(CNodeError, match="PGD's losses"):
            robustness(model, data, pgd_losses=bad, **_KW)
