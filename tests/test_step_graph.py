"""StepGraph's bookkeeping, on the CPU: which steps run eagerly, when the step is captured and replayed, what the
graph reads, and which generators each capture registers. torch.cuda's stream and graph calls are stood in for by
recorders, since CI has no CUDA device; tests/test_cuda.py checks real graphs against the eager step there."""

from __future__ import annotations

import contextlib

import pytest
import torch

from gansweep import step_graph


class Recorder:
    """What StepGraph asked of torch.cuda, in order."""

    def __init__(self):
        self.events: list[str] = []
        self.capturing = False
        self.graphs: list[Graph] = []


class Graph:
    def __init__(self, recorder: Recorder):
        self.recorder, self.registered = recorder, []
        recorder.graphs.append(self)

    def register_generator_state(self, generator: torch.Generator) -> None:
        self.registered.append(generator)

    def replay(self) -> None:
        self.recorder.events.append("replay")


class Stream:
    def __init__(self, recorder: Recorder, name: str):
        self.recorder, self.name = recorder, name

    def wait_stream(self, other: Stream) -> None:
        self.recorder.events.append(f"{self.name} waits for {other.name}")


class Members:
    """A population's surface as StepGraph sees it: its open members and its step."""

    def __init__(self, recorder: Recorder, k: int):
        self.recorder, self.open, self.device = recorder, list(range(k)), torch.device("cpu")
        self.batches: list[torch.Tensor] = []

    def step(self, real, labels, rngs, dropout_rngs) -> torch.Tensor:
        self.recorder.events.append("captured step" if self.recorder.capturing else "eager step")
        self.batches.append(real)
        return torch.zeros(len(self.open), 6)


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    recorder = Recorder()

    @contextlib.contextmanager
    def graph(g: Graph):
        recorder.capturing = True
        try:
            yield
        finally:
            recorder.capturing = False

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: Graph(recorder))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: Stream(recorder, "side"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream(recorder, "current"))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return recorder


def _batch(first: int) -> torch.Tensor:
    return torch.arange(first, first + 6).view(3, 1, 2)


def test_two_eager_steps_then_one_capture_replayed_and_captured_again_when_a_member_ends(recorder):
    members = Members(recorder, 3)
    rngs, dropout_rngs = [torch.Generator() for _ in range(3)], [torch.Generator() for _ in range(3)]
    images = torch.arange(100.0)
    graph = step_graph.StepGraph(members, images, None, rngs, dropout_rngs, capture=True)
    outs = [graph(_batch(10 * i)) for i in range(4)]
    warm = ["side waits for current", "eager step", "current waits for side"]
    assert recorder.events == warm * 2 + ["captured step", "replay", "replay"]
    assert outs[2] is outs[3] is graph.out  # the graph's output, rewritten by each replay
    assert torch.equal(graph.idx, _batch(30))  # the graph's input holds the latest batch's indices
    assert [b.tolist() for b in members.batches] == [images[_batch(0)].tolist(), images[_batch(10)].tolist(),
                                                     images[_batch(20)].tolist()]
    (first,) = recorder.graphs
    assert first.registered == [*rngs, *dropout_rngs]

    recorder.events.clear()
    members.open = [0, 2]
    rngs[1], dropout_rngs[1] = torch.Generator(), torch.Generator()  # as the trainer replaces an ended member's
    for i in range(4, 8):
        graph(_batch(10 * i))
    assert recorder.events == warm * 2 + ["captured step", "replay", "replay"]
    second = recorder.graphs[1]
    assert second.registered == [*rngs, *dropout_rngs] and graph.graph is second


def test_an_interrupt_in_a_warm_up_step_still_joins_the_streams(recorder):
    members = Members(recorder, 1)

    def interrupted(*args):
        raise KeyboardInterrupt

    members.step = interrupted
    graph = step_graph.StepGraph(members, torch.arange(100.0), None, [torch.Generator()], [torch.Generator()],
                                 capture=True)
    with pytest.raises(KeyboardInterrupt):
        graph(_batch(0)[:1])
    assert recorder.events == ["side waits for current", "current waits for side"]


def test_an_interrupt_during_a_capture_waits_for_its_end_and_keeps_no_half_made_graph(recorder):
    """SIGINT arrives while the step is being captured: it is acted on once the capture has ended, and the
    StepGraph holds no graph, so a later call would capture afresh."""
    import os
    import signal

    members = Members(recorder, 1)
    step = members.step

    def signalled(*args):
        if recorder.capturing:
            os.kill(os.getpid(), signal.SIGINT)
            recorder.events.append("after the signal")
        return step(*args)

    members.step = signalled
    graph = step_graph.StepGraph(members, torch.arange(100.0), None, [torch.Generator()], [torch.Generator()],
                                 capture=True)
    graph(_batch(0)[:1]), graph(_batch(0)[:1])
    with pytest.raises(KeyboardInterrupt):
        graph(_batch(0)[:1])
    assert recorder.events[-2:] == ["after the signal", "captured step"] and not recorder.capturing
    assert graph.graph is None and graph.out is None


def test_on_the_cpu_every_step_is_eager_and_nothing_is_captured(recorder):
    members = Members(recorder, 2)
    graph = step_graph.StepGraph(members, torch.arange(100.0), None, [torch.Generator()] * 2,
                                 [torch.Generator()] * 2, capture=step_graph.captures(torch.device("cpu")))
    for i in range(4):
        graph(_batch(0)[:2])
    assert recorder.events == ["eager step"] * 4 and recorder.graphs == []
