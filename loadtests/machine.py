"""How busy the machine was before a measurement: on a small shared machine, other tenants' CPU
use changes every figure, so reports say what they were measured next to."""

from __future__ import annotations

import os
from dataclasses import dataclass

BUSY_WARNING = 0.15  # share of all cores already in use that makes figures pessimistic


@dataclass(frozen=True)
class MachineState:
    cores: int
    busy: float  # share of all cores in use during the probe, 0..1
    load_average: float

    @property
    def quiet(self) -> bool:
        return self.busy < BUSY_WARNING

    def describe(self) -> str:
        text = (
            f"{self.cores} cores, {self.busy:.0%} busy before the start "
            f"(1-minute load average {self.load_average:.2f})"
        )
        if not self.quiet:
            text += "; other processes were using the CPU, so these figures are pessimistic"
        return text


def probe(seconds: float = 1.0) -> MachineState:
    import psutil

    busy = psutil.cpu_percent(interval=seconds) / 100.0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return MachineState(cores=psutil.cpu_count() or 1, busy=busy, load_average=load)
