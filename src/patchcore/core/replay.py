"""CUDA-graph replay of the network: one graph per input shape, so a batch costs one launch, not one per layer."""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable

import torch

TensorFunction = Callable[[torch.Tensor], torch.Tensor]


class GraphReplay:
    """`function(batch)` on CUDA batches, replayed from a CUDA graph captured for the batch's shape.

    At batch 1 the network's ~150 kernels take less GPU time than Python and the driver take to launch
    them one by one; a captured graph launches them all at once. A shape is captured on its
    `warm_calls + 1`-th call (the eager calls before let cuDNN and cuBLAS settle their workspaces),
    and at most `max_graphs` shapes are kept, the least recently used dropped first; all share one
    memory pool, so memory follows the largest shape, not their sum. Inputs on other devices, and every
    call after a capture fails (an op that cannot be captured), run `function` as it is.
    """

    def __init__(self, function: TensorFunction, max_graphs: int = 8, warm_calls: int = 2) -> None:
        self.function = function
        self.max_graphs = max_graphs
        self.warm_calls = warm_calls
        self._graphs: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = OrderedDict()
        self._calls: Counter = Counter()
        self._pool = None
        self._failed = False
        # One set of static buffers per shape: two threads predicting at once must not interleave copy and replay.
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.device.type != "cuda" or self._failed:
            return self.function(batch)
        key = (tuple(batch.shape), batch.stride(), batch.dtype, batch.device)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                self._calls[key] += 1
                if self._calls[key] <= self.warm_calls:
                    return self.function(batch)
                entry = self._capture(key, batch)
                if entry is None:
                    return self.function(batch)
            self._graphs.move_to_end(key)
            static_input, static_output, graph = entry
            static_input.copy_(batch)
            graph.replay()
            # The next replay overwrites the static output: callers get their own copy.
            return static_output.clone()

    def _capture(self, key: tuple, batch: torch.Tensor):
        static_input = torch.empty_strided(batch.shape, batch.stride(), dtype=batch.dtype, device=batch.device)
        static_input.copy_(batch)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                static_output = self.function(static_input)
        except RuntimeError:
            self._failed = True
            return None
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        self._graphs[key] = (static_input, static_output, graph)
        del self._calls[key]
        return self._graphs[key]
