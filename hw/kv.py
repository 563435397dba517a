"""The KV unit: runs ``KV_APPEND`` micro-ops (``hw/isa.py``, :class:`hw.isa.KvArgs`).

Copies ``t_len`` quantized rows from ACT into a head's region of the KV cache at tokens ``pos
.. pos + t_len - 1``, in the layout the grid reads back as weight tiles (keys transposed,
values token-major; scales and exponents in byte lanes; the module docstring of ``hw/isa.py``).
One element per cycle through a byte-lane write (the KV memory's write port has byte
granularity), plus one scale byte per activation group and one exponent byte per token: about
``d * (1 + 1/R) + d/16 + 1`` cycles per token and head, small beside the GEMMs of a decode
step. ``kv_addr`` and ``kv_saddr`` get the ``kv_base`` the micro-op was dispatched with as it
is accepted (adders before the registers, no extra cycle). Checked first (``BAD_FIELD``,
``KV_OVERFLOW``, ``SRAM_RANGE``, in that order); a rejected micro-op writes nothing.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .gemm_engine import cmd_layout, pc_bits
from .isa import Buf, Err, KvArgs, KvKind, act_word, buffer_depth, kv_addr_bits
from .params import ChipParams

__all__ = ["KvEngine", "kv_write_layout"]


def kv_write_layout(p: ChipParams) -> data.StructLayout:
    """A byte-lane write into the KV memory: ``data`` (PC bytes), lane enables ``en``."""
    PC = p.cols // 2
    return data.StructLayout({"addr": unsigned(kv_addr_bits(p)), "data": unsigned(8 * PC),
                              "en": unsigned(PC)})


class KvEngine(wiring.Component):
    """Executes KV_APPEND. ``act_*``: an ACT read port; ``kv_wr``: byte-lane writes to KV."""

    #: Cycles from a micro-op's acceptance (``IDLE``) to its first token: ``PROD``,
    #: ``PROD2``, ``SUMS`` (the range checks' sums, registered), ``CHECK`` (registered),
    #: ``GO`` (the timing model's setup).
    SETUP = 5

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(params))),
            "act_addr": Out(16),
            "act_en": Out(1),
            "act_data": In(data.Layout.cast(act_word(params)).size),
            "kv_wr": Out(stream.Signature(kv_write_layout(params))),
            "done": Out(1),
            "err_valid": Out(1),
            "err_code": Out(Err),
            "err_pc": Out(pc_bits(params)),
            "busy": Out(1),
            "abort": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        R, PC = p.rows, p.cols // 2
        lr, lpc = R.bit_length() - 1, PC.bit_length() - 1
        assert 1 << lr == R and 1 << lpc == PC
        kvd, actd = buffer_depth(p, Buf.KV), buffer_depth(p, Buf.ACT)

        a = Signal(KvArgs)
        pos = Signal(16)
        kv_addr = Signal(kv_addr_bits(p))   # kv_base + kv_addr
        kv_saddr = Signal(kv_addr_bits(p))  # kv_base + kv_saddr
        pc = Signal.like(self.err_pc)
        running = Signal(1)
        err_code = Signal(Err)
        m.d.comb += [self.busy.eq(running | (self.cmd.valid & ~self.abort)),
                     self.err_pc.eq(pc)]

        G = Signal(5)          # d / 16
        blocks = Signal(16)    # ceil(cap / PC)
        p_act = Signal(24)     # (t_len - 1) * a_stride
        p_key = Signal(28)     # blocks * d
        p_val = Signal(28)     # cap * d / PC
        p_scl = Signal(24)     # blocks * (G + 1)

        chk_bad, chk_over, chk_rng = Signal(1), Signal(1), Signal(1)  # the checks, registered
        # the range checks' sums (SUMS), compared with the buffer depths in CHECK
        s_act = Signal(max(len(a.a_addr), len(p_act)) + 2)  # a_addr + p_act + d / R
        s_kv = Signal(max(len(kv_addr), len(p_key)) + 1)    # kv_addr + keys' / values' extent
        s_scl = Signal(max(len(kv_saddr), len(p_scl)) + 1)  # kv_saddr + p_scl
        w_last = Signal(signed(len(a.d) + 1))      # d / R - 1: the last ACT word of a row
        t_last = Signal(signed(len(a.t_len) + 1))  # t_len - 1
        t = Signal(9)
        w = Signal(8)          # ACT word of the row (d / R of them)
        e = Signal(range(R))   # element within the word
        s = Signal(17)         # token
        row = Signal(17)       # ACT address of word 0 of row t
        kbase = Signal(28)     # keys: kv_addr + b * d; values: kv_addr + s * d / PC
        sbase = Signal(28)     # kv_saddr + b * (G + 1)
        # the products of token s (block b = s / PC), kept incrementally (no multiplier
        # before kbase / sbase): s * d, b * d, b * (G + 1); their values at s = pos
        # (PROD / PROD2) start them
        sd, bd = Signal(28), Signal(28)
        bg = Signal(24)
        sd0, bd0 = Signal(28), Signal(28)
        bg0 = Signal(24)
        word = Signal(act_word(p))
        key = a.kind == KvKind.KEY
        lane = s[:lpc] if lpc else 0
        k = Signal(9)          # element index in the row
        m.d.comb += k.eq((w << lr) | e)

        wr = self.kv_wr
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.abort)
                with m.If(self.cmd.valid & ~self.abort):
                    cmd = self.cmd.payload
                    m.d.sync += [a.eq(cmd.args.kv), pos.eq(cmd.pos), pc.eq(cmd.pc),
                                 running.eq(1), kv_addr.eq(cmd.args.kv.kv_addr + cmd.kv_base),
                                 kv_saddr.eq(cmd.args.kv.kv_saddr + cmd.kv_base)]
                    m.next = "PROD"
            with m.State("PROD"):
                m.d.sync += [
                    G.eq(a.d >> 4),
                    blocks.eq((a.cap + PC - 1) >> lpc),
                    p_act.eq((a.t_len - 1) * a.a_stride),
                    p_val.eq((a.cap * a.d) >> lpc),
                    sd0.eq(pos * a.d),
                    w_last.eq((a.d >> lr) - 1), t_last.eq(a.t_len - 1),
                ]
                m.next = "PROD2"
            with m.State("PROD2"):
                m.d.sync += [p_key.eq(blocks * a.d), p_scl.eq(blocks * (G + 1)),
                             bd0.eq((pos >> lpc) * a.d), bg0.eq((pos >> lpc) * (G + 1))]
                m.next = "SUMS"
            with m.State("SUMS"):
                m.d.sync += [s_act.eq(a.a_addr + p_act + (a.d >> lr)),
                             s_kv.eq(kv_addr + Mux(key, p_key, p_val)),
                             s_scl.eq(kv_saddr + p_scl)]
                m.next = "CHECK"
            with m.State("CHECK"):
                bad = ((a.t_len == 0) | (a.d == 0) | (a.d[:4] != 0)
                       | ((a.d & (PC - 1)) != 0) | ((a.d & (R - 1)) != 0))
                over = pos + a.t_len > a.cap
                rng = (s_act > actd) | (s_kv > kvd) | (s_scl > kvd)
                m.d.sync += [chk_bad.eq(bad), chk_over.eq(over), chk_rng.eq(rng)]
                m.next = "GO"
            with m.State("GO"):
                with m.If(chk_bad | chk_over | chk_rng):
                    m.d.sync += err_code.eq(Mux(chk_bad, Err.BAD_FIELD,
                                                Mux(chk_over, Err.KV_OVERFLOW, Err.SRAM_RANGE)))
                    m.next = "ERROR"
                with m.Else():
                    m.d.sync += [t.eq(0), s.eq(pos), row.eq(a.a_addr),
                                 sd.eq(sd0), bd.eq(bd0), bg.eq(bg0)]
                    m.next = "TOKEN"
            with m.State("ERROR"):
                m.d.comb += [self.err_valid.eq(1), self.err_code.eq(err_code),
                             self.done.eq(1)]
                m.d.sync += running.eq(0)
                m.next = "IDLE"
            with m.State("TOKEN"):  # per-token bases
                m.d.sync += [
                    kbase.eq(kv_addr + Mux(key, bd, sd >> lpc)),
                    sbase.eq(kv_saddr + bg),
                    w.eq(0), e.eq(0),
                ]
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.act_addr.eq(row + w), self.act_en.eq(1)]
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += [word.eq(self.act_data), e.eq(0)]
                m.next = "ELEM"
            with m.State("ELEM"):
                byte = word.data[e].as_unsigned()
                m.d.comb += [
                    wr.valid.eq(1),
                    wr.payload.addr.eq(Mux(key, kbase + k, kbase + (k >> lpc))),
                    wr.payload.data.eq(byte.replicate(PC)),
                    wr.payload.en.eq(1 << Mux(key, lane, k[:lpc] if lpc else 0)),
                ]
                with m.If(wr.ready):
                    m.d.sync += e.eq(e + 1)
                    with m.If(e == R - 1):
                        with m.If(((w << lr) & 15) == 0):
                            m.next = "SCALE"
                        with m.Else():
                            m.next = "NEXT"
            with m.State("SCALE"):  # first word of an activation group: its scale byte
                m.d.comb += [
                    wr.valid.eq(1),
                    wr.payload.addr.eq(sbase + ((w << lr) >> 4)),
                    # a byte per lane: gshift | gzero << 5, bits 6 and 7 zero
                    wr.payload.data.eq(Cat(word.gshift, word.gzero, C(0, 2)).replicate(PC)),
                    wr.payload.en.eq(1 << lane),
                ]
                with m.If(wr.ready):
                    with m.If(w == 0):
                        m.next = "EXP"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("EXP"):  # the row exponent, once per token
                m.d.comb += [
                    wr.valid.eq(1),
                    wr.payload.addr.eq(sbase + G),
                    wr.payload.data.eq(word.exp.as_unsigned().replicate(PC)),
                    wr.payload.en.eq(1 << lane),
                ]
                with m.If(wr.ready):
                    m.next = "NEXT"
            with m.State("NEXT"):
                with m.If(self.abort):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Elif(w != w_last):
                    m.d.sync += w.eq(w + 1)
                    m.next = "READ"
                with m.Elif(t != t_last):
                    m.d.sync += [t.eq(t + 1), s.eq(s + 1), row.eq(row + a.a_stride),
                                 sd.eq(sd + a.d)]
                    with m.If((s[:lpc] == PC - 1) if lpc else 1):  # s + 1 starts a block
                        m.d.sync += [bd.eq(bd + a.d), bg.eq(bg + G + 1)]
                    m.next = "TOKEN"
                with m.Else():
                    m.d.comb += self.done.eq(1)
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
        return m
