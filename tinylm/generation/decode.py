"""Generation's one-token step, compiled ahead of time: torch.export, then AOTInductor.

A new character of nano is little arithmetic on a CPU, and torch.compile's machinery around
each call (Dynamo's frame and guards, AOTAutograd's wrappers) costs about as much again, on
every call. AOTInductor compiles the same graph into a shared library whose call is one C++
function, so a compiled step is cheaper than torch.compile's
(docs/performance.md#compiling-the-decode-step).

The library holds no weights of its own: it reads the model's parameters where they are
(``load_constants(user_managed=True)``), so it sees the model as it is now, and every model of
one shape shares it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinylm.errors import TinyLMError
from tinylm.generation.cache import KVCache
from tinylm.generation.sampling import next_token
from tinylm.model import TransformerLM

# One compiled library per shape and sampling setting, for as long as the process lives, and
# the step whose model's tensors each library reads now.
_LIBRARIES: dict[tuple, Any] = {}
_LINKED: dict[tuple, Callable] = {}


class DecodeCompileError(TinyLMError):
    """The decode step could not be compiled (say, a C++ compiler that does not work); the
    message gives torch's reason in one line. Generation can go on uncompiled."""


class OneTokenStep(nn.Module):
    """``next_token`` for one new token (B, 1), its noise and its cache, given as tensors only,
    as torch.export takes them."""

    def __init__(self, model: TransformerLM, temperature: float, top_k: int | None,
                 top_p: float | None) -> None:
        super().__init__()
        self.model, self.temperature, self.top_k, self.top_p = model, temperature, top_k, top_p
        # On a CPU, inductor fuses the written-out attention of one query with the rest into one
        # loop nest, cheaper than a call into the SDPA kernel; on a GPU SDPA stays.
        self.explicit = model.token_embedding.weight.device.type == "cpu"

    def forward(self, token: Tensor, noise: Tensor, positions: Tensor, visible: Tensor,
                keys: list[Tensor], values: list[Tensor]) -> Tensor:
        cache = KVCache.holding(keys, values, positions, visible)
        noise_or_greedy = noise if self.temperature != 0 else None
        return next_token(self.model, token, cache, noise_or_greedy, self.temperature, self.top_k,
                          self.top_p, explicit=self.explicit)


def compiled_step(model: TransformerLM, cache: KVCache, temperature: float, top_k: int | None,
                  top_p: float | None) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``next_token`` compiled for one new token in ``cache`` at these sampling settings:
    ``step(token (B, 1), noise (B, V) or None) -> next token (B, 1)``, after ``model.place``.

    The first call for a shape compiles (seconds: docs/sampling.md says when that pays back);
    later ones, here or for another model of that shape, link the library to this model's
    tensors, which costs well under a millisecond.
    """
    weight = model.token_embedding.weight
    batch = cache.layers[0].keys.size(0)
    key = (repr(model.config), model.vocab_size, batch, weight.dtype, str(weight.device),
           temperature, top_k, top_p)
    if key not in _LIBRARIES:
        _LIBRARIES[key] = _compile(OneTokenStep(model, temperature, top_k, top_p), cache)
    library = _LIBRARIES[key]
    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    tensors = {f"model.{name}": tensor.detach() for name, tensor in named}
    constants = {name: tensors[name] for name in library.get_constant_fqns()}  # kept alive by step
    keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    greedy_noise = torch.zeros(batch, model.vocab_size, device=weight.device)  # unread at temperature 0

    def link() -> None:
        # Pointers, not copies: the library reads the parameters as they are at each call.
        library.load_constants(constants, check_full_update=True, user_managed=True)
        _LINKED[key] = step

    def step(token: Tensor, noise: Tensor | None) -> Tensor:
        if _LINKED.get(key) is not step:  # another generation of this shape has linked it since
            link()
        # The library reads its inputs with the example's strides, unchecked: give it those.
        noise = greedy_noise if noise is None else noise.contiguous()
        return library(token.contiguous(), noise, cache.positions, cache.visible, keys, values)

    link()
    return step


def _compile(step: OneTokenStep, cache: KVCache) -> Any:
    """Export ``step`` on example tensors shaped like ``cache``'s, compile it with AOTInductor
    and load the library."""
    model = step.model
    weight = model.token_embedding.weight
    device, batch = weight.device, cache.layers[0].keys.size(0)
    options: dict[str, Any] = {"aot_inductor.package_constants_in_so": False}
    if device.type == "cpu":  # inductor's own loops for one-row matrix products: no matmul calls
        options["post_grad_fusion_options"] = {"decompose_mm_pass": {}}
    with (warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(),
          tempfile.TemporaryDirectory(prefix="tinylm-decode-") as directory):
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch's own
        example = (  # ordinary tensors, not inference ones: export traces with them
            torch.zeros(batch, 1, dtype=torch.long, device=device),  # token
            torch.ones(batch, model.vocab_size, device=device),  # noise
            torch.zeros(1, dtype=torch.long, device=device),  # positions
            torch.ones(1, model.config.block_size, dtype=torch.bool, device=device),  # visible
            [torch.zeros_like(layer.keys) for layer in cache.layers],
            [torch.zeros_like(layer.values) for layer in cache.layers],
        )
        try:
            program = torch.export.export(step, example, strict=False)
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=str(Path(directory) / "step.pt2"), inductor_configs=options)
            return torch._inductor.aoti_load_package(package)
        except Exception as error:  # torch's reasons are many and deep; its first line says which
            lines = str(error).strip().splitlines()
            reason = lines[0] if lines else type(error).__name__
            raise DecodeCompileError(f"compiling the decode step failed: {reason}") from error
