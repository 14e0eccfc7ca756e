"""Load-test harness: simulated devices that speak the wire protocol (a client like any other).

    cli         the `relay-loadtest` command line
    workload    what a run does (scenario, devices, rate, ...), which options each
                scenario uses, the split over processes
    runner      spawns the generator processes, draws progress, merges results
    worker      one generator process: set up devices, run its share, report
    scenarios   steady, fanout, offline-drain, connect-storm, reconnect-storm, soak
    device      one simulated device (register, auth, send, receive, ack)
    ledger      the fate of every message id; recorder: HDR latencies and series
    results     merges the processes' recordings into one run's figures
    figures     those figures as typed records that write and read report.json;
                report: report.json itself
    html        report.html; html_charts: its charts, every run on the same axes
    svg         inline SVG line and bar charts; svg_axes: their scales and ticks
    maxrate     the maximum-throughput search; compare: diff of two reports
    e2e         `--e2e`: real ciphertext with the client SDK's sessions
    forwarder   the bare baseline server; baseline: runs it as a child process
    probe       the server's RSS and CPU; environment: the machine and versions

It imports `protocol` (the wire core every client uses), never `relay` or `storage`.
"""
