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
//   +offchip_load=<path>  on every rising edge where `load` is high, words region_first ..
//                         region_last (inclusive) are read from <path> with $fread: raw
//                         binary, WIDTH / 8 bytes per word, most significant byte first
//                         (sim.offchip.write_region_bin writes such files). A file shorter
//                         than the region is a $fatal error.
//   +offchip_save=<path>  on every rising edge where `save` is high, words region_first ..
//                         region_last are written to <path> with $fwrite("%u"): raw binary,
//                         each word least significant byte first, padded with zero bytes to
//                         a multiple of 4 bytes (sim.offchip.read_region_bin reads it).
// load and save are for a host that accesses the memory between runs of the chip (a bus
// write in the same edge would win over a loaded word).
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
    input  wire             dump,
    input  wire             load,
    input  wire             save,
    input  wire [ABITS-1:0] region_first,
    input  wire [ABITS-1:0] region_last
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    reg [8*1024-1:0] init_path;
    reg [8*1024-1:0] dump_path;
    reg [8*1024-1:0] load_path;
    reg [8*1024-1:0] save_path;
    reg have_dump_path;
    reg have_load_path;
    reg have_save_path;
    integer i;
    integer fd;
    reg [63:0] got;
    reg [63:0] want;
    reg [ABITS:0] a;
    reg [ABITS:0] count;

    initial begin
        rd_data = {WIDTH{1'b0}};
        for (i = 0; i < DEPTH; i = i + 1)
            mem[i] = {WIDTH{1'b0}};
        have_dump_path = $value$plusargs("offchip_dump=%s", dump_path);
        have_load_path = $value$plusargs("offchip_load=%s", load_path);
        have_save_path = $value$plusargs("offchip_save=%s", save_path);
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
        if (load) begin
            fd = have_load_path ? $fopen(load_path, "rb") : 0;
            if (fd == 0)
                $fatal(1, "offchip_storage: load: no +offchip_load=<path> or cannot open it");
            else begin
                count = {1'b0, region_last} - {1'b0, region_first} + 1;
                got = $fread(mem, fd, region_first, count);
                $fclose(fd);
                want = count;
                want = want * (WIDTH / 8);
                if (got != want)
                    $fatal(1, "offchip_storage: load of words %0d..%0d read %0d bytes, not %0d",
                           region_first, region_last, got, want);
            end
        end
        if (save) begin
            fd = have_save_path ? $fopen(save_path, "wb") : 0;
            if (fd == 0)
                $fatal(1, "offchip_storage: save: no +offchip_save=<path> or cannot open it");
            else begin
                for (a = {1'b0, region_first}; a <= {1'b0, region_last}; a = a + 1)
                    $fwrite(fd, "%u", mem[a[ABITS-1:0]]);
                $fclose(fd);
            end
        end
        if (rd_en)
            rd_data <= mem[rd_addr];
        if (wr_en)
            mem[wr_addr] <= wr_data;
    end
endmodule
