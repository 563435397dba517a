"""The one configuration object of the chip.

Every size, width and rate of the chip lives here, in :class:`ChipParams`, a frozen dataclass
validated on construction: a bad value raises :class:`ValueError` naming the field and the range
it must lie in. The numeric formats of the integer contract (DESIGN.md §3) are in
:class:`Numerics`; they are fixed by the golden model (``sim/golden.py``) and shared by the RTL,
the compiler and the simulators, so they are configuration, not code.

Pass a ``ChipParams`` explicitly to whatever needs it; there is no global configuration.
"""

from dataclasses import dataclass, field, fields

__all__ = ["Numerics", "ChipParams", "PRESETS", "preset"]


def _check_range(obj, name, lo, hi):
    value = getattr(obj, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(
            f"{type(obj).__name__}.{name} must be an integer, got {value!r} "
            f"({type(value).__name__})"
        )
    if not lo <= value <= hi:
        raise ValueError(
            f"{type(obj).__name__}.{name} = {value} is out of range: allowed {lo}..{hi}")


def _check_pow2(obj, name):
    value = getattr(obj, name)
    if value & (value - 1):
        raise ValueError(f"{type(obj).__name__}.{name} = {value} must be a power of two")


@dataclass(frozen=True)
class Numerics:
    """Number formats of the integer contract (see ``sim/golden.py`` for the arithmetic).

    ``frac_bits``
        Fractional bits of a *wide* activation: an INT32 fixed-point value, real = int / 2**F.
        The residual stream, GEMM outputs, norm and non-linear unit outputs are wide.
    ``group``
        Weights carry one scale (and one offset) per ``group`` consecutive elements along K,
        as GGUF Q4_0 / Q4_1 / Q8_0 do.
    ``scale_bits``
        Width of a signed group scale / offset mantissa (the weight's per-column shift gives
        its binary point).
    ``act_group``
        Activations carry one dynamic power-of-two scale per ``act_group`` consecutive
        elements (a divisor of ``group``). 16 = one pass down a 16-row grid column. Per-row
        scales cost SmolLM2 12 points of top-1 agreement (outlier channels); groups of 16
        recover them (``scripts/accuracy_report.py``).
    ``act_headroom``
        Activation group scales are powers of two (MXINT8-style): a group's scale is
        ``2**(e_row - d)`` with e_row the row's largest group exponent; groups down to
        ``act_headroom`` binades below it are exact (``mant = 2**(act_headroom - d)``, a shift
        in the group scaler), groups further below contribute 0 (under 2**-20 of the row).
    ``act_bits`` / ``acc_bits``
        INT8 activations; INT32 partial sums inside a group.
    ``gelu_*``, ``silu_*``
        The piecewise-linear tables of the LUT unit: inputs in ``[-range, range)``
        split into ``segments`` equal segments.
    ``exp2_segments``
        Segments of the 2**-f table (f in [0, 1)) used by softmax.
    """

    frac_bits: int = 16
    group: int = 32
    act_group: int = 16
    act_headroom: int = 20
    scale_bits: int = 16
    act_bits: int = 8
    acc_bits: int = 32
    gelu_range: int = 8
    gelu_segments: int = 512
    silu_range: int = 16
    silu_segments: int = 1024
    exp2_segments: int = 256
    exp2_out_bits: int = 15

    def __post_init__(self):
        _check_range(self, "frac_bits", 8, 24)
        _check_range(self, "group", 8, 256)
        _check_pow2(self, "group")
        _check_range(self, "act_group", 4, self.group)
        _check_pow2(self, "act_group")
        _check_range(self, "act_headroom", 0, 20)
        _check_range(self, "scale_bits", 8, 18)
        _check_range(self, "act_bits", 8, 8)
        _check_range(self, "acc_bits", 32, 32)
        for name in ("gelu_range", "silu_range"):
            _check_range(self, name, 1, 64)
            _check_pow2(self, name)
        for name in ("gelu_segments", "silu_segments", "exp2_segments"):
            _check_range(self, name, 16, 4096)
            _check_pow2(self, name)
        _check_range(self, "exp2_out_bits", 12, 16)


@dataclass(frozen=True)
class ChipParams:
    """Sizes and rates of one chip configuration.

    ``rows`` x ``cols``
        The systolic grid (``hw/grid.py``): ``rows`` along K (the reduction; a divisor of
        ``numerics.act_group``, so a column sum never straddles two activation groups) and
        ``cols`` W4A8 output columns along N, computed by ``cols / 2`` columns of processing
        elements with one multiplier each (two INT4 weights share it); INT8 x INT8 tiles
        have ``cols / 2`` output columns.
    ``weight_sram_kib``, ``act_sram_kib``, ``kv_sram_kib``
        On-chip SRAM for weights (INT8 or packed INT4, double-buffered), activations,
        and the KV cache.
    ``acc_sram_kib``
        On-chip SRAM for wide (INT32) results: GEMM outputs, the residual stream.
    ``prm_entries``
        GEMM column-parameter words (per column: weight group scale and offset, or output
        shift and bias; ``hw/isa.py``).
    ``acc_entries``
        Rows of the group scaler's 64-bit accumulator (each ``cols`` wide): the longest
        activation run of one GEMM micro-op (times its output blocks when sums carry from
        one micro-op to the next).
    ``vector_lanes``
        Elements the vector unit takes per cycle.
    ``vector_row``
        Longest row (elements) of the vector unit's row operations (``VEC`` ``QUANT``,
        ``LAYERNORM``, ``RMSNORM``, ``SOFTMAX``; ``hw/isa.py``): each holds a whole row in its
        row FIFOs (``max_beats = ceil(vector_row / vector_lanes)`` of ``hw/vector``), and the
        norm's and softmax's divisors are sized for at most 4096 elements.
    ``offchip_bytes_per_cycle``, ``offchip_latency``, ``offchip_kib``
        The modelled off-chip memory: bus width (one bus word per cycle at full rate), read
        latency in cycles, and size.
    ``queue_depth``
        Entries of each unit's command queue.
    ``uop_depth``
        Micro-op program memory depth.
    ``clock_mhz``
        The clock the board build targets.
    """

    rows: int = 16
    cols: int = 16
    weight_sram_kib: int = 64
    act_sram_kib: int = 64
    kv_sram_kib: int = 128
    acc_sram_kib: int = 64
    prm_entries: int = 256
    acc_entries: int = 256
    vector_lanes: int = 16
    vector_row: int = 2048
    offchip_bytes_per_cycle: int = 8
    offchip_latency: int = 16
    offchip_kib: int = 1024
    queue_depth: int = 4
    uop_depth: int = 4096
    clock_mhz: int = 100
    numerics: Numerics = field(default_factory=Numerics)

    def __post_init__(self):
        _check_range(self, "rows", 1, 64)
        _check_range(self, "cols", 2, 64)
        if self.cols % 2:
            raise ValueError(f"ChipParams.cols = {self.cols} must be even (W4A8 pairs)")
        if not isinstance(self.numerics, Numerics):
            raise ValueError(
                f"ChipParams.numerics must be a Numerics, got {type(self.numerics).__name__}"
            )
        if self.numerics.act_group % self.rows:
            raise ValueError(f"ChipParams.rows = {self.rows} must divide numerics.act_group = "
                             f"{self.numerics.act_group}")
        _check_range(self, "weight_sram_kib", 1, 4096)
        _check_range(self, "act_sram_kib", 1, 4096)
        _check_range(self, "kv_sram_kib", 1, 4096)
        _check_range(self, "acc_sram_kib", 1, 4096)
        _check_range(self, "prm_entries", 16, 1024)
        _check_range(self, "acc_entries", 16, 511)
        _check_range(self, "vector_lanes", 1, 64)
        _check_range(self, "vector_row", 16, 4096)
        _check_range(self, "offchip_bytes_per_cycle", 1, 256)
        _check_range(self, "offchip_latency", 1, 1024)
        _check_range(self, "offchip_kib", 1, 1 << 22)
        _check_range(self, "queue_depth", 2, 64)
        _check_range(self, "uop_depth", 16, 1 << 20)
        _check_range(self, "clock_mhz", 1, 1000)
        if not isinstance(self.numerics, Numerics):
            raise ValueError(
                f"ChipParams.numerics must be a Numerics, got {type(self.numerics).__name__}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> "ChipParams":
        """Build from a plain dict (e.g. a config file); unknown keys are an error."""
        if not isinstance(values, dict):
            raise ValueError(f"ChipParams: a configuration is a JSON object of fields, got "
                             f"{type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"ChipParams: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        values = dict(values)
        if isinstance(values.get("numerics"), dict):
            values["numerics"] = Numerics(**values["numerics"])
        return cls(**values)


#: Named configurations (:func:`preset`):
#:
#: - ``default``: the chip of DESIGN.md, 16 x 16 grid, 64 KiB buffers;
#: - ``sim``: the same grid with the memories a whole model needs, for the simulators: WGT
#:   128 KiB and 1024 PRM entries (weights streamed in bigger chunks: SmolLM2 needs ~12 k
#:   micro-ops per step instead of ~33 k), ACT 256 KiB, ACC 1 MiB and KV 4 MiB (SmolLM2's KV
#:   cache for up to 336 positions; each layer's region reached through ``kv_base``,
#:   ``hw/isa.py``), 64 k micro-ops, 192 MiB off-chip.
PRESETS = {
    "default": ChipParams(),
    "sim": ChipParams(weight_sram_kib=128, act_sram_kib=256, acc_sram_kib=1024,
                      kv_sram_kib=4096, prm_entries=1024, uop_depth=1 << 16,
                      offchip_kib=192 * 1024),
}


def preset(name: str) -> ChipParams:
    """The configuration ``name`` of :data:`PRESETS`; ``ValueError`` naming the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown chip configuration {name!r}; known: "
                         f"{', '.join(sorted(PRESETS))}") from None
