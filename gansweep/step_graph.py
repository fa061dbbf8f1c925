"""A population's step captured in one CUDA graph and replayed: one graph launch a step, where the eager step
launches hundreds of kernels from Python.

On CUDA a small GAN step is bound by launching its kernels, not by arithmetic: measured on an H200, one MLP `gan`
run trained at 14,465 images/s stepped eagerly and at 95,959 captured (113,906 past the warm-up and the capture), a
population of 64 at 316,590 and 644,498 (README, "Populations and training speed"). The graph reads its batch
indices from a tensor of its own, copied in before each replay, and draws noise, penalty interpolations and dropout
masks from the members' own generators, registered with it: a replay advances them as the eager step would, and the
batch order drawn from them between replays stays in step. So a replayed step computes what the eager one does: to
the bit for the MLP variants, and within float tolerance for the convolutional ones, whose cuDNN kernels round
differently inside a capture (tests/test_cuda.py, run on an H200). A graph keeps the step as it was captured, which
members it updates among them; when a member ends, the next step is captured again. The first steps after each
capture point are taken eagerly on a side stream, as CUDA graphs need (lazy initialisation, cuBLAS workspaces,
autograd's buffers). On the CPU, with `CAPTURE_ON_CUDA` off, or with a torch whose graphs cannot take a generator of
one's own, every step is eager.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gansweep.atomic import uninterrupted
from gansweep.population import Population

__all__ = ["StepGraph", "CAPTURE_ON_CUDA", "WARM_UP_STEPS", "captures"]

CAPTURE_ON_CUDA = True  # tests turn it off to hold the captured step to the eager one
WARM_UP_STEPS = 2  # eager steps, on a side stream, before each capture


def captures(device: torch.device) -> bool:
    """Whether the step is captured on `device`: CUDA, capture on, and a torch that registers generators with a
    graph (2.5 and later)."""
    return (device.type == "cuda" and CAPTURE_ON_CUDA
            and hasattr(torch.cuda.CUDAGraph, "register_generator_state"))


class StepGraph:
    """`population.step` on the batches `images[idx]` (and `labels[idx]`), captured where `capture` says."""

    def __init__(self, population: Population, images: Tensor, labels: Tensor | None,
                 rngs: Sequence[torch.Generator], dropout_rngs: Sequence[torch.Generator], capture: bool):
        self.population, self.images, self.labels = population, images, labels
        self.rngs, self.dropout_rngs = rngs, dropout_rngs  # the loop's lists: an ended member's are replaced
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.idx: Tensor | None = None  # the graph's input
        self.out: Tensor | None = None  # the graph's output
        self.members: tuple[int, ...] = ()  # those the graph updates
        self.warm = 0
        self.side = torch.cuda.Stream(device=population.device) if capture else None

    def _step(self, idx: Tensor) -> Tensor:
        return self.population.step(self.images[idx], None if self.labels is None else self.labels[idx],
                                    self.rngs, self.dropout_rngs)

    def __call__(self, idx: Tensor) -> Tensor:
        """One G step of every member on the batches `idx` (K, n_critic, B); the step metrics, (K, metrics)."""
        if not self.capture:
            return self._step(idx)
        members = tuple(self.population.open)
        if members != self.members:  # a member ended: the graph masks too few
            self.graph, self.idx, self.out, self.members, self.warm = None, None, None, members, 0
        if self.graph is None and self.warm < WARM_UP_STEPS:
            self.warm += 1
            current = torch.cuda.current_stream()
            self.side.wait_stream(current)
            try:
                with torch.cuda.stream(self.side):
                    return self._step(idx)
            finally:  # an interrupt too: what the hooks do next sees the step's writes
                current.wait_stream(self.side)
        if self.graph is None:
            self._capture(idx)
        else:
            self.idx.copy_(idx)
        self.graph.replay()
        return self.out

    def _capture(self, idx: Tensor) -> None:
        """Capture the step on a copy of `idx`; kept only once whole. An interrupt waits for the capture's end:
        one that arrived inside it would leave the stream capturing, and every later CUDA call refused."""
        static, graph = idx.clone(), torch.cuda.CUDAGraph()
        for generator in [*self.rngs, *self.dropout_rngs]:
            graph.register_generator_state(generator)
        with uninterrupted(), torch.cuda.graph(graph):
            out = self._step(static)
        self.idx, self.graph, self.out = static, graph, out
