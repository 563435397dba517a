"""The GEMM unit of the chip: runs ``GEMM`` micro-ops (``hw/isa.py``, :class:`hw.isa.GemmArgs`)
on the grid and group scaler (:class:`hw.gemm.GemmUnit`).

A micro-op's KV addresses (``w_addr`` from KV, ``prm_addr`` with ``psrc = KV``) get the
``kv_base`` it was dispatched with as it is accepted (an adder before the registers, no extra
cycle). It is checked first (four cycles: the products that bound every address, in two, then the
comparisons, registered, then the decision; ``Err.BAD_FIELD`` / ``Err.SRAM_RANGE`` before
anything is read or written), then
four independent address generators run its loops, each feeding one of the unit's streams
through a :class:`hw.bus.MemReader`:

- weights: for each block ``j`` and K-tile ``kt`` the tile's ``R`` rows, grid row ``R-1``
  first, from WGT or KV (:class:`hw.isa.WSrc`);
- activations: for each ``(j, kt)`` the ``t_len`` ACT words of the K-tile, with the scaler
  information (group shift, row exponent, accumulator row, first/final);
- column parameters: per ``(j, kt)`` two words (group and out words from PRM, or key scale
  and exponent words from KV), combined into one tile-parameter entry;
- outputs (``final`` ops): per ``(j, t)`` one ACC write.

The grid's double-buffered weights let the next tile's rows stream in while the current
tile computes, so the generators simply run ahead as far as the streams let them. The
micro-op completes (``done``) when every generator has finished, every read has been
consumed and the GEMM unit is empty. The next micro-op starts after that (the unit's
pipeline drains between micro-ops: about ``rows + cols/2 + 10`` cycles).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .bus import MemReader
from .gemm import GemmUnit, tile_param_layout
from .isa import (
    ARGS,
    Buf,
    Dyn,
    Err,
    GemmArgs,
    PSrc,
    WSrc,
    acc_word,
    act_word,
    buffer_depth,
    kv_addr_bits,
    kv_base_bits,
    kv_word,
    prm_word,
    wgt_word,
)
from .params import ChipParams

__all__ = ["GemmEngine", "cmd_layout", "pc_bits"]


def pc_bits(p: ChipParams) -> int:
    return max(p.uop_depth - 1, 1).bit_length()


def cmd_layout(p: ChipParams) -> data.StructLayout:
    """A unit queue entry: the micro-op's arguments, ``pos`` and ``kv_base`` at dispatch, its
    address."""
    return data.StructLayout({"args": ARGS, "pos": unsigned(16),
                              "kv_base": unsigned(kv_base_bits(p)), "pc": unsigned(pc_bits(p))})


def addr_bits(p: ChipParams) -> int:
    """Width of the read addresses the GEMM unit generates (WGT, ACT, PRM, or KV with
    ``kv_base``), with a spare bit for the generators' step past a block's end."""
    return max(16, kv_addr_bits(p)) + 1


def _bits(layout) -> int:
    return data.Layout.cast(layout).size


class GemmEngine(wiring.Component):
    """Executes GEMM micro-ops. Memory read ports are wired by the chip: ``wgt_*`` (WGT),
    ``kvw_*`` (KV, weights), ``act_*`` (ACT), ``prm_*`` (PRM), ``kvp_*`` (KV, parameters);
    ``acc_wr`` writes ACC. ``done``/``err_*`` pulse once per micro-op; ``rows`` pulses per
    activation row the grid accepts; ``abort`` drops the current micro-op."""

    #: Cycles from a micro-op's acceptance (``IDLE``) to the generators' start pulse:
    #: ``EFF``, ``PROD``, ``PROD2``, ``PROD3``, ``SUMS`` (the range checks' sums),
    #: ``CHECK``, ``GO`` (the timing model's setup).
    SETUP = 7

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        p = params
        self.unit = GemmUnit(p)
        wb, ab, pb = _bits(wgt_word(p)), _bits(act_word(p)), _bits(prm_word(p))
        kb, cb = _bits(kv_word(p)), _bits(acc_word(p))
        ports = {}
        for name, bits in (("wgt", wb), ("kvw", kb), ("act", ab), ("prm", pb), ("kvp", kb)):
            ports[f"{name}_addr"] = Out(addr_bits(p))
            ports[f"{name}_en"] = Out(1)
            ports[f"{name}_data"] = In(bits)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(p))),
            **ports,
            "acc_wr": Out(stream.Signature(data.StructLayout({"addr": unsigned(16),
                                                              "data": unsigned(cb)}))),
            "done": Out(1),
            "err_valid": Out(1),
            "err_code": Out(Err),
            "err_pc": Out(pc_bits(p)),
            "busy": Out(1),
            "rows": Out(1),
            "abort": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        R, C, PC = p.rows, p.cols, p.cols // 2
        lr, lpc = R.bit_length() - 1, PC.bit_length() - 1
        assert 1 << lr == R and 1 << lpc == PC, "rows and cols / 2 must be powers of two"
        m.submodules.unit = unit = self.unit

        # -- the micro-op ------------------------------------------------------------------
        a = Signal(GemmArgs)
        pos = Signal(16)
        AW = addr_bits(p)
        w0 = Signal(AW)  # w_addr (+ kv_base from KV)
        p0 = Signal(AW)  # prm_addr (+ kv_base with psrc = KV)
        pc = Signal.like(self.err_pc)
        n = Signal(17)   # effective n_tiles / k_tiles
        k = Signal(17)
        T = Signal(9)
        G = Signal(17)   # group / scale words per block
        Gs = Signal(18)  # PRM: G; KV: G + 1
        both = Signal(1)  # first and final: y = t
        n1, k1, T1 = Signal(17), Signal(17), Signal(9)  # n - 1, k - 1, T - 1 (loop ends)
        chk_bad, chk_rng = Signal(1), Signal(1)  # the checks, registered
        # check products
        p_w = Signal(40)
        p_a = Signal(24)
        p_acc = Signal(24)
        p_prm = Signal(40)
        p_y = Signal(32)
        g_num = Signal(18)   # k + 2**prm_step - 1 (G before its shift)
        gs_num = Signal(19)  # the same with 2**(prm_step + 1) from KV (Gs before its shift)
        # the range checks' sums (SUMS), compared with the buffer depths in CHECK
        s_w = Signal(max(AW, len(p_w)) + 1)                  # w0 + p_w
        s_a = Signal(max(len(a.a_addr), len(p_a), 17) + 2)    # a_addr + p_a + k
        s_p = Signal(max(AW, len(p_prm)) + 1)                # p0 + p_prm
        s_o = Signal(max(len(a.oprm_addr), 17) + 1)          # oprm_addr + n
        s_acc = Signal(max(len(a.acc_addr), len(p_acc), 17) + 2)  # acc_addr + p_acc + n

        running = Signal(1)
        start = Signal(1)  # one-cycle pulse: generators begin
        m.d.comb += self.busy.eq(running | (self.cmd.valid & ~self.abort))

        err_code = Signal(Err)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.abort)
                with m.If(self.cmd.valid & ~self.abort):
                    cmd = self.cmd.payload
                    g = cmd.args.gemm
                    m.d.sync += [a.eq(g), pos.eq(cmd.pos), pc.eq(cmd.pc), running.eq(1),
                                 w0.eq(g.w_addr + Mux(g.wsrc != WSrc.WGT, cmd.kv_base, 0)),
                                 p0.eq(g.prm_addr + Mux(g.psrc == PSrc.KV, cmd.kv_base, 0))]
                    m.next = "EFF"
            with m.State("EFF"):
                vis = pos + a.t_len
                dyn = a.dyn == Dyn.POS
                m.d.sync += [
                    T.eq(a.t_len),
                    n.eq(Mux(dyn & (a.wsrc == WSrc.KV_TILED), (vis + PC - 1) >> lpc,
                             a.n_tiles)),
                    k.eq(Mux(dyn & (a.wsrc == WSrc.KV_ROWS), (vis + R - 1) >> lr, a.k_tiles)),
                    T1.eq(a.t_len - 1),
                    both.eq(a.first & a.final),
                ]
                m.next = "PROD"
            with m.State("PROD"):
                # G = ceil(k / 2**prm_step); Gs = G + 1 from KV, as one add (here) and a
                # shift (PROD2)
                step = 1 << a.prm_step
                m.d.sync += [
                    g_num.eq(k + step - 1),
                    gs_num.eq(k + Mux(a.psrc == PSrc.KV, step << 1, step) - 1),
                    n1.eq(n - 1), k1.eq(k - 1),
                    p_w.eq((n * k) << lr),
                    p_a.eq(T1 * a.a_stride),
                    p_acc.eq(T1 * a.acc_stride),
                    p_y.eq(n * T),
                ]
                m.next = "PROD2"
            with m.State("PROD2"):
                m.d.sync += [G.eq(g_num >> a.prm_step), Gs.eq(gs_num >> a.prm_step)]
                m.next = "PROD3"
            with m.State("PROD3"):
                m.d.sync += p_prm.eq(n * Gs)
                m.next = "SUMS"
            with m.State("SUMS"):
                m.d.sync += [s_w.eq(w0 + p_w), s_a.eq(a.a_addr + p_a + k), s_p.eq(p0 + p_prm),
                             s_o.eq(a.oprm_addr + n), s_acc.eq(a.acc_addr + p_acc + n)]
                m.next = "CHECK"
            with m.State("CHECK"):
                bad = ((T == 0) | (n == 0) | (k == 0) | (a.wsrc == 3)
                       | ((a.dyn == Dyn.POS) & (a.wsrc == WSrc.WGT))
                       | Mux(both, T > p.acc_entries, p_y > p.acc_entries))
                rng = (Mux(a.wsrc == WSrc.WGT, s_w > buffer_depth(p, Buf.WGT),
                           s_w > buffer_depth(p, Buf.KV))
                       | (s_a > buffer_depth(p, Buf.ACT))
                       | Mux(a.psrc == PSrc.KV, s_p > buffer_depth(p, Buf.KV),
                             s_p > buffer_depth(p, Buf.PRM))
                       | ((a.psrc == PSrc.PRM) & (s_o > buffer_depth(p, Buf.PRM)))
                       | (a.final & (s_acc > buffer_depth(p, Buf.ACC))))
                m.d.sync += [chk_bad.eq(bad), chk_rng.eq(rng)]
                m.next = "GO"
            with m.State("GO"):
                with m.If(chk_bad | chk_rng):
                    m.d.sync += err_code.eq(Mux(chk_bad, Err.BAD_FIELD, Err.SRAM_RANGE))
                    m.next = "ERROR"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("ERROR"):
                m.d.comb += [self.err_valid.eq(1), self.err_code.eq(err_code),
                             self.err_pc.eq(pc), self.done.eq(1)]
                m.d.sync += running.eq(0)
                m.next = "IDLE"
            with m.State("RUN"):
                finished = Signal(1)
                m.d.comb += self.err_pc.eq(pc)
                with m.If(self.abort):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Elif(finished):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"

        go = running & ~self.abort

        # -- weights ---------------------------------------------------------------------------
        m.submodules.wr = wr = MemReader(AW, max(_bits(wgt_word(p)), _bits(kv_word(p))))
        w_on = Signal(1)
        wj, wkt = Signal(17), Signal(17)
        wr_r = Signal(range(R))
        w_base = Signal(AW)   # tile-major: start of the tile; rows: row 0 of the tile
        w_addr = Signal(AW)
        nR1 = Signal(32)      # (R - 1) * n
        nR = Signal(32)       # R * n
        rows_layout = a.wsrc == WSrc.KV_ROWS
        with m.If(start):
            m.d.sync += [w_on.eq(1), wj.eq(0), wkt.eq(0), wr_r.eq(R - 1),
                         w_base.eq(w0), w_addr.eq(Mux(rows_layout, w0 + (n << lr) - n,
                                                      w0 + R - 1)),
                         nR1.eq((n << lr) - n), nR.eq(n << lr)]
        m.d.comb += [wr.i.valid.eq(w_on & go), wr.i.payload.addr.eq(w_addr)]
        # the next tile's base and first address (rows layout: next block / next tile;
        # tile-major), from the current registers: with R >= 2 rows per tile they are used at
        # least two cycles after the registers they depend on last changed
        cands = {name: Signal(AW, name=name) for name in
                 ("nb_blk", "nb_til", "na_blk", "na_til", "nb_tm", "na_tm")}
        nb_blk, nb_til, na_blk, na_til, nb_tm, na_tm = cands.values()
        exprs = [w0 + wj + 1, w_base + nR, w0 + wj + 1 + nR1, w_base + nR + nR1,
                 w_base + R, w_base + 2 * R - 1]
        domain = m.d.sync if R >= 2 else m.d.comb
        domain += [sig.eq(e) for sig, e in zip(cands.values(), exprs, strict=True)]
        with m.If(wr.i.valid & wr.i.ready):
            with m.If(wr_r != 0):
                m.d.sync += [wr_r.eq(wr_r - 1), w_addr.eq(Mux(rows_layout, w_addr - n,
                                                               w_addr - 1))]
            with m.Else():
                # next tile: kt + 1, or the next block
                last_kt = wkt == k1
                nb = Signal(AW)
                with m.If(rows_layout):
                    m.d.comb += nb.eq(Mux(last_kt, nb_blk, nb_til))
                    m.d.sync += w_addr.eq(Mux(last_kt, na_blk, na_til))
                with m.Else():
                    m.d.comb += nb.eq(nb_tm)
                    m.d.sync += w_addr.eq(na_tm)
                m.d.sync += [w_base.eq(nb), wr_r.eq(R - 1), wkt.eq(Mux(last_kt, 0, wkt + 1))]
                with m.If(last_kt):
                    m.d.sync += wj.eq(wj + 1)
                    with m.If(wj == n1):
                        m.d.sync += w_on.eq(0)
        m.d.comb += [
            self.wgt_addr.eq(wr.rd_addr), self.kvw_addr.eq(wr.rd_addr),
            self.wgt_en.eq(wr.rd_en & (a.wsrc == WSrc.WGT)),
            self.kvw_en.eq(wr.rd_en & (a.wsrc != WSrc.WGT)),
            wr.rd_data.eq(Mux(a.wsrc == WSrc.WGT, self.wgt_data, self.kvw_data)),
            unit.w_row.valid.eq(wr.o.valid & go),
            wr.o.ready.eq(unit.w_row.ready | ~go),
            unit.w_row.payload.mode.eq(a.mode),
        ]
        wview = wgt_word(p)(wr.o.payload.data[:_bits(wgt_word(p))])
        for c in range(PC):
            m.d.comb += unit.w_row.payload.data[c].eq(wview[c])

        # -- activations -----------------------------------------------------------------------
        meta_l = data.StructLayout({"y": unsigned(9), "first": 1, "final": 1, "last": 1})
        m.submodules.ar = ar = MemReader(16, _bits(act_word(p)), meta_l)
        a_on = Signal(1)
        aj, akt, at = Signal(17), Signal(17), Signal(9)
        a_row = Signal(17)   # ACT address of row t of K-tile kt
        y = Signal(32)
        ybase = Signal(32)   # j * T
        # the loop-end comparisons as flags kept with their counters (at == T1, akt == k1,
        # akt == 0, aj == n1), each loaded from the comparison of the counter's next value
        at_last, akt_last, akt_zero, aj_last = (Signal(1, name=f"a_{x}")
                                                for x in ("t_last", "kt_last", "kt_zero",
                                                          "j_last"))
        with m.If(start):
            m.d.sync += [a_on.eq(1), aj.eq(0), akt.eq(0), at.eq(0), a_row.eq(a.a_addr),
                         y.eq(0), ybase.eq(0), at_last.eq(T1 == 0), akt_last.eq(k1 == 0),
                         akt_zero.eq(1), aj_last.eq(n1 == 0)]
        meta = Signal(meta_l)
        m.d.comb += [
            meta.y.eq(Mux(both, at, y)),
            meta.first.eq(a.first & akt_zero),
            meta.final.eq(a.final & akt_last),
            meta.last.eq(at_last),
            ar.i.valid.eq(a_on & go), ar.i.payload.addr.eq(a_row), ar.i.payload.meta.eq(meta),
        ]
        with m.If(ar.i.valid & ar.i.ready):
            with m.If(~at_last):
                m.d.sync += [at.eq(at + 1), a_row.eq(a_row + a.a_stride), y.eq(y + 1),
                             at_last.eq(at + 1 == T1)]
            with m.Else():
                m.d.sync += [at.eq(0), at_last.eq(T1 == 0),
                             akt.eq(Mux(akt_last, 0, akt + 1)),
                             akt_last.eq(Mux(akt_last, k1 == 0, akt + 1 == k1)),
                             akt_zero.eq(akt_last),
                             a_row.eq(a.a_addr + Mux(akt_last, 0, akt + 1))]
                with m.If(akt_last):
                    m.d.sync += [aj.eq(aj + 1), ybase.eq(ybase + T), y.eq(ybase + T),
                                 aj_last.eq(aj + 1 == n1)]
                    with m.If(aj_last):
                        m.d.sync += a_on.eq(0)
                with m.Else():
                    m.d.sync += y.eq(ybase)
        m.d.comb += [self.act_addr.eq(ar.rd_addr), self.act_en.eq(ar.rd_en),
                     ar.rd_data.eq(self.act_data)]
        aview = act_word(p)(ar.o.payload.data)
        ameta = ar.o.payload.meta
        ua = unit.a_row.payload
        m.d.comb += [
            ua.data.eq(aview.data), ua.last.eq(ameta.last),
            ua.info.gshift.eq(aview.gshift), ua.info.gzero.eq(aview.gzero),
            ua.info.exp.eq(aview.exp), ua.info.t.eq(ameta.y),
            ua.info.first.eq(ameta.first), ua.info.final.eq(ameta.final),
            unit.a_row.valid.eq(ar.o.valid & go),
            ar.o.ready.eq(unit.a_row.ready | ~go),
            self.rows.eq(unit.a_row.valid & unit.a_row.ready),
        ]

        # -- column parameters -----------------------------------------------------------------
        pbits = max(_bits(prm_word(p)), _bits(kv_word(p)))
        m.submodules.pr = pr = MemReader(AW, pbits, unsigned(1))
        p_on = Signal(1)
        pj, pkt = Signal(17), Signal(17)
        p_second = Signal(1)  # next read is the out / exponent word
        pbase = Signal(AW)
        obase = Signal(AW)
        # The next read's address, a register: the first word of (j, kt) at
        # pbase + (kt >> prm_step), then its second word (pbase + G from KV, else obase).
        # The next tile's first address is precomputed (both cases) from the registers it
        # depends on, which change only at a second word, two reads before it is used.
        p_addr = Signal(AW)
        nf_same, nf_next = Signal(AW), Signal(AW)
        m.d.sync += [nf_same.eq(pbase + ((pkt + 1) >> a.prm_step)), nf_next.eq(pbase + Gs)]
        with m.If(start):
            m.d.sync += [p_on.eq(1), pj.eq(0), pkt.eq(0), p_second.eq(0),
                         pbase.eq(p0), obase.eq(a.oprm_addr), p_addr.eq(p0)]
        kv_p = a.psrc == PSrc.KV
        m.d.comb += [
            pr.i.valid.eq(p_on & go),
            pr.i.payload.meta.eq(p_second),
            pr.i.payload.addr.eq(p_addr),
        ]
        with m.If(pr.i.valid & pr.i.ready):
            m.d.sync += p_second.eq(~p_second)
            with m.If(~p_second):
                m.d.sync += p_addr.eq(Mux(kv_p, pbase + G, obase))
            with m.Else():
                last_kt = pkt == k1
                m.d.sync += [pkt.eq(Mux(last_kt, 0, pkt + 1)),
                             p_addr.eq(Mux(last_kt, nf_next, nf_same))]
                with m.If(last_kt):
                    m.d.sync += [pj.eq(pj + 1), pbase.eq(pbase + Gs), obase.eq(obase + 1)]
                    with m.If(pj == n1):
                        m.d.sync += p_on.eq(0)
        m.d.comb += [
            self.prm_addr.eq(pr.rd_addr), self.kvp_addr.eq(pr.rd_addr),
            self.prm_en.eq(pr.rd_en & ~kv_p), self.kvp_en.eq(pr.rd_en & kv_p),
            pr.rd_data.eq(Mux(kv_p, self.kvp_data, self.prm_data)),
        ]
        # pair (group/scale word, out/exponent word) -> one tile-parameter entry
        held = Signal(pbits)
        have = Signal(1)
        par = Signal(tile_param_layout(p))
        grp = prm_word(p)(held[:_bits(prm_word(p))]).group
        out = prm_word(p)(pr.o.payload.data[:_bits(prm_word(p))]).out
        kscale = kv_word(p)(held[:_bits(kv_word(p))])
        kexp = kv_word(p)(pr.o.payload.data[:_bits(kv_word(p))])
        F = p.numerics.frac_bits
        for c in range(C):
            # psrc = KV: scale 2**gshift as scale 1 and a left shift by gshift (up to 31, more
            # than a SCALE_BITS scale holds); lanes c >= PC have no key lane: scale 0, and
            # exponent 0 (shift = F, as the ISA simulator reads hw/isa.py)
            if c < PC:
                lane = kscale[c]
                ks, ksh = Mux(lane[5], 0, 1), lane[0:5]
                ke = kexp[c].as_signed()
            else:
                ks, ksh, ke = 0, 0, 0
            m.d.comb += [
                par.scale[c].eq(Mux(kv_p, ks, grp.scale[c])),
                par.offset[c].eq(Mux(kv_p, 0, grp.offset[c])),
                par.kshift[c].eq(Mux(kv_p, ksh, 0)),
                par.shift[c].eq(Mux(kv_p, F - ke, out.shift[c])),
                par.bias[c].eq(Mux(kv_p, 0, out.bias[c])),
            ]
        m.d.comb += [
            unit.i_param.payload.eq(par),
            unit.i_param.valid.eq(have & pr.o.valid & go),
            pr.o.ready.eq(~have | unit.i_param.ready | ~go),
        ]
        with m.If(pr.o.valid & pr.o.ready):
            m.d.sync += have.eq(~have)
            with m.If(~have):
                m.d.sync += held.eq(pr.o.payload.data)
        with m.If(start):
            m.d.sync += have.eq(0)

        # -- outputs ---------------------------------------------------------------------------
        o_on = Signal(1)
        oj, ot = Signal(17), Signal(9)
        o_addr = Signal(24)
        with m.If(start):
            m.d.sync += [o_on.eq(a.final), oj.eq(0), ot.eq(0), o_addr.eq(a.acc_addr)]
        m.d.comb += [
            self.acc_wr.valid.eq(unit.o_row.valid & o_on & go),
            self.acc_wr.payload.addr.eq(o_addr),
            self.acc_wr.payload.data.eq(unit.o_row.payload.data),
            unit.o_row.ready.eq(self.acc_wr.ready | ~go),
        ]
        with m.If(self.acc_wr.valid & self.acc_wr.ready):
            with m.If(ot != T1):
                m.d.sync += [ot.eq(ot + 1), o_addr.eq(o_addr + a.acc_stride)]
            with m.Else():
                m.d.sync += [ot.eq(0), oj.eq(oj + 1), o_addr.eq(a.acc_addr + oj + 1)]
                with m.If(oj == n1):
                    m.d.sync += o_on.eq(0)

        m.d.comb += finished.eq(~start & ~w_on & ~a_on & ~p_on & ~o_on & ~wr.busy & ~ar.busy
                                & ~pr.busy & ~have & ~unit.busy)
        return m
