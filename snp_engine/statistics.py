"""Streaming activation statistics: the sufficient statistics of a unit group.

For a group of ``n`` units we accumulate, over every sample ``x`` (one image, or one
(image, spatial position) pair for conv features, or one token), about a fixed shift vector ``s``:

    count = N,   shifted_total = Σ (x − s),   shifted_outer = Σ (x − s)(x − s)ᵀ

so memory is O(n²) per group and never O(samples). Mean and covariance follow exactly as
μ = s + Σ(x − s)/N and C = Σ(x − s)(x − s)ᵀ/N − (μ − s)(μ − s)ᵀ.

The shift is fixed by the first batch: its mean (a float32 value; see ``Moments._first_shift`` for
columns with a point mass, such as ReLU zeros). With samples centred that closely, each batch's
products can be taken in the activations' own precision without the cancellation that
Σ x xᵀ/N − μ μᵀ suffers when the mean is large against the spread: float32 (float16/bfloat16 are
widened to float32), float64 for float64 input and for batches with fewer than 2n rows (see
``Moments.update``). Only the running sums are float64. Float32 products carry relative errors of
about 1e-7 (of the largest variance, for eigenvalues), where float64 ones were exact to ~1e-15.

Statistics about different shifts convert into each other exactly (in float64), so those of
several batches, folds or processes still merge by adding them (``merge`` / ``all_reduce``).
What does not carry over is the rounding of the float32 products, which depends on the shift:
processes that each took their own first batch's mean would sum the same image's products rounded
differently (~1e-7 relative). Inside :func:`shifts_of_process_zero` every process takes process 0's
first shift instead (one broadcast per statistic), so an image's products are the very ones one
process reading all images computes when the batches are alike (one image per batch).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from snp_engine.errors import AnalysisError


def to_samples(x: torch.Tensor, layout: str, channels: int, start: int = 0, width: int = 0) -> torch.Tensor:
    """Reshape a consumer's input into a (samples, units) matrix.

    ``layout`` is ``"conv"`` (B, C, H, W): every (image, position) pair is a sample;
    ``"linear"`` (B, C); ``"tokens"`` (B, ..., C): every token is a sample;
    ``"flatten"`` (B, C·S): a flattened C-channel map whose S positions are samples.
    With ``width`` > 0 the input holds ``width`` channels (a concatenation) and the units are
    channels ``start`` … ``start + channels − 1`` of them.
    """
    if width and layout == "conv":
        x = x[:, start : start + channels]
    elif width and layout in ("linear", "tokens"):
        x = x[..., start : start + channels]
    elif width and layout == "flatten":
        x = x.reshape(x.shape[0], width, -1)[:, start : start + channels]
    if layout == "conv":
        return x.transpose(0, 1).reshape(channels, -1).T
    if layout == "linear" or layout == "tokens":
        return x.reshape(-1, channels)
    if layout == "flatten":
        batch = x.shape[0]
        return x.reshape(batch, channels, -1).transpose(1, 2).reshape(-1, channels)
    raise ValueError(f"unknown layout {layout!r}")


def _reshifted(
    count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ(x − b) and Σ(x − b)(x − b)ᵀ from Σ(x − a) (``total``), Σ(x − a)(x − a)ᵀ (``outer``) and
    ``delta`` = a − b, in float64: x − b = (x − a) + delta."""
    cross = torch.outer(total, delta)
    return total + count * delta, outer + cross + cross.T + count * torch.outer(delta, delta)


