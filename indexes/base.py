"""The retrieval contract that every MIPS backend implements.

Shapes: B sequences (the batch), n keys added per call, N keys stored per sequence, d key dimension,
k results per query.

Every sequence of a batch has its own memory: ``add(keys)`` appends ``keys[b]`` to sequence b's memory
(slot ids are 0, 1, 2, ... per sequence, in insertion order) and ``search(queries, k)`` answers
``queries[b]`` from sequence b's slots only. Results are best first, padded with ``-inf`` scores and
``-1`` ids when a sequence holds fewer than k slots. ``state_dict`` / ``load_state_dict`` checkpoint an
index so that a resumed run continues exactly (see ``MIPSIndex``).

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("exact")
    >>> index.reset(batch_size=2, dim=4)
    >>> index.add(torch.eye(4).expand(2, 4, 4))     # (B, n, d)
    >>> scores, ids = index.search(torch.tensor([[0., 0., 1., 0.], [1., 0., 0., 0.]]), k=1)
    >>> ids.tolist()
    [[2], [0]]
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch


@dataclass(frozen=True)
class Param:
    """One factory-string parameter of a backend."""

    type: Callable[[str], Any]
    default: Any
    doc: str
    search_time: bool = False  # may be changed with ``set_params`` without rebuilding the index
    check: Callable[[Any], bool] = lambda value: True
    requirement: str = ""  # what ``check`` demands, for the error message


STATE_FORMAT = 1  # version of ``state_dict``'s layout; ``load_state_dict`` refuses any other


def positive(value: Any) -> bool:
    return value > 0


def non_negative(value: Any) -> bool:
    return value >= 0


class MIPSIndex(ABC):
    """Per-sequence maximum-inner-product search over keys that arrive over time.

    Checkpoints (``state_dict`` / ``load_state_dict``, as in torch): a model that checkpoints its slot memory
    saves its index beside it, and a resumed run continues bit-exactly: the restored index answers every
    search as the saved one would have (scores and ids, ``torch.equal``), and stays so through later adds,
    trainings, rebuilds and rehashes. Rebuilding from the keys would not do that in general (IVF trains
    on a prefix fixed at the time, HNSW draws a random level per insertion, dedup's groups depend on the
    arrival order), so every backend saves its actual structures:

    * all backends: the factory string (``load_state_dict`` refuses a state from another backend or other
      parameters, search-time ones included; ``make_index(state["factory"])`` makes a matching index),
      batch size, dim, key count, device and dtype, the ``trust_inputs`` flag, and the stored keys (every
      backend re-scores exactly from them) with their buffer's capacity;
    * ``faiss:*`` / ``faiss-gpu:*``: each sequence's native index as ``faiss.serialize_index`` bytes (None
      while it is answered exactly), the keys already moved into it (the rest stay pending, as they were);
      IVF: the prefix each quantizer was trained on and the trainings; HNSW: each sequence's norm cap and
      maximum norm (``mips=l2``) and the rebuilds. FAISS does not serialize HNSW's level generator; loading
      brings it to where the saved one stood (one draw per key held). ``faiss-gpu`` copies its indexes to
      the host to save them and back to the GPU to load (written to FAISS's API, not tested here);
    * ``dedup``: the groups (representatives, norms, members, counts) and each slot's group;
    * ``alsh`` / ``simple-lsh``: the drawn hash parameters (not the seed's generator), the bucket tables
      with their unsorted tail, norm caps, code length, and the search counters of ``stats()``.

    The state holds only tensors (FAISS bytes as uint8 tensors), ints, floats, strings, bools, None and
    lists/dicts of those: ``torch.save`` stores it and ``torch.load(..., weights_only=True)`` reads it.
    Tensors keep their device; the index comes back on the device it was saved from. Size (``torch.save``,
    10⁵ random keys of d=64 in float32, one sequence, after a flush; measured): ``exact`` 256 bytes per key
    (the keys), ``faiss:Flat`` 512 (the keys twice: the re-ranking store and the native index),
    ``faiss:IVF256`` 521 (the same plus an 8-byte id per key, and 64 KiB of centroids), ``faiss:HNSW32``
    784 (plus the graph's links), ``simple-lsh`` (8 tables) 353, ``alsh`` (16 tables) 449 (12 bytes per key
    and table), ``dedup`` 264 + 336·R/N for R groups (600 when no key repeats). Saving or loading one took
    0.02-0.33 s on this 2-core CPU.
    """

    name: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    exact: ClassVar[bool] = False  # True: returns the true top-k, padded only when fewer than k keys exist

    def __init__(self, **values: Any) -> None:
        self._values: dict[str, Any] = {}
        for key, spec in self.params.items():
            self._set_param(key, values.pop(key, spec.default))
        if values:
            raise ValueError(self._unknown_message(sorted(values)))
        self._batch_size: int | None = None
        self._dim: int | None = None
        self._count = 0
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self.check_finite = True

    def trust_inputs(self) -> "MIPSIndex":
        """Skip the NaN/Inf check of every ``add`` and ``search`` (the shape, dtype and device checks stay).

        The check reads every value and, on a GPU, waits for it (a host sync per call); a caller that
        guarantees finite keys and queries, or checks them once for many calls, turns it off until the next
        ``reset`` (which forgets the keys, and the trust with them). Returns self.
        """
        self.check_finite = False
        return self

    # ---- availability -------------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        return None

    # ---- parameters ---------------------------------------------------------------------------
    def _unknown_message(self, names: list[str]) -> str:
        valid = ", ".join(self.params) or "none"
        return f"unknown parameter(s) {', '.join(names)} for index '{self.name}'; valid parameters: {valid}"

    def _set_param(self, key: str, value: Any) -> None:
        spec = self.params[key]
        if isinstance(value, str):
            try:
                value = spec.type(value)
            except ValueError:
                raise ValueError(f"index '{self.name}': {key}={value!r} is not a valid {spec.type.__name__}") from None
        if not spec.check(value):
            raise ValueError(f"index '{self.name}': {key}={value!r} is invalid; {key} {spec.requirement}")
        self._values[key] = value

    def get_param(self, key: str) -> Any:
        return self._values[key]

    def search_params(self) -> dict[str, Any]:
        """The current values of the search-time parameters (those ``set_params`` may change)."""
        return {key: self._values[key] for key, spec in self.params.items() if spec.search_time}

    def set_params(self, **values: Any) -> None:
        """Change search-time parameters (e.g. ``efSearch``, ``nprobe``) without rebuilding."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise ValueError(self._unknown_message(unknown))
        fixed = sorted(k for k in values if not self.params[k].search_time)
        if fixed:
            allowed = ", ".join(k for k, p in self.params.items() if p.search_time) or "none"
            raise ValueError(
                f"index '{self.name}': {', '.join(fixed)} is fixed when the index is built; "
                f"search-time parameters: {allowed}"
            )
        for key, value in values.items():
            self._set_param(key, value)
        self._on_params_changed()

    def _on_params_changed(self) -> None:
        """Hook for backends that push search-time parameters into a native index."""

    def factory_args(self) -> list[str]:
        """The comma-separated arguments of the factory string (backends may prepend a positional)."""
        return [f"{key}={_format(self._values[key])}" for key in self.params]

    def __str__(self) -> str:
        args = self.factory_args()
        return self.name + (":" + ",".join(args) if args else "")

    def __repr__(self) -> str:
        return f"make_index({str(self)!r})"

    # ---- state --------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        self._require_reset()
        return self._batch_size  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        self._require_reset()
        return self._dim  # type: ignore[return-value]

    @property
    def ntotal(self) -> int:
        """Number of keys each sequence holds."""
        return self._count

    def stats(self) -> dict[str, float]:
        """Backend-specific counters (e.g. LSH candidates per query) for benchmarks and logs."""
        return {}

    def nbytes(self) -> int:
        """Bytes held by the index structures (approximate for native backends)."""
        return 0

    def flush(self) -> None:
        """Finish deferred work now (backends that build lazily do it at the next search otherwise).

        Benchmarks call it to time the build apart from the search; searches call it themselves.
        """
        self._require_reset()
        if self._count:
            with torch.no_grad():
                self._flush()

    def _flush(self) -> None:
        """Hook: lazy backends move buffered keys into their structures here."""

    # ---- the contract -------------------------------------------------------------------------
    def reset(self, batch_size: int, dim: int) -> None:
        """Forget every key; prepare ``batch_size`` empty sequences of ``dim``-dimensional keys."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        reason = self.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"index '{self.name}' is unavailable: {reason}")
        self._batch_size, self._dim, self._count = batch_size, dim, 0
        self._device = self._dtype = None
        self.check_finite = True
        self._reset()

    def add(self, keys: torch.Tensor) -> None:
        """Append ``keys[b]`` (shape (B, n, d)) to sequence b's memory; ids continue from ``ntotal``."""
        self._require_reset()
        if not isinstance(keys, torch.Tensor) or keys.dim() != 3:
            raise ValueError(f"keys must be a tensor of shape (B, n, d), got {_describe(keys)}")
        if keys.shape[0] != self._batch_size or keys.shape[2] != self._dim:
            raise ValueError(
                f"keys must have shape ({self._batch_size}, n, {self._dim}), got {tuple(keys.shape)}"
            )
        self._check_tensor("keys", keys)
        if keys.shape[1] == 0:
            return
        keys = keys.detach()
        self._add(keys)
        self._count += keys.shape[1]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k keys by inner product for each sequence's query.

        queries: (B, d). Returns ``scores`` (B, k) in the queries' dtype and device (which equal the
        keys') and ``ids`` (B, k) int64 on that device, best first; ``-inf`` / ``-1`` pad the rows of
        sequences that hold fewer than k keys (and, for approximate backends, rows for which fewer than
        k candidates were found).
        """
        self._require_reset()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
            raise ValueError(f"queries must be a tensor of shape (B, d), got {_describe(queries)}")
        if tuple(queries.shape) != (self._batch_size, self._dim):
            raise ValueError(f"queries must have shape ({self._batch_size}, {self._dim}), got {tuple(queries.shape)}")
        self._check_tensor("queries", queries)
        queries = queries.detach()
        if self._count == 0:
            return _empty_result(queries, k)
        with torch.no_grad():
            return self._search(queries, k)

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot from which ``load_state_dict`` continues exactly where this index stands.

        Tensors are compact copies (not views of the growing buffers), so later adds change nothing in it.
        Deferred work (keys not yet moved into native structures) stays deferred, as it is here. The class
        docstring says what the state holds and what it costs.
        """
        state: dict[str, Any] = {"format": STATE_FORMAT, "factory": str(self), "batch_size": self._batch_size}
        if self._batch_size is None:
            return state
        state.update(
            dim=self._dim,
            count=self._count,
            device=None if self._device is None else str(self._device),
            dtype=None if self._dtype is None else str(self._dtype).removeprefix("torch."),
            check_finite=self.check_finite,
        )
        if self._count:  # without keys a backend holds nothing beyond what ``reset`` makes
            with torch.no_grad():
                state["backend"] = self._state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the index that ``state`` (from ``state_dict``) was saved from: its keys, its native
        structures, its deferred work, counters and ``trust_inputs`` flag, on the device it was saved from.

        The index must have been made from the same factory string (search-time parameters included: they
        change results); ``make_index(state["factory"])`` makes one. Raises ValueError otherwise.
        """
        if not isinstance(state, dict) or "factory" not in state:
            raise ValueError(f"index '{self.name}': expected a dict from MIPSIndex.state_dict(), "
                             f"got {_describe(state)}")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"index state has format {state.get('format')!r}; "
                             f"this version reads format {STATE_FORMAT}")
        if state["factory"] != str(self):
            raise ValueError(f"index state was saved by {state['factory']!r}, this index is {str(self)!r}; "
                             f"load it into make_index({state['factory']!r})")
        if state["batch_size"] is None:
            self._batch_size = self._dim = self._device = self._dtype = None
            self._count, self.check_finite = 0, True
            return
        self.reset(state["batch_size"], state["dim"])  # validates, checks availability, empties the backend
        self.check_finite = state["check_finite"]
        if state["device"] is not None:
            self._device, self._dtype = torch.device(state["device"]), _parse_dtype(state["dtype"])
        if state["count"]:
            with torch.no_grad():
                self._load_state_dict(state["backend"])
            self._count = state["count"]

    # ---- what backends implement --------------------------------------------------------------
    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _state_dict(self) -> dict[str, Any]:
        """The backend's state (at least one key stored): only tensors, ints, floats, strings, None and
        lists/dicts of those, tensors compact (``saved_prefix``) so that ``torch.save`` stores no more."""

    @abstractmethod
    def _load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``_state_dict()``'s output into a just-reset index whose ``_device`` and ``_dtype`` are
        set; tensors go to ``self._device``."""

    @abstractmethod
    def _add(self, keys: torch.Tensor) -> None:
        """keys: (B, n, d), detached, validated, n >= 1."""

    @abstractmethod
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries: (B, d), detached, validated, at least one key stored."""

    # ---- helpers ------------------------------------------------------------------------------
    def _require_reset(self) -> None:
        if self._batch_size is None:
            raise RuntimeError(f"index '{self.name}' is used before reset(batch_size, dim)")

    def _check_tensor(self, what: str, tensor: torch.Tensor) -> None:
        if not tensor.is_floating_point():
            raise ValueError(f"{what} must be floating point, got {tensor.dtype}")
        if self._device is None:
            self._device, self._dtype = tensor.device, tensor.dtype
        elif tensor.device != self._device or tensor.dtype != self._dtype:
            raise ValueError(
                f"{what} are {tensor.dtype} on {tensor.device}, but this index holds {self._dtype} on "
                f"{self._device}; convert them explicitly"
            )
        if self.check_finite and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what} contain NaN or Inf")


def pad_results(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, k') results with -inf / -1 up to (B, k)."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, ids
    pad_s = scores.new_full((scores.shape[0], missing), -math.inf)
    pad_i = ids.new_full((ids.shape[0], missing), -1)
    return torch.cat([scores, pad_s], dim=1), torch.cat([ids, pad_i], dim=1)


NORM_GRID = 2.0 ** 0.25
# A largest norm this close above a grid point counts as on it: unit keys (the cosine scorer's) have norms of
# 1 give or take rounding, and without it the cap would be 1 or 2^(1/4) by the last bit of the arithmetic
# that made them. The transforms clamp the extra coordinate sqrt(M² − ‖x‖²) at 0, so a key this little above
# M changes nothing else.
NORM_SLACK = 1e-9


def norm_cap(max_norm: float) -> float:
    """The smallest point of the grid ``NORM_GRID ** j`` (j integer) that is >= ``max_norm``.

    Transforms that divide by a maximum norm M (ALSH, Simple-LSH, the MIPS->L2 reduction) use this
    cap instead of the exact maximum: M then depends only on the largest norm seen, not on how keys
    were batched, it changes (forcing a rehash or rebuild) only when the largest norm crosses a grid
    point, i.e. at most log(max/min)/log(NORM_GRID) times, and it overestimates the maximum by less
    than a factor NORM_GRID (~1.19). A norm within a relative ``NORM_SLACK`` above a grid point gets that
    point.
    """
    if not max_norm > 0.0:
        return 1.0
    target = max_norm / (1.0 + NORM_SLACK)
    j = math.ceil(math.log(target) / math.log(NORM_GRID))
    cap = NORM_GRID**j
    return cap if cap >= target else NORM_GRID ** (j + 1)


def saved_prefix(buffer: torch.Tensor, used: int, dim: int = 1) -> torch.Tensor:
    """A compact copy of the first ``used`` entries of ``buffer`` along ``dim``, for a state dict.

    A copy, because the buffers are written in place by later adds; compact, because ``torch.save`` of a
    view stores the whole storage behind it (the spare capacity of a growable buffer included).
    """
    return buffer.narrow(dim, 0, used).clone(memory_format=torch.contiguous_format)


def restored_buffer(prefix: torch.Tensor, capacity: int, dim: int = 1, fill: float = 0.0,
                    device: torch.device | None = None) -> torch.Tensor:
    """The inverse of ``saved_prefix``: a buffer of ``capacity`` entries along ``dim`` on ``device``, starting
    with ``prefix``, the rest ``fill``.

    The capacity is restored, not only the contents, so that the buffer then grows at the same adds and keeps
    the same strides as the original's (a batched product over a strided view may round differently).
    """
    shape = list(prefix.shape)
    shape[dim] = capacity
    buffer = torch.full(shape, fill, dtype=prefix.dtype, device=device if device is not None else prefix.device)
    buffer.narrow(dim, 0, prefix.shape[dim]).copy_(prefix)
    return buffer


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if re.fullmatch(r"[a-z0-9]+", name or "") else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"index state names an unknown dtype {name!r}")
    return dtype


def _empty_result(queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    B = queries.shape[0]
    scores = queries.new_full((B, k), -math.inf)
    ids = torch.full((B, k), -1, dtype=torch.long, device=queries.device)
    return scores, ids


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
