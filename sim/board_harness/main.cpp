// The board under Verilator with its UART pins on a pseudo-terminal (sim/board_rtl.py).
//
//   Vboard_sim <pty master fd> <divisor> [<cycles file>]
//
// Every clock cycle: bytes the host wrote to the pty go out on the board's uart_rx as 8N1
// frames of `divisor` cycles per bit, back to back; the board's uart_tx is decoded (start bit
// checked in its middle, bits sampled in their middles, a low stop bit drops the byte) and the
// bytes written to the pty. The pty is polled every POLL cycles (no syscall per cycle). The
// process runs until SIGTERM (or its parent dies), then writes the cycles it simulated to the
// cycles file.
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>
#include <errno.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "Vboard_sim.h"
#include "verilated.h"

static volatile sig_atomic_t stop = 0;
static void on_term(int) { stop = 1; }

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <pty master fd> <divisor> [<cycles file>]\n", argv[0]);
        return 2;
    }
    const int fd = atoi(argv[1]);
    const int div = atoi(argv[2]);
    const char* cycles_path = argc > 3 ? argv[3] : nullptr;
    const uint64_t POLL = 128;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

    Verilated::commandArgs(argc, argv);
    Vboard_sim* top = new Vboard_sim;
    top->uart_rx = 1;
    top->rst = 1;
    for (int i = 0; i < 8; i++) {
        top->clk = 0; top->eval(); top->clk = 1; top->eval();
    }
    top->rst = 0;

    std::deque<uint8_t> inq;                 // host -> board, not yet sent
    std::vector<uint8_t> out;                // board -> host, not yet written
    uint8_t buf[4096];
    int tx_bits = 0, tx_timer = 0;
    uint32_t tx_shift = 0;
    int rx_state = 0, rx_timer = 0, rx_bit = 0, prev = 1;
    uint32_t rx_byte = 0;
    uint64_t cycle = 0;

    while (!stop) {
        if (cycle % POLL == 0) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n > 0) inq.insert(inq.end(), buf, buf + n);
            if (!out.empty()) {
                ssize_t w = write(fd, out.data(), out.size());
                if (w > 0) out.erase(out.begin(), out.begin() + w);
            }
        }
        if (tx_bits == 0 && !inq.empty()) {
            tx_shift = (1u << 9) | (uint32_t(inq.front()) << 1);  // start 0, data, stop 1
            inq.pop_front();
            tx_bits = 10;
            tx_timer = div;
        }
        top->uart_rx = tx_bits ? (tx_shift & 1) : 1;
        top->clk = 0; top->eval(); top->clk = 1; top->eval();
        cycle++;
        if (tx_bits && --tx_timer == 0) {
            tx_shift >>= 1;
            tx_bits--;
            tx_timer = div;
        }
        const int t = top->uart_tx;
        switch (rx_state) {
        case 0:  // idle: a falling edge starts a byte
            if (prev && !t) { rx_state = 1; rx_timer = div / 2; }
            break;
        case 1:  // the start bit, checked in its middle
            if (--rx_timer == 0) {
                if (t) rx_state = 0;
                else { rx_state = 2; rx_timer = div; rx_bit = 0; rx_byte = 0; }
            }
            break;
        case 2:  // data bits, then the stop bit
            if (--rx_timer == 0) {
                if (rx_bit < 8) {
                    rx_byte |= uint32_t(t) << rx_bit;
                    rx_bit++;
                    rx_timer = div;
                } else {
                    if (t) out.push_back(uint8_t(rx_byte));
                    rx_state = 0;
                }
            }
            break;
        }
        prev = t;
    }
    top->final();
    if (cycles_path) {
        FILE* f = fopen(cycles_path, "w");
        if (f) { fprintf(f, "%llu\n", (unsigned long long)cycle); fclose(f); }
    }
    delete top;
    return 0;
}
