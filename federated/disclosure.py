"""What reaches the server beside a campaign's protected update, and whether the DP guarantee covers it.

The campaign's privacy report lists these (``PrivacyReport.disclosed``): a guarantee for the update says
nothing about a sample count or a loss sent next to it. Each entry is named by its wire key
(protocol.campaign) where it has one. The list follows from the spec alone, and from what the ClientApp
sends under it (client/client_app.py); tests/test_dp_leaks.py checks the two against each other.
"""

from __future__ import annotations

from edgefleet.federated.secure_aggregation import CLIPPING_RANGE, QUANTIZATION_RANGE
from edgefleet.federated.spec import CampaignSpec
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.model_card import Disclosure

__all__ = ["disclosures"]


def disclosures(spec: CampaignSpec) -> list[Disclosure]:
    """Everything the server learns about a device's samples beside the protected update under ``spec``."""
    privacy = spec.privacy
    mode = privacy.mode if privacy is not None else "none"
    out = [
        Disclosure(
            name="participation",
            covered=False,
            why="which devices were sampled, trained, declined (with the decline code) or did not answer in each "
            "round. A NO_DATA decline says a device holds fewer labelled samples than min_samples, BUDGET_EXHAUSTED "
            "that its budget is spent; no guarantee here is about whether a device takes part.",
        ),
        Disclosure(
            name="training_samples",
            covered=False,
            why="each device's exact count of labelled samples, in its retained MQTT reported state: the "
            "coordinator selects devices by it (min_samples). Sent by the agent, outside the campaign.",
        ),
        Disclosure(name=keys.DEVICE_ID, covered=True, why="names the device that replied, not its samples."),
        Disclosure(name=keys.UNIT_WEIGHT, covered=True, why="the constant 1.0."),
    ]
    if privacy is None:
        clear = "no DP guarantee: sent in the clear"
        out += [
            Disclosure(
                name=keys.NUM_EXAMPLES,
                covered=False,
                why=f"{clear}; the exact sample count, the weight of "
                "the update in the mean (with secure aggregation also as the FitRes's num_examples).",
            ),
            Disclosure(name=keys.STEPS, covered=False, why=f"{clear}; the local optimizer steps."),
            Disclosure(name=keys.TRAIN_LOSS, covered=False, why=f"{clear}; the loss on the device's own samples."),
            Disclosure(
                name="update",
                covered=False,
                why="no DP guarantee; with secure aggregation the server sees only the sample-weighted mean of at "
                "least min_clients updates, without it each device's new weights.",
            ),
        ]
    else:
        out.append(
            Disclosure(
                name="decline reasons",
                covered=True,
                why="fixed texts under DP ('fewer labelled samples than the campaign needs', 'privacy budget: ... "
                "max epsilon'); the counts and epsilons behind them stay in the device's log.",
            )
        )
    if mode == "local":
        from_spec = privacy is not None and privacy.target_epsilon is None
        out += [
            Disclosure(
                name=keys.EPSILON,
                covered=False,
                why="each device's cumulative epsilon after every round: computed from its sample rate (batch_size "
                "over its sample count) and steps, so it reveals the sample count to within about one batch.",
            ),
            Disclosure(
                name=keys.NOISE_MULTIPLIER,
                covered=from_spec,
                why="the spec's noise_multiplier."
                if from_spec
                else "chosen at round one from target_epsilon and "
                "this device's sample rate: like epsilon it reveals the sample count to within about one batch.",
            ),
        ]
    if mode == "distributed":
        same = "one full-batch step per round (sample rate 1), so it follows from the spec and the rounds the device "
        out += [
            Disclosure(name=keys.EPSILON, covered=True, why=same + "took part in (participation), not from its data."),
            Disclosure(name=keys.LOCAL_EPSILON, covered=True, why=same + "took part in, not from its data."),
            Disclosure(name=keys.NOISE_MULTIPLIER, covered=True, why=same + "took part in, not from its data."),
        ]
    if mode == "central":
        out.append(
            Disclosure(
                name="update",
                covered=False,
                why="central DP trusts the server: each device's update (clipped to clip_norm by the server's "
                "wrapper) reaches it in the clear, and the noise is added after. The client-level guarantee covers "
                "the released models, not what the server sees.",
            )
        )
    if spec.secure_aggregation:
        out += _secure_aggregation(mode)
    return out


def _secure_aggregation(mode: str) -> list[Disclosure]:
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    clipped_why = {
        "none": "no DP guarantee; how many values of the device's update lay beyond the quantization range.",
        "local": "how many values of the device's own DP-SGD update lay beyond the quantization range: "
        "post-processing of that update, covered by its epsilon.",
        "distributed": "how many values of the device's own update lay beyond the quantization range. That update "
        "carries only 1/sqrt(min_clients) of the noise: only local_epsilon covers the count.",
    }[mode]
    quantized_why = {
        "none": "no DP guarantee.",
        "local": "post-processing of each device's own DP-SGD update: covered by its epsilon.",
        # How the quantization step is accounted (issue: say it, or account it as a discrete mechanism).
        "distributed": "epsilon is that of the Gaussian mechanism on the exact sum of the updates. What the server "
        f"unmasks is the sum of each update clipped to +-{CLIPPING_RANGE:g} per value (counted: clipped-values) and "
        f"stochastically rounded to steps of {step:.2g}, summed modulo 2**32 (never wrapping). Clipping and rounding "
        "act on each device's share, not on the sum, so they are not post-processing of the accounted mechanism: "
        "the stated epsilon assumes they changed nothing (no value clipped, rounding below the noise by orders of "
        "magnitude); strictly only local_epsilon covers them. Not accounted as a discrete (distributed discrete "
        "Gaussian, Skellam) mechanism.",
    }[mode]
    dp = mode != "none"
    return [
        Disclosure(
            name="fitres.num_examples",
            covered=dp,
            why="1 from every device under DP (the mean is unweighted)."
            if dp
            else "no DP guarantee; the device's sample count (at most 10000), the weight of its update.",
        ),
        Disclosure(name=keys.CLIPPED_VALUES, covered=mode == "local", why=clipped_why),
        Disclosure(name="quantized sum", covered=mode == "local", why=quantized_why),
    ]
