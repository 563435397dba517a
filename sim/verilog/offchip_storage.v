// Storage of the modelled off-chip memory (sim/offchip.py, OffchipMemory(storage="verilog")).
//
// One read port with a registered read (rd_data holds mem[rd_addr] from the cycle after rd_en;
// a write in the same cycle is not seen: read-before-write) and one write port. Simulation
// only: the contents come and go in bulk through files, never word by word from Python.
//
//   +offchip_init=<path>  at time 0, $readmemh(<path>) (one bus word per line, hex; words not
//                         in the file stay 0). sim.offchip.write_memh writes such files.
//   +offchip_dump=<path>  on every rising edge where `dump` is high, $writememh(<path>) of the
//                         whole memory (writes of that same edge are not included).
//                         sim.offchip.read_memh reads it back.
module offchip_storage #(
    parameter WIDTH = 64,
    parameter DEPTH = 512,
    parameter ABITS = 9
) (
    input  wire             clk,
    input  wire             rd_en,
    input  wire [ABITS-1:0] rd_addr,
    output reg  [WIDTH-1:0] rd_data,
    input  wire             wr_en,
    input  wire [ABITS-1:0] wr_addr,
    input  wire [WIDTH-1:0] wr_data,
    input  wire             dump
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    reg [8*1024-1:0] init_path;
    reg [8*1024-1:0] dump_path;
    reg have_dump_path;
    integer i;

    initial begin
        rd_data = {WIDTH{1'b0}};
        for (i = 0; i < DEPTH; i = i + 1)
            mem[i] = {WIDTH{1'b0}};
        have_dump_path = $value$plusargs("offchip_dump=%s", dump_path);
        if ($value$plusargs("offchip_init=%s", init_path))
            $readmemh(init_path, mem);
    end

    always @(posedge clk) begin
        if (dump) begin
            if (have_dump_path)
                $writememh(dump_path, mem);
            else
                $display("offchip_storage: dump requested but no +offchip_dump=<path> given");
        end
        if (rd_en)
            rd_data <= mem[rd_addr];
        if (wr_en)
            mem[wr_addr] <= wr_data;
    end
endmodule
