"""The contract between a campaign's ServerApp (coordinator side) and ClientApp (device side).

Flower carries the messages; what is in them is ours: the run and node config keys, the record
names and keys of train and evaluate messages, the metrics a reply carries, and the codes a device
declines a round with. Both roles import them from here; no key is spelled out anywhere else.
"""

from __future__ import annotations

import re
from enum import IntEnum

__all__ = [
    "Decline",
    "decline_code",
    "decline_text",
]

# -- run config (coordinator -> ServerApp) and the config record of each message (ServerApp -> ClientApp)
CAMPAIGN_ID = "campaign-id"
CAMPAIGN = "campaign"  # the CampaignSpec as JSON
WORK_DIR = "work-dir"  # run config only: where the ServerApp reads its start and writes its journal
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
ARRAY_NAMES = "array-names"  # SecAgg+: the names of the arrays, in the order the update lists them

ARCHITECTURES = "architectures"  # run and node config: import paths this machine's admin allows, comma-separated

# -- node config (agent -> its SuperNode -> the ClientApp)
DEVICE_ID = "device-id"
SAMPLES_DB = "samples-db"
STATE_DIR = "state-dir"
THERMAL_MARKER = "thermal-marker"  # a file that exists while the device is too hot for optional work

# -- record names of a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT = "client"  # the replying device's ConfigRecord ({DEVICE_ID: ...})

# -- metrics of a reply
NUM_EXAMPLES = "num-examples"  # the weight of an update in sample-weighted aggregation; not sent under DP
UNIT_WEIGHT = "unit-weight"  # 1.0 from each device: the weight of the unweighted mean every DP mode uses
TRAIN_LOSS = "train-loss"  # not sent under DP
EPSILON = "epsilon"
NOISE_MULTIPLIER = "noise-multiplier"
LOCAL_EPSILON = "local-epsilon"
STEPS = "steps"  # local optimizer steps; not sent under DP (their number follows from the sample count)
CLIPPED_VALUES = "clipped-values"  # SecAgg+: values of the update beyond the quantization range, clipped
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"


class Decline(IntEnum):
    """Why a device answers a round with an error instead of an update (the error's code)."""

    BUDGET_EXHAUSTED = 4001  # the round would take its cumulative epsilon past the campaign's maximum
    NO_DATA = 4002  # no or too few usable labelled samples
    BAD_TASK = 4003  # a message that is not a valid task of this campaign
    THROTTLED = 4004  # the device is over its class's thermal throttle limit: optional work pauses


_DECLINE = re.compile(r"declined with code (\d+): ")


def decline_text(code: int, reason: str) -> str:
    """How a device that declines a SecAgg+ round words its error: that protocol has no decline reply,
    so the code travels in the text (read back by ``decline_code``)."""
    return f"declined with code {int(code)}: {reason}"


def decline_code(text: str) -> int:
    """The decline code in an error's text, 0 if it is not a decline (a crash, a lost device)."""
    match = _DECLINE.search(text)
    return int(match.group(1)) if match else 0