def _round_to_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to ``bits`` significant bits."""
    mantissa, exponent = torch.frexp(x)
    return torch.ldexp(torch.round(mantissa * 2.0**bits) / 2.0**bits, exponent)


# a batch with fewer rows than this many times the units is multiplied in float64 (see update)
FLOAT64_ROWS_PER_UNIT = 2
# float32 products of a batch whose Σ‖x − s‖² reaches this are redone in float64 (overflow margin)
_FLOAT32_PRODUCTS_LIMIT = 1e36


# the torch.distributed group whose process 0 sets every fresh statistic's shift (see shifts_of_process_zero)
_SHIFTS_FROM: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("snp_shifts_from", default=None)


@contextlib.contextmanager
def shifts_of_process_zero(group=None) -> Iterator[None]:
    """Within the block, the first update of each :class:`Moments` takes the shift process 0 of the
    ``torch.distributed`` ``group`` chose from its first batch (a broadcast) instead of its own.

    The float32 products of a batch, (x − s)ᵀ(x − s), round differently about a different s; with
    the shift of process 0's first batch, which is image 0 of the whole set when batches hold one
    image, every process computes each image's products bit for bit as one process reading all the
    images, and the float64 sums differ only in the order they are added. Every process must update
    the same statistics in the same order for the first time (as one pass of the same network over
    every process's shard does): each first update is a collective."""
    token = _SHIFTS_FROM.set((group,))
    try:
        yield
    finally:
        _SHIFTS_FROM.reset(token)


def _shared_shift(shift: torch.Tensor) -> torch.Tensor:
    """``shift`` of process 0 on every process while :func:`shifts_of_process_zero` is active."""
    shared = _SHIFTS_FROM.get()
    if shared is None:
        return shift
    import torch.distributed as dist

    dist.broadcast(shift, src=0, group=shared[0])
    return shift


def _compute_dtype(dtype: torch.dtype, rows: int, units: int) -> torch.dtype:
    """The precision of a batch's products: float64 for float64 input and for batches with fewer
    than ``FLOAT64_ROWS_PER_UNIT`` · units rows, float32 otherwise."""
    if dtype == torch.float64 or rows < FLOAT64_ROWS_PER_UNIT * units:
        return torch.float64
    return torch.float32


@dataclass(eq=False)
class Moments:
    """Running count and the shifted sums Σ(x − s), Σ(x − s)(x − s)ᵀ of ``units``-dimensional samples
    (all float64), about the fixed shift ``s``.

    ``total`` (Σ x) and ``outer`` (Σ x xᵀ) give the plain sums, computed from the shifted ones."""

    count: torch.Tensor
    shifted_total: torch.Tensor
    shifted_outer: torch.Tensor
    shift: torch.Tensor
    # whether the shift is fixed: it is chosen by the first update that adds samples
    _fixed: bool = field(init=False, repr=False, default=False)
    # the shift in each compute dtype, and whether it equals ``shift`` exactly
    _shifts: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._fixed = bool(self.count > 0)

    @classmethod
    def zeros(cls, units: int, device: torch.device | str = "cpu") -> Moments:
        f64 = torch.float64
        return cls(
            torch.zeros((), dtype=f64, device=device),
            torch.zeros(units, dtype=f64, device=device),
            torch.zeros(units, units, dtype=f64, device=device),
            torch.zeros(units, dtype=f64, device=device),
        )

    @property
    def units(self) -> int:
        return self.shifted_total.shape[0]

    @property
    def samples(self) -> int:
        return int(self.count.item())

    @property
    def total(self) -> torch.Tensor:
        """Σ x (a new tensor; float64)."""
        return self.shifted_total + self.count * self.shift

    @property
    def outer(self) -> torch.Tensor:
        """Σ x xᵀ (a new tensor; float64)."""
        return _reshifted(self.count, self.shifted_total, self.shifted_outer, self.shift)[1]

    def update(self, samples: torch.Tensor, name: str = "") -> None:
        """Add a (samples, units) batch. Non-finite activations are an error that names the layer.

        The batch's products are float32 (float16/bfloat16 are widened) unless it is float64 or has
        fewer than 2n rows. The n×n product of such a short batch is singular or badly conditioned,
        and float32 rounding would fill its (near) null space with noise of either sign of about
        1e-7 · λ_max, enough to make the covariance of few samples indefinite beyond the orderings'
        ridge; in float64 those directions stay at round-off. Short batches (a linear layer's rows
        for hundreds of units, the last stages of a CNN at small inputs) keep the float64 cost."""
        x = samples.detach().to(device=self.count.device)
        rows = x.shape[0]
        if rows == 0:
            return
        dtype = _compute_dtype(x.dtype, rows, self.units)
        fresh = not self._fixed
        if fresh:
            shift64 = _shared_shift(self._first_shift(x))
            shift = shift64.to(dtype)
            exact = bool(torch.equal(shift.double(), shift64))
        else:
            shift64 = self.shift
            shift, exact = self._shift_as(dtype)
        centred = x - shift  # in ``dtype``: type promotion widens half-precision input (and float32 for float64)
        total = centred.sum(0)
        outer = centred.T @ centred
        # Σ‖x − s‖² (the trace) is NaN or Inf if any activation is, and bounds every entry of both
        # sums: one number to check instead of every element
        size = outer.diagonal().sum()
        if not bool(size < (_FLOAT32_PRODUCTS_LIMIT if dtype == torch.float32 else torch.inf)):
            if not bool(torch.isfinite(x).all()):
                where = f" at the input of {name}" if name else ""
                raise AnalysisError(f"non-finite activations (NaN or Inf){where}; check the model and the data")
            if dtype != torch.float64:  # finite activations whose float32 products may overflow: in float64
                centred = x - shift64
                total, outer, exact = centred.sum(0), centred.T @ centred, True
        if not exact:  # products about the compute-precision shift: convert them to ``shift``
            total, outer = _reshifted(
                self.count.new_tensor(rows), total.double(), outer.double(), shift.double() - shift64
            )
        if fresh:
            self.shift.copy_(shift64)
            self._fixed = True
            self._shifts.clear()
        self.count += rows
        self.shifted_total += total
        self.shifted_outer += outer

    def fix_shift(self, samples: torch.Tensor) -> torch.Tensor:
        """Fix the shift from ``samples`` as a first update would (inside
        :func:`shifts_of_process_zero`: process 0's), without adding them; returns it. Several
        statistics given the same shift (the folds of one pass) add up without any conversion."""
        if self._fixed:
            raise ValueError("the shift of statistics that hold samples is fixed already")
        shift = _shared_shift(self._first_shift(samples.detach().to(device=self.count.device)))
        self.start_from(shift)
        return shift

    def start_from(self, shift: torch.Tensor) -> None:
        """Take ``shift`` (float64 holding float32 values, e.g. another statistic's) before any update."""
        if self._fixed:
            raise ValueError("the shift of statistics that hold samples is fixed already")
        self.shift.copy_(shift)
        self._fixed = True
        self._shifts.clear()

    @staticmethod
    def _first_shift(x: torch.Tensor) -> torch.Tensor:
        """The shift the first batch sets (float64 holding float32 values, so that float32 batches
        subtract it exactly; 0 for columns without a finite mean).

        Mostly the batch's mean. A column with a point mass at its minimum or maximum (the zeros
        after a ReLU, a clamp's limit: at least 1 % of the rows) instead gets the value v of that
        mass plus the distance to the mean rounded to 6 significant bits: then v − shift is a short
        number whose products and their float32 sums stay exact, where the mean itself would turn
        the mass into one long repeated value whose rounding errors add up (about 10x the error)."""
        mean = x.mean(0, dtype=torch.float64)
        low, high = x.min(0).values, x.max(0).values
        at_low, at_high = (x == low).sum(0), (x == high).sum(0)
        bound = torch.where(at_high > at_low, high, low).double()
        mass = torch.maximum(at_low, at_high) >= max(2, x.shape[0] // 100)
        shift = torch.where(mass, bound + _round_to_bits(mean - bound, 6), mean)
        shift = torch.where(torch.isfinite(shift), shift, 0.0)
        rounded = shift.float().double()
        return torch.where(torch.isfinite(rounded), rounded, shift)

    def _shift_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
        """``shift`` in ``dtype``, and whether that equals ``shift`` exactly."""
        if dtype not in self._shifts:
            shift = self.shift.to(dtype)
            self._shifts[dtype] = (shift, bool(torch.equal(shift.double(), self.shift)))
        return self._shifts[dtype]

    def reshifted(self, shift: torch.Tensor) -> Moments:
        """The same statistics about another shift (exact up to float64 round-off)."""
        shift = shift.to(dtype=torch.float64, device=self.count.device)
        total, outer = _reshifted(self.count, self.shifted_total, self.shifted_outer, self.shift - shift)
        return Moments(self.count.clone(), total, outer, shift.clone())

    def merge(self, other: Moments) -> Moments:
        """Statistics of the union of both sample sets (exact; about this shift, or the other's if
        this one holds no samples yet)."""
        base, more = (self, other) if self._fixed or not other._fixed else (other, self)
        more = more.to(base.count.device)
        if torch.equal(more.shift, base.shift):  # the same shift (the folds of one pass): plain sums
            total, outer = more.shifted_total, more.shifted_outer
        else:
            total, outer = _reshifted(more.count, more.shifted_total, more.shifted_outer, more.shift - base.shift)
        return Moments(
            base.count + more.count, base.shifted_total + total, base.shifted_outer + outer, base.shift.clone()
        )

    @staticmethod
    def union(parts: Sequence[Moments]) -> Moments:
        """Statistics of the union of several disjoint sample sets (at least one), e.g. folds."""
        total = parts[0]
        for part in parts[1:]:
            total = total.merge(part)
        return total

    def all_reduce(self, group=None) -> None:
        """Sum the statistics over all processes of a ``torch.distributed`` group, in place.

        The processes' shifts differ (each took its own first batch's mean), so first they agree on
        one: the sample-weighted mean of the shifts (rounded to float32 values), then each converts
        its sums to it and the sums are added."""
        import torch.distributed as dist

        weighted = torch.cat([self.count.reshape(1), self.count * self.shift])
        dist.all_reduce(weighted, op=dist.ReduceOp.SUM, group=group)
        common = weighted[1:] / weighted[0].clamp_min(1)
        rounded = common.float().double()
        common = torch.where(torch.isfinite(rounded), rounded, common)
        total, outer = _reshifted(self.count, self.shifted_total, self.shifted_outer, self.shift - common)
        flat = torch.cat([self.count.reshape(1), total, outer.reshape(-1)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        n = self.units
        self.count.copy_(flat[0])
        self.shifted_total.copy_(flat[1 : n + 1])
        self.shifted_outer.copy_(flat[n + 1 :].reshape(n, n))
        self.shift.copy_(common)
        self._fixed = bool(self.count > 0)
        self._shifts.clear()

    def mean(self) -> torch.Tensor:
        """μ = s + Σ(x − s) / N."""
        return self.shift + self.shifted_total / self.count.clamp_min(1)

    def covariance(self) -> torch.Tensor:
        """Centred covariance C = Σ(x − s)(x − s)ᵀ/N − (μ − s)(μ − s)ᵀ, symmetrised against round-off."""
        n = self.count.clamp_min(1)
        offset = self.shifted_total / n
        cov = self.shifted_outer / n - torch.outer(offset, offset)
        return (cov + cov.T) / 2

    def to(self, device: torch.device | str) -> Moments:
        return Moments(
            self.count.to(device), self.shifted_total.to(device), self.shifted_outer.to(device), self.shift.to(device)
        )

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors to store: ``count``, ``shift`` and, about that shift, ``total`` = Σ(x − s) and
        ``outer`` = Σ(x − s)(x − s)ᵀ."""
        return {
            "count": self.count.cpu(),
            "total": self.shifted_total.cpu(),
            "outer": self.shifted_outer.cpu(),
            "shift": self.shift.cpu(),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Moments:
        """Inverse of :meth:`state`; a state without ``shift`` (written before shifts existed) holds
        the plain sums, i.e. a zero shift."""
        total = state["total"].double()
        shift = state.get("shift")
        shift = torch.zeros_like(total) if shift is None else shift.double()
        return cls(state["count"].double(), total, state["outer"].double(), shift)
